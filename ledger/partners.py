"""Partners: enrolment in a hierarchy, dated status and plan facts, and the batch loader that the
revenue path uses to decide who earns what at an instant.

A partner's parent is fixed at enrolment and must already exist, so the hierarchy has no cycles;
depth is at most 5 (the database holds this with a composite foreign key). Status and plan are
dated facts: the status or plan in effect at an instant is the latest fact that started at or
before it. A change that has not started can be withdrawn (`withdraw_change`), by finance, until
fifteen minutes before it starts. A terminated partner earns nothing on revenue after its
termination; a suspended partner accrues but is not paid. The latest status or plan change sent
again, unchanged, changes nothing (a PATCH takes no Idempotency-Key: its retry must not be a 409
saying the change is refused).
"""

from __future__ import annotations

import bisect
import re
import threading
from typing import Any, Iterable, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ledger import program_chain, withdrawals
from ledger.accounts import validate_partner_id
from ledger.commission import Earner
from ledger.db import after_commit, driver_results, driver_rows, in_lists, lock_journal, lock_program, shared_cache
from ledger.errors import Conflict, NotFound, invalid
from ledger.instants import format_instant, within_horizon
from ledger.journal import now_us
from ledger.plans import PlanVersion, load_versions, plan_exists
from ledger.schema import (PARTNER_DEPTH_MAX, PARTNER_STATUSES, PARTNER_TYPES, partner_plans, partner_statuses,
                           partners, plan_versions)

# Facts recorded at enrolment apply from the beginning of time: a partner enrolled today still
# earns on an attribution that started last month.
BEGINNING_US = 0


class Scheduled(NamedTuple):
    """A status or plan change that has not started yet; `id` (`status-12`, `plan-7`) names it for
    `withdraw_change`."""
    id: str
    starts_us: int
    status: str | None
    plan_id: str | None


class Withdrawn(NamedTuple):
    """A status or plan change withdrawn before it started, by its id (`status-12`, `plan-7`)."""
    id: str
    starts_us: int
    status: str | None
    plan_id: str | None
    withdrawn_at_us: int


class Partner(NamedTuple):
    id: str
    name: str
    type: str
    parent_id: str | None
    depth: int
    status: str
    plan_id: str
    created_at_us: int
    scheduled: tuple[Scheduled, ...] = ()
    withdrawn: tuple[Withdrawn, ...] = ()


# A scheduled change's id: its kind and its row's id.
CHANGE_ID = re.compile(r"(status|plan)-([1-9][0-9]{0,17})")
CHANGES = {"status": partner_statuses, "plan": partner_plans}


def create_partner(session: Session, partner_id: str, name: str, partner_type: str, plan_id: str,
                   parent_id: str | None = None) -> Partner:
    validate_partner_id(partner_id, field="id")
    if not isinstance(name, str) or not 1 <= len(name) <= 200 or not name.strip():
        raise invalid("name", "1 to 200 characters, not all blank")
    if partner_type not in PARTNER_TYPES:
        raise invalid("type", f"must be one of {', '.join(PARTNER_TYPES)}")
    lock_program(session)
    if not isinstance(plan_id, str) or not plan_exists(session, plan_id):
        raise invalid("plan_id", f"plan {plan_id!r} does not exist")
    depth, parent_depth = 1, None
    if parent_id is not None:
        parent = session.execute(select(partners.c.depth).where(partners.c.id == parent_id)).first()
        if parent is None:
            raise invalid("parent_id", f"partner {parent_id!r} does not exist")
        if parent.depth >= PARTNER_DEPTH_MAX:
            raise invalid("parent_id", f"the hierarchy is at most {PARTNER_DEPTH_MAX} levels deep")
        depth, parent_depth = parent.depth + 1, parent.depth
    if partner_exists(session, partner_id):
        raise Conflict(f"partner {partner_id!r} already exists")
    created = now_us()
    program_chain.record(
        session,
        ("partners", dict(id=partner_id, name=name, type=partner_type, parent_id=parent_id, parent_depth=parent_depth,
                          depth=depth, created_at_us=created)),
        ("partner_statuses", dict(partner_id=partner_id, status="active", effective_at_us=BEGINNING_US,
                                  recorded_at_us=created, **withdrawals.new_id(session, "partner_statuses"))),
        ("partner_plans", dict(partner_id=partner_id, plan_id=plan_id, effective_from_us=BEGINNING_US,
                               recorded_at_us=created, **withdrawals.new_id(session, "partner_plans"))))
    return get_partner(session, partner_id)


