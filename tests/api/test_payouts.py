"""POST /v1/holds/release, POST /v1/payout-runs, GET /v1/payouts, POST /v1/payouts/{id}/settle and
/fail, and POST /v1/adjustments. Releases and runs act on every partner, so those tests use books
of their own (`fresh`: p1 and p2 on the 20% plan, hold 30 days, minimum payout USD 50.00)."""

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from ledger import holds, journal, payouts, periods, revenue
from ledger.instants import parse_instant
from ledger.journal import now_us
from ledger.schema import open_holds
from tests.api.books import (assert_not_a_cursor, crafted_cursor, errors_of, expect, instant, money, next_cursor,
                             unique)
from tests.api.conftest import DAY_US
from tests.interleaving import another_writer_first


def invoices(call, **amounts: str) -> None:
    """One paid invoice per partner on 2026-01-10 (its accrual matures on 2026-02-09)."""
    for partner_id, amount in amounts.items():
        call.event(unique("evt"), f"{partner_id}-customer", unique("inv"), amount, "2026-01-10")


def available(call, partner_id: str, as_of: str) -> str:
    [usd] = call.read(f"/v1/partners/{partner_id}/balance?as_of={as_of}")["balances"]
    return usd["available"]


def test_releasing_holds_moves_matured_accruals_to_available_once(fresh):
    invoices(fresh, p1="250.00", p2="100.00")
    assert fresh.ok("/v1/holds/release", {"at": "2026-02-08T23:59:59.999999Z"}) == {
        "released": 0, "at": "2026-02-08T23:59:59.999999Z"}
    assert fresh.ok("/v1/holds/release", {"at": instant("2026-02-09")})["released"] == 2
    assert fresh.ok("/v1/holds/release", {"at": instant("2026-03-01")})["released"] == 0
    assert available(fresh, "p1", "2026-02-09") == "50.00"
    fresh.event(unique("evt"), "p1-customer", unique("inv"), "10.00", "2026-03-01")
    by_now = fresh.ok("/v1/holds/release")  # without an instant: what matured by now
    assert by_now["released"] == 1 and by_now["at"] > "2026-11"


def test_releasing_holds_at_an_instant_in_the_future_is_a_422_naming_at(fresh):
    invoices(fresh, p1="250.00")
    assert errors_of(fresh.post("/v1/holds/release", {"at": "2062-01-01T00:00:00Z"})) == {"at"}
    assert available(fresh, "p1", "2026-11-01") == "0.00"


def test_an_accrual_reversed_after_its_release_was_posted_is_not_paid_out(fresh):
    [accrual_id] = fresh.event(unique("evt"), "p1-customer", unique("inv"), "250.00", "2026-01-10")["transaction_ids"]
    assert fresh.ok("/v1/holds/release", {"at": instant("2026-02-10")})["released"] == 1
    reversal = fresh.created(f"/v1/transactions/{accrual_id}/reversal", {"reason": "wrong partner"})
    assert reversal["kind"] == "reversal" and reversal["reverses_id"] == accrual_id
    assert fresh.created("/v1/payout-runs", {"at": instant("2026-03-01")})["payouts"] == []
    assert available(fresh, "p1", "2026-03-01") == "0.00"


def test_a_payout_run_pays_each_balance_that_reaches_its_plans_minimum_once_per_instant(fresh):
    invoices(fresh, p1="250.00", p2="200.00")  # 50.00 and 40.00 of commission
    run = fresh.created("/v1/payout-runs", {"at": instant("2026-02-10")})
    assert run["at"] == "2026-02-10T00:00:00Z" and run["id"].startswith("run_")
    assert [(p["partner_id"], p["amount"], p["status"], p["run_id"]) for p in run["payouts"]] == [
        ("p1", money("50.00"), "pending", run["id"])]
    assert (available(fresh, "p1", "2026-02-10"), available(fresh, "p2", "2026-02-10")) == ("0.00", "40.00")
    payout = fresh.read(f"/v1/transactions/{run['payouts'][0]['transaction_id']}")
    assert payout["kind"] == "payout" and payout["effective_at"] == "2026-02-10T00:00:00Z"
    invoices(fresh, p2="500.00")
    assert fresh.ok("/v1/payout-runs", {"at": instant("2026-02-10")}) == run  # one run per instant: 200, the first


