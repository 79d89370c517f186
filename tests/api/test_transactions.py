"""GET /v1/transactions, GET /v1/transactions/{id}, POST /v1/transactions/{id}/reversal."""

import re
import uuid
from types import SimpleNamespace
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from ledger import accounts as chart
from ledger import journal, partners, reversals
from ledger.instants import parse_instant
from ledger.verify import verify
from tests.api.books import assert_not_a_cursor, crafted_cursor, errors_of, next_cursor, plan_body, unique
from tests.api.conftest import accrual, bearer, new_transaction

RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")


def test_a_transaction_carries_its_lines_hashes_sequence_and_links(shared):
    response = shared.client.get(f"/v1/transactions/{shared.booked.p1[0]}", headers=bearer(shared.keys.finance))
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == body["sequence"] == shared.booked.p1[0]
    assert body["kind"] == "accrual"
    assert body["effective_at"] == "2026-01-20T00:00:00Z"
    assert body["original_effective_at"] is None and body["reverses_id"] is None and body["reversed_by_id"] is None
    assert RFC3339_UTC.fullmatch(body["recorded_at"])
    assert (body["partner_id"], body["customer_id"], body["invoice_id"]) == ("p1", "p1-customer", "p1-a-invoice")
    assert re.fullmatch(r"[0-9a-f]{64}", body["hash"]) and body["prev_hash"] == "0" * 64
    assert body["lines"] == [
        {"account": "expense:commission", "currency": "USD", "side": "debit", "amount": "100.00"},
        {"account": "liability:partner:p1:pending", "currency": "USD", "side": "credit", "amount": "100.00"},
    ]


def test_another_partner_s_transaction_is_found_missing_as_an_id_past_the_head_is_by_the_same_statements(shared):
    """Found and then refused, another partner's transaction took two more statements (its lines, its
    reversal) than an id no transaction has: its 404 came later, which told a partner key the id was taken."""
    from sqlalchemy import event

    head = shared.client.get("/v1/transactions?limit=1000", headers=bearer(shared.keys.finance)).get_json()["items"]
    past_head = max(item["id"] for item in head) + 1_000
    for own, other, other_id in (("p1", "p2", shared.booked.p2), ("p2", "p1", shared.booked.p1[0])):
        key = bearer(getattr(shared.keys, own))
        shared.client.get(f"/v1/transactions/{past_head}", headers=key)  # the key authenticated and cached
        answers, statements = [], []
        for transaction_id in (other_id, past_head):
            asked: list[str] = []
            listener = lambda *args: asked.append(args[2])  # noqa: E731
            event.listen(shared.database.engine, "before_cursor_execute", listener)
            try:
                response = shared.client.get(f"/v1/transactions/{transaction_id}", headers=key)
            finally:
                event.remove(shared.database.engine, "before_cursor_execute", listener)
            answers.append((response.status_code, response.get_json()["detail"].replace(str(transaction_id), "N")))
            statements.append(len([sql for sql in asked if "journal" in sql]))
        assert answers[0] == answers[1] == (404, "transaction N not found"), answers
        assert statements[0] == statements[1] == 1, (own, statements)
        found = shared.client.get(f"/v1/transactions/{other_id}", headers=bearer(getattr(shared.keys, other)))
        assert found.status_code == 200 and found.get_json()["partner_id"] == other


@pytest.mark.parametrize("role", ["finance", "p1"])
def test_a_transaction_never_shows_the_salt_or_request_hash_its_hash_covers(shared, role):
    response = shared.client.get(f"/v1/transactions/{shared.booked.p1[0]}", headers=bearer(getattr(shared.keys, role)))
    listed = shared.client.get("/v1/transactions", headers=bearer(getattr(shared.keys, role))).get_json()["items"]
    for body in (response.get_json(), *listed):
        assert {"hash", "prev_hash"} <= set(body) and not {"salt", "request_hash"} & set(body)
    with shared.database.reader() as session:
        salt = session.execute(sa.text("SELECT salt FROM journal_transactions WHERE id = :t"),
                               {"t": shared.booked.p1[0]}).scalar_one()
    assert salt is not None and salt not in response.get_data(as_text=True)


