"""The broker's side of one channel: every class-40..90 method a client sends, answered as
RabbitMQ answers it, with consumers, prefetch, unacked deliveries, confirms and
transactions.

A handler raises `txpika.testing._model.Fault` to refuse; the connection turns that into
``channel.close`` or ``connection.close``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from txpika import errors, spec
from txpika.spec import BasicProperties
from txpika.testing._model import Entry, Fault, not_implemented, server_name
from txpika.testing._queue import Queue
from txpika.testing._vhost import Binding, VirtualHost

__all__ = ["ChannelConnection", "ServerChannel", "ServerConsumer"]


class ChannelConnection(Protocol):
    """What a channel needs of its connection (`txpika.testing._server.ServerConnection`).

    The channel also hands it to its virtual host as the owner of exclusive queues."""

    @property
    def vhost(self) -> VirtualHost:
        """The virtual host the connection opened."""

    @property
    def is_open(self) -> bool:
        """True between connection.open-ok and any close."""

    def send_method(self, channel: int, method: Any) -> None:
        """Queue a method frame for the client."""

    def send_content(self, channel: int, method: Any, properties: Any, body: bytes) -> None:
        """Queue a method with content (header and body frames) for the client."""


class ServerConsumer:
    """A consumer as a queue sees it (`txpika.testing._queue.QueueConsumer`)."""

    def __init__(self, channel: ServerChannel, queue: Queue, tag: str, no_ack: bool,
                 exclusive: bool, prefetch: int) -> None:
        self.channel = channel
        self.queue = queue
        self.tag = tag
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.unacked = 0

    def has_room(self) -> bool:
        channel = self.channel
        if channel.closing or not channel.conn.is_open:
            return False
        if self.no_ack:
            return True
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        return not channel.global_prefetch or channel.unacked_by_consumers < channel.global_prefetch

    def deliver(self, queue: Queue, entry: Entry) -> None:
        self.channel.deliver(self, queue, entry)

    def cancel_by_broker(self) -> None:
        self.channel.cancelled_by_broker(self)


class _Delivery:
    __slots__ = ("consumer", "entry", "queue")

    def __init__(self, queue: Queue, entry: Entry, consumer: ServerConsumer | None) -> None:
        self.queue = queue
        self.entry = entry
        self.consumer = consumer


class ServerChannel:
    """One open channel of a `txpika.testing._server.ServerConnection`."""

    def __init__(self, conn: ChannelConnection, number: int) -> None:
        self.conn = conn
        self.number = number
        self.vhost = conn.vhost
        #: True after the broker sent channel.close, until the client's close-ok.
        self.closing = False
        self.confirm = False
        self._publish_seq = 0
        #: Confirms not yet written: (delivery tag, ack?), coalesced by `flush_confirms`.
        self._confirms: list[tuple[int, bool]] = []
        self.tx = False
        self._tx_ops: list[Callable[[], None]] = []
        self._tx_acked: set[int] = set()
        self.prefetch = 0
        self.global_prefetch = 0
        self.consumers: dict[str, ServerConsumer] = {}
        self.unacked: dict[int, _Delivery] = {}
        self.unacked_by_consumers = 0
        self._delivery_seq = 0
        self._handlers: dict[type[Any], Callable[[Any], Any]] = {
            spec.Exchange.Declare: self._exchange_declare,
            spec.Exchange.Delete: self._exchange_delete,
            spec.Exchange.Bind: self._exchange_bind,
            spec.Exchange.Unbind: self._exchange_unbind,
            spec.Queue.Declare: self._queue_declare,
            spec.Queue.Bind: self._queue_bind,
            spec.Queue.Unbind: self._queue_unbind,
            spec.Queue.Purge: self._queue_purge,
            spec.Queue.Delete: self._queue_delete,
            spec.Basic.Qos: self._basic_qos,
            spec.Basic.Consume: self._basic_consume,
            spec.Basic.Cancel: self._basic_cancel,
            spec.Basic.Get: self._basic_get,
            spec.Basic.Ack: self._basic_ack,
            spec.Basic.Nack: self._basic_nack,
            spec.Basic.Reject: self._basic_reject,
            spec.Basic.Recover: self._basic_recover,
            spec.Basic.RecoverAsync: self._basic_recover,
            spec.Confirm.Select: self._confirm_select,
            spec.Tx.Select: self._tx_select,
            spec.Tx.Commit: self._tx_commit,
            spec.Tx.Rollback: self._tx_rollback,
            spec.Channel.Flow: self._channel_flow,
            spec.Access.Request: lambda m: spec.Access.RequestOk(1),
        }

    # -- entry points ------------------------------------------------------------------------

    def handle(self, method: Any) -> None:
        """A method without content. Raises `Fault` to refuse it."""
        handler = self._handlers.get(type(method))
        if handler is None:
            raise Fault(errors.COMMAND_INVALID, f"unimplemented method {method.NAME}",
                        method.CLASS_ID, method.METHOD_ID)
        reply = handler(method)
        if reply is not None and not getattr(method, "nowait", False):
            self.conn.send_method(self.number, reply)

    def publish(self, method: spec.Basic.Publish, properties: BasicProperties,
                body: bytes) -> None:
        """A ``basic.publish`` with its content."""
        if method.immediate:
            raise Fault(errors.NOT_IMPLEMENTED, "immediate=true")
        if method.exchange:
            self.vhost.exchange(method.exchange)  # 404 now, even in a transaction
        if self.tx:
            self._tx_ops.append(lambda: self._route(method, properties, body))
            return
        self._route(method, properties, body)

    def _route(self, method: spec.Basic.Publish, properties: BasicProperties,
               body: bytes) -> None:
        if self.confirm:
            self._publish_seq += 1
        routed, rejected = self.vhost.publish(method.exchange, method.routing_key, properties,
                                              body)
        if not routed and method.mandatory:
            self.conn.send_content(self.number, spec.Basic.Return(
                errors.NO_ROUTE, "NO_ROUTE", method.exchange, method.routing_key),
                properties, body)
        if self.confirm:
            self._confirms.append((self._publish_seq, not rejected))

    def flush_confirms(self) -> None:
        """Write pending confirms: runs of acks as one ``multiple`` ack."""
        confirms, self._confirms = self._confirms, []
        run_end = 0
        for tag, ok in confirms:
            if ok:
                run_end = tag
                continue
            if run_end:
                self._send_ack(run_end)
                run_end = 0
            self.conn.send_method(self.number, spec.Basic.Nack(tag, False, False))
        if run_end:
            self._send_ack(run_end)

    def _send_ack(self, tag: int) -> None:
        self.conn.send_method(self.number, spec.Basic.Ack(tag, True))

    @property
    def has_confirms(self) -> bool:
        return bool(self._confirms)

    # -- deliveries --------------------------------------------------------------------------

    def deliver(self, consumer: ServerConsumer, queue: Queue, entry: Entry) -> None:
        self._delivery_seq += 1
        tag = self._delivery_seq
        if not consumer.no_ack:
            self._track(tag, queue, entry, consumer)
        message = entry.message
        self.conn.send_content(self.number, spec.Basic.Deliver(
            consumer.tag, tag, message.redelivered, message.exchange, message.routing_key),
            message.properties, message.body)

    def _track(self, tag: int, queue: Queue, entry: Entry,
               consumer: ServerConsumer | None) -> None:
        self.unacked[tag] = _Delivery(queue, entry, consumer)
        queue.outstanding[entry] = consumer.tag if consumer is not None else None
        if consumer is not None:
            consumer.unacked += 1
            self.unacked_by_consumers += 1

    def _untrack(self, tag: int) -> _Delivery:
        delivery = self.unacked.pop(tag)
        if delivery.consumer is not None:
            delivery.consumer.unacked -= 1
            self.unacked_by_consumers -= 1
        return delivery

    def cancelled_by_broker(self, consumer: ServerConsumer) -> None:
        if self.consumers.pop(consumer.tag, None) is not None and not self.closing:
            self.conn.send_method(self.number, spec.Basic.Cancel(consumer.tag, True))

    def _dispatch_all(self) -> None:
        for queue in {c.queue: None for c in self.consumers.values()}:
            queue.dispatch()

    # -- exchanges ---------------------------------------------------------------------------

    def _exchange_declare(self, m: spec.Exchange.Declare) -> Any:
        self.vhost.declare_exchange(m.exchange, m.type, passive=m.passive, durable=m.durable,
                                    auto_delete=m.auto_delete, internal=m.internal,
                                    arguments=m.arguments or {})
        return spec.Exchange.DeclareOk()

    def _exchange_delete(self, m: spec.Exchange.Delete) -> Any:
        self.vhost.delete_exchange(m.exchange, m.if_unused)
        return spec.Exchange.DeleteOk()

    def _exchange_bind(self, m: spec.Exchange.Bind) -> Any:
        self.vhost.exchange(m.destination)
        self.vhost.bind(Binding(m.source, m.destination, "exchange", m.routing_key,
                                m.arguments or {}))
        return spec.Exchange.BindOk()

    def _exchange_unbind(self, m: spec.Exchange.Unbind) -> Any:
        self.vhost.unbind(Binding(m.source, m.destination, "exchange", m.routing_key,
                                  m.arguments or {}))
        return spec.Exchange.UnbindOk()

    # -- queues ------------------------------------------------------------------------------

    def _queue_declare(self, m: spec.Queue.Declare) -> Any:
        queue = self.vhost.declare_queue(
            self.conn, m.queue, passive=m.passive, durable=m.durable, exclusive=m.exclusive,
            auto_delete=m.auto_delete, arguments=m.arguments or {})
        queue.expire()
        return spec.Queue.DeclareOk(queue.name, len(queue.ready), len(queue.consumers))

    def _queue_bind(self, m: spec.Queue.Bind) -> Any:
        self.vhost.queue(m.queue, self.conn)
        self.vhost.bind(Binding(m.exchange, m.queue, "queue", m.routing_key, m.arguments or {}))
        return spec.Queue.BindOk()

    def _queue_unbind(self, m: spec.Queue.Unbind) -> Any:
        if m.queue in self.vhost.queues:
            self.vhost.queue(m.queue, self.conn)
        if m.exchange == "":
            self.vhost.exchange("")
        self.vhost.unbind(Binding(m.exchange, m.queue, "queue", m.routing_key,
                                  m.arguments or {}))
        return spec.Queue.UnbindOk()

    def _queue_purge(self, m: spec.Queue.Purge) -> Any:
        return spec.Queue.PurgeOk(self.vhost.queue(m.queue, self.conn).purge())

    def _queue_delete(self, m: spec.Queue.Delete) -> Any:
        if m.queue not in self.vhost.queues:
            return spec.Queue.DeleteOk(0)
        queue = self.vhost.queue(m.queue, self.conn)
        where = f"queue '{queue.name}' in vhost '{self.vhost.name}'"
        if m.if_unused and queue.consumers:
            raise Fault(errors.PRECONDITION_FAILED, f"{where} in use")
        queue.expire()
        if m.if_empty and queue.ready:
            raise Fault(errors.PRECONDITION_FAILED, f"{where} not empty")
        return spec.Queue.DeleteOk(self.vhost.delete_queue(queue))

    # -- basic -------------------------------------------------------------------------------

    def _basic_qos(self, m: spec.Basic.Qos) -> Any:
        if m.prefetch_size:
            raise Fault(errors.NOT_IMPLEMENTED, f"prefetch_size!=0 ({m.prefetch_size})")
        if m.global_:
            self.global_prefetch = m.prefetch_count
        else:
            self.prefetch = m.prefetch_count
        self.conn.send_method(self.number, spec.Basic.QosOk())
        self._dispatch_all()
        return None

    def _basic_consume(self, m: spec.Basic.Consume) -> Any:
        if m.queue == "amq.rabbitmq.reply-to":
            raise not_implemented("direct reply-to (amq.rabbitmq.reply-to)")
        for key in ("x-priority", "x-stream-offset"):
            if key in (m.arguments or {}):
                raise not_implemented(f"the consumer argument '{key}'")
        queue = self.vhost.queue(m.queue, self.conn)
        tag = m.consumer_tag or server_name("amq.ctag-")
        if tag in self.consumers:
            raise Fault(errors.NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'",
                        m.CLASS_ID, m.METHOD_ID)
        others = queue.consumer_objects
        if others and (m.exclusive or any(c.exclusive for c in others)):
            raise Fault(errors.ACCESS_REFUSED,
                        f"queue '{queue.name}' in vhost '{self.vhost.name}' in exclusive use")
        consumer = ServerConsumer(self, queue, tag, m.no_ack, m.exclusive, self.prefetch)
        self.consumers[tag] = consumer
        if not m.nowait:
            self.conn.send_method(self.number, spec.Basic.ConsumeOk(tag))
        queue.add_consumer(consumer)  # deliveries follow consume-ok
        return None

    def _basic_cancel(self, m: spec.Basic.Cancel) -> Any:
        consumer = self.consumers.pop(m.consumer_tag, None)
        if not m.nowait:
            self.conn.send_method(self.number, spec.Basic.CancelOk(m.consumer_tag))
        if consumer is not None:
            consumer.queue.remove_consumer(consumer)
        return None

    def _basic_get(self, m: spec.Basic.Get) -> Any:
        queue = self.vhost.queue(m.queue, self.conn)
        entry = queue.take()
        if entry is None:
            return spec.Basic.GetEmpty("")
        self._delivery_seq += 1
        tag = self._delivery_seq
        if not m.no_ack:
            self._track(tag, queue, entry, None)
        message = entry.message
        self.conn.send_content(self.number, spec.Basic.GetOk(
            tag, message.redelivered, message.exchange, message.routing_key, len(queue.ready)),
            message.properties, message.body)
        return None

    def _tags(self, tag: int, multiple: bool) -> list[int]:
        if tag and (tag not in self.unacked or tag in self._tx_acked):
            raise Fault(errors.PRECONDITION_FAILED, f"unknown delivery tag {tag}")
        if not multiple:
            return [tag]
        return [t for t in self.unacked if (t <= tag or not tag) and t not in self._tx_acked]

    def _settle(self, tags: list[int], outcome: str) -> None:
        if self.tx:
            self._tx_acked.update(tags)
            self._tx_ops.append(lambda: self._apply(tags, outcome))
            return
        self._apply(tags, outcome)

    def _apply(self, tags: list[int], outcome: str) -> None:
        requeue: dict[Queue, list[Entry]] = {}
        for tag in tags:
            self._tx_acked.discard(tag)
            if tag not in self.unacked:
                continue
            delivery = self._untrack(tag)
            if outcome == "ack":
                delivery.queue.settle(delivery.entry)
            elif outcome == "requeue":
                requeue.setdefault(delivery.queue, []).append(delivery.entry)
            else:
                delivery.queue.reject(delivery.entry)
        for queue, entries in requeue.items():
            queue.requeue(entries)
        self._dispatch_all()

    def _basic_ack(self, m: spec.Basic.Ack) -> Any:
        self._settle(self._tags(m.delivery_tag, m.multiple), "ack")

    def _basic_nack(self, m: spec.Basic.Nack) -> Any:
        self._settle(self._tags(m.delivery_tag, m.multiple),
                     "requeue" if m.requeue else "reject")

    def _basic_reject(self, m: spec.Basic.Reject) -> Any:
        self._settle(self._tags(m.delivery_tag, False), "requeue" if m.requeue else "reject")

    def _basic_recover(self, m: Any) -> Any:
        if not m.requeue:
            raise Fault(errors.NOT_IMPLEMENTED, "requeue=false")
        self._apply(list(self.unacked), "requeue")
        return spec.Basic.RecoverOk() if type(m) is spec.Basic.Recover else None

    # -- modes -------------------------------------------------------------------------------

    def _confirm_select(self, m: spec.Confirm.Select) -> Any:
        if self.tx:
            raise Fault(errors.PRECONDITION_FAILED, "cannot switch from tx to confirm mode")
        self.confirm = True
        return spec.Confirm.SelectOk()

    def _tx_select(self, m: spec.Tx.Select) -> Any:
        if self.confirm:
            raise Fault(errors.PRECONDITION_FAILED, "cannot switch from confirm to tx mode")
        self.tx = True
        return spec.Tx.SelectOk()

    def _tx_commit(self, m: spec.Tx.Commit) -> Any:
        if not self.tx:
            raise Fault(errors.PRECONDITION_FAILED, "channel is not transactional")
        ops, self._tx_ops = self._tx_ops, []
        for op in ops:
            op()
        return spec.Tx.CommitOk()

    def _tx_rollback(self, m: spec.Tx.Rollback) -> Any:
        if not self.tx:
            raise Fault(errors.PRECONDITION_FAILED, "channel is not transactional")
        self._tx_ops.clear()
        self._tx_acked.clear()
        return spec.Tx.RollbackOk()

    def _channel_flow(self, m: spec.Channel.Flow) -> Any:
        if not m.active:
            raise Fault(errors.NOT_IMPLEMENTED, "active=false for channel.flow")
        return spec.Channel.FlowOk(True)

    # -- the end -----------------------------------------------------------------------------

    def teardown(self) -> None:
        """The channel is closing: its consumers go, its unacked messages are requeued."""
        self._tx_ops.clear()
        self._tx_acked.clear()
        self._confirms.clear()
        consumers, self.consumers = self.consumers, {}
        for consumer in consumers.values():
            consumer.queue.remove_consumer(consumer)
        self._apply(list(self.unacked), "requeue")
