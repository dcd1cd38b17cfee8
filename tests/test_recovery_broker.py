"""The recovery layer against real RabbitMQ nodes: `AMQPService`, `RobustChannel`, the
at-least-once `Publisher` and `ConsumerService`.

- A private node restarted ten times under an at-least-once publisher and a consumer
  service: nothing published is lost (duplicates are allowed, and reported).
- Through `tcpproxy.Proxy` in front of the shared broker (which is never hurt): a cut
  connection and a black-holed one (heartbeat timeout) are recovered, the topology is
  replayed (a server-named queue gets a new name and its binding follows), and work asked
  for while recovering fails at once with `ConnectionRecovering`.
- Failover between two private nodes: stopping the first moves the service to the second,
  where the topology (or the ``setup`` function) is replayed.

Every wait is bounded; blocking calls (``rabbitmqctl``, starting a node) run in a thread so
the reactor keeps going.
"""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from rabbitnode import PrivateNode
from tcpproxy import Proxy
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

import txpika
from txpika import AMQPService, BasicProperties, ConsumerService
from txpika.errors import ConnectionRecovering, HeartbeatTimeout, ServiceStopped
from txpika.protocol import AMQPProtocol

pytestmark = pytest.mark.broker



def fast_retry(attempt: int) -> float:
    return 0.2


def unique(prefix: str = "q") -> str:
    return f"txpika-test-{prefix}-{uuid.uuid4().hex[:12]}"


def within(d: Deferred[Any], seconds: float) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def until(condition: Callable[[], bool], seconds: float, what: str,
                poll: float = 0.02) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {seconds} s")
        await sleep(poll)


async def failure_of(d: Deferred[Any], seconds: float = 10.0) -> BaseException:
    """The exception ``d`` fails with; the test fails if it succeeds or takes too long."""
    timed_out: list[bool] = []

    def expire() -> None:
        timed_out.append(True)
        d.cancel()

    call = reactor.callLater(seconds, expire)
    try:
        result = await d
    except Exception as exc:
        if timed_out:
            pytest.fail(f"no result within {seconds} s")
        return exc
    finally:
        if call.active():
            call.cancel()
    pytest.fail(f"expected a failure, got {result!r}")


async def fails_fast(d: Deferred[Any]) -> BaseException:
    """``d`` has failed already, when the call returned (no waiting for the network), with
    `ConnectionRecovering`."""
    assert d.called, "the call waits instead of failing at once"
    exc = await failure_of(d, 1)
    assert isinstance(exc, ConnectionRecovering), repr(exc)
    return exc


class States:
    """Every state an `AMQPService` goes through."""

    def __init__(self, service: AMQPService) -> None:
        self.seen: list[str] = [service.state]
        service.add_state_listener(self.seen.append)

    def count(self, state: str) -> int:
        return self.seen.count(state)


ServiceMaker = Callable[..., Awaitable[AMQPService]]


@pytest_twisted.async_yield_fixture
async def make_service() -> AsyncIterator[ServiceMaker]:
    """``await make_service(brokers, **kwargs)``: a started `AMQPService` (fast retries),
    open; stopped at teardown (bounded)."""
    services: list[AMQPService] = []

    async def make(brokers: Any, *, wait_open: bool = True, **kwargs: Any) -> AMQPService:
        kwargs.setdefault("retry_policy", fast_retry)
        service = AMQPService(reactor, brokers, **kwargs)
        services.append(service)
        service.startService()
        if wait_open:
            await within(service.connection(timeout=20), 25)
        return service

    yield make
    for service in services:
        if service.running:
            await within(service.stopService(), 20)
        assert service.state == "closed"


@pytest_twisted.async_yield_fixture
async def open_conn() -> AsyncIterator[Callable[..., Awaitable[AMQPProtocol]]]:
    """``await open_conn(url)``: a plain connection, closed at teardown."""
    opened: list[AMQPProtocol] = []

    async def open_(url: str, **overrides: Any) -> AMQPProtocol:
        conn = await within(txpika.connect(reactor, url, **overrides), 15)
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        if conn.is_open:
            await within(conn.close(), 10)


@pytest.fixture
def proxy(broker_address: tuple[str, int]) -> Iterator[Proxy]:
    with Proxy(*broker_address) as p:
        yield p


def proxied_url(proxy: Proxy, query: str = "") -> str:
    return f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F{query}"


# -- a private node restarted under load -------------------------------------------------


