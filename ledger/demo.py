"""A realistic demo program, loaded in one transaction (all or nothing; loading twice is a no-op).

A distributor (globex) with two MSPs and a VAR under it on a step-down plan, two direct
affiliates on a hybrid CPA plan, fifty customers (a few unattributed), a year of monthly invoices
in USD and EUR with partial refunds, a full refund, a chargeback that is later won, a
re-attribution, monthly payout runs (one payout fails and returns its money), and every ended
month closed. Figures are seeded, so every load gives the same books.
"""

from __future__ import annotations

import random
from datetime import date, datetime
from typing import NamedTuple

from sqlalchemy import literal, select
from sqlalchemy.orm import Session

from ledger import customers, partners, payouts, periods, plans, revenue, schema
from ledger.db import lock_journal, lock_program
from ledger.errors import Conflict
from ledger.instants import UTC, add_months, period_of, to_us
from ledger.journal import now_us

FIRST_MONTH = date(2025, 11, 1)
MONTHS = 12
SEED = 20251101

PLANS = {
    "msp-stepdown": ("MSP step-down", {
        "rates": [{"from_month": 1, "rate": "0.40"}, {"from_month": 4, "rate": "0.20"}], "duration_months": 24,
        "hold_days": 30, "negative_balance": "carry_forward",
        "min_payout": [{"amount": "50.00", "currency": "USD"}, {"amount": "50.00", "currency": "EUR"}]}),
    "affiliate-hybrid": ("Affiliate hybrid CPA", {
        "rates": [{"from_month": 1, "rate": "0.10"}], "duration_months": 12, "hold_days": 60,
        "negative_balance": "reset",
        "cpa": [{"amount": "150.00", "currency": "USD"}, {"amount": "140.00", "currency": "EUR"}],
        "min_payout": [{"amount": "100.00", "currency": "USD"}, {"amount": "100.00", "currency": "EUR"}]}),
    "distributor-override": ("Distributor with override", {
        "rates": [{"from_month": 1, "rate": "0.15"}], "duration_months": None, "hold_days": 30,
        "negative_balance": "carry_forward", "override": {"rate": "0.10", "basis": "commission"},
        "min_payout": [{"amount": "250.00", "currency": "USD"}, {"amount": "250.00", "currency": "EUR"}]}),
}
PARTNERS = [  # id, name, type, plan, parent
    ("globex", "Globex Distribution", "distributor", "distributor-override", None),
    ("northwind", "Northwind IT Services", "msp", "msp-stepdown", "globex"),
    ("contoso", "Contoso Managed Services", "msp", "msp-stepdown", "globex"),
    ("initech", "Initech Solutions", "var", "msp-stepdown", "globex"),
    ("techreview", "TechReview Media", "affiliate", "affiliate-hybrid", None),
    ("saasradar", "SaaS Radar", "referral", "affiliate-hybrid", None),
]
SOURCES = ("deal_registration", "referral_link", "manual", "import")


class DemoResult(NamedTuple):
    loaded: bool
    events: int
    closed_periods: int


def _instant(day: date, hour: int = 0) -> int:
    return to_us(datetime(day.year, day.month, day.day, hour, tzinfo=UTC))


# What the demo writes into: it loads into books holding none of these (keys may be there).
BOOKS = (schema.plans, schema.partners, schema.customers, schema.revenue_events, schema.journal_transactions,
         schema.payout_runs, schema.period_closes)


