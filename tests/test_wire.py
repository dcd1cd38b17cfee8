"""Tests for txpika._wire: byte-exact fixtures, truncation, round trips, errors and fuzzing."""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txpika import _wire
from txpika._wire import (
    FIELD_TAGS,
    MAX_DEPTH,
    EncodeError,
    WireError,
    decode_array,
    decode_field_value,
    decode_longstr,
    decode_shortstr,
    decode_table,
    decode_timestamp,
)
from txpika._wire_encode import (
    encode_array,
    encode_field_value,
    encode_longstr,
    encode_shortstr,
    encode_table,
    encode_timestamp,
)
from txpika.errors import ProtocolError, UsageError

Decoder = Callable[[bytes, int], tuple[Any, int]]


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def table_bytes(body: bytes) -> bytes:
    return u32(len(body)) + body


def assert_same(actual: Any, expected: Any) -> None:
    """Equal, and of the same types all the way down (1 == True == 1.0 is not enough)."""
    assert type(actual) is type(expected), (actual, expected)
    if isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            assert type(key) is str
            assert_same(actual[key], expected[key])
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same(a, e)
    elif isinstance(expected, datetime):
        assert actual == expected
        assert actual.utcoffset() == expected.utcoffset()
    elif isinstance(expected, Decimal):
        # Same number and same exponent: Decimal("1.50") is not Decimal("1.5") here.
        assert actual.as_tuple() == expected.as_tuple()
    else:
        assert actual == expected


def check_decoder(decoder: Decoder, data: bytes, expected: Any) -> None:
    """Feed ``decoder`` the input whole, followed by garbage, at an offset, and truncated."""
    value, offset = decoder(data, 0)
    assert_same(value, expected)
    assert offset == len(data)

    for garbage in (b"\x00", b"\xff" * 9, b"S\x00\x00\x00\x05garbage"):
        value, offset = decoder(data + garbage, 0)
        assert_same(value, expected)
        assert offset == len(data)

    value, offset = decoder(b"pad" + data + b"tail", 3)
    assert_same(value, expected)
    assert offset == 3 + len(data)

    for cut in range(len(data)):
        with pytest.raises(WireError):
            decoder(data[:cut], 0)
        with pytest.raises(WireError):
            decoder(b"pad" + data[:cut], 3)


# ---------------------------------------------------------------------------------------------
# Byte-exact fixtures

TS = datetime(2024, 2, 29, 12, 30, 15, tzinfo=UTC)
TS_SECONDS = 1709209815

# (python value, exact bytes of the field value: tag + payload), for encoding and decoding.
FIELD_FIXTURES: list[tuple[str, Any, bytes]] = [
    ("true", True, b"t\x01"),
    ("false", False, b"t\x00"),
    ("int zero", 0, b"I\x00\x00\x00\x00"),
    ("int 42", 42, b"I\x00\x00\x00\x2a"),
    ("int -1", -1, b"I\xff\xff\xff\xff"),
    ("int32 max", 2**31 - 1, b"I\x7f\xff\xff\xff"),
    ("int32 min", -(2**31), b"I\x80\x00\x00\x00"),
    ("int64 just over int32", 2**31, b"l\x00\x00\x00\x00\x80\x00\x00\x00"),
    ("int64 below int32", -(2**31) - 1, b"l\xff\xff\xff\xff\x7f\xff\xff\xff"),
    ("int64 max", 2**63 - 1, b"l\x7f\xff\xff\xff\xff\xff\xff\xff"),
    ("int64 min", -(2**63), b"l\x80\x00\x00\x00\x00\x00\x00\x00"),
    ("double", 1.5, b"d\x3f\xf8\x00\x00\x00\x00\x00\x00"),
    ("double negative zero", -0.0, b"d\x80\x00\x00\x00\x00\x00\x00\x00"),
    ("double inf", float("inf"), b"d\x7f\xf0\x00\x00\x00\x00\x00\x00"),
    ("decimal 1.50", Decimal("1.50"), b"D\x02\x00\x00\x00\x96"),
    ("decimal -0.05", Decimal("-0.05"), b"D\x02\xff\xff\xff\xfb"),
    ("decimal 7", Decimal("7"), b"D\x00\x00\x00\x00\x07"),
    ("longstr", "text", b"S\x00\x00\x00\x04text"),
    ("longstr empty", "", b"S\x00\x00\x00\x00"),
    (
        "longstr unicode",
        "h\u00e9\u20ac\U0001f600",
        b"S\x00\x00\x00\x0ah\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80",
    ),
    ("longstr invalid utf-8", "a\udcff\udcc3", b"S\x00\x00\x00\x03a\xff\xc3"),
    ("bytes", b"\x00\x01\xff", b"x\x00\x00\x00\x03\x00\x01\xff"),
    ("bytes empty", b"", b"x\x00\x00\x00\x00"),
    ("timestamp", TS, b"T" + struct.pack(">Q", TS_SECONDS)),
    ("timestamp epoch", datetime(1970, 1, 1, tzinfo=UTC), b"T" + bytes(8)),
    ("void", None, b"V"),
    ("empty table", {}, b"F\x00\x00\x00\x00"),
    ("table", {"a": 1}, b"F\x00\x00\x00\x07\x01aI\x00\x00\x00\x01"),
    ("empty array", [], b"A\x00\x00\x00\x00"),
    (
        "array",
        [1, "x", None, True],
        b"A\x00\x00\x00\x0eI\x00\x00\x00\x01S\x00\x00\x00\x01xVt\x01",
    ),
    ("nested arrays", [[[]]], b"A\x00\x00\x00\x0aA\x00\x00\x00\x05A\x00\x00\x00\x00"),
]

