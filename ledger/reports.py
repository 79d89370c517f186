"""Liabilities per partner: what the vendor owes each partner, pending and available, per currency,
with what partners owe back (negative available balances) shown apart in the totals."""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

from sqlalchemy.orm import Session

from ledger.balances import partner_account_sums


class PartnerLiability(NamedTuple):
    partner_id: str
    currency: str
    pending_minor: int
    available_minor: int


class LiabilityTotal(NamedTuple):
    currency: str
    pending_minor: int
    available_minor: int  # positive available balances only: what the vendor owes
    owed_by_partners_minor: int  # negative available balances, as a positive amount


def liabilities(session: Session, *, before_us: int | None = None) -> tuple[list[PartnerLiability], list[LiabilityTotal]]:
    per: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    sums = partner_account_sums(session, before_us=before_us)
    for (partner_id, account, currency), (debits, credits) in sums.items():
        per[(partner_id, currency)][0 if account.endswith(":pending") else 1] = credits - debits
    partners = [PartnerLiability(p, c, pending, available) for (p, c), (pending, available) in sorted(per.items())]
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for line in partners:
        total = totals[line.currency]
        total[0] += line.pending_minor
        total[1] += max(line.available_minor, 0)
        total[2] += max(-line.available_minor, 0)
    return partners, [LiabilityTotal(c, *values) for c, values in sorted(totals.items())]
