"""The database moves the partner program's revision with every row added to the program tables
(migration 0010), so each process's cached Program is replaced as soon as the program changes, even
when Python is bypassed; every other write that could bring back a revision already seen is
refused (SQLite lets a bare "add one" through: it only costs the caches a reload)."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from ledger import customers, partners, plans, revenue
from ledger.db import Database
from ledger.errors import Conflict
from ledger.instants import parse_date
from tests.integration.conftest import second_writer_behind_first
from tests.integration.test_database_guards import refused, refused_without_recursive_triggers
from tests.program import PLAN, at, paid, seed
from tests.integration.conftest import chain_due

REFUSED = "program_revision: the revision is kept by the database"


def revision(database: Database) -> int:
    with database.engine.connect() as connection:
        return connection.exec_driver_sql("SELECT revision FROM program_revision").scalar_one()


def commissions(database: Database, event: revenue.RevenueEvent) -> list[tuple[str, str, int]]:
    with database.transaction() as session:
        [result] = revenue.ingest(session, [event])
    return [(line.partner_id, line.kind, line.amount_minor) for line in result.commissions]


@pytest.fixture
def seeded(database):
    with database.transaction() as session:
        seed(session)
    return database


@pytest.mark.parametrize("change", [
    lambda session: plans.create_plan(session, "premium", "Premium", PLAN),  # a plan version
    lambda session: plans.add_version(session, "standard", {**PLAN, "hold_days": 0}, at("2026-06-01")),
    lambda session: partners.create_partner(session, "initech", "Initech", "msp", "standard"),  # three rows
    lambda session: partners.set_status(session, "globex", "suspended", at("2026-02-01")),
    lambda session: partners.change_plan(session, "northwind", "parent", at("2026-03-01")),
], ids=["plan", "plan-version", "partner", "status", "partner-plan"])
def test_every_program_change_moves_the_revision(seeded, change):
    before = revision(seeded)
    with seeded.transaction() as session:
        change(session)
    assert revision(seeded) > before


RAW_INSERTS = {  # one row into each program table, behind Python's back
    "plan_versions": "INSERT INTO plan_versions (plan_id, version, effective_from_us, terms, created_at_us) "
                     "SELECT plan_id, 2, effective_from_us + 1, terms, created_at_us FROM plan_versions "
                     "WHERE plan_id = 'standard'",
    # a partner commits with its first status and plan (migration 0060): three rows
    "partners": "INSERT INTO partners (id, name, type, depth, created_at_us)"
                " VALUES ('initech', 'Initech', 'msp', 1, 0);"
                "INSERT INTO partner_statuses (partner_id, status, effective_at_us, recorded_at_us)"
                " VALUES ('initech', 'active', 0, 0);"
                "INSERT INTO partner_plans (partner_id, plan_id, effective_from_us, recorded_at_us)"
                " VALUES ('initech', 'standard', 0, 0)",
    "partner_statuses": "INSERT INTO partner_statuses (partner_id, status, effective_at_us, recorded_at_us) "
                        "VALUES ('globex', 'suspended', 5, 5)",
    "partner_plans": "INSERT INTO partner_plans (partner_id, plan_id, effective_from_us, recorded_at_us) "
                     "VALUES ('northwind', 'parent', 5, 5)",
}


@pytest.mark.parametrize("table", sorted(RAW_INSERTS))
def test_a_row_inserted_into_any_program_table_moves_the_revision_by_one(seeded, table):
    before = revision(seeded)
    statements = RAW_INSERTS[table].split(";")
    with seeded.engine.begin() as connection:
        for statement in statements:
            assert connection.exec_driver_sql(statement).rowcount == 1
        chain_due(connection)
    assert revision(seeded) == before + len(statements)


def test_a_rolled_back_change_leaves_the_revision_and_postings_do_not_move_it(seeded):
    before = revision(seeded)
    with seeded.writer() as session:
        partners.set_status(session, "globex", "terminated", at("2026-01-01"))
        session.rollback()
    commissions(seeded, paid("e1", "acme", "inv-1", 10_000, "2026-02-10"))
    assert revision(seeded) == before


def test_a_program_row_written_behind_pythons_back_reaches_the_cached_program(seeded):
    assert commissions(seeded, paid("e1", "acme", "inv-1", 10_000, "2026-02-10")) == [
        ("northwind", "accrual", 2_000), ("globex", "override", 200)]
    assert seeded.shared["program"]["program"].knows("globex")  # the next ingest could answer from it
    with seeded.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO partner_statuses (partner_id, status, effective_at_us, recorded_at_us) "
            f"VALUES ('globex', 'terminated', {at('2026-02-15')}, {at('2026-02-15')})")
        chain_due(connection)
    assert commissions(seeded, paid("e2", "acme", "inv-2", 10_000, "2026-03-10")) == [
        ("northwind", "accrual", 2_000)]


def direct_writes(postgres: bool) -> list[str]:
    writes = [
        "UPDATE program_revision SET revision = revision - 1",
        "UPDATE program_revision SET revision = 0",
        "UPDATE program_revision SET revision = revision",
        "DELETE FROM program_revision",
        "INSERT INTO program_revision (id, revision) VALUES (2, 0)",
        "UPDATE program_revision SET revision = revision + 2",  # anything but one more
    ]
    if postgres:
        writes += ["TRUNCATE program_revision", "UPDATE program_revision SET revision = revision + 1"]
    else:
        writes += ["INSERT OR REPLACE INTO program_revision (id, revision) VALUES (1, 0)",
                   "UPDATE program_revision SET id = 2, revision = revision + 1"]
    return writes


@pytest.mark.parametrize("number", range(8))
def test_direct_writes_that_could_make_a_stale_program_current_are_refused(seeded, number):
    before = revision(seeded)
    statement = direct_writes(seeded.engine.dialect.name == "postgresql")[number]
    refused(seeded, lambda connection: connection.exec_driver_sql(statement), REFUSED)
    assert revision(seeded) == before


def test_sqlite_refuses_a_replaced_revision_with_recursive_triggers_off(sqlite_database):
    # INSERT OR REPLACE deletes the old row unguarded without recursive triggers: the insert guard
    # refuses it before that.
    with sqlite_database.transaction() as session:
        seed(session)
    refused_without_recursive_triggers(
        sqlite_database, "INSERT OR REPLACE INTO program_revision (id, revision) VALUES (1, 0)", REFUSED)
    assert revision(sqlite_database) > 0


@pytest.mark.postgres
def test_concurrent_program_changes_each_move_the_revision_on_postgresql(postgres_database):
    # The second writer waits for the first's row lock, then adds one to the committed revision:
    # no change is lost, so no two committed programs share a revision.
    database = postgres_database
    with database.transaction() as session:
        seed(session)
    before = revision(database)
    second_done = threading.Event()

    def second() -> None:
        with database.transaction() as session:
            partners.set_status(session, "northwind", "suspended", at("2026-03-01"))
        second_done.set()

    with database.transaction() as session:
        partners.set_status(session, "globex", "suspended", at("2026-02-01"))
        worker = threading.Thread(target=second)
        worker.start()
        assert not second_done.wait(0.5)  # queued behind this transaction's row lock
    worker.join(timeout=30)
    assert second_done.is_set()
    assert revision(database) == before + 2


@pytest.mark.postgres
def test_a_status_change_racing_a_termination_is_refused_on_postgresql_termination_is_final(postgres_database):
    # At READ COMMITTED the second writer read the statuses before the termination committed, passed
    # the checks (Python's and the database's guard alike) and then waited only for the revision row:
    # it recorded a suspension after the termination. Program writers now queue before they read.
    with postgres_database.transaction() as session:
        seed(session)
    outcome = second_writer_behind_first(
        postgres_database,
        lambda session: partners.set_status(session, "northwind", "terminated", at("2026-03-01")),
        lambda session: partners.set_status(session, "northwind", "suspended", at("2026-04-01")))
    assert isinstance(outcome, Conflict) and "termination is final" in str(outcome)
    with postgres_database.reader() as session:
        rows = session.execute(sa.text("SELECT status FROM partner_statuses WHERE partner_id = 'northwind' "
                                       "ORDER BY id")).scalars().all()
    assert rows == ["active", "terminated"]


@pytest.mark.postgres
@pytest.mark.parametrize("later, earlier, field", [
    (lambda session: partners.set_status(session, "northwind", "suspended", at("2026-05-01")),
     lambda session: partners.set_status(session, "northwind", "suspended", at("2026-04-01")), "effective_at"),
    (lambda session: partners.change_plan(session, "northwind", "parent", at("2026-05-01")),
     lambda session: partners.change_plan(session, "northwind", "standard", at("2026-04-01")), "effective_from"),
], ids=["status", "plan"])
def test_a_change_racing_a_later_one_is_refused_on_postgresql(postgres_database, later, earlier, field):
    with postgres_database.transaction() as session:
        seed(session)
    outcome = second_writer_behind_first(postgres_database, later, earlier)
    assert isinstance(outcome, Conflict) and field in outcome.fields


@pytest.mark.postgres
@pytest.mark.parametrize("create", [
    lambda session: plans.create_plan(session, "premium", "Premium", PLAN),
    lambda session: partners.create_partner(session, "initech", "Initech", "msp", "standard"),
    lambda session: customers.attribute(session, "hooli", "northwind", parse_date("2026-01-01", field="d"), "manual"),
], ids=["plan", "partner", "attribution"])
def test_the_same_fact_recorded_twice_at_once_is_a_conflict_not_a_database_error_on_postgresql(
        postgres_database, create):
    # Both writers found the id free; the second then failed on the unique key: a 500 over HTTP.
    with postgres_database.transaction() as session:
        seed(session)
    outcome = second_writer_behind_first(postgres_database, create, create)
    assert isinstance(outcome, (Conflict, tuple)), outcome
    if isinstance(outcome, tuple):  # the attribution repeated: answered as the current one
        assert outcome[1] is False


@pytest.mark.postgres
def test_a_customer_attributed_to_two_partners_at_once_keeps_the_first_on_postgresql(postgres_database):
    with postgres_database.transaction() as session:
        seed(session)
    day = parse_date("2026-01-01", field="d")
    outcome = second_writer_behind_first(
        postgres_database,
        lambda session: customers.attribute(session, "hooli", "northwind", day, "manual"),
        lambda session: customers.attribute(session, "hooli", "globex", day, "manual"))
    assert isinstance(outcome, Conflict) and "attributed to partner 'northwind'" in str(outcome)
