"""Metric 2: `revshare import` of an NDJSON file, as a user runs it: a subprocess, wall time and peak RSS.

The file holds paid invoices, one in twenty followed later by a partial refund (so the import also
claws back and ends holds). The command runs under a small wrapper process whose only child it is,
so the wrapper's `RUSAGE_CHILDREN` peak RSS is the command's own.

Memory is constant when the peak does not grow with the file. The peak rises over an import's first
thousands of events whatever the file's length, as SQLite's page cache (`ledger.db.SQLITE_CACHE_KIB`,
32 MB a connection) and the process's bounded state fill: on SQLite with the quick run's program
(200 partners, 20,000 customers), 83 MB at 1,950 events, 102 MB at 5,000, 111 MB at 10,000, then
123 MB at 20,000 and 128 MB at 40,000 (separate imports of files of those sizes); the full runs'
import of 1M events peaked at 128-130 MB. Two peaks taken before that filling ends would read as
growth. So the peak is also read within the one import, when the command has read the file past its
first `settled_events()` events (a tenth of the file, and never fewer than `SETTLED_EVENTS`, past
the filling): the wrapper samples, every `POLL_S`, the command's read position in the file (Linux's
/proc/<pid>/fdinfo) and its peak RSS so far (VmHWM in /proc/<pid>/status). The importer reads a
batch (5,000 events) before it writes it, so that peak is of at least the events before the last
batch read. The memory is constant when the whole file's peak is within `GROWTH_FRACTION_MAX` of
that peak plus `GROWTH_MB_MAX`. What that can see depends on how many more events the file holds
past that point: the quick run (20,000 more) only a growth above about 1 KB an event, the full run
(900,000 more) one above about 25 bytes an event. The verdict requires both: under `RSS_MB_MAX` and
constant (unknown, and no verdict, where /proc is not there to sample). A quick run's rows are
marked as measured at a smaller size than the target's 1M events (`*`).

The import's rate is compared with the raw limit the ingestion benchmark measured in the same run
(`ingestion.raw_events_per_s`): the rows of paid invoices written through the bare driver. The rows
differ in shape from the import's, and the row's note says how: the file also holds refunds, the
import writes into a book seeded alike but not warmed (its partners' accounts are made as it goes),
and its time is the subprocess's wall time, start-up included.
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
from bench.ingestion import RAW_RATIO_MIN
from bench.report import Row, scale_note

RSS_MB_MAX = 300
SETTLED_EVENTS = 20_000  # the peak has stopped rising by this many events (the docstring's figures)
GROWTH_FRACTION_MAX = 0.10
GROWTH_MB_MAX = 10
TARGET_EVENTS = 1_000_000
REFUND_EVERY = 20
REFUND_LAG_EVENTS = 1_000
IMPORT_TIMEOUT_S = 3 * 3600
REPO_ROOT = Path(__file__).resolve().parent.parent

POLL_S = 0.05
# Runs the command given after the file's path and the poll interval, then prints its wall time, the
# peak RSS of its process and, sampled meanwhile from /proc (absent elsewhere), the position the
# process had read the file to and its peak RSS then.
_WRAPPER = """
import json, os, resource, subprocess, sys, time
path, poll_s, command = os.path.realpath(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]

