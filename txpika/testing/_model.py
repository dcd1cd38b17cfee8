"""What the memory broker stores and how it routes: messages, faults, matching rules.

No I/O and no Twisted here. A `Fault` is a refusal with a reply code and RabbitMQ's reply
text; the server channel turns it into ``channel.close`` (soft codes) or ``connection.close``
(hard codes), as RabbitMQ does.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from txpika import errors
from txpika._wire import WireError, decode_table
from txpika.spec import BasicProperties

__all__ = [
    "BrokerMessage",
    "Clock",
    "DelayedCall",
    "Fault",
    "credentials",
    "headers_match",
    "server_name",
    "topic_match",
]

#: RabbitMQ's names for its reply codes, which open every reply text it sends.
CODE_NAMES: Final = {
    errors.CONTENT_TOO_LARGE: "CONTENT_TOO_LARGE",
    errors.NO_ROUTE: "NO_ROUTE",
    errors.NO_CONSUMERS: "NO_CONSUMERS",
    errors.CONNECTION_FORCED: "CONNECTION_FORCED",
    errors.INVALID_PATH: "INVALID_PATH",
    errors.ACCESS_REFUSED: "ACCESS_REFUSED",
    errors.NOT_FOUND: "NOT_FOUND",
    errors.RESOURCE_LOCKED: "RESOURCE_LOCKED",
    errors.PRECONDITION_FAILED: "PRECONDITION_FAILED",
    errors.FRAME_ERROR: "FRAME_ERROR",
    errors.SYNTAX_ERROR: "SYNTAX_ERROR",
    errors.COMMAND_INVALID: "COMMAND_INVALID",
    errors.CHANNEL_ERROR: "CHANNEL_ERROR",
    errors.UNEXPECTED_FRAME: "UNEXPECTED_FRAME",
    errors.RESOURCE_ERROR: "RESOURCE_ERROR",
    errors.NOT_ALLOWED: "NOT_ALLOWED",
    errors.NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    errors.INTERNAL_ERROR: "INTERNAL_ERROR",
}
#: Reply codes that close only the channel; every other code closes the connection.
SOFT_CODES: Final = frozenset({
    errors.CONTENT_TOO_LARGE, errors.NO_ROUTE, errors.NO_CONSUMERS, errors.ACCESS_REFUSED,
    errors.NOT_FOUND, errors.RESOURCE_LOCKED, errors.PRECONDITION_FAILED,
})


class Fault(Exception):
    """A request the broker refuses: ``reply_code`` and the reply text RabbitMQ sends
    (``"NOT_FOUND - no queue 'q' in vhost '/'"``), the failing method's ids."""

    def __init__(self, reply_code: int, text: str, class_id: int = 0, method_id: int = 0):
        self.reply_code = reply_code
        self.reply_text = f"{CODE_NAMES.get(reply_code, 'ERROR')} - {text}"[:255]
        self.class_id = class_id
        self.method_id = method_id
        super().__init__(self.reply_text)

    @property
    def hard(self) -> bool:
        """True when the whole connection must close."""
        return self.reply_code not in SOFT_CODES


def not_implemented(feature: str) -> Fault:
    """The refusal of something the memory broker does not do (a connection error, 540)."""
    return Fault(errors.NOT_IMPLEMENTED,
                 f"txpika.testing.MemoryBroker does not implement {feature}")


class DelayedCall(Protocol):
    """What ``Clock.callLater`` returns (``twisted.internet.interfaces.IDelayedCall``)."""

    def cancel(self) -> None: ...

    def active(self) -> bool: ...


