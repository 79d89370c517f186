"""Exactly once: an event id is its key. The same event again replays its original outcome; other
content under the same id is refused naming what differs; an invoice is paid once; a refund must
match its invoice's customer and currency. In a batch each event succeeds or fails on its own."""

import pytest

from ledger.errors import Conflict, IdempotencyConflict, InvalidInput
from ledger.revenue import Outcome, Refusal
from tests.scenarios.books import Books, commissions


@pytest.fixture
def books(database) -> Books:
    books = Books(database)
    books.plan("msp", "0.20", hold_days=0)
    books.partner("northwind", "msp")
    books.attribute("acme", "northwind", "2026-01-01")
    books.attribute("globex", "northwind", "2026-01-01")
    return books


def head(books: Books) -> tuple:
    return tuple(books.sql("SELECT count(*), max(hash) FROM journal_transactions")[0])


def test_the_same_event_again_replays_its_original_outcome_and_posts_nothing(books):
    event = books.event("invoice_paid", "acme", "inv-1", "500.00", "2026-01-10", event_id="evt-paid")
    [first] = books.ingest(event)
    before = head(books)
    [again] = books.ingest(event)
    assert (first.replayed, again.replayed) == (False, True)
    assert (again.status, again.commissions, again.transaction_ids) == \
        (first.status, first.commissions, first.transaction_ids)
    assert head(books) == before
    refund = books.event("refund", "acme", "inv-1", "100.00", "2026-01-12", event_id="evt-refund")
    [clawed] = books.ingest(refund)
    [clawed_again] = books.ingest(refund)
    assert commissions(clawed_again) == commissions(clawed) == [("northwind", "clawback", -2_000)]
    assert clawed_again.transaction_ids == clawed.transaction_ids and clawed_again.replayed
    assert books.balance("northwind") == (0, 8_000)


def test_a_replay_after_the_releases_of_its_pieces_answers_exactly_what_the_first_delivery_answered(books):
    # A release names the event that accrued what it releases (a won dispute's reinstatement: the
    # dispute), and is no part of that event's answer.
    paid = books.event("invoice_paid", "acme", "inv-1", "500.00", "2026-01-10", event_id="evt-paid")
    chargeback = books.event("chargeback", "acme", "inv-1", "500.00", "2026-01-12", event_id="evt-chargeback")
    won = books.event("chargeback_reversed", "acme", "inv-1", "500.00", "2026-01-14", event_id="evt-won")
    first = [books.ingest(event)[0] for event in (paid, chargeback, won)]  # the chargeback releases the accrual
    assert books.release("2026-01-20") == 1
    assert books.release_events("inv-1") == [("northwind", "evt-paid"), ("northwind", "evt-won")]
    before = head(books)
    again = books.ingest(paid, chargeback, won)
    assert [(r.status, r.commissions, r.transaction_ids, r.replayed) for r in again] == [
        (r.status, r.commissions, r.transaction_ids, True) for r in first]
    assert [commissions(r) for r in again] == [[("northwind", "accrual", 10_000)], [("northwind", "clawback", -10_000)],
                                               [("northwind", "accrual", 10_000)]]
    assert head(books) == before
    assert books.balance("northwind") == (0, 10_000)


def test_an_unattributed_event_replays_as_unattributed(books):
    event = books.event("invoice_paid", "initech", "inv-9", "500.00", "2026-01-10", event_id="evt-9")
    assert books.ingest(event) == [Outcome("evt-9", "unattributed", (), ())]
    assert books.ingest(event) == [Outcome("evt-9", "unattributed", (), (), replayed=True)]


def test_the_same_id_with_other_content_is_refused_naming_the_differing_fields(books):
    books.paid("acme", "inv-1", "500.00", "2026-01-10", event_id="evt-1")
    before = head(books)
    refusal = books.refused("invoice_paid", "acme", "inv-1", "500.01", "2026-01-11", event_id="evt-1")
    assert isinstance(refusal.error, IdempotencyConflict)
    assert sorted(refusal.error.fields) == ["amount", "occurred_at"]
    other_type = books.refused("refund", "globex", "inv-1", "500.00", "2026-01-10", event_id="evt-1")
    assert sorted(other_type.error.fields) == ["customer_id", "type"]
    assert head(books) == before


def test_a_second_invoice_paid_for_the_same_invoice_is_a_conflict(books):
    books.paid("acme", "inv-1", "500.00", "2026-01-10")
    refusal = books.refused("invoice_paid", "acme", "inv-1", "500.00", "2026-01-10")
    assert type(refusal.error) is Conflict and list(refusal.error.fields) == ["invoice_id"]
    assert books.balance("northwind") == (10_000, 0)  # matured, not yet released


