"""Alembic environment: runs online against the URL given by ledger.migrate (never the environment)."""

from alembic import context
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from ledger.db import JOURNAL_LOCK_KEY, PROGRAM_LOCK_KEY, make_engine
from ledger.schema import metadata

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"), poolclass=NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Writers take these first, in this order (`ledger.db.lock_program`, `lock_journal`): holding
            # them before any table's lock, the migration makes postings wait for it, where they and its
            # locks on the tables they write met as a deadlock. SQLite's writers are one at a time already.
            for key in (PROGRAM_LOCK_KEY, JOURNAL_LOCK_KEY):
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        context.run_migrations()


run_migrations_online()
