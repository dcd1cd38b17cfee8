"""A blocking adapter for scripts: plain sockets, no reactor, no Twisted on its import path.

::

    from txpika import blocking

    with blocking.connect("amqp://guest:guest@localhost/%2F") as conn:
        ch = conn.channel()
        ch.queue_declare("jobs", durable=True)            # returns Queue.DeclareOk
        ch.confirm_select()
        ch.basic_publish("", "jobs", b"hello")            # returns on the broker's ack
        for message in ch.consume("jobs", prefetch=10, inactivity_timeout=1.0):
            if message is None:                           # idle for inactivity_timeout
                break
            message.ack()

It drives the same sans-IO core as the Twisted protocol (`txpika.connection`), with the
same URLs and `txpika.parameters.ConnectionParameters`, the same ``-Ok`` results and the
same exceptions from `txpika.errors`. Every call takes ``timeout`` (seconds; the builtin
``TimeoutError`` when it passes). Heartbeats are sent and checked whenever a call is
inside the connection; `BlockingConnection.process_data_events` services them (and
consumer callbacks) while a script is otherwise idle.

Threads: a `BlockingConnection`, its channels and their messages are thread-safe. Every
operation holds the connection's lock while it touches the core or writes to the socket,
so frames of two threads never interleave; a thread waiting for a reply lets the others
work meanwhile, and whichever thread is waiting reads the socket for all of them. One
connection per thread works too, with nothing shared. Consumer callbacks run in the
thread that happens to be reading, outside the lock.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from typing import Any

from txpika import events as ev
from txpika import spec
from txpika._delivery import MessageBase
from txpika.connection import NEED_DATA, Connection, ConnState
from txpika.errors import (
    ChannelClosedByClient,
    ConnectionClosedByClient,
    ConsumerCancelled,
    FlowControlError,
    NackError,
    OutcomeUnknownError,
    UnroutableError,
    UsageError,
)
from txpika.parameters import ConnectionParameters, InvalidParameter, parse_url

__all__ = ["BlockingChannel", "BlockingConnection", "BlockingConsumer", "Message", "connect"]

#: Longest a reading thread blocks in select() before looking at heartbeats and timeouts.
_SLICE = 0.25
_UNKNOWN = object()
#: publish_batch writes when this many pieces of output are queued, and at its end
_BATCH_CHUNKS = 64
#: Bytes asked of one recv(): _RECV_SMALL, or _RECV_LARGE while reads fill that (a large
#: message arriving). Each recv() allocates what it asks for, and a 256 KiB allocation for
#: every small read costs page faults.
_RECV_SMALL = 65536
_RECV_LARGE = 262144
#: Reads block in recv() with SO_RCVTIMEO (see BlockingConnection.__init__); Linux only.
_DIRECT = sys.platform == "linux" and hasattr(socket, "MSG_DONTWAIT")
_TIMEVAL = struct.Struct("@ll")


def connect(target: str | ConnectionParameters = "amqp://localhost/",
            **overrides: Any) -> BlockingConnection:
    """Open a connection; returns it once ``connection.open-ok`` arrived.

    Takes the same URLs and `ConnectionParameters` as `txpika.connect` (endpoint
    descriptions need Twisted and are refused). Raises `InvalidParameter`, ``OSError``
    (refused, unreachable, TLS verification), `txpika.errors.AuthenticationError`,
    `txpika.errors.AccessRefused`, or ``TimeoutError`` after ``connection_timeout``.
    """
    if isinstance(target, ConnectionParameters):
        parameters = target.replace(**overrides) if overrides else target
    elif isinstance(target, str):
        parameters = parse_url(target, **overrides)
    else:
        raise InvalidParameter(f"connect() takes a URL or ConnectionParameters, not "
                               f"{type(target).__name__}")
    if parameters.endpoint:
        raise InvalidParameter("endpoint descriptions need Twisted; give the blocking "
                               "adapter an amqp:// or amqps:// URL")
    return BlockingConnection(parameters)


class Message(MessageBase):
    """A delivered, fetched or returned message; ``ack``/``nack``/``reject`` act at once.

    The same attributes as the Twisted `txpika.Message`; settling twice, settling an
    auto-acked message or settling after the channel closed raises
    `txpika.errors.UsageError` and sends nothing.
    """

    __slots__ = ()

    channel: BlockingChannel | None

    def ack(self, multiple: bool = False) -> None:
        """Acknowledge this message (with ``multiple``, every earlier one too)."""
        channel = self.channel
        if channel is None or self._settled or self.reply_code is not None:
            self._settle("ack", multiple=multiple)  # raises the right UsageError
            return
        channel.basic_ack(self.delivery_tag, multiple)
        self._settled = True

    def nack(self, requeue: bool = True, multiple: bool = False) -> None:
        """Negatively acknowledge this message."""
        self._settle("nack", requeue=requeue, multiple=multiple)

    def reject(self, requeue: bool = True) -> None:
        """Reject this message."""
        self._settle("reject", requeue=requeue)

    def _settle(self, how: str, **kwargs: Any) -> None:
        self._may_settle()
        getattr(self.channel, f"basic_{how}")(self.delivery_tag, **kwargs)
        self._settled = True


class _Call:
    """A synchronous request waiting for its reply (or abandoned after a timeout)."""

    __slots__ = ("abandoned", "done", "on_reply", "reply")

    def __init__(self, on_reply: Callable[[Any], None] | None = None) -> None:
        self.reply: Any = None
        self.done = False
        self.abandoned = False
        self.on_reply = on_reply  # run under the lock as the reply is dispatched


class BlockingConsumer:
    """A consumer: iterate it, or `get` messages; or give ``basic_consume`` a callback.

    Its buffer is bounded by the channel's prefetch (``basic_qos``). It ends when
    cancelled (`cancel`), when the broker cancels it (`txpika.errors.ConsumerCancelled`)
    or when the channel closes (its error). Iterating stops cleanly when this client
    cancelled it or closed the channel or the connection.
    """

    def __init__(self, channel: BlockingChannel, consumer_tag: str, queue: str,
                 callback: Callable[[Message], object] | None, auto_ack: bool) -> None:
        self.channel = channel
        self.consumer_tag = consumer_tag
        self.queue = queue
        self.auto_ack = auto_ack
        self._callback = callback
        self._buffer: deque[Message] = deque()
        self._ended: BaseException | None = None
        self._normal_end = False

    @property
    def active(self) -> bool:
        """True until the consumer ended."""
        return self._ended is None

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

    def _end(self, error: BaseException, normal: bool = False) -> None:
        if self._ended is None:
            self._ended = error
            self._normal_end = normal


class BlockingChannel:
    """One channel: the methods of `txpika.channel.Channel`, returning results directly."""

    def __init__(self, connection: BlockingConnection, number: int) -> None:
        self.connection = connection
        self.channel_number = number
        self._m = connection._core.dialect.module
        self._calls: deque[_Call] = deque()
        self._consumers: dict[str, BlockingConsumer] = {}
        self._confirms: dict[int, Any] = {}  # tag -> None (acked) or an exception
        self._waiting_confirms: set[int] = set()
        self._error: BaseException | None = None
        self._opened = False
        self._flow_active = True

    def __repr__(self) -> str:
        return f"<BlockingChannel {self.channel_number} {'open' if self.is_open else 'closed'}>"

    @property
    def is_open(self) -> bool:
        """True until the channel or its connection closed."""
        return self._error is None

    # -- synchronous methods ---------------------------------------------------------------

    def _call(self, method: Any, timeout: float | None,
              on_reply: Callable[[Any], None] | None = None) -> Any:
        conn = self.connection
        call = _Call(on_reply)
        with conn._lock:
            self._check()
            conn._core.send_method(self.channel_number, method)
            if getattr(method, "nowait", False):
                conn._flush()
                return None
            self._calls.append(call)
            conn._flush()
        try:
            conn._wait(lambda: call.done or self._error is not None, timeout)
        except TimeoutError:
            with conn._lock:
                if not call.done:  # (another thread may have dispatched it meanwhile)
                    call.abandoned = True  # its reply, when it comes, is dropped
                    raise
        with conn._lock:
            if call.done:
                return call.reply
            call.abandoned = True
            raise self._error  # type: ignore[misc]

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        self.connection._check()

    def exchange_declare(self, exchange: str, exchange_type: str = "direct",
                         passive: bool = False, durable: bool = False,
                         auto_delete: bool = False, internal: bool = False,
                         arguments: Mapping[str, Any] | None = None,
                         timeout: float | None = None) -> Any:
        """Declare an exchange; returns ``Exchange.DeclareOk``."""
        return self._call(self._m.Exchange.Declare(0, exchange, exchange_type, passive,
                                                   durable, auto_delete, internal, False,
                                                   arguments), timeout)

    def exchange_delete(self, exchange: str, if_unused: bool = False,
                        timeout: float | None = None) -> Any:
        """Delete an exchange; returns ``Exchange.DeleteOk``."""
        return self._call(self._m.Exchange.Delete(0, exchange, if_unused, False), timeout)

    def exchange_bind(self, destination: str, source: str, routing_key: str = "",
                      arguments: Mapping[str, Any] | None = None,
                      timeout: float | None = None) -> Any:
        """Bind two exchanges (0-9-1 only); returns ``Exchange.BindOk``."""
        if not self.connection._core.dialect.extensions:
            raise UsageError("exchange bindings do not exist in AMQP 0-8")
        return self._call(self._m.Exchange.Bind(0, destination, source, routing_key, False,
                                                arguments), timeout)

    def exchange_unbind(self, destination: str, source: str, routing_key: str = "",
                        arguments: Mapping[str, Any] | None = None,
                        timeout: float | None = None) -> Any:
        """Remove an exchange binding; returns ``Exchange.UnbindOk``."""
        if not self.connection._core.dialect.extensions:
            raise UsageError("exchange bindings do not exist in AMQP 0-8")
        return self._call(self._m.Exchange.Unbind(0, destination, source, routing_key, False,
                                                  arguments), timeout)

    def queue_declare(self, queue: str = "", passive: bool = False, durable: bool = False,
                      exclusive: bool | None = None, auto_delete: bool | None = None,
                      arguments: Mapping[str, Any] | None = None,
                      timeout: float | None = None) -> Any:
        """Declare a queue; returns ``Queue.DeclareOk``. A server-named queue defaults to
        exclusive and auto-delete."""
        if exclusive is None:
            exclusive = not queue
        if auto_delete is None:
            auto_delete = not queue
        return self._call(self._m.Queue.Declare(0, queue, passive, durable, exclusive,
                                                auto_delete, False, arguments), timeout)

    def queue_bind(self, queue: str, exchange: str, routing_key: str = "",
                   arguments: Mapping[str, Any] | None = None,
                   timeout: float | None = None) -> Any:
        """Bind a queue; returns ``Queue.BindOk``."""
        return self._call(self._m.Queue.Bind(0, queue, exchange, routing_key, False,
                                             arguments), timeout)

    def queue_unbind(self, queue: str, exchange: str, routing_key: str = "",
                     arguments: Mapping[str, Any] | None = None,
                     timeout: float | None = None) -> Any:
        """Remove a queue binding; returns ``Queue.UnbindOk``."""
        return self._call(self._m.Queue.Unbind(0, queue, exchange, routing_key, arguments),
                          timeout)

    def queue_purge(self, queue: str, timeout: float | None = None) -> Any:
        """Purge a queue; returns ``Queue.PurgeOk``."""
        return self._call(self._m.Queue.Purge(0, queue, False), timeout)

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False,
                     timeout: float | None = None) -> Any:
        """Delete a queue; returns ``Queue.DeleteOk``."""
        return self._call(self._m.Queue.Delete(0, queue, if_unused, if_empty, False),
                          timeout)

    def basic_qos(self, prefetch_count: int = 0, prefetch_size: int = 0,
                  global_qos: bool = False, timeout: float | None = None) -> Any:
        """Set the prefetch; returns ``Basic.QosOk``."""
        return self._call(self._m.Basic.Qos(prefetch_size, prefetch_count, global_qos),
                          timeout)

    def basic_recover(self, requeue: bool = True, timeout: float | None = None) -> Any:
        """Redeliver unacked messages; returns ``Basic.RecoverOk``."""
        return self._call(self._m.Basic.Recover(requeue), timeout)

    def confirm_select(self, timeout: float | None = None) -> Any:
        """Turn on publisher confirms; returns ``Confirm.SelectOk`` (0-9-1 only)."""
        if not self.connection._core.dialect.extensions:
            raise UsageError("publisher confirms do not exist in AMQP 0-8")
        return self._call(self._m.Confirm.Select(False), timeout)

    def tx_select(self, timeout: float | None = None) -> Any:
        """Start transactions; returns ``Tx.SelectOk``."""
        return self._call(self._m.Tx.Select(), timeout)

    def tx_commit(self, timeout: float | None = None) -> Any:
        """Commit; returns ``Tx.CommitOk``."""
        return self._call(self._m.Tx.Commit(), timeout)

    def tx_rollback(self, timeout: float | None = None) -> Any:
        """Roll back; returns ``Tx.RollbackOk``."""
        return self._call(self._m.Tx.Rollback(), timeout)

    def flow(self, active: bool, timeout: float | None = None) -> Any:
        """Ask the broker to pause or resume deliveries; returns ``Channel.FlowOk``."""
        return self._call(self._m.Channel.Flow(active), timeout)

    # -- consuming ---------------------------------------------------------------------------

    def basic_consume(self, queue: str,
                      on_message_callback: Callable[[Message], object] | None = None,
                      auto_ack: bool = False, exclusive: bool = False,
                      consumer_tag: str | None = None,
                      arguments: Mapping[str, Any] | None = None,
                      timeout: float | None = None) -> BlockingConsumer:
        """Start a consumer; returns a `BlockingConsumer`. With ``on_message_callback``
        each message is passed to it while the connection is serviced (any call, or
        `BlockingConnection.process_data_events`); without, read it with ``get`` or by
        iterating."""
        m = self._m
        if self.connection._core.dialect.extensions:
            method = m.Basic.Consume(0, queue, consumer_tag or "", False, auto_ack,
                                     exclusive, False, arguments)
        elif arguments:
            raise UsageError("basic.consume has no arguments in AMQP 0-8")
        else:
            method = m.Basic.Consume(0, queue, consumer_tag or "", False, auto_ack,
                                     exclusive, False)
        started: list[BlockingConsumer] = []

        def register(ok: Any) -> None:
            # Under the lock, as consume-ok is dispatched: the deliveries that follow it in
            # the same read must find their consumer (else they are rejected, redelivered).
            consumer = BlockingConsumer(self, ok.consumer_tag, queue, on_message_callback,
                                        auto_ack)
            self._consumers[ok.consumer_tag] = consumer
            started.append(consumer)

        self._call(method, timeout, on_reply=register)
        return started[0]

    def consume(self, queue: str, prefetch: int | None = None, auto_ack: bool = False,
                exclusive: bool = False, arguments: Mapping[str, Any] | None = None,
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

    def basic_cancel(self, consumer_tag: str, timeout: float | None = None) -> Any:
        """Cancel a consumer; returns ``Basic.CancelOk``."""
        ok = self._call(self._m.Basic.Cancel(consumer_tag, False), timeout)
        with self.connection._lock:
            consumer = self._consumers.pop(consumer_tag, None)
            if consumer is not None:
                consumer._end(ConsumerCancelled(consumer_tag, "was cancelled by this client"),
                              normal=True)
        return ok

    def basic_get(self, queue: str, auto_ack: bool = False,
                  timeout: float | None = None) -> Message | None:
        """Fetch one message; ``None`` if the queue is empty."""
        reply = self._call(self._m.Basic.Get(0, queue, auto_ack), timeout)
        return reply if isinstance(reply, Message) else None

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None:
        """Acknowledge deliveries; `txpika.errors.UsageError` if none awaits an ack."""
        self._settle(self.connection._core.basic_ack, delivery_tag, multiple)

    def basic_nack(self, delivery_tag: int = 0, multiple: bool = False,
                   requeue: bool = True) -> None:
        """Negatively acknowledge deliveries."""
        self._settle(self.connection._core.basic_nack, delivery_tag, multiple, requeue)

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        """Reject a delivery."""
        self._settle(self.connection._core.basic_reject, delivery_tag, requeue)

    def _settle(self, action: Callable[..., None], *args: Any) -> None:
        conn = self.connection
        with conn._lock:
            if self._error is not None:
                raise UsageError(f"channel {self.channel_number} is closed ({self._error}); "
                                 "its deliveries can no longer be settled")
            conn._check()
            action(self.channel_number, *args)
            conn._flush()

    # -- publishing ---------------------------------------------------------------------------

    def basic_publish(self, exchange: str, routing_key: str, body: bytes,
                      properties: Any = None, mandatory: bool = False,
                      timeout: float | None = None) -> None:
        """Publish a message.

        Without confirms it returns once the frames are written (the socket applies
        backpressure). In confirm mode it returns on the broker's ack, or raises
        `txpika.errors.NackError`, `txpika.errors.UnroutableError` or
        `txpika.errors.OutcomeUnknownError`. While the broker blocks publishers it waits
        (flow policy ``"wait"``) or raises `txpika.errors.FlowControlError` (``"raise"``).
        """
        conn = self.connection
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._flow_active or conn._core.blocked:
            self._wait_for_flow(deadline)
        with conn._lock:
            self._check()
            tag = conn._core.basic_publish(self.channel_number, exchange, routing_key, body,
                                           properties, mandatory)
            if tag:
                self._waiting_confirms.add(tag)
            conn._flush(deadline)
        if not tag:
            return
        confirms = self._confirms
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            conn._wait(lambda: tag in confirms or self._error is not None, remaining)
        except TimeoutError:
            with conn._lock:
                self._waiting_confirms.discard(tag)
                confirms.pop(tag, None)
            raise
        with conn._lock:
            self._waiting_confirms.discard(tag)
            outcome = confirms.pop(tag, _UNKNOWN)
        if outcome is _UNKNOWN:
            raise OutcomeUnknownError(self._error or "connection lost")
        if outcome is not None:
            raise outcome

    def publish_batch(self, messages: Iterable[tuple[Any, ...]],
                      timeout: float | None = None) -> list[BaseException | None]:
        """Publish many messages, pipelined; returns one outcome per message, in order:
        ``None`` for success (acked, in confirm mode) or the exception for that message.

        Each message is ``(exchange, routing_key, body)`` optionally followed by
        ``properties`` and ``mandatory``. In confirm mode it waits for every confirm
        (``timeout`` bounds the whole batch), so a script makes one round trip for the
        batch, not one per message.
        """
        conn = self.connection
        tags: list[int] = []
        outcomes: list[BaseException | None] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        core = conn._core
        number = self.channel_number
        waiting = self._waiting_confirms
        try:
            for message in messages:
                exchange, routing_key, body, *rest = message
                properties = rest[0] if rest else None
                mandatory = bool(rest[1]) if len(rest) > 1 else False
                if not self._flow_active or core.blocked:
                    with conn._lock:
                        conn._flush(deadline)
                    self._wait_for_flow(deadline)
                with conn._lock:
                    self._check()
                    tag = core.basic_publish(number, exchange, routing_key, body, properties,
                                             mandatory)
                    if tag:
                        waiting.add(tag)
                    if core.pending_chunks >= _BATCH_CHUNKS:
                        conn._flush(deadline)
                tags.append(tag)
        finally:
            with conn._lock:
                conn._flush(deadline)
        pending = [t for t in tags if t]
        if pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                conn._wait(lambda: all(t in self._confirms for t in pending)
                           or self._error is not None, remaining)
            except TimeoutError:
                with conn._lock:
                    for t in pending:
                        self._waiting_confirms.discard(t)
                        self._confirms.pop(t, None)
                raise
        with conn._lock:
            for tag in tags:
                if not tag:
                    outcomes.append(None)
                    continue
                self._waiting_confirms.discard(tag)
                if tag in self._confirms:
                    outcomes.append(self._confirms.pop(tag))
                else:
                    outcomes.append(OutcomeUnknownError(self._error or "connection lost"))
        return outcomes

    def _wait_for_flow(self, deadline: float | None) -> None:
        conn = self.connection
        if self._flow_active and not conn._core.blocked:
            return
        if conn.parameters.flow_policy == "raise":
            raise FlowControlError(
                f"the broker stopped publishers ({conn._core.blocked_reason or 'flow'})")
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        conn._wait(lambda: (self._flow_active and not conn._core.blocked)
                   or self._error is not None, remaining)
        self._check()

    # -- closing -----------------------------------------------------------------------------

    def close(self, reply_code: int = 200, reply_text: str = "Normal close",
              timeout: float | None = None) -> None:
        """Close the channel (waiting for the broker's close-ok)."""
        conn = self.connection
        with conn._lock:
            if self._error is not None:
                return
            conn._core.close_channel(self.channel_number, reply_code, reply_text)
            conn._flush()
        conn._wait(lambda: self._error is not None, timeout)

    def __enter__(self) -> BlockingChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.is_open and self.connection.is_open:
            self.close()

    # -- events (connection lock held) --------------------------------------------------------

    def _closed(self, error: BaseException) -> None:
        if self._error is not None:
            return
        self._error = error
        self._calls.clear()  # their waiters see the error
        for tag in list(self._waiting_confirms):
            self._confirms.setdefault(tag, OutcomeUnknownError(error))
        for consumer in self._consumers.values():
            consumer._end(error, normal=isinstance(error, (ChannelClosedByClient,
                                                           ConnectionClosedByClient)))
        self._consumers.clear()

    def _reply(self, reply: Any) -> None:
        while self._calls:
            call = self._calls.popleft()
            if call.abandoned:
                if isinstance(reply, Message) and not reply.settled:
                    self.connection._core.basic_reject(self.channel_number,
                                                       reply.delivery_tag, True)
                elif getattr(reply, "NAME", "") == "basic.consume-ok":
                    self.connection._core.send_method(
                        self.channel_number, self._m.Basic.Cancel(reply.consumer_tag, False))
                    self._calls.append(_Call())
                    self._calls[-1].abandoned = True
                return
            call.reply = reply
            call.done = True
            if call.on_reply is not None:
                call.on_reply(reply)
            return


class BlockingConnection:
    """An AMQP connection over a plain (or TLS) socket; see the module docstring."""

    def __init__(self, parameters: ConnectionParameters) -> None:
        self.parameters = parameters
        p = parameters
        dialect = spec.DIALECT
        if p.protocol == "0-8":
            from txpika import spec_0_8

            dialect = spec_0_8.DIALECT
        self._core = Connection(
            dialect=dialect, credentials=p.credentials, virtual_host=p.virtual_host,
            channel_max=p.channel_max, frame_max=p.frame_max, heartbeat=p.heartbeat,
            locale=p.locale, client_properties=p.client_properties,
            connection_name=p.connection_name)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._reading = False
        self._waiters = 0
        self._raw_pending = False
        self._channels: dict[int, BlockingChannel] = {}
        self._error: BaseException | None = None
        self._callbacks: deque[tuple[Callable[[Message], object], Message]] = deque()
        self._next_tick: float | None = None
        self._sock = self._open_socket()
        self._recv_size = _RECV_SMALL
        # A plain socket on Linux stays in blocking mode: reads block in recv() for at most
        # a slice (SO_RCVTIMEO) instead of poll() then recv(), and writes never block
        # (MSG_DONTWAIT). TLS sockets and other systems are non-blocking, read after poll().
        self._direct = not isinstance(self._sock, ssl.SSLSocket) and _DIRECT
        self._send_flags = socket.MSG_DONTWAIT if self._direct else 0
        if self._direct:
            self._sock.setblocking(True)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                  _TIMEVAL.pack(0, int(_SLICE * 1_000_000)))
        self._poller = select.poll()
        self._poller.register(self._sock, select.POLLIN)
        with self._lock:
            self._core.initiate()
            self._flush()
        try:
            self._wait(lambda: self._core.is_open or self._error is not None,
                       p.connection_timeout)
            if self._error is not None:
                raise self._error
        except TimeoutError:
            self._sock.close()
            raise TimeoutError(f"no AMQP handshake with {p.describe()} within "
                               f"{p.connection_timeout:g} s") from None
        except BaseException:
            self._sock_close()  # refused (credentials, vhost) or lost: no socket left open
            raise
        self._next_tick = self._core.heartbeat_tick(time.monotonic())

    def __repr__(self) -> str:
        return f"<BlockingConnection {self.parameters.describe()} {self._core.state.value}>"

    def __enter__(self) -> BlockingConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public -------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True while the connection is open."""
        return self._core.is_open

    @property
    def is_blocked(self) -> bool:
        """True while the broker blocks publishers."""
        return self._core.blocked

    @property
    def server_properties(self) -> dict[str, Any]:
        """What the broker said about itself."""
        return dict(self._core.server_properties)

    def channel(self, timeout: float | None = None) -> BlockingChannel:
        """Open a channel."""
        with self._lock:
            self._check()
            number = self._core.open_channel()
            channel = self._channels[number] = BlockingChannel(self, number)
            self._flush()
        self._wait(lambda: channel._opened or channel._error is not None, timeout)
        if channel._error is not None:
            raise channel._error
        return channel

    def process_data_events(self, time_limit: float = 0) -> None:
        """Service the connection for up to ``time_limit`` seconds: read what arrived,
        run consumer callbacks, send and check heartbeats."""
        self._wait(lambda: False, time_limit, raise_timeout=False, run_callbacks=True)
        self._check()

    def close(self, reply_code: int = 200, reply_text: str = "Normal shutdown",
              timeout: float = 10.0) -> None:
        """Close the connection cleanly (bounded by ``timeout``); closing twice is fine."""
        with self._lock:
            if self._core.state is ConnState.CLOSED:
                self._sock_close()
                return
            self._core.close(reply_code, reply_text)
            self._process()
            self._flush()
        with contextlib.suppress(TimeoutError):
            self._wait(lambda: self._core.state is ConnState.CLOSED, timeout,
                       raise_errors=False)
        with self._lock:
            self._sock_close()

    # -- the loop -------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _wait(self, predicate: Callable[[], bool], timeout: float | None,
              raise_timeout: bool = True, raise_errors: bool = True,
              run_callbacks: bool = True) -> None:
        """Service the socket until ``predicate()`` (checked under the lock) holds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        polled = False
        while True:
            with self._lock:  # the Condition's lock, without its two Python-level calls
                if predicate():
                    break
                if self._error is not None:
                    if raise_errors:
                        raise self._error
                    break
                now = time.monotonic()
                if deadline is not None and now >= deadline and polled:
                    if raise_timeout:
                        raise TimeoutError("the broker did not answer in time")
                    break
                wait = _SLICE if deadline is None else max(0.0, min(_SLICE, deadline - now))
                polled = True
                if self._reading:
                    self._waiters += 1
                    try:
                        self._cond.wait(wait)
                    finally:
                        self._waiters -= 1
                    continue
                self._reading = True
                if self._direct and wait >= _SLICE:
                    data = self._recv_blocking()
                else:
                    data = self._recv_ready(self._select(wait))
                self._reading = False
                self._read(data)
                self._tick()
                if self._waiters:
                    self._cond.notify_all()
            if run_callbacks and self._callbacks:
                self._run_callbacks()
        if run_callbacks and self._callbacks:
            self._run_callbacks()

    def _select(self, wait: float) -> bool:
        """Wait (lock released) until the socket is readable; True if it is."""
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        self._lock.release()
        try:
            readable = self._poller.poll(max(0.0, wait) * 1000.0)
        except (OSError, ValueError):
            readable = [sock]
        finally:
            self._lock.acquire()
        return bool(readable)

    def _recv_blocking(self) -> Any:
        """One recv() on the plain socket, blocking with the lock released for at most one
        slice (its SO_RCVTIMEO): a round trip costs no poll() system call. Returns bytes (b""
        at the end of the stream), None if nothing came, or the OSError raised."""
        sock = self._sock
        self._lock.release()
        try:
            return sock.recv(self._recv_size)
        except (BlockingIOError, InterruptedError):  # the slice passed (EAGAIN)
            return None
        except OSError as exc:
            return exc
        finally:
            self._lock.acquire()

    def _recv_ready(self, ready: bool) -> Any:
        """After `_select`: as `_recv_blocking`, without blocking."""
        if not ready:
            return None
        try:
            if self._direct:
                return self._sock.recv(self._recv_size, socket.MSG_DONTWAIT)
            return self._sock.recv(self._recv_size)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                ssl.SSLWantWriteError):
            return None
        except OSError as exc:
            return exc

    def _read(self, data: Any) -> None:
        """Process what `_recv_blocking` or `_recv_ready` returned (lock held)."""
        if self._error is not None:
            return
        if self._raw_pending:  # what _read_raw queued while a write was stuck
            self._raw_pending = False
            self._process()
            self._flush()
        if data is None:
            return
        if isinstance(data, OSError):
            self._lost(data)
            return
        if not data:
            self._lost(ConnectionResetError("the broker closed the connection"))
            return
        size = len(data)
        if size >= self._recv_size:
            self._recv_size = _RECV_LARGE
        elif size < _RECV_SMALL:
            self._recv_size = _RECV_SMALL
        self._core.receive_data(data)
        self._process()
        self._flush()

    def _tick(self) -> None:
        now = time.monotonic()
        if self._next_tick is not None and now >= self._next_tick:
            self._next_tick = self._core.heartbeat_tick(now)
            self._process()
            self._flush()

    def _flush(self, deadline: float | None = None) -> None:
        """Write what the core queued (lock held). Reads meanwhile if the socket is full,
        so two full buffers cannot deadlock.

        With a ``deadline`` (a publish's timeout), a write still stuck then (the broker
        stopped reading) cannot be abandoned halfway through a frame: the connection is
        dropped and ``TimeoutError`` raised.
        """
        chunks = self._core.chunks_to_send()
        if not chunks or self._sock is None:
            return
        sock = self._sock
        if not isinstance(sock, ssl.SSLSocket):
            while True:
                chunks = self._sendmsg(sock, chunks)
                if not chunks:
                    return
                self._write_wait(sock, deadline)
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                try:
                    sent = sock.send(view)
                except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    self._write_wait(sock, deadline)
                    continue
                except OSError as exc:
                    self._lost(exc)
                    return
                view = view[sent:]

    def _write_wait(self, sock: Any, deadline: float | None) -> None:
        """The socket is full: wait for room (reading meanwhile) until ``deadline``."""
        if deadline is not None and time.monotonic() >= deadline:
            self._lost(ConnectionClosedByClient(
                0, "dropped: a write did not finish within its timeout (the broker stopped "
                "reading), and a frame cannot be left half-written"))
            raise TimeoutError("the broker did not take the message in time; the "
                               "connection was dropped")
        readable, _, _ = select.select([sock], [sock], [], _SLICE)
        if readable:
            self._read_raw()

    def _sendmsg(self, sock: Any, chunks: list[Any]) -> list[Any]:
        """Write ``chunks`` (one send, or sendmsg of up to 512); returns what is left
        after a short write, [] when all is written or the connection was lost."""
        n = len(chunks)
        if n == 1:
            try:
                sent = sock.send(chunks[0], self._send_flags)
            except (BlockingIOError, InterruptedError):
                return chunks
            except OSError as exc:
                self._lost(exc)
                return []
            if sent == len(chunks[0]):
                return []
            return [memoryview(chunks[0])[sent:]]
        i = 0
        while i < n:
            batch = chunks[i:i + 512]
            try:
                sent = sock.sendmsg(batch, (), self._send_flags)
            except (BlockingIOError, InterruptedError):
                return chunks[i:]
            except OSError as exc:
                self._lost(exc)
                return []
            for chunk in batch:
                size = len(chunk)
                if sent >= size:
                    sent -= size
                    i += 1
                    continue
                rest = chunks[i:]
                rest[0] = memoryview(chunk)[sent:]
                return rest
        return []

    def _read_raw(self) -> None:
        # Read while our writes are stuck: queue the data in the core, process it later.
        data = self._recv_ready(True)
        if data and not isinstance(data, OSError):
            self._core.receive_data(data)
            self._raw_pending = True

    def _lost(self, error: BaseException) -> None:
        self._core.connection_lost(error)
        self._process()
        self._sock_close()

    def _sock_close(self) -> None:
        with contextlib.suppress(OSError):
            if self._direct:  # wakes a thread blocked in recv() at once
                self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()

    def _process(self) -> None:
        """Dispatch the core's events (lock held)."""
        core = self._core
        while True:
            event: Any = core.next_event()
            if event is NEED_DATA:
                return
            kind = type(event)
            channel = self._channels.get(getattr(event, "channel", 0))
            if kind is ev.MessageReceived:
                self._message(channel, event)
            elif kind is ev.MethodReceived:
                if channel is None:
                    continue
                if event.method.NAME == "basic.cancel":
                    consumer = channel._consumers.pop(event.method.consumer_tag, None)
                    if consumer is not None:
                        consumer._end(ConsumerCancelled(consumer.consumer_tag))
                else:
                    channel._reply(event.method)
            elif kind is ev.PublishAcked or kind is ev.PublishNacked:
                if channel is not None:
                    for tag in event.delivery_tags:
                        if tag in channel._waiting_confirms:
                            channel._confirms[tag] = (None if kind is ev.PublishAcked
                                                      else NackError(tag))
            elif kind is ev.PublishReturned:
                if channel is not None and event.delivery_tag in channel._waiting_confirms:
                    returned = Message(None, event.method, event.properties, event.body)
                    channel._confirms[event.delivery_tag] = UnroutableError(
                        returned, event.method.reply_code, event.method.reply_text)
            elif kind is ev.ChannelOpened:
                if channel is not None:
                    channel._opened = True
            elif kind is ev.ChannelClosed:
                if channel is not None:
                    channel._closed(event.error)
                    self._channels.pop(event.channel, None)
            elif kind is ev.ChannelFlow:
                if channel is not None:
                    channel._flow_active = event.active
            elif kind is ev.ConnectionClosed:
                self._error = event.error
                for ch in list(self._channels.values()):
                    ch._closed(event.error)
                self._channels.clear()

    def _message(self, channel: BlockingChannel | None, event: Any) -> None:
        if channel is None:
            return
        method = event.method
        name = method.NAME
        if name == "basic.deliver":
            consumer = channel._consumers.get(method.consumer_tag)
            if consumer is None:
                if self._core.awaiting_ack(channel.channel_number, method.delivery_tag):
                    self._core.basic_reject(channel.channel_number, method.delivery_tag,
                                            True)
                return
            message = Message(channel, method, event.properties, event.body,
                              consumer.auto_ack)
            if consumer._callback is not None:
                self._callbacks.append((consumer._callback, message))
            else:
                consumer._buffer.append(message)
        elif name == "basic.get-ok":
            auto_ack = not self._core.awaiting_ack(channel.channel_number,
                                                   method.delivery_tag)
            channel._reply(Message(channel, method, event.properties, event.body, auto_ack))

    def _run_callbacks(self) -> None:
        # Consumer callbacks run outside the lock, so they may use the connection.
        while True:
            with self._lock:
                if not self._callbacks:
                    return
                callback, message = self._callbacks.popleft()
            callback(message)

    def _open_socket(self) -> Any:
        p = self.parameters
        sock: Any = socket.create_connection((p.host, p.effective_port),
                                             timeout=p.connection_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if p.tls:
            context = ssl.create_default_context(cafile=p.cafile)
            if not p.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if p.certfile:
                context.load_cert_chain(p.certfile, p.keyfile)
            try:
                sock = context.wrap_socket(sock, server_hostname=p.server_hostname or p.host)
            except Exception:
                sock.close()
                raise
        sock.setblocking(False)
        return sock

