"""Run every program in examples/ for real against the broker, as a user would.

Each example runs as a subprocess (``sys.executable``, unbuffered) with a bounded timeout;
the tests check its exit status and the lines it prints. Long-running ones (the consumer and
the RPC server) run in the background alongside the publisher or the client. Every test
uses queue names of its own, so tests never see each other's messages.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from tcpproxy import Proxy

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 60  # seconds, for any one example run


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONUTF8="1")
    # The examples import txpika from the checkout even without an editable install.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _default_sigint() -> None:
    # A child inherits an ignored SIGINT (e.g. from a shell's background job); Python and
    # Twisted only handle SIGINT if it is at its default, so put it back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(example: str, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run examples/<example>.py to completion; stdout and stderr together in ``.stdout``."""
    return subprocess.run(
        [sys.executable, str(EXAMPLES / f"{example}.py"), *args],
        cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)


def explain(result: subprocess.CompletedProcess[str] | Background) -> str:
    return f"exit status {result.returncode}; output:\n{result.stdout}"


class Background:
    """An example (or, with ``command``, any program) running in the background; its output
    is collected by a thread."""

    def __init__(self, example: str, *args: str, command: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            command or [sys.executable, str(EXAMPLES / f"{example}.py"), *args],
            cwd=ROOT, env=env or _env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, preexec_fn=_default_sigint)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.lines)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def wait_for_line(self, pattern: str, timeout: float = TIMEOUT) -> str:
        """The first output line matching the regular expression ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        pytest.fail(f"no line matching {pattern!r} from {self.proc.args}: {explain(self)}")

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.proc.args} did not finish within {timeout} s: {explain(self)}")
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)


@pytest.fixture
def background() -> Iterator[list[Background]]:
    """Background examples started by a test; killed at the end if still running."""
    started: list[Background] = []
    yield started
    for proc in started:
        proc.kill()


def start(started: list[Background], example: str, *args: str) -> Background:
    proc = Background(example, *args)
    started.append(proc)
    return proc


def unique(prefix: str) -> str:
    return f"txpika-test-{prefix}-{uuid.uuid4().hex[:12]}"


# Deletes a queue and an exchange: python -c CLEANUP URL QUEUE EXCHANGE.
CLEANUP = """
import sys
from twisted.internet import defer, task
import txpika

async def main(reactor, url, queue, exchange):
    conn = await txpika.connect(reactor, url)
    ch = await conn.channel()
    await ch.queue_delete(queue)
    if exchange:
        await ch.exchange_delete(exchange)
    await conn.close()

task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))
"""


def delete(broker_url: str, queue: str, exchange: str = "") -> subprocess.CompletedProcess[str]:
    """Delete ``queue`` (and ``exchange``, if given) on the broker, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-c", CLEANUP, broker_url, queue, exchange], cwd=ROOT, env=_env(),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=TIMEOUT, check=False)


# -- the same task three ways ------------------------------------------------------------------


@pytest.mark.parametrize("example", ["callbacks", "inline_callbacks", "async_await"])
@pytest.mark.parametrize("url_style", ["positional", "option"])
def test_three_styles(broker_url: str, example: str, url_style: str) -> None:
    args = [broker_url] if url_style == "positional" else ["--url", broker_url]
    result = run(example, *args)
    assert result.returncode == 0, explain(result)
    out = result.stdout
    assert re.search(r"^declared queue amq\.gen-\S+$", out, re.M), out
    assert "published 10 messages" in out, out
    bodies = ", ".join(f"message {i}" for i in range(10))
    assert f"received and acked 10 messages: {bodies}" in out, out
    assert out.rstrip().endswith("closed"), out


@pytest.mark.parametrize("example", ["callbacks", "inline_callbacks", "async_await"])
def test_three_styles_fail_cleanly_without_a_broker(example: str) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run(example, f"amqp://guest:guest@127.0.0.1:{port}/%2F")
    assert result.returncode == 1, explain(result)
    assert "failed: ConnectionRefusedError" in result.stdout, explain(result)
    assert "Traceback" not in result.stdout, explain(result)


# -- publisher confirms ------------------------------------------------------------------------


def test_confirming_publisher_all_confirmed(broker_url: str) -> None:
    queue = unique("confirm")
    result = run("confirming_publisher", broker_url, "--queue", queue, "--count", "25")
    assert result.returncode == 0, explain(result)
    assert (f"published 25 to '{queue}': 25 confirmed, 0 nacked, 0 returned, 0 unknown"
            in result.stdout), explain(result)


