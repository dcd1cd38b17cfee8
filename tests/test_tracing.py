"""OpenTelemetry tracing (`txpika.tracing`) against the real broker: a `Publisher` makes a
PRODUCER span and puts its W3C ``traceparent`` in the message's headers; a
`ConsumerService` runs each handler in a CONSUMER span whose parent is that context (for a
coroutine handler too, across its awaits), with the messaging attributes, and records a
failed handler as an error. With no tracer provider configured, no header is added.

The SDK's in-memory exporter collects the spans; the global tracer provider is never set
(so the last test sees OpenTelemetry's default, unconfigured one).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from test_twistd import twistd_command, twistd_env
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twistedsim import capture_logs

from txpika import AMQPService, BasicProperties, ConsumerService
from txpika.tracing import Tracing

pytestmark = pytest.mark.broker


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {seconds} s")
        await sleep(0.02)


def traceparent(span: Any) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


async def run(broker_url: str, tracing: Tracing, handler: Any, bodies: list[bytes],
              count: int) -> tuple[str, list[Any]]:
    """Publish ``bodies`` through a Publisher to a fresh queue consumed by a
    ConsumerService, both with ``tracing``; wait until ``count`` handler calls."""
    queue = f"txpika-test-tracing-{uuid.uuid4().hex[:10]}"
    service = AMQPService(reactor, broker_url)
    service.startService()
    seen: list[Any] = []

    def recording(message: Any) -> Any:
        seen.append(message)
        return handler(message)

    consumer = ConsumerService(service, queue, recording, declare=True, tracing=tracing,
                               on_error="reject")
    try:
        channel = await service.channel().addTimeout(10, reactor)
        await channel.queue_declare(queue, durable=True, exclusive=False, auto_delete=False)
        consumer.startService()
        publisher = await service.publisher(tracing=tracing).addTimeout(10, reactor)
        for n, body in enumerate(bodies):
            await publisher.publish("", queue, body, BasicProperties(
                message_id=f"id-{n}", headers={"app": "test"})).addTimeout(10, reactor)
        await until(lambda: len(seen) >= count, 10, f"{count} handler calls")
        await sleep(0.05)  # the acks
    finally:
        await consumer.stopService()
        await channel.queue_delete(queue).addTimeout(10, reactor)
        await service.stopService()
    return queue, seen


@pytest_twisted.ensureDeferred
async def test_producer_and_consumer_spans_linked_through_the_headers(
        broker_url: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    current: dict[bytes, Any] = {}

    async def handle(message: Any) -> None:
        await sleep(0.01)  # the span stays current across an await
        current[message.body] = trace.get_current_span()
        if message.body == b"bad":
            raise ValueError("cannot handle this one")

    with capture_logs():
        queue, seen = await run(broker_url, tracing, handle, [b"good", b"bad"], 2)
    spans = exporter.get_finished_spans()
    producers = [s for s in spans if s.kind == SpanKind.PRODUCER]
    consumers = [s for s in spans if s.kind == SpanKind.CONSUMER]
    assert [s.name for s in producers] == ["publish amq.default"] * 2
    assert [s.name for s in consumers] == [f"process {queue}"] * 2
    for n, (producer, consumer, message) in enumerate(
            zip(producers, consumers, seen, strict=True)):
        headers = message.properties.headers
        assert headers["traceparent"] == traceparent(producer)
        assert headers["app"] == "test"  # the application's headers stay
        assert consumer.parent.span_id == producer.context.span_id
        assert consumer.context.trace_id == producer.context.trace_id
        for span, operation in ((producer, "send"), (consumer, "process")):
            assert span.attributes["messaging.system"] == "rabbitmq"
            assert span.attributes["messaging.destination.name"] == "amq.default"
            assert span.attributes["messaging.rabbitmq.destination.routing_key"] == queue
            assert span.attributes["messaging.message.id"] == f"id-{n}"
            assert span.attributes["messaging.operation.type"] == operation
        assert current[message.body].get_span_context() == consumer.context
    good, bad = consumers
    assert good.status.status_code == StatusCode.UNSET
    assert bad.status.status_code == StatusCode.ERROR
    assert "ValueError" in bad.status.description
    assert [e.name for e in bad.events] == ["exception"]
    assert bad.attributes["error.type"] == "ValueError"
    assert all(p.status.status_code == StatusCode.UNSET for p in producers)  # confirmed


@pytest_twisted.ensureDeferred
async def test_without_a_tracer_provider_no_header_is_added(broker_url: str) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    tracing = Tracing()  # the global provider: OpenTelemetry's unconfigured default
    assert tracing.publishing("x", "y", None) == (None, None)
    _queue, seen = await run(broker_url, tracing, lambda message: None, [b"plain"], 1)
    assert seen[0].properties.headers == {"app": "test"}


@pytest_twisted.ensureDeferred
async def test_twistd_tracing_runs_the_handler_in_the_publishers_trace(
        broker_url: str, tmp_path: Path) -> None:
    """``twistd txpika --tracing``: the handler module configures the SDK (as the docs say);
    the daemon's CONSUMER span continues the trace of a publish made here."""
    spans_file = tmp_path / "spans.jsonl"
    spans_file.touch()
    queue = f"txpika-test-tracing-{uuid.uuid4().hex[:10]}"
    log = (tmp_path / "twistd.log").open("wb")
    proc = subprocess.Popen(
        [*twistd_command(), "-n", "--pidfile=", "txpika", "--url", broker_url, "--queue",
         queue, "--declare", "--handler", "handlers_for_tracing:handle", "--tracing"],
        env=twistd_env(TXPIKA_TEST_SPANS=str(spans_file)), cwd=str(tmp_path),
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service = AMQPService(reactor, broker_url)
    service.startService()
    try:
        await until(lambda: f"consuming {queue!r}" in (tmp_path / "twistd.log").read_text(),
                    20, "the daemon consuming")
        publisher = await service.publisher(tracing=Tracing(provider)).addTimeout(10, reactor)
        await publisher.publish("", queue, b"traced", BasicProperties(message_id="t1"))
        await until(lambda: len(spans_file.read_text().splitlines()) >= 2, 10,
                    "the daemon's span")
        (producer,) = exporter.get_finished_spans()
        lines = [json.loads(line) for line in spans_file.read_text().splitlines()]
        trace_id = f"{producer.context.trace_id:032x}"
        assert lines[0] == {"handler_in_trace": trace_id}
        consumer = lines[1]
        assert consumer["kind"] == "CONSUMER" and consumer["name"] == f"process {queue}"
        assert consumer["trace_id"] == trace_id
        assert consumer["parent"] == f"{producer.context.span_id:016x}"
        assert consumer["attributes"]["messaging.message.id"] == "t1"
        ch = await service.channel()
        await ch.queue_delete(queue)
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
        await service.stopService()


def test_twistd_tracing_without_opentelemetry_says_how_to_install_it(tmp_path: Path) -> None:
    hidden = tmp_path / "opentelemetry"
    hidden.mkdir()
    (hidden / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = twistd_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    proc = subprocess.run(
        [*twistd_command(), "-n", "--pidfile=", "txpika", "--queue", "q", "--handler",
         "handlers_for_health:handle", "--tracing"], env=env, cwd=str(tmp_path),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20, check=False)
    assert proc.returncode == 1
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert "--tracing needs opentelemetry-api: pip install 'txpika[otel]'" in last
