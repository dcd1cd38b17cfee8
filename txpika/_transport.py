"""How `txpika.protocol.AMQPProtocol` uses its Twisted transport, through public interfaces.

`Link` does the protocol's writes, its back-pressure and its reading pauses:

* On a plain TCP or UNIX transport (one that provides ``ISystemHandle`` with a stream
  socket, and not ``ISSLTransport``) a write goes straight to the socket with ``send()``
  (a batch of a large body's pieces with one ``sendmsg()``, not copied first)
  while nothing the protocol handed to ``transport.write()`` may still be buffered there;
  whatever the socket does not take goes to ``transport.write()``, which keeps the order.
  The link then writes through the transport until it says its buffer is empty: it is
  registered as a *pull* producer, and Twisted's ``IConsumer`` calls ``resumeProducing``
  each time it wants more data, that is, when its buffer drained. Past `HIGH_WATER` bytes
  handed to the transport and not yet drained, the outbox is paused. A request/response
  exchange (an RPC, a synchronous method) writes a little and waits, so most writes find
  the transport empty and go out at once: no reactor turn, no ``epoll_ctl``.
* A read that filled Twisted's read size (64 KiB) means a large message is arriving: the
  link reads on from the same socket (non-blocking, up to `READ_SIZE` at a time) while it
  fills, instead of a reactor turn per 64 KiB.
* On any other transport (TLS, in-memory ones in tests) the link registers as a streaming
  (push) producer: the transport's ``pauseProducing``/``resumeProducing`` pause and resume
  the outbox, and every write goes through ``transport.write()``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import (
    IPullProducer,
    IPushProducer,
    ISSLTransport,
    ISystemHandle,
)
from zope.interface import implementer

__all__ = ["GIVE", "HIGH_WATER", "READ_SIZE", "Link"]

#: Bytes handed to the transport and not yet drained over which publishing waits.
HIGH_WATER = 262144
#: What `Link.write_pieces` gives the transport when the socket is full.
GIVE = 65536
#: The most bytes one extra read asks for while reads fill what they ask.
READ_SIZE = 262144
#: Twisted's read size: a read this large (or larger) may have left more in the socket.
_FULL_READ = 65536
#: The most bytes read on at once in one call (fairness to the reactor's other work).
_READ_BUDGET = 4 * 1024 * 1024


@implementer(IPullProducer)
class _Drained:
    """Registered as a pull producer: Twisted calls ``resumeProducing`` whenever the
    transport's buffer is empty (and once at registration)."""

    def __init__(self, link: Link) -> None:
        self._link = link

    def resumeProducing(self) -> None:
        self._link.drained()

    def stopProducing(self) -> None:
        self._link.stopped()


@implementer(IPushProducer)
class _Pushed:
    """Registered as a streaming producer: the transport pauses and resumes output."""

    def __init__(self, link: Link) -> None:
        self._link = link

    def pauseProducing(self) -> None:
        self._link.pause_output()

    def resumeProducing(self) -> None:
        self._link.drained()

    def stopProducing(self) -> None:
        self._link.stopped()


