"""The requests half of the sans-IO core: what a driver asks the connection to send.

`CoreRequests` is the base of `txpika.connection.Connection`: the methods a driver calls to
open and close channels, send methods, publish, settle deliveries and close the
connection, with the checks of `txpika._states.CONNECTION_SENDS` and `CHANNEL_SENDS` made
before anything is queued (local misuse raises `txpika.errors.UsageError`, nothing sent),
and the primitives both halves use to write and to end the connection. The attributes it
declares are set by ``Connection.__init__``.
"""

from __future__ import annotations

from collections import deque
from struct import Struct
from typing import Any, Final

from txpika import events as ev
from txpika._content import PublishEncoder
from txpika._core_channel import CoreChannel
from txpika._specbase import Dialect, Method, Properties
from txpika._states import CHANNEL_SENDS, CONNECTION_SENDS, ChannelState, ConnState, Send
from txpika.errors import (
    REPLY_SUCCESS,
    ConnectionClosedByClient,
    FlowControlError,
    ProtocolError,
    UsageError,
)
from txpika.frames import FrameDecoder, encode_method

__all__ = ["CoreRequests"]

#: A whole ``basic.ack`` frame (no ``multiple``) but its channel and delivery tag: method
#: frame of 13 octets, class 60, method 80, the tag, the bits, the frame end.
_ACK_STRUCT = Struct(">BHIHHQBB")
#: Methods only the core itself sends on a channel (send_method refuses them).
_CORE_SENDS = frozenset(("channel.open", "channel.close", "channel.close-ok",
                         "channel.flow-ok"))
_SETTLES = frozenset(("basic.ack", "basic.nack", "basic.reject"))

_AWAIT_OPEN_OK: Final = ConnState.AWAIT_OPEN_OK
_OPEN: Final = ConnState.OPEN
_CLOSING: Final = ConnState.CLOSING
_CLOSED: Final = ConnState.CLOSED
_CH_OPEN: Final = ChannelState.OPEN


