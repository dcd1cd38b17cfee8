"""An AMQP 0-9-1 broker in memory for the tests of code that uses txpika.

::

    from txpika.testing import MemoryBroker

    broker = MemoryBroker()
    d = broker.connect()              # Deferred[AMQPProtocol], no socket, no reactor
    broker.flush()                    # frames move both ways until nothing moves
    connection = d.result             # or trial's successResultOf(d)

`MemoryBroker` speaks real AMQP frames through txpika's own codec and answers as RabbitMQ
does where it implements a feature, reply codes and texts included. Tests read its state
(`MemoryBroker.queue` and its ``messages``) and drive its time (`MemoryBroker.advance`).
`MemoryBroker.listen` serves the same broker on a loopback TCP port for any client.

The broker's side of a connection is sans-IO (`ServerConnection`: bytes in, bytes out) and
imports nothing from Twisted, so other drivers can serve it too.
"""

from txpika.testing._broker import MemoryBroker
from txpika.testing._model import BrokerMessage
from txpika.testing._queue import Queue
from txpika.testing._server import BrokerCore, ServerConnection
from txpika.testing._vhost import Binding, Exchange

__all__ = [
    "Binding",
    "BrokerCore",
    "BrokerMessage",
    "Exchange",
    "MemoryBroker",
    "Queue",
    "ServerConnection",
]
