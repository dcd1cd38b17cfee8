#!/usr/bin/env python3
"""Blocking-client benchmark: txpika.blocking against pika's BlockingConnection and py-amqp.

A script, not a test. The same harness as ``throughput.py``: each (library, scenario) pair
runs in a child process of its own, so the client CPU time (user + sys,
``getrusage(RUSAGE_SELF)`` around the timed part) and the peak RSS (``VmHWM`` of the whole
child; not ``ru_maxrss``, which Linux floors at the parent's peak) belong to that client
alone. The parent sets up and checks outside the
measurement, with pika's BlockingConnection: a fresh, uniquely named queue per run (deleted
after), pre-filled for the consume scenarios; after a publish run it checks the queue's
message count, after a consume run that the queue is empty, so lost messages are FAIL. A
child that does not finish within ``--timeout`` seconds is killed and reported as TIMEOUT;
one whose progress stops for ``--stall`` seconds gives up by itself and is reported FAIL.

Libraries (``benchmarks/peers_blocking/run_*.py``): ``txpika`` (``txpika.blocking`` from
this checkout), ``pika`` (``pika.BlockingConnection``), ``py-amqp`` (the ``amqp`` package
that Celery and kombu use). All three are plain blocking sockets, one connection, one
thread.

Scenarios (counts at ``--count-scale 1``):

publish
    50,000 x 128 B to the default exchange without confirms, then one round trip on the
    same channel (a passive ``queue.declare``) so the broker has read them all. The queue
    must then hold all 50,000.
confirm-single
    5,000 x 128 B in confirm mode, one at a time: each publish returns on its ack (txpika:
    ``confirm_select`` + ``basic_publish``; pika: ``confirm_delivery`` + ``basic_publish``;
    py-amqp: ``Connection(confirm_publish=True)`` + ``basic_publish``).
confirm-batch
    50,000 x 128 B, pipelined in batches of 1,000, each batch waiting until all of it is
    settled: one round trip per batch. txpika: ``publish_batch``. pika has no pipelined
    confirms in BlockingConnection (in confirm mode each publish waits for its own ack);
    its closest public equivalent is a transaction per batch (``tx_select`` once, 1,000
    publishes, ``tx_commit``). py-amqp: ``confirm_select()`` on a connection without
    ``confirm_publish``, ack/nack handlers in ``channel.events``, 1,000 publishes, then
    ``drain_events`` until they are all settled.
consume
    50,000 x 128 B pre-filled by the parent, consumed with prefetch 1,000 and one
    ``basic.ack`` per message from a ``basic_consume`` callback (txpika and pika: serviced by
    ``process_data_events(0.05)`` in a loop; py-amqp: ``drain_events``); then one round trip
    so the acks are in. Every index must arrive once and the queue must be empty.
consume-iter
    The same with the generator API (txpika: ``channel.consume()``, pika:
    ``channel.consume()``); py-amqp has none (n/a).
big-publish
    200 x 4 MiB without confirms, each body made when it is published (an index, then a
    pattern) so a client that keeps bodies alive shows it in its peak RSS; then one round
    trip. Target: txpika's peak RSS under 40 MB.
big-consume
    200 x 4 MiB pre-filled by the parent, consumed with prefetch 10 and per-message acks
    from a callback. Target: txpika's peak RSS under 40 MB.

Targets, per scenario: txpika's CPU per message at most half of pika's and below py-amqp's.

Columns: messages/s (wall clock of the timed part), CPU us per message (user + sys) and the
sys part of it, CPU % of one core, minor page faults per message (from the start of the
timed part to the child's exit: with 4 MiB messages each fresh ``mmap`` of a body or a
receive buffer costs 1,024 faults, so allocator behaviour shows here), peak RSS and the RSS
when the timed part started.

Usage (see benchmarks/README.rst)::

    python3 benchmarks/blocking.py --setup         # once: benchmarks/.venv with the peers
    python3 benchmarks/blocking.py                 # everything, full size (~1 min)
    python3 benchmarks/blocking.py --count-scale 0.1 --scenarios publish,consume \\
        --libraries txpika,pika --json out.json
    python3 benchmarks/blocking.py --profile       # also cProfile txpika in each scenario
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _broker import Admin
from _harness import (
    HERE,
    ROOT,
    VENV,
    enter_venv,
    fmt,
    install_peers,
    parse_arguments,
    print_profile,
    scaled,
    txpika_revision,
)

#: Bytecode of every module the children import (PYTHONPYCACHEPREFIX), written by a warm-up
#: import before the first child; see `child_env`.
PYCACHE = VENV / "pycache-blocking"

LIBRARIES = ["txpika", "pika", "py-amqp"]
MODULES = {"txpika": "run_txpika", "pika": "run_pika", "py-amqp": "run_pyamqp"}
SCENARIOS = ["publish", "confirm-single", "confirm-batch", "consume", "consume-iter",
             "big-publish", "big-consume"]
#: scenario -> (count at scale 1, body size, batch, prefetch)
SIZES = {
    "publish": (50_000, 128, 0, 0),
    "confirm-single": (5_000, 128, 0, 0),
    "confirm-batch": (50_000, 128, 1000, 0),
    "consume": (50_000, 128, 0, 1000),
    "consume-iter": (50_000, 128, 0, 1000),
    "big-publish": (200, 4 * 1024 * 1024, 0, 0),
    "big-consume": (200, 4 * 1024 * 1024, 0, 10),
}
#: pairs that do not exist (no such API in that library)
UNSUPPORTED = {("py-amqp", "consume-iter"): "py-amqp has no generator API"}
RSS_TARGET_MB = 40.0
PUBLISHING = ("publish", "confirm-single", "confirm-batch", "big-publish")
CONSUMING = ("consume", "consume-iter", "big-consume")


# -- the child side ---------------------------------------------------------------------------


def child_main(raw: str) -> None:
    # txpika from this checkout, or from --txpika-path (to compare a modified copy)
    sys.path.insert(0, os.environ.get("TXPIKA_BENCH_PATH") or str(ROOT))
    sys.path.insert(0, str(HERE))  # peers (the shared meter) and peers_blocking
    from peers._common import Meter, Params

    params = Params(**json.loads(raw))
    meter = Meter(profile=params.profile)
    module = __import__(f"peers_blocking.{MODULES[params.library]}", fromlist=["run"])
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
    # Peak RSS from VmHWM, not ru_maxrss: Linux carries the parent's peak RSS over into
    # the ru_maxrss of a child across fork/vfork + exec, so ru_maxrss is never below the
    # parent's own peak (which grows when it pre-fills 4 MiB messages). VmHWM belongs to
    # the exec'd process alone.
    result["ru_maxrss_kb"] = result["maxrss_kb"]
    result["maxrss_kb"] = _hwm_kb() or result["maxrss_kb"]
    if meter.started:  # minor page faults from the start of the timed part (to the exit)
        import resource

        result["minflt"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                            - meter._r0.ru_minflt)
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def _hwm_kb() -> int:
    """This process's peak resident set (VmHWM), in kB; 0 where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- the parent side: running children ---------------------------------------------------------


