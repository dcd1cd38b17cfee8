"""`MemoryBroker`: the public face of the in-memory broker (Twisted side)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Final, TypeVar
from urllib.parse import quote

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from txpika.parameters import ConnectionParameters
from txpika.protocol import AMQPProtocol
from txpika.spec import BasicProperties
from txpika.testing._core import BrokerCore
from txpika.testing._memory import Pipe
from txpika.testing._model import Fault
from txpika.testing._queue import Queue
from txpika.testing._reactor import MemoryReactor
from txpika.testing._server import ServerConnection
from txpika.testing._vhost import Binding, Exchange, VirtualHost

__all__ = ["MemoryBroker"]

T = TypeVar("T")

SHUTDOWN_TEXT: Final = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"


class MemoryBroker:
    """An AMQP 0-9-1 broker in memory, for tests of code that uses txpika.

    ``clock`` (an ``IReactorTime``; by default a new ``twisted.internet.task.Clock``) is the
    broker's time: message TTLs, ``x-expires``, heartbeats and the ``time`` of ``x-death``
    records run on it, and so do the protocols made by `connect`. ``users`` maps user
    names to passwords (default ``{"guest": "guest"}``); ``vhosts`` names the virtual hosts
    (default ``["/"]``). ``heartbeat``, ``frame_max`` and ``channel_max`` are what the
    broker proposes in ``connection.tune``, as RabbitMQ's defaults.

    With ``autoflush=True`` the broker calls `flush` itself, on the clock's next turn
    (``callLater(0)``) after anything is written: with the reactor as the clock, a test under
    trial or pytest-twisted can simply ``await`` txpika calls.

    Where it implements a feature it answers as RabbitMQ 3.x does, reply codes and texts
    included; what it does not implement (priorities, quorum and stream queues, direct
    reply-to, ``x-`` exchange types...) is refused with ``connection.close`` 540
    NOT_IMPLEMENTED naming the feature. It speaks AMQP 0-9-1 only.
    """

    #: `flush` gives up after this many rounds without settling (a consumer that requeues
    #: every message forever never settles, on RabbitMQ either). A round carries what is
    #: pending both ways, so a test awaiting N calls one after another needs N rounds.
    max_rounds: int = 100_000

    def __init__(self, clock: IReactorTime | None = None, *,
                 users: Mapping[str, str] | None = None, vhosts: Iterable[str] = ("/",),
                 heartbeat: int = 60, frame_max: int = 131072, channel_max: int = 2047,
                 autoflush: bool = False) -> None:
        #: The broker's time (a ``task.Clock`` unless one was given); `MemoryBroker.advance` moves
        #: it.
        self.clock: IReactorTime = clock if clock is not None else Clock()
        #: The sans-IO broker behind it (`txpika.testing.BrokerCore`).
        self.core = BrokerCore(self.clock, users if users is not None else {"guest": "guest"},
                               list(vhosts), channel_max=channel_max, frame_max=frame_max,
                               heartbeat=heartbeat)
        self._pipes: list[Pipe] = []
        self._reactor: MemoryReactor | None = None
        #: While False, connections through `reactor` are refused (ConnectionRefusedError).
        self.accepting = True
        #: Whether it flushes by itself on the reactor's next turn.
        self.autoflush = autoflush
        self._flush_call: Any = None
        self._tcp: list[_ServerProtocol] = []
        self._ports: list[IListeningPort] = []
        self._count = 0

    def __repr__(self) -> str:
        return f"<MemoryBroker vhosts={sorted(self.core.vhosts)}>"

    # -- connecting --------------------------------------------------------------------------

    def connect(self, parameters: ConnectionParameters | None = None) -> Deferred[AMQPProtocol]:
        """A new `txpika.protocol.AMQPProtocol` on an in-memory transport (no socket),
        with `clock` as its clock.

        Like every Deferred of txpika calls on it, this one fires when `flush` (or
        `advance`) moves the frames: with the protocol once ``connection.open-ok`` arrived,
        or with the handshake's error (`txpika.AuthenticationError` for refused
        credentials, `txpika.errors.NotAllowed` for an unknown virtual host).
        """
        protocol = AMQPProtocol(parameters or ConnectionParameters(), self.clock)
        ready = protocol.ready
        self._attach(protocol)
        return ready

    @property
    def reactor(self) -> MemoryReactor:
        """A reactor for code that connects by itself (``txpika.connect(broker.reactor,
        url)``, ``AMQPService(broker.reactor, url)``): Twisted's ``MemoryReactor`` with
        `clock` as its time, whose every ``connectTCP`` is an in-memory connection to this
        broker, whatever the host and port, made on the next `flush` (refused while
        `accepting` is False). Plain ``amqp://`` only: TLS is not spoken."""
        if self._reactor is None:
            self._reactor = MemoryReactor(self, self._attach)
        return self._reactor

    def _attach(self, protocol: Protocol,
                on_lost: Callable[[Failure], object] | None = None) -> None:
        self._count += 1
        pipe = Pipe(protocol, self.core.open_connection(), self._count, on_lost)
        pipe.on_ready = self._schedule_flush
        self._pipes.append(pipe)
        pipe.connect()

    def _schedule_flush(self) -> None:
        if self.autoflush and self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._autoflush)

    def _autoflush(self) -> None:
        self._flush_call = None
        self.flush()

    def flush(self) -> None:
        """Move frames both ways on every in-memory connection until nothing moves.

        Everything that only waits for the broker completes: Deferreds fire, callbacks run,
        what they send is answered in turn. What waits for time does not: see `advance`.
        Raises ``RuntimeError`` if traffic never settles (for example a consumer that
        requeues every message it gets, forever).
        """
        for _ in range(self.max_rounds):
            moved = self._reactor is not None and self._reactor.make_pending()
            for pipe in list(self._pipes):
                if pipe.pump():
                    moved = True
            self._pipes = [p for p in self._pipes if not p.closed]
            if not moved:
                return
        raise RuntimeError(
            f"MemoryBroker.flush: traffic did not settle in {self.max_rounds} rounds")

    def result(self, work: Deferred[T] | Coroutine[Any, Any, T]) -> T:
        """`flush`, then return what ``work`` (a Deferred, or a coroutine run with
        ``ensureDeferred``) fired with: trial's ``successResultOf`` for plain pytest.

        Raises the failure it fired with, or ``AssertionError`` if it has not fired (it
        waits for time: see `advance`, or for something that never comes).
        """
        d = work if isinstance(work, Deferred) else ensureDeferred(work)
        self.flush()
        outcome: list[T | Failure] = []
        d.addBoth(outcome.append)
        if not outcome:
            raise AssertionError(f"{work!r} has no result after flush()")
        value = outcome[0]
        if isinstance(value, Failure):
            value.raiseException()
        return value

    def advance(self, seconds: float) -> None:
        """Move the broker's clock (a ``task.Clock``) ``seconds`` forward, running each timer
        that comes due in order and flushing after each, as time passes on a network: TTLs
        expire, heartbeats go both ways and keep the connections alive."""
        clock = self.clock
        if not isinstance(clock, Clock):
            raise TypeError("advance() needs a twisted.internet.task.Clock as the clock")
        self.flush()
        end = clock.seconds() + seconds
        while True:
            due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= end]
            step = (min(due) if due else end) - clock.seconds()
            clock.advance(max(0.0, step))
            self.flush()
            if not due:
                return

    def listen(self, reactor: IReactorTCP, port: int = 0) -> Deferred[str]:
        """Serve this broker on a loopback TCP port (``127.0.0.1``; 0 picks a free one).

        Fires with an ``amqp://`` URL for it (the first user and the first virtual host),
        for any AMQP 0-9-1 client: txpika, `txpika.blocking`, pika, a ``twistd txpika``
        daemon. Fails with Twisted's error if the port cannot be bound. Stop with
        `stop_listening`. Time still runs on `clock`: pass the reactor as the clock for
        real-time TTLs and heartbeats.
        """
        endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")  # type: ignore[no-untyped-call]
        d: Deferred[IListeningPort] = endpoint.listen(_ServerFactory(self))  # type: ignore[no-untyped-call]

        def listening(listening_port: IListeningPort) -> str:
            self._ports.append(listening_port)
            user, password = next(iter(self.core.users.items()), ("guest", "guest"))
            vhost = next(iter(self.core.vhosts))
            number = listening_port.getHost().port  # type: ignore[attr-defined]
            return (f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:"
                    f"{number}/{quote(vhost, safe='')}")

        return d.addCallback(listening)

    def stop_listening(self) -> Deferred[None]:
        """Stop every port `listen` opened and drop their connections. Fires once the ports
        are closed."""
        ports, self._ports = self._ports, []
        for proto in list(self._tcp):
            if proto.transport is not None:
                proto.transport.abortConnection()  # type: ignore[attr-defined]
        if not ports:
            return succeed(None)
        closing = [Deferred.fromCoroutine(_stop(p)) for p in ports]
        return DeferredList(closing).addCallback(lambda _: None)

    # -- driving connections -----------------------------------------------------------------

    @property
    def connections(self) -> list[ServerConnection]:
        """The broker's side of every open connection (in memory and TCP)."""
        return list(self.core.connections)

    def close_connections(self, reply_code: int = 320, reply_text: str = SHUTDOWN_TEXT) -> None:
        """Close every connection as a broker shutting down does (``connection.close`` 320
        CONNECTION_FORCED), for tests of recovery. Call `flush` to deliver it."""
        for conn in list(self.core.connections):
            conn.close(reply_code, reply_text)

    def block(self, reason: str = "low on memory") -> None:
        """Block publishers as a RabbitMQ resource alarm does: a connection that publishes
        is no longer read, and gets ``connection.blocked`` with ``reason`` (if it announced
        the capability), until `unblock`."""
        self.core.block(reason)

    def unblock(self) -> None:
        """End `block`: blocked connections get ``connection.unblocked`` and are read
        again (call `flush` for in-memory ones)."""
        self.core.unblock()

    def drop_connections(self) -> None:
        """Cut every connection without ``connection.close``, as a network failure does."""
        from twisted.internet.error import ConnectionLost

        for pipe in list(self._pipes):
            pipe.lose(ConnectionLost("the memory broker dropped the connection"))
        self._pipes.clear()
        for proto in list(self._tcp):
            if proto.transport is not None:
                proto.transport.abortConnection()  # type: ignore[attr-defined]

    # -- state -------------------------------------------------------------------------------

    def vhost(self, name: str = "/") -> VirtualHost:
        """A virtual host's state (``KeyError`` if there is none of that name)."""
        return self.core.vhosts[name]

    def queue(self, name: str, vhost: str = "/") -> Queue:
        """The queue ``name`` (``KeyError`` if it does not exist). Read ``.messages`` (ready,
        head first), ``.unacked``, ``.unacked_by(tag)``, ``.consumers``, ``.arguments``."""
        return self.vhost(vhost).queues[name]

    def queues(self, vhost: str = "/") -> dict[str, Queue]:
        """Every queue of a virtual host, by name."""
        return dict(self.vhost(vhost).queues)

    def exchange(self, name: str, vhost: str = "/") -> Exchange:
        """The exchange ``name`` (``KeyError`` if it does not exist)."""
        return self.vhost(vhost).exchanges[name]

    def exchanges(self, vhost: str = "/") -> dict[str, Exchange]:
        """Every exchange of a virtual host (the predeclared ``amq.*`` ones too), by name."""
        return dict(self.vhost(vhost).exchanges)

    def bindings(self, vhost: str = "/") -> list[Binding]:
        """Every binding of a virtual host (not the implicit ones of the default exchange)."""
        return self.vhost(vhost).bindings()

    # -- changing state directly -------------------------------------------------------------

    def declare_queue(self, name: str, *, durable: bool = False, auto_delete: bool = False,
                      arguments: Mapping[str, Any] | None = None, vhost: str = "/") -> Queue:
        """Declare a queue as a client would (same checks); returns it."""
        queue: Queue = self._do(lambda: self.vhost(vhost).declare_queue(
            None, name, passive=False, durable=durable, exclusive=False,
            auto_delete=auto_delete, arguments=arguments or {}))
        return queue

    def declare_exchange(self, name: str, exchange_type: str = "direct", *,
                         durable: bool = False, auto_delete: bool = False,
                         internal: bool = False, arguments: Mapping[str, Any] | None = None,
                         vhost: str = "/") -> Exchange:
        """Declare an exchange as a client would; returns it."""
        v = self.vhost(vhost)
        self._do(lambda: v.declare_exchange(
            name, exchange_type, passive=False, durable=durable, auto_delete=auto_delete,
            internal=internal, arguments=arguments or {}))
        return v.exchanges[name]

    def bind_queue(self, queue: str, exchange: str, routing_key: str = "",
                   arguments: Mapping[str, Any] | None = None, vhost: str = "/") -> None:
        """Bind a queue to an exchange."""
        v = self.vhost(vhost)

        def bind() -> None:
            v.queue(queue, None)
            v.bind(Binding(exchange, queue, "queue", routing_key, dict(arguments or {})))

        self._do(bind)

    def delete_queue(self, name: str, vhost: str = "/") -> int:
        """Delete a queue as an operator would: its consumers get ``basic.cancel`` (on the
        next `flush`). Returns how many messages it held; 0 if it did not exist."""
        v = self.vhost(vhost)
        queue = v.queues.get(name)
        return v.delete_queue(queue) if queue is not None else 0

    def publish(self, exchange: str, routing_key: str, body: bytes,
                properties: BasicProperties | None = None, vhost: str = "/") -> bool:
        """Publish as a client would (routing, TTL, length limits included); True if it
        reached a queue. Deliveries to consumers go out on the next `flush`."""
        outcome: tuple[bool, bool] = self._do(lambda: self.vhost(vhost).publish(
            exchange, routing_key, properties or BasicProperties(), bytes(body)))
        return outcome[0]

    @staticmethod
    def _do(action: Any) -> Any:
        try:
            return action()
        except Fault as fault:
            raise ValueError(fault.reply_text) from None


class _ServerProtocol(Protocol):
    """One TCP connection to the broker."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    def connectionMade(self) -> None:
        self.server = self.broker.core.open_connection()
        self.server.on_output = self._write
        self.broker._tcp.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.server.receive_data(data)
        self._write()

    def _write(self) -> None:
        out = self.server.data_to_send()
        if self.transport is None:
            return
        if out:
            self.transport.write(out)
        if self.server.wants_close:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.server.connection_lost()
        if self in self.broker._tcp:
            self.broker._tcp.remove(self)


class _ServerFactory(Factory):
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    def buildProtocol(self, addr: Any) -> _ServerProtocol:
        return _ServerProtocol(self.broker)


async def _stop(port: IListeningPort) -> None:
    await port.stopListening()  # type: ignore[misc]
