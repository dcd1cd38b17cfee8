"""A scripted world for `txpika.client.AMQPService`: a `MemoryReactorClock` as reactor and
clock, and brokers played with the real codec.

Not a test module. The service connects through Twisted's real endpoints, so every attempt
is a recorded ``connectTCP`` call on the reactor. `ServiceSim` completes them:

* `ServiceSim.refuse` fails the next attempt (``clientConnectionFailed``);
* `ServiceSim.accept` builds the protocol from the recorded factory, connects it to a
  `StringTransport` and returns a `BrokerConn` (a `twistedsim.Harness` for that
  connection), optionally after playing the AMQP handshake and answering the service's
  restore step for an empty topology (``channel.open`` / ``channel.close`` on channel 1);
* ``BrokerConn.lose`` drops the connection the way a transport does, so Twisted's
  ``ClientService`` learns of it too; `BrokerConn.step` asserts the one method the client
  wrote and answers it.

Host names resolve through `MapResolver` (an IP literal to itself, a name through its table),
so the ``connectTCP`` calls show which broker each attempt went to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IHostnameResolver, IHostResolution
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twistedsim import Harness, TwistedBroker, normalize, send_start, send_tune
from zope.interface import implementer

from txpika import spec
from txpika._specbase import Method
from txpika.client import AMQPService
from txpika.protocol import AMQPProtocol

__all__ = ["ATTEMPT_DELAY", "Attempt", "BrokerConn", "MapResolver", "ServiceSim", "fixed_policy"]

m = spec

#: How long Twisted's HostnameEndpoint waits before trying its next address (or, after its
#: last one, before reporting that every address failed).
ATTEMPT_DELAY = HostnameEndpoint._DEFAULT_ATTEMPT_DELAY


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:  # pragma: no cover - resolution is synchronous
        raise RuntimeError("already resolved")


@implementer(IHostnameResolver)
class MapResolver:
    """Resolves synchronously: an IPv4 literal to itself, a name through ``table``
    (anything else to 127.0.0.1). Remembers every name looked up in ``lookups``."""

    def __init__(self, table: dict[str, str] | None = None) -> None:
        self.table = dict(table or {})
        self.lookups: list[str] = []

    def resolveHostName(self, resolutionReceiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        from twisted.internet.abstract import isIPAddress

        self.lookups.append(hostName)
        address = hostName if isIPAddress(hostName) else self.table.get(hostName, "127.0.0.1")
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        resolutionReceiver.addressResolved(IPv4Address("TCP", address, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


def fixed_policy(*delays: float) -> Callable[[int], float]:
    """A deterministic retry policy: attempt n (1-based) waits ``delays[n-1]`` (the last
    one repeats). Records the attempt numbers it was asked about in ``policy.calls``."""
    calls: list[int] = []

    def policy(attempt: int) -> float:
        calls.append(attempt)
        return delays[min(attempt, len(delays)) - 1]

    policy.calls = calls  # type: ignore[attr-defined]
    return policy


@dataclass
class Attempt:
    """One recorded ``connectTCP`` call."""

    host: str
    port: int
    factory: Any
    timeout: float
    connector: Any


@dataclass
class BrokerConn(Harness):
    """The broker's side of one connection the service made."""

    wrapper: Any = None  # the endpoint's wrapping protocol (what the transport talks to)
    attempt: Attempt | None = None

    def lose(self, reason: BaseException | None = None) -> None:
        """The transport is gone: the protocol and Twisted's ClientService both learn it."""
        self.wrapper.connectionLost(Failure(reason or ConnectionLost("connection reset")))

    def lose_uncleanly(self) -> None:
        self.lose(ConnectionLost("connection reset"))

    def finish_close(self) -> None:
        """The client hung up (``loseConnection`` after close-ok): deliver connectionLost."""
        assert self.transport.disconnecting or self.transport.disconnected
        self.lose(ConnectionDone("closed cleanly"))

    def step(self, channel: int, method: Method, reply: Method | None = None) -> None:
        """Assert the client wrote exactly ``method`` on ``channel``, then answer it."""
        got = self.broker.methods()
        assert got == [(channel, normalize(method))], got
        if reply is not None:
            self.broker.send(channel, reply)

    def open_ok(self, channel: int) -> None:
        """Answer the ``channel.open`` the client wrote on ``channel``."""
        self.step(channel, m.Channel.Open(), m.Channel.OpenOk(b""))

    def close_ok(self, channel: int) -> None:
        """Answer the normal ``channel.close`` the client wrote on ``channel``."""
        self.step(channel, m.Channel.Close(200, "Normal close", 0, 0), m.Channel.CloseOk())

    def restore_empty(self) -> None:
        """Answer the restore step of an empty topology: channel 1 opened and closed."""
        self.open_ok(1)
        self.close_ok(1)

    def close_by_client(self) -> None:
        """Answer the client's ``connection.close`` (200) and hang up."""
        self.step(0, m.Connection.Close(200, "Normal shutdown", 0, 0), m.Connection.CloseOk())
        self.finish_close()

    def kill(self, code: int = 320, text: str = "CONNECTION_FORCED") -> None:
        """The broker closes the connection (``connection.close``), then the socket."""
        self.broker.close_connection(code, text)
        assert self.broker.methods() == [(0, m.Connection.CloseOk())]
        self.finish_close()


