"""The one table the benchmarks print, its rows, and its JSON form.

A `Row` holds one measured figure with its unit, the baseline measured in the same run where one
applies (the raw limit: rows through the bare driver; for HTTP, GET /v1/health on the same server),
the ratio to that baseline, the target in the words of DESIGN.md, and whether the figure meets it
(`None` when no target applies to the figure). The ratio is the module's to define and its row's
note says which: bulk ingestion gives the median of per-batch ratios (each batch timed beside its
own raw write), which is not value / baseline of the summed rates shown beside it; the other rows
give value / baseline. A row measured at a smaller size than its target's (`scaled`, a quick run)
still carries a verdict, printed with a `*`: it is indicative only.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
from fractions import Fraction
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
    """Nearest-rank percentile: the smallest value with at least `fraction` of the values at or below
    it, the ceil(fraction * n)-th smallest (p99 of 100 samples is the 99th, of 200 the 198th). The
    fraction is read from its decimal text, so that binary noise (0.07 * 100 is 7.000000000000001)
    does not move the rank up by one."""
    assert values and 0 < fraction <= 1, (len(values), fraction)
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(Fraction(str(fraction)) * len(ordered))))
    return ordered[rank - 1]


def scale_note(size: int, target_size: int, unit: str) -> tuple[str, bool]:
    """Where a figure was measured ("at 146,000 lines") and whether that is scaled down: under 80% of
    the target's size, where the verdict is indicative (`Row.scaled`)."""
    scaled = size < target_size * 0.8
    return (f"at {size:,} {unit}" + (f" (scaled down; target is for {target_size:,})" if scaled else "")), scaled


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
