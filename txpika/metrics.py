"""Prometheus metrics: a `txpika.observe.Observer` that counts into ``prometheus_client``.

Needs the optional extra ``txpika[metrics]`` (``prometheus_client``)::

    metrics = PrometheusObserver()               # a registry of its own
    service = AMQPService(reactor, url, observer=metrics)
    consumer = ConsumerService(service, "jobs", handle)   # reports to metrics too
    text = metrics.exposition()                  # the Prometheus text format

``twistd txpika --health ENDPOINT`` serves it at ``/metrics``. The metrics (counters end in
``_total`` in the exposition):

- ``txpika_service_state{state}``: 1 for the service's current state, else 0
- ``txpika_service_recoveries_total``: recoveries (open again after a lost connection)
- ``txpika_channel_closed_total{reply_code}``: channels of consumers and publishers the
  broker closed
- ``txpika_consumer_deliveries_total{queue}``: deliveries that reached the consumer service
- ``txpika_consumer_outcomes_total{queue,outcome}``: deliveries settled: ``ack``,
  ``reject``, ``requeue``, ``dropped`` (its channel was gone: the broker requeued it)
- ``txpika_consumer_handler_failures_total{queue}``: handlers that failed or timed out
- ``txpika_consumer_handler_seconds{queue}``: histogram of handler durations
- ``txpika_consumer_in_flight{queue}``: handlers running now
- ``txpika_publisher_publishes_total{outcome}``: ``confirmed``, ``nacked``, ``returned``,
  ``unknown``, ``failed``
- ``txpika_publisher_confirm_seconds``: histogram, from a publish to the broker's answer

No label carries a URL, a user name or a password.
"""

from __future__ import annotations

from typing import Any

from txpika.errors import UsageError
from txpika.observe import Observer

__all__ = ["INSTALL_HINT", "PrometheusObserver"]

#: What a `txpika.errors.UsageError` says when ``prometheus_client`` is missing.
INSTALL_HINT = "metrics need prometheus_client: pip install 'txpika[metrics]'"

#: The values of the ``state`` label of ``txpika_service_state``.
STATES = ("closed", "connecting", "open", "blocked", "recovering")

#: Handler durations, in seconds: from 1 ms to 5 minutes.
HANDLER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 300.0)
#: Confirm latencies, in seconds: from 0.5 ms to 10 s.
CONFIRM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 10.0)


class PrometheusObserver(Observer):
    """Counts what txpika reports into Prometheus metrics (see the module docstring).

    ``registry`` defaults to a ``CollectorRegistry`` of its own (not the global default
    one, so several observers and your own metrics never clash). Raises
    `txpika.errors.UsageError` naming the extra if ``prometheus_client`` is missing.
    """

    def __init__(self, registry: Any = None) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise UsageError(INSTALL_HINT) from None
        #: The ``CollectorRegistry`` the metrics are in (serve it with ``generate_latest``).
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        #: ``txpika_service_state{state}``: 1 for the service's current state, else 0.
        self.state = Gauge("txpika_service_state", "1 for the AMQP service's current state",
                           ["state"], registry=r)
        #: ``txpika_service_recoveries_total``.
        self.recoveries = Counter("txpika_service_recoveries",
                                  "Recoveries of the AMQP service (open after a loss)",
                                  registry=r)
        #: ``txpika_channel_closed_total{reply_code}``: channels the broker closed.
        self.channel_closed_ = Counter("txpika_channel_closed",
                                       "Channels the broker closed", ["reply_code"],
                                       registry=r)
        #: ``txpika_consumer_deliveries_total{queue}``.
        self.deliveries = Counter("txpika_consumer_deliveries",
                                  "Deliveries that reached the consumer service", ["queue"],
                                  registry=r)
        #: ``txpika_consumer_outcomes_total{queue,outcome}``: ack, reject, requeue, dropped.
        self.outcomes = Counter("txpika_consumer_outcomes",
                                "Deliveries settled by the consumer service",
                                ["queue", "outcome"], registry=r)
        #: ``txpika_consumer_handler_failures_total{queue}``.
        self.failures = Counter("txpika_consumer_handler_failures", "Handlers that failed",
                                ["queue"], registry=r)
        #: ``txpika_consumer_handler_seconds{queue}``: how long handlers ran.
        self.handler_seconds = Histogram("txpika_consumer_handler_seconds",
                                         "How long handlers ran", ["queue"],
                                         buckets=HANDLER_BUCKETS, registry=r)
        #: ``txpika_consumer_in_flight{queue}``: handlers running now.
        self.in_flight = Gauge("txpika_consumer_in_flight", "Handlers running now",
                               ["queue"], registry=r)
        #: ``txpika_publisher_publishes_total{outcome}``: confirmed, nacked, returned,
        #: unknown, failed.
        self.publishes = Counter("txpika_publisher_publishes",
                                 "Publishes of Publisher by outcome", ["outcome"], registry=r)
        #: ``txpika_publisher_confirm_seconds``: from a publish to the broker's answer.
        self.confirm_seconds = Histogram("txpika_publisher_confirm_seconds",
                                         "From a publish to the broker's answer",
                                         buckets=CONFIRM_BUCKETS, registry=r)
        self._states = {state: self.state.labels(state) for state in STATES}
        self._states["closed"].set(1)
        self._queues: dict[str, _QueueMetrics] = {}
        self._publishes: dict[str, Any] = {}

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (``text/plain; version=0.0.4``)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def _queue(self, queue: str) -> _QueueMetrics:
        metrics = self._queues.get(queue)
        if metrics is None:
            metrics = self._queues[queue] = _QueueMetrics(self, queue)
        return metrics

    # -- Observer ------------------------------------------------------------------------------

    def state_changed(self, state: str) -> None:
        for name, gauge in self._states.items():
            gauge.set(1 if name == state else 0)

    def recovered(self, broker: str) -> None:
        self.recoveries.inc()

    def channel_closed(self, reply_code: int, reply_text: str) -> None:
        self.channel_closed_.labels(str(reply_code)).inc()

    def delivered(self, queue: str) -> None:
        self._queue(queue).deliveries.inc()

    def handler_started(self, queue: str) -> None:
        self._queue(queue).in_flight.inc()

    def handler_finished(self, queue: str, outcome: str, seconds: float,
                         error: BaseException | None) -> None:
        metrics = self._queue(queue)
        metrics.in_flight.dec()
        metrics.seconds.observe(seconds)
        if error is not None:
            metrics.failures.inc()
        counter = metrics.outcomes.get(outcome)
        if counter is None:
            counter = metrics.outcomes[outcome] = self.outcomes.labels(queue, outcome)
        counter.inc()

    def published(self, exchange: str, outcome: str, seconds: float) -> None:
        counter = self._publishes.get(outcome)
        if counter is None:
            counter = self._publishes[outcome] = self.publishes.labels(outcome)
        counter.inc()
        if outcome != "failed":
            self.confirm_seconds.observe(seconds)


class _QueueMetrics:
    """The labelled children of one queue, looked up once."""

    __slots__ = ("deliveries", "failures", "in_flight", "outcomes", "seconds")

    def __init__(self, observer: PrometheusObserver, queue: str) -> None:
        self.deliveries = observer.deliveries.labels(queue)
        self.failures = observer.failures.labels(queue)
        self.seconds = observer.handler_seconds.labels(queue)
        self.in_flight = observer.in_flight.labels(queue)
        self.outcomes: dict[str, Any] = {
            outcome: observer.outcomes.labels(queue, outcome)
            for outcome in ("ack", "reject", "requeue")}
