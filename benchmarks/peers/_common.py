"""What every runner shares: parameters, the meter, message bodies, checks.

Nothing here imports a client library, Twisted or asyncio, except `deferred_window` and
`twisted_main`, which import Twisted lazily (only the Twisted runners call them).
"""

from __future__ import annotations

import cProfile
import resource
import time
from dataclasses import dataclass, field
from typing import Any

#: Size of the index prefix each benchmark body starts with (``%08d``), used to catch lost
#: and duplicated deliveries.
INDEX_LEN = 8


@dataclass
class Params:
    """What the parent tells a child (sent as JSON on the command line)."""

    library: str
    scenario: str
    host: str
    port: int
    user: str
    password: str
    vhost: str
    queue: str
    count: int
    size: int
    window: int = 1000  # outstanding confirms (publish-confirm, big)
    prefetch: int = 1000  # consume
    stall: float = 20.0  # seconds without progress before a child gives up (reports FAIL)
    rpc_queue: str = ""
    profile: str = ""  # path for cProfile stats of the timed part, or ""

    @property
    def url(self) -> str:
        from urllib.parse import quote

        return (f"amqp://{quote(self.user, safe='')}:{quote(self.password, safe='')}@"
                f"{self.host}:{self.port}/{quote(self.vhost, safe='')}")


def _rss_kb() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Meter:
    """Wall time, CPU time (user + sys of this process) and RSS of the timed part.

    ``start`` and ``stop`` bracket the measured work; with ``profile`` set, cProfile runs
    between them and its stats are dumped there.
    """

    profile: str = ""
    wall: float = 0.0
    user: float = 0.0
    sys: float = 0.0
    minflt: int = 0
    base_rss_kb: int = 0
    started: bool = False
    stopped: bool = False
    _t0: float = 0.0
    _r0: Any = None
    _prof: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        self.base_rss_kb = _rss_kb()
        self.started = True
        if self.profile:
            # CPU time, not wall time: time blocked in epoll must not count as a hot spot.
            self._prof = cProfile.Profile(time.process_time)
        self._r0 = resource.getrusage(resource.RUSAGE_SELF)
        self._t0 = time.perf_counter()
        if self._prof is not None:
            self._prof.enable()

    def stop(self) -> None:
        if not self.started or self.stopped:
            return
        if self._prof is not None:
            self._prof.disable()
        t1 = time.perf_counter()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        self.stopped = True
        self.wall = t1 - self._t0
        self.user = r1.ru_utime - self._r0.ru_utime
        self.sys = r1.ru_stime - self._r0.ru_stime
        self.minflt = r1.ru_minflt - self._r0.ru_minflt
        if self._prof is not None:
            self._prof.dump_stats(self.profile)

    def result(self) -> dict[str, Any]:
        return {
            "wall": self.wall,
            "cpu_user": self.user,
            "cpu_sys": self.sys,
            "minor_faults": self.minflt,
            "base_rss_kb": self.base_rss_kb,
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            **self.extra,
        }


def small_body(index: int, size: int) -> bytes:
    head = b"%08d" % index
    return head + b"x" * max(0, size - len(head))


def small_bodies(count: int, size: int) -> list[bytes]:
    """All bodies of a publish run, built before the timed part."""
    return [small_body(i, size) for i in range(count)]


#: Callbacks per chain in the publish-chain idiom (see `chained`).
CHAIN_LINK = 1_000


async def chained(step: Any, items: list[Any], link: int = CHAIN_LINK) -> None:
    """The publish-chain idiom: ``step(result, item)`` run for each item as a callback of
    the previous step's Deferred, on one chain per ``link`` items, one chain after the
    other. Twisted runs a chain without recursion, waiting wherever a returned Deferred
    has not fired. Chains are kept to ``link`` callbacks because ``Deferred._runCallbacks``
    takes each callback from the front of a list: a chain of N callbacks costs O(N**2),
    about 6 us per callback at 100,000 and 1 us at 1,000 (Twisted 26.10), which would
    measure Twisted's list rather than the client."""
    from twisted.internet.defer import Deferred

    for start in range(0, len(items), link):
        chain: Deferred[Any] = Deferred()
        for item in items[start:start + link]:
            chain.addCallback(step, item)
        chain.callback(None)
        await chain


