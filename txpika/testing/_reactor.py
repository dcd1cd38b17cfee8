"""`MemoryReactor`: a reactor whose TCP connections all go to one `MemoryBroker`, in memory.

For code under test that connects by itself (``txpika.connect(reactor, url)``,
``txpika.AMQPService(reactor, url)``, ``ConsumerService``): give it ``broker.reactor``. It is
Twisted's ``twisted.internet.testing.MemoryReactor`` (name resolution, the records of
``connectTCP``...) with the broker's clock as its time, and every ``connectTCP`` becomes an
in-memory connection to the broker, made on the next `MemoryBroker.flush` (or refused with
``ConnectionRefusedError`` while ``broker.accepting`` is false). Nothing else runs on it:
``run()`` is not for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import testing
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IConnector, IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["MemoryReactor"]


class _Host(Protocol):
    """What the reactor needs of its broker (`txpika.testing.MemoryBroker`)."""

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def accepting(self) -> bool: ...


Attach = Callable[[Any, Callable[[Failure], object]], object]


@implementer(IReactorTime)
class MemoryReactor(testing.MemoryReactor):
    """See the module docstring."""

    def __init__(self, broker: _Host, attach: Attach) -> None:
        """``attach(protocol, lost)`` connects a protocol to ``broker`` in memory."""
        super().__init__()  # type: ignore[no-untyped-call]
        self._broker = broker
        self._attach = attach
        #: Connections asked for and not yet made: (factory, connector).
        self.pending: list[tuple[Any, IConnector]] = []

    # IReactorTime: the broker's clock
    def seconds(self) -> float:
        return self._broker.clock.seconds()

    def callLater(self, delay: float, callable: Callable[..., object],
                  *args: object, **kw: object) -> IDelayedCall:
        return self._broker.clock.callLater(delay, callable, *args, **kw)

    def getDelayedCalls(self) -> list[IDelayedCall]:
        return list(self._broker.clock.getDelayedCalls())

    # IReactorTCP
    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30,  # noqa: N802
                   bindAddress: Any = None) -> IConnector:  # noqa: N803
        connector: IConnector = super().connectTCP(  # type: ignore[no-untyped-call]
            host, port, factory, timeout, bindAddress)
        self.pending.append((factory, connector))
        return connector

    def make_pending(self) -> bool:
        """Make (or refuse) the connections asked for; True if there were any."""
        pending, self.pending = self.pending, []
        for factory, connector in pending:
            if not self._broker.accepting:
                refused = ConnectionRefusedError(  # type: ignore[no-untyped-call]
                    "the memory broker does not accept connections")
                factory.clientConnectionFailed(connector, Failure(refused))  # type: ignore[no-untyped-call]
                continue
            protocol = factory.buildProtocol(connector.getDestination())
            if protocol is not None:
                self._attach(protocol, _lost(factory, connector))
        return bool(pending)


def _lost(factory: Any, connector: IConnector) -> Callable[[Failure], object]:
    def lost(reason: Failure) -> object:
        return factory.clientConnectionLost(connector, reason)

    return lost
