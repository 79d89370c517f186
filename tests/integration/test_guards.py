"""`verify` names a guard (a trigger the migrations make) that the database lacks, holds in another
form, or does not fire (`ledger.guards`), on both engines."""

import re

import pytest
import sqlalchemy as sa

from ledger.guards import triggers
from ledger.guards_at_head import GUARDS, REVISION
from ledger.migrate import head_revision
from ledger.verify import verify
from tests.scenarios.books import Books

# The journal's lines refuse an UPDATE: the trigger, by engine.
GUARDS_OF_LINES = {"sqlite": "trg_journal_lines_no_update", "postgresql": "trg_journal_lines_no_change"}


def named(database) -> list[tuple[str, str]]:
    with database.reader() as session:
        return [(problem.code, problem.message) for problem in verify(session).problems]


def guard(database) -> str:
    return GUARDS_OF_LINES[database.engine.dialect.name]


def guard_name(database) -> str:
    """As `verify` keys it: on PostgreSQL, whose trigger names are a table's, with its table."""
    return guard(database) if database.engine.dialect.name == "sqlite" else f"{guard(database)} ON journal_lines"


def named_as(database) -> str:
    """As `verify` names it, with its table."""
    return f"{guard(database)} {'on' if database.engine.dialect.name == 'sqlite' else 'ON'} journal_lines"


def test_the_list_of_guards_is_the_one_a_database_migrated_to_head_holds(database):
    """Written again after a migration that makes, drops or changes a trigger: `make guards`."""
    assert REVISION == head_revision(), "ledger/guards_at_head.py is of another revision: run `make guards`"
    engine = database.engine.dialect.name
    with database.reader() as session:
        made = triggers(session)
    found = {name: (trigger.table, trigger.digest) for name, trigger in made.items()}
    listed = {name: guard[:2] for name, guard in GUARDS[engine].items()}  # (a trigger remade may have another)
    assert found == listed, "ledger/guards_at_head.py is not what the migrations make: run `make guards`"
    assert guard_name(database) in found and all(trigger.fires for trigger in made.values())


@pytest.fixture
def books(database) -> Books:
    books = Books(database)
    books.plan("standard", "0.20")
    books.partner("northwind", "standard")
    books.attribute("acme", "northwind", "2026-01-01")
    books.paid("acme", "inv-1", "100.00", "2026-02-01")
    assert books.verified()
    return books


def test_verify_names_a_guard_dropped(books):
    database = books.database
    with database.transaction() as session:
        table = "" if database.engine.dialect.name == "sqlite" else " ON journal_lines"
        session.connection().exec_driver_sql(f"DROP TRIGGER {guard(database)}{table}")
    assert named(database) == [("guard_missing", f"the database has no trigger {named_as(database)}: what it "
                                                 "refuses, the books now take")]


def test_verify_names_a_guard_made_again_in_another_form(books):
    database = books.database
    with database.transaction() as session:
        connection = session.connection()
        if database.engine.dialect.name == "sqlite":
            connection.exec_driver_sql(f"DROP TRIGGER {guard(database)}")
            connection.exec_driver_sql(f"CREATE TRIGGER {guard(database)} BEFORE UPDATE ON journal_lines"
                                       " BEGIN SELECT 1; END")
        else:  # the function behind it, made to let the update through
            function = connection.exec_driver_sql(
                "SELECT p.proname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
                f" WHERE t.tgname = '{guard(database)}'").scalar_one()
            connection.exec_driver_sql(f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger"
                                       " LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$")
    problems = named(database)
    assert ("guard_altered", f"trigger {named_as(database)} is not as the migrations made it") in problems
    assert {code for code, _ in problems} == {"guard_altered"}  # (on PostgreSQL, every trigger of the function)


@pytest.mark.postgres
@pytest.mark.parametrize("setting", ["DISABLE TRIGGER", "ENABLE REPLICA TRIGGER"])
def test_verify_names_a_guard_disabled_on_postgres(postgres_database, setting):
    books = Books(postgres_database)
    books.plan("standard", "0.20")
    assert books.verified()
    with postgres_database.transaction() as session:
        session.connection().exec_driver_sql(f"ALTER TABLE journal_lines {setting} {guard(postgres_database)}")
    assert named(postgres_database) == [
        ("guard_disabled", f"trigger {named_as(postgres_database)} is disabled: what it refuses, the books now "
                           "take")]


def postgres_books(database) -> Books:
    books = Books(database)
    books.plan("standard", "0.20")
    assert books.verified()
    return books


def ddl(database, *statements: str) -> None:
    with database.transaction() as session:
        for statement in statements:
            session.connection().exec_driver_sql(statement)
    database.engine.dispose()  # new connections: a setting made for the database applies to them


