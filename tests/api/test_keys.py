"""POST /v1/api-keys: keys of each role, and partner keys only for partners that exist."""

import time

import pytest

from tests.api.books import errors_of, expect


@pytest.mark.parametrize("role, partner_id", [("finance", None), ("billing", None), ("admin", None),
                                              ("partner", "p1")])
def test_an_admin_creates_a_key_that_works_at_once(call, role, partner_id):
    body = call.created("/v1/api-keys", {"role": role, "partner_id": partner_id}, as_="admin")
    assert (body["role"], body["partner_id"]) == (role, partner_id) and body["key"].startswith("rsk_")
    response = call.client.get("/v1/transactions?limit=1", headers={"Authorization": f"Bearer {body['key']}"})
    assert response.status_code == (403 if role == "billing" else 200)


def test_a_partner_key_for_a_partner_that_does_not_exist_is_a_422_naming_it(shared):
    response = shared.client.post("/v1/api-keys", json={"role": "partner", "partner_id": "nobody"},
                                  headers={"Authorization": f"Bearer {shared.keys.admin}"})
    assert errors_of(response) == {"partner_id"}
    assert expect(response, 422)["errors"]["partner_id"] == ["partner 'nobody' does not exist"]


@pytest.mark.parametrize("body", [{"role": "partner"}, {"role": "finance", "partner_id": "p1"}],
                         ids=["partner-without-id", "id-without-partner-role"])
def test_a_partner_binding_that_does_not_fit_the_role_is_a_422_naming_it(shared, body):
    response = shared.client.post("/v1/api-keys", json=body, headers={"Authorization": f"Bearer {shared.keys.admin}"})
    assert errors_of(response) == {"partner_id"}


