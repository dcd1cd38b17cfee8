"""`Channel`, `Consumer` and `Message`: the Deferred-returning AMQP API.

Every method returns a Deferred that fires exactly once: with the typed ``-Ok`` method
(``ok.queue``, ``ok.message_count``...), or with a specific error: the
`txpika.errors.ChannelClosed` or `txpika.errors.ConnectionClosed` that ended the channel,
`twisted.internet.defer.TimeoutError` when ``timeout`` (seconds) passes, or
`twisted.internet.defer.CancelledError` when the caller cancels it. A call that cannot be
sent (bad arguments, closed channel) returns an already failed Deferred; it never raises.
Replies of calls that timed out or were cancelled are absorbed, so the channel stays
consistent. Channels are not thread-safe: use them from the reactor thread.

The bookkeeping is the channel layer's (`txpika._chanbook.ChannelBook`), shared with the
other adapters; this module turns its results into Deferreds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from txpika import spec
from txpika._chanbook import Call, ChannelBook, ConsumerEntry
from txpika._consumer import ConsumerBase, MessageCallback, Reading
from txpika._outbox import Outbox, Unsent
from txpika._requests import Request, Requests
from txpika._specbase import Properties
from txpika.errors import FlowControlError
from txpika.message import DeferredSettling

__all__ = ["Channel", "ChannelPort", "Consumer", "Message"]

T = TypeVar("T")
_Args = Mapping[str, Any] | None


#: What `Channel._queue` returns for a publish held while the transport pushes back.
_HELD = -1


class Message(DeferredSettling):
    """A message the broker delivered (``basic.deliver``), fetched (``basic.get-ok``) or
    returned (``basic.return``); see `txpika.message.DeferredSettling` for ``ack``,
    ``nack`` and ``reject``."""

    __slots__ = ()

    #: The channel it came on; ``None`` for a message a test built by hand.
    channel: Channel | None


class Consumer(ConsumerBase[Message]):
    """A consumer on a queue; see `txpika._consumer.ConsumerBase`."""

    #: The channel the consumer was started on.
    channel: Channel


class ChannelPort(Reading, Protocol):
    """What a channel needs of its connection (`txpika.protocol.AMQPProtocol` gives it):
    its clock, output, flow policy, reading, and the end of its batches of events."""

    @property
    def clock(self) -> IReactorTime:
        """The clock timeouts run on."""

    @property
    def outbox(self) -> Outbox:
        """The connection's output on its way to the transport."""

    @property
    def flow_policy(self) -> str:
        """``"wait"`` or ``"raise"``: what a publish does while the broker blocks."""

    @property
    def blocked_reason(self) -> str:
        """The broker's reason for blocking publishers, or ``""``."""


class _Drop:
    """Cancelling a publish that waits (for flow control, or for the transport) drops it:
    it is then never sent."""

    __slots__ = ("held", "unsent")

    def __init__(self) -> None:
        self.held: Any = None
        self.unsent: Unsent | None = None

    def __call__(self, d: Deferred[None]) -> None:
        if self.held is not None:
            self.held.drop()
        if self.unsent is not None:
            self.unsent.drop()


