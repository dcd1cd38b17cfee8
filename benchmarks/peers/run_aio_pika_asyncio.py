"""pika's asyncio adapter (``pika.adapters.asyncio_connection.AsyncioConnection``) on
asyncio's default loop.

pika's API takes callbacks, not awaitables: each step's callback resolves a future the
runner awaits. Publishes are plain calls (no backpressure: pika buffers what the socket
does not take); confirms arrive at ``confirm_delivery``'s callback (``multiple`` acks
settle every earlier tag) and keep the sliding window full; the consumer callback acks
each message with ``basic_ack``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from peers._common import BigBodies, Meter, Params, Tally, latency_result, small_bodies
from peers.run_aio_common import run_on_loop, watch


def _call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
    """``method(*args, callback=...)``, as a future of what the callback gets."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    method(*args, callback=lambda frame: future.done() or future.set_result(frame), **kwargs)
    return future


async def _open(p: Params, channels: int = 1) -> tuple[Any, list[Any]]:
    import pika
    from pika.adapters.asyncio_connection import AsyncioConnection

    loop = asyncio.get_running_loop()
    opened: asyncio.Future[Any] = loop.create_future()
    conn = AsyncioConnection(
        pika.URLParameters(p.url + "?heartbeat=0"),
        on_open_callback=lambda c: opened.set_result(c),
        on_open_error_callback=lambda c, e: opened.set_exception(RuntimeError(str(e))),
        custom_ioloop=loop)
    await opened
    chans = []
    for _ in range(channels):
        got: asyncio.Future[Any] = loop.create_future()
        conn.channel(on_open_callback=got.set_result)
        chans.append(await got)
    return conn, chans


async def _close(conn: Any) -> None:
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    conn.add_on_close_callback(lambda c, reason: closed.done() or closed.set_result(None))
    conn.close()
    await asyncio.wait_for(closed, 10)


async def _confirm_window(ch: Any, publish_one: Callable[[int], None], count: int, size: int,
                          stall: float, out: dict[str, Any]) -> None:
    import pika

    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    outstanding: deque[int] = deque()
    state = {"sent": 0, "acked": 0, "nacked": 0}

    def fill() -> None:
        while len(outstanding) < size and state["sent"] < count:
            state["sent"] += 1
            outstanding.append(state["sent"])  # delivery tags count from 1
            publish_one(state["sent"] - 1)
        if not outstanding and state["sent"] >= count and not done.done():
            done.set_result(None)

    def on_confirm(frame: Any) -> None:
        method = frame.method
        key = "acked" if isinstance(method, pika.spec.Basic.Ack) else "nacked"
        tag = method.delivery_tag
        if method.multiple:
            while outstanding and outstanding[0] <= tag:
                outstanding.popleft()
                state[key] += 1
        elif outstanding and outstanding[0] == tag:
            outstanding.popleft()
            state[key] += 1
        elif tag in outstanding:
            outstanding.remove(tag)
            state[key] += 1
        fill()

    await _call(ch.confirm_delivery, on_confirm)
    fill()
    await watch(lambda: state["acked"] + state["nacked"], stall, done, out)
    out.update(published=state["sent"], acked=state["acked"], nacked=state["nacked"])


async def publish(p: Params, meter: Meter, confirm: bool) -> dict[str, Any]:
    conn, (ch,) = await _open(p)
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    out: dict[str, Any] = {"expected": p.count}
    if confirm:
        meter.start()
        await _confirm_window(ch, lambda i: ch.basic_publish("", queue, bodies[i]), p.count,
                              p.window, p.stall, out)
    else:
        meter.start()
        for body in bodies:
            ch.basic_publish("", queue, body)
        out["published"] = p.count
    await _call(ch.queue_declare, queue, passive=True)
    meter.stop()
    await _close(conn)
    return out


def _small_index(body: bytes) -> int:
    try:
        return int(body[:8])
    except ValueError:
        return -1


async def _consume_all(ch: Any, queue: str, tally: Tally, check: Any, stall: float,
                       out: dict[str, Any]) -> None:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        channel.basic_ack(method.delivery_tag)
        if tally.add(check(body)) and not done.done():
            done.set_result(None)

    ch.basic_consume(queue, on_message)
    await watch(lambda: tally.received, stall, done, out)


async def consume(p: Params, meter: Meter) -> dict[str, Any]:
    conn, (ch,) = await _open(p)
    await _call(ch.basic_qos, prefetch_count=p.prefetch)
    tally = Tally(p.count)
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    await _consume_all(ch, p.queue, tally, _small_index, p.stall, out)
    await _call(ch.queue_declare, p.queue, passive=True)
    meter.stop()
    await _close(conn)
    out.update(tally.result())
    return out


async def rpc(p: Params, meter: Meter) -> dict[str, Any]:
    import pika

    conn, (ch,) = await _open(p)
    reply_queue = (await _call(ch.queue_declare, "", exclusive=True)).method.queue
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[Any] | None] = [None]

    def on_reply(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        f, waiter[0] = waiter[0], None
        if f is not None and not f.done():
            f.set_result((properties, body))

    ch.basic_consume(reply_queue, on_reply, auto_ack=True)
    await _call(ch.queue_declare, reply_queue, passive=True)  # the consumer is registered
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
            ch.basic_publish("", p.rpc_queue, body, pika.BasicProperties(
                reply_to=reply_queue, correlation_id=corr))
            properties, reply = await asyncio.wait_for(f, p.stall)
            latencies.append(time.perf_counter() - t0)
            if properties.correlation_id != corr or reply != body:
                bad += 1
    except Exception as exc:
        out["stalled"] = f"{type(exc).__name__}: {exc}"
    meter.stop()
    await _close(conn)
    out.update(latency_result(latencies), bad_replies=bad)
    return out


async def big(p: Params, meter: Meter) -> dict[str, Any]:
    conn, (pub, sub) = await _open(p, 2)
    await _call(sub.basic_qos, prefetch_count=p.prefetch)
    bodies = BigBodies(p.size)
    tally = Tally(p.count)
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    await _confirm_window(pub, lambda i: pub.basic_publish("", p.queue, bodies.make(i)),
                          p.count, p.window, p.stall, out)
    await _consume_all(sub, p.queue, tally, bodies.check, p.stall, out)
    await _call(sub.queue_declare, p.queue, passive=True)
    meter.stop()
    await _close(conn)
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
