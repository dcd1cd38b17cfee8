"""The sans-IO AMQP connection core: bytes in, events out, bytes out.

Theory of operation
-------------------
A driver (the Twisted protocol, the blocking adapter, or a test) owns the socket and the
clock. It calls `Connection.initiate` once, writes `Connection.data_to_send` to the peer,
feeds whatever the peer sends to `Connection.receive_data`, and pulls events with
`Connection.next_event` until it returns `NEED_DATA`. Events are taken one at a time, so a
callback run for one event sees the core exactly as that event left it. The driver calls
`Connection.heartbeat_tick` with the current time whenever the time it returned comes.

The connection moves through `ConnState`, each channel through `ChannelState`; the tables in
`txpika._states` say what may be sent and received in each state, in both directions, and
anything a peer sends outside them is a protocol error. On a protocol error the core sends
``connection.close`` with the reply code (501-505), emits `events.ConnectionClosed` with a
`txpika.errors.ProtocolError`, and discards the peer's input until ``close-ok``. Channel 0
(the handshake, blocking, closing) is handled here, every other channel by its
`txpika._core_channel.CoreChannel`.

Requests are made with the ``open_channel``, ``send_method``, ``basic_publish``,
``basic_ack``/``nack``/``reject``, ``close_channel`` and ``close`` methods. Local misuse
raises `txpika.errors.UsageError` (or `txpika.errors.FlowControlError`) before anything is
queued for sending. On each channel only one synchronous request is on the wire at a time;
later ones wait in order and are written as replies arrive. Methods without a reply (publish,
ack, ...) are written at once.

The core imports nothing from Twisted and reads no clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

from txpika import _handshake, spec
from txpika import events as ev
from txpika._content import DEFAULT_MAX_MESSAGE_SIZE, PublishEncoder
from txpika._core_channel import CoreChannel, method_name, unexpected_text
from txpika._core_requests import CoreRequests
from txpika._handshake import CAPABILITIES
from txpika._specbase import Dialect, Method
from txpika._states import (
    CONNECTION_RECEIVES,
    CONNECTION_SENDS,
    ChannelState,
    ConnState,
    Send,
    for_dialect,
)
from txpika.auth import Credentials, PlainCredentials
from txpika.errors import (
    CHANNEL_ERROR,
    COMMAND_INVALID,
    NOT_ALLOWED,
    UNEXPECTED_FRAME,
    AuthenticationError,
    ConnectionClosedByClient,
    HeartbeatTimeout,
    UsageError,
    VirtualHostAccessRefused,
    connection_error,
)
from txpika.frames import (
    FRAME_MIN_SIZE,
    HEARTBEAT,
    NEED_DATA,
    FrameDecodeError,
    FrameDecoder,
    HeartbeatFrame,
    MethodFrame,
    _NeedData,
    encode_method,
)

__all__ = ["CAPABILITIES", "NEED_DATA", "ChannelState", "ConnState", "Connection",
           "VirtualHostAccessRefused"]

__version__ = "0.1.0.dev0"

_IDLE: Final = ConnState.IDLE
_AWAIT_START: Final = ConnState.AWAIT_START
_AWAIT_TUNE: Final = ConnState.AWAIT_TUNE
_AWAIT_OPEN_OK: Final = ConnState.AWAIT_OPEN_OK
_CLOSING: Final = ConnState.CLOSING
_CLOSED: Final = ConnState.CLOSED
_CH_CLOSED: Final = ChannelState.CLOSED


class Connection(CoreRequests):
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
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        """Set up the core; nothing is sent until `initiate`.

        ``channel_max`` and ``frame_max`` are this client's limits (0: none); the tuned value
        is the lower of ours and the broker's. ``heartbeat`` is the interval in seconds we ask
        for: ``None`` takes the broker's proposal, 0 turns heartbeats off, any other value is
        lowered to the broker's proposal when that is smaller and not 0.
        ``max_message_size`` is the largest message body accepted (0: any): a delivery,
        ``basic.get`` reply or return whose header announces more closes its channel with
        311 before the body is buffered, and the channel's `events.ChannelClosed` carries
        `txpika.errors.MessageTooLarge`.
        """
        if max_message_size < 0:
            raise UsageError(f"max_message_size {max_message_size} is negative")
        if frame_max and frame_max < FRAME_MIN_SIZE:
            raise UsageError(f"frame_max {frame_max} is below the minimum {FRAME_MIN_SIZE}")
        if not 0 <= channel_max <= 65535:
            raise UsageError(f"channel_max {channel_max} is outside 0..65535")
        if heartbeat is not None and not 0 <= heartbeat <= 65535:
            raise UsageError(f"heartbeat {heartbeat} is outside 0..65535")
        #: The AMQP dialect spoken (`txpika._specbase.Dialect`).
        self.dialect = dialect
        self._m = dialect.module
        #: The virtual host opened.
        self.virtual_host = virtual_host
        self._handshake = _handshake.Handshake(
            dialect, credentials or PlainCredentials("guest", "guest"), virtual_host, locale,
            _handshake.client_properties(dialect, __version__, client_properties,
                                         connection_name),
            channel_max, frame_max, heartbeat)
        #: Where the handshake or the connection is (`txpika.connection.ConnState`).
        self.state = ConnState.IDLE
        #: The broker's ``server-properties``, once ``connection.start`` arrived.
        self.server_properties: Mapping[str, Any] = {}
        #: The negotiated most channels (0 until tuned).
        self.channel_max = 0
        #: The negotiated largest frame (0 until tuned).
        self.frame_max = 0
        #: The largest message body accepted (0: any); see `txpika.errors.MessageTooLarge`.
        self.max_message_size = max_message_size
        #: The negotiated heartbeat interval in seconds (0: none).
        self.heartbeat = 0
        #: True while the broker blocks publishers (``connection.blocked``).
        self.blocked = False
        #: The broker's reason for blocking, or ``""``.
        self.blocked_reason = ""
        self._decoder = FrameDecoder(dialect)
        self._out: list[bytes | memoryview] = []
        self._events: deque[ev.Event] = deque()
        self._channels: dict[int, CoreChannel] = {}
        self._receives = _connection_table(dialect)
        self._close_error: BaseException | None = None
        self._closed_reported = False
        self._received = False
        self._sent = False
        self._last_received: float | None = None
        self._last_sent: float | None = None
        self._encoder = PublishEncoder(dialect)

    # -- driver side ------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the protocol header; call once, right after the transport connects."""
        if self.state is not _IDLE:
            raise UsageError("initiate() was already called")
        self._write(self.dialect.protocol_header)
        self.state = CONNECTION_SENDS[(_IDLE, Send.INITIATE)]

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
        channels = self._channels
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
                if frame.__class__ is _NeedData:
                    return NEED_DATA
                number = frame.channel  # type: ignore[union-attr]
                if state is _CLOSING:
                    self._handle_while_closing(frame)
                elif number:  # (the decoder refuses a heartbeat on a channel)
                    ch = channels.get(number)
                    if ch is None:
                        what = (frame.method.NAME if isinstance(frame, MethodFrame)
                                else "content")
                        self._fail_protocol(CHANNEL_ERROR, f"{what} on channel {number}, "
                                            "which is not open")
                    else:
                        ch.receive(frame)
                        if ch.state is _CH_CLOSED:
                            channels.pop(number, None)
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
        if self.state is _CLOSED:
            return
        if self.state is _CLOSING and self._close_error is not None:
            # We were closing anyway (by request or after a protocol error): that is why.
            error = self._close_error
        elif self.state is _AWAIT_TUNE:
            error = AuthenticationError(
                403, "the broker closed the connection during authentication: "
                "check the user name, password and mechanism"
            )
        self.state = _CLOSED
        self._report_closed(error)

    def abort(self, error: BaseException) -> None:
        """The driver ends the connection itself (a handshake that took too long): emits
        `events.ConnectionClosed` with ``error``, unless already closed. The driver then
        drops the transport; nothing more is sent."""
        if self.state is not _CLOSED:
            self.state = _CLOSED
            self._out.clear()
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
        if not interval or self.state in (_CLOSED, _IDLE):
            return None
        if self._received or reading_paused or self._last_received is None:
            self._last_received = now
            self._received = False
        if self._sent or self._last_sent is None:
            self._last_sent = now
            self._sent = False
        if now - self._last_received >= 2 * interval:
            self.state = _CLOSED
            self._out.clear()
            self._report_closed(HeartbeatTimeout(interval))
            return None
        if now - self._last_sent >= interval:
            self._out.append(HEARTBEAT)
            self._last_sent = now
        return now + interval / 2

    # -- closing ----------------------------------------------------------------------------

    def _handle_while_closing(self, frame: Any) -> None:
        # After sending connection.close, only close-ok (or a crossing close) matters.
        if isinstance(frame, MethodFrame) and not frame.channel:
            name = frame.method.NAME
            if name == "connection.close-ok":
                self.state = _CLOSED
                self._report_closed(self._close_error or ConnectionClosedByClient(200, ""))
            elif name == "connection.close":
                self._write(encode_method(0, self._m.Connection.CloseOk()))
                self.state = _CLOSED
                self._report_closed(self._close_error or ConnectionClosedByClient(200, ""))

    # -- channel 0 ---------------------------------------------------------------

    def _handle_connection_frame(self, frame: Any) -> None:
        if frame.__class__ is HeartbeatFrame:
            return
        if frame.__class__ is not MethodFrame:
            self._fail_protocol(UNEXPECTED_FRAME, "content frame on channel 0")
            return
        method = frame.method
        state = self.state
        entry = self._receives.get((state, type(method)))
        if entry is None:
            self._fail_protocol(
                COMMAND_INVALID, unexpected_text(method, f"in connection state {state.value}"),
                method.CLASS_ID, method.METHOD_ID)
            return
        handler, after = entry
        try:
            handler(self, method)
        except _handshake.HandshakeFailed as exc:  # refused: nothing more to send
            self.state = _CLOSED
            self._report_closed(exc.error)
            return
        if self.state is state:  # the handler did not end the connection
            self.state = after

    def _on_start(self, method: Any) -> None:
        self.server_properties = method.server_properties or {}
        self._write(self._handshake.start_ok(method))

    def _on_secure(self, method: Any) -> None:
        self._write(self._handshake.secure_ok(method))

    def _on_tune(self, method: Any) -> None:
        tuned, frames = self._handshake.tune_ok(method)
        self.channel_max = tuned.channel_max
        self.frame_max = self._decoder.frame_max = self._encoder.frame_max = tuned.frame_max
        self.heartbeat = tuned.heartbeat
        self._write(frames)

    def _on_open_ok(self, method: Any) -> None:
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
        name = method_name(self.dialect, method.class_id, method.method_id)
        error: BaseException
        if self.state is _AWAIT_TUNE or (self.state is _AWAIT_OPEN_OK and code == 403):
            error = AuthenticationError(code, text, method.class_id, method.method_id, name)
        elif self.state is _AWAIT_OPEN_OK and code == NOT_ALLOWED:
            error = VirtualHostAccessRefused(code, text, method.class_id, method.method_id,
                                             name)
        else:
            error = connection_error(code, text, method.class_id, method.method_id, name)
        self.state = _CLOSED
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


