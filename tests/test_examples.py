"""Run every program in examples/ for real against the broker, as a user would.

Each example runs as a subprocess (``sys.executable``, unbuffered) with a bounded timeout;
the tests check its exit status and the lines it prints. Long-running ones (the consumer and
the RPC server) run in the background alongside the publisher or the client. Every test
uses queue names of its own, so tests never see each other's messages.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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
    """An example running in the background; its output is collected by a thread."""

    def __init__(self, example: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / f"{example}.py"), *args],
            cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
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


def readme_quick_start() -> str:
    """The Python code block of the README's "Quick start" section."""
    text = (ROOT / "README.rst").read_text()
    section = text.split("\nQuick start\n===========\n", 1)[1]
    block = section.split(".. code-block:: python\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines)


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


@pytest.mark.parametrize("example", ["callbacks", "inline_callbacks", "async_await",
                                     "confirming_publisher", "consumer", "rpc_server",
                                     "rpc_client", "demo"])
def test_help(example: str) -> None:
    result = run(example, "--help")
    assert result.returncode == 0, explain(result)
    assert result.stdout.startswith("usage: "), explain(result)
    assert "amqp://guest:guest@localhost:5672/%2F" in result.stdout, explain(result)


def test_every_example_is_tested() -> None:
    tested = {"callbacks", "inline_callbacks", "async_await", "confirming_publisher",
              "consumer", "rpc_server", "rpc_client", "demo", "sansio_socket"}
    present = {p.stem for p in EXAMPLES.glob("*.py")}
    assert present == tested, f"examples without a test: {sorted(present - tested)}"
