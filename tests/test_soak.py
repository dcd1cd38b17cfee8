"""``tools/soak.py --quick``: the soak tool's own check, in CI (the full soaks are not).

It runs the private-node modes small (3 restarts under load, 15 s of proxy cuts and black
holes, 50,000 messages through ``twistd txpika`` with its RSS sampled) and must report
nothing lost, nothing failed, and memory that did not grow; the RSS curve is a CSV file.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.private_broker, pytest.mark.slow]


def test_soak_quick_loses_nothing(tmp_path: Path) -> None:
    curve = tmp_path / "rss.csv"
    try:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "soak.py"), "--quick", "--csv", str(curve)],
            cwd=str(tmp_path), stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=110, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        pytest.fail(f"soak --quick ran over 110 s:\n"
                    f"{out.decode(errors='replace') if isinstance(out, bytes) else out}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # The summary: one line per mode, as printed at the end.
    summary = {line.split(":")[0]: line for line in proc.stdout.splitlines()
               if re.match(r"^(restarts|chaos|memory): ", line)}
    assert set(summary) == {"restarts", "chaos", "memory"}, output
    for mode, line in summary.items():
        assert f"{mode}: OK: " in line and " 0 lost, " in line and " 0 failed, " in line, line
        published = int(re.search(r"OK: (\d+) published", line).group(1))  # type: ignore[union-attr]
        assert published >= 1000, line
    assert " 3 recoveries," in summary["restarts"], summary["restarts"]
    assert "50000 published" in summary["memory"]

    with curve.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 5
    assert all(int(row["rss_kib"]) > 10_000 for row in rows)  # a Python process, sampled
    assert int(rows[-1]["handled"]) >= 50_000
