"""A partner is enrolled with a status and a plan by the commit, for a writer that goes around
Python (migration 0060): `partners.create_partner` writes the three rows in one transaction, and a
partner written without either was accepted, earned nothing on its customers' payments and read
back with no status and no plan. `revshare verify` names one written past the rule. Each refusal
has a control beside it that the same rule accepts."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from ledger import partners, revenue
from ledger.db import Database
from ledger.verify import verify
from tests import program
from tests.integration.conftest import chain_due
from tests.integration.test_database_guards import refused, refused_without_recursive_triggers
from tests.integration.test_database_rules import accepted
from tests.integration.test_migrations import schema_code_of
from tests.integration.test_periods_payouts_database import at
from tests.integration.test_tamper_evidence import problems, without_trigger

PARTNER = ("INSERT INTO partners (id, name, type, parent_id, parent_depth, depth, created_at_us)"
           " VALUES (:id, 'Ghost', 'msp', NULL, NULL, 1, 1)")
STATUS = ("INSERT INTO partner_statuses (partner_id, status, effective_at_us, recorded_at_us)"
          " VALUES (:id, 'active', 0, 1)")
PLAN = ("INSERT INTO partner_plans (partner_id, plan_id, effective_from_us, recorded_at_us)"
        " VALUES (:id, 'standard', 0, 1)")
NO_STATUS = "FOREIGN KEY constraint failed|fk_partner_enrolments_status_partner_statuses"
NO_PLAN = "FOREIGN KEY constraint failed|fk_partner_enrolments_plan_partner_plans"
WRITTEN_ONCE = "the first status and plan of a partner are written once"
NEVER_DELETED = "partner_enrolments: rows are never deleted"


@pytest.fixture
def seeded(database):
    """globex and its child northwind, each made by the service, on the plans `parent` and
    `standard`; northwind suspended from March."""
    with database.transaction() as session:
        program.seed(session)
        partners.set_status(session, "northwind", "suspended", at("2026-03-01"))
    return database


def written(*statements: str, partner_id: str = "ghost"):
    def write(connection):
        for statement in statements:
            connection.execute(sa.text(statement), {"id": partner_id})
        chain_due(connection)  # chained as the service chains its facts
    return write


def enrolments(database) -> dict[str, tuple[int, int]]:
    with database.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT partner_id, status_id, plan_id FROM partner_enrolments").all()
    return {partner_id: (status_id, plan_id) for partner_id, status_id, plan_id in rows}


def first_facts(database) -> dict[str, tuple[int, int]]:
    """Each partner's first status and first plan, by id, as the rows hold them."""
    with database.engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT p.id, (SELECT min(s.id) FROM partner_statuses s WHERE s.partner_id = p.id),"
            " (SELECT min(l.id) FROM partner_plans l WHERE l.partner_id = p.id) FROM partners p").all()
    return {partner_id: (status_id, plan_id) for partner_id, status_id, plan_id in rows}


def stored(database, partner_id: str) -> bool:
    with database.engine.connect() as connection:
        return connection.execute(sa.text("SELECT count(*) FROM partners WHERE id = :id"), {"id": partner_id}).scalar()


@pytest.mark.parametrize("facts, match", [((), f"{NO_STATUS}|{NO_PLAN}"), ((STATUS,), NO_PLAN), ((PLAN,), NO_STATUS)],
                         ids=["neither", "a status alone", "a plan alone"])
def test_a_partner_without_a_status_or_a_plan_is_refused_at_the_commit(seeded, facts, match):
    refused(seeded, written(PARTNER, *facts), match)
    assert not stored(seeded, "ghost")
    accepted(seeded, written(PARTNER, STATUS, PLAN))  # the control: with both
    assert stored(seeded, "ghost")


AHEAD = 30 * 86_400 * 1_000_000  # a month past the partner's creation (created at 1)
LATE = "the first status and plan of a partner start by its enrolment"


@pytest.mark.parametrize("facts", [(STATUS.replace("'active', 0", f"'active', {AHEAD}"), PLAN),
                                   (STATUS, PLAN.replace("'standard', 0", f"'standard', {AHEAD}"))],
                         ids=["status ahead", "plan ahead"])
def test_a_partners_first_status_and_plan_start_by_its_creation(seeded, facts):
    """A partner whose first facts were dated a month ahead had no status and no plan until then,
    earned nothing, and could not be mended: a change starts after the latest, and withdrawing a
    first fact is refused."""
    refused(seeded, written(PARTNER, *facts), LATE)
    assert not stored(seeded, "ghost")
    accepted(seeded, written(PARTNER, STATUS, PLAN))  # the control: from the beginning, as the service has it
    with seeded.transaction() as session:  # and a later change dated ahead is the partner's to have
        partners.set_status(session, "ghost", "suspended", at("2026-02-01") + AHEAD)
    assert enrolments(seeded)["ghost"] == first_facts(seeded)["ghost"]


def test_each_partner_names_its_first_status_and_plan_however_it_was_written(seeded):
    """The service's partners, and one written by raw SQL with its plan before its status; a later
    status or plan change leaves the first named."""
    accepted(seeded, written(PARTNER, PLAN, STATUS))
    with seeded.transaction() as session:
        partners.set_status(session, "ghost", "suspended", at("2026-02-01"))
        partners.change_plan(session, "ghost", "parent", at("2026-02-01"))
    found = enrolments(seeded)
    assert set(found) == {"globex", "northwind", "ghost"}
    assert found == first_facts(seeded)
    assert found["northwind"] != found["globex"] != found["ghost"]


