"""Every exception txpika raises, and the one table from AMQP reply code to class.

The hierarchy::

    AMQPError
     +-- ConnectionClosed            hard errors (3xx, 5xx), the connection is gone
     |    +-- ConnectionClosedByBroker
     |    |    +-- per-code classes: ConnectionForced 320, InvalidPath 402,
     |    |        FrameError 501, SyntaxError_ 502, CommandInvalid 503,
     |    |        ChannelError 504, UnexpectedFrame 505, ResourceError 506,
     |    |        NotAllowed 530, NotImplemented_ 540, InternalError 541
     |    +-- ConnectionClosedByClient
     |    +-- ConnectionLost          the transport went away without connection.close
     |    +-- ProtocolError          the peer broke the protocol; carries the code we sent
     |    +-- HeartbeatTimeout
     |    +-- AuthenticationError
     +-- ChannelClosed               soft errors (4xx, 3xx), only one channel is gone
     |    +-- ChannelClosedByBroker
     |    |    +-- ContentTooLarge 311, NoRoute 312, NoConsumers 313, AccessRefused 403,
     |    |        NotFound 404, ResourceLocked 405, PreconditionFailed 406
     |    +-- ChannelClosedByClient
     +-- NackError, UnroutableError, OutcomeUnknownError, FlowControlError,
     |   ConsumerCancelled, ConnectionRecovering, ServiceStopped
     +-- UsageError                  local misuse: nothing was sent

``AccessRefused`` is raised both for a 403 channel error and for a connection refused by the
broker with 530 while opening a virtual host, so that callers catch one class for any refusal
of access; its ``reply_code`` says which it was.

Exceptions never carry credentials: they are built from reply codes, reply texts and method
names only.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AMQPError",
    "AccessRefused",
    "AuthenticationError",
    "ChannelClosed",
    "ChannelClosedByBroker",
    "ChannelClosedByClient",
    "ChannelError",
    "CommandInvalid",
    "ConnectionClosed",
    "ConnectionClosedByBroker",
    "ConnectionClosedByClient",
    "ConnectionForced",
    "ConnectionLost",
    "ConnectionRecovering",
    "ConsumerCancelled",
    "ContentTooLarge",
    "FlowControlError",
    "FrameError",
    "HeartbeatTimeout",
    "InternalError",
    "InvalidPath",
    "MessageTooLarge",
    "NackError",
    "NoConsumers",
    "NoRoute",
    "NotAllowed",
    "NotFound",
    "NotImplemented_",
    "OutcomeUnknownError",
    "PreconditionFailed",
    "ProtocolError",
    "ResourceError",
    "ResourceLocked",
    "ServiceStopped",
    "SyntaxError_",
    "UnexpectedFrame",
    "UnroutableError",
    "UsageError",
    "VirtualHostAccessRefused",
    "channel_error",
    "connection_error",
]

# Reply codes from the AMQP 0-9-1 specification.
#: Reply code 200: a normal close.
REPLY_SUCCESS = 200
#: Reply code 311: the content was too large.
CONTENT_TOO_LARGE = 311
#: Reply code 312: a mandatory publish that no queue was bound for.
NO_ROUTE = 312
#: Reply code 313: an immediate publish with no consumer (not in RabbitMQ).
NO_CONSUMERS = 313
#: Reply code 320: an operator closed the connection, or the broker shuts down.
CONNECTION_FORCED = 320
#: Reply code 402: the virtual host does not exist.
INVALID_PATH = 402
#: Reply code 403: access refused.
ACCESS_REFUSED = 403
#: Reply code 404: no such queue or exchange.
NOT_FOUND = 404
#: Reply code 405: an exclusive queue of another connection.
RESOURCE_LOCKED = 405
#: Reply code 406: declared differently before, or a failed precondition.
PRECONDITION_FAILED = 406
#: Reply code 501: a malformed frame.
FRAME_ERROR = 501
#: Reply code 502: a malformed method or field.
SYNTAX_ERROR = 502
#: Reply code 503: a method not allowed now.
COMMAND_INVALID = 503
#: Reply code 504: a channel that is not open.
CHANNEL_ERROR = 504
#: Reply code 505: a frame out of sequence.
UNEXPECTED_FRAME = 505
#: Reply code 506: the broker ran out of a resource.
RESOURCE_ERROR = 506
#: Reply code 530: not allowed (a virtual host the user may not open...).
NOT_ALLOWED = 530
#: Reply code 540: a feature the broker does not implement.
NOT_IMPLEMENTED = 540
#: Reply code 541: an internal error of the broker.
INTERNAL_ERROR = 541


class AMQPError(Exception):
    """Base class of every txpika error."""


class _Closed(AMQPError):
    """A connection or channel close with the reply the peer (or we) sent."""

    def __init__(
        self,
        reply_code: int,
        reply_text: str = "",
        class_id: int = 0,
        method_id: int = 0,
        method_name: str | None = None,
    ) -> None:
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.class_id = class_id
        self.method_id = method_id
        self.method_name = method_name
        super().__init__(reply_code, reply_text)

    def __str__(self) -> str:
        text = f"{self.reply_code} {self.reply_text}".rstrip()
        if self.method_name:
            text += f" (in reply to {self.method_name})"
        elif self.class_id:
            text += f" (in reply to method {self.class_id}.{self.method_id})"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(reply_code={self.reply_code!r}, "
            f"reply_text={self.reply_text!r}, class_id={self.class_id!r}, "
            f"method_id={self.method_id!r})"
        )


class ConnectionClosed(_Closed):
    """The connection was closed; every channel on it is gone."""


class ConnectionClosedByBroker(ConnectionClosed):
    """The broker closed the connection (``connection.close`` from the server)."""


class ConnectionClosedByClient(ConnectionClosed):
    """This client closed the connection; a normal close has reply code 200."""


class ConnectionLost(ConnectionClosed):
    """The transport went away without ``connection.close``: a reset, an end of stream, a
    cut network. ``reason`` is the transport's exception (also the ``__cause__``);
    ``reply_code`` is 0, since no AMQP close was exchanged."""

    def __init__(self, reason: BaseException | None = None, text: str = "") -> None:
        super().__init__(0, text or f"connection lost: {reason or 'the transport closed'}")
        #: The transport's exception, or ``None`` when it just closed.
        self.reason = reason
        self.__cause__ = reason

    def __reduce__(self) -> Any:
        return (type(self), (self.reason, self.reply_text))


class ChannelClosed(_Closed):
    """A channel was closed; the connection and other channels go on."""


class ChannelClosedByBroker(ChannelClosed):
    """The broker closed the channel (``channel.close`` from the server)."""


class ChannelClosedByClient(ChannelClosed):
    """This client closed the channel."""


class MessageTooLarge(ChannelClosedByClient):
    """311: a message arriving on the channel was larger than ``max_message_size``.

    Its content header announced ``size`` bytes, more than ``limit``; txpika closed the
    channel (reply code 311 CONTENT_TOO_LARGE) before buffering the body, so the broker
    requeues the delivery, and the connection and its other channels go on. Pending calls
    and consumers of the channel fail with this error. ``method_name`` is what brought it:
    ``basic.deliver``, ``basic.get-ok`` or ``basic.return``.
    """

    def __init__(self, size: int, limit: int, method_name: str, channel: int) -> None:
        #: The body size, in octets, its content header announced.
        self.size = size
        #: The connection's ``max_message_size``.
        self.limit = limit
        #: The channel it arrived on (now closed).
        self.channel = channel
        super().__init__(
            CONTENT_TOO_LARGE,
            f"{method_name} of {size} bytes on channel {channel} exceeds max_message_size "
            f"{limit}",
            method_name=None,
        )
        #: ``basic.deliver``, ``basic.get-ok`` or ``basic.return``.
        self.method_name = method_name

    def __str__(self) -> str:
        return f"{self.reply_code} {self.reply_text}"


class ProtocolError(ConnectionClosed):
    """The peer broke the protocol; txpika closed the connection with ``reply_code``.

    ``reply_code`` is what txpika sent (or would send) in ``connection.close``: 501 frame
    error, 502 syntax error, 503 command invalid, 504 channel error, 505 unexpected frame,
    540 not implemented.
    """


class HeartbeatTimeout(ConnectionClosed):
    """The peer sent nothing for two negotiated heartbeat intervals."""

    def __init__(self, interval: float) -> None:
        super().__init__(CONNECTION_FORCED, f"no traffic from the peer for {2 * interval:g} s")
        #: The negotiated heartbeat interval in seconds.
        self.interval = interval


class AuthenticationError(ConnectionClosed):
    """The broker refused the credentials (or no common SASL mechanism exists)."""


class FrameError(ConnectionClosedByBroker):
    """501: the broker received a malformed frame."""


class SyntaxError_(ConnectionClosedByBroker):  # noqa: N801 - AMQP's name, not Python's
    """502: the broker received a frame with illegal field values."""


class CommandInvalid(ConnectionClosedByBroker):
    """503: the broker received a method it cannot accept now."""


class ChannelError(ConnectionClosedByBroker):
    """504: the broker received a frame for a channel that is not open."""


class UnexpectedFrame(ConnectionClosedByBroker):
    """505: the broker received a frame it did not expect."""


class ResourceError(ConnectionClosedByBroker):
    """506: the broker lacks a resource (for example, too many channels)."""


class NotAllowed(ConnectionClosedByBroker):
    """530: the broker does not allow this (for example, a vhost the user may not open)."""


class NotImplemented_(ConnectionClosedByBroker):  # noqa: N801 - AMQP's name
    """540: the broker does not implement this functionality."""


class InternalError(ConnectionClosedByBroker):
    """541: the broker hit an internal error."""


class ConnectionForced(ConnectionClosedByBroker):
    """320: an operator closed the connection, or the broker is shutting down."""


class InvalidPath(ConnectionClosedByBroker):
    """402: the virtual host name is not valid."""


class ContentTooLarge(ChannelClosedByBroker):
    """311: the message is larger than the broker accepts."""


class NoRoute(ChannelClosedByBroker):
    """312: a mandatory message could not be routed."""


class NoConsumers(ChannelClosedByBroker):
    """313: an immediate message had no consumer."""


class AccessRefused(ChannelClosedByBroker):
    """403 on a channel, or 530 from the broker when the user may not open the vhost.

    Catch this for any refusal of access; ``reply_code`` tells which one happened.
    """


class VirtualHostAccessRefused(AccessRefused, NotAllowed):
    """The broker refused to open the virtual host (``connection.close`` 530)."""


class NotFound(ChannelClosedByBroker):
    """404: the exchange or queue does not exist."""


class ResourceLocked(ChannelClosedByBroker):
    """405: the queue is exclusive to another connection."""


class PreconditionFailed(ChannelClosedByBroker):
    """406: the request contradicts the existing entity or state (for example a double ack)."""


class NackError(AMQPError):
    """The broker answered a confirmed publish with ``basic.nack``."""

    def __init__(self, delivery_tag: int) -> None:
        super().__init__(f"the broker nacked publish {delivery_tag}")
        #: The delivery tag of the nacked publish.
        self.delivery_tag = delivery_tag


class UnroutableError(AMQPError):
    """A mandatory publish came back with ``basic.return``; ``message`` is what returned."""

    def __init__(self, message: Any, reply_code: int, reply_text: str) -> None:
        super().__init__(f"message returned: {reply_code} {reply_text}")
        #: The returned message (a `txpika.Message`, or a `txpika.blocking.Message`).
        self.message = message
        #: The broker's reply code (312 NO_ROUTE).
        self.reply_code = reply_code
        #: The broker's reply text.
        self.reply_text = reply_text


class OutcomeUnknownError(AMQPError):
    """The connection or channel was lost before the broker confirmed or refused a publish.

    The message may or may not have been accepted: republish it if duplicates are harmless.
    """

    def __init__(self, reason: BaseException | str) -> None:
        super().__init__(f"publish outcome unknown: {reason}")
        #: Why the outcome is unknown: the error that ended the channel or connection.
        self.reason = reason


class FlowControlError(AMQPError):
    """The broker has stopped publishers and the flow policy is ``"raise"``."""


class ConsumerCancelled(AMQPError):
    """The consumer ended: cancelled by the broker (for example, its queue was deleted)."""

    def __init__(self, consumer_tag: str, reason: str = "cancelled by the broker") -> None:
        super().__init__(f"consumer {consumer_tag!r} {reason}")
        #: The tag of the consumer that ended.
        self.consumer_tag = consumer_tag


class ConnectionRecovering(AMQPError):
    """The reconnecting service has no open connection right now; nothing was sent."""


class ServiceStopped(AMQPError):
    """The reconnecting service is not running (not started, or stopped)."""


class UsageError(AMQPError, ValueError):
    """The caller asked for something txpika refuses to send; nothing went on the wire."""


_CONNECTION_ERRORS: dict[int, type[ConnectionClosedByBroker]] = {
    CONNECTION_FORCED: ConnectionForced,
    INVALID_PATH: InvalidPath,
    FRAME_ERROR: FrameError,
    SYNTAX_ERROR: SyntaxError_,
    COMMAND_INVALID: CommandInvalid,
    CHANNEL_ERROR: ChannelError,
    UNEXPECTED_FRAME: UnexpectedFrame,
    RESOURCE_ERROR: ResourceError,
    NOT_ALLOWED: NotAllowed,
    NOT_IMPLEMENTED: NotImplemented_,
    INTERNAL_ERROR: InternalError,
}

_CHANNEL_ERRORS: dict[int, type[ChannelClosedByBroker]] = {
    CONTENT_TOO_LARGE: ContentTooLarge,
    NO_ROUTE: NoRoute,
    NO_CONSUMERS: NoConsumers,
    ACCESS_REFUSED: AccessRefused,
    NOT_FOUND: NotFound,
    RESOURCE_LOCKED: ResourceLocked,
    PRECONDITION_FAILED: PreconditionFailed,
}


def connection_error(
    reply_code: int,
    reply_text: str,
    class_id: int = 0,
    method_id: int = 0,
    method_name: str | None = None,
) -> ConnectionClosed:
    """The exception for a ``connection.close`` the broker sent."""
    cls: type[ConnectionClosed] = _CONNECTION_ERRORS.get(reply_code, ConnectionClosedByBroker)
    if reply_code == ACCESS_REFUSED:
        # 403 at connection level: RabbitMQ's answer to bad credentials.
        cls = AuthenticationError
    return cls(reply_code, reply_text, class_id, method_id, method_name)


def channel_error(
    reply_code: int,
    reply_text: str,
    class_id: int = 0,
    method_id: int = 0,
    method_name: str | None = None,
) -> ChannelClosed:
    """The exception for a ``channel.close`` the broker sent."""
    cls = _CHANNEL_ERRORS.get(reply_code, ChannelClosedByBroker)
    return cls(reply_code, reply_text, class_id, method_id, method_name)
