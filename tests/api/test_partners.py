"""Partners: POST, GET (list and one), PATCH (status or plan), balance and statement (JSON and CSV)."""

from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from api.routes.partners import StatementSchema

from tests.api.books import (assert_not_a_cursor, crafted_cursor, errors_of, expect, next_cursor, plan_body,
                             unique)
from tests.api.conftest import bearer


def partner_body(partner_id: str, **fields) -> dict:
    return {"id": partner_id, "name": f"Partner {partner_id}", "type": "var", "plan_id": "standard", **fields}


def test_a_new_partner_is_active_on_its_plan(call):
    partner_id = unique("pt")
    body = call.created("/v1/partners", partner_body(partner_id))
    assert body == {"id": partner_id, "name": f"Partner {partner_id}", "type": "var", "parent_id": None, "depth": 1,
                    "status": "active", "plan_id": "standard", "created_at": body["created_at"], "scheduled": [],
                    "withdrawn_changes": []}
    assert body["created_at"].endswith("Z")
    assert call.read(f"/v1/partners/{partner_id}") == body


def test_a_sub_partner_sits_one_level_below_its_parent(call):
    parent = call.partner()
    child = call.created("/v1/partners", partner_body(unique("pt"), parent_id=parent))
    assert (child["parent_id"], child["depth"]) == (parent, 2)


@pytest.mark.parametrize("fields, named", [
    ({"type": "franchise"}, {"type"}),
    ({"plan_id": "no-such-plan"}, {"plan_id"}),
    ({"parent_id": "no-such-partner"}, {"parent_id"}),
    ({"id": "a:b", "name": ""}, {"id", "name"}),
    ({"tier": "gold"}, {"tier"}),
    ({"name": " \t "}, {"name"}),
], ids=["type", "plan", "parent", "id-and-name", "unknown", "blank-name"])
def test_a_bad_partner_is_a_422_naming_the_field(call, fields, named):
    assert errors_of(call.post("/v1/partners", partner_body(unique("pt"), **fields))) == named


def test_a_partner_id_already_taken_is_a_409(call):
    partner_id = call.partner()
    assert errors_of(call.post("/v1/partners", partner_body(partner_id)), 409) == set()


