"""POST /v1/revenue-events and POST /v1/revenue-events/batch: exactly once by event id, refusals
naming fields, batches applied or refused event by event, concurrent duplicates applied once."""

import http.client
import json
import threading
from datetime import datetime, timedelta, timezone
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from api import session as api_session
from api.routes import revenue as revenue_routes
from ledger import holds, revenue
from ledger.errors import OutOfRange
from ledger.instants import parse_instant
from ledger.keys import create_key
from ledger.revenue import RevenueEvent
from ledger.schema import journal_transactions, revenue_events
from tests.api.books import errors_of, event_body, expect, money, plan_body, unique
from tests.api.conftest import enroll, make_app, make_keys
from tests.program import at, seed


@pytest.fixture
def acme(call):
    """A new partner on the 20% plan with a new customer attributed from 2026-01-01: (call, customer)."""
    customer = unique("cust")
    call.attribute(customer, call.partner())
    return call, customer


def transactions_of_event(database, event_id: str) -> int:
    with database.reader() as session:
        return session.execute(sa.select(sa.func.count()).where(
            journal_transactions.c.event_id == event_id)).scalar_one()


def test_a_paid_invoice_answers_201_with_its_commission_as_money_and_its_transactions(acme):
    call, customer = acme
    event_id = unique("evt")
    response = call.post("/v1/revenue-events", event_body(event_id, customer, unique("inv"), "123.45", "2026-01-20"),
                         as_="billing")
    body = expect(response, 201)
    partner_id = call.read(f"/v1/customers/{customer}")["attributions"][0]["partner_id"]
    assert body == {"id": event_id, "status": "posted", "transaction_ids": body["transaction_ids"],
                    "commissions": [{"partner_id": partner_id, "kind": "accrual", "amount": money("24.69")}]}
    assert "Idempotent-Replayed" not in response.headers
    [transaction_id] = body["transaction_ids"]
    transaction = call.read(f"/v1/transactions/{transaction_id}")
    assert (transaction["kind"], transaction["event_id"], transaction["partner_id"]) == (
        "accrual", event_id, partner_id)


def test_a_refund_claws_back_with_a_negative_amount(acme):
    call, customer = acme
    invoice = unique("inv")
    call.event(unique("evt"), customer, invoice, "500.00", "2026-01-20")
    refund = call.event(unique("evt"), customer, invoice, "200.00", "2026-01-25", kind="refund")
    assert [(c["kind"], c["amount"]) for c in refund["commissions"]] == [("clawback", money("-40.00"))]


def test_an_event_dated_with_more_than_six_fractional_digits_is_posted_at_its_microsecond(acme):
    # RFC 3339 allows any number of fractional digits: .NET's round-trip format writes seven, Go's
    # RFC3339Nano up to nine. The journal keeps microseconds; the digits beyond are floored.
    call, customer = acme
    event = event_body(unique("evt"), customer, unique("inv"), "10.00", "2026-01-20T09:00:00.1234567+09:00")
    body = expect(call.post("/v1/revenue-events", event, as_="billing"), 201)
    [transaction_id] = body["transaction_ids"]
    assert call.read(f"/v1/transactions/{transaction_id}")["effective_at"] == "2026-01-20T00:00:00.123456Z"
    at_the_microsecond = {**event, "occurred_at": "2026-01-20T00:00:00.123456Z"}
    replay = call.post("/v1/revenue-events", at_the_microsecond, as_="billing")
    assert (replay.status_code, replay.headers.get("Idempotent-Replayed")) == (201, "true")


def test_revenue_of_a_customer_without_attribution_is_unattributed(call):
    body = call.event(unique("evt"), unique("nobody"), unique("inv"), "10.00", "2026-01-20")
    assert (body["status"], body["commissions"], body["transaction_ids"]) == ("unattributed", [], [])


def test_a_replay_returns_the_original_status_and_body_marked_replayed(acme, scratch):
    call, customer = acme
    event = event_body(unique("evt"), customer, unique("inv"), "500.00", "2026-01-20")
    first = call.post("/v1/revenue-events", event, as_="billing")
    spelt_otherwise = json.dumps(dict(reversed(list(event.items()))), indent=4)
    again = call.client.post("/v1/revenue-events", data=spelt_otherwise, content_type="application/json",
                             headers=call.headers("billing"))
    assert again.status_code == first.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert transactions_of_event(scratch.database, event["id"]) == 1


def stored_events(database, event_id: str) -> int:
    with database.reader() as session:
        return session.execute(sa.select(sa.func.count()).where(revenue_events.c.id == event_id)).scalar_one()


