"""An AMQP 0-9-1 broker in memory for the tests of code that uses txpika.

::

    from txpika.testing import MemoryBroker

    broker = MemoryBroker()
    connection = broker.result(broker.connect())   # no socket, no reactor
    channel = broker.result(connection.channel())  # result(): flush(), then the result

`MemoryBroker` speaks real AMQP frames through txpika's own codec and answers as RabbitMQ
does where it implements a feature, reply codes and texts included. Nothing moves until
`MemoryBroker.flush`; tests read its state (`MemoryBroker.queue` and its ``messages``) and
drive its time (`MemoryBroker.advance`). `MemoryBroker.listen` serves the same broker on a
loopback TCP port for any client, and `MemoryBroker.reactor` connects code that connects
by itself (``txpika.connect(broker.reactor, url)``, ``AMQPService``) in memory.

The broker's side of a connection is sans-IO (`ServerConnection`: bytes in, bytes out, over
a `BrokerCore` of users, virtual hosts and their entities) and imports nothing from Twisted,
so other drivers can serve it too; only `MemoryBroker` needs Twisted, and it is imported on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from txpika.testing._core import BrokerCore
from txpika.testing._model import BrokerMessage
from txpika.testing._queue import Queue
from txpika.testing._server import ServerConnection
from txpika.testing._vhost import Binding, Exchange, VirtualHost

if TYPE_CHECKING:
    from txpika.testing._broker import MemoryBroker

__all__ = [
    "Binding",
    "BrokerCore",
    "BrokerMessage",
    "Exchange",
    "MemoryBroker",
    "Queue",
    "ServerConnection",
    "VirtualHost",
]


def __getattr__(name: str) -> Any:
    if name == "MemoryBroker":
        from txpika.testing._broker import MemoryBroker

        globals()[name] = MemoryBroker
        return MemoryBroker
    raise AttributeError(f"module 'txpika.testing' has no attribute {name!r}")
