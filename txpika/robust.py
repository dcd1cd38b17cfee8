"""Recorded topology and channels that survive reconnects (used by `txpika.client`).

`Topology` remembers the exchanges, exchange bindings, queues and queue bindings declared
through robust channels, in order, and replays them on a new connection. `RobustChannel`
has the `txpika.channel.Channel` API; it records what it declares and its QoS, confirm
mode and consumers, and is reopened with them by the service after every reconnect. While
the service has no open connection its methods fail at once with
`txpika.errors.ConnectionRecovering`; Deferreds pending when the connection is lost fail
as they do on a plain channel (`txpika.errors.OutcomeUnknownError` for unconfirmed
publishes), so a caller always learns what happened.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.logger import Logger

from txpika._consumer import Consumer, MessageCallback
from txpika.errors import ConsumerCancelled
from txpika.message import Message

if TYPE_CHECKING:
    from txpika.channel import Channel
    from txpika.client import AMQPService
    from txpika.protocol import AMQPProtocol

__all__ = ["RobustChannel", "RobustConsumer", "Topology"]

log = Logger()


def _key_args(arguments: Mapping[str, Any] | None) -> str:
    return repr(sorted((arguments or {}).items()))


class Topology:
    """What was declared, in order, to be declared again on a new connection."""

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._server_named: set[str] = set()
        self._renamed: dict[str, str] = {}  # every earlier name -> the current one
        self.rename_listeners: list[Callable[[str, str], object]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        """The recorded declarations, oldest first (for inspection and tests)."""
        return [(key, dict(kwargs)) for key, kwargs in self._entries.items()]

    def exchange(self, kwargs: dict[str, Any]) -> None:
        self._entries[("exchange", kwargs["exchange"])] = kwargs

    def exchange_binding(self, kwargs: dict[str, Any]) -> None:
        key = ("xbind", kwargs["destination"], kwargs["source"], kwargs["routing_key"],
               _key_args(kwargs.get("arguments")))
        self._entries[key] = kwargs

    def queue(self, name: str, kwargs: dict[str, Any], server_named: bool) -> None:
        self._entries[("queue", name)] = kwargs
        if server_named:
            self._server_named.add(name)

    def queue_binding(self, kwargs: dict[str, Any]) -> None:
        key = ("qbind", kwargs["queue"], kwargs["exchange"], kwargs["routing_key"],
               _key_args(kwargs.get("arguments")))
        self._entries[key] = kwargs

    def forget(self, kind: str, name: str, *rest: Any) -> None:
        """Forget an entity; an exchange or queue takes the bindings that name it along."""
        self._entries.pop((kind, name, *rest), None)
        if kind == "exchange":
            doomed = [k for k in self._entries if (k[0] == "xbind" and name in k[1:3])
                      or (k[0] == "qbind" and k[2] == name)]
        elif kind == "queue":
            self._server_named.discard(name)
            doomed = [k for k in self._entries if k[0] == "qbind" and k[1] == name]
        else:
            doomed = []
        for key in doomed:
            del self._entries[key]

    async def replay(self, channel: Channel) -> None:
        """Declare everything again on ``channel``, in order; server-named queues get new
        names, which their bindings follow and rename listeners learn."""
        renames: dict[str, str] = {}
        for key, kwargs in list(self._entries.items()):
            kind = key[0]
            if kind == "exchange":
                await channel.exchange_declare(**kwargs)
            elif kind == "xbind":
                await channel.exchange_bind(**kwargs)
            elif kind == "queue":
                name = key[1]
                if name in self._server_named:
                    ok = await channel.queue_declare("", **kwargs)
                    renames[name] = ok.queue
                else:
                    await channel.queue_declare(name, **kwargs)
            elif kind == "qbind":
                bound = dict(kwargs)
                bound["queue"] = renames.get(bound["queue"], bound["queue"])
                await channel.queue_bind(**bound)
        if renames:
            self._rename(renames)

    def _rename(self, renames: dict[str, str]) -> None:
        entries: dict[tuple[Any, ...], dict[str, Any]] = {}
        for key, kwargs in self._entries.items():
            if key[0] == "queue" and key[1] in renames:
                new = renames[key[1]]
                self._server_named.discard(key[1])
                self._server_named.add(new)
                entries[("queue", new)] = kwargs
            elif key[0] == "qbind" and key[1] in renames:
                bound = dict(kwargs, queue=renames[key[1]])
                entries[("qbind", renames[key[1]], *key[2:])] = bound
            else:
                entries[key] = kwargs
        self._entries = entries
        for old, new in renames.items():
            for earlier, current in list(self._renamed.items()):
                if current == old:
                    self._renamed[earlier] = new
            self._renamed[old] = new
            log.info("server-named queue {old} is now {new}", old=old, new=new)
            for listener in list(self.rename_listeners):
                try:
                    listener(old, new)
                except Exception:
                    log.failure("queue rename listener {listener} failed", listener=listener)

    def forget_renames(self) -> None:
        """Every consumer follows its queue's new name now: drop the old names."""
        self._renamed.clear()

    def current_name(self, name: str) -> str:
        """The name a queue declared as ``name`` has now (server-named queues change)."""
        return self._renamed.get(name, name)


