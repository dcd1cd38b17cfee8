#!/usr/bin/env python3
"""Generate txpika/spec.py (AMQP 0-9-1) and txpika/spec_0_8.py from RabbitMQ's JSON specs.

Usage: ``python tools/gen_spec.py`` (writes both modules) or ``python tools/gen_spec.py
--check`` (exits 1 if a committed module differs from what would be generated).

The JSON files in spec/ are RabbitMQ's machine-readable specifications (MIT licensed, see
their "copyright" member). Each method becomes a frozen, slotted dataclass with generated
``__new__`` (fast construction, see txpika/_specbase.py), ``encode`` (a fast path with a
checked fallback) and ``decode`` that pack fields with precompiled ``struct`` formats; nothing
is read from the JSON at run time.
"""

from __future__ import annotations

import argparse
import json
import keyword
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

TARGETS = {
    "0-9-1": ("spec/amqp-rabbitmq-0.9.1.json", "txpika/spec.py"),
    "0-8": ("spec/amqp-rabbitmq-0.8.json", "txpika/spec_0_8.py"),
}

HEADERS = {"0-9-1": b"AMQP\x00\x00\x09\x01", "0-8": b"AMQP\x01\x01\x08\x00"}

# The JSON does not say which side sends a method. These are the methods a server may send
# to a client beyond the "-ok" replies to client requests.
SERVER_SENT = {
    "connection.start", "connection.secure", "connection.tune", "connection.open-ok",
    "connection.close", "connection.close-ok", "connection.blocked", "connection.unblocked",
    "connection.redirect", "connection.update-secret-ok",
    "channel.flow", "channel.flow-ok", "channel.close", "channel.close-ok", "channel.alert",
    "basic.cancel", "basic.return", "basic.deliver", "basic.get-empty", "basic.ack",
    "basic.nack",
    "file.open", "file.stage", "file.return", "file.deliver",
    "stream.return", "stream.deliver",
    "tunnel.request",
    "test.integer", "test.string", "test.table", "test.content",
    "dtx.start-ok", "dtx.select-ok",
}
# Methods a client sends; "-ok" replies the client sends to server requests included.
CLIENT_SENT_OK = {
    "connection.start-ok", "connection.secure-ok", "connection.tune-ok",
    "connection.close-ok", "channel.flow-ok", "channel.close-ok",
    "file.open-ok", "test.integer-ok", "test.string-ok", "test.table-ok", "test.content-ok",
}
CLIENT_NEVER_SENDS = {
    "connection.start", "connection.secure", "connection.tune", "connection.open-ok",
    "connection.blocked", "connection.unblocked", "connection.redirect",
    "connection.update-secret-ok", "channel.alert", "basic.return", "basic.deliver",
    "basic.get-empty", "file.return", "file.deliver", "stream.return", "stream.deliver",
    "test.integer", "test.string", "test.table", "test.content",
}
# Replies that are not simply "<name>-ok".
EXTRA_REPLIES = {"basic.get": ["basic.get-ok", "basic.get-empty"]}
# Fields whose values must never appear in a repr (they carry credentials).
SECRET_FIELDS = {
    ("connection.start-ok", "response"),
    ("connection.secure-ok", "response"),
    ("connection.update-secret", "new-secret"),
}
# Field types: python annotation, default for fields the spec gives none.
PYTYPES = {
    "octet": ("int", "0"),
    "short": ("int", "0"),
    "long": ("int", "0"),
    "longlong": ("int", "0"),
    "bit": ("bool", "False"),
    "shortstr": ("str", '""'),
    "longstr": ("bytes", 'b""'),
    "table": ("Mapping[str, Any] | None", "None"),
    "timestamp": ("datetime | None", "None"),
}
STRUCT = {"octet": "B", "short": "H", "long": "I", "longlong": "Q"}
LIMITS = {"octet": 8, "short": 16, "long": 32, "longlong": 64}


def camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))


def pyname(name: str) -> str:
    ident = name.replace("-", "_")
    if keyword.iskeyword(ident):
        ident += "_"
    return ident


def resolve(arg: dict[str, Any], domains: dict[str, str]) -> str:
    kind = arg.get("type") or arg["domain"]
    while kind in domains and domains[kind] != kind:
        kind = domains[kind]
    return kind


