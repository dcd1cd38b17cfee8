"""`ConsumerService` on a `MemoryReactorClock`: acks and rejects per handler outcome, bounded
concurrency, handler timeouts, stale acks after a reconnect, and the drain on stop.

Handlers are controlled by the tests (they return Deferreds the test fires); the frames the
service writes (``basic.ack``, ``basic.reject``, ``basic.cancel``, ``channel.close``,
``connection.close``) are checked in order.
"""

from __future__ import annotations

from typing import Any

import pytest
from servicesim import BrokerConn, ServiceSim
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import formatEvent
from twistedsim import (
    capture_logs,
    no_result,
    no_unhandled_errors,  # noqa: F401 - a fixture
    success,
)

from txpika import spec
from txpika.channel import Message
from txpika.consumer import ConsumerService

m = spec

pytestmark = pytest.mark.usefixtures("no_unhandled_errors")

CLOSE = m.Channel.Close(200, "Normal close", 0, 0)
CLOSE_OK = m.Channel.CloseOk()


class Handlers:
    """A handler whose calls the test finishes: each returns a Deferred kept by body."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.pending: dict[bytes, defer.Deferred[None]] = {}

    def __call__(self, message: Message) -> defer.Deferred[None]:
        self.calls.append(message.body)
        d: defer.Deferred[None] = defer.Deferred()
        self.pending[message.body] = d
        return d

    @property
    def running(self) -> list[bytes]:
        return [body for body, d in self.pending.items() if not d.called]

    def finish(self, body: bytes) -> None:
        self.pending[body].callback(None)

    def fail(self, body: bytes, error: Exception | None = None) -> None:
        self.pending[body].errback(error or RuntimeError(f"handler failed on {body!r}"))


def start(sim: ServiceSim, conn: BrokerConn, handler: Any, *, queue: str = "jobs",
          prefetch: int = 5, channel: int = 1, **kw: Any) -> tuple[ConsumerService, str]:
    """Start a ConsumerService; answers its channel.open, qos and consume; returns the
    service and its consumer tag."""
    cs = ConsumerService(sim.service, queue, handler, prefetch=prefetch, **kw)
    cs.startService()
    conn.open_ok(channel)
    expect_consume(conn, queue, prefetch, channel)
    tag = consumer_tag(conn, queue, channel)
    return cs, tag


def expect_consume(conn: BrokerConn, queue: str, prefetch: int, channel: int = 1) -> None:
    conn.step(channel, m.Basic.Qos(prefetch_count=prefetch), m.Basic.QosOk())


def consumer_tag(conn: BrokerConn, queue: str, channel: int = 1, tag: str | None = None
                 ) -> str:
    ((number, consume),) = conn.broker.methods()
    assert number == channel
    if tag is None:
        tag = consume.consumer_tag
        assert tag.startswith("txpika.")
    assert consume == m.Basic.Consume(queue=queue, consumer_tag=tag, arguments={})
    conn.broker.send(channel, m.Basic.ConsumeOk(tag))
    return tag


def deliver(conn: BrokerConn, tag: str, *bodies: bytes, first: int = 1) -> None:
    for n, body in enumerate(bodies, start=first):
        conn.broker.deliver(1, tag, n, body)


# -- outcomes -------------------------------------------------------------------------------------

def test_success_acks() -> None:
    sim = ServiceSim()
    conn = sim.open()
    handlers = Handlers()
    cs, tag = start(sim, conn, handlers)
    deliver(conn, tag, b"a")
    assert handlers.calls == [b"a"]
    conn.broker.expect_nothing()
    handlers.finish(b"a")
    conn.step(1, m.Basic.Ack(1, False))
    assert cs.stats == {"acked": 1, "failed": 0, "stale_acks": 0}


def test_a_plain_function_handler_acks_at_once() -> None:
    sim = ServiceSim()
    conn = sim.open()
    seen: list[Message] = []
    _cs, tag = start(sim, conn, seen.append)
    deliver(conn, tag, b"a", b"b")
    assert [message.body for message in seen] == [b"a", b"b"]
    assert conn.broker.methods() == [(1, m.Basic.Ack(1, False)), (1, m.Basic.Ack(2, False))]


@pytest.mark.parametrize(("on_error", "requeue"), [("requeue", True), ("reject", False)])
def test_failure_rejects_per_policy(on_error: str, requeue: bool) -> None:
    sim = ServiceSim()
    conn = sim.open()
    handlers = Handlers()
    cs, tag = start(sim, conn, handlers, on_error=on_error)
    deliver(conn, tag, b"a", b"b")
    with capture_logs() as logs:
        handlers.fail(b"a")
    conn.step(1, m.Basic.Reject(1, requeue))
    (logged,) = logs.failures()
    assert "delivery 1" in formatEvent(logged) and "jobs" in formatEvent(logged)
    handlers.finish(b"b")
    conn.step(1, m.Basic.Ack(2, False))
    assert cs.stats == {"acked": 1, "failed": 1, "stale_acks": 0}


@pytest.mark.parametrize(("on_error", "requeue"), [("requeue", True), ("reject", False)])
def test_a_handler_raising_at_once_rejects(on_error: str, requeue: bool) -> None:
    def handler(message: Message) -> None:
        raise ValueError("bad message")

    sim = ServiceSim()
    conn = sim.open()
    _cs, tag = start(sim, conn, handler, on_error=on_error)
    with capture_logs():
        deliver(conn, tag, b"a")
    conn.step(1, m.Basic.Reject(1, requeue))


def test_coroutine_handlers() -> None:
    gate: defer.Deferred[None] = defer.Deferred()
    done: list[bytes] = []

    async def handler(message: Message) -> None:
        await gate
        if message.body == b"bad":
            raise RuntimeError("bad")
        done.append(message.body)

    sim = ServiceSim()
    conn = sim.open()
    _cs, tag = start(sim, conn, handler)
    deliver(conn, tag, b"good", b"bad")
    conn.broker.expect_nothing()
    with capture_logs():
        gate.callback(None)
    assert done == [b"good"]
    assert conn.broker.methods() == [(1, m.Basic.Ack(1, False)), (1, m.Basic.Reject(2, True))]


def test_invalid_arguments() -> None:
    sim = ServiceSim()
    with pytest.raises(ValueError, match="on_error"):
        ConsumerService(sim.service, "q", print, on_error="drop")
    with pytest.raises(ValueError, match="concurrency"):
        ConsumerService(sim.service, "q", print, concurrency=0)


# -- concurrency ----------------------------------------------------------------------------------

def test_concurrency_bounds_running_handlers() -> None:
    sim = ServiceSim()
    conn = sim.open()
    handlers = Handlers()
    cs, tag = start(sim, conn, handlers, concurrency=2)
    deliver(conn, tag, b"1", b"2", b"3", b"4", b"5")
    assert handlers.calls == [b"1", b"2"]
    assert cs.in_flight == 2
    handlers.finish(b"2")
    conn.step(1, m.Basic.Ack(2, False))
    assert handlers.calls == [b"1", b"2", b"3"]  # in delivery order
    assert handlers.running == [b"1", b"3"]
    with capture_logs():
        handlers.fail(b"1")
    conn.step(1, m.Basic.Reject(1, True))
    assert handlers.running == [b"3", b"4"]
    handlers.finish(b"3")
    handlers.finish(b"4")
    assert handlers.running == [b"5"]
    handlers.finish(b"5")
    assert conn.broker.methods() == [(1, m.Basic.Ack(3, False)), (1, m.Basic.Ack(4, False)),
                                     (1, m.Basic.Ack(5, False))]
    assert cs.in_flight == 0


def test_a_handler_finishing_synchronously_frees_its_slot() -> None:
    sim = ServiceSim()
    conn = sim.open()
    handlers = Handlers()
    calls: list[bytes] = []

    def handler(message: Message) -> Any:
        calls.append(message.body)
        if message.body == b"fast":
            return None
        return handlers(message)

    _cs, tag = start(sim, conn, handler, concurrency=1)
    deliver(conn, tag, b"fast", b"slow", b"next")
    assert calls == [b"fast", b"slow"]
    assert conn.broker.methods() == [(1, m.Basic.Ack(1, False))]
    handlers.finish(b"slow")
    assert calls == [b"fast", b"slow", b"next"]


# -- handler timeout ------------------------------------------------------------------------------

@pytest.mark.parametrize(("on_error", "requeue"), [("requeue", True), ("reject", False)])
def test_handler_timeout_rejects(on_error: str, requeue: bool) -> None:
    sim = ServiceSim()
    conn = sim.open()
    handlers = Handlers()
    cs, tag = start(sim, conn, handlers, handler_timeout=5.0, on_error=on_error,
                    concurrency=1)
    deliver(conn, tag, b"slow", b"next")
    sim.advance(4.9)
    conn.broker.expect_nothing()
    with capture_logs() as logs:
        sim.advance(0.1)
    conn.step(1, m.Basic.Reject(1, requeue))
    assert logs.failures()[0]["log_failure"].check(defer.TimeoutError)
    assert handlers.calls == [b"slow", b"next"]  # the slot is free again
    assert cs.stats["failed"] == 1
    handlers.finish(b"next")
    conn.step(1, m.Basic.Ack(2, False))


# -- a replaced connection ------------------------------------------------------------------------

def reconnect(sim: ServiceSim, conn: BrokerConn, tag: str, prefetch: int = 5) -> BrokerConn:
    conn.lose_uncleanly()
    sim.advance(1.0)
    new = sim.accept()
    new.open_ok(1)
    expect_consume(new, "jobs", prefetch)
    consumer_tag(new, "jobs", tag=tag)
    assert sim.service.state == "open"
    return new


def test_an_ack_for_a_delivery_of_a_replaced_connection_is_dropped_and_logged() -> None:
    sim = ServiceSim()
    conn = sim.open()
    handlers = Handlers()
    cs, tag = start(sim, conn, handlers)
    deliver(conn, tag, b"old")
    new = reconnect(sim, conn, tag)
    deliver(new, tag, b"new")  # delivery tag 1 again, on the new channel
    with capture_logs() as logs:
        handlers.finish(b"old")
    new.broker.expect_nothing()  # must not ack delivery 1 of the new channel
    assert cs.stats["stale_acks"] == 1
    assert [e for e in logs.events
            if "dropping ack of delivery 1" in formatEvent(e)], [formatEvent(e)
                                                               for e in logs.events]
    handlers.finish(b"new")
    new.step(1, m.Basic.Ack(1, False))


def test_a_reject_for_a_replaced_connection_is_dropped_too() -> None:
    sim = ServiceSim()
    conn = sim.open()
    handlers = Handlers()
    cs, tag = start(sim, conn, handlers)
    deliver(conn, tag, b"old")
    new = reconnect(sim, conn, tag)
    with capture_logs():
        handlers.fail(b"old")
    new.broker.expect_nothing()
    assert cs.stats["stale_acks"] == 1


def test_waiting_deliveries_of_a_replaced_connection_are_not_handled() -> None:
    """The broker requeued them when the connection went: handling the stale copy would do
    the work twice (the redelivered copy comes on the new connection)."""
    sim = ServiceSim()
    conn = sim.open()
    handlers = Handlers()
    _cs, tag = start(sim, conn, handlers, concurrency=1)
    deliver(conn, tag, b"running", b"waiting")
    new = reconnect(sim, conn, tag)
    with capture_logs():
        handlers.finish(b"running")
    assert handlers.calls == [b"running"]
    deliver(new, tag, b"waiting")
    assert handlers.calls == [b"running", b"waiting"]
    handlers.finish(b"waiting")
    new.step(1, m.Basic.Ack(1, False))


# -- starting -------------------------------------------------------------------------------------

def test_declare_and_bindings_are_recorded_and_replayed() -> None:
    sim = ServiceSim()
    conn = sim.open()
    cs = ConsumerService(sim.service, "jobs", print, prefetch=7, declare=True,
                         bindings=[("orders", "order.*"), ("audit", "")])
    cs.startService()
    conn.open_ok(1)
    declare = m.Queue.Declare(queue="jobs", durable=True, exclusive=False, auto_delete=False)
    conn.step(1, declare, m.Queue.DeclareOk("jobs", 0, 0))
    conn.step(1, m.Queue.Bind(queue="jobs", exchange="orders", routing_key="order.*"),
              m.Queue.BindOk())
    conn.step(1, m.Queue.Bind(queue="jobs", exchange="audit", routing_key=""),
              m.Queue.BindOk())
    conn.step(1, m.Basic.Qos(prefetch_count=7), m.Basic.QosOk())
    tag = consumer_tag(conn, "jobs")
    conn.lose_uncleanly()
    sim.advance(1.0)
    new = sim.accept(restore=False)
    new.open_ok(1)
    new.step(1, declare, m.Queue.DeclareOk("jobs", 0, 0))
    new.step(1, m.Queue.Bind(queue="jobs", exchange="orders", routing_key="order.*"),
             m.Queue.BindOk())
    new.step(1, m.Queue.Bind(queue="jobs", exchange="audit", routing_key=""),
             m.Queue.BindOk())
    new.close_ok(1)
    new.open_ok(1)
    new.step(1, m.Basic.Qos(prefetch_count=7), m.Basic.QosOk())
    consumer_tag(new, "jobs", tag=tag)
    assert sim.service.state == "open"


def test_started_before_the_connection_is_open() -> None:
    sim = ServiceSim()
    sim.start()
    handlers = Handlers()
    cs = ConsumerService(sim.service, "jobs", handlers, prefetch=2)
    cs.startService()
    conn = sim.accept()
    conn.open_ok(1)
    expect_consume(conn, "jobs", 2)
    tag = consumer_tag(conn, "jobs")
    deliver(conn, tag, b"x")
    assert handlers.calls == [b"x"]


def test_a_failed_start_is_retried() -> None:
    sim = ServiceSim()
    conn = sim.open()
    cs = ConsumerService(sim.service, "jobs", print, prefetch=2)
    with capture_logs() as logs:
        cs.startService()
        conn.open_ok(1)
        conn.step(1, m.Basic.Qos(prefetch_count=2), m.Basic.QosOk())
        ((_, consume),) = conn.broker.methods()
        conn.broker.send(1, m.Channel.Close(404, "NOT_FOUND - no queue 'jobs'", 60, 20))
    assert conn.broker.methods() == [(1, m.Channel.CloseOk())]
    assert [e for e in logs.events if "could not start consuming" in formatEvent(e)]
    sim.advance(0.9)
    conn.broker.expect_nothing()  # the robust channel is not reopened; the service waits
    sim.advance(0.1)
    conn.open_ok(1)
    conn.step(1, m.Basic.Qos(prefetch_count=2), m.Basic.QosOk())
    tag = consumer_tag(conn, "jobs")
    assert tag != consume.consumer_tag  # a new consumer
    assert cs.running


# -- stopping -------------------------------------------------------------------------------------

def test_stop_cancels_requeues_waiting_drains_and_closes() -> None:
    sim = ServiceSim()
    conn = sim.open()
    handlers = Handlers()
    cs, tag = start(sim, conn, handlers, concurrency=2, drain_timeout=10.0)
    deliver(conn, tag, b"1", b"2", b"3", b"4")
    assert handlers.running == [b"1", b"2"]
    stopped = cs.stopService()
    conn.step(1, m.Basic.Cancel(tag, False))
    # a delivery that crossed the cancel is requeued at once, not handled
    conn.broker.deliver(1, tag, 5, b"5")
    conn.step(1, m.Basic.Reject(5, True))
    conn.broker.send(1, m.Basic.CancelOk(tag))
    # the waiting ones are requeued
    assert conn.broker.methods() == [(1, m.Basic.Reject(3, True)), (1, m.Basic.Reject(4, True))]
    assert handlers.calls == [b"1", b"2"]
    no_result(stopped)
    handlers.finish(b"1")
    conn.step(1, m.Basic.Ack(1, False))
    assert handlers.calls == [b"1", b"2"]  # nothing new starts while stopping
    no_result(stopped)
    handlers.finish(b"2")
    assert conn.broker.methods() == [(1, m.Basic.Ack(2, False)), (1, CLOSE)]
    no_result(stopped)
    conn.broker.send(1, CLOSE_OK)
    conn.broker.expect_nothing()
    assert success(stopped) is None
    assert sim.service.state == "open"  # the connection is not the consumer's to close


def test_the_drain_is_bounded_by_drain_timeout() -> None:
    sim = ServiceSim()
    conn = sim.open()
    handlers = Handlers()
    cs, tag = start(sim, conn, handlers, drain_timeout=30.0, on_error="reject")
    deliver(conn, tag, b"stuck")
    stopped = cs.stopService()
    conn.step(1, m.Basic.Cancel(tag, False), m.Basic.CancelOk(tag))
    sim.advance(29.9)
    conn.broker.expect_nothing()
    no_result(stopped)
    with capture_logs() as logs:
        sim.advance(0.1)
    # the handler cut off by the deadline did nothing wrong: requeued even under "reject"
    assert conn.broker.methods() == [(1, m.Basic.Reject(1, True)), (1, CLOSE)]
    conn.broker.send(1, CLOSE_OK)
    assert success(stopped) is None
    # the handler was cancelled (its Deferred failed with CancelledError)
    assert handlers.pending[b"stuck"].called
    handlers.pending[b"stuck"].addErrback(lambda f: f.trap(defer.CancelledError))
    assert logs.failures()[0]["log_failure"].check(defer.CancelledError)


def test_stop_twice_returns_the_same_deferred() -> None:
    sim = ServiceSim()
    conn = sim.open()
    cs, tag = start(sim, conn, print)
    first = cs.stopService()
    assert cs.stopService() is first
    conn.step(1, m.Basic.Cancel(tag, False), m.Basic.CancelOk(tag))
    conn.step(1, CLOSE, CLOSE_OK)
    success(first)


def test_amqp_service_stop_waits_for_the_consumer_drain() -> None:
    sim = ServiceSim()
    conn = sim.open()
    handlers = Handlers()
    _cs, tag = start(sim, conn, handlers)
    deliver(conn, tag, b"work")
    stopped = sim.service.stopService()
    conn.step(1, m.Basic.Cancel(tag, False), m.Basic.CancelOk(tag))
    sim.advance(5)
    conn.broker.expect_nothing()  # no connection.close while the handler runs
    no_result(stopped)
    handlers.finish(b"work")
    # acked before anything closes
    assert conn.broker.methods() == [(1, m.Basic.Ack(1, False)), (1, CLOSE)]
    conn.broker.send(1, CLOSE_OK)
    conn.step(0, m.Connection.Close(200, "Normal shutdown", 0, 0), m.Connection.CloseOk())
    no_result(stopped)
    conn.finish_close()
    assert success(stopped) is None
    assert sim.service.state == "closed"


def test_a_multiservice_stop_drains_the_consumer_before_closing_the_connection() -> None:
    """As `twistd` stops the services of `txpika.tap`: all of them at once, in reverse."""
    sim = ServiceSim()
    top = MultiService()
    sim.service.setServiceParent(top)
    handlers = Handlers()
    cs = ConsumerService(sim.service, "jobs", handlers, prefetch=1)
    cs.setServiceParent(top)
    top.startService()
    conn = sim.accept()
    conn.open_ok(1)
    expect_consume(conn, "jobs", 1)
    tag = consumer_tag(conn, "jobs")
    deliver(conn, tag, b"work")
    stopped = top.stopService()
    conn.step(1, m.Basic.Cancel(tag, False), m.Basic.CancelOk(tag))
    conn.broker.expect_nothing()
    handlers.finish(b"work")
    assert conn.broker.methods() == [(1, m.Basic.Ack(1, False)), (1, CLOSE)]
    conn.broker.send(1, CLOSE_OK)
    conn.close_by_client()
    success(stopped)
    assert sim.states[-1] == "closed"


def test_stop_while_the_connection_is_recovering() -> None:
    sim = ServiceSim()
    conn = sim.open()
    handlers = Handlers()
    cs, tag = start(sim, conn, handlers)
    deliver(conn, tag, b"work")
    conn.lose_uncleanly()
    with capture_logs():
        stopped = sim.service.stopService()
        handlers.finish(b"work")  # its ack has nowhere to go
    assert success(stopped) is None
    assert cs.stats["stale_acks"] == 1
    assert sim.service.state == "closed"


def test_a_consumer_the_broker_cancels_is_started_again() -> None:
    """RabbitMQ cancels consumers when their queue is deleted or fails over; a consumer
    daemon must not sit idle afterwards."""
    sim = ServiceSim()
    conn = sim.open()
    handlers = Handlers()
    cs = ConsumerService(sim.service, "jobs", handlers, prefetch=1, declare=True)
    cs.startService()
    conn.open_ok(1)
    declare = m.Queue.Declare(queue="jobs", durable=True, exclusive=False, auto_delete=False)
    conn.step(1, declare, m.Queue.DeclareOk("jobs", 0, 0))
    conn.step(1, m.Basic.Qos(prefetch_count=1), m.Basic.QosOk())
    tag = consumer_tag(conn, "jobs")
    with capture_logs():
        conn.broker.send(1, m.Basic.Cancel(tag, True))
    conn.step(1, declare, m.Queue.DeclareOk("jobs", 0, 0))
    consumer_tag(conn, "jobs", tag=tag)
    deliver(conn, tag, b"after")
    assert handlers.calls == [b"after"]