def test_amounts_use_the_minor_unit_of_their_currency(shared):
    body = shared.client.get(f"/v1/transactions/{shared.booked.p1[1]}", headers=bearer(shared.keys.finance)).get_json()
    assert {line["amount"] for line in body["lines"]} == {"1234"}  # JPY has no minor digits


def test_each_transaction_chains_the_previous_hash(shared):
    items = shared.client.get("/v1/transactions", headers=bearer(shared.keys.finance)).get_json()["items"]
    assert [item["prev_hash"] for item in items[1:]] == [item["hash"] for item in items[:-1]]


def test_a_list_pages_with_an_opaque_cursor_until_null(shared):
    seen, cursor, pages = [], None, 0
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = shared.client.get(f"/v1/transactions?{query}", headers=bearer(shared.keys.finance)).get_json()
        seen += [item["id"] for item in body["items"]]
        cursor, pages = body["next_cursor"], pages + 1
        if cursor is None:
            break
        assert not cursor.isdigit() and pages < 2, seen
    assert seen == [1, 2, 3] and pages == 2


def test_the_default_page_holds_up_to_100_and_the_maximum_is_1000(scratch):
    partner = fresh_partner(scratch)
    with scratch.database.transaction() as session:
        posted = journal.post(session, [accrual(partner, f"{partner}-{i}", 100 + i, 1_000 + i) for i in range(101)])
    finance, listing = bearer(scratch.keys.finance), f"/v1/transactions?partner_id={partner}"
    first = scratch.client.get(listing, headers=finance).get_json()
    assert len(first["items"]) == 100 and first["next_cursor"] is not None
    rest = scratch.client.get(f"{listing}&cursor={first['next_cursor']}", headers=finance).get_json()
    assert [item["id"] for item in rest["items"]] == [posted[-1].id] and rest["next_cursor"] is None
    whole = scratch.client.get(f"{listing}&limit=1000", headers=finance).get_json()
    assert [item["id"] for item in whole["items"]] == [p.id for p in posted] and whole["next_cursor"] is None


def test_a_cursor_the_transaction_list_did_not_hand_out_is_a_422_naming_it(shared):
    """Another list's cursor (a payout list's is "payouts:after:N", as crafted here) would have
    listed the transactions after an id of another table; so would a cursor made before cursors
    named their list ("after:N")."""
    foreign = [next_cursor(shared, listing) for listing in ("/v1/partners", "/v1/periods")]
    crafted = [crafted_cursor(content) for content in (
        "payouts:after:1", "after:1", "transactions:after:-1", "transactions:after:1x", "transactions:after:")]
    for cursor in (*foreign, *crafted):
        assert_not_a_cursor(shared, "/v1/transactions", cursor)


def test_a_cursor_cut_short_is_a_422_not_an_earlier_page(scratch):
    """Read as an earlier key ("...:after:103" as "...:after:10"), a cursor cut by a copy and paste
    listed rows already read, with no error."""
    partner = fresh_partner(scratch)
    with scratch.database.transaction() as session:
        journal.post(session, [accrual(partner, f"{partner}-{i}", 100 + i, 1_000 + i) for i in range(101)])
    finance, query = bearer(scratch.keys.finance), {"partner_id": partner}
    cursor = scratch.client.get("/v1/transactions", query_string=query, headers=finance).get_json()["next_cursor"]
    for cut in (1, 2, 3, 4):
        response = scratch.client.get("/v1/transactions", query_string=query | {"cursor": cursor[:-cut]},
                                      headers=finance)
        assert errors_of(response) == {"cursor"}, cut


