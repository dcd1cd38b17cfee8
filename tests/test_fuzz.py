"""Bounded fuzzing of the frame decoder and of the sans-IO connection core.

Deterministic (a fixed `random.Random` seed and a fixed number of inputs, so the same inputs
on a fast machine and a busy one): random bytes and mutated valid frames (bit flips,
truncations, insertions, deletions, length-field changes, splices of the fixtures in
tests/frame_fixtures.py) go into `FrameDecoder` and into an open `Connection`. The decoder
may only return frames or NEED_DATA, or raise `FrameDecodeError`; the connection core may
only return events or NEED_DATA and must never raise. A call that never returns is caught
by the test timeout. tools/fuzz_frames.py runs the same kind of inputs for millions of runs.
"""

from __future__ import annotations

import random
import struct
import traceback
from dataclasses import dataclass, field

import pytest
from frame_fixtures import (
    DIALECTS,
    FIXTURES,
    MUTATORS,
    by_dialect,
    chunks,
    mutate,
    open_connection,
    server_corpus,
)

from txpika import events
from txpika.connection import NEED_DATA, ConnState
from txpika.errors import ProtocolError
from txpika.frames import (
    BodyFrame,
    FrameDecodeError,
    FrameDecoder,
    HeaderFrame,
    HeartbeatFrame,
    MethodFrame,
    encode_header,
    encode_method,
)

SEED = 0x7A9B1CA
#: Inputs per fuzz test (about a second each on a 2-core CI machine).
DECODER_INPUTS = 20000
CONNECTION_INPUTS = 6000
EVENT_TYPES = tuple(getattr(events, name) for name in events.__all__ if name != "Event")


def test_mutators_change_their_input() -> None:
    rng = random.Random(1)
    data = FIXTURES[0].data
    for mutator in MUTATORS:
        outputs = {mutator(rng, data, [b"xyz"]) for _ in range(50)}
        assert outputs - {data}, mutator.__name__
    assert b"".join(chunks(rng, data)) == data


# ---------------------------------------------------------------------------------------------
# The decoder


@dataclass
class Stats:
    inputs: int = 0
    frames: int = 0
    errors: dict[int, int] = field(default_factory=dict)


def feed_decoder(dialect: str, frame_max: int, parts: list[bytes], stats: Stats) -> None:
    """Feed ``parts`` to a fresh decoder, draining it after each; fail on any misbehaviour."""
    d = DIALECTS[dialect]
    dec = FrameDecoder(d, frame_max)
    methods = tuple(d.methods.values())
    properties = tuple(d.properties.values())
    for part in parts:
        dec.receive_data(part)
        while True:
            try:
                frame = dec.next_frame()
            except FrameDecodeError as exc:
                assert exc.reply_code in (501, 502, 503), exc
                stats.errors[exc.reply_code] = stats.errors.get(exc.reply_code, 0) + 1
                with pytest.raises(FrameDecodeError) as again:
                    dec.next_frame()
                assert again.value is exc
                return
            if frame is NEED_DATA:
                break
            stats.frames += 1
            if isinstance(frame, MethodFrame):
                assert isinstance(frame.method, methods)
            elif isinstance(frame, HeaderFrame):
                assert isinstance(frame.properties, properties)
                assert frame.class_id == frame.properties.CLASS_ID
            elif isinstance(frame, BodyFrame):
                # a memoryview: a piece of a large body frame still arriving
                assert isinstance(frame.payload, (bytes, memoryview))
            else:
                assert isinstance(frame, HeartbeatFrame) and frame.channel == 0


def _fail(what: str, dialect: str, parts: list[bytes]) -> None:
    pytest.fail(f"{what}\ndialect {dialect}, input chunks {parts!r}\n{traceback.format_exc()}")


