"""Refunds and chargebacks against accruals: proportional clawbacks rounded half-even per refund,
the exact remainder on the refund that completes the invoice, refusal of refunds beyond the paid
amount; clawbacks from pending while held and from available once released, decided by time; and
reversed accruals, which are never released."""

import pytest

from ledger import payouts, reversals
from ledger.errors import Conflict, InvalidInput
from tests.scenarios.books import Books, at, commissions


@pytest.fixture
def books(database) -> Books:
    books = Books(database)
    books.plan("tenth", "0.10", hold_days=30)
    books.plan("half", "0.50", hold_days=30)
    books.partner("northwind", "tenth")
    books.partner("contoso", "half")
    books.attribute("acme", "northwind", "2026-01-01")
    books.attribute("globex", "contoso", "2026-01-01")
    return books


def head(books: Books) -> tuple:
    return tuple(books.sql("SELECT count(*), max(hash) FROM journal_transactions")[0])


def test_partial_refunds_claw_back_round_half_even_each_and_the_final_one_takes_the_exact_remainder(books):
    books.paid("acme", "inv-1", "100.00", "2026-01-10")  # accrual 10.00
    clawed = [commissions(books.refund("acme", "inv-1", "16.65", f"2026-01-1{day}"))[0][2] for day in range(1, 7)]
    assert clawed == [-166] * 6  # 1,000 x 1,665/10,000 = 166.5 -> 166 each time
    final = books.refund("acme", "inv-1", "0.10", "2026-01-17")
    assert commissions(final) == [("northwind", "clawback", -4)]  # its proportional share would be 10
    assert books.balance("northwind") == (0, 0)


def test_rounded_shares_that_would_overshoot_are_capped_and_the_last_refund_finds_nothing_left(books):
    books.paid("globex", "inv-1", "0.10", "2026-01-10")  # accrual 5 cents
    shares = [commissions(books.refund("globex", "inv-1", "0.03", f"2026-01-1{day}")) for day in (1, 2, 3)]
    assert [share[0][2] for share in shares] == [-2, -2, -1]  # 1.5 -> 2, 2, then only 1 is left
    last = books.refund("globex", "inv-1", "0.01", "2026-01-14")
    # Nothing left to claw: the refund is recorded, with no commission line.
    assert (last.status, last.commissions) == ("no_commission", ())
    assert books.balance("contoso") == (0, 0)


def test_a_refund_beyond_the_paid_amount_is_refused_naming_the_amount_and_changes_nothing(books):
    books.paid("acme", "inv-1", "100.00", "2026-01-10")
    books.refund("acme", "inv-1", "60.00", "2026-01-11")
    before = head(books), books.balance("northwind")
    refusal = books.refused("refund", "acme", "inv-1", "40.01", "2026-01-12", event_id="refund-2")
    assert isinstance(refusal.error, InvalidInput) and list(refusal.error.fields) == ["amount.amount"]
    assert refusal.event_id == "refund-2"
    assert (head(books), books.balance("northwind")) == before
    assert books.sql("SELECT count(*) FROM revenue_events WHERE id = 'refund-2'")[0][0] == 0
    # The refused id was never taken: billing can send the corrected event under it.
    assert commissions(books.refund("acme", "inv-1", "40.00", "2026-01-12", event_id="refund-2")) == \
        [("northwind", "clawback", -400)]


def test_a_chargeback_counts_toward_the_paid_amount_like_a_refund(books):
    books.paid("acme", "inv-1", "100.00", "2026-01-10")
    books.chargeback("acme", "inv-1", "70.00", "2026-01-11")
    assert list(books.refused("refund", "acme", "inv-1", "30.01", "2026-01-12").error.fields) == ["amount.amount"]
    assert commissions(books.refund("acme", "inv-1", "30.00", "2026-01-12")) == [("northwind", "clawback", -300)]


def test_a_refund_before_the_invoice_was_paid_or_of_an_unknown_invoice_is_refused(books):
    books.paid("acme", "inv-1", "100.00", "2026-01-10")
    assert list(books.refused("refund", "acme", "inv-1", "1.00", "2026-01-09").error.fields) == ["occurred_at"]
    assert list(books.refused("refund", "acme", "inv-404", "1.00", "2026-01-11").error.fields) == ["invoice_id"]


