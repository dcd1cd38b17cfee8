"""`AMQPProtocol` over a `StringTransport` with a `Clock`: handshake, timeouts, heartbeats,
closing, and how every pending Deferred ends when the connection does.

The broker side is played with the real codec (`twistedsim`); each test checks both the
Deferred outcomes and the exact frames the client wrote.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet import error as terror
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twistedsim import (
    HEADER_0_8,
    HEADER_0_9_1,
    Harness,
    HeartbeatMarker,
    TwistedBroker,
    capture_logs,
    connect,
    failure,
    no_result,
    no_unhandled_errors,  # noqa: F401 - a fixture
    send_start,
    send_tune,
    start,
    success,
)

import txpika
from txpika import spec
from txpika.connection import VirtualHostAccessRefused
from txpika.errors import (
    AccessRefused,
    AuthenticationError,
    ChannelClosedByClient,
    ConnectionClosedByClient,
    ConnectionForced,
    ConnectionLost,
    HeartbeatTimeout,
    NotAllowed,
    OutcomeUnknownError,
    ProtocolError,
    UsageError,
)
from txpika.frames import HEARTBEAT
from txpika.parameters import ConnectionParameters
from txpika.protocol import CLOSE_TIMEOUT, AMQPClientFactory, AMQPProtocol

m = spec

# Fails a test that leaves a failed Deferred nobody handled (see twistedsim).
pytestmark = pytest.mark.usefixtures("no_unhandled_errors")


def _pending_work(h: Harness) -> dict[str, defer.Deferred]:
    """One of each kind of pending Deferred: an RPC, an unconfirmed publish, a channel being
    opened, a consumer's get() and a channel close; checks the frames they wrote."""
    rpc_channel = h.channel()
    confirm_channel = h.confirm_channel()
    consumer_channel = h.channel()
    closing_channel = h.channel()
    work = {
        "rpc": rpc_channel.queue_declare("q1"),
        "confirm": confirm_channel.basic_publish("ex", "rk", b"body"),
    }
    consume = consumer_channel.basic_consume("q2")
    commands = h.broker.commands()
    assert [(c.channel, c.method, c.body) for c in commands] == [
        (1, m.Queue.Declare(0, "q1", arguments={}), None),
        (2, m.Basic.Publish(0, "ex", "rk"), b"body"),
        (3, m.Basic.Consume(0, "q2", arguments={}), None),
    ]
    h.broker.send(3, m.Basic.ConsumeOk("ctag"))
    consumer = success(consume)
    work["get"] = consumer.get()
    work["open"] = h.protocol.channel()
    h.expect((5, m.Channel.Open()))
    work["close"] = closing_channel.close()
    h.expect((4, m.Channel.Close(200, "Normal close", 0, 0)))
    for d in work.values():
        no_result(d)
    work["ready"] = h.protocol.ready
    work["closed"] = h.protocol.when_closed()
    no_result(work["closed"])
    success(work.pop("ready"))
    return work


def _check_failed_with(work: dict[str, defer.Deferred], cls: type[BaseException]) -> BaseException:
    error = failure(work["rpc"], cls)
    assert failure(work["open"], cls) is error
    assert failure(work["get"], cls) is error
    outcome = failure(work["confirm"], OutcomeUnknownError)
    assert outcome.reason is error
    # A channel that was closing: its close Deferred fires (it is closed now).
    assert success(work["close"]) is None
    return error


# -- handshake ---------------------------------------------------------------------------------