def default_literal(kind: str, value: Any) -> str:
    if kind == "bit":
        return "True" if value else "False"
    if kind in STRUCT:
        return str(int(value))
    if kind == "shortstr":
        return repr(str(value))
    if kind == "longstr":
        return repr(str(value).encode())
    if kind == "table":
        return "None"  # an empty table; a mutable default would be shared
    raise ValueError(f"no default for {kind}")


class Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "", indent: int = 0) -> None:
        self.lines.append(("    " * indent + text) if text else "")


def group_fields(fields: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Runs of packable fields: ("struct", [names]) for fixed-size ints and bits, else
    ("shortstr"|"longstr"|"table"|"timestamp", [name])."""
    groups: list[tuple[str, list[str]]] = []
    for name, kind in fields:
        if kind in STRUCT or kind == "bit":
            if groups and groups[-1][0] == "struct":
                groups[-1][1].append(name)
            else:
                groups.append(("struct", [name]))
        else:
            groups.append((kind, [name]))
    return groups


def struct_plan(names: list[str], kinds: dict[str, str]) -> tuple[str, list[Any]]:
    """Format and the items of a run of ints and bits: bits pack 8 to an octet."""
    fmt = ">"
    items: list[Any] = []  # a name, or a list of bit names for one octet
    bits: list[str] = []
    for name in names:
        if kinds[name] == "bit":
            if len(bits) == 8:
                fmt += "B"
                items.append(bits)
                bits = []
            bits.append(name)
            continue
        if bits:
            fmt += "B"
            items.append(bits)
            bits = []
        fmt += STRUCT[kinds[name]]
        items.append(name)
    if bits:
        fmt += "B"
        items.append(bits)
    return fmt, items


def emit_encode_body(
    w: Writer, groups: list[tuple[str, list[str]]], kinds: dict[str, str],
    structs: dict[str, str], prefix: str, ind: int,
) -> list[str]:
    """Lines computing the parts of the checked encoder; returns the part expressions."""
    parts: list[str] = []
    for index, (kind, names) in enumerate(groups):
        if kind == "struct":
            fmt, items = struct_plan(names, kinds)
            sname = structs.setdefault(fmt, f"_S{len(structs)}")
            args = []
            for item in items:
                if isinstance(item, list):
                    args.append(bits_expr(item, prefix))
                else:
                    args.append(f"{prefix}{item}")
            parts.append(f"{sname}.pack({', '.join(args)})")
        elif kind == "shortstr":
            (name,) = names
            w(f"p{index} = _enc_shortstr({prefix}{name})", ind)
            parts.append(f"p{index}")
        elif kind == "longstr":
            (name,) = names
            parts.append(f"_enc_longstr({prefix}{name})")
        elif kind == "table":
            (name,) = names
            parts.append(f"_enc_table({prefix}{name})")
        elif kind == "timestamp":
            (name,) = names
            parts.append(f"_enc_timestamp({prefix}{name})")
        else:
            raise ValueError(kind)
    return parts


def bits_expr(names: list[str], prefix: str) -> str:
    """The octet of up to eight bit fields, the first in the lowest bit."""
    terms = [f"({1 << i} if {prefix}{n} else 0)" for i, n in enumerate(names)]
    return " | ".join(terms) if len(terms) > 1 else terms[0][1:-1]


def emit_fast_encode(
    w: Writer, fields: list[tuple[str, str]], structs: dict[str, str], index: int, ind: int,
) -> None:
    """The body of a method's ``encode`` fast path: the class and method ids, the ints and
    bits, and each short string's length octet are packed by as few structs as possible.

    Short strings are encoded with ``str.encode`` (strict UTF-8) and prefixed from a table;
    a value that is not a str, too long, not strict UTF-8 or an int out of range raises
    TypeError, IndexError, UnicodeEncodeError or struct.error. The caller answers any of
    these, and an EncodeError from a table or long string, by running the checked encoder:
    whatever is wrong, the error is the one it raises (the first bad field in its order).
    """
    pieces: list[str] = []
    ids = f"{index:#010x}"
    fmt = ">I"
    args = [ids]
    bits: list[str] = []
    # Whether the pending struct is one octet that cannot be negative (bits, or a string's
    # length, which is too long for the table if it is too long for a short string).
    lone_octet = False

    def flush_bits() -> None:
        nonlocal fmt, lone_octet
        if bits:
            lone_octet = fmt == ">"
            fmt += "B"
            args.append(bits_expr(bits, "self."))
            bits.clear()

    def flush_struct() -> None:
        nonlocal fmt, lone_octet
        flush_bits()
        if fmt == ">B" and lone_octet:  # no struct needed for one such octet
            pieces.append(f"_SP[{args[0]}]")
        elif args == [ids]:  # only the ids: a constant
            pieces.append(repr(index.to_bytes(4, "big")))
        elif fmt != ">":
            sname = structs.setdefault(fmt, f"_S{len(structs)}")
            pieces.append(f"{sname}.pack({', '.join(args)})")
        fmt = ">"
        args.clear()
        lone_octet = False

    for name, kind in fields:
        if kind == "bit":
            if len(bits) == 8:
                flush_bits()
            bits.append(name)
            continue
        flush_bits()
        if kind in STRUCT:
            fmt += STRUCT[kind]
            args.append(f"self.{name}")
        elif kind == "shortstr":
            w(f"v_{name} = _str_encode(self.{name})", ind)
            lone_octet = fmt == ">"
            fmt += "B"
            args.append(f"len(v_{name})")
            flush_struct()
            pieces.append(f"v_{name}")
        elif kind == "longstr":
            flush_struct()
            pieces.append(f"_enc_longstr(self.{name})")
        elif kind == "table":
            flush_struct()
            pieces.append(f"_enc_table(self.{name})")
        elif kind == "timestamp":
            flush_struct()
            pieces.append(f"_enc_timestamp(self.{name})")
        else:
            raise ValueError(kind)
    flush_struct()
    if len(pieces) == 1:
        w(f"return {pieces[0]}", ind)
    else:
        w(f"return _join(({', '.join(pieces)}))", ind)


def emit_decode_shortstr(w: Writer, target: str, at: str, ind: int) -> str:
    """Read a short string at ``at`` into ``target``: strict UTF-8 first, then
    surrogateescape (which keeps any bytes, so that they encode back the same).

    The position after it is left in the other of ``offset`` and ``end``, which is returned
    (so that a run of strings does not copy one into the other each time).
    """
    after = "end" if at == "offset" else "offset"
    w(f"{after} = {at} + 1 + data[{at}]", ind)
    w("try:", ind)
    w(f"{target} = data[{at} + 1:{after}].decode()", ind + 1)
    w("except UnicodeDecodeError:", ind)
    w(f"{target} = data[{at} + 1:{after}].decode('utf-8', 'surrogateescape')", ind + 1)
    return after


def emit_decode_timestamp(w: Writer, target: str, structs: dict[str, str], at: str,
                          ind: int) -> str:
    sname = structs.setdefault(">Q", f"_S{len(structs)}")
    w(f"(seconds,) = {sname}.unpack_from(data, {at})", ind)
    w(f"{at} += 8", ind)
    w("try:", ind)
    w(f"{target} = _fromtimestamp(seconds, _UTC)", ind + 1)
    w("except (OverflowError, ValueError, OSError):", ind)
    w('raise _WireError(f"timestamp {seconds} is out of range") from None', ind + 1)
    return at


def emit_decode_group(
    w: Writer, kind: str, names: list[str], kinds: dict[str, str],
    structs: dict[str, str], at: str, ind: int,
) -> str:
    """Read one group of fields at ``at`` (``offset`` or ``end``) into the slots of ``obj``;
    returns which of the two holds the position after them."""
    if kind == "struct":
        fmt, items = struct_plan(names, kinds)
        sname = structs.setdefault(fmt, f"_S{len(structs)}")
        targets = []
        for n, item in enumerate(items):
            targets.append(f"_b{n}" if isinstance(item, list) else f"obj.{item}")
        lhs = ", ".join(targets) + ("," if len(targets) == 1 else "")
        if len(targets) == 1:
            lhs = f"({lhs})"
        w(f"{lhs} = {sname}.unpack_from(data, {at})", ind)
        w(f"{at} += {struct_size(fmt)}", ind)
        for n, item in enumerate(items):
            if isinstance(item, list):
                for i, bit in enumerate(item):
                    w(f"obj.{bit} = (_b{n} & {1 << i}) != 0", ind)
        return at
    (name,) = names
    if kind == "shortstr":
        return emit_decode_shortstr(w, f"obj.{name}", at, ind)
    if kind == "longstr":
        w(f"obj.{name}, offset = _dec_longstr(data, {at})", ind)
        return "offset"
    if kind == "table":
        w(f"obj.{name}, offset = _decode_table(data, {at}, len(data), 1)", ind)
        return "offset"
    if kind == "timestamp":
        return emit_decode_timestamp(w, f"obj.{name}", structs, at, ind)
    raise ValueError(kind)


def struct_size(fmt: str) -> int:
    return sum({"B": 1, "H": 2, "I": 4, "Q": 8}[c] for c in fmt[1:])


def range_check(w: Writer, fields: list[tuple[str, str]], owner: str, prefix: str,
                ind: int) -> None:
    ints = [(n, k) for n, k in fields if k in STRUCT]
    w("except _struct_error:", ind)
    for n, k in ints:
        w(f"_check_int({owner!r}, {n!r}, {prefix}{n}, {LIMITS[k]})", ind + 1)
    w("raise", ind + 1)


def emit_new(w: Writer, path: str, params: list[str], names: list[str], ind: int) -> None:
    """A ``__new__`` that fills the mutable twin, then makes it an instance of the class
    (see `txpika._specbase`); a subclass is built the dataclass way."""
    glob = "_" + path.replace(".", "_")
    w(f"def __new__(cls, {', '.join(params)}) -> {path}:", ind)
    w(f"if cls is not {glob}:", ind + 1)
    values = ", ".join(names) + ("," if len(names) == 1 else "")
    w(f"return _build(cls, {glob}, ({values}))", ind + 2)
    w(f"obj = _new({glob}_T)", ind + 1)
    for name in names:
        w(f"obj.{name} = {name}", ind + 1)
    w("obj.__class__ = cls", ind + 1)
    w("return obj", ind + 1)


def emit_decode_head(w: Writer, path: str, ind: int, create: bool = True) -> None:
    glob = "_" + path.replace(".", "_")
    w(f"if cls is not {glob}:", ind)
    w(f"return _decode_as(cls, {glob}, data, offset)", ind + 1)
    if create:
        w(f"obj = _new({glob}_T)", ind)


def emit_decode_tail(w: Writer, what: str, ind: int, check_end: bool = True) -> None:
    """The end of a decoder. Reading past the data raises, except for slicing a short string:
    ``check_end`` unless the last field read is of another kind."""
    w("except (_struct_error, IndexError, RecursionError) as exc:", ind)
    w(f"raise _decode_failure(exc, {what!r}) from None", ind + 1)
    if check_end:
        w("if offset > len(data):", ind)
        w(f"raise _WireError('truncated {what}')", ind + 1)
    w("obj.__class__ = cls", ind)
    w("return obj, offset", ind)


def generate(dialect: str) -> str:
    src_path, _ = TARGETS[dialect]
    spec = json.loads((ROOT / src_path).read_text())
    domains = {name: kind for name, kind in spec["domains"]}
    w = Writer()
    structs: dict[str, str] = {}
    body = Writer()
    method_index: list[tuple[str, int, str]] = []
    props_classes: list[tuple[int, str]] = []
    all_names: dict[str, str] = {}  # "basic.publish" -> "Basic.Publish"
    replies: dict[str, list[str]] = {}
    built: list[str] = []  # classes with a generated __new__, which need a twin

    for cls in spec["classes"]:
        for meth in cls["methods"]:
            dotted = f"{cls['name']}.{meth['name']}"
            all_names[dotted] = f"{camel(cls['name'])}.{camel(meth['name'])}"

    for cls in spec["classes"]:
        cname = camel(cls["name"])
        body()
        body()
        body(f"class {cname}:")
        body(f'"""The AMQP ``{cls["name"]}`` class (id {cls["id"]})."""', 1)
        body()
        body(f"CLASS_ID = {cls['id']}", 1)
        for meth in cls["methods"]:
            full = f"{cls['name']}.{meth['name']}"
            mname = camel(meth["name"])
            path = f"{cname}.{mname}"
            fields = [(pyname(a["name"]), resolve(a, domains)) for a in meth["arguments"]]
            kinds = dict(fields)
            sync = bool(meth.get("synchronous", False))
            content = bool(meth.get("content", False))
            receives = full in SERVER_SENT or (
                meth["name"].endswith("-ok") and full not in CLIENT_SENT_OK
            )
            sends = full not in CLIENT_NEVER_SENDS and (
                not meth["name"].endswith("-ok") or full in CLIENT_SENT_OK
            )
            if sync:
                names = EXTRA_REPLIES.get(full, [full + "-ok"])
                replies[full] = [n for n in names if n in all_names]
            index = (cls["id"] << 16) | meth["id"]
            method_index.append((full, index, path))
            body()
            body("@dataclass(frozen=True, slots=True, init=False)", 1)
            body(f"class {mname}(Method):", 1)
            body(f'"""``{full}`` ({cls["id"]}, {meth["id"]}){", synchronous" if sync else ""}'
                 f'{", carries content" if content else ""}."""', 2)
            body()
            params = []
            for arg in meth["arguments"]:
                name = pyname(arg["name"])
                kind = kinds[name]
                annotation, zero = PYTYPES[kind]
                default = (
                    default_literal(kind, arg["default-value"])
                    if "default-value" in arg else zero
                )
                params.append(f"{name}: {annotation} = {default}")
                if (full, arg["name"]) in SECRET_FIELDS:
                    body(f"{name}: {annotation} = field(default={default}, repr=False)", 2)
                else:
                    body(f"{name}: {annotation} = {default}", 2)
            if fields:
                body()
            body(f"CLASS_ID: ClassVar[int] = {cls['id']}", 2)
            body(f"METHOD_ID: ClassVar[int] = {meth['id']}", 2)
            body(f"INDEX: ClassVar[int] = {index:#010x}", 2)
            body(f"NAME: ClassVar[str] = {full!r}", 2)
            body(f"SYNCHRONOUS: ClassVar[bool] = {sync}", 2)
            body(f"CONTENT: ClassVar[bool] = {content}", 2)
            body(f"CLIENT_RECEIVES: ClassVar[bool] = {receives}", 2)
            body(f"CLIENT_SENDS: ClassVar[bool] = {sends}", 2)
            body("REPLIES: ClassVar[tuple[builtins.type[Method], ...]] = ()", 2)
            ids = (cls["id"] << 16 | meth["id"]).to_bytes(4, "big")
            if fields:
                built.append(path)
                body()
                emit_new(body, path, params, [n for n, _ in fields], 2)
            # encode: a fast path, and the checked encoder it falls back on
            body()
            body("def encode(self) -> bytes:", 2)
            fallible = any(k in STRUCT or k == "shortstr" for _, k in fields)
            if not fields:
                body(f"return {ids!r}", 3)
            elif fallible:
                body("try:", 3)
                emit_fast_encode(body, fields, structs, index, 4)
                body("except (TypeError, IndexError, ValueError, _struct_error):", 3)
                body("return self._encode_checked()", 4)
                body()
                body("def _encode_checked(self) -> bytes:", 2)
                body('"""`encode` that says which field is wrong, and encodes strings that '
                     'are not strict UTF-8."""', 3)
                groups = group_fields(fields)
                if any(k in STRUCT for _, k in fields):
                    body("try:", 3)
                    parts = emit_encode_body(body, groups, kinds, structs, "self.", 4)
                    body(f"return {ids!r} + " + " + ".join(parts), 4)
                    range_check(body, fields, full, "self.", 3)
                else:
                    parts = emit_encode_body(body, groups, kinds, structs, "self.", 3)
                    body(f"return {ids!r} + " + " + ".join(parts), 3)
            else:
                emit_fast_encode(body, fields, structs, index, 3)
            # decode
            body()
            body("@classmethod", 2)
            body(f"def decode(cls, data: bytes, offset: int) -> tuple[{path}, int]:", 2)
            if not fields:
                body("return cls(), offset", 3)
            else:
                emit_decode_head(body, path, 3)
                body("try:", 3)
                at = "offset"
                for kind, names in group_fields(fields):
                    at = emit_decode_group(body, kind, names, kinds, structs, at, 4)
                if at != "offset":
                    body("offset = end", 4)
                emit_decode_tail(body, "arguments", 3, fields[-1][1] == "shortstr")
        if cls.get("properties"):
            pfields = [(pyname(p["name"]), resolve(p, domains)) for p in cls["properties"]]
            pname = f"{cname}Properties"
            props_classes.append((cls["id"], pname))
            built.append(pname)
            emit_properties(body, pname, cls, pfields, structs)

    # header
    w("# Generated by tools/gen_spec.py from " + src_path + ". DO NOT EDIT.")
    w("# The specification it is generated from is:")
    for line in "".join(spec["copyright"]).rstrip().splitlines():
        w(("# " + line).rstrip())
    w("#")
    w("# The generated __new__ and decode build objects through untyped twins (see")
    w("# txpika._specbase), so they return values that mypy only knows as Any:")
    w("# mypy: warn-return-any=False")
    w('"""AMQP ' + dialect + ' methods and properties, generated from RabbitMQ\'s specification.')
    w()
    w("Each method is a frozen, slotted dataclass whose fields are its arguments, with the")
    w("class attributes of `txpika._specbase.Method`. ``METHODS`` maps ``INDEX`` to the class;")
    w("``DIALECT`` is what `txpika.connection` needs to speak this version.")
    w()
    w("``encode`` takes a fast path that packs short strings and numbers directly and, when a")
    w("value does not fit it, falls back on ``_encode_checked``, which says which field is")
    w("wrong. ``decode`` reads fields straight into a new object (see `txpika._specbase` for")
    w("how frozen objects are built quickly) and raises `txpika._wire.WireError` for input")
    w("that is truncated or malformed.")
    w('"""')
    w()
    w("from __future__ import annotations")
    w()
    w("import builtins")
    w("import sys")
    w("from collections.abc import Mapping")
    w("from dataclasses import dataclass, field")
    w("from datetime import UTC as _UTC")
    w("from datetime import datetime")
    w("from struct import Struct")
    w("from struct import error as _struct_error")
    w("from typing import Any, ClassVar")
    w()
    w("from txpika._specbase import Dialect, Method, Properties")
    w("from txpika._specbase import bad_flags as _bad_flags")
    w("from txpika._specbase import build as _build")
    w("from txpika._specbase import check_int as _check_int")
    w("from txpika._specbase import decode_as as _decode_as")
    w("from txpika._specbase import decode_failure as _decode_failure")
    w("from txpika._specbase import twin as _twin")
    w("from txpika._wire import _SHORT_PREFIX as _SP")
    w("from txpika._wire import WireError as _WireError")
    w("from txpika._wire import _decode_table")
    w("from txpika._wire import decode_longstr as _dec_longstr")
    w("from txpika._wire_encode import _table_bytes")
    w("from txpika._wire_encode import encode_longstr as _enc_longstr")
    w("from txpika._wire_encode import encode_shortstr as _enc_shortstr")
    w("from txpika._wire_encode import encode_table as _enc_table")
    w("from txpika._wire_encode import encode_timestamp as _enc_timestamp")
    w()
    w(f"PROTOCOL_HEADER = {HEADERS[dialect]!r}")
    w(f"VERSION = {dialect!r}")
    for const in spec["constants"]:
        w(f"{const['name'].replace('-', '_')} = {const['value']}")
    w()
    w("_new: Any = object.__new__")
    w("_join = b''.join")
    w("_str_encode = str.encode")
    w("_fromtimestamp = datetime.fromtimestamp")
    w("_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)")
    for fmt, sname in sorted(structs.items(), key=lambda kv: int(kv[1][2:])):
        w(f"{sname} = Struct({fmt!r})")
    w.lines.extend(body.lines)
    w()
    w()
    w("# The classes as their __new__ and decode compare them, and their mutable twins.")
    for path in built:
        glob = "_" + path.replace(".", "_")
        w(f"{glob} = {path}")
        w(f"{glob}_T = _twin({path})")
    for _cid, pname in props_classes:
        w(f"_{pname}_EMPTY = {pname}()  # what decode returns for no property at all")
    w()
    w("METHODS: dict[int, type[Method]] = {")
    for _full, index, path in method_index:
        w(f"{index:#010x}: {path},", 1)
    w("}")
    w()
    w("#: Dotted AMQP name -> method class.")
    w("BY_NAME: dict[str, type[Method]] = {cls.NAME: cls for cls in METHODS.values()}")
    w()
    w("PROPERTIES: dict[int, type[Properties]] = {")
    for cid, pname in props_classes:
        w(f"{cid}: {pname},", 1)
    w("}")
    w()
    for full, names in replies.items():
        targets = ", ".join(all_names[n] for n in names)
        w(f"{all_names[full]}.REPLIES = ({targets},)")
    w()
    w("DIALECT = Dialect(")
    w(f"name={dialect!r},", 1)
    w("protocol_header=PROTOCOL_HEADER,", 1)
    w("methods=METHODS,", 1)
    w("properties=PROPERTIES,", 1)
    w("module=sys.modules[__name__],", 1)
    w(f"extensions={dialect == '0-9-1'},", 1)
    w(")")
    return "\n".join(w.lines) + "\n"


