"""py-amqp (the ``amqp`` package, Celery's and kombu's transport): blocking sockets."""

from __future__ import annotations

import contextlib
from typing import Any

from peers._common import BigBodies, Meter, Params, Stalled, Tally, small_bodies

from peers_blocking import Progress


def _connect(p: Params, confirm_publish: bool = False) -> Any:
    import amqp

    conn = amqp.Connection(host=f"{p.host}:{p.port}", userid=p.user, password=p.password,
                           virtual_host=p.vhost, confirm_publish=confirm_publish,
                           connect_timeout=p.stall)
    conn.connect()
    return conn


def publish(p: Params, meter: Meter) -> dict[str, Any]:
    """basic_publish takes an ``amqp.Message``; building it is part of each publish."""
    from amqp import Message

    conn = _connect(p)
    ch = conn.channel()
    queue = p.queue
    big = p.size > 1 << 20
    bodies = BigBodies(p.size) if big else None
    small = None if big else small_bodies(p.count, p.size)
    meter.start()
    basic_publish = ch.basic_publish
    if bodies is not None:
        for i in range(p.count):
            basic_publish(Message(bodies.make(i)), "", queue)
    else:
        assert small is not None
        for body in small:
            basic_publish(Message(body), "", queue)
    ch.queue_declare(queue, passive=True)  # the broker has read them all
    meter.stop()
    conn.close()
    return {"published": p.count}


def confirm_single(p: Params, meter: Meter) -> dict[str, Any]:
    """``Connection(confirm_publish=True)``: every basic_publish waits for its ack (what
    kombu does with ``confirm_publish``)."""
    from amqp import Message
    from amqp.exceptions import MessageNacked

    conn = _connect(p, confirm_publish=True)
    ch = conn.channel()
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    acked = nacked = 0
    out: dict[str, Any] = {}
    meter.start()
    try:
        for body in bodies:
            try:
                ch.basic_publish(Message(body), "", queue, confirm_timeout=p.stall)
                acked += 1
            except MessageNacked:
                nacked += 1
    except TimeoutError as exc:
        out["stalled"] = f"timeout: {exc}"
    meter.stop()
    conn.close()
    out.update(published=acked + nacked, acked=acked, nacked=nacked)
    return out


def confirm_batch(p: Params, meter: Meter) -> dict[str, Any]:
    """py-amqp's confirm_publish=True is one publish per round trip. Pipelined, with its
    public API: ``confirm_select()`` on a plain connection, ``basic_ack``/``basic_nack``
    handlers in ``channel.events``, then per batch ``p.window`` publishes and
    ``drain_events`` until every one is settled."""
    from amqp import Message

    conn = _connect(p)
    ch = conn.channel()
    ch.confirm_select()
    through = [0]  # every tag up to this one is settled (a multiple ack or nack)
    singles: set[int] = set()  # tags settled one by one, above ``through``
    nacks: set[int] = set()

    def on_ack(tag: int, multiple: bool) -> None:
        if multiple:
            if tag > through[0]:
                through[0] = tag
        else:
            singles.add(tag)

    def on_nack(tag: int, multiple: bool) -> None:
        start = through[0] + 1 if multiple else tag
        nacks.update(range(start, tag + 1))
        on_ack(tag, multiple)

    ch.events["basic_ack"].add(on_ack)
    ch.events["basic_nack"].add(on_nack)
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    batch = p.window
    published = 0
    out: dict[str, Any] = {}
    progress = Progress(p.stall)
    meter.start()
    basic_publish = ch.basic_publish
    drain_events = conn.drain_events
    try:
        for start in range(0, p.count, batch):
            chunk = bodies[start:start + batch]
            for body in chunk:
                basic_publish(Message(body), "", queue)
            published += len(chunk)
            while True:
                # settled: every tag through ``through``, and the singles above it
                t = through[0]
                if t >= published or t + sum(1 for s in singles if s > t) >= published:
                    break
                with contextlib.suppress(TimeoutError):  # (socket.timeout)
                    drain_events(timeout=1.0)
                progress.check(through[0] + len(singles))
            through[0] = published  # the whole batch is settled
            singles.clear()
    except Stalled as exc:
        out["stalled"] = str(exc)
    meter.stop()
    conn.close()
    out.update(published=published, acked=published - len(nacks), nacked=len(nacks))
    return out


def consume(p: Params, meter: Meter) -> dict[str, Any]:
    """basic_consume with a callback (ack each message), serviced by drain_events."""
    conn = _connect(p)
    ch = conn.channel()
    ch.basic_qos(0, p.prefetch, False)
    big = p.size > 1 << 20
    checker = BigBodies(p.size) if big else None
    tally = Tally(p.count)
    done = [False]
    out: dict[str, Any] = {}
    basic_ack = ch.basic_ack

    if checker is not None:
        def on_message(message: Any) -> None:
            basic_ack(message.delivery_tag)
            if tally.add(checker.check(message.body)):
                done[0] = True
    else:
        def on_message(message: Any) -> None:
            basic_ack(message.delivery_tag)
            if tally.add_small(message.body):
                done[0] = True

    progress = Progress(p.stall)
    meter.start()
    tag = ch.basic_consume(p.queue, callback=on_message)
    drain_events = conn.drain_events
    try:
        while not done[0]:
            with contextlib.suppress(TimeoutError):  # (socket.timeout)
                drain_events(timeout=1.0)
            progress.check(tally.received)
    except Stalled as exc:
        out["stalled"] = str(exc)
    ch.queue_declare(p.queue, passive=True)  # the acks are in
    meter.stop()
    ch.basic_cancel(tag)
    conn.close()
    out.update(tally.result())
    return out


def run(p: Params, meter: Meter) -> dict[str, Any]:
    if p.scenario in ("publish", "big-publish"):
        return publish(p, meter)
    if p.scenario == "confirm-single":
        return confirm_single(p, meter)
    if p.scenario == "confirm-batch":
        return confirm_batch(p, meter)
    if p.scenario in ("consume", "big-consume"):
        return consume(p, meter)
    raise ValueError(p.scenario)  # consume-iter: py-amqp has no generator API
