"""txpika.testing.MemoryBroker through connect()/flush(): no socket, no reactor.

These are unit tests of the testing kit itself: synchronous, on a task.Clock. The shared
scenarios that hold it to RabbitMQ's behaviour are in test_testing_differential.py.
"""

from __future__ import annotations

import socket
from collections.abc import Coroutine
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure

import txpika
from txpika import errors
from txpika.parameters import ConnectionParameters
from txpika.testing import BrokerMessage, MemoryBroker


def result(broker: MemoryBroker, work: Deferred[Any] | Coroutine[Any, Any, Any]) -> Any:
    """Flush ``broker`` and return what ``work`` fired with (raising its failure)."""
    d = ensureDeferred(work) if not isinstance(work, Deferred) else work
    broker.flush()
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, f"{work!r} did not fire after flush()"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def failure(broker: MemoryBroker, work: Any) -> BaseException:
    with pytest.raises(Exception) as info:
        result(broker, work)
    return info.value


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


def test_no_socket_and_no_reactor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Declare, publish, consume and ack with every socket refused and the reactor idle."""
    def refuse(*args: Any, **kw: Any) -> Any:
        raise AssertionError("MemoryBroker opened a socket")

    monkeypatch.setattr(socket, "socket", refuse)
    from twisted.internet import reactor

    # pytest-twisted keeps the global reactor around; this test never gives it a turn, and
    # nothing may use it.
    for name in ("callLater", "callWhenRunning", "connectTCP", "listenTCP", "run",
                 "iterate", "addReader", "addWriter"):
        monkeypatch.setattr(reactor, name, refuse)
    broker = MemoryBroker()
    connection = result(broker, broker.connect())

    async def cycle() -> bytes:
        ch = await connection.channel()
        ok = await ch.queue_declare("jobs", durable=True)
        assert (ok.queue, ok.message_count, ok.consumer_count) == ("jobs", 0, 0)
        await ch.confirm_select()
        await ch.basic_publish("", "jobs", b"work", properties=txpika.BasicProperties(
            content_type="text/plain", delivery_mode=2))
        assert [m.body for m in broker.queue("jobs").messages] == [b"work"]
        consumer = await ch.basic_consume("jobs")
        message = await consumer.get()
        assert broker.queue("jobs").messages == ()
        assert [m.body for m in broker.queue("jobs").unacked_by(consumer.consumer_tag)] == [
            b"work"]
        await message.ack()
        await connection.close()
        return message.body

    assert result(broker, cycle()) == b"work"
    assert broker.queue("jobs").unacked == ()


def test_nothing_moves_until_flush(broker: MemoryBroker) -> None:
    d = broker.connect()
    assert not d.called
    connection = result(broker, d)
    assert connection.is_open
    opening = connection.channel()
    assert not opening.called
    broker.flush()
    assert opening.called


def test_wrong_password_is_refused_like_rabbitmq(broker: MemoryBroker) -> None:
    params = ConnectionParameters(password="nope")
    error = failure(broker, broker.connect(params))
    assert isinstance(error, txpika.AuthenticationError)
    assert error.reply_code == 403
    assert error.reply_text == ("ACCESS_REFUSED - Login was refused using authentication "
                                "mechanism PLAIN. For details see the broker logfile.")
    assert "nope" not in str(error)


def test_amqplain_and_configured_users() -> None:
    broker = MemoryBroker(users={"app": "s3cret"}, vhosts=["/", "prod"])
    params = ConnectionParameters(username="app", password="s3cret",
                                  auth_mechanism="AMQPLAIN", virtual_host="prod")
    connection = result(broker, broker.connect(params))
    assert connection.is_open
    refused = failure(broker, broker.connect(ConnectionParameters()))  # guest/guest
    assert isinstance(refused, txpika.AuthenticationError)


def test_unknown_vhost(broker: MemoryBroker) -> None:
    error = failure(broker, broker.connect(ConnectionParameters(virtual_host="nope")))
    assert isinstance(error, txpika.AccessRefused | errors.NotAllowed)
    assert error.reply_code == 530
    assert error.reply_text == "NOT_ALLOWED - vhost nope not found"


def test_state_a_test_can_read_and_drive(broker: MemoryBroker) -> None:
    broker.declare_exchange("orders", "topic")
    broker.declare_queue("billing")
    broker.bind_queue("billing", "orders", "order.*")
    assert broker.publish("orders", "order.created", b"1")
    assert not broker.publish("orders", "user.created", b"2")
    assert broker.queue("billing").messages == (
        BrokerMessage(b"1", txpika.BasicProperties(), "orders", "order.created"),)
    [binding] = [b for b in broker.bindings() if b.source == "orders"]
    assert (binding.destination, binding.destination_type, binding.routing_key) == (
        "billing", "queue", "order.*")
    assert broker.exchange("orders").type == "topic"
    assert "amq.topic" in broker.exchanges()
    with pytest.raises(ValueError, match="NOT_FOUND - no exchange 'nope'"):
        broker.publish("nope", "k", b"")


def test_consumer_sees_messages_published_directly(broker: MemoryBroker) -> None:
    connection = result(broker, broker.connect())
    got: list[bytes] = []

    async def consume() -> Any:
        ch = await connection.channel()
        await ch.queue_declare("events")
        return await ch.basic_consume("events", lambda m: (got.append(m.body), m.ack()))

    result(broker, consume())
    broker.publish("", "events", b"a")
    broker.publish("", "events", b"b")
    assert got == []
    broker.flush()
    assert got == [b"a", b"b"]
    assert broker.queue("events").unacked == ()


def test_ttl_runs_on_the_broker_clock(broker: MemoryBroker) -> None:
    connection = result(broker, broker.connect())

    async def setup() -> Any:
        ch = await connection.channel()
        await ch.queue_declare("short", arguments={"x-message-ttl": 5000})
        await ch.basic_publish("", "short", b"x")
        return ch

    ch = result(broker, setup())
    broker.advance(4.9)
    assert len(broker.queue("short").messages) == 1
    broker.advance(0.2)
    assert broker.queue("short").messages == ()
    # Heartbeats went both ways meanwhile: a long wait keeps the connection.
    broker.advance(600)
    assert connection.is_open and ch.is_open


def test_silent_client_is_dropped_after_two_heartbeats(broker: MemoryBroker) -> None:
    connection = result(broker, broker.connect())
    closed = connection.when_closed()
    broker.clock.advance(200)  # type: ignore[attr-defined]  # one jump, no flush between
    broker.flush()
    assert closed.called
    assert broker.connections == []


def test_close_and_drop_connections(broker: MemoryBroker) -> None:
    first = result(broker, broker.connect())
    when = first.when_closed()
    broker.close_connections()
    broker.flush()
    reason = result(broker, when)
    assert isinstance(reason, errors.ConnectionForced)
    assert reason.reply_text == ("CONNECTION_FORCED - broker forced connection closure with "
                                 "reason 'shutdown'")
    second = result(broker, broker.connect())
    lost = second.when_closed()
    broker.drop_connections()
    reason = result(broker, lost)
    # A transport that went away (txpika.ConnectionLost once the core reports it so).
    assert not isinstance(reason, errors.ConnectionClosedByBroker | errors.ConnectionClosedByClient)
    assert "dropped the connection" in str(reason)
    assert not second.is_open
    assert broker.connections == []


@pytest.mark.parametrize(("call", "feature"), [
    (lambda ch: ch.queue_declare("p", arguments={"x-max-priority": 10}),
     "the queue argument 'x-max-priority'"),
    (lambda ch: ch.queue_declare("q", arguments={"x-queue-type": "quorum"}),
     "queues of type 'quorum' (only classic queues)"),
    (lambda ch: ch.queue_declare("s", arguments={"x-single-active-consumer": True}),
     "the queue argument 'x-single-active-consumer'"),
    (lambda ch: ch.exchange_declare("h", "x-consistent-hash"),
     "the exchange type 'x-consistent-hash'"),
    (lambda ch: ch.basic_consume("amq.rabbitmq.reply-to", auto_ack=True),
     "direct reply-to (amq.rabbitmq.reply-to)"),
    (lambda ch: ch.basic_consume("jobs", arguments={"x-priority": 5}),
     "the consumer argument 'x-priority'"),
], ids=["priority queue", "quorum", "single active consumer", "x- exchange type",
        "direct reply-to", "consumer priority"])
def test_what_it_does_not_implement_is_refused(broker: MemoryBroker, call: Any,
                                               feature: str) -> None:
    broker.declare_queue("jobs")
    connection = result(broker, broker.connect())
    ch = result(broker, connection.channel())
    error = failure(broker, call(ch))
    assert isinstance(error, errors.NotImplemented_)
    assert error.reply_text == (
        f"NOT_IMPLEMENTED - txpika.testing.MemoryBroker does not implement {feature}")
    assert not connection.is_open  # a connection error, as RabbitMQ's 540s are


def test_channel_flow_off_is_refused_and_flow_on_works(broker: MemoryBroker) -> None:
    connection = result(broker, broker.connect())
    ch = result(broker, connection.channel())
    assert result(broker, ch.flow(True)).active is True
    error = failure(broker, ch.flow(False))
    assert error.reply_text == "NOT_IMPLEMENTED - active=false for channel.flow"


def test_flush_refuses_traffic_that_never_settles(broker: MemoryBroker) -> None:
    connection = result(broker, broker.connect())
    ch = result(broker, connection.channel())
    result(broker, ch.queue_declare("loop"))
    result(broker, ch.basic_consume("loop", lambda m: m.nack(requeue=True)))
    broker.publish("", "loop", b"forever")
    broker.max_rounds = 1000
    with pytest.raises(RuntimeError, match="did not settle"):
        broker.flush()


def test_block_publishers_like_a_resource_alarm(broker: MemoryBroker) -> None:
    connection = result(broker, broker.connect())
    flow: list[tuple[bool, str]] = []
    connection.add_flow_listener(lambda active, reason: flow.append((active, reason)))
    ch = result(broker, connection.channel())
    result(broker, ch.queue_declare("jobs"))
    result(broker, ch.confirm_select())
    broker.block("low on memory")
    # A connection that does not publish is not told, and works on.
    assert result(broker, ch.queue_declare("jobs")).message_count == 0
    assert flow == [] and not connection.is_blocked
    first = ch.basic_publish("", "jobs", b"1")
    broker.flush()
    assert connection.is_blocked and flow == [(False, "low on memory")]
    assert not first.called and broker.queue("jobs").messages == ()
    second = ch.basic_publish("", "jobs", b"2")  # held by the client ("wait" policy)
    broker.flush()
    assert not second.called
    broker.unblock()
    broker.flush()
    assert first.called and second.called
    assert [m.body for m in broker.queue("jobs").messages] == [b"1", b"2"]
    assert flow == [(False, "low on memory"), (True, "")] and not connection.is_blocked


@pytest_twisted.ensureDeferred
async def test_autoflush_lets_a_test_await_on_the_reactor() -> None:
    from twisted.internet import reactor

    broker = MemoryBroker(reactor, autoflush=True)  # type: ignore[arg-type]

    def within(d: Deferred[Any]) -> Deferred[Any]:
        return d.addTimeout(5, reactor)  # type: ignore[arg-type]

    connection = await within(broker.connect())
    ch = await within(connection.channel())
    await within(ch.queue_declare("jobs"))
    await within(ch.confirm_select())
    await within(ch.basic_publish("", "jobs", b"awaited"))
    consumer = await within(ch.basic_consume("jobs"))
    message = await within(consumer.get())
    assert message.body == b"awaited"
    await within(message.ack())
    await within(connection.close())
    assert broker.queue("jobs").unacked == () and broker.connections == []


@pytest.mark.parametrize("frame_max", [4096, 131072])
def test_large_message_in_many_frames(broker: MemoryBroker, frame_max: int) -> None:
    connection = result(broker, broker.connect(ConnectionParameters(frame_max=frame_max)))
    body = bytes(range(256)) * 4096  # 1 MiB

    async def roundtrip() -> Any:
        ch = await connection.channel()
        await ch.queue_declare("big")
        await ch.confirm_select()
        await ch.basic_publish("", "big", body)
        return await ch.basic_get("big", auto_ack=True)

    message = result(broker, roundtrip())
    assert message.body == body
    assert broker.queue("big").messages == ()


def test_amqp_0_8_is_refused_with_our_protocol_header(broker: MemoryBroker) -> None:
    error = failure(broker, broker.connect(ConnectionParameters(protocol="0-8")))
    assert isinstance(error, txpika.ProtocolError)
    assert "does not speak AMQP 0-8" in str(error)
    assert broker.connections == []
