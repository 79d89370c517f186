"""How a posting reads and writes (ledger/db.py `driver_results`, `locked`, `insert_all`;
ledger/revenue.py `ingest`), on SQLite and PostgreSQL:

- statements sent together run in order, each seeing the ones before it, and an error is
  SQLAlchemy's wrapper that leaves nothing behind once the transaction rolls back;
- reads sent in the same round trip as the journal lock see what the writer that held the lock
  before committed (on PostgreSQL each statement of the string takes its own snapshot);
- a batch gives the same books whether it reads what its fresh events need in its opening round
  trip (small batches) or after learning its replays (large ones);
- membership conditions (`in_lists`) select exactly the rows named, whatever characters the ids hold;
- a page of partners is read in a fixed number of statements, whatever its size.
"""

from __future__ import annotations

import gc
import threading

import pytest
from sqlalchemy import BigInteger, Column, MetaData, String, Table, event, text
from sqlalchemy.exc import IntegrityError

from ledger import accounts as chart
from ledger import db, journal, partners, plans, revenue
from ledger.db import IN_LIST_MAX, Database, driver_results, driver_rows, in_lists, insert_all, locked
from tests.cli.test_cli import audited_books
from tests.conftest import drop_pg_database, new_pg_url, new_sqlite_url
from tests.api.conftest import STANDARD_TERMS
from tests.integration.conftest import chain_due
from tests.program import at, enrol, of_an_event, paid, seed

CUSTOMERS = [f"cust-{n:02d}" for n in range(8)]


def test_statements_sent_together_run_in_order_and_see_each_other(database):
    with database.transaction() as session:
        results = driver_results(session, [
            ("INSERT INTO customers (id, created_at_us) VALUES (?, ?)", ("first", 1)),
            ("SELECT id FROM customers WHERE id IN (?, ?) ORDER BY id", ("first", "second")),
            ("INSERT INTO customers (id, created_at_us) VALUES (?, ?)", ("second", 2)),
            ("SELECT count(*) FROM customers WHERE id IN (?, ?)", ("first", "second")),
        ])
        chain_due(session.connection())
    assert results == [[], [("first",)], [], [(2,)]]


def test_an_error_among_statements_sent_together_is_sqlalchemys_and_leaves_nothing(database):
    with pytest.raises(IntegrityError):
        with database.transaction() as session:
            driver_results(session, [
                ("INSERT INTO customers (id, created_at_us) VALUES (?, ?)", ("kept-out", 1)),
                ("INSERT INTO customers (id, created_at_us) VALUES (?, ?)", ("kept-out", 2)),  # same key
                ("INSERT INTO customers (id, created_at_us) VALUES (?, ?)", ("never-run", 3)),
            ])
    with database.reader() as session:
        assert session.execute(text("SELECT count(*) FROM customers")).scalar_one() == 0


def _accrual(key: str, at_us: int) -> journal.Draft:
    return journal.transfer("accrual", chart.EXPENSE_COMMISSION, chart.pending("northwind"), "USD", 1_000,
                            effective_at_us=at_us, idempotency_key=key, partner_id="northwind",
                            **of_an_event(key, "northwind"))


def test_reads_sent_with_the_journal_lock_see_the_writer_that_held_it(database):
    """A writer holds the lock, then posts and commits while a second one waits for the lock in
    `locked`: the second must read the first's posting, not the journal as it was when it asked."""
    with database.transaction() as session:
        enrol(session, "northwind")
        journal.post(session, [_accrual("before", at("2026-01-05"))])
    locked_by_first = threading.Event()
    release_first = threading.Event()

    def first() -> None:
        with database.transaction() as session:
            journal.lock_journal(session)
            if database.engine.dialect.name == "sqlite":
                session.execute(text("SELECT 1"))  # a writer's first statement takes SQLite's write lock
            locked_by_first.set()
            release_first.wait(timeout=30)
            journal.post(session, [_accrual("while-waiting", at("2026-01-06"))])

    thread = threading.Thread(target=first)
    thread.start()
    assert locked_by_first.wait(timeout=30)
    timer = threading.Timer(0.3, release_first.set)  # the second is waiting for the lock by then
    timer.start()
    try:
        with database.transaction() as session:
            [[(count,)], [(head_key,)]] = locked(session, [
                ("SELECT count(*) FROM journal_transactions", ()),
                ("SELECT idempotency_key FROM journal_transactions ORDER BY id DESC LIMIT 1", ()),
            ])
    finally:
        timer.join()
        thread.join(timeout=30)
    assert (count, head_key) == (2, "while-waiting")


