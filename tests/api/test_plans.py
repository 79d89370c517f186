"""POST /v1/plans, POST /v1/plans/{id}/versions, GET /v1/plans/{id}, DELETE /v1/plans/{id}/versions/{n}."""

from datetime import date, timedelta

import pytest

from tests.api.books import errors_of, expect, money, plan_body, unique

HYBRID = {"rates": [{"from_month": 1, "rate": "0.40"}, {"from_month": 4, "rate": "0.2"}], "duration_months": None,
          "cpa": [{"amount": "150", "currency": "USD"}, {"amount": "140.00", "currency": "EUR"}], "hold_days": 60,
          "min_payout": [money("100.00")], "negative_balance": "reset",
          "override": {"rate": "0.10", "basis": "commission"}}


def test_a_new_plan_is_version_1_with_its_terms_in_canonical_form(call):
    plan_id = unique("plan")
    body = call.created("/v1/plans", {"id": plan_id, "name": "Hybrid", **HYBRID})
    assert (body["id"], body["name"], body["version"]) == (plan_id, "Hybrid", 1)
    [version] = body["versions"]
    assert version == {
        "plan_version_id": version["plan_version_id"], "plan_id": plan_id, "version": 1,
        "effective_from": "1970-01-01T00:00:00Z",
        "rates": [{"from_month": 1, "rate": "0.40"}, {"from_month": 4, "rate": "0.2"}], "duration_months": None,
        "cpa": [money("140.00", "EUR"), money("150.00")], "hold_days": 60, "min_payout": [money("100.00")],
        "negative_balance": "reset", "override": {"rate": "0.10", "basis": "commission"}}
    assert call.read(f"/v1/plans/{plan_id}") == body


def test_a_lifetime_window_and_no_minimum_are_stated_and_cpa_and_override_may_be_left_out(call):
    plan_id = unique("plan")
    terms = {"rates": [{"from_month": 1, "rate": "0.10"}], "hold_days": 0, "negative_balance": "carry_forward"}
    # A version restates the plan: one meant to change the rate alone silently ended the window and
    # the minimum payout when it left them out.
    refused = call.post("/v1/plans", {"id": plan_id, "name": "Minimal", **terms})
    assert refused.status_code == 422 and errors_of(refused) == {"duration_months", "min_payout"}
    assert call.get(f"/v1/plans/{plan_id}").status_code == 404
    stated = {**terms, "duration_months": None, "min_payout": []}
    [version] = call.created("/v1/plans", {"id": plan_id, "name": "Minimal", **stated})["versions"]
    assert (version["duration_months"], version["cpa"], version["min_payout"], version["override"]) == \
        (None, [], [], None)
    refused = call.post(f"/v1/plans/{plan_id}/versions", {**terms, "effective_from": "2026-06-01"})
    assert refused.status_code == 422 and errors_of(refused) == {"duration_months", "min_payout"}
    # Each named once: the field's own message, not the terms parser's as well.
    assert refused.get_json()["errors"] == {name: ["Missing data for required field."]
                                            for name in ("duration_months", "min_payout")}


def test_every_bad_field_of_a_plan_is_named_in_one_422(call):
    body = plan_body("has space", name="", rates=[{"from_month": 1, "rate": "0.20"}, {"from_month": 1, "rate": "1.5"}],
                     cpa=[{"amount": "1.234", "currency": "USD"}], hold_days=-1, colour="blue")
    assert errors_of(call.post("/v1/plans", body)) == {
        "id", "name", "rates.1.from_month", "rates.1.rate", "cpa.0.amount", "hold_days", "colour"}


def test_a_plan_without_its_required_terms_is_a_422_naming_them(call):
    assert errors_of(call.post("/v1/plans", {"id": unique("plan"), "name": "Empty"})) == {
        "rates", "duration_months", "hold_days", "min_payout", "negative_balance"}


def test_a_plan_id_already_taken_is_a_409(call):
    plan_id = unique("plan")
    call.created("/v1/plans", plan_body(plan_id))
    assert errors_of(call.post("/v1/plans", plan_body(plan_id)), 409) == set()


def test_a_new_version_starts_at_its_effective_from_and_the_plan_lists_all_versions(call):
    plan_id = unique("plan")
    call.created("/v1/plans", plan_body(plan_id))
    terms = {key: value for key, value in plan_body(plan_id, rates=[{"from_month": 1, "rate": "0.10"}]).items()
             if key not in ("id", "name")}
    version = call.created(f"/v1/plans/{plan_id}/versions", {**terms, "effective_from": "2026-03-01"})
    assert (version["version"], version["effective_from"], version["rates"]) == (
        2, "2026-03-01T00:00:00Z", [{"from_month": 1, "rate": "0.10"}])
    plan = call.read(f"/v1/plans/{plan_id}")
    assert plan["version"] == 2 and [v["version"] for v in plan["versions"]] == [1, 2]
    assert plan["versions"][1] == version


