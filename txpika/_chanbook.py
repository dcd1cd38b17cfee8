"""The channel book: one channel's bookkeeping, written once for every adapter.

A `ChannelBook` sits between an adapter's channel (Twisted, blocking, asyncio) and the
sans-IO core. It keeps:

* the synchronous calls awaiting their replies, in order (`Call`): a call the adapter gave
  up on (cancelled, timed out) is *abandoned*, and its reply, when it comes, is absorbed
  and undone (a consumer it started is cancelled, a message it fetched is requeued);
* the consumers by tag (`ConsumerEntry`), to route deliveries; a delivery for no consumer
  is rejected back to the queue;
* the publishes awaiting their confirms, settled by the broker's ack, nack or return, or
  with `txpika.errors.OutcomeUnknownError` when the channel closes first;
* work held while the broker stops publishers (flow control), released in order;
* the channel's end: every waiter fails once, with the same error.

Results reach the adapter through the ``resolve``/``reject`` callables it passes with each
request (a Deferred's callback and errback, a future's, or a flag a waiting thread reads),
so the book knows nothing of Deferreds, threads or event loops. Requests that cannot be
made raise at once (`txpika.errors.UsageError`, or the error that closed the channel).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from txpika._delivery import MessageBase
from txpika._requests import Request
from txpika.errors import (
    ChannelClosedByClient,
    ConnectionClosedByClient,
    ConsumerCancelled,
    MessageTooLarge,
    NackError,
    OutcomeUnknownError,
    UnroutableError,
    UsageError,
)

if TYPE_CHECKING:
    from txpika._specbase import Method, Properties
    from txpika.connection import Connection

__all__ = ["Call", "ChannelBook", "ConsumerEntry", "Log"]

Resolve = Callable[[Any], object]
Reject = Callable[[BaseException], object]


class Log(Protocol):
    """The logging the channel layer needs (a ``twisted.logger.Logger`` has it; the
    blocking adapter passes one over the standard library's logging)."""

    def info(self, format: str, **kwargs: Any) -> None: ...
    def warn(self, format: str, **kwargs: Any) -> None: ...
    def failure(self, format: str, **kwargs: Any) -> None: ...


class Call:
    """A synchronous request awaiting its reply."""

    __slots__ = ("convert", "done", "method", "reject", "resolve")

    def __init__(self, method: Method, resolve: Resolve, reject: Reject,
                 convert: Callable[[Any], Any] | None) -> None:
        self.method = method
        self.resolve = resolve
        self.reject = reject
        self.convert = convert
        self.done = False  # answered, failed, or given up (a late reply is then absorbed)


class ConsumerEntry:
    """A consumer as the book routes to it: ``deliver(message)`` for each delivery, and
    ``end(error, normal)`` once when it ends (``normal``: this client cancelled it, or
    closed its channel or connection)."""

    __slots__ = ("auto_ack", "deliver", "end", "tag")

    def __init__(self, tag: str, auto_ack: bool, deliver: Callable[[Any], object],
                 end: Callable[[BaseException, bool], object]) -> None:
        self.tag = tag
        self.auto_ack = auto_ack
        self.deliver = deliver
        self.end = end


class _Held:
    """Work held while the broker stops publishers: ``run`` does it, ``fail`` fails its
    waiter; both are cleared when the adapter gives it up."""

    __slots__ = ("fail", "run")

    def __init__(self, run: Callable[[], object], fail: Reject) -> None:
        self.run: Callable[[], object] | None = run
        self.fail: Reject | None = fail

    def drop(self) -> None:
        self.run = self.fail = None


class ChannelBook:
    """The bookkeeping of one channel; see the module docstring.

    ``owner`` is the adapter's channel (messages point to it), ``message_cls`` the
    adapter's message class, ``flush`` hands what the core queued to the transport, and
    ``returned`` takes messages returned outside confirm mode.
    """

    def __init__(self, core: Connection, number: int, owner: object,
                 message_cls: type[MessageBase], flush: Callable[[], None],
                 returned: Callable[[MessageBase], None], log: Log) -> None:
        self.core = core
        self.number = number
        self.owner = owner
        self.error: BaseException | None = None
        self.flow_active = not core.blocked  # opened while blocked: stopped
        self._message_cls = message_cls
        self._new_message = message_cls._from_delivery
        self._flush = flush
        self._returned = returned
        self._log = log
        self._calls: deque[Call] = deque()
        self._consumers: dict[str, ConsumerEntry] = {}
        self._confirms: dict[int, tuple[Resolve, Reject]] = {}
        self._held: deque[_Held] = deque()
        self._watchers: list[Callable[[BaseException], object]] = []
        self._flow_listeners: list[Callable[[bool], object]] = []
        self._opening: tuple[Resolve, Reject] | None = None

    def __repr__(self) -> str:
        return f"<ChannelBook {self.number} {'open' if self.error is None else 'closed'}>"

    @property
    def is_open(self) -> bool:
        """True until the channel or its connection closes."""
        return self.error is None

    @property
    def holding(self) -> bool:
        """True while work waits for the broker to let publishers go on."""
        return bool(self._held) or not self.flow_active

    @property
    def pending_calls(self) -> int:
        """How many synchronous calls await their replies (abandoned ones included)."""
        return len(self._calls)

    @property
    def consumer_tags(self) -> list[str]:
        """The tags of the consumers deliveries are routed to."""
        return list(self._consumers)

    @property
    def pending_confirms(self) -> int:
        """How many publishes await the broker's confirm."""
        return len(self._confirms)

    def check_open(self) -> None:
        """Raise the error that closed the channel, if it did."""
        if self.error is not None:
            raise self.error

    # -- requests ---------------------------------------------------------------------------

    def call(self, request: Request[Any], resolve: Resolve, reject: Reject,
             convert: Callable[[Any], Any] | None = None) -> Call:
        """Send ``request`` (or hold it behind held publishes); ``resolve`` gets the reply
        (through ``convert``), ``reject`` the error that ended it. Raises if it cannot be
        sent: the channel's error, or `UsageError`."""
        self.check_open()
        if request.method is None:
            raise request.refused  # type: ignore[misc]
        call = Call(request.method, resolve, reject, convert)
        if self._held:
            self._held.append(_Held(lambda: self._send_call(call), reject))
            return call
        self.core.send_method(self.number, call.method)
        self._sent(call)
        return call

    def consume(self, request: Request[Any], auto_ack: bool,
                make: Callable[[str], tuple[Any, ConsumerEntry]], resolve: Resolve,
                reject: Reject) -> Call:
        """Start a consumer; on ``basic.consume-ok``, ``make(consumer_tag)`` builds the
        adapter's consumer and its entry, which is registered before any delivery that
        follows is routed, and ``resolve`` gets the consumer."""
        def started(ok: Any) -> Any:
            consumer, entry = make(ok.consumer_tag)
            self._consumers[ok.consumer_tag] = entry
            return consumer

        return self.call(request, resolve, reject, started)

    def cancel(self, request: Request[Any], resolve: Resolve, reject: Reject) -> Call:
        """``basic.cancel``; on its ok the consumer ends normally."""
        tag: str = request.method.consumer_tag  # type: ignore[union-attr]

        def cancelled(ok: Any) -> Any:
            entry = self._consumers.pop(tag, None)
            if entry is not None:
                entry.end(ConsumerCancelled(tag, "was cancelled by this client"), True)
            return ok

        return self.call(request, resolve, reject, cancelled)

    def abandon(self, call: Call) -> None:
        """The adapter gave ``call`` up: its reply, when it comes, is absorbed."""
        call.done = True

    def _send_call(self, call: Call) -> None:
        if call.done or self.error is not None:
            return
        try:
            self.core.send_method(self.number, call.method)
        except Exception as exc:
            call.done = True
            call.reject(exc)
            return
        self._sent(call)

    def _sent(self, call: Call) -> None:
        if getattr(call.method, "nowait", False):
            call.done = True  # no reply comes
            call.resolve(None)
        else:
            self._calls.append(call)
        self._flush()

    # -- publishing and settling ----------------------------------------------------------

    def publish(self, exchange: str, routing_key: str, body: bytes,
                properties: Properties | None, mandatory: bool) -> int:
        """Queue the message in the core; its sequence number in confirm mode, else 0.
        The caller flushes (publishes are written in batches)."""
        if self.error is not None:  # (check_open, inline: this is the hot path)
            raise self.error
        return self.core.basic_publish(self.number, exchange, routing_key, body, properties,
                                       mandatory)

    def expect_confirm(self, tag: int, resolve: Resolve, reject: Reject) -> None:
        """``resolve(None)`` on the broker's ack of publish ``tag``; ``reject`` with
        `NackError`, `UnroutableError` or `OutcomeUnknownError`."""
        self._confirms[tag] = (resolve, reject)

    def forget_confirm(self, tag: int) -> None:
        """Stop waiting for the confirm of ``tag`` (the caller gave up)."""
        self._confirms.pop(tag, None)

    def hold(self, run: Callable[[], object], fail: Reject) -> _Held:
        """Hold ``run`` until the broker lets publishers go on (in order with what is held
        already); ``fail`` gets the error if the channel closes first."""
        held = _Held(run, fail)
        self._held.append(held)
        return held

    def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        """``basic.ack``: `settle` for the commonest case, in fewer steps."""
        if self.error is not None:
            self.settle("ack", delivery_tag, multiple)  # raises the right UsageError
        self.core.basic_ack(self.number, delivery_tag, multiple)
        self._flush()

    def settle(self, how: str, delivery_tag: int, multiple: bool = False,
               requeue: bool = True) -> None:
        """``basic.ack`` (``how="ack"``), ``basic.nack`` or ``basic.reject``; raises
        `UsageError` (nothing sent) if no such delivery awaits one."""
        if self.error is not None:
            raise UsageError(
                f"channel {self.number} is closed ({self.error}); delivery "
                f"{delivery_tag} can no longer be settled")
        core = self.core
        if how == "ack":
            core.basic_ack(self.number, delivery_tag, multiple)
        elif how == "nack":
            core.basic_nack(self.number, delivery_tag, multiple, requeue)
        elif how == "reject":
            core.basic_reject(self.number, delivery_tag, requeue)
        else:
            raise UsageError(f"cannot settle with {how!r}")
        self._flush()

    # -- closing and watching -------------------------------------------------------------

    def close(self, reply_code: int, reply_text: str) -> None:
        """Send ``channel.close`` (after held work); `closed` follows the broker's
        close-ok."""
        def send() -> None:
            try:
                self.core.close_channel(self.number, reply_code, reply_text)
            except Exception as exc:
                self.closed(exc)
            self._flush()

        if self._held:
            self._held.append(_Held(send, lambda error: None))
        else:
            send()

    def when_closed(self, callback: Callable[[BaseException], object]) -> None:
        """Call ``callback(error)`` once the channel closes (now, if it has)."""
        if self.error is not None:
            callback(self.error)
        else:
            self._watchers.append(callback)

    def add_flow_listener(self, callback: Callable[[bool], object]) -> None:
        """Call ``callback(active)`` in the same turn as each change of `flow_active`."""
        self._flow_listeners.append(callback)

    def remove_flow_listener(self, callback: Callable[[bool], object]) -> None:
        """Stop calling ``callback``."""
        self._flow_listeners.remove(callback)

    # -- events, from the session -----------------------------------------------------------

    def expect_open(self, resolve: Resolve, reject: Reject) -> None:
        """``resolve(owner)`` on ``channel.open-ok``; ``reject`` if it closes first."""
        self._opening = (resolve, reject)

    def opened(self) -> None:
        """``channel.open-ok`` arrived."""
        opening, self._opening = self._opening, None
        if opening is not None:
            opening[0](self.owner)

    def reply(self, method: Any) -> None:
        """A method for the call awaiting it (a `MessageBase` for ``basic.get-ok``), or
        ``basic.cancel`` from the broker."""
        name = getattr(method, "NAME", "basic.get-ok")
        if name == "basic.cancel":  # the broker cancelled a consumer
            entry = self._consumers.pop(method.consumer_tag, None)
            if entry is not None:
                self._log.warn("consumer {tag} was cancelled by the broker", tag=entry.tag)
                entry.end(ConsumerCancelled(entry.tag), False)
            return
        if name == "basic.get-empty":
            method = None
        if not self._calls:
            self._log.warn("channel {channel}: {method} with no request waiting for it",
                           channel=self.number, method=name)
            return
        call = self._calls.popleft()
        if call.done:
            self._absorb(method)
            return
        call.done = True
        try:
            result = method if call.convert is None else call.convert(method)
        except Exception as exc:
            call.reject(exc)
            return
        call.resolve(result)

    def _absorb(self, reply: Any) -> None:
        """A reply to an abandoned call: undo what it started."""
        if getattr(reply, "NAME", None) == "basic.consume-ok":
            # Nobody will handle this consumer's messages: cancel it. Its deliveries, until
            # the broker stops, are rejected back to the queue (see message()).
            cancel = self.core.dialect.module.Basic.Cancel(reply.consumer_tag, False)
            gone = Call(cancel, _ignore, _ignore, None)
            gone.done = True
            self.core.send_method(self.number, cancel)
            self._calls.append(gone)
        elif isinstance(reply, MessageBase) and not reply.settled:
            self.core.basic_reject(self.number, reply.delivery_tag, True)

    def message(self, method: Any, properties: Any, body: bytes) -> None:
        """A delivery, a fetched message, or a return outside confirm mode."""
        if method.NAME == "basic.deliver":
            entry = self._consumers.get(method.consumer_tag)
            if entry is None:
                if self.core.awaiting_ack(self.number, method.delivery_tag):
                    self.core.basic_reject(self.number, method.delivery_tag, True)
                return
            entry.deliver(self._new_message(self.owner, self, method, properties, body,
                                            entry.auto_ack))
        elif method.NAME == "basic.get-ok":
            auto_ack = not self.core.awaiting_ack(self.number, method.delivery_tag)
            self.reply(self._message_cls(self.owner, method, properties, body, auto_ack,
                                         self))
        else:  # basic.return outside confirm mode (or not matched to a publish)
            self._log.warn("channel {channel}: message returned: {code} {text} (exchange "
                           "{exchange!r}, routing key {key!r})", channel=self.number,
                           code=method.reply_code, text=method.reply_text,
                           exchange=method.exchange, key=method.routing_key)
            self._returned(self._message_cls(None, method, properties, body))

    def confirmed(self, tags: tuple[int, ...], acked: bool) -> None:
        """The broker acked (or nacked) the publishes ``tags``."""
        confirms = self._confirms
        for tag in tags:
            waiter = confirms.pop(tag, None)
            if waiter is None:
                continue
            if acked:
                waiter[0](None)
            else:
                waiter[1](NackError(tag))

    def returned(self, tag: int, method: Any, properties: Any, body: bytes) -> None:
        """Confirmed publish ``tag`` came back unroutable."""
        waiter = self._confirms.pop(tag, None)
        if waiter is not None:
            message = self._message_cls(None, method, properties, body)
            waiter[1](UnroutableError(message, method.reply_code, method.reply_text))

    def set_flow(self, active: bool) -> None:
        """Publishers may go on (``channel.flow`` and ``connection.blocked`` together)."""
        if active == self.flow_active:
            return
        self.flow_active = active
        for listener in list(self._flow_listeners):
            try:
                listener(active)
            except Exception:
                self._log.failure("flow listener {listener} failed", listener=listener)
        held = self._held
        while active and held and self.error is None and self.flow_active:
            item = held.popleft()
            if item.run is not None:
                item.run()

    def closed(self, error: BaseException) -> None:
        """The channel (or its connection) closed with ``error``: fail everything once."""
        if self.error is not None:
            return
        self.error = error
        opening, self._opening = self._opening, None
        if opening is not None:
            opening[1](error)
        calls, self._calls = self._calls, deque()
        for call in calls:
            if not call.done:
                call.done = True
                call.reject(error)
        confirms, self._confirms = self._confirms, {}
        for _, reject in confirms.values():
            reject(OutcomeUnknownError(error))
        held, self._held = self._held, deque()
        for item in held:
            fail = item.fail
            item.drop()
            if fail is not None:
                fail(error)
        normal = (isinstance(error, (ChannelClosedByClient, ConnectionClosedByClient))
                  and not isinstance(error, MessageTooLarge))
        consumers, self._consumers = self._consumers, {}
        for entry in consumers.values():
            entry.end(error, normal)
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher(error)
        if isinstance(error, MessageTooLarge):
            self._log.warn("channel {channel} closed: {error}; the broker requeues the "
                           "message (raise max_message_size to take it)",
                           channel=self.number, error=error)
        elif not isinstance(error, ChannelClosedByClient):
            self._log.info("channel {channel} closed: {error}", channel=self.number,
                           error=error)


def _ignore(value: object) -> None:
    return None