def child_env() -> dict[str, str]:
    """The children's environment: bytecode is cached (in `PYCACHE`) even when
    PYTHONDONTWRITEBYTECODE is set. Without .pyc files every child compiles txpika from
    source (this checkout has none, pip-installed peers do), and compiling the generated
    ``txpika/spec.py`` leaves ~10 MB in the peak RSS that an installed txpika never pays."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def warm_bytecode(libraries: list[str]) -> None:
    """Import every runner once (and so its library) so the children find bytecode."""
    modules = [MODULES[lib] for lib in libraries]
    code = (f"import os, sys; sys.path[:0] = [os.environ.get('TXPIKA_BENCH_PATH') or "
            f"{str(ROOT)!r}, {str(HERE)!r}]\n"
            "import peers._common, peers_blocking\n"
            f"for m in {modules!r}:\n    __import__('peers_blocking.' + m)\n"
            "import txpika.blocking, pika, amqp\n")
    subprocess.run([sys.executable, "-c", code], env=child_env(), check=False, timeout=120,
                   stdout=subprocess.DEVNULL)
    # the runners import lazily; import what they import inside their functions too
    subprocess.run([sys.executable, "-c", "import pika.exceptions, amqp.exceptions"],
                   env=child_env(), check=False, timeout=60, stdout=subprocess.DEVNULL)


def run_child(args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    """Run one child; its RESULT line as a dict, or {"status": "TIMEOUT"/"ERROR", ...}."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(params)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True,
                                env=child_env())
        try:
            proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"status": "TIMEOUT", "note": f"killed after {args.timeout:g} s"}
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            if result.get("error"):
                result["stderr_tail"] = stderr.strip().splitlines()[-12:]
            return result
    return {"status": "ERROR", "note": f"exit {proc.returncode}",
            "stderr_tail": stderr.strip().splitlines()[-12:]}


