"""Topology recovery and `RobustChannel` / `RobustConsumer` on a `MemoryReactorClock`.

After a reconnect the recorded topology is declared again, in order, then each robust
channel is reopened with its QoS, confirm mode and consumers; every frame is checked.
"""

from __future__ import annotations

from typing import Any

import pytest
from servicesim import BrokerConn, ServiceSim, fixed_policy
from twisted.internet import defer
from twistedsim import (
    capture_logs,
    failure,
    no_result,
    no_unhandled_errors,  # noqa: F401 - a fixture
    success,
)

from txpika import spec
from txpika.channel import Channel, Message
from txpika.errors import (
    ConnectionRecovering,
    ConsumerCancelled,
    NotFound,
    PreconditionFailed,
    ServiceStopped,
    UsageError,
)
from txpika.robust import RobustChannel, RobustConsumer

m = spec

pytestmark = pytest.mark.usefixtures("no_unhandled_errors")

CLOSE = m.Channel.Close(200, "Normal close", 0, 0)


def open_robust(sim: ServiceSim, conn: BrokerConn, number: int = 1) -> RobustChannel:
    d = sim.service.channel()
    conn.open_ok(number)
    robust = success(d)
    assert isinstance(robust, RobustChannel)
    return robust


def call(conn: BrokerConn, d: defer.Deferred[Any], channel: int, method: Any,
         reply: Any) -> Any:
    """``d`` wrote exactly ``method``; answer ``reply``; return what ``d`` fired with."""
    conn.step(channel, method, reply)
    return success(d)


def reconnect(sim: ServiceSim, conn: BrokerConn) -> BrokerConn:
    """Lose ``conn``; the next connection is accepted (handshake only)."""
    conn.lose_uncleanly()
    assert sim.service.state == "recovering"
    sim.advance(1.0)
    return sim.accept(restore=False)


# -- topology replay ------------------------------------------------------------------------------

def declare_topology(conn: BrokerConn, robust: RobustChannel) -> None:
    """Declarations through the robust channel (channel 1), including some that must not be
    replayed: passive declares, and what was deleted or unbound again."""
    call(conn, robust.exchange_declare("orders", "topic", durable=True), 1,
         m.Exchange.Declare(exchange="orders", type="topic", durable=True),
         m.Exchange.DeclareOk())
    call(conn, robust.exchange_declare("audit", "fanout", arguments={"alternate-exchange": "ae"}),
         1, m.Exchange.Declare(exchange="audit", type="fanout",
                               arguments={"alternate-exchange": "ae"}),
         m.Exchange.DeclareOk())
    call(conn, robust.exchange_bind("audit", "orders", "order.#"), 1,
         m.Exchange.Bind(destination="audit", source="orders", routing_key="order.#"),
         m.Exchange.BindOk())
    call(conn, robust.exchange_declare("external", passive=True), 1,
         m.Exchange.Declare(exchange="external", passive=True), m.Exchange.DeclareOk())
    call(conn, robust.queue_declare("billing", durable=True, arguments={"x-queue-type": "quorum"}),
         1, m.Queue.Declare(queue="billing", durable=True,
                            arguments={"x-queue-type": "quorum"}),
         m.Queue.DeclareOk("billing", 0, 0))
    ok = call(conn, robust.queue_declare(), 1,
              m.Queue.Declare(queue="", exclusive=True, auto_delete=True),
              m.Queue.DeclareOk("amq.gen-1", 0, 0))
    assert ok.queue == "amq.gen-1"
    call(conn, robust.queue_declare("elsewhere", passive=True), 1,
         m.Queue.Declare(queue="elsewhere", passive=True), m.Queue.DeclareOk("elsewhere", 3, 1))
    call(conn, robust.queue_bind("billing", "orders", "order.*"), 1,
         m.Queue.Bind(queue="billing", exchange="orders", routing_key="order.*"),
         m.Queue.BindOk())
    call(conn, robust.queue_bind("amq.gen-1", "audit"), 1,
         m.Queue.Bind(queue="amq.gen-1", exchange="audit"), m.Queue.BindOk())
    # forgotten again:
    call(conn, robust.queue_bind("billing", "orders", "old.*"), 1,
         m.Queue.Bind(queue="billing", exchange="orders", routing_key="old.*"), m.Queue.BindOk())
    call(conn, robust.queue_unbind("billing", "orders", "old.*"), 1,
         m.Queue.Unbind(queue="billing", exchange="orders", routing_key="old.*"),
         m.Queue.UnbindOk())
    call(conn, robust.exchange_declare("scratch"), 1,
         m.Exchange.Declare(exchange="scratch"), m.Exchange.DeclareOk())
    call(conn, robust.exchange_bind("scratch", "orders", "s"), 1,
         m.Exchange.Bind(destination="scratch", source="orders", routing_key="s"),
         m.Exchange.BindOk())
    call(conn, robust.exchange_delete("scratch"), 1,
         m.Exchange.Delete(exchange="scratch"), m.Exchange.DeleteOk())
    call(conn, robust.exchange_bind("audit", "orders", "tmp"), 1,
         m.Exchange.Bind(destination="audit", source="orders", routing_key="tmp"),
         m.Exchange.BindOk())
    call(conn, robust.exchange_unbind("audit", "orders", "tmp"), 1,
         m.Exchange.Unbind(destination="audit", source="orders", routing_key="tmp"),
         m.Exchange.UnbindOk())
    call(conn, robust.queue_declare("tmpq"), 1, m.Queue.Declare(queue="tmpq"),
         m.Queue.DeclareOk("tmpq", 0, 0))
    call(conn, robust.queue_bind("tmpq", "orders", "t"), 1,
         m.Queue.Bind(queue="tmpq", exchange="orders", routing_key="t"), m.Queue.BindOk())
    call(conn, robust.queue_delete("tmpq"), 1, m.Queue.Delete(queue="tmpq"),
         m.Queue.DeleteOk(0))


