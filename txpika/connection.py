"""The sans-IO AMQP connection core: bytes in, events out, bytes out.

Theory of operation
-------------------
A driver (the Twisted protocol, the blocking adapter, or a test) owns the socket and the
clock. It calls `Connection.initiate` once, writes `Connection.data_to_send` to the peer,
feeds whatever the peer sends to `Connection.receive_data`, and pulls events with
`Connection.next_event` until it returns `NEED_DATA`. Events are taken one at a time, so a
callback run for one event sees the core exactly as that event left it. The driver calls
`Connection.heartbeat_tick` with the current time whenever the time it returned comes.

The connection moves through `ConnState`; which methods are acceptable on channel 0 in each
state is the table `_CONNECTION_TABLE`, and anything not in it is a protocol error. Each
channel moves through `ChannelState` with its own table. On a protocol error the core sends
``connection.close`` with the reply code (501-505), emits `events.ConnectionClosed` with a
`txpika.errors.ProtocolError`, and discards the peer's input until ``close-ok``.

Requests are made with the ``open_channel``, ``send_method``, ``basic_publish``,
``basic_ack``/``nack``/``reject``, ``close_channel`` and ``close`` methods. Local misuse
raises `txpika.errors.UsageError` (or `txpika.errors.FlowControlError`) before anything is
queued for sending. On each channel only one synchronous request is on the wire at a time;
later ones wait in order and are written as replies arrive. Methods without a reply (publish,
ack, ...) are written at once.

The core imports nothing from Twisted and reads no clock.
"""

from __future__ import annotations

import platform
from collections import deque
from collections.abc import Callable, Mapping
from enum import Enum
from struct import Struct
from typing import Any, Final

from txpika import events as ev
from txpika import spec
from txpika._specbase import Dialect, Method, Properties
from txpika._tags import TagSet
from txpika.auth import Credentials, PlainCredentials
from txpika.errors import (
    CHANNEL_ERROR,
    COMMAND_INVALID,
    NOT_ALLOWED,
    REPLY_SUCCESS,
    UNEXPECTED_FRAME,
    AccessRefused,
    AuthenticationError,
    ChannelClosedByClient,
    ConnectionClosedByClient,
    FlowControlError,
    HeartbeatTimeout,
    NotAllowed,
    ProtocolError,
    UsageError,
    channel_error,
    connection_error,
)
from txpika.events import _message_received
from txpika.frames import (
    FRAME_MIN_SIZE,
    HEARTBEAT,
    NEED_DATA,
    BodyFrame,
    FrameDecodeError,
    FrameDecoder,
    HeaderFrame,
    HeartbeatFrame,
    MethodFrame,
    _NeedData,
    encode_method,
    encoded_content_frames,
)

__all__ = ["NEED_DATA", "ChannelState", "ConnState", "Connection", "VirtualHostAccessRefused"]

__version__ = "0.1.0.dev0"

#: The capabilities txpika tells the broker it supports (0-9-1).
CAPABILITIES: Final[Mapping[str, bool]] = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}

#: A whole ``basic.ack`` frame (no ``multiple``) but its channel and delivery tag: method
#: frame of 13 octets, class 60, method 80, the tag, the bits, the frame end.
_ACK_STRUCT = Struct(">BHIHHQBB")


class VirtualHostAccessRefused(AccessRefused, NotAllowed):
    """The broker refused to open the virtual host (``connection.close`` 530)."""


class ConnState(Enum):
    """Where the connection handshake and shutdown stand."""

    IDLE = "idle"  # initiate() not called yet
    AWAIT_START = "await-start"  # protocol header sent
    AWAIT_TUNE = "await-tune"  # start-ok sent; secure, tune or close may come
    AWAIT_OPEN_OK = "await-open-ok"  # tune-ok and open sent
    OPEN = "open"
    CLOSING = "closing"  # connection.close sent, waiting for close-ok
    CLOSED = "closed"  # over: the driver should drop the transport

    # Members are singletons: identity is equality. Enum's own __hash__ is Python code, paid
    # on every lookup in _CONNECTION_TABLE.
    __hash__ = object.__hash__


class ChannelState(Enum):
    """Where one channel stands."""

    OPENING = "opening"  # channel.open sent
    OPEN = "open"
    CLOSING = "closing"  # channel.close sent, waiting for close-ok

    # As for ConnState: hashed on every lookup in _CHANNEL_TABLE.
    __hash__ = object.__hash__


class _Channel:
    """Book-keeping for one channel."""

    __slots__ = (
        "awaiting",
        "confirm_mode",
        "consumers",
        "content",
        "content_parts",
        "content_props",
        "content_received",
        "content_size",
        "flow_active",
        "get_no_ack",
        "id",
        "mandatory",
        "next_publish_tag",
        "queue",
        "reported",
        "returned",
        "routes",
        "state",
        "unacked",
        "unconfirmed",
    )

    def __init__(self, channel_id: int) -> None:
        self.id = channel_id
        self.state = ChannelState.OPENING
        self.awaiting: Method | None = None
        self.queue: deque[Method] = deque()
        self.flow_active = True
        self.confirm_mode = False
        self.next_publish_tag = 1
        self.unconfirmed = TagSet()
        # Outstanding mandatory publishes: tag -> route, and route -> tags oldest first.
        self.mandatory: dict[int, tuple[str, str]] = {}
        self.routes: dict[tuple[str, str], deque[int]] = {}
        # Mandatory publishes the broker returned, awaiting their ack or nack.
        self.returned: dict[int, tuple[Method, Properties, bytes]] = {}
        self.unacked = TagSet()
        self.consumers: dict[str, bool] = {}  # consumer tag -> no_ack
        self.get_no_ack: deque[bool] = deque()
        self.content: Method | None = None
        self.content_props: Properties | None = None
        self.content_size = 0
        self.content_received = 0
        self.content_parts: list[bytes | memoryview] = []
        self.reported = False  # a ChannelClosed event was emitted


