"""``twistd txpika``: run a `txpika.consumer.ConsumerService` as a daemon.

    twistd -n txpika --url amqp://guest:guest@localhost/ --queue jobs \\
           --handler myapp.jobs:handle --prefetch 50 --concurrency 10 --declare \\
           --bind orders:order.* --on-error requeue --drain-timeout 30 \\
           --queue-argument x-queue-type=quorum --health tcp:9090:interface=127.0.0.1

Everything is checked before any connection is made: a missing or unimportable handler,
an unknown option or a malformed URL stops twistd with a message naming the problem (never
the password). SIGTERM stops taking messages, waits for running handlers up to
``--drain-timeout`` seconds, and closes the connection cleanly.

``--health ENDPOINT`` serves ``/live``, ``/ready`` and ``/metrics`` over HTTP (see
`txpika._health`; the metrics need the extra ``txpika[metrics]``), and ``--tracing`` runs
each handler in an OpenTelemetry span (the extra ``txpika[otel]``; see `txpika.tracing`).
"""

from __future__ import annotations

import importlib
import os
from typing import Any, ClassVar

from twisted.application.service import IService, MultiService
from twisted.python import usage

from txpika.parameters import ConnectionParameters, parameters_for

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    """Command line of ``twistd txpika``."""

    #: The usage line of ``twistd txpika --help``.
    synopsis = "--url URL --queue QUEUE --handler MODULE:FUNCTION [options]"
    #: The description of ``twistd txpika --help``.
    longdesc = (
        "Consume an AMQP queue with a Python handler, on a connection that recovers from "
        "broker restarts and network faults. The handler gets a txpika.Message and returns "
        "None, a Deferred or a coroutine: success acks the message, a failure rejects it "
        "(requeued with --on-error requeue). SIGTERM drains running handlers, then closes."
    )
    #: The flags of ``twistd txpika``.
    optFlags: ClassVar[list[list[Any]]] = [
        ["declare", None, "Declare the queue first (durable, not exclusive, not auto-delete)."],
        ["tracing", None, "Trace each handler in an OpenTelemetry CONSUMER span (needs "
         "txpika[otel] and a configured tracer provider)."],
    ]
    #: The options with a value of ``twistd txpika``.
    optParameters: ClassVar[list[list[Any]]] = [
        ["queue", "q", None, "The queue to consume (required)."],
        ["handler", None, None,
         "The handler, as MODULE:FUNCTION (required); it must be importable."],
        ["prefetch", None, 50, "How many unacked messages the broker may send ahead.", int],
        ["concurrency", None, 10, "How many handlers may run at once.", int],
        ["on-error", None, "requeue",
         "What a failed handler does to its message: requeue, or reject (dead-letter)."],
        ["drain-timeout", None, 30.0,
         "Seconds to let running handlers finish on shutdown.", float],
        ["handler-timeout", None, None,
         "Seconds after which a handler counts as failed (default: no limit). Keep it "
         "below the broker's consumer_timeout (RabbitMQ: 30 minutes by default), past which "
         "the broker closes the channel and redelivers the message.", float],
        ["health", None, None,
         "A server endpoint (for example tcp:9090:interface=127.0.0.1) serving HTTP "
         "GET /live, /ready and /metrics (Prometheus; needs txpika[metrics])."],
        ["heartbeat", None, None, "Heartbeat interval in seconds (default: the URL's, or 60).",
         int],
        ["cafile", None, None, "CA certificates (PEM) to verify the broker with (amqps)."],
        ["certfile", None, None, "Client certificate (PEM) for TLS."],
        ["keyfile", None, None, "Private key (PEM) of the client certificate."],
        ["connection-name", None, "txpika-consumer",
         "The connection name the broker shows."],
    ]
    #: Shell completion hints.
    compData = usage.Completions(optActions={  # type: ignore[no-untyped-call]
        "on-error": usage.CompleteList(["requeue", "reject"]),  # type: ignore[no-untyped-call]
    })

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["url"] = []
        self["bind"] = []
        self["queue-argument"] = {}

    def opt_url(self, value: str) -> None:
        """An amqp:// or amqps:// URL or a Twisted endpoint description (tcp:HOST:PORT); repeat it for the nodes of a cluster, tried in turn [default: $TXPIKA_URL (space-separated URLs), else amqp://guest:guest@localhost:5672/%2F]"""  # noqa: E501
        self["url"].append(value)

    def opt_bind(self, value: str) -> None:
        """EXCHANGE:ROUTING_KEY to bind the queue to; may be repeated."""
        exchange, sep, routing_key = value.partition(":")
        if not sep or not exchange:
            raise usage.UsageError(f"--bind {value!r} is not EXCHANGE:ROUTING_KEY")
        self["bind"].append((exchange, routing_key))

    def opt_queue_argument(self, value: str) -> None:
        """KEY=VALUE, an argument of the queue --declare declares (x-queue-type=quorum, x-max-length=1000); may be repeated. Integers become integers, true and false booleans."""  # noqa: E501
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise usage.UsageError(f"--queue-argument {value!r} is not KEY=VALUE")
        self["queue-argument"][key] = typed_value(text)

    def postOptions(self) -> None:
        """Check the options together; raise ``usage.UsageError`` naming what is wrong."""
        if not self["queue"]:
            raise usage.UsageError("--queue is required")
        if not self["handler"]:
            raise usage.UsageError("--handler MODULE:FUNCTION is required")
        if self["on-error"] not in ("requeue", "reject"):
            raise usage.UsageError(
                f"--on-error must be requeue or reject, not {self['on-error']!r}")
        if self["prefetch"] < 0 or self["concurrency"] < 1:
            raise usage.UsageError("--prefetch must be >= 0 and --concurrency >= 1")
        self["handler_function"] = load_handler(self["handler"])
        if not self["url"]:
            # TXPIKA_URL keeps a password off the command line (and out of ps).
            self["url"] = os.environ.get("TXPIKA_URL", "").split() or [
                "amqp://guest:guest@localhost:5672/%2F"]
        self["brokers"] = [self._broker(url) for url in self["url"]]
        if self["health"] is not None:
            check_endpoint(self["health"])
        if self["tracing"]:
            try:
                import opentelemetry.trace  # noqa: F401
            except ImportError:
                raise usage.UsageError(
                    "--tracing needs opentelemetry-api: pip install 'txpika[otel]'") from None

    def _broker(self, url: str) -> ConnectionParameters:
        overrides: dict[str, Any] = {"connection_name": self["connection-name"]}
        if self["heartbeat"] is not None:
            overrides["heartbeat"] = self["heartbeat"]
        for option in ("cafile", "certfile", "keyfile"):
            if self[option]:
                overrides[option] = self[option]
        try:
            return parameters_for(url, overrides)
        except Exception as exc:
            raise usage.UsageError(f"--url: {exc}") from None


