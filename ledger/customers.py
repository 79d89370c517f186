"""Customers and attribution: which partner a customer account belongs to, as dated facts.

An attribution binds a customer to one partner from `effective_from` (a date, start of day UTC)
until the next attribution of that customer starts. One partner at a time: attributing a customer
to another partner is refused unless the request explicitly replaces the current attribution,
which then ends where the new one starts (finance only; the API checks the role). Commission
already earned stays with the partner that earned it. No attribution starts at or after its
partner's termination (409; migration 0025 in the database): it could never earn, and the revenue
billing posts for the customer would answer `no_commission` without saying why. Replacing the
current attribution with one to the same partner, from a later day, starts that partner's window
again (how finance extends a window). The current attribution sent again is a repeat that
changes nothing only when its source is the same too; another source is a 409. An attribution that
has not started can be withdrawn by finance (`withdraw_attribution`), a customer's first or only one
too: the customer stays known, and its record lists what was withdrawn.
"""

from __future__ import annotations

import bisect
import re
from datetime import date
from typing import Iterable, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger import program_chain, withdrawals
from ledger.db import in_lists, lock_journal, lock_program
from ledger.errors import Conflict, NotFound, invalid
from ledger.instants import format_instant, start_of_day_us, within_horizon
from ledger.journal import now_us
from ledger.partners import partner_exists
from ledger.schema import ATTRIBUTION_SOURCES, attributions, customers, partner_statuses

EXTERNAL_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/\-]{0,63}")


class Attribution(NamedTuple):
    customer_id: str
    partner_id: str
    effective_from_us: int
    effective_to_us: int | None
    source: str
    recorded_at_us: int
    id: int | None = None  # names it for `withdraw_attribution`


class WithdrawnAttribution(NamedTuple):
    id: int
    partner_id: str
    effective_from_us: int
    source: str
    recorded_at_us: int
    withdrawn_at_us: int


class Customer(NamedTuple):
    id: str
    created_at_us: int
    attributions: tuple[Attribution, ...]
    withdrawn: tuple[WithdrawnAttribution, ...] = ()


def named(external_id: str) -> str:
    """An id asked for in a path, as a 404's detail names it: quoted, and cut at the 64 characters an
    id may hold (a path takes any length, and the detail is not to echo kilobytes back)."""
    return repr(external_id[:64])


def validate_external_id(value, *, field: str) -> str:
    """Ids that come from billing (customers, invoices, events): 1-64 visible characters."""
    if not isinstance(value, str) or not EXTERNAL_ID_PATTERN.fullmatch(value):
        raise invalid(field, "must be 1-64 characters: letters, digits and _ . : @ / - (starting with a letter or digit)")
    return value


def attribute(session: Session, customer_id: str, partner_id: str, effective_from: date, source: str,
              *, replace: bool = False) -> tuple[Attribution, bool]:
    """Record an attribution; returns (attribution, created). Repeating the current one is a no-op."""
    validate_external_id(customer_id, field="customer_id")
    if source not in ATTRIBUTION_SOURCES:
        raise invalid("source", f"must be one of {', '.join(ATTRIBUTION_SOURCES)}")
    lock_program(session)
    if not partner_exists(session, partner_id):
        raise invalid("partner_id", f"partner {partner_id!r} does not exist")
    start_us = within_horizon(start_of_day_us(effective_from), field="effective_from")
    history = get_customer(session, customer_id).attributions if _exists(session, customer_id) else ()
    current = history[-1] if history else None
    if current is not None:
        if current.partner_id == partner_id and current.effective_from_us == start_us:
            return _repeated(current, source), False
        if current.partner_id != partner_id and not replace:
            raise Conflict(f"customer {customer_id!r} is attributed to partner {current.partner_id!r}; "
                           "replacing it takes a finance key and replace: true")
        if current.partner_id == partner_id and not replace:
            # Attributed anew to its own partner, the customer starts a new window: a replacement too.
            raise Conflict(f"customer {customer_id!r} is already attributed to partner {partner_id!r}, from "
                           f"{format_instant(current.effective_from_us)}; starting its window again takes a "
                           "finance key and replace: true")
        if start_us <= current.effective_from_us:
            raise Conflict("effective_from: a replacing attribution must start after the current one",
                           {"effective_from": ["must be later than the current attribution's start"]})
    terminated_us = session.execute(select(partner_statuses.c.effective_at_us).where(
        partner_statuses.c.partner_id == partner_id, partner_statuses.c.status == "terminated")).scalar()
    if terminated_us is not None and terminated_us <= start_us:
        raise Conflict(f"partner {partner_id!r} is terminated from {format_instant(terminated_us)}: an attribution "
                       "from then on would earn nothing", {"partner_id": ["is terminated by effective_from"]})
    if not history:
        # A customer's first attribution changes what its payments are (`unattributed` or not, which
        # the database holds as it stands when an event is written, migration 0034): not between a
        # posting's read of the attributions and its commit.
        lock_journal(session)
    recorded = now_us()
    customer = [] if history or _exists(session, customer_id) else [
        ("customers", dict(id=customer_id, created_at_us=recorded))]
    *_, attribution_id = program_chain.record(session, *customer, ("attributions", dict(
        customer_id=customer_id, partner_id=partner_id, effective_from_us=start_us, source=source,
        recorded_at_us=recorded, **withdrawals.new_id(session, "attributions"))))
    return Attribution(customer_id, partner_id, start_us, None, source, recorded, attribution_id), True