class Link:
    """The protocol's side of one transport; see the module docstring.

    ``pause`` and ``resume`` are the outbox's: called when output must wait, and when
    the transport wants more.
    """

    def __init__(self, transport: Any, pause: Callable[[], None],
                 resume: Callable[[], None]) -> None:
        """``transport`` provides ``ITransport`` and ``IConsumer``."""
        self.transport = transport
        self._pause = pause
        self._resume = resume
        self._given = 0  # bytes handed to transport.write() and not known to be drained
        self._sock: socket.socket | None = None
        self._readers: set[object] = set()
        self.read_error: OSError | None = None  # met while reading on: the loss's reason
        if ISystemHandle.providedBy(transport) and not ISSLTransport.providedBy(transport):
            handle = transport.getHandle()
            if isinstance(handle, socket.socket) and handle.type == socket.SOCK_STREAM:
                self._sock = handle
        if self._sock is not None:
            transport.registerProducer(_Drained(self), False)
        else:
            transport.registerProducer(_Pushed(self), True)

    @property
    def direct(self) -> bool:
        """True if writes may go straight to the socket."""
        return self._sock is not None

    @property
    def reading_paused(self) -> bool:
        """True while some consumer keeps the connection from reading."""
        return bool(self._readers)

    # -- output -----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write ``data``: straight to the socket when it is safe, else to the transport."""
        sock = self._sock
        if sock is not None and not self._given:
            try:
                sent = sock.send(data)
            except OSError:  # full (EAGAIN), or broken: the transport will find out
                sent = 0
            if sent == len(data):
                return
            if sent:
                data = data[sent:]
        self.transport.write(data)
        if sock is not None:
            self._given += len(data)
            if self._given > HIGH_WATER:
                self._pause()

    def write_pieces(self, pieces: list[bytes | memoryview]) -> int:
        """Write what the socket takes of ``pieces`` with one ``sendmsg()``, straight from
        them (a large body's memoryviews are not copied on the way); returns how many bytes
        were taken. When the socket is full, the next `GIVE` bytes go to the transport (it
        says when it drained them, and output waits until then), and the rest is the
        caller's to keep. Only for a direct link (`direct`) whose transport is drained."""
        sock = self._sock
        assert sock is not None
        total = 0
        for piece in pieces:
            total += len(piece)
        if self._given:  # (the transport still holds some: it goes first)
            return 0
        try:
            sent = sock.sendmsg(pieces)
        except OSError:  # full (EAGAIN), or broken: the transport will find out
            sent = 0
        if sent == total:
            return sent
        # The socket is full: hand the transport a little, to hear when it drained.
        given: list[bytes | memoryview] = []
        room = GIVE
        skip = sent
        for piece in pieces:
            size = len(piece)
            if skip >= size:
                skip -= size
                continue
            view = memoryview(piece)[skip:skip + room]
            skip = 0
            given.append(view)
            room -= len(view)
            if not room:
                break
        data = b"".join(given)
        self.transport.write(data)
        self._given += len(data)
        self._pause()
        return sent + len(data)

    def drained(self) -> None:
        """The transport wants more: its buffer is empty."""
        self._given = 0
        self._resume()

    def pause_output(self) -> None:
        """The transport is over its high-water mark."""
        self._pause()

    def stopped(self) -> None:
        """The transport will take no more (it is going away)."""
        self._pause()

    # -- input ------------------------------------------------------------------------------

    def read_on(self, data: bytes, feed: Callable[[bytes], None]) -> None:
        """After a read of ``data``: if it filled Twisted's read size, read on from the
        socket while reads fill what they ask, feeding each piece to ``feed``."""
        sock = self._sock
        if sock is None or len(data) < _FULL_READ or self._readers:
            return
        total = 0
        while total < _READ_BUDGET:
            try:
                more = sock.recv(READ_SIZE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # The transport's next read sees the end; this is why it came.
                self.read_error = exc
                return
            if not more:
                return  # the end of the stream: the transport's next read sees it too
            feed(more)
            total += len(more)
            if len(more) < READ_SIZE or self._readers:
                return

    def pause_reading(self, who: object) -> None:
        """Stop reading from the transport until every pauser resumed."""
        if not self._readers:
            self.transport.pauseProducing()
        self._readers.add(who)

    def resume_reading(self, who: object) -> None:
        """``who`` no longer needs reading paused."""
        self._readers.discard(who)
        if not self._readers:
            self.transport.resumeProducing()

    # -- the end ----------------------------------------------------------------------------

    def close(self) -> None:
        """Let the transport finish writing, then close it."""
        # A TLS transport sends its close_notify only once no producer is registered.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the transport at once."""
        self.transport.abortConnection()