@pytest.mark.parametrize("path, answer", [("/v1/revenue-events", "render_outcome"),
                                          ("/v1/revenue-events/batch", "_batch_result")], ids=["single", "batch"])
def test_an_event_commits_before_its_answer_is_built_and_a_failed_answer_replays(acme, scratch, monkeypatch,
                                                                                 path, answer):
    """The routes commit once the outcome is decided (`commit_now`), so no lock on the journal is
    held while the answer is built; an answer that fails after the commit is a 500, and the retry
    replays the event."""
    call, customer = acme
    event = event_body(unique("evt"), customer, unique("inv"), "500.00", "2026-01-20")
    body = event if path.endswith("events") else {"events": [event]}
    seen_by_another_transaction = []

    def failing(*_args):
        seen_by_another_transaction.append(stored_events(scratch.database, event["id"]))
        raise RuntimeError("the answer could not be built")

    monkeypatch.setattr(revenue_routes, answer, failing)
    assert call.post(path, body, as_="billing").status_code == 500
    assert seen_by_another_transaction == [1]
    monkeypatch.undo()
    again = call.post(path, body, as_="billing")
    if path.endswith("events"):
        assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    else:
        assert expect(again, 200)["results"][0]["replayed"] is True
    assert stored_events(scratch.database, event["id"]) == 1
    assert transactions_of_event(scratch.database, event["id"]) == 1


def test_a_replay_of_an_unattributed_event_replays_its_status(call):
    event = event_body(unique("evt"), unique("nobody"), unique("inv"), "10.00", "2026-01-20")
    first = expect(call.post("/v1/revenue-events", event, as_="billing"), 201)
    again = call.post("/v1/revenue-events", event, as_="billing")
    assert (again.status_code, again.headers["Idempotent-Replayed"], again.get_json()) == (201, "true", first)


def test_the_same_id_with_other_content_is_a_409_naming_the_differing_fields(acme):
    call, customer = acme
    event = event_body(unique("evt"), customer, unique("inv"), "500.00", "2026-01-20")
    call.created("/v1/revenue-events", event, as_="billing")
    changed = {**event, "amount": money("501.00"), "occurred_at": "2026-01-21T00:00:00Z"}
    response = call.post("/v1/revenue-events", changed, as_="billing")
    assert errors_of(response, 409) == {"amount", "occurred_at"}
    assert response.get_json()["type"] == "urn:revshare:problem:idempotency-conflict"


@pytest.mark.parametrize("change, fields", [
    ({"amount": 500}, {"amount"}),
    ({"amount": money("5.001")}, {"amount"}),
    ({"amount": money("0.00")}, {"amount"}),
    ({"amount": money("5.00", "XXY")}, {"amount"}),
    ({"occurred_at": "2026-01-20T00:00:00"}, {"occurred_at"}),
    ({"type": "invoice_voided"}, {"type"}),
    ({"id": "has space", "customer_id": ""}, {"id", "customer_id"}),
    ({"color": "red"}, {"color"}),
], ids=["number", "decimals", "zero", "currency", "no-offset", "type", "ids", "unknown"])
def test_an_invalid_event_is_a_422_naming_each_bad_field(shared, change, fields):
    event = {**event_body("e-invalid", "c", "i", "5.00", "2026-01-20"), **change}
    response = shared.client.post("/v1/revenue-events", json=event, headers={
        "Authorization": f"Bearer {shared.keys.billing}"})
    assert errors_of(response) == fields


def test_a_missing_field_is_a_422_naming_it(shared):
    event = event_body("e-missing", "c", "i", "5.00", "2026-01-20")
    del event["occurred_at"]
    response = shared.client.post("/v1/revenue-events", json=event,
                                  headers={"Authorization": f"Bearer {shared.keys.billing}"})
    assert errors_of(response) == {"occurred_at"}


def test_a_refund_beyond_the_paid_amount_is_a_422_and_changes_nothing(acme, scratch):
    call, customer = acme
    invoice, refund_id = unique("inv"), unique("evt")
    call.event(unique("evt"), customer, invoice, "100.00", "2026-01-20")
    response = call.post("/v1/revenue-events", event_body(refund_id, customer, invoice, "100.01", "2026-01-21",
                                                          kind="refund"), as_="billing")
    assert errors_of(response) == {"amount.amount"}
    assert transactions_of_event(scratch.database, refund_id) == 0
    # Refused events are not stored: the same id may come again, corrected.
    fixed = call.event(refund_id, customer, invoice, "100.00", "2026-01-21", kind="refund")
    assert fixed["commissions"][0]["amount"] == money("-20.00")


