"""Settling a message with Deferreds: the base of the Twisted `txpika.Message`.

`txpika.channel.Message` (exported as ``txpika.Message``) is this class with its
``channel`` typed as the Twisted `txpika.channel.Channel`.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed

from txpika._delivery import MessageBase

__all__ = ["DeferredSettling"]


class DeferredSettling(MessageBase):
    """A message whose ``ack``, ``nack`` and ``reject`` return Deferreds.

    ``body`` is bytes and ``properties`` a ``BasicProperties``. ``message_count`` is set for
    fetched messages, ``reply_code`` and ``reply_text`` for returned ones. Not thread-safe:
    use it from the reactor thread.
    """

    __slots__ = ()

    def ack(self, multiple: bool = False) -> Deferred[None]:
        """Acknowledge this message (with ``multiple``, every earlier one on the channel too).

        Fires with ``None`` once written. Fails with `txpika.errors.UsageError` if the
        message was settled before, was consumed with ``auto_ack``, or its channel is
        closed (nothing is sent then, so the channel is not killed by a 406).
        """
        book = self._book
        try:
            if book is not None and not self._settled:  # the usual case, in fewer steps
                book.ack(self.delivery_tag, multiple)
                self._settled = True
            else:
                self._settle("ack", multiple)
        except Exception as exc:
            return fail(exc)
        return succeed(None)

    def nack(self, requeue: bool = True, multiple: bool = False) -> Deferred[None]:
        """Negatively acknowledge this message; fails as `ack` does."""
        try:
            self._settle("nack", multiple, requeue)
        except Exception as exc:
            return fail(exc)
        return succeed(None)

    def reject(self, requeue: bool = True) -> Deferred[None]:
        """Reject this message; fails as `ack` does."""
        try:
            self._settle("reject", False, requeue)
        except Exception as exc:
            return fail(exc)
        return succeed(None)
