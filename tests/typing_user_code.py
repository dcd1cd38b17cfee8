"""User-style code whose results must be typed: checked by ``mypy --strict`` in
tests/test_typing.py (never run). ``assert_type`` fails on ``Any``, so every result here is
the reply class, not ``Any``."""

from __future__ import annotations

from typing import assert_type

from twisted.internet.defer import Deferred

import txpika
from txpika import blocking, spec


async def twisted_style(reactor: object) -> None:
    conn = await txpika.connect(reactor, "amqp://guest:guest@localhost/%2F")
    assert_type(conn, txpika.AMQPProtocol)
    ch = await conn.channel()
    assert_type(ch, txpika.Channel)
    assert_type(await ch.exchange_declare("x", exchange_type="topic"), spec.Exchange.DeclareOk)
    assert_type(await ch.exchange_delete("x"), spec.Exchange.DeleteOk)
    assert_type(await ch.exchange_bind("a", "b"), spec.Exchange.BindOk)
    assert_type(await ch.exchange_unbind("a", "b"), spec.Exchange.UnbindOk)
    ok = await ch.queue_declare("q", durable=True)
    assert_type(ok, spec.Queue.DeclareOk)
    assert_type(ok.queue, str)
    assert_type(ok.message_count, int)
    assert_type(await ch.queue_bind("q", "x", "k"), spec.Queue.BindOk)
    assert_type(await ch.queue_unbind("q", "x", "k"), spec.Queue.UnbindOk)
    assert_type(await ch.queue_purge("q"), spec.Queue.PurgeOk)
    assert_type((await ch.queue_delete("q")).message_count, int)
    assert_type(await ch.basic_qos(prefetch_count=10), spec.Basic.QosOk)
    assert_type(await ch.confirm_select(), spec.Confirm.SelectOk)
    assert_type(await ch.tx_select(), spec.Tx.SelectOk)
    assert_type(await ch.tx_commit(), spec.Tx.CommitOk)
    assert_type(await ch.tx_rollback(), spec.Tx.RollbackOk)
    assert_type(await ch.basic_recover(), spec.Basic.RecoverOk)
    assert_type(await ch.flow(True), spec.Channel.FlowOk)
    assert_type(await ch.basic_publish("", "q", b"x"), None)
    got = await ch.basic_get("q")
    assert_type(got, txpika.Message | None)
    consumer = await ch.basic_consume("q")
    assert_type(consumer, txpika.Consumer)
    message = await consumer.get()
    assert_type(message, txpika.Message)
    assert_type(message.body, bytes)
    assert_type(message.delivery_tag, int)
    assert_type(message.channel, txpika.Channel | None)
    assert_type(await message.ack(), None)
    async for each in consumer:
        assert_type(each, txpika.Message)
    assert_type(await ch.basic_cancel(consumer.consumer_tag), spec.Basic.CancelOk)
    assert_type(await consumer.when_closed(), BaseException)
    assert_type(await ch.when_closed(), BaseException)
    assert_type(await conn.when_closed(), BaseException)
    assert_type(conn.ready, Deferred[txpika.AMQPProtocol])
    assert_type(await ch.close(), None)
    assert_type(await conn.close(), None)


async def service_style(reactor: object) -> None:
    service = txpika.AMQPService(reactor, "amqp://localhost/")
    assert_type(service.state, txpika.ServiceState)
    assert_type(await service.connection(), txpika.AMQPProtocol)
    robust = await service.channel()
    assert_type(robust, txpika.RobustChannel)
    assert_type(await robust.queue_declare("q"), spec.Queue.DeclareOk)
    assert_type(await robust.exchange_declare("x"), spec.Exchange.DeclareOk)
    assert_type(await robust.basic_get("q"), txpika.Message | None)
    rc = await robust.basic_consume("q")
    assert_type(rc, txpika.RobustConsumer)
    assert_type(await rc.get(), txpika.Message)
    publisher = await service.publisher(at_least_once=True)
    assert_type(publisher, txpika.Publisher)
    assert_type(await publisher.publish("", "q", b"x"), None)
    assert_type(await service.when_closed(), BaseException)


def blocking_style() -> None:
    with blocking.connect("amqp://guest:guest@localhost/%2F") as conn:
        assert_type(conn, blocking.BlockingConnection)
        ch = conn.channel()
        assert_type(ch, blocking.BlockingChannel)
        assert_type(ch.connection, blocking.BlockingConnection)
        ok = ch.queue_declare("jobs", durable=True)
        assert_type(ok, spec.Queue.DeclareOk)
        assert_type(ok.consumer_count, int)
        assert_type(ch.exchange_declare("x"), spec.Exchange.DeclareOk)
        assert_type(ch.queue_purge("jobs"), spec.Queue.PurgeOk)
        assert_type(ch.confirm_select(), spec.Confirm.SelectOk)
        assert_type(ch.basic_qos(prefetch_count=1), spec.Basic.QosOk)
        assert_type(ch.basic_publish("", "jobs", b"x"), None)
        assert_type(ch.basic_get("jobs"), blocking.Message | None)
        consumer = ch.basic_consume("jobs")
        assert_type(consumer, blocking.BlockingConsumer)
        assert_type(consumer.get(timeout=1.0), blocking.Message | None)
        assert_type(ch.basic_cancel(consumer.consumer_tag), spec.Basic.CancelOk)
        for message in ch.consume("jobs", inactivity_timeout=1.0):
            assert_type(message, blocking.Message | None)
            if message is not None:
                assert_type(message.channel, blocking.BlockingChannel | None)
                message.ack()
            break


async def asyncio_style() -> None:
    from txpika import aio

    async with await aio.connect("amqp://guest:guest@localhost/%2F") as conn:
        assert_type(conn, aio.Connection)
        ch = await conn.channel()
        assert_type(ch, aio.Channel)
        ok = await ch.queue_declare("q", durable=True)
        assert_type(ok, spec.Queue.DeclareOk)
        assert_type(ok.message_count, int)
        assert_type(await ch.queue_purge("q"), spec.Queue.PurgeOk)
        assert_type(await ch.basic_qos(prefetch_count=10), spec.Basic.QosOk)
        assert_type(await ch.confirm_select(), spec.Confirm.SelectOk)
        assert_type(await ch.basic_publish("", "q", b"x"), None)
        got = await ch.basic_get("q")
        assert_type(got, aio.Message | None)
        consumer = await ch.basic_consume("q")
        assert_type(consumer, aio.Consumer)
        message = await consumer.get()
        assert_type(message, aio.Message)
        assert_type(message.body, bytes)
        assert_type(await message.ack(), None)
        assert_type(await ch.basic_cancel(consumer.consumer_tag), spec.Basic.CancelOk)