def test_confirming_publisher_unroutable(broker_url: str) -> None:
    result = run("confirming_publisher", "--url", broker_url, "--queue", unique("unroutable"),
                 "--no-declare", "--count", "6")
    assert result.returncode == 1, explain(result)
    out = result.stdout
    assert "message 0: returned: 312 NO_ROUTE" in out, out
    assert "message 5: returned: 312 NO_ROUTE" in out, out
    assert "... 2 more ..." in out, out
    assert "0 confirmed, 0 nacked, 6 returned, 0 unknown" in out, out


def test_confirming_publisher_nacked(broker_url: str) -> None:
    # A queue that holds 3 messages and rejects publishes beyond: the broker nacks them.
    result = run("confirming_publisher", broker_url, "--queue", unique("nack"),
                 "--max-length", "3", "--count", "5")
    assert result.returncode == 1, explain(result)
    out = result.stdout
    assert "message 3: nacked by the broker" in out, out
    assert "message 4: nacked by the broker" in out, out
    assert "3 confirmed, 2 nacked, 0 returned, 0 unknown" in out, out


# -- push consumer -----------------------------------------------------------------------------


def handled_bodies(output: str) -> list[str]:
    return re.findall(r"^handled '([^']*)'", output, re.M)


def test_consumer_with_publisher(broker_url: str, background: list[Background]) -> None:
    queue = unique("consumer")
    consumer = start(background, "consumer", broker_url, "--queue", queue, "--count", "20",
                     "--prefetch", "5", "--timeout", "50")
    consumer.wait_for_line(r"^consuming from ")
    published = run("confirming_publisher", broker_url, "--queue", queue, "--count", "20")
    assert published.returncode == 0, explain(published)
    assert consumer.wait() == 0, explain(consumer)
    assert handled_bodies(consumer.stdout) == [f"message {i}" for i in range(20)]
    assert "stopping: handled 20 messages" in consumer.stdout, explain(consumer)
    assert "closed cleanly after 20 messages" in consumer.stdout, explain(consumer)


def test_consumer_count_leaves_the_rest_in_the_queue(broker_url: str) -> None:
    queue = unique("count")
    published = run("confirming_publisher", broker_url, "--queue", queue, "--count", "10")
    assert published.returncode == 0, explain(published)
    # Prefetch 10: all ten arrive, three are handled, seven are put back.
    first = run("consumer", broker_url, "--queue", queue, "--count", "3", "--prefetch", "10",
                "--timeout", "30")
    assert first.returncode == 0, explain(first)
    second = run("consumer", broker_url, "--queue", queue, "--count", "7", "--timeout", "30")
    assert second.returncode == 0, explain(second)
    handled = handled_bodies(first.stdout) + handled_bodies(second.stdout)
    assert sorted(handled) == sorted(f"message {i}" for i in range(10))


def test_consumer_timeout_before_count_fails(broker_url: str) -> None:
    result = run("consumer", broker_url, "--queue", unique("idle"), "--count", "1",
                 "--timeout", "1")
    assert result.returncode == 1, explain(result)
    assert "stopping: 1 s passed" in result.stdout, explain(result)
    assert "failed: RuntimeError: handled 0 of 1 messages" in result.stdout, explain(result)


def test_consumer_fails_when_its_queue_is_deleted(broker_url: str,
                                                  background: list[Background]) -> None:
    queue = unique("deleted")
    consumer = start(background, "consumer", broker_url, "--queue", queue, "--timeout", "50")
    consumer.wait_for_line(r"^consuming from ")
    deleted = delete(broker_url, queue)
    assert deleted.returncode == 0, explain(deleted)
    assert consumer.wait() == 1, explain(consumer)
    assert re.search(r"^stopping: the consumer ended: consumer '[^']+' cancelled by the broker",
                     consumer.stdout, re.M), explain(consumer)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_consumer_stops_cleanly_on_signal(broker_url: str, background: list[Background],
                                          signum: int) -> None:
    queue = unique("signal")
    published = run("confirming_publisher", broker_url, "--queue", queue, "--count", "30")
    assert published.returncode == 0, explain(published)
    # Slow handlers (0.3 s each, 4 at a time), so some are running when the signal comes.
    consumer = start(background, "consumer", broker_url, "--queue", queue, "--prefetch", "4",
                     "--work", "0.3")
    consumer.wait_for_line(r"^handled 'message 5'")
    consumer.proc.send_signal(signum)
    assert consumer.wait() == 0, explain(consumer)
    out = consumer.stdout
    assert "stopping: shutdown requested" in out, out
    first = handled_bodies(out)
    assert f"closed cleanly after {len(first)} messages" in out, out
    assert 6 <= len(first) < 30, out
    # Everything it did not handle is still in the queue, and nothing it handled is.
    rest = run("consumer", broker_url, "--queue", queue, "--count", str(30 - len(first)),
               "--prefetch", "50", "--work", "0", "--timeout", "30")
    assert rest.returncode == 0, explain(rest)
    assert sorted(first + handled_bodies(rest.stdout)) == sorted(
        f"message {i}" for i in range(30))