@pytest.mark.postgres
def test_a_role_whose_search_path_puts_a_schema_of_its_own_first_finds_every_guard(postgres_database):
    """A role with a schema named after it has it first on PostgreSQL's default search path; the
    journal's tables and their guards stay in `public`, where the service still finds them."""
    postgres_books(postgres_database)
    ddl(postgres_database, "CREATE SCHEMA own", "DO $$ BEGIN EXECUTE format('ALTER DATABASE %%I SET search_path = "
        "own, public', current_database()); END $$")
    with postgres_database.reader() as session:
        assert session.execute(sa.text("SELECT current_schema()")).scalar() == "own"
    assert named(postgres_database) == []


@pytest.mark.postgres
@pytest.mark.parametrize("change, named_as_altered", [
    # a rule's WHEN made false: the trigger stands, and never fires
    ("when", None),
    # the journal lines' guard made to refuse only an UPDATE of their currency
    ("DROP TRIGGER trg_journal_lines_no_change ON journal_lines; CREATE TRIGGER trg_journal_lines_no_change "
     "BEFORE DELETE OR UPDATE OF currency ON journal_lines FOR EACH ROW EXECUTE FUNCTION journal_refuse_change()",
     "trigger trg_journal_lines_no_change ON journal_lines"),
    # a function a rule calls, made to accept anything
    ("CREATE OR REPLACE FUNCTION revshare_is_json_object(value text) RETURNS boolean LANGUAGE sql IMMUTABLE "
     "AS $$ SELECT true $$", "function revshare_is_json_object(value text)")])
def test_verify_names_a_guard_s_condition_columns_or_the_function_it_calls_changed(
        postgres_database, change, named_as_altered):
    postgres_books(postgres_database)
    if change == "when":
        with postgres_database.reader() as session:
            name, table, definition = session.execute(sa.text(
                "SELECT t.tgname, c.relname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c"
                " ON c.oid = t.tgrelid WHERE t.tgqual IS NOT NULL ORDER BY t.tgname LIMIT 1")).one()
        never = re.sub(r" WHEN \(.*\) EXECUTE ", " WHEN (false) EXECUTE ", definition)
        assert never != definition
        ddl(postgres_database, f"DROP TRIGGER {name} ON {table}", never)
        named_as_altered = f"trigger {name} ON {table}"
    else:
        ddl(postgres_database, *change.split("; "))
    assert named(postgres_database) == [("guard_altered", f"{named_as_altered} is not as the migrations made it")]


@pytest.mark.postgres
def test_every_guard_made_again_from_what_postgresql_writes_of_it_as_a_restore_does_verifies(postgres_database):
    """`pg_dump` writes each trigger as `pg_get_triggerdef` gives it, and a restore makes it from
    that: one condition comes back with its casts moved, which the list holds as well."""
    postgres_books(postgres_database)
    with postgres_database.reader() as session:
        definitions = session.execute(sa.text(
            "SELECT t.tgname, c.relname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c"
            " ON c.oid = t.tgrelid WHERE NOT t.tgisinternal AND c.relname NOT LIKE 'pg_%'")).all()
    for _ in range(2):  # a restore of a restore, too
        ddl(postgres_database, *[statement for name, table, definition in definitions
                                 for statement in (f"DROP TRIGGER {name} ON {table}", definition)])
        with postgres_database.reader() as session:
            definitions = session.execute(sa.text(
                "SELECT t.tgname, c.relname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c"
                " ON c.oid = t.tgrelid WHERE NOT t.tgisinternal AND c.relname NOT LIKE 'pg_%'")).all()
        assert named(postgres_database) == []


@pytest.mark.postgres
def test_verify_names_the_guards_switched_off_for_every_session_of_the_database(postgres_database):
    postgres_books(postgres_database)
    ddl(postgres_database, "DO $$ BEGIN EXECUTE format('ALTER DATABASE %%I SET session_replication_role = replica', "
        "current_database()); END $$")
    assert named(postgres_database) == [
        ("guard_disabled", "the service's sessions run with session_replication_role replica: no guard fires, and "
                           "the books take what they refuse")]


def test_a_database_at_another_revision_is_not_checked(books):
    database = books.database
    with database.transaction() as session:
        session.connection().exec_driver_sql("UPDATE alembic_version SET version_num = '0040'")
        session.connection().exec_driver_sql(f"DROP TRIGGER {guard(database)}" + (
            "" if database.engine.dialect.name == "sqlite" else " ON journal_lines"))
    assert named(database) == []
    with database.transaction() as session:  # nor one alembic never migrated (no table for its revision)
        session.connection().exec_driver_sql("DROP TABLE alembic_version")
    assert named(database) == []


