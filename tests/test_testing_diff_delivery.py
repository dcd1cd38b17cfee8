"""Differential scenarios, part 2: consumers, acknowledgements, confirms, transactions,
dead-lettering, TTL and length limits.

Each scenario runs against RabbitMQ, MemoryBroker.listen() and MemoryBroker.connect()
(tests/differential.py); the same assertions must hold on all three.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from differential import BACKENDS, Env, Scenario, run
from twisted.internet.defer import DeferredList

import txpika
from txpika import errors

SCENARIOS: list[Scenario] = []


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS.append(fn)
    return fn


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SCENARIOS, ids=lambda f: f.__name__)
@pytest_twisted.ensureDeferred
async def test_scenario(case: Scenario, backend: str, request: pytest.FixtureRequest) -> None:
    await run(case, backend, request)


async def queue_with(env: Env, ch: Any, bodies: list[bytes], **declare: Any) -> str:
    """A new queue holding ``bodies`` (published with confirms on a channel of its own)."""
    q = env.name()
    await env.within(ch.queue_declare(q, **declare))
    pub = await env.channel()
    await env.within(pub.confirm_select())
    await env.within(DeferredList([pub.basic_publish("", q, b) for b in bodies],
                                  fireOnOneErrback=True, consumeErrors=True))
    await env.within(pub.close())
    return q


async def gets(env: Env, consumer: Any, count: int) -> list[Any]:
    return [await env.within(consumer.get()) for _ in range(count)]


# -- consumers ---------------------------------------------------------------------------------


@scenario
async def per_consumer_prefetch(env: Env) -> None:
    ch = await env.channel()
    q = await queue_with(env, ch, [f"m{i}".encode() for i in range(5)])
    await env.within(ch.basic_qos(prefetch_count=2))
    consumer = await env.within(ch.basic_consume(q))
    first = await gets(env, consumer, 2)
    assert [m.body for m in first] == [b"m0", b"m1"]
    await env.nothing(consumer.get())  # the third waits for an ack
    await env.within(first[0].ack())
    (third,) = await gets(env, consumer, 1)
    assert third.body == b"m2"
    ok = await env.within(ch.queue_declare(q, passive=True))
    assert (ok.message_count, ok.consumer_count) == (2, 1)


@scenario
async def round_robin_between_consumers(env: Env) -> None:
    ch = await env.channel()
    q = env.name()
    await env.within(ch.queue_declare(q))
    a = await env.within(ch.basic_consume(q, auto_ack=True))
    b = await env.within(ch.basic_consume(q, auto_ack=True))
    pub = await env.channel()
    await env.within(pub.confirm_select())
    for i in range(4):
        await env.within(pub.basic_publish("", q, f"m{i}".encode()))
    got_a = [m.body for m in await gets(env, a, 2)]
    got_b = [m.body for m in await gets(env, b, 2)]
    assert sorted(got_a + got_b) == [b"m0", b"m1", b"m2", b"m3"]
    assert got_a in ([b"m0", b"m2"], [b"m1", b"m3"])


@scenario
async def cancel_and_cancel_notification(env: Env) -> None:
    ch = await env.channel()
    q = await queue_with(env, ch, [b"kept"])
    consumer = await env.within(ch.basic_consume(q, consumer_tag="tag-" + q))
    assert consumer.consumer_tag == "tag-" + q
    message = await env.within(consumer.get())
    await env.within(message.nack(requeue=True))  # back, and redelivered to it at once
    again = await env.within(consumer.get())
    assert (again.body, again.redelivered) == (b"kept", True)
    await env.within(consumer.cancel())
    await env.within(again.nack(requeue=True))

    async def back() -> bool:
        return (await env.within(ch.queue_declare(q, passive=True))).message_count == 1

    await env.eventually(back)
    # The broker cancels a consumer whose queue is deleted.
    watched = await env.within(ch.basic_consume(q))
    await env.within(watched.get())
    other = await env.channel()
    await env.within(other.queue_delete(q))
    error = await env.failure(watched.get())
    assert isinstance(error, txpika.ConsumerCancelled)
    assert not watched.active
    assert ch.is_open
    # A consumer tag in use on the channel is a connection error.
    q2 = await queue_with(env, ch, [])
    conn = await env.connect()
    ch2 = await env.channel(conn)
    await env.within(ch2.basic_consume(q2, consumer_tag="same"))
    error = await env.failure(ch2.basic_consume(q2, consumer_tag="same"))
    assert isinstance(error, errors.NotAllowed)
    assert error.reply_text == "NOT_ALLOWED - attempt to reuse consumer tag 'same'"


@scenario
async def exclusive_consumer(env: Env) -> None:
    ch = await env.channel()
    q = await queue_with(env, ch, [])
    await env.within(ch.basic_consume(q, exclusive=True))
    other = await env.channel()
    error = await env.failure(other.basic_consume(q))
    assert isinstance(error, errors.AccessRefused)
    assert error.reply_text == f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"


# -- acknowledgements ------------------------------------------------------------------------


@scenario
async def ack_nack_reject_requeue_and_order(env: Env) -> None:
    ch = await env.channel()
    q = await queue_with(env, ch, [f"m{i}".encode() for i in range(6)])
    getter = await env.channel()
    got = [await env.within(getter.basic_get(q)) for _ in range(6)]
    assert [m.delivery_tag for m in got] == [1, 2, 3, 4, 5, 6]
    await env.within(got[1].ack(multiple=True))            # m0, m1
    await env.within(got[2].reject(requeue=True))          # m2 back, first in line
    await env.within(got[4].nack(requeue=True, multiple=True))  # m3, m4 back
    await env.within(got[5].nack(requeue=False))           # m5 dropped (no DLX)
    again = [await env.within(getter.basic_get(q)) for _ in range(3)]
    assert [(m.body, m.redelivered) for m in again] == [
        (b"m2", True), (b"m3", True), (b"m4", True)]
    assert again[-1].message_count == 0
    await env.within(again[0].ack(multiple=False))
    await env.within(getter.close())  # unacked m3, m4 go back on close
    ok = await env.within(ch.queue_declare(q, passive=True))
    assert ok.message_count == 2


@scenario
async def recover_requeues_unacked(env: Env) -> None:
    ch = await env.channel()
    q = await queue_with(env, ch, [b"a", b"b"])
    consumer = await env.within(ch.basic_consume(q))
    first = await gets(env, consumer, 2)
    assert [m.redelivered for m in first] == [False, False]
    await env.within(ch.basic_recover(requeue=True))
    second = await gets(env, consumer, 2)
    assert [(m.body, m.redelivered) for m in second] == [(b"a", True), (b"b", True)]
    for m in second:
        await env.within(m.ack())
    error = await env.failure(ch.basic_recover(requeue=False))
    assert isinstance(error, errors.NotImplemented_)
    assert error.reply_text == "NOT_IMPLEMENTED - requeue=false"


# -- confirms and transactions ---------------------------------------------------------------


@scenario
async def confirms_ack_many_and_nack_when_full(env: Env) -> None:
    ch = await env.channel()
    q = env.name()
    await env.within(ch.queue_declare(q, arguments={"x-max-length": 3,
                                                    "x-overflow": "reject-publish"}))
    await env.within(ch.confirm_select())
    publishes = [ch.basic_publish("", q, f"m{i}".encode()) for i in range(5)]
    results = await env.within(DeferredList(publishes, consumeErrors=True))
    assert [ok for ok, _ in results] == [True, True, True, False, False]
    assert all(isinstance(r.value, txpika.NackError) for ok, r in results if not ok)
    ok = await env.within(ch.queue_declare(q, passive=True, arguments={
        "x-max-length": 3, "x-overflow": "reject-publish"}))
    assert ok.message_count == 3
    # Many in flight at once all confirm (the broker may ack them with multiple).
    q2 = env.name()
    await env.within(ch.queue_declare(q2))
    many = await env.within(DeferredList([ch.basic_publish("", q2, b"x") for _ in range(200)],
                                         fireOnOneErrback=True, consumeErrors=True), 20)
    assert len(many) == 200
    assert (await env.within(ch.queue_declare(q2, passive=True))).message_count == 200


@scenario
async def transactions_commit_and_rollback(env: Env) -> None:
    ch = await env.channel()
    q = await queue_with(env, ch, [b"old"])
    tx = await env.channel()
    await env.within(tx.tx_select())
    await tx.basic_publish("", q, b"new")
    got = await env.within(tx.basic_get(q))
    assert got.body == b"old"
    await env.within(got.ack())
    assert (await env.within(ch.queue_declare(q, passive=True))).message_count == 0
    await env.within(tx.tx_rollback())  # neither the publish nor the ack happened
    await env.within(tx.basic_publish("", q, b"committed"))
    await env.within(tx.tx_commit())
    ok = await env.within(ch.queue_declare(q, passive=True))
    assert ok.message_count == 1  # "committed"; "old" still unacked by tx
    await env.within(tx.close())
    names = [(await env.within(ch.basic_get(q, auto_ack=True))).body for _ in range(2)]
    assert sorted(names) == [b"committed", b"old"]
    for call, text in [(lambda c: c.tx_commit(), "channel is not transactional"),
                       (lambda c: c.tx_rollback(), "channel is not transactional")]:
        other = await env.channel()
        error = await env.failure(call(other))
        assert error.reply_text == f"PRECONDITION_FAILED - {text}"  # type: ignore[attr-defined]
    mixed = await env.channel()
    await env.within(mixed.confirm_select())
    error = await env.failure(mixed.tx_select())
    assert error.reply_text == ("PRECONDITION_FAILED - cannot switch from confirm to tx "  # type: ignore[attr-defined]
                                "mode")
    mixed = await env.channel()
    await env.within(mixed.tx_select())
    error = await env.failure(mixed.confirm_select())
    assert error.reply_text == ("PRECONDITION_FAILED - cannot switch from tx to confirm "  # type: ignore[attr-defined]
                                "mode")


# -- dead letters, TTL, length ---------------------------------------------------------------


def death(message: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first x-death record, without its time, and the x-first-death headers."""
    headers = dict(message.properties.headers)
    (record, *_) = headers.pop("x-death")
    record = dict(record)
    assert record.pop("time").tzinfo is not None
    return record, headers