def _expects_reply(method: Method) -> bool:
    return method.SYNCHRONOUS and not getattr(method, "nowait", False)


class Connection:
    """One AMQP connection, driven by the caller. See the module docstring."""

    def __init__(
        self,
        *,
        dialect: Dialect = spec.DIALECT,
        credentials: Credentials | None = None,
        virtual_host: str = "/",
        channel_max: int = 2047,
        frame_max: int = 131072,
        heartbeat: int | None = 60,
        locale: str = "en_US",
        client_properties: Mapping[str, Any] | None = None,
        connection_name: str | None = None,
    ) -> None:
        """Set up the core; nothing is sent until `initiate`.

        ``channel_max`` and ``frame_max`` are this client's limits (0: none); the tuned value
        is the lower of ours and the broker's. ``heartbeat`` is the interval in seconds we ask
        for: ``None`` takes the broker's proposal, 0 turns heartbeats off, any other value is
        lowered to the broker's proposal when that is smaller and not 0.
        """
        if frame_max and frame_max < FRAME_MIN_SIZE:
            raise UsageError(f"frame_max {frame_max} is below the minimum {FRAME_MIN_SIZE}")
        if not 0 <= channel_max <= 65535:
            raise UsageError(f"channel_max {channel_max} is outside 0..65535")
        if heartbeat is not None and not 0 <= heartbeat <= 65535:
            raise UsageError(f"heartbeat {heartbeat} is outside 0..65535")
        self.dialect = dialect
        self._m = dialect.module
        self._credentials = credentials or PlainCredentials("guest", "guest")
        self.virtual_host = virtual_host
        self._want_channel_max = channel_max
        self._want_frame_max = frame_max
        self._want_heartbeat = heartbeat
        self._locale = locale
        self._client_properties = self._build_client_properties(client_properties,
                                                                connection_name)
        self.state = ConnState.IDLE
        self.server_properties: Mapping[str, Any] = {}
        self.channel_max = 0
        self.frame_max = 0
        self.heartbeat = 0
        self.blocked = False
        self.blocked_reason = ""
        self._decoder = FrameDecoder(dialect)
        self._out: list[bytes | memoryview] = []
        self._events: deque[ev.Event] = deque()
        self._channels: dict[int, _Channel] = {}
        self._close_error: BaseException | None = None
        self._closed_reported = False
        self._received = False
        self._sent = False
        self._last_received: float | None = None
        self._last_sent: float | None = None
        self._publish_cache: dict[tuple[int, str, str, bool, bool], bytes] = {}
        self._empty_payload = dialect.properties[60]().encode()
        self._last_properties: object = None
        self._last_payload = b""
        self._publish_cls: Callable[..., Method] = self._m.Basic.Publish

    # -- driver side ------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the protocol header; call once, right after the transport connects."""
        if self.state is not ConnState.IDLE:
            raise UsageError("initiate() was already called")
        self._write(self.dialect.protocol_header)
        self.state = ConnState.AWAIT_START

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer; they become events in `next_event`."""
        state = self.state
        if not data or state is _CLOSED:
            return
        self._received = True
        if state is _AWAIT_START and self._decoder.buffered == 0 and (
            bytes(data[:4]) == b"AMQP"
        ):
            # The broker answered our header with the version it speaks, then hangs up.
            version = ".".join(str(b) for b in bytes(data[4:8]))
            self._fail_protocol(
                0, f"the broker does not speak AMQP {self.dialect.name}; it offered {version}"
            )
            return
        self._decoder.receive_data(data)

    def next_event(self) -> ev.Event | Any:
        """The next event, or `NEED_DATA` when the bytes received so far hold no more."""
        events = self._events
        if events:
            return events.popleft()
        next_frame = self._decoder.next_frame
        while True:
            state = self.state
            if state is _CLOSED:
                return NEED_DATA
            try:
                frame = next_frame()
            except FrameDecodeError as exc:
                self._fail_protocol(exc.reply_code, exc.reply_text, exc.class_id,
                                    exc.method_id)
            else:
                if isinstance(frame, _NeedData):
                    return NEED_DATA
                if state is _CLOSING:
                    self._handle_while_closing(frame)
                elif frame.channel:  # (the decoder refuses a heartbeat on a channel)
                    self._handle_channel_frame(frame)
                else:
                    self._handle_connection_frame(frame)
            if events:
                return events.popleft()

    def data_to_send(self) -> bytes:
        """Everything queued for the peer, as one bytes object (and forget it)."""
        if not self._out:
            return b""
        out = self._out
        self._out = []
        return b"".join(out)

    @property
    def pending_chunks(self) -> int:
        """How many pieces of output are queued (see `chunks_to_send`)."""
        return len(self._out)

    def chunks_to_send(self) -> list[bytes | memoryview]:
        """Everything queued for the peer, as pieces that avoid copying large bodies."""
        out = self._out
        self._out = []
        return out

    def connection_lost(self, error: BaseException) -> None:
        """The transport is gone. Emits `events.ConnectionClosed` unless already closed.

        Losing the transport right after ``start-ok`` is how a broker without
        ``authentication_failure_close`` refuses credentials, so that case is reported as
        `txpika.errors.AuthenticationError`.
        """
        if self.state is ConnState.CLOSED:
            return
        if self.state is ConnState.CLOSING and self._close_error is not None:
            # We were closing anyway (by request or after a protocol error): that is why.
            error = self._close_error
        elif self.state is ConnState.AWAIT_TUNE:
            error = AuthenticationError(
                403, "the broker closed the connection during authentication: "
                "check the user name, password and mechanism"
            )
        self.state = ConnState.CLOSED
        self._report_closed(error)

    def heartbeat_tick(self, now: float, reading_paused: bool = False) -> float | None:
        """Send a heartbeat if one is due and detect a dead peer.

        ``now`` is the driver's clock in seconds. Returns when to call again, or ``None``
        when heartbeats are off or the connection is over. A peer that sent nothing for
        two heartbeat intervals closes the connection with `txpika.errors.HeartbeatTimeout`.
        A driver that stopped reading (``reading_paused``) cannot tell a silent peer from
        its own unread socket, so the peer counts as alive then.
        """
        interval = self.heartbeat
        if not interval or self.state in (ConnState.CLOSED, ConnState.IDLE):
            return None
        if self._received or reading_paused or self._last_received is None:
            self._last_received = now
            self._received = False
        if self._sent or self._last_sent is None:
            self._last_sent = now
            self._sent = False
        if now - self._last_received >= 2 * interval:
            self.state = ConnState.CLOSED
            self._out.clear()
            self._report_closed(HeartbeatTimeout(interval))
            return None
        if now - self._last_sent >= interval:
            self._out.append(HEARTBEAT)
            self._last_sent = now
        return now + interval / 2

    # -- requests -----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True between ``connection.open-ok`` and the start of closing."""
        return self.state is ConnState.OPEN

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
        return ch is not None and ch.confirm_mode

    def open_channel(self, channel: int | None = None) -> int:
        """Send ``channel.open``; returns the channel number (lowest free one by default).

        `events.ChannelOpened` follows, or `events.ChannelClosed` if the broker refuses.
        """
        self._require_open()
        limit = self.channel_max or 65535
        if channel is None:
            channel = self._free_channel(limit)
        elif not 1 <= channel <= limit:
            raise UsageError(f"channel {channel} is outside 1..{limit}")
        elif channel in self._channels:
            raise UsageError(f"channel {channel} is already in use")
        ch = self._channels[channel] = _Channel(channel)
        self._send_sync(ch, self._m.Channel.Open())
        return channel

    def send_method(self, channel: int, method: Method) -> None:
        """Send a method without content on an open channel.

        Synchronous methods wait in order behind the one awaiting its reply; the reply comes
        as `events.MethodReceived`. Raises `UsageError` for a method of another dialect, one
        a client may not send, one with content (use `basic_publish`), a connection-class
        method, or a channel that is not open; use `basic_ack` and friends for acks.
        """
        ch = self._usable_channel(channel)
        if self.dialect.methods.get(method.INDEX) is not type(method):
            raise UsageError(f"{method.NAME} is not a method of AMQP {self.dialect.name}")
        if not method.CLIENT_SENDS or method.CONTENT or method.CLASS_ID == 10 or (
            method.NAME in ("channel.open", "channel.close", "channel.close-ok",
                            "channel.flow-ok")
        ):
            raise UsageError(f"{method.NAME} cannot be sent with send_method()")
        if method.NAME in ("basic.ack", "basic.nack", "basic.reject"):
            raise UsageError(f"use basic_{method.NAME[6:]}() to send {method.NAME}")
        if ch.state is ChannelState.OPENING and not method.SYNCHRONOUS:
            raise UsageError(f"channel {channel} is still opening")
        if method.SYNCHRONOUS:
            self._send_sync(ch, method)
        else:
            self._write_method(ch, method)

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
        if ch is None or ch.state is not ChannelState.OPEN or self.state is not ConnState.OPEN:
            self._usable_channel(channel)
            raise UsageError(f"channel {channel} is still opening")
        if not ch.flow_active:
            raise FlowControlError(f"the broker stopped content on channel {channel}")
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise UsageError(f"a message body must be bytes, not {type(body).__name__}")
        # Encoded properties are reused: always for none, and for the same object published
        # again when it holds nothing mutable (properties are frozen; headers is a dict).
        if properties is None:
            payload = self._empty_payload
        elif properties is self._last_properties:
            payload = self._last_payload
        else:
            given = properties
            if type(properties) is not self.dialect.properties[60]:
                properties = self._own_properties(properties)
            payload = properties.encode()
            if properties.headers is None:  # type: ignore[attr-defined]
                self._last_properties = given
                self._last_payload = payload
        key = (channel, exchange, routing_key, mandatory, immediate)
        method_frame = self._publish_cache.get(key)
        if method_frame is None:
            method = self._publish_cls(0, exchange, routing_key, mandatory, immediate)
            method_frame = encode_method(channel, method, self.frame_max)
            if len(self._publish_cache) >= 256:
                self._publish_cache.clear()
            self._publish_cache[key] = method_frame
        self._out.extend(
            encoded_content_frames(channel, method_frame, 60, payload, body, self.frame_max)
        )
        self._sent = True
        if not ch.confirm_mode:
            return 0
        tag = ch.next_publish_tag
        ch.next_publish_tag = tag + 1
        ch.unconfirmed.add(tag)
        if mandatory or immediate:
            route = (exchange, routing_key)
            ch.mandatory[tag] = route
            pending = ch.routes.get(route)
            if pending is None:
                ch.routes[route] = deque((tag,))
            else:
                pending.append(tag)
        return tag

    def _own_properties(self, properties: Any) -> Properties:
        """The other dialect's BasicProperties (same 14 fields) as this dialect's."""
        cls = self.dialect.properties[60]
        if not isinstance(properties, Properties) or properties.CLASS_ID != 60:
            raise UsageError(f"properties must be BasicProperties, not "
                             f"{type(properties).__name__}")
        names: tuple[str, ...] = properties.__slots__
        fields = {name: getattr(properties, name) for name in names}
        try:
            return cls(**fields)
        except TypeError:
            raise UsageError(f"properties must be {self.dialect.name} BasicProperties"
                             ) from None

    def basic_ack(self, channel: int, delivery_tag: int, multiple: bool = False) -> None:
        """Acknowledge a delivery (or, with ``multiple``, every one up to it; 0 means all).

        Raises `UsageError` if no such delivery awaits an ack: acked before, auto-acked, or
        from an earlier channel. Nothing is sent then, so the channel stays open.
        """
        ch = self._channels.get(channel)
        if (not multiple and ch is not None and ch.state is ChannelState.OPEN
                and self.state is ConnState.OPEN and ch.unacked.discard(delivery_tag)):
            # The hot path of a consumer: one ack, its frame packed in one go (basic.ack has
            # the same ids and arguments in 0-8 and 0-9-1).
            self._out.append(_ACK_STRUCT.pack(1, channel, 13, 60, 80, delivery_tag, 0, 0xCE))
            self._sent = True
            return
        self._settle(channel, delivery_tag, multiple, "basic.ack")
        self._write_method(self._channels[channel], self._m.Basic.Ack(delivery_tag, multiple))

    def basic_nack(
        self, channel: int, delivery_tag: int, multiple: bool = False, requeue: bool = True
    ) -> None:
        """Negatively acknowledge deliveries; the checks of `basic_ack` apply."""
        if not self.dialect.extensions:
            raise UsageError("basic.nack does not exist in AMQP 0-8; use basic_reject")
        self._settle(channel, delivery_tag, multiple, "basic.nack")
        self._write_method(
            self._channels[channel], self._m.Basic.Nack(delivery_tag, multiple, requeue)
        )

    def basic_reject(self, channel: int, delivery_tag: int, requeue: bool = True) -> None:
        """Reject one delivery; the checks of `basic_ack` apply."""
        self._settle(channel, delivery_tag, False, "basic.reject")
        self._write_method(self._channels[channel], self._m.Basic.Reject(delivery_tag, requeue))

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
        self._require_open()
        frame = encode_method(channel, self._m.Channel.Close(reply_code, reply_text, 0, 0))
        ch.queue.clear()
        ch.awaiting = None
        ch.state = ChannelState.CLOSING
        self._write(frame)

    def close(self, reply_code: int = REPLY_SUCCESS, reply_text: str = "Normal shutdown") -> None:
        """Start closing the connection; `events.ConnectionClosed` follows the close-ok.

        Before the handshake reached ``connection.tune`` there is nothing to close politely,
        so the event comes at once and the driver should drop the transport.
        """
        error = ConnectionClosedByClient(reply_code, reply_text)
        if self.state in (ConnState.CLOSED, ConnState.CLOSING):
            return
        if self.state in (ConnState.IDLE, ConnState.AWAIT_START, ConnState.AWAIT_TUNE):
            self.state = ConnState.CLOSED
            self._report_closed(error)
            return
        self._start_close(error, reply_code, reply_text)

    def update_secret(self, new_secret: bytes, reason: str) -> None:
        """Send ``connection.update-secret`` (for expiring tokens); its close-ok arrives as
        `events.MethodReceived` on channel 0."""
        self._require_open()
        if not self.dialect.extensions:
            raise UsageError("connection.update-secret does not exist in AMQP 0-8")
        self._write(encode_method(0, self._m.Connection.UpdateSecret(new_secret, reason)))

    # -- internals: output ------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        self._sent = True

    def _write_method(self, ch: _Channel, method: Method) -> None:
        self._out.append(encode_method(ch.id, method, self.frame_max))
        self._sent = True
        name = method.NAME
        if name == "confirm.select":
            ch.confirm_mode = True
        elif name == "basic.get":
            ch.get_no_ack.append(bool(getattr(method, "no_ack", False)))
        elif name == "basic.consume" and getattr(method, "nowait", False):
            tag = getattr(method, "consumer_tag", "")
            ch.consumers[tag] = bool(getattr(method, "no_ack", False))
        elif name in ("basic.recover", "basic.recover-async"):
            ch.unacked = TagSet()  # the broker redelivers them under new tags

    def _send_sync(self, ch: _Channel, method: Method) -> None:
        if ch.awaiting is not None or ch.queue:
            ch.queue.append(method)
            return
        self._write_method(ch, method)
        if _expects_reply(method):
            ch.awaiting = method

    def _send_queued(self, ch: _Channel) -> None:
        while ch.queue and ch.state is ChannelState.OPEN:
            method = ch.queue.popleft()
            self._write_method(ch, method)
            if _expects_reply(method):
                ch.awaiting = method
                return

    # -- internals: checks ------------------------------------------------------------------

    def _require_open(self) -> None:
        if self.state is not ConnState.OPEN:
            if self._close_error is not None:
                raise self._close_error
            raise UsageError(f"the connection is not open (state {self.state.value})")

    def _usable_channel(self, channel: int) -> _Channel:
        self._require_open()
        ch = self._channels.get(channel)
        if ch is None or ch.state is ChannelState.CLOSING:
            raise UsageError(f"channel {channel} is not open")
        return ch

    def _free_channel(self, limit: int) -> int:
        for candidate in range(1, limit + 1):
            if candidate not in self._channels:
                return candidate
        raise UsageError(f"all {limit} channels are in use")

    def _settle(self, channel: int, tag: int, multiple: bool, name: str) -> None:
        ch = self._usable_channel(channel)
        if ch.state is not ChannelState.OPEN:
            raise UsageError(f"channel {channel} is still opening")
        if multiple:
            settled = ch.unacked.pop_through(tag) if tag else ch.unacked.pop_all()
            if not settled:
                raise UsageError(f"{name} multiple up to {tag}: no delivery awaits an ack")
        elif not ch.unacked.discard(tag):
            raise UsageError(
                f"{name} of delivery {tag} on channel {channel}: it does not await an ack "
                "(already settled, consumed with auto_ack, or never delivered)"
            )

    # -- internals: closing -----------------------------------------------------------------

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
        self.state = ConnState.CLOSING
        self._close_error = error

    def _fail_protocol(self, code: int, text: str, class_id: int = 0,
                       method_id: int = 0) -> None:
        """The peer broke the protocol: close with ``code`` and report it now."""
        error = ProtocolError(code, text, class_id, method_id)
        if self.state in (ConnState.AWAIT_OPEN_OK, ConnState.OPEN) and code:
            self._start_close(error, code, text, class_id, method_id)
        else:
            self.state = ConnState.CLOSED
        self._report_closed(error)

    def _handle_while_closing(self, frame: Any) -> None:
        # After sending connection.close, only close-ok (or a crossing close) matters.
        if isinstance(frame, MethodFrame) and not frame.channel:
            name = frame.method.NAME
            if name == "connection.close-ok":
                self.state = ConnState.CLOSED
                self._report_closed(self._close_error or ConnectionClosedByClient(200, ""))
            elif name == "connection.close":
                self._write(encode_method(0, self._m.Connection.CloseOk()))
                self.state = ConnState.CLOSED
                self._report_closed(self._close_error or ConnectionClosedByClient(200, ""))

    # -- internals: channel 0 ---------------------------------------------------------------

    def _handle_connection_frame(self, frame: MethodFrame | HeaderFrame | BodyFrame
                                 | HeartbeatFrame) -> None:
        if isinstance(frame, HeartbeatFrame):
            return
        if not isinstance(frame, MethodFrame):
            self._fail_protocol(UNEXPECTED_FRAME, "content frame on channel 0")
            return
        method = frame.method
        handler = _CONNECTION_TABLE.get((self.state, method.NAME))
        if handler is None:
            self._unexpected(method, f"in connection state {self.state.value}")
            return
        handler(self, method)

    def _unexpected(self, method: Method, where: str) -> None:
        if not method.CLIENT_RECEIVES:
            text = f"the broker sent {method.NAME}, which only a client may send"
        else:
            text = f"unexpected {method.NAME} {where}"
        self._fail_protocol(COMMAND_INVALID, text, method.CLASS_ID, method.METHOD_ID)

    def _on_start(self, method: Any) -> None:
        expected = (0, 9) if self.dialect.name == "0-9-1" else (8, 0)
        if (method.version_major, method.version_minor) != expected:
            self._fail_protocol(
                0, f"the broker speaks AMQP {method.version_major}-{method.version_minor}"
            )
            return
        self.server_properties = method.server_properties or {}
        mechanism = self._credentials.mechanism
        offered = method.mechanisms.decode("utf-8", "replace").split()
        if mechanism not in offered:
            self.state = ConnState.CLOSED
            self._report_closed(AuthenticationError(
                403, f"the broker offers {' '.join(offered) or 'no mechanism'}, "
                f"not {mechanism}"))
            return
        locales = method.locales.decode("utf-8", "replace").split()
        locale = self._locale if self._locale in locales or not locales else locales[0]
        start_ok = self._m.Connection.StartOk(
            self._client_properties, mechanism, self._credentials.response(), locale
        )
        self._write(encode_method(0, start_ok))
        self.state = ConnState.AWAIT_TUNE

    def _on_secure(self, method: Any) -> None:
        try:
            response = self._credentials.challenge(method.challenge)
        except AuthenticationError as exc:
            self.state = ConnState.CLOSED
            self._report_closed(exc)
            return
        self._write(encode_method(0, self._m.Connection.SecureOk(response)))

    def _on_tune(self, method: Any) -> None:
        self.channel_max = _lower(self._want_channel_max, method.channel_max) or 65535
        self.frame_max = _lower(self._want_frame_max, method.frame_max)
        if self.frame_max and self.frame_max < FRAME_MIN_SIZE:
            self._fail_protocol(0, f"the broker proposed frame_max {method.frame_max}, "
                                f"below the minimum {FRAME_MIN_SIZE}")
            return
        want = self._want_heartbeat
        if want is None:
            self.heartbeat = method.heartbeat
        elif want == 0:
            self.heartbeat = 0
        else:
            self.heartbeat = _lower(want, method.heartbeat)
        self._decoder.frame_max = self.frame_max
        # 0 only when neither side has a limit: a broker that proposed 65535 refuses 0.
        channel_max = _lower(self._want_channel_max, method.channel_max)
        self._write(encode_method(
            0, self._m.Connection.TuneOk(channel_max, self.frame_max, self.heartbeat)))
        self._write(encode_method(0, self._m.Connection.Open(self.virtual_host)))
        self.state = ConnState.AWAIT_OPEN_OK

    def _on_open_ok(self, method: Any) -> None:
        self.state = ConnState.OPEN
        self._events.append(ev.ConnectionOpened(
            server_properties=self.server_properties,
            channel_max=self.channel_max,
            frame_max=self.frame_max,
            heartbeat=self.heartbeat,
            known_hosts=getattr(method, "known_hosts", ""),
        ))

    def _on_close(self, method: Any) -> None:
        self._write(encode_method(0, self._m.Connection.CloseOk()))
        code, text = method.reply_code, method.reply_text
        name = self._method_name(method.class_id, method.method_id)
        error: BaseException
        if self.state is ConnState.AWAIT_TUNE or (
            self.state is ConnState.AWAIT_OPEN_OK and code == 403
        ):
            error = AuthenticationError(code, text, method.class_id, method.method_id, name)
        elif self.state is ConnState.AWAIT_OPEN_OK and code == NOT_ALLOWED:
            error = VirtualHostAccessRefused(code, text, method.class_id, method.method_id,
                                             name)
        else:
            error = connection_error(code, text, method.class_id, method.method_id, name)
        self.state = ConnState.CLOSED
        self._report_closed(error)

    def _on_blocked(self, method: Any) -> None:
        self.blocked = True
        self.blocked_reason = method.reason
        self._events.append(ev.ConnectionBlocked(reason=method.reason))

    def _on_unblocked(self, method: Any) -> None:
        self.blocked = False
        self.blocked_reason = ""
        self._events.append(ev.ConnectionUnblocked())

    def _on_update_secret_ok(self, method: Any) -> None:
        self._events.append(ev.MethodReceived(channel=0, method=method))

    def _method_name(self, class_id: int, method_id: int) -> str | None:
        cls = self.dialect.methods.get(class_id << 16 | method_id)
        return cls.NAME if cls is not None else None

    # -- internals: channels ----------------------------------------------------------------

    def _handle_channel_frame(self, frame: MethodFrame | HeaderFrame | BodyFrame
                              | HeartbeatFrame) -> None:
        ch = self._channels.get(frame.channel)
        if ch is None:
            what = frame.method.NAME if isinstance(frame, MethodFrame) else "content"
            self._fail_protocol(CHANNEL_ERROR, f"{what} on channel {frame.channel}, "
                                "which is not open")
            return
        if ch.state is _CH_CLOSING:
            self._handle_closing_channel(ch, frame)
            return
        if ch.content is not None:
            self._handle_content(ch, frame)
            return
        if not isinstance(frame, MethodFrame):
            self._fail_protocol(UNEXPECTED_FRAME, f"content frame on channel {ch.id} "
                                "without a method")
            return
        method = frame.method
        if method.CLASS_ID == 10 or not method.CLIENT_RECEIVES:
            self._unexpected(method, f"on channel {ch.id}")
            return
        awaiting = ch.awaiting
        if awaiting is not None and type(method) in awaiting.REPLIES:
            self._on_reply(ch, awaiting, method)
            return
        handler = _CHANNEL_TABLE.get((ch.state, method.NAME))
        if handler is None:
            self._unexpected(method, f"on channel {ch.id} in state {ch.state.value}")
            return
        handler(self, ch, method)

    def _on_reply(self, ch: _Channel, request: Method, reply: Any) -> None:
        ch.awaiting = None
        name = reply.NAME
        if name == "channel.open-ok":
            ch.state = ChannelState.OPEN
            self._events.append(ev.ChannelOpened(channel=ch.id))
        elif name == "basic.get-ok":
            self._start_content(ch, reply)
            return  # the reply is reported, and the queue moves, when the body is in
        else:
            if name == "basic.consume-ok":
                ch.consumers[reply.consumer_tag] = bool(getattr(request, "no_ack", False))
            elif name == "basic.cancel-ok":
                ch.consumers.pop(reply.consumer_tag, None)
            elif name == "basic.get-empty" and ch.get_no_ack:
                ch.get_no_ack.popleft()
            self._events.append(ev.MethodReceived(channel=ch.id, method=reply))
        self._send_queued(ch)

    def _on_channel_close(self, ch: _Channel, method: Any) -> None:
        self._write(encode_method(ch.id, self._m.Channel.CloseOk()))
        error = channel_error(method.reply_code, method.reply_text, method.class_id,
                              method.method_id,
                              self._method_name(method.class_id, method.method_id))
        if ch.state is not ChannelState.CLOSING:
            del self._channels[ch.id]
        if not ch.reported:
            ch.reported = True
            self._events.append(ev.ChannelClosed(channel=ch.id, error=error))

    def _on_flow(self, ch: _Channel, method: Any) -> None:
        ch.flow_active = bool(method.active)
        self._write(encode_method(ch.id, self._m.Channel.FlowOk(method.active)))
        self._events.append(ev.ChannelFlow(channel=ch.id, active=ch.flow_active))

    def _on_cancel(self, ch: _Channel, method: Any) -> None:
        ch.consumers.pop(method.consumer_tag, None)
        if not method.nowait:
            self._write(encode_method(ch.id, self._m.Basic.CancelOk(method.consumer_tag)))
        self._events.append(ev.MethodReceived(channel=ch.id, method=method))

    def _on_confirm(self, ch: _Channel, method: Any) -> None:
        if not ch.confirm_mode:
            self._unexpected(method, f"on channel {ch.id}, which is not in confirm mode")
            return
        tag = method.delivery_tag
        if method.multiple:
            tags = ch.unconfirmed.pop_through(tag) if tag else ch.unconfirmed.pop_all()
        elif ch.unconfirmed.discard(tag):
            tags = [tag]
        else:
            self._unexpected(method, f"for delivery tag {tag}, which was not published")
            return
        if ch.mandatory:
            tags = self._take_returned(ch, tags)
        if not tags:
            return
        if method.NAME == "basic.ack":
            self._events.append(ev.PublishAcked(channel=ch.id, delivery_tags=tuple(tags)))
        else:
            self._events.append(ev.PublishNacked(channel=ch.id, delivery_tags=tuple(tags)))

    def _match_return(self, ch: _Channel, method: Any, props: Properties, body: bytes) -> bool:
        """Tie a ``basic.return`` to the publish it belongs to; False if none fits.

        The broker returns a mandatory message before it acks that message, but it may ack
        other publishes in between (it acks routed messages only once their queues took
        them). The return is matched to the oldest unconfirmed, not yet returned, mandatory
        publish with the same exchange and routing key, and reported when its ack comes.
        """
        pending = ch.routes.get((method.exchange, method.routing_key))
        while pending:
            tag = pending.popleft()
            if tag in ch.mandatory and tag not in ch.returned:
                ch.returned[tag] = (method, props, body)
                return True
        return False

    def _take_returned(self, ch: _Channel, tags: list[int]) -> list[int]:
        """Settle the mandatory publishes among ``tags``: report the returned ones as
        `events.PublishReturned` and give back the rest."""
        kept: list[int] = []
        mandatory = ch.mandatory
        for tag in tags:
            route = mandatory.pop(tag, None)
            if route is None:
                kept.append(tag)
                continue
            pending = ch.routes.get(route)
            if pending is not None:
                while pending and pending[0] not in mandatory:
                    pending.popleft()
                if not pending:
                    del ch.routes[route]
            returned = ch.returned.pop(tag, None)
            if returned is None:
                kept.append(tag)
                continue
            ret, props, body = returned
            self._events.append(ev.PublishReturned(
                channel=ch.id, delivery_tag=tag, method=ret, properties=props, body=body))
        return kept

    def _handle_closing_channel(self, ch: _Channel, frame: Any) -> None:
        # After channel.close only close-ok and a crossing close matter; the rest is dropped
        # as the specification requires (the broker requeues what it was delivering).
        if not isinstance(frame, MethodFrame):
            return
        name = frame.method.NAME
        if name == "channel.close-ok":
            del self._channels[ch.id]
            if not ch.reported:
                ch.reported = True
                self._events.append(ev.ChannelClosed(
                    channel=ch.id, error=ChannelClosedByClient(REPLY_SUCCESS, "closed")))
        elif name == "channel.close":
            self._on_channel_close(ch, frame.method)

    # -- internals: content -----------------------------------------------------------------

    def _start_content(self, ch: _Channel, method: Method) -> None:
        # content_parts is always empty here: _finish_content leaves it so.
        ch.content = method
        ch.content_size = 0
        ch.content_received = 0
        # The usual case: header and body are here already, taken in one go.
        content = self._decoder.next_content(ch.id, method.CLASS_ID)
        if content is None:
            ch.content_props = None
            return
        ch.content_props, body = content
        self._finish_content(ch, body)

    def _handle_content(self, ch: _Channel, frame: Any) -> None:
        method = ch.content
        assert method is not None
        if ch.content_props is None:
            if not isinstance(frame, HeaderFrame):
                self._fail_protocol(UNEXPECTED_FRAME, f"expected a content header for "
                                    f"{method.NAME} on channel {ch.id}")
                return
            if frame.class_id != method.CLASS_ID:
                self._fail_protocol(UNEXPECTED_FRAME, f"content header of class "
                                    f"{frame.class_id} after {method.NAME}")
                return
            ch.content_props = frame.properties
            ch.content_size = frame.body_size
            if frame.body_size == 0:
                self._finish_content(ch, b"")
            return
        if not isinstance(frame, BodyFrame):
            self._fail_protocol(UNEXPECTED_FRAME, f"expected a body frame for {method.NAME} "
                                f"on channel {ch.id}")
            return
        payload = frame.payload
        received = ch.content_received + len(payload)
        if received == ch.content_size and not ch.content_parts:
            # The whole body in one frame, the usual case (a memoryview: one piece of a large
            # frame streamed by the decoder, see txpika.frames).
            self._finish_content(ch, payload if payload.__class__ is bytes else bytes(payload))
            return
        if received > ch.content_size:
            self._fail_protocol(UNEXPECTED_FRAME, f"body of {method.NAME} exceeds the "
                                f"{ch.content_size} bytes its header announced")
            return
        ch.content_parts.append(payload)
        ch.content_received = received
        if received == ch.content_size:
            body = b"".join(ch.content_parts)
            self._finish_content(ch, body)

    def _finish_content(self, ch: _Channel, body: bytes) -> None:
        method: Any = ch.content
        props = ch.content_props
        assert props is not None
        ch.content = None
        ch.content_props = None
        if ch.content_parts:
            ch.content_parts = []
        name = method.NAME
        if name in ("basic.deliver", "basic.get-ok"):
            if name == "basic.deliver":
                no_ack = ch.consumers.get(method.consumer_tag, False)
            else:
                no_ack = ch.get_no_ack.popleft() if ch.get_no_ack else False
            if not no_ack:
                try:
                    ch.unacked.add(method.delivery_tag)
                except ValueError:  # the broker reused or went back on a delivery tag
                    self._fail_protocol(COMMAND_INVALID, f"{name} with delivery tag "
                                        f"{method.delivery_tag}, not above an earlier one "
                                        f"on channel {ch.id}", method.CLASS_ID,
                                        method.METHOD_ID)
                    return
        elif name == "basic.return" and ch.confirm_mode and self._match_return(
            ch, method, props, body
        ):
            return
        self._events.append(_message_received(ch.id, method, props, body))
        if name == "basic.get-ok":
            self._send_queued(ch)

    # -- internals: setup -------------------------------------------------------------------

    def _build_client_properties(self, extra: Mapping[str, Any] | None,
                                 connection_name: str | None) -> dict[str, Any]:
        properties: dict[str, Any] = {
            "product": "txpika",
            "version": __version__,
            "platform": f"Python {platform.python_version()}",
            "information": "https://pypi.org/project/txpika/",
        }
        if self.dialect.extensions:
            properties["capabilities"] = dict(CAPABILITIES)
        if connection_name:
            properties["connection_name"] = connection_name
        if extra:
            properties.update(extra)
        return properties


