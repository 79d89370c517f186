"""The one table the benchmarks print, its rows, and its JSON form.

A `Row` holds one measured figure with its unit, the raw baseline measured in the same run where
one applies (the same rows through the bare driver), the ratio value/baseline, the target in the
words of DESIGN.md, and whether the figure meets it (`None` when the target does not apply to
what was measured, e.g. a quick run at a scaled-down size).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import NamedTuple, Sequence


class Row(NamedTuple):
    metric: str
    engine: str
    value: float | None
    unit: str
    target: str
    ok: bool | None
    baseline: float | None = None
    ratio: float | None = None
    ratio_target: str = ""
    ratio_ok: bool | None = None
    note: str = ""
    scaled: bool = False  # measured at a smaller size than the target's: the verdict is indicative


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples is the 198th smallest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "%":
        return f"{value:.0%}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _verdict(ok: bool | None, scaled: bool = False) -> str:
    return {True: "ok", False: "MISS", None: "n/a"}[ok] + ("*" if scaled and ok is not None else "")


def format_table(rows: Sequence[Row]) -> str:
    headers = ("metric", "engine", "value", "unit", "target", "", "raw baseline", "ratio", "ratio target", "", "note")
    body = [(row.metric, row.engine, _number(row.value, row.unit), row.unit, row.target, _verdict(row.ok, row.scaled),
             _number(row.baseline, row.unit), "-" if row.ratio is None else f"{row.ratio:.0%}", row.ratio_target or "-",
             _verdict(row.ratio_ok) if row.ratio_target else "", row.note) for row in rows]
    widths = [max(len(str(line[i])) for line in (headers, *body)) for i in range(len(headers))]
    right = {2, 6, 7}

    def render(line) -> str:
        cells = [str(cell).rjust(widths[i]) if i in right else str(cell).ljust(widths[i]) for i, cell in enumerate(line)]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(headers), rule, *(render(line) for line in body)])


def machine_facts(server_versions: Sequence[str]) -> dict:
    import sqlite3

    facts = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "load_average_1m": os.getloadavg()[0],
    }
    for version in server_versions:
        if version.startswith("PostgreSQL"):
            facts["postgresql"] = version.split(" ", 1)[1]
    return facts


def format_facts(facts: dict) -> str:
    postgres = facts.get("postgresql", "not run")
    return (f"machine: {facts['cores']} cores, Python {facts['python']}, SQLite {facts['sqlite']}, "
            f"PostgreSQL {postgres}, {facts['platform']}; load average at start {facts['load_average_1m']:.2f}")


def write_json(directory: Path, facts: dict, mode: str, rows: Sequence[Row], stamp: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bench-{mode}-{stamp}.json"
    path.write_text(json.dumps({"facts": facts, "mode": mode, "argv": sys.argv[1:],
                                "rows": [row._asdict() for row in rows]}, indent=2) + "\n")
    return path
