"""`AMQPProtocol`: the Twisted adapter over the sans-IO core, and `AMQPClientFactory`.

The protocol is thin: ``dataReceived`` feeds the core, events become Deferred results,
and whatever the core queues is written to the transport (straight to the socket when a TCP
transport has nothing buffered, see `AMQPProtocol._write`). Heartbeats and timeouts run on
the injected clock (``IReactorTime``). The protocol registers itself as the transport's
streaming producer, so publishing waits while the transport is over its high-water mark.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.tcp import Connection as _TCPConnection
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txpika import events as ev
from txpika import spec
from txpika.channel import Channel
from txpika.connection import NEED_DATA, Connection, ConnState
from txpika.errors import ConnectionClosedByClient, FlowControlError
from txpika.message import Message
from txpika.parameters import ConnectionParameters

__all__ = ["AMQPClientFactory", "AMQPProtocol"]

log = Logger()

#: How long a close waits for the broker's close-ok before dropping the transport.
CLOSE_TIMEOUT = 10.0
#: How many bytes of a large message are copied into the transport at a time.
_WRITE_BATCH = 262144
#: Output pieces that may wait for the end of an event batch before being written.
_MAX_DEFERRED_CHUNKS = 64


def _dialect(name: str) -> Any:
    if name == "0-8":
        from txpika import spec_0_8  # imported only when asked for (it is large)

        return spec_0_8.DIALECT
    return spec.DIALECT


def _default_clock() -> IReactorTime:
    from twisted.internet import reactor

    return reactor  # type: ignore[return-value,unused-ignore]


class _Unsent:
    """One publish's frames held for a paused transport, and the Deferred of the publish."""

    __slots__ = ("chunks", "deferred")

    def __init__(self, chunks: list[bytes | memoryview],
                 waiter: Deferred[None] | None) -> None:
        self.chunks: list[bytes | memoryview] | None = chunks
        self.deferred: Deferred[None] = waiter or Deferred(self._cancel)

    def _cancel(self, d: Deferred[None]) -> None:
        self.chunks = None  # dropped by the writer: the message is never sent


