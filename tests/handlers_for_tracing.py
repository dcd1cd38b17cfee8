"""The handler of the ``twistd txpika --tracing`` run in tests/test_tracing.py (not a test
module). Importing it configures OpenTelemetry's SDK as the global tracer provider, with an
exporter that appends each finished span (kind, trace id, parent span id, name) as a JSON
line to the file named by ``TXPIKA_TEST_SPANS``; the handler records the span it runs in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class _FileExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(os.environ["TXPIKA_TEST_SPANS"], "a", encoding="utf-8") as out:
            for span in spans:
                out.write(json.dumps({
                    "name": span.name, "kind": span.kind.name,
                    "trace_id": f"{span.context.trace_id:032x}",
                    "parent": f"{span.parent.span_id:016x}" if span.parent else None,
                    "status": span.status.status_code.name,
                    "attributes": dict(span.attributes or {}),
                }) + "\n")
        return SpanExportResult.SUCCESS


_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_FileExporter()))
trace.set_tracer_provider(_provider)


def handle(message: Any) -> None:
    current = trace.get_current_span().get_span_context()
    with open(os.environ["TXPIKA_TEST_SPANS"], "a", encoding="utf-8") as out:
        out.write(json.dumps({"handler_in_trace": f"{current.trace_id:032x}"}) + "\n")