# -- RPC over direct reply-to ------------------------------------------------------------------


def test_rpc_server_and_client(broker_url: str, background: list[Background]) -> None:
    queue = unique("rpc")
    server = start(background, "rpc_server", broker_url, "--queue", queue, "--count", "12",
                   "--timeout", "50")
    server.wait_for_line(r"^RPC server ready")
    client = run("rpc_client", "--url", broker_url, "--queue", queue, "--count", "12")
    assert client.returncode == 0, explain(client)
    assert "fib(0) = 0" in client.stdout, explain(client)
    assert "fib(11) = 89" in client.stdout, explain(client)
    assert "12 of 12 answers right" in client.stdout, explain(client)
    assert server.wait() == 0, explain(server)
    assert len(re.findall(r"^fib\(\d+\) -> \d+ \(correlation_id \w+\)$", server.stdout,
                          re.M)) == 12, explain(server)
    assert "closed after answering 12 requests" in server.stdout, explain(server)


def test_rpc_client_without_server(broker_url: str) -> None:
    result = run("rpc_client", broker_url, "--queue", unique("noserver"), "--count", "2")
    assert result.returncode == 1, explain(result)
    assert "no request queue" in result.stdout, explain(result)
    assert "0 of 2 answers right" in result.stdout, explain(result)


def test_rpc_client_times_out(broker_url: str) -> None:
    # The queue exists (a server declared it and left) but nobody answers.
    queue = unique("rpcidle")
    server = run("rpc_server", broker_url, "--queue", queue, "--timeout", "0.5")
    assert server.returncode == 0, explain(server)
    client = run("rpc_client", broker_url, "--queue", queue, "--count", "2", "--timeout", "1")
    assert client.returncode == 1, explain(client)
    assert "fib(1): no reply within 1 s" in client.stdout, explain(client)


def test_rpc_server_stops_on_sigterm(broker_url: str, background: list[Background]) -> None:
    server = start(background, "rpc_server", broker_url, "--queue", unique("rpcterm"))
    server.wait_for_line(r"^RPC server ready")
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait() == 0, explain(server)
    assert "stopping: shutdown requested" in server.stdout, explain(server)
    assert "closed after answering 0 requests" in server.stdout, explain(server)


# -- the demo and the sans-IO example ---------------------------------------------------------


def test_demo(broker_url: str) -> None:
    result = run("demo", broker_url, "--count", "3000", "--seconds", "0")
    assert result.returncode == 0, explain(result)
    out = result.stdout
    assert re.search(r"^round 1: publish .* msg/s.* \| consume .* msg/s", out, re.M), out
    assert not re.search(r"^round 2", out, re.M), out  # --seconds 0: exactly one round
    assert re.search(r"^published +3000 messages in .* msg/s, +[\d.]+ µs CPU/msg$", out,
                     re.M), out
    assert re.search(r"^consumed +3000 messages in ", out, re.M), out
    assert ("sent 3000, confirmed 3000, received 3000 (3000 distinct, 0 duplicates, "
            "0 corrupted), lost 0, left in queue 0") in out, out
    assert "OK: every message was confirmed" in out, out


def test_sansio_socket(broker_url: str) -> None:
    result = run("sansio_socket", broker_url)
    assert result.returncode == 0, explain(result)
    out = result.stdout
    assert "3 of 3 publishes confirmed" in out, out
    assert out.count("got b'message") == 3, out
    assert "closed:" in out, out


# -- reconnecting service: the reliable publisher ---------------------------------------------

# Small broker operations in a subprocess: python -c BROKER_OPS URL OP QUEUE [ARGUMENTS_JSON].
BROKER_OPS = """
import json, sys
from twisted.internet import defer, task
import txpika

async def main(reactor, url, op, queue, arguments="{}"):
    conn = await txpika.connect(reactor, url)
    ch = await conn.channel()
    if op == "depth":
        print((await ch.queue_declare(queue, passive=True)).message_count)
    elif op == "declare":
        await ch.queue_declare(queue, durable=True, exclusive=False, auto_delete=False,
                               arguments=json.loads(arguments))
    await conn.close()

task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))
"""


