"""Reads use their covering indexes, and the bulk path's statement count does not grow per event.

The queries checked are the ones the domain actually sends: a `before_cursor_execute` listener
records them while `partner_balances`, `statement` and `trial_balance` run, then each query over
`journal_lines` is explained on the same connection. On PostgreSQL sequential scans are switched
off for the EXPLAIN (a table this small is cheaper to scan; the question is whether the index
serves the query, not what the planner prefers for ten rows). For one partner's reads the period
index is also dropped for the EXPLAIN (and restored by the rollback): one partner's statement names
its accounts by a join and learns the close's end inside the statement, and for a range bound it
cannot see PostgreSQL assumes 0.5% of the table, so on sixty lines a time range looks as narrow as
an account. Which index the planner picks at a realistic size is not checked here, nor by bench/
(which times these reads on a grown journal but does not explain them); here the question is
whether the balance index serves the query, by account and instant. No timing is asserted anywhere.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from ledger import balances, holds, journal, periods, reversals, revenue, transactions
from ledger.balances import partner_balances
from ledger.statements import statement, statement_json
from ledger.trial_balance import trial_balance
from tests import program
from tests.program import at

# Migration 0022's check of what is posted against a piece (its file name is no module name).
_spec = importlib.util.spec_from_file_location(
    "_revision_0022", Path(__file__).parents[2] / "migrations" / "versions" / "0022_pieces_held.py")
_0022 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_0022)
PIECE_GUARD = _0022.REFUSED_WHEN


@contextlib.contextmanager
def recorded(engine) -> Iterator[list[tuple[str, object]]]:
    statements: list[tuple[str, object]] = []

    def record(_connection, _cursor, sql, parameters, _context, _executemany) -> None:
        statements.append((sql, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def closed_books(database):
    """Four months of invoices for northwind (under globex), January and February closed."""
    with database.transaction() as session:
        program.seed(session)
    with database.transaction() as session:
        revenue.ingest(session, program.monthly_events(months=4))
    for period in ("2026-01", "2026-02"):
        with database.transaction() as session:
            periods.close_period(session, period, now_us=at("2026-06-01"))
    return database


def compiled(database, statement) -> str:
    """`statement`'s SQL as the engine sends it."""
    return str(statement.compile(dialect=database.engine.dialect))


def plans_of_line_queries(database, statements, *, without: tuple[str, ...] = ()) -> list[str]:
    """The plan of every recorded SELECT that reads journal_lines (`explained`), but the question of
    which way a bounded balance is read, asked beside the running totals (`balances._CLOSES_AROUND`,
    checked on its own below)."""
    totals_as_of = {compiled(database, totals.as_of) for totals in TOTALS}
    return explained(database, [(sql, parameters) for sql, parameters in statements
                                if sql.lstrip().upper().startswith(("SELECT", "WITH")) and "journal_lines" in sql
                                and sql not in totals_as_of], without=without)


TOTALS = (balances._ONE_PARTNER_TOTALS, balances._EVERY_ACCOUNT_TOTALS, balances._PARTNER_ACCOUNTS_TOTALS)


def explained(database, statements, *, without: tuple[str, ...] = ()) -> list[str]:
    """The plan (one string) of each statement, explained with the indexes `without` names dropped
    (in a transaction that is rolled back)."""
    with database.engine.connect() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            connection.exec_driver_sql("SET enable_seqscan = off")
        for index in without:
            connection.exec_driver_sql(f"DROP INDEX {index}")
        prefix = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
        plans = [" | ".join(str(row[-1]) for row in connection.exec_driver_sql(prefix + sql, parameters).all())
                 for sql, parameters in statements]
        connection.rollback()
    return plans


def contenders(postgres: bool) -> tuple[str, ...]:
    """Indexes out of the running for one partner's reads (see the module's docstring)."""
    return ("ix_journal_lines_period",) if postgres else ()


def uses_index(plan: str, index: str, postgres: bool) -> bool:
    """The plan searches journal_lines through `index` (a statement also reads each line's row for
    its transaction id: an index search, not necessarily a covering one)."""
    if postgres:
        return any(f"{scan} {index}" in plan for scan in (
            "Index Only Scan using", "Index Scan using", "Bitmap Index Scan on"))
    return f"SEARCH journal_lines USING COVERING INDEX {index} " in plan or (
        f"SEARCH journal_lines USING INDEX {index} " in plan)


def reads_no_table(plan: str, postgres: bool) -> bool:
    """Every line comes from a covering index: no scan of the table itself."""
    if postgres:
        return "Seq Scan on journal_lines" not in plan
    accesses = re.findall(r"(?:SCAN|SEARCH) journal_lines(?: USING (?:COVERING )?INDEX \w+)?", plan)
    return bool(accesses) and all("USING COVERING INDEX" in access for access in accesses)


BALANCE_INDEX_RANGE = {
    # Index only, searched by one account and a range of instants (read back from the running
    # totals, one with no upper end), and one partner's for each currency of its running totals.
    True: re.compile(r"Index Only Scan using ix_journal_lines_balance on journal_lines [^|]*\|\s*"
                     r"Index Cond: \(\(account_id = [\w.$]+\) AND \(effective_at_us >= [^|)]+\)"
                     r"(?: AND \(effective_at_us <=? [^|)]+\))?(?: AND \(currency = \([\w.]+\)::text\))?\)"),
    False: re.compile(r"SEARCH journal_lines USING COVERING INDEX ix_journal_lines_balance "
                      r"\(account_id=\? AND effective_at_us>\?(?: AND effective_at_us<\?)?\)"),
}
LINE_ACCESS = {
    True: re.compile(r"(?:Seq Scan|Bitmap Heap Scan|Index (?:Only )?Scan using \w+) on journal_lines"),
    False: re.compile(r"(?:SCAN|SEARCH) journal_lines(?: USING (?:COVERING )?INDEX \w+)?"),
}


