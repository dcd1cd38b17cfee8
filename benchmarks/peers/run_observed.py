"""daemon.py's observed publishers: the at-least-once `txpika.Publisher` of
``run_service.publisher`` with Prometheus metrics on (``publisher-metrics``: a
`txpika.metrics.PrometheusObserver` on the service) or OpenTelemetry tracing on
(``publisher-tracing``: ``tracing=Tracing(provider)`` with the SDK's tracer provider, a
`BatchSpanProcessor` and an exporter that drops what it is given). The same harness as
``run_service``: the figures compare with ``txpika-publisher`` (both off).
"""

from __future__ import annotations

from typing import Any

from peers._common import Meter, Params, twisted_main
from peers.run_service import _publish_all


def sdk_provider() -> Any:
    """An SDK tracer provider whose spans are batched and dropped (no I/O)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return provider


async def observed_publisher(p: Params, meter: Meter) -> dict[str, Any]:
    from twisted.internet import reactor

    import txpika

    options: dict[str, Any] = {}
    observer = None
    if p.library == "publisher-metrics":
        from txpika.metrics import PrometheusObserver

        observer = PrometheusObserver()
    else:
        from txpika.tracing import Tracing

        options["tracing"] = Tracing(sdk_provider())
    service = txpika.AMQPService(reactor, p.url, observer=observer)
    service.startService()
    out: dict[str, Any] = {"expected": p.count}
    try:
        pub = await service.publisher(at_least_once=True, **options).addTimeout(p.stall,
                                                                               reactor)
        meter.start()
        await _publish_all(lambda body: pub.publish("", p.queue, body), p, out)
        meter.stop()
        out["republished"] = pub.republished
    finally:
        await service.stopService()
    return out


def run(p: Params, meter: Meter) -> dict[str, Any]:
    return twisted_main(observed_publisher, p, meter)
