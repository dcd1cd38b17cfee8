"""The memory mode of tools/soak.py: many messages through ``twistd txpika``, RSS sampled.

A ``twistd -n txpika`` daemon (handler: tools/soak_handler.py) consumes a queue of a
private node while this process publishes ``messages`` numbered messages to it (confirmed,
at most 2000 unconfirmed and 50,000 not yet handled at a time). Every ``sample`` seconds
the daemon's resident set size (``VmRSS`` of /proc/PID/status) is recorded with the
number of messages handled so far. At the end the daemon gets SIGTERM; its handler's
counts show what was lost or duplicated.

The curve goes to a CSV file (``elapsed_s,handled,published,rss_kib``) and, if matplotlib
can be imported (``pip install matplotlib``: a dev extra, never a txpika dependency), to a
PNG plot. Memory counts as flat when, after the warm-up (the first ``warmup`` fraction of
the messages), the RSS never rises more than ``max_growth_mib`` above its value at the end
of the warm-up.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from soak_load import Result, sleep, until
from twisted.internet.task import LoopingCall

import txpika

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent


def twistd_command() -> list[str]:
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid`` in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _read_status(path: Path) -> tuple[int, int, int]:
    try:
        count, distinct, foreign = path.read_text().split()
        return int(count), int(distinct), int(foreign)
    except (OSError, ValueError):
        return 0, 0, 0


async def run_memory(reactor: Any, url: str, messages: int, csv_path: Path,
                     png_path: Path | None, *, warmup: float = 0.1, sample: float = 1.0,
                     max_growth_mib: float = 16.0) -> Result:
    result = Result("memory")
    work = Path(tempfile.mkdtemp(prefix="txpika-soak-"))
    status, log_path = work / "status", work / "twistd.log"
    queue = f"txpika-soak-memory-{uuid.uuid4().hex[:12]}"
    env = dict(os.environ, SOAK_EXPECTED=str(messages), SOAK_STATUS=str(status),
               PYTHONPATH=os.pathsep.join([str(TOOLS), str(ROOT)]))
    daemon = subprocess.Popen(
        [*twistd_command(), "-n", "--pidfile=", f"--logfile={log_path}", "txpika",
         "--url", url, "--queue", queue, "--handler", "soak_handler:handle", "--declare",
         "--prefetch", "200", "--concurrency", "20", "--heartbeat", "10"],
        env=env, cwd=str(work), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT)
    rows: list[tuple[float, int, int, int]] = []
    sent = confirmed = 0
    started = time.monotonic()

    def take_sample() -> None:
        rows.append((round(time.monotonic() - started, 2), _read_status(status)[0], sent,
                     rss_kib(daemon.pid)))

    sampler = LoopingCall(take_sample)
    sampler.clock = reactor
    conn = None
    try:
        def log() -> str:
            return log_path.read_text(errors="replace") if log_path.exists() else ""

        await until(reactor, lambda: f"consuming {queue!r}" in log() or daemon.poll()
                    is not None, 60, "the daemon consuming")
        if daemon.poll() is not None:
            raise RuntimeError(f"twistd exited with {daemon.returncode}:\n{log()[-3000:]}")
        sampler.start(sample, now=True)
        conn = await txpika.connect(reactor, url)
        channel = await conn.channel()
        await channel.confirm_select()

        def acked(_: object) -> None:
            nonlocal confirmed
            confirmed += 1

        failures: list[Any] = []
        handled = 0
        while sent < messages:
            if sent % 1000 == 0:
                handled = _read_status(status)[0]
            if sent - confirmed >= 2000 or sent - handled >= 50000:
                await sleep(reactor, 0.005)
                handled = _read_status(status)[0]
                continue
            for _ in range(min(500, messages - sent)):
                d = channel.basic_publish("", queue, str(sent).encode())
                d.addCallbacks(acked, failures.append)
                sent += 1
        await until(reactor, lambda: confirmed + len(failures) >= messages, 120,
                    "every publish confirmed")
        result.failed = len(failures)
        deadline = max(120.0, messages / 2000)
        await until(reactor, lambda: _read_status(status)[1] >= messages - len(failures),
                    deadline, "every message handled")
        take_sample()
    except (TimeoutError, RuntimeError) as exc:
        result.problems.append(str(exc))
    finally:
        if sampler.running:
            sampler.stop()
        if conn is not None and conn.is_open:
            await conn.close()
        result.seconds = time.monotonic() - started
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            await until(reactor, lambda: daemon.poll() is not None, 60, "twistd exiting")
    text = log_path.read_text(errors="replace")
    if daemon.returncode not in (0, -signal.SIGTERM):
        result.problems.append(f"twistd exited with {daemon.returncode}")
    for bad in ("Traceback", "Unhandled", "#critical"):
        if bad in text:
            result.problems.append(f"{bad!r} in the daemon's log ({log_path})")
    seen = (Path(f"{status}.seen").read_bytes() if Path(f"{status}.seen").exists()
            else b"")
    count, distinct, foreign = _read_status(status)
    result.published = sent
    result.consumed = count
    result.lost = messages - sum(1 for c in seen if c) if seen else messages - distinct
    result.duplicates = count - distinct
    result.foreign = foreign
    _analyse(result, rows, messages, warmup, max_growth_mib)
    _write_curve(rows, csv_path, png_path, result)
    return result


def _analyse(result: Result, rows: list[tuple[float, int, int, int]], messages: int,
             warmup: float, max_growth_mib: float) -> None:
    if not rows:
        result.problems.append("no RSS sample")
        return
    elapsed = rows[-1][0] or 1.0
    result.extra["msg/s"] = round(rows[-1][1] / elapsed)
    after = [row for row in rows if row[1] >= warmup * messages]
    if len(after) < 2:
        result.problems.append("too few RSS samples after the warm-up")
        return
    base = after[0][3]
    peak = max(row[3] for row in after)
    growth = (peak - base) / 1024
    # Least-squares slope of RSS over messages handled, after the warm-up.
    xs = [row[1] for row in after]
    ys = [row[3] for row in after]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs) or 1.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    result.extra.update({
        "rss at start MiB": round(rows[0][3] / 1024, 1),
        "rss after warm-up MiB": round(base / 1024, 1),
        "rss peak after warm-up MiB": round(peak / 1024, 1),
        "rss at end MiB": round(rows[-1][3] / 1024, 1),
        "growth after warm-up MiB": round(growth, 1),
        "slope KiB/100k msgs": round(slope * 100_000, 1),
        "samples": len(rows),
    })
    if growth > max_growth_mib:
        result.problems.append(f"RSS grew {growth:.1f} MiB after the warm-up "
                               f"(more than {max_growth_mib} MiB)")


def _write_curve(rows: list[tuple[float, int, int, int]], csv_path: Path,
                 png_path: Path | None, result: Result) -> None:
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["elapsed_s", "handled", "published", "rss_kib"])
        writer.writerows(rows)
    result.extra["csv"] = str(csv_path)
    if png_path is not None:
        result.extra["png"] = plot(rows, png_path)


def read_curve(csv_path: Path) -> list[tuple[float, int, int, int]]:
    """The rows of a CSV file that `run_memory` wrote."""
    with csv_path.open(newline="") as f:
        return [(float(r["elapsed_s"]), int(r["handled"]), int(r["published"]),
                 int(r["rss_kib"])) for r in csv.DictReader(f)]


def plot(rows: list[tuple[float, int, int, int]], png_path: Path) -> str:
    """Draw RSS over messages handled to ``png_path`` (with matplotlib); what was done."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "not drawn (matplotlib is not installed)"
    handled = [row[1] / 1000 for row in rows]
    rss = [row[3] / 1024 for row in rows]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.plot(handled, rss, lw=1.5, marker=".", markersize=3)
    ax.set_xlabel("messages handled (thousands)")
    ax.set_ylabel("RSS of twistd txpika (MiB)")
    ax.set_ylim(0, max(rss, default=1) * 1.25)
    ax.set_title(f"Consumer daemon memory over {max(row[1] for row in rows):,} messages "
                 f"({rows[-1][0]:.0f} s)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    plt.close(fig)
    return str(png_path)