def test_a_second_payment_of_an_invoice_is_a_409_naming_it(acme):
    call, customer = acme
    invoice = unique("inv")
    call.event(unique("evt"), customer, invoice, "100.00", "2026-01-20")
    response = call.post("/v1/revenue-events", event_body(unique("evt"), customer, invoice, "100.00", "2026-01-21"),
                         as_="billing")
    assert errors_of(response, 409) == {"invoice_id"}


def test_a_refund_of_an_unknown_invoice_is_a_422_naming_it(call):
    response = call.post("/v1/revenue-events", event_body(unique("evt"), "c", unique("inv"), "1.00", "2026-01-21",
                                                          kind="refund"), as_="billing")
    assert errors_of(response) == {"invoice_id"}


def batch(call, events, client=None):
    client = client or call.client
    return client.post("/v1/revenue-events/batch", json={"events": events}, headers=call.headers("billing"))


def test_a_batch_applies_or_refuses_each_event_on_its_own(acme, scratch):
    call, customer = acme
    known = event_body(unique("evt"), customer, unique("inv"), "100.00", "2026-01-20")
    first = call.created("/v1/revenue-events", known, as_="billing")
    fresh_invoice = unique("inv")
    events = [
        event_body(unique("evt"), customer, fresh_invoice, "50.00", "2026-01-22"),         # applied
        known,                                                                              # replayed
        {**known, "amount": money("99.00")},                                                # conflicting
        {**event_body(unique("evt"), customer, unique("inv"), "1.00", "2026-01-22"), "amount": 1},  # invalid
        "not an event",                                                                     # invalid
        event_body(unique("evt"), customer, fresh_invoice, "60.00", "2026-01-23", kind="refund"),  # refused
        event_body(unique("evt"), unique("nobody"), unique("inv"), "5.00", "2026-01-22"),  # unattributed
    ]
    results = expect(batch(call, events), 200)["results"]
    assert [(r["id"], r["status"], r["http_status"], r.get("replayed", False)) for r in results] == [
        (events[0]["id"], "posted", 201, False),
        (known["id"], first["status"], 201, True),
        (known["id"], "refused", 409, False),
        (events[3]["id"], "refused", 422, False),
        (None, "refused", 422, False),
        (events[5]["id"], "refused", 422, False),
        (events[6]["id"], "unattributed", 201, False),
    ]
    assert [set(r["error"]["errors"]) if "error" in r else None for r in results] == [
        None, None, {"amount"}, {"amount"}, {"body"}, {"amount.amount"}, None]
    assert all(r["error"]["status"] == r["http_status"] and r["error"]["type"].startswith("urn:revshare:problem:")
               for r in results if "error" in r)
    assert transactions_of_event(scratch.database, events[0]["id"]) == 1
    assert transactions_of_event(scratch.database, events[5]["id"]) == 0


def test_an_amount_past_a_64_bit_integer_of_minor_units_is_refused_alone_in_its_batch(acme, scratch):
    # 15 integer digits in a currency of four decimals reach 10^19 minor units: more than a BIGINT holds.
    call, customer = acme
    events = [event_body(unique("evt"), customer, unique("inv"), "10.00", "2026-01-20"),
              event_body(unique("evt"), customer, unique("inv"), "922337203685477.5808", "2026-01-20", currency="CLF")]
    results = expect(batch(call, events), 200)["results"]
    assert [(r["status"], r["http_status"]) for r in results] == [("posted", 201), ("refused", 422)]
    assert set(results[1]["error"]["errors"]) == {"amount"}
    assert transactions_of_event(scratch.database, events[0]["id"]) == 1
    alone = call.post("/v1/revenue-events", {**events[1], "id": unique("evt")}, as_="billing")
    assert errors_of(alone) == {"amount"}


def test_an_event_dated_in_the_future_is_a_422_naming_occurred_at_past_five_minutes_of_clock_skew(acme, scratch):
    call, customer = acme
    now = datetime.now(timezone.utc)
    late = {**event_body(unique("evt"), customer, unique("inv"), "10.00", "2026-01-20"),
            "occurred_at": (now + timedelta(minutes=6)).isoformat()}
    assert errors_of(call.post("/v1/revenue-events", late, as_="billing")) == {"occurred_at"}
    assert transactions_of_event(scratch.database, late["id"]) == 0
    skewed = {**late, "id": unique("evt"), "occurred_at": (now + timedelta(minutes=1)).isoformat()}
    assert call.created("/v1/revenue-events", skewed, as_="billing")["status"] == "posted"


