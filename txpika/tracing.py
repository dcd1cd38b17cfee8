"""OpenTelemetry tracing for `txpika.publisher.Publisher` and `txpika.consumer.ConsumerService`.

Needs the optional extra ``txpika[otel]`` (``opentelemetry-api``). Pass ``tracing=Tracing()``
to a publisher or consumer service (``twistd txpika --tracing``)::

    publisher = await service.publisher(tracing=Tracing())
    consumer = ConsumerService(service, "jobs", handle, tracing=Tracing())

Following OpenTelemetry's messaging semantic conventions, a publish is a PRODUCER span
(``publish <exchange>``) that ends with the broker's answer and injects the W3C
``traceparent`` (and ``tracestate``) into the message's headers; each handler runs inside
a CONSUMER span (``process <queue>``) whose parent is the context extracted from the
message's headers, and that records a failed handler as an error. Spans carry
``messaging.system = "rabbitmq"``, ``messaging.destination.name`` (the exchange,
``amq.default`` for the default one), ``messaging.rabbitmq.destination.routing_key`` and
``messaging.message.id``.

Spans come from ``tracer_provider``, or else from the global tracer provider at the time of
each message. While no provider is configured (the API's default proxy), nothing is done:
no span, no header, one ``isinstance`` per message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from txpika.errors import UsageError
from txpika.spec import BasicProperties

__all__ = ["Tracing"]

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import ProxyTracerProvider, SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - tested by running without the extra
    trace = None  # type: ignore[assignment]
    Getter = object  # type: ignore[assignment,misc]

#: What a `txpika.errors.UsageError` says when ``opentelemetry-api`` is missing.
INSTALL_HINT = "tracing needs opentelemetry-api: pip install 'txpika[otel]'"


class _HeaderGetter(Getter):  # type: ignore[type-arg,misc,unused-ignore]
    """Reads a propagation field from AMQP headers (strings, or bytes as UTF-8)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return [str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


class Span:
    """A span of one publish or one handler: `active` while the handler is called, `end`
    with its outcome."""

    __slots__ = ("span",)

    def __init__(self, span: Any) -> None:
        #: The OpenTelemetry span (``None`` when tracing is off).
        self.span = span

    @contextmanager
    def active(self) -> Iterator[None]:
        """The span is the current one inside this block."""
        token = otel_context.attach(trace.set_span_in_context(self.span))
        try:
            yield
        finally:
            otel_context.detach(token)

    def end(self, error: BaseException | None) -> None:
        """End the span; an ``error`` is recorded and sets the ERROR status."""
        span = self.span
        if error is not None:
            span.record_exception(error)
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()


class Tracing:
    """Creates the PRODUCER and CONSUMER spans (see the module docstring).

    Raises `txpika.errors.UsageError` if ``opentelemetry-api`` is not installed.
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        if trace is None:
            raise UsageError(INSTALL_HINT)
        #: The tracer provider spans come from (``None``: OpenTelemetry's global one).
        self.tracer_provider = tracer_provider
        self._tracers: dict[int, tuple[Any, Any]] = {}  # id(provider) -> (provider, tracer)

    def _tracer(self) -> Any:
        provider = self.tracer_provider or trace.get_tracer_provider()
        if isinstance(provider, ProxyTracerProvider):
            return None  # nothing configured: do nothing
        known = self._tracers.get(id(provider))
        if known is None or known[0] is not provider:
            known = (provider, provider.get_tracer("txpika"))
            self._tracers[id(provider)] = known
        return known[1]

    def publishing(self, exchange: str, routing_key: str,
                   properties: BasicProperties | None
                   ) -> tuple[Span | None, BasicProperties | None]:
        """A started PRODUCER span, and ``properties`` with its context in the headers (or
        ``(None, properties)`` unchanged when tracing is off)."""
        tracer = self._tracer()
        if tracer is None:
            return None, properties
        attributes = _attributes(exchange, routing_key, properties, "send", "publish")
        span = tracer.start_span(f"publish {exchange or 'amq.default'}", kind=SpanKind.PRODUCER,
                                 attributes=attributes)
        headers: dict[str, Any] = dict(properties.headers or {}) if properties else {}
        propagate.inject(headers, context=trace.set_span_in_context(span))
        if properties is None:
            properties = BasicProperties(headers=headers)
        else:
            properties = dataclasses.replace(properties, headers=headers)
        return Span(span), properties

    def consuming(self, message: Any, queue: str) -> Span | None:
        """A started CONSUMER span for handling ``message`` (a `txpika.channel.Message`)
        from ``queue``, its parent extracted from the message's headers; ``None`` when
        tracing is off."""
        tracer = self._tracer()
        if tracer is None:
            return None
        properties = message.properties
        headers = properties.headers if properties is not None else None
        parent = propagate.extract(headers, getter=_GETTER) if headers else None
        attributes = _attributes(message.exchange, message.routing_key, properties,
                                 "process", "process")
        attributes["messaging.rabbitmq.message.delivery_tag"] = message.delivery_tag
        return Span(tracer.start_span(f"process {queue}", context=parent,
                                      kind=SpanKind.CONSUMER, attributes=attributes))


def _attributes(exchange: str, routing_key: str, properties: BasicProperties | None,
                operation_type: str, operation: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": operation_type,
        "messaging.operation.name": operation,
        "messaging.destination.name": exchange or "amq.default",
        "messaging.rabbitmq.destination.routing_key": routing_key,
    }
    if properties is not None and properties.message_id is not None:
        attributes["messaging.message.id"] = properties.message_id
    if properties is not None and properties.correlation_id is not None:
        attributes["messaging.message.conversation_id"] = properties.correlation_id
    return attributes