def range_scans_the_balance_index_only(plan: str, postgres: bool) -> bool:
    """Every read of journal_lines in the plan is an index-only range scan of the balance index by
    account and instant: one search per account, never the table, never the whole index."""
    accesses = LINE_ACCESS[postgres].findall(plan)
    return bool(accesses) and len(BALANCE_INDEX_RANGE[postgres].findall(plan)) == len(accesses)


@pytest.mark.parametrize("read", [
    lambda session: partner_balances(session, "northwind", before_us=at("2026-03-15")),
    lambda session: statement(session, "northwind", "2026-02"),
    lambda session: statement(session, "northwind", "2026-03"),
], ids=["balance-as-of", "statement-closed", "statement-open"])
def test_one_partners_reads_search_the_balance_index_by_account_and_instant(closed_books, read):
    with recorded(closed_books.engine) as statements, closed_books.reader() as session:
        read(session)
    postgres = closed_books.engine.dialect.name == "postgresql"
    plans = plans_of_line_queries(closed_books, statements, without=contenders(postgres))
    assert plans, "the read sent no query over journal_lines"
    for plan in plans:
        assert uses_index(plan, "ix_journal_lines_balance", postgres), plan


@pytest.mark.parametrize("before, way", [
    ("2026-01-15", balances.FORWARD), ("2026-01-25", balances.FROM_CLOSE), ("2026-02-01", balances.FORWARD),
    ("2026-02-01T00:00:00.000001Z", balances.FORWARD), ("2026-02-27", balances.FROM_CLOSE),
    ("2026-03-15", balances.FORWARD), ("2026-04-04", balances.FROM_TOTALS),
], ids=["before-any-close", "late-in-a-closed-month", "at-a-close", "just-after-a-close", "just-before-a-close",
        "after-the-last-close", "near-the-last-line"])
def test_a_partners_earlier_balance_is_one_statement_range_scanning_the_balance_index_only(closed_books, before,
                                                                                            way):
    # The running totals are read first, with the closes around the bound, and hold lines at or
    # after it; then one statement over the lines, from the nearer end. The closed books
    # hold January's and February's closes and lines from January 10 to April 10.
    with closed_books.reader() as session:
        assert session.execute(sa.text("SELECT min(effective_at_us), max(effective_at_us) FROM journal_lines")
                               ).one() == (at("2026-01-10"), at("2026-04-10"))
    with recorded(closed_books.engine) as statements, closed_books.reader() as session:
        partner_balances(session, "northwind", before_us=at(before))
    queries = [sql for sql, _ in statements if sql.lstrip().upper().startswith(("SELECT", "WITH"))]
    postgres = closed_books.engine.dialect.name == "postgresql"
    assert queries == [compiled(closed_books, balances._ONE_PARTNER_TOTALS.as_of),  # (SQLite's own BEGIN aside)
                       compiled(closed_books, balances._ONE_PARTNER[postgres][way])], queries
    [plan] = plans_of_line_queries(closed_books, statements, without=contenders(postgres))
    assert range_scans_the_balance_index_only(plan, postgres), plan


CLOSES_END = {True: "Index Only Scan{} using uq_period_closes_ends_at_us on period_closes",
              False: "SEARCH period_closes USING COVERING INDEX sqlite_autoindex_period_closes_3"}
WAY_ASKED_BY_INDEXES = {
    # Each end of the closes by their unique index, and the first line from one end of the period index.
    True: (re.compile(r"Limit [^|]*\|\s*-> +" + CLOSES_END[True].format(" Backward")
                      + r" [^|]*\|\s*Index Cond: \(\(ends_at_us IS NOT NULL\) AND \(ends_at_us <= "),
           re.compile(r"Limit [^|]*\|\s*-> +Index Only Scan using ix_journal_lines_period on journal_lines "
                      r"[^|]*\|\s*Index Cond: \(effective_at_us IS NOT NULL\)"),
           re.compile(r"Limit [^|]*\|\s*-> +" + CLOSES_END[True].format("")
                      + r" \w+ [^|]*\|\s*Index Cond: \(\(ends_at_us IS NOT NULL\) AND \(ends_at_us > ")),
    False: (re.compile(CLOSES_END[False] + r" \(ends_at_us<\?\)"),
            re.compile(r"SEARCH journal_lines USING COVERING INDEX ix_journal_lines_period \|"),
            re.compile(CLOSES_END[False] + r" \(ends_at_us>\?\)")),
}


def test_which_way_a_bound_is_read_is_asked_of_an_end_of_three_indexes(closed_books):
    with recorded(closed_books.engine) as statements, closed_books.reader() as session:
        partner_balances(session, "northwind", before_us=at("2026-01-15"))
    totals = compiled(closed_books, balances._ONE_PARTNER_TOTALS.as_of)
    [plan] = plans_of_queries(closed_books, [(sql, parameters) for sql, parameters in statements if sql == totals])
    postgres = closed_books.engine.dialect.name == "postgresql"
    for at_an_end in WAY_ASKED_BY_INDEXES[postgres]:
        assert at_an_end.search(plan), plan
    reads = re.findall(r"(?:SCAN|SEARCH|on) (?:journal_lines|period_closes)\b", plan)
    assert len(reads) == 3, plan  # and no other read


