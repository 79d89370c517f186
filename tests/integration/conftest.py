"""Fixtures shared by the integration tests: a journal with one accrual, and a partner enrolled for payouts."""

import contextlib
from unittest import mock

import pytest

from ledger import accounts as chart
from ledger import journal, partners, plans, revenue, statement_bodies
from migrations.earlier import revision
from tests import program


@pytest.fixture
def booked(database):
    """A journal holding one balanced accrual of northwind (so both accounts exist), with northwind
    enrolled (postings naming it name a partner of the program), and its raw engine."""
    with database.transaction() as session:
        program.enrol(session, "northwind")
        journal.post(session, [journal.transfer("accrual", chart.EXPENSE_COMMISSION, chart.pending("northwind"),
                                                "USD", 100, effective_at_us=5, idempotency_key="a1",
                                                partner_id="northwind", **program.of_an_event("a1", "northwind"))])
    return database


@pytest.fixture
def enrolled(database):
    """northwind on a plan with a USD 50.00 minimum payout."""
    with database.transaction() as session:
        plans.create_plan(session, "standard", "Standard", {
            "rates": [{"from_month": 1, "rate": "0.20"}], "duration_months": None, "hold_days": 30,
            "min_payout": [{"amount": "50.00", "currency": "USD"}], "negative_balance": "carry_forward"})
        partners.create_partner(session, "northwind", "Northwind", "msp", "standard")
    return database


@pytest.fixture
def disputed(database):
    """northwind's customer acme pays inv-1 (northwind accrues, globex its override), charges it
    back and wins the dispute (both restored); globex-corp pays inv-2."""
    from ledger import revenue
    from tests import program

    with database.transaction() as session:
        program.seed(session)
        revenue.ingest(session, [program.paid("e1", "acme", "inv-1", 50_000, "2026-01-10"),
                                 program.paid("e2", "acme", "inv-1", 50_000, "2026-01-20", kind="chargeback"),
                                 program.paid("e3", "acme", "inv-1", 50_000, "2026-01-25", kind="chargeback_reversed"),
                                 program.paid("e4", "globex-corp", "inv-2", 20_000, "2026-01-12")])
    return database


@pytest.fixture
def written_before_salts(monkeypatch):
    """Post as the code before migration 0028 did, with no `salt` column and a chain hash without
    one: for tests that write books at an older revision of the schema, then migrate them."""
    header_row = journal._header_row
    monkeypatch.setattr(journal, "_HEADER_COLUMNS", tuple(c for c in journal._HEADER_COLUMNS if c != "salt"))
    monkeypatch.setattr(journal, "_header_row", lambda *args: header_row(*args)[:-1])
    monkeypatch.setattr(journal, "new_salt", lambda: None)


@pytest.fixture
def closed_before_bodies(monkeypatch):
    """Close as the code before migration 0035 did, writing no statement bodies: for tests that
    close periods at an older revision of the schema, then migrate them."""
    monkeypatch.setattr(statement_bodies, "store", lambda session, period: 0)


@pytest.fixture
def posting_before_claims_taken(monkeypatch):
    """Post as the code before migration 0038 did, reading no CPA claims taken (no claim is taken
    unless a payment is delivered after a later-dated one): for tests that post at an older revision
    of the schema, then migrate it."""
    monkeypatch.setattr(revenue, "_claims_taken_reads", lambda session, customer_ids: [])


def earning_rule_off(connection) -> str:
    """Turn off on `connection` the database's rule of migrations 0047 and 0048 over commissions (in
    its transaction); return the statement that makes it again as it stood. SQLite drops its trigger;
    PostgreSQL puts back the statement function as it stood before 0047."""
    if connection.dialect.name == "sqlite":
        trigger = "trg_journal_transactions_earning_posted"
        made = connection.exec_driver_sql(f"SELECT sql FROM sqlite_master WHERE name = '{trigger}'").scalar_one()
        connection.exec_driver_sql(f"DROP TRIGGER {trigger}")
        return made
    made = connection.exec_driver_sql(  # with its settings
        "SELECT pg_get_functiondef('journal_transactions_seal'::regproc)").scalar_one()
    earnings = revision("0047_earnings_and_writeoffs_in_their_accounts.py")
    connection.exec_driver_sql(earnings.seal_function(extended=False))
    connection.exec_driver_sql(f"ALTER FUNCTION journal_transactions_seal() {earnings.SEAL_SETTINGS}")
    return made