async def dead_letter_setup(env: Env, ch: Any, **arguments: Any) -> tuple[str, str, Any]:
    """A source queue dead-lettering to a fanout exchange and a consumer of its queue."""
    dlx, dead = env.name("dlx"), env.name("dead")
    await env.within(ch.exchange_declare(dlx, "fanout"))
    await env.within(ch.queue_declare(dead))
    await env.within(ch.queue_bind(dead, dlx))
    source = env.name("src")
    await env.within(ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx,
                                                         **arguments}))
    return dlx, source, await env.within(ch.basic_consume(dead, auto_ack=True))


@scenario
async def dead_letter_on_reject_with_x_death(env: Env) -> None:
    ch = await env.channel()
    dlx, source, dead = await dead_letter_setup(env, ch)
    await env.within(ch.confirm_select())
    props = txpika.BasicProperties(headers={"CC": ["copy"], "app": 1}, expiration="60000",
                                   message_id="id-1")
    await env.within(ch.basic_publish("", source, b"body", properties=props))
    got = await env.within(ch.basic_get(source))
    await env.within(got.reject(requeue=False))
    message = await env.within(dead.get())
    assert (message.body, message.exchange, message.routing_key) == (b"body", dlx, source)
    assert (message.properties.expiration, message.properties.message_id) == (None, "id-1")
    record, headers = death(message)
    assert record == {"count": 1, "reason": "rejected", "queue": source, "exchange": "",
                      "routing-keys": [source, "copy"], "original-expiration": "60000"}
    assert headers == {"CC": ["copy"], "app": 1, "x-first-death-exchange": "",
                       "x-first-death-queue": source, "x-first-death-reason": "rejected"}
    got = await env.within(ch.basic_get(source))  # nack without requeue: the same
    assert got is None


