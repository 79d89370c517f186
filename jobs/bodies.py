"""Job bodies: each is a function of a session and an instant, idempotent, and returns figures.

Each runs inside one writer transaction opened by `run_job`, after the releases of the holds matured
by its instant, which take transactions of their own (see `run_job`): on SQLite `BEGIN IMMEDIATE`
takes the database's write lock up front; on PostgreSQL the job takes its own transaction-scoped
advisory lock, then the journal lock, before its body reads. A second scheduler, or a rerun, therefore
waits and then finds the work done: releases are keyed by accrual, closes by period, payout runs
by instant. (Two schedulers share a catch-up of releases between them, a transaction at a time.)

A job's instant is the service's own, never asked for by a user: `run_job` reads it from the clock
once it holds its locks (the releases' in their first transaction, the body's in its own), and the
releases and the body then read the clock again as they record. A clock stepped back in between (an
NTP step) puts the job's instant ahead of those reads: it is allowed up to
`journal.CLOCK_SKEW_US`, the database's bound, where an instant asked for is refused
(`journal.Batch.ahead`). Refused, the job failed until its next run (the next hour, or day).
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from typing import Callable, Iterator, NamedTuple

from sqlalchemy import text
from sqlalchemy.orm import Session

from ledger import holds, payouts, periods, verify
from ledger.db import Database, is_postgres, lock_journal
from ledger.errors import totals_not_asked
from ledger.instants import add_months, format_instant, from_us, next_period, period_bounds_us, period_of, to_us
from ledger.journal import chain_head
from ledger.journal import now_us as clock_now_us
from ledger.settings import Settings

log = logging.getLogger("revshare.jobs")

JOB_LOCK_BASE = 0x6A6F_6273_0000_0000  # "jobs", plus the CRC-32 of the job id


class JobResult(NamedTuple):
    job: str
    figures: dict


def release_holds(session: Session, at_us: int) -> dict:
    return {"released": holds.release_matured(session, at_us, own_instant=True)}


def close_due_periods(session: Session, at_us: int, *, grace_days: int) -> dict:
    """Close, oldest first, every period that ended `grace_days` or more before `at_us` (the job runs
    at 01:00, so a period is closed an hour past its grace: "more than the grace days ago"; and as
    the scheduler starts, when a period may be closed as soon as its grace has passed)."""
    cutoff_us = at_us - grace_days * 86_400_000_000
    last = periods.latest_close(session)
    if last is not None:
        candidate = next_period(last.period)
    else:
        first = periods.first_posting_us(session)
        if first is None:
            return {"closed": []}
        candidate = period_of(first)
    closed = []
    while period_bounds_us(candidate)[1] <= cutoff_us:
        closed.append(periods.close_period(session, candidate, now_us=at_us).period)
        candidate = next_period(candidate)
    return {"closed": closed}


def payout_run(session: Session, at_us: int, *, day_of_month: int = 1) -> dict:
    """The payout run due last: at 00:00 UTC of `day_of_month`, this month's once that instant has
    come, else last month's. The job runs daily, so a scheduler that was down on the day makes the
    run when it is back, as the close job catches up. A run already made at or after that instant
    (a rerun of the job, or a run made by hand that morning) is the one due: it is answered as a
    replay, neither made twice nor refused as out of time order. A run due inside a period closed
    since cannot be made (its payouts would not be effective then): it is reported missed, with a
    warning, for finance to make at a later instant. On books with no posting yet it makes none."""
    month = from_us(at_us).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    due_us = to_us(month.replace(day=day_of_month))
    if at_us < due_us:
        due_us = to_us(add_months(month, -1).replace(day=day_of_month))
    made_us = payouts.first_run_from(session, due_us)
    if made_us is None and chain_head(session)[0] == 0:
        # Nothing posted, nothing to pay. A run recorded now would refuse every run before it (runs
        # are made in time order), which a history loaded later needs: the job runs as the
        # scheduler starts, often before anything is loaded (an import, `revshare demo`).
        return {"run_id": None, "payouts": 0, "replayed": False}
    if made_us is None:
        latest = periods.latest_close(session)
        if latest is not None and due_us < latest.ends_at_us:
            # Made at its own instant it is refused (a closed period): say from when it can be made.
            next_due_us = to_us(add_months(from_us(due_us), 1))
            log.warning("payout run due at %s was missed, and lies in a closed period: make it by hand at or after "
                        "%s, the start of the first open period (revshare payout-run, or POST /v1/payout-runs), "
                        "or the run due at %s pays these balances", format_instant(due_us),
                        format_instant(latest.ends_at_us), format_instant(next_due_us))
            return {"run_id": None, "missed": format_instant(due_us)}
    if made_us is None:
        _say_which_runs_were_not_made(session, due_us)
    run = payouts.run_payouts(session, due_us if made_us is None else made_us, own_instant=True)
    return {"run_id": run.id, "payouts": len(run.payouts), "replayed": run.replayed}


SKIPPED_NAMED_MAX = 12


def _say_which_runs_were_not_made(session: Session, due_us: int) -> None:
    """A warning naming the runs due since the latest run made, before the one due now (the scheduler
    was not running on their days): the job makes the run due last alone, which pays every balance
    they would have paid, and a run made at their instants now would come after this one."""
    latest_us = payouts.latest_run_before(session, due_us)
    if latest_us is None:
        return
    skipped, month = [], from_us(due_us)
    while len(skipped) <= SKIPPED_NAMED_MAX:
        month = add_months(month, -1)
        if to_us(month) <= latest_us:
            break
        skipped.append(format_instant(to_us(month)))
    if skipped:
        named = ", ".join(reversed(skipped[:SKIPPED_NAMED_MAX])) + (" and earlier" if len(skipped) > SKIPPED_NAMED_MAX
                                                                     else "")
        log.warning("payout runs due at %s were not made (the scheduler was not running then): the run due at %s "
                    "pays every balance they would have paid", named, format_instant(due_us))


def verify_books(session: Session, at_us: int) -> dict:
    """Verify the books; the figures (logged at INFO, so kept outside the database) carry the head to
    record when the books are whole, which `revshare verify --head` proves later: that nothing up to
    it was removed; and the program's head, which `--program-head` proves later (`ledger.program_chain`)."""
    report = verify.verify(session)
    for problem in report.problems:  # as `revshare verify` prints them: a transaction's named, if any
        where = "" if problem.transaction_id is None else f"transaction {problem.transaction_id}: "
        log.error("verify: %s%s: %s", where, problem.code, problem.message)
    head = f"{report.head_id}:{report.chain_head}" if report.ok and report.head_id else None
    program_head = ":".join(map(str, report.program_head)) if report.ok and report.program_head[0] else None
    return {"ok": report.ok, "transactions_checked": report.transactions_checked, "problems": len(report.problems),
            "head": head, "program_head": program_head}