def test_a_refund_must_name_its_invoices_customer_and_currency(books):
    books.paid("acme", "inv-1", "500.00", "2026-01-10")
    other_customer = books.refused("refund", "globex", "inv-1", "100.00", "2026-01-11")
    other_currency = books.refused("refund", "acme", "inv-1", "100.00", "2026-01-11", currency="EUR")
    assert isinstance(other_customer.error, InvalidInput) and list(other_customer.error.fields) == ["customer_id"]
    assert isinstance(other_currency.error, InvalidInput) and list(other_currency.error.fields) == ["amount.currency"]
    assert books.balance("northwind") == (10_000, 0)  # matured, not yet released


def test_events_of_one_batch_succeed_or_fail_on_their_own(books):
    results = books.ingest(
        books.event("invoice_paid", "acme", "inv-1", "500.00", "2026-01-10", event_id="a"),
        books.event("refund", "acme", "inv-1", "600.00", "2026-01-11", event_id="b"),       # beyond the paid amount
        books.event("refund", "acme", "inv-404", "1.00", "2026-01-11", event_id="c"),       # no such invoice
        books.event("invoice_paid", "acme", "inv-1", "500.00", "2026-01-12", event_id="d"),  # paid twice
        books.event("invoice_paid", "globex", "inv-2", "300.00", "2026-01-12", event_id="e"),
    )
    assert [type(r).__name__ for r in results] == ["Outcome", "Refusal", "Refusal", "Refusal", "Outcome"]
    assert [list(r.error.fields) for r in results if isinstance(r, Refusal)] == [["amount.amount"], ["invoice_id"],
                                                                               ["invoice_id"]]
    assert books.balance("northwind") == (16_000, 0)
    stored = books.sql("SELECT id FROM revenue_events ORDER BY id")
    assert [row.id for row in stored] == ["a", "e"]


def test_an_invoice_paid_and_refunded_in_the_same_batch_is_clawed_back(books):
    paid, partial, final = books.ingest(
        books.event("invoice_paid", "acme", "inv-1", "500.00", "2026-01-10"),
        books.event("refund", "acme", "inv-1", "125.00", "2026-01-10T12:00:00Z"),
        books.event("chargeback", "acme", "inv-1", "375.00", "2026-01-11"),
    )
    assert commissions(paid) == [("northwind", "accrual", 10_000)]
    assert commissions(partial) == [("northwind", "clawback", -2_500)]
    assert commissions(final) == [("northwind", "clawback", -7_500)]
    assert books.balance("northwind") == (0, 0)
    assert books.trial_balance_is_zero() and books.verified()


def test_an_invoice_paid_charged_back_and_won_back_in_one_batch_ends_where_it_started(books):
    paid, chargeback, won, too_much = books.ingest(
        books.event("invoice_paid", "acme", "inv-1", "500.00", "2026-01-10"),
        books.event("chargeback", "acme", "inv-1", "200.00", "2026-01-11"),
        books.event("chargeback_reversed", "acme", "inv-1", "200.00", "2026-01-12"),
        books.event("chargeback_reversed", "acme", "inv-1", "0.01", "2026-01-13"),  # nothing left to win
    )
    assert commissions(chargeback) == [("northwind", "clawback", -4_000)]
    assert commissions(won) == [("northwind", "accrual", 4_000)]
    assert isinstance(too_much, Refusal) and list(too_much.error.fields) == ["amount.amount"]
    # The chargeback released the matured accrual and clawed from available; the won dispute
    # accrued again into pending, with a new (zero-day) hold no release has run for yet.
    assert books.balance("northwind") == (4_000, 6_000)


def test_a_repeated_id_within_one_batch_applies_once(books):
    paid = books.event("invoice_paid", "acme", "inv-1", "500.00", "2026-01-10", event_id="x")
    changed = books.event("invoice_paid", "acme", "inv-1", "400.00", "2026-01-10", event_id="x")
    first, repeat, conflict = books.ingest(paid, paid, changed)
    assert (first.replayed, repeat.replayed, repeat.transaction_ids) == (False, True, first.transaction_ids)
    assert isinstance(conflict, Refusal) and isinstance(conflict.error, IdempotencyConflict)
    assert conflict.error.fields == {"amount": ["differs from the original event"]}  # as against a stored event
    assert books.balance("northwind") == (10_000, 0)  # matured, not yet released


def test_a_batch_replayed_in_full_posts_nothing_and_returns_every_original_outcome(books):
    events = [books.event("invoice_paid", "acme", "inv-1", "500.00", "2026-01-10"),
              books.event("refund", "acme", "inv-1", "50.00", "2026-01-11"),
              books.event("invoice_paid", "initech", "inv-2", "500.00", "2026-01-11")]
    first = books.ingest(*events)
    before = head(books)
    again = books.ingest(*events)
    assert [r._replace(replayed=False) for r in again] == first and all(r.replayed for r in again)
    assert head(books) == before