# Tags txpika reads but never writes: (python value after decoding, exact bytes).
DECODE_ONLY_FIXTURES: list[tuple[str, Any, bytes]] = [
    ("int8 -128", -128, b"b\x80"),
    ("int8 127", 127, b"b\x7f"),
    ("int8 -1", -1, b"b\xff"),
    ("uint8 255", 255, b"B\xff"),
    ("uint8 0", 0, b"B\x00"),
    ("int16 -32768", -32768, b"s\x80\x00"),
    ("int16 258", 258, b"s\x01\x02"),
    ("uint16 65535", 65535, b"u\xff\xff"),
    ("uint32 max", 2**32 - 1, b"i\xff\xff\xff\xff"),
    ("uint32 2**31", 2**31, b"i\x80\x00\x00\x00"),
    ("float32 1.5", 1.5, b"f\x3f\xc0\x00\x00"),
    ("float32 -2.25", -2.25, b"f\xc0\x10\x00\x00"),
    ("bool nonzero is true", True, b"t\x07"),
    ("decimal keeps wire scale", Decimal("0.0"), b"D\x01\x00\x00\x00\x00"),
    ("decimal max scale", Decimal("1E-255"), b"D\xff\x00\x00\x00\x01"),
    (
        "timestamp 2**32-1",
        datetime(2106, 2, 7, 6, 28, 15, tzinfo=UTC),
        b"T\x00\x00\x00\x00\xff\xff\xff\xff",
    ),
]

# (python table, exact bytes including the length prefix).
TABLE_FIXTURES: list[tuple[str, dict[str, Any], bytes]] = [
    ("empty", {}, b"\x00\x00\x00\x00"),
    (
        "benchmark table",
        {"s": "text", "n": 42, "b": True},
        table_bytes(b"\x01sS\x00\x00\x00\x04text" + b"\x01nI\x00\x00\x00\x2a" + b"\x01bt\x01"),
    ),
    (
        "nested",
        {"x-match": "all", "inner": {"k": [1, {"z": None}]}},
        table_bytes(
            b"\x07x-matchS\x00\x00\x00\x03all"
            + b"\x05innerF"
            + table_bytes(
                b"\x01kA"
                + u32(5 + 1 + 4 + 3)
                + b"I\x00\x00\x00\x01"
                + b"F"
                + table_bytes(b"\x01zV")
            )
        ),
    ),
    (
        "unicode keys",
        {"cl\u00e9": "\u00e9t\u00e9", "\u65e5\u672c": 1},
        table_bytes(
            b"\x04cl\xc3\xa9S\x00\x00\x00\x05\xc3\xa9t\xc3\xa9"
            + b"\x06\xe6\x97\xa5\xe6\x9c\xacI\x00\x00\x00\x01"
        ),
    ),
    ("empty key", {"": False}, table_bytes(b"\x00t\x00")),
]


def _every_type_table() -> tuple[dict[str, Any], bytes]:
    table: dict[str, Any] = {}
    body = b""
    for index, (_, value, encoded) in enumerate(FIELD_FIXTURES):
        key = f"k{index}"
        table[key] = value
        body += bytes((len(key),)) + key.encode() + encoded
    return table, table_bytes(body)


