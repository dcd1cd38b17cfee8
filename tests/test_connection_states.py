"""The state machine tables of the sans-IO core, enumerated pair by pair.

For every connection state and every method of the dialect arriving on channel 0, and for
every channel state and every method arriving on a channel, the pair is either accepted (it
is in the table below, which is also checked against txpika's own tables) or closes the
connection: ``connection.close`` with 503 (method), 505 (content frame without a method) or
504 (frame on a channel that is not open), and one `ConnectionClosed` carrying a
`ProtocolError` that names what arrived.
"""

from __future__ import annotations

from typing import Any

import pytest
from brokersim import BrokerSim, drain, open_connection

from txpika import events as ev
from txpika import spec, spec_0_8
from txpika._states import CHANNEL_RECEIVES, CONNECTION_RECEIVES
from txpika.auth import PlainCredentials
from txpika.connection import (
    ChannelState,
    Connection,
    ConnState,
)
from txpika.errors import ProtocolError
from txpika.frames import encode_body, encode_header, encode_method

DIALECTS = [spec.DIALECT, spec_0_8.DIALECT]
DIALECT_IDS = ["0-9-1", "0-8"]

#: What each connection state accepts on channel 0 (everything else: 503).
CONNECTION_ACCEPTS = {
    ConnState.AWAIT_START: {"connection.start", "connection.close"},
    ConnState.AWAIT_TUNE: {"connection.secure", "connection.tune", "connection.close"},
    ConnState.AWAIT_OPEN_OK: {"connection.open-ok", "connection.close", "connection.blocked",
                              "connection.unblocked"},
    ConnState.OPEN: {"connection.close", "connection.blocked", "connection.unblocked",
                     "connection.update-secret-ok"},
}

#: What each channel state accepts besides the reply to the pending request.
CHANNEL_ACCEPTS = {
    ChannelState.OPENING: {"channel.close"},
    ChannelState.OPEN: {"channel.close", "channel.flow", "basic.cancel", "basic.deliver",
                        "basic.return", "basic.ack", "basic.nack"},
}

CONFIRMS = {"basic.ack", "basic.nack"}


def test_connection_table_is_the_documented_one():
    expected = {(state, name) for state, names in CONNECTION_ACCEPTS.items() for name in names}
    assert {(state, cls.NAME) for state, cls in CONNECTION_RECEIVES} == expected


def test_channel_table_is_the_documented_one():
    expected = {(state, name) for state, names in CHANNEL_ACCEPTS.items() for name in names}
    # A closing channel takes only close-ok and a crossing close (and drops the rest).
    expected |= {(ChannelState.CLOSING, "channel.close"),
                 (ChannelState.CLOSING, "channel.close-ok")}
    assert {(state, cls.NAME) for state, cls in CHANNEL_RECEIVES} == expected


class ChallengeCredentials(PlainCredentials):
    """PLAIN that answers a challenge, so that connection.secure can be accepted."""

    __slots__ = ()

    def challenge(self, challenge: bytes) -> bytes:
        return b"answer to " + challenge


def valid_method(dialect, name: str) -> Any:
    """An instance of ``name`` that the core accepts where the table says it may."""
    m = dialect.module
    is_08 = dialect.name == "0-8"
    special = {
        "connection.start": lambda: m.Connection.Start(*((8, 0) if is_08 else (0, 9)), {},
                                                       b"PLAIN", b"en_US"),
        "connection.secure": lambda: m.Connection.Secure(b"challenge"),
        "connection.tune": lambda: m.Connection.Tune(0, 131072, 0),
        "connection.close": lambda: m.Connection.Close(320, "going away", 0, 0),
        "connection.blocked": lambda: m.Connection.Blocked("low on memory"),
        "channel.close": lambda: m.Channel.Close(404, "no queue 'q'", 50, 10),
        "channel.flow": lambda: m.Channel.Flow(False),
        "basic.cancel": lambda: m.Basic.Cancel("ctag", False),
        "basic.deliver": lambda: m.Basic.Deliver("ctag", 1, False, "", "q"),
        "basic.return": lambda: m.Basic.Return(312, "NO_ROUTE", "", "nowhere"),
        "basic.ack": lambda: m.Basic.Ack(1, False),
    }
    if name == "basic.nack":
        return m.Basic.Nack(1, False, False)
    factory = special.get(name)
    if factory is not None:
        return factory()
    return dialect.module.BY_NAME[name]()