def test_a_refund_that_would_claw_at_an_instant_set_by_a_server_over_five_minutes_ahead_is_a_409_not_a_500(
        call, scratch, skewed_clock):
    # A server 10 minutes ahead posts a refund at its own instant. A refund dated before it, posted
    # by a server with the right time, makes the invoice wholly refunded, and the CPA is clawed back
    # at the completion, the later refund's instant: over five minutes after its recording, which the
    # journal refuses. The refund is refused whole, and a retry once the clocks agree posts it.
    plan_id = unique("plan")
    call.created("/v1/plans", plan_body(plan_id, cpa=[money("5.00")]))
    customer = unique("cust")
    call.attribute(customer, call.partner(plan_id=plan_id))
    now = datetime.now(timezone.utc)
    invoice = unique("inv")
    call.event(unique("evt"), customer, invoice, "100.00", (now - timedelta(days=10)).isoformat())
    skewed_clock.offset_us = 10 * 60 * 1_000_000
    call.event(unique("evt"), customer, invoice, "50.00", (now + timedelta(minutes=9)).isoformat(), kind="refund")
    skewed_clock.offset_us = 0
    refund = event_body(unique("evt"), customer, invoice, "50.00", (now - timedelta(days=1)).isoformat(), kind="refund")
    alone = call.post("/v1/revenue-events", refund, as_="billing")
    assert alone.status_code == 409 and "more than five minutes ahead of this server's clock" in (
        alone.get_json()["detail"]), alone.data
    assert transactions_of_event(scratch.database, refund["id"]) == 0
    paid = event_body(unique("evt"), customer, unique("inv"), "10.00", (now - timedelta(days=1)).isoformat())
    results = expect(call.post("/v1/revenue-events/batch", {"events": [paid, refund]}, as_="billing"), 200)["results"]
    assert [(r["status"], r["http_status"]) for r in results] == [("posted", 201), ("refused", 409)]
    assert "more than five minutes ahead" in results[1]["error"]["detail"]
    assert (transactions_of_event(scratch.database, paid["id"]), transactions_of_event(scratch.database, refund["id"])
            ) == (1, 0)
    skewed_clock.offset_us = 10 * 60 * 1_000_000  # the retry, on the server that set the instant
    results = expect(call.post("/v1/revenue-events/batch", {"events": [paid, refund]}, as_="billing"), 200)["results"]
    assert [(r["status"], r["http_status"], r.get("replayed")) for r in results] == [
        ("posted", 201, True), ("posted", 201, None)]
    skewed_clock.offset_us = 0
    assert transactions_of_event(scratch.database, refund["id"]) == 2  # the share, and the CPA at the completion


def test_the_database_refuses_an_event_dated_past_five_minutes_after_it_was_recorded(database):
    row = {"i": "raw", "t": "invoice_paid", "c": "c1", "n": "inv", "k": "USD", "a": 100,
           "o": 1_000 + 5 * 60 * 1_000_000 + 1, "r": 1_000, "h": "0" * 64, "s": "unattributed"}
    statement = sa.text("INSERT INTO revenue_events (id, type, customer_id, invoice_id, currency, amount_minor,"
                        " occurred_at_us, recorded_at_us, request_hash, status) VALUES (:i, :t, :c, :n, :k, :a, :o, :r,"
                        " :h, :s)")
    with pytest.raises(sa.exc.DBAPIError, match="in_time|at most five minutes after"):
        with database.engine.begin() as connection:
            connection.execute(statement, row)
    from tests.integration.conftest import chain_due

    with database.engine.begin() as connection:  # at the limit: accepted (and chained: migration 0056)
        connection.execute(statement, {**row, "o": row["o"] - 1})
        chain_due(connection)


def test_the_driver_refuses_an_amount_past_a_64_bit_integer_as_out_of_range(database):
    # Past the parser (which refuses it first): sqlite3 cannot bind it, PostgreSQL cannot store it.
    enroll(database)
    event = RevenueEvent("huge", "invoice_paid", "p1-customer", "huge-inv", "USD", 2**63,
                         parse_instant("2026-01-20T00:00:00Z", field="occurred_at"))
    with pytest.raises(OutOfRange) as refused, database.transaction() as session:
        revenue.ingest(session, [event])
    assert set(refused.value.fields) == {"amount"}
    with database.reader() as session:
        assert session.execute(sa.select(sa.func.count()).select_from(revenue_events)).scalar_one() == 0


