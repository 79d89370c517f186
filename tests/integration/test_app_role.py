"""On PostgreSQL the service's role can read and append, and nothing more: UPDATE, DELETE and
TRUNCATE of journal data are refused by privilege before any trigger runs."""

import pytest
import sqlalchemy as sa

from ledger import accounts as chart
from ledger import journal, partners, payouts, periods, plans, revenue, statement_bodies
from ledger.balances import partner_balances
from ledger.db import Database
from ledger.statements import statement, statement_json, to_json
from tests.integration.test_database_guards import head_hash, insert_header, insert_line, refused
from tests import program
from tests.program import PLAN, at

pytestmark = pytest.mark.postgres


@pytest.fixture
def app_database(postgres_database):
    with postgres_database.engine.begin() as connection:
        connection.exec_driver_sql("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'svc') "
                                   "THEN CREATE ROLE svc LOGIN IN ROLE revshare_app; END IF; END $$")
    url = postgres_database.url.replace("postgres@", "svc@", 1)
    database = Database(url)
    yield database
    database.dispose()


def test_the_application_role_posts_and_reads(app_database):
    with app_database.transaction() as session:
        program.enrol(session, "p1")
        posted = payouts.adjust(session, "p1", "available", 100, "USD", "opening", effective_at_us=1)
    with app_database.reader() as session:
        assert journal.load_draft(session, posted.id).lines[0].amount_minor == 100
        # The running totals are written by the database's trigger, which the role may not do itself.
        assert partner_balances(session, "p1") == {"USD": (0, 100)}


def test_the_application_role_changes_the_program_and_the_database_moves_its_revision(app_database):
    # The revision is written by the database's trigger, which the role may not do itself.
    with app_database.reader() as session:
        before = session.execute(sa.text("SELECT revision FROM program_revision")).scalar_one()
    with app_database.transaction() as session:
        plans.create_plan(session, "standard", "Standard", PLAN)
        partners.create_partner(session, "p2", "P2", "msp", "standard")
    with app_database.reader() as session:
        assert session.execute(sa.text("SELECT revision FROM program_revision")).scalar_one() > before


def test_the_application_role_withdraws_a_change_dated_ahead_which_the_database_removes_as_the_owner(app_database):
    with app_database.transaction() as session:
        plans.create_plan(session, "standard", "Standard", PLAN)
        partners.create_partner(session, "p4", "P4", "msp", "standard")
        [change] = partners.set_status(session, "p4", "terminated", journal.now_us() + 86_400_000_000).scheduled
        before = session.execute(sa.text("SELECT revision FROM program_revision")).scalar_one()
    with app_database.transaction() as session:
        assert partners.withdraw_change(session, "p4", change.id).scheduled == ()
    with app_database.reader() as session:
        assert session.execute(sa.text("SELECT count(*) FROM partner_statuses WHERE partner_id = 'p4'")
                               ).scalar() == 1
        assert session.execute(sa.text("SELECT revision FROM program_revision")).scalar_one() > before


def test_the_application_role_closes_a_period_storing_its_statement_documents_and_bodies(app_database):
    with app_database.transaction() as session:
        program.enrol(session, "p3")
        payouts.adjust(session, "p3", "available", 250, "USD", "opening", effective_at_us=at("2026-01-10"))
        periods.close_period(session, "2026-01", now_us=at("2026-02-01"))
    with app_database.reader() as session:
        [section] = statement(session, "p3", "2026-01").currencies
        assert [(line.kind, line.available_minor) for line in section.lines] == [("adjustment", 250)]
        assert session.execute(sa.text("SELECT count(*) FROM statement_documents WHERE partner_id = 'p3'")
                               ).scalar() == 1
        # and the lines as the API writes them, which it may insert, and serves
        assert statement_bodies.stored(session, "p3", "2026-01").keys() == {"USD"}
        assert statement_json(session, "p3", "2026-01") == to_json(statement(session, "p3", "2026-01"))


