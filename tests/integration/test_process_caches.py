"""The per-process caches (ledger/db.py `shared_cache`): account ids and the partner program are
shared between transactions only once committed, and a program change is seen by the next
transaction; SQLite writers queue on a file lock that every way out of a transaction releases, and
checkpoint after they leave it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError

from ledger import customers, db, partners, revenue
from ledger.balances import partner_balances
from ledger.db import Database
from ledger.instants import parse_date
from tests.program import at, paid, seed


def _ingest(database: Database, *events: revenue.RevenueEvent) -> list:
    with database.transaction() as session:
        return revenue.ingest(session, list(events))


def _commissions(result) -> list[tuple[str, str, int]]:
    return [(line.partner_id, line.kind, line.amount_minor) for line in result.commissions]


@pytest.fixture
def program_database(database: Database) -> Database:
    with database.transaction() as session:
        seed(session)
    return database


def test_a_program_change_after_a_cached_ingest_is_seen_by_the_next_one(program_database):
    database = program_database
    [first] = _ingest(database, paid("e1", "acme", "inv-1", 10_000, "2026-02-10"))
    assert _commissions(first) == [("northwind", "accrual", 2_000), ("globex", "override", 200)]
    assert database.shared["program"]["program"].knows("northwind")
    with database.transaction() as session:
        partners.set_status(session, "globex", "terminated", at("2026-02-15"))
    [second] = _ingest(database, paid("e2", "acme", "inv-2", 10_000, "2026-03-10"))
    assert _commissions(second) == [("northwind", "accrual", 2_000)]


def test_the_shared_program_answers_without_loading_partners_again(program_database):
    database = program_database
    _ingest(database, paid("e1", "acme", "inv-1", 10_000, "2026-02-10"))
    shared = database.shared["program"]["program"]
    statements: list[str] = []
    event.listen(database.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    [second] = _ingest(database, paid("e2", "acme", "inv-2", 10_000, "2026-03-10"))
    assert _commissions(second) == [("northwind", "accrual", 2_000), ("globex", "override", 200)]
    assert database.shared["program"]["program"] is shared
    assert not [sql for sql in statements if "FROM partner_statuses WHERE" in sql]


def test_a_program_that_was_rolled_back_never_reaches_the_shared_cache(program_database):
    """The rolled-back transaction ends at the same program revision as the committed one after it:
    were its Program shared, northwind would count as terminated."""
    database = program_database
    with database.writer() as session:
        partners.set_status(session, "northwind", "terminated", at("2026-01-15"))
        [refused] = revenue.ingest(session, [paid("e1", "acme", "inv-1", 10_000, "2026-02-10")])
        assert _commissions(refused) == []
        session.rollback()
    with database.transaction() as session:
        partners.set_status(session, "globex", "suspended", at("2026-01-15"))
    [result] = _ingest(database, paid("e1", "acme", "inv-1", 10_000, "2026-02-10"))
    assert _commissions(result) == [("northwind", "accrual", 2_000), ("globex", "override", 200)]


def test_account_ids_of_a_rolled_back_transaction_are_not_reused(program_database):
    """SQLite gives the next account the id a rolled-back one had; PostgreSQL never reuses it. On
    either, a cached id from the rolled-back transaction would put lines on the wrong account or
    fail the foreign key."""
    database = program_database
    with database.writer() as session:
        revenue.ingest(session, [paid("e1", "acme", "inv-1", 10_000, "2026-02-10")])  # creates both partners' accounts
        session.rollback()
    with database.transaction() as session:
        partners.create_partner(session, "initech", "Initech", "msp", "standard")
        customers.attribute(session, "hooli", "initech", parse_date("2026-01-01", field="d"), "manual")
    _ingest(database, paid("e2", "hooli", "inv-2", 5_000, "2026-02-10"))
    _ingest(database, paid("e1", "acme", "inv-1", 10_000, "2026-02-10"))
    with database.reader() as session:
        assert partner_balances(session, "initech") == {"USD": (1_000, 0)}
        assert partner_balances(session, "northwind") == {"USD": (2_000, 0)}
        assert partner_balances(session, "globex") == {"USD": (200, 0)}


def _lock_is_free(path: str) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


@pytest.mark.parametrize("ending", ["commit", "rollback", "close", "error"])
def test_sqlite_writers_hold_the_queue_lock_for_their_transaction_only(sqlite_database, ending):
    database = sqlite_database
    lock_path = f"{database.engine.url.database}-writer.lock"
    session = database.writer()
    session.execute(text("SELECT 1"))
    assert not _lock_is_free(lock_path)
    with database.reader() as reader:  # readers never queue
        reader.execute(text("SELECT 1"))
    if ending == "commit":
        session.commit()
    elif ending == "rollback":
        session.rollback()
    elif ending == "error":
        with pytest.raises(IntegrityError):
            session.execute(text("INSERT INTO accounts (name) VALUES (NULL)"))
        session.rollback()
    session.close()
    assert _lock_is_free(lock_path)


def _insert_rows(database: Database, names: list[str]) -> None:
    """One row per name, in a table no trigger writes more rows for (`rules_since`: a fact's table,
    since migration 0053, writes a row of the program's chain)."""
    with database.transaction() as session:
        for name in names:
            session.execute(text("INSERT INTO rules_since (rule, since_us) VALUES (:n, 1)"), {"n": name})


def _checkpointed_names(path: str, tmp_path) -> set[str]:
    """The names in the database file alone: what checkpoints have copied from the WAL."""
    copy = tmp_path / "main-file-only.db"
    copy.write_bytes(Path(path).read_bytes())
    connection = sqlite3.connect(copy)
    try:
        return {name for (name,) in connection.execute("SELECT rule FROM rules_since")}
    finally:
        connection.close()
        copy.unlink()


def test_sqlite_writers_checkpoint_outside_the_queue_once_enough_rows_changed(sqlite_database, tmp_path,
                                                                              monkeypatch):
    database = sqlite_database
    path = database.engine.url.database
    lock_path = f"{path}-writer.lock"
    monkeypatch.setattr(db, "CHECKPOINT_ROWS", 5)
    checkpoints: list[bool] = []  # whether the queue lock was free at each checkpoint
    execute = db._QueuedWriterConnection.execute

    def spy(self, sql, *args):
        if "wal_checkpoint" in sql:
            checkpoints.append(_lock_is_free(lock_path))
        return execute(self, sql, *args)

    monkeypatch.setattr(db._QueuedWriterConnection, "execute", spy)
    with database.reader() as session:
        autocheckpoint = session.execute(text("PRAGMA wal_autocheckpoint")).scalar()
    assert autocheckpoint == db.SQLITE_AUTOCHECKPOINT_PAGES

    _insert_rows(database, ["a1", "a2", "a3"])
    assert checkpoints == []
    assert not {"a1", "a2", "a3"} & _checkpointed_names(path, tmp_path)  # still in the WAL only
    _insert_rows(database, ["a4", "a5"])  # 5 rows changed since the connection opened
    assert checkpoints == [True]
    assert {"a1", "a2", "a3", "a4", "a5"} <= _checkpointed_names(path, tmp_path)
    _insert_rows(database, ["a6"])
    assert checkpoints == [True]


def test_the_log_grown_behind_a_long_read_is_cut_back_once_the_read_has_ended(sqlite_database, monkeypatch):
    # Checkpoints cannot start the log over while a read holds an older snapshot (a verify of a big
    # book, minutes long), so it grows by every page written meanwhile; its file kept that size.
    monkeypatch.setattr(db, "CHECKPOINT_ROWS", 5)
    monkeypatch.setattr(db, "SQLITE_WAL_KEEP_BYTES", 64 * 1024)
    path = sqlite_database.engine.url.database
    database = Database(f"sqlite:///{path}")  # its connections made with the limit above
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM rules_since").fetchone() is not None
        for batch in range(60):
            _insert_rows(database, [f"w{batch}-{row}" for row in range(5)])
        assert os.path.getsize(f"{path}-wal") > 4 * 64 * 1024
        reader.execute("COMMIT")
        _insert_rows(database, [f"after-{row}" for row in range(5)])  # its checkpoint copies the whole log
        _insert_rows(database, ["restart"])  # the log starts over, and its file is cut back
        assert os.path.getsize(f"{path}-wal") <= 64 * 1024
    finally:
        reader.close()
        database.dispose()


def test_a_failed_checkpoint_leaves_the_commit_standing(sqlite_database, monkeypatch, caplog):
    database = sqlite_database
    monkeypatch.setattr(db, "CHECKPOINT_ROWS", 1)
    execute = db._QueuedWriterConnection.execute

    def failing(self, sql, *args):
        if "wal_checkpoint" in sql:
            raise sqlite3.OperationalError("disk I/O error")
        return execute(self, sql, *args)

    monkeypatch.setattr(db._QueuedWriterConnection, "execute", failing)
    _insert_rows(database, ["b1"])
    assert "checkpoint of" in caplog.text
    with database.reader() as session:
        assert session.execute(text("SELECT count(*) FROM rules_since WHERE rule = 'b1'")).scalar() == 1
    assert _lock_is_free(f"{database.engine.url.database}-writer.lock")


@contextlib.contextmanager
def _queue_held_elsewhere(lock_path: str, *, at_most_s: float = 5.0):
    """The writers' queue held by another open file (flock locks of two opens exclude each other in
    one process too) while the block runs, `at_most_s` at most: a wait that does not end at its bound
    is then let through, and fails its test, instead of hanging it. Yields a second open to wait on."""
    holder = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    waiter = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    watchdog = threading.Timer(at_most_s, fcntl.flock, (holder, fcntl.LOCK_UN))
    watchdog.start()
    try:
        yield waiter
    finally:
        watchdog.cancel()
        watchdog.join()
        os.close(waiter)
        os.close(holder)


def test_a_bounded_wait_for_the_sqlite_queue_leaves_the_caller_s_own_alarm_running(sqlite_database):
    # In the main thread the wait is bounded by SIGALRM from ITIMER_REAL, of which a process has
    # one: a timer the caller had set (a watchdog, a test's time limit) was replaced by the wait's
    # and then cancelled, so it never fired. The caller's handler was put back; its alarm was not.
    assert threading.current_thread() is threading.main_thread()  # where the alarm is used
    alarms: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, _frame: alarms.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 3600)
        with _queue_held_elsewhere(f"{sqlite_database.engine.url.database}-writer.lock") as waiter:
            assert db._flock_within(waiter, 0.05) is False
        remaining_s, _interval_s = signal.getitimer(signal.ITIMER_REAL)
        assert remaining_s > 0, "the caller's alarm was cancelled"
        assert signal.getsignal(signal.SIGALRM) is not db._wait_over and alarms == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_wait_of_zero_for_the_sqlite_queue_does_not_wait_for_its_holder(sqlite_database):
    # setitimer(ITIMER_REAL, 0) disarms the timer: in the main thread a zero wait waited for as long
    # as the holder took, where another thread did not wait at all.
    assert threading.current_thread() is threading.main_thread()
    with _queue_held_elsewhere(f"{sqlite_database.engine.url.database}-writer.lock") as waiter:
        assert db._flock_within(waiter, 0) is False