TABLE_FIXTURES.append(("every encodable type", *_every_type_table()))


def _ids(fixtures: list[tuple[str, Any, bytes]]) -> list[str]:
    return [name for name, _, _ in fixtures]


@pytest.mark.parametrize(("name", "value", "encoded"), FIELD_FIXTURES, ids=_ids(FIELD_FIXTURES))
def test_encode_field_value_fixtures(name: str, value: Any, encoded: bytes) -> None:
    assert encode_field_value(value) == encoded


@pytest.mark.parametrize(
    ("name", "value", "encoded"),
    FIELD_FIXTURES + DECODE_ONLY_FIXTURES,
    ids=_ids(FIELD_FIXTURES + DECODE_ONLY_FIXTURES),
)
def test_decode_field_value_fixtures(name: str, value: Any, encoded: bytes) -> None:
    check_decoder(decode_field_value, encoded, value)


@pytest.mark.parametrize(
    ("name", "value", "encoded"),
    FIELD_FIXTURES + DECODE_ONLY_FIXTURES,
    ids=_ids(FIELD_FIXTURES + DECODE_ONLY_FIXTURES),
)
def test_fixture_values_inside_table_and_array(name: str, value: Any, encoded: bytes) -> None:
    """The inlined fast paths of the table and array loops agree with the generic decoder."""
    table = table_bytes(b"\x03key" + encoded)
    check_decoder(decode_table, table, {"key": value})
    array = table_bytes(encoded + encoded)
    check_decoder(decode_array, array, [value, value])


@pytest.mark.parametrize(("name", "value", "encoded"), TABLE_FIXTURES, ids=_ids(TABLE_FIXTURES))
def test_encode_table_fixtures(name: str, value: dict[str, Any], encoded: bytes) -> None:
    assert encode_table(value) == encoded


@pytest.mark.parametrize(("name", "value", "encoded"), TABLE_FIXTURES, ids=_ids(TABLE_FIXTURES))
def test_decode_table_fixtures(name: str, value: dict[str, Any], encoded: bytes) -> None:
    check_decoder(decode_table, encoded, value)


def test_decode_only_values_reencode_with_wide_tags() -> None:
    # A float32 comes back as a float and re-encodes, exactly, as a float64.
    value, _ = decode_field_value(b"f\x3f\xc0\x00\x00", 0)
    assert encode_field_value(value) == b"d\x3f\xf8\x00\x00\x00\x00\x00\x00"
    value, _ = decode_field_value(b"i\xff\xff\xff\xff", 0)
    assert encode_field_value(value) == b"l\x00\x00\x00\x00\xff\xff\xff\xff"
    value, _ = decode_field_value(b"b\xff", 0)
    assert encode_field_value(value) == b"I\xff\xff\xff\xff"


def test_field_tags_document_every_tag() -> None:
    assert set(FIELD_TAGS) == set("tbBsuIilfdDSxATFV")
    assert all(isinstance(text, str) and text for text in FIELD_TAGS.values())
    fixture_tags = {chr(encoded[0]) for _, _, encoded in FIELD_FIXTURES + DECODE_ONLY_FIXTURES}
    assert fixture_tags == set(FIELD_TAGS)
    for tag in FIELD_TAGS:
        assert tag in (_wire.__doc__ or "")


def test_encode_array_and_decode_array() -> None:
    encoded = encode_array([1, "x", None, True])
    assert encoded == b"\x00\x00\x00\x0eI\x00\x00\x00\x01S\x00\x00\x00\x01xVt\x01"
    check_decoder(decode_array, encoded, [1, "x", None, True])
    assert encode_array(()) == b"\x00\x00\x00\x00"
    check_decoder(decode_array, b"\x00\x00\x00\x00", [])
    assert encode_array((1, (2,))) == encode_array([1, [2]])


def test_encode_table_none_and_empty() -> None:
    assert encode_table(None) == b"\x00\x00\x00\x00"
    assert encode_table({}) == b"\x00\x00\x00\x00"
    assert encode_table(OrderedDict()) == b"\x00\x00\x00\x00"


def test_encode_table_accepts_any_mapping_and_tuples() -> None:
    mapping = OrderedDict([("b", (1, 2)), ("a", OrderedDict(c=b"z"))])
    plain = {"b": [1, 2], "a": {"c": b"z"}}
    assert encode_table(mapping) == encode_table(plain)
    assert_same(decode_table(encode_table(mapping), 0)[0], plain)
    assert encode_field_value(bytearray(b"ab")) == encode_field_value(b"ab")
    assert encode_field_value(memoryview(b"ab")) == encode_field_value(b"ab")