def test_without_the_balance_index_the_balance_statement_fails_the_check(closed_books):
    # The negative space: the check above sees the difference when the index is gone.
    with recorded(closed_books.engine) as statements, closed_books.reader() as session:
        partner_balances(session, "northwind", before_us=at("2026-03-15"))
    postgres = closed_books.engine.dialect.name == "postgresql"
    [plan] = plans_of_line_queries(closed_books, statements,
                                   without=contenders(postgres) + ("ix_journal_lines_balance",))
    assert not range_scans_the_balance_index_only(plan, postgres), plan
    assert not uses_index(plan, "ix_journal_lines_balance", postgres), plan


def plans_of_queries(database, statements) -> list[str]:
    """The plan (one string) of every recorded SELECT."""
    with database.engine.connect() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            connection.exec_driver_sql("SET enable_seqscan = off")
        return [" | ".join(str(row[-1]) for row in connection.exec_driver_sql(
                    ("EXPLAIN " if postgres else "EXPLAIN QUERY PLAN ") + sql, parameters).all())
                for sql, parameters in statements if sql.lstrip().upper().startswith(("SELECT", "WITH"))]


TOTALS_BY_KEY = {
    True: re.compile(r"(?:Index Scan using pk_account_totals on account_totals|Bitmap Index Scan on pk_account_totals)"
                     r"[^|]*\|(?:[^|]*\|)?\s*Index Cond: \(account_id = "),
    False: re.compile(r"SEARCH account_totals USING PRIMARY KEY \(account_id=\?\)"),
}


STORED_BY_PERIOD_AND_PARTNER = {
    True: re.compile(r"Index Scan using pk_statement_documents on statement_documents[^|]*\|\s*Index Cond: "
                     r"\(\(\(period\)::text = [^|]+\) AND \(\(partner_id\)::text = "),
    False: re.compile(r"SEARCH statement_documents USING INDEX sqlite_autoindex_statement_documents_1 "
                      r"\(period=\? AND partner_id=\?\)"),
}


def test_a_closed_months_statement_reads_its_stored_documents_by_period_and_partner(closed_books):
    with recorded(closed_books.engine) as statements, closed_books.reader() as session:
        found = statement(session, "northwind", "2026-02")
    assert found.period_status == "closed" and any(section.lines for section in found.currencies)
    assert not [sql for sql, _ in statements if "journal_transactions" in sql]  # no look-up in the journal
    stored = [(sql, parameters) for sql, parameters in statements if "statement_documents" in sql]
    [plan] = plans_of_queries(closed_books, stored)
    assert STORED_BY_PERIOD_AND_PARTNER[closed_books.engine.dialect.name == "postgresql"].search(plan), plan


# A partner's documents of a closed month and their bodies, each by its primary key's period and
# partner (PostgreSQL matches the currency in the join: a partner has a few).
SERVED_BY_KEYS = {
    True: (re.compile(r"Index (?:Only )?Scan using pk_statement_documents on statement_documents d[^|]*\|\s*"
                      r"Index Cond: \(\(period = [^|]+\) AND \(partner_id = "),
           re.compile(r"Index Scan using pk_statement_bodies on statement_bodies b[^|]*\|\s*Index Cond: "
                      r"\(\(\(period\)::text = [^|]+\) AND \(\(partner_id\)::text = ")),
    False: (re.compile(r"SEARCH d USING (?:COVERING )?INDEX sqlite_autoindex_statement_documents_1 "
                       r"\(period=\? AND partner_id=\?\)"),
            re.compile(r"SEARCH b USING INDEX sqlite_autoindex_statement_bodies_1 "
                       r"\(period=\? AND partner_id=\? AND currency=\?\)")),
}


def test_a_closed_months_statement_as_served_reads_its_documents_and_bodies_by_their_keys(closed_books):
    with recorded(closed_books.engine) as statements, closed_books.reader() as session:
        served = statement_json(session, "northwind", "2026-02")
    assert b'"lines":[{' in served
    assert not [sql for sql, _ in statements if "journal_transactions" in sql]  # no look-up in the journal
    stored = [(sql, parameters) for sql, parameters in statements if "statement_bodies" in sql]
    [plan] = plans_of_queries(closed_books, stored)
    for by_key in SERVED_BY_KEYS[closed_books.engine.dialect.name == "postgresql"]:
        assert by_key.search(plan), plan


@pytest.mark.parametrize("before", [None, "2099-01-01"], ids=["no-bound", "as-of-now"])
def test_a_partners_current_balance_is_one_statement_reading_two_running_totals_by_key(closed_books, before):
    with recorded(closed_books.engine) as statements, closed_books.reader() as session:
        found = partner_balances(session, "northwind", before_us=None if before is None else at(before))
    assert found["USD"][0] > 0  # (that they equal the lines' sums: tests/integration/test_balance_reads.py)
    postgres = closed_books.engine.dialect.name == "postgresql"
    [plan] = plans_of_queries(closed_books, statements)
    assert ("journal_lines" not in plan) if before is None else reads_the_first_lines_instant_only(plan, postgres), plan
    assert TOTALS_BY_KEY[postgres].search(plan), plan


def reads_the_first_lines_instant_only(plan: str, postgres: bool) -> bool:
    """Of the lines, the plan reads only the first one's instant, at one end of the period index: the
    closes around a bound are asked beside the running totals, which need no line as of now."""
    return (len(LINE_ACCESS[postgres].findall(plan)) == 1
            and WAY_ASKED_BY_INDEXES[postgres][1].search(plan) is not None)


