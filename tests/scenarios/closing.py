"""A vocabulary for period and payout scenarios, on top of `books.Books`: closes, payout runs and
their resolutions, adjustments, and statements read back as decimal strings (the contract's JSON).

Every operation names its instant: a close names the "now" it runs at and a settle the instant it is
effective, so that a scenario reads the same whatever the wall clock says.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ledger import payouts, periods, statements
from ledger.db import Database
from tests.scenarios.books import Books, at

Summary = tuple[tuple[str, str], list[tuple[str, str, str]], tuple[str, str]]


def worked_example_program(database: Database, negative_balance: str = "carry_forward") -> Books:
    """DESIGN.md's worked example: plan msp-standard, partner northwind, customer acme from 2026-01-15."""
    books = Books(database)
    books.plan("msp-standard", "0.20", duration_months=12, hold_days=30, min_payout={"USD": "50.00"},
               negative_balance=negative_balance)
    books.partner("northwind", "msp-standard", type="msp")
    books.attribute("acme", "northwind", "2026-01-15")
    return books


def close(database: Database, period: str, *, now: str) -> periods.Close:
    with database.transaction() as session:
        return periods.close_period(session, period, now_us=at(now))


def run(database: Database, instant: str) -> payouts.PayoutRun:
    with database.transaction() as session:
        return payouts.run_payouts(session, at(instant))


def settle(database: Database, payout_id: int, instant: str) -> payouts.Payout:
    with database.transaction() as session:
        return payouts.settle(session, payout_id, at_us=at(instant))


def fail(database: Database, payout_id: int, instant: str, reason: str | None = None) -> payouts.Payout:
    with database.transaction() as session:
        return payouts.fail(session, payout_id, reason=reason, at_us=at(instant))


def adjust(database: Database, partner_id: str, account: str, amount_minor: int, *, currency: str = "USD",
           effective_at: str, reason: str = "manual correction"):
    with database.transaction() as session:
        return payouts.adjust(session, partner_id, account, amount_minor, currency, reason,
                              effective_at_us=at(effective_at))


def statement(database: Database, partner_id: str, period: str) -> dict[str, Any]:
    """The statement in the contract's JSON shape."""
    with database.reader() as session:
        return statements.to_data(statements.statement(session, partner_id, period))


def section(data: dict[str, Any], currency: str = "USD") -> dict[str, Any]:
    [found] = [s for s in data["currencies"] if s["currency"] == currency]
    return found


def summary(database: Database, partner_id: str, period: str, currency: str = "USD") -> Summary:
    """((opening pending, available), [(kind, pending, available) per line], (closing pending, available))."""
    found = section(statement(database, partner_id, period), currency)
    return ((found["opening"]["pending"], found["opening"]["available"]),
            [(line["kind"], line["pending"], line["available"]) for line in found["lines"]],
            (found["closing"]["pending"], found["closing"]["available"]))


def transactions(database: Database, where: str = "1 = 1", **params) -> list:
    """Journal headers (id, kind, effective_at_us, original_effective_at_us, partner_id) matching `where`."""
    with database.reader() as session:
        return session.execute(sa.text(
            "SELECT id, kind, effective_at_us, original_effective_at_us, partner_id FROM journal_transactions "
            f"WHERE {where} ORDER BY id"), params).all()


def transaction_count(database: Database) -> int:
    with database.reader() as session:
        return session.execute(sa.text("SELECT count(*) FROM journal_transactions")).scalar_one()


def lines_of(database: Database, transaction_id: int) -> list[tuple[str, str, int]]:
    """(account, side, amount) of a transaction, debits first."""
    with database.reader() as session:
        rows = session.execute(sa.text(
            "SELECT a.name, l.side, l.amount_minor FROM journal_lines l JOIN accounts a ON a.id = l.account_id "
            "WHERE l.transaction_id = :t ORDER BY l.side DESC, a.name"), {"t": transaction_id}).all()
    return [tuple(row) for row in rows]


def frozen(database: Database, partner_id: str, period: str) -> tuple:
    """Everything a closed period shows: its statement, its close record and its snapshot."""
    with database.reader() as session:
        return (statements.to_data(statements.statement(session, partner_id, period)),
                periods.get_close(session, period), periods.snapshot(session, period))
