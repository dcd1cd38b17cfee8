"""The sans-IO core against the real RabbitMQ, driven over a plain socket (`sockdriver`).

Every test talks to the shared broker from the ``broker_url`` fixture, so entities are
exclusive or auto-delete and named with a uuid. Tests that apply to both dialects run for
AMQP 0-9-1 and 0-8. Forced closes by the broker (``rabbitmqctl close_connection``) and
``channel.flow`` (RabbitMQ never sends it) are not tested here.
"""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from sockdriver import SockDriver

from txpika import events as ev
from txpika import spec, spec_0_8
from txpika.auth import AMQPlainCredentials, PlainCredentials
from txpika.connection import NEED_DATA, Connection, VirtualHostAccessRefused
from txpika.errors import (
    AccessRefused,
    AuthenticationError,
    ChannelClosedByClient,
    ConnectionClosedByClient,
    NotFound,
    UsageError,
)
from txpika.frames import encode_content, encode_method

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent

DIALECTS = [pytest.param(spec, id="0-9-1"), pytest.param(spec_0_8, id="0-8")]
#: For features 0-8 does not have: run with the 0-9-1 dialect only.
ONLY_091 = pytest.mark.parametrize("m", [pytest.param(spec, id="0-9-1")])


@pytest.fixture(params=DIALECTS)
def m(request: pytest.FixtureRequest) -> ModuleType:
    """The spec module of the dialect under test."""
    return request.param


@pytest.fixture
def params(broker_url: str) -> dict[str, Any]:
    """Host, port, credentials and vhost from the broker URL."""
    url = urlsplit(broker_url)
    vhost = unquote(url.path[1:]) if len(url.path) > 1 else "/"
    return {
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 5672,
        "user": unquote(url.username or "guest"),
        "password": unquote(url.password or "guest"),
        "virtual_host": vhost,
    }


def connect(params: dict[str, Any], module: ModuleType, **kwargs: Any) -> SockDriver:
    """Connect with the dialect of ``module``; ``kwargs`` override `Connection` arguments."""
    core_kwargs: dict[str, Any] = {
        "dialect": module.DIALECT,
        "credentials": PlainCredentials(params["user"], params["password"]),
        "virtual_host": params["virtual_host"],
        "connection_name": f"txpika-test-{uuid.uuid4().hex[:8]}",
    }
    core_kwargs.update(kwargs)
    return SockDriver.connect(params["host"], params["port"], **core_kwargs)


@pytest.fixture
def conn(params: dict[str, Any], m: ModuleType):
    """An open connection in the dialect under test, closed at the end."""
    with connect(params, m) as driver:
        driver.expect(ev.ConnectionOpened)
        yield driver


def unique(prefix: str) -> str:
    return f"txpika-test-{prefix}-{uuid.uuid4().hex}"


def temp_queue(d: SockDriver, m: ModuleType, ch: int) -> str:
    """Declare a server-named exclusive queue; return its name."""
    return d.call(ch, m.Queue.Declare(queue="", exclusive=True)).queue


def get(d: SockDriver, m: ModuleType, ch: int, queue: str, no_ack: bool = False) -> Any:
    """basic.get: the `events.MessageReceived`, or ``None`` for get-empty."""
    reply = d.call(ch, m.Basic.Get(queue=queue, no_ack=no_ack))
    return reply if isinstance(reply, ev.MessageReceived) else None


def count(d: SockDriver, m: ModuleType, ch: int, queue: str) -> int:
    """Messages ready in ``queue`` (passive declare).

    Only exact once the broker confirmed the publishes: RabbitMQ answers the queue's
    statistics ahead of deliveries still in its mailbox, so right after a plain publish
    this may be low. Use `get` for that.
    """
    return d.call(ch, m.Queue.Declare(queue=queue, passive=True)).message_count


def deliveries(d: SockDriver, ch: int, n: int, timeout: float = 10.0) -> list[Any]:
    """Wait for ``n`` ``basic.deliver`` messages on ``ch``; return them in order."""
    return [d.run_until(lambda e: isinstance(e, ev.MessageReceived) and e.channel == ch
                        and e.method.NAME == "basic.deliver", timeout) for _ in range(n)]