def sample(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            hwm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    return [int(next(line for line in info if line.startswith("pos:")).split()[1]), hwm_kb]
    except (OSError, StopIteration, ValueError):
        return None
    return None

started = time.perf_counter()
child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
samples = []
while child.poll() is None:
    taken = sample(child.pid)
    if taken is not None:
        samples.append(taken)
    time.sleep(poll_s)
elapsed = time.perf_counter() - started
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": child.returncode, "seconds": elapsed, "max_rss_kb": peak_kb, "samples": samples}))
"""


def event_data(event) -> dict:
    return {"id": event.id, "type": event.type, "customer_id": event.customer_id, "invoice_id": event.invoice_id,
            "amount": {"amount": format_minor(event.amount_minor, event.currency), "currency": event.currency},
            "occurred_at": format_instant(event.occurred_at_us)}


def write_file(path: Path, seeded: program.Program, event_count: int, *, prefix: str,
               mark_events: int) -> tuple[int, int]:
    """Write about `event_count` events (paid invoices and some refunds) as NDJSON; returns the count
    and the byte offset at which the first `mark_events` of them end."""
    paid_count = event_count * REFUND_EVERY // (REFUND_EVERY + 1)
    paid = program.paid_events(seeded, paid_count, month_offset=2, prefix=prefix)
    written, offset, mark = 0, 0, 0
    with path.open("wb") as out:
        for index, event in enumerate(paid):
            events = [event]
            refunded = index - REFUND_LAG_EVENTS
            if refunded >= 0 and refunded % REFUND_EVERY == 0:
                original = paid[refunded]
                events.append(original._replace(id=f"{original.id}-refund", type="refund",
                                                amount_minor=max(1, original.amount_minor // 4),
                                                occurred_at_us=event.occurred_at_us))
            for each in events:
                line = (json.dumps(event_data(each)) + "\n").encode("utf-8")
                out.write(line)
                written, offset = written + 1, offset + len(line)
                mark = offset if written == mark_events else mark
    return written, mark


def revshare_command() -> list[str]:
    script = Path(sys.executable).parent / "revshare"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]


def run_import(url: str, path: Path) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REVSHARE_")}
    environment.update(REVSHARE_DATABASE_URL=url, REVSHARE_LOG_LEVEL="WARNING")
    result = subprocess.run([sys.executable, "-c", _WRAPPER, str(path), str(POLL_S), *revshare_command(), "import",
                             str(path)],
                            capture_output=True, text=True, env=environment, cwd=REPO_ROOT, timeout=IMPORT_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["code"] == 0, f"revshare import exited {outcome['code']}"
    return outcome


def settled_events(event_count: int) -> int:
    """Where the peak is first read: a tenth of the file, and no fewer than SETTLED_EVENTS events."""
    assert event_count >= 2 * SETTLED_EVENTS, f"{event_count:,} events leave no room past {SETTLED_EVENTS:,}"
    return max(event_count // 10, SETTLED_EVENTS)


def peak_when_read_kb(samples: list[list[int]], offset: int) -> int | None:
    """The process's peak RSS when it had first read the file past `offset` bytes as it applied it
    (None when no sample shows it there: no /proc, or the file read faster than the polling). The
    import reads the file through once before it applies it (`ledger.importer._first_places`): its
    applying starts where the position sampled drops back."""
    applying = next((index for index in range(1, len(samples)) if samples[index][0] < samples[index - 1][0]), 0)
    return next((hwm_kb for position, hwm_kb in samples[applying:] if position >= offset), None)


def measure(site, directory: Path, partner_count: int, customer_count: int, event_count: int) -> dict:
    """Import the file into a seeded database, with the peak RSS when its first `settled_events`
    were read."""
    from ledger.db import Database

    url = site.new("import")
    database = Database(url)
    with database.transaction() as session:
        seeded = program.seed(session, partner_count, customer_count)
    database.dispose()
    path = directory / "events.ndjson"
    written, mark = write_file(path, seeded, event_count, prefix="imp", mark_events=settled_events(event_count))
    outcome = run_import(url, path)
    path.unlink()
    site.drop(url)
    return {"events": written, "seconds": outcome["seconds"], "max_rss_kb": outcome["max_rss_kb"],
            "settled_events": settled_events(event_count),
            "settled_rss_kb": peak_when_read_kb(outcome["samples"], mark)}


def constant(results: dict) -> bool | None:
    """Whether the whole file's peak RSS is within the allowed growth of the peak when the first
    `settled_events` were read (None when that was not sampled)."""
    if results["settled_rss_kb"] is None:
        return None
    full_mb, settled_mb = results["max_rss_kb"] / 1024, results["settled_rss_kb"] / 1024
    return full_mb <= settled_mb * (1 + GROWTH_FRACTION_MAX) + GROWTH_MB_MAX


def rows_for(engine_name: str, results: dict, *, quick: bool, raw_events_per_s: float | None) -> list[Row]:
    rate = results["events"] / results["seconds"]
    rss_mb = results["max_rss_kb"] / 1024
    where, scaled = scale_note(results["events"], TARGET_EVENTS, "events")
    flat = constant(results)
    if raw_events_per_s is None:
        ratio, ratio_ok, against = None, None, "no raw limit: the ingestion benchmark did not run"
    else:
        ratio = rate / raw_events_per_s
        ratio_ok = ratio >= RAW_RATIO_MIN
        against = ("ratio to the ingestion's raw limit in this run, whose rows differ in shape: paid invoices "
                   "only, on a warmed book")
    if flat is None:
        growth = f"not sampled when {results['settled_events']:,} events were read: constancy unknown"
    else:
        growth = (f"{results['settled_rss_kb'] / 1024:.0f} MB when {results['settled_events']:,} events were read: "
                  f"{'constant' if flat else 'GROWS with the file'} (within {GROWTH_FRACTION_MAX:.0%} + "
                  f"{GROWTH_MB_MAX} MB of it)")
    return [
        Row(f"import: revshare import NDJSON ({where})", engine_name, rate, "events/s", "-", None,
            raw_events_per_s, ratio, f">= {RAW_RATIO_MIN:.0%}" if ratio is not None else "", ratio_ok,
            note=f"~5% refunds, subprocess wall time incl. start-up; {against}", scaled=scaled),
        Row(f"import: peak RSS ({where})", engine_name, rss_mb, "MB", f"< {RSS_MB_MAX} MB, constant",
            False if rss_mb >= RSS_MB_MAX else flat, scaled=scaled, note=growth),
    ]
