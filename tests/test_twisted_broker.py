"""The Twisted layer (`txpika.connect`, `AMQPProtocol`, `Channel`, `Consumer`, `Message`)
against the real RabbitMQ, on the global reactor (pytest-twisted).

Every test talks to the shared broker from the ``broker_url`` fixture: entities are named
with a uuid and are exclusive or auto-delete, and every connection a test opens is closed
when it ends (the ``open_conn`` fixture). Every wait is bounded (``within``), so a lost
Deferred fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twistedhelpers import Opener, failure_of, sleep, unique, within

import txpika
from txpika import spec, spec_0_8
from txpika.channel import Channel, Message
from txpika.connection import VirtualHostAccessRefused
from txpika.errors import (
    AccessRefused,
    AuthenticationError,
    ConnectionClosedByClient,
    ConsumerCancelled,
    NotFound,
    OutcomeUnknownError,
    PreconditionFailed,
    ResourceLocked,
    UnroutableError,
    UsageError,
)
from txpika.protocol import AMQPClientFactory, AMQPProtocol

pytestmark = pytest.mark.broker



def url_parts(broker_url: str) -> dict[str, Any]:
    url = urlsplit(broker_url)
    return {
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 5672,
        "username": unquote(url.username or "guest"),
        "password": unquote(url.password or "guest"),
        "virtual_host": unquote(url.path[1:]) if len(url.path) > 1 else "/",
    }


def with_query(broker_url: str, query: str) -> str:
    return f"{broker_url}{'&' if '?' in broker_url else '?'}{query}"


class Tracked:
    """Counts how ``deferred`` fired; the result goes on to later callbacks."""

    def __init__(self, d: Deferred[Any]) -> None:
        self.fired = 0
        self.error: BaseException | None = None
        self.deferred = d
        d.addBoth(self._fired)

    def _fired(self, result: Any) -> Any:
        self.fired += 1
        if isinstance(result, Failure):
            self.error = result.value
        return result


@pytest_twisted.async_yield_fixture
async def open_conn(broker_url: str) -> AsyncIterator[Opener]:
    """``await open_conn(target=broker_url, **overrides)``: a connection closed at teardown."""
    opened: list[AMQPProtocol] = []

    async def open_(target: Any = None, **overrides: Any) -> AMQPProtocol:
        conn = await within(txpika.connect(reactor, target or broker_url, **overrides), 15)
        opened.append(conn)
        return conn

    yield open_
    closing = [c.close() for c in opened]
    await within(DeferredList(closing, consumeErrors=True), 15)


@pytest_twisted.async_yield_fixture
async def cleanup(broker_url: str) -> AsyncIterator[list[Callable[[Channel], Deferred[Any]]]]:
    """Calls ``f(channel)`` for each ``f`` a test appended, on a connection of its own;
    for shared-broker entities that cannot be auto-delete. Errors are ignored."""
    actions: list[Callable[[Channel], Deferred[Any]]] = []
    yield actions
    if not actions:
        return
    conn = await within(txpika.connect(reactor, broker_url), 15)
    try:
        for action in actions:
            ch = await within(conn.channel(), 10)
            with contextlib.suppress(Exception):
                await within(action(ch), 10)
            if ch.is_open:
                await within(ch.close(), 10)
    finally:
        await within(conn.close(), 15)


async def fresh_queue(ch: Channel, **kwargs: Any) -> str:
    ok = await within(ch.queue_declare(unique(), exclusive=True, **kwargs), 10)
    return str(ok.queue)


# -- connecting ------------------------------------------------------------------------------


async def check_usable(conn: AMQPProtocol) -> None:
    """An open connection that can declare, publish and fetch."""
    assert conn.is_open
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    await within(ch.basic_publish("", q, b"ping"), 10)
    msg = await within(ch.basic_get(q, auto_ack=True), 10)
    assert msg is not None and msg.body == b"ping"
    await within(ch.close(), 10)


async def check_normal_close(conn: AMQPProtocol) -> None:
    closed = conn.when_closed()
    await within(conn.close(), 15)
    reason = await within(closed, 1)
    assert isinstance(reason, ConnectionClosedByClient)
    assert reason.reply_code == 200
    assert not conn.is_open
    # closed() asked for after the end fires at once with the same reason.
    assert (await within(conn.when_closed(), 1)) is reason


@pytest_twisted.ensureDeferred
async def test_connect_with_url(broker_url: str) -> None:
    conn = await within(txpika.connect(reactor, broker_url), 15)
    try:
        assert isinstance(conn, AMQPProtocol)
        assert conn.dialect == "0-9-1"
        assert conn.server_properties["product"] in (b"RabbitMQ", "RabbitMQ")
        assert not conn.is_blocked and conn.blocked_reason == ""
        # ready after the handshake fires at once with the protocol.
        assert (await within(conn.ready, 1)) is conn
        await check_usable(conn)
    finally:
        await check_normal_close(conn)


@pytest_twisted.ensureDeferred
async def test_connect_with_parameters(broker_url: str) -> None:
    params = txpika.ConnectionParameters(**url_parts(broker_url),
                                         connection_name=unique("params"))
    conn = await within(txpika.connect(reactor, params), 15)
    try:
        await check_usable(conn)
    finally:
        await check_normal_close(conn)


@pytest_twisted.ensureDeferred
async def test_connect_with_endpoint_description(broker_url: str) -> None:
    parts = url_parts(broker_url)
    conn = await within(txpika.connect(
        reactor, f"tcp:{parts['host']}:{parts['port']}", username=parts["username"],
        password=parts["password"], virtual_host=parts["virtual_host"], heartbeat=30), 15)
    try:
        assert conn.parameters.endpoint == f"tcp:{parts['host']}:{parts['port']}"
        await check_usable(conn)
    finally:
        await check_normal_close(conn)


@pytest_twisted.ensureDeferred
async def test_endpoint_connect_with_factory(broker_url: str) -> None:
    parts = url_parts(broker_url)
    params = txpika.ConnectionParameters(**parts)
    endpoint = TCP4ClientEndpoint(reactor, parts["host"], parts["port"], timeout=10)
    protocol = await within(endpoint.connect(AMQPClientFactory(params)), 10)
    assert isinstance(protocol, AMQPProtocol)
    try:
        conn = await within(protocol.ready, 10)
        assert conn is protocol
        await check_usable(conn)
    finally:
        await check_normal_close(protocol)


@pytest_twisted.ensureDeferred
async def test_amqp_0_8_end_to_end(broker_url: str) -> None:
    conn = await within(txpika.connect(reactor, with_query(broker_url, "protocol=0-8")), 15)
    try:
        assert conn.dialect == "0-8"
        ch = await within(conn.channel(), 10)
        exchange, queue = unique("x08"), unique("q08")
        ok: Any = await within(ch.exchange_declare(exchange, "topic", auto_delete=True), 10)
        assert isinstance(ok, spec_0_8.Exchange.DeclareOk)
        ok = await within(ch.queue_declare(queue, exclusive=True), 10)
        assert isinstance(ok, spec_0_8.Queue.DeclareOk) and ok.queue == queue
        ok = await within(ch.queue_bind(queue, exchange, "a.*"), 10)
        assert isinstance(ok, spec_0_8.Queue.BindOk)
        # 0-9-1 extensions are refused locally, with nothing sent.
        assert isinstance(await failure_of(ch.confirm_select()), UsageError)
        assert isinstance(await failure_of(ch.exchange_bind(exchange, exchange)), UsageError)
        props = spec_0_8.BasicProperties(content_type="text/plain", message_id="m1")
        await within(ch.basic_publish(exchange, "a.b", b"zero-eight", props), 10)
        consumer = await within(ch.basic_consume(queue), 10)
        msg = await within(consumer.get(), 10)
        assert msg.body == b"zero-eight" and msg.routing_key == "a.b"
        assert msg.exchange == exchange
        assert msg.properties.content_type == "text/plain"
        assert msg.properties.message_id == "m1"
        await within(msg.ack(), 10)
        assert isinstance(await failure_of(msg.ack()), UsageError)
        await within(consumer.cancel(), 10)
        assert not consumer.active
        ok = await within(ch.queue_declare(queue, passive=True), 10)
        assert ok.message_count == 0
        await within(ch.exchange_delete(exchange), 10)
        await within(ch.close(), 10)
        assert not ch.is_open
    finally:
        await check_normal_close(conn)


# -- every channel method --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_channel_method_returns_its_typed_ok(
        open_conn: Opener, cleanup: list[Callable[[Channel], Deferred[Any]]]) -> None:
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    assert ch.is_open and ch.channel_number >= 1 and ch.flow_active
    source, dest, queue = unique("src"), unique("dst"), unique("q")

    # Not auto-delete (unbinding would delete them): removed at the end, or by cleanup.
    ok: Any = await within(ch.exchange_declare(source, "topic"), 10)
    assert isinstance(ok, spec.Exchange.DeclareOk)
    cleanup.append(lambda c: c.exchange_delete(source))
    ok = await within(ch.exchange_declare(dest, "fanout"), 10)
    assert isinstance(ok, spec.Exchange.DeclareOk)
    cleanup.append(lambda c: c.exchange_delete(dest))
    ok = await within(ch.exchange_declare(source, "topic", passive=True), 10)
    assert isinstance(ok, spec.Exchange.DeclareOk)
    ok = await within(ch.exchange_bind(dest, source, "k.#"), 10)
    assert isinstance(ok, spec.Exchange.BindOk)

    ok = await within(ch.queue_declare(queue, exclusive=True), 10)
    assert isinstance(ok, spec.Queue.DeclareOk)
    assert (ok.queue, ok.message_count, ok.consumer_count) == (queue, 0, 0)
    ok = await within(ch.queue_bind(queue, dest), 10)
    assert isinstance(ok, spec.Queue.BindOk)

    # Routed source -> dest (exchange binding) -> queue; confirms make the count exact.
    ok = await within(ch.confirm_select(), 10)
    assert isinstance(ok, spec.Confirm.SelectOk)
    for i in range(3):
        assert await within(ch.basic_publish(source, "k.x", b"m%d" % i), 10) is None
    ok = await within(ch.queue_declare(queue, passive=True), 10)
    assert ok.message_count == 3
    ok = await within(ch.queue_purge(queue), 10)
    assert isinstance(ok, spec.Queue.PurgeOk) and ok.message_count == 3

    ok = await within(ch.exchange_unbind(dest, source, "k.#"), 10)
    assert isinstance(ok, spec.Exchange.UnbindOk)
    await within(ch.basic_publish(source, "k.x", b"lost"), 10)  # routes nowhere now
    await within(ch.basic_publish(dest, "", b"direct"), 10)
    ok = await within(ch.queue_unbind(queue, dest), 10)
    assert isinstance(ok, spec.Queue.UnbindOk)
    await within(ch.basic_publish(dest, "", b"lost too"), 10)
    ok = await within(ch.queue_declare(queue, passive=True), 10)
    assert ok.message_count == 1

    ok = await within(ch.basic_qos(prefetch_count=10), 10)
    assert isinstance(ok, spec.Basic.QosOk)
    ok = await within(ch.basic_qos(prefetch_count=5, global_qos=True), 10)
    assert isinstance(ok, spec.Basic.QosOk)
    ok = await within(ch.flow(True), 10)
    assert isinstance(ok, spec.Channel.FlowOk) and ok.active

    # get / recover / nack / reject / ack
    msg = await within(ch.basic_get(queue), 10)
    assert isinstance(msg, Message)
    assert msg.body == b"direct" and not msg.redelivered and msg.message_count == 0
    assert msg.exchange == dest and msg.channel is ch
    ok = await within(ch.basic_recover(requeue=True), 10)
    assert isinstance(ok, spec.Basic.RecoverOk)
    msg2 = await within(ch.basic_get(queue), 10)
    assert msg2 is not None and msg2.body == b"direct" and msg2.redelivered
    assert await within(ch.basic_nack(msg2.delivery_tag, requeue=True), 10) is None
    msg3 = await within(ch.basic_get(queue), 10)
    assert msg3 is not None and msg3.redelivered
    assert await within(ch.basic_reject(msg3.delivery_tag, requeue=True), 10) is None
    msg4 = await within(ch.basic_get(queue), 10)
    assert msg4 is not None and msg4.body == b"direct"
    assert await within(ch.basic_ack(msg4.delivery_tag), 10) is None
    assert await within(ch.basic_get(queue), 10) is None  # basic.get-empty
    await within(ch.basic_publish("", queue, b"rejected"), 10)
    msg5 = await within(ch.basic_get(queue), 10)
    assert msg5 is not None
    await within(msg5.reject(requeue=False), 10)
    await within(ch.basic_publish("", queue, b"nacked"), 10)
    msg6 = await within(ch.basic_get(queue), 10)
    assert msg6 is not None
    await within(msg6.nack(requeue=False), 10)
    assert await within(ch.basic_get(queue), 10) is None

    # consume / cancel
    consumer = await within(ch.basic_consume(queue, consumer_tag="tag-" + queue), 10)
    assert isinstance(consumer, txpika.Consumer)
    assert consumer.consumer_tag == "tag-" + queue and consumer.active
    ok = await within(ch.queue_declare(queue, passive=True), 10)
    assert ok.consumer_count == 1
    ok = await within(ch.basic_cancel(consumer.consumer_tag), 10)
    assert isinstance(ok, spec.Basic.CancelOk) and ok.consumer_tag == consumer.consumer_tag
    assert not consumer.active
    await within(consumer.when_closed(), 1)

    # transactions (on their own channel: tx and confirms do not mix)
    tx = await within(conn.channel(), 10)
    ok = await within(tx.tx_select(), 10)
    assert isinstance(ok, spec.Tx.SelectOk)
    await within(tx.basic_publish("", queue, b"rolled back"), 10)
    ok = await within(tx.tx_rollback(), 10)
    assert isinstance(ok, spec.Tx.RollbackOk)
    assert (await within(tx.queue_declare(queue, passive=True), 10)).message_count == 0
    await within(tx.basic_publish("", queue, b"committed"), 10)
    ok = await within(tx.tx_commit(), 10)
    assert isinstance(ok, spec.Tx.CommitOk)
    assert (await within(tx.queue_declare(queue, passive=True), 10)).message_count == 1
    await within(tx.close(), 10)

    ok = await within(ch.queue_delete(queue), 10)
    assert isinstance(ok, spec.Queue.DeleteOk) and ok.message_count == 1
    ok = await within(ch.exchange_delete(source), 10)
    assert isinstance(ok, spec.Exchange.DeleteOk)
    ok = await within(ch.exchange_delete(dest, if_unused=True), 10)
    assert isinstance(ok, spec.Exchange.DeleteOk)
    assert await within(ch.close(), 10) is None
    assert not ch.is_open
    assert await within(ch.close(), 1) is None  # closing twice is harmless
    assert isinstance(await failure_of(ch.basic_qos(1)), txpika.ChannelClosedByClient)


# -- connect errors --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bad_password_is_authentication_error(broker_url: str) -> None:
    parts = url_parts(broker_url)
    exc = await failure_of(txpika.connect(
        reactor, txpika.ConnectionParameters(**{**parts, "password": "not-the-password"})), 15)
    assert isinstance(exc, AuthenticationError)
    assert "not-the-password" not in str(exc) and "not-the-password" not in repr(exc)


@pytest_twisted.ensureDeferred
async def test_unknown_vhost_is_access_refused(broker_url: str) -> None:
    parts = url_parts(broker_url)
    vhost = unique("vhost")
    exc = await failure_of(txpika.connect(
        reactor, txpika.ConnectionParameters(**{**parts, "virtual_host": vhost})), 15)
    assert isinstance(exc, AccessRefused)
    assert isinstance(exc, VirtualHostAccessRefused)
    assert exc.reply_code == 530


@pytest_twisted.ensureDeferred
async def test_closed_port_is_connection_refused(broker_url: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exc = await failure_of(txpika.connect(
        reactor, f"amqp://guest:guest@127.0.0.1:{port}/", connection_timeout=5), 10)
    assert isinstance(exc, ConnectionRefusedError), repr(exc)


@pytest_twisted.ensureDeferred
async def test_silent_peer_times_out_within_connection_timeout(broker_url: str) -> None:
    # The kernel completes the TCP handshake for a listening socket; nobody ever answers.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        port = sock.getsockname()[1]
        start = time.monotonic()
        exc = await failure_of(txpika.connect(
            reactor, f"amqp://guest:guest@127.0.0.1:{port}/", connection_timeout=1), 5)
        elapsed = time.monotonic() - start
    assert isinstance(exc, defer.TimeoutError), repr(exc)
    assert 0.9 <= elapsed < 2.0, elapsed  # not the outer bound of connect() (2 s)


# -- channel errors --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_passive_declare_of_missing_queue_is_not_found(open_conn: Opener) -> None:
    conn = await open_conn()
    other = await within(conn.channel(), 10)
    ch = await within(conn.channel(), 10)
    missing = unique("missing")
    declare = ch.queue_declare(missing, passive=True)
    queued = ch.basic_qos(1)  # waits behind the declare; dies with the channel
    exc = await failure_of(declare)
    assert isinstance(exc, NotFound) and exc.reply_code == 404
    assert exc.method_name == "queue.declare"
    assert (await failure_of(queued, 1)) is exc
    assert not ch.is_open
    assert (await failure_of(ch.basic_qos(1), 1)) is exc
    # The connection and the other channel go on.
    assert conn.is_open and other.is_open
    q = await fresh_queue(other)
    await within(other.basic_publish("", q, b"still here"), 10)
    msg = await within(other.basic_get(q, auto_ack=True), 10)
    assert msg is not None and msg.body == b"still here"
    # A new channel on the same connection works too.
    third = await within(conn.channel(), 10)
    await fresh_queue(third)


@pytest_twisted.ensureDeferred
async def test_exclusive_queue_of_another_connection_is_resource_locked(
        open_conn: Opener) -> None:
    owner = await open_conn()
    intruder = await open_conn()
    q = await fresh_queue(await within(owner.channel(), 10))
    ch = await within(intruder.channel(), 10)
    exc = await failure_of(ch.queue_declare(q, exclusive=True))
    assert isinstance(exc, ResourceLocked) and exc.reply_code == 405
    assert not ch.is_open and intruder.is_open


@pytest_twisted.ensureDeferred
async def test_redeclare_with_other_arguments_is_precondition_failed(open_conn: Opener) -> None:
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch, arguments={"x-message-ttl": 60000})
    exc = await failure_of(ch.queue_declare(q, exclusive=True,
                                            arguments={"x-message-ttl": 1000}))
    assert isinstance(exc, PreconditionFailed) and exc.reply_code == 406
    assert not ch.is_open and conn.is_open


@pytest_twisted.ensureDeferred
async def test_publish_to_missing_exchange_closes_the_channel_with_not_found(
        open_conn: Opener) -> None:
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    # Without confirms the publish is done once written; the channel then dies with 404.
    assert await within(ch.basic_publish(unique("nox"), "k", b"x"), 10) is None
    exc = await failure_of(ch.basic_qos(1))
    assert isinstance(exc, NotFound) and exc.reply_code == 404
    assert not ch.is_open
    # With confirms the publish itself fails: its outcome is unknown because of the 404.
    cch = await within(conn.channel(), 10)
    await within(cch.confirm_select(), 10)
    exc = await failure_of(cch.basic_publish(unique("nox"), "k", b"x"))
    assert isinstance(exc, OutcomeUnknownError) and isinstance(exc.reason, NotFound)
    assert not cch.is_open and conn.is_open
    await check_usable(conn)


@pytest_twisted.ensureDeferred
async def test_exclusive_consumer_elsewhere_is_access_refused(open_conn: Opener) -> None:
    conn = await open_conn()
    first = await within(conn.channel(), 10)
    q = await fresh_queue(first)
    consumer = await within(first.basic_consume(q), 10)
    second = await within(conn.channel(), 10)
    exc = await failure_of(second.basic_consume(q, exclusive=True))
    assert isinstance(exc, AccessRefused) and exc.reply_code == 403
    assert not second.is_open and first.is_open and consumer.active


@pytest_twisted.ensureDeferred
async def test_closing_a_channel_ends_its_consumers(open_conn: Opener) -> None:
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    consumer = await within(ch.basic_consume(q), 10)
    getting = consumer.get()
    await within(ch.close(), 10)
    exc = await failure_of(getting, 1)
    assert isinstance(exc, txpika.ChannelClosedByClient)
    assert not consumer.active and consumer.end_reason is exc
    await within(consumer.when_closed(), 1)
    assert await within(consumer.cancel(), 1) is None  # already ended: nothing to do


@pytest_twisted.ensureDeferred
async def test_double_ack_is_usage_error_and_the_channel_stays_open(open_conn: Opener) -> None:
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    for body in (b"a", b"b", b"c"):
        await within(ch.basic_publish("", q, body), 10)
    msg = await within(ch.basic_get(q), 10)
    assert msg is not None and not msg.settled
    await within(msg.ack(), 10)
    assert msg.settled
    assert isinstance(await failure_of(msg.ack()), UsageError)
    assert isinstance(await failure_of(msg.nack()), UsageError)
    assert isinstance(await failure_of(ch.basic_ack(msg.delivery_tag)), UsageError)
    assert isinstance(await failure_of(ch.basic_reject(12345)), UsageError)
    auto = await within(ch.basic_get(q, auto_ack=True), 10)
    assert auto is not None and auto.settled
    assert isinstance(await failure_of(auto.ack()), UsageError)
    # Nothing was sent, so no 406: the channel works on.
    await within(ch.basic_qos(1), 10)
    assert ch.is_open
    last = await within(ch.basic_get(q), 10)
    assert last is not None and last.body == b"c"
    await within(last.ack(), 10)
    assert (await within(ch.queue_declare(q, passive=True), 10)).message_count == 0
    await within(ch.close(), 10)
    # A message of a closed channel cannot be settled: a local error, not a hang.
    ch2 = await within(conn.channel(), 10)
    await within(ch2.basic_publish("", q, b"d"), 10)
    stale = await within(ch2.basic_get(q), 10)
    assert stale is not None
    await within(ch2.close(), 10)
    assert isinstance(await failure_of(stale.ack()), UsageError)


@pytest_twisted.ensureDeferred
async def test_close_fails_pending_work_with_connection_closed_by_client(
        open_conn: Opener) -> None:
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    consumer = await within(ch.basic_consume(q), 10)
    getting = consumer.get()
    await within(ch.confirm_select(), 10)
    rpc = ch.queue_declare(q, passive=True)
    publish = ch.basic_publish("", q, b"in flight")
    opening = conn.channel()
    await within(conn.close(), 15)
    reason = await within(conn.when_closed(), 1)
    assert isinstance(reason, ConnectionClosedByClient) and reason.reply_code == 200
    for d in (getting, rpc, opening):
        assert (await failure_of(d, 1)) is reason
    # Once connection.close is sent, replies that cross it are dropped (only close-ok
    # counts), so the confirm's outcome is unknown even if the broker did take it.
    exc = await failure_of(publish, 1)
    assert isinstance(exc, OutcomeUnknownError) and exc.reason is reason
    assert not consumer.active and consumer.end_reason is reason
    assert (await failure_of(conn.channel(), 1)) is reason


@pytest_twisted.ensureDeferred
async def test_handshake_failure_through_the_factory(broker_url: str) -> None:
    parts = url_parts(broker_url)
    params = txpika.ConnectionParameters(**{**parts, "password": "wrong-password"})
    endpoint = TCP4ClientEndpoint(reactor, parts["host"], parts["port"], timeout=10)
    protocol = await within(endpoint.connect(AMQPClientFactory(params)), 10)
    exc = await failure_of(protocol.ready, 10)
    assert isinstance(exc, AuthenticationError)
    assert (await within(protocol.when_closed(), 10)) is exc
    assert (await failure_of(protocol.ready, 1)) is exc  # a new Deferred, failed at once
    assert not protocol.is_open


@pytest_twisted.ensureDeferred
async def test_update_secret(open_conn: Opener, broker_url: str) -> None:
    conn = await open_conn()
    assert await within(conn.update_secret(url_parts(broker_url)["password"], "rotation"),
                        10) is None
    await check_usable(conn)


@pytest_twisted.ensureDeferred
async def test_cancelled_calls_are_absorbed_and_undone(open_conn: Opener) -> None:
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    for body in (b"1", b"2", b"3"):
        await within(ch.basic_publish("", q, body), 10)
    # A get cancelled before its reply: the fetched message is rejected back to the queue.
    getting = ch.basic_get(q)
    getting.cancel()
    assert isinstance(await failure_of(getting, 1), defer.CancelledError)
    # A consume cancelled before its consume-ok: the consumer is cancelled again and what
    # it was sent meanwhile goes back to the queue.
    consuming = ch.basic_consume(q)
    consuming.cancel()
    assert isinstance(await failure_of(consuming, 1), defer.CancelledError)
    await within(ch.basic_qos(1), 10)  # after both replies
    deadline = time.monotonic() + 5
    while True:
        ok = await within(ch.queue_declare(q, passive=True), 10)
        if (ok.message_count, ok.consumer_count) == (3, 0) or time.monotonic() > deadline:
            break
        await sleep(0.05)
    assert (ok.message_count, ok.consumer_count) == (3, 0)
    bodies = []
    for _ in range(3):
        msg = await within(ch.basic_get(q, auto_ack=True), 10)
        assert msg is not None
        bodies.append(msg.body)
    assert sorted(bodies) == [b"1", b"2", b"3"]
    assert ch.is_open


@pytest_twisted.ensureDeferred
async def test_call_timeout_fails_only_that_call(open_conn: Opener) -> None:
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    # A timeout far shorter than a round trip can be: the reply, when it comes, is absorbed.
    slow = ch.queue_declare(q, passive=True, timeout=0.000001)
    after = ch.queue_declare(q, passive=True, timeout=10)
    exc = await failure_of(slow, 5)
    assert isinstance(exc, defer.TimeoutError), repr(exc)
    ok = await within(after, 10)
    assert ok.queue == q
    assert ch.is_open


@pytest_twisted.ensureDeferred
async def test_auto_ack_consumer_buffer_pauses_and_resumes_reading(open_conn: Opener) -> None:
    n = 300
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    await within(ch.confirm_select(), 10)
    await within(gatherResults([ch.basic_publish("", q, b"%d" % i) for i in range(n)]), 10)
    consumer = await within(ch.basic_consume(q, auto_ack=True, max_buffer=20), 10)
    await sleep(0.3)  # the broker pushes everything; reading stops past the buffer bound
    assert conn.reading_paused  # the transport was paused for this consumer
    bodies = []
    for _ in range(n):
        msg = await within(consumer.get(), 10)
        assert msg.settled
        bodies.append(msg.body)
    assert bodies == [b"%d" % i for i in range(n)]
    assert not conn.reading_paused
    await within(consumer.cancel(), 10)
    await check_usable(conn)


# -- volume ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_64_mib_message_round_trips_byte_exact(open_conn: Opener) -> None:
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    await within(ch.confirm_select(), 10)
    body = os.urandom(64 * 1024 * 1024)
    digest = hashlib.sha256(body).digest()
    props = txpika.BasicProperties(message_id="big", headers={"sha256": digest.hex()})
    await within(ch.basic_publish("", q, body, props), 60)
    consumer = await within(ch.basic_consume(q), 10)
    msg = await within(consumer.get(), 60)
    assert len(msg.body) == len(body)
    assert hashlib.sha256(msg.body).digest() == digest
    assert msg.body == body
    assert msg.properties.message_id == "big"
    assert msg.properties.headers["sha256"] in (digest.hex(), digest.hex().encode())
    await within(msg.ack(), 10)
    await within(consumer.cancel(), 10)


@pytest_twisted.ensureDeferred
async def test_tcp_transport_reads_more_at_once_only_while_reads_fill_it(
    open_conn: Opener,
) -> None:
    """A large message: after a read that filled Twisted's 64 KiB, the protocol reads on
    from the socket (its public ISystemHandle) in larger pieces; small messages never do.
    Twisted's own read size and send limit are left alone."""
    from twisted.internet import tcp

    conn = await open_conn()
    transport = conn.transport
    fed: list[int] = []
    receive = conn._core.receive_data

    def recording(data: Any) -> None:
        fed.append(len(data))
        receive(data)

    conn._core.receive_data = recording  # type: ignore[method-assign]
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    await within(ch.confirm_select(), 10)
    await within(ch.basic_publish("", q, b"L" * (4 * 1024 * 1024)), 20)
    msg = await within(ch.basic_get(q, auto_ack=True), 20)
    assert msg is not None and len(msg.body) == 4 * 1024 * 1024
    assert max(fed) > 65536  # it read on, in pieces larger than Twisted's
    fed.clear()
    await within(ch.basic_publish("", q, b"small"), 10)
    assert (await within(ch.basic_get(q, auto_ack=True), 10)).body == b"small"  # type: ignore[union-attr]
    assert fed and max(fed) < 65536
    assert transport.bufferSize == tcp.Client.bufferSize == 65536
    assert transport.SEND_LIMIT == tcp.Client.SEND_LIMIT == 131072


