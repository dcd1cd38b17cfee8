"""`txpika.parameters`: URL parsing, defaults, validation, and that the password never leaks.

Also `txpika.connect` with a target it cannot use: a failed Deferred, never an exception.
"""

from __future__ import annotations

import dataclasses

import pytest
from twisted.internet.testing import MemoryReactorClock
from twistedsim import failure

import txpika
from txpika.auth import AMQPlainCredentials, ExternalCredentials, PlainCredentials
from txpika.errors import UsageError
from txpika.parameters import ConnectionParameters, InvalidParameter, parse_url

PASSWORD = "s3cr3t!"
USER_URL = f"amqp://alice:{PASSWORD}@broker.example"


def _invalid(url: str, *parts: str, **overrides: object) -> InvalidParameter:
    """parse_url(url) raises InvalidParameter naming each of ``parts``, never the password."""
    with pytest.raises(InvalidParameter) as info:
        parse_url(url, **overrides)
    error = info.value
    text = str(error)
    for part in parts:
        assert part in text, (part, text)
    for rendering in (text, repr(error), repr(error.args)):
        assert PASSWORD not in rendering
        assert "s3cr3t" not in rendering
    assert isinstance(error, UsageError)
    return error


# -- defaults -----------------------------------------------------------------------------------

def test_defaults() -> None:
    p = ConnectionParameters()
    assert (p.host, p.port, p.effective_port, p.virtual_host) == ("localhost", None, 5672, "/")
    assert (p.username, p.password, p.auth_mechanism) == ("guest", "guest", "PLAIN")
    assert (p.heartbeat, p.frame_max, p.channel_max) == (60, 131072, 2047)
    assert (p.connection_timeout, p.locale, p.connection_name) == (10.0, "en_US", None)
    assert (p.tls, p.cafile, p.certfile, p.keyfile, p.server_hostname, p.verify) == (
        False, None, None, None, None, True)
    assert (p.protocol, p.flow_policy, p.endpoint, p.client_properties) == (
        "0-9-1", "wait", None, None)


def test_minimal_url_gives_the_defaults() -> None:
    assert parse_url("amqp://localhost") == ConnectionParameters()
    assert parse_url("amqp://localhost/") == ConnectionParameters()
    assert parse_url("amqp://") == ConnectionParameters()


@pytest.mark.parametrize(("url", "vhost"), [
    ("amqp://h", "/"),
    ("amqp://h/", "/"),
    ("amqp://h/%2F", "/"),
    ("amqp://h/%2f", "/"),
    ("amqp://h/prod", "prod"),
    ("amqp://h/a%2Fb", "a/b"),
    ("amqp://h/my%20vhost", "my vhost"),
    ("amqp://h/%25", "%"),
    ("amqp://h/caf%C3%A9", "caf\u00e9"),
])
def test_virtual_host_is_percent_decoded(url: str, vhost: str) -> None:
    assert parse_url(url).virtual_host == vhost


def test_full_url() -> None:
    p = parse_url(f"amqp://alice:{PASSWORD}@broker.example:5673/prod")
    assert (p.host, p.port, p.effective_port) == ("broker.example", 5673, 5673)
    assert (p.username, p.password, p.virtual_host, p.tls) == ("alice", PASSWORD, "prod", False)
    credentials = p.credentials
    assert isinstance(credentials, PlainCredentials)
    assert credentials.response() == b"\0alice\0" + PASSWORD.encode()


def test_user_and_password_are_percent_decoded() -> None:
    p = parse_url("amqp://al%40ice%3A:s3cr3t%21%2F%3A%40%23@h/")
    assert p.username == "al@ice:"
    assert p.password == "s3cr3t!/:@#"


def test_password_with_a_colon() -> None:
    p = parse_url(f"amqp://alice:{PASSWORD}:x@h:5673/")
    assert (p.username, p.password, p.host, p.port) == ("alice", PASSWORD + ":x", "h", 5673)


def test_user_without_password() -> None:
    p = parse_url("amqp://alice@h/")
    assert (p.username, p.password) == ("alice", "guest")


