"""Schema upgrades through alembic, for `revshare db upgrade`, `make run` and the tests."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from ledger.db import database_words, make_engine, normalize_url, retryable, sqlite_file
from ledger.guards_at_head import REVISION as REVISION_AT_HEAD

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# How long an upgrade waits on SQLite for the writers ahead of it (a posting holds their queue for
# milliseconds, an import's batch for a second or two): past it, one that does not let go.
LOCK_WAIT_S = 30.0


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates '%': escape it so passwords with '%' survive.
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    database = sqlite_file(url)
    if database is not None:
        # The path as SQLite will open it: the URL's, percent-decoded (`my%20books` is `my books`).
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    _run(url, revision, lambda script, rev: script._upgrade_revs(revision, rev))


def downgrade(url: str, revision: str) -> None:
    _run(url, revision, lambda script, rev: script._downgrade_revs(revision, rev))


def _run(url: str, revision: str, steps) -> None:
    """What alembic's `command.upgrade` and `command.downgrade` do, over the scripts this process read
    once (`_scripts`): those commands read every revision's file again at each call (65 files, and
    the earlier revisions each reads; a migration test that went down and up seven times spent 1.6 s
    of its 2.2 s there, and 7.6 s of 8.5 where Python writes no bytecode and compiles them each time)."""
    script = _scripts()
    with EnvironmentContext(alembic_config(url), script, fn=lambda rev, context: steps(script, rev),
                            destination_rev=revision):
        script.run_env()


def current_revision(url: str) -> str | None:
    """The revision the database is at (None: not migrated at all)."""
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    """The latest revision of the migrations, which the code expects the database to be at."""
    return _scripts().get_current_head()


NOT_MIGRATED_FIX = "run `revshare db upgrade` first"
NEWER_CODE = "the database was migrated by newer code: run that code, or restore the database of this one"


def revision_unlike_code(revision: str | None) -> str | None:
    """What keeps this code from a database at `revision`, and the fix; None when it is at the head.
    Code run before `revshare db upgrade` (new code deployed) failed only where it used a table or
    column the database lacked, and where it used none (a close, a payout run) wrote its books
    without the rules of the migrations not yet run."""
    head = head_revision()
    if revision == head:
        return None
    fix = NOT_MIGRATED_FIX if revision is None or revision in known_revisions() else NEWER_CODE
    return f"it is at revision {revision}, the service's latest is {head}\n  {fix}"


class DatabaseUnreached(Exception):
    """The database could not be reached, or was busy (`ledger.db.retryable`): nothing told yet."""


def refusal_to_serve(url: str) -> str | None:
    """Why a server is not to serve `url` with this code (`api.create_served_app`, in each gunicorn
    worker), or None: an SQLite file that does not exist (connecting would make it, empty), or a
    database at another revision than this code's. DatabaseUnreached when the database cannot be
    reached now (a refusal by it, a database that does not exist, a password refused, is raised as
    it is). The revision is compared with the one `ledger.guards_at_head` records (a test holds them
    equal) before the scripts are read (a third of a second)."""
    path = sqlite_file(url)
    if path is not None and not Path(path).is_file():
        return f"the file {path!r} does not exist\n  {NOT_MIGRATED_FIX}"
    try:
        revision = current_revision(url)
    except DBAPIError as error:
        if not (retryable(error) and _server_down(error)):
            raise
        raise DatabaseUnreached(database_words(error)) from error
    return None if revision == REVISION_AT_HEAD else revision_unlike_code(revision)


def _server_down(error: DBAPIError) -> bool:
    """Whether the database's server did not answer (or said it is starting or stopping), rather than
    refused: psycopg gives a refusal at connection (no such database, a password refused) no SQLSTATE,
    as it gives none to a server that is not running. SQLite's retryable errors (busy, locked) count."""
    words = database_words(error).lower()
    return isinstance(error.orig, sqlite3.Error) or any(sign in words for sign in _SERVER_DOWN)


# libpq's words for a server that did not answer, and PostgreSQL's for one starting or stopping.
_SERVER_DOWN = ("connection refused", "no such file or directory", "timeout expired", "is starting up",
                "is shutting down", "server closed the connection", "could not receive data", "network is unreachable",
                "no route to host", "could not translate host name")


def known_revisions() -> set[str]:
    """Every revision of the migrations this code holds."""
    return {script.revision for script in _scripts().walk_revisions()}


@functools.lru_cache(maxsize=1)  # the scripts do not change while a process runs; read, a third of a second
def _scripts() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config)
