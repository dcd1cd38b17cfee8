"""The sans-IO connection core, driven by a scripted broker: bytes in, events and bytes out.

Every test asserts both the events the core reports and the exact methods it writes.
"""

from __future__ import annotations

import pytest
from brokersim import BrokerSim, Command, HeartbeatMarker, drain, normalize, open_connection

from txpika import events as ev
from txpika import spec, spec_0_8
from txpika.auth import AMQPlainCredentials, ExternalCredentials, PlainCredentials
from txpika.connection import (
    ChannelState,
    Connection,
    ConnState,
    VirtualHostAccessRefused,
)
from txpika.errors import (
    AccessRefused,
    AuthenticationError,
    ChannelClosed,
    ChannelClosedByBroker,
    ChannelClosedByClient,
    ChannelError,
    CommandInvalid,
    ConnectionClosed,
    ConnectionClosedByBroker,
    ConnectionClosedByClient,
    ConnectionForced,
    ContentTooLarge,
    FlowControlError,
    FrameError,
    HeartbeatTimeout,
    InternalError,
    InvalidPath,
    NoConsumers,
    NoRoute,
    NotAllowed,
    NotFound,
    NotImplemented_,
    PreconditionFailed,
    ProtocolError,
    ResourceError,
    ResourceLocked,
    SyntaxError_,
    UnexpectedFrame,
    UsageError,
)
from txpika.frames import HEARTBEAT, encode_body, encode_header, encode_method

HEADER_091 = b"AMQP\x00\x00\x09\x01"
HEADER_08 = b"AMQP\x01\x01\x08\x00"


def started(dialect=spec.DIALECT, mechanisms=b"PLAIN AMQPLAIN", **kw):
    """A core that sent start-ok (state AWAIT_TUNE)."""
    core = Connection(dialect=dialect, **kw)
    sim = BrokerSim(core)
    core.initiate()
    sim.read()
    version = (8, 0) if dialect.name == "0-8" else (0, 9)
    assert sim.send(0, dialect.module.Connection.Start(*version, {}, mechanisms,
                                                       b"en_US")) == []
    ((_, start_ok),) = sim.methods()
    assert type(start_ok) is dialect.module.Connection.StartOk
    return core, sim


def tuned(**kw):
    """A core that sent tune-ok and connection.open (state AWAIT_OPEN_OK)."""
    core, sim = started(**kw)
    assert sim.send(0, spec.Connection.Tune(2047, 131072, 60)) == []
    assert [type(m) for _, m in sim.methods()] == [spec.Connection.TuneOk,
                                                    spec.Connection.Open]
    assert core.state is ConnState.AWAIT_OPEN_OK
    return core, sim


def closed_event(events):
    assert len(events) == 1 and isinstance(events[0], ev.ConnectionClosed), events
    return events[0].error


# =========================================================================================
# Handshake
# =========================================================================================


def test_handshake_0_9_1():
    core, sim = open_connection()
    assert sim.protocol_header == HEADER_091
    assert (core.channel_max, core.frame_max, core.heartbeat) == (2047, 131072, 60)
    assert core.server_properties["product"] == "BrokerSim"


def test_handshake_0_8():
    core, sim = open_connection(dialect=spec_0_8.DIALECT)
    assert sim.protocol_header == HEADER_08
    assert core.dialect is spec_0_8.DIALECT
    assert core.is_open


def test_0_8_refuses_a_0_9_start():
    core = Connection(dialect=spec_0_8.DIALECT)
    sim = BrokerSim(core)
    core.initiate()
    sim.read()
    events = sim.send(0, spec_0_8.Connection.Start(0, 9, {}, b"PLAIN", b"en_US"))
    error = closed_event(events)
    assert type(error) is ProtocolError and "0-9" in error.reply_text
    sim.expect_nothing()
    assert core.state is ConnState.CLOSED


def test_0_9_1_refuses_an_8_0_start():
    core = Connection()
    sim = BrokerSim(core)
    core.initiate()
    sim.read()
    error = closed_event(sim.send(0, spec.Connection.Start(8, 0, {}, b"PLAIN", b"en_US")))
    assert type(error) is ProtocolError and "8-0" in error.reply_text
    sim.expect_nothing()


def test_handshake_amqplain():
    creds = AMQPlainCredentials("alice", "wonder land")
    core, _sim = open_connection(credentials=creds)
    assert core.is_open


def test_amqplain_response_bytes():
    _core, _sim = started(credentials=AMQPlainCredentials("u", "pw"))
    # Checked by hand rather than with the codec: no 4-byte table length in front.
    assert AMQPlainCredentials("u", "pw").response() == (
        b"\x05LOGINS\x00\x00\x00\x01u" + b"\x08PASSWORDS\x00\x00\x00\x02pw")


def test_handshake_external():
    core, _sim = open_connection(credentials=ExternalCredentials())
    assert core.is_open


def test_handshake_0_8_with_amqplain():
    core, _sim = open_connection(dialect=spec_0_8.DIALECT,
                                credentials=AMQPlainCredentials("guest", "guest"))
    assert core.is_open


def test_handshake_start_ok_plain_response_and_fields():
    core = Connection(virtual_host="/prod", connection_name="billing",
                      client_properties={"product": "mine", "x-extra": 5})
    sim = BrokerSim(core)
    core.initiate()
    sim.read()
    sim.send(0, spec.Connection.Start(0, 9, {}, b"AMQPLAIN PLAIN", b"en_US"))
    ((channel, start_ok),) = sim.methods()
    assert channel == 0
    assert start_ok.mechanism == "PLAIN"
    assert start_ok.response == b"\0guest\0guest"
    assert start_ok.locale == "en_US"
    props = start_ok.client_properties
    assert props["product"] == "mine"  # the caller's properties win
    assert props["x-extra"] == 5
    assert props["connection_name"] == "billing"
    assert props["capabilities"] == {
        "publisher_confirms": True, "exchange_exchange_bindings": True, "basic.nack": True,
        "consumer_cancel_notify": True, "connection.blocked": True,
        "authentication_failure_close": True, "per_consumer_qos": True,
        "direct_reply_to": True,
    }
    sim.send(0, spec.Connection.Tune(0, 0, 0))
    sim.expect((0, spec.Connection.TuneOk(2047, 131072, 60)), (0, spec.Connection.Open("/prod")))


def test_locale_falls_back_to_the_brokers_first():
    core = Connection(locale="fr_FR")
    sim = BrokerSim(core)
    core.initiate()
    sim.read()
    sim.send(0, spec.Connection.Start(0, 9, {}, b"PLAIN", b"de_DE en_GB"))
    ((_, start_ok),) = sim.methods()
    assert start_ok.locale == "de_DE"


def test_handshake_fed_byte_by_byte():
    core = Connection()
    sim = BrokerSim(core)
    core.initiate()
    sim.read()
    data = (encode_method(0, spec.Connection.Start(0, 9, {}, b"PLAIN", b"en_US"))
            + encode_method(0, spec.Connection.Tune(0, 0, 0))
            + encode_method(0, spec.Connection.OpenOk("")))
    events = []
    for i in range(len(data)):
        events += sim.feed(data[i:i + 1])
    assert [type(e) for e in events] == [ev.ConnectionOpened]
    assert [type(m) for _, m in sim.methods()] == [
        spec.Connection.StartOk, spec.Connection.TuneOk, spec.Connection.Open]


@pytest.mark.parametrize("creds", [PlainCredentials("guest", "guest"),
                                   AMQPlainCredentials("guest", "guest"),
                                   ExternalCredentials()], ids=lambda c: c.mechanism)
def test_mechanism_not_offered(creds):
    core = Connection(credentials=creds)
    sim = BrokerSim(core)
    core.initiate()
    sim.read()
    offered = b"SCRAM-SHA-1 XOAUTH2"
    error = closed_event(sim.send(0, spec.Connection.Start(0, 9, {}, offered, b"en_US")))
    assert type(error) is AuthenticationError
    assert creds.mechanism in str(error) and "SCRAM-SHA-1" in str(error)
    sim.expect_nothing()
    assert core.state is ConnState.CLOSED
    assert drain(core) == []


def test_no_mechanism_offered():
    core = Connection()
    sim = BrokerSim(core)
    core.initiate()
    sim.read()
    error = closed_event(sim.send(0, spec.Connection.Start(0, 9, {}, b"", b"")))
    assert type(error) is AuthenticationError
    sim.expect_nothing()


def test_secure_challenge_with_plain_is_an_authentication_error():
    core, sim = started()
    error = closed_event(sim.send(0, spec.Connection.Secure(b"more please")))
    assert type(error) is AuthenticationError
    assert "PLAIN" in str(error)
    sim.expect_nothing()
    assert core.state is ConnState.CLOSED


# -- tune ---------------------------------------------------------------------------------

# (client, server) -> tuned; 0 means no limit on either side.
LIMIT_CASES = [
    (2047, 2047, 2047),
    (2047, 100, 100),
    (100, 2047, 100),
    (0, 2047, 2047),
    (2047, 0, 2047),
    (65535, 0, 65535),
    (0, 65535, 65535),
    (1, 65535, 1),
]


@pytest.mark.parametrize(("client", "server", "tuned"), LIMIT_CASES)
def test_channel_max_negotiation(client, server, tuned):
    core, _sim = open_connection(channel_max=client, server_tune=(server, 131072, 60),
                                expect_tune_ok=(tuned, 131072, 60))
    assert core.channel_max == tuned


def test_channel_max_no_limit_on_either_side():
    core, _sim = open_connection(channel_max=0, server_tune=(0, 131072, 60))
    # Nothing to tell the broker (0 means no limit), but the core counts to the protocol's.
    assert core.channel_max == 65535
    assert core.open_channel(65535) == 65535
    with pytest.raises(UsageError):
        core.open_channel(65536)


FRAME_CASES = [
    (131072, 131072, 131072),
    (131072, 4096, 4096),
    (8192, 131072, 8192),
    (0, 131072, 131072),
    (131072, 0, 131072),
    (0, 0, 0),
    (4096, 4096, 4096),
]