def test_amqps_means_tls_and_port_5671() -> None:
    p = parse_url("amqps://h/")
    assert p.tls is True and p.port is None and p.effective_port == 5671
    p = parse_url("amqps://h:6000/")
    assert p.tls is True and p.effective_port == 6000
    assert parse_url("AMQPS://h/").tls is True
    assert parse_url("amqp://h/").effective_port == 5672


@pytest.mark.parametrize(("url", "host", "port"), [
    ("amqp://[::1]/", "::1", None),
    ("amqp://[::1]:5673/", "::1", 5673),
    (f"amqp://alice:{PASSWORD}@[fe80::1]:5674/v", "fe80::1", 5674),
    ("amqps://[2001:db8::2]", "2001:db8::2", None),
])
def test_ipv6_host(url: str, host: str, port: int | None) -> None:
    p = parse_url(url)
    assert (p.host, p.port) == (host, port)


@pytest.mark.parametrize(("option", "text", "field", "value"), [
    ("heartbeat", "0", "heartbeat", 0),
    ("heartbeat", "30", "heartbeat", 30),
    ("heartbeat", "65535", "heartbeat", 65535),
    ("frame_max", "4096", "frame_max", 4096),
    ("frame_max", "4294967295", "frame_max", 2**32 - 1),
    ("channel_max", "0", "channel_max", 0),
    ("channel_max", "100", "channel_max", 100),
    ("connection_timeout", "2.5", "connection_timeout", 2.5),
    ("connection_timeout", "3", "connection_timeout", 3.0),
    ("locale", "de_DE", "locale", "de_DE"),
    ("auth_mechanism", "AMQPLAIN", "auth_mechanism", "AMQPLAIN"),
    ("auth_mechanism", "external", "auth_mechanism", "EXTERNAL"),
    ("auth_mechanism", "plain", "auth_mechanism", "PLAIN"),
    ("connection_name", "billing%20worker", "connection_name", "billing worker"),
    ("protocol", "0-8", "protocol", "0-8"),
    ("protocol", "0-9-1", "protocol", "0-9-1"),
    ("flow_policy", "raise", "flow_policy", "raise"),
    ("flow_policy", "wait", "flow_policy", "wait"),
    ("cafile", "/etc/ca.pem", "cafile", "/etc/ca.pem"),
    ("certfile", "/etc/c.pem", "certfile", "/etc/c.pem"),
    ("keyfile", "/etc/k.pem", "keyfile", "/etc/k.pem"),
    ("server_hostname", "rabbit.internal", "server_hostname", "rabbit.internal"),
    ("verify", "false", "verify", False),
    ("verify", "0", "verify", False),
    ("verify", "no", "verify", False),
    ("verify", "off", "verify", False),
    ("verify", "FALSE", "verify", False),
    ("verify", "true", "verify", True),
    ("verify", "1", "verify", True),
    ("verify", "yes", "verify", True),
    ("verify", "on", "verify", True),
])
def test_every_option(option: str, text: str, field: str, value: object) -> None:
    p = parse_url(f"amqps://h/?{option}={text}")
    assert getattr(p, field) == value
    assert type(getattr(p, field)) is type(value)
    # Nothing else changed.
    default = dataclasses.replace(parse_url("amqps://h/"), **{field: value})
    assert p == default


def test_several_options_and_credentials_classes() -> None:
    p = parse_url(f"amqp://alice:{PASSWORD}@h/?heartbeat=5&auth_mechanism=amqplain"
                  "&connection_timeout=1.5&flow_policy=raise")
    assert (p.heartbeat, p.connection_timeout, p.flow_policy) == (5, 1.5, "raise")
    assert isinstance(p.credentials, AMQPlainCredentials)
    assert isinstance(parse_url("amqp://h/?auth_mechanism=EXTERNAL").credentials,
                      ExternalCredentials)


def test_overrides_replace_the_url() -> None:
    p = parse_url(f"amqp://alice:{PASSWORD}@h:5673/v?heartbeat=5", heartbeat=7, port=6000,
                  virtual_host="w", client_properties={"x": 1})
    assert (p.heartbeat, p.port, p.virtual_host, p.client_properties) == (7, 6000, "w", {"x": 1})
    assert (p.username, p.password) == ("alice", PASSWORD)


