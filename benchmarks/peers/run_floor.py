"""twisted-floor: a Twisted RPC client that does almost no AMQP work (the rpc scenario only).

A reference row, not a client. It shows how much of a Twisted client's CPU per round trip is
the reactor, the kernel and the harness, so the AMQP work of txpika, pika's adapter and
txAMQP can be read as what lies above it.

Setup, as in ``run_txpika.rpc``: txpika connects, opens a channel, declares an exclusive
server-named reply queue and consumes it with auto-ack. Then the runner takes over the
connection's input and output:

* Input: the protocol instance's ``dataReceived`` is replaced by a bare function (Twisted's
  TCP transport looks up ``protocol.dataReceived`` on each read). It only splits the bytes
  into frames (7-byte header: type, channel, size; payload; the ``0xCE`` end octet), keeps a
  partial frame for the next read, and counts body frames. A reply (a 128-byte body, one body
  frame) is one body frame, and each one fires the Deferred of the round trip. Nothing is
  decoded: the floor does not check the correlation id or the body of a reply, so it always
  reports ``bad_replies`` 0.
* Output: one publish (method, header with ``reply_to`` and ``correlation_id`` "0", and the
  body), encoded once with ``txpika.frames.encode_content`` before the timed part and written
  for each round trip with the connection's ``_write``: straight to the socket when the
  transport has nothing buffered (else ``transport.write``), as txpika writes; no channel,
  no core, no producer logic. Every request carries the same correlation id. (Plain
  ``transport.write``, as pika's adapter and txAMQP write, costs a reactor turn more per
  request: watch for writability, send, stop watching.)

The per-round-trip harness is the same as ``run_txpika.rpc``: a Deferred per round trip with
``addTimeout``, ``perf_counter`` latencies and `latency_result`. The AMQP state of the
txpika connection is no longer tracked once the runner took over, so the runner does not
close the connection with ``connection.close``: it drops the transport.
"""

from __future__ import annotations

import contextlib
import struct
import time
from typing import Any

from peers._common import Meter, Params, latency_result, twisted_main

#: Frame type of a content body frame.
FRAME_BODY = 3
FRAME_END = 0xCE
_HEADER = struct.Struct(">BHI")  # type, channel, payload size


async def rpc(p: Params, meter: Meter) -> dict[str, Any]:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    import txpika
    from txpika import frames, spec

    conn = await txpika.connect(reactor, p.url)
    ch = await conn.channel()
    reply_queue = (await ch.queue_declare("", exclusive=True)).queue
    await ch.basic_consume(reply_queue, on_message_callback=lambda message: None,
                           auto_ack=True)

    waiter: list[Deferred[Any] | None] = [None]
    leftover = [b""]
    errors: list[str] = []
    unpack_header = _HEADER.unpack_from

    def data_received(data: bytes) -> None:
        if leftover[0]:
            data = leftover[0] + data
        size = len(data)
        pos = 0
        replies = 0
        while size - pos >= 7:
            frame_type, _channel, payload = unpack_header(data, pos)
            end = pos + 7 + payload
            if end >= size:
                break  # the end octet is not here yet
            if data[end] != FRAME_END:
                errors.append(f"bad frame end at byte {pos} of a read")
                conn.transport.loseConnection()
                d = waiter[0]
                waiter[0] = None
                if d is not None:
                    d.errback(RuntimeError(errors[-1]))
                return
            if frame_type == FRAME_BODY:
                replies += 1
            pos = end + 1
        leftover[0] = data[pos:] if pos < size else b""
        for _ in range(replies):
            d = waiter[0]
            waiter[0] = None
            if d is not None:
                d.callback(None)

    body = b"r" * p.size
    request = b"".join(frames.encode_content(
        ch.channel_number, spec.Basic.Publish(0, "", p.rpc_queue),
        txpika.BasicProperties(reply_to=reply_queue, correlation_id="0"), body, 131072))
    conn.dataReceived = data_received  # from here on txpika sees no input
    write = conn._write  # txpika's write: straight to an idle socket
    latencies: list[float] = []
    out: dict[str, Any] = {"expected": p.count}
    meter.start()
    try:
        for _ in range(p.count):
            d: Deferred[Any] = Deferred()
            waiter[0] = d
            d.addTimeout(p.stall, reactor)
            t0 = time.perf_counter()
            write(request)
            await d
            latencies.append(time.perf_counter() - t0)
    except Exception as exc:  # a timeout or a bad frame: report what we have
        out["stalled"] = f"{type(exc).__name__}: {exc}"
    meter.stop()
    # The core no longer knows where the connection stands: drop the transport, no
    # connection.close. Wait (outside the timed part) until it is gone.
    gone = (conn.when_closed if hasattr(conn, "when_closed") else conn.closed)()
    gone.addTimeout(10, reactor)
    conn.transport.loseConnection()
    with contextlib.suppress(Exception):
        await gone
    out.update(latency_result(latencies), bad_replies=0)
    return out


def run(p: Params, meter: Meter) -> dict[str, Any]:
    if p.scenario == "rpc":
        return twisted_main(rpc, p, meter)
    # throughput.py shows the other scenarios as n/a and never starts a child for them.
    raise ValueError(f"twisted-floor exists for the rpc scenario only, not {p.scenario!r}")
