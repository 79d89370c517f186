"""Several processes post overlapping revenue events for the same hot partners at once (a
duplicate storm); a close races postings. Afterwards each event is applied once, the books are
those of one clean sequential run, every balance equals the sum of its lines, and verify() is
clean. On SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import random
import threading

import pytest
from sqlalchemy import func, select

from ledger import periods, revenue
from ledger.balances import line_sums, sums
from ledger.db import Database
from ledger.errors import Conflict
from ledger.schema import journal_transactions, revenue_events
from ledger.verify import verify
from tests.cli.test_cli import books
from tests.conftest import new_pg_url, new_sqlite_url, scaled
from tests.program import at, paid, seed

CUSTOMERS = [f"hot-{n}" for n in range(6)]
PROCESSES = scaled(4)
MONTHS = scaled(3)  # of invoices and refunds in the storm


def storm_events() -> list[revenue.RevenueEvent]:
    """Invoices for a few hot customers, each followed later by one or two refunds."""
    rng, events = random.Random(7), []
    for month in range(1, MONTHS + 1):
        for day in (5, 15, 25):
            for customer in CUSTOMERS:
                invoice = f"inv-{customer}-{month}-{day}"
                amount = rng.randrange(1_000, 90_000)
                events.append(paid(f"e-{invoice}", customer, invoice, amount, f"2026-{month:02d}-{day:02d}"))
                if rng.random() < 0.3:
                    events.append(paid(f"r1-{invoice}", customer, invoice, amount // 3,
                                       f"2026-{month:02d}-{day + 1:02d}", kind="refund"))
                    events.append(paid(f"r2-{invoice}", customer, invoice, amount - amount // 3,
                                       f"2026-{month:02d}-{day + 2:02d}", kind="chargeback"))
    return events


def poster(url: str, seed_value: int) -> int:
    """Post every event in order, in random batch sizes, repeating some batches: returns refusals."""
    rng, events = random.Random(seed_value), storm_events()
    database = Database(url)
    refused, position = 0, 0
    try:
        while position < len(events):
            size = rng.randrange(1, 40)
            batch = events[max(0, position - rng.randrange(0, 10)):position + size]  # overlap the last batch
            with database.transaction() as session:
                refused += sum(isinstance(r, revenue.Refusal) for r in revenue.ingest(session, batch))
            position += size
    finally:
        database.dispose()
    return refused


def build(url: str) -> Database:
    database = Database(url)
    with database.transaction() as session:
        seed(session, customer_ids=CUSTOMERS)
    return database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def two_databases(request, sqlite_template, tmp_path):
    if request.param == "sqlite":
        urls = [new_sqlite_url(sqlite_template, tmp_path) for _ in range(2)]
    else:
        cluster = request.getfixturevalue("pg_cluster")
        urls = [new_pg_url(cluster) for _ in range(2)]
    databases = [build(url) for url in urls]
    yield databases
    for database in databases:
        database.dispose()


def test_a_duplicate_storm_from_several_processes_applies_each_event_once(two_databases):
    stormed, clean = two_databases
    with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
        refusals = pool.starmap(poster, [(stormed.url, n) for n in range(PROCESSES)])
    with clean.transaction() as session:
        results = revenue.ingest(session, storm_events())
    assert refusals == [0] * PROCESSES
    assert not any(isinstance(r, revenue.Refusal) for r in results)
    assert books(stormed) == books(clean)
    with stormed.reader() as session:
        assert sums(session) == line_sums(session, None, None, None)
        report = verify(session)
    assert report.ok and report.transactions_checked == len(books(clean)[1]) // 2


def test_a_close_racing_postings_into_its_period_keeps_the_books_whole(two_databases):
    database, _ = two_databases
    events = storm_events()
    january = [e for e in events if e.occurred_at_us < at("2026-02-01")]
    barrier, errors = threading.Barrier(2), []

    def post_january():
        barrier.wait()
        for start in range(0, len(january), 5):
            with database.transaction() as session:
                assert not any(isinstance(r, revenue.Refusal) for r in revenue.ingest(session, january[start:start + 5]))

    def close_january():
        barrier.wait()
        try:
            with database.transaction() as session:
                periods.close_period(session, "2026-01", now_us=at("2026-06-01"))
        except Conflict as error:  # pragma: no cover - the close always wins or waits, never conflicts
            errors.append(error)

    threads = [threading.Thread(target=post_january), threading.Thread(target=close_january)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    t = journal_transactions.c
    with database.reader() as session:
        report = verify(session)
        close = periods.get_close(session, "2026-01")
        rows = session.execute(select(t.effective_at_us, t.original_effective_at_us)
                               .where(t.event_id.is_not(None))).all()
        stored = session.execute(select(func.count()).select_from(revenue_events)).scalar_one()
    assert report.ok, report.problems
    assert stored == len(january)
    # Each posting is either inside January (before the close) or, after it, at February's first
    # instant with its January instant kept.
    for effective, original in rows:
        assert (effective < close.ends_at_us and original is None) or \
            (effective == close.ends_at_us and original is not None and original < close.ends_at_us)