# -- malformed URLs ----------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "parts"), [
    (f"http://alice:{PASSWORD}@h/", ("scheme", "'http'")),
    (f"amqpx://alice:{PASSWORD}@h/", ("scheme", "'amqpx'")),
    (f"alice:{PASSWORD}@h/", ("amqp://",)),
    ("amqp:/h", ("amqp://",)),
    ("", ("amqp://",)),
])
def test_bad_scheme(url: str, parts: tuple[str, ...]) -> None:
    _invalid(url, *parts)


def test_not_a_string() -> None:
    _invalid(b"amqp://h/", "str")  # type: ignore[arg-type]


@pytest.mark.parametrize("port", ["abc", "0", "65536", "99999", "-1", "", "56x", "1_0", "5672:99",
                                  "\u0663"])
def test_bad_port(port: str) -> None:
    _invalid(f"amqp://alice:{PASSWORD}@h:{port}/", "port")


@pytest.mark.parametrize("port", ["abc", "0", "65536"])
def test_bad_port_ipv6(port: str) -> None:
    _invalid(f"amqp://alice:{PASSWORD}@[::1]:{port}/", "port")


def test_malformed_ipv6_host() -> None:
    _invalid(f"amqp://alice:{PASSWORD}@[::1/", "host")


@pytest.mark.parametrize("password", ["s3cr3t!/x", "s3cr3t!?x"])
def test_unescaped_password_is_never_echoed(password: str) -> None:
    # A '/' or '?' in the password cuts the netloc there: the password then looks like the
    # port. The error must not quote it.
    _invalid(f"amqp://alice:{password}@h/", "port")


def test_unknown_option() -> None:
    error = _invalid(f"{USER_URL}/?hearbeat=10", "'hearbeat'")
    assert "heartbeat" in str(error)  # the known options are listed


@pytest.mark.parametrize(("option", "text"), [
    ("heartbeat", "ten"),
    ("heartbeat", "1.5"),
    ("heartbeat", ""),
    ("frame_max", "big"),
    ("channel_max", "0x10"),
])
def test_bad_int(option: str, text: str) -> None:
    _invalid(f"{USER_URL}/?{option}={text}", option, "integer")


@pytest.mark.parametrize(("option", "text", "bounds"), [
    ("heartbeat", "-1", "0..65535"),
    ("heartbeat", "65536", "0..65535"),
    ("frame_max", "4095", "4096.."),
    ("frame_max", "0", "4096.."),
    ("frame_max", "4294967296", "4096.."),
    ("channel_max", "65536", "0..65535"),
    ("channel_max", "-1", "0..65535"),
])
def test_out_of_range(option: str, text: str, bounds: str) -> None:
    _invalid(f"{USER_URL}/?{option}={text}", option, text, bounds)


@pytest.mark.parametrize("text", ["0", "-1", "abc", "nan", ""])
def test_bad_connection_timeout(text: str) -> None:
    _invalid(f"{USER_URL}/?connection_timeout={text}", "connection_timeout")


@pytest.mark.parametrize("text", ["maybe", "", "2", "truthy"])
def test_bad_bool(text: str) -> None:
    _invalid(f"{USER_URL}/?verify={text}", "verify", "true or false")


@pytest.mark.parametrize(("option", "text"), [
    ("auth_mechanism", "CRAM-MD5"),
    ("protocol", "0-10"),
    ("protocol", "1.0"),
    ("flow_policy", "drop"),
])
def test_bad_choice(option: str, text: str) -> None:
    _invalid(f"{USER_URL}/?{option}={text}", option, repr(text))


@pytest.mark.parametrize("path", ["/a/b", "/prod/", "//"])
def test_path_with_two_segments(path: str) -> None:
    _invalid(f"{USER_URL}{path}", "path", "%2F")


def test_fragment() -> None:
    _invalid(f"{USER_URL}/#x", "fragment")


def test_bad_override() -> None:
    _invalid(USER_URL, "bogus", bogus=1)
    _invalid(USER_URL, "heartbeat", heartbeat=-5)
    _invalid(USER_URL, "port", port=70000)
    _invalid(USER_URL, "flow_policy", flow_policy="later")


