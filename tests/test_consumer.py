"""`Consumer` and `Message` over `AMQPProtocol` and a `StringTransport`: push callbacks (and
how their failures are logged), pull with ``get()`` and ``async for``, how a consumer ends,
the read back-pressure of ``max_buffer``, and settling messages.

Each test checks both the Deferreds and the exact frames the client wrote (`twistedsim`).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet import error as terror
from twistedsim import (
    Harness,
    capture_logs,
    connect,
    failure,
    no_result,
    no_unhandled_errors,  # noqa: F401 - a fixture
    success,
)

from txpika import spec
from txpika._consumer import WAKE_AT
from txpika.channel import Channel, Consumer, Message
from txpika.errors import (
    ChannelClosedByClient,
    ConnectionForced,
    ConnectionLost,
    ConsumerCancelled,
    NotFound,
    UsageError,
)
from txpika.frames import encode_body, encode_header, encode_method
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


def _consume(h: Harness, ch: Channel, tag: str = "ctag", **kw: Any) -> Consumer:
    d = ch.basic_consume("q", consumer_tag=tag, **kw)
    h.expect((ch.channel_number, m.Basic.Consume(0, "q", tag, False, kw.get("auto_ack", False),
                                                 False, False, {})))
    h.broker.send(ch.channel_number, m.Basic.ConsumeOk(tag))
    consumer = success(d)
    assert isinstance(consumer, Consumer)
    return consumer


# -- push --------------------------------------------------------------------------------------

def test_push_callback_per_delivery(h: Harness, ch: Channel) -> None:
    got: list[Message] = []
    consumer = _consume(h, ch, on_message_callback=got.append)
    props = m.BasicProperties(content_type="text/plain", correlation_id="c1")
    h.broker.deliver(1, "ctag", 1, b"one", props, exchange="ex", routing_key="rk")
    h.broker.deliver(1, "ctag", 2, b"two", redelivered=True)
    assert [msg.body for msg in got] == [b"one", b"two"]
    first, second = got
    assert (first.delivery_tag, first.consumer_tag, first.exchange, first.routing_key) == (
        1, "ctag", "ex", "rk")
    assert first.properties == props and not first.redelivered and second.redelivered
    assert first.channel is ch and first.message_count is None and first.reply_code is None
    assert consumer.active
    h.broker.expect_nothing()  # nothing acked automatically
    success(second.ack())
    success(first.ack())
    h.expect((1, m.Basic.Ack(2, False)), (1, m.Basic.Ack(1, False)))


def test_push_callback_failures_are_logged_and_later_deliveries_handled(
        h: Harness, ch: Channel) -> None:
    seen: list[int] = []
    later: defer.Deferred[None] = defer.Deferred()

    async def failing_coroutine(message: Message) -> None:
        raise KeyError("from a coroutine")

    async def slow_coroutine(message: Message) -> None:
        await later
        raise LookupError("after a while")

    def callback(message: Message) -> Any:
        seen.append(message.delivery_tag)
        tag = message.delivery_tag
        if tag == 1:
            raise ValueError("raised")
        if tag == 2:
            return defer.fail(RuntimeError("failed Deferred"))
        if tag == 3:
            return failing_coroutine(message)
        if tag == 4:
            return slow_coroutine(message)
        if tag == 5:
            return defer.succeed("fine")
        return None

    _consume(h, ch, on_message_callback=callback)
    with capture_logs() as logs:
        for tag in range(1, 7):
            h.broker.deliver(1, "ctag", tag)
        assert seen == [1, 2, 3, 4, 5, 6]
        failures = logs.failures()
        assert [e["log_failure"].type for e in failures] == [ValueError, RuntimeError, KeyError]
        assert [e["tag"] for e in failures] == [1, 2, 3]
        later.callback(None)
        failures = logs.failures()
        assert [e["log_failure"].type for e in failures] == [
            ValueError, RuntimeError, KeyError, LookupError]
        assert failures[-1]["tag"] == 4
        assert logs.unhandled() == []
    h.broker.expect_nothing()
    assert ch.is_open


def test_push_callback_returning_a_plain_value(h: Harness, ch: Channel) -> None:
    # Only a Deferred or a coroutine is waited for; any other value must not break the
    # connection (an exception out of dataReceived makes Twisted drop it).
    seen: list[int] = []

    def callback(message: Message) -> Any:
        seen.append(message.delivery_tag)
        return message.delivery_tag  # e.g. a handler that returns what it computed

    _consume(h, ch, on_message_callback=callback)
    h.broker.feed(h.broker.content_bytes(1, m.Basic.Deliver("ctag", 1, False, "", "q"), b"a")
                  + h.broker.content_bytes(1, m.Basic.Deliver("ctag", 2, False, "", "q"), b"b"))
    assert seen == [1, 2]
    d = ch.queue_declare("q")
    h.expect((1, m.Queue.Declare(0, "q")))
    h.broker.send(1, m.Queue.DeclareOk("q", 0, 0))
    success(d)


def test_push_callback_can_ack_from_a_coroutine(h: Harness, ch: Channel) -> None:
    async def handler(message: Message) -> None:
        await message.ack()

    _consume(h, ch, on_message_callback=handler)
    h.broker.deliver(1, "ctag", 1)
    h.expect((1, m.Basic.Ack(1, False)))


# -- pull --------------------------------------------------------------------------------------

def test_get_before_and_after_delivery(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch)
    d1 = consumer.get()
    d2 = consumer.get()
    no_result(d1)
    h.broker.deliver(1, "ctag", 1, b"a")
    assert success(d1).body == b"a"
    no_result(d2)
    h.broker.deliver(1, "ctag", 2, b"b")
    h.broker.deliver(1, "ctag", 3, b"c")  # buffered
    assert success(d2).body == b"b"
    assert success(consumer.get()).body == b"c"
    no_result(consumer.get())
    h.broker.expect_nothing()


def _one_read(first: int, count: int) -> bytes:
    """``count`` deliveries to consumer "ctag" on channel 1, as the bytes of one read."""
    return b"".join(
        encode_method(1, m.Basic.Deliver("ctag", tag, False, "ex", "rk"))
        + encode_header(1, 1, m.BasicProperties())
        + b"".join(bytes(piece) for piece in encode_body(1, b"%d" % (tag % 10)))
        for tag in range(first, first + count))


@pytest.mark.parametrize("count,groups", [
    (WAKE_AT * 3 + 5, [WAKE_AT, WAKE_AT, WAKE_AT, 5]),
    (WAKE_AT, [WAKE_AT]),
    (WAKE_AT - 1, [WAKE_AT - 1]),
    (1, [1]),
])
def test_a_waiting_get_is_answered_per_group_of_a_read(h: Harness, ch: Channel, count: int,
                                                       groups: list[int]) -> None:
    """A waiting get() is answered once WAKE_AT messages of a read are in, or at the end of
    the read if fewer come: the code it resumes takes what is buffered in one go, and the
    rest of a large read does not pile up first. Every message comes once, in order."""
    consumer = _consume(h, ch)
    seen: list[list[int]] = []

    def taken(message: Message) -> None:
        group = [message.delivery_tag]
        while True:  # what the resumed code finds already in the buffer
            d = consumer.get()
            if not d.called:
                break
            group.append(success(d).delivery_tag)
        seen.append(group)
        d.addCallback(taken)

    consumer.get().addCallback(taken)
    h.protocol.dataReceived(_one_read(1, count))
    assert [len(group) for group in seen] == groups
    assert [tag for group in seen for tag in group] == list(range(1, count + 1))


def test_cancelled_get_does_not_eat_a_message(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch)
    d1 = consumer.get()
    d1.cancel()
    failure(d1, defer.CancelledError)
    h.broker.deliver(1, "ctag", 1, b"a")
    assert success(consumer.get()).body == b"a"


def test_async_for(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch)
    bodies: list[bytes] = []

    async def run() -> str:
        async for message in consumer:
            bodies.append(message.body)
            await message.ack()
        return "stopped"

    d = defer.ensureDeferred(run())
    h.broker.deliver(1, "ctag", 1, b"a")
    h.broker.deliver(1, "ctag", 2, b"b")
    assert bodies == [b"a", b"b"]
    h.expect((1, m.Basic.Ack(1, False)), (1, m.Basic.Ack(2, False)))
    no_result(d)
    # The client cancels: async for stops.
    cancelled = consumer.cancel()
    h.expect((1, m.Basic.Cancel("ctag", False)))
    h.broker.deliver(1, "ctag", 3, b"c")  # crossed the cancel: still handed out
    assert bodies == [b"a", b"b", b"c"]
    no_result(d)
    assert consumer.active
    h.broker.send(1, m.Basic.CancelOk("ctag"))
    assert success(cancelled) is None
    assert success(d) == "stopped"
    assert not consumer.active
    assert isinstance(consumer.end_reason, ConsumerCancelled)
    failure(consumer.get(), ConsumerCancelled)
    assert success(consumer.cancel()) is None  # already ended: nothing written
    h.expect((1, m.Basic.Ack(3, False)))


def test_client_cancel_with_buffered_messages(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch)
    h.broker.deliver(1, "ctag", 1, b"a")
    d = consumer.cancel()
    h.expect((1, m.Basic.Cancel("ctag", False)))
    h.broker.send(1, m.Basic.CancelOk("ctag"))
    success(d)

    async def drain() -> list[bytes]:
        return [message.body async for message in consumer]

    assert success(defer.ensureDeferred(drain())) == [b"a"]


def test_broker_cancel_fails_get_and_async_for(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch)
    ended = consumer.when_closed()
    pending = consumer.get()
    bodies: list[bytes] = []

    async def run() -> None:
        async for message in consumer:
            bodies.append(message.body)

    h.broker.deliver(1, "ctag", 1, b"to-get")
    assert success(pending).body == b"to-get"
    pending = consumer.get()
    d = defer.ensureDeferred(run())
    h.broker.deliver(1, "ctag", 2, b"to-get-2")
    h.broker.deliver(1, "ctag", 3, b"to-loop")
    assert success(pending).body == b"to-get-2"
    assert bodies == [b"to-loop"]
    pending = consumer.get()  # two waiting now: this one and the loop's
    with capture_logs():
        h.broker.send(1, m.Basic.Cancel("ctag", False))
    h.expect((1, m.Basic.CancelOk("ctag")))
    error = failure(pending, ConsumerCancelled)
    assert error.consumer_tag == "ctag"
    failure(d, ConsumerCancelled)
    assert success(ended) is error
    assert not consumer.active and consumer.end_reason is error
    failure(consumer.get(), ConsumerCancelled)
    assert ch.is_open
    assert success(consumer.cancel()) is None
    h.broker.expect_nothing()


def test_broker_cancel_hands_out_buffered_messages_first(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch)
    h.broker.deliver(1, "ctag", 1, b"a")
    h.broker.deliver(1, "ctag", 2, b"b")
    with capture_logs():
        h.broker.send(1, m.Basic.Cancel("ctag", True))  # nowait: no cancel-ok
    h.broker.expect_nothing()
    assert success(consumer.get()).body == b"a"
    assert success(consumer.get()).body == b"b"
    failure(consumer.get(), ConsumerCancelled)


def test_channel_closed_fails_get_with_the_channel_error(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch)
    ended = consumer.when_closed()
    pending = consumer.get()
    bodies: list[bytes] = []

    async def run() -> None:
        async for message in consumer:
            bodies.append(message.body)

    loop = defer.ensureDeferred(run())
    with capture_logs():
        h.broker.close_channel(1, 404, "NOT_FOUND - queue 'q' deleted", 60, 20)
    h.expect((1, m.Channel.CloseOk()))
    error = failure(pending, NotFound)
    assert failure(loop, NotFound) is error
    assert failure(consumer.get(), NotFound) is error
    assert consumer.end_reason is error and not consumer.active
    assert success(ended) is error
    assert bodies == []


def test_client_channel_close_ends_consumers(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch)
    h.broker.deliver(1, "ctag", 1, b"a")
    pending_close = ch.close()
    h.expect((1, m.Channel.Close(200, "Normal close", 0, 0)))
    h.broker.send(1, m.Channel.CloseOk())
    success(pending_close)
    message = success(consumer.get())  # buffered before the close
    failure(consumer.get(), ChannelClosedByClient)
    failure(message.ack(), UsageError)  # its channel is gone: nothing is sent
    h.broker.expect_nothing()


def test_connection_lost_ends_consumers(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch)
    pending = consumer.get()
    h.lose_uncleanly()
    error = failure(pending, ConnectionLost)
    assert isinstance(error.reason, terror.ConnectionLost)
    assert consumer.end_reason is error


def test_connection_close_ends_consumers(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch)
    pending = consumer.get()
    h.broker.close_connection(320, "CONNECTION_FORCED")
    failure(pending, ConnectionForced)


# -- max_buffer: back-pressure on reading ------------------------------------------------------

def test_max_buffer_pauses_and_resumes_reading(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch, auto_ack=True, max_buffer=4)
    assert h.transport.producerState == "producing"
    for tag in range(1, 5):
        h.broker.deliver(1, "ctag", tag)
    assert h.transport.producerState == "producing"
    h.broker.deliver(1, "ctag", 5)  # one over the limit
    assert h.transport.producerState == "paused"
    h.broker.deliver(1, "ctag", 6)  # the transport may still hand over what it had
    assert h.transport.producerState == "paused"
    tags = [success(consumer.get()).delivery_tag for _ in range(3)]
    assert tags == [1, 2, 3]
    assert h.transport.producerState == "paused"  # 3 left: above half the limit
    assert success(consumer.get()).delivery_tag == 4
    assert h.transport.producerState == "producing"  # 2 left
    h.broker.expect_nothing()  # auto_ack: nothing to settle


def test_max_buffer_resumes_when_the_consumer_ends(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch, auto_ack=True, max_buffer=2)
    for tag in range(1, 4):
        h.broker.deliver(1, "ctag", tag)
    assert h.transport.producerState == "paused"
    d = consumer.cancel()
    h.expect((1, m.Basic.Cancel("ctag", False)))
    h.broker.send(1, m.Basic.CancelOk("ctag"))
    success(d)
    assert h.transport.producerState == "producing"


def test_max_buffer_two_consumers_both_must_drain(h: Harness, ch: Channel) -> None:
    c1 = _consume(h, ch, "c1", auto_ack=True, max_buffer=2)
    c2 = _consume(h, ch, "c2", auto_ack=True, max_buffer=2)
    for tag in range(1, 4):
        h.broker.deliver(1, "c1", tag)
    for tag in range(4, 7):
        h.broker.deliver(1, "c2", tag)
    assert h.transport.producerState == "paused"
    for _ in range(3):
        success(c1.get())
    assert h.transport.producerState == "paused"  # c2 still over its limit
    for _ in range(2):
        success(c2.get())
    assert h.transport.producerState == "producing"


def test_default_max_buffer_is_1000(h: Harness, ch: Channel) -> None:
    _consume(h, ch, auto_ack=True)
    for tag in range(1, 1001):
        h.broker.deliver(1, "ctag", tag)
    assert h.transport.producerState == "producing"
    h.broker.deliver(1, "ctag", 1001)
    assert h.transport.producerState == "paused"


def test_paused_reading_is_not_a_dead_peer() -> None:
    h = connect(server_tune=(2047, 131072, 10), expect_tune_ok=(2047, 131072, 10))
    ch = h.channel()
    consumer = _consume(h, ch, auto_ack=True, max_buffer=1)
    h.broker.deliver(1, "ctag", 1)
    h.broker.deliver(1, "ctag", 2)
    assert h.transport.producerState == "paused"
    # The application is slow; the broker's frames wait unread in the socket meanwhile.
    with capture_logs():
        h.clock.pump([0.5] * 120)
    assert h.protocol.is_open
    assert success(consumer.get()).delivery_tag == 1


# -- settling messages -------------------------------------------------------------------------

def test_ack_twice_fails_and_writes_nothing(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch)
    h.broker.deliver(1, "ctag", 1)
    message = success(consumer.get())
    assert not message.settled
    assert success(message.ack()) is None
    assert message.settled
    h.expect((1, m.Basic.Ack(1, False)))
    error = failure(message.ack(), UsageError)
    assert "1" in str(error)
    failure(message.nack(), UsageError)
    failure(message.reject(), UsageError)
    h.broker.expect_nothing()
    assert ch.is_open


def test_ack_after_the_channel_closed(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch)
    h.broker.deliver(1, "ctag", 1)
    message = success(consumer.get())
    with capture_logs():
        h.broker.close_channel(1, 406, "PRECONDITION_FAILED")
    h.expect((1, m.Channel.CloseOk()))
    failure(message.ack(), UsageError)
    failure(message.nack(), UsageError)
    failure(message.reject(), UsageError)
    h.broker.expect_nothing()


def test_ack_after_the_connection_is_lost(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch)
    h.broker.deliver(1, "ctag", 1)
    message = success(consumer.get())
    h.lose_uncleanly()
    failure(message.ack(), UsageError)
    h.broker.expect_nothing()


def test_ack_of_an_auto_ack_message(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch, auto_ack=True)
    h.broker.deliver(1, "ctag", 1)
    message = success(consumer.get())
    assert message.settled
    failure(message.ack(), UsageError)
    failure(message.nack(), UsageError)
    failure(message.reject(), UsageError)
    failure(ch.basic_ack(1), UsageError)
    h.broker.expect_nothing()
    assert ch.is_open


@pytest.mark.parametrize(("how", "kwargs", "frame"), [
    ("ack", {}, m.Basic.Ack(1, False)),
    ("nack", {}, m.Basic.Nack(1, False, True)),
    ("nack", {"requeue": False}, m.Basic.Nack(1, False, False)),
    ("reject", {}, m.Basic.Reject(1, True)),
    ("reject", {"requeue": False}, m.Basic.Reject(1, False)),
])
def test_settle_frames(h: Harness, ch: Channel, how: str, kwargs: dict, frame: Any) -> None:
    consumer = _consume(h, ch)
    h.broker.deliver(1, "ctag", 1)
    message = success(consumer.get())
    assert success(getattr(message, how)(**kwargs)) is None
    h.expect((1, frame))
    assert message.settled


def test_multiple_settles_earlier_messages(h: Harness, ch: Channel) -> None:
    consumer = _consume(h, ch)
    for tag in (1, 2, 3):
        h.broker.deliver(1, "ctag", tag)
    m1, m2, m3 = (success(consumer.get()) for _ in range(3))
    success(m2.nack(requeue=False, multiple=True))
    h.expect((1, m.Basic.Nack(2, True, False)))
    failure(m1.ack(), UsageError)  # settled by the multiple nack: nothing sent
    h.broker.expect_nothing()
    success(m3.ack(multiple=True))
    h.expect((1, m.Basic.Ack(3, True)))
    assert ch.is_open


def test_nack_on_0_8_is_a_usage_error() -> None:
    from twistedsim import send_start, send_tune, start

    from txpika import spec_0_8

    h = start(ConnectionParameters(protocol="0-8"))
    ready = h.protocol.ready
    send_start(h)
    send_tune(h)
    h.broker.send(0, spec_0_8.Connection.OpenOk(""))
    success(ready)
    ch = h.channel()
    d = ch.basic_consume("q")
    h.broker.methods()
    h.broker.send(1, spec_0_8.Basic.ConsumeOk("t"))
    consumer = success(d)
    h.broker.send_content(1, spec_0_8.Basic.Deliver("t", 1, False, "", "q"), b"x")
    message = success(consumer.get())
    failure(message.nack(), UsageError)
    assert not message.settled
    h.broker.expect_nothing()
    success(message.reject())
    h.expect((1, spec_0_8.Basic.Reject(1, True)))