@pytest_twisted.ensureDeferred
async def test_writes_go_straight_to_an_idle_socket(open_conn: Opener) -> None:
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    transport = conn.transport
    buffered: list[bytes] = []
    write = transport.write

    def counting(data: bytes) -> None:
        buffered.append(data)
        write(data)

    transport.write = counting
    # Request/response: each request finds the transport empty and is sent at once, not
    # buffered for the reactor's next turn.
    for _ in range(20):
        ok = await within(ch.queue_declare("", exclusive=True), 10)
        assert ok.queue.startswith("amq.gen-")
    q = await fresh_queue(ch)
    await within(ch.confirm_select(), 10)
    for i in range(50):
        await within(ch.basic_publish("", q, b"%d" % i), 10)  # fires on the broker's ack
    assert buffered == []
    declared = await within(ch.queue_declare(q, passive=True), 10)
    assert declared.message_count == 50


@pytest_twisted.ensureDeferred
async def test_transport_back_pressure_makes_publishes_wait(open_conn: Opener) -> None:
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    # A small kernel send buffer: writes that go straight to the socket when the transport
    # is empty (AMQPProtocol._write) soon find it full, and the transport buffers the rest.
    conn.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
    big = ch.basic_publish("", q, b"B" * (4 * 1024 * 1024))  # over the transport's buffer
    # Accepted while the transport was below its high-water mark, it fires at once; its
    # first batches fill the transport, which pushes back: the rest of it, and what
    # follows, wait.
    assert big.called
    assert conn._outbox.paused
    small = [Tracked(ch.basic_publish("", q, b"%d" % i)) for i in range(10)]
    assert [t.fired for t in small] == [0] * 10
    await within(big, 10)
    await within(gatherResults([t.deferred for t in small]), 10)
    assert [t.error for t in small] == [None] * 10
    consumer = await within(ch.basic_consume(q, auto_ack=True), 10)
    bodies = [(await within(consumer.get(), 10)).body for _ in range(11)]
    assert bodies[0] == b"B" * (4 * 1024 * 1024)
    assert bodies[1:] == [b"%d" % i for i in range(10)]  # in order