class RobustConsumer:
    """A consumer that is started again on every new connection with the same tag.

    Push style (a callback) or pull style (`get`, ``async for``). Messages buffered from a
    lost connection are dropped (the broker redelivers them). With ``on_cancel="reconsume"``
    a consumer the broker cancels (its queue was deleted) is started again after the queue
    is declared again from the recorded topology; with ``"end"`` (the default) it ends with
    `txpika.errors.ConsumerCancelled`.
    """

    def __init__(self, channel: RobustChannel, queue: str, callback: MessageCallback | None,
                 kwargs: dict[str, Any], on_cancel: str) -> None:
        self.channel = channel
        self.queue = queue
        self.consumer_tag: str = kwargs["consumer_tag"]
        self._callback = callback
        self._kwargs = kwargs
        self._on_cancel = on_cancel
        self._consumer: Consumer | None = None
        self._ended: BaseException | None = None
        self._getters: list[Deferred[Message]] = []  # waiting for the next consumer
        self._watchers: list[Deferred[BaseException]] = []

    def __repr__(self) -> str:
        return f"<RobustConsumer {self.consumer_tag!r} on {self.queue!r}>"

    @property
    def active(self) -> bool:
        """True until cancelled (by the client, or by the broker under ``on_cancel="end"``)."""
        return self._ended is None

    async def _start(self, channel: Channel) -> None:
        consumer = await channel.basic_consume(self.queue, self._callback, **self._kwargs)
        self._consumer = consumer
        consumer.when_ended().addCallback(lambda _: self._underlying_ended(consumer))
        waiting, self._getters = self._getters, []
        for d in waiting:
            if not d.called:
                self._pull(d)

    def _underlying_ended(self, consumer: Consumer) -> None:
        if consumer is not self._consumer or self._ended is not None:
            return
        self._consumer = None
        reason = consumer.end_reason
        if isinstance(reason, ConsumerCancelled) and consumer._normal_end:
            self._end(reason)
        elif isinstance(reason, ConsumerCancelled):
            if self._on_cancel == "reconsume":
                log.info("consumer {tag} cancelled by the broker: starting it again",
                         tag=self.consumer_tag)
                self.channel._reconsume(self)
            else:
                self._end(reason)
        # Otherwise the channel or connection went away: the service restarts us.

    def _end(self, error: BaseException) -> None:
        if self._ended is not None:
            return
        self._ended = error
        self.channel._consumers.pop(self.consumer_tag, None)
        getters, self._getters = self._getters, []
        for d in getters:
            if not d.called:
                d.errback(error)
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.callback(error)

    def when_ended(self) -> Deferred[BaseException]:
        """A new Deferred that fires (never fails) with why the consumer ended for good:
        cancelled by this client, or by the broker under ``on_cancel="end"`` (or when it
        could not be started again)."""
        from twisted.internet.defer import succeed

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
        if self.channel._service.state == "closed":
            return fail(self.channel._service.unavailable())
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
            elif self.channel._service.state == "closed":  # no next connection to wait for
                outer.errback(self.channel._service.unavailable())
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
            if self._ended is not None and "this client" in str(self._ended):
                raise StopAsyncIteration from None
            raise

    def cancel(self) -> Deferred[None]:
        """Cancel the consumer for good."""
        consumer = self._consumer
        self._end(ConsumerCancelled(self.consumer_tag, "was cancelled by this client"))
        if consumer is not None and consumer.active:
            return consumer.cancel()
        from twisted.internet.defer import succeed

        return succeed(None)


