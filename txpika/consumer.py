"""`ConsumerService`: consume a queue with a handler, bounded concurrency and a clean drain.

The service consumes through a `txpika.robust.RobustChannel` of an
`txpika.client.AMQPService`, so it starts again on every new connection. For each message
it runs ``handler(message)``, which may return ``None``, a Deferred or a coroutine; at most
``concurrency`` run at once (the rest wait, bounded by ``prefetch``). Success acks the
message; a failure (or a handler running past ``handler_timeout``) rejects it, requeued
with ``on_error="requeue"`` (the default) or not with ``"reject"`` (then it goes to the
queue's dead-letter exchange, if it has one). An ack for a delivery from a connection
that has since been replaced is dropped with a log line, never sent on the new channel:
the broker has already requeued that delivery.

``stopService`` stops taking deliveries (``basic.cancel``), lets running handlers finish
for up to ``drain_timeout`` seconds, requeues what was received but not started, and
closes the channel. Nothing acked is lost and nothing unacked is dropped: the broker
redelivers whatever was not acked.

A handler that runs past the broker's ``consumer_timeout`` (RabbitMQ's ack timeout, 30
minutes by default) makes the broker close the channel with 406 PRECONDITION_FAILED; the
service logs one warning naming that setting and how long the handler had run, and the
channel is reopened: the broker redelivers the message. Keep ``handler_timeout`` below
``consumer_timeout``. ``observer`` (`txpika.observe.Observer`, default: the AMQP
service's) hears deliveries, handler outcomes and durations and the service's own
`state`; ``tracing`` (`txpika.tracing.Tracing`) runs each handler in an OpenTelemetry
CONSUMER span.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txpika.channel import Message
from txpika.client import AMQPService
from txpika.errors import ChannelClosedByBroker
from txpika.observe import Observer
from txpika.robust import RobustChannel, RobustConsumer

if TYPE_CHECKING:
    from txpika.tracing import Tracing

__all__ = ["ConsumerService", "Handler"]

#: The logger of the consumer service (namespace ``txpika.consumer``).
log = Logger()

#: A message handler: returns None, a Deferred or a coroutine.
Handler = Callable[[Message], "Deferred[Any] | Coroutine[Any, Any, Any] | None"]


class ConsumerService(Service):
    """Consume ``queue`` on ``service`` with ``handler``. See the module docstring.

    ``declare`` declares the queue (durable, not exclusive, not auto-delete; with
    ``queue_arguments``, for example ``{"x-queue-type": "quorum"}``) and ``bindings`` binds
    it: ``[(exchange, routing_key), ...]``.
    """

    def __init__(
        self,
        service: AMQPService,
        queue: str,
        handler: Handler,
        *,
        prefetch: int = 50,
        concurrency: int = 10,
        on_error: str = "requeue",
        declare: bool = False,
        bindings: Sequence[tuple[str, str]] = (),
        handler_timeout: float | None = None,
        drain_timeout: float = 30.0,
        clock: IReactorTime | None = None,
        queue_arguments: Mapping[str, Any] | None = None,
        observer: Observer | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        if on_error not in ("requeue", "reject"):
            raise ValueError(f"on_error must be 'requeue' or 'reject', not {on_error!r}")
        if concurrency < 1 or prefetch < 0:
            raise ValueError("concurrency must be at least 1 and prefetch not negative")
        #: The `txpika.client.AMQPService` it consumes through.
        self.amqp = service
        #: The queue it consumes.
        self.queue = queue
        #: The handler each message is passed to.
        self.handler = handler
        #: The prefetch count (unacked messages the broker may send ahead).
        self.prefetch = prefetch
        #: How many handlers may run at once.
        self.concurrency = concurrency
        #: ``requeue`` or ``reject``: what a failed handler does to its message.
        self.on_error = on_error
        #: Declare the queue (durable) before consuming.
        self.declare = declare
        #: (exchange, routing key) pairs the queue is bound with.
        self.bindings = list(bindings)
        #: Seconds after which a running handler has failed, or ``None``.
        self.handler_timeout = handler_timeout
        #: Seconds running handlers may take to finish on shutdown.
        self.drain_timeout = drain_timeout
        #: The clock timeouts run on.
        self.clock: IReactorTime = clock or service.clock
        #: Arguments of the queue's declaration (``x-queue-type`` and the like), or ``None``.
        self.queue_arguments = dict(queue_arguments) if queue_arguments else None
        #: The `txpika.observe.Observer` told of deliveries and handler outcomes, or ``None``.
        self.observer = observer if observer is not None else getattr(
            service, "observer", None)
        #: The `txpika.tracing.Tracing` that runs each handler in a CONSUMER span, or ``None``.
        self.tracing = tracing
        # Anything to report? Decided once: the fast path tests this one flag.
        self._observed = self.observer is not None or tracing is not None
        #: ``"stopped"``, ``"starting"``, ``"consuming"``, ``"cancelled"`` or ``"draining"``.
        self.state = "stopped"
        self._channel: RobustChannel | None = None
        self._consumer: RobustConsumer | None = None
        self._waiting: deque[Message] = deque()
        self._running: dict[Deferred[Any], tuple[Message, float]] = {}  # -> when it began
        self._stopping = False
        self._starting: Deferred[Any] | None = None
        self._stop_d: Deferred[None] | None = None
        # The AMQP service waits for our drain before it closes the connection.
        service.add_dependent(self)
        #: Counts, for monitoring: handled (acked), failed, dropped acks.
        self.stats = {"acked": 0, "failed": 0, "stale_acks": 0}

    def __repr__(self) -> str:
        return f"<ConsumerService {self.queue!r} running={len(self._running)}>"

    @property
    def in_flight(self) -> int:
        """Handlers running now."""
        return len(self._running)

    # -- IService ------------------------------------------------------------------------------

    def startService(self) -> None:
        """``IService``: start consuming once the service is open (declaring and binding first if
        asked); returns at once."""
        super().startService()  # type: ignore[no-untyped-call]
        self._stop_d = None
        self._stopping = False
        self._set_state("starting")
        self._starting = ensureDeferred(self._start())
        self._starting.addErrback(self._start_failed)

    def stopService(self) -> Deferred[None]:
        """Stop consuming, drain (up to ``drain_timeout``), close the channel. Fires with
        ``None`` when done; never fails."""
        if self._stop_d is None:
            super().stopService()  # type: ignore[no-untyped-call]
            self._stopping = True
            self._stop_d = ensureDeferred(self._stop())
        return self._stop_d

    # -- internals ---------------------------------------------------------------------------

    async def _start(self) -> None:
        from twisted.internet.task import deferLater

        from txpika.errors import ConnectionRecovering, ServiceStopped

        while self.running:
            channel: RobustChannel | None = None
            try:
                channel = await self.amqp.channel()
                if self.declare:
                    await channel.queue_declare(self.queue, durable=True, exclusive=False,
                                                auto_delete=False,
                                                arguments=self.queue_arguments)
                for exchange, routing_key in self.bindings:
                    await channel.queue_bind(self.queue, exchange, routing_key)
                await channel.basic_qos(prefetch_count=self.prefetch)
                # cancelled by the broker (queue deleted, node failover): consume again
                self._consumer = await channel.basic_consume(self.queue, self._on_message,
                                                             on_cancel="reconsume")
                self._channel = channel
                self._consumer.when_closed().addCallback(self._consumer_ended,
                                                        self._consumer)
                self._watch(channel)
                channel.add_reopen_listener(partial(self._watch, channel))
                self._set_state("consuming")
                log.info("consuming {queue!r} (prefetch {prefetch}, concurrency "
                         "{concurrency})", queue=self.queue, prefetch=self.prefetch,
                         concurrency=self.concurrency)
                return
            except ServiceStopped:
                raise
            except Exception as exc:
                if channel is not None:
                    channel.close().addErrback(lambda f: None)
                if not self.running:
                    return
                if not isinstance(exc, ConnectionRecovering):
                    log.error("could not start consuming {queue!r}: {error}; retrying",
                              queue=self.queue, error=exc)
                await deferLater(self.clock, 1.0)  # type: ignore[arg-type,unused-ignore]

    def _consumer_ended(self, reason: BaseException, consumer: RobustConsumer) -> None:
        """Our consumer ended for good while we run (its queue went away and could not be
        consumed again): start over, as at startup, until it works or we stop."""
        if consumer is not self._consumer or not self.running or self._stopping:
            return
        log.warn("consumer on {queue!r} ended ({reason}); starting it again",
                 queue=self.queue, reason=reason)
        self._set_state("cancelled")
        self._consumer = None
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close().addErrback(lambda f: None)
        self._starting = ensureDeferred(self._start())
        self._starting.addErrback(self._start_failed)

    def _start_failed(self, failure: Any) -> None:
        from txpika.errors import ServiceStopped

        if failure.check(ServiceStopped) is not None and not self.running:
            # Stopped (SIGTERM, say) before the first connection opened: a normal stop.
            log.info("consumer service for {queue!r} stopped before it started consuming",
                     queue=self.queue)
            return
        log.failure("consumer service for {queue!r} stopped trying", failure,
                    queue=self.queue)

    def _set_state(self, state: str) -> None:
        self.state = state
        if self.observer is not None:
            self.observer.consumer_state(self.queue, state)

    def _watch(self, channel: RobustChannel) -> None:
        plain = channel.channel
        if plain is not None:
            plain.when_closed().addCallback(self._channel_closed, plain)

    def _channel_closed(self, error: BaseException, plain: object) -> None:
        if not isinstance(error, ChannelClosedByBroker):
            return
        if self.observer is not None:
            self.observer.channel_closed(error.reply_code, error.reply_text)
        text = error.reply_text.lower()
        if error.reply_code == 406 and "acknowledgement" in text and "timed out" in text:
            now = self.clock.seconds()
            ages = [now - began for message, began in self._running.values()
                    if message.channel is plain]
            log.warn("the broker closed the channel of {queue!r}: a handler ran past the "
                     "broker's consumer_timeout (its delivery acknowledgement timeout; the "
                     "longest running handler has run {seconds:.1f} s): {text}. The channel "
                     "is reopened and the broker redelivers the message; raise "
                     "consumer_timeout or keep handler_timeout (--handler-timeout) below it",
                     queue=self.queue, seconds=max(ages, default=0.0),
                     text=error.reply_text)

    def _on_message(self, message: Message) -> None:
        if self._observed and self.observer is not None:
            self.observer.delivered(self.queue)
        if self._stopping:
            self._settle(message, "reject", requeue=True)
            return
        if len(self._running) >= self.concurrency:
            self._waiting.append(message)
            return
        self._run(message)

    def _run(self, message: Message) -> None:
        if self._observed:
            self._run_observed(message)
            return
        try:
            result: object = self.handler(message)
        except Exception:
            self._done(message, Failure())  # type: ignore[no-untyped-call]
            return
        if result is None or not isinstance(result, (Deferred, Coroutine)):
            # The usual handler: done when it returns. No Deferred, no bookkeeping.
            self._done(message, None)
            return
        d: Deferred[Any] = result if isinstance(result, Deferred) else ensureDeferred(result)
        self._track(message, d, self.clock.seconds(), None)

    def _run_observed(self, message: Message) -> None:
        """`_run` with the observer told and the handler in a tracing span."""
        began = self.clock.seconds()
        if self.observer is not None:
            self.observer.handler_started(self.queue)
        span = self.tracing.consuming(message, self.queue) if self.tracing is not None else None
        try:
            if span is not None:
                with span.active():  # a coroutine started here keeps the span's context
                    result: object = _call(self.handler, message)
            else:
                result = _call(self.handler, message)
        except Exception:
            self._done(message, Failure(), began, span)  # type: ignore[no-untyped-call]
            return
        if not isinstance(result, Deferred):
            self._done(message, None, began, span)
            return
        self._track(message, result, began, span)

    def _track(self, message: Message, d: Deferred[Any], began: float, span: Any) -> None:
        if self.handler_timeout is not None:
            d.addTimeout(self.handler_timeout, self.clock)
        self._running[d] = (message, began)
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(message, d, began, span),
                       errbackArgs=(message, d, began, span))

    def _succeeded(self, result: object, message: Message, d: Deferred[Any], began: float,
                   span: Any) -> None:
        self._done(message, None, began, span)
        self._finished(d)

    def _failed(self, failure: Failure, message: Message, d: Deferred[Any], began: float,
                span: Any) -> None:
        self._done(message, failure, began, span)
        self._finished(d)

    def _done(self, message: Message, failure: Failure | None, began: float = 0.0,
              span: Any = None) -> None:
        if failure is None:
            self.stats["acked"] += 1
            outcome = self._settle(message, "ack")
            if self._observed:
                self._report(outcome, began, None, span)
            return
        self.stats["failed"] += 1
        # A handler cut off by the drain deadline did nothing wrong: always requeue it.
        requeue = self.on_error == "requeue" or (
            self._stopping and isinstance(failure.value, CancelledError))
        log.failure("handler failed on delivery {tag} from {queue!r}; {action}", failure,
                    tag=message.delivery_tag, queue=self.queue,
                    action="requeueing" if requeue else "rejecting")
        outcome = self._settle(message, "reject", requeue=requeue)
        if self._observed:
            self._report(outcome, began, failure.value, span)

    def _report(self, outcome: str, began: float, error: BaseException | None,
                span: Any) -> None:
        if self.observer is not None:
            self.observer.handler_finished(self.queue, outcome, self.clock.seconds() - began,
                                           error)
        if span is not None:
            span.end(error)

    def _settle(self, message: Message, how: str, requeue: bool = True) -> str:
        """Ack or reject; the outcome: ``"ack"``, ``"reject"``, ``"requeue"``, ``"dropped"``."""
        channel = message.channel
        if channel is None or not channel.is_open:
            self.stats["stale_acks"] += 1
            log.info("dropping {how} of delivery {tag}: its channel was closed or replaced "
                     "(the broker requeued it)", how=how, tag=message.delivery_tag)
            return "dropped"
        d = message.ack() if how == "ack" else message.reject(requeue=requeue)
        d.addErrback(self._settle_failed, how, message.delivery_tag)
        return how if how == "ack" or not requeue else "requeue"

    def _settle_failed(self, failure: Failure, how: str, tag: int) -> None:
        log.warn("could not {how} delivery {tag}: {error}", how=how, tag=tag,
                 error=failure.value)

    def _finished(self, d: Deferred[Any]) -> None:
        self._running.pop(d, None)
        while self._waiting and len(self._running) < self.concurrency:
            message = self._waiting.popleft()
            if self._stopping:
                self._settle(message, "reject", requeue=True)
            elif message.channel is None or not message.channel.is_open:
                # the broker requeued it with its connection: the new one redelivers it
                log.info("skipping delivery {tag} from {queue!r}: its connection was "
                         "replaced", tag=message.delivery_tag, queue=self.queue)
            else:
                self._run(message)

    async def _stop(self) -> None:
        self._set_state("draining")
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await consumer.cancel()
            except Exception as exc:
                log.info("could not cancel the consumer cleanly: {error}", error=exc)
        waiting, self._waiting = self._waiting, deque()
        for message in waiting:
            self._settle(message, "reject", requeue=True)
        if self._running:
            log.info("draining {count} running handlers (up to {timeout} s)",
                     count=len(self._running), timeout=self.drain_timeout)
            running = len(self._running)
            drained: Deferred[Any] = DeferredList(list(self._running), consumeErrors=True)
            drained.addTimeout(self.drain_timeout, self.clock)
            try:
                await drained
            except Exception:
                # The timeout cancelled the handlers still running; each was requeued.
                log.warn("handlers were still running after {timeout} s: cancelled them "
                         "and requeued their messages ({count} running when draining began)",
                         count=running, timeout=self.drain_timeout)
        channel, self._channel = self._channel, None
        if channel is not None:
            try:
                await channel.close()
            except Exception as exc:
                log.info("could not close the channel cleanly: {error}", error=exc)
        log.info("stopped consuming {queue!r}", queue=self.queue)
        self._set_state("stopped")


def _call(handler: Handler, message: Message) -> object:
    """Call the handler; a coroutine it returns becomes a Deferred (started here)."""
    result: object = handler(message)
    if isinstance(result, Coroutine):
        return ensureDeferred(result)
    return result
