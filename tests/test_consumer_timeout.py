"""RabbitMQ's consumer (ack) timeout against a real private node.

A delivery left unacked past the broker's ``consumer_timeout`` makes RabbitMQ close the
channel with 406 PRECONDITION_FAILED. `ConsumerService` logs one warning naming the broker
setting and how long the handler had run; its channel is reopened with its consumer, the
broker redelivers the message, and the redelivery is handled and acked.

How RabbitMQ 3.10.8 enforces it (read from its rabbit_channel module): each channel checks
its oldest unacked delivery on a timer, ``channel_tick_interval`` (60 s by default, an
application setting with no rabbitmq.conf key), so a 2 s ``consumer_timeout`` alone would
fire 60 s late (measured: a 2 s ``consumer_timeout`` with the default tick closed the
channel 60.0 s after the delivery). The node here sets ``consumer_timeout = 2000``
(rabbitmq.conf) and ``channel_tick_interval`` 500 ms (advanced.config): the channel closes
2 to 2.5 s after the delivery.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from rabbitnode import PrivateNode, PrivateNodeError
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import formatEvent
from twistedsim import capture_logs

from txpika import AMQPService, BasicProperties, ConsumerService

pytestmark = [pytest.mark.broker, pytest.mark.private_broker, pytest.mark.slow]

CONSUMER_TIMEOUT_MS = 2000
TICK_MS = 500


@pytest.fixture(scope="module")
def short_timeout_node() -> Iterator[PrivateNode]:
    node = PrivateNode(
        config=f"consumer_timeout = {CONSUMER_TIMEOUT_MS}\n",
        advanced_config=f"[{{rabbit, [{{channel_tick_interval, {TICK_MS}}}]}}].\n")
    try:
        node.start()
    except PrivateNodeError as e:
        pytest.fail(f"could not start a private RabbitMQ node: {e}", pytrace=False)
    try:
        yield node
    finally:
        node.stop()


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_handler_past_consumer_timeout_warns_reopens_and_gets_the_redelivery(
        short_timeout_node: PrivateNode) -> None:
    queue = f"txpika-test-ack-timeout-{uuid.uuid4().hex[:10]}"
    service = AMQPService(reactor, short_timeout_node.url, heartbeat=5)
    calls: list[tuple[bool, float]] = []
    acked: list[float] = []

    def handle(message: Any) -> Deferred[None] | None:
        calls.append((message.redelivered, time.monotonic()))
        if not message.redelivered:
            return sleep(3.5)  # past the 2 s consumer_timeout
        acked.append(time.monotonic())
        return None

    consumer = ConsumerService(service, queue, handle, declare=True, prefetch=1)
    with capture_logs() as logs:
        service.startService()
        consumer.startService()
        try:
            channel = await service.channel().addTimeout(10, reactor)
            await channel.queue_declare(queue, durable=True, exclusive=False,
                                        auto_delete=False)
            await channel.basic_publish("", queue, b"slow",
                                        BasicProperties(message_id="m1"))
            deadline = time.monotonic() + 15
            while not acked:
                assert time.monotonic() < deadline, [formatEvent(e) for e in logs.events]
                await sleep(0.05)
            while consumer.stats["stale_acks"] == 0:  # the first handler ends: ack dropped
                assert time.monotonic() < deadline, [formatEvent(e) for e in logs.events]
                await sleep(0.05)
            ok = await channel.queue_declare(queue, passive=True)
        finally:
            await consumer.stopService()
            await service.stopService()
    texts = [formatEvent(e) for e in logs.events]
    warnings = [t for t in texts if "consumer_timeout" in t]
    assert len(warnings) == 1, texts
    warning = warnings[0]
    assert "delivery acknowledgement on channel" in warning  # the broker's words
    seconds = float(warning.split("has run ")[1].split(" s")[0])
    assert 2.0 <= seconds < 3.5, warning
    assert [redelivered for redelivered, _ in calls] == [False, True]
    print(f"\nconsumer_timeout {CONSUMER_TIMEOUT_MS} ms, tick {TICK_MS} ms: the channel "
          f"closed after {seconds:.2f} s; redelivered "
          f"{calls[1][1] - calls[0][1]:.2f} s after the first delivery")
    assert ok.message_count == 0  # the redelivery was acked
    assert any("dropping ack of delivery 1" in t for t in texts), texts
    assert consumer.stats["acked"] == 2 and consumer.stats["stale_acks"] == 1
