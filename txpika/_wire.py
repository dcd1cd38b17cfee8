"""AMQP 0-9-1 wire primitives: short and long strings, timestamps, field tables and arrays.

Every delivered message's headers go through `decode_table`, so this module is written
for speed: precompiled `struct.Struct` objects, ``unpack_from`` on the original bytes
with integer offsets, the common tags tested first, and one ``try`` (free in Python 3.11) at
each public entry point instead of a bounds check before every read.

This module holds the decoders and what both directions share; the encoders are in
`txpika._wire_encode`.

Decoders take ``(data, offset)``, where ``data`` is ``bytes`` (not a ``memoryview``: the
frame's own bytes, read in place), and return ``(value, new_offset)``. They raise only
`WireError` for malformed input: truncated data, a table or array whose entries run
past its declared length (or leave bytes inside it that are not a whole entry), an unknown
tag, a timestamp out of `datetime.datetime`'s range, nesting deeper than
`MAX_DEPTH` levels. Encoders return ``bytes`` and raise only `EncodeError`, before
any byte is produced.

Field values
============

What RabbitMQ reads and writes, and the Python types they map to:

====  ===================================  =================================================
Tag   On the wire                          Python
====  ===================================  =================================================
t     boolean, one octet (nonzero = true)  ``bool``
b     signed 8-bit integer                 ``int`` (decoded only)
B     unsigned 8-bit integer               ``int`` (decoded only)
s     signed 16-bit integer                ``int`` (decoded only)
u     unsigned 16-bit integer              ``int`` (decoded only)
I     signed 32-bit integer                ``int`` in [-2**31, 2**31)
i     unsigned 32-bit integer              ``int`` (decoded only)
l     signed 64-bit integer                ``int`` in [-2**63, 2**63) outside int32
f     32-bit IEEE float                    ``float`` (decoded only)
d     64-bit IEEE float                    ``float``
D     decimal: octet scale, int32 value    ``decimal.Decimal`` (value * 10**-scale)
S     long string (4-byte length)          ``str`` (UTF-8, ``errors="surrogateescape"``)
x     byte array (4-byte length)           ``bytes`` (also encodes bytearray, memoryview)
A     array (4-byte length, tagged items)  ``list`` (also encodes tuple)
T     timestamp, uint64 s since 1970       ``datetime.datetime``, aware, in UTC
F     nested field table                   ``dict`` (also encodes any ``Mapping``)
V     void                                 ``None``
====  ===================================  =================================================

Encoding picks the tag from the Python type, checked in this order: ``bool`` -> t; ``int``
-> I if it fits int32, else l if it fits int64, else `EncodeError`; ``float`` -> d;
``Decimal`` -> D; ``str`` -> S; ``bytes``/``bytearray``/``memoryview`` -> x; ``datetime`` ->
T; ``Mapping`` -> F; ``list``/``tuple`` -> A; ``None`` -> V. Anything else is an
`EncodeError` naming the type and where in the table it was.

Round trips: ``decode(encode(v)) == v`` for every value built from these types, with these
fine points:

* b, B, s, u, i and f are never written: their values come back as ``int`` or ``float`` and
  re-encode as I/l or d (a float32 read from the wire re-encodes, exactly, as a float64).
* A tuple decodes as a list; a bytearray or memoryview as bytes; any Mapping as a dict.
* Timestamps carry whole seconds: sub-second parts are dropped (rounded down) on encoding.
  A naive datetime is taken as UTC and decodes as the equal *aware* datetime (Python does not
  call a naive and an aware datetime equal); datetimes before 1970 cannot be encoded.
* A Decimal keeps its exponent (``Decimal("1.50")`` is scale 2, value 150, and decodes as
  ``Decimal("1.50")`` again); a positive exponent is multiplied out (``Decimal("1E+3")`` is
  scale 0, value 1000). One whose digits do not fit int32 or whose scale exceeds 255 loses
  trailing zeros if that makes it fit (an equal number), else it is an `EncodeError`;
  so is a NaN or an infinity. A negative zero decodes as zero.
* A float NaN encodes and decodes, but is never equal to itself.
* Strings use ``surrogateescape``, so a long string (S) or short string holding bytes that are
  not valid UTF-8 decodes to a ``str`` that encodes back to the very same bytes. Table keys
  are short strings and are treated the same way: a header key that is not valid UTF-8 is
  kept rather than rejected, so one odd message from another client cannot poison a
  consumer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from txpika.errors import SYNTAX_ERROR, ProtocolError, UsageError

__all__ = [
    "FIELD_TAGS",
    "MAX_DEPTH",
    "EncodeError",
    "WireError",
    "decode_array",
    "decode_field_value",
    "decode_longstr",
    "decode_shortstr",
    "decode_table",
    "decode_timestamp",
]

#: Deepest nesting of tables and arrays accepted in either direction (the outermost is 1).
MAX_DEPTH = 64

FIELD_TAGS: dict[str, str] = {
    "t": "boolean (octet, nonzero = True) -> bool",
    "b": "signed 8-bit integer -> int (decoded only)",
    "B": "unsigned 8-bit integer -> int (decoded only)",
    "s": "signed 16-bit integer -> int (decoded only)",
    "u": "unsigned 16-bit integer -> int (decoded only)",
    "I": "signed 32-bit integer -> int",
    "i": "unsigned 32-bit integer -> int (decoded only)",
    "l": "signed 64-bit integer -> int",
    "f": "32-bit float -> float (decoded only; re-encodes as d)",
    "d": "64-bit float -> float",
    "D": "decimal (octet scale, int32 value) -> decimal.Decimal",
    "S": "long string -> str (UTF-8, surrogateescape)",
    "x": "byte array -> bytes",
    "A": "array -> list",
    "T": "timestamp (uint64 seconds since the epoch) -> datetime (aware, UTC)",
    "F": "nested field table -> dict",
    "V": "void -> None",
}


class WireError(ProtocolError):
    """A value on the wire cannot be decoded (truncated, unknown tag, too deeply nested...).

    The peer broke the protocol: the connection is closed with ``reply_code`` (502, syntax
    error, unless the caller says otherwise).
    """

    def __init__(self, text: str, reply_code: int = SYNTAX_ERROR) -> None:
        super().__init__(reply_code, text)
        self.text = text


class EncodeError(UsageError):
    """A local value cannot be encoded: a short string over 255 bytes, an integer out of range,
    an unsupported type, a table key that is not a ``str``...

    Raised before any byte is produced. ``path`` locates the value inside the table or array
    given (keys and indexes from the outside in); ``str()`` shows it.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text
        self.path: list[object] = []

    def __str__(self) -> str:
        if not self.path:
            return self.text
        where = "".join(f"[{step!r}]" for step in self.path)
        return f"{where}: {self.text}"


