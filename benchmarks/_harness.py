"""What benchmarks/throughput.py and benchmarks/blocking.py share: paths, the command line,
running under benchmarks/.venv, and small formatting helpers."""

from __future__ import annotations

import argparse
import os
import pstats
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
REQUIREMENTS = HERE / "requirements-peers.txt"


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def csv(value: str, allowed: list[str]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    for item in items:
        if item not in allowed:
            raise argparse.ArgumentTypeError(f"{item!r} is not one of {', '.join(allowed)}")
    return items


def scaled(count: int, scale: float) -> int:
    return max(1, round(count * scale))


def fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def txpika_revision() -> str:
    """The checkout's commit, with "+dirty" when txpika/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "txpika"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{'+dirty' if dirty else ''}"


def byte_compile_txpika(tree: str | None) -> None:
    """Write the byte code of txpika's modules (in ``tree``, default this checkout) into its
    ``__pycache__``, as pip does for the peers when it installs them. Without it, a machine
    that sets PYTHONDONTWRITEBYTECODE compiles txpika's sources in every child, and the
    compiler's transient memory (about 9 MB for the generated spec module) lands in
    txpika's RSS. (blocking.py gets the same from its PYTHONPYCACHEPREFIX warm-up.)"""
    import compileall

    compileall.compile_dir(str(Path(tree or ROOT) / "txpika"), quiet=2)


def parse_arguments(doc: str, scenarios: list[str], libraries: list[str],
                    big_help: str) -> argparse.Namespace:
    """The command line both benchmarks take."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Scenarios: " + ", ".join(scenarios) + ". Libraries: " + ", ".join(libraries))
    parser.add_argument("--setup", action="store_true",
                        help="create benchmarks/.venv and install requirements-peers.txt")
    parser.add_argument("--scenarios", type=lambda v: csv(v, scenarios), default=scenarios,
                        help="comma-separated scenarios (default: all)")
    parser.add_argument("--libraries", type=lambda v: csv(v, libraries), default=libraries,
                        help="comma-separated libraries (default: all)")
    parser.add_argument("--count-scale", type=float, default=1.0,
                        help="multiply every message count (e.g. 0.1 for a quick run)")
    parser.add_argument("--big-count", type=int, default=0, help=big_help)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every pair N times (passes interleaved) and keep the run "
                             "with the least CPU per message; any failed run is reported")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    parser.add_argument("--profile", action="store_true",
                        help="after measuring, run txpika once more per scenario under cProfile "
                             "and print its hot spots (the table shows unprofiled runs)")
    parser.add_argument("--profile-dir", default="",
                        help="keep the .pstats files there (default: a temporary directory)")
    parser.add_argument("--top", type=int, default=18, help="profile lines per listing")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds before a child is killed and reported TIMEOUT")
    parser.add_argument("--stall", type=float, default=20.0,
                        help="seconds without progress before a child gives up (FAIL)")
    parser.add_argument("--txpika-path", metavar="DIR", default="",
                        help="import txpika from DIR/txpika instead of this checkout")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument("--user", default="guest")
    parser.add_argument("--password", default="guest")
    parser.add_argument("--vhost", default="/")
    parser.add_argument("--no-reexec", action="store_true",
                        help="do not re-run under benchmarks/.venv")
    return parser.parse_args()


def enter_venv(args: argparse.Namespace, script: str, setup_venv: Callable[[], None]) -> None:
    """Run ``--setup`` if asked, then re-run ``script`` under benchmarks/.venv (where the
    peers are installed) unless already there."""
    if args.setup:
        setup_venv()
    if not args.no_reexec and not in_venv():
        if not VENV_PYTHON.exists():
            sys.exit(f"benchmarks/.venv is missing: run `python3 benchmarks/{Path(script).name}"
                     " --setup` first (see benchmarks/README.rst)")
        argv = [a for a in sys.argv[1:] if a != "--setup"]
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(script).resolve()),
                                    "--no-reexec", *argv])


def install_peers() -> None:
    """Create benchmarks/.venv if needed and install requirements-peers.txt into it."""
    if not VENV_PYTHON.exists():
        print(f"creating {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print(f"installing {REQUIREMENTS.name} into {VENV}")
    subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                   check=True)


def print_profile(path: str, top: int) -> None:
    stats = pstats.Stats(path)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in entries.values())
    if not total:
        print("    (empty profile)")
        return

    def where(key: tuple[str, int, str]) -> str:
        filename, line, name = key
        short = filename
        for marker in ("/txpika/", "/site-packages/", "/lib/python3"):
            if marker in filename:
                short = filename.split(marker, 1)[1]
                if marker == "/txpika/":
                    short = "txpika/" + short
                break
        return f"{short}:{line}({name})"

    rows = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)
    own = [(k, v) for k, v in rows if "/txpika/" in k[0]]
    tx_total = sum(v[2] for _, v in own)
    print(f"    profiled CPU (cProfile, process time) {total:.3f} s, of it in txpika's own "
          f"code (tottime) {tx_total:.3f} s ({tx_total / total * 100:.0f}%)")
    print(f"    top {top} by own time, all code:")
    for key, (_cc, nc, tt, ct, _callers) in rows[:top]:
        print(f"      {tt / total * 100:5.1f}%  {tt:7.3f}s own {ct:7.3f}s cum  {nc:9,d} calls  "
              f"{where(key)}")
    print(f"    top {top} in txpika, by own time:")
    for key, (_cc, nc, tt, ct, _callers) in own[:top]:
        print(f"      {tt / total * 100:5.1f}%  {tt:7.3f}s own {ct:7.3f}s cum  {nc:9,d} calls  "
              f"{where(key)}")
    by_cum = sorted(own, key=lambda kv: kv[1][3], reverse=True)[:top]
    print(f"    top {top} in txpika, by cumulative time:")
    for key, (_cc, nc, _tt, ct, _callers) in by_cum:
        print(f"      {ct / total * 100:5.1f}%  {ct:7.3f}s cum  {nc:9,d} calls  {where(key)}")
