"""``txpika.blocking`` under gevent's ``monkey.patch_all()``: greenlets as threads.

Each test runs a script in a fresh interpreter that monkey-patches first (patching after
the standard library is imported does not take), against the real broker, and prints one
JSON line with what it saw. gevent is a test dependency only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("gevent", reason="the test extra installs gevent")
pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent

_PRELUDE = r"""
from gevent import monkey
monkey.patch_all()
import json, sys, time, uuid
import gevent
sys.path.insert(0, sys.argv[1])
from txpika import blocking
URL = sys.argv[2]
T = 10.0

def unique(prefix):
    return f"txpika-gevent-{prefix}-{uuid.uuid4().hex[:12]}"

def count(conn, queue):
    with conn.channel(timeout=T) as probe:
        return probe.queue_declare(queue, passive=True, timeout=T).message_count
"""


def _run(script: str, broker_url: str, timeout: float = 60) -> Any:
    proc = subprocess.run(
        [sys.executable, "-c", _PRELUDE + script, str(ROOT), broker_url],
        capture_output=True, text=True, timeout=timeout, cwd=str(ROOT), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_waits_end_on_time_under_gevent(broker_url: str) -> None:
    """``process_data_events(0.5)`` and ``consume(inactivity_timeout=0.5)`` return after
    about 0.5 s, not when the broker next sends a heartbeat (SO_RCVTIMEO is ignored by
    gevent's cooperative socket)."""
    result = _run(r"""
conn = blocking.connect(URL, heartbeat=10)
ch = conn.channel(timeout=T)
queue = ch.queue_declare("", timeout=T).queue
ticks = []
ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.05)) for _ in range(8)])
started = time.monotonic()
conn.process_data_events(0.5)
pde = time.monotonic() - started
started = time.monotonic()
for message in ch.consume(queue, inactivity_timeout=0.5):
    idle = time.monotonic() - started
    break
ticker.join(T)
conn.close(timeout=T)
print(json.dumps({"pde": pde, "idle": idle, "message": message, "ticks": len(ticks),
                  "socket": type(conn._sock).__module__}))
""", broker_url)
    assert result["socket"].startswith("gevent")
    assert 0.45 <= result["pde"] < 1.2, result
    assert 0.45 <= result["idle"] < 1.2, result
    assert result["message"] is None
    assert result["ticks"] == 8  # other greenlets ran while the connection waited


def test_greenlets_share_one_connection(broker_url: str) -> None:
    """8 greenlets publish confirmed messages over one connection, first on a channel each,
    then all on one shared channel; each publish is confirmed exactly once."""
    result = _run(r"""
conn = blocking.connect(URL)
setup = conn.channel(timeout=T)
queue = setup.queue_declare(unique("shared"), exclusive=True, timeout=T).queue
outcomes = []

def own_channel(g):
    ch = conn.channel(timeout=T)
    ch.confirm_select(timeout=T)
    for i in range(50):
        ch.basic_publish("", queue, f"own-{g}-{i}".encode(), timeout=T)
        outcomes.append(("own", g, i))

shared = conn.channel(timeout=T)
shared.confirm_select(timeout=T)

def shared_channel(g):
    for i in range(50):
        shared.basic_publish("", queue, f"shared-{g}-{i}".encode(), timeout=T)
        outcomes.append(("shared", g, i))

gevent.joinall([gevent.spawn(own_channel, g) for g in range(8)], timeout=30, raise_error=True)
gevent.joinall([gevent.spawn(shared_channel, g) for g in range(8)], timeout=30,
               raise_error=True)
bodies = []
for message in setup.consume(queue, prefetch=200, inactivity_timeout=0.5):
    if message is None:
        break
    bodies.append(message.body.decode())
    message.ack()
conn.close(timeout=T)
print(json.dumps({"outcomes": len(outcomes), "distinct": len(set(map(tuple, outcomes))),
                  "bodies": len(bodies), "distinct_bodies": len(set(bodies))}))
""", broker_url)
    assert result == {"outcomes": 800, "distinct": 800, "bodies": 800, "distinct_bodies": 800}


def test_greenlets_with_a_connection_each_publish_and_consume(broker_url: str) -> None:
    """8 greenlets, a connection each: each publishes 100 confirmed messages to its queue
    while a consumer greenlet on the same connection reads them back."""
    result = _run(r"""
results = {}

def worker(g):
    conn = blocking.connect(URL, heartbeat=5)
    pub = conn.channel(timeout=T)
    sub = conn.channel(timeout=T)
    queue = pub.queue_declare(unique(f"own{g}"), exclusive=True, timeout=T).queue
    pub.confirm_select(timeout=T)
    got = []

    def consume():
        for message in sub.consume(queue, prefetch=20, inactivity_timeout=2.0):
            if message is None:
                break
            got.append(message.body)
            message.ack()
            if len(got) == 100:
                break

    reader = gevent.spawn(consume)
    confirmed = 0
    for i in range(100):
        pub.basic_publish("", queue, b"%d" % i, timeout=T)
        confirmed += 1
    reader.join(T)
    left = count(conn, queue)
    conn.close(timeout=T)
    results[g] = {"confirmed": confirmed, "got": len(got), "distinct": len(set(got)),
                  "left": left}

gevent.joinall([gevent.spawn(worker, g) for g in range(8)], timeout=40, raise_error=True)
print(json.dumps(results))
""", broker_url)
    assert len(result) == 8
    for outcome in result.values():
        assert outcome == {"confirmed": 100, "got": 100, "distinct": 100, "left": 0}


def test_heartbeats_keep_an_idle_connection_open(broker_url: str) -> None:
    """heartbeat=1: a greenlet servicing the idle connection (``process_data_events``)
    keeps it open past several intervals while other greenlets run."""
    result = _run(r"""
conn = blocking.connect(URL, heartbeat=1)
beats = []
other = gevent.spawn(lambda: [beats.append(gevent.sleep(0.1)) for _ in range(20)])
conn.process_data_events(3.0)
other.join(T)
ch = conn.channel(timeout=T)
ok = bool(ch.queue_declare("", timeout=T).queue)
print(json.dumps({"open": conn.is_open, "ok": ok, "beats": len(beats)}))
conn.close(timeout=T)
""", broker_url)
    assert result == {"open": True, "ok": True, "beats": 20}
