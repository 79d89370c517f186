"""Attribution windows at exact calendar-month edges, step-down rates, and revenue that earns
nothing: before the attribution starts, after the window ends, or from a customer no partner has.

SQLite only: these rules run in Python, identically on both engines; the engine-sensitive
scenarios (worked example, refunds and holds, exactly-once, database holds) and the property
test run on PostgreSQL as well.
"""

import pytest

from tests.scenarios.books import Books, commissions


@pytest.fixture
def books(sqlite_database) -> Books:
    books = Books(sqlite_database)
    books.plan("one-month", "0.20", duration_months=1)
    books.plan("step-down", rates=[(1, "0.40"), (2, "0.20"), (3, "0.10")], duration_months=3)
    books.partner("northwind", "one-month")
    books.partner("contoso", "step-down")
    books.attribute("acme", "northwind", "2026-01-31")
    books.attribute("globex", "contoso", "2026-01-31")
    return books


def test_a_one_month_window_from_the_31st_ends_at_february_28_exactly(books):
    last = books.paid("acme", "inv-1", "100.00", "2026-02-27T23:59:59.999999Z")
    at_end = books.paid("acme", "inv-2", "100.00", "2026-02-28T00:00:00Z")
    assert (last.status, commissions(last)) == ("posted", [("northwind", "accrual", 2_000)])
    assert (at_end.status, at_end.commissions, at_end.transaction_ids) == ("no_commission", (), ())
    assert books.balance("northwind") == (2_000, 0)


def test_the_step_down_rate_switches_exactly_at_each_month_boundary_of_the_window(books):
    cases = [("2026-01-31T00:00:00Z", 4_000), ("2026-02-27T23:59:59.999999Z", 4_000),
             ("2026-02-28T00:00:00Z", 2_000), ("2026-03-30T23:59:59.999999Z", 2_000),  # month 3 starts March 31
             ("2026-03-31T00:00:00Z", 1_000), ("2026-04-29T23:59:59.999999Z", 1_000)]
    for number, (instant, expected) in enumerate(cases):
        outcome = books.paid("globex", f"inv-{number}", "100.00", instant)
        assert commissions(outcome) == [("contoso", "accrual", expected)], instant
    assert books.paid("globex", "inv-end", "100.00", "2026-04-30T00:00:00Z").status == "no_commission"
    assert books.balance("contoso") == (14_000, 0)


def test_revenue_before_the_attribution_starts_earns_nothing_and_says_no_commission(books):
    # The customer is attributed, from a later date: "no commission" tells billing the revenue was
    # seen and matched, which "unattributed" (no partner at all) would not.
    early = books.paid("acme", "inv-early", "100.00", "2026-01-30T23:59:59.999999Z")
    assert (early.status, early.commissions) == ("no_commission", ())
    refund = books.refund("acme", "inv-early", "100.00", "2026-02-05")
    assert (refund.status, refund.commissions) == ("no_commission", ())
    first_day = books.paid("acme", "inv-first", "100.00", "2026-01-31")
    assert commissions(first_day) == [("northwind", "accrual", 2_000)]


def test_a_customer_no_partner_has_is_unattributed_and_so_are_its_refunds(books):
    paid = books.paid("initech", "inv-9", "100.00", "2026-02-01")
    refund = books.refund("initech", "inv-9", "40.00", "2026-02-02")
    assert (paid.status, paid.commissions) == ("unattributed", ())
    assert (refund.status, refund.commissions) == ("unattributed", ())
    assert books.sql("SELECT count(*) FROM journal_transactions")[0][0] == 0


def test_an_attribution_recorded_later_does_not_reach_back_to_revenue_already_posted(books):
    assert books.paid("initech", "inv-9", "100.00", "2026-02-01").status == "unattributed"
    books.attribute("initech", "northwind", "2026-01-31")
    refund = books.refund("initech", "inv-9", "100.00", "2026-02-10")
    assert (refund.status, refund.commissions) == ("unattributed", ())
    assert books.paid("initech", "inv-10", "100.00", "2026-02-11").status == "posted"
