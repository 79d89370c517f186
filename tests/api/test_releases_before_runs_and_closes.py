"""POST /v1/payout-runs and POST /v1/periods/{p}/close release the matured holds 100 to a transaction
before their own transaction, as `revshare payout-run`, `revshare close` and the jobs do: other
writers' postings go on between them, and a request that fails after them keeps them (they are what
any later run or close would post first). The idempotency promises hold across those commits: the
key is claimed again after them (`api.idempotency.reclaim_after`).

Each interleaving is forced (`tests.interleaving`): another request made whole on a thread of its
own between two of this request's release transactions, with `holds.HOLDS_PER_TRANSACTION` at 1,
so that the first of two matured holds is released, and the second not yet, when it comes."""

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from api.idempotency import REPLAYED_HEADER
from api.routes import payouts as payout_routes
from api.routes import periods as period_routes
from ledger import holds, payouts, periods
from ledger.schema import payout_runs
from tests.api.books import Caller, errors_of, instant, money, unique
from tests.interleaving import Meanwhile, after_transactions

RUN = "/v1/payout-runs"
CLOSE = "/v1/periods/2026-01/close"
MID_RELEASE = 2  # transactions committed: the run's or close's check, then the first hold's release
ROUTE_MODULE = {RUN: payout_routes, CLOSE: period_routes}


def two_matured_holds(call) -> None:
    """p1 earns 50.00 and p2 60.00 on 2026-01-01; both accruals mature on 2026-01-31."""
    for partner_id, amount in (("p1", "250.00"), ("p2", "300.00")):
        call.event(unique("evt"), f"{partner_id}-customer", unique("inv"), amount, "2026-01-01")


def balance(call, partner_id: str, as_of: str | None = None) -> tuple[str, str]:
    """(pending, available) in USD, as of now unless `as_of` is given."""
    [usd] = call.read(f"/v1/partners/{partner_id}/balance" + (f"?as_of={as_of}" if as_of else ""))["balances"]
    return usd["pending"], usd["available"]


def another_server(call) -> Caller:
    """A caller through a test client of its own, for a request made on another thread."""
    return Caller(call.client.application.test_client(), call.keys)


def run_count(database) -> int:
    with database.transaction() as session:
        return session.execute(sa.select(sa.func.count()).select_from(payout_runs)).scalar_one()


@pytest.fixture
def one_hold_a_transaction(monkeypatch):
    monkeypatch.setattr(holds, "HOLDS_PER_TRANSACTION", 1)


@pytest.mark.parametrize("path", [RUN, CLOSE])
def test_another_servers_posting_is_made_between_two_release_transactions_of_a_run_or_close(
        fresh, monkeypatch, one_hold_a_transaction, path):
    two_matured_holds(fresh)
    other = another_server(fresh)
    posting = Meanwhile(lambda: other.post("/v1/revenue-events", {
        "id": unique("evt"), "type": "invoice_paid", "customer_id": "p1-customer", "invoice_id": unique("inv"),
        "amount": money("10.00"), "occurred_at": instant("2026-03-01")}, as_="billing"))
    after_transactions(monkeypatch, ROUTE_MODULE[path], MID_RELEASE, posting.start_and_wait)
    body = {"at": instant("2026-02-01")} if path == RUN else None
    assert fresh.post(path, body).status_code in (200, 201)
    assert posting.result().status_code == 201


@pytest.mark.parametrize("path, body", [(RUN, {"at": instant("2026-02-01")}), (RUN, {}), (CLOSE, None)],
                         ids=["run-at", "run-now", "close"])
def test_a_keyed_request_repeated_between_its_release_transactions_is_made_once_and_answers_as_its_repeat(
        fresh, database, monkeypatch, one_hold_a_transaction, path, body):
    two_matured_holds(fresh)
    headers = {"Idempotency-Key": unique("key")}
    other = another_server(fresh)
    repeat = Meanwhile(lambda: other.post(path, body, headers=headers))
    after_transactions(monkeypatch, ROUTE_MODULE[path], MID_RELEASE, repeat.start_and_wait)
    first = fresh.post(path, body, headers=headers)
    repeated = repeat.result()
    assert repeated.status_code in (200, 201) and REPLAYED_HEADER not in repeated.headers, repeated.get_json()
    assert first.headers.get(REPLAYED_HEADER) == "true"
    assert (first.status_code, first.get_json()) == (repeated.status_code, repeated.get_json())
    later = fresh.post(path, body, headers=headers)  # a retry after both: the same answer again
    assert (later.status_code, later.get_json()) == (repeated.status_code, repeated.get_json())
    if path == RUN:  # one run, which paid both partners (a run without `at` is at now: a second would show)
        assert run_count(database) == 1
        assert [(payout["run_id"], payout["amount"]) for payout in fresh.read("/v1/payouts")["items"]] == [
            (repeated.get_json()["id"], money("50.00")), (repeated.get_json()["id"], money("60.00"))]
    else:
        assert fresh.read("/v1/periods/2026-01")["close_hash"] == repeated.get_json()["close_hash"]
    assert [balance(fresh, partner) for partner in ("p1", "p2")] == (
        [("0.00", "0.00")] * 2 if path == RUN else [("0.00", "50.00"), ("0.00", "60.00")])