# ---------------------------------------------------------------------------------------------
# Precompiled structs. Decoding uses the bound ``unpack_from`` methods, encoding ``pack``.

_S_I8 = struct.Struct(">b")
_S_U16 = struct.Struct(">H")
_S_I16 = struct.Struct(">h")
_S_U32 = struct.Struct(">I")
_S_I32 = struct.Struct(">i")
_S_I64 = struct.Struct(">q")
_S_U64 = struct.Struct(">Q")
_S_F32 = struct.Struct(">f")
_S_F64 = struct.Struct(">d")
_S_DECIMAL = struct.Struct(">Bi")

_unpack_u32 = _S_U32.unpack_from
_unpack_i32 = _S_I32.unpack_from
_unpack_i64 = _S_I64.unpack_from

# Tag byte and value in one pack.
_TAG_U32 = struct.Struct(">BI").pack  # tag + 4-byte length of S, x
_TAG_I32 = struct.Struct(">Bi").pack
_TAG_I64 = struct.Struct(">Bq").pack
_TAG_F64 = struct.Struct(">Bd").pack
_TAG_U64 = struct.Struct(">BQ").pack
_TAG_DECIMAL = struct.Struct(">BBi").pack
_pack_u32 = _S_U32.pack

_TAG_t, _TAG_b, _TAG_B, _TAG_s, _TAG_u = 116, 98, 66, 115, 117
_TAG_I, _TAG_i, _TAG_l, _TAG_f, _TAG_d = 73, 105, 108, 102, 100
_TAG_D, _TAG_S, _TAG_x, _TAG_A, _TAG_T = 68, 83, 120, 65, 84
_TAG_F, _TAG_V = 70, 86

