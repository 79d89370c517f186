"""GET /v1/reports/trial-balance, GET /v1/reports/liabilities and GET /v1/integrity."""

import pytest

from ledger.instants import format_instant, now_us
from tests.api.books import errors_of
from tests.api.conftest import bearer
from tests.integration.test_tamper_evidence import behind_the_triggers


def trial_balance(shared, query: str = "") -> dict:
    response = shared.client.get(f"/v1/reports/trial-balance{query}", headers=bearer(shared.keys.finance))
    assert response.status_code == 200, response.data
    return response.get_json()


def test_the_trial_balance_lists_every_account_and_currency_with_signed_balances(shared):
    body = trial_balance(shared)
    assert body["rows"] == [
        {"account": "expense:commission", "currency": "JPY", "debit": "1234", "credit": "0", "balance": "1234"},
        {"account": "expense:commission", "currency": "USD", "debit": "125.00", "credit": "0.00", "balance": "125.00"},
        {"account": "liability:partner:p1:pending", "currency": "JPY", "debit": "0", "credit": "1234",
         "balance": "-1234"},
        {"account": "liability:partner:p1:pending", "currency": "USD", "debit": "0.00", "credit": "100.00",
         "balance": "-100.00"},
        {"account": "liability:partner:p2:pending", "currency": "USD", "debit": "0.00", "credit": "25.00",
         "balance": "-25.00"},
    ]
    assert body["totals"] == [{"currency": "JPY", "debit": "1234", "credit": "1234"},
                              {"currency": "USD", "debit": "125.00", "credit": "125.00"}]


def test_as_of_counts_only_postings_effective_before_it(shared):
    at_instant = trial_balance(shared, "?as_of=2026-01-21T00:00:00Z")
    assert at_instant["as_of"] == "2026-01-21T00:00:00Z"
    assert at_instant["totals"] == [{"currency": "USD", "debit": "100.00", "credit": "100.00"}]
    end_of_day = trial_balance(shared, "?as_of=2026-01-21")  # a date means the end of that day
    assert end_of_day["as_of"] == "2026-01-22T00:00:00Z"
    assert end_of_day["totals"] == [{"currency": "USD", "debit": "125.00", "credit": "125.00"}]
    assert trial_balance(shared, "?as_of=2026-01-01") == {"as_of": "2026-01-02T00:00:00Z", "rows": [], "totals": []}


def test_an_as_of_with_digits_beyond_the_microsecond_counts_the_postings_before_it(shared):
    # p1's accrual is effective at 2026-01-20T00:00:00Z, before 00:00:00.0000001Z: an exclusive bound
    # is rounded up to the microsecond, never down onto the posting it must count.
    just_after = trial_balance(shared, "?as_of=2026-01-20T00:00:00.0000001Z")
    assert just_after["as_of"] == "2026-01-20T00:00:00.000001Z"
    assert just_after["totals"] == [{"currency": "USD", "debit": "100.00", "credit": "100.00"}]
    assert trial_balance(shared, "?as_of=2026-01-20T00:00:00.000000000Z")["totals"] == []


def test_an_as_of_whose_plus_the_query_string_read_as_a_space_is_a_422_saying_so(shared):
    # `?as_of=2026-01-21T00:00:00+10:00` sent unencoded: the server receives "...00:00:00 10:00".
    response = shared.client.get("/v1/reports/trial-balance?as_of=2026-01-21T00:00:00+10:00",
                                 headers=bearer(shared.keys.finance))
    assert errors_of(response) == {"as_of"}
    assert "%2B10:00" in response.get_json()["errors"]["as_of"][0]
    assert trial_balance(shared, "?as_of=2026-01-21T00:00:00%2B10:00")["as_of"] == "2026-01-20T14:00:00Z"


def test_without_as_of_the_trial_balance_is_as_of_now(shared):
    body = trial_balance(shared)
    assert body["as_of"] > "2026-01-24" and body["as_of"].endswith("Z")


def test_a_bad_as_of_is_a_422_naming_it(shared):
    for value in ("yesterday", "2026-13-01", "2026-01-01T00:00:00", "1969-12-31"):
        response = shared.client.get(f"/v1/reports/trial-balance?as_of={value}", headers=bearer(shared.keys.finance))
        assert response.status_code == 422, value
        assert list(response.get_json()["errors"]) == ["as_of"]


def test_integrity_of_untouched_books_is_ok(shared):
    response = shared.client.get("/v1/integrity", headers=bearer(shared.keys.finance))
    assert response.status_code == 200
    body = response.get_json()
    assert body == {"ok": True, "transactions_checked": 3, "chain_head": body["chain_head"], "head_id": 3,
                    "latest_close": None, "program_head": body["program_head"], "problems": []}
    last = shared.client.get("/v1/transactions/3", headers=bearer(shared.keys.finance)).get_json()
    assert body["chain_head"] == last["hash"]


