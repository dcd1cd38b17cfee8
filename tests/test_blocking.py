"""The blocking adapter (`txpika.blocking`) against the real broker, and its examples.

Every channel method returns its typed ``-Ok``; consuming (the ``consume()`` generator, a
`BlockingConsumer`, callbacks serviced by ``process_data_events``); publisher confirms
(acks, nacks from a ``reject-publish`` queue, returns of mandatory messages, a batch of
5,000); AMQP 0-8 end to end; and the errors a script meets: bad credentials, an unknown
vhost, a closed port, a missing queue, a double ack, a broker closing the connection, a dead
network (heartbeat timeout), timeouts, and a broker blocking publishers.

Tests that hurt a broker (closing its connections, a memory alarm) use a private node
(``private_node``); the dead network is a `tcpproxy.Proxy` in front of the shared broker.
Every wait is bounded: each call that waits passes ``timeout``.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from rabbitnode import PrivateNode
from tcpproxy import Proxy

from txpika import blocking, spec, spec_0_8
from txpika.errors import (
    AccessRefused,
    AuthenticationError,
    ChannelClosedByClient,
    ConnectionClosedByBroker,
    ConnectionClosedByClient,
    ConnectionForced,
    ConnectionLost,
    ConsumerCancelled,
    FlowControlError,
    HeartbeatTimeout,
    NackError,
    NotFound,
    UnroutableError,
    UsageError,
)
from txpika.spec import BasicProperties

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
T = 10.0  # seconds: the bound on any one call that waits for the broker


def unique(prefix: str = "q") -> str:
    return f"txpika-blocking-{prefix}-{uuid.uuid4().hex[:12]}"


def with_option(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + option


def via(url: str, host: str, port: int) -> str:
    """``url`` pointed at ``host:port`` (same credentials, vhost and options)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def conn(broker_url: str) -> Iterator[blocking.BlockingConnection]:
    connection = blocking.connect(broker_url)
    try:
        yield connection
    finally:
        connection.close(timeout=T)


@pytest.fixture
def ch(conn: blocking.BlockingConnection) -> blocking.BlockingChannel:
    return conn.channel(timeout=T)


def declare_temp(ch: blocking.BlockingChannel, **kwargs: Any) -> str:
    """A server-named exclusive queue, gone with the connection (not with its last
    consumer: tests count consumers and messages after cancelling)."""
    kwargs.setdefault("auto_delete", False)
    ok = ch.queue_declare("", timeout=T, **kwargs)
    assert isinstance(ok, spec.Queue.DeclareOk)
    return str(ok.queue)


def message_count(conn: blocking.BlockingConnection, queue: str) -> int:
    with conn.channel(timeout=T) as probe:
        return int(probe.queue_declare(queue, passive=True, timeout=T).message_count)


def consumer_count(conn: blocking.BlockingConnection, queue: str) -> int:
    with conn.channel(timeout=T) as probe:
        return int(probe.queue_declare(queue, passive=True, timeout=T).consumer_count)


def settled(message: blocking.Message) -> bool:
    return message.settled  # (a call: mypy must not narrow the property across an ack)


def active(consumer: blocking.BlockingConsumer) -> bool:
    return consumer.active