def test_finance_lists_every_partner_in_id_order_page_by_page(call):
    mine = sorted(call.partner(f"{unique('list')}-{n}") for n in range(3))
    seen, cursor = [], None
    while True:
        body = call.read("/v1/partners?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert len(body["items"]) <= 2
        seen += [item["id"] for item in body["items"]]
        assert len(seen) == len(set(seen)), seen  # a cursor that went nowhere would give a page again
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    assert set(mine) <= set(seen) and {"p1", "p2"} <= set(seen)


def test_pages_continue_after_a_partner_id_of_the_greatest_length(fresh):
    longest = "a_" + "x.y-" * 15 + "zz"  # 64 characters of the partner id alphabet
    assert len(longest) == 64
    fresh.partner(longest)
    seen, cursor = [], None
    for _ in range(4):  # three pages, and a fourth only if the cursor went nowhere
        body = fresh.read("/v1/partners?limit=1" + (f"&cursor={cursor}" if cursor else ""))
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [longest, "p1", "p2"] and cursor is None


def test_a_partner_key_lists_only_its_own_partner(shared):
    body = expect(shared.client.get("/v1/partners", headers=bearer(shared.keys.p2)), 200)
    assert [item["id"] for item in body["items"]] == ["p2"] and body["next_cursor"] is None


def test_a_bad_partner_cursor_is_a_422(shared):
    response = shared.client.get("/v1/partners?cursor=nonsense", headers=bearer(shared.keys.finance))
    assert errors_of(response) == {"cursor"}


def test_a_cursor_the_partner_list_did_not_hand_out_is_a_422_naming_it(shared):
    """Another list's cursor, and one whose key is not a partner id (crafted, or made before
    cursors named their list), would have listed the partners after a key no page ended on."""
    foreign = [next_cursor(shared, listing) for listing in ("/v1/periods", "/v1/transactions")]
    crafted = [crafted_cursor(content) for content in (
        "after-key:p1", "partners:after:", "partners:after:-p1", "partners:after:p 1", "periods:after:p1")]
    for cursor in (*foreign, *crafted):
        assert_not_a_cursor(shared, "/v1/partners", cursor)


def test_another_partner_is_a_404_like_a_missing_one(shared):
    theirs = shared.client.get("/v1/partners/p2", headers=bearer(shared.keys.p1))
    missing = shared.client.get("/v1/partners/nobody", headers=bearer(shared.keys.p1))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.get_json()["detail"].replace("p2", "X") == missing.get_json()["detail"].replace("nobody", "X")
    assert shared.client.get("/v1/partners/nobody", headers=bearer(shared.keys.finance)).status_code == 404


def test_a_status_change_applies_now_and_termination_is_final(call):
    partner_id = call.partner()
    assert expect(call.patch(f"/v1/partners/{partner_id}", {"status": "suspended"}), 200)["status"] == "suspended"
    assert expect(call.patch(f"/v1/partners/{partner_id}", {"status": "terminated"}), 200)["status"] == "terminated"
    assert errors_of(call.patch(f"/v1/partners/{partner_id}", {"status": "active"}), 409) == set()


def test_a_termination_dated_ahead_is_final_too_no_status_may_follow_it(call):
    # The partner is active now, terminated from a later day: a status after that day is a 409, as
    # the database refuses it (a status never follows a termination), not a 500.
    partner_id = call.partner()
    ends, later = (date.today() + timedelta(days=days) for days in (2, 3))
    body = expect(call.patch(f"/v1/partners/{partner_id}", {"status": "terminated", "effective_at": f"{ends}T00:00:00Z"}), 200)
    assert body["status"] == "active"
    for status in ("active", "suspended", "terminated"):
        refused = call.patch(f"/v1/partners/{partner_id}", {"status": status, "effective_at": f"{later}T00:00:00Z"})
        assert errors_of(refused, 409) == set(), status
        assert "termination is final" in refused.get_json()["detail"]


def test_a_suspended_partner_still_accrues(call):
    partner_id, customer = call.partner(), unique("cust")
    call.attribute(customer, partner_id)
    expect(call.patch(f"/v1/partners/{partner_id}", {"status": "suspended", "effective_at": "2026-01-10T00:00:00Z"}),
           200)
    assert call.event(unique("evt"), customer, unique("inv"), "10.00", "2026-01-20")["status"] == "posted"


def test_a_plan_change_from_a_date_moves_the_partner_to_the_new_plan(call):
    partner_id, plan_id = call.partner(), unique("plan")
    call.created("/v1/plans", plan_body(plan_id))
    body = expect(call.patch(f"/v1/partners/{partner_id}", {"plan_id": plan_id, "effective_from": "2026-02-01"}), 200)
    assert body["plan_id"] == plan_id
    again = call.patch(f"/v1/partners/{partner_id}", {"plan_id": "standard", "effective_from": "2026-02-01"})
    assert errors_of(again, 409) == {"effective_from"}
    assert errors_of(call.patch(f"/v1/partners/{partner_id}", {"plan_id": "no-such-plan",
                                                                "effective_from": "2026-03-01"})) == {"plan_id"}


def test_a_status_or_plan_change_dated_more_than_a_year_ahead_is_a_422_and_blocks_nothing(call):
    partner_id, far = call.partner(), (date.today() + timedelta(days=400)).isoformat()
    status = call.patch(f"/v1/partners/{partner_id}", {"status": "suspended", "effective_at": f"{far}T00:00:00Z"})
    assert errors_of(status) == {"effective_at"}
    assert errors_of(call.patch(f"/v1/partners/{partner_id}", {"plan_id": "standard", "effective_from": far})) == {
        "effective_from"}
    assert expect(call.patch(f"/v1/partners/{partner_id}", {"status": "suspended"}), 200)["status"] == "suspended"


@pytest.mark.parametrize("body, named", [
    ({}, {"body"}),
    ({"status": "suspended", "plan_id": "standard"}, {"plan_id"}),
    ({"plan_id": "standard"}, {"effective_from"}),
    ({"effective_at": "2026-01-01T00:00:00Z"}, {"status"}),
    ({"status": "retired"}, {"status"}),
    ({"name": "Renamed"}, {"name"}),
], ids=["neither", "both", "plan-without-date", "date-without-status", "bad-status", "unknown"])
def test_a_patch_is_exactly_one_change_else_a_422(shared, body, named):
    response = shared.client.patch("/v1/partners/p1", json=body, headers=bearer(shared.keys.finance))
    assert errors_of(response) == named


def test_patching_an_unknown_partner_is_a_404(shared):
    response = shared.client.patch("/v1/partners/nobody", json={"status": "suspended"},
                                   headers=bearer(shared.keys.finance))
    assert response.status_code == 404


def test_a_balance_counts_postings_before_as_of(shared):
    def balances(query: str, key: str) -> dict:
        body = expect(shared.client.get(f"/v1/partners/p1/balance{query}", headers=bearer(key)), 200)
        assert body["partner_id"] == "p1"
        return body

    now = balances("", shared.keys.p1)
    assert now["balances"] == [
        {"currency": "JPY", "pending": "1234", "available": "0", "total": "1234"},
        {"currency": "USD", "pending": "100.00", "available": "0.00", "total": "100.00"}]
    assert now["as_of"] > "2026-11"
    assert balances("?as_of=2026-01-20", shared.keys.finance) == {
        "partner_id": "p1", "as_of": "2026-01-21T00:00:00Z",
        "balances": [{"currency": "USD", "pending": "100.00", "available": "0.00", "total": "100.00"}]}
    assert balances("?as_of=2026-01-20T00:00:00Z", shared.keys.finance)["balances"] == []


def test_a_balance_of_an_unknown_partner_is_a_404_and_a_bad_as_of_a_422(shared):
    headers = bearer(shared.keys.finance)
    assert shared.client.get("/v1/partners/nobody/balance", headers=headers).status_code == 404
    assert errors_of(shared.client.get("/v1/partners/p1/balance?as_of=soon", headers=headers)) == {"as_of"}


def statement(shared, query: str, key: str | None = None, **headers):
    return shared.client.get(f"/v1/partners/p1/statement{query}",
                             headers=bearer(key or shared.keys.finance) | headers)


def test_a_statement_traces_each_line_to_its_source(shared):
    body = expect(statement(shared, "?period=2026-01", shared.keys.p1), 200)
    assert (body["partner_id"], body["period"], body["period_status"], body["close_hash"]) == (
        "p1", "2026-01", "open", None)
    assert [section["currency"] for section in body["currencies"]] == ["JPY", "USD"]
    usd = body["currencies"][1]
    assert usd["opening"] == {"pending": "0.00", "available": "0.00"}
    assert usd["lines"] == [{"transaction_id": shared.booked.p1[0], "effective_at": "2026-01-20T00:00:00Z",
                             "original_effective_at": None, "kind": "accrual", "customer_id": "p1-customer",
                             "invoice_id": "p1-a-invoice", "event_id": "p1-a-event", "pending": "100.00",
                             "available": "0.00"}]
    assert usd["totals"] == {"accrual": "100.00"}
    assert usd["closing"] == {"pending": "100.00", "available": "0.00"}


@pytest.mark.parametrize("period", ["2026-01", "2026-02"])
def test_a_statement_is_sent_exactly_as_its_schema_documents_it(shared, period):
    """The view sends `statements.to_data` without dumping it through StatementSchema."""
    body = expect(statement(shared, f"?period={period}"), 200)
    assert body["currencies"]
    assert StatementSchema().validate(body) == {}  # every documented field, of its type
    assert StatementSchema().dump(body) == body  # and nothing else


def test_a_later_statement_opens_where_the_last_closed(shared):
    body = expect(statement(shared, "?period=2026-02"), 200)
    assert [(s["currency"], s["opening"], s["lines"], s["closing"]) for s in body["currencies"]] == [
        ("JPY", {"pending": "1234", "available": "0"}, [], {"pending": "1234", "available": "0"}),
        ("USD", {"pending": "100.00", "available": "0.00"}, [], {"pending": "100.00", "available": "0.00"})]


@pytest.mark.parametrize("query, accept", [("?period=2026-01&format=csv", None), ("?period=2026-01", "text/csv"),
                                           ("?period=2026-01", "text/csv;q=0.9, application/json;q=0.5"),
                                           ("?period=2026-01", "text/csv; charset=utf-8"),
                                           ("?period=2026-01", "text/csv;header=present;q=0.9, application/json;q=0.5")],
                         ids=["format", "accept", "accept-preferred", "accept-charset", "accept-parameters-preferred"])
def test_a_statement_comes_as_csv_when_asked(shared, query, accept):
    """Parameters of the media range (RFC 7111's `charset` and `header`) do not change what is asked for."""
    response = statement(shared, query, **({"Accept": accept} if accept else {}))
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == 'attachment; filename="statement-p1-2026-01.csv"'
    lines = response.get_data(as_text=True).splitlines()
    assert lines[0].startswith("partner_id,period,currency,row,transaction_id")
    assert f"p1,2026-01,USD,line,{shared.booked.p1[0]},2026-01-20T00:00:00Z,,accrual,p1-customer,p1-a-invoice," \
           "p1-a-event,100.00,0.00" in lines
    assert len(lines) == 1 + 3 * 2  # header; opening, one line, closing per currency


def test_format_json_wins_over_an_accept_header_asking_for_csv(shared):
    response = statement(shared, "?period=2026-01&format=json", Accept="text/csv")
    assert response.status_code == 200 and response.mimetype == "application/json"


@pytest.mark.parametrize("accept", ["application/json", "text/csv"])
def test_a_statement_varies_by_accept_so_that_a_cache_keeps_its_json_and_csv_apart(shared, accept):
    response = statement(shared, "?period=2026-01", Accept=accept)
    assert response.status_code == 200 and response.mimetype == accept
    assert "accept" in {value.strip().lower() for value in response.headers.get("Vary", "").split(",")}


@pytest.mark.parametrize("query, named", [("", {"period"}), ("?period=2026-13", {"period"}),
                                          ("?period=2026-01&format=pdf", {"format"}),
                                          ("?period=2026-01&currency=USD", {"currency"})],
                         ids=["missing", "month", "format", "unknown"])
def test_a_bad_statement_query_is_a_422_naming_it(shared, query, named):
    assert errors_of(statement(shared, query)) == named


def test_another_partners_statement_and_balance_are_404_in_any_format(shared):
    for path in ("/v1/partners/p2/statement?period=2026-01", "/v1/partners/p2/statement?period=2026-01&format=csv",
                 "/v1/partners/p2/balance"):
        response = shared.client.get(path, headers=bearer(shared.keys.p1) | {"Accept": "text/csv"})
        assert response.status_code == 404 and response.mimetype == "application/problem+json", path


def _facts(scratch, table: str, partner_id: str) -> int:
    with scratch.database.reader() as session:
        return session.execute(sa.text(f"SELECT count(*) FROM {table} WHERE partner_id = :p"),
                               {"p": partner_id}).scalar_one()


def test_a_plan_change_sent_again_unchanged_answers_200_and_is_recorded_once(call, scratch):
    # A retry of a PATCH that committed (its answer lost, or a 503 at commit) repeats the latest plan
    # change: like an attribution sent again, it changes nothing, rather than a 409 saying the change
    # must start after itself.
    partner_id, plan_id = call.partner(), unique("plan")
    call.created("/v1/plans", plan_body(plan_id))
    change = {"plan_id": plan_id, "effective_from": "2026-02-01"}
    first = expect(call.patch(f"/v1/partners/{partner_id}", change), 200)
    assert expect(call.patch(f"/v1/partners/{partner_id}", change), 200) == first
    assert _facts(scratch, "partner_plans", partner_id) == 2
    other_plan = call.patch(f"/v1/partners/{partner_id}", {"plan_id": "standard", "effective_from": "2026-02-01"})
    assert errors_of(other_plan, 409) == {"effective_from"}


@pytest.mark.parametrize("status", ["suspended", "terminated"])
def test_a_status_change_sent_again_with_its_instant_answers_200_and_is_recorded_once(call, scratch, status):
    partner_id = call.partner()
    change = {"status": status, "effective_at": "2026-02-01T00:00:00Z"}
    first = expect(call.patch(f"/v1/partners/{partner_id}", change), 200)
    assert expect(call.patch(f"/v1/partners/{partner_id}", change), 200) == first
    assert _facts(scratch, "partner_statuses", partner_id) == 2
    if status == "terminated":  # another instant is still refused: termination is final
        later = call.patch(f"/v1/partners/{partner_id}", {"status": status, "effective_at": "2026-02-02T00:00:00Z"})
        assert errors_of(later, 409) == set()


@pytest.mark.parametrize("status", ["suspended", "terminated"])
def test_a_status_asked_for_now_that_the_partner_has_already_is_recorded_once(call, scratch, status):
    # A retry without `effective_at` asks for the status at its own "now", later than the first's:
    # it changes nothing (it was recorded again at each try, and a termination's retry was a 409).
    partner_id = call.partner()
    first = expect(call.patch(f"/v1/partners/{partner_id}", {"status": status}), 200)
    assert first["status"] == status
    assert expect(call.patch(f"/v1/partners/{partner_id}", {"status": status}), 200) == first
    assert _facts(scratch, "partner_statuses", partner_id) == 2
    back = call.patch(f"/v1/partners/{partner_id}", {"status": "active"})
    if status == "terminated":  # another status is still refused: termination is final
        assert errors_of(back, 409) == set()
    else:  # and another status is a change
        assert expect(back, 200)["status"] == "active"
        assert _facts(scratch, "partner_statuses", partner_id) == 3


def test_a_status_asked_for_now_while_a_change_is_dated_ahead_is_still_refused(call, scratch):
    # The partner is suspended from a later day: "suspended" asked for now is not the status it has
    # now, and starts before the latest fact.
    partner_id = call.partner()
    expect(call.patch(f"/v1/partners/{partner_id}", {"status": "suspended", "effective_at": _ahead(30)}), 200)
    assert errors_of(call.patch(f"/v1/partners/{partner_id}", {"status": "suspended"}), 409) == {"effective_at"}
    assert _facts(scratch, "partner_statuses", partner_id) == 2


def test_a_change_before_a_fact_dated_ahead_is_refused_naming_that_facts_start(call):
    # The partner is active and on its first plan now; a suspension and a plan change dated ahead
    # block earlier ones (none can be withdrawn): the refusal says which fact, and from when, rather
    # than calling the partner's current status or plan the obstacle.
    partner_id, plan_id = call.partner(), unique("plan")
    call.created("/v1/plans", plan_body(plan_id))
    ahead = (date.today() + timedelta(days=30)).isoformat()
    expect(call.patch(f"/v1/partners/{partner_id}", {"status": "suspended", "effective_at": f"{ahead}T00:00:00Z"}), 200)
    expect(call.patch(f"/v1/partners/{partner_id}", {"plan_id": plan_id, "effective_from": ahead}), 200)
    status = call.patch(f"/v1/partners/{partner_id}", {"status": "terminated"})
    assert errors_of(status, 409) == {"effective_at"}
    assert f"suspended from {ahead}T00:00:00Z" in status.get_json()["detail"]
    plan = call.patch(f"/v1/partners/{partner_id}", {"plan_id": "standard", "effective_from": date.today().isoformat()})
    assert errors_of(plan, 409) == {"effective_from"}
    assert f"{plan_id!r} from {ahead}T00:00:00Z" in plan.get_json()["detail"]


def _ahead(days: int) -> str:
    return (datetime.now(timezone.utc).date() + timedelta(days=days)).isoformat() + "T00:00:00Z"


def test_a_scheduled_termination_is_listed_and_withdrawn_by_finance_alone_each_partner_seeing_its_own(call):
    """Two partners, each with a key: each sees its own scheduled changes, neither sees the other's
    nor may withdraw any; finance withdraws one, and asking again answers the same."""
    first, second = call.partner(), call.partner()
    for partner_id in (first, second):
        call.partner_key(partner_id)
    ends = _ahead(60)
    body = expect(call.patch(f"/v1/partners/{first}", {"status": "terminated", "effective_at": ends}), 200)
    [change] = body["scheduled"]
    assert change == {"id": change["id"], "status": "terminated", "effective_at": ends} and body["status"] == "active"
    moves = _ahead(30)
    moved = expect(call.patch(f"/v1/partners/{second}", {"plan_id": "standard", "effective_from": moves}), 200)
    [other] = moved["scheduled"]
    assert other == {"id": other["id"], "plan_id": "standard", "effective_from": moves}
    assert call.read(f"/v1/partners/{first}", as_=first)["scheduled"] == [change]
    assert call.get(f"/v1/partners/{second}", as_=first).status_code == 404
    unknown = call.client.delete("/v1/no-such-route", headers=call.headers(first)).get_json()
    for as_, path in ((first, f"/v1/partners/{first}/scheduled/{change['id']}"),
                      (first, f"/v1/partners/{second}/scheduled/{other['id']}"),
                      (second, f"/v1/partners/{first}/scheduled/{change['id']}")):
        refused = call.delete(path, as_=as_)
        assert refused.status_code == 404 and refused.get_json() == unknown  # a route a partner may not use
    assert errors_of(call.delete(f"/v1/partners/{first}/scheduled/{change['id']}", as_="billing"), 403) == set()
    # Another partner's change, named under this partner: none of its.
    assert errors_of(call.delete(f"/v1/partners/{first}/scheduled/{other['id']}"), 404) == set()
    assert call.read(f"/v1/partners/{second}")["scheduled"] == [other]
    withdrawn = expect(call.delete(f"/v1/partners/{first}/scheduled/{change['id']}"), 200)
    [kept] = withdrawn["withdrawn_changes"]  # listed for the audit, with when it was withdrawn
    assert kept == change | {"withdrawn_at": kept["withdrawn_at"]} and kept["withdrawn_at"].endswith("Z")
    assert withdrawn == {**body, "scheduled": [], "withdrawn_changes": [kept]}
    assert expect(call.delete(f"/v1/partners/{first}/scheduled/{change['id']}"), 200) == withdrawn
    assert call.read(f"/v1/partners/{first}", as_=first) == withdrawn  # the partner sees its own
    assert call.read(f"/v1/partners/{second}", as_=second)["withdrawn_changes"] == []
    assert call.read("/v1/partners", as_=first)["items"] == [withdrawn]  # the list, of one for its key
    # What the termination blocked is taken.
    assert expect(call.patch(f"/v1/partners/{first}", {"status": "suspended", "effective_at": _ahead(90)}),
                  200)["scheduled"][0]["status"] == "suspended"


@pytest.mark.parametrize("change", ["status-abc", "status-0", "plan--1", "x" * 32])
def test_a_change_id_that_names_nothing_is_a_404(call, change):
    partner_id = call.partner()
    assert errors_of(call.delete(f"/v1/partners/{partner_id}/scheduled/{change}"), 404) == set()
    assert errors_of(call.delete(f"/v1/partners/nobody-{unique('x')}/scheduled/status-1"), 404) == set()


def test_a_change_starting_within_fifteen_minutes_is_a_409_and_stays(call):
    partner_id = call.partner()
    starts = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()
    body = expect(call.patch(f"/v1/partners/{partner_id}", {"status": "suspended", "effective_at": starts}), 200)
    [change] = body["scheduled"]
    refused = call.delete(f"/v1/partners/{partner_id}/scheduled/{change['id']}")
    assert errors_of(refused, 409) == set()
    assert "more than fifteen minutes ahead" in refused.get_json()["detail"]
    assert call.read(f"/v1/partners/{partner_id}")["scheduled"] == [change]
