"""Closes and payouts hold in the database itself: raw SQL cannot add a second resolution, post into a
closed period, or edit closes, snapshots and payouts; tampering behind the triggers' back is named
by verify(); concurrent resolutions and payout runs resolve once."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest
import sqlalchemy as sa

from ledger import accounts as chart
from ledger import holds, journal, partners, payouts, periods, plans, revenue, statement_lines
from ledger.db import Database
from ledger.errors import Conflict
from ledger.instants import parse_instant, period_bounds_us
from ledger.migrate import upgrade
from ledger.periods import snapshot
from ledger.verify import verify
from tests import program
from tests.integration.conftest import second_writer_behind_first
from tests.integration.test_database_guards import refused_without_recursive_triggers
from tests.integration.test_tamper_evidence import behind_the_triggers

PENDING, AVAILABLE = chart.pending("northwind"), chart.available("northwind")


def at(day: str) -> int:
    return parse_instant(f"{day}T00:00:00Z", field="at")


@pytest.fixture
def closed(database):
    """Commission accrued in January, February and March, each of an event never stored
    (`program.of_an_event`), released once; all three months closed."""
    with database.transaction() as session:
        program.enrol(session, "northwind")
        journal.post(session, [
            journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 10_000 * month,
                             effective_at_us=at(f"2026-0{month}-10"), idempotency_key=f"accrual-{month}",
                             partner_id="northwind", **program.of_an_event(f"accrual-{month}", "northwind"))
            for month in (1, 2, 3)] + [
            journal.transfer("release", PENDING, AVAILABLE, "USD", 10_000, effective_at_us=at("2026-02-09"),
                             idempotency_key="release-1", partner_id="northwind", accrual_id=1,
                             invoice_id="accrual-1-invoice")])  # its piece's invoice (migration 0022)
        for period in ("2026-01", "2026-02", "2026-03"):
            periods.close_period(session, period, now_us=at("2026-04-02"))
    return database


def problems(database) -> set[tuple[str, str]]:
    """(code, period) of every problem verify() names, less the events `closed`'s commissions made up."""
    with database.reader() as session:
        report = verify(session)
    assert report.ok is (not report.problems)
    return {(p.code, p.message.split(":")[0].removeprefix("period "))
            for p in program.besides_made_up_events(report.problems)}


PENDING_ID = f"(SELECT id FROM accounts WHERE name = '{PENDING}')"
F64 = "f" * 64


