"""`Publisher`: confirmed publishing on an `txpika.client.AMQPService` that never loses a
message silently.

Every publish is confirmed. Its Deferred fires with ``None`` on the broker's ack, or fails
with a definite answer: `txpika.errors.NackError`, `txpika.errors.UnroutableError`
(``mandatory``), or, when the outcome is unknown because the connection was lost first,
`txpika.errors.OutcomeUnknownError`. While the service is recovering a publish fails at
once with `txpika.errors.ConnectionRecovering`.

With ``at_least_once=True`` the publisher instead holds every message until the broker
acks it: publishes made while recovering wait, and those whose outcome a lost connection
left unknown are published again, in order, on the next connection. A message may then
arrive twice (hence "at least once"); consumers should be idempotent. What it holds is
bounded by ``max_pending`` messages: past that, a publish fails at once with
`txpika.errors.FlowControlError` rather than growing memory without limit.

``observer`` (`txpika.observe.Observer`; default: the service's) hears each publish's
outcome (confirmed, nacked, returned, unknown, failed) and its confirm latency;
``tracing`` (`txpika.tracing.Tracing`) makes each publish an OpenTelemetry PRODUCER span
whose context travels in the message's headers (W3C ``traceparent``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txpika.errors import (
    AMQPError,
    ChannelClosed,
    ChannelClosedByBroker,
    ConnectionClosed,
    ConnectionRecovering,
    FlowControlError,
    OutcomeUnknownError,
    ServiceStopped,
)
from txpika.observe import Observer, publish_outcome
from txpika.robust import RobustChannel
from txpika.spec import BasicProperties

if TYPE_CHECKING:
    from txpika.tracing import Tracing

__all__ = ["Publisher", "PublishingService"]

#: The logger of the confirmed publisher (namespace ``txpika.publisher``).
log = Logger()


class PublishingService(Protocol):
    """What a publisher needs of its service (`txpika.client.AMQPService`)."""

    @property
    def state(self) -> str:
        """The service's state (``"closed"``, ``"open"``, ...)."""

    def add_state_listener(self, callback: Callable[[Any], object]) -> None:
        """Call ``callback(state)`` on every change of state."""

    def channel(self) -> Deferred[RobustChannel]:
        """A robust channel, once the service is open."""


class _Pending:
    __slots__ = ("args", "deferred", "number", "publisher", "sent", "tried")

    def __init__(self, publisher: Publisher, number: int, args: tuple[Any, ...]) -> None:
        self.publisher = publisher
        self.number = number  # its place in the publisher's order
        self.args = args
        self.deferred: Deferred[None] = Deferred()
        self.sent = False  # on the wire now, awaiting the broker's answer
        self.tried = False  # was published at least once

    def acked(self, _: object) -> None:
        self.publisher._pending.pop(self.number, None)
        self.deferred.callback(None)

    def failed(self, error: BaseException) -> None:
        self.publisher._failed(error, self)


