"""The frame codec (txpika.frames) against hand-written bytes, and its error handling.

The expected bytes live in tests/frame_fixtures.py; they are literals written from the AMQP
0-9-1 specification, never produced by txpika.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest
from frame_fixtures import DIALECTS, FIXTURES, Fixture, by_dialect, check_fixture, open_connection

from txpika import spec, spec_0_8
from txpika._wire import EncodeError
from txpika.connection import ChannelState
from txpika.errors import ProtocolError, UsageError
from txpika.frames import (
    HEARTBEAT,
    NEED_DATA,
    STREAM_MIN,
    BodyFrame,
    FrameDecodeError,
    FrameDecoder,
    HeaderFrame,
    HeartbeatFrame,
    MethodFrame,
    encode_body,
    encode_content,
    encode_header,
    encode_method,
)

IDS = [f.description for f in FIXTURES]
GIB = 1 << 30


def encode_frame(frame: MethodFrame | HeaderFrame | BodyFrame | HeartbeatFrame) -> bytes:
    if isinstance(frame, MethodFrame):
        return encode_method(frame.channel, frame.method)
    if isinstance(frame, HeaderFrame):
        return encode_header(frame.channel, frame.body_size, frame.properties)
    if isinstance(frame, BodyFrame):
        return b"".join(bytes(part) for part in encode_body(frame.channel, frame.payload))
    assert isinstance(frame, HeartbeatFrame)
    return HEARTBEAT


def decoder(dialect: str = "0-9-1", frame_max: int = 131072) -> FrameDecoder:
    return FrameDecoder(DIALECTS[dialect], frame_max)


def drain(dec: FrameDecoder) -> list[object]:
    """Every frame the decoder can produce now; only FrameDecodeError may escape."""
    frames = []
    while True:
        try:
            frame = dec.next_frame()
        except FrameDecodeError:
            raise
        except BaseException as exc:  # pragma: no cover - reported as a failure
            pytest.fail(f"next_frame raised {type(exc).__name__}: {exc!r}")
        if frame is NEED_DATA:
            return frames
        frames.append(frame)


def next_fixture(fixture: Fixture) -> Fixture:
    """Another fixture of the same dialect, to follow ``fixture`` on the wire."""
    same = by_dialect(fixture.dialect)
    return same[(same.index(fixture) + 1) % len(same)]


# ---------------------------------------------------------------------------------------------
# The fixtures themselves


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_fixture_literal_is_a_well_formed_frame(fixture: Fixture) -> None:
    check_fixture(fixture)


def test_fixtures_cover_every_frame_kind_in_both_dialects() -> None:
    for dialect in DIALECTS:
        kinds = {type(f.frame) for f in by_dialect(dialect)}
        assert kinds == {MethodFrame, HeaderFrame, BodyFrame, HeartbeatFrame}
    props = [f.frame.properties for f in FIXTURES if isinstance(f.frame, HeaderFrame)]
    assert any(p == spec.BasicProperties() for p in props)
    assert any(all(getattr(p, f.name) is not None for f in dataclasses.fields(p))
               for p in props if isinstance(p, spec.BasicProperties))


# ---------------------------------------------------------------------------------------------
# Encoding


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_encode(fixture: Fixture) -> None:
    assert encode_frame(fixture.frame) == fixture.data


@pytest.mark.parametrize(
    "fixture", [f for f in FIXTURES if isinstance(f.frame, MethodFrame)],
    ids=[f.description for f in FIXTURES if isinstance(f.frame, MethodFrame)],
)
def test_encode_method_frame_max_boundary(fixture: Fixture) -> None:
    frame = fixture.frame
    assert isinstance(frame, MethodFrame)
    size = len(fixture.data)
    assert encode_method(frame.channel, frame.method, size) == fixture.data
    with pytest.raises(EncodeError) as info:
        encode_method(frame.channel, frame.method, size - 1)
    assert frame.method.NAME in str(info.value)


def test_encode_body_does_not_copy_the_payload() -> None:
    payload = memoryview(b"abcdef")[1:4]
    parts = encode_body(7, payload)
    assert parts[1] is payload
    assert b"".join(bytes(p) for p in parts) == b"\x03\x00\x07\x00\x00\x00\x03bcd\xce"


@pytest.mark.parametrize(
    ("bit", "octet"),
    [("passive", 0x01), ("durable", 0x02), ("exclusive", 0x04), ("auto_delete", 0x08),
     ("nowait", 0x10)],
)
def test_queue_declare_bit_positions(bit: str, octet: int) -> None:
    # The five consecutive bits of queue.declare share one octet, first bit lowest.
    method = spec.Queue.Declare(queue="", **{bit: True})
    expected = (b"\x01\x00\x01\x00\x00\x00\x0c\x00\x32\x00\x0a\x00\x00\x00"
                + bytes([octet]) + b"\x00\x00\x00\x00\xce")
    assert encode_method(1, method) == expected
    dec = decoder()
    dec.receive_data(expected)
    (frame,) = drain(dec)
    assert frame.method == spec.Queue.Declare(queue="", arguments={}, **{bit: True})


# ---------------------------------------------------------------------------------------------
# Decoding: whole, byte by byte, with trailing data


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_decode_whole(fixture: Fixture) -> None:
    dec = decoder(fixture.dialect)
    dec.receive_data(fixture.data)
    assert dec.next_frame() == fixture.frame
    assert dec.next_frame() is NEED_DATA
    assert dec.buffered == 0


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_decode_one_byte_at_a_time(fixture: Fixture) -> None:
    dec = decoder(fixture.dialect)
    data = fixture.data
    for i in range(len(data) - 1):
        dec.receive_data(data[i:i + 1])
        assert dec.next_frame() is NEED_DATA, f"frame returned after {i + 1} bytes"
        assert dec.buffered == i + 1
    dec.receive_data(data[-1:])
    assert dec.next_frame() == fixture.frame
    assert dec.next_frame() is NEED_DATA
    assert dec.buffered == 0


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_decode_with_trailing_data(fixture: Fixture) -> None:
    after = next_fixture(fixture)
    dec = decoder(fixture.dialect)
    dec.receive_data(fixture.data + after.data + after.data[:5])
    assert dec.next_frame() == fixture.frame
    assert dec.next_frame() == after.frame
    assert dec.next_frame() is NEED_DATA
    assert dec.buffered == 5
    dec.receive_data(after.data[5:])
    assert dec.next_frame() == after.frame
    assert dec.next_frame() is NEED_DATA


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_decode_accepts_bytearray_and_memoryview(fixture: Fixture) -> None:
    dec = decoder(fixture.dialect)
    half = len(fixture.data) // 2
    dec.receive_data(bytearray(fixture.data[:half]))
    dec.receive_data(memoryview(fixture.data)[half:])
    assert drain(dec) == [fixture.frame]


@pytest.mark.parametrize("dialect", list(DIALECTS))
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 8, 13, 64, 1 << 20])
def test_decode_whole_stream_in_chunks(dialect: str, chunk: int) -> None:
    fixtures = by_dialect(dialect)
    stream = b"".join(f.data for f in fixtures)
    dec = decoder(dialect)
    frames: list[object] = []
    for start in range(0, len(stream), chunk):
        dec.receive_data(stream[start:start + chunk])
        frames.extend(drain(dec))
    assert frames == [f.frame for f in fixtures]
    assert dec.buffered == 0


# ---------------------------------------------------------------------------------------------
# Decoding errors

# (description, dialect, bytes, reply_code, class_id, method_id)
ERRORS = [
    # 501 frame error
    *[(f"unknown frame type {kind}", "0-9-1",
       bytes([kind]) + b"\x00\x00\x00\x00\x00\x00\xce", 501, 0, 0)
      for kind in (0, 4, 5, 6, 7, 9, 0xCE, 0xFF)],
    ("unknown frame type with a payload", "0-8",
     b"\x04\x00\x01\x00\x00\x00\x02ab\xce", 501, 0, 0),
    ("heartbeat with a bad frame-end octet", "0-9-1",
     b"\x08\x00\x00\x00\x00\x00\x00\x00", 501, 0, 0),
    ("method frame with a bad frame-end octet", "0-9-1",
     b"\x01\x00\x01\x00\x00\x00\x04\x00\x5a\x00\x0a\xcf", 501, 0, 0),
    ("body frame with a bad frame-end octet", "0-8",
     b"\x03\x00\x01\x00\x00\x00\x01x\x00", 501, 0, 0),
    ("heartbeat with a payload", "0-9-1",
     b"\x08\x00\x00\x00\x00\x00\x01\x00\xce", 501, 0, 0),
    ("heartbeat on channel 1", "0-9-1",
     b"\x08\x00\x01\x00\x00\x00\x00\xce", 501, 0, 0),
    ("heartbeat on channel 65535", "0-8",
     b"\x08\xff\xff\x00\x00\x00\x00\xce", 501, 0, 0),
    # 503 command invalid
    ("unknown class 11", "0-9-1",
     b"\x01\x00\x01\x00\x00\x00\x04\x00\x0b\x00\x0a\xce", 503, 11, 10),
    ("unknown method basic.61", "0-9-1",
     b"\x01\x00\x01\x00\x00\x00\x04\x00\x3c\x00\x3d\xce", 503, 60, 61),
    ("class 65535 method 65535", "0-8",
     b"\x01\x00\x00\x00\x00\x00\x04\xff\xff\xff\xff\xce", 503, 65535, 65535),
    ("0-8 file.qos sent to a 0-9-1 decoder", "0-9-1",
     b"\x01\x00\x01\x00\x00\x00\x0b\x00\x46\x00\x0a\x00\x00\x00\x00\x00\x0a\x00\xce",
     503, 70, 10),
    ("0-9-1 confirm.select sent to a 0-8 decoder", "0-8",
     b"\x01\x00\x01\x00\x00\x00\x05\x00\x55\x00\x0a\x00\xce", 503, 85, 10),
    ("0-9-1 basic.nack sent to a 0-8 decoder", "0-8",
     b"\x01\x00\x01\x00\x00\x00\x0d\x00\x3c\x00\x78" + b"\x00" * 8 + b"\x02\xce",
     503, 60, 120),
    ("content header for class 10 (connection)", "0-9-1",
     b"\x02\x00\x01\x00\x00\x00\x0e\x00\x0a\x00\x00" + b"\x00" * 8 + b"\x00\x00\xce",
     503, 0, 0),
    ("content header for 0-8's file class in 0-9-1", "0-9-1",
     b"\x02\x00\x01\x00\x00\x00\x0e\x00\x46\x00\x00" + b"\x00" * 8 + b"\x00\x00\xce",
     503, 0, 0),
    ("content header for class 0", "0-8",
     b"\x02\x00\x01\x00\x00\x00\x0e\x00\x00\x00\x00" + b"\x00" * 8 + b"\x00\x00\xce",
     503, 0, 0),
    # 502 syntax error
    ("empty method frame", "0-9-1", b"\x01\x00\x01\x00\x00\x00\x00\xce", 502, 0, 0),
    ("method frame of 3 bytes", "0-9-1",
     b"\x01\x00\x01\x00\x00\x00\x03\x00\x14\x00\xce", 502, 0, 0),
    ("connection.tune missing its heartbeat", "0-9-1",
     b"\x01\x00\x00\x00\x00\x00\x0a\x00\x0a\x00\x1e\x07\xff\x00\x02\x00\x00\xce", 502, 10, 30),
    ("basic.ack with a 7-byte delivery tag", "0-9-1",
     b"\x01\x00\x01\x00\x00\x00\x0b\x00\x3c\x00\x50" + b"\x00" * 7 + b"\xce", 502, 60, 80),
    ("basic.cancel-ok with a short string cut short", "0-9-1",
     b"\x01\x00\x01\x00\x00\x00\x07\x00\x3c\x00\x1f\x05ab\xce", 502, 60, 31),
    ("connection.secure with a long string cut short", "0-9-1",
     b"\x01\x00\x00\x00\x00\x00\x0b\x00\x0a\x00\x14\x00\x00\x00\x09abc\xce", 502, 10, 20),
    ("connection.start-ok with a table length past the frame", "0-9-1",
     b"\x01\x00\x00\x00\x00\x00\x08\x00\x0a\x00\x0b\xff\xff\xff\xff\xce", 502, 10, 11),
    ("channel.alert with an unknown field tag", "0-8",
     b"\x01\x00\x01\x00\x00\x00\x0f\x00\x14\x00\x1e\x00\x00\x00"
     b"\x00\x00\x00\x04\x01kZ\x00\xce", 502, 20, 30),
    ("connection.tune with a trailing byte", "0-9-1",
     b"\x01\x00\x00\x00\x00\x00\x0d\x00\x0a\x00\x1e\x07\xff\x00\x02\x00\x00\x00\x3c\x00\xce",
     502, 10, 30),
    ("channel.close-ok with a trailing byte", "0-9-1",
     b"\x01\x00\x01\x00\x00\x00\x05\x00\x14\x00\x29\x00\xce", 502, 20, 41),
    ("0-8 channel.open-ok (no arguments) with 0-9-1's channel-id", "0-8",
     b"\x01\x00\x01\x00\x00\x00\x08\x00\x14\x00\x0b\x00\x00\x00\x00\xce", 502, 20, 11),
    ("content header with weight 1", "0-9-1",
     b"\x02\x00\x01\x00\x00\x00\x0e\x00\x3c\x00\x01" + b"\x00" * 8 + b"\x00\x00\xce",
     502, 0, 0),
    ("content header with weight 0x8000", "0-8",
     b"\x02\x00\x01\x00\x00\x00\x0e\x00\x3c\x80\x00" + b"\x00" * 8 + b"\x00\x00\xce",
     502, 0, 0),
    ("content header of 13 bytes", "0-9-1",
     b"\x02\x00\x01\x00\x00\x00\x0d\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x00\xce", 502, 0, 0),
    ("empty content header", "0-9-1", b"\x02\x00\x01\x00\x00\x00\x00\xce", 502, 0, 0),
    ("property flags with the continuation bit", "0-9-1",
     b"\x02\x00\x01\x00\x00\x00\x0e\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x00\x01\xce",
     502, 0, 0),
    ("property flags with bit 1, past the 14 basic properties", "0-9-1",
     b"\x02\x00\x01\x00\x00\x00\x0e\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x00\x02\xce",
     502, 0, 0),
    ("0-8 file property flags with bit 6, past its 9 properties", "0-8",
     b"\x02\x00\x01\x00\x00\x00\x0e\x00\x46\x00\x00" + b"\x00" * 8 + b"\x00\x40\xce",
     502, 0, 0),
    ("0-8 tunnel property flags with bit 10, past its 5 properties", "0-8",
     b"\x02\x00\x01\x00\x00\x00\x0e\x00\x6e\x00\x00" + b"\x00" * 8 + b"\x04\x00\xce",
     502, 0, 0),
    ("content-type flagged but absent", "0-9-1",
     b"\x02\x00\x01\x00\x00\x00\x0e\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x80\x00\xce",
     502, 0, 0),
    ("content-type shorter than its length", "0-9-1",
     b"\x02\x00\x01\x00\x00\x00\x11\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x80\x00\x05ab\xce",
     502, 0, 0),
    ("headers table cut short", "0-9-1",
     b"\x02\x00\x01\x00\x00\x00\x12\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x20\x00\x00\x00\x00\x09"
     b"\xce", 502, 0, 0),
    ("priority flagged but absent", "0-8",
     b"\x02\x00\x01\x00\x00\x00\x0e\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x08\x00\xce",
     502, 0, 0),
    ("timestamp beyond datetime's range", "0-9-1",
     b"\x02\x00\x01\x00\x00\x00\x16\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x00\x40" + b"\xff" * 8
     + b"\xce", 502, 0, 0),
    ("properties with a trailing byte", "0-9-1",
     b"\x02\x00\x01\x00\x00\x00\x10\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x10\x00\x02\x00\xce",
     502, 0, 0),
]


def expect_error(dec: FrameDecoder, code: int) -> FrameDecodeError:
    try:
        frame = dec.next_frame()
    except FrameDecodeError as exc:
        assert isinstance(exc, ProtocolError)
        assert exc.reply_code == code, exc
        return exc
    except BaseException as exc:
        pytest.fail(f"expected FrameDecodeError({code}), got {type(exc).__name__}: {exc!r}")
    pytest.fail(f"expected FrameDecodeError({code}), got {frame!r}")


@pytest.mark.parametrize(("description", "dialect", "data", "code", "class_id", "method_id"),
                         ERRORS, ids=[e[0] for e in ERRORS])
def test_decode_error(description: str, dialect: str, data: bytes, code: int,
                      class_id: int, method_id: int) -> None:
    assert int.from_bytes(data[3:7], "big") == len(data) - 8, "bad test literal"
    dec = decoder(dialect)
    dec.receive_data(data)
    error = expect_error(dec, code)
    assert (error.class_id, error.method_id) == (class_id, method_id)
    assert error.reply_text
    # Broken for good: the same error, whatever comes next.
    with pytest.raises(FrameDecodeError) as again:
        dec.next_frame()
    assert again.value is error
    dec.receive_data(HEARTBEAT)
    with pytest.raises(FrameDecodeError) as again:
        dec.next_frame()
    assert again.value is error


@pytest.mark.parametrize(("description", "dialect", "data", "code", "class_id", "method_id"),
                         ERRORS, ids=[e[0] for e in ERRORS])
def test_decode_error_byte_at_a_time(description: str, dialect: str, data: bytes, code: int,
                                     class_id: int, method_id: int) -> None:
    # The error is raised when the last byte of the frame arrives, not before.
    dec = decoder(dialect)
    for i in range(len(data) - 1):
        dec.receive_data(data[i:i + 1])
        assert dec.next_frame() is NEED_DATA
    dec.receive_data(data[-1:])
    expect_error(dec, code)


@pytest.mark.parametrize(("description", "dialect", "data", "code", "class_id", "method_id"),
                         ERRORS, ids=[e[0] for e in ERRORS])
def test_decode_error_after_a_good_frame(description: str, dialect: str, data: bytes,
                                         code: int, class_id: int, method_id: int) -> None:
    good = by_dialect(dialect)[0]
    dec = decoder(dialect)
    dec.receive_data(good.data + data + good.data)
    assert dec.next_frame() == good.frame
    error = expect_error(dec, code)
    with pytest.raises(FrameDecodeError) as again:
        dec.next_frame()
    assert again.value is error


def test_error_codes_cover_501_502_503() -> None:
    assert {e[3] for e in ERRORS} == {501, 502, 503}


# Every truncation and every extension of a fixture's payload (with the size field fixed up
# to match) is a clean error: 502 for methods and headers, never another exception.


def _resized(data: bytes, payload: bytes) -> bytes:
    return data[:3] + struct.pack(">I", len(payload)) + payload + b"\xce"


@pytest.mark.parametrize(
    "fixture", [f for f in FIXTURES if isinstance(f.frame, MethodFrame | HeaderFrame)],
    ids=[f.description for f in FIXTURES if isinstance(f.frame, MethodFrame | HeaderFrame)],
)
def test_every_truncated_payload_is_a_syntax_error(fixture: Fixture) -> None:
    payload = fixture.data[7:-1]
    for cut in range(len(payload)):
        dec = decoder(fixture.dialect)
        dec.receive_data(_resized(fixture.data, payload[:cut]))
        expect_error(dec, 502)


@pytest.mark.parametrize(
    "fixture", [f for f in FIXTURES if isinstance(f.frame, MethodFrame | HeaderFrame)],
    ids=[f.description for f in FIXTURES if isinstance(f.frame, MethodFrame | HeaderFrame)],
)
@pytest.mark.parametrize("extra", [b"\x00", b"\xce", b"\x00\x00\x00\x00", b"junk"])
def test_trailing_bytes_in_the_payload_are_a_syntax_error(fixture: Fixture,
                                                         extra: bytes) -> None:
    dec = decoder(fixture.dialect)
    dec.receive_data(_resized(fixture.data, fixture.data[7:-1] + extra))
    expect_error(dec, 502)


# ---------------------------------------------------------------------------------------------
# frame_max and memory


def test_frame_larger_than_frame_max_is_rejected_on_its_header() -> None:
    dec = decoder(frame_max=4096)
    header = b"\x03\x00\x01" + struct.pack(">I", 4096 - 7)  # 4097 bytes in all
    dec.receive_data(header[:6])
    assert dec.next_frame() is NEED_DATA
    dec.receive_data(header[6:])
    error = expect_error(dec, 501)
    assert "4097" in error.reply_text and "4096" in error.reply_text


def test_frame_of_exactly_frame_max_is_accepted() -> None:
    dec = decoder(frame_max=4096)
    payload = bytes(range(256)) * 16
    payload = payload[:4096 - 8]
    data = b"\x03\x00\x01" + struct.pack(">I", len(payload)) + payload + b"\xce"
    assert len(data) == 4096
    dec.receive_data(data[:7])
    assert dec.next_frame() is NEED_DATA
    dec.receive_data(data[7:])
    assert drain(dec) == [BodyFrame(1, payload)]


@pytest.mark.parametrize("kind", [1, 2, 3, 8, 0x42])
def test_one_gib_frame_header_fails_at_once(kind: int) -> None:
    # Only the 7-byte header is needed: the payload is never waited for nor buffered, and the
    # size check comes before the frame type is even looked at.
    dec = decoder(frame_max=131072)
    dec.receive_data(bytes([kind]) + b"\x00\x01" + struct.pack(">I", GIB))
    error = expect_error(dec, 501)
    if kind != 0x42:
        assert str(GIB + 8) in error.reply_text
    assert dec.buffered == 7


def test_oversized_frame_rejected_even_with_part_of_its_payload() -> None:
    dec = decoder(frame_max=131072)
    dec.receive_data(b"\x03\x00\x01" + struct.pack(">I", 131072 - 7) + b"x" * 1000)
    expect_error(dec, 501)


def test_frame_max_can_be_lowered_after_tune() -> None:
    dec = decoder(frame_max=131072)
    dec.frame_max = 4096
    dec.receive_data(b"\x03\x00\x01" + struct.pack(">I", 5000))
    expect_error(dec, 501)


def test_frame_max_zero_means_no_limit() -> None:
    dec = decoder(frame_max=0)
    payload = b"z" * 300_000
    dec.receive_data(b"\x03\x00\x01" + struct.pack(">I", len(payload)))
    assert dec.next_frame() is NEED_DATA
    dec.receive_data(payload + b"\xce")
    assert drain(dec) == [BodyFrame(1, payload)]


def test_partial_frame_buffers_only_what_arrived() -> None:
    dec = decoder(frame_max=131072)
    dec.receive_data(b"\x03\x00\x01" + struct.pack(">I", STREAM_MIN))
    for _ in range(10):
        dec.receive_data(b"y" * 1000)
        assert dec.next_frame() is NEED_DATA
    assert dec.buffered == 7 + 10_000


# ---------------------------------------------------------------------------------------------
# A large body frame that has not all arrived is handed out in pieces


def _body_stream(payload: bytes, channel: int = 1) -> bytes:
    return b"\x03" + struct.pack(">HI", channel, len(payload)) + payload + b"\xce"


def _feed_in_chunks(dec: FrameDecoder, data: bytes, chunk: int) -> list[object]:
    frames: list[object] = []
    for start in range(0, len(data), chunk):
        dec.receive_data(data[start:start + chunk])
        frames.extend(drain(dec))
    return frames


@pytest.mark.parametrize("chunk", [1000, 4096, 65536, 65543, 100_007])
def test_large_body_frame_arriving_in_chunks_comes_out_in_pieces(chunk: int) -> None:
    payload = bytes(range(256)) * 500  # 128,000 octets: more than STREAM_MIN
    method = spec.Basic.Ack(delivery_tag=7)
    data = _body_stream(payload, channel=3) + encode_method(2, method)
    dec = decoder(frame_max=131072)
    frames = _feed_in_chunks(dec, data, chunk)
    pieces = frames[:-1]
    assert frames[-1] == MethodFrame(2, method)
    assert all(isinstance(p, BodyFrame) and p.channel == 3 for p in pieces)
    assert len(pieces) >= 2
    assert all(isinstance(p.payload, memoryview) for p in pieces)  # type: ignore[attr-defined]
    assert b"".join(p.payload for p in pieces) == payload  # type: ignore[attr-defined]
    assert dec.buffered == 0


def test_large_body_frame_received_whole_is_one_view() -> None:
    payload = b"w" * (STREAM_MIN * 4)
    dec = decoder(frame_max=131072)
    dec.receive_data(_body_stream(payload) + HEARTBEAT)
    [frame, heartbeat] = drain(dec)
    assert isinstance(frame, BodyFrame) and type(frame.payload) is memoryview
    assert frame.payload == payload
    assert heartbeat == HeartbeatFrame()


def test_body_frame_of_stream_min_octets_is_not_split() -> None:
    payload = b"s" * STREAM_MIN
    frames = _feed_in_chunks(decoder(), _body_stream(payload), 1000)
    assert frames == [BodyFrame(1, payload)]
    assert type(frames[0].payload) is bytes  # type: ignore[attr-defined]


def test_streamed_body_frame_with_a_bad_end_octet_is_a_frame_error() -> None:
    payload = b"e" * 50_000
    data = _body_stream(payload)[:-1] + b"\x00"
    dec = decoder()
    dec.receive_data(data[:30_000])
    assert isinstance(dec.next_frame(), BodyFrame)
    dec.receive_data(data[30_000:])
    assert isinstance(dec.next_frame(), BodyFrame)
    error = expect_error(dec, 501)
    assert "0x00" in error.reply_text
    with pytest.raises(FrameDecodeError):
        dec.next_frame()


def test_streamed_body_frame_waits_for_its_end_octet() -> None:
    payload = b"t" * 40_000
    data = _body_stream(payload) + HEARTBEAT
    dec = decoder()
    pieces = _feed_in_chunks(dec, data[:-len(HEARTBEAT) - 1], 7000)
    assert b"".join(p.payload for p in pieces) == payload  # type: ignore[attr-defined]
    assert dec.next_frame() is NEED_DATA
    dec.receive_data(data[-len(HEARTBEAT) - 1:])
    assert drain(dec) == [HeartbeatFrame()]


def test_oversized_body_frame_is_refused_before_any_piece() -> None:
    dec = decoder(frame_max=65536)
    dec.receive_data(b"\x03\x00\x01" + struct.pack(">I", 70_000) + b"x" * 40_000)
    expect_error(dec, 501)


# ---------------------------------------------------------------------------------------------
# encode_content: splitting bodies by frame_max


def _decode_content(data: bytes, frame_max: int) -> list[object]:
    dec = decoder(frame_max=frame_max)
    dec.receive_data(data)
    return drain(dec)


PUBLISH = spec.Basic.Publish(exchange="ex", routing_key="rk")
PROPS = spec.BasicProperties(content_type="text/plain", delivery_mode=2)


@pytest.mark.parametrize("frame_max", [4096, 131072])
def test_encode_content_splits_a_body_of_three_and_a_half_frames(frame_max: int) -> None:
    chunk = frame_max - 8
    body = bytes(i % 251 for i in range(chunk * 7 // 2))
    parts = encode_content(5, PUBLISH, PROPS, body, frame_max)
    data = b"".join(bytes(p) for p in parts)
    frames = _decode_content(data, frame_max)
    assert frames[0] == MethodFrame(5, PUBLISH)
    assert frames[1] == HeaderFrame(5, 60, len(body), PROPS)
    bodies = frames[2:]
    assert [type(f) for f in bodies] == [BodyFrame] * 4
    assert [len(f.payload) for f in bodies] == [chunk, chunk, chunk, chunk // 2]
    assert all(f.channel == 5 for f in bodies)
    assert b"".join(f.payload for f in bodies) == body
    # Every frame on the wire is within frame_max.
    sizes = [7 + int.from_bytes(data[pos + 3:pos + 7], "big") + 1 for pos in _frame_starts(data)]
    assert max(sizes) <= frame_max
    assert sum(sizes) == len(data)


def _frame_starts(data: bytes) -> list[int]:
    starts, pos = [], 0
    while pos < len(data):
        starts.append(pos)
        pos += 8 + int.from_bytes(data[pos + 3:pos + 7], "big")
    assert pos == len(data)
    return starts


def test_encode_content_large_body_is_not_copied() -> None:
    body = bytearray(b"q" * 10_000)
    parts = encode_content(1, PUBLISH, PROPS, body, 4096)
    views = [p for p in parts if isinstance(p, memoryview)]
    assert len(views) == 3
    assert all(v.obj is body for v in views)


def test_encode_content_empty_body_has_no_body_frame() -> None:
    parts = encode_content(1, PUBLISH, PROPS, b"", 4096)
    frames = _decode_content(b"".join(bytes(p) for p in parts), 4096)
    assert frames == [MethodFrame(1, PUBLISH), HeaderFrame(1, 60, 0, PROPS)]


def test_encode_content_body_of_exactly_one_frame() -> None:
    body = b"e" * (4096 - 8)
    parts = encode_content(1, PUBLISH, PROPS, body, 4096)
    assert len(parts) == 1 and isinstance(parts[0], bytes)
    frames = _decode_content(parts[0], 4096)
    assert frames == [MethodFrame(1, PUBLISH), HeaderFrame(1, 60, len(body), PROPS),
                      BodyFrame(1, body)]


def test_encode_content_one_byte_over_one_frame() -> None:
    body = b"e" * (4096 - 8) + b"!"
    parts = encode_content(1, PUBLISH, PROPS, body, 4096)
    frames = _decode_content(b"".join(bytes(p) for p in parts), 4096)
    assert [len(f.payload) for f in frames[2:]] == [4096 - 8, 1]
    assert b"".join(f.payload for f in frames[2:]) == body


def test_encode_content_frame_max_zero_does_not_split() -> None:
    body = b"big" * 400_000
    parts = encode_content(1, PUBLISH, PROPS, body, 0)
    frames = _decode_content(b"".join(bytes(p) for p in parts), 0)
    assert frames == [MethodFrame(1, PUBLISH), HeaderFrame(1, 60, len(body), PROPS),
                      BodyFrame(1, body)]


def test_encode_content_exact_bytes() -> None:
    parts = encode_content(1, spec.Basic.Publish(routing_key="q"),
                           spec.BasicProperties(delivery_mode=1), b"hi", 4096)
    assert b"".join(bytes(p) for p in parts) == (
        b"\x01\x00\x01\x00\x00\x00\x0a\x00\x3c\x00\x28\x00\x00\x00\x01q\x00\xce"
        b"\x02\x00\x01\x00\x00\x00\x0f\x00\x3c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02"
        b"\x10\x00\x01\xce"
        b"\x03\x00\x01\x00\x00\x00\x02hi\xce"
    )


BIG_PROPS = spec.BasicProperties(headers={"x-big": "h" * 5000})


def test_encode_content_refuses_a_header_over_frame_max() -> None:
    with pytest.raises(EncodeError) as info:
        encode_content(1, PUBLISH, BIG_PROPS, b"body", 4096)
    assert isinstance(info.value, UsageError)
    assert "4096" in str(info.value)
    # Fine without the limit, or with a large one.
    assert encode_content(1, PUBLISH, BIG_PROPS, b"body", 0)
    assert encode_content(1, PUBLISH, BIG_PROPS, b"body", 131072)


def test_encode_header_and_method_refuse_frames_over_frame_max() -> None:
    with pytest.raises(EncodeError):
        encode_header(1, 0, BIG_PROPS, 4096)
    big = spec.Queue.Declare(queue="q", arguments={"x-big": "a" * 5000})
    with pytest.raises(EncodeError) as info:
        encode_method(1, big, 4096)
    assert "queue.declare" in str(info.value)
    with pytest.raises(EncodeError):
        encode_content(1, spec.Basic.Publish(exchange="e" * 200), PROPS, b"",
                       len(encode_method(1, spec.Basic.Publish(exchange="e" * 200))) - 1)


def test_publish_over_frame_max_queues_nothing() -> None:
    conn, ch = open_connection("0-9-1", frame_max=4096)
    assert conn.frame_max == 4096
    conn.data_to_send()
    with pytest.raises(EncodeError):
        conn.basic_publish(ch, "", "q", b"body", BIG_PROPS)
    assert conn.data_to_send() == b""
    conn.basic_publish(ch, "", "q", b"body", PROPS)
    assert conn.data_to_send()


@pytest.mark.parametrize(("code", "text"), [(200, "x" * 300), (70000, "bye")])
def test_close_channel_with_unencodable_arguments_leaves_the_channel_open(code: int,
                                                                          text: str) -> None:
    # Regression: close_channel() used to set the channel CLOSING before encoding
    # channel.close, leaving it stuck there with nothing sent when encoding failed.
    conn, ch = open_connection("0-9-1")
    with pytest.raises(UsageError):
        conn.close_channel(ch, code, text)
    # Local misuse: nothing queued, nothing changed.
    assert conn.data_to_send() == b""
    assert conn.channel_state(ch) is ChannelState.OPEN


def test_close_truncates_a_long_non_ascii_reply_text() -> None:
    # Regression: the text used to be cut to 255 characters, not bytes, and raised EncodeError.
    conn, _ = open_connection("0-9-1")
    conn.close(200, "\u00e9" * 200)  # 400 bytes
    dec = decoder()
    dec.receive_data(conn.data_to_send())
    (frame,) = drain(dec)
    assert frame.method == spec.Connection.Close(reply_code=200, reply_text="\u00e9" * 127)


def test_close_truncates_a_long_ascii_reply_text() -> None:
    conn, _ = open_connection("0-9-1")
    conn.close(200, "x" * 400)
    dec = decoder()
    dec.receive_data(conn.data_to_send())
    (frame,) = drain(dec)
    assert frame.method == spec.Connection.Close(reply_code=200, reply_text="x" * 255)


def test_zero_length_body_frame_in_0_8() -> None:
    dec = decoder("0-8")
    dec.receive_data(b"\x03\x00\x09\x00\x00\x00\x00\xce")
    assert drain(dec) == [BodyFrame(9, b"")]


def test_0_8_decoder_knows_0_8_property_classes() -> None:
    assert set(spec_0_8.DIALECT.properties) == {60, 70, 80, 110}
    assert set(spec.DIALECT.properties) == {60}
