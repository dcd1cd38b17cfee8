"""txpika demo: publish batches of messages with confirms, consume them back, say how fast.

    python examples/demo.py [URL] [--count 10000] [--size 128] [--window 1000]
                            [--prefetch 500] [--seconds 5]
    python examples/demo.py --daemon [URL] [--count 10000] [--work 0.005] [--flaky 2]
                            [--prefetch 100] [--concurrency 20]

(``--daemon`` runs the consumer daemon demo instead, described at `daemon_demo`;
``--daemon --help`` lists its options.)

Each round:

1. publishes ``--count`` messages of ``--size`` bytes to a private queue in confirm mode,
   pipelined: up to ``--window`` publishes await the broker's ack at the same time;
2. consumes them with a push consumer (prefetch ``--prefetch``), acking each one, and checks
   that every message arrived exactly once with the right body and the queue is empty.

Rounds repeat until ``--seconds`` have passed (always at least one), so the rates printed at
the end are not just the warm-up. For each phase it prints messages per second and the
client's CPU time per message (this process only: the broker's CPU is not counted).

Exit status: 0 if every message was confirmed, delivered once, intact and acked; 1 if any was
nacked, returned, lost, duplicated or corrupted, or on any error, or if the whole run takes
longer than ``--deadline`` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import struct
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, protocol, task
from twisted.python.failure import Failure

import txpika

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default=DEFAULT_URL,
                        help="broker URL (default %(default)s)")
    parser.add_argument("--url", dest="url_option", metavar="URL", help="same as URL")
    parser.add_argument("--count", type=int, default=10_000,
                        help="messages per round (default 10000)")
    parser.add_argument("--size", type=int, default=128, help="body bytes (default 128)")
    parser.add_argument("--window", type=int, default=1000,
                        help="unconfirmed publishes in flight at most (default 1000)")
    parser.add_argument("--prefetch", type=int, default=500,
                        help="consumer prefetch (default 500)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="start new rounds until this much time has passed (default 5)")
    parser.add_argument("--deadline", type=float, default=120.0,
                        help="fail if the run takes longer than this (default 120 s)")
    parser.add_argument("--daemon", action="store_true",
                        help="run the consumer daemon demo instead (--daemon --help)")
    args = parser.parse_args(argv)
    args.url = args.url_option or args.url
    if min(args.count, args.window, args.prefetch) < 1 or args.size < 8:
        parser.error("--count, --window and --prefetch must be at least 1, --size at least 8")
    return args


class Phase:
    """Totals of one phase (publish or consume) over the rounds."""

    def __init__(self, name: str, verb: str) -> None:
        self.name = name
        self.verb = verb
        self.messages = 0
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self) -> Phase:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.last_wall = time.perf_counter() - self._wall
        self.last_cpu = time.process_time() - self._cpu
        self.wall += self.last_wall
        self.cpu += self.last_cpu

    @staticmethod
    def _rates(count: int, wall: float, cpu: float) -> str:
        rate = count / wall if wall > 0 else float("inf")
        per_message = cpu / count * 1e6 if count else 0.0
        return f"{rate:7,.0f} msg/s, {per_message:4.1f} µs CPU/msg"

    def last(self, count: int) -> str:
        self.messages += count
        rates = self._rates(count, self.last_wall, self.last_cpu)
        return f"{self.verb} {self.last_wall:.2f} s {rates}"

    def total(self) -> str:
        return (f"{self.name:9} {self.messages:7} messages in {self.wall:5.2f} s: "
                f"{self._rates(self.messages, self.wall, self.cpu)}")


def body_for(number: int, size: int) -> bytes:
    """An 8-byte sequence number, then filler derived from it, so corruption shows."""
    return struct.pack(">Q", number) + bytes([number % 251]) * (size - 8)


async def publish_batch(channel: Any, queue: str, first: int, count: int, size: int,
                        window: int) -> dict[str, int]:
    """Publish messages ``first .. first+count-1``, confirmed, at most ``window`` in flight.

    Returns how many were confirmed, nacked, returned (unroutable) or have an unknown outcome.
    """
    outcomes = {"confirmed": 0, "nacked": 0, "returned": 0, "unknown": 0}
    slots = defer.DeferredSemaphore(window)

    def settled(result: object) -> None:
        slots.release()
        if not isinstance(result, Failure):
            outcomes["confirmed"] += 1
        elif result.check(txpika.NackError):
            outcomes["nacked"] += 1
        elif result.check(txpika.UnroutableError):
            outcomes["returned"] += 1
        else:  # OutcomeUnknownError: the channel or connection went away first
            outcomes["unknown"] += 1

    publishes = []
    for number in range(first, first + count):
        await slots.acquire()  # waits while `window` publishes are unconfirmed
        d = channel.basic_publish("", queue, body_for(number, size), mandatory=True)
        publishes.append(d.addBoth(settled))
    await defer.gatherResults(publishes)
    return outcomes


async def consume_batch(channel: Any, queue: str, first: int, count: int,
                        size: int) -> dict[str, int]:
    """Consume ``count`` messages with a push callback, acking each one, and check them.

    Returns how many were received, distinct, duplicated and corrupted.
    """
    seen = bytearray(count)
    tally = {"received": 0, "distinct": 0, "duplicates": 0, "corrupted": 0}
    all_in: defer.Deferred[None] = defer.Deferred()

    def on_message(message: Any) -> None:
        body = message.body
        index = (struct.unpack(">Q", body[:8])[0] if len(body) >= 8 else -1) - first
        if not 0 <= index < count or body != body_for(first + index, size):
            tally["corrupted"] += 1
        elif seen[index]:
            tally["duplicates"] += 1
        else:
            seen[index] = 1
            tally["distinct"] += 1
        tally["received"] += 1
        message.ack()  # a Deferred that fires once the ack is written; nothing to wait for
        if tally["distinct"] == count and not all_in.called:
            all_in.callback(None)

    consumer = await channel.basic_consume(queue, on_message)

    def ended(_: object) -> None:  # cancelled by the broker, or the channel closed
        if not all_in.called:
            all_in.errback(consumer.end_reason)

    consumer.when_closed().addCallback(ended)
    await all_in
    await consumer.cancel()
    return tally


async def main(reactor: Any, args: argparse.Namespace) -> None:
    conn = await txpika.connect(reactor, args.url)
    publish, consume = Phase("published", "publish"), Phase("consumed", "consume")
    sent = confirmed = received = distinct = duplicates = corrupted = left = 0
    try:
        version = conn.server_properties.get("version", "?")
        if isinstance(version, bytes):
            version = version.decode(errors="replace")
        print(f"connected to {conn.parameters.describe()} (RabbitMQ {version})")
        conn.add_flow_listener(lambda active, reason: print(
            "broker", "unblocked publishers" if active else f"BLOCKED publishers: {reason}"))
        channel = await conn.channel()
        # Exclusive: private to this connection and deleted when it closes.
        queue = (await channel.queue_declare("", exclusive=True, auto_delete=False)).queue
        await channel.confirm_select()
        await channel.basic_qos(prefetch_count=args.prefetch)
        print(f"{args.count} x {args.size} B per round, queue {queue}, {args.window} "
              f"unconfirmed publishes at most, prefetch {args.prefetch}")

        started = time.perf_counter()
        rounds, round_time = 0, 0.0
        # Another round while it should end within --seconds.
        while rounds == 0 or time.perf_counter() - started + round_time <= args.seconds:
            rounds += 1
            round_started = time.perf_counter()
            first = sent
            with publish:
                outcomes = await publish_batch(channel, queue, first, args.count, args.size,
                                               args.window)
            sent += args.count
            confirmed += outcomes["confirmed"]
            line = f"round {rounds}: {publish.last(args.count)} | "
            if outcomes["confirmed"] != args.count:
                print(line + "\n  NOT CONFIRMED: " + ", ".join(
                    f"{n} {what}" for what, n in outcomes.items() if what != "confirmed"))
                break
            with consume:
                tally = await consume_batch(channel, queue, first, args.count, args.size)
            received += tally["received"]
            distinct += tally["distinct"]
            duplicates += tally["duplicates"]
            corrupted += tally["corrupted"]
            print(line + consume.last(tally["received"]))
            round_time = time.perf_counter() - round_started
            left = (await channel.queue_declare(queue, passive=True)).message_count
            if tally["duplicates"] or tally["corrupted"] or left:
                break
        await channel.close()
    finally:
        await conn.close()

    print(publish.total())
    print(consume.total())
    lost = sent - distinct
    print(f"sent {sent}, confirmed {confirmed}, received {received} ({distinct} distinct, "
          f"{duplicates} duplicates, {corrupted} corrupted), lost {lost}, left in queue {left}")
    if confirmed != sent or lost or duplicates or corrupted or left:
        print("FAILED: messages were refused, lost, duplicated or corrupted", file=sys.stderr)
        raise SystemExit(1)
    print("OK: every message was confirmed, delivered once, intact and acked")


# -- the consumer daemon demo (--daemon) -------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent
ROOT = EXAMPLES.parent
#: A twistd log line: "2026-01-01T12:00:00+0000 [namespace#level] text".
LOG_LINE = re.compile(r"^\S+ \[(?P<namespace>[^#\]]+)#(?P<level>\w+)\] (?P<text>.*)$")


def parse_daemon_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="demo.py --daemon",
        description="The consumer daemon demo: twistd txpika fed by the reliable publisher.")
    parser.add_argument("url", nargs="?", default=DEFAULT_URL,
                        help="broker URL (default %(default)s)")
    parser.add_argument("--url", dest="url_option", metavar="URL", help="same as URL")
    parser.add_argument("--count", type=int, default=10000, help="jobs to publish (10000)")
    parser.add_argument("--work", type=float, default=0.005, metavar="SECONDS",
                        help="how long each job pretends to work (0.005)")
    parser.add_argument("--flaky", type=int, default=2, metavar="N",
                        help="jobs that fail on their first delivery (2)")
    parser.add_argument("--prefetch", type=int, default=100,
                        help="the daemon's --prefetch (100)")
    parser.add_argument("--concurrency", type=int, default=20,
                        help="the daemon's --concurrency (20)")
    parser.add_argument("--drain-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="the daemon's --drain-timeout (10)")
    parser.add_argument("--deadline", type=float, default=60.0, metavar="SECONDS",
                        help="fail if the jobs are not all handled within this (60 s)")
    args = parser.parse_args(argv)
    args.url = args.url_option or args.url
    if args.count < 1 or args.flaky < 0 or args.flaky > args.count:
        parser.error("--count must be at least 1 and --flaky between 0 and --count")
    return args


def hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


class Child(protocol.ProcessProtocol):
    """A child process whose output lines go to ``on_line``; ``ended`` fires with
    ``(exit_code, signal)`` when it is gone."""

    def __init__(self, on_line: Any) -> None:
        self.on_line = on_line
        self.ended: defer.Deferred[tuple[int | None, int | None]] = defer.Deferred()
        self.status: tuple[int | None, int | None] | None = None
        self._buffers = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:  # noqa: N802
        *lines, self._buffers[fd] = (self._buffers[fd] + data).split(b"\n")
        for line in lines:
            self.on_line(line.decode(errors="replace").rstrip("\r"))

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        for fd, rest in self._buffers.items():
            if rest:
                self.on_line(rest.decode(errors="replace"))
            self._buffers[fd] = b""
        value = reason.value
        self.status = (getattr(value, "exitCode", None), getattr(value, "signal", None))
        self.ended.callback(self.status)

    def stop(self, signame: str) -> None:
        with contextlib.suppress(error.ProcessExitedAlready):
            self.transport.signalProcess(signame)


def twistd_command() -> list[str]:
    """twistd of this Python (the virtualenv's), or the same thing through ``-c``."""
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def child_env() -> dict[str, str]:
    # examples/ for jobs_handler, the checkout for txpika and its twistd plugin.
    path = os.pathsep.join(filter(None, [str(EXAMPLES), str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")


def status_text(status: tuple[int | None, int | None] | None) -> str:
    if status is None:
        return "still running"
    code, signum = status
    if signum is not None:
        return f"killed by {signal.Signals(signum).name}"
    return f"exit status {code}"


async def queue_depth(reactor: Any, url: str, queue: str, delete: bool = False) -> int:
    """Messages ready in ``queue`` (then deletes it if ``delete``)."""
    conn = await txpika.connect(reactor, url)
    try:
        channel = await conn.channel()
        depth: int = (await channel.queue_declare(queue, passive=True)).message_count
        if delete:
            await channel.queue_delete(queue)
        return depth
    finally:
        await conn.close()


async def wait_for(condition: Any, deadline: float, clock: Any, step: float = 0.02) -> bool:
    """Poll ``condition()`` until true or ``deadline`` (a ``time.monotonic()`` value)."""
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await task.deferLater(clock, step)
    return True


async def daemon_demo(reactor: Any, args: argparse.Namespace) -> None:
    """Run ``twistd txpika`` with examples/jobs_handler.py, feed it with
    examples/reliable_publisher.py, wait until every job is handled, stop it with SIGTERM.

    It prints the daemon's log lines from txpika (not the one line per job), the
    publisher's output, then how fast jobs went through and whether every confirmed job
    was handled, nothing is left in the queue and the daemon stopped cleanly. Exit status
    0 if so, 1 otherwise.
    """
    queue = f"txpika-demo-jobs-{uuid.uuid4().hex[:8]}"
    options = ["txpika", "--url", args.url, "--queue", queue,
               "--handler", "jobs_handler:handle", "--declare",
               "--prefetch", str(args.prefetch), "--concurrency", str(args.concurrency),
               "--drain-timeout", f"{args.drain_timeout:g}"]
    print("daemon: PYTHONPATH=examples twistd -n --pidfile= "
          + " ".join(hide_password(o) for o in options), flush=True)
    done: dict[int, int] = {}  # job id -> times it was done
    seen = {"ready": False, "failed": 0, "stopped": False, "shut down": False}
    marks: dict[str, float] = {}

    def daemon_line(line: str) -> None:
        match = LOG_LINE.match(line)
        if match is None:
            return  # a traceback line of a failed handler: counted, not shown
        namespace, level, text = match.group("namespace", "level", "text")
        job = re.match(r"job (\d+) done", text)
        if job:
            number = int(job.group(1))
            done[number] = done.get(number, 0) + 1
            marks["last done"] = time.monotonic()
            return
        if text.startswith(f"consuming {queue!r}"):
            seen["ready"] = True
        elif text.startswith("handler failed"):
            seen["failed"] += 1
        elif text.startswith(f"stopped consuming {queue!r}"):
            seen["stopped"] = True
        elif text == "Server Shut Down.":
            seen["shut down"] = True
        from_txpika = namespace.startswith("txpika.") and "Factory" not in namespace
        if level != "debug" and (from_txpika or namespace == "twisted.internet.base"):
            print(f"  daemon | {text}", flush=True)

    daemon = Child(daemon_line)
    daemon_command = [*twistd_command(), "-n", "--pidfile=", *options]
    reactor.spawnProcess(daemon, daemon_command[0], daemon_command, env=child_env(),
                         path=str(ROOT))
    published = {"confirmed": 0}
    depth_after = -1
    ok = True
    try:
        started = time.monotonic()
        if not await wait_for(lambda: seen["ready"] or daemon.status is not None,
                              started + 30, reactor) or not seen["ready"]:
            raise RuntimeError(f"the daemon did not start consuming ({status_text(daemon.status)})")
        print(f"daemon consuming after {time.monotonic() - started:.2f} s", flush=True)

        def publisher_line(line: str) -> None:
            print(f"  publisher | {line}", flush=True)
            if " publishing " in line:
                marks["publishing"] = time.monotonic()
            result = re.match(r"published \d+ jobs .*: (\d+) confirmed", line)
            if result:
                published["confirmed"] = int(result.group(1))

        publisher = Child(publisher_line)
        publisher_command = [sys.executable, str(EXAMPLES / "reliable_publisher.py"),
                             "--url", args.url, "--queue", queue, "--count", str(args.count),
                             "--work", f"{args.work:g}", "--flaky", str(args.flaky)]
        reactor.spawnProcess(publisher, sys.executable, publisher_command, env=child_env(),
                             path=str(ROOT))
        deadline = time.monotonic() + args.deadline
        if not await wait_for(lambda: publisher.status is not None, deadline, reactor):
            publisher.stop("KILL")
            raise RuntimeError(f"the publisher did not finish within {args.deadline:g} s")
        if publisher.status != (0, None):
            ok = False
            print(f"the publisher failed ({status_text(publisher.status)})", flush=True)
        confirmed = published["confirmed"]
        drained = await wait_for(lambda: len(done) >= confirmed, deadline, reactor)
        if not drained:
            print(f"only {len(done)} of {confirmed} jobs handled within {args.deadline:g} s",
                  flush=True)
        elapsed = marks.get("last done", time.monotonic()) - marks.get("publishing", started)
        depth_before = await queue_depth(reactor, args.url, queue)

        print(f"stopping the daemon with SIGTERM ({depth_before} jobs ready in the queue)",
              flush=True)
        stopping = time.monotonic()
        daemon.stop("TERM")
        if not await wait_for(lambda: daemon.status is not None,
                              stopping + args.drain_timeout + 15, reactor):
            daemon.stop("KILL")
            await daemon.ended
            ok = False
            print("the daemon did not exit after SIGTERM: killed", flush=True)
        stop_time = time.monotonic() - stopping
    finally:
        if daemon.status is None:  # an error above: do not leave it running
            daemon.stop("TERM")
            await wait_for(lambda: daemon.status is not None, time.monotonic() + 15, reactor)
            if daemon.status is None:
                daemon.stop("KILL")
                await daemon.ended
        try:
            depth_after = await queue_depth(reactor, args.url, queue, delete=True)
        except Exception as exc:
            print(f"could not check and delete queue {queue}: {exc}", flush=True)

    # twistd shuts down cleanly on SIGTERM and then ends by that same signal (as it does
    # for SIGINT), which init systems count as a clean stop.
    clean = (daemon.status in ((0, None), (None, signal.SIGTERM)) and seen["stopped"]
             and seen["shut down"])
    handled = sum(done.values())
    duplicates = handled - len(done)
    # A confirmed job that was neither handled nor is still in the queue is lost.
    left = str(depth_after) if depth_after >= 0 else "unknown"
    lost = max(0, confirmed - len(done) - max(depth_after, 0))
    rate = len(done) / elapsed if elapsed > 0 else float("inf")
    print(f"handled {len(done)} jobs in {elapsed:.2f} s: {rate:,.0f} jobs/s from the first "
          f"publish to the last job done ({args.concurrency} handlers at a time, "
          f"{args.work * 1000:g} ms of work each)")
    print(f"{seen['failed']} handler failures (--on-error requeue: put back and redelivered)")
    how = ("a clean shutdown" if clean else "NOT a clean shutdown") + (
        ", then twistd ended itself with SIGTERM as it does after a signal"
        if daemon.status == (None, signal.SIGTERM) else "")
    print(f"daemon gone {stop_time:.2f} s after SIGTERM ({status_text(daemon.status)}): {how}")
    print(f"sent {args.count}, confirmed {confirmed}, handled {handled} ({len(done)} distinct, "
          f"{duplicates} duplicates), left in queue {left}, lost {lost}")
    ok = ok and clean and drained and confirmed == args.count and not lost and depth_after == 0
    if not ok:
        print("FAILED: a job was not confirmed, not handled or lost, or the daemon did not "
              "stop cleanly", file=sys.stderr)
        raise SystemExit(1)
    print("OK: every job was confirmed, handled and acked; the daemon drained and stopped "
          "cleanly on SIGTERM")


def report_failure(failure: Failure) -> Failure | None:
    if failure.check(SystemExit):
        return failure
    print(f"failed: {type(failure.value).__name__}: {failure.value}", file=sys.stderr)
    raise SystemExit(1)


def run(reactor: Any, argv: list[str]) -> defer.Deferred[None]:
    if "--daemon" in argv:
        args = parse_daemon_args([a for a in argv if a != "--daemon"])
        return defer.ensureDeferred(daemon_demo(reactor, args)).addErrback(report_failure)
    args = parse_args(argv)
    return defer.ensureDeferred(main(reactor, args)).addTimeout(args.deadline, reactor)


if __name__ == "__main__":
    task.react(run, [sys.argv[1:]])
