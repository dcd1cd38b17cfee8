"""`AMQPService`: a connection that recovers, as an explicit, observable state.

Built on Twisted's ``ClientService`` and its public interface only: it keeps one
connection, with a backoff retry policy with jitter and an injected clock. The service
follows each new connection's AMQP handshake and then restores what the application had set
up; a connection whose handshake or restore fails is closed, which ClientService takes as a
lost connection and retries. With several brokers (the nodes of a cluster) every
connection attempt goes to the next one in turn, so losing a node moves the service on.

States (``service.state``; listeners get every change):

``closed``      before ``startService`` and after ``stopService``
``connecting``  until the first connection is open
``open``        connected and restored
``blocked``     connected, but the broker blocks publishers (``connection.blocked``)
``recovering``  from the loss of an open connection until a new one is open and restored

On every new connection the service either runs the user's ``setup(channel)`` or replays
the topology recorded from its `RobustChannel` s, in the order it was declared: exchanges,
exchange bindings, queues, queue bindings; then each robust channel is reopened with its
QoS, confirm mode and consumers. A server-named queue is declared again under a new name;
its bindings and consumers follow it, and queue-rename listeners learn the new name.
Work attempted while the service is not open fails at once with
`txpika.errors.ConnectionRecovering` (or `txpika.errors.ServiceStopped`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from txpika._connect import endpoint_for
from txpika._topology import Topology
from txpika.errors import ConnectionRecovering, ServiceStopped
from txpika.observe import Observer, state_listener
from txpika.parameters import ConnectionParameters, parameters_for
from txpika.protocol import AMQPProtocol
from txpika.robust import RobustChannel

if TYPE_CHECKING:
    from txpika.channel import Channel
    from txpika.publisher import Publisher

__all__ = ["AMQPService", "ServiceState"]

#: The logger of the reconnecting service (namespace ``txpika.client``).
log = Logger()


class ServiceState(StrEnum):
    """Where a reconnecting service stands (equal to its string value)."""

    #: Before ``startService`` and after ``stopService``.
    CLOSED = "closed"
    #: Until the first connection is open and restored.
    CONNECTING = "connecting"
    #: Connected and restored.
    OPEN = "open"
    #: Connected, but the broker blocks publishers (``connection.blocked``).
    BLOCKED = "blocked"
    #: From the loss of an open connection until a new one is open and restored.
    RECOVERING = "recovering"


#: The members of `ServiceState`, as module constants.
CLOSED, CONNECTING, OPEN, BLOCKED, RECOVERING = ServiceState  # (its members, in order)

#: How long stopService waits for the broker's close-ok before dropping the connection.
STOP_TIMEOUT = 10.0

#: The ``setup(channel)`` hook: called on each new connection instead of the replay of the recorded
#: topology; may return a Deferred or a coroutine.
Setup = Callable[["Channel"], object]


class _Factory(Factory):
    """Builds a protocol for the broker the rotating endpoint is connecting to now, and
    hands it to the service, which follows its handshake and restores it."""

    def __init__(self, service: AMQPService) -> None:
        self.service = service

    def buildProtocol(self, addr: Any) -> AMQPProtocol:
        service = self.service
        proto = AMQPProtocol(service._attempt, service.clock)
        proto.factory = self
        service._follow(proto, service._attempt)
        return proto


@implementer(IStreamClientEndpoint)
class _RotatingEndpoint:
    """Each connect() goes to the next broker of the list."""

    def __init__(self, service: AMQPService) -> None:
        self._service = service
        self._index = -1

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:  # noqa: N803
        service = self._service
        self._index = (self._index + 1) % len(service.brokers)
        parameters = service.brokers[self._index]
        service._attempt = parameters
        log.debug("connecting to {broker}", broker=parameters.describe())
        try:
            endpoint = endpoint_for(service.reactor, parameters)
        except Exception as exc:
            return fail(exc)
        d: Deferred[Any] = endpoint.connect(protocolFactory)
        d.addTimeout(parameters.connection_timeout + 1, service.clock)
        d.addErrback(service._attempt_failed)
        return d


def _jitter_policy(clock_random: Callable[[], float]) -> Callable[[int], float]:
    return backoffPolicy(initialDelay=0.5, maxDelay=30.0, factor=2.0, jitter=clock_random)


class AMQPService(Service):
    """A reconnecting AMQP connection, usable as a Twisted ``IService``.

    ``brokers`` is a URL, `ConnectionParameters` or endpoint description, or a list of them
    (tried in turn); ``overrides`` apply to each. ``setup(channel)`` (optional; may return
    a Deferred or a coroutine) runs on a fresh channel of every new connection instead of
    the recorded topology. ``retry_policy`` maps the number of failed attempts in a row
    (refused connections and failed handshakes alike) to the delay before the next
    (default: exponential backoff, 1 s, 2 s, 4 s ... up to 30 s, each plus up to 1 s of
    jitter). ``clock`` defaults to ``reactor``. ``observer`` (`txpika.observe.Observer`) hears
    each state change and recovery; its consumer services and publishers default to it."""

    def __init__(
        self,
        reactor: Any,
        brokers: str | ConnectionParameters | Sequence[str | ConnectionParameters],
        setup: Setup | None = None,
        *,
        retry_policy: Callable[[int], float] | None = None,
        clock: IReactorTime | None = None, observer: Observer | None = None,
        **overrides: Any,
    ) -> None:
        targets = [brokers] if isinstance(brokers, (str, ConnectionParameters)) else [*brokers]
        if not targets:
            raise ValueError("AMQPService needs at least one broker")
        #: The reactor it connects with.
        self.reactor = reactor
        #: The clock retries and timeouts run on (the reactor unless one was given).
        self.clock: IReactorTime = clock or reactor
        #: The brokers' parameters, tried in turn.
        self.brokers = [parameters_for(t, overrides) for t in targets]
        #: The ``setup`` hook, or ``None`` to replay the recorded topology.
        self.setup = setup
        #: What robust channels declared, replayed on each new connection.
        self.topology = Topology()
        self._attempt = self.brokers[0]
        self._state = CLOSED
        self._listeners: list[Callable[[ServiceState], object]] = []
        #: The `txpika.observe.Observer` told of state changes and recoveries, or ``None``.
        self.observer = observer  # reports state changes and recoveries (a listener):
        self._listeners += [state_listener(observer, self)] if observer is not None else []
        self._protocol: AMQPProtocol | None = None
        self._connecting: AMQPProtocol | None = None  # being opened and restored
        self._broker: ConnectionParameters | None = None
        self._waiters: list[Deferred[AMQPProtocol]] = []
        self._channels: list[RobustChannel] = []
        self._ever_open = False
        self._failures = 0  # attempts that failed in a row (see _retry_delay)
        self._dependents: list[IService] = []
        self._closed_watchers: list[Deferred[BaseException]] = []
        self._stopping = False
        self._policy = retry_policy or _jitter_policy(random.random)
        self._client = ClientService(
            _RotatingEndpoint(self), _Factory(self), retryPolicy=self._retry_delay,
            clock=self.clock)

    def __repr__(self) -> str:
        return f"<AMQPService {self._state} {self.current_broker or '-'}>"

    # -- observation -------------------------------------------------------------------------

    @property
    def state(self) -> ServiceState:
        """`ServiceState`: ``"closed"``, ``"connecting"``, ``"open"``, ``"blocked"`` or
        ``"recovering"``."""
        return self._state

    @property
    def current_broker(self) -> str | None:
        """The broker of the open connection (URL without password), or ``None``."""
        return self._broker.describe() if self._broker is not None else None

    def add_state_listener(self, callback: Callable[[ServiceState], object]) -> None:
        """Call ``callback(state)`` in the same turn as every change of `state`."""
        self._listeners.append(callback)

    def remove_state_listener(self, callback: Callable[[ServiceState], object]) -> None:
        """Stop calling ``callback``."""
        self._listeners.remove(callback)

    def add_queue_rename_listener(self, callback: Callable[[str, str], object]) -> None:
        """Call ``callback(old_name, new_name)`` when a server-named queue is redeclared."""
        self.topology.rename_listeners.append(callback)

    def add_dependent(self, service: IService) -> None:
        """Stop ``service`` (a consumer using this connection), and wait for it, before the
        connection is closed in `stopService`."""
        self._dependents.append(service)

    def when_closed(self) -> Deferred[BaseException]:
        """A new Deferred that fires (never fails) with `txpika.errors.ServiceStopped` once
        the service stopped and its connection closed (at once if it is not running)."""
        if not self.running and not self._stopping:
            return succeed(ServiceStopped("the service is not running"))
        d: Deferred[BaseException] = Deferred()
        self._closed_watchers.append(d)
        return d

    # -- use -------------------------------------------------------------------------------

    def connection(self, timeout: float | None = None) -> Deferred[AMQPProtocol]:
        """The open connection, waiting through connecting and recovering.

        Fails with `txpika.errors.ServiceStopped` if the service is not running (or stops
        while waiting), or `twisted.internet.defer.TimeoutError` after ``timeout`` seconds.
        """
        if self._state in (OPEN, BLOCKED) and self._protocol is not None and (
                self._protocol.is_open):  # not one the broker closed, going away now
            return succeed(self._protocol)
        if self._state == CLOSED:
            return fail(ServiceStopped("the service is not running"))
        d: Deferred[AMQPProtocol] = Deferred(lambda d: self._waiters.remove(d)
                                             if d in self._waiters else None)
        self._waiters.append(d)
        if timeout is not None:
            d.addTimeout(timeout, self.clock)
        return d

    def channel(self) -> Deferred[RobustChannel]:
        """A `RobustChannel`: it records what it declares and is reopened, with its QoS,
        confirm mode and consumers, on every new connection. Fires once it is open; fails
        like `connection` (it waits for the service to be open)."""
        def opened(protocol: AMQPProtocol) -> Deferred[RobustChannel]:
            robust = RobustChannel(self, on_close=self._forget)
            self._channels.append(robust)

            def failed(failure: Any) -> Any:
                self._forget(robust)  # nobody holds it: never reopen it
                return failure

            return robust.attach(protocol).addCallbacks(lambda _: robust, failed)

        return self.connection().addCallback(opened)

    def publisher(self, *, at_least_once: bool = False, max_pending: int = 10000,
                  **options: Any) -> Deferred[Publisher]:
        """A started `txpika.publisher.Publisher` on this service (confirms on; with
        ``at_least_once`` it holds and republishes unconfirmed messages after recovery;
        ``options``: its ``observer``, ``tracing``). Fires once its channel is open; fails
        like `channel`."""
        from txpika.publisher import Publisher

        return Publisher(self, at_least_once=at_least_once, max_pending=max_pending,
                         **options).start()

    def unavailable(self) -> Exception:
        """The error for work attempted now: `ServiceStopped` or `ConnectionRecovering`."""
        if self._state == CLOSED:
            return ServiceStopped("the service is not running")
        return ConnectionRecovering(f"the connection is {self._state}; try again when open")

    # -- IService ------------------------------------------------------------------------------

    def startService(self) -> None:
        """``IService``: start connecting (state ``connecting``, or ``recovering`` after a stop and
        start); returns at once."""
        super().startService()  # type: ignore[no-untyped-call]
        self._set_state(RECOVERING if self._ever_open else CONNECTING)
        self._client.startService()

    def stopService(self) -> Deferred[None]:
        """Close the connection cleanly (bounded by `STOP_TIMEOUT`) and stop reconnecting.
        Fires with ``None``; pending `connection` waiters fail with `ServiceStopped`."""
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopping = True
        dependents = [maybeDeferred(service.stopService) for service in self._dependents]
        drained: Deferred[Any] = DeferredList(dependents, consumeErrors=True)
        return drained.addCallback(lambda _: self._close())

    def _close(self) -> Deferred[None]:
        # The open connection, or the one being restored: closed cleanly either way.
        protocol = self._protocol or self._connecting
        self._protocol = self._connecting = None
        self._broker = None
        self._set_state(CLOSED)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(ServiceStopped("the service stopped"))
        for robust in list(self._channels):
            robust.service_stopped(ServiceStopped("the service stopped"))
        closing: Deferred[Any] = succeed(None)
        if protocol is not None and protocol.is_open:
            closing = protocol.close()
            closing.addTimeout(STOP_TIMEOUT, self.clock)
            closing.addErrback(lambda f: None)

        def stopped(_: object) -> None:
            self._stopping = False
            watchers, self._closed_watchers = self._closed_watchers, []
            for watcher in watchers:
                watcher.callback(ServiceStopped("the service stopped"))

        return closing.addCallback(lambda _: self._client.stopService()).addCallback(stopped)

    # -- internals ---------------------------------------------------------------------------

    def _retry_delay(self, attempt: int) -> float:
        # ClientService counts the attempts that failed since its last connection, but a
        # connection whose handshake or restore failed counts as made for it: the service
        # counts every failure in a row itself (a refused connection, a failed handshake or
        # restore, and the loss of an open connection that starts a recovery).
        return self._policy(max(1, self._failures))

    def _attempt_failed(self, failure: Any) -> Any:
        self._failures += 1
        return failure

    def _set_state(self, state: ServiceState) -> None:
        if state == self._state:
            return
        self._state = state
        log.info("AMQP service {state} ({broker})", state=state.value,
                 broker=self.current_broker or self._attempt.describe())
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:
                log.failure("state listener {listener} failed", listener=listener)

    def _follow(self, protocol: AMQPProtocol, broker: ConnectionParameters) -> None:
        """A new connection's protocol: once its handshake is done, restore what was set
        up, then it is the service's connection. If either fails, it is closed, and
        ClientService, which sees a connection lost, tries again after its policy's delay
        (`_retry_delay`), once the rejected connection is gone: never beside it."""
        def restore(_: Any) -> Deferred[None]:
            return maybeDeferred(self._restore, protocol)

        self._connecting = protocol

        def ready(_: Any) -> None:
            if self._connecting is protocol:
                self._connecting = None
            if not self.running or not protocol.is_open:
                raise ConnectionRecovering("the connection was lost while restoring it")
            self._failures = 0
            self._protocol = protocol
            self._broker = broker
            self._ever_open = True
            protocol.when_closed().addCallback(self._lost, protocol)
            protocol.add_flow_listener(self._flow)
            self._set_state(BLOCKED if protocol.is_blocked else OPEN)
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(protocol)

        def failed(failure: Any) -> None:
            if self._connecting is protocol:
                self._connecting = None
            if not self.running:
                return
            self._failures += 1
            log.warn("could not open {broker}: {error}", broker=broker.describe(),
                     error=failure.value)
            if protocol.is_open:
                protocol.close()
            else:
                protocol.abort()

        protocol.ready.addCallback(restore).addCallback(ready).addErrback(failed)

    def _restore(self, protocol: AMQPProtocol) -> Deferred[None]:
        from twisted.internet.defer import ensureDeferred

        async def run() -> None:
            channel = await protocol.channel()
            if self.setup is not None:
                result = self.setup(channel)
                if isinstance(result, Deferred) or hasattr(result, "__await__"):
                    await result
            else:
                await self.topology.replay(channel)
            if channel.is_open:
                await channel.close()
            for robust in list(self._channels):
                await robust.attach(protocol)
            self.topology.forget_renames()

        return ensureDeferred(run())

    def _lost(self, error: BaseException, protocol: AMQPProtocol) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._broker = None
        self._failures = 1
        for robust in self._channels:
            robust.detach()
        if self.running:
            log.warn("connection lost ({error}); recovering", error=error)
            self._set_state(RECOVERING)

    def _flow(self, active: bool, reason: str) -> None:
        if self._protocol is not None and self._state in (OPEN, BLOCKED):
            self._set_state(OPEN if active else BLOCKED)

    def _forget(self, robust: RobustChannel) -> None:
        if robust in self._channels:
            self._channels.remove(robust)
