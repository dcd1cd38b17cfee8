"""Small helpers shared by the tests that run on the real reactor against a broker."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from txpika.protocol import AMQPProtocol

Opener = Callable[..., Awaitable[AMQPProtocol]]


def unique(prefix: str = "q") -> str:
    """A name no other test (or earlier run) uses."""
    return f"txpika-test-{prefix}-{uuid.uuid4().hex[:12]}"


def within(d: Deferred[Any], seconds: float) -> Deferred[Any]:
    """``d``, failing with ``defer.TimeoutError`` (and cancelled) after ``seconds``."""
    return d.addTimeout(seconds, reactor)  # type: ignore[arg-type]


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


async def failure_of(d: Deferred[Any], seconds: float = 10.0) -> BaseException:
    """The exception ``d`` fails with; the test fails if it succeeds or takes over
    ``seconds``."""
    timed_out: list[bool] = []

    def expire() -> None:
        timed_out.append(True)
        d.cancel()

    call = reactor.callLater(seconds, expire)  # type: ignore[attr-defined]
    try:
        result = await d
    except Exception as exc:
        if timed_out:
            pytest.fail(f"no result within {seconds} s")
        return exc
    finally:
        if call.active():
            call.cancel()
    pytest.fail(f"expected a failure, got {result!r}")
