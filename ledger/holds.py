"""Holds: accrued commission is pending until `occurred_at + hold_days`, then released to available.

The journal is the truth. `load_pieces` rebuilds, from the journal rows of some invoices, every
accrued piece with what has been clawed back from it, released or reversed. `open_holds` is a work
queue of pieces not yet released (derived, rebuildable, the one table rows leave): a release run
reads it by maturity instead of scanning the journal.

Held-ness is decided by time, never by when a job last ran: anything that posts against accruals
at instant t (a clawback, a payout run, a close) first calls `release_matured(t)` (or, for one
invoice, `release_pieces`). A release is effective at the maturity instant. A reversed accrual is
never released. A refund dated before a piece matured but delivered after its release was posted
finds the piece held at its instant: the release is reversed (`unrelease`), the clawback comes
from pending, and what is left is released again at the maturity instant.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable, ContextManager, Iterable

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from ledger import accounts as chart
from ledger import journal
from ledger.commission import EARNING_KINDS, Piece
from ledger.db import driver_results, driver_rows, in_lists
from ledger.errors import Conflict, Unfinished, invalid
from ledger.instants import format_instant
from ledger.schema import journal_transactions, open_holds

_DAY_US = 86_400 * 1_000_000
# Holds released per transaction by the scheduler's jobs and `revshare release-holds`. Measured with
# `bench/jobs.py` (15,196 matured holds, a process posting meanwhile, 2 cores): at 50 and at 100 a
# transaction the postings' p99 waits were within the runs' noise of each other (27-44 ms on a quiet
# machine, both engines, two runs each), against 2-3 s behind one transaction; 100 halved the
# catch-up's time on PostgreSQL. docs/performance.md, "Postings during a job's catch-up", has the
# figures.
HOLDS_PER_TRANSACTION = 100
# Holds replayed and released at a time within one transaction (`release_matured`). All at once, a
# backlog of 91,351 matured holds took 294 MB of peak RSS in one process, about 3 KB a hold; 1,000 at
# a time, 86 MB (docs/performance.md, "Hold releases").
RELEASE_CHUNK_HOLDS = 1_000


def matures_at_us(occurred_at_us: int, hold_days: int) -> int:
    return occurred_at_us + hold_days * _DAY_US


def standing_against(session: Session, piece: int, invoice_id: str) -> list[int]:
    """What stands against an earning piece of `invoice_id` (`PieceReplay.standing_against`)."""
    return replay(session, [invoice_id]).standing_against(piece)


def load_pieces(session: Session, invoice_ids: Iterable[str]) -> dict[str, list[Piece]]:
    """{invoice_id: pieces}, replaying the invoice's accruals, clawbacks, releases and reversals."""
    return dict(replay(session, invoice_ids).by_invoice)


def replay(session: Session, invoice_ids: Iterable[str]) -> "PieceReplay":
    """The invoices' partner-account lines, folded in sequence order."""
    replay = PieceReplay()
    for condition, params in in_lists(session, "t.invoice_id", sorted(set(invoice_ids))):
        for row in driver_rows(session, f"{PIECE_LINES} WHERE {condition} AND a.partner_id IS NOT NULL"
                                        " ORDER BY t.id, j.id", params):
            replay.apply(row)
    return replay


# The partner-account lines of an invoice's transactions, in the column order `PieceReplay.apply` unpacks.
PIECE_LINES = ("SELECT t.id, t.kind, t.partner_id, t.customer_id, t.invoice_id, t.event_id, t.accrual_id,"
               " t.reverses_id, t.matures_at_us, t.plan_version_id, t.effective_at_us, j.currency, j.amount_minor,"
               " a.name, t.original_effective_at_us"
               " FROM journal_transactions t JOIN journal_lines j ON j.transaction_id = t.id"
               " JOIN accounts a ON a.id = j.account_id")


