"""``txpika.aio`` against the real broker, on the default asyncio loop and on uvloop.

Every test runs twice (the ``run`` fixture of `test_aio_support`). Faults (memory alarms,
a cut or black-holed network, TLS) are in ``test_aio_faults.py``; fake-transport unit
tests in ``test_aio_unit.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import test_aio_support
from test_aio_support import T, counts, declare_temp, eventually, unique

from txpika import aio, spec
from txpika.errors import (
    AccessRefused,
    AuthenticationError,
    ChannelClosedByClient,
    ConnectionClosedByClient,
    ConsumerCancelled,
    NackError,
    NotFound,
    UnroutableError,
    UsageError,
)
from txpika.spec import BasicProperties

pytestmark = pytest.mark.broker
run = test_aio_support.run  # the fixture: each test on the default loop and on uvloop


async def _open(url: str, **overrides: Any) -> tuple[aio.Connection, aio.Channel]:
    conn = await aio.connect(url, **overrides)
    return conn, await conn.channel()


# -- every channel method returns its -Ok ------------------------------------------------------


def test_channel_methods_return_typed_oks(run: Any, broker_url: str) -> None:
    async def main() -> None:
        async with await aio.connect(broker_url) as conn:
            ch = await conn.channel()
            ex, ex2, q = unique("x"), unique("x2"), unique("q")
            assert isinstance(await ch.exchange_declare(ex, "fanout"),
                              spec.Exchange.DeclareOk)
            await ch.exchange_declare(ex2, "fanout")
            assert isinstance(await ch.exchange_bind(ex2, ex), spec.Exchange.BindOk)
            assert isinstance(await ch.exchange_unbind(ex2, ex), spec.Exchange.UnbindOk)
            ok = await ch.queue_declare(q, exclusive=True)
            assert isinstance(ok, spec.Queue.DeclareOk) and ok.queue == q
            assert isinstance(await ch.queue_bind(q, ex), spec.Queue.BindOk)
            assert isinstance(await ch.queue_unbind(q, ex), spec.Queue.UnbindOk)
            assert (await ch.queue_purge(q)).message_count == 0
            assert isinstance(await ch.basic_qos(prefetch_count=5), spec.Basic.QosOk)
            assert isinstance(await ch.basic_recover(), spec.Basic.RecoverOk)
            assert isinstance(await ch.flow(True), spec.Channel.FlowOk)
            assert isinstance(await ch.exchange_delete(ex2), spec.Exchange.DeleteOk)
            assert isinstance(await ch.exchange_delete(ex), spec.Exchange.DeleteOk)
            assert isinstance(await ch.queue_delete(q), spec.Queue.DeleteOk)
            tx = await conn.channel()
            assert isinstance(await tx.tx_select(), spec.Tx.SelectOk)
            tx.basic_publish("", q, b"never")
            assert isinstance(await tx.tx_rollback(), spec.Tx.RollbackOk)
            assert isinstance(await tx.tx_commit(), spec.Tx.CommitOk)
            assert isinstance(await ch.confirm_select(), spec.Confirm.SelectOk)
            assert conn.is_open and conn.dialect == "0-9-1"
            assert conn.server_properties["product"] == b"RabbitMQ" or conn.server_properties
        assert not conn.is_open

    run(main())


def test_publish_get_ack_nack_reject(run: Any, broker_url: str) -> None:
    async def main() -> None:
        async with await aio.connect(broker_url) as conn:
            ch = await conn.channel()
            queue = await declare_temp(ch)
            assert await ch.basic_get(queue) is None
            props = BasicProperties(content_type="text/plain", headers={"k": "v"})
            for body in (b"one", b"two", b"three"):
                await ch.basic_publish("", queue, body, props)
            await eventually(lambda: True)
            first = await ch.basic_get(queue, timeout=T)
            assert first is not None and first.body == b"one"
            assert first.properties.headers == {"k": "v"} and first.message_count == 2
            assert first.channel is ch
            await first.ack()
            with pytest.raises(UsageError):
                first.ack()  # twice: refused, nothing sent, the channel lives on
            second = await ch.basic_get(queue, timeout=T)
            assert second is not None and second.body == b"two"
            await second.nack(requeue=True)
            again = await ch.basic_get(queue, timeout=T)
            assert again is not None and again.body == b"two" and again.redelivered
            again.reject(requeue=False)
            third = await ch.basic_get(queue, timeout=T)
            assert third is not None and third.body == b"three"
            ch.basic_ack(third.delivery_tag)
            assert await counts(conn, queue) == (0, 0)
            assert ch.is_open

    run(main())


def test_pull_consumer_async_for_prefetch_and_cancel(run: Any, broker_url: str) -> None:
    async def main() -> None:
        async with await aio.connect(broker_url) as conn:
            ch = await conn.channel()
            queue = await declare_temp(ch)
            await ch.basic_qos(prefetch_count=10)
            await ch.confirm_select()
            await asyncio.gather(*(ch.basic_publish("", queue, b"%d" % i) for i in range(50)))
            consumer = await ch.basic_consume(queue)
            assert isinstance(consumer, aio.Consumer) and consumer.active
            got = []
            async for message in consumer:
                got.append(int(message.body))
                if len(got) == 1:
                    # prefetch 10, nothing acked yet: ten delivered, one of them read
                    await eventually(lambda: len(consumer._buffer) == 9)
                    await asyncio.sleep(0.05)
                    assert len(consumer._buffer) == 9
                message.ack()
                if len(got) == 50:
                    await consumer.cancel()
            assert got == list(range(50))
            assert not consumer.active and isinstance(consumer.end_reason, ConsumerCancelled)
            with pytest.raises(TimeoutError):
                await (await ch.basic_consume(queue)).get(timeout=0.05)
            with pytest.raises(ConsumerCancelled):
                await consumer.get()

    run(main())


def test_push_consumers_plain_and_async_callbacks(run: Any, broker_url: str) -> None:
    async def main() -> None:
        async with await aio.connect(broker_url) as conn:
            ch = await conn.channel()
            q1, q2 = await declare_temp(ch), await declare_temp(ch)
            plain: list[bytes] = []
            seen: list[bytes] = []

            def on_plain(message: aio.Message) -> None:
                plain.append(message.body)
                message.ack()

            async def on_async(message: aio.Message) -> None:
                await asyncio.sleep(0.001)
                seen.append(message.body)
                await message.ack()
                if message.body == b"boom":
                    raise RuntimeError("a failing callback is logged, nothing more")

            await ch.basic_consume(q1, on_plain)
            await ch.basic_consume(q2, on_async)
            for i in range(20):
                ch.basic_publish("", q1, b"p%d" % i)
                ch.basic_publish("", q2, b"boom" if i == 3 else b"a%d" % i)
            await eventually(lambda: len(plain) == 20 and len(seen) == 20)
            assert plain == [b"p%d" % i for i in range(20)]
            assert sorted(seen) == sorted(b"boom" if i == 3 else b"a%d" % i for i in range(20))
            await eventually(lambda: True)
            assert ch.is_open and conn.is_open

    run(main())


def test_async_callbacks_are_bounded_and_pause_reading(run: Any, broker_url: str) -> None:
    """auto_ack has no prefetch: past max_buffer running callbacks the connection stops
    reading, and starts again as they finish; every message is handled once."""
    async def main() -> None:
        async with await aio.connect(broker_url) as conn:
            ch = await conn.channel()
            queue = await declare_temp(ch)
            release = asyncio.Event()
            done: list[bytes] = []
            running = 0
            peak = 0

            async def handle(message: aio.Message) -> None:
                nonlocal running, peak
                running += 1
                peak = max(peak, running)
                await release.wait()
                running -= 1
                done.append(message.body)

            await ch.confirm_select()
            pad = b" " * 8192  # several reads' worth: pausing takes effect between reads
            await asyncio.gather(*(ch.basic_publish("", queue, b"%d" % i + pad)
                                   for i in range(300)))
            await ch.basic_consume(queue, handle, auto_ack=True, max_buffer=20)
            await eventually(lambda: conn.reading_paused)
            await asyncio.sleep(0.1)
            assert 20 < peak < 200, peak  # it stopped reading well before all 300 arrived
            release.set()
            await eventually(lambda: len(done) == 300)
            assert sorted(int(b) for b in done) == list(range(300))
            assert not conn.reading_paused

    run(main())


# -- publisher confirms ----------------------------------------------------------------------


def test_gathered_pipelined_publishes_are_each_confirmed(run: Any, broker_url: str) -> None:
    async def main() -> None:
        async with await aio.connect(broker_url) as conn:
            ch = await conn.channel()
            queue = await declare_temp(ch)
            await ch.confirm_select()
            outcomes = await asyncio.gather(
                *(ch.basic_publish("", queue, b"m%d" % i) for i in range(2000)))
            assert outcomes == [None] * 2000
            assert await counts(conn, queue) == (2000, 0)

    run(main())


def test_nack_and_unroutable(run: Any, broker_url: str) -> None:
    async def main() -> None:
        async with await aio.connect(broker_url) as conn:
            ch = await conn.channel()
            full = await declare_temp(ch, arguments={"x-max-length": 0,
                                                     "x-overflow": "reject-publish"})
            await ch.confirm_select()
            with pytest.raises(NackError):
                await ch.basic_publish("", full, b"refused")
            with pytest.raises(UnroutableError) as returned:
                await ch.basic_publish("", unique("nowhere"), b"lost", mandatory=True)
            assert returned.value.message.body == b"lost"
            assert returned.value.reply_code == 312
            await ch.basic_publish("", unique("nowhere"), b"dropped")  # not mandatory: acked
            assert ch.is_open

    run(main())


def test_return_listener_outside_confirm_mode(run: Any, broker_url: str) -> None:
    async def main() -> None:
        async with await aio.connect(broker_url) as conn:
            returned: list[aio.Message] = []
            conn.add_return_listener(returned.append)
            ch = await conn.channel()
            await ch.basic_publish("", unique("nowhere"), b"back", mandatory=True)
            await eventually(lambda: returned)
            assert returned[0].body == b"back" and returned[0].reply_code == 312
            with pytest.raises(UsageError):
                returned[0].ack()

    run(main())


# -- timeouts and cancellation -----------------------------------------------------------------


def test_tiny_timeouts_leave_the_channel_consistent(run: Any, broker_url: str) -> None:
    """Calls that time out abandon their replies: each later call gets its own."""
    async def main() -> None:
        async with await aio.connect(broker_url) as conn:
            ch = await conn.channel()
            names = [unique(f"t{i}") for i in range(100)]
            outcomes = await asyncio.gather(
                *(ch.queue_declare(n, exclusive=True, timeout=0.0005) for n in names),
                return_exceptions=True)
            assert all(o is None or isinstance(o, (TimeoutError, spec.Queue.DeclareOk))
                       for o in outcomes)
            assert any(isinstance(o, TimeoutError) for o in outcomes)
            for name in names[:10]:  # every queue was declared, and the replies match
                ok = await ch.queue_declare(name, passive=True, timeout=T)
                assert ok.queue == name

    run(main())


def test_timed_out_get_and_consume_lose_nothing(run: Any, broker_url: str) -> None:
    async def main() -> None:
        async with await aio.connect(broker_url) as conn:
            ch = await conn.channel()
            queue = await declare_temp(ch)
            await ch.confirm_select()
            await ch.basic_publish("", queue, b"kept")
            timeouts = 0
            for _ in range(20):  # (a reply may come in the very turn the timer fires)
                try:
                    got = await ch.basic_get(queue, timeout=0)
                except TimeoutError:
                    timeouts += 1
                else:
                    if got is not None:
                        await got.reject(requeue=True)
                try:
                    started = await ch.basic_consume(queue, timeout=0)
                except TimeoutError:
                    timeouts += 1
                else:
                    await started.cancel()
            assert timeouts >= 20
            # the late get-oks were requeued, the late consumers cancelled (what they were
            # sent is rejected back to the queue)
            message = None
            for _ in range(100):
                message = await ch.basic_get(queue, timeout=T)
                if message is not None:
                    break
                await asyncio.sleep(0.02)
            assert message is not None and message.body == b"kept"
            message.ack()
            await eventually_counts(conn, queue, (0, 0))

    run(main())


async def eventually_counts(conn: aio.Connection, queue: str, want: tuple[int, int]) -> None:
    for _ in range(200):
        if await counts(conn, queue) == want:
            return
        await asyncio.sleep(0.02)
    assert await counts(conn, queue) == want


def test_cancelled_calls_raise_cancelled_error_and_are_absorbed(run: Any,
                                                               broker_url: str) -> None:
    async def main() -> None:
        async with await aio.connect(broker_url) as conn:
            ch = await conn.channel()
            queue = await declare_temp(ch)
            await ch.confirm_select()
            for i in range(3):
                await ch.basic_publish("", queue, b"%d" % i)
            for call in (lambda: ch.basic_get(queue), lambda: ch.basic_consume(queue),
                         lambda: ch.queue_declare(queue, passive=True)):
                task = asyncio.ensure_future(call())
                await asyncio.sleep(0)  # the request is on its way
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            await eventually_counts(conn, queue, (3, 0))  # requeued, and no consumer left
            empty = await declare_temp(ch)
            consumer = await ch.basic_consume(empty)
            get = asyncio.ensure_future(consumer.get())
            await asyncio.sleep(0)
            get.cancel()
            with pytest.raises(asyncio.CancelledError):
                await get
            await ch.basic_publish("", empty, b"late")
            assert (await consumer.get(timeout=T)).body == b"late"
            ok = await ch.queue_declare(queue, passive=True, timeout=T)
            assert ok.queue == queue

    run(main())


# -- endings --------------------------------------------------------------------------------


def test_channel_error_closes_the_channel_only(run: Any, broker_url: str) -> None:
    async def main() -> None:
        async with await aio.connect(broker_url) as conn:
            ch = await conn.channel()
            with pytest.raises(NotFound):
                await ch.queue_declare(unique("missing"), passive=True)
            assert not ch.is_open and conn.is_open
            with pytest.raises(NotFound):
                ch.basic_publish("", "q", b"closed channel")
            assert isinstance(await ch.when_closed(), NotFound)
            other = await conn.channel()
            assert (await other.queue_declare("")).queue

    run(main())


def test_broker_cancel_ends_async_for_with_consumer_cancelled(run: Any,
                                                              broker_url: str) -> None:
    async def main() -> None:
        async with await aio.connect(broker_url) as conn:
            ch = await conn.channel()
            queue = await declare_temp(ch)
            consumer = await ch.basic_consume(queue)
            other = await conn.channel()
            await other.queue_delete(queue)
            with pytest.raises(ConsumerCancelled):
                async for _ in consumer:
                    pass

    run(main())


def test_closing_fails_pending_calls_and_ends_iteration(run: Any, broker_url: str) -> None:
    async def main() -> None:
        conn, ch = await _open(broker_url)
        queue = await declare_temp(ch)
        consumer = await ch.basic_consume(queue)
        iterating = asyncio.ensure_future(_drain(consumer))
        await asyncio.sleep(0.05)
        channel2 = await conn.channel()
        consumer2 = await channel2.basic_consume(queue)
        await channel2.close()
        with pytest.raises(ChannelClosedByClient):
            await consumer2.get()
        await channel2.close()  # twice: harmless
        await conn.close()
        with pytest.raises(ConnectionClosedByClient):
            await iterating
        with pytest.raises(ConnectionClosedByClient):
            await ch.queue_declare("")
        await conn.close()  # twice: harmless
        assert isinstance(await conn.when_closed(), ConnectionClosedByClient)

    run(main())


async def _drain(consumer: aio.Consumer) -> int:
    n = 0
    async for _ in consumer:
        n += 1
    return n


def test_protocol_0_8(run: Any, broker_url: str) -> None:
    async def main() -> None:
        async with await aio.connect(broker_url + "?protocol=0-8") as conn:
            assert conn.dialect == "0-8"
            ch = await conn.channel()
            queue = await declare_temp(ch)
            with pytest.raises(UsageError):
                await ch.confirm_select()
            with pytest.raises(UsageError):
                await ch.exchange_bind("a", "b")
            await ch.basic_publish("", queue, b"old dialect")
            consumer = await ch.basic_consume(queue)
            message = await consumer.get(timeout=T)
            assert message.body == b"old dialect"
            await message.ack()
            assert await ch.basic_get(queue) is None

    run(main())


def test_large_messages_round_trip(run: Any, broker_url: str) -> None:
    async def main() -> None:
        async with await aio.connect(broker_url) as conn:
            ch = await conn.channel()
            queue = await declare_temp(ch)
            await ch.confirm_select()
            bodies = [bytes([i]) * (4 * 1024 * 1024 + i) for i in range(3)]
            await asyncio.gather(*(ch.basic_publish("", queue, b) for b in bodies))
            consumer = await ch.basic_consume(queue, auto_ack=True)
            for body in bodies:
                assert (await consumer.get(timeout=T)).body == body

    run(main())


def test_refusals(run: Any, broker_url: str) -> None:
    async def main() -> None:
        with pytest.raises(AuthenticationError):
            await aio.connect(broker_url, password="wrong", connection_timeout=5)
        with pytest.raises(AccessRefused):
            await aio.connect(broker_url, virtual_host=unique("vhost"), connection_timeout=5)
        with pytest.raises(UsageError):
            await aio.connect("tcp:host=localhost:port=5672")

    run(main())
