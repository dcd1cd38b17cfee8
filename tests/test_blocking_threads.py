"""The blocking adapter shared by threads, against the real broker.

Eight threads publish 10,000 confirmed messages in total: sharing one connection and one
confirm-mode channel, sharing one connection with a channel each, and with a connection
each. Every message must get exactly one outcome, every outcome must be an ack, the broker
must never close the connection (interleaved frames would be a 501/505 framing error), and
the queue must then hold exactly 10,000 distinct messages. Then a consumer thread and
publisher threads share one connection, and threads share one channel for synchronous calls
(each must get its own reply). Every wait is bounded.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from txpika import blocking, spec

pytestmark = pytest.mark.broker

T = 10.0  # seconds: the bound on any one call
THREADS = 8
TOTAL = 10_000
PER_THREAD = TOTAL // THREADS
JOIN = 120.0  # seconds: the bound on a whole run of threads


def unique(prefix: str = "q") -> str:
    return f"txpika-blocking-threads-{prefix}-{uuid.uuid4().hex[:12]}"


def run_threads(target: Callable[[int], None], count: int = THREADS) -> float:
    """Run ``target(n)`` in ``count`` threads at once; re-raise the first error. Returns the
    elapsed time."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(n: int) -> None:
        try:
            barrier.wait(T)
            target(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,), name=f"worker-{n}", daemon=True)
               for n in range(count)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    deadline = started + JOIN
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    if errors:
        raise errors[0]
    return time.monotonic() - started


@pytest.fixture
def queue(broker_url: str) -> Iterator[str]:
    """A named queue every connection can use; deleted afterwards."""
    name = unique()
    with blocking.connect(broker_url) as conn:
        conn.channel(timeout=T).queue_declare(name, auto_delete=False, timeout=T)
    try:
        yield name
    finally:
        with blocking.connect(broker_url) as conn:
            conn.channel(timeout=T).queue_delete(name, timeout=T)


def drain(conn: blocking.BlockingConnection, queue: str, expected: int) -> list[bytes]:
    """Every message in ``queue`` (auto-acked), after checking the broker's count."""
    ch = conn.channel(timeout=T)
    count = ch.queue_declare(queue, passive=True, timeout=T).message_count
    assert count == expected, f"the queue holds {count} messages, not {expected}"
    bodies = []
    for message in ch.consume(queue, prefetch=1000, auto_ack=True, inactivity_timeout=2):
        if message is None:
            break
        bodies.append(message.body)
        if len(bodies) == expected:
            break
    ch.close(timeout=T)
    return bodies


def expected_bodies() -> set[bytes]:
    return {b"%d-%d" % (n, i) for n in range(THREADS) for i in range(PER_THREAD)}


def check_outcomes(outcomes: dict[int, list[Any]]) -> None:
    assert sorted(outcomes) == list(range(THREADS))
    flat = [o for per_thread in outcomes.values() for o in per_thread]
    assert len(flat) == TOTAL, f"{len(flat)} outcomes for {TOTAL} publishes"
    failed = [o for o in flat if o is not None]
    assert not failed, f"{len(failed)} publishes not acked, first: {failed[0]!r}"


@pytest.mark.parametrize("style", ["one-by-one", "batches"])
def test_threads_share_one_connection_and_one_confirm_channel(
    broker_url: str, queue: str, style: str
) -> None:
    outcomes: dict[int, list[Any]] = {}
    with blocking.connect(broker_url) as conn:
        ch = conn.channel(timeout=T)
        ch.confirm_select(timeout=T)

        def publish(n: int) -> None:
            mine = outcomes[n] = []
            if style == "batches":
                for start in range(0, PER_THREAD, 125):
                    batch = [("", queue, b"%d-%d" % (n, i))
                             for i in range(start, min(start + 125, PER_THREAD))]
                    mine.extend(ch.publish_batch(batch, timeout=30))
                return
            for i in range(PER_THREAD):
                try:
                    ch.basic_publish("", queue, b"%d-%d" % (n, i), timeout=T)
                except Exception as exc:  # counted, not raised: every outcome is checked
                    mine.append(exc)
                else:
                    mine.append(None)

        elapsed = run_threads(publish)
        check_outcomes(outcomes)
        assert conn.is_open and ch.is_open, "the broker closed the connection or channel"
        # Every confirm was consumed exactly once: nothing is left waiting or unclaimed.
        assert ch._book.pending_confirms == 0
        core_channel = conn._core._channels[ch.channel_number]
        assert not core_channel.confirms.unconfirmed and core_channel.confirms.next_tag == TOTAL + 1
        bodies = drain(conn, queue, TOTAL)
        assert conn.is_open
    assert len(bodies) == TOTAL and set(bodies) == expected_bodies(), elapsed


def test_threads_share_one_connection_with_a_channel_each(broker_url: str,
                                                          queue: str) -> None:
    outcomes: dict[int, list[Any]] = {}
    with blocking.connect(broker_url) as conn:

        def publish(n: int) -> None:
            mine = outcomes[n] = []
            with conn.channel(timeout=T) as ch:
                ch.confirm_select(timeout=T)
                for i in range(PER_THREAD):
                    try:
                        ch.basic_publish("", queue, b"%d-%d" % (n, i), timeout=T)
                    except Exception as exc:
                        mine.append(exc)
                    else:
                        mine.append(None)
                assert ch._book.pending_confirms == 0

        run_threads(publish)
        check_outcomes(outcomes)
        assert conn.is_open
        bodies = drain(conn, queue, TOTAL)
    assert len(bodies) == TOTAL and set(bodies) == expected_bodies()