@pytest.mark.parametrize(("client", "server", "tuned"), FRAME_CASES)
def test_frame_max_negotiation(client, server, tuned):
    core, _sim = open_connection(frame_max=client, server_tune=(2047, server, 60),
                                expect_tune_ok=(2047, tuned, 60))
    assert core.frame_max == tuned


HEARTBEAT_CASES = [
    (None, 60, 60),
    (None, 0, 0),
    (None, 5, 5),
    (0, 60, 0),
    (0, 0, 0),
    (30, 60, 30),
    (60, 30, 30),
    (30, 0, 30),
    (600, 580, 580),
]


@pytest.mark.parametrize(("client", "server", "tuned"), HEARTBEAT_CASES)
def test_heartbeat_negotiation(client, server, tuned):
    core, _sim = open_connection(heartbeat=client, server_tune=(2047, 131072, server),
                                expect_tune_ok=(2047, 131072, tuned))
    assert core.heartbeat == tuned


@pytest.mark.parametrize("server_frame_max", [1, 4095, 512])
def test_server_frame_max_below_minimum(server_frame_max):
    core, sim = started()
    error = closed_event(sim.send(0, spec.Connection.Tune(2047, server_frame_max, 60)))
    assert type(error) is ProtocolError
    assert str(server_frame_max) in str(error)
    sim.expect_nothing()
    assert core.state is ConnState.CLOSED


@pytest.mark.parametrize("kw", [dict(frame_max=4095), dict(frame_max=1),
                                dict(channel_max=-1), dict(channel_max=65536),
                                dict(heartbeat=-1), dict(heartbeat=65536)])
def test_constructor_refuses_bad_limits(kw):
    with pytest.raises(UsageError):
        Connection(**kw)


def test_initiate_twice():
    core = Connection()
    core.initiate()
    with pytest.raises(UsageError):
        core.initiate()
    assert core.data_to_send() == HEADER_091


def test_requests_before_open_raise_usage_error():
    core, sim = tuned()
    with pytest.raises(UsageError):
        core.open_channel()
    with pytest.raises(UsageError):
        core.update_secret(b"x", "r")
    sim.expect_nothing()


# -- refusals -------------------------------------------------------------------------------


def test_close_403_during_authentication():
    core, sim = started()
    events = sim.send(0, spec.Connection.Close(403, "ACCESS_REFUSED - Login was refused", 0, 0))
    error = closed_event(events)
    assert type(error) is AuthenticationError
    assert error.reply_code == 403 and "Login was refused" in error.reply_text
    sim.expect((0, spec.Connection.CloseOk()))
    assert core.state is ConnState.CLOSED


def test_close_403_in_reply_to_open():
    _core, sim = tuned()
    error = closed_event(sim.send(0, spec.Connection.Close(403, "no", 10, 40)))
    assert type(error) is AuthenticationError
    assert error.method_name == "connection.open"
    sim.expect((0, spec.Connection.CloseOk()))


def test_close_530_in_reply_to_open_is_vhost_refused():
    core, sim = tuned(virtual_host="/nope")
    events = sim.send(0, spec.Connection.Close(530, "NOT_ALLOWED - vhost /nope not found",
                                                10, 40))
    error = closed_event(events)
    assert type(error) is VirtualHostAccessRefused
    assert isinstance(error, AccessRefused)
    assert isinstance(error, ConnectionClosed)
    assert isinstance(error, NotAllowed)
    assert (error.reply_code, error.class_id, error.method_id) == (530, 10, 40)
    assert error.method_name == "connection.open"
    sim.expect((0, spec.Connection.CloseOk()))
    assert core.state is ConnState.CLOSED
    with pytest.raises(VirtualHostAccessRefused):
        core.open_channel()


def test_close_530_once_open_is_not_allowed():
    _core, sim = open_connection()
    error = closed_event(sim.send(0, spec.Connection.Close(530, "no", 0, 0)))
    assert type(error) is NotAllowed
    assert not isinstance(error, AccessRefused)


def test_connection_lost_while_awaiting_tune_is_an_authentication_error():
    core, _sim = started()
    core.connection_lost(ConnectionResetError("reset"))
    error = closed_event(drain(core))
    assert type(error) is AuthenticationError
    assert core.state is ConnState.CLOSED
    core.connection_lost(ConnectionResetError("again"))
    assert drain(core) == []


@pytest.mark.parametrize("state", ["await-start", "await-open-ok", "open"])
def test_connection_lost_elsewhere_reports_the_drivers_error(state):
    if state == "await-start":
        core = Connection()
        core.initiate()
    elif state == "await-open-ok":
        core, _sim = tuned()
    else:
        core, _sim = open_connection()
    lost = ConnectionResetError("reset")
    core.connection_lost(lost)
    assert closed_event(drain(core)) is lost
    assert core.state is ConnState.CLOSED
    if state == "open":
        with pytest.raises(ConnectionResetError):
            core.open_channel()


@pytest.mark.parametrize("dialect", [spec.DIALECT, spec_0_8.DIALECT], ids=["0-9-1", "0-8"])
@pytest.mark.parametrize("offered", [b"AMQP\x00\x00\x09\x01", b"AMQP\x01\x01\x08\x00",
                                     b"AMQP\x00\x01\x00\x00"])
def test_broker_answers_with_its_protocol_header(dialect, offered):
    core = Connection(dialect=dialect)
    sim = BrokerSim(core)
    core.initiate()
    sim.read()
    error = closed_event(sim.feed(offered))
    assert type(error) is ProtocolError
    assert ".".join(str(b) for b in offered[4:]) in error.reply_text
    sim.expect_nothing()
    assert core.state is ConnState.CLOSED


def test_garbage_instead_of_start():
    core = Connection()
    sim = BrokerSim(core)
    core.initiate()
    sim.read()
    error = closed_event(sim.feed(b"HTTP/1.1 400 Bad Request\r\n\r\n"))
    assert isinstance(error, ProtocolError)
    assert core.state is ConnState.CLOSED
    sim.expect_nothing()


# =========================================================================================
# Channels
# =========================================================================================


def test_open_channel_picks_the_lowest_free_id():
    core, sim = open_connection()
    assert [sim.open_channel() for _ in range(3)] == [1, 2, 3]
    # The broker closes 2, the client closes 1.
    sim.send(2, spec.Channel.Close(404, "gone", 0, 0))
    sim.expect((2, spec.Channel.CloseOk()))
    core.close_channel(1)
    sim.read()
    sim.send(1, spec.Channel.CloseOk())
    assert sim.open_channel() == 1
    assert sim.open_channel() == 2
    assert sim.open_channel() == 4


def test_open_channel_explicit_id():
    core, sim = open_connection()
    assert sim.open_channel(7) == 7
    assert core.channel_state(7) is ChannelState.OPEN
    assert sim.open_channel() == 1
    assert sim.open_channel(2047) == 2047


@pytest.mark.parametrize("bad", [0, -1, 2048, 65536])
def test_open_channel_out_of_range(bad):
    core, sim = open_connection()
    with pytest.raises(UsageError):
        core.open_channel(bad)
    sim.expect_nothing()


def test_open_channel_in_use():
    core, sim = open_connection()
    sim.open_channel(3)
    with pytest.raises(UsageError):
        core.open_channel(3)
    # Still opening counts as in use, and so does closing.
    assert core.open_channel(4) == 4
    with pytest.raises(UsageError):
        core.open_channel(4)
    core.close_channel(3)
    with pytest.raises(UsageError):
        core.open_channel(3)
    sim.expect((4, spec.Channel.Open()), (3, spec.Channel.Close(200, "Normal close", 0, 0)))


def test_all_channels_in_use():
    core, sim = open_connection(channel_max=2, expect_tune_ok=(2, 131072, 60))
    assert core.open_channel() == 1
    assert core.open_channel() == 2
    sim.read()
    with pytest.raises(UsageError):
        core.open_channel()
    sim.expect_nothing()


def test_channel_opening_state_and_open_ok():
    core, sim = open_connection()
    assert core.open_channel() == 1
    assert core.channel_state(1) is ChannelState.OPENING
    assert core.channel_state(2) is None
    sim.expect((1, spec.Channel.Open()))
    assert sim.send(1, spec.Channel.OpenOk(b"")) == [ev.ChannelOpened(channel=1)]
    assert core.channel_state(1) is ChannelState.OPEN


def test_broker_refuses_to_open_a_channel():
    core, sim = open_connection()
    assert core.open_channel() == 1
    sim.read()
    events = sim.send(1, spec.Channel.Close(403, "ACCESS_REFUSED", 20, 10))
    assert len(events) == 1 and isinstance(events[0], ev.ChannelClosed)
    assert events[0].channel == 1
    assert type(events[0].error) is AccessRefused
    assert events[0].error.method_name == "channel.open"
    sim.expect((1, spec.Channel.CloseOk()))
    assert core.channel_state(1) is None
    assert core.is_open


def test_broker_refuses_to_open_a_channel_with_506():
    # A channel-level close with a hard-error code still only closes the channel.
    core, sim = open_connection()
    core.open_channel()
    sim.read()
    events = sim.send(1, spec.Channel.Close(506, "RESOURCE_ERROR", 20, 10))
    assert [type(e) for e in events] == [ev.ChannelClosed]
    assert isinstance(events[0].error, ChannelClosedByBroker)
    sim.expect((1, spec.Channel.CloseOk()))


CHANNEL_CODES = [
    (311, ContentTooLarge), (312, NoRoute), (313, NoConsumers), (403, AccessRefused),
    (404, NotFound), (405, ResourceLocked), (406, PreconditionFailed),
    (320, ChannelClosedByBroker), (999, ChannelClosedByBroker),
]


