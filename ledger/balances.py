"""Balances per account and currency as of an instant.

A balance is the signed sum of an account's lines with `effective_at_us` before the bound, read
from the covering index `ix_journal_lines_balance` (account, currency, instant, side, amount): the
query never touches the table itself. Signs: `debit_minus_credit` is positive for a debit
balance; `normal_balance` turns it into the account's natural reading (a liability with more
credits than debits has a positive normal balance).

Periods add a starting point: once a period is closed, `periods.py` reads the latest snapshot and
only the lines after it, through the same query with a lower bound.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from ledger import accounts as chart
from ledger.schema import accounts, journal_lines

_SIGNED = case((journal_lines.c.side == "D", journal_lines.c.amount_minor), else_=-journal_lines.c.amount_minor)


def debit_minus_credit(session: Session, account_names: Iterable[str], *, before_us: int | None = None,
                       since_us: int | None = None) -> dict[tuple[str, str], int]:
    """{(account, currency): debits - credits} over lines in [since_us, before_us)."""
    names = list(account_names)
    found = session.execute(select(accounts.c.id, accounts.c.name).where(accounts.c.name.in_(names))).all()
    if not found:
        return {}
    by_id = dict(found)
    j = journal_lines.c
    query = (select(j.account_id, j.currency, func.sum(_SIGNED))
             .where(j.account_id.in_(list(by_id)))
             .group_by(j.account_id, j.currency))
    if before_us is not None:
        query = query.where(j.effective_at_us < before_us)
    if since_us is not None:
        query = query.where(j.effective_at_us >= since_us)
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for account_id, currency, amount in session.execute(query):
        totals[(by_id[account_id], currency)] += int(amount)
    return dict(totals)


def normal_balance(account_name: str, debit_minus_credit_minor: int) -> int:
    """The balance as the account's normal side reads it (credit-normal accounts flip the sign)."""
    return debit_minus_credit_minor if chart.spec(account_name).normal_side == "D" else -debit_minus_credit_minor


def all_balances(session: Session, *, before_us: int | None = None) -> dict[tuple[str, str], tuple[int, int]]:
    """{(account, currency): (debits, credits)} for every account: the trial balance's rows."""
    j = journal_lines.c
    query = (select(accounts.c.name, j.currency,
                    func.sum(case((j.side == "D", j.amount_minor), else_=0)),
                    func.sum(case((j.side == "C", j.amount_minor), else_=0)))
             .join(accounts, accounts.c.id == j.account_id)
             .group_by(accounts.c.name, j.currency))
    if before_us is not None:
        query = query.where(j.effective_at_us < before_us)
    return {(name, currency): (int(debits), int(credits)) for name, currency, debits, credits in session.execute(query)}


def partner_balances(session: Session, partner_id: str, *, before_us: int | None = None) -> dict[str, tuple[int, int]]:
    """{currency: (pending, available)} of a partner, as credit-normal liabilities (what is owed to it)."""
    pending_name, available_name = chart.pending(partner_id), chart.available(partner_id)
    raw = debit_minus_credit(session, [pending_name, available_name], before_us=before_us)
    result: dict[str, tuple[int, int]] = {}
    for (name, currency), amount in raw.items():
        pending, available = result.get(currency, (0, 0))
        if name == pending_name:
            pending = -amount
        else:
            available = -amount
        result[currency] = (pending, available)
    return result
