"""The commission rules of the contract, as pure functions over plain values (no database).

- `invoice_earnings`: what one paid invoice earns: revenue share at the step-down rate of its month
  in the attribution window, the CPA on the customer's first eligible paid invoice (by date:
  `ledger.revenue` decides which payment claims it), and overrides
  for each ancestor whose plan has one (basis: the invoice amount or the revenue share).
- `Piece`: one accrued amount in the journal (an accrual, CPA or override, or a reinstatement of
  one after a won dispute), with what has been clawed back from it and whether it is still held.
  A reinstatement belongs to the *root* accrual it restores; proportional rules use the root.
- `refund_clawbacks`: proportional clawbacks round(accrual x refund / paid) half-even, capped so
  clawbacks never exceed the accrual, and the refund that completes the invoice's refund takes the
  exact remainder. The CPA is clawed back, in full, only when its invoice is fully refunded. A
  clawback takes from the pieces accrued by its instant first.
- `dispute_reinstatements`: a chargeback reversed (dispute won) restores the clawed amounts in the
  same proportion, with a new hold; what it restores of clawbacks dated after it, at their instants.

Every rounding here is ROUND_HALF_EVEN to the currency's minor unit, once per computed amount.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from ledger.instants import add_months_us, month_index
from ledger.money import ROUND_HALF_EVEN, multiply_minor, prorate_minor, round_minor
from ledger.terms import Terms, rate_for_month

# The ancestors that can earn an override: DESIGN's "depth at most 5" is the hierarchy's depth
# (`schema.PARTNER_DEPTH_MAX`, held by the database), a partner and at most four ancestors (README).
OVERRIDE_DEPTH_MAX = 4
EARNING_KINDS = ("accrual", "cpa", "override")


class Earner(NamedTuple):
    """A partner able to earn at an instant: active or suspended, with a plan version in effect."""

    partner_id: str
    plan_version_id: int
    terms: Terms


class Earning(NamedTuple):
    partner_id: str
    kind: str  # accrual | cpa | override
    amount_minor: int
    plan_version_id: int
    hold_days: int


def eligible_month(terms: Terms, window_start_us: int, occurred_at_us: int) -> int | None:
    """The month index of `occurred_at_us` in the window, or None outside it."""
    if occurred_at_us < window_start_us:
        return None
    if terms.duration_months is not None and occurred_at_us >= add_months_us(window_start_us, terms.duration_months):
        return None
    return month_index(window_start_us, occurred_at_us)


def invoice_earnings(amount_minor: int, currency: str, occurred_at_us: int, window_start_us: int,
                     earner: Earner, ancestors: list[Earner | None], cpa_unclaimed: bool) -> tuple[bool, list[Earning]]:
    """(eligible, earnings) of one paid invoice. `ancestors` runs parent first; None stands for an
    ancestor who cannot earn (terminated, or without a plan) and is skipped."""
    month = eligible_month(earner.terms, window_start_us, occurred_at_us)
    if month is None:
        return False, []
    earnings: list[Earning] = []
    rate = rate_for_month(earner.terms, month)
    share = round_minor(multiply_minor(amount_minor, rate), rounding=ROUND_HALF_EVEN)
    if share > 0:
        earnings.append(Earning(earner.partner_id, "accrual", share, earner.plan_version_id, earner.terms.hold_days))
    cpa = earner.terms.cpa_minor.get(currency, 0)
    if cpa_unclaimed and cpa > 0:
        earnings.append(Earning(earner.partner_id, "cpa", cpa, earner.plan_version_id, earner.terms.hold_days))
    for ancestor in ancestors[:OVERRIDE_DEPTH_MAX]:
        override = ancestor.terms.override if ancestor is not None else None
        if override is None:
            continue
        basis = amount_minor if override.basis == "revenue" else share
        amount = round_minor(multiply_minor(basis, override.rate), rounding=ROUND_HALF_EVEN)
        if amount > 0:
            earnings.append(Earning(ancestor.partner_id, "override", amount, ancestor.plan_version_id,
                                    ancestor.terms.hold_days))
    return True, earnings


@dataclass
class Piece:
    """An accrued amount on one invoice, as the journal holds it now."""

    id: int
    root_id: int  # itself, or the accrual a reinstatement restores
    partner_id: str
    kind: str  # accrual | cpa | override
    currency: str
    amount_minor: int
    plan_version_id: int | None
    matures_at_us: int | None
    pending_minor: int  # what is still in the partner's pending account for this piece
    clawed_minor: int = 0
    released: bool = False
    reversed: bool = False
    customer_id: str | None = None
    invoice_id: str | None = None
    event_id: str | None = None  # the revenue event that accrued it, which its release names
    release_id: int | None = None  # the release transaction in force, if released
    released_minor: int = 0  # what that release moved from pending to available
    released_at_us: int | None = None  # that release's effective instant
    clawbacks: dict[int, tuple[int, int]] = field(default_factory=dict)  # standing: id -> (instant, amount)
    releases: int = 0  # releases posted, standing or since reversed: the next one's key counts them
    accrued_at_us: int | None = None  # its effective instant in the journal
    # The instant it was accrued as dated, which a closed period moves to the first open one's start
    # in the journal (`accrued_at_us`): what lies before what is decided by these (None: accrued_at_us).
    dated_at_us: int | None = None
    clawback_reversed: bool = False  # one of its clawbacks was reversed (by finance), which no event replays

    @property
    def dated_or_accrued_at_us(self) -> int | None:
        return self.accrued_at_us if self.dated_at_us is None else self.dated_at_us

    @property
    def unclawed_minor(self) -> int:
        return self.amount_minor - self.clawed_minor


class Clawback(NamedTuple):
    piece_id: int
    partner_id: str
    kind: str
    from_pending: bool
    amount_minor: int
    plan_version_id: int | None


class Reinstatement(NamedTuple):
    root_id: int
    partner_id: str
    kind: str
    amount_minor: int
    plan_version_id: int | None
    at_us: int | None = None  # when later than the dispute: the instant of the clawbacks it restores


def _groups(pieces: list[Piece]) -> list[tuple[Piece, list[Piece]]]:
    """(root, live pieces of that root) for every root that has not been reversed."""
    by_root: dict[int, list[Piece]] = {}
    for piece in pieces:
        if not piece.reversed:
            by_root.setdefault(piece.root_id, []).append(piece)
    roots = {piece.id: piece for piece in pieces if piece.id == piece.root_id and not piece.reversed}
    return [(roots[root_id], group) for root_id, group in sorted(by_root.items()) if root_id in roots]


def _reversed_by_finance(pieces: list[Piece]) -> set[int]:
    """The roots with a piece or a clawback reversed: no replay of the invoice's events gives them."""
    return {piece.root_id for piece in pieces if piece.reversed or piece.clawback_reversed}