@implementer(IPushProducer)
class AMQPProtocol(Protocol):
    """One AMQP connection over a Twisted transport.

    ``ready`` fires with the protocol after ``connection.open-ok``, or fails with why the
    handshake did not finish. ``closed`` (a method returning a fresh Deferred) fires, never
    fails, with the exception that ended the connection. Not thread-safe: use it from the
    reactor thread.
    """

    #: On a TCP or UNIX transport: the most bytes read at once while reads fill the
    #: transport's buffer (Twisted's default, 64 KiB, otherwise). The transport uses the same
    #: figure as the amount of unsent output over which it pauses publishing.
    read_size: ClassVar[int] = 262144
    #: On a TCP or UNIX transport: the most bytes one send() may take (Twisted's: 128 KiB).
    send_limit: ClassVar[int] = 524288

    def __init__(self, parameters: ConnectionParameters | None = None,
                 clock: IReactorTime | None = None) -> None:
        self.parameters = parameters or ConnectionParameters()
        self.clock: IReactorTime = clock or _default_clock()
        p = self.parameters
        self._core = Connection(
            dialect=_dialect(p.protocol),
            credentials=p.credentials,
            virtual_host=p.virtual_host,
            channel_max=p.channel_max,
            frame_max=p.frame_max,
            heartbeat=p.heartbeat,
            locale=p.locale,
            client_properties=p.client_properties,
            connection_name=p.connection_name,
        )
        self._channels: dict[int, Channel] = {}
        self._opening: dict[int, Deferred[Channel]] = {}
        self._ready_waiters: list[Deferred[AMQPProtocol]] = []
        self._closed_waiters: list[Deferred[BaseException]] = []
        self._flow_listeners: list[Callable[[bool, str], object]] = []
        self._return_listeners: list[Callable[[Message], object]] = []
        self._error: BaseException | None = None
        self._opened = False
        self._paused = False
        # Output held while the transport is paused, in order: bytes, memoryview pieces of
        # large bodies, and Deferreds to fire once the writer gets past them.
        self._backlog: deque[Any] = deque()
        self._losing = False
        self._writing = False
        self._readers_paused: set[object] = set()
        self._draining = False
        self._heartbeat_call: IDelayedCall | None = None
        self._handshake_call: IDelayedCall | None = None
        self._close_call: IDelayedCall | None = None
        self._transport_gone = False
        self._secret_waiters: list[Deferred[None]] = []
        self._timed_out: BaseException | None = None  # the handshake timeout, if it fired
        self._fd: FileDescriptor | None = None  # a TCP or UNIX transport (read size tuning)
        self._tcp: Any = None  # the same, if a twisted.internet.tcp.Connection (write-through)
        self._small_read = 65536

    def __repr__(self) -> str:
        state = self._core.state.value
        return f"<AMQPProtocol {self.parameters.describe()} {state}>"

    # -- public -------------------------------------------------------------------------------

    @property
    def ready(self) -> Deferred[AMQPProtocol]:
        """A new Deferred that fires with this protocol once the connection is open, or
        fails with the error that ended the handshake."""
        if self._opened and self._error is None:
            return succeed(self)
        if self._error is not None and not self._opened:
            return fail(self._error)
        if self._error is not None:
            return fail(self._error)
        d: Deferred[AMQPProtocol] = Deferred()
        self._ready_waiters.append(d)
        return d

    def closed(self) -> Deferred[BaseException]:
        """A new Deferred that fires (never fails) with the exception that ended the
        connection: `txpika.errors.ConnectionClosedByClient` (reply code 200) after a normal
        `close`, or the broker's, the protocol's or the transport's error."""
        if self._error is not None and self._transport_gone:
            return succeed(self._error)
        d: Deferred[BaseException] = Deferred()
        self._closed_waiters.append(d)
        return d

    @property
    def is_open(self) -> bool:
        """True while the connection is open and not closing."""
        return self._core.is_open

    @property
    def is_blocked(self) -> bool:
        """True while the broker blocks publishers (``connection.blocked``)."""
        return self._core.blocked

    @property
    def blocked_reason(self) -> str:
        """The broker's reason for the current block, or ``""``."""
        return self._core.blocked_reason

    @property
    def server_properties(self) -> dict[str, Any]:
        """What the broker said about itself in ``connection.start``."""
        return dict(self._core.server_properties)

    @property
    def dialect(self) -> str:
        """``"0-9-1"`` or ``"0-8"``."""
        return self._core.dialect.name

    def add_flow_listener(self, callback: Callable[[bool, str], object]) -> None:
        """Call ``callback(active, reason)`` when the broker blocks or unblocks publishers."""
        self._flow_listeners.append(callback)

    def remove_flow_listener(self, callback: Callable[[bool, str], object]) -> None:
        """Stop calling ``callback``."""
        self._flow_listeners.remove(callback)

    def add_return_listener(self, callback: Callable[[Message], object]) -> None:
        """Call ``callback(message)`` for returned messages not tied to a confirmed publish
        (mandatory publishes outside confirm mode)."""
        self._return_listeners.append(callback)

    def channel(self, channel_number: int | None = None) -> Deferred[Channel]:
        """Open a channel. Fires with the `Channel`; fails with the connection's error,
        `txpika.errors.UsageError` (number in use or no free channel), or the broker's
        refusal."""
        if self._error is not None:
            return fail(self._error)
        try:
            number = self._core.open_channel(channel_number)
        except Exception as exc:
            return fail(exc)
        d: Deferred[Channel] = Deferred()
        self._opening[number] = d
        self._channels[number] = Channel(self, number)
        self._flush()
        return d

    def close(self, reply_code: int = 200, reply_text: str = "Normal shutdown") -> Deferred[None]:
        """Close the connection. Fires with ``None`` once the transport is gone; every
        pending Deferred fails with `txpika.errors.ConnectionClosedByClient`."""
        if self._transport_gone:
            return succeed(None)
        d = self.closed()
        self._core.close(reply_code, reply_text)
        self._drain()
        if self._close_call is None and not self._transport_gone:
            self._close_call = self.clock.callLater(CLOSE_TIMEOUT, self._abort)
        return d.addCallback(lambda _: None)

    def update_secret(self, new_secret: bytes | str, reason: str = "") -> Deferred[None]:
        """Replace the credentials' secret (an expiring token). Fires with ``None`` on the
        broker's ``update-secret-ok``."""
        secret = new_secret.encode() if isinstance(new_secret, str) else new_secret
        try:
            self._core.update_secret(secret, reason)
        except Exception as exc:
            return fail(exc)
        d: Deferred[None] = Deferred()
        self._secret_waiters.append(d)
        self._flush()
        return d

    # -- IProtocol --------------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: object = self.transport
        if isinstance(transport, FileDescriptor):  # TCP and UNIX sockets, not TLS's wrapper
            # Twisted's 128 KiB per send costs a reactor turn per 128 KiB of a large message.
            # Its read size is raised while reads fill it (see dataReceived).
            self._fd = transport
            if isinstance(transport, _TCPConnection):
                self._tcp = transport
            self._small_read = transport.bufferSize
            transport.SEND_LIMIT = max(transport.SEND_LIMIT, self.send_limit)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._core.initiate()
        self._handshake_call = self.clock.callLater(
            self.parameters.connection_timeout, self._handshake_timed_out)
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        fd = self._fd
        if fd is not None:
            # A read that filled the transport's buffer means more is waiting: read up to
            # read_size at a time (fewer reactor turns for large messages). Once reads are
            # small again, go back to Twisted's size: each read allocates that much, and a
            # 256 KiB allocation per small read costs page faults.
            size = len(data)
            if size >= fd.bufferSize:
                if size < self.read_size:
                    fd.bufferSize = self.read_size
            elif size < self._small_read and fd.bufferSize != self._small_read:
                fd.bufferSize = self._small_read
        self._core.receive_data(data)
        self._drain()

    def connectionLost(self, reason: Failure | None = None) -> None:
        lost = reason.value if reason is not None else None
        if lost is None:
            lost = ConnectionError("connection lost")
        self._transport_gone = True
        self._cancel_timers()
        self._core.connection_lost(lost)
        self._drain()
        error = self._error or lost
        backlog, self._backlog = self._backlog, deque()
        for item in backlog:
            if type(item) is _Unsent:
                if item.chunks is not None:
                    item.chunks = None
                    item.deferred.errback(error)
            elif isinstance(item, Deferred):
                item.errback(error)
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(error)

    # -- IPushProducer (the transport's back-pressure) --------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._writing:
            return  # called from inside our own write: the loop writing goes on
        self._flush()

    def stopProducing(self) -> None:
        self._paused = True

    # -- internals ------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Hand what the core queued to the transport, holding back while it is paused.

        While events are being dispatched (``_drain``) small output waits for the end of
        the batch, so that many publishes or acks made from callbacks go out in one write.
        Small writes go straight through. A large body arrives as memoryview pieces of the
        caller's bytes; they are copied into the transport one batch at a time, only while
        the transport is below its high-water mark, so a 64 MiB message never sits in the
        transport's buffer whole.
        """
        if self._transport_gone or self.transport is None:
            return
        core = self._core
        if self._draining and core.pending_chunks < _MAX_DEFERRED_CHUNKS:
            return  # _drain flushes once its batch of events is done
        chunks = core.chunks_to_send()
        if chunks:
            backlog = self._backlog
            if backlog or self._paused or self._writing:
                backlog.extend(chunks)
            else:
                for chunk in chunks:
                    if type(chunk) is not bytes:
                        backlog.extend(chunks)
                        break
                else:
                    # One bytes for the transport: a join in C costs less than Twisted's
                    # writeSequence, which checks and counts each piece in Python.
                    self._write(chunks[0] if len(chunks) == 1 else b"".join(chunks))  # type: ignore[arg-type]
        if self._backlog and not self._paused and not self._writing:
            self._write_backlog()
        if core.state is ConnState.CLOSED and not self._backlog and not self._losing:
            self._losing = True
            # A TLS transport sends its close_notify only once no producer is registered.
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
            self.transport.loseConnection()

    def _write(self, data: bytes) -> None:
        """Write ``data``: straight to the socket when a TCP transport has nothing buffered,
        else through the transport.

        Twisted's transport.write() buffers, asks the reactor to watch for writability and
        sends on its next turn, then stops watching: two epoll_ctl calls and a reactor turn
        per write. A request/response exchange (an RPC, a synchronous method) writes a
        little and waits, so most writes find the transport empty: they go out at once
        with the transport's own writeSomeData(). Whatever the socket does not take, and
        any error, is left to transport.write(), which keeps the order: nothing else was
        buffered.
        """
        tcp = self._tcp
        if (tcp is not None and not tcp._tempDataLen and tcp.offset == len(tcp.dataBuffer)
                and tcp.connected and not tcp.disconnecting and not tcp._writeDisconnected):
            sent = tcp.writeSomeData(data)
            if type(sent) is int:
                if sent == len(data):
                    return
                data = data[sent:]
        self.transport.write(data)  # type: ignore[union-attr]

    def _stash(self) -> None:
        """Move what the core queued so far into the backlog (keeping the order)."""
        self._backlog.extend(self._core.chunks_to_send())

    def _when_written(self, waiter: Deferred[None] | None = None) -> Deferred[None]:
        """A Deferred that fires once everything queued so far is handed to the transport
        (``waiter`` if given)."""
        self._flush()
        if not self._backlog and not self._core.pending_chunks:
            if waiter is None:
                return succeed(None)
            waiter.callback(None)
            return waiter
        d: Deferred[None] = waiter or Deferred()
        self._stash()
        self._backlog.append(d)  # a marker: fired when the writer gets past it
        return d

    def _hold_publish(self, waiter: Deferred[None] | None) -> Deferred[None]:
        """The core just queued one publish's frames (and nothing else: see `_stash`) while
        the transport is paused: hold them as one unit, so that a timeout or cancel before
        they are written drops them (the message is then never sent), and so does the
        ``raise`` flow policy when the broker blocks publishers."""
        unsent = _Unsent(self._core.chunks_to_send(), waiter)
        backlog = self._backlog
        backlog.append(unsent)
        # While events are dispatched (_drain), what callbacks publish is written in batches
        # (and the rest once the dispatching is done), as in _flush.
        if not self._paused and not self._writing and (
            not self._draining or len(backlog) >= _MAX_DEFERRED_CHUNKS
        ):
            self._write_backlog()
        return unsent.deferred

    def _drop_unsent(self, error: BaseException) -> None:
        """Fail the publishes held for the transport, which are then never sent."""
        for item in self._backlog:
            if type(item) is _Unsent and item.chunks is not None:
                item.chunks = None
                item.deferred.errback(error)

    def _write_backlog(self) -> None:
        backlog = self._backlog
        write = self._write
        self._writing = True  # a transport may pause and resume us from inside write()
        try:
            while backlog and not self._paused:
                # Pieces of a batch are joined into one bytes: the only copy of a large
                # body's memoryview pieces before the kernel's.
                batch: list[bytes | memoryview] = []
                written: list[Deferred[None]] = []
                size = 0
                while backlog and size < _WRITE_BATCH:
                    item = backlog.popleft()
                    kind = type(item)
                    if kind is bytes or kind is memoryview:
                        batch.append(item)
                        size += len(item)
                    elif kind is _Unsent:
                        if item.chunks is None:
                            continue  # cancelled, timed out or refused: never sent
                        batch.extend(item.chunks)
                        for chunk in item.chunks:
                            size += len(chunk)
                        item.chunks = None
                        written.append(item.deferred)
                    else:
                        written.append(item)
                if batch:
                    # may call pauseProducing() and stop the loop
                    write(batch[0] if len(batch) == 1 and type(batch[0]) is bytes
                          else b"".join(batch))
                for d in written:
                    d.callback(None)
        finally:
            self._writing = False

    def _drain(self) -> None:
        if self._draining:
            return  # an event handler called back into us; the outer loop goes on
        self._draining = True
        core = self._core
        try:
            while True:
                event = core.next_event()
                if event is NEED_DATA:
                    break
                self._dispatch(event)
        finally:
            self._draining = False
        self._flush()

    def _dispatch(self, event: Any) -> None:
        kind = type(event)
        if kind is ev.MessageReceived:
            channel = self._channels.get(event.channel)
            if channel is not None:
                channel._on_message(event.method, event.properties, event.body)
        elif kind is ev.MethodReceived:
            if event.channel == 0:
                self._secret_ok()
                return
            channel = self._channels.get(event.channel)
            if channel is not None:
                channel._on_reply(event.method)
        elif kind is ev.PublishAcked or kind is ev.PublishNacked:
            channel = self._channels.get(event.channel)
            if channel is not None:
                channel._on_confirm(event.delivery_tags, kind is ev.PublishAcked)
        elif kind is ev.PublishReturned:
            channel = self._channels.get(event.channel)
            if channel is not None:
                channel._on_returned(event.delivery_tag, event.method, event.properties,
                                     event.body)
        elif kind is ev.ChannelOpened:
            d = self._opening.pop(event.channel, None)
            if d is not None:
                d.callback(self._channels[event.channel])
        elif kind is ev.ChannelClosed:
            self._on_channel_closed(event.channel, event.error)
        elif kind is ev.ChannelFlow:
            channel = self._channels.get(event.channel)
            if channel is not None:
                channel._set_flow(event.active and not self._core.blocked)
        elif kind is ev.ConnectionBlocked or kind is ev.ConnectionUnblocked:
            self._on_blocked(kind is ev.ConnectionBlocked)
        elif kind is ev.ConnectionOpened:
            self._on_opened(event)
        elif kind is ev.ConnectionClosed:
            self._on_closed(event.error)

    def _on_opened(self, event: ev.ConnectionOpened) -> None:
        self._opened = True
        if self._handshake_call is not None and self._handshake_call.active():
            self._handshake_call.cancel()
        self._handshake_call = None
        log.info("connected to {broker} (AMQP {dialect}, heartbeat {heartbeat} s, "
                 "frame_max {frame_max})", broker=self.parameters.describe(),
                 dialect=self.dialect, heartbeat=event.heartbeat, frame_max=event.frame_max)
        self._schedule_heartbeat(self._core.heartbeat_tick(self.clock.seconds()))
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(self)

    def _on_closed(self, error: BaseException) -> None:
        # A silent peer after start-ok is reported by the core as refused credentials.
        error = self._timed_out or error
        self._error = error
        self._cancel_heartbeat()
        if not isinstance(error, ConnectionClosedByClient) or error.reply_code != 200:
            log.info("connection to {broker} closed: {error}",
                     broker=self.parameters.describe(), error=error)
        for number, d in list(self._opening.items()):
            del self._opening[number]
            d.errback(error)
        for channel in list(self._channels.values()):
            channel._closed(error)
        waiters, self._ready_waiters = self._ready_waiters, []
        for d2 in waiters:
            d2.errback(error)
        secrets, self._secret_waiters = self._secret_waiters, []
        for d3 in secrets:
            d3.errback(error)
        if self._core.state is ConnState.CLOSING and not self._transport_gone:
            # We told the peer why (a protocol error); give it a moment to say close-ok.
            self._close_call = self.clock.callLater(CLOSE_TIMEOUT, self._abort)

    def _on_channel_closed(self, number: int, error: BaseException) -> None:
        d = self._opening.pop(number, None)
        channel = self._channels.get(number)
        if channel is not None:
            channel._closed(error)
        if d is not None:
            d.errback(error)

    def _on_blocked(self, blocked: bool) -> None:
        reason = self._core.blocked_reason
        log.info("broker {state} publishers{reason}", state="blocked" if blocked else
                 "unblocked", reason=f": {reason}" if reason else "")
        for listener in list(self._flow_listeners):
            try:
                listener(not blocked, reason)
            except Exception:
                log.failure("flow listener {listener} failed", listener=listener)
        if blocked and self.parameters.flow_policy == "raise":
            self._drop_unsent(FlowControlError(f"the broker blocked publishers: {reason}"))
        for channel in list(self._channels.values()):
            channel._set_flow(not blocked and self._core.flow_active(channel.channel_number))

    def _secret_ok(self) -> None:
        if self._secret_waiters:
            self._secret_waiters.pop(0).callback(None)

    def _returned(self, message: Message) -> None:
        for listener in list(self._return_listeners):
            try:
                listener(message)
            except Exception:
                log.failure("return listener {listener} failed", listener=listener)

    def _forget_channel(self, number: int) -> None:
        self._channels.pop(number, None)

    def _pause_reading(self, who: object) -> None:
        if not self._readers_paused and self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        self._readers_paused.add(who)

    def _resume_reading(self, who: object) -> None:
        self._readers_paused.discard(who)
        if not self._readers_paused and self.transport is not None and not self._transport_gone:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    # -- timers ----------------------------------------------------------------------------------

    def _schedule_heartbeat(self, when: float | None) -> None:
        self._cancel_heartbeat()
        if when is not None:
            delay = max(0.0, when - self.clock.seconds())
            self._heartbeat_call = self.clock.callLater(delay, self._heartbeat)

    def _heartbeat(self) -> None:
        self._heartbeat_call = None
        # While a full consumer buffer keeps us from reading, the peer's frames wait unread
        # in the socket: its silence is ours and proves nothing about the peer.
        when = self._core.heartbeat_tick(self.clock.seconds(),
                                         reading_paused=bool(self._readers_paused))
        self._drain()
        if self._core.state is ConnState.CLOSED and not self._transport_gone:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._schedule_heartbeat(when)

    def _cancel_heartbeat(self) -> None:
        if self._heartbeat_call is not None and self._heartbeat_call.active():
            self._heartbeat_call.cancel()
        self._heartbeat_call = None

    def _handshake_timed_out(self) -> None:
        from twisted.internet.defer import TimeoutError as DeferTimeoutError

        self._handshake_call = None
        error = DeferTimeoutError(
            f"no AMQP handshake with {self.parameters.describe()} within "
            f"{self.parameters.connection_timeout:g} s")
        self._timed_out = error
        self._core.connection_lost(error)
        self._drain()
        self._abort()

    def _abort(self) -> None:
        self._close_call = None
        if not self._transport_gone and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _cancel_timers(self) -> None:
        self._cancel_heartbeat()
        for call in (self._handshake_call, self._close_call):
            if call is not None and call.active():
                call.cancel()
        self._handshake_call = self._close_call = None


class AMQPClientFactory(Factory):
    """Builds `AMQPProtocol` for ``endpoint.connect(AMQPClientFactory(parameters))``.

    ``clock`` defaults to the global reactor, looked up when a protocol is built.
    """

    protocol = AMQPProtocol

    def __init__(self, parameters: ConnectionParameters | None = None,
                 clock: IReactorTime | None = None) -> None:
        self.parameters = parameters or ConnectionParameters()
        self.clock = clock

    def buildProtocol(self, addr: Any) -> AMQPProtocol:
        proto = AMQPProtocol(self.parameters, self.clock)
        proto.factory = self
        return proto