def test_a_version_dated_more_than_a_year_ahead_is_a_422_naming_effective_from(call):
    plan_id = unique("plan")
    call.created("/v1/plans", plan_body(plan_id))
    terms = {key: value for key, value in plan_body(plan_id).items() if key not in ("id", "name")}
    far = (date.today() + timedelta(days=400)).isoformat()
    assert errors_of(call.post(f"/v1/plans/{plan_id}/versions", {**terms, "effective_from": far})) == {"effective_from"}
    assert errors_of(call.post("/v1/plans", {**plan_body(unique("plan")), "effective_from": far})) == {"effective_from"}
    near = (date.today() + timedelta(days=300)).isoformat()
    assert call.created(f"/v1/plans/{plan_id}/versions", {**terms, "effective_from": near})["version"] == 2


@pytest.mark.parametrize("rate", ["0.0000001", "0.0000000"])
def test_a_rate_with_many_decimals_is_kept_as_written_and_its_plan_stays_readable(call, rate):
    plan_id = unique("plan")
    tiny = {"rates": [{"from_month": 1, "rate": rate}], "override": {"rate": rate, "basis": "revenue"}}
    [first] = call.created("/v1/plans", plan_body(plan_id, **tiny))["versions"]
    terms = {key: value for key, value in plan_body(plan_id, **tiny).items() if key not in ("id", "name")}
    second = call.created(f"/v1/plans/{plan_id}/versions", {**terms, "effective_from": "2026-03-01"})
    for version in (first, second, *call.read(f"/v1/plans/{plan_id}")["versions"]):
        assert (version["rates"], version["override"]["rate"]) == ([{"from_month": 1, "rate": rate}], rate)


def test_each_accrual_pins_the_version_in_effect_when_its_event_occurred(call):
    plan_id = unique("plan")
    first = call.created("/v1/plans", plan_body(plan_id))["versions"][0]
    terms = {key: value for key, value in plan_body(plan_id, rates=[{"from_month": 1, "rate": "0.10"}]).items()
             if key not in ("id", "name")}
    second = call.created(f"/v1/plans/{plan_id}/versions", {**terms, "effective_from": "2026-03-01T00:00:00Z"})
    customer = unique("cust")
    call.attribute(customer, call.partner(plan_id=plan_id))
    for day, amount, version in (("2026-02-28", "20.00", first), ("2026-03-01", "10.00", second)):
        posted = call.event(unique("evt"), customer, unique("inv"), "100.00", day)
        assert posted["commissions"][0]["amount"] == money(amount)
        transaction = call.read(f"/v1/transactions/{posted['transaction_ids'][0]}")
        assert transaction["plan_version_id"] == version["plan_version_id"]


@pytest.mark.parametrize("effective_from", ["1970-01-01", "1969-12-31T23:00:00Z"])
def test_a_version_must_start_after_the_latest_one(call, effective_from):
    plan_id = unique("plan")
    call.created("/v1/plans", plan_body(plan_id))
    terms = {key: value for key, value in plan_body(plan_id).items() if key not in ("id", "name")}
    response = call.post(f"/v1/plans/{plan_id}/versions", {**terms, "effective_from": effective_from})
    assert errors_of(response, 409 if effective_from == "1970-01-01" else 422) == {"effective_from"}


def test_a_version_needs_an_effective_from_and_valid_terms(call):
    plan_id = unique("plan")
    call.created("/v1/plans", plan_body(plan_id))
    response = call.post(f"/v1/plans/{plan_id}/versions", {"rates": [], "hold_days": 1, "negative_balance": "x"})
    assert errors_of(response) == {"effective_from", "rates", "negative_balance", "duration_months", "min_payout"}


def test_an_unknown_plan_is_a_404(shared):
    headers = {"Authorization": f"Bearer {shared.keys.finance}"}
    assert shared.client.get("/v1/plans/nope", headers=headers).status_code == 404
    terms = {key: value for key, value in plan_body("nope").items() if key not in ("id", "name")}
    response = shared.client.post("/v1/plans/nope/versions", json={**terms, "effective_from": "2026-01-01"},
                                  headers=headers)
    assert expect(response, 404)["detail"] == "plan 'nope' does not exist"


def test_a_version_not_started_is_withdrawn_by_finance_its_number_kept_and_a_partner_sees_no_plans(call):
    plan_id = unique("plan")
    call.created("/v1/plans", plan_body(plan_id))
    terms = {key: value for key, value in plan_body(plan_id).items() if key not in ("id", "name")}
    ahead = (date.today() + timedelta(days=45)).isoformat()
    version = call.created(f"/v1/plans/{plan_id}/versions", {**terms, "effective_from": ahead})
    partner_id = call.partner(plan_id=plan_id)
    call.partner_key(partner_id)
    path = f"/v1/plans/{plan_id}/versions/2"
    assert call.delete(path, as_=partner_id).status_code == 404
    assert errors_of(call.delete(path, as_="billing"), 403) == set()
    plan = expect(call.delete(path), 200)
    assert (plan["version"], [v["version"] for v in plan["versions"]]) == (1, [1])
    [withdrawn] = plan["withdrawn_versions"]
    assert (withdrawn["version"], withdrawn["effective_from"]) == (2, version["effective_from"])
    assert withdrawn["withdrawn_at"].endswith("Z")
    assert expect(call.delete(path), 200) == plan == call.read(f"/v1/plans/{plan_id}")  # asked again: the same
    later = call.created(f"/v1/plans/{plan_id}/versions", {**terms, "effective_from": ahead})
    assert later["version"] == 3 and later["plan_version_id"] != version["plan_version_id"]
    assert errors_of(call.delete(f"/v1/plans/{plan_id}/versions/1"), 409) == set()
    assert errors_of(call.delete(f"/v1/plans/{plan_id}/versions/4"), 404) == set()
    for other in ("x", "\uff13", "-3", "3.0"):  # a full-width 3, ...: no version's number
        assert call.delete(f"/v1/plans/{plan_id}/versions/{other}").status_code == 404
    assert call.read(f"/v1/plans/{plan_id}")["version"] == 3


