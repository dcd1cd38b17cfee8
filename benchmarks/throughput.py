#!/usr/bin/env python3
"""Throughput benchmark: txpika against its peers on a real RabbitMQ broker.

A script, not a test. Each (library, scenario) pair runs in a child process of its own, so
the client CPU time (user + sys, ``getrusage(RUSAGE_SELF)`` around the timed part) and the
peak RSS (``ru_maxrss`` of the whole child) belong to that client alone. The parent sets up
and checks outside the measurement, with pika's BlockingConnection: a fresh, uniquely named
queue per run (deleted after), pre-filled for the consume scenario; after the run it checks
the queue's message count, so lost messages are caught and reported as FAIL. A child that
does not finish within ``--timeout`` seconds is killed and reported as TIMEOUT; a child whose
progress stops for ``--stall`` seconds gives up by itself and is reported as FAIL.

Libraries (see ``benchmarks/peers/run_*.py``): ``txpika`` (this checkout, Twisted),
``pika-twisted`` (pika's ``TwistedProtocolConnection``), ``txamqp`` (txAMQP3, Twisted),
``aio-pika`` (asyncio). The three Twisted clients run on Twisted's default reactor (epoll),
aio-pika on asyncio's default event loop. ``twisted-floor`` (rpc only, n/a elsewhere) is a
reference, not a client: txpika sets up the rpc scenario, then a bare function splits the
input into frames and counts reply bodies, and a request encoded once is written as txpika
writes (``peers/run_floor.py``). It shows what the reactor, the kernel and the
harness cost per round trip; it does not check replies.

Scenarios (counts at ``--count-scale 1``):

publish
    50,000 x 128 B to the default exchange without confirms, fire and forget, then one
    round trip on the same channel (a passive ``queue.declare``) so the broker has read them
    all. After the timed part the queue must hold all 50,000.
publish-confirm
    The same in confirm mode, pipelined with a sliding window of 1,000 unconfirmed publishes
    (one new publish per confirm; the same harness for every library). All must be acked
    and the queue must hold all 50,000.
consume
    50,000 x 128 B pre-filled by the parent, consumed with prefetch 1,000 and one
    ``basic.ack`` per message; then one round trip so the acks are in. Every index must
    arrive once, and the queue must be empty afterwards.
rpc
    2,000 sequential round trips: publish a 128 B request with ``reply_to`` (an exclusive
    server-named queue consumed with auto-ack) and ``correlation_id``, wait for the reply.
    The server is a separate process (pika BlockingConnection, the same for every client);
    only the client is measured. Reports p50 and p99 latency.
big
    200 x 4 MiB: publish in confirm mode with a window of 10 unconfirmed, then consume with
    prefetch 10 and per-message acks, on two channels of one connection. Each body is made
    when it is published (an index, then a pattern), so a client that keeps bodies alive
    shows it in its peak RSS. Target: txpika stays under 100 MB.

Usage (see benchmarks/README.rst)::

    python3 benchmarks/throughput.py --setup        # once: benchmarks/.venv with the peers
    python3 benchmarks/throughput.py                # everything, full size
    python3 benchmarks/throughput.py --count-scale 0.1 --scenarios publish,consume \\
        --libraries txpika,pika-twisted --json out.json
    python3 benchmarks/throughput.py --profile      # also cProfile txpika in each scenario
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

from _harness import (
    HERE,
    ROOT,
    VENV,
    VENV_PYTHON,
    byte_compile_txpika,
    enter_venv,
    fmt,
    install_peers,
    parse_arguments,
    print_profile,
    scaled,
    txpika_revision,
)

TXAMQP_REQUIREMENT = "txAMQP3==0.9.4"

LIBRARIES = ["txpika", "pika-twisted", "txamqp", "aio-pika", "twisted-floor"]
MODULES = {
    "txpika": "run_txpika",
    "pika-twisted": "run_pika_twisted",
    "txamqp": "run_txamqp",
    "aio-pika": "run_aiopika",
    "twisted-floor": "run_floor",
}
SCENARIOS = ["publish", "publish-confirm", "consume", "rpc", "big"]
#: pairs that are not run (shown as n/a): the floor is a reference for the rpc scenario only
UNSUPPORTED = {("twisted-floor", scenario): "reference row for rpc only"
               for scenario in SCENARIOS if scenario != "rpc"}
#: scenario -> (count at scale 1, body size, window, prefetch)
SIZES = {
    "publish": (50_000, 128, 0, 0),
    "publish-confirm": (50_000, 128, 1000, 0),
    "consume": (50_000, 128, 0, 1000),
    "rpc": (2_000, 128, 0, 0),
    "big": (200, 4 * 1024 * 1024, 10, 10),
}
RSS_TARGET_MB = 100.0


# -- the child side ---------------------------------------------------------------------------


def child_main(raw: str) -> None:
    # txpika from this checkout, or from --txpika-path (to compare a modified copy)
    sys.path.insert(0, os.environ.get("TXPIKA_BENCH_PATH") or str(ROOT))
    sys.path.insert(0, str(HERE))  # the peers package
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


def rpc_server_main(raw: str) -> None:
    """The RPC server of the rpc scenario: echo each request to its ``reply_to``."""
    import pika

    cfg = json.loads(raw)
    signal.alarm(int(cfg["lifetime"]))  # bounded, whatever happens to the parent
    params = pika.ConnectionParameters(
        host=cfg["host"], port=cfg["port"], virtual_host=cfg["vhost"],
        credentials=pika.PlainCredentials(cfg["user"], cfg["password"]))
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare(cfg["queue"], auto_delete=True)
    ch.basic_qos(prefetch_count=100)

    def on_request(channel: Any, method: Any, props: Any, body: bytes) -> None:
        channel.basic_publish("", props.reply_to, body,
                              pika.BasicProperties(correlation_id=props.correlation_id))

    ch.basic_consume(cfg["queue"], on_request, auto_ack=True)
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        ch.start_consuming()


# -- the parent side: broker administration (pika BlockingConnection) -----------------------


class Admin:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def _connect(self) -> Any:
        import pika

        a = self.args
        return pika.BlockingConnection(pika.ConnectionParameters(
            host=a.host, port=a.port, virtual_host=a.vhost, heartbeat=0,
            credentials=pika.PlainCredentials(a.user, a.password), blocked_connection_timeout=30))

    def declare(self, queue: str) -> None:
        conn = self._connect()
        try:
            conn.channel().queue_declare(queue, durable=False, auto_delete=False)
        finally:
            conn.close()

    def count(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) of ``queue``."""
        conn = self._connect()
        try:
            ok = conn.channel().queue_declare(queue, passive=True).method
            return ok.message_count, ok.consumer_count
        finally:
            conn.close()

    def delete(self, queue: str) -> None:
        with contextlib.suppress(Exception):
            conn = self._connect()
            try:
                conn.channel().queue_delete(queue)
            finally:
                conn.close()

    def prefill(self, queue: str, count: int, size: int) -> None:
        sys.path.insert(0, str(HERE))
        from peers._common import small_body

        conn = self._connect()
        try:
            ch = conn.channel()
            for i in range(count):
                ch.basic_publish("", queue, small_body(i, size))
        finally:
            conn.close()

    def wait_count(self, queue: str, want: int, limit: float) -> int:
        """Poll until ``queue`` holds ``want`` messages (or ``limit`` seconds pass)."""
        deadline = time.monotonic() + limit
        while True:
            have, consumers = self.count(queue)
            if (have == want and consumers == 0) or time.monotonic() > deadline:
                return have
            time.sleep(0.2)


