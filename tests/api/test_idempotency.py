"""HTTP idempotency: `Idempotency-Key` replays, conflicts naming fields, and concurrent duplicates
applied once (against a real threaded server, not only the test client)."""

import http.client
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from werkzeug.serving import make_server

from ledger import idempotency, partners
from ledger.schema import api_keys, idempotency_records, journal_transactions
from tests.api.conftest import STANDARD_TERMS, bearer, make_app, new_transaction
from tests.api.test_access import ROUTES
from tests.api.test_openapi import documented_response
from tests.integration.test_tamper_evidence import behind_the_triggers


def post(client, key, path, body, idempotency_key=None, **kwargs):
    headers = bearer(key) | ({"Idempotency-Key": idempotency_key} if idempotency_key is not None else {})
    return client.post(path, headers=headers, **({"json": body} if body is not None else {}), **kwargs)


def reversals_of(database, transaction_id: int) -> int:
    with database.reader() as session:
        return session.execute(sa.select(sa.func.count()).where(
            journal_transactions.c.reverses_id == transaction_id)).scalar_one()


def count(database, table) -> int:
    with database.reader() as session:
        return session.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def unique(prefix: str = "k") -> str:
    """An Idempotency-Key no other test sends (the module's API keys are shared between tests)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def reversal_path(scratch, partner_id: str = "p2") -> str:
    return f"/v1/transactions/{new_transaction(scratch.database, partner_id)}/reversal"


def test_a_retry_with_the_same_key_and_body_replays_the_original(scratch):
    path, key = reversal_path(scratch), unique()
    body = {"reason": "dup", "effective_at": "2026-02-01T00:00:00Z"}
    first = post(scratch.client, scratch.keys.finance, path, body, key)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    spelt_otherwise = b'{ "effective_at":"2026-02-01T00:00:00Z",  "reason": "dup" }'
    again = scratch.client.post(path, data=spelt_otherwise, content_type="application/json",
                                headers=bearer(scratch.keys.finance) | {"Idempotency-Key": key})
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Cache-Control"] == "no-store"
    assert again.get_json() == first.get_json()
    assert reversals_of(scratch.database, first.get_json()["reverses_id"]) == 1


def test_the_same_key_with_another_body_is_a_409_naming_the_fields(scratch):
    path, key = reversal_path(scratch), unique()
    assert post(scratch.client, scratch.keys.finance, path, {"reason": "dup"}, key).status_code == 201
    changed = post(scratch.client, scratch.keys.finance, path,
                   {"reason": "other", "effective_at": "2026-02-01T00:00:00Z"}, key)
    assert changed.status_code == 409
    assert changed.mimetype == "application/problem+json"
    body = changed.get_json()
    assert body["type"] == "urn:revshare:problem:idempotency-conflict"
    assert set(body["errors"]) == {"reason", "effective_at"}


def test_no_body_and_an_empty_object_are_the_same_request(client, keys):
    key = unique()
    first = post(client, keys.finance, "/v1/holds/release", None, key)
    again = post(client, keys.finance, "/v1/holds/release", {}, key)
    assert (first.status_code, again.status_code, again.headers.get("Idempotent-Replayed")) == (200, 200, "true")
    assert again.get_json() == first.get_json()
    assert post(client, keys.finance, "/v1/holds/release", {"at": "2026-01-01T00:00:00Z"}, key).status_code == 409


def test_a_record_stored_with_a_null_body_replays_a_request_without_one(client, keys, database):
    key = unique()
    first = post(client, keys.finance, "/v1/holds/release", None, key)
    stored_hash = idempotency.request_hash("POST", "/v1/holds/release", "null")
    with behind_the_triggers(database) as execute:  # as stored before no body was compared as {}
        execute(f"UPDATE idempotency_records SET request_body = 'null', request_hash = '{stored_hash}'")
    again = post(client, keys.finance, "/v1/holds/release", None, key)
    assert (again.status_code, again.headers.get("Idempotent-Replayed"), again.get_json()) == (
        200, "true", first.get_json())


SPELT_OTHERWISE = {  # (path, body, the same body spelt otherwise, another body differing in one field)
    "an amount": ("/v1/adjustments",
                  {"partner_id": "p1", "account": "available", "amount": {"amount": "1.5", "currency": "USD"},
                   "reason": "x"},
                  {"amount": {"amount": "1.50", "currency": "USD"}}, {"amount": {"amount": "1.51", "currency": "USD"}}),
    "an instant": (None, {"reason": "x", "effective_at": "2026-02-01T00:00:00Z"},
                   {"effective_at": "2026-02-01T01:00:00+01:00"}, {"effective_at": "2026-02-01T00:00:01Z"}),
    "a rate": ("/v1/plans", {"id": "plan-spelt", "name": "Plan", **STANDARD_TERMS},
               {"rates": [{"from_month": 1, "rate": "0.2"}]}, {"rates": [{"from_month": 1, "rate": "0.21"}]}),
}


@pytest.mark.parametrize("spelt", sorted(SPELT_OTHERWISE))
def test_a_retry_spelling_a_value_otherwise_replays_and_another_value_is_a_409(scratch, spelt):
    """Bodies are compared as their route reads them once their canonical JSON differs: "1.5" and
    "1.50" are one amount, as they would be one posting."""
    path, body, otherwise, other = SPELT_OTHERWISE[spelt]
    path, key = path or reversal_path(scratch), unique()
    if "id" in body:
        body = {**body, "id": unique("plan")}
    first = post(scratch.client, scratch.keys.finance, path, body, key)
    assert first.status_code == 201, first.data
    again = post(scratch.client, scratch.keys.finance, path, {**body, **otherwise}, key)
    assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (201, "true"), again.data
    assert again.get_json() == first.get_json()
    changed = post(scratch.client, scratch.keys.finance, path, {**body, **other}, key)
    assert changed.status_code == 409 and set(changed.get_json()["errors"]) == set(other), changed.data
    refused = post(scratch.client, scratch.keys.finance, path, {**body, **{name: "?" for name in other}}, key)
    assert refused.status_code == 409 and set(refused.get_json()["errors"]) == set(other), refused.data
    # Spelt otherwise and another field changed: the conflict names the other field alone.
    field = "name" if "name" in body else "reason"
    mixed = post(scratch.client, scratch.keys.finance, path, {**body, **otherwise, field: "changed"}, key)
    assert mixed.status_code == 409 and set(mixed.get_json()["errors"]) == {field}, mixed.data


def test_the_same_key_on_another_path_is_a_409_naming_the_header(scratch):
    key = unique()
    assert post(scratch.client, scratch.keys.finance, reversal_path(scratch), {"reason": "x"}, key).status_code == 201
    elsewhere = post(scratch.client, scratch.keys.finance, reversal_path(scratch), {"reason": "x"}, key)
    assert elsewhere.status_code == 409
    assert set(elsewhere.get_json()["errors"]) == {"Idempotency-Key"}


def test_an_id_spelt_with_leading_zeros_is_the_same_path(scratch):
    # The route reads /0108/ as 108; the key compared the path as sent, and the retry was a 409
    # naming Idempotency-Key ("already used for POST /v1/transactions/108/reversal").
    key, path = unique(), reversal_path(scratch)
    transaction_id = path.split("/")[3]
    first = post(scratch.client, scratch.keys.finance, path, {"reason": "x"}, key)
    again = post(scratch.client, scratch.keys.finance, path.replace(f"/{transaction_id}/", f"/00{transaction_id}/"),
                 {"reason": "x"}, key)
    assert (first.status_code, again.status_code, again.headers.get("Idempotent-Replayed")) == (201, 201, "true")
    assert again.get_json() == first.get_json()
    assert reversals_of(scratch.database, int(transaction_id)) == 1


def test_a_record_stored_with_the_path_as_sent_replays_a_retry_sent_so(scratch):
    # Records written before the path was compared as its route reads it hold `/00N/` as sent: a
    # byte-identical retry of such a request, after an upgrade, is a replay, not a 409 naming its own path.
    key, path = unique(), reversal_path(scratch)
    transaction_id = path.split("/")[3]
    as_sent = path.replace(f"/{transaction_id}/", f"/00{transaction_id}/")
    first = post(scratch.client, scratch.keys.finance, as_sent, {"reason": "x"}, key)
    stored_hash = idempotency.request_hash("POST", as_sent, idempotency.canonical_json({"reason": "x"}))
    with behind_the_triggers(scratch.database) as execute:
        execute(f"UPDATE idempotency_records SET path = '{as_sent}', request_hash = '{stored_hash}' "
                f"WHERE key = '{key}'")
    again = post(scratch.client, scratch.keys.finance, as_sent, {"reason": "x"}, key)
    assert (first.status_code, again.status_code, again.headers.get("Idempotent-Replayed")) == (201, 201, "true")
    assert again.get_json() == first.get_json() and reversals_of(scratch.database, int(transaction_id)) == 1
    assert post(scratch.client, scratch.keys.finance, as_sent, {"reason": "y"}, key).status_code == 409


def test_the_same_key_without_a_body_on_another_path_is_a_409_naming_the_header(client, keys):
    key = unique()
    assert post(client, keys.finance, "/v1/holds/release", None, key).status_code == 200
    for body in (None, {}):
        elsewhere = post(client, keys.finance, "/v1/payout-runs", body, key)
        assert elsewhere.status_code == 409 and "Idempotent-Replayed" not in elsewhere.headers
        assert set(elsewhere.get_json()["errors"]) == {"Idempotency-Key"}
    assert client.get("/v1/payouts", headers=bearer(keys.finance)).get_json()["items"] == []


def _paid_payout(call) -> int:
    call.event(unique("evt"), "p1-customer", unique("inv"), "250.00", "2026-01-10")
    [payout] = call.created("/v1/payout-runs", {"at": "2026-02-10T00:00:00Z"})["payouts"]
    return payout["id"]


def keyed_post(name: str, call, database) -> tuple[str, dict | None, str]:
    """(path, body, role) of a request named as in test_access.ROUTES that succeeds on the `fresh` books."""
    usd = {"amount": "5.00", "currency": "USD"}
    if name == "create api key":
        return "/v1/api-keys", {"role": "billing"}, "admin"
    if name == "revoke api key":
        return f"/v1/api-keys/{call.created('/v1/api-keys', {'role': 'billing'}, as_='admin')['id']}/revocation", \
            {"reason": "leaked"}, "admin"
    if name == "create plan":
        return "/v1/plans", {"id": unique("plan"), "name": "Plan", **STANDARD_TERMS}, "finance"
    if name == "add plan version":
        return "/v1/plans/standard/versions", {**STANDARD_TERMS, "effective_from": "2026-06-01"}, "finance"
    if name == "create partner":
        return "/v1/partners", {"id": unique("pt"), "name": "P", "type": "msp", "plan_id": "standard"}, "finance"
    if name == "attribute":
        return "/v1/attributions", {"customer_id": unique("cust"), "partner_id": "p1", "effective_from": "2026-01-01",
                                    "source": "manual"}, "billing"
    if name == "reverse transaction":
        return f"/v1/transactions/{new_transaction(database)}/reversal", {"reason": "x"}, "finance"
    if name == "adjust":
        return "/v1/adjustments", {"partner_id": "p1", "account": "available", "amount": usd, "reason": "x"}, "finance"
    if name in ("release holds", "run payouts"):
        path = "/v1/holds/release" if name == "release holds" else "/v1/payout-runs"
        return path, {"at": "2026-02-10T00:00:00Z"}, "finance"
    if name in ("settle payout", "fail payout"):
        return f"/v1/payouts/{_paid_payout(call)}/{name.split()[0]}", {"reason": "wire"}, "finance"
    assert name == "close period", name
    return "/v1/periods/2026-01/close", None, "finance"


# Every POST but revenue events, whose id is their key (see test_revenue_events.py).
KEYED_POSTS = sorted(name for name, route in ROUTES.items()
                     if route.method == "POST" and not name.startswith("post revenue"))


@pytest.mark.parametrize("name", KEYED_POSTS)
def test_every_post_replays_a_retry_with_the_same_idempotency_key(fresh, database, name):
    path, body, role = keyed_post(name, fresh, database)
    key = {"Idempotency-Key": unique()}
    first = fresh.post(path, body, as_=role, headers=key)
    assert first.status_code in (200, 201) and "Idempotent-Replayed" not in first.headers, first.data
    again = fresh.post(path, body, as_=role, headers=key)
    assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (first.status_code, "true"), again.data
    assert "Idempotent-Replayed" in documented_response(fresh.client, "POST", path, again.status_code)["headers"]
    assert again.get_json() == {**first.get_json(), **({"key": None} if name == "create api key" else {})}


@pytest.mark.parametrize("body", [{"status": "suspended", "effective_at": "2026-02-01T00:00:00Z"},
                                  {"plan_id": "standard", "effective_from": "2026-03-01"}])
def test_a_partners_patch_replays_a_retry_with_the_same_idempotency_key(fresh, body):
    partner = fresh.created("/v1/partners", {"id": unique("pt"), "name": "P", "type": "msp", "plan_id": "standard"})
    path, key = f"/v1/partners/{partner['id']}", unique()

    def patch(change: dict):
        return fresh.client.patch(path, json=change, headers=fresh.headers("finance", {"Idempotency-Key": key}))

    first = patch(body)
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers, first.data
    again = patch(body)
    assert (again.status_code, again.headers.get("Idempotent-Replayed"), again.get_json()) == (200, "true",
                                                                                                first.get_json())
    assert "Idempotent-Replayed" in documented_response(fresh.client, "PATCH", path, 200)["headers"]
    other = patch({**body, "plan_id": "standard", "effective_from": "2026-04-01"} if "plan_id" in body else
                  {**body, "status": "active"})
    assert other.status_code == 409 and set(other.get_json()["errors"]) == {"effective_from" if "plan_id" in body
                                                                              else "status"}, other.data


def test_keys_belong_to_the_api_key_that_sent_them(scratch):
    path, key = reversal_path(scratch), unique()
    assert post(scratch.client, scratch.keys.finance, path, {"reason": "x"}, key).status_code == 201
    # The admin's key of the same name is a new request: it runs, and finds the transaction already reversed.
    assert post(scratch.client, scratch.keys.admin, path, {"reason": "x"}, key).status_code == 409


def test_a_failed_request_is_not_stored_and_may_be_retried_with_the_same_key(scratch):
    path, key = reversal_path(scratch), unique()
    assert post(scratch.client, scratch.keys.finance, path, {"reason": ""}, key).status_code == 422
    retried = post(scratch.client, scratch.keys.finance, path, {"reason": "fixed"}, key)
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried.headers


# A WSGI server gives a header's bytes one character each (latin-1): past ASCII, whether a key printed
# depended on its UTF-8 bytes ("é" did, "–" did not).
@pytest.mark.parametrize("value", ["", "k" * 201, "tab\there", "k1,k2", "k1, k2",
                                   "order-é".encode().decode("latin-1"), "order–1".encode().decode("latin-1")])
def test_a_bad_idempotency_key_is_a_422_naming_the_header(shared, value):
    response = post(shared.client, shared.keys.finance, "/v1/transactions/1/reversal", {"reason": "x"}, value)
    assert response.status_code == 422
    assert list(response.get_json()["errors"]) == ["Idempotency-Key"]


def test_a_key_sent_twice_is_a_422_naming_the_header_and_changes_nothing(scratch):
    # A proxy or client that adds the header twice: joined into "k1, k2", it ran as a key of its own,
    # and a retry holding either key alone ran again.
    path, key = reversal_path(scratch), unique()
    headers = [*bearer(scratch.keys.finance).items(), ("Idempotency-Key", key), ("Idempotency-Key", key + "-2")]
    response = scratch.client.post(path, json={"reason": "x"}, headers=headers)
    assert response.status_code == 422
    assert list(response.get_json()["errors"]) == ["Idempotency-Key"]
    assert post(scratch.client, scratch.keys.finance, path, {"reason": "x"}, key).status_code == 201


def test_a_key_of_200_characters_is_accepted(scratch):
    key = unique().ljust(200, "k")
    assert post(scratch.client, scratch.keys.finance, reversal_path(scratch), {"reason": "x"}, key).status_code == 201


def test_without_a_key_every_request_runs(scratch):
    path = reversal_path(scratch)
    assert post(scratch.client, scratch.keys.finance, path, {"reason": "x"}).status_code == 201
    assert post(scratch.client, scratch.keys.finance, path, {"reason": "x"}).status_code == 409


def test_a_replayed_api_key_creation_does_not_show_or_store_the_secret(scratch):
    client, admin, key, before = scratch.client, scratch.keys.admin, unique(), count(scratch.database, api_keys)
    first = post(client, admin, "/v1/api-keys", {"role": "partner", "partner_id": "p2"}, key)
    assert first.status_code == 201
    created = first.get_json()
    assert created["key"].startswith("rsk_") and created["role"] == "partner" and created["partner_id"] == "p2"
    again = post(client, admin, "/v1/api-keys", {"partner_id": "p2", "role": "partner"}, key)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == {**created, "key": None}
    assert count(scratch.database, api_keys) == before + 1
    with scratch.database.reader() as session:
        stored = session.execute(sa.select(idempotency_records.c.response_body)
                                 .where(idempotency_records.c.key == key)).scalar_one()
    assert created["key"] not in stored
    assert client.get("/v1/transactions", headers=bearer(created["key"])).status_code == 200


def test_a_lost_insert_race_rolls_back_the_effect_and_replays_the_winner(scratch, monkeypatch):
    client, admin, key, before = scratch.client, scratch.keys.admin, unique(), count(scratch.database, api_keys)
    first = post(client, admin, "/v1/api-keys", {"role": "billing"}, key)
    assert first.status_code == 201
    real_find, calls = idempotency.find, []

    def find_missing_once(*args):
        calls.append(args)
        return None if len(calls) == 1 else real_find(*args)  # read before the winner committed

    monkeypatch.setattr(idempotency, "find", find_missing_once)
    loser = post(client, admin, "/v1/api-keys", {"role": "billing"}, key)
    assert loser.status_code == 201 and loser.headers["Idempotent-Replayed"] == "true"
    assert loser.get_json()["id"] == first.get_json()["id"]
    assert len(calls) == 2
    assert count(scratch.database, api_keys) == before + 1  # the loser's key was rolled back


@pytest.fixture(scope="module")
def server(scratch):
    """The app behind a real threaded HTTP server on a free loopback port."""
    httpd = make_server("127.0.0.1", 0, make_app(scratch.database), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_port
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def post_over_http(port: int, path: str, key: str, body: dict, idempotency_key: str) -> tuple[int, dict, bool]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", path, body=json.dumps(body), headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json", "Idempotency-Key": idempotency_key})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), response.getheader("Idempotent-Replayed") == "true"
    finally:
        connection.close()


CONCURRENT_REQUESTS = 8


def race(port: int, path: str, key: str, body: dict, idempotency_keys: list[str]) -> list[tuple[int, dict, bool]]:
    start = threading.Barrier(len(idempotency_keys))

    def one(idempotency_key: str):
        start.wait()
        return post_over_http(port, path, key, body, idempotency_key)

    with ThreadPoolExecutor(len(idempotency_keys)) as pool:
        return list(pool.map(one, idempotency_keys))


def test_concurrent_duplicates_with_one_key_apply_once(server, scratch):
    original_id = new_transaction(scratch.database)
    path, key = f"/v1/transactions/{original_id}/reversal", unique()
    results = race(server, path, scratch.keys.finance, {"reason": "together"}, [key] * CONCURRENT_REQUESTS)
    assert [status for status, _, _ in results] == [201] * CONCURRENT_REQUESTS
    assert sorted(replayed for _, _, replayed in results) == [False] + [True] * (CONCURRENT_REQUESTS - 1)
    assert len({json.dumps(body, sort_keys=True) for _, body, _ in results}) == 1
    assert reversals_of(scratch.database, original_id) == 1


def test_concurrent_reversals_with_different_keys_apply_once(server, scratch):
    original_id = new_transaction(scratch.database)
    path, keys = f"/v1/transactions/{original_id}/reversal", [unique() for _ in range(CONCURRENT_REQUESTS)]
    results = race(server, path, scratch.keys.finance, {"reason": "together"}, keys)
    assert sorted(status for status, _, _ in results) == [201] + [409] * (CONCURRENT_REQUESTS - 1)
    assert reversals_of(scratch.database, original_id) == 1


def test_concurrent_duplicate_adjustments_with_one_key_apply_once(server, scratch):
    """An adjustment without `effective_at` is dated when it runs, so duplicates that ran side by side
    would differ: they must wait for the first (`claim`) and replay it."""
    partner_id = unique("pt")
    with scratch.database.transaction() as session:
        partners.create_partner(session, partner_id, "Partner", "msp", "standard")
    body = {"partner_id": partner_id, "account": "available", "amount": {"amount": "1.00", "currency": "USD"},
            "reason": "together"}
    results = race(server, "/v1/adjustments", scratch.keys.finance, body, [unique()] * CONCURRENT_REQUESTS)
    assert [status for status, _, _ in results] == [201] * CONCURRENT_REQUESTS, results
    assert len({json.dumps(answer, sort_keys=True) for _, answer, _ in results}) == 1
    balance = scratch.client.get(f"/v1/partners/{partner_id}/balance", headers=bearer(scratch.keys.finance))
    assert [usd["available"] for usd in balance.get_json()["balances"]] == ["1.00"]
