"""A blocking adapter for scripts: plain sockets, no reactor, no Twisted on its import path.

::

    from txpika import blocking

    with blocking.connect("amqp://guest:guest@localhost/%2F") as conn:
        ch = conn.channel()
        ch.queue_declare("jobs", durable=True)            # returns Queue.DeclareOk
        ch.confirm_select()
        ch.basic_publish("", "jobs", b"hello")            # returns on the broker's ack
        for message in ch.consume("jobs", prefetch=10, inactivity_timeout=1.0):
            if message is None:                           # idle for inactivity_timeout
                break
            message.ack()

It drives the same sans-IO core and channel layer as the Twisted protocol, with the
same URLs and `txpika.parameters.ConnectionParameters`, the same ``-Ok`` results and the
same exceptions from `txpika.errors`. Every call takes ``timeout`` (seconds; the builtin
``TimeoutError`` when it passes). Heartbeats are sent and checked whenever a call is
inside the connection; `BlockingConnection.process_data_events` services them (and
consumer callbacks) while a script is otherwise idle.

Threads: a `BlockingConnection`, its channels and their messages are thread-safe. Every
operation holds the connection's lock while it touches the core or writes to the socket,
so frames of two threads never interleave; a thread waiting for a reply lets the others
work meanwhile, and whichever thread is waiting reads the socket for all of them. One
connection per thread works too, with nothing shared. Consumer callbacks run in the
thread that happens to be reading, outside the lock.
"""

from __future__ import annotations

from typing import Any

from txpika.blocking._api import BlockingChannel, BlockingConnection, BlockingConsumer, Message
from txpika.parameters import ConnectionParameters, parameters_for

__all__ = ["BlockingChannel", "BlockingConnection", "BlockingConsumer", "Message", "connect"]


def connect(target: str | ConnectionParameters = "amqp://localhost/",
            **overrides: Any) -> BlockingConnection:
    """Open a connection; returns it once ``connection.open-ok`` arrived.

    Takes the same URLs and `ConnectionParameters` as `txpika.connect` (endpoint
    descriptions need Twisted and are refused). Raises `txpika.InvalidParameter`,
    ``OSError`` (refused, unreachable, TLS verification), `txpika.errors.AuthenticationError`,
    `txpika.errors.AccessRefused`, or ``TimeoutError`` after ``connection_timeout``.
    """
    return BlockingConnection(parameters_for(target, overrides, endpoints=False))