class PieceReplay:
    """Folds the partner-account lines of the journal, in sequence order, into pieces.

    An effect is (piece id, pending delta, clawed delta, released flag); a reversal of a clawback
    or release applies its original's effect negated; a reversal of a piece marks it reversed.
    """

    def __init__(self) -> None:
        self.pieces: dict[int, Piece] = {}
        self.effects: dict[int, tuple[int, int, int, int]] = {}
        self.effects_on: dict[int, list[int]] = defaultdict(list)  # piece id -> its effects' ids, in order
        self.reversals_seen: set[int] = set()
        self.undone: set[int] = set()  # clawbacks and releases since reversed
        self.by_invoice: dict[str, list[Piece]] = defaultdict(list)

    def apply(self, row: tuple) -> None:
        """One row of `PIECE_LINES`."""
        (transaction_id, kind, partner_id, customer_id, invoice_id, event_id, accrual_id, reverses_id, matures_at_us,
         plan_version_id, effective_at_us, currency, amount_minor, account_name, dated_at_us) = row
        on_pending = account_name.endswith(":pending")
        if kind in EARNING_KINDS:
            piece = Piece(transaction_id, accrual_id or transaction_id, partner_id, kind, currency, amount_minor,
                          plan_version_id, matures_at_us, amount_minor, customer_id=customer_id, invoice_id=invoice_id,
                          event_id=event_id, accrued_at_us=effective_at_us, dated_at_us=dated_at_us)
            self.pieces[transaction_id] = piece
            self.by_invoice[invoice_id].append(piece)
        elif kind == "clawback" and accrual_id in self.pieces:
            self._record(transaction_id, (accrual_id, -amount_minor if on_pending else 0, amount_minor, 0))
            self.pieces[accrual_id].clawbacks[transaction_id] = (effective_at_us, amount_minor)
        elif kind == "release" and accrual_id in self.pieces and on_pending:
            self._record(transaction_id, (accrual_id, -amount_minor, 0, 1))
            piece = self.pieces[accrual_id]
            piece.release_id, piece.released_minor, piece.released_at_us = transaction_id, amount_minor, effective_at_us
            piece.releases += 1
        elif kind == "reversal" and transaction_id not in self.reversals_seen:
            self.reversals_seen.add(transaction_id)  # a reversal of a release has two partner lines: apply once
            if reverses_id in self.pieces:
                self.pieces[reverses_id].reversed = True
            elif reverses_id in self.effects:
                effect = self.effects[reverses_id]
                self.undone.add(reverses_id)
                self._change(effect, -1)
                self.pieces[effect[0]].clawbacks.pop(reverses_id, None)
                if effect[2]:
                    self.pieces[effect[0]].clawback_reversed = True
                if effect[3]:  # a release undone: the piece is held again
                    piece = self.pieces[effect[0]]
                    piece.release_id, piece.released_minor, piece.released_at_us = None, 0, None

    def standing_against(self, piece_id: int) -> list[int]:
        """What stands against an earning piece, to be reversed before it, in that order: each
        reinstatement of it (a won dispute's accrual) with its own clawbacks and release before it,
        then the piece's clawbacks and release."""
        invoice_id = self.pieces[piece_id].invoice_id
        reinstatements = [other.id for other in self.by_invoice[invoice_id]
                          if other.root_id == piece_id and other.id != piece_id and not other.reversed]
        return [*(found for other in reinstatements for found in (*self.standing(other), other)),
                *self.standing(piece_id)]

    def standing(self, piece_id: int) -> list[int]:
        """The clawbacks and release of a piece that have not been reversed, in sequence order."""
        return [transaction_id for transaction_id in self.effects_on.get(piece_id, ())
                if transaction_id not in self.undone]

    def _record(self, transaction_id: int, effect: tuple[int, int, int, int]) -> None:
        self.effects[transaction_id] = effect
        self.effects_on[effect[0]].append(transaction_id)
        self._change(effect, +1)

    def _change(self, effect: tuple[int, int, int, int], sign: int) -> None:
        piece = self.pieces[effect[0]]
        piece.pending_minor += sign * effect[1]
        piece.clawed_minor += sign * effect[2]
        if effect[3]:
            piece.released = sign > 0


def release_draft(piece: Piece, *, key_suffix: str = "") -> journal.Draft:
    """Move what is still pending of a matured piece to available, at its maturity instant. A piece
    released again (after a late refund undid its release) names the cause in `key_suffix`; without
    one, a piece released before counts its earlier releases in its key.

    The release names the event that accrued the piece (for a won dispute's reinstatement, the
    dispute), as the piece's other postings name theirs, so that each statement line traces to its
    event; that event's replayed answer leaves releases out (`revenue.outcomes_of`)."""
    assert piece.pending_minor > 0 and not piece.released and not piece.reversed, piece
    suffix = key_suffix or (f":{piece.releases}" if piece.releases else "")
    return journal.transfer(
        "release", chart.pending(piece.partner_id), chart.available(piece.partner_id), piece.currency,
        piece.pending_minor, effective_at_us=piece.matures_at_us, idempotency_key=f"release:{piece.id}{suffix}",
        partner_id=piece.partner_id, customer_id=piece.customer_id, invoice_id=piece.invoice_id,
        event_id=piece.event_id, plan_version_id=piece.plan_version_id, accrual_id=piece.id)