def test_a_partner_is_not_enrolled_with_another_partners_status_and_plan(seeded):
    """Each id is a foreign key to the partner's own (partner, id) of its table."""
    def borrowing(connection):
        written(PARTNER)(connection)
        status_id, plan_id = first_facts(seeded)["northwind"]
        connection.execute(sa.text("UPDATE partner_enrolments SET status_id = :status, plan_id = :plan"
                                   " WHERE partner_id = 'ghost'"), {"status": status_id, "plan": plan_id})
    refused(seeded, borrowing, f"{NO_STATUS}|{NO_PLAN}")
    assert not stored(seeded, "ghost")


@pytest.mark.parametrize("change", [
    "UPDATE partner_enrolments SET status_id = (SELECT max(id) FROM partner_statuses) WHERE partner_id = 'northwind'",
    "UPDATE partner_enrolments SET partner_id = 'globex' WHERE partner_id = 'northwind'",
], ids=["another status", "another partner"])
def test_a_row_is_written_once(seeded, change):
    before = enrolments(seeded)
    refused(seeded, lambda connection: connection.exec_driver_sql(change), WRITTEN_ONCE)
    assert enrolments(seeded) == before
    accepted(seeded, lambda connection: connection.exec_driver_sql(  # the control: an update changing nothing
        "UPDATE partner_enrolments SET status_id = status_id, plan_id = plan_id WHERE partner_id = 'northwind'"))
    assert enrolments(seeded) == before


def test_a_row_is_never_deleted(seeded):
    before = enrolments(seeded)
    refused(seeded, lambda connection: connection.exec_driver_sql(
        "DELETE FROM partner_enrolments WHERE partner_id = 'northwind'"), NEVER_DELETED)
    assert enrolments(seeded) == before and set(before) == {"globex", "northwind"}


def test_postgresql_refuses_a_truncate(postgres_database):
    with postgres_database.transaction() as session:
        program.seed(session)
    refused(postgres_database, lambda connection: connection.exec_driver_sql("TRUNCATE partner_enrolments CASCADE"),
            NEVER_DELETED)
    assert set(enrolments(postgres_database)) == {"globex", "northwind"}


def test_sqlite_refuses_a_replace_of_a_partners_row(sqlite_database):
    with sqlite_database.transaction() as session:
        program.seed(session)
    refused_without_recursive_triggers(
        sqlite_database, "INSERT OR REPLACE INTO partner_enrolments (partner_id, status_id, plan_id) "
                         "SELECT 'northwind', status_id, plan_id FROM partner_enrolments WHERE partner_id = 'globex'",
        "its unique key partner_enrolments.partner_id is taken")
    assert enrolments(sqlite_database) == first_facts(sqlite_database)


@pytest.mark.parametrize("facts", [(), (STATUS.replace("'active', 0", f"'active', {AHEAD}"), PLAN)],
                         ids=["neither", "a status ahead"])
def test_verify_names_a_partner_written_past_the_rule_and_the_service_posts_on(seeded, facts):
    """The rule's trigger dropped for one transaction: the partner has no row, nothing asks for its
    status and plan, and `verify` names it, and nothing else."""
    with without_trigger(seeded, "partners", "trg_partners_enrolment_due") as session:
        written(PARTNER, *facts)(session.connection())
    assert stored(seeded, "ghost") and "ghost" not in enrolments(seeded)
    assert problems(seeded) == {(None, "partner_unenrolled")}
    with seeded.transaction() as session:
        revenue.ingest(session, [program.paid("e1", "acme", "inv-1", 50_000, "2026-01-10")])
    assert problems(seeded) == {(None, "partner_unenrolled")}


def test_0060_enrols_the_partners_stored_before_it_and_goes_down_as_0059_had_them(empty_url):
    """The first status and plan of each partner stored with both, by id; a partner stored without
    either keeps no row (verify names it). Down to 0059, every trigger and function is as it was,
    and up again the rows are the same."""

    from ledger.migrate import downgrade, upgrade

    upgrade(empty_url, "0059")
    database = Database(empty_url)
    try:
        with database.transaction() as session:
            program.seed(session)
            partners.set_status(session, "northwind", "suspended", at("2026-03-01"))
            partners.change_plan(session, "globex", "standard", at("2026-03-01"))
        with database.engine.begin() as connection:
            written(PARTNER, STATUS, partner_id="ghost")(connection)  # no plan: 0059 took it
        at_0059 = schema_code_of(database)
        upgrade(empty_url)
        found = enrolments(database)
        first = first_facts(database)
        assert found == {partner_id: first[partner_id] for partner_id in ("globex", "northwind")}
        assert problems(database) == {(None, "partner_unenrolled")}
        downgrade(empty_url, "0059")
        assert schema_code_of(database) == at_0059
        upgrade(empty_url)
        assert enrolments(database) == found
    finally:
        database.dispose()


def test_verify_names_a_partner_key_written_past_its_rule_for_a_partner_not_enrolled(seeded):
    """A key naming a partner that does not exist (migration 0029 refuses it; the schema declares no
    foreign key there), written with the rule's trigger dropped for one transaction: `verify` names
    the key, and not the key of an enrolled partner written beside it."""
    key = ("INSERT INTO api_keys (id, key_hash, role, partner_id, created_at_us)"
           " VALUES (:id, :hash, 'partner', :partner, 1)")
    with without_trigger(seeded, "api_keys", "trg_api_keys_partner_known") as session:
        session.execute(sa.text(key), {"id": "key_ghost", "hash": "a" * 64, "partner": "ghost"})
        session.execute(sa.text(key), {"id": "key_northwind", "hash": "b" * 64, "partner": "northwind"})
        chain_due(session.connection())  # chained as the service chains its keys
    assert problems(seeded) == {(None, "key_partner_not_enrolled")}
    with seeded.reader() as session:
        [problem] = verify(session).problems
    assert problem.message == "API key 'key_ghost' names partner 'ghost', which is not enrolled"