def test_bool_and_int_subclasses() -> None:
    import enum

    class Colour(enum.IntEnum):
        RED = 3

    assert encode_field_value(Colour.RED) == b"I\x00\x00\x00\x03"
    assert encode_table({"c": Colour.RED}) == table_bytes(b"\x01cI\x00\x00\x00\x03")
    assert encode_table({"big": 2**40}) == table_bytes(b"\x03bigl" + struct.pack(">q", 2**40))

    class Name(str):
        pass

    assert encode_table({Name("k"): Name("v")}) == encode_table({"k": "v"})


# ---------------------------------------------------------------------------------------------
# Strings


def test_shortstr() -> None:
    assert encode_shortstr("") == b"\x00"
    assert encode_shortstr("amq.direct") == b"\x0aamq.direct"
    assert encode_shortstr("\u00e9") == b"\x02\xc3\xa9"
    assert encode_shortstr("a" * 255) == b"\xff" + b"a" * 255
    check_decoder(decode_shortstr, b"\x0aamq.direct", "amq.direct")
    check_decoder(decode_shortstr, b"\x00", "")
    check_decoder(decode_shortstr, b"\x02\xc3\xa9", "\u00e9")


def test_shortstr_surrogateescape_round_trip() -> None:
    raw = b"\x04\xff\xfe\xc3("
    value, offset = decode_shortstr(raw, 0)
    assert value == "\udcff\udcfe\udcc3("
    assert offset == 5
    assert encode_shortstr(value) == raw


def test_longstr() -> None:
    assert encode_longstr(b"") == b"\x00\x00\x00\x00"
    assert encode_longstr(b"\x00\xff") == b"\x00\x00\x00\x02\x00\xff"
    assert encode_longstr("\u00e9") == b"\x00\x00\x00\x02\xc3\xa9"
    check_decoder(decode_longstr, b"\x00\x00\x00\x02\x00\xff", b"\x00\xff")
    check_decoder(decode_longstr, b"\x00\x00\x00\x00", b"")


def test_longstr_invalid_utf8_round_trip_in_tables() -> None:
    raw = b"\x80abc\xff\xc3\xa9\xed\xa0\x80"  # stray continuation, 0xff, valid, a surrogate
    encoded = table_bytes(b"\x01sS" + u32(len(raw)) + raw)
    table, _ = decode_table(encoded, 0)
    assert table["s"] == raw.decode("utf-8", "surrogateescape")
    assert encode_table(table) == encoded
    array = table_bytes(b"S" + u32(len(raw)) + raw)
    items, _ = decode_array(array, 0)
    assert encode_array(items) == array


def test_table_keys_that_are_not_utf8_are_kept() -> None:
    # A header key another client wrote in Latin-1 must not make the message undecodable.
    encoded = table_bytes(b"\x04caf\xe9I\x00\x00\x00\x01")
    table, _ = decode_table(encoded, 0)
    assert table == {"caf\udce9": 1}
    assert encode_table(table) == encoded


def test_unicode_round_trip() -> None:
    table = {"\u00fc\u00f1\u00ee": "\u4e2d\u6587 \U0001f407", "emoji\U0001f600": ["\u00e9", "\x00"]}
    assert_same(decode_table(encode_table(table), 0)[0], table)


# ---------------------------------------------------------------------------------------------
# Decimals and timestamps


@pytest.mark.parametrize(
    ("value", "scale", "number"),
    [
        (Decimal("1.50"), 2, 150),
        (Decimal("1.5"), 1, 15),
        (Decimal("-1.50"), 2, -150),
        (Decimal("0"), 0, 0),
        (Decimal("-0"), 0, 0),
        (Decimal("0.000"), 3, 0),
        (Decimal("0E-300"), 0, 0),
        (Decimal("0E+7"), 0, 0),
        (Decimal("1E+5"), 0, 100000),
        (Decimal("2147483647"), 0, 2**31 - 1),
        (Decimal("-2147483648"), 0, -(2**31)),
        (Decimal("1E-255"), 255, 1),
        (Decimal("1.0000000000000"), 9, 10**9),  # trailing zeros dropped only to fit
        (Decimal("100E-256"), 255, 10),
    ],
)
def test_decimal_encoding(value: Decimal, scale: int, number: int) -> None:
    encoded = encode_field_value(value)
    assert encoded == b"D" + struct.pack(">Bi", scale, number)
    decoded, _ = decode_field_value(encoded, 0)
    assert decoded == value


