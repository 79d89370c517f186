"""Periods: calendar months in UTC, open until closed, closed in order, with audit-grade snapshots.

Closing P (only once P has ended): every earlier period with postings must already be closed
(earlier empty periods are closed along with P, so closes form an unbroken chain); holds maturing
before P's end are released; negative available balances of partners on a `reset` plan are written
off at P's last instant; then every account's cumulative debits and credits at P's end are stored
as P's snapshot, with the period's transaction count, the journal head, the program's chain head
(`program_chain`, since migration 0053), and a close hash over all of it chained to the previous
close; inserting the close makes the database store every partner's statement lines of P as
documents (statement_lines.py), and the service writes them again as the API writes them
(statement_bodies.py), which a closed month's statement serves.
After that, a posting dated inside P is made at the start of the first open period
(journal.Batch), and the database refuses one dated inside it.

A snapshot is computed incrementally: the previous snapshot plus the lines of the period.

The books' periods (`books_periods`) are the close chain followed by the open periods through now,
read a page at a time: a page of close records and a few values off indexes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, ContextManager, NamedTuple

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from ledger import accounts as chart
from ledger import holds, journal, program_chain, statement_bodies
from ledger.balances import partner_account_sums, sums
from ledger.db import database_now_us, lock_journal
from ledger.errors import Conflict, NotFound
from ledger.instants import format_instant, next_period, period_bounds_us, period_of
from ledger.partners import program_for
from ledger.schema import (
    GENESIS_HASH,
    accounts,
    journal_lines,
    journal_transactions,
    period_closes,
    period_snapshots,
)


class Close(NamedTuple):
    period: str
    starts_at_us: int
    ends_at_us: int
    closed_at_us: int
    transaction_count: int
    chain_head_id: int
    chain_head_hash: str
    prev_close_hash: str
    close_hash: str


# A close as read: without the program's head, which only `verify` reads (`program_heads`), and which
# the books below migration 0053 (as the tests of earlier migrations write them) have no column for.
_CLOSES = select(*(period_closes.c[field] for field in Close._fields))

SnapshotRows = dict[tuple[int, str], tuple[int, int]]  # (account id, currency) -> (debits, credits)


def close_hash(prev_close_hash: str, period: str, transaction_count: int, chain_head_id: int,
               chain_head_hash: str, snapshot: SnapshotRows, names: dict[int, str],
               program_head: tuple[int, str] | None = None) -> str:
    """The hash of a close's content; with the program's chain head as it closed, for the closes made
    since migration 0053 (`ledger.program_chain`), without it for those made before."""
    rows = sorted([names[account_id], currency, debit, credit] for (account_id, currency), (debit, credit) in snapshot.items())
    fields = [prev_close_hash, period, transaction_count, chain_head_id, chain_head_hash, rows]
    content = json.dumps(fields if program_head is None else [*fields, *program_head], separators=(",", ":"))
    return hashlib.sha256(content.encode()).hexdigest()


def latest_close(session: Session, *, ending_by_us: int | None = None) -> Close | None:
    query = _CLOSES.order_by(period_closes.c.ends_at_us.desc()).limit(1)
    if ending_by_us is not None:
        query = query.where(period_closes.c.ends_at_us <= ending_by_us)
    row = session.execute(query).first()
    return Close(*row) if row else None


def get_close(session: Session, period: str) -> Close | None:
    row = session.execute(_CLOSES.where(period_closes.c.period == period)).first()
    return Close(*row) if row else None


def program_heads(session: Session) -> dict[str, tuple[int, str]]:
    """The program's chain head each close made since migration 0053 recorded, by period."""
    if not program_chain.chained(session):
        return {}
    c = period_closes.c
    return {period: (head_id, head_hash) for period, head_id, head_hash in session.execute(
        select(c.period, c.program_head_id, c.program_head_hash).where(c.program_head_id.is_not(None)))}


