"""`python -m bench.withdrawals [--engine sqlite|postgres] [--payments N] [--rounds N]`: what a
withdrawal of a fact that has not started costs on a grown book (migration 0040).

The book is grown through the domain path (`revenue.ingest` in batches of 10,000): the bench's
program (2,000 partners, 20,000 customers) and N paid invoices over one month (about one and a half
journal headers each: accruals, overrides). Then, round after round, each in its own transaction and
each timed alone (wall time): a partner's status change scheduled and withdrawn, a plan version and
a customer's move to another partner alike. The service and the database each look for a journal
transaction dated at or after the fact's start (the headers' instant index's last entry), and for a
version, for one that pins it, which no index serves: a scan of the headers, paid twice when a
version is withdrawn.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from sqlalchemy import text

from ledger import customers, partners, plans, revenue
from ledger.db import Database
from ledger.journal import now_us

from bench import program
from bench.sites import open_site

DAY_US = 86_400_000_000
PARTNERS, CUSTOMERS = 2_000, 20_000


def grow(database: Database, payments: int) -> program.Program:
    with database.transaction() as session:
        seeded = program.seed(session, PARTNERS, CUSTOMERS)
    for batch in program.batches(program.paid_events(seeded, payments, month_offset=0, prefix="w"), 10_000):
        with database.transaction() as session:
            results = revenue.ingest(session, batch)
        assert not any(isinstance(result, revenue.Refusal) for result in results)
    return seeded


def timed_ms(database: Database, step) -> float:
    started = time.perf_counter()
    with database.transaction() as session:
        step(session)
    return (time.perf_counter() - started) * 1_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--payments", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    site = open_site(args.engine)
    url = site.new("withdrawals")
    database = Database(url)
    try:
        seeded = grow(database, args.payments)
        with database.reader() as session:
            headers = session.execute(text("SELECT count(*) FROM journal_transactions")).scalar_one()
        print(f"{args.engine}: {args.payments:,} payments, {headers:,} journal headers")
        print(f"{'round':>5} {'status withdrawn':>17} {'version withdrawn':>18} {'attribution withdrawn':>22}")
        partner_id, other_id = seeded.earner_ids[-1], seeded.earner_ids[-2]
        customer_id = seeded.first_customer[partner_id]
        terms = program.STANDARD_PLAN
        for round_number in range(1, args.rounds + 1):
            ahead = now_us() + (30 + round_number) * DAY_US
            with database.transaction() as session:
                [status] = partners.set_status(session, partner_id, "suspended", ahead).scheduled
                version = plans.add_version(session, "bench-standard", terms, ahead).version
                day = datetime.fromtimestamp(ahead / 1_000_000, UTC).date()
                moved, _ = customers.attribute(session, customer_id, other_id, day, "manual", replace=True)
            status_ms = timed_ms(database, lambda session: partners.withdraw_change(session, partner_id, status.id))
            version_ms = timed_ms(database, lambda session: plans.withdraw_version(session, "bench-standard", version))
            attribution_ms = timed_ms(database, lambda session: customers.withdraw_attribution(
                session, customer_id, moved.id))
            print(f"{round_number:>5} {status_ms:14.1f} ms {version_ms:15.1f} ms {attribution_ms:19.1f} ms")
    finally:
        database.dispose()
        site.drop(url)
        site.close()


if __name__ == "__main__":
    main()
