"""Metric 1: bulk ingestion of revenue events through the full domain path, against the raw limit.

Each batch of `BATCH_EVENTS` paid invoices goes through `revenue.ingest` inside
`Database.transaction()` (attribution, plan, accrual and override postings, hash chain,
idempotency, events and open holds), on database A. Right after it, in the same run and on the same
noisy machine, the very rows that batch wrote are written through the bare driver into database B
(a copy of A taken before the first batch; `raw.py`), one transaction per batch as in the domain
path; then the batch is delivered to A again, where every event must replay. So each batch gives a
paired sample (domain, raw, re-delivery) taken within a second or two of each other: the reported
ratios are medians of the per-batch ratios, which machine noise disturbs far less than either rate.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from ledger import revenue
from ledger.db import Database

from bench import program, raw
from bench.report import Row, median

BATCH_EVENTS = 10_000
EVENTS_PER_S_TARGET = {"sqlite": 50_000, "postgres": 20_000}
RAW_RATIO_MIN = 0.30
REDELIVERY_RATIO_MAX = 0.30


class Sample(NamedTuple):
    events: int
    domain_s: float
    raw_s: float
    redelivery_s: float


def prepare(site, partner_count: int, customer_count: int) -> tuple[str, program.Program]:
    """A database with the program seeded and every partner account created by a warm-up."""
    url = site.new("ingest")
    database = Database(url)
    try:
        with database.transaction() as session:
            seeded = program.seed(session, partner_count, customer_count)
        with database.transaction() as session:
            _ingest_all(session, program.warm_up_events(seeded))
        analyze(database)
    finally:
        database.dispose()
    return url, seeded


def analyze(database: Database) -> None:
    """PostgreSQL: do at once what autovacuum does on a live server (SQLite:
    nothing, its planner needs no statistics for these queries). ANALYZE: without statistics, a
    table that grew from empty within the last minute is planned as a tiny one. VACUUM: migration
    0007 has autovacuum vacuum the journal lines after every 100,000 new ones, which keeps the
    visibility map current, so that balances are index-only scans; a bulk load of a month is
    vacuumed several times over while it runs, though up to 100,000 of the newest lines may wait
    for the next vacuum: the bench's balances are the best case."""
    if database.engine.dialect.name == "postgresql":
        with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")


def _ingest_all(session, events) -> list:
    results = revenue.ingest(session, events)
    refused = [r for r in results if isinstance(r, revenue.Refusal)]
    assert not refused, refused[:3]
    return results


def measure(site, url: str, seeded: program.Program, event_count: int) -> list[Sample]:
    baseline_url = site.copy(url, "raw")
    database = Database(url)
    samples = []
    try:
        events = program.paid_events(seeded, event_count, month_offset=1, prefix="bulk")
        for batch in program.batches(events, BATCH_EVENTS):
            samples.append(_one_batch(database, baseline_url, batch))
    finally:
        database.dispose()
    return samples


def _one_batch(database: Database, baseline_url: str, batch: list) -> Sample:
    since = raw.mark(database.engine)
    started = time.perf_counter()
    with database.transaction() as session:
        _ingest_all(session, batch)
    domain_s = time.perf_counter() - started
    rows = raw.capture(database.engine, since, [event.id for event in batch])
    assert len(rows.by_table["revenue_events"]) == len(batch)
    raw_s = raw.write(baseline_url, rows)
    started = time.perf_counter()
    with database.transaction() as session:
        replays = _ingest_all(session, batch)
    redelivery_s = time.perf_counter() - started
    assert all(result.replayed for result in replays)
    return Sample(len(batch), domain_s, raw_s, redelivery_s)


def raw_events_per_s(samples: list[Sample]) -> float:
    """The raw limit's rate over every batch: the events of the rows written through the bare driver."""
    return sum(s.events for s in samples) / sum(s.raw_s for s in samples)


def rows_for(engine_name: str, samples: list[Sample]) -> list[Row]:
    events = sum(s.events for s in samples)
    domain_rate = events / sum(s.domain_s for s in samples)
    raw_rate = raw_events_per_s(samples)
    raw_ratio = median([s.raw_s / s.domain_s for s in samples])
    redelivery_ratio = median([s.redelivery_s / s.domain_s for s in samples])
    per_batch = sorted(s.events / s.domain_s for s in samples)
    target = EVENTS_PER_S_TARGET[engine_name]
    spread = f"{len(samples)} batches of {BATCH_EVENTS:,}; per-batch {per_batch[0]:,.0f}..{per_batch[-1]:,.0f} ev/s"
    return [
        Row("ingest: revenue.ingest, 10k/batch", engine_name, domain_rate, "events/s", f">= {target:,}",
            domain_rate >= target, raw_rate, raw_ratio, f">= {RAW_RATIO_MIN:.0%}", raw_ratio >= RAW_RATIO_MIN,
            f"{events:,} paid events, ~45% with an override; {spread}; ratio = median per batch"),
        Row("ingest: re-delivery, all replayed", engine_name, redelivery_ratio, "%", f"<= {REDELIVERY_RATIO_MAX:.0%}",
            redelivery_ratio <= REDELIVERY_RATIO_MAX,
            note="time of re-delivering a batch / its first delivery, median per batch"),
    ]