def snapshot(session: Session, period: str) -> SnapshotRows:
    s = period_snapshots.c
    rows = session.execute(select(s.account_id, s.currency, s.debit_minor, s.credit_minor).where(s.period == period))
    return {(a, c): (d, k) for a, c, d, k in rows}


def first_posting_us(session: Session) -> int | None:
    """The instant of the journal's earliest posting, or None for an empty journal."""
    return session.execute(select(func.min(journal_lines.c.effective_at_us))).scalar()


def close_period(session: Session, period: str, *, now_us: int | None = None) -> Close:
    """Close `period` (and any empty open periods before it), at `now_us`, or at None at now as
    read under the journal lock: read before it, a close that waited behind another writer was
    dated (`closed_at`) before postings that writer committed while it waited. The caller commits."""
    batch, first_open = _refuse_close(session, period, now_us)
    closed = None
    for target in _periods_between(first_open, period) + [period]:
        closed = _close_one(session, batch, target, batch.recorded_at_us)
    return closed


def close_in_transactions(transaction: Callable[[], ContextManager[Session]], period: str
                          ) -> tuple[Close, bool, int]:
    """(the close of `period`, whether it was made before, how many releases were posted first):
    `close_period` in a `transaction()` of its own, after the releases it posts first (the holds
    maturing before the period's end), made `holds.HOLDS_PER_TRANSACTION` to a transaction
    (`holds.release_in_transactions`), as the scheduler's close job makes them: in its one
    transaction, a close after months of holds held the journal's lock through every release, and
    every posting waited, or failed past its lock wait. A period closed already is answered with its
    close, posting nothing, as a payout run made already is with its run: for the command line (an
    operator, a cron job) it is a state reached, not a failure."""
    with transaction() as session:
        made = _made_close(session, period)
        if made is None:
            _refuse_close(session, period, None)  # a refused close posts no release either
    if made is not None:
        return made, True, 0
    released = holds.release_in_transactions(transaction, period_bounds_us(period)[1] - 1)
    with transaction() as session:
        made = _made_close(session, period)  # by another process while the releases were made
        return (made, True, released) if made is not None else (close_period(session, period), False, released)


def release_before_close(transaction: Callable[[], ContextManager[Session]], period: str, *,
                         deadline: float | None = None) -> int:
    """The releases `close_period` would post first, each `transaction()` of them committed on its
    own (`close_in_transactions`); returns how many were posted. The close is checked first, so a
    refused close posts no release. `deadline` as for `holds.release_in_transactions`."""
    with transaction() as session:
        _refuse_close(session, period, None)
    return holds.release_in_transactions(transaction, period_bounds_us(period)[1] - 1, deadline=deadline)


def _made_close(session: Session, period: str) -> Close | None:
    """The close of `period`, read under the journal lock: a close another writer is making is seen."""
    lock_journal(session)
    return get_close(session, period)


def _refuse_close(session: Session, period: str, now_us: int | None) -> tuple[journal.Batch, str]:
    """(the batch to close in, recording at `now_us` or, at None, now as read under the journal
    lock; the first open period) if `period` can be closed then; else Conflict."""
    batch = journal.Batch(session, recorded_at_us=now_us)
    now = batch.recorded_at_us
    start_us, end_us = period_bounds_us(period)
    if end_us > now:
        raise Conflict(f"period {period} has not ended yet; it can be closed from {period_of(end_us)}-01")
    database_now = database_now_us(session)
    if end_us > database_now:
        # This server's clock is ahead of the database's, whose rules refuse the close (migration 0018).
        raise Conflict(f"period {period} has not ended yet by the database's clock, "
                       f"{format_instant(database_now)}, which is behind this server's; it can be closed once it has")
    if now > database_now + journal.CLOCK_SKEW_US:
        # The close is dated by this server's clock, which is ahead of the database's by more than its
        # rule on `closed_at` allows (migration 0034): a 409, not the database's refusal as a 500.
        raise Conflict(f"this server's clock, {format_instant(now)}, is more than five minutes ahead of the "
                       f"database's, {format_instant(database_now)}: a close is not dated in the future")
    if get_close(session, period) is not None:
        raise Conflict(f"period {period} is already closed")
    last = latest_close(session)
    first_open = next_period(last.period) if last else _first_open_without_closes(session, period)
    if last is not None and last.ends_at_us > start_us:
        raise Conflict(f"period {period} lies before the latest closed period {last.period}")
    for earlier in _periods_between(first_open, period):
        bounds = period_bounds_us(earlier)
        if _has_postings(session, *bounds):
            raise Conflict(f"period {earlier} has postings and is open: close it first")
    due_us = holds.first_release_due(session, start_us) if first_open < period else None
    if due_us is not None:
        # The release is a posting of that period, whether a release run came by before this close
        # or the close makes it: refused either way, and before anything is posted.
        earlier = period_of(max(due_us, period_bounds_us(first_open)[0]))
        raise Conflict(f"period {earlier} is open and a hold matures in it ({format_instant(due_us)}), whose "
                       "release is a posting of it: close it first")
    return batch, first_open