@scenario
async def dead_letter_on_ttl_expiry(env: Env) -> None:
    ch = await env.channel()
    _, source, dead = await dead_letter_setup(env, ch, **{
        "x-message-ttl": 200, "x-dead-letter-routing-key": "expired-key"})
    await env.within(ch.queue_bind(source, "amq.direct", source))
    await env.within(ch.confirm_select())
    await env.within(ch.basic_publish("amq.direct", source, b"late"))
    await env.within(ch.basic_publish("", source, b"own ttl", properties=txpika.BasicProperties(
        expiration="100")))
    await env.nothing(dead.get(), 0.1)
    first = await env.within(dead.get())
    second = await env.within(dead.get())
    assert [(m.body, m.routing_key) for m in (first, second)] == [
        (b"late", "expired-key"), (b"own ttl", "expired-key")]
    record, headers = death(first)
    assert record == {"count": 1, "reason": "expired", "queue": source,
                      "exchange": "amq.direct", "routing-keys": [source]}
    assert headers["x-first-death-reason"] == "expired"
    assert death(second)[0]["original-expiration"] == "100"
    assert (await env.within(ch.queue_declare(source, passive=True))).message_count == 0


@scenario
async def per_message_ttl_expires_at_the_head(env: Env) -> None:
    ch = await env.channel()
    q = env.name()
    await env.within(ch.queue_declare(q))
    await env.within(ch.confirm_select())
    await env.within(ch.basic_publish("", q, b"gone", properties=txpika.BasicProperties(
        expiration="0")))
    await env.within(ch.basic_publish("", q, b"stays"))
    await env.wait(0.05)
    got = await env.within(ch.basic_get(q, auto_ack=True))
    assert (got.body, got.message_count) == (b"stays", 0)
    error = await env.failure(ch.basic_publish("", q, b"bad", properties=txpika.BasicProperties(
        expiration="soon")))
    assert isinstance(error, txpika.OutcomeUnknownError)
    reason = await env.within(ch.when_closed())
    assert reason.reply_text == "PRECONDITION_FAILED - invalid expiration 'soon': no_integer"


