"""Reporting for throughput.py and daemon.py: per-message figures of a child's raw numbers,
the pick among repeats, the results table, and the targets table (txpika's CPU per message,
the reference's, their ratio, the target, met or MISSED)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from _harness import fmt


def derive(row: dict[str, Any]) -> None:
    """Per-message figures from a child's raw numbers (``count`` messages, ``wall`` and
    ``cpu_user`` + ``cpu_sys`` seconds, ``maxrss_kb``, ``base_rss_kb``)."""
    if "wall" not in row or not row.get("measured"):
        return
    count = row.get("measured_count", row["count"])
    cpu = row["cpu_user"] + row["cpu_sys"]
    row["msgs_per_s"] = count / row["wall"] if row["wall"] else 0.0
    row["cpu_us_per_msg"] = cpu / count * 1e6 if count else None
    if "maxrss_kb" in row:
        row["peak_rss_mb"] = row["maxrss_kb"] / 1024.0
    if "base_rss_kb" in row:
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
    best = dict(min(attempts, key=lambda r: r.get("cpu_us_per_msg") or float("inf")))
    best["repeats"] = len(attempts)
    best["all_cpu_us_per_msg"] = [r.get("cpu_us_per_msg") for r in attempts]
    best["all_msgs_per_s"] = [r.get("msgs_per_s") for r in attempts]
    return best


def print_table(rows: list[dict[str, Any]], latency_scenarios: tuple[str, ...] = ("rpc",)
                ) -> None:
    header = ("scenario", "library", "msgs/s", "CPU us/msg", "CPU %", "peak RSS MB",
              "RSS@start", "p50 us", "p99 us", "check")
    lines = [header]
    for r in rows:
        cpu_pct = None
        if r.get("wall"):
            cpu_pct = (r["cpu_user"] + r["cpu_sys"]) / r["wall"] * 100
        check_text = r.get("status", "?") + (f" ({r['note']})" if r.get("note") else "")
        latency = r["scenario"] in latency_scenarios
        lines.append((
            r["scenario"], r["library"], fmt(r.get("msgs_per_s"), ",.0f"),
            fmt(r.get("cpu_us_per_msg"), ",.1f"), fmt(cpu_pct, ".0f"),
            fmt(r.get("peak_rss_mb"), ".1f"), fmt(r.get("base_rss_mb"), ".1f"),
            fmt(r.get("p50_us"), ",.0f") if latency else "",
            fmt(r.get("p99_us"), ",.0f") if latency else "",
            check_text,
        ))
    print_columns(lines, left=2)


def print_columns(lines: list[tuple[Any, ...]], left: int) -> None:
    """A table: the first ``left`` columns left-aligned, the rest right-aligned, the last
    one (free text) as it is; a rule under the header."""
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]) - 1)]
    for n, line in enumerate(lines):
        cells = [str(c).rjust(w) if i >= left else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(line[:-1], widths, strict=True))]
        print("  ".join(cells) + "  " + str(line[-1]))
        if n == 0:
            print("-" * (sum(widths) + 2 * len(widths) + 10))


@dataclass(frozen=True)
class Target:
    """txpika's CPU per message in ``scenario`` at most ``limit`` x ``reference``'s in
    ``reference_scenario`` (the same scenario when empty)."""

    scenario: str
    reference: str
    limit: float
    reference_scenario: str = ""
    source: str = ""  # where the target comes from, e.g. "#10"
    subject: str = "txpika"


def target_lines(targets: list[Target], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with the figures of this run: a dict per target whose rows exist (a
    target with a missing or failed row says so instead of a ratio)."""
    by = {(r["scenario"], r["library"]): r for r in rows}
    lines = []
    for t in targets:
        mine = by.get((t.scenario, t.subject))
        ref = by.get((t.reference_scenario or t.scenario, t.reference))
        if mine is None or ref is None or ref.get("status") == "n/a":
            continue
        tx, other = mine.get("cpu_us_per_msg"), ref.get("cpu_us_per_msg")
        line: dict[str, Any] = {
            "scenario": t.scenario, "subject": t.subject, "reference": t.reference,
            "reference_scenario": t.reference_scenario or t.scenario, "limit": t.limit,
            "source": t.source, "txpika_cpu_us": tx, "reference_cpu_us": other,
            "ratio": None, "verdict": "no figure",
        }
        if mine.get("status") != "ok" or ref.get("status") != "ok" or not tx or not other:
            line["verdict"] = (f"no figure ({t.subject} {mine.get('status')}, "
                               f"{t.reference} {ref.get('status')})")
        else:
            line["ratio"] = tx / other
            line["verdict"] = "met" if line["ratio"] <= t.limit else "MISSED"
        lines.append(line)
    return lines


def print_targets_table(lines: list[dict[str, Any]], title: str) -> None:
    if not lines:
        return
    print(f"\n{title}")
    header = ("scenario", "reference", "txpika us", "ref us", "ratio", "target", "verdict")
    table: list[tuple[Any, ...]] = [header]
    for line in lines:
        reference = line["reference"]
        if line["reference_scenario"] != line["scenario"]:
            reference += f" ({line['reference_scenario']})"
        if line["subject"] != "txpika":
            reference = f"{line['subject']} vs {reference}"
        source = f" ({line['source']})" if line["source"] else ""
        table.append((
            line["scenario"], reference, fmt(line["txpika_cpu_us"], ",.1f"),
            fmt(line["reference_cpu_us"], ",.1f"), fmt(line["ratio"], ".2f"),
            f"<= {line['limit']:.2f}", line["verdict"] + source,
        ))
    print_columns(table, left=2)
