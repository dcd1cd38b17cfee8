"""``txpika.aio`` when things go wrong, on the default loop and on uvloop.

A module-scoped private node with a TLS listener (`tlsnode.TLSNode`, never the shared
node on 5672) serves the memory-alarm (``flow_policy``), broker-close and TLS tests; the
dead network is a `tcpproxy.Proxy` in front of the shared broker: ``cut()`` for
`ConnectionLost` and `OutcomeUnknownError`, ``blackhole()`` for `HeartbeatTimeout` and
the connection timeout.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_aio_support
from rabbitnode import PrivateNodeError
from tcpproxy import Proxy
from test_aio_support import T, declare_temp, eventually, via
from tlsnode import CertSet, TLSNode, make_certs

from txpika import aio
from txpika.errors import (
    ConnectionClosed,
    ConnectionForced,
    ConnectionLost,
    FlowControlError,
    HeartbeatTimeout,
    OutcomeUnknownError,
)

run = test_aio_support.run  # the fixture: each test on the default loop and on uvloop


@pytest.fixture(scope="module")
def certs() -> Iterator[CertSet]:
    # Not tmp_path: pytest's base temp dir is 0700, the rabbitmq user could not read it.
    directory = Path(tempfile.mkdtemp(prefix="txpika-aio-tls-"))
    try:
        yield make_certs(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def _node(certs: CertSet) -> Iterator[TLSNode]:
    node = TLSNode(certs, startup_timeout=30.0, ctl_timeout=20.0)
    try:
        node.start()
    except PrivateNodeError as e:
        pytest.fail(f"could not start a private RabbitMQ node with TLS: {e}", pytrace=False)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def node(_node: TLSNode) -> TLSNode:
    """The private node, back to normal (running, no memory alarm)."""
    try:
        _node.reset()
    except PrivateNodeError as e:
        pytest.fail(f"could not bring the private node back: {e}", pytrace=False)
    return _node


@pytest.fixture
def proxy(broker_address: tuple[str, int]) -> Iterator[Proxy]:
    with Proxy(*broker_address) as p:
        yield p


# -- flow control: a memory alarm on the private node -------------------------------------------


async def _block(node: TLSNode, *conns: aio.Connection) -> None:
    """Raise the memory alarm; one publish makes the broker send connection.blocked."""
    await asyncio.to_thread(node.set_memory_watermark, 0)
    for conn in conns:
        trigger = await conn.channel()
        await trigger.basic_publish("", "txpika-aio-nowhere", b"trigger")
        await eventually(lambda: conn.is_blocked)  # noqa: B023 - awaited at once


def test_flow_policies_raise_and_wait(run: Any, node: TLSNode) -> None:
    """While the broker blocks publishers: with ``"raise"`` a publish raises
    FlowControlError at once; with ``"wait"`` it waits (a timeout or a cancel drops it
    unsent), heartbeats keep the blocked connection open, and the waiting publish goes on
    at the unblock. Flow listeners hear both changes."""
    async def main() -> None:
        raising = await aio.connect(node.url, flow_policy="raise")
        waiting_conn = await aio.connect(node.url, heartbeat=1)
        flow: list[tuple[bool, str]] = []
        raising.add_flow_listener(lambda active, reason: flow.append((active, reason)))
        ch = await raising.channel()
        wch = await waiting_conn.channel()
        queue = await declare_temp(ch)
        await ch.confirm_select()
        await wch.confirm_select()
        await ch.basic_publish("", queue, b"before")
        await _block(node, raising, waiting_conn)
        assert not ch.flow_active and flow[0][0] is False and flow[0][1]
        with pytest.raises(FlowControlError):
            ch.basic_publish("", queue, b"refused")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await wch.basic_publish("", queue, b"times out", timeout=0.5)
        assert 0.4 <= loop.time() - started < 2
        cancelled = wch.basic_publish("", queue, b"cancelled")
        await asyncio.sleep(0)
        cancelled.cancel()
        waiting = wch.basic_publish("", queue, b"completes")
        await asyncio.sleep(2.2)  # over two heartbeat intervals while blocked
        assert waiting_conn.is_open and waiting_conn.is_blocked and not waiting.done()
        await asyncio.to_thread(node.set_memory_watermark, 0.4)
        await asyncio.wait_for(waiting, T)
        await eventually(lambda: not raising.is_blocked and ch.flow_active)
        await ch.basic_publish("", queue, b"after", timeout=T)
        ok = await ch.queue_declare(queue, passive=True)
        assert ok.message_count == 3  # before, completes, after
        assert flow[-1][0] is True
        await raising.close()
        await waiting_conn.close()

    run(main(), timeout=40)


def test_broker_closing_the_connection_ends_everything(run: Any, node: TLSNode) -> None:
    async def main() -> None:
        conn = await aio.connect(node.url)
        ch = await conn.channel()
        consumer = await ch.basic_consume(await declare_temp(ch))
        await asyncio.to_thread(node.close_all_connections)
        with pytest.raises(ConnectionForced):
            await consumer.get(timeout=T)
        assert isinstance(await conn.when_closed(), ConnectionForced)
        with pytest.raises(ConnectionForced):
            await ch.queue_declare("")
        await conn.close()

    run(main())


# -- a dead network: the proxy -------------------------------------------------------------------


def test_cut_network_is_connection_lost_and_outcome_unknown(run: Any, broker_url: str,
                                                           proxy: Proxy) -> None:
    async def main() -> None:
        conn = await aio.connect(via(broker_url, proxy.host, proxy.port))
        ch = await conn.channel()
        queue = await declare_temp(ch)
        await ch.confirm_select()
        proxy.blackhole()  # the publish goes out, its ack never comes back
        confirm = ch.basic_publish("", queue, b"in doubt")
        call = asyncio.ensure_future(ch.queue_declare(queue, passive=True))
        await asyncio.sleep(0.1)
        proxy.cut()
        with pytest.raises(OutcomeUnknownError):
            await confirm
        with pytest.raises(ConnectionLost) as lost:
            await call
        assert isinstance(lost.value.reason, OSError | type(None))
        with pytest.raises(ConnectionLost):
            await ch.queue_declare("")
        with pytest.raises(ConnectionLost):
            ch.basic_publish("", queue, b"after")
        assert not conn.is_open and not ch.is_open
        assert isinstance(await conn.when_closed(), ConnectionLost)
        await conn.close()  # harmless

    run(main())


def test_dead_peer_is_a_heartbeat_timeout(run: Any, broker_url: str, proxy: Proxy) -> None:
    async def main() -> None:
        conn = await aio.connect(via(broker_url, proxy.host, proxy.port), heartbeat=1)
        ch = await conn.channel()
        consumer = await ch.basic_consume(await declare_temp(ch))
        proxy.blackhole()
        started = time.monotonic()
        call = asyncio.ensure_future(ch.queue_declare(""))
        with pytest.raises(HeartbeatTimeout):
            await consumer.get(timeout=6)
        assert time.monotonic() - started < 3.5
        with pytest.raises(HeartbeatTimeout):
            await call
        assert isinstance(await conn.when_closed(), HeartbeatTimeout)

    run(main())


def test_connection_timeout(run: Any, broker_url: str, proxy: Proxy) -> None:
    async def main() -> None:
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await aio.connect(via(broker_url, proxy.host, proxy.port), connection_timeout=0.5)
        assert time.monotonic() - started < 2

    run(main())


def test_every_ending_is_connection_closed(run: Any, broker_url: str, proxy: Proxy) -> None:
    """Not an OSError: the abort of the transport under pending work."""
    async def main() -> None:
        conn = await aio.connect(via(broker_url, proxy.host, proxy.port))
        ch = await conn.channel()
        pending = asyncio.ensure_future(ch.basic_get("nowhere-at-all"))
        conn.abort()
        outcome = await asyncio.gather(pending, return_exceptions=True)
        assert isinstance(outcome[0], ConnectionClosed), outcome
        assert isinstance(await conn.when_closed(), ConnectionLost)

    run(main())


# -- TLS -----------------------------------------------------------------------------------------


def test_tls_verified_round_trip(run: Any, node: TLSNode, certs: CertSet) -> None:
    async def main() -> None:
        async with await aio.connect(node.tls_url(), cafile=certs.ca_pem) as conn:
            ch = await conn.channel()
            queue = await declare_temp(ch)
            await ch.confirm_select()
            await ch.basic_publish("", queue, b"over tls")
            consumer = await ch.basic_consume(queue, auto_ack=True)
            assert (await consumer.get(timeout=T)).body == b"over tls"
        context = ssl.create_default_context(cafile=certs.ca_pem)
        async with await aio.connect(node.tls_url("127.0.0.1"), ssl_context=context) as conn:
            assert conn.is_open  # the certificate names 127.0.0.1 too
        async with await aio.connect(node.tls_url(query="verify=false")) as conn:
            assert conn.is_open

    run(main())


def test_tls_verification_failures(run: Any, node: TLSNode, certs: CertSet) -> None:
    async def main() -> None:
        with pytest.raises(ssl.SSLCertVerificationError):  # the system's roots
            await aio.connect(node.tls_url(), connection_timeout=5)
        with pytest.raises(ssl.SSLCertVerificationError):  # an unrelated CA
            await aio.connect(node.tls_url(), cafile=certs.other_ca_pem, connection_timeout=5)
        with pytest.raises(ssl.SSLCertVerificationError):  # another name
            await aio.connect(node.tls_url(), cafile=certs.ca_pem,
                              server_hostname="wrong.example", connection_timeout=5)

    run(main())
