"""`AMQPService` on a `MemoryReactorClock`: backoff, several brokers, states and their
listeners, `connection()`, stopping.

Every connection attempt is a recorded ``connectTCP`` (`servicesim`); the brokers are played
with the real codec, and the frames the client writes are checked.
"""

from __future__ import annotations

import random

import pytest
from servicesim import ATTEMPT_DELAY, MapResolver, ServiceSim, fixed_policy
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twistedsim import (
    capture_logs,
    failure,
    no_result,
    no_unhandled_errors,  # noqa: F401 - a fixture
    send_start,
    send_tune,
    success,
)

from txpika import spec
from txpika.client import STOP_TIMEOUT, AMQPService
from txpika.errors import ConnectionRecovering, ServiceStopped, UsageError
from txpika.protocol import AMQPProtocol

m = spec

pytestmark = pytest.mark.usefixtures("no_unhandled_errors")

CLUSTER = ["amqp://alice:s3cret-pw@node1:5672/", "amqp://alice:s3cret-pw@node2:5673/prod",
           "amqp://alice:s3cret-pw@node3/"]
NODES = MapResolver({"node1": "10.0.0.1", "node2": "10.0.0.2", "node3": "10.0.0.3"})


def cluster(**kw: object) -> ServiceSim:
    return ServiceSim(CLUSTER, resolver=MapResolver(NODES.table), **kw)  # type: ignore[arg-type]


def retry_at(sim: ServiceSim) -> float:
    """The time of the one scheduled reconnect."""
    calls = [c for c in sim.reactor.getDelayedCalls() if "_reconnect" in repr(c.func)]
    assert len(calls) == 1, sim.reactor.getDelayedCalls()
    return calls[0].getTime()


# -- backoff --------------------------------------------------------------------------------------

def test_failed_attempts_are_retried_after_the_policy_delays() -> None:
    policy = fixed_policy(2.0, 5.0, 7.5)
    sim = ServiceSim(policy=policy)
    sim.start()
    assert sim.pending() == [("10.0.0.1", 5672)]
    for attempt, delay in enumerate([2.0, 5.0, 7.5, 7.5], start=1):
        sim.refuse()
        assert policy.calls == list(range(1, attempt + 1))  # type: ignore[attr-defined]
        failed_at = sim.reactor.seconds()
        assert retry_at(sim) == pytest.approx(failed_at + delay)
        sim.advance(delay - 0.01)
        assert sim.pending() == []
        sim.advance(0.01)
        assert sim.pending() == [("10.0.0.1", 5672)]
    assert sim.service.state == "connecting"
    sim.accept()
    assert sim.service.state == "open"


def test_the_attempt_counter_resets_after_a_success() -> None:
    policy = fixed_policy(1.0, 2.0, 3.0)
    sim = ServiceSim(policy=policy)
    sim.start()
    sim.refuse()
    sim.advance(1.0)
    sim.refuse()
    sim.advance(2.0)
    assert policy.calls == [1, 2]  # type: ignore[attr-defined]
    conn = sim.accept()
    conn.lose_uncleanly()
    # The loss counts as the first failure in a row again: the first delay, not the third.
    assert policy.calls == [1, 2, 1]  # type: ignore[attr-defined]
    assert retry_at(sim) == pytest.approx(sim.reactor.seconds() + 1.0)
    sim.advance(1.0)
    sim.refuse()
    assert policy.calls == [1, 2, 1, 2]  # type: ignore[attr-defined]


def test_a_failed_handshake_counts_as_a_failed_attempt() -> None:
    policy = fixed_policy(1.0, 4.0)
    sim = ServiceSim(policy=policy)
    sim.start()
    conn = sim.accept(handshake=False)
    # The broker refuses the virtual host: connection.close 530 instead of open-ok.
    conn.broker.send(0, m.Connection.Start(0, 9, {}, b"PLAIN", b"en_US"))
    conn.broker.methods()  # start-ok
    conn.broker.send(0, m.Connection.Tune(2047, 131072, 0))
    conn.broker.methods()  # tune-ok, open
    conn.broker.close_connection(530, "NOT_ALLOWED - vhost / not found")
    assert conn.broker.methods() == [(0, m.Connection.CloseOk())]
    conn.finish_close()
    assert policy.calls == [1]  # type: ignore[attr-defined]
    assert sim.service.state == "connecting"
    sim.advance(1.0)
    sim.refuse()
    assert policy.calls == [1, 2]  # type: ignore[attr-defined]