def test_a_run_inside_a_closed_period_is_a_409_naming_at(fresh):
    invoices(fresh, p1="250.00")
    fresh.ok("/v1/periods/2026-01/close")
    assert errors_of(fresh.post("/v1/payout-runs", {"at": instant("2026-01-31")}), 409) == {"at"}


def test_a_run_before_the_latest_run_is_a_409_naming_at_as_it_would_pay_again(fresh):
    invoices(fresh, p1="250.00")
    assert len(fresh.created("/v1/payout-runs", {"at": instant("2026-03-01")})["payouts"]) == 1
    assert errors_of(fresh.post("/v1/payout-runs", {"at": instant("2026-02-15")}), 409) == {"at"}
    assert available(fresh, "p1", "2026-03-02") == "0.00"


def test_a_run_in_the_future_is_a_422_naming_at_and_blocks_nothing(fresh):
    invoices(fresh, p1="250.00")
    assert errors_of(fresh.post("/v1/payout-runs", {"at": "2062-01-01T00:00:00Z"})) == {"at"}
    assert len(fresh.created("/v1/payout-runs", {"at": instant("2026-03-01")})["payouts"]) == 1


def test_a_run_by_a_server_whose_clock_is_ahead_of_the_databases_is_a_422_naming_at_not_a_500(fresh, skewed_clock):
    invoices(fresh, p1="250.00")
    skewed_clock.offset_us = 6 * 60 * 1_000_000  # more than the five minutes the database allows a run ahead
    response = fresh.post("/v1/payout-runs", {})
    assert errors_of(response) == {"at"} and "database's clock" in response.get_json()["errors"]["at"][0]
    assert fresh.read("/v1/payouts")["items"] == []
    skewed_clock.offset_us = 4 * 60 * 1_000_000  # within them: made at this server's instant
    assert len(fresh.created("/v1/payout-runs", {})["payouts"]) == 1


def test_the_database_refuses_a_payout_run_before_the_latest(fresh, database):
    fresh.created("/v1/payout-runs", {"at": instant("2026-03-01")})
    with pytest.raises(sa.exc.DBAPIError, match="must not be earlier than the latest"):
        with database.engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO payout_runs (id, at_us, created_at_us) VALUES ('raw', 1, 1)")


@pytest.mark.parametrize("action", ["settle", "fail"])
def test_a_payout_settled_or_failed_before_it_was_made_or_in_the_future_is_a_422_naming_at(fresh, action):
    invoices(fresh, p1="250.00")
    [payout] = fresh.created("/v1/payout-runs", {"at": instant("2026-02-10")})["payouts"]
    for at in ("2026-02-09T23:59:59.999999Z", "2062-01-01T00:00:00Z"):
        assert errors_of(fresh.post(f"/v1/payouts/{payout['id']}/{action}", {"at": at})) == {"at"}
    assert fresh.read(f"/v1/payouts?run_id={payout['run_id']}")["items"][0]["status"] == "pending"
    assert available(fresh, "p1", "2026-02-10") == "0.00"
    assert fresh.ok(f"/v1/payouts/{payout['id']}/{action}", {"at": "2026-02-10T00:00:00Z"})["status"] != "pending"


def test_the_database_refuses_a_payout_failed_before_it_was_made(fresh, database, monkeypatch):
    invoices(fresh, p1="250.00")
    [payout] = fresh.created("/v1/payout-runs", {"at": instant("2026-02-10")})["payouts"]
    monkeypatch.setattr(payouts, "_resolved_at", lambda _session, _payout, at_us, _now_us: at_us)  # past Python
    with pytest.raises(sa.exc.DBAPIError, match="not settled or failed before it was made"):
        with database.transaction() as session:
            payouts.fail(session, payout["id"], at_us=parse_instant("2026-02-01T00:00:00Z", field="at"))
    assert available(fresh, "p1", "2026-02-10") == "0.00"


