"""Roles and partner isolation: admin passes everything, finance all but key management, billing
none of these routes, and a partner key sees only its own transactions; to a partner, everything
else does not exist (404, exactly like an unknown URL)."""

import pytest

from tests.api.conftest import bearer

# (method, path, body): refused bodies, so that allowed roles get a 200 or a 422 and nothing is written.
ROUTES = {
    "list transactions": ("GET", "/v1/transactions", None),
    "get transaction": ("GET", "/v1/transactions/1", None),
    "reverse transaction": ("POST", "/v1/transactions/1/reversal", {}),
    "integrity": ("GET", "/v1/integrity", None),
    "trial balance": ("GET", "/v1/reports/trial-balance", None),
    "create api key": ("POST", "/v1/api-keys", {}),
}
ALLOWED = {
    "admin": set(ROUTES),
    "finance": set(ROUTES) - {"create api key"},
    "billing": set(),
    "p1": {"list transactions", "get transaction"},
}


def call(client, key, route):
    method, path, body = ROUTES[route]
    return client.open(path, method=method, headers=bearer(key), json=body)


@pytest.mark.parametrize("role", sorted(ALLOWED))
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_each_role_reaches_exactly_its_routes(shared, role, route):
    response = call(shared.client, getattr(shared.keys, role), route)
    if route in ALLOWED[role]:
        assert response.status_code in (200, 422), response.data
    elif role == "p1":
        assert response.status_code == 404
        unknown = shared.client.open("/v1/no-such-route", method=ROUTES[route][0], headers=bearer(shared.keys.p1))
        assert response.get_json() == unknown.get_json()
    else:
        assert response.status_code == 403
        assert response.mimetype == "application/problem+json"


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
    assert everything == sorted([*booked.p1, booked.p2, booked.house])
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


def test_a_transaction_without_a_partner_is_hidden_from_partners(shared):
    response = shared.client.get(f"/v1/transactions/{shared.booked.house}", headers=bearer(shared.keys.p2))
    assert response.status_code == 404


def test_a_partner_cannot_list_another_partners_transactions_by_filter(shared):
    assert shared.client.get("/v1/transactions?partner_id=p2", headers=bearer(shared.keys.p1)).status_code == 404
    assert ids(shared.client.get("/v1/transactions?partner_id=p1", headers=bearer(shared.keys.p1))) == \
        list(shared.booked.p1)


def test_a_partner_cannot_reverse_even_its_own_transaction(shared):
    response = shared.client.post(f"/v1/transactions/{shared.booked.p1[0]}/reversal", json={"reason": "mine"},
                                  headers=bearer(shared.keys.p1))
    assert response.status_code == 404
