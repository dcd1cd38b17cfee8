"""pika's Twisted adapter in the idioms users write (throughput.py's ``publish-*`` and
``consume-*`` scenarios), in its natural form of each:

* ``TwistedChannel.basic_publish`` returns a Deferred (already fired without confirms):
  awaited, yielded, or chained as txpika's are (`idioms_txpika`).
* ``basic_consume`` returns ``(queue, consumer_tag)``, a ``ClosableDeferredQueue`` of
  deliveries: ``message = await queue.get()`` (or ``yield``), then
  ``channel.basic_ack(delivery_tag)``, which returns ``None`` (so it is called, or yielded
  as pika's own Twisted example does, never awaited).

pika's adapter has no ``on_message_callback``: its callback consumer is the ``consume``
scenario of `run_pika_twisted` (a callback on each ``queue.get()``, without recursing).
"""

from __future__ import annotations

from typing import Any

from peers._common import (
    Meter,
    Params,
    Stalled,
    Tally,
    chained,
    small_bodies,
    twisted_main,
    until,
    watch,
)
from peers.run_pika_twisted import _close, _connect


async def publish_await(p: Params, meter: Meter) -> dict[str, Any]:
    conn = await _connect(p)
    ch = await conn.channel()
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    meter.start()
    for body in bodies:
        await ch.basic_publish("", queue, body)
    await ch.queue_declare(queue=queue, passive=True)
    meter.stop()
    await _close(conn)
    return {"expected": p.count, "published": p.count}


async def publish_yield(p: Params, meter: Meter) -> dict[str, Any]:
    from twisted.internet.defer import inlineCallbacks

    conn = await _connect(p)
    ch = await conn.channel()
    bodies = small_bodies(p.count, p.size)
    queue = p.queue

    @inlineCallbacks
    def publish_all() -> Any:
        for body in bodies:
            yield ch.basic_publish("", queue, body)

    meter.start()
    await publish_all()
    await ch.queue_declare(queue=queue, passive=True)
    meter.stop()
    await _close(conn)
    return {"expected": p.count, "published": p.count}


async def publish_chain(p: Params, meter: Meter) -> dict[str, Any]:
    conn = await _connect(p)
    ch = await conn.channel()
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    basic_publish = ch.basic_publish

    def publish_next(_: object, body: bytes) -> Any:
        return basic_publish("", queue, body)

    meter.start()
    await chained(publish_next, bodies)
    await ch.queue_declare(queue=queue, passive=True)
    meter.stop()
    await _close(conn)
    return {"expected": p.count, "published": p.count}


async def _pulled(p: Params, meter: Meter, loop: Any) -> dict[str, Any]:
    conn = await _connect(p)
    ch = await conn.channel()
    await ch.basic_qos(prefetch_count=p.prefetch)
    tally = Tally(p.count)
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    queue_obj, tag = await ch.basic_consume(queue=p.queue)
    try:
        await watch(lambda: tally.received, p.stall, until(loop(ch, queue_obj, tally)))
    except Stalled as exc:
        out["stalled"] = str(exc)
    await ch.queue_declare(queue=p.queue, passive=True)
    meter.stop()
    await ch.basic_cancel(tag)
    await _close(conn)
    out.update(tally.result())
    return out


def _await_loop(ch: Any, queue_obj: Any, tally: Tally) -> Any:
    async def loop() -> None:
        while True:
            message = await queue_obj.get()
            ch.basic_ack(delivery_tag=message.method.delivery_tag)
            if tally.add_small(message.body):
                return

    return loop()


def _yield_loop(ch: Any, queue_obj: Any, tally: Tally) -> Any:
    from twisted.internet.defer import inlineCallbacks

    @inlineCallbacks
    def loop() -> Any:
        while True:
            message = yield queue_obj.get()
            yield ch.basic_ack(delivery_tag=message.method.delivery_tag)
            if tally.add_small(message.body):
                return

    return loop()


async def consume_await(p: Params, meter: Meter) -> dict[str, Any]:
    return await _pulled(p, meter, _await_loop)


async def consume_yield(p: Params, meter: Meter) -> dict[str, Any]:
    return await _pulled(p, meter, _yield_loop)


IDIOMS = {
    "publish-await": publish_await,
    "publish-yield": publish_yield,
    "publish-chain": publish_chain,
    "consume-await": consume_await,
    "consume-yield": consume_yield,
}


def run(p: Params, meter: Meter) -> dict[str, Any]:
    return twisted_main(IDIOMS[p.scenario], p, meter)
