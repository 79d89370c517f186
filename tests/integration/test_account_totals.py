"""The database keeps every account's running totals from its journal lines (migration 0008), and
refuses every other write to them, even when Python is bypassed with raw SQL."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from ledger import accounts as chart
from ledger import journal
from ledger.balances import all_balances, partner_balances
from ledger.db import Database
from ledger.errors import InvalidInput
from ledger.migrate import upgrade
from ledger import verify as verify_module
from ledger.verify import verify
from tests import program
from tests.integration.test_query_plans import plans_of_line_queries, reads_no_table, recorded
from tests.integration.test_database_guards import (account_ids, head_hash, insert_header, insert_line, refused,
                                                     refused_without_recursive_triggers)

PENDING = chart.pending("northwind")
REFUSED = "account_totals: totals are kept by the database"


def post(database: Database, *transfers, recorded_at_us: int | None = None) -> None:
    with database.transaction() as session:
        program.enrol(session, *{transfer.partner_id for transfer in transfers if transfer.partner_id})
        journal.post(session, list(transfers), recorded_at_us=recorded_at_us)


def accrual(key: str, amount: int, currency: str = "USD", at: int = 5):
    return journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, currency, amount,
                            effective_at_us=at, idempotency_key=key, partner_id="northwind",
                            **program.of_an_event(key, "northwind"))


def totals(database: Database) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """{(account, currency): (debits, credits, last line id, latest instant)} as the database keeps them."""
    with database.engine.connect() as connection:
        return {(name, currency): tuple(values) for name, currency, *values in connection.exec_driver_sql(
            "SELECT a.name, t.currency, t.debit_minor, t.credit_minor, t.last_line_id, t.latest_effective_at_us "
            "FROM account_totals t JOIN accounts a ON a.id = t.account_id")}


def sums_of_lines(database: Database) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """The same, recomputed from the lines."""
    with database.engine.connect() as connection:
        return {(name, currency): tuple(int(value) for value in values) for name, currency, *values in
                connection.exec_driver_sql(
                    "SELECT a.name, l.currency, sum(CASE l.side WHEN 'D' THEN l.amount_minor ELSE 0 END), "
                    "sum(CASE l.side WHEN 'C' THEN l.amount_minor ELSE 0 END), max(l.id), max(l.effective_at_us) "
                    "FROM journal_lines l JOIN accounts a ON a.id = l.account_id GROUP BY a.name, l.currency")}


@pytest.fixture
def booked(database):
    post(database, accrual("a1", 100), accrual("a2", 250), accrual("e1", 70, "EUR"))
    return database


def test_postings_keep_the_totals_equal_to_the_sums_of_the_lines(booked):
    post(booked, *(journal.transfer("release", PENDING, chart.available("northwind"), "USD", amount,
                                    effective_at_us=9, idempotency_key=f"r{accrual_id}", partner_id="northwind",
                                    accrual_id=accrual_id, invoice_id=f"a{accrual_id}-invoice")
                   for accrual_id, amount in ((1, 100), (2, 200))))
    found = totals(booked)
    assert found == sums_of_lines(booked)
    assert found[(PENDING, "USD")][:2] == (300, 350)
    assert found[(PENDING, "EUR")][:2] == (0, 70)
    with booked.reader() as session:
        assert partner_balances(session, "northwind") == {"USD": (50, 300), "EUR": (70, 0)}
        assert program.verified(session) == []


def test_raw_sql_postings_keep_the_totals_too(booked):
    # Python bypassed: the lines are inserted one statement each, and then several in one statement.
    with booked.engine.begin() as connection:
        expense, pending = account_ids(connection)
        insert_line(connection, 4, expense, "D", 40)
        insert_line(connection, 4, pending, "C", 40)
        insert_header(connection, 4, head_hash(connection), key="raw-1")
    with booked.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO journal_lines (transaction_id, account_id, currency, side, amount_minor, effective_at_us) "
            f"VALUES (5, {expense}, 'USD', 'D', 3, 5), (5, {expense}, 'USD', 'D', 4, 5), "
            f"(5, {pending}, 'USD', 'C', 7, 5)")  # an accrual's one credit (migration 0048)
        insert_header(connection, 5, head_hash(connection), key="raw-2")
    found = totals(booked)
    assert found == sums_of_lines(booked)
    assert found[(PENDING, "USD")][:2] == (0, 100 + 250 + 40 + 7)


INT64_MAX = 2**63 - 1


def test_a_total_past_a_64_bit_integer_is_refused_by_the_database(booked):
    # Python bypassed: raw lines whose sum passes 2^63 - 1 on the pending account (already at 350).
    refused(booked, lambda connection: insert_line(connection, 4, account_ids(connection)[1], "C", INT64_MAX - 349),
            match="range of a 64-bit integer|bigint out of range")
    with booked.engine.begin() as connection:  # up to the limit exactly is fine
        expense, pending = account_ids(connection)
        insert_line(connection, 4, expense, "D", INT64_MAX - 350)
        insert_line(connection, 4, pending, "C", INT64_MAX - 350)
        insert_header(connection, 4, head_hash(connection), key="raw-max")
    assert totals(booked)[(PENDING, "USD")][:2] == (0, INT64_MAX)
    assert totals(booked) == sums_of_lines(booked)


def test_a_debit_total_past_a_64_bit_integer_is_refused_by_the_database(booked):
    # The expense account's USD debits are at 350: one more raw debit line passes 2^63 - 1.
    refused(booked, lambda connection: insert_line(connection, 4, account_ids(connection)[0], "D", INT64_MAX - 349),
            match="range of a 64-bit integer|bigint out of range")
    assert totals(booked) == sums_of_lines(booked)


def test_a_posting_past_the_range_is_a_422_naming_the_amount_and_writes_nothing(booked):
    biggest = 999_999_999_999_999_999  # "999999999999999.999" BHD: 15 integer digits, as the contract allows
    for index in range(9):  # 9 x 1e18 fits under 2^63 - 1 (about 9.22e18); the tenth does not
        post(booked, accrual(f"big-{index}", biggest, "BHD"))
    before = totals(booked)
    with pytest.raises(InvalidInput) as error:
        post(booked, accrual("big-9", biggest, "BHD"))
    assert set(error.value.fields) == {"amount"}
    assert totals(booked) == before == sums_of_lines(booked)
    with booked.reader() as session:
        assert partner_balances(session, "northwind")["BHD"] == (9 * biggest, 0)
        assert program.verified(session) == []


def test_lines_of_a_new_account_in_one_statement_start_its_row_and_add_to_it(booked):
    # One multi-row INSERT: the first line creates the (account, currency) row, the next adds to it
    # (an accrual's debits: its credit is one, migration 0048).
    with booked.engine.begin() as connection:
        expense, pending = account_ids(connection)
        connection.exec_driver_sql(
            "INSERT INTO journal_lines (transaction_id, account_id, currency, side, amount_minor, effective_at_us) "
            f"VALUES (4, {expense}, 'JPY', 'D', 300, 8), (4, {expense}, 'JPY', 'D', 400, 8), "
            f"(4, {pending}, 'JPY', 'C', 700, 8)")
        insert_header(connection, 4, head_hash(connection), key="raw-jpy", at=8)
    found = totals(booked)
    expense_jpy = (chart.EXPENSE_COMMISSION, "JPY")
    assert found[expense_jpy][:2] == (700, 0) and found[expense_jpy][3] == 8
    assert found[(PENDING, "JPY")][:2] == (0, 700)
    assert found == sums_of_lines(booked)


def direct_writes(postgres: bool) -> list[str]:
    columns = "(account_id, currency, debit_minor, credit_minor, last_line_id, latest_effective_at_us)"
    upsert = (f"INSERT INTO account_totals {columns} "
              "SELECT account_id, currency, 1, 1, last_line_id, 5 FROM account_totals WHERE true "
              "ON CONFLICT (account_id, currency) DO UPDATE SET credit_minor = account_totals.credit_minor + 1")
    writes = [
        "UPDATE account_totals SET credit_minor = credit_minor + 1",
        "UPDATE account_totals SET last_line_id = last_line_id + 1",
        "UPDATE account_totals SET currency = 'GBP'",
        "UPDATE account_totals SET latest_effective_at_us = latest_effective_at_us + 1",
        "DELETE FROM account_totals",
        # A row for an (account, currency) without lines.
        f"INSERT INTO account_totals {columns} SELECT account_id, 'GBP', 0, 5, last_line_id, 5 FROM account_totals",
        upsert,
    ]
    if postgres:
        writes.append("TRUNCATE account_totals")
    else:
        writes.append(f"INSERT OR REPLACE INTO account_totals {columns} "
                      "SELECT account_id, currency, 0, 0, last_line_id, 5 FROM account_totals")
    return writes


@pytest.mark.parametrize("number", range(8))
def test_direct_writes_to_the_totals_are_refused(booked, number):
    before = totals(booked)
    statement = direct_writes(booked.engine.dialect.name == "postgresql")[number]
    refused(booked, lambda connection: connection.exec_driver_sql(statement), REFUSED)
    assert totals(booked) == before


def line_of(connection, account_id: int, currency: str) -> tuple[int, int, int, int]:
    """(id, debit, credit, instant) of the account's last line in the currency."""
    return connection.exec_driver_sql(
        "SELECT id, CASE side WHEN 'D' THEN amount_minor ELSE 0 END, CASE side WHEN 'C' THEN amount_minor ELSE 0 END,"
        f" effective_at_us FROM journal_lines WHERE account_id = {account_id} AND currency = '{currency}'"
        " ORDER BY id DESC LIMIT 1").one()


