"""What a message is, for every adapter: `MessageBase`, built by the channel book.

The Twisted `txpika.channel.Message` (Deferreds), the blocking adapter's message (results
directly) and the asyncio adapter's add ``ack``/``nack``/``reject`` on top. No I/O library.
"""

from __future__ import annotations

from typing import Any, Protocol

from txpika.errors import UsageError

__all__ = ["MessageBase", "Settler"]


class Settler(Protocol):
    """What settles a delivery: the channel book it came from."""

    def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        """Send ``basic.ack``; raises `UsageError` (nothing sent) if it cannot be."""

    def settle(self, how: str, delivery_tag: int, multiple: bool = False,
               requeue: bool = True) -> None:
        """Send ``basic.ack``/``nack``/``reject``; raises `UsageError` (nothing sent) if the
        delivery cannot be settled."""


class MessageBase:
    """A message the broker delivered (``basic.deliver``), fetched (``basic.get-ok``) or
    returned (``basic.return``).

    ``body`` is bytes and ``properties`` a ``BasicProperties``. ``message_count`` is set for
    fetched messages, ``reply_code`` and ``reply_text`` for returned ones. ``channel`` is
    the adapter's channel it came on (``None`` for a returned message).
    """

    __slots__ = (
        "_book",
        "_settled",
        "body",
        "channel",
        "consumer_tag",
        "delivery_tag",
        "exchange",
        "message_count",
        "properties",
        "redelivered",
        "reply_code",
        "reply_text",
        "routing_key",
    )

    def __init__(self, channel: Any, method: Any, properties: Any, body: bytes,
                 auto_ack: bool = False, book: Settler | None = None) -> None:
        self.channel = channel
        self._book = book
        self.properties = properties
        self.body = body
        self.exchange: str = method.exchange
        self.routing_key: str = method.routing_key
        self.delivery_tag: int = getattr(method, "delivery_tag", 0)
        self.redelivered: bool = getattr(method, "redelivered", False)
        self.consumer_tag: str | None = getattr(method, "consumer_tag", None)
        self.message_count: int | None = getattr(method, "message_count", None)
        self.reply_code: int | None = getattr(method, "reply_code", None)
        self.reply_text: str | None = getattr(method, "reply_text", None)
        # Returned messages and auto-acked deliveries cannot be settled.
        self._settled = auto_ack or self.reply_code is not None

    @classmethod
    def _from_delivery(cls, channel: Any, book: Settler, method: Any, properties: Any,
                       body: bytes, auto_ack: bool) -> Any:
        """A ``basic.deliver``: the hot path, without the generic lookups of __init__."""
        self = cls.__new__(cls)
        self.channel = channel
        self._book = book
        self.properties = properties
        self.body = body
        self.exchange = method.exchange
        self.routing_key = method.routing_key
        self.delivery_tag = method.delivery_tag
        self.redelivered = method.redelivered
        self.consumer_tag = method.consumer_tag
        self.message_count = None
        self.reply_code = None
        self.reply_text = None
        self._settled = auto_ack
        return self

    def __repr__(self) -> str:
        return (
            f"<Message delivery_tag={self.delivery_tag} exchange={self.exchange!r} "
            f"routing_key={self.routing_key!r} body={len(self.body)} bytes>"
        )

    @property
    def settled(self) -> bool:
        """True once acked, nacked or rejected (or if it never needed an ack)."""
        return self._settled

    def _may_settle(self) -> None:
        """Raise `UsageError` (nothing is sent) if this message cannot be settled now."""
        if self._book is None or self.reply_code is not None:
            raise UsageError("a returned message cannot be acked")
        if self._settled:
            raise UsageError(
                f"delivery {self.delivery_tag} was already settled or consumed with auto_ack")

    def _settle(self, how: str, multiple: bool = False, requeue: bool = True) -> None:
        """Settle through the channel book; raises `UsageError` if it cannot be."""
        book = self._book
        if how == "ack" and book is not None and not self._settled:  # the usual case
            book.ack(self.delivery_tag, multiple)
            self._settled = True
            return
        self._may_settle()
        self._book.settle(how, self.delivery_tag, multiple, requeue)  # type: ignore[union-attr]
        self._settled = True