@contextlib.contextmanager
def commissions_as_before_0047(database):
    """Post commissions as before migrations 0047 and 0048 held them to their accounts and to one
    credit (Python's check and the database's rule off until the block ends, each change committed):
    for books holding rows of an older revision, which the service reads as it reads any."""
    with database.engine.begin() as connection:
        made = earning_rule_off(connection)
    try:
        with mock.patch.object(journal, "_PLACED", {}):
            yield
    finally:
        with database.engine.begin() as connection:
            connection.exec_driver_sql(made)


def second_writer_behind_first(database, first, second):
    """PostgreSQL: run `first(session)` in a transaction, and while it is open start `second(session)`
    in another (a thread), wait until that one waits for a lock, then commit the first. Returns what
    the second returned, or the exception it raised: how a writer fares that raced another's commit."""
    import threading

    outcome: dict = {}

    def run_second() -> None:
        try:
            with database.transaction() as session:
                outcome["value"] = second(session)
        except Exception as error:  # noqa: BLE001 (the test looks at it)
            outcome["error"] = error

    worker = threading.Thread(target=run_second)
    with database.transaction() as session:
        first(session)
        worker.start()
        assert one_waits(database, worker), "the second writer never waited for the first"
    worker.join(timeout=60)
    assert not worker.is_alive()
    return outcome.get("error", outcome.get("value"))


def one_waits(database, worker) -> bool:
    """PostgreSQL: whether a session comes to wait for a lock (at most 30 s), before `worker` (a
    thread) ends; False when it ends without waiting."""
    import time

    with database.engine.connect() as watcher:
        for _ in range(3000):
            if watcher.exec_driver_sql("SELECT count(*) FROM pg_locks WHERE NOT granted").scalar_one():
                return True
            if not worker.is_alive():
                return False
            watcher.rollback()
            time.sleep(0.01)
    return False


def with_status_and_plan(connection, partner_id: str, plan_id: str) -> None:
    """Give a partner a test wrote past Python its first status (active) and plan, from the
    beginning, as `partners.create_partner` gives each partner: migration 0060 asks for both by the
    commit."""
    import sqlalchemy as sa

    connection.execute(sa.text("INSERT INTO partner_statuses (partner_id, status, effective_at_us, recorded_at_us)"
                               " VALUES (:partner, 'active', 0, 1)"), {"partner": partner_id})
    connection.execute(sa.text("INSERT INTO partner_plans (partner_id, plan_id, effective_from_us, recorded_at_us)"
                               " VALUES (:partner, :plan, 0, 1)"), {"partner": partner_id, "plan": plan_id})


def chain_due(connection) -> None:
    """Chain the facts a raw writer inserted in this transaction, as the service does with each
    (`ledger.program_chain.chain`), table by table in the chain's order: a test that writes facts
    past Python, to prove the database's other rules, commits them (migration 0053 asks each for its
    row of the chain by the commit)."""
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from ledger import program_chain
    from ledger.schema import metadata

    if not sa.inspect(connection).has_table("program_chain_due"):  # books below 0053
        return
    due = connection.execute(sa.text("SELECT fact_table, fact_id FROM program_chain_due")).all()
    facts = []
    for table_name, fact_id in sorted(due, key=lambda row: (program_chain.CHAINED_TABLES.index(row[0]), row[1])):
        column = metadata.tables[table_name].c[program_chain.key_column(table_name)]
        key = fact_id if isinstance(column.type, sa.String) else int(fact_id)
        facts.append((table_name, connection.execute(sa.select(column.table).where(column == key)).one()._mapping))
    program_chain.chain(Session(bind=connection), facts)
