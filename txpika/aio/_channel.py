"""The asyncio channel, consumer and message: the channel book's results as futures.

Synchronous methods are coroutines that return the typed ``-Ok`` method. ``timeout=`` raises
the builtin ``TimeoutError``; a cancelled task gets ``CancelledError``; in both cases the
call is abandoned and its late reply absorbed by the book (a consumer it started is
cancelled, a message it fetched requeued). ``basic_publish``, ``basic_ack`` and the
message's ``ack`` act at once and return a future (already done unless it waits for a
confirm, the broker's flow control or the transport): ``asyncio.gather`` takes many
without a task each. What cannot be sent raises at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from functools import partial
from typing import Any, TypeVar

from txpika import spec
from txpika._chanbook import Call, ChannelBook, ConsumerEntry
from txpika._delivery import MessageBase
from txpika._requests import Request, Requests
from txpika._specbase import Properties
from txpika.aio._consumer import ConsumerBase, Port, _expire, _fail, _ok, _requeue, _result
from txpika.errors import FlowControlError

__all__ = ["Channel", "Consumer", "Message"]

T = TypeVar("T")
_Args = Mapping[str, Any] | None
MessageCallback = Callable[["Message"], "Coroutine[Any, Any, Any] | None"]


class Message(MessageBase):
    """A delivered, fetched or returned message (the attributes of `txpika.Message`).

    ``ack``/``nack``/``reject`` send at once and return a done future (awaiting it is
    optional); they raise `txpika.errors.UsageError`, sending nothing, if the message was
    settled, consumed with ``auto_ack``, returned, or its channel is closed.
    """

    __slots__ = ()

    #: The channel it came on (``None`` for a returned message).
    channel: Channel | None

    def ack(self, multiple: bool = False) -> asyncio.Future[None]:
        """Acknowledge this message (with ``multiple``, every earlier one too)."""
        self._settle("ack", multiple)
        return self.channel.connection.done  # type: ignore[union-attr]

    def nack(self, requeue: bool = True, multiple: bool = False) -> asyncio.Future[None]:
        """Negatively acknowledge this message."""
        self._settle("nack", multiple, requeue)
        return self.channel.connection.done  # type: ignore[union-attr]

    def reject(self, requeue: bool = True) -> asyncio.Future[None]:
        """Reject this message."""
        self._settle("reject", False, requeue)
        return self.channel.connection.done  # type: ignore[union-attr]


class Consumer(ConsumerBase[Message]):
    """A consumer on a queue; see `txpika.aio._consumer.ConsumerBase`."""

    #: The channel it consumes on.
    channel: Channel


class Channel:
    """One AMQP channel: the methods and arguments of the Twisted `txpika.Channel`, as
    coroutines; get it from `txpika.aio.Connection.channel`. ``async with`` closes it.

    Each synchronous method returns its typed ``-Ok`` method, or raises the error of the
    Twisted channel's: `txpika.errors.NotFound`, `txpika.errors.PreconditionFailed`,
    `txpika.errors.AccessRefused`, `txpika.errors.ResourceLocked` (the channel then
    closes), the `txpika.errors.ChannelClosed` or `txpika.errors.ConnectionClosed` that
    ended it, `txpika.errors.UsageError` (what 0-8 lacks), or ``TimeoutError``.
    """

    def __init__(self, connection: Port, book: ChannelBook, requests: Requests) -> None:
        #: The connection the channel belongs to.
        self.connection = connection
        self._book = book
        self._req = requests
        self._loop = connection.loop
        #: The AMQP channel number.
        self.channel_number = book.number

    def __repr__(self) -> str:
        return f"<aio.Channel {self.channel_number} {'open' if self.is_open else 'closed'}>"

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        """True until the channel or its connection closes."""
        return self._book.is_open

    @property
    def flow_active(self) -> bool:
        """False while the broker stops publishers: ``channel.flow`` or ``connection.blocked``."""
        return self._book.flow_active

    def when_closed(self) -> asyncio.Future[BaseException]:
        """A future with (never failing with) the error that closed the channel."""
        closed: asyncio.Future[BaseException] = self._loop.create_future()
        self._book.when_closed(partial(_ok, closed))
        return closed

    def add_flow_listener(self, callback: Callable[[bool], object]) -> None:
        """Call ``callback(active)`` in the same turn as each change of `flow_active`."""
        self._book.add_flow_listener(callback)

    def remove_flow_listener(self, callback: Callable[[bool], object]) -> None:
        """Stop calling ``callback``."""
        self._book.remove_flow_listener(callback)

    # -- synchronous methods ------------------------------------------------------------------

    async def exchange_declare(self, exchange: str, exchange_type: str = "direct",
                               passive: bool = False, durable: bool = False,
                               auto_delete: bool = False, internal: bool = False,
                               arguments: _Args = None, timeout: float | None = None
                               ) -> spec.Exchange.DeclareOk:
        """Declare an exchange; returns ``Exchange.DeclareOk``."""
        return await self._call(self._req.exchange_declare(
            exchange, exchange_type, passive, durable, auto_delete, internal, arguments),
            timeout)

    async def exchange_delete(self, exchange: str, if_unused: bool = False,
                              timeout: float | None = None) -> spec.Exchange.DeleteOk:
        """Delete an exchange; returns ``Exchange.DeleteOk``."""
        return await self._call(self._req.exchange_delete(exchange, if_unused), timeout)

    async def exchange_bind(self, destination: str, source: str, routing_key: str = "",
                            arguments: _Args = None, timeout: float | None = None
                            ) -> spec.Exchange.BindOk:
        """Bind two exchanges (0-9-1 only); returns ``Exchange.BindOk``."""
        return await self._call(self._req.exchange_bind(destination, source, routing_key,
                                                        arguments), timeout)

    async def exchange_unbind(self, destination: str, source: str, routing_key: str = "",
                              arguments: _Args = None, timeout: float | None = None
                              ) -> spec.Exchange.UnbindOk:
        """Remove an exchange binding; returns ``Exchange.UnbindOk``."""
        return await self._call(self._req.exchange_unbind(destination, source, routing_key,
                                                          arguments), timeout)

    async def queue_declare(self, queue: str = "", passive: bool = False,
                            durable: bool = False, exclusive: bool | None = None,
                            auto_delete: bool | None = None, arguments: _Args = None,
                            timeout: float | None = None) -> spec.Queue.DeclareOk:
        """Declare a queue; returns ``Queue.DeclareOk``. A server-named queue defaults to
        exclusive and auto-delete."""
        return await self._call(self._req.queue_declare(queue, passive, durable, exclusive,
                                                        auto_delete, arguments), timeout)

    async def queue_bind(self, queue: str, exchange: str, routing_key: str = "",
                         arguments: _Args = None, timeout: float | None = None
                         ) -> spec.Queue.BindOk:
        """Bind a queue; returns ``Queue.BindOk``."""
        return await self._call(self._req.queue_bind(queue, exchange, routing_key,
                                                     arguments), timeout)

    async def queue_unbind(self, queue: str, exchange: str, routing_key: str = "",
                           arguments: _Args = None, timeout: float | None = None
                           ) -> spec.Queue.UnbindOk:
        """Remove a queue binding; returns ``Queue.UnbindOk``."""
        return await self._call(self._req.queue_unbind(queue, exchange, routing_key,
                                                       arguments), timeout)

    async def queue_purge(self, queue: str, timeout: float | None = None
                          ) -> spec.Queue.PurgeOk:
        """Purge a queue; returns ``Queue.PurgeOk``."""
        return await self._call(self._req.queue_purge(queue), timeout)

    async def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False,
                           timeout: float | None = None) -> spec.Queue.DeleteOk:
        """Delete a queue; returns ``Queue.DeleteOk``."""
        return await self._call(self._req.queue_delete(queue, if_unused, if_empty), timeout)

    async def basic_qos(self, prefetch_count: int = 0, prefetch_size: int = 0,
                        global_qos: bool = False, timeout: float | None = None
                        ) -> spec.Basic.QosOk:
        """Limit unacked deliveries; returns ``Basic.QosOk``."""
        return await self._call(self._req.basic_qos(prefetch_count, prefetch_size,
                                                    global_qos), timeout)

    async def basic_recover(self, requeue: bool = True, timeout: float | None = None
                            ) -> spec.Basic.RecoverOk:
        """Redeliver unacked messages; returns ``Basic.RecoverOk``."""
        return await self._call(self._req.basic_recover(requeue), timeout)

    async def confirm_select(self, timeout: float | None = None) -> spec.Confirm.SelectOk:
        """Turn on publisher confirms (0-9-1 only); returns ``Confirm.SelectOk``."""
        return await self._call(self._req.confirm_select(), timeout)

    async def tx_select(self, timeout: float | None = None) -> spec.Tx.SelectOk:
        """Start transactions; returns ``Tx.SelectOk``."""
        return await self._call(self._req.tx_select(), timeout)

    async def tx_commit(self, timeout: float | None = None) -> spec.Tx.CommitOk:
        """Commit; returns ``Tx.CommitOk``."""
        return await self._call(self._req.tx_commit(), timeout)

    async def tx_rollback(self, timeout: float | None = None) -> spec.Tx.RollbackOk:
        """Roll back; returns ``Tx.RollbackOk``."""
        return await self._call(self._req.tx_rollback(), timeout)

    async def flow(self, active: bool, timeout: float | None = None) -> spec.Channel.FlowOk:
        """Ask the broker to pause or resume deliveries; returns ``Channel.FlowOk``."""
        return await self._call(self._req.flow(active), timeout)

    async def basic_get(self, queue: str, auto_ack: bool = False,
                        timeout: float | None = None) -> Message | None:
        """Fetch one message; ``None`` if the queue is empty."""
        message: Message | None = await self._call(self._req.basic_get(queue, auto_ack),
                                                   timeout)
        return message

    async def basic_consume(self, queue: str,
                            on_message_callback: MessageCallback | None = None,
                            auto_ack: bool = False, exclusive: bool = False,
                            consumer_tag: str | None = None, arguments: _Args = None,
                            timeout: float | None = None, max_buffer: int | None = None
                            ) -> Consumer:
        """Start a consumer; returns the `Consumer` on ``basic.consume-ok``. With
        ``on_message_callback`` (plain or ``async``) each `Message` goes to it, failures
        logged; without, pull with ``Consumer.get()`` or ``async for``."""
        def make(tag: str) -> tuple[Consumer, ConsumerEntry]:
            consumer = Consumer(self, tag, queue, on_message_callback, auto_ack, max_buffer)
            return consumer, ConsumerEntry(tag, auto_ack, consumer._deliver, consumer._end)

        request = self._req.basic_consume(queue, consumer_tag, auto_ack, exclusive, arguments)
        waiter: asyncio.Future[Consumer] = self._loop.create_future()
        call = self._book.consume(request, auto_ack, make, partial(self._resolve, waiter),
                                  partial(_fail, waiter))
        return await self._wait(waiter, call, timeout)

    async def basic_cancel(self, consumer_tag: str, timeout: float | None = None
                           ) -> spec.Basic.CancelOk:
        """Cancel a consumer; returns ``Basic.CancelOk`` (its ``async for`` then stops)."""
        waiter: asyncio.Future[spec.Basic.CancelOk] = self._loop.create_future()
        call = self._book.cancel(self._req.basic_cancel(consumer_tag),
                                 partial(_ok, waiter), partial(_fail, waiter))
        return await self._wait(waiter, call, timeout)

    # -- acting at once -------------------------------------------------------------------------

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> asyncio.Future[None]:
        """Acknowledge deliveries; raises `txpika.errors.UsageError` if none awaits one."""
        self._book.settle("ack", delivery_tag, multiple)
        return self.connection.done

    def basic_nack(self, delivery_tag: int = 0, multiple: bool = False,
                   requeue: bool = True) -> asyncio.Future[None]:
        """Negatively acknowledge deliveries; as `basic_ack`."""
        self._book.settle("nack", delivery_tag, multiple, requeue)
        return self.connection.done

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> asyncio.Future[None]:
        """Reject a delivery; as `basic_ack`."""
        self._book.settle("reject", delivery_tag, False, requeue)
        return self.connection.done

    def basic_publish(self, exchange: str, routing_key: str, body: bytes,
                      properties: Properties | None = None, mandatory: bool = False,
                      timeout: float | None = None) -> asyncio.Future[None]:
        """Publish a message; returns a future.

        Without confirms it is done once the transport took the frames (at once unless the
        transport is over its high-water mark). In confirm mode it is done on the broker's
        ack, or fails with `txpika.errors.NackError`, `txpika.errors.UnroutableError`
        (``mandatory``, unroutable) or `txpika.errors.OutcomeUnknownError` (closed first).
        While the broker blocks publishers it waits (flow policy ``"wait"``; cancelling or
        a timeout then drops the message unsent) or raises
        `txpika.errors.FlowControlError` (``"raise"``). Raises the channel's error if closed.
        """
        book = self._book
        book.check_open()
        if book.holding:
            if not book.flow_active and self.connection.parameters.flow_policy == "raise":
                raise FlowControlError(f"the broker stopped publishers "
                                       f"({self.connection.blocked_reason or 'flow'})")
            waiter: asyncio.Future[None] = self._loop.create_future()
            held = book.hold(lambda: self._publish(exchange, routing_key, body, properties,
                                                   mandatory, waiter), partial(_fail, waiter))
            waiter.add_done_callback(lambda f: held.drop())
        else:
            waiter = self._publish(exchange, routing_key, body, properties, mandatory, None)
        if timeout is not None and not waiter.done():
            timer = self._loop.call_later(timeout, _expire, waiter, timeout)
            waiter.add_done_callback(lambda f: timer.cancel())
        return waiter

    async def close(self, reply_code: int = 200, reply_text: str = "Normal close") -> None:
        """Close the channel; returns once the broker confirmed. Pending calls fail with
        `txpika.errors.ChannelClosedByClient`. Closing twice is harmless."""
        closed = self.when_closed()
        if self._book.is_open:
            self._book.close(reply_code, reply_text)
        await closed

    # -- internals ------------------------------------------------------------------------------

    async def _call(self, request: Request[T], timeout: float | None) -> T:
        waiter: asyncio.Future[T] = self._loop.create_future()
        call = self._book.call(request, partial(self._resolve, waiter), partial(_fail, waiter))
        return await self._wait(waiter, call, timeout)

    async def _wait(self, waiter: asyncio.Future[T], call: Call, timeout: float | None) -> T:
        timer = None if timeout is None else self._loop.call_later(
            timeout, _expire, waiter, timeout)
        try:
            return await waiter
        except BaseException:
            self._book.abandon(call)  # a late reply is absorbed (a no-op once answered)
            self._undo(_result(waiter))  # answered, but the task was cancelled meanwhile
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _resolve(self, waiter: asyncio.Future[Any], value: Any) -> None:
        if waiter.done():  # cancelled before the reply arrived
            self._undo(value)
        else:
            waiter.set_result(value)

    def _undo(self, value: Any) -> None:
        if isinstance(value, Consumer):
            value._discard()
        elif isinstance(value, Message):
            _requeue(value)

    def _publish(self, exchange: str, routing_key: str, body: bytes,
                 properties: Properties | None, mandatory: bool,
                 waiter: asyncio.Future[None] | None) -> asyncio.Future[None]:
        port = self.connection
        outbox = port._outbox
        hold = outbox.before_publish()  # the transport pushes back: hold it as one unit
        try:
            tag = self._book.publish(exchange, routing_key, body, properties, mandatory)
        except Exception as exc:
            if waiter is None:
                raise
            _fail(waiter, exc)
            return waiter
        if tag:
            waiter = waiter or self._loop.create_future()
            self._book.expect_confirm(tag, partial(_ok, waiter), partial(_fail, waiter))
            port._flush()
            return waiter
        if hold:
            waiter = waiter or self._loop.create_future()
            unsent = outbox.hold_publish(partial(_ok, waiter), partial(_fail, waiter))
            waiter.add_done_callback(lambda f: unsent.drop())
            port._flush()
            return waiter
        port._flush()
        if waiter is not None:
            _ok(waiter, None)
            return waiter
        return port.done

    def _send_cancel(self, consumer_tag: str) -> None:
        """``basic.cancel`` for a consumer nobody took; its reply is ignored."""
        self._book.cancel(self._req.basic_cancel(consumer_tag), _ignore, _ignore)


def _ignore(value: object) -> None:
    return None
