"""`Observer`: what txpika's services report, for metrics, health checks or your own logs.

`txpika.client.AMQPService`, `txpika.consumer.ConsumerService` and
`txpika.publisher.Publisher` take ``observer=`` (the consumer service and the publisher
default to their AMQP service's). They report:

- ``state_changed(state)``: every new state of the service (``"connecting"``, ``"open"``,
  ``"blocked"``, ``"recovering"``, ``"closed"``);
- ``recovered(broker)``: the service is open again after the loss of an open connection
  (``broker`` names the new one, without its password);
- ``channel_closed(reply_code, reply_text)``: the broker closed a channel of a consumer
  service or a publisher (it is reopened);
- ``consumer_state(queue, state)``: the consumer service is ``"starting"``,
  ``"consuming"``, ``"cancelled"`` (its consumer ended; it starts it again),
  ``"draining"`` or ``"stopped"``;
- ``delivered(queue)``: a delivery reached the consumer service;
- ``handler_started(queue)`` and ``handler_finished(queue, outcome, seconds, error)``:
  ``outcome`` is ``"ack"`` (success), ``"reject"`` or ``"requeue"`` (``error`` is then the
  handler's exception) or ``"dropped"`` (the delivery's connection was replaced: the
  broker requeued it);
- ``published(exchange, outcome, seconds)``: a publish of a `Publisher` has its answer,
  ``seconds`` after the call: ``"confirmed"``, ``"nacked"``, ``"returned"`` (unroutable,
  ``mandatory``), ``"unknown"`` (the connection was lost first) or ``"failed"`` (refused
  at once: recovering, stopped, too many pending).

Observers are called in the reactor thread, in the turn the event happens, and must not
block. An exception an observer raises propagates into txpika's code: do not raise. With no
observer attached nothing is reported and nothing is measured.

This module imports only `txpika.errors` (it sits in the lowest layer, with no Twisted):
observers can be written for any adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from txpika.errors import NackError, OutcomeUnknownError, UnroutableError

__all__ = ["Observer", "Observers"]


class Observer:
    """The observer interface: every method does nothing here. Subclass it and override
    what you need (see the module docstring for when each is called)."""

    def state_changed(self, state: str) -> None:
        """The AMQP service entered ``state``."""

    def recovered(self, broker: str) -> None:
        """The AMQP service is open again on ``broker`` after a lost connection."""

    def channel_closed(self, reply_code: int, reply_text: str) -> None:
        """The broker closed a channel of a consumer service or publisher."""

    def consumer_state(self, queue: str, state: str) -> None:
        """The consumer service of ``queue`` entered ``state``."""

    def delivered(self, queue: str) -> None:
        """A delivery from ``queue`` reached the consumer service."""

    def handler_started(self, queue: str) -> None:
        """A handler started on a delivery from ``queue``."""

    def handler_finished(self, queue: str, outcome: str, seconds: float,
                         error: BaseException | None) -> None:
        """A handler ended after ``seconds``; its delivery was settled per ``outcome``."""

    def published(self, exchange: str, outcome: str, seconds: float) -> None:
        """A publish to ``exchange`` got ``outcome`` after ``seconds``."""


class Observers(Observer):
    """Several observers as one: each event goes to each, in order."""

    def __init__(self, *observers: Observer) -> None:
        #: The observers each event goes to, in order.
        self.observers = list(observers)

    def state_changed(self, state: str) -> None:
        for observer in self.observers:
            observer.state_changed(state)

    def recovered(self, broker: str) -> None:
        for observer in self.observers:
            observer.recovered(broker)

    def channel_closed(self, reply_code: int, reply_text: str) -> None:
        for observer in self.observers:
            observer.channel_closed(reply_code, reply_text)

    def consumer_state(self, queue: str, state: str) -> None:
        for observer in self.observers:
            observer.consumer_state(queue, state)

    def delivered(self, queue: str) -> None:
        for observer in self.observers:
            observer.delivered(queue)

    def handler_started(self, queue: str) -> None:
        for observer in self.observers:
            observer.handler_started(queue)

    def handler_finished(self, queue: str, outcome: str, seconds: float,
                         error: BaseException | None) -> None:
        for observer in self.observers:
            observer.handler_finished(queue, outcome, seconds, error)

    def published(self, exchange: str, outcome: str, seconds: float) -> None:
        for observer in self.observers:
            observer.published(exchange, outcome, seconds)


def publish_outcome(error: BaseException | None) -> str:
    """The ``published`` outcome of a publish that succeeded (``None``) or failed."""
    if error is None:
        return "confirmed"
    if isinstance(error, NackError):
        return "nacked"
    if isinstance(error, UnroutableError):
        return "returned"
    if isinstance(error, OutcomeUnknownError):
        return "unknown"
    return "failed"


class _Service(Protocol):
    @property
    def current_broker(self) -> str | None: ...


def state_listener(observer: Observer, service: _Service) -> Callable[[str], None]:
    """A state listener for ``service`` that reports each state to ``observer``, and a
    recovery when the state leaves ``"recovering"`` for ``"open"`` or ``"blocked"``."""
    previous = [""]

    def changed(state: str) -> None:
        observer.state_changed(str(state))
        if previous[0] == "recovering" and state in ("open", "blocked"):
            observer.recovered(service.current_broker or "")
        previous[0] = state

    return changed