def _lower(ours: int, theirs: int) -> int:
    """Negotiate a limit where 0 means none: the lower of the limits that are set."""
    if not ours:
        return theirs
    if not theirs:
        return ours
    return min(ours, theirs)


_ConnHandler = Callable[[Connection, Any], None]
_CONNECTION_TABLE: dict[tuple[ConnState, str], _ConnHandler] = {
    (ConnState.AWAIT_START, "connection.start"): Connection._on_start,
    (ConnState.AWAIT_START, "connection.close"): Connection._on_close,
    (ConnState.AWAIT_TUNE, "connection.secure"): Connection._on_secure,
    (ConnState.AWAIT_TUNE, "connection.tune"): Connection._on_tune,
    (ConnState.AWAIT_TUNE, "connection.close"): Connection._on_close,
    (ConnState.AWAIT_OPEN_OK, "connection.open-ok"): Connection._on_open_ok,
    (ConnState.AWAIT_OPEN_OK, "connection.close"): Connection._on_close,
    (ConnState.AWAIT_OPEN_OK, "connection.blocked"): Connection._on_blocked,
    (ConnState.AWAIT_OPEN_OK, "connection.unblocked"): Connection._on_unblocked,
    (ConnState.OPEN, "connection.close"): Connection._on_close,
    (ConnState.OPEN, "connection.blocked"): Connection._on_blocked,
    (ConnState.OPEN, "connection.unblocked"): Connection._on_unblocked,
    (ConnState.OPEN, "connection.update-secret-ok"): Connection._on_update_secret_ok,
}
"""(connection state, method received on channel 0) -> handler; anything else is 503."""