@pytest.mark.parametrize(
    "value",
    [
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        Decimal("2147483648"),
        Decimal("-2147483649"),
        Decimal("1E-256"),
        Decimal("1E+10"),
        Decimal("12345678901E-5"),
        Decimal("1" * 5000),
    ],
)
def test_decimal_that_cannot_be_encoded(value: Decimal) -> None:
    with pytest.raises(EncodeError):
        encode_field_value(value)
    with pytest.raises(EncodeError):
        encode_table({"d": value})


def test_decimal_decoding_ignores_the_decimal_context() -> None:
    import decimal

    with decimal.localcontext() as context:
        context.prec = 2
        value, _ = decode_field_value(b"D\x03\x7f\xff\xff\xff", 0)
    assert value == Decimal("2147483.647")


def test_timestamp_encoding() -> None:
    assert encode_timestamp(TS) == struct.pack(">Q", TS_SECONDS)
    assert encode_timestamp(TS_SECONDS) == struct.pack(">Q", TS_SECONDS)
    assert encode_timestamp(0) == bytes(8)
    assert encode_timestamp(2**64 - 1) == b"\xff" * 8
    # Naive is UTC; other zones are converted; sub-second parts are dropped.
    assert encode_timestamp(TS.replace(tzinfo=None)) == encode_timestamp(TS)
    paris = TS.astimezone(timezone(timedelta(hours=1)))
    assert encode_timestamp(paris) == encode_timestamp(TS)
    assert encode_timestamp(TS.replace(microsecond=999999)) == encode_timestamp(TS)
    assert encode_field_value(TS.replace(tzinfo=None)) == b"T" + struct.pack(">Q", TS_SECONDS)


def test_timestamp_decoding() -> None:
    check_decoder(decode_timestamp, struct.pack(">Q", TS_SECONDS), TS)
    value, _ = decode_timestamp(struct.pack(">Q", TS_SECONDS), 0)
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
    latest = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    seconds = encode_timestamp(latest)
    assert decode_timestamp(seconds, 0) == (latest, 8)


@pytest.mark.parametrize("seconds", [253402300800, 2**63, 2**64 - 1])
def test_timestamp_beyond_datetime_is_a_wire_error(seconds: int) -> None:
    with pytest.raises(WireError):
        decode_timestamp(struct.pack(">Q", seconds), 0)
    with pytest.raises(WireError):
        decode_field_value(b"T" + struct.pack(">Q", seconds), 0)
    with pytest.raises(WireError):
        decode_table(table_bytes(b"\x01tT" + struct.pack(">Q", seconds)), 0)


@pytest.mark.parametrize(
    "value",
    [
        datetime(1969, 12, 31, 23, 59, 59),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1, 1, 1),
        datetime(1970, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
        -1,
        2**64,
        1.5,
        True,
    ],
)
def test_timestamp_that_cannot_be_encoded(value: Any) -> None:
    with pytest.raises(EncodeError):
        encode_timestamp(value)
    if isinstance(value, datetime):
        with pytest.raises(EncodeError):
            encode_table({"t": value})


# ---------------------------------------------------------------------------------------------
# Encoding errors


