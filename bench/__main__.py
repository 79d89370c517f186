"""`python -m bench [--quick] [--engine sqlite|postgres|both] [--only NAME ...] [--no-json]`: run the
benchmarks and print one table (see bench/__init__.py for what is measured and how). `--only` runs
the named benchmarks alone (for instance `--only http` to measure again the HTTP rate at the full
run's size, in minutes instead of an hour); the table then holds their rows only."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from bench import books, http, importing, ingestion, jobs
from bench.report import Row, format_facts, format_table, machine_facts, write_json
from bench.sites import open_site

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class Scale(NamedTuple):
    partners: int
    customers: int
    ingest_events: int
    import_events: int
    books: books.Shape
    http_requests: int
    http_deadline_s: float  # per series (POSTs, then health): the request count or this, whichever comes first
    release_events: int  # paid invoices whose holds (1.45 a paid invoice) a job catches up on


QUICK = Scale(partners=200, customers=20_000, ingest_events=30_000, import_events=40_000,
              books=books.Shape(partners=200, customers=20_000, months=5, events_per_month=6_000,
                                checkpoints=(1_000_000,)),
              http_requests=5_000, http_deadline_s=12, release_events=10_000)
# About 172,000 paid invoices a month make a closed month of ~1M lines (accruals, overrides and
# the releases of the previous month's holds); eleven months pass 10M.
FULL = Scale(partners=2_000, customers=200_000, ingest_events=200_000, import_events=1_000_000,
             books=books.Shape(partners=2_000, customers=200_000, months=11, events_per_month=172_000,
                               checkpoints=(1_000_000, 10_000_000)),
             http_requests=50_000, http_deadline_s=120, release_events=100_000)


def _progress(started: float):
    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", file=sys.stderr, flush=True)
    return say


BENCHMARKS = ("ingestion", "import", "books", "jobs", "http")


def run_engine(engine_name: str, scale: Scale, quick: bool, say,
               only: tuple[str, ...] = BENCHMARKS) -> tuple[list[Row], str | None]:
    from tests.pg_cluster import ClusterUnavailable

    try:
        site = open_site(engine_name)
    except ClusterUnavailable as error:
        say(f"{engine_name}: unavailable: {error}")
        return [Row(f"{engine_name} unavailable", engine_name, None, "", "-", None, note=str(error)[:120])], None
    rows: list[Row] = []
    raw_rate: float | None = None  # the ingestion's raw limit, events/s, for the import's ratio
    try:
        version = site.server_version()
        if "ingestion" in only:
            say(f"{engine_name}: ingestion, {scale.ingest_events:,} events")
            url, seeded = ingestion.prepare(site, scale.partners, scale.customers)
            samples = ingestion.measure(site, url, seeded, scale.ingest_events)
            raw_rate = ingestion.raw_events_per_s(samples)
            rows += ingestion.rows_for(engine_name, samples)
        if "import" in only:
            say(f"{engine_name}: revshare import, {scale.import_events:,} events")
            with tempfile.TemporaryDirectory(prefix="revshare-bench-import-") as directory:
                results = importing.measure(site, Path(directory), scale.partners, scale.customers,
                                            scale.import_events)
            rows += importing.rows_for(engine_name, results, quick=quick, raw_events_per_s=raw_rate)
        if "books" in only:
            say(f"{engine_name}: growing the journal, {scale.books.months} months")
            reads, closes = books.grow(site, scale.books, lambda message: say(f"{engine_name}: {message}"))
            rows += books.rows_for(engine_name, reads, closes)
        if "jobs" in only:
            say(f"{engine_name}: postings during a release of the holds of {scale.release_events:,} invoices")
            rows += jobs.rows_for(engine_name,
                                  jobs.measure(site, scale.partners, scale.customers, scale.release_events))
        if "http" in only:
            say(f"{engine_name}: HTTP, up to {scale.http_requests:,} POSTs or {scale.http_deadline_s:g} s")
            results = http.measure(site, scale.http_requests, scale.partners, scale.customers, scale.http_deadline_s)
            rows += http.rows_for(engine_name, results, quick=quick)
    finally:
        site.close()
    return rows, version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="scaled-down sizes; under 3 minutes on 2 cores")
    parser.add_argument("--engine", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), metavar="NAME",
                        help=f"run these benchmarks alone: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--no-json", action="store_true", help=f"do not write the table to {RESULTS_DIR}")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    engines = ["sqlite", "postgres"] if args.engine == "both" else [args.engine]
    started = time.perf_counter()
    say = _progress(started)
    facts = machine_facts([])
    if not args.quick and {"import", "books"} & set(args.only):
        say("full mode: 1M-event import and a 10M-line journal per engine; expect an hour or more on 2 cores")
    rows: list[Row] = []
    versions: list[str] = []
    for engine_name in engines:
        engine_rows, version = run_engine(engine_name, scale, args.quick, say, tuple(args.only))
        rows += engine_rows
        versions += [version] if version else []
    facts = {**facts, **{k: v for k, v in machine_facts(versions).items() if k == "postgresql"}}
    mode = "quick" if args.quick else "full"
    elapsed_s = time.perf_counter() - started
    print(format_facts(facts))
    chosen = "" if len(args.only) == len(BENCHMARKS) else f", only: {', '.join(args.only)}"
    print(f"mode: {mode}, engines: {', '.join(engines)}{chosen}, {elapsed_s:.0f} s; '*' = measured at a smaller size than "
          "the target's; ratios are to the raw driver limit measured in the same run")
    print(format_table(rows))
    if not args.no_json:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = write_json(RESULTS_DIR, {**facts, "elapsed_s": elapsed_s}, mode, rows, stamp)
        print(f"written: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
