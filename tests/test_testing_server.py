"""The broker's side of a connection, sans-IO: bytes in, bytes out (txpika.testing).

A test client here is txpika's own codec: it encodes client methods and decodes what the
ServerConnection writes. No Twisted transport, only a task.Clock for time.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from twisted.internet.task import Clock

from txpika import spec
from txpika.frames import (
    NEED_DATA,
    FrameDecoder,
    HeartbeatFrame,
    encode_content,
    encode_header,
    encode_method,
)
from txpika.testing import BrokerCore, ServerConnection

CAPS = {"capabilities": {"authentication_failure_close": True}}


class Client:
    def __init__(self, heartbeat: int = 0) -> None:
        self.clock = Clock()
        self.core = BrokerCore(self.clock, {"guest": "guest"}, ["/"])
        self.server: ServerConnection = self.core.open_connection()
        self.decoder = FrameDecoder(spec.DIALECT, 0)
        self.heartbeat = heartbeat

    def send(self, *methods: tuple[int, Any] | bytes) -> list[Any]:
        for item in methods:
            data = item if isinstance(item, bytes) else encode_method(*item)
            self.server.receive_data(data)
        return self.read()

    def read(self) -> list[Any]:
        data = self.server.data_to_send()
        if data.startswith(b"AMQP"):
            return [data]
        self.decoder.receive_data(data)
        out = []
        while (frame := self.decoder.next_frame()) is not NEED_DATA:
            out.append(frame if isinstance(frame, HeartbeatFrame) else frame.method)
        return out

    def open(self) -> None:
        [start] = self.send(b"AMQP\x00\x00\x09\x01")
        assert type(start) is spec.Connection.Start
        assert start.mechanisms == b"PLAIN AMQPLAIN"
        assert start.server_properties["capabilities"]["publisher_confirms"] is True
        [tune] = self.send((0, spec.Connection.StartOk(CAPS, "PLAIN", b"\0guest\0guest")))
        assert tune == spec.Connection.Tune(2047, 131072, 60)
        replies = self.send((0, spec.Connection.TuneOk(2047, 131072, self.heartbeat)),
                            (0, spec.Connection.Open("/")))
        assert replies == [spec.Connection.OpenOk("")]
        assert self.send((1, spec.Channel.Open())) == [spec.Channel.OpenOk(b"")]


def test_handshake_and_a_clean_close() -> None:
    client = Client()
    client.open()
    assert client.server.is_open and len(client.core.connections) == 1
    assert client.send((0, spec.Connection.Close(200, "bye", 0, 0))) == [
        spec.Connection.CloseOk()]
    assert client.server.wants_close
    assert client.core.connections == []


def test_header_sent_in_pieces() -> None:
    client = Client()
    assert client.send(b"AMQP\x00") == []
    [start] = client.send(b"\x00\x09\x01")
    assert type(start) is spec.Connection.Start


def test_wrong_header_is_answered_with_ours_and_a_hang_up() -> None:
    client = Client()
    assert client.send(b"HTTP/1.1") == [b"AMQP\x00\x00\x09\x01"]
    assert client.server.wants_close


@pytest.mark.parametrize("caps", [CAPS, {}], ids=["with capability", "without"])
def test_wrong_password(caps: dict[str, Any]) -> None:
    client = Client()
    client.send(b"AMQP\x00\x00\x09\x01")
    replies = client.send((0, spec.Connection.StartOk(caps, "PLAIN", b"\0guest\0wrong")))
    if caps:
        [close] = replies
        assert (close.reply_code, close.reply_text) == (
            403, "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
            "For details see the broker logfile.")
        assert not client.server.wants_close  # it waits for close-ok, as RabbitMQ does
        client.send((0, spec.Connection.CloseOk()))
    else:
        assert replies == []
    assert client.server.wants_close


def test_unknown_mechanism_hangs_up() -> None:
    client = Client()
    client.send(b"AMQP\x00\x00\x09\x01")
    assert client.send((0, spec.Connection.StartOk(CAPS, "EXTERNAL", b""))) == []
    assert client.server.wants_close


def test_tune_ok_above_the_broker_frame_max() -> None:
    client = Client()
    client.send(b"AMQP\x00\x00\x09\x01")
    client.send((0, spec.Connection.StartOk(CAPS, "PLAIN", b"\0guest\0guest")))
    [close] = client.send((0, spec.Connection.TuneOk(2047, 1 << 20, 0)))
    assert (close.reply_code, close.reply_text) == (
        530, "NOT_ALLOWED - frame_max=1048576 > 131072 max size")


@pytest.mark.parametrize(("data", "code", "text"), [
    (b"garbage!garbage!", 501, "FRAME_ERROR"),
    (struct.pack(">BHI", 1, 1, 200000), 501, "FRAME_ERROR - frame of 200008 bytes exceeds"),
    (encode_method(7, spec.Basic.Qos(0, 1, False)), 504,
     "CHANNEL_ERROR - expected 'channel.open'"),
    (encode_header(1, 0, spec.BasicProperties()), 505, "UNEXPECTED_FRAME"),
    (encode_method(1, spec.Basic.Deliver("t", 1, False, "", "")), 503, "COMMAND_INVALID"),
    (encode_method(0, spec.Queue.Declare()), 504,
     "CHANNEL_ERROR - unexpected method in connection state running"),
], ids=["garbage", "oversize", "unopened channel", "content without method",
        "server method", "queue method on channel 0"])
def test_bad_input_closes_the_connection(data: bytes, code: int, text: str) -> None:
    client = Client()
    client.open()
    [close] = client.send(data)
    assert type(close) is spec.Connection.Close
    assert close.reply_code == code
    assert close.reply_text.startswith(text), close.reply_text
    assert client.core.connections == []  # its resources are gone at once
    client.send((0, spec.Connection.CloseOk()))
    assert client.server.wants_close


def test_channel_error_ignores_the_channel_until_close_ok() -> None:
    client = Client()
    client.open()
    [close] = client.send((1, spec.Queue.Declare(queue="nope", passive=True)))
    assert (close.reply_code, close.class_id, close.method_id) == (404, 50, 10)
    assert client.send((1, spec.Queue.Declare(queue="ignored"))) == []
    assert client.send((1, spec.Channel.CloseOk())) == []
    assert client.send((1, spec.Channel.Open())) == [spec.Channel.OpenOk(b"")]
    assert client.server.is_open


def test_heartbeats_on_the_broker_clock() -> None:
    client = Client(heartbeat=10)
    client.open()
    client.clock.advance(5)
    assert client.read() == [HeartbeatFrame()]
    client.send(b"\x08\x00\x00\x00\x00\x00\x00\xce")
    client.clock.advance(5)
    assert client.read() == [HeartbeatFrame()]
    for _ in range(3):
        client.clock.advance(5)
    assert client.server.wants_close  # nothing from the client for 20 s
    assert client.core.connections == []


def test_a_forced_close() -> None:
    client = Client()
    client.open()
    client.server.close(320, "CONNECTION_FORCED - shutdown")
    [close] = client.read()
    assert (close.reply_code, close.reply_text) == (320, "CONNECTION_FORCED - shutdown")
    client.clock.advance(10)  # no close-ok: it hangs up anyway
    assert client.server.wants_close


def publish_bytes(channel: int, routing_key: str, body: bytes) -> bytes:
    return b"".join(bytes(p) for p in encode_content(
        channel, spec.Basic.Publish(0, "", routing_key), spec.BasicProperties(), body, 131072))


def test_confirms_of_one_read_are_coalesced_into_multiple_acks() -> None:
    client = Client()
    client.open()
    client.send((1, spec.Confirm.Select()),
                (1, spec.Queue.Declare(queue="small", arguments={
                    "x-max-length": 1, "x-overflow": "reject-publish"})))
    client.core.vhosts["/"].queues["small"].purge()
    burst = (publish_bytes(1, "nowhere", b"a") + publish_bytes(1, "nowhere", b"b")
             + publish_bytes(1, "small", b"c") + publish_bytes(1, "small", b"refused")
             + publish_bytes(1, "nowhere", b"d"))
    assert client.send(burst) == [spec.Basic.Ack(3, True), spec.Basic.Nack(4, False, False),
                                  spec.Basic.Ack(5, True)]
