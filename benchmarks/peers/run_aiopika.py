"""aio-pika (on aiormq) on asyncio's default event loop.

Publishes go through ``channel.default_exchange.publish`` with ``mandatory=False`` (aio-pika
defaults to True; the other clients publish without it). Without confirms each publish is
awaited in turn (aio-pika's publish is a coroutine); with confirms the sliding window runs
one task per publish, the way aio-pika pipelines confirms.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from peers._common import BigBodies, Meter, Params, Tally, latency_result, small_bodies


async def _watch(progress: Any, stall: float, waiting: asyncio.Future[Any],
                 out: dict[str, Any]) -> None:
    """Wait for ``waiting``; give up when ``progress()`` stops changing for ``stall`` s."""
    last, since = progress(), time.monotonic()
    while not waiting.done():
        try:
            await asyncio.wait_for(asyncio.shield(waiting), 0.5)
        except TimeoutError:
            now = progress()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > stall:
                out["stalled"] = f"no progress for {stall:g} s (at {now})"
                return


async def _window(publish_one: Any, count: int, window: int, stall: float,
                  out: dict[str, Any]) -> None:
    """Sliding window of confirmed publishes: one new publish per settled one."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    state = {"sent": 0, "acked": 0, "nacked": 0, "out": 0, "progress": 0}
    filling = [False]

    def settled(task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            state["nacked"] += 1
        else:
            state["acked"] += 1
        state["out"] -= 1
        state["progress"] += 1
        fill()

    def fill() -> None:
        if filling[0]:
            return
        filling[0] = True
        try:
            while state["out"] < window and state["sent"] < count:
                index = state["sent"]
                state["sent"] += 1
                state["out"] += 1
                loop.create_task(publish_one(index)).add_done_callback(settled)
        finally:
            filling[0] = False
        if state["out"] == 0 and state["sent"] >= count and not done.done():
            done.set_result(None)

    fill()
    await _watch(lambda: state["progress"], stall, done, out)
    out.update(published=state["sent"], acked=state["acked"], nacked=state["nacked"])


async def publish(p: Params, meter: Meter, confirm: bool) -> dict[str, Any]:
    import aio_pika

    conn = await aio_pika.connect(p.url)
    ch = await conn.channel(publisher_confirms=confirm)
    exchange = ch.default_exchange
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    out: dict[str, Any] = {"expected": p.count}
    message_class = aio_pika.Message
    meter.start()
    if confirm:
        async def one(index: int) -> Any:
            return await exchange.publish(message_class(bodies[index]), queue, mandatory=False)

        await _window(one, p.count, p.window, p.stall, out)
    else:
        for body in bodies:
            await exchange.publish(message_class(body), queue, mandatory=False)
        out["published"] = p.count
    await ch.declare_queue(queue, passive=True)
    meter.stop()
    await conn.close()
    return out


async def _consume_all(ch: Any, queue_name: str, tally: Tally, check: Any, stall: float,
                       out: dict[str, Any]) -> Any:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    queue = await ch.declare_queue(queue_name, passive=True)

    async def on_message(message: Any) -> None:
        await message.ack()
        if tally.add(check(message.body)) and not done.done():
            done.set_result(None)

    tag = await queue.consume(on_message)
    await _watch(lambda: tally.received, stall, done, out)
    return queue, tag


def _small_index(body: bytes) -> int:
    try:
        return int(body[:8])
    except ValueError:
        return -1


async def consume(p: Params, meter: Meter) -> dict[str, Any]:
    import aio_pika

    conn = await aio_pika.connect(p.url)
    ch = await conn.channel(publisher_confirms=False)
    await ch.set_qos(prefetch_count=p.prefetch)
    tally = Tally(p.count)
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    queue, tag = await _consume_all(ch, p.queue, tally, _small_index, p.stall, out)
    await ch.declare_queue(p.queue, passive=True)
    meter.stop()
    await queue.cancel(tag)
    await conn.close()
    out.update(tally.result())
    return out


async def rpc(p: Params, meter: Meter) -> dict[str, Any]:
    import aio_pika

    conn = await aio_pika.connect(p.url)
    ch = await conn.channel(publisher_confirms=False)
    reply_queue = await ch.declare_queue("", exclusive=True)
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[Any] | None] = [None]

    async def on_reply(message: Any) -> None:
        f = waiter[0]
        waiter[0] = None
        if f is not None and not f.done():
            f.set_result(message)

    await reply_queue.consume(on_reply, no_ack=True)
    exchange = ch.default_exchange
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
            await exchange.publish(
                aio_pika.Message(body, reply_to=reply_queue.name, correlation_id=corr),
                p.rpc_queue, mandatory=False)
            reply = await asyncio.wait_for(f, p.stall)
            latencies.append(time.perf_counter() - t0)
            if reply.correlation_id != corr or reply.body != body:
                bad += 1
    except Exception as exc:
        out["stalled"] = f"{type(exc).__name__}: {exc}"
    meter.stop()
    await conn.close()
    out.update(latency_result(latencies), bad_replies=bad)
    return out


async def big(p: Params, meter: Meter) -> dict[str, Any]:
    import aio_pika

    conn = await aio_pika.connect(p.url)
    pub = await conn.channel(publisher_confirms=True)
    sub = await conn.channel(publisher_confirms=False)
    await sub.set_qos(prefetch_count=p.prefetch)
    bodies = BigBodies(p.size)
    tally = Tally(p.count)
    exchange = pub.default_exchange
    out: dict[str, Any] = {"expected": p.count}
    meter.start()

    async def one(index: int) -> Any:
        return await exchange.publish(aio_pika.Message(bodies.make(index)), p.queue,
                                      mandatory=False)

    await _window(one, p.count, p.window, p.stall, out)
    queue, tag = await _consume_all(sub, p.queue, tally, bodies.check, p.stall, out)
    await sub.declare_queue(p.queue, passive=True)
    meter.stop()
    await queue.cancel(tag)
    await conn.close()
    out.update(tally.result())
    return out


async def consume_await(p: Params, meter: Meter) -> dict[str, Any]:
    """The pulled consumer: ``async for message in queue.iterator()`` and ``await
    message.ack()`` (aio-pika's natural pull form; ``consume-await``)."""
    import aio_pika

    conn = await aio_pika.connect(p.url)
    ch = await conn.channel(publisher_confirms=False)
    await ch.set_qos(prefetch_count=p.prefetch)
    tally = Tally(p.count)
    out: dict[str, Any] = {"expected": p.count}
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    meter.start()
    queue = await ch.declare_queue(p.queue, passive=True)

    async def pull() -> None:
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                if tally.add_small(message.body):
                    break
        if not done.done():
            done.set_result(None)

    task = loop.create_task(pull())
    await _watch(lambda: tally.received, p.stall, done, out)
    if not task.done():
        task.cancel()
    await ch.declare_queue(p.queue, passive=True)
    meter.stop()
    await conn.close()
    out.update(tally.result())
    return out


def run(p: Params, meter: Meter) -> dict[str, Any]:
    if p.scenario in ("publish", "publish-await"):  # every publish is awaited anyway
        return asyncio.run(publish(p, meter, False))
    if p.scenario == "consume-await":
        return asyncio.run(consume_await(p, meter))
    if p.scenario == "publish-confirm":
        return asyncio.run(publish(p, meter, True))
    if p.scenario == "consume":
        return asyncio.run(consume(p, meter))
    if p.scenario == "rpc":
        return asyncio.run(rpc(p, meter))
    if p.scenario in ("big", "big-await"):
        return asyncio.run(big(p, meter))
    raise ValueError(p.scenario)