@pytest_twisted.ensureDeferred
async def test_10000_pipelined_confirmed_publishes(open_conn: Opener) -> None:
    n = 10_000
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    await within(ch.confirm_select(), 10)
    fired = [0] * n
    failed: list[Any] = []

    def count(result: Any, i: int) -> None:
        fired[i] += 1

    def record(failure: Any, i: int) -> None:
        fired[i] += 1
        failed.append((i, failure))

    ds = []
    for i in range(n):
        d = ch.basic_publish("", q, b"%d" % i)
        d.addCallbacks(count, record, callbackArgs=(i,), errbackArgs=(i,))
        ds.append(d)
    await within(gatherResults(ds), 30)
    assert not failed
    assert fired == [1] * n
    assert (await within(ch.queue_declare(q, passive=True), 10)).message_count == n

    # Consume them all back, in order.
    await within(ch.basic_qos(prefetch_count=500), 10)
    consumer = await within(ch.basic_consume(q), 10)
    seen = 0
    async for msg in consumer:
        assert msg.body == b"%d" % seen
        seen += 1
        if seen % 250 == 0 or seen == n:
            await msg.ack(multiple=True)
        if seen == n:
            break
    assert seen == n
    await within(consumer.cancel(), 10)
    assert (await within(ch.queue_declare(q, passive=True), 10)).message_count == 0
    await sleep(0.2)
    assert fired == [1] * n  # nothing fired twice later