def count_another_accounts_line(connection):
    # The expense account's USD row (its last line: the debit of a2) counts the pending account's newer credit.
    expense, pending = account_ids(connection)
    line_id, _, credit, _ = line_of(connection, pending, "USD")
    connection.exec_driver_sql(f"UPDATE account_totals SET credit_minor = credit_minor + {credit}, "
                               f"last_line_id = {line_id} WHERE account_id = {expense} AND currency = 'USD'")


def count_another_currencys_line(connection):
    # The pending account's USD row counts its own newer EUR line.
    _, pending = account_ids(connection)
    line_id, _, credit, _ = line_of(connection, pending, "EUR")
    connection.exec_driver_sql(f"UPDATE account_totals SET credit_minor = credit_minor + {credit}, "
                               f"last_line_id = {line_id} WHERE account_id = {pending} AND currency = 'USD'")


def row_for_a_currency_without_lines(connection):
    # A GBP row for the pending account, which has no GBP line, carrying its last EUR line as its first.
    _, pending = account_ids(connection)
    line_id, debit, credit, instant = line_of(connection, pending, "EUR")
    connection.exec_driver_sql(
        "INSERT INTO account_totals (account_id, currency, debit_minor, credit_minor, last_line_id, "
        f"latest_effective_at_us) VALUES ({pending}, 'GBP', {debit}, {credit}, {line_id}, {instant})")


