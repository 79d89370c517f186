"""Alembic environment: runs online against the URL given by ledger.migrate (never the environment)."""

import contextlib

from alembic import context
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from ledger import migrate
from ledger.db import JOURNAL_LOCK_KEY, PROGRAM_LOCK_KEY, make_engine, sqlite_file, writers_queue
from ledger.schema import metadata

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"), poolclass=NullPool)
    with engine.connect() as connection, _writers_queue(connection):
        _run(connection)
    engine.dispose()


def _writers_queue(connection) -> contextlib.AbstractContextManager:
    """On SQLite, the migrations hold the writers' queue (`ledger.db.writers_queue`) from their first
    read of the revision to their last commit: each migration commits on its own there, and two
    `revshare db upgrade` at once on a new file both read it empty, then the second to write failed
    ("database is locked", "table already exists"). Taken once connected, so that the file exists
    and the lock file is made after it. PostgreSQL's migrations hold the writers' locks instead (`_run`)."""
    database = sqlite_file(connection.engine.url)
    return contextlib.nullcontext() if database is None else writers_queue(database, migrate.LOCK_WAIT_S)


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Writers take these first, in this order (`ledger.db.lock_program`, `lock_journal`): holding
            # them before any table's lock, the migration makes postings wait for it, where they and its
            # locks on the tables they write met as a deadlock. SQLite's writers are one at a time already.
            for key in (PROGRAM_LOCK_KEY, JOURNAL_LOCK_KEY):
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            # The guards' plans are made once a connection (PL/pgSQL), by the statistics of the moment.
            # A backfill adds its rows one statement each in this one transaction, which no statistics
            # see: the chain's guard, planned while the chain was short, read all of it again for each
            # row (0053's facts, 0056's events: 20,000 events took 82-84 s, 125,000 eighteen minutes).
            # Kept from scans of whole tables where an index serves, each check reads by key: 2.2-2.6 s.
            connection.execute(text("SET LOCAL enable_seqscan = off"))
        context.run_migrations()


run_migrations_online()
