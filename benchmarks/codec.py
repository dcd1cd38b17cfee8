#!/usr/bin/env python3
"""Codec benchmark: txpika's frame codec against pamqp's and pika's, side by side.

A script, not a test. It measures, in one run and one interpreter:

* ENCODE of a ``basic.publish`` frame set (method frame, content header with seven
  properties and a three-entry headers table, one 128-byte body frame), with each library's
  own encoder, with the method and properties objects either prebuilt or built per message;
  and txpika's hot path as the core runs it, ``Connection.basic_publish`` followed by
  ``data_to_send()`` on a core opened by a hand-driven handshake.
* DECODE of a ``basic.deliver`` frame set of the same shape from bytes: txpika's
  ``FrameDecoder`` (``receive_data`` then ``next_frame`` three times), pika's
  ``pika.frame.decode_frame`` and pamqp's ``pamqp.frame.unmarshal`` (three calls each); and
  the whole core, ``Connection.receive_data`` then ``next_event`` until ``NEED_DATA``, which
  yields the ``MessageReceived`` event.

Before timing, every case is verified: each library's decoded method fields, all fourteen
properties (header value types included) and the body must equal the expected values, and
the bytes each library encodes must decode, with txpika's decoder, to the same values.

Timing is CPU time (``time.process_time``) of a loop of many calls, best of several repeats,
with the garbage collector enabled as in normal use. "vs pika" is pika's CPU time per op
divided by this row's: above 1.0 is faster than pika.

Usage (see benchmarks/README.rst)::

    python3 benchmarks/codec.py --setup     # once: benchmarks/.venv with pika and pamqp
    python3 benchmarks/codec.py             # re-runs itself in benchmarks/.venv if needed
    python3 benchmarks/codec.py --profile   # also cProfile txpika's encode and decode paths
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import os
import platform
import pstats
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
REQUIREMENTS = HERE / "requirements-peers.txt"



def _txpika_root() -> Path:
    """This checkout, or the tree named by ``--txpika-path`` (to compare a modified copy)."""
    for index, arg in enumerate(sys.argv):
        if arg == "--txpika-path" and index + 1 < len(sys.argv):
            return Path(sys.argv[index + 1]).resolve()
        if arg.startswith("--txpika-path="):
            return Path(arg.split("=", 1)[1]).resolve()
    return ROOT


# txpika is imported from this checkout (or --txpika-path), never from an installed copy.
TXPIKA_ROOT = _txpika_root()
sys.path.insert(0, str(TXPIKA_ROOT))

from txpika import events, spec  # noqa: E402
from txpika.connection import NEED_DATA, ChannelState, Connection  # noqa: E402
from txpika.connection import __version__ as txpika_version  # noqa: E402
from txpika.frames import (  # noqa: E402
    BodyFrame,
    FrameDecoder,
    HeaderFrame,
    MethodFrame,
    encode_content,
    encode_method,
)

# ---------------------------------------------------------------------------------------------
# The message. Every library encodes and decodes exactly this.

CHANNEL = 1
FRAME_MAX = 131072
EXCHANGE = "orders"
ROUTING_KEY = "order.created"
CONSUMER_TAG = "amq.ctag-Xq3pW0vN9sKd2b7YfL1uGg"
DELIVERY_TAG = 1
CONTENT_TYPE = "application/json"
DELIVERY_MODE = 2
CORRELATION_ID = "7f9c2ba4-e88f-4d2b-9d3a-6c1e5b0a2f41"
REPLY_TO = "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMjM0NTY3OA"
MESSAGE_ID = "msg-0000000042"
TIMESTAMP = 1714564800  # 2024-05-01T12:00:00Z
TIMESTAMP_DT = datetime.fromtimestamp(TIMESTAMP, tz=UTC)
HEADERS: dict[str, Any] = {"source": "checkout-service", "attempt": 3, "replayed": False}
BODY = b'{"order_id": 42, "sku": "BK-1024", "quantity": 2, "currency": "EUR"}'.ljust(128, b" ")
assert len(BODY) == 128

PROPERTY_NAMES = (
    "content_type", "content_encoding", "headers", "delivery_mode", "priority",
    "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
    "user_id", "app_id", "cluster_id",
)
EXPECTED_PROPERTIES: dict[str, Any] = dict.fromkeys(PROPERTY_NAMES)
EXPECTED_PROPERTIES.update(
    content_type=CONTENT_TYPE, headers=HEADERS, delivery_mode=DELIVERY_MODE,
    correlation_id=CORRELATION_ID, reply_to=REPLY_TO, message_id=MESSAGE_ID,
    timestamp=TIMESTAMP,
)
EXPECTED_PUBLISH = {
    "method": ("basic.publish", {"ticket": 0, "exchange": EXCHANGE, "routing_key": ROUTING_KEY,
                                 "mandatory": False, "immediate": False}),
    "properties": EXPECTED_PROPERTIES,
    "body_size": len(BODY),
    "body": BODY,
}
EXPECTED_DELIVER = {
    "method": ("basic.deliver", {"consumer_tag": CONSUMER_TAG, "delivery_tag": DELIVERY_TAG,
                                 "redelivered": False, "exchange": EXCHANGE,
                                 "routing_key": ROUTING_KEY}),
    "properties": EXPECTED_PROPERTIES,
    "body_size": len(BODY),
    "body": BODY,
}


def strict(value: Any) -> Any:
    """A form of ``value`` whose equality also compares types (``True == 1`` is not enough)."""
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return (type(value).__name__, value)


def check(label: str, got: dict[str, Any], expected: dict[str, Any]) -> None:
    if strict(got) != strict(expected):
        lines = [f"VERIFY FAILED: {label}"]
        for key in expected:
            if strict(got.get(key)) != strict(expected[key]):
                lines.append(f"  {key}: got {got.get(key)!r}\n  {' ' * len(key)}  expected "
                             f"{expected[key]!r}")
        raise SystemExit("\n".join(lines))


def seconds(value: Any) -> Any:
    """Timestamps as whole seconds since the epoch (pika uses ints, the others datetimes)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise SystemExit(f"VERIFY FAILED: naive timestamp {value!r}")
        return int(value.timestamp())
    return value


