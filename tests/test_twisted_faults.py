"""The Twisted layer under faults: a dead or cut network (through `tcpproxy.Proxy` in front
of the shared broker), a broker that stops, and a broker that blocks publishers (on a
private node, `rabbitnode.PrivateNode`, so the shared broker is never hurt).

What is checked each time: the connection ends with the right reason, ``closed()`` fires,
and every Deferred the application holds fires (none is left pending): RPCs and consumer
``get()`` fail with the connection's error, confirmed publishes with `OutcomeUnknownError`.
Every wait is bounded, and blocking calls (``rabbitmqctl``) run in a thread so the reactor
keeps going.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from rabbitnode import PrivateNode
from tcpproxy import Proxy
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ConnectionClosed as TransportClosed
from twisted.internet.threads import deferToThread
from twistedhelpers import Opener, failure_of, sleep, unique, within

import txpika
from txpika.errors import (
    ConnectionForced,
    ConnectionLost,
    FlowControlError,
    HeartbeatTimeout,
    OutcomeUnknownError,
)
from txpika.protocol import AMQPProtocol

pytestmark = pytest.mark.broker



class Tracked:
    """Records how a Deferred fired. With ``passthrough`` the result (or failure) goes on
    to later callbacks; without, it is consumed (for Deferreds nobody else awaits)."""

    def __init__(self, d: Deferred[Any], passthrough: bool = False) -> None:
        self.fired = 0
        self.result: Any = None
        self.error: BaseException | None = None
        self.passthrough = passthrough
        d.addCallbacks(self._ok, self._failed)

    def _ok(self, result: Any) -> Any:
        self.fired += 1
        self.result = result
        return result if self.passthrough else None

    def _failed(self, failure: Any) -> Any:
        self.fired += 1
        self.error = failure.value
        return failure if self.passthrough else None


@pytest.fixture
def proxy(broker_address: tuple[str, int]) -> Iterator[Proxy]:
    with Proxy(*broker_address) as p:
        yield p


@pytest_twisted.async_yield_fixture
async def open_conn() -> AsyncIterator[Opener]:
    """``await open_conn(url, **overrides)``: a connection closed (or aborted) at teardown."""
    opened: list[AMQPProtocol] = []

    async def open_(url: str, **overrides: Any) -> AMQPProtocol:
        conn = await within(txpika.connect(reactor, url, **overrides), 15)
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        if conn.transport is not None and not conn._transport_gone:
            # A connection to a dead peer: close would wait for a close-ok that never comes.
            conn.transport.abortConnection()  # type: ignore[attr-defined]
    await within(DeferredList([c.when_closed() for c in opened], consumeErrors=True), 10)


def proxied_url(proxy: Proxy, query: str = "") -> str:
    return f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F{query}"


class PendingWork:
    """An RPC, confirmed publishes, a consumer's get and a channel opening, all pending."""

    async def start(self, conn: AMQPProtocol) -> PendingWork:
        self.ch = await within(conn.channel(), 10)
        self.queue = unique()
        await within(self.ch.queue_declare(self.queue, exclusive=True), 10)
        self.pub = await within(conn.channel(), 10)
        await within(self.pub.confirm_select(), 10)
        self.consumer = await within(self.ch.basic_consume(self.queue), 10)
        # Proof that the pipe worked before the fault.
        await within(self.pub.basic_publish("", self.queue, b"before"), 10)
        before = await within(self.consumer.get(), 10)
        await within(before.ack(), 10)
        return self

    def issue(self, conn: AMQPProtocol) -> None:
        """Start the work; the broker's answers cannot come (the network is dead)."""
        self.rpc = self.ch.queue_declare(self.queue, passive=True)
        self.publishes = [self.pub.basic_publish("", self.queue, b"%d" % i) for i in range(20)]
        self.get = self.consumer.get()
        self.opening = conn.channel()
        self.tracked = [Tracked(d, passthrough=True) for d in
                        [self.rpc, *self.publishes, self.get, self.opening]]

    async def check_failed_with(self, reason: BaseException) -> None:
        """Every pending Deferred failed once: with ``reason``, publishes with
        `OutcomeUnknownError` carrying ``reason``."""
        for d in (self.rpc, self.get, self.opening):
            assert (await failure_of(d, 1)) is reason
        for d in self.publishes:
            exc = await failure_of(d, 1)
            assert isinstance(exc, OutcomeUnknownError), exc
            assert exc.reason is reason
        assert [t.fired for t in self.tracked] == [1] * len(self.tracked)
        assert not self.ch.is_open and not self.pub.is_open
        assert not self.consumer.active and self.consumer.end_reason is reason
        # Work asked for after the end fails at once with the same reason.
        assert (await failure_of(self.ch.basic_qos(1), 1)) is reason
        assert (await failure_of(self.pub.basic_publish("", "", b"late"), 1)) is reason