@pytest.mark.parametrize("action", ["settle", "fail"])
def test_a_payout_settled_or_failed_now_by_a_server_whose_clock_is_behind_the_runs_is_dated_at_the_payout(
        fresh, action, skewed_clock):
    invoices(fresh, p1="250.00")
    [payout] = fresh.created("/v1/payout-runs", {})["payouts"]  # at now, by this server's clock
    made_at = fresh.read(f"/v1/transactions/{payout['transaction_id']}")["effective_at"]
    skewed_clock.offset_us = -90 * 1_000_000  # another server, 90 s behind (or this one stepped back)
    resolved = fresh.ok(f"/v1/payouts/{payout['id']}/{action}", {})
    assert resolved["status"] == ("settled" if action == "settle" else "failed")
    assert fresh.read(f"/v1/transactions/{resolved['resolution_transaction_id']}")["effective_at"] == made_at


@pytest.mark.parametrize("action", ["settle", "fail"])
def test_a_payout_settled_or_failed_by_a_server_whose_clock_is_over_five_minutes_behind_the_runs_is_a_409_not_a_500(
        fresh, action, skewed_clock):
    # Dated at the payout, the resolution would be over five minutes ahead of its recording, which the
    # database refuses (migration 0029): the server says so, and the payout stays pending.
    invoices(fresh, p1="250.00")
    [payout] = fresh.created("/v1/payout-runs", {})["payouts"]  # at now, by this server's clock
    skewed_clock.offset_us = -6 * 60 * 1_000_000  # another server, 6 minutes behind (or this one stepped back)
    response = fresh.post(f"/v1/payouts/{payout['id']}/{action}", {})
    assert errors_of(response, 409) == set() and "more than five minutes ahead of this server's clock" in (
        response.get_json()["detail"])
    assert fresh.read(f"/v1/payouts?run_id={payout['run_id']}")["items"][0]["status"] == "pending"
    skewed_clock.offset_us = 0
    assert fresh.ok(f"/v1/payouts/{payout['id']}/{action}", {})["status"] in ("settled", "failed")


def test_reversing_a_pending_payouts_posting_fails_the_payout_so_it_cannot_also_be_settled(fresh):
    invoices(fresh, p1="250.00")
    [payout] = fresh.created("/v1/payout-runs", {"at": instant("2026-02-10")})["payouts"]
    reversal = fresh.created(f"/v1/transactions/{payout['transaction_id']}/reversal", {"reason": "sent twice"})
    assert fresh.read(f"/v1/payouts?run_id={payout['run_id']}")["items"][0] == {
        **payout, "status": "failed", "resolution_transaction_id": reversal["id"], "reason": "sent twice"}
    settle = fresh.post(f"/v1/payouts/{payout['id']}/settle", {})
    assert errors_of(settle, 409) == set() and "already failed" in settle.get_json()["detail"]
    assert available(fresh, "p1", "2026-02-10") == "50.00"


def test_a_resolved_payouts_postings_are_final(fresh):
    invoices(fresh, p1="250.00")
    [payout] = fresh.created("/v1/payout-runs", {"at": instant("2026-02-10")})["payouts"]
    settled = fresh.ok(f"/v1/payouts/{payout['id']}/settle", {"reason": "wire 123"})
    for transaction_id in (payout["transaction_id"], settled["resolution_transaction_id"]):
        response = fresh.post(f"/v1/transactions/{transaction_id}/reversal", {"reason": "undo"})
        assert errors_of(response, 409) == set() and "adjustment" in response.get_json()["detail"]
    assert available(fresh, "p1", "2026-02-10") == "0.00"


def test_a_payout_is_settled_once(fresh):
    invoices(fresh, p1="250.00")
    [payout] = fresh.created("/v1/payout-runs", {"at": instant("2026-02-10")})["payouts"]
    settled = fresh.ok(f"/v1/payouts/{payout['id']}/settle", {"reason": "wire 123"})
    assert (settled["status"], settled["reason"]) == ("settled", "wire 123")
    transaction = fresh.read(f"/v1/transactions/{settled['resolution_transaction_id']}")
    assert [(line["account"], line["side"]) for line in transaction["lines"]] == [
        ("liability:payouts:in_transit", "debit"), ("asset:cash", "credit")]
    for outcome in ("settle", "fail"):
        response = fresh.post(f"/v1/payouts/{payout['id']}/{outcome}", {})
        assert errors_of(response, 409) == set() and "already settled" in response.get_json()["detail"]


