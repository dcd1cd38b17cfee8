"""pika's Twisted adapter (``pika.adapters.twisted_connection.TwistedProtocolConnection``)."""

from __future__ import annotations

import contextlib
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
    pump,
    small_bodies,
    twisted_main,
    watch,
)


async def _connect(p: Params) -> Any:
    import pika
    from pika.adapters.twisted_connection import TwistedProtocolConnection
    from twisted.internet import reactor
    from twisted.internet.protocol import ClientCreator

    params = pika.ConnectionParameters(
        host=p.host, port=p.port, virtual_host=p.vhost,
        credentials=pika.PlainCredentials(p.user, p.password))
    creator = ClientCreator(reactor, TwistedProtocolConnection, params)
    conn = await creator.connectTCP(p.host, p.port, timeout=10)
    await conn.ready
    return conn


async def _close(conn: Any) -> None:
    from twisted.internet.defer import Deferred

    closed: Deferred[Any] | None = conn.closed
    conn.close()
    if closed is not None:
        with contextlib.suppress(Exception):
            await closed



async def publish(p: Params, meter: Meter, confirm: bool) -> dict[str, Any]:
    conn = await _connect(p)
    ch = await conn.channel()
    if confirm:
        await ch.confirm_delivery()
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
        for body in bodies:
            basic_publish("", queue, body)
        out["published"] = p.count
    await ch.queue_declare(queue=queue, passive=True)
    meter.stop()
    await _close(conn)
    return out


async def consume(p: Params, meter: Meter) -> dict[str, Any]:
    from twisted.internet.defer import Deferred

    conn = await _connect(p)
    ch = await conn.channel()
    await ch.basic_qos(prefetch_count=p.prefetch)
    tally = Tally(p.count)
    done: Deferred[None] = Deferred()
    out: dict[str, Any] = {"expected": p.count}

    def handle(message: Any) -> None:
        ch.basic_ack(delivery_tag=message.method.delivery_tag)
        if tally.add_small(message.body) and not done.called:
            done.callback(None)

    meter.start()
    queue_obj, tag = await ch.basic_consume(queue=p.queue)
    pump(queue_obj, handle, lambda: done.called)
    try:
        await watch(lambda: tally.received, p.stall, done)
    except Stalled as exc:
        out["stalled"] = str(exc)
    await ch.queue_declare(queue=p.queue, passive=True)
    meter.stop()
    await ch.basic_cancel(tag)
    await _close(conn)
    out.update(tally.result())
    return out


async def rpc(p: Params, meter: Meter) -> dict[str, Any]:
    import pika
    from twisted.internet import reactor

    conn = await _connect(p)
    ch = await conn.channel()
    frame = await ch.queue_declare(queue="", exclusive=True)
    reply_queue = frame.method.queue
    queue_obj, _tag = await ch.basic_consume(queue=reply_queue, auto_ack=True)
    body = b"r" * p.size
    latencies: list[float] = []
    bad = 0
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    try:
        for i in range(p.count):
            corr = str(i)
            t0 = time.perf_counter()
            ch.basic_publish("", p.rpc_queue, body,
                             pika.BasicProperties(reply_to=reply_queue, correlation_id=corr))
            d = queue_obj.get()
            d.addTimeout(p.stall, reactor)
            reply = await d
            latencies.append(time.perf_counter() - t0)
            if reply.properties.correlation_id != corr or reply.body != body:
                bad += 1
    except Exception as exc:
        out["stalled"] = f"{type(exc).__name__}: {exc}"
    meter.stop()
    await _close(conn)
    out.update(latency_result(latencies), bad_replies=bad)
    return out


async def big(p: Params, meter: Meter) -> dict[str, Any]:
    from twisted.internet.defer import Deferred

    conn = await _connect(p)
    pub = await conn.channel()
    await pub.confirm_delivery()
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

    def handle(message: Any) -> None:
        sub.basic_ack(delivery_tag=message.method.delivery_tag)
        if tally.add(bodies.check(message.body)) and not done.called:
            done.callback(None)

    queue_obj, tag = await sub.basic_consume(queue=p.queue)
    pump(queue_obj, handle, lambda: done.called)
    try:
        await watch(lambda: tally.received, p.stall, done)
    except Stalled as exc:
        out["stalled"] = str(exc)
    await sub.queue_declare(queue=p.queue, passive=True)
    meter.stop()
    await sub.basic_cancel(tag)
    await _close(conn)
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
