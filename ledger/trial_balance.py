"""The trial balance: every account's debits and credits per currency as of an instant, with totals.

Rows come from `balances.all_balances`: the running totals when they hold no line at or after the
instant (as of now), else the sums of a snapshot or the running totals and of the lines between them
and the instant, from a covering index, with the accounts' names joined per sum. `balance` is
debits minus credits, signed: positive for a debit balance, negative for a credit balance, whatever
the account's normal side. Per currency, total debits equal total credits; `balanced` says whether
they do, so that a report can show an unbalanced book instead of hiding it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

from sqlalchemy.orm import Session

from ledger.balances import all_balances


class Row(NamedTuple):
    account: str
    currency: str
    debit_minor: int
    credit_minor: int

    @property
    def balance_minor(self) -> int:
        return self.debit_minor - self.credit_minor


class Total(NamedTuple):
    currency: str
    debit_minor: int
    credit_minor: int


class TrialBalance(NamedTuple):
    rows: list[Row]
    totals: list[Total]

    @property
    def balanced(self) -> bool:
        return all(total.debit_minor == total.credit_minor for total in self.totals)


def trial_balance(session: Session, *, before_us: int | None) -> TrialBalance:
    """Rows sorted by account then currency; totals sorted by currency."""
    rows = [Row(account, currency, debits, credits)
            for (account, currency), (debits, credits) in sorted(all_balances(session, before_us=before_us).items())]
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        sums[row.currency][0] += row.debit_minor
        sums[row.currency][1] += row.credit_minor
    return TrialBalance(rows, [Total(currency, debit, credit) for currency, (debit, credit) in sorted(sums.items())])