@pytest.mark.parametrize("function", [
    "period_closes_store_statement_documents", "journal_lines_add_to_totals", "program_revision_bump",
    "program_withdrawals_held"])
def test_the_application_role_may_not_attach_the_databases_own_writers_to_a_table_of_its_own(app_database, function):
    # They run as their owner: attached to a table of the role's own, they would write what the
    # role may only read (statement documents for a month still open, running totals, the revision).
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        with app_database.engine.begin() as connection:
            connection.exec_driver_sql("CREATE TEMP TABLE mine (starts_at_us bigint, ends_at_us bigint)")
            connection.exec_driver_sql(f"CREATE TRIGGER mine_written AFTER INSERT ON mine "
                                       f"FOR EACH ROW EXECUTE FUNCTION {function}()")


def test_the_application_role_may_not_create_in_the_public_schema(app_database):
    # The functions that run as their owner name tables and operators without a schema: a role that
    # could create an operator in `public` could have them run it (PostgreSQL 15 and later refuse
    # CREATE there to PUBLIC by default; see the README for older ones).
    with app_database.reader() as session:
        assert session.execute(sa.text("SELECT has_schema_privilege('public', 'CREATE')")).scalar() is False
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied for schema public"):
        with app_database.engine.begin() as connection:
            connection.exec_driver_sql("CREATE FUNCTION public.mine(int) RETURNS int LANGUAGE sql AS 'SELECT 1'")


@pytest.mark.parametrize("statement", [
    "UPDATE journal_lines SET amount_minor = 1",
    "DELETE FROM journal_transactions",
    "TRUNCATE journal_lines CASCADE",
    "UPDATE revenue_events SET status = 'posted'",
    "DELETE FROM period_snapshots",
    "UPDATE accounts SET name = 'x'",
    "UPDATE account_totals SET debit_minor = 0",
    "INSERT INTO account_totals (account_id, currency, debit_minor, credit_minor, last_line_id, latest_effective_at_us) "
    "VALUES (1, 'GBP', 0, 0, 1, 1)",
    "UPDATE program_revision SET revision = revision + 1",
    "UPDATE statement_documents SET currency = 'EUR'",
    "INSERT INTO statement_documents (period, partner_id, currency, lines) VALUES ('2026-01', 'p1', 'USD', '[]')",
    "DELETE FROM statement_documents",
    "UPDATE statement_bodies SET pending_minor = 0",
    "DELETE FROM statement_bodies",
    "TRUNCATE statement_bodies",
    "DELETE FROM partner_statuses",
    "DELETE FROM partner_plans",
    "DELETE FROM plan_versions",
    "UPDATE program_withdrawals SET value = 'x'",
    "DELETE FROM program_withdrawals",
])
def test_the_application_role_may_not_rewrite_the_books(app_database, statement):
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        with app_database.engine.begin() as connection:
            connection.exec_driver_sql(statement)


def test_a_temporary_table_does_not_stand_in_for_the_books_in_the_guards(app_database):
    # PostgreSQL searches a session's temporary schema first unless the search path names it: an
    # empty `period_closes` of the role's own must not open a closed month to a raw posting.
    with app_database.transaction() as session:
        program.enrol(session, "p4")
        payouts.adjust(session, "p4", "available", 100, "USD", "opening", effective_at_us=at("2026-01-10"))
        periods.close_period(session, "2026-01", now_us=at("2026-02-01"))

    def into_january(connection):
        connection.exec_driver_sql("CREATE TEMP TABLE period_closes (ends_at_us bigint)")
        ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
        insert_line(connection, 2, ids[chart.EXPENSE_ADJUSTMENT], "D", 100, at=at("2026-01-20"))
        insert_line(connection, 2, ids[chart.available("p4")], "C", 100, at=at("2026-01-20"))
        insert_header(connection, 2, head_hash(connection), at=at("2026-01-20"), recorded=at("2026-02-02"))
    refused(app_database, into_january, "closed period")


