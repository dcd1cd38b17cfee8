"""`Message`: a delivered, fetched or returned message, with ``ack``/``nack``/``reject``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed

from txpika._delivery import MessageBase

if TYPE_CHECKING:
    from txpika.channel import Channel

__all__ = ["Message"]


class Message(MessageBase):
    """A message the broker delivered (``basic.deliver``), fetched (``basic.get-ok``) or
    returned (``basic.return``).

    ``body`` is bytes and ``properties`` a ``BasicProperties``. ``message_count`` is set for
    fetched messages, ``reply_code`` and ``reply_text`` for returned ones. Not thread-safe:
    use it from the reactor thread.
    """

    __slots__ = ()

    channel: Channel | None

    def __init__(self, channel: Channel | None, method: Any, properties: Any, body: bytes,
                 *, auto_ack: bool = False) -> None:
        super().__init__(channel, method, properties, body, auto_ack)

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
        try:
            self._may_settle()
            self.channel._settle(how, self.delivery_tag, **kwargs)  # type: ignore[union-attr]
        except Exception as exc:
            return fail(exc)
        self._settled = True
        return succeed(None)
