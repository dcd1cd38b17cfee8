"""In-memory benchmark of txpika's Twisted adapter: client CPU per message, no broker.

A development tool beside the broker benchmarks (throughput.py), for the code users write:
the connection runs over Twisted's ``StringTransport`` with a scripted broker (the
handshake, then pre-encoded deliveries fed in reads of about 64 KiB, as a socket delivers
them). What is measured is txpika's and Twisted's Deferred machinery only: no kernel, no
reactor, no broker, so the figures are steady on a busy machine and show what a change to
the adapter or the channel layer costs. Read them beside throughput.py's, never instead.

    python benchmarks/inmemory.py                 # every scenario, best of 5
    python benchmarks/inmemory.py --repeat 9 consume-await

Scenarios: consume (a callback that acks), consume-await (``await consumer.get()`` and
``await message.ack()`` in a coroutine), consume-yield (the same with inlineCallbacks),
publish-await (``await ch.basic_publish(...)`` in a coroutine, no confirms), rpc (a publish,
then its reply delivered to a callback consumer, per round trip); rpc-cold and
rpc-floor-cold (the rpc round trip of txpika and of throughput.py's ``twisted-floor``
reference, each with 1 MiB of CPU cache evicted before it: a real RPC client sleeps in epoll
between round trips and wakes to cold caches, which is most of what separates the two rows
of throughput.py); idiom-await and idiom-yield (the Deferred machinery alone of the pulled
idioms, two fired Deferreds awaited or yielded per message, no AMQP).
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet.defer import Deferred, ensureDeferred, inlineCallbacks, succeed  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from txpika import spec  # noqa: E402
from txpika.frames import encode_body, encode_content, encode_header, encode_method  # noqa: E402
from txpika.protocol import AMQPProtocol  # noqa: E402

BODY = b"x" * 128
PROPS = spec.BasicProperties(content_type="application/json", delivery_mode=2,
                             headers={"k": "v"})
READ = 65536


def _deliveries(first_tag: int, count: int, tag: str = "ctag") -> list[bytes]:
    """``count`` deliveries on channel 1, as reads of about 64 KiB."""
    frames = []
    for n in range(first_tag, first_tag + count):
        frames.append(encode_method(1, spec.Basic.Deliver(tag, n, False, "", "q"))
                      + encode_header(1, len(BODY), PROPS)
                      + b"".join(bytes(p) for p in encode_body(1, BODY)))
    reads, current, size = [], [], 0
    for frame in frames:
        current.append(frame)
        size += len(frame)
        if size >= READ:
            reads.append(b"".join(current))
            current, size = [], 0
    if current:
        reads.append(b"".join(current))
    return reads


class Harness:
    """An open connection and channel 1 over a StringTransport, the broker scripted."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.transport = StringTransport()
        self.protocol = AMQPProtocol(clock=self.clock)
        self.protocol.makeConnection(self.transport)
        self.feed(encode_method(0, spec.Connection.Start(0, 9, {}, b"PLAIN", b"en_US")))
        self.feed(encode_method(0, spec.Connection.Tune(2047, 131072, 60)))
        self.feed(encode_method(0, spec.Connection.OpenOk()))
        opened = self.protocol.channel()
        self.feed(encode_method(1, spec.Channel.OpenOk()))
        self.channel = _result(opened)
        self.transport.clear()

    def feed(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def reply(self, method: Any) -> Any:
        """Answer the one synchronous call just made."""
        self.transport.clear()
        self.feed(encode_method(1, method))

    def consumer(self, callback: Callable[[Any], object] | None = None,
                 auto_ack: bool = False) -> Any:
        d = self.channel.basic_qos(prefetch_count=1000)
        self.reply(spec.Basic.QosOk())
        _result(d)
        d = self.channel.basic_consume("q", on_message_callback=callback, auto_ack=auto_ack)
        self.reply(spec.Basic.ConsumeOk("ctag"))
        return _result(d)


def _result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    if not out:
        raise RuntimeError(f"{d!r} has no result")
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def _timed_feed(h: Harness, reads: list[bytes]) -> float:
    started = time.process_time()
    for data in reads:
        h.feed(data)
        h.transport.clear()
    return time.process_time() - started


def consume(count: int) -> float:
    h = Harness()
    h.consumer(lambda message: message.ack())
    return _timed_feed(h, _deliveries(1, count))


def consume_await(count: int) -> float:
    h = Harness()
    consumer = h.consumer()
    done: list[int] = []

    async def loop() -> None:
        for _ in range(count):
            message = await consumer.get()
            await message.ack()
        done.append(count)

    ensureDeferred(loop())
    took = _timed_feed(h, _deliveries(1, count))
    assert done == [count]
    return took


def consume_yield(count: int) -> float:
    h = Harness()
    consumer = h.consumer()
    done: list[int] = []

    @inlineCallbacks
    def loop() -> Any:
        for _ in range(count):
            message = yield consumer.get()
            yield message.ack()
        done.append(count)

    loop()
    took = _timed_feed(h, _deliveries(1, count))
    assert done == [count]
    return took


def publish_await(count: int) -> float:
    h = Harness()
    ch = h.channel

    async def loop() -> None:
        for n in range(count):
            await ch.basic_publish("", "q", BODY, PROPS)
            if n % 500 == 0:
                h.transport.clear()

    started = time.process_time()
    d = ensureDeferred(loop())
    took = time.process_time() - started
    _result(d)
    return took


def rpc(count: int) -> float:
    h = Harness()
    waiting: list[Deferred[None]] = []

    def replied(message: Any) -> None:
        waiting.pop().callback(None)

    h.consumer(replied, auto_ack=True)  # auto-acked replies, as an RPC client's are
    _, replies = _request_and_replies(count)
    ch = h.channel
    request_props = spec.BasicProperties(reply_to="rq", correlation_id="1")
    started = time.process_time()
    for data in replies:
        d: Deferred[None] = Deferred()
        waiting.append(d)
        ch.basic_publish("", "rpc", BODY, request_props)
        h.feed(data)
        h.transport.clear()
        _result(d)
    return time.process_time() - started


def idiom_await(count: int) -> float:
    """The Deferred machinery alone of the consume-await idiom, no AMQP: per message one
    fired Deferred awaited for ``get()`` and one for ``ack()`` (what any client whose
    ``get()`` and ``ack()`` return Deferreds costs in that loop)."""
    async def loop() -> None:
        for _ in range(count):
            await succeed(BODY)
            await succeed(None)

    started = time.process_time()
    ensureDeferred(loop())
    return time.process_time() - started


def idiom_yield(count: int) -> float:
    """As `idiom_await`, yielded in inlineCallbacks (consume-yield's machinery)."""
    @inlineCallbacks
    def loop() -> Any:
        for _ in range(count):
            yield succeed(BODY)
            yield succeed(None)

    started = time.process_time()
    loop()
    return time.process_time() - started


#: What a cold round trip finds evicted: 1 MiB, half this machine's L2 (see `_evict`).
EVICT = 1 << 20
_junk = [bytearray(EVICT), bytes(EVICT)]


def _evict() -> None:
    """Push txpika's and Twisted's code and data out of the CPU caches, as a process
    sleeping in epoll between round trips finds them when it wakes (the broker, the RPC
    server and the kernel ran in between): copy 1 MiB (a memcpy, not timed)."""
    _junk[0][:] = _junk[1]


def _request_and_replies(count: int) -> tuple[bytes, list[bytes]]:
    """A request as bytes (for the floor) and ``count`` replies, a delivery each."""
    reply_props = spec.BasicProperties(correlation_id="1")
    replies = [encode_method(1, spec.Basic.Deliver("ctag", n, False, "", "rq"))
               + encode_header(1, len(BODY), reply_props)
               + b"".join(bytes(p) for p in encode_body(1, BODY))
               for n in range(1, count + 1)]
    request = b"".join(bytes(p) for p in encode_content(
        1, spec.Basic.Publish(0, "", "rpc"), spec.BasicProperties(reply_to="rq"), BODY, 0))
    return request, replies


def rpc_cold(count: int) -> float:
    """rpc with the caches evicted before each round trip (only the round trip is timed):
    what a real RPC client pays per round trip, read beside `rpc_floor_cold`."""
    h = Harness()
    waiting: list[Deferred[None]] = []

    def replied(message: Any) -> None:
        waiting.pop().callback(None)

    h.consumer(replied, auto_ack=True)
    _, replies = _request_and_replies(count)
    ch = h.channel

    def request() -> None:
        ch.basic_publish("", "rpc", BODY, spec.BasicProperties(reply_to="rq"))

    return _cold_round_trips(h, replies, waiting, request, h.feed)


def _cold_round_trips(h: Harness, replies: list[bytes], waiting: list[Deferred[None]],
                      request: Callable[[], object], reply: Callable[[bytes], object]
                      ) -> float:
    """The CPU time of the round trips, each after `_evict`: a Deferred to wait on,
    ``request()``, then ``reply(data)``, which fires it."""
    took = 0.0
    for data in replies:
        _evict()
        started = time.process_time()
        d: Deferred[None] = Deferred()
        waiting.append(d)
        request()
        reply(data)
        h.transport.clear()
        _result(d)
        took += time.process_time() - started
    return took


def rpc_floor_cold(count: int) -> float:
    """The in-memory twin of throughput.py's ``twisted-floor`` row, cold as `rpc_cold`:
    a pre-encoded request written, the reply's frames split (not decoded), a Deferred
    fired per round trip."""
    h = Harness()
    request, replies = _request_and_replies(count)
    waiting: list[Deferred[None]] = []
    header = struct.Struct(">BHI")

    def data_received(data: bytes) -> None:
        pos = 0
        while len(data) - pos >= 7:
            kind, _, size = header.unpack_from(data, pos)
            pos += size + 8
            if kind == 3:
                waiting.pop().callback(None)

    write = h.transport.write
    return _cold_round_trips(h, replies, waiting, lambda: write(request), data_received)


SCENARIOS: dict[str, tuple[Callable[[int], float], int]] = {
    "consume": (consume, 50_000),
    "consume-await": (consume_await, 50_000),
    "consume-yield": (consume_yield, 50_000),
    "publish-await": (publish_await, 50_000),
    "rpc": (rpc, 20_000),
    "rpc-cold": (rpc_cold, 5_000),
    "idiom-await": (idiom_await, 50_000),
    "idiom-yield": (idiom_yield, 50_000),
    "rpc-floor-cold": (rpc_floor_cold, 5_000),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", help=f"default: all of {list(SCENARIOS)}")
    parser.add_argument("--repeat", type=int, default=5, help="runs each; the best is kept")
    parser.add_argument("--count-scale", type=float, default=1.0)
    args = parser.parse_args()
    names = args.scenarios or list(SCENARIOS)
    print(f"txpika from {ROOT}; CPU us per message, best of {args.repeat}")
    for name in names:
        run, count = SCENARIOS[name]
        count = max(100, int(count * args.count_scale))
        best = min(run(count) for _ in range(args.repeat))
        print(f"  {name:14} {best / count * 1e6:7.2f} us/msg  ({count} messages)")


if __name__ == "__main__":
    main()