def test_fuzz_frame_decoder() -> None:
    rng = random.Random(SEED)
    pools = {d: [f.data for f in by_dialect(d)] for d in DIALECTS}
    # Inputs that look like the other dialect's frames are mutated too.
    everything = [f.data for f in FIXTURES]
    stats = Stats()
    while stats.inputs < DECODER_INPUTS:
        dialect = rng.choice(list(DIALECTS))
        pool = pools[dialect] if rng.random() < 0.8 else everything
        kind = rng.random()
        if kind < 0.15:
            # Random bytes, usually behind a plausible frame type.
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
            if data and rng.random() < 0.7:
                data = bytes([rng.choice([1, 2, 3, 8])]) + data[1:]
        else:
            data = b"".join(rng.choice(pool) for _ in range(rng.randint(1, 3)))
            data = mutate(rng, data, pool)
        frame_max = rng.choice([4096, 131072, 131072, 0])
        parts = chunks(rng, data)
        try:
            feed_decoder(dialect, frame_max, parts, stats)
        except AssertionError:
            _fail("decoder misbehaved", dialect, parts)
        except BaseException as exc:
            _fail(f"decoder raised {type(exc).__name__}, not FrameDecodeError", dialect, parts)
        stats.inputs += 1
    print(stats)  # shown with pytest -s
    # What the inputs reached (fixed by the seed): frames, and every kind of decode error.
    assert stats.frames >= 1000, stats
    assert set(stats.errors) == {501, 502, 503}, stats


def test_fuzz_decoder_announced_sizes_do_not_allocate() -> None:
    # Headers announcing huge frames, alone and with a little payload: with a frame_max they
    # fail on the header, before any payload is buffered.
    rng = random.Random(SEED + 1)
    for _ in range(2000):
        size = rng.choice([2**32 - 1, 2**31, 2**30, 131065, rng.randrange(2**32)])
        data = bytes([rng.choice([1, 2, 3, 8])]) + b"\x00\x01" + struct.pack(">I", size)
        dec = FrameDecoder(DIALECTS["0-9-1"], 131072)
        dec.receive_data(data + b"\x00" * rng.randint(0, 32))
        with pytest.raises(FrameDecodeError) as info:
            dec.next_frame()
        assert info.value.reply_code == 501
        assert dec.buffered <= 7 + 32  # nothing allocated for the announced size


# ---------------------------------------------------------------------------------------------
# The connection core


def _check_close_written(conn, error: ProtocolError, dialect: str) -> None:
    """A protocol error on an open connection writes connection.close with its code."""
    dec = FrameDecoder(DIALECTS[dialect], 0)
    dec.receive_data(conn.data_to_send())
    frames = []
    while (frame := dec.next_frame()) is not NEED_DATA:
        frames.append(frame)
    assert frames, "nothing written after a protocol error"
    last = frames[-1]
    assert isinstance(last, MethodFrame) and last.channel == 0
    assert last.method.NAME == "connection.close"
    assert last.method.reply_code == error.reply_code


@dataclass
class CoreStats:
    inputs: int = 0
    sessions: int = 0
    events: dict[str, int] = field(default_factory=dict)
    protocol_errors: dict[int, int] = field(default_factory=dict)


