"""A scripted broker for the Twisted layer: `AMQPProtocol` over a `StringTransport`.

Not a test module. It builds on `brokersim.BrokerSim` (the real codec on the broker's side):

* `connect` makes an `AMQPProtocol` with a `twisted.internet.task.Clock`, connects it to a
  `twisted.internet.testing.StringTransport` (which records ``registerProducer`` and the
  ``pauseProducing``/``resumeProducing`` calls in ``producerState``) and drives the handshake,
  checking the protocol header and every method the client writes;
* ``broker.send(channel, method)`` / ``broker.send_content(...)`` encode server frames and feed
  them to ``protocol.dataReceived``; ``broker.expect(...)`` / ``broker.commands()`` decode what
  the client wrote to the transport (``transport.value()``, then cleared);
* `success`, `failure` and `no_result` check Deferreds the way trial's ``successResultOf``,
  ``failureResultOf`` and ``assertNoResult`` do; `LogCapture` records ``twisted.logger`` events.

No sockets, no global reactor, no sleeping.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from brokersim import SERVER_PROPERTIES, BrokerSim, Command, HeartbeatMarker, normalize
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from txpika import spec
from txpika._specbase import Method, Properties
from txpika.channel import Channel
from txpika.parameters import ConnectionParameters
from txpika.protocol import AMQPProtocol

__all__ = [
    "HEADER_0_9_1",
    "Command",
    "Harness",
    "HeartbeatMarker",
    "HighWaterTransport",
    "LogCapture",
    "TwistedBroker",
    "capture_logs",
    "connect",
    "failure",
    "no_result",
    "no_unhandled_errors",
    "normalize",
    "success",
]

HEADER_0_9_1 = b"AMQP\x00\x00\x09\x01"
HEADER_0_8 = b"AMQP\x01\x01\x08\x00"

_NO_RESULT = object()


# -- Deferred checks ---------------------------------------------------------------------------

def _peek(d: Deferred[Any]) -> Any:
    """The current result of ``d`` (a value or a Failure), or _NO_RESULT; ``d`` keeps it."""
    results: list[Any] = []

    def grab(result: Any) -> Any:
        results.append(result)
        return result

    d.addBoth(grab)
    return results[0] if results else _NO_RESULT


def _consume(d: Deferred[Any]) -> Any:
    """The current result of ``d``, which is then left with ``None`` (a failure is handled)."""
    results: list[Any] = []
    d.addBoth(lambda result: results.append(result))
    return results[0] if results else _NO_RESULT


def success(d: Deferred[Any]) -> Any:
    """The value ``d`` has fired with; fails the test if it has no result or failed."""
    result = _consume(d)
    if result is _NO_RESULT:
        raise AssertionError(f"{d!r} has no result yet")
    if isinstance(result, Failure):
        raise AssertionError(f"{d!r} failed: {result.getTraceback()}")
    return result


def failure(d: Deferred[Any], *types: type[BaseException]) -> BaseException:
    """The exception ``d`` has failed with (checked against ``types`` when given)."""
    result = _consume(d)
    if result is _NO_RESULT:
        raise AssertionError(f"{d!r} has no result yet")
    if not isinstance(result, Failure):
        raise AssertionError(f"{d!r} succeeded with {result!r}, expected a failure")
    if types and not result.check(*types):
        raise AssertionError(
            f"{d!r} failed with {result.value!r}, not {' or '.join(t.__name__ for t in types)}"
        )
    return result.value


def no_result(d: Deferred[Any]) -> None:
    """Assert ``d`` has not fired yet (it is left as it was)."""
    result = _peek(d)
    if result is not _NO_RESULT:
        raise AssertionError(f"{d!r} already fired with {result!r}")


# -- log capture ---------------------------------------------------------------------------------

class LogCapture:
    """Every ``twisted.logger`` event published while it is installed."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def failures(self) -> list[LogEvent]:
        """The events that carry a failure (``log.failure``)."""
        return [e for e in self.events if e.get("log_failure") is not None]

    def unhandled(self) -> list[LogEvent]:
        """Failures logged as unhandled errors in Deferreds (garbage-collected failures)."""
        return [e for e in self.failures()
                if e.get("log_namespace") == "twisted.internet.defer"]


