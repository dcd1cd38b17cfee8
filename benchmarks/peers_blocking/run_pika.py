"""pika's BlockingConnection (``pika.adapters.blocking_connection``)."""

from __future__ import annotations

from typing import Any

from peers._common import BigBodies, Meter, Params, Stalled, Tally, small_bodies

from peers_blocking import Progress


def _connect(p: Params) -> Any:
    import pika

    return pika.BlockingConnection(pika.ConnectionParameters(
        host=p.host, port=p.port, virtual_host=p.vhost,
        credentials=pika.PlainCredentials(p.user, p.password),
        blocked_connection_timeout=p.stall))


def publish(p: Params, meter: Meter) -> dict[str, Any]:
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
            basic_publish("", queue, bodies.make(i))
    else:
        assert small is not None
        for body in small:
            basic_publish("", queue, body)
    ch.queue_declare(queue, passive=True)  # the broker has read them all
    meter.stop()
    conn.close()
    return {"published": p.count}


def confirm_single(p: Params, meter: Meter) -> dict[str, Any]:
    """confirm_delivery(): every basic_publish then waits for its ack."""
    import pika.exceptions

    conn = _connect(p)
    ch = conn.channel()
    ch.confirm_delivery()
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    acked = nacked = 0
    meter.start()
    for body in bodies:
        try:
            ch.basic_publish("", queue, body)
            acked += 1
        except (pika.exceptions.NackError, pika.exceptions.UnroutableError):
            nacked += 1
    meter.stop()
    conn.close()
    return {"published": acked + nacked, "acked": acked, "nacked": nacked}


def confirm_batch(p: Params, meter: Meter) -> dict[str, Any]:
    """BlockingConnection has no pipelined confirms: in confirm mode every basic_publish
    waits for its own ack. Its closest public equivalent is a transaction per batch:
    tx_select once, then ``p.window`` publishes and one tx_commit (one round trip per
    batch; the broker has taken the batch when commit-ok arrives)."""
    conn = _connect(p)
    ch = conn.channel()
    ch.tx_select()
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    batch = p.window
    acked = 0
    meter.start()
    basic_publish = ch.basic_publish
    for start in range(0, p.count, batch):
        chunk = bodies[start:start + batch]
        for body in chunk:
            basic_publish("", queue, body)
        ch.tx_commit()
        acked += len(chunk)
    meter.stop()
    conn.close()
    return {"published": acked, "acked": acked, "nacked": 0}


def consume(p: Params, meter: Meter) -> dict[str, Any]:
    """basic_consume with a callback (ack each message), serviced by process_data_events
    (what start_consuming does, with a way out)."""
    conn = _connect(p)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=p.prefetch)
    big = p.size > 1 << 20
    checker = BigBodies(p.size) if big else None
    tally = Tally(p.count)
    done = [False]
    out: dict[str, Any] = {}

    if checker is not None:
        def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            channel.basic_ack(method.delivery_tag)
            if tally.add(checker.check(body)):
                done[0] = True
    else:
        def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            channel.basic_ack(method.delivery_tag)
            if tally.add_small(body):
                done[0] = True

    progress = Progress(p.stall)
    meter.start()
    tag = ch.basic_consume(p.queue, on_message)
    try:
        while not done[0]:
            conn.process_data_events(0.05)  # returns as soon as it dispatched something
            progress.check(tally.received)
    except Stalled as exc:
        out["stalled"] = str(exc)
    ch.queue_declare(p.queue, passive=True)  # the acks are in
    meter.stop()
    ch.basic_cancel(tag)
    conn.close()
    out.update(tally.result())
    return out


def consume_iter(p: Params, meter: Meter) -> dict[str, Any]:
    """The generator API: ``for method, properties, body in ch.consume(queue)``."""
    conn = _connect(p)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=p.prefetch)
    tally = Tally(p.count)
    out: dict[str, Any] = {}
    meter.start()
    for method, _properties, body in ch.consume(p.queue, inactivity_timeout=p.stall):
        if method is None:
            out["stalled"] = f"no message for {p.stall:g} s"
            break
        ch.basic_ack(method.delivery_tag)
        if tally.add_small(body):
            break
    ch.queue_declare(p.queue, passive=True)  # the acks are in
    meter.stop()
    ch.cancel()
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
    if p.scenario == "consume-iter":
        return consume_iter(p, meter)
    raise ValueError(p.scenario)