_Handler = Callable[[Connection, Any], None]

#: The handler of each method of `txpika._states.CONNECTION_RECEIVES`.
_HANDLERS: dict[type[Method], _Handler] = {
    spec.Connection.Start: Connection._on_start,
    spec.Connection.Secure: Connection._on_secure,
    spec.Connection.Tune: Connection._on_tune,
    spec.Connection.OpenOk: Connection._on_open_ok,
    spec.Connection.Close: Connection._on_close,
    spec.Connection.Blocked: Connection._on_blocked,
    spec.Connection.Unblocked: Connection._on_unblocked,
    spec.Connection.UpdateSecretOk: Connection._on_update_secret_ok,
}

_TABLES: dict[str, dict[tuple[ConnState, type[Method]], tuple[_Handler, ConnState]]] = {}


def _connection_table(dialect: Dialect
                      ) -> dict[tuple[ConnState, type[Method]], tuple[_Handler, ConnState]]:
    """`CONNECTION_RECEIVES` with its handlers, keyed by ``dialect``'s classes (cached)."""
    table = _TABLES.get(dialect.name)
    if table is None:
        own = for_dialect({key: (_HANDLERS[key[1]], after)
                           for key, after in CONNECTION_RECEIVES.items()}, dialect)
        table = _TABLES[dialect.name] = own
    return table
