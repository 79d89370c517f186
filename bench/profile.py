"""`python -m bench.profile [--engine sqlite|postgres] [--events N] [--single N] [--http N] [--top N]`:
where the ingestion path spends its time, by cProfile.

Three shapes, on a seeded program with every partner account already created:
- bulk: `revenue.ingest` of N paid invoices in batches of 10,000, one transaction per batch (the
  path of the importer and of POST /v1/revenue-events/batch);
- single: N events one per transaction (the path of POST /v1/revenue-events, without HTTP);
- http: N POST /v1/revenue-events through the app's WSGI callable in this process (a billing key,
  request environments built before the profile starts), as a gunicorn worker serves them, with
  the function calls and the process's CPU time per request: figures that the shared machine's
  load moves far less than a rate over HTTP.

Prints the functions with the highest cumulative and own time; the database's own work shows as
time inside the driver's calls (`executemany`, `execute`, psycopg's `wait`). cProfile slows
Python-heavy code more than database-heavy code, so read the shares, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time

from werkzeug.test import EnvironBuilder

from api import create_app
from ledger import revenue
from ledger.db import Database
from ledger.keys import create_key
from ledger.settings import Settings

from bench import ingestion, program
from bench.importing import event_data
from bench.sites import open_site


def profile_bulk(database: Database, seeded: program.Program, count: int) -> pstats.Stats:
    events = program.paid_events(seeded, count, month_offset=1, prefix="prof")
    profiler = cProfile.Profile()
    profiler.enable()
    for batch in program.batches(events, ingestion.BATCH_EVENTS):
        with database.transaction() as session:
            revenue.ingest(session, batch)
    profiler.disable()
    return pstats.Stats(profiler)


def profile_single(database: Database, seeded: program.Program, count: int) -> pstats.Stats:
    events = program.paid_events(seeded, count, month_offset=2, prefix="one")
    profiler = cProfile.Profile()
    profiler.enable()
    for event in events:
        with database.transaction() as session:
            revenue.ingest(session, [event])
    profiler.disable()
    return pstats.Stats(profiler)


def profile_http(url: str, seeded: program.Program, count: int) -> tuple[pstats.Stats, float]:
    """The profile of `count` single-event POSTs, and the CPU milliseconds a POST took unprofiled
    (another `count` POSTs, timed first)."""
    database = Database(url)
    with database.transaction() as session:
        _, key = create_key(session, "billing")
    database.dispose()
    app = create_app(Settings.build(database_url=url, log_level="WARNING"))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    environments = [EnvironBuilder(path="/v1/revenue-events", method="POST", headers=headers,
                                   data=json.dumps(event_data(event))).get_environ()
                    for event in program.paid_events(seeded, 2 * count, month_offset=3, prefix="http")]
    statuses: list[str] = []

    def post(batch: list[dict]) -> None:
        for environment in batch:
            b"".join(app(environment, lambda status, _headers, _info=None: statuses.append(status)))

    started = time.process_time()
    post(environments[:count])
    cpu_ms = 1000 * (time.process_time() - started) / count
    profiler = cProfile.Profile()
    profiler.runcall(post, environments[count:])
    app.extensions["revshare"]["database"].dispose()
    assert all(status.startswith("201") for status in statuses), sorted(set(statuses))
    return pstats.Stats(profiler), cpu_ms


def report(title: str, stats: pstats.Stats, top: int) -> str:
    out = io.StringIO()
    stats.stream = out
    out.write(f"==== {title}: by cumulative time ====\n")
    stats.sort_stats("cumulative").print_stats(top)
    out.write(f"==== {title}: by own time ====\n")
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--events", type=int, default=20_000, help="bulk: events in batches of 10,000")
    parser.add_argument("--single", type=int, default=300, help="single: events one per transaction")
    parser.add_argument("--http", type=int, default=0, help="http: POSTs through the app, in this process")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    assert 0 < args.events <= 1_000_000 and 0 <= args.single <= 100_000 and 0 <= args.http <= 100_000
    site = open_site(args.engine)
    try:
        url, seeded = ingestion.prepare(site, 200, 20_000)
        database = Database(url)
        try:
            print(report(f"{args.engine} bulk, {args.events:,} events", profile_bulk(database, seeded, args.events),
                         args.top))
            if args.single:
                print(report(f"{args.engine} single, {args.single:,} events",
                             profile_single(database, seeded, args.single), args.top))
        finally:
            database.dispose()
        if args.http:
            stats, cpu_ms = profile_http(url, seeded, args.http)
            print(report(f"{args.engine} http, {args.http:,} POSTs: {stats.total_calls / args.http:,.0f} function "
                         f"calls and {cpu_ms:.2f} ms of CPU (unprofiled) a POST", stats, args.top))
    finally:
        site.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