def broker_op(broker_url: str, op: str, queue: str, arguments: str = "{}") -> str:
    result = subprocess.run(
        [sys.executable, "-c", BROKER_OPS, broker_url, op, queue, arguments], cwd=ROOT,
        env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, explain(result)
    return result.stdout.strip()


def queue_depth(broker_url: str, queue: str) -> int:
    """Messages ready in ``queue``."""
    return int(broker_op(broker_url, "depth", queue))


@pytest.fixture
def work_queue(broker_url: str) -> Iterator[str]:
    """A durable queue name of this test's own, deleted at the end."""
    queue = unique("jobs")
    yield queue
    delete(broker_url, queue)


def proxied(broker_url: str, proxy: Proxy) -> str:
    """``broker_url`` with its host and port replaced by the proxy's."""
    return re.sub(r"@[^/@]+", f"@127.0.0.1:{proxy.port}", broker_url, count=1)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


SUMMARY = re.compile(r"^published (\d+) jobs to '[^']+' in [\d.]+ s \([\d,]+ msg/s\): (\d+) "
                     r"confirmed, (\d+) nacked, (\d+) returned, (\d+) refused, (\d+) failed; "
                     r"(\d+) republished after recovery$", re.M)


def states(output: str) -> list[str]:
    """The service states reliable_publisher.py printed, in order."""
    return re.findall(r"^\[ *[\d.]+ s\] service (\w+)", output, re.M)


def test_reliable_publisher(broker_url: str, work_queue: str) -> None:
    result = run("reliable_publisher", "--url", broker_url, "--queue", work_queue,
                 "--count", "50", "--flaky", "2", "--poison", "1")
    assert result.returncode == 0, explain(result)
    out = result.stdout
    assert states(out) == ["connecting", "open", "closed"], out
    assert re.search(r"^\[ *[\d.]+ s\] service open \(amqp://[^:@]+@", out, re.M), out
    assert "jobs failing once: [0, 16]; always: [33]" in out, out
    match = SUMMARY.search(out)
    assert match is not None, out
    assert match.groups() == ("50", "50", "0", "0", "0", "0", "0"), out
    assert queue_depth(broker_url, work_queue) == 50


def test_reliable_publisher_cluster_fails_over(broker_url: str, work_queue: str) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on: a dead cluster node
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    result = run("reliable_publisher", "--url", dead, "--url", broker_url,
                 "--queue", work_queue, "--count", "10")
    assert result.returncode == 0, explain(result)
    out = result.stdout
    # The first attempt goes to the dead node; the retry goes to the next URL.
    assert states(out) == ["connecting", "open", "closed"], out
    open_line = re.search(r"service open \((\S+)\)", out)
    assert open_line is not None and f":{port}/" not in open_line.group(1), out
    assert SUMMARY.search(out) is not None and ": 10 confirmed," in out, out


def test_reliable_publisher_gives_up_without_a_broker() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run("reliable_publisher", "--url", f"amqp://guest:guest@127.0.0.1:{port}/%2F",
                 "--count", "5", "--timeout", "1.5")
    assert result.returncode == 1, explain(result)
    assert "failed: 5 of 5 jobs still unconfirmed after 1.5 s (state connecting)" in (
        result.stdout), explain(result)
    assert "Traceback" not in result.stdout, explain(result)


def test_reliable_publisher_republishes_after_connection_loss(
        broker_url: str, broker_address: tuple[str, int], work_queue: str,
        background: list[Background]) -> None:
    count = 20000
    with Proxy(*broker_address) as proxy:
        publisher = start(background, "reliable_publisher", "--url", proxied(broker_url, proxy),
                          "--queue", work_queue, "--count", str(count), "--work", "0",
                          "--max-pending", "200")
        publisher.wait_for_line(r"publishing \d+ jobs")
        # Silence, then a reset: up to 200 publishes are unconfirmed when the connection dies.
        proxy.blackhole()
        time.sleep(0.3)
        proxy.cut()
        proxy.resume()
        assert publisher.wait() == 0, explain(publisher)
    out = publisher.stdout
    assert states(out) == ["connecting", "open", "recovering", "open", "closed"], out
    match = SUMMARY.search(out)
    assert match is not None, out
    assert match.group(2) == str(count), out  # all confirmed
    republished = int(match.group(7))
    assert 0 < republished <= 200, out
    # At least once: every job is in the queue; some of the republished ones may be twice.
    depth = queue_depth(broker_url, work_queue)
    assert count <= depth <= count + republished, (depth, out)


# -- the consumer daemon: twistd txpika with examples/jobs_handler.py -------------------------


def twistd(*options: str) -> list[str]:
    """``twistd -n --pidfile= txpika OPTIONS`` with this Python's twistd."""
    script = Path(sys.executable).with_name("twistd")
    base = [str(script)] if script.exists() else [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    return [*base, "-n", "--pidfile=", "txpika", *options]


def daemon_env() -> dict[str, str]:
    """examples/ on PYTHONPATH (for jobs_handler), the checkout too (txpika, the plugin)."""
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLES), env["PYTHONPATH"]])
    return env


