"""The migrated schema is exactly the metadata in ledger/schema.py, on both engines."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ledger.schema import metadata


def test_migrations_produce_the_declared_schema(database):
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
    assert differences == []


def test_every_journal_guard_trigger_exists(database):
    with database.engine.connect() as connection:
        if database.engine.dialect.name == "postgresql":
            names = {row[0] for row in connection.exec_driver_sql(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
        else:
            names = {row[0] for row in connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert {"trg_journal_lines_sealed", "trg_journal_transactions_seal"} <= names
    for table in ("accounts", "journal_transactions", "journal_lines"):
        assert any(name.startswith(f"trg_{table}_no_") for name in names), table


def test_sqlite_connections_carry_the_required_pragmas(sqlite_database):
    with sqlite_database.engine.connect() as connection:
        pragmas = {name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                   for name in ("foreign_keys", "recursive_triggers", "journal_mode", "busy_timeout")}
    assert pragmas == {"foreign_keys": 1, "recursive_triggers": 1, "journal_mode": "wal", "busy_timeout": 30000}
