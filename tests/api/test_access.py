"""Roles and partner isolation on every route: admin passes everything, finance all but key
management, billing revenue events, attributions and customer reads, and a partner key its own
partner record, balance, statement (JSON and CSV), transactions and payouts. To a partner, anything
else does not exist: a route its role may not use is a 404 exactly like an unknown URL, and another
partner's record is the same 404 as one that does not exist, whatever the query asks (a query its
owner or finance would get a 422 for is still that 404). No key or a bad key is a 401."""

import re
from typing import NamedTuple

import pytest

from tests.api.books import errors_of, expect, money, plan_body, unique
from tests.api.conftest import bearer
from tests.integration.test_tamper_evidence import behind_the_triggers


class Route(NamedTuple):
    method: str
    path: str
    body: object = None  # refused bodies: a role that may write gets a 422 and nothing is written
    roles: frozenset = frozenset({"finance"})  # besides admin
    owner: str | None = None  # a partner key may read it when this is its partner ("*": any partner, scoped)
    headers: dict | None = None
    # Queries (each replacing the path's own) that the route refuses with a 422 naming the field given.
    bad_queries: tuple[tuple[str, str], ...] = ()
    allowed: int | None = None  # what a role that may use it gets, when not a GET's 200 or a refused body's 422


FINANCE, BILLING = frozenset({"finance"}), frozenset({"billing"})
BILLING_AND_FINANCE = frozenset({"billing", "finance"})


def partner_routes(partner_id: str, transaction_id: int) -> dict[str, Route]:
    p = partner_id
    bad_period = (("", "period"), ("period=2026-13", "period"), ("period=2026-01&as_of=2026-01-31", "as_of"))
    bad_page = ((f"partner_id={p}&limit=0", "limit"), (f"partner_id={p}&cursor=x", "cursor"),
                (f"partner_id={p}&partner={p}", "partner"), (f"partner_id={p}&partner_id={p}", "partner_id"))
    return {
        f"get partner {p}": Route("GET", f"/v1/partners/{p}", owner=p, bad_queries=(("as_of=2026-01-31", "as_of"),)),
        f"patch partner {p}": Route("PATCH", f"/v1/partners/{p}", {}),
        f"withdraw change of {p}": Route("DELETE", f"/v1/partners/{p}/scheduled/status-999999999", allowed=404),
        f"balance {p}": Route("GET", f"/v1/partners/{p}/balance", owner=p,
                              bad_queries=(("as_of=2026-02-30", "as_of"), ("asof=2026-01-31", "asof"))),
        f"statement {p}": Route("GET", f"/v1/partners/{p}/statement?period=2026-01", owner=p,
                                bad_queries=(*bad_period, ("period=2026-01&format=xml", "format"))),
        f"statement csv {p}": Route("GET", f"/v1/partners/{p}/statement?period=2026-01&format=csv", owner=p,
                                    bad_queries=(("format=csv", "period"), ("period=2026-13&format=csv", "period"))),
        f"statement accept csv {p}": Route("GET", f"/v1/partners/{p}/statement?period=2026-01", owner=p,
                                           headers={"Accept": "text/csv"}, bad_queries=bad_period),
        f"get transaction {p}": Route("GET", f"/v1/transactions/{transaction_id}", owner=p),
        f"list transactions of {p}": Route("GET", f"/v1/transactions?partner_id={p}", owner=p, bad_queries=bad_page),
        f"list payouts of {p}": Route("GET", f"/v1/payouts?partner_id={p}", owner=p, bad_queries=bad_page),
    }


