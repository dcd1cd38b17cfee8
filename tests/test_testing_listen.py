"""MemoryBroker.listen(): the in-memory broker on a loopback TCP port, for any client.

txpika on the reactor, txpika.blocking and pika's BlockingConnection (in threads, the
reactor serving the broker meanwhile) and a ``twistd txpika`` daemon subprocess each run a
publish/consume/ack cycle against it. Bad input on one connection closes that connection
with RabbitMQ's reply code; the broker keeps serving the others.
"""

from __future__ import annotations

import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
import pytest
import pytest_twisted
from test_twistd import Daemon
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.threads import deferToThread

import txpika
from txpika import blocking, spec
from txpika.frames import NEED_DATA, FrameDecoder, encode_method
from txpika.testing import MemoryBroker


def within(d: Deferred[Any], seconds: float) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)  # type: ignore[arg-type]


async def serve(broker: MemoryBroker) -> str:
    return await within(broker.listen(reactor), 10)  # type: ignore[arg-type]


@pytest.fixture
def broker() -> Any:
    broker = MemoryBroker(reactor)  # real time, for clients with real heartbeats
    yield broker
    pytest_twisted.blockon(broker.stop_listening())


@pytest_twisted.ensureDeferred
async def test_url_is_loopback_with_credentials(broker: MemoryBroker) -> None:
    url = await serve(broker)
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.username, parts.password, parts.path) == (
        "amqp", "127.0.0.1", "guest", "guest", "/%2F")
    assert parts.port and parts.port > 0


@pytest_twisted.ensureDeferred
async def test_txpika_cycle_over_tcp(broker: MemoryBroker) -> None:
    url = await serve(broker)
    conn = await within(txpika.connect(reactor, url), 10)
    try:
        ch = await conn.channel()
        await ch.queue_declare("jobs")
        await ch.confirm_select()
        await ch.basic_publish("", "jobs", b"over tcp")
        consumer = await ch.basic_consume("jobs")
        message = await within(consumer.get(), 10)
        assert message.body == b"over tcp"
        await message.ack()
        assert broker.queue("jobs").messages == ()
        assert conn.server_properties["product"] == "txpika MemoryBroker"
    finally:
        await conn.close()
    assert broker.queue("jobs").unacked == ()


def blocking_cycle(url: str) -> list[bytes]:
    with blocking.connect(url) as conn:
        ch = conn.channel()
        ch.queue_declare("blocking-jobs")
        ch.confirm_select()
        for i in range(3):
            ch.basic_publish("", "blocking-jobs", f"job {i}".encode())
        got = []
        for message in ch.consume("blocking-jobs", prefetch=2, inactivity_timeout=5):
            assert message is not None, "no delivery within 5 s"
            got.append(message.body)
            message.ack()
            if len(got) == 3:
                break
        return got


@pytest_twisted.ensureDeferred
async def test_blocking_adapter_cycle(broker: MemoryBroker) -> None:
    url = await serve(broker)
    got = await within(deferToThread(blocking_cycle, url), 30)
    assert got == [b"job 0", b"job 1", b"job 2"]
    assert broker.queue("blocking-jobs").messages == ()
    assert broker.queue("blocking-jobs").unacked == ()


def pika_cycle(url: str) -> tuple[list[bytes], bool]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.queue_declare("pika-jobs", durable=True)
        ch.confirm_delivery()
        for i in range(3):
            ch.basic_publish("", "pika-jobs", f"pika {i}".encode(),
                             pika.BasicProperties(delivery_mode=2), mandatory=True)
        try:
            ch.basic_publish("", "nowhere", b"lost", mandatory=True)
            returned = False
        except pika.exceptions.UnroutableError:
            returned = True
        got = []
        for method, _props, body in ch.consume("pika-jobs", inactivity_timeout=5):
            assert method is not None, "no delivery within 5 s"
            got.append(body)
            ch.basic_ack(method.delivery_tag)
            if len(got) == 3:
                break
        ch.cancel()
        return got, returned
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_pika_blocking_connection_cycle(broker: MemoryBroker) -> None:
    url = await serve(broker)
    got, returned = await within(deferToThread(pika_cycle, url), 30)
    assert got == [b"pika 0", b"pika 1", b"pika 2"]
    assert returned
    assert broker.queue("pika-jobs").unacked == ()
    assert broker.queue("pika-jobs").consumers == ()


@pytest_twisted.ensureDeferred
async def test_twistd_daemon_consumes_from_it(broker: MemoryBroker, tmp_path: Path) -> None:
    url = await serve(broker)
    daemon = Daemon(tmp_path, "--url", url, "--queue", "work", "--declare",
                    "--bind", "amq.topic:work.#", "--handler", "handlers_for_tests:handle")
    try:
        await daemon.wait_for(lambda: "work" in broker.queues()
                              and broker.queue("work").consumers, 30, "the daemon consuming")
        for i in range(5):
            broker.publish("amq.topic", f"work.{i}", b"",
                           txpika.BasicProperties(message_id=f"id-{i}", delivery_mode=2))
        await daemon.wait_for(lambda: len(daemon.handled()) == 5, 30, "5 messages handled")
        await daemon.wait_for(lambda: not broker.queue("work").unacked, 10, "every ack")
        daemon.proc.terminate()
        # twistd ends a clean shutdown that SIGTERM started by re-raising the signal.
        assert await daemon.wait_exit(30) in (0, -signal.SIGTERM), daemon.log
        assert "Server Shut Down." in daemon.log and "Traceback" not in daemon.log
    finally:
        daemon.kill()
    assert sorted(daemon.handled()) == [f"id-{i}" for i in range(5)]
    queue = broker.queue("work")
    assert (queue.durable, queue.exclusive, queue.auto_delete) == (True, False, False)
    assert queue.messages == () and queue.unacked == () and queue.consumers == ()


