"""GET /v1/periods, GET /v1/periods/{YYYY-MM}, POST /v1/periods/{YYYY-MM}/close."""

import pytest

from ledger.instants import next_period, period_bounds_us, period_of
from ledger.journal import now_us
from tests.api.books import assert_not_a_cursor, crafted_cursor, errors_of, expect, next_cursor, unique


def book_january_and_february(call) -> None:
    for day in ("2026-01-10", "2026-02-10"):
        call.event(unique("evt"), "p1-customer", unique("inv"), "100.00", day)


def through_now(first: str) -> list[str]:
    """`first` and every period after it through the one that contains now."""
    periods, current = [], first
    while current <= period_of(now_us()):
        periods.append(current)
        current = next_period(current)
    return periods


def open_period(call, period: str) -> dict:
    """A listed open period: the single period's answer without its snapshot (which is null)."""
    body = call.read(f"/v1/periods/{period}")
    assert body["status"] == "open" and body.pop("snapshot") is None
    return body


def every_page(call, limit: int) -> list[dict]:
    items, body = [], call.read(f"/v1/periods?limit={limit}")
    items += body["items"]
    while body["next_cursor"] is not None:
        assert len(body["items"]) == limit
        body = call.read(f"/v1/periods?limit={limit}&cursor={body['next_cursor']}")
        items += body["items"]
    return items


def test_a_close_answers_its_record_and_the_closed_period_carries_its_snapshot(fresh):
    book_january_and_february(fresh)
    close = fresh.ok("/v1/periods/2026-01/close")
    assert close == {"period": "2026-01", "status": "closed", "starts_at": "2026-01-01T00:00:00Z",
                     "ends_at": "2026-02-01T00:00:00Z", "closed_at": close["closed_at"],
                     "close_hash": close["close_hash"], "prev_close_hash": "0" * 64, "transaction_count": 1,
                     "chain_head_id": 2, "chain_head_hash": fresh.read("/v1/transactions/2")["hash"]}
    assert close["closed_at"] > "2026-11" and len(close["close_hash"]) == 64
    body = fresh.read("/v1/periods/2026-01")
    assert {key: value for key, value in body.items() if key != "snapshot"} == close
    assert body["snapshot"] == [
        {"account": "expense:commission", "currency": "USD", "debit": "20.00", "credit": "0.00", "balance": "20.00"},
        {"account": "liability:partner:p1:pending", "currency": "USD", "debit": "0.00", "credit": "20.00",
         "balance": "-20.00"}]
    assert fresh.read("/v1/periods/2026-02") == {
        "period": "2026-02", "status": "open", "starts_at": "2026-02-01T00:00:00Z", "ends_at": "2026-03-01T00:00:00Z",
        "closed_at": None, "close_hash": None, "prev_close_hash": None, "transaction_count": None,
        "chain_head_id": None, "chain_head_hash": None, "snapshot": None}


def test_a_period_before_the_first_close_is_closed_without_a_close_of_its_own(fresh):
    book_january_and_february(fresh)
    assert fresh.read("/v1/periods/2025-12")["status"] == "open"
    fresh.ok("/v1/periods/2026-01/close")  # the chain starts at the first posting's period
    december = {"period": "2025-12", "status": "closed", "starts_at": "2025-12-01T00:00:00Z",
                "ends_at": "2026-01-01T00:00:00Z", "closed_at": None, "close_hash": None, "prev_close_hash": None,
                "transaction_count": None, "chain_head_id": None, "chain_head_hash": None, "snapshot": None}
    assert fresh.read("/v1/periods/2025-12") == december
    statement = fresh.read("/v1/partners/p1/statement?period=2025-12", as_="p1")
    assert (statement["period_status"], statement["close_hash"], statement["currencies"]) == ("closed", None, [])
    assert "2025-12" in expect(fresh.post("/v1/periods/2025-12/close"), 409)["detail"]
    assert fresh.read("/v1/periods/2026-02")["status"] == "open"


def test_the_list_holds_the_close_chain_oldest_first_then_the_open_periods_through_now(fresh):
    book_january_and_february(fresh)
    closes = [fresh.ok(f"/v1/periods/{period}/close") for period in ("2026-01", "2026-02")]
    first = fresh.read("/v1/periods?limit=1")
    second = fresh.read(f"/v1/periods?limit=1&cursor={first['next_cursor']}")
    assert first["items"] + second["items"] == closes and second["next_cursor"] is not None
    assert closes[1]["prev_close_hash"] == closes[0]["close_hash"]
    rest = fresh.read(f"/v1/periods?cursor={second['next_cursor']}")
    assert rest == {"items": [open_period(fresh, period) for period in through_now("2026-03")], "next_cursor": None}