# ---------------------------------------------------------------------------------------------
# txpika


def tx_properties() -> spec.BasicProperties:
    return spec.BasicProperties(
        content_type=CONTENT_TYPE, headers=HEADERS, delivery_mode=DELIVERY_MODE,
        correlation_id=CORRELATION_ID, reply_to=REPLY_TO, message_id=MESSAGE_ID,
        timestamp=TIMESTAMP_DT,
    )


def tx_canonical(method_frame: Any, header: Any, body: Any) -> dict[str, Any]:
    """txpika frames (or a MessageReceived event's parts) in the canonical form."""
    if not (isinstance(method_frame, MethodFrame) and isinstance(header, HeaderFrame)
            and isinstance(body, BodyFrame)):
        raise SystemExit(f"VERIFY FAILED: frames {method_frame!r} {header!r} {body!r}")
    if {method_frame.channel, header.channel, body.channel} != {CHANNEL}:
        raise SystemExit("VERIFY FAILED: frames not on channel 1")
    method = method_frame.method
    props = header.properties
    return {
        "method": (method.NAME, {f.name: getattr(method, f.name) for f in fields(method)}),
        "properties": {name: seconds(getattr(props, name)) for name in PROPERTY_NAMES},
        "body_size": header.body_size,
        "body": bytes(body.payload),
    }


def tx_decode_all(data: bytes) -> dict[str, Any]:
    """Decode a whole frame set with a fresh txpika decoder, checking nothing is left over."""
    decoder = FrameDecoder(spec.DIALECT, FRAME_MAX)
    decoder.receive_data(data)
    frames = [decoder.next_frame() for _ in range(3)]
    if decoder.next_frame() is not NEED_DATA or decoder.buffered:
        raise SystemExit("VERIFY FAILED: bytes left after the three frames")
    return tx_canonical(*frames)


def drain(conn: Connection) -> list[Any]:
    out = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)
    return out