def test_handshake_bytes_then_ready() -> None:
    params = ConnectionParameters(username="alice", password="s3cr3t!", virtual_host="prod",
                                  heartbeat=30, channel_max=100, frame_max=65536,
                                  connection_name="worker-1", locale="en_US")
    h = start(params)
    assert h.transport.producer is not None and h.transport.streaming
    ready1 = h.protocol.ready
    ready2 = h.protocol.ready
    assert ready1 is not ready2
    start_ok = send_start(h)
    assert start_ok.mechanism == "PLAIN"
    assert start_ok.response == b"\0alice\0s3cr3t!"
    assert start_ok.locale == "en_US"
    props = start_ok.client_properties
    assert props["product"] == "txpika" and props["connection_name"] == "worker-1"
    assert props["capabilities"]["publisher_confirms"] is True
    assert props["capabilities"]["authentication_failure_close"] is True
    no_result(ready1)
    open_ = send_tune(h, server_tune=(2047, 131072, 60), expect_tune_ok=(100, 65536, 30))
    assert open_ == m.Connection.Open("prod")
    no_result(ready1)
    h.broker.send(0, m.Connection.OpenOk(""))
    assert success(ready1) is h.protocol and success(ready2) is h.protocol
    assert success(h.protocol.ready) is h.protocol  # a fresh, fired Deferred
    assert h.protocol.is_open and not h.protocol.is_blocked
    assert h.protocol.server_properties["product"] == "BrokerSim"
    assert h.protocol.dialect == "0-9-1"
    h.broker.expect_nothing()
    # Only the heartbeat timer is left: the handshake timeout was cancelled.
    (call,) = h.clock.getDelayedCalls()
    assert call.getTime() == 15.0


def test_handshake_0_8() -> None:
    h = start(ConnectionParameters(protocol="0-8"))
    assert h.broker.protocol_header == HEADER_0_8
    ready = h.protocol.ready
    start_ok = send_start(h)
    assert "capabilities" not in start_ok.client_properties
    send_tune(h)
    h.broker.send(0, h.m.Connection.OpenOk(""))
    assert success(ready) is h.protocol and h.protocol.dialect == "0-8"


def test_factory_builds_protocols_with_its_parameters_and_clock() -> None:
    clock = Clock()
    params = ConnectionParameters(heartbeat=5)
    factory = AMQPClientFactory(params, clock)
    proto = factory.buildProtocol(None)
    assert isinstance(proto, AMQPProtocol)
    assert proto.parameters is params and proto.clock is clock and proto.factory is factory
    transport = StringTransport()
    proto.makeConnection(transport)
    assert transport.value() == HEADER_0_9_1


@pytest.mark.parametrize("stage", ["await-start", "await-tune", "await-open-ok"])
def test_connection_timeout_when_the_peer_is_silent(stage: str) -> None:
    h = start(ConnectionParameters(connection_timeout=5))
    ready = h.protocol.ready
    closed = h.protocol.when_closed()
    if stage != "await-start":
        send_start(h)
    if stage == "await-open-ok":
        send_tune(h)
    h.clock.advance(4.999)
    no_result(ready)
    assert not h.transport.disconnected
    h.clock.advance(0.001)
    error = failure(ready, defer.TimeoutError)
    assert "5 s" in str(error)
    assert h.transport.disconnected  # aborted
    h.broker.expect_nothing()  # no connection.close: the peer is not listening
    failure(h.protocol.ready, defer.TimeoutError)
    failure(h.protocol.channel(), defer.TimeoutError)
    no_result(closed)
    h.lose_uncleanly()
    assert success(closed) is error
    assert success(h.protocol.when_closed()) is error
    assert h.clock.getDelayedCalls() == []


def test_broker_version_mismatch_fails_ready() -> None:
    h = start()
    ready = h.protocol.ready
    h.broker.feed(b"AMQP\x00\x00\x08\x00")
    error = failure(ready, ProtocolError)
    assert "0.0.8.0" in str(error)
    assert h.transport.disconnecting
    h.broker.expect_nothing()


def test_bad_credentials_close_403() -> None:
    h = start(ConnectionParameters(password="s3cr3t!"))
    ready = h.protocol.ready
    closed = h.protocol.when_closed()
    send_start(h)
    h.broker.close_connection(403, "ACCESS_REFUSED - Login was refused using authentication "
                              "mechanism PLAIN")
    error = failure(ready, AuthenticationError)
    assert error.reply_code == 403 and "Login was refused" in error.reply_text
    assert "s3cr3t!" not in str(error)
    h.expect((0, m.Connection.CloseOk()))
    assert h.transport.disconnecting
    failure(h.protocol.ready, AuthenticationError)
    h.lose()
    assert success(closed) is error
    assert h.clock.getDelayedCalls() == []


def test_bad_credentials_transport_closed_after_start_ok() -> None:
    # A broker without authentication_failure_close just hangs up.
    h = start()
    ready = h.protocol.ready
    send_start(h)
    h.lose()
    error = failure(ready, AuthenticationError)
    assert success(h.protocol.when_closed()) is error


