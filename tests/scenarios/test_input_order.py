"""An input (a batch, an import's file) decides each event as its events before it leave the books,
so that sending it again, whole or after a crash, gives the books of sending it once
(`ledger.revenue`, "In input order"): a refund, chargeback or won dispute refused for what comes
after it in its input stays refused when the books hold that since, and an id given twice in one
input takes the decision of its first place.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ledger import revenue
from ledger.db import Database
from ledger.importer import import_text
from ledger.instants import format_instant
from ledger.money import format_minor
from ledger.revenue import Outcome, Refusal
from tests.conftest import database_property, new_sqlite_url
from tests.scenarios.books import Books


def program(database: Database) -> Books:
    books = Books(database)
    books.plan("msp", "0.20", hold_days=0)
    books.partner("northwind", "msp")
    books.attribute("acme", "northwind", "2026-01-01")
    return books


@pytest.fixture
def books(database) -> Books:
    return program(database)


def snapshot(books: Books) -> tuple:
    """The books, but for the instants they were recorded at: every event as received and its status,
    every posting in order with its content hash, and each partner's balance. verify() must be clean."""
    assert books.verified()
    return (books.sql("SELECT id, request_hash, status FROM revenue_events ORDER BY id"),
            books.sql("SELECT id, kind, request_hash FROM journal_transactions ORDER BY id"),
            books.balance("northwind"))


def outcomes(results: list[Outcome | Refusal]) -> list[str]:
    return [f"refused {result.error.detail}" if isinstance(result, Refusal)
            else f"{result.status}{' replayed' if result.replayed else ''}" for result in results]


def test_a_refund_before_its_payment_in_a_batch_stays_refused_when_the_batch_is_sent_again(books):
    refund = books.event("refund", "acme", "inv-1", "100.00", "2026-01-12", event_id="r")
    paid = books.event("invoice_paid", "acme", "inv-1", "1000.00", "2026-01-10", event_id="p")
    assert outcomes(books.ingest(refund, paid)) == ["refused invoice_id: no paid invoice 'inv-1'", "posted"]
    once = snapshot(books)
    # The payment is in the books now; the refund is still decided as the batch's events before it
    # leave them, and says why it is refused while the invoice is paid.
    assert outcomes(books.ingest(refund, paid)) == [
        "refused invoice_id: no paid invoice 'inv-1', as the batch's events before it leave the books (the payment "
        "of its invoice later in the batch counts from there on)", "posted replayed"]
    assert snapshot(books) == once
    # On its own, or after its payment, it applies.
    assert outcomes(books.ingest(paid, refund)) == ["posted replayed", "posted"]
    assert books.balance("northwind") == (0, 18_000)


def test_a_payment_the_books_hold_already_does_not_count_for_a_refund_before_it_in_a_batch(books):
    books.paid("acme", "inv-1", "1000.00", "2026-01-10", event_id="p")
    paid = books.event("invoice_paid", "acme", "inv-1", "1000.00", "2026-01-10", event_id="p")
    refund = books.event("refund", "acme", "inv-1", "100.00", "2026-01-12", event_id="r")
    [refused, replayed] = books.ingest(refund, paid)
    assert isinstance(refused, Refusal) and list(refused.error.fields) == ["invoice_id"], refused
    assert refused.error.detail.startswith(
        "invoice_id: no paid invoice 'inv-1', as the batch's events before it leave the books")
    assert replayed.replayed and books.balance("northwind") == (20_000, 0)
    assert outcomes(books.ingest(paid, refund)) == ["posted replayed", "posted"]


def test_a_refund_refused_for_a_chargeback_stays_refused_after_a_won_dispute_later_in_its_batch(books):
    """A won dispute after it in the batch brought the charged back amount back: sent again, the
    refund was decided against books that held the dispute, and posted."""
    batch = [books.event("invoice_paid", "acme", "inv-1", "1000.00", "2026-01-10", event_id="p"),
             books.event("chargeback", "acme", "inv-1", "600.00", "2026-01-12", event_id="cb"),
             books.event("refund", "acme", "inv-1", "600.00", "2026-01-20", event_id="r"),
             books.event("chargeback_reversed", "acme", "inv-1", "600.00", "2026-01-15", event_id="won")]
    first = outcomes(books.ingest(*batch))
    assert first == ["posted", "posted",
                     "refused amount.amount: cumulative refunds and chargebacks would exceed the paid amount", "posted"]
    once = snapshot(books)
    again = outcomes(books.ingest(*batch))
    assert again[2].startswith("refused amount.amount: cumulative refunds and chargebacks would exceed the paid "
                               "amount, as the batch's events before it leave the books"), again
    assert snapshot(books) == once
    # In a batch without the won dispute, which the books hold, it counts: the refund posts. The
    # chargeback after it in that batch, which could only refuse it, counts too.
    assert outcomes(books.ingest(batch[2], batch[1])) == ["posted", "posted replayed"]