def open_core(consume: bool) -> Connection:
    """A core with channel 1 open, by feeding the server's side of the handshake by hand.

    With ``consume``, a no-ack consumer ``CONSUMER_TAG`` is registered on the channel, so the
    same delivery (same delivery tag) can be fed again and again.
    """
    conn = Connection(heartbeat=0)
    conn.initiate()
    if not conn.data_to_send().startswith(b"AMQP"):
        raise SystemExit("core: no protocol header")

    def feed(channel: int, method: Any) -> list[Any]:
        conn.receive_data(encode_method(channel, method))
        return drain(conn)

    feed(0, spec.Connection.Start(
        0, 9, {"product": "RabbitMQ", "capabilities": {"publisher_confirms": True}},
        b"PLAIN AMQPLAIN", b"en_US"))
    feed(0, spec.Connection.Tune(2047, FRAME_MAX, 0))
    opened = feed(0, spec.Connection.OpenOk())
    if not any(isinstance(e, events.ConnectionOpened) for e in opened) or not conn.is_open:
        raise SystemExit(f"core: handshake failed: {opened!r}")
    channel = conn.open_channel()
    if channel != CHANNEL:
        raise SystemExit(f"core: got channel {channel}")
    opened = feed(channel, spec.Channel.OpenOk())
    if conn.channel_state(channel) is not ChannelState.OPEN:
        raise SystemExit(f"core: channel did not open: {opened!r}")
    if consume:
        conn.send_method(channel, spec.Basic.Consume(queue="orders.q", consumer_tag=CONSUMER_TAG,
                                                     no_ack=True))
        replies = feed(channel, spec.Basic.ConsumeOk(CONSUMER_TAG))
        if not any(isinstance(e, events.MethodReceived) for e in replies):
            raise SystemExit(f"core: consume-ok not reported: {replies!r}")
    conn.data_to_send()
    return conn


# ---------------------------------------------------------------------------------------------
# Cases. A case is an operation, a library, the function to time, a check of what that
# function returns, and the operation whose pika row "vs pika" compares it with.


class Case:
    def __init__(self, op: str, lib: str, fn: Callable[[], Any],
                 verify: Callable[[Any], None], baseline: str | None = None) -> None:
        self.op = op
        self.lib = lib
        self.fn = fn
        self.verify = verify
        self.baseline = baseline or op  # the operation whose pika row is the reference
        self.cpu_us: float | None = None
        self.iterations = 0


OP_ENC = "encode publish (objects prebuilt)"
OP_ENC_BUILD = "encode publish (build method+props)"
OP_CORE_PUB = "core basic_publish + data_to_send"
OP_CORE_PUB_BUILD = "core basic_publish (build props)"
OP_DEC = "decode deliver (3 frames)"
OP_CORE_DEC = "core receive_data + next_event"


def verify_encoded(label: str) -> Callable[[Any], None]:
    def verify(data: Any) -> None:
        if not isinstance(data, bytes):
            raise SystemExit(f"VERIFY FAILED: {label} returned {type(data).__name__}")
        check(f"{label} (decoded by txpika)", tx_decode_all(data), EXPECTED_PUBLISH)
    return verify