def frames_for(dialect, channel: int, method: Any) -> bytes:
    """The method frame, and its content when it has some (0-8's test class has content
    but no properties: its methods go alone)."""
    data = encode_method(channel, method)
    if method.CONTENT and method.CLASS_ID in dialect.properties:
        props = dialect.properties[method.CLASS_ID]()
        data += encode_header(channel, 3, props) + b"".join(
            bytes(p) for p in encode_body(channel, b"abc"))
    return data


def at_state(dialect, state: ConnState) -> tuple[Connection, BrokerSim]:
    """A core brought to ``state`` with nothing left to read."""
    if state is ConnState.OPEN:
        return open_connection(dialect=dialect, credentials=ChallengeCredentials("u", "p"))
    core = Connection(dialect=dialect, credentials=ChallengeCredentials("u", "p"))
    sim = BrokerSim(core)
    core.initiate()
    sim.read()
    if state is not ConnState.AWAIT_START:
        assert sim.send(0, valid_method(dialect, "connection.start")) == []
        sim.read()
    if state is ConnState.AWAIT_OPEN_OK:
        assert sim.send(0, valid_method(dialect, "connection.tune")) == []
        sim.read()
    assert core.state is state
    return core, sim


def check_accepted_on_channel_0(dialect, state: ConnState, method: Any, core: Connection,
                                sim: BrokerSim, events: list[Any]) -> None:
    m = dialect.module
    name = method.NAME
    written = sim.methods()
    if name == "connection.start":
        assert events == []
        assert [type(w) for _, w in written] == [m.Connection.StartOk]
        assert core.state is ConnState.AWAIT_TUNE
    elif name == "connection.secure":
        assert events == []
        assert written == [(0, m.Connection.SecureOk(b"answer to challenge"))]
        assert core.state is ConnState.AWAIT_TUNE
    elif name == "connection.tune":
        assert events == []
        assert [type(w) for _, w in written] == [m.Connection.TuneOk, m.Connection.Open]
        assert core.state is ConnState.AWAIT_OPEN_OK
    elif name == "connection.open-ok":
        assert [type(e) for e in events] == [ev.ConnectionOpened]
        assert written == []
        assert core.state is ConnState.OPEN
    elif name == "connection.close":
        assert written == [(0, m.Connection.CloseOk())]
        assert [type(e) for e in events] == [ev.ConnectionClosed]
        assert not isinstance(events[0].error, ProtocolError)
        assert events[0].error.reply_code == 320
        assert core.state is ConnState.CLOSED
    elif name == "connection.blocked":
        assert events == [ev.ConnectionBlocked(reason="low on memory")]
        assert written == []
        assert core.state is state and core.blocked
    elif name == "connection.unblocked":
        assert events == [ev.ConnectionUnblocked()]
        assert written == []
        assert core.state is state and not core.blocked
    elif name == "connection.update-secret-ok":
        assert events == [ev.MethodReceived(channel=0, method=method)]
        assert written == []
        assert core.state is ConnState.OPEN
    else:  # pragma: no cover - the table grew without this test knowing
        raise AssertionError(f"no check for accepted {name}")


def check_rejected(dialect, state: ConnState, method: Any, core: Connection, sim: BrokerSim,
                   events: list[Any], where: str) -> None:
    """503 for ``method``: connection.close once the handshake is past tune, else just over."""
    text = method.NAME
    if state in (ConnState.AWAIT_OPEN_OK, ConnState.OPEN):
        error = sim.expect_protocol_close(events, 503, method.CLASS_ID, method.METHOD_ID, text)
    else:
        # Before tune nothing is negotiated: the core reports and the driver hangs up.
        assert len(events) == 1 and isinstance(events[0], ev.ConnectionClosed), where
        error = events[0].error
        assert type(error) is ProtocolError, where
        assert (error.reply_code, error.class_id, error.method_id) == (
            503, method.CLASS_ID, method.METHOD_ID), where
        assert text in error.reply_text
        sim.expect_nothing()
        assert core.state is ConnState.CLOSED
    if not method.CLIENT_RECEIVES:
        assert "only a client may send" in error.reply_text, (where, error.reply_text)


