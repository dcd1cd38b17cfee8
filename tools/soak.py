#!/usr/bin/env python3
"""Long soaks of txpika's recovery layer against real RabbitMQ nodes (not run by CI, except
``--quick``, which tests/test_soak.py runs).

Usage::

    python tools/soak.py --quick                    # every private-node mode, small (< 1 min)
    python tools/soak.py restarts --cycles 100      # stop_app/start_app of a private node
    python tools/soak.py cluster --cycles 100       # stop / kill -9 the connected cluster node
    python tools/soak.py memory --messages 1000000 --csv docs/soak-memory.csv \\
                                                   --png docs/soak-memory.png
    python tools/soak.py chaos --duration 600 --seed 1
    python tools/soak.py all                        # restarts, cluster, chaos, memory
    python tools/soak.py plot --csv docs/soak-memory.csv --png docs/soak-memory.png

Modes:

``restarts``
    A private node (tests/rabbitnode.py) under an at-least-once `Publisher` (``--rate``
    messages a second) and a `ConsumerService`: ``--cycles`` times, ``stop_app`` while
    publishing, a pause, ``start_app``, until the service is open and consuming again.
``cluster``
    The same over a three-node cluster (tests/rabbitcluster.py) and a quorum queue: each
    cycle stops the node the service is connected to (every third cycle with ``kill -9``),
    waits for the service to open on another node, then starts the node again.
``chaos``
    The load through a `tcpproxy.Proxy` in front of a private node, heartbeat 2 s: at
    random intervals (seeded) the proxy cuts every connection (RST) or black-holes it for
    8 to 12 s, longer than the heartbeat timeout, for ``--duration`` s. Every fault that
    finds the service open must end in exactly one recovery. (A black hole that ends before the
    heartbeat gives up resumes a TCP stream with bytes missing from its middle, which TCP
    never does: AMQP has no sequence numbers on publishes, so the broker's later confirms
    then answer for publishes it never received. The soak does not test that.)
``memory``
    ``--messages`` through a ``twistd txpika`` daemon, its RSS sampled (tools/soak_memory.py).

Each mode prints one line: published, lost (published, never consumed), duplicates
(consumed more than once), failed publishes, foreign bodies, recoveries, republished. The
exit status is 1 if anything was lost, failed or timed out, or memory grew. Every wait is
bounded and every node started is stopped at the end. ``nice`` it on a shared machine.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (str(ROOT / "tools"), str(ROOT / "tests"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from rabbitcluster import Cluster  # noqa: E402
from rabbitnode import PrivateNode  # noqa: E402
from soak_load import Load, Result, sleep  # noqa: E402
from soak_memory import run_memory  # noqa: E402
from tcpproxy import Proxy  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402

MODES = ("restarts", "cluster", "chaos", "memory")


def say(text: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {text}", flush=True)


async def soak_restarts(reactor: Any, node: PrivateNode, cycles: int, rate: int) -> Result:
    load = Load(reactor, [node.url], rate=rate, heartbeat=5)
    await load.start()
    for cycle in range(1, cycles + 1):
        await sleep(reactor, 0.5)
        await deferToThread(node.stop_app)
        await sleep(reactor, 0.3)  # publishes meanwhile are held
        await deferToThread(node.start_app)
        await load.wait_open(60)
        await load.consumed_since(30, count=min(rate // 4, 100))
        if cycle % 10 == 0 or cycle == cycles:
            say(f"restarts: cycle {cycle}/{cycles}, {load.published} published, "
                f"{load.recoveries} recoveries")
    result = await load.finish("restarts")
    result.extra["cycles"] = cycles
    if result.recoveries != cycles:
        result.problems.append(f"{result.recoveries} recoveries for {cycles} restarts")
    await load.delete_queue(node.url)
    return result


async def soak_cluster(reactor: Any, cycles: int, rate: int) -> Result:
    cluster = Cluster(3)
    await deferToThread(cluster.start)
    say(f"cluster: formed in {cluster.timings['total']:.1f} s")
    try:
        load = Load(reactor, cluster.urls, rate=rate, quorum=True, heartbeat=5)
        await load.start()
        failover: list[float] = []
        for cycle in range(1, cycles + 1):
            broker = load.service.current_broker
            node = cluster.node_for(broker)
            kill = cycle % 3 == 0
            await deferToThread(node.kill if kill else node.stop)
            failover.append(await load.wait_open(60, not_on=broker))
            await load.consumed_since(30, count=min(rate // 4, 100))
            await deferToThread(node.start)
            await deferToThread(cluster.wait_running, 3, 90)
            if cycle % 10 == 0 or cycle == cycles:
                say(f"cluster: cycle {cycle}/{cycles}, {load.published} published, "
                    f"{load.recoveries} recoveries")
        result = await load.finish("cluster")
        result.extra.update(cycles=cycles, kills=cycles // 3,
                            **{"failover max s": round(max(failover, default=0), 1)})
        if result.recoveries != cycles:
            result.problems.append(f"{result.recoveries} recoveries for {cycles} node losses")
        await load.delete_queue(cluster.nodes[0].url)
        return result
    finally:
        await deferToThread(cluster.stop)


async def soak_chaos(reactor: Any, node: PrivateNode, duration: float, rate: int,
                     seed: int) -> Result:
    rng = random.Random(seed)
    proxy = Proxy(node.host, node.port)
    try:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
        load = Load(reactor, [url], rate=rate, heartbeat=2, connection_timeout=3)
        await load.start()
        cuts = holes = hits = 0  # hits: faults that found the service open
        ends = time.monotonic() + duration
        report = time.monotonic() + 60
        while time.monotonic() < ends:
            if time.monotonic() > report:
                report += 60
                say(f"chaos: {cuts} cuts, {holes} black holes, {load.published} published, "
                    f"{load.recoveries} recoveries")
            await sleep(reactor, rng.uniform(0.5, 4.0))
            hits += load.service.state == "open"
            if rng.random() < 0.5:
                proxy.cut()
                cuts += 1
            else:
                proxy.blackhole()
                holes += 1
                # Longer than txpika can take to see it: nothing for 2 heartbeat intervals
                # (4 s), noticed at the next tick (up to 2 s later), with 2 s to spare.
                await sleep(reactor, rng.uniform(8.0, 12.0))
                proxy.resume()
        await load.wait_open(60)
        result = await load.finish("chaos")
        result.extra.update(seed=seed, cuts=cuts, blackholes=holes,
                            **{"faults while open": hits})
        # A fault while the service is already recovering (a black hole during the
        # handshake, say) only prolongs that recovery.
        if result.recoveries != hits:
            result.problems.append(f"{result.recoveries} recoveries for {hits} faults that "
                                   "found the service open")
        await load.delete_queue(node.url)
        return result
    finally:
        proxy.close()


async def main(reactor: Any, args: argparse.Namespace) -> int:
    modes = list(MODES) if args.mode == "all" else [args.mode]
    if args.quick:
        modes = ["restarts", "chaos", "memory"]
    results: list[Result] = []
    node: PrivateNode | None = None
    try:
        if any(mode != "cluster" for mode in modes):
            node = PrivateNode()
            await deferToThread(node.start)
        for mode in modes:
            say(f"{mode}: starting")
            if mode == "restarts":
                assert node is not None
                result = await soak_restarts(reactor, node, args.cycles, args.rate)
            elif mode == "cluster":
                result = await soak_cluster(reactor, args.cycles, args.rate)
            elif mode == "chaos":
                assert node is not None
                result = await soak_chaos(reactor, node, args.duration, args.rate, args.seed)
            else:
                assert node is not None
                result = await run_memory(reactor, node.url, args.messages, args.csv,
                                          args.png, max_growth_mib=args.max_growth_mib,
                                          sample=0.2 if args.quick else 1.0)
            results.append(result)
            say(result.line())
    finally:
        if node is not None:
            await deferToThread(node.stop)
    for result in results:
        print(result.line(), flush=True)
    return 0 if results and all(result.ok for result in results) else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="all", choices=[*MODES, "all", "plot"])
    parser.add_argument("--quick", action="store_true",
                        help="restarts, chaos and memory, small (the CI check)")
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--rate", type=int, default=500, help="messages a second")
    parser.add_argument("--duration", type=float, default=600.0, help="chaos seconds")
    parser.add_argument("--seed", type=int, default=None,
                        help="chaos seed (default: 1 with --quick, else the time)")
    parser.add_argument("--messages", type=int, default=1_000_000, help="memory mode")
    parser.add_argument("--csv", type=Path, default=Path("soak-memory.csv"))
    parser.add_argument("--png", type=Path, default=None, help="plot (needs matplotlib)")
    parser.add_argument("--max-growth-mib", type=float, default=16.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.cycles, args.duration, args.messages = 3, 15.0, 50_000
    if args.seed is None:  # --quick (CI) is the same run every time
        args.seed = 1 if args.quick else int(time.time())
    return args


if __name__ == "__main__":
    from twisted.internet import task

    arguments = parse()
    if arguments.mode == "plot":  # draw a CSV file of the memory mode again
        from soak_memory import plot, read_curve

        print(plot(read_curve(arguments.csv), arguments.png or arguments.csv.with_suffix(
            ".png")))
        sys.exit(0)

    async def run(reactor: Any) -> None:
        code = await main(reactor, arguments)
        if code:
            raise SystemExit(code)  # react() exits with it

    task.react(lambda reactor: ensureDeferred(run(reactor)))