# -- connection ---------------------------------------------------------------------------


def test_handshake(params: dict[str, Any], m: ModuleType) -> None:
    with connect(params, m) as d:
        opened = d.expect(ev.ConnectionOpened)
        assert d.core.is_open
        assert opened.server_properties["product"] == "RabbitMQ"
        # The core asks for 131072 / 2047 / 60 s and takes the broker's lower limits.
        assert 4096 <= opened.frame_max == d.core.frame_max <= 131072
        assert 0 < opened.channel_max == d.core.channel_max <= 2047
        assert 0 < opened.heartbeat == d.core.heartbeat <= 60
        closed = d.close()
    assert isinstance(closed.error, ConnectionClosedByClient)
    assert closed.error.reply_code == 200
    assert d.finished
    assert [type(e) for e in d.events] == [ev.ConnectionOpened, ev.ConnectionClosed]


def test_bad_password(params: dict[str, Any], m: ModuleType) -> None:
    # 0-9-1 has authentication_failure_close: RabbitMQ sends connection.close 403. In 0-8 it
    # just drops the socket (after a 3 s delay), which the core reports the same way.
    with connect(params, m, credentials=PlainCredentials(params["user"], "wrong")) as d:
        closed = d.expect(ev.ConnectionClosed)
        assert isinstance(closed.error, AuthenticationError)
        assert closed.error.reply_code == 403
        assert "wrong" not in str(closed.error)
        assert not d.core.is_open
        assert [type(e) for e in d.events] == [ev.ConnectionClosed]


def test_unknown_vhost(params: dict[str, Any], m: ModuleType) -> None:
    with connect(params, m, virtual_host=unique("no-such-vhost")) as d:
        closed = d.expect(ev.ConnectionClosed)
        assert isinstance(closed.error, AccessRefused)
        assert isinstance(closed.error, VirtualHostAccessRefused)
        assert closed.error.reply_code == 530
        with pytest.raises(AccessRefused):
            d.core.open_channel()


def test_amqplain_login(params: dict[str, Any], m: ModuleType) -> None:
    creds = AMQPlainCredentials(params["user"], params["password"])
    with connect(params, m, credentials=creds) as d:
        d.expect(ev.ConnectionOpened)
        ch = d.open_channel()
        assert temp_queue(d, m, ch).startswith("amq.gen-")


def test_heartbeats_keep_an_idle_connection_open(params: dict[str, Any],
                                                 m: ModuleType) -> None:
    # RabbitMQ drops a client that sends nothing for about 3 s at heartbeat=1 (measured), and
    # the core gives up on a broker silent for 2 s: 3.5 s of idling proves both directions.
    with connect(params, m, heartbeat=1) as d:
        assert d.expect(ev.ConnectionOpened).heartbeat == 1
        received = d.bytes_received
        d.run_for(3.5)
        assert not d.finished, d.events
        assert d.core.is_open
        assert d.heartbeats_sent >= 3
        assert d.bytes_received - received >= 3 * 8  # the broker's heartbeat frames
        assert d.events[1:] == []
        ch = d.open_channel()
        temp_queue(d, m, ch)
        assert isinstance(d.close().error, ConnectionClosedByClient)


# -- queues and exchanges -------------------------------------------------------------------


def test_queue_declare_bind_unbind_purge_delete(conn: SockDriver, m: ModuleType) -> None:
    d = conn
    ch = d.open_channel()
    exchange = unique("direct")
    d.call(ch, m.Exchange.Declare(exchange=exchange, type="direct", auto_delete=True))
    # A second binding keeps the auto-delete exchange alive through the unbind below; the
    # exclusive queues go when the connection closes, and the exchange with them.
    d.call(ch, m.Queue.Bind(queue=temp_queue(d, m, ch), exchange=exchange, routing_key="x"))
    ok = d.call(ch, m.Queue.Declare(queue="", exclusive=True))
    queue = ok.queue
    assert queue.startswith("amq.gen-")
    assert (ok.message_count, ok.consumer_count) == (0, 0)
    d.call(ch, m.Queue.Bind(queue=queue, exchange=exchange, routing_key="rk"))
    for i in range(3):
        d.publish(ch, exchange, "rk", b"m%d" % i)
    d.publish(ch, exchange, "other-key", b"dropped")
    assert d.call(ch, m.Queue.Purge(queue=queue)).message_count == 3
    d.call(ch, m.Queue.Unbind(queue=queue, exchange=exchange, routing_key="rk"))
    d.publish(ch, exchange, "rk", b"dropped after unbind")
    assert get(d, m, ch, queue) is None
    assert d.call(ch, m.Queue.Delete(queue=queue)).message_count == 0
    d.call(ch, m.Exchange.Delete(exchange=exchange))
    with pytest.raises(NotFound):
        d.call(ch, m.Queue.Declare(queue=queue, passive=True))