def test_an_event_that_would_take_a_total_out_of_range_is_refused_alone_in_its_batch(fresh, database):
    # A 100% plan: each BHD 999,999,999,999,999.999 accrues about 1e18 fils, and 9 of them fit in
    # the partner's pending account (2^63 - 1 is about 9.22e18); the 10th does not, nor the 11th.
    fresh.created("/v1/plans", plan_body("all", rates=[{"from_month": 1, "rate": "1"}]))
    fresh.partner("whale", plan_id="all")
    fresh.attribute("whale-customer", "whale")
    events = [event_body(f"big-{n}", "whale-customer", f"big-{n}", "999999999999999.999", "2026-01-20",
                         currency="BHD") for n in range(11)]
    results = expect(fresh.post("/v1/revenue-events/batch", {"events": events}, as_="billing"), 200)["results"]
    assert [r["http_status"] for r in results] == [201] * 9 + [422] * 2
    assert {frozenset(r["error"]["errors"]) for r in results[9:]} == {frozenset({"amount"})}
    with database.reader() as session:
        assert session.execute(sa.select(sa.func.count()).select_from(revenue_events)).scalar_one() == 9
    again = expect(fresh.post("/v1/revenue-events/batch", {"events": events[:9]}, as_="billing"), 200)["results"]
    assert all(r.get("replayed") for r in again)


@pytest.fixture
def roomy(database):
    """As `fresh`, taking bodies of up to 1 MiB: batches of hundreds of events."""
    from tests.api.books import Caller

    enroll(database)
    return Caller(make_app(database, 2**20).test_client(), make_keys(database))


def whale_batch(call, small: int) -> list[dict]:
    """`small` payments of 10.000 BHD with 11 of 999,999,999,999,999.999 among them, spread evenly:
    the 10th and 11th of those would take the whale's pending total out of range (as above)."""
    call.created("/v1/plans", plan_body("all", rates=[{"from_month": 1, "rate": "1"}]))
    call.partner("whale", plan_id="all")
    call.attribute("whale-customer", "whale")
    events = [event_body(f"small-{n}", "whale-customer", f"small-{n}", "10.000", "2026-01-20", currency="BHD")
              for n in range(small)]
    for n in range(11):
        events.insert((n + 1) * len(events) // 12, event_body(f"big-{n}", "whale-customer", f"big-{n}",
                                                              "999999999999999.999", "2026-01-20", currency="BHD"))
    return events


def counting_transactions(monkeypatch) -> list[int]:
    """The batch route's transactions of its own (`ingest_apart`'s parts), counted."""
    counted = []
    separate = revenue_routes.separate_transaction

    def counting():
        counted.append(1)
        return separate()

    monkeypatch.setattr(revenue_routes, "separate_transaction", counting)
    return counted


def test_a_batch_failed_by_events_out_of_range_is_applied_in_halves_not_one_transaction_an_event(
        roomy, database, monkeypatch):
    # One transaction an event made a batch of 10,000 with five such events take 10-30 s, and each
    # retry too (its replays one a transaction as well), past gunicorn's worker timeout: a 500.
    events = whale_batch(roomy, 400)
    counted = counting_transactions(monkeypatch)
    results = expect(roomy.post("/v1/revenue-events/batch", {"events": events}, as_="billing"), 200)["results"]
    refused = [r["id"] for r in results if r["http_status"] != 201]
    assert refused == ["big-9", "big-10"] and [r["id"] for r in results] == [e["id"] for e in events]
    assert {r["error"]["status"] for r in results if r["id"] in refused} == {422}
    assert 2 <= len(counted) <= 40, len(counted)  # halves down to the two events: 411 one an event
    counted.clear()
    again = expect(roomy.post("/v1/revenue-events/batch", {"events": events}, as_="billing"), 200)["results"]
    assert [(r["id"], r.get("replayed")) for r in again if r["http_status"] == 201] == [
        (r["id"], True) for r in results if r["http_status"] == 201]
    assert [r["id"] for r in again if r["http_status"] != 201] == refused and len(counted) <= 40
    with database.reader() as session:
        assert session.execute(sa.select(sa.func.count()).select_from(revenue_events)).scalar_one() == 409


def test_a_batch_applied_in_parts_stops_at_its_request_s_lock_deadline_a_503_and_sent_again_goes_on(
        roomy, database, monkeypatch):
    # Its parts each waited for the journal lock, with no bound on them all: in a busy database the
    # request ran past gunicorn's 30-second worker timeout, a 500, part of the batch committed. With no
    # time left (the deadline at the request's start), the first part is applied and no other.
    events = whale_batch(roomy, 400)
    monkeypatch.setattr(api_session, "REQUEST_LOCKS_S", 0.0)
    stopped = roomy.post("/v1/revenue-events/batch", {"events": events}, as_="billing")
    body = stopped.get_json()
    assert stopped.status_code == 503 and stopped.headers["Retry-After"] == "1", body
    assert body["title"] == "Unfinished" and "send the batch again to go on" in body["detail"], body
    decided = int(body["detail"].split("first ")[1].split(" ")[0])
    with database.reader() as session:
        stored = session.execute(sa.select(sa.func.count()).select_from(revenue_events)).scalar_one()
    assert 0 < stored <= decided < len(events)
    monkeypatch.undo()
    results = expect(roomy.post("/v1/revenue-events/batch", {"events": events}, as_="billing"), 200)["results"]
    assert [r["id"] for r in results if r["http_status"] != 201] == ["big-9", "big-10"]
    assert sum(1 for r in results if r.get("replayed")) == stored
    with database.reader() as session:
        assert session.execute(sa.select(sa.func.count()).select_from(revenue_events)).scalar_one() == 409


