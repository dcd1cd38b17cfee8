"""Tests for the fault-injection proxy in tests/tcpproxy.py, against a local echo server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from tcpproxy import Proxy


class EchoServer:
    """A threaded echo server on 127.0.0.1 that records how its connections ended."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)  # so the acceptor notices close() promptly
        self.port: int = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.endings: list[str] = []  # "eof" or "reset", one per finished connection
        self.lock = threading.Lock()
        self.ended = threading.Condition(self.lock)
        self.threads: list[threading.Thread] = []
        self.running = True
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self.lock:
                self.conns.append(conn)
            t = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            t.start()
            with self.lock:
                self.threads.append(t)

    def _echo(self, conn: socket.socket) -> None:
        ending = "eof"
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
        except ConnectionResetError:
            ending = "reset"
        except OSError:
            ending = "closed"
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            with self.ended:
                self.endings.append(ending)
                self.ended.notify_all()

    def wait_endings(self, count: int, timeout: float = 5.0) -> list[str]:
        with self.ended:
            ok = self.ended.wait_for(lambda: len(self.endings) >= count, timeout)
            assert ok, f"only {len(self.endings)} of {count} server connections ended"
            return list(self.endings)

    def close_connections(self) -> None:
        with self.lock:
            conns, self.conns = self.conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.running = False
        self.close_connections()
        with contextlib.suppress(OSError):
            self.sock.close()
        self.acceptor.join(2)
        with self.lock:
            threads = list(self.threads)
        for t in threads:
            t.join(2)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[Proxy]:
    with Proxy("127.0.0.1", echo.port) as p:
        yield p


def connect(proxy: Proxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.settimeout(5)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def wait_until(predicate: object, timeout: float = 5.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def test_forwards_both_ways(proxy: Proxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"
    assert proxy.accepted == 1


def test_several_connections(proxy: Proxy) -> None:
    socks = [connect(proxy) for _ in range(5)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(b"n%d" % i)
        for i, sock in enumerate(socks):
            assert recv_exactly(sock, 2) == b"n%d" % i
        assert wait_until(lambda: proxy.active_connections == 5)
    finally:
        for sock in socks:
            sock.close()
    assert wait_until(lambda: proxy.active_connections == 0)


def test_large_transfer(proxy: Proxy) -> None:
    payload = bytes(range(256)) * (3 * 4096)  # 3 MiB, crosses the buffer bound
    with connect(proxy) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()
        assert recv_exactly(sock, len(payload)) == payload
        sender.join(5)


def test_client_close_closes_upstream(proxy: Proxy, echo: EchoServer) -> None:
    sock = connect(proxy)
    sock.sendall(b"x")
    assert recv_exactly(sock, 1) == b"x"
    sock.close()
    assert echo.wait_endings(1) == ["eof"]
    assert wait_until(lambda: proxy.active_connections == 0)


def test_server_close_reaches_client(proxy: Proxy, echo: EchoServer) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        echo.close_connections()
        assert sock.recv(1) == b""


def test_blackhole_drops_bytes_and_keeps_connection(proxy: Proxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"before")
        assert recv_exactly(sock, 6) == b"before"
        proxy.blackhole()
        assert proxy.blackholed
        sock.sendall(b"lost")
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            sock.recv(10)  # nothing comes back, and no EOF either
        assert proxy.active_connections == 1
        proxy.resume()
        assert wait_until(lambda: not proxy.blackholed, timeout=0)
        sock.settimeout(5)
        sock.sendall(b"after")
        assert recv_exactly(sock, 5) == b"after"  # "lost" stayed lost


def test_blackhole_hides_close_until_resume(proxy: Proxy, echo: EchoServer) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        proxy.blackhole()
        echo.close_connections()
        echo.wait_endings(1)
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            sock.recv(1)  # the server's FIN did not come through
        proxy.resume()
        sock.settimeout(5)
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
            sock.recv(1)


def test_new_connections_while_blackholed(proxy: Proxy) -> None:
    proxy.blackhole()
    with connect(proxy) as sock:
        sock.sendall(b"dropped")
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            sock.recv(10)
        proxy.resume()
        sock.settimeout(5)
        sock.sendall(b"ok")
        assert recv_exactly(sock, 2) == b"ok"


def test_cut_resets_both_sides(proxy: Proxy, echo: EchoServer) -> None:
    sock = connect(proxy)
    try:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        proxy.cut()
        assert proxy.active_connections == 0
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    finally:
        sock.close()
    assert echo.wait_endings(1) == ["reset"]
    # The proxy still forwards new connections after a cut.
    with connect(proxy) as again:
        again.sendall(b"y")
        assert recv_exactly(again, 1) == b"y"


def test_cut_while_blackholed(proxy: Proxy) -> None:
    with connect(proxy) as sock:
        proxy.blackhole()
        proxy.cut()
        with pytest.raises(ConnectionResetError):
            sock.recv(1)


def test_target_down_resets_client() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with Proxy("127.0.0.1", closed_port) as p:
        # The reset may even beat connect() back to the caller.
        with pytest.raises((ConnectionResetError, EOFError)), connect(p) as sock:
            if not sock.recv(1):
                raise EOFError
        assert p.active_connections == 0
        assert p.accepted == 1


def test_close_stops_listening(echo: EchoServer) -> None:
    p = Proxy("127.0.0.1", echo.port)
    sock = connect(p)
    sock.sendall(b"x")
    assert recv_exactly(sock, 1) == b"x"
    p.close()
    p.close()  # idempotent
    with pytest.raises(ConnectionResetError):
        sock.recv(1)
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.port), timeout=2).close()
    with pytest.raises(RuntimeError):
        p.cut()


def test_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        Proxy("192.0.2.1", 5672)  # TEST-NET-1 literal: refused before any connection


def test_control_from_another_thread(proxy: Proxy) -> None:
    with connect(proxy) as sock:
        t = threading.Thread(target=proxy.blackhole)
        t.start()
        t.join(5)
        assert proxy.blackholed
        threading.Thread(target=proxy.resume).start()
        assert wait_until(lambda: not proxy.blackholed)
        sock.sendall(b"z")
        assert recv_exactly(sock, 1) == b"z"
