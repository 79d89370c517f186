"""A closed period's statement lines as the HTTP contract writes them, stored by its close.

A busy partner's closed month is some 14,500 lines. Reading their document (statement_lines.stored)
took 13-29 ms at 10M journal lines, and writing each line as the API's JSON (two instants, two
amounts, an object of nine keys) about as much again: 54-80 ms a statement served, against a target
of 50. So when a period closes, the service also writes every partner's lines of it, per currency,
as the API's JSON array of lines, with the totals by kind as the API writes them and the sums of the
pending and available amounts, into `statement_bodies`, in the close's transaction
(`store`). A closed month's statement is then that text set into its frame of opening and closing
balances (`statements.statement_json`), with no object made per line: 3.1 ms on SQLite and 9-10 ms
on PostgreSQL for that month.

The rendering is `written`, made of the code `statements.to_json` writes every statement's lines
and totals with (`line_bodies`, `written_totals`), so a stored body is byte for byte what the API
would write from the document. The database holds
that a body is of the latest closed period, of a document stored for it, with as many lines as
that document, and never changes (migration 0035); that it is the journal's lines as the API writes
them, `ledger.verify` checks with the documents, line for line (`compare`). A period closed before
migration 0035 has no bodies: its statements are written from its documents, as before.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import msgspec
import msgspec.structs
from sqlalchemy.orm import Session

from ledger import collector, statement_lines
from ledger.db import driver_rows, driver_stream, insert_many
from ledger.instants import format_instant
from ledger.money import minor_formatter
from ledger.schema import statement_bodies
from ledger.statement_lines import Difference, StatementLine


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


LINE_FIELDS = _LineBody.__struct_fields__


def line_bodies(lines: Iterable[StatementLine], money: Callable[[int], str]) -> list[_LineBody]:
    instant = format_instant
    return [_LineBody(transaction_id, instant(effective_at_us), instant(original_effective_at_us), kind, customer_id,
                      invoice_id, event_id, money(pending_minor), money(available_minor))
            for (transaction_id, effective_at_us, original_effective_at_us, kind, customer_id, invoice_id, event_id,
                 pending_minor, available_minor) in lines]


class Tally(NamedTuple):
    totals: dict[str, int]  # kind -> effect on pending + available, by kind in order
    pending_minor: int
    available_minor: int


def tally(lines: Iterable[StatementLine]) -> Tally:
    totals: dict[str, int] = defaultdict(int)
    pending = available = 0
    for line in lines:
        totals[line.kind] += line.pending_minor + line.available_minor
        pending += line.pending_minor
        available += line.available_minor
    return Tally(dict(sorted(totals.items())), pending, available)


def written_totals(totals: dict[str, int], money: Callable[[int], str]) -> dict[str, str]:
    return {kind: money(amount) for kind, amount in totals.items()}


class Body(NamedTuple):
    """One partner's lines of a closed period in one currency as the API writes them (`lines`, a
    JSON array; `totals`, a JSON object by kind), and what they add to pending and to available."""
    lines: str
    totals: str
    pending_minor: int
    available_minor: int


def written(currency: str, lines: Sequence[StatementLine]) -> Body:
    money, (totals, pending, available) = minor_formatter(currency), tally(lines)
    return Body(_ENCODE(line_bodies(lines, money)).decode(), _ENCODE(written_totals(totals, money)).decode(),
                pending, available)


_ENCODE = msgspec.json.Encoder().encode
_DOCUMENTS = "SELECT partner_id, currency, CAST(lines AS TEXT) FROM statement_documents WHERE period = ?"
_COLUMNS = ("period", "partner_id", "currency", "lines", "totals", "pending_minor", "available_minor")
_DOCUMENTS_PER_FETCH = 200
_BODIES_PER_INSERT = 500


def store(session: Session, period: str) -> int:
    """Write the bodies of `period`, just closed, from the documents its close stored; returns how
    many. A few hundred documents at a time: a month of 1M journal lines is some 120 MB of bodies."""
    stored, pending = 0, []
    rows = driver_stream(session, _DOCUMENTS, (period,), rows_per_fetch=_DOCUMENTS_PER_FETCH)
    try:
        for partner_id, currency, text in rows:
            with collector.paused():
                lines = statement_lines.decoded(text)
            pending.append((period, partner_id, currency, *written(currency, lines)))
            if len(pending) == _BODIES_PER_INSERT:
                stored += _insert(session, pending)
    finally:
        rows.close()
    return stored + _insert(session, pending)


def _insert(session: Session, bodies: list[tuple]) -> int:
    insert_many(session, statement_bodies, _COLUMNS, bodies)
    count = len(bodies)
    bodies.clear()
    return count


# A partner's documents of a period, each with its body if it has one (by both primary keys).
_STORED = ("SELECT d.currency, CAST(b.lines AS TEXT), CAST(b.totals AS TEXT), b.pending_minor, b.available_minor"
           " FROM statement_documents d LEFT JOIN statement_bodies b"
           " ON b.period = d.period AND b.partner_id = d.partner_id AND b.currency = d.currency"
           " WHERE d.period = ? AND d.partner_id = ?")


def stored(session: Session, partner_id: str, period: str) -> dict[str, Body] | None:
    """{currency: body} of a closed period's documents of the partner; None when a document has no
    body (its period was closed before migration 0035)."""
    found = {}
    for currency, *body in driver_rows(session, _STORED, (period, partner_id)):
        if body[0] is None:
            return None
        found[currency] = Body(*body)
    return found


_BODY = ("SELECT CAST(lines AS TEXT), CAST(totals AS TEXT), pending_minor, available_minor FROM statement_bodies"
         " WHERE period = ? AND partner_id = ? AND currency = ?")
_BODIES = "SELECT partner_id, currency FROM statement_bodies WHERE period = ? ORDER BY partner_id, currency"


def compare(session: Session, key: tuple[str, str, str], given: list[StatementLine]) -> list[Difference]:
    """One partner's lines of a closed period in one currency as the journal gives them (`key`:
    period, partner, currency) against its body, if it has one: the first line written otherwise
    (side `written`), or, with the lines alike, its totals or sums (side `written_totals`)."""
    [row] = driver_rows(session, _BODY, key) or [None]
    if row is None:
        return []
    expected = written(key[2], given)
    if row[0] == expected.lines:
        return [] if Body(*row) == expected else [Difference(*key, None, "written_totals")]
    try:
        found = msgspec.json.decode(row[0], type=list[dict])
    except msgspec.MsgspecError:
        return [Difference(*key, None, "written_malformed")]
    return [Difference(*key, _first_unlike(found, line_bodies(given, minor_formatter(key[2]))), "written")]


def _first_unlike(found: list[dict], wanted: list[_LineBody]) -> int | None:
    """The transaction of the first line written otherwise than the journal gives it: the first
    that differs, else the first of the longer list's lines beyond the other's; None when the lines
    are alike one by one, and only their writing differs (spacing, the order of a line's keys)."""
    for line, expected in zip(found, wanted):
        if line != msgspec.structs.asdict(expected):
            return expected.transaction_id
    if len(wanted) > len(found):
        return wanted[len(found)].transaction_id
    if len(found) == len(wanted):
        return None
    beyond = found[len(wanted)].get("transaction_id")
    return beyond if isinstance(beyond, int) else None


def unlisted(session: Session, period: str, had: set[tuple[str, str]]) -> list[Difference]:
    """A closed period's bodies of a partner and currency the journal gives no lines for."""
    return [Difference(period, partner_id, currency, None, "written_unlisted")
            for partner_id, currency in driver_rows(session, _BODIES, (period,)) if (partner_id, currency) not in had]


def periods_not_closed(session: Session) -> list[str]:
    """Periods with stored bodies and no close (the foreign key holds it, unless switched off)."""
    return [period for (period,) in driver_rows(
        session, "SELECT DISTINCT period FROM statement_bodies"
                 " WHERE period NOT IN (SELECT period FROM period_closes) ORDER BY period")]


# What `ledger.verify` compares with the journal beside the documents.
ALSO = statement_lines.Also(compare, unlisted)
