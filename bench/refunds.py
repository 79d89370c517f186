"""`python -m bench.refunds [--engine sqlite|postgres] [--refunds N]`: what refunds of one invoice cost.

One invoice of 100,000.00 is paid, then N/4, N/2 and N refunds of 1.00 of it (each count on new
books, in one batch), dated across a month out of time order, as refunds of a long-lived invoice
may be delivered. Each refund is checked against the invoice's other events: by Python
(`revenue._Invoice`), by the database's guard of the invoice's limits (migration 0054: one ordered
pass over them) and by the clawback guard (what stands against the accrual): the time a refund
grows with the refunds before it, the batch's with their square (docs/performance.md, "Guards that
read a subject's history"). The books are not analyzed, as a young book's are not.
"""

from __future__ import annotations

import argparse

from bench.sites import new_books, timed_ingest


def measure(engine_name: str, refunds: int) -> dict[int, float]:
    """Seconds of a batch of `count` refunds of one invoice, for count N/4, N/2, N."""
    seconds = {}
    for count in (refunds // 4, refunds // 2, refunds):
        with new_books(engine_name, "refunds") as books:
            books.plan("msp", "0.20", hold_days=0)
            books.partner("northwind", "msp")
            books.attribute("acme", "northwind", "2026-01-01")
            books.paid("acme", "inv-1", "100000.00", "2026-01-10")
            seconds[count] = timed_ingest(books, [books.event(
                "refund", "acme", "inv-1", "1.00", f"2026-02-{1 + n % 27:02d}T{n // 27 % 24:02d}:{n % 60:02d}:00Z")
                for n in range(count)])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--refunds", type=int, default=1_000, help="refunds in the largest batch (at most 10,000)")
    args = parser.parse_args()
    assert 4 <= args.refunds <= 10_000, args.refunds
    for count, seconds in measure(args.engine, args.refunds).items():
        print(f"{args.engine} one invoice, {count:,} refunds in one batch in {seconds:6.2f} s, "
              f"{seconds / count * 1000:.2f} ms a refund")


if __name__ == "__main__":
    main()