def set_status(session: Session, partner_id: str, status: str, effective_at_us: int | None = None) -> Partner:
    if status not in PARTNER_STATUSES:
        raise invalid("status", f"must be one of {', '.join(PARTNER_STATUSES)}")
    lock_program(session)
    # A status dated now is read under the journal lock too, so that every posting is either before
    # it (decided with the partner's earlier status) or after it: read outside, a posting made while
    # the status was being recorded could earn on revenue dated after the termination it records.
    lock_journal(session)
    get_partner(session, partner_id)
    at = now_us() if effective_at_us is None else within_horizon(effective_at_us, field="effective_at")
    latest, latest_status = session.execute(
        select(partner_statuses.c.effective_at_us, partner_statuses.c.status)
        .where(partner_statuses.c.partner_id == partner_id)
        .order_by(partner_statuses.c.effective_at_us.desc(), partner_statuses.c.id.desc()).limit(1)).one()
    if latest_status == status and (latest == at or effective_at_us is None and latest <= at):
        # The latest fact sent again, or a status asked for now that the partner has already (a
        # retry of a request that committed, whose "now" has moved on): nothing changes.
        return get_partner(session, partner_id)
    if latest_status == "terminated":  # also one dated ahead: nothing follows a termination
        raise Conflict(f"partner {partner_id!r} is terminated from {format_instant(latest)}; termination is final"
                       + _withdrawable(latest))
    if at < latest:
        # The latest status may be dated ahead: name it, not "the current".
        raise Conflict(f"effective_at: partner {partner_id!r} is {latest_status} from {format_instant(latest)}; "
                       "a status change cannot start before the latest one" + _withdrawable(latest),
                       {"effective_at": [f"must not be earlier than {format_instant(latest)}"]})
    program_chain.record(session, ("partner_statuses", dict(partner_id=partner_id, status=status, effective_at_us=at,
                                                            recorded_at_us=now_us(),
                                                            **withdrawals.new_id(session, "partner_statuses"))))
    return get_partner(session, partner_id)


def change_plan(session: Session, partner_id: str, plan_id: str, effective_from_us: int) -> Partner:
    lock_program(session)
    lock_journal(session)  # recorded among postings and payout runs, as a plan version (`plans.add_version`)
    get_partner(session, partner_id)
    if not isinstance(plan_id, str) or not plan_exists(session, plan_id):
        raise invalid("plan_id", f"plan {plan_id!r} does not exist")
    within_horizon(effective_from_us, field="effective_from")
    first_us = session.execute(select(func.min(plan_versions.c.effective_from_us))
                               .where(plan_versions.c.plan_id == plan_id)).scalar_one()
    if effective_from_us < first_us:
        # Until then the partner would have no plan: it would earn nothing, and be paid any balance
        # whatever the minimum of either plan.
        raise invalid("effective_from", f"plan {plan_id!r} starts at {format_instant(first_us)}: a partner "
                                        "cannot change to it before its first version")
    latest, latest_plan_id = session.execute(select(partner_plans.c.effective_from_us, partner_plans.c.plan_id)
                                             .where(partner_plans.c.partner_id == partner_id)
                                             .order_by(partner_plans.c.effective_from_us.desc()).limit(1)).one()
    if (latest_plan_id, latest) == (plan_id, effective_from_us):
        # The latest plan change sent again (a retry of a request that committed): nothing changes.
        return get_partner(session, partner_id)
    if effective_from_us <= latest:
        # The latest plan may start ahead: name it, not "the current".
        raise Conflict(f"effective_from: partner {partner_id!r} is on plan {latest_plan_id!r} from "
                       f"{format_instant(latest)}; a plan change must start after the latest one"
                       + _withdrawable(latest),
                       {"effective_from": [f"must be later than {format_instant(latest)}"]})
    program_chain.record(session, ("partner_plans", dict(partner_id=partner_id, plan_id=plan_id,
                                                         effective_from_us=effective_from_us, recorded_at_us=now_us(),
                                                         **withdrawals.new_id(session, "partner_plans"))))
    return get_partner(session, partner_id)