REPLAY = [
    m.Exchange.Declare(exchange="orders", type="topic", durable=True),
    m.Exchange.Declare(exchange="audit", type="fanout", arguments={"alternate-exchange": "ae"}),
    m.Exchange.Bind(destination="audit", source="orders", routing_key="order.#"),
    m.Queue.Declare(queue="billing", durable=True, arguments={"x-queue-type": "quorum"}),
    m.Queue.Declare(queue="", exclusive=True, auto_delete=True),
    m.Queue.Bind(queue="billing", exchange="orders", routing_key="order.*"),
    m.Queue.Bind(queue="amq.gen-2", exchange="audit"),
]


def reply_to(method: Any, new_name: str = "amq.gen-2") -> Any:
    name = method.NAME
    if name == "exchange.declare":
        return m.Exchange.DeclareOk()
    if name == "exchange.bind":
        return m.Exchange.BindOk()
    if name == "queue.declare":
        return m.Queue.DeclareOk(method.queue or new_name, 0, 0)
    assert name == "queue.bind"
    return m.Queue.BindOk()


def test_topology_is_replayed_in_order_then_the_channel_state() -> None:
    sim = ServiceSim()
    conn = sim.open()
    robust = open_robust(sim, conn)
    renames: list[tuple[str, str]] = []
    sim.service.add_queue_rename_listener(lambda old, new: renames.append((old, new)))
    declare_topology(conn, robust)
    call(conn, robust.basic_qos(prefetch_count=10), 1, m.Basic.Qos(prefetch_count=10),
         m.Basic.QosOk())
    call(conn, robust.confirm_select(), 1, m.Confirm.Select(False), m.Confirm.SelectOk())
    d = robust.basic_consume("billing", consumer_tag="billing-1")
    conn.step(1, m.Basic.Consume(queue="billing", consumer_tag="billing-1"),
              m.Basic.ConsumeOk("billing-1"))
    billing = success(d)
    d = robust.basic_consume("amq.gen-1", consumer_tag="audit-1", auto_ack=True)
    conn.step(1, m.Basic.Consume(queue="amq.gen-1", consumer_tag="audit-1", no_ack=True),
              m.Basic.ConsumeOk("audit-1"))
    audit = success(d)
    conn.broker.expect_nothing()

    new = reconnect(sim, conn)
    new.open_ok(1)
    for method in REPLAY:
        new.step(1, method, reply_to(method))
        assert sim.service.state == "recovering"
    new.close_ok(1)
    assert renames == [("amq.gen-1", "amq.gen-2")]
    # the robust channel, reopened with its QoS, confirm mode and consumers (same tags)
    new.open_ok(1)
    new.step(1, m.Basic.Qos(prefetch_count=10), m.Basic.QosOk())
    new.step(1, m.Confirm.Select(False), m.Confirm.SelectOk())
    new.step(1, m.Basic.Consume(queue="billing", consumer_tag="billing-1"),
             m.Basic.ConsumeOk("billing-1"))
    assert sim.service.state == "recovering"
    new.step(1, m.Basic.Consume(queue="amq.gen-2", consumer_tag="audit-1", no_ack=True),
             m.Basic.ConsumeOk("audit-1"))
    assert sim.service.state == "open"
    new.broker.expect_nothing()
    assert robust.is_open and robust.channel is not None
    assert billing.queue == "billing" and audit.queue == "amq.gen-2"
    assert billing.active and audit.active
    assert sim.service.topology.current_name("amq.gen-1") == "amq.gen-1"  # renames done

    # a second reconnect replays the renamed queue's binding under its latest name
    third = reconnect(sim, new)
    third.open_ok(1)
    for method in REPLAY[:-1]:
        third.step(1, method, reply_to(method, "amq.gen-3"))
    third.step(1, m.Queue.Bind(queue="amq.gen-3", exchange="audit"), m.Queue.BindOk())
    third.close_ok(1)
    assert renames == [("amq.gen-1", "amq.gen-2"), ("amq.gen-2", "amq.gen-3")]
    third.open_ok(1)
    third.step(1, m.Basic.Qos(prefetch_count=10), m.Basic.QosOk())
    third.step(1, m.Confirm.Select(False), m.Confirm.SelectOk())
    third.step(1, m.Basic.Consume(queue="billing", consumer_tag="billing-1"),
               m.Basic.ConsumeOk("billing-1"))
    third.step(1, m.Basic.Consume(queue="amq.gen-3", consumer_tag="audit-1", no_ack=True),
               m.Basic.ConsumeOk("audit-1"))
    assert sim.service.state == "open"


