"""Postings while a job catches up on matured holds: how long a single-event posting waits.

Two copies of one database each hold the open holds of `events` paid invoices of one month, every
one matured. On each, a poster process posts one paid invoice of a later month per transaction
(`revenue.ingest`, the path of POST /v1/revenue-events without HTTP), pausing `PAUSE_S` between
postings, while this process releases the matured holds: on one copy in one transaction
(`holds.release_matured`, as `POST /v1/holds/release` does), on the other
`holds.HOLDS_PER_TRANSACTION` holds to a transaction (`holds.release_in_transactions`, as the
scheduler's jobs and `revshare release-holds` do). Reported: the postings' p99 and longest time
while the release ran, and the release's own time. The poster waits for each posting before the
next (a closed loop), so behind one long transaction it records a few long waits, not the many a
stream of requests would: read the longest wait there, not the p99. Not a target of DESIGN.md;
the HTTP target's p99 < 50 ms is the yardstick.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from typing import NamedTuple

from sqlalchemy import text

from ledger import holds, revenue
from ledger.db import Database

from bench import program
from bench.report import Row, median, percentile

PAUSE_S = 0.002
POSTINGS_MAX = 30_000  # more than a poster gets through in the longest release
READY_TIMEOUT_S = 60
P99_MS_YARDSTICK = 50.0


class Run(NamedTuple):
    released: int
    seconds: float
    waits_ms: list[float]  # the postings that started while the release ran


def _poster(url: str, seeded: program.Program, prefix: str, ready, stop, out) -> None:
    database = Database(url)
    timed: list[tuple[float, float]] = []
    try:
        for event in program.paid_events(seeded, POSTINGS_MAX, month_offset=12, prefix=prefix):
            if stop.is_set():
                break
            started = time.monotonic()
            with database.transaction() as session:
                revenue.ingest(session, [event])
            timed.append((started, time.monotonic() - started))
            ready.set()
            time.sleep(PAUSE_S)
    finally:
        database.dispose()
        out.put(timed)


def _release(url: str, seeded: program.Program, at_us: int, in_transactions: bool) -> Run:
    context = multiprocessing.get_context("spawn")
    ready, stop, out = context.Event(), context.Event(), context.Queue()
    poster = context.Process(target=_poster, args=(url, seeded, f"posting-{in_transactions}", ready, stop, out),
                             daemon=True)
    database = Database(url)
    timed: list[tuple[float, float]] = []
    try:
        poster.start()
        assert ready.wait(READY_TIMEOUT_S), "the poster did not post"
        started = time.monotonic()
        if in_transactions:
            released = holds.release_in_transactions(database.transaction, at_us)
        else:
            with database.transaction() as session:
                released = holds.release_matured(session, at_us)
        ended = time.monotonic()
    finally:
        stop.set()
        try:
            timed = out.get(timeout=READY_TIMEOUT_S)
        except queue.Empty:  # the poster died: the error above, if any, is the one to see
            pass
        poster.join(READY_TIMEOUT_S)
        if poster.is_alive():
            poster.kill()
        database.dispose()
    assert timed, "the poster reported nothing"
    waits = [seconds * 1000 for at, seconds in timed if started <= at <= ended]
    return Run(released, ended - started, waits)


def measure(site, partner_count: int, customer_count: int, events: int) -> dict[str, Run]:
    url = site.new("holds")
    database = Database(url)
    try:
        with database.transaction() as session:
            seeded = program.seed(session, partner_count, customer_count)
        for batch in program.batches(program.paid_events(seeded, events, month_offset=1, prefix="held"), 10_000):
            with database.transaction() as session:
                revenue.ingest(session, batch)
        if database.engine.dialect.name == "postgresql":
            with database.transaction() as session:  # as autovacuum would, for the fresh rows
                session.execute(text("ANALYZE"))
    finally:
        database.dispose()
    copy = site.copy(url, "holds")
    at_us = program.month_start_us(3)  # every hold of month 1 has matured (30 days)
    try:
        return {"one": _release(url, seeded, at_us, False), "chunked": _release(copy, seeded, at_us, True)}
    finally:
        site.drop(url)
        site.drop(copy)


def rows_for(engine_name: str, runs: dict[str, Run]) -> list[Row]:
    rows = []
    for name, words in (("one", "in one transaction"), ("chunked", f"{holds.HOLDS_PER_TRANSACTION} to a transaction")):
        run = runs[name]
        waits = run.waits_ms or [0.0]
        rows.append(Row(f"postings during a release of matured holds, {words}: p99 wait", engine_name,
                        percentile(waits, 0.99), "ms", f"(not a target; p99 < {P99_MS_YARDSTICK:g} ms for HTTP)", None,
                        note=f"{len(run.waits_ms):,} postings, p50 {median(waits):.1f} ms, "
                             f"longest {max(waits):.0f} ms; {run.released:,} releases in {run.seconds:.1f} s"))
    return rows
