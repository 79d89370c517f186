"""A partner's statement lines for a span of time: read from the journal while their period is open,
or as stored when it closed.

A statement line is one transaction's effect on a partner's two accounts in one currency, from the
partner's point of view (a credit, what the vendor owes, is positive): a release, pending to
available, is one line with both amounts. It carries its transaction's instant and source (kind,
customer, invoice, event).

Nothing can be posted inside a closed period (the database refuses it), so a closed period's lines
are fixed. When a period's close is inserted, the database stores every partner's lines of it in
`statement_lines`, in one statement, clustered by partner and instant (SQLite: a table without
rowid, ordered by its primary key; PostgreSQL: the rows written in that order): migration 0013,
whose trigger runs the same query as `_EVERY_PARTNER` here. A closed month's statement then reads
its partner's rows in one range instead of gathering them from the journal: the lines from the
balance index, each with its row for the transaction id, and a header look-up per statement line.
On a busy partner's month (13,500 lines) that took 106 ms on SQLite and 208-362 ms on
PostgreSQL; reading the stored rows takes 31-39 ms. The table is append-only, and on PostgreSQL
only that trigger writes it (on SQLite, which has no roles, a row is refused outside the latest
closed period); `ledger.verify` compares every stored row with the journal (`differences`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, NamedTuple

from sqlalchemy.orm import Session

from ledger import accounts as chart
from ledger.db import driver_rows


class StatementLine(NamedTuple):
    transaction_id: int
    effective_at_us: int
    original_effective_at_us: int | None
    kind: str
    customer_id: str | None
    invoice_id: str | None
    event_id: str | None
    pending_minor: int
    available_minor: int


# Columns in StatementLine's order, then the currency; the stored table holds the same plus the partner.
_FIELDS = ("transaction_id", "effective_at_us", "original_effective_at_us", "kind", "customer_id", "invoice_id",
           "event_id", "pending_minor", "available_minor", "currency")

# The span's lines on partner accounts chosen by `which` (a condition on `accounts`), summed per
# partner, transaction and currency (into pending where `is_pending` holds of the account, else
# into available), then joined to their transactions' headers. Summing first looks
# each header up once per statement line, not once per journal line (a line carries its
# transaction's effective instant: the seal guard holds it). A partner's pending account is named
# `liability:partner:{id}:pending` (ledger.accounts); its other account is `...:available`.
_OWED = "CASE journal_lines.side WHEN 'C' THEN journal_lines.amount_minor ELSE -journal_lines.amount_minor END"
_IS_PENDING = "accounts.name = 'liability:partner:' || accounts.partner_id || ':pending'"


def _from_journal_sql(which: str, is_pending: str = _IS_PENDING) -> str:
    return (
        "SELECT owed.partner_id, owed.transaction_id, owed.effective_at_us,"
        " journal_transactions.original_effective_at_us, journal_transactions.kind, journal_transactions.customer_id,"
        " journal_transactions.invoice_id, journal_transactions.event_id, owed.pending, owed.available, owed.currency"
        " FROM (SELECT accounts.partner_id, journal_lines.effective_at_us, journal_lines.transaction_id,"
        f" journal_lines.currency, sum(CASE WHEN {is_pending} THEN {_OWED} ELSE 0 END) AS pending,"
        f" sum(CASE WHEN {is_pending} THEN 0 ELSE {_OWED} END) AS available"
        " FROM accounts JOIN journal_lines ON journal_lines.account_id = accounts.id"
        f" WHERE {which} AND journal_lines.effective_at_us >= ? AND journal_lines.effective_at_us < ?"
        " GROUP BY accounts.partner_id, journal_lines.effective_at_us, journal_lines.transaction_id,"
        " journal_lines.currency) AS owed"
        " JOIN journal_transactions ON journal_transactions.id = owed.transaction_id")


# One partner: its two accounts by name, so the lines come from the balance index; its pending
# account by name too, as the balances tell it.
_ONE_PARTNER = (_from_journal_sql("accounts.name IN (?, ?)", is_pending="accounts.name = ?")
                + " ORDER BY owed.effective_at_us, owed.transaction_id, owed.currency")
_EVERY_PARTNER = _from_journal_sql(f"accounts.partner_id IS NOT NULL AND ({_IS_PENDING}"
                                  " OR accounts.name = 'liability:partner:' || accounts.partner_id || ':available')")
_STORED_COLUMNS = "partner_id, " + ", ".join(_FIELDS)
_STORED = (f"SELECT {', '.join(_FIELDS)} FROM statement_lines"
           " WHERE partner_id = ? AND effective_at_us >= ? AND effective_at_us < ?"
           " ORDER BY effective_at_us, transaction_id, currency")
_STORED_SPAN = f"SELECT {_STORED_COLUMNS} FROM statement_lines WHERE effective_at_us >= ? AND effective_at_us < ?"


def from_journal(session: Session, partner_id: str, start_us: int, end_us: int) -> dict[str, list[StatementLine]]:
    """{currency: lines} in posting order, gathered from the journal."""
    pending, available = chart.pending(partner_id), chart.available(partner_id)
    rows = driver_rows(session, _ONE_PARTNER, (pending, pending, pending, available, start_us, end_us))
    # int(): PostgreSQL sums BIGINT into NUMERIC, which the driver gives as an integral Decimal.
    return _by_currency((*row[1:-3], int(row[-3]), int(row[-2]), row[-1]) for row in rows)


def stored(session: Session, partner_id: str, start_us: int, end_us: int) -> dict[str, list[StatementLine]]:
    """{currency: lines} in posting order, as stored when their period closed."""
    return _by_currency(driver_rows(session, _STORED, (partner_id, start_us, end_us)))


def _by_currency(rows: Iterable[tuple]) -> dict[str, list[StatementLine]]:
    """Rows of StatementLine's fields and then the currency, split by currency (a busy partner's
    month is tens of thousands of rows: this is the one pass over them)."""
    make, by_currency = StatementLine._make, defaultdict(list)
    for row in rows:
        by_currency[row[-1]].append(make(row[:-1]))
    return dict(by_currency)


class Difference(NamedTuple):
    partner_id: str
    transaction_id: int
    effective_at_us: int
    currency: str
    side: str  # "journal": the journal gives this line and no stored row equals it; "stored": the reverse


def differences(session: Session, start_us: int, end_us: int, *, limit: int) -> list[Difference]:
    """The stored rows of the span [start, end) against the lines the journal gives, both ways, in
    the database (a closed span holds millions of lines; on SQLite the stored side is one scan of
    the table, which is keyed by partner first): up to `limit` in all."""
    found: list[Difference] = []
    for side, sql in (("journal", f"{_EVERY_PARTNER} EXCEPT {_STORED_SPAN}"),
                      ("stored", f"{_STORED_SPAN} EXCEPT {_EVERY_PARTNER}")):
        if len(found) >= limit:
            break
        rows = driver_rows(session, f"{sql} ORDER BY 1, 2, 11 LIMIT ?",
                           (start_us, end_us, start_us, end_us, limit - len(found)))
        found += [Difference(partner_id, transaction_id, effective_at_us, currency, side)
                  for partner_id, transaction_id, effective_at_us, *_, currency in rows]
    return found


def count_outside(session: Session, start_us: int, end_us: int) -> int:
    """How many stored rows lie outside the span [start, end) (the closed periods)."""
    [(count,)] = driver_rows(session, "SELECT count(*) FROM statement_lines WHERE effective_at_us < ?"
                                      " OR effective_at_us >= ?", (start_us, end_us))
    return count