def wait_until(conn: blocking.BlockingConnection, predicate: Any, seconds: float = T) -> None:
    """Service ``conn`` until ``predicate()`` holds; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"not reached within {seconds} s"
        conn.process_data_events(0.05)


# -- every channel method returns its -Ok ----------------------------------------------------


def test_exchange_methods_return_typed_oks(ch: blocking.BlockingChannel) -> None:
    source, destination = unique("x-src"), unique("x-dst")
    try:
        assert isinstance(ch.exchange_declare(source, "topic", timeout=T),
                          spec.Exchange.DeclareOk)
        assert isinstance(ch.exchange_declare(destination, "fanout", timeout=T),
                          spec.Exchange.DeclareOk)
        assert isinstance(ch.exchange_declare(source, "topic", passive=True, timeout=T),
                          spec.Exchange.DeclareOk)
        assert isinstance(ch.exchange_bind(destination, source, "a.#", timeout=T),
                          spec.Exchange.BindOk)
        # The binding routes: source -> destination (fanout) -> queue.
        queue = declare_temp(ch)
        assert isinstance(ch.queue_bind(queue, destination, timeout=T), spec.Queue.BindOk)
        ch.basic_publish(source, "a.b", b"through two exchanges", timeout=T)
        message = ch.basic_get(queue, auto_ack=True, timeout=T)
        assert message is not None and message.body == b"through two exchanges"
        assert message.exchange == source and message.routing_key == "a.b"
        assert isinstance(ch.exchange_unbind(destination, source, "a.#", timeout=T),
                          spec.Exchange.UnbindOk)
        ch.basic_publish(source, "a.b", b"not routed any more", timeout=T)
        assert ch.basic_get(queue, timeout=T) is None
    finally:
        assert isinstance(ch.exchange_delete(destination, timeout=T), spec.Exchange.DeleteOk)
        assert isinstance(ch.exchange_delete(source, timeout=T), spec.Exchange.DeleteOk)


def test_queue_methods_return_typed_oks(ch: blocking.BlockingChannel) -> None:
    queue = unique()
    ok = ch.queue_declare(queue, auto_delete=False, timeout=T)
    assert isinstance(ok, spec.Queue.DeclareOk)
    assert (ok.queue, ok.message_count, ok.consumer_count) == (queue, 0, 0)
    try:
        assert isinstance(ch.queue_bind(queue, "amq.direct", queue, timeout=T),
                          spec.Queue.BindOk)
        ch.confirm_select(timeout=T)  # so the counts below are exact
        for i in range(3):
            ch.basic_publish("amq.direct", queue, b"%d" % i, timeout=T)
        assert ch.queue_declare(queue, passive=True, timeout=T).message_count == 3
        purged = ch.queue_purge(queue, timeout=T)
        assert isinstance(purged, spec.Queue.PurgeOk) and purged.message_count == 3
        assert isinstance(ch.queue_unbind(queue, "amq.direct", queue, timeout=T),
                          spec.Queue.UnbindOk)
        ch.basic_publish("amq.direct", queue, b"unrouted", timeout=T)
        ch.basic_publish("", queue, b"direct", timeout=T)
    finally:
        deleted = ch.queue_delete(queue, timeout=T)
    assert isinstance(deleted, spec.Queue.DeleteOk) and deleted.message_count == 1
    with pytest.raises(NotFound):
        ch.queue_declare(queue, passive=True, timeout=T)


def test_qos_recover_flow_and_confirm_select_return_typed_oks(
    conn: blocking.BlockingConnection, ch: blocking.BlockingChannel
) -> None:
    assert isinstance(ch.basic_qos(prefetch_count=10, timeout=T), spec.Basic.QosOk)
    assert isinstance(ch.basic_qos(prefetch_count=50, global_qos=True, timeout=T),
                      spec.Basic.QosOk)
    assert isinstance(ch.basic_recover(requeue=True, timeout=T), spec.Basic.RecoverOk)
    flow_ok = ch.flow(True, timeout=T)
    assert isinstance(flow_ok, spec.Channel.FlowOk) and flow_ok.active
    assert isinstance(ch.confirm_select(timeout=T), spec.Confirm.SelectOk)
    assert conn._core.in_confirm_mode(ch.channel_number)
    assert ch.is_open and conn.is_open and not conn.is_blocked
    assert conn.server_properties["product"] in ("RabbitMQ", b"RabbitMQ")


def test_tx_select_commit_rollback(conn: blocking.BlockingConnection,
                                   ch: blocking.BlockingChannel) -> None:
    queue = declare_temp(ch)
    tx = conn.channel(timeout=T)
    assert isinstance(tx.tx_select(timeout=T), spec.Tx.SelectOk)
    tx.basic_publish("", queue, b"rolled back", timeout=T)
    assert isinstance(tx.tx_rollback(timeout=T), spec.Tx.RollbackOk)
    assert ch.basic_get(queue, timeout=T) is None
    tx.basic_publish("", queue, b"committed", timeout=T)
    assert ch.basic_get(queue, timeout=T) is None  # not before the commit
    assert isinstance(tx.tx_commit(timeout=T), spec.Tx.CommitOk)
    message = ch.basic_get(queue, auto_ack=True, timeout=T)
    assert message is not None and message.body == b"committed"
    tx.close(timeout=T)
    assert not tx.is_open


def test_basic_get_returns_message_or_none(ch: blocking.BlockingChannel) -> None:
    queue = declare_temp(ch)
    assert ch.basic_get(queue, timeout=T) is None
    props = BasicProperties(content_type="text/plain", headers={"n": 1}, message_id="m-1")
    ch.basic_publish("", queue, b"one", props, timeout=T)
    ch.basic_publish("", queue, b"two", timeout=T)
    first = ch.basic_get(queue, timeout=T)
    assert isinstance(first, blocking.Message)
    assert (first.body, first.exchange, first.routing_key) == (b"one", "", queue)
    assert first.message_count == 1 and not first.redelivered and not first.settled
    assert first.properties.content_type == "text/plain"
    assert first.properties.headers == {"n": 1} and first.properties.message_id == "m-1"
    first.ack()
    assert settled(first)
    second = ch.basic_get(queue, auto_ack=True, timeout=T)
    assert second is not None and second.body == b"two" and second.settled
    with pytest.raises(UsageError):
        second.ack()  # auto-acked: nothing to settle
    assert ch.basic_get(queue, timeout=T) is None
    assert ch.is_open


def test_ack_nack_reject(conn: blocking.BlockingConnection, ch: blocking.BlockingChannel) -> None:
    queue = declare_temp(ch)
    for body in (b"ack", b"nack", b"reject", b"requeue"):
        ch.basic_publish("", queue, body, timeout=T)
    got = {}
    for _ in range(4):
        message = ch.basic_get(queue, timeout=T)
        assert message is not None
        got[message.body] = message
    got[b"ack"].ack()
    got[b"nack"].nack(requeue=False)  # dropped
    got[b"reject"].reject(requeue=False)  # dropped
    ch.basic_nack(got[b"requeue"].delivery_tag, requeue=True)
    again = ch.basic_get(queue, timeout=T)
    assert again is not None and again.body == b"requeue" and again.redelivered
    again.reject(requeue=True)
    last = ch.basic_get(queue, timeout=T)
    assert last is not None and last.body == b"requeue"
    ch.basic_ack(last.delivery_tag)
    assert ch.basic_get(queue, timeout=T) is None
    assert message_count(conn, queue) == 0 and ch.is_open


def test_ack_multiple(ch: blocking.BlockingChannel) -> None:
    queue = declare_temp(ch)
    for i in range(5):
        ch.basic_publish("", queue, b"%d" % i, timeout=T)
    messages = [ch.basic_get(queue, timeout=T) for _ in range(5)]
    assert all(m is not None for m in messages)
    last = messages[-1]
    assert last is not None
    last.ack(multiple=True)
    ch.basic_recover(requeue=True, timeout=T)  # nothing is unacked: nothing comes back
    assert ch.basic_get(queue, timeout=T) is None


def test_basic_recover_redelivers_unacked(ch: blocking.BlockingChannel) -> None:
    queue = declare_temp(ch)
    ch.basic_publish("", queue, b"again", timeout=T)
    consumer = ch.basic_consume(queue, timeout=T)
    first = consumer.get(timeout=T)
    assert first is not None and not first.redelivered
    assert isinstance(ch.basic_recover(requeue=True, timeout=T), spec.Basic.RecoverOk)
    second = consumer.get(timeout=T)
    assert second is not None and second.body == b"again" and second.redelivered
    second.ack()
    consumer.cancel(timeout=T)
    assert not consumer.active


# -- consuming ----------------------------------------------------------------------------------


def test_consume_generator_honours_prefetch_and_yields_none_when_idle(
    conn: blocking.BlockingConnection, ch: blocking.BlockingChannel
) -> None:
    queue = declare_temp(ch)
    ch.confirm_select(timeout=T)
    assert ch.publish_batch([("", queue, b"%d" % i) for i in range(12)], timeout=T) == [
        None] * 12
    stream = ch.consume(queue, prefetch=5, inactivity_timeout=0.3)
    held = []
    for message in stream:
        if message is None:
            break
        held.append(message)
        assert len(held) <= 5, "more unacked deliveries than the prefetch"
    # Idle with 5 unacked although 7 more wait: the prefetch stopped the broker.
    assert [m.body for m in held] == [b"%d" % i for i in range(5)]
    assert message_count(conn, queue) == 7
    held[-1].ack(multiple=True)
    rest = []
    for message in stream:
        if message is None:
            break
        rest.append(message.body)
        message.ack()
    assert rest == [b"%d" % i for i in range(5, 12)]
    assert consumer_count(conn, queue) == 1
    stream.close()  # cancels the consumer
    assert consumer_count(conn, queue) == 0
    assert ch.is_open


def test_consume_generator_stops_cleanly_on_cancel(
    conn: blocking.BlockingConnection, ch: blocking.BlockingChannel
) -> None:
    queue = declare_temp(ch)
    ch.publish_batch([("", queue, b"%d" % i) for i in range(3)], timeout=T)
    bodies = []
    started = time.monotonic()
    for message in ch.consume(queue, prefetch=10, inactivity_timeout=5):
        assert message is not None, "idle: the broker delivered too little"
        bodies.append(message.body)
        message.ack()
        if len(bodies) == 1:
            # Cancelled while the other two are buffered: they still come, then it ends.
            assert message.consumer_tag is not None
            ch.basic_cancel(message.consumer_tag, timeout=T)
    assert bodies == [b"0", b"1", b"2"]
    assert time.monotonic() - started < 5  # ended at once, not after the inactivity timeout
    assert consumer_count(conn, queue) == 0 and ch.is_open


def test_consume_generator_stops_cleanly_on_channel_close(
    conn: blocking.BlockingConnection,
) -> None:
    ch = conn.channel(timeout=T)
    queue = declare_temp(conn.channel(timeout=T))
    ch.basic_publish("", queue, b"only", timeout=T)
    seen = []
    for message in ch.consume(queue, inactivity_timeout=5):
        assert message is not None
        seen.append(message.body)
        ch.close(timeout=T)
    assert seen == [b"only"]
    assert not ch.is_open and conn.is_open
    wait_until(conn, lambda: message_count(conn, queue) == 1)  # unacked: back in the queue


def test_consume_generator_stops_cleanly_on_connection_close(broker_url: str) -> None:
    conn = blocking.connect(broker_url)
    ch = conn.channel(timeout=T)
    queue = declare_temp(ch)
    ch.basic_publish("", queue, b"only", timeout=T)
    seen = []
    for message in ch.consume(queue, inactivity_timeout=5):
        assert message is not None
        seen.append(message.body)
        conn.close(timeout=T)
    assert seen == [b"only"]
    assert not conn.is_open


def test_consume_generator_raises_when_the_broker_cancels(
    conn: blocking.BlockingConnection, ch: blocking.BlockingChannel
) -> None:
    queue = unique()
    ch.queue_declare(queue, auto_delete=False, timeout=T)
    stream = ch.consume(queue, inactivity_timeout=0.2)
    assert next(stream) is None
    conn.channel(timeout=T).queue_delete(queue, timeout=T)
    with pytest.raises(ConsumerCancelled):
        for _ in range(50):
            next(stream)
    assert ch.is_open and conn.is_open


def test_first_deliveries_of_a_consumer_are_not_rejected(ch: blocking.BlockingChannel) -> None:
    """Messages waiting in the queue come right behind ``consume-ok``, often in the same
    read; they belong to the new consumer (not rejected, so not redelivered, in order)."""
    queue = declare_temp(ch)
    ch.publish_batch([("", queue, b"%d" % i) for i in range(50)], timeout=T)
    consumer = ch.basic_consume(queue, timeout=T)
    got = []
    for _ in range(50):
        message = consumer.get(timeout=T)
        assert message is not None
        got.append((message.body, message.redelivered))
        message.ack()
    assert got == [(b"%d" % i, False) for i in range(50)]


def test_first_deliveries_of_an_auto_ack_consumer_are_not_lost(
    conn: blocking.BlockingConnection, ch: blocking.BlockingChannel
) -> None:
    """With auto_ack the broker forgets a message once sent: one arriving before its
    consumer is known would be lost, not requeued."""
    queue = declare_temp(ch)
    ch.confirm_select(timeout=T)
    ch.publish_batch([("", queue, b"%d" % i) for i in range(200)], timeout=T)
    bodies = []
    for message in ch.consume(queue, auto_ack=True, inactivity_timeout=1):
        if message is None:
            break
        bodies.append(message.body)
    assert bodies == [b"%d" % i for i in range(200)]
    assert message_count(conn, queue) == 0


def test_consumer_iteration_and_get(conn: blocking.BlockingConnection,
                                    ch: blocking.BlockingChannel) -> None:
    queue = declare_temp(ch)
    consumer = ch.basic_consume(queue, auto_ack=True, timeout=T)
    assert consumer.active and consumer.queue == queue
    assert consumer.get(timeout=0.2) is None
    ch.publish_batch([("", queue, b"a"), ("", queue, b"b")], timeout=T)
    bodies = []
    for message in consumer:
        bodies.append(message.body)
        assert message.settled  # auto_ack
        if len(bodies) == 2:
            consumer.cancel(timeout=T)
    assert bodies == [b"a", b"b"] and not active(consumer)
    with pytest.raises(ConsumerCancelled):
        consumer.get(timeout=0.2)


def test_process_data_events_runs_consumer_callbacks(
    conn: blocking.BlockingConnection, ch: blocking.BlockingChannel
) -> None:
    queue, replies = declare_temp(ch), declare_temp(ch)
    seen: list[bytes] = []

    def on_message(message: blocking.Message) -> None:
        seen.append(message.body)
        # Callbacks run outside the connection's lock: they may use the channel.
        ch.basic_publish("", replies, b"re: " + message.body, timeout=T)
        message.ack()

    consumer = ch.basic_consume(queue, on_message_callback=on_message, timeout=T)
    other = conn.channel(timeout=T)
    other.publish_batch([("", queue, b"%d" % i) for i in range(10)], timeout=T)
    wait_until(conn, lambda: len(seen) == 10)
    assert seen == [b"%d" % i for i in range(10)]
    # process_data_events(0) reads what already arrived, without waiting.
    other.basic_publish("", queue, b"late", timeout=T)
    deadline = time.monotonic() + T
    while len(seen) < 11 and time.monotonic() < deadline:
        time.sleep(0.05)
        conn.process_data_events(0)
    assert seen[-1] == b"late"
    consumer.cancel(timeout=T)
    wait_until(conn, lambda: message_count(conn, replies) == 11)
    assert message_count(conn, queue) == 0


def test_process_data_events_keeps_heartbeats_going(broker_url: str) -> None:
    with blocking.connect(broker_url, heartbeat=1) as conn:
        assert conn._core.heartbeat == 1
        conn.process_data_events(3.5)  # past two intervals: still alive
        assert conn.is_open
        ch = conn.channel(timeout=T)
        assert isinstance(ch.queue_declare("", timeout=T), spec.Queue.DeclareOk)


@pytest.mark.skipif(sys.platform != "linux", reason="the recv()-with-SO_RCVTIMEO read is Linux's")
def test_plain_socket_reads_block_in_recv_for_one_slice(broker_url: str) -> None:
    import struct
    with blocking.connect(broker_url) as conn:
        sock = conn._sock
        assert sock.getblocking()
        timeval = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
        seconds, micros = struct.unpack("@ll", timeval)
        assert 0.24 <= seconds + micros / 1e6 <= 0.26  # (the kernel rounds it to its tick)
        # An idle wait is a series of slices: it ends when asked, neither early nor late.
        started = time.monotonic()
        conn.process_data_events(0.6)
        assert 0.6 <= time.monotonic() - started < 3.0
        ch = conn.channel(timeout=T)
        assert isinstance(ch.queue_declare("", timeout=T), spec.Queue.DeclareOk)


def test_close_from_another_thread_ends_a_blocked_read_at_once(broker_url: str) -> None:
    import struct

    conn = blocking.connect(broker_url)
    # A read that would block for 10 s: only shutdown() can end it sooner.
    conn._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 10, 0))
    ended: list[float] = []

    def idle() -> None:
        with contextlib.suppress(Exception):
            conn.process_data_events(30)
        ended.append(time.monotonic())

    reader = threading.Thread(target=idle, daemon=True)
    reader.start()
    time.sleep(0.3)  # the reader is inside recv()
    closing = time.monotonic()
    conn._lost(ConnectionResetError("cut by the test"))  # as a failed write in another thread
    reader.join(5)
    assert not reader.is_alive()
    assert ended[0] - closing < 5  # long before the read's 10 s: shutdown() woke it
    assert not conn.is_open


def test_large_messages_round_trip_and_reads_grow_only_while_they_fill(
    conn: blocking.BlockingConnection, ch: blocking.BlockingChannel,
) -> None:
    import hashlib
    queue = declare_temp(ch)
    ch.confirm_select(timeout=T)
    bodies = [os.urandom(4 << 20), os.urandom((4 << 20) + 12345), b""]
    for body in bodies:
        ch.basic_publish("", queue, body, BasicProperties(message_id=str(len(body))), timeout=30)
    reads: list[int] = []
    receive = conn._core.receive_data

    def recording(data: Any) -> None:
        reads.append(len(data))
        receive(data)

    conn._core.receive_data = recording  # type: ignore[method-assign]
    got = []
    for message in ch.consume(queue, prefetch=2, inactivity_timeout=T):
        assert message is not None
        got.append(message)
        message.ack()
        if len(got) == len(bodies):
            break
    for message, body in zip(got, bodies, strict=True):
        assert type(message.body) is bytes
        assert hashlib.sha256(message.body).digest() == hashlib.sha256(body).digest()
        assert message.properties.message_id == str(len(body))
    assert max(reads) > 65536  # reads grew while they filled the buffer
    ch.basic_publish("", queue, b"small", timeout=T)
    small = ch.basic_get(queue, auto_ack=True, timeout=T)
    assert small is not None and small.body == b"small"
    assert conn._recv_size == 65536  # and came back once reads were small


# -- confirms -------------------------------------------------------------------------------


def test_confirmed_publish_returns_on_ack(conn: blocking.BlockingConnection,
                                          ch: blocking.BlockingChannel) -> None:
    queue = declare_temp(ch)
    ch.confirm_select(timeout=T)
    props = BasicProperties(delivery_mode=2)
    ch.basic_publish("", queue, b"confirmed", props, timeout=T)
    # Not mandatory: an unroutable message is acked too.
    ch.basic_publish("amq.direct", unique("nowhere"), b"dropped", timeout=T)
    assert message_count(conn, queue) == 1
    assert ch._book.pending_confirms == 0


def test_nack_error_from_a_reject_publish_queue(ch: blocking.BlockingChannel) -> None:
    queue = declare_temp(ch, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_select(timeout=T)
    ch.basic_publish("", queue, b"fits", timeout=T)
    with pytest.raises(NackError) as info:
        ch.basic_publish("", queue, b"overflows", timeout=T)
    assert info.value.delivery_tag == 2
    outcomes = ch.publish_batch([("", queue, b"x"), ("", queue, b"y")], timeout=T)
    assert [type(o) for o in outcomes] == [NackError, NackError]
    message = ch.basic_get(queue, auto_ack=True, timeout=T)
    assert message is not None and message.body == b"fits"
    assert ch.publish_batch([("", queue, b"room again")], timeout=T) == [None]
    assert ch.is_open


def test_unroutable_error_with_mandatory(ch: blocking.BlockingChannel) -> None:
    queue = declare_temp(ch)
    ch.confirm_select(timeout=T)
    key = unique("nowhere")
    with pytest.raises(UnroutableError) as info:
        ch.basic_publish("amq.direct", key, b"lost", mandatory=True, timeout=T)
    error = info.value
    assert error.reply_code == 312 and error.message.body == b"lost"
    assert error.message.routing_key == key and error.message.exchange == "amq.direct"
    outcomes = ch.publish_batch([
        ("", queue, b"routed", None, True),
        ("amq.direct", key, b"returned", None, True),
        ("amq.direct", key, b"not mandatory"),
        ("", queue, b"routed too", BasicProperties(priority=1), True),
    ], timeout=T)
    assert outcomes[0] is None and outcomes[2] is None and outcomes[3] is None
    assert isinstance(outcomes[1], UnroutableError)
    assert outcomes[1].message.body == b"returned"
    assert ch.queue_declare(queue, passive=True, timeout=T).message_count == 2


def test_publish_batch_of_5000_returns_5000_outcomes(conn: blocking.BlockingConnection,
                                                      ch: blocking.BlockingChannel) -> None:
    queue = declare_temp(ch)
    ch.confirm_select(timeout=T)
    started = time.monotonic()
    outcomes = ch.publish_batch([("", queue, b"message %d" % i) for i in range(5000)],
                                timeout=60)
    elapsed = time.monotonic() - started
    assert len(outcomes) == 5000 and outcomes.count(None) == 5000, elapsed
    assert message_count(conn, queue) == 5000
    assert ch._book.pending_confirms == 0
    # Without confirms: one None per message, as soon as it is written.
    plain = conn.channel(timeout=T)
    assert plain.publish_batch([("", queue, b"p")] * 100, timeout=T) == [None] * 100
    wait_until(conn, lambda: message_count(conn, queue) == 5100)


def test_protocol_0_8_end_to_end(broker_url: str) -> None:
    url = with_option(broker_url, "protocol=0-8")
    with blocking.connect(url) as conn:
        assert conn.parameters.protocol == "0-8"
        assert conn._core.dialect is spec_0_8.DIALECT
        ch = conn.channel(timeout=T)
        exchange = unique("x08")
        assert isinstance(ch.exchange_declare(exchange, "direct", timeout=T),
                          spec_0_8.Exchange.DeclareOk)
        ok = ch.queue_declare("", auto_delete=False, timeout=T)
        assert isinstance(ok, spec_0_8.Queue.DeclareOk)
        queue = ok.queue
        assert isinstance(ch.queue_bind(queue, exchange, "k", timeout=T),
                          spec_0_8.Queue.BindOk)
        assert isinstance(ch.basic_qos(prefetch_count=5, timeout=T), spec_0_8.Basic.QosOk)
        props = spec_0_8.BasicProperties(content_type="text/plain", delivery_mode=1)
        ch.basic_publish(exchange, "k", b"zero-eight", props, timeout=T)
        ch.basic_publish(exchange, "k", b"with 0-9-1 properties",
                         BasicProperties(message_id="m"), timeout=T)
        got = ch.basic_get(queue, timeout=T)
        assert got is not None and got.body == b"zero-eight"
        assert got.properties.content_type == "text/plain"
        got.reject(requeue=True)
        with pytest.raises(UsageError):
            ch.basic_nack(got.delivery_tag + 1)  # no basic.nack in 0-8
        with pytest.raises(UsageError):
            ch.confirm_select(timeout=T)
        with pytest.raises(UsageError):
            ch.exchange_bind(exchange, "amq.direct", timeout=T)
        bodies = []
        for message in ch.consume(queue, prefetch=5, inactivity_timeout=0.5):
            if message is None:
                break
            bodies.append(message.body)
            message.ack()
        assert sorted(bodies) == [b"with 0-9-1 properties", b"zero-eight"]
        assert isinstance(ch.tx_select(timeout=T), spec_0_8.Tx.SelectOk)
        ch.basic_publish(exchange, "k", b"tx", timeout=T)
        assert isinstance(ch.tx_commit(timeout=T), spec_0_8.Tx.CommitOk)
        assert isinstance(ch.queue_purge(queue, timeout=T), spec_0_8.Queue.PurgeOk)
        assert isinstance(ch.queue_unbind(queue, exchange, "k", timeout=T),
                          spec_0_8.Queue.UnbindOk)
        assert isinstance(ch.queue_delete(queue, timeout=T), spec_0_8.Queue.DeleteOk)
        assert isinstance(ch.exchange_delete(exchange, timeout=T), spec_0_8.Exchange.DeleteOk)
    assert not conn.is_open


# -- errors ---------------------------------------------------------------------------------


def test_bad_credentials_raise_authentication_error(broker_url: str) -> None:
    parts = urlsplit(broker_url)
    host, port = parts.hostname or "localhost", parts.port or 5672
    with pytest.raises(AuthenticationError):
        blocking.connect(f"amqp://{parts.username or 'guest'}:not-the-password@{host}:{port}/")


def test_unknown_vhost_raises_access_refused(broker_url: str) -> None:
    parts = urlsplit(broker_url)
    url = urlunsplit(parts._replace(path="/" + unique("no-such-vhost")))
    with pytest.raises(AccessRefused) as info:
        blocking.connect(url)
    assert info.value.reply_code == 530


def test_failed_handshake_closes_the_socket(broker_url: str) -> None:
    parts = urlsplit(broker_url)
    url = urlunsplit(parts._replace(path="/" + unique("no-such-vhost")))
    created: list[socket.socket] = []
    real = socket.create_connection

    def spy(*args: Any, **kwargs: Any) -> socket.socket:
        sock = real(*args, **kwargs)
        created.append(sock)
        return sock

    with pytest.MonkeyPatch.context() as patch, pytest.raises(AccessRefused):
        patch.setattr(socket, "create_connection", spy)
        blocking.connect(url)
    assert len(created) == 1 and created[0].fileno() == -1, "the socket was left open"


def test_closed_port_raises_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        blocking.connect(f"amqp://guest:guest@127.0.0.1:{port}/", connection_timeout=5)


def test_missing_queue_raises_not_found_and_the_rest_goes_on(
    conn: blocking.BlockingConnection,
) -> None:
    doomed, other = conn.channel(timeout=T), conn.channel(timeout=T)
    queue = declare_temp(other)
    with pytest.raises(NotFound) as info:
        doomed.queue_declare(unique("missing"), passive=True, timeout=T)
    assert info.value.reply_code == 404
    assert not doomed.is_open and conn.is_open and other.is_open
    with pytest.raises(NotFound):
        doomed.queue_declare("", timeout=T)  # the channel's error, nothing sent
    with pytest.raises(NotFound):
        doomed.basic_get(unique("missing"), timeout=T)
    other.basic_publish("", queue, b"still here", timeout=T)
    assert other.basic_get(queue, auto_ack=True, timeout=T) is not None
    fresh = conn.channel(timeout=T)
    with pytest.raises(NotFound):
        fresh.basic_get(unique("missing"), timeout=T)
    assert conn.channel(timeout=T).queue_declare(queue, passive=True, timeout=T)


def test_double_ack_is_a_usage_error_and_sends_nothing(
    conn: blocking.BlockingConnection, ch: blocking.BlockingChannel
) -> None:
    queue = declare_temp(ch)
    ch.basic_publish("", queue, b"once", timeout=T)
    message = ch.basic_get(queue, timeout=T)
    assert message is not None
    message.ack()
    with pytest.raises(UsageError):
        message.ack()
    with pytest.raises(UsageError):
        ch.basic_ack(message.delivery_tag)
    with pytest.raises(UsageError):
        ch.basic_reject(message.delivery_tag)
    with pytest.raises(UsageError):
        ch.basic_ack(0, multiple=True)
    with pytest.raises(UsageError):
        ch.basic_nack(message.delivery_tag + 7)
    assert conn._core.pending_chunks == 0  # nothing queued for the wire
    # A second ack would have closed the channel with 406; a round trip proves none went.
    conn.process_data_events(0.3)
    assert ch.is_open
    assert isinstance(ch.queue_declare(queue, passive=True, timeout=T), spec.Queue.DeclareOk)
    assert ch.is_open


def test_broker_closing_the_connection_raises_connection_forced(
    private_node: PrivateNode,
) -> None:
    conn = blocking.connect(private_node.url)
    ch = conn.channel(timeout=T)
    queue = declare_temp(ch)
    private_node.close_all_connections("bye from the blocking tests")
    with pytest.raises(ConnectionForced) as info:
        ch.queue_declare(queue, passive=True, timeout=T)
    assert isinstance(info.value, ConnectionClosedByBroker)
    assert info.value.reply_code == 320 and "bye from the blocking tests" in str(info.value)
    assert not conn.is_open and not ch.is_open
    with pytest.raises(ConnectionForced):
        conn.channel(timeout=T)
    with pytest.raises(ConnectionForced):
        conn.process_data_events(0)
    conn.close(timeout=T)  # fine after the broker closed it


def test_broker_closing_the_connection_ends_an_idle_consumer(
    private_node: PrivateNode,
) -> None:
    conn = blocking.connect(private_node.url)
    ch = conn.channel(timeout=T)
    consumer = ch.basic_consume(declare_temp(ch), timeout=T)
    closer = threading.Timer(0.5, private_node.close_all_connections)
    closer.start()
    try:
        with pytest.raises(ConnectionForced):
            consumer.get(timeout=T)
    finally:
        closer.join(T)
    conn.close(timeout=T)


@pytest.fixture
def proxy(broker_address: tuple[str, int]) -> Iterator[Proxy]:
    with Proxy(*broker_address) as p:
        yield p


def test_heartbeat_timeout_on_a_dead_network(broker_url: str, proxy: Proxy) -> None:
    conn = blocking.connect(via(broker_url, proxy.host, proxy.port), heartbeat=1)
    assert conn._core.heartbeat == 1
    ch = conn.channel(timeout=T)
    consumer = ch.basic_consume(declare_temp(ch), timeout=T)
    proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(HeartbeatTimeout):
        consumer.get(timeout=5)
    elapsed = time.monotonic() - started
    assert elapsed < 3.5, f"the dead peer was noticed after {elapsed:.1f} s"
    assert not conn.is_open and not ch.is_open
    with pytest.raises(HeartbeatTimeout):
        ch.queue_declare("", timeout=T)
    conn.close(timeout=T)


def test_heartbeat_timeout_ends_a_waiting_call(broker_url: str, proxy: Proxy) -> None:
    conn = blocking.connect(via(broker_url, proxy.host, proxy.port), heartbeat=1)
    ch = conn.channel(timeout=T)
    proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(HeartbeatTimeout):
        ch.queue_declare("", timeout=5)
    assert time.monotonic() - started < 3.5
    conn.close(timeout=T)


def test_cut_network_raises_from_the_next_call(broker_url: str, proxy: Proxy) -> None:
    conn = blocking.connect(via(broker_url, proxy.host, proxy.port))
    ch = conn.channel(timeout=T)
    proxy.cut()
    with pytest.raises(ConnectionLost) as lost:
        ch.queue_declare("", timeout=T)
    assert isinstance(lost.value.reason, OSError)  # the socket's error, as the cause
    assert lost.value.__cause__ is lost.value.reason
    assert not conn.is_open and not ch.is_open
    conn.close(timeout=T)


def test_tiny_timeout_leaves_the_channel_consistent(ch: blocking.BlockingChannel) -> None:
    """A call that times out abandons its reply: the next call gets its own."""
    names = [unique(f"t{i}") for i in range(200)]
    timeouts = 0
    for i, name in enumerate(names):
        try:
            ch.queue_declare(name, exclusive=True, timeout=0.001)
        except TimeoutError:
            timeouts += 1
        ok = ch.exchange_declare("amq.direct", "direct", passive=True, timeout=T)
        assert isinstance(ok, spec.Exchange.DeclareOk), ok
        ok = ch.queue_declare(name, passive=True, timeout=T)
        assert isinstance(ok, spec.Queue.DeclareOk) and ok.queue == name, (i, ok)
        if timeouts >= 5 and i >= 20:
            break
    assert timeouts >= 1, "no call timed out at 1 ms; the test proves nothing"
    assert ch.is_open and ch._book.pending_calls == 0


@contextlib.contextmanager
def slow_network(conn: blocking.BlockingConnection) -> Iterator[None]:
    """For a while nothing seems to arrive: every read waits out its slice and finds the
    socket empty, so a call times out deterministically; its reply waits in the socket."""

    def nothing_arrives(wait: float) -> bool:
        time.sleep(wait)
        return False

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conn, "_select", nothing_arrives)
        yield


def test_timed_out_basic_get_does_not_lose_the_message(
    conn: blocking.BlockingConnection, ch: blocking.BlockingChannel
) -> None:
    queue = declare_temp(ch)
    ch.confirm_select(timeout=T)
    ch.publish_batch([("", queue, b"first"), ("", queue, b"second")], timeout=T)
    with slow_network(conn), pytest.raises(TimeoutError):
        ch.basic_get(queue, timeout=0.05)
    # The late get-ok is rejected with requeue: the message goes back, not lost.
    second = ch.basic_get(queue, timeout=T)
    assert second is not None and second.body == b"second"
    second.ack()
    first = ch.basic_get(queue, timeout=T)
    assert first is not None and first.body == b"first" and first.redelivered
    first.ack()
    assert ch.basic_get(queue, timeout=T) is None and ch.is_open


def test_timed_out_basic_consume_is_cancelled(conn: blocking.BlockingConnection,
                                              ch: blocking.BlockingChannel) -> None:
    queue = declare_temp(ch)
    ch.confirm_select(timeout=T)
    ch.basic_publish("", queue, b"kept", timeout=T)
    with slow_network(conn), pytest.raises(TimeoutError):
        ch.basic_consume(queue, timeout=0.05)
    # The late consume-ok is answered with basic.cancel; what it delivered goes back.
    assert isinstance(ch.basic_qos(prefetch_count=0, timeout=T), spec.Basic.QosOk)
    assert ch._book.consumer_tags == []
    wait_until(conn, lambda: consumer_count(conn, queue) == 0)
    wait_until(conn, lambda: message_count(conn, queue) == 1)
    message = ch.basic_get(queue, auto_ack=True, timeout=T)
    assert message is not None and message.body == b"kept"
    # The channel goes on: a new consumer gets the next message.
    consumer = ch.basic_consume(queue, timeout=T)
    ch.basic_publish("", queue, b"next", timeout=T)
    message = consumer.get(timeout=T)
    assert message is not None and message.body == b"next" and not message.redelivered


def test_timed_out_call_then_the_next_call_gets_its_own_reply(
    conn: blocking.BlockingConnection, ch: blocking.BlockingChannel
) -> None:
    name = unique()
    with slow_network(conn), pytest.raises(TimeoutError):
        ch.queue_declare(name, exclusive=True, timeout=0.05)
    ok = ch.exchange_declare("amq.topic", "topic", passive=True, timeout=T)
    assert isinstance(ok, spec.Exchange.DeclareOk)
    ok = ch.queue_declare(name, passive=True, timeout=T)
    assert isinstance(ok, spec.Queue.DeclareOk) and ok.queue == name
    assert ch._book.pending_calls == 0


def test_publish_timeout_in_confirm_mode(conn: blocking.BlockingConnection,
                                         ch: blocking.BlockingChannel) -> None:
    queue = declare_temp(ch)
    ch.confirm_select(timeout=T)
    with slow_network(conn), pytest.raises(TimeoutError):
        ch.basic_publish("", queue, b"outcome unknown to the caller", timeout=0.05)
    with slow_network(conn), pytest.raises(TimeoutError):  # the whole batch is bounded
        ch.publish_batch([("", queue, b"a"), ("", queue, b"b")], timeout=0.05)
    # Their late acks are dropped; the next publish gets its own.
    ch.basic_publish("", queue, b"last", timeout=T)
    assert ch._book.pending_confirms == 0
    assert ch.queue_declare(queue, passive=True, timeout=T).message_count == 4
    # The real clock too: tiny timeouts either time out or succeed, never mix replies up.
    for _ in range(50):
        with contextlib.suppress(TimeoutError):
            ch.basic_publish("", queue, b"x" * 1000, timeout=0.0001)
    ch.basic_publish("", queue, b"very last", timeout=T)
    assert ch.queue_declare(queue, passive=True, timeout=T).message_count == 55


def test_reply_dispatched_as_the_wait_times_out_is_returned(
    conn: blocking.BlockingConnection, ch: blocking.BlockingChannel
) -> None:
    """Another thread may dispatch a reply between the deadline and the caller taking the
    lock again: the caller returns it (a fetched message must not be dropped unacked)."""
    queue = declare_temp(ch)
    ch.confirm_select(timeout=T)
    ch.basic_publish("", queue, b"just in time", timeout=T)
    real_wait = conn._wait

    def wait_then_time_out(predicate: Any, timeout: float | None, **kwargs: Any) -> None:
        real_wait(predicate, T, **kwargs)  # the reply is dispatched...
        raise TimeoutError("the deadline passed meanwhile")  # ...as the deadline passes

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conn, "_wait", wait_then_time_out)
        message = ch.basic_get(queue, timeout=0.05)
    assert message is not None and message.body == b"just in time"
    message.ack()
    assert ch.basic_get(queue, timeout=T) is None and ch.is_open


def test_input_read_while_a_write_was_stuck_is_dispatched(
    conn: blocking.BlockingConnection, ch: blocking.BlockingChannel
) -> None:
    """A writer whose socket buffer is full reads meanwhile (so two full buffers cannot
    deadlock) and leaves the bytes in the core; they must be dispatched even if nothing
    more ever arrives."""
    queue = declare_temp(ch)
    ch.confirm_select(timeout=T)
    outcome: list[object] = []
    with conn._lock:
        tag = ch._book.publish("", queue, b"x", None, False)
        ch._book.expect_confirm(tag, outcome.append, outcome.append)
        conn._flush()
    readable, _, _ = select.select([conn._sock], [], [], T)
    assert readable, "no ack within the bound"
    time.sleep(0.05)
    with conn._lock:
        conn._read_raw()  # what _flush does while the socket is full
    # The broker sends nothing more (heartbeats are a minute away).
    conn._wait(lambda: bool(outcome), 2)
    assert outcome == [None]


# -- connection.blocked ---------------------------------------------------------------------


def _block(node: PrivateNode, conn: blocking.BlockingConnection) -> None:
    """Raise the memory alarm; one publish makes the broker send connection.blocked."""
    node.set_memory_watermark(0)
    trigger = conn.channel(timeout=T)
    trigger.basic_publish("", "txpika-blocking-nowhere", b"trigger", timeout=T)
    wait_until(conn, lambda: conn.is_blocked)


def test_blocked_connection_with_raise_policy(private_node: PrivateNode) -> None:
    conn = blocking.connect(private_node.url, flow_policy="raise")
    try:
        ch = conn.channel(timeout=T)
        queue = declare_temp(ch)
        ch.confirm_select(timeout=T)
        ch.basic_publish("", queue, b"before", timeout=T)
        _block(private_node, conn)
        with pytest.raises(FlowControlError):
            ch.basic_publish("", queue, b"refused", timeout=T)
        with pytest.raises(FlowControlError):
            ch.publish_batch([("", queue, b"refused")], timeout=T)
        assert ch.is_open and conn.is_open
        private_node.set_memory_watermark(0.4)
        wait_until(conn, lambda: not conn.is_blocked)
        ch.basic_publish("", queue, b"after", timeout=T)
        assert ch.queue_declare(queue, passive=True, timeout=T).message_count == 2
    finally:
        conn.close(timeout=T)


def test_blocked_connection_with_wait_policy(private_node: PrivateNode) -> None:
    # heartbeat=1: a blocked broker must not be mistaken for a dead one.
    conn = blocking.connect(private_node.url, heartbeat=1)
    try:
        ch = conn.channel(timeout=T)
        queue = declare_temp(ch)
        ch.confirm_select(timeout=T)
        _block(private_node, conn)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            ch.basic_publish("", queue, b"waits", timeout=1)
        assert 0.9 <= time.monotonic() - started < 3
        conn.process_data_events(2.5)  # over two heartbeat intervals while blocked
        assert conn.is_open and conn.is_blocked and ch.is_open
        restorer = threading.Timer(1.0, private_node.set_memory_watermark, (0.4,))
        restorer.start()
        try:
            started = time.monotonic()
            ch.basic_publish("", queue, b"completes", timeout=30)
            assert time.monotonic() - started >= 0.5  # it waited for the unblock
        finally:
            restorer.join(T)
        wait_until(conn, lambda: not conn.is_blocked)
        assert ch.queue_declare(queue, passive=True, timeout=T).message_count == 1
    finally:
        conn.close(timeout=T)


def test_huge_publish_to_a_broker_that_stopped_reading_honours_its_timeout(
    private_node: PrivateNode,
) -> None:
    conn = blocking.connect(private_node.url)
    ch = conn.channel(timeout=T)
    queue = declare_temp(ch)
    private_node.set_memory_watermark(0)  # the broker stops reading at the next publish
    outcome: list[Any] = []

    def publish() -> None:
        try:
            ch.basic_publish("", queue, b"x" * (64 << 20), timeout=3)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        thread.join(8)
        stuck = thread.is_alive()
    finally:
        private_node.set_memory_watermark(0.4)  # the broker reads again: the write ends
        thread.join(60)
        conn.close(timeout=T)
    assert not thread.is_alive()
    assert not stuck, "basic_publish(timeout=3) was still writing after 8 s"
    assert isinstance(outcome[0], TimeoutError)
    # A frame cannot be left half-written: the connection was dropped, and says why.
    assert not conn.is_open


# -- examples ---------------------------------------------------------------------------------


def _run_example(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args], cwd=ROOT, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=timeout, check=False)


def test_example_blocking_publisher_and_consumer(broker_url: str) -> None:
    queue = unique("example")
    try:
        published = _run_example("blocking_publisher", broker_url, "--queue", queue,
                                 "--count", "7")
        assert published.returncode == 0, published.stdout
        assert f"published 7 of 7 to {queue}" in published.stdout
        consumed = _run_example("blocking_consumer", broker_url, "--queue", queue,
                                "--idle", "1")
        assert consumed.returncode == 0, consumed.stdout
        lines = consumed.stdout.splitlines()
        assert [line for line in lines if line.startswith("message ")] == [
            f"message {i}" for i in range(7)]
        assert "consumed 7 messages" in consumed.stdout
        # Nothing left: the consumer acked everything.
        again = _run_example("blocking_consumer", broker_url, "--queue", queue, "--idle",
                             "0.5", "--count", "1")
        assert again.returncode == 1 and "consumed 0 messages" in again.stdout
    finally:
        with blocking.connect(broker_url) as conn:
            conn.channel(timeout=T).queue_delete(queue, timeout=T)


def test_example_blocking_threads(broker_url: str) -> None:
    result = _run_example("blocking_threads", broker_url, "--threads", "4", "--count", "250")
    assert result.returncode == 0, result.stdout
    assert "published 1000, confirmed 1000, consumed 1000" in result.stdout


def test_examples_do_not_import_twisted() -> None:
    probe = (
        "import runpy, sys; sys.argv = [sys.argv[1], '--help']\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope'))\n"
        "print('FORBIDDEN', bad)\n"
    )
    for name in ("blocking_publisher", "blocking_consumer", "blocking_threads"):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        result = subprocess.run([sys.executable, "-c", probe, str(EXAMPLES / f"{name}.py")],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                                check=False)
        assert "FORBIDDEN []" in result.stdout, (name, result.stdout, result.stderr)
        assert "usage:" in result.stdout, (name, result.stdout)
        assert "amqp://guest:guest@localhost:5672/%2F" in result.stdout, (name, result.stdout)


def test_closed_by_client_errors_are_what_a_script_sees(broker_url: str) -> None:
    conn = blocking.connect(broker_url)
    ch = conn.channel(timeout=T)
    ch.close(timeout=T)
    with pytest.raises(ChannelClosedByClient):
        ch.queue_declare("", timeout=T)
    ch.close(timeout=T)  # twice is fine
    conn.close(timeout=T)
    conn.close(timeout=T)
    with pytest.raises(ConnectionClosedByClient):
        conn.channel(timeout=T)
    with pytest.raises(UsageError):
        blocking.connect("tcp:host=localhost:port=5672")