TAMPERED_CLOSES = [
    pytest.param([f"UPDATE period_snapshots SET credit_minor = credit_minor + 1 "
                  f"WHERE period = '2026-02' AND account_id = {PENDING_ID}"],
                 {("snapshot_altered", "2026-02"), ("close_hash_mismatch", "2026-02")}, id="snapshot row"),
    pytest.param([f"UPDATE period_closes SET close_hash = '{F64}' WHERE period = '2026-01'"],
                 {("close_hash_mismatch", "2026-01"), ("close_chain_broken", "2026-02")}, id="close hash"),
    pytest.param(["DELETE FROM period_snapshots WHERE period = '2026-02'",
                  "DELETE FROM period_closes WHERE period = '2026-02'"],
                 # (and its statement documents and bodies, now of a period that is not closed and
                 # naming a close that is not there; March starts where no close ended)
                 {("close_chain_broken", "2026-03"), ("close_bounds_altered", "2026-03"),
                  ("statement_line_altered", "2026-02"), ("reference_broken", "statement_documents (period)"),
                  ("reference_broken", "statement_bodies (period)")},
                 id="a close cut out of the chain"),
    # A statement document's edits, as {postgres?: SQL} (its lines are `json` there, text on SQLite).
    pytest.param([{False: "UPDATE statement_documents SET lines = json_set(lines, '$[0][8]', 10001) "
                          "WHERE period = '2026-02'",
                   True: "UPDATE statement_documents SET lines = jsonb_set(lines::jsonb, '{0,8}', '10001')::json "
                         "WHERE period = '2026-02'"}],
                 {("statement_line_altered", "2026-02")}, id="a stored statement line"),
    pytest.param([{False: "UPDATE statement_documents SET lines = json_remove(lines, '$[1]') WHERE period = '2026-02'",
                   True: "UPDATE statement_documents SET lines = (lines::jsonb - 1)::json WHERE period = '2026-02'"}],
                 {("statement_line_altered", "2026-02")}, id="a stored statement line cut"),
    pytest.param(["DELETE FROM statement_documents WHERE period = '2026-01'"],
                 {("statement_line_altered", "2026-01")}, id="a statement document cut"),
    pytest.param([{False: "UPDATE statement_documents SET lines = json_insert(lines, '$[#]', json(lines -> 0)) "
                          "WHERE period = '2026-03'",
                   True: "UPDATE statement_documents SET lines = (lines::jsonb || jsonb_build_array(lines::jsonb -> 0))"
                         "::json WHERE period = '2026-03'"}],
                 {("statement_line_altered", "2026-03")}, id="a stored statement line twice"),
    pytest.param(["UPDATE statement_documents SET lines = '[1]' WHERE period = '2026-03'"],
                 {("statement_line_altered", "2026-03")}, id="a statement document not of lines"),
    # Values Python holds equal to the true ones (1.0 == 1, true == 1) are still named.
    pytest.param([{False: "UPDATE statement_documents SET lines = json_set(lines, '$[0][7]', 30000.0) "
                          "WHERE period = '2026-03'",
                   True: "UPDATE statement_documents SET lines = jsonb_set(lines::jsonb, '{0,7}', '30000.0')::json "
                         "WHERE period = '2026-03'"}],
                 {("statement_line_altered", "2026-03")}, id="a stored amount made a float"),
    pytest.param([{False: "UPDATE statement_documents SET lines = json_set(lines, '$[0][0]', json('true')) "
                          "WHERE period = '2026-01'",
                   True: "UPDATE statement_documents SET lines = jsonb_set(lines::jsonb, '{0,0}', 'true')::json "
                         "WHERE period = '2026-01'"}],
                 {("statement_line_altered", "2026-01")}, id="a stored transaction id made true"),
    pytest.param([{False: "UPDATE statement_documents SET lines = json_set(lines, '$[0][8]', 0.0) "
                          "WHERE period = '2026-01'",
                   True: "UPDATE statement_documents SET lines = jsonb_set(lines::jsonb, '{0,8}', '0.0')::json "
                         "WHERE period = '2026-01'"}],
                 {("statement_line_altered", "2026-01")}, id="a stored available amount made a float"),
    pytest.param(["UPDATE statement_documents SET lines = '" + "[" * 1500 + "]" * 1500 + "' WHERE period = '2026-03'"],
                 {("statement_line_altered", "2026-03")}, id="a statement document nested past Python's limit"),
    pytest.param(["INSERT INTO statement_documents (period, partner_id, currency, lines) "
                  "VALUES ('2026-04', 'northwind', 'USD', '[[9, 1, null, \"adjustment\", null, null, null, 1, 0]]')"],
                 {("statement_line_altered", "2026-04"), ("reference_broken", "statement_documents (period)")},
                 id="a statement document of an open period"),
]
TAMPERED_CLOSE_FIELDS = [
    pytest.param([f"UPDATE period_closes SET prev_close_hash = '{F64}' WHERE period = '2026-03'"],
                 {("close_chain_broken", "2026-03"), ("close_hash_mismatch", "2026-03")}, id="a relinked close"),
    pytest.param(["UPDATE period_closes SET transaction_count = 7 WHERE period = '2026-01'"],
                 {("close_count_mismatch", "2026-01"), ("close_hash_mismatch", "2026-01")}, id="count"),
    pytest.param([f"UPDATE period_closes SET chain_head_hash = '{F64}' WHERE period = '2026-02'"],
                 {("close_head_mismatch", "2026-02"), ("close_hash_mismatch", "2026-02")}, id="journal head"),
    pytest.param(["UPDATE period_closes SET chain_head_id = 1 WHERE period = '2026-02'"],
                 {("close_head_mismatch", "2026-02"), ("close_hash_mismatch", "2026-02")}, id="journal head id"),
    # No hash covers a close's bounds, and no line lies where these moves take them: the snapshot and
    # count still agree. A close ending a month late moves April's postings to May and leaves April
    # a month that can never be closed.
    pytest.param([f"UPDATE period_closes SET ends_at_us = {at('2026-05-01')} WHERE period = '2026-03'"],
                 {("close_bounds_altered", "2026-03")}, id="end moved a month on"),
    pytest.param([f"UPDATE period_closes SET ends_at_us = {at('2026-03-31')} WHERE period = '2026-03'"],
                 {("close_bounds_altered", "2026-03")}, id="end moved a day back"),
    pytest.param([f"UPDATE period_closes SET starts_at_us = {at('2025-12-01')} WHERE period = '2026-01'"],
                 {("close_bounds_altered", "2026-01")}, id="start moved a month back"),
    pytest.param([f"UPDATE period_closes SET closed_at_us = {at('2026-01-15')} WHERE period = '2026-01'"],
                 {("close_time_altered", "2026-01")}, id="closed before the month ended"),
    pytest.param([f"UPDATE period_closes SET closed_at_us = {at('2099-01-01')} WHERE period = '2026-02'"],
                 {("close_time_altered", "2026-02")}, id="closed after the database's clock allows"),
]


@pytest.mark.parametrize(("statements", "expected"), TAMPERED_CLOSES)
def test_verify_names_a_snapshot_a_close_hash_or_a_chain_of_closes_altered_behind_the_triggers(
        closed, statements, expected):
    postgres = closed.engine.dialect.name == "postgresql"
    if not postgres and "[[[[" in str(statements) and sqlite3.sqlite_version_info >= (3, 42):
        pytest.skip("SQLite 3.42 and later refuse JSON nested past 1,000 levels, below Python's limit")
    with behind_the_triggers(closed) as execute:
        for statement in statements:
            execute(statement[postgres] if isinstance(statement, dict) else statement)
    assert problems(closed) == expected


def test_an_altered_snapshot_row_is_named_with_its_account_and_both_values(closed):
    with closed.reader() as session:
        [stored] = [row for (account, _), row in snapshot(session, "2026-02").items()
                    if account == session.execute(sa.text(f"SELECT {PENDING_ID}")).scalar()]
    with behind_the_triggers(closed) as execute:
        execute(f"UPDATE period_snapshots SET credit_minor = credit_minor + 1 WHERE period = '2026-02' "
                f"AND account_id = {PENDING_ID}")
    with closed.reader() as session:
        [problem] = [p for p in verify(session).problems if p.code == "snapshot_altered"]
    altered = (stored[0], stored[1] + 1)
    assert problem.message.endswith(f"{PENDING} USD (stored {altered}, journal {stored})")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the same checks; one engine is enough
