"""`Publisher` over an `AMQPService` on a `MemoryReactorClock`: confirmed publishing, and
at-least-once publishing that holds messages through recovery and republishes them.

The frames written on each connection (``basic.publish`` with its content) are checked, and
so is every publish Deferred firing exactly once.
"""

from __future__ import annotations

from typing import Any

import pytest
from servicesim import BrokerConn, ServiceSim
from twisted.internet import defer
from twistedsim import (
    capture_logs,
    failure,
    no_result,
    no_unhandled_errors,  # noqa: F401 - a fixture
    success,
)

from txpika import spec
from txpika.errors import (
    ConnectionRecovering,
    FlowControlError,
    NackError,
    NotFound,
    OutcomeUnknownError,
    ServiceStopped,
    UnroutableError,
)
from txpika.publisher import Publisher

m = spec

pytestmark = pytest.mark.usefixtures("no_unhandled_errors")


def start_publisher(sim: ServiceSim, conn: BrokerConn, **kw: Any) -> Publisher:
    d = sim.service.publisher(**kw)
    conn.open_ok(1)
    conn.step(1, m.Confirm.Select(False), m.Confirm.SelectOk())
    publisher = success(d)
    assert isinstance(publisher, Publisher)
    return publisher


def published(conn: BrokerConn) -> list[tuple[int, str, str, bytes, bool]]:
    """(channel, exchange, routing key, body, mandatory) of each basic.publish written."""
    out = []
    for command in conn.broker.commands():
        method = command.method
        assert method.NAME == "basic.publish", command
        assert command.body is not None
        out.append((command.channel, method.exchange, method.routing_key, command.body,
                    method.mandatory))
    return out


def fired(d: defer.Deferred[Any], log: list[Any]) -> defer.Deferred[Any]:
    """Record every result ``d`` fires with (a second firing would raise in Twisted), passing
    it on unchanged."""
    def record(result: Any) -> Any:
        log.append(result)
        return result

    return d.addBoth(record)


def reopen_publisher(sim: ServiceSim, conn: BrokerConn) -> BrokerConn:
    """Reconnect; the restore and the publisher's channel (confirm mode) are answered."""
    if sim.service.state != "recovering":
        conn.lose_uncleanly()
    sim.advance(1.0)
    new = sim.accept()
    new.open_ok(1)
    assert sim.service.state == "recovering"
    new.step(1, m.Confirm.Select(False), m.Confirm.SelectOk())
    assert sim.service.state == "open"
    return new


# -- confirmed ------------------------------------------------------------------------------------

def test_a_confirmed_publish_fires_on_the_ack() -> None:
    sim = ServiceSim()
    conn = sim.open()
    publisher = start_publisher(sim, conn)
    d = publisher.publish("orders", "order.created", b"{}",
                          properties=m.BasicProperties(delivery_mode=2), mandatory=True)
    (command,) = conn.broker.commands()
    assert command.method == m.Basic.Publish(0, "orders", "order.created", True, False)
    assert command.properties == m.BasicProperties(delivery_mode=2)
    assert command.body == b"{}"
    no_result(d)
    conn.broker.send(1, m.Basic.Ack(1, False))
    assert success(d) is None


def test_nack_and_unroutable_are_final() -> None:
    sim = ServiceSim()
    conn = sim.open()
    publisher = start_publisher(sim, conn, at_least_once=True)
    results: list[Any] = []
    nacked = fired(publisher.publish("ex", "a", b"1"), results)
    returned = fired(publisher.publish("ex", "nowhere", b"2", mandatory=True), results)
    assert published(conn) == [(1, "ex", "a", b"1", False), (1, "ex", "nowhere", b"2", True)]
    conn.broker.send(1, m.Basic.Nack(1, False, False))
    conn.broker.send_content(1, m.Basic.Return(312, "NO_ROUTE", "ex", "nowhere"), b"2")
    conn.broker.send(1, m.Basic.Ack(2, False))
    assert len(results) == 2
    assert isinstance(results[0].value, NackError)
    assert isinstance(results[1].value, UnroutableError)
    assert results[1].value.message.body == b"2"
    failure(nacked)
    failure(returned)
    assert publisher.pending == 0
    # not published again after a reconnect
    new = reopen_publisher(sim, conn)
    new.broker.expect_nothing()
    assert publisher.republished == 0


