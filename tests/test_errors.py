"""The exception hierarchy, the reply-code table, and that no error shows a password."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from brokersim import BrokerSim, drain, open_connection

from txpika import errors, spec
from txpika.auth import AMQPlainCredentials, PlainCredentials
from txpika.connection import Connection, VirtualHostAccessRefused
from txpika.errors import (
    AccessRefused,
    AMQPError,
    AuthenticationError,
    ChannelClosed,
    ChannelClosedByBroker,
    ChannelClosedByClient,
    ConnectionClosed,
    ConnectionClosedByBroker,
    ConnectionClosedByClient,
    ConsumerCancelled,
    FlowControlError,
    HeartbeatTimeout,
    NackError,
    NotAllowed,
    OutcomeUnknownError,
    ProtocolError,
    UnroutableError,
    UsageError,
    channel_error,
    connection_error,
)

SPEC_0_9_1 = Path(__file__).resolve().parent.parent / "spec" / "amqp-rabbitmq-0.9.1.json"
CONSTANTS = json.loads(SPEC_0_9_1.read_text())["constants"]
ERROR_CONSTANTS = [c for c in CONSTANTS if c.get("class") in ("soft-error", "hard-error")]

#: Spelled out by hand: code -> the class txpika raises for it.
EXPECTED_CLASSES = {
    311: errors.ContentTooLarge,
    312: errors.NoRoute,
    313: errors.NoConsumers,
    403: errors.AccessRefused,
    404: errors.NotFound,
    405: errors.ResourceLocked,
    406: errors.PreconditionFailed,
    320: errors.ConnectionForced,
    402: errors.InvalidPath,
    501: errors.FrameError,
    502: errors.SyntaxError_,
    503: errors.CommandInvalid,
    504: errors.ChannelError,
    505: errors.UnexpectedFrame,
    506: errors.ResourceError,
    530: errors.NotAllowed,
    540: errors.NotImplemented_,
    541: errors.InternalError,
}

SECRET = "s3cr3t"


def test_the_specification_lists_the_codes_we_expect():
    assert len(ERROR_CONSTANTS) == 18
    assert {c["value"] for c in ERROR_CONSTANTS} == set(EXPECTED_CLASSES)


@pytest.mark.parametrize("constant", CONSTANTS, ids=lambda c: c["name"])
def test_every_constant_has_the_specifications_value(constant):
    name = constant["name"].replace("-", "_")
    assert getattr(spec, name) == constant["value"]
    if "class" in constant or name == "REPLY_SUCCESS":
        assert getattr(errors, name) == constant["value"]


@pytest.mark.parametrize("constant", ERROR_CONSTANTS, ids=lambda c: c["name"])
def test_code_to_class(constant):
    code = constant["value"]
    expected = EXPECTED_CLASSES[code]
    if constant["class"] == "soft-error":
        error = channel_error(code, "some text", 50, 10, "queue.declare")
        assert type(error) is expected
        assert isinstance(error, ChannelClosedByBroker)
        assert isinstance(error, ChannelClosed)
        assert not isinstance(error, ConnectionClosed)
    else:
        error = connection_error(code, "some text", 50, 10, "queue.declare")
        assert type(error) is expected
        assert isinstance(error, ConnectionClosedByBroker)
        assert isinstance(error, ConnectionClosed)
        assert not isinstance(error, ChannelClosed)
    assert isinstance(error, AMQPError)
    assert (error.reply_code, error.reply_text, error.class_id, error.method_id,
            error.method_name) == (code, "some text", 50, 10, "queue.declare")
    text = str(error)
    assert str(code) in text and "some text" in text and "queue.declare" in text


@pytest.mark.parametrize("constant", ERROR_CONSTANTS, ids=lambda c: c["name"])
def test_code_from_the_other_side_of_the_table(constant):
    """A soft code in connection.close, or a hard one in channel.close, still makes an
    exception of the right side (a broker may do either)."""
    code = constant["value"]
    on_connection = connection_error(code, "t")
    on_channel = channel_error(code, "t")
    assert isinstance(on_connection, ConnectionClosed)
    assert isinstance(on_channel, ChannelClosed)
    if code == 403:
        assert type(on_connection) is AuthenticationError  # RabbitMQ's bad login
    if constant["class"] == "soft-error" and code != 403:
        assert type(on_connection) is ConnectionClosedByBroker
    if constant["class"] == "hard-error":
        assert type(on_channel) is ChannelClosedByBroker


@pytest.mark.parametrize("code", [0, 200, 999])
def test_unknown_codes(code):
    assert type(connection_error(code, "x")) is ConnectionClosedByBroker
    assert type(channel_error(code, "x")) is ChannelClosedByBroker


def test_str_and_repr():
    error = channel_error(404, "NOT_FOUND - no queue 'q'", 50, 10, "queue.declare")
    assert str(error) == "404 NOT_FOUND - no queue 'q' (in reply to queue.declare)"
    assert repr(error) == ("NotFound(reply_code=404, reply_text=\"NOT_FOUND - no queue 'q'\", "
                           "class_id=50, method_id=10)")
    assert str(connection_error(320, "bye")) == "320 bye"
    assert str(ProtocolError(503, "odd", 60, 99)) == "503 odd (in reply to method 60.99)"
    assert str(ChannelClosedByClient(200, "")) == "200"
    assert error.args == (404, "NOT_FOUND - no queue 'q'")


def test_hierarchy():
    for cls in (ConnectionClosedByBroker, ConnectionClosedByClient, ProtocolError,
                HeartbeatTimeout, AuthenticationError):
        assert issubclass(cls, ConnectionClosed)
    for cls in (ChannelClosedByBroker, ChannelClosedByClient):
        assert issubclass(cls, ChannelClosed)
    assert not issubclass(ConnectionClosed, ChannelClosed)
    assert not issubclass(ChannelClosed, ConnectionClosed)
    for cls in (NackError, UnroutableError, OutcomeUnknownError, FlowControlError,
                ConsumerCancelled, UsageError, ConnectionClosed, ChannelClosed):
        assert issubclass(cls, AMQPError)
    assert issubclass(UsageError, ValueError)
    assert issubclass(VirtualHostAccessRefused, AccessRefused)
    assert issubclass(VirtualHostAccessRefused, NotAllowed)
    assert issubclass(VirtualHostAccessRefused, ConnectionClosed)


def test_other_errors():
    timeout = HeartbeatTimeout(30)
    assert timeout.reply_code == 320 and timeout.interval == 30 and "60" in str(timeout)
    assert NackError(7).delivery_tag == 7 and "7" in str(NackError(7))
    unroutable = UnroutableError("msg", 312, "NO_ROUTE")
    assert (unroutable.message, unroutable.reply_code, unroutable.reply_text) == (
        "msg", 312, "NO_ROUTE")
    assert "312 NO_ROUTE" in str(unroutable)
    reason = ConnectionResetError("gone")
    assert OutcomeUnknownError(reason).reason is reason
    assert "gone" in str(OutcomeUnknownError(reason))
    cancelled = ConsumerCancelled("ctag")
    assert cancelled.consumer_tag == "ctag" and "'ctag'" in str(cancelled)


# -- no error shows the password ------------------------------------------------------------


def _all_texts(obj: object) -> list[str]:
    texts = [str(obj), repr(obj)]
    if isinstance(obj, BaseException):
        texts += [str(a) for a in obj.args] + [repr(a) for a in obj.args]
        texts += [repr(v) for v in vars(obj).values()] if hasattr(obj, "__dict__") else []
    return texts


def _collect(errors_seen: list[BaseException], events: list[object]) -> None:
    for event in events:
        error = getattr(event, "error", None)
        if error is not None:
            errors_seen.append(error)


def _start(creds, mechanisms=b"PLAIN AMQPLAIN"):
    core = Connection(credentials=creds)
    sim = BrokerSim(core)
    core.initiate()
    sim.read()
    events = sim.send(0, spec.Connection.Start(0, 9, {}, mechanisms, b"en_US"))
    return core, sim, events


def _scenarios(creds):
    """Every way a connection or channel ends, each yielding the events produced."""
    core, sim, events = _start(creds, b"EXTERNAL")  # mechanism not offered
    yield core, events
    core, sim, _ = _start(creds)
    yield core, sim.send(0, spec.Connection.Secure(b"?"))  # challenge
    core, sim, _ = _start(creds)
    yield core, sim.send(0, spec.Connection.Close(403, "ACCESS_REFUSED - Login was refused "
                                                       "using authentication mechanism PLAIN",
                                                  0, 0))
    core, sim, _ = _start(creds)
    core.connection_lost(ConnectionResetError("reset"))
    yield core, drain(core)
    core, sim, _ = _start(creds)
    yield core, sim.send(0, spec.Connection.Tune(0, 100, 0))  # frame_max too small
    core, sim, _ = _start(creds)
    sim.send(0, spec.Connection.Tune(0, 0, 0))
    yield core, sim.send(0, spec.Connection.Close(530, "NOT_ALLOWED - vhost", 10, 40))
    core, sim = open_connection(credentials=creds)
    yield core, sim.send(0, spec.Connection.Start())  # protocol error
    core, sim = open_connection(credentials=creds)
    core.heartbeat_tick(0.0)
    yield core, [*drain(core), core.heartbeat_tick(1000.0), *drain(core)]
    core, sim = open_connection(credentials=creds)
    sim.open_channel(1)
    events = sim.send(1, spec.Channel.Close(404, "NOT_FOUND", 50, 10))
    sim.read()
    core.close_channel(sim.open_channel(2))
    events += sim.send(2, spec.Channel.CloseOk())
    events += sim.send(0, spec.Connection.Close(320, "CONNECTION_FORCED", 0, 0))
    yield core, events
    core, sim = open_connection(credentials=creds)
    core.close()
    yield core, sim.send(0, spec.Connection.CloseOk())


@pytest.mark.parametrize("cls", [PlainCredentials, AMQPlainCredentials])
def test_no_error_shows_the_password(cls):
    creds = cls("guest", SECRET)
    for text in (str(creds), repr(creds)):
        assert SECRET not in text
    seen: list[BaseException] = []
    for core, events in _scenarios(creds):
        _collect(seen, events)
        # Requests after the end raise the close reason or a UsageError.
        for call in (core.open_channel, lambda: core.update_secret(b"x", "y"),  # noqa: B023
                     lambda: core.basic_ack(1, 1),  # noqa: B023
                     lambda: core.send_method(1, spec.Basic.Qos())):  # noqa: B023
            try:
                call()
            except AMQPError as exc:
                seen.append(exc)
            else:  # pragma: no cover
                raise AssertionError("a request after the end succeeded")
    # Local misuse on a live connection.
    core, sim = open_connection(credentials=creds)
    sim.open_channel(1)
    for call in (lambda: core.basic_ack(1, 99), lambda: core.basic_ack(2, 1),
                 lambda: core.open_channel(0), lambda: core.open_channel(1),
                 lambda: core.basic_publish(1, "", "k" * 256, b""),
                 lambda: core.send_method(1, spec.Basic.Publish())):
        with pytest.raises(UsageError) as info:
            call()
        seen.append(info.value)
    kinds = {type(e) for e in seen}
    assert kinds >= {AuthenticationError, ProtocolError, HeartbeatTimeout,
                     VirtualHostAccessRefused, errors.NotFound, ChannelClosedByClient,
                     errors.ConnectionForced, ConnectionClosedByClient, UsageError}
    assert len(seen) >= 40
    for error in seen:
        for text in _all_texts(error):
            assert SECRET not in text, (type(error), text)


def test_connection_repr_does_not_show_the_password():
    core, sim = open_connection(credentials=PlainCredentials("guest", SECRET))
    assert SECRET not in repr(core) and SECRET not in str(core)
    assert all(SECRET not in repr(v) for v in vars(core).values())
    sim.open_channel(1)
    assert all(SECRET not in repr(e) for e in drain(core))