@pytest.mark.parametrize(("statements", "expected"), TAMPERED_CLOSE_FIELDS)
def test_verify_names_every_other_altered_field_of_a_close(closed, statements, expected):
    with behind_the_triggers(closed) as execute:
        for statement in statements:
            execute(statement)
    assert problems(closed) == expected


def test_verify_gives_the_newest_close_to_record(closed):
    with closed.reader() as session:
        report = verify(session)
        march = periods.get_close(session, "2026-03")
    assert report.latest_close == ("2026-03", march.close_hash)


def test_a_period_closed_on_an_empty_journal_records_the_genesis_head_and_verifies(database):
    with database.transaction() as session:
        close = periods.close_period(session, "2026-01", now_us=at("2026-02-02"))
    with database.reader() as session:
        report = verify(session)
    assert (close.chain_head_id, close.chain_head_hash, close.transaction_count) == (0, journal.GENESIS_HASH, 0)
    assert report.problems == [] and report.latest_close == ("2026-01", close.close_hash)


STATEMENT_PARAMETERS_MAX = 65_535  # PostgreSQL's wire protocol: parameters of one statement


def test_a_period_closes_and_writes_off_among_more_partner_accounts_than_one_statement_takes_parameters(
        postgres_database):
    """The close looks for negative available balances among every partner's accounts: chosen in
    SQL, not bound as a list of ids that grows with the program."""
    with postgres_database.transaction() as session:
        plans.create_plan(session, "reset", "Reset", {
            "rates": [{"from_month": 1, "rate": "0.20"}], "duration_months": None, "hold_days": 30,
            "min_payout": [{"amount": "50.00", "currency": "USD"}], "negative_balance": "reset"})
        partners.create_partner(session, "northwind", "Northwind", "msp", "reset")
        session.execute(sa.text(  # the accounts of many partners, each created on first use
            "INSERT INTO accounts (name, type, normal_side, partner_id) SELECT 'liability:partner:p' || g || chr(58)"
            " || 'available', 'liability', 'C', 'p' || g FROM generate_series(1, :count) g"),
            {"count": STATEMENT_PARAMETERS_MAX})
        payouts.adjust(session, "northwind", "available", -500, "USD", "owed back", effective_at_us=at("2026-01-10"))
    with postgres_database.transaction() as session:
        periods.close_period(session, "2026-01", now_us=at("2026-02-02"))
    with postgres_database.reader() as session:
        written_off = session.execute(sa.text("SELECT partner_id, effective_at_us FROM journal_transactions "
                                              "WHERE kind = 'writeoff'")).all()
    assert [tuple(row) for row in written_off] == [("northwind", at("2026-02-01") - 1)]


def test_a_period_closes_at_the_instant_it_ends_and_a_posting_at_the_next_ones_start_is_not_in_it(database):
    with database.transaction() as session:
        program.enrol(session, "northwind")
        journal.post(session, [
            journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 100, effective_at_us=at(day),
                             idempotency_key=f"accrual-{day}", partner_id="northwind",
                             **program.of_an_event(f"accrual-{day}", "northwind"))
            for day in ("2026-01-10", "2026-03-01")])
        periods.close_period(session, "2026-01", now_us=at("2026-02-01"))
        # February is empty (March's posting is at its first instant): it closes along with March.
        periods.close_period(session, "2026-03", now_us=at("2026-04-01"))
    with database.reader() as session:
        closes = [(close.period, close.transaction_count) for close in periods.list_periods(session)]
        named = program.verified(session)
    assert closes == [("2026-01", 1), ("2026-02", 0), ("2026-03", 1)]
    assert named == []


# ---- the database refuses, with Python bypassed ----

def refused(database, statement: str, match: str, **params) -> None:
    with pytest.raises(sa.exc.DBAPIError, match=match):
        with database.engine.begin() as connection:
            connection.execute(sa.text(statement), params)


def raw_transfer(connection, effective_at_us: int) -> None:
    """A balanced transaction continuing the sequence and the prev_hash link, in raw SQL (no journal.Batch
    to move it out of a closed period), recorded at the instant it is effective (no transaction is
    dated after it is recorded: migration 0029): an accrual of northwind into its pending account, as
    `closed`'s (migration 0047), naming an event, invoice and customer (migration 0064)."""
    head_id, head_hash = connection.execute(sa.text(
        "SELECT id, hash FROM journal_transactions ORDER BY id DESC LIMIT 1")).one()
    accounts = dict(connection.execute(sa.text("SELECT name, id FROM accounts")).all())
    for account, side in ((chart.EXPENSE_COMMISSION, "D"), (PENDING, "C")):
        connection.execute(sa.text(
            "INSERT INTO journal_lines (transaction_id, account_id, currency, side, amount_minor, effective_at_us) "
            "VALUES (:t, :a, 'USD', :s, 100, :e)"), dict(t=head_id + 1, a=accounts[account], s=side, e=effective_at_us))
    connection.execute(sa.text(
        "INSERT INTO journal_transactions (id, kind, effective_at_us, recorded_at_us, idempotency_key, request_hash, "
        "prev_hash, hash, partner_id, customer_id, invoice_id, event_id) VALUES (:id, 'accrual', :e, :e, 'raw', :h, "
        ":prev, :h, 'northwind', :customer_id, :invoice_id, :event_id)"),
        dict(id=head_id + 1, e=effective_at_us, h="e" * 64, prev=head_hash,
             **program.of_an_event("raw", "northwind")))


