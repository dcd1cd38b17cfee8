"""The consumer with Deferreds: the base of `txpika.Consumer` (push or pull style).

`txpika.channel.Consumer` (exported as ``txpika.Consumer``) is this class with its
``channel`` and messages typed as the Twisted channel's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.logger import Logger

from txpika._delivery import MessageBase
from txpika.errors import ConsumerCancelled

__all__ = ["ConsumerBase", "MessageCallback", "Reading"]

log = Logger()
#: A pull consumer with a waiting `ConsumerBase.get` hands messages over once this many
#: wait in its buffer, without waiting for the end of the batch of events.
WAKE_AT = 64

M = TypeVar("M", bound=MessageBase)

#: A push consumer's callback: may return None, a Deferred or a coroutine.
MessageCallback = Callable[[M], "Deferred[Any] | Coroutine[Any, Any, Any] | None"]


class Reading(Protocol):
    """The connection's reading, which a consumer with a full buffer pauses, and the end of
    its batches of events, when waiting pull consumers are woken."""

    def after_batch(self, call: Callable[[], object]) -> None:
        """Run ``call()`` once the batch of events being dispatched is done (at once if
        none is)."""

    def pause_reading(self, who: object) -> None:
        """Stop reading from the transport until every pauser resumed."""

    def resume_reading(self, who: object) -> None:
        """``who`` no longer needs reading paused."""


class _Cancels(Protocol):
    def basic_cancel(self, consumer_tag: str, timeout: float | None = None
                     ) -> Deferred[Any]: ...


class ConsumerBase(Generic[M]):
    """A consumer on a queue.

    Push style: the callback given to ``basic_consume`` is called with each message; a
    failure it raises, or its Deferred or coroutine ends with, is logged with the delivery
    tag. Pull style: `get` and ``async for``. The buffer of undelivered messages is bounded
    by the channel's prefetch (``basic_qos``); with ``auto_ack`` there is no prefetch, so
    past ``max_buffer`` messages (default 1000) the connection stops reading from the
    socket until `get` drains the buffer.

    The consumer ends when it is cancelled (`cancel`: ``async for`` stops, `get` fails
    with `txpika.errors.ConsumerCancelled`), when the broker cancels it (for example, its
    queue was deleted: both fail with `txpika.errors.ConsumerCancelled`), or when its channel
    closes (both fail with that error). Messages already buffered are still handed out first.
    """

    channel: Any

    def __init__(self, channel: _Cancels, consumer_tag: str, queue: str,
                 callback: Callable[[M], object] | None, auto_ack: bool,
                 reading: Reading, max_buffer: int | None = None) -> None:
        self.channel = channel
        self._cancels = channel
        self.consumer_tag = consumer_tag
        self.queue = queue
        self.auto_ack = auto_ack
        self._callback = callback
        self._reading = reading
        self._buffer: deque[M] = deque()
        self._getters: deque[Deferred[M]] = deque()
        self._ended: BaseException | None = None
        self._normal_end = False
        self._max_buffer = max_buffer or 1000
        self._paused = False
        self._waking = False
        self._watchers: list[Deferred[BaseException]] = []
        if callback is not None:  # (the book calls _deliver: no test per message)
            self._deliver = partial(_run_callback, callback)  # type: ignore[method-assign]

    def __repr__(self) -> str:
        return f"<Consumer {self.consumer_tag!r} on {self.queue!r}>"

    @property
    def active(self) -> bool:
        """True until the consumer is cancelled or its channel closes."""
        return self._ended is None

    @property
    def end_reason(self) -> BaseException | None:
        """Why the consumer ended, or ``None`` while it is active."""
        return self._ended

    @property
    def cancelled_by_client(self) -> bool:
        """True if it ended because this client cancelled it (or closed its channel or
        connection): a normal end, after which ``async for`` stops quietly."""
        return self._normal_end

    def cancel(self) -> Deferred[None]:
        """Send ``basic.cancel``. Fires with ``None`` once the broker confirmed (or at once if
        the consumer already ended); fails as the channel's calls do."""
        if self._ended is not None:
            return succeed(None)
        d: Deferred[None] = self._cancels.basic_cancel(self.consumer_tag).addCallback(
            lambda ok: None)
        return d

    def when_closed(self) -> Deferred[BaseException]:
        """A new Deferred that fires (never fails) with why the consumer ended:
        `txpika.errors.ConsumerCancelled` when this client or the broker cancelled it, or
        the error that closed its channel or connection."""
        if self._ended is not None:
            return succeed(self._ended)
        d: Deferred[BaseException] = Deferred()
        self._watchers.append(d)
        return d

    def get(self) -> Deferred[M]:
        """The next message. Fails with `txpika.errors.ConsumerCancelled` (or the channel's
        error) once the consumer ended and its buffer is empty."""
        if self._buffer:
            message = self._buffer.popleft()
            if self._paused:
                self._maybe_resume()
            return succeed(message)
        if self._ended is not None:
            return fail(self._ended)
        d: Deferred[M] = Deferred(self._forget_getter)
        self._getters.append(d)
        return d

    def __aiter__(self) -> ConsumerBase[M]:
        return self

    async def __anext__(self) -> M:
        if not self._buffer and self._ended is not None and self._normal_end:
            raise StopAsyncIteration
        try:
            return await self.get()
        except ConsumerCancelled:
            if self._normal_end:
                raise StopAsyncIteration from None
            raise

    # -- from the channel book (txpika._chanbook.ConsumerEntry) -----------------------------

    def _deliver(self, message: M) -> None:
        buffer = self._buffer
        buffer.append(message)
        if self._getters:
            # A waiting get() is answered once this batch of events is dispatched, or once
            # WAKE_AT messages wait, whichever comes first: the code it resumes then takes
            # them from the buffer in one go, instead of one trip through the Deferred
            # machinery per message; and a large batch (a read can bring a thousand
            # messages) does not pile up first, which costs more, in CPU caches, than the
            # trips it saves.
            if len(buffer) >= WAKE_AT:
                self._hand_over()
            elif not self._waking:
                self._waking = True
                self._reading.after_batch(self._wake)
        if len(buffer) > self._max_buffer and not self._paused:
            self._paused = True
            self._reading.pause_reading(self)

    def _wake(self) -> None:
        self._waking = False
        self._hand_over()

    def _hand_over(self) -> None:
        buffer = self._buffer
        getters = self._getters
        while getters and buffer:
            getters.popleft().callback(buffer.popleft())
        if self._paused:
            self._maybe_resume()

    def _end(self, error: BaseException, normal: bool) -> None:
        if self._ended is not None:
            return
        # Only a cancel by this client ends iteration quietly; a channel this client
        # closed fails pending gets with its error (they asked for a message).
        self._normal_end = normal and isinstance(error, ConsumerCancelled)
        self._ended = error
        self._wake()  # what is buffered goes to the gets waiting, first
        getters, self._getters = self._getters, deque()
        for d in getters:
            d.errback(error)
        if self._paused:
            self._paused = False
            self._reading.resume_reading(self)
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.callback(error)

    # -- internals ------------------------------------------------------------------------------

    def _forget_getter(self, d: Deferred[M]) -> None:
        if d in self._getters:
            self._getters.remove(d)

    def _maybe_resume(self) -> None:
        if len(self._buffer) <= self._max_buffer // 2:
            self._paused = False
            self._reading.resume_reading(self)


def _run_callback(callback: Callable[[Any], object], message: MessageBase) -> None:
    try:
        result: object = callback(message)
    except Exception:
        log.failure("consumer callback failed on delivery {tag}", tag=message.delivery_tag)
        return
    if result is None:
        return  # the usual case, before two isinstance checks (one of them against an ABC)
    if isinstance(result, Deferred):
        d: Deferred[Any] = result
    elif isinstance(result, Coroutine):
        d = ensureDeferred(result)
    else:
        return  # a plain value: nothing to wait for
    d.addErrback(lambda f: log.failure("consumer callback failed on delivery {tag}", f,
                                       tag=message.delivery_tag))
