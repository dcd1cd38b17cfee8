"""A tiny driver of the sans-IO core over a plain socket, for tests against a real broker.

`SockDriver` owns one TCP socket and one `txpika.connection.Connection`. Every wait is
bounded: `run_until` and `run_for` take a timeout (10 s by default) and raise
`DriverTimeout` instead of hanging, and the socket never blocks (reads and writes go
through ``select``). After each step the driver writes ``core.data_to_send()``, calls
``core.heartbeat_tick(time.monotonic())`` when it is due, and reports EOF with
``core.connection_lost()``.

Events are kept twice: `SockDriver.events` holds every event in arrival order, and a
pending list holds the ones no `run_until` has taken yet, so waiting for one event never
loses another::

    d = SockDriver.connect("127.0.0.1", 5672, dialect=spec.DIALECT)
    ch = d.open_channel()
    ok = d.call(ch, spec.Queue.Declare(queue="", exclusive=True))
    d.close()
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from typing import Any

from txpika import events as ev
from txpika.connection import NEED_DATA, Connection, ConnState
from txpika.frames import HEARTBEAT

__all__ = ["DEFAULT_TIMEOUT", "DriverTimeout", "SockDriver"]

DEFAULT_TIMEOUT = 10.0
_READ_SIZE = 1 << 20


class DriverTimeout(AssertionError):
    """`SockDriver.run_until` saw no matching event in time (or the connection ended)."""


class SockDriver:
    """Drive one `Connection` over one socket; see the module docstring."""

    def __init__(self, sock: socket.socket, core: Connection) -> None:
        sock.setblocking(False)
        self.sock: socket.socket | None = sock
        self.core = core
        self.events: list[Any] = []
        self.pending: list[Any] = []
        self.bytes_sent = 0
        self.bytes_received = 0
        self.heartbeats_sent = 0
        self.eof = False
        self._out = bytearray()
        self._next_tick: float | None = None

    @classmethod
    def connect(cls, host: str = "127.0.0.1", port: int = 5672, *,
                timeout: float = DEFAULT_TIMEOUT, wait_open: bool = True,
                **core_kwargs: Any) -> SockDriver:
        """Connect, run the handshake and (with ``wait_open``) wait for the outcome.

        ``core_kwargs`` go to `Connection`. With ``wait_open`` this returns once
        `events.ConnectionOpened` or `events.ConnectionClosed` arrived (the event stays
        pending, so a test can take it with `run_until`).
        """
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        driver = cls(sock, Connection(**core_kwargs))
        driver.core.initiate()
        driver._collect_output()
        if wait_open:
            driver.wait_for(
                lambda: any(isinstance(e, (ev.ConnectionOpened, ev.ConnectionClosed))
                            for e in driver.events),
                timeout, "the handshake to finish")
        return driver

    # -- waiting ------------------------------------------------------------------------------

    def run_until(self, predicate: Callable[[Any], bool],
                  timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Take and return the first pending event for which ``predicate`` is true.

        Pumps the socket until one arrives. Raises `DriverTimeout` after ``timeout``
        seconds, or at once when the connection is over and no such event is pending.
        """
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.pending):
                if predicate(event):
                    del self.pending[i]
                    return event
            if self.finished:
                raise DriverTimeout(f"the connection ended; pending events: {self.pending!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DriverTimeout(f"no matching event within {timeout} s; "
                                    f"pending events: {self.pending!r}")
            self.pump(remaining)

    def expect(self, kind: type, timeout: float = DEFAULT_TIMEOUT, **attrs: Any) -> Any:
        """`run_until` an event of type ``kind`` whose attributes equal ``attrs``."""
        return self.run_until(
            lambda e: isinstance(e, kind) and all(getattr(e, k) == v for k, v in attrs.items()),
            timeout)

    def wait_for(self, condition: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT,
                 what: str = "the condition") -> None:
        """Pump until ``condition()`` is true; `DriverTimeout` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.finished:
                raise DriverTimeout(f"waited {timeout} s for {what}; "
                                    f"pending events: {self.pending[-20:]!r}")
            self.pump(remaining)

    def run_for(self, seconds: float) -> None:
        """Pump for ``seconds`` (less if the connection ends), keeping heartbeats going."""
        deadline = time.monotonic() + seconds
        while not self.finished:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.pump(remaining)

    def take(self, kind: type) -> list[Any]:
        """Remove and return every pending event of type ``kind`` (no I/O)."""
        taken = [e for e in self.pending if isinstance(e, kind)]
        self.pending = [e for e in self.pending if not isinstance(e, kind)]
        return taken

    @property
    def finished(self) -> bool:
        """True once the socket is closed: nothing more can arrive."""
        return self.sock is None

    # -- one step -----------------------------------------------------------------------------

    def pump(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait at most ``timeout`` seconds for the socket, then handle what happened."""
        sock = self.sock
        if sock is None:
            return
        self._collect_output()  # the test may have called the core directly
        now = time.monotonic()
        wait = max(0.0, timeout)
        if self._next_tick is not None:
            wait = min(wait, max(0.0, self._next_tick - now))
        writers = [sock] if self._out else []
        readable, writable, _ = select.select([sock], writers, [], wait)
        if writable:
            self._write_some()
        if readable and self.sock is not None:
            try:
                data = sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as exc:
                self._lost(exc)
                return
            if data == b"":
                self._lost(ConnectionResetError("the broker closed the socket"))
                return
            if data:
                self.bytes_received += len(data)
                self.core.receive_data(data)
        self._drain()

    def _drain(self) -> None:
        core = self.core
        while True:
            event = core.next_event()
            self._collect_output()
            if event is NEED_DATA:
                break
            self.events.append(event)
            self.pending.append(event)
        self._tick()
        self._collect_output()
        self._write_some()
        if core.state is ConnState.CLOSED and not self._out:
            self._close_socket()

    def _tick(self) -> None:
        now = time.monotonic()
        if self._next_tick is None or now >= self._next_tick:
            self._next_tick = self.core.heartbeat_tick(now)

    def _collect_output(self) -> None:
        data = self.core.data_to_send()
        if data:
            if data == HEARTBEAT:
                self.heartbeats_sent += 1
            self._out += data

    def _write_some(self) -> None:
        sock = self.sock
        while self._out and sock is not None:
            try:
                sent = sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lost(exc)
                return
            self.bytes_sent += sent
            del self._out[:sent]

    def _lost(self, exc: BaseException) -> None:
        self.eof = True
        self._out.clear()
        self._close_socket()
        self.core.connection_lost(exc)
        self._drain_after_close()

    def _drain_after_close(self) -> None:
        while (event := self.core.next_event()) is not NEED_DATA:
            self.events.append(event)
            self.pending.append(event)
        self.core.data_to_send()

    def _close_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # -- conveniences for tests ---------------------------------------------------------------

    def open_channel(self, channel: int | None = None,
                     timeout: float = DEFAULT_TIMEOUT) -> int:
        """Open a channel and wait for ``channel.open-ok``; returns its number."""
        number = self.core.open_channel(channel)
        self._collect_output()
        self.run_until(lambda e: isinstance(e, (ev.ChannelOpened, ev.ChannelClosed))
                       and e.channel == number, timeout)
        return number

    def send(self, channel: int, method: Any) -> None:
        """``core.send_method`` and queue the bytes (written on the next pump)."""
        self.core.send_method(channel, method)
        self._collect_output()

    def publish(self, channel: int, exchange: str, routing_key: str, body: bytes,
                properties: Any = None, mandatory: bool = False) -> int:
        """``core.basic_publish``; returns the publish sequence number (0 outside confirms)."""
        seq = self.core.basic_publish(channel, exchange, routing_key, body, properties,
                                      mandatory=mandatory)
        self._collect_output()
        return seq

    def call(self, channel: int, method: Any, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Send a synchronous method and return its reply (the method, or the
        `events.MessageReceived` for ``basic.get-ok``).

        Raises the channel's or the connection's error if either closes first.
        """
        replies = tuple(method.REPLIES)
        self.send(channel, method)
        event = self.run_until(
            lambda e: (isinstance(e, ev.MethodReceived | ev.MessageReceived)
                       and e.channel == channel and isinstance(e.method, replies))
            or (isinstance(e, ev.ChannelClosed) and e.channel == channel)
            or isinstance(e, ev.ConnectionClosed),
            timeout)
        if isinstance(event, ev.ChannelClosed | ev.ConnectionClosed):
            raise event.error
        return event if isinstance(event, ev.MessageReceived) else event.method

    def close(self, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Close the connection politely; returns its `events.ConnectionClosed`."""
        try:
            if self.closed_event is None:
                self.core.close()
                self._collect_output()
                self.wait_for(lambda: self.closed_event is not None, timeout,
                              "connection.close-ok")
            return self.closed_event
        finally:
            self.abort()

    @property
    def closed_event(self) -> Any:
        """The `events.ConnectionClosed` received so far, or ``None``."""
        return next((e for e in self.events if isinstance(e, ev.ConnectionClosed)), None)

    def abort(self) -> None:
        """Drop the socket at once (idempotent)."""
        self._close_socket()
        self._out.clear()

    def __enter__(self) -> SockDriver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.finished:
            try:
                self.close(timeout=5.0)
            except Exception:
                self.abort()
