"""What the asyncio runners of benchmarks/aio_throughput.py share: the loop a library row
runs on, a sliding window of confirmed publishes, and a stall watch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from peers._common import Params


def run_on_loop(p: Params, main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run ``main`` on uvloop for the ``*-uvloop`` rows, else on asyncio's default loop."""
    if p.library.endswith("-uvloop"):
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)


async def watch(progress: Callable[[], int], stall: float, waiting: asyncio.Future[Any],
                out: dict[str, Any]) -> None:
    """Wait for ``waiting``; give up when ``progress()`` stops changing for ``stall`` s."""
    last, since = progress(), time.monotonic()
    while not waiting.done():
        try:
            await asyncio.wait_for(asyncio.shield(waiting), 0.5)
        except TimeoutError:
            now = progress()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > stall:
                out["stalled"] = f"no progress for {stall:g} s (at {now})"
                return


async def window(publish_one: Callable[[int], Any], count: int, size: int, stall: float,
                 out: dict[str, Any], as_task: bool) -> None:
    """Sliding window of ``size`` confirmed publishes: one new publish per settled one.
    ``publish_one(i)`` returns a future (``as_task`` False) or a coroutine, which runs as a
    task (the way a library whose publish is a coroutine pipelines confirms)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    state = {"sent": 0, "acked": 0, "nacked": 0, "out": 0}
    filling = [False]

    def settled(future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            state["nacked"] += 1
        else:
            state["acked"] += 1
        state["out"] -= 1
        fill()

    def fill() -> None:
        if filling[0]:
            return
        filling[0] = True
        try:
            while state["out"] < size and state["sent"] < count:
                index = state["sent"]
                state["sent"] += 1
                state["out"] += 1
                made = publish_one(index)
                future = loop.create_task(made) if as_task else made
                future.add_done_callback(settled)
        finally:
            filling[0] = False
        if state["out"] == 0 and state["sent"] >= count and not done.done():
            done.set_result(None)

    fill()
    await watch(lambda: state["acked"] + state["nacked"], stall, done, out)
    out.update(published=state["sent"], acked=state["acked"], nacked=state["nacked"])