def release_pieces(batch: journal.Batch, pieces: Iterable[Piece], at_us: int, *, key_suffix: str = "") -> list[int]:
    """Release every held piece matured by `at_us`; returns the ids of pieces whose hold ended."""
    ended = []
    for piece in pieces:
        if piece.released or piece.matures_at_us is None or piece.matures_at_us > at_us:
            continue
        if not piece.reversed and piece.pending_minor > 0:
            posted = batch.add(release_draft(piece, key_suffix=key_suffix))
            piece.release_id, piece.released_minor = posted.id, piece.pending_minor
            piece.released_at_us = batch.posting_instant(piece.matures_at_us)
            piece.pending_minor = 0
            piece.releases += 1
        piece.released = True
        ended.append(piece.id)
    return ended


def unrelease(batch: journal.Batch, piece: Piece, *, reason: str, key: str) -> None:
    """Undo a piece's release (a refund dated while it was still held arrived after the release was
    posted): the reversal mirrors the release at its instant, and the piece is held again."""
    assert piece.released and piece.release_id is not None, piece
    batch.flush()  # the release may have been added to this very batch
    batch.add(journal.reversal_draft(batch.session, piece.release_id, reason=reason, idempotency_key=key))
    piece.pending_minor += piece.released_minor
    piece.released, piece.release_id, piece.released_minor, piece.released_at_us = False, None, 0, None


def released_again(session: Session, clawback_id: int, invoice_id: str, *, reason: str, key: str,
                   effective_at_us: int | None) -> tuple[list[journal.Draft], list[journal.Draft]]:
    """For reversing a clawback that took from pending: the drafts to post before that reversal (the
    reversal of the piece's release, if one is in force) and after it (the release of the whole
    pending amount, the clawed part back in it, at the maturity), once the piece's hold has left the
    queue (released, or ended with nothing pending to release), so that nothing is left pending
    after the maturity, whenever release runs came by. A piece keeps one release in force, which a
    refund dated before the maturity can undo (`unrelease`). Nothing to post for a clawback from
    available, or of a piece whose hold is still queued (its release takes all when it comes); the
    refusals below apply to those too.

    Refused: such a reversal dated after the release, or after the maturity when none was posted
    (the restored amount would be pending after it), and the reversal of a chargeback's clawback of
    a piece a won dispute reinstated (the dispute restored it already: reverse the accrual). A
    refund's clawback may still be reversed, unless the accrual would then keep more than it earned:
    a won dispute restores what a completing refund took of a CPA, say."""
    folded = replay(session, [invoice_id])
    effect = folded.effects.get(clawback_id)
    piece = folded.pieces[effect[0]] if effect else None
    if piece is None or clawback_id in folded.undone:  # reversed already: its reversal is replayed alone
        return [], []
    if any(other.root_id == piece.id and other.id != piece.id and not other.reversed
           for other in folded.pieces.values()) and _by_chargeback(session, clawback_id):
        raise Conflict(f"a won dispute reinstated accrual {piece.id}, restoring what its chargebacks took: "
                       f"reverse the accrual instead")
    root = folded.pieces[piece.root_id]
    kept = sum(other.unclawed_minor for other in folded.pieces.values()
               if other.root_id == root.id and not other.reversed)
    if not root.reversed and kept + effect[2] > root.amount_minor:
        raise Conflict(f"a won dispute restored part of what was clawed from accrual {root.id}: reversing this "
                       f"clawback would leave the partner more than it earned; reverse the accrual instead")
    if effect[1] == 0 or piece.reversed or piece.matures_at_us is None:
        return [], []
    released_at_us = piece.matures_at_us if piece.released_at_us is None else piece.released_at_us
    if effective_at_us is not None and effective_at_us > released_at_us:
        raise invalid("effective_at", "must not be after the release of the accrual the clawback took from "
                                      f"({format_instant(released_at_us)}), when what it restores is released")
    queued = session.execute(select(open_holds.c.accrual_id).where(open_holds.c.accrual_id == piece.id)).first()
    if piece.release_id is None and queued is not None:
        return [], []
    undo = [] if piece.release_id is None else [journal.reversal_draft(
        session, piece.release_id, reason=f"{reason} (with transaction {clawback_id})",
        idempotency_key=f"{key}:with:{piece.release_id}")]
    piece.pending_minor += piece.released_minor - effect[1]
    piece.released = False
    return undo, [release_draft(piece)]


