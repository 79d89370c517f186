"""Reversals: "the mirror of its lines, linked to it, effective at the original's instant (or the
start of the first open period if that is closed) unless an `effective_at` is given; a transaction
is reversed at most once" (DESIGN.md), and what else a reversal must undo so that the books stay
true to the rules that depend on the transaction:

- An earning piece (accrual, CPA, override) is reversed together with what still stands against
  it: each of its reinstatements (a won dispute's accruals, with their own clawbacks and release),
  then each of its clawbacks and its release, is reversed first, in the same atomic posting. The
  mirror of a released piece alone would leave its amount in available (and pending negative), to
  be paid out, although "a reversed accrual is never released"; the mirror of a partly clawed piece
  would claw the partner twice. Each of those reversals is effective at its original's instant, or
  at the requested instant when that is later, so that from the piece's reversal on, the piece adds
  nothing to its partner's balances at any instant. A piece matured before the reversal's instant
  that no release run has released yet is released first, at its maturity, as a run would have:
  whether a piece is held is decided by time, never by when a job last ran.
- A release is not reversed on its own (409): whether a piece is held is decided by time, so a
  matured piece would be released again at once. Reverse its accrual instead.
- A clawback that took from pending, of a piece whose hold has left the queue (released, or ended
  with nothing left to release), is reversed between the reversal of its release (if one was
  posted) and a release of the whole pending amount, at the maturity: a piece keeps one release in
  force (which a late refund dated before the maturity can undo), and nothing is left pending after
  the maturity, whenever release runs came by. Such a reversal may not be dated after the release,
  or after the maturity (422). A chargeback's clawback of an accrual a won dispute reinstated is
  not reversed (409): the dispute already restored it; reverse the accrual instead.
- A payout's posting, while the payout is pending, is reversed as the payout's failure: the money
  returns to available and the reversal resolves the payout `failed`, so that it can no longer be
  settled (which would pay it twice). Once a payout is settled or failed, its posting and its
  resolution are final, a 409: the money has left (or come back) through the payment system, and a
  correction is an adjustment (the database refuses their mirrors too: migration 0024).
- A reversal is not reversed (409): post the original again instead.
- Anything else: its mirror.
"""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from ledger import holds, journal
from ledger.commission import EARNING_KINDS, Piece
from ledger.errors import Conflict
from ledger.schema import payout_resolutions, payouts

PAYOUT_RESOLUTION_KINDS = ("payout_settled", "payout_failed")


def reverse(session: Session, transaction_id: int, *, reason: str, effective_at_us: int | None = None,
            idempotency_key: str | None = None, recorded_at_us: int | None = None) -> journal.Posted:
    """Reverse a transaction (see the module's docstring); returns its reversal."""
    journal.lock_journal(session)
    key = idempotency_key or f"reversal:{transaction_id}"
    stored = journal.load_stored(session, transaction_id)
    draft = journal.reversal_draft(session, transaction_id, reason=reason, effective_at_us=effective_at_us,
                                   idempotency_key=key, stored=stored)
    kind = stored[0].kind
    if kind in PAYOUT_RESOLUTION_KINDS:
        raise Conflict(f"transaction {transaction_id} resolves a payout, which is final: correct it with an adjustment")
    if kind == "release":
        raise Conflict(f"transaction {transaction_id} is a release, which follows from time: reverse its accrual "
                       "instead")
    undo, redo = [], []
    if kind in EARNING_KINDS:
        _release_matured(session, transaction_id, draft, recorded_at_us)
        undo = _standing_reversals(session, transaction_id, draft, key, reason, effective_at_us)
    elif kind == "clawback":
        undo, redo = holds.released_again(session, transaction_id, draft.invoice_id, reason=reason, key=key,
                                          effective_at_us=effective_at_us)
    pending_payout = _pending_payout(session, transaction_id) if kind == "payout" else None
    posted = journal.post(session, [*undo, draft, *redo], recorded_at_us=recorded_at_us)[len(undo)]
    if redo and not posted.replayed:
        holds.end_holds(session, [draft.accrual_id])  # released: a hold still queued would be read for ever
    if pending_payout is not None and not posted.replayed:
        session.execute(insert(payout_resolutions).values(
            payout_id=pending_payout, outcome="failed", transaction_id=posted.id, reason=reason,
            resolved_at_us=journal.now_us() if recorded_at_us is None else recorded_at_us))
    return posted