def test_while_held_a_clawback_comes_out_of_pending_and_the_release_moves_only_what_is_left(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")  # 100.00, matures 2026-02-09
    [clawback_id] = books.refund("acme", "inv-1", "250.00", "2026-01-20").transaction_ids
    assert books.sql("SELECT a.name FROM journal_lines l JOIN accounts a ON a.id = l.account_id "
                     "WHERE l.transaction_id = :t AND l.side = 'D'", t=clawback_id)[0].name == \
        "liability:partner:northwind:pending"
    assert books.balance_just_after("northwind", "2026-01-20") == (7_500, 0)
    assert books.release("2026-02-09") == 1
    assert books.balance_just_after("northwind", "2026-02-09") == (0, 7_500)


def test_after_release_a_clawback_comes_out_of_available(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    books.release("2026-02-09")
    books.refund("acme", "inv-1", "250.00", "2026-02-10")
    assert books.balance("northwind") == (0, 7_500)


def test_a_refund_after_maturity_first_releases_at_maturity_then_claws_from_available(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    refund = books.refund("acme", "inv-1", "250.00", "2026-03-01")  # no release job has run
    assert commissions(refund) == [("northwind", "clawback", -2_500)]
    rows = books.sql("SELECT kind, effective_at_us FROM journal_transactions ORDER BY id")
    assert [(row.kind, row.effective_at_us) for row in rows] == [
        ("accrual", at("2026-01-10")), ("release", at("2026-02-09")), ("clawback", at("2026-03-01"))]
    assert books.balance("northwind", before="2026-02-09") == (10_000, 0)
    assert books.balance_just_after("northwind", "2026-02-09") == (0, 10_000)
    assert books.balance("northwind") == (0, 7_500)
    assert books.release("2026-04-01") == 0  # the hold already ended: nothing is released twice
    assert books.sql("SELECT count(*) FROM open_holds")[0][0] == 0


def test_held_ness_is_decided_at_the_microsecond_of_maturity(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    books.paid("acme", "inv-2", "1000.00", "2026-01-10")
    books.refund("acme", "inv-1", "100.00", "2026-02-08T23:59:59.999999Z")  # still held: from pending
    books.refund("acme", "inv-2", "100.00", "2026-02-09T00:00:00Z")        # matured: released, then available
    assert books.balance("northwind") == (9_000, 9_000)


def test_a_reversed_accrual_is_never_released_and_never_clawed_back(books):
    [accrual_id] = books.paid("acme", "inv-1", "1000.00", "2026-01-10").transaction_ids
    with books.database.transaction() as session:
        reversals.reverse(session, accrual_id, reason="entered against the wrong partner")
    assert books.release("2026-03-01") == 0
    assert books.balance("northwind") == (0, 0)
    refund = books.refund("acme", "inv-1", "1000.00", "2026-03-02")
    assert (refund.status, refund.commissions) == ("no_commission", ())
    assert books.balance("northwind") == (0, 0)
    assert books.trial_balance_is_zero() and books.verified()


def test_a_reversed_accrual_is_not_released_by_a_later_refund_either(books):
    [accrual_id, _] = [*books.paid("acme", "inv-1", "1000.00", "2026-01-10").transaction_ids,
                       books.paid("acme", "inv-2", "1000.00", "2026-01-10").transaction_ids[0]]
    with books.database.transaction() as session:
        reversals.reverse(session, accrual_id, reason="duplicate")
    books.refund("acme", "inv-1", "500.00", "2026-03-01")  # after maturity: would release a live accrual
    assert [row.kind for row in books.sql("SELECT kind FROM journal_transactions WHERE invoice_id = 'inv-1' "
                                          "ORDER BY id")] == ["accrual", "reversal"]


def reverse(books: Books, transaction_id: int, **kwargs) -> int:
    with books.database.transaction() as session:
        return reversals.reverse(session, transaction_id, reason="commission not owed", **kwargs).id


def kinds(books: Books, invoice_id: str) -> list[tuple]:
    return [tuple(row) for row in books.sql(
        "SELECT id, kind, reverses_id, effective_at_us FROM journal_transactions WHERE invoice_id = :i ORDER BY id",
        i=invoice_id)]


@pytest.mark.parametrize("release_job_ran", [False, True])
def test_a_reversed_accrual_is_never_paid_out_whether_or_not_its_release_was_posted(books, release_job_ran):
    [accrual_id] = books.paid("acme", "inv-1", "1000.00", "2026-01-10").transaction_ids  # 100.00, matures 02-09
    if release_job_ran:
        assert books.release("2026-02-10") == 1
    reverse(books, accrual_id)
    with books.database.transaction() as session:
        assert payouts.run_payouts(session, at("2026-03-01")).payouts == ()
    for instant in ("2026-01-10T00:00:01Z", "2026-02-09T00:00:01Z", "2026-03-02"):
        assert books.balance("northwind", before=instant) == (0, 0), instant
    assert books.trial_balance_is_zero() and books.verified()


def test_reversing_a_released_accrual_first_reverses_its_release_at_the_release_instant(books):
    [accrual_id] = books.paid("acme", "inv-1", "1000.00", "2026-01-10").transaction_ids
    books.release("2026-02-10")
    [(_, _, _, _), (release_id, _, _, released_at)] = kinds(books, "inv-1")
    reversal_id = reverse(books, accrual_id)
    assert kinds(books, "inv-1")[2:] == [(reversal_id - 1, "reversal", release_id, released_at),
                                         (reversal_id, "reversal", accrual_id, at("2026-01-10"))]
    assert books.release("2026-03-01") == 0


def test_reversing_an_accrual_also_reverses_its_clawbacks_so_the_partner_is_not_clawed_twice(books):
    [accrual_id] = books.paid("acme", "inv-1", "1000.00", "2026-01-10").transaction_ids
    [clawback_id] = books.refund("acme", "inv-1", "400.00", "2026-01-20").transaction_ids  # -40.00 from pending
    books.release("2026-02-10")                                                          # 60.00 to available
    assert books.balance("northwind") == (0, 6_000)
    reverse(books, accrual_id)
    assert [(kind, reverses) for _, kind, reverses, _ in kinds(books, "inv-1")[3:]] == [
        ("reversal", clawback_id), ("reversal", clawback_id + 1), ("reversal", accrual_id)]
    assert books.balance("northwind") == (0, 0)
    final = books.refund("acme", "inv-1", "600.00", "2026-03-01")  # nothing left to claw from a reversed accrual
    assert (final.status, books.balance("northwind")) == ("no_commission", (0, 0))
    assert books.trial_balance_is_zero() and books.verified()


@pytest.mark.parametrize("release_job_ran", [True, False])
def test_a_reversal_at_a_later_instant_undoes_the_release_no_earlier_than_that(books, release_job_ran):
    # Held-ness follows time: with no release run before it, the reversal releases the matured
    # accrual at its maturity first, and the books are those of a run that came by.
    [accrual_id] = books.paid("acme", "inv-1", "1000.00", "2026-01-10").transaction_ids
    if release_job_ran:
        books.release("2026-02-10")
    reverse(books, accrual_id, effective_at_us=at("2026-03-05"))
    assert [(kind, instant) for _, kind, _, instant in kinds(books, "inv-1")] == [
        ("accrual", at("2026-01-10")), ("release", at("2026-02-09")),
        ("reversal", at("2026-03-05")), ("reversal", at("2026-03-05"))]
    assert books.balance("northwind", before="2026-03-05") == (0, 10_000)  # released, and owed until then
    assert books.balance_just_after("northwind", "2026-03-05") == (0, 0)
    assert books.release("2026-04-01") == 0
    assert books.trial_balance_is_zero() and books.verified()


def test_a_reversal_posts_no_release_of_a_piece_maturing_at_its_instant_or_clawed_to_nothing(books):
    books.plan("no-hold", "0.10", hold_days=0)
    books.partner("instant", "no-hold")
    books.attribute("zenith", "instant", "2026-01-01")
    [maturing_at_once] = books.paid("zenith", "inv-0", "1000.00", "2026-01-10").transaction_ids
    [clawed] = books.paid("acme", "inv-1", "1000.00", "2026-01-10").transaction_ids
    books.refund("acme", "inv-1", "1000.00", "2026-01-20")  # all of it clawed, from pending
    # At the accrual's own instant (no `effective_at`), and after the maturity of a piece left with nothing.
    for accrual_id, invoice_id, instant in ((maturing_at_once, "inv-0", None), (clawed, "inv-1", at("2026-03-05"))):
        before = kinds(books, invoice_id)
        reverse(books, accrual_id, effective_at_us=instant)
        assert "release" not in [kind for _, kind, _, _ in kinds(books, invoice_id)[len(before):]]
    assert books.balance("northwind") == books.balance("instant") == (0, 0)
    assert books.trial_balance_is_zero() and books.verified()


def test_a_reversal_releases_a_matured_reinstatement_with_its_accrual(books):
    [accrual_id] = books.paid("acme", "inv-1", "1000.00", "2026-01-10").transaction_ids
    books.chargeback("acme", "inv-1", "1000.00", "2026-01-12")
    books.dispute_won("acme", "inv-1", "1000.00", "2026-01-14")  # 100.00 again, maturing 2026-02-13
    reverse(books, accrual_id, effective_at_us=at("2026-03-05"))
    assert books.balance("northwind", before="2026-03-05") == (0, 10_000)
    assert books.balance_just_after("northwind", "2026-03-05") == (0, 0)
    assert books.release("2026-04-01") == 0
    assert books.trial_balance_is_zero() and books.verified()


def test_a_reversal_at_an_instant_before_the_release_undoes_the_release_at_its_own_instant(books):
    [accrual_id] = books.paid("acme", "inv-1", "1000.00", "2026-01-10").transaction_ids
    books.release("2026-02-10")
    reverse(books, accrual_id, effective_at_us=at("2026-01-15"))
    assert [instant for *_, instant in kinds(books, "inv-1")[2:]] == [at("2026-02-09"), at("2026-01-15")]
    assert books.balance("northwind", before="2026-01-15") == (10_000, 0)
    for instant in ("2026-01-15T00:00:01Z", "2026-02-09T00:00:01Z"):
        assert books.balance("northwind", before=instant) == (0, 0), instant


def test_reversing_an_accrual_whose_chargeback_was_won_reverses_its_reinstatement_too(books):
    [accrual_id] = books.paid("acme", "inv-1", "1000.00", "2026-01-10").transaction_ids
    books.chargeback("acme", "inv-1", "1000.00", "2026-01-12")
    books.dispute_won("acme", "inv-1", "1000.00", "2026-01-14")  # a new accrual of 100.00
    assert books.balance("northwind") == (10_000, 0)
    reverse(books, accrual_id)
    assert books.balance("northwind") == (0, 0)
    assert books.release("2026-03-01") == 0
    assert books.refund("acme", "inv-1", "1000.00", "2026-03-02").status == "no_commission"
    assert books.balance("northwind") == (0, 0)
    assert books.trial_balance_is_zero() and books.verified()


def clawed_from_pending(books: Books, *, released_at: str | None = None) -> int:
    """inv-1 paid 1000.00 on 2026-01-10 (accrual 100.00, maturing 2026-02-09), then a refund of 400.00
    on 2026-01-20 that claws 40.00 from pending; and a release run at `released_at` if given (60.00
    released at the maturity). Returns the clawback's id."""
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    [clawback_id] = books.refund("acme", "inv-1", "400.00", "2026-01-20").transaction_ids
    if released_at is not None:
        books.release(released_at)
    return clawback_id


def test_a_release_is_not_reversed_on_its_own_as_it_follows_from_time(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    books.release("2026-02-10")
    with pytest.raises(Conflict, match="follows from time"):
        reverse(books, kinds(books, "inv-1")[1][0])
    assert books.balance("northwind") == (0, 10_000)


def test_a_clawback_reversed_after_the_release_is_released_with_the_rest_at_the_maturity(books):
    clawback_id = clawed_from_pending(books, released_at="2026-02-10")
    [(release_id, *_)] = [row for row in kinds(books, "inv-1") if row[1] == "release"]
    reversal_id = reverse(books, clawback_id)
    # The release is redone in the same posting: one release in force, of the whole 100.00, at the maturity.
    assert kinds(books, "inv-1")[3:] == [(reversal_id - 1, "reversal", release_id, at("2026-02-09")),
                                         (reversal_id, "reversal", clawback_id, at("2026-01-20")),
                                         (reversal_id + 1, "release", None, at("2026-02-09"))]
    assert books.balance("northwind", before="2026-02-09") == (10_000, 0)
    assert books.balance("northwind") == (0, 10_000)
    assert books.release("2026-03-01") == 0
    assert books.release_events("inv-1") == [("northwind", "evt-1")] * 2  # both name the payment, evt-1
    assert books.trial_balance_is_zero() and books.verified()


# Dated while held: 600.00 completes the refunds of the invoice and claws the remainder, all of it
# (the first clawback was reversed), from pending; 300.00 claws its share, and the rest is released once.
@pytest.mark.parametrize("amount, clawed, held_until_maturity, at_the_end", [
    ("600.00", 10_000, (0, 0), (0, 0)),
    ("300.00", 3_000, (7_000, 0), (0, 7_000)),
], ids=["completing", "partial"])
def test_a_late_refund_after_a_reversed_clawback_undoes_the_one_release_in_force(
        books, amount, clawed, held_until_maturity, at_the_end):
    clawback_id = clawed_from_pending(books, released_at="2026-02-10")
    reverse(books, clawback_id)
    late = books.refund("acme", "inv-1", amount, "2026-01-25")
    assert commissions(late) == [("northwind", "clawback", -clawed)]
    assert books.balance("northwind", before="2026-02-09") == held_until_maturity
    assert books.balance("northwind") == at_the_end
    assert books.trial_balance_is_zero() and books.verified()


@pytest.mark.parametrize("release_job_ran", [False, True])
def test_a_clawback_that_took_everything_when_reversed_is_released_whether_or_not_a_run_came_by(
        books, release_job_ran):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    [clawback_id] = books.refund("acme", "inv-1", "1000.00", "2026-01-20").transaction_ids  # all 100.00
    if release_job_ran:
        books.release("2026-02-10")  # nothing pending: the hold ends with no release posted
    reverse(books, clawback_id)  # released in the same posting if the hold had ended, else by the next run
    assert books.release("2026-03-01") == (0 if release_job_ran else 1)
    assert books.balance("northwind", before="2026-02-09") == (10_000, 0)
    assert books.balance("northwind") == (0, 10_000)
    assert [kind for _, kind, _, _ in kinds(books, "inv-1")].count("release") == 1
    assert books.sql("SELECT count(*) FROM open_holds")[0][0] == 0
    assert books.trial_balance_is_zero() and books.verified()


@pytest.mark.parametrize("release_job_ran", [False, True])
def test_a_clawback_reversal_dated_after_the_maturity_is_a_422_whether_or_not_a_run_came_by(books, release_job_ran):
    clawback_id = clawed_from_pending(books, released_at="2026-02-10" if release_job_ran else None)
    with pytest.raises(InvalidInput) as refused:
        reverse(books, clawback_id, effective_at_us=at("2026-03-15"))
    assert set(refused.value.fields) == {"effective_at"}


def test_a_clawback_of_an_accrual_a_won_dispute_reinstated_is_not_reversed_as_it_would_credit_twice(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    [clawback_id] = books.chargeback("acme", "inv-1", "1000.00", "2026-01-12").transaction_ids
    books.dispute_won("acme", "inv-1", "1000.00", "2026-01-14")
    before = head(books)
    with pytest.raises(Conflict, match="reverse the accrual instead"):
        reverse(books, clawback_id)
    assert head(books) == before and books.balance("northwind") == (10_000, 0)


def test_a_refunds_clawback_of_a_reinstated_accrual_may_still_be_reversed(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    [refund_clawback] = books.refund("acme", "inv-1", "300.00", "2026-01-11").transaction_ids  # 30.00
    books.chargeback("acme", "inv-1", "700.00", "2026-01-12")                                # 70.00
    books.dispute_won("acme", "inv-1", "700.00", "2026-01-14")                               # 70.00 again
    reverse(books, refund_clawback)  # goodwill: the partner keeps the refunded invoice's commission
    assert sum(books.balance("northwind")) == 10_000
    assert books.trial_balance_is_zero() and books.verified()


def test_a_clawback_reversed_after_a_release_run_long_after_the_maturity_is_released_too(books):
    clawback_id = clawed_from_pending(books, released_at="2026-11-01")
    reverse(books, clawback_id)
    assert books.balance("northwind") == (0, 10_000)
    assert books.release("2026-11-30") == 0


def test_a_clawback_reversal_dated_after_the_maturity_of_a_queued_hold_is_a_422(books):
    clawback_id = clawed_from_pending(books)
    with pytest.raises(InvalidInput) as refused:  # no run came by: the hold is still queued
        reverse(books, clawback_id, effective_at_us=at("2026-02-10"))
    assert set(refused.value.fields) == {"effective_at"}


def test_a_replayed_clawback_reversal_posts_nothing_more(books):
    clawback_id = clawed_from_pending(books, released_at="2026-02-10")
    first = reverse(books, clawback_id)
    before = head(books)
    assert reverse(books, clawback_id) == first and head(books) == before


def test_a_replayed_reversal_of_a_released_accrual_posts_nothing_more(books):
    [accrual_id] = books.paid("acme", "inv-1", "1000.00", "2026-01-10").transaction_ids
    books.release("2026-02-10")
    first = reverse(books, accrual_id)
    before = head(books)
    assert reverse(books, accrual_id) == first and head(books) == before


def test_a_reversed_clawback_gives_the_accrual_back_and_the_final_refund_claws_exactly_what_is_left(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")
    [clawback_id] = books.refund("acme", "inv-1", "250.00", "2026-01-20").transaction_ids
    with books.database.transaction() as session:
        reversals.reverse(session, clawback_id, reason="refund was goodwill; the partner keeps its commission")
    assert books.balance("northwind") == (10_000, 0)  # matured, not yet released: its hold is still queued
    final = books.refund("acme", "inv-1", "750.00", "2026-01-21")
    assert commissions(final) == [("northwind", "clawback", -10_000)]
    assert books.balance("northwind") == (0, 0)


def test_a_late_refund_dated_before_maturity_after_the_release_was_posted_claws_from_pending(books):
    # Held-ness is decided by time, not by when the release ran: a refund dated before the accrual
    # matured finds it held. The posted release is reversed (at its own instant), the clawback comes
    # from pending at the refund's instant, and the rest is released again at the maturity.
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")  # matures 2026-02-09
    assert books.release("2026-02-20") == 1
    books.refund("acme", "inv-1", "250.00", "2026-02-01")
    assert books.balance("northwind", before="2026-02-05") == (7_500, 0)
    assert books.balance("northwind", before="2026-02-09") == (7_500, 0)
    assert books.balance("northwind", before="2026-02-10") == (0, 7_500)
    assert books.balance("northwind") == (0, 7_500)
    assert books.release("2026-03-01") == 0  # nothing is left held


def test_what_a_late_refund_releases_again_names_the_payment_that_accrued_it(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="evt-paid")
    books.release("2026-02-20")
    books.refund("acme", "inv-1", "250.00", "2026-02-01", event_id="evt-refund")
    assert books.release_events("inv-1") == [("northwind", "evt-paid"), ("northwind", "evt-paid")]
    [(undone_event,)] = books.sql("SELECT event_id FROM journal_transactions WHERE kind = 'reversal'")
    assert undone_event == "evt-paid"  # the mirror of the first release names what it names
    assert books.verified()


def test_two_late_refunds_each_undo_the_release_in_force_and_release_the_rest_again(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")  # matures 2026-02-09
    assert books.release("2026-02-20") == 1
    books.refund("acme", "inv-1", "250.00", "2026-02-01")
    books.refund("acme", "inv-1", "250.00", "2026-02-03")
    assert books.balance("northwind", before="2026-02-02") == (7_500, 0)
    assert books.balance("northwind", before="2026-02-05") == (5_000, 0)
    assert books.balance("northwind") == (0, 5_000)
    books.refund("acme", "inv-1", "500.00", "2026-03-01")  # after maturity: from available
    assert books.balance("northwind") == (0, 0)


def test_a_refund_at_the_instant_of_maturity_after_the_release_ran_claws_from_available_and_undoes_nothing(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10")  # matures 2026-02-09T00:00:00Z
    assert books.release("2026-02-20") == 1
    books.refund("acme", "inv-1", "100.00", "2026-02-09")  # matured at that very instant: released, not held
    assert books.sql("SELECT count(*) FROM journal_transactions WHERE kind IN ('reversal', 'release')")[0][0] == 1
    [(account,)] = books.sql("SELECT a.name FROM journal_transactions t JOIN journal_lines j ON j.transaction_id = t.id"
                             " JOIN accounts a ON a.id = j.account_id WHERE t.kind = 'clawback' AND j.side = 'D'")
    assert account == "liability:partner:northwind:available"
    assert books.balance("northwind") == (0, 9_000)


@pytest.mark.parametrize("release_job_ran", [False, True])
def test_a_clawback_reversal_may_be_dated_at_the_release_and_not_one_microsecond_after(books, release_job_ran):
    clawback_id = clawed_from_pending(books, released_at="2026-02-10" if release_job_ran else None)
    with pytest.raises(InvalidInput) as refused:
        reverse(books, clawback_id, effective_at_us=at("2026-02-09") + 1)
    assert set(refused.value.fields) == {"effective_at"}
    reverse(books, clawback_id, effective_at_us=at("2026-02-09"))
    books.release("2026-03-01")  # a hold still queued releases the whole 100.00 when it comes
    assert books.balance("northwind") == (0, 10_000)