def test_replay_follows_declaration_order_not_kind() -> None:
    sim = ServiceSim()
    conn = sim.open()
    robust = open_robust(sim, conn)
    call(conn, robust.queue_declare("q", durable=True), 1, m.Queue.Declare(queue="q",
         durable=True), m.Queue.DeclareOk("q", 0, 0))
    call(conn, robust.exchange_declare("x"), 1, m.Exchange.Declare(exchange="x"),
         m.Exchange.DeclareOk())
    call(conn, robust.queue_bind("q", "x", "k"), 1,
         m.Queue.Bind(queue="q", exchange="x", routing_key="k"), m.Queue.BindOk())
    # declaring again changes what is declared, not when
    call(conn, robust.queue_declare("q", durable=True, arguments={"x-max-length": 5}), 1,
         m.Queue.Declare(queue="q", durable=True, arguments={"x-max-length": 5}),
         m.Queue.DeclareOk("q", 0, 0))
    new = reconnect(sim, conn)
    new.open_ok(1)
    new.step(1, m.Queue.Declare(queue="q", durable=True, arguments={"x-max-length": 5}),
             m.Queue.DeclareOk("q", 0, 0))
    new.step(1, m.Exchange.Declare(exchange="x"), m.Exchange.DeclareOk())
    new.step(1, m.Queue.Bind(queue="q", exchange="x", routing_key="k"), m.Queue.BindOk())
    new.close_ok(1)
    new.open_ok(1)
    assert sim.service.state == "open"


def test_a_failed_declaration_is_not_recorded() -> None:
    sim = ServiceSim()
    conn = sim.open()
    robust = open_robust(sim, conn)
    d = robust.exchange_declare("x", "topic")
    conn.step(1, m.Exchange.Declare(exchange="x", type="topic"),
              m.Channel.Close(406, "PRECONDITION_FAILED - inequivalent arg 'type'", 40, 10))
    failure(d, PreconditionFailed)
    assert len(sim.service.topology) == 0


def test_deleting_a_queue_forgets_its_bindings() -> None:
    sim = ServiceSim()
    conn = sim.open()
    robust = open_robust(sim, conn)
    call(conn, robust.exchange_declare("x"), 1, m.Exchange.Declare(exchange="x"),
         m.Exchange.DeclareOk())
    call(conn, robust.queue_declare("q"), 1, m.Queue.Declare(queue="q"),
         m.Queue.DeclareOk("q", 0, 0))
    call(conn, robust.queue_bind("q", "x", "a"), 1,
         m.Queue.Bind(queue="q", exchange="x", routing_key="a"), m.Queue.BindOk())
    call(conn, robust.queue_delete("q"), 1, m.Queue.Delete(queue="q"), m.Queue.DeleteOk(0))
    assert [key for key, _ in sim.service.topology.entries()] == [("exchange", "x")]