def _stream() -> list[revenue.RevenueEvent]:
    """Paid invoices, partial refunds, chargebacks, won disputes and refused refunds over a few months."""
    events = []
    for month in range(1, 4):
        for index, customer in enumerate(CUSTOMERS):
            invoice = f"inv-{customer}-{month}"
            amount = 10_000 + 1_000 * index + month
            events.append(paid(f"e-{invoice}", customer, invoice, amount, f"2026-{month:02d}-{5 + index:02d}"))
            if index % 3 == 0:
                events.append(paid(f"r-{invoice}", customer, invoice, amount // 4, f"2026-{month:02d}-20", "refund"))
            if index % 4 == 1:
                events.append(paid(f"c-{invoice}", customer, invoice, amount, f"2026-{month:02d}-21", "chargeback"))
                events.append(paid(f"w-{invoice}", customer, invoice, amount // 2, f"2026-{month:02d}-25",
                                   "chargeback_reversed"))
            if index == 7:  # more than was paid: refused
                events.append(paid(f"x-{invoice}", customer, invoice, amount + 1, f"2026-{month:02d}-26", "refund"))
    return events


def _deliver(database: Database, events: list[revenue.RevenueEvent], size: int) -> list:
    """Every event in batches of `size`, each batch also repeating the one before it."""
    outcomes, previous = [], []
    for start in range(0, len(events), size):
        batch = previous + events[start:start + size]
        with database.transaction() as session:
            results = revenue.ingest(session, batch)
        outcomes += [(r.event_id, r.status, r.replayed, r.commissions) if isinstance(r, revenue.Outcome)
                     else (r.event_id, type(r.error).__name__) for r in results]
        previous = events[start:start + size]
    return outcomes


@pytest.fixture
def two_databases(database_url, request, tmp_path):
    """The per-test database and a second one on the same engine, both seeded alike."""
    if database_url.startswith("sqlite"):
        other_url, cluster = new_sqlite_url(request.getfixturevalue("sqlite_template"), tmp_path), None
    else:
        cluster = request.getfixturevalue("pg_cluster")
        other_url = new_pg_url(cluster)
    databases = [Database(database_url), Database(other_url)]
    for database in databases:
        with database.transaction() as session:
            seed(session, customer_ids=CUSTOMERS)
    yield databases
    for database in databases:
        database.dispose()
    if cluster is not None:
        drop_pg_database(cluster, other_url)


@pytest.mark.parametrize("fails", [False, True], ids=["ingested", "raised"])
def test_a_batch_is_ingested_with_the_collector_paused_and_leaves_it_on(database, monkeypatch, fails):
    with database.transaction() as session:
        seed(session, customer_ids=CUSTOMERS)
    collecting, hash_of = [], revenue.request_hash

    def recording_hash(event):
        collecting.append(gc.isenabled())
        if fails:
            raise RuntimeError("hashing failed")
        return hash_of(event)

    monkeypatch.setattr(revenue, "request_hash", recording_hash)
    events = [paid(f"gc-{n}", CUSTOMERS[n], f"inv-gc-{n}", 10_000, "2026-02-10") for n in range(3)]
    assert gc.isenabled()
    if fails:
        with pytest.raises(RuntimeError, match="hashing failed"):
            with database.transaction() as session:
                revenue.ingest(session, events)
    else:
        with database.transaction() as session:
            outcomes = revenue.ingest(session, events)
        assert [type(outcome) for outcome in outcomes] == [revenue.Outcome] * 3
    assert collecting and set(collecting) == {False} and gc.isenabled()


def test_a_batch_gives_the_same_books_whether_it_reads_its_needs_up_front_or_after_its_replays(
        two_databases, monkeypatch):
    up_front, after_replays = two_databases
    events = _stream()
    size = 7
    monkeypatch.setattr(revenue, "SPECULATIVE_READS_EVENTS_MAX", 2 * size)  # every batch reads up front
    outcomes_up_front = _deliver(up_front, events, size)
    monkeypatch.setattr(revenue, "SPECULATIVE_READS_EVENTS_MAX", 0)  # every batch reads after its replays
    outcomes_after = _deliver(after_replays, events, size)
    assert outcomes_up_front == outcomes_after
    assert any(outcome[2] for outcome in outcomes_after if len(outcome) == 4)  # replays happened
    assert any(len(outcome) == 2 for outcome in outcomes_after)  # and refusals
    assert audited_books(up_front) == audited_books(after_replays)


def test_the_reads_of_a_small_batch_go_in_its_opening_round_trip(database, monkeypatch):
    """On PostgreSQL: the lock, the chain head, the replays and the needs in one statement string,
    the writes in one more (SQLite has no round trips to save and sends them one by one)."""
    with database.transaction() as session:
        seed(session, customer_ids=CUSTOMERS)
    with database.transaction() as session:  # the partner program and the accounts are cached from here on
        revenue.ingest(session, [paid("warm", CUSTOMERS[1], "inv-warm", 10_000, "2026-02-09")])
    sent: list[str] = []
    event.listen(database.engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    with database.transaction() as session:
        [outcome] = revenue.ingest(session, [paid("one", CUSTOMERS[0], "inv-one", 10_000, "2026-02-10")])
    assert outcome.status == "posted" and len(outcome.transaction_ids) == 2  # accrual and override
    if database.engine.dialect.name == "postgresql":
        [reads, writes] = [sql for sql in sent if not sql.startswith(("BEGIN", "COMMIT"))]
        assert reads.startswith("SELECT pg_advisory_xact_lock") and "FROM attributions" in reads
        assert writes.count("INSERT INTO") == 4  # lines, headers, the event, its holds
    else:
        assert any("FROM attributions" in sql for sql in sent)


# Ids with every character an array literal or a quoted string treats specially, beside plain ones:
# an id sent is any text, though no table of the books stores such ids (migration 0031), hence a
# table of the test's own.
AWKWARD_IDS = ["a,b", "{c}", 'd"e', "f\\g", "h i", "j'k", "NULL", "", "l;m", "n?o", "p%s"]
ANY_IDS = Table("ids_of_any_shape", MetaData(), Column("id", String(64), primary_key=True),
                Column("created_at_us", BigInteger, nullable=False))


@pytest.mark.parametrize("wanted_count", [1, 50, 51, 700])
@pytest.mark.parametrize("send", ["driver_rows", "driver_results"])
def test_in_lists_select_exactly_the_named_rows(database, wanted_count, send, monkeypatch):
    """Membership conditions select the rows named and no other, whatever the ids hold, on both
    engines, bound by the server (`driver_rows`) or on the client (`driver_results`, PostgreSQL's
    ClientCursor): arrays of at most IN_ARRAY_MAX values on PostgreSQL (lowered here so that 700
    take two), IN lists of at most IN_LIST_MAX values on SQLite."""
    monkeypatch.setattr(db, "IN_ARRAY_MAX", 600)
    stored = [f"cust-{n:04d}" for n in range(1_200)] + AWKWARD_IDS
    with database.engine.begin() as connection:
        ANY_IDS.create(connection)
    with database.transaction() as session:
        insert_all(session, [(ANY_IDS, ("id", "created_at_us"), [(cid, 1) for cid in stored])])
    wanted = AWKWARD_IDS[:wanted_count] + stored[:max(0, wanted_count - len(AWKWARD_IDS))] + ["absent", "cust-x"]
    with database.reader() as session:
        conditions = in_lists(session, "id", wanted)
        queries = [(f"SELECT id FROM {ANY_IDS.name} WHERE {condition}", params) for condition, params in conditions]
        if send == "driver_rows":
            found = [row for sql, params in queries for row in driver_rows(session, sql, params)]
        else:
            found = [row for rows in driver_results(session, queries) for row in rows]
        postgres = session.get_bind().dialect.name == "postgresql"
    assert sorted(cid for (cid,) in found) == sorted(set(wanted) - {"absent", "cust-x"})
    assert len(found) == wanted_count
    per_condition = 600 if postgres else IN_LIST_MAX
    assert len(conditions) == -(-len(wanted) // per_condition)
    assert [len(params[0]) if postgres else len(params) for _, params in conditions] == [
        min(per_condition, len(wanted) - start) for start in range(0, len(wanted), per_condition)]
    assert all(len(params) == 1 for _, params in conditions) or not postgres


def test_no_values_are_no_statements(database):
    with database.transaction() as session:
        assert in_lists(session, "id", []) == []
        assert driver_results(session, []) == []


def test_a_page_of_partners_costs_the_same_statements_for_any_page_size_and_each_is_as_read_alone(database):
    """Five statements a page (the partners, their statuses, their plans, whether the books record
    withdrawals and the changes withdrawn), not four per partner: a page of 1,000 took about a second
    on SQLite."""
    day_us = 86_400 * 1_000_000
    with database.transaction() as session:
        plans.create_plan(session, "standard", "Standard", STANDARD_TERMS)
        plans.create_plan(session, "premium", "Premium", STANDARD_TERMS)
        for n in range(12):
            partners.create_partner(session, f"pt-{n:02d}", f"Partner {n}", "msp", "standard")
        now = journal.now_us()
        partners.set_status(session, "pt-01", "suspended")
        partners.set_status(session, "pt-02", "terminated", now + day_us)  # dated ahead: active until then
        partners.set_status(session, "pt-03", "suspended")
        partners.set_status(session, "pt-03", "active")
        partners.change_plan(session, "pt-04", "premium", now - day_us)
        partners.change_plan(session, "pt-05", "premium", now + day_us)  # dated ahead: standard until then
    sent: list[str] = []
    event.listen(database.engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    counts = {}
    for limit in (2, 12):
        sent.clear()
        with database.reader() as session:
            page = partners.list_partners(session, limit=limit)
        counts[limit] = len([sql for sql in sent if not sql.startswith(("BEGIN", "COMMIT", "ROLLBACK"))])
    assert counts[2] == counts[12] <= 5, counts
    with database.reader() as session:
        alone = [partners.get_partner(session, f"pt-{n:02d}") for n in range(12)]
    assert page == alone
    assert [(p.status, p.plan_id) for p in page[1:6]] == [
        ("suspended", "standard"), ("active", "standard"), ("active", "standard"), ("active", "premium"),
        ("active", "standard")]