def start_daemon(started: list[Background], url: str, queue: str, *options: str,
                 command: list[str] | None = None) -> Background:
    """Start ``twistd txpika`` with jobs_handler; returns once it consumes ``queue``."""
    daemon = Background("twistd", command=command or twistd(
        "--url", url, "--queue", queue, "--handler", "jobs_handler:handle", *options),
        env=daemon_env())
    started.append(daemon)
    daemon.wait_for_line(rf"\[txpika\.consumer#info\] consuming '{re.escape(queue)}'")
    return daemon


def jobs_done(daemon: Background) -> list[int]:
    return [int(n) for n in re.findall(r"\[jobs_handler#info\] job (\d+) done in",
                                       daemon.stdout)]


def stop_daemon(daemon: Background, timeout: float = TIMEOUT,
                signum: signal.Signals = signal.SIGTERM) -> None:
    """SIGTERM (or ``signum``), then check that twistd shut down cleanly: it ends itself with
    that signal after "Server Shut Down." (as twistd does after any signal), which init
    systems count as a clean stop."""
    daemon.proc.send_signal(signum)
    assert daemon.wait(timeout) == -signum, explain(daemon)
    out = daemon.stdout
    assert f"Received {signum.name}, shutting down." in out, out
    assert re.search(r"\[txpika\.consumer#info\] stopped consuming ", out), out
    assert "[txpika.client#info] AMQP service closed" in out, out
    assert out.rstrip().endswith("Server Shut Down."), out
    assert "Unhandled" not in out, out


def test_daemon_handles_jobs_and_stops_cleanly(broker_url: str, work_queue: str,
                                               background: list[Background]) -> None:
    daemon = start_daemon(background, broker_url, work_queue, "--declare",
                          "--concurrency", "5", "--prefetch", "20")
    published = run("reliable_publisher", "--url", broker_url, "--queue", work_queue,
                    "--count", "40", "--flaky", "2")
    assert published.returncode == 0, explain(published)
    wait_until(lambda: len(set(jobs_done(daemon))) == 40, "40 jobs done")
    stop_daemon(daemon)
    out = daemon.stdout
    assert sorted(jobs_done(daemon)) == list(range(40)), out  # each exactly once
    # The two flaky jobs failed once, were requeued, and done on redelivery.
    assert len(re.findall(r"handler failed on delivery \d+ from '[^']+'; requeueing", out)) == 2
    assert "TransientFailure: job 0 failed on its first delivery" in out, out
    assert len(re.findall(r"\] job (0|20) done in [\d.]+ ms \(redelivered\)$", out, re.M)) == 2
    assert queue_depth(broker_url, work_queue) == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_daemon_drains_running_handlers_on_signal(broker_url: str, work_queue: str,
                                                  background: list[Background],
                                                  signum: signal.Signals) -> None:
    daemon = start_daemon(background, broker_url, work_queue, "--declare",
                          "--concurrency", "4", "--drain-timeout", "20")
    published = run("reliable_publisher", "--url", broker_url, "--queue", work_queue,
                    "--count", "12", "--work", "1.5")
    assert published.returncode == 0, explain(published)
    time.sleep(0.5)  # four handlers are running (1.5 s each), eight jobs wait
    stop_daemon(daemon, signum=signum)
    out = daemon.stdout
    assert "[txpika.consumer#info] draining 4 running handlers (up to 20.0 s)" in out, out
    # The running ones finished and were acked; the rest went back to the queue.
    assert sorted(jobs_done(daemon)) == [0, 1, 2, 3], out
    assert queue_depth(broker_url, work_queue) == 8


def test_daemon_drain_timeout_requeues_unfinished_jobs(broker_url: str, work_queue: str,
                                                       background: list[Background]) -> None:
    daemon = start_daemon(background, broker_url, work_queue, "--declare",
                          "--concurrency", "3", "--drain-timeout", "0.5")
    published = run("reliable_publisher", "--url", broker_url, "--queue", work_queue,
                    "--count", "6", "--work", "30")
    assert published.returncode == 0, explain(published)
    time.sleep(0.5)
    stopping = time.monotonic()
    stop_daemon(daemon, timeout=15)
    assert time.monotonic() - stopping < 10, explain(daemon)
    out = daemon.stdout
    assert jobs_done(daemon) == [], out
    # At the deadline the handlers are cancelled and their jobs requeued; nothing is lost.
    assert len(re.findall(r"handler failed on delivery \d+ .*; requeueing", out)) == 3, out
    assert "CancelledError" in out, out
    assert queue_depth(broker_url, work_queue) == 6


