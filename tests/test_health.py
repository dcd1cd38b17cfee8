"""``twistd txpika --health ENDPOINT`` as a real subprocess, read over HTTP.

- On the shared broker: ``/live`` and ``/ready`` answer 200 once it consumes, ``/metrics``
  counts acked, requeued (``--on-error requeue``) and rejected (``--on-error reject``)
  messages, other paths are 404, and no answer holds the password.
- On a private node: ``/ready`` is 503 ``recovering`` while the node is stopped and 200
  again after it restarts, with the recovery counted; during the SIGTERM drain ``/ready``
  is 503 ``draining`` while ``/live`` stays 200.
- Without ``prometheus_client`` (hidden from the daemon) ``/metrics`` is 501 with the
  install hint; a bad ``--health`` is refused before connecting, exit status 1.

The handler is tests/handlers_for_health.py: a message's body says what it does.
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from rabbitnode import PrivateNode, free_port
from test_twistd import publish, run_twistd, twistd_command, twistd_env
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from txpika._health import readiness

PASSWORD = "guest"  # the password of both brokers' URLs (and the user's name: see below)


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


async def get(port: int, path: str) -> tuple[int, str]:
    return await deferToThread(_get, port, path)  # type: ignore[no-any-return]


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not in /metrics:\n{text}")


class HealthDaemon:
    """``twistd -n txpika ... --health tcp:PORT:interface=127.0.0.1``, its log in a file."""

    def __init__(self, tmp_path: Path, url: str, queue: str, *args: str,
                 pythonpath: str | None = None) -> None:
        self.port = free_port()
        self.log_file = tmp_path / f"twistd-{queue}.log"
        self._log = self.log_file.open("wb")
        env = twistd_env()
        if pythonpath:
            env["PYTHONPATH"] = pythonpath + ":" + env["PYTHONPATH"]
        self.proc = subprocess.Popen(
            [*twistd_command(), "-n", "--pidfile=", "txpika", "--url", url, "--queue", queue,
             "--handler", "handlers_for_health:handle", "--declare", "--heartbeat", "5",
             "--health", f"tcp:{self.port}:interface=127.0.0.1", *args],
            env=env, cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    async def get(self, path: str) -> tuple[int, str]:
        return await get(self.port, path)

    async def until(self, path: str, expected: tuple[int, str], seconds: float) -> None:
        """Poll ``path`` until it answers ``expected`` (status, body)."""
        deadline = time.monotonic() + seconds
        last: Any = None
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"twistd exited ({self.proc.returncode}):\n{self.log[-4000:]}")
            try:
                last = await self.get(path)
            except OSError as exc:  # not listening yet
                last = exc
            if last == expected:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"{path} answered {last!r}, not {expected!r}, for {seconds} s:\n"
                            f"{self.log[-4000:]}")
            await sleep(0.05)

    async def metrics_until(self, name: str, value: float, seconds: float,
                            **labels: str) -> str:
        deadline = time.monotonic() + seconds
        while True:
            status, text = await self.get("/metrics")
            assert status == 200, text
            try:
                if metric(text, name, **labels) == value:
                    return text
            except AssertionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{name}{labels} never reached {value}:\n{text}")
            await sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def unique() -> str:
    return f"txpika-test-health-{uuid.uuid4().hex[:10]}"


def ids(count: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(count)]


async def publish_bodies(url: str, queue: str, *bodies: str) -> None:
    """One message per body (``publish`` from test_twistd sends each id as the body)."""
    await publish(url, [("", queue)], list(bodies))


@pytest.mark.broker
@pytest_twisted.ensureDeferred
async def test_probes_and_counters_as_messages_are_acked_requeued_and_rejected(
        broker_url: str, tmp_path: Path) -> None:
    requeueing = HealthDaemon(tmp_path, broker_url, q1 := unique(), "--on-error", "requeue")
    rejecting = HealthDaemon(tmp_path, broker_url, q2 := unique(), "--on-error", "reject")
    try:
        for daemon in (requeueing, rejecting):
            await daemon.until("/live", (200, "live\n"), 20)
            await daemon.until("/ready", (200, "ready\n"), 20)
        await publish_bodies(broker_url, q1, "ok", "ok", "fail", "ok", "fail")
        await publish_bodies(broker_url, q2, "ok", "fail", "fail")
        text = await requeueing.metrics_until("txpika_consumer_outcomes_total", 5, 20,
                                              queue=q1, outcome="ack")
        assert metric(text, "txpika_consumer_outcomes_total", queue=q1, outcome="requeue") == 2
        assert metric(text, "txpika_consumer_outcomes_total", queue=q1, outcome="reject") == 0
        assert metric(text, "txpika_consumer_deliveries_total", queue=q1) == 7
        assert metric(text, "txpika_consumer_handler_failures_total", queue=q1) == 2
        assert metric(text, "txpika_consumer_handler_seconds_count", queue=q1) == 7
        assert metric(text, "txpika_consumer_in_flight", queue=q1) == 0
        assert metric(text, "txpika_service_state", state="open") == 1
        assert metric(text, "txpika_service_recoveries_total") == 0
        text = await rejecting.metrics_until("txpika_consumer_outcomes_total", 2, 20,
                                             queue=q2, outcome="reject")
        assert metric(text, "txpika_consumer_outcomes_total", queue=q2, outcome="ack") == 1
        assert metric(text, "txpika_consumer_outcomes_total", queue=q2, outcome="requeue") == 0
        assert metric(text, "txpika_consumer_deliveries_total", queue=q2) == 3
        for path, status in (("/", 404), ("/nope", 404), ("/ready/", 404)):
            assert (await requeueing.get(path))[0] == status
        answers = [await requeueing.get(path) for path in ("/live", "/ready", "/metrics", "/x")]
        # The user and the password are both "guest": neither may appear anywhere.
        assert not [a for a in answers if PASSWORD in a[1]]
    finally:
        requeueing.stop()
        rejecting.stop()
    for daemon in (requeueing, rejecting):
        assert "Unhandled" not in daemon.log, daemon.log
        assert "GET /metrics" not in daemon.log  # probes are not logged


@pytest.mark.broker
@pytest.mark.private_broker
@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_ready_follows_a_node_restart_and_the_sigterm_drain(
        private_node: PrivateNode, tmp_path: Path) -> None:
    node = private_node
    daemon = HealthDaemon(tmp_path, node.url, queue := unique(), "--drain-timeout", "10")
    try:
        await daemon.until("/ready", (200, "ready\n"), 20)
        await deferToThread(node.stop_app)
        await daemon.until("/ready", (503, "recovering\n"), 10)
        assert await daemon.get("/live") == (200, "live\n")
        assert (answer := await daemon.get("/metrics"))[0] == 200
        assert metric(answer[1], "txpika_service_state", state="recovering") == 1
        await deferToThread(node.start_app)
        await daemon.until("/ready", (200, "ready\n"), 30)
        status, text = await daemon.get("/metrics")
        assert status == 200
        assert metric(text, "txpika_service_recoveries_total") == 1
        assert metric(text, "txpika_service_state", state="open") == 1

        # SIGTERM while handlers run: /ready says draining until the connection is closed
        await publish_bodies(node.url, queue, "slow:1.5", "slow:1.5")
        await daemon.metrics_until("txpika_consumer_in_flight", 2, 10, queue=queue)
        daemon.proc.send_signal(signal.SIGTERM)
        await daemon.until("/ready", (503, "draining\n"), 5)
        assert await daemon.get("/live") == (200, "live\n")
        deadline = time.monotonic() + 20
        while daemon.proc.poll() is None:
            assert time.monotonic() < deadline, daemon.log
            await sleep(0.05)
        assert daemon.proc.returncode in (0, -signal.SIGTERM), daemon.log
        assert "draining 2 running handlers" in daemon.log
    finally:
        daemon.stop()


@pytest.mark.broker
@pytest_twisted.ensureDeferred
async def test_metrics_without_prometheus_client_is_501_with_the_install_hint(
        broker_url: str, tmp_path: Path) -> None:
    hidden = tmp_path / "hide"
    (hidden / "prometheus_client").mkdir(parents=True)
    (hidden / "prometheus_client" / "__init__.py").write_text(
        "raise ImportError('prometheus_client is hidden by the test')\n")
    daemon = HealthDaemon(tmp_path, broker_url, unique(), pythonpath=str(hidden))
    try:
        await daemon.until("/ready", (200, "ready\n"), 20)
        status, text = await daemon.get("/metrics")
        assert status == 501
        assert text == "metrics need prometheus_client: pip install 'txpika[metrics]'\n"
    finally:
        daemon.stop()


@pytest.mark.parametrize("value, expected", [
    ("tcp:notaport", "--health 'tcp:notaport'"),
    ("nosuchtype:9090", "--health 'nosuchtype:9090'"),
    ("", "--health ''"),
])
def test_a_bad_health_endpoint_is_refused_before_connecting(value: str, expected: str) -> None:
    port = free_port()  # nothing listens: a connection attempt would be refused, and logged
    proc = run_twistd("--url", f"amqp://guest:s3cret@127.0.0.1:{port}/", "--queue", "q",
                      "--handler", "handlers_for_health:handle", "--health", value)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    last = output.strip().splitlines()[-1]
    assert expected in last and "server endpoint description" in last, output
    assert "s3cret" not in output
    assert "connecting" not in output and "Traceback" not in output


class _Stub:
    def __init__(self, state: str) -> None:
        self.state = state


@pytest.mark.parametrize("amqp, consumer, reason", [
    ("open", "consuming", None),
    ("blocked", "consuming", None),
    ("connecting", "starting", "connecting"),
    ("recovering", "consuming", "recovering"),
    ("open", "starting", "consumer starting"),
    ("open", "cancelled", "consumer cancelled"),
    ("open", "draining", "draining"),
    ("closed", "stopped", "stopped"),
])
def test_readiness_reasons(amqp: str, consumer: str, reason: str | None) -> None:
    assert readiness(_Stub(amqp), _Stub(consumer)) == reason  # type: ignore[arg-type]
