"""The blocking adapter's connection, channels, consumers and messages: results directly.

Each channel method holds its connection's lock while it hands a request to the channel
book (`txpika._chanbook.ChannelBook`, shared with the other adapters), then waits, lock
released, while whichever thread is reading dispatches the reply; publishing is
`txpika.blocking._publishing.Publishing`, a base of `BlockingChannel`. `BlockingConnection`
is `txpika.blocking._connection.ConnectionBase` with ``channel()``.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any, TypeVar

from txpika import spec
from txpika._chanbook import ChannelBook, ConsumerEntry
from txpika._delivery import MessageBase
from txpika._requests import Request, Requests
from txpika.blocking._connection import ConnectionBase
from txpika.blocking._publishing import Publishing
from txpika.errors import (
    ChannelClosedByClient,
    ConnectionClosedByClient,
    ConsumerCancelled,
)

__all__ = ["BlockingChannel", "BlockingConnection", "BlockingConsumer", "Message"]

T = TypeVar("T")
_Args = Mapping[str, Any] | None
_UNSET: Any = object()


class Message(MessageBase):
    """A delivered, fetched or returned message; ``ack``/``nack``/``reject`` act at once.

    The same attributes as the Twisted `txpika.Message`; settling twice, settling an
    auto-acked message or settling after the channel closed raises
    `txpika.errors.UsageError` and sends nothing.
    """

    __slots__ = ()

    #: The channel it came on; ``None`` for a message built by hand.
    channel: BlockingChannel | None

    def ack(self, multiple: bool = False) -> None:
        """Acknowledge this message (with ``multiple``, every earlier one too)."""
        self._settle_locked("ack", multiple, True)

    def nack(self, requeue: bool = True, multiple: bool = False) -> None:
        """Negatively acknowledge this message."""
        self._settle_locked("nack", multiple, requeue)

    def reject(self, requeue: bool = True) -> None:
        """Reject this message."""
        self._settle_locked("reject", False, requeue)

    def _settle_locked(self, how: str, multiple: bool, requeue: bool) -> None:
        self._may_settle()
        assert self.channel is not None
        self.channel._settle(how, self.delivery_tag, multiple, requeue)
        self._settled = True


class _Reply:
    """What a waiting thread reads: set under the lock as the reply is dispatched."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None

    def resolve(self, value: Any) -> None:
        self.value = value
        self.done = True

    def reject(self, error: BaseException) -> None:
        self.error = error
        self.done = True

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class BlockingConsumer:
    """A consumer: iterate it, or `get` messages; or give ``basic_consume`` a callback.

    Its buffer is bounded by the channel's prefetch (``basic_qos``). It ends when
    cancelled (`cancel`), when the broker cancels it (`txpika.errors.ConsumerCancelled`)
    or when the channel closes (its error). Iterating stops cleanly when this client
    cancelled it or closed the channel or the connection.
    """

    def __init__(self, channel: BlockingChannel, consumer_tag: str, queue: str,
                 callback: Callable[[Message], object] | None, auto_ack: bool) -> None:
        #: The channel the consumer was started on.
        self.channel = channel
        #: Its consumer tag.
        self.consumer_tag = consumer_tag
        #: The queue it consumes.
        self.queue = queue
        #: Whether the broker considers its messages acknowledged on delivery.
        self.auto_ack = auto_ack
        self._callback = callback
        self._buffer: deque[Message] = deque()
        self._ended: BaseException | None = None
        self._normal_end = False

    @property
    def active(self) -> bool:
        """True until the consumer ended."""
        return self._ended is None

    @property
    def end_reason(self) -> BaseException | None:
        """Why the consumer ended, or ``None`` while it is active."""
        return self._ended

    def get(self, timeout: float | None = None) -> Message | None:
        """The next message, or ``None`` after ``timeout`` seconds without one.

        Raises `txpika.errors.ConsumerCancelled` (or the channel's error) once the
        consumer ended and its buffer is empty.
        """
        buffer = self._buffer
        if buffer:
            try:
                return buffer.popleft()
            except IndexError:  # another thread took it
                pass
        conn = self.channel.connection
        conn._wait(lambda: bool(self._buffer) or self._ended is not None, timeout,
                   raise_timeout=False)
        with conn._lock:
            if self._buffer:
                return self._buffer.popleft()
            if self._ended is not None:
                raise self._ended
        return None

    def __iter__(self) -> Iterator[Message]:
        while True:
            try:
                message = self.get()
            except (ConsumerCancelled, ChannelClosedByClient, ConnectionClosedByClient):
                if self._normal_end:
                    return
                raise
            if message is not None:
                yield message

    def cancel(self, timeout: float | None = None) -> None:
        """Cancel the consumer; messages already buffered can still be read."""
        if self._ended is None:
            self.channel.basic_cancel(self.consumer_tag, timeout=timeout)

    # -- from the channel book (connection lock held) -----------------------------------------

    def _deliver(self, message: Message) -> None:
        if self._callback is not None:
            self.channel.connection._run_later(self._callback, message)
        else:
            self._buffer.append(message)

    def _end(self, error: BaseException, normal: bool) -> None:
        if self._ended is None:
            self._ended = error
            self._normal_end = normal