ROUTES = {
    "create api key": Route("POST", "/v1/api-keys", {}, roles=frozenset()),
    "revoke api key": Route("POST", "/v1/api-keys/key_nobody/revocation", {"reason": ""}, roles=frozenset()),
    "list api keys": Route("GET", "/v1/api-keys", roles=frozenset()),
    "create plan": Route("POST", "/v1/plans", {}),
    "add plan version": Route("POST", "/v1/plans/standard/versions", {}),
    "get plan": Route("GET", "/v1/plans/standard"),
    "withdraw plan version": Route("DELETE", "/v1/plans/standard/versions/1", allowed=409),
    "create partner": Route("POST", "/v1/partners", {}),
    "list partners": Route("GET", "/v1/partners", owner="*"),
    **partner_routes("p1", 1),
    **partner_routes("p2", 2),
    "attribute": Route("POST", "/v1/attributions", {}, roles=BILLING_AND_FINANCE),
    "get customer": Route("GET", "/v1/customers/p1-customer", roles=BILLING_AND_FINANCE),
    "withdraw attribution": Route("DELETE", "/v1/customers/p1-customer/attributions/999999999", allowed=404),
    "post revenue event": Route("POST", "/v1/revenue-events", {}, roles=BILLING),
    "post revenue batch": Route("POST", "/v1/revenue-events/batch", {}, roles=BILLING),
    "get revenue event": Route("GET", "/v1/revenue-events/nobody", roles=BILLING_AND_FINANCE, allowed=404),
    "list transactions": Route("GET", "/v1/transactions", owner="*"),
    "reverse transaction": Route("POST", "/v1/transactions/1/reversal", {}),
    "adjust": Route("POST", "/v1/adjustments", {}),
    "release holds": Route("POST", "/v1/holds/release", {"at": "soon"}),
    "run payouts": Route("POST", "/v1/payout-runs", {"at": "soon"}),
    "list payouts": Route("GET", "/v1/payouts", owner="*"),
    "settle payout": Route("POST", "/v1/payouts/1/settle", {"reason": ""}),
    "fail payout": Route("POST", "/v1/payouts/1/fail", {"reason": ""}),
    "list periods": Route("GET", "/v1/periods"),
    "get period": Route("GET", "/v1/periods/2026-01"),
    "close period": Route("POST", "/v1/periods/2026-01/close", {"force": True}),
    "trial balance": Route("GET", "/v1/reports/trial-balance"),
    "liabilities": Route("GET", "/v1/reports/liabilities"),
    "integrity": Route("GET", "/v1/integrity"),
}
PARTNERS = ("p1", "p2")
ROLES = ("admin", "finance", "billing", *PARTNERS)


def expected_status(role: str, route: Route) -> int:
    allowed = route.allowed or (200 if route.method == "GET" else 422)
    if role == "admin" or role in route.roles:
        return allowed
    if role in PARTNERS:
        return allowed if route.owner in ("*", role) else 404
    return 403


def call(client, key, route: Route):
    return client.open(route.path, method=route.method, headers=bearer(key) | (route.headers or {}),
                       json=route.body)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", sorted(ROUTES))
def test_each_role_reaches_exactly_its_routes(shared, role, name):
    route = ROUTES[name]
    response = call(shared.client, getattr(shared.keys, role), route)
    expected = expected_status(role, route)
    assert response.status_code == expected, response.data
    assert response.headers["Cache-Control"] == "no-store"  # one partner's money, kept by no cache on the way
    if expected == 200:
        assert response.mimetype == ("text/csv" if "csv" in name else "application/json")
        return
    assert response.mimetype == "application/problem+json"
    if expected == 404 and route.owner is None and role in PARTNERS:  # refused for the role: like an unknown URL
        unknown = shared.client.open("/v1/no-such-route", method=route.method, headers=bearer(shared.keys.p1))
        assert response.get_json() == unknown.get_json()


BAD_QUERIES = sorted((name, query, field) for name, route in ROUTES.items() for query, field in route.bad_queries)


@pytest.mark.parametrize("role", ("admin", "finance", *PARTNERS))
@pytest.mark.parametrize("name, query, field", BAD_QUERIES)
def test_a_bad_query_is_a_422_to_who_may_read_the_record_and_the_same_404_as_a_good_one_to_another_partner(
        shared, role, name, query, field):
    route = ROUTES[name]
    refused = call(shared.client, getattr(shared.keys, role), route._replace(path=_with_query(route.path, query)))
    if expected_status(role, route) == 404:
        good = call(shared.client, getattr(shared.keys, role), route)
        assert refused.status_code == good.status_code == 404, refused.data
        assert refused.mimetype == "application/problem+json" and refused.get_json() == good.get_json()
    else:
        assert errors_of(refused) == {field}


@pytest.mark.parametrize("listing", ["/v1/transactions", "/v1/payouts"])
def test_a_partner_filter_given_twice_naming_another_partner_once_is_that_partners_404(shared, listing):
    twice = shared.client.get(f"{listing}?partner_id=p1&partner_id=p2&limit=0", headers=bearer(shared.keys.p1))
    record = shared.client.get("/v1/partners/p2", headers=bearer(shared.keys.p1))
    assert twice.status_code == 404 and twice.get_json() == record.get_json()


@pytest.mark.parametrize("listing", ["/v1/transactions", "/v1/payouts"])
@pytest.mark.parametrize("role", ("finance", *PARTNERS))
@pytest.mark.parametrize("value", ["", " ", "a\x00b", "\n", "p" * 65, "-p1"])
def test_a_partner_filter_no_partner_could_have_is_the_same_422_naming_it_to_every_role(shared, listing, role,
                                                                                         value):
    # A partner key was told "partner '' not found", a 404, where finance was told the filter is malformed.
    query = {"partner_id": value}
    response = shared.client.get(listing, query_string=query, headers=bearer(getattr(shared.keys, role)))
    assert errors_of(response) == {"partner_id"}
    finance = shared.client.get(listing, query_string=query, headers=bearer(shared.keys.finance))
    assert response.get_json() == finance.get_json()


