"""An asyncio adapter: the same core and channel layer, on any asyncio event loop.

::

    import asyncio
    from txpika import aio

    async def main():
        async with await aio.connect("amqp://guest:guest@localhost/%2F") as conn:
            ch = await conn.channel()
            await ch.queue_declare("jobs", durable=True)     # Queue.DeclareOk
            await ch.confirm_select()
            await ch.basic_publish("", "jobs", b"hello")     # done on the broker's ack
            await ch.basic_qos(prefetch_count=10)
            async for message in await ch.basic_consume("jobs"):
                await message.ack()
                break

    asyncio.run(main())

The same URLs and `txpika.parameters.ConnectionParameters` as `txpika.connect`, the same
method and argument names, ``-Ok`` results and exceptions as the Twisted `txpika.Channel`.
``timeout=`` raises the builtin ``TimeoutError``; cancelling a task that awaits a call
raises ``CancelledError`` in it; the channel stays consistent either way. Every way the
connection ends is a `txpika.errors.ConnectionClosed` (`txpika.errors.ConnectionLost` for a
dropped transport). No Twisted on the import path; it runs on the default loop and uvloop.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from txpika.aio._channel import Channel, Consumer, Message
from txpika.aio._connection import Connection
from txpika.parameters import ConnectionParameters, parameters_for

__all__ = ["Channel", "Connection", "Consumer", "Message", "connect", "ssl_context_for"]


def ssl_context_for(parameters: ConnectionParameters) -> ssl.SSLContext:
    """The TLS context ``amqps://`` uses: the certificate verified against ``cafile`` (or
    the system's roots) and the host name, unless ``verify`` is False; ``certfile`` and
    ``keyfile`` for a client certificate."""
    context = ssl.create_default_context(cafile=parameters.cafile)
    if not parameters.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if parameters.certfile:
        context.load_cert_chain(parameters.certfile, parameters.keyfile)
    return context


async def connect(target: str | ConnectionParameters = "amqp://localhost/", *,
                  ssl_context: ssl.SSLContext | None = None, **overrides: Any) -> Connection:
    """Connect and complete the AMQP handshake; returns the open `Connection`.

    ``target`` is an ``amqp://``/``amqps://`` URL or a `ConnectionParameters`;
    ``overrides`` replace any of its fields. ``ssl_context`` replaces the one
    `ssl_context_for` makes for ``amqps://``. Raises `txpika.InvalidParameter`,
    ``OSError`` (refused, unreachable; ``ssl.SSLCertVerificationError``),
    `txpika.errors.AuthenticationError`, `txpika.errors.AccessRefused` (vhost),
    `txpika.errors.ConnectionLost`, or ``TimeoutError`` after ``connection_timeout``.
    """
    parameters = parameters_for(target, overrides, endpoints=False)
    loop = asyncio.get_running_loop()
    context = ssl_context
    if context is None and parameters.tls:
        context = ssl_context_for(parameters)
    connection = Connection(parameters, loop)
    try:
        async with asyncio.timeout(parameters.connection_timeout):
            await loop.create_connection(
                lambda: connection, parameters.host, parameters.effective_port, ssl=context,
                server_hostname=(parameters.server_hostname or parameters.host)
                if context else None)
            await connection._ready
    except TimeoutError:
        connection.abort()
        raise TimeoutError(f"could not connect to {parameters.describe()} within "
                           f"{parameters.connection_timeout:g} s") from None
    except BaseException:
        connection.abort()
        raise
    return connection