class BlockingChannel(Publishing):
    """One channel: the methods of `txpika.channel.Channel`, returning results directly.

    Each method returns what the Twisted channel's Deferred fires with and raises what it
    fails with: the failures each method names and, for any of them, the
    `txpika.errors.ChannelClosed` or `txpika.errors.ConnectionClosed` that ended the channel,
    the builtin ``TimeoutError`` when ``timeout`` (seconds) passes (a late reply is dropped,
    so the channel stays consistent), and `txpika.errors.UsageError` for a call that cannot
    be sent. Thread-safe: see `txpika.blocking`.
    """

    #: The connection it belongs to.
    connection: BlockingConnection

    def __init__(self, connection: BlockingConnection, book: ChannelBook,
                 requests: Requests) -> None:
        self.connection = connection
        self._book = book
        self._req = requests
        #: The channel's number on its connection.
        self.channel_number = book.number

    def __repr__(self) -> str:
        return f"<BlockingChannel {self.channel_number} {'open' if self.is_open else 'closed'}>"

    @property
    def is_open(self) -> bool:
        """True until the channel or its connection closed."""
        return self._book.is_open

    @property
    def flow_active(self) -> bool:
        """False while the broker stops publishers (``channel.flow`` or blocked)."""
        return self._book.flow_active

    def _call(self, request: Request[T], timeout: float | None) -> T:
        conn = self.connection
        reply = _Reply()
        with conn._lock:
            conn._check()
            call = self._book.call(request, reply.resolve, reply.reject)
        if not reply.done:
            try:
                conn._wait(lambda: reply.done, timeout)
            except TimeoutError:
                with conn._lock:
                    if not reply.done:  # (another thread may have dispatched it meanwhile)
                        self._book.abandon(call)  # its reply, when it comes, is dropped
                        raise
        value: T = reply.result()
        return value

    # -- synchronous methods ---------------------------------------------------------------

    def exchange_declare(self, exchange: str, exchange_type: str = "direct",
                         passive: bool = False, durable: bool = False,
                         auto_delete: bool = False, internal: bool = False,
                         arguments: _Args = None,
                         timeout: float | None = None) -> spec.Exchange.DeclareOk:
        """Declare an exchange; returns `spec.Exchange.DeclareOk`."""
        return self._call(self._req.exchange_declare(
            exchange, exchange_type, passive, durable, auto_delete, internal, arguments),
            timeout)

    def exchange_delete(self, exchange: str, if_unused: bool = False,
                        timeout: float | None = None) -> spec.Exchange.DeleteOk:
        """Delete an exchange; returns `spec.Exchange.DeleteOk`."""
        return self._call(self._req.exchange_delete(exchange, if_unused), timeout)

    def exchange_bind(self, destination: str, source: str, routing_key: str = "",
                      arguments: _Args = None,
                      timeout: float | None = None) -> spec.Exchange.BindOk:
        """Bind two exchanges (0-9-1 only); returns `spec.Exchange.BindOk`."""
        return self._call(self._req.exchange_bind(destination, source, routing_key,
                                                  arguments), timeout)

    def exchange_unbind(self, destination: str, source: str, routing_key: str = "",
                        arguments: _Args = None,
                        timeout: float | None = None) -> spec.Exchange.UnbindOk:
        """Remove an exchange binding; returns `spec.Exchange.UnbindOk`."""
        return self._call(self._req.exchange_unbind(destination, source, routing_key,
                                                    arguments), timeout)

    def queue_declare(self, queue: str = "", passive: bool = False, durable: bool = False,
                      exclusive: bool | None = None, auto_delete: bool | None = None,
                      arguments: _Args = None,
                      timeout: float | None = None) -> spec.Queue.DeclareOk:
        """Declare a queue; returns `spec.Queue.DeclareOk`. A server-named queue defaults to
        exclusive and auto-delete."""
        return self._call(self._req.queue_declare(queue, passive, durable, exclusive,
                                                  auto_delete, arguments), timeout)

    def queue_bind(self, queue: str, exchange: str, routing_key: str = "",
                   arguments: _Args = None, timeout: float | None = None) -> spec.Queue.BindOk:
        """Bind a queue; returns `spec.Queue.BindOk`."""
        return self._call(self._req.queue_bind(queue, exchange, routing_key, arguments),
                          timeout)

    def queue_unbind(self, queue: str, exchange: str, routing_key: str = "",
                     arguments: _Args = None,
                     timeout: float | None = None) -> spec.Queue.UnbindOk:
        """Remove a queue binding; returns `spec.Queue.UnbindOk`."""
        return self._call(self._req.queue_unbind(queue, exchange, routing_key, arguments),
                          timeout)

    def queue_purge(self, queue: str, timeout: float | None = None) -> spec.Queue.PurgeOk:
        """Purge a queue; returns `spec.Queue.PurgeOk`."""
        return self._call(self._req.queue_purge(queue), timeout)

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False,
                     timeout: float | None = None) -> spec.Queue.DeleteOk:
        """Delete a queue; returns `spec.Queue.DeleteOk`."""
        return self._call(self._req.queue_delete(queue, if_unused, if_empty), timeout)

    def basic_qos(self, prefetch_count: int = 0, prefetch_size: int = 0,
                  global_qos: bool = False, timeout: float | None = None) -> spec.Basic.QosOk:
        """Set the prefetch; returns `spec.Basic.QosOk`."""
        return self._call(self._req.basic_qos(prefetch_count, prefetch_size, global_qos),
                          timeout)

    def basic_recover(self, requeue: bool = True,
                      timeout: float | None = None) -> spec.Basic.RecoverOk:
        """Redeliver unacked messages; returns `spec.Basic.RecoverOk`."""
        return self._call(self._req.basic_recover(requeue), timeout)

    def confirm_select(self, timeout: float | None = None) -> spec.Confirm.SelectOk:
        """Turn on publisher confirms; returns `spec.Confirm.SelectOk` (0-9-1 only)."""
        return self._call(self._req.confirm_select(), timeout)

    def tx_select(self, timeout: float | None = None) -> spec.Tx.SelectOk:
        """Start transactions; returns `spec.Tx.SelectOk`."""
        return self._call(self._req.tx_select(), timeout)

    def tx_commit(self, timeout: float | None = None) -> spec.Tx.CommitOk:
        """Commit; returns `spec.Tx.CommitOk`."""
        return self._call(self._req.tx_commit(), timeout)

    def tx_rollback(self, timeout: float | None = None) -> spec.Tx.RollbackOk:
        """Roll back; returns `spec.Tx.RollbackOk`."""
        return self._call(self._req.tx_rollback(), timeout)

    def flow(self, active: bool, timeout: float | None = None) -> spec.Channel.FlowOk:
        """Ask the broker to pause or resume deliveries; returns `spec.Channel.FlowOk`."""
        return self._call(self._req.flow(active), timeout)

    # -- consuming ---------------------------------------------------------------------------

    def basic_consume(self, queue: str,
                      on_message_callback: Callable[[Message], object] | None = None,
                      auto_ack: bool = False, exclusive: bool = False,
                      consumer_tag: str | None = None, arguments: _Args = None,
                      timeout: float | None = None) -> BlockingConsumer:
        """Start a consumer; returns a `BlockingConsumer`. With ``on_message_callback``
        each message is passed to it while the connection is serviced (any call, or
        `BlockingConnection.process_data_events`); without, read it with ``get`` or by
        iterating."""
        # The consumer is registered under the lock, as consume-ok is dispatched: the
        # deliveries that follow it in the same read find it (else they are requeued).
        def make(tag: str) -> tuple[BlockingConsumer, ConsumerEntry]:
            consumer = BlockingConsumer(self, tag, queue, on_message_callback, auto_ack)
            return consumer, ConsumerEntry(tag, auto_ack, consumer._deliver, consumer._end)

        request = self._req.basic_consume(queue, consumer_tag, auto_ack, exclusive, arguments)
        conn = self.connection
        reply = _Reply()
        with conn._lock:
            conn._check()
            call = self._book.consume(request, auto_ack, make, reply.resolve, reply.reject)
        try:
            conn._wait(lambda: reply.done, timeout)
        except TimeoutError:
            with conn._lock:
                if not reply.done:
                    self._book.abandon(call)  # a late consume-ok is cancelled again
                    raise
        consumer: BlockingConsumer = reply.result()
        return consumer

    def consume(self, queue: str, prefetch: int | None = None, auto_ack: bool = False,
                exclusive: bool = False, arguments: _Args = None,
                inactivity_timeout: float | None = None) -> Generator[Message | None, None, None]:
        """Consume ``queue`` as a generator of messages.

        ``prefetch`` sets ``basic_qos`` first. With ``inactivity_timeout`` it yields
        ``None`` after that many seconds without a message. Closing the generator (or
        leaving the loop) cancels the consumer; it stops cleanly when this client cancelled
        the consumer or closed the channel or the connection.
        """
        if prefetch is not None:
            self.basic_qos(prefetch_count=prefetch)
        consumer = self.basic_consume(queue, None, auto_ack, exclusive, None, arguments)
        try:
            while True:
                try:
                    message = consumer.get(inactivity_timeout)
                except (ConsumerCancelled, ChannelClosedByClient, ConnectionClosedByClient):
                    if consumer._normal_end:
                        return
                    raise
                if message is None and inactivity_timeout is None:
                    continue
                yield message
        finally:
            if consumer.active and self.is_open and self.connection.is_open:
                with contextlib.suppress(Exception):
                    consumer.cancel()

    def basic_cancel(self, consumer_tag: str,
                     timeout: float | None = None) -> spec.Basic.CancelOk:
        """Cancel a consumer; returns `spec.Basic.CancelOk`."""
        conn = self.connection
        reply = _Reply()
        with conn._lock:
            conn._check()
            self._book.cancel(self._req.basic_cancel(consumer_tag), reply.resolve,
                              reply.reject)
        conn._wait(lambda: reply.done, timeout)
        ok: spec.Basic.CancelOk = reply.result()
        return ok

    def basic_get(self, queue: str, auto_ack: bool = False,
                  timeout: float | None = None) -> Message | None:
        """Fetch one message; ``None`` if the queue is empty."""
        message: Message | None = self._call(self._req.basic_get(queue, auto_ack), timeout)
        return message

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None:
        """Acknowledge deliveries; `txpika.errors.UsageError` if none awaits an ack."""
        self._settle("ack", delivery_tag, multiple, True)

    def basic_nack(self, delivery_tag: int = 0, multiple: bool = False,
                   requeue: bool = True) -> None:
        """Negatively acknowledge deliveries."""
        self._settle("nack", delivery_tag, multiple, requeue)

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        """Reject a delivery."""
        self._settle("reject", delivery_tag, False, requeue)

    def _settle(self, how: str, delivery_tag: int, multiple: bool, requeue: bool) -> None:
        conn = self.connection
        with conn._lock:
            conn._check()
            self._book.settle(how, delivery_tag, multiple, requeue)

    # -- closing -----------------------------------------------------------------------------

    def close(self, reply_code: int = 200, reply_text: str = "Normal close",
              timeout: float | None = None) -> None:
        """Close the channel (waiting for the broker's close-ok)."""
        conn = self.connection
        book = self._book
        with conn._lock:
            if book.error is not None:
                return
            book.close(reply_code, reply_text)
        conn._wait(lambda: book.error is not None, timeout, raise_errors=False)

    def __enter__(self) -> BlockingChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.is_open and self.connection.is_open:
            self.close()


class BlockingConnection(ConnectionBase):
    """An AMQP connection over a plain (or TLS) socket; see `txpika.blocking`.

    Opened by the constructor (or `txpika.blocking.connect`): it returns once
    ``connection.open-ok`` arrived, or raises as `txpika.blocking.connect` says.
    Thread-safe: every operation holds the connection's lock.
    """

    def channel(self, timeout: float | None = None) -> BlockingChannel:
        """Open a channel; raises the connection's error, `txpika.errors.UsageError` (no
        free channel), the broker's refusal, or ``TimeoutError``."""
        opened: list[BaseException | None] = []
        with self._lock:
            self._check()
            channel = self._session.open_channel(
                lambda book: BlockingChannel(self, book, self._requests), Message,
                lambda _: opened.append(None), opened.append)
        self._wait(lambda: bool(opened), timeout)
        if opened[0] is not None:
            raise opened[0]
        return channel