@pytest.mark.parametrize("dialect", DIALECTS, ids=DIALECT_IDS)
@pytest.mark.parametrize("state", list(CONNECTION_ACCEPTS), ids=lambda s: s.value)
def test_every_method_on_channel_0_in_every_state(dialect, state):
    """Every (ConnState, method) pair, for every method of every class of the dialect."""
    names = [cls.NAME for cls in dialect.methods.values()]
    assert len(names) == len(set(names))
    accepted = CONNECTION_ACCEPTS[state] & set(names)
    if dialect.name == "0-8":
        assert "connection.blocked" not in accepted
    checked = 0
    for cls in dialect.methods.values():
        core, sim = at_state(dialect, state)
        method = valid_method(dialect, cls.NAME)
        events = sim.feed(frames_for(dialect, 0, method))
        where = f"{cls.NAME} in {state.value}"
        if cls.NAME in accepted:
            check_accepted_on_channel_0(dialect, state, method, core, sim, events)
        else:
            check_rejected(dialect, state, method, core, sim, events, where)
        checked += 1
    assert checked == len(dialect.methods)


# -- channels -------------------------------------------------------------------------------


def channel_at(dialect, state: ChannelState, confirm: bool) -> tuple[Connection, BrokerSim]:
    """An open connection with channel 1 in ``state`` (OPEN: with confirms and one publish
    outstanding when ``confirm``), and a consumer "ctag"."""
    core, sim = open_connection(dialect=dialect)
    if state is ChannelState.OPENING:
        assert core.open_channel() == 1
        sim.read()
    else:
        sim.open_channel(1)
        sim.consume(1, "ctag")
        if confirm:
            sim.select_confirms(1)
            assert core.basic_publish(1, "", "nowhere", b"x", mandatory=True) == 1
            sim.read()
        if state is ChannelState.CLOSING:
            core.close_channel(1)
            sim.read()
    assert core.channel_state(1) is state
    return core, sim


def check_accepted_on_channel(dialect, method: Any, core: Connection, sim: BrokerSim,
                              events: list[Any], awaiting: Any = None) -> None:
    m = dialect.module
    name = method.NAME
    written = sim.methods()
    if awaiting is not None and type(method) in awaiting.REPLIES:
        if method.CONTENT:
            assert [type(e) for e in events] == [ev.MessageReceived]
            assert events[0].body == b"abc"
        else:
            assert events == [ev.MethodReceived(channel=1, method=method)]
        assert written == []
        return
    if name == "channel.open-ok":
        assert events == [ev.ChannelOpened(channel=1)]
        assert written == []
        assert core.channel_state(1) is ChannelState.OPEN
    elif name == "channel.close":
        assert written == [(1, m.Channel.CloseOk())]
        assert [type(e) for e in events] == [ev.ChannelClosed]
        assert events[0].error.reply_code == 404
        assert core.channel_state(1) is None
    elif name == "channel.flow":
        assert written == [(1, m.Channel.FlowOk(False))]
        assert events == [ev.ChannelFlow(channel=1, active=False)]
    elif name == "basic.cancel":
        assert written == [(1, m.Basic.CancelOk("ctag"))]
        assert events == [ev.MethodReceived(channel=1, method=method)]
    elif name == "basic.deliver":
        assert written == []
        assert [type(e) for e in events] == [ev.MessageReceived]
        assert events[0].method == method and events[0].body == b"abc"
    elif name == "basic.return":
        assert written == []
        if core.in_confirm_mode(1) and awaiting is None:
            # Held back until the confirm of the mandatory publish it belongs to.
            assert events == []
            events = sim.send(1, m.Basic.Ack(1, False))
            assert events == [ev.PublishReturned(channel=1, delivery_tag=1, method=method,
                                                 properties=m.BasicProperties(), body=b"abc")]
        else:
            # No confirm mode, or (confirm.select awaiting its reply) no publish it fits.
            assert events == [ev.MessageReceived(channel=1, method=method,
                                                 properties=m.BasicProperties(), body=b"abc")]
    elif name in CONFIRMS:
        assert written == []
        kind = ev.PublishAcked if name == "basic.ack" else ev.PublishNacked
        assert events == [kind(channel=1, delivery_tags=(1,))]
    else:  # pragma: no cover
        raise AssertionError(f"no check for accepted {name}")
    assert core.state is ConnState.OPEN


def channel_expectation(state: ChannelState, method: Any, confirm: bool,
                        awaiting: Any = None) -> bool:
    """True if ``method`` arriving on a channel in ``state`` must be accepted."""
    if awaiting is not None and type(method) in awaiting.REPLIES:
        return True
    if method.NAME in CONFIRMS and not confirm:
        return False  # in the table, but only meaningful in confirm mode
    return method.NAME in CHANNEL_ACCEPTS.get(state, set())


@pytest.mark.parametrize("dialect", DIALECTS, ids=DIALECT_IDS)
@pytest.mark.parametrize("state", [ChannelState.OPENING, ChannelState.OPEN],
                         ids=lambda s: s.value)