class Publisher:
    """Confirmed publishing over a reconnecting service. See the module docstring.

    Call `start` (or use `txpika.client.AMQPService.publisher`) before publishing.
    """

    def __init__(self, service: PublishingService, *, at_least_once: bool = False,
                 max_pending: int = 10000, observer: Observer | None = None,
                 tracing: Tracing | None = None, clock: IReactorTime | None = None) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        #: The `txpika.observe.Observer` told of each publish's outcome and latency, or ``None``.
        self.observer = observer if observer is not None else getattr(
            service, "observer", None)
        #: The `txpika.tracing.Tracing` that makes a PRODUCER span of each publish, or ``None``.
        self.tracing = tracing
        self._observed = self.observer is not None or tracing is not None
        self._clock = clock or getattr(service, "clock", None)
        if self.observer is not None and self._clock is None:
            raise ValueError("a Publisher with an observer needs a clock")
        #: The `txpika.client.AMQPService` it publishes through.
        self.service = service
        #: Hold every message until the broker acks it, publishing again after a reconnect.
        self.at_least_once = at_least_once
        #: The most messages held at once; beyond, a publish fails with
        #: `txpika.errors.FlowControlError`.
        self.max_pending = max_pending
        self._channel: RobustChannel | None = None
        # Held until acked (at-least-once), in publishing order (dicts keep insertion order).
        self._pending: dict[int, _Pending] = {}
        self._numbers = itertools.count()
        self._republished = 0
        self._unsent = 0  # held messages not on the wire
        service.add_state_listener(self._state_changed)

    @property
    def pending(self) -> int:
        """Messages held until the broker acks them (at-least-once mode)."""
        return len(self._pending)

    @property
    def republished(self) -> int:
        """How many messages were published again after a lost connection."""
        return self._republished

    def start(self) -> Deferred[Publisher]:
        """Open the publisher's confirm-mode channel (waiting for the service to be open).
        Fires with the publisher."""
        def opened(channel: RobustChannel) -> Deferred[Publisher]:
            self._channel = channel
            # reopened after a channel error: the service stays open, so no state change
            channel.add_reopen_listener(self._reopened)
            self._watch()
            return channel.confirm_select().addCallback(lambda _: self)

        return self.service.channel().addCallback(opened)

    def publish(self, exchange: str, routing_key: str, body: bytes,
                properties: BasicProperties | None = None,
                mandatory: bool = False) -> Deferred[None]:
        """Publish with confirms; see the module docstring for how it fires and fails."""
        args = (exchange, routing_key, body, properties, mandatory)
        if self._observed:
            return self._publish_observed(args)
        return self._publish(args)

    def _publish(self, args: tuple[Any, ...]) -> Deferred[None]:
        if not self.at_least_once:
            if self._channel is None:
                return fail(ConnectionRecovering("the publisher is not started"))
            return self._channel.basic_publish(*args)
        if len(self._pending) >= self.max_pending:
            return fail(FlowControlError(
                f"{len(self._pending)} messages await the broker's ack (max_pending)"))
        pending = _Pending(self, next(self._numbers), args)
        self._pending[pending.number] = pending
        channel = self._channel
        if self._unsent or channel is None or not channel.is_open:
            self._unsent += 1  # nothing overtakes a message waiting to be (re)sent
        else:
            self._send(pending)
        return pending.deferred

    # -- internals ---------------------------------------------------------------------------

    def _publish_observed(self, args: tuple[Any, ...]) -> Deferred[None]:
        began = self._clock.seconds() if self._clock is not None else 0.0
        span = None
        if self.tracing is not None:
            exchange, routing_key, body, properties, mandatory = args
            span, properties = self.tracing.publishing(exchange, routing_key, properties)
            args = (exchange, routing_key, body, properties, mandatory)
        return self._publish(args).addBoth(self._outcome, args[0], began, span)

    def _outcome(self, result: Any, exchange: str, began: float, span: Any) -> Any:
        error = result.value if isinstance(result, Failure) else None
        if self.observer is not None and self._clock is not None:
            self.observer.published(exchange, publish_outcome(error),
                                    self._clock.seconds() - began)
        if span is not None:
            span.end(error)
        return result

    def _send(self, pending: _Pending) -> None:
        assert self._channel is not None
        if pending.tried:
            self._republished += 1
        pending.sent = pending.tried = True
        self._channel.publish_then(pending.acked, pending.failed, *pending.args)

    def _failed(self, error: BaseException, pending: _Pending) -> None:
        if _retriable(error) and self.service.state != "closed":
            pending.sent = False  # held: published again on the next connection
            self._unsent += 1
            return
        self._forget(pending)
        pending.deferred.errback(error)

    def _forget(self, pending: _Pending) -> None:
        self._pending.pop(pending.number, None)

    def _state_changed(self, state: str) -> None:
        if state == "open" and self.at_least_once:
            self._flush()
        elif state == "closed":
            self._fail_held()

    def _reopened(self) -> None:
        self._watch()
        if self.service.state == "open" and self.at_least_once:
            self._flush()

    def _watch(self) -> None:
        """Tell the observer when the broker closes the current channel."""
        plain = self._channel.channel if self._channel is not None else None
        if self.observer is not None and plain is not None:
            plain.when_closed().addCallback(self._channel_closed)

    def _channel_closed(self, error: BaseException) -> None:
        if self.observer is not None and isinstance(error, ChannelClosedByBroker):
            self.observer.channel_closed(error.reply_code, error.reply_text)

    def _fail_held(self) -> None:
        """The service stopped: what is held will never be sent; say so (what is on the
        wire fails with `OutcomeUnknownError` as the connection closes)."""
        held = [pending for pending in self._pending.values() if not pending.sent]
        self._unsent = 0
        for pending in held:
            self._forget(pending)
            if pending.tried:
                error: Exception = OutcomeUnknownError(
                    "the service stopped before it could be published again")
            else:
                error = ServiceStopped("the service stopped before it was published")
            pending.deferred.errback(error)

    def _flush(self) -> None:
        channel = self._channel
        if channel is None or not channel.is_open or not self._unsent:
            return
        count = 0
        for pending in list(self._pending.values()):
            if not pending.sent:
                count += 1
                self._send(pending)
        self._unsent = 0
        log.info("published {count} held messages after recovery", count=count)


def _retriable(error: BaseException) -> bool:
    """True when a lost connection, not the broker, ended the publish: worth another try.

    NackError, UnroutableError, UsageError and a channel the broker closed (for example a
    missing exchange) are definite answers and are never retried.
    """
    if isinstance(error, OutcomeUnknownError):
        reason = error.reason
        return not isinstance(reason, ChannelClosed)
    if isinstance(error, (ConnectionRecovering, ConnectionClosed)):
        return True
    return not isinstance(error, AMQPError) and isinstance(error, ConnectionError)