def _first_open_without_closes(session: Session, period: str) -> str:
    first = first_posting_us(session)
    return period if first is None else min(period, period_of(first))


def _periods_between(first: str, last_exclusive: str) -> list[str]:
    periods, current = [], first
    while current < last_exclusive:
        periods.append(current)
        current = next_period(current)
    return periods


def _has_postings(session: Session, start_us: int, end_us: int) -> bool:
    j = journal_lines.c
    return session.execute(select(j.id).where(j.effective_at_us >= start_us, j.effective_at_us < end_us)
                           .limit(1)).first() is not None


def _close_one(session: Session, batch: journal.Batch, period: str, now: int) -> Close:
    start_us, end_us = period_bounds_us(period)
    # The write-off reads balances from the database: `release_matured` writes the releases first.
    holds.release_matured(session, end_us - 1, batch=batch)
    _write_off_negative_balances(session, batch, end_us)
    batch.flush()
    previous = latest_close(session)
    rows = sums(session, before_us=end_us)  # the previous snapshot plus this period's lines
    t = journal_transactions.c
    count = session.execute(select(func.count()).select_from(journal_transactions)
                            .where(t.effective_at_us >= start_us, t.effective_at_us < end_us)).scalar_one()
    head_id, head_hash = journal.chain_head(session)
    names = dict(session.execute(select(accounts.c.id, accounts.c.name)).all())
    prev_hash = previous.close_hash if previous else GENESIS_HASH
    program_head = program_chain.head(session) if program_chain.chained(session) else None
    hashed = close_hash(prev_hash, period, count, head_id, head_hash, rows, names, program_head)
    close = Close(period, start_us, end_us, now, count, head_id, head_hash, prev_hash, hashed)
    if rows:  # before the close, which seals them (migration 0018), as a header seals its lines
        session.execute(insert(period_snapshots), [
            {"period": period, "account_id": a, "currency": c, "debit_minor": d, "credit_minor": k}
            for (a, c), (d, k) in sorted(rows.items())])
    held = {} if program_head is None else {"program_head_id": program_head[0], "program_head_hash": program_head[1]}
    session.execute(insert(period_closes).values(**close._asdict(), **held))  # which stores its documents
    statement_bodies.store(session, period)
    batch.boundary_us = end_us
    return close


def _write_off_negative_balances(session: Session, batch: journal.Batch, end_us: int) -> None:
    """Under a `reset` plan, a negative available balance at the period's end is forgiven."""
    negative = _negative_available(session, end_us)
    if not negative:
        return
    program = program_for(session, {partner for partner, _ in negative})
    for (partner_id, currency), owed in sorted(negative.items()):
        # The policy of the partner's plan decides, whatever the partner's status.
        version = program.version_at(partner_id, end_us - 1)
        if version is None or version.terms.negative_balance != "reset":
            continue
        batch.add(journal.transfer(
            "writeoff", chart.EXPENSE_WRITEOFF, chart.available(partner_id), currency, owed,
            effective_at_us=end_us - 1, idempotency_key=f"writeoff:{period_of(end_us - 1)}:{partner_id}:{currency}",
            partner_id=partner_id, plan_version_id=version.id,
            memo="negative available balance written off at period close (reset policy)"))