def txpika_cases(deliver_bytes: bytes) -> list[Case]:
    publish = spec.Basic.Publish(0, EXCHANGE, ROUTING_KEY)
    props = tx_properties()
    Publish = spec.Basic.Publish  # noqa: N806
    BasicProperties = spec.BasicProperties  # noqa: N806
    join = b"".join

    def encode() -> bytes:
        return join(encode_content(CHANNEL, publish, props, BODY, FRAME_MAX))

    def encode_build() -> bytes:
        return join(encode_content(
            CHANNEL, Publish(0, EXCHANGE, ROUTING_KEY),
            BasicProperties(
                content_type=CONTENT_TYPE, headers=HEADERS, delivery_mode=DELIVERY_MODE,
                correlation_id=CORRELATION_ID, reply_to=REPLY_TO, message_id=MESSAGE_ID,
                timestamp=TIMESTAMP_DT),
            BODY, FRAME_MAX))

    pub_conn = open_core(consume=False)
    basic_publish = pub_conn.basic_publish
    data_to_send = pub_conn.data_to_send

    def core_publish() -> bytes:
        basic_publish(CHANNEL, EXCHANGE, ROUTING_KEY, BODY, props)
        return data_to_send()

    def core_publish_build() -> bytes:
        basic_publish(CHANNEL, EXCHANGE, ROUTING_KEY, BODY, BasicProperties(
            content_type=CONTENT_TYPE, headers=HEADERS, delivery_mode=DELIVERY_MODE,
            correlation_id=CORRELATION_ID, reply_to=REPLY_TO, message_id=MESSAGE_ID,
            timestamp=TIMESTAMP_DT))
        return data_to_send()

    decoder = FrameDecoder(spec.DIALECT, FRAME_MAX)
    receive = decoder.receive_data
    next_frame = decoder.next_frame

    def decode() -> tuple[Any, Any, Any]:
        receive(deliver_bytes)
        return next_frame(), next_frame(), next_frame()

    def verify_decode(frames: tuple[Any, Any, Any]) -> None:
        check("txpika FrameDecoder", tx_canonical(*frames), EXPECTED_DELIVER)
        if decoder.next_frame() is not NEED_DATA:
            raise SystemExit("VERIFY FAILED: txpika FrameDecoder has bytes left")

    dec_conn = open_core(consume=True)
    conn_receive = dec_conn.receive_data
    next_event = dec_conn.next_event

    def core_decode() -> Any:
        conn_receive(deliver_bytes)
        message = None
        while (event := next_event()) is not NEED_DATA:
            message = event
        return message

    def verify_core_decode(event: Any) -> None:
        if not isinstance(event, events.MessageReceived) or event.channel != CHANNEL:
            raise SystemExit(f"VERIFY FAILED: core decode gave {event!r}")
        props = event.properties
        got = tx_canonical(MethodFrame(CHANNEL, event.method),
                           HeaderFrame(CHANNEL, props.CLASS_ID, len(event.body), props),
                           BodyFrame(CHANNEL, event.body))
        check("txpika core MessageReceived", got, EXPECTED_DELIVER)
        if not dec_conn.is_open or dec_conn.data_to_send():
            raise SystemExit("VERIFY FAILED: core decode closed the connection or wrote")

    def verify_core_publish(data: Any) -> None:
        verify_encoded("txpika core basic_publish")(data)
        if not pub_conn.is_open:
            raise SystemExit("VERIFY FAILED: core publish closed the connection")

    return [
        Case(OP_ENC, "txpika", encode, verify_encoded("txpika encode_content")),
        Case(OP_ENC_BUILD, "txpika", encode_build, verify_encoded("txpika encode_content")),
        Case(OP_CORE_PUB, "txpika", core_publish, verify_core_publish, baseline=OP_ENC),
        Case(OP_CORE_PUB_BUILD, "txpika", core_publish_build, verify_core_publish,
             baseline=OP_ENC_BUILD),
        Case(OP_DEC, "txpika", decode, verify_decode),
        Case(OP_CORE_DEC, "txpika", core_decode, verify_core_decode, baseline=OP_DEC),
    ]


# ---------------------------------------------------------------------------------------------
# pika