def _repeated(current: Attribution, source: str) -> Attribution:
    """The current attribution, sent again. Another source is a conflict, not a repeat: answered
    as one, the caller was told its source stood while the books kept the first."""
    if current.source != source:
        raise Conflict(f"customer {current.customer_id!r} is attributed to partner {current.partner_id!r} from "
                       f"{format_instant(current.effective_from_us)} with source {current.source!r}; an "
                       "attribution is never edited",
                       {"source": [f"differs from the current attribution's, {current.source!r}"]})
    return current


def _exists(session: Session, customer_id: str) -> bool:
    return session.execute(select(customers.c.id).where(customers.c.id == customer_id)).first() is not None


def get_customer(session: Session, customer_id: str) -> Customer:
    row = session.execute(select(customers).where(customers.c.id == customer_id)).first()
    if row is None:
        raise NotFound(f"customer {named(customer_id)} does not exist")
    rows = session.execute(select(attributions).where(attributions.c.customer_id == customer_id)
                           .order_by(attributions.c.effective_from_us)).all()
    history = []
    for index, a in enumerate(rows):
        ends = rows[index + 1].effective_from_us if index + 1 < len(rows) else None
        history.append(Attribution(a.customer_id, a.partner_id, a.effective_from_us, ends, a.source, a.recorded_at_us,
                                   a.id))
    withdrawn = tuple(WithdrawnAttribution(w.fact_id, w.value, w.starts_us, w.detail, w.fact_recorded_at_us,
                                           w.recorded_at_us)
                      for w in withdrawals.withdrawn_facts(session, ("attributions",), [customer_id]))
    return Customer(row.id, row.created_at_us, tuple(history), withdrawn)


def withdraw_attribution(session: Session, customer_id: str, attribution_id: int) -> Customer:
    """Withdraw an attribution that has not started (a move to another partner called off, a new
    customer's attribution dated a year wrong). A customer's first or only attribution too: whether a
    customer had one when a payment was recorded decides whether the payment is `unattributed`
    (migration 0034), and `verify` reads the attributions withdrawn for that, as they stood when each
    payment was recorded. The customer stays known, with what was withdrawn. The same withdrawal
    asked again changes nothing; one that starts within `withdrawals.MARGIN_US`, or has started, is a
    409."""
    lock_program(session)
    lock_journal(session)  # as a customer's first attribution is recorded (`attribute`)
    customer = get_customer(session, customer_id)
    found = next((a for a in customer.attributions if a.id == attribution_id), None)
    if found is None:
        if any(w.id == attribution_id for w in customer.withdrawn):
            return customer
        raise NotFound(f"customer {named(customer_id)} has no attribution {attribution_id}")
    withdrawals.withdraw(session, "attributions", attribution_id, customer_id, found.effective_from_us,
                         found.partner_id, found.recorded_at_us, detail=found.source,
                         what=f"attribution {attribution_id} of customer {customer_id!r}")
    return get_customer(session, customer_id)


class AttributionIndex:
    """Attributions of many customers; `at(c, t)` answers (window start, partner) of the
    attribution in effect, or None. Built from the rows of `AttributionIndex.statements()`."""

    @staticmethod
    def statements(session: Session, customer_ids: Iterable[str]) -> list[tuple[str, tuple]]:
        """The reads (for `db.driver_results`) of the customers' attributions."""
        return [("SELECT customer_id, effective_from_us, partner_id FROM attributions"
                 f" WHERE {condition} ORDER BY customer_id, effective_from_us", params)
                for condition, params in in_lists(session, "customer_id", sorted(set(customer_ids)))]

    def __init__(self, results: Iterable[list[tuple]]) -> None:
        self._starts: dict[str, list[int]] = {}
        self._partners: dict[str, list[str]] = {}
        for rows in results:
            for customer_id, start_us, partner_id in rows:
                self._starts.setdefault(customer_id, []).append(start_us)
                self._partners.setdefault(customer_id, []).append(partner_id)

    def at(self, customer_id: str, instant_us: int) -> tuple[int, str] | None:
        starts = self._starts.get(customer_id)
        if not starts:
            return None
        index = bisect.bisect_right(starts, instant_us)
        return (starts[index - 1], self._partners[customer_id][index - 1]) if index else None

    def knows(self, customer_id: str) -> bool:
        """Whether the customer has any attribution, including one that starts later."""
        return customer_id in self._starts

    def partner_ids(self) -> set[str]:
        return {pid for partner_list in self._partners.values() for pid in partner_list}