def test_what_could_only_refuse_an_event_counts_when_the_books_held_it_before_its_batch(books):
    """A chargeback posted before, given again after a refund it refuses, then a won dispute that
    would let the refund in: sent again, the refund is decided with the chargeback (as the first
    time, when the books held it already) and without the dispute (the first time had not yet
    posted it)."""
    paid = books.event("invoice_paid", "acme", "inv-1", "1000.00", "2026-01-10", event_id="p")
    chargeback = books.event("chargeback", "acme", "inv-1", "600.00", "2026-01-12", event_id="cb")
    books.ingest(paid, chargeback)
    batch = [paid, books.event("refund", "acme", "inv-1", "600.00", "2026-01-20", event_id="r"), chargeback,
             books.event("chargeback_reversed", "acme", "inv-1", "600.00", "2026-01-15", event_id="won")]
    assert outcomes(books.ingest(*batch)) == [
        "posted replayed", "refused amount.amount: cumulative refunds and chargebacks would exceed the paid amount",
        "posted replayed", "posted"]
    once = snapshot(books)
    assert outcomes(books.ingest(*batch))[1].startswith("refused amount.amount: cumulative refunds and chargebacks "
                                                       "would exceed the paid amount, as the batch's events before it")
    assert snapshot(books) == once


def test_a_won_dispute_before_its_chargeback_in_a_batch_stays_refused(books):
    batch = [books.event("invoice_paid", "acme", "inv-1", "1000.00", "2026-01-10", event_id="p"),
             books.event("chargeback_reversed", "acme", "inv-1", "300.00", "2026-01-20", event_id="won"),
             books.event("chargeback", "acme", "inv-1", "300.00", "2026-01-12", event_id="cb")]
    assert outcomes(books.ingest(*batch))[1] == \
        "refused amount.amount: exceeds what is charged back on the invoice and not yet reversed"
    once = snapshot(books)
    assert outcomes(books.ingest(*batch))[1].startswith(
        "refused amount.amount: exceeds what is charged back on the invoice and not yet reversed, as the batch's "
        "events before it leave the books")
    assert snapshot(books) == once


def test_an_id_given_again_in_a_file_takes_the_decision_of_its_first_place_as_in_a_batch(
        database, sqlite_template, tmp_path):
    """A payment refused on its first line (its invoice paid already) and given again for another
    invoice: refused there too, in a file as in a batch."""
    lines = [{"id": "y", "invoice_id": "inv-1", "amount": "100.00"}, {"id": "x", "invoice_id": "inv-1"},
             {"id": "x", "invoice_id": "inv-2"}]
    text = file_text([{"type": "invoice_paid", "amount": "200.00", "occurred_at": "2026-02-05T00:00:00Z", **line}
                      for line in lines])
    imported, batch = program(database), program(Database(new_sqlite_url(sqlite_template, tmp_path)))
    summary = import_text(imported.database, text, "ndjson")
    assert [line for line, _ in summary.examples] == [2, 3] and "and was refused there" in summary.examples[1][1]
    results = batch.ingest(*[revenue.parse_event(json.loads(line)) for line in text.splitlines()])
    assert outcomes(results)[0] == "posted" and all(isinstance(result, Refusal) for result in results[1:])
    assert imported.sql("SELECT id, invoice_id FROM revenue_events") == [("y", "inv-1")]
    assert batch.sql("SELECT id, invoice_id FROM revenue_events") == [("y", "inv-1")]
    batch.database.dispose()


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_an_id_first_given_for_another_invoice_is_not_later_in_the_file_whatever_the_batches(
        database, batch_size):
    """A payment posted before the file, carried again on its third line, but first given (for
    another invoice) on its second: not an event of the file after the refund on its first line,
    which it lets in, however the file is cut into batches, and as one batch request takes it."""
    books = program(database)
    paid = line("x", "invoice_paid", "inv-1", "1000.00", "2026-01-10")
    books.ingest(revenue.parse_event(json.loads(file_text([paid]))))
    text = file_text([line("r", "refund", "inv-1", "100.00", "2026-02-01"),
                      line("x", "invoice_paid", "inv-3", "1000.00", "2026-01-10"), paid])
    summary = import_text(database, text, "ndjson", batch_size=batch_size)
    assert summary.statuses["posted"] == 1 and [line for line, _ in summary.examples] == [2], summary
    once = snapshot(books)
    assert import_text(database, text, "ndjson", batch_size=4 - batch_size).statuses["posted"] == 0
    assert snapshot(books) == once
    results = books.ingest(*[revenue.parse_event(json.loads(each)) for each in text.splitlines()])
    assert outcomes(results)[0] == "posted replayed" and snapshot(books) == once


