"""Payout runs and the two-phase life of a payout, and manual adjustments by finance.

A payout run at instant t first releases every hold matured by t; then, for each partner active at
t and each currency whose available balance as of t (postings effective at or before t) reaches the
minimum payout of the partner's plan for that currency, it posts one payout of the whole available
balance, effective at t (Dr available / Cr payouts in transit), status pending. A run per instant:
running again at the same instant returns the first run. A currency the plan lists no minimum for
is paid whenever its balance is positive. A new run at an instant inside a closed period is refused:
its payouts could not be effective at t, and would pay a balance that may no longer be there. So is
a run before the latest one (Python, and the database: migration 0012): the later run's payouts are
not in the balances as of t, which it would pay a second time. A run in the future is refused too.

A pending payout is then settled (Dr in transit / Cr cash) or failed (Dr in transit / Cr available,
returning the money), at most once: the database's primary key on `payout_resolutions` refuses a
second resolution even when two requests race. Its instant (default now) is not before the
payout's nor in the future (422 naming `at`; the database refuses the first too: migration 0017).
By default it is now, or the payout's own instant if that is later by this server's clock (the run
was made by a server whose clock is ahead, or this one's clock was stepped back since); more than
five minutes later, a 409 (`journal.DatedAhead`: the database refuses it, migration 0029).

An adjustment is effective when it is made (default) or at an instant that has passed, not in the
future (422 naming `effective_at`; the database refuses it too: migration 0021). Dated ahead, it
would change a balance from an instant nobody has seen yet, unseen by every report until then, and
every read of its accounts as of now would sum their lines instead of reading their running totals
(`ledger.balances`) until that instant passed.
"""

from __future__ import annotations

import hashlib
from typing import Callable, ContextManager, NamedTuple

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from ledger import accounts as chart
from ledger import holds, journal
from ledger.balances import partner_account_sums
from ledger.db import database_now_us
from ledger.errors import Conflict, NotFound, invalid
from ledger.instants import format_instant
from ledger.partners import partner_exists, program_for
from ledger.schema import journal_transactions, payout_resolutions, payout_runs, payouts

REASON_LENGTH_MAX = 500


class Payout(NamedTuple):
    id: int
    run_id: str
    partner_id: str
    currency: str
    amount_minor: int
    status: str  # pending | settled | failed
    transaction_id: int
    resolution_transaction_id: int | None
    reason: str | None


class PayoutRun(NamedTuple):
    id: str
    at_us: int
    payouts: tuple[Payout, ...]
    replayed: bool


def first_run_from(session: Session, at_us: int) -> int | None:
    """The instant of the first payout run made at or after `at_us`, if any."""
    return session.execute(select(func.min(payout_runs.c.at_us)).where(payout_runs.c.at_us >= at_us)).scalar()


def latest_run_before(session: Session, at_us: int) -> int | None:
    """The instant of the latest payout run made before `at_us`, if any."""
    return session.execute(select(func.max(payout_runs.c.at_us)).where(payout_runs.c.at_us < at_us)).scalar()


def run_id_for(at_us: int) -> str:
    return "run_" + hashlib.sha256(str(at_us).encode()).hexdigest()[:16]


def run_payouts(session: Session, at_us: int | None, *, own_instant: bool = False) -> PayoutRun:
    """The run at `at_us` (the first, replayed, if one was made then), or at None now, read under the
    journal lock: read before it, a run that waited for the lock was dated before a run another
    writer made meanwhile, and refused as out of time order (a 409 naming an `at` nobody sent),
    where the same requests one after the other both run. With `own_instant`, `at_us` was read from
    the service's clock, which may have stepped back since (`journal.Batch.ahead`)."""
    batch = journal.Batch(session)
    if at_us is None:
        at_us, own_instant = batch.recorded_at_us, True
    existing = session.execute(select(payout_runs.c.id).where(payout_runs.c.at_us == at_us)).scalar()
    if existing is not None:
        return PayoutRun(existing, at_us, tuple(list_payouts(session, run_id=existing)), True)
    _refuse_out_of_order(session, batch, at_us, own_instant)
    holds.release_matured(session, at_us, batch=batch, own_instant=own_instant)
    run_id = run_id_for(at_us)
    session.execute(insert(payout_runs).values(id=run_id, at_us=at_us, created_at_us=batch.recorded_at_us))
    rows = []
    for (partner_id, currency), amount in sorted(_payable(session, at_us).items()):
        posted = batch.add(journal.transfer(
            "payout", chart.available(partner_id), chart.PAYOUTS_IN_TRANSIT, currency, amount,
            effective_at_us=at_us, idempotency_key=f"payout:{run_id}:{partner_id}:{currency}", partner_id=partner_id,
            memo=f"payout run at {format_instant(at_us)}"))
        rows.append({"run_id": run_id, "partner_id": partner_id, "currency": currency, "amount_minor": amount,
                     "transaction_id": posted.id})
    batch.flush()
    if rows:
        session.execute(insert(payouts), rows)
    return PayoutRun(run_id, at_us, tuple(list_payouts(session, run_id=run_id)), False)


