"""Writers of program facts and postings at the same moment, on PostgreSQL, where they do not share
SQLite's one write lock: each interleaving is forced by hand (another connection's work made at a
chosen point of this one's), not left to timing, and the books must be those of the two made one
after the other."""

from __future__ import annotations

import threading

import pytest

from ledger import partners, program_chain, revenue
from ledger.journal import now_us
from tests.program import seed

OTHER_WAIT_S = 0.5  # how long the forced point waits for the other writer before going on without it


@pytest.mark.postgres
def test_an_accrual_posted_while_a_termination_is_recorded_is_not_of_revenue_after_the_termination(
        postgres_database, monkeypatch):
    """A termination is dated now. Read outside the journal lock, an event paid just after that
    instant and posted before the termination committed earned for a partner the books say was
    terminated by then: one after the other, the event first, the termination is dated after it."""
    database = postgres_database
    with database.transaction() as session:
        seed(session)
    outcomes, other = [], []

    def post_event_paid_now() -> None:
        event = revenue.RevenueEvent("e-now", "invoice_paid", "acme", "inv-now", "USD", 50_000, now_us())
        with database.transaction() as session:
            outcomes.extend(revenue.ingest(session, [event]))

    recording = program_chain.record

    def record_once_the_status_is_dated(session, *facts):
        if facts[0][0] == "partner_statuses" and not other:
            other.append(threading.Thread(target=post_event_paid_now))
            other[0].start()
            other[0].join(OTHER_WAIT_S)  # on the journal lock, it waits for the termination's commit
        return recording(session, *facts)

    monkeypatch.setattr(program_chain, "record", record_once_the_status_is_dated)
    with database.transaction() as session:
        terminated = partners.set_status(session, "northwind", "terminated")
    other[0].join()
    [outcome] = outcomes
    earned = [line for line in outcome.commissions if line.partner_id == "northwind"]
    assert terminated.status == "terminated" and earned == [], outcome