def pika_cases(deliver_bytes: bytes) -> list[Case]:
    import pika.frame
    import pika.spec

    Method, Header, Body = pika.frame.Method, pika.frame.Header, pika.frame.Body  # noqa: N806
    Publish, BasicProperties = pika.spec.Basic.Publish, pika.spec.BasicProperties  # noqa: N806
    decode_frame = pika.frame.decode_frame
    publish = Publish(exchange=EXCHANGE, routing_key=ROUTING_KEY)
    props = BasicProperties(
        content_type=CONTENT_TYPE, headers=HEADERS, delivery_mode=DELIVERY_MODE,
        correlation_id=CORRELATION_ID, reply_to=REPLY_TO, message_id=MESSAGE_ID,
        timestamp=TIMESTAMP)
    size = len(BODY)
    join = b"".join

    # As pika's Connection._send_message does: a frame object per frame, each marshalled.
    def encode() -> bytes:
        return join((Method(CHANNEL, publish).marshal(),
                     Header(CHANNEL, size, props).marshal(),
                     Body(CHANNEL, BODY).marshal()))

    def encode_build() -> bytes:
        return join((
            Method(CHANNEL, Publish(exchange=EXCHANGE, routing_key=ROUTING_KEY)).marshal(),
            Header(CHANNEL, size, BasicProperties(
                content_type=CONTENT_TYPE, headers=HEADERS, delivery_mode=DELIVERY_MODE,
                correlation_id=CORRELATION_ID, reply_to=REPLY_TO, message_id=MESSAGE_ID,
                timestamp=TIMESTAMP)).marshal(),
            Body(CHANNEL, BODY).marshal()))

    # As pika's Connection._on_data_available does: decode, then drop the consumed bytes.
    def decode() -> tuple[Any, Any, Any]:
        data = deliver_bytes
        used, method = decode_frame(data)
        data = data[used:]
        used, header = decode_frame(data)
        data = data[used:]
        used, body = decode_frame(data)
        if used != len(data):
            raise RuntimeError("pika left bytes")
        return method, header, body

    def verify_decode(frames: tuple[Any, Any, Any]) -> None:
        method_frame, header, body = frames
        if not (isinstance(method_frame, pika.frame.Method)
                and isinstance(header, pika.frame.Header) and isinstance(body, pika.frame.Body)):
            raise SystemExit(f"VERIFY FAILED: pika frames {frames!r}")
        if {method_frame.channel_number, header.channel_number, body.channel_number} != {
                CHANNEL}:
            raise SystemExit("VERIFY FAILED: pika frames not on channel 1")
        m = method_frame.method
        got = {
            "method": ("basic.deliver" if m.NAME == "Basic.Deliver" else m.NAME, {
                "consumer_tag": m.consumer_tag, "delivery_tag": m.delivery_tag,
                "redelivered": m.redelivered, "exchange": m.exchange,
                "routing_key": m.routing_key}),
            "properties": {name: seconds(getattr(header.properties, name))
                           for name in PROPERTY_NAMES},
            "body_size": header.body_size,
            "body": body.fragment,
        }
        check("pika decode_frame", got, EXPECTED_DELIVER)

    return [
        Case(OP_ENC, "pika", encode, verify_encoded("pika marshal")),
        Case(OP_ENC_BUILD, "pika", encode_build, verify_encoded("pika marshal")),
        Case(OP_DEC, "pika", decode, verify_decode),
    ]


# ---------------------------------------------------------------------------------------------
# pamqp


def pamqp_cases(deliver_bytes: bytes) -> list[Case]:
    from pamqp import body as pbody
    from pamqp import commands, frame, header

    marshal, unmarshal = frame.marshal, frame.unmarshal
    Publish, Properties = commands.Basic.Publish, commands.Basic.Properties  # noqa: N806
    ContentHeader, ContentBody = header.ContentHeader, pbody.ContentBody  # noqa: N806
    publish = Publish(exchange=EXCHANGE, routing_key=ROUTING_KEY)
    props = Properties(
        content_type=CONTENT_TYPE, headers=HEADERS, delivery_mode=DELIVERY_MODE,
        correlation_id=CORRELATION_ID, reply_to=REPLY_TO, message_id=MESSAGE_ID,
        timestamp=TIMESTAMP_DT)
    size = len(BODY)
    join = b"".join

    # As aiormq does: a ContentHeader and a ContentBody per message, each marshalled.
    def encode() -> bytes:
        return join((marshal(publish, CHANNEL),
                     marshal(ContentHeader(0, size, props), CHANNEL),
                     marshal(ContentBody(BODY), CHANNEL)))

    def encode_build() -> bytes:
        return join((
            marshal(Publish(exchange=EXCHANGE, routing_key=ROUTING_KEY), CHANNEL),
            marshal(ContentHeader(0, size, Properties(
                content_type=CONTENT_TYPE, headers=HEADERS, delivery_mode=DELIVERY_MODE,
                correlation_id=CORRELATION_ID, reply_to=REPLY_TO, message_id=MESSAGE_ID,
                timestamp=TIMESTAMP_DT)), CHANNEL),
            marshal(ContentBody(BODY), CHANNEL)))

    def decode() -> tuple[Any, ...]:
        data = deliver_bytes
        used, ch1, method = unmarshal(data)
        data = data[used:]
        used, ch2, head = unmarshal(data)
        data = data[used:]
        used, ch3, content = unmarshal(data)
        if used != len(data):
            raise RuntimeError("pamqp left bytes")
        return (ch1, method), (ch2, head), (ch3, content)

    def verify_decode(frames: tuple[Any, ...]) -> None:
        (ch1, m), (ch2, head), (ch3, content) = frames
        if {ch1, ch2, ch3} != {CHANNEL}:
            raise SystemExit("VERIFY FAILED: pamqp frames not on channel 1")
        if not (isinstance(m, commands.Basic.Deliver) and isinstance(head, ContentHeader)
                and isinstance(content, ContentBody)):
            raise SystemExit(f"VERIFY FAILED: pamqp frames {frames!r}")
        p = head.properties
        props = {name: seconds(getattr(p, "message_type" if name == "type" else name))
                 for name in PROPERTY_NAMES}
        if props["cluster_id"] == "":
            props["cluster_id"] = None  # pamqp's default for the deprecated, absent field
        got = {
            "method": (m.name.lower(), {
                "consumer_tag": m.consumer_tag, "delivery_tag": m.delivery_tag,
                "redelivered": m.redelivered, "exchange": m.exchange,
                "routing_key": m.routing_key}),
            "properties": props,
            "body_size": head.body_size,
            "body": content.value,
        }
        check("pamqp unmarshal", got, EXPECTED_DELIVER)

    return [
        Case(OP_ENC, "pamqp", encode, verify_encoded("pamqp marshal")),
        Case(OP_ENC_BUILD, "pamqp", encode_build, verify_encoded("pamqp marshal")),
        Case(OP_DEC, "pamqp", decode, verify_decode),
    ]