def test_exchange_declare_delete(conn: SockDriver, m: ModuleType) -> None:
    d = conn
    ch = d.open_channel()
    exchange = unique("fanout")
    d.call(ch, m.Exchange.Declare(exchange=exchange, type="fanout", auto_delete=True))
    d.call(ch, m.Exchange.Declare(exchange=exchange, type="fanout", auto_delete=True,
                                  passive=True))
    queue = temp_queue(d, m, ch)
    d.call(ch, m.Queue.Bind(queue=queue, exchange=exchange, routing_key=""))
    d.publish(ch, exchange, "any", b"fanned out")
    assert get(d, m, ch, queue, no_ack=True).body == b"fanned out"
    d.call(ch, m.Exchange.Delete(exchange=exchange))
    with pytest.raises(NotFound):
        d.call(ch, m.Exchange.Declare(exchange=exchange, type="fanout", passive=True))


@ONLY_091  # exchange-to-exchange bindings are 0-9-1 only
def test_exchange_bind_unbind(conn: SockDriver) -> None:
    m = spec
    d = conn
    ch = d.open_channel()
    source, destination = unique("src"), unique("dst")
    d.call(ch, m.Exchange.Declare(exchange=source, type="direct", auto_delete=True))
    d.call(ch, m.Exchange.Declare(exchange=destination, type="fanout", auto_delete=True))
    queue = temp_queue(d, m, ch)
    d.call(ch, m.Queue.Bind(queue=queue, exchange=destination))
    # Keeps the auto-delete source alive through the unbind below.
    d.call(ch, m.Queue.Bind(queue=temp_queue(d, m, ch), exchange=source, routing_key="x"))
    d.call(ch, m.Exchange.Bind(destination=destination, source=source, routing_key="k"))
    d.publish(ch, source, "k", b"via e2e")
    d.publish(ch, source, "not-k", b"not routed")
    assert get(d, m, ch, queue, no_ack=True).body == b"via e2e"
    assert get(d, m, ch, queue) is None
    d.call(ch, m.Exchange.Unbind(destination=destination, source=source, routing_key="k"))
    d.publish(ch, source, "k", b"after unbind")
    assert get(d, m, ch, queue) is None
    d.call(ch, m.Exchange.Delete(exchange=source))
    d.call(ch, m.Exchange.Delete(exchange=destination))


# -- messages ---------------------------------------------------------------------------------


def full_properties(m: ModuleType, user: str) -> Any:
    stamp = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    headers = {
        "str": "text \u00fc\u20ac",
        "empty": "",
        "int": 42,
        "negative": -7,
        "int64": 2**40,
        "true": True,
        "false": False,
        "bytes": b"\x00\xff raw",
        "decimal": Decimal("3.14"),
        "negative decimal": Decimal("-0.005"),
        "timestamp": stamp,
        "float": 1.5,
        "void": None,
        "nested": {"inner": {"deep": [1, "two", {"three": 3}]}, "flag": True},
        "array": [1, "a", b"b", Decimal("-0.5"), [True, False], {"k": "v"}, stamp, []],
        "empty table": {},
    }
    return m.BasicProperties(
        content_type="application/x-txpika-test",
        content_encoding="identity",
        headers=headers,
        delivery_mode=2,
        priority=7,
        correlation_id="corr-\u00e9",
        reply_to="reply.to.queue",
        expiration="60000",
        message_id=str(uuid.uuid4()),
        timestamp=stamp,
        type="txpika.test",
        user_id=user,  # RabbitMQ refuses a user_id other than the login user
        app_id="txpika-tests",
        cluster_id="cluster-id",
    )


