"""The database holds the journal's invariants even when Python is bypassed with raw SQL."""

import re
import sqlite3

import pytest
import sqlalchemy as sa

from ledger import accounts as chart
from ledger import journal, reversals
from ledger.db import Database
from ledger.demo import load_demo
from ledger.keys import create_key
from ledger.schema import GENESIS_HASH
from tests import program
from tests.integration.conftest import one_waits, second_writer_behind_first
from tests.scenarios.books import Books, ahead

PENDING = chart.pending("northwind")


def account_ids(connection) -> tuple[int, int]:
    rows = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
    return rows[chart.EXPENSE_COMMISSION], rows[PENDING]


def head_hash(connection) -> str:
    return connection.exec_driver_sql("SELECT hash FROM journal_transactions ORDER BY id DESC LIMIT 1").scalar()


def insert_line(connection, transaction_id, account_id, side, amount, at=5, currency="USD"):
    connection.execute(sa.text(
        "INSERT INTO journal_lines (transaction_id, account_id, currency, side, amount_minor, effective_at_us) "
        "VALUES (:t, :a, :c, :s, :m, :e)"), dict(t=transaction_id, a=account_id, c=currency, s=side, m=amount, e=at))


# The default of a header's event, invoice and customer: for a commission or clawback, which names
# them (migration 0064), those `tests.program.of_an_event` gives; for another kind, none.
OF_AN_EVENT = "of an event"


def insert_header(connection, transaction_id, prev_hash, key="raw", at=5, verb="INSERT", *, kind="accrual",
                  reverses_id=None, original=None, customer_id=OF_AN_EVENT, accrual_id=None, partner_id="northwind",
                  invoice_id=OF_AN_EVENT, recorded=1, memo=None, event_id=OF_AN_EVENT):
    """A header sealing the lines inserted before it. By default an accrual of northwind, as
    `booked`'s first posting, whose lines (a debit of `expense:commission`, a credit to northwind's
    pending account) are an accrual's (migration 0047); an adjustment names an enrolled partner and
    moves money between `expense:commission:adjustment` and that partner's account (migration 0031)."""
    links = program.of_an_event(key, partner_id) if kind in journal.OF_AN_EVENT else {}
    customer_id, invoice_id, event_id = (links.get(name) if value is OF_AN_EVENT else value for name, value in (
        ("customer_id", customer_id), ("invoice_id", invoice_id), ("event_id", event_id)))
    connection.execute(sa.text(
        f"{verb} INTO journal_transactions (id, kind, effective_at_us, original_effective_at_us, recorded_at_us, "
        "idempotency_key, request_hash, prev_hash, hash, reverses_id, customer_id, accrual_id, partner_id, "
        "invoice_id, memo, event_id) VALUES (:id, :kind, :at, :original, :recorded, :key, :h, :prev, :h, :reverses, "
        ":customer, :accrual, :partner, :invoice, :memo, :event)"),
        dict(id=transaction_id, kind=kind, at=at, original=original, key=key, h="f" * 64, prev=prev_hash,
             reverses=reverses_id, customer=customer_id, accrual=accrual_id, partner=partner_id, invoice=invoice_id,
             recorded=recorded, memo=memo, event=event_id))


def refused(database, statements, match: str):
    with pytest.raises(sa.exc.DBAPIError, match=match):
        with database.engine.begin() as connection:
            statements(connection)


def refused_without_recursive_triggers(sqlite_database, sql: str, match: str) -> None:
    """`sql` is refused on a plain sqlite3 connection, whose `recursive_triggers` is off (as in the
    sqlite3 shell): a REPLACE then deletes the row it replaces without firing the delete guard."""
    connection = sqlite3.connect(sqlite_database.engine.url.database)
    try:
        assert connection.execute("PRAGMA recursive_triggers").fetchone() == (0,)
        with pytest.raises(sqlite3.DatabaseError, match=match):
            connection.execute(sql)
        connection.rollback()
    finally:
        connection.close()