def test_error_classes() -> None:
    error = WireError("bad tag")
    assert isinstance(error, ProtocolError)
    assert error.reply_code == 502
    assert error.reply_text == "bad tag"
    assert WireError("x", 501).reply_code == 501
    assert issubclass(EncodeError, UsageError)
    assert issubclass(EncodeError, ValueError)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: encode_shortstr("a" * 256), "256"),
        (lambda: encode_shortstr("\u00e9" * 128), "256"),
        (lambda: encode_shortstr(b"abc"), "str"),  # type: ignore[arg-type]
        (lambda: encode_shortstr("\ud800"), "UTF-8"),
        (lambda: encode_longstr(42), "bytes or str"),  # type: ignore[arg-type]
        (lambda: encode_table({"k" * 256: 1}), "256"),
        (lambda: encode_field_value(2**63), str(2**63)),
        (lambda: encode_field_value(-(2**63) - 1), "64-bit"),
        (lambda: encode_table({"n": 2**63}), "['n']"),
        (lambda: encode_table({1: "x"}), "keys must be str"),  # type: ignore[dict-item]
        (lambda: encode_table({b"k": "x"}), "keys must be str"),  # type: ignore[dict-item]
        (lambda: encode_table({("a",): "x"}), "keys must be str"),  # type: ignore[dict-item]
        (lambda: encode_field_value(object()), "object"),
        (lambda: encode_table({"o": object()}), "builtins.object"),
        (lambda: encode_table({"a": {"b": [1, object()]}}), "['a']['b'][1]"),
        (lambda: encode_array([1, [2, {"x": {1, 2}}]]), "[1][1]['x']: cannot encode"),
        (lambda: encode_table({"s": "\ud800"}), "['s']"),
        (lambda: encode_array(["\ud800"]), "[0]"),
        (lambda: encode_table({"d": Decimal("NaN")}), "non-finite"),
        (lambda: encode_table({"t": datetime(1969, 1, 1)}), "before 1970"),
        (lambda: encode_table([("a", 1)]), "mapping"),  # type: ignore[arg-type]
        (lambda: encode_array({"a": 1}), "list or tuple"),  # type: ignore[arg-type]
        (lambda: encode_field_value(datetime(2020, 1, 1).date()), "date"),
        (lambda: encode_field_value(1 + 2j), "complex"),
    ],
)
def test_encode_errors(call: Callable[[], bytes], message: str) -> None:
    with pytest.raises(EncodeError) as info:
        call()
    assert message in str(info.value)


def test_encode_error_is_raised_whatever_comes_before_it() -> None:
    # Valid entries before the bad one: still an exception, not partial output.
    table: dict[str, object] = {f"k{n}": "v" * n for n in range(50)}
    table["bad"] = object()
    with pytest.raises(EncodeError, match=r"\['bad'\]"):
        encode_table(table)


def test_unhashable_key_from_an_odd_mapping() -> None:
    from collections.abc import Mapping

    class Odd(Mapping[Any, Any]):
        def __getitem__(self, key: Any) -> Any:
            return 1

        def __iter__(self) -> Any:
            return iter([["unhashable"]])

        def __len__(self) -> int:
            return 1

    with pytest.raises(EncodeError, match="keys must be str"):
        encode_table(Odd())


def test_encode_depth_limit_and_cycles() -> None:
    table: dict[str, Any] = {}
    inner = table
    for _ in range(MAX_DEPTH - 1):
        inner["n"] = {}
        inner = inner["n"]
    encoded = encode_table(table)
    assert decode_table(encoded, 0)[0] == table
    inner["n"] = {}
    with pytest.raises(EncodeError, match="deeper"):
        encode_table(table)

    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    with pytest.raises(EncodeError, match="deeper"):
        encode_table(cycle)
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EncodeError, match="deeper"):
        encode_array(loop)


def test_key_cache_is_bounded() -> None:
    encode_table({f"unique-key-{n}": n for n in range(_wire._KEY_CACHE_MAX * 2)})
    assert len(_wire._KEY_CACHE) <= _wire._KEY_CACHE_MAX
    # And keys still encode correctly once the cache is full.
    assert encode_table({"never-cached-key-xyz": 1}) == table_bytes(
        b"\x14never-cached-key-xyzI\x00\x00\x00\x01"
    )


# ---------------------------------------------------------------------------------------------
# Malformed input


MALFORMED_TABLES: list[tuple[str, bytes]] = [
    ("declared length past the data", b"\x00\x00\x00\x09\x01aI\x00\x00\x00\x01"),
    ("huge declared length", b"\xff\xff\xff\xff\x01aV"),
    ("entry runs past the declared length", b"\x00\x00\x00\x05\x01aI\x00\x00\x00\x01"),
    ("key runs past the declared length", b"\x00\x00\x00\x02\x05abcdeV"),
    ("leftover byte inside the declared length", b"\x00\x00\x00\x04\x01aV\x00"),
    ("leftover key with no tag", b"\x00\x00\x00\x05\x01aV\x01b"),
    ("long string past the table end", b"\x00\x00\x00\x07\x01aS\x00\x00\x00\x03xyz"),
    ("long string length huge", b"\x00\x00\x00\x07\x01aS\xff\xff\xff\xff"),
    ("bytes past the table end", b"\x00\x00\x00\x08\x01ax\x00\x00\x00\x02\x00\x00"),
    ("nested table past the outer end", b"\x00\x00\x00\x07\x01aF\x00\x00\x00\x01\x00\x00"),
    ("nested array past the outer end", b"\x00\x00\x00\x07\x01aA\x00\x00\x00\x01V"),
    ("nested table entry past its end", table_bytes(b"\x01aF\x00\x00\x00\x02\x01bV")),
    ("unknown tag", table_bytes(b"\x01aZ")),
    ("unknown tag zero", table_bytes(b"\x01a\x00")),
    ("array item past array end", table_bytes(b"\x01aA\x00\x00\x00\x01I\x00\x00\x00\x01")),
    ("unknown tag in array", table_bytes(b"\x01aA\x00\x00\x00\x01?")),
    ("timestamp past datetime", table_bytes(b"\x01tT\xff\xff\xff\xff\xff\xff\xff\xff")),
    ("decimal cut by the table end", b"\x00\x00\x00\x05\x01aD\x02\x00\x00\x00\x01\x00"),
]


