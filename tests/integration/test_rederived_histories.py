"""Legitimate histories, made through the service's own functions, that verify's re-derivations
(`ledger/recorded_program.py`, `ledger/clawbacks_rederived.py`) must find nothing in: finance
reversals of accruals, CPAs, clawbacks and reinstatements between refunds, refunds and won disputes
delivered out of order and into closed periods, several events of an invoice in one batch, a deep
hierarchy whose facts change, dated back, after its payments, re-attribution and suspension, and
two servers' clocks. Each step is recorded 11 minutes after the one before (beyond the ten minutes
of skew verify allows), so that every re-derivation takes its exact path."""

import pytest

from ledger import periods, revenue, reversals
from ledger.verify import verify
from tests.integration.test_tamper_evidence import behind_the_triggers
from tests.scenarios.books import Books, at

MINUTE_US = 60_000_000
STEP_US = 11 * MINUTE_US


class Clocked(Books):
    """Books whose every write is recorded STEP_US after the one before."""

    def __init__(self, database, clock) -> None:
        super().__init__(database)
        self.clock = clock
        clock.offset_us = -40 * 60 * MINUTE_US

    def tick(self) -> None:
        self.clock.offset_us += STEP_US

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if name in ("plan", "plan_version", "partner", "status", "change_plan", "attribute", "ingest", "release",
                    "reverse", "close"):
            object.__getattribute__(self, "tick")()
        return attr

    def reverse(self, transaction_id: int, effective_at: str | None = None):
        with self.database.transaction() as session:
            return reversals.reverse(session, transaction_id, reason="finance",
                                     effective_at_us=None if effective_at is None else at(effective_at))

    def close(self, period: str):
        with self.database.transaction() as session:
            return periods.close_period(session, period)

    def tx(self, event_id: str, kind: str, partner_id: str | None = None) -> int:
        rows = self.sql("SELECT id FROM journal_transactions WHERE event_id = :e AND kind = :k"
                        + ("" if partner_id is None else " AND partner_id = :p") + " ORDER BY id",
                        e=event_id, k=kind, p=partner_id)
        assert rows, (event_id, kind, partner_id)
        return rows[0][0]

    def problems(self):
        with self.database.reader() as session:
            return [(p.code, p.message) for p in verify(session).problems]


@pytest.fixture
def books(sqlite_database, skewed_clock):
    b = Clocked(sqlite_database, skewed_clock)
    b.plan("parent", "0", override=("0.10", "commission"), hold_days=30)
    b.plan("msp", "0.20", hold_days=30, cpa={"USD": "50.00"})
    b.partner("dist", "parent", type="distributor")
    b.partner("northwind", "msp", parent="dist")
    b.attribute("acme", "northwind", "2026-01-01")
    return b


def test_a_payment_and_a_partial_refund_verify_clean(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="p1")
    books.refund("acme", "inv-1", "250.00", "2026-01-20", event_id="r1")
    assert books.problems() == []


def test_refunds_after_finance_reversed_the_accrual_verify_clean(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="p1")
    books.reverse(books.tx("p1", "accrual"))
    books.refund("acme", "inv-1", "250.00", "2026-01-20", event_id="r1")
    books.refund("acme", "inv-1", "750.00", "2026-01-21", event_id="r2")
    assert books.problems() == []


def test_a_completing_refund_after_a_reversed_clawback_verifies_clean(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="p1")
    books.refund("acme", "inv-1", "250.00", "2026-01-20", event_id="r1")
    books.reverse(books.tx("r1", "clawback"))
    books.refund("acme", "inv-1", "750.00", "2026-01-21", event_id="r2")
    assert books.problems() == []


def test_a_partial_refund_after_a_reversed_clawback_verifies_clean(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="p1")
    books.refund("acme", "inv-1", "250.00", "2026-01-20", event_id="r1")
    books.reverse(books.tx("r1", "clawback"))
    books.refund("acme", "inv-1", "250.00", "2026-01-21", event_id="r2")
    assert books.problems() == []


def test_chargebacks_and_won_disputes_around_a_reversed_reinstatement_verify_clean(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="p1")
    books.chargeback("acme", "inv-1", "1000.00", "2026-01-20", event_id="c1")
    books.dispute_won("acme", "inv-1", "400.00", "2026-01-25", event_id="w1")
    books.reverse(books.tx("w1", "accrual"))
    books.chargeback("acme", "inv-1", "400.00", "2026-01-27", event_id="c2")
    books.dispute_won("acme", "inv-1", "600.00", "2026-01-28", event_id="w2")
    assert books.problems() == []


