"""Queue arguments for the queue a consumer daemon declares (issue 14's API gap):
``ConsumerService(queue_arguments=...)`` and ``twistd txpika --queue-argument KEY=VALUE``
(repeatable; integers become integers, ``true``/``false`` booleans).

Against the shared broker, ``twistd txpika --declare`` declares a quorum queue and consumes
from it; declaring the same queue again with the same typed arguments is accepted (an
integer ``x-max-length`` and a boolean ``x-single-active-consumer``: a string would be
refused by RabbitMQ), and as a classic queue it is refused with 406.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import pytest_twisted
from test_health import HealthDaemon, publish_bodies
from test_twistd import run_twistd
from twisted.internet import reactor
from twisted.python import usage

import txpika
from txpika.errors import PreconditionFailed
from txpika.tap import Options

ARGUMENTS = {"x-queue-type": "quorum", "x-max-length": 100, "x-single-active-consumer": True}


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(["--queue", "q", "--handler", "handlers_for_health:handle", *argv])
    return options


def test_queue_arguments_are_typed() -> None:
    options = parse("--queue-argument", "x-queue-type=quorum", "--queue-argument",
                    "x-max-length=100", "--queue-argument", "x-single-active-consumer=true",
                    "--queue-argument", "x-flag=False", "--queue-argument", "x-empty=")
    assert options["queue-argument"] == {**ARGUMENTS, "x-flag": False, "x-empty": ""}
    assert type(options["queue-argument"]["x-max-length"]) is int


@pytest.mark.parametrize("value", ["no-equals-sign", "=value"])
def test_a_bad_queue_argument_is_refused(value: str) -> None:
    with pytest.raises(usage.UsageError, match=r"--queue-argument .* is not KEY=VALUE"):
        parse("--queue-argument", value)


def test_help_names_the_new_options_and_consumer_timeout() -> None:
    proc = run_twistd("--help")
    flat = " ".join(proc.stdout.split())
    assert "--queue-argument" in flat and "KEY=VALUE" in flat
    assert "--health" in flat and "/metrics" in flat
    assert "--tracing" in flat
    assert "below the broker's consumer_timeout" in flat


@pytest.mark.broker
@pytest_twisted.ensureDeferred
async def test_twistd_declares_a_quorum_queue_with_typed_arguments(
        broker_url: str, tmp_path: Path) -> None:
    queue = f"txpika-test-quorum-{uuid.uuid4().hex[:10]}"
    daemon = HealthDaemon(tmp_path, broker_url, queue,
                          *[part for key, value in (("x-queue-type", "quorum"),
                                                    ("x-max-length", "100"),
                                                    ("x-single-active-consumer", "true"))
                            for part in ("--queue-argument", f"{key}={value}")])
    conn = None
    try:
        await daemon.until("/ready", (200, "ready\n"), 20)
        await publish_bodies(broker_url, queue, "ok")
        await daemon.metrics_until("txpika_consumer_outcomes_total", 1, 10, queue=queue,
                                   outcome="ack")
        conn = await txpika.connect(reactor, broker_url).addTimeout(10, reactor)
        ch = await conn.channel()
        ok = await ch.queue_declare(queue, durable=True, exclusive=False, auto_delete=False,
                                    arguments=ARGUMENTS)  # equivalent: accepted
        assert ok.consumer_count == 1
        with pytest.raises(PreconditionFailed, match="x-queue-type"):
            await ch.queue_declare(queue, durable=True, exclusive=False, auto_delete=False,
                                   arguments={**ARGUMENTS, "x-queue-type": "classic"})
    finally:
        daemon.stop()
        if conn is not None:
            ch = await conn.channel()
            await ch.queue_delete(queue)
            await conn.close()


def test_consumer_service_declares_with_its_queue_arguments() -> None:
    from servicesim import ServiceSim
    from test_consumer_service import Handlers, consumer_tag

    from txpika import spec as m

    sim = ServiceSim()
    conn = sim.open()
    cs = txpika.ConsumerService(sim.service, "jobs", Handlers(), prefetch=1, declare=True,
                                queue_arguments=ARGUMENTS)
    cs.startService()
    conn.open_ok(1)
    conn.step(1, m.Queue.Declare(queue="jobs", durable=True, exclusive=False,
                                 auto_delete=False, arguments=ARGUMENTS),
              m.Queue.DeclareOk("jobs", 0, 0))
    conn.step(1, m.Basic.Qos(prefetch_count=1), m.Basic.QosOk())
    consumer_tag(conn, "jobs")
    assert cs.state == "consuming"
