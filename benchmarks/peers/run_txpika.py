"""txpika (this repository) on Twisted's default reactor."""

from __future__ import annotations

import time
from typing import Any

from peers._common import (
    BigBodies,
    Meter,
    Params,
    Stalled,
    Tally,
    Window,
    latency_result,
    small_bodies,
    twisted_main,
    watch,
)


async def _connect(p: Params) -> Any:
    from twisted.internet import reactor

    import txpika

    return await txpika.connect(reactor, p.url)


async def publish(p: Params, meter: Meter, confirm: bool) -> dict[str, Any]:
    conn = await _connect(p)
    ch = await conn.channel()
    if confirm:
        await ch.confirm_select()
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    if confirm:
        def one(index: int) -> Any:
            return ch.basic_publish("", queue, bodies[index])

        window = Window(one, p.count, p.window)
        try:
            await watch(lambda: window.progress, p.stall, window.start())
        except Stalled as exc:
            out["stalled"] = str(exc)
        out.update(window.result())
    else:
        basic_publish = ch.basic_publish
        last = None
        for body in bodies:
            last = basic_publish("", queue, body)
        # Wait until the last publish is handed to the transport (see README: ordering; the
        # closing round trip would queue behind the publishes anyway).
        if last is not None:
            await last
        out["published"] = p.count
    # One round trip behind the publishes: the broker has read them all.
    await ch.queue_declare(queue, passive=True, timeout=p.stall)
    meter.stop()
    await conn.close()
    return out


async def consume(p: Params, meter: Meter) -> dict[str, Any]:
    from twisted.internet.defer import Deferred

    conn = await _connect(p)
    ch = await conn.channel()
    await ch.basic_qos(prefetch_count=p.prefetch)
    tally = Tally(p.count)
    done: Deferred[None] = Deferred()
    out: dict[str, Any] = {"expected": p.count}

    def on_message(message: Any) -> None:
        message.ack()
        if tally.add_small(message.body) and not done.called:
            done.callback(None)

    meter.start()
    consumer = await ch.basic_consume(p.queue, on_message_callback=on_message)
    try:
        await watch(lambda: tally.received, p.stall, done)
    except Stalled as exc:
        out["stalled"] = str(exc)
    await ch.queue_declare(p.queue, passive=True, timeout=p.stall)  # acks are in
    meter.stop()
    await consumer.cancel()
    await conn.close()
    out.update(tally.result())
    return out


async def rpc(p: Params, meter: Meter) -> dict[str, Any]:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    from txpika import BasicProperties

    conn = await _connect(p)
    ch = await conn.channel()
    reply_queue = (await ch.queue_declare("", exclusive=True)).queue
    waiter: list[Deferred[Any] | None] = [None]

    def on_reply(message: Any) -> None:
        d = waiter[0]
        waiter[0] = None
        if d is not None:
            d.callback(message)

    await ch.basic_consume(reply_queue, on_message_callback=on_reply, auto_ack=True)
    body = b"r" * p.size
    latencies: list[float] = []
    bad = 0
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    try:
        for i in range(p.count):
            corr = str(i)
            d: Deferred[Any] = Deferred()
            waiter[0] = d
            d.addTimeout(p.stall, reactor)
            t0 = time.perf_counter()
            ch.basic_publish("", p.rpc_queue, body,
                             BasicProperties(reply_to=reply_queue, correlation_id=corr))
            reply = await d
            latencies.append(time.perf_counter() - t0)
            if reply.properties.correlation_id != corr or reply.body != body:
                bad += 1
    except Exception as exc:  # a timeout: report what we have
        out["stalled"] = f"{type(exc).__name__}: {exc}"
    meter.stop()
    await conn.close()
    out.update(latency_result(latencies), bad_replies=bad)
    return out


async def big(p: Params, meter: Meter) -> dict[str, Any]:
    from twisted.internet.defer import Deferred

    conn = await _connect(p)
    pub = await conn.channel()
    await pub.confirm_select()
    sub = await conn.channel()
    await sub.basic_qos(prefetch_count=p.prefetch)
    bodies = BigBodies(p.size)
    tally = Tally(p.count)
    out: dict[str, Any] = {"expected": p.count}
    meter.start()

    def one(index: int) -> Any:
        return pub.basic_publish("", p.queue, bodies.make(index))

    window = Window(one, p.count, p.window)
    try:
        await watch(lambda: window.progress, p.stall, window.start())
    except Stalled as exc:
        out["stalled"] = str(exc)
    out.update(window.result())
    done: Deferred[None] = Deferred()

    def on_message(message: Any) -> None:
        message.ack()
        if tally.add(bodies.check(message.body)) and not done.called:
            done.callback(None)

    consumer = await sub.basic_consume(p.queue, on_message_callback=on_message)
    try:
        await watch(lambda: tally.received, p.stall, done)
    except Stalled as exc:
        out["stalled"] = str(exc)
    await sub.queue_declare(p.queue, passive=True, timeout=p.stall)
    meter.stop()
    await consumer.cancel()
    await conn.close()
    out.update(tally.result())
    return out


def run(p: Params, meter: Meter) -> dict[str, Any]:
    if p.scenario == "publish":
        return twisted_main(publish, p, meter, False)
    if p.scenario == "publish-confirm":
        return twisted_main(publish, p, meter, True)
    if p.scenario == "consume":
        return twisted_main(consume, p, meter)
    if p.scenario == "rpc":
        return twisted_main(rpc, p, meter)
    if p.scenario in ("big", "big-await"):
        return twisted_main(big, p, meter)
    raise ValueError(p.scenario)
