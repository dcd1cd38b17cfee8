"""What a message is, for both drivers: `txpika.message.Message` (Twisted, Deferreds) and
`txpika.blocking.Message` (results directly) add ``ack``/``nack``/``reject``. No Twisted."""

from __future__ import annotations

from typing import Any

from txpika.errors import UsageError

__all__ = ["MessageBase"]


class MessageBase:
    """A message the broker delivered (``basic.deliver``), fetched (``basic.get-ok``) or
    returned (``basic.return``).

    ``body`` is bytes and ``properties`` a ``BasicProperties``. ``message_count`` is set for
    fetched messages, ``reply_code`` and ``reply_text`` for returned ones.
    """

    __slots__ = (
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
                 auto_ack: bool = False) -> None:
        self.channel = channel
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
        if self.channel is None or self.reply_code is not None:
            raise UsageError("a returned message cannot be acked")
        if self._settled:
            raise UsageError(
                f"delivery {self.delivery_tag} was already settled or consumed with auto_ack")
