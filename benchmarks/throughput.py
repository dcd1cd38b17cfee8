#!/usr/bin/env python3
"""Throughput benchmark: txpika against its peers on a real RabbitMQ broker.

A script, not a test. Each (library, scenario) pair runs in a child process of its own, so
the client CPU time (user + sys, ``getrusage(RUSAGE_SELF)`` around the timed part) and the
peak RSS (``ru_maxrss`` of the whole child) belong to that client alone. The parent sets up
and checks outside the measurement, with pika's BlockingConnection: a fresh, uniquely named
queue per run (deleted after), pre-filled for the consume scenario; after the run it checks
the queue's message count, so lost messages are caught and reported as FAIL. A child that
does not finish within ``--timeout`` seconds is killed and reported as TIMEOUT; a child whose
progress stops for ``--stall`` seconds gives up by itself and is reported as FAIL.

Libraries (see ``benchmarks/peers/run_*.py``): ``txpika`` (this checkout, Twisted),
``pika-twisted`` (pika's ``TwistedProtocolConnection``), ``txamqp`` (txAMQP3, Twisted),
``aio-pika`` (asyncio), ``node-amqplib`` (node's amqplib, ``benchmarks/node/runner.js``,
where ``node`` is installed and ``--setup`` ran npm; CPU from ``process.cpuUsage()``). The
three Twisted clients run on Twisted's default reactor (epoll), aio-pika on asyncio's
default event loop. ``twisted-floor`` (rpc only, n/a elsewhere) is a reference, not a
client: txpika sets up the rpc scenario, then a bare function splits the input into frames
and counts reply bodies, and a request encoded once is written as txpika writes
(``peers/run_floor.py``). It shows what the reactor, the kernel and the harness cost per
round trip; it does not check replies.

Scenarios (counts at ``--count-scale 1``):

publish
    50,000 x 128 B to the default exchange without confirms, fire and forget (txpika waits
    for the last publish's Deferred only), then one round trip on the same channel (a
    passive ``queue.declare``) so the broker has read them all. After the timed part the
    queue must hold all 50,000.
publish-await / publish-yield / publish-chain
    The same publishes in the idioms users write (``peers/idioms_*.py``): each publish's
    Deferred awaited in a coroutine (``for body in bodies: await ch.basic_publish(...)``),
    yielded in ``inlineCallbacks``, or each publish made in a callback of the previous
    one's Deferred (one callback chain). aio-pika awaits every publish in ``publish``
    already, so its ``publish-await`` is the same code; node's amqplib has no Deferred
    or promise per publish (n/a).
publish-confirm
    The same in confirm mode, pipelined with a sliding window of 1,000 unconfirmed publishes
    (one new publish per confirm; the same harness for every library). All must be acked
    and the queue must hold all 50,000.
consume
    50,000 x 128 B pre-filled by the parent, consumed with prefetch 1,000 and one
    ``basic.ack`` per message; then one round trip so the acks are in. Every index must
    arrive once, and the queue must be empty afterwards. This is the callback idiom:
    ``basic_consume(queue, on_message_callback=cb)`` where ``cb`` acks (txpika), a callback
    on each ``get()`` of the delivery queue (pika's adapter and txAMQP, which have no
    callback consumer), ``queue.consume(cb)`` (aio-pika), ``channel.consume(queue, cb)``
    (amqplib).
consume-await / consume-yield
    The same, pulled: ``message = await consumer.get(); await message.ack()`` in a
    coroutine, or the same with ``yield`` in ``inlineCallbacks`` (pika's adapter:
    ``await queue.get()``, then ``channel.basic_ack(tag)``, which returns None; aio-pika's
    ``consume-await``: ``async for message in queue.iterator()``).
rpc
    2,000 sequential round trips: publish a 128 B request with ``reply_to`` (an exclusive
    server-named queue consumed with auto-ack) and ``correlation_id``, wait for the reply.
    The server is a separate process (pika BlockingConnection, the same for every client);
    only the client is measured. Reports p50 and p99 latency.
big
    200 x 4 MiB: publish in confirm mode with a window of 10 unconfirmed, then consume with
    prefetch 10 and per-message acks, on two channels of one connection. Each body is made
    when it is published (an index, then a pattern), so a client that keeps bodies alive
    shows it in its peak RSS (up to 10 bodies the caller made are in flight: 40 MB of
    them). Target: txpika stays under 100 MB.
big-await
    The same, each publish awaited before the next is made (the code users write for large
    messages, and what the blocking adapter does): the peak RSS is then the library's.
    Target: txpika stays under 100 MB (issue #10: 60 MB).

The targets (``TARGETS``) are printed under the table as a table of their own: txpika's CPU
per message, the reference's, the ratio, the limit, met or MISSED. The consumer daemon and
the at-least-once ``Publisher`` are measured by ``benchmarks/daemon.py``.

Usage (see benchmarks/README.rst)::

    python3 benchmarks/throughput.py --setup        # once: benchmarks/.venv with the peers
    python3 benchmarks/throughput.py                # everything, full size
    python3 benchmarks/throughput.py --count-scale 0.1 --scenarios publish,consume \\
        --libraries txpika,pika-twisted --json out.json
    python3 benchmarks/throughput.py --profile      # also cProfile txpika in each scenario
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _broker import Admin, run_command, stop_process
from _harness import (
    HERE,
    ROOT,
    VENV,
    VENV_PYTHON,
    byte_compile_txpika,
    enter_venv,
    fmt,
    install_peers,
    parse_arguments,
    print_profile,
    scaled,
    txpika_revision,
)
from _report import Target, derive, pick, print_table, print_targets_table, target_lines

TXAMQP_REQUIREMENT = "txAMQP3==0.9.4"
NODE_DIR = HERE / "node"
NODE_RUNNER = NODE_DIR / "runner.js"

LIBRARIES = ["txpika", "pika-twisted", "txamqp", "aio-pika", "node-amqplib", "twisted-floor"]
MODULES = {
    "txpika": "run_txpika",
    "pika-twisted": "run_pika_twisted",
    "txamqp": "run_txamqp",
    "aio-pika": "run_aiopika",
    "twisted-floor": "run_floor",
}
#: the runners of the idiom scenarios (publish-await, ..., consume-yield)
IDIOM_MODULES = {
    "txpika": "idioms_txpika",
    "pika-twisted": "idioms_pika_twisted",
    "txamqp": "idioms_txamqp",
    "aio-pika": "run_aiopika",
}
PUBLISH_IDIOMS = ["publish-await", "publish-yield", "publish-chain"]
CONSUME_IDIOMS = ["consume-await", "consume-yield"]
SCENARIOS = ["publish", *PUBLISH_IDIOMS, "publish-confirm", "consume", *CONSUME_IDIOMS,
             "rpc", "big", "big-await"]
NODE_SCENARIOS = ("publish", "publish-confirm", "consume", "rpc")
#: pairs that are not run (shown as n/a)
UNSUPPORTED = {
    **{("twisted-floor", scenario): "reference row for rpc only"
       for scenario in SCENARIOS if scenario != "rpc"},
    **{("aio-pika", scenario): "asyncio: no inlineCallbacks, no Deferred to chain"
       for scenario in ("publish-yield", "publish-chain", "consume-yield")},
    **{("node-amqplib", scenario): "amqplib's publish returns a bool, no promise"
       for scenario in PUBLISH_IDIOMS},
    **{("node-amqplib", scenario): "amqplib has no pulled consumer"
       for scenario in CONSUME_IDIOMS},
    ("node-amqplib", "big"): "not measured for node",
    ("node-amqplib", "big-await"): "not measured for node",
}
#: scenario -> (count at scale 1, body size, window, prefetch)
SIZES = {
    "publish": (50_000, 128, 0, 0),
    **{scenario: (50_000, 128, 0, 0) for scenario in PUBLISH_IDIOMS},
    "publish-confirm": (50_000, 128, 1000, 0),
    "consume": (50_000, 128, 0, 1000),
    **{scenario: (50_000, 128, 0, 1000) for scenario in CONSUME_IDIOMS},
    "rpc": (2_000, 128, 0, 0),
    "big": (200, 4 * 1024 * 1024, 10, 10),
    "big-await": (200, 4 * 1024 * 1024, 1, 10),
}
#: scenario -> its peak RSS targets for txpika: (limit in MB, source)
RSS_TARGETS_MB = {"big": ((100.0, ""),), "big-await": ((100.0, ""), (60.0, "#10"))}
#: txpika's CPU per message against a reference row of the same run. The first ones are
#: the standing targets (<= 0.5 x pika-twisted, below aio-pika); "#10" marks issue 10's.
TARGETS = [
    *(Target(scenario, "pika-twisted", 0.5)
      for scenario in ("publish", "publish-confirm", "big")),
    Target("rpc", "pika-twisted", 0.5),
    *(Target(scenario, "pika-twisted", 0.5, source="#10") for scenario in PUBLISH_IDIOMS),
    *(Target(scenario, "pika-twisted", 0.4, source="#10")
      for scenario in ("consume", *CONSUME_IDIOMS)),
    *(Target(scenario, "node-amqplib", 1.2, reference_scenario="consume", source="#10")
      for scenario in ("consume", *CONSUME_IDIOMS)),
    Target("rpc", "twisted-floor", 1.3, source="#10"),
    *(Target(scenario, "aio-pika", 1.0)
      for scenario in SCENARIOS if ("aio-pika", scenario) not in UNSUPPORTED),
]


# -- the child side ---------------------------------------------------------------------------


def child_main(raw: str) -> None:
    # txpika from this checkout, or from --txpika-path (to compare a modified copy)
    sys.path.insert(0, os.environ.get("TXPIKA_BENCH_PATH") or str(ROOT))
    sys.path.insert(0, str(HERE))  # the peers package
    from peers._common import Meter, Params

    params = Params(**json.loads(raw))
    meter = Meter(profile=params.profile)
    name = MODULES[params.library]
    if params.scenario in PUBLISH_IDIOMS or params.scenario in CONSUME_IDIOMS:
        name = IDIOM_MODULES[params.library]
    module = __import__(f"peers.{name}", fromlist=["run"])
    result: dict[str, Any] = {}
    try:
        result.update(module.run(params, meter))
    except Exception as exc:  # report it; the parent marks the row ERROR
        import traceback

        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    if not meter.stopped and meter.started:
        meter.stop()
    result.update(meter.result(), measured=meter.stopped)
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def rpc_server_main(raw: str) -> None:
    """The RPC server of the rpc scenario: echo each request to its ``reply_to``."""
    import pika

    cfg = json.loads(raw)
    signal.alarm(int(cfg["lifetime"]))  # bounded, whatever happens to the parent
    params = pika.ConnectionParameters(
        host=cfg["host"], port=cfg["port"], virtual_host=cfg["vhost"],
        credentials=pika.PlainCredentials(cfg["user"], cfg["password"]))
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare(cfg["queue"], auto_delete=True)
    ch.basic_qos(prefetch_count=100)

    def on_request(channel: Any, method: Any, props: Any, body: bytes) -> None:
        channel.basic_publish("", props.reply_to, body,
                              pika.BasicProperties(correlation_id=props.correlation_id))

    ch.basic_consume(cfg["queue"], on_request, auto_ack=True)
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        ch.start_consuming()


# -- the parent side ----------------------------------------------------------------------------


def start_rpc_server(args: argparse.Namespace, queue: str) -> subprocess.Popen[bytes]:
    cfg = {"host": args.host, "port": args.port, "vhost": args.vhost, "user": args.user,
           "password": args.password, "queue": queue, "lifetime": args.timeout + 30}
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--rpc-server", json.dumps(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout=20) or proc.stdout.readline().strip() != b"ready":
        stop_process(proc)
        raise RuntimeError("the RPC server did not start")
    return proc


def node_missing() -> str:
    """Why node's amqplib cannot run here, or "" when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "amqplib").is_dir():
        return "benchmarks/node/node_modules has no amqplib: run --setup (needs npm)"
    return ""


