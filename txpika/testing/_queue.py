"""A queue of the memory broker: ready messages in order, consumers served in turn, TTL,
length limits, and the hand-over of dead messages to the virtual host.

Time is the broker's clock (``Clock.seconds``); a message whose TTL passed is dropped when it
reaches the head of the queue, as RabbitMQ's classic queues do, and timers on the clock
dead-letter it on time even when nobody looks.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from txpika.testing._model import BrokerMessage, Clock, DelayedCall, Entry

__all__ = ["Queue", "QueueConsumer", "QueueHost"]


class QueueHost(Protocol):
    """What a queue needs of its virtual host (`txpika.testing._vhost.VirtualHost`)."""

    @property
    def clock(self) -> Clock:
        """The broker's clock, for the queue's timers (TTL, ``x-expires``)."""

    def now(self) -> float:
        """The broker clock's time, in seconds."""

    def delete_queue(self, queue: Queue) -> int:
        """Delete ``queue`` (auto-delete, ``x-expires``); returns its ready count."""

    def dead_letter(self, queue: Queue, entry: Entry, reason: str) -> None:
        """``entry`` died in ``queue`` for ``reason``: dead-letter it or drop it."""


class QueueConsumer(Protocol):
    """What a queue needs of a consumer (the server channel implements it)."""

    tag: str
    exclusive: bool

    def has_room(self) -> bool:
        """Whether it may take one more delivery now (prefetch)."""

    def deliver(self, queue: Queue, entry: Entry) -> None:
        """Send ``entry`` to the client."""

    def cancel_by_broker(self) -> None:
        """The queue is gone: tell the client (``basic.cancel``)."""