@pytest.mark.parametrize("jitter", [0.0, 0.999])
def test_the_default_policy_is_exponential_with_bounded_jitter(
        monkeypatch: pytest.MonkeyPatch, jitter: float) -> None:
    monkeypatch.setattr(random, "random", lambda: jitter)
    reactor = MemoryReactorClock()
    reactor.installNameResolver(MapResolver())
    service = AMQPService(reactor, "amqp://10.0.0.1/")
    service.startService()
    delays = []
    for _ in range(8):
        _host, _port, factory, _timeout, _bind = reactor.tcpClients[-1]
        factory.clientConnectionFailed(reactor.connectors[-1],
                                       Failure(ConnectionRefusedError()))
        reactor.advance(ATTEMPT_DELAY)
        (call,) = [c for c in reactor.getDelayedCalls() if "_reconnect" in repr(c.func)]
        delay = call.getTime() - reactor.seconds()
        delays.append(delay)
        reactor.advance(delay)
    # 0.5 * 2 ** attempt, at most 30 s, plus a jitter of less than a second.
    assert delays == pytest.approx([1.0 + jitter, 2.0 + jitter, 4.0 + jitter, 8.0 + jitter,
                                    16.0 + jitter, 30.0 + jitter, 30.0 + jitter,
                                    30.0 + jitter])
    service.stopService()


def test_the_default_policy_uses_real_randomness_within_its_bounds() -> None:
    reactor = MemoryReactorClock()
    reactor.installNameResolver(MapResolver())
    service = AMQPService(reactor, "amqp://10.0.0.1/")
    service.startService()
    jitters = []
    for attempt in range(1, 9):
        reactor.tcpClients[-1][2].clientConnectionFailed(
            reactor.connectors[-1], Failure(ConnectionRefusedError()))
        reactor.advance(ATTEMPT_DELAY)
        (call,) = [c for c in reactor.getDelayedCalls() if "_reconnect" in repr(c.func)]
        delay = call.getTime() - reactor.seconds()
        base = min(0.5 * 2 ** attempt, 30.0)
        assert base <= delay < base + 1.0
        jitters.append(delay - base)
        reactor.advance(delay)
    assert len(set(jitters)) > 1  # jittered, not constant
    service.stopService()


# -- several brokers ------------------------------------------------------------------------------

def test_brokers_are_tried_in_turn() -> None:
    sim = cluster()
    sim.start()
    tried = []
    for _ in range(4):
        tried.extend(sim.pending())
        sim.refuse()
        sim.advance(1.0)
    assert tried == [("10.0.0.1", 5672), ("10.0.0.2", 5673), ("10.0.0.3", 5672),
                     ("10.0.0.1", 5672)]
    assert sim.resolver.lookups == ["node1", "node2", "node3", "node1", "node2"]
    assert sim.pending() == [("10.0.0.2", 5673)]
    conn = sim.accept()
    assert conn.protocol.parameters.host == "node2"
    assert conn.protocol.parameters.virtual_host == "prod"
    assert sim.service.current_broker == "amqp://alice@node2:5673/prod"


def test_each_broker_gets_its_own_vhost_in_connection_open() -> None:
    sim = cluster()
    sim.start()
    sim.refuse()
    sim.advance(1.0)
    conn = sim.accept(handshake=False)
    send_start(conn)
    open_ = send_tune(conn, (2047, 131072, 60), (2047, 131072, 0))
    assert open_ == m.Connection.Open("prod", "", False)


def test_a_lost_connection_moves_to_the_next_broker() -> None:
    sim = cluster()
    sim.start()
    first = sim.accept()
    assert sim.service.current_broker == "amqp://alice@node1:5672/%2F"
    first.lose_uncleanly()
    assert sim.service.current_broker is None
    sim.advance(1.0)
    assert sim.pending() == [("10.0.0.2", 5673)]
    second = sim.accept()
    assert sim.service.current_broker == "amqp://alice@node2:5673/prod"
    assert success(sim.service.connection()) is second.protocol
    second.kill()
    sim.advance(1.0)
    assert sim.pending() == [("10.0.0.3", 5672)]
    sim.accept()
    assert sim.service.current_broker == "amqp://alice@node3:5672/%2F"


