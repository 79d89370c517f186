"""Program facts withdrawn before they start: a partner's status or plan change, a plan's version or
a customer's attribution, dated ahead.

A fact withdrawn must have decided nothing yet. Revenue events and postings are dated at most
`CLOCK_SKEW_US` after they are recorded, by their server's clock, which is within `CLOCK_SKEW_US` of
the database's: the database takes a withdrawal of a fact that starts more than twice the skew after
its own clock, while no journal transaction is dated at or after that start (nor pins it, for a
version). The service asks for three times the skew after its own clock, so that a server whose
clock is behind the database's by up to the skew is refused here, with a message, and not by the
database, and looks for a posting dated at or after the start too: a server whose clock is further
ahead than the skew allows may have made one. A revenue event such a server stored without a posting
(a payment after a termination, `no_commission`) is not looked for: no index serves the events by
instant, and one would cost every event on the bulk path. Withdrawing writes a row of
`program_withdrawals` with the fact as it stood, and the database removes the fact from its table in
the same statement (migration 0040): the program's tables keep the facts in force, read as before,
and the withdrawals keep the rest for the audit, and for `verify`, which judges whether a payment
found its customer attributed by the attributions as they stood when it was recorded, withdrawn
ones included (`verify.verify_event_statuses`).
"""

from __future__ import annotations

from sqlalchemy import func, select, union_all
from sqlalchemy.orm import Session

from ledger import program_chain
from ledger.db import database_now_us, table_exists
from ledger.errors import Conflict
from ledger.instants import format_instant
from ledger.journal import CLOCK_SKEW_US, now_us
from ledger.schema import WITHDRAWN_FACT_TABLES, journal_transactions, metadata, program_withdrawals

_TABLES = {name: metadata.tables[name] for name in WITHDRAWN_FACT_TABLES}

MARGIN_US = 3 * CLOCK_SKEW_US
MARGIN_TEXT = "fifteen minutes"
assert MARGIN_US == 15 * 60 * 1_000_000


def new_id(session: Session, table: str) -> dict[str, int]:
    """The id to give a new fact of `table` (as `insert(...).values(**new_id(...))`): on SQLite one
    above every id the table holds or had withdrawn, which SQLite would otherwise give again once
    the row of its largest id is withdrawn; on PostgreSQL none (its sequence never gives one twice).
    The database refuses a fact whose id was withdrawn (migration 0040). The caller holds the
    program's lock."""
    if session.get_bind().dialect.name != "sqlite" or not recorded(session):
        return {}
    ids = union_all(select(func.max(_TABLES[table].c.id).label("id")),
                    select(func.max(program_withdrawals.c.fact_id)).where(program_withdrawals.c.fact_table == table))
    return {"id": (session.execute(select(func.max(ids.subquery().c.id))).scalar() or 0) + 1}


def recorded(session: Session) -> bool:
    """Whether the books record withdrawals: those below revision 0040, as the tests of earlier
    migrations write them with today's code, have no table for them (and no withdrawals)."""
    return table_exists(session, "program_withdrawals")


def withdraw(session: Session, table: str, fact_id: int, subject_id: str, starts_us: int, value: str,
             fact_recorded_at_us: int, *, detail: str | None = None, what: str) -> None:
    """Withdraw the fact, as it stands in `table`; `what` names it in a refusal. The caller holds
    the program's and the journal's locks, as a fact's writer does."""
    now, database_now = now_us(), database_now_us(session)
    if abs(now - database_now) > CLOCK_SKEW_US:
        # The database's rule on when a withdrawal is recorded (migration 0040): a 409, not its refusal as a 500.
        raise Conflict(f"this server's clock, {format_instant(now)}, is more than five minutes off the database's, "
                       f"{format_instant(database_now)}: a withdrawal is recorded by it")
    if starts_us <= now + MARGIN_US:
        started = "started" if starts_us <= now else "starts"
        raise Conflict(f"{what} {started} at {format_instant(starts_us)}: a change is withdrawn only while it starts "
                       f"more than {MARGIN_TEXT} ahead; record a new one instead")
    headers = journal_transactions.c
    latest_us = session.execute(select(func.max(headers.effective_at_us))).scalar()
    # A version is pinned only by postings dated from its start, which the first read finds, but for
    # rows written around the service: the database looks for those too (a scan of the headers).
    pinned = table == "plan_versions" and session.execute(
        select(headers.id).where(headers.plan_version_id == fact_id).limit(1)).first() is not None
    if pinned or (latest_us is not None and latest_us >= starts_us):
        # A server whose clock is ahead of the others' by more than the skew allowed posted after it.
        raise Conflict(f"{what} starts at {format_instant(starts_us)}, and a posting is dated at or after it (or pins "
                       "it): it may have decided the posting, and stays")
    program_chain.record(session, ("program_withdrawals", dict(
        fact_table=table, fact_id=fact_id, subject_id=subject_id, starts_us=starts_us, value=value, detail=detail,
        fact_recorded_at_us=fact_recorded_at_us, recorded_at_us=now)))


def verify_withdrawals(session: Session) -> list[tuple[None, str, str]]:
    """What `verify` names of the withdrawals, as (None, code, message) (as `verify.Problem` takes
    them): a fact a withdrawal names that is still in its table (`withdrawal_not_applied`); one
    withdrawn less than `CLOCK_SKEW_US` before it started by the withdrawal's own clock
    (`withdrawn_too_late`: the database asks for twice that by its clock, which is within the skew of
    the writer's); a plan's first version withdrawn (`withdrawal_of_a_first`). The database holds
    each for every row (migrations 0040 and 0041); rows written around its triggers are found here,
    in the order written."""
    if not recorded(session):
        return []
    w = program_withdrawals.c
    problems = []
    for name, table in _TABLES.items():
        for withdrawal_id, fact_id in session.execute(
                select(w.id, w.fact_id).join(table, table.c.id == w.fact_id).where(w.fact_table == name)
                .order_by(w.id)):
            problems.append((None, "withdrawal_not_applied",
                             f"withdrawal {withdrawal_id} names {name} row {fact_id}, which is still there"))
    for withdrawal_id, name, fact_id in session.execute(
            select(w.id, w.fact_table, w.fact_id).where(w.starts_us <= w.recorded_at_us + CLOCK_SKEW_US)
            .order_by(w.id)):
        problems.append((None, "withdrawn_too_late", f"withdrawal {withdrawal_id} of {name} row {fact_id} was "
                                                     "recorded less than five minutes before the fact started"))
    for withdrawal_id, fact_id in session.execute(
            select(w.id, w.fact_id).where(w.fact_table == "plan_versions", w.value == "1").order_by(w.id)):
        problems.append((None, "withdrawal_of_a_first",
                         f"withdrawal {withdrawal_id} of plan_versions row {fact_id}: a plan's first version"))
    return problems


def withdrawn_facts(session: Session, tables: tuple[str, ...], subject_ids: list[str]) -> list:
    """The subjects' withdrawn facts of `tables`, as their rows of `program_withdrawals`
    (`fact_table`, `fact_id`, `subject_id`, `value`, `detail`, `starts_us`, `fact_recorded_at_us`,
    `recorded_at_us`: when withdrawn), in the order withdrawn: one query for any number."""
    if not subject_ids or not recorded(session):
        return []
    w = program_withdrawals.c
    return session.execute(select(w.fact_table, w.fact_id, w.subject_id, w.value, w.detail, w.starts_us,
                                  w.fact_recorded_at_us, w.recorded_at_us)
                           .where(w.fact_table.in_(tables), w.subject_id.in_(subject_ids)).order_by(w.id)).all()