@pytest.mark.private_broker
@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_ten_restarts_lose_no_confirmed_message(
        private_node: PrivateNode, make_service: ServiceMaker,
        open_conn: Callable[..., Awaitable[AMQPProtocol]],
        record_property: Callable[[str, object], None]) -> None:
    cycles, per_cycle = 10, 200  # ~200 messages a cycle (the trickle varies)
    queue = unique("restarts")
    service = await make_service(private_node.url + "?heartbeat=5")
    states = States(service)

    handled: collections.Counter[str] = collections.Counter()
    redelivered = 0

    def handle(message: txpika.Message) -> None:
        nonlocal redelivered
        handled[message.properties.message_id] += 1
        redelivered += message.redelivered

    consumer = ConsumerService(service, queue, handle, declare=True, prefetch=50,
                               concurrency=10, drain_timeout=5)
    consumer.startService()
    publisher = await within(service.publisher(at_least_once=True), 20)
    # The consumer declares the queue: publish only once it exists.
    await until(lambda: consumer._consumer is not None, 20, "the consumer service started")

    published: list[str] = []
    confirms: list[Deferred[None]] = []

    def publish_batch(count: int) -> None:
        for _ in range(count):
            message_id = uuid.uuid4().hex
            published.append(message_id)
            confirms.append(publisher.publish(
                "", queue, message_id.encode(),
                properties=BasicProperties(message_id=message_id, delivery_mode=2)))

    started = time.monotonic()
    for cycle in range(cycles):
        publish_batch(per_cycle // 4)
        stopping = deferToThread(private_node.stop_app)
        # A trickle while the broker goes down: some are confirmed, some are in flight when
        # the connection drops (outcome unknown), some are published while recovering.
        # The publisher holds each until it is confirmed, publishing it again if needed.
        trickled = 0
        while not stopping.called and trickled < per_cycle:
            publish_batch(2)
            trickled += 2
            await sleep(0.01)
        await within(stopping, 60)
        publish_batch(per_cycle // 4)  # while the broker is down
        await within(deferToThread(private_node.start_app), 90)
        await until(lambda: service.state == "open", 30, f"reopening after restart {cycle + 1}")

    results = await within(DeferredList(confirms, consumeErrors=True), 60)
    failed = [f.value for ok, f in results if not ok]
    assert not failed, f"{len(failed)} publishes failed: {failed[:3]!r}"
    assert publisher.pending == 0
    await until(lambda: set(handled) >= set(published), 60,
                "every published message consumed")
    elapsed = time.monotonic() - started

    assert len(published) == len(set(published)) >= cycles * per_cycle // 2
    assert set(handled) == set(published)  # nothing lost, nothing foreign
    duplicates = sum(handled.values()) - len(handled)
    record_property("duplicates", duplicates)
    record_property("republished", publisher.republished)
    print(f"\n{cycles} restarts in {elapsed:.1f} s: {len(published)} messages, "
          f"{duplicates} delivered more than once ({redelivered} flagged redelivered), "
          f"{publisher.republished} republished, {consumer.stats}")

    # Open, then one recovering/open cycle per restart.
    assert states.seen == ["open"] + ["recovering", "open"] * cycles, states.seen
    assert publisher.republished > 0  # the restarts did catch messages in flight

    # The broker agrees: the queue is empty, nothing unacked.
    conn = await open_conn(private_node.url)
    ch = await within(conn.channel(), 10)
    await until(lambda: consumer.in_flight == 0, 10, "handlers finished")
    ok = await within(ch.queue_declare(queue, passive=True), 10)
    assert ok.message_count == 0
    await within(service.stopService(), 20)
    await within(ch.queue_delete(queue), 10)


# -- through a proxy in front of the shared broker ---------------------------------------


async def _topology(service: AMQPService) -> tuple[Any, str, str, Any, Any]:
    """An exchange, a server-named queue bound to it, a pull consumer on the queue and a
    confirm-mode publishing channel, all on robust channels."""
    exchange = unique("x")
    ch = await within(service.channel(), 10)
    await within(ch.exchange_declare(exchange, exchange_type="direct", auto_delete=True), 10)
    ok = await within(ch.queue_declare(""), 10)
    assert ok.queue.startswith("amq.gen-")
    await within(ch.queue_bind(ok.queue, exchange, routing_key="rk"), 10)
    consumer = await within(ch.basic_consume(ok.queue), 10)
    pub = await within(service.channel(), 10)
    await within(pub.confirm_select(), 10)
    await within(pub.basic_publish(exchange, "rk", b"before", mandatory=True), 10)
    message = await within(consumer.get(), 10)
    assert message.body == b"before"
    await within(message.ack(), 10)
    return ch, exchange, ok.queue, consumer, pub


@pytest_twisted.ensureDeferred
async def test_cut_connection_recovers_and_replays_topology(
        proxy: Proxy, make_service: ServiceMaker) -> None:
    # A generous retry delay: time to try work while the service is recovering.
    service = await make_service(proxied_url(proxy), retry_policy=lambda attempt: 0.5)
    states = States(service)
    renames: list[tuple[str, str]] = []
    service.add_queue_rename_listener(lambda old, new: renames.append((old, new)))
    ch, exchange, old_queue, consumer, pub = await _topology(service)
    publisher = await within(service.publisher(), 10)
    first_broker = service.current_broker
    assert first_broker is not None and str(proxy.port) in first_broker
    assert "guest@" in first_broker and ":guest@" not in first_broker  # no password
    waiting = consumer.get()  # served by the consumer on the new connection
    old_conn = await within(service.connection(), 1)

    proxy.cut()
    await until(lambda: service.state == "recovering", 5, "recovering after the cut")
    assert not ch.is_open and ch.channel is None
    await fails_fast(pub.basic_publish(exchange, "rk", b"while recovering"))
    await fails_fast(ch.queue_declare(unique()))
    await fails_fast(publisher.publish(exchange, "rk", b"not held"))
    assert service.current_broker is None
    # connection() waits through recovering instead of failing.
    reconnected = service.connection(timeout=20)
    assert not reconnected.called

    conn = await within(reconnected, 25)
    assert conn is not old_conn and service.state == "open"
    assert states.seen[-2:] == ["recovering", "open"]
    assert service.current_broker == first_broker

    # The server-named queue was declared again under a new name; the listener heard.
    assert len(renames) == 1 and renames[0][0] == old_queue, renames
    new_queue = renames[0][1]
    assert new_queue != old_queue and new_queue.startswith("amq.gen-")
    assert consumer.queue == new_queue
    keys = [key for key, _ in service.topology.entries()]
    assert ("queue", new_queue) in keys and ("queue", old_queue) not in keys
    assert any(key[0] == "qbind" and key[1] == new_queue for key in keys)

    # Its binding follows: a publish to the exchange reaches the new queue's consumer.
    await within(pub.basic_publish(exchange, "rk", b"after", mandatory=True), 10)
    message = await within(waiting, 10)
    assert message.body == b"after" and message.routing_key == "rk"
    await within(message.ack(), 10)
    ok = await within(ch.queue_declare(new_queue, passive=True), 10)
    assert ok.message_count == 0 and ok.consumer_count == 1
    await within(publisher.publish(exchange, "rk", b"plain publisher"), 10)
    message = await within(consumer.get(), 10)
    assert message.body == b"plain publisher"
    await within(message.ack(), 10)
    # The old, exclusive queue went with the old connection.
    exc = await failure_of(ch.queue_declare(old_queue, passive=True), 10)
    assert isinstance(exc, txpika.NotFound), repr(exc)


@pytest_twisted.ensureDeferred
async def test_blackholed_network_heartbeat_timeout_then_recovery(
        proxy: Proxy, make_service: ServiceMaker) -> None:
    # connection_timeout bounds the handshakes attempted while the network is dead.
    service = await make_service(proxied_url(proxy, "?heartbeat=1&connection_timeout=2"))
    states = States(service)
    renames: list[tuple[str, str]] = []
    service.add_queue_rename_listener(lambda old, new: renames.append((old, new)))
    ch, exchange, old_queue, consumer, pub = await _topology(service)
    holding = await within(service.publisher(at_least_once=True), 10)
    conn = await within(service.connection(), 1)
    lost = conn.when_closed()

    proxy.blackhole()
    blackholed_at = time.monotonic()
    reason = await within(lost, 6)
    assert isinstance(reason, HeartbeatTimeout), repr(reason)
    assert time.monotonic() - blackholed_at < 4
    assert service.state == "recovering"
    await fails_fast(pub.basic_publish(exchange, "rk", b"x"))
    await fails_fast(ch.basic_qos(prefetch_count=5))
    # An at-least-once publish is held instead, and sent once the service is open again.
    held = holding.publish(exchange, "rk", b"held while recovering", mandatory=True)
    assert not held.called and holding.pending == 1
    # Retries fail while the network stays dead (handshakes time out); still recovering.
    exc = await failure_of(service.connection(timeout=3), 5)
    assert isinstance(exc, defer.TimeoutError), repr(exc)
    assert service.state == "recovering" and not held.called

    proxy.resume()
    await within(service.connection(timeout=20), 25)
    assert service.state == "open"
    assert states.seen[-2:] == ["recovering", "open"] and states.count("recovering") == 1
    await within(held, 10)
    assert holding.pending == 0
    assert len(renames) == 1 and renames[0][0] == old_queue
    message = await within(consumer.get(), 10)
    assert message.body == b"held while recovering"
    await within(message.ack(), 10)
    await within(pub.basic_publish(exchange, "rk", b"after", mandatory=True), 10)
    message = await within(consumer.get(), 10)
    assert message.body == b"after"
    await within(message.ack(), 10)


@pytest_twisted.ensureDeferred
async def test_stopped_service_fails_work_with_service_stopped(
        proxy: Proxy, make_service: ServiceMaker) -> None:
    service = await make_service(proxied_url(proxy))
    ch = await within(service.channel(), 10)
    await within(service.stopService(), 10)
    assert service.state == "closed"
    assert isinstance(await failure_of(service.connection(), 1), ServiceStopped)
    assert isinstance(await failure_of(service.channel(), 1), ServiceStopped)
    exc = await failure_of(ch.queue_declare(unique()), 1)
    assert isinstance(exc, (ServiceStopped, ConnectionRecovering)), repr(exc)


# -- failover between two private nodes ---------------------------------------------------


@pytest.mark.private_broker
@pytest_twisted.ensureDeferred
async def test_failover_to_the_second_node(
        private_node: PrivateNode, make_service: ServiceMaker,
        open_conn: Callable[..., Awaitable[AMQPProtocol]]) -> None:
    node1 = private_node
    node2 = PrivateNode()
    await within(deferToThread(node2.start), 90)
    try:
        await _failover(node1, node2, make_service, open_conn)
    finally:
        await within(deferToThread(node2.stop), 60)


async def _failover(node1: PrivateNode, node2: PrivateNode, make_service: ServiceMaker,
                    open_conn: Callable[..., Awaitable[AMQPProtocol]]) -> None:
    # Service A replays its recorded topology; service B runs a setup function instead.
    a = await make_service([node1.url, node2.url])
    b_queue = unique("setup")
    setups: list[int] = []  # the broker port each setup ran on

    async def setup(channel: Any) -> None:
        setups.append(channel._port._protocol.transport.getPeer().port)
        await channel.queue_declare(b_queue, durable=False, auto_delete=False)

    b = await make_service([node1.url, node2.url], setup=setup)
    states_a, states_b = States(a), States(b)
    assert a.current_broker is not None and f":{node1.port}/" in a.current_broker
    assert b.current_broker is not None and f":{node1.port}/" in b.current_broker
    assert setups == [node1.port]

    renames: list[tuple[str, str]] = []
    a.add_queue_rename_listener(lambda old, new: renames.append((old, new)))
    exchange, named = unique("x"), unique("named")
    ch = await within(a.channel(), 10)
    await within(ch.exchange_declare(exchange, exchange_type="topic"), 10)
    await within(ch.queue_declare(named, durable=True, auto_delete=False), 10)
    await within(ch.queue_bind(named, exchange, routing_key="order.*"), 10)
    ok = await within(ch.queue_declare(""), 10)
    await within(ch.queue_bind(ok.queue, exchange, routing_key="#"), 10)
    await within(ch.basic_qos(prefetch_count=7), 10)
    consumer = await within(ch.basic_consume(named), 10)
    pub = await within(a.channel(), 10)
    await within(pub.confirm_select(), 10)

    await within(deferToThread(node1.stop_app), 60)
    await until(lambda: a.state == "open" and b.state == "open", 30,
                "both services open on the second node")
    assert a.current_broker is not None and f":{node2.port}/" in a.current_broker
    assert b.current_broker is not None and f":{node2.port}/" in b.current_broker
    assert states_a.seen[-2:] == ["recovering", "open"]
    assert states_b.seen[-2:] == ["recovering", "open"]
    assert setups == [node1.port, node2.port]  # the setup function ran again, on node2

    # Topology replayed on node2, in order: exchange, queues, bindings, QoS, consumer.
    assert len(renames) == 1 and renames[0][0] == ok.queue
    await within(pub.basic_publish(exchange, "order.created", b"on node2", mandatory=True),
                 10)
    message = await within(consumer.get(), 10)
    assert message.body == b"on node2" and message.routing_key == "order.created"
    await within(message.ack(), 10)
    check = await open_conn(node2.url)
    cch = await within(check.channel(), 10)
    await within(cch.exchange_declare(exchange, exchange_type="topic", passive=True), 10)
    named_ok = await within(cch.queue_declare(named, passive=True), 10)
    assert named_ok.consumer_count == 1
    await within(cch.queue_declare(b_queue, passive=True), 10)  # from B's setup
    # The "#" binding followed the server-named queue's new name (exclusive to A).
    copy = await within(ch.basic_get(renames[0][1], auto_ack=True), 10)
    assert copy is not None and copy.body == b"on node2"

    # node1 back: the services stay where they are.
    await within(deferToThread(node1.start_app), 90)
    await sleep(0.5)
    assert a.current_broker is not None and f":{node2.port}/" in a.current_broker
    assert a.state == "open" and b.state == "open"
