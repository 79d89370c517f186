"""An oracle of DESIGN.md's commission mechanics, written from the contract's text alone.

It imports nothing from `ledger/`: plain integers, `Decimal`, `datetime` and the rules as the
contract states them (and, where the contract is silent, as the README's "Decisions where the
contract is silent" records them). Events are applied one at a time, as delivered; a late event is
dated no earlier than its invoice's latest one.

What it computes, for each revenue event: whether the service accepts it, its status, and its
commission lines (partner, kind, signed minor amount); and, for the whole history, every posting on
each partner's pending and available accounts with its effective instant, so that a balance as of
any instant can be compared with the service's.

The rules, sentence by sentence:
- each accrual pins the version of its earner's plan in effect at the event's `occurred_at`: its
  rates, window, CPA, override and hold;
- the window's month k is [start + (k - 1) calendar months, start + k calendar months), the day
  clamped to a shorter month's end; eligible while `occurred_at` < start + `duration_months` months;
- the rate is the step with the greatest `from_month` <= the month index; revenue share is
  round_half_even(amount x rate), posted only when positive;
- the CPA is paid on the customer's first eligible paid invoice, in its currency if the plan lists one
  (README: an eligible invoice in a currency without a CPA uses the customer's bounty up); first by
  date: one delivered after a later-dated claimant takes the CPA, and the claimant's bounty is
  reversed with all that was posted against it, each posting undone at its own instant (README);
- each ancestor up to five levels up whose plan has an override earns round_half_even(rate x
  basis), a terminated one skipped (README; the hierarchy has five levels, so four ancestors at most);
- a terminated partner earns nothing from its termination on; a suspended one still earns;
- a refund or chargeback of r claws round_half_even(A x r / paid) of each accrual A, capped at what
  is left, and all that is left when it completes the invoice; the CPA only then, in full;
- a won dispute of d restores round_half_even(A x d / paid), capped at what is clawed, or everything
  clawed when nothing stays refunded; a clawed CPA is restored in full (README); a restored amount
  is a new piece with a new hold, of the days of the version its accrual pinned (README);
- a piece is held until `occurred_at + hold_days` (whole days of 24 hours, UTC); a clawback at t
  takes from pending what is still held at t (maturity > t), else from available; among a root's
  pieces, held ones first, newest first (README);
- before posting against an accrual at t (a clawback, a payout run, a close), the service releases
  what has matured by t, effective at the maturity; a posting dated in a closed period is made at
  the start of the first open period;
- a payout run at t pays each active partner's whole available balance as of t (postings at t
  included, README) in each currency at or above its plan's minimum (any positive balance where the
  plan names none, README); a failed payout returns the money;
- closing a period writes off, under a `reset` plan, a negative available balance at its end.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal

DAY_US = 86_400_000_000
OVERRIDE_LEVELS_MAX = 5
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def half_even(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def instant_us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def moment_of(at_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=at_us)


def months_after(start_us: int, months: int) -> int:
    """`start_us` plus whole calendar months, the day clamped to the month's length."""
    start = moment_of(start_us)
    year = start.year + (start.month - 1 + months) // 12
    month = (start.month - 1 + months) % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return instant_us(start.replace(year=year, month=month, day=day))


def month_number(start_us: int, at_us: int) -> int:
    """The 1-based month of the window holding `at_us`, counted by walking month ends."""
    number = 1
    while months_after(start_us, number) <= at_us:
        number += 1
    return number


@dataclass(frozen=True)
class OraclePlan:
    rates: tuple[tuple[int, Decimal], ...]
    duration_months: int | None
    hold_days: int
    cpa_minor: dict[str, int]
    override: tuple[Decimal, str] | None  # (rate, basis)
    min_payout_minor: dict[str, int] = field(default_factory=dict)
    reset: bool = False  # negative_balance: reset, else carry_forward

    def rate(self, month: int) -> Decimal:
        return max((step for step in self.rates if step[0] <= month), key=lambda step: step[0])[1]