def test_without_at_least_once_publishing_while_recovering_fails_fast() -> None:
    sim = ServiceSim()
    conn = sim.open()
    publisher = start_publisher(sim, conn)
    unconfirmed = publisher.publish("ex", "k", b"lost?")
    conn.broker.commands()
    conn.lose_uncleanly()
    error = failure(unconfirmed, OutcomeUnknownError)
    assert error is not None
    failure(publisher.publish("ex", "k", b"now"), ConnectionRecovering)
    new = reopen_publisher(sim, conn)
    new.broker.expect_nothing()  # nothing is republished
    d = publisher.publish("ex", "k", b"again")
    assert published(new) == [(1, "ex", "k", b"again", False)]
    new.broker.send(1, m.Basic.Ack(1, False))
    success(d)


def test_publish_before_start_fails() -> None:
    sim = ServiceSim()
    sim.open()
    failure(Publisher(sim.service).publish("ex", "k", b"x"), ConnectionRecovering)


def test_publisher_waits_for_the_service_and_fails_when_stopped() -> None:
    sim = ServiceSim()
    d = sim.service.publisher()
    failure(d, ServiceStopped)
    sim.start()
    d = sim.service.publisher()
    no_result(d)
    conn = sim.accept()
    conn.open_ok(1)
    conn.step(1, m.Confirm.Select(False), m.Confirm.SelectOk())
    assert isinstance(success(d), Publisher)


# -- at least once --------------------------------------------------------------------------------

def test_at_least_once_holds_and_republishes_in_order_after_recovery() -> None:
    sim = ServiceSim()
    conn = sim.open()
    publisher = start_publisher(sim, conn, at_least_once=True)
    results: dict[bytes, list[Any]] = {}

    def publish(body: bytes) -> defer.Deferred[None]:
        results[body] = []
        return fired(publisher.publish("ex", "k", body), results[body])

    publish(b"1")
    publish(b"2")
    publish(b"3")
    assert published(conn) == [(1, "ex", "k", b"1", False), (1, "ex", "k", b"2", False),
                               (1, "ex", "k", b"3", False)]
    conn.broker.send(1, m.Basic.Ack(1, False))
    assert results[b"1"] == [None]
    assert publisher.pending == 2
    conn.lose_uncleanly()
    # 2 and 3 are unconfirmed: their outcome is unknown, they are held (not failed)
    assert results[b"2"] == [] and results[b"3"] == []
    publish(b"4")  # while recovering: held too
    publish(b"5")
    assert results[b"4"] == [] and publisher.pending == 4
    sim.advance(1.0)
    sim.refuse()  # a failed attempt changes nothing
    assert publisher.pending == 4
    new = reopen_publisher(sim, conn)
    # republished on the new connection, in order, after its confirm.select
    assert published(new) == [(1, "ex", "k", b"2", False), (1, "ex", "k", b"3", False),
                              (1, "ex", "k", b"4", False), (1, "ex", "k", b"5", False)]
    assert publisher.republished == 2
    publish(b"6")
    assert published(new) == [(1, "ex", "k", b"6", False)]
    new.broker.send(1, m.Basic.Ack(3, True))
    new.broker.send(1, m.Basic.Ack(5, True))
    assert all(results[body] == [None] for body in results), results
    assert publisher.pending == 0
    new.broker.expect_nothing()


def test_at_least_once_republishes_after_each_of_several_losses() -> None:
    sim = ServiceSim()
    conn = sim.open()
    publisher = start_publisher(sim, conn, at_least_once=True)
    log: list[Any] = []
    fired(publisher.publish("ex", "k", b"m"), log)
    assert published(conn) == [(1, "ex", "k", b"m", False)]
    second = reopen_publisher(sim, conn)
    assert published(second) == [(1, "ex", "k", b"m", False)]
    third = reopen_publisher(sim, second)
    assert published(third) == [(1, "ex", "k", b"m", False)]
    assert log == []
    third.broker.send(1, m.Basic.Ack(1, False))
    assert log == [None]
    assert publisher.republished == 2


def test_a_nack_after_republishing_is_final() -> None:
    sim = ServiceSim()
    conn = sim.open()
    publisher = start_publisher(sim, conn, at_least_once=True)
    d = publisher.publish("ex", "k", b"m")
    conn.broker.commands()
    new = reopen_publisher(sim, conn)
    assert published(new) == [(1, "ex", "k", b"m", False)]
    new.broker.send(1, m.Basic.Nack(1, False, False))
    failure(d, NackError)
    assert publisher.pending == 0
    third = reopen_publisher(sim, new)
    third.broker.expect_nothing()


