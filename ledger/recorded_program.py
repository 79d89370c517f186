"""The partner program as it was recorded, and each payment's commissions re-derived from it.

`ledger.partners.Program` answers "who earns at instant t?" from the program's rows as they are
now. A payment was decided from the rows as they were when it was recorded: a status, plan, plan
version or attribution can be dated back (within the horizon), and one recorded after the payment
did not apply to it (there is no re-rating). `RecordedProgram` keeps every fact with the instant it
was written, and answers what the program could have said to a reader at a given recording instant.

`verify_commissions` walks the stored payments and, for each, re-derives with `invoice_earnings`
what it earns (revenue share, CPA, overrides: partner, amount, plan version, hold) from the program
as recorded by then, and compares that with the earnings the journal holds for it and with the CPA
claim its row makes. It finds what the rows' own rules cannot: a payment that says it earned
nothing, for a customer whose partner was earning; an accrual of another amount, partner or plan
version than the program gives; a CPA claimed by a payment outside its customer's window, or not
claimed by an eligible payment dated before every claim recorded before it.

Which facts a payment saw is read from clocks: a fact recorded more than `RECORDED_SKEW_US` before
the payment was seen, one recorded more than that after it was not, and one recorded within it may
or may not have been (two servers' clocks, each within `CLOCK_SKEW_US` of the database's). Of those,
each lookup takes every prefix in id order (each table's ids follow the order its rows are
written), and a payment passes when one of the outcomes they give is what the journal holds. A
payment whose lookups give more than `OUTCOMES_MAX` outcomes together passes unchecked (it would
take many program changes within minutes of it); so does one whose plan version's terms do not
parse, which is named once on its own. A fact's `recorded_at` is read before its transaction
commits. Statuses, plan versions, plan changes and a customer's first attribution are recorded
under the journal lock, under which payments and payout runs read the program and their own
recorded time: each such fact was there when they read, or is recorded after them, and the clocks
place it so. Another fact (an attribution replacing one) left open longer than the skew while
payments committed (no request, job or command of the service's holds a program change open that
long) would be read as seen by them.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import product
from typing import Any, Iterable, Iterator, NamedTuple

from sqlalchemy.orm import Session

from ledger.commission import EARNING_KINDS, OVERRIDE_DEPTH_MAX, Earner, invoice_earnings
from ledger.db import driver_rows, in_lists
from ledger.errors import InvalidInput
from ledger.holds import matures_at_us
from ledger.instants import describe_instant, format_instant
from ledger.journal import CLOCK_SKEW_US
from ledger.money import format_minor
from ledger.terms import Terms, terms_from_json

# How far apart a fact's and a payment's `recorded_at` may be read for rows written in the other
# order: each is read from the clock of the server that wrote it, and two servers each within
# `CLOCK_SKEW_US` of the database's clock disagree by up to twice it.
RECORDED_SKEW_US = 2 * CLOCK_SKEW_US
OUTCOMES_MAX = 1024  # the outcomes one payment's uncertain facts may give before it goes unchecked
PAYMENTS_PER_READ = 10_000


class Fact(NamedTuple):
    """A dated fact: `value` holds from `starts_us` until the next fact of its key starts."""

    id: int
    starts_us: int
    value: Any
    recorded_at_us: int


def facts_at(facts: list[Fact], instant_us: int, recorded_at_us: int, skew_us: int = RECORDED_SKEW_US
             ) -> list[Fact | None]:
    """The facts of one key (in id order) that a reader at `recorded_at_us` could have found in force
    at `instant_us`: the latest starting by then (ties: the later id), among those recorded before
    it, each distinct answer once. A fact recorded within `skew_us` of the reader may or may not
    have been seen, as a prefix of such facts in id order: one answer for each prefix."""
    current: Fact | None = None
    uncertain: list[Fact] = []
    for fact in facts:
        if fact.recorded_at_us > recorded_at_us + skew_us:
            continue
        if fact.recorded_at_us >= recorded_at_us - skew_us:
            uncertain.append(fact)
        elif fact.starts_us <= instant_us and (current is None or fact.starts_us >= current.starts_us):
            current = fact
    found = [current]
    for fact in uncertain:
        if fact.starts_us <= instant_us and (current is None or fact.starts_us >= current.starts_us):
            current = fact
            found.append(current)
    return found


class RecordedProgram:
    """Every partner's parent, statuses and plans, and every plan's versions, with the instants
    they were recorded: `earners_at` answers who a partner could have been as an earner."""

    def __init__(self, parents: dict[str, str | None], statuses: dict[str, list[Fact]],
                 plans: dict[str, list[Fact]], versions: dict[str, list[Fact]]) -> None:
        self.parents, self.statuses, self.plans, self.versions = parents, statuses, plans, versions

    @classmethod
    def load(cls, session: Session) -> tuple["RecordedProgram", list[tuple[int, str]]]:
        """The whole program, and (version id, plan id) of each version whose terms do not parse
        (its `Fact.value` is then None)."""
        parents = dict(driver_rows(session, "SELECT id, parent_id FROM partners"))
        statuses = _facts(driver_rows(session, "SELECT partner_id, id, effective_at_us, status, recorded_at_us"
                                               " FROM partner_statuses ORDER BY id"))
        plans = _facts(driver_rows(session, "SELECT partner_id, id, effective_from_us, plan_id, recorded_at_us"
                                            " FROM partner_plans ORDER BY id"))
        unreadable: list[tuple[int, str]] = []
        versions: dict[str, list[Fact]] = defaultdict(list)
        for plan_id, version_id, starts_us, text, created_us in driver_rows(
                session, "SELECT plan_id, id, effective_from_us, terms, created_at_us FROM plan_versions ORDER BY id"):
            terms = _terms(text)
            if terms is None:
                unreadable.append((version_id, plan_id))
            versions[plan_id].append(Fact(version_id, starts_us, terms, created_us))
        return cls(parents, statuses, plans, versions), unreadable

    def ancestors(self, partner_id: str) -> list[str]:
        chain, parent = [], self.parents.get(partner_id)
        while parent is not None and len(chain) < OVERRIDE_DEPTH_MAX:
            chain.append(parent)
            parent = self.parents.get(parent)
        return chain

    def readings(self, partner_id: str, instant_us: int, recorded_at_us: int, skew_us: int
                 ) -> Iterator[tuple[str | None, Fact | None]]:
        """Each (status, plan version) a reader at `recorded_at_us` could have found the partner in
        at the instant: None for no status, or no plan version in effect (the version's terms are
        None where they do not parse)."""
        for status in facts_at(self.statuses.get(partner_id, []), instant_us, recorded_at_us, skew_us):
            if status is None:
                yield None, None
                continue
            for plan in facts_at(self.plans.get(partner_id, []), instant_us, recorded_at_us, skew_us):
                versions = self.versions.get(plan.value, []) if plan is not None else []
                for version in facts_at(versions, instant_us, recorded_at_us, skew_us):
                    yield status.value, version

    def earners_at(self, partner_id: str, instant_us: int, recorded_at_us: int, skew_us: int
                   ) -> list[Earner | None]:
        """What `Program.earner_at` could have answered a reader at `recorded_at_us`: None for a
        partner terminated, without a status or without a plan version at the instant. An Earner
        on a version whose terms do not parse raises `Unchecked`."""
        found: dict[Any, Earner | None] = {}
        for status, version in self.readings(partner_id, instant_us, recorded_at_us, skew_us):
            if status in (None, "terminated") or version is None:
                found[None] = None
            elif version.value is None:
                raise Unchecked(f"plan version id {version.id}: its terms do not parse")
            else:
                found[version.id] = Earner(partner_id, version.id, version.value)
        return list(found.values())


class Unchecked(Exception):
    """What a payment earned cannot be re-derived: its plan version's terms do not parse, or the
    facts recorded within the skew of it give too many outcomes."""


def _facts(rows: Iterable[tuple]) -> dict[str, list[Fact]]:
    found: dict[str, list[Fact]] = defaultdict(list)
    for key, fact_id, starts_us, value, recorded_us in rows:
        found[key].append(Fact(fact_id, starts_us, value, recorded_us))
    return found


def _terms(text: str) -> Terms | None:
    try:
        return terms_from_json(text)
    except (InvalidInput, ValueError, TypeError, AttributeError):
        return None


class Payment(NamedTuple):
    """A stored `invoice_paid` event, as far as its commissions go."""

    id: str
    customer_id: str
    currency: str
    amount_minor: int
    occurred_at_us: int
    recorded_at_us: int
    claims_cpa: bool  # it claimed its customer's CPA: `first_eligible_customer_id`, or in `cpa_claims_taken`


class Earned(NamedTuple):
    """One earning as the journal holds it, or as re-derived: comparable either way."""

    partner_id: str
    kind: str
    amount_minor: int
    currency: str
    plan_version_id: int | None
    matures_at_us: int | None


class Outcome(NamedTuple):
    eligible: bool
    earned: tuple[Earned, ...]  # sorted


def outcomes(program: RecordedProgram, payment: Payment, attributions: list[Fact],
             skew_us: int = RECORDED_SKEW_US) -> Iterator[Outcome]:
    """Each outcome `revenue._Writer._paid` could have reached for the payment, given what it could
    have seen: first the one with every fact recorded within `skew_us` of it seen (when none was,
    the only one; when the program was set up just before a load, the one that happened), then
    those with fewer. Raises `Unchecked` past `OUTCOMES_MAX` outcomes, or on a plan version whose
    terms do not parse."""
    count = 0
    for attribution in reversed(facts_at(attributions, payment.occurred_at_us, payment.recorded_at_us, skew_us)):
        if attribution is None:
            yield Outcome(False, ())
            continue
        chain = [attribution.value, *program.ancestors(attribution.value)]
        choices = [program.earners_at(partner_id, payment.occurred_at_us, payment.recorded_at_us, skew_us)[::-1]
                   for partner_id in chain]
        for earners in product(*choices):
            count += 1
            if count > OUTCOMES_MAX:
                raise Unchecked(f"more than {OUTCOMES_MAX} outcomes")
            yield _outcome(payment, attribution.starts_us, earners)


def _outcome(payment: Payment, window_start_us: int, earners: tuple[Earner | None, ...]) -> Outcome:
    earner, ancestors = earners[0], list(earners[1:])
    if earner is None:
        return Outcome(False, ())
    eligible, earnings = invoice_earnings(payment.amount_minor, payment.currency, payment.occurred_at_us,
                                          window_start_us, earner, ancestors, payment.claims_cpa)
    return Outcome(eligible, tuple(sorted((
        Earned(e.partner_id, e.kind, e.amount_minor, payment.currency, e.plan_version_id,
               matures_at_us(payment.occurred_at_us, e.hold_days)) for e in earnings), key=_order)))


def verify_commissions(session: Session) -> list[tuple[int | None, str, str]]:
    """(transaction id, code, message) of each payment whose earnings in the journal, or whose CPA
    claim, is not what the program as recorded by then gives (module docstring):
    `commission_unlike_program`, `cpa_claim_unlike_program`, and `plan_terms_unreadable` for a
    plan version whose terms do not parse."""
    program, unreadable = RecordedProgram.load(session)
    problems: list[tuple[int | None, str, str]] = [
        (None, "plan_terms_unreadable", f"plan {plan_id!r} version id {version_id}: its terms do not parse, "
                                        "and the payments it applies to are not re-derived")
        for version_id, plan_id in unreadable]
    # Without its row (only raw SQL behind the triggers could remove it) every payment is judged by date.
    by_date_since_us = min((since_us for since_us, in driver_rows(
        session, "SELECT since_us FROM rules_since WHERE rule = 'cpa_first_by_date'")), default=0)
    after = None
    while True:
        payments = _payments(session, after)
        if not payments:
            return problems
        after = payments[-1].id
        problems += _check_payments(session, program, payments, by_date_since_us)


def _payments(session: Session, after: str | None) -> list[Payment]:
    rows = driver_rows(session, "SELECT id, customer_id, currency, amount_minor, occurred_at_us, recorded_at_us,"
                                " CASE WHEN first_eligible_customer_id IS NOT NULL OR EXISTS (SELECT 1 FROM"
                                " cpa_claims_taken c WHERE c.event_id = revenue_events.id) THEN 1 ELSE 0 END"
                                " FROM revenue_events WHERE type = 'invoice_paid'"
                                + ("" if after is None else " AND id > ?")
                                + f" ORDER BY id LIMIT {PAYMENTS_PER_READ}", () if after is None else (after,))
    return [Payment(*row[:6], row[6] == 1) for row in rows]


_EARNED = ("SELECT journal_transactions.event_id, journal_transactions.id, journal_transactions.partner_id,"
           " journal_transactions.kind, journal_lines.currency, max(journal_lines.amount_minor),"
           " journal_transactions.plan_version_id, journal_transactions.matures_at_us"
           " FROM journal_transactions JOIN journal_lines ON journal_lines.transaction_id = journal_transactions.id"
           " WHERE {condition} AND journal_transactions.accrual_id IS NULL"
           f" AND journal_transactions.kind IN ({', '.join(repr(kind) for kind in EARNING_KINDS)})"
           " GROUP BY journal_transactions.event_id, journal_transactions.id, journal_transactions.partner_id,"
           " journal_transactions.kind, journal_lines.currency, journal_transactions.plan_version_id,"
           " journal_transactions.matures_at_us")


def _check_payments(session: Session, program: RecordedProgram, payments: list[Payment], by_date_since_us: int
                    ) -> list[tuple[int | None, str, str]]:
    """One read's payments: their attributions, earnings and their customers' CPA claims in three
    statements per `in_lists` condition, then each payment against its outcomes."""
    customer_ids = sorted({p.customer_id for p in payments})
    attributions: dict[str, list[Fact]] = defaultdict(list)
    claims: dict[str, list[tuple[int, int]]] = defaultdict(list)  # customer: (recorded, occurred) of each claim
    for condition, params in in_lists(session, "customer_id", customer_ids):
        for customer_id, fact_id, starts_us, partner_id, recorded_us in driver_rows(
                session, "SELECT customer_id, id, effective_from_us, partner_id, recorded_at_us FROM attributions"
                         f" WHERE {condition} ORDER BY id", params):
            attributions[customer_id].append(Fact(fact_id, starts_us, partner_id, recorded_us))
    for column, claimed in (("first_eligible_customer_id", "revenue_events e"),
                            ("c.customer_id", "cpa_claims_taken c JOIN revenue_events e ON e.id = c.event_id")):
        for condition, params in in_lists(session, column, customer_ids):
            for customer_id, recorded_us, occurred_us in driver_rows(
                    session, f"SELECT {column}, e.recorded_at_us, e.occurred_at_us FROM {claimed} WHERE {condition}",
                    params):
                claims[customer_id].append((recorded_us, occurred_us))
    earned: dict[str, list[tuple[int, Earned]]] = defaultdict(list)
    for condition, params in in_lists(session, "journal_transactions.event_id", [p.id for p in payments]):
        for event_id, transaction_id, partner_id, kind, currency, amount, version_id, matures_us in driver_rows(
                session, _EARNED.format(condition=condition), params):
            earned[event_id].append((transaction_id, Earned(partner_id, kind, amount, currency, version_id,
                                                            matures_us)))
    problems = []
    for payment in payments:
        held = earned.get(payment.id, [])
        problem = _check_payment(program, payment, attributions.get(payment.customer_id, []),
                                 tuple(sorted((e for _, e in held), key=_order)), claims.get(payment.customer_id, []),
                                 by_date_since_us)
        if problem is not None:
            problems.append((min((tid for tid, _ in held), default=None), *problem))
    return problems


def _order(earned: Earned) -> tuple[str, str]:
    """Earnings by kind (accrual, cpa, override), then partner: the journal holds one of each pair for
    a payment, and the program gives one (`str`: a key that holds for rows altered to other types)."""
    return str(earned.kind), str(earned.partner_id)


def _check_payment(program: RecordedProgram, payment: Payment, attributions: list[Fact],
                   held: tuple[Earned, ...], claims: list[tuple[int, int]], by_date_since_us: int
                   ) -> tuple[str, str] | None:
    """(code, message) when no outcome the payment could have reached is what the journal holds."""
    earned_alike = False
    try:
        for outcome in outcomes(program, payment, attributions):
            if outcome.earned == held:
                if _claim_fits(outcome, payment, claims, by_date_since_us):
                    return None
                earned_alike = True
    except Unchecked:
        return None
    if not earned_alike:
        expected = next(outcomes(program, payment, attributions, skew_us=0))
        return ("commission_unlike_program", f"revenue event {payment.id!r}: the journal holds {_describe(held)}, "
                                             f"but the program as recorded by then gives {_describe(expected.earned)}")
    if payment.claims_cpa:
        return ("cpa_claim_unlike_program", f"revenue event {payment.id!r} claims its customer's CPA, but it is "
                                            "outside the attribution window as the program was recorded by then")
    return ("cpa_claim_unlike_program", f"revenue event {payment.id!r} is within its customer's attribution window, "
                                        "but " + ("no payment claims the customer's CPA" if not claims
                                                  else "no payment dated at or before it claimed the customer's "
                                                  "CPA before it was recorded (claims recorded at "
                                                  + ", ".join(format_instant(recorded_us)
                                                              for recorded_us, _ in sorted(claims)) + ")"))


def _claim_fits(outcome: Outcome, payment: Payment, claims: list[tuple[int, int]], by_date_since_us: int) -> bool:
    """A payment claims its customer's CPA when, and only when, it is eligible and no payment dated at
    or before it claimed it before it was recorded (`revenue._Writer._paid`): (recorded, occurred)
    of each claim of the customer, first or taken. A payment recorded before that rule took effect
    (migration 0038, `rules_since`) may also have followed the rule of its time: it claimed when no
    payment recorded before it had claimed, whatever its date. (The upgrade holds the journal lock
    from before it reads the instant: a payment recorded after it was decided by the new rule.)"""
    if payment.claims_cpa:
        return outcome.eligible
    if not outcome.eligible:
        return True
    seen = [occurred_us for recorded_us, occurred_us in claims
            if recorded_us <= payment.recorded_at_us + RECORDED_SKEW_US]
    return (any(occurred_us <= payment.occurred_at_us for occurred_us in seen)
            or (bool(seen) and payment.recorded_at_us < by_date_since_us))


def _describe(earned: tuple[Earned, ...]) -> str:
    if not earned:
        return "no earnings"
    return "; ".join(f"{e.kind} of {_money(e)} to {e.partner_id!r} (plan version id {e.plan_version_id}, held until "
                     f"{describe_instant(e.matures_at_us)})" for e in earned)


def _money(earned: Earned) -> str:
    """The amount as money, or as stored when the row holds no amount the service writes."""
    if type(earned.amount_minor) is int:
        try:
            return format_minor(earned.amount_minor, earned.currency)
        except InvalidInput:  # no currency the service knows
            pass
    return f"{earned.amount_minor!r} of {earned.currency!r}"