_TRUE = b"t\x01"
_FALSE = b"t\x00"
_VOID = b"V"
_EMPTY_TABLE = b"\x00\x00\x00\x00"

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1

_UTC = UTC
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_fromtimestamp = datetime.fromtimestamp

# Short-string length prefixes, so that encoding a key does not call struct.
_SHORT_PREFIX = [bytes((n,)) for n in range(256)]

# Encoded table keys (length prefix + UTF-8), most tables reuse a handful of header names.
# Bounded: once full it is only read, so arbitrary keys cannot grow memory without limit.
_KEY_CACHE: dict[str, bytes] = {}
_KEY_CACHE_MAX = 1024


def _truncated(what: str) -> WireError:
    return WireError(f"truncated {what}")


# ---------------------------------------------------------------------------------------------
# Decoding. The private decoders take ``(data, pos, limit, depth)``: ``limit`` is the end of
# the enclosing table or array (or of ``data``), which a length-prefixed value must not pass.
# Fixed-size reads may look past ``limit`` (never past ``data``: struct raises), and the
# enclosing loop then finds its position beyond its declared end and raises.

_Decoder = Callable[[bytes, int, int, int], tuple[Any, int]]


def _decode_table(data: bytes, pos: int, limit: int, depth: int) -> tuple[dict[str, Any], int]:
    if depth > MAX_DEPTH:
        raise WireError(f"field tables nested deeper than {MAX_DEPTH} levels")
    # A length field past ``limit`` is no error of its own: ``end`` is then past it too.
    (length,) = _unpack_u32(data, pos)
    pos += 4
    end = pos + length
    if end > limit:
        raise WireError(f"field table length {length} runs past the end of its container")
    result: dict[str, Any] = {}
    unpack_u32 = _unpack_u32
    value: Any
    while pos < end:
        kend = pos + 1 + data[pos]
        try:
            # Strict UTF-8 is the fast path; the fallback keeps any bytes.
            key = data[pos + 1 : kend].decode()
        except UnicodeDecodeError:
            key = data[pos + 1 : kend].decode("utf-8", "surrogateescape")
        tag = data[kend]
        pos = kend + 1
        if tag == 83:  # S
            (n,) = unpack_u32(data, pos)
            stop = pos + 4 + n
            if stop > end:
                raise _truncated("long string in field table")
            try:
                value = data[pos + 4 : stop].decode()
            except UnicodeDecodeError:
                value = data[pos + 4 : stop].decode("utf-8", "surrogateescape")
            pos = stop
        elif tag == 116:  # t
            value = data[pos] != 0
            pos += 1
        elif tag == 73:  # I
            (value,) = _unpack_i32(data, pos)
            pos += 4
        elif tag == 108:  # l
            (value,) = _unpack_i64(data, pos)
            pos += 8
        elif tag == 70:  # F
            value, pos = _decode_table(data, pos, end, depth + 1)
        elif tag == 65:  # A
            value, pos = _decode_array(data, pos, end, depth + 1)
        else:
            decoder = _DECODERS.get(tag)
            if decoder is None:
                raise WireError(f"unknown field value tag {bytes((tag,))!r}")
            value, pos = decoder(data, pos, end, depth)
        result[key] = value
    if pos != end:
        raise WireError(f"field table entries run past its declared length {length}")
    return result, pos