def test_every_method_on_a_channel_in_every_state(dialect, state):
    """Every (ChannelState, method) pair; OPEN in confirm mode where the dialect has it."""
    confirm = dialect.extensions and state is ChannelState.OPEN
    open_method = dialect.module.Channel.Open()
    for cls in dialect.methods.values():
        core, sim = channel_at(dialect, state, confirm)
        method = valid_method(dialect, cls.NAME)
        events = sim.feed(frames_for(dialect, 1, method))
        awaiting = open_method if state is ChannelState.OPENING else None
        if channel_expectation(state, method, confirm, awaiting):
            check_accepted_on_channel(dialect, method, core, sim, events)
        else:
            check_rejected(dialect, ConnState.OPEN, method, core, sim, events,
                           f"{cls.NAME} on a channel in {state.value}")


def test_acks_outside_confirm_mode_are_503():
    for cls in (spec.Basic.Ack, spec.Basic.Nack):
        _core, sim = channel_at(spec.DIALECT, ChannelState.OPEN, confirm=False)
        events = sim.send(1, cls(1, False))
        error = sim.expect_protocol_close(events, 503, 60, cls.METHOD_ID, cls.NAME)
        assert "confirm mode" in error.reply_text


def sync_requests(dialect) -> list[Any]:
    """Every synchronous request that send_method() puts on a channel."""
    out = []
    for cls in dialect.methods.values():
        if (cls.SYNCHRONOUS and cls.CLIENT_SENDS and not cls.CONTENT
                and cls.CLASS_ID not in (10, 20)):
            out.append(cls())
    return out


@pytest.mark.parametrize("dialect", DIALECTS, ids=DIALECT_IDS)
def test_every_method_while_each_request_awaits_its_reply(dialect):
    """(awaited request, method) pairs: the request's replies are accepted, the table's
    methods too, every other method is 503 -- including replies to other requests."""
    requests = sync_requests(dialect)
    assert len(requests) == (19 if dialect is spec.DIALECT else 25)
    for request in requests:
        for cls in dialect.methods.values():
            core, sim = channel_at(dialect, ChannelState.OPEN, confirm=False)
            core.send_method(1, request)
            sim.expect((1, request))
            method = valid_method(dialect, cls.NAME)
            events = sim.feed(frames_for(dialect, 1, method))
            where = f"{cls.NAME} awaiting {request.NAME}"
            if not method.CLIENT_RECEIVES and type(method) in request.REPLIES:
                # 0-8 oddities (file.open-ok): a reply only a client sends is still refused.
                check_rejected(dialect, ConnState.OPEN, method, core, sim, events, where)
            elif channel_expectation(ChannelState.OPEN, method, False, request):
                check_accepted_on_channel(dialect, method, core, sim, events, request)
            else:
                check_rejected(dialect, ConnState.OPEN, method, core, sim, events, where)


@pytest.mark.parametrize("dialect", DIALECTS, ids=DIALECT_IDS)
def test_closing_channel_discards_everything_but_close_and_close_ok(dialect):
    m = dialect.module
    for cls in dialect.methods.values():
        core, sim = channel_at(dialect, ChannelState.CLOSING, confirm=False)
        method = valid_method(dialect, cls.NAME)
        events = sim.feed(frames_for(dialect, 1, method))
        if cls.NAME == "channel.close-ok":
            assert [type(e) for e in events] == [ev.ChannelClosed]
            assert core.channel_state(1) is None
            sim.expect_nothing()
        elif cls.NAME == "channel.close":
            sim.expect((1, m.Channel.CloseOk()))
            assert [type(e) for e in events] == [ev.ChannelClosed]
            assert core.channel_state(1) is ChannelState.CLOSING
        else:
            assert events == [], cls.NAME
            sim.expect_nothing()
            assert core.channel_state(1) is ChannelState.CLOSING
            assert core.state is ConnState.OPEN


# -- content frames without a method, frames on channels that are not open -----------------


def header_frame(channel: int) -> bytes:
    return encode_header(channel, 3, spec.BasicProperties())


def body_frame(channel: int) -> bytes:
    return b"".join(bytes(p) for p in encode_body(channel, b"abc"))


@pytest.mark.parametrize("state", [ChannelState.OPENING, ChannelState.OPEN],
                         ids=lambda s: s.value)
@pytest.mark.parametrize("make", [header_frame, body_frame], ids=["header", "body"])
def test_content_frame_without_method_is_505(state, make):
    _core, sim = channel_at(spec.DIALECT, state, confirm=False)
    events = sim.feed(make(1))
    sim.expect_protocol_close(events, 505, 0, 0, "content frame on channel 1 without a method")