def test_an_unbalanced_transaction_is_refused_at_its_seal(booked):
    def unbalanced(connection):
        expense, pending = account_ids(connection)
        insert_line(connection, 2, expense, "D", 100)
        insert_line(connection, 2, pending, "C", 99)
        insert_header(connection, 2, head_hash(connection))
    refused(booked, unbalanced, "debits do not equal credits")


def test_a_balanced_raw_transaction_is_accepted_so_the_guard_is_not_blanket(booked):
    with booked.engine.begin() as connection:
        expense, pending = account_ids(connection)
        insert_line(connection, 2, expense, "D", 100)
        insert_line(connection, 2, pending, "C", 100)
        insert_header(connection, 2, head_hash(connection))
    with booked.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM journal_transactions").scalar() == 2


def test_balance_is_per_currency(booked):
    def mixed(connection):
        expense, pending = account_ids(connection)
        insert_line(connection, 2, expense, "D", 100, currency="USD")
        insert_line(connection, 2, pending, "C", 100, currency="EUR")
        insert_header(connection, 2, head_hash(connection))
    refused(booked, mixed, "debits do not equal credits")


def test_a_single_line_transaction_is_refused(booked):
    def lonely(connection):
        expense, _ = account_ids(connection)
        insert_line(connection, 2, expense, "D", 100)
        insert_header(connection, 2, head_hash(connection))
    refused(booked, lonely, "two or more lines")


def test_a_header_without_lines_is_refused(booked):
    refused(booked, lambda c: insert_header(c, 2, head_hash(c)), "two or more lines")


def test_every_line_carries_its_headers_instant(booked):
    def one_line_moved(connection):
        expense, pending = account_ids(connection)
        insert_line(connection, 2, expense, "D", 100, at=5)
        insert_line(connection, 2, pending, "C", 100, at=6)
        insert_header(connection, 2, head_hash(connection), at=5)
    refused(booked, one_line_moved, "every line carries its transaction")


def test_the_first_transaction_names_the_genesis_hash(database):
    with database.transaction() as session:  # the accrual names northwind: a partner of the program
        program.enrol(session, "northwind")

    def first(prev_hash: str):
        def post(connection):
            expense, pending = (connection.execute(sa.text(
                "INSERT INTO accounts (name, type, normal_side, partner_id) VALUES (:n, :t, :s, :p) RETURNING id"),
                dict(n=name, t=type_, s=side, p=partner)).scalar_one() for name, type_, side, partner in (
                    (chart.EXPENSE_COMMISSION, "expense", "D", None), (PENDING, "liability", "C", "northwind")))
            insert_line(connection, 1, expense, "D", 100)
            insert_line(connection, 1, pending, "C", 100)
            insert_header(connection, 1, prev_hash)
        return post
    refused(database, first("a" * 64), "hash chain without a gap")
    with database.engine.begin() as connection:
        first(GENESIS_HASH)(connection)
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM journal_transactions").scalar() == 1


def test_a_line_cannot_be_added_to_a_sealed_transaction(booked):
    refused(booked, lambda c: insert_line(c, 1, account_ids(c)[0], "D", 1), "sealed")


def test_a_line_without_a_header_never_commits(booked):
    refused(booked, lambda c: insert_line(c, 2, account_ids(c)[0], "D", 1), "(?i)foreign key")


def post_the_next(session) -> None:
    """The service's next posting: `booked`'s transaction 2."""
    journal.post(session, [journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 100,
                                            effective_at_us=6, idempotency_key="a2", partner_id="northwind",
                                            **program.of_an_event("a2", "northwind"))])


