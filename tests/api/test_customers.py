"""POST /v1/attributions, GET /v1/customers/{id} and DELETE /v1/customers/{id}/attributions/{id}."""

from datetime import date, datetime, timedelta, timezone

import pytest

from tests.api.books import errors_of, expect, unique


def attribution(customer_id: str, partner_id: str, day: str = "2026-01-15", **fields) -> dict:
    return {"customer_id": customer_id, "partner_id": partner_id, "effective_from": day, "source": "deal_registration",
            **fields}


def test_an_attribution_is_created_then_repeating_it_changes_nothing(call):
    customer, partner_id = unique("cust"), call.partner()
    first = call.post("/v1/attributions", attribution(customer, partner_id), as_="billing")
    body = expect(first, 201)
    assert body == {"id": body["id"], "customer_id": customer, "partner_id": partner_id, "effective_from": "2026-01-15",
                    "effective_to": None, "source": "deal_registration", "recorded_at": body["recorded_at"]}
    assert isinstance(body["id"], int)
    again = call.post("/v1/attributions", attribution(customer, partner_id), as_="finance")
    assert expect(again, 200) == body
    history = call.read(f"/v1/customers/{customer}", as_="billing")["attributions"]
    assert history == [body]


def test_the_current_attribution_sent_again_with_another_source_is_a_409_naming_it_and_changes_nothing(call):
    customer, partner_id = unique("cust"), call.partner()
    body = expect(call.post("/v1/attributions", attribution(customer, partner_id), as_="billing"), 201)
    for role, extra in (("billing", {}), ("finance", {"replace": True})):
        again = call.post("/v1/attributions", attribution(customer, partner_id, source="import", **extra), as_=role)
        assert errors_of(again, 409) == {"source"}
    assert call.read(f"/v1/customers/{customer}", as_="billing")["attributions"] == [body]


def test_attributing_a_customer_to_another_partner_without_replace_is_a_409(call):
    customer, first, second = unique("cust"), call.partner(), call.partner()
    call.attribute(customer, first)
    for role in ("billing", "finance"):
        response = call.post("/v1/attributions", attribution(customer, second, "2026-03-01"), as_=role)
        assert errors_of(response, 409) == set()
        # Its hint was "set replace: true", which billing may not: a 403 for following it.
        assert first in response.get_json()["detail"] and "takes a finance key and replace: true" in \
            response.get_json()["detail"]


def test_an_attribution_from_its_partners_termination_on_is_a_409_and_one_before_it_is_accepted(call):
    partner_id = call.partner()
    expect(call.patch(f"/v1/partners/{partner_id}", {"status": "terminated", "effective_at": "2026-03-01T00:00:00Z"}),
           200)
    for day in ("2026-03-01", "2026-03-02"):
        refused = call.post("/v1/attributions", attribution(unique("cust"), partner_id, day), as_="billing")
        assert errors_of(refused, 409) == {"partner_id"}
        assert "terminated from 2026-03-01T00:00:00Z" in refused.get_json()["detail"]
    before = expect(call.post("/v1/attributions", attribution(unique("cust"), partner_id, "2026-02-28"),
                              as_="billing"), 201)
    assert before["effective_to"] is None
    customer, other = unique("cust"), call.partner()
    call.attribute(customer, other, "2026-01-01")
    replacing = call.post("/v1/attributions", attribution(customer, partner_id, "2026-04-01", replace=True))
    assert errors_of(replacing, 409) == {"partner_id"}


def test_only_finance_may_replace_an_attribution(call):
    customer, first, second = unique("cust"), call.partner(), call.partner()
    call.attribute(customer, first, "2026-01-01")
    refused = call.post("/v1/attributions", attribution(customer, second, "2026-03-01", replace=True), as_="billing")
    assert refused.status_code == 403 and refused.mimetype == "application/problem+json"
    replaced = call.created("/v1/attributions", attribution(customer, second, "2026-03-01", replace=True))
    assert (replaced["partner_id"], replaced["effective_from"]) == (second, "2026-03-01")
    history = call.read(f"/v1/customers/{customer}")["attributions"]
    assert [(a["partner_id"], a["effective_from"], a["effective_to"]) for a in history] == [
        (first, "2026-01-01", "2026-03-01"), (second, "2026-03-01", None)]


