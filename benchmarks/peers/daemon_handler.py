"""The handler of daemon.py's consumer-daemon benchmark, and the recorder it shares with
the bare consumer it is compared with.

``twistd -n txpika --handler peers.daemon_handler:handle ...`` imports this module in the
daemon (``benchmarks/`` is on its ``PYTHONPATH``). The handler returns at once; it only
hands the body to a `Recorder`, which counts deliveries by index (`Tally`) and records the
process's CPU time (``getrusage``, microsecond resolution; ``os.times()`` counts
clock ticks of 10 ms) and wall time at the first and at the last expected
delivery, so the figures are the steady state: the daemon's start-up (imports, connection,
channel, consume) comes before the first delivery and is not in them. At the last delivery
it writes its figures as JSON to the file named by ``TXPIKA_BENCH_RESULT``.

The bare consumer (``run_service.bare_consume``) calls the same `Recorder.record` from its
``on_message_callback``, after its ``message.ack()``, so both do the same work per message
besides the consuming itself.
"""

from __future__ import annotations

import json
import os
import resource
import time
from typing import Any

from peers._common import Tally


def _vm_kb(field: str) -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Recorder:
    """CPU and wall time between the first and the last of ``count`` deliveries."""

    def __init__(self, count: int, path: str = "") -> None:
        self.count = count
        self.path = path
        self.tally = Tally(count)
        self.done = False
        self.result: dict[str, Any] = {}
        self._t0: Any = None
        self._w0 = 0.0
        self._on_done: list[Any] = []

    def when_done(self, callback: Any) -> None:
        """Call ``callback(result)`` once the last delivery is in."""
        self._on_done.append(callback)

    def record(self, body: bytes) -> None:
        if self._t0 is None:
            self._t0 = resource.getrusage(resource.RUSAGE_SELF)
            self._w0 = time.perf_counter()
            self.rss_at_first_kb = _vm_kb("VmRSS")
        if self.tally.add_small(body) and not self.done:
            self._finish()

    def _finish(self) -> None:
        w1 = time.perf_counter()
        t1 = resource.getrusage(resource.RUSAGE_SELF)
        self.done = True
        self.result = {
            "wall": w1 - self._w0,
            "cpu_user": t1.ru_utime - self._t0.ru_utime,
            "cpu_sys": t1.ru_stime - self._t0.ru_stime,
            # the figures cover the deliveries after the first one
            "measured_count": self.count - 1,
            "measured": self.count > 1,
            "base_rss_kb": self.rss_at_first_kb,
            "maxrss_kb": _vm_kb("VmHWM"),
            **self.tally.result(),
        }
        if self.path:
            with open(self.path + ".tmp", "w", encoding="utf-8") as fh:
                json.dump(self.result, fh)
            os.replace(self.path + ".tmp", self.path)  # the parent sees it whole or not
        for callback in self._on_done:
            callback(self.result)


#: The daemon's recorder, made when twistd imports the handler (its environment names the
#: count and the result file); None elsewhere.
_recorder = (Recorder(int(os.environ["TXPIKA_BENCH_COUNT"]), os.environ["TXPIKA_BENCH_RESULT"])
             if "TXPIKA_BENCH_RESULT" in os.environ else None)


def handle(message: Any) -> None:
    """The daemon's handler: record the delivery and return (the daemon acks it)."""
    _recorder.record(message.body)  # type: ignore[union-attr]