def job_table(settings: Settings) -> dict[str, Callable[[Session, int], dict]]:
    """The jobs by id; the scheduler and `run_job` look them up here."""
    return {
        "release_holds": release_holds,
        "close_periods": lambda session, at_us: close_due_periods(session, at_us, grace_days=settings.close_grace_days),
        "payout_run": lambda session, at_us: payout_run(session, at_us, day_of_month=settings.payout_day_of_month),
        "verify": verify_books,
    }


# Jobs that only read run in a reader transaction, so that a long verify never blocks posting.
READ_ONLY_JOBS = frozenset({"verify"})


def run_job(database: Database, name: str, body: Callable[[Session, int], dict], at_us: int | None = None) -> JobResult:
    """Run one job body in one transaction under the job's lock; log what it did in figures.

    A job that writes first releases the holds matured by its instant, `holds.HOLDS_PER_TRANSACTION`
    to a transaction (`holds.release_in_transactions`), and reports them as `released`: its own
    transaction then finds none left to release, and so holds the journal lock for its own work
    only. A close or payout run after a scheduler was down for days would otherwise catch up on
    every release in the one transaction, and every posting would wait for it.

    Without `at_us`, a writer job's instant is read once it holds its locks: the releases' in their
    first transaction, the body's in its own. Read before, a job that waited behind another writer
    was dated before that writer's postings: a close's `closed_at` came before postings it had
    waited for, and a release left held what matured while it waited."""
    if name in READ_ONLY_JOBS:
        at = clock_now_us() if at_us is None else at_us
        with database.reader() as session:
            figures = body(session, at)
    else:
        with totals_not_asked():  # the books, not an amount the job was given, refuse: as the commands say it
            released = holds.release_in_transactions(lambda: _job_transaction(database, name), at_us,
                                                     own_instant=True)
            with _job_transaction(database, name) as session:
                at = clock_now_us() if at_us is None else at_us
                figures = body(session, at)
        figures = {**figures, "released": released + figures.get("released", 0)}
    log.info("job %s at %s: %s", name, from_us(at).isoformat(), figures)
    return JobResult(name, figures)


@contextlib.contextmanager
def _job_transaction(database: Database, name: str) -> Iterator[Session]:
    """A writer transaction under the job's lock: on SQLite the write lock (`BEGIN IMMEDIATE`), on
    PostgreSQL a transaction-scoped advisory lock of the job's own, then the journal lock, before the
    body reads anything: a close or payout run made by hand meanwhile is then seen by the body (which
    reads the latest close and run to choose its work) instead of refusing the job's own as a conflict."""
    with database.transaction() as session:
        if is_postgres(session):
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                            {"key": JOB_LOCK_BASE + zlib.crc32(name.encode())})
            lock_journal(session)
        else:
            session.connection()  # the write lock now, so that the job's instant is read under it
        yield session