@pytest_twisted.ensureDeferred
async def test_mandatory_unroutable_publishes_fail_with_unroutable_error(
        open_conn: Opener) -> None:
    conn = await open_conn()
    returned: list[Message] = []
    conn.add_return_listener(returned.append)
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    nowhere = unique("nowhere")
    await within(ch.confirm_select(), 10)
    kinds: list[str] = []
    ds = []
    for i in range(300):
        kind = ("routable", "unroutable", "unroutable-not-mandatory")[i % 3 if i % 5 else 1]
        kinds.append(kind)
        key = q if kind == "routable" else nowhere
        mandatory = kind != "unroutable-not-mandatory"
        ds.append(ch.basic_publish("", key, b"%d" % i, mandatory=mandatory))
    results = await within(DeferredList(ds, consumeErrors=True), 20)
    for i, ((ok, value), kind) in enumerate(zip(results, kinds, strict=True)):
        if kind == "unroutable":
            assert not ok, i
            err = value.value
            assert isinstance(err, UnroutableError), err
            assert err.reply_code == 312
            assert err.message.body == b"%d" % i
            assert err.message.routing_key == nowhere
            assert err.message.reply_code == 312
            assert isinstance(await failure_of(err.message.ack()), UsageError)
        else:
            assert ok, (i, value)
    routable = kinds.count("routable")
    assert (await within(ch.queue_declare(q, passive=True), 10)).message_count == routable
    assert returned == []  # returns of confirmed publishes go to their Deferred only
    # Outside confirm mode a return goes to the connection's return listeners.
    plain = await within(conn.channel(), 10)
    await within(plain.basic_publish("", nowhere, b"to the listener", mandatory=True), 10)
    await within(plain.basic_qos(1), 10)  # a round trip: the return came before qos-ok
    assert [m.body for m in returned] == [b"to the listener"]
    assert returned[0].reply_code == 312


