"""txpika in the idioms users write (throughput.py's ``publish-*`` and ``consume-*``
scenarios): each publish awaited in a coroutine, yielded in ``inlineCallbacks``, or chained
on the previous publish's Deferred; each delivery pulled with ``consumer.get()`` and its ack
awaited or yielded. The callback consumer is the ``consume`` scenario of `run_txpika`.

Everything around the loop (connection, channel, bodies built before the timed part, one
closing round trip inside it) is as in `run_txpika.publish` and `run_txpika.consume`.
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


async def _connect(p: Params) -> tuple[Any, Any]:
    from twisted.internet import reactor

    import txpika

    conn = await txpika.connect(reactor, p.url)
    return conn, await conn.channel()


async def publish_await(p: Params, meter: Meter) -> dict[str, Any]:
    conn, ch = await _connect(p)
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    meter.start()
    for body in bodies:
        await ch.basic_publish("", queue, body)
    await ch.queue_declare(queue, passive=True, timeout=p.stall)
    meter.stop()
    await conn.close()
    return {"expected": p.count, "published": p.count}


async def publish_yield(p: Params, meter: Meter) -> dict[str, Any]:
    from twisted.internet.defer import inlineCallbacks

    conn, ch = await _connect(p)
    bodies = small_bodies(p.count, p.size)
    queue = p.queue

    @inlineCallbacks
    def publish_all() -> Any:
        for body in bodies:
            yield ch.basic_publish("", queue, body)

    meter.start()
    await publish_all()
    await ch.queue_declare(queue, passive=True, timeout=p.stall)
    meter.stop()
    await conn.close()
    return {"expected": p.count, "published": p.count}


async def publish_chain(p: Params, meter: Meter) -> dict[str, Any]:
    """Each publish made in a callback of the previous publish's Deferred, each callback
    returning the next publish's Deferred (`peers._common.chained`: chains of 1,000)."""
    conn, ch = await _connect(p)
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    basic_publish = ch.basic_publish

    def publish_next(_: object, body: bytes) -> Any:
        return basic_publish("", queue, body)

    meter.start()
    await chained(publish_next, bodies)
    await ch.queue_declare(queue, passive=True, timeout=p.stall)
    meter.stop()
    await conn.close()
    return {"expected": p.count, "published": p.count}


async def _pulled(p: Params, meter: Meter, loop: Any) -> dict[str, Any]:
    """Consume with ``loop(consumer, tally)`` (a coroutine or Deferred that ends once every
    message is in); the same frame around it for the awaited and the yielded form."""
    conn, ch = await _connect(p)
    await ch.basic_qos(prefetch_count=p.prefetch)
    tally = Tally(p.count)
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    consumer = await ch.basic_consume(p.queue)
    try:
        await watch(lambda: tally.received, p.stall, until(loop(consumer, tally)))
    except Stalled as exc:
        out["stalled"] = str(exc)
    await ch.queue_declare(p.queue, passive=True, timeout=p.stall)  # the acks are in
    meter.stop()
    await consumer.cancel()
    await conn.close()
    out.update(tally.result())
    return out


def _await_loop(consumer: Any, tally: Tally) -> Any:
    async def loop() -> None:
        while True:
            message = await consumer.get()
            await message.ack()
            if tally.add_small(message.body):
                return

    return loop()


def _yield_loop(consumer: Any, tally: Tally) -> Any:
    from twisted.internet.defer import inlineCallbacks

    @inlineCallbacks
    def loop() -> Any:
        while True:
            message = yield consumer.get()
            yield message.ack()
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
