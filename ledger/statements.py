"""Partner statements: a period's opening balances, every line traced to its source, totals by
kind, and closing balances, per currency, from the partner's point of view (what the vendor owes
it: a credit to its pending or available account is positive).

Opening balances come from the latest snapshot plus the lines after it (balances.py); the lines are
the period's postings on the partner's two accounts, one statement line per transaction and
currency (a release, pending to available, is one line with both amounts): an open period's
gathered from the journal, a closed period's as stored when it closed (statement_lines.py).
Closing = opening + the lines, always; a closed period's statement is therefore fixed once its
period is closed.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Callable
from typing import NamedTuple

import msgspec
import msgspec.structs
from sqlalchemy.orm import Session

from ledger import statement_lines
from ledger.balances import partner_balances
from ledger.instants import format_instant, period_bounds_us
from ledger.money import minor_formatter
from ledger.periods import period_status
from ledger.statement_lines import StatementLine

LINE_KINDS = ("accrual", "cpa", "override", "clawback", "release", "payout", "payout_failed", "writeoff",
              "adjustment", "reversal")


class CurrencyStatement(NamedTuple):
    currency: str
    opening: tuple[int, int]  # (pending, available)
    lines: tuple[StatementLine, ...]
    totals: dict[str, int]  # kind -> effect on pending + available
    closing: tuple[int, int]


class Statement(NamedTuple):
    partner_id: str
    period: str
    period_status: str
    close_hash: str | None
    currencies: tuple[CurrencyStatement, ...]


def statement(session: Session, partner_id: str, period: str) -> Statement:
    start_us, end_us = period_bounds_us(period)
    status, close = period_status(session, period)
    opening = partner_balances(session, partner_id, before_us=start_us)
    if status == "closed":
        lines = statement_lines.stored(session, partner_id, period)
    else:
        lines = statement_lines.from_journal(session, partner_id, start_us, end_us)
    sections = []
    for currency in sorted(set(opening) | set(lines)):
        opening_pending, opening_available = pending, available = opening.get(currency, (0, 0))
        totals: dict[str, int] = defaultdict(int)
        for line in lines.get(currency, ()):
            totals[line.kind] += line.pending_minor + line.available_minor
            pending += line.pending_minor
            available += line.available_minor
        sections.append(CurrencyStatement(currency, (opening_pending, opening_available),
                                          tuple(lines.get(currency, ())), dict(totals), (pending, available)))
    return Statement(partner_id, period, status, close.close_hash if close else None, tuple(sections))


def to_data(statement_: Statement) -> dict:
    """The JSON shape of the HTTP contract, amounts as decimal strings."""
    return _shaped(statement_, lambda section, money: [msgspec.structs.asdict(line)
                                                       for line in _line_bodies(section, money)])


def to_json(statement_: Statement) -> bytes:
    """`to_data` as the HTTP contract's JSON body, in UTF-8. msgspec encodes it in the order it was
    built: Flask's `jsonify` took 42-65 ms for a month of 14,624 lines, msgspec about 5 ms; each
    line a `_LineBody` rather than a dict of nine keys, a month of 14,458 lines is built and
    written in 20 ms rather than 26."""
    return msgspec.json.encode(_shaped(statement_, _line_bodies))


# What writes a section's lines, given the section and its currency's amount formatter.
_Lines = Callable[[CurrencyStatement, Callable[[int], str]], list]


def _shaped(statement_: Statement, lines: _Lines) -> dict:
    return {
        "partner_id": statement_.partner_id,
        "period": statement_.period,
        "period_status": statement_.period_status,
        "close_hash": statement_.close_hash,
        "currencies": [_section_data(section, lines) for section in statement_.currencies],
    }


def _section_data(section: CurrencyStatement, lines: _Lines) -> dict:
    money = minor_formatter(section.currency)
    return {
        "currency": section.currency,
        "opening": {"pending": money(section.opening[0]), "available": money(section.opening[1])},
        "lines": lines(section, money),
        "totals": {kind: money(amount) for kind, amount in sorted(section.totals.items())},
        "closing": {"pending": money(section.closing[0]), "available": money(section.closing[1])},
    }


class _LineBody(msgspec.Struct, gc=False):
    """A statement line as the contract writes it, its fields in the contract's order. Untracked by
    Python's collector (`gc=False`; it holds strings, integers and None, so no cycle): a month's
    thousands of them do not set off its collections, and a full collection traces every object the
    process holds (on a hot partner's month, 60 statements in one process, 5 full collections with
    the lines tracked and 1 without; p90 of a statement read and written 35-40 -> 23-28 ms)."""
    transaction_id: int
    effective_at: str
    original_effective_at: str | None
    kind: str
    customer_id: str | None
    invoice_id: str | None
    event_id: str | None
    pending: str
    available: str


def _line_bodies(section: CurrencyStatement, money: Callable[[int], str]) -> list[_LineBody]:
    instant = format_instant
    return [_LineBody(transaction_id, instant(effective_at_us), instant(original_effective_at_us), kind, customer_id,
                      invoice_id, event_id, money(pending_minor), money(available_minor))
            for (transaction_id, effective_at_us, original_effective_at_us, kind, customer_id, invoice_id, event_id,
                 pending_minor, available_minor) in section.lines]


# The statement's, then a line's columns, as `_LineBody` names them.
CSV_COLUMNS = ("partner_id", "period", "currency", "row", *_LineBody.__struct_fields__)


def to_csv(statement_: Statement) -> str:
    """One row per line, framed by an `opening` and a `closing` row per currency."""
    data = to_data(statement_)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for section in data["currencies"]:
        base = [data["partner_id"], data["period"], section["currency"]]
        writer.writerow(base + ["opening", "", "", "", "", "", "", "", section["opening"]["pending"],
                                section["opening"]["available"]])
        for line in section["lines"]:
            writer.writerow(base + ["line"] + [value if value is not None else "" for value in line.values()])
        writer.writerow(base + ["closing", "", "", "", "", "", "", "", section["closing"]["pending"],
                                section["closing"]["available"]])
    return out.getvalue()


TEXT_HEADER = ("date", "transaction", "kind", "customer", "invoice", "event", "dated", "pending", "available")


def to_text(statement_: Statement) -> str:
    """A table per currency, every column as wide as its widest cell (nothing is cut). `dated` is a
    line's original instant when it was posted later, in the first open period after a close."""
    data = to_data(statement_)
    status = data["period_status"] + (f", close hash {data['close_hash']}" if data["close_hash"] else "")
    out = [f"Statement for partner {data['partner_id']}, period {data['period']} ({status})"]
    for section in data["currencies"]:
        blank = ("",) * (len(TEXT_HEADER) - 3)
        rows = [TEXT_HEADER, ("opening", *blank, section["opening"]["pending"], section["opening"]["available"])]
        for line in section["lines"]:
            # Customer and invoice in columns of their own: either id may hold any separator.
            rows.append((line["effective_at"][:10], f"#{line['transaction_id']}", line["kind"],
                         line["customer_id"] or "-", line["invoice_id"] or "-", line["event_id"] or "-",
                         (line["original_effective_at"] or "")[:10], line["pending"], line["available"]))
        rows.append(("closing", *blank, section["closing"]["pending"], section["closing"]["available"]))
        widths = [max(len(row[column]) for row in rows) for column in range(len(TEXT_HEADER))]
        out.append(f"\n{section['currency']}")
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row[:-2], widths)]
            cells += [cell.rjust(width) for cell, width in zip(row[-2:], widths[-2:])]
            out.append(("  " + "  ".join(cells)).rstrip())
        totals = ", ".join(f"{kind} {amount}" for kind, amount in section["totals"].items())
        out.append(f"  totals: {totals or 'no lines'}")
    return "\n".join(out) + "\n"
