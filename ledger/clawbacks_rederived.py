"""Each refund's, chargeback's and won dispute's postings re-derived from its invoice as the journal
held it when the event was decided.

`revenue._Writer._refund` claws back, of each standing root piece of the invoice (an accrual, CPA or
override, with the reinstatements of it), `commission.refund_clawbacks`' share; `_dispute_won`
restores `commission.dispute_reinstatements`' amount. Both follow from the pieces as they stood
(what was clawed back, reinstated or reversed before) and from what had been refunded of the invoice
before; a won dispute dated before events decided before it restores what leaves the invoice as time
order would, or its share (which books recorded before that rule hold). `verify_clawbacks` folds the
invoice's journal lines up to the event (`holds.PieceReplay`), computes the amount per root piece
the rules give, and compares it with what the event posted: `clawback_unlike_rules` names an event
that took or restored other amounts, or nothing where the rules take something. So a refund row
inserted past the service saying `no_commission` for an id billing has not sent yet (billing's
refund would be answered as its replay, and the partner would keep what the refund should take back)
is named.

Where the event stands among the invoice's postings: an event that posted stands before its first
posting, exactly. One that posted nothing is placed by clocks: a posting recorded more than
`RECORDED_SKEW_US` before it was there when it was decided, one recorded more than that after it
was not; with a posting that changes the pieces (a clawback, reinstatement or reversal) recorded
within that of it, the event is not re-derived. What was refunded before it counts the invoice's
events the same way: one recorded within the skew may or may not have come first, and each subset of
up to `UNCERTAIN_EVENTS_MAX` such events is tried (more: not re-derived). Releases change no amount.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import NamedTuple

from sqlalchemy.orm import Session

from ledger.commission import EARNING_KINDS, Piece, dispute_reinstatements, refund_clawbacks
from ledger.db import driver_rows, in_lists
from ledger.holds import PIECE_LINES, PieceReplay
from ledger.recorded_program import RECORDED_SKEW_US

INVOICES_PER_READ = 5_000
UNCERTAIN_EVENTS_MAX = 4  # events of an invoice recorded within the skew of one, before it or not
_PIECE_CHANGES = ("clawback", "reversal", *EARNING_KINDS)  # a release changes no amount


class Event(NamedTuple):
    id: str
    type: str
    amount_minor: int
    recorded_at_us: int
    occurred_at_us: int

    @property
    def refunded_minor(self) -> int:
        """What it adds to the invoice's refunded amount."""
        return -self.amount_minor if self.type == "chargeback_reversed" else self.amount_minor


class Posting(NamedTuple):
    """One partner-account line of the invoice's journal, as `holds.PieceReplay` folds it."""

    recorded_at_us: int
    row: tuple  # `holds.PIECE_LINES`' columns

    @property
    def transaction_id(self) -> int:
        return self.row[0]

    @property
    def kind(self) -> str:
        return self.row[1]

    @property
    def event_id(self) -> str | None:
        return self.row[5]

    @property
    def accrual_id(self) -> int | None:
        return self.row[6]


def verify_clawbacks(session: Session) -> list[tuple[int | None, str, str]]:
    """(first transaction or None, `clawback_unlike_rules`, message) of each refund, chargeback or
    won dispute, of an invoice whose payment posted commissions, whose postings are not what the
    rules give (module docstring)."""
    problems: list[tuple[int | None, str, str]] = []
    after = ""
    while True:
        invoice_ids = [invoice_id for (invoice_id,) in driver_rows(
            session, "SELECT DISTINCT invoice_id FROM revenue_events WHERE type <> 'invoice_paid'"
                     f" AND invoice_id > ? ORDER BY invoice_id LIMIT {INVOICES_PER_READ}", (after,))]
        if not invoice_ids:
            return problems
        after = invoice_ids[-1]
        problems += _check_invoices(session, invoice_ids)