def test_a_transaction_dated_inside_a_closed_period_is_refused_by_the_database(closed):
    with pytest.raises(sa.exc.DBAPIError, match="effective instant lies in a closed period"):
        with closed.engine.begin() as connection:
            raw_transfer(connection, at("2026-03-31"))
    with closed.engine.begin() as connection:  # the first open period's first instant is accepted
        raw_transfer(connection, at("2026-04-01"))


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_raw_posting_sent_while_its_month_closes_waits_for_the_close_and_is_refused(closed):
    """PostgreSQL: a writer sending its own SQL, which takes no journal lock, posts into April while
    April's close reads the journal. Its first line now waits for the close (migration 0043), and its
    header then meets the closed period; it had landed in a month whose snapshot and statements leave
    it out (`close_count_mismatch`, `snapshot_altered` by verify)."""
    error = second_writer_behind_first(
        closed, lambda session: periods.close_period(session, "2026-04", now_us=at("2026-05-02")),
        lambda session: raw_transfer(session.connection(), at("2026-04-15")))
    assert isinstance(error, sa.exc.DBAPIError) and "lies in a closed period" in str(error), error
    assert problems(closed) == set()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_raw_snapshot_row_sent_while_its_month_closes_waits_for_the_close_and_is_refused(closed):
    """PostgreSQL: a snapshot row for April sent as SQL of its own while April closes: it waits for
    the close (migration 0043) and meets the sealed snapshot. It had been checked before the close
    committed, and its key to the close met at its own commit: a row the close never covered, in
    every balance read from that snapshot."""
    error = second_writer_behind_first(
        closed, lambda session: periods.close_period(session, "2026-04", now_us=at("2026-05-02")),
        lambda session: session.execute(sa.text(
            "INSERT INTO period_snapshots (period, account_id, currency, debit_minor, credit_minor)"
            f" VALUES ('2026-04', {PENDING_ID}, 'EUR', 0, 999999)")))
    assert isinstance(error, sa.exc.DBAPIError) and "the snapshot of a closed period is complete" in str(error), error
    assert problems(closed) == set()


def test_closes_and_snapshots_refuse_update_and_delete(closed):
    for statement in ("UPDATE period_closes SET closed_at_us = 0", "DELETE FROM period_closes WHERE period = '2026-03'",
                      "UPDATE period_snapshots SET debit_minor = debit_minor + 1", "DELETE FROM period_snapshots"):
        table = statement.split()[1] if statement.startswith("UPDATE") else statement.split()[2]
        refused(closed, statement, f"{table} is append-only")
    assert problems(closed) == set()


def test_stored_statement_documents_refuse_update_and_delete(closed):
    for statement in ("UPDATE statement_documents SET currency = 'EUR'", "DELETE FROM statement_documents"):
        refused(closed, statement, "statement_documents is append-only")
    assert problems(closed) == set()


STORED_DOCUMENT = ("INSERT INTO statement_documents (period, partner_id, currency, lines) "
                   "VALUES (:period, 'northwind', 'EUR', :lines)")
A_LINE = '[[1, :at, null, "adjustment", null, null, null, 5, 0]]'


@pytest.mark.parametrize("period", ["2026-02", "2026-04", "2026-01"],
                         ids=["an-earlier-closed-period", "the-open-period", "the-first-closed-period"])
def test_the_database_refuses_a_statement_document_not_of_the_latest_closed_period(closed, period):
    refused(closed, STORED_DOCUMENT, "must be of the latest closed period|written by the database", period=period,
            lines=A_LINE.replace(":at", str(at(f"{period}-15"))))


@pytest.mark.parametrize("lines", ['{"1": 2}', "5", "[]"], ids=["an-object", "a-number", "no-lines"])
def test_the_database_refuses_a_statement_document_that_is_not_a_json_array_of_lines(closed, lines):
    # Behind the triggers (the guards on the period and on who writes are out of the way): the check.
    with behind_the_triggers(closed) as execute:
        with pytest.raises((sqlite3.IntegrityError, sa.exc.DBAPIError),
                           match="CHECK constraint failed|violates check constraint"):
            execute(STORED_DOCUMENT.replace(":period", "'2026-03'").replace(":lines", f"'{lines}'"))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_refuses_a_replaced_statement_document_whatever_recursive_triggers_says(closed):
    refused_without_recursive_triggers(closed, STORED_DOCUMENT.replace("INSERT", "INSERT OR REPLACE").replace(
        ":period", "'2026-03'").replace("'EUR'", "'USD'").replace(":lines", "'" + A_LINE.replace(
            ":at", str(at("2026-03-20"))) + "'"), "statement_documents is append-only: REPLACE refused")


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_on_postgresql_only_a_close_writes_statement_documents(closed):
    refused(closed, STORED_DOCUMENT, "documents are written by the database when a period closes", period="2026-03",
            lines=A_LINE.replace(":at", str(at("2026-03-20"))))


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_on_postgresql_the_column_takes_json_only(closed):
    with behind_the_triggers(closed) as execute:
        with pytest.raises(sa.exc.DBAPIError, match="invalid input syntax for type json"):
            execute("INSERT INTO statement_documents VALUES ('2026-03', 'northwind', 'EUR', '[1, 2')")


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_on_postgresql_the_functions_of_the_stored_rows_before_are_gone(closed):
    with closed.reader() as session:
        assert session.execute(sa.text("SELECT count(*) FROM pg_proc WHERE proname IN "
                                       "('period_closes_store_statement_lines', 'statement_lines_refuse_direct')")
                               ).scalar() == 0


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_close_trigger_function_runs_for_period_closes_only(closed):
    # Attached to another table (here by the owner, who alone may), it refuses to store anything.
    with pytest.raises(sa.exc.DBAPIError, match="documents are written by the database when a period closes"):
        with closed.engine.begin() as connection:
            connection.exec_driver_sql("CREATE TEMP TABLE fake_closes (period text, starts_at_us bigint, "
                                       "ends_at_us bigint)")
            connection.exec_driver_sql("CREATE TRIGGER fake_close AFTER INSERT ON fake_closes "
                                       "FOR EACH ROW EXECUTE FUNCTION period_closes_store_statement_documents()")
            connection.exec_driver_sql(f"INSERT INTO fake_closes VALUES ('2026-04', {at('2026-04-01')}, "
                                       f"{at('2026-05-01')})")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # PostgreSQL refuses the row itself
