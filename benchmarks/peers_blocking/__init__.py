"""Per-library runners of ``benchmarks/blocking.py`` (one module per blocking client).

Each ``run_<library>.py`` exposes ``run(params, meter) -> dict``. It is imported only in a
child process of ``blocking.py``, which runs one (library, scenario) pair per process so that
CPU time and peak RSS belong to that client alone. They share `peers._common` (the meter,
bodies and tallies) with ``throughput.py``'s runners, and `Progress` below.
"""

from __future__ import annotations

import time

from peers._common import Stalled


class Progress:
    """Gives up (raises `peers._common.Stalled`) once ``value`` stops growing for
    ``stall`` seconds. Called from the loops that wait for deliveries or confirms."""

    __slots__ = ("last", "since", "stall")

    def __init__(self, stall: float) -> None:
        self.stall = stall
        self.last = -1
        self.since = time.monotonic()

    def check(self, value: int) -> None:
        now = time.monotonic()
        if value != self.last:
            self.last, self.since = value, now
        elif now - self.since > self.stall:
            raise Stalled(f"no progress for {self.stall:g} s (at {value})")
