"""``max_message_size``: an oversize content header closes its channel before the body is kept.

The sans-IO core with bytes in and bytes out (`brokersim.BrokerSim`): a delivery, a
``basic.get-ok`` and a ``basic.return`` whose header announces more than the limit make the
client close that channel with 311 CONTENT_TOO_LARGE; the body frames still arriving are
dropped while closing; the close-ok reports `txpika.errors.MessageTooLarge` naming the size
and the limit; the other channels and the connection go on. The parameters and URL option
are checked here too; the adapters against the real broker are in
``test_max_message_size_broker.py``.
"""

from __future__ import annotations

import tracemalloc

import pytest
from brokersim import open_connection

from txpika import events as ev
from txpika import spec, spec_0_8
from txpika._content import DEFAULT_MAX_MESSAGE_SIZE
from txpika._specbase import Dialect
from txpika.connection import ChannelState, Connection
from txpika.errors import CONTENT_TOO_LARGE, ChannelClosed, MessageTooLarge, UsageError
from txpika.frames import encode_method
from txpika.parameters import ConnectionParameters, InvalidParameter, parse_url

LIMIT = 10_000


def _core(dialect: Dialect = spec.DIALECT, limit: int = LIMIT):  # type: ignore[no-untyped-def]
    core, sim = open_connection(dialect=dialect, max_message_size=limit)
    sim.open_channel(1)
    sim.open_channel(2)
    sim.consume(1, "c1")
    sim.consume(2, "c2")
    return core, sim


def _closed_with_311(sim, channel: int, method_name: str, size: int) -> MessageTooLarge:  # type: ignore[no-untyped-def]
    ((ch, close),) = sim.methods()
    assert ch == channel and close.NAME == "channel.close"
    assert close.reply_code == CONTENT_TOO_LARGE
    assert str(size) in close.reply_text and str(LIMIT) in close.reply_text
    events = sim.send(channel, sim.m.Channel.CloseOk())
    ((closed,),) = [[e for e in events if isinstance(e, ev.ChannelClosed)]]
    error = closed.error
    assert isinstance(error, MessageTooLarge) and isinstance(error, ChannelClosed)
    assert (error.size, error.limit, error.method_name, error.channel) == (
        size, LIMIT, method_name, channel)
    assert error.reply_code == CONTENT_TOO_LARGE
    assert str(error) == (f"311 {method_name} of {size} bytes on channel {channel} exceeds "
                          f"max_message_size {LIMIT}")
    return error


@pytest.mark.parametrize("dialect", [spec.DIALECT, spec_0_8.DIALECT], ids=["0-9-1", "0-8"])
def test_oversize_delivery_closes_only_its_channel(dialect: Dialect) -> None:
    core, sim = _core(dialect)
    m = sim.m
    size = LIMIT + 1
    deliver = m.Basic.Deliver("c1", 1, False, "", "q")
    data = sim.content_bytes(1, deliver, b"z" * size, chunks=[4000, 4000, 2001])
    # The header arrives first, on its own: the channel closes before any body is in.
    header_end = len(encode_method(1, deliver)) + 22  # an empty-properties header frame
    events = sim.feed(data[:header_end])
    assert events == []
    assert core.channel_state(1) is ChannelState.CLOSING
    # The body frames that follow are dropped, not assembled, and nothing is delivered.
    assert sim.feed(data[header_end:]) == []
    _closed_with_311(sim, 1, "basic.deliver", size)
    # Channel 2 and the connection go on; the delivery under the limit is delivered whole.
    message = sim.deliver(2, "c2", 1, b"y" * LIMIT)
    assert message.body == b"y" * LIMIT
    assert core.is_open


def test_oversize_delivery_in_one_read_takes_the_shortcut_and_still_closes() -> None:
    core, sim = _core()
    size = LIMIT + 1
    events = sim.send_content(1, sim.m.Basic.Deliver("c1", 1, False, "", "q"), b"z" * size)
    assert events == []
    _closed_with_311(sim, 1, "basic.deliver", size)
    assert core.is_open and core.channel_state(2) is ChannelState.OPEN


def test_oversize_get_ok_fails_the_get_and_later_gets_are_not_confused() -> None:
    core, sim = _core()
    m = sim.m
    core.send_method(1, m.Basic.Get(queue="q"))
    sim.read()
    size = LIMIT * 5
    announced = sim.content_bytes(1, m.Basic.GetOk(1, False, "", "q", 0), b"",
                                  body_size=size)
    assert sim.feed(announced) == []
    _closed_with_311(sim, 1, "basic.get-ok", size)
    assert core.channel_state(1) is None


def test_oversize_return_closes_the_channel() -> None:
    _, sim = _core()
    size = LIMIT + 100
    data = sim.content_bytes(2, sim.m.Basic.Return(312, "NO_ROUTE", "", "q"), b"",
                             body_size=size)
    assert sim.feed(data) == []
    _closed_with_311(sim, 2, "basic.return", size)


def test_body_frames_of_an_announced_gigabyte_are_not_kept() -> None:
    _, sim = _core()
    size = 2**30
    header = sim.content_bytes(1, sim.m.Basic.Deliver("c1", 1, False, "", "q"), b"",
                               body_size=size)
    sim.feed(header)
    chunk = b"".join(sim.body_bytes(1, b"q" * 100_000))
    tracemalloc.start()
    try:
        for _ in range(200):  # 20 MB of body frames after the close
            assert sim.feed(chunk) == []
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current < 2_000_000, current
    _closed_with_311(sim, 1, "basic.deliver", size)


def test_exactly_the_limit_is_delivered_and_zero_means_no_limit() -> None:
    core, sim = _core()
    message = sim.deliver(1, "c1", 1, b"a" * LIMIT)
    assert len(message.body) == LIMIT
    # A header announcing more than the default limit: closed by default, taken with 0.
    for limit, state in ((DEFAULT_MAX_MESSAGE_SIZE, ChannelState.CLOSING),
                         (0, ChannelState.OPEN)):
        core, sim = _core(limit=limit)
        header = sim.content_bytes(1, sim.m.Basic.Deliver("c1", 1, False, "", "q"), b"",
                                   body_size=DEFAULT_MAX_MESSAGE_SIZE + 1)
        assert sim.feed(header) == []
        assert core.channel_state(1) is state
    # With no limit the body is being assembled: its frames are taken, the channel open.
    assert sim.feed(b"".join(sim.body_bytes(1, b"b" * 300_000, [100_000] * 3))) == []
    assert core.channel_state(1) is ChannelState.OPEN and sim.methods() == []


def test_parameters_and_url_take_the_limit() -> None:
    assert ConnectionParameters().max_message_size == DEFAULT_MAX_MESSAGE_SIZE == 128 * 2**20
    assert parse_url("amqp://h/?max_message_size=0").max_message_size == 0
    assert parse_url("amqp://h/?max_message_size=65536").max_message_size == 65536
    with pytest.raises(InvalidParameter, match="max_message_size"):
        parse_url("amqp://h/?max_message_size=-1")
    with pytest.raises(InvalidParameter, match="max_message_size"):
        parse_url("amqp://h/?max_message_size=lots")
    with pytest.raises(InvalidParameter, match="max_message_size"):
        ConnectionParameters(max_message_size=-5)
    with pytest.raises(UsageError, match="max_message_size"):
        Connection(max_message_size=-1)
