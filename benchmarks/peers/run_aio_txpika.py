"""txpika.aio (this checkout) on asyncio's default loop, or on uvloop (``txpika-aio-uvloop``).

The idioms a user of txpika.aio writes: ``await ch.basic_publish(...)`` for each message
(done at once unless the transport pushes back); confirmed publishes as futures in the
sliding window (``basic_publish`` returns one: no task per publish); a callback consumer
that acks each message; an RPC client whose reply consumer resolves a future.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from peers._common import BigBodies, Meter, Params, Tally, latency_result, small_bodies
from peers.run_aio_common import run_on_loop, watch, window


async def publish(p: Params, meter: Meter, confirm: bool) -> dict[str, Any]:
    from txpika import aio

    conn = await aio.connect(p.url)
    ch = await conn.channel()
    if confirm:
        await ch.confirm_select()
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    if confirm:
        await window(lambda i: ch.basic_publish("", queue, bodies[i]), p.count, p.window,
                     p.stall, out, as_task=False)
    else:
        publish_one = ch.basic_publish
        for body in bodies:
            await publish_one("", queue, body)
        out["published"] = p.count
    await ch.queue_declare(queue, passive=True)
    meter.stop()
    await conn.close()
    return out


async def _consume_all(ch: Any, queue: str, tally: Tally, check: Any, stall: float,
                       out: dict[str, Any]) -> Any:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(message: Any) -> None:
        message.ack()
        if tally.add(check(message.body)) and not done.done():
            done.set_result(None)

    consumer = await ch.basic_consume(queue, on_message)
    await watch(lambda: tally.received, stall, done, out)
    return consumer


def _small_index(body: bytes) -> int:
    try:
        return int(body[:8])
    except ValueError:
        return -1


async def consume(p: Params, meter: Meter) -> dict[str, Any]:
    from txpika import aio

    conn = await aio.connect(p.url)
    ch = await conn.channel()
    await ch.basic_qos(prefetch_count=p.prefetch)
    tally = Tally(p.count)
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    consumer = await _consume_all(ch, p.queue, tally, _small_index, p.stall, out)
    await ch.queue_declare(p.queue, passive=True)
    meter.stop()
    await consumer.cancel()
    await conn.close()
    out.update(tally.result())
    return out


async def rpc(p: Params, meter: Meter) -> dict[str, Any]:
    from txpika import aio
    from txpika.spec import BasicProperties

    conn = await aio.connect(p.url)
    ch = await conn.channel()
    reply_queue = (await ch.queue_declare("", exclusive=True)).queue
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[Any] | None] = [None]

    def on_reply(message: Any) -> None:
        f, waiter[0] = waiter[0], None
        if f is not None and not f.done():
            f.set_result(message)

    await ch.basic_consume(reply_queue, on_reply, auto_ack=True)
    body = b"r" * p.size
    latencies: list[float] = []
    bad = 0
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    try:
        for i in range(p.count):
            corr = str(i)
            f: asyncio.Future[Any] = loop.create_future()
            waiter[0] = f
            t0 = time.perf_counter()
            await ch.basic_publish("", p.rpc_queue, body, BasicProperties(
                reply_to=reply_queue, correlation_id=corr))
            reply = await asyncio.wait_for(f, p.stall)
            latencies.append(time.perf_counter() - t0)
            if reply.properties.correlation_id != corr or reply.body != body:
                bad += 1
    except Exception as exc:
        out["stalled"] = f"{type(exc).__name__}: {exc}"
    meter.stop()
    await conn.close()
    out.update(latency_result(latencies), bad_replies=bad)
    return out


async def big(p: Params, meter: Meter) -> dict[str, Any]:
    from txpika import aio

    conn = await aio.connect(p.url)
    pub = await conn.channel()
    sub = await conn.channel()
    await pub.confirm_select()
    await sub.basic_qos(prefetch_count=p.prefetch)
    bodies = BigBodies(p.size)
    tally = Tally(p.count)
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    await window(lambda i: pub.basic_publish("", p.queue, bodies.make(i)), p.count,
                 p.window, p.stall, out, as_task=False)
    consumer = await _consume_all(sub, p.queue, tally, bodies.check, p.stall, out)
    await sub.queue_declare(p.queue, passive=True)
    meter.stop()
    await consumer.cancel()
    await conn.close()
    out.update(tally.result())
    return out


def run(p: Params, meter: Meter) -> dict[str, Any]:
    if p.scenario == "publish":
        return run_on_loop(p, publish(p, meter, False))
    if p.scenario == "publish-confirm":
        return run_on_loop(p, publish(p, meter, True))
    if p.scenario == "consume":
        return run_on_loop(p, consume(p, meter))
    if p.scenario == "rpc":
        return run_on_loop(p, rpc(p, meter))
    if p.scenario == "big":
        return run_on_loop(p, big(p, meter))
    raise ValueError(p.scenario)
