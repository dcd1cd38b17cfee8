"""daemon.py's handler for ``twistd txpika --tracing``: `daemon_handler.handle`, with the
OpenTelemetry SDK configured as the global tracer provider when twistd imports it (spans
batched and dropped: the cost measured is making them, not exporting them)."""

from __future__ import annotations

from opentelemetry import trace

from peers.daemon_handler import handle
from peers.run_observed import sdk_provider

trace.set_tracer_provider(sdk_provider())

__all__ = ["handle"]