def run_one(args: argparse.Namespace, admin: Admin, library: str, scenario: str,
            profile: str = "") -> dict[str, Any]:
    base_count, size, batch, prefetch = SIZES[scenario]
    count = scaled(base_count, args.count_scale)
    if scenario.startswith("big") and args.big_count:
        count = args.big_count
    row: dict[str, Any] = {"scenario": scenario, "library": library, "count": count,
                           "size": size}
    if (library, scenario) in UNSUPPORTED:
        row.update(status="n/a", note=UNSUPPORTED[(library, scenario)])
        return row
    queue = f"txpika-bench-blocking-{scenario}-{library}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    row["queue"] = queue
    params: dict[str, Any] = {
        "library": library, "scenario": scenario, "host": args.host, "port": args.port,
        "user": args.user, "password": args.password, "vhost": args.vhost, "queue": queue,
        "count": count, "size": size, "window": batch or 1000, "prefetch": prefetch or 1000,
        "stall": args.stall, "profile": profile, "rpc_queue": "",
    }
    try:
        admin.declare(queue)
        if scenario in CONSUMING:
            admin.prefill(queue, count, size)
            have = admin.wait_count(queue, count, 60)
            if have != count:
                raise RuntimeError(f"pre-fill: the queue holds {have} of {count}")
        result = run_child(args, params)
        row.update(result)
        if "status" not in row:
            row["status"], row["note"] = check(admin, scenario, count, queue, row)
    except Exception as exc:
        row.update(status="ERROR", note=f"{type(exc).__name__}: {exc}")
    finally:
        admin.delete(queue)
    return row


def check(admin: Admin, scenario: str, count: int, queue: str,
          r: dict[str, Any]) -> tuple[str, str]:
    """("ok" | "FAIL" | "ERROR", why) for a finished child."""
    if r.get("error"):
        return "ERROR", r["error"]
    problems: list[str] = []
    if r.get("stalled"):
        problems.append(f"stalled: {r['stalled']}")
    if scenario in PUBLISHING:
        if scenario.startswith("confirm") and (r.get("acked") != count or r.get("nacked")):
            problems.append(f"acked {r.get('acked')} nacked {r.get('nacked')} of {count}")
        have = admin.wait_count(queue, count, 30)
        if have != count:
            problems.append(f"queue holds {have} of {count}: lost {count - have}")
    else:
        if r.get("lost") or r.get("duplicates") or r.get("damaged"):
            problems.append(f"consumed {r.get('consumed')} of {count}: lost {r.get('lost')}, "
                            f"duplicated {r.get('duplicates')}, damaged {r.get('damaged')}")
        time.sleep(0.3)  # unacked deliveries return to the queue when the child's channel dies
        left = admin.wait_count(queue, 0, 10)
        if left:
            problems.append(f"{left} messages left in the queue (not acked)")
    if problems:
        return "FAIL", "; ".join(problems)
    return "ok", ""


# -- reporting ------------------------------------------------------------------------------------


def derive(row: dict[str, Any]) -> None:
    """Per-message figures from a child's raw numbers."""
    if "wall" not in row or not row.get("measured"):
        return
    count = row["count"]
    cpu = row["cpu_user"] + row["cpu_sys"]
    row["msgs_per_s"] = count / row["wall"] if row["wall"] else 0.0
    row["cpu_us_per_msg"] = cpu / count * 1e6
    row["sys_us_per_msg"] = row["cpu_sys"] / count * 1e6
    if "minflt" in row:
        row["faults_per_msg"] = row["minflt"] / count
    row["peak_rss_mb"] = row["maxrss_kb"] / 1024.0
    row["base_rss_mb"] = row["base_rss_kb"] / 1024.0