def load_demo(session: Session, *, now: int | None = None) -> DemoResult:
    now = now_us() if now is None else now
    # Under the program's lock before the check: a second load started while the first ran read
    # "not loaded", then waited at the first plan and failed as "already exists". The journal's too,
    # before it records a fact: it appends to the program's chain, whose lock is taken last
    # (`ledger.db.PROGRAM_CHAIN_LOCK_KEY`), then attributes customers first and posts.
    lock_program(session)
    lock_journal(session)
    if plans.plan_exists(session, "msp-stepdown"):
        return DemoResult(False, 0, 0)
    held = [table.name for table in BOOKS if session.execute(select(literal(1)).select_from(table).limit(1)).first()]
    if held:
        # Its ids, events and dated runs would meet theirs: an event id taken with other content, a
        # payout run later than the demo's months (a refusal naming an `at` nobody typed).
        raise Conflict(f"the demo is loaded into empty books; these hold {', '.join(held)} already: load it into "
                       "a database of its own")
    rng = random.Random(SEED)
    for plan_id, (name, terms) in PLANS.items():
        plans.create_plan(session, plan_id, name, terms)
    for partner_id, name, kind, plan_id, parent in PARTNERS:
        partners.create_partner(session, partner_id, name, kind, plan_id, parent)
    book = _customers(session, rng)
    events, closed = 0, 0
    for offset in range(MONTHS):
        month = add_months(datetime.combine(FIRST_MONTH, datetime.min.time(), tzinfo=UTC), offset)
        month_events = _month_events(rng, book, month.date(), offset)
        results = revenue.ingest(session, month_events)
        assert not [r for r in results if isinstance(r, revenue.Refusal)], results  # on empty books, none
        events += len(month_events)
        if offset == 7:
            customers.attribute(session, "cust-007", "northwind", date(2026, 6, 1), "manual", replace=True)
        next_month = add_months(month, 1)
        if to_us(next_month) <= now:
            _pay(session, to_us(next_month), failed_index=3 if offset == 5 else None)
            periods.close_period(session, period_of(to_us(month)), now_us=now)
            closed += 1
    return DemoResult(True, events, closed)


def _customers(session: Session, rng: random.Random) -> list[tuple[str, str, int, int]]:
    """[(customer, currency, monthly amount in minor units, first month offset)]; 45 attributed."""
    book = []
    for number in range(1, 51):
        customer_id = f"cust-{number:03d}"
        partner_id = PARTNERS[1 + (number % 5)][0] if number % 10 != 0 else PARTNERS[0][0]
        currency = "EUR" if number % 7 == 0 else "USD"
        msp = partner_id in ("northwind", "contoso", "initech", "globex")
        amount = rng.randrange(120_000, 980_000, 500) if msp else rng.randrange(4_900, 49_900, 100)
        start = rng.randrange(0, 5)
        if number % 11 != 5:  # a few customers reach billing without any partner
            day = date(FIRST_MONTH.year + (FIRST_MONTH.month + start - 1) // 12,
                       (FIRST_MONTH.month + start - 1) % 12 + 1, rng.randrange(1, 15))
            customers.attribute(session, customer_id, partner_id, day, SOURCES[number % 4])
        book.append((customer_id, currency, amount, start))
    return book


def _month_events(rng: random.Random, book, month: date, offset: int) -> list[revenue.RevenueEvent]:
    events = []
    for customer_id, currency, amount, start in book:
        if offset < start:
            continue
        paid_at = _instant(month.replace(day=15 + rng.randrange(0, 10)), hour=9)
        invoice_id = f"inv-{customer_id[5:]}-{month:%Y%m}"
        events.append(revenue.RevenueEvent(f"evt-{invoice_id}", "invoice_paid", customer_id, invoice_id, currency,
                                           amount, paid_at))
        roll = rng.random()
        later = paid_at + 5 * 86_400_000_000
        if roll < 0.04:
            events.append(revenue.RevenueEvent(f"evt-refund-{invoice_id}", "refund", customer_id, invoice_id,
                                               currency, amount // 4, later))
        elif roll < 0.05:
            events.append(revenue.RevenueEvent(f"evt-fullrefund-{invoice_id}", "refund", customer_id, invoice_id,
                                               currency, amount, later))
        elif offset == 4 and customer_id == "cust-003":
            events.append(revenue.RevenueEvent(f"evt-chargeback-{invoice_id}", "chargeback", customer_id, invoice_id,
                                               currency, amount, later))
            events.append(revenue.RevenueEvent(f"evt-dispute-won-{invoice_id}", "chargeback_reversed", customer_id,
                                               invoice_id, currency, amount, later + 20 * 86_400_000_000))
    return events


def _pay(session: Session, at_us: int, failed_index: int | None) -> None:
    run = payouts.run_payouts(session, at_us)
    for index, payout in enumerate(run.payouts):
        settle_at = at_us + 3 * 86_400_000_000
        if index == failed_index:
            payouts.fail(session, payout.id, reason="bank account closed", at_us=settle_at)
        else:
            payouts.settle(session, payout.id, at_us=settle_at)
