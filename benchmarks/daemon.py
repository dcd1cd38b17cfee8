#!/usr/bin/env python3
"""Daemon-level benchmark: ``twistd txpika`` and the at-least-once ``Publisher``, each
against the bare txpika code a user would otherwise write, on a real RabbitMQ broker.

A script, not a test. Every row runs in a process of its own; the parent (pika's
BlockingConnection, as in throughput.py) declares a uniquely named queue per row, fills
it when the row consumes, checks it afterwards (a lost or unacked message is FAIL) and
deletes it. Scenarios (counts at ``--count-scale 1``):

daemon-p100 / daemon-p1000
    50,000 x 128 B pre-filled, drained with prefetch 100 (1,000). ``twistd-txpika``:
    ``twistd -n --pidfile= txpika --url URL --queue Q --handler
    peers.daemon_handler:handle --prefetch N`` (concurrency: twistd's default, 10), with
    a handler that returns at once. ``bare-callback``: ``basic_consume(queue,
    on_message_callback=cb)`` where ``cb`` acks each message (``peers/run_service.py``).
    Both hand each body to the same recorder (``peers/daemon_handler.py``), which takes
    the process's CPU time (``getrusage``) and wall time at the first and at the last
    delivery: the figures are the steady state, start-up excluded. The daemon's CPU with
    start-up included (``/proc/PID/stat`` when the last message is in) is printed too.
    Then SIGTERM: the daemon drains and exits.
publisher-batch / publisher-window
    50,000 x 128 B, confirmed. ``txpika-publisher``: ``AMQPService(reactor, url)`` and
    ``service.publisher(at_least_once=True)``; ``bare-confirm``: a plain channel after
    ``confirm_select()``. ``-batch``: 1,000 publishes, then ``await gatherResults(...)`` of
    their Deferreds, and again; ``-window``: at most 1,000 unconfirmed, one new publish per
    confirm (throughput.py's sliding window). Timed from the open publisher (channel) to
    the last confirm.

Observability (issue #13): the same rows with Prometheus metrics on
(``twistd-metrics``: ``--health tcp:0:interface=127.0.0.1``, so the daemon's
`PrometheusObserver` counts every delivery; ``publisher-metrics``: the service's
``observer=PrometheusObserver()``) and with OpenTelemetry tracing on (``twistd-tracing``:
``--tracing`` with the SDK's tracer provider set by ``peers.daemon_handler_traced``;
``publisher-tracing``: ``tracing=Tracing(provider)``; spans batched and dropped, so the
cost is making them). Their extra CPU per message over the row with both off is printed
at the end. That both off cost nothing is shown by running this script against the tree
before the observers existed (``--txpika-path``) and comparing the ``twistd-txpika`` and
``txpika-publisher`` rows.

Targets (issue #10): the daemon's CPU per message at most 1.3 x the bare consumer's, and
the Publisher's at most 1.3 x the bare confirmed publishes', in the same run.

Usage (see benchmarks/README.rst)::

    python3 benchmarks/throughput.py --setup     # once: benchmarks/.venv (Twisted, pika)
    python3 benchmarks/daemon.py                 # everything, full size
    python3 benchmarks/daemon.py --count-scale 0.1 --scenarios daemon-p100 --json out.json
    python3 benchmarks/daemon.py --profile       # cProfile of each txpika row (twistd's
                                                 # --profile for the daemon)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from _broker import Admin, run_command, stop_process
from _harness import (
    HERE,
    ROOT,
    byte_compile_txpika,
    enter_venv,
    fmt,
    parse_arguments,
    print_profile,
    scaled,
    txpika_revision,
)
from _report import Target, derive, pick, print_table, print_targets_table, target_lines

SCENARIOS = ["daemon-p100", "daemon-p1000", "publisher-batch", "publisher-window"]
#: scenario -> (subject, reference, count at scale 1, prefetch or window)
PAIRS = {
    "daemon-p100": ("twistd-txpika", "bare-callback", 50_000, 100),
    "daemon-p1000": ("twistd-txpika", "bare-callback", 50_000, 1000),
    "publisher-batch": ("txpika-publisher", "bare-confirm", 50_000, 1000),
    "publisher-window": ("txpika-publisher", "bare-confirm", 50_000, 1000),
}
#: scenario kind -> the observed variants of its subject (issue #13)
OBSERVED = {"daemon": ["twistd-metrics", "twistd-tracing"],
            "publisher": ["publisher-metrics", "publisher-tracing"]}
LIBRARIES = ["twistd-txpika", "bare-callback", "txpika-publisher", "bare-confirm",
             *OBSERVED["daemon"], *OBSERVED["publisher"]]
SIZE = 128
CONCURRENCY = 10  # twistd txpika's default --concurrency
TARGETS = [Target(scenario, reference, 1.3, source="#10", subject=subject)
           for scenario, (subject, reference, _, _) in PAIRS.items()]


# -- the child side -------------------------------------------------------------------------


def child_main(raw: str) -> None:
    sys.path.insert(0, os.environ.get("TXPIKA_BENCH_PATH") or str(ROOT))
    sys.path.insert(0, str(HERE))
    from peers import run_service
    from peers._common import Meter, Params

    params = Params(**json.loads(raw))
    meter = Meter(profile=params.profile)
    result: dict[str, Any] = {}
    try:
        if params.library in OBSERVED["publisher"]:
            from peers import run_observed

            result.update(run_observed.run(params, meter))
        else:
            result.update(run_service.run(params, meter))
    except Exception as exc:
        import traceback

        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    if meter.started:  # the publishers; the bare consumer's figures are its recorder's
        meter.stop()
        result.update(meter.result(), measured=meter.stopped)
    sys.stdout.write("RESULT " + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()


# -- the parent side ------------------------------------------------------------------------


def txpika_tree() -> Path:
    return Path(os.environ.get("TXPIKA_BENCH_PATH") or ROOT)


def twistd_command() -> list[str]:
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of process ``pid`` (``/proc/PID/stat``), in seconds."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_daemon(args: argparse.Namespace, admin: Admin, row: dict[str, Any],
               profile: str) -> None:
    """Start ``twistd txpika`` on the pre-filled queue, wait for the handler's result file,
    stop the daemon with SIGTERM; the figures go into ``row``."""
    with tempfile.TemporaryDirectory(prefix="txpika-bench-daemon-") as directory:
        _run_daemon(args, admin, row, profile, directory)


def _run_daemon(args: argparse.Namespace, admin: Admin, row: dict[str, Any], profile: str,
                directory: str) -> None:
    result_file = os.path.join(directory, "result.json")
    log_file = os.path.join(directory, "twistd.log")
    env = dict(os.environ, TXPIKA_BENCH_RESULT=result_file,
               TXPIKA_BENCH_COUNT=str(row["count"]))
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), str(txpika_tree()), *filter(None, [os.environ.get("PYTHONPATH")])])
    url = (f"amqp://{quote(args.user, safe='')}:{quote(args.password, safe='')}@"
           f"{args.host}:{args.port}/{quote(args.vhost, safe='')}")
    profiling = ["--profile", profile, "--profiler", "cprofile", "--savestats"] if profile else []
    handler = "peers.daemon_handler:handle"
    observed: list[str] = []
    if row["library"] == "twistd-metrics":
        observed = ["--health", "tcp:0:interface=127.0.0.1"]
    elif row["library"] == "twistd-tracing":
        handler, observed = "peers.daemon_handler_traced:handle", ["--tracing"]
    cmd = [*twistd_command(), "-n", "--pidfile=", *profiling, "txpika", "--url", url,
           "--queue", row["queue"], "--handler", handler,
           "--prefetch", str(row["prefetch"]), "--concurrency", str(CONCURRENCY),
           "--drain-timeout", "5", *observed]
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=str(txpika_tree()),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    started = time.monotonic()
    last_left, since = -1, time.monotonic()
    try:
        while not os.path.exists(result_file):
            if proc.poll() is not None:
                row.update(status="ERROR", note=f"twistd exited ({proc.returncode})")
                break
            now = time.monotonic()
            if now - started > args.timeout:
                row.update(status="TIMEOUT", note=f"no result after {args.timeout:g} s")
                break
            if now - since > 1.0:  # stalled? (the ready count stops moving)
                left, _consumers = admin.count(row["queue"])
                if left != last_left:
                    last_left, since = left, now
                elif now - since > args.stall:
                    row.update(status="FAIL", note=f"stalled: {left} ready for {args.stall:g} s")
                    break
            time.sleep(0.05)
        row["cpu_with_startup_s"] = proc_cpu_seconds(proc.pid)
        row["wall_with_startup_s"] = time.monotonic() - started
    finally:
        stop_process(proc, grace=15.0)
        row["exit_code"] = proc.returncode
    if os.path.exists(result_file):
        with open(result_file, encoding="utf-8") as fh:
            row.update(json.load(fh))
    if row.get("status") not in (None, "ok"):
        with open(log_file, "rb") as log:
            row["stderr_tail"] = log.read().decode(errors="replace").strip().splitlines()[-12:]


def run_one(args: argparse.Namespace, admin: Admin, scenario: str, library: str,
            profile: str = "") -> dict[str, Any]:
    _subject, _reference, base_count, depth = PAIRS[scenario]
    count = scaled(base_count, args.count_scale)
    queue = f"txpika-bench-{scenario}-{library}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    row: dict[str, Any] = {"scenario": scenario, "library": library, "count": count,
                           "size": SIZE, "queue": queue}
    consuming = scenario.startswith("daemon")
    if consuming:
        row.update(prefetch=depth, concurrency=CONCURRENCY if library.startswith("twistd-")
                   else None)
    else:
        row["window"] = depth
    try:
        admin.declare(queue)
        if consuming:
            admin.prefill_checked(queue, count, SIZE)
        if library.startswith("twistd-"):
            run_daemon(args, admin, row, profile)
        else:
            params = {
                "library": library, "scenario": scenario, "host": args.host,
                "port": args.port, "user": args.user, "password": args.password,
                "vhost": args.vhost, "queue": queue, "count": count, "size": SIZE,
                "window": depth, "prefetch": depth, "stall": args.stall, "profile": profile,
            }
            row.update(run_command([sys.executable, str(Path(__file__).resolve()), "--child",
                                    json.dumps(params)], args.timeout))
        if "status" not in row:
            row["status"], row["note"] = check(admin, consuming, count, queue, row)
    except Exception as exc:
        row.update(status="ERROR", note=f"{type(exc).__name__}: {exc}")
    finally:
        admin.delete(queue)
    return row


def check(admin: Admin, consuming: bool, count: int, queue: str,
          r: dict[str, Any]) -> tuple[str, str]:
    if r.get("error"):
        return "ERROR", r["error"]
    problems: list[str] = []
    if r.get("stalled"):
        problems.append(f"stalled: {r['stalled']}")
    if consuming:
        if r.get("lost") or r.get("duplicates") or r.get("damaged"):
            problems.append(f"consumed {r.get('consumed')} of {count}: lost {r.get('lost')}, "
                            f"duplicated {r.get('duplicates')}, damaged {r.get('damaged')}")
        time.sleep(0.3)
        left = admin.wait_count(queue, 0, 10)
        if left:
            problems.append(f"{left} messages left in the queue (not acked)")
    else:
        if r.get("acked") != count or r.get("nacked"):
            problems.append(f"acked {r.get('acked')} nacked {r.get('nacked')} of {count}")
        have = admin.wait_count(queue, count, 30)
        if have != count:
            problems.append(f"queue holds {have} of {count}")
    if problems:
        return "FAIL", "; ".join(problems)
    return "ok", ""


def print_startup(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        if r["library"].startswith("twistd-") and r.get("cpu_with_startup_s") is not None:
            print(f"  {r['scenario']}: the daemon's CPU with start-up included "
                  f"{r['cpu_with_startup_s'] / r['count'] * 1e6:,.1f} us/msg "
                  f"({r['cpu_with_startup_s']:.2f} s for {r['count']:,} messages, "
                  f"{r['wall_with_startup_s']:.1f} s from exec to the last message)")


def print_observed(rows: list[dict[str, Any]]) -> None:
    """The extra CPU per message of metrics and of tracing over the subject with both off."""
    by = {(r["scenario"], r["library"]): r.get("cpu_us_per_msg") for r in rows}
    lines = []
    for scenario, (subject, _reference, _count, _depth) in PAIRS.items():
        off = by.get((scenario, subject))
        for library in OBSERVED[scenario.split("-")[0]]:
            on = by.get((scenario, library))
            if off and on:
                lines.append(f"  {scenario:16s} {library:18s} {on:8.1f} us/msg  off "
                             f"{off:8.1f}  cost {on - off:+7.1f} us/msg ({on / off - 1:+.0%})")
    if lines:
        print("\nObservability (#13): CPU per message with it on, with both off, and the "
              "difference:")
        print("\n".join(lines))


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
        return
    args = parse_arguments(__doc__, SCENARIOS, LIBRARIES, "(not used by daemon.py)")
    enter_venv(args, __file__, lambda: sys.exit("run `python3 benchmarks/throughput.py "
                                                "--setup` (the same benchmarks/.venv)"))
    versions = {"txpika": txpika_revision()}
    if args.txpika_path:
        os.environ["TXPIKA_BENCH_PATH"] = os.path.abspath(args.txpika_path)
        versions["txpika"] = f"from {os.environ['TXPIKA_BENCH_PATH']}"
    from importlib import metadata

    versions["Twisted"] = metadata.version("Twisted")
    byte_compile_txpika(args.txpika_path)
    print(f"{platform.python_implementation()} {platform.python_version()}, "
          + ", ".join(f"{k} {v}" for k, v in versions.items())
          + f"; {os.cpu_count()} CPUs; broker {args.host}:{args.port}")
    print(f"count scale {args.count_scale:g}; timeout {args.timeout:g} s, "
          f"stall limit {args.stall:g} s\n")
    admin = Admin(args)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for repeat in range(args.repeat):
        if args.repeat > 1:
            print(f"pass {repeat + 1} of {args.repeat}")
        for scenario in args.scenarios:
            for library in [*PAIRS[scenario][:2], *OBSERVED[scenario.split("-")[0]]]:
                if library not in args.libraries:
                    continue
                t0 = time.monotonic()
                row = run_one(args, admin, scenario, library)
                derive(row)
                runs.setdefault((scenario, library), []).append(row)
                print(f"  {scenario:16s} {library:16s} {row.get('status')} "
                      f"{fmt(row.get('msgs_per_s'), ',.0f')} msg/s "
                      f"{fmt(row.get('cpu_us_per_msg'), ',.1f')} us/msg "
                      f"({time.monotonic() - t0:.1f} s) {row.get('note', '')}", flush=True)
                for line in row.get("stderr_tail", []) if row.get("status") != "ok" else []:
                    print(f"      | {line}")
    rows = [pick(attempts) for attempts in runs.values()]
    print()
    print_table(rows, latency_scenarios=())
    print_startup(rows)
    targets = target_lines(TARGETS, rows)
    print_targets_table(targets, "Targets (CPU us per message; ratio = txpika's / the bare "
                                 "code's, this run; #10: issue 10's targets):")
    print_observed(rows)

    profiles: dict[str, str] = {}
    if args.profile:
        directory = args.profile_dir or tempfile.mkdtemp(prefix="txpika-bench-prof-")
        os.makedirs(directory, exist_ok=True)
        print(f"\ncProfile (stats in {directory}; the daemon's include its start-up):")
        for scenario in args.scenarios:
            library = PAIRS[scenario][0]
            path = os.path.join(directory, f"{library}-{scenario}.pstats")
            row = run_one(args, admin, scenario, library, profile=path)
            print(f"\n  {scenario} {library}: {row.get('status')} {row.get('note', '')}")
            if os.path.exists(path):
                profiles[scenario] = path
                print_profile(path, args.top)

    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"versions": versions, "python": platform.python_version(),
                       "count_scale": args.count_scale, "repeat": args.repeat, "rows": rows,
                       "targets": targets, "profiles": profiles}, fh, indent=2, default=str)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