def test_daemon_rejects_poison_to_the_dead_letter_queue(broker_url: str, work_queue: str,
                                                        background: list[Background]) -> None:
    dead_letters = work_queue + "-dead"
    try:
        broker_op(broker_url, "declare", dead_letters)
        broker_op(broker_url, "declare", work_queue, json.dumps(
            {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead_letters}))
        # No --declare: the queue exists, with arguments --declare would not give it.
        daemon = start_daemon(background, broker_url, work_queue, "--on-error", "reject")
        published = run("reliable_publisher", "--url", broker_url, "--queue", work_queue,
                        "--no-declare", "--count", "6", "--poison", "2")
        assert published.returncode == 0, explain(published)
        assert "always: [0, 3]" in published.stdout, explain(published)
        wait_until(lambda: len(jobs_done(daemon)) == 4, "4 jobs done")
        wait_until(lambda: daemon.stdout.count("; rejecting") == 2, "2 jobs rejected")
        stop_daemon(daemon)
        assert sorted(jobs_done(daemon)) == [1, 2, 4, 5], explain(daemon)
        assert "PoisonJob: job 0 is poison" in daemon.stdout, explain(daemon)
        assert queue_depth(broker_url, work_queue) == 0
        assert queue_depth(broker_url, dead_letters) == 2
    finally:
        delete(broker_url, dead_letters)


def test_daemon_recovers_from_a_lost_connection(broker_url: str,
                                                broker_address: tuple[str, int],
                                                work_queue: str,
                                                background: list[Background]) -> None:
    count = 300
    with Proxy(*broker_address) as proxy:
        daemon = start_daemon(background, proxied(broker_url, proxy), work_queue, "--declare",
                              "--concurrency", "5", "--prefetch", "10")
        published = run("reliable_publisher", "--url", broker_url, "--queue", work_queue,
                        "--count", str(count), "--work", "0.01")
        assert published.returncode == 0, explain(published)
        wait_until(lambda: len(jobs_done(daemon)) >= 30, "30 jobs done")
        proxy.cut()  # a reset in the middle of the work
        wait_until(lambda: len(set(jobs_done(daemon))) == count, f"{count} jobs done")
        stop_daemon(daemon)
    out = daemon.stdout
    assert "[txpika.client#info] AMQP service recovering" in out, out
    assert out.count("[txpika.client#info] AMQP service open") == 2, out
    # Every job was done; those whose ack the reset lost ran again (at least once).
    done = jobs_done(daemon)
    assert sorted(set(done)) == list(range(count)), out
    assert len(done) - count <= 10 + 5, out  # at most what was delivered and unacked
    assert queue_depth(broker_url, work_queue) == 0


def test_daemon_with_declare_consumes_again_after_its_queue_is_deleted(
        broker_url: str, work_queue: str, background: list[Background]) -> None:
    daemon = start_daemon(background, broker_url, work_queue, "--declare")
    deleted = delete(broker_url, work_queue)
    assert deleted.returncode == 0, explain(deleted)
    daemon.wait_for_line(r"cancelled by the broker: starting it again")
    # The daemon declared the queue again: publish without declaring it.
    published = run("reliable_publisher", "--url", broker_url, "--queue", work_queue,
                    "--no-declare", "--count", "5")
    assert published.returncode == 0, explain(published)
    wait_until(lambda: len(jobs_done(daemon)) == 5, "5 jobs done", timeout=15)
    stop_daemon(daemon)


def test_daemon_without_declare_consumes_again_once_its_queue_is_back(
        broker_url: str, work_queue: str, background: list[Background]) -> None:
    broker_op(broker_url, "declare", work_queue)
    daemon = start_daemon(background, broker_url, work_queue)
    deleted = delete(broker_url, work_queue)
    assert deleted.returncode == 0, explain(deleted)
    daemon.wait_for_line(r"cancelled by the broker")
    broker_op(broker_url, "declare", work_queue)  # the queue is back, as it was
    published = run("reliable_publisher", "--url", broker_url, "--queue", work_queue,
                    "--no-declare", "--count", "5")
    assert published.returncode == 0, explain(published)
    wait_until(lambda: len(jobs_done(daemon)) == 5, "5 jobs done", timeout=8)
    stop_daemon(daemon)


