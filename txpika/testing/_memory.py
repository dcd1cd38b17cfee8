"""An in-memory transport between a client protocol and a `ServerConnection`.

`MemoryTransport` is what the client protocol writes to: an ``ITransport`` that is also an
``IConsumer`` (the protocol registers itself as its producer) and an ``IPushProducer``
(the protocol pauses it to stop reading). Nothing moves until `Pipe.pump` is called, which
carries the client's bytes to the server and the server's to the client, at most `CHUNK`
bytes per ``dataReceived`` and only while the client reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txpika.testing._server import ServerConnection

__all__ = ["CHUNK", "MemoryTransport", "Pipe"]

#: The most bytes handed to the client's ``dataReceived`` at once.
CHUNK: Final = 65536


@implementer(ITransport, IConsumer, IPushProducer)
class MemoryTransport:
    """The client's end of a `Pipe`."""

    def __init__(self, pipe: Pipe, number: int) -> None:
        self._pipe = pipe
        self.producer: Any = None
        self.streaming = False
        self.disconnecting = False
        self._host = IPv4Address("TCP", "127.0.0.1", 40000 + number % 20000)
        self._peer = IPv4Address("TCP", "127.0.0.1", 5672)

    # ITransport
    def write(self, data: bytes) -> None:
        if not self.disconnecting and not self._pipe.closed:
            self._pipe.to_server.append(bytes(data))
            self._pipe.wake()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def loseConnection(self) -> None:
        self.disconnecting = True
        self._pipe.wake()

    def abortConnection(self) -> None:
        self.disconnecting = True
        self._pipe.lose(ConnectionLost("connection aborted"))

    def getPeer(self) -> IPv4Address:
        return self._peer

    def getHost(self) -> IPv4Address:
        return self._host

    # IConsumer
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.streaming = streaming

    def unregisterProducer(self) -> None:
        self.producer = None

    # IPushProducer: the client stops and restarts reading
    def pauseProducing(self) -> None:
        self._pipe.reading = False

    def resumeProducing(self) -> None:
        self._pipe.reading = True

    def stopProducing(self) -> None:
        self.loseConnection()


class Pipe:
    """One client protocol connected to one server connection, in memory."""

    def __init__(self, protocol: Protocol, server: ServerConnection, number: int,
                 on_lost: Callable[[Failure], object] | None = None) -> None:
        self.protocol = protocol
        self._on_lost = on_lost
        #: Called when something waits to move (the broker's autoflush), or None.
        self.on_ready: Callable[[], object] | None = None
        self.server = server
        self.transport = MemoryTransport(self, number)
        self.to_server: list[bytes] = []
        self.to_client = bytearray()
        self.reading = True
        self.closed = False

    def connect(self) -> None:
        self.server.on_output = self.wake
        self.protocol.makeConnection(self.transport)  # type: ignore[no-untyped-call]

    def wake(self) -> None:
        if self.on_ready is not None:
            self.on_ready()

    def pump(self) -> bool:
        """Move what can move; True if anything did."""
        if self.closed:
            return False
        moved = False
        if self.to_server:
            data = b"".join(self.to_server)
            self.to_server.clear()
            self.server.receive_data(data)
            moved = True
        if self.transport.disconnecting and not self.to_server:
            self.lose(ConnectionDone("the client closed the connection"))
            return True
        self.to_client += self.server.data_to_send()
        if self.reading and self.to_client:
            piece = bytes(self.to_client[:CHUNK])
            del self.to_client[:CHUNK]
            self.protocol.dataReceived(piece)
            moved = True
        if self.server.wants_close and not self.to_client and not self.closed:
            self.lose(ConnectionDone("the broker closed the connection"))
            moved = True
        return moved

    def lose(self, reason: Exception) -> None:
        """Both ends are gone."""
        if self.closed:
            return
        self.closed = True
        self.to_server.clear()
        self.to_client.clear()
        self.server.connection_lost()
        failure = Failure(reason)  # type: ignore[no-untyped-call]
        self.protocol.connectionLost(failure)
        if self._on_lost is not None:
            self._on_lost(failure)
