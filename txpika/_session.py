"""The session: one connection as every adapter sees it, and the router of its events.

A `Session` owns the sans-IO core of a connection and the `txpika._chanbook.ChannelBook`
of each of its channels. An adapter feeds the core the bytes it reads, then calls
`Session.dispatch`, which pulls the core's events one at a time and routes each to the
book of its channel, or, for the connection as a whole, to the callbacks the adapter
gave: opened, closed (once, with the error that ended it), blocked or unblocked, secret
updated, message returned. Building the core from `txpika.parameters.ConnectionParameters`
is here too (`core_for`), for every adapter alike. No I/O library, no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from txpika import events as ev
from txpika import spec
from txpika._chanbook import ChannelBook, Log, Reject, Resolve
from txpika._delivery import MessageBase
from txpika._specbase import Dialect
from txpika.connection import NEED_DATA, Connection
from txpika.parameters import ConnectionParameters

__all__ = ["CoreFacts", "Session", "core_for", "dialect_for"]

Owner = TypeVar("Owner")


def dialect_for(name: str) -> Dialect:
    """The dialect ``"0-9-1"`` or ``"0-8"`` (whose spec module is imported only then)."""
    if name == "0-8":
        from txpika import spec_0_8  # large: loaded only when asked for

        return spec_0_8.DIALECT
    return spec.DIALECT


def core_for(parameters: ConnectionParameters) -> Connection:
    """A sans-IO core for ``parameters``."""
    p = parameters
    return Connection(
        dialect=dialect_for(p.protocol), credentials=p.credentials,
        virtual_host=p.virtual_host, channel_max=p.channel_max, frame_max=p.frame_max,
        heartbeat=p.heartbeat, locale=p.locale, client_properties=p.client_properties,
        connection_name=p.connection_name, max_message_size=p.max_message_size)


class CoreFacts:
    """What every adapter's connection tells about itself, read from its sans-IO core
    (``_core``, set by the adapter)."""

    _core: Connection

    @property
    def is_open(self) -> bool:
        """True while the connection is open and not closing."""
        return self._core.is_open

    @property
    def is_blocked(self) -> bool:
        """True while the broker blocks publishers (``connection.blocked``)."""
        return self._core.blocked

    @property
    def blocked_reason(self) -> str:
        """The broker's reason for the current block, or ``""``."""
        return self._core.blocked_reason

    @property
    def server_properties(self) -> dict[str, Any]:
        """What the broker said about itself in ``connection.start``."""
        return dict(self._core.server_properties)

    @property
    def dialect(self) -> str:
        """``"0-9-1"`` or ``"0-8"``."""
        return self._core.dialect.name


def _ignore(*args: object) -> None:
    return None


_MESSAGE = ev.MessageReceived
_METHOD = ev.MethodReceived
_ACKED = ev.PublishAcked
_NACKED = ev.PublishNacked


class Session:
    """A connection's core, its channel books and the router between them.

    The callbacks are the adapter's: ``flush()`` hands what the core queued to the
    transport; ``on_opened(event)`` runs on ``connection.open-ok``; ``on_closed(error)``
    once when the connection ends, after every channel book failed its work;
    ``on_blocked(blocked, reason)`` when the broker blocks or unblocks publishers, before
    the channels' flow changes; ``on_secret_ok()`` for ``update-secret-ok``;
    ``on_returned(message)`` for a message returned outside confirm mode.
    """

    def __init__(self, core: Connection, *, flush: Callable[[], None], log: Log,
                 on_opened: Callable[[ev.ConnectionOpened], object] = _ignore,
                 on_closed: Callable[[BaseException], object] = _ignore,
                 on_blocked: Callable[[bool, str], object] = _ignore,
                 on_secret_ok: Callable[[], object] = _ignore,
                 on_returned: Callable[[MessageBase], object] = _ignore) -> None:
        self.core = core
        self.books: dict[int, ChannelBook] = {}
        self.error: BaseException | None = None
        self._flush = flush
        self._log = log
        self._on_opened = on_opened
        self._on_closed = on_closed
        self._on_blocked = on_blocked
        self._on_secret_ok = on_secret_ok
        self._on_returned = on_returned

    def open_channel(self, make_owner: Callable[[ChannelBook], Owner],
                     message_cls: type[MessageBase], resolve: Resolve, reject: Reject,
                     number: int | None = None) -> Owner:
        """Send ``channel.open``; returns the adapter's channel that ``make_owner(book)``
        builds. ``resolve(channel)`` runs on open-ok, ``reject(error)`` if it fails. Raises
        if it cannot be sent (the connection's error, or `txpika.errors.UsageError`)."""
        if self.error is not None:
            raise self.error
        number = self.core.open_channel(number)
        book = ChannelBook(self.core, number, None, message_cls, self._flush,
                           self._returned, self._log)
        owner = make_owner(book)
        book.owner = owner
        book.expect_open(resolve, reject)
        self.books[number] = book
        self._flush()
        return owner

    def _returned(self, message: MessageBase) -> None:
        self._on_returned(message)

    def dispatch(self) -> None:
        """Route every event the core has, one at a time."""
        next_event = self.core.next_event
        route = self.route
        while True:
            event = next_event()
            if event is NEED_DATA:
                return
            if type(event) is _MESSAGE:  # (route's first case, inline: the commonest)
                book = self.books.get(event.channel)
                if book is not None:
                    book.message(event.method, event.properties, event.body)
            else:
                route(event)

    def route(self, event: Any) -> None:
        """Route one event of the core."""
        kind = type(event)
        if kind is _MESSAGE:
            book = self.books.get(event.channel)
            if book is not None:
                book.message(event.method, event.properties, event.body)
        elif kind is _METHOD:
            if event.channel == 0:
                self._on_secret_ok()
                return
            book = self.books.get(event.channel)
            if book is not None:
                book.reply(event.method)
        elif kind is _ACKED or kind is _NACKED:
            book = self.books.get(event.channel)
            if book is not None:
                book.confirmed(event.delivery_tags, kind is _ACKED)
        elif kind is ev.PublishReturned:
            book = self.books.get(event.channel)
            if book is not None:
                book.returned(event.delivery_tag, event.method, event.properties,
                              event.body)
        elif kind is ev.ChannelOpened:
            book = self.books.get(event.channel)
            if book is not None:
                book.opened()
        elif kind is ev.ChannelClosed:
            book = self.books.pop(event.channel, None)
            if book is not None:
                book.closed(event.error)
        elif kind is ev.ChannelFlow:
            book = self.books.get(event.channel)
            if book is not None:
                book.set_flow(event.active and not self.core.blocked)
        elif kind is ev.ConnectionBlocked or kind is ev.ConnectionUnblocked:
            blocked = kind is ev.ConnectionBlocked
            self._on_blocked(blocked, self.core.blocked_reason)
            for number, book in list(self.books.items()):
                book.set_flow(not blocked and self.core.flow_active(number))
        elif kind is ev.ConnectionOpened:
            self._on_opened(event)
        elif kind is ev.ConnectionClosed:
            self._closed(event.error)

    def _closed(self, error: BaseException) -> None:
        self.error = error
        books, self.books = self.books, {}
        for book in books.values():
            book.closed(error)
        self._on_closed(error)