@scenario
async def max_length_drops_head_to_dead_letters(env: Env) -> None:
    ch = await env.channel()
    _, source, dead = await dead_letter_setup(env, ch, **{"x-max-length": 2})
    await env.within(ch.confirm_select())
    for i in range(4):
        await env.within(ch.basic_publish("", source, f"m{i}".encode()))
    dropped = [await env.within(dead.get()) for _ in range(2)]
    assert [m.body for m in dropped] == [b"m0", b"m1"]
    assert death(dropped[0])[0]["reason"] == "maxlen"
    left = [(await env.within(ch.basic_get(source, auto_ack=True))).body for _ in range(2)]
    assert left == [b"m2", b"m3"]


@scenario
async def refusals_of_unimplemented_options(env: Env) -> None:
    ch = await env.channel()
    error = await env.failure(ch.basic_qos(prefetch_size=4096))
    assert isinstance(error, errors.NotImplemented_)
    assert error.reply_text == "NOT_IMPLEMENTED - prefetch_size!=0 (4096)"
    conn = await env.connect()
    ch = await env.channel(conn)
    error = await env.failure(ch.queue_declare(env.name(), arguments={"x-overflow": "nope"}))
    assert isinstance(error, errors.PreconditionFailed)
    assert error.reply_text.endswith("invalid_overflow")


@scenario
async def dead_lettered_twice_counts_in_x_death(env: Env) -> None:
    ch = await env.channel()
    a, b = env.name("a"), env.name("b")
    to_a, to_b = env.name("to-a"), env.name("to-b")
    for x in (to_a, to_b):
        await env.within(ch.exchange_declare(x, "fanout"))
    await env.within(ch.queue_declare(a, arguments={"x-dead-letter-exchange": to_b}))
    await env.within(ch.queue_declare(b, arguments={"x-dead-letter-exchange": to_a}))
    await env.within(ch.queue_bind(a, to_a))
    await env.within(ch.queue_bind(b, to_b))
    await env.within(ch.confirm_select())
    await env.within(ch.basic_publish("", a, b"ping-pong"))
    for queue in (a, b, a):
        got = None
        while got is None:
            got = await env.within(ch.basic_get(queue))
        await env.within(got.reject(requeue=False))
    got = None
    while got is None:
        got = await env.within(ch.basic_get(b))
    deaths = [(d["queue"], d["reason"], d["count"]) for d in got.properties.headers["x-death"]]
    assert deaths == [(a, "rejected", 2), (b, "rejected", 1)]
    assert got.properties.headers["x-first-death-queue"] == a
    await env.within(got.ack())


@scenario
async def global_prefetch_is_shared_by_the_channel(env: Env) -> None:
    ch = await env.channel()
    q1 = await queue_with(env, ch, [b"a"] * 4)
    q2 = await queue_with(env, ch, [b"b"] * 4)
    await env.within(ch.basic_qos(prefetch_count=3, global_qos=True))
    got: list[Any] = []
    await env.within(ch.basic_consume(q1, got.append))
    await env.within(ch.basic_consume(q2, got.append))
    await env.wait(0.3)
    assert len(got) == 3
    await env.within(got[0].ack())
    await env.wait(0.3)
    assert len(got) == 4