def row_for_an_account_without_lines(connection):
    # A USD row for the cash account, which has no line, carrying the pending account's last USD line.
    _, pending = account_ids(connection)
    cash = connection.exec_driver_sql(
        "INSERT INTO accounts (name, type, normal_side) VALUES ('asset:cash', 'asset', 'D') RETURNING id").scalar_one()
    line_id, debit, credit, instant = line_of(connection, pending, "USD")
    connection.exec_driver_sql(
        "INSERT INTO account_totals (account_id, currency, debit_minor, credit_minor, last_line_id, "
        f"latest_effective_at_us) VALUES ({cash}, 'USD', {debit}, {credit}, {line_id}, {instant})")


@pytest.mark.parametrize("write", [count_another_accounts_line, count_another_currencys_line,
                                   row_for_a_currency_without_lines, row_for_an_account_without_lines])
def test_the_totals_count_a_line_only_on_its_own_account_and_currency(booked, write):
    before = totals(booked)
    refused(booked, write, REFUSED)
    assert totals(booked) == before == sums_of_lines(booked)


def test_counting_a_new_line_twice_is_refused(booked):
    # The line is counted as it is inserted; adding it again by hand, as if it were new, is refused.
    def twice(connection):
        expense, pending = account_ids(connection)
        insert_line(connection, 4, expense, "D", 40)
        insert_line(connection, 4, pending, "C", 40)
        [line_id] = connection.exec_driver_sql("SELECT max(id) FROM journal_lines").one()
        connection.exec_driver_sql(
            f"UPDATE account_totals SET credit_minor = credit_minor + 40, last_line_id = {line_id} "
            f"WHERE account_id = {pending} AND currency = 'USD'")
    refused(booked, twice, REFUSED)


