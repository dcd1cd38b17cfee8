"""The recovery layer and the consumer service against MemoryBroker.listen().

Where tests/test_recovery_broker.py hurts real nodes, these make the same faults on the
memory broker, where they are exact and instant: ``close_connections()`` is a broker
shutting down (connection.close 320), ``drop_connections()`` a cut network. Then the
broker's state says what recovery did: the topology is back (a server-named queue under a
new name, its binding with it), consumers consume again, nothing is lost.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from txpika import AMQPService, BasicProperties, ConsumerService
from txpika.testing import MemoryBroker


def within(d: Deferred[Any], seconds: float = 10) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)  # type: ignore[arg-type]


async def until(condition: Any, what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {seconds} s")
        await deferLater(reactor, 0.02, lambda: None)  # type: ignore[arg-type]


@pytest.fixture
def broker() -> Any:
    broker = MemoryBroker(reactor)  # type: ignore[arg-type]
    yield broker
    pytest_twisted.blockon(broker.stop_listening())


async def started(broker: MemoryBroker) -> AMQPService:
    url = await within(broker.listen(reactor))  # type: ignore[arg-type]
    service = AMQPService(reactor, url, retry_policy=lambda attempt: 0.05)
    service.startService()
    await within(service.connection(timeout=10))
    return service


@pytest_twisted.ensureDeferred
async def test_topology_is_replayed_after_a_broker_shutdown(broker: MemoryBroker) -> None:
    service = await started(broker)
    states: list[str] = []
    service.add_state_listener(states.append)
    renames: list[tuple[str, str]] = []
    service.add_queue_rename_listener(lambda old, new: renames.append((old, new)))
    try:
        ch = await within(service.channel())
        await within(ch.exchange_declare("events", "topic"))
        old = (await within(ch.queue_declare("", exclusive=True))).queue
        await within(ch.queue_bind(old, "events", "user.*"))
        await within(ch.basic_qos(prefetch_count=5))
        consumer = await within(ch.basic_consume(old))
        waiting = consumer.get()

        broker.close_connections()
        await until(lambda: service.state == "open" and renames, "recovery")
        assert states[:2] == ["recovering", "open"]
        [(was, new)] = renames
        assert was == old and new != old and new.startswith("amq.gen-")
        assert old not in broker.queues()  # exclusive: gone with its connection
        [binding] = [b for b in broker.bindings() if b.source == "events"]
        assert (binding.destination, binding.routing_key) == (new, "user.*")
        assert len(broker.queue(new).consumers) == 1

        assert broker.publish("events", "user.created", b"after")
        message = await within(waiting)
        assert (message.body, message.routing_key) == (b"after", "user.created")
        await within(message.ack())
        await until(lambda: not broker.queue(new).unacked, "the ack")
    finally:
        await within(service.stopService())
    assert broker.connections == []


@pytest_twisted.ensureDeferred
async def test_consumer_service_loses_nothing_when_the_network_drops(
        broker: MemoryBroker) -> None:
    service = await started(broker)
    handled: list[str] = []
    hold = Deferred[None]()

    async def handler(message: Any) -> None:
        if message.properties.message_id == "slow":
            await hold  # in flight when the connection drops
        handled.append(message.properties.message_id)

    consumer = ConsumerService(service, "jobs", handler, prefetch=10, concurrency=4,
                               declare=True, bindings=[("amq.direct", "jobs")])
    consumer.startService()
    try:
        await until(lambda: "jobs" in broker.queues() and broker.queue("jobs").consumers,
                    "consuming")
        for i in range(5):
            broker.publish("amq.direct", "jobs", b"", BasicProperties(message_id=f"m{i}"))
        broker.publish("", "jobs", b"", BasicProperties(message_id="slow"))
        # (the five acks are written before the broker has read them: wait for them too)
        await until(lambda: len(handled) == 5 and [
            m.properties.message_id for m in broker.queue("jobs").unacked] == ["slow"],
                    "five handled and acked, one in flight")
        assert [m.properties.message_id for m in broker.queue("jobs").unacked] == ["slow"]

        broker.drop_connections()  # the slow one's ack can never arrive: it is requeued
        await until(lambda: service.state == "open" and broker.queue("jobs").consumers,
                    "consuming again")
        hold.callback(None)
        await until(lambda: handled.count("slow") == 2 and not broker.queue("jobs").unacked,
                    "the redelivery handled")
        assert sorted(handled) == ["m0", "m1", "m2", "m3", "m4", "slow", "slow"]
        assert broker.queue("jobs").messages == ()
        assert broker.queue("jobs").durable
    finally:
        await within(consumer.stopService(), 20)
        await within(service.stopService())