@pytest_twisted.ensureDeferred
async def test_100_channels_on_one_connection(open_conn: Opener) -> None:
    conn = await open_conn()

    async def work(i: int) -> int:
        ch = await conn.channel()
        q = await fresh_queue(ch)
        await ch.basic_publish("", q, b"channel %d" % i)
        msg = await ch.basic_get(q)
        assert msg is not None and msg.body == b"channel %d" % i
        await msg.ack()
        number = ch.channel_number
        assert msg.channel is ch
        await ch.close()
        return number

    numbers = await within(gatherResults([ensureDeferred(work(i)) for i in range(100)]), 30)
    assert len(set(numbers)) == 100


# -- consumers -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_push_consumer_with_coroutine_callback_acking(open_conn: Opener) -> None:
    n = 50
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    await within(ch.basic_qos(prefetch_count=10), 10)
    received: list[bytes] = []
    all_in: Deferred[None] = Deferred()

    async def on_message(msg: Message) -> None:
        await sleep(0)  # really asynchronous
        received.append(msg.body)
        await msg.ack()
        if len(received) == n:
            all_in.callback(None)

    consumer = await within(ch.basic_consume(q, on_message), 10)
    pub = await within(conn.channel(), 10)
    for i in range(n):
        await within(pub.basic_publish("", q, b"%d" % i), 10)
    await within(all_in, 15)
    assert received == [b"%d" % i for i in range(n)]
    await within(consumer.cancel(), 10)
    await within(ch.close(), 10)  # unacked messages would be requeued now
    assert (await within(pub.queue_declare(q, passive=True), 10)).message_count == 0