@scenario
async def bcc_routes_and_is_removed(env: Env) -> None:
    ch = await env.channel()
    seen, hidden = env.name("seen"), env.name("hidden")
    for q in (seen, hidden):
        await env.within(ch.queue_declare(q))
    await env.within(ch.confirm_select())
    props = txpika.BasicProperties(headers={"BCC": [hidden], "keep": "yes"})
    await env.within(ch.basic_publish("", seen, b"both", properties=props))
    for q in (seen, hidden):
        got = await env.within(ch.basic_get(q, auto_ack=True))
        assert (got.body, got.routing_key, got.properties.headers) == (
            b"both", seen, {"keep": "yes"})


@scenario
async def max_length_bytes_and_reject_publish_dlx(env: Env) -> None:
    ch = await env.channel()
    q = env.name()
    await env.within(ch.queue_declare(q, arguments={"x-max-length-bytes": 10}))
    await env.within(ch.confirm_select())
    for i in range(4):
        await env.within(ch.basic_publish("", q, f"m{i}xx".encode()))  # 4 bytes each
    left = [(await env.within(ch.basic_get(q, auto_ack=True))).body for _ in range(2)]
    assert left == [b"m2xx", b"m3xx"]
    assert await env.within(ch.basic_get(q)) is None
    _, source, dead = await dead_letter_setup(env, ch, **{
        "x-max-length": 1, "x-overflow": "reject-publish-dlx"})
    await env.within(ch.basic_publish("", source, b"kept"))
    error = await env.failure(ch.basic_publish("", source, b"refused"))
    assert isinstance(error, txpika.NackError)
    message = await env.within(dead.get())
    assert message.body == b"refused"
    assert death(message)[0]["reason"] == "maxlen"


@scenario
async def what_counts_ready_and_what_unacked(env: Env) -> None:
    ch = await env.channel()
    # x-max-length counts ready messages only: an unacked one does not take a place.
    q = env.name("limited")
    await env.within(ch.queue_declare(q, arguments={"x-max-length": 1}))
    await env.within(ch.confirm_select())
    await env.within(ch.basic_publish("", q, b"first"))
    held = await env.within(ch.basic_get(q))
    await env.within(ch.basic_publish("", q, b"second"))
    await env.within(ch.basic_publish("", q, b"third"))  # drops "second"
    # purge and delete count (and remove) ready messages only.
    assert (await env.within(ch.queue_purge(q))).message_count == 1
    await env.within(ch.basic_publish("", q, b"fourth"))
    assert (await env.within(ch.queue_delete(q))).message_count == 1
    assert held.body == b"first"
    # basic.qos without global applies to consumers started after it.
    q2 = await queue_with(env, ch, [b"a", b"b", b"c"])
    qos = await env.channel()
    await env.within(qos.basic_qos(prefetch_count=1))
    consumer = await env.within(qos.basic_consume(q2))
    await env.within(qos.basic_qos(prefetch_count=10))
    first = await env.within(consumer.get())
    await env.nothing(consumer.get())
    await env.within(first.ack())
    # A message with TTL 0 still reaches a consumer that is waiting for it.
    q3 = env.name("ttl0")
    await env.within(ch.queue_declare(q3))
    waiting = await env.within(ch.basic_consume(q3, auto_ack=True))
    await env.within(ch.basic_publish("", q3, b"now or never", properties=txpika.BasicProperties(
        expiration="0")))
    assert (await env.within(waiting.get())).body == b"now or never"


@scenario
async def an_expiry_loop_is_broken_by_the_broker(env: Env) -> None:
    ch = await env.channel()
    a, b = env.name("a"), env.name("b")
    to_a, to_b = env.name("to-a"), env.name("to-b")
    for x in (to_a, to_b):
        await env.within(ch.exchange_declare(x, "fanout"))
    for q, dlx in ((a, to_b), (b, to_a)):
        await env.within(ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx,
                                                        "x-message-ttl": 50}))
    await env.within(ch.queue_bind(a, to_a))
    await env.within(ch.queue_bind(b, to_b))
    await env.within(ch.confirm_select())
    await env.within(ch.basic_publish("", a, b"round and round"))
    await env.wait(0.5)
    for q in (a, b):
        assert (await env.within(ch.queue_declare(q, passive=True))).message_count == 0