def test_vhost_refused_530_is_access_refused() -> None:
    h = start(ConnectionParameters(virtual_host="nope"))
    ready = h.protocol.ready
    send_start(h)
    assert send_tune(h) == m.Connection.Open("nope")
    h.broker.close_connection(530, "NOT_ALLOWED - vhost nope not found", 10, 40)
    error = failure(ready, AccessRefused)
    assert isinstance(error, VirtualHostAccessRefused) and isinstance(error, NotAllowed)
    assert error.reply_code == 530
    h.expect((0, m.Connection.CloseOk()))
    assert h.transport.disconnecting


def test_no_common_mechanism() -> None:
    h = start()
    ready = h.protocol.ready
    h.broker.send(0, m.Connection.Start(0, 9, {}, b"EXTERNAL", b"en_US"))
    failure(ready, AuthenticationError)
    h.broker.expect_nothing()
    assert h.transport.disconnecting


# -- heartbeats --------------------------------------------------------------------------------

def _heartbeats(h: Harness) -> int:
    commands = h.broker.commands()
    assert all(c.method == HeartbeatMarker() for c in commands), commands
    return len(commands)


def test_heartbeats_sent_when_idle() -> None:
    h = connect(server_tune=(2047, 131072, 10), expect_tune_ok=(2047, 131072, 10))
    h.clock.advance(5)
    h.broker.expect_nothing()
    h.broker.send(0, m.Connection.Blocked("x"))  # keep the peer alive: any frame counts
    h.broker.send(0, m.Connection.Unblocked())
    h.clock.advance(5)
    assert h.transport.value() == HEARTBEAT
    assert _heartbeats(h) == 1
    for _ in range(3):
        h.broker.feed(HEARTBEAT)
        h.clock.advance(5)
        h.broker.feed(HEARTBEAT)
        h.clock.advance(5)
        assert _heartbeats(h) == 1
    assert h.protocol.is_open


def test_no_heartbeat_while_the_client_writes() -> None:
    h = connect(server_tune=(2047, 131072, 10), expect_tune_ok=(2047, 131072, 10))
    channel = h.channel()
    for _ in range(6):
        h.clock.advance(4)
        h.broker.feed(HEARTBEAT)
        success(channel.basic_publish("", "rk", b"x"))
        assert [c.method for c in h.broker.commands()] == [m.Basic.Publish(0, "", "rk")]


def test_heartbeats_off() -> None:
    h = connect(ConnectionParameters(heartbeat=0), expect_tune_ok=(2047, 131072, 0))
    assert h.clock.getDelayedCalls() == []
    h.clock.advance(1000)
    h.broker.expect_nothing()
    assert h.protocol.is_open


def test_heartbeat_timeout_fails_everything() -> None:
    h = connect(server_tune=(2047, 131072, 10), expect_tune_ok=(2047, 131072, 10))
    work = _pending_work(h)
    closed = work.pop("closed")
    # The last frames in and out were at t=0, seen by the tick at t=5: a heartbeat is due
    # at t=15 and the peer is dead two intervals after t=5 (ticks come every 5 s).
    with capture_logs():
        h.clock.pump([0.5] * 29)  # small steps: Clock.advance runs late calls at the end time
        h.broker.expect_nothing()
        h.clock.pump([0.5])
        assert _heartbeats(h) == 1
        h.clock.pump([0.5] * 19)
        for d in work.values():
            no_result(d)
        assert not h.transport.disconnected and h.protocol.is_open
        h.clock.pump([0.5])
    error = _check_failed_with(work, HeartbeatTimeout)
    assert error.interval == 10 and "20 s" in str(error)
    assert h.transport.disconnected  # aborted, not closed politely
    h.broker.expect_nothing()
    assert not h.protocol.is_open
    failure(h.protocol.ready, HeartbeatTimeout)
    no_result(closed)
    h.lose_uncleanly()
    assert success(closed) is error
    assert h.clock.getDelayedCalls() == []


# -- connection lost ---------------------------------------------------------------------------

