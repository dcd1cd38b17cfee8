"""Publishing on a blocking channel: one message, a pipelined batch, and the waits for
the broker's confirms and for flow control.

`Publishing` is a base class of `txpika.blocking.BlockingChannel`; it reaches the channel
book (`txpika._chanbook.ChannelBook`) and the connection through the attributes the
channel sets, and holds the connection's lock while it hands a publish to the book and
writes it, never while it waits for a confirm or for the broker to let publishers go on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from txpika import spec
from txpika._chanbook import ChannelBook
from txpika.blocking._connection import ConnectionBase
from txpika.errors import FlowControlError, OutcomeUnknownError

__all__ = ["Publishing"]

#: publish_batch writes when this many pieces of output are queued, and at its end
_BATCH_CHUNKS = 64


class _Confirm:
    """The outcome of one confirmed publish: ``None`` (acked) or the error, once known."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None

    def ok(self, value: object) -> None:
        self.done = True

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done = True


class Publishing:
    """`basic_publish` and `publish_batch` of `txpika.blocking.BlockingChannel`."""

    # Set by BlockingChannel.__init__.
    connection: ConnectionBase
    _book: ChannelBook

    def basic_publish(self, exchange: str, routing_key: str, body: bytes,
                      properties: spec.BasicProperties | None = None,
                      mandatory: bool = False, timeout: float | None = None) -> None:
        """Publish a message.

        Without confirms it returns once the frames are written (the socket applies
        backpressure). In confirm mode it returns on the broker's ack, or raises
        `txpika.errors.NackError`, `txpika.errors.UnroutableError` or
        `txpika.errors.OutcomeUnknownError`. While the broker blocks publishers it waits
        (flow policy ``"wait"``) or raises `txpika.errors.FlowControlError` (``"raise"``).
        """
        conn = self.connection
        book = self._book
        deadline = None if timeout is None else time.monotonic() + timeout
        if not book.flow_active:
            self._wait_for_flow(deadline)
        with conn._lock:
            conn._check()
            tag = book.publish(exchange, routing_key, body, properties, mandatory)
            if tag:
                outcome = _Confirm()
                book.expect_confirm(tag, outcome.ok, outcome.fail)
            conn._flush(deadline)
        if not tag:
            return
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            conn._wait(lambda: outcome.done, remaining)
        except TimeoutError:
            with conn._lock:
                book.forget_confirm(tag)
            raise
        if outcome.error is not None:
            raise outcome.error

    def publish_batch(self, messages: Iterable[tuple[Any, ...]],
                      timeout: float | None = None) -> list[BaseException | None]:
        """Publish many messages, pipelined; returns one outcome per message, in order:
        ``None`` for success (acked, in confirm mode) or the exception for that message.

        Each message is ``(exchange, routing_key, body)`` optionally followed by
        ``properties`` and ``mandatory``. In confirm mode it waits for every confirm
        (``timeout`` bounds the whole batch), so a script makes one round trip for the
        batch, not one per message.
        """
        conn = self.connection
        book = self._book
        core = book.core
        deadline = None if timeout is None else time.monotonic() + timeout
        outcomes: list[_Confirm | None] = []
        tags: list[int] = []
        try:
            for message in messages:
                exchange, routing_key, body, *rest = message
                properties = rest[0] if rest else None
                mandatory = bool(rest[1]) if len(rest) > 1 else False
                if not book.flow_active:
                    with conn._lock:
                        conn._flush(deadline)
                    self._wait_for_flow(deadline)
                with conn._lock:
                    conn._check()
                    tag = book.publish(exchange, routing_key, body, properties, mandatory)
                    outcome = None
                    if tag:
                        outcome = _Confirm()
                        book.expect_confirm(tag, outcome.ok, outcome.fail)
                        tags.append(tag)
                    if core.pending_chunks >= _BATCH_CHUNKS:
                        conn._flush(deadline)
                outcomes.append(outcome)
        finally:
            with conn._lock:
                conn._flush(deadline)
        waiting = [o for o in outcomes if o is not None]
        if waiting:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                conn._wait(lambda: all(o.done for o in waiting), remaining)
            except TimeoutError:
                with conn._lock:
                    for tag in tags:
                        book.forget_confirm(tag)
                raise
        return [None if o is None else (o.error if o.done else OutcomeUnknownError(
            "connection lost")) for o in outcomes]

    def _wait_for_flow(self, deadline: float | None) -> None:
        conn = self.connection
        book = self._book
        if book.flow_active:
            return
        if conn.parameters.flow_policy == "raise":
            raise FlowControlError(
                f"the broker stopped publishers ({book.core.blocked_reason or 'flow'})")
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        conn._wait(lambda: book.flow_active or book.error is not None, remaining)
        book.check_open()
