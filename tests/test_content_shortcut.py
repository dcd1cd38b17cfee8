"""The delivery shortcut (`FrameDecoder.next_content`) against the frame-by-frame path.

When a content method's header and body frames are already received whole, the core takes
them in one go. Whatever the bytes, valid or damaged, and however they are cut, the core
must behave exactly as it does frame by frame: same events, same errors, same output. Each
stream here is fed to two cores, one with the shortcut turned off, and their behaviour is
compared.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from brokersim import BrokerSim, open_connection
from frame_fixtures import chunks, mutate

from txpika import events as ev
from txpika import spec, spec_0_8
from txpika._specbase import Dialect
from txpika.connection import NEED_DATA, Connection
from txpika.frames import STREAM_MIN, FrameDecoder, encode_body, encode_header, encode_method

SEED = 0x5C07C
CASES = 600


class NoShortcut(FrameDecoder):
    __slots__ = ()

    def next_content(self, channel: int, class_id: int) -> None:
        return None


class CountingShortcut(FrameDecoder):
    __slots__ = ()
    taken = 0

    def next_content(self, channel: int, class_id: int) -> Any:
        got = super().next_content(channel, class_id)
        CountingShortcut.taken += got is not None
        return got


def consuming_core(dialect: Dialect, shortcut: bool) -> tuple[Connection, BrokerSim]:
    core, sim = open_connection(dialect=dialect)
    sim.open_channel(1)
    sim.open_channel(2)
    sim.consume(1, "c1")
    sim.consume(2, "c2", no_ack=True)
    core.data_to_send()
    core._decoder.__class__ = CountingShortcut if shortcut else NoShortcut
    return core, sim


def observe(core: Connection, parts: list[bytes]) -> list[Any]:
    """Everything the core does with ``parts``: its events (errors as type and text) and
    the bytes it writes, in order."""
    seen: list[Any] = []
    for part in parts:
        core.receive_data(part)
        while (event := core.next_event()) is not NEED_DATA:
            if isinstance(event, ev.ConnectionClosed):
                seen.append(("closed", type(event.error).__name__, str(event.error)))
            else:
                seen.append(event)
        out = core.data_to_send()
        if out:
            seen.append(("wrote", out))
    return seen


def delivery(dialect: Dialect, channel: int, tag: int, body: bytes,
             properties: Any = None, frames: list[int] | None = None) -> bytes:
    m = dialect.module
    method = m.Basic.Deliver(f"c{channel}", tag, False, "ex", "rk")
    props = properties if properties is not None else m.BasicProperties()
    out = [encode_method(channel, method), encode_header(channel, len(body), props)]
    pos = 0
    for size in frames if frames is not None else ([len(body)] if body else []):
        out.extend(bytes(p) for p in encode_body(channel, body[pos:pos + size]))
        pos += size
    return b"".join(out)


def stream(rng: random.Random, dialect: Dialect) -> bytes:
    """A few deliveries on channels 1 and 2: bodies empty, small, split or over
    STREAM_MIN, with or without properties."""
    m = dialect.module
    parts = []
    tags = {1: 0, 2: 0}
    for _ in range(rng.randint(1, 4)):
        channel = rng.choice((1, 2))
        tags[channel] += 1
        size = rng.choice((0, 1, 128, 4000, STREAM_MIN, STREAM_MIN + 1))
        body = bytes(rng.getrandbits(8) for _ in range(min(size, 64))) * (size // 64 + 1)
        body = body[:size]
        frames = None
        if size > 1 and rng.random() < 0.3:
            cut = rng.randint(1, size - 1)
            frames = [cut, size - cut]
        props = None
        if rng.random() < 0.5:
            props = m.BasicProperties(content_type="text/plain", delivery_mode=2,
                                      headers={"n": tags[channel], "s": "x"},
                                      message_id=f"id{tags[channel]}")
        parts.append(delivery(dialect, channel, tags[channel], body, props, frames))
    return b"".join(parts)


def observe_read_on(core: Connection, parts: list[bytes]) -> list[Any]:
    """As `observe`, but every part is received before any is decoded (as when the
    adapter reads on from a busy socket: the decoder holds several pieces)."""
    for part in parts[:-1]:
        core.receive_data(part)
    return observe(core, parts[-1:])


@pytest.mark.parametrize("feed,seed,cases", [
    (observe, SEED, CASES),  # each piece decoded as it comes
    (observe_read_on, SEED + 1, CASES // 2),  # the decoder holds all the pieces at once
], ids=["piece-by-piece", "read-on"])
@pytest.mark.parametrize("dialect", [spec.DIALECT, spec_0_8.DIALECT], ids=["0-9-1", "0-8"])
def test_shortcut_behaves_as_frame_by_frame(dialect: Dialect, feed: Any, seed: int,
                                            cases: int) -> None:
    rng = random.Random(seed)
    CountingShortcut.taken = 0
    for case in range(cases):
        data = stream(rng, dialect)
        if case % 3:
            data = mutate(rng, data, [delivery(dialect, 1, 99, b"spliced")])
        parts = chunks(rng, data)
        fast, _ = consuming_core(dialect, shortcut=True)
        slow, _ = consuming_core(dialect, shortcut=False)
        assert feed(fast, parts) == feed(slow, parts), (case, parts)
    assert CountingShortcut.taken > cases // 3  # the shortcut was really exercised


def test_shortcut_takes_a_delivery_from_the_next_received_piece() -> None:
    dec = FrameDecoder(spec.DIALECT)
    props = spec.BasicProperties(message_id="m")
    data = delivery(spec.DIALECT, 1, 1, b"hello", props)
    method_len = len(encode_method(1, spec.Basic.Deliver("c1", 1, False, "ex", "rk")))
    dec.receive_data(data[:method_len])  # a read that ends with the method frame
    dec.receive_data(data[method_len:])  # and the next one, received before decoding
    assert dec.next_frame().method.NAME == "basic.deliver"  # type: ignore[union-attr]
    assert dec.next_content(1, 60) == (props, b"hello")
    assert dec.buffered == 0
    assert dec.next_frame() is NEED_DATA


def test_shortcut_takes_a_whole_delivery_and_leaves_the_next_frame() -> None:
    dec = FrameDecoder(spec.DIALECT)
    props = spec.BasicProperties(content_type="a/b", headers={"k": 1})
    data = delivery(spec.DIALECT, 1, 1, b"hello", props) + encode_method(1, spec.Basic.Ack(3))
    dec.receive_data(data)
    frame = dec.next_frame()
    assert frame.method == spec.Basic.Deliver("c1", 1, False, "ex", "rk")  # type: ignore[union-attr]
    assert dec.next_content(1, 60) == (props, b"hello")
    nxt = dec.next_frame()
    assert nxt.method == spec.Basic.Ack(3)  # type: ignore[union-attr]
    assert dec.buffered == 0


def _after_method(data: bytes, frame_max: int = 131072) -> FrameDecoder:
    dec = FrameDecoder(spec.DIALECT, frame_max)
    dec.receive_data(data)
    dec.next_frame()
    return dec


@pytest.mark.parametrize("why,data,channel,class_id,frame_max", [
    ("header not all here", delivery(spec.DIALECT, 1, 1, b"abc")[:-12], 1, 60, 131072),
    ("body not all here", delivery(spec.DIALECT, 1, 1, b"abc")[:-1], 1, 60, 131072),
    ("another channel", delivery(spec.DIALECT, 1, 1, b"abc"), 2, 60, 131072),
    ("another class", delivery(spec.DIALECT, 1, 1, b"abc"), 1, 50, 131072),
    ("body in two frames", delivery(spec.DIALECT, 1, 1, b"abcd", frames=[2, 2]), 1, 60, 131072),
    ("body over STREAM_MIN", delivery(spec.DIALECT, 1, 1, b"z" * (STREAM_MIN + 1)), 1, 60,
     131072),
    ("body frame over frame_max", delivery(spec.DIALECT, 1, 1, b"z" * 5000), 1, 60, 4096),
])
def test_shortcut_declines_and_consumes_nothing(why: str, data: bytes, channel: int,
                                                class_id: int, frame_max: int) -> None:
    dec = _after_method(data, frame_max)
    before = dec.buffered
    assert dec.next_content(channel, class_id) is None, why
    assert dec.buffered == before


def test_shortcut_declines_damaged_frames() -> None:
    good = delivery(spec.DIALECT, 1, 1, b"abc")
    method_len = len(encode_method(1, spec.Basic.Deliver("c1", 1, False, "ex", "rk")))
    header_len = len(encode_header(1, 3, spec.BasicProperties()))
    damaged = {
        "header end octet": method_len + header_len - 1,
        "body end octet": len(good) - 1,
        "body frame type": method_len + header_len,
    }
    for why, index in damaged.items():
        data = bytearray(good)
        data[index] ^= 0x55
        dec = _after_method(bytes(data))
        assert dec.next_content(1, 60) is None, why
    weight = bytearray(good)
    struct.pack_into(">H", weight, method_len + 9, 1)
    assert _after_method(bytes(weight)).next_content(1, 60) is None
