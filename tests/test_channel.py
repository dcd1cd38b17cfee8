"""`Channel` over `AMQPProtocol` and a `StringTransport`: every method's frame and result,
timeouts and cancellation (the channel stays consistent), channel errors, publishing with and
without confirms, back-pressure from the transport, and flow control.

Each test checks both the Deferreds and the exact frames the client wrote (`twistedsim`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet import error as terror
from twistedsim import (
    Harness,
    HighWaterTransport,
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

from txpika import spec, spec_0_8
from txpika.channel import Channel, Message
from txpika.errors import (
    ChannelClosedByBroker,
    ChannelClosedByClient,
    ConnectionForced,
    ConnectionLost,
    FlowControlError,
    NackError,
    NotFound,
    OutcomeUnknownError,
    PreconditionFailed,
    ResourceLocked,
    UnroutableError,
    UsageError,
)
from txpika.parameters import ConnectionParameters

m = spec

# Fails a test that leaves a failed Deferred nobody handled (see twistedsim).
pytestmark = pytest.mark.usefixtures("no_unhandled_errors")


@pytest.fixture
def h() -> Harness:
    return connect()


@pytest.fixture
def ch(h: Harness) -> Channel:
    return h.channel()


def _publishes(h: Harness) -> list[tuple[int, str, bytes | None]]:
    """(channel, routing key, body) of each publish written; nothing else may be written."""
    out = []
    for command in h.broker.commands():
        assert command.method.NAME == "basic.publish", command
        out.append((command.channel, command.method.routing_key, command.body))
    return out


# -- every method: its frame and its -Ok -------------------------------------------------------

_ARGS = {"x-max-length": 10}

_CASES: list[tuple[str, Callable[[Channel], defer.Deferred], Any, Any]] = [
    ("exchange_declare default",
     lambda c: c.exchange_declare("ex"),
     m.Exchange.Declare(0, "ex", "direct", False, False, False, False, False, {}),
     m.Exchange.DeclareOk()),
    ("exchange_declare all",
     lambda c: c.exchange_declare("ex", exchange_type="topic", passive=True, durable=True,
                                  auto_delete=True, internal=True, arguments=_ARGS),
     m.Exchange.Declare(0, "ex", "topic", True, True, True, True, False, _ARGS),
     m.Exchange.DeclareOk()),
    ("exchange_delete",
     lambda c: c.exchange_delete("ex", if_unused=True),
     m.Exchange.Delete(0, "ex", True, False), m.Exchange.DeleteOk()),
    ("exchange_bind",
     lambda c: c.exchange_bind("dst", "src", "a.*", arguments=_ARGS),
     m.Exchange.Bind(0, "dst", "src", "a.*", False, _ARGS), m.Exchange.BindOk()),
    ("exchange_unbind",
     lambda c: c.exchange_unbind("dst", "src", "a.*"),
     m.Exchange.Unbind(0, "dst", "src", "a.*", False, {}), m.Exchange.UnbindOk()),
    ("queue_declare server-named",
     lambda c: c.queue_declare(),
     m.Queue.Declare(0, "", False, False, True, True, False, {}),
     m.Queue.DeclareOk("amq.gen-1", 0, 0)),
    ("queue_declare named",
     lambda c: c.queue_declare("jobs", durable=True, arguments=_ARGS),
     m.Queue.Declare(0, "jobs", False, True, False, False, False, _ARGS),
     m.Queue.DeclareOk("jobs", 3, 1)),
    ("queue_declare named exclusive",
     lambda c: c.queue_declare("jobs", exclusive=True, auto_delete=True),
     m.Queue.Declare(0, "jobs", False, False, True, True, False, {}),
     m.Queue.DeclareOk("jobs", 0, 0)),
    ("queue_declare server-named explicit",
     lambda c: c.queue_declare("", exclusive=False, auto_delete=False),
     m.Queue.Declare(0, "", False, False, False, False, False, {}),
     m.Queue.DeclareOk("amq.gen-2", 0, 0)),
    ("queue_declare passive",
     lambda c: c.queue_declare("jobs", passive=True),
     m.Queue.Declare(0, "jobs", True, False, False, False, False, {}),
     m.Queue.DeclareOk("jobs", 7, 0)),
    ("queue_bind",
     lambda c: c.queue_bind("q", "ex", "rk", arguments=_ARGS),
     m.Queue.Bind(0, "q", "ex", "rk", False, _ARGS), m.Queue.BindOk()),
    ("queue_unbind",
     lambda c: c.queue_unbind("q", "ex", "rk"),
     m.Queue.Unbind(0, "q", "ex", "rk", {}), m.Queue.UnbindOk()),
    ("queue_purge",
     lambda c: c.queue_purge("q"),
     m.Queue.Purge(0, "q", False), m.Queue.PurgeOk(12)),
    ("queue_delete",
     lambda c: c.queue_delete("q", if_unused=True, if_empty=True),
     m.Queue.Delete(0, "q", True, True, False), m.Queue.DeleteOk(4)),
    ("basic_qos",
     lambda c: c.basic_qos(prefetch_count=50),
     m.Basic.Qos(0, 50, False), m.Basic.QosOk()),
    ("basic_qos global",
     lambda c: c.basic_qos(prefetch_count=5, prefetch_size=1000, global_qos=True),
     m.Basic.Qos(1000, 5, True), m.Basic.QosOk()),
    ("basic_recover",
     lambda c: c.basic_recover(),
     m.Basic.Recover(True), m.Basic.RecoverOk()),
    ("basic_recover no requeue",
     lambda c: c.basic_recover(requeue=False),
     m.Basic.Recover(False), m.Basic.RecoverOk()),
    ("basic_cancel",
     lambda c: c.basic_cancel("ctag"),
     m.Basic.Cancel("ctag", False), m.Basic.CancelOk("ctag")),
    ("confirm_select",
     lambda c: c.confirm_select(),
     m.Confirm.Select(False), m.Confirm.SelectOk()),
    ("tx_select", lambda c: c.tx_select(), m.Tx.Select(), m.Tx.SelectOk()),
    ("tx_commit", lambda c: c.tx_commit(), m.Tx.Commit(), m.Tx.CommitOk()),
    ("tx_rollback", lambda c: c.tx_rollback(), m.Tx.Rollback(), m.Tx.RollbackOk()),
    ("flow", lambda c: c.flow(False), m.Channel.Flow(False), m.Channel.FlowOk(False)),
]


@pytest.mark.parametrize(("name", "call", "request_", "reply"), _CASES,
                         ids=[c[0] for c in _CASES])
def test_method_frame_and_reply(h: Harness, ch: Channel, name: str,
                                call: Callable[[Channel], defer.Deferred],
                                request_: Any, reply: Any) -> None:
    d = call(ch)
    h.expect((1, request_))
    no_result(d)
    h.broker.send(1, reply)
    assert success(d) == reply
    h.broker.expect_nothing()
    assert h.clock.getDelayedCalls() == [c for c in h.clock.getDelayedCalls()
                                         if c.func.__name__ == "_heartbeat"]


def test_basic_consume_frame_and_consumer(h: Harness, ch: Channel) -> None:
    d = ch.basic_consume("q", auto_ack=True, exclusive=True, consumer_tag="mine",
                         arguments={"x-priority": 5})
    h.expect((1, m.Basic.Consume(0, "q", "mine", False, True, True, False,
                                 {"x-priority": 5})))
    no_result(d)
    h.broker.send(1, m.Basic.ConsumeOk("mine"))
    consumer = success(d)
    assert (consumer.consumer_tag, consumer.queue, consumer.auto_ack) == ("mine", "q", True)
    assert consumer.active and consumer.end_reason is None


def test_basic_consume_server_named_tag(h: Harness, ch: Channel) -> None:
    d = ch.basic_consume("q")
    h.expect((1, m.Basic.Consume(0, "q", "", False, False, False, False, {})))
    h.broker.send(1, m.Basic.ConsumeOk("amq.ctag-1"))
    assert success(d).consumer_tag == "amq.ctag-1"


def test_requests_are_pipelined_in_order(h: Harness, ch: Channel) -> None:
    d1 = ch.queue_declare("a")
    d2 = ch.queue_bind("a", "ex", "k")
    d3 = ch.basic_qos(prefetch_count=1)
    h.expect((1, m.Queue.Declare(0, "a")))  # one request on the wire at a time
    h.broker.send(1, m.Queue.DeclareOk("a", 0, 0))
    assert success(d1).queue == "a"
    h.expect((1, m.Queue.Bind(0, "a", "ex", "k")))
    no_result(d2)
    h.broker.send(1, m.Queue.BindOk())
    h.expect((1, m.Basic.Qos(0, 1, False)))
    success(d2)
    h.broker.send(1, m.Basic.QosOk())
    success(d3)
    h.broker.expect_nothing()


def test_exchange_bind_on_0_8_is_a_usage_error() -> None:
    h = start(ConnectionParameters(protocol="0-8"))
    ready = h.protocol.ready
    send_start(h)
    send_tune(h)
    h.broker.send(0, spec_0_8.Connection.OpenOk(""))
    success(ready)
    ch = h.channel()
    failure(ch.exchange_bind("a", "b"), UsageError)
    failure(ch.exchange_unbind("a", "b"), UsageError)
    failure(ch.confirm_select(), UsageError)
    failure(ch.basic_consume("q", arguments={"x": 1}), UsageError)
    h.broker.expect_nothing()
    d = ch.basic_consume("q")
    h.expect((1, spec_0_8.Basic.Consume(0, "q", "", False, False, False, False)))
    h.broker.send(1, spec_0_8.Basic.ConsumeOk("t"))
    assert success(d).consumer_tag == "t"


def test_bad_argument_fails_without_raising(h: Harness, ch: Channel) -> None:
    d = ch.queue_declare("q" * 256)  # a shortstr holds 255 bytes
    failure(d, UsageError)
    h.broker.expect_nothing()
    d = ch.queue_declare("ok")  # the channel is still usable
    h.expect((1, m.Queue.Declare(0, "ok")))
    h.broker.send(1, m.Queue.DeclareOk("ok", 0, 0))
    success(d)


# -- timeouts and cancellation -----------------------------------------------------------------

def test_timeout_then_late_reply_is_absorbed(h: Harness, ch: Channel) -> None:
    d1 = ch.queue_declare("a", timeout=5)
    h.expect((1, m.Queue.Declare(0, "a")))
    h.clock.advance(4.99)
    no_result(d1)
    h.clock.advance(0.01)
    failure(d1, defer.TimeoutError)
    d2 = ch.queue_declare("b", timeout=5)
    h.broker.expect_nothing()  # waits behind the unanswered request
    h.broker.send(1, m.Queue.DeclareOk("a", 1, 0))  # the late reply
    h.expect((1, m.Queue.Declare(0, "b")))
    no_result(d2)
    h.broker.send(1, m.Queue.DeclareOk("b", 2, 0))
    ok = success(d2)
    assert (ok.queue, ok.message_count) == ("b", 2)
    # The second call's timer is gone.
    h.clock.advance(10)
    assert ch.is_open and h.protocol.is_open


def test_timeout_while_queued_behind_another_request(h: Harness, ch: Channel) -> None:
    d1 = ch.queue_declare("a")
    d2 = ch.queue_purge("a", timeout=1)
    d3 = ch.queue_delete("a")
    h.expect((1, m.Queue.Declare(0, "a")))
    h.clock.advance(1)
    failure(d2, defer.TimeoutError)
    h.broker.send(1, m.Queue.DeclareOk("a", 0, 0))
    assert success(d1).queue == "a"
    h.expect((1, m.Queue.Purge(0, "a")))  # already queued in the core: it is still sent
    h.broker.send(1, m.Queue.PurgeOk(3))  # absorbed
    h.expect((1, m.Queue.Delete(0, "a")))
    h.broker.send(1, m.Queue.DeleteOk(0))
    assert success(d3) == m.Queue.DeleteOk(0)


def test_cancel_then_late_reply_is_absorbed(h: Harness, ch: Channel) -> None:
    d1 = ch.exchange_declare("ex")
    h.expect((1, m.Exchange.Declare(0, "ex")))
    d1.cancel()
    failure(d1, defer.CancelledError)
    d2 = ch.queue_declare("q")
    h.broker.send(1, m.Exchange.DeclareOk())
    h.expect((1, m.Queue.Declare(0, "q")))
    h.broker.send(1, m.Queue.DeclareOk("q", 0, 0))
    assert success(d2).queue == "q"
    h.broker.expect_nothing()


def test_cancelled_consume_is_cancelled_when_its_ok_arrives(h: Harness, ch: Channel) -> None:
    d = ch.basic_consume("q", on_message_callback=lambda msg: pytest.fail("delivered"))
    h.expect((1, m.Basic.Consume(0, "q")))
    d.cancel()
    failure(d, defer.CancelledError)
    h.broker.send(1, m.Basic.ConsumeOk("late"))
    h.expect((1, m.Basic.Cancel("late", False)))
    # Deliveries already on their way are given back.
    h.broker.deliver(1, "late", 1)
    h.broker.deliver(1, "late", 2)
    h.expect((1, m.Basic.Reject(1, True)), (1, m.Basic.Reject(2, True)))
    h.broker.send(1, m.Basic.CancelOk("late"))
    h.broker.expect_nothing()
    d2 = ch.queue_declare("next")  # the channel is consistent
    h.expect((1, m.Queue.Declare(0, "next")))
    h.broker.send(1, m.Queue.DeclareOk("next", 0, 0))
    assert success(d2).queue == "next"


def test_timed_out_consume_is_cancelled_when_its_ok_arrives(h: Harness, ch: Channel) -> None:
    d = ch.basic_consume("q", timeout=2)
    h.expect((1, m.Basic.Consume(0, "q")))
    h.clock.advance(2)
    failure(d, defer.TimeoutError)
    h.broker.send(1, m.Basic.ConsumeOk("late"))
    h.expect((1, m.Basic.Cancel("late", False)))
    h.broker.deliver(1, "late", 1)
    h.expect((1, m.Basic.Reject(1, True)))


def test_cancelled_basic_get_message_is_rejected(h: Harness, ch: Channel) -> None:
    d = ch.basic_get("q")
    h.expect((1, m.Basic.Get(0, "q", False)))
    d.cancel()
    failure(d, defer.CancelledError)
    h.broker.send_content(1, m.Basic.GetOk(1, False, "", "q", 0), b"lost")
    h.expect((1, m.Basic.Reject(1, True)))
    d2 = ch.basic_get("q")
    h.expect((1, m.Basic.Get(0, "q", False)))
    h.broker.send(1, m.Basic.GetEmpty(""))
    assert success(d2) is None


# -- basic.get ---------------------------------------------------------------------------------

def test_basic_get_message(h: Harness, ch: Channel) -> None:
    d = ch.basic_get("q")
    h.expect((1, m.Basic.Get(0, "q", False)))
    props = m.BasicProperties(content_type="text/plain", headers={"a": 1})
    h.broker.send_content(1, m.Basic.GetOk(7, True, "ex", "rk", 4), b"hello", props)
    message = success(d)
    assert isinstance(message, Message)
    assert (message.body, message.delivery_tag, message.redelivered) == (b"hello", 7, True)
    assert (message.exchange, message.routing_key, message.message_count) == ("ex", "rk", 4)
    assert message.properties == props and message.channel is ch
    assert not message.settled
    success(message.ack())
    h.expect((1, m.Basic.Ack(7, False)))


def test_basic_get_auto_ack(h: Harness, ch: Channel) -> None:
    d = ch.basic_get("q", auto_ack=True)
    h.expect((1, m.Basic.Get(0, "q", True)))
    h.broker.send_content(1, m.Basic.GetOk(1, False, "", "q", 0), b"x")
    message = success(d)
    assert message.settled
    failure(message.ack(), UsageError)
    h.broker.expect_nothing()


def test_basic_get_empty(h: Harness, ch: Channel) -> None:
    d = ch.basic_get("q")
    h.expect((1, m.Basic.Get(0, "q", False)))
    h.broker.send(1, m.Basic.GetEmpty(""))
    assert success(d) is None


def test_basic_get_then_another_request(h: Harness, ch: Channel) -> None:
    d1 = ch.basic_get("q")
    d2 = ch.queue_purge("q")
    h.expect((1, m.Basic.Get(0, "q", False)))
    h.broker.send_content(1, m.Basic.GetOk(1, False, "", "q", 0), b"a" * 10)
    assert success(d1).body == b"a" * 10
    h.expect((1, m.Queue.Purge(0, "q")))
    h.broker.send(1, m.Queue.PurgeOk(0))
    success(d2)


def test_basic_ack_nack_reject_on_the_channel(h: Harness, ch: Channel) -> None:
    for tag in (1, 2, 3, 4):
        d = ch.basic_get("q")
        h.expect((1, m.Basic.Get(0, "q", False)))
        h.broker.send_content(1, m.Basic.GetOk(tag, False, "", "q", 0), b"x")
        success(d)
    assert success(ch.basic_ack(1)) is None
    assert success(ch.basic_nack(2, requeue=False)) is None
    assert success(ch.basic_reject(3, requeue=False)) is None
    assert success(ch.basic_ack(4, multiple=True)) is None
    h.expect((1, m.Basic.Ack(1, False)), (1, m.Basic.Nack(2, False, False)),
             (1, m.Basic.Reject(3, False)), (1, m.Basic.Ack(4, True)))
    failure(ch.basic_ack(1), UsageError)  # not awaiting an ack any more: nothing is sent
    failure(ch.basic_ack(99), UsageError)
    h.broker.expect_nothing()


# -- channel errors ----------------------------------------------------------------------------

def test_channel_error_fails_only_that_channel(h: Harness) -> None:
    ch1 = h.channel()
    ch2 = h.channel()
    d1 = ch1.queue_declare("missing", passive=True)
    d1b = ch1.queue_bind("missing", "ex")  # queued behind the declare
    d2 = ch2.queue_declare("other")
    h.expect((1, m.Queue.Declare(0, "missing", passive=True)), (2, m.Queue.Declare(0, "other")))
    with capture_logs():
        h.broker.close_channel(1, 404, "NOT_FOUND - no queue 'missing'", 50, 10)
    h.expect((1, m.Channel.CloseOk()))
    error = failure(d1, NotFound)
    assert (error.reply_code, error.class_id, error.method_id) == (404, 50, 10)
    assert error.method_name == "queue.declare"
    assert failure(d1b, NotFound) is error
    assert not ch1.is_open and ch2.is_open and h.protocol.is_open
    no_result(d2)
    h.broker.send(2, m.Queue.DeclareOk("other", 0, 0))
    assert success(d2).queue == "other"
    # Calls on the closed channel fail at once, with its error, and write nothing.
    for d in (ch1.queue_declare("x"), ch1.basic_publish("", "k", b"x"), ch1.basic_get("q"),
              ch1.basic_consume("q"), ch1.basic_qos(1), ch1.confirm_select()):
        assert failure(d, NotFound) is error
    failure(ch1.basic_ack(1), UsageError)
    assert success(ch1.close()) is None
    h.broker.expect_nothing()
    # The number can be used again.
    assert h.channel(1).is_open


@pytest.mark.parametrize(("code", "cls"), [(405, ResourceLocked), (406, PreconditionFailed),
                                           (499, ChannelClosedByBroker)])
def test_channel_error_classes(h: Harness, ch: Channel, code: int, cls: type) -> None:
    d = ch.queue_declare("q")
    h.expect((1, m.Queue.Declare(0, "q")))
    h.broker.close_channel(1, code, "nope", 50, 10)
    h.expect((1, m.Channel.CloseOk()))
    assert type(failure(d, cls)) is cls


def test_channel_error_fails_unconfirmed_publishes(h: Harness) -> None:
    ch = h.confirm_channel()
    d = ch.basic_publish("nope", "k", b"x")
    h.broker.commands()
    h.broker.close_channel(1, 404, "NOT_FOUND - no exchange 'nope'", 60, 40)
    h.expect((1, m.Channel.CloseOk()))
    error = failure(d, OutcomeUnknownError)
    assert isinstance(error.reason, NotFound)


def test_connection_error_fails_all_channels(h: Harness) -> None:
    ch1 = h.channel()
    ch2 = h.channel()
    d1 = ch1.queue_declare("a")
    d2 = ch2.queue_declare("b")
    h.broker.methods()
    h.broker.close_connection(320, "CONNECTION_FORCED")
    error = failure(d1, ConnectionForced)
    assert failure(d2, ConnectionForced) is error
    assert failure(ch1.queue_declare("c"), ConnectionForced) is error
    assert not ch1.is_open and not ch2.is_open


# -- publishing --------------------------------------------------------------------------------

def test_publish_without_confirms_fires_at_once(h: Harness, ch: Channel) -> None:
    props = m.BasicProperties(content_type="application/json", delivery_mode=2,
                              headers={"k": "v"})
    d = ch.basic_publish("ex", "rk", b'{"a": 1}', properties=props, mandatory=True)
    assert success(d) is None
    (command,) = h.broker.commands()
    assert command.channel == 1
    assert command.method == m.Basic.Publish(0, "ex", "rk", True, False)
    assert command.properties == props and command.body == b'{"a": 1}'


def test_publish_splits_large_bodies_by_frame_max() -> None:
    h = connect(server_tune=(2047, 4096, 60))
    ch = h.channel()
    body = bytes(range(256)) * 40  # 10240 bytes
    success(ch.basic_publish("", "rk", body))
    (command,) = h.broker.commands()
    assert command.body == body
    assert command.body_frames == (4088, 4088, 2064)


def test_publish_empty_body(h: Harness, ch: Channel) -> None:
    success(ch.basic_publish("", "rk", b""))
    (command,) = h.broker.commands()
    assert command.body == b"" and command.body_frames == ()


def test_publish_fires_before_it_returns_on_an_idle_transport(h: Harness, ch: Channel) -> None:
    """Without confirms, a publish the transport can take fires at once: an awaited publish
    costs no trip through the reactor. So does one made from a callback while events are
    dispatched (its frames may wait for the end of the batch, in order)."""
    ds = [ch.basic_publish("", f"k{i}", b"%d" % i) for i in range(3)]
    assert [d.called for d in ds] == [True, True, True]
    for d in ds:
        assert success(d) is None
    assert _publishes(h) == [(1, "k0", b"0"), (1, "k1", b"1"), (1, "k2", b"2")]
    # From a callback run while the broker's frames are dispatched:
    fired_on_return: list[bool] = []

    def publish_from_callback(_: object) -> None:
        d = ch.basic_publish("", "cb", b"c")
        fired_on_return.append(d.called)
        assert h.transport.value() == b""  # written at the end of the batch

    ch.basic_qos(prefetch_count=1).addCallback(publish_from_callback)
    h.broker.commands()
    h.broker.send(1, m.Basic.QosOk())
    assert fired_on_return == [True]
    assert _publishes(h) == [(1, "cb", b"c")]


def test_publish_waits_while_the_transport_is_paused(h: Harness, ch: Channel) -> None:
    h.transport.producer.pauseProducing()
    order: list[int] = []
    ds = [ch.basic_publish("", f"k{i}", b"%d" % i) for i in range(3)]
    for i, d in enumerate(ds):
        no_result(d)
        d.addCallback(lambda _, i=i: order.append(i))
    h.broker.expect_nothing()
    h.transport.producer.resumeProducing()
    assert order == [0, 1, 2]
    assert _publishes(h) == [(1, "k0", b"0"), (1, "k1", b"1"), (1, "k2", b"2")]


def test_transport_pausing_in_the_middle_of_a_drain() -> None:
    # The transport pauses its producer as soon as it holds more than 100 bytes (from the
    # channel on: the handshake would pause it too, and a paused protocol writes nothing).
    transport = HighWaterTransport(10**9)
    h = connect(transport=transport)
    ch = h.channel()
    transport.high_water = 100
    h.transport.producer.pauseProducing()
    ds = [ch.basic_publish("", f"k{i}", b"x" * 80) for i in range(3)]
    for d in ds:
        no_result(d)
    assert transport.value() == b""
    pauses = transport.pauses
    h.transport.producer.resumeProducing()
    # What waited goes out as one write (in order), which pauses the transport again.
    assert transport.pauses == pauses + 1
    for d in ds:
        success(d)
    late = ch.basic_publish("", "late", b"y")
    no_result(late)  # the transport is paused: it waits, behind the others
    assert _publishes(h) == [(1, f"k{i}", b"x" * 80) for i in range(3)]
    h.transport.producer.resumeProducing()
    success(late)
    assert _publishes(h) == [(1, "late", b"y")]


def test_calls_keep_their_order_behind_publishes_held_for_the_transport(
        h: Harness, ch: Channel) -> None:
    h.transport.producer.pauseProducing()
    published = [ch.basic_publish("", "q", str(i).encode()) for i in range(5)]
    declared = ch.queue_declare("q", passive=True)
    committed = ch.tx_select()
    assert h.transport.value() == b""
    h.transport.producer.resumeProducing()
    for d in published:
        success(d)
    commands = h.broker.commands()
    names = [c.method.NAME for c in commands]
    assert names == ["basic.publish"] * 5 + ["queue.declare"]  # tx.select waits its turn
    no_result(declared)
    no_result(committed)


def test_calls_keep_their_order_behind_publishes_held_by_flow_control(
        h: Harness, ch: Channel) -> None:
    h.broker.send(0, m.Connection.Blocked("memory"))
    published = [ch.basic_publish("", "q", str(i).encode()) for i in range(3)]
    declared = ch.queue_declare("q", passive=True)
    closing = ch.close()
    h.broker.expect_nothing()  # everything waits for the broker to unblock
    h.broker.send(0, m.Connection.Unblocked())
    for d in published:
        success(d)
    names = [c.method.NAME for c in h.broker.commands()]
    # close() goes out at once (it does not wait for the declare's reply), but after it.
    assert names == ["basic.publish"] * 3 + ["queue.declare", "channel.close"]
    h.broker.send(1, m.Queue.DeclareOk("q", 3, 0))  # dropped: the channel is closing
    h.broker.send(1, m.Channel.CloseOk())
    success(closing)
    failure(declared, ChannelClosedByClient)


def test_waiting_publish_times_out_and_is_never_sent(h: Harness, ch: Channel) -> None:
    h.transport.producer.pauseProducing()
    d1 = ch.basic_publish("", "k1", b"1", timeout=2)
    d2 = ch.basic_publish("", "k2", b"2")
    h.clock.advance(2)
    failure(d1, defer.TimeoutError)
    no_result(d2)
    h.transport.producer.resumeProducing()
    success(d2)
    assert _publishes(h) == [(1, "k2", b"2")]


def test_waiting_publish_cancelled_is_never_sent(h: Harness, ch: Channel) -> None:
    h.transport.producer.pauseProducing()
    d1 = ch.basic_publish("", "k1", b"1")
    d2 = ch.basic_publish("", "k2", b"2")
    d1.cancel()
    failure(d1, defer.CancelledError)
    h.transport.producer.resumeProducing()
    success(d2)
    assert _publishes(h) == [(1, "k2", b"2")]


def test_waiting_publish_fails_when_the_connection_is_lost(h: Harness, ch: Channel) -> None:
    h.transport.producer.pauseProducing()
    d = ch.basic_publish("", "k", b"x")
    h.lose_uncleanly()
    error = failure(d, ConnectionLost)
    assert isinstance(error.reason, terror.ConnectionLost)
    assert error.__cause__ is error.reason
    h.broker.expect_nothing()


def test_confirm_ack_single_and_multiple(h: Harness) -> None:
    ch = h.confirm_channel()
    ds = [ch.basic_publish("", f"k{i}", b"x") for i in range(1, 6)]
    assert [k for _, k, _ in _publishes(h)] == ["k1", "k2", "k3", "k4", "k5"]
    fired: list[int] = []
    for i, d in enumerate(ds, 1):
        no_result(d)
        d.addCallback(lambda _, i=i: fired.append(i))
    h.broker.send(1, m.Basic.Ack(2, False))
    assert fired == [2]
    h.broker.send(1, m.Basic.Ack(4, True))
    assert fired == [2, 1, 3, 4]
    no_result(ds[4])
    h.broker.send(1, m.Basic.Ack(5, False))
    assert fired == [2, 1, 3, 4, 5]
    h.broker.expect_nothing()
    d6 = ch.basic_publish("", "k6", b"x")
    h.broker.commands()
    h.broker.send(1, m.Basic.Ack(0, True))  # 0 with multiple: everything so far
    assert success(d6) is None


def test_confirm_nack(h: Harness) -> None:
    ch = h.confirm_channel()
    d1 = ch.basic_publish("", "k1", b"x")
    d2 = ch.basic_publish("", "k2", b"x")
    d3 = ch.basic_publish("", "k3", b"x")
    h.broker.commands()
    h.broker.send(1, m.Basic.Nack(1, False, False))
    assert failure(d1, NackError).delivery_tag == 1
    no_result(d2)
    h.broker.send(1, m.Basic.Nack(3, True, False))
    assert failure(d2, NackError).delivery_tag == 2
    assert failure(d3, NackError).delivery_tag == 3


def test_confirm_returned_then_acked_is_unroutable(h: Harness) -> None:
    ch = h.confirm_channel()
    d1 = ch.basic_publish("ex", "routed", b"one", mandatory=True)
    props = m.BasicProperties(message_id="m-2")
    d2 = ch.basic_publish("ex", "nowhere", b"two", properties=props, mandatory=True)
    d3 = ch.basic_publish("ex", "routed", b"three", mandatory=True)
    assert [(k, b) for _, k, b in _publishes(h)] == [
        ("routed", b"one"), ("nowhere", b"two"), ("routed", b"three")]
    returned: list[Message] = []
    h.protocol.add_return_listener(returned.append)
    h.broker.send_content(1, m.Basic.Return(312, "NO_ROUTE", "ex", "nowhere"), b"two", props)
    no_result(d2)  # reported with its ack
    h.broker.send(1, m.Basic.Ack(3, True))
    success(d1)
    success(d3)
    error = failure(d2, UnroutableError)
    assert (error.reply_code, error.reply_text) == (312, "NO_ROUTE")
    message = error.message
    assert isinstance(message, Message)
    assert (message.body, message.routing_key, message.exchange) == (b"two", "nowhere", "ex")
    assert (message.reply_code, message.reply_text) == (312, "NO_ROUTE")
    assert message.properties == props
    failure(message.ack(), UsageError)
    assert returned == []  # tied to its publish, not a stray return
    h.broker.expect_nothing()


def test_return_outside_confirm_mode_goes_to_listeners(h: Harness, ch: Channel) -> None:
    returned: list[Message] = []
    h.protocol.add_return_listener(returned.append)
    h.protocol.add_return_listener(lambda msg: 1 / 0)  # a failing listener is logged
    success(ch.basic_publish("ex", "nowhere", b"x", mandatory=True))
    h.broker.commands()
    with capture_logs() as logs:
        h.broker.send_content(1, m.Basic.Return(312, "NO_ROUTE", "ex", "nowhere"), b"x")
    (message,) = returned
    assert (message.body, message.reply_code, message.routing_key) == (b"x", 312, "nowhere")
    assert [e["log_failure"].type for e in logs.failures()] == [ZeroDivisionError]


def test_connection_lost_fails_unconfirmed_publishes(h: Harness) -> None:
    ch = h.confirm_channel()
    ds = [ch.basic_publish("", f"k{i}", b"x") for i in range(3)]
    h.broker.commands()
    h.broker.send(1, m.Basic.Ack(1, False))
    success(ds[0])
    h.lose_uncleanly()
    for d in ds[1:]:
        error = failure(d, OutcomeUnknownError)
        assert isinstance(error.reason, ConnectionLost)
        assert isinstance(error.reason.reason, terror.ConnectionLost)


def test_confirm_publish_timeout(h: Harness) -> None:
    ch = h.confirm_channel()
    d1 = ch.basic_publish("", "k1", b"x", timeout=3)
    d2 = ch.basic_publish("", "k2", b"x")
    h.broker.commands()
    h.clock.advance(3)
    failure(d1, defer.TimeoutError)
    h.broker.send(1, m.Basic.Ack(2, True))  # the late ack is absorbed
    success(d2)


# -- flow control ------------------------------------------------------------------------------

def test_connection_blocked_and_unblocked(h: Harness) -> None:
    ch1 = h.channel()
    ch2 = h.channel()
    events: list[Any] = []
    h.protocol.add_flow_listener(lambda active, reason: events.append(
        ("conn", active, reason, h.protocol.is_blocked)))
    ch1.add_flow_listener(lambda active: events.append(("ch1", active)))
    ch2.add_flow_listener(lambda active: events.append(("ch2", active)))
    h.broker.send(0, m.Connection.Blocked("low on memory"))
    assert events == [("conn", False, "low on memory", True), ("ch1", False),
                      ("ch2", False)]
    assert h.protocol.is_blocked and h.protocol.blocked_reason == "low on memory"
    assert not ch1.flow_active and not ch2.flow_active
    h.broker.expect_nothing()
    d1 = ch1.basic_publish("", "a", b"1")
    d2 = ch2.basic_publish("", "b", b"2")
    d3 = ch1.basic_publish("", "c", b"3")
    h.clock.advance(1000)  # waits as long as it takes (heartbeats aside)
    no_result(d1)
    no_result(d2)
    no_result(d3)
    assert all(c.method.NAME == "heartbeat" for c in h.broker.commands())
    del events[:]
    h.broker.send(0, m.Connection.Unblocked())
    assert events == [("conn", True, "", False), ("ch1", True), ("ch2", True)]
    assert not h.protocol.is_blocked and h.protocol.blocked_reason == ""
    success(d1)
    success(d2)
    success(d3)
    assert _publishes(h) == [(1, "a", b"1"), (1, "c", b"3"), (2, "b", b"2")]


def test_channel_opened_while_blocked_starts_blocked(h: Harness) -> None:
    h.broker.send(0, m.Connection.Blocked("mem"))
    ch = h.channel()
    assert not ch.flow_active
    changes: list[bool] = []
    ch.add_flow_listener(changes.append)
    d = ch.basic_publish("", "k", b"x")
    no_result(d)
    h.broker.expect_nothing()
    h.broker.send(0, m.Connection.Unblocked())
    assert changes == [True] and ch.flow_active
    success(d)
    assert _publishes(h) == [(1, "k", b"x")]


def test_channel_opened_while_blocked_with_raise_policy() -> None:
    h = connect(ConnectionParameters(flow_policy="raise"))
    h.broker.send(0, m.Connection.Blocked("mem"))
    ch = h.channel()
    failure(ch.basic_publish("", "k", b"x"), FlowControlError)
    h.broker.expect_nothing()


def test_blocked_with_raise_policy() -> None:
    h = connect(ConnectionParameters(flow_policy="raise"))
    ch = h.channel()
    h.transport.producer.pauseProducing()
    waiting = ch.basic_publish("", "w", b"x")  # waits for the transport
    h.broker.send(0, m.Connection.Blocked("disk"))
    failure(waiting, FlowControlError)  # the policy applies to what was waiting too
    d = ch.basic_publish("", "k", b"x")
    error = failure(d, FlowControlError)
    assert "disk" in str(error)
    h.transport.producer.resumeProducing()
    h.broker.expect_nothing()
    h.broker.send(0, m.Connection.Unblocked())
    success(ch.basic_publish("", "k", b"x"))
    assert _publishes(h) == [(1, "k", b"x")]


def test_blocked_publish_with_timeout_times_out_and_is_not_sent(h: Harness, ch: Channel) -> None:
    h.broker.send(0, m.Connection.Blocked(""))
    d1 = ch.basic_publish("", "k1", b"1", timeout=5)
    d2 = ch.basic_publish("", "k2", b"2", timeout=50)
    h.clock.advance(5)
    failure(d1, defer.TimeoutError)
    no_result(d2)
    h.broker.send(0, m.Connection.Unblocked())
    success(d2)
    assert _publishes(h) == [(1, "k2", b"2")]
    h.clock.advance(100)
    assert h.protocol.is_open


def test_channel_flow_from_the_broker(h: Harness, ch: Channel) -> None:
    changes: list[bool] = []
    ch.add_flow_listener(changes.append)
    h.broker.send(1, m.Channel.Flow(False))
    h.expect((1, m.Channel.FlowOk(False)))
    assert changes == [False] and not ch.flow_active
    assert not h.protocol.is_blocked
    d = ch.basic_publish("", "k", b"x")
    no_result(d)
    h.broker.expect_nothing()
    h.broker.send(1, m.Channel.Flow(True))
    assert changes == [False, True] and ch.flow_active
    success(d)
    (c1, c2) = h.broker.commands()
    assert (c1.channel, c1.method) == (1, m.Channel.FlowOk(True))
    assert (c2.method.NAME, c2.body) == ("basic.publish", b"x")


def test_channel_flow_and_connection_blocked_combine(h: Harness, ch: Channel) -> None:
    changes: list[bool] = []
    ch.add_flow_listener(changes.append)
    h.broker.send(0, m.Connection.Blocked("mem"))
    h.broker.send(1, m.Channel.Flow(False))
    h.expect((1, m.Channel.FlowOk(False)))
    h.broker.send(0, m.Connection.Unblocked())
    assert not ch.flow_active  # channel.flow still stops it
    h.broker.send(0, m.Connection.Blocked("mem"))
    h.broker.send(1, m.Channel.Flow(True))
    h.expect((1, m.Channel.FlowOk(True)))
    assert not ch.flow_active  # the connection is still blocked
    h.broker.send(0, m.Connection.Unblocked())
    assert ch.flow_active
    assert changes == [False, True]


def test_failing_flow_listener_is_logged(h: Harness, ch: Channel) -> None:
    seen: list[bool] = []
    h.protocol.add_flow_listener(lambda active, reason: 1 / 0)
    ch.add_flow_listener(lambda active: [][0])
    ch.add_flow_listener(seen.append)
    with capture_logs() as logs:
        h.broker.send(0, m.Connection.Blocked("x"))
    assert seen == [False]
    assert sorted(e["log_failure"].type.__name__ for e in logs.failures()) == [
        "IndexError", "ZeroDivisionError"]


def test_remove_flow_listener(h: Harness, ch: Channel) -> None:
    seen: list[Any] = []
    h.protocol.add_flow_listener(seen.append)  # type: ignore[arg-type]
    h.protocol.remove_flow_listener(seen.append)  # type: ignore[arg-type]
    ch.add_flow_listener(seen.append)
    ch.remove_flow_listener(seen.append)
    h.broker.send(0, m.Connection.Blocked("x"))
    assert seen == []


def test_large_message_is_written_a_batch_at_a_time_while_the_transport_drains() -> None:
    # A real transport pauses its producer past its high-water mark and resumes it once
    # drained. A large body must reach it in batches, each after a resume, and whatever
    # was sent meanwhile (here a basic.get) must follow the body, not overtake it.
    from txpika.frames import BodyFrame, FrameDecoder, HeaderFrame, MethodFrame

    transport = HighWaterTransport(10**9)
    h = connect(transport=transport)
    ch = h.channel()
    transport.high_water = 65536
    body = bytes(range(256)) * 4096  # 1 MiB
    published = ch.basic_publish("", "big", body)
    got = ch.basic_get("big")
    wire = bytearray(transport.value())
    transport.clear()
    assert 0 < len(wire) < len(body)  # only the first batch went out
    resumes = 0
    while h.protocol._outbox.paused:
        h.transport.producer.resumeProducing()
        resumes += 1
        wire += transport.value()
        transport.clear()
        assert resumes < 100
    assert resumes >= 2
    success(published)
    no_result(got)
    decoder = FrameDecoder(h.protocol._core.dialect, h.protocol._core.frame_max)
    decoder.receive_data(bytes(wire))
    frames = []
    while True:
        frame = decoder.next_frame()
        if not isinstance(frame, (MethodFrame, HeaderFrame, BodyFrame)):
            break
        frames.append(frame)
    assert frames[0].method.NAME == "basic.publish"
    assert isinstance(frames[1], HeaderFrame) and frames[1].body_size == len(body)
    bodies = [f for f in frames if isinstance(f, BodyFrame)]
    assert b"".join(f.payload for f in bodies) == body
    assert frames[-1].method.NAME == "basic.get"


def test_publish_then_calls_back_as_the_deferred_would_fire(h: Harness, ch: Channel) -> None:
    """`Channel.publish_then` (no Deferred): resolved at once without confirms, on the ack
    in confirm mode, rejected with the same errors; the frames go out in order."""
    seen: list[object] = []
    ch.publish_then(seen.append, seen.append, "", "plain", b"p")
    assert seen == [None]
    assert _publishes(h) == [(1, "plain", b"p")]
    cch = h.confirm_channel()
    seen.clear()
    for key in ("a", "b", "c"):
        cch.publish_then(lambda _, key=key: seen.append(key), seen.append, "", key, b"x")
    assert [k for _, k, _ in _publishes(h)] == ["a", "b", "c"] and seen == []
    h.broker.send(cch.channel_number, m.Basic.Ack(1, False))
    assert seen == ["a"]
    h.broker.send(cch.channel_number, m.Basic.Nack(3, True, False))
    assert seen[0] == "a" and len(seen) == 3
    assert [e.delivery_tag for e in seen[1:] if isinstance(e, NackError)] == [2, 3]
    seen.clear()
    h.lose_uncleanly()
    ch.publish_then(seen.append, seen.append, "", "late", b"x")
    assert len(seen) == 1 and isinstance(seen[0], ConnectionLost)
