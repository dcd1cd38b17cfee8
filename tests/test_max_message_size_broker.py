"""``max_message_size`` against the real RabbitMQ, in the Twisted and the blocking adapters.

A queue holds a small message, one over the limit and another small one. A consumer (pushed
to a pull ``Consumer`` in Twisted, the ``consume()`` generator in blocking) gets the first,
then ends with `txpika.errors.MessageTooLarge` naming the size and the limit; its channel is
closed, so the broker requeues the big message and nothing is lost; another channel on the
same connection goes on working; a ``basic_get`` of the big message fails the same way.
Memory stays bounded: the client's traced allocations peak far below the body's size (the
Twisted adapter holds at most one read budget of 4 MiB undecoded, the blocking one less).
"""

from __future__ import annotations

import itertools
import tracemalloc
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twistedhelpers import failure_of, unique, within

import txpika
from txpika import blocking
from txpika.errors import CONTENT_TOO_LARGE, MessageTooLarge

pytestmark = pytest.mark.broker

LIMIT = 64 * 1024
BIG = 16 * 1024 * 1024
T = 10


def _fill(broker_url: str, queue: str) -> None:
    with blocking.connect(broker_url) as conn:
        ch = conn.channel()
        ch.queue_declare(queue, auto_delete=False)
        ch.confirm_select()
        for body in (b"small-1", b"B" * BIG, b"small-2"):
            ch.basic_publish("", queue, body)  # returns once confirmed


def _check(error: BaseException) -> None:
    assert isinstance(error, MessageTooLarge), repr(error)
    assert (error.size, error.limit, error.reply_code) == (BIG, LIMIT, CONTENT_TOO_LARGE)
    assert f"{BIG} bytes" in str(error) and f"max_message_size {LIMIT}" in str(error)


def _drop(broker_url: str, queue: str) -> int:
    with blocking.connect(broker_url) as conn:
        ch = conn.channel()
        count = ch.queue_declare(queue, passive=True).message_count
        ch.queue_delete(queue)
        return count


@pytest_twisted.ensureDeferred
async def test_twisted_consumer_and_get_fail_typed_and_lose_nothing(broker_url: str) -> None:
    queue = unique("big")
    _fill(broker_url, queue)
    tracemalloc.start()
    try:
        conn = await within(txpika.connect(reactor, broker_url, max_message_size=LIMIT), T)
        try:
            ch = await within(conn.channel(), T)
            await within(ch.basic_qos(prefetch_count=1), T)
            consumer = await within(ch.basic_consume(queue), T)
            first = await within(consumer.get(), T)
            assert first.body == b"small-1"
            first.ack()
            _check(await failure_of(within(consumer.get(), T)))
            _check(await failure_of(within(ch.queue_declare(queue, passive=True), T)))
            assert not ch.is_open and conn.is_open
            # The connection goes on; the big message was requeued, not lost.
            other = await within(conn.channel(), T)
            ok = await within(other.queue_declare(queue, passive=True), T)
            assert ok.message_count == 2  # big and small-2
            _check(await failure_of(within(other.basic_get(queue), T)))
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            await within(conn.close(), T)
    finally:
        tracemalloc.stop()
    assert peak < BIG // 2, peak  # 16 MiB announced
    assert _drop(broker_url, queue) == 2


def test_blocking_consume_and_get_fail_typed_and_lose_nothing(broker_url: str) -> None:
    queue = unique("big")
    _fill(broker_url, queue)
    tracemalloc.start()
    try:
        with blocking.connect(broker_url, max_message_size=LIMIT) as conn:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=1, timeout=T)
            got: list[Any] = []
            with pytest.raises(MessageTooLarge) as raised:
                for message in ch.consume(queue, inactivity_timeout=T):
                    assert message is not None
                    got.append(message.body)
                    message.ack()
            _check(raised.value)
            assert got == [b"small-1"]
            other = conn.channel()
            assert other.queue_declare(queue, passive=True, timeout=T).message_count == 2
            with pytest.raises(MessageTooLarge) as raised:
                other.basic_get(queue, timeout=T)
            _check(raised.value)
            third = conn.channel()
            assert third.queue_declare(queue, passive=True, timeout=T).message_count == 2
            _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BIG // 4, peak
    assert _drop(broker_url, queue) == 2


@pytest_twisted.ensureDeferred
async def test_robust_consumer_backs_off_while_the_big_message_returns(
        broker_url: str) -> None:
    """A `RobustChannel` reopens after `MessageTooLarge` (the broker requeued the message),
    later each time; once the message is gone its consumer takes the next one."""
    from txpika.client import AMQPService

    queue = unique("big")
    _fill(broker_url, queue)
    reopened: list[float] = []
    url = f"{broker_url}{'&' if '?' in broker_url else '?'}max_message_size={LIMIT}"
    service = AMQPService(reactor, [url])
    service.startService()
    try:
        ch = await within(service.channel(), T)
        ch.add_reopen_listener(lambda: reopened.append(reactor.seconds()))  # type: ignore[attr-defined]
        await within(ch.basic_qos(prefetch_count=1), T)
        consumer = await within(ch.basic_consume(queue), T)
        first = await within(consumer.get(), T)
        assert first.body == b"small-1"
        await within(first.ack(), T)
        pending = consumer.get()
        for _ in range(200):  # bounded: 10 s
            if len(reopened) >= 3:
                break
            await _later(0.05)
        assert len(reopened) >= 3, reopened
        gaps = [b - a for a, b in itertools.pairwise(reopened)]
        assert gaps[-1] > gaps[0], gaps  # backing off, not a tight loop
        assert not pending.called
        with blocking.connect(broker_url) as conn:  # the operator removes the big message
            conn.channel().basic_get(queue, auto_ack=True)
        message = await within(pending, 20)
        assert message.body == b"small-2"
        await within(message.ack(), T)
    finally:
        await within(service.stopService(), 20)
    assert _drop(broker_url, queue) == 0


def _later(seconds: float) -> Any:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


def test_asyncio_consumer_and_get_fail_typed_and_lose_nothing(broker_url: str) -> None:
    """The same through `txpika.aio`, on the default event loop."""
    import asyncio

    from txpika import aio

    queue = unique("big")
    _fill(broker_url, queue)

    async def main() -> int:
        async with await aio.connect(broker_url, max_message_size=LIMIT) as conn:
            ch = await conn.channel()
            await ch.basic_qos(prefetch_count=1)
            consumer = await ch.basic_consume(queue)
            first = await consumer.get(timeout=T)
            assert first.body == b"small-1"
            first.ack()
            with pytest.raises(MessageTooLarge) as raised:
                await consumer.get(timeout=T)
            _check(raised.value)
            assert not ch.is_open and conn.is_open
            other = await conn.channel()
            with pytest.raises(MessageTooLarge) as raised:
                await other.basic_get(queue, timeout=T)
            _check(raised.value)
            third = await conn.channel()
            ok = await third.queue_declare(queue, passive=True, timeout=T)
            return ok.message_count

    tracemalloc.start()
    try:
        count = asyncio.run(asyncio.wait_for(main(), 30))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 2
    assert peak < BIG // 2, peak
    assert _drop(broker_url, queue) == 2
