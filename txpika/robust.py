"""Channels and consumers that survive reconnects (used by `txpika.client`).

`RobustChannel` has the `txpika.channel.Channel` API; it records what it declares in the
service's `txpika._topology.Topology`, and its QoS, confirm mode and consumers on itself,
and is reopened with them by the service after every reconnect. While
the service has no open connection its methods fail at once with
`txpika.errors.ConnectionRecovering`; Deferreds pending when the connection is lost fail
as they do on a plain channel (`txpika.errors.OutcomeUnknownError` for unconfirmed
publishes), so a caller always learns what happened.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from txpika import spec
from txpika._consumer import MessageCallback
from txpika._robust_consumer import RobustConsumer
from txpika._topology import Topology, binding_key
from txpika.channel import Channel, Message
from txpika.errors import (
    ChannelClosedByBroker,
    ConsumerCancelled,
    MessageTooLarge,
    UsageError,
)

if TYPE_CHECKING:
    from txpika.protocol import AMQPProtocol

__all__ = ["ChannelHost", "RobustChannel", "RobustConsumer"]

#: The logger of robust channels and consumers (namespace ``txpika.robust``).
log = Logger()

_Args = Mapping[str, Any] | None
T = TypeVar("T")


class ChannelHost(Protocol):
    """What a robust channel needs of its service (`txpika.client.AMQPService`)."""

    @property
    def clock(self) -> IReactorTime:
        """The clock reopening backs off on."""

    @property
    def topology(self) -> Topology:
        """Where declarations are recorded."""

    @property
    def state(self) -> str:
        """The service's state (``"closed"``, ``"open"``, ...)."""

    def unavailable(self) -> Exception:
        """The error for work attempted while there is no open connection."""