def test_a_payment_stamped_as_a_version_starts_earns_that_version_to_the_microsecond(call):
    # Every instant is floored to its microsecond, a start too: a payment sent with the very
    # timestamp a version starts at (seven digits, as .NET writes them), or later within its
    # microsecond, earns that version; one a microsecond before earns the version before it.
    # Rounding a start up instead (tried) priced a payment at the start's own timestamp as before it.
    plan_id = unique("plan")
    first = call.created("/v1/plans", plan_body(plan_id))["versions"][0]
    terms = {key: value for key, value in plan_body(plan_id, rates=[{"from_month": 1, "rate": "0.10"}]).items()
             if key not in ("id", "name")}
    second = call.created(f"/v1/plans/{plan_id}/versions", {**terms, "effective_from": "2026-03-01T00:00:00.1234567Z"})
    assert second["effective_from"] == "2026-03-01T00:00:00.123456Z"
    customer = unique("cust")
    call.attribute(customer, call.partner(plan_id=plan_id))
    for occurred_at, amount, version in (("2026-03-01T00:00:00.1234567Z", "10.00", second),
                                         ("2026-03-01T00:00:00.1234569Z", "10.00", second),
                                         ("2026-03-01T00:00:00.123455Z", "20.00", first)):
        posted = call.event(unique("evt"), customer, unique("inv"), "100.00", occurred_at)
        assert posted["commissions"][0]["amount"] == money(amount), occurred_at
        transaction = call.read(f"/v1/transactions/{posted['transaction_ids'][0]}")
        assert transaction["plan_version_id"] == version["plan_version_id"]


def _steps(count: int) -> list[dict]:
    return [{"from_month": 1 + month, "rate": "0.10"} for month in range(count)]


TERM_VALUES = {  # values of one term each, some the parser takes and some it refuses, all the document can say
    "rates": [None, [], "0.2", _steps(1), _steps(24), _steps(25), [{"from_month": 1}], [{"rate": "0.1"}],
              [{"from_month": 1, "rate": "0.1", "note": "x"}], [{"from_month": 1, "rate": "1.5"}],
              [{"from_month": 1, "rate": "0.1"}, {"from_month": 1200, "rate": "0.1"}],
              [{"from_month": 1, "rate": "0.1"}, {"from_month": 1201, "rate": "0.1"}]],
    "duration_months": [None, 0, 1, 1200, 1201, "12", 1.5],
    "hold_days": [None, -1, 0, 3650, 3651, "30"],
    "negative_balance": [None, "reset", "carry_forward", "other"],
    "cpa": [None, [], [money("1.00")], [{"amount": "1.00"}], [{**money("1.00"), "note": "x"}], {}],
    "min_payout": [None, [], [money("1.00")], [{"currency": "USD"}], [{**money("1.00"), "note": "x"}]],
    "override": [None, {"rate": "0.1", "basis": "revenue"}, {"rate": "0.1"}, {"rate": "0.1", "basis": "x"},
                 {"rate": "0.1", "basis": "revenue", "note": "x"}, []],
}


@pytest.mark.parametrize("term", sorted(TERM_VALUES))
def test_the_document_takes_a_term_exactly_where_the_server_does(call, term):
    """Each value of a term the request schema's document allows is a 201, and each it refuses a 422
    naming the term (or a place in it): nullable, maxima, required and unknown fields as the parser
    has them. (What the document cannot say, as steps in increasing order, is left out.)"""
    import jsonschema_rs

    from tests.api.test_openapi import json_schema

    documented = call.client.get("/v1/openapi.json").get_json()["components"]["schemas"]["PlanRequest"]
    validator = jsonschema_rs.validator_for(json_schema(documented["properties"][term]))
    for value in TERM_VALUES[term]:
        answer = call.post("/v1/plans", plan_body(unique("plan"), **{term: value}))
        assert answer.status_code in (201, 422), answer.data
        assert validator.is_valid(value) == (answer.status_code == 201), (value, answer.get_json())
        if answer.status_code == 422:
            assert {name.split(".")[0] for name in errors_of(answer)} == {term}, (value, answer.get_json())
