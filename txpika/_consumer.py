"""`Consumer`: the handle ``Channel.basic_consume`` fires with (push or pull style)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.logger import Logger

from txpika.errors import ConsumerCancelled
from txpika.message import Message

if TYPE_CHECKING:
    from txpika.channel import Channel

__all__ = ["Consumer", "MessageCallback"]

log = Logger()

#: A push consumer's callback: may return None, a Deferred or a coroutine.
MessageCallback = Callable[[Message], "Deferred[Any] | Coroutine[Any, Any, Any] | None"]


class Consumer:
    """A consumer on a queue.

    Push style: the callback given to ``basic_consume`` is called with each `Message`; a
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

    def __init__(
        self,
        channel: Channel,
        consumer_tag: str,
        queue: str,
        callback: MessageCallback | None,
        auto_ack: bool,
        max_buffer: int | None = None,
    ) -> None:
        self.channel = channel
        self.consumer_tag = consumer_tag
        self.queue = queue
        self.auto_ack = auto_ack
        self._callback = callback
        self._buffer: deque[Message] = deque()
        self._getters: deque[Deferred[Message]] = deque()
        self._ended: BaseException | None = None
        self._normal_end = False
        self._max_buffer = max_buffer or 1000
        self._paused = False
        self._done: list[Deferred[None]] = []

    def __repr__(self) -> str:
        return f"<Consumer {self.consumer_tag!r} on {self.queue!r}>"

    @property
    def active(self) -> bool:
        """True until the consumer is cancelled or its channel closes."""
        return self._ended is None

    def cancel(self) -> Deferred[None]:
        """Send ``basic.cancel``. Fires with ``None`` once the broker confirmed (or at once if
        the consumer already ended)."""
        if self._ended is not None:
            return succeed(None)
        d = self.channel.basic_cancel(self.consumer_tag)
        d.addCallback(lambda ok: None)
        return d

    def when_ended(self) -> Deferred[None]:
        """Fires with ``None`` when the consumer ends for any reason."""
        if self._ended is not None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._done.append(d)
        return d

    @property
    def end_reason(self) -> BaseException | None:
        """Why the consumer ended, or ``None`` while it is active."""
        return self._ended

    def get(self) -> Deferred[Message]:
        """The next message. Fails with `txpika.errors.ConsumerCancelled` (or the channel's
        error) once the consumer ended and its buffer is empty."""
        if self._buffer:
            message = self._buffer.popleft()
            self._maybe_resume()
            return succeed(message)
        if self._ended is not None:
            return fail(self._ended)
        d: Deferred[Message] = Deferred(self._forget_getter)
        self._getters.append(d)
        return d

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Message:
        if not self._buffer and self._ended is not None and self._normal_end:
            raise StopAsyncIteration
        try:
            return await self.get()
        except ConsumerCancelled:
            if self._normal_end:
                raise StopAsyncIteration from None
            raise

    # -- internals ------------------------------------------------------------------------------

    def _forget_getter(self, d: Deferred[Message]) -> None:
        if d in self._getters:
            self._getters.remove(d)

    def _deliver(self, message: Message) -> None:
        if self._callback is not None:
            _run_callback(self._callback, message)
            return
        if self._getters:
            self._getters.popleft().callback(message)
            return
        self._buffer.append(message)
        if len(self._buffer) > self._max_buffer and not self._paused:
            self._paused = True
            self.channel._protocol._pause_reading(self)

    def _maybe_resume(self) -> None:
        if self._paused and len(self._buffer) <= self._max_buffer // 2:
            self._paused = False
            self.channel._protocol._resume_reading(self)

    def _cancelled_by_broker(self) -> None:
        log.warn("consumer {tag} on queue {queue!r} was cancelled by the broker",
                 tag=self.consumer_tag, queue=self.queue)
        self._end(ConsumerCancelled(self.consumer_tag))

    def _end(self, error: BaseException | None) -> None:
        if self._ended is not None:
            return
        if error is None:
            self._normal_end = True
            error = ConsumerCancelled(self.consumer_tag, "was cancelled by this client")
        self._ended = error
        getters, self._getters = self._getters, deque()
        for d in getters:
            d.errback(error)
        if self._paused:
            self._paused = False
            self.channel._protocol._resume_reading(self)
        done, self._done = self._done, []
        for d2 in done:
            d2.callback(None)


def _run_callback(callback: MessageCallback, message: Message) -> None:
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
