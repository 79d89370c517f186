"""A partner program sized for benchmarks, and seeded streams of revenue events over it.

Partners: one in ten is a *parent* on a plan with an override (10% of the child's commission);
the others are on a standard plan (20%, 24 months, 30-day hold), and half of them sit under a
parent, so about 45% of paid invoices also post an override. A few partners are *hot*: they hold
`HOT_CUSTOMER_SHARE` of the customers, so their accounts carry that share of the lines.

Partners and plans go through the domain (`plans.create_plan`, `partners.create_partner`);
customers and their attributions are inserted as plain rows in bulk (setting up 200,000 customers
one `customers.attribute` call at a time would take longer than the benchmarks themselves).
"""

from __future__ import annotations

import random
from datetime import date, datetime
from typing import Iterator, NamedTuple

from sqlalchemy import insert
from sqlalchemy.orm import Session

from ledger import partners, plans, program_chain, revenue
from ledger.instants import UTC, add_months, start_of_day_us, to_us
from ledger.schema import attributions, customers

STANDARD_PLAN = {"rates": [{"from_month": 1, "rate": "0.20"}], "duration_months": 24, "hold_days": 30,
                 "min_payout": [{"amount": "50.00", "currency": "USD"}], "negative_balance": "carry_forward"}
PARENT_PLAN = {**STANDARD_PLAN, "override": {"rate": "0.10", "basis": "commission"}}
ATTRIBUTED_FROM = date(2024, 1, 1)
FIRST_MONTH = datetime(2024, 1, 1, tzinfo=UTC)
PARENT_EVERY = 10
HOT_PARTNERS = 5
HOT_CUSTOMER_SHARE = 0.2
INSERT_CHUNK_ROWS = 10_000


class Program(NamedTuple):
    partner_ids: tuple[str, ...]  # every partner, parents included
    earner_ids: tuple[str, ...]  # partners on the standard plan (customers are attributed to them)
    hot_ids: tuple[str, ...]
    customer_ids: tuple[str, ...]
    first_customer: dict[str, str]  # earner -> one of its customers (earners without one are absent)


def seed(session: Session, partner_count: int, customer_count: int, *, seed_value: int = 8) -> Program:
    """Plans, `partner_count` partners and `customer_count` attributed customers. The caller commits."""
    assert partner_count >= PARENT_EVERY + HOT_PARTNERS and customer_count >= partner_count
    rng = random.Random(seed_value)
    plans.create_plan(session, "bench-standard", "Bench standard", STANDARD_PLAN)
    plans.create_plan(session, "bench-parent", "Bench parent with override", PARENT_PLAN)
    parent_ids = [f"parent-{n:05d}" for n in range(partner_count // PARENT_EVERY)]
    for parent_id in parent_ids:
        partners.create_partner(session, parent_id, parent_id, "distributor", "bench-parent")
    earner_ids = [f"partner-{n:05d}" for n in range(partner_count - len(parent_ids))]
    for index, partner_id in enumerate(earner_ids):
        parent = parent_ids[index % len(parent_ids)] if index % 2 == 0 else None
        partners.create_partner(session, partner_id, partner_id, "msp", "bench-standard", parent)
    hot_ids = earner_ids[:HOT_PARTNERS]
    customer_ids = [f"cust-{n:07d}" for n in range(customer_count)]
    owners = _owners(rng, customer_ids, earner_ids, hot_ids)
    _insert_customers(session, customer_ids, owners)
    first_customer: dict[str, str] = {}
    for customer_id, owner in zip(customer_ids, owners):
        first_customer.setdefault(owner, customer_id)
    return Program(tuple(parent_ids + earner_ids), tuple(earner_ids), tuple(hot_ids), tuple(customer_ids),
                   first_customer)


def _owners(rng: random.Random, customer_ids: list[str], earner_ids: list[str], hot_ids: list[str]) -> list[str]:
    cold_ids = earner_ids[len(hot_ids):]
    return [rng.choice(hot_ids) if rng.random() < HOT_CUSTOMER_SHARE else rng.choice(cold_ids)
            for _ in customer_ids]


def _insert_customers(session: Session, customer_ids: list[str], owners: list[str]) -> None:
    start_us, recorded_us = start_of_day_us(ATTRIBUTED_FROM), to_us(datetime(2023, 12, 1, tzinfo=UTC))
    for begin in range(0, len(customer_ids), INSERT_CHUNK_ROWS):
        chunk = range(begin, min(begin + INSERT_CHUNK_ROWS, len(customer_ids)))
        customer_rows = [{"id": customer_ids[i], "created_at_us": recorded_us} for i in chunk]
        session.execute(insert(customers), customer_rows)
        attribution_rows = [{"customer_id": customer_ids[i], "partner_id": owners[i], "effective_from_us": start_us,
                             "source": "import", "recorded_at_us": recorded_us} for i in chunk]
        ids = session.execute(insert(attributions).returning(attributions.c.id, sort_by_parameter_order=True),
                              attribution_rows).scalars().all()
        # Chained as the service chains each fact it records (ledger/program_chain.py).
        attributed = [row | {"id": id_} for row, id_ in zip(attribution_rows, ids)]
        program_chain.chain(session, [*(("customers", row) for row in customer_rows),
                                      *(("attributions", row) for row in attributed)])


def month_start_us(month_offset: int) -> int:
    return to_us(add_months(FIRST_MONTH, month_offset))


def paid_events(program: Program, count: int, *, month_offset: int, prefix: str,
                seed_value: int = 20) -> list[revenue.RevenueEvent]:
    """`count` paid invoices spread evenly over one calendar month, in time order, ids unique by prefix."""
    rng = random.Random(f"{seed_value}:{prefix}:{month_offset}")
    start_us, end_us = month_start_us(month_offset), month_start_us(month_offset + 1)
    step_us = (end_us - start_us) // max(count, 1)
    return [revenue.RevenueEvent(f"{prefix}-{n}", "invoice_paid", rng.choice(program.customer_ids), f"{prefix}-inv-{n}",
                                 "USD", rng.randrange(1_000, 200_000), start_us + n * step_us)
            for n in range(count)]


def warm_up_events(program: Program) -> list[revenue.RevenueEvent]:
    """One paid invoice per earner, in the first month: afterwards every partner account exists."""
    at_us = month_start_us(0)
    return [revenue.RevenueEvent(f"warm-{n}", "invoice_paid", customer_id, f"warm-inv-{n}", "USD", 10_000, at_us + n)
            for n, customer_id in enumerate(program.first_customer.values())]


def batches(events: list, size: int) -> Iterator[list]:
    for start in range(0, len(events), size):
        yield events[start:start + size]