def test_an_admin_may_replace_an_attribution(call):
    customer, first, second = unique("cust"), call.partner(), call.partner()
    call.attribute(customer, first, "2026-01-01")
    replaced = call.created("/v1/attributions", attribution(customer, second, "2026-03-01", replace=True), as_="admin")
    assert (replaced["partner_id"], replaced["effective_from"]) == (second, "2026-03-01")
    assert [a["partner_id"] for a in call.read(f"/v1/customers/{customer}")["attributions"]] == [first, second]


@pytest.mark.parametrize("replace", ["yes", "true", 1, 0, None, [True]])
def test_replace_is_a_json_boolean_or_a_422_naming_it(call, replace):
    customer, first, second = unique("cust"), call.partner(), call.partner()
    call.attribute(customer, first, "2026-01-01")
    response = call.post("/v1/attributions", attribution(customer, second, "2026-03-01", replace=replace))
    assert errors_of(response) == {"replace"}
    assert [a["partner_id"] for a in call.read(f"/v1/customers/{customer}")["attributions"]] == [first]


def test_billing_may_send_replace_false(call):
    customer, partner_id = unique("cust"), call.partner()
    body = call.created("/v1/attributions", attribution(customer, partner_id, replace=False), as_="billing")
    assert (body["customer_id"], body["partner_id"]) == (customer, partner_id)


def test_an_attribution_dated_more_than_a_year_ahead_is_a_422_and_blocks_nothing(call):
    customer, first, second = unique("cust"), call.partner(), call.partner()
    far = (date.today() + timedelta(days=400)).isoformat()
    assert errors_of(call.post("/v1/attributions", attribution(customer, first, far), as_="billing")) == {
        "effective_from"}
    call.attribute(customer, first, "2026-01-01")
    assert errors_of(call.post("/v1/attributions", attribution(customer, second, far, replace=True))) == {
        "effective_from"}
    replaced = call.created("/v1/attributions", attribution(customer, second, "2026-03-01", replace=True))
    assert replaced["partner_id"] == second


def test_a_replacement_must_start_after_the_current_attribution(call):
    customer, first, second = unique("cust"), call.partner(), call.partner()
    call.attribute(customer, first, "2026-02-01")
    response = call.post("/v1/attributions", attribution(customer, second, "2026-02-01", replace=True))
    assert errors_of(response, 409) == {"effective_from"}


def test_finance_extends_a_window_by_attributing_the_customer_to_its_own_partner_again_with_replace(call):
    plan_id = unique("plan")
    call.created("/v1/plans", {"id": plan_id, "name": "One month", "rates": [{"from_month": 1, "rate": "0.20"}],
                               "duration_months": 1, "hold_days": 30, "min_payout": [],
                               "negative_balance": "carry_forward"})
    customer, partner_id = unique("cust"), call.partner(plan_id=plan_id)
    call.attribute(customer, partner_id, "2026-01-01")
    for role in ("billing", "finance"):  # without replace, a new start is refused, and nothing is written
        response = call.post("/v1/attributions", attribution(customer, partner_id, "2026-03-01"), as_=role)
        assert errors_of(response, 409) == set()
        assert "replace" in response.get_json()["detail"]
    outside = call.event(unique("evt"), customer, unique("inv"), "10.00", "2026-03-05")
    assert outside["status"] == "no_commission"  # the one-month window of 2026-01-01 has ended
    again = call.created("/v1/attributions", attribution(customer, partner_id, "2026-03-01", replace=True))
    assert (again["partner_id"], again["effective_from"]) == (partner_id, "2026-03-01")
    history = call.read(f"/v1/customers/{customer}")["attributions"]
    assert [(a["partner_id"], a["effective_from"], a["effective_to"]) for a in history] == [
        (partner_id, "2026-01-01", "2026-03-01"), (partner_id, "2026-03-01", None)]
    inside = call.event(unique("evt"), customer, unique("inv"), "10.00", "2026-03-10")
    assert [(c["partner_id"], c["kind"], c["amount"]["amount"]) for c in inside["commissions"]] == [
        (partner_id, "accrual", "2.00")]


