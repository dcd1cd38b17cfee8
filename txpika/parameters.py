"""Connection parameters and ``amqp://`` / ``amqps://`` URL parsing (no I/O, no Twisted).

Both drivers (the Twisted protocol and the blocking adapter) take a `ConnectionParameters`,
built directly or with `parse_url`. A malformed URL or option raises `InvalidParameter`
naming the bad part; the password never appears in an error, a repr or a log line.

URL form: ``amqp[s]://[user[:password]@]host[:port][/vhost][?option=value&...]``. The vhost
is percent-decoded (``%2F`` is ``/``); an empty path means ``/``. Options: ``heartbeat``,
``frame_max``, ``channel_max``, ``max_message_size``, ``connection_timeout``, ``locale``,
``auth_mechanism`` (PLAIN, AMQPLAIN, EXTERNAL), ``connection_name``, ``protocol``
(``0-9-1`` or ``0-8``), ``flow_policy`` (``wait`` or ``raise``), and for TLS ``cafile``,
``certfile``, ``keyfile``, ``server_hostname`` and ``verify`` (true/false).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from txpika._content import DEFAULT_MAX_MESSAGE_SIZE
from txpika.auth import AMQPlainCredentials, Credentials, ExternalCredentials, PlainCredentials
from txpika.errors import UsageError

__all__ = ["ConnectionParameters", "InvalidParameter", "parameters_for", "parse_url"]

_MECHANISMS = {"PLAIN", "AMQPLAIN", "EXTERNAL"}
_PROTOCOLS = {"0-9-1", "0-8"}
_POLICIES = {"wait", "raise"}


class InvalidParameter(UsageError):
    """A connection URL or parameter is malformed; the message names the bad part."""


@dataclass(frozen=True, kw_only=True)
class ConnectionParameters:
    """Everything needed to open a connection. Immutable; use `replace` to vary it.

    ``heartbeat`` is in seconds (``None``: take the broker's proposal; 0: off);
    ``connection_timeout`` bounds the TCP connect, the TLS handshake and the AMQP handshake
    together. ``tls`` turns on TLS with certificate and host name verification unless
    ``verify`` is False. ``protocol`` chooses the dialect: ``"0-9-1"`` or ``"0-8"``.
    ``flow_policy`` says what a publish does while the broker blocks publishers: ``"wait"``
    until it unblocks, or ``"raise"`` `txpika.errors.FlowControlError` at once.
    ``max_message_size`` is the largest message body accepted, in octets (default
    128 MiB; 0: no limit): a bigger delivery, ``basic.get`` reply or return fails with
    `txpika.errors.MessageTooLarge` before its body is buffered (its channel is closed,
    so the broker requeues it; the connection goes on).
    """

    #: The broker's host name or address.
    host: str = "localhost"
    #: The TCP port; ``None`` means 5672, or 5671 with TLS.
    port: int | None = None
    #: The virtual host to open (``/`` is the default one; ``%2F`` in a URL).
    virtual_host: str = "/"
    #: The user name for the SASL mechanism.
    username: str = "guest"
    #: The password (never in reprs, logs or exceptions).
    password: str = field(default="guest", repr=False)
    #: The SASL mechanism: ``PLAIN``, ``AMQPLAIN`` or ``EXTERNAL``.
    auth_mechanism: str = "PLAIN"
    #: The heartbeat interval in seconds to ask for; 0 or ``None`` accepts the broker's.
    heartbeat: int | None = 60
    #: The largest frame to ask for, in bytes (the broker may lower it).
    frame_max: int = 131072
    #: The most channels to ask for (the broker may lower it).
    channel_max: int = 2047
    #: The largest message body accepted, in octets (0: no limit).
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: Seconds that connecting and the AMQP handshake may take together.
    connection_timeout: float = 10.0
    #: The locale sent in ``connection.start-ok``.
    locale: str = "en_US"
    #: A name the broker shows for this connection (``connection_name`` client property).
    connection_name: str | None = None
    #: Extra client properties sent in ``connection.start-ok``.
    client_properties: Mapping[str, Any] | None = None
    #: Connect with TLS (``amqps://``).
    tls: bool = False
    #: CA certificates (PEM) to verify the broker with; the system's when ``None``.
    cafile: str | None = None
    #: A client certificate (PEM) for TLS.
    certfile: str | None = None
    #: The private key (PEM) of ``certfile``.
    keyfile: str | None = None
    #: The name to verify the broker's certificate against; ``host`` when ``None``.
    server_hostname: str | None = None
    #: Verify the broker's certificate (turn off only for tests).
    verify: bool = True
    #: The AMQP dialect: ``0-9-1`` (the default) or ``0-8``.
    protocol: str = "0-9-1"
    #: What a publish does while the broker blocks publishers: ``wait`` or ``raise``.
    flow_policy: str = "wait"
    #: A Twisted client endpoint description (``tcp:...``, ``tls:...``, ``unix:...``);
    #: when set it is used instead of host, port and the TLS options.
    endpoint: str | None = None

    def __post_init__(self) -> None:
        if self.auth_mechanism not in _MECHANISMS:
            raise InvalidParameter(
                f"auth_mechanism {self.auth_mechanism!r} is not one of "
                f"{', '.join(sorted(_MECHANISMS))}"
            )
        if self.protocol not in _PROTOCOLS:
            raise InvalidParameter(f"protocol {self.protocol!r} is not 0-9-1 or 0-8")
        if self.flow_policy not in _POLICIES:
            raise InvalidParameter(f"flow_policy {self.flow_policy!r} is not wait or raise")
        if self.port is not None and not 0 < self.port < 65536:
            raise InvalidParameter(f"port {self.port} is outside 1..65535")
        if self.heartbeat is not None and not 0 <= self.heartbeat <= 65535:
            raise InvalidParameter(f"heartbeat {self.heartbeat} is outside 0..65535")
        if self.frame_max and not 4096 <= self.frame_max <= 2**32 - 1:
            raise InvalidParameter(f"frame_max {self.frame_max} is outside 4096..2**32-1")
        if not 0 <= self.channel_max <= 65535:
            raise InvalidParameter(f"channel_max {self.channel_max} is outside 0..65535")
        if not 0 <= self.max_message_size <= 2**63 - 1:
            raise InvalidParameter(
                f"max_message_size {self.max_message_size} is outside 0..2**63-1")
        if not self.connection_timeout > 0:
            raise InvalidParameter(
                f"connection_timeout {self.connection_timeout} must be positive")
        if not self.host:
            raise InvalidParameter("host is empty")

    @property
    def effective_port(self) -> int:
        """The port to use: the given one, else 5671 with TLS and 5672 without."""
        if self.port is not None:
            return self.port
        return 5671 if self.tls else 5672

    @property
    def credentials(self) -> Credentials:
        """The SASL credentials for ``auth_mechanism``."""
        if self.auth_mechanism == "EXTERNAL":
            return ExternalCredentials()
        if self.auth_mechanism == "AMQPLAIN":
            return AMQPlainCredentials(self.username, self.password)
        return PlainCredentials(self.username, self.password)

    def replace(self, **changes: Any) -> ConnectionParameters:
        """A copy with ``changes``; unknown names raise `InvalidParameter`."""
        known = {f.name for f in dataclasses.fields(self)}
        for name in changes:
            if name not in known:
                raise InvalidParameter(f"unknown connection parameter {name!r}")
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """``amqp[s]://user@host:port/vhost`` without the password, for logs."""
        if self.endpoint:
            return self.endpoint
        scheme = "amqps" if self.tls else "amqp"
        vhost = self.virtual_host.replace("%", "%25").replace("/", "%2F")
        return f"{scheme}://{self.username}@{self.host}:{self.effective_port}/{vhost}"


def _int(name: str, low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise InvalidParameter(f"URL option {name}={text!r} is not an integer") from None
        if not low <= value <= high:
            raise InvalidParameter(f"URL option {name}={value} is outside {low}..{high}")
        return value

    return convert


def _float(name: str) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise InvalidParameter(f"URL option {name}={text!r} is not a number") from None
        if not value > 0:
            raise InvalidParameter(f"URL option {name}={text!r} must be positive")
        return value

    return convert


def _bool(name: str) -> Callable[[str], bool]:
    def convert(text: str) -> bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise InvalidParameter(f"URL option {name}={text!r} is not true or false")

    return convert


def _choice(name: str, choices: set[str], upper: bool = False) -> Callable[[str], str]:
    def convert(text: str) -> str:
        value = text.upper() if upper else text
        if value not in choices:
            raise InvalidParameter(
                f"URL option {name}={text!r} is not one of {', '.join(sorted(choices))}"
            )
        return value

    return convert


def _text(text: str) -> str:
    return text


_OPTIONS: dict[str, Callable[[str], Any]] = {
    "heartbeat": _int("heartbeat", 0, 65535),
    "frame_max": _int("frame_max", 4096, 2**32 - 1),
    "channel_max": _int("channel_max", 0, 65535),
    "max_message_size": _int("max_message_size", 0, 2**63 - 1),
    "connection_timeout": _float("connection_timeout"),
    "locale": _text,
    "auth_mechanism": _choice("auth_mechanism", _MECHANISMS, upper=True),
    "connection_name": _text,
    "protocol": _choice("protocol", _PROTOCOLS),
    "flow_policy": _choice("flow_policy", _POLICIES),
    "cafile": _text,
    "certfile": _text,
    "keyfile": _text,
    "server_hostname": _text,
    "verify": _bool("verify"),
}


def parse_url(url: str, **overrides: Any) -> ConnectionParameters:
    """Parse an ``amqp://`` or ``amqps://`` URL; ``overrides`` replace what it says.

    Raises `InvalidParameter` naming the bad part (never the password).
    """
    if not isinstance(url, str):
        raise InvalidParameter(f"a URL must be a str, not {type(url).__name__}")
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in ("amqp", "amqps"):
        raise InvalidParameter(f"URL scheme {scheme.lower()!r} is not amqp or amqps"
                               if sep else "a URL must start with amqp:// or amqps://")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port_text = parts.netloc.rpartition("@")[2]
    except ValueError:
        raise InvalidParameter("the URL's host part is malformed") from None
    if parts.fragment:
        raise InvalidParameter("a URL must not have a #fragment")
    values: dict[str, Any] = {"tls": scheme.lower() == "amqps"}
    if host:
        values["host"] = host
    if port_text.startswith("["):
        port_text = port_text.partition("]")[2]
    if ":" in port_text:
        port_digits = port_text.partition(":")[2]
        # Quote the port only when it is digits: a '/', '?' or '#' left unescaped in a
        # password cuts the netloc there, and the password's start then looks like a port.
        if not (port_digits.isascii() and port_digits.isdigit()):
            raise InvalidParameter("the URL port is not a number (percent-encode any '/', "
                                   "'?', '#' or '@' in the user name and password)")
        if not 0 < int(port_digits) < 65536:
            raise InvalidParameter(f"URL port {port_digits} is outside 1..65535")
        values["port"] = int(port_digits)
    if parts.username is not None:
        values["username"] = unquote(parts.username)
    if parts.password is not None:
        values["password"] = unquote(parts.password)
    path = parts.path
    if path not in ("", "/"):
        vhost = path[1:]
        if "/" in vhost:
            raise InvalidParameter(
                "the URL path must be one virtual host; write '/' in it as %2F")
        values["virtual_host"] = unquote(vhost)
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        raise InvalidParameter("the URL's query string is malformed") from None
    for name, text in query:
        convert = _OPTIONS.get(name)
        if convert is None:
            raise InvalidParameter(
                f"unknown URL option {name!r}; known: {', '.join(sorted(_OPTIONS))}"
            )
        values[name] = convert(text)
    values.update(overrides)
    try:
        return ConnectionParameters(**values)
    except TypeError as exc:
        raise InvalidParameter(f"unknown connection parameter: {exc}") from None


def parameters_for(target: str | ConnectionParameters, overrides: Mapping[str, Any] | None = None,
                   *, endpoints: bool = True) -> ConnectionParameters:
    """The parameters a connect target names, with ``overrides`` applied.

    ``target`` is an ``amqp://``/``amqps://`` URL, a `ConnectionParameters`, or (with
    ``endpoints``, for the Twisted adapter) a Twisted client endpoint description such as
    ``tcp:localhost:5672``. Raises `InvalidParameter` naming what is wrong.
    """
    changes = dict(overrides or {})
    if isinstance(target, ConnectionParameters):
        parameters = target.replace(**changes) if changes else target
    elif not isinstance(target, str):
        raise InvalidParameter(
            "connect() takes a URL, ConnectionParameters"
            f"{' or endpoint description' if endpoints else ''}, not {type(target).__name__}")
    elif "://" in target:
        # parse_url refuses any other scheme (http://...): no endpoint description has "://".
        parameters = parse_url(target, **changes)
    elif not endpoints:
        raise InvalidParameter("endpoint descriptions need Twisted; give this adapter an "
                               "amqp:// or amqps:// URL")
    elif ":" not in target:
        raise InvalidParameter(
            "connect() target must be an amqp:// or amqps:// URL or a Twisted endpoint "
            "description such as 'tcp:localhost:5672'")
    else:
        parameters = ConnectionParameters(endpoint=target).replace(**changes)
    if parameters.endpoint and not endpoints:
        raise InvalidParameter("endpoint descriptions need Twisted; give this adapter an "
                               "amqp:// or amqps:// URL")
    return parameters
