from decimal import Decimal

import pytest

from ledger.errors import InvalidInput
from ledger.terms import Override, RateStep, parse_terms, rate_for_month, terms_from_json, terms_to_json

STEP_DOWN = {
    "rates": [{"from_month": 1, "rate": "0.40"}, {"from_month": 4, "rate": "0.20"}],
    "duration_months": 12, "hold_days": 30, "negative_balance": "carry_forward",
    "cpa": [{"amount": "150.00", "currency": "USD"}, {"amount": "15000", "currency": "JPY"}],
    "min_payout": [{"amount": "50.00", "currency": "USD"}],
    "override": {"rate": "0.05", "basis": "commission"},
}


def test_a_full_plan_parses_into_exact_terms():
    terms = parse_terms(STEP_DOWN)
    assert terms.rates == (RateStep(1, Decimal("0.40")), RateStep(4, Decimal("0.20")))
    assert terms.cpa_minor == {"USD": 15000, "JPY": 15000}
    assert terms.min_payout_minor == {"USD": 5000}
    assert terms.override == Override(Decimal("0.05"), "commission")


def test_terms_survive_their_canonical_json():
    terms = parse_terms(STEP_DOWN)
    assert terms_from_json(terms_to_json(terms)) == terms
    assert terms_to_json(parse_terms(dict(reversed(list(STEP_DOWN.items()))))) == terms_to_json(terms)


@pytest.mark.parametrize("rate", ["0.0000000", "0.0000001", "0.0000000001", "1.0000000000"])
def test_rates_with_many_decimals_survive_their_json_as_written(rate):
    """str(Decimal("0.0000001")) is "1E-7", which the rate parser refuses: a plan stored so could never be read back."""
    terms = parse_terms({**STEP_DOWN, "rates": [{"from_month": 1, "rate": rate}],
                         "override": {"rate": rate, "basis": "revenue"}})
    assert terms_from_json(terms_to_json(terms)) == terms
    assert f'"rate":"{rate}"' in terms_to_json(terms)


@pytest.mark.parametrize("month, rate", [(1, "0.40"), (3, "0.40"), (4, "0.20"), (12, "0.20"), (40, "0.20")])
def test_the_rate_is_the_step_with_the_greatest_from_month_not_after_the_month(month, rate):
    assert rate_for_month(parse_terms(STEP_DOWN), month) == Decimal(rate)


@pytest.mark.parametrize("change, field", [
    ({"rates": []}, "rates"),
    ({"rates": [{"from_month": 2, "rate": "0.1"}]}, "rates.0.from_month"),
    ({"rates": [{"from_month": 1, "rate": "0.1"}, {"from_month": 1, "rate": "0.2"}]}, "rates.1.from_month"),
    ({"rates": [{"from_month": 1, "rate": "1.5"}]}, "rates.0.rate"),
    ({"rates": [{"from_month": 1, "rate": 0.2}]}, "rates.0.rate"),
    ({"rates": [{"from_month": "1", "rate": "0.2"}]}, "rates.0.from_month"),
    ({"duration_months": 0}, "duration_months"),
    ({"duration_months": 2.5}, "duration_months"),
    ({"hold_days": -1}, "hold_days"),
    ({"hold_days": True}, "hold_days"),
    ({"negative_balance": "forgive"}, "negative_balance"),
    ({"cpa": [{"amount": "1.001", "currency": "USD"}]}, "cpa.0.amount"),
    ({"cpa": [{"amount": "1.00", "currency": "ZZZ"}]}, "cpa.0.currency"),
    ({"min_payout": [{"amount": "1.00", "currency": 978}]}, "min_payout.0.currency"),
    ({"cpa": [{"amount": "1.00", "currency": "USD"}, {"amount": "2.00", "currency": "USD"}]}, "cpa.1.currency"),
    ({"min_payout": [{"amount": "-1.00", "currency": "USD"}]}, "min_payout.0.amount"),
    ({"override": {"rate": "0.1", "basis": "profit"}}, "override.basis"),
    ({"override": {"rate": "0.1"}}, "override"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_terms_are_refused_naming_the_field(change, field):
    with pytest.raises(InvalidInput) as refused:
        parse_terms({**STEP_DOWN, **change})
    assert field in refused.value.fields


@pytest.mark.parametrize("change, fields", [
    ({"rates": [{"from_month": 0, "rate": "7"}]}, {"rates.0.from_month", "rates.0.rate"}),
    ({"rates": [{"from_month": 1, "rate": "0.1"}, {"from_month": "2", "rate": 0.1}]},
     {"rates.1.from_month", "rates.1.rate"}),
    ({"min_payout": [{"amount": 5, "currency": "QQQ"}]}, {"min_payout.0.amount", "min_payout.0.currency"}),
    ({"cpa": [{"amount": "-1.00", "currency": "usd"}]}, {"cpa.0.amount", "cpa.0.currency"}),
    ({"cpa": [{"amount": "1.2.3", "currency": None}]}, {"cpa.0.amount", "cpa.0.currency"}),
    # What a currency decides is not decided without one: no more decimals than it allows, zero not negative.
    ({"cpa": [{"amount": "1.00001", "currency": "QQQ"}]}, {"cpa.0.currency"}),
    ({"min_payout": [{"amount": "-0.00", "currency": "QQQ"}]}, {"min_payout.0.currency"}),
])
def test_both_parts_of_a_bad_step_or_money_object_are_named_at_once(change, fields):
    """A 422 names each bad field: a step's bad rate beside its bad month, an amount that is bad in any
    currency beside a bad currency, so that a client does not find them one request at a time."""
    with pytest.raises(InvalidInput) as refused:
        parse_terms({**STEP_DOWN, **change})
    assert set(refused.value.fields) == fields


def test_missing_required_terms_are_each_named():
    with pytest.raises(InvalidInput) as refused:
        parse_terms({})
    assert set(refused.value.fields) == {"rates", "duration_months", "hold_days", "min_payout", "negative_balance"}