# -- through the proxy -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_blackholed_network_ends_with_heartbeat_timeout(
        proxy: Proxy, open_conn: Opener) -> None:
    conn = await open_conn(proxied_url(proxy, "?heartbeat=1"))
    assert conn._core.heartbeat == 1
    work = await PendingWork().start(conn)
    closed = conn.when_closed()
    proxy.blackhole()
    start = time.monotonic()
    work.issue(conn)
    reason = await within(closed, 5)
    elapsed = time.monotonic() - start
    assert isinstance(reason, HeartbeatTimeout), repr(reason)
    # Two intervals of silence, detected on a half-interval tick.
    assert 0.9 <= elapsed <= 3.0, elapsed
    assert not conn.is_open
    await work.check_failed_with(reason)
    assert (await failure_of(conn.channel(), 1)) is reason
    assert (await within(conn.when_closed(), 1)) is reason
    await within(conn.close(), 1)  # closing a dead connection is harmless


@pytest_twisted.ensureDeferred
async def test_cut_connection_fails_everything_pending(
        proxy: Proxy, open_conn: Opener) -> None:
    conn = await open_conn(proxied_url(proxy))
    work = await PendingWork().start(conn)
    closed = conn.when_closed()
    work.issue(conn)  # written to the transport, not yet sent: the reactor runs next
    proxy.cut()
    reason = await within(closed, 5)
    # A txpika error (every way a connection ends is a ConnectionClosed), with the
    # transport's as its reason and cause.
    assert isinstance(reason, ConnectionLost), repr(reason)
    assert isinstance(reason.reason, TransportClosed) and reason.__cause__ is reason.reason
    assert not conn.is_open
    await work.check_failed_with(reason)

    # The proxy still listens: a new connection works.
    again = await open_conn(proxied_url(proxy))
    ch = await within(again.channel(), 10)
    q = unique()
    await within(ch.queue_declare(q, exclusive=True), 10)
    await within(ch.confirm_select(), 10)
    await within(ch.basic_publish("", q, b"after the cut"), 10)
    msg = await within(ch.basic_get(q, auto_ack=True), 10)
    assert msg is not None and msg.body == b"after the cut"


@pytest_twisted.ensureDeferred
async def test_blackholed_handshake_times_out(proxy: Proxy) -> None:
    proxy.blackhole()
    start = time.monotonic()
    exc = await failure_of(txpika.connect(reactor, proxied_url(proxy), connection_timeout=1), 5)
    assert isinstance(exc, defer.TimeoutError), repr(exc)
    assert time.monotonic() - start < 2.0


# -- a private node that is stopped or blocked -----------------------------------------------


@pytest.mark.private_broker
@pytest_twisted.ensureDeferred
async def test_broker_stopped_mid_publish_every_confirm_fires(
        private_node: PrivateNode, open_conn: Opener) -> None:
    conn = await open_conn(private_node.url)
    ch = await within(conn.channel(), 10)
    q = unique()
    await within(ch.queue_declare(q, exclusive=True), 10)
    await within(ch.confirm_select(), 10)
    closed = conn.when_closed()
    tracked: list[Tracked] = []
    window = 300  # unconfirmed publishes in flight at most
    acked_enough: Deferred[None] = Deferred()

    async def publish_until_closed() -> None:
        while conn.is_open:
            outstanding = sum(1 for t in tracked if not t.fired)
            if outstanding < window:
                for _ in range(window - outstanding):
                    tracked.append(Tracked(ch.basic_publish("", q, b"x" * 100)))
            if not acked_enough.called and sum(1 for t in tracked if t.error is None
                                               and t.fired) >= 1000:
                acked_enough.callback(None)
            await sleep(0.005)

    publishing = defer.ensureDeferred(publish_until_closed())
    await within(acked_enough, 20)
    stopping = deferToThread(private_node.stop_app)
    reason = await within(closed, 45)
    await within(publishing, 5)
    await within(stopping, 60)

    assert isinstance(reason, (ConnectionForced, ConnectionLost)), repr(reason)
    await sleep(0.1)
    acked = [t for t in tracked if t.fired and t.error is None]
    unknown = [t for t in tracked if isinstance(t.error, OutcomeUnknownError)]
    assert [t.fired for t in tracked] == [1] * len(tracked), "a publish Deferred is pending"
    assert len(acked) + len(unknown) == len(tracked), {
        type(t.error).__name__ for t in tracked if t.error is not None}
    assert len(acked) >= 1000
    for t in unknown:
        assert t.error is not None and t.error.reason is reason  # type: ignore[attr-defined]

    # The broker comes back: a new connection works.
    await within(deferToThread(private_node.start_app), 90)
    again = await open_conn(private_node.url)
    ch2 = await within(again.channel(), 10)
    q2 = unique()
    await within(ch2.queue_declare(q2, exclusive=True), 10)
    await within(ch2.basic_publish("", q2, b"back"), 10)
    msg = await within(ch2.basic_get(q2, auto_ack=True), 10)
    assert msg is not None and msg.body == b"back"


