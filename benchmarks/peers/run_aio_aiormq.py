"""aiormq (the AMQP layer under aio-pika), on asyncio's default loop or on uvloop
(``aiormq-uvloop``).

Its own idioms: ``await channel.basic_publish(...)`` per message (a coroutine; on a channel
without publisher confirms it returns once written); confirmed publishes as tasks in the
sliding window; an ``async`` consumer callback that awaits ``basic_ack``; an RPC client whose
reply consumer resolves a future.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from peers._common import BigBodies, Meter, Params, Tally, latency_result, small_bodies
from peers.run_aio_common import run_on_loop, watch, window


async def publish(p: Params, meter: Meter, confirm: bool) -> dict[str, Any]:
    import aiormq

    conn = await aiormq.connect(p.url)
    ch = await conn.channel(publisher_confirms=confirm)
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    if confirm:
        await window(lambda i: ch.basic_publish(bodies[i], routing_key=queue), p.count,
                     p.window, p.stall, out, as_task=True)
    else:
        for body in bodies:
            await ch.basic_publish(body, routing_key=queue)
        out["published"] = p.count
    await ch.queue_declare(queue, passive=True)
    meter.stop()
    await conn.close()
    return out


async def _consume_all(ch: Any, queue: str, tally: Tally, check: Any, stall: float,
                       out: dict[str, Any]) -> Any:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_message(message: Any) -> None:
        await ch.basic_ack(message.delivery.delivery_tag)
        if tally.add(check(message.body)) and not done.done():
            done.set_result(None)

    ok = await ch.basic_consume(queue, on_message)
    await watch(lambda: tally.received, stall, done, out)
    return ok.consumer_tag


def _small_index(body: bytes) -> int:
    try:
        return int(body[:8])
    except ValueError:
        return -1


async def consume(p: Params, meter: Meter) -> dict[str, Any]:
    import aiormq

    conn = await aiormq.connect(p.url)
    ch = await conn.channel(publisher_confirms=False)
    await ch.basic_qos(prefetch_count=p.prefetch)
    tally = Tally(p.count)
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    tag = await _consume_all(ch, p.queue, tally, _small_index, p.stall, out)
    await ch.queue_declare(p.queue, passive=True)
    meter.stop()
    await ch.basic_cancel(tag)
    await conn.close()
    out.update(tally.result())
    return out


async def rpc(p: Params, meter: Meter) -> dict[str, Any]:
    import aiormq
    from pamqp.commands import Basic

    conn = await aiormq.connect(p.url)
    ch = await conn.channel(publisher_confirms=False)
    reply_queue = (await ch.queue_declare("", exclusive=True)).queue
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[Any] | None] = [None]

    async def on_reply(message: Any) -> None:
        f, waiter[0] = waiter[0], None
        if f is not None and not f.done():
            f.set_result(message)

    await ch.basic_consume(reply_queue, on_reply, no_ack=True)
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
            await ch.basic_publish(body, routing_key=p.rpc_queue, properties=Basic.Properties(
                reply_to=reply_queue, correlation_id=corr))
            reply = await asyncio.wait_for(f, p.stall)
            latencies.append(time.perf_counter() - t0)
            if reply.header.properties.correlation_id != corr or reply.body != body:
                bad += 1
    except Exception as exc:
        out["stalled"] = f"{type(exc).__name__}: {exc}"
    meter.stop()
    await conn.close()
    out.update(latency_result(latencies), bad_replies=bad)
    return out


async def big(p: Params, meter: Meter) -> dict[str, Any]:
    import aiormq

    conn = await aiormq.connect(p.url)
    pub = await conn.channel(publisher_confirms=True)
    sub = await conn.channel(publisher_confirms=False)
    await sub.basic_qos(prefetch_count=p.prefetch)
    bodies = BigBodies(p.size)
    tally = Tally(p.count)
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    await window(lambda i: pub.basic_publish(bodies.make(i), routing_key=p.queue), p.count,
                 p.window, p.stall, out, as_task=True)
    tag = await _consume_all(sub, p.queue, tally, bodies.check, p.stall, out)
    await sub.queue_declare(p.queue, passive=True)
    meter.stop()
    await sub.basic_cancel(tag)
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
