// node's amqplib (promise API) as a reference row of benchmarks/throughput.py.
//
// Run by the parent as `node runner.js PARAMS_JSON`, with the same parameters as the
// Python runners (benchmarks/peers/_common.py, Params). Prints one line
// `RESULT {json}` in the shape of the Python runners' results: wall, cpu_user and cpu_sys
// (seconds, process.cpuUsage() around the timed part), minor_faults, base_rss_kb and
// maxrss_kb, plus the scenario's counts. Scenarios: publish, publish-confirm, consume, rpc.
"use strict";

const amqp = require("amqplib");

const INDEX_LEN = 8;

function smallBody(index, size) {
  const head = String(index).padStart(INDEX_LEN, "0");
  return Buffer.from(head + "x".repeat(Math.max(0, size - head.length)), "latin1");
}

class Meter {
  start() {
    this.baseRssKb = Math.round(process.memoryUsage().rss / 1024);
    this.faults0 = process.resourceUsage().minorPageFault;
    this.cpu0 = process.cpuUsage();
    this.t0 = process.hrtime.bigint();
    this.started = true;
  }

  stop() {
    if (!this.started || this.stopped) return;
    const t1 = process.hrtime.bigint();
    const cpu = process.cpuUsage(this.cpu0);
    this.stopped = true;
    this.wall = Number(t1 - this.t0) / 1e9;
    this.user = cpu.user / 1e6;
    this.sys = cpu.system / 1e6;
    this.faults = process.resourceUsage().minorPageFault - this.faults0;
  }

  result() {
    return {
      wall: this.wall || 0,
      cpu_user: this.user || 0,
      cpu_sys: this.sys || 0,
      minor_faults: this.faults || 0,
      base_rss_kb: this.baseRssKb || 0,
      maxrss_kb: process.resourceUsage().maxRSS,
      measured: Boolean(this.stopped),
    };
  }
}

class Tally {
  constructor(count) {
    this.count = count;
    this.seen = new Uint8Array(count);
    this.received = 0;
    this.duplicates = 0;
    this.damaged = 0;
  }

  addSmall(body) {
    this.received += 1;
    const index = Number.parseInt(body.toString("latin1", 0, INDEX_LEN), 10);
    if (Number.isInteger(index) && index >= 0 && index < this.count) {
      if (this.seen[index]) this.duplicates += 1;
      else this.seen[index] = 1;
    } else {
      this.damaged += 1;
    }
    return this.received - this.duplicates - this.damaged >= this.count;
  }

  result() {
    const unique = this.received - this.duplicates - this.damaged;
    return {consumed: unique, duplicates: this.duplicates, damaged: this.damaged,
            lost: this.count - unique};
  }
}

// Resolves when `done` resolves; rejects once progress() stops changing for `stall` s.
function watch(progress, stall, done) {
  return new Promise((resolve, reject) => {
    let last = progress();
    let since = Date.now();
    const timer = setInterval(() => {
      const now = progress();
      if (now !== last) {
        last = now;
        since = Date.now();
      } else if (Date.now() - since > stall * 1000) {
        clearInterval(timer);
        reject(new Error(`no progress for ${stall} s (at ${now})`));
      }
    }, 500);
    done.then((value) => { clearInterval(timer); resolve(value); },
              (error) => { clearInterval(timer); reject(error); });
  });
}

function percentile(values, pct) {
  if (!values.length) return null;
  const ordered = [...values].sort((a, b) => a - b);
  const rank = Math.max(0, Math.min(ordered.length - 1,
                                    Math.round(pct / 100 * ordered.length + 0.5) - 1));
  return ordered[rank];
}

function url(p) {
  const e = encodeURIComponent;
  return `amqp://${e(p.user)}:${e(p.password)}@${p.host}:${p.port}/${e(p.vhost)}`;
}

async function publish(p, meter, out) {
  const conn = await amqp.connect(url(p));
  const ch = await conn.createChannel();
  const bodies = Array.from({length: p.count}, (_, i) => smallBody(i, p.size));
  meter.start();
  for (const body of bodies) {
    // sendToQueue returns false when the socket's buffer is full: wait for 'drain', as
    // the amqplib documentation advises.
    if (!ch.sendToQueue(p.queue, body)) {
      await new Promise((resolve) => ch.once("drain", resolve));
    }
  }
  out.published = p.count;
  await ch.checkQueue(p.queue); // one round trip: the broker has read them all
  meter.stop();
  await conn.close();
}

