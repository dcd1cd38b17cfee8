"""`txpika.metrics.PrometheusObserver`: the Prometheus metrics of DESIGN section 11, fed by
`AMQPService`, `ConsumerService` and `Publisher` on scripted brokers (tests/servicesim.py),
read back from the text exposition."""

from __future__ import annotations

import sys

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from servicesim import ServiceSim
from test_consumer_service import Handlers, consumer_tag, deliver, expect_consume, start
from test_publisher import start_publisher
from twistedsim import capture_logs, no_unhandled_errors, success  # noqa: F401

from txpika import spec
from txpika.errors import UsageError
from txpika.metrics import PrometheusObserver

m = spec

pytestmark = pytest.mark.usefixtures("no_unhandled_errors")


def samples(observer: PrometheusObserver) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed from the exposition."""
    found = {}
    for family in text_string_to_metric_families(observer.exposition().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(observer: PrometheusObserver, name: str, **labels: str) -> float:
    return samples(observer)[(name, tuple(sorted(labels.items())))]


def test_consumer_and_service_metrics() -> None:
    metrics = PrometheusObserver()
    assert value(metrics, "txpika_service_state", state="closed") == 1
    sim = ServiceSim(observer=metrics)
    conn = sim.open()
    assert value(metrics, "txpika_service_state", state="open") == 1
    assert value(metrics, "txpika_service_state", state="closed") == 0
    handlers = Handlers()
    _cs, tag = start(sim, conn, handlers, on_error="requeue")
    deliver(conn, tag, b"a", b"b", b"c")
    assert value(metrics, "txpika_consumer_deliveries_total", queue="jobs") == 3
    assert value(metrics, "txpika_consumer_in_flight", queue="jobs") == 3
    sim.advance(0.003)
    handlers.finish(b"a")
    with capture_logs():
        handlers.fail(b"b")
    sim.advance(2.0)
    handlers.finish(b"c")
    conn.broker.methods()
    assert value(metrics, "txpika_consumer_in_flight", queue="jobs") == 0
    assert value(metrics, "txpika_consumer_outcomes_total", queue="jobs", outcome="ack") == 2
    assert value(metrics, "txpika_consumer_outcomes_total", queue="jobs",
                 outcome="requeue") == 1
    assert value(metrics, "txpika_consumer_outcomes_total", queue="jobs",
                 outcome="reject") == 0
    assert value(metrics, "txpika_consumer_handler_failures_total", queue="jobs") == 1
    assert value(metrics, "txpika_consumer_handler_seconds_count", queue="jobs") == 3
    assert value(metrics, "txpika_consumer_handler_seconds_bucket", queue="jobs",
                 le="0.005") == 2
    assert value(metrics, "txpika_consumer_handler_seconds_sum", queue="jobs") == (
        pytest.approx(0.003 * 2 + 2.003))

    assert value(metrics, "txpika_service_recoveries_total") == 0
    with capture_logs():
        conn.lose_uncleanly()
    assert value(metrics, "txpika_service_state", state="recovering") == 1
    sim.advance(1.0)
    new = sim.accept()
    new.open_ok(1)  # the consumer's channel, restored
    expect_consume(new, "jobs", 5)
    consumer_tag(new, "jobs", tag=tag)
    assert value(metrics, "txpika_service_recoveries_total") == 1
    assert value(metrics, "txpika_service_state", state="open") == 1
    assert "secret" not in metrics.exposition().decode()
    assert "guest" not in metrics.exposition().decode()


def test_publisher_metrics() -> None:
    metrics = PrometheusObserver()
    sim = ServiceSim(observer=metrics)
    conn = sim.open()
    publisher = start_publisher(sim, conn)
    published = [publisher.publish("orders", "new", str(n).encode(), mandatory=True)
                 for n in range(3)]
    conn.broker.commands()
    sim.advance(0.004)
    conn.broker.send(1, m.Basic.Ack(1, False))
    conn.broker.send(1, m.Basic.Nack(2, False, False))
    conn.broker.send_content(1, m.Basic.Return(312, "NO_ROUTE", "orders", "new"), b"2")
    conn.broker.send(1, m.Basic.Ack(3, False))
    assert success(published[0]) is None
    for d in published[1:]:
        d.addErrback(lambda f: None)
    assert value(metrics, "txpika_publisher_publishes_total", outcome="confirmed") == 1
    assert value(metrics, "txpika_publisher_publishes_total", outcome="nacked") == 1
    assert value(metrics, "txpika_publisher_publishes_total", outcome="returned") == 1
    assert value(metrics, "txpika_publisher_confirm_seconds_count") == 3
    assert value(metrics, "txpika_publisher_confirm_seconds_bucket", le="0.0025") == 0
    assert value(metrics, "txpika_publisher_confirm_seconds_bucket", le="0.005") == 3


def test_each_observer_has_a_registry_of_its_own() -> None:
    first, second = PrometheusObserver(), PrometheusObserver()  # no clash of names
    first.delivered("q")
    assert value(first, "txpika_consumer_deliveries_total", queue="q") == 1
    assert ("txpika_consumer_deliveries_total", (("queue", "q"),)) not in samples(second)
    assert REGISTRY.get_sample_value("txpika_consumer_deliveries_total",
                                     {"queue": "q"}) is None


def test_without_prometheus_client_it_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(UsageError, match=r"pip install 'txpika\[metrics\]'"):
        PrometheusObserver()