def test_an_event_whose_total_would_be_out_of_range_is_a_422_of_the_one_invalid_input_type(fresh):
    # Every 422 of bad input has one problem type (README, Errors): the out-of-range amount too, alone
    # and in a batch, not a type of its own that a client switching on `type` would not know.
    fresh.created("/v1/plans", plan_body("all", rates=[{"from_month": 1, "rate": "1"}]))
    fresh.partner("whale", plan_id="all")
    fresh.attribute("whale-customer", "whale")
    events = [event_body(f"big-{n}", "whale-customer", f"big-{n}", "999999999999999.999", "2026-01-20",
                         currency="BHD") for n in range(10)]
    results = expect(fresh.post("/v1/revenue-events/batch", {"events": events[:9]}, as_="billing"), 200)["results"]
    assert [r["http_status"] for r in results] == [201] * 9
    [refused] = expect(fresh.post("/v1/revenue-events/batch", {"events": events[9:]}, as_="billing"), 200)["results"]
    assert refused["error"]["type"] == "urn:revshare:problem:invalid-input"
    alone = fresh.post("/v1/revenue-events", events[9], as_="billing")
    assert errors_of(alone, 422) == {"amount"}
    assert alone.get_json()["type"] == "urn:revshare:problem:invalid-input"


def test_a_batch_sent_again_is_replayed_event_by_event(acme, scratch):
    call, customer = acme
    events = [event_body(unique("evt"), customer, unique("inv"), f"{10 + i}.00", "2026-01-20") for i in range(3)]
    first = expect(batch(call, events), 200)["results"]
    again = expect(batch(call, events), 200)["results"]
    assert [r["http_status"] for r in first] == [201] * 3 and not any("replayed" in r for r in first)
    assert again == [{**r, "replayed": True} for r in first]
    assert [transactions_of_event(scratch.database, e["id"]) for e in events] == [1, 1, 1]


def test_an_event_twice_in_one_batch_applies_once_and_a_changed_twin_is_refused(acme, scratch):
    call, customer = acme
    event = event_body(unique("evt"), customer, unique("inv"), "10.00", "2026-01-20")
    results = expect(batch(call, [event, event, {**event, "occurred_at": "2026-01-21T00:00:00Z"}]), 200)["results"]
    assert [(r["status"], r["http_status"], r.get("replayed", False)) for r in results] == [
        ("posted", 201, False), ("posted", 201, True), ("refused", 409, False)]
    assert transactions_of_event(scratch.database, event["id"]) == 1


def test_an_empty_batch_answers_no_results(shared):
    response = shared.client.post("/v1/revenue-events/batch", json={"events": []},
                                  headers={"Authorization": f"Bearer {shared.keys.billing}"})
    assert expect(response, 200) == {"results": []}


@pytest.mark.parametrize("body", [{}, {"events": "all"}, {"events": [], "extra": 1}], ids=["missing", "type", "extra"])
def test_a_malformed_batch_is_a_422_naming_the_field(shared, body):
    response = shared.client.post("/v1/revenue-events/batch", json=body,
                                  headers={"Authorization": f"Bearer {shared.keys.billing}"})
    assert errors_of(response) == ({"extra"} if "extra" in body else {"events"})


def test_a_batch_of_more_than_10000_events_is_a_422_naming_events(shared):
    response = shared.roomy.post("/v1/revenue-events/batch", json={"events": [{}] * 10_001},
                                 headers={"Authorization": f"Bearer {shared.keys.billing}"})
    assert errors_of(response) == {"events"}


def test_a_batch_of_10000_events_is_accepted(shared):
    response = shared.roomy.post("/v1/revenue-events/batch", json={"events": [{}] * 10_000},
                                 headers={"Authorization": f"Bearer {shared.keys.billing}"})
    results = expect(response, 200)["results"]
    assert len(results) == 10_000 and {r["http_status"] for r in results} == {422}


