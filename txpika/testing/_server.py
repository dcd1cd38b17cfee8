"""The broker's side of AMQP 0-9-1 connections, sans-IO: bytes in, bytes out.

A `txpika.testing._core.BrokerCore` holds the users, the virtual hosts and the tuning a
broker offers (what a connection reads of it is `ConnectionHost`); each `ServerConnection`
is one client connection. A driver (the in-memory
transport or a TCP protocol) feeds it with `ServerConnection.receive_data`, writes what
`ServerConnection.data_to_send` returns, and closes its transport once `wants_close` is
true and everything was written. ``on_output`` is called when output appears outside of
`receive_data` (a delivery caused by another connection, a timer); drivers use it to write
it. No Twisted here: time is the broker's `txpika.testing._model.Clock`.

Handshake and errors follow RabbitMQ: a wrong protocol header is answered with the 0-9-1
header and the connection closes; refused credentials get ``connection.close`` 403
ACCESS_REFUSED (to clients that announce ``authentication_failure_close``, else the
connection just closes); a malformed frame 501, a frame for a channel that is not open 504,
content out of place 505, each with RabbitMQ's reply text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableSequence
from enum import Enum
from typing import Any, Final, Protocol, cast

from txpika import errors, spec
from txpika.frames import (
    FRAME_MIN_SIZE,
    NEED_DATA,
    BodyFrame,
    FrameDecodeError,
    FrameDecoder,
    HeaderFrame,
    HeartbeatFrame,
    MethodFrame,
    encode_content,
    encode_method,
)
from txpika.testing._channel import ServerChannel
from txpika.testing._model import CODE_NAMES, Clock, DelayedCall, Fault, credentials
from txpika.testing._vhost import VirtualHost

__all__ = ["ConnectionHost", "ServerConnection"]

PROTOCOL_HEADER: Final = spec.PROTOCOL_HEADER
HEARTBEAT: Final = b"\x08\x00\x00\x00\x00\x00\x00\xce"
#: How long the broker waits for close-ok after sending connection.close.
CLOSE_TIMEOUT: Final = 10.0
#: The largest message body accepted (RabbitMQ's default max_message_size, 128 MiB).
MAX_MESSAGE: Final = 134217728


class ConnectionHost(Protocol):
    """What a connection needs of its broker (`txpika.testing._core.BrokerCore`)."""

    @property
    def clock(self) -> Clock:
        """The broker's clock: heartbeats and the close timeout."""

    @property
    def users(self) -> Mapping[str, str]:
        """User name -> password, checked at start-ok."""

    @property
    def vhosts(self) -> Mapping[str, VirtualHost]:
        """The virtual hosts by name (the first one until connection.open)."""

    @property
    def channel_max(self) -> int:
        """The channel-max proposed in connection.tune."""

    @property
    def frame_max(self) -> int:
        """The largest frame the broker accepts, proposed in connection.tune."""

    @property
    def heartbeat(self) -> int:
        """The heartbeat interval proposed in connection.tune, in seconds."""

    @property
    def server_properties(self) -> Mapping[str, Any]:
        """The server properties sent in connection.start."""

    @property
    def blocked(self) -> str | None:
        """The reason while publishers are blocked, else None."""

    @property
    def connections(self) -> MutableSequence[ServerConnection]:
        """The broker's open connections; a connection removes itself when it ends."""


