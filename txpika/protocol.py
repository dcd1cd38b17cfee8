"""`AMQPProtocol`: the Twisted adapter over the sans-IO core, and `AMQPClientFactory`.

The protocol is thin: ``dataReceived`` feeds the core, the session
(`txpika._session.Session`) routes the core's events to the channel books, and what the
core queues goes to the transport through the outbox (`txpika._outbox.Outbox`) and the
link (`txpika._transport.Link`: straight to an idle TCP socket, back-pressure, reading
pauses). Heartbeats and timeouts run on the injected clock (``IReactorTime``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txpika import events as ev
from txpika._delivery import MessageBase
from txpika._outbox import MAX_BATCHED_CHUNKS, Outbox
from txpika._requests import Requests
from txpika._session import CoreFacts, Session, core_for
from txpika._transport import HIGH_WATER, Link
from txpika.channel import Channel, Message
from txpika.connection import ConnState
from txpika.errors import ConnectionClosedByClient, ConnectionLost, FlowControlError
from txpika.parameters import ConnectionParameters

__all__ = ["AMQPClientFactory", "AMQPProtocol"]

_CLOSED = ConnState.CLOSED

#: The logger of the Twisted adapter (namespace ``txpika.protocol``).
log = Logger()

#: How long a close waits for the broker's close-ok before dropping the transport.
CLOSE_TIMEOUT = 10.0


def _default_clock() -> IReactorTime:
    from twisted.internet import reactor

    return reactor  # type: ignore[return-value,unused-ignore]


class _Port:
    """What the protocol's channels and consumers use of it (`txpika.channel.ChannelPort`)."""

    def __init__(self, protocol: AMQPProtocol) -> None:
        self._protocol = protocol

    @property
    def clock(self) -> IReactorTime:
        return self._protocol.clock

    @property
    def outbox(self) -> Outbox:
        return self._protocol._outbox

    @property
    def flow_policy(self) -> str:
        return self._protocol.parameters.flow_policy

    @property
    def blocked_reason(self) -> str:
        return self._protocol.blocked_reason

    def pause_reading(self, who: object) -> None:
        link = self._protocol._link
        if link is not None:
            link.pause_reading(who)

    def after_batch(self, call: Callable[[], object]) -> None:
        self._protocol._later(call)

    def resume_reading(self, who: object) -> None:
        protocol = self._protocol
        if protocol._link is not None and not protocol._transport_gone:
            protocol._link.resume_reading(who)


