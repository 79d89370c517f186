"""`revshare verify` names a commission or a write-off written around the service on accounts its
kind does not move, a commission in more than one credit (migrations 0047 and 0048 refuse new ones;
rows written before them, or past the triggers on SQLite, stay as they are), a write-off that
forgives another amount than the negative balance, and, on SQLite, a row a connection wrote with its
CHECK constraints turned off."""

import sqlite3

import pytest

from ledger import accounts as chart
from ledger import journal, periods
from ledger.instants import period_bounds_us
from ledger.verify import verify
from tests.integration.test_tamper_evidence import behind_the_triggers, problems
from tests.scenarios.books import Books, at
from tests.scenarios.closing import adjust

PENDING, AVAILABLE = chart.pending("northwind"), chart.available("northwind")


@pytest.fixture
def reset(database) -> Books:
    """northwind on a `reset` plan, owing 30.00 USD at February's end, February closed: its write-off."""
    books = Books(database)
    books.plan("resetting", "0.20", negative_balance="reset")
    books.partner("northwind", "resetting")
    adjust(database, "northwind", "available", -3_000, effective_at="2026-02-10")
    with database.transaction() as session:
        periods.close_period(session, "2026-02", now_us=at("2026-03-02"))
    return books


def writeoff_id(database) -> int:
    with database.engine.connect() as connection:
        return connection.exec_driver_sql(
            "SELECT min(id) FROM journal_transactions WHERE kind = 'writeoff'").scalar_one()


