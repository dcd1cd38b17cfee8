"""The asyncio consumer (`ConsumerBase`), and what the adapter's modules share: the
`Port` a channel needs of its connection, and settling futures that may be done already.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from txpika._delivery import MessageBase
from txpika._outbox import Outbox
from txpika.aio._log import log
from txpika.errors import ConsumerCancelled, UsageError
from txpika.parameters import ConnectionParameters

__all__ = ["ConsumerBase", "Owner", "Port"]

M = TypeVar("M", bound=MessageBase)


class Port(Protocol):
    """What channels use of their connection (`txpika.aio.Connection`)."""

    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]
    parameters: ConnectionParameters
    _outbox: Outbox

    @property
    def blocked_reason(self) -> str: ...
    def _flush(self) -> None: ...
    def pause_reading(self, who: object) -> None: ...
    def _woke(self) -> None: ...
    def resume_reading(self, who: object) -> None: ...


def _ok(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _expire(future: asyncio.Future[Any], seconds: float) -> None:
    _fail(future, TimeoutError(f"no answer within {seconds:g} s"))


def _result(future: asyncio.Future[Any]) -> Any:
    """The value a future resolved with (None if it failed or was cancelled)."""
    if future.done() and not future.cancelled() and future.exception() is None:
        return future.result()
    return None


class Owner(Protocol):
    """What a consumer uses of its channel."""

    @property
    def connection(self) -> Port: ...
    async def basic_cancel(self, consumer_tag: str, timeout: float | None = None) -> Any: ...
    def _send_cancel(self, consumer_tag: str) -> None: ...


class ConsumerBase(Generic[M]):
    """A consumer: ``async for`` or `get`; or a callback given to ``basic_consume``.

    A callback may be a plain function or an ``async`` one (each call a task). Pulled
    messages wait in a buffer bounded by the prefetch; past ``max_buffer`` buffered
    messages (or running callback tasks) the connection stops reading until they drain.
    It ends when cancelled (``async for`` stops; `get` raises
    `txpika.errors.ConsumerCancelled`), when the broker cancels it (both raise
    `txpika.errors.ConsumerCancelled`), when the broker cancels it (both raise
    `txpika.errors.ConsumerCancelled`) or when its channel closes (both raise that error);
    buffered messages are handed out first.
    """

    channel: Any

    def __init__(self, channel: Owner, consumer_tag: str, queue: str,
                 callback: Callable[[M], Coroutine[Any, Any, Any] | None] | None,
                 auto_ack: bool, max_buffer: int | None) -> None:
        self.channel = channel
        self._owner = channel
        self.consumer_tag = consumer_tag
        self.queue = queue
        self.auto_ack = auto_ack
        self._port = channel.connection
        self._buffer: deque[M] = deque()
        self._getters: deque[asyncio.Future[M]] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._max_buffer = max_buffer or 1000
        self._ended: BaseException | None = None
        self._normal_end = False
        self._paused = False
        self._discarded = False
        if callback is not None:
            self._deliver = partial(self._push, callback)  # type: ignore[method-assign]

    def __repr__(self) -> str:
        return f"<aio.Consumer {self.consumer_tag!r} on {self.queue!r}>"

    @property
    def active(self) -> bool:
        """True until the consumer is cancelled or its channel closes."""
        return self._ended is None

    @property
    def end_reason(self) -> BaseException | None:
        """Why the consumer ended, or ``None`` while it is active."""
        return self._ended

    async def cancel(self) -> None:
        """Send ``basic.cancel``; returns once the broker confirmed (at once if ended)."""
        if self._ended is None:
            await self._owner.basic_cancel(self.consumer_tag)

    async def get(self, timeout: float | None = None) -> M:
        """The next message. Raises ``TimeoutError`` after ``timeout`` seconds without one,
        and `txpika.errors.ConsumerCancelled` (or the channel's error) once the consumer
        ended and its buffer is empty."""
        if self._buffer:
            return self._take()
        if self._ended is not None:
            raise self._ended
        waiter: asyncio.Future[M] = self._port.loop.create_future()
        self._getters.append(waiter)
        timer = None if timeout is None else self._port.loop.call_later(
            timeout, _expire, waiter, timeout)
        try:
            return await waiter
        except BaseException:
            message = _result(waiter)
            if message is not None:  # cancelled as it arrived: the next get() has it
                self._buffer.appendleft(message)
            with contextlib.suppress(ValueError):
                self._getters.remove(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def __aiter__(self) -> ConsumerBase[M]:
        return self

    async def __anext__(self) -> M:
        if self._buffer:
            return self._take()
        if self._ended is not None and self._normal_end:
            raise StopAsyncIteration
        try:
            return await self.get()
        except ConsumerCancelled:
            if self._normal_end:
                raise StopAsyncIteration from None
            raise

    # -- from the channel book ----------------------------------------------------------------

    def _take(self) -> M:
        message = self._buffer.popleft()
        if self._paused and len(self._buffer) <= self._max_buffer // 2:
            self._paused = False
            self._port.resume_reading(self)
        return message

    def _deliver(self, message: M) -> None:
        getters = self._getters
        while getters:
            waiter = getters.popleft()
            if not waiter.done():
                waiter.set_result(message)
                self._port._woke()
                return
        if self._discarded:
            _requeue(message)
            return
        buffer = self._buffer
        buffer.append(message)
        if len(buffer) > self._max_buffer and not self._paused:
            self._paused = True
            self._port.pause_reading(self)

    def _push(self, callback: Callable[[M], Any], message: M) -> None:
        if self._discarded:
            _requeue(message)
            return
        try:
            result = callback(message)
        except Exception:
            log.failure("consumer callback failed on delivery {tag}", tag=message.delivery_tag)
            return
        if result is not None and asyncio.iscoroutine(result):
            task = self._port.loop.create_task(result)
            self._tasks.add(task)
            task.add_done_callback(partial(self._task_done, message))
            if len(self._tasks) > self._max_buffer and not self._paused:
                self._paused = True
                self._port.pause_reading(self)

    def _task_done(self, message: M, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.failure("consumer callback failed on delivery {tag}", tag=message.delivery_tag,
                        error=task.exception())
        if self._paused and len(self._tasks) <= self._max_buffer // 2:
            self._paused = False
            self._port.resume_reading(self)

    def _end(self, error: BaseException, normal: bool) -> None:
        if self._ended is not None:
            return
        self._normal_end = normal and isinstance(error, ConsumerCancelled)
        self._ended = error
        getters, self._getters = self._getters, deque()
        for waiter in getters:
            _fail(waiter, error)
        if self._paused:
            self._paused = False
            self._port.resume_reading(self)

    def _discard(self) -> None:
        """Nobody took this consumer (its caller gave up): cancel it, requeue its messages."""
        self._discarded = True
        while self._buffer:
            _requeue(self._buffer.popleft())
        with contextlib.suppress(Exception):
            self._owner._send_cancel(self.consumer_tag)


def _requeue(message: MessageBase) -> None:
    """Reject ``message`` back to its queue, unless it was settled."""
    if not message.settled:
        with contextlib.suppress(UsageError):
            message._settle("reject", False, True)