@contextmanager
def capture_logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    try:
        yield capture
    finally:
        globalLogPublisher.removeObserver(capture)


@pytest.fixture
def no_unhandled_errors() -> Iterator[LogCapture]:
    """Fail the test if a Deferred was garbage-collected with an unhandled failure (a
    Deferred txpika failed and nobody, not even txpika itself, consumed)."""
    with capture_logs() as logs:
        yield logs
        gc.collect(1)  # young objects: cheap, and what a test leaks is young
    leaked = logs.unhandled()
    assert not leaked, [e["log_failure"].getTraceback() for e in leaked]


# -- transports -----------------------------------------------------------------------------------

class HighWaterTransport(StringTransport):
    """A StringTransport that pauses its producer, as a real one does, once it holds more than
    ``high_water`` bytes (the test empties it with `clear` and calls ``resumeProducing``)."""

    def __init__(self, high_water: int) -> None:
        super().__init__()
        self.high_water = high_water
        self.pauses = 0
        self._producer_paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self._check()

    def writeSequence(self, data: Any) -> None:
        super().writeSequence(data)
        self._check()

    def _check(self) -> None:
        if len(self.value()) > self.high_water and self.producer is not None:
            self.pauses += 1
            self.producer.pauseProducing()


# -- the broker -----------------------------------------------------------------------------------

class _TransportTap:
    """What `BrokerSim` needs of a core: the dialect and the bytes the client wrote."""

    def __init__(self, protocol: AMQPProtocol, transport: StringTransport) -> None:
        self.dialect = protocol._core.dialect
        self._transport = transport

    def data_to_send(self) -> bytes:
        data = self._transport.value()
        self._transport.clear()
        return data


class TwistedBroker(BrokerSim):
    """The broker's side of one `AMQPProtocol`: frames in through ``dataReceived``, what the
    client wrote out of the transport."""

    def __init__(self, protocol: AMQPProtocol, transport: StringTransport) -> None:
        super().__init__(_TransportTap(protocol, transport))  # type: ignore[arg-type]
        self.protocol = protocol
        self.transport = transport

    def feed(self, data: bytes) -> list[Any]:
        self.protocol.dataReceived(data)
        return []

    def expect_nothing(self) -> None:
        data = self.transport.value()
        assert data == b"", f"the client wrote {data!r}"

    def deliver(self, channel: int, tag: str, delivery_tag: int, body: bytes = b"x",
                properties: Properties | None = None, exchange: str = "ex",
                routing_key: str = "rk", redelivered: bool = False) -> Any:
        """A ``basic.deliver`` with its content."""
        method = self.m.Basic.Deliver(tag, delivery_tag, redelivered, exchange, routing_key)
        return self.send_content(channel, method, body, properties)

    def close_connection(self, code: int = 320, text: str = "CONNECTION_FORCED",
                         class_id: int = 0, method_id: int = 0) -> None:
        self.send(0, self.m.Connection.Close(code, text, class_id, method_id))

    def close_channel(self, channel: int, code: int, text: str, class_id: int = 0,
                      method_id: int = 0) -> None:
        self.send(channel, self.m.Channel.Close(code, text, class_id, method_id))


# -- the harness --------------------------------------------------------------------------------