def test_a_failed_payout_returns_the_money_to_available(fresh):
    invoices(fresh, p1="250.00")
    [payout] = fresh.created("/v1/payout-runs", {"at": instant("2026-02-10")})["payouts"]
    failed = fresh.ok(f"/v1/payouts/{payout['id']}/fail", {"reason": "account closed",
                                                            "at": "2026-02-12T00:00:00Z"})
    assert failed["status"] == "failed"
    assert (available(fresh, "p1", "2026-02-11"), available(fresh, "p1", "2026-02-12")) == ("0.00", "50.00")
    assert errors_of(fresh.post(f"/v1/payouts/{payout['id']}/settle"), 409) == set()


@pytest.mark.parametrize("outcome", ["settle", "fail"])
def test_resolving_an_unknown_payout_is_a_404_and_a_bad_body_a_422(shared, outcome):
    headers = {"Authorization": f"Bearer {shared.keys.finance}"}
    assert shared.client.post(f"/v1/payouts/999999/{outcome}", json={}, headers=headers).status_code == 404
    response = shared.client.post(f"/v1/payouts/999999/{outcome}", json={"reason": "", "when": "now"},
                                  headers=headers)
    assert errors_of(response) == {"reason", "when"}


def test_payouts_list_page_by_page_and_each_partner_sees_its_own(fresh):
    invoices(fresh, p1="250.00", p2="300.00")
    run = fresh.created("/v1/payout-runs", {"at": instant("2026-02-10")})
    ids = [p["id"] for p in run["payouts"]]
    first = fresh.read("/v1/payouts?limit=1")
    rest = fresh.read(f"/v1/payouts?limit=1&cursor={first['next_cursor']}")
    assert [p["id"] for p in first["items"] + rest["items"]] == ids and rest["next_cursor"] is None
    assert [p["partner_id"] for p in fresh.read("/v1/payouts", as_="p2")["items"]] == ["p2"]
    assert [p["partner_id"] for p in fresh.read("/v1/payouts?partner_id=p1")["items"]] == ["p1"]
    assert [p["partner_id"] for p in fresh.read(f"/v1/payouts?run_id={run['id']}")["items"]] == ["p1", "p2"]
    assert fresh.get("/v1/payouts?partner_id=p1", as_="p2").status_code == 404


def test_a_payout_run_filter_naming_no_run_or_one_that_paid_the_partner_s_key_nothing_is_a_404_not_an_empty_list(
        fresh):
    invoices(fresh, p1="250.00")  # p2 earns nothing: the run pays p1 alone
    run = fresh.created("/v1/payout-runs", {"at": instant("2026-02-10")})
    assert [p["partner_id"] for p in run["payouts"]] == ["p1"]
    missing = fresh.get("/v1/payouts?run_id=run_none")
    assert missing.status_code == 404 and "'run_none'" in missing.get_json()["detail"]
    assert [p["partner_id"] for p in fresh.read(f"/v1/payouts?run_id={run['id']}", as_="p1")["items"]] == ["p1"]
    theirs, unknown = (fresh.get(f"/v1/payouts?run_id={run_id}", as_="p2") for run_id in (run["id"], "run_none"))
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.get_json()["detail"].replace(run["id"], "X") == unknown.get_json()["detail"].replace("run_none", "X")
    # To finance the run is there, and paid p2 nothing; a run that is not there is still a 404.
    assert fresh.read(f"/v1/payouts?run_id={run['id']}&partner_id=p2") == {"items": [], "next_cursor": None}
    assert fresh.get("/v1/payouts?run_id=run_none&partner_id=p2").status_code == 404


def instant_from_now(offset: timedelta) -> str:
    return (datetime.now(timezone.utc) + offset).isoformat()


def adjustment(partner_id: str, amount: str, account: str = "available", **fields) -> dict:
    return {"partner_id": partner_id, "account": account, "amount": money(amount), "reason": "goodwill", **fields}