def _with_query(path: str, query: str) -> str:
    bare = path.split("?")[0]
    return f"{bare}?{query}" if query else bare


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_every_route_but_health_and_docs_needs_a_valid_key(shared, name):
    route = ROUTES[name]
    for headers in ({}, {"Authorization": "Bearer rsk_not-a-key"}):
        response = shared.client.open(route.path, method=route.method, headers=headers | (route.headers or {}),
                                      json=route.body)
        assert response.status_code == 401, (headers, response.data)
        assert response.mimetype == "application/problem+json"


def test_the_matrix_covers_every_route_of_the_app(shared):
    app = shared.client.application
    served = {(method, rule.rule) for rule in app.url_map.iter_rules() for method in rule.methods - {"HEAD", "OPTIONS"}
              if not rule.endpoint.startswith(("api-docs.", "health."))}
    covered = {(route.method, rule.rule) for route in ROUTES.values() for rule in app.url_map.iter_rules()
               if route.method in rule.methods and _matches(app, rule, route)}
    assert served == covered


def _matches(app, rule, route: Route) -> bool:
    adapter = app.url_map.bind("localhost")
    try:
        endpoint, _ = adapter.match(route.path.split("?")[0], method=route.method)
    except Exception:  # noqa: BLE001 (a path no rule serves)
        return False
    return endpoint == rule.endpoint


@pytest.mark.parametrize("public", ["/v1/health", "/v1/openapi.json", "/docs"])
def test_health_and_docs_need_no_key(shared, public):
    answer = shared.client.get(public)
    assert (answer.status_code, answer.headers["Cache-Control"]) == (200, "no-store")


def ids(response) -> list[int]:
    assert response.status_code == 200, response.data
    return [item["id"] for item in response.get_json()["items"]]


def test_a_partner_lists_only_its_own_transactions(shared):
    booked = shared.booked
    assert ids(shared.client.get("/v1/transactions", headers=bearer(shared.keys.p1))) == list(booked.p1)
    assert ids(shared.client.get("/v1/transactions", headers=bearer(shared.keys.p2))) == [booked.p2]


def test_finance_lists_every_transaction_and_may_filter_by_partner(shared):
    booked = shared.booked
    everything = ids(shared.client.get("/v1/transactions", headers=bearer(shared.keys.finance)))
    assert everything == sorted([*booked.p1, booked.p2])
    assert ids(shared.client.get("/v1/transactions?partner_id=p2", headers=bearer(shared.keys.finance))) == [booked.p2]


def test_a_partner_reads_its_own_transaction(shared):
    response = shared.client.get(f"/v1/transactions/{shared.booked.p1[0]}", headers=bearer(shared.keys.p1))
    assert response.status_code == 200
    assert response.get_json()["partner_id"] == "p1"


def test_another_partners_transaction_is_a_404_like_a_missing_one(shared):
    theirs = shared.client.get(f"/v1/transactions/{shared.booked.p2}", headers=bearer(shared.keys.p1))
    missing = shared.client.get("/v1/transactions/999", headers=bearer(shared.keys.p1))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.get_json()["title"] == missing.get_json()["title"]
    assert theirs.get_json()["detail"].replace(str(shared.booked.p2), "N") == \
        missing.get_json()["detail"].replace("999", "N")


@pytest.mark.parametrize("suffix", ["", "/balance", "/statement?period=2026-01",
                                    "/statement?period=2026-01&format=csv"])
def test_another_partners_records_are_the_same_404_as_missing_ones(shared, suffix):
    theirs = shared.client.get(f"/v1/partners/p2{suffix}", headers=bearer(shared.keys.p1))
    missing = shared.client.get(f"/v1/partners/nobody{suffix}", headers=bearer(shared.keys.p1))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.get_json()["detail"].replace("p2", "X") == missing.get_json()["detail"].replace("nobody", "X")


def test_a_transaction_without_a_partner_is_hidden_from_partners(database, client, keys, booked):
    # Books written before migration 0047 may hold one (a posting of the service names its partner).
    with behind_the_triggers(database) as execute:
        execute(f"INSERT INTO journal_transactions (id, kind, effective_at_us, recorded_at_us, idempotency_key,"
                f" request_hash, prev_hash, hash) VALUES (4, 'accrual', 5, 5, 'house', '{'0' * 64}',"
                f" '{'1' * 64}', '{'2' * 64}')")
    for key in (keys.p1, keys.p2):
        assert client.get("/v1/transactions/4", headers=bearer(key)).status_code == 404
        assert 4 not in ids(client.get("/v1/transactions", headers=bearer(key)))
    assert client.get("/v1/transactions/4", headers=bearer(keys.finance)).status_code == 200