def _release_matured(session: Session, piece_id: int, draft: journal.Draft, recorded_at_us: int | None) -> None:
    """Release the piece, and each reinstatement of it, matured before the reversal's instant and not
    released yet: whether a piece is held is decided by time, never by when a job last ran, so the
    piece stands released from its maturity to the reversal whether or not a release run came by
    first (the reversal then undoes that release with the rest). One maturing at the reversal's very
    instant is not released: it would stand released for no time."""
    pieces = [piece for piece in holds.load_pieces(session, [draft.invoice_id]).get(draft.invoice_id, [])
              if piece_id in (piece.id, piece.root_id) and piece.matures_at_us is not None
              and piece.matures_at_us < draft.effective_at_us]
    batch = journal.Batch(session, recorded_at_us=recorded_at_us)
    ended = holds.release_pieces(batch, pieces, draft.effective_at_us)
    batch.flush()  # written before the holds leave the queue, as `holds.release_matured` does
    holds.end_holds(session, ended)


def piece_reversal_order(replay: holds.PieceReplay, piece: Piece) -> list[int] | None:
    """What `reverse` reverses for a standing earning piece at its instant, in order, from a replay of
    its invoice (`holds.replay`): what stands against it, then the piece. None when the piece, or one
    of its reinstatements, matured before the piece's instant (it was posted into an open period
    after its own had closed) and is not released yet: `reverse` releases it first."""
    assert not piece.reversed and piece.root_id == piece.id, piece
    if any(other.matures_at_us is not None and other.matures_at_us < piece.accrued_at_us
           and not other.released and not other.reversed
           for other in replay.by_invoice[piece.invoice_id] if piece.id in (other.id, other.root_id)):
        return None
    return [*replay.standing_against(piece.id), piece.id]


def piece_reversal_drafts(sources: dict[int, tuple[journal.Draft, int]], order: list[int], *, reason: str,
                          key: str) -> list[journal.Draft]:
    """The drafts `reverse` posts for the piece last in `order` (`piece_reversal_order`), from the
    transactions' `journal.reversal_sources`: the same reasons and keys."""
    *standing, piece = order
    return [*(journal.standing_reversal_draft(sources[other], other, reason=_with(reason, piece),
                                              key=_with_key(key, other)) for other in standing),
            journal.standing_reversal_draft(sources[piece], piece, reason=reason, key=key)]


def _with(reason: str, piece: int) -> str:
    return f"{reason} (with transaction {piece})"


def _with_key(key: str, standing: int) -> str:
    return f"{key}:with:{standing}"


def _standing_reversals(session: Session, piece: int, draft: journal.Draft, key: str, reason: str,
                        effective_at_us: int | None) -> list[journal.Draft]:
    undo = [journal.reversal_draft(session, standing, reason=_with(reason, piece),
                                   idempotency_key=_with_key(key, standing))
            for standing in holds.standing_against(session, piece, draft.invoice_id)]
    if effective_at_us is None:
        return undo
    return [d._replace(effective_at_us=max(d.effective_at_us, effective_at_us)) for d in undo]


def _pending_payout(session: Session, transaction_id: int) -> int | None:
    """The payout a payout posting made; a 409 when it is already settled or failed."""
    p, r = payouts.c, payout_resolutions.c
    row = session.execute(select(p.id, r.outcome, r.transaction_id).outerjoin(payout_resolutions, r.payout_id == p.id)
                          .where(p.transaction_id == transaction_id)).first()
    if row is None:
        return None
    if row.outcome is None:
        return row.id
    if row.transaction_id == journal.reversed_by(session, transaction_id):
        return None  # failed by this very reversal: a replay
    raise Conflict(f"payout {row.id} is already {row.outcome}; its posting is final: correct it with an adjustment")