def test_a_statement_document_added_for_the_latest_closed_period_is_named_by_verify(closed):
    # What the database cannot tell from the row alone, verify tells from the journal.
    with closed.engine.begin() as connection:
        connection.execute(sa.text(STORED_DOCUMENT), {"period": "2026-03",
                                                     "lines": A_LINE.replace(":at", str(at("2026-03-20")))})
    with closed.reader() as session:
        [problem] = program.verified(session)
    assert problem.code == "statement_line_altered" and problem.message == (
        "period 2026-03: partner northwind's EUR statement line for transaction 1 is stored but not given by the "
        "journal")


EVERY_PENDING_PLUS_ONE = {
    False: "UPDATE statement_documents SET lines = (SELECT json_group_array(json_set(e.value, '$[7]', "
           "(e.value ->> 7) + 1)) FROM json_each(statement_documents.lines) AS e)",
    True: "UPDATE statement_documents AS d SET lines = (SELECT json_agg(jsonb_set(e.value::jsonb, '{7}', "
          "to_jsonb((e.value ->> 7)::bigint + 1))) FROM json_array_elements(d.lines) AS e(value))",
}


def test_verify_names_the_first_few_stored_statement_lines_that_differ(closed):
    with behind_the_triggers(closed) as execute:
        execute(EVERY_PENDING_PLUS_ONE[closed.engine.dialect.name == "postgresql"])
    with closed.reader() as session:
        named = [p for p in verify(session).problems if p.code == "statement_line_altered"]
    # Every stored line differs from its journal line, both ways. Named period by period, in
    # transaction order, five in all.
    assert [(p.message.split(":")[0], p.transaction_id, p.message.split(" is ")[-1]) for p in named] == [
        ("period 2026-01", 1, "not stored as the journal gives it"), ("period 2026-01", 1, "stored but not given by "
                                                                      "the journal"),
        ("period 2026-02", 2, "not stored as the journal gives it"), ("period 2026-02", 2, "stored but not given by "
                                                                      "the journal"),
        ("period 2026-02", 4, "not stored as the journal gives it")], named


def statement_problems(database) -> list[tuple[int | None, str]]:
    with database.reader() as session:
        return [(p.transaction_id, p.message) for p in verify(session).problems if p.code == "statement_line_altered"]


def test_a_statement_document_removed_names_each_line_the_journal_gives_for_it(closed):
    with behind_the_triggers(closed) as execute:
        execute("DELETE FROM statement_documents WHERE period = '2026-02'")
    assert statement_problems(closed) == [
        (transaction_id, f"period 2026-02: partner northwind's USD statement line for transaction {transaction_id} "
                         "is not stored as the journal gives it") for transaction_id in (2, 4)]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # its CHECK switched off, as the file's owner can
def test_a_statement_document_emptied_is_named_as_no_array_of_lines(closed):
    with behind_the_triggers(closed) as execute:
        execute("PRAGMA ignore_check_constraints = ON")
        execute("UPDATE statement_documents SET lines = '[]' WHERE period = '2026-02'")
    assert statement_problems(closed) == [
        (None, "period 2026-02: partner northwind's USD statement document is not a non-empty JSON array of "
               "statement lines")]


def test_a_document_stored_in_another_order_still_reads_in_posting_order_and_verifies(closed):
    with behind_the_triggers(closed) as execute:  # February's two lines, the later one first
        execute({False: "UPDATE statement_documents SET lines = json_array(json(lines -> 1), json(lines -> 0)) "
                        "WHERE period = '2026-02'",
                 True: "UPDATE statement_documents SET lines = json_build_array(lines -> 1, lines -> 0) "
                       "WHERE period = '2026-02'"}[closed.engine.dialect.name == "postgresql"])
    with closed.reader() as session:
        [lines] = statement_lines.stored(session, "northwind", "2026-02").values()
        named = program.verified(session)
    assert [(line.transaction_id, line.effective_at_us) for line in lines] == [(4, at("2026-02-09")),
                                                                               (2, at("2026-02-10"))]
    assert named == []


