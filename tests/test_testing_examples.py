"""The examples against MemoryBroker, and the README's "Testing your code" examples.

- examples/consumer.py and examples/confirming_publisher.py run as subprocesses against
  ``MemoryBroker(reactor).listen()`` (the reactor serves the broker while they run), and
  the test reads the broker's state afterwards;
- examples/test_orders.py (plain pytest) and examples/test_orders_trial.py (trial), the
  tests of examples/orders.py that the README shows, run as a user runs them, and the
  README's code blocks are those files, so the documentation cannot rot.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue

from txpika.testing import MemoryBroker

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 60


def env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), str(EXAMPLES),
                                         os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1", PYTHONUTF8="1")


def run(*args: str, cwd: Path = ROOT) -> Deferred[tuple[int, str]]:
    """Run ``python ARGS`` without blocking the reactor: (exit status, output)."""
    d = getProcessOutputAndValue(sys.executable, args, env=env(), path=str(cwd))
    d.addTimeout(TIMEOUT, reactor)  # type: ignore[arg-type]
    return d.addCallback(lambda r: (r[2], (r[0] + r[1]).decode(errors="replace")))


def example(name: str, *args: str) -> Deferred[tuple[int, str]]:
    return run(str(EXAMPLES / f"{name}.py"), *args)


async def until(condition: Any, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {seconds} s")
        await deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]


@pytest.fixture
def broker() -> Any:
    broker = MemoryBroker(reactor)  # real time: the examples' heartbeats and timeouts
    yield broker
    pytest_twisted.blockon(broker.stop_listening())


@pytest_twisted.ensureDeferred
async def test_confirming_publisher_all_confirmed(broker: MemoryBroker) -> None:
    url = await broker.listen(reactor)  # type: ignore[arg-type]
    code, out = await example("confirming_publisher", url, "--queue", "jobs", "--count", "25")
    assert code == 0, out
    assert "published 25 to 'jobs': 25 confirmed, 0 nacked, 0 returned, 0 unknown" in out
    messages = broker.queue("jobs").messages
    assert [m.body for m in messages] == [f"message {i}".encode() for i in range(25)]
    assert {(m.properties.delivery_mode, m.properties.content_type) for m in messages} == {
        (2, "text/plain")}
    assert broker.queue("jobs").arguments == {"x-expires": 600000}
    assert broker.queue("jobs").durable


@pytest_twisted.ensureDeferred
async def test_confirming_publisher_unroutable_and_nacked(broker: MemoryBroker) -> None:
    url = await broker.listen(reactor)  # type: ignore[arg-type]
    code, out = await example("confirming_publisher", "--url", url, "--queue", "nowhere",
                              "--no-declare", "--count", "6")
    assert code == 1, out
    assert "message 0: returned: 312 NO_ROUTE" in out, out
    assert "0 confirmed, 0 nacked, 6 returned, 0 unknown" in out, out
    code, out = await example("confirming_publisher", url, "--queue", "small",
                              "--max-length", "3", "--count", "5")
    assert code == 1, out
    assert "message 3: nacked by the broker" in out, out
    assert "3 confirmed, 2 nacked, 0 returned, 0 unknown" in out, out
    assert len(broker.queue("small").messages) == 3


@pytest_twisted.ensureDeferred
async def test_consumer_with_publisher(broker: MemoryBroker) -> None:
    url = await broker.listen(reactor)  # type: ignore[arg-type]
    consumer = example("consumer", url, "--queue", "work", "--count", "20", "--prefetch", "5",
                       "--timeout", "50")
    await until(lambda: "work" in broker.queues() and broker.queue("work").consumers,
                "the consumer consuming")
    code, out = await example("confirming_publisher", url, "--queue", "work", "--count", "20")
    assert code == 0, out
    code, out = await consumer
    assert code == 0, out
    assert re.findall(r"^handled '([^']*)'", out, re.M) == [f"message {i}" for i in range(20)]
    assert "closed cleanly after 20 messages" in out, out
    queue = broker.queue("work")
    assert queue.messages == () and queue.unacked == () and queue.consumers == ()


@pytest_twisted.ensureDeferred
async def test_consumer_puts_back_what_it_did_not_handle(broker: MemoryBroker) -> None:
    url = await broker.listen(reactor)  # type: ignore[arg-type]
    broker.declare_queue("backlog", durable=True, arguments={"x-expires": 600000})
    for i in range(10):
        broker.publish("", "backlog", f"message {i}".encode())
    code, out = await example("consumer", url, "--queue", "backlog", "--count", "3",
                              "--prefetch", "10", "--timeout", "30")
    assert code == 0, out
    left = broker.queue("backlog").messages
    handled = re.findall(r"^handled '([^']*)'", out, re.M)
    assert len(handled) == 3 and len(left) == 7
    assert sorted(handled + [m.body.decode() for m in left]) == sorted(
        f"message {i}" for i in range(10))
    assert all(m.redelivered for m in left if m.body.decode() not in handled)


@pytest_twisted.ensureDeferred
async def test_consumer_fails_when_its_queue_is_deleted(broker: MemoryBroker) -> None:
    url = await broker.listen(reactor)  # type: ignore[arg-type]
    consumer = example("consumer", url, "--queue", "doomed", "--timeout", "50")
    await until(lambda: "doomed" in broker.queues() and broker.queue("doomed").consumers,
                "the consumer consuming")
    broker.delete_queue("doomed")
    code, out = await consumer
    assert code == 1, out
    assert re.search(r"^stopping: the consumer ended: consumer '[^']+' cancelled by the "
                     r"broker", out, re.M), out


# -- the README's "Testing your code" ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_orders_tests_pass_with_pytest() -> None:
    code, out = await run("-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(EXAMPLES / "test_orders.py"))
    assert code == 0, out
    assert re.search(r"^4 passed", out, re.M), out


@pytest_twisted.ensureDeferred
async def test_orders_tests_pass_with_trial(tmp_path: Path) -> None:
    code, out = await run("-m", "twisted.trial", "test_orders_trial", cwd=tmp_path)
    assert code == 0, out
    assert "PASSED (successes=2)" in out, out


def readme_blocks(title: str) -> list[str]:
    # The section moved from the README into the guides (docs/guides/testing.rst).
    pages = [ROOT / "README.rst", *sorted((ROOT / "docs" / "guides").glob("*.rst"))]
    text = "\n".join(page.read_text() for page in pages)
    section = text.split(f"\n{title}\n{'=' * len(title)}\n", 1)[1]
    section = re.split(r"\n\S[^\n]*\n=+\n", section, maxsplit=1)[0]
    blocks = []
    for block in section.split(".. code-block:: python\n")[1:]:
        lines = []
        for line in block.splitlines()[1:]:
            if line and not line.startswith("    "):
                break
            lines.append(line[4:])
        blocks.append("\n".join(lines).strip("\n") + "\n")
    return blocks


def test_readme_testing_section_shows_the_tested_files() -> None:
    blocks = readme_blocks("Testing your code")
    files = [(EXAMPLES / name).read_text() for name in
             ("orders.py", "test_orders.py", "test_orders_trial.py")]
    assert len(blocks) == 3
    assert blocks[0] in files[0]  # the application code, without its docstring
    assert blocks[1:] == files[1:]
