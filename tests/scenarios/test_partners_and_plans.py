"""Dated partner facts and plan versions: a terminated partner earns nothing on revenue after its
termination (but still owes its clawbacks); a suspended one still accrues; every accrual pins the
plan version in effect at its event's instant; a partner's plan change applies from its date.

SQLite only: these rules run in Python, identically on both engines; the engine-sensitive
scenarios (worked example, refunds and holds, exactly-once, database holds) and the property
test run on PostgreSQL as well.
"""

import pytest

from ledger import payouts, plans
from ledger.errors import Conflict, InvalidInput
from tests.scenarios.books import Books, at, commissions, terms


@pytest.fixture
def books(sqlite_database) -> Books:
    books = Books(sqlite_database)
    books.plan("standard", "0.20", duration_months=None, hold_days=30)
    books.plan("gold", "0.30", duration_months=None, hold_days=5)
    books.partner("northwind", "standard")
    books.attribute("acme", "northwind", "2026-01-01")
    return books


def pinned(books: Books, transaction_id: int) -> int:
    return books.sql("SELECT plan_version_id FROM journal_transactions WHERE id = :t", t=transaction_id)[0][0]


def test_a_terminated_partner_earns_nothing_after_termination_but_still_owes_its_clawbacks(books):
    books.paid("acme", "inv-1", "100.00", "2026-01-10")
    books.status("northwind", "terminated", "2026-02-01")
    assert commissions(books.paid("acme", "inv-2", "100.00", "2026-01-31T23:59:59.999999Z")) == \
        [("northwind", "accrual", 2_000)]
    after = books.paid("acme", "inv-3", "100.00", "2026-02-01")
    assert (after.status, after.commissions) == ("no_commission", ())
    assert commissions(books.refund("acme", "inv-1", "100.00", "2026-02-02")) == [("northwind", "clawback", -2_000)]
    assert books.balance("northwind") == (2_000, 0)
    with pytest.raises(Conflict):
        books.status("northwind", "active", "2026-03-01")  # termination is final


def test_a_suspended_partner_still_accrues_and_earns_again_after_reactivation(books):
    books.status("northwind", "suspended", "2026-02-01")
    assert commissions(books.paid("acme", "inv-1", "100.00", "2026-02-10")) == [("northwind", "accrual", 2_000)]
    books.status("northwind", "active", "2026-03-01")
    assert commissions(books.paid("acme", "inv-2", "100.00", "2026-03-10")) == [("northwind", "accrual", 2_000)]


def test_a_status_change_cannot_start_before_the_current_status(books):
    books.status("northwind", "suspended", "2026-02-01")
    with pytest.raises(Conflict) as refused:
        books.status("northwind", "active", "2026-01-31")
    assert "effective_at" in refused.value.fields


def test_each_accrual_pins_the_plan_version_in_effect_when_its_revenue_occurred(books):
    v1 = books.sql("SELECT id FROM plan_versions WHERE plan_id = 'standard'")[0][0]
    v2 = books.plan_version("standard", "2026-03-01", "0.25", duration_months=None, hold_days=10)
    before = books.paid("acme", "inv-1", "100.00", "2026-02-28T23:59:59.999999Z")
    after = books.paid("acme", "inv-2", "100.00", "2026-03-01")
    assert commissions(before) == [("northwind", "accrual", 2_000)]
    assert commissions(after) == [("northwind", "accrual", 2_500)]
    assert (pinned(books, before.transaction_ids[0]), pinned(books, after.transaction_ids[0])) == (v1, v2)
    assert books.sql("SELECT matures_at_us FROM journal_transactions WHERE id = :t",
                     t=after.transaction_ids[0])[0][0] == at("2026-03-11")  # the new version's 10 days
    # A clawback of the older invoice names the version its accrual was earned under.
    [clawback] = books.refund("acme", "inv-1", "100.00", "2026-03-02").transaction_ids
    assert pinned(books, clawback) == v1