def test_an_empty_book_lists_no_period_though_the_current_one_reads_as_open(fresh):
    assert fresh.read("/v1/periods") == {"items": [], "next_cursor": None}
    assert fresh.read(f"/v1/periods/{period_of(now_us())}")["status"] == "open"


def test_a_book_with_nothing_closed_lists_every_period_from_the_first_postings_as_open(fresh):
    book_january_and_february(fresh)
    listed = fresh.read("/v1/periods")
    assert listed == {"items": [open_period(fresh, period) for period in through_now("2026-01")], "next_cursor": None}


def test_a_book_with_january_closed_lists_january_closed_and_every_later_month_open(fresh):
    for day in ("2026-01-10", "2026-02-10", "2026-03-10", "2026-03-20"):
        fresh.event(unique("evt"), "p1-customer", unique("inv"), "100.00", day)
    january = fresh.ok("/v1/periods/2026-01/close")
    items = fresh.read("/v1/periods")["items"]
    assert [item["period"] for item in items] == through_now("2026-01")
    assert items[0] == january and january["transaction_count"] == 1
    assert items[1:] == [open_period(fresh, period) for period in through_now("2026-02")]
    assert items[1] == {"period": "2026-02", "status": "open", "starts_at": "2026-02-01T00:00:00Z",
                        "ends_at": "2026-03-01T00:00:00Z", "closed_at": None, "close_hash": None,
                        "prev_close_hash": None, "transaction_count": None, "chain_head_id": None,
                        "chain_head_hash": None}
    # Open periods carry no count, in the list as in the single period: a close counts once, for its hash.
    assert {item["transaction_count"] for item in items[1:]} == {None}
    assert "2025-12" not in {item["period"] for item in items}  # before the chain: closed, with no close


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_pages_across_the_last_close_give_every_period_once_in_order(fresh, limit):
    for day in ("2026-01-10", "2026-02-10", "2026-03-10"):
        fresh.event(unique("evt"), "p1-customer", unique("inv"), "100.00", day)
    for period in ("2026-01", "2026-02"):
        fresh.ok(f"/v1/periods/{period}/close")
    whole = fresh.read("/v1/periods?limit=1000")["items"]
    assert [item["period"] for item in whole] == through_now("2026-01")
    assert [item["status"] for item in whole[:3]] == ["closed", "closed", "open"]
    assert every_page(fresh, limit) == whole


def test_a_period_closes_once_after_the_earlier_ones_with_postings_and_a_keyed_retry_replays(fresh):
    book_january_and_february(fresh)
    february = fresh.post("/v1/periods/2026-02/close")
    assert errors_of(february, 409) == set() and "2026-01" in february.get_json()["detail"]
    key = {"Idempotency-Key": unique("close")}
    first = fresh.post("/v1/periods/2026-01/close", headers=key)
    replayed = fresh.post("/v1/periods/2026-01/close", headers=key)
    assert expect(replayed, 200) == expect(first, 200) and replayed.headers["Idempotent-Replayed"] == "true"
    again = fresh.post("/v1/periods/2026-01/close")
    assert expect(again, 409)["detail"] == "period 2026-01 is already closed"


def test_a_later_close_is_refused_while_a_hold_matures_in_a_month_between_and_posts_nothing(fresh):
    fresh.event(unique("evt"), "p1-customer", unique("inv"), "100.00", "2026-01-20")  # matures 2026-02-19
    fresh.ok("/v1/periods/2026-01/close")
    march = fresh.post("/v1/periods/2026-03/close")
    assert errors_of(march, 409) == set() and "period 2026-02 " in march.get_json()["detail"]
    assert [item["kind"] for item in fresh.read("/v1/transactions")["items"]] == ["accrual"]  # no release left
    assert fresh.read("/v1/periods/2026-02")["status"] == "open"
    assert fresh.ok("/v1/periods/2026-02/close")["transaction_count"] == 1  # the release, made by this close
    assert fresh.ok("/v1/periods/2026-03/close")["transaction_count"] == 0


def test_a_period_that_has_not_ended_cannot_close(shared):
    current = period_of(now_us())
    response = shared.client.post(f"/v1/periods/{current}/close",
                                  headers={"Authorization": f"Bearer {shared.keys.finance}"})
    assert errors_of(response, 409) == set() and "has not ended" in response.get_json()["detail"]


