"""The blocking adapter's socket loop: reading, writing, heartbeats and waiting.

`SocketLoop` is the base of `txpika.blocking.BlockingConnection`. Whichever thread waits
for something reads the socket for all of them, the connection's lock released while it
blocks in ``recv()`` (on Linux, bounded by ``SO_RCVTIMEO``; elsewhere and with TLS, after
``poll()``), and dispatches what arrived under the lock. A cooperative socket (gevent's or
eventlet's, after monkey-patching) ignores ``SO_RCVTIMEO``: it is read after ``poll()`` too,
which those libraries make cooperative, so waits end on time there as well. Writes never
block: a full socket is read meanwhile, so two full buffers cannot deadlock. The attributes
it declares are set by ``BlockingConnection.__init__``.
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
from collections.abc import Callable
from typing import Any

from txpika._session import Session
from txpika.connection import Connection
from txpika.errors import AMQPError, ConnectionClosedByClient, ConnectionLost
from txpika.parameters import ConnectionParameters

__all__ = ["SocketLoop"]

#: Longest a reading thread blocks in select() before looking at heartbeats and timeouts.
_SLICE = 0.25
#: Bytes asked of one recv(): _RECV_SMALL, or _RECV_LARGE while reads fill that (a large
#: message arriving). Each recv() allocates what it asks for, and a 256 KiB allocation for
#: every small read costs page faults.
_RECV_SMALL = 65536
_RECV_LARGE = 262144
#: Reads block in recv() with SO_RCVTIMEO (see BlockingConnection.__init__); Linux only.
_DIRECT = sys.platform == "linux" and hasattr(socket, "MSG_DONTWAIT")
_TIMEVAL = struct.Struct("@ll")


def _cooperative(sock: Any) -> bool:
    """True for a green library's socket (gevent, eventlet): not the standard library's
    class, so it waits in its own hub and ignores ``SO_RCVTIMEO``."""
    return type(sock).__module__ not in ("socket", "ssl")


class SocketLoop:
    """The socket side of a blocking connection; see the module docstring."""

    parameters: ConnectionParameters
    _core: Connection
    _session: Session
    _lock: threading.Lock
    _cond: threading.Condition
    _reading: bool
    _waiters: int
    _raw_pending: bool
    _dispatching: bool
    _error: BaseException | None
    _callbacks: deque[tuple[Callable[[Any], object], Any]]
    _next_tick: float | None
    _sock: Any
    _recv_size: int
    _direct: bool
    _send_flags: int
    _poller: Any

    def _setup_socket(self) -> None:
        """Open the socket (TLS too) and choose how to read it."""
        self._sock = self._open_socket()
        self._recv_size = _RECV_SMALL
        # A plain socket on Linux stays in blocking mode: reads block in recv() for at most
        # a slice (SO_RCVTIMEO) instead of poll() then recv(), and writes never block
        # (MSG_DONTWAIT). TLS sockets, cooperative sockets and other systems are
        # non-blocking, read after poll().
        self._direct = _DIRECT and not isinstance(self._sock, ssl.SSLSocket) and (
            not _cooperative(self._sock))
        self._send_flags = socket.MSG_DONTWAIT if self._direct else 0
        if self._direct:
            self._sock.setblocking(True)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                  _TIMEVAL.pack(0, int(_SLICE * 1_000_000)))
        self._poller = select.poll()
        self._poller.register(self._sock, select.POLLIN)

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
            self._lost(ConnectionLost(text="connection lost: the broker closed the socket"))
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
        so two full buffers cannot deadlock. While events are dispatched it waits: the
        dispatching writes once it is done.

        With a ``deadline`` (a publish's timeout), a write still stuck then (the broker
        stopped reading) cannot be abandoned halfway through a frame: the connection is
        dropped and ``TimeoutError`` raised.
        """
        if self._dispatching:
            return
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
        if not isinstance(error, AMQPError):
            error = ConnectionLost(error)
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
        """Dispatch the core's events (lock held); what they make the core send is written
        once they are all dispatched."""
        self._dispatching = True
        try:
            self._session.dispatch()
        finally:
            self._dispatching = False

    def _run_later(self, callback: Callable[[Any], object], message: object) -> None:
        """Run a consumer callback outside the lock, once the dispatching is done."""
        self._callbacks.append((callback, message))

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

