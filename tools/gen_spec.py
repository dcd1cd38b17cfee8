#!/usr/bin/env python3
"""Generate txpika/spec.py (AMQP 0-9-1) and txpika/spec_0_8.py from RabbitMQ's JSON specs.

Usage: ``python tools/gen_spec.py`` (writes both modules) or ``python tools/gen_spec.py
--check`` (exits 1 if a committed module differs from what would be generated).

The JSON files in spec/ are RabbitMQ's machine-readable specifications (MIT licensed, see
their "copyright" member). Each method becomes a frozen, slotted dataclass with generated
``encode``/``decode`` that pack fields with precompiled ``struct`` formats; nothing is read
from the JSON at run time.
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
    """Lines computing the parts; returns the part expressions in order."""
    parts: list[str] = []
    for index, (kind, names) in enumerate(groups):
        if kind == "struct":
            fmt, items = struct_plan(names, kinds)
            sname = structs.setdefault(fmt, f"_S{len(structs)}")
            args = []
            for item in items:
                if isinstance(item, list):
                    terms = [f"({1 << i} if {prefix}{n} else 0)" for i, n in enumerate(item)]
                    args.append(" | ".join(terms) if len(terms) > 1 else terms[0][1:-1])
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


def emit_decode_group(
    w: Writer, kind: str, names: list[str], kinds: dict[str, str],
    structs: dict[str, str], ind: int,
) -> None:
    if kind == "struct":
        fmt, items = struct_plan(names, kinds)
        sname = structs.setdefault(fmt, f"_S{len(structs)}")
        targets = []
        for n, item in enumerate(items):
            targets.append(f"_b{n}" if isinstance(item, list) else item)
        lhs = ", ".join(targets) + ("," if len(targets) == 1 else "")
        w(f"{lhs} = {sname}.unpack_from(data, offset)", ind)
        w(f"offset += {sname}.size", ind)
        for n, item in enumerate(items):
            if isinstance(item, list):
                for i, bit in enumerate(item):
                    w(f"{bit} = bool(_b{n} & {1 << i})", ind)
    elif kind == "shortstr":
        (name,) = names
        w("length = data[offset]", ind)
        w("offset += 1", ind)
        w(f"{name} = data[offset:offset + length].decode('utf-8', 'surrogateescape')", ind)
        w("offset += length", ind)
    elif kind == "longstr":
        (name,) = names
        w(f"{name}, offset = _dec_longstr(data, offset)", ind)
    elif kind == "table":
        (name,) = names
        w(f"{name}, offset = _dec_table(data, offset)", ind)
    elif kind == "timestamp":
        (name,) = names
        w(f"{name}, offset = _dec_timestamp(data, offset)", ind)
    else:
        raise ValueError(kind)


def range_check(w: Writer, fields: list[tuple[str, str]], owner: str, prefix: str,
                ind: int) -> None:
    ints = [(n, k) for n, k in fields if k in STRUCT]
    w("except _struct_error:", ind)
    for n, k in ints:
        w(f"_check_int({owner!r}, {n!r}, {prefix}{n}, {LIMITS[k]})", ind + 1)
    w("raise", ind + 1)


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
            method_index.append((full, index, f"{cname}.{mname}"))
            body()
            body("@dataclass(frozen=True, slots=True)", 1)
            body(f"class {mname}(Method):", 1)
            body(f'"""``{full}`` ({cls["id"]}, {meth["id"]}){", synchronous" if sync else ""}'
                 f'{", carries content" if content else ""}."""', 2)
            body()
            for arg in meth["arguments"]:
                name = pyname(arg["name"])
                kind = kinds[name]
                annotation, zero = PYTYPES[kind]
                default = (
                    default_literal(kind, arg["default-value"])
                    if "default-value" in arg else zero
                )
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
            # encode
            body()
            body("def encode(self) -> bytes:", 2)
            if not fields:
                body(f"return {ids!r}", 3)
            else:
                groups = group_fields(fields)
                if any(k in STRUCT for _, k in fields):
                    body("try:", 3)
                    parts = emit_encode_body(body, groups, kinds, structs, "self.", 4)
                    body(f"return {ids!r} + " + " + ".join(parts), 4)
                    range_check(body, fields, full, "self.", 3)
                else:
                    parts = emit_encode_body(body, groups, kinds, structs, "self.", 3)
                    body(f"return {ids!r} + " + " + ".join(parts), 3)
            # decode
            body()
            body("@classmethod", 2)
            body(f"def decode(cls, data: bytes, offset: int) -> tuple[{cname}.{mname}, int]:", 2)
            if not fields:
                body("return cls(), offset", 3)
            else:
                for kind, names in group_fields(fields):
                    emit_decode_group(body, kind, names, kinds, structs, 3)
                args = ", ".join(n for n, _ in fields)
                body(f"return cls({args}), offset", 3)
        if cls.get("properties"):
            pfields = [(pyname(p["name"]), resolve(p, domains)) for p in cls["properties"]]
            pname = f"{cname}Properties"
            props_classes.append((cls["id"], pname))
            emit_properties(body, pname, cls, pfields, structs)

    # header
    w("# Generated by tools/gen_spec.py from " + src_path + ". DO NOT EDIT.")
    w("# The specification it is generated from is:")
    for line in "".join(spec["copyright"]).rstrip().splitlines():
        w(("# " + line).rstrip())
    w('"""AMQP ' + dialect + ' methods and properties, generated from RabbitMQ\'s specification.')
    w()
    w("Each method is a frozen, slotted dataclass whose fields are its arguments, with the")
    w("class attributes of `txpika._specbase.Method`. ``METHODS`` maps ``INDEX`` to the class;")
    w("``DIALECT`` is what `txpika.connection` needs to speak this version.")
    w('"""')
    w()
    w("from __future__ import annotations")
    w()
    w("import builtins")
    w("import sys")
    w("from collections.abc import Mapping")
    w("from dataclasses import dataclass, field")
    w("from datetime import datetime")
    w("from struct import Struct")
    w("from struct import error as _struct_error")
    w("from typing import Any, ClassVar")
    w()
    w("from txpika._specbase import Dialect, Method, Properties")
    w("from txpika._specbase import bad_flags as _bad_flags")
    w("from txpika._specbase import check_int as _check_int")
    w("from txpika._wire import decode_longstr as _dec_longstr")
    w("from txpika._wire import decode_table as _dec_table")
    w("from txpika._wire import decode_timestamp as _dec_timestamp")
    w("from txpika._wire import encode_longstr as _enc_longstr")
    w("from txpika._wire import encode_shortstr as _enc_shortstr")
    w("from txpika._wire import encode_table as _enc_table")
    w("from txpika._wire import encode_timestamp as _enc_timestamp")
    w()
    w(f"PROTOCOL_HEADER = {HEADERS[dialect]!r}")
    w(f"VERSION = {dialect!r}")
    for const in spec["constants"]:
        w(f"{const['name'].replace('-', '_')} = {const['value']}")
    w()
    for fmt, sname in sorted(structs.items(), key=lambda kv: int(kv[1][2:])):
        w(f"{sname} = Struct({fmt!r})")
    w.lines.extend(body.lines)
    w()
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
    body()
    body()
    body("@dataclass(frozen=True, slots=True)")
    body(f"class {pname}(Properties):")
    body(f'"""Content properties of the ``{cls["name"]}`` class; ``None`` means absent."""', 1)
    body()
    for name, kind in pfields:
        annotation = PYTYPES[kind][0]
        if "None" not in annotation:
            annotation += " | None"
        body(f"{name}: {annotation} = None", 1)
    body()
    body(f"CLASS_ID: ClassVar[int] = {cls['id']}", 1)
    body()
    body("def encode(self) -> bytes:", 1)
    body("flags = 0", 2)
    body("parts: list[bytes] = [b'']", 2)
    for i, (name, kind) in enumerate(pfields):
        bit = 1 << (15 - i)
        body(f"{name} = self.{name}", 2)
        body(f"if {name} is not None:", 2)
        body(f"flags |= {bit:#06x}", 3)
        if kind == "bit":
            continue  # a bit property is carried by its flag alone
        if kind in STRUCT:
            fmt = ">" + STRUCT[kind]
            sname = structs.setdefault(fmt, f"_S{len(structs)}")
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
    sflags = structs.setdefault(">H", f"_S{len(structs)}")
    body(f"parts[0] = {sflags}.pack(flags)", 2)
    body("return b''.join(parts)", 2)
    body()
    body("@classmethod", 1)
    body(f"def decode(cls, data: bytes, offset: int) -> tuple[{pname}, int]:", 1)
    body(f"(flags,) = {sflags}.unpack_from(data, offset)", 2)
    body("offset += 2", 2)
    body(f"if flags & {(1 << (16 - len(pfields))) - 1:#06x}:", 2)
    body("_bad_flags(flags)", 3)
    for name, _ in pfields:
        body(f"{name} = None", 2)
    for i, (name, kind) in enumerate(pfields):
        bit = 1 << (15 - i)
        if kind == "bit":
            body(f"if flags & {bit:#06x}:", 2)
            body(f"{name} = True", 3)
            continue
        body(f"if flags & {bit:#06x}:", 2)
        if kind in STRUCT:
            fmt = ">" + STRUCT[kind]
            sname = structs.setdefault(fmt, f"_S{len(structs)}")
            body(f"({name},) = {sname}.unpack_from(data, offset)", 3)
            body(f"offset += {sname}.size", 3)
        else:
            emit_decode_group(body, kind, [name], dict(pfields), structs, 3)
    args = ", ".join(name for name, _ in pfields)
    body(f"return cls({args}), offset", 2)


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