@dataclass
class OraclePiece:
    partner: str
    currency: str
    kind: str
    root: int
    amount: int
    at_us: int
    matures_us: int
    hold_days: int
    clawed: int = 0
    clawed_from_pending: int = 0
    released: bool = False
    reversed: bool = False

    @property
    def left(self) -> int:
        return self.amount - self.clawed


@dataclass
class OracleInvoice:
    customer: str
    currency: str
    paid: int
    status: str
    pieces: list[int] = field(default_factory=list)
    refunded: int = 0
    charged_back: int = 0
    latest_us: int = 0  # the latest instant of its events


@dataclass
class Oracle:
    plan_of: dict[str, str]  # partner -> plan id
    parents: dict[str, str | None]
    versions: dict[str, list[tuple[int, OraclePlan]]]  # plan id -> [(start, terms)], the first from always
    attributions: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # customer -> [(start, partner)]
    terminated_us: dict[str, int] = field(default_factory=dict)
    suspended: dict[str, list[tuple[int, bool]]] = field(default_factory=dict)  # partner -> [(from, suspended)]
    invoices: dict[str, OracleInvoice] = field(default_factory=dict)
    pieces: list[OraclePiece] = field(default_factory=list)
    cpa_claimants: dict[str, tuple[int, str]] = field(default_factory=dict)  # customer -> (instant, invoice)
    # (effective instant, partner, currency, change of pending, change of available)
    postings: list[tuple[int, str, str, int, int]] = field(default_factory=list)
    of_root: dict[int, list[int]] = field(default_factory=dict)  # a root piece -> the postings of its pieces
    closed_until_us: int = 0  # the end of the latest closed period

    def _post(self, at_us: int, partner: str, currency: str, pending: int, available: int,
              root: int | None = None) -> None:
        """A posting dated in a closed period is made at the start of the first open one."""
        if root is not None:
            self.of_root.setdefault(root, []).append(len(self.postings))
        self.postings.append((max(at_us, self.closed_until_us), partner, currency, pending, available))

    def _reverse(self, root: int) -> None:
        """Undo each posting of a root piece's pieces at its own instant (moved out of a closed
        period); the pieces are never released, clawed or restored again."""
        for index in self.of_root.get(root, []):
            at_us, partner, currency, pending, available = self.postings[index]
            self._post(at_us, partner, currency, -pending, -available)
        for piece in self.pieces:
            if piece.root == root:
                piece.reversed = True

    def release_matured(self, by_us: int, pieces: list[int] | None = None) -> None:
        """Release the held pieces matured by `by_us`, each effective at its maturity (moved out of a
        closed period): what is left of it in pending becomes available."""
        for index in range(len(self.pieces)) if pieces is None else pieces:
            piece = self.pieces[index]
            if not piece.released and not piece.reversed and piece.matures_us <= by_us:
                piece.released = True
                left = piece.amount - piece.clawed_from_pending
                if left:
                    self._post(piece.matures_us, piece.partner, piece.currency, -left, left, piece.root)

    # ---- the program ----

    def add_version(self, plan_id: str, start_us: int, plan: OraclePlan) -> None:
        self.versions[plan_id].append((start_us, plan))

    def plan(self, partner: str, at_us: int) -> OraclePlan:
        """The version of the partner's plan in effect at the instant (each accrual pins it)."""
        return [plan for start_us, plan in self.versions[self.plan_of[partner]] if start_us <= at_us][-1]

    def attribute(self, customer: str, partner: str, start_us: int) -> None:
        self.attributions.setdefault(customer, []).append((start_us, partner))

    def terminate(self, partner: str, at_us: int) -> None:
        self.terminated_us[partner] = at_us

    def suspend(self, partner: str, at_us: int, suspended: bool) -> None:
        self.suspended.setdefault(partner, []).append((at_us, suspended))

    def active(self, partner: str, at_us: int) -> bool:
        changes = [suspended for start_us, suspended in self.suspended.get(partner, []) if start_us <= at_us]
        return self.earns(partner, at_us) and not (changes and changes[-1])

    def earns(self, partner: str, at_us: int) -> bool:
        return partner not in self.terminated_us or at_us < self.terminated_us[partner]

    def attribution_at(self, customer: str, at_us: int) -> tuple[int, str] | None:
        started = [found for found in self.attributions.get(customer, []) if found[0] <= at_us]
        return started[-1] if started else None

    # ---- events; each returns (status, lines) or None when the service must refuse it ----

    def paid(self, invoice_id: str, customer: str, currency: str, amount: int, at_us: int):
        attribution = self.attribution_at(customer, at_us)
        invoice = self.invoices[invoice_id] = OracleInvoice(customer, currency, amount, "unattributed", latest_us=at_us)
        if attribution is None:
            invoice.status = "no_commission" if customer in self.attributions else "unattributed"
            return invoice.status, []
        start_us, partner = attribution
        plan = self.plan(partner, at_us)
        eligible = self.earns(partner, at_us) and (
            plan.duration_months is None or at_us < months_after(start_us, plan.duration_months))
        lines: list[tuple[str, str, int]] = []
        if eligible:
            share = half_even(Decimal(amount) * plan.rate(month_number(start_us, at_us)))
            lines.append((partner, "accrual", share))
            claimant = self.cpa_claimants.get(customer)
            if claimant is None or at_us < claimant[0]:
                if claimant is not None:
                    for index in self.invoices[claimant[1]].pieces:
                        piece = self.pieces[index]
                        if piece.kind == "cpa" and piece.root == index and not piece.reversed:
                            self._reverse(index)
                self.cpa_claimants[customer] = (at_us, invoice_id)
                lines.append((partner, "cpa", plan.cpa_minor.get(currency, 0)))
            lines += self._overrides(partner, amount, share, at_us)
        lines = [line for line in lines if line[2] > 0]
        for earner, kind, minor in lines:
            hold_days = self.plan(earner, at_us).hold_days
            invoice.pieces.append(self._accrue(earner, currency, kind, minor, at_us, hold_days, root=None))
        invoice.status = "posted" if lines else "no_commission"
        return invoice.status, lines

    def _overrides(self, partner: str, amount: int, share: int, at_us: int) -> list[tuple[str, str, int]]:
        lines = []
        ancestor = self.parents[partner]
        for _ in range(OVERRIDE_LEVELS_MAX):
            if ancestor is None:
                break
            override = self.plan(ancestor, at_us).override
            if override is not None and self.earns(ancestor, at_us):
                basis = amount if override[1] == "revenue" else share
                lines.append((ancestor, "override", half_even(Decimal(basis) * override[0])))
            ancestor = self.parents[ancestor]
        return lines

    def _accrue(self, partner: str, currency: str, kind: str, amount: int, at_us: int, hold_days: int,
                root: int | None) -> int:
        index = len(self.pieces)
        matures_us = at_us + hold_days * DAY_US
        self.pieces.append(OraclePiece(partner, currency, kind, index if root is None else root, amount, at_us,
                                       matures_us, hold_days))
        self._post(at_us, partner, currency, amount, 0, index if root is None else root)
        return index

    def refund(self, invoice_id: str, amount: int, at_us: int, chargeback: bool):
        invoice = self.invoices[invoice_id]
        if invoice.refunded + amount > invoice.paid:
            return None
        self.release_matured(at_us, invoice.pieces)
        fully = invoice.refunded + amount == invoice.paid
        lines = []
        for root, group in self._groups(invoice):
            piece = self.pieces[root]
            left = sum(self.pieces[index].left for index in group)
            if fully:
                target = left
            elif piece.kind == "cpa":
                target = 0
            else:
                target = min(half_even(Decimal(piece.amount) * amount / invoice.paid), left)
            lines += self._claw(group, target, at_us)
        invoice.refunded += amount
        invoice.charged_back += amount if chargeback else 0
        invoice.latest_us = at_us
        return self._status(invoice, lines), lines

    def _claw(self, group: list[int], target: int, at_us: int) -> list[tuple[str, str, int]]:
        lines = []
        for index in sorted(group, key=lambda i: (self.pieces[i].matures_us <= at_us, -i)):
            piece = self.pieces[index]
            take = min(piece.left, target)
            if take <= 0:
                continue
            target -= take
            piece.clawed += take
            held = piece.matures_us > at_us
            if held:
                piece.clawed_from_pending += take
                if piece.released:  # a refund delivered late: its release moved too much
                    self._post(piece.matures_us, piece.partner, piece.currency, take, -take, piece.root)
            self._post(at_us, piece.partner, piece.currency, -take if held else 0, 0 if held else -take, piece.root)
            lines.append((piece.partner, "clawback", -take))
        assert target == 0
        return lines

    def dispute_won(self, invoice_id: str, amount: int, at_us: int):
        invoice = self.invoices[invoice_id]
        if amount > invoice.charged_back:
            return None
        refunded_after = invoice.refunded - amount
        lines = []
        for root, group in self._groups(invoice):
            piece = self.pieces[root]
            clawed = piece.amount - sum(self.pieces[index].left for index in group)
            if piece.kind == "cpa" or refunded_after == 0:
                restored = clawed
            else:
                restored = min(half_even(Decimal(piece.amount) * amount / invoice.paid), clawed)
            if restored > 0:
                invoice.pieces.append(self._accrue(piece.partner, piece.currency, piece.kind, restored, at_us,
                                                   piece.hold_days, root))
                lines.append((piece.partner, piece.kind, restored))
        invoice.refunded -= amount
        invoice.charged_back -= amount
        invoice.latest_us = at_us
        return self._status(invoice, lines), lines

    def _groups(self, invoice: OracleInvoice) -> list[tuple[int, list[int]]]:
        roots = sorted({self.pieces[index].root for index in invoice.pieces if not self.pieces[index].reversed})
        return [(root, [index for index in invoice.pieces if self.pieces[index].root == root]) for root in roots]

    @staticmethod
    def _status(invoice: OracleInvoice, lines: list) -> str:
        if lines:
            return "posted"
        return "unattributed" if invoice.status == "unattributed" else "no_commission"

    # ---- payouts and closes ----

    def payout_run(self, partners: list[str], currencies: list[str], at_us: int) -> dict[tuple[str, str], int]:
        """The payouts of a run at `at_us`: the whole available balance as of `at_us` (postings at it
        included, README), holds matured by it released, of each active partner at or above its
        plan's minimum for the currency (any positive balance where the plan names none, README)."""
        self.release_matured(at_us)
        paid = {}
        for partner in partners:
            if not self.active(partner, at_us):
                continue
            minimum = self.plan(partner, at_us).min_payout_minor
            for currency in currencies:
                available = self.balance(partner, currency, at_us + 1)[1]
                if available > 0 and available >= minimum.get(currency, 0):
                    paid[(partner, currency)] = available
                    self._post(at_us, partner, currency, 0, -available)
        return paid

    def payout_failed(self, partner: str, currency: str, amount: int, at_us: int) -> None:
        self._post(at_us, partner, currency, 0, amount)

    def close(self, partners: list[str], currencies: list[str], end_us: int) -> None:
        """Close the period ending at `end_us`: under a `reset` plan (its version at the period's
        last instant), a negative available balance at the end is written off at that instant, after
        the holds matured in the period are released."""
        self.release_matured(end_us - 1)
        for partner in partners:
            if not self.plan(partner, end_us - 1).reset:
                continue
            for currency in currencies:
                available = self.balance(partner, currency, end_us)[1]
                if available < 0:
                    self._post(end_us - 1, partner, currency, 0, -available)
        self.closed_until_us = end_us

    # ---- balances ----

    def balance(self, partner: str, currency: str, before_us: int) -> tuple[int, int]:
        """(pending, available) of the postings effective before `before_us`."""
        pending = available = 0
        for at_us, earner, code, pending_change, available_change in self.postings:
            if earner == partner and code == currency and at_us < before_us:
                pending += pending_change
                available += available_change
        return pending, available
