"""`python -m bench.claims [--engine sqlite|postgres] [--customers N] [--moves M]`: what taking CPA
claims costs a batch (migration 0038).

N customers, attributed on 2026-01-01 to a partner on a plan with a CPA, each pay an invoice dated
2026-02-05 (one batch: each claims its customer's CPA), then one dated 2026-03-05 (one batch, in
time order: none takes a claim), then one dated 2026-01-05 (one batch: each takes its customer's
claim from the February payment, whose bounty is reversed). Prints the three batches' wall times:
the last against the second is what the claims taken cost. The books are not analyzed, as a young
book's are not.

With `--moves M`: one customer pays M/4, M/2 and M invoices (each on new books, in one batch), dated
newest first, so that each payment takes the claim from the one before: one bounty a move, all but
the last reversed. The time a move stays about the same as the moves grow when no guard reads every
bounty of the customer (migration 0055).
"""

from __future__ import annotations

import argparse
from datetime import date

from ledger import customers

from bench.sites import new_books, timed_ingest


def measure(engine_name: str, count: int) -> dict[str, float]:
    with new_books(engine_name, "claims") as books:
        books.plan("hybrid", "0.10", cpa={"USD": "150.00"}, duration_months=None, hold_days=30)
        books.partner("northwind", "hybrid")
        with books.database.transaction() as session:
            for number in range(count):
                customers.attribute(session, f"c{number}", "northwind", date(2026, 1, 1), "manual")
        seconds = {}
        for name, day in (("claiming", "2026-02-05"), ("in time order", "2026-03-05"), ("taking", "2026-01-05")):
            seconds[name] = timed_ingest(books, [books.event("invoice_paid", f"c{number}", f"{day}-{number}",
                                                             "500.00", day, event_id=f"{day}-{number}")
                                                 for number in range(count)])
        assert books.sql("SELECT count(*) FROM cpa_claims_taken") == [(count,)]
        return seconds


def measure_moves(engine_name: str, moves: int) -> dict[int, float]:
    """Seconds of a batch of `count` payments of one customer, newest first, for count M/4, M/2, M."""
    seconds = {}
    for count in (moves // 4, moves // 2, moves):
        with new_books(engine_name, "moves") as books:
            books.plan("hybrid", "0.10", cpa={"USD": "150.00"}, duration_months=None, hold_days=30)
            books.partner("northwind", "hybrid")
            books.attribute("acme", "northwind", "2026-01-01")
            seconds[count] = timed_ingest(books, [books.event(
                "invoice_paid", "acme", f"inv-{n}", "500.00",
                f"2026-02-{28 - n // 1440:02d}T{23 - n // 60 % 24:02d}:{59 - n % 60:02d}:00Z") for n in range(count)])
            assert books.sql("SELECT count(*) FROM cpa_claims_taken") == [(count - 1,)]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--customers", type=int, default=10_000, help="payments in each batch (at most 10,000)")
    parser.add_argument("--moves", type=int, help="instead: up to M payments of one customer, newest first "
                                                   "(at most 40,000)")
    args = parser.parse_args()
    assert 0 < args.customers <= 10_000, args.customers
    if args.moves is not None:
        assert 4 <= args.moves <= 40_000, args.moves
        for count, seconds in measure_moves(args.engine, args.moves).items():
            print(f"{args.engine} one customer, {count:,} payments newest first in {seconds:6.2f} s, "
                  f"{seconds / count * 1000:.2f} ms a move")
        return
    for name, seconds in measure(args.engine, args.customers).items():
        print(f"{args.engine} {name:14} {args.customers:,} payments in {seconds:6.2f} s, "
              f"{seconds / args.customers * 1000:.2f} ms a payment")


if __name__ == "__main__":
    main()