def test_integrity_proves_a_head_recorded_earlier_and_names_one_it_does_not_hold(shared):
    body = shared.client.get("/v1/integrity", headers=bearer(shared.keys.finance)).get_json()
    head = f"{body['head_id']}:{body['chain_head']}"
    again = shared.client.get(f"/v1/integrity?head={head}", headers=bearer(shared.keys.finance)).get_json()
    assert again["ok"] is True
    ahead = f"{body['head_id'] + 1}:{body['chain_head']}"
    missing = shared.client.get(f"/v1/integrity?head={ahead}", headers=bearer(shared.keys.finance)).get_json()
    assert not missing["ok"] and [p["code"] for p in missing["problems"]] == ["head_missing"]
    for bad in ("4", "x:" + "0" * 64, "4:" + "0" * 63, "4:" + "G" * 64, "\u00b2:" + "0" * 64, "\u0663:" + "0" * 64):
        response = shared.client.get(f"/v1/integrity?head={bad}", headers=bearer(shared.keys.finance))
        assert errors_of(response) == {"head"}


def test_integrity_proves_a_program_head_recorded_earlier_and_names_one_it_does_not_hold(shared):
    body = shared.client.get("/v1/integrity", headers=bearer(shared.keys.finance)).get_json()
    head_id, head_hash = body["program_head"].split(":")
    assert int(head_id) > 0 and len(head_hash) == 64  # the shared books' program: plans, partners, customers
    for recorded, codes in ((body["program_head"], []), (f"{head_id}:{'f' * 64}", ["program_head_rewritten"]),
                            (f"{int(head_id) + 1}:{head_hash}", ["program_head_missing"]),
                            (f"{2**63}:{head_hash}", ["program_head_missing"])):  # past the database's integers
        found = shared.client.get(f"/v1/integrity?program_head={recorded}", headers=bearer(shared.keys.finance))
        assert [p["code"] for p in found.get_json()["problems"]] == codes, recorded
    for bad in ("4", "x:" + "0" * 64, "0:" + "0" * 64, "4:" + "0" * 63):
        response = shared.client.get(f"/v1/integrity?program_head={bad}", headers=bearer(shared.keys.finance))
        assert errors_of(response) == {"program_head"}
        assert "a row id of the program's chain" in response.get_json()["errors"]["program_head"][0]


def test_integrity_proves_a_close_recorded_earlier_and_names_one_it_does_not_hold(fresh):
    fresh.event("e-1", "p1-customer", "inv-1", "100.00", "2026-01-10T00:00:00Z")
    assert fresh.read("/v1/integrity")["latest_close"] is None  # nothing closed yet
    closed = fresh.ok("/v1/periods/2026-01/close")
    body = fresh.read("/v1/integrity")
    assert body["ok"] is True and body["latest_close"] == f"2026-01:{closed['close_hash']}"
    assert fresh.read(f"/v1/integrity?close={body['latest_close']}")["ok"] is True
    for recorded, code in ((f"2026-02:{closed['close_hash']}", "close_missing"), (f"2026-01:{'0' * 64}",
                                                                                 "close_rewritten")):
        found = fresh.read(f"/v1/integrity?close={recorded}")
        assert not found["ok"] and [p["code"] for p in found["problems"]] == [code]
    for bad in ("2026-01", "2026-13:" + closed["close_hash"], "2026-1:" + closed["close_hash"],
                "2026-01:" + closed["close_hash"][:-1]):
        assert errors_of(fresh.get(f"/v1/integrity?close={bad}")) == {"close"}


def test_integrity_names_each_problem_in_tampered_books(database, client, keys, booked):
    with behind_the_triggers(database) as execute:
        execute("UPDATE journal_lines SET amount_minor = 99999 WHERE transaction_id = 2 AND side = 'D'")
    body = client.get("/v1/integrity", headers=bearer(keys.finance)).get_json()
    assert body["ok"] is False and body["transactions_checked"] == 3
    assert {(p["transaction_id"], p["code"]) for p in body["problems"]} == {
        (2, "content_altered"), (2, "unbalanced"), (2, "commission_unlike_program"), (None, "totals_mismatch")}
    assert all(set(p) == {"transaction_id", "code", "message"} and p["message"] for p in body["problems"])


def liabilities(client, key, query: str = "") -> dict:
    response = client.get(f"/v1/reports/liabilities{query}", headers=bearer(key))
    assert response.status_code == 200, response.data
    return response.get_json()