class CoreRequests:
    """What a driver asks the core to send; see the module docstring."""

    state: ConnState
    dialect: Dialect
    channel_max: int
    frame_max: int
    max_message_size: int
    _m: Any
    _channels: dict[int, CoreChannel]
    _events: deque[ev.Event]
    _decoder: FrameDecoder
    _encoder: PublishEncoder
    _out: list[bytes | memoryview]
    _sent: bool
    _close_error: BaseException | None
    _closed_reported: bool

    @property
    def is_open(self) -> bool:
        """True between ``connection.open-ok`` and the start of closing."""
        return self.state is _OPEN

    def channel_state(self, channel: int) -> ChannelState | None:
        """The state of ``channel``, or ``None`` if it is not open or opening."""
        ch = self._channels.get(channel)
        return ch.state if ch is not None else None

    def flow_active(self, channel: int) -> bool:
        """False while the broker has stopped content on ``channel`` with ``channel.flow``."""
        ch = self._channels.get(channel)
        return ch.flow_active if ch is not None else False

    def in_confirm_mode(self, channel: int) -> bool:
        """True once ``confirm.select`` was written on ``channel``."""
        ch = self._channels.get(channel)
        return ch is not None and ch.confirms is not None

    def open_channel(self, channel: int | None = None) -> int:
        """Send ``channel.open``; returns the channel number (lowest free one by default).

        `events.ChannelOpened` follows, or `events.ChannelClosed` if the broker refuses.
        """
        self._require(Send.OPEN_CHANNEL)
        limit = self.channel_max or 65535
        if channel is None:
            channel = self._free_channel(limit)
        elif not 1 <= channel <= limit:
            raise UsageError(f"channel {channel} is outside 1..{limit}")
        elif channel in self._channels:
            raise UsageError(f"channel {channel} is already in use")
        ch = self._channels[channel] = CoreChannel(
            channel, self.dialect, self.frame_max, self._events, self._write,
            self._fail_protocol, self._decoder, self.max_message_size)
        ch.request(self._m.Channel.Open())
        return channel

    def send_method(self, channel: int, method: Method) -> None:
        """Send a method without content on an open channel.

        Synchronous methods wait in order behind the one awaiting its reply; the reply comes
        as `events.MethodReceived`. Raises `UsageError` for a method of another dialect, one
        a client may not send, one with content (use `basic_publish`), a connection-class
        method, or a channel that is not open; use `basic_ack` and friends for acks.
        """
        kind = Send.SYNC if method.SYNCHRONOUS else Send.ASYNC
        ch = self._channel_for(channel, kind, check_state=False)
        if self.dialect.methods.get(method.INDEX) is not type(method):
            raise UsageError(f"{method.NAME} is not a method of AMQP {self.dialect.name}")
        if (not method.CLIENT_SENDS or method.CONTENT or method.CLASS_ID == 10
                or method.NAME in _CORE_SENDS):
            raise UsageError(f"{method.NAME} cannot be sent with send_method()")
        if method.NAME in _SETTLES:
            raise UsageError(f"use basic_{method.NAME[6:]}() to send {method.NAME}")
        self._check_channel(ch, kind)
        if method.SYNCHRONOUS:
            ch.request(method)
        else:
            ch.send(method)

    def basic_publish(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        body: bytes | bytearray | memoryview,
        properties: Properties | None = None,
        mandatory: bool = False,
        immediate: bool = False,
    ) -> int:
        """Queue a message. Returns its publish sequence number in confirm mode, else 0.

        Raises `FlowControlError` while the broker has stopped this channel with
        ``channel.flow``, and `UsageError` (from the codec) for a field it cannot encode.
        """
        ch = self._channels.get(channel)
        if ch is None or ch.state is not _CH_OPEN or self.state is not _OPEN:
            # The fast form of the tables (a message goes only on an open channel of an
            # open connection) said no: this raises the reason.
            ch = self._channel_for(channel, Send.PUBLISH)
        if not ch.flow_active:
            raise FlowControlError(f"the broker stopped content on channel {channel}")
        self._out.extend(self._encoder.encode(channel, exchange, routing_key, body,
                                              properties, mandatory, immediate))
        self._sent = True
        confirms = ch.confirms
        if confirms is None:
            return 0
        return confirms.published(exchange, routing_key, mandatory or immediate)

    def basic_ack(self, channel: int, delivery_tag: int, multiple: bool = False) -> None:
        """Acknowledge a delivery (or, with ``multiple``, every one up to it; 0 means all).

        Raises `UsageError` if no such delivery awaits an ack: acked before, auto-acked, or
        from an earlier channel. Nothing is sent then, so the channel stays open.
        """
        ch = self._channels.get(channel)
        if (not multiple and ch is not None and ch.state is _CH_OPEN
                and self.state is _OPEN and ch.unacked.discard(delivery_tag)):
            # The hot path of a consumer: one ack, its frame packed in one go (basic.ack has
            # the same ids and arguments in 0-8 and 0-9-1).
            self._out.append(_ACK_STRUCT.pack(1, channel, 13, 60, 80, delivery_tag, 0, 0xCE))
            self._sent = True
            return
        ch = self._settle(channel, delivery_tag, multiple, "basic.ack")
        ch.send(self._m.Basic.Ack(delivery_tag, multiple))

    def basic_nack(
        self, channel: int, delivery_tag: int, multiple: bool = False, requeue: bool = True
    ) -> None:
        """Negatively acknowledge deliveries; the checks of `basic_ack` apply."""
        if not self.dialect.extensions:
            raise UsageError("basic.nack does not exist in AMQP 0-8; use basic_reject")
        ch = self._settle(channel, delivery_tag, multiple, "basic.nack")
        ch.send(self._m.Basic.Nack(delivery_tag, multiple, requeue))

    def basic_reject(self, channel: int, delivery_tag: int, requeue: bool = True) -> None:
        """Reject one delivery; the checks of `basic_ack` apply."""
        ch = self._settle(channel, delivery_tag, False, "basic.reject")
        ch.send(self._m.Basic.Reject(delivery_tag, requeue))

    def awaiting_ack(self, channel: int, delivery_tag: int) -> bool:
        """True if ``delivery_tag`` on ``channel`` was delivered and awaits an ack."""
        ch = self._channels.get(channel)
        return ch is not None and delivery_tag in ch.unacked

    def close_channel(
        self, channel: int, reply_code: int = REPLY_SUCCESS, reply_text: str = "Normal close",
    ) -> None:
        """Send ``channel.close``; `events.ChannelClosed` follows the broker's close-ok.

        Requests still waiting behind a synchronous one are dropped (their driver-side
        waiters fail with the `events.ChannelClosed` error). Closing a closing channel does
        nothing.
        """
        ch = self._channels.get(channel)
        if ch is None:
            raise UsageError(f"channel {channel} is not open")
        if ch.state is ChannelState.CLOSING:
            return
        self._require(Send.CLOSE_CHANNEL)
        ch.start_closing(reply_code, reply_text)

    def close(self, reply_code: int = REPLY_SUCCESS, reply_text: str = "Normal shutdown") -> None:
        """Start closing the connection; `events.ConnectionClosed` follows the close-ok.

        Before the handshake reached ``connection.tune`` there is nothing to close politely,
        so the event comes at once and the driver should drop the transport.
        """
        after = CONNECTION_SENDS.get((self.state, Send.CLOSE))
        if after is None:  # closing or closed already
            return
        error = ConnectionClosedByClient(reply_code, reply_text)
        if after is _CLOSED:
            self.state = _CLOSED
            self._report_closed(error)
            return
        self._start_close(error, reply_code, reply_text)

    def update_secret(self, new_secret: bytes, reason: str) -> None:
        """Send ``connection.update-secret`` (for expiring tokens); its close-ok arrives as
        `events.MethodReceived` on channel 0."""
        self._require(Send.UPDATE_SECRET)
        if not self.dialect.extensions:
            raise UsageError("connection.update-secret does not exist in AMQP 0-8")
        self._write(encode_method(0, self._m.Connection.UpdateSecret(new_secret, reason)))

    # -- checks -----------------------------------------------------------------------------

    def _require(self, request: Send) -> None:
        """Raise unless the connection's state allows ``request`` (`CONNECTION_SENDS`)."""
        if (self.state, request) not in CONNECTION_SENDS:
            if self._close_error is not None:
                raise self._close_error
            raise UsageError(f"the connection is not open (state {self.state.value})")

    def _channel_for(self, channel: int, request: Send,
                     check_state: bool = True) -> CoreChannel:
        self._require(request)
        ch = self._channels.get(channel)
        if ch is None or ch.state is ChannelState.CLOSING:
            raise UsageError(f"channel {channel} is not open")
        if check_state:
            self._check_channel(ch, request)
        return ch

    def _check_channel(self, ch: CoreChannel, request: Send) -> None:
        """Raise unless ``ch``'s state allows ``request`` (`CHANNEL_SENDS`)."""
        if (ch.state, request) not in CHANNEL_SENDS:
            if ch.state is ChannelState.OPENING:
                raise UsageError(f"channel {ch.id} is still opening")
            raise UsageError(f"channel {ch.id} is not open")

    def _free_channel(self, limit: int) -> int:
        for candidate in range(1, limit + 1):
            if candidate not in self._channels:
                return candidate
        raise UsageError(f"all {limit} channels are in use")

    def _settle(self, channel: int, tag: int, multiple: bool, name: str) -> CoreChannel:
        ch = self._channel_for(channel, Send.ASYNC, check_state=False)
        ch.settle(tag, multiple, name)
        return ch

    # -- writing, and ending the connection ---------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        self._sent = True

    def _report_closed(self, error: BaseException) -> None:
        if self._closed_reported:
            return
        self._closed_reported = True
        self._close_error = error
        self._channels.clear()
        self._events.append(ev.ConnectionClosed(error=error))

    def _start_close(self, error: BaseException, code: int, text: str,
                     class_id: int = 0, method_id: int = 0) -> None:
        # reply-text is a shortstr: at most 255 UTF-8 bytes, cut on a character boundary.
        text = text.encode("utf-8", "surrogateescape")[:255].decode("utf-8", "ignore")
        self._write(encode_method(0, self._m.Connection.Close(code, text, class_id,
                                                              method_id)))
        self.state = _CLOSING
        self._close_error = error

    def _fail_protocol(self, code: int, text: str, class_id: int = 0,
                       method_id: int = 0) -> None:
        """The peer broke the protocol: close with ``code`` and report it now."""
        error = ProtocolError(code, text, class_id, method_id)
        if self.state in (_AWAIT_OPEN_OK, _OPEN) and code:
            self._start_close(error, code, text, class_id, method_id)
        else:
            self.state = _CLOSED
        self._report_closed(error)
