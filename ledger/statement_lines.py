"""A partner's statement lines for a span of time: read from the journal while their period is open,
or as stored when it closed.

A statement line is one transaction's effect on a partner's two accounts in one currency, from the
partner's point of view (a credit, what the vendor owes, is positive): a release, pending to
available, is one line with both amounts. It carries its transaction's instant and source (kind,
customer, invoice, event).

Nothing can be posted inside a closed period (the database refuses it), so a closed period's lines
are fixed. When a period's close is inserted, the database stores every partner's lines of it in
`statement_documents`, in one statement: one JSON array per period, partner and currency, each line
an array of StatementLine's fields (migration 0016, whose trigger sums the journal as
`_EVERY_PARTNER` does here). A closed month's statement then reads one row per currency and decodes
it in one call, instead of gathering the lines from the journal (the lines from the balance index,
each with its row for the transaction id, and a header look-up per statement line: 106 ms on SQLite
and 208-362 ms on PostgreSQL for a busy partner's month of 13,500 lines) or reading them as rows
(migration 0013: 31-39 ms, most of it the driver making ten Python values of each row). The table is
append-only, and on PostgreSQL only that trigger writes it (on SQLite, which has no roles, a
document is refused unless it is of the latest closed period); `ledger.verify` compares every line
of every document with the journal (`differences`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import groupby
from operator import itemgetter
from typing import Callable, Iterable, NamedTuple

import msgspec
from sqlalchemy.orm import Session

from ledger import accounts as chart
from ledger import collector
from ledger.db import driver_rows, driver_stream, is_postgres


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
# A closed period's documents of one partner, by the primary key (period, partner, currency).
_STORED = "SELECT currency, CAST(lines AS TEXT) FROM statement_documents WHERE period = ? AND partner_id = ?"


def from_journal(session: Session, partner_id: str, start_us: int, end_us: int) -> dict[str, list[StatementLine]]:
    """{currency: lines} in posting order, gathered from the journal."""
    pending, available = chart.pending(partner_id), chart.available(partner_id)
    rows = driver_rows(session, _ONE_PARTNER, (pending, pending, pending, available, start_us, end_us))
    # int(): PostgreSQL sums BIGINT into NUMERIC, which the driver gives as an integral Decimal.
    return _by_currency((*row[1:-3], int(row[-3]), int(row[-2]), row[-1]) for row in rows)


def stored(session: Session, partner_id: str, period: str) -> dict[str, list[StatementLine]]:
    """{currency: lines} in posting order, as stored when their period closed."""
    found = {}
    for currency, text in driver_rows(session, _STORED, (period, partner_id)):
        with collector.paused():
            found[currency] = decoded(text)
    return found


def decoded(text: str) -> list[StatementLine]:
    """A stored document's lines, in posting order."""
    lines = _DOCUMENT_LINES.decode(text)
    lines.sort(key=_IN_POSTING_ORDER)  # written in this order; SQLite does not promise to keep it
    return lines


# A stored document decoded straight into StatementLines, each value checked against its field's
# type, in one pass in C: json.loads and a tuple made of each line took about three times as long.
_DOCUMENT_LINES = msgspec.json.Decoder(list[StatementLine])
_IN_POSTING_ORDER = itemgetter(1, 0)


def _by_currency(rows: Iterable[tuple]) -> dict[str, list[StatementLine]]:
    """Rows of StatementLine's fields and then the currency, split by currency (a busy partner's
    month is tens of thousands of rows: this is the one pass over them)."""
    make, by_currency = StatementLine._make, defaultdict(list)
    for row in rows:
        by_currency[row[-1]].append(make(row[:-1]))
    return dict(by_currency)


class Difference(NamedTuple):
    period: str
    partner_id: str
    currency: str
    transaction_id: int | None  # None for a malformed document
    side: str  # "journal": the journal gives the line, its document does not hold it (as often);
    #            "stored": the reverse; "malformed": the document is not a non-empty JSON array of lines;
    #            for the lines as written (statement_bodies.py): "written", the line is not written as
    #            the journal gives it; "written_totals", the totals or sums are not the lines';
    #            "written_unlisted", written for a partner and currency the journal gives no lines for;
    #            and "written_malformed", not a JSON array of objects