class BigBodies:
    """Distinct large bodies made one at a time (so a client that keeps references to
    bodies it already sent shows it in its RSS): an 8-byte index, then a fixed pattern.

    The pattern (one body's worth of memory) is built on the first `make`, so a consuming
    child, which only checks bodies, does not carry it in its RSS."""

    _PATTERN = b"0123456789abcdef"

    def __init__(self, size: int) -> None:
        self.size = size
        self._tail = b""
        # The last 16 bytes of every body (size is a multiple of 16 in the scenarios).
        end = size - INDEX_LEN
        self._suffix = (self._PATTERN * 3)[end % 16:end % 16 + 16] if end >= 16 else None

    def make(self, index: int) -> bytes:
        if not self._tail:
            self._tail = (self._PATTERN * (self.size // 16 + 1))[: self.size - INDEX_LEN]
        return b"%08d" % index + self._tail

    def check(self, body: bytes | memoryview) -> int:
        """The index of a received big body, or -1 if it is damaged."""
        if len(body) != self.size or (
            self._suffix is not None and bytes(body[-16:]) != self._suffix
        ):
            return -1
        try:
            return int(bytes(body[:INDEX_LEN]))
        except ValueError:
            return -1
        try:
            return int(bytes(body[:INDEX_LEN]))
        except ValueError:
            return -1


class Tally:
    """Counts deliveries by index: lost, duplicated and damaged ones are reported."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = bytearray(count)
        self.received = 0
        self.duplicates = 0
        self.damaged = 0

    def add(self, index: int) -> bool:
        """Record one delivery; True once every index was seen."""
        self.received += 1
        if 0 <= index < self.count:
            if self.seen[index]:
                self.duplicates += 1
            else:
                self.seen[index] = 1
        else:
            self.damaged += 1
        return self.received - self.duplicates - self.damaged >= self.count

    def add_small(self, body: bytes) -> bool:
        try:
            index = int(body[:INDEX_LEN])
        except ValueError:
            index = -1
        return self.add(index)

    def result(self) -> dict[str, Any]:
        unique = self.received - self.duplicates - self.damaged
        return {"consumed": unique, "duplicates": self.duplicates, "damaged": self.damaged,
                "lost": self.count - unique}


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def latency_result(latencies: list[float]) -> dict[str, Any]:
    return {
        "round_trips": len(latencies),
        "p50_us": percentile(latencies, 50) * 1e6,
        "p99_us": percentile(latencies, 99) * 1e6,
        "max_us": max(latencies) * 1e6 if latencies else float("nan"),
    }


class Stalled(Exception):
    """No progress for ``Params.stall`` seconds: the run stops and reports what it got."""


# -- Twisted helpers (txpika, pika's Twisted adapter, txAMQP) ----------------------------------


class Window:
    """Sliding window of publishes whose Deferreds fire on the broker's confirm.

    ``publish(i)`` publishes message ``i`` and returns a Deferred that fires on its ack or
    fails on its nack. One new publish is made for each settled one, keeping at most
    ``window`` unconfirmed. ``done`` fires when all ``count`` are settled. Used alike for
    every Deferred-returning client so that the harness costs the same.
    """

    def __init__(self, publish: Any, count: int, window: int) -> None:
        from twisted.internet.defer import Deferred

        self.publish = publish
        self.count = count
        self.window = window
        self.sent = 0
        self.acked = 0
        self.nacked = 0
        self.outstanding = 0
        self.done: Deferred[None] = Deferred()
        self._filling = False
        self.progress = 0

    def start(self) -> Any:
        self._fill()
        return self.done

    def _ok(self, _: object) -> None:
        self.acked += 1
        self.outstanding -= 1
        self.progress += 1
        self._fill()

    def _fail(self, failure: Any) -> None:
        self.nacked += 1
        self.outstanding -= 1
        self.progress += 1
        self._fill()

    def _fill(self) -> None:
        if self._filling:
            return
        self._filling = True
        try:
            while self.outstanding < self.window and self.sent < self.count:
                index = self.sent
                self.sent += 1
                self.outstanding += 1
                self.publish(index).addCallbacks(self._ok, self._fail)
        finally:
            self._filling = False
        if self.outstanding == 0 and self.sent >= self.count and not self.done.called:
            self.done.callback(None)

    def result(self) -> dict[str, Any]:
        return {"published": self.sent, "acked": self.acked, "nacked": self.nacked}


def watch(progress: Any, stall: float, waiting: Any) -> Any:
    """Fail Deferred ``waiting`` with `Stalled` when ``progress()`` stops changing for
    ``stall`` seconds; returns ``waiting``."""
    from twisted.internet import reactor, task

    last = [progress(), time.monotonic()]

    def check() -> None:
        if waiting.called:
            loop.stop()
            return
        now = progress()
        if now != last[0]:
            last[0], last[1] = now, time.monotonic()
        elif time.monotonic() - last[1] > stall:
            loop.stop()
            waiting.errback(Stalled(f"no progress for {stall:g} s (at {now})"))

    loop = task.LoopingCall(check)
    loop.clock = reactor
    loop.start(0.5, now=False)
    return waiting


def pump(queue_obj: Any, handle: Any, finished: Any) -> None:
    """Hand each item of a DeferredQueue (pika's and txAMQP's consumer queues) to ``handle``
    until ``finished()``, without recursing once per item already queued."""
    def on_item(item: Any) -> None:
        handle(item)
        drain()

    def drain() -> None:
        while not finished():
            d = queue_obj.get()
            if d.called:  # already there: handle it here, in this loop
                box: list[Any] = []
                d.addCallback(box.append)
                if box:
                    handle(box[0])
                    continue
                d.addErrback(lambda f: None)  # the queue closed
                return
            d.addCallback(on_item)
            d.addErrback(lambda f: None)
            return

    drain()


def twisted_main(coroutine_function: Any, *args: Any) -> dict[str, Any]:
    """Run ``await coroutine_function(*args)`` on the global reactor; return its dict."""
    from twisted.internet import defer, reactor

    box: dict[str, Any] = {}

    def start() -> None:
        d = defer.ensureDeferred(coroutine_function(*args))

        def ok(result: dict[str, Any]) -> None:
            box["result"] = result

        def failed(failure: Any) -> None:
            box["error"] = f"{failure.type.__name__}: {failure.getErrorMessage()}"
            box["traceback"] = failure.getTraceback()

        d.addCallbacks(ok, failed)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    if "error" in box:
        raise RuntimeError(box["error"] + "\n" + box.get("traceback", ""))
    return box["result"]


def until(loop: Any) -> Any:
    """A Deferred that fires (or fails) when ``loop`` (a coroutine or a Deferred) ends, for
    `watch`: once `watch` has failed it with `Stalled`, the loop's own ending (it fails when
    the runner cancels its consumer) is dropped."""
    from twisted.internet.defer import Deferred, ensureDeferred

    finished: Deferred[None] = Deferred()

    def ended(result: Any) -> None:
        if finished.called:
            return None
        if hasattr(result, "raiseException"):  # a Failure
            finished.errback(result)
        else:
            finished.callback(None)
        return None

    ensureDeferred(loop).addBoth(ended)
    return finished