def test_a_restore_failure_fails_the_attempt_and_it_is_retried() -> None:
    policy = fixed_policy(2.0)
    sim = ServiceSim(policy=policy)
    conn = sim.open()
    robust = open_robust(sim, conn)
    call(conn, robust.exchange_declare("x", durable=True), 1,
         m.Exchange.Declare(exchange="x", durable=True), m.Exchange.DeclareOk())
    call(conn, robust.queue_declare("q"), 1, m.Queue.Declare(queue="q"),
         m.Queue.DeclareOk("q", 0, 0))
    conn.lose_uncleanly()
    assert policy.calls == [1]  # type: ignore[attr-defined]
    sim.advance(2.0)
    with capture_logs() as logs:
        bad = sim.accept(restore=False)
        bad.open_ok(1)
        # the broker refuses the replayed declaration: the attempt fails and is dropped
        bad.step(1, m.Exchange.Declare(exchange="x", durable=True),
                 m.Channel.Close(406, "PRECONDITION_FAILED - inequivalent arg 'durable'",
                                 40, 10))
    assert bad.broker.methods() == [(1, m.Channel.CloseOk()),
                                    (0, m.Connection.Close(200, "Normal shutdown", 0, 0))]
    assert [e for e in logs.events if "could not open" in e.get("log_format", "")]
    assert sim.service.state == "recovering"
    assert not robust.is_open
    failure(robust.queue_declare("q"), ConnectionRecovering)
    # The next attempt waits until the rejected connection is gone: its delay is for the
    # second failure in a row.
    assert policy.calls == [1]  # type: ignore[attr-defined]
    bad.broker.send(0, m.Connection.CloseOk())
    bad.finish_close()
    assert policy.calls == [1, 2]  # type: ignore[attr-defined]
    sim.advance(2.0)
    good = sim.accept(restore=False)
    good.open_ok(1)
    good.step(1, m.Exchange.Declare(exchange="x", durable=True), m.Exchange.DeclareOk())
    good.step(1, m.Queue.Declare(queue="q"), m.Queue.DeclareOk("q", 0, 0))
    good.close_ok(1)
    good.open_ok(1)
    assert sim.service.state == "open"
    assert sim.states == ["connecting", "open", "recovering", "open"]
    assert robust.is_open


# -- setup(channel) -------------------------------------------------------------------------------

def test_setup_replaces_the_replay_and_may_return_a_deferred() -> None:
    pending: list[defer.Deferred[None]] = []
    channels: list[Channel] = []

    def setup(channel: Channel) -> defer.Deferred[None]:
        channels.append(channel)
        d: defer.Deferred[None] = defer.Deferred()
        pending.append(d)
        channel.queue_declare("from-setup", durable=True)
        return d

    sim = ServiceSim(setup=setup)
    sim.start()
    conn = sim.accept(restore=False)
    conn.open_ok(1)
    assert len(channels) == 1 and channels[0].channel_number == 1
    conn.step(1, m.Queue.Declare(queue="from-setup", durable=True),
              m.Queue.DeclareOk("from-setup", 0, 0))
    assert sim.service.state == "connecting"  # the setup's Deferred has not fired
    conn.broker.expect_nothing()
    pending[0].callback(None)
    conn.close_ok(1)
    assert sim.service.state == "open"
    # recorded topology is not replayed when there is a setup
    robust = open_robust(sim, conn)
    call(conn, robust.exchange_declare("recorded"), 1, m.Exchange.Declare(exchange="recorded"),
         m.Exchange.DeclareOk())
    new = reconnect(sim, conn)
    new.open_ok(1)
    assert len(channels) == 2
    new.step(1, m.Queue.Declare(queue="from-setup", durable=True),
             m.Queue.DeclareOk("from-setup", 0, 0))
    pending[1].callback(None)
    new.close_ok(1)
    new.open_ok(1)  # the robust channel
    assert sim.service.state == "open"


def test_setup_may_be_a_coroutine() -> None:
    async def setup(channel: Channel) -> None:
        await channel.exchange_declare("jobs", "direct", durable=True)
        ok = await channel.queue_declare("jobs", durable=True)
        await channel.queue_bind(ok.queue, "jobs", "job")

    sim = ServiceSim(setup=setup)
    sim.start()
    conn = sim.accept(restore=False)
    conn.open_ok(1)
    conn.step(1, m.Exchange.Declare(exchange="jobs", durable=True), m.Exchange.DeclareOk())
    conn.step(1, m.Queue.Declare(queue="jobs", durable=True), m.Queue.DeclareOk("jobs", 0, 0))
    conn.step(1, m.Queue.Bind(queue="jobs", exchange="jobs", routing_key="job"),
              m.Queue.BindOk())
    assert sim.service.state == "connecting"
    conn.close_ok(1)
    assert sim.service.state == "open"


def test_a_failing_setup_makes_the_attempt_fail_and_retry() -> None:
    attempts: list[int] = []

    async def setup(channel: Channel) -> None:
        attempts.append(1)
        await channel.queue_declare("q", passive=True)

    sim = ServiceSim(setup=setup)
    sim.start()
    conn = sim.accept(restore=False)
    conn.open_ok(1)
    conn.step(1, m.Queue.Declare(queue="q", passive=True),
              m.Channel.Close(404, "NOT_FOUND - no queue 'q'", 50, 10))
    assert conn.broker.methods() == [(1, m.Channel.CloseOk()),
                                     (0, m.Connection.Close(200, "Normal shutdown", 0, 0))]
    assert sim.service.state == "connecting"
    conn.broker.send(0, m.Connection.CloseOk())
    conn.finish_close()
    sim.advance(1.0)
    second = sim.accept(restore=False)
    second.open_ok(1)
    second.step(1, m.Queue.Declare(queue="q", passive=True), m.Queue.DeclareOk("q", 0, 0))
    second.close_ok(1)
    assert sim.states == ["connecting", "open"]
    assert len(attempts) == 2