def test_revenue_follows_the_attribution_in_effect_when_it_occurred(call):
    customer, first, second = unique("cust"), call.partner(), call.partner()
    call.attribute(customer, first, "2026-01-01")
    call.created("/v1/attributions", attribution(customer, second, "2026-03-01", replace=True))
    before = call.event(unique("evt"), customer, unique("inv"), "10.00", "2026-02-28T23:59:59Z")
    after = call.event(unique("evt"), customer, unique("inv"), "10.00", "2026-03-01")
    assert [c["partner_id"] for c in before["commissions"] + after["commissions"]] == [first, second]


@pytest.mark.parametrize("change, named", [
    ({"source": "rumour"}, {"source"}),
    ({"effective_from": "2026-01-15T00:00:00Z"}, {"effective_from"}),
    ({"partner_id": "no-such-partner"}, {"partner_id"}),
    ({"customer_id": "has space"}, {"customer_id"}),
    ({"replace": "yes please"}, {"replace"}),
    ({"channel": "email"}, {"channel"}),
], ids=["source", "date", "partner", "customer", "replace", "unknown"])
def test_a_bad_attribution_is_a_422_naming_the_field(shared, change, named):
    body = {**attribution("c-bad", "p1"), **change}
    response = shared.client.post("/v1/attributions", json=body,
                                  headers={"Authorization": f"Bearer {shared.keys.billing}"})
    assert errors_of(response) == named


def test_an_attribution_dated_by_an_instant_is_told_that_it_takes_a_date(shared):
    body = {**attribution("c-instant", "p1"), "effective_from": "2026-01-15T00:00:00Z"}
    response = shared.client.post("/v1/attributions", json=body,
                                  headers={"Authorization": f"Bearer {shared.keys.billing}"})
    assert errors_of(response) == {"effective_from"}
    assert response.get_json()["errors"]["effective_from"] == ["must be a date YYYY-MM-DD"]


def test_a_customer_id_may_hold_slashes_and_colons(call):
    customer = f"org/{unique('acme')}:eu@billing"
    call.attribute(customer, call.partner())
    assert call.read(f"/v1/customers/{customer}", as_="billing")["id"] == customer


def test_an_unknown_customer_is_a_404(shared):
    response = shared.client.get("/v1/customers/nobody", headers={"Authorization": f"Bearer {shared.keys.billing}"})
    assert response.status_code == 404 and response.get_json()["detail"] == "customer 'nobody' does not exist"


def test_a_customer_reads_with_its_history(shared):
    response = shared.client.get("/v1/customers/p2-customer",
                                 headers={"Authorization": f"Bearer {shared.keys.finance}"})
    body = expect(response, 200)
    assert body["id"] == "p2-customer" and body["created_at"].endswith("Z")
    assert [(a["partner_id"], a["effective_from"], a["effective_to"], a["source"]) for a in body["attributions"]] == [
        ("p2", "2026-01-01", None, "manual")]


def test_a_move_to_another_partner_called_off_is_withdrawn_by_finance_alone_but_not_one_started(call):
    customer, first, second = unique("cust"), call.partner(), call.partner()
    for partner_id in (first, second):
        call.partner_key(partner_id)
    current = expect(call.post("/v1/attributions", attribution(customer, first), as_="billing"), 201)
    ahead = (datetime.now(timezone.utc).date() + timedelta(days=40)).isoformat()
    moved = call.created("/v1/attributions", attribution(customer, second, ahead, replace=True))
    path = f"/v1/customers/{customer}/attributions/{moved['id']}"
    unknown = call.client.delete("/v1/no-such-route", headers=call.headers(first)).get_json()
    for partner_id in (first, second):
        refused = call.delete(path, as_=partner_id)
        assert refused.status_code == 404 and refused.get_json() == unknown
    assert errors_of(call.delete(path, as_="billing"), 403) == set()
    body = expect(call.delete(path), 200)
    assert body["attributions"] == [current]  # the first attribution is current again, with no end
    [withdrawn] = body["withdrawn_attributions"]
    assert withdrawn == {key: moved[key] for key in ("id", "partner_id", "effective_from", "source", "recorded_at")
                         } | {"withdrawn_at": withdrawn["withdrawn_at"]} and withdrawn["withdrawn_at"].endswith("Z")
    assert expect(call.delete(path), 200) == body == call.read(f"/v1/customers/{customer}")  # asked again: the same
    started = call.delete(f"/v1/customers/{customer}/attributions/{current['id']}")
    assert errors_of(started, 409) == set() and "started at 2026-01-15" in started.get_json()["detail"]
    assert errors_of(call.delete(f"/v1/customers/{customer}/attributions/{moved['id'] + 1000}"), 404) == set()
    # What the move blocked is taken: a move from an earlier day.
    sooner = (datetime.now(timezone.utc).date() + timedelta(days=20)).isoformat()
    assert call.created("/v1/attributions", attribution(customer, second, sooner, replace=True)
                        )["effective_from"] == sooner


