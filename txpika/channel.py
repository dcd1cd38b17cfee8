"""`Channel` and `Consumer`: the Deferred-returning AMQP API.

Every method returns a Deferred that fires exactly once: with the typed ``-Ok`` method
(``ok.queue``, ``ok.message_count``...), or with a specific error: the
`txpika.errors.ChannelClosed` or `txpika.errors.ConnectionClosed` that ended the channel,
`twisted.internet.defer.TimeoutError` when ``timeout`` (seconds) passes, or
`twisted.internet.defer.CancelledError` when the caller cancels it. A call that cannot be
sent (bad arguments, closed channel) returns an already failed Deferred; it never raises.
Replies of calls that timed out or were cancelled are absorbed, so the channel stays
consistent. Channels are not thread-safe: use them from the reactor thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txpika._consumer import Consumer, MessageCallback
from txpika.errors import (
    ChannelClosedByClient,
    FlowControlError,
    NackError,
    OutcomeUnknownError,
    UnroutableError,
    UsageError,
)
from txpika.message import Message

if TYPE_CHECKING:
    from txpika._specbase import Method, Properties
    from txpika.protocol import AMQPProtocol

__all__ = ["Channel", "Consumer"]

log = Logger()
T = TypeVar("T")

class _Call(Generic[T]):
    """A synchronous request awaiting its reply."""

    __slots__ = ("convert", "deferred", "done", "method")

    def __init__(self, method: Method, convert: Callable[[Any], T]) -> None:
        self.method = method
        self.convert = convert
        self.deferred: Deferred[T] = Deferred(self._cancel)
        self.done = False  # fired (or abandoned by cancel/timeout)

    def _cancel(self, d: Deferred[T]) -> None:
        self.done = True  # the reply, when it comes, is absorbed


class _Held:
    """Work held while the broker stops publishers on the channel (flow policy "wait"): a
    publish (``args``) or, queued behind held publishes to keep the channel's order, a
    call (``run``)."""

    __slots__ = ("args", "deferred", "run")

    def __init__(self, args: tuple[Any, ...] | None, run: Callable[[], None] | None = None,
                 deferred: Deferred[Any] | None = None) -> None:
        self.args = args
        self.run = run
        self.deferred: Deferred[Any] = deferred or Deferred(self._cancel)

    def _cancel(self, d: Deferred[Any]) -> None:
        self.args = None  # skipped when the queue drains
        self.run = None


class Channel:
    """One AMQP channel; get it from ``AMQPProtocol.channel()``."""

    def __init__(self, protocol: AMQPProtocol, channel_number: int) -> None:
        self._protocol = protocol
        self._core = protocol._core
        self._m = self._core.dialect.module
        self.channel_number = channel_number
        self._calls: deque[_Call[Any]] = deque()
        self._confirms: dict[int, Deferred[None]] = {}
        self._consumers: dict[str, Consumer] = {}
        self._held: deque[_Held] = deque()
        self._settlers = {"ack": self._core.basic_ack, "nack": self._core.basic_nack,
                          "reject": self._core.basic_reject}
        self._flow_listeners: list[Callable[[bool], object]] = []
        self._close_waiters: list[Deferred[None]] = []
        self._closed_waiters: list[Deferred[BaseException]] = []
        self._error: BaseException | None = None
        self._flow_active = not self._core.blocked  # opened while blocked

    def __repr__(self) -> str:
        state = "closed" if self._error is not None else "open"
        return f"<Channel {self.channel_number} {state}>"

    # -- state ------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True until the channel or its connection closes."""
        return self._error is None

    @property
    def flow_active(self) -> bool:
        """False while the broker stops publishers: ``channel.flow`` or ``connection.blocked``."""
        return self._flow_active

    def when_closed(self) -> Deferred[BaseException]:
        """A new Deferred that fires (never fails) with the error that closed the channel:
        `txpika.errors.ChannelClosedByClient` after `close`, the broker's channel error, or
        the connection's error."""
        if self._error is not None:
            return succeed(self._error)
        d: Deferred[BaseException] = Deferred()
        self._closed_waiters.append(d)
        return d

    def add_flow_listener(self, callback: Callable[[bool], object]) -> None:
        """Call ``callback(active)`` in the same turn as each change of `flow_active`."""
        self._flow_listeners.append(callback)

    def remove_flow_listener(self, callback: Callable[[bool], object]) -> None:
        """Stop calling ``callback``."""
        self._flow_listeners.remove(callback)

    # -- exchanges ----------------------------------------------------------------------------

    def exchange_declare(
        self, exchange: str, exchange_type: str = "direct", passive: bool = False,
        durable: bool = False, auto_delete: bool = False, internal: bool = False,
        arguments: Mapping[str, Any] | None = None, timeout: float | None = None,
    ) -> Deferred[Any]:
        """Declare an exchange. Fires with ``Exchange.DeclareOk``; fails with
        `txpika.errors.NotFound` (passive, missing), `txpika.errors.PreconditionFailed`
        (declared differently before), or as the module docstring says."""
        return self._call(self._m.Exchange.Declare(
            0, exchange, exchange_type, passive, durable, auto_delete, internal, False,
            arguments), timeout)

    def exchange_delete(self, exchange: str, if_unused: bool = False,
                        timeout: float | None = None) -> Deferred[Any]:
        """Delete an exchange. Fires with ``Exchange.DeleteOk``."""
        return self._call(self._m.Exchange.Delete(0, exchange, if_unused, False), timeout)

    def exchange_bind(self, destination: str, source: str, routing_key: str = "",
                      arguments: Mapping[str, Any] | None = None,
                      timeout: float | None = None) -> Deferred[Any]:
        """Bind exchange ``destination`` to ``source`` (RabbitMQ extension, 0-9-1 only).
        Fires with ``Exchange.BindOk``; fails with `txpika.errors.UsageError` on 0-8."""
        if not self._core.dialect.extensions:
            return fail(UsageError("exchange bindings do not exist in AMQP 0-8"))
        return self._call(self._m.Exchange.Bind(0, destination, source, routing_key, False,
                                                arguments), timeout)

    def exchange_unbind(self, destination: str, source: str, routing_key: str = "",
                        arguments: Mapping[str, Any] | None = None,
                        timeout: float | None = None) -> Deferred[Any]:
        """Remove an exchange binding. Fires with ``Exchange.UnbindOk``."""
        if not self._core.dialect.extensions:
            return fail(UsageError("exchange bindings do not exist in AMQP 0-8"))
        return self._call(self._m.Exchange.Unbind(0, destination, source, routing_key, False,
                                                  arguments), timeout)

    # -- queues -------------------------------------------------------------------------------

    def queue_declare(
        self, queue: str = "", passive: bool = False, durable: bool = False,
        exclusive: bool | None = None, auto_delete: bool | None = None,
        arguments: Mapping[str, Any] | None = None, timeout: float | None = None,
    ) -> Deferred[Any]:
        """Declare a queue. Fires with ``Queue.DeclareOk`` (``queue``, ``message_count``,
        ``consumer_count``). A server-named queue (``queue=""``) defaults to exclusive and
        auto-delete; a named one to neither. Fails with `txpika.errors.NotFound` (passive,
        missing), `txpika.errors.ResourceLocked` (exclusive elsewhere) or
        `txpika.errors.PreconditionFailed` (declared differently)."""
        if exclusive is None:
            exclusive = not queue
        if auto_delete is None:
            auto_delete = not queue
        return self._call(self._m.Queue.Declare(
            0, queue, passive, durable, exclusive, auto_delete, False, arguments), timeout)

    def queue_bind(self, queue: str, exchange: str, routing_key: str = "",
                   arguments: Mapping[str, Any] | None = None,
                   timeout: float | None = None) -> Deferred[Any]:
        """Bind a queue to an exchange. Fires with ``Queue.BindOk``."""
        return self._call(self._m.Queue.Bind(0, queue, exchange, routing_key, False,
                                             arguments), timeout)

    def queue_unbind(self, queue: str, exchange: str, routing_key: str = "",
                     arguments: Mapping[str, Any] | None = None,
                     timeout: float | None = None) -> Deferred[Any]:
        """Remove a queue binding. Fires with ``Queue.UnbindOk``."""
        return self._call(self._m.Queue.Unbind(0, queue, exchange, routing_key, arguments),
                          timeout)

    def queue_purge(self, queue: str, timeout: float | None = None) -> Deferred[Any]:
        """Remove every ready message. Fires with ``Queue.PurgeOk`` (``message_count``)."""
        return self._call(self._m.Queue.Purge(0, queue, False), timeout)

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False,
                     timeout: float | None = None) -> Deferred[Any]:
        """Delete a queue. Fires with ``Queue.DeleteOk`` (``message_count``)."""
        return self._call(self._m.Queue.Delete(0, queue, if_unused, if_empty, False), timeout)

    # -- basic --------------------------------------------------------------------------------

    def basic_qos(self, prefetch_count: int = 0, prefetch_size: int = 0,
                  global_qos: bool = False, timeout: float | None = None) -> Deferred[Any]:
        """Limit unacked deliveries (per consumer unless ``global_qos``). Fires with
        ``Basic.QosOk``."""
        return self._call(self._m.Basic.Qos(prefetch_size, prefetch_count, global_qos),
                          timeout)

    def basic_consume(
        self, queue: str, on_message_callback: MessageCallback | None = None,
        auto_ack: bool = False, exclusive: bool = False, consumer_tag: str | None = None,
        arguments: Mapping[str, Any] | None = None, timeout: float | None = None,
        max_buffer: int | None = None,
    ) -> Deferred[Consumer]:
        """Start a consumer. Fires with a `Consumer` once ``basic.consume-ok`` arrives.

        With ``on_message_callback`` each `Message` is passed to it (it may return a
        Deferred or a coroutine; failures are logged). Without, pull messages with
        ``Consumer.get()`` or ``async for``. Fails with `txpika.errors.NotFound`,
        `txpika.errors.AccessRefused` (exclusive consumer elsewhere) and as usual.
        """
        arguments_ = arguments
        if consumer_tag is None:
            consumer_tag = ""
        method = self._m.Basic.Consume(0, queue, consumer_tag, False, auto_ack, exclusive,
                                       False, arguments_) if self._core.dialect.extensions \
            else self._m.Basic.Consume(0, queue, consumer_tag, False, auto_ack, exclusive,
                                       False)
        if arguments and not self._core.dialect.extensions:
            return fail(UsageError("basic.consume has no arguments in AMQP 0-8"))

        def started(ok: Any) -> Consumer:
            consumer = Consumer(self, ok.consumer_tag, queue, on_message_callback, auto_ack,
                                max_buffer)
            self._consumers[ok.consumer_tag] = consumer
            return consumer

        return self._call(method, timeout, started)

    def basic_cancel(self, consumer_tag: str, timeout: float | None = None) -> Deferred[Any]:
        """Cancel a consumer. Fires with ``Basic.CancelOk``; the consumer's pull side then
        ends normally (``async for`` stops)."""
        def cancelled(ok: Any) -> Any:
            consumer = self._consumers.pop(consumer_tag, None)
            if consumer is not None:
                consumer._end(None)
            return ok

        return self._call(self._m.Basic.Cancel(consumer_tag, False), timeout, cancelled)

    def basic_publish(
        self, exchange: str, routing_key: str, body: bytes,
        properties: Properties | None = None, mandatory: bool = False,
        timeout: float | None = None,
    ) -> Deferred[None]:
        """Publish a message.

        Without confirms, fires with ``None`` once the frames are handed to the transport,
        so while the transport is over its high-water mark it waits; while the broker blocks
        publishers and the flow policy is ``"wait"``, the publish is held (and so are later
        calls on this channel, to keep their order) until the broker lets it go on. In
        confirm mode it fires on the broker's ack, or fails with `txpika.errors.NackError`,
        `txpika.errors.UnroutableError` (``mandatory`` and unroutable; ``.message`` is what
        came back) or
        `txpika.errors.OutcomeUnknownError` (the channel or connection closed first). With
        the ``"raise"`` flow policy it fails at once with `txpika.errors.FlowControlError`
        while the broker blocks publishers.
        """
        if self._error is not None:
            return fail(self._error)
        if not self._flow_active and self._protocol.parameters.flow_policy == "raise":
            return fail(FlowControlError(
                f"the broker stopped publishers ({self._protocol.blocked_reason or 'flow'})"))
        args = (exchange, routing_key, body, properties, mandatory)
        if self._held or not self._flow_active:
            held = _Held(args)
            self._held.append(held)
            d = held.deferred
        else:
            d = self._publish_now(args, None)
        if timeout is not None:
            d.addTimeout(timeout, self._protocol.clock)
        return d

    def basic_get(self, queue: str, auto_ack: bool = False,
                  timeout: float | None = None) -> Deferred[Message | None]:
        """Fetch one message. Fires with a `Message`, or ``None`` if the queue is empty."""
        def got(reply: Any) -> Message | None:
            if isinstance(reply, Message):
                return reply
            return None

        return self._call(self._m.Basic.Get(0, queue, auto_ack), timeout, got)

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> Deferred[None]:
        """Acknowledge a delivery. Fires with ``None`` once written; fails with
        `txpika.errors.UsageError` if it does not await an ack (nothing is sent)."""
        return self._settle_deferred("ack", delivery_tag, multiple=multiple)

    def basic_nack(self, delivery_tag: int = 0, multiple: bool = False,
                   requeue: bool = True) -> Deferred[None]:
        """Negatively acknowledge deliveries; as `basic_ack`."""
        return self._settle_deferred("nack", delivery_tag, multiple=multiple, requeue=requeue)

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> Deferred[None]:
        """Reject a delivery; as `basic_ack`."""
        return self._settle_deferred("reject", delivery_tag, requeue=requeue)

    def basic_recover(self, requeue: bool = True,
                      timeout: float | None = None) -> Deferred[Any]:
        """Redeliver unacked messages. Fires with ``Basic.RecoverOk``."""
        return self._call(self._m.Basic.Recover(requeue), timeout)

    def confirm_select(self, timeout: float | None = None) -> Deferred[Any]:
        """Turn on publisher confirms. Fires with ``Confirm.SelectOk``; on 0-8 fails with
        `txpika.errors.UsageError`."""
        if not self._core.dialect.extensions:
            return fail(UsageError("publisher confirms do not exist in AMQP 0-8"))
        return self._call(self._m.Confirm.Select(False), timeout)

    def tx_select(self, timeout: float | None = None) -> Deferred[Any]:
        """Start transactions. Fires with ``Tx.SelectOk``."""
        return self._call(self._m.Tx.Select(), timeout)

    def tx_commit(self, timeout: float | None = None) -> Deferred[Any]:
        """Commit. Fires with ``Tx.CommitOk``."""
        return self._call(self._m.Tx.Commit(), timeout)

    def tx_rollback(self, timeout: float | None = None) -> Deferred[Any]:
        """Roll back. Fires with ``Tx.RollbackOk``."""
        return self._call(self._m.Tx.Rollback(), timeout)

    def flow(self, active: bool, timeout: float | None = None) -> Deferred[Any]:
        """Ask the broker to pause (False) or resume (True) deliveries on this channel.
        Fires with ``Channel.FlowOk``. (RabbitMQ refuses ``active=False`` with 540.)"""
        return self._call(self._m.Channel.Flow(active), timeout)

    def close(self, reply_code: int = 200, reply_text: str = "Normal close") -> Deferred[None]:
        """Close the channel. Fires with ``None`` once the broker confirmed; pending calls
        fail with `txpika.errors.ChannelClosedByClient`. Closing twice is harmless."""
        if self._error is not None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._close_waiters.append(d)
        if len(self._close_waiters) == 1:
            def send() -> None:
                try:
                    self._core.close_channel(self.channel_number, reply_code, reply_text)
                except Exception as exc:
                    self._closed(exc)
                self._protocol._flush()

            if self._held:
                self._held.append(_Held(None, send, succeed(None)))
            else:
                send()
        return d

    # -- internals: requests --------------------------------------------------------------------

    def _call(self, method: Method, timeout: float | None,
              convert: Callable[[Any], Any] | None = None) -> Deferred[Any]:
        if self._error is not None:
            return fail(self._error)
        call: _Call[Any] = _Call(method, convert or _identity)
        d = call.deferred
        if self._held:
            # Publishes are held (broker flow control): this call goes after them.
            self._held.append(_Held(None, lambda: self._send_call(call), d))
        else:
            try:
                self._core.send_method(self.channel_number, method)
            except Exception as exc:
                return fail(exc)
            self._sent_call(call)
        if timeout is not None:
            d.addTimeout(timeout, self._protocol.clock)
        return d

    def _send_call(self, call: _Call[Any]) -> None:
        if call.done or self._error is not None:
            return
        try:
            self._core.send_method(self.channel_number, call.method)
        except Exception as exc:
            call.done = True
            call.deferred.errback(exc)
            return
        self._sent_call(call)

    def _sent_call(self, call: _Call[Any]) -> None:
        if getattr(call.method, "nowait", False):
            call.done = True
            call.deferred.callback(None)
            return
        self._calls.append(call)
        self._protocol._flush()

    def _settle_deferred(self, how: str, delivery_tag: int, **kwargs: Any) -> Deferred[None]:
        if self._error is not None:
            return fail(UsageError(
                f"channel {self.channel_number} is closed ({self._error}); delivery "
                f"{delivery_tag} can no longer be settled"))
        try:
            self._settle(how, delivery_tag, **kwargs)
        except Exception as exc:
            return fail(exc)
        return succeed(None)

    def _settle(self, how: str, delivery_tag: int, **kwargs: Any) -> None:
        if self._error is not None:
            raise UsageError(
                f"channel {self.channel_number} is closed ({self._error}); delivery "
                f"{delivery_tag} can no longer be settled")
        self._settlers[how](self.channel_number, delivery_tag, **kwargs)
        self._protocol._flush()

    def _publish_now(self, args: tuple[Any, ...], waiter: Deferred[None] | None
                     ) -> Deferred[None]:
        exchange, routing_key, body, properties, mandatory = args
        protocol = self._protocol
        core = self._core
        # While output waits in the protocol's backlog (transport paused), this publish is
        # held as one unit there.
        holding = protocol._backlog or protocol._paused or protocol._writing
        if holding and core.pending_chunks:
            protocol._stash()  # so that the core's next output is this publish alone
        try:
            tag = core.basic_publish(self.channel_number, exchange, routing_key, body,
                                     properties, mandatory)
        except Exception as exc:
            if waiter is not None:
                waiter.errback(exc)
                return waiter
            return fail(exc)
        if not tag:
            # Fires once the frames are handed to the transport: at once, unless the
            # transport is over its high-water mark.
            if holding:
                return protocol._hold_publish(waiter)
            return protocol._when_written(waiter)
        d: Deferred[None] = waiter or Deferred()
        self._confirms[tag] = d
        self._protocol._flush()
        return d

    def _drain_held(self) -> None:
        """Send what was held, in order, while the broker lets publishers go on."""
        held = self._held
        while held and self._error is None and self._flow_active:
            item = held.popleft()
            if item.args is not None:
                self._publish_now(item.args, item.deferred)
            elif item.run is not None:
                item.run()

    # -- internals: events from the protocol ---------------------------------------------------

    def _set_flow(self, active: bool) -> None:
        if active == self._flow_active:
            return
        self._flow_active = active
        for listener in list(self._flow_listeners):
            try:
                listener(active)
            except Exception:
                log.failure("flow listener {listener} failed", listener=listener)
        if active:
            self._drain_held()

    def _fail_held(self, error: BaseException) -> None:
        held, self._held = self._held, deque()
        for item in held:
            if item.args is not None or item.run is not None:
                item.args = item.run = None
                if not item.deferred.called:
                    item.deferred.errback(error)

    def _on_reply(self, method: Any) -> None:
        # ``method`` is a Method, or a Message for basic.get-ok (which has no NAME).
        name = getattr(method, "NAME", "basic.get-ok")
        if name == "basic.cancel":  # the broker cancelled a consumer
            consumer = self._consumers.pop(method.consumer_tag, None)
            if consumer is not None:
                consumer._cancelled_by_broker()
            return
        if not self._calls:
            log.warn("channel {channel}: {method} with no request waiting for it",
                     channel=self.channel_number, method=name)
            return
        call = self._calls.popleft()
        if call.done:
            self._absorb(call, method)
            return
        call.done = True
        try:
            result = call.convert(method)
        except Exception:
            call.deferred.errback(Failure())  # type: ignore[no-untyped-call]
            return
        call.deferred.callback(result)

    def _absorb(self, call: _Call[Any], reply: Any) -> None:
        """A reply to a cancelled or timed-out call: undo what it started."""
        if getattr(reply, "NAME", None) == "basic.consume-ok":
            # Nobody will handle this consumer's messages: cancel it. Its deliveries, until
            # the broker stops, are rejected back to the queue (see _on_message).
            self._call(self._m.Basic.Cancel(reply.consumer_tag, False), None).addErrback(
                lambda f: None)
        elif isinstance(reply, Message) and not reply.settled:
            self._settle_deferred("reject", reply.delivery_tag, requeue=True)

    def _on_message(self, method: Any, properties: Any, body: bytes) -> None:
        name = method.NAME
        if name == "basic.deliver":
            consumer = self._consumers.get(method.consumer_tag)
            if consumer is None:
                if self._core.awaiting_ack(self.channel_number, method.delivery_tag):
                    self._settle_deferred("reject", method.delivery_tag, requeue=True)
                return
            consumer._deliver(Message._delivered(self, method, properties, body,
                                                 consumer.auto_ack))
        elif name == "basic.get-ok":
            auto_ack = not self._core.awaiting_ack(self.channel_number, method.delivery_tag)
            self._on_reply(Message(self, method, properties, body, auto_ack=auto_ack))
        else:  # basic.return outside confirm mode (or not matched to a publish)
            message = Message(None, method, properties, body)
            log.warn("channel {channel}: message returned: {code} {text} "
                     "(exchange {exchange!r}, routing key {key!r})",
                     channel=self.channel_number, code=method.reply_code,
                     text=method.reply_text, exchange=method.exchange,
                     key=method.routing_key)
            self._protocol._returned(message)

    def _on_confirm(self, tags: tuple[int, ...], acked: bool) -> None:
        confirms = self._confirms
        for tag in tags:
            d = confirms.pop(tag, None)
            if d is None:
                continue
            if acked:
                d.callback(None)
            else:
                d.errback(NackError(tag))

    def _on_returned(self, tag: int, method: Any, properties: Any, body: bytes) -> None:
        d = self._confirms.pop(tag, None)
        if d is not None:
            message = Message(None, method, properties, body)
            d.errback(UnroutableError(message, method.reply_code, method.reply_text))

    def _closed(self, error: BaseException) -> None:
        """The channel (or its connection) closed with ``error``: fail everything once."""
        if self._error is not None:
            return
        self._error = error
        self._protocol._forget_channel(self.channel_number)
        calls, self._calls = self._calls, deque()
        for call in calls:
            if not call.done:
                call.done = True
                call.deferred.errback(error)
        confirms, self._confirms = self._confirms, {}
        for d in confirms.values():
            d.errback(OutcomeUnknownError(error))
        self._fail_held(error)
        consumers, self._consumers = self._consumers, {}
        for consumer in consumers.values():
            consumer._end(error)
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(None)
        watchers, self._closed_waiters = self._closed_waiters, []
        for watcher in watchers:
            watcher.callback(error)
        if not isinstance(error, ChannelClosedByClient):
            log.info("channel {channel} closed: {error}", channel=self.channel_number,
                     error=error)


def _identity(value: T) -> T:
    return value
