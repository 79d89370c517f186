"""Reading posted transactions: one by id, or pages in sequence order, optionally for one partner,
one invoice or one revenue event.

Reads only: posting lives in `journal.py`. A page is keyset-paginated on the transaction id (the
gap-free sequence), so a page costs the same at the millionth transaction as at the first; a
partner's page walks the (partner_id, id) index, an invoice's or an event's reads its few headers
through the index on `invoice_id` or `event_id`. An invoice's transactions are its whole trace:
accruals, CPA, overrides, clawbacks, releases and their reversals all carry the invoice; a release
or a reversal names the event of what it releases or mirrors. There is no filter by customer or
kind: no index serves either, and a page of a rare kind on a journal of millions would read it
whole. Each transaction comes with its lines (in the order they were posted) and the id of the
reversal that mirrors it, if any.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger.errors import NotFound
from ledger.schema import accounts, journal_lines, journal_transactions

PAGE_SIZE_MAX = 1000


class PostedLine(NamedTuple):
    account: str
    currency: str
    side: str  # 'D' or 'C'
    amount_minor: int


class Transaction(NamedTuple):
    id: int
    kind: str
    effective_at_us: int
    original_effective_at_us: int | None
    recorded_at_us: int
    matures_at_us: int | None
    partner_id: str | None
    customer_id: str | None
    invoice_id: str | None
    event_id: str | None
    plan_version_id: int | None
    accrual_id: int | None
    reverses_id: int | None
    memo: str | None
    prev_hash: str
    hash: str
    lines: tuple[PostedLine, ...]
    reversed_by_id: int | None


# Header columns in the order of `Transaction`'s fields, up to `hash`.
_HEADER_COLUMNS = [journal_transactions.c[name] for name in Transaction._fields[:16]]


def get(session: Session, transaction_id: int, *, partner_id: str | None = None) -> Transaction:
    """The transaction with this id (of this partner, when one is given); NotFound when there is none.
    Another partner's is found missing by the same one statement as an id past the journal's head,
    so that neither the answer nor its time tells a partner that the id is taken."""
    t = journal_transactions.c
    query = select(*_HEADER_COLUMNS).where(t.id == transaction_id)
    rows = session.execute(query if partner_id is None else query.where(t.partner_id == partner_id)).all()
    if not rows:
        raise NotFound(f"transaction {transaction_id} not found")
    return _assemble(session, rows)[0]


def page(session: Session, *, after_id: int = 0, limit: int, partner_id: str | None = None,
         invoice_id: str | None = None, event_id: str | None = None) -> list[Transaction]:
    """Up to `limit` transactions with id > `after_id`, in id order; only those of each filter given."""
    assert 1 <= limit <= PAGE_SIZE_MAX + 1, limit
    t = journal_transactions.c
    query = select(*_HEADER_COLUMNS).where(t.id > after_id).order_by(t.id).limit(limit)
    for column, value in ((t.partner_id, partner_id), (t.invoice_id, invoice_id), (t.event_id, event_id)):
        if value is not None:
            query = query.where(column == value)
    return _assemble(session, session.execute(query).all())


def _assemble(session: Session, headers: Sequence) -> list[Transaction]:
    ids = [header.id for header in headers]
    lines = _lines(session, ids)
    reversals = _reversals(session, ids)
    return [Transaction(*header, lines=lines.get(header.id, ()), reversed_by_id=reversals.get(header.id))
            for header in headers]


def _lines(session: Session, transaction_ids: list[int]) -> dict[int, tuple[PostedLine, ...]]:
    if not transaction_ids:
        return {}
    j = journal_lines.c
    rows = session.execute(
        select(j.transaction_id, accounts.c.name, j.currency, j.side, j.amount_minor)
        .join(accounts, accounts.c.id == j.account_id)
        .where(j.transaction_id.in_(transaction_ids))
        .order_by(j.transaction_id, j.id))
    grouped: dict[int, list[PostedLine]] = defaultdict(list)
    for row in rows:
        grouped[row.transaction_id].append(PostedLine(row.name, row.currency, row.side, row.amount_minor))
    return {key: tuple(value) for key, value in grouped.items()}


def _reversals(session: Session, transaction_ids: list[int]) -> dict[int, int]:
    if not transaction_ids:
        return {}
    t = journal_transactions.c
    rows = session.execute(select(t.reverses_id, t.id).where(t.reverses_id.in_(transaction_ids)))
    return {reverses_id: reversal_id for reverses_id, reversal_id in rows}