# -- the parent side: running children ---------------------------------------------------------


def run_child(args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    """Run one child; its RESULT line as a dict, or {"status": "TIMEOUT"/"ERROR", ...}."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(params)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True)
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


def start_rpc_server(args: argparse.Namespace, queue: str) -> subprocess.Popen[bytes]:
    cfg = {"host": args.host, "port": args.port, "vhost": args.vhost, "user": args.user,
           "password": args.password, "queue": queue, "lifetime": args.timeout + 30}
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--rpc-server", json.dumps(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout=20) or proc.stdout.readline().strip() != b"ready":
        stop_process(proc)
        raise RuntimeError("the RPC server did not start")
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_one(args: argparse.Namespace, admin: Admin, library: str, scenario: str,
            profile: str = "") -> dict[str, Any]:
    base_count, size, window, prefetch = SIZES[scenario]
    count = scaled(base_count, args.count_scale)
    if scenario == "big" and args.big_count:
        count = args.big_count
    row: dict[str, Any] = {"scenario": scenario, "library": library, "count": count,
                           "size": size}
    if (library, scenario) in UNSUPPORTED:
        row.update(status="n/a", note=UNSUPPORTED[(library, scenario)])
        return row
    queue = f"txpika-bench-{scenario}-{library}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    row["queue"] = queue
    params: dict[str, Any] = {
        "library": library, "scenario": scenario, "host": args.host, "port": args.port,
        "user": args.user, "password": args.password, "vhost": args.vhost, "queue": queue,
        "count": count, "size": size, "window": window or 1000, "prefetch": prefetch or 1000,
        "stall": args.stall, "profile": profile, "rpc_queue": "",
    }
    server = None
    try:
        if scenario == "rpc":
            params["rpc_queue"] = queue
            server = start_rpc_server(args, queue)
        else:
            admin.declare(queue)
        if scenario == "consume":
            admin.prefill(queue, count, size)
            have = admin.wait_count(queue, count, 30)
            if have != count:
                raise RuntimeError(f"pre-fill: the queue holds {have} of {count}")
        result = run_child(args, params)
        row.update(result)
        if "status" not in row:
            row["status"], row["note"] = check(admin, scenario, count, queue, row)
            if library == "twisted-floor" and row["status"] == "ok":
                row["note"] = "reference: replies not checked"
    except Exception as exc:
        row.update(status="ERROR", note=f"{type(exc).__name__}: {exc}")
    finally:
        if server is not None:
            stop_process(server)
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
    if scenario in ("publish", "publish-confirm"):
        if scenario == "publish-confirm" and (r.get("acked") != count or r.get("nacked")):
            problems.append(f"acked {r.get('acked')} nacked {r.get('nacked')} of {count}")
        have = admin.wait_count(queue, count, 30)
        if have != count:
            problems.append(f"queue holds {have} of {count}: lost {count - have}")
    elif scenario in ("consume", "big"):
        if scenario == "big" and (r.get("acked") != count or r.get("nacked")):
            problems.append(f"acked {r.get('acked')} nacked {r.get('nacked')} of {count}")
        if r.get("lost") or r.get("duplicates") or r.get("damaged"):
            problems.append(f"consumed {r.get('consumed')} of {count}: lost {r.get('lost')}, "
                            f"duplicated {r.get('duplicates')}, damaged {r.get('damaged')}")
        time.sleep(0.3)  # unacked deliveries return to the queue when the child's channel dies
        left = admin.wait_count(queue, 0, 10)
        if left:
            problems.append(f"{left} messages left in the queue (not acked)")
    elif scenario == "rpc" and (r.get("round_trips") != count or r.get("bad_replies")):
        problems.append(f"{r.get('round_trips')} of {count} round trips, "
                        f"{r.get('bad_replies')} bad replies")
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
    row["peak_rss_mb"] = row["maxrss_kb"] / 1024.0
    row["base_rss_mb"] = row["base_rss_kb"] / 1024.0


def pick(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the repeats of a pair: a failure if any repeat failed (failures are
    never hidden by a better repeat), else the repeat with the least CPU per message (an
    n/a pair stays n/a)."""
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
    best["all_msgs_per_s"] = [r.get("msgs_per_s") for r in attempts]
    return best


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("scenario", "library", "msgs/s", "CPU us/msg", "CPU %", "peak RSS MB",
              "RSS@start", "p50 us", "p99 us", "check")
    lines = [header]
    for r in rows:
        cpu_pct = None
        if r.get("wall"):
            cpu_pct = (r["cpu_user"] + r["cpu_sys"]) / r["wall"] * 100
        check_text = r.get("status", "?") + (f" ({r['note']})" if r.get("note") else "")
        lines.append((
            r["scenario"], r["library"], fmt(r.get("msgs_per_s"), ",.0f"),
            fmt(r.get("cpu_us_per_msg"), ",.1f"), fmt(cpu_pct, ".0f"),
            fmt(r.get("peak_rss_mb"), ".1f"), fmt(r.get("base_rss_mb"), ".1f"),
            fmt(r.get("p50_us"), ",.0f") if r["scenario"] == "rpc" else "",
            fmt(r.get("p99_us"), ",.0f") if r["scenario"] == "rpc" else "",
            check_text,
        ))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header) - 1)]
    for n, line in enumerate(lines):
        cells = [str(c).rjust(w) if i >= 2 else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(line[:-1], widths, strict=True))]
        print("  ".join(cells) + "  " + str(line[-1]))
        if n == 0:
            print("-" * (sum(widths) + 2 * len(widths) + 10))