class RobustChannel:
    """A channel of an `txpika.client.AMQPService` that is reopened after reconnects.

    It has the methods of `txpika.channel.Channel`, with the same results and errors;
    while the service has no open connection they fail with
    `txpika.errors.ConnectionRecovering`. Declarations are recorded in the service's
    topology (deletes and unbinds forget them); ``basic_qos``, ``confirm_select`` and
    consumers are recorded on this channel and restored when it is reopened.
    """

    def __init__(self, service: AMQPService) -> None:
        self._service = service
        self._channel: Channel | None = None
        self._qos: dict[str, Any] | None = None
        self._confirm = False
        self._consumers: dict[str, RobustConsumer] = {}
        self._closed = False
        self._reopen_delay = 0.0  # grows while reopening after channel errors keeps failing
        #: Called with no arguments each time the channel is (re)opened and restored.
        self._attached_listeners: list[Callable[[], object]] = []

    def __repr__(self) -> str:
        return f"<RobustChannel {'closed' if self._closed else 'open'} {self._channel!r}>"

    @property
    def channel(self) -> Channel | None:
        """The plain channel on the current connection, or ``None`` while recovering."""
        return self._channel

    @property
    def is_open(self) -> bool:
        """True while attached to an open connection."""
        return self._channel is not None and self._channel.is_open

    # -- service side ------------------------------------------------------------------------

    def _attach(self, protocol: AMQPProtocol) -> Deferred[None]:
        async def run() -> None:
            channel = await protocol.channel()
            if self._qos is not None:
                await channel.basic_qos(**self._qos)
            if self._confirm:
                await channel.confirm_select()
            for consumer in list(self._consumers.values()):
                consumer.queue = self._service.topology.current_name(consumer.queue)
                await consumer._start(channel)
            self._channel = channel
            channel.when_closed().addCallback(self._channel_closed, channel, protocol)
            for listener in list(self._attached_listeners):
                try:
                    listener()
                except Exception:
                    log.failure("reopen listener {listener} failed", listener=listener)

        return ensureDeferred(run())

    def _channel_closed(self, error: BaseException, channel: Channel,
                        protocol: AMQPProtocol) -> None:
        """The broker closed our channel (a channel error) on a connection that lives on:
        open a new one with the same QoS, confirm mode and consumers, backing off if the
        new one fails too. (After a connection loss the service reattaches us instead.)"""
        from txpika.errors import ChannelClosedByBroker

        if channel is not self._channel or self._closed:
            return
        self._channel = None
        if not isinstance(error, ChannelClosedByBroker) or not protocol.is_open:
            return
        log.warn("channel closed by the broker ({error}); reopening", error=error)

        def schedule() -> None:
            delay = self._reopen_delay
            self._reopen_delay = min(30.0, max(0.1, delay * 2))
            self._service.clock.callLater(delay, reopen)

        def reopen() -> None:
            if self._closed or self._channel is not None or not protocol.is_open:
                return
            self._attach(protocol).addCallbacks(
                lambda _: setattr(self, "_reopen_delay", 0.0), failed)

        def failed(failure: Any) -> None:
            log.warn("could not reopen the channel: {error}", error=failure.value)
            if not (self._closed or self._channel is not None or not protocol.is_open):
                schedule()  # try again, later each time (a lost connection: the service)

        schedule()

    def _detach(self, error: BaseException) -> None:
        self._channel = None

    def _service_stopped(self, error: BaseException) -> None:
        """The service stopped: consumers waiting for the next connection fail now."""
        for consumer in list(self._consumers.values()):
            consumer._fail_getters(error)

    def _reconsume(self, consumer: RobustConsumer) -> None:
        channel = self._channel
        if channel is None:
            return

        async def run() -> None:
            topology = self._service.topology
            queue = topology._entries.get(("queue", consumer.queue))
            # A server-named queue cannot be declared again under its name (403).
            if queue is not None and consumer.queue not in topology._server_named:
                await channel.queue_declare(consumer.queue, **queue)
            await consumer._start(channel)

        def failed(failure: Any) -> None:
            log.failure("could not restart consumer {tag}", failure, tag=consumer.consumer_tag)
            consumer._end(ConsumerCancelled(consumer.consumer_tag))

        ensureDeferred(run()).addErrback(failed)

    def _current(self) -> Channel:
        if self._closed:
            from txpika.errors import UsageError

            raise UsageError("this robust channel was closed")
        if self._channel is None or not self._channel.is_open:
            raise self._service.unavailable()
        return self._channel

    def _run(self, name: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        try:
            channel = self._current()
        except Exception as exc:
            return fail(exc)
        result: Deferred[Any] = getattr(channel, name)(*args, **kwargs)
        return result

    # -- declarations (recorded) ---------------------------------------------------------------

    def exchange_declare(self, exchange: str, exchange_type: str = "direct",
                         passive: bool = False, durable: bool = False,
                         auto_delete: bool = False, internal: bool = False,
                         arguments: Mapping[str, Any] | None = None,
                         timeout: float | None = None) -> Deferred[Any]:
        """As `Channel.exchange_declare`; recorded unless passive."""
        kwargs = dict(exchange=exchange, exchange_type=exchange_type, passive=passive,
                      durable=durable, auto_delete=auto_delete, internal=internal,
                      arguments=arguments)
        d = self._run("exchange_declare", timeout=timeout, **kwargs)
        if not passive:
            d.addCallback(_recorded, self._service.topology.exchange, kwargs)
        return d

    def exchange_delete(self, exchange: str, if_unused: bool = False,
                        timeout: float | None = None) -> Deferred[Any]:
        """As `Channel.exchange_delete`; the exchange and its bindings are forgotten."""
        d = self._run("exchange_delete", exchange, if_unused, timeout=timeout)
        return d.addCallback(_then, self._service.topology.forget, "exchange", exchange)

    def exchange_bind(self, destination: str, source: str, routing_key: str = "",
                      arguments: Mapping[str, Any] | None = None,
                      timeout: float | None = None) -> Deferred[Any]:
        """As `Channel.exchange_bind`; recorded."""
        kwargs = dict(destination=destination, source=source, routing_key=routing_key,
                      arguments=arguments)
        d = self._run("exchange_bind", timeout=timeout, **kwargs)
        return d.addCallback(_recorded, self._service.topology.exchange_binding, kwargs)

    def exchange_unbind(self, destination: str, source: str, routing_key: str = "",
                        arguments: Mapping[str, Any] | None = None,
                        timeout: float | None = None) -> Deferred[Any]:
        """As `Channel.exchange_unbind`; the binding is forgotten."""
        d = self._run("exchange_unbind", destination, source, routing_key, arguments,
                      timeout=timeout)
        return d.addCallback(_then, self._service.topology.forget, "xbind", destination,
                             source, routing_key, _key_args(arguments))

    def queue_declare(self, queue: str = "", passive: bool = False, durable: bool = False,
                      exclusive: bool | None = None, auto_delete: bool | None = None,
                      arguments: Mapping[str, Any] | None = None,
                      timeout: float | None = None) -> Deferred[Any]:
        """As `Channel.queue_declare`; recorded unless passive. A server-named queue is
        declared again under a new name after a reconnect (see
        `AMQPService.add_queue_rename_listener`)."""
        if exclusive is None:
            exclusive = not queue
        if auto_delete is None:
            auto_delete = not queue
        kwargs = dict(durable=durable, exclusive=exclusive, auto_delete=auto_delete,
                      arguments=arguments)
        d = self._run("queue_declare", queue, passive, timeout=timeout, **kwargs)
        if not passive:
            def record(ok: Any) -> Any:
                self._service.topology.queue(ok.queue, kwargs, server_named=not queue)
                return ok

            d.addCallback(record)
        return d

    def queue_bind(self, queue: str, exchange: str, routing_key: str = "",
                   arguments: Mapping[str, Any] | None = None,
                   timeout: float | None = None) -> Deferred[Any]:
        """As `Channel.queue_bind`; recorded."""
        kwargs = dict(queue=queue, exchange=exchange, routing_key=routing_key,
                      arguments=arguments)
        d = self._run("queue_bind", timeout=timeout, **kwargs)
        return d.addCallback(_recorded, self._service.topology.queue_binding, kwargs)

    def queue_unbind(self, queue: str, exchange: str, routing_key: str = "",
                     arguments: Mapping[str, Any] | None = None,
                     timeout: float | None = None) -> Deferred[Any]:
        """As `Channel.queue_unbind`; the binding is forgotten."""
        d = self._run("queue_unbind", queue, exchange, routing_key, arguments,
                      timeout=timeout)
        return d.addCallback(_then, self._service.topology.forget, "qbind", queue, exchange,
                             routing_key, _key_args(arguments))

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False,
                     timeout: float | None = None) -> Deferred[Any]:
        """As `Channel.queue_delete`; the queue and its bindings are forgotten."""
        d = self._run("queue_delete", queue, if_unused, if_empty, timeout=timeout)
        return d.addCallback(_then, self._service.topology.forget, "queue", queue)

    def queue_purge(self, queue: str, timeout: float | None = None) -> Deferred[Any]:
        """As `Channel.queue_purge`."""
        return self._run("queue_purge", queue, timeout=timeout)

    # -- channel state (recorded) ------------------------------------------------------------

    def basic_qos(self, prefetch_count: int = 0, prefetch_size: int = 0,
                  global_qos: bool = False, timeout: float | None = None) -> Deferred[Any]:
        """As `Channel.basic_qos`; restored on reconnect."""
        kwargs = dict(prefetch_count=prefetch_count, prefetch_size=prefetch_size,
                      global_qos=global_qos)
        d = self._run("basic_qos", timeout=timeout, **kwargs)

        def record(ok: Any) -> Any:
            self._qos = kwargs
            return ok

        return d.addCallback(record)

    def confirm_select(self, timeout: float | None = None) -> Deferred[Any]:
        """As `Channel.confirm_select`; restored on reconnect."""
        d = self._run("confirm_select", timeout=timeout)

        def record(ok: Any) -> Any:
            self._confirm = True
            return ok

        return d.addCallback(record)

    def basic_consume(self, queue: str, on_message_callback: MessageCallback | None = None,
                      auto_ack: bool = False, exclusive: bool = False,
                      consumer_tag: str | None = None,
                      arguments: Mapping[str, Any] | None = None,
                      timeout: float | None = None, on_cancel: str = "end"
                      ) -> Deferred[RobustConsumer]:
        """As `Channel.basic_consume`, firing with a `RobustConsumer` that is started again
        (same tag) on every new connection. ``on_cancel`` is ``"end"`` or
        ``"reconsume"`` (see `RobustConsumer`)."""
        if on_cancel not in ("end", "reconsume"):
            from txpika.errors import UsageError

            return fail(UsageError(f"on_cancel {on_cancel!r} is not 'end' or 'reconsume'"))
        try:
            channel = self._current()
        except Exception as exc:
            return fail(exc)
        tag = consumer_tag or f"txpika.{uuid.uuid4().hex}"
        kwargs = dict(auto_ack=auto_ack, exclusive=exclusive, consumer_tag=tag,
                      arguments=arguments)
        consumer = RobustConsumer(self, queue, on_message_callback, kwargs, on_cancel)

        async def run() -> RobustConsumer:
            await consumer._start(channel)
            self._consumers[tag] = consumer
            return consumer

        d = ensureDeferred(run())
        if timeout is not None:
            d.addTimeout(timeout, self._service.clock)
        return d

    def basic_cancel(self, consumer_tag: str, timeout: float | None = None) -> Deferred[Any]:
        """Cancel a consumer for good."""
        consumer = self._consumers.pop(consumer_tag, None)
        if consumer is not None:
            return consumer.cancel()
        return self._run("basic_cancel", consumer_tag, timeout=timeout)

    # -- everything else: the current channel ----------------------------------------------

    def basic_publish(self, exchange: str, routing_key: str, body: bytes,
                      properties: Any = None, mandatory: bool = False,
                      timeout: float | None = None) -> Deferred[None]:
        """As `Channel.basic_publish`; fails at once with `ConnectionRecovering` while
        there is no connection."""
        return self._run("basic_publish", exchange, routing_key, body, properties, mandatory,
                         timeout=timeout)

    def basic_get(self, queue: str, auto_ack: bool = False,
                  timeout: float | None = None) -> Deferred[Any]:
        """As `Channel.basic_get`."""
        return self._run("basic_get", queue, auto_ack, timeout=timeout)

    def basic_recover(self, requeue: bool = True, timeout: float | None = None
                      ) -> Deferred[Any]:
        """As `Channel.basic_recover`."""
        return self._run("basic_recover", requeue, timeout=timeout)

    def tx_select(self, timeout: float | None = None) -> Deferred[Any]:
        """As `Channel.tx_select` (not restored after a reconnect)."""
        return self._run("tx_select", timeout=timeout)

    def tx_commit(self, timeout: float | None = None) -> Deferred[Any]:
        """As `Channel.tx_commit`."""
        return self._run("tx_commit", timeout=timeout)

    def tx_rollback(self, timeout: float | None = None) -> Deferred[Any]:
        """As `Channel.tx_rollback`."""
        return self._run("tx_rollback", timeout=timeout)

    def close(self) -> Deferred[None]:
        """Close for good: forget its consumers and stop reopening it."""
        self._closed = True
        self._service._forget(self)
        consumers = list(self._consumers.values())
        self._consumers.clear()
        for consumer in consumers:  # they end with their channel, as if cancelled
            consumer._end(ConsumerCancelled(
                consumer.consumer_tag, "was cancelled by this client (channel closed)"))
        channel, self._channel = self._channel, None
        if channel is not None and channel.is_open:
            return channel.close()
        from twisted.internet.defer import succeed

        return succeed(None)


def _recorded(result: Any, record: Callable[[dict[str, Any]], None],
              kwargs: dict[str, Any]) -> Any:
    record(kwargs)
    return result


def _then(result: Any, action: Callable[..., None], *args: Any) -> Any:
    action(*args)
    return result