def test_properties_round_trip(conn: SockDriver, m: ModuleType,
                               params: dict[str, Any]) -> None:
    d = conn
    ch = d.open_channel()
    queue = temp_queue(d, m, ch)
    props = full_properties(m, params["user"])
    names = [f.name for f in dataclasses.fields(props)]
    assert len(names) == 14
    assert all(getattr(props, name) is not None for name in names)
    body = bytes(range(256))
    d.publish(ch, "", queue, body, props)
    got = get(d, m, ch, queue)
    assert got.body == body
    assert got.properties == props
    assert got.properties.headers == props.headers
    assert type(got.properties.headers["decimal"]) is Decimal
    assert got.method.redelivered is False
    assert got.method.routing_key == queue
    assert got.method.message_count == 0
    d.core.basic_ack(ch, got.method.delivery_tag)
    # Empty properties and an empty body come back empty too.
    d.publish(ch, "", queue, b"")
    got = get(d, m, ch, queue, no_ack=True)
    assert got.body == b""
    assert got.properties == m.BasicProperties()


def test_consume_deliver_ack(conn: SockDriver, m: ModuleType) -> None:
    d = conn
    ch = d.open_channel()
    queue = temp_queue(d, m, ch)
    tag = d.call(ch, m.Basic.Consume(queue=queue, consumer_tag="c1")).consumer_tag
    assert tag == "c1"
    props = m.BasicProperties(content_type="text/plain", headers={"n": 1})
    for i in range(5):
        d.publish(ch, "", queue, b"msg %d" % i, props)
    got = deliveries(d, ch, 5)
    assert [g.body for g in got] == [b"msg %d" % i for i in range(5)]
    assert all(g.method.consumer_tag == "c1" and not g.method.redelivered for g in got)
    assert all(g.properties == props for g in got)
    for g in got:
        assert d.core.awaiting_ack(ch, g.method.delivery_tag)
        d.core.basic_ack(ch, g.method.delivery_tag)
        assert not d.core.awaiting_ack(ch, g.method.delivery_tag)
    with pytest.raises(UsageError):
        d.core.basic_ack(ch, got[0].method.delivery_tag)  # twice: refused locally
    assert d.call(ch, m.Basic.Cancel(consumer_tag="c1")).consumer_tag == "c1"
    d.core.close_channel(ch)
    closed = d.expect(ev.ChannelClosed, channel=ch)
    assert isinstance(closed.error, ChannelClosedByClient)
    # Acked means gone: nothing was requeued when the channel closed.
    ch2 = d.open_channel()
    assert get(d, m, ch2, queue) is None


def test_auto_ack_consume(conn: SockDriver, m: ModuleType) -> None:
    d = conn
    ch = d.open_channel()
    queue = temp_queue(d, m, ch)
    ok = d.call(ch, m.Basic.Consume(queue=queue, no_ack=True))
    assert ok.consumer_tag.startswith("amq.ctag-")
    for i in range(3):
        d.publish(ch, "", queue, b"auto %d" % i)
    got = deliveries(d, ch, 3)
    assert [g.body for g in got] == [b"auto 0", b"auto 1", b"auto 2"]
    for g in got:
        assert not d.core.awaiting_ack(ch, g.method.delivery_tag)
        with pytest.raises(UsageError):
            d.core.basic_ack(ch, g.method.delivery_tag)
    d.call(ch, m.Basic.Cancel(consumer_tag=ok.consumer_tag))
    assert get(d, m, ch, queue) is None


def test_basic_qos(conn: SockDriver, m: ModuleType) -> None:
    d = conn
    ch = d.open_channel()
    queue = temp_queue(d, m, ch)
    d.call(ch, m.Basic.Qos(prefetch_count=1))
    d.call(ch, m.Basic.Consume(queue=queue, consumer_tag="q"))
    for i in range(3):
        d.publish(ch, "", queue, b"%d" % i)
    for i in range(3):
        (first,) = deliveries(d, ch, 1)
        assert first.body == b"%d" % i
        d.run_for(0.2)  # prefetch 1: nothing more comes until the ack
        assert not any(isinstance(e, ev.MessageReceived) for e in d.pending)
        d.core.basic_ack(ch, first.method.delivery_tag)


