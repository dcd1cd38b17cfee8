"""The HTTP health and metrics endpoint of ``twistd txpika --health ENDPOINT``.

``GET /live`` answers 200 while the daemon runs; ``GET /ready`` 200 while the AMQP
service is open (or blocked: consuming goes on) and the consumer service is consuming,
else 503 with a one-line reason (``connecting``, ``recovering``, ``draining``,
``consumer cancelled``, ``consumer starting``, ``stopped``); ``GET /metrics`` the
Prometheus text format, or 501 with the install hint when ``prometheus_client`` is
missing; anything else 404. No answer names a broker, so none can hold a password.

The server stops listening only after the AMQP service closed its connection, so the
probes see the SIGTERM drain (``/ready``: 503 ``draining``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import Site

if TYPE_CHECKING:
    from txpika.client import AMQPService
    from txpika.consumer import ConsumerService
    from txpika.metrics import PrometheusObserver

__all__ = ["HealthResource", "HealthService", "readiness"]


def readiness(amqp: AMQPService, consumer: ConsumerService) -> str | None:
    """``None`` when ready, else the reason in a few words."""
    if consumer.state in ("draining", "stopped"):
        return consumer.state
    state = str(amqp.state)
    if state not in ("open", "blocked"):
        return "stopped" if state == "closed" else state
    if consumer.state != "consuming":
        return f"consumer {consumer.state}"
    return None


class HealthResource(Resource):
    """``/live``, ``/ready`` and ``/metrics`` (see the module docstring)."""

    isLeaf = True  # noqa: N815 - twisted.web's name

    def __init__(self, amqp: AMQPService, consumer: ConsumerService,
                 metrics: PrometheusObserver | None, metrics_missing: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.amqp = amqp
        self.consumer = consumer
        self.metrics = metrics
        self.metrics_missing = metrics_missing

    def render_GET(self, request: Any) -> bytes:  # noqa: N802 - twisted.web's name
        path = request.path
        if path == b"/live":
            return _text(request, 200, "live")
        if path == b"/ready":
            reason = readiness(self.amqp, self.consumer)
            return _text(request, 200, "ready") if reason is None else _text(
                request, 503, reason)
        if path == b"/metrics":
            if self.metrics is None:
                return _text(request, 501, self.metrics_missing)
            request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
            return self.metrics.exposition()
        return _text(request, 404, "not found: try /live, /ready or /metrics")


def _text(request: Any, code: int, line: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return (line + "\n").encode()


class _QuietSite(Site):
    """A site that does not log every request (probes come every few seconds)."""

    def log(self, request: Any) -> None:
        pass


class HealthService(Service):
    """Listens on ``description`` (a Twisted server endpoint description) while the daemon
    runs; `stopService` waits for the AMQP service to have closed before it stops
    listening."""

    def __init__(self, reactor: Any, description: str, resource: HealthResource) -> None:
        self.reactor = reactor
        self.description = description
        self.site = _QuietSite(resource)  # type: ignore[no-untyped-call]
        self.site.displayTracebacks = False
        self.amqp = resource.amqp
        self._port: Deferred[Any] | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        endpoint = serverFromString(  # type: ignore[no-untyped-call]
            self.reactor, self.description)
        self._port = endpoint.listen(self.site)
        self._port.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        from twisted.logger import Logger

        Logger().error("--health {endpoint}: cannot listen: {error}",
                       endpoint=self.description, error=failure.value)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        port, self._port = self._port, None

        def stop(_: object) -> Deferred[None] | None:
            if port is None:
                return None
            return port.addCallback(lambda p: maybeDeferred(p.stopListening) if p else None)

        return self.amqp.when_closed().addCallback(stop)
