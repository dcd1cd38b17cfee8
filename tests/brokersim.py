"""A scripted broker for the sans-IO core: bytes in, bytes out, with the real codec.

Not a test module. A `BrokerSim` sits on the other side of a `txpika.connection.Connection`:

* ``sim.send(channel, method)`` encodes a server method as a frame, feeds it to the core and
  returns every event the core then produces (pulled until ``NEED_DATA``);
* ``sim.send_content(...)`` does the same for a method with content (header and body frames);
* ``sim.read()`` decodes what the client wrote (the 8-byte protocol header first, once) and
  returns the frames; ``sim.commands()`` groups them into `Command` (method, properties,
  body); ``sim.expect(...)`` asserts the exact methods written.

`open_connection` drives a whole handshake, checking every field the client sends, and returns
``(core, sim)`` with the connection open and nothing left to read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from txpika import events as ev
from txpika import spec
from txpika._specbase import Dialect, Method, Properties
from txpika.auth import AMQPlainCredentials, Credentials, ExternalCredentials, PlainCredentials
from txpika.connection import CAPABILITIES, NEED_DATA, Connection, ConnState
from txpika.errors import ProtocolError
from txpika.frames import (
    BodyFrame,
    FrameDecoder,
    HeaderFrame,
    HeartbeatFrame,
    MethodFrame,
    encode_body,
    encode_header,
    encode_method,
)

__all__ = [
    "EXPECTED_CAPABILITIES",
    "BrokerSim",
    "Command",
    "drain",
    "normalize",
    "open_connection",
]

#: What the client must announce in client_properties["capabilities"] (0-9-1). Spelled out
#: here rather than imported, so that a change to txpika's table is noticed.
EXPECTED_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}
assert dict(CAPABILITIES) == EXPECTED_CAPABILITIES

SERVER_PROPERTIES = {
    "product": "BrokerSim",
    "version": "0.0",
    "capabilities": {name: True for name in EXPECTED_CAPABILITIES},
}


@dataclass(frozen=True)
class Command:
    """One method the client wrote, with its content if it has any."""

    channel: int
    method: Method
    properties: Properties | None = None
    body: bytes | None = None
    #: Payload sizes of the body frames, in order (content only).
    body_frames: tuple[int, ...] = ()


def normalize(method: Method) -> Method:
    """``method`` with every ``None`` argument (an absent field table) as ``{}``, the way it
    decodes."""
    changes = {f.name: {} for f in dataclasses.fields(method)  # type: ignore[arg-type]
               if getattr(method, f.name) is None}
    return dataclasses.replace(method, **changes) if changes else method  # type: ignore


def drain(core: Connection) -> list[Any]:
    """Every event the core has for now."""
    out = []
    while True:
        event = core.next_event()
        if event is NEED_DATA:
            return out
        out.append(event)


class BrokerSim:
    """The broker's side of one connection."""

    def __init__(self, core: Connection) -> None:
        self.core = core
        self.dialect: Dialect = core.dialect
        self.m = self.dialect.module
        self.decoder = FrameDecoder(self.dialect, frame_max=0)
        self.protocol_header: bytes | None = None
        self._pending = b""

    # -- server -> client --------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Any]:
        """Raw bytes to the client; returns the events they produced."""
        self.core.receive_data(data)
        return drain(self.core)

    def send(self, channel: int, method: Method) -> list[Any]:
        """One method frame to the client; returns the events."""
        return self.feed(encode_method(channel, method))

    def content_bytes(
        self,
        channel: int,
        method: Method,
        body: bytes = b"",
        properties: Properties | None = None,
        chunks: Iterable[int] | None = None,
        body_size: int | None = None,
        class_id: int | None = None,
    ) -> bytes:
        """Method, header and body frames for content from the server.

        ``chunks`` gives the body frame sizes (default: one frame, none for an empty body);
        ``body_size`` overrides the size announced in the header; ``class_id`` the header's
        class (by picking that class's properties).
        """
        if properties is None:
            properties = self.dialect.properties[class_id or 60]()
        size = len(body) if body_size is None else body_size
        out = [encode_method(channel, method), encode_header(channel, size, properties)]
        out.extend(self.body_bytes(channel, body, chunks))
        return b"".join(out)

    @staticmethod
    def body_bytes(channel: int, body: bytes, chunks: Iterable[int] | None = None) -> list[bytes]:
        if chunks is None:
            chunks = [len(body)] if body else []
        out = []
        pos = 0
        for size in chunks:
            out.append(b"".join(bytes(p) for p in encode_body(channel, body[pos:pos + size])))
            pos += size
        assert pos == len(body), "chunks must cover the body"
        return out

    def send_content(self, channel: int, method: Method, body: bytes = b"",
                     properties: Properties | None = None, **kw: Any) -> list[Any]:
        return self.feed(self.content_bytes(channel, method, body, properties, **kw))

    # -- client -> server --------------------------------------------------------------------

    def read(self) -> list[Any]:
        """Every frame the client wrote since the last read (header checked separately)."""
        data = self.core.data_to_send()
        if self.protocol_header is None:
            data = self._pending + data
            if len(data) < 8:
                self._pending = data
                return []
            self.protocol_header, data = data[:8], data[8:]
        self.decoder.receive_data(data)
        frames = []
        while True:
            frame = self.decoder.next_frame()
            if frame is NEED_DATA:
                break
            frames.append(frame)
        assert self.decoder.buffered == 0, "the client wrote a partial frame"
        return frames

    def commands(self) -> list[Command]:
        """What the client wrote, as methods with their content assembled."""
        out: list[Command] = []
        pending: dict[int, list[Any]] = {}  # channel -> [method, header, parts]
        for frame in self.read():
            if isinstance(frame, HeartbeatFrame):
                out.append(Command(0, HeartbeatMarker()))
                continue
            if isinstance(frame, MethodFrame):
                assert frame.channel not in pending, "method in the middle of content"
                if frame.method.CONTENT:
                    pending[frame.channel] = [frame.method, None, []]
                else:
                    out.append(Command(frame.channel, frame.method))
                continue
            state = pending[frame.channel]
            if isinstance(frame, HeaderFrame):
                assert state[1] is None, "two content headers"
                assert frame.class_id == state[0].CLASS_ID
                state[1] = frame
            else:
                assert isinstance(frame, BodyFrame)
                assert state[1] is not None, "body before header"
                state[2].append(frame.payload)
            header: HeaderFrame | None = state[1]
            if header is not None and sum(map(len, state[2])) >= header.body_size:
                body = b"".join(state[2])
                assert len(body) == header.body_size, "body larger than announced"
                out.append(Command(frame.channel, state[0], header.properties, body,
                                   tuple(len(p) for p in state[2])))
                del pending[frame.channel]
        assert not pending, "the client wrote incomplete content"
        return out

    def methods(self) -> list[tuple[int, Method]]:
        """(channel, method) for each method the client wrote; content must not be present."""
        out = []
        for command in self.commands():
            assert command.body is None, f"unexpected content with {command.method}"
            out.append((command.channel, command.method))
        return out

    def expect(self, *expected: tuple[int, Method]) -> None:
        """Assert the client wrote exactly these methods, in this order (a table given as
        ``None`` compares equal to the empty table it is sent as)."""
        got = self.methods()
        assert got == [(channel, normalize(method)) for channel, method in expected]

    def expect_nothing(self) -> None:
        data = self.core.data_to_send()
        assert data == b"", f"the client wrote {data!r}"

    def expect_protocol_close(self, events: list[Any], code: int, class_id: int = 0,
                              method_id: int = 0, text: str | None = None,
                              state: ConnState = ConnState.CLOSING) -> ProtocolError:
        """The client found a protocol error: it wrote connection.close with ``code`` and
        reported one ConnectionClosed carrying the ProtocolError. Returns the error.

        ``state`` is where the core then stands: CLOSING (awaiting close-ok), or CLOSED when
        the bytes could not be decoded (nothing after them can be: the driver hangs up)."""
        assert len(events) == 1, events
        (event,) = events
        assert isinstance(event, ev.ConnectionClosed)
        error = event.error
        assert type(error) is ProtocolError, repr(error)
        assert (error.reply_code, error.class_id, error.method_id) == (code, class_id,
                                                                       method_id)
        if text is not None:
            assert text in error.reply_text, error.reply_text
        written = self.methods()
        assert len(written) == 1, written
        channel, close = written[0]
        assert channel == 0
        assert type(close) is self.m.Connection.Close
        assert (close.reply_code, close.class_id, close.method_id) == (code, class_id,
                                                                       method_id)
        assert close.reply_text == error.reply_text[:255]
        assert self.core.state is state
        return error

    # -- common exchanges ---------------------------------------------------------------------

    def open_channel(self, channel: int | None = None) -> int:
        """Open a channel through the core and answer it; returns its number."""
        number = self.core.open_channel(channel)
        self.expect((number, self.m.Channel.Open()))
        open_ok = (self.m.Channel.OpenOk() if self.dialect.name == "0-8"
                   else self.m.Channel.OpenOk(b""))
        assert self.send(number, open_ok) == [ev.ChannelOpened(channel=number)]
        return number

    def select_confirms(self, channel: int) -> None:
        self.core.send_method(channel, self.m.Confirm.Select())
        self.expect((channel, self.m.Confirm.Select()))
        events = self.send(channel, self.m.Confirm.SelectOk())
        assert events == [ev.MethodReceived(channel=channel, method=self.m.Confirm.SelectOk())]

    def consume(self, channel: int, tag: str, no_ack: bool = False) -> None:
        method = self.m.Basic.Consume(queue="q", consumer_tag=tag, no_ack=no_ack)
        self.core.send_method(channel, method)
        self.expect((channel, method))
        reply = self.m.Basic.ConsumeOk(tag)
        assert self.send(channel, reply) == [ev.MethodReceived(channel=channel, method=reply)]

    def deliver(self, channel: int, tag: str, delivery_tag: int, body: bytes = b"x") -> Any:
        method = self.m.Basic.Deliver(tag, delivery_tag, False, "", "q")
        events = self.send_content(channel, method, body)
        assert len(events) == 1 and isinstance(events[0], ev.MessageReceived), events
        return events[0]


