"""A small partner program for tests outside the commission scenarios: one plan, two partners
(northwind under globex), customers attributed from 2026-01-01, and event builders."""

import re

import sqlalchemy as sa

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
    invoice `{key}-invoice` of `{partner_id}-customer`. The commit that posts it stores the event
    (`store_made_up_events`: migration 0065 asks for it), a payment or refund standing for billing's;
    `verified` leaves out what `verify` says of it (a test whose books must verify ok, event by event,
    posts through `revenue.ingest`)."""
    links = {"customer_id": f"{partner_id}-customer", "invoice_id": f"{key}-invoice", "event_id": f"{key}-event"}
    MADE_UP.add(links["event_id"])
    return links


# The events `of_an_event` (or `made_up`) gave this test (tests/conftest.py empties it after each).
MADE_UP: set[str] = set()


def made_up(*event_ids: str) -> None:
    """Have the commit that posts a commission or clawback naming one of `event_ids` store it, as for
    the events of `of_an_event`: for a test that names its own."""
    MADE_UP.update(event_ids)


PAYMENT_MINOR = 10**12  # a made-up payment's amount: its refunds, a clawback's each, stay within it


def store_made_up_events(connection) -> None:
    """Before a commit (a listener of every engine's, tests/conftest.py): store the events made up by
    `of_an_event` that the transaction's postings name and the database lists as not stored yet
    (`revenue_events_due`), each a payment of the first commission naming it, or a refund of the
    first clawback, at its instant; its customer attributed to its partner (or, for a partner the
    program does not know, to the first it does) when it has no attribution. An event that no
    commission or clawback names, or one not made up here, is left: the commit fails, as it should."""
    if not MADE_UP or _aborted(connection) or not sa.inspect(connection).has_table("revenue_events_due"):
        return
    rows = connection.execute(sa.text(
        "SELECT d.event_id, t.kind, t.partner_id, t.customer_id, t.invoice_id, t.effective_at_us,"
        " (SELECT min(l.currency) FROM journal_lines l WHERE l.transaction_id = t.id),"
        " (SELECT max(l.amount_minor) FROM journal_lines l WHERE l.transaction_id = t.id)"
        " FROM revenue_events_due d JOIN journal_transactions t ON t.id = d.transaction_id"
        " WHERE t.kind IN ('accrual', 'cpa', 'override', 'clawback') ORDER BY t.id")).all()
    events = {}
    for event_id, kind, partner_id, customer_id, invoice_id, at_us, currency, amount in rows:
        if event_id in MADE_UP and event_id not in events:
            events[event_id] = (kind, partner_id, customer_id, invoice_id, at_us, currency, amount)
    if not events:
        return
    attributed = set()  # each customer once, by its first event: a statement an event was 10,000 a commit
    for _kind, partner_id, customer_id, _invoice, at_us, _currency, _amount in events.values():
        if customer_id not in attributed:
            _attributed(connection, customer_id, partner_id, at_us)
            attributed.add(customer_id)
    from tests.integration.conftest import chain_due
    chain_due(connection)
    made = [revenue.RevenueEvent(event_id, "refund" if kind == "clawback" else "invoice_paid", customer_id, invoice_id,
                                 currency, amount if kind == "clawback" else PAYMENT_MINOR, at_us)
            for event_id, (kind, _partner, customer_id, invoice_id, at_us, currency, amount) in events.items()]
    for refunds in (False, True):  # the payments first, in their instants' order
        insert_events(connection, sorted((event for event in made if (event.type == "refund") == refunds),
                                         key=lambda event: event.occurred_at_us))


def insert_event(connection, event: revenue.RevenueEvent, status: str = "posted") -> None:
    """`event` stored by raw SQL as received at its instant, with its request hash, saying `status`."""
    insert_events(connection, [event], status)


EVENTS_A_STATEMENT = 500  # within PostgreSQL's 65,535 parameters a statement, and SQLite's 32,766


def insert_events(connection, events: list[revenue.RevenueEvent], status: str = "posted") -> None:
    """`insert_event` of each of `events`, in their order, a few hundred to a statement (one a row
    made ten thousand statements' worth of triggers on PostgreSQL, a minute and more)."""
    for start in range(0, len(events), EVENTS_A_STATEMENT):
        chunk, parameters = events[start:start + EVENTS_A_STATEMENT], {}
        for n, event in enumerate(chunk):
            parameters |= {f"{name}_{n}": value for name, value in event._asdict().items()}
            parameters |= {f"hash_{n}": revenue.request_hash(event), f"status_{n}": status}
        rows = ", ".join("(" + ", ".join(f":{name}_{n}" for name in revenue.RevenueEvent._fields)
                         + f", :occurred_at_us_{n}, :hash_{n}, :status_{n})" for n in range(len(chunk)))
        connection.execute(sa.text(
            "INSERT INTO revenue_events (id, type, customer_id, invoice_id, currency, amount_minor, occurred_at_us,"
            f" recorded_at_us, request_hash, status) VALUES {rows}"), parameters)


def _aborted(connection) -> bool:
    """A PostgreSQL transaction a refused statement ended: its commit rolls back, and it runs nothing."""
    from psycopg import pq

    driver = connection.connection.driver_connection
    return connection.dialect.name == "postgresql" and driver.info.transaction_status == pq.TransactionStatus.INERROR


def _attributed(connection, customer_id: str, partner_id: str | None, at_us: int) -> None:
    if connection.execute(sa.text("SELECT 1 FROM attributions WHERE customer_id = :c"), {"c": customer_id}).first():
        return
    known = connection.execute(sa.text("SELECT id FROM partners ORDER BY id = :p DESC, id LIMIT 1"),
                               {"p": partner_id}).scalar()
    assert known is not None, f"no partner to attribute made-up customer {customer_id!r} to"
    if not connection.execute(sa.text("SELECT 1 FROM customers WHERE id = :c"), {"c": customer_id}).first():
        connection.execute(sa.text("INSERT INTO customers (id, created_at_us) VALUES (:c, :at)"),
                           {"c": customer_id, "at": at_us})
    connection.execute(sa.text(
        "INSERT INTO attributions (customer_id, partner_id, effective_from_us, source, recorded_at_us)"
        " VALUES (:c, :p, :at, 'manual', :at)"), {"c": customer_id, "p": known, "at": at_us})


# An event `verify` names: what it says of one `of_an_event` made up (`{key}-event`, or one of
# `MADE_UP`) is of postings the test wrote, not the program's.
NAMED_EVENT = re.compile(r"revenue event '([^']*)'")


def verified(session) -> list[Problem]:
    """`verify`'s problems, less those naming the events of `of_an_event`."""
    return besides_made_up_events(verify(session).problems)


def besides_made_up_events(problems: list[Problem]) -> list[Problem]:
    """`problems` less those naming a made-up event; a posting's content found altered is kept (its
    message names the event it was posted from too, but it is of the posting)."""
    def made_up_named(problem: Problem) -> bool:
        return problem.code != "content_altered" and any(
            event_id.endswith("-event") or event_id in MADE_UP for event_id in NAMED_EVENT.findall(problem.message))
    return [problem for problem in problems if not made_up_named(problem)]


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