@pytest.mark.parametrize(("code", "cls"), CHANNEL_CODES)
def test_broker_closes_a_channel(code, cls):
    core, sim = open_connection()
    sim.open_channel(1)
    sim.open_channel(2)
    core.send_method(1, spec.Queue.Declare(queue="q", passive=True))
    sim.read()
    events = sim.send(1, spec.Channel.Close(code, "text", 50, 10))
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, ev.ChannelClosed) and event.channel == 1
    assert type(event.error) is cls
    assert isinstance(event.error, ChannelClosed)
    assert (event.error.reply_code, event.error.reply_text) == (code, "text")
    assert (event.error.class_id, event.error.method_id) == (50, 10)
    assert event.error.method_name == "queue.declare"
    sim.expect((1, spec.Channel.CloseOk()))
    assert core.channel_state(1) is None
    # Channel 2 is unaffected.
    assert core.channel_state(2) is ChannelState.OPEN
    core.send_method(2, spec.Queue.Declare(queue="q2"))
    sim.expect((2, spec.Queue.Declare(queue="q2")))
    reply = spec.Queue.DeclareOk("q2", 0, 0)
    assert sim.send(2, reply) == [ev.MethodReceived(channel=2, method=reply)]
    # Channel 1 is gone for requests.
    with pytest.raises(UsageError):
        core.send_method(1, spec.Queue.Declare(queue="q"))
    with pytest.raises(UsageError):
        core.basic_publish(1, "", "q", b"x")
    sim.expect_nothing()


def test_client_closes_a_channel():
    core, sim = open_connection()
    sim.open_channel(1)
    sim.open_channel(2)
    sim.consume(1, "c1")
    core.close_channel(1, 200, "bye")
    sim.expect((1, spec.Channel.Close(200, "bye", 0, 0)))
    assert core.channel_state(1) is ChannelState.CLOSING
    # Frames on the closing channel are discarded, whole messages and halves of them.
    assert sim.send_content(1, spec.Basic.Deliver("c1", 1, False, "", "q"), b"abc") == []
    assert sim.feed(encode_method(1, spec.Basic.Deliver("c1", 2, False, "", "q"))
                    + encode_header(1, 10, spec.BasicProperties())) == []
    assert sim.send(1, spec.Channel.Flow(False)) == []
    assert sim.send(1, spec.Queue.DeclareOk("q", 0, 0)) == []
    sim.expect_nothing()
    with pytest.raises(UsageError):
        core.send_method(1, spec.Basic.Qos(0, 1, False))
    with pytest.raises(UsageError):
        core.basic_ack(1, 1)
    core.close_channel(1)  # closing a closing channel does nothing
    sim.expect_nothing()
    # Other channels carry on meanwhile.
    assert sim.deliver(2, "c9", 1).body == b"x"
    events = sim.send(1, spec.Channel.CloseOk())
    assert len(events) == 1 and events[0].channel == 1
    assert type(events[0].error) is ChannelClosedByClient
    assert core.channel_state(1) is None
    sim.expect_nothing()
    with pytest.raises(UsageError):
        core.close_channel(1)


def test_crossing_channel_closes():
    core, sim = open_connection()
    sim.open_channel(1)
    core.close_channel(1)
    sim.expect((1, spec.Channel.Close(200, "Normal close", 0, 0)))
    events = sim.send(1, spec.Channel.Close(406, "PRECONDITION_FAILED", 60, 80))
    sim.expect((1, spec.Channel.CloseOk()))
    assert len(events) == 1 and isinstance(events[0], ev.ChannelClosed)
    assert type(events[0].error) is PreconditionFailed
    assert core.channel_state(1) is ChannelState.CLOSING
    # Its close-ok to our close ends it, without a second event.
    assert sim.send(1, spec.Channel.CloseOk()) == []
    assert core.channel_state(1) is None
    sim.expect_nothing()
    assert core.is_open


# =========================================================================================
# One synchronous method in flight per channel
# =========================================================================================


def declare(name, **kw):
    return spec.Queue.Declare(queue=name, **kw)


def declare_ok(name):
    return spec.Queue.DeclareOk(name, 0, 0)


def test_sync_methods_wait_in_order():
    core, sim = open_connection()
    sim.open_channel(1)
    for name in ("q1", "q2", "q3"):
        core.send_method(1, declare(name))
    sim.expect((1, declare("q1")))
    assert sim.send(1, declare_ok("q1")) == [ev.MethodReceived(channel=1, method=declare_ok("q1"))]
    sim.expect((1, declare("q2")))
    assert sim.send(1, declare_ok("q2")) == [ev.MethodReceived(channel=1, method=declare_ok("q2"))]
    sim.expect((1, declare("q3")))
    assert sim.send(1, declare_ok("q3")) == [ev.MethodReceived(channel=1, method=declare_ok("q3"))]
    sim.expect_nothing()
    # A reply nobody waits for is a protocol error.
    events = sim.send(1, declare_ok("q4"))
    sim.expect_protocol_close(events, 503, 50, 11, "queue.declare-ok")


def test_reply_of_the_wrong_kind_is_503():
    core, sim = open_connection()
    sim.open_channel(1)
    core.send_method(1, declare("q1"))
    sim.read()
    events = sim.send(1, spec.Queue.BindOk())
    sim.expect_protocol_close(events, 503, 50, 21, "queue.bind-ok")


def test_channels_have_independent_queues():
    core, sim = open_connection()
    sim.open_channel(1)
    sim.open_channel(2)
    core.send_method(1, declare("a1"))
    core.send_method(2, declare("b1"))
    core.send_method(1, declare("a2"))
    sim.expect((1, declare("a1")), (2, declare("b1")))
    sim.send(2, declare_ok("b1"))
    sim.expect_nothing()
    sim.send(1, declare_ok("a1"))
    sim.expect((1, declare("a2")))


def test_nowait_methods_do_not_wait_for_replies():
    core, sim = open_connection()
    sim.open_channel(1)
    core.send_method(1, declare("n1", nowait=True))
    core.send_method(1, declare("n2", nowait=True))
    core.send_method(1, declare("q3"))
    sim.expect((1, declare("n1", nowait=True)), (1, declare("n2", nowait=True)),
               (1, declare("q3")))
    # Behind a method awaiting its reply, a nowait method waits its turn (order is kept),
    # and then does not hold up the ones after it.
    core.send_method(1, declare("n4", nowait=True))
    core.send_method(1, spec.Queue.Bind(queue="n4", exchange="x", nowait=True))
    core.send_method(1, declare("q5"))
    core.send_method(1, declare("q6"))
    sim.expect_nothing()
    sim.send(1, declare_ok("q3"))
    sim.expect((1, declare("n4", nowait=True)),
               (1, spec.Queue.Bind(queue="n4", exchange="x", nowait=True)),
               (1, declare("q5")))
    sim.send(1, declare_ok("q5"))
    sim.expect((1, declare("q6")))


def test_async_methods_are_written_at_once_while_a_sync_one_waits():
    core, sim = open_connection()
    sim.open_channel(1)
    sim.consume(1, "c1")
    sim.deliver(1, "c1", 1)
    sim.deliver(1, "c1", 2)
    core.send_method(1, declare("q1"))
    core.send_method(1, declare("q2"))
    assert core.basic_publish(1, "ex", "rk", b"body") == 0
    core.basic_ack(1, 1)
    core.basic_reject(1, 2, requeue=False)
    core.send_method(1, spec.Basic.RecoverAsync(True))
    commands = sim.commands()
    assert [normalize(c.method) for c in commands] == [
        normalize(declare("q1")), spec.Basic.Publish(0, "ex", "rk", False, False),
        spec.Basic.Ack(1, False), spec.Basic.Reject(2, False), spec.Basic.RecoverAsync(True)]
    assert commands[1].body == b"body"
    sim.send(1, declare_ok("q1"))
    sim.expect((1, declare("q2")))


def test_channel_close_drops_the_queued_requests():
    core, sim = open_connection()
    sim.open_channel(1)
    for name in ("q1", "q2", "q3"):
        core.send_method(1, declare(name))
    sim.expect((1, declare("q1")))
    core.close_channel(1)
    sim.expect((1, spec.Channel.Close(200, "Normal close", 0, 0)))
    assert sim.send(1, declare_ok("q1")) == []
    sim.expect_nothing()
    assert [type(e) for e in sim.send(1, spec.Channel.CloseOk())] == [ev.ChannelClosed]
    sim.expect_nothing()
    # A new channel with the same number starts with an empty queue.
    assert sim.open_channel(1) == 1
    core.send_method(1, declare("fresh"))
    sim.expect((1, declare("fresh")))


def test_broker_close_drops_the_queued_requests():
    core, sim = open_connection()
    sim.open_channel(1)
    for name in ("q1", "q2"):
        core.send_method(1, declare(name))
    sim.read()
    sim.send(1, spec.Channel.Close(404, "no", 50, 10))
    sim.expect((1, spec.Channel.CloseOk()))


def test_sync_requests_queue_behind_channel_open():
    core, sim = open_connection()
    assert core.open_channel() == 1
    core.send_method(1, spec.Basic.Qos(0, 10, False))
    core.send_method(1, declare("q"))
    sim.expect((1, spec.Channel.Open()))
    assert sim.send(1, spec.Channel.OpenOk(b"")) == [ev.ChannelOpened(channel=1)]
    sim.expect((1, spec.Basic.Qos(0, 10, False)))
    sim.send(1, spec.Basic.QosOk())
    sim.expect((1, declare("q")))


def test_refused_channel_open_drops_the_queued_requests():
    core, sim = open_connection()
    core.open_channel()
    core.send_method(1, declare("q"))
    sim.read()
    sim.send(1, spec.Channel.Close(403, "no", 20, 10))
    sim.expect((1, spec.Channel.CloseOk()))


