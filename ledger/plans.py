"""Commission plans and their immutable versions.

A plan is created with version 1; each later version starts at its `effective_from` and applies to
events that occur from then on. Every accrual pins the version in effect at its event's instant
(`journal_transactions.plan_version_id`). Versions are never edited: a change is a new version.
A version that has not started can be withdrawn (`withdraw_version`), but a plan's first: its number
is not given again, so that a number names one version for good.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ledger import program_chain, withdrawals
from ledger.db import driver_rows, in_lists, lock_journal, lock_program
from ledger.errors import Conflict, NotFound, invalid
from ledger.instants import within_horizon
from ledger.journal import now_us
from ledger.schema import plan_versions, plans
from ledger.terms import Terms, parse_terms, terms_from_json, terms_to_json

# Version 1 applies from the beginning of time unless it names its own start.
BEGINNING_US = 0


class PlanVersion(NamedTuple):
    id: int
    plan_id: str
    version: int
    effective_from_us: int
    terms: Terms


class WithdrawnVersion(NamedTuple):
    version: int
    effective_from_us: int
    withdrawn_at_us: int


class Plan(NamedTuple):
    id: str
    name: str
    versions: tuple[PlanVersion, ...]
    withdrawn: tuple[WithdrawnVersion, ...] = ()


def validate_plan_id(plan_id: Any, *, field: str = "id") -> str:
    from ledger.accounts import validate_partner_id  # same alphabet as partner ids

    return validate_partner_id(plan_id, field=field)


def create_plan(session: Session, plan_id: str, name: str, terms_data: dict[str, Any],
                effective_from_us: int | None = None) -> Plan:
    validate_plan_id(plan_id)
    if not isinstance(name, str) or not 1 <= len(name) <= 200 or not name.strip():
        raise invalid("name", "1 to 200 characters, not all blank")
    terms = parse_terms(terms_data)
    first_us = BEGINNING_US if effective_from_us is None else within_horizon(effective_from_us, field="effective_from")
    lock_program(session)
    if plan_exists(session, plan_id):
        raise Conflict(f"plan {plan_id!r} already exists")
    created = now_us()
    program_chain.record(session, ("plans", dict(id=plan_id, name=name, created_at_us=created)))
    _insert_version(session, plan_id, 1, first_us, terms)
    return get_plan(session, plan_id)


def add_version(session: Session, plan_id: str, terms_data: dict[str, Any], effective_from_us: int) -> PlanVersion:
    terms = parse_terms(terms_data)
    within_horizon(effective_from_us, field="effective_from")
    lock_program(session)
    # Recorded under the journal lock, so that a posting or payout run, which reads the program and
    # its own recorded time under that lock, either saw the version or was recorded before it:
    # `verify` places facts among them by their recorded times (`ledger.recorded_program`), and two
    # servers' clocks up to ten minutes apart left a version committed a few seconds into a run read
    # as seen by it, a payout the version forbade named wrongly (`ledger.payouts_rederived`).
    lock_journal(session)
    plan = get_plan(session, plan_id)
    latest = plan.versions[-1]
    if effective_from_us <= latest.effective_from_us:
        withdrawable = (" (a version that has not started can be withdrawn)"
                        if latest.version > 1 and latest.effective_from_us > now_us() + withdrawals.MARGIN_US else "")
        raise Conflict(f"effective_from: a new version must start after version {latest.version} starts"
                       + withdrawable, {"effective_from": ["must be later than the latest version's start"]})
    number = max([latest.version, *(withdrawn.version for withdrawn in plan.withdrawn)]) + 1
    return _insert_version(session, plan_id, number, effective_from_us, terms)


def withdraw_version(session: Session, plan_id: str, version: int) -> Plan:
    """Withdraw a version that has not started (new rates scheduled, then called off). The same
    withdrawal asked again changes nothing; version 1, and a version that starts within
    `withdrawals.MARGIN_US` or has started, is a 409. Recorded under the journal lock, as a version
    is (`add_version`)."""
    lock_program(session)
    lock_journal(session)
    plan = get_plan(session, plan_id)
    if any(withdrawn.version == version for withdrawn in plan.withdrawn):
        return plan
    found = next((v for v in plan.versions if v.version == version), None)
    if found is None:
        raise NotFound(f"plan {plan_id!r} has no version {version}")
    if version == 1:
        raise Conflict(f"plan {plan_id!r} keeps its first version: partners' plan changes start after it")
    row = session.execute(select(plan_versions.c.terms, plan_versions.c.created_at_us)
                          .where(plan_versions.c.id == found.id)).one()
    withdrawals.withdraw(session, "plan_versions", found.id, plan_id, found.effective_from_us, str(version),
                         row.created_at_us, detail=row.terms, what=f"version {version} of plan {plan_id!r}")
    return get_plan(session, plan_id)


def _insert_version(session: Session, plan_id: str, version: int, effective_from_us: int, terms: Terms) -> PlanVersion:
    try:
        with session.begin_nested():
            [version_id] = program_chain.record(session, ("plan_versions", dict(
                plan_id=plan_id, version=version, effective_from_us=effective_from_us,
                terms=terms_to_json(terms), created_at_us=now_us(), **withdrawals.new_id(session, "plan_versions"))))
    except IntegrityError:
        raise Conflict(f"plan {plan_id!r} changed concurrently; retry") from None
    return PlanVersion(version_id, plan_id, version, effective_from_us, terms)


def get_plan(session: Session, plan_id: str) -> Plan:
    row = session.execute(select(plans).where(plans.c.id == plan_id)).first()
    if row is None:
        raise NotFound(f"plan {plan_id!r} does not exist")
    versions = session.execute(select(plan_versions).where(plan_versions.c.plan_id == plan_id)
                               .order_by(plan_versions.c.version)).all()
    withdrawn = tuple(WithdrawnVersion(int(w.value), w.starts_us, w.recorded_at_us)
                      for w in withdrawals.withdrawn_facts(session, ("plan_versions",), [plan_id]))
    return Plan(row.id, row.name, tuple(
        PlanVersion(v.id, v.plan_id, v.version, v.effective_from_us, terms_from_json(v.terms)) for v in versions),
        withdrawn)


def plan_exists(session: Session, plan_id: str) -> bool:
    return session.execute(select(func.count()).select_from(plans).where(plans.c.id == plan_id)).scalar_one() > 0


def load_versions(session: Session, plan_ids: set[str]) -> dict[str, list[PlanVersion]]:
    """Every version of the named plans, oldest first, in one query per `in_lists` condition."""
    found: dict[str, list[PlanVersion]] = {plan_id: [] for plan_id in plan_ids}
    if not plan_ids:
        return found
    for condition, params in in_lists(session, "plan_id", sorted(plan_ids)):
        for version_id, plan_id, version, effective_from_us, terms in driver_rows(
                session, "SELECT id, plan_id, version, effective_from_us, terms FROM plan_versions"
                         f" WHERE {condition} ORDER BY plan_id, effective_from_us", params):
            found[plan_id].append(PlanVersion(version_id, plan_id, version, effective_from_us, terms_from_json(terms)))
    return found