def test_a_refund_dated_before_a_released_piece_matured_verifies_clean(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="p1")
    books.release("2026-03-01")
    books.refund("acme", "inv-1", "250.00", "2026-01-20", event_id="r1")
    books.reverse(books.tx("r1", "clawback", "dist"))
    books.refund("acme", "inv-1", "250.00", "2026-02-20", event_id="r2")
    assert books.problems() == []


def test_refunds_delivered_after_later_dated_events_verify_clean(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="p1")
    books.chargeback("acme", "inv-1", "600.00", "2026-02-10", event_id="c1")
    books.dispute_won("acme", "inv-1", "200.00", "2026-02-20", event_id="w1")
    books.release("2026-03-15")
    books.refund("acme", "inv-1", "200.00", "2026-01-15", event_id="r1")
    books.refund("acme", "inv-1", "400.00", "2026-03-01", event_id="r2")
    assert books.problems() == []


def small_invoice_with_chargebacks_dated_after_its_won_dispute(books) -> None:
    """An accrual of 0.25 on 2.50 at 10%: chargebacks of 0.75, 0.75 and 1.00 dated the 5th, 7th and
    8th, then a dispute of 0.75 won on the 6th, delivered last."""
    books.plan("tenth", "0.10", hold_days=30)
    books.partner("contoso", "tenth")
    books.attribute("globex", "contoso", "2026-01-01")
    books.paid("globex", "inv-1", "2.50", "2026-01-01", event_id="p1")
    books.chargeback("globex", "inv-1", "0.75", "2026-01-05", event_id="c1")
    books.chargeback("globex", "inv-1", "0.75", "2026-01-07", event_id="c2")
    books.chargeback("globex", "inv-1", "1.00", "2026-01-08", event_id="c3")
    books.dispute_won("globex", "inv-1", "0.75", "2026-01-06", event_id="w1")


def test_a_won_dispute_delivered_after_chargebacks_dated_after_it_verifies_clean(books):
    small_invoice_with_chargebacks_dated_after_its_won_dispute(books)
    # In time order 0.08 clawed, 0.08 restored, 0.08 and 0.10 clawed: 0.07 stays owed. Delivered last,
    # the third chargeback was capped at 0.09, and the dispute's share (0.08) would leave 0.08.
    assert books.balance("contoso") == (7, 0)
    assert books.problems() == []


def test_a_late_won_dispute_that_restored_its_share_as_the_service_once_did_verifies_clean(books, monkeypatch):
    # Books recorded before a late dispute restored what time order leaves: its share, by the rule of
    # a dispute delivered in time order, is the rules' too.
    original = revenue.dispute_reinstatements
    monkeypatch.setattr(revenue, "dispute_reinstatements", lambda *args, dated=None: original(*args))
    small_invoice_with_chargebacks_dated_after_its_won_dispute(books)
    assert books.balance("contoso") == (8, 0)
    assert books.problems() == []


def invoice_wholly_refunded_until_a_won_dispute_then_a_late_refund(books) -> None:
    books.plan("fifth", "0.20", hold_days=30)
    books.partner("initech", "fifth")
    books.attribute("globex", "initech", "2026-01-01")
    books.paid("globex", "inv-1", "3.33", "2026-01-10")  # 0.67
    books.refund("globex", "inv-1", "1.66", "2026-01-11")
    books.chargeback("globex", "inv-1", "1.66", "2026-01-12")
    books.dispute_won("globex", "inv-1", "0.33", "2026-01-15")
    books.refund("globex", "inv-1", "0.01", "2026-01-13", event_id="r-late")  # wholly refunded until the 15th


def test_a_late_refund_taking_what_time_order_leaves_clawed_verifies_clean(books):
    invoice_wholly_refunded_until_a_won_dispute_then_a_late_refund(books)
    assert books.balance("initech") == (7, 0) and books.problems() == []


def test_a_late_refund_that_took_its_share_as_the_service_once_did_verifies_clean(books, monkeypatch):
    original = revenue.refund_clawbacks
    monkeypatch.setattr(revenue, "refund_clawbacks", lambda *args, dated=None: original(*args))
    invoice_wholly_refunded_until_a_won_dispute_then_a_late_refund(books)
    assert books.balance("initech") == (8, 0) and books.problems() == []


def test_a_late_won_dispute_restoring_neither_its_share_nor_what_time_order_leaves_is_named(books):
    small_invoice_with_chargebacks_dated_after_its_won_dispute(books)
    restored = books.tx("w1", "accrual", "contoso")
    with behind_the_triggers(books.database) as execute:
        execute(f"UPDATE journal_lines SET amount_minor = amount_minor + 2 WHERE transaction_id = {restored}")
    assert "clawback_unlike_rules" in {code for code, _ in books.problems()}


