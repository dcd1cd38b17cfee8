"""MemoryBroker.reactor: code that connects by itself, tested in memory and synchronously.

``txpika.connect(broker.reactor, url)``, the reconnecting ``AMQPService`` and the
``ConsumerService`` run against the memory broker with no socket and no real reactor: the
test moves frames with ``flush()`` and time with ``advance()``, so a retry after a lost
connection is exact, not a sleep.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.error import ConnectionRefusedError

import txpika
from txpika import AMQPService, BasicProperties, ConsumerService
from txpika.testing import MemoryBroker

URL = "amqp://guest:guest@rabbit.example:5672/%2F"  # any host: it is never resolved


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


def test_connect_by_url(broker: MemoryBroker) -> None:
    connection = broker.result(txpika.connect(broker.reactor, URL))
    assert connection.is_open
    assert broker.reactor.tcpClients[0][1] == 5672  # resolved by the MemoryReactor
    ch = broker.result(connection.channel())
    broker.result(ch.queue_declare("jobs"))
    broker.result(ch.basic_publish("", "jobs", b"hi"))
    assert [m.body for m in broker.queue("jobs").messages] == [b"hi"]
    broker.result(connection.close())
    assert broker.connections == []


def test_refused_while_not_accepting(broker: MemoryBroker) -> None:
    broker.accepting = False
    d = txpika.connect(broker.reactor, URL)
    broker.advance(1)  # HostnameEndpoint reports the failure of its attempt after a delay
    with pytest.raises(ConnectionRefusedError):
        broker.result(d)


def test_service_recovers_on_the_broker_clock(broker: MemoryBroker) -> None:
    service = AMQPService(broker.reactor, URL, retry_policy=lambda attempt: 2.0)
    states: list[str] = []
    service.add_state_listener(states.append)
    service.startService()
    broker.flush()
    assert service.state == "open"
    ch = broker.result(service.channel())
    broker.result(ch.exchange_declare("events", "fanout"))
    broker.result(ch.queue_declare("audit", durable=True))
    broker.result(ch.queue_bind("audit", "events"))
    got: list[bytes] = []
    broker.result(ch.basic_consume("audit", lambda m: (got.append(m.body), m.ack())[1]))

    broker.accepting = False
    broker.close_connections()
    broker.flush()
    assert service.state == "recovering"
    attempts = len(broker.reactor.tcpClients)
    broker.advance(10)  # retries every 2 s, each refused
    assert service.state == "recovering"
    assert len(broker.reactor.tcpClients) >= attempts + 4
    broker.accepting = True
    broker.advance(2)
    assert service.state == "open"
    assert states == ["connecting", "open", "recovering", "open"]
    assert len(broker.queue("audit").consumers) == 1  # consumer and binding replayed
    broker.publish("events", "", b"after recovery")
    broker.flush()
    assert got == [b"after recovery"]
    broker.result(service.stopService())
    assert service.state == "closed" and broker.connections == []


def test_consumer_service_handles_acks_and_requeues(broker: MemoryBroker) -> None:
    service = AMQPService(broker.reactor, URL)
    handled: list[str] = []
    failed_once: set[str] = set()

    def handler(message: Any) -> None:
        message_id = message.properties.message_id
        if message_id == "flaky" and message_id not in failed_once:
            failed_once.add(message_id)
            raise RuntimeError("first try fails")
        handled.append(message_id)

    consumer = ConsumerService(service, "jobs", handler, prefetch=5, declare=True)
    service.startService()
    consumer.startService()
    broker.flush()
    for name in ("a", "flaky", "b"):
        broker.publish("", "jobs", b"", BasicProperties(message_id=name))
    broker.flush()
    assert sorted(handled) == ["a", "b", "flaky"]  # flaky: requeued, then handled
    queue = broker.queue("jobs")
    assert queue.messages == () and queue.unacked == ()
    stopping = consumer.stopService()
    broker.flush()
    broker.result(stopping)
    broker.result(service.stopService())