MAX_CLF = "922337203685477.5807"  # 2^63 - 1 minor units: a running total past its range after the first


def test_an_id_refused_where_it_first_came_for_a_total_past_its_range_is_refused_again_later(database):
    """A refusal of one event the batch is applied apart for (`ingest_apart`) holds for its id's later
    places too: decided anew, the later one posted a payment that a refund between counted, when sent again."""
    books = program(database)
    huge = [books.event("invoice_paid", "acme", f"inv-b{n}", MAX_CLF, "2026-02-20", currency="CLF", event_id=f"b{n}")
            for n in range(6)]
    events = [*huge[:5], huge[5]._replace(id="x"), books.event("refund", "acme", "inv-a", "10.00", "2026-01-21"),
              books.event("invoice_paid", "acme", "inv-a", "100.00", "2026-01-20", event_id="x")]
    text = file_text([{"id": e.id, "type": e.type, "invoice_id": e.invoice_id, "occurred_at": format_instant(
        e.occurred_at_us), "amount": format_minor(e.amount_minor, e.currency), "currency": e.currency} for e in events])
    first = import_text(database, text, "ndjson")
    assert [line for line, _ in first.examples] == [6, 7, 8] and "and was refused there" in first.examples[2][1]
    once = snapshot(books)
    assert import_text(database, text, "ndjson").refused == 3 and snapshot(books) == once
    results = revenue.ingest_apart(events, database.transaction)  # a batch request's path, as the route takes it
    assert [type(result) for result in results[5:]] == [Refusal] * 3 and snapshot(books) == once


def test_an_id_given_again_in_a_batch_takes_the_decision_of_its_first_place(books):
    refund = books.event("refund", "acme", "inv-1", "100.00", "2026-01-12", event_id="r")
    other = books.event("refund", "acme", "inv-1", "200.00", "2026-01-12", event_id="r")
    paid = books.event("invoice_paid", "acme", "inv-1", "1000.00", "2026-01-10", event_id="p")
    results = books.ingest(refund, paid, refund, other)
    no_payment = "refused invoice_id: no paid invoice 'inv-1'"
    assert outcomes(results)[:3] == [no_payment, "posted", no_payment]
    assert isinstance(results[3], Refusal)
    assert results[3].error.fields == {"amount": ["differs from the original event"]}
    assert "appears earlier in the batch with other content, and was refused there" in results[3].error.detail
    assert books.sql("SELECT count(*) FROM revenue_events") == [(1,)]
    # Accepted at its first place, a copy replays it, as before.
    assert outcomes(books.ingest(paid, refund, refund)) == ["posted replayed", "posted", "posted replayed"]


# ---- a file imported once, and killed after some batches then imported again ----

INVOICES = {"inv-1": "2026-01-10", "inv-2": "2026-01-11"}
undoing = st.tuples(st.sampled_from(["refund", "chargeback", "chargeback", "chargeback_reversed"]),
                    st.sampled_from(sorted(INVOICES)), st.sampled_from(["100.00", "400.00", "600.00", "1000.00"]),
                    st.integers(1, 40))


@st.composite
def files(draw) -> list[dict]:
    """Both invoices' payments and some of their refunds, chargebacks and won disputes, in any order,
    some lines given again later in the file (as they were, or with another amount, invoice or type)."""
    events = [{"id": f"p-{invoice}", "type": "invoice_paid", "invoice_id": invoice, "amount": "1000.00",
               "occurred_at": f"{day}T00:00:00Z"} for invoice, day in INVOICES.items()]
    for n, (type_, invoice, amount, days) in enumerate(draw(st.lists(undoing, min_size=1, max_size=7))):
        events.append({"id": f"u-{n}", "type": type_, "invoice_id": invoice, "amount": amount,
                       "occurred_at": f"2026-02-{days % 28 + 1:02d}T{days // 28:02d}:00:00Z"})
    lines = draw(st.permutations(events))
    for _ in range(draw(st.integers(0, 2))):
        copy = dict(draw(st.sampled_from(lines)))
        changed = draw(st.sampled_from([None, "amount", "invoice_id", "type"]))
        if changed == "amount":
            copy["amount"] = "100.00" if copy["amount"] != "100.00" else "400.00"
        elif changed == "invoice_id":
            copy["invoice_id"] = "inv-2" if copy["invoice_id"] == "inv-1" else "inv-1"
        elif changed == "type":
            copy["type"] = "refund" if copy["type"] != "refund" else "invoice_paid"
        lines.insert(draw(st.integers(0, len(lines))), copy)
    return lines


