"""Shared helpers of the ``txpika.aio`` tests (no tests here).

``run`` (a fixture, parametrized over the default asyncio loop and uvloop) runs a
coroutine to completion on a fresh loop, bounded by ``timeout`` seconds; the test modules
import it (``from test_aio_support import run``). ``T`` bounds any one call that waits for
the broker.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from txpika import aio

try:
    import uvloop
except ImportError:  # pragma: no cover - the test extra installs it
    uvloop = None

T = 10.0
LOOPS = ["asyncio", "uvloop"]

Runner = Callable[..., Any]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Runner:
    """``run(coroutine, timeout=30)``: its result, on the loop the test is parametrized
    with."""
    if request.param == "uvloop":
        if uvloop is None:
            pytest.fail("uvloop is not installed (pip install '.[test]')", pytrace=False)
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop

    def runner(coroutine: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        async def bounded() -> Any:
            async with asyncio.timeout(timeout):
                return await coroutine

        with asyncio.Runner(loop_factory=factory) as loop_runner:
            return loop_runner.run(bounded())

    runner.loop_name = request.param  # type: ignore[attr-defined]
    return runner


def unique(prefix: str = "q") -> str:
    return f"txpika-aio-{prefix}-{uuid.uuid4().hex[:12]}"


def via(url: str, host: str, port: int) -> str:
    """``url`` pointed at ``host:port`` (same credentials, vhost and options)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def declare_temp(ch: aio.Channel, **kwargs: Any) -> str:
    """A server-named exclusive queue that outlives its consumers (not its connection)."""
    kwargs.setdefault("auto_delete", False)
    ok = await ch.queue_declare("", timeout=T, **kwargs)
    return str(ok.queue)


async def counts(conn: aio.Connection, queue: str) -> tuple[int, int]:
    """(message_count, consumer_count) of ``queue``, asked on a channel of its own."""
    async with await conn.channel() as probe:
        ok = await probe.queue_declare(queue, passive=True, timeout=T)
        return int(ok.message_count), int(ok.consumer_count)


async def eventually(predicate: Callable[[], Any], seconds: float = T) -> None:
    """Wait (polling every 10 ms) until ``predicate()`` holds; fail after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        assert loop.time() < deadline, f"not reached within {seconds} s"
        await asyncio.sleep(0.01)


async def eventually_async(check: Callable[[], Coroutine[Any, Any, bool]],
                           seconds: float = T) -> None:
    """As `eventually`, for a coroutine function."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        assert loop.time() < deadline, f"not reached within {seconds} s"
        await asyncio.sleep(0.02)