def _withdrawable(starts_us: int) -> str:
    """What a refusal by a change that has not started adds: how to take it back."""
    if starts_us <= now_us() + withdrawals.MARGIN_US:
        return ""
    return " (a change that has not started can be withdrawn: see the partner's `scheduled`)"


def _facts_by_partner(session: Session, kind: str, partner_ids: list[str]) -> dict[str, list[tuple[int, int, str]]]:
    """Each partner's status or plan facts, (start, id, value) in the order they take effect (at one
    start, the later recorded last), in one query for the whole list."""
    table = CHANGES[kind]
    start = table.c.effective_at_us if kind == "status" else table.c.effective_from_us
    value = table.c.status if kind == "status" else table.c.plan_id
    found: dict[str, list[tuple[int, int, str]]] = {}
    for partner_id, starts_us, fact_id, fact_value in session.execute(
            select(table.c.partner_id, start, table.c.id, value).where(table.c.partner_id.in_(partner_ids))
            .order_by(table.c.partner_id, start, table.c.id)):
        found.setdefault(partner_id, []).append((starts_us, fact_id, fact_value))
    return found


def _latest(facts: list[tuple[int, int, str]], at_us: int) -> str | None:
    """The value of the latest fact that started at or before `at_us`."""
    started = [value for starts_us, _, value in facts if starts_us <= at_us]
    return started[-1] if started else None


def _partners_now(session: Session, rows) -> list[Partner]:
    """Partners from their rows, each with its status and plan now, the changes that have not
    started and those withdrawn: five queries for any number."""
    ids = [row.id for row in rows]
    now = now_us()
    statuses = _facts_by_partner(session, "status", ids)
    plans = _facts_by_partner(session, "plan", ids)
    withdrawn: dict[str, list[Withdrawn]] = {}
    for w in withdrawals.withdrawn_facts(session, tuple(table.name for table in CHANGES.values()), ids):
        status = w.fact_table == partner_statuses.name
        withdrawn.setdefault(w.subject_id, []).append(Withdrawn(
            f"{'status' if status else 'plan'}-{w.fact_id}", w.starts_us, w.value if status else None,
            None if status else w.value, w.recorded_at_us))
    found = []
    for row in rows:
        status_facts, plan_facts = statuses.get(row.id, []), plans.get(row.id, [])
        # Every partner's first status and plan start at its enrolment's BEGINNING_US: both are found.
        scheduled = sorted([Scheduled(f"status-{fact_id}", starts_us, value, None)
                            for starts_us, fact_id, value in status_facts if starts_us > now]
                           + [Scheduled(f"plan-{fact_id}", starts_us, None, value)
                              for starts_us, fact_id, value in plan_facts if starts_us > now],
                           key=lambda change: change.starts_us)  # stable: a status first at one instant
        found.append(Partner(row.id, row.name, row.type, row.parent_id, row.depth, _latest(status_facts, now),
                             _latest(plan_facts, now), row.created_at_us, tuple(scheduled),
                             tuple(withdrawn.get(row.id, ()))))
    return found


