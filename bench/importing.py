"""Metric 2: `revshare import` of an NDJSON file, as a user runs it: a subprocess, wall time and peak RSS.

The file holds paid invoices, one in twenty followed later by a partial refund (so the import also
claws back and ends holds). The command runs under a small wrapper process whose only child it is,
so the wrapper's `RUSAGE_CHILDREN` peak RSS is the command's own. Memory is constant when the peak
does not grow with the file: the same import is run on a tenth of the file first, and both peaks
are shown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ledger.instants import format_instant
from ledger.money import format_minor

from bench import program
from bench.report import Row

RSS_MB_MAX = 300
REFUND_EVERY = 20
REFUND_LAG_EVENTS = 1_000
IMPORT_TIMEOUT_S = 3 * 3600
REPO_ROOT = Path(__file__).resolve().parent.parent

# Runs the command given as arguments, then prints its wall time and the peak RSS of its process.
_WRAPPER = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
elapsed = time.perf_counter() - started
print(json.dumps({"code": code, "seconds": elapsed, "max_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def event_data(event) -> dict:
    return {"id": event.id, "type": event.type, "customer_id": event.customer_id, "invoice_id": event.invoice_id,
            "amount": {"amount": format_minor(event.amount_minor, event.currency), "currency": event.currency},
            "occurred_at": format_instant(event.occurred_at_us)}


def write_file(path: Path, seeded: program.Program, event_count: int, *, prefix: str) -> int:
    """Write about `event_count` events (paid invoices and some refunds) as NDJSON; returns the count."""
    paid_count = event_count * REFUND_EVERY // (REFUND_EVERY + 1)
    paid = program.paid_events(seeded, paid_count, month_offset=2, prefix=prefix)
    written = 0
    with path.open("w", encoding="utf-8") as out:
        for index, event in enumerate(paid):
            out.write(json.dumps(event_data(event)) + "\n")
            written += 1
            refunded = index - REFUND_LAG_EVENTS
            if refunded >= 0 and refunded % REFUND_EVERY == 0:
                original = paid[refunded]
                refund = original._replace(id=f"{original.id}-refund", type="refund",
                                           amount_minor=max(1, original.amount_minor // 4),
                                           occurred_at_us=event.occurred_at_us)
                out.write(json.dumps(event_data(refund)) + "\n")
                written += 1
    return written


def revshare_command() -> list[str]:
    script = Path(sys.executable).parent / "revshare"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]


def run_import(url: str, path: Path) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REVSHARE_")}
    environment.update(REVSHARE_DATABASE_URL=url, REVSHARE_LOG_LEVEL="WARNING")
    result = subprocess.run([sys.executable, "-c", _WRAPPER, *revshare_command(), "import", str(path)],
                            capture_output=True, text=True, env=environment, cwd=REPO_ROOT, timeout=IMPORT_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["code"] == 0, f"revshare import exited {outcome['code']}"
    return outcome


def measure(site, directory: Path, partner_count: int, customer_count: int, event_count: int) -> dict:
    """Import a tenth of the file's size, then the whole, into two databases seeded alike."""
    from ledger.db import Database

    results = {}
    for label, count in (("tenth", max(1, event_count // 10)), ("full", event_count)):
        url = site.new("import")
        database = Database(url)
        with database.transaction() as session:
            seeded = program.seed(session, partner_count, customer_count)
        database.dispose()
        path = directory / f"events-{label}.ndjson"
        written = write_file(path, seeded, count, prefix=f"imp{label}")
        outcome = run_import(url, path)
        path.unlink()
        results[label] = {**outcome, "events": written}
        site.drop(url)
    return results


def rows_for(engine_name: str, results: dict, *, quick: bool) -> list[Row]:
    full, tenth = results["full"], results["tenth"]
    rate = full["events"] / full["seconds"]
    rss_mb, tenth_mb = full["max_rss_kb"] / 1024, tenth["max_rss_kb"] / 1024
    scale = f"{full['events']:,} events" + (" (quick; target file is 1M)" if quick else "")
    return [
        Row("import: revshare import NDJSON", engine_name, rate, "events/s", "-", None,
            note=f"{scale}, ~5% refunds, subprocess wall time incl. start-up"),
        Row("import: peak RSS", engine_name, rss_mb, "MB", f"< {RSS_MB_MAX} MB, constant", rss_mb < RSS_MB_MAX,
            note=f"{tenth_mb:.0f} MB importing {tenth['events']:,} events: "
                 f"{'constant' if rss_mb < tenth_mb * 1.25 + 10 else 'GROWS with the file'}"),
    ]
