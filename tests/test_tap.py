"""``twistd txpika``: `txpika.tap.Options` parsing and errors, `txpika.tap.makeService`, and
the plugin's discovery by Twisted's plugin system.

Nothing here connects or runs a reactor: the services are built and inspected.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import IServiceMaker, MultiService
from twisted.plugin import getPlugins
from twisted.python import usage

import txpika.tap
from txpika.client import AMQPService
from txpika.consumer import ConsumerService
from txpika.parameters import ConnectionParameters
from txpika.tap import Options, makeService

HANDLERS = "txpika_tap_handlers"


@pytest.fixture(autouse=True)
def handler_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An importable module of handlers (and of things that are not handlers)."""
    (tmp_path / f"{HANDLERS}.py").write_text(textwrap.dedent("""
        def handle(message):
            return None

        async def handle_async(message):
            return None

        NOT_CALLABLE = 42

        class Jobs:
            @staticmethod
            def run(message):
                return None
    """))
    (tmp_path / "txpika_tap_broken.py").write_text("raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield sys.modules.get(HANDLERS)
    for name in (HANDLERS, "txpika_tap_broken"):
        sys.modules.pop(name, None)


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def usage_error(*args: str) -> str:
    with pytest.raises(usage.UsageError) as info:
        parse(*args)
    return str(info.value)


REQUIRED = ("--queue", "jobs", "--handler", f"{HANDLERS}:handle")


# -- options --------------------------------------------------------------------------------------

def test_defaults() -> None:
    options = parse(*REQUIRED)
    assert options["queue"] == "jobs"
    assert options["handler"] == f"{HANDLERS}:handle"
    assert options["handler_function"] is sys.modules[HANDLERS].handle
    assert options["prefetch"] == 50
    assert options["concurrency"] == 10
    assert not options["declare"]
    assert options["bind"] == []
    assert options["on-error"] == "requeue"
    assert options["drain-timeout"] == 30.0
    assert options["handler-timeout"] is None
    assert options["url"] == ["amqp://guest:guest@localhost:5672/%2F"]
    (broker,) = options["brokers"]
    assert broker == ConnectionParameters(port=5672, connection_name="txpika-consumer")
    assert broker.heartbeat == 60  # the parameters' default, heartbeats on


def test_every_option() -> None:
    options = parse(
        "--url", "amqps://app:pw@node1:5671/prod?heartbeat=20",
        "--url", "amqps://app:pw@node2/prod",
        "-q", "work",
        "--handler", f"{HANDLERS}:Jobs.run",
        "--prefetch", "7", "--concurrency", "3", "--declare",
        "--bind", "orders:order.*", "--bind", "audit:", "--bind", "events:a:b",
        "--on-error", "reject", "--drain-timeout", "12.5", "--handler-timeout", "4",
        "--heartbeat", "15", "--cafile", "/etc/ca.pem", "--certfile", "/etc/c.pem",
        "--keyfile", "/etc/k.pem", "--connection-name", "billing-worker",
    )
    assert options["queue"] == "work"
    assert options["handler_function"] is sys.modules[HANDLERS].Jobs.run
    assert (options["prefetch"], options["concurrency"]) == (7, 3)
    assert options["declare"]
    assert options["bind"] == [("orders", "order.*"), ("audit", ""), ("events", "a:b")]
    assert options["on-error"] == "reject"
    assert options["drain-timeout"] == 12.5
    assert options["handler-timeout"] == 4.0
    assert options["url"] == ["amqps://app:pw@node1:5671/prod?heartbeat=20",
                              "amqps://app:pw@node2/prod"]
    first, second = options["brokers"]
    assert (first.host, first.port, second.host, second.effective_port) == (
        "node1", 5671, "node2", 5671)
    for broker in (first, second):
        assert broker.tls and broker.virtual_host == "prod"
        assert broker.username == "app" and broker.password == "pw"
        assert broker.heartbeat == 15  # --heartbeat wins over the URL's
        assert (broker.cafile, broker.certfile, broker.keyfile) == (
            "/etc/ca.pem", "/etc/c.pem", "/etc/k.pem")
        assert broker.connection_name == "billing-worker"


def test_an_endpoint_description_as_url() -> None:
    options = parse("--url", "tcp:rabbit:5672", *REQUIRED)
    (broker,) = options["brokers"]
    assert broker.endpoint == "tcp:rabbit:5672"


def test_a_coroutine_handler_is_accepted() -> None:
    options = parse("--queue", "q", "--handler", f"{HANDLERS}:handle_async")
    assert options["handler_function"] is sys.modules[HANDLERS].handle_async


# -- errors ---------------------------------------------------------------------------------------

def test_queue_is_required() -> None:
    assert "--queue is required" in usage_error("--handler", f"{HANDLERS}:handle")


def test_handler_is_required() -> None:
    assert "--handler MODULE:FUNCTION is required" in usage_error("--queue", "q")


@pytest.mark.parametrize("spec", ["nocolon", ":handle", f"{HANDLERS}:"])
def test_handler_must_be_module_colon_function(spec: str) -> None:
    message = usage_error("--queue", "q", "--handler", spec)
    assert f"--handler {spec!r} is not MODULE:FUNCTION" in message


def test_unimportable_handler_module() -> None:
    message = usage_error("--queue", "q", "--handler", "txpika_no_such_module:handle")
    assert "cannot import 'txpika_no_such_module'" in message
    assert "ModuleNotFoundError" in message


def test_handler_module_failing_on_import() -> None:
    message = usage_error("--queue", "q", "--handler", "txpika_tap_broken:handle")
    assert "cannot import 'txpika_tap_broken'" in message
    assert "RuntimeError: broken on import" in message


def test_missing_handler_attribute() -> None:
    message = usage_error("--queue", "q", "--handler", f"{HANDLERS}:nope")
    assert f"{HANDLERS!r} has no attribute 'nope'" in message
    message = usage_error("--queue", "q", "--handler", f"{HANDLERS}:Jobs.nope")
    assert "has no attribute 'Jobs.nope'" in message


def test_handler_not_callable() -> None:
    message = usage_error("--queue", "q", "--handler", f"{HANDLERS}:NOT_CALLABLE")
    assert f"'{HANDLERS}:NOT_CALLABLE' is not callable" in message


@pytest.mark.parametrize("bind", ["orders", ":order.*", ""])
def test_bad_bind(bind: str) -> None:
    message = usage_error("--bind", bind, *REQUIRED)
    assert f"--bind {bind!r} is not EXCHANGE:ROUTING_KEY" in message


def test_bad_on_error() -> None:
    message = usage_error("--on-error", "drop", *REQUIRED)
    assert "--on-error must be requeue or reject, not 'drop'" in message


@pytest.mark.parametrize(("args", "expected"), [
    (("--prefetch", "-1"), "--prefetch must be >= 0"),
    (("--concurrency", "0"), "--concurrency >= 1"),
    (("--prefetch", "many"), "invalid literal"),
    (("--drain-timeout", "soon"), "could not convert"),
])
def test_bad_numbers(args: tuple[str, ...], expected: str) -> None:
    assert expected in usage_error(*args, *REQUIRED)


@pytest.mark.parametrize(("url", "expected"), [
    ("amqp://bob:hunter2@host:99999/", "port 99999 is outside 1..65535"),
    ("amqp://bob:hun/ter2@host/", "the URL port is not a number"),
    ("http://bob:hunter2@host/", "URL scheme 'http' is not amqp or amqps"),
    ("amqp://bob:hunter2@host/?heartbeat=often", "heartbeat='often' is not an integer"),
    ("amqp://bob:hunter2@host/?colour=red", "unknown URL option 'colour'"),
    ("amqp://bob:hunter2@host/a/b", "one virtual host"),
    ("localhost", "amqp:// or amqps:// URL or a Twisted endpoint"),
])
def test_malformed_url_names_the_problem_not_the_password(url: str, expected: str) -> None:
    message = usage_error("--url", url, *REQUIRED)
    assert message.startswith("--url: ")
    assert expected in message
    assert "hunter2" not in message and "hun" not in message and "ter2" not in message


def test_a_bad_url_among_several_is_reported() -> None:
    message = usage_error("--url", "amqp://a/", "--url", "amqp://b:0/", *REQUIRED)
    assert "port 0 is outside" in message


def test_unknown_option() -> None:
    assert "--frobnicate" in usage_error("--frobnicate", *REQUIRED)


def test_unexpected_argument() -> None:
    with pytest.raises(usage.UsageError):
        parse(*REQUIRED, "extra")


def test_the_handler_is_checked_before_the_url() -> None:
    """Everything is checked before any connection: a bad handler with a fine URL fails."""
    message = usage_error("--url", "amqp://localhost/", "--queue", "q", "--handler",
                          f"{HANDLERS}:nope")
    assert "no attribute" in message


# -- makeService ----------------------------------------------------------------------------------

def test_make_service_builds_the_amqp_and_consumer_services() -> None:
    options = parse(
        "--url", "amqp://u:p@node1/", "--url", "amqp://u:p@node2/",
        "--queue", "work", "--handler", f"{HANDLERS}:handle", "--prefetch", "9",
        "--concurrency", "4", "--declare", "--bind", "orders:order.*", "--on-error",
        "reject", "--drain-timeout", "5", "--handler-timeout", "2")
    top = makeService(options)
    assert isinstance(top, MultiService)
    assert not top.running
    amqp = top.getServiceNamed("amqp")
    consumer = top.getServiceNamed("consumer")
    # started in this order, so stopped in reverse: the consumer drains first
    assert list(top) == [amqp, consumer]
    assert isinstance(amqp, AMQPService)
    assert amqp.brokers == options["brokers"]
    assert [b.host for b in amqp.brokers] == ["node1", "node2"]
    assert amqp.state == "closed"
    assert isinstance(consumer, ConsumerService)
    assert consumer.amqp is amqp
    assert consumer in amqp._dependents
    assert consumer.queue == "work"
    assert consumer.handler is sys.modules[HANDLERS].handle
    assert (consumer.prefetch, consumer.concurrency) == (9, 4)
    assert consumer.on_error == "reject"
    assert consumer.declare
    assert consumer.bindings == [("orders", "order.*")]
    assert consumer.handler_timeout == 2.0
    assert consumer.drain_timeout == 5.0


def test_make_service_with_defaults() -> None:
    top = makeService(parse(*REQUIRED))
    amqp = top.getServiceNamed("amqp")
    consumer = top.getServiceNamed("consumer")
    assert amqp.current_broker is None
    assert [b.describe() for b in amqp.brokers] == ["amqp://guest@localhost:5672/%2F"]
    assert (consumer.prefetch, consumer.concurrency, consumer.on_error) == (50, 10, "requeue")
    assert not consumer.declare and consumer.bindings == []
    assert consumer.handler_timeout is None and consumer.drain_timeout == 30.0


# -- the plugin -----------------------------------------------------------------------------------

def test_the_plugin_is_discovered() -> None:
    (plugin,) = [p for p in getPlugins(IServiceMaker) if p.tapname == "txpika"]
    assert IServiceMaker.providedBy(plugin)
    assert plugin.options is txpika.tap.Options
    assert plugin.makeService is txpika.tap.makeService
    assert "AMQP" in plugin.name and plugin.description


def test_url_from_the_environment_keeps_the_password_off_the_command_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from txpika.tap import Options

    monkeypatch.setenv("TXPIKA_URL", "amqp://u:s3cr3t@node1/ amqp://u:s3cr3t@node2/")
    options = Options()
    options.parseOptions(["--queue", "q", "--handler", "json:dumps"])
    assert [b.host for b in options["brokers"]] == ["node1", "node2"]
    assert options["brokers"][0].password == "s3cr3t"
    monkeypatch.delenv("TXPIKA_URL")
    options = Options()
    options.parseOptions(["--queue", "q", "--handler", "json:dumps"])
    assert [b.host for b in options["brokers"]] == ["localhost"]