@pytest.fixture
def logged_failures() -> Any:
    """Failures logged through Twisted's global log publisher while the test runs."""
    from twisted.logger import globalLogPublisher

    failures: list[Any] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None:
            failures.append(event["log_failure"])

    globalLogPublisher.addObserver(observer)
    yield failures
    globalLogPublisher.removeObserver(observer)


@pytest_twisted.ensureDeferred
async def test_push_consumer_callback_failures_are_logged_and_consuming_goes_on(
        open_conn: Opener, logged_failures: list[Any]) -> None:
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    seen: list[bytes] = []
    done: Deferred[None] = Deferred()

    async def on_message(msg: Message) -> None:
        seen.append(msg.body)
        await msg.ack()
        if len(seen) == 3:
            reactor.callLater(0, done.callback, None)
        raise RuntimeError("callback failure (expected by the test)")

    await within(ch.basic_consume(q, on_message), 10)
    for body in (b"1", b"2", b"3"):
        await within(ch.basic_publish("", q, body), 10)
    await within(done, 10)
    assert seen == [b"1", b"2", b"3"] and ch.is_open
    ours = [f for f in logged_failures if f.check(RuntimeError)]
    assert len(ours) == 3
    for f in ours:
        f.cleanFailure()


@pytest_twisted.ensureDeferred
async def test_pull_consumer_with_async_for(open_conn: Opener) -> None:
    n = 20
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    for i in range(n):
        await within(ch.basic_publish("", q, b"%d" % i), 10)
    consumer = await within(ch.basic_consume(q), 10)
    bodies = []

    async def drain() -> None:
        async for msg in consumer:
            bodies.append(msg.body)
            assert msg.consumer_tag == consumer.consumer_tag
            await msg.ack()
            if len(bodies) == n:
                break

    await within(ensureDeferred(drain()), 15)
    assert bodies == [b"%d" % i for i in range(n)]
    # After a cancel by this client, async for ends normally; get() fails.
    await within(consumer.cancel(), 10)
    leftovers = [m async for m in consumer]
    assert leftovers == []
    exc = await failure_of(consumer.get(), 1)
    assert isinstance(exc, ConsumerCancelled)
    assert isinstance(consumer.end_reason, ConsumerCancelled)