def _refuse_out_of_order(session: Session, batch: journal.Batch, at_us: int, own_instant: bool) -> None:
    """Refuse a new run at `at_us` in the future, before the latest run, or in a closed period."""
    if batch.ahead(at_us, own_instant=own_instant):
        # It would pay balances that later postings may still change, and, runs being made in time
        # order, block every run until then.
        raise invalid("at", f"{format_instant(at_us)} is in the future: a payout run pays balances as of an "
                            "instant that has passed")
    database_now = database_now_us(session)
    if at_us > database_now + journal.CLOCK_SKEW_US:
        # This server's clock is ahead of the database's by more than its rule allows (migration 0018).
        raise invalid("at", f"{format_instant(at_us)} is more than five minutes ahead of the database's clock, "
                            f"{format_instant(database_now)}: a payout run pays balances as of an instant that "
                            "has passed")
    latest_us = session.execute(select(func.max(payout_runs.c.at_us))).scalar()
    if latest_us is not None and at_us < latest_us:
        # As of t, a later run's payouts are not yet posted: the balances they paid would be paid again.
        raise Conflict(f"at: a payout run was made at {format_instant(latest_us)}; runs are made in time order",
                       {"at": ["before the latest payout run"]})
    if batch.boundary_us is not None and at_us < batch.boundary_us:
        # Its payouts would land at the first open period, where the balance as of t may no longer be.
        raise Conflict(f"at: {format_instant(at_us)} lies in a closed period; a payout run must be at or after "
                       f"{format_instant(batch.boundary_us)}", {"at": ["lies in a closed period"]})


def run_payouts_in_transactions(transaction: Callable[[], ContextManager[Session]], at_us: int | None, *,
                                own_instant: bool = False) -> tuple[PayoutRun, int]:
    """(the run, how many releases were posted first): `run_payouts` in a `transaction()` of its
    own, after the releases it posts first, made `holds.HOLDS_PER_TRANSACTION` to a transaction
    (`holds.release_in_transactions`), as the scheduler's jobs make them: in its one transaction, a
    run after months without one held the journal's lock through every release (`revshare
    payout-run` took 37 s over 73,000), and every posting waited, or failed past its lock wait. At
    None, the run is at now as read in its own transaction (see `run_payouts`)."""
    released = release_before_run(transaction, at_us, own_instant=own_instant)
    with transaction() as session:
        return run_payouts(session, at_us, own_instant=own_instant), released


def release_before_run(transaction: Callable[[], ContextManager[Session]], at_us: int | None, *,
                       own_instant: bool = False, deadline: float | None = None) -> int:
    """The releases `run_payouts` would post first, each `transaction()` of them committed on its own
    (`run_payouts_in_transactions`); returns how many were posted. The run is checked first, so a
    refused run posts no release either; a run made at `at_us` already posts none. At None, the
    check and the releases are made at now as read in their transactions. `deadline` as for
    `holds.release_in_transactions`."""
    with transaction() as session:
        batch = journal.Batch(session)
        checked_us = batch.recorded_at_us if at_us is None else at_us
        made = session.execute(select(payout_runs.c.id).where(payout_runs.c.at_us == checked_us)).scalar()
        if made is None:
            _refuse_out_of_order(session, batch, checked_us, own_instant or at_us is None)
    if made is not None:
        return 0
    return holds.release_in_transactions(transaction, checked_us, own_instant=own_instant or at_us is None,
                                         deadline=deadline)