def withdraw_change(session: Session, partner_id: str, change_id: str) -> Partner:
    """Withdraw a status or plan change that has not started (a termination scheduled for the end of
    a contract that was renewed, a plan change typed a year wrong). The same withdrawal asked again
    changes nothing; a change that starts within `withdrawals.MARGIN_US`, or has started, is a 409.
    Recorded under the journal lock, as the change was (`set_status`, `change_plan`)."""
    lock_program(session)
    lock_journal(session)
    partner = get_partner(session, partner_id)
    match = CHANGE_ID.fullmatch(change_id)
    table = CHANGES[match.group(1)] if match else None
    fact_id = int(match.group(2)) if match else 0
    row = None if table is None else session.execute(
        select(table).where(table.c.id == fact_id, table.c.partner_id == partner_id)).first()
    if row is None:
        if any(withdrawn.id == change_id for withdrawn in partner.withdrawn):  # ids as CHANGE_ID spells them
            return partner
        raise NotFound(f"partner {partner_id!r} has no change {change_id!r} (a scheduled change's id is in the "
                       "partner's `scheduled`)")
    if table is partner_statuses:
        starts_us, value = row.effective_at_us, row.status
    else:
        starts_us, value = row.effective_from_us, row.plan_id
    withdrawals.withdraw(session, table.name, row.id, partner_id, starts_us, value, row.recorded_at_us,
                         what=f"partner {partner_id!r}'s change {change_id!r}")
    return get_partner(session, partner_id)


def partner_exists(session: Session, partner_id: str) -> bool:
    return session.execute(select(partners.c.id).where(partners.c.id == partner_id)).first() is not None


def get_partner(session: Session, partner_id: str) -> Partner:
    row = session.execute(select(partners).where(partners.c.id == partner_id)).first()
    if row is None:
        raise NotFound(f"partner {partner_id!r} does not exist")
    return _partners_now(session, [row])[0]


def list_partners(session: Session, *, after_id: str | None = None, limit: int = 100,
                  partner_id: str | None = None) -> list[Partner]:
    query = select(partners).order_by(partners.c.id).limit(limit)
    if after_id is not None:
        query = query.where(partners.c.id > after_id)
    if partner_id is not None:
        query = query.where(partners.c.id == partner_id)
    rows = session.execute(query).all()
    return _partners_now(session, rows) if rows else []


