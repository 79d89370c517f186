"""`python -m bench.statistics [--events N] [--rounds R]`: a batch on a journal whose statistics say
it is empty, with and without their being taken anew as the batch grows it (PostgreSQL; migration
0050, `ledger.journal.follow_statistics`).

Each case is a fresh database holding the tests' program (northwind under globex, 200 customers)
and no transaction; "analyzed empty" runs `ANALYZE` on it first, as a new database's first
`ANALYZE` or autovacuum after a first batch rolled back by a crash would. Then one transaction
ingests N events (`revenue.ingest`, one batch): payments of random customers dated in no order, so
that many move a customer's CPA claim (each move a flush mid-batch), and every tenth a refund or
chargeback of half an earlier payment. Prints each case's wall time and the rows of
`journal_transactions` read by sequential scans in the batch's transaction; the cases run in turn,
R rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from unittest import mock

import sqlalchemy as sa

from ledger import journal, revenue
from ledger.db import Database
from tests import program

from bench.sites import open_site

CUSTOMERS = [f"c{number}" for number in range(200)]
CASES = (("analyzed empty, followed", True, True), ("analyzed empty, not followed", True, False),
         ("never analyzed, followed", False, True))


def events(count: int) -> list[revenue.RevenueEvent]:
    chosen, paid, made = random.Random(7), [], []
    for number in range(count):
        if number % 10 == 9 and paid:
            customer_id, invoice_id, amount_minor, month, day = paid.pop(chosen.randrange(len(paid)))
            made.append(program.paid(f"e{number}", customer_id, invoice_id, amount_minor // 2,
                                     f"2026-{month + 1:02d}-{day:02d}", chosen.choice(revenue.REFUND_TYPES)))
            continue
        payment = (chosen.choice(CUSTOMERS), f"inv{number}", chosen.randrange(1_000, 100_000), chosen.randrange(1, 11),
                   chosen.randrange(1, 28))
        paid.append(payment)
        made.append(program.paid(f"e{number}", *payment[:3], f"2026-{payment[3]:02d}-{payment[4]:02d}"))
    return made


def measure(site, batch: list[revenue.RevenueEvent], analyzed: bool, followed: bool) -> tuple[float, int]:
    database = Database(site.new("statistics"))
    try:
        with database.transaction() as session:
            program.seed(session, customer_ids=CUSTOMERS)
        if analyzed:
            with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("ANALYZE")
        with contextlib.nullcontext() if followed else mock.patch.object(journal, "follow_statistics", lambda *_: None):
            started = time.perf_counter()
            with database.transaction() as session:
                results = revenue.ingest(session, batch)
                read = session.execute(sa.text("SELECT seq_tup_read FROM pg_stat_xact_user_tables"
                                               " WHERE relname = 'journal_transactions'")).scalar_one()
            seconds = time.perf_counter() - started
        refused = [result for result in results if isinstance(result, revenue.Refusal)]
        assert not refused, refused[:3]
        return seconds, read
    finally:
        database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="events in the batch (at most 10,000)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    assert 0 < args.events <= revenue.BATCH_EVENTS_MAX, args.events
    batch = events(args.events)
    site = open_site("postgres")
    try:
        for round_number in range(1, args.rounds + 1):
            for name, analyzed, followed in CASES:
                seconds, read = measure(site, batch, analyzed, followed)
                print(f"round {round_number}  {name:29} {args.events:,} events in {seconds:6.2f} s, "
                      f"{read:>12,} journal rows read by sequential scans", flush=True)
    finally:
        site.close()


if __name__ == "__main__":
    main()
