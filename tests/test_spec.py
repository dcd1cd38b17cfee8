"""The generated spec modules (txpika.spec, txpika.spec_0_8) against the JSON they come from.

The JSON files read here are the repository's own spec/*.json; the expectations are derived
from them independently of tools/gen_spec.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import keyword
import subprocess
import sys
import types
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txpika import spec, spec_0_8
from txpika._specbase import Method
from txpika._wire import EncodeError
from txpika.errors import UsageError
from txpika.frames import NEED_DATA, FrameDecoder, encode_header, encode_method

ROOT = Path(__file__).resolve().parent.parent
MODULES = {"0-9-1": spec, "0-8": spec_0_8}
JSON_FILES = {"0-9-1": "spec/amqp-rabbitmq-0.9.1.json", "0-8": "spec/amqp-rabbitmq-0.8.json"}
GENERATED = {"0-9-1": "txpika/spec.py", "0-8": "txpika/spec_0_8.py"}
DIALECTS = list(MODULES)


def load_json(dialect: str) -> dict[str, Any]:
    return json.loads((ROOT / JSON_FILES[dialect]).read_text())


def load_gen_spec() -> types.ModuleType:
    path = ROOT / "tools" / "gen_spec.py"
    module_spec = importlib.util.spec_from_file_location("txpika_tools_gen_spec", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.modules.pop(module_spec.name, None)
    return module


def field_name(name: str) -> str:
    ident = name.replace("-", "_")
    return ident + "_" if keyword.iskeyword(ident) else ident


def resolver(data: dict[str, Any]) -> Any:
    domains = dict(data["domains"])

    def kind(arg: dict[str, Any]) -> str:
        k = arg.get("type") or arg["domain"]
        seen = set()
        while k in domains and domains[k] != k:
            assert k not in seen
            seen.add(k)
            k = domains[k]
        return k

    return kind


def json_methods(dialect: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    data = load_json(dialect)
    return [(cls, meth) for cls in data["classes"] for meth in cls["methods"]]


def method_class(dialect: str, class_id: int, method_id: int) -> type[Method]:
    return MODULES[dialect].METHODS[class_id << 16 | method_id]


# ---------------------------------------------------------------------------------------------
# The generator


def test_gen_spec_check_passes() -> None:
    result = subprocess.run(
        [sys.executable, "tools/gen_spec.py", "--check"], cwd=ROOT, capture_output=True,
        text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("dialect", DIALECTS)
def test_render_matches_committed_module(dialect: str) -> None:
    gen = load_gen_spec()
    rendered = gen.render(dialect)
    committed = (ROOT / GENERATED[dialect]).read_text()
    assert rendered == committed


def test_gen_spec_check_fails_on_a_stale_module(tmp_path: Path) -> None:
    # --check must notice a difference, or test_gen_spec_check_passes proves nothing.
    gen = load_gen_spec()
    gen.ROOT = tmp_path
    (tmp_path / "spec").mkdir()
    (tmp_path / "txpika").mkdir()
    for dialect, source in JSON_FILES.items():
        (tmp_path / source).write_text((ROOT / source).read_text())
        (tmp_path / GENERATED[dialect]).write_text((ROOT / GENERATED[dialect]).read_text())
    assert gen.main(["--check"]) == 0
    stale = tmp_path / GENERATED["0-8"]
    stale.write_text(stale.read_text() + "# edited by hand\n")
    assert gen.main(["--check"]) == 1


def _generate_synthetic(tmp_path: Path, arguments: list[dict[str, str]]) -> types.ModuleType:
    """Run the generator on a one-method spec and import the result."""
    gen = load_gen_spec()
    source = {
        "name": "synthetic", "copyright": ["synthetic spec for tests\n"],
        "domains": [["bit", "bit"], ["short", "short"], ["octet", "octet"]],
        "constants": [],
        "classes": [{"id": 200, "name": "bits", "methods": [
            {"id": 1, "name": "many", "arguments": arguments},
        ]}],
    }
    (tmp_path / "synthetic.json").write_text(json.dumps(source))
    gen.ROOT = tmp_path
    gen.TARGETS = {"0-9-1": ("synthetic.json", "synthetic.py")}
    text = gen.generate("0-9-1")
    name = "txpika_synthetic_spec"
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        exec(compile(text, f"<{name}>", "exec"), module.__dict__)
    finally:
        sys.modules.pop(name, None)
    return module


def test_generator_packs_more_than_eight_consecutive_bits(tmp_path: Path) -> None:
    # No method of either dialect has more than 5 consecutive bits, so the generator's
    # packing of a longer run is checked on a synthetic spec: bits fill an octet from the
    # low bit, the 9th starts a new octet, and any other field ends the run.
    args = [{"name": f"b{i}", "type": "bit"} for i in range(10)]
    args += [{"name": "s", "type": "short"}, {"name": "last", "type": "bit"},
             {"name": "o", "type": "octet"}]
    module = _generate_synthetic(tmp_path, args)
    many = module.Bits.Many
    ids = b"\x00\xc8\x00\x01"
    assert many().encode() == ids + b"\x00\x00" + b"\x00\x00" + b"\x00" + b"\x00"
    for i in range(10):
        method = many(**{f"b{i}": True})
        octets = (1 << i).to_bytes(2, "little")  # bit i: octet i // 8, bit i % 8
        assert method.encode() == ids + octets + b"\x00\x00\x00\x00", i
        assert many.decode(method.encode(), 4) == (method, 10)
    method = many(b0=True, b7=True, b8=True, b9=True, s=0x1234, last=True, o=7)
    assert method.encode() == ids + b"\x81\x03\x12\x34\x01\x07"
    assert many.decode(method.encode(), 4) == (method, 10)
    everything = many(**{f"b{i}": True for i in range(10)}, last=True)
    assert everything.encode() == ids + b"\xff\x03\x00\x00\x01\x00"


def test_generator_packs_sixteen_and_seventeen_bits(tmp_path: Path) -> None:
    args = [{"name": f"b{i}", "type": "bit"} for i in range(17)]
    module = _generate_synthetic(tmp_path, args)
    many = module.Bits.Many
    assert many(b15=True).encode()[4:] == b"\x00\x80\x00"
    assert many(b16=True).encode()[4:] == b"\x00\x00\x01"
    everything = many(**{f"b{i}": i % 2 == 0 for i in range(17)})
    assert everything.encode()[4:] == b"\x55\x55\x01"
    assert many.decode(everything.encode(), 4) == (everything, 7)


# ---------------------------------------------------------------------------------------------
# The methods against the JSON


def test_0_9_1_has_66_methods() -> None:
    assert len(spec.METHODS) == 66
    assert len(json_methods("0-9-1")) == 66


@pytest.mark.parametrize("dialect", DIALECTS)
def test_method_ids_equal_the_json(dialect: str) -> None:
    expected = {(cls["id"], meth["id"]) for cls, meth in json_methods(dialect)}
    module = MODULES[dialect]
    got = {(m.CLASS_ID, m.METHOD_ID) for m in module.METHODS.values()}
    assert got == expected
    assert set(module.METHODS) == {c << 16 | m for c, m in expected}
    assert len(module.BY_NAME) == len(expected)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_method_attributes_equal_the_json(dialect: str) -> None:
    kind = resolver(load_json(dialect))
    module = MODULES[dialect]
    for cls, meth in json_methods(dialect):
        m = method_class(dialect, cls["id"], meth["id"])
        name = f"{cls['name']}.{meth['name']}"
        assert cls["id"] == m.CLASS_ID, name
        assert meth["id"] == m.METHOD_ID, name
        assert cls["id"] << 16 | meth["id"] == m.INDEX, name
        assert name == m.NAME
        assert module.BY_NAME[name] is m
        assert m.SYNCHRONOUS is bool(meth.get("synchronous", False)), name
        assert m.CONTENT is bool(meth.get("content", False)), name
        fields = dataclasses.fields(m)
        assert [f.name for f in fields] == [field_name(a["name"]) for a in meth["arguments"]]
        for arg in meth["arguments"]:
            kind(arg)  # every argument resolves to a wire type
        # Frozen: a decoded method cannot be changed by the code it is handed to.
        instance = m()
        if fields:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(instance, fields[0].name, None)


def _json_default(kind: str, value: Any) -> Any:
    if kind == "bit":
        return bool(value)
    if kind in ("octet", "short", "long", "longlong"):
        return int(value)
    if kind == "shortstr":
        return str(value)
    if kind == "longstr":
        return str(value).encode()
    raise AssertionError(kind)


ZERO = {"octet": 0, "short": 0, "long": 0, "longlong": 0, "bit": False, "shortstr": "",
        "longstr": b"", "table": None, "timestamp": None}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_defaults_equal_the_json_default_values(dialect: str) -> None:
    kind = resolver(load_json(dialect))
    checked = 0
    for cls, meth in json_methods(dialect):
        m = method_class(dialect, cls["id"], meth["id"])
        instance = m()
        for arg in meth["arguments"]:
            k = kind(arg)
            value = getattr(instance, field_name(arg["name"]))
            if "default-value" not in arg:
                assert value == ZERO[k], (m.NAME, arg["name"])
                continue
            checked += 1
            if k == "table":
                # An empty table default is None (not a shared mutable dict); it encodes as
                # the same four zero bytes.
                assert arg["default-value"] == {}
                assert value is None
            else:
                assert value == _json_default(k, arg["default-value"]), (m.NAME, arg["name"])
                assert type(value) is type(_json_default(k, arg["default-value"]))
    assert checked > 50


def test_a_few_defaults_by_hand() -> None:
    assert spec.Connection.Start().version_minor == 9
    assert spec_0_8.Connection.Start().version_minor == 8
    assert spec.Connection.Start().mechanisms == b"PLAIN"
    assert spec.Exchange.Declare().type == "direct"
    assert spec.Basic.Reject().requeue is True
    assert spec.Basic.Nack().requeue is True
    assert spec.Access.Request().realm == "/data"
    assert spec.Queue.Declare().ticket == 0
    assert spec_0_8.Queue.Declare().ticket == 1
    assert spec_0_8.File.Return().reply_code == 200
    assert spec.Connection.Open().virtual_host == "/"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_replies_of_synchronous_methods(dialect: str) -> None:
    module = MODULES[dialect]
    for m in module.METHODS.values():
        if not m.SYNCHRONOUS:
            assert m.REPLIES == (), m.NAME
        elif m.NAME == "basic.get":
            assert (module.Basic.GetOk, module.Basic.GetEmpty) == m.REPLIES
        else:
            assert (module.BY_NAME[m.NAME + "-ok"],) == m.REPLIES, m.NAME
    assert (module.Queue.DeclareOk,) == module.Queue.Declare.REPLIES
    assert (module.Channel.CloseOk,) == module.Channel.Close.REPLIES


def test_exchange_unbind_ok_is_method_51() -> None:
    # RabbitMQ's numbering, not 41.
    assert spec.Exchange.UnbindOk.METHOD_ID == 51
    assert (spec.Exchange.UnbindOk,) == spec.Exchange.Unbind.REPLIES


# ---------------------------------------------------------------------------------------------
# Properties

SAMPLE_PROPERTY = {
    "shortstr": "v",
    "octet": 3,
    "table": {"k": 1},
    "timestamp": datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC),
}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_property_classes_equal_the_json(dialect: str) -> None:
    data = load_json(dialect)
    kind = resolver(data)
    module = MODULES[dialect]
    with_props = [c for c in data["classes"] if c.get("properties")]
    assert set(module.PROPERTIES) == {c["id"] for c in with_props}
    for cls in with_props:
        props = module.PROPERTIES[cls["id"]]
        assert cls["id"] == props.CLASS_ID
        names = [field_name(p["name"]) for p in cls["properties"]]
        assert [f.name for f in dataclasses.fields(props)] == names
        assert props() == props(**dict.fromkeys(names))
        for index, prop in enumerate(cls["properties"]):
            value = SAMPLE_PROPERTY[kind(prop)]
            encoded = props(**{names[index]: value}).encode()
            assert int.from_bytes(encoded[:2], "big") == 1 << (15 - index), prop["name"]
            assert props.decode(encoded, 0) == (props(**{names[index]: value}), len(encoded))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_basic_properties_has_14_fields_in_spec_order(dialect: str) -> None:
    props = MODULES[dialect].BasicProperties
    names = [f.name for f in dataclasses.fields(props)]
    assert names == [
        "content_type", "content_encoding", "headers", "delivery_mode", "priority",
        "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
        "user_id", "app_id", "cluster_id",
    ]
    flags = 0
    for index, name in enumerate(names):
        kind = {"headers": "table", "delivery_mode": "octet", "priority": "octet",
                "timestamp": "timestamp"}.get(name, "shortstr")
        flag = int.from_bytes(props(**{name: SAMPLE_PROPERTY[kind]}).encode()[:2], "big")
        assert flag == 1 << (15 - index), name
        flags |= flag
    assert flags == 0xFFFC
    assert props().encode() == b"\x00\x00"


# ---------------------------------------------------------------------------------------------
# Round trips of every method, with non-default values for every field

TABLE = {
    "nested": {"list": [1, "two", {"three": True}, [], None], "\u00e9\u00e8": 2**40},
    "float": 1.25,
    "none": None,
    "bytes": b"\x00\xff",
    "dec": Decimal("-1.5"),
    "ts": datetime(2020, 2, 29, 12, 0, 1, tzinfo=UTC),
    "neg": -(2**63),
    "false": False,
}


def field_values(dialect: str, m: type[Method], variant: int) -> dict[str, Any]:
    """Values for every field of ``m``: variant 0 alternates bits starting with True,
    variant 1 with False; ints are at their maximum, strings hold non-ASCII text."""
    kind = resolver(load_json(dialect))
    meth = next(meth for cls, meth in json_methods(dialect)
                if cls["id"] == m.CLASS_ID and meth["id"] == m.METHOD_ID)
    values: dict[str, Any] = {}
    bit = variant
    for arg in meth["arguments"]:
        k = kind(arg)
        name = field_name(arg["name"])
        if k == "bit":
            values[name] = bit % 2 == 0
            bit += 1
        elif k == "octet":
            values[name] = 0xFF
        elif k == "short":
            values[name] = 0xFFFF
        elif k == "long":
            values[name] = 0xFFFF_FFFF
        elif k == "longlong":
            values[name] = 0xFFFF_FFFF_FFFF_FFFF
        elif k == "shortstr":
            values[name] = f"\u00fcn\u00efc\u00f8d\u00e9 {name} \u20ac\U0001f407"
        elif k == "longstr":
            values[name] = b"\x00\xff\xce" + name.encode() + "\u2603".encode()
        elif k == "table":
            values[name] = TABLE
        else:
            raise AssertionError(k)
    return values


ALL_METHODS = [(d, m) for d in DIALECTS for m in MODULES[d].METHODS.values()]


@pytest.mark.parametrize(("dialect", "m"), ALL_METHODS,
                         ids=[f"{d}:{m.NAME}" for d, m in ALL_METHODS])
@pytest.mark.parametrize("variant", [0, 1])
def test_every_method_round_trips(dialect: str, m: type[Method], variant: int) -> None:
    values = field_values(dialect, m, variant)
    method = m(**values)
    for name, value in values.items():
        if not isinstance(value, bool):
            assert value != getattr(m(), name), (name, "value equals the default")
    payload = method.encode()
    assert payload[:4] == (m.CLASS_ID << 16 | m.METHOD_ID).to_bytes(4, "big")
    decoded, offset = m.decode(payload, 4)
    assert offset == len(payload)
    assert decoded == method
    assert type(decoded) is m
    # And through whole frames, on the highest channel.
    dec = FrameDecoder(MODULES[dialect].DIALECT, 0)
    dec.receive_data(encode_method(65535, method) * 2)
    for _ in range(2):
        frame = dec.next_frame()
        assert frame.channel == 65535
        assert frame.method == method
    assert dec.next_frame() is NEED_DATA


@pytest.mark.parametrize(("dialect", "m"), ALL_METHODS,
                         ids=[f"{d}:{m.NAME}" for d, m in ALL_METHODS])
def test_every_method_round_trips_with_minimum_values(dialect: str, m: type[Method]) -> None:
    values = {}
    for f in dataclasses.fields(m):
        default = f.default
        if isinstance(default, bool):
            values[f.name] = False
        elif isinstance(default, int):
            values[f.name] = 0
        elif isinstance(default, str):
            values[f.name] = ""
        elif isinstance(default, bytes):
            values[f.name] = b""
        else:
            values[f.name] = {}
    method = m(**values)
    assert m.decode(method.encode(), 4) == (method, len(method.encode()))


# ---------------------------------------------------------------------------------------------
# Property-based round trips of BasicProperties

shortstrs = st.text(st.characters(codec="utf-8"), max_size=40).filter(
    lambda s: len(s.encode()) <= 255)
keys = st.text(st.characters(codec="utf-8"), max_size=12)
timestamps = st.integers(0, 253402300799).map(
    lambda s: datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=s))
decimals = st.builds(lambda digits, scale: Decimal(digits).scaleb(-scale),
                     st.integers(-(2**31), 2**31 - 1), st.integers(0, 255))
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | decimals
    | st.text(st.characters(codec="utf-8"), max_size=30)
    | st.binary(max_size=30)
    | timestamps
)
field_values_strategy = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=20,
)
tables = st.dictionaries(keys, field_values_strategy, max_size=6)
octets = st.integers(0, 255)


def properties_strategy(props: type) -> st.SearchStrategy[Any]:
    kinds = {"headers": tables, "delivery_mode": octets, "priority": octets,
             "timestamp": timestamps}
    return st.builds(props, **{
        f.name: st.none() | kinds.get(f.name, shortstrs) for f in dataclasses.fields(props)
    })


# One test per dialect rather than @pytest.mark.parametrize: pytest-twisted wraps a
# hypothesis test in place, which breaks the second parametrized run.
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(data=st.data())
def test_basic_properties_round_trip_0_9_1(data: st.DataObject) -> None:
    check_basic_properties_round_trip(spec, data)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_basic_properties_round_trip_0_8(data: st.DataObject) -> None:
    check_basic_properties_round_trip(spec_0_8, data)


def check_basic_properties_round_trip(module: types.ModuleType, data: st.DataObject) -> None:
    props = data.draw(properties_strategy(module.BasicProperties))
    encoded = props.encode()
    flags = int.from_bytes(encoded[:2], "big")
    present = [f.name for f in dataclasses.fields(props) if getattr(props, f.name) is not None]
    assert bin(flags).count("1") == len(present)
    assert module.BasicProperties.decode(encoded, 0) == (props, len(encoded))
    body_size = data.draw(st.integers(0, 2**64 - 1))
    dec = FrameDecoder(module.DIALECT, 0)
    dec.receive_data(encode_header(3, body_size, props))
    frame = dec.next_frame()
    assert (frame.channel, frame.class_id, frame.body_size, frame.properties) == (
        3, 60, body_size, props)


@pytest.mark.parametrize("props_cls", [spec.BasicProperties, spec_0_8.BasicProperties,
                                       spec_0_8.FileProperties, spec_0_8.StreamProperties,
                                       spec_0_8.TunnelProperties])
def test_no_property_at_all_decodes_to_a_frozen_empty_instance(props_cls: Any) -> None:
    # The decoder may hand out one shared instance for "no property": safe only because
    # properties are frozen.
    first, offset = props_cls.decode(b"\x00\x00rest", 0)
    second, _ = props_cls.decode(b"\x00\x00", 0)
    assert (first, offset) == (props_cls(), 2) and second == props_cls()
    assert type(first) is props_cls
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.headers = {"changed": 1}
    assert second.headers is None

    class Mine(props_cls):  # type: ignore[misc, valid-type]
        __slots__ = ()

    mine, _ = Mine.decode(b"\x00\x00", 0)
    assert type(mine) is Mine and mine == Mine()


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_0_8_other_properties_round_trip(data: st.DataObject) -> None:
    for props_cls in (spec_0_8.FileProperties, spec_0_8.StreamProperties,
                      spec_0_8.TunnelProperties):
        kinds = {"headers": tables, "priority": octets, "durable": octets,
                 "broadcast": octets, "timestamp": timestamps}
        props = data.draw(st.builds(props_cls, **{
            f.name: st.none() | kinds.get(f.name, shortstrs)
            for f in dataclasses.fields(props_cls)}))
        encoded = props.encode()
        assert props_cls.decode(encoded, 0) == (props, len(encoded))


# ---------------------------------------------------------------------------------------------
# Secrets and encoding errors


@pytest.mark.parametrize("module", [spec, spec_0_8], ids=DIALECTS)
def test_secrets_are_not_in_repr(module: types.ModuleType) -> None:
    start_ok = module.Connection.StartOk(response=b"\x00u\x00secret")
    assert "secret" not in repr(start_ok)
    assert "secret" not in str(start_ok)
    assert start_ok.response == b"\x00u\x00secret"
    assert "secret" not in repr(module.Connection.SecureOk(response=b"secret"))
    assert "secret" in repr(module.Connection.StartOk(mechanism="secret"))  # others shown


def test_update_secret_is_not_in_repr() -> None:
    method = spec.Connection.UpdateSecret(new_secret=b"secret-token", reason="rotate")
    assert "secret-token" not in repr(method)
    assert "rotate" in repr(method)


@pytest.mark.parametrize(
    ("method", "field"),
    [
        (spec.Connection.Tune(channel_max=70000), "channel_max"),
        (spec.Connection.Tune(heartbeat=-1), "heartbeat"),
        (spec.Connection.Start(version_major=256), "version_major"),
        (spec.Connection.Start(version_minor=-1), "version_minor"),
        (spec.Basic.Qos(prefetch_size=2**32), "prefetch_size"),
        (spec.Basic.Qos(prefetch_count=65536), "prefetch_count"),
        (spec.Basic.Ack(delivery_tag=2**64), "delivery_tag"),
        (spec.Basic.Ack(delivery_tag=-1), "delivery_tag"),
        (spec.Channel.Close(reply_code=1 << 16), "reply_code"),
        (spec.Queue.Declare(ticket=-5), "ticket"),
        (spec_0_8.Test.Integer(integer_1=256), "integer_1"),
        (spec_0_8.Test.Integer(integer_4=-1), "integer_4"),
        (spec.Basic.Ack(delivery_tag="7"), "delivery_tag"),
    ],
    ids=lambda v: v if isinstance(v, str) else v.NAME,
)
def test_out_of_range_ints_raise_encode_error_naming_the_field(method: Method,
                                                               field: str) -> None:
    with pytest.raises(EncodeError) as info:
        method.encode()
    assert isinstance(info.value, UsageError)
    assert field in str(info.value)
    with pytest.raises(EncodeError):
        encode_method(1, method)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"priority": 256}, "priority"), ({"delivery_mode": -1}, "delivery_mode")],
)
def test_out_of_range_property_raises_encode_error(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(EncodeError) as info:
        spec.BasicProperties(**kwargs).encode()
    assert field in str(info.value)
    with pytest.raises(EncodeError):
        encode_header(1, 0, spec.BasicProperties(**kwargs))


def test_shortstr_over_255_bytes_raises_encode_error() -> None:
    assert len(spec.Queue.Declare(queue="a" * 255).encode()) == 4 + 2 + 256 + 1 + 4
    for value in ("a" * 256, "\u00e9" * 128, "\U0001f407" * 64):
        with pytest.raises(EncodeError):
            spec.Queue.Declare(queue=value).encode()
        with pytest.raises(EncodeError):
            spec.BasicProperties(content_type=value).encode()
        with pytest.raises(EncodeError):
            encode_method(1, spec.Basic.Publish(routing_key=value))
    with pytest.raises(EncodeError):
        spec.Queue.Declare(arguments={"k" * 256: 1}).encode()
