"""The program as recorded (`ledger/recorded_program.py`): which facts a reader at a recording
instant could have found in force, and the outcomes a payment could have reached from them."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import recorded_program
from ledger.partners import _Timeline
from ledger.recorded_program import RECORDED_SKEW_US, Fact, Payment, RecordedProgram, Unchecked, facts_at, outcomes
from ledger.terms import RateStep, parse_terms

LONG_BEFORE = 0
R = 10 * RECORDED_SKEW_US  # the reader's recording instant
WITHIN = R - RECORDED_SKEW_US // 2


def test_the_latest_fact_started_by_the_instant_is_in_force_and_a_tie_goes_to_the_later_id():
    facts = [Fact(1, 100, "a", LONG_BEFORE), Fact(2, 300, "b", LONG_BEFORE), Fact(3, 100, "c", LONG_BEFORE)]
    assert facts_at(facts, 99, R) == [None]
    assert facts_at(facts, 200, R) == [facts[2]]
    assert facts_at(facts, 300, R) == [facts[1]]


def test_a_fact_recorded_beyond_the_skew_after_the_reader_was_not_seen():
    facts = [Fact(1, 100, "a", LONG_BEFORE), Fact(2, 150, "b", R + RECORDED_SKEW_US + 1)]
    assert facts_at(facts, 200, R) == [facts[0]]


def test_facts_recorded_within_the_skew_give_one_answer_for_each_prefix_in_id_order():
    facts = [Fact(1, 100, "a", LONG_BEFORE), Fact(2, 150, "b", WITHIN), Fact(3, 120, "c", R + 1),
             Fact(4, 500, "d", WITHIN)]  # 3 starts before 2 does: once 2 is seen, 3 changes nothing
    assert facts_at(facts, 200, R) == [facts[0], facts[1]]
    assert facts_at(facts, 600, R) == [facts[0], facts[1], facts[3]]
    assert facts_at(facts, 200, R, skew_us=0) == [facts[1]]  # no skew: recorded before the reader is seen


@given(st.lists(st.tuples(st.integers(0, 20), st.sampled_from("abc")), max_size=8), st.integers(-1, 21))
def test_with_every_fact_recorded_long_before_the_answer_is_the_services_own(rows, instant):
    """`Program` reads a partner's facts through `_Timeline`, loaded in id order."""
    timeline = _Timeline()
    for starts, value in rows:
        timeline.add(starts, value)
    facts = [Fact(index, starts, value, LONG_BEFORE) for index, (starts, value) in enumerate(rows)]
    [found] = facts_at(facts, instant, R)
    assert (found.value if found is not None else None) == timeline.at(instant)


PLAN = parse_terms({"rates": [{"from_month": 1, "rate": "0.20"}], "hold_days": 0, "duration_months": None, "min_payout": [],
                    "negative_balance": "carry_forward"})
HALF = PLAN._replace(rates=(RateStep(1, Decimal("0.50")),))


def a_program(version_recorded_at_us: int) -> RecordedProgram:
    return RecordedProgram(
        parents={"northwind": None},
        statuses={"northwind": [Fact(1, 0, "active", LONG_BEFORE)]},
        plans={"northwind": [Fact(1, 0, "standard", LONG_BEFORE)]},
        versions={"standard": [Fact(1, 0, PLAN, LONG_BEFORE), Fact(2, 50, HALF, version_recorded_at_us)]})


PAYMENT = Payment("e1", "acme", "USD", 10_000, 100, R, False)
ATTRIBUTED = [Fact(1, 0, "northwind", LONG_BEFORE)]


def amounts(program: RecordedProgram, attributions: list[Fact] = ATTRIBUTED) -> list[list[tuple[int, int]]]:
    """(amount, plan version id) of each earning of each outcome, in the order they are tried."""
    return [[(e.amount_minor, e.plan_version_id) for e in outcome.earned]
            for outcome in outcomes(program, PAYMENT, attributions)]


def test_a_plan_version_recorded_within_the_skew_gives_both_outcomes_the_one_of_every_fact_first():
    assert amounts(a_program(WITHIN)) == [[(5_000, 2)], [(2_000, 1)]]
    assert amounts(a_program(LONG_BEFORE)) == [[(5_000, 2)]]
    assert amounts(a_program(R + 2 * RECORDED_SKEW_US)) == [[(2_000, 1)]]


def test_an_attribution_recorded_within_the_skew_may_not_have_been_seen():
    found = outcomes(a_program(LONG_BEFORE), PAYMENT, [Fact(1, 0, "northwind", WITHIN)])
    assert [(o.eligible, len(o.earned)) for o in found] == [(True, 1), (False, 0)]


def test_a_payment_whose_uncertain_facts_give_too_many_outcomes_goes_unchecked(monkeypatch):
    monkeypatch.setattr(recorded_program, "OUTCOMES_MAX", 1)
    with pytest.raises(Unchecked):
        amounts(a_program(WITHIN))
    assert amounts(a_program(LONG_BEFORE)) == [[(5_000, 2)]]


def test_a_plan_version_whose_terms_do_not_parse_leaves_the_payments_on_it_unchecked():
    unreadable = a_program(LONG_BEFORE)
    unreadable.versions["standard"][1] = unreadable.versions["standard"][1]._replace(value=None)
    with pytest.raises(Unchecked):
        amounts(unreadable)