def _by_chargeback(session: Session, clawback_id: int) -> bool:
    found = driver_rows(session, "SELECT e.type FROM journal_transactions t"
                                 " JOIN revenue_events e ON e.id = t.event_id WHERE t.id = ?", (clawback_id,))
    return bool(found) and found[0][0] == "chargeback"


HOLD_COLUMNS = ("accrual_id", "matures_at_us")


def end_holds(session: Session, accrual_ids: list[int]) -> None:
    driver_results(session, [(f"DELETE FROM open_holds WHERE {condition}", params)
                             for condition, params in in_lists(session, "accrual_id", accrual_ids)])


def release_matured(session: Session, at_us: int, *, batch: journal.Batch | None = None,
                    own_instant: bool = False) -> int:
    """Release every accrual matured by `at_us`; returns how many releases were posted. An instant
    in the future is refused (422 naming `at`), as for a payout run: holds are released as they
    mature, and a release dated ahead would make an amount available before its time. With
    `own_instant`, `at_us` was read from the service's clock, which may have stepped back since
    (`journal.Batch.ahead`). The releases are written (`batch` flushed) before their holds leave
    the queue, so what reads balances after it counts them.

    The holds are taken `RELEASE_CHUNK_HOLDS` at a time, oldest maturity first, each chunk's
    invoices replayed and its releases written before the next: the same postings in the same
    order as all at once, in memory bounded by the chunk instead of growing with the backlog."""
    batch = batch or journal.Batch(session)
    released, after = 0, None
    while True:
        posted, taken, after = _release(session, at_us, batch, RELEASE_CHUNK_HOLDS, after, own_instant=own_instant)
        released += posted
        if taken < RELEASE_CHUNK_HOLDS:
            return released


def first_release_due(session: Session, before_us: int) -> int | None:
    """The maturity of the first queued hold, maturing before `before_us`, whose release would post
    something (its piece neither reversed nor clawed to nothing), or None. A close reads it to
    refuse skipping an open period that such a release would post into, as a release run that came
    by first would have (`periods`). Reversed pieces are passed over in SQL; the others are
    replayed a few invoices at a time, more each round, until one would post."""
    h, reversal = open_holds.c, journal_transactions.alias("reversal")
    unreversed = ~select(reversal.c.id).where(reversal.c.reverses_id == h.accrual_id).exists()
    after, chunk = None, _DUE_CHUNK_FIRST
    while True:
        rows, pieces = _queued(session, (h.matures_at_us < before_us, unreversed), after, chunk)
        if not rows:
            return None
        posting = [piece.matures_at_us for piece in pieces
                   if not piece.released and not piece.reversed and piece.pending_minor > 0]
        if posting:
            return min(posting)
        after, chunk = (rows[-1].matures_at_us, rows[-1].accrual_id), min(chunk * 4, _DUE_CHUNK_MAX)


_DUE_CHUNK_FIRST, _DUE_CHUNK_MAX = 10, 1_000


def release_in_transactions(transaction: Callable[[], ContextManager[Session]], at_us: int | None, *,
                            holds_per_transaction: int | None = None, own_instant: bool = False,
                            deadline: float | None = None) -> int:
    """How many releases `release_in_transactions_at` posted."""
    return release_in_transactions_at(transaction, at_us, holds_per_transaction=holds_per_transaction,
                                      own_instant=own_instant, deadline=deadline)[0]