def test_a_close_stores_every_partners_lines_of_its_period_and_nothing_else(closed):
    with closed.reader() as session:
        rows = session.execute(sa.text("SELECT period, partner_id, currency, CAST(lines AS TEXT) "
                                       "FROM statement_documents ORDER BY period")).all()
    # Each accrual's customer, invoice and event; the release names its piece's invoice alone.
    accrual = {month: ["northwind-customer", f"accrual-{month}-invoice", f"accrual-{month}-event"]
               for month in (1, 2, 3)}
    release = [None, "accrual-1-invoice", None]
    # (In posting order, as the reader sorts them: SQLite does not promise to keep the order written;
    # no line has an original instant.)
    assert [(*row[:3], sorted(json.loads(row[3]), key=lambda line: (line[1], line[0]))) for row in rows] == [
        ("2026-01", "northwind", "USD", [[1, at("2026-01-10"), None, "accrual", *accrual[1], 10_000, 0]]),
        ("2026-02", "northwind", "USD", [[4, at("2026-02-09"), None, "release", *release, -10_000, 10_000],
                                         [2, at("2026-02-10"), None, "accrual", *accrual[2], 20_000, 0]]),
        ("2026-03", "northwind", "USD", [[3, at("2026-03-10"), None, "accrual", *accrual[3], 30_000, 0]])]


def test_releases_that_name_no_event_keep_none_and_the_closes_storing_them_beside_named_ones_verify(
        database, monkeypatch):
    # Releases posted by earlier versions of the service name no event, and stay so: the journal is
    # never rewritten. February's six pieces are released that way; January's name their payments.
    with database.transaction() as session:
        program.seed(session)
        revenue.ingest(session, program.monthly_events(months=2)[:6])
        assert holds.release_matured(session, at("2026-02-15")) == 6
    naming = holds.release_draft
    with monkeypatch.context() as patched:
        patched.setattr(holds, "release_draft", lambda piece, **kwargs: naming(piece, **kwargs)._replace(event_id=None))
        with database.transaction() as session:
            assert holds.release_matured(session, at("2026-03-15")) == 6
    with database.transaction() as session:
        for period in ("2026-01", "2026-02", "2026-03"):
            periods.close_period(session, period, now_us=at("2026-04-02"))
    with database.reader() as session:
        released = {period: [(line.invoice_id, line.event_id) for lines in statement_lines.stored(
            session, "northwind", period).values() for line in lines if line.kind == "release"]
            for period in ("2026-02", "2026-03")}
        report = verify(session)
    assert released == {"2026-02": [(f"inv-{c}-1", f"e-inv-{c}-1") for c in ("acme", "globex-corp", "initrode")],
                        "2026-03": [(f"inv-{c}-2", None) for c in ("acme", "globex-corp", "initrode")]}
    assert report.problems == [] and report.ok


@pytest.mark.parametrize("revision", ["0012", "0015"], ids=["before-stored-lines", "lines-stored-as-rows"])
@pytest.mark.usefixtures("written_before_salts", "closed_before_bodies")
def test_the_migration_stores_the_lines_of_the_periods_closed_before_it(empty_url, revision):
    upgrade(empty_url, revision)
    database = Database(empty_url)
    try:
        for month in (1, 2):
            with database.transaction() as session:
                journal.post(session, [journal.transfer(
                    "accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 10_000 * month,
                    effective_at_us=at(f"2026-0{month}-10"), idempotency_key=f"accrual-{month}",
                    partner_id="northwind", **program.of_an_event(f"accrual-{month}", "northwind"))])
                periods.close_period(session, f"2026-0{month}", now_us=at("2026-04-02"))
        with database.reader() as session:
            assert session.execute(sa.text("SELECT count(*) FROM period_closes")).scalar() == 2
        upgrade(empty_url)
        with database.transaction() as session:
            program.enrol(session, "northwind")  # postings from here on name a partner of the program
            journal.post(session, [journal.transfer("release", PENDING, AVAILABLE, "USD", 10_000,
                                                    effective_at_us=at("2026-03-09"), idempotency_key="release-1",
                                                    partner_id="northwind", accrual_id=1,
                                                    invoice_id="accrual-1-invoice")])
            periods.close_period(session, "2026-03", now_us=at("2026-04-02"))
        with database.reader() as session:
            assert "statement_lines" not in sa.inspect(session.connection()).get_table_names()
            stored = {period: statement_lines.stored(session, "northwind", period)
                      for period in ("2026-01", "2026-02", "2026-03")}
            assert stored == {period: statement_lines.from_journal(session, "northwind", *period_bounds_us(period))
                              for period in stored}
            assert [[line.pending_minor for line in lines["USD"]] for lines in stored.values()] == [
                [10_000], [20_000], [-10_000]]
            assert program.verified(session) == []
    finally:
        database.dispose()


def closed_at_0015(url: str) -> Database:
    """A database at migration 0015 (statement lines stored as rows), with January closed: its
    accrual of an event never stored (`program.of_an_event`)."""
    upgrade(url, "0015")
    database = Database(url)
    with database.transaction() as session:
        journal.post(session, [journal.transfer(
            "accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 10_000, effective_at_us=at("2026-01-10"),
            idempotency_key="accrual-1", partner_id="northwind", **program.of_an_event("accrual-1", "northwind"))])
        periods.close_period(session, "2026-01", now_us=at("2026-04-02"))
    return database


@pytest.mark.usefixtures("written_before_salts", "closed_before_bodies")
def test_the_migration_carries_the_rows_as_stored_so_verify_still_names_an_altered_one(empty_url):
    database = closed_at_0015(empty_url)
    try:
        with behind_the_triggers(database) as execute:
            execute("UPDATE statement_lines SET pending_minor = pending_minor + 1")
        upgrade(empty_url)
        with database.transaction() as session:
            program.enrol(session, "northwind")  # January's accrual names a partner of the program
        with database.reader() as session:
            assert statement_lines.stored(session, "northwind", "2026-01")["USD"][0].pending_minor == 10_001
            named = [(p.code, p.transaction_id, p.message.split(" is ")[-1]) for p in program.verified(session)]
        assert named == [("statement_line_altered", 1, "not stored as the journal gives it"),
                         ("statement_line_altered", 1, "stored but not given by the journal")]
    finally:
        database.dispose()