def file_text(lines: list[dict]) -> str:
    return "".join(json.dumps({"id": line["id"], "type": line["type"], "customer_id": "acme",
                               "invoice_id": line["invoice_id"],
                               "amount": {"amount": line["amount"], "currency": line.get("currency", "USD")},
                               "occurred_at": line["occurred_at"]}) + "\n" for line in lines)


class Killed(Exception):
    pass


def killed_after(batches: int):
    """`import_stream`'s `applying`: the import stops once `batches` batches have committed."""
    committed = [0]

    @contextlib.contextmanager
    def applying():
        yield
        committed[0] += 1
        if committed[0] == batches:
            raise Killed

    return applying


def line(event_id: str, type_: str, invoice_id: str, amount: str, day: str) -> dict:
    return {"id": event_id, "type": type_, "invoice_id": invoice_id, "amount": amount,
            "occurred_at": f"{day}T00:00:00Z"}


PAID = [line(f"p-{invoice}", "invoice_paid", invoice, "1000.00", day) for invoice, day in INVOICES.items()]


# The counterexamples that broke it before: a refund before its payment, the payment committed in
# a batch before the kill; a won dispute after a refund it would let in, its chargeback sent before
# the file; one id refused, then posted.
@example(lines=[line("u-0", "refund", "inv-1", "100.00", "2026-02-02"), *PAID], batch_size=1, kill_after=2,
         sent_before=[])
@example(lines=[PAID[0], line("u-0", "chargeback", "inv-1", "600.00", "2026-02-02"),
                line("u-1", "refund", "inv-1", "600.00", "2026-02-20"),
                line("u-2", "chargeback_reversed", "inv-1", "600.00", "2026-02-10")],
         batch_size=1, kill_after=4, sent_before=[1])
@example(lines=[line("u-0", "refund", "inv-1", "100.00", "2026-02-02"), line("u-1", "refund", "inv-1", "1000.00",
                                                                             "2026-02-03"),
                PAID[0], line("u-0", "refund", "inv-1", "100.00", "2026-02-02")],
         batch_size=1, kill_after=4, sent_before=[])
@database_property(25, soak=500)
@given(lines=files(), batch_size=st.integers(1, 3), kill_after=st.integers(1, 12),
       sent_before=st.lists(st.integers(0, 20), max_size=4))
def test_a_file_imported_again_after_a_kill_or_whole_gives_the_books_of_one_clean_import(
        lines, batch_size, kill_after, sent_before, sqlite_template, tmp_path_factory):
    """Some of the file's events may have been sent before it (`sent_before`: their lines, as a
    batch request in that order). Each import after the first cuts the file into other batches."""
    text = file_text(lines)
    folder = tmp_path_factory.mktemp("input-order")
    clean, killed, batch = (program(Database(new_sqlite_url(sqlite_template, folder))) for _ in range(3))
    sent = [revenue.parse_event(json.loads(text.splitlines()[n % len(lines)])) for n in sent_before]
    try:
        for books in (clean, killed, batch):
            books.ingest(*sent)
        first = import_text(clean.database, text, "ndjson", batch_size=batch_size)
        once = snapshot(clean)
        again = import_text(clean.database, text, "ndjson", batch_size=batch_size % 3 + 1)  # cut elsewhere
        assert snapshot(clean) == once
        assert [line for line, _ in again.examples] == [line for line, _ in first.examples]
        with contextlib.suppress(Killed):
            import_text(killed.database, text, "ndjson", batch_size=batch_size, applying=killed_after(kill_after))
        import_text(killed.database, text, "ndjson", batch_size=(batch_size + 1) % 3 + 1)
        assert snapshot(killed) == once
        # The same events as one batch request, sent twice: the books of the file's import.
        events = [revenue.parse_event(json.loads(line)) for line in text.splitlines()]
        batch.ingest(*events)
        assert snapshot(batch) == once
        batch.ingest(*events)
        assert snapshot(batch) == once
    finally:
        for books in (clean, killed, batch):
            books.database.dispose()