def test_fuzz_connection_core() -> None:
    rng = random.Random(SEED + 2)
    stats = CoreStats()
    corpora = {d: server_corpus(d) for d in DIALECTS}
    acceptable = {d: server_corpus(d, fixtures=False) for d in DIALECTS}
    conn = None
    history: list[bytes] = []
    dialect = "0-9-1"
    while stats.inputs < CONNECTION_INPUTS:
        if conn is None or conn.state is ConnState.CLOSED or len(history) > 40:
            dialect = rng.choice(list(DIALECTS))
            conn, _ = open_connection(dialect, consume=True, confirm=dialect == "0-9-1")
            history = []
            stats.sessions += 1
        pool = corpora[dialect]
        items = [rng.choice(acceptable[dialect] if rng.random() < 0.8 else pool)
                 for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.5:
            # Mutate one of the frames, so that the others can take the core further.
            i = rng.randrange(len(items))
            items[i] = mutate(rng, items[i], pool)
        data = b"".join(items)
        closed = False
        for part in chunks(rng, data):
            history.append(part)
            try:
                conn.receive_data(part)
                while True:
                    event = conn.next_event()
                    if event is NEED_DATA:
                        break
                    assert isinstance(event, EVENT_TYPES), event
                    name = type(event).__name__
                    stats.events[name] = stats.events.get(name, 0) + 1
                    if isinstance(event, events.ConnectionClosed):
                        closed = True
                        error = event.error
                        assert isinstance(error, BaseException)
                        if isinstance(error, ProtocolError) and error.reply_code:
                            code = error.reply_code
                            stats.protocol_errors[code] = stats.protocol_errors.get(code, 0) + 1
                            assert code in (501, 502, 503, 504, 505), error
                            _check_close_written(conn, error, dialect)
            except AssertionError:
                _fail("the connection core misbehaved", dialect, history)
            except BaseException as exc:
                _fail(f"next_event raised {type(exc).__name__}", dialect, history)
            if closed:
                conn = None
                break
        if conn is not None:
            conn.data_to_send()
        stats.inputs += 1
    print(stats)  # shown with pytest -s
    # What the inputs reached (fixed by the seed).
    assert stats.sessions >= 20, stats
    assert stats.events.get("MessageReceived", 0) >= 20, stats
    assert stats.events.get("ConnectionClosed", 0) >= 20, stats
    assert {501, 502, 503} <= set(stats.protocol_errors), stats


# ---------------------------------------------------------------------------------------------
# Regression tests for what the fuzzing found, and the decode-error path it relies on


@pytest.mark.parametrize("dialect", list(DIALECTS))
@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x05\x00\x00\x00\x00\x00\x00\xce", 501),  # unknown frame type
        (b"\x01\x00\x01\x00\x00\x00\x05\x00\x3c\x00\x50\x00\xce", 502),  # truncated basic.ack
        (b"\x01\x00\x01\x00\x00\x00\x04\x00\x0b\x00\x0a\xce", 503),  # unknown class 11
        (b"\x03\x00\x01\x7f\xff\xff\xff", 501),  # larger than frame_max
    ],
)
def test_decode_error_closes_the_connection(dialect: str, data: bytes, code: int) -> None:
    conn, _ = open_connection(dialect)
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, events.ConnectionClosed)
    assert isinstance(event.error, ProtocolError)
    assert event.error.reply_code == code
    _check_close_written(conn, event.error, dialect)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(by_dialect(dialect)[0].data)
    assert conn.next_event() is NEED_DATA


@pytest.mark.parametrize("repeat", ["same", "lower"])
@pytest.mark.parametrize("method", ["basic.deliver", "basic.get-ok"])
def test_repeated_delivery_tag_is_a_protocol_error(repeat: str, method: str) -> None:
    # Found while writing the connection fuzzing (a repeated basic.deliver seed): a broker
    # that delivers tag 5 and then 5 again (or 4) made next_event() raise TagSet.add's
    # ValueError. That breaks the protocol: the core must close with a ProtocolError.
    conn, channel = open_connection("0-9-1", consume=True)
    m = DIALECTS["0-9-1"].module

    def deliver(tag: int) -> bytes:
        if method == "basic.deliver":
            frame = encode_method(channel, m.Basic.Deliver(consumer_tag="ctag",
                                                           delivery_tag=tag))
        else:
            conn.send_method(channel, m.Basic.Get(queue="q"))
            frame = encode_method(channel, m.Basic.GetOk(delivery_tag=tag))
        return frame + encode_header(channel, 0, m.BasicProperties())

    conn.receive_data(deliver(5))
    event = conn.next_event()
    assert isinstance(event, events.MessageReceived)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(deliver(5 if repeat == "same" else 4))
    event = conn.next_event()
    assert isinstance(event, events.ConnectionClosed)
    assert isinstance(event.error, ProtocolError)
    assert event.error.reply_code in (502, 503, 505)
    _check_close_written(conn, event.error, "0-9-1")
    assert conn.next_event() is NEED_DATA


def test_memory_broker_server_side_survives_fuzzed_client_bytes() -> None:
    """tools/fuzz_frames.py's server target (`txpika.testing`'s broker side fed mutated
    client commands after a handshake): no exception, no broken frame written, bounded."""
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parent.parent / "tools" / "fuzz_frames.py"
    done = subprocess.run(
        [sys.executable, str(tool), "--engine", "random", "--target", "server", "--runs",
         "1500", "--seed", str(SEED), "--quiet"],
        capture_output=True, text=True, timeout=100, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "inputs:          1500 (0 decoder, 1500 connection)" in done.stdout
    assert "result:          no crash" in done.stdout