def test_connection_lost_fails_everything_once() -> None:
    h = connect()
    work = _pending_work(h)
    closed = work.pop("closed")
    h.lose_uncleanly()
    error = _check_failed_with(work, ConnectionLost)
    assert isinstance(error.reason, terror.ConnectionLost)
    assert error.__cause__ is error.reason
    assert success(closed) is error
    assert success(h.protocol.when_closed()) is error
    failure(h.protocol.ready, ConnectionLost)
    failure(h.protocol.channel(), ConnectionLost)
    assert not h.protocol.is_open
    assert h.clock.getDelayedCalls() == []
    h.broker.expect_nothing()
    # A second report changes nothing.
    h.lose()
    assert success(h.protocol.when_closed()) is error


def test_connection_lost_during_handshake() -> None:
    h = start()
    ready = h.protocol.ready
    closed = h.protocol.when_closed()
    h.lose()
    error = failure(ready, ConnectionLost)
    assert isinstance(error.reason, terror.ConnectionDone)
    assert success(closed) is error
    assert h.clock.getDelayedCalls() == []


def test_connection_lost_without_reason() -> None:
    h = connect()
    closed = h.protocol.when_closed()
    h.protocol.connectionLost(None)
    assert isinstance(success(closed), ConnectionLost)


# -- close -------------------------------------------------------------------------------------

def test_close_sends_close_and_fires_after_close_ok_and_connection_lost() -> None:
    h = connect()
    work = _pending_work(h)
    closed = work.pop("closed")
    d = h.protocol.close()
    h.expect((0, m.Connection.Close(200, "Normal shutdown", 0, 0)))
    assert not h.protocol.is_open
    no_result(d)
    for pending in work.values():
        no_result(pending)
    d2 = h.protocol.close()  # closing twice: nothing more is written
    h.broker.expect_nothing()
    h.broker.send(0, m.Connection.CloseOk())
    error = _check_failed_with(work, ConnectionClosedByClient)
    assert error.reply_code == 200
    assert h.transport.disconnecting and not h.transport.disconnected
    no_result(d)
    no_result(closed)
    h.lose()
    assert success(d) is None and success(d2) is None
    assert success(closed) is error
    assert success(h.protocol.close()) is None
    assert h.clock.getDelayedCalls() == []


def test_close_with_code() -> None:
    h = connect()
    closed = h.protocol.when_closed()
    d = h.protocol.close(320, "going away")
    h.expect((0, m.Connection.Close(320, "going away", 0, 0)))
    h.broker.send(0, m.Connection.CloseOk())
    h.lose()
    success(d)
    error = success(closed)
    assert type(error) is ConnectionClosedByClient and error.reply_code == 320


def test_close_timeout_aborts() -> None:
    h = connect()
    channel = h.channel()
    rpc = channel.queue_declare("q")
    h.expect((1, m.Queue.Declare(0, "q")))
    d = h.protocol.close()
    h.expect((0, m.Connection.Close(200, "Normal shutdown", 0, 0)))
    h.clock.advance(CLOSE_TIMEOUT - 0.01)
    assert not h.transport.disconnected
    h.clock.advance(0.01)
    assert h.transport.disconnected
    no_result(d)
    h.lose_uncleanly()
    assert success(d) is None
    error = failure(rpc, ConnectionClosedByClient)
    assert success(h.protocol.when_closed()) is error


def test_crossing_close() -> None:
    h = connect()
    d = h.protocol.close()
    h.expect((0, m.Connection.Close(200, "Normal shutdown", 0, 0)))
    h.broker.close_connection(320, "shutdown")
    h.expect((0, m.Connection.CloseOk()))
    assert h.transport.disconnecting
    h.lose()
    success(d)
    assert isinstance(success(h.protocol.when_closed()), ConnectionClosedByClient)


def test_close_during_handshake() -> None:
    h = start()
    ready = h.protocol.ready
    d = h.protocol.close()
    failure(ready, ConnectionClosedByClient)
    assert h.transport.disconnecting
    h.broker.expect_nothing()
    h.lose()
    success(d)