def test_threads_with_a_connection_each(broker_url: str, queue: str) -> None:
    outcomes: dict[int, list[Any]] = {}

    def publish(n: int) -> None:
        mine = outcomes[n] = []
        with blocking.connect(broker_url) as conn:
            ch = conn.channel(timeout=T)
            ch.confirm_select(timeout=T)
            for i in range(PER_THREAD):
                try:
                    ch.basic_publish("", queue, b"%d-%d" % (n, i), timeout=T)
                except Exception as exc:
                    mine.append(exc)
                else:
                    mine.append(None)
            assert conn.is_open

    run_threads(publish)
    check_outcomes(outcomes)
    with blocking.connect(broker_url) as conn:
        bodies = drain(conn, queue, TOTAL)
    assert len(bodies) == TOTAL and set(bodies) == expected_bodies()


def test_consumer_thread_and_publisher_threads_share_one_connection(
    broker_url: str, queue: str
) -> None:
    publishers, per_publisher = 4, 1000
    total = publishers * per_publisher
    received: list[tuple[bytes, bool]] = []
    errors: list[BaseException] = []
    with blocking.connect(broker_url) as conn:
        consumer_channel = conn.channel(timeout=T)
        consumer_started = threading.Event()

        def consume() -> None:
            try:
                stream = consumer_channel.consume(queue, prefetch=50, inactivity_timeout=10)
                consumer_started.set()
                for message in stream:
                    if message is None:
                        return  # idle for 10 s: the test fails on the count
                    received.append((message.body, message.redelivered))
                    message.ack()
                    if len(received) == total:
                        return
            except BaseException as exc:
                errors.append(exc)
                consumer_started.set()

        consumer = threading.Thread(target=consume, name="consumer", daemon=True)
        consumer.start()

        def publish(n: int) -> None:
            assert consumer_started.wait(T)
            with conn.channel(timeout=T) as ch:
                ch.confirm_select(timeout=T)
                for i in range(per_publisher):
                    ch.basic_publish("", queue, b"%d-%d" % (n, i), timeout=T)

        run_threads(publish, publishers)
        consumer.join(JOIN)
        assert not consumer.is_alive(), "the consumer thread is stuck"
        assert not errors, errors
        assert conn.is_open and consumer_channel.is_open
        bodies = [body for body, _ in received]
        assert len(bodies) == total and len(set(bodies)) == total
        assert not any(redelivered for _, redelivered in received)
        # Per publisher, messages arrive in publishing order.
        for n in range(publishers):
            mine = [int(b.split(b"-")[1]) for b in bodies if b.startswith(b"%d-" % n)]
            assert mine == list(range(per_publisher))
        with conn.channel(timeout=T) as probe:
            ok = probe.queue_declare(queue, passive=True, timeout=T)
        assert ok.message_count == 0


def test_callback_consumer_serviced_while_threads_publish(broker_url: str,
                                                         queue: str) -> None:
    """Callbacks run in whichever thread reads the socket, outside the lock."""
    total = 2000
    seen: list[bytes] = []
    lock = threading.Lock()
    with blocking.connect(broker_url) as conn:
        ch = conn.channel(timeout=T)
        ch.basic_qos(prefetch_count=100, timeout=T)

        def on_message(message: blocking.Message) -> None:
            with lock:
                seen.append(message.body)
            message.ack()

        ch.basic_consume(queue, on_message_callback=on_message, timeout=T)

        def publish(n: int) -> None:
            with conn.channel(timeout=T) as pub:
                pub.confirm_select(timeout=T)
                outcomes = pub.publish_batch(
                    [("", queue, b"%d-%d" % (n, i)) for i in range(total // 4)], timeout=30)
                assert outcomes == [None] * (total // 4)

        run_threads(publish, 4)
        deadline = time.monotonic() + 30
        while len(seen) < total and time.monotonic() < deadline:
            conn.process_data_events(0.1)
        assert len(seen) == total and len(set(seen)) == total
        assert conn.is_open


def test_threads_share_one_channel_for_synchronous_calls(broker_url: str) -> None:
    """Concurrent RPCs on one channel: each thread gets its own reply, in order."""
    with blocking.connect(broker_url) as conn:
        ch = conn.channel(timeout=T)
        names = [unique(f"rpc{n}") for n in range(THREADS)]
        for name in names:
            ch.queue_declare(name, exclusive=True, timeout=T)

        def call(n: int) -> None:
            for i in range(200):
                if i % 2:
                    ok = ch.queue_declare(names[n], passive=True, timeout=T)
                    assert isinstance(ok, spec.Queue.DeclareOk) and ok.queue == names[n]
                else:
                    ok = ch.exchange_declare("amq.fanout", "fanout", passive=True, timeout=T)
                    assert isinstance(ok, spec.Exchange.DeclareOk)

        run_threads(call)
        assert ch.is_open and conn.is_open and ch._book.pending_calls == 0