def _decode_array(data: bytes, pos: int, limit: int, depth: int) -> tuple[list[Any], int]:
    if depth > MAX_DEPTH:
        raise WireError(f"arrays nested deeper than {MAX_DEPTH} levels")
    (length,) = _unpack_u32(data, pos)  # (as in _decode_table)
    pos += 4
    end = pos + length
    if end > limit:
        raise WireError(f"array length {length} runs past the end of its container")
    result: list[Any] = []
    append = result.append
    unpack_u32 = _unpack_u32
    value: Any
    while pos < end:
        tag = data[pos]
        pos += 1
        if tag == 83:  # S
            (n,) = unpack_u32(data, pos)
            stop = pos + 4 + n
            if stop > end:
                raise _truncated("long string in array")
            try:
                value = data[pos + 4 : stop].decode()
            except UnicodeDecodeError:
                value = data[pos + 4 : stop].decode("utf-8", "surrogateescape")
            pos = stop
        elif tag == 73:  # I
            (value,) = _unpack_i32(data, pos)
            pos += 4
        elif tag == 116:  # t
            value = data[pos] != 0
            pos += 1
        elif tag == 108:  # l
            (value,) = _unpack_i64(data, pos)
            pos += 8
        elif tag == 70:  # F
            value, pos = _decode_table(data, pos, end, depth + 1)
        elif tag == 65:  # A
            value, pos = _decode_array(data, pos, end, depth + 1)
        else:
            decoder = _DECODERS.get(tag)
            if decoder is None:
                raise WireError(f"unknown field value tag {bytes((tag,))!r}")
            value, pos = decoder(data, pos, end, depth)
        append(value)
    if pos != end:
        raise WireError(f"array items run past its declared length {length}")
    return result, pos


def _dec_longstr_str(data: bytes, pos: int, limit: int, depth: int) -> tuple[str, int]:
    (n,) = _unpack_u32(data, pos)
    pos += 4
    stop = pos + n
    if stop > limit:
        raise _truncated("long string")
    return data[pos:stop].decode("utf-8", "surrogateescape"), stop


def _dec_longstr_bytes(data: bytes, pos: int, limit: int, depth: int) -> tuple[bytes, int]:
    (n,) = _unpack_u32(data, pos)
    pos += 4
    stop = pos + n
    if stop > limit:
        raise _truncated("byte array")
    return data[pos:stop], stop


def _dec_bool(data: bytes, pos: int, limit: int, depth: int) -> tuple[bool, int]:
    return data[pos] != 0, pos + 1


def _dec_int8(data: bytes, pos: int, limit: int, depth: int) -> tuple[int, int]:
    return _S_I8.unpack_from(data, pos)[0], pos + 1


def _dec_uint8(data: bytes, pos: int, limit: int, depth: int) -> tuple[int, int]:
    return data[pos], pos + 1


def _dec_int16(data: bytes, pos: int, limit: int, depth: int) -> tuple[int, int]:
    return _S_I16.unpack_from(data, pos)[0], pos + 2


def _dec_uint16(data: bytes, pos: int, limit: int, depth: int) -> tuple[int, int]:
    return _S_U16.unpack_from(data, pos)[0], pos + 2


def _dec_int32(data: bytes, pos: int, limit: int, depth: int) -> tuple[int, int]:
    return _unpack_i32(data, pos)[0], pos + 4


def _dec_uint32(data: bytes, pos: int, limit: int, depth: int) -> tuple[int, int]:
    return _unpack_u32(data, pos)[0], pos + 4


def _dec_int64(data: bytes, pos: int, limit: int, depth: int) -> tuple[int, int]:
    return _unpack_i64(data, pos)[0], pos + 8


def _dec_float32(data: bytes, pos: int, limit: int, depth: int) -> tuple[float, int]:
    return _S_F32.unpack_from(data, pos)[0], pos + 4


def _dec_float64(data: bytes, pos: int, limit: int, depth: int) -> tuple[float, int]:
    return _S_F64.unpack_from(data, pos)[0], pos + 8


def _dec_decimal(data: bytes, pos: int, limit: int, depth: int) -> tuple[Decimal, int]:
    scale, value = _S_DECIMAL.unpack_from(data, pos)
    # Built from a string, so that it is exact whatever the current decimal context.
    return Decimal(f"{value}E-{scale}"), pos + 5


def _dec_timestamp(data: bytes, pos: int, limit: int, depth: int) -> tuple[datetime, int]:
    (seconds,) = _S_U64.unpack_from(data, pos)
    try:
        return _fromtimestamp(seconds, _UTC), pos + 8
    except (OverflowError, ValueError, OSError):  # beyond year 9999, or time_t
        raise WireError(f"timestamp {seconds} is out of range") from None


def _dec_table(data: bytes, pos: int, limit: int, depth: int) -> tuple[dict[str, Any], int]:
    return _decode_table(data, pos, limit, depth + 1)