def _check_invoices(session: Session, invoice_ids: list[str]) -> list[tuple[int | None, str, str]]:
    paid: dict[str, int] = {}
    events: dict[str, list[Event]] = defaultdict(list)
    postings: dict[str, list[Posting]] = defaultdict(list)
    for condition, params in in_lists(session, "invoice_id", invoice_ids):
        for invoice_id, event_id, type_, amount_minor, recorded_us, occurred_us, status in driver_rows(
                session, "SELECT invoice_id, id, type, amount_minor, recorded_at_us, occurred_at_us, status"
                         f" FROM revenue_events WHERE {condition}", params):
            if type_ != "invoice_paid":
                events[invoice_id].append(Event(event_id, type_, amount_minor, recorded_us, occurred_us))
            elif status == "posted":  # the others have no pieces, and their events post nothing (migration 0034)
                paid[invoice_id] = amount_minor
    lines = PIECE_LINES.replace("SELECT ", "SELECT t.recorded_at_us, ", 1)
    undone = sorted(set(events) & set(paid))
    for condition, params in in_lists(session, "t.invoice_id", undone):
        for recorded_us, *row in driver_rows(session, f"{lines} WHERE {condition} AND a.partner_id IS NOT NULL"
                                                      " ORDER BY t.id, j.id", params):
            postings[row[4]].append(Posting(recorded_us, tuple(row)))
    problems = []
    for invoice_id in undone:
        invoice = _Invoice.of(paid[invoice_id], events[invoice_id], postings[invoice_id])
        for event in invoice.events:
            problem = _check_event(event, invoice)
            if problem is not None:
                problems.append(problem)
    return problems


class _Invoice(NamedTuple):
    """An invoice's events undoing its payment and its journal, with what each event posted itself
    (its clawbacks or reinstatements, in journal order) and each piece's root, read once."""

    paid_minor: int
    events: list[Event]
    postings: list[Posting]
    own: dict[str, list[Posting]]
    roots: dict[int, int]

    @classmethod
    def of(cls, paid_minor: int, events: list[Event], postings: list[Posting]) -> "_Invoice":
        own: dict[str, list[Posting]] = defaultdict(list)
        for posting in postings:
            if posting.event_id is not None and (posting.kind == "clawback" or posting.kind in EARNING_KINDS):
                own[posting.event_id].append(posting)
        roots = {piece.id: piece.root_id for piece in _pieces(postings, len(postings))}
        return cls(paid_minor, events, postings, dict(own), roots)

    def first_posted(self, event_id: str) -> int | None:
        """The first transaction the event posted itself, if any."""
        own = self.own.get(event_id)
        return own[0].transaction_id if own else None


def _check_event(event: Event, invoice: _Invoice) -> tuple[int | None, str, str] | None:
    own = invoice.own.get(event.id, [])
    placed = _place(event, own, invoice.postings)
    if placed is None:
        return None
    before, first_own = placed
    pieces = _pieces(invoice.postings, before)
    held = _held(own, invoice.roots)
    certain, uncertain = _earlier(event, invoice)
    if len(uncertain) > UNCERTAIN_EVENTS_MAX:
        return None
    expected = None
    for count in range(len(uncertain) + 1):
        for seen in combinations(uncertain, count):
            try:
                candidates = _expected(event, pieces, invoice.paid_minor, [*certain, *seen])
            except AssertionError:  # the rules' own assertions, on pieces altered past the database's
                return None         # rules: what stands against them is named by verify_pieces_within
            if candidates is None or held in candidates:
                return None
            expected = candidates[0]
    assert expected is not None
    verb = "restore" if event.type == "chargeback_reversed" else "take"
    return (first_own, "clawback_unlike_rules",
            f"revenue event {event.id!r} ({event.type}): its postings {verb} {_describe(held)} of its invoice's "
            f"commissions, but the rules {verb} {_describe(expected)} of them as they stood")


def _place(event: Event, own: list[Posting], postings: list[Posting]) -> tuple[int, int | None] | None:
    """(how many of the postings came before the event, its first transaction), or None when a
    posting that changes the pieces was recorded within the skew of an event that posted nothing."""
    if own:
        first = own[0].transaction_id  # in journal order
        return sum(1 for p in postings if p.transaction_id < first), first
    low, high = event.recorded_at_us - RECORDED_SKEW_US, event.recorded_at_us + RECORDED_SKEW_US
    changes = [p for p in postings if p.kind in _PIECE_CHANGES]
    if any(low <= p.recorded_at_us <= high for p in changes):
        return None
    later = [p.transaction_id for p in changes if p.recorded_at_us > high]
    cut = min(later, default=None)
    return (len(postings) if cut is None else sum(1 for p in postings if p.transaction_id < cut)), None