def test_the_current_trial_balance_reads_the_running_totals_not_the_lines(closed_books):
    with recorded(closed_books.engine) as statements, closed_books.reader() as session:
        found = trial_balance(session, before_us=at("2099-01-01"))
    assert found.rows and found.balanced
    plans = plans_of_queries(closed_books, statements)
    postgres = closed_books.engine.dialect.name == "postgresql"
    assert len(plans) == 1 and "account_totals" in plans[0], plans
    assert reads_the_first_lines_instant_only(plans[0], postgres), plans


def test_the_trial_balance_reads_lines_from_a_covering_index_only(closed_books):
    # Without statistics SQLite scans the balance index rather than searching the period index
    # for a one-sided range; either way the table itself is never read.
    with recorded(closed_books.engine) as statements, closed_books.reader() as session:
        trial_balance(session, before_us=at("2026-03-15"))
    postgres = closed_books.engine.dialect.name == "postgresql"
    plans = plans_of_line_queries(closed_books, statements)
    assert plans and all(reads_no_table(plan, postgres) for plan in plans), plans


def test_closing_a_period_finds_and_sums_its_lines_through_the_period_index(database):
    with database.transaction() as session:
        program.seed(session)
    with database.transaction() as session:
        revenue.ingest(session, program.monthly_events(months=3))
    with database.transaction() as session:
        periods.close_period(session, "2026-01", now_us=at("2026-06-01"))
    with recorded(database.engine) as statements, database.transaction() as session:
        periods.close_period(session, "2026-02", now_us=at("2026-06-01"))
    postgres = database.engine.dialect.name == "postgresql"
    plans = plans_of_line_queries(database, statements)
    ranged = [plan for plan in plans if uses_index(plan, "ix_journal_lines_period", postgres)]
    assert ranged, plans
    assert all(reads_no_table(plan, postgres) or "ix_journal_lines" in plan for plan in plans), plans


def test_a_release_transaction_takes_its_holds_from_the_queue_by_the_maturity_index(database):
    with database.transaction() as session:
        program.seed(session)
    with database.transaction() as session:
        revenue.ingest(session, program.monthly_events(months=3))
    with recorded(database.engine) as statements:
        assert holds.release_in_transactions(database.transaction, at("2026-05-01"), holds_per_transaction=4) > 4
    postgres = database.engine.dialect.name == "postgresql"
    queue_reads = [(sql, parameters) for sql, parameters in statements
                   if sql.lstrip().startswith("SELECT") and "FROM open_holds" in sql]
    assert len(queue_reads) > 1, statements  # a read per transaction
    with database.engine.connect() as connection:
        if postgres:
            connection.exec_driver_sql("SET enable_seqscan = off")
        prefix = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
        plans = [" | ".join(str(row[-1]) for row in connection.exec_driver_sql(prefix + sql, parameters))
                 for sql, parameters in queue_reads]
        connection.rollback()
    # the oldest maturities first, each slice one range of the (maturity, accrual) index: never a
    # scan or a sort of the whole queue
    for plan in plans:
        if postgres:
            assert plan.startswith("Limit"), plan
            assert re.search(r"Index (Only )?Scan using ix_open_holds_matures_at_us_accrual_id on open_holds",
                             plan), plan
            assert "Seq Scan on open_holds" not in plan and "Sort Key" not in plan, plan
        else:
            assert re.search(r"SEARCH open_holds USING (COVERING )?INDEX ix_open_holds_matures_at_us_accrual_id ",
                             plan), plan
            assert "SCAN open_holds" not in plan and "TEMP B-TREE" not in plan, plan


def paid_batch(count: int, prefix: str) -> list[revenue.RevenueEvent]:
    customers = ("acme", "globex-corp", "initrode")
    return [program.paid(f"{prefix}-{n}", customers[n % 3], f"{prefix}-inv-{n}", 1_000 + n, "2026-02-10")
            for n in range(count)]


def statements_to_ingest(database, events) -> int:
    with recorded(database.engine) as statements, database.transaction() as session:
        results = revenue.ingest(session, events)
    assert not any(isinstance(result, revenue.Refusal) for result in results)
    return len(statements)


def test_the_bulk_path_sends_a_bounded_number_of_statements_per_batch_not_per_event(database):
    with database.transaction() as session:
        program.seed(session)
    statements_to_ingest(database, paid_batch(3, "warm"))  # every account exists from here on
    small = statements_to_ingest(database, paid_batch(20, "small"))
    large = statements_to_ingest(database, paid_batch(400, "large"))
    redelivered = statements_to_ingest(database, paid_batch(400, "large"))
    # 400 events post about 800 transactions: per-event statements would be in the thousands. (On
    # PostgreSQL a large write is a COPY, which the listener does not see: hence <=, not ==.)
    assert large <= small, (small, large)
    assert small < 40 and redelivered < 40, (small, redelivered)


GUARD_QUERIES = ("FROM added a WHERE a.transaction_id >= 1", "FROM journal_transactions n LEFT JOIN LATERAL")
JOURNAL_SCAN = re.compile(r"Seq Scan on journal_|Hash Cond|Merge Cond")
JOURNAL_BY_INDEX = re.compile(
    r"Index (?:Only )?Scan (?:Backward )?using \w+ on journal_|Bitmap Index Scan on (?:ix|pk)_journal_")


def guard_plans(database, events, queries: tuple[str, ...] = GUARD_QUERIES) -> list[str]:
    """The plans PostgreSQL runs for the journal's statement guards while `events` are ingested in
    one transaction (auto_explain, reported to this connection as notices)."""
    return plans_while(database, lambda session: revenue.ingest(session, events), queries)