def test_the_server_and_the_scheduler_warn_at_their_start_of_a_guard_dropped(books, monkeypatch):
    from click.testing import CliRunner

    from cli import server
    from cli.main import main
    from jobs import scheduler

    database = books.database
    with database.transaction() as session:
        session.connection().exec_driver_sql(f"DROP TRIGGER {guard(database)}" + (
            "" if database.engine.dialect.name == "sqlite" else " ON journal_lines"))
    started = []
    monkeypatch.setattr(server, "run", started.append)
    monkeypatch.setattr(server, "unbindable", lambda host, port: None)  # (its own test)
    monkeypatch.setattr(scheduler, "run", started.append)
    for command in ("serve", "scheduler"):
        result = CliRunner().invoke(main, [command], env={"REVSHARE_DATABASE_URL": database.url})
        assert result.exit_code == 0, result.output
        assert f"warning: guard_missing: the database has no trigger {named_as(database)}" in result.output
    assert len(started) == 2


@pytest.mark.postgres
@pytest.mark.parametrize("change, code, what", [
    # two transactions could then share an idempotency key: a retry posted twice
    ("ALTER TABLE journal_transactions DROP CONSTRAINT uq_journal_transactions_idempotency_key", "guard_missing",
     "constraint uq_journal_transactions_idempotency_key ON journal_transactions"),
    ("ALTER TABLE journal_lines DROP CONSTRAINT fk_journal_lines_account_id_accounts", "guard_missing",
     "constraint fk_journal_lines_account_id_accounts ON journal_lines"),
    # an invoice paid twice
    ("DROP INDEX uq_revenue_events_paid_invoice", "guard_missing", "unique index uq_revenue_events_paid_invoice ON "
                                                                    "revenue_events"),
    ("ALTER TABLE journal_lines DROP CONSTRAINT ck_journal_lines_side, ADD CONSTRAINT ck_journal_lines_side "
     "CHECK (side IN ('D', 'C', 'X'))", "guard_altered", "constraint ck_journal_lines_side ON journal_lines"),
    ("ALTER TABLE journal_lines ALTER COLUMN amount_minor DROP NOT NULL", "guard_altered",
     "columns of journal_lines"),
], ids=["unique", "foreign", "unique-index", "check", "not-null"])
def test_verify_names_a_key_or_check_dropped_or_changed_on_postgres(postgres_database, change, code, what):
    """A restore that lost a key (pg_restore goes on past the errors) or an owner's `ALTER TABLE`
    leaves every row as it was, and the books then take what the key refused."""
    postgres_books(postgres_database)
    ddl(postgres_database, change)
    verb = "the database has no " if code == "guard_missing" else ""
    tail = ": what it refuses, the books now take" if code == "guard_missing" else " is not as the migrations made it"
    assert named(postgres_database) == [(code, f"{verb}{what}{tail}")]


@pytest.mark.postgres
def test_every_check_and_conditioned_unique_index_made_again_as_a_restore_does_verifies(postgres_database):
    """A check over a list of values comes back from what PostgreSQL writes of it with its casts
    moved, as a trigger's condition does: the list holds that form as well."""
    from ledger import guards

    postgres_books(postgres_database)
    for _ in range(2):  # a restore of a restore, too
        with postgres_database.reader() as session:
            remakes = session.execute(sa.text(guards._REMAKES)).all()
        assert len(remakes) > 10, remakes
        ddl(postgres_database, *[statement for _, dropping, making in remakes for statement in (dropping, making)])
        assert named(postgres_database) == []


@pytest.mark.postgres
def test_a_database_dumped_and_restored_verifies_with_every_guard(postgres_database, pg_cluster, tmp_path):
    import subprocess

    from ledger.db import Database
    from tests.conftest import drop_pg_database, new_pg_url

    books = postgres_books(postgres_database)
    books.partner("northwind", "standard")
    books.attribute("acme", "northwind", "2026-01-01")
    books.paid("acme", "inv-1", "100.00", "2026-02-01")
    dump = tmp_path / "books.dump"
    url = postgres_database.url.replace("postgresql+psycopg", "postgresql")
    subprocess.run([str(pg_cluster.bin_dir / "pg_dump"), "-Fc", "-f", str(dump), url], check=True)
    restored_url = new_pg_url(pg_cluster, template=None)
    try:
        subprocess.run([str(pg_cluster.bin_dir / "pg_restore"), "--exit-on-error", "-d",
                        restored_url.replace("postgresql+psycopg", "postgresql"), str(dump)], check=True)
        restored = Database(restored_url)
        try:
            assert named(restored) == []
            with restored.transaction() as session:
                session.connection().exec_driver_sql("DROP INDEX uq_revenue_events_paid_invoice")
            assert [code for code, _ in named(restored)] == ["guard_missing"]
        finally:
            restored.dispose()
    finally:
        drop_pg_database(pg_cluster, restored_url)