def _negative_available(session: Session, before_us: int) -> dict[tuple[str, str], int]:
    """{(partner, currency): amount owed} for available accounts below zero before the instant.
    The partners' accounts are chosen in SQL (`partner_account_sums`), never bound as a list of
    ids: a list would grow with the program, past the parameters one statement takes (65,535 on
    PostgreSQL), and every close would fail."""
    owed: dict[tuple[str, str], int] = {}
    for (partner_id, account, currency), (debits, credits) in partner_account_sums(session, before_us=before_us).items():
        if account == chart.available(partner_id) and debits > credits:  # a debit balance: the partner owes
            owed[(partner_id, currency)] = debits - credits
    return owed


def list_periods(session: Session) -> list[Close]:
    """Every close, oldest first: the close chain whole (verify reads it)."""
    return [Close(*row) for row in session.execute(_CLOSES.order_by(period_closes.c.starts_at_us))]


class BooksPeriod(NamedTuple):
    """A period of the books' list: closed with its close, or open (`close` None)."""

    period: str
    close: Close | None


def books_periods(session: Session, *, after: str | None, count: int, now_us: int | None = None) -> list[BooksPeriod]:
    """Up to `count` periods of the books after the period `after` (None: from the first), oldest
    first: the close chain, then every open period through the one that contains now (or the
    latest posting's, if later: a revenue event may be dated minutes ahead of the clock). The books
    start with the chain, at the first close, or at the first posting's period while nothing is
    closed; an empty book (no postings, no closes) has no periods. A period before the chain is
    closed without a close of its own (`period_status`) and is not listed.

    A page reads at most `count` closes by their key and at most three values off an index (the
    latest close, the first and the latest posting): nothing per closed period. An open period is
    its name alone, with no transaction count: counting would read every transaction of a month
    that is still growing, and the count a close stores is the one its hash covers."""
    assert count > 0, "a page holds at least one period"
    query = _CLOSES.order_by(period_closes.c.period).limit(count)
    if after is not None:
        query = query.where(period_closes.c.period > after)
    listed = [BooksPeriod(close.period, close) for close in (Close(*row) for row in session.execute(query))]
    if len(listed) == count:
        return listed
    # Fewer than `count` closes after `after`: the last one read, if any, is the latest close.
    latest = listed[-1].close if listed else latest_close(session)
    first_open = next_period(latest.period) if latest else _first_posting_period(session)
    if first_open is None:
        return listed
    now = journal.now_us() if now_us is None else now_us
    last_posting_us = session.execute(select(func.max(journal_lines.c.effective_at_us))).scalar()
    last_open = period_of(now if last_posting_us is None else max(now, last_posting_us))
    open_periods = [period for period in _periods_between(first_open, next_period(last_open))
                    if after is None or period > after]
    return listed + [BooksPeriod(period, None) for period in open_periods[:count - len(listed)]]


def _first_posting_period(session: Session) -> str | None:
    first = first_posting_us(session)
    return None if first is None else period_of(first)


def period_status(session: Session, period: str) -> tuple[str, Close | None]:
    """("closed", its close), or ("open", None); a period that ends by the start of the first close
    is ("closed", None): the close chain starts after it, nothing was posted in it (the first close
    starts at the first posting's period when that is earlier) and nothing can be (a posting dated
    there is made at the start of the first open period), so it can never be closed on its own."""
    close = get_close(session, period)
    if close is not None:
        return "closed", close
    chain_starts_us = session.execute(select(func.min(period_closes.c.starts_at_us))).scalar()
    if chain_starts_us is not None and period_bounds_us(period)[1] <= chain_starts_us:
        return "closed", None
    return "open", None


def require_close(session: Session, period: str) -> Close:
    close = get_close(session, period)
    if close is None:
        raise NotFound(f"period {period} is not closed")
    return close