def test_a_plan_version_must_start_after_the_latest_one(books):
    books.plan_version("standard", "2026-03-01", "0.25")
    for start in ("2026-03-01", "2026-02-01"):
        with pytest.raises(Conflict) as refused:
            books.plan_version("standard", start, "0.30")
        assert "effective_from" in refused.value.fields


def test_a_partner_plan_change_applies_to_revenue_from_its_date(books):
    books.change_plan("northwind", "gold", "2026-04-01")
    assert commissions(books.paid("acme", "inv-1", "100.00", "2026-03-31T23:59:59.999999Z")) == \
        [("northwind", "accrual", 2_000)]
    gold = books.paid("acme", "inv-2", "100.00", "2026-04-01")
    assert commissions(gold) == [("northwind", "accrual", 3_000)]
    assert books.sql("SELECT matures_at_us FROM journal_transactions WHERE id = :t",
                     t=gold.transaction_ids[0])[0][0] == at("2026-04-06")
    with pytest.raises(Conflict):
        books.change_plan("northwind", "standard", "2026-04-01")


def test_a_partner_cannot_change_to_a_plan_before_the_plan_starts(books):
    # Between the change and the plan's first version the partner would have no plan at all: its
    # revenue would earn nothing and a payout run would pay any balance, below either minimum.
    with books.database.transaction() as session:
        plans.create_plan(session, "spring", "Spring", terms("0.30"), at("2026-04-01"))
    with pytest.raises(InvalidInput) as refused:
        books.change_plan("northwind", "spring", "2026-03-01")
    assert set(refused.value.fields) == {"effective_from"}
    assert "2026-04-01T00:00:00Z" in refused.value.fields["effective_from"][0]
    assert commissions(books.paid("acme", "inv-1", "100.00", "2026-03-10")) == [("northwind", "accrual", 2_000)]
    books.change_plan("northwind", "spring", "2026-04-01")
    assert commissions(books.paid("acme", "inv-2", "100.00", "2026-04-01")) == [("northwind", "accrual", 3_000)]


def test_a_won_dispute_restores_to_a_terminated_partner_what_a_chargeback_took_and_no_run_pays_it(books):
    books.paid("acme", "inv-1", "100.00", "2026-01-10")
    assert commissions(books.chargeback("acme", "inv-1", "100.00", "2026-01-12")) == [("northwind", "clawback", -2_000)]
    books.status("northwind", "terminated", "2026-01-15")
    assert commissions(books.dispute_won("acme", "inv-1", "100.00", "2026-01-20")) == [("northwind", "accrual", 2_000)]
    with books.database.transaction() as session:
        assert payouts.run_payouts(session, at("2026-03-01")).payouts == ()
    assert books.balance("northwind") == (0, 2_000)


def test_a_partner_whose_plan_has_not_begun_is_not_paid_until_it_has_and_then_by_its_minimum(books):
    with books.database.transaction() as session:
        plans.create_plan(session, "spring", "Spring", terms("0.30", min_payout={"USD": "50.00"}), at("2026-04-01"))
    books.partner("bloom", "spring")
    with books.database.transaction() as session:
        payouts.adjust(session, "bloom", "available", 1_000, "USD", "goodwill", effective_at_us=at("2026-02-01"))
    with books.database.transaction() as session:
        assert payouts.run_payouts(session, at("2026-03-01")).payouts == ()  # no plan yet, no minimum known
    with books.database.transaction() as session:
        assert payouts.run_payouts(session, at("2026-04-01")).payouts == ()  # 10.00 under spring's 50.00
    with books.database.transaction() as session:
        payouts.adjust(session, "bloom", "available", 4_000, "USD", "goodwill", effective_at_us=at("2026-04-02"))
        [paid] = payouts.run_payouts(session, at("2026-04-03")).payouts
    assert (paid.partner_id, paid.amount_minor) == ("bloom", 5_000)