def test_a_run_with_its_key_and_another_body_made_between_its_release_transactions_makes_the_first_a_409_naming_at(
        fresh, database, monkeypatch, one_hold_a_transaction):
    two_matured_holds(fresh)
    headers = {"Idempotency-Key": unique("key")}
    other = another_server(fresh)
    changed = Meanwhile(lambda: other.post(RUN, {"at": instant("2026-02-02")}, headers=headers))
    after_transactions(monkeypatch, payout_routes, MID_RELEASE, changed.start_and_wait)
    first = fresh.post(RUN, {"at": instant("2026-02-01")}, headers=headers)
    assert changed.result().status_code == 201
    assert errors_of(first, 409) == {"at"} and "with a different request body" in first.get_json()["detail"]
    assert run_count(database) == 1 and changed.result().get_json()["at"] == instant("2026-02-02")


def test_a_keyless_run_at_the_same_instant_made_between_a_runs_release_transactions_is_the_one_run_both_answer(
        fresh, database, monkeypatch, one_hold_a_transaction):
    two_matured_holds(fresh)
    body = {"at": instant("2026-02-01")}
    other = another_server(fresh)
    duplicate = Meanwhile(lambda: other.post(RUN, body))
    after_transactions(monkeypatch, payout_routes, MID_RELEASE, duplicate.start_and_wait)
    first = fresh.post(RUN, body)
    made = duplicate.result()
    assert (made.status_code, first.status_code) == (201, 200)  # 200: the run already made at this instant
    assert first.get_json() == made.get_json() and run_count(database) == 1
    assert len(made.get_json()["payouts"]) == 2


def test_a_keyless_close_made_between_a_close_of_the_same_periods_release_transactions_leaves_it_a_409(
        fresh, monkeypatch, one_hold_a_transaction):
    two_matured_holds(fresh)
    other = another_server(fresh)
    duplicate = Meanwhile(lambda: other.post(CLOSE))
    after_transactions(monkeypatch, period_routes, MID_RELEASE, duplicate.start_and_wait)
    first = fresh.post(CLOSE)
    made = duplicate.result()
    assert made.status_code == 200 and first.status_code == 409 and "already closed" in first.get_json()["detail"]
    assert fresh.read("/v1/periods/2026-01")["close_hash"] == made.get_json()["close_hash"]


def unavailable(*_args, **_kwargs):
    raise OperationalError("SELECT", {}, Exception("the database restarted"))


@pytest.mark.parametrize("path", [RUN, CLOSE])
def test_a_run_or_close_that_fails_after_its_releases_keeps_them_changes_nothing_else_and_its_keyed_retry_makes_it(
        fresh, database, monkeypatch, one_hold_a_transaction, path):
    two_matured_holds(fresh)
    target = (payouts, "run_payouts") if path == RUN else (periods, "close_period")
    making = getattr(*target)
    monkeypatch.setattr(*target, unavailable)
    headers = {"Idempotency-Key": unique("key")}
    body = {"at": instant("2026-02-01")} if path == RUN else None
    assert fresh.post(path, body, headers=headers).status_code == 503
    assert [balance(fresh, partner) for partner in ("p1", "p2")] == [("0.00", "50.00"), ("0.00", "60.00")]
    assert run_count(database) == 0 and fresh.read("/v1/periods/2026-01")["status"] == "open"
    monkeypatch.setattr(*target, making)
    retried = fresh.post(path, body, headers=headers)
    assert retried.status_code == (201 if path == RUN else 200) and REPLAYED_HEADER not in retried.headers
    if path == RUN:
        assert [payout["amount"] for payout in retried.get_json()["payouts"]] == [money("50.00"), money("60.00")]


def test_a_run_releases_the_holds_matured_by_its_instant_and_not_those_matured_since(fresh, one_hold_a_transaction):
    two_matured_holds(fresh)
    fresh.event(unique("evt"), "p1-customer", unique("inv"), "100.00", "2026-01-20")  # 20.00, matures 02-19
    run = fresh.created(RUN, {"at": instant("2026-02-10")})
    assert [payout["amount"] for payout in run["payouts"]] == [money("50.00"), money("60.00")]
    assert balance(fresh, "p1") == ("20.00", "0.00")  # matured since the run's instant: still pending


def test_a_close_releases_the_holds_matured_in_its_period_and_not_those_matured_since(fresh, one_hold_a_transaction):
    two_matured_holds(fresh)
    fresh.event(unique("evt"), "p1-customer", unique("inv"), "100.00", "2026-01-20")  # 20.00, matures 02-19
    fresh.ok(CLOSE)
    assert balance(fresh, "p1") == ("20.00", "50.00") and balance(fresh, "p2") == ("0.00", "60.00")