def run_child(args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    if params["library"] == "node-amqplib":
        node = shutil.which("node") or "node"
        return run_command([node, str(NODE_RUNNER), json.dumps(params)], args.timeout)
    return run_command([sys.executable, str(Path(__file__).resolve()), "--child",
                        json.dumps(params)], args.timeout)


def run_one(args: argparse.Namespace, admin: Admin, library: str, scenario: str,
            profile: str = "") -> dict[str, Any]:
    base_count, size, window, prefetch = SIZES[scenario]
    count = scaled(base_count, args.count_scale)
    if scenario.startswith("big") and args.big_count:
        count = args.big_count
    row: dict[str, Any] = {"scenario": scenario, "library": library, "count": count,
                           "size": size}
    if (library, scenario) in UNSUPPORTED:
        row.update(status="n/a", note=UNSUPPORTED[(library, scenario)])
        return row
    if library == "node-amqplib" and (why := node_missing()):
        row.update(status="n/a", note=f"skipped: {why}")
        return row
    queue = f"txpika-bench-{scenario}-{library}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    row["queue"] = queue
    params: dict[str, Any] = {
        "library": library, "scenario": scenario, "host": args.host, "port": args.port,
        "user": args.user, "password": args.password, "vhost": args.vhost, "queue": queue,
        "count": count, "size": size, "window": window or 1000, "prefetch": prefetch or 1000,
        "stall": args.stall, "profile": profile, "rpc_queue": "",
    }
    server = None
    try:
        if scenario == "rpc":
            params["rpc_queue"] = queue
            server = start_rpc_server(args, queue)
        else:
            admin.declare(queue)
        if scenario.startswith("consume"):
            admin.prefill_checked(queue, count, size)
        result = run_child(args, params)
        row.update(result)
        if "status" not in row:
            row["status"], row["note"] = check(admin, scenario, count, queue, row)
            if library == "twisted-floor" and row["status"] == "ok":
                row["note"] = "reference: replies not checked"
    except Exception as exc:
        row.update(status="ERROR", note=f"{type(exc).__name__}: {exc}")
    finally:
        if server is not None:
            stop_process(server)
        admin.delete(queue)
    return row


def check(admin: Admin, scenario: str, count: int, queue: str,
          r: dict[str, Any]) -> tuple[str, str]:
    """("ok" | "FAIL" | "ERROR", why) for a finished child."""
    if r.get("error"):
        return "ERROR", r["error"]
    problems: list[str] = []
    if r.get("stalled"):
        problems.append(f"stalled: {r['stalled']}")
    if scenario.startswith("publish"):
        if scenario == "publish-confirm" and (r.get("acked") != count or r.get("nacked")):
            problems.append(f"acked {r.get('acked')} nacked {r.get('nacked')} of {count}")
        have = admin.wait_count(queue, count, 30)
        if have != count:
            problems.append(f"queue holds {have} of {count}: lost {count - have}")
    elif scenario.startswith("consume") or scenario.startswith("big"):
        if scenario.startswith("big") and (r.get("acked") != count or r.get("nacked")):
            problems.append(f"acked {r.get('acked')} nacked {r.get('nacked')} of {count}")
        if r.get("lost") or r.get("duplicates") or r.get("damaged"):
            problems.append(f"consumed {r.get('consumed')} of {count}: lost {r.get('lost')}, "
                            f"duplicated {r.get('duplicates')}, damaged {r.get('damaged')}")
        time.sleep(0.3)  # unacked deliveries return to the queue when the child's channel dies
        left = admin.wait_count(queue, 0, 10)
        if left:
            problems.append(f"{left} messages left in the queue (not acked)")
    elif scenario == "rpc" and (r.get("round_trips") != count or r.get("bad_replies")):
        problems.append(f"{r.get('round_trips')} of {count} round trips, "
                        f"{r.get('bad_replies')} bad replies")
    if problems:
        return "FAIL", "; ".join(problems)
    return "ok", ""


# -- reporting ------------------------------------------------------------------------------------


def print_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets table (`TARGETS`, the big scenario's peak RSS), then the rpc floor
    (twisted-floor), for reference. Returns the target lines (for the JSON)."""
    by = {(r["scenario"], r["library"]): r for r in rows}
    lines = target_lines(TARGETS, rows)
    for scenario, targets in RSS_TARGETS_MB.items():
        big = by.get((scenario, "txpika"))
        if big is None or big.get("peak_rss_mb") is None:
            continue
        for limit, source in targets:
            rss = big["peak_rss_mb"]
            lines.append({"scenario": scenario, "subject": "txpika",
                          "reference": "peak RSS MB", "reference_scenario": scenario,
                          "limit": limit, "source": source, "txpika_cpu_us": None,
                          "reference_cpu_us": None, "rss_mb": rss, "ratio": None,
                          "verdict": "met" if rss <= limit else "MISSED"})
    order = {scenario: n for n, scenario in enumerate(SCENARIOS)}
    lines.sort(key=lambda line: order.get(line["scenario"], len(order)))  # stable
    print_targets_table(
        [line for line in lines if "rss_mb" not in line],
        "Targets (client CPU us per message; ratio = txpika / reference, this run; "
        "#10: issue 10's targets):")
    for line in lines:
        if "rss_mb" in line:
            source = f" ({line['source']})" if line["source"] else ""
            print(f"  {line['scenario']}: txpika's peak RSS {line['rss_mb']:.1f} MB, target <= "
                  f"{line['limit']:g} MB: {line['verdict']}{source}")
    floor = by.get(("rpc", "twisted-floor"))
    if floor is not None:
        print("\nReference (not a target):")
        print_floor(floor, by)
    return lines


def print_floor(floor: dict[str, Any], by: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The bare Twisted client's CPU per rpc round trip, next to pika-twisted's and
    txpika's."""
    cpu = floor.get("cpu_us_per_msg")
    if floor.get("status") != "ok" or cpu is None:
        print(f"  rpc floor (bare Twisted client): no figure ({floor.get('status')}"
              + (f": {floor['note']}" if floor.get("note") else "") + ")")
        return
    parts = []
    pika = by.get(("rpc", "pika-twisted"), {}).get("cpu_us_per_msg")
    if pika:
        parts.append(f" = {cpu / pika:.2f} x pika-twisted")
    tx = by.get(("rpc", "txpika"), {}).get("cpu_us_per_msg")
    if tx:
        parts.append(f"; txpika = {tx / cpu:.2f} x the floor")
    print(f"  rpc floor (bare Twisted client): {cpu:,.1f} us/msg" + "".join(parts))


# -- main -----------------------------------------------------------------------------------------


def setup_venv() -> None:
    install_peers()
    # txAMQP3 pins Twisted~=23.10 (it runs on newer ones): without --no-deps pip would
    # downgrade the Twisted that txpika and pika's adapter are measured on.
    print(f"installing {TXAMQP_REQUIREMENT} (--no-deps) into {VENV}")
    subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "-q", "--no-deps",
                    TXAMQP_REQUIREMENT], check=True)
    setup_node()