def test_the_password_appears_nowhere() -> None:
    with capture_logs() as logs:
        sim = cluster()
        sim.start()
        sim.refuse()
        sim.advance(1.0)
        conn = sim.accept()
        conn.lose_uncleanly()
        text = repr(sim.service)
    lines = [formatEvent(e) for e in logs.events] + [text]
    assert any("node2" in line for line in lines)
    assert not [line for line in lines if "s3cret" in line]


def test_no_broker_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one broker"):
        AMQPService(MemoryReactorClock(), [])


def test_a_malformed_url_is_an_error_naming_it_without_the_password() -> None:
    with pytest.raises(UsageError) as info:
        AMQPService(MemoryReactorClock(), "amqp://bob:pa55word@host:99999/")
    assert "99999" in str(info.value) and "pa55word" not in str(info.value)


# -- states ---------------------------------------------------------------------------------------

def test_states_from_closed_to_open_each_reported_in_the_same_turn() -> None:
    sim = ServiceSim()
    seen = sim.states
    assert sim.service.state == "closed" and seen == []
    sim.start()
    assert seen == ["connecting"]  # during startService itself
    conn = sim.accept(restore=False)
    # open only once the restore step is done: channel 1 opened and closed again
    conn.open_ok(1)
    assert seen == ["connecting"]
    got = conn.broker.methods()
    assert got == [(1, m.Channel.Close(200, "Normal close", 0, 0))]
    conn.broker.send(1, m.Channel.CloseOk())
    assert seen == ["connecting", "open"]
    assert sim.service.state == "open"


def test_blocked_and_unblocked() -> None:
    sim = ServiceSim()
    conn = sim.open()
    conn.broker.send(0, m.Connection.Blocked("low on memory"))
    assert sim.states == ["connecting", "open", "blocked"]
    # the connection is still usable (for consumers) while blocked
    assert success(sim.service.connection()) is conn.protocol
    conn.broker.send(0, m.Connection.Unblocked())
    assert sim.states == ["connecting", "open", "blocked", "open"]


def test_a_connection_opened_while_the_broker_blocks_starts_blocked() -> None:
    sim = ServiceSim()
    sim.start()
    conn = sim.accept(restore=False)
    conn.open_ok(1)
    conn.broker.send(0, m.Connection.Blocked("disk"))
    assert sim.states == ["connecting"]
    conn.close_ok(1)
    assert sim.states == ["connecting", "blocked"]


def test_recovering_after_a_loss_then_open_again() -> None:
    sim = ServiceSim()
    conn = sim.open()
    conn.lose_uncleanly()
    assert sim.states == ["connecting", "open", "recovering"]  # in connectionLost's turn
    waiting = sim.service.connection()
    no_result(waiting)
    sim.advance(1.0)
    sim.refuse()  # retries stay "recovering"
    sim.advance(1.0)
    assert sim.service.state == "recovering"
    second = sim.accept()
    assert sim.states == ["connecting", "open", "recovering", "open"]
    assert success(waiting) is second.protocol is not conn.protocol


def test_a_broker_close_is_a_loss_too() -> None:
    sim = ServiceSim()
    conn = sim.open()
    conn.broker.close_connection(320, "CONNECTION_FORCED - shutdown")
    assert conn.broker.methods() == [(0, m.Connection.CloseOk())]
    # Until the transport is gone, connection() does not hand out the closed protocol.
    waiting = sim.service.connection()
    no_result(waiting)
    conn.finish_close()
    assert sim.states == ["connecting", "open", "recovering"]
    sim.advance(1.0)
    second = sim.accept()
    assert sim.states == ["connecting", "open", "recovering", "open"]
    assert success(waiting) is second.protocol


def test_closed_after_stop_service_with_a_clean_connection_close() -> None:
    sim = ServiceSim()
    conn = sim.open()
    stopped = sim.service.stopService()
    assert sim.states == ["connecting", "open", "closed"]  # at once
    conn.step(0, m.Connection.Close(200, "Normal shutdown", 0, 0))
    no_result(stopped)
    conn.broker.send(0, m.Connection.CloseOk())
    assert conn.transport.disconnecting
    no_result(stopped)  # until the transport is gone
    conn.finish_close()
    assert success(stopped) is None
    assert not sim.service.running
    sim.advance(100)
    assert sim.pending() == []  # no reconnect
    assert sim.states == ["connecting", "open", "closed"]