@pytest.mark.parametrize("make", [header_frame, body_frame], ids=["header", "body"])
def test_content_frame_on_channel_0_is_505(make):
    _core, sim = open_connection()
    events = sim.feed(make(0))
    sim.expect_protocol_close(events, 505, 0, 0, "channel 0")


@pytest.mark.parametrize("dialect", DIALECTS, ids=DIALECT_IDS)
def test_any_method_on_a_channel_that_is_not_open_is_504(dialect):
    for cls in dialect.methods.values():
        _core, sim = open_connection(dialect=dialect)
        sim.open_channel(1)
        events = sim.feed(encode_method(7, cls()))
        sim.expect_protocol_close(events, 504, 0, 0,
                                  f"{cls.NAME} on channel 7, which is not open")


@pytest.mark.parametrize("make", [header_frame, body_frame], ids=["header", "body"])
def test_content_on_a_channel_that_is_not_open_is_504(make):
    _core, sim = open_connection()
    events = sim.feed(make(3))
    sim.expect_protocol_close(events, 504, 0, 0, "content on channel 3")


def test_frame_on_a_channel_closed_by_the_broker_is_504():
    _core, sim = open_connection()
    sim.open_channel(1)
    sim.send(1, spec.Channel.Close(404, "gone", 0, 0))
    sim.expect((1, spec.Channel.CloseOk()))
    events = sim.send(1, spec.Basic.Deliver("ctag", 1, False, "", "q"))
    sim.expect_protocol_close(events, 504, 0, 0, "basic.deliver on channel 1")


def test_frame_on_a_channel_after_its_close_ok_is_504():
    core, sim = open_connection()
    sim.open_channel(1)
    core.close_channel(1)
    sim.read()
    assert [type(e) for e in sim.send(1, spec.Channel.CloseOk())] == [ev.ChannelClosed]
    events = sim.send(1, spec.Queue.DeclareOk("q", 0, 0))
    sim.expect_protocol_close(events, 504, 0, 0, "queue.declare-ok on channel 1")


# -- after a protocol error ----------------------------------------------------------------


def test_after_sending_close_only_close_ok_matters():
    core, sim = open_connection()
    sim.open_channel(1)
    sim.open_channel(2)
    events = sim.send(1, spec.Queue.Declare())  # only a client sends this: 503
    sim.expect_protocol_close(events, 503, 50, 10, "queue.declare")
    garbage = [
        encode_method(0, spec.Connection.Blocked("x")),
        encode_method(0, spec.Connection.OpenOk("")),
        encode_method(1, spec.Channel.Close(404, "x", 0, 0)),
        encode_method(2, spec.Basic.Deliver("c", 1, False, "", "q")),
        header_frame(2),
        body_frame(2),
        encode_method(9, spec.Queue.DeclareOk()),
        encode_method(1, spec.Channel.CloseOk()),
        b"\x08\x00\x00\x00\x00\x00\x00\xce",
    ]
    for data in garbage:
        assert sim.feed(data) == []
        sim.expect_nothing()
        assert core.state is ConnState.CLOSING
        assert not core.blocked
    assert sim.send(0, spec.Connection.CloseOk()) == []
    assert core.state is ConnState.CLOSED
    sim.expect_nothing()
    # Over: input is ignored.
    assert sim.send(0, spec.Connection.Close(320, "x", 0, 0)) == []
    sim.expect_nothing()


def test_crossing_connection_close_after_protocol_error():
    core, sim = open_connection()
    events = sim.send(0, spec.Connection.Start())
    sim.expect_protocol_close(events, 503, 10, 10, "connection.start")
    assert sim.send(0, spec.Connection.Close(320, "bye", 0, 0)) == []
    sim.expect((0, spec.Connection.CloseOk()))
    assert core.state is ConnState.CLOSED


def test_events_are_taken_one_at_a_time_and_the_error_is_reported_once():
    core, sim = open_connection()
    sim.open_channel(1)
    core.receive_data(encode_method(0, spec.Connection.Blocked("a"))
                      + encode_method(0, spec.Connection.Start())
                      + encode_method(0, spec.Connection.Start()))
    first = core.next_event()
    assert first == ev.ConnectionBlocked(reason="a")
    # The second start has not been looked at yet.
    assert core.state is ConnState.OPEN
    events = drain(core)
    assert len(events) == 1 and isinstance(events[0].error, ProtocolError)
    assert [type(w) for _, w in sim.methods()] == [spec.Connection.Close]
