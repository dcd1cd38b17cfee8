"""Differential scenarios, part 1: exchanges, routing and queues.

Each scenario runs against RabbitMQ, MemoryBroker.listen() and MemoryBroker.connect()
(tests/differential.py); the same assertions must hold on all three.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from differential import BACKENDS, Env, Scenario, run, when_closed

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


async def routed(env: Env, ch: Any, queues: list[str]) -> dict[str, list[bytes]]:
    """What waits in each queue, drained with basic.get (auto ack)."""
    out: dict[str, list[bytes]] = {}
    for q in queues:
        bodies = []
        while (m := await env.within(ch.basic_get(q, auto_ack=True))) is not None:
            bodies.append(m.body)
        out[q] = bodies
    return out


def code_and_text(error: BaseException) -> tuple[int, str]:
    return error.reply_code, error.reply_text  # type: ignore[attr-defined]


# -- exchanges and routing -------------------------------------------------------------------


@scenario
async def default_exchange_and_get_message_count(env: Env) -> None:
    ch = await env.channel()
    q = env.name()
    ok = await env.within(ch.queue_declare(q))
    assert (ok.queue, ok.message_count, ok.consumer_count) == (q, 0, 0)
    for i in range(3):
        await ch.basic_publish("", q, f"m{i}".encode())
    await ch.confirm_select()
    await env.within(ch.basic_publish("", q, b"m3"))
    assert (await env.within(ch.queue_declare(q, passive=True))).message_count == 4
    first = await env.within(ch.basic_get(q))
    assert (first.body, first.exchange, first.routing_key, first.redelivered) == (
        b"m0", "", q, False)
    assert first.message_count == 3
    await first.ack()
    rest = await routed(env, ch, [q])
    assert rest == {q: [b"m1", b"m2", b"m3"]}
    assert await env.within(ch.basic_get(q)) is None


@scenario
async def direct_fanout_topic_routing(env: Env) -> None:
    ch = await env.channel()
    direct, fanout, topic = env.name("direct"), env.name("fanout"), env.name("topic")
    await env.within(ch.exchange_declare(direct, "direct"))
    await env.within(ch.exchange_declare(fanout, exchange_type="fanout"))
    await env.within(ch.exchange_declare(topic, exchange_type="topic"))
    qa, qb, qc = env.name("a"), env.name("b"), env.name("c")
    for q in (qa, qb, qc):
        await env.within(ch.queue_declare(q))
        await env.within(ch.queue_bind(q, fanout))
    await env.within(ch.queue_bind(qa, direct, "red"))
    await env.within(ch.queue_bind(qb, direct, "red"))
    await env.within(ch.queue_bind(qc, direct, "blue"))
    await env.within(ch.queue_bind(qa, topic, "*.orange.*"))
    await env.within(ch.queue_bind(qb, topic, "*.*.rabbit"))
    await env.within(ch.queue_bind(qb, topic, "lazy.#"))
    await env.within(ch.queue_bind(qc, topic, "#"))
    await ch.confirm_select()
    for exchange, key in [(direct, "red"), (direct, "blue"), (direct, "green"),
                          (fanout, "anything"), (topic, "quick.orange.rabbit"),
                          (topic, "lazy"), (topic, "lazy.orange.elephant"),
                          (topic, "quick.orange"), (topic, "a.b.c.d"), (topic, "")]:
        await env.within(ch.basic_publish(exchange, key, f"{exchange[12:17]}:{key}".encode()))
    got = await routed(env, ch, [qa, qb, qc])
    assert got == {
        qa: [b"direc:red", b"fanou:anything", b"topic:quick.orange.rabbit",
             b"topic:lazy.orange.elephant"],
        qb: [b"direc:red", b"fanou:anything", b"topic:quick.orange.rabbit", b"topic:lazy",
             b"topic:lazy.orange.elephant"],
        qc: [b"direc:blue", b"fanou:anything", b"topic:quick.orange.rabbit", b"topic:lazy",
             b"topic:lazy.orange.elephant", b"topic:quick.orange", b"topic:a.b.c.d",
             b"topic:"],
    }


@scenario
async def headers_exchange_all_and_any(env: Env) -> None:
    ch = await env.channel()
    x = env.name("headers")
    await env.within(ch.exchange_declare(x, "headers"))
    q_all, q_any = env.name("all"), env.name("any")
    for q in (q_all, q_any):
        await env.within(ch.queue_declare(q))
    await env.within(ch.queue_bind(q_all, x, arguments={"x-match": "all", "format": "pdf",
                                                        "type": "report"}))
    await env.within(ch.queue_bind(q_any, x, arguments={"x-match": "any", "format": "pdf",
                                                        "type": "log"}))
    await ch.confirm_select()
    cases = [("both", {"format": "pdf", "type": "report"}), ("format", {"format": "pdf"}),
             ("log", {"type": "log", "x-other": 1}), ("none", {"format": "zip"}),
             ("empty", None)]
    for body, headers in cases:
        await env.within(ch.basic_publish(x, "", body.encode(),
                                          properties=txpika.BasicProperties(headers=headers)))
    got = await routed(env, ch, [q_all, q_any])
    assert got == {q_all: [b"both"], q_any: [b"both", b"format", b"log"]}


@scenario
async def exchange_to_exchange_bindings(env: Env) -> None:
    ch = await env.channel()
    upstream, downstream = env.name("up"), env.name("down")
    await env.within(ch.exchange_declare(upstream, "topic"))
    await env.within(ch.exchange_declare(downstream, "fanout"))
    q = env.name()
    await env.within(ch.queue_declare(q))
    await env.within(ch.queue_bind(q, downstream))
    await env.within(ch.exchange_bind(downstream, upstream, "orders.*"))
    await ch.confirm_select()
    await env.within(ch.basic_publish(upstream, "orders.created", b"1"))
    await env.within(ch.basic_publish(upstream, "users.created", b"2"))
    assert await routed(env, ch, [q]) == {q: [b"1"]}
    await env.within(ch.exchange_unbind(downstream, upstream, "orders.*"))
    await env.within(ch.basic_publish(upstream, "orders.created", b"3"))
    assert await routed(env, ch, [q]) == {q: []}


@scenario
async def bind_unbind_and_cc(env: Env) -> None:
    ch = await env.channel()
    x = env.name("x")
    await env.within(ch.exchange_declare(x, "direct"))
    q1, q2 = env.name("one"), env.name("two")
    for q, key in ((q1, "k1"), (q2, "k2")):
        await env.within(ch.queue_declare(q))
        await env.within(ch.queue_bind(q, x, key))
    await env.within(ch.queue_bind(q1, x, "k1"))  # twice: still one binding
    await ch.confirm_select()
    props = txpika.BasicProperties(headers={"CC": ["k2"]})
    await env.within(ch.basic_publish(x, "k1", b"cc", properties=props))
    got1 = await env.within(ch.basic_get(q1, auto_ack=True))
    got2 = await env.within(ch.basic_get(q2, auto_ack=True))
    assert (got1.body, got1.routing_key, got2.body, got2.routing_key) == (b"cc", "k1", b"cc",
                                                                          "k1")
    assert got2.properties.headers == {"CC": ["k2"]}
    await env.within(ch.queue_unbind(q1, x, "k1"))
    await env.within(ch.queue_unbind(q1, x, "not-bound"))  # unbinding nothing is fine
    await env.within(ch.basic_publish(x, "k1", b"after"))
    assert await routed(env, ch, [q1, q2]) == {q1: [], q2: []}


@scenario
async def mandatory_returns_no_route(env: Env) -> None:
    ch = await env.channel()
    returned: list[Any] = []
    env.conn.add_return_listener(returned.append)
    await ch.basic_publish("amq.direct", "nobody-" + env.name(), b"lost", mandatory=True)
    await env.within(ch.queue_declare(env.name(), passive=False))  # a round trip after it
    assert [(m.body, m.reply_code, m.reply_text) for m in returned] == [
        (b"lost", 312, "NO_ROUTE")]
    await ch.confirm_select()
    error = await env.failure(ch.basic_publish("", "nobody-" + env.name(), b"x",
                                               mandatory=True))
    assert isinstance(error, txpika.UnroutableError)
    assert (error.reply_code, error.reply_text) == (312, "NO_ROUTE")
    assert error.message.body == b"x"
    # Without mandatory an unroutable message is simply confirmed (and dropped).
    await env.within(ch.basic_publish("", "nobody-" + env.name(), b"y"))


@scenario
async def alternate_exchange(env: Env) -> None:
    ch = await env.channel()
    main, alt = env.name("main"), env.name("alt")
    await env.within(ch.exchange_declare(alt, "fanout"))
    await env.within(ch.exchange_declare(main, "direct", arguments={"alternate-exchange": alt}))
    q_main, q_alt = env.name("qm"), env.name("qa")
    await env.within(ch.queue_declare(q_main))
    await env.within(ch.queue_declare(q_alt))
    await env.within(ch.queue_bind(q_main, main, "known"))
    await env.within(ch.queue_bind(q_alt, alt))
    await ch.confirm_select()
    await env.within(ch.basic_publish(main, "known", b"1", mandatory=True))
    await env.within(ch.basic_publish(main, "unknown", b"2", mandatory=True))
    assert await routed(env, ch, [q_main, q_alt]) == {q_main: [b"1"], q_alt: [b"2"]}


# -- declaring and refusing ------------------------------------------------------------------


@scenario
async def missing_entities_404(env: Env) -> None:
    q, x = env.name(), env.name("x")
    cases = [
        (lambda ch: ch.queue_declare(q, passive=True), f"no queue '{q}' in vhost '/'"),
        (lambda ch: ch.exchange_declare(x, passive=True), f"no exchange '{x}' in vhost '/'"),
        (lambda ch: ch.queue_bind(q, "amq.direct"), f"no queue '{q}' in vhost '/'"),
        (lambda ch: ch.queue_purge(q), f"no queue '{q}' in vhost '/'"),
        (lambda ch: ch.basic_consume(q), f"no queue '{q}' in vhost '/'"),
        (lambda ch: ch.basic_get(q), f"no queue '{q}' in vhost '/'"),
        (lambda ch: ch.exchange_bind(x, "amq.direct"), f"no exchange '{x}' in vhost '/'"),
    ]
    for call, text in cases:
        ch = await env.channel()
        error = await env.failure(call(ch))
        assert isinstance(error, errors.NotFound), error
        assert code_and_text(error) == (404, f"NOT_FOUND - {text}")
        assert isinstance(await env.within(ch.when_closed()), errors.NotFound)
    # Publishing to a missing exchange closes the channel too (asynchronously).
    ch = await env.channel()
    await ch.basic_publish(x, "k", b"")
    reason = await env.within(ch.when_closed())
    assert code_and_text(reason) == (404, f"NOT_FOUND - no exchange '{x}' in vhost '/'")
    # Deleting what does not exist is not an error.
    ch = await env.channel()
    assert (await env.within(ch.queue_delete(q))).message_count == 0
    await env.within(ch.exchange_delete(x))
    assert env.conn.is_open


@scenario
async def redeclare_with_other_properties_406(env: Env) -> None:
    ch = await env.channel()
    q, x = env.name(), env.name("x")
    await env.within(ch.queue_declare(q, arguments={"x-max-length": 10}))
    await env.within(ch.exchange_declare(x, "direct"))
    await env.within(ch.queue_declare(q, arguments={"x-max-length": 10}))  # same: fine
    await env.within(ch.queue_declare(q, passive=True, durable=True))  # passive: no check
    cases = [
        (lambda ch: ch.queue_declare(q, durable=True, arguments={"x-max-length": 10}),
         f"inequivalent arg 'durable' for queue '{q}' in vhost '/': received 'true' but "
         "current is 'false'"),
        (lambda ch: ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": 10}),
         f"inequivalent arg 'auto_delete' for queue '{q}' in vhost '/': received 'true' but "
         "current is 'false'"),
        (lambda ch: ch.queue_declare(q),
         f"inequivalent arg 'x-max-length' for queue '{q}' in vhost '/': received none but "
         "current is the value '10' of type 'signedint'"),
        (lambda ch: ch.exchange_declare(x, "fanout"),
         f"inequivalent arg 'type' for exchange '{x}' in vhost '/': received 'fanout' but "
         "current is 'direct'"),
        (lambda ch: ch.exchange_declare(x, "direct", durable=True),
         f"inequivalent arg 'durable' for exchange '{x}' in vhost '/': received 'true' but "
         "current is 'false'"),
    ]
    for call, text in cases:
        ch = await env.channel()
        error = await env.failure(call(ch))
        assert isinstance(error, errors.PreconditionFailed), error
        assert code_and_text(error) == (406, f"PRECONDITION_FAILED - {text}")


@scenario
async def reserved_names_and_server_names(env: Env) -> None:
    ch = await env.channel()
    ok = await env.within(ch.queue_declare("", exclusive=True))
    assert ok.queue.startswith("amq.gen-") and len(ok.queue) == len("amq.gen-") + 22
    other = await env.within(ch.queue_declare("", exclusive=True))
    assert other.queue != ok.queue
    for call, text in [
        (lambda ch: ch.queue_declare("amq.q-" + env.name()), "queue name 'amq.q-"),
        (lambda ch: ch.exchange_declare("amq.x-" + env.name()), "exchange name 'amq.x-"),
        (lambda ch: ch.queue_bind(ok.queue, ""),
         "operation not permitted on the default exchange"),
        (lambda ch: ch.exchange_delete("amq.direct"),
         "deletion of system exchange 'amq.direct' in vhost '/' not allowed"),
    ]:
        ch = await env.channel()
        error = await env.failure(call(ch))
        assert isinstance(error, errors.AccessRefused), error
        assert error.reply_text.startswith(f"ACCESS_REFUSED - {text}"), error.reply_text
    ch = await env.channel()
    await env.within(ch.exchange_declare("amq.direct", "direct", durable=True))  # exists: ok
    error = await env.failure(ch.exchange_declare(env.name("x"), "no-such-type"))
    assert isinstance(error, errors.CommandInvalid)
    assert error.reply_text == "COMMAND_INVALID - unknown exchange type 'no-such-type'"


@scenario
async def exclusive_queue_405_and_gone_with_its_connection(env: Env) -> None:
    owner = await env.connect()
    ch = await env.channel(owner)
    q = env.name("excl")
    await env.within(ch.queue_declare(q, exclusive=True))
    text = (f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in "
            "vhost '/'. It could be originally declared on another connection or the "
            "exclusive property value does not match that of the original declaration.")
    for call in (lambda c: c.queue_declare(q, passive=True), lambda c: c.basic_consume(q),
                 lambda c: c.queue_declare(q, exclusive=True), lambda c: c.queue_purge(q),
                 lambda c: c.queue_delete(q), lambda c: c.basic_get(q),
                 lambda c: c.queue_bind(q, "amq.fanout")):
        other = await env.channel()
        error = await env.failure(call(other))
        assert isinstance(error, errors.ResourceLocked), error
        assert code_and_text(error) == (405, text)
    # Its owner may use it; a non-exclusive redeclare by the owner is refused too.
    await env.within(ch.queue_declare(q, passive=True))
    error = await env.failure(ch.queue_declare(q))
    assert code_and_text(error) == (405, text)
    closed = when_closed(owner)
    await env.within(owner.close())
    await env.within(closed)
    probe = await env.channel()
    assert isinstance(await env.failure(probe.queue_declare(q, passive=True)),
                      errors.NotFound)


@scenario
async def auto_delete_after_last_consumer(env: Env) -> None:
    ch = await env.channel()
    q = env.name("auto")
    await env.within(ch.queue_declare(q, auto_delete=True))
    await env.within(ch.queue_declare(q, passive=True))  # no consumer yet: it stays
    first = await env.within(ch.basic_consume(q))
    second = await env.within(ch.basic_consume(q))
    assert (await env.within(ch.queue_declare(q, passive=True))).consumer_count == 2
    await env.within(first.cancel())
    assert (await env.within(ch.queue_declare(q, passive=True))).consumer_count == 1
    await env.within(second.cancel())
    probe = await env.channel()
    assert isinstance(await env.failure(probe.queue_declare(q, passive=True)),
                      errors.NotFound)


@scenario
async def purge_and_delete_if_unused_if_empty(env: Env) -> None:
    ch = await env.channel()
    q, x = env.name(), env.name("x")
    await env.within(ch.queue_declare(q))
    await env.within(ch.exchange_declare(x, "fanout"))
    await env.within(ch.queue_bind(q, x))
    await ch.confirm_select()
    for _ in range(3):
        await env.within(ch.basic_publish("", q, b"x"))
    assert (await env.within(ch.queue_purge(q))).message_count == 3
    await env.within(ch.basic_publish("", q, b"y"))
    consumer = await env.within(ch.basic_consume(q))
    message = await env.within(consumer.get())
    for call, text in [
        (lambda c: c.queue_delete(q, if_unused=True), f"queue '{q}' in vhost '/' in use"),
        (lambda c: c.exchange_delete(x, if_unused=True), f"exchange '{x}' in vhost '/' in use"),
    ]:
        other = await env.channel()
        error = await env.failure(call(other))
        assert code_and_text(error) == (406, f"PRECONDITION_FAILED - {text}")
    await env.within(consumer.cancel())
    await env.within(message.nack(requeue=True))
    other = await env.channel()
    error = await env.failure(other.queue_delete(q, if_empty=True))
    assert code_and_text(error) == (406, f"PRECONDITION_FAILED - queue '{q}' in vhost '/' "
                                    "not empty")
    assert (await env.within(ch.queue_delete(q, if_unused=True))).message_count == 1
    await env.within(ch.exchange_delete(x, if_unused=True))  # its binding went with q


@scenario
async def queue_expires_when_unused_and_auto_delete_exchange(env: Env) -> None:
    ch = await env.channel()
    q = env.name("expiring")
    await env.within(ch.queue_declare(q, arguments={"x-expires": 300}))
    await env.within(ch.queue_declare(q, passive=True))
    await env.wait(0.7)
    probe = await env.channel()
    assert isinstance(await env.failure(probe.queue_declare(q, passive=True)), errors.NotFound)
    x, kept = env.name("autox"), env.name("kept")
    await env.within(ch.exchange_declare(x, "fanout", auto_delete=True))
    await env.within(ch.queue_declare(kept))
    await env.within(ch.exchange_declare(x, "fanout", passive=True))  # no binding yet: kept
    await env.within(ch.queue_bind(kept, x))
    await env.within(ch.queue_unbind(kept, x))  # its last binding: the exchange goes
    probe = await env.channel()
    assert isinstance(await env.failure(probe.exchange_declare(x, passive=True)),
                      errors.NotFound)


@scenario
async def topic_edge_cases(env: Env) -> None:
    ch = await env.channel()
    x = env.name("topic")
    await env.within(ch.exchange_declare(x, "topic"))
    patterns = ["*", "#", "#.a", "a.#", "a.#.b", "a.*", "*.*", "#.#", "a..b", "a.*.b", ""]
    queues = {}
    for pattern in patterns:
        q = env.name("t")
        queues[pattern] = q
        await env.within(ch.queue_declare(q))
        await env.within(ch.queue_bind(q, x, pattern))
    await env.within(ch.confirm_select())
    keys = ["", "a", "b", "a.b", "b.a", "a.a", "a..b", "a.x.b", "a.x.y.b", ".", "a."]
    for key in keys:
        await env.within(ch.basic_publish(x, key, key.encode() or b"<empty>"))
    got = await routed(env, ch, list(queues.values()))
    table = {pattern: [b.decode() for b in got[q]] for pattern, q in queues.items()}
    assert table == {
        "*": ["a", "b"],  # an empty key has no words
        "#": ["<empty>", "a", "b", "a.b", "b.a", "a.a", "a..b", "a.x.b", "a.x.y.b", ".", "a."],
        "#.a": ["a", "b.a", "a.a"],
        "a.#": ["a", "a.b", "a.a", "a..b", "a.x.b", "a.x.y.b", "a."],
        "a.#.b": ["a.b", "a..b", "a.x.b", "a.x.y.b"],
        "a.*": ["a.b", "a.a", "a."],
        "*.*": ["a.b", "b.a", "a.a", ".", "a."],
        "#.#": ["<empty>", "a", "b", "a.b", "b.a", "a.a", "a..b", "a.x.b", "a.x.y.b", ".",
                "a."],
        "a..b": ["a..b"],
        "a.*.b": ["a..b", "a.x.b"],
        "": ["<empty>"],
    }


@scenario
async def headers_edge_cases(env: Env) -> None:
    ch = await env.channel()
    x = env.name("headers")
    await env.within(ch.exchange_declare(x, "headers"))
    bindings = {
        "present": {"x-match": "all", "flag": None},
        "typed": {"n": 1},
        "x-keys": {"x-match": "all", "x-trace": "on"},
        "any-empty": {"x-match": "any"},
        "all-empty": {},
    }
    queues = {}
    for name, args in bindings.items():
        q = env.name(name)
        queues[name] = q
        await env.within(ch.queue_declare(q))
        await env.within(ch.queue_bind(q, x, arguments=args))
    await env.within(ch.confirm_select())
    messages = {"flag-1": {"flag": 1}, "flag-void": {"flag": None}, "n-int": {"n": 1},
                "n-str": {"n": "1"}, "n-bool": {"n": True}, "trace": {"x-trace": "on"},
                "nothing": {}}
    for body, headers in messages.items():
        await env.within(ch.basic_publish(x, "", body.encode(),
                                          properties=txpika.BasicProperties(headers=headers)))
    got = await routed(env, ch, list(queues.values()))
    table = {name: sorted(b.decode() for b in got[q]) for name, q in queues.items()}
    assert table == {
        "present": ["flag-1", "flag-void"],
        "typed": ["n-int"],
        "x-keys": sorted(messages),  # keys starting with x- are not compared
        "any-empty": [],
        "all-empty": sorted(messages),
    }
