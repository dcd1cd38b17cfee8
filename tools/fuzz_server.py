"""The fuzz target for `txpika.testing.MemoryBroker`'s server side (used by fuzz_frames.py).

Each input is fed, after a valid client handshake and an open channel 1, to a fresh
`ServerConnection` of a `BrokerCore` on a `Clock`, as the client's bytes. The server must
never raise from ``receive_data``; what it writes must decode as frames; once it has closed
the connection (``wants_close``) it takes no more. The seed corpus is client commands a
real client sends (declares, binds, publishes with content, consumes, gets, acks, confirm
and tx modes, closes).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerTarget", "client_corpus"]


def _handshake() -> bytes:
    from txpika import spec
    from txpika.frames import encode_method

    return b"".join([
        spec.DIALECT.protocol_header,
        encode_method(0, spec.Connection.StartOk({"product": "fuzz"}, "PLAIN",
                                                 b"\0guest\0guest", "en_US")),
        encode_method(0, spec.Connection.TuneOk(2047, 131072, 60)),
        encode_method(0, spec.Connection.Open("/")),
        encode_method(1, spec.Channel.Open()),
    ])


def client_corpus() -> list[bytes]:
    """Client command streams for channel 1 (after the handshake)."""
    from txpika import spec
    from txpika.frames import encode_body, encode_header, encode_method

    props = spec.BasicProperties(content_type="text/plain", message_id="m1",
                                 headers={"h": 1, "x-death": [{"count": 1}]})

    def m(method: object, channel: int = 1) -> bytes:
        return encode_method(channel, method)

    def publish(exchange: str, key: str, body: bytes, mandatory: bool = False) -> bytes:
        return (m(spec.Basic.Publish(exchange=exchange, routing_key=key, mandatory=mandatory))
                + encode_header(1, len(body), props)
                + b"".join(bytes(p) for p in encode_body(1, body)))

    declare = m(spec.Queue.Declare(queue="q", arguments={"x-max-length": 2,
                                                         "x-message-ttl": 10,
                                                         "x-dead-letter-exchange": "dlx"}))
    exchange = m(spec.Exchange.Declare(exchange="x", type="topic"))
    bind = m(spec.Queue.Bind(queue="q", exchange="x", routing_key="a.#"))
    return [
        declare,
        declare + publish("", "q", b"hello") + m(spec.Basic.Get(queue="q"))
        + m(spec.Basic.Ack(delivery_tag=1)),
        exchange + declare + bind + publish("x", "a.b", b"body", mandatory=True),
        declare + m(spec.Basic.Consume(queue="q", consumer_tag="c")) + publish("", "q", b"x")
        + m(spec.Basic.Nack(delivery_tag=1, multiple=False, requeue=True)),
        m(spec.Confirm.Select()) + publish("", "nowhere", b"", mandatory=True),
        m(spec.Tx.Select()) + publish("", "q", b"t") + m(spec.Tx.Commit()),
        declare + m(spec.Basic.Qos(prefetch_count=1)) + m(spec.Basic.Recover(requeue=True)),
        m(spec.Queue.Delete(queue="q", if_empty=True)) + m(spec.Channel.Close(200, "", 0, 0)),
        m(spec.Exchange.Bind(destination="x", source="amq.fanout")),
        m(spec.Connection.Close(200, "bye", 0, 0), 0),
        b"\x08\x00\x00\x00\x00\x00\x00\xce",
    ]


class ServerTarget:
    """One input: a fresh server connection, the handshake, then the fuzzed bytes."""

    def __init__(self) -> None:
        from twisted.internet.task import Clock

        from txpika.frames import FrameDecodeError, FrameDecoder
        from txpika.spec import DIALECT
        from txpika.testing._core import BrokerCore

        self._clock_type = Clock
        self._core_type = BrokerCore
        self._decoder_type = FrameDecoder
        self._decode_error = FrameDecodeError
        self._dialect = DIALECT
        self._handshake = _handshake()

    def run(self, parts: list[bytes], timed: Any) -> None:
        from txpika.connection import NEED_DATA

        clock = self._clock_type()
        core = self._core_type(clock, {"guest": "guest"}, ["/"])
        server = core.open_connection()
        server.receive_data(self._handshake)
        written = [server.data_to_send()]
        for part in parts:
            if server.wants_close:
                break
            timed(lambda part=part: server.receive_data(part))
            written.append(server.data_to_send())
            clock.advance(1)
        clock.advance(3600)  # expiries, heartbeats: the clock's calls must run
        written.append(server.data_to_send())
        decoder = self._decoder_type(self._dialect, 0)
        out = b"".join(written)
        header = self._dialect.protocol_header
        if out.startswith(header):  # a refused protocol header is answered with ours
            out = out[len(header):]
        decoder.receive_data(out)
        try:
            while decoder.next_frame() is not NEED_DATA:
                pass
        except self._decode_error as exc:
            raise AssertionError(f"the server wrote a broken frame: {exc}") from exc