@pytest.mark.parametrize("raw, content_type", [(b'{"reason": "called off"}', "application/json"),
                                              (b"{}", "application/json"), (b"called off", "text/plain")])
def test_a_withdrawal_sent_with_a_body_is_a_422_naming_it_and_withdraws_nothing(call, raw, content_type):
    # The body was ignored and the attribution withdrawn: a reason put there was taken for recorded.
    customer, first, second = unique("cust"), call.partner(), call.partner()
    call.attribute(customer, first)
    ahead = (datetime.now(timezone.utc).date() + timedelta(days=40)).isoformat()
    moved = call.created("/v1/attributions", attribution(customer, second, ahead, replace=True))
    path = f"/v1/customers/{customer}/attributions/{moved['id']}"
    before = call.read(f"/v1/customers/{customer}")
    refused = call.client.delete(path, data=raw, content_type=content_type, headers=call.headers("finance"))
    assert errors_of(refused) == {"body"} and refused.get_json()["errors"]["body"] == ["DELETE takes no request body"]
    assert call.read(f"/v1/customers/{customer}") == before
    assert expect(call.delete(path), 200)["withdrawn_attributions"][0]["id"] == moved["id"]


def test_a_new_customer_s_only_attribution_dated_wrong_is_withdrawn_and_the_customer_stays_known(call):
    """A customer's first attribution, dated a year ahead by mistake, blocked every other attribution
    of the customer until it started. Withdrawn, the customer is known with none; its revenue is
    `unattributed` until the attribution recorded in its place starts being the customer's."""
    customer, first, second = unique("cust"), call.partner(), call.partner()
    for partner_id in (first, second):
        call.partner_key(partner_id)
    year_wrong = (datetime.now(timezone.utc).date() + timedelta(days=365)).isoformat()
    wrong = call.created("/v1/attributions", attribution(customer, first, year_wrong), as_="billing")
    meant = (datetime.now(timezone.utc).date() - timedelta(days=10)).isoformat()
    assert errors_of(call.post("/v1/attributions", attribution(customer, first, meant), as_="billing"), 409) == set()
    path = f"/v1/customers/{customer}/attributions/{wrong['id']}"
    for partner_id in (first, second):
        assert errors_of(call.delete(path, as_=partner_id), 404) == set()
    body = expect(call.delete(path), 200)
    assert body["attributions"] == [] and [w["effective_from"] for w in body["withdrawn_attributions"]] == [
        year_wrong]
    assert call.read(f"/v1/customers/{customer}", as_="billing") == body
    today = datetime.now(timezone.utc).date().isoformat()
    assert call.event(unique("evt"), customer, unique("inv"), "50.00", today)["status"] == "unattributed"
    assert call.created("/v1/attributions", attribution(customer, first, meant), as_="billing")["effective_from"] == meant
    later = call.event(unique("evt"), customer, unique("inv"), "50.00", today)
    assert later["status"] == "posted" and [c["partner_id"] for c in later["commissions"]] == [first]
    assert call.read("/v1/integrity")["ok"] is True


def test_an_attribution_s_id_is_read_in_a_path_as_the_other_ids_are(call):
    # `/v1/transactions/0108` is transaction 108; an attribution spelt so was a 404.
    customer, partner = unique("cust"), call.partner()
    ahead = (datetime.now(timezone.utc).date() + timedelta(days=40)).isoformat()
    moved = call.created("/v1/attributions", attribution(customer, partner, ahead))
    for spelt in ("0", "-1", "+1", str(2**63), "9" * 30, f"{moved['id']}.0", "\uff11"):
        assert errors_of(call.delete(f"/v1/customers/{customer}/attributions/{spelt}"), 404) == set(), spelt
    body = expect(call.delete(f"/v1/customers/{customer}/attributions/00{moved['id']}"), 200)
    assert [withdrawn["id"] for withdrawn in body["withdrawn_attributions"]] == [moved["id"]]