@pytest.mark.private_broker
@pytest_twisted.ensureDeferred
async def test_broker_closes_the_connection_with_connection_forced(
        private_node: PrivateNode, open_conn: Opener) -> None:
    conn = await open_conn(private_node.url)
    ch = await within(conn.channel(), 10)
    q = unique()
    await within(ch.queue_declare(q, exclusive=True), 10)
    consumer = await within(ch.basic_consume(q), 10)
    getting = consumer.get()
    closed = conn.when_closed()
    await within(deferToThread(private_node.close_all_connections, "txpika test closing"), 30)
    reason = await within(closed, 10)
    assert isinstance(reason, ConnectionForced) and reason.reply_code == 320
    assert "txpika test closing" in reason.reply_text
    assert (await failure_of(getting, 1)) is reason
    assert not conn.is_open and not ch.is_open and consumer.end_reason is reason


@pytest.mark.private_broker
@pytest_twisted.ensureDeferred
async def test_memory_alarm_blocks_and_unblocks_publishers(
        private_node: PrivateNode, open_conn: Opener) -> None:
    # heartbeat=1: a blocked connection must not be mistaken for a dead one.
    waiting_conn = await open_conn(private_node.url + "?heartbeat=1")
    raising_conn = await open_conn(private_node.url, flow_policy="raise")
    reader = await open_conn(private_node.url)
    flow_events: list[tuple[bool, str]] = []
    raise_events: list[tuple[bool, str]] = []
    waiting_conn.add_flow_listener(lambda active, reason: flow_events.append((active, reason)))
    raising_conn.add_flow_listener(lambda active, reason: raise_events.append((active, reason)))

    rch = await within(reader.channel(), 10)
    q = unique()
    await within(rch.queue_declare(q, exclusive=True), 10)
    wch = await within(waiting_conn.channel(), 10)
    await within(wch.confirm_select(), 10)
    xch = await within(raising_conn.channel(), 10)
    channel_flow: list[bool] = []
    wch.add_flow_listener(channel_flow.append)

    await within(deferToThread(private_node.set_memory_watermark, 0), 30)

    async def until(condition: Callable[[], bool], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not happen within {seconds} s")
            await sleep(0.05)

    # RabbitMQ blocks a connection (and says connection.blocked) once it publishes; if
    # it was told at once, the probe simply waits with the rest.
    probe = Tracked(wch.basic_publish("", q, b"probe"))
    await until(lambda: bool(flow_events), 10, "connection.blocked on the waiting connection")
    assert flow_events[0][0] is False and flow_events[0][1]  # (False, reason)
    assert waiting_conn.is_blocked and waiting_conn.blocked_reason == flow_events[0][1]
    assert not wch.flow_active and channel_flow == [False]

    held = Tracked(wch.basic_publish("", q, b"held while blocked"))
    await sleep(2.5)  # over two heartbeat intervals
    assert held.fired == 0  # the "wait" policy keeps it pending
    assert waiting_conn.is_open and waiting_conn.is_blocked

    expected = [b"probe", b"held while blocked", b"after"]
    if not raise_events:
        await within(xch.basic_publish("", q, b"raise probe"), 10)
        expected.append(b"raise probe")
    await until(lambda: bool(raise_events), 10, "connection.blocked on the raising connection")
    assert raise_events[0][0] is False and not xch.flow_active and raising_conn.is_blocked
    exc = await failure_of(xch.basic_publish("", q, b"refused"), 1)
    assert isinstance(exc, FlowControlError)

    await within(deferToThread(private_node.set_memory_watermark, 0.4), 30)
    await until(lambda: len(flow_events) >= 2, 10, "connection.unblocked")
    assert flow_events[1:] == [(True, "")]
    assert not waiting_conn.is_blocked and wch.flow_active and channel_flow == [False, True]
    await until(lambda: held.fired == 1, 10, "the held publish")
    assert held.error is None  # acked by the broker
    await until(lambda: probe.fired == 1, 10, "the probe publish")
    assert probe.error is None
    await until(lambda: len(raise_events) >= 2, 10, "connection.unblocked (raise)")
    assert raise_events[1:] == [(True, "")] and xch.flow_active
    await within(xch.basic_publish("", q, b"after"), 10)

    # Everything published arrives; the refused publish was never sent.
    bodies: list[bytes] = []

    async def fetch() -> bool:
        msg = await within(rch.basic_get(q, auto_ack=True), 10)
        if msg is not None:
            bodies.append(msg.body)
        return len(bodies) >= len(expected)

    deadline = time.monotonic() + 10
    while not await fetch() and time.monotonic() < deadline:
        await sleep(0.05)
    assert sorted(bodies) == sorted(expected)
    assert await within(rch.basic_get(q), 10) is None
