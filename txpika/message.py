"""`Message`: a delivered, fetched or returned message, with ``ack``/``nack``/``reject``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed

from txpika.errors import UsageError

if TYPE_CHECKING:
    from txpika.channel import Channel

__all__ = ["Message"]


class Message:
    """A message the broker delivered (``basic.deliver``), fetched (``basic.get-ok``) or
    returned (``basic.return``).

    ``body`` is bytes and ``properties`` a ``BasicProperties``. ``message_count`` is set for
    fetched messages, ``reply_code`` and ``reply_text`` for returned ones. Not thread-safe:
    use it from the reactor thread.
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

    def __init__(
        self,
        channel: Channel | None,
        method: Any,
        properties: Any,
        body: bytes,
        *,
        auto_ack: bool = False,
    ) -> None:
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

    @classmethod
    def _delivered(cls, channel: Channel, method: Any, properties: Any, body: bytes,
                   auto_ack: bool) -> Message:
        """A ``basic.deliver``: the hot path, without the generic lookups of __init__."""
        self = cls.__new__(cls)
        self.channel = channel
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

    def ack(self, multiple: bool = False) -> Deferred[None]:
        """Acknowledge this message (with ``multiple``, every earlier one on the channel too).

        Fires with ``None`` once written. Fails with `txpika.errors.UsageError` if the
        message was settled before, was consumed with ``auto_ack``, or its channel is
        closed (nothing is sent then, so the channel is not killed by a 406).
        """
        return self._settle("ack", multiple=multiple)

    def nack(self, requeue: bool = True, multiple: bool = False) -> Deferred[None]:
        """Negatively acknowledge this message; fails as `ack` does."""
        return self._settle("nack", requeue=requeue, multiple=multiple)

    def reject(self, requeue: bool = True) -> Deferred[None]:
        """Reject this message; fails as `ack` does."""
        return self._settle("reject", requeue=requeue)

    def _settle(self, how: str, **kwargs: Any) -> Deferred[None]:
        if self.channel is None or self.reply_code is not None:
            return fail(UsageError("a returned message cannot be acked"))
        if self._settled:
            return fail(UsageError(
                f"delivery {self.delivery_tag} was already settled or consumed with auto_ack"
            ))
        try:
            self.channel._settle(how, self.delivery_tag, **kwargs)
        except Exception as exc:
            return fail(exc)
        self._settled = True
        return succeed(None)