def lines_of(database, transaction_id: int) -> int:
    with database.engine.connect() as connection:
        return connection.execute(sa.text("SELECT count(*) FROM journal_lines WHERE transaction_id = :t"),
                                  {"t": transaction_id}).scalar_one()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_raw_line_sent_while_the_service_posts_waits_for_the_posting_and_meets_its_seal(booked):
    """PostgreSQL: a line sent by a writer of its own SQL, which takes no journal lock, for the
    transaction the service is posting: it waits for the posting (migration 0043), then meets the
    seal. The seal had read before the posting committed and let the line into a sealed transaction."""
    error = second_writer_behind_first(booked, post_the_next, lambda session: insert_line(
        session.connection(), 2, account_ids(session.connection())[1], "C", 5_000))
    assert isinstance(error, sa.exc.DBAPIError) and "transaction is sealed" in str(error), error
    assert lines_of(booked, 2) == 2


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_raw_line_sent_before_the_service_posts_holds_the_posting_back_and_never_commits(booked):
    """PostgreSQL: a line sent for the id the service's next posting takes, before that posting, and
    committed after it: the posting now waits for the line's transaction (migration 0043), whose
    deferred foreign key then finds no header. The posting had been sealed without the line, the
    line's key was then met, and the transaction committed unbalanced (a payout run paid the line)."""
    import threading

    posted: list = []

    def post() -> None:
        with booked.transaction() as session:
            post_the_next(session)
        posted.append(2)

    posting = threading.Thread(target=post)
    with booked.engine.connect() as raw:
        # In euros: a running total the posting does not write, whose row lock would hold it back too.
        insert_line(raw, 2, account_ids(raw)[1], "C", 5_000, currency="EUR")
        posting.start()
        waited = one_waits(booked, posting)
        with pytest.raises(sa.exc.IntegrityError, match="foreign key"):
            raw.commit()
    posting.join(timeout=60)
    assert waited and posted == [2] and lines_of(booked, 2) == 2


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("table, kind", [("journal_lines", "journal"), ("journal_transactions", "journal"),
                                         ("period_closes", "journal"), ("payout_runs", "journal"),
                                         ("partner_statuses", "program"), ("attributions", "program")])
def test_on_postgresql_the_journal_and_the_program_are_written_at_read_committed_only(booked, isolation, table,
                                                                                      kind):
    """A transaction at REPEATABLE READ or above reads what was committed when it began, before its
    statement took the journal's or the program's lock: its guards would miss a posting, close, run
    or fact committed since (migration 0043). Each statement is refused before its first row,
    whatever the row; the same rows at READ COMMITTED meet their own guards."""
    rows = {"journal_lines": lambda c: insert_line(c, 2, account_ids(c)[0], "D", 1),
            "journal_transactions": lambda c: insert_header(c, 2, head_hash(c)),
            }.get(table, lambda c: c.exec_driver_sql(f"INSERT INTO {table} DEFAULT VALUES"))
    refusal = f"{table}: the {kind} is written at READ COMMITTED only, not {isolation}"
    with pytest.raises(sa.exc.DBAPIError, match=refusal):
        with booked.engine.connect().execution_options(isolation_level=isolation) as connection:
            with connection.begin():
                rows(connection)
    with pytest.raises(sa.exc.DBAPIError) as at_read_committed:
        with booked.engine.begin() as connection:
            rows(connection)
    assert "READ COMMITTED only" not in str(at_read_committed.value)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_service_writes_at_read_committed_whatever_the_servers_default_isolation(booked):
    """A database set to `default_transaction_isolation = 'repeatable read'` by its DBA: the service's
    writers still run at READ COMMITTED (`ledger.db.WRITERS_ISOLATION`), so that their postings meet
    migration 0043's rule, and its readers at REPEATABLE READ."""
    with booked.engine.connect() as connection:
        name = connection.exec_driver_sql("SELECT current_database()").scalar()
        connection.exec_driver_sql(f'ALTER DATABASE "{name}" SET default_transaction_isolation = "repeatable read"')
        connection.commit()
    fresh = Database(booked.url)  # connections made since read the new default
    try:
        with fresh.engine.connect() as connection:
            assert connection.exec_driver_sql("SHOW default_transaction_isolation").scalar() == "repeatable read"
        with fresh.transaction() as session:
            assert session.execute(sa.text("SHOW transaction_isolation")).scalar() == "read committed"
            post_the_next(session)
        with fresh.reader() as session:
            assert session.execute(sa.text("SHOW transaction_isolation")).scalar() == "repeatable read"
    finally:
        fresh.dispose()
    assert lines_of(booked, 2) == 2