def test_daemon_refuses_a_missing_handler(broker_url: str) -> None:
    result = subprocess.run(
        twistd("--url", broker_url, "--queue", "q", "--handler", "jobs_handler:nope"),
        cwd=ROOT, env=daemon_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 1, explain(result)
    assert "--handler: 'jobs_handler' has no attribute 'nope'" in result.stdout, explain(result)


def load_jobs_handler() -> Any:
    spec = importlib.util.spec_from_file_location("jobs_handler", EXAMPLES / "jobs_handler.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeMessage:
    def __init__(self, body: bytes, redelivered: bool = False) -> None:
        self.body = body
        self.redelivered = redelivered


def call(handle: Any, message: FakeMessage) -> BaseException | None:
    """Run the handler coroutine (no work: it never waits); what it raised, if anything."""
    coroutine = handle(message)
    try:
        coroutine.send(None)
    except StopIteration:
        return None
    except Exception as exc:
        return exc
    coroutine.close()
    raise AssertionError("the handler waited")


def test_jobs_handler_contract() -> None:
    jobs = load_jobs_handler()
    assert call(jobs.handle, FakeMessage(b'{"id": 1, "work": 0}')) is None
    assert isinstance(call(jobs.handle, FakeMessage(b"not json")), jobs.PoisonJob)
    assert isinstance(call(jobs.handle, FakeMessage(b'{"no": "id"}')), jobs.PoisonJob)
    assert isinstance(call(jobs.handle, FakeMessage(b'[1, 2]')), jobs.PoisonJob)
    poison = b'{"id": 2, "work": 0, "fail": "always"}'
    assert isinstance(call(jobs.handle, FakeMessage(poison, redelivered=True)), jobs.PoisonJob)
    flaky = b'{"id": 3, "work": 0, "fail": "once"}'
    assert isinstance(call(jobs.handle, FakeMessage(flaky)), jobs.TransientFailure)
    assert call(jobs.handle, FakeMessage(flaky, redelivered=True)) is None


# -- running under systemd --------------------------------------------------------------------

UNIT = EXAMPLES / "txpika-consumer.service"


def unit_settings() -> dict[str, str]:
    """``Key=value`` lines of the unit (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", UNIT.read_text())
    settings = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_systemd_unit_settings() -> None:
    settings = unit_settings()
    assert settings["Type"] == "simple"
    assert settings["Restart"] == "on-failure"
    assert settings["KillSignal"] == "SIGTERM"
    argv = settings["ExecStart"].split()
    assert argv[0].endswith("/twistd") and argv[1:4] == ["-n", "--pidfile=", "txpika"], argv
    drain = float(argv[argv.index("--drain-timeout") + 1])
    # Drain, then up to 10 s for the broker's close-ok (txpika.client.STOP_TIMEOUT).
    from txpika.client import STOP_TIMEOUT

    assert float(settings["TimeoutStopSec"]) > drain + STOP_TIMEOUT, settings


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit with paths that exist here.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/txpika/.venv/bin/twistd", twistd()[0])
                    .replace("/opt/txpika/app", str(EXAMPLES)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=TIMEOUT, check=False)
    assert result.returncode == 0, explain(result)


def test_systemd_unit_command_runs_and_stops_on_sigterm(broker_url: str, work_queue: str,
                                                        background: list[Background]) -> None:
    """What systemd would do: start ExecStart (with this checkout's paths, this test's
    broker and queue), then stop it with KillSignal."""
    argv = unit_settings()["ExecStart"].replace("%%", "%").split()
    argv[0:1] = twistd()[:-3]
    argv[argv.index("--url") + 1] = broker_url
    argv[argv.index("--queue") + 1] = work_queue
    daemon = start_daemon(background, broker_url, work_queue, command=argv)
    published = run("reliable_publisher", "--url", broker_url, "--queue", work_queue,
                    "--count", "10")
    assert published.returncode == 0, explain(published)
    wait_until(lambda: len(jobs_done(daemon)) == 10, "10 jobs done")
    stop_daemon(daemon)
    assert "(prefetch 50, concurrency 10)" in daemon.stdout, explain(daemon)


# -- the daemon demo (scripts/demo) -----------------------------------------------------------


def test_demo_daemon(broker_url: str) -> None:
    result = run("demo", "--daemon", broker_url, "--count", "500", "--work", "0.001")
    assert result.returncode == 0, explain(result)
    out = result.stdout
    assert re.search(r"^daemon: PYTHONPATH=examples twistd -n --pidfile= txpika --url \S+ "
                     r"--queue txpika-demo-jobs-\w+ --handler jobs_handler:handle --declare ",
                     out, re.M), out
    password = urlsplit(broker_url).password
    assert not password or f":{password}@" not in out, out
    assert re.search(r"^daemon consuming after [\d.]+ s$", out, re.M), out
    assert re.search(r"^  publisher \| published 500 jobs .*: 500 confirmed,", out, re.M), out
    assert re.search(r"^handled 500 jobs in [\d.]+ s: [\d,]+ jobs/s ", out, re.M), out
    assert "2 handler failures (--on-error requeue: put back and redelivered)" in out, out
    assert re.search(r"^daemon gone [\d.]+ s after SIGTERM \(killed by SIGTERM\): a clean "
                     r"shutdown", out, re.M), out
    assert ("sent 500, confirmed 500, handled 500 (500 distinct, 0 duplicates), "
            "left in queue 0, lost 0") in out, out
    assert "OK: every job was confirmed, handled and acked" in out, out


def docs_text() -> str:
    """The README and the guides (docs/guides/*.rst), where the README's long sections went."""
    pages = [ROOT / "README.rst", *sorted((ROOT / "docs" / "guides").glob("*.rst"))]
    return "\n".join(page.read_text() for page in pages)


def readme_block(title: str, language: str = "python") -> str:
    """The first code block of the section ``title`` of the README or of a guide."""
    text = docs_text()
    section = text.split(f"\n{title}\n{'=' * len(title)}\n", 1)[1]
    block = section.split(f".. code-block:: {language}\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines)


def readme_quick_start() -> str:
    """The Python code block of the README's "Quick start" section."""
    return readme_block("Quick start")


def test_readme_quick_start(broker_url: str, tmp_path: Path) -> None:
    code = readme_quick_start()
    assert "task.react(main)" in code, code
    url = "amqp://guest:guest@localhost:5672/%2F?heartbeat=30"
    assert url in code, code
    queue, exchange = unique("billing"), unique("orders")
    script = tmp_path / "quick_start.py"
    script.write_text(code.replace(url, broker_url)
                      .replace('"billing"', repr(queue)).replace('"orders"', repr(exchange)))
    try:
        result = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT,
            check=False)
    finally:
        cleanup = delete(broker_url, queue, exchange)
    assert result.returncode == 0, explain(result)
    assert result.stdout == "order.created b'{\"id\": 1}'\n", explain(result)
    assert cleanup.returncode == 0, explain(cleanup)


def test_readme_reconnecting_service(broker_url: str, tmp_path: Path) -> None:
    code = readme_block("Reconnecting service")
    url = "amqp://guest:guest@localhost:5672/%2F"
    assert f'AMQPService(reactor, ["{url}"])' in code, code
    exchange = unique("events")
    script = tmp_path / "service.py"
    script.write_text(code.replace(url, broker_url).replace('"events"', repr(exchange)))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT,
        check=False)
    assert result.returncode == 0, explain(result)
    # What the README says it prints.
    assert result.stdout == ("service connecting\nservice open\n"
                             "user.created b'{\"id\": 1}'\nservice closed\n"), explain(result)


def test_readme_blocking_example(broker_url: str, tmp_path: Path) -> None:
    code = readme_block("Scripts: txpika.blocking")
    url = "amqp://guest:guest@localhost/%2F"
    assert f'blocking.connect("{url}")' in code, code
    queue = unique("jobs")
    script = tmp_path / "blocking_script.py"
    script.write_text(code.replace(url, broker_url).replace('"jobs"', repr(queue))
                      + "\nprint(outcomes)\n")
    try:
        result = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT,
            check=False)
    finally:
        cleanup = delete(broker_url, queue)
    assert result.returncode == 0, explain(result)
    assert result.stdout == "[None, None]\n", explain(result)  # both confirmed
    assert cleanup.returncode == 0, explain(cleanup)


def test_readme_systemd_excerpt_matches_the_unit() -> None:
    excerpt = readme_block("Running under systemd", "ini")
    unit = UNIT.read_text()
    for line in excerpt.splitlines():
        if line.strip():
            assert line in unit.splitlines(), line


@pytest.mark.parametrize("example", ["callbacks", "inline_callbacks", "async_await",
                                     "confirming_publisher", "consumer", "rpc_server",
                                     "rpc_client", "demo", "demo --daemon",
                                     "reliable_publisher"])
def test_help(example: str) -> None:
    name, *options = example.split()
    result = run(name, *options, "--help")
    assert result.returncode == 0, explain(result)
    assert result.stdout.startswith("usage: "), explain(result)
    assert "amqp://guest:guest@localhost:5672/%2F" in result.stdout, explain(result)


def test_every_example_is_tested() -> None:
    # An example counts as tested when some test module names it (its file name or stem,
    # quoted), as the tests that run examples do.
    tests = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    untested = sorted(
        p.name for p in EXAMPLES.glob("*.py")
        if not any(f"{q}{name}{q}" in tests for name in (p.name, p.stem) for q in "\"'"))
    assert not untested, f"examples no test runs: {untested}"