class _Timeline:
    """Dated values of one partner: `at(t)` is the value of the latest fact starting at or before t."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.values: list[Any] = []

    def add(self, start_us: int, value: Any) -> None:
        index = bisect.bisect_right(self.starts, start_us)
        self.starts.insert(index, start_us)
        self.values.insert(index, value)

    def at(self, instant_us: int) -> Any:
        index = bisect.bisect_right(self.starts, instant_us)
        return self.values[index - 1] if index else None


class Program:
    """Partners with their ancestors, statuses, plans and plan versions, loaded in a few queries,
    answering "who can earn at instant t, and on which plan version?" without further queries.

    `program_for` keeps one per process and Database: every table it reads is append-only but for
    the withdrawal of a fact that has not started (migration 0040), so a Program stays exact until
    one of them gains or loses a row, and the program's revision tells when that happened.
    """

    def __init__(self) -> None:
        self.parents: dict[str, str | None] = {}
        self.statuses: dict[str, _Timeline] = {}
        self.plans: dict[str, _Timeline] = {}
        self.versions: dict[str, list[PlanVersion]] = {}
        self.versions_by_id: dict[int, PlanVersion] = {}
        self._version_starts: dict[str, list[int]] = {}  # plan -> its versions' starts, for bisect

    @classmethod
    def load(cls, session: Session, partner_ids: Iterable[str]) -> "Program":
        program = cls()
        program.extend(session, partner_ids)
        return program

    def extend(self, session: Session, partner_ids: Iterable[str]) -> None:
        """Load the partners not loaded yet, with their ancestors and their plans' versions."""
        wanted = {pid for pid in partner_ids if pid not in self.parents}
        if not wanted:
            return
        found: dict[str, str | None] = {}
        while wanted:  # one round per hierarchy level: at most PARTNER_DEPTH_MAX queries
            rows = [row for condition, params in in_lists(session, "id", sorted(wanted))
                    for row in driver_rows(session, f"SELECT id, parent_id FROM partners WHERE {condition}", params)]
            found.update(rows)
            wanted = {parent for _, parent in rows if parent and parent not in found and parent not in self.parents}
        statuses = {pid: _Timeline() for pid in found}
        plans = {pid: _Timeline() for pid in found}
        for condition, params in in_lists(session, "partner_id", sorted(found)):
            status_rows, plan_rows = driver_results(session, [  # one round trip for both
                (f"SELECT partner_id, effective_at_us, status FROM partner_statuses WHERE {condition} ORDER BY id",
                 params),
                (f"SELECT partner_id, effective_from_us, plan_id FROM partner_plans WHERE {condition} ORDER BY id",
                 params)])
            for partner_id, effective_at_us, status in status_rows:
                statuses[partner_id].add(effective_at_us, status)
            for partner_id, effective_from_us, plan_id in plan_rows:
                plans[partner_id].add(effective_from_us, plan_id)
        plan_ids = {plan for timeline in plans.values() for plan in timeline.values} - self.versions.keys()
        versions = load_versions(session, plan_ids)
        # Fill the lookups before the parents: `parents` is what says a partner is loaded.
        self.versions.update(versions)
        self._version_starts.update((plan, [v.effective_from_us for v in found_versions])
                                    for plan, found_versions in versions.items())
        self.versions_by_id.update((v.id, v) for found_versions in versions.values() for v in found_versions)
        self.statuses.update(statuses)
        self.plans.update(plans)
        self.parents.update(found)

    def knows(self, partner_id: str) -> bool:
        return partner_id in self.parents

    def status_at(self, partner_id: str, instant_us: int) -> str | None:
        return self.statuses[partner_id].at(instant_us)

    def version_at(self, partner_id: str, instant_us: int) -> PlanVersion | None:
        """The plan version of the partner's plan in effect at the instant, whatever its status."""
        plan_id = self.plans[partner_id].at(instant_us)
        index = bisect.bisect_right(self._version_starts.get(plan_id, ()), instant_us)
        return self.versions[plan_id][index - 1] if index else None

    def earner_at(self, partner_id: str, instant_us: int) -> Earner | None:
        """The partner as an earner at the instant, or None if terminated or without a plan then."""
        if self.status_at(partner_id, instant_us) in (None, "terminated"):
            return None
        version = self.version_at(partner_id, instant_us)
        return None if version is None else Earner(partner_id, version.id, version.terms)

    def ancestors(self, partner_id: str) -> list[str]:
        chain, parent = [], self.parents.get(partner_id)
        while parent is not None:
            chain.append(parent)
            parent = self.parents.get(parent)
        return chain

    def hold_days(self, plan_version_id: int | None) -> int:
        version = self.versions_by_id.get(plan_version_id) if plan_version_id is not None else None
        return version.terms.hold_days if version is not None else 0



PROGRAM_REVISION = "SELECT revision FROM program_revision WHERE id = 1"
_program_lock = threading.Lock()


def program_for(session: Session, partner_ids: Iterable[str], *, revision: int | None = None) -> Program:
    """A Program that knows these partners: this process's shared one while the program's revision
    is the one it was built at, else a new one, shared from this transaction's commit.

    The database moves the revision up with every insert into the program tables and every fact
    withdrawn from them (per row on SQLite, per statement on PostgreSQL), which refuse UPDATE and any
    other DELETE: an equal revision means equal rows (migrations 0010 and 0040). A shared Program is
    only ever built from, or extended with, committed rows: one this transaction built is shared
    once it commits, and a transaction that sees the shared revision has written no program rows of
    its own. `revision` is what
    `PROGRAM_REVISION` gave when the caller read it already, in this transaction.
    """
    cache = shared_cache(session, "program")
    if cache is None:
        return Program.load(session, partner_ids)
    if revision is None:
        [(revision,)] = driver_rows(session, PROGRAM_REVISION)
    shared = cache.get("program")
    if shared is not None and cache.get("revision") == revision:
        with _program_lock:
            shared.extend(session, partner_ids)
        return shared
    program = Program.load(session, partner_ids)
    after_commit(session, lambda: cache.update(revision=revision, program=program))
    return program
