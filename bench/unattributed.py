"""`python -m bench.unattributed [--engine sqlite|postgres] [--payments N]`: what payments that post
nothing cost to store.

A vendor's billing may send every invoice, of customers no partner brought as well. Such a payment
posts nothing (`unattributed`), but is stored and chained as it is stored (migration 0056: a row of
the program's chain, with its guards, and a hash). N payments of customers never attributed are
ingested in batches of 10,000 on new books, then N payments of attributed customers (each an accrual
and a hold) on other new books, as a reference in the same run; then `verify` of the first books.
"""

from __future__ import annotations

import argparse
import time

from bench.sites import new_books

BATCH = 10_000


def measure(engine_name: str, payments: int) -> dict[str, float]:
    seconds = {}
    for label, attributed in (("unattributed", False), ("attributed", True)):
        with new_books(engine_name, label) as books:
            books.plan("msp", "0.20")
            books.partner("northwind", "msp")
            customers = [f"{label}-{n}" for n in range(min(payments, 1_000))]
            if attributed:
                for customer in customers:
                    books.attribute(customer, "northwind", "2026-01-01")
            events = [books.event("invoice_paid", customers[n % len(customers)], f"inv-{n}", "10.00",
                                  f"2026-02-{1 + n % 27:02d}T00:00:00Z") for n in range(payments)]
            started, outcomes = time.perf_counter(), []
            for first in range(0, payments, BATCH):
                outcomes += books.ingest(*events[first:first + BATCH])
            seconds[label] = time.perf_counter() - started
            expected = "posted" if attributed else "unattributed"
            assert all(getattr(outcome, "status", None) == expected for outcome in outcomes), outcomes[:3]
            if not attributed:
                from ledger.verify import verify

                started = time.perf_counter()
                with books.database.reader() as session:
                    report = verify(session)
                seconds["verify"] = time.perf_counter() - started
                assert report.ok, report.problems[:3]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--payments", type=int, default=60_000)
    args = parser.parse_args()
    assert args.payments >= 1, args.payments
    seconds = measure(args.engine, args.payments)
    for label in ("unattributed", "attributed"):
        print(f"{args.engine} {args.payments:,} {label} payments in {seconds[label]:6.2f} s, "
              f"{args.payments / seconds[label]:,.0f} a second")
    print(f"{args.engine} unattributed / attributed: {seconds['unattributed'] / seconds['attributed']:.0%} of the "
          f"time; verify of the unattributed books {seconds['verify']:.2f} s")


if __name__ == "__main__":
    main()