@pytest.mark.parametrize("path, body", [(RUN, {"at": "2062-01-01T00:00:00Z"}), ("/v1/periods/2062-01/close", None)],
                         ids=["run", "close"])
def test_a_run_or_close_refused_before_its_releases_posts_none(fresh, path, body):
    two_matured_holds(fresh)
    response = fresh.post(path, body)
    assert response.status_code in (409, 422), response.get_json()
    assert [balance(fresh, partner) for partner in ("p1", "p2")] == [("50.00", "0.00"), ("60.00", "0.00")]


@pytest.mark.parametrize("path, body", [(RUN, {"at": instant("2026-02-01")}), (CLOSE, None)], ids=["run", "close"])
def test_a_backlog_of_releases_past_the_requests_budget_is_a_503_to_retry_and_each_retry_goes_further(
        fresh, database, monkeypatch, one_hold_a_transaction, path, body):
    # A run or close that had a backlog of matured holds to release ran past gunicorn's worker
    # timeout, which killed the worker midway: a 500. Past its budget (here none at all) the request
    # stops between two release transactions: a 503 to retry, what it released standing.
    from api import session as api_session

    monkeypatch.setattr(api_session, "WORK_BUDGET_S", 0.0)
    for partner_id, amount in (("p1", "250.00"), ("p2", "300.00"), ("p1", "100.00"), ("p2", "50.00")):
        fresh.event(unique("evt"), f"{partner_id}-customer", unique("inv"), amount, "2026-01-01")
    headers = {"Idempotency-Key": unique("key")}
    answers = []
    while len(answers) < 10:
        answers.append(fresh.post(path, body, headers=headers))
        if answers[-1].status_code != 503:
            break
    # One hold a transaction: each request releases one, and cannot tell the fourth was the last.
    assert [answer.status_code for answer in answers] == [503] * 4 + [201 if path == RUN else 200], [
        answer.get_json() for answer in answers]
    assert all(answer.headers["Retry-After"] == "1" for answer in answers[:-1])
    assert [answer.get_json()["detail"].split(" ")[0] for answer in answers[:-1]] == ["1"] * 4
    assert "retry the request to go on" in answers[0].get_json()["detail"]
    if path == RUN:
        assert [payout["amount"] for payout in answers[-1].get_json()["payouts"]] == [money("70.00")] * 2
        assert [balance(fresh, partner) for partner in ("p1", "p2")] == [("0.00", "0.00")] * 2
    else:
        assert [balance(fresh, partner) for partner in ("p1", "p2")] == [("0.00", "70.00")] * 2
    again = fresh.post(path, body, headers=headers)
    assert (again.status_code, again.get_json()) == (answers[-1].status_code, answers[-1].get_json())


@pytest.mark.parametrize("body", [{"at": instant("2026-02-01")}, {}], ids=["at", "now"])
def test_a_release_past_the_requests_budget_is_a_503_to_retry_and_each_retry_goes_further(
        fresh, monkeypatch, one_hold_a_transaction, body):
    """POST /v1/holds/release released a backlog in one transaction: past gunicorn's worker timeout a
    500, all of it rolled back, and its retries failed alike. It now releases as runs and closes do,
    and answers the releases it posted."""
    from api import session as api_session

    monkeypatch.setattr(api_session, "WORK_BUDGET_S", 0.0)
    for partner_id, amount in (("p1", "250.00"), ("p2", "300.00"), ("p1", "100.00"), ("p2", "50.00")):
        fresh.event(unique("evt"), f"{partner_id}-customer", unique("inv"), amount, "2026-01-01")
    headers = {"Idempotency-Key": unique("key")}
    answers = [fresh.post("/v1/holds/release", body, headers=headers) for _ in range(5)]
    assert [answer.status_code for answer in answers] == [503] * 4 + [200], [answer.get_json() for answer in answers]
    assert [answer.get_json()["detail"].split(" ")[0] for answer in answers[:-1]] == ["1"] * 4
    assert answers[-1].get_json()["released"] == 0  # the four before it released one each
    assert [balance(fresh, partner) for partner in ("p1", "p2")] == [("0.00", "70.00")] * 2
    again = fresh.post("/v1/holds/release", body, headers=headers)
    assert (again.status_code, again.get_json()) == (200, answers[-1].get_json())
    assert again.headers[REPLAYED_HEADER] == "true"
    monkeypatch.setattr(api_session, "WORK_BUDGET_S", 60.0)
    fresh.event(unique("evt"), "p1-customer", unique("inv"), "10.00", "2026-01-02")
    assert fresh.ok("/v1/holds/release", {"at": instant("2026-02-02")})["released"] == 1