@pytest.mark.parametrize(("name", "data"), MALFORMED_TABLES, ids=[n for n, _ in MALFORMED_TABLES])
def test_malformed_tables(name: str, data: bytes) -> None:
    with pytest.raises(WireError):
        decode_table(data, 0)
    # Still malformed with plenty of bytes after it: the declared length is what counts.
    with pytest.raises(WireError):
        decode_table(data + b"\x00" * 64, 0)
    with pytest.raises(WireError):
        decode_field_value(b"F" + data, 0)


def test_array_length_past_the_data() -> None:
    with pytest.raises(WireError):
        decode_array(b"\x00\x00\x00\x01", 0)
    with pytest.raises(WireError):
        decode_array(b"\x00\x00\x00\x02VV"[:5], 0)


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x02I\x00",  # item runs past the declared length
        b"\x00\x00\x00\x01Z",  # unknown tag
        b"\x00\x00\x00\x05S\x00\x00\x00\x01x",  # long string past the array end
        b"\x00\x00\x00\x02V\x00",  # tag 0
        b"\x00\x00\x00\x06F\x00\x00\x00\x02\x00",  # nested table past the array end
        b"\x00\x00\x00\x05A\x00\x00\x00\x01V",  # nested array past the array end
    ],
)
def test_malformed_arrays(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_array(data, 0)
    # Still malformed with plenty of valid-looking bytes after it.
    with pytest.raises(WireError):
        decode_array(data + b"V" * 64, 0)


@pytest.mark.parametrize(
    "decoder",
    [
        decode_table,
        decode_array,
        decode_field_value,
        decode_shortstr,
        decode_longstr,
        decode_timestamp,
    ],
)
def test_bad_offsets(decoder: Decoder) -> None:
    data = b"\x00" * 16
    for offset in (-1, -16, 17, 1000):
        with pytest.raises(WireError):
            decoder(data, offset)
    with pytest.raises(WireError):
        decoder(data, len(data))


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00"])
def test_table_length_cut(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_table(data, 0)


def test_unknown_field_value_tag() -> None:
    for tag in set(range(256)) - {ord(t) for t in FIELD_TAGS}:
        with pytest.raises(WireError, match="tag"):
            decode_field_value(bytes((tag,)) + b"\x00" * 16, 0)


def _nested(levels: int, tag: bytes) -> bytes:
    """``levels`` nested tables (tag F) or arrays (tag A), each holding the next."""
    body = b""
    for _ in range(levels - 1):
        inner = u32(len(body)) + body
        body = (b"\x01k" if tag == b"F" else b"") + tag + inner
    return u32(len(body)) + body


@pytest.mark.parametrize(("tag", "decoder"), [(b"F", decode_table), (b"A", decode_array)])
def test_decode_depth_limit(tag: bytes, decoder: Decoder) -> None:
    _, offset = decoder(_nested(MAX_DEPTH, tag), 0)
    assert offset == len(_nested(MAX_DEPTH, tag))
    with pytest.raises(WireError, match="deeper"):
        decoder(_nested(MAX_DEPTH + 1, tag), 0)
    with pytest.raises(WireError):
        decoder(_nested(5000, tag), 0)
    with pytest.raises(WireError):
        decode_field_value(tag + _nested(MAX_DEPTH + 1, tag), 0)


def test_deep_mixed_nesting_is_a_wire_error() -> None:
    # Each level: F table {k: A [ ... ]}, alternating, past the limit.
    body = b""
    for level in range(200):
        inner = u32(len(body)) + body
        body = (b"\x01kA" if level % 2 else b"F") + inner
    with pytest.raises(WireError):
        decode_table(u32(len(body)) + body, 0)


# ---------------------------------------------------------------------------------------------
# Property-based round trips and fuzzing

_keys = st.text(max_size=20)
_decimals = st.builds(
    lambda scale, number: Decimal(f"{number}E-{scale}"),
    st.integers(0, 255),
    st.integers(-(2**31), 2**31 - 1),
)
_timestamps = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(9999, 12, 31, 23, 59, 59),
    timezones=st.just(UTC),
).map(lambda value: value.replace(microsecond=0))
_leaves = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    _decimals,
    st.text(max_size=30),
    st.binary(max_size=30),
    _timestamps,
    st.none(),
)
_values = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(_keys, children, max_size=5),
    ),
    max_leaves=25,
)
_tables = st.dictionaries(_keys, _values, max_size=8)


