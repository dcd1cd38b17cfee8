"""Publisher-confirm bookkeeping of one channel: sequence numbers, confirms, returns.

In confirm mode every publish gets the next sequence number; the broker answers each with
``basic.ack`` or ``basic.nack`` (``multiple`` settles every outstanding number up to the
given one). A mandatory publish that cannot be routed comes back first as ``basic.return``,
which carries no sequence number: `ConfirmBook.match_return` ties it to the oldest
outstanding mandatory publish with the same exchange and routing key, and
`ConfirmBook.take_returned` then reports it as returned instead of acked. No I/O, no clock.
"""

from __future__ import annotations

from collections import deque

from txpika._specbase import Method, Properties
from txpika._tags import TagSet

__all__ = ["ConfirmBook", "Returned"]

#: A returned mandatory publish: the ``basic.return``, its properties and body.
Returned = tuple[Method, Properties, bytes]


class ConfirmBook:
    """The outstanding publishes of one channel in confirm mode."""

    __slots__ = ("mandatory", "next_tag", "returned", "routes", "unconfirmed")

    def __init__(self) -> None:
        self.next_tag = 1
        self.unconfirmed = TagSet()
        # Outstanding mandatory publishes: tag -> route, and route -> tags oldest first.
        self.mandatory: dict[int, tuple[str, str]] = {}
        self.routes: dict[tuple[str, str], deque[int]] = {}
        # Mandatory publishes the broker returned, awaiting their ack or nack.
        self.returned: dict[int, Returned] = {}

    def published(self, exchange: str, routing_key: str, mandatory: bool) -> int:
        """Number the publish just written; returns its sequence number."""
        tag = self.next_tag
        self.next_tag = tag + 1
        self.unconfirmed.add(tag)
        if mandatory:
            route = (exchange, routing_key)
            self.mandatory[tag] = route
            pending = self.routes.get(route)
            if pending is None:
                self.routes[route] = deque((tag,))
            else:
                pending.append(tag)
        return tag

    def confirmed(self, tag: int, multiple: bool) -> list[int] | None:
        """The sequence numbers an ack or nack of ``tag`` settles, oldest first; ``None``
        if ``tag`` was never published (or is settled already): a protocol error."""
        if multiple:
            return self.unconfirmed.pop_through(tag) if tag else self.unconfirmed.pop_all()
        if self.unconfirmed.discard(tag):
            return [tag]
        return None

    def match_return(self, method: Method, properties: Properties, body: bytes) -> bool:
        """Tie a ``basic.return`` to the publish it belongs to; False if none fits.

        The broker returns a mandatory message before it acks that message, but it may ack
        other publishes in between (it acks routed messages only once their queues took
        them). The return is matched to the oldest unconfirmed, not yet returned, mandatory
        publish with the same exchange and routing key, and reported when its ack comes.
        """
        route = (method.exchange, method.routing_key)  # type: ignore[attr-defined]
        pending = self.routes.get(route)
        while pending:
            tag = pending.popleft()
            if tag in self.mandatory and tag not in self.returned:
                self.returned[tag] = (method, properties, body)
                return True
        return False

    def take_returned(self, tags: list[int]) -> tuple[list[int], list[tuple[int, Returned]]]:
        """Split settled ``tags`` into those to report as confirmed and the returned
        mandatory publishes among them (tag and what came back)."""
        if not self.mandatory:
            return tags, []
        kept: list[int] = []
        returned: list[tuple[int, Returned]] = []
        mandatory = self.mandatory
        for tag in tags:
            route = mandatory.pop(tag, None)
            if route is None:
                kept.append(tag)
                continue
            pending = self.routes.get(route)
            if pending is not None:
                while pending and pending[0] not in mandatory:
                    pending.popleft()
                if not pending:
                    del self.routes[route]
            came_back = self.returned.pop(tag, None)
            if came_back is None:
                kept.append(tag)
            else:
                returned.append((tag, came_back))
        return kept, returned
