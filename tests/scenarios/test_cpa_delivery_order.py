"""A customer's payments (with refunds of some), delivered in any order, leave the same books as
delivered in time order: the CPA on the first eligible paid invoice by date, whichever came first,
and every partner's balance, in every currency, the same just after every instant either holds.

The claimant a late payment takes the CPA from has its bounty reversed with what stands against it
(its clawbacks, its release), each at its own instant, so from that instant on the two books agree.
Release jobs come by at random instants between deliveries; a last one releases everything before
the books are compared. Payments are on distinct days (at the very same instant the first
delivered keeps the claim), and each invoice has one refund at most (several refunds of one invoice
delivered against their order are what README's "three spans" are about).

Delivered in batches cut at random places (a job only before a batch), the books hold the very
transactions, request hash for request hash, of the same order delivered one event at a time: a
claimant paid earlier in the same batch has its bounty's reversal drafted from what the batch
drafted, the reversal the journal gives once the bounty is written.
"""

from hypothesis import given
from hypothesis import strategies as st

from ledger.db import Database
from ledger.instants import format_instant
from ledger.revenue import Outcome
from tests.conftest import database_property, new_sqlite_url
from tests.scenarios.books import Books, at

DAY_US = 86_400 * 1_000_000
START_US = at("2026-01-01")
CURRENCIES = {"USD": "100.00", "EUR": "80.00", "JPY": "9000"}  # JPY: the plan lists no CPA in it

# Each payment: (day of 2026 from 0, currency, refund: None or (days after, whole?)); then the
# delivery order, and the day of a release job before each delivery (None: no job).
payments = st.lists(st.tuples(st.integers(0, 150), st.sampled_from(sorted(CURRENCIES)),
                              st.none() | st.tuples(st.integers(0, 40), st.booleans())),
                    min_size=2, max_size=5, unique_by=lambda payment: payment[0])


@st.composite
def histories(draw):
    drawn = draw(payments)
    events = []  # (event id, type, invoice, amount, day)
    for number, (day, currency, refund) in enumerate(drawn):
        events.append((f"p{number}", "invoice_paid", f"inv-{number}", currency, CURRENCIES[currency], day))
        if refund is not None:
            after, whole = refund
            amount = CURRENCIES[currency] if whole else {"USD": "30.00", "EUR": "20.00", "JPY": "3000"}[currency]
            events.append((f"r{number}", "refund", f"inv-{number}", currency, amount, day + after))
    delivered = list(draw(st.permutations([i for i, event in enumerate(events) if event[1] == "invoice_paid"])))
    for index, event in enumerate(events):
        if event[1] == "refund":  # delivered after its payment (before it, it is refused: nothing to compare)
            after = delivered.index(index - 1)
            delivered.insert(draw(st.integers(after + 1, len(delivered))), index)
    jobs = draw(st.lists(st.none() | st.integers(0, 200), min_size=len(delivered), max_size=len(delivered)))
    cuts = draw(st.lists(st.booleans(), min_size=len(delivered), max_size=len(delivered)))  # a batch starts here
    return events, delivered, jobs, draw(st.sampled_from([0, 10, 30])), draw(st.none() | st.integers(20, 120)), cuts


def books_for(database: Database, hold_days: int, reattributed_day: int | None) -> Books:
    books = Books(database)
    books.plan("parent", "0.05", override=("0.20", "commission"), hold_days=hold_days, duration_months=None)
    books.plan("hybrid", "0.10", hold_days=hold_days, duration_months=4, cpa={"USD": "50.00", "EUR": "40.00"})
    books.partner("dist", "parent", type="distributor")
    books.partner("northwind", "hybrid", parent="dist")
    books.partner("contoso", "hybrid")
    books.attribute("acme", "northwind", "2026-01-01")
    if reattributed_day is not None:
        books.attribute("acme", "contoso", format_instant(START_US + reattributed_day * DAY_US)[:10], replace=True)
    return books


def deliver(books: Books, events: list, order: list[int], jobs: list, cuts: list[bool] | None = None) -> None:
    """Each event its own batch, or batches starting where `cuts` says (a job runs only there)."""
    batches: list[list] = []
    for place, (index, job) in enumerate(zip(order, jobs)):
        if cuts is None or cuts[place] or not batches:
            batches.append([job])
        event_id, type_, invoice, currency, amount, day = events[index]
        batches[-1].append(books.event(type_, "acme", invoice, amount, format_instant(START_US + day * DAY_US),
                                       currency=currency, event_id=event_id))
    for job, *batch in batches:
        if job is not None:
            books.release(format_instant(START_US + job * DAY_US))
        results = books.ingest(*batch)
        assert all(isinstance(result, Outcome) for result in results), results
    books.release("2026-12-01")


def balances(books: Books, instants: list[int]) -> dict:
    return {(partner, currency, instant): books.balance_just_after(partner, format_instant(instant), currency=currency)
            for partner in ("northwind", "contoso", "dist") for currency in CURRENCIES for instant in instants}


@database_property(30, soak=600)
@given(history=histories())
def test_payments_delivered_in_any_order_leave_the_books_of_time_order(history, sqlite_template, tmp_path_factory):
    events, order, jobs, hold_days, reattributed_day, cuts = history
    in_time = sorted(range(len(events)), key=lambda index: (events[index][5], events[index][1] == "refund"))
    databases = [Database(new_sqlite_url(sqlite_template, tmp_path_factory.mktemp("order"))) for _ in range(3)]
    try:
        shuffled, ordered, batched = (books_for(database, hold_days, reattributed_day) for database in databases)
        at_cuts = [job if cut or place == 0 else None for place, (job, cut) in enumerate(zip(jobs, cuts))]
        deliver(shuffled, events, order, at_cuts)
        deliver(ordered, events, in_time, [None] * len(in_time))
        deliver(batched, events, order, jobs, cuts)
        postings = "SELECT idempotency_key, request_hash, memo FROM journal_transactions ORDER BY idempotency_key"
        assert batched.sql(postings) == shuffled.sql(postings)
        instants = sorted({instant for books in (shuffled, ordered)
                           for instant, in books.sql("SELECT DISTINCT effective_at_us FROM journal_lines")})
        assert balances(shuffled, instants) == balances(ordered, instants)
        standing = ("SELECT t.partner_id, t.invoice_id FROM journal_transactions t WHERE t.kind = 'cpa' AND NOT EXISTS"
                    " (SELECT 1 FROM journal_transactions r WHERE r.reverses_id = t.id) ORDER BY t.id")
        assert shuffled.sql(standing) == ordered.sql(standing)
        assert shuffled.verified() and ordered.verified()
    finally:
        for database in databases:
            database.dispose()