def release_in_transactions_at(transaction: Callable[[], ContextManager[Session]], at_us: int | None, *,
                               holds_per_transaction: int | None = None, own_instant: bool = False,
                               deadline: float | None = None) -> tuple[int, int]:
    """`release_matured` in a `transaction()` per `holds_per_transaction` holds (by default
    HOLDS_PER_TRANSACTION), oldest maturity first, until none matured by `at_us` is left; returns
    how many releases were posted, and the instant they were made as of. At None, `at_us` is now as
    read under the journal lock in the first transaction: read before it, a run that waited behind
    another writer was made as of an instant before that writer's postings, and left held what
    matured meanwhile.

    A catch-up of many holds in one transaction would hold the journal lock, and every posting
    behind it, for as long as it takes (a minute for 280,000 holds). Each transaction is complete
    on its own: a hold leaves the queue in the transaction that posts its release, and the releases
    are keyed by accrual, so a crash between two leaves the rest queued for the next run, and that
    run posts what one uninterrupted run would have. Postings that come between two transactions
    find the holds matured before their instant released already, or release them themselves.
    `own_instant` as for `release_matured`: the later transactions read a clock that may have
    stepped back since `at_us` was read from it. `deadline` (a `time.monotonic()` instant): past it,
    once a release is posted, no further transaction is begun and `Unfinished` is raised (a
    request's budget: `api.session`)."""
    holds_per_transaction = HOLDS_PER_TRANSACTION if holds_per_transaction is None else holds_per_transaction
    assert holds_per_transaction > 0, holds_per_transaction
    released, after = 0, None
    while True:
        with transaction() as session:
            batch = journal.Batch(session)
            if at_us is None:
                at_us, own_instant = batch.recorded_at_us, True
            posted, taken, after = _release(session, at_us, batch, holds_per_transaction, after,
                                            own_instant=own_instant)
        released += posted
        if taken < holds_per_transaction:
            return released, at_us
        if released and deadline is not None and time.monotonic() >= deadline:  # a retry goes further
            raise Unfinished(f"{released} matured holds were released, in transactions committed on their own, and "
                             f"more matured by {format_instant(at_us)} are left: retry the request to go on")


def _release(session: Session, at_us: int, batch: journal.Batch, limit: int,
             after: tuple[int, int] | None = None, *, own_instant: bool) -> tuple[int, int, tuple[int, int] | None]:
    """(releases posted, holds taken from the queue, the last one's (maturity, accrual)): the
    `limit` holds matured first by `at_us`, by maturity then accrual, after `after`.
    Each call starts after the last hold the previous one took, so a run of calls ends even if a
    hold it takes cannot leave the queue (one whose piece was released already leaves it here).
    Whoever made `batch`, the releases are flushed before their holds leave the queue: one order for
    every caller."""
    if batch.ahead(at_us, own_instant=own_instant):
        raise invalid("at", f"{format_instant(at_us)} is in the future: holds are released as they mature")
    matured, pieces = _queued(session, (open_holds.c.matures_at_us <= at_us,), after, limit)
    if not matured:
        return 0, 0, after
    wanted = {row.accrual_id for row in matured}
    stale = {p.id for p in pieces if p.released}  # released already: its hold should have left the queue then
    before = batch.head_id
    ended = release_pieces(batch, sorted(pieces, key=lambda p: (p.matures_at_us, p.id)), at_us)
    released = batch.head_id - before
    batch.flush()
    end_holds(session, sorted(set(ended) | stale | (wanted - {p.id for p in pieces})))
    last = matured[-1]
    return released, len(matured), (last.matures_at_us, last.accrual_id)


def _queued(session: Session, conditions: tuple, after: tuple[int, int] | None, limit: int
            ) -> tuple[list, list[Piece]]:
    """(the queued holds `conditions` pick, after `after` and the first `limit` by maturity then
    accrual; the pieces they hold, replayed from their invoices)."""
    t, h = journal_transactions.c, open_holds.c
    due = select(h.accrual_id, t.invoice_id, h.matures_at_us).join(journal_transactions, t.id == h.accrual_id)
    due = due.where(*conditions)
    if after is not None:
        due = due.where(tuple_(h.matures_at_us, h.accrual_id) > tuple_(*after))
    due = due.order_by(h.matures_at_us, h.accrual_id).limit(limit)
    rows = session.execute(due).all()
    if not rows:
        return rows, []
    wanted = {row.accrual_id for row in rows}
    by_invoice = load_pieces(session, {row.invoice_id for row in rows})
    return rows, [piece for group in by_invoice.values() for piece in group if piece.id in wanted]
