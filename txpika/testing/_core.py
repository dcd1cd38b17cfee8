"""`BrokerCore`: what every connection of one memory broker shares (sans-IO).

Users, virtual hosts (with their exchanges and queues), the tuning the broker proposes, its
server properties, and whether publishers are blocked. No Twisted here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Final

import txpika
from txpika.testing._model import Clock
from txpika.testing._server import ServerConnection
from txpika.testing._vhost import VirtualHost

__all__ = ["CAPABILITIES", "BrokerCore"]

CAPABILITIES: Final = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
}


class BrokerCore:
    """Users, virtual hosts and tuning shared by every connection of one broker."""

    def __init__(self, clock: Clock, users: Mapping[str, str], vhosts: Collection[str],
                 channel_max: int = 2047, frame_max: int = 131072,
                 heartbeat: int = 60) -> None:
        #: The clock timers run on (message TTLs, ``x-expires``, heartbeats).
        self.clock = clock
        #: User name -> password.
        self.users = dict(users)
        #: Virtual host name -> `txpika.testing.VirtualHost`.
        self.vhosts = {name: VirtualHost(name, clock) for name in vhosts}
        #: The most channels offered in ``connection.tune``.
        self.channel_max = channel_max
        #: The largest frame offered in ``connection.tune``.
        self.frame_max = frame_max
        #: The heartbeat interval offered in ``connection.tune`` (0: none).
        self.heartbeat = heartbeat
        #: The connections open now.
        self.connections: list[ServerConnection] = []
        #: The reason while publishers are blocked (a resource alarm), else None.
        self.blocked: str | None = None
        #: The ``server-properties`` sent in ``connection.start`` (RabbitMQ's capabilities).
        self.server_properties: dict[str, Any] = {
            "product": "txpika MemoryBroker",
            "version": txpika.__version__,
            "platform": "Python",
            "information": "an in-memory AMQP 0-9-1 broker for tests (txpika.testing)",
            "capabilities": dict(CAPABILITIES),
            "cluster_name": "memory",
        }

    def block(self, reason: str) -> None:
        """Block publishers, as a resource alarm does: a connection that publishes stops
        being read (and gets ``connection.blocked``) until `unblock`."""
        self.blocked = reason

    def unblock(self) -> None:
        """End `block`: blocked connections get ``connection.unblocked`` and are read."""
        self.blocked = None
        for conn in list(self.connections):
            conn.unblock()

    def open_connection(self) -> ServerConnection:
        """A new connection's broker side (the driver feeds it bytes)."""
        conn = ServerConnection(self)
        self.connections.append(conn)
        return conn