@pytest_twisted.ensureDeferred
async def test_broker_cancel_ends_the_consumer_with_consumer_cancelled(
        open_conn: Opener) -> None:
    conn = await open_conn()
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    consumer = await within(ch.basic_consume(q), 10)
    pending = consumer.get()
    ended = consumer.when_closed()
    other = await within(conn.channel(), 10)
    await within(other.queue_delete(q), 10)
    exc = await failure_of(pending, 10)
    assert isinstance(exc, ConsumerCancelled) and exc.consumer_tag == consumer.consumer_tag
    await within(ended, 1)
    assert not consumer.active and isinstance(consumer.end_reason, ConsumerCancelled)

    async def iterate() -> None:
        async for _ in consumer:
            pytest.fail("no message expected")

    exc = await failure_of(ensureDeferred(iterate()), 1)
    assert isinstance(exc, ConsumerCancelled)
    assert ch.is_open  # only the consumer ended
    await within(ch.basic_qos(1), 10)


@pytest_twisted.ensureDeferred
async def test_direct_reply_to_rpc_round_trip(open_conn: Opener) -> None:
    server_conn = await open_conn()
    client_conn = await open_conn()
    server = await within(server_conn.channel(), 10)
    rpc_queue = await fresh_queue(server)

    async def serve(msg: Message) -> None:
        assert msg.properties.reply_to and msg.properties.reply_to.startswith(
            "amq.rabbitmq.reply-to")
        props = txpika.BasicProperties(correlation_id=msg.properties.correlation_id)
        await server.basic_publish("", msg.properties.reply_to, msg.body.upper(), props)
        await msg.ack()

    await within(server.basic_consume(rpc_queue, serve), 10)

    client = await within(client_conn.channel(), 10)
    replies = await within(client.basic_consume("amq.rabbitmq.reply-to", auto_ack=True), 10)
    for i in range(3):
        corr = uuid.uuid4().hex
        props = txpika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id=corr)
        await within(client.basic_publish("", rpc_queue, b"request %d" % i, props), 10)
        reply = await within(replies.get(), 10)
        assert reply.body == b"REQUEST %d" % i
        assert reply.properties.correlation_id == corr
        assert reply.settled  # auto_ack
    await within(replies.cancel(), 10)