def _pieces(postings: list[Posting], count: int) -> list[Piece]:
    replay = PieceReplay()
    for posting in postings[:count]:
        replay.apply(posting.row)
    return list(replay.pieces.values())


def _earlier(event: Event, invoice: _Invoice) -> tuple[list[Event], list[Event]]:
    """The invoice's other events decided before this one for certain, and those that may have been."""
    mine = invoice.first_posted(event.id)
    certain, uncertain = [], []
    for other in invoice.events:
        if other.id == event.id:
            continue
        theirs = invoice.first_posted(other.id)
        if mine is not None and theirs is not None:  # both posted: the journal's order
            if theirs < mine:
                certain.append(other)
        elif other.recorded_at_us < event.recorded_at_us - RECORDED_SKEW_US:
            certain.append(other)
        elif other.recorded_at_us <= event.recorded_at_us + RECORDED_SKEW_US:
            uncertain.append(other)
    return certain, uncertain


def _expected(event: Event, pieces: list[Piece], paid_minor: int, earlier: list[Event]) -> list[dict[int, int]] | None:
    """The {root piece: amount} the rules take (or restore) for the event, after the `earlier` events
    of its invoice; None when the amounts lie outside what the service accepts (the events' own
    checks name those). A won dispute dated before one of them restores what leaves its invoice as
    time order would (`commission.dispute_reinstatements`' `dated`), and so does a refund dated
    before a won dispute among them (`refund_clawbacks`' `dated`); or, as the service did before it
    did so, its share: either is the rules'."""
    refunded_minor = sum(e.refunded_minor for e in earlier)
    if event.type == "chargeback_reversed":
        refunded_after = refunded_minor - event.amount_minor
        if not (0 < event.amount_minor <= paid_minor and 0 <= refunded_after < paid_minor):
            return None
        plans = dispute_reinstatements(pieces, event.amount_minor, paid_minor, refunded_after)
        shares = _by_root((plan.root_id, plan.amount_minor) for plan in plans)
        if all(e.occurred_at_us <= event.occurred_at_us for e in earlier):
            return [shares]
        plans = dispute_reinstatements(pieces, event.amount_minor, paid_minor, refunded_after,
                                       dated=_dated(earlier, event))
        return [_by_root((plan.root_id, plan.amount_minor) for plan in plans), shares]
    if not (0 < event.amount_minor <= paid_minor and refunded_minor + event.amount_minor <= paid_minor):
        return None
    fully = refunded_minor + event.amount_minor == paid_minor
    roots = {piece.id: piece.root_id for piece in pieces}
    plans = refund_clawbacks(pieces, event.amount_minor, paid_minor, fully)
    shares = _by_root((roots[plan.piece_id], plan.amount_minor) for plan in plans)
    if fully or not any(e.type == "chargeback_reversed" and e.occurred_at_us > event.occurred_at_us for e in earlier):
        return [shares]
    plans = refund_clawbacks(pieces, event.amount_minor, paid_minor, fully, dated=_dated(earlier, event))
    return [_by_root((roots[plan.piece_id], plan.amount_minor) for plan in plans), shares]


def _dated(earlier: list[Event], event: Event) -> list[tuple[int, str, int]]:
    """The events as `commission.dated_clawed_minor` replays them."""
    return [(e.occurred_at_us, e.type, e.amount_minor) for e in (*earlier, event)]


def _held(own: list[Posting], roots: dict[int, int]) -> dict[int, int]:
    """{root piece: amount} the event's postings took (clawbacks) or restored (reinstatements)."""
    return _by_root((roots.get(p.accrual_id, p.accrual_id), p.row[12]) for p in own)


def _by_root(amounts) -> dict[int, int]:
    found: dict[int, int] = defaultdict(int)
    for root_id, amount_minor in amounts:
        found[root_id] += amount_minor
    return {root_id: amount for root_id, amount in found.items() if amount}


def _describe(amounts: dict[int, int]) -> str:
    if not amounts:
        return "nothing"
    return ", ".join(f"{amount} minor units of piece {root_id}"
                     for root_id, amount in sorted(amounts.items(), key=lambda item: str(item[0])))
