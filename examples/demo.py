"""txpika demo: publish batches of messages with confirms, consume them back, say how fast.

    python examples/demo.py [URL] [--count 10000] [--size 128] [--window 1000]
                            [--prefetch 500] [--seconds 5]

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
import struct
import sys
import time
from typing import Any

from twisted.internet import defer, task
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

    consumer.when_ended().addCallback(ended)
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


def run(reactor: Any, argv: list[str]) -> defer.Deferred[None]:
    args = parse_args(argv)
    return defer.ensureDeferred(main(reactor, args)).addTimeout(args.deadline, reactor)


if __name__ == "__main__":
    task.react(run, [sys.argv[1:]])
