"""AMQP 0-9-1 wire primitives, the encoding half: short and long strings, timestamps,
field tables and arrays (the decoders, and the field-value table, are in `txpika._wire`).

Encoders return ``bytes`` and raise only `txpika._wire.EncodeError`, before any byte is
produced; an error inside a table or array carries the path to the bad value.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from txpika._wire import (
    _EMPTY_TABLE,
    _EPOCH,
    _FALSE,
    _INT32_MAX,
    _INT32_MIN,
    _INT64_MAX,
    _INT64_MIN,
    _KEY_CACHE,
    _KEY_CACHE_MAX,
    _S_U64,
    _SHORT_PREFIX,
    _TAG_DECIMAL,
    _TAG_F64,
    _TAG_I32,
    _TAG_I64,
    _TAG_U32,
    _TAG_U64,
    _TRUE,
    _UINT32_MAX,
    _UINT64_MAX,
    _UTC,
    _VOID,
    MAX_DEPTH,
    EncodeError,
    _pack_u32,
)

__all__ = [
    "encode_array",
    "encode_field_value",
    "encode_longstr",
    "encode_shortstr",
    "encode_table",
    "encode_timestamp",
]


# ---------------------------------------------------------------------------------------------
# Encoding. A table or array collects its pieces in a list, joins them once and prefixes the
# length; a nested table or array is one such piece. Errors carry the path to the bad value.


def encode_shortstr(value: str) -> bytes:
    """Encode a short string: 1-byte length, then UTF-8 (surrogateescape), 255 bytes at most."""
    if type(value) is not str and not isinstance(value, str):
        raise EncodeError(f"a short string must be a str, not {type(value).__name__}")
    try:
        raw = value.encode()  # strict UTF-8 is the fast path
    except UnicodeEncodeError:
        raw = _encode_str(value)
    size = len(raw)
    if size > 255:
        raise EncodeError(f"short string is {size} bytes long, more than 255")
    return _SHORT_PREFIX[size] + raw


def encode_longstr(value: bytes | str) -> bytes:
    """Encode a long string: 4-byte length, then the bytes (a str is encoded as UTF-8)."""
    if isinstance(value, str):
        raw = _encode_str(value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    else:
        raise EncodeError(f"a long string must be bytes or str, not {type(value).__name__}")
    if len(raw) > _UINT32_MAX:
        raise EncodeError(f"long string is {len(raw)} bytes long, more than 2**32-1")
    return _pack_u32(len(raw)) + raw


def encode_timestamp(value: datetime | int) -> bytes:
    """Encode a timestamp: 8 bytes, unsigned seconds since the epoch.

    A naive datetime is taken as UTC; sub-second parts are dropped.
    """
    return _S_U64.pack(_timestamp_seconds(value))


def encode_table(value: Mapping[str, object] | None) -> bytes:
    """Encode a field table, with its 4-byte length prefix; ``None`` is the empty table."""
    if value is None:
        return _EMPTY_TABLE
    if type(value) is not dict and not isinstance(value, Mapping):
        raise EncodeError(f"a field table must be a mapping, not {type(value).__name__}")
    return _table_bytes(value, 1)


def encode_array(value: Sequence[object]) -> bytes:
    """Encode a field array (list or tuple), with its 4-byte length prefix."""
    if not isinstance(value, (list, tuple)):
        raise EncodeError(f"a field array must be a list or tuple, not {type(value).__name__}")
    return _array_bytes(value, 1)


def encode_field_value(value: object) -> bytes:
    """Encode one field value: its tag byte, then the value."""
    return _value_bytes(value, 0)


def _encode_str(value: str) -> bytes:
    try:
        return value.encode()  # strict UTF-8 is the fast path
    except UnicodeEncodeError:
        pass
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"string cannot be encoded as UTF-8: {exc.reason}") from None


def _encode_key(key: object) -> bytes:
    """The length-prefixed key; remembered in the key cache while it has room."""
    if not isinstance(key, str):
        raise EncodeError(f"field table keys must be str, not {type(key).__name__}")
    raw = _encode_str(key)
    if len(raw) > 255:
        raise EncodeError(f"field table key is {len(raw)} bytes long, more than 255")
    encoded = _SHORT_PREFIX[len(raw)] + raw
    if len(_KEY_CACHE) < _KEY_CACHE_MAX and type(key) is str:
        _KEY_CACHE[key] = encoded
    return encoded


def _table_bytes(value: Mapping[Any, object], depth: int) -> bytes:
    """Length prefix and entries; ``depth`` is this table's (the outermost is 1)."""
    if depth > MAX_DEPTH:
        raise EncodeError(f"field tables nested deeper than {MAX_DEPTH} levels (a cycle?)")
    parts: list[bytes] = []
    add = parts.append
    key_cache = _KEY_CACHE
    tag_u32, tag_i32 = _TAG_U32, _TAG_I32
    key: object = None
    try:
        for key, item in value.items():
            # The cache holds exact str keys only, so a hit is a key equal to a str.
            add(key_cache.get(key) or _encode_key(key))  # type: ignore[call-overload]
            kind = type(item)
            if kind is str:
                try:
                    raw = item.encode()  # type: ignore[attr-defined]
                except UnicodeEncodeError:
                    raw = _encode_str(item)  # type: ignore[arg-type]
                add(tag_u32(83, len(raw)))
                add(raw)
            elif kind is int and -2147483648 <= item <= 2147483647:  # type: ignore[operator]
                add(tag_i32(73, item))
            elif kind is bool:
                add(_TRUE if item else _FALSE)
            elif kind is dict:
                add(b"F")
                add(_table_bytes(item, depth + 1))  # type: ignore[arg-type]
            elif kind is list:
                add(b"A")
                add(_array_bytes(item, depth + 1))  # type: ignore[arg-type]
            else:
                add(_value_bytes(item, depth))
    except EncodeError as exc:
        exc.path.insert(0, key)
        raise
    except TypeError:
        # An unhashable key from an odd Mapping, which the cache lookup cannot take.
        if isinstance(key, str):
            raise
        error = EncodeError(f"field table keys must be str, not {type(key).__name__}")
        error.path.append(key)
        raise error from None
    except struct.error:
        # Only a string over 4 GiB gets here: every number is range-checked before packing.
        error = EncodeError("string is longer than 2**32-1 bytes")
        error.path.append(key)
        raise error from None
    body = b"".join(parts)
    if len(body) > _UINT32_MAX:
        raise EncodeError(f"field table is {len(body)} bytes long, more than 2**32-1")
    return _pack_u32(len(body)) + body