def test_liabilities_list_what_is_owed_to_each_partner_per_currency(shared):
    body = liabilities(shared.client, shared.keys.finance, "?as_of=2026-01-31")
    assert body == {
        "as_of": "2026-02-01T00:00:00Z",
        "partners": [
            {"partner_id": "p1", "currency": "JPY", "pending": "1234", "available": "0"},
            {"partner_id": "p1", "currency": "USD", "pending": "100.00", "available": "0.00"},
            {"partner_id": "p2", "currency": "USD", "pending": "25.00", "available": "0.00"}],
        "totals": [
            {"currency": "JPY", "pending": "1234", "available": "0", "owed_by_partners": "0"},
            {"currency": "USD", "pending": "125.00", "available": "0.00", "owed_by_partners": "0.00"}]}
    early = liabilities(shared.client, shared.keys.finance, "?as_of=2026-01-20T12:00:00Z")
    assert [(p["partner_id"], p["currency"]) for p in early["partners"]] == [("p1", "USD")]
    assert liabilities(shared.client, shared.keys.finance)["as_of"] > "2026-11"


def test_liabilities_show_what_partners_owe_back_apart(fresh):
    for partner_id, amount in (("p1", "-30.00"), ("p2", "45.00")):
        fresh.created("/v1/adjustments", {"partner_id": partner_id, "account": "available", "reason": "test",
                                          "amount": {"amount": amount, "currency": "USD"},
                                          "effective_at": "2026-01-05T00:00:00Z"})
    body = liabilities(fresh.client, fresh.keys.finance, "?as_of=2026-01-31")
    assert [(p["partner_id"], p["available"]) for p in body["partners"]] == [("p1", "-30.00"), ("p2", "45.00")]
    assert body["totals"] == [{"currency": "USD", "pending": "0.00", "available": "45.00",
                               "owed_by_partners": "30.00"}]


def test_a_bad_liabilities_as_of_is_a_422_naming_it(shared):
    response = shared.client.get("/v1/reports/liabilities?as_of=2026-02-30", headers=bearer(shared.keys.finance))
    assert response.status_code == 422 and list(response.get_json()["errors"]) == ["as_of"]


def test_without_as_of_each_report_and_balance_is_as_of_the_services_own_clock(shared, skewed_clock):
    skewed_clock.offset_us = 400 * 86_400 * 1_000_000  # this server's clock, 400 days ahead
    ahead = format_instant(now_us())[:10]
    finance = bearer(shared.keys.finance)
    assert trial_balance(shared)["as_of"][:10] == ahead
    for path in ("/v1/reports/liabilities", "/v1/partners/p1/balance"):
        response = shared.client.get(path, headers=finance)
        assert response.status_code == 200 and response.get_json()["as_of"][:10] == ahead, (path, response.data)


@pytest.mark.parametrize("slow", ["a statement after the walk", "the walk, its streams open"])
def test_integrity_past_the_request_budget_is_a_503_naming_the_command_not_a_killed_worker(
        database, client, keys, booked, monkeypatch, slow):
    """A verify that outlives the request's budget is cancelled in the database and answered 503:
    past gunicorn's worker timeout the worker was killed mid-verify, a bare 500. The next request is
    served. Made slow by a statement that runs about 15 s unless cancelled (so that without the cut
    this test fails, slowly), or by each transaction's check while the journal's streams are open
    (on SQLite the interrupt then held through the rollback: a 500)."""
    import time

    import sqlalchemy as sa

    from api.routes import reports
    from ledger import verify as verifying

    if slow == "a statement after the walk":
        statement = ("SELECT pg_sleep(15)" if database.engine.dialect.name == "postgresql" else
                     "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50000000) "
                     "SELECT count(*) FROM c")
        checks = verifying.verify_events
        monkeypatch.setattr(verifying, "verify_events",
                            lambda session: (session.execute(sa.text(statement)).all(), checks(session))[1])
    else:
        check = verifying._check
        monkeypatch.setattr(verifying, "STREAM_CHUNK_ROWS", 1)  # open as a walk past 10,000 transactions is
        monkeypatch.setattr(verifying, "_check", lambda *args: (time.sleep(0.5), check(*args))[1])
    monkeypatch.setattr(reports, "work_deadline", lambda: time.monotonic() + 0.3)
    response = client.get("/v1/integrity", headers=bearer(keys.finance))
    assert response.status_code == 503 and response.headers["Retry-After"], response.data
    assert "`revshare verify`" in response.get_json()["detail"]
    monkeypatch.undo()
    again = client.get("/v1/integrity", headers=bearer(keys.finance))
    assert again.status_code == 200 and again.get_json()["ok"] is True, again.data