def test_a_setup_raising_at_once_makes_the_attempt_fail() -> None:
    def setup(channel: Channel) -> None:
        raise ValueError("bad setup")

    sim = ServiceSim(setup=setup)
    sim.start()
    conn = sim.accept(restore=False)
    conn.open_ok(1)
    conn.step(0, m.Connection.Close(200, "Normal shutdown", 0, 0))
    assert sim.service.state == "connecting"


# -- robust channel after a channel error ---------------------------------------------------------

def consuming_channel(sim: ServiceSim, conn: BrokerConn, queue: str = "q",
                      tag: str = "c1", **kw: Any) -> tuple[RobustChannel, RobustConsumer]:
    robust = open_robust(sim, conn)
    call(conn, robust.basic_qos(prefetch_count=3), 1, m.Basic.Qos(prefetch_count=3),
         m.Basic.QosOk())
    d = robust.basic_consume(queue, consumer_tag=tag, **kw)
    conn.step(1, m.Basic.Consume(queue=queue, consumer_tag=tag), m.Basic.ConsumeOk(tag))
    consumer = success(d)
    assert isinstance(consumer, RobustConsumer)
    return robust, consumer


def test_a_channel_error_reopens_the_channel_with_its_state() -> None:
    sim = ServiceSim()
    conn = sim.open()
    robust, consumer = consuming_channel(sim, conn)
    call(conn, robust.confirm_select(), 1, m.Confirm.Select(False), m.Confirm.SelectOk())
    published = robust.basic_publish("missing", "k", b"body")
    conn.broker.commands()
    conn.broker.close_channel(1, 404, "NOT_FOUND - no exchange 'missing'", 60, 40)
    assert conn.broker.methods() == [(1, m.Channel.CloseOk())]
    assert failure(published).reason.reply_code == 404  # type: ignore[attr-defined]
    assert not robust.is_open
    failure(robust.queue_declare("x"), ConnectionRecovering)
    conn.broker.expect_nothing()  # not from inside the broker's channel.close
    sim.advance(0)  # the first reopen comes on the next turn, the next ones back off
    conn.open_ok(1)
    conn.step(1, m.Basic.Qos(prefetch_count=3), m.Basic.QosOk())
    conn.step(1, m.Confirm.Select(False), m.Confirm.SelectOk())
    conn.step(1, m.Basic.Consume(queue="q", consumer_tag="c1"), m.Basic.ConsumeOk("c1"))
    assert robust.is_open
    assert sim.service.state == "open"  # a channel error is not a connection loss
    # and it works again
    got = consumer.get()
    conn.broker.deliver(1, "c1", 1, b"after")
    assert success(got).body == b"after"


def test_reopening_after_repeated_channel_errors_backs_off() -> None:
    sim = ServiceSim()
    conn = sim.open()
    robust, _consumer = consuming_channel(sim, conn)
    with capture_logs():
        conn.broker.close_channel(1, 404, "NOT_FOUND - no exchange", 60, 40)
        assert conn.broker.methods() == [(1, m.Channel.CloseOk())]
        sim.advance(0)
        conn.open_ok(1)
        conn.step(1, m.Basic.Qos(prefetch_count=3), m.Basic.QosOk())
        conn.step(1, m.Basic.Consume(queue="q", consumer_tag="c1"), m.Basic.ConsumeOk("c1"))
        # a success reset the delay: after the next channel error it reopens at once again
        conn.broker.close_channel(1, 404, "NOT_FOUND - no exchange", 60, 40)
        assert conn.broker.methods() == [(1, m.Channel.CloseOk())]
        sim.advance(0)
        conn.open_ok(1)
        conn.step(1, m.Basic.Qos(prefetch_count=3), m.Basic.QosOk())
        # this time the consume fails: the queue is gone
        conn.step(1, m.Basic.Consume(queue="q", consumer_tag="c1"),
                  m.Channel.Close(404, "NOT_FOUND - no queue 'q'", 60, 20))
        assert conn.broker.methods() == [(1, m.Channel.CloseOk())]
        assert not robust.is_open
        # the next try comes after a backoff delay, longer each time it fails
        delays = []
        for _ in range(3):
            (reopen,) = [c for c in sim.reactor.getDelayedCalls()
                         if getattr(c.func, "__name__", "") == "reopen"]
            delay = reopen.getTime() - sim.reactor.seconds()
            delays.append(round(delay, 3))
            sim.advance(delay - 0.001)
            conn.broker.expect_nothing()
            sim.advance(0.001)
            conn.open_ok(1)
            conn.step(1, m.Basic.Qos(prefetch_count=3), m.Basic.QosOk())
            conn.step(1, m.Basic.Consume(queue="q", consumer_tag="c1"),
                      m.Channel.Close(404, "NOT_FOUND - no queue 'q'", 60, 20))
            assert conn.broker.methods() == [(1, m.Channel.CloseOk())]
        assert delays == [0.1, 0.2, 0.4]
    # the queue is back: the next try succeeds
    sim.advance(30)
    conn.open_ok(1)
    conn.step(1, m.Basic.Qos(prefetch_count=3), m.Basic.QosOk())
    conn.step(1, m.Basic.Consume(queue="q", consumer_tag="c1"), m.Basic.ConsumeOk("c1"))
    assert robust.is_open