@pytest.mark.parametrize("method", [
    spec.Connection.Close(200, "", 0, 0),
    spec.Connection.UpdateSecret(b"", ""),
    spec.Channel.Close(200, "", 0, 0),
    spec.Channel.CloseOk(),
    spec.Channel.FlowOk(True),
    spec.Channel.Open(),
    spec.Connection.StartOk(),
    spec.Basic.Publish(),
    spec.Basic.Ack(1, False),
    spec.Basic.Nack(1, False, True),
    spec.Basic.Reject(1, True),
    spec.Basic.Deliver(),
    spec.Queue.DeclareOk(),
    spec_0_8.Queue.Declare(),
    spec_0_8.Basic.Qos(),
], ids=lambda m: f"{m.NAME}-{type(m).__module__.rsplit('.', 1)[1]}")
def test_send_method_refuses(method):
    core, sim = open_connection()
    sim.open_channel(1)
    with pytest.raises(UsageError):
        core.send_method(1, method)
    sim.expect_nothing()


def test_client_channel_flow_awaits_flow_ok():
    core, sim = open_connection()
    sim.open_channel(1)
    core.send_method(1, spec.Channel.Flow(False))
    core.send_method(1, declare("q"))
    sim.expect((1, spec.Channel.Flow(False)))
    reply = spec.Channel.FlowOk(False)
    assert sim.send(1, reply) == [ev.MethodReceived(channel=1, method=reply)]
    sim.expect((1, declare("q")))


def test_send_method_on_an_opening_channel_refuses_async_methods():
    core, sim = open_connection()
    core.open_channel()
    sim.read()
    with pytest.raises(UsageError):
        core.send_method(1, spec.Basic.RecoverAsync(False))
    with pytest.raises(UsageError):
        core.basic_publish(1, "", "q", b"x")
    sim.expect_nothing()


def test_send_method_on_unknown_channel():
    core, sim = open_connection()
    with pytest.raises(UsageError):
        core.send_method(3, declare("q"))
    sim.expect_nothing()


# =========================================================================================
# Content assembly
# =========================================================================================

PROPS = spec.BasicProperties(
    content_type="application/json", content_encoding="utf-8",
    headers={"x-retry": 3, "nested": {"a": [1, "two"]}}, delivery_mode=2, priority=5,
    correlation_id="corr", reply_to="amq.rabbitmq.reply-to", expiration="60000",
    message_id="m-1", type="order", user_id="guest", app_id="tests")


def consuming(n_channels=1, no_ack=False):
    core, sim = open_connection()
    for i in range(1, n_channels + 1):
        sim.open_channel(i)
        sim.consume(i, f"c{i}", no_ack=no_ack)
    return core, sim


def test_deliver_header_and_body_frames():
    core, sim = consuming()
    method = spec.Basic.Deliver("c1", 1, True, "ex", "rk")
    body = bytes(range(256)) * 4
    events = sim.send_content(1, method, body, PROPS, chunks=[100, 900, 24])
    assert events == [ev.MessageReceived(channel=1, method=method, properties=PROPS,
                                         body=body)]
    assert core.awaiting_ack(1, 1)
    sim.expect_nothing()


def test_content_fed_byte_by_byte():
    _core, sim = consuming()
    method = spec.Basic.Deliver("c1", 1, False, "", "q")
    data = sim.content_bytes(1, method, b"hello world", PROPS, chunks=[5, 6])
    events = []
    for i in range(len(data)):
        events += sim.feed(data[i:i + 1])
    assert events == [ev.MessageReceived(channel=1, method=method, properties=PROPS,
                                         body=b"hello world")]


def test_content_interleaved_across_two_channels():
    _core, sim = consuming(2)
    d1 = spec.Basic.Deliver("c1", 1, False, "", "q1")
    d2 = spec.Basic.Deliver("c2", 1, False, "", "q2")
    p2 = spec.BasicProperties(content_type="text/plain")
    a = sim.content_bytes(1, d1, b"one-one", PROPS, chunks=[3, 4])
    b = sim.content_bytes(2, d2, b"two", p2, chunks=[1, 2])
    split = []
    for data in (a, b):
        frames, pos = [], 0
        while pos < len(data):
            size = int.from_bytes(data[pos + 3:pos + 7], "big")
            frames.append(data[pos:pos + size + 8])
            pos += size + 8
        split.append(frames)
    (m1, h1, x1, y1), (m2, h2, x2, y2) = split
    assert sim.feed(m1 + m2 + h2 + h1 + x1 + x2) == []
    assert sim.feed(y2) == [ev.MessageReceived(channel=2, method=d2, properties=p2,
                                               body=b"two")]
    assert sim.feed(y1) == [ev.MessageReceived(channel=1, method=d1, properties=PROPS,
                                               body=b"one-one")]


def test_empty_body():
    _core, sim = consuming()
    method = spec.Basic.Deliver("c1", 1, False, "", "q")
    data = sim.content_bytes(1, method, b"", PROPS)
    assert data.count(b"\xce") >= 2
    events = sim.feed(data)
    assert events == [ev.MessageReceived(channel=1, method=method, properties=PROPS, body=b"")]
    # The next frame is a new method, not a body.
    assert sim.deliver(1, "c1", 2, b"next").body == b"next"