def test_a_positive_adjustment_credits_the_partner_and_a_negative_one_debits_it(call):
    partner_id = call.partner()
    credit = call.created("/v1/adjustments", adjustment(partner_id, "25.00", effective_at="2026-01-31T00:00:00Z"))
    assert (credit["kind"], credit["partner_id"], credit["memo"], credit["effective_at"]) == (
        "adjustment", partner_id, "goodwill", "2026-01-31T00:00:00Z")
    assert [(line["account"], line["side"], line["amount"]) for line in credit["lines"]] == [
        ("expense:commission:adjustment", "debit", "25.00"), (f"liability:partner:{partner_id}:available", "credit",
                                                               "25.00")]
    debit = call.created("/v1/adjustments", adjustment(partner_id, "-10.00", "pending"))
    assert [(line["account"], line["side"]) for line in debit["lines"]] == [
        (f"liability:partner:{partner_id}:pending", "debit"), ("expense:commission:adjustment", "credit")]
    [usd] = call.read(f"/v1/partners/{partner_id}/balance")["balances"]
    assert (usd["pending"], usd["available"], usd["total"]) == ("-10.00", "25.00", "15.00")


def test_an_adjustment_retried_with_its_key_posts_once_and_without_a_key_twice(call):
    partner_id, key = call.partner(), unique("adj")
    headers = {"Idempotency-Key": key}
    first = call.post("/v1/adjustments", adjustment(partner_id, "5.00"), headers=headers)
    again = call.post("/v1/adjustments", adjustment(partner_id, "5.00"), headers=headers)
    assert expect(first, 201) == expect(again, 201) and again.headers["Idempotent-Replayed"] == "true"
    call.created("/v1/adjustments", adjustment(partner_id, "5.00"))
    call.created("/v1/adjustments", adjustment(partner_id, "5.00"))
    [usd] = call.read(f"/v1/partners/{partner_id}/balance")["balances"]
    assert usd["available"] == "15.00"


def test_an_adjustment_dated_in_the_future_is_a_422_naming_effective_at_and_posts_nothing(call):
    partner_id = call.partner()
    for effective_at in ("2099-01-01T00:00:00Z", instant_from_now(timedelta(minutes=1))):
        response = call.post("/v1/adjustments", adjustment(partner_id, "25.00", effective_at=effective_at))
        assert errors_of(response) == {"effective_at"} and "is in the future" in response.get_json()["detail"]
    assert call.read(f"/v1/transactions?partner_id={partner_id}")["items"] == []
    assert call.read(f"/v1/partners/{partner_id}/balance?as_of=2100-01-01")["balances"] == []
    passed = instant_from_now(timedelta(seconds=-1))  # an instant that has passed: accepted
    posted = call.created("/v1/adjustments", adjustment(partner_id, "25.00", effective_at=passed))
    assert parse_instant(posted["effective_at"], field="t") == parse_instant(passed, field="t")


@pytest.mark.parametrize("body, named", [
    (adjustment("p1", "0.00"), {"amount"}),
    (adjustment("p1", "1.001"), {"amount"}),
    (adjustment("nobody", "1.00"), {"partner_id"}),
    (adjustment("p1", "1.00", "cash"), {"account"}),
    ({**adjustment("p1", "1.00"), "reason": ""}, {"reason"}),
    ({"partner_id": "p1"}, {"account", "amount", "reason"}),
], ids=["zero", "decimals", "partner", "account", "reason", "missing"])
def test_a_bad_adjustment_is_a_422_naming_the_field(shared, body, named):
    response = shared.client.post("/v1/adjustments", json=body,
                                  headers={"Authorization": f"Bearer {shared.keys.finance}"})
    assert errors_of(response) == named


@pytest.mark.parametrize("path", ["/v1/holds/release", "/v1/payout-runs"])
def test_a_release_or_run_without_an_instant_is_made_when_the_clock_steps_back_after_the_server_reads_now(
        fresh, skewed_clock, path):
    invoices(fresh, p1="250.00")
    skewed_clock.step_back_per_read_us = 2_000_000  # the instant "now" the server read is ahead of its next read
    response = fresh.post(path, {})
    assert response.status_code in (200, 201), response.get_json()
    made = response.get_json()
    assert (len(made["payouts"]) == 1) if path == "/v1/payout-runs" else (made["released"] == 1)