def test_a_channel_closed_by_the_client_is_not_reopened() -> None:
    sim = ServiceSim()
    conn = sim.open()
    robust, consumer = consuming_channel(sim, conn)
    waiting = consumer.get()
    d = robust.close()
    conn.close_ok(1)
    assert success(d) is None
    # its consumers end with it: nobody waits forever
    failure(waiting, ConsumerCancelled)
    failure(consumer.get(), ConsumerCancelled)
    assert not consumer.active
    sim.advance(60)
    conn.broker.expect_nothing()
    with pytest.raises(UsageError):
        robust._current()
    failure(robust.queue_declare("x"), UsageError)
    # nor after a reconnect
    new = reconnect(sim, conn)
    new.restore_empty()
    new.broker.expect_nothing()
    assert sim.service.state == "open"


# -- robust consumers -----------------------------------------------------------------------------

def test_pull_get_waits_through_a_reconnect() -> None:
    sim = ServiceSim()
    conn = sim.open()
    _robust, consumer = consuming_channel(sim, conn)
    first = consumer.get()
    conn.broker.deliver(1, "c1", 1, b"one")
    message = success(first)
    assert message.body == b"one"
    waiting = consumer.get()
    conn.lose_uncleanly()
    no_result(waiting)  # not failed by the loss
    new = reconnect_restored(sim, conn)
    new.open_ok(1)
    new.step(1, m.Basic.Qos(prefetch_count=3), m.Basic.QosOk())
    new.step(1, m.Basic.Consume(queue="q", consumer_tag="c1"), m.Basic.ConsumeOk("c1"))
    no_result(waiting)
    new.broker.deliver(1, "c1", 1, b"two", redelivered=True)
    got = success(waiting)
    assert isinstance(got, Message) and got.body == b"two" and got.redelivered
    assert got.channel is not None and got.channel._port is new.protocol._port
    success(got.ack())
    new.step(1, m.Basic.Ack(1, False))
    # acking the first message (from the old connection) is a local error, nothing is sent
    failure(message.ack(), UsageError)
    new.broker.expect_nothing()


def reconnect_restored(sim: ServiceSim, conn: BrokerConn) -> BrokerConn:
    if sim.service.state != "recovering":
        conn.lose_uncleanly()
    sim.advance(1.0)
    new = sim.accept(restore=False)
    new.restore_empty()
    return new


def test_async_for_over_a_robust_consumer_survives_a_reconnect() -> None:
    sim = ServiceSim()
    conn = sim.open()
    _robust, consumer = consuming_channel(sim, conn)
    bodies: list[bytes] = []

    async def loop() -> None:
        async for message in consumer:
            bodies.append(message.body)

    done = defer.ensureDeferred(loop())
    conn.broker.deliver(1, "c1", 1, b"a")
    conn.lose_uncleanly()
    new = reconnect_restored(sim, conn)
    new.open_ok(1)
    new.step(1, m.Basic.Qos(prefetch_count=3), m.Basic.QosOk())
    new.step(1, m.Basic.Consume(queue="q", consumer_tag="c1"), m.Basic.ConsumeOk("c1"))
    new.broker.deliver(1, "c1", 1, b"b")
    assert bodies == [b"a", b"b"]
    cancelled = consumer.cancel()
    new.step(1, m.Basic.Cancel("c1", False), m.Basic.CancelOk("c1"))
    success(cancelled)
    assert success(done) is None  # the loop ended normally
    assert not consumer.active


def test_a_push_consumer_is_restarted_with_its_callback() -> None:
    sim = ServiceSim()
    conn = sim.open()
    got: list[bytes] = []
    robust = open_robust(sim, conn)
    d = robust.basic_consume("q", lambda message: got.append(message.body), consumer_tag="p")
    conn.step(1, m.Basic.Consume(queue="q", consumer_tag="p"), m.Basic.ConsumeOk("p"))
    success(d)
    conn.broker.deliver(1, "p", 1, b"1")
    new = reconnect_restored(sim, conn)
    new.open_ok(1)
    new.step(1, m.Basic.Consume(queue="q", consumer_tag="p"), m.Basic.ConsumeOk("p"))
    new.broker.deliver(1, "p", 1, b"2")
    assert got == [b"1", b"2"]