def test_max_pending_is_a_bound() -> None:
    sim = ServiceSim()
    conn = sim.open()
    publisher = start_publisher(sim, conn, at_least_once=True, max_pending=2)
    first = publisher.publish("ex", "k", b"1")
    publisher.publish("ex", "k", b"2")
    conn.broker.commands()
    error = failure(publisher.publish("ex", "k", b"3"), FlowControlError)
    assert "max_pending" in str(error)
    conn.broker.expect_nothing()
    conn.broker.send(1, m.Basic.Ack(1, False))
    success(first)
    publisher.publish("ex", "k", b"3")  # room again
    assert published(conn) == [(1, "ex", "k", b"3", False)]
    # held messages count too
    conn.lose_uncleanly()
    failure(publisher.publish("ex", "k", b"4"), FlowControlError)
    assert publisher.pending == 2


def test_max_pending_must_be_positive() -> None:
    sim = ServiceSim()
    with pytest.raises(ValueError, match="max_pending"):
        Publisher(sim.service, max_pending=0)


def test_a_channel_error_is_final_not_retried() -> None:
    sim = ServiceSim()
    conn = sim.open()
    publisher = start_publisher(sim, conn, at_least_once=True)
    d = publisher.publish("missing", "k", b"m")
    conn.broker.commands()
    with capture_logs():
        conn.broker.close_channel(1, 404, "NOT_FOUND - no exchange 'missing' in vhost '/'",
                                  60, 40)
    assert conn.broker.methods() == [(1, m.Channel.CloseOk())]
    error = failure(d, OutcomeUnknownError)
    assert isinstance(error.reason, NotFound)  # type: ignore[attr-defined]
    assert publisher.pending == 0
    # the robust channel reopens (confirm mode again); the message is not published again
    sim.advance(0)
    conn.open_ok(1)
    conn.step(1, m.Confirm.Select(False), m.Confirm.SelectOk())
    conn.broker.expect_nothing()
    new = reopen_publisher(sim, conn)
    new.broker.expect_nothing()


def test_messages_published_while_the_channel_reopens_are_sent_once_it_is_open() -> None:
    sim = ServiceSim()
    conn = sim.open()
    publisher = start_publisher(sim, conn, at_least_once=True)
    bad = publisher.publish("missing", "k", b"bad")
    conn.broker.commands()
    with capture_logs():
        conn.broker.close_channel(1, 404, "NOT_FOUND - no exchange 'missing'", 60, 40)
    conn.broker.methods()
    failure(bad, OutcomeUnknownError)
    good = publisher.publish("ex", "k", b"good")  # the channel is reopening: held
    conn.broker.expect_nothing()
    no_result(good)
    sim.advance(0)
    conn.open_ok(1)
    conn.step(1, m.Confirm.Select(False), m.Confirm.SelectOk())
    # the service stayed open, so no state change announces the reopened channel
    assert sim.states == ["connecting", "open"]
    assert published(conn) == [(1, "ex", "k", b"good", False)]
    conn.broker.send(1, m.Basic.Ack(1, False))
    success(good)


def test_held_messages_fail_when_the_service_stops() -> None:
    sim = ServiceSim()
    conn = sim.open()
    publisher = start_publisher(sim, conn, at_least_once=True)
    log: list[Any] = []
    tried = fired(publisher.publish("ex", "k", b"1"), log)
    conn.broker.commands()
    conn.lose_uncleanly()
    never_sent = fired(publisher.publish("ex", "k", b"2"), log)
    assert log == []
    success(sim.service.stopService())
    # held messages can never be sent now: they must not stay pending forever
    assert len(log) == 2
    error = failure(tried, OutcomeUnknownError)  # it may have reached the broker
    assert "stopped" in str(error)
    failure(never_sent, ServiceStopped)  # it certainly did not
    assert publisher.pending == 0


def test_unconfirmed_messages_fail_when_the_service_stops() -> None:
    sim = ServiceSim()
    conn = sim.open()
    publisher = start_publisher(sim, conn, at_least_once=True)
    log: list[Any] = []
    d = fired(publisher.publish("ex", "k", b"1"), log)
    conn.broker.commands()
    stopped = sim.service.stopService()
    conn.close_by_client()
    success(stopped)
    assert len(log) == 1
    failure(d, OutcomeUnknownError)
    assert publisher.pending == 0