def test_a_cursor_goes_on_only_with_the_filters_it_was_handed_out_with(shared):
    finance = bearer(shared.keys.finance)

    def listed(key, **query):
        return shared.client.get("/v1/transactions", query_string=query, headers=key)

    first = listed(finance, partner_id="p1", limit=1).get_json()
    cursor = first["next_cursor"]
    assert [item["id"] for item in first["items"]] == [shared.booked.p1[0]] and cursor is not None
    rest = listed(finance, partner_id="p1", limit=1000, cursor=cursor).get_json()["items"]
    assert [item["id"] for item in rest] == list(shared.booked.p1[1:])
    for other in ({}, {"partner_id": "p2"}, {"partner_id": "p1", "invoice_id": "p1-a-invoice"}):
        response = listed(finance, cursor=cursor, **other)
        assert errors_of(response) == {"cursor"}, other


def test_one_partners_cursor_lists_another_partner_only_its_own(shared):
    """A partner's key lists its own transactions with no filter, so a cursor it was handed out goes on
    in another partner's key too: after that key, with the other partner's rows only."""
    p1, p2 = bearer(shared.keys.p1), bearer(shared.keys.p2)
    cursor = shared.client.get("/v1/transactions?limit=1", headers=p1).get_json()["next_cursor"]
    theirs = shared.client.get("/v1/transactions", query_string={"cursor": cursor}, headers=p2)
    assert theirs.status_code == 200
    items = theirs.get_json()["items"]
    assert items and {item["partner_id"] for item in items} == {"p2"}
    assert min(item["id"] for item in items) > shared.booked.p1[0]


def test_a_partner_without_transactions_lists_nothing(scratch):
    listing = f"/v1/transactions?partner_id={fresh_partner(scratch)}"
    response = scratch.client.get(listing, headers=bearer(scratch.keys.finance))
    assert response.get_json() == {"items": [], "next_cursor": None}


def fresh_partner(world) -> str:
    """A partner of its own, enrolled in the world's database."""
    partner_id = f"pt-{uuid.uuid4().hex[:12]}"
    with world.database.transaction() as session:
        partners.create_partner(session, partner_id, f"Partner {partner_id}", "msp", "standard")
    return partner_id


def reverse(shared, transaction_id, body, key=None):
    return shared.client.post(f"/v1/transactions/{transaction_id}/reversal", json=body,
                              headers=bearer(key or shared.keys.finance))


def test_a_reversal_mirrors_the_original_at_its_instant(database, client, keys):
    scratch = SimpleNamespace(database=database, client=client, keys=keys)  # books of its own, which verify reads
    original_id = new_transaction(scratch.database, "p1", 10_000)
    response = reverse(scratch, original_id, {"reason": "entered twice"})
    assert response.status_code == 201
    body = response.get_json()
    assert (body["kind"], body["reverses_id"], body["memo"]) == ("reversal", original_id, "entered twice")
    assert body["effective_at"] == "2026-01-20T00:00:00Z" and body["partner_id"] == "p1"
    assert body["lines"] == [
        {"account": "expense:commission", "currency": "USD", "side": "credit", "amount": "100.00"},
        {"account": chart.pending("p1"), "currency": "USD", "side": "debit", "amount": "100.00"},
    ]
    original = scratch.client.get(f"/v1/transactions/{original_id}", headers=bearer(scratch.keys.finance)).get_json()
    assert original["reversed_by_id"] == body["id"]
    with scratch.database.reader() as session:
        assert verify(session).ok


def test_a_reversal_may_name_its_effective_instant(scratch):
    response = reverse(scratch, new_transaction(scratch.database),
                       {"reason": "late", "effective_at": "2026-02-01T01:00:00+01:00"})
    assert response.status_code == 201
    assert response.get_json()["effective_at"] == "2026-02-01T00:00:00Z"


def test_a_reversal_before_its_original_or_in_the_future_is_a_422_naming_effective_at(scratch):
    original_id = new_transaction(scratch.database)  # effective 2026-01-20
    for effective_at in ("2026-01-19T23:59:59.999999Z", "2062-01-01T00:00:00Z"):
        response = reverse(scratch, original_id, {"reason": "late", "effective_at": effective_at})
        assert response.status_code == 422 and set(response.get_json()["errors"]) == {"effective_at"}
    original = scratch.client.get(f"/v1/transactions/{original_id}", headers=bearer(scratch.keys.finance)).get_json()
    assert original["reversed_by_id"] is None
    assert reverse(scratch, original_id, {"reason": "late", "effective_at": "2026-01-20T00:00:00Z"}).status_code == 201