def test_every_function_of_the_schema_runs_without_jit_compilation(postgres_database):
    # Migration 0037: before a table's first ANALYZE, the planner priced a guard's query over its
    # statement's rows past `jit_above_cost`, and compiling it took 0.4 s of a 100-release statement.
    with postgres_database.reader() as session:
        compiled = session.execute(sa.text(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public' AND NOT coalesce('jit=off' = ANY(p.proconfig), false) ORDER BY 1")).scalars().all()
    assert compiled == []


def test_no_function_of_the_schema_that_runs_as_its_owner_may_be_executed_by_every_role(postgres_database):
    # Migration 0052: 0040's withdrawal function was executable by PUBLIC (no ACL is PUBLIC's EXECUTE).
    with postgres_database.reader() as session:
        definers = dict(session.execute(sa.text(
            "SELECT p.proname, p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a "
            "WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' AND p.prosecdef")).all())
    assert len(definers) >= 5 and [name for name, public in definers.items() if public] == []


def test_every_function_of_the_schema_reads_it_before_temporary_objects(postgres_database):
    with postgres_database.reader() as session:
        unpinned = session.execute(sa.text(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public' AND NOT coalesce('search_path=public, pg_temp' = ANY(p.proconfig), false) "
            "ORDER BY 1")).scalars().all()
        assert session.execute(sa.text("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                                       "WHERE n.nspname = 'public'")).scalar() > 40
    assert unpinned == []


@pytest.mark.parametrize("command", ["serve", "scheduler"])
def test_the_server_and_the_scheduler_start_as_the_application_role(app_database, monkeypatch, command):
    # Both read the database's migration revision before they start, which the role may read.
    from click.testing import CliRunner

    from cli import server
    from cli.main import main
    from jobs import scheduler

    started = []
    monkeypatch.setattr(server, "run", started.append)
    monkeypatch.setattr(server, "unbindable", lambda host, port: None)  # (its own test)
    monkeypatch.setattr(scheduler, "run", started.append)
    result = CliRunner().invoke(main, [command], env={"REVSHARE_DATABASE_URL": app_database.url})
    assert result.exit_code == 0 and len(started) == 1, result.output
    assert "warning" not in result.output


@pytest.mark.parametrize("command", ["serve", "scheduler"])
def test_the_server_and_the_scheduler_warn_when_they_run_as_the_owner_who_could_drop_the_guards(
        postgres_database, monkeypatch, command):
    from click.testing import CliRunner

    from cli import server
    from cli.main import main
    from jobs import scheduler

    started = []
    monkeypatch.setattr(server, "run", started.append)
    monkeypatch.setattr(server, "unbindable", lambda host, port: None)  # (its own test)
    monkeypatch.setattr(scheduler, "run", started.append)
    result = CliRunner().invoke(main, [command], env={"REVSHARE_DATABASE_URL": postgres_database.url})
    assert result.exit_code == 0 and len(started) == 1, result.output
    assert "warning: the database role postgres may UPDATE the journal" in result.output
    assert "guard_" not in result.output  # every guard as the migrations made it


def ungranted_url(postgres_database) -> str:
    """The database's URL for a login role not granted `revshare_app`, made if it is not there."""
    with postgres_database.engine.begin() as connection:
        connection.exec_driver_sql("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ungranted') "
                                   "THEN CREATE ROLE ungranted LOGIN; END IF; END $$")
    return postgres_database.url.replace("postgres@", "ungranted@", 1)


def test_a_role_not_granted_the_application_role_is_told_the_grant_not_only_the_privilege(postgres_database):
    # Before `GRANT revshare_app TO ...`, or on a database restored where `revshare_app` did not exist
    # (pg_restore skipped its grants), PostgreSQL's own words named the table, not the fix.
    from click.testing import CliRunner

    from cli.main import main

    url = ungranted_url(postgres_database)
    for command in (["verify"], ["serve"], ["keys", "create", "--role", "admin"]):
        result = CliRunner().invoke(main, command, env={"REVSHARE_DATABASE_URL": url})
        assert result.exit_code == 2 and "permission denied for table" in result.output, result.output
        assert "`GRANT revshare_app TO ungranted`" in result.output, result.output


def test_migrating_as_the_application_role_names_the_migration_url_to_set(app_database, pg_cluster):
    # One URL, the service's role, for `revshare db upgrade` too: PostgreSQL 15 refuses it CREATE in
    # `public`, and said only that.
    from click.testing import CliRunner

    from cli.main import main
    from tests.conftest import drop_pg_database, new_pg_url

    empty = new_pg_url(pg_cluster, template=None)
    try:
        url = empty.replace("postgres@", "svc@", 1)
        result = CliRunner().invoke(main, ["db", "upgrade"], env={"REVSHARE_DATABASE_URL": url})
    finally:
        drop_pg_database(pg_cluster, empty)
    assert result.exit_code == 2 and "permission denied for schema public" in result.output, result.output
    assert "set REVSHARE_MIGRATION_DATABASE_URL" in result.output, result.output


def test_a_migration_role_without_createrole_is_told_to_get_it_or_have_the_role_made_first(app_database, capsys):
    # Migration 0005 creates `revshare_app` when it does not exist; a migration role without
    # CREATEROLE got "permission denied to create role" and nothing more.
    from cli.books import database_errors

    with pytest.raises(SystemExit) as stopped:
        with database_errors(app_database.url, migrating=True), app_database.engine.begin() as connection:
            connection.exec_driver_sql("CREATE ROLE revshare_probe NOLOGIN")
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "permission denied to create role" in error and "CREATEROLE" in error, error
    assert "`CREATE ROLE revshare_app NOLOGIN`" in error, error


def test_the_application_role_has_a_grown_journals_statistics_taken_which_no_other_role_may(app_database,
                                                                                             postgres_database):
    # Migration 0050: only a table's owner may ANALYZE it; the function does so as its owner, for the
    # service's role, and for no role that is not one.
    with app_database.transaction() as session:
        program.seed(session, customer_ids=["c1", "c2"])
        revenue.ingest(session, [program.paid(f"e{n}", f"c{n % 2 + 1}", f"inv-{n}", 5_000, "2026-02-01")
                                 for n in range(600)])  # an accrual and an override each
        assert session.execute(sa.text("SELECT reltuples FROM pg_class WHERE relname = 'journal_transactions'")
                               ).scalar_one() >= 1_000
    stranger = Database(ungranted_url(postgres_database))
    try:
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied for function journal_statistics_follow"):
            with stranger.engine.begin() as connection:
                connection.exec_driver_sql("SELECT journal_statistics_follow()")
    finally:
        stranger.dispose()


def test_a_batch_posts_as_before_when_the_role_may_not_have_the_statistics_taken(app_database, postgres_database,
                                                                                caplog):
    # The statistics make the batch fast, not right: without the grant (or on a database behind
    # revision 0050) it posts, planned as before, and says why once.
    with postgres_database.engine.begin() as connection:
        connection.exec_driver_sql("REVOKE EXECUTE ON FUNCTION journal_statistics_follow() FROM revshare_app")
    with app_database.transaction() as session:
        program.seed(session, customer_ids=["c1"])
        results = revenue.ingest(session, [program.paid(f"e{n}", "c1", f"inv-{n}", 5_000, "2026-02-01")
                                           for n in range(600)])
    assert {type(result) for result in results} == {revenue.Outcome}
    with app_database.reader() as session:
        assert session.execute(sa.text("SELECT max(id) FROM journal_transactions")).scalar_one() == 1_200
    assert [record.getMessage() for record in caplog.records if record.name == "ledger.journal"] == [
        "the journal's statistics are not followed on this connection: permission denied for function"
        " journal_statistics_follow"]