def test_broker_connection_close_320_fails_everything() -> None:
    h = connect()
    work = _pending_work(h)
    closed = work.pop("closed")
    with capture_logs() as logs:
        h.broker.close_connection(320, "CONNECTION_FORCED - broker forced connection closure")
    error = _check_failed_with(work, ConnectionForced)
    assert error.reply_code == 320
    h.expect((0, m.Connection.CloseOk()))
    assert h.transport.disconnecting and not h.transport.disconnected
    assert any("CONNECTION_FORCED" in str(e.get("error")) for e in logs.events)
    failure(h.protocol.ready, ConnectionForced)
    failure(h.protocol.channel(), ConnectionForced)
    no_result(closed)
    h.lose()
    assert success(closed) is error  # the broker's reason, not the transport's


def test_close_after_broker_close_fires_once_transport_is_gone() -> None:
    h = connect()
    h.broker.close_connection(320, "bye")
    h.expect((0, m.Connection.CloseOk()))
    d = h.protocol.close()
    h.broker.expect_nothing()
    no_result(d)
    h.lose()
    assert success(d) is None


def test_protocol_error_from_the_broker() -> None:
    h = connect()
    channel = h.channel()
    rpc = channel.queue_declare("q")
    h.expect((1, m.Queue.Declare(0, "q")))
    h.broker.send(7, m.Queue.DeclareOk("q", 0, 0))  # a channel that is not open
    error = failure(rpc, ProtocolError)
    assert error.reply_code == 504
    ((ch, close),) = h.broker.methods()
    assert ch == 0 and close.reply_code == 504
    assert not h.transport.disconnecting
    h.clock.advance(CLOSE_TIMEOUT)
    assert h.transport.disconnected
    h.lose_uncleanly()
    assert success(h.protocol.when_closed()) is error


# -- misc --------------------------------------------------------------------------------------

def test_channel_numbers() -> None:
    h = connect()
    assert h.channel(5).channel_number == 5
    assert h.channel().channel_number == 1
    d = h.protocol.channel(5)
    failure(d, UsageError)
    h.broker.expect_nothing()


def test_channel_before_open_is_a_usage_error() -> None:
    h = start()
    failure(h.protocol.channel(), UsageError)
    send_start(h)
    failure(h.protocol.channel(), UsageError)
    h.broker.expect_nothing()


def test_frames_split_across_reads() -> None:
    h = connect()
    channel = h.channel()
    d = channel.basic_get("q")
    h.expect((1, m.Basic.Get(0, "q", False)))
    data = h.broker.content_bytes(1, m.Basic.GetOk(1, False, "", "q", 0), b"hello world")
    for i in range(len(data) - 1):
        h.protocol.dataReceived(data[i:i + 1])
        no_result(d)
    h.protocol.dataReceived(data[-1:])
    assert success(d).body == b"hello world"


def test_channel_refused() -> None:
    h = connect()
    d = h.protocol.channel()
    h.expect((1, m.Channel.Open()))
    h.broker.close_channel(1, 403, "ACCESS_REFUSED")
    failure(d, AccessRefused)
    h.expect((1, m.Channel.CloseOk()))
    assert h.channel().channel_number == 1


def test_update_secret() -> None:
    h = connect()
    d = h.protocol.update_secret("token-2", "refresh")
    h.expect((0, m.Connection.UpdateSecret(b"token-2", "refresh")))
    no_result(d)
    h.broker.send(0, m.Connection.UpdateSecretOk())
    assert success(d) is None


def test_update_secret_on_0_8_is_a_usage_error() -> None:
    h = start(ConnectionParameters(protocol="0-8"))
    ready = h.protocol.ready
    send_start(h)
    send_tune(h)
    h.broker.send(0, h.m.Connection.OpenOk(""))
    success(ready)
    failure(h.protocol.update_secret("x"), UsageError)
    h.broker.expect_nothing()


def test_update_secret_fails_when_the_connection_closes() -> None:
    h = connect()
    d = h.protocol.update_secret(b"token-2")
    h.expect((0, m.Connection.UpdateSecret(b"token-2", "")))
    h.broker.close_connection(320, "bye")
    failure(d, ConnectionForced)