def print_targets(rows: list[dict[str, Any]]) -> None:
    """txpika's CPU per message against the targets: <= half of pika's Twisted adapter's,
    below aio-pika's; and peak RSS under 100 MB in the big-message scenario. Then the rpc
    floor (twisted-floor), for reference: never a target, never a failure."""
    by = {(r["scenario"], r["library"]): r for r in rows}
    has_txpika = any(r["library"] == "txpika" for r in rows)
    if has_txpika:
        print_txpika_targets(rows, by)
    floor = by.get(("rpc", "twisted-floor"))
    if floor is not None:
        if not has_txpika:
            print("\nReference (not a target):")
        print_floor(floor, by)


def print_floor(floor: dict[str, Any], by: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The bare Twisted client's CPU per rpc round trip, next to pika-twisted's and
    txpika's."""
    cpu = floor.get("cpu_us_per_msg")
    if floor.get("status") != "ok" or cpu is None:
        print(f"  rpc floor (bare Twisted client): no figure ({floor.get('status')}"
              + (f": {floor['note']}" if floor.get("note") else "") + ")")
        return
    parts = []
    pika = by.get(("rpc", "pika-twisted"), {}).get("cpu_us_per_msg")
    if pika:
        parts.append(f" = {cpu / pika:.2f} x pika-twisted")
    tx = by.get(("rpc", "txpika"), {}).get("cpu_us_per_msg")
    if tx:
        parts.append(f"; txpika = {tx / cpu:.2f} x the floor")
    print(f"  rpc floor (bare Twisted client): {cpu:,.1f} us/msg" + "".join(parts))


def print_txpika_targets(rows: list[dict[str, Any]],
                         by: dict[tuple[str, str], dict[str, Any]]) -> None:
    print("\nTargets for txpika (CPU per message: <= 0.5 x pika-twisted and < aio-pika):")
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        tx = by.get((scenario, "txpika"), {}).get("cpu_us_per_msg")
        if tx is None:
            continue
        parts = []
        for peer, limit in (("pika-twisted", 0.5), ("aio-pika", 1.0)):
            other = by.get((scenario, peer), {}).get("cpu_us_per_msg")
            if other:
                ratio = tx / other
                verdict = "met" if ratio <= limit else "MISSED"
                parts.append(f"{ratio:.2f} x {peer} ({verdict})")
        if scenario == "big":
            rss = by[(scenario, "txpika")].get("peak_rss_mb")
            if rss is not None:
                parts.append(f"peak RSS {rss:.1f} MB "
                             f"({'met' if rss < RSS_TARGET_MB else 'MISSED'}: < {RSS_TARGET_MB:g})")
        print(f"  {scenario:16s} " + (", ".join(parts) if parts else "no peer to compare"))


# -- main -----------------------------------------------------------------------------------------


def setup_venv() -> None:
    install_peers()
    # txAMQP3 pins Twisted~=23.10 (it runs on newer ones): without --no-deps pip would
    # downgrade the Twisted that txpika and pika's adapter are measured on.
    print(f"installing {TXAMQP_REQUIREMENT} (--no-deps) into {VENV}")
    subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "-q", "--no-deps",
                    TXAMQP_REQUIREMENT], check=True)


