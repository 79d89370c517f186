"""A small partner program for tests outside the commission scenarios: one plan, two partners
(northwind under globex), customers attributed from 2026-01-01, and event builders."""

import re

from ledger import customers, partners, plans, revenue
from ledger.instants import parse_date, parse_instant
from ledger.verify import Problem, verify

PLAN = {"rates": [{"from_month": 1, "rate": "0.20"}], "duration_months": 12, "hold_days": 30,
        "min_payout": [{"amount": "50.00", "currency": "USD"}], "negative_balance": "carry_forward"}
PARENT_PLAN = {**PLAN, "override": {"rate": "0.10", "basis": "commission"}}


def at(text: str) -> int:
    return parse_instant(text if "T" in text else text + "T00:00:00Z", field="t")


def seed(session, customer_ids=("acme", "globex-corp", "initrode")) -> None:
    plans.create_plan(session, "standard", "Standard", PLAN)
    plans.create_plan(session, "parent", "Parent", PARENT_PLAN)
    partners.create_partner(session, "globex", "Globex", "distributor", "parent")
    partners.create_partner(session, "northwind", "Northwind", "msp", "standard", "globex")
    for customer_id in customer_ids:
        customers.attribute(session, customer_id, "northwind", parse_date("2026-01-01", field="d"), "manual")


def enrol(session, *partner_ids: str) -> None:
    """Enrol each partner not enrolled yet, on a plan of its own: a transaction that names a partner
    names one of the program (migration 0031), also when a test posts through the journal alone."""
    if not plans.plan_exists(session, "bare"):
        plans.create_plan(session, "bare", "Bare", PLAN)
    for partner_id in partner_ids:
        if not partners.partner_exists(session, partner_id):
            partners.create_partner(session, partner_id, partner_id.title(), "msp", "bare")


def of_an_event(key: str, partner_id: str) -> dict[str, str]:
    """The links of a commission or clawback posted through the journal alone, as `ledger.revenue`
    gives them (migration 0064: it names its event, invoice and customer): an event `{key}-event` of
    invoice `{key}-invoice` of `{partner_id}-customer`, never stored (`verify` names it
    `event_missing`; a test whose books must verify ok posts through `revenue.ingest`)."""
    return {"customer_id": f"{partner_id}-customer", "invoice_id": f"{key}-invoice", "event_id": f"{key}-event"}


# `verify`'s word on a transaction naming an event `of_an_event` made up.
UNSTORED_EVENT = re.compile(r"names revenue event '[^']*-event', which is not stored")


def verified(session) -> list[Problem]:
    """`verify`'s problems, less those naming the events of `of_an_event`, never stored."""
    return besides_unstored_events(verify(session).problems)


def besides_unstored_events(problems: list[Problem]) -> list[Problem]:
    return [problem for problem in problems
            if not (problem.code == "event_missing" and UNSTORED_EVENT.fullmatch(problem.message))]


def paid(event_id: str, customer_id: str, invoice_id: str, amount_minor: int, when: str,
         kind: str = "invoice_paid") -> revenue.RevenueEvent:
    return revenue.RevenueEvent(event_id, kind, customer_id, invoice_id, "USD", amount_minor, at(when))


def event_dict(event: revenue.RevenueEvent) -> dict:
    from ledger.instants import format_instant
    from ledger.money import format_minor

    return {"id": event.id, "type": event.type, "customer_id": event.customer_id, "invoice_id": event.invoice_id,
            "amount": {"amount": format_minor(event.amount_minor, event.currency), "currency": event.currency},
            "occurred_at": format_instant(event.occurred_at_us)}


def monthly_events(months: int = 4, customer_ids=("acme", "globex-corp", "initrode")) -> list[revenue.RevenueEvent]:
    events = []
    for month in range(1, months + 1):
        for index, customer_id in enumerate(customer_ids):
            invoice = f"inv-{customer_id}-{month}"
            events.append(paid(f"e-{invoice}", customer_id, invoice, 10_000 * (index + 1), f"2026-{month:02d}-10"))
    if "acme" in customer_ids and months >= 2:
        events.append(paid("e-refund-acme-1", "acme", "inv-acme-1", 2_500, "2026-02-20", kind="refund"))
    return events


def tampered_books(sqlite_database) -> None:
    """Seed a month of books into an SQLite database, then alter a journal line behind its guard (as
    someone with the file could), and put the guard back: verify finds 4 problems (the line's
    amount, its transaction's balance, its running totals, and the accrual against what the program
    gives)."""
    import sqlite3

    with sqlite_database.transaction() as session:
        seed(session)
        revenue.ingest(session, monthly_events(months=1))
    connection = sqlite3.connect(sqlite_database.engine.url.database)
    [(guard,)] = connection.execute("SELECT sql FROM sqlite_master WHERE name = 'trg_journal_lines_no_update'")
    connection.execute("DROP TRIGGER trg_journal_lines_no_update")
    connection.execute("UPDATE journal_lines SET amount_minor = amount_minor + 1 WHERE id = 1")
    connection.execute(guard)
    connection.commit()
    connection.close()
