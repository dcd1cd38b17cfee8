"""Run one scenario against RabbitMQ and against txpika.testing.MemoryBroker (not a test
module).

A scenario is an ``async def scenario(env: Env)`` that drives txpika's public API and
asserts what a client sees. `run` runs it on one of three backends:

* ``rabbitmq``: the real broker (``broker_url``), on the reactor (pytest-twisted);
* ``listen``: ``MemoryBroker(reactor).listen()`` over loopback TCP, on the reactor;
* ``memory``: ``MemoryBroker().connect()`` on a ``task.Clock``, driven synchronously: the
  coroutine runs inside ``flush()``, and when it waits for time the clock is moved to the
  next timer, until it ends (at most `MAX_VIRTUAL_SECONDS` of virtual time).

Any difference between the backends is a bug of the memory broker. Names come from
``env.name()`` (unique, random) and are deleted at the end on every backend.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure

import txpika
from txpika.channel import Channel
from txpika.protocol import AMQPProtocol
from txpika.testing import MemoryBroker

__all__ = ["BACKENDS", "Env", "Scenario", "run"]

Scenario = Callable[["Env"], Awaitable[None]]
MAX_VIRTUAL_SECONDS = 3600.0
BACKENDS = [
    pytest.param("rabbitmq", marks=pytest.mark.broker),
    "listen",
    "memory",
]


def when_closed(conn: AMQPProtocol) -> Deferred[BaseException]:
    """Fires with why ``conn`` ended."""
    return conn.when_closed()


class Env:
    """What a scenario gets: connections, unique names, time and bounded waits."""

    def __init__(self, backend: str, clock: IReactorTime,
                 connect: Callable[[], Deferred[AMQPProtocol]]) -> None:
        self.backend = backend
        self.clock = clock
        self._connect = connect
        self.connections: list[AMQPProtocol] = []
        self.names: list[str] = []
        self.conn: AMQPProtocol

    async def connect(self) -> AMQPProtocol:
        conn = await self.within(self._connect(), 10)
        self.connections.append(conn)
        return conn

    async def channel(self, conn: AMQPProtocol | None = None) -> Channel:
        return await self.within((conn or self.conn).channel())  # type: ignore[no-any-return]

    def name(self, prefix: str = "q") -> str:
        name = f"txpika-diff-{prefix}-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        return name

    async def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass (real or virtual time)."""
        await deferLater(self.clock, seconds, lambda: None)  # type: ignore[arg-type]

    async def within(self, d: Deferred[Any], seconds: float = 5.0) -> Any:
        """``d``'s result; fails the test if it takes longer than ``seconds``."""
        timed_out: list[bool] = []

        def expire() -> None:
            timed_out.append(True)
            d.cancel()

        call = self.clock.callLater(seconds, expire)
        try:
            return await d
        except Exception:
            if timed_out:
                pytest.fail(f"no result within {seconds} s on {self.backend}")
            raise
        finally:
            if call.active():
                call.cancel()

    async def failure(self, d: Deferred[Any], seconds: float = 5.0) -> BaseException:
        """The exception ``d`` fails with (the test fails if it succeeds)."""
        try:
            got = await self.within(d, seconds)
        except Exception as exc:
            return exc
        pytest.fail(f"expected a failure on {self.backend}, got {got!r}")

    async def nothing(self, d: Deferred[Any], seconds: float = 0.3) -> None:
        """Assert ``d`` (a ``consumer.get()``...) has no result for ``seconds``; it is
        then cancelled."""
        done: list[Any] = []
        d.addBoth(done.append)
        await self.wait(seconds)
        if done and not (isinstance(done[0], Failure)):
            pytest.fail(f"unexpected result on {self.backend}: {done[0]!r}")
        if not done:
            d.cancel()
        done.clear()

    async def eventually(self, check: Callable[[], Awaitable[bool]],
                         seconds: float = 5.0) -> None:
        """Wait until ``check()`` is true (RabbitMQ applies some things, such as a requeue
        seen by queue.declare, a moment later)."""
        waited = 0.0
        while not await check():
            if waited >= seconds:
                pytest.fail(f"condition not met within {seconds} s on {self.backend}")
            await self.wait(0.02)
            waited += 0.02

    async def cleanup(self) -> None:
        for conn in self.connections:
            if conn.is_open:
                await self.within(conn.close(), 10)
        if not self.names:
            return
        conn = await self.within(self._connect(), 10)
        try:
            ch = await self.within(conn.channel())
            for name in self.names:
                await self.within(ch.queue_delete(name))
                await self.within(ch.exchange_delete(name))
        finally:
            await self.within(conn.close(), 10)


async def _run_on_reactor(env: Env, scenario: Scenario) -> None:
    try:
        env.conn = await env.connect()
        await scenario(env)
    finally:
        await env.cleanup()


async def run(scenario: Scenario, backend: str, request: pytest.FixtureRequest) -> None:
    """Run ``scenario`` on ``backend`` (see the module docstring). A coroutine for
    pytest-twisted; the ``memory`` backend runs synchronously inside it, without giving
    the reactor a turn."""
    if backend == "rabbitmq":
        url = request.getfixturevalue("broker_url")
        env = Env(backend, reactor, lambda: txpika.connect(reactor, url))  # type: ignore[arg-type]
        await _run_on_reactor(env, scenario)
    elif backend == "listen":
        broker = MemoryBroker(reactor)  # type: ignore[arg-type]
        url = await broker.listen(reactor)  # type: ignore[arg-type]
        env = Env(backend, reactor, lambda: txpika.connect(reactor, url))  # type: ignore[arg-type]
        try:
            await _run_on_reactor(env, scenario)
        finally:
            await broker.stop_listening()
    else:
        run_memory(scenario)


def run_memory(scenario: Scenario) -> MemoryBroker:
    """Run ``scenario`` on a MemoryBroker through connect()/flush(), synchronously."""
    broker = MemoryBroker()
    clock = broker.clock
    assert isinstance(clock, Clock)
    env = Env("memory", clock, broker.connect)
    outcome: list[Any] = []
    ensureDeferred(_run_on_reactor(env, scenario)).addBoth(outcome.append)
    start = clock.seconds()
    while True:
        broker.flush()
        if outcome:
            break
        calls = clock.getDelayedCalls()
        if not calls or clock.seconds() - start > MAX_VIRTUAL_SECONDS:
            pytest.fail("the scenario waits for something that never comes (memory)")
        clock.advance(max(0.0, min(c.getTime() for c in calls) - clock.seconds()))
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return broker