def test_stop_service_does_not_wait_forever_for_close_ok() -> None:
    sim = ServiceSim()
    conn = sim.open()
    stopped = sim.service.stopService()
    conn.step(0, m.Connection.Close(200, "Normal shutdown", 0, 0))
    sim.advance(STOP_TIMEOUT)
    assert conn.transport.disconnected  # aborted
    no_result(stopped)
    conn.lose_uncleanly()
    assert success(stopped) is None
    sim.advance(100)
    assert sim.pending() == []


def test_stop_while_waiting_to_retry() -> None:
    sim = ServiceSim()
    conn = sim.open()
    conn.lose_uncleanly()
    stopped = sim.service.stopService()
    assert success(stopped) is None
    assert sim.states == ["connecting", "open", "recovering", "closed"]
    sim.advance(100)
    assert sim.pending() == []


def test_stop_while_a_connection_attempt_is_in_progress() -> None:
    sim = ServiceSim()
    sim.start()
    assert sim.pending()
    stopped = sim.service.stopService()
    assert success(stopped) is None
    assert sim.service.state == "closed"
    sim.advance(100)
    assert len(sim.attempts()) == 1


def test_stop_during_the_handshake_drops_the_half_open_connection() -> None:
    sim = ServiceSim()
    sim.start()
    conn = sim.accept(handshake=False)
    stopped = sim.service.stopService()
    assert sim.service.state == "closed"
    # Nothing may stay connected once the service is stopped.
    assert conn.transport.disconnecting or conn.transport.disconnected
    conn.lose_uncleanly()
    assert success(stopped) is None
    sim.advance(100)
    assert sim.pending() == []


def test_restart_after_stop() -> None:
    sim = ServiceSim()
    conn = sim.open()
    stopped = sim.service.stopService()
    conn.close_by_client()
    success(stopped)
    sim.service.startService()
    assert sim.service.state == "recovering"
    assert sim.pending() == [("10.0.0.1", 5672)]
    sim.accept()
    assert sim.states == ["connecting", "open", "closed", "recovering", "open"]


def test_a_failing_listener_is_logged_and_the_others_still_run() -> None:
    sim = ServiceSim()
    later: list[str] = []

    def broken(state: str) -> None:
        raise RuntimeError("listener bug")

    sim.service.add_state_listener(broken)
    sim.service.add_state_listener(later.append)
    with capture_logs() as logs:
        sim.start()
    assert later == ["connecting"]
    assert [e["log_failure"].value.args for e in logs.failures()] == [("listener bug",)]
    sim.service.remove_state_listener(broken)
    sim.accept()
    assert later == ["connecting", "open"]


# -- connection() ---------------------------------------------------------------------------------

def test_connection_before_start_fails_service_stopped() -> None:
    sim = ServiceSim()
    failure(sim.service.connection(), ServiceStopped)


def test_connection_waits_through_connecting() -> None:
    sim = ServiceSim()
    sim.start()
    d = sim.service.connection()
    sim.refuse()
    sim.advance(1.0)
    no_result(d)
    conn = sim.accept(restore=False)
    conn.open_ok(1)
    no_result(d)  # not before the restore is done
    conn.close_ok(1)
    proto = success(d)
    assert isinstance(proto, AMQPProtocol) and proto is conn.protocol and proto.is_open


def test_connection_when_open_fires_at_once() -> None:
    sim = ServiceSim()
    conn = sim.open()
    assert success(sim.service.connection(timeout=1)) is conn.protocol


def test_connection_timeout() -> None:
    sim = ServiceSim()
    sim.start()
    d = sim.service.connection(timeout=5)
    sim.advance(4.9)
    no_result(d)
    sim.advance(0.1)
    failure(d, defer.TimeoutError)
    assert sim.service._waiters == []
    sim.advance(10)
    sim.refuse()
    sim.advance(1)
    sim.accept()  # the timed-out waiter is not fired again
    assert sim.service.state == "open"


def test_connection_can_be_cancelled() -> None:
    sim = ServiceSim()
    sim.start()
    d = sim.service.connection()
    d.cancel()
    failure(d, defer.CancelledError)
    sim.accept()


def test_connection_waiters_fail_when_the_service_stops() -> None:
    sim = ServiceSim()
    conn = sim.open()
    conn.lose_uncleanly()
    d1 = sim.service.connection()
    d2 = sim.service.connection(timeout=30)
    sim.service.stopService()
    failure(d1, ServiceStopped)
    failure(d2, ServiceStopped)
    failure(sim.service.connection(), ServiceStopped)


