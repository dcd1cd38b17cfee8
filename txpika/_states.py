"""The state tables of the sans-IO core, both directions, keyed by enums and method classes.

Theory of operation
-------------------
A connection moves through `ConnState`, each of its channels through `ChannelState`. Two
kinds of input move them:

* what the driver asks the core to send (`Send`): `CONNECTION_SENDS` and `CHANNEL_SENDS`
  say in which states each request is allowed and where it leads; a request missing from the
  table is refused with `txpika.errors.UsageError` before anything is queued;
* what the broker sends: `CONNECTION_RECEIVES` (methods on channel 0) and
  `CHANNEL_RECEIVES` (methods on a channel that are not the reply it awaits; replies are
  matched against the pending request's ``REPLIES`` and lead to `REPLY_STATES`). A method
  missing from the table closes the connection with 503 COMMAND_INVALID.

The tables name the normal next state. A handler that ends the connection (a refused
login, a broken frame) moves it elsewhere itself; the core applies the table's state only
when the handler left the state alone.

Methods are keyed by the AMQP 0-9-1 classes of `txpika.spec`; `for_dialect` turns a table
into one keyed by the classes of the dialect a connection speaks (0-8 lacks some methods,
which are then left out).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Final, TypeVar

from txpika import spec
from txpika._specbase import Dialect, Method

__all__ = [
    "CHANNEL_RECEIVES",
    "CHANNEL_SENDS",
    "CONNECTION_RECEIVES",
    "CONNECTION_SENDS",
    "REPLY_STATES",
    "ChannelState",
    "ConnState",
    "Send",
    "for_dialect",
]


class ConnState(Enum):
    """Where the connection handshake and shutdown stand."""

    #: Nothing sent yet.
    IDLE = "idle"  # initiate() not called yet
    #: The protocol header is sent; waiting for ``connection.start``.
    AWAIT_START = "await-start"  # protocol header sent
    #: ``start-ok`` sent; ``secure``, ``tune`` or ``close`` may come.
    AWAIT_TUNE = "await-tune"  # start-ok sent; secure, tune or close may come
    #: ``tune-ok`` and ``open`` sent; waiting for ``open-ok``.
    AWAIT_OPEN_OK = "await-open-ok"  # tune-ok and open sent
    #: Open: channels may be opened.
    OPEN = "open"
    #: ``connection.close`` sent, waiting for ``close-ok``.
    CLOSING = "closing"  # connection.close sent, waiting for close-ok
    #: Over: the driver should drop the transport.
    CLOSED = "closed"  # over: the driver should drop the transport

    # Members are singletons: identity is equality. Enum's own __hash__ is Python code, paid
    # on every lookup in the tables.
    __hash__ = object.__hash__


class ChannelState(Enum):
    """Where one channel stands. A channel that is closed is gone from the core."""

    #: ``channel.open`` sent, ``open-ok`` not yet received.
    OPENING = "opening"  # channel.open sent
    #: Open: methods may be sent.
    OPEN = "open"
    #: ``channel.close`` sent, waiting for ``close-ok``.
    CLOSING = "closing"  # channel.close sent, waiting for close-ok
    #: Closed: the broker's ``close-ok`` (or ``close``) arrived.
    CLOSED = "closed"  # the broker's close-ok (or close) arrived: forgotten at once

    __hash__ = object.__hash__


class Send(Enum):
    """What a driver asks the core to send."""

    INITIATE = "initiate"  # the protocol header
    OPEN_CHANNEL = "open a channel"
    SYNC = "a synchronous method"  # answered by the broker; waits its turn on the channel
    ASYNC = "a method"  # no reply: acks, basic.recover-async, nowait requests
    PUBLISH = "a message"  # basic.publish with content
    CLOSE_CHANNEL = "close a channel"
    UPDATE_SECRET = "update the secret"
    CLOSE = "close the connection"

    __hash__ = object.__hash__


S = ConnState
C = ChannelState

#: (connection state, request) -> the connection state after it.
CONNECTION_SENDS: Final[Mapping[tuple[ConnState, Send], ConnState]] = {
    (S.IDLE, Send.INITIATE): S.AWAIT_START,
    # Before tune nothing is negotiated: closing just ends it.
    (S.IDLE, Send.CLOSE): S.CLOSED,
    (S.AWAIT_START, Send.CLOSE): S.CLOSED,
    (S.AWAIT_TUNE, Send.CLOSE): S.CLOSED,
    (S.AWAIT_OPEN_OK, Send.CLOSE): S.CLOSING,
    (S.OPEN, Send.OPEN_CHANNEL): S.OPEN,
    (S.OPEN, Send.SYNC): S.OPEN,
    (S.OPEN, Send.ASYNC): S.OPEN,
    (S.OPEN, Send.PUBLISH): S.OPEN,
    (S.OPEN, Send.CLOSE_CHANNEL): S.OPEN,
    (S.OPEN, Send.UPDATE_SECRET): S.OPEN,
    (S.OPEN, Send.CLOSE): S.CLOSING,
}

#: (channel state, request) -> the channel state after it. Synchronous requests made while
#: the channel opens wait behind ``channel.open``; nothing else may be sent before open-ok.
CHANNEL_SENDS: Final[Mapping[tuple[ChannelState, Send], ChannelState]] = {
    (C.OPENING, Send.SYNC): C.OPENING,
    (C.OPENING, Send.CLOSE_CHANNEL): C.CLOSING,
    (C.OPEN, Send.SYNC): C.OPEN,
    (C.OPEN, Send.ASYNC): C.OPEN,
    (C.OPEN, Send.PUBLISH): C.OPEN,
    (C.OPEN, Send.CLOSE_CHANNEL): C.CLOSING,
    (C.CLOSING, Send.CLOSE_CHANNEL): C.CLOSING,  # closing twice does nothing
}

_M = spec

#: (connection state, method received on channel 0) -> the connection state after it.
CONNECTION_RECEIVES: Final[Mapping[tuple[ConnState, type[Method]], ConnState]] = {
    (S.AWAIT_START, _M.Connection.Start): S.AWAIT_TUNE,
    (S.AWAIT_START, _M.Connection.Close): S.CLOSED,
    (S.AWAIT_TUNE, _M.Connection.Secure): S.AWAIT_TUNE,
    (S.AWAIT_TUNE, _M.Connection.Tune): S.AWAIT_OPEN_OK,
    (S.AWAIT_TUNE, _M.Connection.Close): S.CLOSED,
    (S.AWAIT_OPEN_OK, _M.Connection.OpenOk): S.OPEN,
    (S.AWAIT_OPEN_OK, _M.Connection.Close): S.CLOSED,
    (S.AWAIT_OPEN_OK, _M.Connection.Blocked): S.AWAIT_OPEN_OK,
    (S.AWAIT_OPEN_OK, _M.Connection.Unblocked): S.AWAIT_OPEN_OK,
    (S.OPEN, _M.Connection.Close): S.CLOSED,
    (S.OPEN, _M.Connection.Blocked): S.OPEN,
    (S.OPEN, _M.Connection.Unblocked): S.OPEN,
    (S.OPEN, _M.Connection.UpdateSecretOk): S.OPEN,
}

#: (channel state, method received that is not the awaited reply) -> the channel state
#: after it. A channel in CLOSING drops everything but these (the broker requeues what it
#: was delivering), as the specification requires.
CHANNEL_RECEIVES: Final[Mapping[tuple[ChannelState, type[Method]], ChannelState]] = {
    (C.OPENING, _M.Channel.Close): C.CLOSED,
    (C.OPEN, _M.Channel.Close): C.CLOSED,
    (C.OPEN, _M.Channel.Flow): C.OPEN,
    (C.OPEN, _M.Basic.Cancel): C.OPEN,
    (C.OPEN, _M.Basic.Deliver): C.OPEN,
    (C.OPEN, _M.Basic.Return): C.OPEN,
    (C.OPEN, _M.Basic.Ack): C.OPEN,
    (C.OPEN, _M.Basic.Nack): C.OPEN,
    (C.CLOSING, _M.Channel.Close): C.CLOSING,  # crossing closes: our close-ok still comes
    (C.CLOSING, _M.Channel.CloseOk): C.CLOSED,
}

#: (channel state, reply to the awaited request) -> the channel state after it; every other
#: reply leaves the state as it is.
REPLY_STATES: Final[Mapping[tuple[ChannelState, type[Method]], ChannelState]] = {
    (C.OPENING, _M.Channel.OpenOk): C.OPEN,
}

K = TypeVar("K", bound=Enum)
V = TypeVar("V")


def for_dialect(table: Mapping[tuple[K, type[Method]], V],
                dialect: Dialect) -> dict[tuple[K, type[Method]], V]:
    """``table`` keyed by the method classes of ``dialect`` with the same AMQP names (their
    ids may differ: 0-8's ``connection.close`` is method 60, 0-9-1's 50); methods the
    dialect does not have are left out."""
    by_name: Mapping[str, type[Method]] = dialect.module.BY_NAME
    result: dict[tuple[K, type[Method]], V] = {}
    for (state, cls), value in table.items():
        own = by_name.get(cls.NAME)
        if own is not None:
            result[(state, own)] = value
    return result