def _take(group: list[Piece], amount_minor: int, at_us: int | None) -> list[Clawback]:
    """Split a clawback dated `at_us` over a root's pieces: those accrued by then first (a
    reinstatement dated later is not yet in the partner's accounts at that instant), then held ones
    first (from pending), newest first. A later piece is drawn on only when the earlier ones hold
    less than the clawback (an event dated later took from them, or rounding left them a minor unit
    short); the caller dates that part no earlier than the piece's arrival. Instants as dated: a
    closed period moves a refund and a reinstatement dated after it alike to the first open period's
    start, where the journal no longer tells which came first."""
    def later(piece: Piece) -> bool:
        dated_us = piece.dated_or_accrued_at_us
        return at_us is not None and dated_us is not None and dated_us > at_us

    ordered = sorted(group, key=lambda p: (later(p), p.released, -p.id))
    plans: list[Clawback] = []
    for piece in ordered:
        if amount_minor == 0:
            break
        room = piece.unclawed_minor if piece.released else min(piece.unclawed_minor, piece.pending_minor)
        take = min(room, amount_minor)
        if take > 0:
            plans.append(Clawback(piece.id, piece.partner_id, piece.kind, not piece.released, take,
                                  piece.plan_version_id))
            amount_minor -= take
    assert amount_minor == 0, "a clawback never exceeds what its pieces still hold"
    return plans