class HeartbeatMarker:
    """Stands for a heartbeat frame in `BrokerSim.commands`."""

    NAME = "heartbeat"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeartbeatMarker)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "HEARTBEAT"


def open_connection(
    *,
    dialect: Dialect = spec.DIALECT,
    credentials: Credentials | None = None,
    server_tune: tuple[int, int, int] = (2047, 131072, 60),
    expect_tune_ok: tuple[int, int, int] | None = None,
    mechanisms: bytes = b"PLAIN AMQPLAIN EXTERNAL",
    server_properties: Mapping[str, Any] | None = None,
    **kw: Any,
) -> tuple[Connection, BrokerSim]:
    """Create a core, drive it through the whole handshake and return ``(core, sim)``.

    Checks the protocol header, every start-ok field (mechanism, response, the client
    properties and, for 0-9-1, the capabilities), the tune-ok values (``expect_tune_ok``,
    by default what the broker proposed) and the virtual host in connection.open.
    """
    core = Connection(dialect=dialect, credentials=credentials, **kw)
    sim = BrokerSim(core)
    m = dialect.module
    is_08 = dialect.name == "0-8"
    core.initiate()
    assert core.state is ConnState.AWAIT_START
    assert sim.read() == []
    assert sim.protocol_header == (b"AMQP\x01\x01\x08\x00" if is_08 else b"AMQP\x00\x00\x09\x01")

    version = (8, 0) if is_08 else (0, 9)
    props = dict(SERVER_PROPERTIES if server_properties is None else server_properties)
    assert sim.send(0, m.Connection.Start(*version, props, mechanisms, b"en_US")) == []
    assert core.state is ConnState.AWAIT_TUNE
    assert core.server_properties == props
    ((channel, start_ok),) = sim.methods()
    assert channel == 0 and type(start_ok) is m.Connection.StartOk
    creds = credentials or PlainCredentials("guest", "guest")
    assert start_ok.mechanism == creds.mechanism
    if type(creds) is PlainCredentials:
        assert start_ok.response == b"\0" + creds.username.encode() + b"\0" + (
            creds._password.encode())
    elif isinstance(creds, AMQPlainCredentials):
        from txpika._wire import decode_table
        from txpika._wire_encode import encode_table

        table, _end = decode_table(len(start_ok.response).to_bytes(4, "big")
                                  + start_ok.response, 0)
        assert table == {"LOGIN": creds.username, "PASSWORD": creds._password}
        assert start_ok.response == encode_table(table)[4:]
    elif isinstance(creds, ExternalCredentials):
        assert start_ok.response == b""
    assert start_ok.locale == kw.get("locale", "en_US")
    client_props = start_ok.client_properties
    assert client_props["product"] == "txpika"
    assert isinstance(client_props["version"], str)
    assert client_props["platform"].startswith("Python ")
    assert "information" in client_props
    if is_08:
        assert "capabilities" not in client_props
    else:
        assert client_props["capabilities"] == EXPECTED_CAPABILITIES
    if kw.get("connection_name"):
        assert client_props["connection_name"] == kw["connection_name"]
    for key, value in (kw.get("client_properties") or {}).items():
        assert client_props[key] == value

    assert sim.send(0, m.Connection.Tune(*server_tune)) == []
    assert core.state is ConnState.AWAIT_OPEN_OK
    (c1, tune_ok), (c2, open_) = sim.methods()
    assert (c1, c2) == (0, 0)
    assert tune_ok == m.Connection.TuneOk(*(expect_tune_ok or server_tune))
    assert type(open_) is m.Connection.Open
    assert open_.virtual_host == kw.get("virtual_host", "/")
    sim.decoder.frame_max = core.frame_max  # the client must now keep to it

    events = sim.send(0, m.Connection.OpenOk(""))
    assert events == [ev.ConnectionOpened(
        server_properties=props, channel_max=core.channel_max, frame_max=core.frame_max,
        heartbeat=core.heartbeat, known_hosts="")]
    assert core.state is ConnState.OPEN and core.is_open
    sim.expect_nothing()
    return core, sim
