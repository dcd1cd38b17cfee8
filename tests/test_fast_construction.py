"""Proposed tests (not committed): the generated classes built by the fast __new__ and decode
behave as plain frozen slotted dataclasses; encode's fast path and its checked fallback agree."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from datetime import UTC, datetime

import pytest

from txpika import events, spec, spec_0_8
from txpika._wire import EncodeError, WireError
from txpika.frames import NEED_DATA, FrameDecodeError, FrameDecoder, encode_content

ALL = [c for m in (spec, spec_0_8) for c in [*m.METHODS.values(), *m.PROPERTIES.values()]]


@pytest.mark.parametrize("cls", ALL, ids=[f"{c.__module__}:{c.__qualname__}" for c in ALL])
def test_generated_class_is_a_frozen_slotted_dataclass(cls: type) -> None:
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert "__dict__" not in dir(cls())
    obj = cls()
    assert type(obj) is cls
    assert obj == cls() and hash(obj) == hash(cls()) if not any(
        isinstance(getattr(obj, f.name), dict) for f in dataclasses.fields(obj)) else True
    assert copy.copy(obj) == obj and copy.deepcopy(obj) == obj
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(obj, proto)) == obj
    assert dataclasses.replace(obj) == obj
    fields = dataclasses.fields(cls)
    if fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, fields[0].name, None)
        # decode builds an object of the class (a None table comes back as {})
        decoded = cls.decode(obj.encode(), 4 if hasattr(cls, "METHOD_ID") else 0)[0]
        assert type(decoded) is cls and decoded.encode() == obj.encode()


def test_keyword_and_positional_construction_agree() -> None:
    p = spec.BasicProperties("text/plain", None, {"a": 1}, 2)
    assert p == spec.BasicProperties(content_type="text/plain", headers={"a": 1},
                                     delivery_mode=2)
    with pytest.raises(TypeError):
        spec.BasicProperties(bogus=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        spec.Basic.Ack(1, False, 3)  # type: ignore[call-arg]


def test_subclass_of_a_generated_class() -> None:
    class Sub(spec.BasicProperties):
        pass

    sub = Sub(content_type="x")
    assert type(sub) is Sub and sub.content_type == "x" and sub.headers is None
    decoded, _ = Sub.decode(spec.BasicProperties(content_type="y").encode(), 0)
    assert type(decoded) is Sub and decoded.content_type == "y"


def test_message_received_fast_constructor() -> None:
    args = dict(channel=1, method=spec.Basic.Deliver(), properties=spec.BasicProperties(),
                body=b"x")
    fast = events._message_received(**args)
    assert type(fast) is events.MessageReceived and fast == events.MessageReceived(**args)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.body = b"y"  # type: ignore[misc]


@pytest.mark.parametrize("value", ["\udcff", "é" * 200, 5, b"x"])
def test_encode_fast_path_falls_back_to_the_checked_encoder(value: object) -> None:
    props = spec.BasicProperties(content_type=value)  # type: ignore[arg-type]
    method = spec.Basic.Publish(exchange=value)  # type: ignore[arg-type]
    for obj in (props, method):
        try:
            expected = obj._encode_checked()
        except EncodeError as exc:
            with pytest.raises(EncodeError, match=str(exc).split(":")[0][:20]):
                obj.encode()
        else:
            assert obj.encode() == expected


@pytest.mark.parametrize("value", [-1, 256, 2.0, "2", True])
def test_octet_properties(value: object) -> None:
    props = spec.BasicProperties(delivery_mode=value)  # type: ignore[arg-type]
    try:
        expected = props._encode_checked()
    except EncodeError:
        with pytest.raises(EncodeError):
            props.encode()
    else:
        assert props.encode() == expected


def test_timestamps() -> None:
    for ts in (datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
               datetime(2024, 5, 1, 12, 0, 0, 999999, tzinfo=UTC), datetime(2024, 5, 1)):
        props = spec.BasicProperties(timestamp=ts)
        assert props.encode() == props._encode_checked()
    with pytest.raises(EncodeError):
        spec.BasicProperties(timestamp=datetime(1969, 12, 31, tzinfo=UTC)).encode()
    with pytest.raises(WireError):
        spec.BasicProperties.decode(b"\x00\x40" + b"\xff" * 8, 0)


def test_in_place_decoding_does_not_read_into_the_next_frame() -> None:
    # A header frame whose headers table claims more bytes than the frame holds, followed by a
    # valid body frame: the decoder must fail (502), not borrow the next frame's bytes.
    good = b"".join(encode_content(1, spec.Basic.Deliver("c", 1, False, "e", "r"),
                                   spec.BasicProperties(headers={"k": "v"}), b"body", 0))
    dec = FrameDecoder(spec.DIALECT, 0)
    dec.receive_data(good)
    assert [dec.next_frame() for _ in range(3)][2].payload == b"body"
    assert dec.next_frame() is NEED_DATA
    start = good.index(b"\x02\x00\x01")
    header = bytearray(good[start:])
    table_at = start + 7 + 12 + 2
    header_table = table_at - start
    header[header_table:header_table + 4] = (100).to_bytes(4, "big")
    dec = FrameDecoder(spec.DIALECT, 0)
    dec.receive_data(good[:start] + bytes(header))
    dec.next_frame()
    with pytest.raises(FrameDecodeError) as info:
        dec.next_frame()
    assert info.value.reply_code == 502