def refund_clawbacks(pieces: list[Piece], refund_minor: int, paid_minor: int,
                     fully_refunded: bool, at_us: int | None = None, *,
                     dated: list[tuple[int, str, int]] | None = None) -> list[Clawback]:
    """The clawbacks of one refund or chargeback of `refund_minor` on an invoice paid `paid_minor`,
    dated `at_us` (None: every piece counts as accrued by then).

    One delivered after a won dispute dated after it gives `dated` (as `dispute_reinstatements`): it
    takes what leaves each root as clawed as time order does, which may be more than its share (the
    refund made the invoice wholly refunded until that dispute: time order clawed the rounding
    remainder then, and the dispute gave back only its share) or less (time order capped the refund
    by rounding, at what was left of the root then, and the dispute gave back a part of it after)."""
    assert 0 < refund_minor <= paid_minor, (refund_minor, paid_minor)
    unreplayable = _reversed_by_finance(pieces)
    plans: list[Clawback] = []
    for root, group in _groups(pieces):
        unclawed = sum(piece.unclawed_minor for piece in group)
        if root.kind == "cpa":
            target = unclawed if fully_refunded else 0
        elif fully_refunded:
            target = unclawed
        else:
            share = round_minor(prorate_minor(root.amount_minor, refund_minor, paid_minor), rounding=ROUND_HALF_EVEN)
            target = min(share, unclawed)
        in_time_order = (None if dated is None or fully_refunded or root.id in unreplayable
                         else dated_clawed_minor(root.kind, root.amount_minor, paid_minor, dated))
        if in_time_order is not None:
            target = min(max(0, in_time_order - (root.amount_minor - unclawed)), unclawed)
        if target > 0:
            plans.extend(_take(group, target, at_us))
    return plans


def dispute_reinstatements(pieces: list[Piece], reversed_minor: int, paid_minor: int,
                           refunded_after_minor: int, at_us: int | None = None, *,
                           dated: list[tuple[int, str, int]] | None = None) -> list[Reinstatement]:
    """What a won dispute of `reversed_minor` at `at_us` restores; `refunded_after_minor` is the
    invoice's net refunded amount once the dispute is reversed (0 restores every clawed amount
    exactly). What it restores of clawbacks dated after it (delivered before it) is restored at their
    instants (`_restore_instants`).

    A dispute delivered after refunds or chargebacks dated after it gives `dated`: the invoice's
    (occurred_at, type, amount) events, this one included. Its share alone would leave the books
    off time order's by what its absence changed in those later clawbacks (one capped by rounding,
    say, where time order would have taken its whole share): it restores instead what lets each root
    end as clawed as time order leaves it (`dated_clawed_minor`), when time order can be replayed:
    not where finance reversed a piece of the root or a clawback of one, which no event replays."""
    assert 0 < reversed_minor <= paid_minor and 0 <= refunded_after_minor < paid_minor
    unreplayable = _reversed_by_finance(pieces)
    plans: list[Reinstatement] = []
    for root, group in _groups(pieces):
        net_clawed = root.amount_minor - sum(piece.unclawed_minor for piece in group)
        if net_clawed <= 0:
            continue
        in_time_order = (None if dated is None or root.id in unreplayable
                         else dated_clawed_minor(root.kind, root.amount_minor, paid_minor, dated))
        if in_time_order is not None:
            amount = max(0, net_clawed - in_time_order)
        elif root.kind == "cpa" or refunded_after_minor == 0:
            amount = net_clawed
        else:
            share = round_minor(prorate_minor(root.amount_minor, reversed_minor, paid_minor), rounding=ROUND_HALF_EVEN)
            amount = min(share, net_clawed)
        if amount == 0:
            continue
        for instant_us, part in _restore_instants(group, amount, at_us):
            plans.append(Reinstatement(root.id, root.partner_id, root.kind, part, root.plan_version_id,
                                       None if instant_us == at_us else instant_us))
    return plans


