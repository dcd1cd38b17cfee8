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

    #: The broker's ``server-properties`` (product, version, capabilities...).
    server_properties: Mapping[str, Any]
    #: The negotiated most channels.
    channel_max: int
    #: The negotiated largest frame, in bytes.
    frame_max: int
    #: The negotiated heartbeat interval in seconds (0: none).
    heartbeat: int
    #: ``known-hosts`` of ``connection.open-ok`` (AMQP 0-8 only).
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

    #: Why it closed: a `txpika.errors.ConnectionClosed` (or subclass).
    error: BaseException


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionBlocked:
    """The broker stopped publishers on this connection (``connection.blocked``)."""

    #: The broker's reason (for example ``low on memory``).
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionUnblocked:
    """The broker lets publishers go on (``connection.unblocked``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelOpened:
    """``channel.open-ok`` arrived for ``channel``."""

    #: The channel number.
    channel: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelClosed:
    """``channel`` is closed; ``error`` is a `txpika.errors.ChannelClosed` saying why."""

    #: The channel number.
    channel: int
    #: Why it closed: a `txpika.errors.ChannelClosed` (or subclass).
    error: BaseException


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelFlow:
    """The broker asked ``channel`` to stop (``active=False``) or resume sending content."""

    #: The channel number.
    channel: int
    #: True when the broker lets the channel send again, False when it stops it.
    active: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodReceived:
    """A method without content: a reply to a synchronous request, or ``basic.cancel``."""

    #: The channel number.
    channel: int
    #: The method the broker sent.
    method: Method


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived:
    """A whole message: ``basic.deliver``, ``basic.get-ok``, or ``basic.return`` outside
    confirm mode, with its properties and body."""

    #: The channel number.
    channel: int
    #: The method that carried the content: ``basic.deliver``, ``basic.get-ok`` or ``basic.return``.
    method: Method
    #: The message's properties.
    properties: Properties
    #: The message's body.
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishAcked:
    """The broker confirmed these publishes (the sequence numbers ``basic_publish`` gave)."""

    #: The channel number.
    channel: int
    #: The delivery tags of the publishes the broker acked (``multiple`` expanded).
    delivery_tags: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishNacked:
    """The broker refused these publishes (``basic.nack``)."""

    #: The channel number.
    channel: int
    #: The delivery tags of the publishes the broker nacked (``multiple`` expanded).
    delivery_tags: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishReturned:
    """A mandatory publish in confirm mode came back unroutable (``basic.return``).

    ``delivery_tag`` is the publish it belongs to; the broker's ack for it is not reported
    as a `PublishAcked`. ``method`` is the ``basic.return``.
    """

    #: The channel number.
    channel: int
    #: The delivery tag of the returned publish in confirm mode, 0 outside it.
    delivery_tag: int
    #: The ``basic.return`` method (reply code and text, exchange, routing key).
    method: Method
    #: The returned message's properties.
    properties: Properties
    #: The returned message's body.
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


#: Any event `txpika.connection.Connection.next_event` returns (besides ``NEED_DATA``).
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
