"""``twistd txpika`` as a real subprocess.

- Against a private node: the daemon declares and binds its queue, consumes and acks what
  the test publishes (the handler, tests/handlers_for_tests.py, records message ids in a
  file), survives a broker restart, and on SIGTERM drains, closes cleanly and exits 0:
  afterwards nothing is unacked and every published message was handled or is still
  ready in the queue.
- Bad command lines (a missing handler module, a non-callable handler, a malformed URL, an
  unknown option, ...) make twistd exit non-zero at once with a message naming the
  problem, without ever connecting: the URL points at a socket that listens but is never
  accepted from, and no connection may reach it.
- ``twistd txpika --help`` lists every option of DESIGN §6.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from rabbitnode import PrivateNode, free_port
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

import txpika
from txpika import BasicProperties

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def twistd_command() -> list[str]:
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistd_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXPIKA_TEST_")}
    path = [str(TESTS), str(ROOT)]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.update(extra)
    return env


def run_twistd(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*twistd_command(), "-n", "--pidfile=", "txpika", *args],
        env=twistd_env(), cwd=str(ROOT), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=timeout, check=False)


def unique(prefix: str = "q") -> str:
    return f"txpika-test-{prefix}-{uuid.uuid4().hex[:12]}"


def within(d: Deferred[Any], seconds: float) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


# -- bad command lines: refused before any connection ---------------------------------------


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A loopback socket that listens but never accepts: a connection attempt would sit in
    its backlog, where the test finds it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def assert_never_connected(sock: socket.socket) -> None:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return
    conn.close()
    pytest.fail("twistd connected to the broker before refusing its command line")


SECRET = "s3cr3t-pw"

# case: (options replaced or added, extra arguments, what the error line must say)
BAD_COMMAND_LINES: dict[str, tuple[dict[str, str], list[str], list[str]]] = {
    "missing handler module": (
        {"--handler": "no_such_module_for_txpika:handle"}, [],
        ["--handler", "cannot import", "no_such_module_for_txpika"]),
    "missing handler function": (
        {"--handler": "handlers_for_tests:no_such_handler"}, [],
        ["--handler", "has no attribute", "no_such_handler"]),
    "non-callable handler": (
        {"--handler": "handlers_for_tests:NOT_CALLABLE"}, [],
        ["--handler", "handlers_for_tests:NOT_CALLABLE", "is not callable"]),
    "handler without a function": (
        {"--handler": "handlers_for_tests"}, [], ["--handler", "MODULE:FUNCTION"]),
    "malformed URL port": (
        {"--url": f"amqp://guest:{SECRET}@127.0.0.1:notaport/"}, [],
        ["--url", "port is not a number"]),
    "URL with another scheme": (
        {"--url": f"http://guest:{SECRET}@127.0.0.1:{{port}}/"}, [], ["--url", "'http'"]),
    "unknown URL option": (
        {"--url": f"amqp://guest:{SECRET}@127.0.0.1:{{port}}/?no_such_option=1"}, [],
        ["--url", "unknown URL option", "no_such_option"]),
    "unknown option": ({}, ["--no-such-option"], ["--no-such-option", "not recognized"]),
    "bad --on-error": ({"--on-error": "ignore"}, [], ["--on-error", "requeue or reject"]),
    "bad --bind": ({"--bind": "no-routing-key"}, [], ["--bind", "EXCHANGE:ROUTING_KEY"]),
    "bad --prefetch": ({"--prefetch": "many"}, [], ["'many'"]),
    "missing --queue": ({"--queue": ""}, [], ["--queue is required"]),
}


@pytest.mark.parametrize("case", list(BAD_COMMAND_LINES))
def test_bad_command_line_exits_at_once_without_connecting(
        case: str, silent_listener: socket.socket) -> None:
    overrides, extra, expected = BAD_COMMAND_LINES[case]
    port = silent_listener.getsockname()[1]
    options = {"--url": f"amqp://guest:{SECRET}@127.0.0.1:{port}/%2F", "--queue": "jobs",
               "--handler": "handlers_for_tests:handle"}
    options.update({k: v.replace("{port}", str(port)) for k, v in overrides.items()})
    argv = [part for item in options.items() for part in item] + extra
    started = time.monotonic()
    try:
        proc = run_twistd(*argv, timeout=15)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        text = out.decode(errors="replace") if isinstance(out, bytes) else out
        pytest.fail(f"twistd was still running after 15 s:\n{text[-3000:]}")
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert elapsed < 10, f"took {elapsed:.1f} s to refuse"
    # twistd prints the usage, then "twistd: <the error>" as the last line.
    last = output.strip().splitlines()[-1] if output.strip() else ""
    for part in expected:
        assert part in last, f"{part!r} not in the error line {last!r}\n{output}"
    assert SECRET not in output  # never the password
    # The error is about the command line, not a connection.
    for word in ("refused", "connecting", "AMQP service", "Traceback"):
        assert word not in output, output
    assert_never_connected(silent_listener)


def test_help_lists_every_option() -> None:
    proc = run_twistd("--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for option in ("--url", "--queue", "--handler", "--prefetch", "--concurrency",
                   "--declare", "--bind", "--on-error", "--drain-timeout"):
        assert f"{option}" in text, f"{option} missing from --help:\n{text}"
    # The defaults of DESIGN §6.
    flat = " ".join(text.split())
    for default in ("[default: 50]", "[default: 10]", "[default: requeue]",
                    "[default: 30"):
        assert default in flat, f"{default} missing from --help:\n{text}"
    assert "MODULE:FUNCTION" in text and "EXCHANGE:ROUTING_KEY" in text
    assert "requeue" in text and "reject" in text


def test_plugin_is_listed_by_twistd() -> None:
    proc = subprocess.run([*twistd_command(), "--help"], env=twistd_env(), cwd="/",
                          capture_output=True, text=True, timeout=20, check=False)
    assert proc.returncode == 0, proc.stderr
    assert any(line.split()[:1] == ["txpika"] for line in proc.stdout.splitlines()), \
        proc.stdout


# -- a daemon against a private node ------------------------------------------------------


class Daemon:
    """A ``twistd -n txpika`` subprocess, its log in a file."""

    def __init__(self, tmp_path: Path, *args: str, delay: float = 0.0) -> None:
        self.handled_file = tmp_path / "handled.txt"
        self.handled_file.touch()
        self.log_file = tmp_path / "twistd.log"
        self._log = self.log_file.open("wb")
        env = twistd_env(TXPIKA_TEST_HANDLED=str(self.handled_file),
                         TXPIKA_TEST_HANDLER_DELAY=str(delay))
        self.proc = subprocess.Popen(
            [*twistd_command(), "-n", "--pidfile=", "txpika", *args], env=env,
            cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def handled(self) -> list[str]:
        """Message ids handled so far (complete lines only)."""
        text = self.handled_file.read_text()
        return text.split("\n")[:-1]

    async def wait_for(self, condition: Any, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"twistd exited ({self.proc.returncode}) while waiting for "
                            f"{what}:\n{self.log}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not happen within {seconds} s:\n{self.log[-4000:]}")
            await sleep(0.05)

    async def wait_exit(self, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"twistd did not exit within {seconds} s:\n{self.log[-4000:]}")
            await sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


async def publish(url: str, routes: list[tuple[str, str]], ids: list[str]) -> None:
    """Publish one persistent message per id, round-robin over ``routes``, confirmed."""
    conn = await within(txpika.connect(reactor, url), 15)
    try:
        ch = await within(conn.channel(), 10)
        await within(ch.confirm_select(), 10)
        confirms = [
            ch.basic_publish(*routes[i % len(routes)], message_id.encode(), mandatory=True,
                             properties=BasicProperties(message_id=message_id,
                                                        delivery_mode=2))
            for i, message_id in enumerate(ids)]
        for d in confirms:
            await within(d, 20)
    finally:
        await within(conn.close(), 10)


def queue_counts(node: PrivateNode, queue: str) -> tuple[int, int]:
    """(messages_ready, messages_unacknowledged) of ``queue``, as rabbitmqctl says."""
    proc = node.rabbitmqctl("list_queues", "--quiet", "--no-table-headers", "name",
                            "messages_ready", "messages_unacknowledged")
    for line in proc.stdout.splitlines():
        fields = line.split("\t")
        if fields[0] == queue:
            return int(fields[1]), int(fields[2])
    pytest.fail(f"queue {queue} not listed:\n{proc.stdout}")


def broker_log(node: PrivateNode) -> str:
    """The private node's log files, concatenated."""
    assert node.dir is not None
    return "".join(path.read_text(errors="replace")
                   for path in sorted((node.dir / "log").glob("*.log")))


