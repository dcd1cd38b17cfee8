#!/usr/bin/env python3
"""asyncio benchmark: txpika.aio against aio-pika, aiormq and pika's asyncio adapter.

A script, not a test, built like throughput.py (whose parent side it reuses: the broker
administration, the RPC server, the checks): each (library, scenario) pair runs in a child
process of its own; client CPU time (user + sys around the timed part) and peak RSS belong
to that client alone; lost, duplicated or damaged messages are reported as FAIL.

Libraries (``benchmarks/peers/run_aio_*.py``, and ``run_aiopika.py``): ``txpika-aio``
(this checkout) and ``txpika-aio-uvloop``; ``aio-pika``; ``aiormq`` and ``aiormq-uvloop``;
``pika-asyncio`` (pika's ``AsyncioConnection``). Without ``-uvloop`` a row runs on
asyncio's default event loop.

Scenarios (counts at ``--count-scale 1``):

publish
    50,000 x 128 B without confirms, each publish awaited (txpika.aio: done at once unless
    the transport pushes back; pika's adapter has no awaitable: plain calls), then one
    round trip. The queue must hold all 50,000.
publish-confirm
    The same in confirm mode with a sliding window of 1,000 unconfirmed publishes.
consume
    50,000 x 128 B pre-filled, consumed by a callback with prefetch 1,000, one ack each.
rpc
    2,000 sequential round trips against a pika BlockingConnection echo server (p50/p99).
big
    200 x 4 MiB: each publish confirmed before the next is made, then consumed with
    prefetch 10 and an ack each, on two channels of one connection. Peak RSS target for
    txpika.aio: 60 MB.

Targets: txpika-aio's CPU per message below (ratio < 1) each default-loop peer's in every
scenario, and txpika-aio-uvloop's below aiormq-uvloop's.

Usage::

    python3 benchmarks/aio_throughput.py --setup     # once: benchmarks/.venv (+ uvloop)
    python3 benchmarks/aio_throughput.py --count-scale 0.2 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from _broker import Admin, run_command, stop_process
from _harness import (
    ROOT,
    VENV,
    VENV_PYTHON,
    byte_compile_txpika,
    enter_venv,
    fmt,
    install_peers,
    parse_arguments,
    scaled,
    txpika_revision,
)
from _report import Target, derive, pick, print_table, print_targets_table, target_lines

LIBRARIES = ["txpika-aio", "txpika-aio-uvloop", "aio-pika", "aiormq", "aiormq-uvloop",
             "pika-asyncio"]
MODULES = {
    "txpika-aio": "run_aio_txpika", "txpika-aio-uvloop": "run_aio_txpika",
    "aio-pika": "run_aiopika", "aiormq": "run_aio_aiormq", "aiormq-uvloop": "run_aio_aiormq",
    "pika-asyncio": "run_aio_pika_asyncio",
}
SCENARIOS = ["publish", "publish-confirm", "consume", "rpc", "big"]
#: scenario -> (count at scale 1, body size, window, prefetch)
SIZES = {
    "publish": (50_000, 128, 0, 0),
    "publish-confirm": (50_000, 128, 1000, 0),
    "consume": (50_000, 128, 0, 1000),
    "rpc": (2_000, 128, 0, 0),
    "big": (200, 4 * 1024 * 1024, 1, 10),
}
RSS_TARGET_MB = 60.0
TARGETS = [
    *(Target(scenario, reference, 1.0, subject="txpika-aio")
      for scenario in SCENARIOS for reference in ("aio-pika", "aiormq", "pika-asyncio")),
    *(Target(scenario, "aiormq-uvloop", 1.0, subject="txpika-aio-uvloop")
      for scenario in SCENARIOS),
]


def child_main(raw: str) -> None:
    sys.path.insert(0, os.environ.get("TXPIKA_BENCH_PATH") or str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the peers package
    from peers._common import Meter, Params

    params = Params(**json.loads(raw))
    meter = Meter(profile=params.profile)
    module = __import__(f"peers.{MODULES[params.library]}", fromlist=["run"])
    result: dict[str, Any] = {}
    try:
        result.update(module.run(params, meter))
    except Exception as exc:  # report it; the parent marks the row ERROR
        import traceback

        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    if not meter.stopped and meter.started:
        meter.stop()
    result.update(meter.result(), measured=meter.stopped)
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_one(args: argparse.Namespace, admin: Admin, library: str, scenario: str
            ) -> dict[str, Any]:
    import throughput

    base_count, size, window, prefetch = SIZES[scenario]
    count = scaled(base_count, args.count_scale)
    if scenario == "big" and args.big_count:
        count = args.big_count
    row: dict[str, Any] = {"scenario": scenario, "library": library, "count": count,
                           "size": size}
    queue = f"txpika-bench-aio-{scenario}-{library}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    params: dict[str, Any] = {
        "library": library, "scenario": scenario, "host": args.host, "port": args.port,
        "user": args.user, "password": args.password, "vhost": args.vhost, "queue": queue,
        "count": count, "size": size, "window": window or 1000, "prefetch": prefetch or 1000,
        "stall": args.stall, "profile": "", "rpc_queue": "",
    }
    server = None
    try:
        if scenario == "rpc":
            params["rpc_queue"] = queue
            server = throughput.start_rpc_server(args, queue)
        else:
            admin.declare(queue)
        if scenario == "consume":
            admin.prefill_checked(queue, count, size)
        row.update(run_command([sys.executable, str(Path(__file__).resolve()), "--child",
                                json.dumps(params)], args.timeout))
        if "status" not in row:
            row["status"], row["note"] = throughput.check(admin, scenario, count, queue, row)
    except Exception as exc:
        row.update(status="ERROR", note=f"{type(exc).__name__}: {exc}")
    finally:
        if server is not None:
            stop_process(server)
        admin.delete(queue)
    return row


def setup_venv() -> None:
    install_peers()
    print(f"installing uvloop into {VENV}")
    subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "-q", "uvloop"], check=True)


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {"txpika": txpika_revision()}
    for dist in ("aio-pika", "aiormq", "pika", "uvloop"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "missing"
    return found


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
        return
    args = parse_arguments(__doc__, SCENARIOS, LIBRARIES,
                           "messages in the big scenario (default 200 x --count-scale)")
    enter_venv(args, __file__, setup_venv)
    found = versions()
    if args.txpika_path:
        os.environ["TXPIKA_BENCH_PATH"] = os.path.abspath(args.txpika_path)
    byte_compile_txpika(args.txpika_path)
    print(f"{platform.python_implementation()} {platform.python_version()}, "
          + ", ".join(f"{k} {v}" for k, v in found.items())
          + f"; {os.cpu_count()} CPUs; broker {args.host}:{args.port}; count scale "
          f"{args.count_scale:g}\n")
    admin = Admin(args)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for repeat in range(args.repeat):
        if args.repeat > 1:
            print(f"pass {repeat + 1} of {args.repeat}")
        for scenario in args.scenarios:
            for library in args.libraries:
                t0 = time.monotonic()
                row = run_one(args, admin, library, scenario)
                derive(row)
                runs.setdefault((scenario, library), []).append(row)
                print(f"  {scenario:16s} {library:18s} {row.get('status')} "
                      f"{fmt(row.get('msgs_per_s'), ',.0f')} msg/s "
                      f"{fmt(row.get('cpu_us_per_msg'), ',.1f')} us/msg "
                      f"{fmt(row.get('peak_rss_mb'), '.1f')} MB "
                      f"({time.monotonic() - t0:.1f} s) {row.get('note', '')}", flush=True)
                for line in row.get("stderr_tail", []) if row.get("status") != "ok" else []:
                    print(f"      | {line}")
    rows = [pick(attempts) for attempts in runs.values()]
    print()
    print_table(rows)
    lines = target_lines(TARGETS, rows)
    print_targets_table(lines, "Targets (client CPU us per message; ratio = txpika.aio / "
                               "reference, this run):")
    big = {r["library"]: r for r in rows if r["scenario"] == "big"}.get("txpika-aio")
    if big is not None and big.get("peak_rss_mb") is not None:
        verdict = "met" if big["peak_rss_mb"] <= RSS_TARGET_MB else "MISSED"
        print(f"  big: txpika-aio's peak RSS {big['peak_rss_mb']:.1f} MB, target <= "
              f"{RSS_TARGET_MB:g} MB: {verdict}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"versions": found, "python": platform.python_version(),
                       "count_scale": args.count_scale, "repeat": args.repeat, "rows": rows,
                       "targets": lines}, fh, indent=2, default=str)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