def test_a_consumer_without_a_tag_keeps_its_generated_tag() -> None:
    sim = ServiceSim()
    conn = sim.open()
    robust = open_robust(sim, conn)
    d = robust.basic_consume("q")
    ((_, consume),) = conn.broker.methods()
    tag = consume.consumer_tag
    assert tag.startswith("txpika.") and len(tag) > len("txpika.")
    conn.broker.send(1, m.Basic.ConsumeOk(tag))
    assert success(d).consumer_tag == tag
    new = reconnect_restored(sim, conn)
    new.open_ok(1)
    new.step(1, m.Basic.Consume(queue="q", consumer_tag=tag), m.Basic.ConsumeOk(tag))


def test_broker_cancel_with_on_cancel_end() -> None:
    sim = ServiceSim()
    conn = sim.open()
    _robust, consumer = consuming_channel(sim, conn)
    waiting = consumer.get()
    with capture_logs():
        conn.broker.send(1, m.Basic.Cancel("c1", True))
    failure(waiting, ConsumerCancelled)
    failure(consumer.get(), ConsumerCancelled)
    assert not consumer.active
    conn.broker.expect_nothing()
    # ended for good: not started again after a reconnect
    new = reconnect_restored(sim, conn)
    new.open_ok(1)
    new.step(1, m.Basic.Qos(prefetch_count=3), m.Basic.QosOk())
    new.broker.expect_nothing()


def test_broker_cancel_with_on_cancel_end_fails_async_for() -> None:
    sim = ServiceSim()
    conn = sim.open()
    _robust, consumer = consuming_channel(sim, conn)

    async def loop() -> None:
        async for _message in consumer:
            pass

    done = defer.ensureDeferred(loop())
    with capture_logs():
        conn.broker.send(1, m.Basic.Cancel("c1", True))
    failure(done, ConsumerCancelled)


def test_broker_cancel_with_on_cancel_reconsume() -> None:
    sim = ServiceSim()
    conn = sim.open()
    robust = open_robust(sim, conn)
    call(conn, robust.queue_declare("work", durable=True), 1,
         m.Queue.Declare(queue="work", durable=True), m.Queue.DeclareOk("work", 0, 0))
    d = robust.basic_consume("work", consumer_tag="w", on_cancel="reconsume")
    conn.step(1, m.Basic.Consume(queue="work", consumer_tag="w"), m.Basic.ConsumeOk("w"))
    consumer = success(d)
    waiting = consumer.get()
    with capture_logs():
        conn.broker.send(1, m.Basic.Cancel("w", True))  # the queue was deleted
    # declared again from the recorded topology, then consumed again with the same tag
    conn.step(1, m.Queue.Declare(queue="work", durable=True), m.Queue.DeclareOk("work", 0, 0))
    conn.step(1, m.Basic.Consume(queue="work", consumer_tag="w"), m.Basic.ConsumeOk("w"))
    assert consumer.active
    no_result(waiting)
    conn.broker.deliver(1, "w", 7, b"again")
    assert success(waiting).body == b"again"


def test_reconsume_of_an_unrecorded_queue_consumes_without_declaring() -> None:
    sim = ServiceSim()
    conn = sim.open()
    robust = open_robust(sim, conn)
    d = robust.basic_consume("external", consumer_tag="e", on_cancel="reconsume")
    conn.step(1, m.Basic.Consume(queue="external", consumer_tag="e"), m.Basic.ConsumeOk("e"))
    consumer = success(d)
    with capture_logs() as logs:
        conn.broker.send(1, m.Basic.Cancel("e", True))
        # it is gone for good this time: the consume fails and the consumer ends
        conn.step(1, m.Basic.Consume(queue="external", consumer_tag="e"),
                  m.Channel.Close(404, "NOT_FOUND - no queue 'external'", 60, 20))
    # Said once, as a warning with the reason (a queue on a node that is down is usual in
    # a cluster): no traceback.
    warned = [e for e in logs.events if "could not restart consumer" in e.get("log_format", "")]
    assert len(warned) == 1 and "NOT_FOUND" in str(warned[0]["error"])
    assert logs.failures() == []
    failure(consumer.get(), ConsumerCancelled)
    assert not consumer.active


def test_bad_on_cancel_is_a_usage_error() -> None:
    sim = ServiceSim()
    conn = sim.open()
    robust = open_robust(sim, conn)
    failure(robust.basic_consume("q", on_cancel="retry"), UsageError)
    conn.broker.expect_nothing()