def setup_node() -> None:
    """npm-install benchmarks/node (amqplib, pinned in package.json and package-lock.json)
    into benchmarks/node/node_modules; without node or npm, say so and go on."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        print("node or npm is not installed: the node-amqplib rows will be skipped")
        return
    print(f"installing amqplib (npm ci) into {NODE_DIR / 'node_modules'}")
    result = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                            cwd=str(NODE_DIR), check=False)
    if result.returncode:
        print(f"npm ci failed (exit {result.returncode}): the node-amqplib rows will be skipped")


def node_version() -> str:
    if node_missing():
        return "missing"
    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        package = json.loads((NODE_DIR / "node_modules" / "amqplib" / "package.json")
                             .read_text(encoding="utf-8"))
    except (OSError, ValueError, subprocess.SubprocessError):
        return "unknown"
    return f"{package.get('version')} on node {node}"


def library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for dist in ("Twisted", "pika", "txAMQP3", "aio-pika", "aiormq"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return versions


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
        return
    if len(sys.argv) >= 3 and sys.argv[1] == "--rpc-server":
        rpc_server_main(sys.argv[2])
        return
    args = parse_arguments(__doc__, SCENARIOS, LIBRARIES,
                           "messages in the big scenario (default 200 x --count-scale)")
    enter_venv(args, __file__, setup_venv)

    versions = library_versions()
    versions["txpika"] = txpika_revision()
    if "node-amqplib" in args.libraries:
        versions["amqplib"] = node_version()
    if args.txpika_path:
        os.environ["TXPIKA_BENCH_PATH"] = os.path.abspath(args.txpika_path)
        versions["txpika"] = f"from {os.environ['TXPIKA_BENCH_PATH']}"
    byte_compile_txpika(args.txpika_path)
    print(f"{platform.python_implementation()} {platform.python_version()}, "
          + ", ".join(f"{k} {v}" for k, v in versions.items())
          + f"; {os.cpu_count()} CPUs; broker {args.host}:{args.port}")
    print(f"count scale {args.count_scale:g}; child timeout {args.timeout:g} s, "
          f"stall limit {args.stall:g} s\n")
    admin = Admin(args)
    try:
        admin.declare(probe := f"txpika-bench-probe-{uuid.uuid4().hex[:8]}")
        admin.delete(probe)
    except Exception as exc:
        sys.exit(f"cannot reach the broker at {args.host}:{args.port}: {exc}")

    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for repeat in range(args.repeat):
        if args.repeat > 1:
            print(f"pass {repeat + 1} of {args.repeat}")
        for scenario in args.scenarios:
            for library in args.libraries:
                t0 = time.monotonic()
                row = run_one(args, admin, library, scenario)
                derive(row)
                runs.setdefault((scenario, library), []).append(row)
                print(f"  {scenario:16s} {library:14s} {row.get('status')} "
                      f"{fmt(row.get('msgs_per_s'), ',.0f')} msg/s "
                      f"{fmt(row.get('cpu_us_per_msg'), ',.1f')} us/msg "
                      f"{fmt(row.get('peak_rss_mb'), '.1f')} MB "
                      f"({time.monotonic() - t0:.1f} s) {row.get('note', '')}", flush=True)
                for line in row.get("stderr_tail", []) if row.get("status") != "ok" else []:
                    print(f"      | {line}")
    rows = [pick(attempts) for attempts in runs.values()]
    print()
    print_table(rows)
    targets: list[dict[str, Any]] = []
    if "txpika" in args.libraries or "twisted-floor" in args.libraries:
        targets = print_targets(rows)

    profiles: dict[str, str] = {}
    if args.profile and "txpika" in args.libraries:
        directory = args.profile_dir or tempfile.mkdtemp(prefix="txpika-bench-prof-")
        os.makedirs(directory, exist_ok=True)
        print(f"\ncProfile of txpika (timed part only; stats in {directory}):")
        for scenario in args.scenarios:
            path = os.path.join(directory, f"txpika-{scenario}.pstats")
            row = run_one(args, admin, "txpika", scenario, profile=path)
            print(f"\n  {scenario}: {row.get('status')} {row.get('note', '')}")
            if os.path.exists(path):
                profiles[scenario] = path
                print_profile(path, args.top)

    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"versions": versions, "python": platform.python_version(),
                       "count_scale": args.count_scale, "repeat": args.repeat, "rows": rows,
                       "targets": targets, "profiles": profiles},
                      fh, indent=2, default=str)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