# -- ConnectionParameters ----------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value"), [
    ("auth_mechanism", "CRAM-MD5"),
    ("protocol", "0-10"),
    ("flow_policy", "drop"),
    ("port", 0),
    ("port", 65536),
    ("heartbeat", -1),
    ("heartbeat", 65536),
    ("frame_max", 100),
    ("channel_max", 65536),
    ("connection_timeout", 0),
    ("connection_timeout", -1.0),
    ("host", ""),
])
def test_constructor_validates(field: str, value: object) -> None:
    with pytest.raises(InvalidParameter) as info:
        ConnectionParameters(password=PASSWORD, **{field: value})  # type: ignore[arg-type]
    assert field.split("_")[0] in str(info.value)
    assert PASSWORD not in str(info.value)


def test_frame_max_zero_means_no_limit() -> None:
    assert ConnectionParameters(frame_max=0).frame_max == 0


def test_repr_and_describe_hide_the_password() -> None:
    p = parse_url(f"amqps://alice:{PASSWORD}@h:6000/prod?connection_name=w")
    for text in (repr(p), str(p), p.describe(), repr(p.credentials)):
        assert PASSWORD not in text and "s3cr3t" not in text
    assert "alice" in repr(p)
    assert p.describe() == "amqps://alice@h:6000/prod"
    assert parse_url("amqp://h/%2F").describe() == "amqp://guest@h:5672/%2F"
    assert parse_url("amqp://h/a%25b").describe() == "amqp://guest@h:5672/a%25b"
    endpoint = ConnectionParameters(endpoint="tcp:h:5672", password=PASSWORD)
    assert endpoint.describe() == "tcp:h:5672"
    assert PASSWORD not in repr(endpoint)


def test_protocol_repr_hides_the_password() -> None:
    from txpika.protocol import AMQPProtocol

    proto = AMQPProtocol(parse_url(f"amqp://alice:{PASSWORD}@h/"), clock=object())  # type: ignore[arg-type]
    assert PASSWORD not in repr(proto) and "alice@h:5672" in repr(proto)


def test_replace() -> None:
    p = ConnectionParameters(password=PASSWORD)
    q = p.replace(heartbeat=5, host="other")
    assert (q.heartbeat, q.host, q.password) == (5, "other", PASSWORD)
    assert (p.heartbeat, p.host) == (60, "localhost")  # immutable
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.heartbeat = 1  # type: ignore[misc]


@pytest.mark.parametrize("name", ["bogus", "hearbeat", "credentials", "effective_port"])
def test_replace_unknown_name(name: str) -> None:
    p = ConnectionParameters(password=PASSWORD)
    with pytest.raises(InvalidParameter) as info:
        p.replace(**{name: 1})
    assert repr(name) in str(info.value)
    assert PASSWORD not in str(info.value)


def test_replace_validates() -> None:
    with pytest.raises(InvalidParameter, match="heartbeat"):
        ConnectionParameters().replace(heartbeat=-1)


# -- connect() with a target it cannot use -----------------------------------------------------

@pytest.mark.parametrize(("target", "overrides", "part"), [
    (f"amqp://alice:{PASSWORD}@h:bad/", {}, "port"),
    (f"amqp://alice:{PASSWORD}@h/?bogus=1", {}, "bogus"),
    (f"amqp://alice:{PASSWORD}@h/a/b", {}, "path"),
    (f"amqp://alice:{PASSWORD}@h/", {"bogus": 1}, "bogus"),
    (ConnectionParameters(password=PASSWORD), {"bogus": 1}, "bogus"),
    (ConnectionParameters(password=PASSWORD), {"heartbeat": -1}, "heartbeat"),
    ("localhost", {}, "amqp://"),
    (42, {}, "int"),
    ("nonsense:foo:bar", {}, "endpoint"),
])
def test_connect_with_a_bad_target_fails_the_deferred(target: object, overrides: dict,
                                                      part: str) -> None:
    reactor = MemoryReactorClock()
    d = txpika.connect(reactor, target, **overrides)  # type: ignore[arg-type]
    error = failure(d, InvalidParameter)
    assert part in str(error)
    assert PASSWORD not in str(error)
    assert reactor.tcpClients == [] and reactor.getDelayedCalls() == []
