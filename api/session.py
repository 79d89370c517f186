"""One database session per request, opened on first use and closed at teardown.

GET, HEAD and OPTIONS requests read (`Database.reader()`); every other method writes
(`Database.writer()`, which on SQLite begins with `BEGIN IMMEDIATE`, so writers queue instead of
failing on a stale snapshot). The request owns the transaction, the domain never commits: a 2xx
response commits, anything else rolls back, and a commit that fails becomes a 500 that rolls back
(a 503 when the database was out of reach or busy: see `_end_transaction`).

A view whose outcome is decided, and whose retry replays it, may commit before its response is
built (`commit_now`): the revenue event routes do, so that their lock on the journal (SQLite's write
lock, PostgreSQL's advisory lock) is not held while the response is serialized. A view may also
commit work that stands on its own before its effect, in transactions of their own
(`separate_transaction`): a payout run's and a close's releases of matured holds, so that the lock
is let go between every hundred of them (see `api.idempotency.reclaim_after`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from flask import Flask, Response, current_app, g, request
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from api.errors import database_problem
from ledger.db import Database, reset_lock_deadline, retryable, set_lock_deadline
from ledger.settings import Settings

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EXTENSION = "revshare"


def current_database() -> Database:
    return current_app.extensions[EXTENSION]["database"]


def current_settings() -> Settings:
    return current_app.extensions[EXTENSION]["settings"]


def current_session() -> Session:
    """This request's session: a reader for GET/HEAD/OPTIONS, a writer otherwise."""
    context = g._get_current_object()  # bound once: see `api.auth.authenticate_request`
    session = context.get("db_session")
    if session is None:
        database = current_database()
        if request.method in READ_METHODS:
            session = database.reader()
        else:
            session = database.writer()
            context.lock_deadline = set_lock_deadline(time.monotonic() + REQUEST_LOCKS_S)
        context.db_session = session
    return session


def commit_now() -> None:
    """Commit the request's transaction now. Should building the response then fail, the 500 leaves
    the commit standing and a retry replays it; the end of the request finds nothing left to commit
    (a session that runs no statement after its commit opens no transaction)."""
    current_session().commit()


# What the releases a payout run or a close makes first, in transactions of their own, may take: past
# it, the view begins no further one and answers 503 to retry (`ledger.errors.Unfinished`), what it
# released standing. Under gunicorn's 30-second worker timeout, which killed the worker of a run
# releasing a backlog of holds (a 500), with time left for the transaction under way, the run or
# close itself and the answer.
WORK_BUDGET_S = 20.0


def work_deadline() -> float:
    """The `time.monotonic()` instant the request's work stops at: WORK_BUDGET_S after the first call
    in the request (the view's start)."""
    return g.setdefault("work_deadline", time.monotonic() + WORK_BUDGET_S)


@contextlib.contextmanager
def separate_transaction() -> Iterator[Session]:
    """The request's session for a transaction of its own within the request: committed at the end
    of the block, rolled back if it raises."""
    session = current_session()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    session.commit()


# What a request that writes may wait for locks until, from its first use of the database (its
# view's start, or the `Idempotency-Key` claim's before it): each wait is bounded by the engine's own
# (`api.LOCK_WAIT_S`), and none goes past this (`ledger.db.set_lock_deadline`). A
# request that waits again and again (a payout run's releases, each a transaction, then the run; a
# batch applied in parts) answered a busy database past gunicorn's 30-second worker timeout, which
# killed it midway: a 500. Past it, a wait ends as a busy database's 503 to retry; what committed
# before stays, and the retry goes on from there. Beyond WORK_BUDGET_S, with time left for the work
# after the last wait and the answer.
REQUEST_LOCKS_S = 25.0


def _end_transaction(response: Response) -> Response:
    """Commit a 2xx, roll back anything else. The database out of reach or busy at the commit is a 503
    to retry (whether the commit took effect is unknown, and a retry replays it or applies it once);
    a rollback on a connection that was lost has nothing left to undo."""
    session = g.get("db_session")
    if session is None or not session.in_transaction():
        return response  # nothing ran since `commit_now`: an empty commit cost a posting 60 function calls
    committing = 200 <= response.status_code < 300
    try:
        if committing:
            session.commit()
        else:
            session.rollback()
    except (OperationalError, InterfaceError) as error:
        if not retryable(error):
            raise
        with contextlib.suppress(OperationalError, InterfaceError):
            session.rollback()
        return database_problem(error) if committing else response
    return response


def _close(_error: BaseException | None) -> None:
    token = g.pop("lock_deadline", None)
    if token is not None:
        reset_lock_deadline(token)
    session = g.pop("db_session", None)
    # A session with no transaction open and no objects (a revenue event's, committed by `commit_now`)
    # holds nothing to release: closing it only walked its empty identity map, 20 function calls.
    if session is not None and (session.in_transaction() or session.identity_map):
        session.close()


def install(app: Flask, settings: Settings, database: Database) -> None:
    app.extensions[EXTENSION] = {"settings": settings, "database": database}
    app.after_request(_end_transaction)
    app.teardown_request(_close)