def plans_while(database, act, queries: tuple[str, ...]) -> list[str]:
    """The plans PostgreSQL runs for the statements holding one of `queries` while `act(session)`
    runs in one transaction (auto_explain, reported to this connection as notices)."""
    notices: list[str] = []

    def note(diagnostic) -> None:
        notices.append(diagnostic.message_primary or "")

    with database.transaction() as session:
        driver = session.connection().connection.driver_connection
        driver.add_notice_handler(note)
        try:
            for setting in ("LOAD 'auto_explain'", "SET LOCAL auto_explain.log_min_duration = 0",
                            "SET LOCAL auto_explain.log_nested_statements = on",
                            "SET LOCAL auto_explain.log_level = 'notice'"):
                driver.execute(setting)
            act(session)
        finally:
            driver.remove_notice_handler(note)
    return [notice for notice in notices if any(query in notice for query in queries)]


@pytest.mark.postgres
def test_postgresql_guards_look_the_checked_rows_up_by_index_on_a_journal_of_any_size(postgres_database):
    # Migration 0009. On a journal this small the planner would rather scan the whole table and
    # hash it; a connection keeps that plan as the journal grows, so the guards must not choose it.
    with postgres_database.transaction() as session:
        program.seed(session)
    statements_to_ingest(postgres_database, paid_batch(2, "warm"))
    plans = guard_plans(postgres_database, paid_batch(1, "one")) + guard_plans(postgres_database,
                                                                                paid_batch(60, "batch"))
    assert len(plans) >= 4, plans  # sealed lines and the seal's rules (migration 0032), per posting statement
    for plan in plans:
        assert not JOURNAL_SCAN.search(plan), plan
        assert JOURNAL_BY_INDEX.search(plan), plan
    # The settings are the functions' own: a later CREATE OR REPLACE that dropped them shows here.
    with postgres_database.engine.connect() as connection:
        settings = dict(connection.exec_driver_sql(
            "SELECT proname, proconfig FROM pg_proc "
            "WHERE proname IN ('journal_lines_refuse_sealed', 'journal_transactions_seal')").all())
    by_index = ["enable_bitmapscan=off", "enable_hashjoin=off", "enable_material=off", "enable_mergejoin=off",
                "enable_seqscan=off", "jit=off", "search_path=public, pg_temp"]
    assert {name: sorted(config) for name, config in settings.items()} == {
        "journal_lines_refuse_sealed": by_index,
        "journal_transactions_seal": sorted([*by_index, "plan_cache_mode=force_generic_plan"])}


def test_every_guard_that_reads_by_key_refuses_the_plans_of_a_table_taken_for_small(postgres_database):
    # Migration 0037: before a table's first ANALYZE, the holds queue's guard read the accruals whole
    # into a materialized side and compared every queued hold with each (bulk ingestion grew
    # quadratic), and the seal ANDed a bitmap of the lines' period index by `side`.
    with postgres_database.engine.connect() as connection:
        settings = dict(connection.exec_driver_sql(
            "SELECT proname, proconfig FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
            " AND 'enable_seqscan=off' = ANY(proconfig)").all())
    assert sorted(settings) == ["journal_lines_refuse_sealed", "journal_transactions_of_their_event",
                                "journal_transactions_seal", "open_holds_of_a_piece", "revenue_events_as_posted",
                                "revenue_events_due_added", "revenue_events_due_cleared", "revenue_events_due_met"]
    by_key = {"enable_bitmapscan=off", "enable_hashjoin=off", "enable_material=off", "enable_mergejoin=off"}
    assert {name: by_key - set(config) for name, config in settings.items()} == {name: set() for name in settings}


@pytest.mark.postgres
def test_the_list_of_postings_awaiting_their_event_is_read_and_written_by_key(postgres_database):
    """Migration 0065: each posting of a batch is listed by one probe of the events' key, and each
    event takes its postings off by the list's key, its event first, however many events are stored."""
    with postgres_database.transaction() as session:
        program.seed(session)
    statements_to_ingest(postgres_database, paid_batch(2, "warm"))
    plans = guard_plans(postgres_database, paid_batch(60, "listed"),
                        ("FROM added n WHERE n.event_id IS NOT NULL", "DELETE FROM revenue_events_due d"))
    [listed] = [plan for plan in plans if "INSERT INTO revenue_events_due" in plan]
    [cleared] = [plan for plan in plans if "DELETE FROM revenue_events_due" in plan]
    assert "Index Only Scan using pk_revenue_events on revenue_events" in listed, listed
    assert "Index Scan using pk_revenue_events_due on revenue_events_due" in cleared, cleared
    for plan in (listed, cleared):
        assert not re.search(r"Seq Scan on revenue_events|Hash Cond|Merge Cond", plan), plan


