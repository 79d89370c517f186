"""Requests that fuzzing found answered with a 500, each kept as a test that names the field.

Found by `make soak` (tests/api/test_schemathesis.py, 100 generated invalid requests per operation):
a plan whose `cpa` or `min_payout` item carried a `currency` that was a JSON array or object was a
500, not a 422 naming `cpa.N.currency`. `ledger.terms._parse_money_list` hands the raw value to
`ledger.money.currency_exponent`, which was wrapped in `functools.lru_cache`: the cache hashed its
argument before the function's own `isinstance(code, str)` check could refuse it, so
`TypeError: unhashable type: 'list'` escaped the request. The check now runs before the cache.
"""

import pytest

from tests.api.books import errors_of, money, plan_body, unique

TERMS = {"rates": [{"from_month": 1, "rate": "0.20"}], "duration_months": None, "hold_days": 0,
         "negative_balance": "reset", "min_payout": []}


@pytest.mark.parametrize("scratch", ["sqlite"], indirect=True)  # parsing only: one engine is enough
@pytest.mark.parametrize("term", ["cpa", "min_payout"])
@pytest.mark.parametrize("currency", [[], {"code": "USD"}], ids=["array", "object"])
def test_a_plan_whose_money_term_has_a_non_string_currency_is_a_422_naming_it(call, term, currency):
    body = plan_body(unique("plan"), **{**TERMS, term: [money("1.00") | {"currency": currency}]})
    response = call.post("/v1/plans", body)
    assert response.status_code == 422, (response.status_code, response.get_json())
    assert errors_of(response) == {f"{term}.0.currency"}


@pytest.mark.parametrize("scratch", ["sqlite"], indirect=True)
def test_a_plan_version_whose_cpa_has_a_non_string_currency_is_a_422_naming_it(call):
    plan_id = unique("plan")
    call.created("/v1/plans", plan_body(plan_id, **TERMS))
    response = call.post(f"/v1/plans/{plan_id}/versions",
                         {**TERMS, "effective_from": "2026-06-01", "cpa": [{"amount": "1.00", "currency": []}]})
    assert response.status_code == 422, (response.status_code, response.get_json())
    assert errors_of(response) == {"cpa.0.currency"}