# -- bad input: one connection closed, the others served -----------------------------------


def raw_open(port: int) -> tuple[socket.socket, FrameDecoder]:
    """A raw socket through the handshake, with channel 1 open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    decoder = FrameDecoder(spec.DIALECT, 0)
    sock.sendall(b"AMQP\x00\x00\x09\x01")
    read_frames(sock, decoder, 1)  # start
    sock.sendall(encode_method(0, spec.Connection.StartOk(
        {"capabilities": {"authentication_failure_close": True}}, "PLAIN",
        b"\0guest\0guest", "en_US")))
    read_frames(sock, decoder, 1)  # tune
    sock.sendall(encode_method(0, spec.Connection.TuneOk(2047, 131072, 0))
                 + encode_method(0, spec.Connection.Open("/")))
    read_frames(sock, decoder, 1)  # open-ok
    sock.sendall(encode_method(1, spec.Channel.Open()))
    read_frames(sock, decoder, 1)
    return sock, decoder


def read_frames(sock: socket.socket, decoder: FrameDecoder, count: int) -> list[Any]:
    frames: list[Any] = []
    deadline = time.monotonic() + 5
    while len(frames) < count and time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:  # closed with our close-ok unread: the same
            data = b""
        if not data:
            frames.append("EOF")
            break
        decoder.receive_data(data)
        while (frame := decoder.next_frame()) is not NEED_DATA:
            frames.append(frame)
    return frames


def close_code(sock: socket.socket, decoder: FrameDecoder) -> tuple[int, str, bool]:
    """The reply code and text of the connection.close the broker sends, and whether it
    then closes the socket once the client answers close-ok."""
    (frame,) = read_frames(sock, decoder, 1)
    assert type(frame.method) is spec.Connection.Close, frame
    try:
        sock.sendall(encode_method(0, spec.Connection.CloseOk()))
    except (BrokenPipeError, ConnectionResetError):
        return frame.method.reply_code, frame.method.reply_text, True
    rest = read_frames(sock, decoder, 1)
    return frame.method.reply_code, frame.method.reply_text, rest == ["EOF"]


BAD_INPUT = {
    # what the client sends after the handshake: (reply code, reply text starts with)
    "garbage bytes": (b"garbage!garbage!garbage!", 501, "FRAME_ERROR"),
    "unknown frame type": (b"\x41\x00\x00\x00\x00\x00\x00\xce", 501, "FRAME_ERROR"),
    "frame on an unopened channel": (encode_method(3, spec.Queue.Declare(queue="x")), 504,
                                     "CHANNEL_ERROR - expected 'channel.open'"),
    "oversize frame": (struct.pack(">BHI", 1, 1, 200000) + b"\0" * 200000 + b"\xce", 501,
                       "FRAME_ERROR"),
    "body without a method": (struct.pack(">BHI", 3, 1, 5) + b"abcde\xce", 505,
                              "UNEXPECTED_FRAME - expected method frame"),
    "second channel.open": (encode_method(1, spec.Channel.Open()), 504,
                            "CHANNEL_ERROR - second 'channel.open' seen"),
}


def bad_input_case(port: int, data: bytes) -> tuple[int, str, bool]:
    sock, decoder = raw_open(port)
    with sock:
        sock.sendall(data)
        return close_code(sock, decoder)


@pytest.mark.parametrize("backend", [pytest.param("rabbitmq", marks=pytest.mark.broker),
                                     "memory"])
@pytest.mark.parametrize("case", list(BAD_INPUT))
@pytest_twisted.ensureDeferred
async def test_bad_input_closes_only_that_connection(
        broker: MemoryBroker, case: str, backend: str, request: pytest.FixtureRequest) -> None:
    """The same bad input to RabbitMQ and to the memory broker: the same reply code."""
    if backend == "rabbitmq":
        url = request.getfixturevalue("broker_url")
    else:
        url = await serve(broker)
    other = await within(txpika.connect(reactor, url), 10)
    ch = await other.channel()
    survivor = (await ch.queue_declare("", exclusive=True)).queue
    data, code, text = BAD_INPUT[case]
    host, port = urlsplit(url).hostname, urlsplit(url).port or 5672
    assert host == "127.0.0.1"
    got_code, got_text, closed = await within(deferToThread(bad_input_case, port, data), 20)
    assert (got_code, closed) == (code, True), got_text
    assert got_text.startswith(text), got_text
    # The broker still serves the other connection, and new ones.
    assert other.is_open
    await ch.basic_publish("", survivor, b"still here")
    assert (await ch.basic_get(survivor)).body == b"still here"
    again = await within(txpika.connect(reactor, url), 10)
    await again.close()
    await other.close()


@pytest_twisted.ensureDeferred
async def test_wrong_protocol_header_gets_ours_and_a_close(broker: MemoryBroker) -> None:
    url = await serve(broker)
    port = urlsplit(url).port
    assert port is not None

    def probe() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            data = b""
            while chunk := sock.recv(100):
                data += chunk
            return data

    assert await within(deferToThread(probe), 20) == b"AMQP\x00\x00\x09\x01"


@pytest_twisted.ensureDeferred
async def test_stop_listening_closes_the_port(broker: MemoryBroker) -> None:
    url = await serve(broker)
    conn = await within(txpika.connect(reactor, url), 10)
    closed = conn.when_closed()
    await broker.stop_listening()
    reason = await within(closed, 10)
    assert not isinstance(reason, txpika.ConnectionClosedByClient)
    assert not conn.is_open
    with pytest.raises(ConnectionRefusedError):
        await within(txpika.connect(reactor, url), 10)