def emit_properties(body: Writer, pname: str, cls: dict[str, Any],
                    pfields: list[tuple[str, str]], structs: dict[str, str]) -> None:
    if len(pfields) > 15:
        raise ValueError("more than 15 properties need flag continuation")
    sflags = structs.setdefault(">H", f"_S{len(structs)}")
    body()
    body()
    body("@dataclass(frozen=True, slots=True, init=False)")
    body(f"class {pname}(Properties):")
    body(f'"""Content properties of the ``{cls["name"]}`` class; ``None`` means absent."""', 1)
    body()
    params = []
    for name, kind in pfields:
        annotation = PYTYPES[kind][0]
        if "None" not in annotation:
            annotation += " | None"
        body(f"{name}: {annotation} = None", 1)
        params.append(f"{name}: {annotation} = None")
    body()
    body(f"CLASS_ID: ClassVar[int] = {cls['id']}", 1)
    body()
    emit_new(body, pname, params, [n for n, _ in pfields], 1)

    # encode, fast path: strings by str.encode and the prefix table, octets from the table,
    # a dict of headers by the table encoder itself, an aware UTC datetime by arithmetic.
    body()
    body("def encode(self) -> bytes:", 1)
    body("try:", 2)
    body("flags = 0", 3)
    body("parts = [b'']", 3)
    body("add = parts.append", 3)
    body("v: Any", 3)
    for i, (name, kind) in enumerate(pfields):
        bit = 1 << (15 - i)
        body(f"v = self.{name}", 3)
        body("if v is not None:", 3)
        body(f"flags |= {bit:#06x}", 4)
        if kind == "bit":
            continue  # a bit property is carried by its flag alone
        if kind == "octet":
            body("add(_SP[v if v >= 0 else 256])", 4)  # a negative index must fail too
        elif kind in STRUCT:
            sname = structs.setdefault(">" + STRUCT[kind], f"_S{len(structs)}")
            body(f"add({sname}.pack(v))", 4)
        elif kind == "shortstr":
            body("raw = _str_encode(v)", 4)
            body("add(_SP[len(raw)])", 4)
            body("add(raw)", 4)
        elif kind == "longstr":
            body("add(_enc_longstr(v))", 4)
        elif kind == "table":
            body("add(_table_bytes(v, 1) if type(v) is dict else _enc_table(v))", 4)
        elif kind == "timestamp":
            sname = structs.setdefault(">Q", f"_S{len(structs)}")
            body("if type(v) is datetime and v.tzinfo is _UTC:", 4)
            body("delta = v - _EPOCH", 5)
            body(f"add({sname}.pack(delta.days * 86400 + delta.seconds))", 5)
            body("else:", 4)
            body("add(_enc_timestamp(v))", 5)
        else:
            raise ValueError(kind)
    body(f"parts[0] = {sflags}.pack(flags)", 3)
    body("return _join(parts)", 3)
    body("except (TypeError, IndexError, ValueError, _struct_error):", 2)
    body("return self._encode_checked()", 3)

    body()
    body("def _encode_checked(self) -> bytes:", 1)
    body('"""`encode` that says which property is wrong, and encodes strings that are not '
         'strict UTF-8."""', 2)
    body("flags = 0", 2)
    body("parts: list[bytes] = [b'']", 2)
    for i, (name, kind) in enumerate(pfields):
        bit = 1 << (15 - i)
        body(f"{name} = self.{name}", 2)
        body(f"if {name} is not None:", 2)
        body(f"flags |= {bit:#06x}", 3)
        if kind == "bit":
            continue
        if kind in STRUCT:
            sname = structs.setdefault(">" + STRUCT[kind], f"_S{len(structs)}")
            body("try:", 3)
            body(f"parts.append({sname}.pack({name}))", 4)
            body("except _struct_error:", 3)
            body(f"_check_int({pname!r}, {name!r}, {name}, {LIMITS[kind]})", 4)
            body("raise", 4)
        elif kind == "shortstr":
            body(f"parts.append(_enc_shortstr({name}))", 3)
        elif kind == "longstr":
            body(f"parts.append(_enc_longstr({name}))", 3)
        elif kind == "table":
            body(f"parts.append(_enc_table({name}))", 3)
        elif kind == "timestamp":
            body(f"parts.append(_enc_timestamp({name}))", 3)
    body(f"parts[0] = {sflags}.pack(flags)", 2)
    body("return b''.join(parts)", 2)

    # decode: present properties straight into the slots, absent ones set to None. The last
    # four (in BasicProperties: type, user_id, app_id and the deprecated cluster_id) are
    # rarely set, so they are first tested together.
    body()
    body("@classmethod", 1)
    body(f"def decode(cls, data: bytes, offset: int) -> tuple[{pname}, int]:", 1)
    emit_decode_head(body, pname, 2, create=False)
    body("try:", 2)
    body("flags = data[offset] << 8 | data[offset + 1]", 3)
    body("offset += 2", 3)
    body(f"if flags & {(1 << (16 - len(pfields))) - 1:#06x}:", 3)
    body("_bad_flags(flags)", 4)
    # No property at all (many messages have none): the one shared empty instance, which
    # being frozen can be shared; a subclass went through _decode_as above.
    body("if not flags:", 3)
    body(f"return _{pname}_EMPTY, offset", 4)
    body(f"obj = _new(_{pname}_T)", 3)
    kinds = dict(pfields)
    tail = len(pfields) - 4 if len(pfields) > 5 else len(pfields)

    def emit_field(i: int, name: str, kind: str, ind: int) -> None:
        body(f"if flags & {1 << (15 - i):#06x}:", ind)
        if kind == "bit":
            body(f"obj.{name} = True", ind + 1)
        elif kind == "octet":
            body(f"obj.{name} = data[offset]", ind + 1)
            body("offset += 1", ind + 1)
        elif emit_decode_group(body, kind, [name], kinds, structs, "offset", ind + 1) != "offset":
            body("offset = end", ind + 1)
        body("else:", ind)
        body(f"obj.{name} = None", ind + 1)

    for i, (name, kind) in enumerate(pfields[:tail]):
        emit_field(i, name, kind, 3)
    if tail < len(pfields):
        mask = sum(1 << (15 - i) for i in range(tail, len(pfields)))
        body(f"if flags & {mask:#06x}:", 3)
        for i, (name, kind) in enumerate(pfields[tail:], tail):
            emit_field(i, name, kind, 4)
        body("else:", 3)
        body(" = ".join(f"obj.{name}" for name, _ in pfields[tail:]) + " = None", 4)
    emit_decode_tail(body, "content properties", 2)


def render(dialect: str) -> str:
    return generate(dialect)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a module is stale")
    args = parser.parse_args(argv)
    stale = []
    for dialect, (_, out) in TARGETS.items():
        text = render(dialect)
        path = ROOT / out
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(out)
        else:
            path.write_text(text)
    if stale:
        print("stale generated modules: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
