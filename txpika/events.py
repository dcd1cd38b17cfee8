"""Events the sans-IO core (`txpika.connection.Connection`) hands to its driver.

Each is a frozen, slotted, keyword-only dataclass, complete when built. A driver pulls them
one at a time with ``Connection.next_event()`` until it returns `txpika.connection.NEED_DATA`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from txpika._specbase import Method, Properties, twin

__all__ = [
    "ChannelClosed",
    "ChannelFlow",
    "ChannelOpened",
    "ConnectionBlocked",
    "ConnectionClosed",
    "ConnectionOpened",
    "ConnectionUnblocked",
    "Event",
    "MessageReceived",
    "MethodReceived",
    "PublishAcked",
    "PublishNacked",
    "PublishReturned",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionOpened:
    """``connection.open-ok`` arrived: the connection is usable with these tuned limits."""

    server_properties: Mapping[str, Any]
    channel_max: int
    frame_max: int
    heartbeat: int
    known_hosts: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed:
    """The connection is over; ``error`` says why. Emitted exactly once.

    ``error`` is a `txpika.errors.ConnectionClosedByClient` (reply code 200) after a normal
    close, a `txpika.errors.ConnectionClosedByBroker` subclass when the broker closed it,
    `txpika.errors.AuthenticationError`, `txpika.errors.AccessRefused` (vhost refused),
    `txpika.errors.ProtocolError` when the peer broke the protocol,
    `txpika.errors.HeartbeatTimeout`, or whatever the driver passed to
    ``Connection.connection_lost``.
    """

    error: BaseException


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionBlocked:
    """The broker stopped publishers on this connection (``connection.blocked``)."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionUnblocked:
    """The broker lets publishers go on (``connection.unblocked``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelOpened:
    """``channel.open-ok`` arrived for ``channel``."""

    channel: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelClosed:
    """``channel`` is closed; ``error`` is a `txpika.errors.ChannelClosed` saying why."""

    channel: int
    error: BaseException


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelFlow:
    """The broker asked ``channel`` to stop (``active=False``) or resume sending content."""

    channel: int
    active: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodReceived:
    """A method without content: a reply to a synchronous request, or ``basic.cancel``."""

    channel: int
    method: Method


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived:
    """A whole message: ``basic.deliver``, ``basic.get-ok``, or ``basic.return`` outside
    confirm mode, with its properties and body."""

    channel: int
    method: Method
    properties: Properties
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishAcked:
    """The broker confirmed these publishes (the sequence numbers ``basic_publish`` gave)."""

    channel: int
    delivery_tags: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishNacked:
    """The broker refused these publishes (``basic.nack``)."""

    channel: int
    delivery_tags: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishReturned:
    """A mandatory publish in confirm mode came back unroutable (``basic.return``).

    ``delivery_tag`` is the publish it belongs to; the broker's ack for it is not reported
    as a `PublishAcked`. ``method`` is the ``basic.return``.
    """

    channel: int
    delivery_tag: int
    method: Method
    properties: Properties
    body: bytes


# The core builds a MessageReceived per delivered message. A frozen dataclass's __init__ stores
# each field with object.__setattr__; this fills a mutable twin and makes it a MessageReceived
# instead (see txpika._specbase), which gives the very same object at less than half the cost.
_new = object.__new__
_MessageReceivedT = twin(MessageReceived)


def _message_received(channel: int, method: Method, properties: Properties,
                      body: bytes) -> MessageReceived:
    """``MessageReceived(channel=channel, method=method, properties=properties, body=body)``,
    for the core's receive path."""
    event: Any = _new(_MessageReceivedT)
    event.channel = channel
    event.method = method
    event.properties = properties
    event.body = body
    event.__class__ = MessageReceived
    built: MessageReceived = event
    return built


Event = (
    ConnectionOpened
    | ConnectionClosed
    | ConnectionBlocked
    | ConnectionUnblocked
    | ChannelOpened
    | ChannelClosed
    | ChannelFlow
    | MethodReceived
    | MessageReceived
    | PublishAcked
    | PublishNacked
    | PublishReturned
)