class State(Enum):
    HEADER = "header"
    START_OK = "start-ok"
    TUNE_OK = "tune-ok"
    OPEN_WAIT = "open"
    OPEN = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class ServerConnection:
    """The broker's side of one connection."""

    def __init__(self, core: ConnectionHost) -> None:
        #: The broker it serves.
        self.core = core
        #: Where the connection is in the handshake.
        self.state = State.HEADER
        #: The virtual host it opened (the first one until ``connection.open``).
        self.vhost: VirtualHost = next(iter(core.vhosts.values()))
        #: The user it logged in as (``""`` before).
        self.user = ""
        #: The client's properties from ``connection.start-ok``.
        self.client_properties: dict[str, Any] = {}
        #: Its open channels by number.
        self.channels: dict[int, ServerChannel] = {}
        #: The negotiated largest frame.
        self.frame_max = core.frame_max
        #: The negotiated heartbeat interval in seconds (0: none).
        self.heartbeat = 0
        #: True once the transport should close (after writing what is left).
        self.wants_close = False
        #: Called when output appears outside of receive_data.
        self.on_output: Callable[[], None] | None = None
        self._out: list[bytes | memoryview] = []
        self._header = b""
        self._decoder = FrameDecoder(spec.DIALECT, core.frame_max)
        self._content: dict[int, list[Any]] = {}  # channel -> [method, header, parts, left]
        self._receiving = False
        self._torn_down = False
        #: A publish read while the broker blocks publishers: reading stops there.
        self._held: MethodFrame | None = None
        self._blocked_sent = False
        self._timer: DelayedCall | None = None
        self._sent = self._received = core.clock.seconds()

    def __repr__(self) -> str:
        return f"<ServerConnection {self.state.value} channels={sorted(self.channels)}>"

    @property
    def is_open(self) -> bool:
        """True between connection.open-ok and any close."""
        return self.state is State.OPEN

    @property
    def capabilities(self) -> Mapping[str, Any]:
        """The capabilities the client announced in start-ok."""
        caps = self.client_properties.get("capabilities")
        return caps if isinstance(caps, Mapping) else {}

    # -- driver interface --------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client."""
        if self.state is State.CLOSED or self.wants_close or not data:
            return
        self._received = self.core.clock.seconds()
        self._receiving = True
        try:
            if self.state is State.HEADER:
                data = self._read_header(data)
                if not data:
                    return
            self._decoder.receive_data(data)
            if self._held is None:
                self._read_frames()
        finally:
            self._done_reading()

    def _done_reading(self) -> None:
        self._receiving = False
        for channel in list(self.channels.values()):
            if channel.has_confirms:
                channel.flush_confirms()

    def unblock(self) -> None:
        """The broker unblocked publishers: tell a blocked client, read what it sent."""
        if self._blocked_sent:
            self._blocked_sent = False
            self.send_method(0, spec.Connection.Unblocked())
        held, self._held = self._held, None
        if held is None or self.wants_close:
            return
        self._receiving = True
        try:
            self._handle(held)
            self._read_frames()
        finally:
            self._done_reading()
        self._wake()

    def data_to_send(self) -> bytes:
        """What to write to the client now."""
        out, self._out = self._out, []
        if out:
            self._sent = self.core.clock.seconds()
        return b"".join(out)

    def connection_lost(self) -> None:
        """The transport is gone."""
        self.state = State.CLOSED
        self.wants_close = True
        self._teardown()

    def close(self, reply_code: int, reply_text: str) -> None:
        """Close from the broker's side (``connection.close``), e.g. a forced close."""
        if self.state in (State.CLOSING, State.CLOSED):
            return
        if self.state is not State.OPEN:
            self._hang_up()
        else:
            fault = Fault(reply_code, "")
            fault.reply_text = reply_text[:255]
            self._close(fault)
        self._wake()

    # -- output ------------------------------------------------------------------------------

    def send_method(self, channel: int, method: Any) -> None:
        """Queue a method frame for the client."""
        self._out.append(encode_method(channel, method))
        self._wake()

    def send_content(self, channel: int, method: Any, properties: Any, body: bytes) -> None:
        """Queue a method with content (header and body frames) for the client."""
        self._out.extend(encode_content(channel, method, properties, body, self.frame_max))
        self._wake()

    def _wake(self) -> None:
        if not self._receiving and self.on_output is not None:
            self.on_output()

    # -- input -------------------------------------------------------------------------------

    def _read_header(self, data: bytes) -> bytes:
        data = self._header + data
        if len(data) < 8:
            self._header = data
            return b""
        header, rest = data[:8], data[8:]
        if header != PROTOCOL_HEADER:
            self._out.append(PROTOCOL_HEADER)
            self._hang_up()
            return b""
        self.state = State.START_OK
        self.send_method(0, spec.Connection.Start(
            0, 9, self.core.server_properties, b"PLAIN AMQPLAIN", b"en_US"))
        return rest

    def _read_frames(self) -> None:
        decoder = self._decoder
        while not self.wants_close:
            try:
                frame = decoder.next_frame()
            except FrameDecodeError as exc:
                name = CODE_NAMES.get(exc.reply_code, "ERROR")
                self._send_close(exc.reply_code, f"{name} - {exc.reply_text}", exc.class_id,
                                 exc.method_id)
                self._hang_up()  # nothing after broken bytes can be read
                return
            if frame is NEED_DATA:
                return
            if (self.core.blocked is not None and type(frame) is MethodFrame
                    and type(frame.method) is spec.Basic.Publish):
                # RabbitMQ stops reading from a connection that publishes while it blocks
                # publishers, and tells it so once.
                self._held = frame
                if self.capabilities.get("connection.blocked") and not self._blocked_sent:
                    self._blocked_sent = True
                    self.send_method(0, spec.Connection.Blocked(self.core.blocked))
                return
            self._handle(frame)

    def _handle(self, frame: Any) -> None:
        try:
            self._frame(frame)
        except Fault as fault:
            if self.state is State.START_OK:
                self._hang_up()
            else:
                self._close(fault)

    def _frame(self, frame: Any) -> None:
        if type(frame) is HeartbeatFrame:
            return
        if self.state is State.CLOSING:
            if type(frame) is MethodFrame and frame.channel == 0:
                if type(frame.method) is spec.Connection.CloseOk:
                    self._hang_up()
                elif type(frame.method) is spec.Connection.Close:
                    self.send_method(0, spec.Connection.CloseOk())
                    self._hang_up()
            return
        if type(frame) is MethodFrame:
            self._method(frame.channel, frame.method)
        else:
            self._content_frame(frame)

    def _method(self, number: int, method: Any) -> None:
        if number in self._content:
            raise Fault(errors.UNEXPECTED_FRAME, "expected content header for class 60, got "
                        "non content header frame instead", method.CLASS_ID, method.METHOD_ID)
        if not method.CLIENT_SENDS:
            raise Fault(errors.COMMAND_INVALID, f"{method.NAME} is sent by brokers, not "
                        "clients", method.CLASS_ID, method.METHOD_ID)
        if number == 0:
            self._connection_method(method)
            return
        if self.state is not State.OPEN:
            raise Fault(errors.COMMAND_INVALID, f"{method.NAME} before connection.open-ok",
                        method.CLASS_ID, method.METHOD_ID)
        if method.CLASS_ID == 10:
            raise Fault(errors.COMMAND_INVALID, "unimplemented method", method.CLASS_ID,
                        method.METHOD_ID)
        channel = self.channels.get(number)
        if type(method) is spec.Channel.Open:
            if channel is not None:
                raise Fault(errors.CHANNEL_ERROR, "second 'channel.open' seen",
                            method.CLASS_ID, method.METHOD_ID)
            self.channels[number] = ServerChannel(self, number)
            self.send_method(number, spec.Channel.OpenOk(b""))
            return
        if channel is None:
            raise Fault(errors.CHANNEL_ERROR, "expected 'channel.open'", method.CLASS_ID,
                        method.METHOD_ID)
        if channel.closing:
            if type(method) in (spec.Channel.CloseOk, spec.Channel.Close):
                del self.channels[number]
            return
        if type(method) is spec.Channel.Close:
            channel.teardown()
            del self.channels[number]
            self.send_method(number, spec.Channel.CloseOk())
            return
        if type(method) is spec.Channel.CloseOk:
            return
        if method.CONTENT:
            self._content[number] = [method, None, [], 0]
            return
        self._run(channel, method, lambda: channel.handle(method))

    def _run(self, channel: ServerChannel, method: Any, action: Callable[[], None]) -> None:
        try:
            action()
        except Fault as fault:
            if not fault.class_id:
                fault.class_id, fault.method_id = method.CLASS_ID, method.METHOD_ID
            if fault.hard:
                raise
            channel.teardown()
            channel.closing = True
            self.send_method(channel.number, spec.Channel.Close(
                fault.reply_code, fault.reply_text, fault.class_id, fault.method_id))

    def _content_frame(self, frame: HeaderFrame | BodyFrame) -> None:
        pending = self._content.get(frame.channel)
        if pending is None:
            raise Fault(errors.UNEXPECTED_FRAME,
                        "expected method frame, got non method frame instead")
        method = pending[0]
        if isinstance(frame, HeaderFrame):
            if pending[1] is not None:
                raise Fault(errors.UNEXPECTED_FRAME, "expected content body, got non "
                            "content body frame instead", method.CLASS_ID, method.METHOD_ID)
            if frame.body_size > MAX_MESSAGE:
                raise Fault(errors.FRAME_ERROR, f"message size {frame.body_size} is larger "
                            f"than configured max size {MAX_MESSAGE}")
            pending[1] = frame
            pending[3] = frame.body_size
        else:
            if pending[1] is None:
                raise Fault(errors.UNEXPECTED_FRAME, "expected content header for class 60, "
                            "got non content header frame instead", method.CLASS_ID,
                            method.METHOD_ID)
            pending[2].append(bytes(frame.payload))
            pending[3] -= len(frame.payload)
            if pending[3] < 0:
                raise Fault(errors.FRAME_ERROR, "content body larger than its header said",
                            method.CLASS_ID, method.METHOD_ID)
        if pending[3] == 0:
            del self._content[frame.channel]
            channel = self.channels.get(frame.channel)
            header = cast(HeaderFrame, pending[1])
            if channel is not None and not channel.closing:
                body = b"".join(pending[2])
                properties = cast(spec.BasicProperties, header.properties)
                self._run(channel, method, lambda: channel.publish(method, properties, body))

    # -- connection class --------------------------------------------------------------------

    def _connection_method(self, method: Any) -> None:
        kind = type(method)
        if kind is spec.Connection.StartOk and self.state is State.START_OK:
            self._start_ok(method)
        elif kind is spec.Connection.TuneOk and self.state is State.TUNE_OK:
            self._tune_ok(method)
        elif kind is spec.Connection.Open and self.state is State.OPEN_WAIT:
            self._open(method)
        elif kind is spec.Connection.Close:
            self._teardown()
            self.send_method(0, spec.Connection.CloseOk())
            self._hang_up()
        elif kind is spec.Connection.UpdateSecret and self.state is State.OPEN:
            self.send_method(0, spec.Connection.UpdateSecretOk())
        elif self.state is State.OPEN:
            raise Fault(errors.CHANNEL_ERROR, "unexpected method in connection state running",
                        method.CLASS_ID, method.METHOD_ID)
        else:
            raise Fault(errors.COMMAND_INVALID, f"unexpected {method.NAME} during the "
                        "handshake", method.CLASS_ID, method.METHOD_ID)

    def _start_ok(self, method: spec.Connection.StartOk) -> None:
        props = method.client_properties
        self.client_properties = dict(props) if isinstance(props, Mapping) else {}
        user, password = credentials(method.mechanism, method.response)
        if user is None:
            # RabbitMQ drops a connection that names a mechanism it does not offer.
            self._hang_up()
            return
        if self.core.users.get(user) != password or password is None:
            if self.capabilities.get("authentication_failure_close"):
                self._close(Fault(errors.ACCESS_REFUSED, "Login was refused using "
                                  f"authentication mechanism {method.mechanism}. For details "
                                  "see the broker logfile."))
            else:
                self._hang_up()
            return
        self.user = user
        self.state = State.TUNE_OK
        self.send_method(0, spec.Connection.Tune(
            self.core.channel_max, self.core.frame_max, self.core.heartbeat))

    def _tune_ok(self, method: spec.Connection.TuneOk) -> None:
        frame_max = method.frame_max
        if frame_max and frame_max < FRAME_MIN_SIZE:
            raise Fault(errors.NOT_ALLOWED, f"frame_max={frame_max} < {FRAME_MIN_SIZE} min size")
        if frame_max > self.core.frame_max:
            raise Fault(errors.NOT_ALLOWED,
                        f"frame_max={frame_max} > {self.core.frame_max} max size")
        self.frame_max = frame_max or self.core.frame_max
        self._decoder.frame_max = self.frame_max
        self.heartbeat = method.heartbeat
        self.state = State.OPEN_WAIT
        self._schedule()

    def _open(self, method: spec.Connection.Open) -> None:
        vhost = self.core.vhosts.get(method.virtual_host)
        if vhost is None:
            raise Fault(errors.NOT_ALLOWED, f"vhost {method.virtual_host} not found",
                        method.CLASS_ID, method.METHOD_ID)
        self.vhost = vhost
        self.state = State.OPEN
        self.send_method(0, spec.Connection.OpenOk(""))

    # -- closing -----------------------------------------------------------------------------

    def _close(self, fault: Fault) -> None:
        """A connection error: tell the client and wait for its close-ok."""
        self._send_close(fault.reply_code, fault.reply_text, fault.class_id, fault.method_id)
        self._teardown()
        self.state = State.CLOSING
        self._cancel_timer()
        self._timer = self.core.clock.callLater(CLOSE_TIMEOUT, self._hang_up_late)

    def _send_close(self, code: int, text: str, class_id: int, method_id: int) -> None:
        self.send_method(0, spec.Connection.Close(code, text[:255], class_id, method_id))

    def _hang_up(self) -> None:
        self.wants_close = True
        self._teardown()
        self.state = State.CLOSED
        self._cancel_timer()

    def _hang_up_late(self) -> None:
        self._timer = None
        self._hang_up()
        self._wake()

    def _teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        self._content.clear()
        channels, self.channels = self.channels, {}
        for channel in channels.values():
            channel.teardown()
        for vhost in self.core.vhosts.values():
            vhost.connection_closed(self)
        if self in self.core.connections:
            self.core.connections.remove(self)
        self._cancel_timer()

    # -- heartbeats --------------------------------------------------------------------------

    def _schedule(self) -> None:
        self._cancel_timer()
        if self.heartbeat and not self.wants_close:
            self._timer = self.core.clock.callLater(self.heartbeat / 2, self._beat)

    def _beat(self) -> None:
        self._timer = None
        now = self.core.clock.seconds()
        if now - self._received >= 2 * self.heartbeat:
            self._hang_up()  # RabbitMQ closes the socket: "missed heartbeats from client"
            self._wake()
            return
        if now - self._sent >= self.heartbeat / 2 and not self._out:
            self.send_method_raw(HEARTBEAT)
        self._schedule()

    def send_method_raw(self, data: bytes) -> None:
        """Queue already encoded bytes (a heartbeat) for the client."""
        self._out.append(data)
        self._wake()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
