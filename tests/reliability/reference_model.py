"""A small, independent reference model of DESIGN.md's commission rules, for the model-based test.

It knows nothing of the service's code: plain integers, dictionaries and the rules as the contract
states them. One plan per partner: a revenue share rate, a CPA in USD, a hold, a minimum payout and
a negative-balance policy; one parent with a commission-basis override. Every instant is in days.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

DAY_US = 86_400_000_000


def half_even(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


@dataclass
class Plan:
    rate: Decimal
    cpa: int
    hold_days: int
    min_payout: int
    reset: bool
    override_rate: Decimal | None = None


@dataclass
class Piece:
    partner: str
    kind: str
    amount: int
    matures: int
    root: int
    pending: int
    clawed: int = 0
    released: bool = False


@dataclass
class Invoice:
    customer: str
    paid: int
    refunded: int = 0
    charged_back: int = 0
    pieces: list[int] = field(default_factory=list)


class Model:
    def __init__(self, plans: dict[str, Plan], parents: dict[str, str | None]) -> None:
        self.plans, self.parents = plans, parents
        self.pending = {p: 0 for p in plans}
        self.available = {p: 0 for p in plans}
        self.pieces: list[Piece] = []
        self.invoices: dict[str, Invoice] = {}
        self.attribution: dict[str, str] = {}
        self.cpa_claimed: set[str] = set()
        self.in_transit: dict[int, tuple[str, int]] = {}

    # --- accrual -------------------------------------------------------------------------------
    def _accrue(self, partner: str, kind: str, amount: int, now: int, root: int | None = None) -> None:
        if amount <= 0:
            return
        index = len(self.pieces)
        self.pieces.append(Piece(partner, kind, amount, now + self.plans[partner].hold_days * DAY_US,
                                 index if root is None else root, amount))
        self.pending[partner] += amount
        return index

    def pay(self, invoice_id: str, customer: str, amount: int, now: int) -> None:
        invoice = self.invoices[invoice_id] = Invoice(customer, amount)
        partner = self.attribution.get(customer)
        if partner is None:
            return
        plan = self.plans[partner]
        share = half_even(Decimal(amount) * plan.rate)
        made = [self._accrue(partner, "accrual", share, now)]
        if customer not in self.cpa_claimed:
            self.cpa_claimed.add(customer)
            made.append(self._accrue(partner, "cpa", plan.cpa, now))
        parent = self.parents[partner]
        if parent is not None and self.plans[parent].override_rate is not None:
            made.append(self._accrue(parent, "override", half_even(Decimal(share) * self.plans[parent].override_rate), now))
        invoice.pieces = [index for index in made if index is not None]

    # --- release ---------------------------------------------------------------------------------
    def _release(self, index: int, now: int) -> None:
        piece = self.pieces[index]
        if piece.released or piece.matures > now:
            return
        piece.released = True
        self.pending[piece.partner] -= piece.pending
        self.available[piece.partner] += piece.pending
        piece.pending = 0

    def release_all(self, now: int) -> None:
        for index in range(len(self.pieces)):
            self._release(index, now)

    # --- refunds, chargebacks, won disputes ------------------------------------------------------
    def refund(self, invoice_id: str, amount: int, now: int, chargeback: bool) -> None:
        invoice = self.invoices[invoice_id]
        for index in invoice.pieces:
            self._release(index, now)
        fully = invoice.refunded + amount == invoice.paid
        roots = [i for i in invoice.pieces if self.pieces[i].root == i]
        for root in roots:
            group = [i for i in invoice.pieces if self.pieces[i].root == root]
            unclawed = sum(self.pieces[i].amount - self.pieces[i].clawed for i in group)
            piece = self.pieces[root]
            if piece.kind == "cpa":
                target = unclawed if fully else 0
            elif fully:
                target = unclawed
            else:
                target = min(half_even(Decimal(piece.amount) * amount / invoice.paid), unclawed)
            # held pieces first (newest first), then released ones
            for i in sorted(group, key=lambda i: (self.pieces[i].released, -i)):
                p = self.pieces[i]
                room = p.amount - p.clawed if p.released else min(p.amount - p.clawed, p.pending)
                take = min(room, target)
                if take <= 0:
                    continue
                target -= take
                p.clawed += take
                if p.released:
                    self.available[p.partner] -= take
                else:
                    p.pending -= take
                    self.pending[p.partner] -= take
        invoice.refunded += amount
        if chargeback:
            invoice.charged_back += amount

    def dispute_won(self, invoice_id: str, amount: int, now: int) -> None:
        """Only the case the test drives: the whole charged-back amount is reversed and nothing else
        was refunded, so every clawed amount is restored exactly, with a new hold."""
        invoice = self.invoices[invoice_id]
        assert amount == invoice.charged_back == invoice.refunded
        for root in [i for i in invoice.pieces if self.pieces[i].root == i]:
            group = [i for i in invoice.pieces if self.pieces[i].root == root]
            clawed = sum(self.pieces[i].clawed for i in group) - sum(
                self.pieces[i].amount for i in group if i != root)
            if clawed > 0:
                restored = self._accrue(self.pieces[root].partner, self.pieces[root].kind, clawed, now, root=root)
                invoice.pieces.append(restored)
        invoice.refunded = invoice.charged_back = 0

    # --- payouts and closes ---------------------------------------------------------------------
    def payout_run(self, now: int, active: set[str]) -> dict[str, int]:
        self.release_all(now)
        paid = {}
        for partner in sorted(self.plans):
            balance = self.available[partner]
            if partner in active and balance > 0 and balance >= self.plans[partner].min_payout:
                self.available[partner] = 0
                paid[partner] = balance
        return paid

    def resolve(self, partner: str, amount: int, failed: bool) -> None:
        if failed:
            self.available[partner] += amount

    def close(self, end: int) -> None:
        """Close a period ending at `end` (every posting so far lies before it)."""
        self.release_all(end - 1)
        for partner, plan in self.plans.items():
            if plan.reset and self.available[partner] < 0:
                self.available[partner] = 0