def test_the_guard_of_what_is_posted_against_a_piece_reads_it_by_index(database):
    """Migration 0022: each clawback and release is checked against its piece's postings, which the
    guard finds by the index on accrual_id, however large the journal."""
    with database.transaction() as session:
        program.seed(session)
        revenue.ingest(session, program.monthly_events(months=2))
    release = lambda session: holds.release_matured(session, at("2026-03-15"))  # noqa: E731
    if database.engine.dialect.name == "postgresql":
        [plan] = plans_while(database, release, ("FROM added n WHERE n.kind IN ('clawback', 'release') AND",))
        assert not JOURNAL_SCAN.search(plan), plan
        assert "Index Scan using ix_journal_transactions_accrual_id on journal_transactions" in plan, plan
        assert "ix_journal_lines_balance" not in plan, plan  # no account's lines read
        return
    with database.transaction() as session:
        assert release(session) > 0
    with database.engine.connect() as connection:
        release = connection.exec_driver_sql("SELECT id, accrual_id, partner_id, invoice_id, kind"
                                             " FROM journal_transactions WHERE kind = 'release' LIMIT 1").one()
        values = {name: repr(value) for name, value in release._mapping.items()}  # SQL literals, ints and texts
        condition = re.sub(r"\bn\.(\w+)\b", lambda found: values[found[1]], PIECE_GUARD)
        plan = "\n".join(row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN SELECT {condition}"))
    assert "SEARCH c USING INDEX ix_journal_transactions_accrual_id (accrual_id=?)" in plan, plan
    assert not re.search(r"SCAN (?!CONSTANT)|ix_journal_lines_balance", plan), plan


ONE_END_OF_THE_PERIOD_INDEX = {
    True: re.compile(r"Limit [^|]*\|\s*-> +Index Only Scan (?:Backward )?using ix_journal_lines_period "
                     r"on journal_lines"),
    False: re.compile(r"SEARCH journal_lines USING COVERING INDEX ix_journal_lines_period$"),
}


def listed_cheaply(database, after: str | None, count: int, now: str = "2026-06-15") -> list[str]:
    """The periods `books_periods` lists at `now`, checked to be read with at most four
    statements whatever the number of closes: a page of closes by key, the latest close, and each
    end of the period index; none counts, reads a snapshot or reads a range of lines."""
    with recorded(database.engine) as statements, database.reader() as session:
        listed = periods.books_periods(session, after=after, count=count, now_us=at(now))
    queries = [(sql, parameters) for sql, parameters in statements if sql.lstrip().upper().startswith("SELECT")]
    assert len(queries) <= 4, queries
    assert not [sql for sql, _ in queries if "count(" in sql or "period_snapshots" in sql], queries
    assert all(" LIMIT " in sql for sql, _ in queries if "FROM period_closes" in sql), queries
    postgres = database.engine.dialect.name == "postgresql"
    for plan in plans_of_queries(database, queries):
        if "journal_lines" in plan:
            assert ONE_END_OF_THE_PERIOD_INDEX[postgres].search(plan), plan
            assert len(re.findall(r"(?:SCAN|SEARCH|on) journal_lines\b", plan)) == 1, plan  # and no other read
        else:
            assert "period_closes" in plan and ("Index Scan" if postgres else "USING INDEX") in plan, plan
    return [entry.period for entry in listed]


def test_a_page_of_the_books_periods_reads_a_page_of_closes_and_the_ends_of_the_period_index(database):
    with database.transaction() as session:
        program.seed(session)
    with database.transaction() as session:
        revenue.ingest(session, program.monthly_events(months=4))
    months = ["2026-01", "2026-02", "2026-03", "2026-04", "2026-05", "2026-06"]
    assert listed_cheaply(database, None, 10) == months  # nothing closed: from the first posting's period
    assert listed_cheaply(database, None, 10, now="2026-02-15") == months[:4]  # through the latest posting's
    for period in ("2026-01", "2026-02"):
        with database.transaction() as session:
            periods.close_period(session, period, now_us=at("2026-06-01"))
    assert listed_cheaply(database, None, 2) == months[:2]  # a page of closes alone
    assert listed_cheaply(database, None, 10) == months
    assert listed_cheaply(database, "2026-01", 3) == months[1:4]  # across the last close
    assert listed_cheaply(database, "2026-04", 10) == months[4:]  # past every close


def event_checks() -> tuple[str, ...]:
    """Migration 0034's checks over a statement's new events, as migration 0049 runs them."""
    from migrations.earlier import revision
    kept = revision("0049_guards_planned_for_a_growing_journal.py").kept_subqueries
    return tuple(kept(refused_when)
                 for refused_when, _ in revision("0034_statuses_and_close_times_held.py").POSTGRES_EVENT_CHECKS)


@pytest.mark.postgres
def test_the_guard_of_what_an_events_status_says_reads_each_row_by_index(postgres_database):
    """Migration 0034's six checks over a statement's new events: each read by index (a subquery run
    for each new event since migration 0049, a semi- or anti-join before it), not a subplan hashing
    every attribution, payment or transaction naming an event."""
    checks = event_checks()
    with postgres_database.transaction() as session:
        program.seed(session)
    statements_to_ingest(postgres_database, paid_batch(40, "warm"))
    batch = [*paid_batch(20, "mixed"), program.paid("u1", "stranger", "inv-u1", 5_000, "2026-02-01"),
             program.paid("u1-refund", "stranger", "inv-u1", 1_000, "2026-02-02", "refund"),
             program.paid("p1-refund", "acme", "mixed-inv-0", 1_000, "2026-03-01", "refund")]
    plans = plans_while(postgres_database, lambda session: revenue.ingest(session, batch), checks)
    assert len(plans) == len(checks), plans
    for plan in plans:
        assert not re.search(r"Seq Scan on (?!added)|hashed SubPlan|Hash Cond|Merge Cond", plan), plan
        assert re.search(r"Index (?:Only )?Scan using \w+ on (?:attributions|revenue_events|journal_transactions)",
                         plan), plan


@pytest.mark.postgres
def test_the_statement_guards_read_by_key_when_the_statistics_say_the_journal_is_empty(postgres_database):
    """Migration 0049. Analyzed empty (a new database, or autovacuum after a first batch rolled back),
    the journal was planned as the outer side of a join with the statement's new rows, and read
    whole for each statement as a batch grew it: a 10,000-event batch outlived the worker's timeout.
    Now the sealed-lines guard reads the journal's greatest id by the primary key, and each of the
    event guard's checks is a subquery run for each new event by index."""
    checks = event_checks()
    with postgres_database.transaction() as session:
        program.seed(session)
    with postgres_database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("ANALYZE")
        assert connection.exec_driver_sql(
            "SELECT reltuples FROM pg_class WHERE relname = 'journal_transactions'").scalar_one() == 0
    batch = [*paid_batch(30, "grow"), program.paid("g-refund", "acme", "grow-inv-0", 1_000, "2026-03-01", "refund")]
    plans = plans_while(postgres_database, lambda session: revenue.ingest(session, batch), (GUARD_QUERIES[0], *checks))
    sealed = [plan for plan in plans if GUARD_QUERIES[0] in plan]
    events = [plan for plan in plans if GUARD_QUERIES[0] not in plan]
    assert sealed and len(events) == len(checks), (sealed, events)
    for plan in sealed:
        assert "Nested Loop" not in plan and "Index Only Scan Backward using pk_journal_transactions" in plan, plan
    for plan in events:
        assert not re.search(r"Nested Loop|Join|Seq Scan on (?!added)", plan), plan
        assert re.search(r"SubPlan \d+\s+->  Index (?:Only )?Scan using \w+ on \w+", plan), plan


@pytest.mark.postgres
def test_the_guard_of_a_reversals_mirror_reads_the_two_transactions_lines_by_index(postgres_database):
    """Migration 0039: an `EXISTS` over the two transactions' lines grouped by account read every line
    of the journal in the balance index's order, for its first row; the count of unbalanced groups
    reads the lines of the two transactions through their index."""
    with postgres_database.transaction() as session:
        program.seed(session)
    statements_to_ingest(postgres_database, paid_batch(300, "lines"))
    with postgres_database.reader() as session:
        accrual = session.execute(sa.text("SELECT max(id) FROM journal_transactions WHERE kind = 'accrual'")).scalar()
    plans = plans_while(postgres_database, lambda session: reversals.reverse(session, accrual, reason="a plan"),
                        ("journal_lines l WHERE l.transaction_id IN (NEW.id, NEW.reverses_id)",))
    assert plans, "the guard ran no query"
    for plan in plans:
        assert "ix_journal_lines_transaction_id" in plan and "ix_journal_lines_balance" not in plan, plan


def test_a_batch_taking_cpa_claims_from_claimants_stored_before_it_sends_a_bounded_number_of_statements(database):
    """Each payment dated before its customer's claimant takes the claim and reverses the claimant's
    bounty; what the reversals need is read once for the batch (`revenue._Writer.prefetch_bounties`)."""
    from tests.scenarios.books import Books

    books = Books(database)
    books.plan("hybrid", "0.10", cpa={"USD": "150.00"}, duration_months=None)
    books.partner("northwind", "hybrid")
    for n in range(60):
        books.attribute(f"c{n}", "northwind", "2026-01-01")

    def payments(count: int, month: str) -> list[revenue.RevenueEvent]:
        return [books.event("invoice_paid", f"c{n}", f"{month}-{n}", "500.00", f"2026-{month}-05",
                            event_id=f"{month}-{n}") for n in range(count)]
    statements_to_ingest(database, payments(60, "03"))
    few = statements_to_ingest(database, payments(5, "02"))
    many = statements_to_ingest(database, payments(60, "01"))
    assert books.sql("SELECT count(*) FROM cpa_claims_taken") == [(65,)]
    assert many <= few + 2 and few < 40, (few, many)


def test_a_reversal_reads_the_transaction_it_reverses_once(database):
    """`reversals.reverse` of a standing accrual: its header and lines are read once, for the draft it
    mirrors, its kind and its posted instant (they were read three times, in five statements)."""
    from tests.scenarios.books import Books

    books = Books(database)
    books.plan("msp", "0.20")
    books.partner("northwind", "msp")
    books.attribute("acme", "northwind", "2026-01-01")
    [accrual] = books.paid("acme", "inv-1", "100.00", "2026-01-10").transaction_ids
    with recorded(database.engine) as statements, database.transaction() as session:
        reversal = reversals.reverse(session, accrual, reason="posted by mistake")
    by_id = [sql for sql, parameters in statements if "FROM journal_transactions" in sql
             and "journal_transactions.id = " in sql and accrual in _values(parameters)]
    assert len(by_id) == 1, by_id
    with database.reader() as session:
        assert journal.load_draft(session, reversal.id).reverses_id == accrual


def _values(parameters) -> list:
    if isinstance(parameters, dict):
        return list(parameters.values())
    return list(parameters) if isinstance(parameters, (list, tuple)) else [parameters]


def plan_of_header_page(database, by: str, value: str, *, without: tuple[str, ...] = ()) -> str:
    """The plan of the query over journal_transactions that a page of one invoice's or one event's
    transactions sends (`explained`: seqscan off on PostgreSQL)."""
    with recorded(database.engine) as statements, database.reader() as session:
        listed = transactions.page(session, limit=101, **{by: value})
    assert listed and all(getattr(item, by) == value for item in listed), listed
    [header_page] = [(sql, parameters) for sql, parameters in statements
                     if "FROM journal_transactions" in sql and "journal_lines" not in sql
                     and "reverses_id IN" not in sql]
    [plan] = explained(database, [header_page], without=without)
    return plan


@pytest.mark.parametrize("dropped", [False, True], ids=["with-its-index", "without-it"])
@pytest.mark.parametrize("by", ["invoice_id", "event_id"])
def test_a_page_of_one_invoices_or_events_transactions_searches_its_index(closed_books, by, dropped):
    """Without the index (the negative space) the same page walks every transaction after the cursor
    by its key, filtering each. The two cases take a database each: SQLite does not prepare a cached
    EXPLAIN again after a DROP INDEX."""
    with closed_books.reader() as session:
        value = session.execute(sa.select(sa.column(by)).select_from(sa.table("journal_transactions"))
                                .where(sa.column("kind") == "release").limit(1)).scalar_one()
    index = f"ix_journal_transactions_{by}"
    postgres = closed_books.engine.dialect.name == "postgresql"
    searched = (f"Index Scan using {index} on journal_transactions" if postgres
                else f"SEARCH journal_transactions USING INDEX {index} ({by}=?")
    walked = (re.compile(rf"pk_journal_transactions.*Filter: \(\({by}\)::text = |Filter: \(\({by}\)::text = .*"
                         r"pk_journal_transactions") if postgres
              else re.compile(r"SEARCH journal_transactions USING INTEGER PRIMARY KEY \(rowid>\?\)"))
    plan = plan_of_header_page(closed_books, by, value, without=(index,) if dropped else ())
    if dropped:
        assert walked.search(plan) and searched not in plan, plan
    else:
        assert searched in plan and not walked.search(plan), plan


def out_of_turn(count: int, customers: list[str], prefix: str) -> list[revenue.RevenueEvent]:
    """`count` payments of `customers`, dated in no order, so that many move a customer's CPA claim
    to an earlier invoice (each move writes what the batch drafted before it: a flush mid-batch)."""
    import random

    chosen = random.Random(count)
    def when() -> str:
        return f"2026-{chosen.randrange(1, 11):02d}-{chosen.randrange(1, 29):02d}"

    return [program.paid(f"{prefix}-{n}", chosen.choice(customers), f"{prefix}-inv-{n}",
                         chosen.randrange(1_000, 90_000), when()) for n in range(count)]


def journal_read_whole(session) -> tuple[int, int]:
    """(rows of `journal_transactions` read by sequential scans in this transaction, its size)."""
    return session.execute(sa.text(
        "SELECT (SELECT seq_tup_read FROM pg_stat_xact_user_tables WHERE relname = 'journal_transactions'),"
        " (SELECT max(id) FROM journal_transactions)")).one()


@pytest.mark.postgres
def test_a_batch_that_outgrows_the_journals_statistics_has_them_taken_anew(postgres_database):
    """Migration 0050. Analyzed empty, the journal was planned small by the service's statements and
    by PostgreSQL's own foreign-key checks, and a connection kept those plans while a batch grew it:
    each check read the whole growing journal (27 s for 10,000 events where 7 s did on a journal
    never analyzed). Past 1,000 transactions and twice what the statistics count, a flush has them
    taken anew in the batch's transaction, which counts its rows and plans every statement anew."""
    customers = [f"c{n}" for n in range(100)]
    with postgres_database.transaction() as session:
        program.seed(session, customer_ids=customers)
    with postgres_database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("ANALYZE")
    counted = "SELECT reltuples FROM pg_class WHERE relname = 'journal_transactions'"
    with postgres_database.transaction() as session:
        assert session.execute(sa.text(counted)).scalar_one() == 0
        revenue.ingest(session, out_of_turn(700, customers, "first"))  # an accrual and an override each
        read_before, size_before = journal_read_whole(session)
        assert size_before > 1_000 and session.execute(sa.text(counted)).scalar_one() >= 1_000, size_before
        with recorded(postgres_database.engine) as statements:
            revenue.ingest(session, out_of_turn(1_000, customers, "then"))
        read, size = journal_read_whole(session)
        # What the transaction heard holds through the savepoints that asked: this batch leaves the
        # journal at twice that once at most (each flush asked when a savepoint dropped it).
        assert len([sql for sql, _ in statements if "journal_statistics_follow" in sql]) <= 1, statements
    # Planned for the journal it is, the checks read it by key: less than once whole in all, where
    # before each check read it whole (millions of rows): from a small sample too (migration 0051).
    assert size > 2 * size_before and read - read_before < size, (read_before, read, size)
    with postgres_database.engine.connect() as connection:
        assert "default_statistics_target=10" in connection.exec_driver_sql(
            "SELECT proconfig FROM pg_proc WHERE proname = 'journal_statistics_follow'").scalar_one()
    # Once a connection has the statistics' count, a batch that leaves the journal within twice it
    # asks nothing.
    with recorded(postgres_database.engine) as statements, postgres_database.transaction() as session:
        revenue.ingest(session, out_of_turn(100, customers, "after"))
    assert statements and not [sql for sql, _ in statements if "journal_statistics_follow" in sql]


@pytest.mark.postgres
def test_a_batch_rolled_back_leaves_its_connection_asking_for_the_statistics_as_before(postgres_database):
    """What a rolled-back batch heard the statistics count is that transaction's: kept by the pooled
    connection, it would have the next batch, once a vacuum set the count right, ask nothing while
    the journal grew up to twice the rows that were never committed."""
    customers = [f"c{n}" for n in range(100)]
    with postgres_database.transaction() as session:
        program.seed(session, customer_ids=customers)
    with pytest.raises(ZeroDivisionError):
        with postgres_database.transaction() as session:
            revenue.ingest(session, out_of_turn(700, customers, "lost"))
            assert session.execute(sa.text("SELECT reltuples FROM pg_class WHERE relname = 'journal_transactions'")
                                   ).scalar_one() >= 1_000
            1 / 0  # a crash mid-request
    with postgres_database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE")  # as autovacuum does after the rollback
    with recorded(postgres_database.engine) as statements, postgres_database.transaction() as session:
        revenue.ingest(session, out_of_turn(700, customers, "kept"))
    assert postgres_database.engine.pool.checkedin() == 1  # one connection, the rolled-back batch's
    assert [sql for sql, _ in statements if "journal_statistics_follow" in sql]