def _array_bytes(value: Sequence[object], depth: int) -> bytes:
    """Length prefix and tagged items; ``depth`` is this array's (the outermost is 1)."""
    if depth > MAX_DEPTH:
        raise EncodeError(f"arrays nested deeper than {MAX_DEPTH} levels (a cycle?)")
    parts: list[bytes] = []
    add = parts.append
    for index, item in enumerate(value):
        try:
            kind = type(item)
            if kind is str:
                raw = _encode_str(item)  # type: ignore[arg-type]
                add(_TAG_U32(83, len(raw)))
                add(raw)
            elif kind is int and -2147483648 <= item <= 2147483647:  # type: ignore[operator]
                add(_TAG_I32(73, item))
            elif kind is bool:
                add(_TRUE if item else _FALSE)
            elif kind is dict:
                add(b"F")
                add(_table_bytes(item, depth + 1))  # type: ignore[arg-type]
            elif kind is list:
                add(b"A")
                add(_array_bytes(item, depth + 1))  # type: ignore[arg-type]
            else:
                add(_value_bytes(item, depth))
        except EncodeError as exc:
            exc.path.insert(0, index)
            raise
        except struct.error:
            error = EncodeError("string is longer than 2**32-1 bytes")
            error.path.append(index)
            raise error from None
    body = b"".join(parts)
    if len(body) > _UINT32_MAX:
        raise EncodeError(f"array is {len(body)} bytes long, more than 2**32-1")
    return _pack_u32(len(body)) + body


