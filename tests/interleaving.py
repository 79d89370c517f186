"""Forcing an interleaving of two writers without timing: another writer's work is made and
committed at a chosen point of this one's, as when two servers take requests at the same moment.

- `another_writer_first`: the other's work, in this thread, just before this process's next posting
  takes the journal lock (the other one's got the lock first).
- `after_transactions` with `Meanwhile`: another request made whole on a thread of its own after
  this request has committed some of its own transactions (`api.session.separate_transaction`),
  the other waited for before this one goes on. A lock this request still held there would keep
  the other waiting: `Meanwhile.result()` then fails after `OTHER_WAIT_S` instead of hanging (the
  other request cannot run nested in this thread: nested test-client requests share the app
  context, and with it `g` and the request's database session).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from ledger.db import Database

OTHER_WAIT_S = 20.0  # far past what the other request takes, unless it waits for a lock this one holds


def another_writer_first(monkeypatch, database: Database, work: Callable[[Session], object]) -> None:
    """Run `work(session)` in a transaction of its own, committed, just before this process's next
    posting takes the journal lock (once)."""
    from ledger import journal

    taking = journal.locked

    def after_the_other(session, statements):
        monkeypatch.setattr(journal, "locked", taking)
        with database.transaction() as other:
            work(other)
        return taking(session, statements)

    monkeypatch.setattr(journal, "locked", after_the_other)


class Meanwhile:
    """`work()` made on a thread of its own when `start_and_wait()` is called, and waited for."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self._work = work
        self._outcome: list[tuple[bool, Any]] = []
        self._thread: threading.Thread | None = None
        self._ended_in_time = False

    def start_and_wait(self) -> None:
        assert self._thread is None, "the other request is made once"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._thread.join(OTHER_WAIT_S)
        self._ended_in_time = not self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._outcome.append((True, self._work()))
        except BaseException as error:  # re-raised in the test's thread by result()
            self._outcome.append((False, error))

    def result(self) -> Any:
        """What `work()` returned (or raised); AssertionError if it was never started, or had not ended
        within OTHER_WAIT_S of its start (it waited for a lock the request it interleaved with held)."""
        assert self._thread is not None, "the point at which the other request is made was never reached"
        self._thread.join(OTHER_WAIT_S)
        assert self._ended_in_time, f"the other request had not ended {OTHER_WAIT_S:g} s after it started: it " \
                                    "waited for a lock held by the request it came in the middle of"
        [(returned, value)] = self._outcome
        if not returned:
            raise value
        return value


def after_transactions(monkeypatch, module, count: int, action: Callable[[], None]) -> None:
    """Call `action()` once, in this thread, just after the `count`th transaction that
    `module.separate_transaction` makes has committed."""
    from api import session as api_session

    # Without a name of its own there (a route that made no transaction apart), the point is never reached.
    separate = getattr(module, "separate_transaction", api_session.separate_transaction)
    committed = [0]

    @contextlib.contextmanager
    def counted():
        with separate() as session:
            yield session
        committed[0] += 1
        if committed[0] == count:
            action()

    monkeypatch.setattr(module, "separate_transaction", counted, raising=False)


@contextlib.contextmanager
def another_writer_while_waiting(monkeypatch, database: Database, work: Callable[[Session], object]) -> Iterator[None]:
    """Within the block, run `work(session)` in a transaction of its own, committed, while this
    process's next writer waits for its lock (once): on SQLite as it queues for the write lock, on
    PostgreSQL as it asks for its first advisory lock (a job's own, or the journal's). Unlike
    `another_writer_first`, this comes before anything the waiting transaction does under its lock,
    also when the lock is not taken by a posting (a job's transaction takes it before its body)."""
    from ledger import db

    fired = []

    def other_first() -> None:
        fired.append(True)
        with database.transaction() as other:
            work(other)

    queueing = db._QueuedWriterConnection.queue_for_write

    def queue_after_the_other(self, wait_s=None):
        if not fired:
            other_first()
        return queueing(self, wait_s)

    def before_advisory_lock(_connection, _cursor, statement, _parameters, _context, _many) -> None:
        if not fired and "pg_advisory_xact_lock" in statement:
            other_first()

    monkeypatch.setattr(db._QueuedWriterConnection, "queue_for_write", queue_after_the_other)
    event.listen(Engine, "before_cursor_execute", before_advisory_lock)
    try:
        yield
    finally:
        event.remove(Engine, "before_cursor_execute", before_advisory_lock)
    assert fired, "no writer waited for a lock in the block"
