"""txAMQP (the ``txAMQP3`` distribution, package ``txamqp``) on Twisted's default reactor.

txAMQP3 ships the AMQP 0-9-1 spec XML without RabbitMQ's extensions, so publisher confirms
(``confirm.select``, ``basic.ack``/``basic.nack`` from the broker) are added here to a copy
of that XML, and a delegate handles the broker's acks. Unconfirmed publishes are tracked by
this runner (txAMQP has no confirm API of its own).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
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

_NACK = """    <method name="nack" index="120">
      <chassis name="client" implement="MUST"/>
      <field name="delivery-tag" domain="delivery-tag"/>
      <field name="multiple" domain="bit"/>
      <field name="requeue" domain="bit"/>
    </method>
"""
_CONFIRM = """  <class name="confirm" handler="channel" index="85">
    <chassis name="server" implement="MAY"/>
    <chassis name="client" implement="MAY"/>
    <method name="select" synchronous="1" index="10">
      <chassis name="server" implement="MUST"/>
      <response name="select-ok"/>
      <field name="nowait" domain="bit"/>
    </method>
    <method name="select-ok" synchronous="1" index="11">
      <chassis name="client" implement="MUST"/>
    </method>
  </class>
"""


def _spec() -> Any:
    import txamqp
    import txamqp.spec

    base = os.path.join(os.path.dirname(txamqp.__file__), "specs", "standard",
                        "amqp0-9-1.stripped.xml")
    with open(base, encoding="utf-8") as fh:
        xml = fh.read()
    marker = '  <class name="tx"'
    basic_end = xml.index("  </class>", xml.index('<class name="basic"'))
    xml = xml[:basic_end] + _NACK + xml[basic_end:]
    at = xml.index(marker)
    xml = xml[:at] + _CONFIRM + xml[at:]
    fd, path = tempfile.mkstemp(suffix=".xml", prefix="txamqp-0-9-1-confirm-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(xml)
    try:
        return txamqp.spec.load(path)
    finally:
        os.unlink(path)


class _Confirms:
    """Deferreds of unconfirmed publishes by delivery tag (tags count from 1)."""

    def __init__(self) -> None:
        self.next_tag = 1
        self.lowest = 1
        self.pending: dict[int, Any] = {}

    def add(self) -> Any:
        from twisted.internet.defer import Deferred

        d: Deferred[None] = Deferred()
        self.pending[self.next_tag] = d
        self.next_tag += 1
        return d

    def settle(self, tag: int, multiple: bool, ok: bool) -> None:
        tags = range(self.lowest, tag + 1) if multiple else (tag,)
        for t in tags:
            d = self.pending.pop(t, None)
            if d is not None:
                if ok:
                    d.callback(None)
                else:
                    d.errback(RuntimeError(f"nack {t}"))
        while self.lowest < self.next_tag and self.lowest not in self.pending:
            self.lowest += 1


def _delegate_class() -> Any:
    from txamqp.client import TwistedDelegate

    class Delegate(TwistedDelegate):  # type: ignore[misc]
        confirms: _Confirms | None = None

        def basic_ack(self, ch: Any, msg: Any) -> None:
            if self.confirms is not None:
                self.confirms.settle(msg.delivery_tag, msg.multiple, True)

        def basic_nack(self, ch: Any, msg: Any) -> None:
            if self.confirms is not None:
                self.confirms.settle(msg.delivery_tag, msg.multiple, False)

    return Delegate


async def _connect(p: Params) -> tuple[Any, Any]:
    from twisted.internet import reactor
    from twisted.internet.protocol import ClientCreator
    from txamqp.protocol import AMQClient

    delegate = _delegate_class()()
    creator = ClientCreator(reactor, AMQClient, delegate=delegate, vhost=p.vhost, spec=_spec())
    conn = await creator.connectTCP(p.host, p.port, timeout=10)
    await conn.authenticate(p.user, p.password)
    return conn, delegate


async def _channel(conn: Any, number: int) -> Any:
    ch = await conn.channel(number)
    await ch.channel_open()
    return ch


async def _close(conn: Any) -> None:
    with contextlib.suppress(Exception):
        await conn.close(within=5)



def _confirmed_publisher(ch: Any, delegate: Any, routing_key: str, body_of: Any) -> Any:
    from txamqp.content import Content

    confirms = delegate.confirms = _Confirms()

    def one(index: int) -> Any:
        ch.basic_publish(exchange="", routing_key=routing_key, content=Content(body_of(index)))
        return confirms.add()

    return one


async def publish(p: Params, meter: Meter, confirm: bool) -> dict[str, Any]:
    from txamqp.content import Content

    conn, delegate = await _connect(p)
    ch = await _channel(conn, 1)
    if confirm:
        await ch.confirm_select()
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    if confirm:
        window = Window(_confirmed_publisher(ch, delegate, queue, bodies.__getitem__),
                        p.count, p.window)
        try:
            await watch(lambda: window.progress, p.stall, window.start())
        except Stalled as exc:
            out["stalled"] = str(exc)
        out.update(window.result())
    else:
        basic_publish = ch.basic_publish
        for body in bodies:
            basic_publish(exchange="", routing_key=queue, content=Content(body))
        out["published"] = p.count
    await ch.queue_declare(queue=queue, passive=True)
    meter.stop()
    await _close(conn)
    return out


async def consume(p: Params, meter: Meter) -> dict[str, Any]:
    from twisted.internet.defer import Deferred

    conn, _delegate = await _connect(p)
    ch = await _channel(conn, 1)
    await ch.basic_qos(prefetch_count=p.prefetch)
    tally = Tally(p.count)
    done: Deferred[None] = Deferred()
    out: dict[str, Any] = {"expected": p.count}

    def handle(message: Any) -> None:
        ch.basic_ack(delivery_tag=message.delivery_tag)
        if tally.add_small(message.content.body) and not done.called:
            done.callback(None)

    meter.start()
    reply = await ch.basic_consume(queue=p.queue)
    queue_obj = await conn.queue(reply.consumer_tag)
    pump(queue_obj, handle, lambda: done.called)
    try:
        await watch(lambda: tally.received, p.stall, done)
    except Stalled as exc:
        out["stalled"] = str(exc)
    await ch.queue_declare(queue=p.queue, passive=True)
    meter.stop()
    await ch.basic_cancel(consumer_tag=reply.consumer_tag)
    await _close(conn)
    out.update(tally.result())
    return out


async def rpc(p: Params, meter: Meter) -> dict[str, Any]:
    from twisted.internet import reactor
    from txamqp.content import Content

    conn, _delegate = await _connect(p)
    ch = await _channel(conn, 1)
    reply_queue = (await ch.queue_declare(queue="", exclusive=True)).queue
    reply = await ch.basic_consume(queue=reply_queue, no_ack=True)
    queue_obj = await conn.queue(reply.consumer_tag)
    body = b"r" * p.size
    latencies: list[float] = []
    bad = 0
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    try:
        for i in range(p.count):
            corr = str(i)
            t0 = time.perf_counter()
            ch.basic_publish(exchange="", routing_key=p.rpc_queue, content=Content(
                body, properties={"reply-to": reply_queue, "correlation-id": corr}))
            d = queue_obj.get()
            d.addTimeout(p.stall, reactor)
            message = await d
            latencies.append(time.perf_counter() - t0)
            got = message.content.properties.get("correlation-id")
            if got != corr or message.content.body != body:
                bad += 1
    except Exception as exc:
        out["stalled"] = f"{type(exc).__name__}: {exc}"
    meter.stop()
    await _close(conn)
    out.update(latency_result(latencies), bad_replies=bad)
    return out


async def big(p: Params, meter: Meter) -> dict[str, Any]:
    from twisted.internet.defer import Deferred

    conn, delegate = await _connect(p)
    pub = await _channel(conn, 1)
    await pub.confirm_select()
    sub = await _channel(conn, 2)
    await sub.basic_qos(prefetch_count=p.prefetch)
    bodies = BigBodies(p.size)
    tally = Tally(p.count)
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    window = Window(_confirmed_publisher(pub, delegate, p.queue, bodies.make), p.count,
                    p.window)
    try:
        await watch(lambda: window.progress, p.stall, window.start())
    except Stalled as exc:
        out["stalled"] = str(exc)
    out.update(window.result())
    done: Deferred[None] = Deferred()

    def handle(message: Any) -> None:
        sub.basic_ack(delivery_tag=message.delivery_tag)
        if tally.add(bodies.check(message.content.body)) and not done.called:
            done.callback(None)

    reply = await sub.basic_consume(queue=p.queue)
    queue_obj = await conn.queue(reply.consumer_tag)
    pump(queue_obj, handle, lambda: done.called)
    try:
        await watch(lambda: tally.received, p.stall, done)
    except Stalled as exc:
        out["stalled"] = str(exc)
    await sub.queue_declare(queue=p.queue, passive=True)
    meter.stop()
    await sub.basic_cancel(consumer_tag=reply.consumer_tag)
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