# The period's lines of every partner in (partner, currency) groups, each in posting order.
_EVERY_PARTNER_GROUPED = (_EVERY_PARTNER
                          + " ORDER BY owed.partner_id, owed.currency, owed.effective_at_us, owed.transaction_id")
# As bytes on SQLite, whose JSON check lets text that is not UTF-8 by; the decoder then names it.
_DOCUMENT = ("SELECT CAST(lines AS {type}) FROM statement_documents"
             " WHERE period = ? AND partner_id = ? AND currency = ?")
_DOCUMENTS = "SELECT partner_id, currency FROM statement_documents WHERE period = ? ORDER BY partner_id, currency"
_STREAM_ROWS = 10_000


# What else is compared with each (period, partner, currency)'s lines as the journal gives them,
# and then names what it holds of a period that the journal gives no lines for.
class Also(NamedTuple):
    compare: Callable[[Session, tuple[str, str, str], list[StatementLine]], list[Difference]]
    unlisted: Callable[[Session, str, set[tuple[str, str]]], list[Difference]]


def differences(session: Session, periods: Iterable[tuple[str, int, int]], *, limit: int,
                also: Also | None = None) -> list[Difference]:
    """Each closed period's documents, (period, start, end), against the lines the journal gives for
    it, line for line (a line held twice counts twice; the order within a document is not
    compared, since the reader sorts): the journal's lines streamed in (partner, currency) groups,
    each against its document (and `also`'s), then the period's documents no group had. Up to
    `limit`."""
    found: list[Difference] = []
    document = _DOCUMENT.format(type="TEXT" if is_postgres(session) else "BLOB")
    make = StatementLine._make
    for period, start_us, end_us in periods:
        had = set()
        rows = driver_stream(session, _EVERY_PARTNER_GROUPED, (start_us, end_us), rows_per_fetch=_STREAM_ROWS)
        try:
            for (partner_id, currency), group in groupby(rows, key=itemgetter(0, 10)):
                # int(): PostgreSQL sums BIGINT into NUMERIC, which the driver gives as an integral Decimal.
                given = [make((*row[1:8], int(row[8]), int(row[9]))) for row in group]
                had.add((partner_id, currency))
                found += _compare(session, document, (period, partner_id, currency), given)
                if also is not None:
                    found += also.compare(session, (period, partner_id, currency), given)
                if len(found) >= limit:
                    return found[:limit]
        finally:
            rows.close()
        for partner_id, currency in driver_rows(session, _DOCUMENTS, (period,)):
            if (partner_id, currency) not in had:
                found += _compare(session, document, (period, partner_id, currency), [])
                if len(found) >= limit:
                    return found[:limit]
        if also is not None:
            found += also.unlisted(session, period, had)
            if len(found) >= limit:
                return found[:limit]
    return found


def _compare(session: Session, document: str, key: tuple[str, str, str], given: list[tuple]) -> list[Difference]:
    """One partner's lines in one currency as the journal gives them against its stored document
    (`key`: period, partner, currency; `document`: the query reading it)."""
    [(text,)] = driver_rows(session, document, key) or [(None,)]
    with collector.paused():
        stored = _lines_of(text)
    if stored is None:
        return [Difference(*key, None, "malformed")]
    if stored == given:
        return []
    held, wanted = Counter(stored), Counter(given)
    return sorted((Difference(*key, line[0], side)
                   for side, lines in (("journal", wanted - held), ("stored", held - wanted))
                   for line in lines.elements()), key=lambda d: (d.transaction_id, d.side))


def _lines_of(text: str | bytes | None) -> list[StatementLine] | None:
    """A document's lines (none for no document); None unless it is a non-empty JSON array of lines,
    each of StatementLine's fields with its exact type (to Python, 1.0 and true equal 1)."""
    if text is None:
        return []
    try:
        lines = _DOCUMENT_LINES.decode(text)
    except msgspec.MsgspecError:  # not JSON, not UTF-8, or not such lines
        return None
    return lines or None


def periods_not_closed(session: Session) -> list[str]:
    """Periods with stored documents and no close (the foreign key holds it, unless switched off)."""
    return [period for (period,) in driver_rows(
        session, "SELECT DISTINCT period FROM statement_documents"
                 " WHERE period NOT IN (SELECT period FROM period_closes) ORDER BY period")]
