"""Forcing an interleaving of two writers without timing: another writer's work is made and
committed at the moment this process's next posting asks for the journal lock, as when two servers
take requests at the same moment and the other one's gets the lock first."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from ledger.db import Database


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