def _value_bytes(value: object, depth: int) -> bytes:
    """Tag and value; ``depth`` is that of the enclosing table or array (0 for none)."""
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if isinstance(value, int):
        if _INT32_MIN <= value <= _INT32_MAX:
            return _TAG_I32(73, value)
        if _INT64_MIN <= value <= _INT64_MAX:
            return _TAG_I64(108, value)
        raise EncodeError(f"integer {value} does not fit a signed 64-bit field")
    if isinstance(value, float):
        return _TAG_F64(100, value)
    if isinstance(value, Decimal):
        return _TAG_DECIMAL(68, *_decimal_parts(value))
    if isinstance(value, str):
        raw = _encode_str(value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = value if isinstance(value, bytes) else bytes(value)
        if len(raw) > _UINT32_MAX:
            raise EncodeError(f"byte array is {len(raw)} bytes long, more than 2**32-1")
        return _TAG_U32(120, len(raw)) + raw
    elif isinstance(value, datetime):
        return _TAG_U64(84, _timestamp_seconds(value))
    elif value is None:
        return _VOID
    elif isinstance(value, (list, tuple)):  # before Mapping: a cheaper test, and disjoint
        return b"A" + _array_bytes(value, depth + 1)
    elif isinstance(value, Mapping):
        return b"F" + _table_bytes(value, depth + 1)
    else:
        kind = type(value)
        raise EncodeError(f"cannot encode a value of type {kind.__module__}.{kind.__qualname__}")
    if len(raw) > _UINT32_MAX:
        raise EncodeError(f"string is {len(raw)} bytes long, more than 2**32-1")
    return _TAG_U32(83, len(raw)) + raw


def _decimal_parts(value: Decimal) -> tuple[int, int]:
    """(scale, int32 value) for a finite Decimal, keeping its exponent when it fits."""
    if not value.is_finite():
        raise EncodeError(f"cannot encode a non-finite decimal {value}")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    if digits == (0,):
        # Zero: any exponent is the same number; keep the scale if it is a legal one.
        return (-exponent if -255 <= exponent <= 0 else 0), 0
    if exponent > 0:
        # Multiply out: scale 0. An int32 has at most 10 digits, so this stays small.
        if len(digits) + exponent > 10:
            raise EncodeError(f"decimal {value} does not fit an AMQP decimal (int32 value)")
        digits += (0,) * exponent
        exponent = 0
    scale = -exponent
    count = len(digits)
    # Too long or too finely scaled: drop trailing zeros, which keeps the number.
    while (scale > 255 or count > 10) and scale > 0 and digits[count - 1] == 0:
        count -= 1
        scale -= 1
    if scale > 255 or count > 10:
        raise EncodeError(
            f"decimal {value} does not fit an AMQP decimal (scale 0..255, int32 value)"
        )
    number = int("".join(map(str, digits[:count])))
    if sign:
        number = -number
    if not _INT32_MIN <= number <= _INT32_MAX:
        raise EncodeError(f"decimal {value} does not fit an AMQP decimal (int32 value)")
    return scale, number


def _timestamp_seconds(value: object) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            value = value.replace(tzinfo=_UTC)
        delta = value - _EPOCH
        seconds = delta.days * 86400 + delta.seconds
        if seconds < 0:
            raise EncodeError(f"timestamp {value.isoformat()} is before 1970")
        return seconds
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= _UINT64_MAX:
            raise EncodeError(f"timestamp {value} does not fit an unsigned 64-bit field")
        return value
    raise EncodeError(f"a timestamp must be a datetime or int, not {type(value).__name__}")