def test_reject_and_nack_requeue(conn: SockDriver, m: ModuleType) -> None:
    d = conn
    ch = d.open_channel()
    queue = temp_queue(d, m, ch)
    d.publish(ch, "", queue, b"bounce")
    first = get(d, m, ch, queue)
    assert first.method.redelivered is False
    d.core.basic_reject(ch, first.method.delivery_tag, requeue=True)
    with pytest.raises(UsageError):
        d.core.basic_reject(ch, first.method.delivery_tag)
    again = get(d, m, ch, queue)
    assert again.body == b"bounce"
    assert again.method.redelivered is True
    if m is spec:
        d.core.basic_nack(ch, again.method.delivery_tag, requeue=True)
        again = get(d, m, ch, queue)
        assert again.method.redelivered is True
    else:
        with pytest.raises(UsageError):
            d.core.basic_nack(ch, again.method.delivery_tag)
    d.core.basic_reject(ch, again.method.delivery_tag, requeue=False)
    assert get(d, m, ch, queue) is None


def test_basic_recover(conn: SockDriver, m: ModuleType) -> None:
    d = conn
    ch = d.open_channel()
    queue = temp_queue(d, m, ch)
    d.call(ch, m.Basic.Consume(queue=queue, consumer_tag="r"))
    for i in range(3):
        d.publish(ch, "", queue, b"r%d" % i)
    first = deliveries(d, ch, 3)
    assert not any(g.method.redelivered for g in first)
    d.call(ch, m.Basic.Recover(requeue=True))
    again = deliveries(d, ch, 3)
    assert sorted(g.body for g in again) == [b"r0", b"r1", b"r2"]
    assert all(g.method.redelivered for g in again)
    for g in again:
        d.core.basic_ack(ch, g.method.delivery_tag)
    d.call(ch, m.Basic.Cancel(consumer_tag="r"))
    assert get(d, m, ch, queue) is None


@ONLY_091  # consumer_cancel_notify is a 0-9-1 capability
def test_server_cancels_consumer_when_queue_deleted(conn: SockDriver) -> None:
    m = spec
    d = conn
    ch, other = d.open_channel(), d.open_channel()
    queue = temp_queue(d, m, ch)
    d.call(ch, m.Basic.Consume(queue=queue, consumer_tag="doomed"))
    d.call(other, m.Queue.Delete(queue=queue))
    cancel = d.run_until(lambda e: isinstance(e, ev.MethodReceived) and e.channel == ch)
    assert isinstance(cancel.method, m.Basic.Cancel)
    assert cancel.method.consumer_tag == "doomed"
    # The channel is still usable.
    d.call(ch, m.Basic.Qos(prefetch_count=5))
    assert temp_queue(d, m, ch)


def test_tx_select_commit_rollback(conn: SockDriver, m: ModuleType) -> None:
    d = conn
    ch = d.open_channel()
    queue = temp_queue(d, m, ch)
    d.call(ch, m.Tx.Select())
    d.publish(ch, "", queue, b"rolled back")
    d.call(ch, m.Tx.Rollback())
    assert get(d, m, ch, queue) is None
    d.publish(ch, "", queue, b"committed")
    d.call(ch, m.Tx.Commit())
    got = get(d, m, ch, queue)
    assert got.body == b"committed"
    d.core.basic_ack(ch, got.method.delivery_tag)
    d.call(ch, m.Tx.Commit())
    assert get(d, m, ch, queue) is None


# -- confirms -----------------------------------------------------------------------------------