def _revoke_elsewhere(database, key: str) -> None:
    """Revoke the key as another process would: in the database alone, past this process's cache."""
    import time

    from sqlalchemy import text

    from ledger.keys import hash_key
    from tests.integration.conftest import chain_due

    with database.transaction() as session:
        session.execute(text("INSERT INTO api_key_revocations (api_key_id, revoked_at_us, reason) "
                             "SELECT id, :now_us, 'elsewhere' FROM api_keys WHERE key_hash = :hash"),
                        {"hash": hash_key(key), "now_us": time.time_ns() // 1000})
        chain_due(session.connection())


def test_a_known_key_is_answered_from_the_process_cache_until_it_expires(database, client, keys, monkeypatch):
    """Authentication of a known key asks the database nothing (and so opens no writer transaction
    before the body is validated); a key revoked by another process stops working once its cached
    entry expires."""
    from sqlalchemy import event

    from api import auth

    headers = {"Authorization": f"Bearer {keys.finance}"}
    assert client.get("/v1/transactions?limit=1", headers=headers).status_code == 200
    statements: list[str] = []
    event.listen(database.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    assert client.post("/v1/revenue-events", json={"id": 1}, headers={"Authorization": f"Bearer {keys.billing}"}
                       ).status_code == 422
    assert client.post("/v1/revenue-events", json={"id": 1}, headers={"Authorization": f"Bearer {keys.billing}"}
                       ).status_code == 422
    assert len([sql for sql in statements if "api_keys" in sql]) == 1  # the first POST's only
    assert not [sql for sql in statements if "BEGIN IMMEDIATE" in sql or "advisory" in sql]
    _revoke_elsewhere(database, keys.finance)
    assert client.get("/v1/transactions?limit=1", headers=headers).status_code == 200  # cached
    monkeypatch.setattr(auth, "PRINCIPAL_TTL_S", 0.0)
    database.shared.pop("principals")
    assert client.get("/v1/transactions?limit=1", headers=headers).status_code == 401


def test_a_cached_key_is_asked_again_once_its_entry_expires(database, client, keys, monkeypatch):
    """The cache entry of a key lasts PRINCIPAL_TTL_S: after that a key revoked elsewhere is a 401."""
    import time
    from types import SimpleNamespace

    from api import auth

    headers = {"Authorization": f"Bearer {keys.finance}"}
    assert client.get("/v1/transactions?limit=1", headers=headers).status_code == 200
    _revoke_elsewhere(database, keys.finance)
    assert client.get("/v1/transactions?limit=1", headers=headers).status_code == 200  # cached
    later = time.monotonic() + auth.PRINCIPAL_TTL_S + 1
    monkeypatch.setattr(auth, "time", SimpleNamespace(monotonic=lambda: later))
    assert client.get("/v1/transactions?limit=1", headers=headers).status_code == 401


def test_a_revoked_key_is_a_401_at_once_and_a_second_revocation_answers_the_first(call):
    made = call.created("/v1/api-keys", {"role": "finance"}, as_="admin")
    headers = {"Authorization": f"Bearer {made['key']}"}
    assert call.client.get("/v1/transactions?limit=1", headers=headers).status_code == 200  # cached now
    revoked = call.post(f"/v1/api-keys/{made['id']}/revocation", {"reason": "leaked"}, as_="admin")
    body = expect(revoked, 201)
    assert (body["id"], body["reason"]) == (made["id"], "leaked") and body["revoked_at"].endswith("Z")
    assert call.client.get("/v1/transactions?limit=1", headers=headers).status_code == 401
    again = call.post(f"/v1/api-keys/{made['id']}/revocation", None, as_="admin")
    assert expect(again, 200) == body


def test_a_revoked_key_is_refused_by_a_process_that_had_not_cached_it(database, client, keys):
    from api import auth

    headers = {"Authorization": f"Bearer {keys.finance}"}
    admin = {"Authorization": f"Bearer {keys.admin}"}
    assert client.get("/v1/transactions?limit=1", headers=headers).status_code == 200
    key_id = database.shared["principals"][auth.keys.hash_key(keys.finance)][0].key_id
    database.shared.pop("principals")
    assert client.post(f"/v1/api-keys/{key_id}/revocation", headers=admin).status_code == 201
    database.shared.pop("principals", None)  # another process: nothing cached, it asks the database
    assert client.get("/v1/transactions?limit=1", headers=headers).status_code == 401


@pytest.mark.parametrize("role", ["finance", "billing"])
def test_only_an_admin_revokes_a_key_and_an_unknown_key_is_a_404(call, role):
    made = call.created("/v1/api-keys", {"role": "billing"}, as_="admin")
    assert call.post(f"/v1/api-keys/{made['id']}/revocation", None, as_=role).status_code == 403
    assert call.post("/v1/api-keys/key_nobody/revocation", None, as_="admin").status_code == 404
    assert errors_of(call.post(f"/v1/api-keys/{made['id']}/revocation", {"reason": ""}, as_="admin")) == {"reason"}


def test_an_admin_key_revoked_elsewhere_manages_no_keys_though_this_process_trusted_it_a_moment_ago(
        database, client, keys):
    # Key management took the cached login as every route does: in another worker, a revoked admin
    # key kept making keys (admin keys, which outlived it) for up to PRINCIPAL_TTL_S.
    made = client.post("/v1/api-keys", json={"role": "admin"}, headers={"Authorization": f"Bearer {keys.admin}"})
    revoked_admin = {"Authorization": f"Bearer {expect(made, 201)['key']}"}
    assert client.get("/v1/transactions?limit=1", headers=revoked_admin).status_code == 200  # cached now
    _revoke_elsewhere(database, made.get_json()["key"])
    for path, body in (("/v1/api-keys", {"role": "admin"}), (f"/v1/api-keys/{made.get_json()['id']}/revocation", {})):
        assert client.post(path, json=body, headers=revoked_admin).status_code == 401
    assert client.get("/v1/transactions?limit=1", headers=revoked_admin).status_code == 401  # the cache let it go


@pytest.mark.parametrize("around", ["\u00a0", "\u0085", "\t\u00a0"])
def test_only_spaces_and_tabs_around_a_key_are_taken_for_none(client, keys, around):
    # str.strip() took a no-break space or a NEL (bytes 0xA0 and 0x85, as a WSGI server hands them over).
    for token in (f"{keys.finance}{around}", f"{around}{keys.finance}"):
        answer = client.get("/v1/transactions?limit=1", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 401, token
    spaced = client.get("/v1/transactions?limit=1", headers={"Authorization": f"Bearer  \t{keys.finance} \t"})
    assert spaced.status_code == 200


def test_a_revocation_removed_past_the_database_rules_keeps_its_key_out_and_is_a_409_when_made_again(
        database, client, keys):
    """The program's chain names the revocation (migration 0057): deleted past the triggers, the key
    is still a 401 in a process that had not cached it, and a second revocation is refused by name."""
    from ledger.keys import key_id_of
    from tests.integration.test_tamper_evidence import behind_the_triggers

    headers = {"Authorization": f"Bearer {keys.finance}"}
    admin = {"Authorization": f"Bearer {keys.admin}"}
    with database.reader() as session:
        key_id = key_id_of(session, keys.finance)
    assert client.post(f"/v1/api-keys/{key_id}/revocation", json={"reason": "leaked"}, headers=admin).status_code == 201
    with behind_the_triggers(database) as execute:
        execute(f"DELETE FROM api_key_revocations WHERE api_key_id = '{key_id}'")
    database.shared.pop("principals", None)  # another process: nothing cached, it asks the database
    assert client.get("/v1/transactions?limit=1", headers=headers).status_code == 401
    again = expect(client.post(f"/v1/api-keys/{key_id}/revocation", json={}, headers=admin), 409)
    assert again["detail"].startswith(f"the revocation of API key {key_id!r} was recorded once and is no longer")
    listed = expect(client.get("/v1/api-keys?limit=1000", headers=admin), 200)["items"]
    assert [item["revocation"] for item in listed if item["id"] == key_id] == [
        {"id": key_id, "revoked_at": None, "reason": None}]  # revoked still, its row gone


def test_an_admin_lists_every_key_a_page_at_a_time_with_its_revocation_and_never_the_key(call):
    from api.routes.keys import LISTING

    made = [call.created("/v1/api-keys", body, as_="admin") for body in
            ({"role": "billing"}, {"role": "partner", "partner_id": "p2"})]
    revoked = expect(call.post(f"/v1/api-keys/{made[0]['id']}/revocation", {"reason": "leaked"}, as_="admin"), 201)
    listed, cursor = [], None
    while True:
        page = expect(call.client.get("/v1/api-keys?limit=2" + (f"&cursor={cursor}" if cursor else ""),
                                      headers=call.headers("admin")), 200)
        assert len(page["items"]) <= 2
        listed += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [item["id"] for item in listed] == sorted(item["id"] for item in listed)  # by id, none twice
    by_id = {item["id"]: item for item in listed}
    assert by_id[made[0]["id"]]["revocation"] == revoked
    assert {key: by_id[made[1]["id"]][key] for key in ("role", "partner_id", "revocation")} == {
        "role": "partner", "partner_id": "p2", "revocation": None}
    assert all(set(item) == {"id", "role", "partner_id", "created_at", "expires_at", "revocation"} for item in listed)
    assert all(item["created_at"].endswith("Z") for item in listed)
    with call.client.application.test_request_context("/v1/api-keys"):  # sealed as the API seals, a key no id is
        not_an_id = LISTING.cursor("\x00")
    for query, field in (("limit=0", "limit"), ("limit=1001", "limit"), ("cursor=x", "cursor"),
                         ("cursor=" + page["items"][0]["id"], "cursor"), (f"cursor={not_an_id}", "cursor")):
        assert errors_of(call.client.get(f"/v1/api-keys?{query}", headers=call.headers("admin"))) == {field}, query


@pytest.mark.parametrize("role, status", [("finance", 403), ("billing", 403), ("p1", 404), ("p2", 404)])
def test_only_an_admin_lists_keys_a_partner_key_finds_nothing_there(call, role, status):
    assert call.client.get("/v1/api-keys", headers=call.headers(role)).status_code == status


def test_a_key_made_to_expire_authenticates_until_then_and_is_listed_with_its_expiry(database, client, keys,
                                                                                    monkeypatch):
    """Beyond the contract (migration 0057): from `expires_at` on the key is a 401, and no process
    trusts it from its cache past that instant."""
    from datetime import datetime, timedelta, timezone

    from api import auth
    from ledger import keys as ledger_keys
    from ledger.instants import parse_instant

    admin = {"Authorization": f"Bearer {keys.admin}"}
    expires_at = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    made = expect(client.post("/v1/api-keys", json={"role": "finance", "expires_at": expires_at}, headers=admin), 201)
    assert made["expires_at"] == expires_at
    headers = {"Authorization": f"Bearer {made['key']}"}
    assert client.get("/v1/transactions?limit=1", headers=headers).status_code == 200
    [(_, trusted_until)] = [entry for entry in database.shared["principals"].values() if entry[0].key_id == made["id"]]
    assert trusted_until <= time.monotonic() + auth.PRINCIPAL_TTL_S
    listed = expect(client.get("/v1/api-keys?limit=1000", headers=admin), 200)["items"]
    assert [item["expires_at"] for item in listed if item["id"] == made["id"]] == [expires_at]
    monkeypatch.setattr(ledger_keys, "now_us", lambda: parse_instant(expires_at, field="x"))  # the instant itself
    database.shared.pop("principals", None)  # another process: nothing cached, it asks the database
    assert client.get("/v1/transactions?limit=1", headers=headers).status_code == 401
    assert client.get("/v1/transactions?limit=1", headers=admin).status_code == 200  # a key that does not expire


def test_a_key_made_to_expire_is_trusted_from_the_cache_no_longer_than_until_then(database, client, keys):
    from datetime import datetime, timedelta, timezone

    admin = {"Authorization": f"Bearer {keys.admin}"}
    soon = (datetime.now(timezone.utc) + timedelta(seconds=3)).isoformat()
    made = expect(client.post("/v1/api-keys", json={"role": "billing", "expires_at": soon}, headers=admin), 201)
    started = time.monotonic()
    assert client.get("/v1/customers/nobody", headers={"Authorization": f"Bearer {made['key']}"}).status_code == 404
    [(_, trusted_until)] = [entry for entry in database.shared["principals"].values() if entry[0].key_id == made["id"]]
    assert trusted_until - started < 3.5  # not the ten seconds of a key that does not expire (slack: two clocks)


@pytest.mark.parametrize("expires_at, message", [
    ("2020-01-01T00:00:00Z", "must be after now"), ("tomorrow", "RFC 3339"), (12, "must be a string")])
def test_a_key_made_to_expire_in_the_past_or_at_no_instant_is_a_422_naming_it_and_makes_nothing(
        call, expires_at, message):
    before = len(expect(call.client.get("/v1/api-keys?limit=1000", headers=call.headers("admin")), 200)["items"])
    response = call.post("/v1/api-keys", {"role": "finance", "expires_at": expires_at}, as_="admin")
    assert errors_of(response) == {"expires_at"}
    assert message in expect(response, 422)["errors"]["expires_at"][0]
    after = expect(call.client.get("/v1/api-keys?limit=1000", headers=call.headers("admin")), 200)["items"]
    assert len(after) == before