@dataclass
class Harness:
    protocol: AMQPProtocol
    transport: StringTransport
    clock: Clock
    broker: TwistedBroker

    @property
    def m(self) -> Any:
        return self.broker.m

    def expect(self, *expected: tuple[int, Method]) -> None:
        self.broker.expect(*expected)

    def lose(self, reason: BaseException | None = None) -> None:
        """The transport tells the protocol it is gone."""
        self.protocol.connectionLost(Failure(reason or ConnectionDone("closed cleanly")))

    def lose_uncleanly(self) -> None:
        self.lose(ConnectionLost("connection reset"))

    def channel(self, number: int | None = None) -> Channel:
        """Open a channel, checking ``channel.open`` is written; returns the `Channel`."""
        d = self.protocol.channel(number)
        written = self.broker.methods()
        assert len(written) == 1, written
        channel_number, method = written[0]
        assert method == self.m.Channel.Open()
        if number is not None:
            assert channel_number == number
        no_result(d)
        open_ok = (self.m.Channel.OpenOk() if self.broker.dialect.name == "0-8"
                   else self.m.Channel.OpenOk(b""))
        self.broker.send(channel_number, open_ok)
        channel = success(d)
        assert isinstance(channel, Channel)
        assert channel.channel_number == channel_number and channel.is_open
        return channel

    def confirm_channel(self, number: int | None = None) -> Channel:
        channel = self.channel(number)
        d = channel.confirm_select()
        self.expect((channel.channel_number, self.m.Confirm.Select(False)))
        self.broker.send(channel.channel_number, self.m.Confirm.SelectOk())
        success(d)
        return channel


def start(parameters: ConnectionParameters | None = None,
          clock: Clock | None = None, transport: StringTransport | None = None) -> Harness:
    """A protocol connected to a fresh transport; only the protocol header is written."""
    clock = clock or Clock()
    protocol = AMQPProtocol(parameters or ConnectionParameters(), clock)
    transport = transport or StringTransport()
    protocol.makeConnection(transport)
    assert transport.producer is not None and transport.streaming is True
    broker = TwistedBroker(protocol, transport)
    assert broker.read() == []
    expected = HEADER_0_8 if protocol.dialect == "0-8" else HEADER_0_9_1
    assert broker.protocol_header == expected
    return Harness(protocol, transport, clock, broker)


def send_start(h: Harness, mechanisms: bytes = b"PLAIN AMQPLAIN",
               server_properties: dict[str, Any] | None = None) -> Any:
    """Send connection.start; returns the start-ok the client wrote."""
    m = h.m
    version = (8, 0) if h.broker.dialect.name == "0-8" else (0, 9)
    props = dict(SERVER_PROPERTIES if server_properties is None else server_properties)
    h.broker.send(0, m.Connection.Start(*version, props, mechanisms, b"en_US"))
    ((channel, start_ok),) = h.broker.methods()
    assert channel == 0 and type(start_ok) is m.Connection.StartOk
    return start_ok


def send_tune(h: Harness, server_tune: tuple[int, int, int] = (2047, 131072, 60),
              expect_tune_ok: tuple[int, int, int] | None = None) -> Any:
    """Send connection.tune; checks tune-ok and returns the connection.open written."""
    m = h.m
    h.broker.send(0, m.Connection.Tune(*server_tune))
    (c1, tune_ok), (c2, open_) = h.broker.methods()
    assert (c1, c2) == (0, 0)
    assert tune_ok == m.Connection.TuneOk(*(expect_tune_ok or server_tune))
    assert type(open_) is m.Connection.Open
    h.broker.decoder.frame_max = h.protocol._core.frame_max
    return open_


def connect(parameters: ConnectionParameters | None = None, *,
            server_tune: tuple[int, int, int] = (2047, 131072, 60),
            expect_tune_ok: tuple[int, int, int] | None = None,
            clock: Clock | None = None,
            transport: StringTransport | None = None) -> Harness:
    """A protocol through the whole handshake, checked frame by frame; ``ready`` has fired."""
    h = start(parameters, clock, transport)
    ready = h.protocol.ready
    send_start(h)
    no_result(ready)
    open_ = send_tune(h, server_tune, expect_tune_ok)
    assert open_.virtual_host == h.protocol.parameters.virtual_host
    no_result(ready)
    assert not h.protocol.is_open
    h.broker.send(0, h.m.Connection.OpenOk(""))
    assert success(ready) is h.protocol
    assert h.protocol.is_open
    h.broker.expect_nothing()
    return h


def basic_properties(**kw: Any) -> spec.BasicProperties:
    return spec.BasicProperties(**kw)