def test_a_raw_line_numbered_below_its_accounts_last_leaves_the_totals_on_the_last(booked):
    # Line ids come from the database in increasing order; a raw line may name its own. SQLite refuses one
    # below the last its account counted; PostgreSQL counts it and keeps the account's last line.
    def numbered(transaction_id: int, debit_id: int, credit_id: int):
        def post(connection):
            expense, pending = account_ids(connection)
            connection.exec_driver_sql(
                "INSERT INTO journal_lines (id, transaction_id, account_id, currency, side, amount_minor, "
                f"effective_at_us) VALUES ({debit_id}, {transaction_id}, {expense}, 'USD', 'D', 40, 5), "
                f"({credit_id}, {transaction_id}, {pending}, 'USD', 'C', 40, 5)")
            insert_header(connection, transaction_id, head_hash(connection), key=f"raw-{transaction_id}")
        return post
    with booked.engine.begin() as connection:
        numbered(4, 100, 101)(connection)
    if booked.engine.dialect.name == "sqlite":
        refused(booked, numbered(5, 50, 51), REFUSED)
    else:
        with booked.engine.begin() as connection:
            numbered(5, 50, 51)(connection)
    found = totals(booked)
    assert found == sums_of_lines(booked)
    assert found[(PENDING, "USD")][2] == 101


def test_the_first_line_of_an_account_creates_its_row(booked):
    # The guard on inserted rows is not blanket: a new (account, currency) gets its row.
    post(booked, accrual("g1", 9, "GBP"))
    assert totals(booked)[(PENDING, "GBP")][:2] == (0, 9)


@pytest.mark.usefixtures("written_before_salts")
def test_the_migration_fills_the_totals_from_the_lines_already_there(empty_url):
    upgrade(empty_url, "0007")
    database = Database(empty_url)
    try:
        post(database, accrual("a1", 100), accrual("a2", 250), accrual("e1", 70, "EUR"))
        upgrade(empty_url)
        expected = sums_of_lines(database)
        assert totals(database) == expected and len(expected) == 4
        post(database, accrual("a3", 5))
        assert totals(database) == sums_of_lines(database)
    finally:
        database.dispose()


def test_books_written_before_salts_still_verify_and_the_chain_goes_on_salted(empty_url, written_before_salts,
                                                                            monkeypatch):
    upgrade(empty_url, "0027")
    database = Database(empty_url)
    try:
        post(database, accrual("a1", 100), accrual("a2", 250))
        monkeypatch.undo()  # the code of migration 0028 on
        upgrade(empty_url)
        post(database, accrual("a3", 5))
        with database.reader() as session:
            salts = session.execute(text("SELECT salt FROM journal_transactions ORDER BY id")).scalars().all()
            assert salts[:2] == [None, None] and len(salts[2]) == 32
            assert program.verified(session) == []
    finally:
        database.dispose()


def test_a_line_dated_after_the_bound_sends_the_balance_to_the_lines(booked):
    # Totals count every line; as of an instant they answer only when no counted line is dated at or
    # after it. A line dated in the future (or exactly at the bound) must not count before then.
    # Recorded then too: the database refuses a posting dated past its recording (migration 0029), and
    # verify names a recording past the database's clock, as nothing else.
    future = 4_102_444_800_000_000  # 2100-01-01
    post(booked, accrual("later", 1_000, at=future), recorded_at_us=future)
    with booked.reader() as session:
        assert partner_balances(session, "northwind") == {"USD": (1_350, 0), "EUR": (70, 0)}
        assert partner_balances(session, "northwind", before_us=future) == {"USD": (350, 0), "EUR": (70, 0)}
        assert partner_balances(session, "northwind", before_us=future + 1) == {"USD": (1_350, 0), "EUR": (70, 0)}
        assert all_balances(session, before_us=future)[(PENDING, "USD")] == (0, 350)
        assert all_balances(session, before_us=future + 1)[(PENDING, "USD")] == (0, 1_350)
        assert {problem.code for problem in program.verified(session)} == {"recorded_ahead"}