@pytest.fixture(scope="module")
def server(scratch):
    """The app behind a real threaded HTTP server on a free loopback port."""
    httpd = make_server("127.0.0.1", 0, make_app(scratch.database, 2**20), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_port
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def post_over_http(port: int, path: str, key: str, body: dict) -> tuple[int, dict, bool]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", path, body=json.dumps(body), headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), response.getheader("Idempotent-Replayed") == "true"
    finally:
        connection.close()


CONCURRENT_REQUESTS = 6


def together(port: int, path: str, key: str, body: dict) -> list[tuple[int, dict, bool]]:
    start = threading.Barrier(CONCURRENT_REQUESTS)

    def one(_):
        start.wait()
        return post_over_http(port, path, key, body)

    with ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
        return list(pool.map(one, range(CONCURRENT_REQUESTS)))


def test_concurrent_duplicates_of_one_event_apply_once(server, acme, scratch):
    call, customer = acme
    event = event_body(unique("evt"), customer, unique("inv"), "100.00", "2026-01-20")
    results = together(server, "/v1/revenue-events", scratch.keys.billing, event)
    assert [status for status, _, _ in results] == [201] * CONCURRENT_REQUESTS
    assert sorted(replayed for _, _, replayed in results) == [False] + [True] * (CONCURRENT_REQUESTS - 1)
    assert len({json.dumps(body, sort_keys=True) for _, body, _ in results}) == 1
    assert transactions_of_event(scratch.database, event["id"]) == 1


def test_concurrent_duplicate_batches_apply_each_event_once(server, acme, scratch):
    call, customer = acme
    events = [event_body(unique("evt"), customer, unique("inv"), "10.00", "2026-01-20") for _ in range(20)]
    results = together(server, "/v1/revenue-events/batch", scratch.keys.billing, {"events": events})
    assert {status for status, _, _ in results} == {200}
    fresh = [sum(not r.get("replayed", False) for r in body["results"]) for _, body, _ in results]
    assert sorted(fresh) == [0] * (CONCURRENT_REQUESTS - 1) + [len(events)]
    assert all(r["http_status"] == 201 for _, body, _ in results for r in body["results"])
    assert [transactions_of_event(scratch.database, e["id"]) for e in events] == [1] * len(events)


def test_a_posted_event_commits_its_transaction_once(acme):
    # The end of the request committed again after the route's own commit (`commit_now`): an empty
    # transaction begun and committed on every posting, about 60 of its 1,900 function calls.
    call, customer = acme
    commits = []

    def committed(session) -> None:
        commits.append(session)
    sa.event.listen(Session, "after_commit", committed)
    try:
        expect(call.post("/v1/revenue-events", event_body(unique("evt"), customer, unique("inv"), "10.00",
                                                          "2026-01-20"), as_="billing"), 201)
    finally:
        sa.event.remove(Session, "after_commit", committed)
    assert len(commits) == 1


def test_an_event_read_back_is_as_received_with_the_answer_a_replay_gives(acme):
    """GET /v1/revenue-events/{id}, beyond the contract: what billing reconciles against without
    sending the event again. The payment keeps its first answer after its refund claws back."""
    call, customer = acme
    paid_id, refund_id, invoice = unique("evt"), unique("evt"), unique("inv")
    paid = call.event(paid_id, customer, invoice, "500.00", "2026-01-20")
    refund = call.event(refund_id, customer, invoice, "200.00", "2026-01-25", kind="refund")
    for event_id, answer, kind, amount, day in ((paid_id, paid, "invoice_paid", "500.00", "2026-01-20"),
                                                (refund_id, refund, "refund", "200.00", "2026-01-25")):
        for role in ("billing", "finance"):
            read = call.read(f"/v1/revenue-events/{event_id}", as_=role)
            recorded_at = read.pop("recorded_at")
            assert read == {**answer, "type": kind, "customer_id": customer, "invoice_id": invoice,
                            "amount": money(amount), "occurred_at": f"{day}T00:00:00Z"}, read
            assert parse_instant(recorded_at, field="recorded_at") > parse_instant(f"{day}T00:00:00Z",
                                                                                   field="day")
    assert [c["kind"] for c in paid["commissions"]] == ["accrual"]
    assert [(c["kind"], c["amount"]["amount"]) for c in refund["commissions"]] == [("clawback", "-40.00")]


def test_an_unattributed_event_reads_back_with_no_commissions(call):
    event_id = unique("evt")
    call.event(event_id, unique("stranger"), unique("inv"), "10.00", "2026-01-20")
    read = call.read(f"/v1/revenue-events/{event_id}")
    assert (read["status"], read["commissions"], read["transaction_ids"]) == ("unattributed", [], [])


def test_an_event_id_with_slashes_or_named_batch_reads_back(acme):
    call, customer = acme
    for event_id in (f"{unique('evt')}/2026/01", "batch"):
        posted = call.post("/v1/revenue-events", event_body(event_id, customer, unique("inv"), "10.00",
                                                            "2026-01-20"), as_="billing")
        assert posted.status_code == 201, posted.data  # the scratch world's only event named `batch`
        assert call.read(f"/v1/revenue-events/{event_id}")["id"] == event_id


def test_an_event_is_no_partners_to_read_and_an_unknown_one_is_a_404(acme):
    """A partner key gets the 404 of a route it may not call, for its own customer's event as for
    any; billing and finance get a 404 naming the id for an event never received."""
    call, customer = acme
    event_id = unique("evt")
    call.event(event_id, customer, unique("inv"), "10.00", "2026-01-20")
    for partner in ("p1", "p2"):
        assert call.get(f"/v1/revenue-events/{event_id}", as_=partner).status_code == 404
    missing = call.get(f"/v1/revenue-events/{unique('evt')}", as_="billing")
    assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
    assert "revenue event" in missing.get_json()["detail"]


@pytest.mark.parametrize("path, method", [
    ("/v1/revenue-events/{id}", "get"), ("/v1/customers/{id}", "get"),
    ("/v1/customers/{id}/attributions/1", "delete"), ("/v1/customers/acme/attributions/{id}", "delete")])
def test_a_404_names_an_id_asked_for_cut_at_the_64_characters_an_id_may_hold(call, path, method):
    asked = "x" * 5_000
    missing = getattr(call, method)(path.format(id=asked), as_="billing" if method == "get" else "finance")
    assert missing.status_code == 404 and repr("x" * 64) in missing.get_json()["detail"]
    assert "x" * 65 not in missing.get_json()["detail"]


def _event(event_id, type_, customer, invoice, amount, occurred_at) -> dict:
    return {"id": event_id, "type": type_, "customer_id": customer, "invoice_id": invoice,
            "amount": {"amount": amount, "currency": "USD"}, "occurred_at": occurred_at}


def test_an_event_id_shaped_like_another_postings_key_takes_no_key_but_its_own(database):
    """An event id may hold `:`. A posting's key was the event's id and what it posts
    (`release:1:after:x` + `:accrual:northwind`), so the payment `release:1:after:x` took the key of
    piece 1's release again after the refund `x:accrual:northwind` (`release:1:after:` + its id):
    the refund was a 500 on every try, and a batch holding it failed every event of it. Event keys
    now start with `#` and write the id's `:`s as `|` (`revenue.event_key`)."""
    with database.transaction() as session:
        seed(session, customer_ids=["acme", "initrode", "umbrella"])  # northwind at 20%, held 30 days
        _, key = create_key(session, "billing")
    client, headers = make_app(database).test_client(), {"Authorization": f"Bearer {key}"}
    paid = client.post("/v1/revenue-events", headers=headers,
                       json=_event("p1", "invoice_paid", "acme", "inv1", "100.00", "2026-01-10T00:00:00Z"))
    [accrual_id, *_] = expect(paid, 201)["transaction_ids"]
    with database.transaction() as session:
        assert holds.release_matured(session, at("2026-03-01")) == 2  # the accrual and its override
    payment_id = f"release:{accrual_id}:after:x"
    expect(client.post("/v1/revenue-events", headers=headers, json=_event(
        payment_id, "invoice_paid", "initrode", "inv2", "50.00", "2026-03-02T00:00:00Z")), 201)
    # Dated before the accrual matured, delivered after its release: the accrual is released again.
    refund = _event("x:accrual:northwind", "refund", "acme", "inv1", "10.00", "2026-01-15T00:00:00Z")
    other = _event("p9", "invoice_paid", "umbrella", "inv9", "10.00", "2026-03-03T00:00:00Z")
    batch = expect(client.post("/v1/revenue-events/batch", headers=headers, json={"events": [refund, other]}), 200)
    assert [(result["status"], result["http_status"]) for result in batch["results"]] == [
        ("posted", 201), ("posted", 201)], batch
    with database.reader() as session:
        keys = dict(session.execute(sa.select(journal_transactions.c.idempotency_key, journal_transactions.c.event_id)
                                    .where(journal_transactions.c.event_id.is_not(None))).all())
    assert f"release:{accrual_id}:after:x|accrual|northwind" in keys  # the release again, naming the refund
    assert all(key.startswith("#") for key, event_id in keys.items() if not key.startswith("release:")), keys
    assert {event_id for event_id in keys.values()} == {"p1", payment_id, "x:accrual:northwind", "p9"}
