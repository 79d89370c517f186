"""Multi-level overrides: a distributor earning a share of revenue over an MSP earning a share of
its affiliate's commission; terminated ancestors are skipped; clawbacks cascade to every level that
earned; the hierarchy is at most five deep.

SQLite only: these rules run in Python, identically on both engines; the engine-sensitive
scenarios (worked example, refunds and holds, exactly-once, database holds) and the property
test run on PostgreSQL as well.
"""

import pytest

from ledger.errors import InvalidInput
from ledger.partners import create_partner
from tests.scenarios.books import Books, commissions


@pytest.fixture
def books(sqlite_database) -> Books:
    books = Books(sqlite_database)
    books.plan("distributor", "0", override=("0.05", "revenue"), hold_days=60)
    books.plan("msp", "0.20", override=("0.10", "commission"), hold_days=10)
    books.plan("affiliate", "0.30", hold_days=30)
    books.partner("dist", "distributor", type="distributor")
    books.partner("msp", "msp", parent="dist")
    books.partner("aff", "affiliate", parent="msp", type="affiliate")
    books.attribute("acme", "aff", "2026-01-01")
    return books


def test_each_ancestor_earns_its_override_on_the_basis_its_plan_names(books):
    outcome = books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    assert commissions(outcome) == [
        ("aff", "accrual", 30_000),   # 30% of 1,000.00
        ("msp", "override", 3_000),   # 10% of the affiliate's commission of 300.00
        ("dist", "override", 5_000),  # 5% of the 1,000.00 invoice
    ]
    assert [books.balance(p) for p in ("aff", "msp", "dist")] == [(30_000, 0), (3_000, 0), (5_000, 0)]


def test_overrides_round_half_to_even_on_either_basis(books):
    outcome = books.paid("acme", "inv-1", "10.50", "2026-01-10")
    # 30% of 1,050 = 315; 10% of 315 = 31.5 -> 32 (up to even); 5% of 1,050 = 52.5 -> 52 (down to even)
    assert commissions(outcome) == [("aff", "accrual", 315), ("msp", "override", 32), ("dist", "override", 52)]


def test_each_override_is_held_for_the_days_of_the_plan_that_earns_it(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    rows = books.sql("SELECT partner_id, matures_at_us - effective_at_us AS held FROM journal_transactions ORDER BY id")
    assert [(row.partner_id, row.held // 86_400_000_000) for row in rows] == [("aff", 30), ("msp", 10), ("dist", 60)]


def test_a_customer_attributed_to_the_msp_itself_pays_the_msp_share_and_the_distributor_override(books):
    books.attribute("globex", "msp", "2026-01-01")
    assert commissions(books.paid("globex", "inv-9", "1000.00", "2026-01-10")) == [
        ("msp", "accrual", 20_000), ("dist", "override", 5_000)]


def test_a_terminated_ancestor_is_skipped_and_the_levels_above_it_still_earn(books):
    books.status("msp", "terminated", "2026-02-01")
    before = books.paid("acme", "inv-1", "1000.00", "2026-01-31T23:59:59.999999Z")
    after = books.paid("acme", "inv-2", "1000.00", "2026-02-01")
    assert [p for p, _, _ in commissions(before)] == ["aff", "msp", "dist"]
    assert commissions(after) == [("aff", "accrual", 30_000), ("dist", "override", 5_000)]


def test_when_the_attributed_partner_is_terminated_its_ancestors_earn_no_override_on_that_revenue(books):
    # Choice: an override is a share of a sub-partner's business; revenue the terminated affiliate
    # can no longer earn on is nobody's business in the channel until finance re-attributes the
    # customer, so the invoice earns nothing at all (no_commission).
    books.status("aff", "terminated", "2026-02-01")
    outcome = books.paid("acme", "inv-1", "1000.00", "2026-02-10")
    assert (outcome.status, outcome.commissions) == ("no_commission", ())
    books.attribute("acme", "msp", "2026-03-01", replace=True)
    assert commissions(books.paid("acme", "inv-2", "1000.00", "2026-03-10")) == [
        ("msp", "accrual", 20_000), ("dist", "override", 5_000)]


def test_a_suspended_ancestor_still_earns_its_override(books):
    books.status("msp", "suspended", "2026-02-01")
    outcome = books.paid("acme", "inv-1", "1000.00", "2026-02-10")
    assert [partner for partner, _, _ in commissions(outcome)] == ["aff", "msp", "dist"]


def test_clawbacks_cascade_proportionally_to_every_level_that_earned(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    refund = books.refund("acme", "inv-1", "333.33", "2026-01-12")
    # x 33,333/100,000: 30,000 -> 9,999.9 -> 10,000; 3,000 -> 999.99 -> 1,000; 5,000 -> 1,666.65 -> 1,667
    assert commissions(refund) == [("aff", "clawback", -10_000), ("msp", "clawback", -1_000),
                                   ("dist", "clawback", -1_667)]
    final = books.refund("acme", "inv-1", "666.67", "2026-01-13")
    assert commissions(final) == [("aff", "clawback", -20_000), ("msp", "clawback", -2_000),
                                  ("dist", "clawback", -3_333)]
    assert [books.balance(p) for p in ("aff", "msp", "dist")] == [(0, 0)] * 3


def test_a_five_level_chain_pays_four_overrides_and_a_sixth_level_is_refused(sqlite_database):
    books = Books(sqlite_database)
    books.plan("override", "0.10", override=("0.01", "revenue"))
    books.partner("level1", "override")
    for level in range(2, 6):
        books.partner(f"level{level}", "override", parent=f"level{level - 1}")
    books.attribute("acme", "level5", "2026-01-01")
    outcome = books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    assert commissions(outcome) == [("level5", "accrual", 10_000)] + [
        (f"level{level}", "override", 1_000) for level in (4, 3, 2, 1)]
    with pytest.raises(InvalidInput) as refused, sqlite_database.transaction() as session:
        create_partner(session, "level6", "level6", "affiliate", "override", parent_id="level5")
    assert "parent_id" in refused.value.fields


def test_an_override_that_rounds_to_nothing_is_not_posted(books):
    tiny = books.paid("acme", "inv-1", "0.09", "2026-01-10")  # 2.7 -> 3; overrides 0.3 and 0.45 -> 0
    assert (tiny.status, commissions(tiny)) == ("posted", [("aff", "accrual", 3)])
    assert books.balance("msp") == (0, 0) and books.balance("dist") == (0, 0)