def test_the_sequence_cannot_skip_a_number(booked):
    def gap(connection):
        expense, pending = account_ids(connection)
        insert_line(connection, 3, expense, "D", 100)
        insert_line(connection, 3, pending, "C", 100)
        insert_header(connection, 3, head_hash(connection))
    refused(booked, gap, "hash chain without a gap")


def test_a_header_must_name_the_previous_hash(booked):
    def forged(connection):
        expense, pending = account_ids(connection)
        insert_line(connection, 2, expense, "D", 100)
        insert_line(connection, 2, pending, "C", 100)
        insert_header(connection, 2, GENESIS_HASH)
    refused(booked, forged, "hash chain without a gap")


@pytest.mark.parametrize("amount, side", [(0, "D"), (-100, "D"), (100, "X")])
def test_amounts_are_positive_and_sides_are_debit_or_credit(booked, amount, side):
    refused(booked, lambda c: insert_line(c, 2, account_ids(c)[0], side, amount), "(?i)check")


@pytest.mark.parametrize("statement", [
    "UPDATE journal_lines SET amount_minor = 1",
    "UPDATE journal_transactions SET memo = 'edited'",
    "UPDATE accounts SET type = 'asset'",
])
def test_updates_are_refused(booked, statement):
    refused(booked, lambda c: c.exec_driver_sql(statement), "append-only")


@pytest.mark.parametrize("table", ["journal_lines", "journal_transactions", "accounts"])
def test_deletes_are_refused(booked, table):
    refused(booked, lambda c: c.exec_driver_sql(f"DELETE FROM {table}"), "append-only")


