"""Balances per account and currency as of an instant: the latest snapshot plus the lines after it.

A balance is the sum of an account's lines with `effective_at_us` before the bound. Once periods
are closed, the latest close ending at or before the bound gives a snapshot of every account's
cumulative debits and credits, and only the lines after it are summed, from the covering index
`ix_journal_lines_balance` (account, currency, instant, side, amount). Signs: `debit_minus_credit`
is positive for a debit balance; `normal_balance` reads it the account's natural way (a liability
with more credits than debits has a positive normal balance).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from ledger import accounts as chart
from ledger.schema import accounts, journal_lines, period_closes, period_snapshots

Sums = dict[tuple[int, str], tuple[int, int]]  # (account id, currency) -> (debits, credits)


def line_sums(session: Session, account_ids: list[int] | None, since_us: int | None, before_us: int | None) -> Sums:
    """Debits and credits per (account id, currency) of the journal lines in [since, before), ignoring snapshots."""
    j = journal_lines.c
    query = (select(j.account_id, j.currency, func.sum(case((j.side == "D", j.amount_minor), else_=0)),
                    func.sum(case((j.side == "C", j.amount_minor), else_=0)))
             .group_by(j.account_id, j.currency))
    if account_ids is not None:
        query = query.where(j.account_id.in_(account_ids))
    if since_us is not None:
        query = query.where(j.effective_at_us >= since_us)
    if before_us is not None:
        query = query.where(j.effective_at_us < before_us)
    return {(a, c): (int(d), int(k)) for a, c, d, k in session.execute(query)}


def _latest_snapshot(session: Session, account_ids: list[int] | None, before_us: int | None) -> tuple[int | None, Sums]:
    """(end of the latest close at or before the bound, its snapshot rows for the accounts)."""
    query = select(period_closes.c.period, period_closes.c.ends_at_us).order_by(period_closes.c.ends_at_us.desc()).limit(1)
    if before_us is not None:
        query = query.where(period_closes.c.ends_at_us <= before_us)
    close = session.execute(query).first()
    if close is None:
        return None, {}
    s = period_snapshots.c
    rows = select(s.account_id, s.currency, s.debit_minor, s.credit_minor).where(s.period == close.period)
    if account_ids is not None:
        rows = rows.where(s.account_id.in_(account_ids))
    return close.ends_at_us, {(a, c): (d, k) for a, c, d, k in session.execute(rows)}


def sums(session: Session, account_ids: list[int] | None = None, *, before_us: int | None = None,
         since_us: int | None = None) -> Sums:
    """Debits and credits per (account id, currency) of lines in [since, before); from the latest
    snapshot when there is no lower bound."""
    if since_us is not None:
        return line_sums(session, account_ids, since_us, before_us)
    snapshot_end, total = _latest_snapshot(session, account_ids, before_us)
    total = dict(total)
    for key, (debit, credit) in line_sums(session, account_ids, snapshot_end, before_us).items():
        old = total.get(key, (0, 0))
        total[key] = (old[0] + debit, old[1] + credit)
    return total


def balances_by_account_id(session: Session, account_ids: list[int], before_us: int | None = None) -> dict[tuple[int, str], int]:
    """{(account id, currency): debits - credits}."""
    return {key: debit - credit for key, (debit, credit) in sums(session, account_ids, before_us=before_us).items()}


def debit_minus_credit(session: Session, account_names: Iterable[str], *, before_us: int | None = None,
                       since_us: int | None = None) -> dict[tuple[str, str], int]:
    """{(account, currency): debits - credits} over lines in [since_us, before_us)."""
    names = list(account_names)
    by_id = dict(session.execute(select(accounts.c.id, accounts.c.name).where(accounts.c.name.in_(names))).all())
    if not by_id:
        return {}
    found = sums(session, list(by_id), before_us=before_us, since_us=since_us)
    return {(by_id[a], c): debit - credit for (a, c), (debit, credit) in found.items()}


def normal_balance(account_name: str, debit_minus_credit_minor: int) -> int:
    """The balance as the account's normal side reads it (credit-normal accounts flip the sign)."""
    return debit_minus_credit_minor if chart.spec(account_name).normal_side == "D" else -debit_minus_credit_minor


def all_balances(session: Session, *, before_us: int | None = None) -> dict[tuple[str, str], tuple[int, int]]:
    """{(account, currency): (debits, credits)} for every account: the trial balance's rows."""
    names = dict(session.execute(select(accounts.c.id, accounts.c.name)).all())
    return {(names[a], c): value for (a, c), value in sums(session, before_us=before_us).items()}


def partner_balances(session: Session, partner_id: str, *, before_us: int | None = None) -> dict[str, tuple[int, int]]:
    """{currency: (pending, available)} of a partner, as credit-normal liabilities (what is owed to it)."""
    pending_name, available_name = chart.pending(partner_id), chart.available(partner_id)
    raw = debit_minus_credit(session, [pending_name, available_name], before_us=before_us)
    result: dict[str, tuple[int, int]] = defaultdict(lambda: (0, 0))
    for (name, currency), amount in raw.items():
        pending, available = result[currency]
        result[currency] = (-amount, available) if name == pending_name else (pending, -amount)
    return dict(result)