class Queue:
    """One queue. Tests read `name`, `messages`, `consumers`, `unacked` and `arguments`."""

    def __init__(self, vhost: QueueHost, name: str, *, durable: bool, auto_delete: bool,
                 owner: object | None, arguments: Mapping[str, Any]) -> None:
        #: The virtual host it lives in.
        self.vhost = vhost
        #: Its name.
        self.name = name
        #: Declared durable.
        self.durable = durable
        #: Deleted when its last consumer goes.
        self.auto_delete = auto_delete
        #: The server connection of an exclusive queue, else None.
        self.owner = owner
        #: The ``x-`` arguments it was declared with.
        self.arguments: dict[str, Any] = dict(arguments)
        #: The messages waiting to be delivered, head first.
        self.ready: list[Entry] = []
        self._consumers: list[QueueConsumer] = []
        #: Delivered and not yet acked: entry -> consumer tag (None for basic.get).
        self.outstanding: dict[Entry, str | None] = {}
        #: True once deleted (a test may still hold it).
        self.deleted = False
        self._seq = 0
        self._next = 0  # round-robin position among consumers
        self._had_consumer = False
        self._dispatching = False
        self._expiry_call: DelayedCall | None = None
        self._unused_call: DelayedCall | None = None
        args = self.arguments
        #: ``x-message-ttl`` in milliseconds, or ``None``.
        self.message_ttl: int | None = args.get("x-message-ttl")
        #: ``x-max-length``, or ``None``.
        self.max_length: int | None = args.get("x-max-length")
        #: ``x-max-length-bytes``, or ``None``.
        self.max_length_bytes: int | None = args.get("x-max-length-bytes")
        #: ``x-overflow``: ``drop-head``, ``reject-publish`` or ``reject-publish-dlx``.
        self.overflow: str = args.get("x-overflow", "drop-head")
        #: ``x-dead-letter-exchange``, or ``None``.
        self.dead_letter_exchange: str | None = args.get("x-dead-letter-exchange")
        #: ``x-dead-letter-routing-key``, or ``None``.
        self.dead_letter_routing_key: str | None = args.get("x-dead-letter-routing-key")
        #: ``x-expires`` in milliseconds, or ``None``.
        self.expires: int | None = args.get("x-expires")
        self.touch()

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} ready={len(self.ready)} unacked={len(self.outstanding)}>"

    # -- what tests read ---------------------------------------------------------------------

    @property
    def exclusive(self) -> bool:
        """True for a queue that belongs to one connection."""
        return self.owner is not None

    @property
    def messages(self) -> tuple[BrokerMessage, ...]:
        """The messages waiting in the queue (ready, not delivered), head first."""
        self.expire()
        return tuple(entry.message for entry in self.ready)

    @property
    def unacked(self) -> tuple[BrokerMessage, ...]:
        """Messages delivered from this queue and not yet acked, in delivery order."""
        return tuple(entry.message for entry in self.outstanding)

    def unacked_by(self, consumer_tag: str) -> tuple[BrokerMessage, ...]:
        """The unacked deliveries of one consumer."""
        return tuple(e.message for e, tag in self.outstanding.items() if tag == consumer_tag)

    @property
    def consumers(self) -> tuple[str, ...]:
        """The tags of its consumers, in the order they are served."""
        return tuple(c.tag for c in self._consumers)

    @property
    def consumer_objects(self) -> list[QueueConsumer]:
        """The consumers themselves (for the broker's own use)."""
        return self._consumers

    # -- consumers --------------------------------------------------------------------------

    def add_consumer(self, consumer: QueueConsumer) -> None:
        """Serve ``consumer`` too (after the others) and deliver what it has room for."""
        self._consumers.append(consumer)
        self._had_consumer = True
        self._cancel_unused()
        self.dispatch()

    def remove_consumer(self, consumer: QueueConsumer) -> None:
        """Stop serving ``consumer``; an auto-delete queue goes with its last consumer."""
        if consumer in self._consumers:
            self._consumers.remove(consumer)
        if self._consumers or self.deleted:
            return
        if self.auto_delete and self._had_consumer:
            self.vhost.delete_queue(self)
        else:
            self.touch()

    # -- messages in and out ----------------------------------------------------------------

    def new_entry(self, message: BrokerMessage, routing_keys: tuple[str, ...],
                  ttl: int | None) -> Entry:
        """An entry for ``message`` (``ttl``: the message's own expiration, ms)."""
        self._seq += 1
        limits = [t for t in (self.message_ttl, ttl) if t is not None]
        expires_at = self.vhost.now() + min(limits) / 1000 if limits else None
        return Entry(message, self._seq, routing_keys, expires_at)

    def would_reject(self, size: int) -> bool:
        """Whether a publish must be refused (``x-overflow: reject-publish``, full)."""
        if self.overflow not in ("reject-publish", "reject-publish-dlx"):
            return False
        self.expire()
        if self.max_length is not None and len(self.ready) >= self.max_length:
            return True
        return (self.max_length_bytes is not None
                and sum(e.size for e in self.ready) + size > self.max_length_bytes)

    def enqueue(self, entry: Entry) -> None:
        """A routed message: to a waiting consumer, or at the tail (length limits apply)."""
        self.expire()
        if not self.ready and not self._dispatching and self._deliver_now(entry):
            return  # straight to a waiting consumer: its TTL never comes into play
        self.ready.append(entry)
        if self.overflow == "drop-head":
            self._drop_over_limit()
        self.dispatch()
        self.expire()

    def requeue(self, entries: Iterable[Entry]) -> None:
        """Put delivered entries back at their places, marked redelivered."""
        for entry in entries:
            self.outstanding.pop(entry, None)
            if self.deleted:
                continue
            if not entry.message.redelivered:
                entry.message = _redelivered(entry.message)
            bisect.insort(self.ready, entry, key=_seq)
        self.dispatch()

    def settle(self, entry: Entry) -> None:
        """An ack: forget the entry."""
        self.outstanding.pop(entry, None)

    def reject(self, entry: Entry) -> None:
        """A reject or nack without requeue: dead-letter it, if the queue says so."""
        self.outstanding.pop(entry, None)
        self.vhost.dead_letter(self, entry, "rejected")

    def take(self) -> Entry | None:
        """The head entry, taken out for ``basic.get``, or None."""
        self.expire()
        self.touch()
        if not self.ready:
            return None
        entry = self.ready.pop(0)
        self._schedule_expiry()
        return entry

    def purge(self) -> int:
        """Drop the ready messages (not the unacked ones); returns how many."""
        count = len(self.ready)
        self.ready.clear()
        self._schedule_expiry()
        return count

    def _deliver_now(self, entry: Entry) -> bool:
        count = len(self._consumers)
        for step in range(count):
            index = (self._next + step) % count
            consumer = self._consumers[index]
            if consumer.has_room():
                self._next = (index + 1) % count
                consumer.deliver(self, entry)
                return True
        return False

    def dispatch(self) -> None:
        """Deliver ready messages to consumers with room, round-robin."""
        if self._dispatching or self.deleted:
            return
        self._dispatching = True
        try:
            self.expire()
            while self.ready and self._deliver_now(self.ready[0]):
                self.ready.pop(0)
        finally:
            self._dispatching = False
        self._schedule_expiry()

    # -- time --------------------------------------------------------------------------------

    def expire(self) -> None:
        """Dead-letter the expired messages at the head."""
        now = self.vhost.now()
        while self.ready:
            head = self.ready[0]
            if head.expires_at is None or head.expires_at > now:
                break
            self.ready.pop(0)
            self.vhost.dead_letter(self, head, "expired")

    def _schedule_expiry(self) -> None:
        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        self._expiry_call = None
        if self.ready and self.ready[0].expires_at is not None and not self.deleted:
            delay = max(0.0, self.ready[0].expires_at - self.vhost.now())
            self._expiry_call = self.vhost.clock.callLater(delay, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry_call = None
        self.expire()
        self.dispatch()

    def touch(self) -> None:
        """The queue was used: restart its ``x-expires`` countdown (if it has no consumers)."""
        self._cancel_unused()
        if self.expires is not None and not self._consumers and not self.deleted:
            self._unused_call = self.vhost.clock.callLater(self.expires / 1000, self._unused)

    def _cancel_unused(self) -> None:
        if self._unused_call is not None and self._unused_call.active():
            self._unused_call.cancel()
        self._unused_call = None

    def _unused(self) -> None:
        self._unused_call = None
        if not self._consumers and not self.deleted:
            self.vhost.delete_queue(self)

    def _drop_over_limit(self) -> None:
        while self.ready and (
            (self.max_length is not None and len(self.ready) > self.max_length)
            or (self.max_length_bytes is not None
                and sum(e.size for e in self.ready) > self.max_length_bytes)
        ):
            self.vhost.dead_letter(self, self.ready.pop(0), "maxlen")

    def close(self) -> list[QueueConsumer]:
        """The queue is deleted: stop its timers; returns its consumers."""
        self.deleted = True
        self._cancel_unused()
        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        consumers, self._consumers = self._consumers, []
        return consumers


def _seq(entry: Entry) -> int:
    return entry.seq


def _redelivered(message: BrokerMessage) -> BrokerMessage:
    return BrokerMessage(message.body, message.properties, message.exchange,
                         message.routing_key, True)