def test_a_run_without_an_instant_made_while_another_server_ran_one_is_made_at_a_later_now_not_a_409(
        fresh, database, monkeypatch):
    invoices(fresh, p1="250.00")
    another_writer_first(monkeypatch, database, lambda session: payouts.run_payouts(session, now_us()))
    made = fresh.created("/v1/payout-runs", {})
    [paid] = fresh.read("/v1/payouts")["items"]
    assert made["payouts"] == [] and paid["run_id"] != made["id"] and paid["amount"] == money("50.00")


def test_a_run_without_an_instant_or_a_key_sent_twice_makes_a_second_run_that_pays_what_the_first_left(
        fresh, database):
    """Each is a run at now; only an `Idempotency-Key` makes a retry the same request."""
    invoices(fresh, p1="250.00")
    first, second = fresh.created("/v1/payout-runs", {}), fresh.created("/v1/payout-runs", {})
    assert first["id"] != second["id"]
    assert parse_instant(first["at"], field="at") < parse_instant(second["at"], field="at")
    assert [payout["amount"] for payout in first["payouts"]] == [money("50.00")] and second["payouts"] == []
    with database.reader() as session:
        assert session.execute(sa.text("SELECT count(*) FROM payout_runs")).scalar_one() == 2


def test_a_release_without_an_instant_made_while_another_server_released_is_made_as_of_a_later_now(
        fresh, database, monkeypatch):
    invoices(fresh, p1="250.00")
    others = []

    def release_now(session) -> None:
        batch = journal.Batch(session)
        others.append((holds.release_matured(session, batch.recorded_at_us, batch=batch, own_instant=True),
                       batch.recorded_at_us))
    another_writer_first(monkeypatch, database, release_now)
    made = fresh.ok("/v1/holds/release", {})
    [(released, other_at_us)] = others
    assert released == 1 and made["released"] == 0 and parse_instant(made["at"], field="at") > other_at_us


def test_a_run_in_a_period_another_server_closed_while_it_waited_for_the_lock_is_a_409_and_posts_nothing(
        fresh, database, monkeypatch):
    invoices(fresh, p1="250.00")

    def close_january_and_february(session):
        periods.close_period(session, "2026-01")
        periods.close_period(session, "2026-02")

    another_writer_first(monkeypatch, database, close_january_and_february)
    response = fresh.post("/v1/payout-runs", {"at": instant("2026-02-10")})
    assert errors_of(response, 409) == {"at"} and "closed period" in response.get_json()["detail"]
    assert fresh.read("/v1/payouts")["items"] == [] and available(fresh, "p1", "2026-03-01") == "50.00"


def test_a_cursor_the_payout_list_did_not_hand_out_is_a_422_naming_it(shared):
    """A transaction list's cursor was taken as a place in the payouts (an empty page, or payouts
    skipped); so was a cursor made before cursors named their list ("after:N")."""
    foreign = [next_cursor(shared, listing) for listing in ("/v1/transactions", "/v1/partners", "/v1/periods")]
    crafted = [crafted_cursor(content) for content in ("after:1", "payouts:after:-1", "payouts:after:")]
    for cursor in (*foreign, *crafted):
        assert_not_a_cursor(shared, "/v1/payouts", cursor)


def test_a_release_without_an_instant_reads_now_in_the_transaction_that_releases(fresh, database, monkeypatch):
    """Read in a transaction of its own, committed before the releases' first, now let a posting of
    another server made between the two go unwaited for: a hold that matured before that posting
    stayed held, answered with an instant before it. Now and the releases share one lock."""
    taking, took = journal.locked, []

    def a_posting_before_the_second_take(session, statements):
        took.append(1)
        if len(took) == 2:  # another server's late payment, whose accrual matured a microsecond before it
            with database.transaction() as other:
                revenue.ingest(other, [revenue.RevenueEvent("late-pay", "invoice_paid", "p1-customer", "late-inv",
                                                             "USD", 25_000, now_us() - 30 * DAY_US - 1)])
        return taking(session, statements)

    monkeypatch.setattr(journal, "locked", a_posting_before_the_second_take)
    made = fresh.ok("/v1/holds/release", {})
    monkeypatch.setattr(journal, "locked", taking)
    with database.reader() as session:
        held = session.execute(sa.select(sa.func.count()).select_from(open_holds)
                               .where(open_holds.c.matures_at_us <= now_us())).scalar()  # matured, still held
    assert (len(took), made["released"], held) == (1, 0, 0), made