class Clock(Protocol):
    """The clock the broker keeps time by: ``IReactorTime``'s ``seconds`` and ``callLater``,
    for example ``twisted.internet.task.Clock`` or a reactor."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., object],
                  *args: object, **kw: object) -> DelayedCall: ...


@dataclass(frozen=True, slots=True)
class BrokerMessage:
    """A message as the broker holds it: what a consumer would receive."""

    #: The body.
    body: bytes
    #: The properties.
    properties: BasicProperties = field(default_factory=BasicProperties)
    #: The exchange it was published to (or dead-lettered through) and its routing key.
    exchange: str = ""
    #: The routing key it was published with.
    routing_key: str = ""
    #: True once it was delivered and put back (requeued or recovered).
    redelivered: bool = False

    @property
    def headers(self) -> Mapping[str, Any]:
        """``properties.headers``, or an empty mapping."""
        return self.properties.headers or {}


class Entry:
    """One message in one queue: the shared message and this queue's bookkeeping."""

    __slots__ = ("expires_at", "message", "routing_keys", "seq")

    def __init__(self, message: BrokerMessage, seq: int, routing_keys: tuple[str, ...],
                 expires_at: float | None) -> None:
        self.message = message
        #: Position in the queue: a requeued message goes back where it was.
        self.seq = seq
        #: Every key it was routed with (routing key, CC, BCC), for ``x-death``.
        self.routing_keys = routing_keys
        self.expires_at = expires_at

    @property
    def size(self) -> int:
        return len(self.message.body)


def server_name(prefix: str) -> str:
    """A name like RabbitMQ's server-generated ones: ``amq.gen-`` + 22 URL-safe characters."""
    return prefix + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


def topic_match(pattern: str, key: str) -> bool:
    """Whether a topic binding key (``*`` one word, ``#`` zero or more) matches ``key``.

    As in RabbitMQ, an empty key (or pattern) has no words at all, while ``"."`` has two
    empty ones.
    """
    return _topic(_words(pattern), 0, _words(key), 0)


def _words(key: str) -> list[str]:
    return key.split(".") if key else []


def _topic(pat: list[str], i: int, words: list[str], j: int) -> bool:
    while i < len(pat):
        word = pat[i]
        if word == "#":
            # Collapse repeated hashes, then try every split point.
            while i + 1 < len(pat) and pat[i + 1] == "#":
                i += 1
            if i + 1 == len(pat):
                return True
            return any(_topic(pat, i + 1, words, k) for k in range(j, len(words) + 1))
        if j >= len(words) or (word != "*" and word != words[j]):
            return False
        i += 1
        j += 1
    return j == len(words)


def headers_match(binding: Mapping[str, Any], headers: Mapping[str, Any]) -> bool:
    """RabbitMQ's headers exchange rule: ``x-match`` ``all`` (default) or ``any``, and their
    ``-with-x`` variants that also compare keys starting with ``x-``. A binding value that
    is void (``None``) asks only that the header be present."""
    mode = str(binding.get("x-match", "all"))
    with_x = mode.endswith("-with-x")
    wanted = [(k, v) for k, v in binding.items()
              if k != "x-match" and (with_x or not k.startswith("x-"))]
    if mode.startswith("any"):
        return any(_header_ok(k, v, headers) for k, v in wanted)
    return all(_header_ok(k, v, headers) for k, v in wanted)


def _header_ok(key: str, value: Any, headers: Mapping[str, Any]) -> bool:
    if key not in headers:
        return False
    return value is None or (headers[key] == value and type(headers[key]) is type(value))


def credentials(mechanism: str, response: bytes) -> tuple[str | None, str | None]:
    """(user, password) from a start-ok response; (None, None) for an unknown mechanism."""
    if mechanism == "PLAIN":
        parts = response.split(b"\0")
        if len(parts) != 3:
            return "", None
        return parts[1].decode(errors="replace"), parts[2].decode(errors="replace")
    if mechanism == "AMQPLAIN":
        try:
            table, _ = decode_table(len(response).to_bytes(4, "big") + response, 0)
        except WireError:
            return "", None
        login, password = table.get("LOGIN"), table.get("PASSWORD")
        return (str(login) if login is not None else "",
                str(password) if password is not None else None)
    return None, None