def test_insert_or_replace_is_refused(booked):
    if booked.engine.dialect.name == "sqlite":
        replace = lambda c: c.exec_driver_sql(  # noqa: E731
            "INSERT OR REPLACE INTO accounts (id, name, type, normal_side) VALUES (1, 'asset:cash', 'asset', 'D')")
    else:
        replace = lambda c: c.exec_driver_sql(  # noqa: E731
            "INSERT INTO accounts (id, name, type, normal_side) VALUES (1, 'asset:cash', 'asset', 'D') "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name")
    refused(booked, replace, "append-only")


def unique_keys(connection: sqlite3.Connection, table: str) -> list[tuple[str, ...]]:
    """The table's primary key and unique keys, from SQLite's own catalogue (an INTEGER PRIMARY KEY is
    the rowid, which no index lists), but those holding another."""
    primary = [(position, name) for _, name, _, _, _, position in connection.execute(f"PRAGMA table_info({table})")
               if position]
    keys = [tuple(name for _, name in sorted(primary))]
    for _, index, unique, _, _ in connection.execute(f"PRAGMA index_list({table})"):
        key = tuple(name for _, _, name in connection.execute(f"PRAGMA index_info({index})"))
        if unique and key not in keys:
            keys.append(key)
    # A key holding another (partners' (id, depth) for a parent's depth) is taken only when that one is.
    return [key for key in keys if not any(set(other) < set(key) for other in keys)]


def a_row_taking_only(connection: sqlite3.Connection, table: str, key: tuple[str, ...]) -> tuple[str, list]:
    """An INSERT OR REPLACE of a stored row of `table` whose other keys' columns are given new values:
    it meets one stored row, by `key` alone."""
    columns = [name for _, name, *_ in connection.execute(f"PRAGMA table_info({table})")]
    # The newest row holding the key (a NULL takes no unique key), which the rules of what may be
    # inserted next let through (a statement of the latest close), a paid invoice's where there is
    # one (the partial index of paid invoices).
    holding = " AND ".join([f"{column} IS NOT NULL" for column in key]
                           + (["type = 'invoice_paid'"] if table == "revenue_events" else []))
    row = list(connection.execute(f"SELECT * FROM {table} WHERE {holding} ORDER BY rowid DESC LIMIT 1").fetchone()
               or [])
    assert row, f"{table} holds no row to replace"
    others = {column for other in unique_keys(connection, table) if other != key for column in other} - set(key)
    for column in others:
        at = columns.index(column)
        if isinstance(row[at], int):
            row[at] = connection.execute(f"SELECT max({column}) + 1 FROM {table}").fetchone()[0]
        elif isinstance(row[at], str):
            row[at] = f"{row[at]}-new"
    return f"INSERT OR REPLACE INTO {table} VALUES ({', '.join('?' * len(columns))})", row


# Tables whose refusal of a REPLACE came before migration 0036, in their own words.
REPLACE_REFUSED = {table: f"^{table} is append-only: REPLACE refused$" for table in ("statement_documents",
                                                                                      "statement_bodies")}
REPLACE_REFUSED["currencies"] = "^currencies: the currencies the books keep change by a migration only$"  # any insert
# A key's revocation and a stored answer are inserted ON CONFLICT DO NOTHING, which a guard before the
# insert would refuse (migrations 0036 and 0042).
REPLACE_LET_THROUGH = {"api_key_revocations", "idempotency_records"}


def test_every_append_only_table_refuses_a_replace_by_each_of_its_keys_on_a_plain_sqlite_connection(
        sqlite_database):
    """The sqlite3 shell's connections leave `recursive_triggers` off, so a REPLACE deletes the row it
    meets without firing the delete guard: the guards before each insert refuse it (migration 0036
    and those before it). Each key is met alone, a stored row given new values for the others'
    columns."""
    with sqlite_database.transaction() as session:
        load_demo(session)
        accrual = session.execute(sa.text("SELECT max(id) FROM journal_transactions WHERE kind = 'accrual'")).scalar()
        reversals.reverse(session, accrual, reason="a reversal's row to replace")
    a_claim_taken(Books(sqlite_database))
    books = Books(sqlite_database)
    books.plan("withdrawn")
    books.plan_version("withdrawn", ahead(30))
    books.withdraw_version("withdrawn", 2)
    with sqlite_database.transaction() as session:
        create_key(session, "finance")
    connection = sqlite3.connect(sqlite_database.engine.url.database)
    try:
        assert connection.execute("PRAGMA recursive_triggers").fetchone() == (0,)
        append_only = [table for (table,) in connection.execute(
            "SELECT tbl_name FROM sqlite_master WHERE type = 'trigger' AND name = 'trg_' || tbl_name || '_no_delete'"
            " ORDER BY tbl_name")]
        assert len(append_only) >= 20, append_only
        for table in sorted(set(append_only) - REPLACE_LET_THROUGH):
            for key in unique_keys(connection, table):
                sql, row = a_row_taking_only(connection, table, key)
                qualified = ", ".join(f"{table}.{column}" for column in key)
                with pytest.raises(sqlite3.IntegrityError, match=REPLACE_REFUSED.get(
                        table, f"^{table} is append-only: its unique key {re.escape(qualified)} is taken$")):
                    connection.execute(sql, row)
                connection.rollback()
    finally:
        connection.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_sealed_line_is_not_replaced_by_a_line_of_a_new_transaction_on_a_plain_sqlite_connection(booked):
    """With `recursive_triggers` off (the sqlite3 shell), a REPLACE of transaction 1's line by a line
    of a new transaction, sealed with a second line of its own, deleted the old line unguarded: the
    seal reads the new line's transaction, and accounts with no running total yet met no totals
    guard. Transaction 1 was left unbalanced in its period. Migration 0043 refuses a taken line id."""
    with booked.transaction() as session:
        ids = chart.account_ids(session, [chart.EXPENSE_ADJUSTMENT, chart.available("northwind")])
    plain = sa.create_engine(booked.engine.url)  # SQLAlchemy's own connections set no pragma
    try:
        with pytest.raises(sa.exc.IntegrityError, match="^.*journal_lines is append-only: its unique key "
                                                        r"journal_lines\.id is taken"):
            with plain.begin() as connection:
                assert connection.exec_driver_sql("PRAGMA recursive_triggers").scalar() == 0
                connection.execute(sa.text(
                    "INSERT OR REPLACE INTO journal_lines (id, transaction_id, account_id, currency, side,"
                    " amount_minor, effective_at_us) VALUES (1, 2, :a, 'USD', 'D', 100, 6)"),
                    {"a": ids[chart.EXPENSE_ADJUSTMENT]})
                insert_line(connection, 2, ids[chart.available("northwind")], "C", 100, at=6)
                insert_header(connection, 2, head_hash(connection), at=6, kind="adjustment", partner_id="northwind",
                              memo="goodwill")
    finally:
        plain.dispose()
    assert lines_of(booked, 1) == 2


@pytest.mark.postgres
@pytest.mark.parametrize("table", ["journal_lines", "journal_transactions", "accounts"])
def test_truncate_is_refused_on_postgres(postgres_database, table):
    refused(postgres_database, lambda c: c.exec_driver_sql(f"TRUNCATE {table} CASCADE"), "append-only")


@pytest.mark.postgres
@pytest.mark.parametrize("table, match", [
    *((table, f"{table} is append-only: TRUNCATE refused") for table in (
        "plans", "plan_versions", "partners", "partner_statuses", "partner_plans", "customers", "attributions",
        "revenue_events", "period_closes", "period_snapshots", "payout_runs", "payouts", "payout_resolutions",
        "statement_documents", "api_keys", "idempotency_records", "api_key_revocations")),
    ("account_totals", "account_totals: totals are kept by the database from the journal lines: TRUNCATE refused"),
])
def test_truncate_of_every_other_table_of_record_is_refused_on_postgres(postgres_database, table, match):
    refused(postgres_database, lambda c: c.exec_driver_sql(f"TRUNCATE {table} CASCADE"), match)


def test_an_idempotency_key_and_a_reversal_are_unique(booked):
    def reused_key(connection):
        expense, pending = account_ids(connection)
        insert_line(connection, 2, expense, "D", 100)
        insert_line(connection, 2, pending, "C", 100)
        insert_header(connection, 2, head_hash(connection), key="a1")
    refused(booked, reused_key, "(?i)unique|duplicate")
    with booked.transaction() as session:
        journal.reverse(session, 1, reason="once")

    def second_reversal(connection):
        expense, pending = account_ids(connection)
        insert_line(connection, 3, expense, "C", 100)
        insert_line(connection, 3, pending, "D", 100)
        connection.execute(sa.text(
            "INSERT INTO journal_transactions (id, kind, effective_at_us, recorded_at_us, idempotency_key, "
            "request_hash, prev_hash, hash, reverses_id) VALUES (3, 'reversal', 5, 1, 'r2', :h, :p, :h, 1)"),
            dict(h="e" * 64, p=head_hash(connection)))
    refused(booked, second_reversal, "(?i)unique|duplicate")


def a_claim_taken(books: Books) -> None:
    """A row of `cpa_claims_taken`: a customer's payment delivered after a later-dated one."""
    books.plan("claims", "0.10", cpa={"USD": "150.00"})
    books.partner("claims-partner", "claims")
    books.attribute("claims-customer", "claims-partner", "2026-01-01")
    books.paid("claims-customer", "claims-feb", "500.00", "2026-02-05", event_id="claims-feb")
    books.paid("claims-customer", "claims-jan", "500.00", "2026-01-05", event_id="claims-jan")
    assert books.sql("SELECT event_id, from_event_id FROM cpa_claims_taken") == [("claims-jan", "claims-feb")]