def typed_value(text: str) -> int | bool | str:
    """``"5"`` -> 5, ``"true"``/``"false"`` -> True/False, anything else the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        return text


def check_endpoint(description: str) -> None:
    """Raise ``usage.UsageError`` naming ``--health`` if ``description`` is not a server
    endpoint description (nothing listens yet)."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(reactor, description)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise usage.UsageError(
            f"--health {description!r} is not a server endpoint description "
            f"(for example tcp:9090:interface=127.0.0.1): {exc}") from None


def load_handler(spec: str) -> Any:
    """Import ``MODULE:FUNCTION``; raises ``usage.UsageError`` saying what went wrong."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise usage.UsageError(f"--handler {spec!r} is not MODULE:FUNCTION")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise usage.UsageError(
            f"--handler: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    target: Any = module
    for part in name.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise usage.UsageError(
                f"--handler: {module_name!r} has no attribute {name!r}") from None
    if not callable(target):
        raise usage.UsageError(f"--handler: {spec!r} is not callable")
    return target


def makeService(options: Options) -> IService:
    """The AMQP service and the consumer service, as one MultiService (stopped in reverse:
    the consumer drains before the connection closes)."""
    from twisted.internet import reactor

    from txpika.client import AMQPService
    from txpika.consumer import ConsumerService

    top = MultiService()  # type: ignore[no-untyped-call]
    metrics, missing = _metrics() if options["health"] is not None else (None, "")
    amqp = AMQPService(reactor, options["brokers"], observer=metrics)
    tracing = None
    if options["tracing"]:
        from txpika.tracing import Tracing

        tracing = Tracing()
    consumer = ConsumerService(
        amqp, options["queue"], options["handler_function"],
        prefetch=options["prefetch"], concurrency=options["concurrency"],
        on_error=options["on-error"], declare=options["declare"],
        bindings=options["bind"], handler_timeout=options["handler-timeout"],
        drain_timeout=options["drain-timeout"],
        queue_arguments=options["queue-argument"] or None, tracing=tracing)
    if options["health"] is not None:
        from txpika._health import HealthResource, HealthService

        # First in, so stopped last: it answers (503 draining) until the connection closed.
        health = HealthService(reactor, options["health"],
                               HealthResource(amqp, consumer, metrics, missing))
        health.setName("health")  # type: ignore[no-untyped-call]
        health.setServiceParent(top)  # type: ignore[no-untyped-call]
    amqp.setName("amqp")  # type: ignore[no-untyped-call]
    amqp.setServiceParent(top)  # type: ignore[no-untyped-call]
    consumer.setName("consumer")  # type: ignore[no-untyped-call]
    consumer.setServiceParent(top)  # type: ignore[no-untyped-call]
    return top


def _metrics() -> tuple[Any, str]:
    """The daemon's `txpika.metrics.PrometheusObserver`, or ``(None, why not)``."""
    try:
        from txpika.metrics import PrometheusObserver

        return PrometheusObserver(), ""
    except Exception as exc:
        return None, str(exc)