# ---------------------------------------------------------------------------------------------
# Timing


def loop_time(fn: Callable[[], Any], n: int) -> float:
    """CPU seconds for ``n`` calls of ``fn`` (GC left as it is: enabled)."""
    clock = time.process_time
    repeat = itertools.repeat
    start = clock()
    for _ in repeat(None, n):
        fn()
    return clock() - start


def measure(case: Case, repeat_time: float, repeats: int) -> None:
    """Best-of-``repeats`` CPU microseconds per call, with ~``repeat_time`` s per repeat."""
    n = 100
    while True:
        elapsed = loop_time(case.fn, n)
        if elapsed >= 0.05:
            break
        n *= 4 if elapsed < 0.0125 else 2
    n = max(n, int(n * repeat_time / elapsed))
    best = min(loop_time(case.fn, n) for _ in range(repeats))
    case.iterations = n
    case.cpu_us = best / n * 1e6


def print_table(cases: list[Case]) -> None:
    pika_us = {c.op: c.cpu_us for c in cases if c.lib == "pika"}
    header = ("operation", "library", "ops/s", "CPU us/op", "vs pika")
    rows = []
    for c in cases:
        assert c.cpu_us is not None
        ref = pika_us.get(c.baseline)
        ratio = f"{ref / c.cpu_us:.2f}x" if ref else "-"
        if ref and c.baseline != c.op and c.lib != "pika":
            ratio += " *"
        rows.append((c.op, c.lib, f"{1e6 / c.cpu_us:,.0f}", f"{c.cpu_us:.2f}", ratio))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    aligns = ["<", "<", ">", ">", ">"]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(f"{v:{a}{w}}" for v, a, w in zip(r, aligns, widths, strict=True))

    print(line(header))
    print("  ".join("-" * w for w in widths))
    previous = None
    for c, r in zip(cases, rows, strict=True):
        if previous is not None and c.op.split()[0:2] != previous.op.split()[0:2]:
            print()
        print(line(r))
        previous = c
    if any(c.baseline != c.op for c in cases):
        print("\n* core rows are compared with pika's codec row of the same kind (pika's own "
              "connection\n  does more per message than its codec, so this flatters pika).")


# ---------------------------------------------------------------------------------------------
# Profiling


def profile(cases: list[Case], top: int, seconds_each: float) -> None:
    for c in cases:
        if c.lib != "txpika":
            continue
        n = max(1000, int(seconds_each / (c.cpu_us or 10) * 1e6 / 3))  # cProfile is ~3x slower
        prof = cProfile.Profile()
        prof.enable()
        for _ in itertools.repeat(None, n):
            c.fn()
        prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out).strip_dirs().sort_stats("tottime")
        stats.print_stats(top)
        text = out.getvalue()
        body = text[text.index("   ncalls"):] if "   ncalls" in text else text
        print(f"\n--- cProfile: txpika {c.op} ({n} calls, sorted by own time) ---")
        print(body.rstrip())


# ---------------------------------------------------------------------------------------------
# Environment