_ChanHandler = Callable[[Connection, _Channel, Any], None]
_CHANNEL_TABLE: dict[tuple[ChannelState, str], _ChanHandler] = {
    (ChannelState.OPENING, "channel.close"): Connection._on_channel_close,
    (ChannelState.OPEN, "channel.close"): Connection._on_channel_close,
    (ChannelState.OPEN, "channel.flow"): Connection._on_flow,
    (ChannelState.OPEN, "basic.cancel"): Connection._on_cancel,
    (ChannelState.OPEN, "basic.deliver"): Connection._start_content,
    (ChannelState.OPEN, "basic.return"): Connection._start_content,
    (ChannelState.OPEN, "basic.ack"): Connection._on_confirm,
    (ChannelState.OPEN, "basic.nack"): Connection._on_confirm,
}
"""(channel state, method received) -> handler, for methods that are not the reply the
channel awaits (replies are matched against the request's ``REPLIES``); anything else is
503. A channel in CLOSING state drops everything but close and close-ok."""

# Enum members as module globals: ``ConnState.CLOSED`` is an attribute lookup through the enum
# metaclass, paid per received frame.
_AWAIT_START: Final = ConnState.AWAIT_START
_CLOSED: Final = ConnState.CLOSED
_CLOSING: Final = ConnState.CLOSING
_CH_CLOSING: Final = ChannelState.CLOSING