def library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for dist in ("Twisted", "pika", "txAMQP3", "aio-pika", "aiormq"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return versions


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
        return
    if len(sys.argv) >= 3 and sys.argv[1] == "--rpc-server":
        rpc_server_main(sys.argv[2])
        return
    args = parse_arguments(__doc__, SCENARIOS, LIBRARIES,
                           "messages in the big scenario (default 200 x --count-scale)")
    enter_venv(args, __file__, setup_venv)

    versions = library_versions()
    versions["txpika"] = txpika_revision()
    if args.txpika_path:
        os.environ["TXPIKA_BENCH_PATH"] = os.path.abspath(args.txpika_path)
        versions["txpika"] = f"from {os.environ['TXPIKA_BENCH_PATH']}"
    byte_compile_txpika(args.txpika_path)
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
                print(f"  {scenario:16s} {library:13s} {row.get('status')} "
                      f"{fmt(row.get('msgs_per_s'), ',.0f')} msg/s "
                      f"{fmt(row.get('cpu_us_per_msg'), ',.1f')} us/msg "
                      f"{fmt(row.get('peak_rss_mb'), '.1f')} MB "
                      f"({time.monotonic() - t0:.1f} s) {row.get('note', '')}", flush=True)
                for line in row.get("stderr_tail", []) if row.get("status") != "ok" else []:
                    print(f"      | {line}")
    rows = [pick(attempts) for attempts in runs.values()]
    print()
    print_table(rows)
    if "txpika" in args.libraries or "twisted-floor" in args.libraries:
        print_targets(rows)

    profiles: dict[str, str] = {}
    if args.profile and "txpika" in args.libraries:
        directory = args.profile_dir or tempfile.mkdtemp(prefix="txpika-bench-prof-")
        os.makedirs(directory, exist_ok=True)
        print(f"\ncProfile of txpika (timed part only; stats in {directory}):")
        for scenario in args.scenarios:
            path = os.path.join(directory, f"txpika-{scenario}.pstats")
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