def _payable(session: Session, at_us: int) -> dict[tuple[str, str], int]:
    """{(partner, currency): available} for active partners at or above the minimum of the plan in effect
    at `at_us`; a partner whose plan has not begun is not paid."""
    balances = {(partner_id, currency): credits - debits for (partner_id, account, currency), (debits, credits)
                in partner_account_sums(session, before_us=at_us + 1).items() if account == chart.available(partner_id)}
    program = program_for(session, {partner_id for partner_id, _ in balances})
    payable = {}
    for (partner_id, currency), available in balances.items():
        if available <= 0 or program.status_at(partner_id, at_us) != "active":
            continue
        version = program.version_at(partner_id, at_us)
        if version is None:  # enrolled on a plan that has not begun: no minimum is known yet
            continue
        if available >= version.terms.min_payout_minor.get(currency, 0):
            payable[(partner_id, currency)] = available
    return payable


def _resolve(session: Session, payout_id: int, outcome: str, reason: str | None, at_us: int | None) -> Payout:
    if reason is not None and (not isinstance(reason, str) or len(reason) > REASON_LENGTH_MAX):
        raise invalid("reason", f"at most {REASON_LENGTH_MAX} characters")
    batch = journal.Batch(session)
    payout = get_payout(session, payout_id)
    if payout.status != "pending":
        raise Conflict(f"payout {payout_id} is already {payout.status}")
    credit = chart.CASH if outcome == "settled" else chart.available(payout.partner_id)
    kind = "payout_settled" if outcome == "settled" else "payout_failed"
    if at_us is None:
        # Now; but not before the payout was made, which a server whose clock is behind the one that
        # made it (or one stepped back since) would date it (the database refuses that: a 500).
        resolved_at = max(batch.recorded_at_us, _made_at(session, payout))
    else:
        resolved_at = _resolved_at(session, payout, at_us, batch.recorded_at_us)
    draft = journal.transfer(
        kind, chart.PAYOUTS_IN_TRANSIT, credit, payout.currency, payout.amount_minor, effective_at_us=resolved_at,
        idempotency_key=f"{kind}:{payout_id}", partner_id=payout.partner_id, accrual_id=None, memo=reason)
    posted = batch.add(draft)  # DatedAhead if made by a server whose clock is over five minutes ahead of this one's
    batch.flush()
    session.execute(insert(payout_resolutions).values(payout_id=payout_id, outcome=outcome, transaction_id=posted.id,
                                                      reason=reason, resolved_at_us=batch.recorded_at_us))
    return get_payout(session, payout_id)


def _resolved_at(session: Session, payout: Payout, at_us: int, now_us: int) -> int:
    """A payout settles or fails after it was made, and not in the future: before it, the money
    would return to a balance that still holds it (paid twice, as of then); in the future, it would
    stay in transit in every report until then. The database holds the first (migration 0017)."""
    made_at_us = _made_at(session, payout)
    if at_us < made_at_us:
        raise invalid("at", f"{format_instant(at_us)} is before the payout was made, at {format_instant(made_at_us)}")
    if at_us > now_us:
        raise invalid("at", f"{format_instant(at_us)} is in the future")
    return at_us


def _made_at(session: Session, payout: Payout) -> int:
    """The instant the payout was made: its posting's."""
    return session.execute(select(journal_transactions.c.effective_at_us)
                           .where(journal_transactions.c.id == payout.transaction_id)).scalar_one()


def settle(session: Session, payout_id: int, *, reason: str | None = None, at_us: int | None = None) -> Payout:
    return _resolve(session, payout_id, "settled", reason, at_us)


def fail(session: Session, payout_id: int, *, reason: str | None = None, at_us: int | None = None) -> Payout:
    return _resolve(session, payout_id, "failed", reason, at_us)


def _select():
    p, r = payouts.c, payout_resolutions.c
    return (select(p.id, p.run_id, p.partner_id, p.currency, p.amount_minor, r.outcome, p.transaction_id,
                   r.transaction_id.label("resolution_transaction_id"), r.reason)
            .outerjoin(payout_resolutions, r.payout_id == p.id))


def _payout(row) -> Payout:
    return Payout(row.id, row.run_id, row.partner_id, row.currency, row.amount_minor, row.outcome or "pending",
                  row.transaction_id, row.resolution_transaction_id, row.reason)