def test_the_database_refuses_a_reversal_effective_before_its_original(scratch, monkeypatch):
    original_id = new_transaction(scratch.database)
    monkeypatch.setattr(journal, "_check_reversal_instant", lambda *_args: None)  # past Python's check
    with pytest.raises(sa.exc.DBAPIError, match="not effective before the transaction it reverses"):
        with scratch.database.transaction() as session:
            reversals.reverse(session, original_id, reason="early",
                              effective_at_us=parse_instant("2026-01-19T00:00:00Z", field="at"))
    with scratch.database.reader() as session:
        assert journal.reversed_by(session, original_id) is None


def test_a_reversal_by_a_server_whose_clock_is_over_five_minutes_behind_its_originals_is_a_409_not_a_500(
        scratch, skewed_clock):
    # At its original's instant, the reversal would be dated over five minutes after its recording, which
    # the database refuses (migration 0029): the server says so and reverses nothing; a retry of a
    # reversal already made replays.
    key = f"fresh-{uuid.uuid4().hex}"
    with scratch.database.transaction() as session:
        [made] = journal.post(session, [accrual("p1", key, 100, journal.now_us())])
        [replayed] = journal.post(session, [accrual("p1", f"{key}-replayed", 100, journal.now_us())])
    skewed_clock.offset_us = -6 * 60 * 1_000_000  # another server, 6 minutes behind (or this one stepped back)
    response = reverse(scratch, made.id, {"reason": "entered twice"})
    assert response.status_code == 409 and "more than five minutes ahead of this server's clock" in (
        response.get_json()["detail"])
    assert scratch.client.get(f"/v1/transactions/{made.id}", headers=bearer(scratch.keys.finance)).get_json()[
        "reversed_by_id"] is None
    for offset_us in (0, -6 * 60 * 1_000_000):  # made, then retried by the server that is behind: a replay
        skewed_clock.offset_us = offset_us
        with scratch.database.transaction() as session:
            retried = reversals.reverse(session, replayed.id, reason="entered twice", idempotency_key=f"{key}-retried")
        assert retried.replayed == (offset_us != 0)
    skewed_clock.offset_us = 0
    assert reverse(scratch, made.id, {"reason": "entered twice"}).status_code == 201


def test_a_second_reversal_is_a_409(scratch):
    original_id = new_transaction(scratch.database)
    assert reverse(scratch, original_id, {"reason": "first"}).status_code == 201
    second = reverse(scratch, original_id, {"reason": "second"}, key=scratch.keys.admin)
    assert second.status_code == 409
    assert second.mimetype == "application/problem+json"
    assert "already reversed" in second.get_json()["detail"]


def test_a_reversal_cannot_be_reversed(scratch):
    reversal_id = reverse(scratch, new_transaction(scratch.database), {"reason": "first"}).get_json()["id"]
    assert reverse(scratch, reversal_id, {"reason": "undo"}).status_code == 409


@pytest.mark.parametrize("transaction_id", [999_999, 2**63 - 1])
def test_reversing_a_missing_transaction_is_a_404(shared, transaction_id):
    response = reverse(shared, transaction_id, {"reason": "gone"})
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


@pytest.fixture
def traced(call):
    """An invoice of a reseller's customer, with the reseller's parent earning an override on it,
    refunded by half after both holds matured; the ids its events and transactions took."""
    parent = call.partner(plan_id=override_plan(call))
    child = call.partner(parent_id=parent)
    customer, invoice = unique("cust"), unique("inv")
    call.attribute(customer, child)
    paid, refund = unique("paid"), unique("refund")
    call.event(paid, customer, invoice, "500.00", "2026-01-20")
    call.event(refund, customer, invoice, "250.00", "2026-03-05", kind="refund")
    other = unique("inv")  # a second invoice of the same customer, which no filter of the first shows
    call.event(unique("paid"), customer, other, "100.00", "2026-01-21")
    listed = [item for partner in (parent, child)
              for item in every_page(call, f"/v1/transactions?partner_id={partner}")]
    return SimpleNamespace(call=call, parent=parent, child=child, invoice=invoice, paid=paid, refund=refund,
                           listed=sorted(listed, key=lambda item: item["id"]))


