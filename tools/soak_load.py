"""The load of tools/soak.py: confirmed publishing and a consumer service, checked.

`Load` runs an `AMQPService` over one or more brokers with an at-least-once `Publisher`
publishing numbered messages at a steady rate and a `ConsumerService` consuming them (the
queue is declared by the service's ``setup``, as a quorum queue if asked). `Load.finish`
stops publishing, waits (bounded) until every publish has fired and every published
number was consumed, stops the services and returns a `Result`: lost (published, never
consumed), duplicates (consumed more than once), failed publishes, foreign bodies,
recoveries (``recovering`` states), republished messages.
"""

from __future__ import annotations

import collections
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater

from txpika import AMQPService, BasicProperties, ConsumerService, Message

TICK = 0.01


def sleep(reactor: Any, seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def until(reactor: Any, condition: Any, seconds: float, what: str) -> None:
    """Wait (polling) until ``condition()``; raise `TimeoutError` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {seconds:.0f} s")
        await sleep(reactor, 0.05)


@dataclass
class Result:
    """What a soak run found. ``ok`` is nothing lost, nothing failed, nothing foreign."""

    mode: str
    published: int = 0
    consumed: int = 0
    lost: int = 0
    duplicates: int = 0
    failed: int = 0
    foreign: int = 0
    recoveries: int = 0
    republished: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: Anything else that went wrong (a timeout, memory that grew): not ok.
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.failed == 0 and self.foreign == 0
                and not self.problems)

    def line(self) -> str:
        extra = "".join(f", {key} {value}" for key, value in self.extra.items())
        extra += "".join(f"; PROBLEM: {problem}" for problem in self.problems)
        return (f"{self.mode}: {'OK' if self.ok else 'FAILED'}: {self.published} published, "
                f"{self.lost} lost, {self.duplicates} duplicates, {self.failed} failed, "
                f"{self.foreign} foreign, {self.recoveries} recoveries, "
                f"{self.republished} republished, {self.seconds:.1f} s{extra}")


class Load:
    """Publish ``rate`` messages a second to ``queue`` and consume them, over ``brokers``."""

    def __init__(self, reactor: Any, brokers: list[str], *, rate: int = 500,
                 quorum: bool = False, max_pending: int = 5000, **overrides: Any) -> None:
        self.reactor = reactor
        self.queue = f"txpika-soak-{uuid.uuid4().hex[:12]}"
        self.quorum = quorum
        self.rate = rate
        self.max_pending = max_pending
        self.service = AMQPService(reactor, brokers, setup=self._setup,
                                   retry_policy=lambda attempt: 0.2, **overrides)
        self.states: list[tuple[float, str, str | None]] = []
        self.handled: collections.Counter[int] = collections.Counter()
        self.foreign = 0
        self.published = 0
        self.outstanding = 0
        self.failures: list[BaseException] = []
        self.consumer: ConsumerService | None = None
        self.publisher: Any = None
        self._pump = LoopingCall(self._tick)
        self._pump.clock = reactor
        self._started = 0.0
        self._credit = 0.0

    @property
    def recoveries(self) -> int:
        return sum(1 for _, state, _ in self.states if state == "recovering")

    async def _setup(self, channel: Any) -> None:
        arguments = {"x-queue-type": "quorum"} if self.quorum else None
        await channel.queue_declare(self.queue, durable=True, exclusive=False,
                                    auto_delete=False, arguments=arguments)

    def _state(self, state: str) -> None:
        self.states.append((time.monotonic() - self._started, state,
                            self.service.current_broker))

    def _handle(self, message: Message) -> None:
        try:
            self.handled[int(message.body)] += 1
        except ValueError:
            self.foreign += 1

    async def start(self) -> None:
        """Start the services and the publishing (fires once messages flow)."""
        self._started = time.monotonic()
        self.service.add_state_listener(self._state)
        self.service.startService()
        await self.service.connection(timeout=60)
        self.consumer = ConsumerService(self.service, self.queue, self._handle, prefetch=200,
                                        concurrency=50, drain_timeout=5)
        self.consumer.startService()
        self.publisher = await self.service.publisher(at_least_once=True,
                                                      max_pending=self.max_pending * 2)
        self._pump.start(TICK, now=False)
        await until(self.reactor, lambda: len(self.handled) > 0, 30, "the first message")

    def _tick(self) -> None:
        self._credit = min(self._credit + self.rate * TICK, self.rate)
        while self._credit >= 1 and self.publisher.pending < self.max_pending:
            self._credit -= 1
            self._publish()

    def _publish(self) -> None:
        number = self.published
        self.published += 1
        self.outstanding += 1
        d = self.publisher.publish("", self.queue, str(number).encode(),
                                   properties=BasicProperties(delivery_mode=2))
        d.addCallbacks(self._confirmed, self._failed)

    def _confirmed(self, _: object) -> None:
        self.outstanding -= 1

    def _failed(self, failure: Any) -> None:
        self.outstanding -= 1
        self.failures.append(failure.value)

    async def wait_open(self, seconds: float = 60.0, not_on: str | None = None) -> float:
        """Wait until the service is open (on another broker than ``not_on``); seconds."""
        began = time.monotonic()
        await until(self.reactor, lambda: self.service.state == "open" and (
            not_on is None or self.service.current_broker != not_on), seconds,
            "the service open again")
        return time.monotonic() - began

    async def consumed_since(self, seconds: float = 30.0, count: int = 100) -> None:
        """Wait until ``count`` more distinct messages were consumed."""
        target = len(self.handled) + count
        await until(self.reactor, lambda: len(self.handled) >= target, seconds,
                    f"{count} more messages consumed")

    async def finish(self, mode: str, timeout: float = 120.0) -> Result:
        """Stop publishing; wait for every confirm and delivery; stop; the result."""
        if self._pump.running:
            self._pump.stop()
        result = Result(mode)
        try:
            await until(self.reactor, lambda: self.outstanding == 0, timeout,
                        "every publish answered")
            await until(self.reactor, lambda: len(self.handled) >= self.published - len(
                self.failures), timeout, "every published message consumed")
        except TimeoutError as exc:
            result.problems.append(str(exc))
        result.seconds = time.monotonic() - self._started
        if self.consumer is not None:
            await self.consumer.stopService()
        await self.service.stopService()
        result.published = self.published
        result.consumed = sum(self.handled.values())
        result.lost = sum(1 for n in range(self.published) if n not in self.handled)
        result.duplicates = result.consumed - len(self.handled)
        result.failed = len(self.failures) + self.outstanding
        result.foreign = self.foreign + sum(1 for n in self.handled if n >= self.published)
        result.recoveries = self.recoveries
        result.republished = self.publisher.republished if self.publisher else 0
        if self.failures:
            result.extra["first failure"] = repr(self.failures[0])
        return result

    async def delete_queue(self, url: str) -> None:
        """Delete the soak's queue with a plain connection to ``url``."""
        import txpika

        conn = await txpika.connect(self.reactor, url)
        try:
            channel = await conn.channel()
            await channel.queue_delete(self.queue)
        finally:
            await conn.close()