class Channel:
    """One AMQP channel; get it from `txpika.protocol.AMQPProtocol.channel`.

    Every method that returns a Deferred fires it exactly once. Besides the failures each
    method names, any of them fails with:

    - the `txpika.errors.ChannelClosed` that closed the channel (a
      `txpika.errors.ChannelClosedByBroker` subclass for the broker's channel error, such as
      `txpika.errors.NotFound`, or `txpika.errors.ChannelClosedByClient` after `close`), or
      the `txpika.errors.ConnectionClosed` that ended the connection;
    - `twisted.internet.defer.TimeoutError` when ``timeout`` (seconds) passes, and
      `twisted.internet.defer.CancelledError` when the caller cancels the Deferred (the
      broker's late reply is absorbed);
    - `txpika.errors.UsageError` for a call that cannot be sent (an argument that cannot be
      encoded, a method the dialect lacks); the Deferred is then already failed, nothing was
      sent, and the method never raises.

    Channels are not thread-safe: use them from the reactor thread.
    """

    def __init__(self, port: ChannelPort, book: ChannelBook, requests: Requests) -> None:
        self._port = port
        self._book = book
        self._req = requests
        #: The channel's number on its connection.
        self.channel_number = book.number
        self._closing = False

    def __repr__(self) -> str:
        return f"<Channel {self.channel_number} {'open' if self._book.is_open else 'closed'}>"

    # -- state ------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True until the channel or its connection closes."""
        return self._book.is_open

    @property
    def flow_active(self) -> bool:
        """False while the broker stops publishers: ``channel.flow`` or ``connection.blocked``."""
        return self._book.flow_active

    def when_closed(self) -> Deferred[BaseException]:
        """A new Deferred that fires (never fails) with the error that closed the channel:
        `txpika.errors.ChannelClosedByClient` after `close`, the broker's channel error, or
        the connection's error."""
        d: Deferred[BaseException] = Deferred()
        self._book.when_closed(d.callback)
        return d

    def add_flow_listener(self, callback: Callable[[bool], object]) -> None:
        """Call ``callback(active)`` in the same turn as each change of `flow_active`."""
        self._book.add_flow_listener(callback)

    def remove_flow_listener(self, callback: Callable[[bool], object]) -> None:
        """Stop calling ``callback``."""
        self._book.remove_flow_listener(callback)

    # -- exchanges ----------------------------------------------------------------------------

    def exchange_declare(
        self, exchange: str, exchange_type: str = "direct", passive: bool = False,
        durable: bool = False, auto_delete: bool = False, internal: bool = False,
        arguments: _Args = None, timeout: float | None = None,
    ) -> Deferred[spec.Exchange.DeclareOk]:
        """Declare an exchange. Fires with `spec.Exchange.DeclareOk`; fails with
        `txpika.errors.NotFound` (passive, missing), `txpika.errors.PreconditionFailed`
        (declared differently before), or as the module docstring says."""
        return self._call(self._req.exchange_declare(
            exchange, exchange_type, passive, durable, auto_delete, internal, arguments),
            timeout)

    def exchange_delete(self, exchange: str, if_unused: bool = False,
                        timeout: float | None = None) -> Deferred[spec.Exchange.DeleteOk]:
        """Delete an exchange. Fires with `spec.Exchange.DeleteOk`; fails with
        `txpika.errors.PreconditionFailed` (``if_unused`` and bound)."""
        return self._call(self._req.exchange_delete(exchange, if_unused), timeout)

    def exchange_bind(self, destination: str, source: str, routing_key: str = "",
                      arguments: _Args = None,
                      timeout: float | None = None) -> Deferred[spec.Exchange.BindOk]:
        """Bind exchange ``destination`` to ``source`` (RabbitMQ extension, 0-9-1 only).
        Fires with `spec.Exchange.BindOk`; fails with `txpika.errors.NotFound`, or
        `txpika.errors.UsageError` on 0-8."""
        return self._call(self._req.exchange_bind(destination, source, routing_key,
                                                  arguments), timeout)

    def exchange_unbind(self, destination: str, source: str, routing_key: str = "",
                        arguments: _Args = None,
                        timeout: float | None = None) -> Deferred[spec.Exchange.UnbindOk]:
        """Remove an exchange binding. Fires with `spec.Exchange.UnbindOk`; fails as
        `exchange_bind` does."""
        return self._call(self._req.exchange_unbind(destination, source, routing_key,
                                                    arguments), timeout)

    # -- queues -------------------------------------------------------------------------------

    def queue_declare(
        self, queue: str = "", passive: bool = False, durable: bool = False,
        exclusive: bool | None = None, auto_delete: bool | None = None,
        arguments: _Args = None, timeout: float | None = None,
    ) -> Deferred[spec.Queue.DeclareOk]:
        """Declare a queue. Fires with `spec.Queue.DeclareOk` (``queue``, ``message_count``,
        ``consumer_count``). A server-named queue (``queue=""``) defaults to exclusive and
        auto-delete; a named one to neither. Fails with `txpika.errors.NotFound` (passive,
        missing), `txpika.errors.ResourceLocked` (exclusive elsewhere) or
        `txpika.errors.PreconditionFailed` (declared differently)."""
        return self._call(self._req.queue_declare(queue, passive, durable, exclusive,
                                                  auto_delete, arguments), timeout)

    def queue_bind(self, queue: str, exchange: str, routing_key: str = "",
                   arguments: _Args = None,
                   timeout: float | None = None) -> Deferred[spec.Queue.BindOk]:
        """Bind a queue to an exchange. Fires with `spec.Queue.BindOk`; fails with
        `txpika.errors.NotFound` if either is missing."""
        return self._call(self._req.queue_bind(queue, exchange, routing_key, arguments),
                          timeout)

    def queue_unbind(self, queue: str, exchange: str, routing_key: str = "",
                     arguments: _Args = None,
                     timeout: float | None = None) -> Deferred[spec.Queue.UnbindOk]:
        """Remove a queue binding. Fires with `spec.Queue.UnbindOk`."""
        return self._call(self._req.queue_unbind(queue, exchange, routing_key, arguments),
                          timeout)

    def queue_purge(self, queue: str,
                    timeout: float | None = None) -> Deferred[spec.Queue.PurgeOk]:
        """Remove every ready message. Fires with `spec.Queue.PurgeOk` (``message_count``)."""
        return self._call(self._req.queue_purge(queue), timeout)

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False,
                     timeout: float | None = None) -> Deferred[spec.Queue.DeleteOk]:
        """Delete a queue. Fires with `spec.Queue.DeleteOk` (``message_count``); fails with
        `txpika.errors.PreconditionFailed` (``if_unused``/``if_empty`` not met)."""
        return self._call(self._req.queue_delete(queue, if_unused, if_empty), timeout)

    # -- basic --------------------------------------------------------------------------------

    def basic_qos(self, prefetch_count: int = 0, prefetch_size: int = 0,
                  global_qos: bool = False,
                  timeout: float | None = None) -> Deferred[spec.Basic.QosOk]:
        """Limit unacked deliveries (per consumer unless ``global_qos``). Fires with
        `spec.Basic.QosOk`."""
        return self._call(self._req.basic_qos(prefetch_count, prefetch_size, global_qos),
                          timeout)

    def basic_consume(
        self, queue: str, on_message_callback: MessageCallback[Message] | None = None,
        auto_ack: bool = False, exclusive: bool = False, consumer_tag: str | None = None,
        arguments: _Args = None, timeout: float | None = None,
        max_buffer: int | None = None,
    ) -> Deferred[Consumer]:
        """Start a consumer. Fires with a `Consumer` once ``basic.consume-ok`` arrives.

        With ``on_message_callback`` each `Message` is passed to it (it may return a
        Deferred or a coroutine; failures are logged). Without, pull messages with
        ``Consumer.get()`` or ``async for``. Fails with `txpika.errors.NotFound`,
        `txpika.errors.AccessRefused` (exclusive consumer elsewhere) and as usual.
        """
        def make(tag: str) -> tuple[Consumer, ConsumerEntry]:
            consumer = Consumer(self, tag, queue, on_message_callback, auto_ack, self._port,
                                max_buffer)
            return consumer, ConsumerEntry(tag, auto_ack, consumer._deliver, consumer._end)

        request = self._req.basic_consume(queue, consumer_tag, auto_ack, exclusive, arguments)
        return self._track(lambda d: self._book.consume(request, auto_ack, make, d.callback,
                                                        d.errback), timeout)

    def basic_cancel(self, consumer_tag: str,
                     timeout: float | None = None) -> Deferred[spec.Basic.CancelOk]:
        """Cancel a consumer. Fires with `spec.Basic.CancelOk`; the consumer's pull side then
        ends normally (``async for`` stops)."""
        request = self._req.basic_cancel(consumer_tag)
        return self._track(lambda d: self._book.cancel(request, d.callback, d.errback),
                           timeout)

    def basic_publish(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, mandatory: bool = False,
        timeout: float | None = None,
    ) -> Deferred[None]:
        """Publish a message.

        Without confirms, fires with ``None`` as soon as the transport accepted the frames:
        at once, unless the transport is over its high-water mark, when it waits; while the
        broker blocks publishers and the flow policy is ``"wait"``, the publish is held (and
        so are later calls on this channel, to keep their order) until the broker lets it
        go on. In confirm mode it fires on the broker's ack, or fails with
        `txpika.errors.NackError`, `txpika.errors.UnroutableError` (``mandatory`` and
        unroutable; ``.message`` is what came back) or `txpika.errors.OutcomeUnknownError`
        (the channel or connection closed first). With the ``"raise"`` flow policy it fails
        at once with `txpika.errors.FlowControlError` while the broker blocks publishers.
        """
        book = self._book
        if book.error is not None:
            return fail(book.error)
        if book.holding:
            if not book.flow_active and self._port.flow_policy == "raise":
                return fail(FlowControlError(
                    f"the broker stopped publishers ({self._port.blocked_reason or 'flow'})"))
            drop = _Drop()
            d: Deferred[None] = Deferred(drop)
            drop.held = book.hold(lambda: self._publish(exchange, routing_key, body,
                                                        properties, mandatory, d, drop),
                                  d.errback)
        else:
            d = self._publish(exchange, routing_key, body, properties, mandatory, None, None)
        if timeout is not None:
            d.addTimeout(timeout, self._port.clock)
        return d

    def publish_then(self, resolve: Callable[[None], object],
                     reject: Callable[[BaseException], object], exchange: str,
                     routing_key: str, body: bytes, properties: Properties | None = None,
                     mandatory: bool = False) -> None:
        """`basic_publish` with callbacks instead of a Deferred, for code that publishes
        many messages and keeps its own record of each (`txpika.Publisher` does):
        ``resolve(None)`` runs when `basic_publish`'s Deferred would fire, and
        ``reject(error)`` when it would fail, with the same errors."""
        book = self._book
        if book.error is not None or book.holding:
            d = self.basic_publish(exchange, routing_key, body, properties, mandatory)
            d.addCallbacks(resolve, lambda failure: reject(failure.value))
            return
        try:
            tag = self._queue(exchange, routing_key, body, properties, mandatory)
        except Exception as exc:
            reject(exc)
            return
        if tag > 0:
            book.expect_confirm(tag, resolve, reject)
            self._port.outbox.flush()
        elif tag == _HELD:
            self._port.outbox.hold_publish(resolve, reject)
        else:
            resolve(None)

    def basic_get(self, queue: str, auto_ack: bool = False,
                  timeout: float | None = None) -> Deferred[Message | None]:
        """Fetch one message. Fires with a `Message`, or ``None`` if the queue is empty."""
        return self._call(self._req.basic_get(queue, auto_ack), timeout)

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> Deferred[None]:
        """Acknowledge a delivery. Fires with ``None`` once written; fails with
        `txpika.errors.UsageError` if it does not await an ack (nothing is sent)."""
        return self._settle("ack", delivery_tag, multiple, True)

    def basic_nack(self, delivery_tag: int = 0, multiple: bool = False,
                   requeue: bool = True) -> Deferred[None]:
        """Negatively acknowledge deliveries; as `basic_ack`."""
        return self._settle("nack", delivery_tag, multiple, requeue)

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> Deferred[None]:
        """Reject a delivery; as `basic_ack`."""
        return self._settle("reject", delivery_tag, False, requeue)

    def basic_recover(self, requeue: bool = True,
                      timeout: float | None = None) -> Deferred[spec.Basic.RecoverOk]:
        """Redeliver unacked messages. Fires with `spec.Basic.RecoverOk`."""
        return self._call(self._req.basic_recover(requeue), timeout)

    def confirm_select(self, timeout: float | None = None) -> Deferred[spec.Confirm.SelectOk]:
        """Turn on publisher confirms. Fires with `spec.Confirm.SelectOk`; on 0-8 fails with
        `txpika.errors.UsageError`."""
        return self._call(self._req.confirm_select(), timeout)

    def tx_select(self, timeout: float | None = None) -> Deferred[spec.Tx.SelectOk]:
        """Start transactions. Fires with `spec.Tx.SelectOk`."""
        return self._call(self._req.tx_select(), timeout)

    def tx_commit(self, timeout: float | None = None) -> Deferred[spec.Tx.CommitOk]:
        """Commit. Fires with `spec.Tx.CommitOk`."""
        return self._call(self._req.tx_commit(), timeout)

    def tx_rollback(self, timeout: float | None = None) -> Deferred[spec.Tx.RollbackOk]:
        """Roll back. Fires with `spec.Tx.RollbackOk`."""
        return self._call(self._req.tx_rollback(), timeout)

    def flow(self, active: bool, timeout: float | None = None) -> Deferred[spec.Channel.FlowOk]:
        """Ask the broker to pause (False) or resume (True) deliveries on this channel.
        Fires with `spec.Channel.FlowOk`. (RabbitMQ refuses ``active=False`` with 540.)"""
        return self._call(self._req.flow(active), timeout)

    def close(self, reply_code: int = 200, reply_text: str = "Normal close") -> Deferred[None]:
        """Close the channel. Fires with ``None`` once the broker confirmed; pending calls
        fail with `txpika.errors.ChannelClosedByClient`. Closing twice is harmless."""
        d: Deferred[None] = Deferred()
        self._book.when_closed(lambda error: d.callback(None))
        if not self._closing and self._book.is_open:
            self._closing = True
            self._book.close(reply_code, reply_text)
        return d

    # -- internals ------------------------------------------------------------------------------

    def _call(self, request: Request[T], timeout: float | None) -> Deferred[T]:
        return self._track(lambda d: self._book.call(request, d.callback, d.errback),
                           timeout)

    def _track(self, send: Callable[[Deferred[Any]], Call], timeout: float | None
               ) -> Deferred[Any]:
        """A Deferred for the call ``send`` makes; cancelling it (or its timeout) abandons
        the call, whose reply the book then absorbs."""
        call: Call | None = None

        def cancel(d: Deferred[Any]) -> None:
            if call is not None:
                self._book.abandon(call)

        d: Deferred[Any] = Deferred(cancel)
        try:
            call = send(d)
        except Exception as exc:
            return fail(exc)
        if timeout is not None and not d.called:
            d.addTimeout(timeout, self._port.clock)
        return d

    def _settle(self, how: str, delivery_tag: int, multiple: bool,
                requeue: bool) -> Deferred[None]:
        try:
            self._book.settle(how, delivery_tag, multiple, requeue)
        except Exception as exc:
            return fail(exc)
        return succeed(None)

    def _publish(self, exchange: str, routing_key: str, body: bytes,
                 properties: Properties | None, mandatory: bool,
                 waiter: Deferred[None] | None, drop: _Drop | None) -> Deferred[None]:
        try:
            tag = self._queue(exchange, routing_key, body, properties, mandatory)
        except Exception as exc:
            if waiter is not None:
                waiter.errback(exc)
                return waiter
            return fail(exc)
        if tag > 0:
            d: Deferred[None] = waiter or Deferred()
            self._book.expect_confirm(tag, d.callback, d.errback)
            self._port.outbox.flush()
            return d
        if tag == _HELD:
            if waiter is None or drop is None:
                drop = _Drop()
                waiter = Deferred(drop)
            drop.unsent = self._port.outbox.hold_publish(waiter.callback, waiter.errback)
            return waiter
        if waiter is not None:  # accepted: it fires now
            waiter.callback(None)
            return waiter
        return succeed(None)

    def _queue(self, exchange: str, routing_key: str, body: bytes,
               properties: Properties | None, mandatory: bool) -> int:
        """Queue a publish in the core (raising what the channel book raises). Returns its
        confirm tag in confirm mode (the caller records it, then flushes); `_HELD` while
        the transport pushes back (the caller holds the publish as one unit,
        `Outbox.hold_publish`); else 0, flushed (the write may wait for the end of a
        batch)."""
        outbox = self._port.outbox
        hold = outbox.before_publish()
        tag = self._book.publish(exchange, routing_key, body, properties, mandatory)
        if tag:
            return tag
        if hold:
            return _HELD
        outbox.flush()
        return 0