@given(_tables)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_table_round_trip(table: dict[str, Any]) -> None:
    encoded = encode_table(table)
    decoded, offset = decode_table(encoded + b"trailing", 0)
    assert offset == len(encoded)
    assert_same(decoded, table)
    assert encode_table(decoded) == encoded


@given(st.lists(_values, max_size=8))
@settings(max_examples=150)
def test_array_round_trip(items: list[Any]) -> None:
    encoded = encode_array(items)
    decoded, offset = decode_array(encoded, 0)
    assert offset == len(encoded)
    assert_same(decoded, items)


@given(_values)
@settings(max_examples=200)
def test_field_value_round_trip(value: Any) -> None:
    encoded = encode_field_value(value)
    decoded, offset = decode_field_value(b"xx" + encoded, 2)
    assert offset == 2 + len(encoded)
    assert_same(decoded, value)


@given(st.text(max_size=85))
def test_shortstr_round_trip(value: str) -> None:
    encoded = encode_shortstr(value)
    assert decode_shortstr(encoded, 0) == (value, len(encoded))


@given(st.binary(max_size=64))
def test_surrogateescape_round_trip_of_any_bytes(raw: bytes) -> None:
    value, _ = decode_field_value(b"S" + u32(len(raw)) + raw, 0)
    assert encode_field_value(value) == b"S" + u32(len(raw)) + raw
    if len(raw) <= 255:
        key, _ = decode_shortstr(bytes((len(raw),)) + raw, 0)
        assert encode_shortstr(key) == bytes((len(raw),)) + raw


@given(st.integers(0, 2**64 - 1))
def test_timestamp_int_round_trip_or_wire_error(seconds: int) -> None:
    encoded = encode_timestamp(seconds)
    try:
        value, offset = decode_timestamp(encoded, 0)
    except WireError:
        assert seconds > 253402300799
    else:
        assert offset == 8
        assert encode_timestamp(value) == encoded


def _decode_only_wire_errors(decoder: Decoder, data: bytes, offset: int = 0) -> None:
    try:
        value, new_offset = decoder(data, offset)
    except WireError:
        return
    assert offset < new_offset <= len(data)
    # Whatever decodes can be encoded again, and that encoding is stable (NaN-proof check).
    encoded = encode_field_value(value)
    assert encode_field_value(decode_field_value(encoded, 0)[0]) == encoded


@given(st.binary(max_size=200))
@settings(max_examples=1000)
def test_fuzz_decoders_on_arbitrary_bytes(data: bytes) -> None:
    for decoder in (decode_table, decode_array, decode_field_value):
        _decode_only_wire_errors(decoder, data)
    _decode_only_wire_errors(decode_field_value, b"F" + data)
    _decode_only_wire_errors(decode_field_value, b"A" + data)


@given(st.binary(max_size=200), st.integers(0, 2**32 - 1))
@settings(max_examples=300)
def test_fuzz_table_with_plausible_length(body: bytes, extra: int) -> None:
    # A length that matches (or nearly matches) the body gets past the first check.
    for length in (len(body), max(0, len(body) - 1), len(body) + 1, extra):
        _decode_only_wire_errors(decode_table, u32(length) + body)
        _decode_only_wire_errors(decode_array, u32(length) + body)


@given(_tables, st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_mutated_valid_tables(table: dict[str, Any], data: st.DataObject) -> None:
    encoded = bytearray(encode_table(table))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    _decode_only_wire_errors(decode_table, bytes(encoded))
    _decode_only_wire_errors(decode_table, bytes(encoded[:cut]))
