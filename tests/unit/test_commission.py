"""The pure commission rules (ledger.commission), without a database: windows and step-down months,
half-even rounding per currency, CPA, overrides and their depth, proportional clawbacks with the
exact remainder, and reinstatement after a won dispute."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.commission import (
    OVERRIDE_DEPTH_MAX,
    Earner,
    Earning,
    Piece,
    dated_clawed_minor,
    dispute_reinstatements,
    eligible_month,
    invoice_earnings,
    refund_clawbacks,
)
from ledger.schema import PARTNER_DEPTH_MAX
from ledger.instants import parse_instant
from ledger.terms import parse_terms


def at(text: str) -> int:
    return parse_instant(text if "T" in text else f"{text}T00:00:00Z", field="at")


def earner(partner_id: str = "p", rate: str = "0.20", *, rates=None, duration_months=12, cpa=None, override=None,
           hold_days: int = 30, version_id: int = 1) -> Earner:
    steps = rates or [(1, rate)]
    terms = parse_terms({
        "rates": [{"from_month": month, "rate": value} for month, value in steps],
        "duration_months": duration_months, "hold_days": hold_days, "negative_balance": "carry_forward", "min_payout": [],
        "cpa": [{"amount": amount, "currency": currency} for currency, amount in (cpa or {}).items()],
        "override": None if override is None else {"rate": override[0], "basis": override[1]},
    })
    return Earner(partner_id, version_id, terms)


def piece(id: int, amount_minor: int, *, kind: str = "accrual", root_id: int | None = None, clawed: int = 0,
          released: bool = False, reversed: bool = False, partner_id: str = "p") -> Piece:
    pending = 0 if released else amount_minor - clawed
    return Piece(id, root_id or id, partner_id, kind, "USD", amount_minor, 1, 0, pending, clawed, released, reversed)


START = at("2026-01-31")  # an attribution starting on the 31st: months end on the 28th, 31st, 30th, ...


# ---- window and month index ----

@pytest.mark.parametrize("instant, month", [
    ("2026-01-31", 1),
    ("2026-02-27T23:59:59.999999Z", 1),
    ("2026-02-28", 2),                      # January 31 + 1 month is clamped to February 28
    ("2026-03-30T23:59:59.999999Z", 2),     # month 3 starts at January 31 + 2 months: March 31, not March 28
    ("2026-03-31", 3),
    ("2026-04-29T23:59:59.999999Z", 3),
])
def test_months_of_a_window_starting_on_the_31st_follow_calendar_months_from_the_start(instant, month):
    assert eligible_month(earner(duration_months=3).terms, START, at(instant)) == month


def test_the_window_ends_exactly_at_start_plus_duration_months():
    one_month = earner(duration_months=1).terms
    assert eligible_month(one_month, START, at("2026-02-28") - 1) == 1
    assert eligible_month(one_month, START, at("2026-02-28")) is None


def test_an_instant_before_the_window_starts_is_not_eligible():
    assert eligible_month(earner().terms, START, START - 1) is None
    assert eligible_month(earner().terms, START, START) == 1


def test_a_lifetime_plan_has_no_window_end():
    assert eligible_month(earner(duration_months=None).terms, START, at("2126-01-31")) == 1201


def test_the_step_down_rate_switches_exactly_at_the_month_boundary():
    step_down = earner(rates=[(1, "0.40"), (2, "0.20")], duration_months=None)
    last_of_month_one = invoice_earnings(10_000, "USD", at("2026-02-28") - 1, START, step_down, [], False)
    first_of_month_two = invoice_earnings(10_000, "USD", at("2026-02-28"), START, step_down, [], False)
    assert last_of_month_one == (True, [Earning("p", "accrual", 4_000, 1, 30)])
    assert first_of_month_two == (True, [Earning("p", "accrual", 2_000, 1, 30)])


def test_an_invoice_outside_the_window_earns_nothing_not_even_the_cpa_or_overrides():
    parent = earner("parent", override=("0.05", "revenue"))
    assert invoice_earnings(10_000, "USD", at("2027-02-28"), START, earner(cpa={"USD": "150.00"}), [parent], True) \
        == (False, [])


# ---- rounding: ROUND_HALF_EVEN to the currency's minor unit ----

@pytest.mark.parametrize("amount_minor, expected_minor", [
    (125, 12),   # 12.5 rounds down to the even 12
    (135, 14),   # 13.5 rounds up to the even 14
    (145, 14),   # 14.5 rounds down to the even 14
    (126, 13),   # 12.6 is not a tie
])
def test_revenue_share_rounds_half_to_even_in_the_minor_unit_of_any_currency(amount_minor, expected_minor):
    # Amounts are minor units, so USD 1.25, JPY 125 and BHD 0.125 all take this path.
    for currency in ("USD", "JPY", "BHD"):
        _, [share] = invoice_earnings(amount_minor, currency, START, START, earner(rate="0.10"), [], False)
        assert share.amount_minor == expected_minor, currency


def test_a_share_that_rounds_to_zero_posts_no_earning_but_the_invoice_stays_eligible():
    assert invoice_earnings(4, "JPY", START, START, earner(rate="0.10"), [], False) == (True, [])


# ---- CPA ----

def test_the_cpa_is_paid_in_the_invoice_currency_beside_the_revenue_share():
    hybrid = earner(rate="0.10", cpa={"USD": "150.00", "EUR": "140.00"})
    assert invoice_earnings(50_000, "USD", START, START, hybrid, [], True)[1] == [
        Earning("p", "accrual", 5_000, 1, 30), Earning("p", "cpa", 15_000, 1, 30)]
    assert invoice_earnings(50_000, "EUR", START, START, hybrid, [], True)[1] == [
        Earning("p", "accrual", 5_000, 1, 30), Earning("p", "cpa", 14_000, 1, 30)]


def test_no_cpa_once_claimed_or_in_a_currency_the_plan_does_not_list():
    hybrid = earner(rate="0.10", cpa={"USD": "150.00"})
    assert [e.kind for e in invoice_earnings(50_000, "USD", START, START, hybrid, [], False)[1]] == ["accrual"]
    assert [e.kind for e in invoice_earnings(50_000, "JPY", START, START, hybrid, [], True)[1]] == ["accrual"]


# ---- overrides ----

def test_overrides_use_the_invoice_or_the_revenue_share_as_basis_and_skip_ancestors_who_cannot_earn():
    affiliate = earner("aff", rate="0.30")
    msp = earner("msp", rate="0.20", override=("0.10", "commission"), version_id=2, hold_days=10)
    distributor = earner("dist", rate="0", override=("0.05", "revenue"), version_id=3, hold_days=60)
    _, earnings = invoice_earnings(100_000, "USD", START, START, affiliate, [msp, distributor], False)
    assert earnings == [Earning("aff", "accrual", 30_000, 1, 30),
                        Earning("msp", "override", 3_000, 2, 10),      # 10% of the affiliate's 300.00
                        Earning("dist", "override", 5_000, 3, 60)]     # 5% of the 1,000.00 invoice
    _, without_msp = invoice_earnings(100_000, "USD", START, START, affiliate, [None, distributor], False)
    assert without_msp == [earnings[0], earnings[2]]


def test_a_commission_basis_override_excludes_the_cpa():
    child = earner("child", rate="0.10", cpa={"USD": "150.00"})
    parent = earner("parent", override=("0.50", "commission"))
    _, earnings = invoice_earnings(50_000, "USD", START, START, child, [parent], True)
    assert earnings[-1] == Earning("parent", "override", 2_500, 1, 30)


def test_overrides_reach_at_most_the_depth_limit_of_ancestors():
    ancestors = [earner(f"a{level}", override=("0.01", "revenue")) for level in range(OVERRIDE_DEPTH_MAX + 2)]
    _, earnings = invoice_earnings(100_000, "USD", START, START, earner(), ancestors, False)
    overrides = [e.partner_id for e in earnings if e.kind == "override"]
    assert overrides == [f"a{level}" for level in range(OVERRIDE_DEPTH_MAX)]


def test_the_overrides_cut_is_every_ancestor_the_deepest_hierarchy_has():
    # A hierarchy of PARTNER_DEPTH_MAX levels: its deepest partner has one ancestor fewer.
    assert OVERRIDE_DEPTH_MAX == PARTNER_DEPTH_MAX - 1 == 4


# ---- refunds: proportional, capped, and the exact remainder on the last one ----

def test_a_partial_refund_claws_back_proportionally_rounding_half_to_even():
    # 25 x 125/250 = 12.5 -> 12; 27 x 135/270 = 13.5 -> 14
    assert [c.amount_minor for c in refund_clawbacks([piece(1, 25)], 125, 250, False)] == [12]
    assert [c.amount_minor for c in refund_clawbacks([piece(1, 27)], 135, 270, False)] == [14]


def test_the_refund_that_completes_the_invoice_takes_the_exact_remainder_not_its_proportional_share():
    accrual = piece(1, 25, clawed=12)
    [final] = refund_clawbacks([accrual], 125, 250, True)
    assert final.amount_minor == 13  # proportional would be 12: the remainder keeps the total exact


def test_proportional_clawbacks_are_capped_at_what_is_left_of_the_accrual():
    # 5 x 3/10 = 1.5 -> 2 each time: the third refund finds only 1 left.
    accrual = piece(1, 5, clawed=4)
    assert [c.amount_minor for c in refund_clawbacks([accrual], 3, 10, False)] == [1]
    assert refund_clawbacks([piece(1, 5, clawed=5)], 1, 10, True) == []


def test_a_held_piece_is_clawed_from_pending_and_a_released_one_from_available():
    [held] = refund_clawbacks([piece(1, 1_000)], 50, 100, False)
    [released] = refund_clawbacks([piece(1, 1_000, released=True)], 50, 100, False)
    assert (held.from_pending, held.amount_minor) == (True, 500)
    assert (released.from_pending, released.amount_minor) == (False, 500)


def test_the_cpa_is_clawed_back_in_full_only_by_the_refund_that_completes_the_invoice():
    pieces = [piece(1, 5_000), piece(2, 15_000, kind="cpa")]
    assert [(c.kind, c.amount_minor) for c in refund_clawbacks(pieces, 49_999, 50_000, False)] == [("accrual", 5_000)]
    assert [(c.kind, c.amount_minor) for c in refund_clawbacks(pieces, 50_000, 50_000, True)] == \
        [("accrual", 5_000), ("cpa", 15_000)]


def test_a_reversed_accrual_is_never_clawed_back():
    assert refund_clawbacks([piece(1, 1_000, reversed=True)], 100, 100, True) == []


def test_a_reinstated_piece_is_clawed_as_part_of_the_accrual_it_restores():
    root = piece(1, 1_000, clawed=1_000, released=True)
    reinstated = piece(2, 1_000, root_id=1)
    [clawback] = refund_clawbacks([root, reinstated], 40, 100, False)
    assert (clawback.piece_id, clawback.amount_minor, clawback.from_pending) == (2, 400, True)


# ---- won disputes ----

def test_a_won_dispute_with_no_other_refunds_restores_every_clawed_amount_exactly():
    pieces = [piece(1, 999, clawed=333), piece(2, 150, kind="cpa", clawed=150)]
    assert [(r.root_id, r.kind, r.amount_minor) for r in dispute_reinstatements(pieces, 100, 300, 0)] == \
        [(1, "accrual", 333), (2, "cpa", 150)]


def test_a_won_dispute_beside_a_refund_restores_its_proportional_share():
    # paid 300, refund 100 clawed 333 of 999, chargeback 200 clawed the remaining 666; the dispute
    # of 200 is won: 999 x 200/300 = 666 comes back, the refund's 333 stays clawed.
    [restored] = dispute_reinstatements([piece(1, 999, clawed=999)], 200, 300, 100)
    assert restored.amount_minor == 666


def dated(id: int, amount_minor: int, clawbacks: list[tuple[int, int]], *, root_id: int | None = None,
          accrued_at_us: int = 0) -> Piece:
    """A piece with standing clawbacks (instant, amount), each its own transaction."""
    clawed = piece(id, amount_minor, root_id=root_id, clawed=sum(minor for _, minor in clawbacks))
    clawed.accrued_at_us = accrued_at_us
    clawed.clawbacks = {1_000 * id + index: claw for index, claw in enumerate(clawbacks)}
    return clawed


def test_a_won_dispute_restores_a_clawback_dated_after_it_at_that_clawbacks_instant():
    # 400 clawed at 10, 600 at 30; the dispute at 20 restores 700: 400 at 20, the other 300 at 30.
    plans = dispute_reinstatements([dated(1, 1_000, [(10, 400), (30, 600)])], 70, 100, 30, 20)
    assert [(plan.amount_minor, plan.at_us) for plan in plans] == [(400, None), (300, 30)]
    # Nothing dated after the dispute: one reinstatement at the dispute's own instant.
    plans = dispute_reinstatements([dated(1, 1_000, [(10, 400), (15, 600)])], 70, 100, 30, 20)
    assert [(plan.amount_minor, plan.at_us) for plan in plans] == [(700, None)]


def test_a_reinstatement_dated_between_counts_against_what_a_won_dispute_can_restore_there():
    # 500 clawed at 10, of which 500 restored at 25 by another dispute; 500 clawed again at 40.
    root = dated(1, 1_000, [(10, 500), (40, 500)])
    restored = dated(2, 500, [], root_id=1, accrued_at_us=25)
    plans = dispute_reinstatements([root, restored], 50, 100, 0, 20)
    assert [(plan.amount_minor, plan.at_us) for plan in plans] == [(500, 40)]


def test_a_late_won_dispute_restores_what_leaves_the_root_as_clawed_as_time_order():
    # Paid 250, an accrual of 25: chargebacks of 75 at 5, 75 at 7 and 100 at 8, the dispute of 75 won
    # at 6 delivered last. In time order: 8 clawed, 8 restored, 8 and 10 clawed: 18 stays clawed.
    # Delivered last, the third chargeback was capped at the 9 left; its share (8) would leave 17.
    events = [(5, "chargeback", 75), (7, "chargeback", 75), (8, "chargeback", 100), (6, "chargeback_reversed", 75)]
    assert dated_clawed_minor("accrual", 25, 250, events) == 18
    root = dated(1, 25, [(5, 8), (7, 8), (8, 9)])
    assert [plan.amount_minor for plan in dispute_reinstatements([root], 75, 250, 175, 6)] == [8]
    assert [plan.amount_minor for plan in dispute_reinstatements([root], 75, 250, 175, 6, dated=events)] == [7]


def test_a_cpa_is_clawed_in_time_order_only_while_its_invoice_is_wholly_refunded():
    events = [(5, "chargeback", 250), (9, "chargeback_reversed", 100), (7, "refund", 1)]
    assert dated_clawed_minor("cpa", 5_000, 250, events) is None  # a refund of 1 at 7 exceeds what is paid
    assert dated_clawed_minor("cpa", 5_000, 250, [(5, "chargeback", 250), (9, "chargeback_reversed", 100)]) == 0
    assert dated_clawed_minor("cpa", 5_000, 250, [(9, "chargeback_reversed", 100), (5, "chargeback", 250)]) == 0
    assert dated_clawed_minor("cpa", 5_000, 250, [(5, "chargeback", 150), (6, "refund", 100)]) == 5_000


def test_events_of_one_instant_replay_chargebacks_then_won_disputes_then_refunds():
    # Alone in delivery order, the dispute would come before its chargeback, the refund before the dispute.
    # 25 clawed by the chargeback, 10 restored, 5 clawed by the refund.
    events = [(5, "refund", 50), (5, "chargeback_reversed", 100), (5, "chargeback", 250)]
    assert dated_clawed_minor("accrual", 25, 250, events) == 20
    assert dated_clawed_minor("accrual", 25, 250, [(5, "chargeback_reversed", 100)]) is None


@given(events=st.lists(st.tuples(st.integers(0, 50), st.integers(1, 500), st.booleans()), min_size=1, max_size=8),
       at_us=st.integers(0, 50))
def test_what_a_won_dispute_restores_never_exceeds_what_is_clawed_at_any_instant(events, at_us):
    """Random dated clawbacks and reinstatements of one root, each reinstatement restoring at most
    what is clawed by its instant: the parts of a dispute that restores all that is left clawed add
    up to it, none is dated before the dispute, and at every instant the parts dated by then never
    exceed what is clawed, net of reinstatements, by then."""
    clawbacks, reinstatements, net = [], [], 0
    for index, (instant, minor, is_claw) in enumerate(sorted(events, key=lambda e: (e[0], not e[2]))):
        if is_claw:
            clawbacks.append((instant, minor))
            net += minor
        elif minor <= net:
            reinstatements.append(dated(2 + index, minor, [], root_id=1, accrued_at_us=instant))
            net -= minor
    if net == 0:
        return
    root = dated(1, sum(minor for _, minor in clawbacks) + 1, clawbacks)
    plans = dispute_reinstatements([root, *reinstatements], 1, 1, 0, at_us)  # restores all that is left: `net`
    assert sum(plan.amount_minor for plan in plans) == net
    changes = [*clawbacks, *((p.accrued_at_us, -p.amount_minor) for p in reinstatements)]
    parts = [(at_us if plan.at_us is None else plan.at_us, plan.amount_minor) for plan in plans]
    assert all(instant >= at_us for instant, _ in parts)
    for instant in {at_us, *(i for i, _ in changes if i > at_us), *(i for i, _ in parts)}:
        clawed_then = sum(minor for i, minor in changes if i <= instant)
        assert sum(minor for i, minor in parts if i <= instant) <= clawed_then, (instant, parts, changes)


# ---- properties ----

refund_splits = st.lists(st.integers(1, 10_000), min_size=1, max_size=8)


@given(accrual_minor=st.integers(0, 10**9), splits=refund_splits, paid_extra=st.integers(0, 1))
def test_successive_refunds_never_claw_more_than_the_accrual_and_a_full_refund_claws_it_exactly(
        accrual_minor, splits, paid_extra):
    """Refunds of random sizes on one invoice: every clawback is positive, the running total never
    exceeds the accrual, and when the refunds add up to the paid amount the total equals it."""
    paid = sum(splits) + paid_extra
    accrual = piece(1, accrual_minor) if accrual_minor else None
    refunded, clawed = 0, 0
    for count, refund in enumerate(splits, start=1):
        refunded += refund
        plans = refund_clawbacks([accrual] if accrual else [], refund, paid, refunded == paid)
        for plan in plans:
            assert plan.amount_minor > 0
            accrual.clawed_minor += plan.amount_minor
            accrual.pending_minor -= plan.amount_minor
            clawed += plan.amount_minor
        exact = Decimal(accrual_minor) * refunded / paid
        assert clawed <= accrual_minor
        assert abs(clawed - exact) <= Decimal(count) / 2  # at most half a minor unit per refund
    if refunded == paid:
        assert clawed == accrual_minor
