"""Frames and their exact wire bytes, written out by hand from the AMQP 0-9-1 specification.

Shared by the encoder and decoder tests (tests/test_frames.py), the fuzz tests
(tests/test_fuzz.py) and the standalone fuzzer (tools/fuzz_frames.py, as its seed corpus).

Nothing here is computed with txpika: every byte string is literal. A frame is
``type:octet channel:short size:long payload[size] 0xCE`` (AMQP 0-9-1 section 4.2.3); a method
payload is ``class-id:short method-id:short arguments`` with consecutive bits packed into
octets from the low bit up (4.2.5.2 and the "bit" domain); a content header payload is
``class-id:short weight:short body-size:longlong property-flags:short properties`` with the
first property in bit 15 (4.2.6.1); field tables are ``long-uint`` length then ``shortstr``
name, type octet, value (4.2.5.5). `check_fixture` only verifies that each literal is
self-consistent (its size field matches its payload, it ends in 0xCE).

Each entry is a `Fixture`: a description, the dialect ("0-9-1" or "0-8"), the frame object
the decoder must return, and the bytes the encoder must produce.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import NamedTuple

from txpika import events, spec, spec_0_8
from txpika.connection import NEED_DATA, Connection
from txpika.frames import BodyFrame, HeaderFrame, HeartbeatFrame, MethodFrame, encode_method

__all__ = [
    "DIALECTS",
    "FIXTURES",
    "MUTATORS",
    "Fixture",
    "by_dialect",
    "check_fixture",
    "chunks",
    "mutate",
    "open_connection",
    "server_corpus",
]

DIALECTS = {"0-9-1": spec.DIALECT, "0-8": spec_0_8.DIALECT}

S = spec
S8 = spec_0_8


class Fixture(NamedTuple):
    description: str
    dialect: str
    frame: MethodFrame | HeaderFrame | BodyFrame | HeartbeatFrame
    data: bytes


# The headers table of the all-properties content header, and its 81 bytes.
FULL_HEADERS = {
    "i": 1,
    "s": "h\u00e9llo",
    "n": {"a": [2, True, None]},
    "l": 2**40,
    "d": 1.5,
    "x": b"\x00\xff",
    "D": Decimal("1.50"),
}
FULL_HEADERS_BYTES = (
    b"\x00\x00\x00\x51"  # table length 81
    b"\x01i" b"I" b"\x00\x00\x00\x01"  # "i": signed 32-bit 1 (7 bytes)
    b"\x01s" b"S" b"\x00\x00\x00\x06" b"h\xc3\xa9llo"  # "s": long string, UTF-8 (13)
    b"\x01n" b"F" b"\x00\x00\x00\x0f"  # "n": nested table of 15 bytes (22 in all)
    b"\x01a" b"A" b"\x00\x00\x00\x08"  # "a": array of 8 bytes
    b"I\x00\x00\x00\x02" b"t\x01" b"V"  # 2, True, None
    b"\x01l" b"l" b"\x00\x00\x01\x00\x00\x00\x00\x00"  # "l": signed 64-bit 2**40 (11)
    b"\x01d" b"d" b"\x3f\xf8\x00\x00\x00\x00\x00\x00"  # "d": IEEE double 1.5 (11)
    b"\x01x" b"x" b"\x00\x00\x00\x02" b"\x00\xff"  # "x": byte array (9)
    b"\x01D" b"D" b"\x02" b"\x00\x00\x00\x96"  # "D": decimal scale 2, value 150 (8)
)

# 2023-11-14T22:13:20Z is 1700000000 = 0x6553F100 seconds after the epoch.
TIMESTAMP = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)

FULL_PROPERTIES = dict(
    content_type="application/json",
    content_encoding="utf-8",
    headers=FULL_HEADERS,
    delivery_mode=2,
    priority=9,
    correlation_id="corr",
    reply_to="amq.rabbitmq.reply-to",
    expiration="60000",
    message_id="id-1",
    timestamp=TIMESTAMP,
    type="t",
    user_id="guest",
    app_id="app",
    cluster_id="c",
)


FIXTURES: list[Fixture] = [
    # ---------------------------------------------------------------- AMQP 0-9-1 methods
    Fixture(
        "connection.start with a nested server-properties table and long strings",
        "0-9-1",
        MethodFrame(0, S.Connection.Start(
            version_major=0, version_minor=9,
            server_properties={"product": "RabbitMQ",
                               "capabilities": {"publisher_confirms": True}},
            mechanisms=b"PLAIN AMQPLAIN", locales=b"en_US")),
        b"\x01" b"\x00\x00" b"\x00\x00\x00\x61"  # method frame, channel 0, 97 bytes
        b"\x00\x0a\x00\x0a"  # connection.start (10, 10)
        b"\x00" b"\x09"  # version-major 0, version-minor 9
        b"\x00\x00\x00\x3c"  # server-properties: 60 bytes
        b"\x07product" b"S\x00\x00\x00\x08RabbitMQ"
        b"\x0ccapabilities" b"F\x00\x00\x00\x15"
        b"\x12publisher_confirms" b"t\x01"
        b"\x00\x00\x00\x0ePLAIN AMQPLAIN"  # mechanisms (longstr)
        b"\x00\x00\x00\x05en_US"  # locales (longstr)
        b"\xce",
    ),
    Fixture(
        "connection.start-ok with client properties and a PLAIN response",
        "0-9-1",
        MethodFrame(0, S.Connection.StartOk(
            client_properties={"product": "txpika"}, mechanism="PLAIN",
            response=b"\x00guest\x00guest", locale="en_US")),
        b"\x01\x00\x00\x00\x00\x00\x37"  # 55 bytes
        b"\x00\x0a\x00\x0b"
        b"\x00\x00\x00\x13" b"\x07product" b"S\x00\x00\x00\x06txpika"
        b"\x05PLAIN"
        b"\x00\x00\x00\x0c\x00guest\x00guest"
        b"\x05en_US"
        b"\xce",
    ),
    Fixture(
        "connection.tune: short, long, short",
        "0-9-1",
        MethodFrame(0, S.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=60)),
        b"\x01\x00\x00\x00\x00\x00\x0c"
        b"\x00\x0a\x00\x1e" b"\x07\xff" b"\x00\x02\x00\x00" b"\x00\x3c"
        b"\xce",
    ),
    Fixture(
        "connection.open: two shortstrs and a bit",
        "0-9-1",
        MethodFrame(0, S.Connection.Open(virtual_host="/", capabilities="", insist=False)),
        b"\x01\x00\x00\x00\x00\x00\x08"
        b"\x00\x0a\x00\x28" b"\x01/" b"\x00" b"\x00"
        b"\xce",
    ),
    Fixture(
        "connection.close naming the method that failed",
        "0-9-1",
        MethodFrame(0, S.Connection.Close(reply_code=320, reply_text="bye", class_id=60,
                                          method_id=40)),
        b"\x01\x00\x00\x00\x00\x00\x0e"
        b"\x00\x0a\x00\x32" b"\x01\x40" b"\x03bye" b"\x00\x3c" b"\x00\x28"
        b"\xce",
    ),
    Fixture(
        "connection.update-secret: longstr then shortstr",
        "0-9-1",
        MethodFrame(0, S.Connection.UpdateSecret(new_secret=b"tok", reason="r")),
        b"\x01\x00\x00\x00\x00\x00\x0d"
        b"\x00\x0a\x00\x46" b"\x00\x00\x00\x03tok" b"\x01r"
        b"\xce",
    ),
    Fixture(
        "channel.open on channel 1",
        "0-9-1",
        MethodFrame(1, S.Channel.Open()),
        b"\x01\x00\x01\x00\x00\x00\x05" b"\x00\x14\x00\x0a" b"\x00" b"\xce",
    ),
    Fixture(
        "channel.open-ok with an empty longstr",
        "0-9-1",
        MethodFrame(1, S.Channel.OpenOk()),
        b"\x01\x00\x01\x00\x00\x00\x08" b"\x00\x14\x00\x0b" b"\x00\x00\x00\x00" b"\xce",
    ),
    Fixture(
        "channel.close-ok on channel 65535 (no arguments)",
        "0-9-1",
        MethodFrame(65535, S.Channel.CloseOk()),
        b"\x01\xff\xff\x00\x00\x00\x04" b"\x00\x14\x00\x29" b"\xce",
    ),
    Fixture(
        "queue.declare: durable, auto-delete and no-wait of its 5 bits, with arguments",
        "0-9-1",
        MethodFrame(1, S.Queue.Declare(
            ticket=0, queue="q", passive=False, durable=True, exclusive=False,
            auto_delete=True, nowait=True, arguments={"x-max-length": 10})),
        b"\x01\x00\x01\x00\x00\x00\x1f"
        b"\x00\x32\x00\x0a" b"\x00\x00" b"\x01q"
        b"\x1a"  # 0b11010: passive 0, durable 1, exclusive 0, auto-delete 1, no-wait 1
        b"\x00\x00\x00\x12" b"\x0cx-max-length" b"I\x00\x00\x00\x0a"
        b"\xce",
    ),
    Fixture(
        "queue.declare with all 5 bits set and an empty table",
        "0-9-1",
        MethodFrame(2, S.Queue.Declare(
            queue="", passive=True, durable=True, exclusive=True, auto_delete=True,
            nowait=True, arguments={})),
        b"\x01\x00\x02\x00\x00\x00\x0c"
        b"\x00\x32\x00\x0a" b"\x00\x00" b"\x00" b"\x1f" b"\x00\x00\x00\x00"
        b"\xce",
    ),
    Fixture(
        "exchange.declare: durable and internal of its 5 bits",
        "0-9-1",
        MethodFrame(1, S.Exchange.Declare(
            exchange="x", type="topic", passive=False, durable=True, auto_delete=False,
            internal=True, nowait=False, arguments={})),
        b"\x01\x00\x01\x00\x00\x00\x13"
        b"\x00\x28\x00\x0a" b"\x00\x00" b"\x01x" b"\x05topic"
        b"\x0a"  # 0b01010: passive 0, durable 1, auto-delete 0, internal 1, no-wait 0
        b"\x00\x00\x00\x00"
        b"\xce",
    ),
    Fixture(
        "basic.qos: long, short, bit",
        "0-9-1",
        MethodFrame(1, S.Basic.Qos(prefetch_size=0, prefetch_count=10, global_=True)),
        b"\x01\x00\x01\x00\x00\x00\x0b"
        b"\x00\x3c\x00\x0a" b"\x00\x00\x00\x00" b"\x00\x0a" b"\x01"
        b"\xce",
    ),
    Fixture(
        "basic.consume: no-ack and no-wait of 4 bits, then a table",
        "0-9-1",
        MethodFrame(1, S.Basic.Consume(
            queue="q", consumer_tag="c", no_local=False, no_ack=True, exclusive=False,
            nowait=True, arguments={"x-priority": 5})),
        b"\x01\x00\x01\x00\x00\x00\x1f"
        b"\x00\x3c\x00\x14" b"\x00\x00" b"\x01q" b"\x01c"
        b"\x0a"  # 0b1010
        b"\x00\x00\x00\x10" b"\x0ax-priority" b"I\x00\x00\x00\x05"
        b"\xce",
    ),
    Fixture(
        "basic.publish, mandatory",
        "0-9-1",
        MethodFrame(1, S.Basic.Publish(exchange="amq.direct", routing_key="rk",
                                       mandatory=True, immediate=False)),
        b"\x01\x00\x01\x00\x00\x00\x15"
        b"\x00\x3c\x00\x28" b"\x00\x00" b"\x0aamq.direct" b"\x02rk" b"\x01"
        b"\xce",
    ),
    Fixture(
        "basic.deliver with the largest longlong delivery tag",
        "0-9-1",
        MethodFrame(1, S.Basic.Deliver(consumer_tag="ctag", delivery_tag=2**64 - 1,
                                       redelivered=True, exchange="", routing_key="rk")),
        b"\x01\x00\x01\x00\x00\x00\x16"
        b"\x00\x3c\x00\x3c" b"\x04ctag" b"\xff\xff\xff\xff\xff\xff\xff\xff" b"\x01" b"\x00"
        b"\x02rk"
        b"\xce",
    ),
    Fixture(
        "basic.ack: longlong byte order, multiple",
        "0-9-1",
        MethodFrame(1, S.Basic.Ack(delivery_tag=0x0102030405060708, multiple=True)),
        b"\x01\x00\x01\x00\x00\x00\x0d"
        b"\x00\x3c\x00\x50" b"\x01\x02\x03\x04\x05\x06\x07\x08" b"\x01"
        b"\xce",
    ),
    Fixture(
        "basic.nack: requeue is the second bit",
        "0-9-1",
        MethodFrame(1, S.Basic.Nack(delivery_tag=5, multiple=False, requeue=True)),
        b"\x01\x00\x01\x00\x00\x00\x0d"
        b"\x00\x3c\x00\x78" b"\x00\x00\x00\x00\x00\x00\x00\x05" b"\x02"
        b"\xce",
    ),
    Fixture(
        "basic.return",
        "0-9-1",
        MethodFrame(1, S.Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="ex",
                                      routing_key="rk")),
        b"\x01\x00\x01\x00\x00\x00\x15"
        b"\x00\x3c\x00\x32" b"\x01\x38" b"\x08NO_ROUTE" b"\x02ex" b"\x02rk"
        b"\xce",
    ),
    Fixture(
        "basic.get-ok",
        "0-9-1",
        MethodFrame(1, S.Basic.GetOk(delivery_tag=1, redelivered=False, exchange="",
                                     routing_key="q", message_count=7)),
        b"\x01\x00\x01\x00\x00\x00\x14"
        b"\x00\x3c\x00\x47" b"\x00\x00\x00\x00\x00\x00\x00\x01" b"\x00" b"\x00" b"\x01q"
        b"\x00\x00\x00\x07"
        b"\xce",
    ),
    Fixture(
        "tx.select",
        "0-9-1",
        MethodFrame(1, S.Tx.Select()),
        b"\x01\x00\x01\x00\x00\x00\x04" b"\x00\x5a\x00\x0a" b"\xce",
    ),
    Fixture(
        "confirm.select, no-wait",
        "0-9-1",
        MethodFrame(1, S.Confirm.Select(nowait=True)),
        b"\x01\x00\x01\x00\x00\x00\x05" b"\x00\x55\x00\x0a" b"\x01" b"\xce",
    ),
    # ---------------------------------------------------------------- 0-9-1 content
    Fixture(
        "content header with all 14 basic properties",
        "0-9-1",
        HeaderFrame(1, 60, 1000, S.BasicProperties(**FULL_PROPERTIES)),
        b"\x02\x00\x01\x00\x00\x00\xb8"  # header frame, channel 1, 184 bytes
        b"\x00\x3c" b"\x00\x00" b"\x00\x00\x00\x00\x00\x00\x03\xe8"  # class 60, weight, 1000
        b"\xff\xfc"  # property flags: bits 15..2
        b"\x10application/json"
        b"\x05utf-8"
        + FULL_HEADERS_BYTES
        + b"\x02"  # delivery-mode
        b"\x09"  # priority
        b"\x04corr"
        b"\x15amq.rabbitmq.reply-to"
        b"\x0560000"
        b"\x04id-1"
        b"\x00\x00\x00\x00\x65\x53\xf1\x00"  # timestamp 1700000000
        b"\x01t"
        b"\x05guest"
        b"\x03app"
        b"\x01c"
        b"\xce",
    ),
    Fixture(
        "content header with no properties and an empty body",
        "0-9-1",
        HeaderFrame(1, 60, 0, S.BasicProperties()),
        b"\x02\x00\x01\x00\x00\x00\x0e"
        b"\x00\x3c\x00\x00" b"\x00\x00\x00\x00\x00\x00\x00\x00" b"\x00\x00"
        b"\xce",
    ),
    Fixture(
        "content header with only delivery-mode and a body size over 2**32",
        "0-9-1",
        HeaderFrame(3, 60, 2**32 + 1, S.BasicProperties(delivery_mode=2)),
        b"\x02\x00\x03\x00\x00\x00\x0f"
        b"\x00\x3c\x00\x00" b"\x00\x00\x00\x01\x00\x00\x00\x01" b"\x10\x00" b"\x02"
        b"\xce",
    ),
    Fixture(
        "body frame",
        "0-9-1",
        BodyFrame(1, b"hello"),
        b"\x03\x00\x01\x00\x00\x00\x05hello\xce",
    ),
    Fixture(
        "body frame holding frame-end octets",
        "0-9-1",
        BodyFrame(1, b"\xce\xce\x00\x01\x08"),
        b"\x03\x00\x01\x00\x00\x00\x05\xce\xce\x00\x01\x08\xce",
    ),
    Fixture(
        "empty body frame on channel 2",
        "0-9-1",
        BodyFrame(2, b""),
        b"\x03\x00\x02\x00\x00\x00\x00\xce",
    ),
    Fixture(
        "heartbeat",
        "0-9-1",
        HeartbeatFrame(),
        b"\x08\x00\x00\x00\x00\x00\x00\xce",
    ),
    # ---------------------------------------------------------------- AMQP 0-8
    Fixture(
        "0-8 connection.start, version 8-0, empty table",
        "0-8",
        MethodFrame(0, S8.Connection.Start(version_major=8, version_minor=0,
                                           server_properties={}, mechanisms=b"PLAIN",
                                           locales=b"en_US")),
        b"\x01\x00\x00\x00\x00\x00\x1c"
        b"\x00\x0a\x00\x0a" b"\x08\x00" b"\x00\x00\x00\x00"
        b"\x00\x00\x00\x05PLAIN" b"\x00\x00\x00\x05en_US"
        b"\xce",
    ),
    Fixture(
        "0-8 connection.open with insist",
        "0-8",
        MethodFrame(0, S8.Connection.Open(virtual_host="/", capabilities="", insist=True)),
        b"\x01\x00\x00\x00\x00\x00\x08" b"\x00\x0a\x00\x28" b"\x01/" b"\x00" b"\x01" b"\xce",
    ),
    Fixture(
        "0-8 connection.redirect",
        "0-8",
        MethodFrame(0, S8.Connection.Redirect(host="h:5672", known_hosts="")),
        b"\x01\x00\x00\x00\x00\x00\x0c" b"\x00\x0a\x00\x32" b"\x06h:5672" b"\x00" b"\xce",
    ),
    Fixture(
        "0-8 connection.close is method 60",
        "0-8",
        MethodFrame(0, S8.Connection.Close(reply_code=200, reply_text="ok")),
        b"\x01\x00\x00\x00\x00\x00\x0d"
        b"\x00\x0a\x00\x3c" b"\x00\xc8" b"\x02ok" b"\x00\x00" b"\x00\x00"
        b"\xce",
    ),
    Fixture(
        "0-8 access.request: 5 bits, exclusive off",
        "0-8",
        MethodFrame(1, S8.Access.Request(realm="/data", exclusive=False, passive=True,
                                         active=True, write=True, read=True)),
        b"\x01\x00\x01\x00\x00\x00\x0b" b"\x00\x1e\x00\x0a" b"\x05/data" b"\x1e" b"\xce",
    ),
    Fixture(
        "0-8 basic.consume: 4 bits and no arguments table",
        "0-8",
        MethodFrame(1, S8.Basic.Consume(ticket=1, queue="q", consumer_tag="", no_local=False,
                                        no_ack=True, exclusive=True, nowait=False)),
        b"\x01\x00\x01\x00\x00\x00\x0a"
        b"\x00\x3c\x00\x14" b"\x00\x01" b"\x01q" b"\x00" b"\x06"
        b"\xce",
    ),
    Fixture(
        "0-8 basic.publish, immediate",
        "0-8",
        MethodFrame(1, S8.Basic.Publish(ticket=1, exchange="", routing_key="q",
                                        mandatory=False, immediate=True)),
        b"\x01\x00\x01\x00\x00\x00\x0a"
        b"\x00\x3c\x00\x28" b"\x00\x01" b"\x00" b"\x01q" b"\x02"
        b"\xce",
    ),
    Fixture(
        "0-8 channel.alert with a details table",
        "0-8",
        MethodFrame(1, S8.Channel.Alert(reply_code=312, reply_text="x", details={"k": "v"})),
        b"\x01\x00\x01\x00\x00\x00\x14"
        b"\x00\x14\x00\x1e" b"\x01\x38" b"\x01x"
        b"\x00\x00\x00\x08" b"\x01k" b"S\x00\x00\x00\x01v"
        b"\xce",
    ),
    Fixture(
        "0-8 test.integer: octet, short, long, longlong at their maximum",
        "0-8",
        MethodFrame(1, S8.Test.Integer(integer_1=255, integer_2=65535, integer_3=2**32 - 1,
                                       integer_4=2**64 - 1, operation=2)),
        b"\x01\x00\x01\x00\x00\x00\x14"
        b"\x00\x78\x00\x0a" b"\xff" b"\xff\xff" b"\xff\xff\xff\xff"
        b"\xff\xff\xff\xff\xff\xff\xff\xff" b"\x02"
        b"\xce",
    ),
    Fixture(
        "0-8 basic content header: content-type, delivery-mode, timestamp 0",
        "0-8",
        HeaderFrame(1, 60, 5, S8.BasicProperties(
            content_type="text/plain", delivery_mode=1,
            timestamp=datetime(1970, 1, 1, tzinfo=UTC))),
        b"\x02\x00\x01\x00\x00\x00\x22"
        b"\x00\x3c\x00\x00" b"\x00\x00\x00\x00\x00\x00\x00\x05"
        b"\x90\x40"  # bits 15, 12, 6
        b"\x0atext/plain" b"\x01" b"\x00\x00\x00\x00\x00\x00\x00\x00"
        b"\xce",
    ),
    Fixture(
        "0-8 file content header (class 70): priority and filename",
        "0-8",
        HeaderFrame(1, 70, 0, S8.FileProperties(priority=3, filename="f.txt")),
        b"\x02\x00\x01\x00\x00\x00\x15"
        b"\x00\x46\x00\x00" b"\x00\x00\x00\x00\x00\x00\x00\x00"
        b"\x12\x00"  # bits 12 (priority) and 9 (filename)
        b"\x03" b"\x05f.txt"
        b"\xce",
    ),
    Fixture(
        "0-8 tunnel content header (class 110): octet properties",
        "0-8",
        HeaderFrame(1, 110, 0, S8.TunnelProperties(proxy_name="p", durable=1, broadcast=0)),
        b"\x02\x00\x01\x00\x00\x00\x12"
        b"\x00\x6e\x00\x00" b"\x00\x00\x00\x00\x00\x00\x00\x00"
        b"\x58\x00"  # bits 14, 12, 11
        b"\x01p" b"\x01" b"\x00"
        b"\xce",
    ),
    Fixture(
        "0-8 body frame",
        "0-8",
        BodyFrame(1, b"hello"),
        b"\x03\x00\x01\x00\x00\x00\x05hello\xce",
    ),
    Fixture(
        "0-8 heartbeat",
        "0-8",
        HeartbeatFrame(),
        b"\x08\x00\x00\x00\x00\x00\x00\xce",
    ),
]


def by_dialect(dialect: str) -> list[Fixture]:
    return [f for f in FIXTURES if f.dialect == dialect]


def check_fixture(fixture: Fixture) -> None:
    """Raise AssertionError if a hand-written literal is not a well-formed frame."""
    data = fixture.data
    assert data[0] in (1, 2, 3, 8), fixture.description
    assert int.from_bytes(data[1:3], "big") == getattr(fixture.frame, "channel", 0)
    assert int.from_bytes(data[3:7], "big") == len(data) - 8, fixture.description
    assert data[-1] == 0xCE, fixture.description


# ---------------------------------------------------------------------------------------------
# A sans-IO connection driven by hand to an open channel, for tests that feed it server frames.


def _expect(conn: Connection, kind: type | None) -> None:
    event = conn.next_event()
    if kind is None:
        assert event is NEED_DATA, event
    else:
        assert isinstance(event, kind), event
        assert conn.next_event() is NEED_DATA


def open_connection(dialect: str = "0-9-1", frame_max: int = 131072, *,
                    consume: bool = False, confirm: bool = False) -> tuple[Connection, int]:
    """A `Connection` past the handshake with channel 1 open; returns it and the channel.

    The server side is played with spec classes and `encode_method`. With ``consume`` the
    channel has a consumer "ctag" (acks required) on queue "q"; with ``confirm`` (0-9-1 only)
    it is in confirm mode with three mandatory publishes (tags 1..3) awaiting confirms.
    Everything the client wrote is discarded.
    """
    d = DIALECTS[dialect]
    m = d.module
    conn = Connection(dialect=d, frame_max=frame_max)
    conn.initiate()
    assert conn.data_to_send() == d.protocol_header
    version = (0, 9) if dialect == "0-9-1" else (8, 0)
    conn.receive_data(encode_method(0, m.Connection.Start(
        version_major=version[0], version_minor=version[1],
        server_properties={"product": "fixture"}, mechanisms=b"PLAIN AMQPLAIN",
        locales=b"en_US")))
    _expect(conn, None)
    conn.receive_data(encode_method(0, m.Connection.Tune(
        channel_max=2047, frame_max=131072, heartbeat=60)))
    _expect(conn, None)
    conn.receive_data(encode_method(0, m.Connection.OpenOk()))
    _expect(conn, events.ConnectionOpened)
    channel = conn.open_channel()
    conn.receive_data(encode_method(channel, m.Channel.OpenOk()))
    _expect(conn, events.ChannelOpened)
    if consume:
        conn.send_method(channel, m.Basic.Consume(queue="q", consumer_tag="ctag"))
        conn.receive_data(encode_method(channel, m.Basic.ConsumeOk(consumer_tag="ctag")))
        _expect(conn, events.MethodReceived)
    if confirm:
        conn.send_method(channel, m.Confirm.Select())
        conn.receive_data(encode_method(channel, m.Confirm.SelectOk()))
        _expect(conn, events.MethodReceived)
        for expected_tag in (1, 2, 3):
            tag = conn.basic_publish(channel, "", "q", b"m", mandatory=True)
            assert tag == expected_tag
    conn.data_to_send()
    return conn, channel


def server_corpus(dialect: str, channel: int = 1, fixtures: bool = True) -> list[bytes]:
    """Frames (and frame sequences) a server may send on an open connection and channel:
    the seed inputs for fuzzing the connection core. With ``fixtures``, the frames of
    `FIXTURES` of the dialect follow (most of them are not acceptable there)."""
    from txpika.frames import encode_body, encode_header

    m = DIALECTS[dialect].module
    props = m.BasicProperties(content_type="text/plain", headers={"h": [1, {"n": None}]})

    def message(method: object, body: bytes) -> bytes:
        return (encode_method(channel, method) + encode_header(channel, len(body), props)
                + b"".join(bytes(p) for p in encode_body(channel, body)))

    corpus = [
        message(m.Basic.Deliver(consumer_tag="ctag", delivery_tag=1, exchange="",
                                routing_key="q"), b"body"),
        message(m.Basic.Deliver(consumer_tag="ctag", delivery_tag=2, exchange="",
                                routing_key="q"), b""),
        message(m.Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="",
                               routing_key="q"), b"returned"),
        encode_method(channel, m.Channel.Flow(active=False)),
        encode_method(channel, m.Channel.Flow(active=True)),
        encode_method(channel, m.Basic.Cancel(consumer_tag="ctag")),
        encode_method(channel, m.Channel.Close(reply_code=404, reply_text="NOT_FOUND",
                                               class_id=50, method_id=10)),
        encode_method(channel, m.Channel.CloseOk()),
        encode_method(0, m.Connection.Close(reply_code=320, reply_text="forced")),
        encode_method(0, m.Connection.CloseOk()),
        b"\x08\x00\x00\x00\x00\x00\x00\xce",
    ]
    if dialect == "0-9-1":
        corpus += [
            encode_method(channel, m.Basic.Ack(delivery_tag=1)),
            encode_method(channel, m.Basic.Ack(delivery_tag=2, multiple=True)),
            encode_method(channel, m.Basic.Nack(delivery_tag=0, multiple=True)),
            encode_method(0, m.Connection.Blocked(reason="low on memory")),
            encode_method(0, m.Connection.Unblocked()),
            encode_method(0, m.Connection.UpdateSecretOk()),
        ]
    if fixtures:
        corpus += [f.data for f in by_dialect(dialect)]
    return corpus


# ---------------------------------------------------------------------------------------------
# Mutations of frame streams, for the fuzz tests and tools/fuzz_frames.py. Each mutator takes
# a random generator, the bytes, and a pool of other inputs to splice from.

INTERESTING_32 = [0, 1, 4, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
                  4088, 4089, 131064, 131065, 2**30, 2**31 - 1, 2**31, 2**32 - 1]
INTERESTING_8 = [0, 1, 2, 3, 8, 0x7F, 0x80, 0xCE, 0xFE, 0xFF]


def _frame_starts(data: bytes) -> list[int]:
    """Offsets of the frames in a well-formed stream (as far as it parses)."""
    starts, pos = [], 0
    while pos + 7 <= len(data):
        starts.append(pos)
        pos += 8 + int.from_bytes(data[pos + 3:pos + 7], "big")
    return starts or [0]


def flip_bits(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    if not data:
        return data
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def truncate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    return data[:rng.randrange(len(data) + 1)]


def insert(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    i = rng.randrange(len(data) + 1)
    extra = bytes(rng.choice(INTERESTING_8) if rng.random() < 0.5 else rng.randrange(256)
                  for _ in range(rng.randint(1, 8)))
    return data[:i] + extra + data[i:]


def delete(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 8):]


def set_byte(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([rng.choice(INTERESTING_8)]) + data[i + 1:]


def frame_size_field(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """Change the size field of one frame of the stream."""
    start = rng.choice(_frame_starts(data))
    if start + 7 > len(data):
        return data
    size = int.from_bytes(data[start + 3:start + 7], "big")
    new = rng.choice([0, size - 1, size + 1, size + rng.randint(2, 64),
                      max(0, size - rng.randint(2, 64)), rng.choice(INTERESTING_32)])
    return data[:start + 3] + struct.pack(">I", new % 2**32) + data[start + 7:]


def inner_length_field(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """Overwrite 1, 2 or 4 bytes anywhere with an edge value: hits string, table and array
    lengths, property flags, class and method ids."""
    width = rng.choice([1, 2, 4])
    if len(data) < width:
        return data
    i = rng.randrange(len(data) - width + 1)
    value = rng.choice(INTERESTING_32) % (1 << (8 * width))
    return data[:i] + value.to_bytes(width, "big") + data[i + width:]


def frame_type_or_channel(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    start = rng.choice(_frame_starts(data))
    if start + 3 > len(data):
        return data
    if rng.random() < 0.5:
        return data[:start] + bytes([rng.choice([0, 1, 2, 3, 4, 8, 9, 0xFF])]) + data[start + 1:]
    channel = rng.choice([0, 1, 2, 0xFFFF])
    return data[:start + 1] + struct.pack(">H", channel) + data[start + 3:]


def splice(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    other = rng.choice(pool)
    return data[:rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]


def duplicate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    j = rng.randrange(i, len(data)) + 1
    return data[:j] + data[i:j] + data[j:]


MUTATORS: list[Callable[[random.Random, bytes, list[bytes]], bytes]] = [
    flip_bits, truncate, insert, delete, set_byte, frame_size_field, inner_length_field,
    frame_type_or_channel, splice, duplicate,
]


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    for _ in range(rng.randint(1, 3)):
        data = rng.choice(MUTATORS)(rng, data, pool)
    return data


def chunks(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` cut at random points (sometimes whole, sometimes byte by byte)."""
    mode = rng.random()
    if mode < 0.4 or len(data) < 2:
        return [data]
    if mode < 0.5:
        return [data[i:i + 1] for i in range(len(data))]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