# Events of one instant, in the order time order applies them: chargebacks, then the disputes won
# on them, then refunds (so that no prefix reverses a chargeback not yet made or refunds more than
# was paid, where the events of that instant together do neither).
_SAME_INSTANT_ORDER = {"chargeback": 0, "chargeback_reversed": 1, "refund": 2}


def dated_clawed_minor(kind: str, amount_minor: int, paid_minor: int, dated: list[tuple[int, str, int]]) -> int | None:
    """What an invoice's refunds, chargebacks and won disputes, (occurred_at, type, amount), leave
    clawed of a root piece of `kind` and `amount_minor` when applied in time order by the rules of
    `refund_clawbacks` and `dispute_reinstatements`. None when some prefix of that order is not one
    the service accepts (it checks the events of one instant together)."""
    model = Piece(0, 0, "", kind, "", amount_minor, None, None, 0, released=True)
    refunded_minor = charged_back_minor = 0
    for _, type_, minor in sorted(dated, key=lambda event: (event[0], _SAME_INSTANT_ORDER[event[1]])):
        if type_ == "chargeback_reversed":
            if not (minor <= charged_back_minor and 0 <= refunded_minor - minor < paid_minor):
                return None
            refunded_minor -= minor
            charged_back_minor -= minor
            model.clawed_minor -= sum(plan.amount_minor for plan in dispute_reinstatements(
                [model], minor, paid_minor, refunded_minor))
        else:
            if refunded_minor + minor > paid_minor:
                return None
            fully = refunded_minor + minor == paid_minor
            refunded_minor += minor
            charged_back_minor += minor if type_ == "chargeback" else 0
            model.clawed_minor += sum(plan.amount_minor for plan in refund_clawbacks([model], minor, paid_minor, fully))
    return model.clawed_minor


def _restore_instants(group: list[Piece], amount_minor: int, at_us: int | None) -> list[tuple[int | None, int]]:
    """(instant, amount) parts of restoring `amount_minor` of a root's clawed amount, as early as
    possible from `at_us` on without restoring, at any instant, more than is clawed by then: net of
    what was restored, counting the clawbacks and reinstatements dated up to each instant. Events
    delivered in time order: one part at `at_us`."""
    changes: dict[int, int] = {}
    for piece in group:
        for instant_us, minor in piece.clawbacks.values():
            changes[instant_us] = changes.get(instant_us, 0) + minor
        if piece.id != piece.root_id and piece.accrued_at_us is not None:
            changes[piece.accrued_at_us] = changes.get(piece.accrued_at_us, 0) - piece.amount_minor
    if at_us is None or all(instant_us <= at_us for instant_us in changes) or amount_minor <= 0:
        return [(at_us, amount_minor)] if amount_minor > 0 else []
    instants = [at_us, *sorted(instant_us for instant_us in changes if instant_us > at_us)]
    clawed = [sum(minor for instant_us, minor in changes.items() if instant_us <= at) for at in instants]
    parts: list[tuple[int | None, int]] = []
    placed = 0
    for index, instant_us in enumerate(instants):
        room = min(clawed[index:]) - placed  # restorable here, and still clawed at every later instant
        take = min(amount_minor - placed, room)
        if take > 0:
            parts.append((instant_us, take))
            placed += take
    assert placed == amount_minor, (placed, amount_minor)
    return parts