def test_a_completing_refund_dated_before_an_earlier_delivered_one_verifies_clean(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="p1")
    books.refund("acme", "inv-1", "600.00", "2026-02-20", event_id="r1")
    books.release("2026-02-15")
    books.refund("acme", "inv-1", "400.00", "2026-01-15", event_id="r2")
    assert books.problems() == []


def test_events_dated_into_a_closed_period_verify_clean(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="p1")
    books.close("2026-01")
    books.refund("acme", "inv-1", "250.00", "2026-01-20", event_id="r1")
    books.chargeback("acme", "inv-1", "750.00", "2026-01-21", event_id="c1")
    books.dispute_won("acme", "inv-1", "750.00", "2026-01-22", event_id="w1")
    assert books.problems() == []


def test_a_won_dispute_after_a_reversed_cpa_clawback_verifies_clean(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="p1")
    books.chargeback("acme", "inv-1", "1000.00", "2026-01-20", event_id="c1")
    books.reverse(books.tx("c1", "clawback"))
    books.dispute_won("acme", "inv-1", "500.00", "2026-01-25", event_id="w1")
    assert books.problems() == []


def test_several_events_of_an_invoice_in_one_batch_verify_clean(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="p1")
    books.ingest(books.event("chargeback", "acme", "inv-1", "1000.00", "2026-01-20", event_id="c1"),
                 books.event("chargeback_reversed", "acme", "inv-1", "300.00", "2026-01-21", event_id="w1"),
                 books.event("refund", "acme", "inv-1", "300.00", "2026-01-22", event_id="r1"))
    assert books.problems() == []


def test_a_deep_hierarchy_changed_after_its_payments_with_changes_dated_back_verifies_clean(books):
    books.plan("top", "0", override=("0.05", "revenue"), hold_days=0)
    books.partner("a1", "top", type="distributor")
    books.partner("a2", "parent", parent="a1", type="distributor")
    books.partner("a3", "parent", parent="a2", type="distributor")
    books.partner("a4", "parent", parent="a3", type="distributor")
    books.partner("leaf", "msp", parent="a4")
    books.attribute("zeta", "leaf", "2026-01-01")
    books.paid("zeta", "inv-z1", "1000.00", "2026-02-10", event_id="z1")
    books.status("a2", "terminated", "2026-02-01")           # dated back before z1, recorded after it
    books.plan_version("top", "2026-02-01", "0", override=("0.50", "revenue"), hold_days=0)
    books.change_plan("leaf", "parent", "2026-02-05")
    books.paid("zeta", "inv-z2", "1000.00", "2026-02-11", event_id="z2")
    books.refund("zeta", "inv-z1", "500.00", "2026-02-12", event_id="zr1")
    books.chargeback("zeta", "inv-z2", "1000.00", "2026-02-13", event_id="zc2")
    books.dispute_won("zeta", "inv-z2", "1000.00", "2026-02-14", event_id="zw2")
    assert books.problems() == []


def test_a_full_refund_after_a_reversed_cpa_and_a_later_payment_verify_clean(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="p1")
    books.reverse(books.tx("p1", "cpa"))
    books.refund("acme", "inv-1", "1000.00", "2026-01-20", event_id="r1")
    books.paid("acme", "inv-2", "1000.00", "2026-01-11", event_id="p2")  # the CPA stays claimed by p1
    assert books.problems() == []


def test_reattribution_restarting_the_window_and_a_suspension_dated_back_verify_clean(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="p1")
    books.status("northwind", "suspended", "2026-01-05")      # dated back: p1 stays as decided
    books.attribute("acme", "dist", "2026-03-01", replace=True)
    books.paid("acme", "inv-2", "1000.00", "2026-03-10", event_id="p2")
    books.attribute("acme", "dist", "2026-04-01", replace=True)
    books.paid("acme", "inv-3", "1000.00", "2026-04-10", event_id="p3")
    books.refund("acme", "inv-1", "1000.00", "2026-04-11", event_id="r1")
    assert books.problems() == []


def test_two_servers_five_minutes_either_side_of_the_database_verify_clean(books):
    """Program changes and payments by two servers whose clocks are within five minutes of the
    database's each, in opposite directions (recorded ten minutes apart at most)."""
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="p1")
    books.clock.offset_us += 5 * MINUTE_US - STEP_US          # the fast server, right after p1
    books.plan_version("msp", "2026-01-05", "0.50", hold_days=30)
    books.clock.offset_us -= 10 * MINUTE_US + STEP_US - MINUTE_US  # the slow server, a minute later
    books.paid("acme", "inv-2", "1000.00", "2026-01-11", event_id="p2")
    books.refund("acme", "inv-2", "100.00", "2026-01-12", event_id="r2")
    assert books.problems() == []
