#!/usr/bin/env python3
"""In-memory companion of daemon.py: what observers cost `ConsumerService` and `Publisher`.

No broker and no socket: the service runs on a ``MemoryReactorClock`` with the scripted
broker of the test suite (tests/servicesim.py), so the figures are steady on a busy machine
where the broker runs of daemon.py vary by 10 to 20 %. Client CPU per message (process time,
best of ``--repeat``):

consume
    20,000 pre-encoded deliveries of 128 B fed in reads of 64 KiB to a `ConsumerService`
    whose handler returns at once (the daemon's fast path; the acks are written and
    dropped).
publish
    20,000 publishes of 128 B through ``service.publisher()`` (confirms), 1,000 at a time,
    each batch confirmed by one ``basic.ack`` with ``multiple``.

Modes: ``off`` (no observer, no tracing), ``metrics`` (a `PrometheusObserver` on the
service), ``tracing`` (``Tracing`` with the SDK's tracer provider and a span processor
that drops each span as it ends). Run ``off`` with ``--txpika-path`` pointing at a tree
from before the observers existed to see that with both off they cost nothing::

    git archive f1ab42f txpika twisted | tar -x -C /tmp/before
    python3 benchmarks/daemon_inmemory.py --txpika-path /tmp/before --modes off
    python3 benchmarks/daemon_inmemory.py
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COUNT = 20_000
BATCH = 1000


def _tools(mode: str) -> tuple[Any, Any]:
    observer = tracing = None
    if mode == "metrics":
        from txpika.metrics import PrometheusObserver

        observer = PrometheusObserver()
    elif mode == "tracing":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            SimpleSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        from txpika.tracing import Tracing

        class Drop(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Drop()))
        tracing = Tracing(provider)
    return observer, tracing


def consume(mode: str) -> float:
    from servicesim import ServiceSim
    from test_consumer_service import consumer_tag, expect_consume

    from txpika import spec
    from txpika.consumer import ConsumerService
    from txpika.frames import encode_body, encode_header, encode_method

    observer, tracing = _tools(mode)
    sim = ServiceSim(**({"observer": observer} if observer else {}))
    conn = sim.open()
    consumer = ConsumerService(sim.service, "jobs", lambda message: None, prefetch=0,
                               **({"tracing": tracing} if tracing else {}))
    consumer.startService()
    conn.open_ok(1)
    expect_consume(conn, "jobs", 0)
    tag = consumer_tag(conn, "jobs")
    props = spec.BasicProperties(delivery_mode=2)
    data = b"".join(
        encode_method(1, spec.Basic.Deliver(tag, n, False, "", "jobs"))
        + encode_header(1, 128, props) + b"".join(bytes(p) for p in encode_body(1, b"x" * 128))
        for n in range(1, COUNT + 1))
    reads = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    gc.collect()
    started = time.process_time()
    for read in reads:
        conn.protocol.dataReceived(read)
        conn.transport.clear()
    return (time.process_time() - started) / COUNT * 1e6


def publish(mode: str) -> float:
    from servicesim import ServiceSim

    from txpika import spec
    from txpika.frames import encode_method

    observer, tracing = _tools(mode)
    sim = ServiceSim(**({"observer": observer} if observer else {}))
    conn = sim.open()
    opened = sim.service.publisher(**({"tracing": tracing} if tracing else {}))
    conn.open_ok(1)
    conn.step(1, spec.Confirm.Select(False), spec.Confirm.SelectOk())
    publisher: Any = []
    opened.addCallback(publisher.append)
    (publisher,) = publisher
    gc.collect()
    started = time.process_time()
    for first in range(0, COUNT, BATCH):
        confirms = [publisher.publish("", "jobs", b"x" * 128) for _ in range(BATCH)]
        conn.transport.clear()
        conn.protocol.dataReceived(encode_method(1, spec.Basic.Ack(first + BATCH, True)))
        assert all(d.called for d in confirms)
    return (time.process_time() - started) / COUNT * 1e6


def child(tree: str, mode: str, repeat: int) -> None:
    sys.path[:0] = [tree, str(ROOT / "tests")]
    import txpika

    assert Path(txpika.__file__).resolve().is_relative_to(Path(tree).resolve())
    best_consume = min(consume(mode) for _ in range(repeat))
    best_publish = min(publish(mode) for _ in range(repeat))
    print(f"RESULT {best_consume:.2f} {best_publish:.2f}")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--txpika-path", default=str(ROOT), help="import txpika from here")
    parser.add_argument("--modes", default="off,metrics,tracing")
    parser.add_argument("--repeat", type=int, default=11)
    args = parser.parse_args()
    print(f"txpika from {args.txpika_path}; {COUNT:,} messages, best of {args.repeat}")
    print(f"{'mode':8s} {'consume us/msg':>15s} {'publish us/msg':>15s}")
    off: tuple[float, float] | None = None
    for mode in args.modes.split(","):
        proc = subprocess.run([sys.executable, __file__, "--child", args.txpika_path, mode,
                               str(args.repeat)], capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{mode:8s} ERROR\n{proc.stderr[-2000:]}")
            continue
        c, p = (float(x) for x in lines[0].split()[1:])
        extra = ""
        if off is not None:
            extra = f"   (+{c - off[0]:.2f} / +{p - off[1]:.2f} us over off)"
        else:
            off = (c, p)
        print(f"{mode:8s} {c:15.2f} {p:15.2f}{extra}")


if __name__ == "__main__":
    main()