def get_payout(session: Session, payout_id: int) -> Payout:
    row = session.execute(_select().where(payouts.c.id == payout_id)).first()
    if row is None:
        raise NotFound(f"payout {payout_id} does not exist")
    return _payout(row)


def list_payouts(session: Session, *, run_id: str | None = None, partner_id: str | None = None,
                 after_id: int = 0, limit: int = 1000, runs_seen_by_partner: bool = False) -> list[Payout]:
    """Payouts in id order, of one run and one partner if named. A run named that does not exist is
    NotFound, not an empty list that reads as "none" (a mistyped id). With `runs_seen_by_partner`
    (the partner is the one a partner's key reads as) so is a run that paid the partner nothing: the
    key lists only its own payouts, and to it such a run is not; to finance, filtering by a partner,
    the run is there and paid it nothing (an empty list). A page with payouts shows the run is there:
    only an empty one asks."""
    query = _select().where(payouts.c.id > after_id).order_by(payouts.c.id).limit(limit)
    if run_id is not None:
        query = query.where(payouts.c.run_id == run_id)
    if partner_id is not None:
        query = query.where(payouts.c.partner_id == partner_id)
    found = [_payout(row) for row in session.execute(query)]
    if run_id is not None and not found and not _run_exists(
            session, run_id, partner_id if runs_seen_by_partner else None):
        raise NotFound(f"payout run {run_id!r} not found")
    return found


def _run_exists(session: Session, run_id: str, partner_id: str | None) -> bool:
    query = (select(payout_runs.c.id).where(payout_runs.c.id == run_id) if partner_id is None else
             select(payouts.c.id).where(payouts.c.run_id == run_id, payouts.c.partner_id == partner_id).limit(1))
    return session.execute(query).first() is not None


def _adjustment_key(partner_id: str, account: str, currency: str, amount_minor: int, at: int, reason: str) -> str:
    """The key of an adjustment posted without one: its fields, the reason last; a key past the journal's 200
    characters holds the reason's SHA-256 instead (at most 200 with a 64-character partner id and 19-character
    amount and instant), so two reasons alike in their first characters stay two keys. Keys that fit are the ones
    books written before this rule hold."""
    fields = f"adjustment:{partner_id}:{account}:{currency}:{amount_minor}:{at}"
    if len(fields) + 1 + len(reason) <= 200:
        return f"{fields}:{reason}"
    return f"{fields}:sha256:{hashlib.sha256(reason.encode()).hexdigest()}"


def adjust(session: Session, partner_id: str, account: str, amount_minor: int, currency: str, reason: str,
           *, effective_at_us: int | None = None, idempotency_key: str | None = None) -> journal.Posted:
    """A manual adjustment by finance: a positive amount credits the partner's account (the vendor
    owes more), a negative one debits it; the other side is `expense:commission:adjustment`. It is
    effective now, or at `effective_at_us` if that is not after the instant it is recorded at."""
    if account not in ("pending", "available"):
        raise invalid("account", "must be pending or available")
    if amount_minor == 0:
        raise invalid("amount", "must not be zero")
    if not isinstance(reason, str) or not 1 <= len(reason) <= REASON_LENGTH_MAX:
        raise invalid("reason", f"1 to {REASON_LENGTH_MAX} characters")
    if not partner_exists(session, partner_id):
        raise invalid("partner_id", f"partner {partner_id!r} does not exist")
    batch = journal.Batch(session)
    if effective_at_us is not None and effective_at_us > batch.recorded_at_us:
        raise invalid("effective_at", f"{format_instant(effective_at_us)} is in the future")
    target = (chart.pending if account == "pending" else chart.available)(partner_id)
    debit, credit = (chart.EXPENSE_ADJUSTMENT, target) if amount_minor > 0 else (target, chart.EXPENSE_ADJUSTMENT)
    at = batch.recorded_at_us if effective_at_us is None else effective_at_us
    key = idempotency_key or _adjustment_key(partner_id, account, currency, amount_minor, at, reason)
    batch.preload([key])
    posted = batch.add(journal.transfer("adjustment", debit, credit, currency, abs(amount_minor), effective_at_us=at,
                                        idempotency_key=key, partner_id=partner_id, memo=reason))
    batch.flush()
    return posted