def _dec_array(data: bytes, pos: int, limit: int, depth: int) -> tuple[list[Any], int]:
    return _decode_array(data, pos, limit, depth + 1)


def _dec_void(data: bytes, pos: int, limit: int, depth: int) -> tuple[None, int]:
    return None, pos


_DECODERS: dict[int, _Decoder] = {
    _TAG_S: _dec_longstr_str,
    _TAG_t: _dec_bool,
    _TAG_I: _dec_int32,
    _TAG_l: _dec_int64,
    _TAG_F: _dec_table,
    _TAG_A: _dec_array,
    _TAG_d: _dec_float64,
    _TAG_x: _dec_longstr_bytes,
    _TAG_T: _dec_timestamp,
    _TAG_V: _dec_void,
    _TAG_D: _dec_decimal,
    _TAG_b: _dec_int8,
    _TAG_B: _dec_uint8,
    _TAG_s: _dec_int16,
    _TAG_u: _dec_uint16,
    _TAG_i: _dec_uint32,
    _TAG_f: _dec_float32,
}

# What a bare struct, index or recursion failure inside a decoder means: the input ended early
# (or nests absurdly). Caught once, at the public entry points.
_DECODE_FAILURES = (struct.error, IndexError, RecursionError)


def _check_offset(data: bytes, offset: int) -> None:
    if offset < 0 or offset > len(data):
        raise WireError(f"offset {offset} is outside the data ({len(data)} bytes)")


def decode_shortstr(data: bytes, offset: int) -> tuple[str, int]:
    """Decode a short string (1-byte length, UTF-8 with surrogateescape) at ``offset``."""
    try:
        stop = offset + 1 + data[offset]
    except IndexError:
        raise _truncated("short string length") from None
    if stop > len(data) or offset < 0:
        _check_offset(data, offset)
        raise _truncated("short string")
    raw = data[offset + 1 : stop]
    try:
        return raw.decode(), stop  # strict UTF-8 is the fast path
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape"), stop


def decode_longstr(data: bytes, offset: int) -> tuple[bytes, int]:
    """Decode a long string (4-byte length, raw bytes) at ``offset``."""
    if offset < 0:
        _check_offset(data, offset)
    try:
        (n,) = _unpack_u32(data, offset)
    except struct.error:
        raise _truncated("long string length") from None
    stop = offset + 4 + n
    if stop > len(data):
        raise _truncated("long string")
    return data[offset + 4 : stop], stop


def decode_table(data: bytes, offset: int) -> tuple[dict[str, Any], int]:
    """Decode a field table (4-byte length, then entries) at ``offset``."""
    try:
        if offset < 0:
            _check_offset(data, offset)
        return _decode_table(data, offset, len(data), 1)
    except _DECODE_FAILURES as exc:
        raise _decode_failure(exc, "field table") from None


def decode_array(data: bytes, offset: int) -> tuple[list[Any], int]:
    """Decode a field array (4-byte length, then tagged values) at ``offset``."""
    try:
        if offset < 0:
            _check_offset(data, offset)
        return _decode_array(data, offset, len(data), 1)
    except _DECODE_FAILURES as exc:
        raise _decode_failure(exc, "array") from None


def decode_field_value(data: bytes, offset: int) -> tuple[Any, int]:
    """Decode one field value (tag byte, then the value) at ``offset``."""
    _check_offset(data, offset)
    try:
        tag = data[offset]
        decoder = _DECODERS.get(tag)
        if decoder is None:
            raise WireError(f"unknown field value tag {bytes((tag,))!r}")
        return decoder(data, offset + 1, len(data), 0)
    except _DECODE_FAILURES as exc:
        raise _decode_failure(exc, "field value") from None


def decode_timestamp(data: bytes, offset: int) -> tuple[datetime, int]:
    """Decode a timestamp (uint64 seconds since the epoch) as an aware UTC datetime."""
    _check_offset(data, offset)
    try:
        return _dec_timestamp(data, offset, len(data), 0)
    except struct.error:
        raise _truncated("timestamp") from None


def _decode_failure(exc: BaseException, what: str) -> WireError:
    if isinstance(exc, RecursionError):
        return WireError(f"{what} nested too deeply to decode")
    return _truncated(what)