@ONLY_091  # publisher confirms are 0-9-1 only
def test_confirms_every_tag_acked_exactly_once(conn: SockDriver) -> None:
    m = spec
    d = conn
    ch = d.open_channel()
    queue = temp_queue(d, m, ch)
    d.call(ch, m.Confirm.Select())
    assert d.core.in_confirm_mode(ch)
    n = 1000
    tags = [d.publish(ch, "", queue, b"%d" % i) for i in range(n)]
    assert tags == list(range(1, n + 1))
    acked: list[int] = []

    def all_acked() -> bool:
        acked.extend(t for e in d.take(ev.PublishAcked) for t in e.delivery_tags)
        return len(acked) >= n

    d.wait_for(all_acked, 10.0, "1000 publisher confirms")
    assert sorted(acked) == tags
    assert len(set(acked)) == n
    assert not any(isinstance(e, ev.PublishNacked | ev.PublishReturned) for e in d.events)
    assert count(d, m, ch, queue) == n
    assert not any(isinstance(e, ev.PublishAcked) for e in d.pending)


@ONLY_091
def test_confirms_mandatory_unroutable_returned(conn: SockDriver) -> None:
    m = spec
    d = conn
    ch = d.open_channel()
    queue = temp_queue(d, m, ch)
    nowhere = unique("unroutable")
    d.call(ch, m.Confirm.Select())
    n = 300
    unroutable: set[int] = set()
    routable: set[int] = set()
    for i in range(n):
        lost = i % 3 == 2
        key = nowhere if lost else queue
        tag = d.publish(ch, "", key, b"%d" % (i + 1), mandatory=True)
        assert tag == i + 1
        (unroutable if lost else routable).add(tag)
    acked: list[int] = []
    returned: list[Any] = []

    def settled() -> bool:
        acked.extend(t for e in d.take(ev.PublishAcked) for t in e.delivery_tags)
        returned.extend(d.take(ev.PublishReturned))
        return len(acked) + len(returned) >= n

    d.wait_for(settled, 10.0, f"{n} confirms")
    assert sorted(acked) == sorted(routable)
    assert sorted(r.delivery_tag for r in returned) == sorted(unroutable)
    for r in returned:
        assert r.channel == ch
        assert r.body == b"%d" % r.delivery_tag  # the tag is the one that message had
        assert r.method.reply_code == 312
        assert r.method.routing_key == nowhere
    assert not any(isinstance(e, ev.PublishNacked | ev.MessageReceived) for e in d.events)
    assert count(d, m, ch, queue) == len(routable)


def _replay_core() -> Any:
    """A 0-9-1 core, open, with channel 1 in confirm mode, fed by hand (no socket)."""
    core = Connection()
    core.initiate()

    def feed(*frames: Any) -> None:
        for frame in frames:
            core.receive_data(b"".join(frame) if isinstance(frame, list) else frame)

    def settle(*frames: Any) -> None:
        feed(*frames)
        while core.next_event() is not NEED_DATA:
            pass

    settle(encode_method(0, spec.Connection.Start(server_properties={})),
         encode_method(0, spec.Connection.Tune(2047, 131072, 0)),
         encode_method(0, spec.Connection.OpenOk()))
    assert core.is_open
    core.open_channel(1)
    settle(encode_method(1, spec.Channel.OpenOk()))
    core.send_method(1, spec.Confirm.Select())
    settle(encode_method(1, spec.Confirm.SelectOk()))
    assert core.in_confirm_mode(1)
    core.data_to_send()
    return core, feed


def test_return_whose_ack_comes_after_another_ack() -> None:
    """Replays what RabbitMQ 3.10.8 sent in the test above when it failed.

    RabbitMQ acks an unroutable publish from the channel at once but a routed one only when
    the queue confirms it, so acks arrive out of order: after the basic.return for publish 2
    the next ack can be for publish 1 (queue confirm) and publish 2's own ack comes later.
    Seen on the wire: ``return(18) ack(16, multiple) ack(18) ack(17)``.
    """
    core, feed = _replay_core()
    props = spec.BasicProperties()
    assert core.basic_publish(1, "", "q", b"1", props, mandatory=True) == 1
    assert core.basic_publish(1, "", "nowhere", b"2", props, mandatory=True) == 2
    assert core.basic_publish(1, "", "q", b"3", props, mandatory=True) == 3
    ret = spec.Basic.Return(312, "NO_ROUTE", "", "nowhere")
    feed(encode_content(1, ret, props, b"2", 131072),
         encode_method(1, spec.Basic.Ack(1, True)),
         encode_method(1, spec.Basic.Ack(2, False)),
         encode_method(1, spec.Basic.Ack(3, False)))
    got = []
    while (event := core.next_event()) is not NEED_DATA:
        got.append(event)
    assert [type(e) for e in got] == [ev.PublishAcked, ev.PublishReturned, ev.PublishAcked]
    assert got[0].delivery_tags == (1,)
    assert (got[1].delivery_tag, got[1].body) == (2, b"2")
    assert got[2].delivery_tags == (3,)