def test_unavailable_says_why() -> None:
    sim = ServiceSim()
    assert isinstance(sim.service.unavailable(), ServiceStopped)
    sim.start()
    assert isinstance(sim.service.unavailable(), ConnectionRecovering)


# -- robust channel availability ------------------------------------------------------------------

def test_robust_channel_calls_fail_fast_while_recovering_and_after_stop() -> None:
    sim = ServiceSim()
    conn = sim.open()
    d = sim.service.channel()
    conn.open_ok(1)
    robust = success(d)
    assert robust.is_open
    conn.lose_uncleanly()
    assert not robust.is_open and robust.channel is None
    calls = [robust.queue_declare("q"), robust.exchange_declare("x"),
             robust.basic_publish("x", "k", b"b"), robust.basic_qos(prefetch_count=1),
             robust.basic_consume("q"), robust.basic_get("q"), robust.queue_bind("q", "x")]
    for call in calls:
        failure(call, ConnectionRecovering)
    assert conn.transport.value() == b""
    sim.service.stopService()
    for call in [robust.queue_declare("q"), robust.basic_publish("x", "k", b"b"),
                 robust.basic_consume("q")]:
        failure(call, ServiceStopped)
    failure(sim.service.channel(), ServiceStopped)


def test_channel_waits_for_the_service_to_be_open() -> None:
    sim = ServiceSim()
    sim.start()
    d = sim.service.channel()
    no_result(d)
    conn = sim.accept()
    conn.open_ok(1)
    robust = success(d)
    assert robust.channel is not None and robust.channel.channel_number == 1


# -- connections the service rejected -------------------------------------------------------------

def test_a_rejected_connection_is_closed_before_the_next_attempt() -> None:
    """The restore fails on connection 1, which is closed (its close-ok comes late). The
    service tries again once connection 1 is gone, never beside it, and the loss of
    connection 1 is not taken for the loss of connection 2."""
    calls: list[object] = []

    def setup(channel: object) -> None:
        calls.append(channel)
        if len(calls) == 1:
            raise RuntimeError("setup failed")

    sim = ServiceSim(setup=setup)
    sim.start()
    with capture_logs() as logs:
        first = sim.accept(restore=False)
        first.open_ok(1)
    assert [e for e in logs.events if "setup failed" in str(e.get("error"))]
    first.step(0, m.Connection.Close(200, "Normal shutdown", 0, 0))
    assert sim.service.state == "connecting"
    sim.advance(5.0)
    assert sim.pending() == []  # connection 1 is still closing: no second one beside it
    first.broker.send(0, m.Connection.CloseOk())
    first.finish_close()
    assert sim.service.state == "connecting"
    sim.advance(1.0)
    second = sim.accept(restore=False)
    second.open_ok(1)
    second.close_ok(1)
    assert sim.states == ["connecting", "open"]
    sim.advance(30)
    assert sim.pending() == []
    assert success(sim.service.connection()) is second.protocol
    # and the service still sees the loss of connection 2
    second.lose_uncleanly()
    assert sim.states == ["connecting", "open", "recovering"]
    sim.advance(1.0)
    assert sim.pending() == [("10.0.0.1", 5672)]


def test_a_connection_lost_during_the_handshake_is_retried() -> None:
    sim = ServiceSim()
    sim.start()
    conn = sim.accept(handshake=False)
    conn.lose_uncleanly()
    assert sim.service.state == "connecting"
    sim.advance(1.0)
    sim.accept()
    assert sim.states == ["connecting", "open"]


def test_a_channel_whose_opening_failed_is_not_reopened_later() -> None:
    sim = ServiceSim()
    conn = sim.open()
    d = sim.service.channel()
    conn.step(1, m.Channel.Open())
    conn.lose_uncleanly()  # before channel.open-ok
    failure(d)
    sim.advance(1.0)
    new = sim.accept()  # restore: channel 1 opened and closed
    new.broker.expect_nothing()  # no orphan channel nobody holds is opened
    assert sim.service.state == "open"


def test_stop_before_start() -> None:
    sim = ServiceSim()
    assert success(sim.service.stopService()) is None
    assert sim.service.state == "closed" and sim.states == []
    sim.advance(10)
    assert sim.pending() == []