class RobustChannel:
    """A channel of an `txpika.client.AMQPService` that is reopened after reconnects.

    It has the methods of `txpika.channel.Channel`, with the same results and errors;
    while the service has no open connection they fail at once with
    `txpika.errors.ConnectionRecovering`, after the service stopped with
    `txpika.errors.ServiceStopped`, and after `close` with `txpika.errors.UsageError`;
    nothing is sent then. Deferreds pending when the
    connection is lost fail as a plain channel's do. Declarations are recorded in the service's
    topology (deletes and unbinds forget them); ``basic_qos``, ``confirm_select`` and
    consumers are recorded on this channel and restored when it is reopened.
    """

    def __init__(self, host: ChannelHost,
                 on_close: Callable[[RobustChannel], object] | None = None) -> None:
        #: The service whose connections it is reopened on.
        self.host = host
        self._on_close = on_close
        self._channel: Channel | None = None
        self._qos: dict[str, Any] | None = None
        self._confirm = False
        self._consumers: dict[str, RobustConsumer] = {}
        self._closed = False
        self._reopen_delay = 0.0  # grows while reopening after channel errors keeps failing
        self._reopen_listeners: list[Callable[[], object]] = []

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

    def add_reopen_listener(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` each time the channel is (re)opened and restored: on every
        new connection, and after the broker closed it with a channel error."""
        self._reopen_listeners.append(callback)

    # -- driven by the service ---------------------------------------------------------------

    def attach(self, protocol: AMQPProtocol) -> Deferred[None]:
        """Open the channel on ``protocol`` (a new connection) and restore its QoS, confirm
        mode and consumers. Called by the service; fires with ``None`` once restored."""
        async def run() -> None:
            channel = await protocol.channel()
            if self._qos is not None:
                await channel.basic_qos(**self._qos)
            if self._confirm:
                await channel.confirm_select()
            for consumer in list(self._consumers.values()):
                consumer.queue = self.host.topology.current_name(consumer.queue)
                await consumer._start(channel)
            self._channel = channel
            channel.when_closed().addCallback(self._channel_closed, channel, protocol)
            for listener in list(self._reopen_listeners):
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
        if channel is not self._channel or self._closed:
            return
        self._channel = None
        too_large = isinstance(error, MessageTooLarge)
        if not (too_large or isinstance(error, ChannelClosedByBroker)) or not protocol.is_open:
            return
        if too_large:  # the broker requeued it: keep backing off while it comes back
            log.warn("{error}: reopening the channel in {delay} s", error=error,
                     delay=max(0.1, self._reopen_delay))
        else:
            log.warn("channel closed by the broker ({error}); reopening", error=error)

        def schedule() -> None:
            delay = self._reopen_delay
            self._reopen_delay = min(30.0, max(0.1, delay * 2))
            self.host.clock.callLater(max(delay, 0.1) if too_large else delay, reopen)

        def reopen() -> None:
            if self._closed or self._channel is not None or not protocol.is_open:
                return
            self.attach(protocol).addCallbacks(reopened, failed)

        def reopened(_: object) -> None:
            if not too_large:  # a message that came back too large keeps the backoff
                self._reopen_delay = 0.0

        def failed(failure: Any) -> None:
            log.warn("could not reopen the channel: {error}", error=failure.value)
            if not (self._closed or self._channel is not None or not protocol.is_open):
                schedule()  # try again, later each time (a lost connection: the service)

        schedule()

    def detach(self) -> None:
        """Its connection was lost (called by the service): wait for the next one."""
        self._channel = None

    def service_stopped(self, error: BaseException) -> None:
        """The service stopped (called by it): consumers waiting for the next connection
        fail now with ``error``."""
        for consumer in list(self._consumers.values()):
            consumer._fail_getters(error)

    def _reconsume(self, consumer: RobustConsumer) -> None:
        channel = self._channel
        if channel is None:
            return

        async def run() -> None:
            # (A server-named queue cannot be declared again under its name: None.)
            declared = self.host.topology.declared_queue(consumer.queue)
            if declared is not None:
                await channel.queue_declare(consumer.queue, **declared)
            await consumer._start(channel)

        def failed(failure: Any) -> None:
            # Usual in a cluster: the queue's node is down. No traceback for it.
            log.warn("could not restart consumer {tag}: {error}", tag=consumer.consumer_tag,
                     error=failure.value)
            consumer._end(ConsumerCancelled(consumer.consumer_tag))

        ensureDeferred(run()).addErrback(failed)

    def _current(self) -> Channel:
        if self._closed:
            raise UsageError("this robust channel was closed")
        if self._channel is None or not self._channel.is_open:
            raise self.host.unavailable()
        return self._channel

    def _use(self, call: Callable[[Channel], Deferred[T]]) -> Deferred[T]:
        try:
            channel = self._current()
        except Exception as exc:
            return fail(exc)
        return call(channel)

    def _forget_consumer(self, consumer_tag: str) -> None:
        self._consumers.pop(consumer_tag, None)

    # -- declarations (recorded) ---------------------------------------------------------------

    def exchange_declare(self, exchange: str, exchange_type: str = "direct",
                         passive: bool = False, durable: bool = False,
                         auto_delete: bool = False, internal: bool = False,
                         arguments: _Args = None, timeout: float | None = None
                         ) -> Deferred[spec.Exchange.DeclareOk]:
        """As `Channel.exchange_declare`; recorded unless passive."""
        kwargs: dict[str, Any] = dict(
            exchange=exchange, exchange_type=exchange_type, passive=passive, durable=durable,
            auto_delete=auto_delete, internal=internal, arguments=arguments)
        d = self._use(lambda ch: ch.exchange_declare(timeout=timeout, **kwargs))
        if not passive:
            d.addCallback(_recorded, self.host.topology.exchange, kwargs)
        return d

    def exchange_delete(self, exchange: str, if_unused: bool = False,
                        timeout: float | None = None) -> Deferred[spec.Exchange.DeleteOk]:
        """As `Channel.exchange_delete`; the exchange and its bindings are forgotten."""
        d = self._use(lambda ch: ch.exchange_delete(exchange, if_unused, timeout=timeout))
        return d.addCallback(_then, self.host.topology.forget, "exchange", exchange)

    def exchange_bind(self, destination: str, source: str, routing_key: str = "",
                      arguments: _Args = None,
                      timeout: float | None = None) -> Deferred[spec.Exchange.BindOk]:
        """As `Channel.exchange_bind`; recorded."""
        kwargs: dict[str, Any] = dict(destination=destination, source=source,
                                      routing_key=routing_key, arguments=arguments)
        d = self._use(lambda ch: ch.exchange_bind(timeout=timeout, **kwargs))
        return d.addCallback(_recorded, self.host.topology.exchange_binding, kwargs)

    def exchange_unbind(self, destination: str, source: str, routing_key: str = "",
                        arguments: _Args = None,
                        timeout: float | None = None) -> Deferred[spec.Exchange.UnbindOk]:
        """As `Channel.exchange_unbind`; the binding is forgotten."""
        d = self._use(lambda ch: ch.exchange_unbind(destination, source, routing_key,
                                                    arguments, timeout=timeout))
        return d.addCallback(_then, self.host.topology.forget, "xbind", destination,
                             source, routing_key, binding_key(arguments))

    def queue_declare(self, queue: str = "", passive: bool = False, durable: bool = False,
                      exclusive: bool | None = None, auto_delete: bool | None = None,
                      arguments: _Args = None, timeout: float | None = None
                      ) -> Deferred[spec.Queue.DeclareOk]:
        """As `Channel.queue_declare`; recorded unless passive. A server-named queue is
        declared again under a new name after a reconnect (see
        `AMQPService.add_queue_rename_listener`)."""
        if exclusive is None:
            exclusive = not queue
        if auto_delete is None:
            auto_delete = not queue
        kwargs: dict[str, Any] = dict(durable=durable, exclusive=exclusive,
                                      auto_delete=auto_delete, arguments=arguments)
        d = self._use(lambda ch: ch.queue_declare(queue, passive, timeout=timeout, **kwargs))
        if not passive:
            def record(ok: spec.Queue.DeclareOk) -> spec.Queue.DeclareOk:
                self.host.topology.queue(ok.queue, kwargs, server_named=not queue)
                return ok

            d.addCallback(record)
        return d

    def queue_bind(self, queue: str, exchange: str, routing_key: str = "",
                   arguments: _Args = None,
                   timeout: float | None = None) -> Deferred[spec.Queue.BindOk]:
        """As `Channel.queue_bind`; recorded."""
        kwargs: dict[str, Any] = dict(queue=queue, exchange=exchange,
                                      routing_key=routing_key, arguments=arguments)
        d = self._use(lambda ch: ch.queue_bind(timeout=timeout, **kwargs))
        return d.addCallback(_recorded, self.host.topology.queue_binding, kwargs)

    def queue_unbind(self, queue: str, exchange: str, routing_key: str = "",
                     arguments: _Args = None,
                     timeout: float | None = None) -> Deferred[spec.Queue.UnbindOk]:
        """As `Channel.queue_unbind`; the binding is forgotten."""
        d = self._use(lambda ch: ch.queue_unbind(queue, exchange, routing_key, arguments,
                                                 timeout=timeout))
        return d.addCallback(_then, self.host.topology.forget, "qbind", queue, exchange,
                             routing_key, binding_key(arguments))

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False,
                     timeout: float | None = None) -> Deferred[spec.Queue.DeleteOk]:
        """As `Channel.queue_delete`; the queue and its bindings are forgotten."""
        d = self._use(lambda ch: ch.queue_delete(queue, if_unused, if_empty,
                                                 timeout=timeout))
        return d.addCallback(_then, self.host.topology.forget, "queue", queue)

    def queue_purge(self, queue: str,
                    timeout: float | None = None) -> Deferred[spec.Queue.PurgeOk]:
        """As `Channel.queue_purge`."""
        return self._use(lambda ch: ch.queue_purge(queue, timeout=timeout))

    # -- channel state (recorded) ------------------------------------------------------------

    def basic_qos(self, prefetch_count: int = 0, prefetch_size: int = 0,
                  global_qos: bool = False,
                  timeout: float | None = None) -> Deferred[spec.Basic.QosOk]:
        """As `Channel.basic_qos`; restored on reconnect."""
        kwargs: dict[str, Any] = dict(prefetch_count=prefetch_count,
                                      prefetch_size=prefetch_size, global_qos=global_qos)
        d = self._use(lambda ch: ch.basic_qos(timeout=timeout, **kwargs))

        def record(ok: spec.Basic.QosOk) -> spec.Basic.QosOk:
            self._qos = kwargs
            return ok

        return d.addCallback(record)

    def confirm_select(self, timeout: float | None = None) -> Deferred[spec.Confirm.SelectOk]:
        """As `Channel.confirm_select`; restored on reconnect."""
        d = self._use(lambda ch: ch.confirm_select(timeout=timeout))

        def record(ok: spec.Confirm.SelectOk) -> spec.Confirm.SelectOk:
            self._confirm = True
            return ok

        return d.addCallback(record)

    def basic_consume(self, queue: str,
                      on_message_callback: MessageCallback[Message] | None = None,
                      auto_ack: bool = False, exclusive: bool = False,
                      consumer_tag: str | None = None, arguments: _Args = None,
                      timeout: float | None = None, on_cancel: str = "end"
                      ) -> Deferred[RobustConsumer]:
        """As `Channel.basic_consume`, firing with a `RobustConsumer` that is started again
        (same tag) on every new connection. ``on_cancel`` is ``"end"`` or
        ``"reconsume"`` (see `RobustConsumer`)."""
        if on_cancel not in ("end", "reconsume"):
            return fail(UsageError(f"on_cancel {on_cancel!r} is not 'end' or 'reconsume'"))
        try:
            channel = self._current()
        except Exception as exc:
            return fail(exc)
        tag = consumer_tag or f"txpika.{uuid.uuid4().hex}"
        kwargs: dict[str, Any] = dict(auto_ack=auto_ack, exclusive=exclusive,
                                      consumer_tag=tag, arguments=arguments)
        consumer = RobustConsumer(self, queue, on_message_callback, kwargs, on_cancel)

        async def run() -> RobustConsumer:
            await consumer._start(channel)
            self._consumers[tag] = consumer
            return consumer

        d = ensureDeferred(run())
        if timeout is not None:
            d.addTimeout(timeout, self.host.clock)
        return d

    def basic_cancel(self, consumer_tag: str, timeout: float | None = None) -> Deferred[None]:
        """Cancel a consumer for good. Fires with ``None`` once the broker confirmed."""
        consumer = self._consumers.pop(consumer_tag, None)
        if consumer is not None:
            return consumer.cancel()
        return self._use(lambda ch: ch.basic_cancel(consumer_tag, timeout=timeout)
                         ).addCallback(lambda ok: None)

    # -- everything else: the current channel ----------------------------------------------

    def basic_publish(self, exchange: str, routing_key: str, body: bytes,
                      properties: spec.BasicProperties | None = None,
                      mandatory: bool = False,
                      timeout: float | None = None) -> Deferred[None]:
        """As `Channel.basic_publish`; fails at once with `ConnectionRecovering` while
        there is no connection."""
        channel = self._channel
        if channel is None or self._closed or not channel.is_open:  # (the hot path: no _use)
            return self._use(lambda ch: ch.basic_publish(exchange, routing_key, body,
                                                         properties, mandatory, timeout))
        return channel.basic_publish(exchange, routing_key, body, properties, mandatory,
                                     timeout)

    def publish_then(self, resolve: Callable[[None], object],
                     reject: Callable[[BaseException], object], exchange: str,
                     routing_key: str, body: bytes,
                     properties: spec.BasicProperties | None = None,
                     mandatory: bool = False) -> None:
        """As `Channel.publish_then`; ``reject`` gets `ConnectionRecovering` while there is
        no connection."""
        channel = self._channel
        if channel is None or self._closed or not channel.is_open:
            self.basic_publish(exchange, routing_key, body, properties, mandatory).addCallbacks(
                resolve, lambda failure: reject(failure.value))
            return
        channel.publish_then(resolve, reject, exchange, routing_key, body, properties,
                             mandatory)

    def basic_get(self, queue: str, auto_ack: bool = False,
                  timeout: float | None = None) -> Deferred[Message | None]:
        """As `Channel.basic_get`."""
        return self._use(lambda ch: ch.basic_get(queue, auto_ack, timeout=timeout))

    def basic_recover(self, requeue: bool = True,
                      timeout: float | None = None) -> Deferred[spec.Basic.RecoverOk]:
        """As `Channel.basic_recover`."""
        return self._use(lambda ch: ch.basic_recover(requeue, timeout=timeout))

    def tx_select(self, timeout: float | None = None) -> Deferred[spec.Tx.SelectOk]:
        """As `Channel.tx_select` (not restored after a reconnect)."""
        return self._use(lambda ch: ch.tx_select(timeout=timeout))

    def tx_commit(self, timeout: float | None = None) -> Deferred[spec.Tx.CommitOk]:
        """As `Channel.tx_commit`."""
        return self._use(lambda ch: ch.tx_commit(timeout=timeout))

    def tx_rollback(self, timeout: float | None = None) -> Deferred[spec.Tx.RollbackOk]:
        """As `Channel.tx_rollback`."""
        return self._use(lambda ch: ch.tx_rollback(timeout=timeout))

    def close(self) -> Deferred[None]:
        """Close for good: forget its consumers and stop reopening it. Fires with ``None``
        once the broker confirmed (at once if there is no connection)."""
        self._closed = True
        if self._on_close is not None:
            self._on_close(self)
        consumers = list(self._consumers.values())
        self._consumers.clear()
        for consumer in consumers:  # they end with their channel, as if cancelled
            consumer._end(ConsumerCancelled(
                consumer.consumer_tag, "was cancelled by this client (channel closed)"),
                by_client=True)
        channel, self._channel = self._channel, None
        if channel is not None and channel.is_open:
            return channel.close()
        return succeed(None)


def _recorded(result: Any, record: Callable[[dict[str, Any]], None],
              kwargs: dict[str, Any]) -> Any:
    record(kwargs)
    return result


def _then(result: Any, action: Callable[..., None], *args: Any) -> Any:
    action(*args)
    return result
