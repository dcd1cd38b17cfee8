"""The children of daemon.py (besides ``twistd txpika`` itself): the bare callback consumer
the daemon is compared with, and the at-least-once `txpika.Publisher` against bare
pipelined confirmed publishes on a plain channel.

Scenarios (``Params.scenario``; ``Params.library`` says which side):

``daemon-p*`` / ``bare-callback``
    ``txpika.connect``, one channel, ``basic_qos(prefetch)``, then
    ``basic_consume(queue, on_message_callback=cb)`` where ``cb`` calls ``message.ack()``
    and then the same `daemon_handler.Recorder` as the daemon's handler. The figures are
    the recorder's (first to last delivery).
``publisher-batch`` / ``publisher-window``
    50,000 x 128 B, confirmed. ``txpika-publisher``: ``AMQPService(reactor, url)``,
    ``service.publisher(at_least_once=True)``, ``publisher.publish("", queue, body)``.
    ``bare-confirm``: ``txpika.connect``, a channel, ``confirm_select()``,
    ``channel.basic_publish("", queue, body)``. Both sides use the same harness:
    ``-batch`` publishes ``window`` messages, then awaits ``gatherResults`` of their
    Deferreds, and so on (what a user writes); ``-window`` keeps ``window`` unconfirmed
    with the sliding `Window` of throughput.py's publish-confirm. The timed part starts
    once the publisher (or the channel) is open.
"""

from __future__ import annotations

from typing import Any

from peers._common import Meter, Params, Stalled, Window, small_bodies, twisted_main, watch
from peers.daemon_handler import Recorder


async def bare_consume(p: Params, meter: Meter) -> dict[str, Any]:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    import txpika

    conn = await txpika.connect(reactor, p.url)
    ch = await conn.channel()
    await ch.basic_qos(prefetch_count=p.prefetch)
    recorder = Recorder(p.count)
    done: Deferred[None] = Deferred()
    recorder.when_done(lambda _: done.callback(None))
    record = recorder.record

    def on_message(message: Any) -> None:
        message.ack()
        record(message.body)

    consumer = await ch.basic_consume(p.queue, on_message_callback=on_message)
    out: dict[str, Any] = {"expected": p.count}
    try:
        await watch(lambda: recorder.tally.received, p.stall, done)
    except Stalled as exc:
        out["stalled"] = str(exc)
    await ch.queue_declare(p.queue, passive=True, timeout=p.stall)  # the acks are in
    await consumer.cancel()
    await conn.close()
    out.update(recorder.result or recorder.tally.result())
    return out


async def _publish_all(publish: Any, p: Params, out: dict[str, Any]) -> None:
    """Publish ``p.count`` bodies with ``publish(body)`` (a Deferred that fires on the
    broker's ack), in batches (``publisher-batch``) or a sliding window."""
    from twisted.internet import reactor
    from twisted.internet.defer import gatherResults

    bodies = small_bodies(p.count, p.size)
    if p.scenario == "publisher-window":
        window = Window(lambda i: publish(bodies[i]), p.count, p.window)
        try:
            await watch(lambda: window.progress, p.stall, window.start())
        except Stalled as exc:
            out["stalled"] = str(exc)
        out.update(window.result())
        return
    acked = 0
    try:
        for start in range(0, p.count, p.window):
            batch = gatherResults([publish(body) for body in bodies[start:start + p.window]])
            await batch.addTimeout(p.stall, reactor)
            acked += min(p.window, p.count - start)
    except Exception as exc:  # a nack, a timeout: report what we have
        out["stalled"] = f"{type(exc).__name__}: {exc}"
    out.update(published=p.count, acked=acked, nacked=0)


async def publisher(p: Params, meter: Meter) -> dict[str, Any]:
    from twisted.internet import reactor

    import txpika

    service = txpika.AMQPService(reactor, p.url)
    service.startService()
    out: dict[str, Any] = {"expected": p.count}
    try:
        pub = await service.publisher(at_least_once=True).addTimeout(p.stall, reactor)
        meter.start()
        await _publish_all(lambda body: pub.publish("", p.queue, body), p, out)
        meter.stop()
        out["republished"] = pub.republished
    finally:
        await service.stopService()
    return out


async def bare_confirm(p: Params, meter: Meter) -> dict[str, Any]:
    from twisted.internet import reactor

    import txpika

    conn = await txpika.connect(reactor, p.url)
    ch = await conn.channel()
    await ch.confirm_select()
    basic_publish = ch.basic_publish
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    await _publish_all(lambda body: basic_publish("", p.queue, body), p, out)
    meter.stop()
    await conn.close()
    return out


def run(p: Params, meter: Meter) -> dict[str, Any]:
    if p.library == "bare-callback":
        return twisted_main(bare_consume, p, meter)
    if p.library == "txpika-publisher":
        return twisted_main(publisher, p, meter)
    if p.library == "bare-confirm":
        return twisted_main(bare_confirm, p, meter)
    raise ValueError(p.library)