class ServiceSim:
    """An `AMQPService` on a `MemoryReactorClock`, with its connection attempts recorded.

    ``policy`` defaults to a fixed one-second retry; ``overrides`` go to the service (the
    default turns heartbeats off so that advancing the clock writes nothing unexpected).
    """

    def __init__(self, brokers: str | Sequence[str] = "amqp://guest:secret@10.0.0.1:5672/",
                 setup: Any = None, *, policy: Callable[[int], float] | None = None,
                 resolver: MapResolver | None = None, **overrides: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.resolver = resolver or MapResolver()
        self.reactor.installNameResolver(self.resolver)
        overrides.setdefault("heartbeat", 0)
        self.policy = policy or fixed_policy(1.0)
        self.service = AMQPService(self.reactor, brokers, setup, retry_policy=self.policy,
                                   **overrides)
        self.states: list[str] = []
        self.service.add_state_listener(self.states.append)
        self._seen = 0  # connectTCP calls handled so far
        self.conns: list[BrokerConn] = []

    @property
    def clock(self) -> MemoryReactorClock:
        return self.reactor

    def start(self) -> None:
        self.service.startService()

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)

    # -- connection attempts ----------------------------------------------------------------

    def attempts(self) -> list[Attempt]:
        """Every recorded connectTCP call, oldest first."""
        return [Attempt(host, port, factory, timeout, connector)
                for (host, port, factory, timeout, _bind), connector
                in zip(self.reactor.tcpClients, self.reactor.connectors, strict=True)]

    def pending(self) -> list[tuple[str, int]]:
        """(host, port) of the attempts not handled yet."""
        return [(a.host, a.port) for a in self.attempts()[self._seen:]]

    def next_attempt(self) -> Attempt:
        attempts = self.attempts()
        assert len(attempts) == self._seen + 1, (
            f"expected exactly one new connection attempt, got {self.pending()}")
        self._seen += 1
        return attempts[-1]

    def refuse(self, reason: BaseException | None = None) -> Attempt:
        """The next attempt fails (connection refused by default).

        Twisted's ``HostnameEndpoint`` reports the failure of its last address only at its
        next attempt tick (`ATTEMPT_DELAY` later: "happy eyeballs"), so the clock is advanced
        by that much: when this returns, the service has seen the failure."""
        attempt = self.next_attempt()
        attempt.factory.clientConnectionFailed(
            attempt.connector, Failure(reason or ConnectionRefusedError("refused")))
        self.advance(ATTEMPT_DELAY)
        return attempt

    def accept(self, *, handshake: bool = True, restore: bool = True,
               server_tune: tuple[int, int, int] = (2047, 131072, 60),
               expect_tune_ok: tuple[int, int, int] | None = (2047, 131072, 0)
               ) -> BrokerConn:
        """The next attempt connects. With ``handshake`` the AMQP handshake is played (and
        checked); with ``restore`` too, the restore of an empty topology is answered."""
        attempt = self.next_attempt()
        wrapper = attempt.factory.buildProtocol(IPv4Address("TCP", attempt.host, attempt.port))
        transport = StringTransport(
            peerAddress=IPv4Address("TCP", attempt.host, attempt.port))
        wrapper.makeConnection(transport)
        protocol = wrapper._wrappedProtocol._protocol
        assert isinstance(protocol, AMQPProtocol)
        broker = TwistedBroker(protocol, transport)
        assert broker.read() == []
        conn = BrokerConn(protocol, transport, self.reactor, broker, wrapper, attempt)
        self.conns.append(conn)
        if handshake:
            ready = protocol.ready
            send_start(conn)
            send_tune(conn, server_tune, expect_tune_ok)
            conn.broker.send(0, m.Connection.OpenOk(""))
            assert ready.called
            if restore:
                conn.restore_empty()
        return conn

    def open(self, **kwargs: Any) -> BrokerConn:
        """Start the service (if needed) and open its first connection."""
        if not self.service.running:
            self.start()
        conn = self.accept(**kwargs)
        return conn

