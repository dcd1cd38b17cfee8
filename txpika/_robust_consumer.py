"""`RobustConsumer`: a consumer of a `txpika.robust.RobustChannel` that is started again
on every new connection with the same tag (re-exported by `txpika.robust`)."""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from txpika._consumer import MessageCallback
from txpika.channel import Channel, Consumer, Message
from txpika.errors import ConsumerCancelled

__all__ = ["ConsumerHome", "RobustConsumer"]

log = Logger()


class _Host(Protocol):
    @property
    def state(self) -> str: ...

    def unavailable(self) -> Exception: ...


class ConsumerHome(Protocol):
    """What a `RobustConsumer` needs of its channel (a `txpika.robust.RobustChannel`)."""

    @property
    def host(self) -> _Host:
        """The service the channel belongs to."""

    def _reconsume(self, consumer: RobustConsumer) -> None: ...

    def _forget_consumer(self, consumer_tag: str) -> None: ...


class RobustConsumer:
    """A consumer that is started again on every new connection with the same tag.

    Push style (a callback) or pull style (`get`, ``async for``). Messages buffered from a
    lost connection are dropped (the broker redelivers them). With ``on_cancel="reconsume"``
    a consumer the broker cancels (its queue was deleted) is started again after the queue
    is declared again from the recorded topology; with ``"end"`` (the default) it ends with
    `txpika.errors.ConsumerCancelled`.
    """

    def __init__(self, channel: ConsumerHome, queue: str,
                 callback: MessageCallback[Message] | None, kwargs: dict[str, Any],
                 on_cancel: str) -> None:
        #: The robust channel it belongs to.
        self.channel = channel
        #: The queue it consumes (renamed on reconnect for a server-named queue).
        self.queue = queue
        #: Its consumer tag, the same on every connection.
        self.consumer_tag: str = kwargs["consumer_tag"]
        self._callback = callback
        self._kwargs = kwargs
        self._on_cancel = on_cancel
        self._consumer: Consumer | None = None
        self._ended: BaseException | None = None
        self._getters: list[Deferred[Message]] = []  # waiting for the next consumer
        self._watchers: list[Deferred[BaseException]] = []
        self._by_client = False

    def __repr__(self) -> str:
        return f"<RobustConsumer {self.consumer_tag!r} on {self.queue!r}>"

    @property
    def active(self) -> bool:
        """True until cancelled (by the client, or by the broker under ``on_cancel="end"``)."""
        return self._ended is None

    async def _start(self, channel: Channel) -> None:
        consumer = await channel.basic_consume(self.queue, self._callback, **self._kwargs)
        self._consumer = consumer
        consumer.when_closed().addCallback(lambda _: self._underlying_ended(consumer))
        waiting, self._getters = self._getters, []
        for d in waiting:
            if not d.called:
                self._pull(d)

    def _underlying_ended(self, consumer: Consumer) -> None:
        if consumer is not self._consumer or self._ended is not None:
            return
        self._consumer = None
        reason = consumer.end_reason
        if isinstance(reason, ConsumerCancelled) and consumer.cancelled_by_client:
            self._end(reason, by_client=True)
        elif isinstance(reason, ConsumerCancelled):
            if self._on_cancel == "reconsume":
                log.info("consumer {tag} cancelled by the broker: starting it again",
                         tag=self.consumer_tag)
                self.channel._reconsume(self)
            else:
                self._end(reason)
        # Otherwise the channel or connection went away: the service restarts us.

    def _end(self, error: BaseException, by_client: bool = False) -> None:
        if self._ended is not None:
            return
        self._ended = error
        self._by_client = by_client
        self.channel._forget_consumer(self.consumer_tag)
        getters, self._getters = self._getters, []
        for d in getters:
            if not d.called:
                d.errback(error)
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.callback(error)

    def when_closed(self) -> Deferred[BaseException]:
        """A new Deferred that fires (never fails) with why the consumer ended for good:
        cancelled by this client, or by the broker under ``on_cancel="end"`` (or when it
        could not be started again)."""
        if self._ended is not None:
            return succeed(self._ended)
        d: Deferred[BaseException] = Deferred()
        self._watchers.append(d)
        return d

    def get(self) -> Deferred[Message]:
        """The next message, waiting through reconnects. Fails with
        `txpika.errors.ConsumerCancelled` once the consumer ended."""
        if self._ended is not None:
            return fail(self._ended)
        if self.channel.host.state == "closed":
            return fail(self.channel.host.unavailable())
        d: Deferred[Message] = Deferred(lambda d: self._getters.remove(d)
                                        if d in self._getters else None)
        self._pull(d)
        return d

    def _pull(self, outer: Deferred[Message]) -> None:
        consumer = self._consumer
        if consumer is None:
            self._getters.append(outer)
            return
        inner = consumer.get()

        def got(message: Message) -> None:
            if not outer.called:
                outer.callback(message)
            elif not message.settled:  # the caller gave up meanwhile: give it back
                message.reject(requeue=True).addErrback(lambda f: None)

        def lost(failure: Any) -> None:
            if outer.called:
                return
            if self._ended is not None:
                outer.errback(self._ended)
            elif self.channel.host.state == "closed":  # no next connection to wait for
                outer.errback(self.channel.host.unavailable())
            else:  # that consumer ended; the next one (after recovery) will serve
                self._getters.append(outer)

        inner.addCallbacks(got, lost)

    def _fail_getters(self, error: BaseException) -> None:
        getters, self._getters = self._getters, []
        for d in getters:
            if not d.called:
                d.errback(error)

    def __aiter__(self) -> RobustConsumer:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.get()
        except ConsumerCancelled:
            if self._by_client:
                raise StopAsyncIteration from None
            raise

    def cancel(self) -> Deferred[None]:
        """Cancel the consumer for good."""
        consumer = self._consumer
        self._end(ConsumerCancelled(self.consumer_tag, "was cancelled by this client"),
                  by_client=True)
        if consumer is not None and consumer.active:
            return consumer.cancel()
        return succeed(None)