def test_channel_close() -> None:
    h = connect()
    channel = h.channel()
    rpc = channel.queue_declare("q")
    h.expect((1, m.Queue.Declare(0, "q")))
    d = channel.close()
    h.expect((1, m.Channel.Close(200, "Normal close", 0, 0)))
    d2 = channel.close()  # closing twice: nothing more is written
    h.broker.expect_nothing()
    no_result(d)
    no_result(d2)
    h.broker.send(1, m.Channel.CloseOk())
    assert success(d) is None and success(d2) is None
    assert success(channel.close()) is None
    failure(rpc, ChannelClosedByClient)
    assert not channel.is_open
    failure(channel.queue_declare("q"), ChannelClosedByClient)
    h.broker.expect_nothing()


# -- connect() ---------------------------------------------------------------------------------

def _connected(reactor: MemoryReactorClock) -> tuple[AMQPProtocol, Harness]:
    (host, port, factory, _timeout, _bind) = reactor.tcpClients[-1]
    assert (host, port) == ("127.0.0.1", 5673)
    wrapper = factory.buildProtocol(None)
    transport = StringTransport()
    wrapper.makeConnection(transport)
    proto = wrapper._wrappedProtocol
    assert isinstance(proto, AMQPProtocol)
    return proto, Harness(proto, transport, reactor, TwistedBroker(proto, transport))


def test_connect_fires_after_open_ok() -> None:
    reactor = MemoryReactorClock()
    d = txpika.connect(reactor, "tcp:127.0.0.1:5673", heartbeat=0, virtual_host="v")
    no_result(d)
    proto, h = _connected(reactor)
    assert proto.clock is reactor and proto.parameters.virtual_host == "v"
    assert h.broker.read() == [] and h.broker.protocol_header == HEADER_0_9_1
    send_start(h)
    assert send_tune(h, expect_tune_ok=(2047, 131072, 0)) == m.Connection.Open("v")
    no_result(d)
    h.broker.send(0, m.Connection.OpenOk(""))
    assert success(d) is proto
    assert reactor.getDelayedCalls() == []


def test_connect_handshake_timeout() -> None:
    reactor = MemoryReactorClock()
    d = txpika.connect(reactor, "tcp:127.0.0.1:5673", connection_timeout=3)
    _proto, h = _connected(reactor)
    send_start(h)
    reactor.advance(3)
    failure(d, defer.TimeoutError)
    assert h.transport.disconnected


def test_connect_tcp_timeout_is_a_timeout_error() -> None:
    reactor = MemoryReactorClock()
    d = txpika.connect(reactor, "tcp:127.0.0.1:5673", connection_timeout=3)
    reactor.advance(3.9)
    no_result(d)
    reactor.advance(0.1)
    error = failure(d, defer.TimeoutError)
    assert "127.0.0.1" in str(error) or "tcp:" in str(error)


def test_connect_failure_from_the_tcp_connect_timeout_is_a_timeout_error() -> None:
    reactor = MemoryReactorClock()
    d = txpika.connect(reactor, "tcp:127.0.0.1:5673", connection_timeout=3)
    (_host, _port, factory, _timeout, _bind) = reactor.tcpClients[-1]
    factory.clientConnectionFailed(None, Failure(terror.TimeoutError()))
    failure(d, defer.TimeoutError)


def test_connect_refused() -> None:
    reactor = MemoryReactorClock()
    d = txpika.connect(reactor, "tcp:127.0.0.1:5673")
    (_host, _port, factory, _timeout, _bind) = reactor.tcpClients[-1]
    factory.clientConnectionFailed(None, Failure(terror.ConnectionRefusedError()))
    failure(d, terror.ConnectionRefusedError)
    assert reactor.getDelayedCalls() == []


def test_connect_cancelled_by_the_caller_is_not_a_timeout() -> None:
    reactor = MemoryReactorClock()
    d = txpika.connect(reactor, "tcp:127.0.0.1:5673")
    d.cancel()
    error = failure(d)
    assert not isinstance(error, defer.TimeoutError)
    assert isinstance(error, (defer.CancelledError, terror.ConnectingCancelledError))


def test_connect_auth_failure() -> None:
    reactor = MemoryReactorClock()
    d = txpika.connect(reactor, "tcp:127.0.0.1:5673")
    _proto, h = _connected(reactor)
    send_start(h)
    h.broker.close_connection(403, "ACCESS_REFUSED")
    failure(d, AuthenticationError)