def pick(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the repeats of a pair: a failure if any repeat failed (failures are
    never hidden by a better repeat), else the repeat with the least CPU per message."""
    for row in attempts:
        if row.get("status") not in ("ok", "n/a"):
            failed = dict(row)
            if len(attempts) > 1:
                failed["note"] = (f"{sum(r.get('status') != 'ok' for r in attempts)} of "
                                  f"{len(attempts)} runs: " + str(row.get("note", "")))
            return failed
    best = dict(min(attempts, key=lambda r: r.get("cpu_us_per_msg", float("inf"))))
    best["repeats"] = len(attempts)
    best["all_cpu_us_per_msg"] = [r.get("cpu_us_per_msg") for r in attempts]
    return best


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("scenario", "library", "msgs/s", "CPU us/msg", "of it sys", "CPU %",
              "faults/msg", "peak RSS MB", "RSS@start", "check")
    lines = [header]
    for r in rows:
        cpu_pct = None
        if r.get("wall"):
            cpu_pct = (r["cpu_user"] + r["cpu_sys"]) / r["wall"] * 100
        check_text = r.get("status", "?") + (f" ({r['note']})" if r.get("note") else "")
        lines.append((
            r["scenario"], r["library"], fmt(r.get("msgs_per_s"), ",.0f"),
            fmt(r.get("cpu_us_per_msg"), ",.1f"), fmt(r.get("sys_us_per_msg"), ",.1f"),
            fmt(cpu_pct, ".0f"), fmt(r.get("faults_per_msg"), ",.1f"),
            fmt(r.get("peak_rss_mb"), ".1f"),
            fmt(r.get("base_rss_mb"), ".1f"), check_text,
        ))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header) - 1)]
    for n, line in enumerate(lines):
        cells = [str(c).rjust(w) if i >= 2 else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(line[:-1], widths, strict=True))]
        print("  ".join(cells) + "  " + str(line[-1]))
        if n == 0:
            print("-" * (sum(widths) + 2 * len(widths) + 10))


def print_targets(rows: list[dict[str, Any]]) -> None:
    """txpika's CPU per message against the targets: <= half of pika's, below py-amqp's;
    and peak RSS under 40 MB with 4 MiB messages."""
    print(f"\nTargets for txpika (CPU per message: <= 0.5 x pika and < py-amqp; "
          f"big-*: peak RSS < {RSS_TARGET_MB:g} MB):")
    by = {(r["scenario"], r["library"]): r for r in rows}
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        tx = by.get((scenario, "txpika"), {}).get("cpu_us_per_msg")
        if tx is None:
            continue
        parts = []
        for peer, limit, op in (("pika", 0.5, "<="), ("py-amqp", 1.0, "<")):
            other = by.get((scenario, peer), {}).get("cpu_us_per_msg")
            if other:
                ratio = tx / other
                ok = ratio <= limit if op == "<=" else ratio < limit
                parts.append(f"{ratio:.2f} x {peer} ({'met' if ok else 'MISSED'})")
        if scenario.startswith("big"):
            rss = by[(scenario, "txpika")].get("peak_rss_mb")
            if rss is not None:
                parts.append(f"peak RSS {rss:.1f} MB "
                             f"({'met' if rss < RSS_TARGET_MB else 'MISSED'})")
        print(f"  {scenario:15s} " + (", ".join(parts) if parts else "no peer to compare"))


# -- main -----------------------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for dist in ("pika", "amqp"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return versions


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
        return
    args = parse_arguments(__doc__, SCENARIOS, LIBRARIES,
                           "messages in the big-* scenarios (default 200 x --count-scale)")
    enter_venv(args, __file__, install_peers)

    versions = library_versions()
    versions["txpika"] = txpika_revision()
    if args.txpika_path:
        os.environ["TXPIKA_BENCH_PATH"] = os.path.abspath(args.txpika_path)
        versions["txpika"] = f"from {os.environ['TXPIKA_BENCH_PATH']}"
    print(f"{platform.python_implementation()} {platform.python_version()}, "
          + ", ".join(f"{k} {v}" for k, v in versions.items())
          + f"; {os.cpu_count()} CPUs; broker {args.host}:{args.port}")
    print(f"count scale {args.count_scale:g}; child timeout {args.timeout:g} s, "
          f"stall limit {args.stall:g} s\n")
    admin = Admin(args)
    try:
        admin.declare(probe := f"txpika-bench-probe-{uuid.uuid4().hex[:8]}")
        admin.delete(probe)
    except Exception as exc:
        sys.exit(f"cannot reach the broker at {args.host}:{args.port}: {exc}")

    warm_bytecode(args.libraries)
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
                print(f"  {scenario:15s} {library:8s} {row.get('status')} "
                      f"{fmt(row.get('msgs_per_s'), ',.0f')} msg/s "
                      f"{fmt(row.get('cpu_us_per_msg'), ',.1f')} us/msg "
                      f"{fmt(row.get('peak_rss_mb'), '.1f')} MB "
                      f"({time.monotonic() - t0:.1f} s) {row.get('note', '')}", flush=True)
                for line in row.get("stderr_tail", []) if row.get("status") != "ok" else []:
                    print(f"      | {line}")
    rows = [pick(attempts) for attempts in runs.values()]
    print()
    print_table(rows)
    if "txpika" in args.libraries:
        print_targets(rows)

    profiles: dict[str, str] = {}
    if args.profile and "txpika" in args.libraries:
        directory = args.profile_dir or tempfile.mkdtemp(prefix="txpika-bench-blocking-prof-")
        os.makedirs(directory, exist_ok=True)
        print(f"\ncProfile of txpika (timed part only; stats in {directory}):")
        for scenario in args.scenarios:
            path = os.path.join(directory, f"txpika-blocking-{scenario}.pstats")
            row = run_one(args, admin, "txpika", scenario, profile=path)
            print(f"\n  {scenario}: {row.get('status')} {row.get('note', '')}")
            if os.path.exists(path):
                profiles[scenario] = path
                print_profile(path, args.top)

    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"versions": versions, "python": platform.python_version(),
                       "count_scale": args.count_scale, "rows": rows, "profiles": profiles},
                      fh, indent=2, default=str)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