def test_cancel_is_forever() -> None:
    sim = ServiceSim()
    conn = sim.open()
    robust, consumer = consuming_channel(sim, conn)
    d = robust.basic_cancel("c1")
    conn.step(1, m.Basic.Cancel("c1", False), m.Basic.CancelOk("c1"))
    success(d)
    failure(consumer.get(), ConsumerCancelled)
    new = reconnect_restored(sim, conn)
    new.open_ok(1)
    new.step(1, m.Basic.Qos(prefetch_count=3), m.Basic.QosOk())
    new.broker.expect_nothing()


def test_a_get_abandoned_during_recovery_is_not_fired_later() -> None:
    sim = ServiceSim()
    conn = sim.open()
    _robust, consumer = consuming_channel(sim, conn)
    conn.lose_uncleanly()
    d = consumer.get()
    d.cancel()
    failure(d, defer.CancelledError)
    new = reconnect_restored(sim, conn)
    new.open_ok(1)
    new.step(1, m.Basic.Qos(prefetch_count=3), m.Basic.QosOk())
    new.step(1, m.Basic.Consume(queue="q", consumer_tag="c1"), m.Basic.ConsumeOk("c1"))
    later = consumer.get()
    new.broker.deliver(1, "c1", 1, b"x")
    assert success(later).body == b"x"


def test_consumer_on_a_missing_queue_fails_and_is_not_recorded() -> None:
    sim = ServiceSim()
    conn = sim.open()
    robust = open_robust(sim, conn)
    d = robust.basic_consume("nope", consumer_tag="n")
    conn.step(1, m.Basic.Consume(queue="nope", consumer_tag="n"),
              m.Channel.Close(404, "NOT_FOUND - no queue 'nope'", 60, 20))
    failure(d, NotFound)
    assert conn.broker.methods() == [(1, m.Channel.CloseOk())]
    sim.advance(0)
    conn.open_ok(1)  # reopened, without that consumer
    conn.broker.expect_nothing()
    assert robust.is_open


def test_pull_get_fails_when_the_service_stops() -> None:
    sim = ServiceSim()
    conn = sim.open()
    _robust, consumer = consuming_channel(sim, conn)
    waiting = consumer.get()
    stopped = sim.service.stopService()
    conn.close_by_client()
    success(stopped)
    failure(waiting, ServiceStopped)
    failure(consumer.get(), ServiceStopped)


def test_pull_get_waiting_through_recovery_fails_when_the_service_stops() -> None:
    sim = ServiceSim()
    conn = sim.open()
    _robust, consumer = consuming_channel(sim, conn)
    conn.lose_uncleanly()
    waiting = consumer.get()
    no_result(waiting)
    success(sim.service.stopService())
    failure(waiting, ServiceStopped)


def test_async_for_ends_with_service_stopped() -> None:
    sim = ServiceSim()
    conn = sim.open()
    _robust, consumer = consuming_channel(sim, conn)

    async def loop() -> None:
        async for _message in consumer:
            pass

    done = defer.ensureDeferred(loop())
    conn.lose_uncleanly()
    no_result(done)
    success(sim.service.stopService())
    failure(done, ServiceStopped)


def test_a_connection_lost_during_the_replay_is_retried() -> None:
    sim = ServiceSim()
    conn = sim.open()
    robust = open_robust(sim, conn)
    call(conn, robust.exchange_declare("x"), 1, m.Exchange.Declare(exchange="x"),
         m.Exchange.DeclareOk())
    new = reconnect(sim, conn)
    new.open_ok(1)
    new.step(1, m.Exchange.Declare(exchange="x"))
    new.lose_uncleanly()  # before declare-ok
    assert sim.states == ["connecting", "open", "recovering"]
    sim.advance(1.0)
    third = sim.accept(restore=False)
    third.open_ok(1)
    third.step(1, m.Exchange.Declare(exchange="x"), m.Exchange.DeclareOk())
    third.close_ok(1)
    third.open_ok(1)
    assert sim.states == ["connecting", "open", "recovering", "open"]
    assert robust.is_open


def test_stop_during_the_replay() -> None:
    sim = ServiceSim()
    conn = sim.open()
    robust = open_robust(sim, conn)
    call(conn, robust.exchange_declare("x"), 1, m.Exchange.Declare(exchange="x"),
         m.Exchange.DeclareOk())
    new = reconnect(sim, conn)
    new.open_ok(1)
    new.step(1, m.Exchange.Declare(exchange="x"))
    with capture_logs():
        stopped = sim.service.stopService()
    assert sim.service.state == "closed"
    # the half-restored connection is closed cleanly, and nothing reconnects
    no_result(stopped)
    new.close_by_client()
    assert success(stopped) is None
    sim.advance(60)
    assert sim.pending() == []
    failure(robust.queue_declare("q"), ServiceStopped)
