"""An ordered set of increasing delivery tags, settled one at a time or up to a bound.

Used twice by the core: for publish sequence numbers awaiting the broker's confirm, and for
deliveries awaiting the client's ack. Tags are added in increasing order; ``discard`` of one
tag and ``pop_through`` of every tag up to a bound are amortised O(1) per tag.
"""

from __future__ import annotations

from collections import deque

__all__ = ["TagSet"]


class TagSet:
    """Outstanding tags, oldest first."""

    __slots__ = ("_gone", "_order")

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._gone: set[int] = set()  # settled tags still in _order

    def __len__(self) -> int:
        return len(self._order) - len(self._gone)

    def __bool__(self) -> bool:
        return len(self._order) > len(self._gone)

    def __contains__(self, tag: int) -> bool:
        order = self._order
        if not order or tag < order[0] or tag > order[-1] or tag in self._gone:
            return False
        if tag == order[0] or tag == order[-1]:
            return True
        # Tags are increasing but may have gaps: binary search the deque.
        low, high = 0, len(order) - 1
        while low <= high:
            mid = (low + high) // 2
            value = order[mid]
            if value == tag:
                return True
            if value < tag:
                low = mid + 1
            else:
                high = mid - 1
        return False

    def add(self, tag: int) -> None:
        """Add ``tag``, which must be larger than every tag added before."""
        order = self._order
        if order and tag <= order[-1]:
            raise ValueError(f"tag {tag} is not above {order[-1]}")
        order.append(tag)

    def discard(self, tag: int) -> bool:
        """Settle one tag; False if it was not outstanding."""
        order = self._order
        if order and order[0] == tag:  # the usual case: the oldest (never in _gone)
            order.popleft()
            if self._gone:
                self._trim()
            return True
        if tag not in self:
            return False
        if tag == order[0]:
            order.popleft()
            self._trim()
        else:
            self._gone.add(tag)
        return True

    def pop_through(self, bound: int) -> list[int]:
        """Settle and return every outstanding tag ``<= bound``, oldest first."""
        order = self._order
        gone = self._gone
        out: list[int] = []
        while order and order[0] <= bound:
            tag = order.popleft()
            if gone and tag in gone:
                gone.discard(tag)
            else:
                out.append(tag)
        return out

    def pop_all(self) -> list[int]:
        """Settle and return every outstanding tag."""
        out = [tag for tag in self._order if tag not in self._gone]
        self._order.clear()
        self._gone.clear()
        return out

    def _trim(self) -> None:
        order = self._order
        gone = self._gone
        while order and order[0] in gone:
            gone.discard(order.popleft())