@pytest.mark.parametrize("listing", ["/v1/transactions", "/v1/payouts"])
def test_a_partner_cannot_list_another_partners_records_by_filter(shared, listing):
    assert shared.client.get(f"{listing}?partner_id=p2", headers=bearer(shared.keys.p1)).status_code == 404
    assert shared.client.get(f"{listing}?partner_id=p1", headers=bearer(shared.keys.p1)).status_code == 200


def test_a_list_filtered_by_another_partner_is_the_404_of_that_partners_record(shared):
    record = shared.client.get("/v1/partners/p2", headers=bearer(shared.keys.p1)).get_json()
    for listing in ("/v1/transactions", "/v1/payouts"):
        filtered = shared.client.get(f"{listing}?partner_id=p2", headers=bearer(shared.keys.p1)).get_json()
        assert filtered == record, listing


@pytest.mark.parametrize("listing", ["/v1/transactions", "/v1/payouts"])
def test_finance_filtering_a_list_by_a_partner_that_does_not_exist_is_a_404_naming_it_not_an_empty_list(
        shared, listing):
    response = shared.client.get(f"{listing}?partner_id=nobody", headers=bearer(shared.keys.finance))
    assert response.status_code == 404 and "'nobody'" in response.get_json()["detail"]
    mine, missing = (shared.client.get(f"{listing}?partner_id={partner}", headers=bearer(shared.keys.p1))
                     for partner in ("p2", "nobody"))
    assert mine.status_code == missing.status_code == 404
    assert mine.get_json()["detail"].replace("p2", "X") == missing.get_json()["detail"].replace("nobody", "X")


def test_a_partner_cannot_reverse_even_its_own_transaction(shared):
    response = shared.client.post(f"/v1/transactions/{shared.booked.p1[0]}/reversal", json={"reason": "mine"},
                                  headers=bearer(shared.keys.p1))
    assert response.status_code == 404


def test_billing_may_not_replace_an_attribution_but_finance_may_try(shared):
    body = {"customer_id": "p1-customer", "partner_id": "p2", "effective_from": "2026-01-01", "source": "manual",
            "replace": True}
    billing = shared.client.post("/v1/attributions", json=body, headers=bearer(shared.keys.billing))
    assert billing.status_code == 403 and billing.mimetype == "application/problem+json"
    finance = shared.client.post("/v1/attributions", json=body, headers=bearer(shared.keys.finance))
    assert finance.status_code == 409  # the same start as the current attribution; nothing is written


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_matched_without_regard_to_case(shared, scheme):
    response = shared.client.get("/v1/transactions?limit=1", headers={"Authorization": f"{scheme} {shared.keys.p1}"})
    assert response.status_code == 200


def test_a_bounty_taken_by_another_partners_invoice_names_none_of_its_ids_to_the_partner_reading_it(call):
    # A customer moved from one partner to another: the first partner's invoice, dated before the
    # second's but delivered after it, takes the customer's CPA, and the second's bounty is reversed.
    # The second partner reads the reversal; the first one's invoice, event and id stay out of it.
    plan = call.created("/v1/plans", plan_body(unique("cpa"), cpa=[money("25.00")]))["id"]
    first, second, customer = call.partner(plan_id=plan), call.partner(plan_id=plan), unique("cust")
    call.attribute(customer, first, "2026-01-01")
    call.created("/v1/attributions", {"customer_id": customer, "partner_id": second, "effective_from": "2026-02-01",
                                      "source": "manual", "replace": True})
    call.event(unique("evt-second"), customer, unique("inv-second"), "100.00", "2026-02-05")
    theirs, their_invoice = unique("evt-first"), unique("inv-first")
    taken_by = call.event(theirs, customer, their_invoice, "100.00", "2026-01-05")
    assert {line["kind"] for line in taken_by["commissions"]} == {"accrual", "cpa"}
    call.partner_key(second)
    listed = call.get("/v1/transactions", as_=second)
    reversals = [item for item in expect(listed, 200)["items"] if item["kind"] == "reversal"]
    assert len(reversals) == 1, reversals
    one = call.get(f"/v1/transactions/{reversals[0]['id']}", as_=second)
    for read in (listed, one, call.get(f"/v1/partners/{second}/statement?period=2026-02", as_=second),
                 call.get(f"/v1/partners/{second}/statement?period=2026-02&format=csv", as_=second)):
        assert read.status_code == 200
        assert not {theirs, their_invoice, first} & set(re.findall(r"[\w-]+", read.get_data(as_text=True))), read.data