def peers_available() -> bool:
    try:
        import pamqp.frame  # noqa: F401
        import pika.frame  # noqa: F401
    except ImportError:
        return False
    return True


def setup_venv() -> None:
    if not VENV_PYTHON.exists():
        print(f"creating {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print(f"installing {REQUIREMENTS.name} into {VENV}")
    subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                   check=True)


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true",
                        help="create benchmarks/.venv and install requirements-peers.txt into it")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (best is kept)")
    parser.add_argument("--time", type=float, default=0.3, metavar="S",
                        help="CPU seconds per repeat of each case (default 0.3)")
    parser.add_argument("--quick", action="store_true", help="--time 0.05 --repeats 3")
    parser.add_argument("--only", choices=["txpika", "pika", "pamqp"], action="append",
                        help="measure only these libraries (repeatable)")
    parser.add_argument("--no-reexec", action="store_true",
                        help="do not re-run under benchmarks/.venv when pika/pamqp are missing")
    parser.add_argument("--txpika-path", metavar="DIR", default=str(ROOT),
                        help="import txpika from DIR/txpika instead of this checkout")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile txpika's encode and decode paths")
    parser.add_argument("--top", type=int, default=14, help="profile lines per path")
    args = parser.parse_args()

    if args.setup:
        setup_venv()
    wanted = set(args.only or ["txpika", "pika", "pamqp"])
    if wanted - {"txpika"} and not peers_available():
        if not args.no_reexec and VENV_PYTHON.exists() and not in_venv():
            argv = [a for a in sys.argv[1:] if a != "--setup"]
            os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()),
                                        "--no-reexec", *argv])
        print("pika/pamqp are not importable: run `python3 benchmarks/codec.py --setup` "
              "(or see benchmarks/README.rst); measuring txpika only.\n")
        wanted = {"txpika"}
    if args.quick:
        args.time, args.repeats = 0.05, 3

    impl = platform.python_implementation()
    print(f"{impl} {platform.python_version()} on {platform.machine()} "
          f"({platform.system()}), {sys.executable}")
    if impl != "CPython" or sys.version_info[:2] != (3, 11):
        print("  note: the reference numbers are for CPython 3.11")
    versions = [f"txpika {txpika_version} (from {TXPIKA_ROOT})"]
    if "pika" in wanted:
        import pika
        versions.append(f"pika {pika.__version__}")
    if "pamqp" in wanted:
        import pamqp
        versions.append(f"pamqp {pamqp.__version__}")
    print("  " + ", ".join(versions))
    print(f"  message: 128-byte body, 7 properties ({len(HEADERS)} headers), channel {CHANNEL}; "
          f"best of {args.repeats} x ~{args.time:g} CPU s per case, GC enabled\n")

    deliver_bytes = b"".join(encode_content(
        CHANNEL, spec.Basic.Deliver(CONSUMER_TAG, DELIVERY_TAG, False, EXCHANGE, ROUTING_KEY),
        tx_properties(), BODY, FRAME_MAX))
    check("txpika deliver bytes round trip", tx_decode_all(deliver_bytes), EXPECTED_DELIVER)

    cases: list[Case] = []
    if "txpika" in wanted:
        cases += txpika_cases(deliver_bytes)
    if "pamqp" in wanted:
        cases += pamqp_cases(deliver_bytes)
    if "pika" in wanted:
        cases += pika_cases(deliver_bytes)
    order = [OP_ENC, OP_ENC_BUILD, OP_CORE_PUB, OP_CORE_PUB_BUILD, OP_DEC, OP_CORE_DEC]
    libs = ["txpika", "pamqp", "pika"]
    cases.sort(key=lambda c: (order.index(c.op), libs.index(c.lib)))

    # Verify everything first: values decoded by each library, and each library's encoding
    # decoded by txpika.
    for c in cases:
        c.verify(c.fn())
    print(f"verified {len(cases)} cases: decoded fields, properties and body match for every "
          "library;\n  every library's encoded publish decodes with txpika to the same values\n")

    for c in cases:
        measure(c, args.time, args.repeats)
        c.verify(c.fn())  # still right after many iterations (state of decoders and cores)
    print_table(cases)

    if args.profile:
        profile(cases, args.top, seconds_each=1.0)


if __name__ == "__main__":
    main()
