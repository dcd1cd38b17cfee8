"""A loopback TCP proxy for fault tests (standard library only, not a test module).

::

    with Proxy("127.0.0.1", 5672) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
        ...                  # connect the client under test to proxy.port
        proxy.blackhole()    # connections stay open, every byte is dropped, both ways
        proxy.resume()       # bytes flow again (what was dropped stays lost)
        proxy.cut()          # every current connection is reset (RST) on both sides

One background thread runs a ``selectors`` loop over non-blocking sockets, so the proxy works
the same under a Twisted reactor (in the reactor thread or not) and in plain blocking tests.
The control methods (``blackhole``, ``resume``, ``cut``, ``close``) are thread-safe and return
only once the loop has applied them: after ``blackhole()`` returns, no further byte passes.

It listens on 127.0.0.1 only and refuses a target that is not a loopback address.

Semantics while black-holed: a connection accepted meanwhile is still paired with a new
connection to the target, but nothing passes. A side that closes or fails meanwhile is not
reported to the other side (a dead network carries no FIN either); ``resume()`` then resets
the other side, as a peer would once the network heals.
"""

from __future__ import annotations

import contextlib
import ipaddress
import queue
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType

__all__ = ["Proxy"]

_CHUNK = 65536
# Per-direction buffer bound: above it, the proxy stops reading from the sending side.
_MAX_BUFFER = 4 * 1024 * 1024
_CONTROL_TIMEOUT = 10.0
_CONNECT_TIMEOUT = 5.0


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def _reset(sock: socket.socket) -> None:
    """Close abruptly: SO_LINGER with a zero timeout makes close() send RST, not FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Side:
    """One socket of a proxied connection and the bytes waiting to be written to it."""

    __slots__ = ("eof", "out", "paused", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = bytearray()
        self.eof = False  # this side closed (or failed) while black-holed
        self.paused = False  # not reading: the other side's buffer is full


class _Pair:
    __slots__ = ("client", "closing", "upstream")

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = _Side(client)
        self.upstream = _Side(upstream)
        self.closing = False  # one side ended: close both once buffers are flushed

    def other(self, side: _Side) -> _Side:
        return self.upstream if side is self.client else self.client


class Proxy:
    """Forward connections from 127.0.0.1:``port`` to ``target_host``:``target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        if not _is_loopback(target_host):
            raise ValueError(f"tcpproxy only forwards to loopback addresses, not {target_host!r}")
        self.target = (target_host, int(target_port))
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.host = "127.0.0.1"
        self.port: int = self._listener.getsockname()[1]

        self._blackholed = False
        self._closed = False
        self._pairs: list[_Pair] = []
        self._by_sock: dict[socket.socket, tuple[_Pair, _Side]] = {}
        self._commands: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.accepted = 0  # connections accepted so far (for tests' own assertions)
        self._closed_loop = False
        self._thread = threading.Thread(target=self._run, name=f"tcpproxy-{self.port}", daemon=True)
        self._thread.start()

    # -- public API (any thread) --------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def blackholed(self) -> bool:
        return self._blackholed

    @property
    def active_connections(self) -> int:
        """Number of proxied connections currently open."""
        return len(self._pairs)

    def blackhole(self) -> None:
        """Keep every connection open and silently drop all bytes, both ways."""
        self._control(self._do_blackhole)

    def resume(self) -> None:
        """Let bytes flow again; connections whose other side ended meanwhile are reset."""
        self._control(self._do_resume)

    def cut(self) -> None:
        """Close every current connection abruptly (RST to both the client and the target).

        The proxy keeps listening: new connections are forwarded as before.
        """
        self._control(self._do_cut)

    def close(self) -> None:
        """Stop listening, reset every connection and stop the thread. Idempotent."""
        if self._closed:
            return
        if self._thread.is_alive():
            with contextlib.suppress(TimeoutError):
                self._control(self._do_close)
            self._thread.join(_CONTROL_TIMEOUT)
        self._closed = True
        for sock in (self._listener, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("blackholed" if self._blackholed else "open")
        return (
            f"<Proxy 127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]} {state}, "
            f"{len(self._pairs)} connections>"
        )

    # -- control plumbing -----------------------------------------------------------------

    def _control(self, action: Callable[[], None]) -> None:
        if self._closed:
            raise RuntimeError("proxy is closed")
        if threading.current_thread() is self._thread:
            action()
            return
        done = threading.Event()
        self._commands.put((action, done))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if not done.wait(_CONTROL_TIMEOUT):
            raise TimeoutError("tcpproxy loop did not answer")

    def _do_blackhole(self) -> None:
        self._blackholed = True
        for pair in self._pairs:
            for side in (pair.client, pair.upstream):
                side.out.clear()
                side.paused = False
                self._update_interest(pair, side)

    def _do_resume(self) -> None:
        self._blackholed = False
        for pair in list(self._pairs):
            if pair.client.eof or pair.upstream.eof:
                self._drop(pair, abrupt=True)

    def _do_cut(self) -> None:
        for pair in list(self._pairs):
            self._drop(pair, abrupt=True)

    def _do_close(self) -> None:
        self._do_cut()
        self._closed_loop = True

    # -- the loop (proxy thread only) -----------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closed_loop:
                for key, events in self._sel.select(timeout=1.0):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wakeups()
                    else:
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        entry = self._by_sock.get(sock)
                        if entry is None:
                            continue
                        pair, side = entry
                        if events & selectors.EVENT_WRITE:
                            self._flush(pair, side)
                        if events & selectors.EVENT_READ and sock in self._by_sock:
                            self._read(pair, side)
                self._run_commands()
        finally:
            for pair in list(self._pairs):
                self._drop(pair, abrupt=True)
            self._sel.close()
            # Release anyone still waiting on a command.
            while True:
                try:
                    _, done = self._commands.get_nowait()
                except queue.Empty:
                    break
                done.set()

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def _run_commands(self) -> None:
        while True:
            try:
                action, done = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                action()
            finally:
                done.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.accepted += 1
            try:
                upstream = socket.create_connection(self.target, timeout=_CONNECT_TIMEOUT)
            except OSError:
                _reset(client)  # target down: the client sees its connection reset
                continue
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, upstream)
            self._pairs.append(pair)
            for side in (pair.client, pair.upstream):
                self._by_sock[side.sock] = (pair, side)
                self._sel.register(side.sock, selectors.EVENT_READ, "conn")

    def _read(self, pair: _Pair, side: _Side) -> None:
        try:
            data = side.sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = None  # reset or other failure
        if self._blackholed:
            if not data:
                side.eof = True
                self._update_interest(pair, side)
            return
        other = pair.other(side)
        if data is None:
            self._drop(pair, abrupt=True)  # pass the reset on
            return
        if not data:
            pair.closing = True
            side.eof = True
            self._update_interest(pair, side)
            self._maybe_finish(pair)
            return
        other.out += data
        if len(other.out) > _MAX_BUFFER:
            side.paused = True
            self._update_interest(pair, side)
        self._flush(pair, other)

    def _flush(self, pair: _Pair, side: _Side) -> None:
        if self._blackholed:
            side.out.clear()
        while side.out:
            try:
                sent = side.sock.send(side.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(pair, abrupt=True)
                return
            del side.out[:sent]
        other = pair.other(side)
        if other.paused and len(side.out) <= _MAX_BUFFER // 2:
            other.paused = False
            self._update_interest(pair, other)
        self._update_interest(pair, side)
        self._maybe_finish(pair)

    def _maybe_finish(self, pair: _Pair) -> None:
        if pair.closing and not pair.client.out and not pair.upstream.out:
            self._drop(pair, abrupt=False)

    def _update_interest(self, pair: _Pair, side: _Side) -> None:
        if side.sock not in self._by_sock:
            return
        events = 0
        if not side.eof and not side.paused:
            events |= selectors.EVENT_READ
        if side.out:
            events |= selectors.EVENT_WRITE
        try:
            registered = True
            self._sel.get_key(side.sock)
        except KeyError:
            registered = False
        with contextlib.suppress(KeyError, ValueError, OSError):
            if events and registered:
                self._sel.modify(side.sock, events, "conn")
            elif events:
                self._sel.register(side.sock, events, "conn")
            elif registered:
                self._sel.unregister(side.sock)

    def _drop(self, pair: _Pair, *, abrupt: bool) -> None:
        if pair in self._pairs:
            self._pairs.remove(pair)
        for side in (pair.client, pair.upstream):
            self._by_sock.pop(side.sock, None)
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(side.sock)
            if abrupt:
                _reset(side.sock)
            else:
                with contextlib.suppress(OSError):
                    side.sock.close()