@pytest.mark.usefixtures("written_before_salts", "closed_before_bodies")
def test_the_migration_stops_at_a_stored_row_outside_every_closed_period(empty_url):
    database = closed_at_0015(empty_url)
    try:
        with behind_the_triggers(database) as execute:
            execute("INSERT INTO statement_lines (partner_id, effective_at_us, transaction_id, currency, kind, "
                    f"pending_minor, available_minor) VALUES ('northwind', {at('2026-02-15')}, 1, 'USD', 'accrual', "
                    "1, 0)")
        with pytest.raises(RuntimeError, match="1 row\\(s\\) lie outside every closed period"):
            upgrade(empty_url)
    finally:
        database.dispose()


def new_payout(session, day: str, amount_minor: int = 7_500) -> payouts.Payout:
    """Put `amount_minor` on northwind's available balance and pay it out in a run at `day`."""
    payouts.adjust(session, "northwind", "available", amount_minor, "USD", f"balance for {day}",
                   effective_at_us=at(day) - 1)
    [payout] = payouts.run_payouts(session, at(day)).payouts
    return payout


def test_payouts_and_runs_refuse_update_and_delete(enrolled):
    with enrolled.transaction() as session:
        payout = new_payout(session, "2026-03-01")
    for statement in ("UPDATE payouts SET amount_minor = 1", "DELETE FROM payouts",
                      "UPDATE payout_runs SET at_us = 0", "DELETE FROM payout_runs"):
        table = statement.split()[1] if statement.startswith("UPDATE") else statement.split()[2]
        refused(enrolled, statement, f"{table} is append-only")
    with enrolled.reader() as session:
        assert payouts.list_payouts(session) == [payout]


RESOLUTION = ("INSERT INTO payout_resolutions (payout_id, outcome, transaction_id, reason, resolved_at_us) "
              "VALUES (:p, :o, :t, NULL, 1)")
SECOND_RESOLUTION = "pk_payout_resolutions|payout_resolutions.payout_id"


def test_a_second_resolution_of_a_settled_payout_is_refused_by_the_database(enrolled):
    with enrolled.transaction() as session:
        payout = new_payout(session, "2026-03-01")
        payouts.settle(session, payout.id, at_us=at("2026-03-02"))
    # The payout's own transaction exists and resolves nothing: only the payout's key can refuse.
    refused(enrolled, RESOLUTION, SECOND_RESOLUTION, p=payout.id, o="failed", t=payout.transaction_id)
    refused(enrolled, "UPDATE payout_resolutions SET outcome = 'failed'", "payout_resolutions is append-only")
    refused(enrolled, "DELETE FROM payout_resolutions", "payout_resolutions is append-only")
    with enrolled.reader() as session:
        assert payouts.get_payout(session, payout.id).status == "settled"


def resolving_transaction(session, payout: payouts.Payout, outcome: str, at_us: int) -> int:
    """A transaction of the kind `outcome` posts, for the payout's partner, posted around
    `payouts` (which would record the resolution itself): the raw resolution's transaction."""
    kind = f"payout_{outcome}"
    credit = chart.CASH if outcome == "settled" else chart.available(payout.partner_id)
    [posted] = journal.post(session, [journal.transfer(
        kind, chart.PAYOUTS_IN_TRANSIT, credit, payout.currency, payout.amount_minor, effective_at_us=at_us,
        idempotency_key=f"raw-{kind}-{at_us}", partner_id=payout.partner_id)])
    return posted.id


def test_a_raw_resolution_dated_before_its_payout_is_refused(enrolled):
    with enrolled.transaction() as session:
        payout = new_payout(session, "2026-03-01")
    with pytest.raises(sa.exc.DBAPIError, match="not settled or failed before it was made"):
        with enrolled.transaction() as session:  # a resolution posting is recorded by the commit (0030)
            early_id = resolving_transaction(session, payout, "failed", at("2026-03-01") - 1)
            session.execute(sa.text(RESOLUTION), dict(p=payout.id, o="failed", t=early_id))
    with enrolled.reader() as session:
        assert payouts.get_payout(session, payout.id).status == "pending"


def test_two_raw_resolutions_of_a_pending_payout_are_refused_at_the_second(enrolled):
    with enrolled.transaction() as session:
        payout = new_payout(session, "2026-03-01")
    with pytest.raises(sa.exc.IntegrityError, match=SECOND_RESOLUTION):
        with enrolled.transaction() as session:  # each posting with its record (migration 0030)
            for outcome, day in (("settled", "2026-03-02"), ("failed", "2026-03-03")):
                posting_id = resolving_transaction(session, payout, outcome, at(day))
                session.execute(sa.text(RESOLUTION), dict(p=payout.id, o=outcome, t=posting_id))
    with enrolled.reader() as session:
        assert payouts.get_payout(session, payout.id).status == "pending"


# ---- races ----