# -- heartbeats ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_negotiated_heartbeats_keep_an_idle_connection_open(
        broker_url: str, open_conn: Opener) -> None:
    conn = await open_conn(with_query(broker_url, "heartbeat=2"))
    assert conn._core.heartbeat == 2
    ended: list[BaseException] = []
    conn.when_closed().addCallback(ended.append)
    await sleep(5.0)  # > 2 heartbeat intervals of silence from the application
    assert ended == [] and conn.is_open
    await check_usable(conn)


@pytest_twisted.ensureDeferred
async def test_paused_reading_does_not_trip_the_heartbeat_timeout(
        broker_url: str, open_conn: Opener) -> None:
    # A pull consumer whose buffer is full stops reading from the socket, so the broker's
    # heartbeats wait unread in the kernel: that silence is ours, not a dead peer's.
    conn = await open_conn(with_query(broker_url, "heartbeat=1"))
    ch = await within(conn.channel(), 10)
    q = await fresh_queue(ch)
    await within(ch.confirm_select(), 10)
    n = 300
    await within(gatherResults([ch.basic_publish("", q, b"%d" % i) for i in range(n)]), 10)
    consumer = await within(ch.basic_consume(q, auto_ack=True, max_buffer=10), 10)
    ended: list[BaseException] = []
    conn.when_closed().addCallback(ended.append)
    await sleep(3.5)  # the application is busy: more than two heartbeat intervals
    assert ended == [] and conn.is_open
    bodies = [(await within(consumer.get(), 10)).body for _ in range(n)]
    assert bodies == [b"%d" % i for i in range(n)]
    await check_usable(conn)

