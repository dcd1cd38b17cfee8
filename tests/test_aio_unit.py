"""``txpika.aio`` over a fake transport: bytes in, bytes out, no broker, no sleeping.

A scripted broker (`_Server`) decodes what the connection wrote to the `_Transport` and
feeds it frames encoded with the real codec. Each test runs its coroutine with
``asyncio.run``; ``await _turn()`` lets the loop run the callbacks already due (output is
corked until the end of a turn), never waiting for time to pass.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from txpika import aio, spec
from txpika.errors import ConnectionLost, OutcomeUnknownError
from txpika.frames import FrameDecoder, MethodFrame, encode_body, encode_header, encode_method
from txpika.parameters import ConnectionParameters


class _Transport:
    """The asyncio transport methods the connection uses; records what it is told."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.reading = True
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


class _Server:
    """The broker's side: decodes the client's output, sends it frames."""

    def __init__(self, conn: aio.Connection, transport: _Transport) -> None:
        self.conn = conn
        self.transport = transport
        self.decoder = FrameDecoder(spec.DIALECT, frame_max=0)
        self.header_seen = False

    def methods(self) -> list[Any]:
        """The methods written since the last call, in order."""
        data = b"".join(self.transport.writes)
        self.transport.writes.clear()
        if not self.header_seen:
            assert data[:8] == b"AMQP\x00\x00\x09\x01"
            data, self.header_seen = data[8:], True
        self.decoder.receive_data(data)
        found = []
        while True:
            frame = self.decoder.next_frame()
            if type(frame) is MethodFrame:
                found.append(frame.method)
            elif frame.__class__.__name__ == "_NeedData":
                return found

    def send(self, method: Any, channel: int = 1) -> None:
        self.conn.data_received(encode_method(channel, method))

    def send_content(self, method: Any, body: bytes, channel: int = 1) -> None:
        header = encode_header(channel, len(body), spec.BasicProperties())
        pieces = [encode_method(channel, method), header, *encode_body(channel, body)]
        self.conn.data_received(b"".join(bytes(p) for p in pieces))


async def _turn(times: int = 3) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


async def _open() -> tuple[aio.Connection, aio.Channel, _Server, _Transport]:
    loop = asyncio.get_running_loop()
    conn = aio.Connection(ConnectionParameters(heartbeat=0), loop)
    transport = _Transport()
    server = _Server(conn, transport)
    conn.connection_made(transport)  # type: ignore[arg-type]
    await _turn()
    assert server.methods() == []
    server.send(spec.Connection.Start(0, 9, {}, b"PLAIN", b"en_US"), 0)
    server.send(spec.Connection.Tune(2047, 131072, 0), 0)
    await _turn()
    names = [m.NAME for m in server.methods()]
    assert names == ["connection.start-ok", "connection.tune-ok", "connection.open"]
    server.send(spec.Connection.OpenOk(""), 0)
    await conn._ready
    opening = asyncio.ensure_future(conn.channel())
    await _turn()
    assert [m.NAME for m in server.methods()] == ["channel.open"]
    server.send(spec.Channel.OpenOk())
    return conn, await opening, server, transport


def test_first_output_after_a_read_goes_at_once_the_rest_in_one_write() -> None:
    """A request after its reply costs no extra turn of the loop; what follows it in the
    same turn is corked into one write."""
    async def main() -> None:
        _, ch, server, transport = await _open()
        got: list[aio.Message] = []
        consuming = asyncio.ensure_future(ch.basic_consume("q", got.append))
        await _turn()
        server.methods()
        server.send(spec.Basic.ConsumeOk("ctag"))
        await consuming
        for tag in range(1, 21):
            server.send_content(spec.Basic.Deliver("ctag", tag, False, "", "q"), b"m")
        assert len(got) == 20 and transport.writes == []
        for message in got:
            message.ack()
            ch.basic_publish("", "q", b"p")
        assert len(transport.writes) == 1  # the first ack, at once
        await _turn()
        assert len(transport.writes) == 2  # the rest, together
        names = [m.NAME for m in server.methods()]
        assert names.count("basic.ack") == 20 and names.count("basic.publish") == 20

    asyncio.run(main())


def test_acks_of_a_coroutine_woken_by_a_read_go_out_in_one_write() -> None:
    async def main() -> None:
        _, ch, server, transport = await _open()
        consuming = asyncio.ensure_future(ch.basic_consume("q"))
        await _turn()
        server.methods()
        server.send(spec.Basic.ConsumeOk("ctag"))
        consumer = await consuming

        async def pull() -> None:
            for _ in range(10):
                (await consumer.get()).ack()

        puller = asyncio.ensure_future(pull())
        await _turn()
        assert transport.writes == []
        server.conn.data_received(b"".join(
            _delivery(spec.Basic.Deliver("ctag", tag, False, "", "q")) for tag in range(1, 11)))
        await puller
        await _turn()
        assert len(transport.writes) == 1
        assert [m.NAME for m in server.methods()] == ["basic.ack"] * 10

    asyncio.run(main())


def _delivery(method: Any, body: bytes = b"m", channel: int = 1) -> bytes:
    header = encode_header(channel, len(body), spec.BasicProperties())
    return b"".join(bytes(p) for p in [encode_method(channel, method), header,
                                        *encode_body(channel, body)])