@pytest.mark.parametrize("read_size", [65536, 262144, 7919])
@pytest.mark.parametrize("frames", [[131064] * 3 + [50_000], [90_000]])
def test_large_body_read_in_pieces_is_one_bytes_body(read_size, frames):
    # Body frames over STREAM_MIN that straddle reads come out of the decoder in pieces
    # (memoryviews of the reads); the message still carries one bytes body.
    _core, sim = consuming()
    method = spec.Basic.Deliver("c1", 1, False, "", "q")
    body = bytes(range(251)) * (sum(frames) // 251) + b"!" * (sum(frames) % 251)
    data = sim.content_bytes(1, method, body, PROPS, chunks=frames)
    events = []
    for start in range(0, len(data), read_size):
        events += sim.feed(data[start:start + read_size])
    assert events == [ev.MessageReceived(channel=1, method=method, properties=PROPS,
                                         body=body)]
    assert type(events[0].body) is bytes
    # The decoder is back to whole frames: the next delivery follows normally.
    assert sim.deliver(1, "c1", 2, b"next").body == b"next"


def test_streamed_body_exceeding_the_announced_size_is_505():
    _core, sim = consuming()
    method = spec.Basic.Deliver("c1", 1, False, "", "q")
    data = sim.content_bytes(1, method, b"z" * 60_000, chunks=[60_000], body_size=40_000)
    events = sim.feed(data[:30_000]) + sim.feed(data[30_000:])
    sim.expect_protocol_close(events, 505, 0, 0, "exceeds the 40000 bytes")


def test_streamed_body_frame_without_content_is_505():
    _core, sim = consuming()
    data = b"".join(sim.body_bytes(1, b"q" * 50_000))
    events = sim.feed(data[:20_000])
    sim.expect_protocol_close(events, 505, 0, 0, "")


def test_body_frame_exceeding_the_announced_size_is_505():
    _core, sim = consuming()
    method = spec.Basic.Deliver("c1", 1, False, "", "q")
    events = sim.send_content(1, method, b"0123456789", chunks=[6, 4], body_size=8)
    sim.expect_protocol_close(events, 505, 0, 0, "exceeds the 8 bytes")


def test_single_body_frame_exceeding_the_announced_size_is_505():
    _core, sim = consuming()
    method = spec.Basic.Deliver("c1", 1, False, "", "q")
    events = sim.send_content(1, method, b"0123456789", body_size=9)
    sim.expect_protocol_close(events, 505, 0, 0, "exceeds")


def test_method_in_the_middle_of_content_is_505():
    _core, sim = consuming()
    method = spec.Basic.Deliver("c1", 1, False, "", "q")
    data = sim.content_bytes(1, method, b"0123456789", chunks=[4, 6])
    partial = data[:len(data) - (6 + 8)]  # without the last body frame
    assert sim.feed(partial) == []
    events = sim.send(1, spec.Basic.Deliver("c1", 2, False, "", "q"))
    sim.expect_protocol_close(events, 505, 0, 0, "expected a body frame")


def test_method_instead_of_content_header_is_505():
    _core, sim = consuming()
    assert sim.send(1, spec.Basic.Deliver("c1", 1, False, "", "q")) == []
    events = sim.send(1, spec.Channel.Flow(False))
    sim.expect_protocol_close(events, 505, 0, 0, "expected a content header")


def test_body_instead_of_content_header_is_505():
    _core, sim = consuming()
    assert sim.send(1, spec.Basic.Deliver("c1", 1, False, "", "q")) == []
    events = sim.feed(b"".join(bytes(p) for p in encode_body(1, b"abc")))
    sim.expect_protocol_close(events, 505, 0, 0, "expected a content header")


def test_second_content_header_is_505():
    _core, sim = consuming()
    data = (encode_method(1, spec.Basic.Deliver("c1", 1, False, "", "q"))
            + encode_header(1, 5, spec.BasicProperties())
            + encode_header(1, 5, spec.BasicProperties()))
    sim.expect_protocol_close(sim.feed(data), 505, 0, 0, "expected a body frame")


def test_content_header_class_mismatch_0_8():
    _core, sim = open_connection(dialect=spec_0_8.DIALECT)
    sim.open_channel(1)
    sim.consume(1, "c1")
    m = spec_0_8
    data = (encode_method(1, m.Basic.Deliver("c1", 1, False, "", "q"))
            + encode_header(1, 0, m.FileProperties()))
    events = sim.feed(data)
    sim.expect_protocol_close(events, 505, 0, 0, "content header of class 70 after "
                                                 "basic.deliver")


def test_content_header_for_a_class_without_content_0_9_1():
    _core, sim = consuming()
    header = bytearray(encode_header(1, 0, spec.BasicProperties()))
    header[7:9] = (50).to_bytes(2, "big")  # class queue, which has no content
    data = encode_method(1, spec.Basic.Deliver("c1", 1, False, "", "q")) + bytes(header)
    events = sim.feed(data)
    sim.expect_protocol_close(events, 503, 0, 0, "class 50", ConnState.CLOSED)


def test_get_ok_is_the_reply_and_releases_the_queue_when_its_body_is_in():
    core, sim = open_connection()
    sim.open_channel(1)
    core.send_method(1, spec.Basic.Get(queue="q"))
    core.send_method(1, declare("after"))
    sim.expect((1, spec.Basic.Get(queue="q")))
    get_ok = spec.Basic.GetOk(7, False, "", "q", 3)
    data = sim.content_bytes(1, get_ok, b"payload", PROPS, chunks=[3, 4])
    assert sim.feed(data[:-12]) == []
    sim.expect_nothing()  # the next request waits for the whole message
    events = sim.feed(data[-12:])
    assert events == [ev.MessageReceived(channel=1, method=get_ok, properties=PROPS,
                                         body=b"payload")]
    sim.expect((1, declare("after")))
    assert core.awaiting_ack(1, 7)
    core.basic_ack(1, 7)
    sim.expect((1, spec.Basic.Ack(7, False)))


def test_get_ok_with_no_ack_needs_no_ack():
    core, sim = open_connection()
    sim.open_channel(1)
    core.send_method(1, spec.Basic.Get(queue="q", no_ack=True))
    core.send_method(1, spec.Basic.Get(queue="q", no_ack=False))
    sim.read()
    sim.send_content(1, spec.Basic.GetOk(1, False, "", "q", 1), b"a")
    sim.expect((1, spec.Basic.Get(queue="q", no_ack=False)))
    sim.send_content(1, spec.Basic.GetOk(2, False, "", "q", 0), b"b")
    assert not core.awaiting_ack(1, 1)
    assert core.awaiting_ack(1, 2)
    with pytest.raises(UsageError):
        core.basic_ack(1, 1)
    sim.expect_nothing()


def test_get_empty():
    core, sim = open_connection()
    sim.open_channel(1)
    core.send_method(1, spec.Basic.Get(queue="q", no_ack=True))
    core.send_method(1, spec.Basic.Get(queue="q"))
    sim.read()
    events = sim.send(1, spec.Basic.GetEmpty(""))
    assert events == [ev.MethodReceived(channel=1, method=spec.Basic.GetEmpty(""))]
    sim.expect((1, spec.Basic.Get(queue="q")))
    # The second get is not no_ack: its delivery awaits an ack.
    sim.send_content(1, spec.Basic.GetOk(1, False, "", "q", 0), b"x")
    assert core.awaiting_ack(1, 1)


def test_get_ok_without_a_get_is_503():
    _core, sim = open_connection()
    sim.open_channel(1)
    events = sim.send(1, spec.Basic.GetOk(1, False, "", "q", 0))
    sim.expect_protocol_close(events, 503, 60, 71, "basic.get-ok")


def test_non_increasing_delivery_tag_is_a_protocol_error():
    """A broker that repeats a delivery tag breaks the protocol: the core must say so with
    a ProtocolError, not let an exception escape from next_event()."""
    core, sim = consuming()
    sim.deliver(1, "c1", 5)
    method = spec.Basic.Deliver("c1", 5, False, "", "q")
    core.receive_data(sim.content_bytes(1, method, b"again"))
    events = drain(core)
    sim.expect_protocol_close(events, 503, 60, 60, "delivery tag 5")


def test_delivery_tag_going_back_on_get_ok_is_a_protocol_error():
    core, sim = open_connection()
    sim.open_channel(1)
    core.send_method(1, spec.Basic.Get(queue="q"))
    core.send_method(1, spec.Basic.Get(queue="q"))
    sim.read()
    sim.send_content(1, spec.Basic.GetOk(9, False, "", "q", 1), b"a")
    sim.read()
    events = sim.send_content(1, spec.Basic.GetOk(3, False, "", "q", 0), b"b")
    sim.expect_protocol_close(events, 503, 60, 71, "delivery tag 3")


def test_repeated_delivery_tag_with_auto_ack_is_not_checked():
    # Nothing awaits an ack, so there is nothing to get confused about.
    core, sim = consuming(no_ack=True)
    sim.deliver(1, "c1", 5)
    sim.deliver(1, "c1", 5)
    assert core.is_open


# =========================================================================================
# Publishing
# =========================================================================================


def test_reused_properties_are_encoded_as_they_are_now():
    # The core reuses the encoding of the properties object published last, unless it has
    # headers (a dict the caller may change between publishes).
    core, sim = open_connection()
    sim.open_channel(1)
    plain = spec.BasicProperties(content_type="text/plain", delivery_mode=2)
    headers: dict[str, object] = {"n": 1}
    with_headers = spec.BasicProperties(headers=headers)
    other = spec_0_8.BasicProperties(priority=3)  # converted to this dialect's class
    sent = [plain, plain, None, with_headers, with_headers, plain, other, other, None]
    for i, props in enumerate(sent):
        if i == 4:
            headers["n"] = 2
        core.basic_publish(1, "", "q", b"m%d" % i, props)
    seen = [(c.properties, c.body) for c in sim.commands()]
    assert [body for _, body in seen] == [b"m%d" % i for i in range(len(sent))]
    got = [props for props, _ in seen]
    assert got[0] == got[1] == got[5] == plain
    assert got[2] == got[8] == spec.BasicProperties()
    assert got[3].headers == {"n": 1}
    assert got[4].headers == {"n": 2}
    assert got[6] == got[7] == spec.BasicProperties(priority=3)


def test_publish_splits_the_body_by_frame_max():
    core, sim = open_connection(server_tune=(2047, 4096, 60))
    sim.open_channel(1)
    body = bytes(range(256)) * 40  # 10240 bytes
    assert core.basic_publish(1, "ex", "rk", body, PROPS, mandatory=True) == 0
    (command,) = sim.commands()
    assert command == Command(1, spec.Basic.Publish(0, "ex", "rk", True, False), PROPS, body,
                              (4088, 4088, 2064))


def test_publish_body_of_exactly_one_frame_and_empty_body():
    core, sim = open_connection(server_tune=(2047, 4096, 60))
    sim.open_channel(1)
    core.basic_publish(1, "", "q", b"a" * 4088)
    core.basic_publish(1, "", "q", b"")
    core.basic_publish(1, "", "q", b"b" * 4089)
    commands = sim.commands()
    assert [c.body_frames for c in commands] == [(4088,), (), (4088, 1)]
    assert [c.body for c in commands] == [b"a" * 4088, b"", b"b" * 4089]
    assert commands[1].properties == spec.BasicProperties()


def test_publish_without_frame_max():
    core, sim = open_connection(frame_max=0, server_tune=(2047, 0, 60))
    sim.open_channel(1)
    body = b"z" * 300000
    core.basic_publish(1, "", "q", body)
    (command,) = sim.commands()
    assert command.body == body and command.body_frames == (300000,)


def test_publish_large_body_is_not_copied():
    core, sim = open_connection(server_tune=(2047, 4096, 60))
    sim.open_channel(1)
    body = bytearray(b"q" * 9000)
    core.basic_publish(1, "", "q", body)
    chunks = core.chunks_to_send()
    views = [c for c in chunks if isinstance(c, memoryview)]
    assert [len(v) for v in views] == [4088, 4088, 824]
    assert all(v.obj is body for v in views)
    assert core.chunks_to_send() == []


def test_publish_on_0_8():
    core, sim = open_connection(dialect=spec_0_8.DIALECT)
    sim.open_channel(1)
    props = spec_0_8.BasicProperties(content_type="text/plain", delivery_mode=1)
    assert core.basic_publish(1, "amq.direct", "k", b"hi", props) == 0
    (command,) = sim.commands()
    assert command.method == spec_0_8.Basic.Publish(0, "amq.direct", "k", False, False)
    assert (command.properties, command.body) == (props, b"hi")
    # txpika.BasicProperties is the 0-9-1 class: on 0-8 its fields are carried over.
    core.basic_publish(1, "", "k", b"", spec.BasicProperties(message_id="m1", priority=3))
    (command,) = sim.commands()
    assert command.properties == spec_0_8.BasicProperties(message_id="m1", priority=3)
    with pytest.raises(UsageError):
        core.basic_publish(1, "", "k", b"", object())  # type: ignore[arg-type]
    sim.expect_nothing()


def test_publish_refusals():
    core, sim = open_connection()
    sim.open_channel(1)
    with pytest.raises(UsageError):
        core.basic_publish(2, "", "q", b"x")
    with pytest.raises(UsageError):
        core.basic_publish(1, "", "q", b"x", spec.Basic.Publish())  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        core.basic_publish(1, "", "q", "text")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        core.basic_publish(1, "", "k" * 256, b"x")
    sim.expect_nothing()


def test_channel_flow_from_the_broker():
    core, sim = open_connection()
    sim.open_channel(1)
    sim.open_channel(2)
    assert core.flow_active(1)
    events = sim.send(1, spec.Channel.Flow(False))
    assert events == [ev.ChannelFlow(channel=1, active=False)]
    sim.expect((1, spec.Channel.FlowOk(False)))
    assert not core.flow_active(1)
    with pytest.raises(FlowControlError):
        core.basic_publish(1, "", "q", b"x")
    sim.expect_nothing()
    core.basic_publish(2, "", "q", b"x")  # other channels may publish
    assert len(sim.commands()) == 1
    # Other methods still go out on the stopped channel.
    core.send_method(1, declare("q"))
    sim.expect((1, declare("q")))
    sim.send(1, declare_ok("q"))
    events = sim.send(1, spec.Channel.Flow(True))
    assert events == [ev.ChannelFlow(channel=1, active=True)]
    sim.expect((1, spec.Channel.FlowOk(True)))
    core.basic_publish(1, "", "q", b"x")
    assert [c.method.NAME for c in sim.commands()] == ["basic.publish"]
    assert not core.flow_active(9)


def test_connection_blocked_and_unblocked():
    core, sim = open_connection()
    sim.open_channel(1)
    assert not core.blocked
    assert sim.send(0, spec.Connection.Blocked("low on memory")) == [
        ev.ConnectionBlocked(reason="low on memory")]
    assert core.blocked and core.blocked_reason == "low on memory"
    # The core reports; holding publishes back is the driver's policy.
    core.basic_publish(1, "", "q", b"x")
    assert len(sim.commands()) == 1
    assert sim.send(0, spec.Connection.Unblocked()) == [ev.ConnectionUnblocked()]
    assert not core.blocked and core.blocked_reason == ""
    sim.expect_nothing()


def test_update_secret():
    core, sim = open_connection()
    core.update_secret(b"new-token", "expiring")
    sim.expect((0, spec.Connection.UpdateSecret(b"new-token", "expiring")))
    events = sim.send(0, spec.Connection.UpdateSecretOk())
    assert events == [ev.MethodReceived(channel=0, method=spec.Connection.UpdateSecretOk())]


def test_update_secret_0_8():
    core, sim = open_connection(dialect=spec_0_8.DIALECT)
    with pytest.raises(UsageError):
        core.update_secret(b"x", "y")
    sim.expect_nothing()


# =========================================================================================
# Publisher confirms
# =========================================================================================


def confirming(n=0, **publish_kw):
    core, sim = open_connection()
    sim.open_channel(1)
    assert not core.in_confirm_mode(1)
    sim.select_confirms(1)
    assert core.in_confirm_mode(1)
    tags = [core.basic_publish(1, "ex", f"k{i}", b"m", **publish_kw) for i in range(n)]
    assert tags == list(range(1, n + 1))
    sim.commands()
    return core, sim


def test_publish_tags_count_from_1_per_channel():
    core, sim = open_connection()
    sim.open_channel(1)
    sim.open_channel(2)
    assert core.basic_publish(1, "", "q", b"x") == 0  # not in confirm mode
    assert len(sim.commands()) == 1
    sim.select_confirms(1)
    sim.select_confirms(2)
    assert [core.basic_publish(1, "", "q", b"x") for _ in range(3)] == [1, 2, 3]
    assert core.basic_publish(2, "", "q", b"x") == 1
    assert len(sim.commands()) == 4


def test_confirm_select_nowait_counts_at_once():
    core, sim = open_connection()
    sim.open_channel(1)
    core.send_method(1, spec.Confirm.Select(nowait=True))
    sim.expect((1, spec.Confirm.Select(nowait=True)))
    assert core.basic_publish(1, "", "q", b"x") == 1


def test_single_acks():
    _core, sim = confirming(3)
    assert sim.send(1, spec.Basic.Ack(2, False)) == [ev.PublishAcked(channel=1,
                                                                     delivery_tags=(2,))]
    assert sim.send(1, spec.Basic.Ack(1, False)) == [ev.PublishAcked(channel=1,
                                                                     delivery_tags=(1,))]
    assert sim.send(1, spec.Basic.Ack(3, False)) == [ev.PublishAcked(channel=1,
                                                                     delivery_tags=(3,))]
    sim.expect_nothing()


def test_multiple_ack():
    _core, sim = confirming(5)
    sim.send(1, spec.Basic.Ack(2, False))
    assert sim.send(1, spec.Basic.Ack(4, True)) == [ev.PublishAcked(channel=1,
                                                                    delivery_tags=(1, 3, 4))]
    assert sim.send(1, spec.Basic.Ack(5, True)) == [ev.PublishAcked(channel=1,
                                                                    delivery_tags=(5,))]


def test_multiple_ack_of_tag_0_means_all():
    core, sim = confirming(4)
    sim.send(1, spec.Basic.Ack(3, False))
    assert sim.send(1, spec.Basic.Ack(0, True)) == [ev.PublishAcked(channel=1,
                                                                    delivery_tags=(1, 2, 4))]
    assert core.basic_publish(1, "", "q", b"x") == 5
    assert sim.send(1, spec.Basic.Ack(5, False)) == [ev.PublishAcked(channel=1,
                                                                     delivery_tags=(5,))]


def test_nacks():
    _core, sim = confirming(4)
    assert sim.send(1, spec.Basic.Nack(2, False, False)) == [
        ev.PublishNacked(channel=1, delivery_tags=(2,))]
    assert sim.send(1, spec.Basic.Nack(3, True, False)) == [
        ev.PublishNacked(channel=1, delivery_tags=(1, 3))]
    assert sim.send(1, spec.Basic.Ack(4, True)) == [ev.PublishAcked(channel=1,
                                                                    delivery_tags=(4,))]
    sim.expect_nothing()


@pytest.mark.parametrize("tag", [3, 4, 100])
def test_ack_for_an_unknown_tag_is_503(tag):
    _core, sim = confirming(2)
    sim.send(1, spec.Basic.Ack(1, False))
    if tag == 100:
        events = sim.send(1, spec.Basic.Ack(tag, False))
    else:
        events = sim.send(1, spec.Basic.Ack(tag, False))
    sim.expect_protocol_close(events, 503, 60, 80, f"delivery tag {tag}")


def test_ack_of_an_already_acked_tag_is_503():
    _core, sim = confirming(2)
    sim.send(1, spec.Basic.Ack(1, False))
    events = sim.send(1, spec.Basic.Ack(1, False))
    sim.expect_protocol_close(events, 503, 60, 80, "delivery tag 1")


def test_nack_for_an_unknown_tag_is_503():
    _core, sim = confirming(1)
    events = sim.send(1, spec.Basic.Nack(9, False, False))
    sim.expect_protocol_close(events, 503, 60, 120, "delivery tag 9")


@pytest.mark.parametrize("cls", [spec.Basic.Ack, spec.Basic.Nack])
def test_confirms_outside_confirm_mode_are_503(cls):
    core, sim = open_connection()
    sim.open_channel(1)
    core.basic_publish(1, "", "q", b"x")
    sim.commands()
    events = sim.send(1, cls(1, False))
    sim.expect_protocol_close(events, 503, 60, cls.METHOD_ID, "not in confirm mode")


def returned(key, code=312):
    return spec.Basic.Return(code, "NO_ROUTE", "ex", key)


def test_return_then_single_ack():
    core, sim = confirming()
    assert core.basic_publish(1, "ex", "nowhere", b"lost", PROPS, mandatory=True) == 1
    sim.commands()
    assert sim.send_content(1, returned("nowhere"), b"lost", PROPS) == []
    events = sim.send(1, spec.Basic.Ack(1, False))
    assert events == [ev.PublishReturned(channel=1, delivery_tag=1, method=returned("nowhere"),
                                         properties=PROPS, body=b"lost")]


def test_returns_before_a_multiple_ack_to_different_routing_keys():
    core, sim = confirming()
    assert core.basic_publish(1, "ex", "a", b"A", mandatory=True) == 1
    assert core.basic_publish(1, "ex", "routed", b"R", mandatory=True) == 2
    assert core.basic_publish(1, "ex", "b", b"B", mandatory=True) == 3
    assert core.basic_publish(1, "ex", "plain", b"P") == 4
    sim.commands()
    assert sim.send_content(1, returned("b"), b"B") == []
    assert sim.send_content(1, returned("a"), b"A") == []
    events = sim.send(1, spec.Basic.Ack(4, True))
    props = spec.BasicProperties()
    # Reported in the order of the publishes they belong to, before the ack of the rest.
    assert events == [
        ev.PublishReturned(channel=1, delivery_tag=1, method=returned("a"), properties=props,
                           body=b"A"),
        ev.PublishReturned(channel=1, delivery_tag=3, method=returned("b"), properties=props,
                           body=b"B"),
        ev.PublishAcked(channel=1, delivery_tags=(2, 4)),
    ]


def test_return_then_ack_of_an_earlier_publish_then_its_own_ack():
    # The broker acks routed publishes once their queues took them, so the ack of an earlier
    # publish may come between a return and the ack of the returned publish.
    core, sim = confirming()
    assert core.basic_publish(1, "ex", "routed", b"R", mandatory=True) == 1
    assert core.basic_publish(1, "ex", "lost", b"L", mandatory=True) == 2
    sim.commands()
    assert sim.send_content(1, returned("lost"), b"L") == []
    assert sim.send(1, spec.Basic.Ack(1, False)) == [ev.PublishAcked(channel=1,
                                                                     delivery_tags=(1,))]
    assert sim.send(1, spec.Basic.Ack(2, False)) == [ev.PublishReturned(
        channel=1, delivery_tag=2, method=returned("lost"), properties=spec.BasicProperties(),
        body=b"L")]


def test_return_in_confirm_mode_that_fits_no_publish_is_a_message():
    core, sim = confirming()
    assert core.basic_publish(1, "ex", "a", b"A", mandatory=True) == 1
    assert core.basic_publish(1, "ex", "b", b"B") == 2  # not mandatory
    sim.commands()
    for key in ("b", "c"):
        events = sim.send_content(1, returned(key), b"?")
        assert events == [ev.MessageReceived(channel=1, method=returned(key),
                                             properties=spec.BasicProperties(), body=b"?")]
    assert sim.send(1, spec.Basic.Ack(2, True)) == [ev.PublishAcked(channel=1,
                                                                    delivery_tags=(1, 2))]


def test_a_return_is_matched_once():
    core, sim = confirming()
    assert core.basic_publish(1, "ex", "a", b"A", mandatory=True) == 1
    sim.commands()
    assert sim.send_content(1, returned("a"), b"A") == []
    events = sim.send_content(1, returned("a"), b"A")  # a second return for one publish
    assert [type(e) for e in events] == [ev.MessageReceived]
    assert [(type(e), e.delivery_tag) for e in sim.send(1, spec.Basic.Ack(1, False))] == [
        (ev.PublishReturned, 1)]


def test_nack_of_a_returned_publish():
    core, sim = confirming()
    core.basic_publish(1, "ex", "a", b"A", mandatory=True)
    core.basic_publish(1, "ex", "b", b"B", mandatory=True)
    sim.commands()
    sim.send_content(1, returned("a"), b"A")
    events = sim.send(1, spec.Basic.Nack(2, True, False))
    assert [type(e) for e in events] == [ev.PublishReturned, ev.PublishNacked]
    assert events[0].delivery_tag == 1
    assert events[1] == ev.PublishNacked(channel=1, delivery_tags=(2,))


def test_returns_to_the_same_routing_key_take_the_earliest_unmatched_publish():
    core, sim = confirming()
    tags = [core.basic_publish(1, "ex", "same", bytes([65 + i]), mandatory=True)
            for i in range(4)]
    assert tags == [1, 2, 3, 4]
    sim.commands()
    sim.send(1, spec.Basic.Ack(1, False))  # 1 was routed after all
    sim.send_content(1, returned("same"), b"B")
    sim.send_content(1, returned("same"), b"C")
    events = sim.send(1, spec.Basic.Ack(4, True))
    assert [(type(e), getattr(e, "delivery_tag", None), getattr(e, "body", None))
            for e in events[:2]] == [(ev.PublishReturned, 2, b"B"), (ev.PublishReturned, 3, b"C")]
    assert events[2:] == [ev.PublishAcked(channel=1, delivery_tags=(4,))]


def test_every_publish_of_a_multiple_ack_returned():
    core, sim = confirming()
    core.basic_publish(1, "ex", "x", b"1", mandatory=True)
    core.basic_publish(1, "ex", "x", b"2", mandatory=True)
    sim.commands()
    sim.send_content(1, returned("x"), b"1")
    sim.send_content(1, returned("x"), b"2")
    events = sim.send(1, spec.Basic.Ack(2, True))
    assert [type(e) for e in events] == [ev.PublishReturned, ev.PublishReturned]
    assert [e.delivery_tag for e in events] == [1, 2]


def test_return_of_an_immediate_publish():
    core, sim = confirming()
    core.basic_publish(1, "ex", "x", b"1", immediate=True)
    sim.commands()
    sim.send_content(1, returned("x", 313), b"1")
    events = sim.send(1, spec.Basic.Ack(1, False))
    assert [(type(e), e.delivery_tag) for e in events] == [(ev.PublishReturned, 1)]


def test_return_outside_confirm_mode_is_a_message():
    core, sim = open_connection()
    sim.open_channel(1)
    core.basic_publish(1, "ex", "x", b"1", mandatory=True)
    sim.commands()
    events = sim.send_content(1, returned("x"), b"1")
    assert events == [ev.MessageReceived(channel=1, method=returned("x"),
                                         properties=spec.BasicProperties(), body=b"1")]


# =========================================================================================
# Consumer acks
# =========================================================================================


@pytest.mark.parametrize("dialect", [spec.DIALECT, spec_0_8.DIALECT])
@pytest.mark.parametrize("channel,tag", [(1, 1), (2047, 2**64 - 1), (300, 65536)])
def test_single_ack_bytes_are_the_encoded_method(dialect, channel, tag):
    # basic_ack packs its frame directly: it must be exactly what the codec would write.
    core, sim = open_connection(dialect=dialect)
    sim.open_channel(channel)
    sim.consume(channel, "c")
    sim.deliver(channel, "c", tag)
    core.data_to_send()
    core.basic_ack(channel, tag)
    assert core.data_to_send() == encode_method(channel, dialect.module.Basic.Ack(tag, False))
    with pytest.raises(UsageError):
        core.basic_ack(channel, tag)
    assert core.data_to_send() == b""


def test_acks_are_written_and_checked():
    core, sim = consuming()
    for tag in (1, 2, 3, 4, 5):
        sim.deliver(1, "c1", tag)
    core.basic_ack(1, 2)
    sim.expect((1, spec.Basic.Ack(2, False)))
    with pytest.raises(UsageError):
        core.basic_ack(1, 2)  # double ack
    sim.expect_nothing()
    core.basic_ack(1, 3, multiple=True)
    sim.expect((1, spec.Basic.Ack(3, True)))
    for tag in (1, 2, 3):
        with pytest.raises(UsageError):
            core.basic_ack(1, tag)
    with pytest.raises(UsageError):
        core.basic_ack(1, 3, multiple=True)  # nothing outstanding up to 3
    with pytest.raises(UsageError):
        core.basic_ack(1, 99)  # never delivered
    sim.expect_nothing()
    core.basic_nack(1, 4, requeue=False)
    sim.expect((1, spec.Basic.Nack(4, False, False)))
    core.basic_reject(1, 5)
    sim.expect((1, spec.Basic.Reject(5, True)))
    with pytest.raises(UsageError):
        core.basic_reject(1, 5)
    with pytest.raises(UsageError):
        core.basic_nack(1, 0, multiple=True)
    sim.expect_nothing()


def test_ack_all_with_tag_0():
    core, sim = consuming()
    for tag in (1, 2, 3):
        sim.deliver(1, "c1", tag)
    core.basic_ack(1, 2)
    sim.read()
    core.basic_ack(1, 0, multiple=True)
    sim.expect((1, spec.Basic.Ack(0, True)))
    assert not core.awaiting_ack(1, 1) and not core.awaiting_ack(1, 3)
    with pytest.raises(UsageError):
        core.basic_ack(1, 0, multiple=True)
    sim.expect_nothing()


def test_multiple_nack():
    core, sim = consuming()
    for tag in (1, 2, 3):
        sim.deliver(1, "c1", tag)
    core.basic_nack(1, 2, multiple=True)
    sim.expect((1, spec.Basic.Nack(2, True, True)))
    assert core.awaiting_ack(1, 3) and not core.awaiting_ack(1, 2)


def test_ack_of_an_auto_ack_delivery():
    core, sim = consuming(no_ack=True)
    sim.deliver(1, "c1", 1)
    assert not core.awaiting_ack(1, 1)
    with pytest.raises(UsageError):
        core.basic_ack(1, 1)
    with pytest.raises(UsageError):
        core.basic_ack(1, 1, multiple=True)
    with pytest.raises(UsageError):
        core.basic_reject(1, 1)
    sim.expect_nothing()


def test_acks_for_a_mix_of_auto_ack_and_manual_consumers():
    core, sim = open_connection()
    sim.open_channel(1)
    sim.consume(1, "auto", no_ack=True)
    sim.consume(1, "manual")
    sim.deliver(1, "auto", 1)
    sim.deliver(1, "manual", 2)
    sim.deliver(1, "auto", 3)
    core.basic_ack(1, 3, multiple=True)
    sim.expect((1, spec.Basic.Ack(3, True)))
    assert not core.awaiting_ack(1, 2)


def test_nowait_consume_with_auto_ack():
    core, sim = open_connection()
    sim.open_channel(1)
    core.send_method(1, spec.Basic.Consume(queue="q", consumer_tag="nw", no_ack=True,
                                           nowait=True))
    sim.read()
    sim.deliver(1, "nw", 1)
    with pytest.raises(UsageError):
        core.basic_ack(1, 1)
    sim.expect_nothing()


def test_ack_after_basic_recover():
    core, sim = consuming()
    sim.deliver(1, "c1", 1)
    sim.deliver(1, "c1", 2)
    core.send_method(1, spec.Basic.Recover(True))
    sim.expect((1, spec.Basic.Recover(True)))
    assert sim.send(1, spec.Basic.RecoverOk()) == [
        ev.MethodReceived(channel=1, method=spec.Basic.RecoverOk())]
    with pytest.raises(UsageError):
        core.basic_ack(1, 1)
    with pytest.raises(UsageError):
        core.basic_ack(1, 2, multiple=True)
    sim.expect_nothing()
    sim.deliver(1, "c1", 3)  # redelivered under a new tag
    core.basic_ack(1, 3)
    sim.expect((1, spec.Basic.Ack(3, False)))


def test_ack_after_basic_recover_async():
    core, sim = consuming()
    sim.deliver(1, "c1", 1)
    core.send_method(1, spec.Basic.RecoverAsync(True))
    sim.expect((1, spec.Basic.RecoverAsync(True)))
    with pytest.raises(UsageError):
        core.basic_ack(1, 1)
    sim.expect_nothing()


def test_ack_on_another_channel_or_after_reopen():
    core, sim = consuming(2)
    sim.deliver(1, "c1", 1)
    with pytest.raises(UsageError):
        core.basic_ack(2, 1)
    sim.send(1, spec.Channel.Close(406, "x", 0, 0))
    sim.read()
    sim.open_channel(1)
    with pytest.raises(UsageError):
        core.basic_ack(1, 1)
    sim.expect_nothing()


def test_multiple_ack_with_nothing_outstanding():
    core, sim = consuming()
    with pytest.raises(UsageError):
        core.basic_ack(1, 5, multiple=True)
    with pytest.raises(UsageError):
        core.basic_ack(1, 0, multiple=True)
    sim.expect_nothing()
    assert core.is_open


def test_nack_on_0_8_is_refused():
    core, sim = open_connection(dialect=spec_0_8.DIALECT)
    sim.open_channel(1)
    sim.consume(1, "c1")
    sim.deliver(1, "c1", 1)
    with pytest.raises(UsageError):
        core.basic_nack(1, 1)
    core.basic_reject(1, 1, requeue=False)
    sim.expect((1, spec_0_8.Basic.Reject(1, False)))


# =========================================================================================
# Heartbeats
# =========================================================================================


def test_heartbeat_sent_when_due_and_not_when_traffic_flowed():
    core, sim = open_connection()  # heartbeat 60
    sim.open_channel(1)
    assert core.heartbeat_tick(1000.0) == 1030.0
    sim.expect_nothing()
    assert core.heartbeat_tick(1030.0) == 1060.0
    sim.expect_nothing()
    sim.send(0, spec.Connection.Blocked(""))  # the broker talks; we don't
    assert core.heartbeat_tick(1060.0) == 1090.0
    assert core.data_to_send() == HEARTBEAT
    assert core.heartbeat_tick(1090.0) == 1120.0
    sim.expect_nothing()
    core.basic_publish(1, "", "q", b"x")  # we talk: no heartbeat needed
    assert core.heartbeat_tick(1120.0) == 1150.0
    assert [c.method.NAME for c in sim.commands()] == ["basic.publish"]
    sim.feed(HEARTBEAT)
    assert core.heartbeat_tick(1150.0) == 1180.0
    sim.expect_nothing()
    assert core.heartbeat_tick(1180.0) == 1210.0
    assert sim.commands() == [Command(0, HeartbeatMarker())]
    assert core.is_open


def test_heartbeat_timeout_after_two_silent_intervals():
    core, sim = open_connection(heartbeat=10, server_tune=(2047, 131072, 10))
    assert core.heartbeat_tick(0.0) == 5.0
    assert core.heartbeat_tick(5.0) == 10.0
    assert core.heartbeat_tick(10.0) == 15.0
    assert core.data_to_send() == HEARTBEAT
    assert core.heartbeat_tick(15.0) == 20.0
    assert drain(core) == []
    assert core.heartbeat_tick(19.9) == pytest.approx(24.9)
    assert drain(core) == []
    assert core.heartbeat_tick(20.0) is None
    error = closed_event(drain(core))
    assert type(error) is HeartbeatTimeout
    assert isinstance(error, ConnectionClosed)
    assert error.interval == 10
    assert core.state is ConnState.CLOSED
    sim.expect_nothing()
    assert core.heartbeat_tick(25.0) is None
    with pytest.raises(HeartbeatTimeout):
        core.open_channel()


def test_heartbeat_from_the_broker_keeps_the_connection():
    core, sim = open_connection(heartbeat=10, server_tune=(2047, 131072, 10))
    now = 0.0
    core.heartbeat_tick(now)
    for _ in range(20):
        now += 5
        sim.feed(HEARTBEAT)
        assert core.heartbeat_tick(now) == now + 5
    assert drain(core) == []
    assert core.is_open


def test_heartbeat_0_means_no_ticks():
    core, sim = open_connection(heartbeat=0, expect_tune_ok=(2047, 131072, 0))
    assert core.heartbeat_tick(0.0) is None
    assert core.heartbeat_tick(10000.0) is None
    sim.expect_nothing()
    assert core.is_open


def test_heartbeat_tick_before_tune():
    core = Connection()
    assert core.heartbeat_tick(0.0) is None
    core.initiate()
    assert core.heartbeat_tick(0.0) is None


def test_heartbeat_tick_after_close():
    core, sim = open_connection()
    sim.send(0, spec.Connection.Close(320, "bye", 0, 0))
    sim.read()
    assert core.heartbeat_tick(0.0) is None
    sim.expect_nothing()


# =========================================================================================
# Consumer cancel notifications
# =========================================================================================


def test_broker_cancels_a_consumer_nowait():
    _core, sim = consuming()
    method = spec.Basic.Cancel("c1", True)
    assert sim.send(1, method) == [ev.MethodReceived(channel=1, method=method)]
    sim.expect_nothing()


def test_broker_cancels_a_consumer_and_wants_cancel_ok():
    _core, sim = consuming()
    method = spec.Basic.Cancel("c1", False)
    assert sim.send(1, method) == [ev.MethodReceived(channel=1, method=method)]
    sim.expect((1, spec.Basic.CancelOk("c1")))


def test_client_cancel_and_cancel_ok():
    core, sim = consuming()
    core.send_method(1, spec.Basic.Cancel("c1", False))
    sim.expect((1, spec.Basic.Cancel("c1", False)))
    reply = spec.Basic.CancelOk("c1")
    assert sim.send(1, reply) == [ev.MethodReceived(channel=1, method=reply)]


# =========================================================================================
# Closing the connection
# =========================================================================================


def test_client_close():
    core, sim = open_connection()
    sim.open_channel(1)
    core.close()
    sim.expect((0, spec.Connection.Close(200, "Normal shutdown", 0, 0)))
    assert core.state is ConnState.CLOSING and not core.is_open
    assert drain(core) == []
    core.close()  # again: nothing more
    sim.expect_nothing()
    error = closed_event(sim.send(0, spec.Connection.CloseOk()))
    assert type(error) is ConnectionClosedByClient
    assert error.reply_code == 200
    assert core.state is ConnState.CLOSED
    sim.expect_nothing()
    # Calls after close raise the close reason (or UsageError where no channel is left).
    with pytest.raises(ConnectionClosedByClient) as info:
        core.open_channel()
    assert info.value is error
    with pytest.raises(ConnectionClosedByClient):
        core.update_secret(b"", "")
    for call in (lambda: core.send_method(1, declare("q")),
                 lambda: core.basic_publish(1, "", "q", b"x"),
                 lambda: core.basic_ack(1, 1),
                 lambda: core.close_channel(1)):
        with pytest.raises((ConnectionClosedByClient, UsageError)):
            call()
    assert core.channel_state(1) is None
    sim.expect_nothing()


def test_client_close_with_code_and_text():
    core, sim = open_connection()
    core.close(320, "shutting down")
    sim.expect((0, spec.Connection.Close(320, "shutting down", 0, 0)))
    error = closed_event(sim.send(0, spec.Connection.CloseOk()))
    assert type(error) is ConnectionClosedByClient
    assert (error.reply_code, error.reply_text) == (320, "shutting down")


def test_requests_while_closing_raise_the_close_reason():
    core, sim = open_connection()
    sim.open_channel(1)
    core.close()
    sim.read()
    with pytest.raises(ConnectionClosedByClient):
        core.send_method(1, declare("q"))
    with pytest.raises(ConnectionClosedByClient):
        core.basic_publish(1, "", "q", b"x")
    with pytest.raises(ConnectionClosedByClient):
        core.open_channel()
    sim.expect_nothing()


def test_client_close_discards_everything_until_close_ok():
    core, sim = consuming()
    core.close()
    sim.read()
    assert sim.send_content(1, spec.Basic.Deliver("c1", 1, False, "", "q"), b"x") == []
    assert sim.send(1, spec.Channel.Close(404, "x", 0, 0)) == []
    assert sim.send(0, spec.Connection.Blocked("x")) == []
    sim.expect_nothing()
    assert [type(e) for e in sim.send(0, spec.Connection.CloseOk())] == [ev.ConnectionClosed]


def test_crossing_connection_closes():
    core, sim = open_connection()
    core.close()
    sim.read()
    error = closed_event(sim.send(0, spec.Connection.Close(320, "bye", 0, 0)))
    sim.expect((0, spec.Connection.CloseOk()))
    assert type(error) is ConnectionClosedByClient
    assert core.state is ConnState.CLOSED


def test_close_before_tune_is_immediate():
    for stage in ("idle", "await-start", "await-tune"):
        if stage == "await-tune":
            core, sim = started()
        else:
            core = Connection()
            sim = BrokerSim(core)
            if stage == "await-start":
                core.initiate()
                sim.read()
        core.close()
        error = closed_event(drain(core))
        assert type(error) is ConnectionClosedByClient
        assert core.state is ConnState.CLOSED
        sim.expect_nothing()


def test_close_while_awaiting_open_ok():
    core, sim = tuned()
    core.close()
    sim.expect((0, spec.Connection.Close(200, "Normal shutdown", 0, 0)))
    assert core.state is ConnState.CLOSING
    assert sim.send(0, spec.Connection.OpenOk("")) == []
    assert [type(e) for e in sim.send(0, spec.Connection.CloseOk())] == [ev.ConnectionClosed]


CONNECTION_CODES = [
    (320, ConnectionForced), (402, InvalidPath), (501, FrameError), (502, SyntaxError_),
    (503, CommandInvalid), (504, ChannelError), (505, UnexpectedFrame), (506, ResourceError),
    (530, NotAllowed), (540, NotImplemented_), (541, InternalError),
    (403, AuthenticationError), (599, ConnectionClosedByBroker),
]


@pytest.mark.parametrize(("code", "cls"), CONNECTION_CODES)
def test_broker_closes_the_connection(code, cls):
    core, sim = open_connection()
    sim.open_channel(1)
    events = sim.send(0, spec.Connection.Close(code, "CONNECTION_FORCED - bye", 60, 40))
    error = closed_event(events)  # one event for the connection, none per channel
    assert type(error) is cls
    assert (error.reply_code, error.reply_text) == (code, "CONNECTION_FORCED - bye")
    assert (error.class_id, error.method_id, error.method_name) == (60, 40, "basic.publish")
    sim.expect((0, spec.Connection.CloseOk()))
    assert core.state is ConnState.CLOSED
    assert core.channel_state(1) is None
    with pytest.raises(cls) as info:
        core.open_channel()
    assert info.value is error
    with pytest.raises((cls, UsageError)):
        core.basic_publish(1, "", "q", b"x")
    with pytest.raises(UsageError):
        core.close_channel(1)
    core.close()  # nothing to do
    sim.expect_nothing()
    assert sim.send(0, spec.Connection.CloseOk()) == []


def test_broker_close_0_8():
    _core, sim = open_connection(dialect=spec_0_8.DIALECT)
    error = closed_event(sim.send(0, spec_0_8.Connection.Close(320, "bye", 0, 0)))
    assert type(error) is ConnectionForced
    sim.expect((0, spec_0_8.Connection.CloseOk()))


def test_decode_error_closes_with_its_code():
    _core, sim = open_connection()
    events = sim.feed(b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x99\xce")  # 10.153
    sim.expect_protocol_close(events, 503, 10, 153, "unknown method 10.153", ConnState.CLOSED)
    _core2, sim2 = open_connection()
    events = sim2.feed(b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x29\xcf")  # bad frame end
    sim2.expect_protocol_close(events, 501, 0, 0, "frame end", ConnState.CLOSED)


def test_frame_larger_than_frame_max_is_501():
    _core, sim = open_connection(server_tune=(2047, 4096, 60))
    sim.open_channel(1)
    sim.consume(1, "c1")
    data = encode_method(1, spec.Basic.Deliver("c1", 1, False, "", "q")) + encode_header(
        1, 5000, spec.BasicProperties()) + b"".join(
        bytes(p) for p in encode_body(1, b"x" * 5000))
    events = sim.feed(data)
    sim.expect_protocol_close(events, 501, 0, 0, "exceeds frame_max 4096", ConnState.CLOSED)