async function publishConfirm(p, meter, out) {
  const conn = await amqp.connect(url(p));
  const ch = await conn.createConfirmChannel();
  const bodies = Array.from({length: p.count}, (_, i) => smallBody(i, p.size));
  const state = {sent: 0, acked: 0, nacked: 0, outstanding: 0, progress: 0};
  let finish;
  const done = new Promise((resolve) => { finish = resolve; });
  let filling = false;
  // The same sliding window as peers/_common.py's Window: one new publish per settled one.
  const settled = (err) => {
    if (err) state.nacked += 1;
    else state.acked += 1;
    state.outstanding -= 1;
    state.progress += 1;
    fill();
  };
  function fill() {
    if (filling) return;
    filling = true;
    while (state.outstanding < p.window && state.sent < p.count) {
      const index = state.sent;
      state.sent += 1;
      state.outstanding += 1;
      ch.sendToQueue(p.queue, bodies[index], {}, settled);
    }
    filling = false;
    if (state.outstanding === 0 && state.sent >= p.count) finish();
  }
  meter.start();
  fill();
  try {
    await watch(() => state.progress, p.stall, done);
  } catch (error) {
    out.stalled = error.message;
  }
  await ch.checkQueue(p.queue);
  meter.stop();
  out.published = state.sent;
  out.acked = state.acked;
  out.nacked = state.nacked;
  await conn.close();
}

async function consume(p, meter, out) {
  const conn = await amqp.connect(url(p));
  const ch = await conn.createChannel();
  await ch.prefetch(p.prefetch);
  const tally = new Tally(p.count);
  let finish;
  const done = new Promise((resolve) => { finish = resolve; });
  meter.start();
  const ok = await ch.consume(p.queue, (message) => {
    ch.ack(message);
    if (tally.addSmall(message.content)) finish();
  });
  try {
    await watch(() => tally.received, p.stall, done);
  } catch (error) {
    out.stalled = error.message;
  }
  await ch.checkQueue(p.queue); // behind the acks
  meter.stop();
  await ch.cancel(ok.consumerTag);
  await conn.close();
  Object.assign(out, tally.result());
}

async function rpc(p, meter, out) {
  const conn = await amqp.connect(url(p));
  const ch = await conn.createChannel();
  const replyQueue = (await ch.assertQueue("", {exclusive: true})).queue;
  let waiter = null;
  await ch.consume(replyQueue, (message) => {
    const w = waiter;
    waiter = null;
    if (w !== null) w(message);
  }, {noAck: true});
  const body = Buffer.alloc(p.size, "r");
  const latencies = [];
  let bad = 0;
  meter.start();
  try {
    for (let i = 0; i < p.count; i += 1) {
      const corr = String(i);
      let timer;
      const reply = new Promise((resolve, reject) => {
        waiter = resolve;
        timer = setTimeout(() => reject(new Error(`no reply in ${p.stall} s`)),
                           p.stall * 1000);
      });
      const t0 = process.hrtime.bigint();
      ch.sendToQueue(p.rpc_queue, body, {replyTo: replyQueue, correlationId: corr});
      const message = await reply;
      clearTimeout(timer);
      latencies.push(Number(process.hrtime.bigint() - t0) / 1e9);
      if (message.properties.correlationId !== corr || !message.content.equals(body)) bad += 1;
    }
  } catch (error) {
    out.stalled = `${error.name}: ${error.message}`;
  }
  meter.stop();
  await conn.close();
  Object.assign(out, {
    round_trips: latencies.length,
    p50_us: percentile(latencies, 50) * 1e6,
    p99_us: percentile(latencies, 99) * 1e6,
    max_us: latencies.length ? Math.max(...latencies) * 1e6 : null,
    bad_replies: bad,
  });
}

const SCENARIOS = {
  publish,
  "publish-confirm": publishConfirm,
  consume,
  rpc,
};

async function main() {
  const p = JSON.parse(process.argv[2]);
  const meter = new Meter();
  const out = {expected: p.count};
  try {
    const scenario = SCENARIOS[p.scenario];
    if (!scenario) throw new Error(`no such scenario: ${p.scenario}`);
    await scenario(p, meter, out);
  } catch (error) {
    out.error = `${error.name}: ${error.message}`;
    console.error(error.stack);
  }
  meter.stop();
  Object.assign(out, meter.result());
  process.stdout.write(`RESULT ${JSON.stringify(out)}\n`);
  process.exit(0);
}

main();