class AMQPProtocol(CoreFacts, Protocol):
    """One AMQP connection over a Twisted transport.

    ``ready`` fires with the protocol after ``connection.open-ok``, or fails with why the
    handshake did not finish. `when_closed` fires, never fails, with the exception that
    ended the connection. Not thread-safe: use it from the reactor thread.
    """

    #: Bytes handed to the transport and not yet sent over which publishing waits.
    high_water: ClassVar[int] = HIGH_WATER

    def __init__(self, parameters: ConnectionParameters | None = None,
                 clock: IReactorTime | None = None) -> None:
        #: The parameters it connects with.
        self.parameters = parameters or ConnectionParameters()
        #: The clock heartbeats and timeouts run on (the reactor unless one was given).
        self.clock: IReactorTime = clock or _default_clock()
        self._core = core_for(self.parameters)
        self._requests = Requests(self._core.dialect)
        self._outbox = Outbox(self._core, self._write)
        self._session = Session(
            self._core, flush=self._flush, log=log, on_opened=self._on_opened,
            on_closed=self._on_closed, on_blocked=self._on_blocked,
            on_secret_ok=self._secret_ok, on_returned=self._returned)
        self._port = _Port(self)
        self._link: Link | None = None
        self._after_batch: list[Callable[[], object]] = []
        self._ready_waiters: list[Deferred[AMQPProtocol]] = []
        self._closed_waiters: list[Deferred[BaseException]] = []
        self._flow_listeners: list[Callable[[bool, str], object]] = []
        self._return_listeners: list[Callable[[Message], object]] = []
        self._secret_waiters: list[Deferred[None]] = []
        self._error: BaseException | None = None
        self._opened = False
        self._losing = False
        self._transport_gone = False
        self._heartbeat_call: IDelayedCall | None = None
        self._handshake_call: IDelayedCall | None = None
        self._close_call: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"<AMQPProtocol {self.parameters.describe()} {self._core.state.value}>"

    # -- public -------------------------------------------------------------------------------

    @property
    def ready(self) -> Deferred[AMQPProtocol]:
        """A new Deferred that fires with this protocol once the connection is open, or
        fails with the error that ended the handshake (or the connection)."""
        if self._error is not None:
            return fail(self._error)
        if self._opened:
            return succeed(self)
        d: Deferred[AMQPProtocol] = Deferred()
        self._ready_waiters.append(d)
        return d

    def when_closed(self) -> Deferred[BaseException]:
        """A new Deferred that fires (never fails) with the exception that ended the
        connection, once its transport is gone: `txpika.errors.ConnectionClosedByClient`
        (reply code 200) after a normal `close`, the broker's error, a
        `txpika.errors.ProtocolError`, `txpika.errors.HeartbeatTimeout`, or
        `txpika.errors.ConnectionLost` for a transport that went away."""
        if self._error is not None and self._transport_gone:
            return succeed(self._error)
        d: Deferred[BaseException] = Deferred()
        self._closed_waiters.append(d)
        return d

    @property
    def reading_paused(self) -> bool:
        """True while a consumer with a full buffer keeps the connection from reading."""
        return self._link is not None and self._link.reading_paused

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
        d: Deferred[Channel] = Deferred()
        try:
            self._session.open_channel(
                lambda book: Channel(self._port, book, self._requests), Message,
                d.callback, d.errback, channel_number)
        except Exception as exc:
            return fail(exc)
        return d

    def close(self, reply_code: int = 200, reply_text: str = "Normal shutdown") -> Deferred[None]:
        """Close the connection. Fires with ``None`` once the transport is gone; every
        pending Deferred fails with `txpika.errors.ConnectionClosedByClient`."""
        if self._transport_gone:
            return succeed(None)
        d = self.when_closed()
        self._core.close(reply_code, reply_text)
        self._drain()
        if self._close_call is None and not self._transport_gone:
            self._close_call = self.clock.callLater(CLOSE_TIMEOUT, self._abort)
        return d.addCallback(lambda _: None)

    def abort(self) -> None:
        """Drop the transport at once, without ``connection.close`` (`when_closed` then
        fires with `txpika.errors.ConnectionLost`). Doing it twice is harmless."""
        self._abort()

    def update_secret(self, new_secret: bytes | str, reason: str = "") -> Deferred[None]:
        """Replace the credentials' secret (an expiring token). Fires with ``None`` on the
        broker's ``update-secret-ok``; fails with the connection's error, or
        `txpika.errors.UsageError` on 0-8."""
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
        """``IProtocol``: the transport is up; send the protocol header and start the
        timeout on connecting and the handshake together (``connection_timeout``)."""
        link = self._link = Link(self.transport, self._outbox.pause, self._outbox.resume)
        if link.direct:  # large bodies go to the socket from their own bytes
            self._outbox.write_pieces = link.write_pieces
        self._core.initiate()
        self._handshake_call = self.clock.callLater(
            self.parameters.connection_timeout, self._handshake_timed_out)
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        """``IProtocol``: feed received bytes to the core and act on its events."""
        self._core.receive_data(data)
        if self._link is not None:
            # A large message arriving: read on while reads fill what they ask.
            self._link.read_on(data, self._core.receive_data)
        self._drain()

    def connectionLost(self, reason: Failure | None = None) -> None:
        """``IProtocol``: the transport is gone; every pending Deferred of the connection
        and its channels fails (`txpika.errors.ConnectionLost` unless the connection was
        closed first) and `when_closed` fires."""
        lost = reason.value if reason is not None else None
        if self._link is not None and self._link.read_error is not None:
            lost = self._link.read_error  # what reading on met first
        error = ConnectionLost(lost if isinstance(lost, BaseException) else None)
        self._transport_gone = True
        self._cancel_timers()
        self._core.connection_lost(error)
        self._drain()
        error_seen = self._error or error
        self._outbox.lost(error_seen)
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(error_seen)

    # -- internals ------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._link is not None:
            self._link.write(data)


    def _flush(self) -> None:
        outbox = self._outbox
        if outbox.batching and self._core.pending_chunks < MAX_BATCHED_CHUNKS:
            return  # the end of the batch of events flushes (the commonest case: acks)
        if self._transport_gone or self._link is None:
            return
        outbox.flush()
        if self._core.state is _CLOSED and outbox.idle and not self._losing:
            self._losing = True
            self._link.close()

    def _drain(self) -> None:
        outbox = self._outbox
        if outbox.batching:
            return  # an event handler called back into us; the outer loop goes on
        outbox.batching = True
        try:
            self._session.dispatch()
            after = self._after_batch
            while after:  # (what they run may ask for more)
                after.pop(0)()
        finally:
            outbox.batching = False
        self._flush()

    def _later(self, call: Callable[[], object]) -> None:
        if self._outbox.batching:
            self._after_batch.append(call)
        else:
            call()

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
        self._error = error
        self._cancel_heartbeat()
        if not isinstance(error, ConnectionClosedByClient) or error.reply_code != 200:
            log.info("connection to {broker} closed: {error}",
                     broker=self.parameters.describe(), error=error)
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(error)
        secrets, self._secret_waiters = self._secret_waiters, []
        for d3 in secrets:
            d3.errback(error)
        if self._core.state is ConnState.CLOSING and not self._transport_gone:
            # We told the peer why (a protocol error); give it a moment to say close-ok.
            self._close_call = self.clock.callLater(CLOSE_TIMEOUT, self._abort)

    def _on_blocked(self, blocked: bool, reason: str) -> None:
        log.info("broker {state} publishers{reason}", state="blocked" if blocked else
                 "unblocked", reason=f": {reason}" if reason else "")
        for listener in list(self._flow_listeners):
            try:
                listener(not blocked, reason)
            except Exception:
                log.failure("flow listener {listener} failed", listener=listener)
        if blocked and self.parameters.flow_policy == "raise":
            self._outbox.drop_unsent(FlowControlError(
                f"the broker blocked publishers: {reason}"))

    def _secret_ok(self) -> None:
        if self._secret_waiters:
            self._secret_waiters.pop(0).callback(None)

    def _returned(self, message: MessageBase) -> None:
        for listener in list(self._return_listeners):
            try:
                listener(message)  # type: ignore[arg-type]
            except Exception:
                log.failure("return listener {listener} failed", listener=listener)

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
                                         reading_paused=self.reading_paused)
        self._drain()
        if self._core.state is ConnState.CLOSED and not self._transport_gone:
            self._abort()
            return
        self._schedule_heartbeat(when)

    def _cancel_heartbeat(self) -> None:
        if self._heartbeat_call is not None and self._heartbeat_call.active():
            self._heartbeat_call.cancel()
        self._heartbeat_call = None

    def _handshake_timed_out(self) -> None:
        self._handshake_call = None
        self._core.abort(DeferTimeoutError(
            f"no AMQP handshake with {self.parameters.describe()} within "
            f"{self.parameters.connection_timeout:g} s"))
        self._drain()
        self._abort()

    def _abort(self) -> None:
        self._close_call = None
        if not self._transport_gone and self._link is not None:
            self._link.abort()

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
        #: The parameters each protocol it builds connects with.
        self.parameters = parameters or ConnectionParameters()
        #: The clock its protocols use (``None``: the reactor).
        self.clock = clock

    def buildProtocol(self, addr: Any) -> AMQPProtocol:
        """``IProtocolFactory``: a new `AMQPProtocol` with this factory's parameters."""
        proto = AMQPProtocol(self.parameters, self.clock)
        proto.factory = self
        return proto
