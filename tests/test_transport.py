"""`txpika._transport.Link` and the outbox over a real socket pair, and the decoder's
pieces: large bodies go to the kernel and come from it without extra copies.

The transport here is a small fake of Twisted's TCP transport that provides
``ISystemHandle`` (its socket is one end of a real ``socketpair``) and records what goes
through ``write()``; the link must use only those public interfaces.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from twisted.internet.interfaces import IPullProducer, IPushProducer, ISystemHandle
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from txpika import spec
from txpika._outbox import Outbox
from txpika._transport import GIVE, HIGH_WATER, READ_SIZE, Link
from txpika.connection import Connection
from txpika.frames import FrameDecoder, encode_body, encode_header, encode_method


@implementer(ISystemHandle)
class SocketTransport(StringTransport):
    """A StringTransport whose handle is a real, non-blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.paused_reading = False

    def getHandle(self) -> socket.socket:
        return self.sock

    def pauseProducing(self) -> None:
        self.paused_reading = True

    def resumeProducing(self) -> None:
        self.paused_reading = False


@pytest.fixture
def pair() -> Any:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    yield a, b
    a.close()
    b.close()


def drain_socket(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


def test_a_plain_socket_transport_gets_a_pull_producer_others_a_push_one(pair: Any) -> None:
    direct = SocketTransport(pair[0])
    link = Link(direct, lambda: None, lambda: None)
    assert link.direct and IPullProducer.providedBy(direct.producer)
    assert not direct.streaming
    plain = StringTransport()
    link = Link(plain, lambda: None, lambda: None)
    assert not link.direct and IPushProducer.providedBy(plain.producer) and plain.streaming


def test_writes_go_to_the_socket_until_it_is_full_then_through_the_transport(
        pair: Any) -> None:
    a, b = pair
    transport = SocketTransport(a)
    paused: list[bool] = []
    link = Link(transport, lambda: paused.append(True), lambda: paused.append(False))
    paused.clear()  # (registering a pull producer resumes it once)
    link.write(b"hello")
    assert transport.value() == b"" and drain_socket(b) == b"hello"
    # Fill the socket: what it does not take goes to the transport, in order, and later
    # writes follow it there until the transport says it drained.
    big = bytes(range(256)) * 8192  # 2 MiB
    link.write(big)
    queued = transport.value()
    assert queued and big.endswith(queued)
    link.write(b"after")
    assert transport.value() == queued + b"after"
    assert len(queued) > HIGH_WATER and paused and paused[-1] is True  # output waits
    transport.clear()
    transport.producer.resumeProducing()  # what Twisted does once its buffer is empty
    assert paused[-1] is False
    drain_socket(b)  # the reader took what the kernel held
    link.write(b"direct again")
    assert transport.value() == b"" and drain_socket(b) == b"direct again"


def test_pieces_go_with_sendmsg_and_the_rest_stays_uncopied(pair: Any) -> None:
    a, b = pair
    core = Connection()
    transport = SocketTransport(a)
    outbox = Outbox(core, lambda data: None)
    link = Link(transport, outbox.pause, outbox.resume)
    outbox.write_pieces = link.write_pieces
    body = bytes(range(256)) * 16384  # 4 MiB
    view = memoryview(body)
    pieces: list[bytes | memoryview] = [b"head", view[:len(body) // 2], view[len(body) // 2:]]
    taken = link.write_pieces(pieces)
    sent = drain_socket(b)
    # The kernel took some, the transport a little (to hear when it drains), no more.
    assert 0 < taken < len(body) + 4
    assert len(transport.value()) <= GIVE
    assert sent + transport.value() == (b"head" + body)[:taken]
    assert outbox.paused


def test_the_outbox_keeps_what_the_socket_did_not_take_as_views(pair: Any) -> None:
    a, b = pair
    core = Connection()
    transport = SocketTransport(a)
    outbox = Outbox(core, lambda data: pytest.fail("a batch of pieces was joined"))
    link = Link(transport, outbox.pause, outbox.resume)
    outbox.write_pieces = link.write_pieces
    body = b"B" * (4 * 1024 * 1024)
    core._out.extend([b"h", memoryview(body), b"\xce"])  # what the core queues for a publish
    outbox.flush()
    assert outbox.paused
    kept = list(outbox._backlog)
    assert kept and all(type(item) in (bytes, memoryview) for item in kept)
    assert any(isinstance(item, memoryview) and item.obj is body for item in kept)
    # Drained by the reader and the transport, in order, to the last byte.
    received = bytearray(drain_socket(b))
    for _ in range(10_000):
        if not outbox._backlog and not transport.value():
            break
        received += transport.value()
        transport.clear()
        transport.producer.resumeProducing()
        received += drain_socket(b)
    assert bytes(received) == b"h" + body + b"\xce"


def test_reading_on_after_a_full_read(pair: Any) -> None:
    a, b = pair
    transport = SocketTransport(a)
    link = Link(transport, lambda: None, lambda: None)
    fed: list[int] = []
    waiting = b.send(b"x" * READ_SIZE)  # what the socket pair's buffer takes
    link.read_on(b"y" * 100, lambda data: fed.append(len(data)))  # a small read: no more
    assert fed == []
    link.read_on(b"y" * 65536, lambda data: fed.append(len(data)))  # a full one: read on
    assert sum(fed) == waiting and max(fed) <= READ_SIZE
    assert drain_socket(a) == b""  # all of it, and then it stopped (EAGAIN)
    fed.clear()
    b.send(b"z" * 1000)
    link.pause_reading("consumer")  # a full consumer: no reading on
    link.read_on(b"y" * 65536, lambda data: fed.append(len(data)))
    assert fed == [] and transport.paused_reading
    link.resume_reading("consumer")
    assert not transport.paused_reading


def test_decoder_hands_out_views_of_each_piece_received() -> None:
    """Many pieces received before any is decoded (a read that read on): the body frames
    come out as views of the pieces themselves, never of one big join of them all."""
    m = spec
    body = bytes(range(256)) * 4096  # 1 MiB, in frames of 128 KiB
    frames = [encode_method(1, m.Basic.Deliver("c", 1, False, "", "q")),
              encode_header(1, len(body), m.BasicProperties())]
    for start in range(0, len(body), 131064):
        frames.extend(bytes(p) for p in encode_body(1, body[start:start + 131064]))
    data = b"".join(frames)
    dec = FrameDecoder(m.DIALECT, 131072)
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    for chunk in chunks:
        dec.receive_data(chunk)
    owners: set[int] = set()
    payload = bytearray()
    while True:
        frame = dec.next_frame()
        if not hasattr(frame, "channel"):
            break
        piece = getattr(frame, "payload", None)
        if isinstance(piece, memoryview):
            owners.add(id(piece.obj))
            payload += piece
        elif piece is not None:
            payload += piece
    assert bytes(payload) == body
    biggest = max(len(c) for c in chunks)
    assert len(owners) >= len(chunks) - 2  # views of the received pieces
    assert all(len(c) <= biggest for c in chunks)