def race(database, *actions) -> list:
    """Run each action(session) in its own thread and database transaction, released together by a
    barrier; returns each action's result or the exception it raised."""
    barrier = threading.Barrier(len(actions))
    outcomes: list = [None] * len(actions)

    def worker(index: int) -> None:
        try:
            with database.transaction() as session:
                barrier.wait(timeout=10)
                outcomes[index] = actions[index](session)
        except Exception as error:  # noqa: BLE001 - the test looks at what each side got
            outcomes[index] = error

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(len(actions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def test_a_settle_and_a_fail_racing_on_one_payout_resolve_it_once(enrolled):
    database = enrolled
    for day in ("2026-03-01", "2026-04-01", "2026-05-01"):
        with database.transaction() as session:
            payout = new_payout(session, day)
        settled, failed = race(database, lambda s: payouts.settle(s, payout.id, at_us=at(day) + 1),
                               lambda s: payouts.fail(s, payout.id, at_us=at(day) + 1))
        # Both take the journal lock before they read the payout's status, so the loser sees the
        # winner's resolution and gets the domain's Conflict (a 409), never a raw IntegrityError.
        winners = [o for o in (settled, failed) if isinstance(o, payouts.Payout)]
        losers = [o for o in (settled, failed) if not isinstance(o, payouts.Payout)]
        assert len(winners) == 1 and len(losers) == 1, (settled, failed)
        assert isinstance(losers[0], Conflict), losers[0]
        with database.reader() as session:
            assert payouts.get_payout(session, payout.id) == winners[0]
            keys = [f"payout_settled:{payout.id}", f"payout_failed:{payout.id}"]
            assert session.execute(sa.select(sa.func.count()).select_from(sa.table("journal_transactions")).where(
                sa.column("idempotency_key").in_(keys))).scalar_one() == 1
    with database.reader() as session:
        assert session.execute(sa.text("SELECT count(*) FROM payout_resolutions")).scalar_one() == 3
        report = verify(session)
        in_transit = session.execute(sa.text(
            "SELECT coalesce(sum(CASE WHEN l.side = 'C' THEN l.amount_minor ELSE -l.amount_minor END), 0) "
            "FROM journal_lines l JOIN accounts a ON a.id = l.account_id WHERE a.name = :n"),
            {"n": chart.PAYOUTS_IN_TRANSIT}).scalar_one()
    assert report.ok, report.problems
    assert in_transit == 0


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_raw_payout_run_holds_the_services_later_run_back_until_it_commits(enrolled):
    """PostgreSQL: a run's row inserted by a session sending its own SQL, which takes no journal
    lock, before the service's run at a later instant: the service's run now waits for it (migration
    0043). It did not, and the raw run, dated before the service's, then posted its payouts after
    them: both paid the same balance (each the balance as of its own instant)."""
    database = enrolled
    with database.transaction() as session:
        payouts.adjust(session, "northwind", "available", 10_000, "USD", "earned", effective_at_us=at("2026-02-10"))
    run = second_writer_behind_first(database, lambda session: session.execute(sa.text(
        "INSERT INTO payout_runs (id, at_us, created_at_us) VALUES ('run-raw', :at, :at)"), {"at": at("2026-03-01")}),
        lambda session: payouts.run_payouts(session, at("2026-03-15")))
    assert isinstance(run, payouts.PayoutRun) and [payout.amount_minor for payout in run.payouts] == [10_000], run
    assert problems(database) == set()


def test_two_payout_runs_racing_at_the_same_instant_post_once(enrolled):
    database = enrolled
    with database.transaction() as session:
        payouts.adjust(session, "northwind", "available", 7_500, "USD", "balance", effective_at_us=at("2026-02-01"))
    first, second = race(database, lambda s: payouts.run_payouts(s, at("2026-03-01")),
                         lambda s: payouts.run_payouts(s, at("2026-03-01")))
    assert isinstance(first, payouts.PayoutRun) and isinstance(second, payouts.PayoutRun), (first, second)
    assert sorted([first.replayed, second.replayed]) == [False, True]
    assert (first.id, first.payouts) == (second.id, second.payouts)
    with database.reader() as session:
        assert session.execute(sa.text("SELECT count(*) FROM payouts")).scalar_one() == 1
        assert session.execute(sa.text(
            "SELECT count(*) FROM journal_transactions WHERE kind = 'payout'")).scalar_one() == 1


def test_a_payout_resolved_twice_in_the_journal_is_named_by_verify(enrolled):
    with enrolled.transaction() as session:
        payout = new_payout(session, "2026-03-01")
        settled = payouts.settle(session, payout.id, at_us=at("2026-03-02"))
    with behind_the_triggers(enrolled) as execute:  # its record gone, the payout looks pending again
        execute(f"DELETE FROM payout_resolutions WHERE payout_id = {payout.id}")
    # (and the row that asked for the record removed, `payout_resolutions_due`, names it still)
    with enrolled.reader() as session:
        [asked, problem] = sorted(verify(session).problems, key=lambda found: found.code != "reference_broken")
    assert (problem.code, problem.transaction_id) == ("payout_resolution_mismatch", settled.resolution_transaction_id)
    assert asked.code == "reference_broken" and asked.message.startswith("payout_resolutions_due"), asked
    with enrolled.transaction() as session:
        failed = payouts.fail(session, payout.id, at_us=at("2026-03-03"))  # paid, and the money returned
    with enrolled.reader() as session:
        [asked, problem] = sorted(verify(session).problems, key=lambda found: found.code != "reference_broken")
    assert (problem.code, problem.transaction_id) == ("payout_resolved_twice", failed.resolution_transaction_id)
    assert asked.code == "reference_broken", asked
    settled_by = f"settled by transaction {settled.resolution_transaction_id}"
    assert f"payout {payout.id} is resolved twice: {settled_by}" in problem.message