def override_plan(call) -> str:
    plan_id = unique("over")
    call.created("/v1/plans", plan_body(plan_id, override={"rate": "0.05", "basis": "revenue"}))
    return plan_id


def every_page(call, listing: str, *, as_: str = "finance", limit: int = 1000) -> list[dict]:
    items, cursor = [], None
    while True:
        body = call.read(f"{listing}&limit={limit}" + (f"&cursor={cursor}" if cursor else ""), as_=as_)
        items, cursor = items + body["items"], body["next_cursor"]
        if cursor is None:
            return items


def test_an_invoices_transactions_are_its_whole_trace_in_sequence_order(traced):
    listed = every_page(traced.call, f"/v1/transactions?invoice_id={traced.invoice}")
    assert listed == [item for item in traced.listed if item["invoice_id"] == traced.invoice]
    kinds = [(item["partner_id"], item["kind"]) for item in listed]
    assert sorted(kinds) == sorted([(traced.child, "accrual"), (traced.parent, "override"),
                                    (traced.child, "release"), (traced.parent, "release"),
                                    (traced.child, "clawback"), (traced.parent, "clawback")]), kinds
    # One to a page, the cursor walks the same list.
    assert every_page(traced.call, f"/v1/transactions?invoice_id={traced.invoice}", limit=1) == listed


def test_an_events_transactions_are_what_it_posted_and_the_releases_of_that(traced):
    paid = every_page(traced.call, f"/v1/transactions?event_id={traced.paid}")
    assert sorted(item["kind"] for item in paid) == ["accrual", "override", "release", "release"]
    refund = every_page(traced.call, f"/v1/transactions?event_id={traced.refund}")
    assert sorted(item["kind"] for item in refund) == ["clawback", "clawback"]
    assert paid + refund == [item for item in traced.listed if item["event_id"] in (traced.paid, traced.refund)]
    assert {item["id"] for item in paid}.isdisjoint(item["id"] for item in refund)


def test_the_filters_combine_and_a_partner_key_lists_only_its_own_transactions_of_an_invoice(traced):
    call = traced.call
    for partner in (traced.parent, traced.child):
        call.partner_key(partner)
        own = [item for item in traced.listed if item["invoice_id"] == traced.invoice and item["partner_id"] == partner]
        assert len(own) == 3, own
        assert every_page(call, f"/v1/transactions?invoice_id={traced.invoice}", as_=partner) == own
        assert every_page(call, f"/v1/transactions?invoice_id={traced.invoice}&partner_id={partner}") == own
        assert every_page(call, f"/v1/transactions?event_id={traced.refund}", as_=partner) == [
            item for item in own if item["kind"] == "clawback"]
    # Another partner's key lists nothing of the invoice, as for an invoice no transaction names.
    assert call.read(f"/v1/transactions?invoice_id={traced.invoice}", as_="p1")["items"] == []
    assert call.read(f"/v1/transactions?invoice_id={unique('inv')}")["items"] == []
    # Both filters, of an event that is not the invoice's: nothing.
    assert call.read(f"/v1/transactions?invoice_id={traced.invoice}&event_id={unique('paid')}")["items"] == []
    other_partners = call.get(f"/v1/transactions?invoice_id={traced.invoice}&partner_id={traced.child}",
                              as_="p1")
    assert other_partners.status_code == 404


@pytest.mark.parametrize("field", ["invoice_id", "event_id"])
@pytest.mark.parametrize("value", ["-starts-with-a-dash", "x" * 65, "with space"])
def test_an_id_filter_that_is_no_id_is_a_422_naming_it(call, field, value):
    response = call.get(f"/v1/transactions?{field}={quote(value)}")
    assert errors_of(response) == {field}