def test_a_close_by_a_server_whose_clock_is_ahead_of_the_databases_is_a_409_not_a_500(fresh, skewed_clock):
    period = period_of(now_us() + 60_000_000)  # a period whose end is a minute away at least
    ends_us = period_bounds_us(period)[1]
    skewed_clock.offset_us = ends_us + 30_000_000 - now_us()  # 30 s past its end here, not yet for the database
    response = fresh.post(f"/v1/periods/{period}/close")
    assert errors_of(response, 409) == set() and "database's clock" in response.get_json()["detail"]
    skewed_clock.offset_us = 0
    assert fresh.read(f"/v1/periods/{period}")["status"] == "open"


def test_a_close_by_a_server_more_than_five_minutes_ahead_of_the_database_is_a_409_not_a_500(fresh, skewed_clock):
    """The close is dated by this server's clock, and migration 0034 refuses a `closed_at` more than
    five minutes ahead of the database's: a period long ended by both clocks is refused as a 409."""
    skewed_clock.offset_us = 10 * 60 * 1_000_000
    response = fresh.post("/v1/periods/2026-01/close")
    assert errors_of(response, 409) == set() and "database's" in response.get_json()["detail"]
    skewed_clock.offset_us = 0
    assert fresh.read("/v1/periods/2026-01")["status"] == "open"
    assert fresh.ok("/v1/periods/2026-01/close")["status"] == "closed"


def test_a_posting_dated_in_a_closed_period_lands_in_the_first_open_one(fresh):
    book_january_and_february(fresh)
    fresh.ok("/v1/periods/2026-01/close")
    late = fresh.event(unique("evt"), "p1-customer", unique("inv"), "50.00", "2026-01-20")
    transaction = fresh.read(f"/v1/transactions/{late['transaction_ids'][0]}")
    assert (transaction["effective_at"], transaction["original_effective_at"]) == (
        "2026-02-01T00:00:00Z", "2026-01-20T00:00:00Z")


@pytest.mark.parametrize("period", ["2026-13", "2026-1x", "26-01", "2026-001"])
def test_a_path_that_is_not_a_period_is_a_404(shared, period):
    headers = {"Authorization": f"Bearer {shared.keys.finance}"}
    assert shared.client.get(f"/v1/periods/{period}", headers=headers).status_code == 404
    assert shared.client.post(f"/v1/periods/{period}/close", headers=headers).status_code == 404


@pytest.mark.parametrize("period, why", [("2026-13", "must be a period YYYY-MM"),
                                         ("0000-01", "must lie between 1970 and 9800")])
def test_a_404_for_a_path_that_is_not_a_period_says_why(shared, period, why):
    headers = {"Authorization": f"Bearer {shared.keys.finance}"}
    for answer in (shared.client.get(f"/v1/periods/{period}", headers=headers),
                   shared.client.post(f"/v1/periods/{period}/close", headers=headers)):
        assert answer.status_code == 404
        assert answer.get_json()["detail"] == f"period '{period}' not found: it {why}"


def test_a_bad_period_list_query_is_a_422_naming_it(shared):
    headers = {"Authorization": f"Bearer {shared.keys.finance}"}
    assert errors_of(shared.client.get("/v1/periods?cursor=abc", headers=headers)) == {"cursor"}
    for limit in ("0", "1001", "x"):
        assert errors_of(shared.client.get(f"/v1/periods?limit={limit}", headers=headers)) == {"limit"}


def test_a_cursor_the_period_list_did_not_hand_out_is_a_422_naming_it(shared):
    """Another list's cursor, and one whose key is not a period (crafted, or made before cursors
    named their list), would have listed the periods after a key no page ended on."""
    foreign = [next_cursor(shared, listing) for listing in ("/v1/partners", "/v1/transactions")]
    crafted = [crafted_cursor(content) for content in (
        "after-key:2026-1", "after-key:2026-01", "periods:after:2026-1", "periods:after:2026-13",
        "periods:after:2026-01x", "periods:after:1969-12", "periods:after:p1", "partners:after:2026-01")]
    for cursor in (*foreign, *crafted):
        assert_not_a_cursor(shared, "/v1/periods", cursor)


def test_the_period_list_is_finances_a_partner_finds_nothing_and_billing_is_refused(shared):
    for key, status in ((shared.keys.p1, 404), (shared.keys.billing, 403)):
        assert shared.client.get("/v1/periods", headers={"Authorization": f"Bearer {key}"}).status_code == status


def test_a_close_with_a_body_field_is_a_422(shared):
    response = shared.client.post("/v1/periods/2026-01/close", json={"force": True},
                                  headers={"Authorization": f"Bearer {shared.keys.finance}"})
    assert errors_of(response) == {"force"}