async def drain_queue(url: str, queue: str) -> list[str]:
    """Take (and ack) every message still in ``queue``; their ids."""
    conn = await within(txpika.connect(reactor, url), 15)
    ids: list[str] = []
    try:
        ch = await within(conn.channel(), 10)
        while True:
            message = await within(ch.basic_get(queue, auto_ack=True), 10)
            if message is None:
                return ids
            ids.append(message.properties.message_id)
    finally:
        await within(conn.close(), 10)


@pytest.mark.broker
@pytest.mark.private_broker
@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_daemon_consumes_survives_a_restart_and_stops_cleanly(
        private_node: PrivateNode, tmp_path: Path) -> None:
    node = private_node
    queue = unique("twistd")
    daemon = Daemon(
        tmp_path, "--url", node.url, "--queue", queue, "--handler",
        "handlers_for_tests:handle", "--declare", "--bind", "amq.topic:jobs.*",
        "--prefetch", "20", "--concurrency", "5", "--drain-timeout", "10",
        "--heartbeat", "5", delay=0.05)  # 300 messages: 3 s of work, still busy at SIGTERM
    try:
        await _exercise(daemon, node, queue)
    finally:
        daemon.kill()


async def _exercise(daemon: Daemon, node: PrivateNode, queue: str) -> None:
    routes = [("", queue), ("amq.topic", "jobs.created")]  # direct, and through --bind
    await daemon.wait_for(lambda: f"consuming {queue!r}" in daemon.log, 20,
                          "the daemon consuming")
    published: list[str] = []

    async def publish_some(count: int) -> list[str]:
        ids = [uuid.uuid4().hex for _ in range(count)]
        published.extend(ids)
        await publish(node.url, routes, ids)
        return ids

    ids = await publish_some(200)
    await daemon.wait_for(lambda: set(daemon.handled()) >= set(ids), 20,
                          "the first 200 messages handled")

    # A broker restart: the daemon recovers and keeps consuming.
    await within(deferToThread(node.stop_app), 60)
    await sleep(0.5)
    assert daemon.proc.poll() is None, daemon.log
    await within(deferToThread(node.start_app), 90)
    ids = await publish_some(200)  # wait in the queue until the daemon is back
    await daemon.wait_for(lambda: set(daemon.handled()) >= set(ids), 45,
                          "messages handled after the restart")
    assert "AMQP service recovering" in daemon.log

    # SIGTERM while it works: drain, close, exit 0.
    ids = await publish_some(300)
    await daemon.wait_for(lambda: len(set(daemon.handled()) & set(ids)) >= 20, 20,
                          "the daemon busy again")
    broker_log_before = broker_log(node)
    daemon.proc.send_signal(signal.SIGTERM)
    code = await daemon.wait_exit(30)
    log = daemon.log
    # twistd ends a clean shutdown that a signal started by re-raising that signal
    # (twisted.application.app._exitWithSignal): "exits as after any clean shutdown".
    assert code in (0, -signal.SIGTERM), log
    assert "Received SIGTERM" in log and "Server Shut Down." in log
    assert f"stopped consuming {queue!r}" in log
    assert "AMQP service closed" in log
    for bad in ("Traceback", "Unhandled", "CRITICAL", "#critical"):
        assert bad not in log, log

    assert "draining" in log  # SIGTERM found handlers running, and waited for them
    # The broker saw a clean connection.close, not a dropped socket.
    await sleep(0.5)
    closing = broker_log(node)[len(broker_log_before):]
    assert "txpika-consumer" in closing, closing
    assert "unexpectedly closed" not in closing, closing

    ready, unacked = await within(deferToThread(queue_counts, node, queue), 60)
    assert unacked == 0
    handled = daemon.handled()
    left = await drain_queue(node.url, queue)
    assert len(left) == ready
    lost = set(published) - set(handled) - set(left)
    assert not lost, f"{len(lost)} messages lost"
    assert set(handled) | set(left) == set(published)
    print(f"\nhandled {len(set(handled))} of {len(published)} ({len(handled) - len(set(handled))}"
          f" duplicates), {ready} left ready at SIGTERM")


@pytest.mark.parametrize("broker", ["refusing", "silent"])
def test_sigterm_before_any_connection_shuts_down_cleanly(
        broker: str, silent_listener: socket.socket, tmp_path: Path) -> None:
    """No broker yet (connections refused, or a handshake that never answers): SIGTERM
    still ends twistd at once and cleanly, with no error logged."""
    port = silent_listener.getsockname()[1] if broker == "silent" else free_port()
    daemon = Daemon(tmp_path, "--url", f"amqp://guest:guest@127.0.0.1:{port}/%2F",
                    "--queue", "jobs", "--handler", "handlers_for_tests:handle")
    try:
        deadline = time.monotonic() + 15
        while "AMQP service connecting" not in daemon.log:
            assert daemon.proc.poll() is None, daemon.log
            assert time.monotonic() < deadline, daemon.log
            time.sleep(0.05)
        time.sleep(1.0)  # a refused attempt or two, or a handshake under way
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.proc.wait(10)
    finally:
        daemon.kill()
    log = daemon.log
    assert code in (0, -signal.SIGTERM), log
    assert "Server Shut Down." in log and "AMQP service closed" in log
    for bad in ("Traceback", "Unhandled", "#critical", "#error"):
        assert bad not in log, log
