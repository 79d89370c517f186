"""Re-attribution: commission already earned stays with its earner and its clawbacks follow it (and
its overrides); new revenue accrues to the new partner. Disputes: a chargeback claws back, and a
won dispute (`chargeback_reversed`) accrues the amount again with a new hold. Refunds and disputes
delivered out of time order: limits, clawbacks and reinstatements decided by their instants.

Both engines: the rules run in Python, but the late-delivery cases read back the instants and
holds of what was posted before, through each engine.
"""

import pytest

from ledger import reversals
from ledger.errors import Conflict
from ledger.instants import format_instant
from tests.scenarios.books import Books, at, commissions
from tests.scenarios.closing import close, section, statement


@pytest.fixture
def books(database) -> Books:
    books = Books(database)
    books.plan("distributor", "0", override=("0.05", "revenue"))
    books.plan("msp", "0.20", hold_days=30)
    books.plan("var", "0.15", hold_days=10)
    books.partner("dist", "distributor", type="distributor")
    books.partner("northwind", "msp", parent="dist")
    books.partner("contoso", "var", type="var")
    books.attribute("acme", "northwind", "2026-01-01")
    return books


def test_after_re_attribution_old_refunds_claw_from_the_original_earner_and_new_invoices_accrue_to_the_new(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    books.attribute("acme", "contoso", "2026-02-01", replace=True)
    assert commissions(books.paid("acme", "inv-2", "1000.00", "2026-02-10")) == [("contoso", "accrual", 15_000)]
    old = books.refund("acme", "inv-1", "500.00", "2026-02-15")
    assert commissions(old) == [("northwind", "clawback", -10_000), ("dist", "clawback", -2_500)]
    new = books.refund("acme", "inv-2", "500.00", "2026-02-16")
    assert commissions(new) == [("contoso", "clawback", -7_500)]
    assert [books.balance(p, before="2026-02-17") for p in ("northwind", "dist", "contoso")] == [
        (0, 10_000), (0, 2_500), (7_500, 0)]  # inv-1's pieces matured 2026-02-09: released, then clawed


def test_revenue_dated_before_the_replacement_starts_still_belongs_to_the_original_partner(books):
    books.attribute("acme", "contoso", "2026-02-01", replace=True)
    late = books.paid("acme", "inv-jan", "100.00", "2026-01-31T23:59:59.999999Z")
    assert commissions(late) == [("northwind", "accrual", 2_000), ("dist", "override", 500)]


def test_re_attribution_without_replace_or_not_later_than_the_current_start_is_refused(books):
    with pytest.raises(Conflict):
        books.attribute("acme", "contoso", "2026-02-01")
    with pytest.raises(Conflict) as refused:
        books.attribute("acme", "contoso", "2026-01-01", replace=True)
    assert "effective_from" in refused.value.fields
    books.attribute("acme", "northwind", "2026-01-01")  # repeating the current attribution is a no-op


def test_a_won_dispute_reaccrues_with_a_new_hold_from_the_reversal_instant(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")  # 200.00 + override 50.00, mature 2026-02-09
    chargeback = books.chargeback("acme", "inv-1", "1000.00", "2026-01-20")
    assert commissions(chargeback) == [("northwind", "clawback", -20_000), ("dist", "clawback", -5_000)]
    assert books.balance("northwind") == (0, 0)
    won = books.dispute_won("acme", "inv-1", "1000.00", "2026-02-20")
    assert (won.status, commissions(won)) == ("posted", [("northwind", "accrual", 20_000), ("dist", "override", 5_000)])
    rows = books.sql("SELECT partner_id, accrual_id, matures_at_us FROM journal_transactions WHERE id IN (:a, :b)",
                     a=won.transaction_ids[0], b=won.transaction_ids[1])
    assert {(row.partner_id, row.matures_at_us) for row in rows} == {("northwind", at("2026-03-22")),
                                                                    ("dist", at("2026-03-22"))}
    assert all(row.accrual_id is not None for row in rows)  # each restores the accrual it was clawed from
    assert books.release("2026-03-21") == 0  # the original hold ended with nothing left in it
    assert books.balance("northwind") == (20_000, 0)
    assert books.release("2026-03-22") == 2
    assert books.balance_just_after("northwind", "2026-03-22") == (0, 20_000)
    assert books.balance("dist") == (0, 5_000)


def test_a_won_dispute_after_release_reaccrues_into_pending_again(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    books.release("2026-02-09")
    books.chargeback("acme", "inv-1", "400.00", "2026-02-15")  # 8,000 from available
    assert books.balance("northwind") == (0, 12_000)
    won = books.dispute_won("acme", "inv-1", "400.00", "2026-02-25")
    assert commissions(won)[0] == ("northwind", "accrual", 8_000)
    assert books.balance("northwind") == (8_000, 12_000)
    books.release("2026-03-27")
    assert books.balance("northwind") == (0, 20_000)


def test_the_release_of_a_won_disputes_reinstatement_names_the_dispute_that_accrued_it(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="evt-paid")
    books.release("2026-02-09")
    books.chargeback("acme", "inv-1", "400.00", "2026-02-15", event_id="evt-chargeback")
    books.dispute_won("acme", "inv-1", "400.00", "2026-02-25", event_id="evt-won")
    assert books.release("2026-03-27") == 2
    assert books.release_events("inv-1") == [("northwind", "evt-paid"), ("dist", "evt-paid"),
                                             ("northwind", "evt-won"), ("dist", "evt-won")]
    march = section(statement(books.database, "northwind", "2026-03"))["lines"]
    assert [(line["kind"], line["invoice_id"], line["event_id"], line["pending"], line["available"])
            for line in march] == [("release", "inv-1", "evt-won", "-80.00", "80.00")]
    assert books.verified()


def test_a_won_dispute_beside_a_refund_restores_only_the_chargebacks_share(books):
    books.paid("acme", "inv-1", "300.00", "2026-01-10")  # 6,000
    books.refund("acme", "inv-1", "100.00", "2026-01-11")  # 2,000
    books.chargeback("acme", "inv-1", "200.00", "2026-01-12")  # completes the invoice: the remaining 4,000
    won = books.dispute_won("acme", "inv-1", "200.00", "2026-01-13")
    assert commissions(won)[0] == ("northwind", "accrual", 4_000)
    final = books.refund("acme", "inv-1", "200.00", "2026-01-14")
    assert commissions(final)[0] == ("northwind", "clawback", -4_000)
    assert books.balance("northwind") == (0, 0)


def test_a_dispute_can_only_be_won_for_what_is_charged_back(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    books.refund("acme", "inv-1", "300.00", "2026-01-11")
    assert list(books.refused("chargeback_reversed", "acme", "inv-1", "1.00", "2026-01-12").error.fields) == \
        ["amount.amount"]
    books.chargeback("acme", "inv-1", "200.00", "2026-01-13")
    assert list(books.refused("chargeback_reversed", "acme", "inv-1", "200.01", "2026-01-14").error.fields) == \
        ["amount.amount"]
    assert books.dispute_won("acme", "inv-1", "200.00", "2026-01-14").status == "posted"
    # the refunds and the reversed chargeback leave 700.00 refundable
    assert list(books.refused("refund", "acme", "inv-1", "700.01", "2026-01-15").error.fields) == ["amount.amount"]
    books.refund("acme", "inv-1", "700.00", "2026-01-15")
    assert books.balance("northwind") == (0, 0) and books.balance("dist") == (0, 0)


def test_a_dispute_cannot_be_won_before_its_chargeback(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    books.chargeback("acme", "inv-1", "300.00", "2026-01-13")
    books.chargeback("acme", "inv-1", "200.00", "2026-01-20")
    assert list(books.refused("chargeback_reversed", "acme", "inv-1", "300.00", "2026-01-12").error.fields) == \
        ["occurred_at"]
    # Between the two chargebacks only the first is there to reverse; at the second's instant, both.
    assert list(books.refused("chargeback_reversed", "acme", "inv-1", "300.01", "2026-01-15").error.fields) == \
        ["occurred_at"]
    assert books.dispute_won("acme", "inv-1", "300.00", "2026-01-15").status == "posted"
    assert books.dispute_won("acme", "inv-1", "200.00", "2026-01-20").status == "posted"


def test_the_cpa_clawed_by_a_full_chargeback_comes_back_when_the_dispute_is_won(database):
    books = Books(database)
    books.plan("hybrid", "0.10", cpa={"USD": "150.00"})
    books.partner("northwind", "hybrid")
    books.attribute("acme", "northwind", "2026-01-01")
    books.paid("acme", "inv-1", "500.00", "2026-01-10")
    books.refund("acme", "inv-1", "100.00", "2026-01-11")  # 1,000 of 5,000
    assert commissions(books.chargeback("acme", "inv-1", "400.00", "2026-01-12")) == [
        ("northwind", "clawback", -4_000), ("northwind", "clawback", -15_000)]
    won = books.dispute_won("acme", "inv-1", "400.00", "2026-01-13")
    assert commissions(won) == [("northwind", "accrual", 4_000), ("northwind", "cpa", 15_000)]
    assert books.balance("northwind") == (19_000, 0)


def test_a_won_dispute_covering_several_chargebacks_restores_exactly_what_they_clawed(books):
    books.plan("half", "0.50")
    books.partner("fabrikam", "half")
    books.attribute("globex", "fabrikam", "2026-01-01")
    books.paid("globex", "inv-1", "0.10", "2026-01-10")  # accrual 5 cents
    assert [commissions(books.chargeback("globex", "inv-1", "0.03", f"2026-01-1{day}"))[0][2] for day in (1, 2)] == \
        [-2, -2]  # 1.5 -> 2 each
    won = books.dispute_won("globex", "inv-1", "0.06", "2026-01-13")
    # Nothing is refunded any more: every clawed cent comes back (a fresh proportional share, 3, would not).
    assert commissions(won) == [("fabrikam", "accrual", 4)]
    assert books.balance("fabrikam") == (5, 0)


def test_a_won_dispute_never_restores_more_than_was_clawed_back(books):
    books.plan("half", "0.50")
    books.partner("fabrikam", "half")
    books.attribute("globex", "fabrikam", "2026-01-01")
    books.paid("globex", "inv-1", "1.00", "2026-01-10")  # accrual 50 cents
    for day in (11, 12, 13):
        assert books.chargeback("globex", "inv-1", "0.01", f"2026-01-{day}").commissions == ()  # 0.5 -> 0 each
    assert commissions(books.refund("globex", "inv-1", "0.02", "2026-01-14")) == [("fabrikam", "clawback", -1)]
    won = books.dispute_won("globex", "inv-1", "0.03", "2026-01-15")
    # Its proportional share would be 1.5 -> 2 cents, but only 1 cent was clawed: 1 comes back.
    assert commissions(won) == [("fabrikam", "accrual", 1)]
    assert books.balance("fabrikam") == (50, 0)


def test_a_late_refund_dated_before_a_reinstatement_claws_from_the_accrual_it_was_dated_after(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")  # 20,000, matures 2026-02-09
    books.release("2026-02-10")
    books.chargeback("acme", "inv-1", "500.00", "2026-02-15")  # 10,000 from available
    books.dispute_won("acme", "inv-1", "500.00", "2026-03-01")  # reinstated 10,000, held until 2026-03-31
    refund = books.refund("acme", "inv-1", "500.00", "2026-02-20")  # delivered late
    # On 2026-02-20 the reinstatement was not yet accrued: the refund claws what was left of the
    # released accrual, from available; the reinstatement stays pending.
    assert commissions(refund) == [("northwind", "clawback", -10_000), ("dist", "clawback", -2_500)]
    assert books.sql("SELECT a.name FROM journal_lines l JOIN accounts a ON a.id = l.account_id "
                     "WHERE l.transaction_id = :t AND l.side = 'D'", t=refund.transaction_ids[0])[0].name == \
        "liability:partner:northwind:available"
    for partner_id in ("northwind", "dist"):
        for instant in ("2026-02-20", "2026-02-28", "2026-03-01"):
            pending, available = books.balance_just_after(partner_id, instant)
            assert pending >= 0 and available >= 0, (partner_id, instant, pending, available)
    assert books.balance("northwind") == (10_000, 0) and books.balance("dist") == (2_500, 0)
    assert books.trial_balance_is_zero() and books.verified()


def test_a_late_refund_in_a_closed_month_claws_from_the_accrual_it_was_dated_after_not_the_reinstatement(books):
    # The same, with February and March closed before the two late events: both are posted at April's
    # start, where the journal no longer tells that the refund (Feb 20) came before the reinstatement
    # (Mar 1). Decided by the posted instants, the refund clawed the held reinstatement, and a payout
    # run on April 2 paid out what was still held until March 31 + 30 days.
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")  # 20,000, matures 2026-02-09
    books.release("2026-02-10")
    books.chargeback("acme", "inv-1", "500.00", "2026-02-15")  # 10,000 from available
    for period in ("2026-01", "2026-02", "2026-03"):
        close(books.database, period, now="2026-04-01T01:00:00Z")
    books.dispute_won("acme", "inv-1", "500.00", "2026-03-01")  # 10,000 at April's start, held until 2026-03-31
    refund = books.refund("acme", "inv-1", "500.00", "2026-02-20")
    assert commissions(refund) == [("northwind", "clawback", -10_000), ("dist", "clawback", -2_500)]
    assert books.sql("SELECT a.name FROM journal_lines l JOIN accounts a ON a.id = l.account_id "
                     "WHERE l.transaction_id = :t AND l.side = 'D'", t=refund.transaction_ids[0])[0].name == \
        "liability:partner:northwind:available"
    assert books.balance_just_after("northwind", "2026-04-01") == (10_000, 0)
    assert books.balance_just_after("dist", "2026-04-01") == (2_500, 0)
    assert books.trial_balance_is_zero() and books.verified()


def test_a_refund_dated_while_the_invoice_was_wholly_charged_back_is_refused_naming_the_instant(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    books.chargeback("acme", "inv-1", "1000.00", "2026-01-15")
    books.dispute_won("acme", "inv-1", "1000.00", "2026-01-25")
    before = books.balance("northwind"), books.sql("SELECT count(*) FROM journal_transactions")[0][0]
    refusal = books.refused("refund", "acme", "inv-1", "100.00", "2026-01-20")
    assert list(refusal.error.fields) == ["occurred_at"]
    assert "2026-01-20T00:00:00Z" in refusal.error.fields["occurred_at"][0]
    assert (books.balance("northwind"), books.sql("SELECT count(*) FROM journal_transactions")[0][0]) == before
    # Dated before the chargeback, the refund and the chargeback would exceed the paid amount at 01-15.
    refusal = books.refused("refund", "acme", "inv-1", "100.00", "2026-01-12")
    assert "2026-01-15T00:00:00Z" in refusal.error.fields["occurred_at"][0]
    assert commissions(books.refund("acme", "inv-1", "100.00", "2026-01-25"))[0] == ("northwind", "clawback", -2_000)
    assert books.balance("northwind") == (18_000, 0)


def test_a_won_dispute_may_not_be_dated_where_a_later_won_dispute_leaves_less_charged_back(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    books.chargeback("acme", "inv-1", "300.00", "2026-01-13")
    books.dispute_won("acme", "inv-1", "300.00", "2026-01-15")
    books.chargeback("acme", "inv-1", "300.00", "2026-01-20")
    # 300.00 is charged back at 01-14 and again at the end, but nothing between 01-15 and 01-20.
    refusal = books.refused("chargeback_reversed", "acme", "inv-1", "300.00", "2026-01-14")
    assert list(refusal.error.fields) == ["occurred_at"]
    assert "0.00 is charged back and not yet reversed at 2026-01-15T00:00:00Z" in refusal.error.fields["occurred_at"][0]
    assert books.dispute_won("acme", "inv-1", "300.00", "2026-01-20").status == "posted"
    assert books.balance("northwind") == (20_000, 0)


def test_a_late_refund_leaves_the_release_of_a_reinstatement_accrued_after_its_instant_alone(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    books.release("2026-02-10")
    books.chargeback("acme", "inv-1", "500.00", "2026-02-15")
    books.dispute_won("acme", "inv-1", "500.00", "2026-03-01")
    books.release("2026-04-01")  # the reinstatement matured 2026-03-31
    [(before,)] = books.sql("SELECT max(id) FROM journal_transactions")
    books.refund("acme", "inv-1", "500.00", "2026-02-20")
    # Only the clawbacks: the reinstatement was neither accrued nor held on 2026-02-20, so its
    # release is not undone and posted again.
    assert [kind for kind, in books.sql("SELECT kind FROM journal_transactions WHERE id > :t ORDER BY id",
                                        t=before)] == ["clawback", "clawback"]
    assert books.balance("northwind") == (0, 10_000) and books.balance("dist") == (0, 2_500)
    assert books.trial_balance_is_zero() and books.verified()


def never_negative(books: Books, *partner_ids: str) -> None:
    """Neither account of the partners is below zero just after any instant the journal has a line at."""
    for partner_id in partner_ids:
        for (instant_us,) in books.sql("SELECT DISTINCT effective_at_us FROM journal_lines ORDER BY 1"):
            pending, available = books.balance_just_after(partner_id, format_instant(instant_us))
            assert pending >= 0 and available >= 0, (partner_id, format_instant(instant_us), pending, available)


def clawback_instants(books: Books, event_id: str) -> list[tuple[str, str, int]]:
    return [(row.partner_id, row.account.rsplit(":", 1)[1], row.effective_at_us) for row in books.sql(
        "SELECT t.partner_id, a.name AS account, t.effective_at_us FROM journal_transactions t"
        " JOIN journal_lines l ON l.transaction_id = t.id AND l.side = 'D' JOIN accounts a ON a.id = l.account_id"
        " WHERE t.event_id = :e AND t.kind = 'clawback' ORDER BY t.id", e=event_id)]


def test_what_a_late_refund_takes_from_a_later_reinstatement_is_taken_when_it_reaches_pending(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    books.release("2026-02-10")
    books.chargeback("acme", "inv-1", "500.00", "2026-02-15")
    books.chargeback("acme", "inv-1", "500.00", "2026-03-10")  # the accrual is wholly clawed, dated after the refund
    books.dispute_won("acme", "inv-1", "500.00", "2026-03-01")  # delivered late: reinstates 10,000 at 03-01
    refund = books.refund("acme", "inv-1", "500.00", "2026-02-20")  # delivered last
    # Only the reinstatement has anything left; it reaches pending on 03-01, and is clawed then.
    assert commissions(refund) == [("northwind", "clawback", -10_000), ("dist", "clawback", -2_500)]
    assert clawback_instants(books, refund.event_id) == [("northwind", "pending", at("2026-03-01")),
                                                          ("dist", "pending", at("2026-03-01"))]
    never_negative(books, "northwind", "dist")
    assert books.balance("northwind") == (0, 0) and books.balance("dist") == (0, 0)
    assert books.trial_balance_is_zero() and books.verified()


@pytest.mark.parametrize("job_ran", [False, True], ids=["held", "released-by-a-job"])
def test_what_a_late_refund_takes_from_a_later_reinstatement_does_not_depend_on_a_release_job(books, job_ran):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    books.release("2026-02-10")
    books.chargeback("acme", "inv-1", "500.00", "2026-02-15")
    books.refund("acme", "inv-1", "500.00", "2026-03-10")
    books.dispute_won("acme", "inv-1", "500.00", "2026-03-01")  # 10,000, held until 03-31
    if job_ran:
        books.release("2026-04-01")
    refund = books.refund("acme", "inv-1", "500.00", "2026-02-20")
    # Held from 03-01 to 03-31 whatever a job did: clawed from pending at 03-01 (a release a job
    # posted is undone, and what is left released again at the maturity).
    assert clawback_instants(books, refund.event_id) == [("northwind", "pending", at("2026-03-01")),
                                                          ("dist", "pending", at("2026-03-01"))]
    books.release("2026-04-01")
    assert [books.balance_just_after("northwind", instant) for instant in
            ("2026-02-20", "2026-03-01", "2026-03-10", "2026-03-31")] == [(0, 10_000), (0, 10_000), (0, 0), (0, 0)]
    never_negative(books, "northwind", "dist")
    assert books.balance("northwind") == (0, 0) and books.balance("dist") == (0, 0)
    assert books.trial_balance_is_zero() and books.verified()


def test_a_late_refund_dated_before_a_won_dispute_takes_what_time_order_leaves_clawed_not_its_rounded_share(books):
    books.paid("acme", "inv-1", "0.60", "2026-01-10")  # northwind 12, dist 3 (5% of revenue)
    books.chargeback("acme", "inv-1", "0.30", "2026-01-12")  # dist: 1.5 -> 2
    books.dispute_won("acme", "inv-1", "0.30", "2026-01-20")  # dist: the 2 back, on 01-20
    refund = books.refund("acme", "inv-1", "0.30", "2026-01-15")  # delivered last
    # Time order: the refund's share of dist's 3 (1.5 -> 2) is capped at the 1 the chargeback left,
    # and the dispute, the refund standing, gives back its share, 2: dist keeps 2, northwind 6. Its
    # share taken whole, the late refund also took 1 of the reinstatement (at 01-20): dist kept 1.
    assert sorted(clawback_instants(books, refund.event_id)) == [
        ("dist", "pending", at("2026-01-15")), ("northwind", "pending", at("2026-01-15"))]
    assert commissions(refund) == [("northwind", "clawback", -6), ("dist", "clawback", -1)]
    never_negative(books, "northwind", "dist")
    assert books.balance("dist") == (2, 0) and books.balance("northwind") == (6, 0)
    assert books.trial_balance_is_zero() and books.verified()


def total_owed(books: Books, partner_id: str, instant: str) -> int:
    pending, available = books.balance_just_after(partner_id, instant)
    return pending + available


@pytest.fixture
def with_cpa(database) -> Books:
    """northwind alone, at 20% with a 30-day hold and a CPA of 50.00."""
    books = Books(database)
    books.plan("hybrid", "0.20", hold_days=30, cpa={"USD": "50.00"})
    books.partner("northwind", "hybrid")
    books.attribute("acme", "northwind", "2026-01-01")
    return books


def test_a_late_won_dispute_restores_a_clawback_dated_after_it_at_that_clawbacks_instant(with_cpa):
    books = with_cpa
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")  # 20,000 and the CPA, 5,000
    books.release("2026-02-10")
    books.chargeback("acme", "inv-1", "500.00", "2026-02-15")  # 10,000 of the accrual
    books.refund("acme", "inv-1", "500.00", "2026-03-10")  # completes the invoice: the other 10,000 and the CPA
    won = books.dispute_won("acme", "inv-1", "500.00", "2026-03-01")  # delivered last
    # The invoice is half paid after all: half the accrual and the CPA stand. The accrual's half is
    # restored on 03-01; the CPA was still there on 03-01 (its clawback is dated 03-10), so it is
    # restored on 03-10, when it was clawed: the partner never holds it twice.
    assert commissions(won) == [("northwind", "accrual", 10_000), ("northwind", "cpa", 5_000)]
    assert [(row.kind, row.effective_at_us) for row in books.sql(
        "SELECT kind, effective_at_us FROM journal_transactions WHERE event_id = :e ORDER BY id",
        e=won.event_id)] == [("accrual", at("2026-03-01")), ("cpa", at("2026-03-10"))]
    assert [total_owed(books, "northwind", instant) for instant in
            ("2026-02-15", "2026-03-01", "2026-03-05", "2026-03-10")] == [15_000, 25_000, 25_000, 15_000]
    never_negative(books, "northwind")
    books.release("2026-06-01")
    assert books.balance("northwind") == (0, 15_000) and books.trial_balance_is_zero() and books.verified()


def test_a_late_refund_that_completes_the_invoice_claws_the_rest_and_the_cpa_when_it_is_wholly_refunded(with_cpa):
    books = with_cpa
    books.paid("acme", "inv-1", "1000.03", "2026-01-10")  # 20,001 and the CPA, 5,000
    books.refund("acme", "inv-1", "250.00", "2026-03-10")  # 5,000.1 -> 5,000
    books.refund("acme", "inv-1", "0.02", "2026-03-05")  # 0.4 -> nothing
    late = books.refund("acme", "inv-1", "750.01", "2026-02-20")  # delivered last, completes the invoice
    # Its share (15,000.5 -> 15,000, half-even) on 02-20; the invoice is wholly refunded only from
    # 03-10 on, so the rounding remainder (1) and the CPA go then.
    assert [(row.kind, row.amount, row.effective_at_us) for row in books.sql(
        "SELECT p.kind, l.amount_minor AS amount, t.effective_at_us FROM journal_transactions t"
        " JOIN journal_transactions p ON p.id = t.accrual_id"
        " JOIN journal_lines l ON l.transaction_id = t.id AND l.side = 'D' WHERE t.event_id = :e ORDER BY t.id",
        e=late.event_id)] == [("accrual", 15_000, at("2026-02-20")), ("accrual", 1, at("2026-03-10")),
                              ("cpa", 5_000, at("2026-03-10"))]
    assert [total_owed(books, "northwind", instant) for instant in ("2026-02-20", "2026-03-05", "2026-03-10")] == \
        [10_001, 10_001, 0]
    never_negative(books, "northwind")
    assert books.balance("northwind") == (0, 0) and books.trial_balance_is_zero() and books.verified()


def test_what_a_late_completing_refund_claws_at_the_completion_comes_from_pending_while_still_held(with_cpa):
    books = with_cpa
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")  # 20,000 and the CPA, 5,000; both mature 02-09
    books.refund("acme", "inv-1", "500.00", "2026-01-20")
    books.release("2026-03-01")  # a job released both at 02-09
    late = books.refund("acme", "inv-1", "500.00", "2026-01-15")  # completes the invoice, as of 01-20
    # At 01-20 the CPA is still held: it is clawed from pending, not from available.
    assert [(row.kind, row.account, row.effective_at_us) for row in books.sql(
        "SELECT p.kind, a.name AS account, t.effective_at_us FROM journal_transactions t"
        " JOIN journal_transactions p ON p.id = t.accrual_id JOIN journal_lines l ON l.transaction_id = t.id"
        " AND l.side = 'D' JOIN accounts a ON a.id = l.account_id WHERE t.event_id = :e AND t.kind = 'clawback'"
        " ORDER BY t.id", e=late.event_id)] == [
        ("accrual", "liability:partner:northwind:pending", at("2026-01-15")),
        ("cpa", "liability:partner:northwind:pending", at("2026-01-20"))]
    never_negative(books, "northwind")
    assert [total_owed(books, "northwind", instant) for instant in ("2026-01-15", "2026-01-20")] == [15_000, 0]
    assert books.balance("northwind") == (0, 0) and books.trial_balance_is_zero() and books.verified()


def test_a_refunds_clawback_a_won_dispute_restored_is_not_reversed_as_it_would_pay_twice(with_cpa):
    books = with_cpa
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    books.chargeback("acme", "inv-1", "500.00", "2026-02-15")
    refund = books.refund("acme", "inv-1", "500.00", "2026-03-10")  # completes: the rest and the CPA
    books.dispute_won("acme", "inv-1", "500.00", "2026-03-01")  # restores the CPA at 03-10
    [(cpa_clawback,)] = books.sql("SELECT t.id FROM journal_transactions t JOIN journal_transactions p"
                                  " ON p.id = t.accrual_id WHERE t.event_id = :e AND p.kind = 'cpa'", e=refund.event_id)
    before = books.sql("SELECT count(*) FROM journal_transactions")[0][0], books.balance("northwind")
    with pytest.raises(Conflict, match="more than it earned"):
        with books.database.transaction() as session:
            reversals.reverse(session, cpa_clawback, reason="goodwill")
    assert (books.sql("SELECT count(*) FROM journal_transactions")[0][0], books.balance("northwind")) == before
    assert sum(books.balance("northwind")) == 15_000  # half the accrual and the CPA, once


def test_a_late_won_dispute_restores_its_share_where_finance_reversed_a_clawback_of_the_accrual(books):
    # Time order replayed from the events alone knows nothing of the reversal: by it, the dispute would
    # restore 6,000 and take back the 4,000 finance gave the partner.
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")  # 20,000, and 5,000 for dist
    books.chargeback("acme", "inv-1", "500.00", "2026-01-15")  # 10,000 and 2,500 clawed
    refund = books.refund("acme", "inv-1", "200.00", "2026-02-01")  # 4,000 clawed
    with books.database.transaction() as session:
        reversals.reverse(session, refund.transaction_ids[0], reason="the refund was billed in error")
    assert sum(books.balance("northwind")) == 10_000
    won = books.dispute_won("acme", "inv-1", "500.00", "2026-01-20")  # dated before the refund: late
    assert commissions(won) == [("northwind", "accrual", 10_000), ("dist", "override", 2_500)]
    assert sum(books.balance("northwind")) == 20_000 and books.trial_balance_is_zero() and books.verified()


def test_a_late_refund_that_wholly_refunded_the_invoice_until_a_won_dispute_takes_the_rounding_remainder(books):
    # Time order: the refunds and the chargeback of the 11th refund the invoice wholly, the accrual is
    # clawed whole (its remainder, 0.01, too), and the dispute of the 15th restores its share (0.07).
    # Delivered last, the 0.01 refund's share is nothing: the partner kept 0.08 for good.
    books.plan("fifth", "0.20", hold_days=0, cpa={"USD": "50.00"})
    books.partner("initech", "fifth")
    books.attribute("globex", "initech", "2026-01-01")
    books.paid("globex", "inv-9", "3.33", "2026-01-10")  # 0.67, and the CPA
    books.refund("globex", "inv-9", "1.66", "2026-01-11")  # 0.33
    books.chargeback("globex", "inv-9", "1.66", "2026-01-11T01:00:00Z")  # 0.33
    books.dispute_won("globex", "inv-9", "0.33", "2026-01-15")  # 0.07
    late = books.refund("globex", "inv-9", "0.01", "2026-01-11T02:00:00Z")
    assert commissions(late) == [("initech", "clawback", -1)]
    assert sum(books.balance("initech")) == 5_000 + 7 and books.trial_balance_is_zero() and books.verified()


def test_a_refund_after_a_won_dispute_claws_from_the_held_reinstatement_before_the_released_accrual(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")  # 20,000, released 2026-02-09
    books.chargeback("acme", "inv-1", "500.00", "2026-02-15")  # 10,000 from available
    books.dispute_won("acme", "inv-1", "500.00", "2026-02-20")  # 10,000 again, held until 2026-03-22
    assert books.balance_just_after("northwind", "2026-02-20") == (10_000, 10_000)
    refund = books.refund("acme", "inv-1", "250.00", "2026-02-25")
    assert commissions(refund)[0] == ("northwind", "clawback", -5_000)
    assert books.balance_just_after("northwind", "2026-02-25") == (5_000, 10_000)  # from the held piece, pending
    assert books.release("2026-03-22") == 2
    assert books.balance("northwind") == (0, 15_000)


def test_a_refund_while_both_pieces_are_held_claws_from_the_newest_and_the_older_releases_whole(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")  # 20,000, matures 2026-02-09
    books.chargeback("acme", "inv-1", "500.00", "2026-01-15")  # 10,000 from pending
    books.dispute_won("acme", "inv-1", "500.00", "2026-01-20")  # 10,000 again, matures 2026-02-19
    books.refund("acme", "inv-1", "250.00", "2026-01-25")  # 5,000 from the reinstatement, the newest
    assert books.release("2026-02-09") == 2  # the accrual and its override
    assert books.balance_just_after("northwind", "2026-02-09") == (5_000, 10_000)
    assert books.release("2026-02-19") == 2
    assert books.balance("northwind") == (0, 15_000)
