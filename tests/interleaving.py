"""Forcing an interleaving of two writers without timing: another writer's work is made and
committed at the moment this process's next posting asks for the journal lock, as when two servers
take requests at the same moment and the other one's gets the lock first."""

from __future__ import annotations

from typing import Callable

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
