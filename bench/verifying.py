"""`python -m bench.verifying [--engine sqlite|postgres] [--payments N] [--rounds N]`: what `verify`
costs, and what its re-derivations and its check of the foreign keys cost of it.

The book is grown through the domain path (`revenue.ingest` in batches of 10,000): the bench's
program (2,000 partners, 20,000 customers), N paid invoices over four months, a refund of a third
of every fifth invoice a day after its payment, and a chargeback of every twentieth two days after
it, won back the day after; and a payout run at the start of each month after the first. Then,
round after round: the whole of `verify`, and each re-derivation alone, each on a fresh reader
session (wall time; the machine's drift falls on every round alike).
"""

from __future__ import annotations

import argparse
import time

from ledger import payouts, revenue
from ledger.clawbacks_rederived import verify_clawbacks
from ledger.db import Database
from ledger.payouts_rederived import verify_payouts_rederived
from ledger.recorded_program import verify_commissions
from ledger.verify import verify, verify_references

from bench import program
from bench.sites import open_site

DAY_US = 86_400_000_000
MONTHS = 4
PARTNERS, CUSTOMERS = 2_000, 20_000


def undoings(paid: list[revenue.RevenueEvent]) -> list[revenue.RevenueEvent]:
    """The refunds, chargebacks and won disputes of a month's payments."""
    found = []
    for n, event in enumerate(paid):
        if n % 5 == 0:
            found.append(event._replace(id=f"{event.id}-r", type="refund", amount_minor=max(1, event.amount_minor // 3),
                                        occurred_at_us=event.occurred_at_us + DAY_US))
        if n % 20 == 1:
            found += [event._replace(id=f"{event.id}-c", type="chargeback",
                                     occurred_at_us=event.occurred_at_us + 2 * DAY_US),
                      event._replace(id=f"{event.id}-w", type="chargeback_reversed",
                                     occurred_at_us=event.occurred_at_us + 3 * DAY_US)]
    return found


def grow(database: Database, payments: int) -> int:
    """The book; how many events undo a payment."""
    with database.transaction() as session:
        seeded = program.seed(session, PARTNERS, CUSTOMERS)
    undone = 0
    for month in range(MONTHS):
        paid = program.paid_events(seeded, payments // MONTHS, month_offset=month, prefix=f"m{month}")
        later = undoings(paid)
        undone += len(later)
        for batch in program.batches(paid + later, 10_000):
            with database.transaction() as session:
                results = revenue.ingest(session, batch)
            assert not any(isinstance(result, revenue.Refusal) for result in results)
        if month:
            payouts.run_payouts_in_transactions(database.transaction, program.month_start_us(month))
    return undone


def timed_s(database: Database, count_problems) -> tuple[float, int]:
    """Seconds of one call on a fresh reader session, and the problems it named."""
    started = time.perf_counter()
    with database.reader() as session:
        problems = count_problems(session)
    return time.perf_counter() - started, problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--payments", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    site = open_site(args.engine)
    url = site.new("verifying")
    database = Database(url)
    try:
        undone = grow(database, args.payments)
        print(f"{args.engine}: {args.payments:,} payments, {undone:,} events undoing them")
        print(f"{'round':>5} {'verify':>9} {'payments re-derived':>20} {'undoings re-derived':>20} "
              f"{'payout runs re-derived':>23} {'references':>11} {'problems':>9}")
        for round_number in range(1, args.rounds + 1):
            whole_s, problems = timed_s(database, lambda session: len(verify(session).problems))
            payments_s, _ = timed_s(database, lambda session: len(verify_commissions(session)))
            undoings_s, _ = timed_s(database, lambda session: len(verify_clawbacks(session)))
            runs_s, _ = timed_s(database, lambda session: len(verify_payouts_rederived(session)))
            references_s, _ = timed_s(database, lambda session: len(verify_references(session)))
            print(f"{round_number:>5} {whole_s:8.2f}s {payments_s:19.2f}s {undoings_s:19.2f}s {runs_s:22.2f}s "
                  f"{references_s:10.2f}s {problems:>9}")
    finally:
        database.dispose()
        site.drop(url)
        site.close()


if __name__ == "__main__":
    main()
