"""txpika's blocking adapter (`txpika.blocking`, this checkout): plain sockets, no reactor."""

from __future__ import annotations

from typing import Any

from peers._common import BigBodies, Meter, Params, Stalled, Tally, small_bodies

from peers_blocking import Progress


def _connect(p: Params) -> Any:
    from txpika import blocking

    return blocking.connect(p.url)


def publish(p: Params, meter: Meter) -> dict[str, Any]:
    """No confirms: each basic_publish returns once its frames are written."""
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
    ch.queue_declare(queue, passive=True, timeout=p.stall)  # the broker has read them all
    meter.stop()
    conn.close()
    return {"published": p.count}


def confirm_single(p: Params, meter: Meter) -> dict[str, Any]:
    """Confirm mode, one at a time: basic_publish returns on the broker's ack."""
    conn = _connect(p)
    ch = conn.channel()
    ch.confirm_select()
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    acked = nacked = 0
    out: dict[str, Any] = {}
    meter.start()
    try:
        for body in bodies:
            try:
                ch.basic_publish("", queue, body, timeout=p.stall)
                acked += 1
            except TimeoutError:
                raise
            except Exception:  # NackError, UnroutableError, OutcomeUnknownError
                nacked += 1
    except TimeoutError as exc:
        out["stalled"] = f"TimeoutError: {exc}"
    meter.stop()
    conn.close()
    out.update(published=acked + nacked, acked=acked, nacked=nacked)
    return out


def confirm_batch(p: Params, meter: Meter) -> dict[str, Any]:
    """Confirm mode, pipelined: publish_batch of ``p.window`` messages, which returns once
    every message of the batch is confirmed (one round trip per batch)."""
    conn = _connect(p)
    ch = conn.channel()
    ch.confirm_select()
    bodies = small_bodies(p.count, p.size)
    queue = p.queue
    batch = p.window
    acked = nacked = 0
    out: dict[str, Any] = {}
    meter.start()
    try:
        for start in range(0, p.count, batch):
            outcomes = ch.publish_batch([("", queue, body)
                                         for body in bodies[start:start + batch]],
                                        timeout=p.stall)
            for outcome in outcomes:
                if outcome is None:
                    acked += 1
                else:
                    nacked += 1
    except TimeoutError as exc:
        out["stalled"] = f"TimeoutError: {exc}"
    meter.stop()
    conn.close()
    out.update(published=acked + nacked, acked=acked, nacked=nacked)
    return out


def consume(p: Params, meter: Meter) -> dict[str, Any]:
    """basic_consume with a callback (ack each message), serviced by process_data_events."""
    conn = _connect(p)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=p.prefetch)
    big = p.size > 1 << 20
    checker = BigBodies(p.size) if big else None
    tally = Tally(p.count)
    done = [False]
    out: dict[str, Any] = {}

    if checker is not None:
        def on_message(message: Any) -> None:
            message.ack()
            if tally.add(checker.check(message.body)):
                done[0] = True
    else:
        def on_message(message: Any) -> None:
            message.ack()
            if tally.add_small(message.body):
                done[0] = True

    progress = Progress(p.stall)
    meter.start()
    consumer = ch.basic_consume(p.queue, on_message)
    try:
        # The same loop as pika's runner. (txpika's process_data_events runs for its whole
        # time_limit; pika's returns early once it dispatched something.)
        while not done[0]:
            conn.process_data_events(0.05)
            progress.check(tally.received)
    except Stalled as exc:
        out["stalled"] = str(exc)
    ch.queue_declare(p.queue, passive=True, timeout=p.stall)  # the acks are in
    meter.stop()
    consumer.cancel()
    conn.close()
    out.update(tally.result())
    return out


def consume_iter(p: Params, meter: Meter) -> dict[str, Any]:
    """The generator API: ``for message in ch.consume(queue)``, ack each message."""
    conn = _connect(p)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=p.prefetch)
    tally = Tally(p.count)
    out: dict[str, Any] = {}
    meter.start()
    messages = ch.consume(p.queue, inactivity_timeout=p.stall)
    for message in messages:
        if message is None:
            out["stalled"] = f"no message for {p.stall:g} s"
            break
        message.ack()
        if tally.add_small(message.body):
            break
    ch.queue_declare(p.queue, passive=True, timeout=p.stall)  # the acks are in
    meter.stop()
    messages.close()  # cancels the consumer
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