def test_paused_transport_holds_publishes_and_a_cancelled_one_is_never_sent() -> None:
    async def main() -> None:
        conn, ch, _, transport = await _open()
        conn.pause_writing()
        held = ch.basic_publish("", "q", b"held")
        dropped = ch.basic_publish("", "q", b"dropped")
        timed = ch.basic_publish("", "q", b"timed out", timeout=0)
        dropped.cancel()
        await _turn()
        assert not held.done() and transport.writes == []
        with pytest.raises(TimeoutError):
            await timed
        conn.resume_writing()
        await _turn()
        assert held.done() and held.result() is None
        data = b"".join(transport.writes)
        assert b"held" in data and b"dropped" not in data and b"timed out" not in data

    asyncio.run(main())


def test_a_full_consumer_buffer_pauses_reading_until_drained() -> None:
    async def main() -> None:
        conn, ch, server, transport = await _open()
        consuming = asyncio.ensure_future(ch.basic_consume("q", max_buffer=4))
        await _turn()
        server.send(spec.Basic.ConsumeOk("ctag"))
        consumer = await consuming
        for tag in range(1, 7):
            server.send_content(spec.Basic.Deliver("ctag", tag, False, "", "q"), b"%d" % tag)
        assert not transport.reading and conn.reading_paused
        bodies = [(await consumer.get()).body for _ in range(3)]
        assert bodies == [b"1", b"2", b"3"] and not transport.reading
        assert (await consumer.get()).body == b"4"
        assert transport.reading and not conn.reading_paused  # at half of max_buffer

    asyncio.run(main())


def test_replies_to_cancelled_calls_are_undone() -> None:
    """A reply that arrives for a task already cancelled (or that lands as the task is
    cancelled) is undone: a consumer is cancelled, a fetched message requeued."""
    async def main() -> None:
        _, ch, server, _ = await _open()
        consuming = asyncio.ensure_future(ch.basic_consume("q"))
        getting = asyncio.ensure_future(ch.basic_get("q"))
        await _turn()
        assert [m.NAME for m in server.methods()] == ["basic.consume"]
        server.send(spec.Basic.ConsumeOk("late"))  # answered...
        consuming.cancel()  # ...and cancelled before the task resumed
        getting.cancel()  # cancelled before its basic.get was even sent
        await _turn()
        assert [m.NAME for m in server.methods()] == ["basic.get"]
        server.send_content(spec.Basic.Deliver("late", 8, False, "", "q"), b"for nobody")
        server.send_content(spec.Basic.GetOk(7, False, "", "q", 0), b"fetched")
        await _turn()
        for task in (consuming, getting):
            with pytest.raises(asyncio.CancelledError):
                await task
        sent = [(m.NAME, getattr(m, "delivery_tag", None), getattr(m, "consumer_tag", None))
                for m in server.methods()]
        assert sorted(sent, key=str) == sorted([
            ("basic.reject", 8, None), ("basic.reject", 7, None),
            ("basic.cancel", None, "late")], key=str)
        server.send(spec.Basic.CancelOk("late"))
        # the channel goes on: the next call gets its own reply
        declaring = asyncio.ensure_future(ch.queue_declare("next"))
        await _turn()
        server.send(spec.Queue.DeclareOk("next", 0, 0))
        assert (await declaring).queue == "next"

    asyncio.run(main())


def test_transport_loss_fails_everything_with_connection_lost() -> None:
    async def main() -> None:
        conn, ch, server, _ = await _open()
        confirming = asyncio.ensure_future(ch.confirm_select())
        await _turn()
        server.send(spec.Confirm.SelectOk())
        await confirming
        confirm = ch.basic_publish("", "q", b"in doubt")
        call = asyncio.ensure_future(ch.queue_declare("q"))
        await _turn()
        conn.pause_writing()
        held = ch.basic_publish("", "q", b"held")  # held for the paused transport
        await _turn()
        reset = ConnectionResetError(104, "Connection reset by peer")
        conn.connection_lost(reset)
        with pytest.raises(OutcomeUnknownError):
            await confirm
        with pytest.raises(ConnectionLost) as lost:
            await call
        assert lost.value.reason is reset
        with pytest.raises(OutcomeUnknownError):
            await held
        with pytest.raises(ConnectionLost):
            ch.basic_publish("", "q", b"after")
        assert isinstance(await conn.when_closed(), ConnectionLost)
        await conn.close()  # harmless

    asyncio.run(main())


def test_a_channel_opened_for_a_cancelled_caller_is_closed() -> None:
    async def main() -> None:
        conn, _, server, _ = await _open()
        for cancel_first in (True, False):
            opening = asyncio.ensure_future(conn.channel())
            await _turn()
            assert [m.NAME for m in server.methods()] == ["channel.open"]
            number = 2 if cancel_first else 3
            if cancel_first:
                opening.cancel()
                await _turn()
                server.send(spec.Channel.OpenOk(), number)
            else:
                server.send(spec.Channel.OpenOk(), number)  # opened...
                opening.cancel()  # ...and cancelled before the task resumed
            with pytest.raises(asyncio.CancelledError):
                await opening
            await _turn()
            assert [m.NAME for m in server.methods()] == ["channel.close"]

    asyncio.run(main())