# -- channels -----------------------------------------------------------------------------------


def test_channel_error_leaves_other_channels_working(conn: SockDriver, m: ModuleType) -> None:
    d = conn
    ch, other = d.open_channel(), d.open_channel()
    queue = temp_queue(d, m, other)
    with pytest.raises(NotFound) as info:
        d.call(ch, m.Queue.Declare(queue=unique("missing"), passive=True))
    assert info.value.reply_code == 404
    assert d.core.channel_state(ch) is None
    assert d.core.is_open
    d.publish(other, "", queue, b"still fine")
    assert get(d, m, other, queue, no_ack=True).body == b"still fine"
    assert d.open_channel(ch) == ch  # the number can be reused
    assert get(d, m, ch, queue) is None


def test_many_channels(conn: SockDriver, m: ModuleType) -> None:
    d = conn
    n = 50
    channels = [d.core.open_channel() for _ in range(n)]
    assert sorted(channels) == list(range(1, n + 1))
    d.wait_for(lambda: sum(isinstance(e, ev.ChannelOpened) for e in d.events) == n, 10.0,
               "50 channel.open-ok")
    for ch in channels:
        d.send(ch, m.Queue.Declare(queue="", exclusive=True))
    oks = [d.run_until(lambda e, ch=ch: isinstance(e, ev.MethodReceived) and e.channel == ch)
           for ch in channels]
    names = {ok.method.queue for ok in oks}
    assert len(names) == n
    for ch in channels:
        d.publish(ch, "", oks[ch - 1].method.queue, b"on channel %d" % ch)
    for ch in channels:
        got = get(d, m, ch, oks[ch - 1].method.queue, no_ack=True)
        assert got.body == b"on channel %d" % ch
    for ch in channels:
        d.core.close_channel(ch)
    closed = [d.expect(ev.ChannelClosed, channel=ch) for ch in channels]
    assert all(isinstance(c.error, ChannelClosedByClient) for c in closed)
    assert all(d.core.channel_state(ch) is None for ch in channels)


# -- large content --------------------------------------------------------------------------------


def test_large_body_with_small_frame_max(params: dict[str, Any], m: ModuleType) -> None:
    body = random.Random(1).randbytes(5 * 1024 * 1024)
    with connect(params, m, frame_max=4096) as d:
        assert d.expect(ev.ConnectionOpened).frame_max == 4096
        ch = d.open_channel()
        queue = temp_queue(d, m, ch)
        props = m.BasicProperties(content_type="application/octet-stream")
        d.publish(ch, "", queue, body, props)
        got = get(d, m, ch, queue, no_ack=True)
        assert len(got.body) == len(body)
        assert got.body == body
        assert got.properties == props
        # About 1,283 body frames of at most 4,088 octets went each way.
        assert d.bytes_received > len(body) + (len(body) // 4088) * 8
        assert isinstance(d.close().error, ConnectionClosedByClient)


# -- the example ----------------------------------------------------------------------------------


def test_sansio_socket_example(broker_url: str) -> None:
    script = ROOT / "examples" / "sansio_socket.py"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(script), broker_url],
        capture_output=True, text=True, timeout=30, env=env, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 30
    out = result.stdout
    assert "connected to RabbitMQ" in out
    assert "declared queue amq.gen-" in out
    assert "3 of 3 publishes confirmed" in out
    for i in range(3):
        assert f"got b'message {i}'" in out
    assert "closed: 200" in out
    assert result.stderr == ""
