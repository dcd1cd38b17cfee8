"""The asyncio connection: an ``asyncio.Protocol`` that drives the sans-IO core.

``data_received`` feeds the core and the session (`txpika._session.Session`) routes its
events to the channel books; what the core queues goes to the transport through the
outbox (`txpika._outbox.Outbox`), which ``pause_writing``/``resume_writing`` hold back and
release. The first output after a read is written at once (a request after its reply costs
no extra turn of the loop); what follows it, and what is sent while a read is dispatched
or by the coroutines that read woke, is corked until the next turn and goes out in one
write. Heartbeats run on the loop's clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Self, cast

from txpika import events as ev
from txpika._delivery import MessageBase
from txpika._outbox import MAX_BATCHED_CHUNKS, Outbox
from txpika._requests import Requests
from txpika._session import CoreFacts, Session, core_for
from txpika.aio._channel import Channel, Message
from txpika.aio._log import log
from txpika.connection import ConnState
from txpika.errors import ConnectionLost, FlowControlError
from txpika.parameters import ConnectionParameters

__all__ = ["Connection"]

_CLOSED = ConnState.CLOSED
#: Bytes buffered in the transport over which it says pause_writing.
HIGH_WATER = 262144
#: How long a close waits for the broker's close-ok before dropping the transport.
CLOSE_TIMEOUT = 10.0

def _settle(future: asyncio.Future[Any], value: Any = None,
            error: BaseException | None = None) -> None:
    if not future.done():
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


class Connection(CoreFacts, asyncio.Protocol):
    """One AMQP connection over an asyncio transport; get it from `txpika.aio.connect`.

    ``async with`` closes it. Not thread-safe: use it from its event loop.
    """

    def __init__(self, parameters: ConnectionParameters, loop: asyncio.AbstractEventLoop
                 ) -> None:
        #: The `txpika.ConnectionParameters` it was opened with.
        self.parameters = parameters
        #: The event loop it runs on.
        self.loop = loop
        self._core = core = core_for(parameters)
        self._requests = Requests(core.dialect)
        self._outbox = Outbox(core, self._write)
        self._outbox.batching = True  # until the turn's end (_flush_now)
        self._session = Session(
            core, flush=self._flush, log=log, on_opened=self._on_opened,
            on_closed=self._on_closed, on_blocked=self._on_blocked,
            on_secret_ok=self._secret_ok, on_returned=self._returned)
        self._transport: asyncio.Transport | None = None
        self._ready: asyncio.Future[None] = loop.create_future()
        self._gone: asyncio.Future[BaseException] = loop.create_future()
        #: An already completed future, what calls that finish at once return (awaiting
        #: it costs nothing; it cannot be cancelled).
        self.done: asyncio.Future[None] = loop.create_future()
        self.done.set_result(None)  # what calls done at once return: awaiting it is free
        self._error: BaseException | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._reading = False  # dispatching what a read brought
        self._burst = False  # wrote at once since the last read: cork what follows
        self._woken = False  # a read handed a message to a waiting coroutine
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._pausers: set[object] = set()
        self._losing = False
        self._flow_listeners: list[Callable[[bool, str], object]] = []
        self._return_listeners: list[Callable[[Message], object]] = []
        self._secrets: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        return f"<aio.Connection {self.parameters.describe()} {self._core.state.value}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- public -------------------------------------------------------------------------------

    @property
    def reading_paused(self) -> bool:
        """True while a consumer with a full buffer keeps the connection from reading."""
        return bool(self._pausers)

    def when_closed(self) -> asyncio.Future[BaseException]:
        """A future with (never failing with) the exception that ended the connection, once
        its transport is gone: `txpika.errors.ConnectionClosedByClient` after `close`, the
        broker's error, `txpika.errors.HeartbeatTimeout`, or `txpika.errors.ConnectionLost`."""
        return asyncio.shield(self._gone)

    def add_flow_listener(self, callback: Callable[[bool, str], object]) -> None:
        """Call ``callback(active, reason)`` when the broker blocks or unblocks publishers."""
        self._flow_listeners.append(callback)

    def remove_flow_listener(self, callback: Callable[[bool, str], object]) -> None:
        """Stop calling ``callback``."""
        self._flow_listeners.remove(callback)

    def add_return_listener(self, callback: Callable[[Message], object]) -> None:
        """Call ``callback(message)`` for messages returned outside confirm mode."""
        self._return_listeners.append(callback)

    async def channel(self, channel_number: int | None = None) -> Channel:
        """Open a channel; returns the `txpika.aio.Channel`. Raises the connection's error,
        `txpika.errors.UsageError` (number in use, no free channel) or the broker's
        refusal."""
        opened: asyncio.Future[Channel] = self.loop.create_future()

        def ready(channel: Channel) -> None:
            if opened.done():  # the caller gave up: nobody has the channel
                channel._book.close(200, "abandoned")
            else:
                opened.set_result(channel)

        self._session.open_channel(lambda book: Channel(self, book, self._requests), Message,
                                   ready, lambda e: _settle(opened, error=e), channel_number)
        try:
            return await opened
        except asyncio.CancelledError:
            if opened.done() and not opened.cancelled():  # opened as the task was cancelled
                opened.result()._book.close(200, "abandoned")
            raise

    async def close(self, reply_code: int = 200, reply_text: str = "Normal shutdown") -> None:
        """Close the connection; returns once the transport is gone (at most
        ``CLOSE_TIMEOUT`` seconds). Pending calls fail with
        `txpika.errors.ConnectionClosedByClient`. Closing twice is harmless."""
        if not self._gone.done():
            self._core.close(reply_code, reply_text)
            self._drain()
            if "close" not in self._timers and not self._gone.done():
                self._timers["close"] = self.loop.call_later(CLOSE_TIMEOUT, self.abort)
            await asyncio.shield(self._gone)

    def abort(self) -> None:
        """Drop the transport at once, without ``connection.close``."""
        if self._transport is not None and not self._gone.done():
            self._transport.abort()

    async def update_secret(self, new_secret: bytes | str, reason: str = "") -> None:
        """Replace the credentials' secret; returns on ``update-secret-ok``. Raises the
        connection's error, or `txpika.errors.UsageError` on 0-8."""
        secret = new_secret.encode() if isinstance(new_secret, str) else new_secret
        self._core.update_secret(secret, reason)
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._secrets.append(waiter)
        self._flush()
        await waiter

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The transport connected: send the protocol header."""
        # (uvloop's transports are not subclasses of asyncio.Transport)
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self._core.initiate()
        self._flush()

    def data_received(self, data: bytes) -> None:
        """Bytes from the broker: feed the core, route its events."""
        self._burst = False
        self._reading = True
        try:
            self._core.receive_data(data)
            self._session.dispatch()
        finally:
            self._reading = False
        if self._woken or self._core.pending_chunks or self._core.state is _CLOSED:
            self._woken = False  # the coroutines it woke write next turn, with this
            self._cork()  # (and once closed, the transport is closed after the last write)

    def eof_received(self) -> bool:
        """The broker closed its side: the transport closes (connection_lost follows)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is gone: everything pending fails with the connection's error."""
        error: BaseException = ConnectionLost(exc)
        self._transport = None  # (nothing more is written to it)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._core.connection_lost(error)
        self._drain()
        error = self._error or error
        self._outbox.lost(error)
        _settle(self._gone, error)

    def pause_writing(self) -> None:
        """The transport is over its high-water mark: hold output back."""
        self._outbox.pause()

    def resume_writing(self) -> None:
        """The transport drained: write what waits."""
        self._outbox.batching = False
        try:
            self._outbox.resume()
        finally:
            self._outbox.batching = True

    # -- for channels and consumers ---------------------------------------------------------

    def pause_reading(self, who: object) -> None:
        """Stop reading from the transport until every pauser resumed."""
        if not self._pausers and self._transport is not None and not self._gone.done():
            self._transport.pause_reading()
        self._pausers.add(who)

    def resume_reading(self, who: object) -> None:
        """``who`` no longer needs reading paused."""
        self._pausers.discard(who)
        if not self._pausers and self._transport is not None and not self._gone.done():
            self._transport.resume_reading()

    # -- internals ------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._gone.done():
            self._transport.write(data)

    def _woke(self) -> None:
        """A read handed a message to a waiting coroutine: cork its output (acks)."""
        self._woken = True

    def _flush(self) -> None:
        """Write now if nothing was written since the last read, else at the next turn of
        the loop (or now, past a batch)."""
        if self._reading or self._burst or self._flush_handle is not None:
            if self._core.pending_chunks >= MAX_BATCHED_CHUNKS:
                self._outbox.flush()
            self._cork()
        else:
            self._burst = True
            self._write_out()

    def _cork(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_handle = None
        self._burst = False
        self._write_out()

    def _write_out(self) -> None:
        outbox = self._outbox
        outbox.batching = False
        try:
            outbox.flush()
        finally:
            outbox.batching = True
        if self._core.state is _CLOSED and outbox.idle and not self._losing:
            self._losing = True
            if self._transport is not None:
                self._transport.close()

    def _drain(self) -> None:
        self._session.dispatch()
        self._flush()

    def _on_opened(self, event: ev.ConnectionOpened) -> None:
        log.info("connected to {broker} (AMQP {dialect}, heartbeat {heartbeat} s)",
                 broker=self.parameters.describe(), dialect=self.dialect,
                 heartbeat=event.heartbeat)
        self._heartbeat(initial=True)
        _settle(self._ready)

    def _on_closed(self, error: BaseException) -> None:
        self._error = error
        timer = self._timers.pop("heartbeat", None)
        if timer is not None:
            timer.cancel()
        _settle(self._ready, error=error)  # (connect awaits it during the handshake)
        secrets, self._secrets = self._secrets, []
        for waiter in secrets:
            _settle(waiter, error=error)
        if "close" not in self._timers and not self._gone.done():
            self._timers["close"] = self.loop.call_later(CLOSE_TIMEOUT, self.abort)

    def _on_blocked(self, blocked: bool, reason: str) -> None:
        log.info("broker {state} publishers {reason}",
                 state="blocked" if blocked else "unblocked", reason=reason)
        for listener in list(self._flow_listeners):
            try:
                listener(not blocked, reason)
            except Exception:
                log.failure("flow listener {listener} failed", listener=listener)
        if blocked and self.parameters.flow_policy == "raise":
            self._outbox.drop_unsent(FlowControlError(f"the broker blocked publishers: {reason}"))

    def _secret_ok(self) -> None:
        if self._secrets:
            _settle(self._secrets.pop(0))

    def _returned(self, message: MessageBase) -> None:
        for listener in list(self._return_listeners):
            try:
                listener(message)  # type: ignore[arg-type]
            except Exception:
                log.failure("return listener {listener} failed", listener=listener)

    def _heartbeat(self, initial: bool = False) -> None:
        self._timers.pop("heartbeat", None)
        when = self._core.heartbeat_tick(self.loop.time(), reading_paused=bool(self._pausers))
        if not initial:
            self._drain()
            if self._core.state is _CLOSED:  # the peer is silent: HeartbeatTimeout
                self.abort()
                return
        if when is not None:
            self._timers["heartbeat"] = self.loop.call_at(when, self._heartbeat)
