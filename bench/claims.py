"""`python -m bench.claims [--engine sqlite|postgres] [--customers N]`: what taking CPA claims costs a
batch (migration 0038).

N customers, attributed on 2026-01-01 to a partner on a plan with a CPA, each pay an invoice dated
2026-02-05 (one batch: each claims its customer's CPA), then one dated 2026-03-05 (one batch, in
time order: none takes a claim), then one dated 2026-01-05 (one batch: each takes its customer's
claim from the February payment, whose bounty is reversed). Prints the three batches' wall times:
the last against the second is what the claims taken cost. The books are not analyzed, as a young
book's are not.
"""

from __future__ import annotations

import argparse
import time
from datetime import date

from ledger import customers
from ledger.db import Database
from ledger.revenue import Outcome
from tests.scenarios.books import Books

from bench.sites import open_site


def measure(engine_name: str, count: int) -> dict[str, float]:
    site = open_site(engine_name)
    try:
        database = Database(site.new("claims"))
        try:
            books = Books(database)
            books.plan("hybrid", "0.10", cpa={"USD": "150.00"}, duration_months=None, hold_days=30)
            books.partner("northwind", "hybrid")
            with database.transaction() as session:
                for number in range(count):
                    customers.attribute(session, f"c{number}", "northwind", date(2026, 1, 1), "manual")
            seconds = {}
            for name, day in (("claiming", "2026-02-05"), ("in time order", "2026-03-05"), ("taking", "2026-01-05")):
                events = [books.event("invoice_paid", f"c{number}", f"{day}-{number}", "500.00", day,
                                      event_id=f"{day}-{number}") for number in range(count)]
                started = time.perf_counter()
                results = books.ingest(*events)
                seconds[name] = time.perf_counter() - started
                assert all(isinstance(result, Outcome) for result in results), results[:3]
            assert books.sql("SELECT count(*) FROM cpa_claims_taken") == [(count,)]
            return seconds
        finally:
            database.dispose()
    finally:
        site.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--customers", type=int, default=10_000, help="payments in each batch (at most 10,000)")
    args = parser.parse_args()
    assert 0 < args.customers <= 10_000, args.customers
    for name, seconds in measure(args.engine, args.customers).items():
        print(f"{args.engine} {name:14} {args.customers:,} payments in {seconds:6.2f} s, "
              f"{seconds / args.customers * 1000:.2f} ms a payment")


if __name__ == "__main__":
    main()