def test_a_line_dated_after_the_bound_sends_only_its_accounts_to_the_lines(booked):
    # The trial balance as of an instant before one posting's lines reads those two accounts' sums
    # from the nearer end (here their running totals less that line's), by name, and every other
    # account's running totals, in one snapshot (a reader's transaction; on PostgreSQL at
    # REPEATABLE READ). The commission expense's EUR totals hold no later line, yet come from the
    # bounded read too: an account is read one way.
    # The later posting is another partner's accrual, so that northwind's pending account has none.
    # Recorded in the future too: no posting is dated past its recording (migration 0029).
    future = 4_102_444_800_000_000  # 2100-01-01
    southwind = chart.pending("southwind")
    post(booked, journal.transfer("accrual", chart.EXPENSE_COMMISSION, southwind, "USD", 40,
                                  effective_at_us=future, idempotency_key="later", partner_id="southwind",
                                  **program.of_an_event("later", "southwind")), recorded_at_us=future)
    with booked.engine.connect() as connection:
        expected = {(name, currency): (int(debits), int(credits)) for name, currency, debits, credits in
                    connection.exec_driver_sql(
                        "SELECT a.name, l.currency, sum(CASE l.side WHEN 'D' THEN l.amount_minor ELSE 0 END), "
                        "sum(CASE l.side WHEN 'C' THEN l.amount_minor ELSE 0 END) FROM journal_lines l "
                        f"JOIN accounts a ON a.id = l.account_id WHERE l.effective_at_us < {future} "
                        "GROUP BY a.name, l.currency")}
    with recorded(booked.engine) as statements, booked.reader() as session:
        found = all_balances(session, before_us=future)
    assert found == expected and found[(chart.EXPENSE_COMMISSION, "EUR")] == (70, 0)
    assert found[(chart.EXPENSE_COMMISSION, "USD")] == (350, 0) and (southwind, "USD") not in found
    [(_, parameters)] = [(sql, parameters) for sql, parameters in statements if "UNION ALL" in sql]
    bound = set(parameters.values() if isinstance(parameters, dict) else parameters)
    assert {chart.EXPENSE_COMMISSION, southwind} <= bound and PENDING not in bound
    postgres = booked.engine.dialect.name == "postgresql"
    plans = plans_of_line_queries(booked, statements)
    assert plans and all(reads_no_table(plan, postgres) and "ix_journal_lines" in plan for plan in plans), plans


@pytest.mark.postgres
def test_at_read_committed_a_later_line_sends_every_account_to_the_lines(postgres_database):
    # Each statement reads its own snapshot there: the totals and the lines are never added up.
    post(postgres_database, accrual("a1", 100),
         journal.transfer("accrual", chart.EXPENSE_COMMISSION, chart.pending("southwind"), "USD", 40,  # as above
                          effective_at_us=4_102_444_800_000_000, idempotency_key="later", partner_id="southwind",
                          **program.of_an_event("later", "southwind")),
         recorded_at_us=4_102_444_800_000_000)
    with recorded(postgres_database.engine) as statements, Session(postgres_database.engine) as session:
        found = all_balances(session, before_us=4_102_444_800_000_000)
    assert found == {(chart.EXPENSE_COMMISSION, "USD"): (100, 0), (PENDING, "USD"): (0, 100)}
    [(_, parameters)] = [(sql, parameters) for sql, parameters in statements if "UNION ALL" in sql]
    assert PENDING not in set(parameters.values()), parameters


def test_insert_or_replace_without_recursive_triggers_is_refused_on_sqlite(sqlite_database):
    # With recursive_triggers off (the sqlite3 shell's default) the delete guard does not fire for
    # the row a REPLACE removes; the insert guard alone must refuse it.
    post(sqlite_database, accrual("a1", 100), accrual("a2", 250))
    before = totals(sqlite_database)
    # The row rewritten as if the account's last line were its only one: that line's exact amount,
    # id and instant, which a row for a new account would carry.
    refused_without_recursive_triggers(
        sqlite_database,
        "INSERT OR REPLACE INTO account_totals (account_id, currency, debit_minor, credit_minor, "
        "last_line_id, latest_effective_at_us) "
        "SELECT account_id, currency, CASE side WHEN 'D' THEN amount_minor ELSE 0 END, "
        "CASE side WHEN 'C' THEN amount_minor ELSE 0 END, id, effective_at_us "
        "FROM journal_lines WHERE id = (SELECT max(id) FROM journal_lines)", REFUSED)
    assert totals(sqlite_database) == before


def test_verify_reads_one_snapshot_while_postings_commit(booked, monkeypatch):
    # A posting commits after verify has read the lines and before it reads the headers: verify must
    # not see the new header without its lines (PostgreSQL: READ COMMITTED would).
    original = verify_module._lines_grouped

    def lines_then_a_posting(session):
        rows = original(session)
        first = next(rows)  # the lines' query has run
        post(booked, accrual("meanwhile", 5))
        yield first
        yield from rows
    monkeypatch.setattr(verify_module, "_lines_grouped", lines_then_a_posting)
    with booked.reader() as session:
        report = verify(session)
    assert program.besides_made_up_events(report.problems) == []
    assert report.transactions_checked == 3
    with booked.reader() as session:
        assert verify(session).transactions_checked == 4