def raw(database, kind: str, debit: str, credit: str, at_us: int, partner_id: str | None = "northwind",
        credits: int = 1) -> int:
    """A transaction of `kind` appended past the triggers, its hashes left to verify to name: 50,000.00
    USD from `debit` to `credit`, in `credits` lines of equal amounts."""
    with database.transaction() as session:
        ids = chart.account_ids(session, [debit, credit])
    with database.engine.connect() as connection:
        head_id, head_hash = connection.exec_driver_sql(
            "SELECT id, hash FROM journal_transactions ORDER BY id DESC LIMIT 1").one()
    new_id = head_id + 1
    with behind_the_triggers(database) as execute:
        for account, side, amount in ((debit, "D", 5000000), *[(credit, "C", 5000000 // credits)] * credits):
            execute("INSERT INTO journal_lines (transaction_id, account_id, currency, side, amount_minor,"
                    f" effective_at_us) VALUES ({new_id}, {ids[account]}, 'USD', '{side}', {amount}, {at_us})")
        partner = "NULL" if partner_id is None else f"'{partner_id}'"
        execute("INSERT INTO journal_transactions (id, kind, effective_at_us, recorded_at_us, idempotency_key,"
                f" request_hash, prev_hash, hash, partner_id) VALUES ({new_id}, '{kind}', {at_us}, {at_us},"
                f" 'raw-{new_id}', '{'0' * 64}', '{head_hash}', '{'1' * 64}', {partner})")
    return new_id


def test_the_books_of_a_reset_close_verify_clean(reset):
    assert writeoff_id(reset.database) and problems(reset.database) == set()


@pytest.mark.parametrize(("kind", "debit", "credit", "partner_id"), [
    ("writeoff", chart.CASH, AVAILABLE, "northwind"),  # the next payout run paid it
    ("writeoff", chart.EXPENSE_WRITEOFF, PENDING, "northwind"),
    ("writeoff", chart.EXPENSE_WRITEOFF, AVAILABLE, None),
    ("accrual", chart.EXPENSE_COMMISSION, AVAILABLE, "northwind"),  # past its hold
    ("cpa", chart.CASH, PENDING, "northwind"),
    ("override", chart.EXPENSE_COMMISSION, PENDING, None),
])
def test_a_commission_or_writeoff_on_accounts_its_kind_does_not_move_is_named(reset, kind, debit, credit, partner_id):
    code = "writeoff_misposted" if kind == "writeoff" else "earning_misposted"
    found = raw(reset.database, kind, debit, credit, period_bounds_us("2026-03")[1] - 1, partner_id)
    assert (found, code) in problems(reset.database)


def test_a_commission_in_two_credits_is_named_misposted(reset):
    """It is no piece (migration 0048): no release nor clawback is ever posted against it."""
    found = raw(reset.database, "accrual", chart.EXPENSE_COMMISSION, PENDING, at("2026-03-05"), credits=2)
    assert (found, "earning_misposted") in problems(reset.database)


def test_a_commission_on_its_accounts_is_not_named_misposted(reset):
    found = raw(reset.database, "override", chart.EXPENSE_COMMISSION, PENDING, at("2026-03-05"))
    codes = {code for transaction_id, code in problems(reset.database) if transaction_id == found}
    assert "hash_mismatch" in codes and not codes & {"earning_misposted", "writeoff_misposted"}


@pytest.mark.parametrize("amount", [2_999, 3_001])
def test_a_writeoff_of_another_amount_than_the_negative_balance_is_named(reset, amount):
    database = reset.database
    writeoff = writeoff_id(database)
    with behind_the_triggers(database) as execute:
        execute(f"UPDATE journal_lines SET amount_minor = {amount} WHERE transaction_id = {writeoff}")
    assert (writeoff, "writeoff_unlike_balance") in problems(database)


def test_a_writeoff_in_an_open_month_or_on_a_carry_forward_plan_is_named(reset):
    database = reset.database
    march_end = period_bounds_us("2026-03")[1] - 1
    adjust(database, "northwind", "available", -5_000_000, effective_at="2026-03-10")
    found = raw(database, "writeoff", chart.EXPENSE_WRITEOFF, AVAILABLE, march_end)  # March is open
    assert (found, "writeoff_misposted") in problems(database)
    with behind_the_triggers(database) as execute:  # the close's write-off pinned to no plan version
        execute(f"UPDATE journal_transactions SET plan_version_id = NULL WHERE id = {writeoff_id(database)}")
    assert (writeoff_id(database), "writeoff_misposted") in problems(database)


def test_a_line_written_with_check_constraints_off_is_named(sqlite_database):
    """A line whose side is neither D nor C passed the seal, which counts every side but D as a
    credit: the trial balance was unbalanced while verify said ok."""
    database = sqlite_database
    books = Books(database)
    books.plan("standard", "0.20")
    books.partner("northwind", "standard")
    adjust(database, "northwind", "available", 100, effective_at="2026-02-10")
    connection = sqlite3.connect(database.engine.url.database)
    try:
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA recursive_triggers = ON")
        connection.execute("PRAGMA ignore_check_constraints = ON")
        ids = dict(connection.execute("SELECT name, id FROM accounts"))
        head_id, head_hash = connection.execute("SELECT id, hash FROM journal_transactions ORDER BY id DESC").fetchone()
        new_id = head_id + 1
        draft = journal.transfer("adjustment", chart.EXPENSE_ADJUSTMENT, AVAILABLE, "USD", 100,
                                 effective_at_us=at("2026-02-11"), idempotency_key="sideways", partner_id="northwind",
                                 memo="sideways")
        for account, side in ((chart.EXPENSE_ADJUSTMENT, "D"), (AVAILABLE, "X")):
            connection.execute("INSERT INTO journal_lines (transaction_id, account_id, currency, side, amount_minor,"
                               " effective_at_us) VALUES (?, ?, 'USD', ?, 100, ?)",
                               (new_id, ids[account], side, draft.effective_at_us))
        connection.execute("INSERT INTO journal_transactions (id, kind, effective_at_us, recorded_at_us,"
                           " idempotency_key, request_hash, prev_hash, hash, partner_id, memo)"
                           " VALUES (?, 'adjustment', ?, ?, 'sideways', ?, ?, ?, 'northwind', 'sideways')",
                           (new_id, draft.effective_at_us, draft.effective_at_us, "0" * 64, head_hash, "1" * 64))
        connection.commit()
    finally:
        connection.close()
    with database.reader() as session:
        report = verify(session)
    assert not report.ok and report.transactions_checked == new_id
    assert any(p.code == "row_against_its_constraints" and "journal_lines" in p.message for p in report.problems)
