"""txAMQP3 in the idioms users write (throughput.py's ``publish-*`` and ``consume-*``
scenarios), in its natural form of each: ``channel.basic_publish(exchange, routing_key,
content=Content(body))`` returns a Deferred (fired once the frames are queued), awaited,
yielded or chained; a consumer's queue (``connection.queue(consumer_tag)``) is pulled with
``await queue.get()`` (or ``yield``) and each delivery acked with ``channel.basic_ack``,
whose Deferred is awaited (or yielded). txAMQP has no callback consumer: its ``consume``
scenario (`run_txamqp`) puts a callback on each ``queue.get()``.
"""

from __future__ import annotations

from typing import Any

from txamqp.content import Content

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
from peers.run_txamqp import _channel, _close, _connect


async def publish_await(p: Params, meter: Meter) -> dict[str, Any]:
    conn, _delegate = await _connect(p)
    ch = await _channel(conn, 1)
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    meter.start()
    for body in bodies:
        await ch.basic_publish(exchange="", routing_key=queue, content=Content(body))
    await ch.queue_declare(queue=queue, passive=True)
    meter.stop()
    await _close(conn)
    return {"expected": p.count, "published": p.count}


async def publish_yield(p: Params, meter: Meter) -> dict[str, Any]:
    from twisted.internet.defer import inlineCallbacks

    conn, _delegate = await _connect(p)
    ch = await _channel(conn, 1)
    bodies = small_bodies(p.count, p.size)
    queue = p.queue

    @inlineCallbacks
    def publish_all() -> Any:
        for body in bodies:
            yield ch.basic_publish(exchange="", routing_key=queue, content=Content(body))

    meter.start()
    await publish_all()
    await ch.queue_declare(queue=queue, passive=True)
    meter.stop()
    await _close(conn)
    return {"expected": p.count, "published": p.count}


async def publish_chain(p: Params, meter: Meter) -> dict[str, Any]:
    conn, _delegate = await _connect(p)
    ch = await _channel(conn, 1)
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    basic_publish = ch.basic_publish

    def publish_next(_: object, body: bytes) -> Any:
        return basic_publish(exchange="", routing_key=queue, content=Content(body))

    meter.start()
    await chained(publish_next, bodies)
    await ch.queue_declare(queue=queue, passive=True)
    meter.stop()
    await _close(conn)
    return {"expected": p.count, "published": p.count}


async def _pulled(p: Params, meter: Meter, loop: Any) -> dict[str, Any]:
    conn, _delegate = await _connect(p)
    ch = await _channel(conn, 1)
    await ch.basic_qos(prefetch_count=p.prefetch)
    tally = Tally(p.count)
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    reply = await ch.basic_consume(queue=p.queue)
    queue_obj = await conn.queue(reply.consumer_tag)
    try:
        await watch(lambda: tally.received, p.stall, until(loop(ch, queue_obj, tally)))
    except Stalled as exc:
        out["stalled"] = str(exc)
    await ch.queue_declare(queue=p.queue, passive=True)
    meter.stop()
    await ch.basic_cancel(consumer_tag=reply.consumer_tag)
    await _close(conn)
    out.update(tally.result())
    return out


def _await_loop(ch: Any, queue_obj: Any, tally: Tally) -> Any:
    async def loop() -> None:
        while True:
            message = await queue_obj.get()
            await ch.basic_ack(delivery_tag=message.delivery_tag)
            if tally.add_small(message.content.body):
                return

    return loop()


def _yield_loop(ch: Any, queue_obj: Any, tally: Tally) -> Any:
    from twisted.internet.defer import inlineCallbacks

    @inlineCallbacks
    def loop() -> Any:
        while True:
            message = yield queue_obj.get()
            yield ch.basic_ack(delivery_tag=message.delivery_tag)
            if tally.add_small(message.content.body):
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
