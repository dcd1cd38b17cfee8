"""The observer interface (`txpika.observe`): what `AMQPService`, `ConsumerService` and
`Publisher` report, on a `MemoryReactorClock` with scripted brokers (tests/servicesim.py).

Also the consumer ack timeout: RabbitMQ closes the channel with 406 when a delivery stays
unacked past its ``consumer_timeout``; the consumer service warns once, naming the setting
and the handler's duration, and the channel is reopened with its consumer.
"""

from __future__ import annotations

from typing import Any

import pytest
from servicesim import ServiceSim
from test_consumer_service import Handlers, consumer_tag, deliver, expect_consume, start
from test_publisher import start_publisher
from twisted.logger import formatEvent
from twistedsim import capture_logs, failure, no_unhandled_errors, success  # noqa: F401

from txpika import spec
from txpika.errors import NackError
from txpika.observe import Observer, Observers

m = spec

pytestmark = pytest.mark.usefixtures("no_unhandled_errors")


class Recorder(Observer):
    """Records every event as a tuple."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def state_changed(self, state: str) -> None:
        self.events.append(("state", state))

    def recovered(self, broker: str) -> None:
        self.events.append(("recovered", broker))

    def channel_closed(self, reply_code: int, reply_text: str) -> None:
        self.events.append(("channel_closed", reply_code))

    def consumer_state(self, queue: str, state: str) -> None:
        self.events.append(("consumer", queue, state))

    def delivered(self, queue: str) -> None:
        self.events.append(("delivered", queue))

    def handler_started(self, queue: str) -> None:
        self.events.append(("started", queue))

    def handler_finished(self, queue: str, outcome: str, seconds: float,
                         error: BaseException | None) -> None:
        self.events.append(("finished", queue, outcome, round(seconds, 3),
                            type(error).__name__ if error else None))

    def published(self, exchange: str, outcome: str, seconds: float) -> None:
        self.events.append(("published", exchange, outcome, round(seconds, 3)))

    def take(self, kind: str | None = None) -> list[tuple[Any, ...]]:
        events = [e for e in self.events if kind is None or e[0] == kind]
        self.events = [e for e in self.events if e not in events]
        return events


def test_the_service_reports_states_and_counts_a_recovery() -> None:
    recorder = Recorder()
    sim = ServiceSim(observer=recorder)
    conn = sim.open()
    assert recorder.take() == [("state", "connecting"), ("state", "open")]
    with capture_logs():
        conn.lose_uncleanly()
    sim.advance(1.0)
    sim.accept()
    assert recorder.take() == [("state", "recovering"), ("state", "open"),
                               ("recovered", "amqp://guest@10.0.0.1:5672/%2F")]
    assert "secret" not in repr(recorder.events)


def test_consumer_service_reports_deliveries_outcomes_and_durations() -> None:
    recorder = Recorder()
    sim = ServiceSim(observer=recorder)
    conn = sim.open()
    handlers = Handlers()
    cs, tag = start(sim, conn, handlers, on_error="requeue")
    assert cs.state == "consuming"
    assert ("consumer", "jobs", "consuming") in recorder.take()
    deliver(conn, tag, b"a", b"b")
    assert recorder.take() == [("delivered", "jobs"), ("started", "jobs")] * 2
    sim.advance(0.25)
    handlers.finish(b"a")
    conn.step(1, m.Basic.Ack(1, False))
    sim.advance(0.5)
    with capture_logs():
        handlers.fail(b"b")
    conn.step(1, m.Basic.Reject(2, True))
    assert recorder.take() == [("finished", "jobs", "ack", 0.25, None),
                               ("finished", "jobs", "requeue", 0.75, "RuntimeError")]


def test_a_plain_function_handler_and_a_rejecting_policy_are_reported() -> None:
    recorder = Recorder()
    sim = ServiceSim(observer=recorder)
    conn = sim.open()
    calls: list[bytes] = []

    def handle(message: Any) -> None:
        calls.append(message.body)
        if message.body == b"bad":
            raise ValueError("bad message")

    _cs, tag = start(sim, conn, handle, on_error="reject")
    recorder.take()
    with capture_logs():
        deliver(conn, tag, b"good", b"bad")
    assert conn.broker.methods() == [(1, m.Basic.Ack(1, False)),
                                     (1, m.Basic.Reject(2, False))]
    assert calls == [b"good", b"bad"]
    assert recorder.take("finished") == [("finished", "jobs", "ack", 0.0, None),
                                         ("finished", "jobs", "reject", 0.0, "ValueError")]


def test_an_ack_for_a_replaced_connection_is_reported_as_dropped() -> None:
    recorder = Recorder()
    sim = ServiceSim(observer=recorder)
    conn = sim.open()
    handlers = Handlers()
    _cs, tag = start(sim, conn, handlers)
    deliver(conn, tag, b"old")
    with capture_logs():
        conn.lose_uncleanly()
    sim.advance(1.0)
    new = sim.accept()
    new.open_ok(1)
    expect_consume(new, "jobs", 5)
    consumer_tag(new, "jobs", tag=tag)
    recorder.take()
    with capture_logs():
        handlers.finish(b"old")
    new.broker.expect_nothing()
    assert recorder.take("finished") == [("finished", "jobs", "dropped", 1.0, None)]


def test_stop_reports_draining_then_stopped() -> None:
    recorder = Recorder()
    sim = ServiceSim(observer=recorder)
    conn = sim.open()
    cs, tag = start(sim, conn, Handlers())
    recorder.take()
    cs.stopService()
    assert cs.state == "draining"
    conn.step(1, m.Basic.Cancel(tag), m.Basic.CancelOk(tag))
    conn.close_ok(1)
    assert cs.state == "stopped"
    assert recorder.take("consumer") == [("consumer", "jobs", "draining"),
                                         ("consumer", "jobs", "stopped")]


def test_publisher_reports_outcomes_and_confirm_latency() -> None:
    recorder = Recorder()
    sim = ServiceSim(observer=recorder)
    conn = sim.open()
    publisher = start_publisher(sim, conn)
    first = publisher.publish("orders", "new", b"1")
    second = publisher.publish("orders", "new", b"2")
    conn.broker.commands()
    sim.advance(0.02)
    conn.broker.send(1, m.Basic.Ack(1, False))
    sim.advance(0.03)
    conn.broker.send(1, m.Basic.Nack(2, False, False))
    assert success(first) is None
    assert isinstance(failure(second), NackError)
    assert recorder.take("published") == [("published", "orders", "confirmed", 0.02),
                                          ("published", "orders", "nacked", 0.05)]


def test_observers_fan_out_and_the_default_observer_does_nothing() -> None:
    a, b = Recorder(), Recorder()
    both = Observers(a, b)
    both.handler_finished("q", "ack", 1.5, None)
    both.published("x", "unknown", 0.1)
    assert a.events == b.events == [("finished", "q", "ack", 1.5, None),
                                    ("published", "x", "unknown", 0.1)]
    plain = Observer()
    for name in ("state_changed", "recovered", "delivered", "handler_started"):
        assert getattr(plain, name)("x") is None


# -- the broker's consumer (ack) timeout ------------------------------------------------------

TIMED_OUT = ("PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. "
             "Timeout value used: 3000 ms. This timeout value can be configured, see "
             "consumers doc guide to learn more")


def test_an_ack_timeout_warns_once_reopens_and_consumes_again() -> None:
    recorder = Recorder()
    sim = ServiceSim(observer=recorder)
    conn = sim.open()
    handlers = Handlers()
    cs, tag = start(sim, conn, handlers)
    deliver(conn, tag, b"slow")
    sim.advance(3.5)
    with capture_logs() as logs:
        conn.broker.send(1, m.Channel.Close(406, TIMED_OUT, 0, 0))
        assert conn.broker.methods() == [(1, m.Channel.CloseOk())]
        sim.advance(0)
    warnings = [formatEvent(e) for e in logs.events if e["log_level"].name == "warn"
                and "consumer_timeout" in formatEvent(e)]
    assert len(warnings) == 1, [formatEvent(e) for e in logs.events]
    assert "3.5 s" in warnings[0] and "redelivers" in warnings[0]
    assert "--handler-timeout" in warnings[0]
    assert ("channel_closed", 406) in recorder.take()
    # reopened with its QoS and the same consumer: the broker redelivers there
    conn.open_ok(1)
    expect_consume(conn, "jobs", 5)
    consumer_tag(conn, "jobs", tag=tag)
    conn.broker.deliver(1, tag, 1, b"slow", redelivered=True)
    assert handlers.calls == [b"slow", b"slow"]
    with capture_logs():
        handlers.pending[b"slow"].callback(None)  # the second call's Deferred
    conn.step(1, m.Basic.Ack(1, False))
    assert cs.state == "consuming"


def test_publisher_reports_a_channel_the_broker_closed() -> None:
    recorder = Recorder()
    sim = ServiceSim(observer=recorder)
    conn = sim.open()
    publisher = start_publisher(sim, conn)
    d = publisher.publish("missing", "rk", b"x")
    conn.broker.commands()
    with capture_logs():
        conn.broker.send(1, m.Channel.Close(404, "NOT_FOUND - no exchange 'missing'", 60, 40))
    failure(d)
    assert recorder.take("channel_closed") == [("channel_closed", 404)]
    assert recorder.take("published") == [("published", "missing", "unknown", 0.0)]
