"""Engines, sessions and the journal lock, for SQLite and PostgreSQL alike.

SQLite connections get `PRAGMA foreign_keys=ON` (the deferred line->header key is an invariant),
`recursive_triggers=ON` (so `INSERT OR REPLACE` fires the delete guard and is refused),
`journal_mode=WAL` (readers never block the writer) and a `busy_timeout`. The pysqlite driver's
own transaction handling is switched off so that we emit `BEGIN` ourselves: writers use
`BEGIN IMMEDIATE`, which takes the write lock up front, so two writers queue instead of failing on
a stale snapshot.

Writers on one host queue on an exclusive `flock` of `<database file>-writer.lock` (beside the file
itself, symlinks resolved, as SQLite puts its -wal and -shm files) before `BEGIN IMMEDIATE`,
released when the transaction ends (or the process dies). SQLite's own busy
handler polls with sleeps of up to 100 ms, so two busy writers left to it wait in steps far longer
than a transaction lasts (p99 over 200 ms at 100 events/s over HTTP); a waiter on the file lock wakes
as soon as it is free. The busy timeout stays as the guard against writers that do not take the
file lock (another host on a network file system, the sqlite3 shell).

Those writers also checkpoint the write-ahead log into the database file after they leave the
queue, not in their commit: SQLite's automatic checkpoint runs inside the commit that crosses its
threshold, while that writer still holds the lock every other writer waits for (in `bench/`, a
tenth of a millisecond of each single-event posting's time under the lock). A writer runs a
`PASSIVE` checkpoint once its connection has changed `CHECKPOINT_ROWS` rows since its last one;
SQLite's own, at `SQLITE_AUTOCHECKPOINT_PAGES`, stays as the bound for writers that do neither.

On PostgreSQL every journal writer takes one transaction-scoped advisory lock before reading the
chain head; that serializes sequence numbers and hashes across processes and hosts.

The statements every posting runs go straight through the driver (`driver_rows`, `driver_results`,
`insert_all`): SQLAlchemy's statement building and row wrapping cost a single event about as much
as the database's work. On PostgreSQL a posting's reads go as one query string (taking the journal
lock first) and its writes as another, bound on the client by psycopg's ClientCursor: two round
trips instead of one per statement. Membership tests bind arrays (`in_lists`, up to 50,000 values
each), not one parameter per value. Such statements are announced to SQLAlchemy's
`before_cursor_execute` listeners, so logging and the tests that count statements or explain their
plans see them too.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import sqlite3
import threading
import time
import weakref
from contextvars import ContextVar, Token
from typing import Any, Callable, Iterable, Iterator, Sequence

from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ledger.errors import OutOfRange

SQLITE_BUSY_TIMEOUT_MS = 30_000
# A queued SQLite writer checkpoints after its commits have changed this many rows (a single-event
# posting changes about 10, in about 25 pages; a bulk batch, many rows to a page).
CHECKPOINT_ROWS = 1_000
# SQLite's automatic checkpoint for those writers: only ever reached when ours cannot keep up.
SQLITE_AUTOCHECKPOINT_PAGES = 10_000
# What a writer cuts the write-ahead log's file back to when it starts the log over (SQLite's
# `journal_size_limit`). A checkpoint cannot start the log over while a read holds an older snapshot
# (a `verify` of a big book takes minutes), so the log grows by every page written meanwhile, and
# its file kept that size for as long as the database was open.
SQLITE_WAL_KEEP_BYTES = 64 * 1024 * 1024
# Each SQLite connection's page cache, in KiB (SQLite's default is 2,000). A connection keeps its
# cache from one transaction to the next while no other connection writes: a bulk writer (an
# import, batches, a job's catch-up) on a grown book re-read the pages of its indexes from the
# operating system at every insert with the default. Memory is taken as pages are read, up to this
# much a connection; a connection whose cache another's write made stale reads its pages again
# either way (docs/performance.md, "SQLite's page cache").
SQLITE_CACHE_KIB = 32_768
# PostgreSQL: a write of more rows than this is a COPY; fewer go in one multi-row INSERT, which
# costs one round trip where COPY costs two (single events write one to three rows per table).
COPY_ROWS_MIN = 50
BIGINT_MAX = 2**63 - 1  # the greatest integer a column holds: SQLite's INTEGER, PostgreSQL's BIGINT
# Values in one `IN (...)` list. A statement binds at most three such lists: far under the host
# parameters SQLite (32,766 since 3.32) and PostgreSQL (65,535) take in one statement.
IN_LIST_MAX = 500
# Values in one PostgreSQL array condition: bounds the size of one statement (and of its rows) when
# a catch-up (a release job after a long pause, a close) names hundreds of thousands of ids.
IN_ARRAY_MAX = 50_000
# The PostgreSQL isolation level at which every statement of a transaction reads one snapshot, and
# the one writers run at, where each statement reads what was committed when it started.
ONE_SNAPSHOT = "REPEATABLE READ"
WRITERS_ISOLATION = "READ COMMITTED"
# "revshare" and "program". The database takes them too, before each statement writing the journal
# (lines, headers, closes, payout runs) or the program's facts (migration 0043), and the journal's
# before refunds (0014): a writer sending its own SQL takes its turn.
JOURNAL_LOCK_KEY = 0x7265_7673_6861_7265 & 0x7FFF_FFFF_FFFF_FFFF
PROGRAM_LOCK_KEY = 0x7072_6F67_7261_6D00
# "chain": the program's chain, appended to by the writers of facts and of revenue events alike
# (`ledger.program_chain.chain`). The last lock a transaction takes: its holder takes no other after
# it, so it waits for none while holding it. The database takes it before each statement inserting
# into the chain (migration 0056).
PROGRAM_CHAIN_LOCK_KEY = 0x6368_6169_6E00_0000
# A pooled PostgreSQL connection idle this long or longer is pinged before use (`_install_idle_ping`).
PING_IDLE_S = 1.0
_CHECKED_IN_AT = "revshare_checked_in_at"


def normalize_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def make_engine(url: str, *, lock_wait_s: float | None = None, **kwargs) -> Engine:
    """An engine for `url`. `lock_wait_s` bounds each wait for a lock (the SQLite writers' queue and
    busy handler; PostgreSQL's `lock_timeout`): past it, the statement fails as a busy database
    (`retryable`), a 503 to retry in the API, instead of waiting as long as the holder takes."""
    url = normalize_url(url)
    # A statement's parameters stay out of its errors' text, which a traceback takes to the log: an
    # API key's hash, looked up by every request, went there whenever that lookup failed.
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        if sqlite_file(url) is not None:
            kwargs["connect_args"] = {**kwargs.get("connect_args", {}), "factory": _QueuedWriterConnection}
        engine = create_engine(url, **kwargs)
        _install_sqlite_hooks(engine, lock_wait_s)
        return engine
    # Writers at READ COMMITTED whatever the server's `default_transaction_isolation` says: after
    # the journal lock, each statement must read what the writers before committed, and the
    # database refuses journal rows written at another level (migration 0043). Readers ask for theirs.
    engine = create_engine(url, **{"isolation_level": WRITERS_ISOLATION, **kwargs})
    _install_idle_ping(engine)
    if lock_wait_s is not None:
        _install_lock_timeout(engine, lock_wait_s)
    return engine


def _install_idle_ping(engine: Engine) -> None:
    """Ping a pooled PostgreSQL connection before use when it has sat in the pool PING_IDLE_S or
    longer; one that fails is replaced by a new one (the pool retries a checkout that raises
    DisconnectionError). SQLAlchemy's `pool_pre_ping` pinged on every checkout: a round trip of
    every request, beside a single-event posting's three (reads, writes, commit). A connection the
    server ended while it sat idle is what a ping is for (a restart, an idle timeout, a proxy); one
    ended within the last PING_IDLE_S fails its request instead, a 503 to retry (`retryable`), and
    is discarded, as a connection lost in the middle of a request is."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection, record) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection, record, _proxy) -> None:
        checked_in_at = record.info.get(_CHECKED_IN_AT)
        if checked_in_at is None or time.monotonic() - checked_in_at < PING_IDLE_S:
            return  # new, or in use moments ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            raise DisconnectionError(f"the pooled connection failed its ping: {database_words(error)}") from error


# The instant (`time.monotonic()`) by which every lock wait in this context ends, whatever the engine's
# own bound: a request's (`api.session.REQUEST_LOCKS_S`), so that a request that waits for the
# journal lock again and again (a payout run's releases, a batch applied in parts) answers a busy
# database's 503 in time, where gunicorn's 30-second worker timeout killed it midway, a 500. None:
# each wait has the engine's bound.
_lock_deadline: ContextVar[float | None] = ContextVar("lock_deadline", default=None)


def set_lock_deadline(deadline: float | None) -> Token:
    """From now on in this context, no lock wait goes past `deadline` (`time.monotonic()`; None: no
    bound but the engine's), until `reset_lock_deadline` of what this returns."""
    return _lock_deadline.set(deadline)


def reset_lock_deadline(token: Token) -> None:
    _lock_deadline.reset(token)


@contextlib.contextmanager
def locks_waited_until(deadline: float | None) -> Iterator[None]:
    """Within the block, no lock wait goes past `deadline` (`set_lock_deadline`)."""
    token = set_lock_deadline(deadline)
    try:
        yield
    finally:
        reset_lock_deadline(token)


def past_lock_deadline() -> bool:
    """Whether the context's lock deadline (`locks_waited_until`) has passed."""
    deadline = _lock_deadline.get()
    return deadline is not None and time.monotonic() >= deadline


CANCEL_REPEAT_S = 0.1  # how often `statements_cut_at` cancels again, past its deadline


@contextlib.contextmanager
def statements_cut_at(session: Session, deadline: float, unfinished: Callable[[], Exception]) -> Iterator[None]:
    """Within the block, once `time.monotonic()` passes `deadline`, the session's statements are
    cancelled (SQLite's `interrupt`, PostgreSQL's cancel request, which each engine takes from
    another thread), from a timer thread and again every CANCEL_REPEAT_S until the block ends: a
    statement between two cancels, or a short one, is met by the next. The database's error of a
    statement so cancelled leaves the block as `unfinished()`, and so does the block's end once the
    deadline has passed (a cancel the work caught, as verify's check of the guards catches errors,
    may have changed what it found). The connection is then discarded, its transaction with it: on
    SQLite an interrupt holds while a statement the work left open (a stream) runs, and cut the
    rollback after it too; on PostgreSQL a cancel sent as a statement ended may meet the next one.
    For work one request cannot bound otherwise (`GET /v1/integrity`'s verify): past gunicorn's
    worker timeout the worker is killed mid-work, a 500."""
    connection = session.connection()
    dbapi_connection = connection.connection.dbapi_connection
    cancel = dbapi_connection.interrupt if isinstance(dbapi_connection, sqlite3.Connection) else dbapi_connection.cancel
    ended, fired = threading.Event(), threading.Event()

    def cancel_until_ended() -> None:
        if ended.wait(max(0.0, deadline - time.monotonic())):
            return
        fired.set()
        while True:
            # A connection closed meanwhile (the pool's, at the block's end) has nothing left to cancel.
            with contextlib.suppress(Exception):
                cancel()
            if ended.wait(CANCEL_REPEAT_S):
                return

    canceller = threading.Thread(target=cancel_until_ended, name="statements-cut", daemon=True)
    canceller.start()

    def stopped() -> bool:  # whether it cancelled: the connection is then discarded
        ended.set()
        canceller.join()
        if fired.is_set():
            connection.invalidate()
        return fired.is_set()

    try:
        yield
    except DBAPIError as error:
        if stopped():
            raise unfinished() from error
        raise
    except BaseException:
        stopped()
        raise
    if stopped():
        raise unfinished()


def _wait_within_deadline(wait_s: float) -> float:
    """`wait_s`, cut to what is left before the context's lock deadline (none left: 0)."""
    deadline = _lock_deadline.get()
    return wait_s if deadline is None else max(0.0, min(wait_s, deadline - time.monotonic()))


def _milliseconds(seconds: float) -> int:
    """A wait in whole milliseconds, at least one: 0 means no limit to SQLite and PostgreSQL alike."""
    return max(1, round(seconds * 1000))


def _install_lock_timeout(engine: Engine, lock_wait_s: float) -> None:
    """PostgreSQL's `lock_timeout`, set on each new connection. Not as libpq's `options` connection
    parameter: that replaces the URL's own `options` (a search_path, a statement timeout, a hosting
    provider's endpoint) and PGOPTIONS."""
    lock_timeout_ms = _milliseconds(lock_wait_s)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True  # the setting outlives the pool's rollbacks
        try:
            dbapi_connection.execute(f"SET lock_timeout = {lock_timeout_ms}")
        finally:
            dbapi_connection.autocommit = autocommit

    _LOCK_WAITS[engine.pool] = lock_wait_s  # its option engines (writers, readers) share the pool


# Each PostgreSQL engine's `lock_timeout` (`_install_lock_timeout`), by its pool, for `_near_deadline`.
_LOCK_WAITS: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def _near_deadline(session: Session) -> list[tuple[str, tuple]]:
    """On PostgreSQL, when its context's lock deadline is nearer than the engine's `lock_timeout`: the
    statement that sets the transaction's to what is left (`SET LOCAL`), to send before a statement
    that may wait for a lock (the advisory locks: `lock_journal`, `lock_program`, `locked`,
    `idempotency.claim`, which every wait of the service's transactions is for). PostgreSQL counts
    it from the start of each wait: set once at a transaction's begin, a transaction that waited for
    an `Idempotency-Key`'s claim and then for the journal waited twice what was left. Else none."""
    deadline = _lock_deadline.get()
    if deadline is None:
        return []
    lock_wait_s = _LOCK_WAITS.get(session.get_bind().pool)
    left_s = deadline - time.monotonic()
    if lock_wait_s is None or left_s >= lock_wait_s:
        return []
    return [(f"SET LOCAL lock_timeout = {_milliseconds(left_s)}", ())]


def wait_by_deadline(session: Session) -> None:
    """`_near_deadline`'s statement sent, if any: before a lock another module takes (PostgreSQL)."""
    for sql, params in _near_deadline(session):
        _driver_execute(session.connection(), sql, params)


_LOCK_SUFFIX = "-writer.lock"
_log = logging.getLogger(__name__)


def sqlite_file(url: str | URL) -> str | None:
    """The path of the SQLite database file `url` names, as SQLite opens it (percent-decoded); None
    for another engine, a database in memory or a URI filename, which have no writers' queue."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def writer_lock_path(database: str) -> str:
    """The writers' lock file of an SQLite database file. Named after the file itself, as SQLite names
    its -wal and -shm files: writers opening the database through a symlink and through its real path
    would otherwise queue apart."""
    return f"{os.path.realpath(os.fspath(database))}{_LOCK_SUFFIX}"


def open_writer_lock(lock_path: str) -> int:
    """The writers' lock file, made with the database file's permissions, and, made by root, its
    owner and group, as SQLite makes its -wal and -shm files: a writer that may write the database
    may take the lock (made 0600, it shut out every other user, a group the database is shared with
    included; made by root, as by a `revshare db upgrade` run as root, the service's user could not
    open it). One that cannot be opened is SQLite's CANTOPEN, naming the file and the fix, not a
    PermissionError out of a driver hook (a traceback, a 500)."""
    database = lock_path[:-len(_LOCK_SUFFIX)]
    try:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            made = os.stat(database)
            if os.geteuid() == 0:
                os.fchown(fd, made.st_uid, made.st_gid)
            os.fchmod(fd, made.st_mode & 0o666)
        except OSError:
            pass  # the database's mode unknown, or not ours to give: 0600 as made
        return fd
    except OSError as error:
        cannot = sqlite3.OperationalError(
            f"unable to open the writers' lock file {lock_path!r}: {error.strerror}: every process "
            "that writes the database must be able to open it, or create it in the database's directory, "
            "for writing: run them as one user, or give the file the database file's owner, group and mode "
            "(README, SQLite)")
        cannot.sqlite_errorcode = sqlite3.SQLITE_CANTOPEN
        raise cannot from error


@contextlib.contextmanager
def writers_queue(database: str, wait_s: float) -> Iterator[None]:
    """Hold the writers' queue of the SQLite database file `database` for the block, as a writer
    holds it for its transaction, waiting for it at most `wait_s`: past that, the OperationalError
    of a busy database, as a writer's wait ends (for work that is not one writer's transaction:
    the migrations)."""
    try:
        queue = open_writer_lock(writer_lock_path(database))
        try:
            _take_queue(queue, wait_s)
        except BaseException:
            os.close(queue)
            raise
    except sqlite3.OperationalError as error:  # as SQLAlchemy wraps the driver's errors
        raise OperationalError("BEGIN IMMEDIATE", (), error) from error
    try:
        yield
    finally:
        os.close(queue)  # and the lock with it


def _take_queue(fd: int, wait_s: float | None) -> None:
    """An exclusive flock of the writers' lock file `fd`, waiting for it at most `wait_s` (None: as
    long as it takes); past that, sqlite3.OperationalError with SQLite's busy code, as its own busy
    handler gives."""
    if wait_s is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
    elif not _flock_within(fd, wait_s):
        busy = sqlite3.OperationalError(f"database is locked: another writer held it past {wait_s:g} s")
        busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
        raise busy


class _QueuedWriterConnection(sqlite3.Connection):
    """An sqlite3 connection whose writers queue on a file lock (see the module docstring)."""

    def __init__(self, database, *args, **kwargs) -> None:
        super().__init__(database, *args, **kwargs)
        self._lock_path = writer_lock_path(database)
        self._lock_fd: int | None = None
        self._changes_at_checkpoint = 0
        self.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}").close()

    def queue_for_write(self, wait_s: float | None = None) -> float:
        """Take the writers' file lock, waiting for it at most `wait_s` (None: as long as it takes);
        past that, sqlite3.OperationalError with SQLite's busy code, as its own busy handler gives.
        Returns the seconds it waited."""
        if self._lock_fd is None:
            self._lock_fd = open_writer_lock(self._lock_path)
        started = time.monotonic()
        _take_queue(self._lock_fd, wait_s)
        return time.monotonic() - started

    def leave_queue(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.leave_queue()
        self._checkpoint_when_due()

    def _checkpoint_when_due(self) -> None:
        """A PASSIVE checkpoint (it waits for no reader or writer) once CHECKPOINT_ROWS rows have
        changed since the last one. The commit has succeeded: a failed checkpoint is logged, not
        raised, and SQLite's automatic one remains."""
        if self.total_changes - self._changes_at_checkpoint < CHECKPOINT_ROWS:
            return
        self._changes_at_checkpoint = self.total_changes
        try:
            self.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
        except sqlite3.Error:
            _log.warning("checkpoint of %s failed", self._lock_path[:-len(_LOCK_SUFFIX)], exc_info=True)

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.leave_queue()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


class _WaitOver(Exception):
    pass


def _wait_over(_signal, _frame) -> None:
    raise _WaitOver


def _flock_within(fd: int, wait_s: float) -> bool:
    """Take an exclusive flock of `fd` within `wait_s` seconds; whether it was taken.

    A blocking flock has no timeout of its own. In the main thread (a gunicorn sync worker's, the
    command line's) a SIGALRM interrupts it at the deadline, so the waiter still wakes the moment the
    lock is free; elsewhere it polls, in steps of up to 2 ms. It polls in the main thread too when the
    alarm is not ours to take: the process's one ITIMER_REAL already set by the caller (the wait's
    would replace it, and cancel it at the end), or a SIGALRM handler set outside Python, which could
    not be put back. So does a wait of zero, for which setitimer would disarm the timer instead."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    if (threading.current_thread() is not threading.main_thread() or wait_s <= 0
            or signal.getitimer(signal.ITIMER_REAL) != (0.0, 0.0) or signal.getsignal(signal.SIGALRM) is None):
        deadline, step = time.monotonic() + wait_s, 0.000_2
        while time.monotonic() < deadline:
            time.sleep(step)
            step = min(step * 2, 0.002)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
        return False
    previous = signal.signal(signal.SIGALRM, _wait_over)
    try:
        signal.setitimer(signal.ITIMER_REAL, wait_s)
        fcntl.flock(fd, fcntl.LOCK_EX)
        signal.setitimer(signal.ITIMER_REAL, 0)
        return True
    except _WaitOver:
        # The alarm may have come just after the lock was taken: let it go, taken or not.
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sqlite_pragmas(busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> tuple[str, ...]:
    """The pragmas every SQLite connection of the service is opened with (the write-ahead log apart,
    a property of the file: `_write_ahead_log`)."""
    return ("foreign_keys=ON", "recursive_triggers=ON", f"busy_timeout={busy_timeout_ms}", "synchronous=NORMAL",
            f"cache_size=-{SQLITE_CACHE_KIB}", f"journal_size_limit={SQLITE_WAL_KEEP_BYTES}")


def _install_sqlite_hooks(engine: Engine, lock_wait_s: float | None = None) -> None:
    busy_timeout_ms = SQLITE_BUSY_TIMEOUT_MS if lock_wait_s is None else _milliseconds(lock_wait_s)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        for pragma in sqlite_pragmas(busy_timeout_ms):
            cursor.execute(f"PRAGMA {pragma}")
        _write_ahead_log(cursor)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        if not connection.get_execution_options().get("writer"):
            _driver_execute(connection, "BEGIN DEFERRED", ())
            return
        driver = connection.connection.driver_connection
        queued = isinstance(driver, _QueuedWriterConnection)
        waited_s = 0.0
        wait_s = None if lock_wait_s is None else _wait_within_deadline(lock_wait_s)  # `locks_waited_until`
        if queued:
            try:
                waited_s = driver.queue_for_write(wait_s)
            except sqlite3.OperationalError as error:  # as SQLAlchemy wraps the driver's errors
                raise OperationalError("BEGIN IMMEDIATE", (), error) from error
        try:
            if wait_s is not None and (waited_s >= 0.001 or wait_s < lock_wait_s):
                # SQLite's busy handler gets what is left of the wait (a writer that does not queue,
                # the sqlite3 shell, may hold the database): the queue and it were a wait each.
                driver.execute(f"PRAGMA busy_timeout={_milliseconds(wait_s - waited_s)}").close()
                try:
                    _driver_execute(connection, "BEGIN IMMEDIATE", ())
                finally:
                    driver.execute(f"PRAGMA busy_timeout={busy_timeout_ms}").close()
            else:
                _driver_execute(connection, "BEGIN IMMEDIATE", ())
        except BaseException:
            if queued:
                driver.leave_queue()
            raise


def _write_ahead_log(cursor: sqlite3.Cursor) -> None:
    """Put the database in WAL mode, once: it is a property of the file, which keeps it. Asked of a
    database this process may only read (a copy in an auditor's read-only directory, a file it may not
    write, `mode=ro`), switching would be a write, and `PRAGMA journal_mode=WAL` on every connection
    refused every read of it with "attempt to write a readonly database"; such a database is read in
    the mode it is in (README, SQLite: a copy to read where nothing may be written)."""
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as error:
        if getattr(error, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_READONLY:
            raise


def is_postgres(session_or_engine) -> bool:
    bind = session_or_engine.get_bind() if isinstance(session_or_engine, Session) else session_or_engine
    return bind.dialect.name == "postgresql"


# The database's clock as its rules read it (migration 0018: a close has ended, a payout run is not
# ahead), in microseconds since the epoch; SQLite's to the millisecond, as it keeps it (migration 0045).
_NOW_US_SQLITE = ("SELECT CAST(strftime('%s', 'now') AS INTEGER) * 1000000"
                  " + CAST(substr(strftime('%f', 'now'), 4) AS INTEGER) * 1000")
_NOW_US_POSTGRES = "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint"


def database_now_us(session: Session) -> int:
    """The database's clock, which its rules compare instants with. On PostgreSQL it is the database
    server's, which may disagree with this process's (another host): a Python check that reads only
    its own clock would pass what the database then refuses, a 500."""
    sql = _NOW_US_POSTGRES if is_postgres(session) else _NOW_US_SQLITE
    return session.execute(text(sql)).scalar_one()


class Database:
    """One engine and its two session factories: readers, and writers that lock up front.

    Every statement of a reader's transaction reads one snapshot of the database, so the several
    statements of one report add up: SQLite's read transactions in WAL mode do; PostgreSQL readers
    run at REPEATABLE READ (a read-only transaction there never fails to serialize).

    `shared` holds this process's caches of append-only facts (account ids, the partner program),
    filled only from committed transactions: see `shared_cache` and `after_commit`."""

    def __init__(self, url: str, *, lock_wait_s: float | None = None, **engine_kwargs) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url, lock_wait_s=lock_wait_s, **engine_kwargs)
        self.shared: dict[str, Any] = {}
        info = {"database": self}
        readers = (self.engine.execution_options(isolation_level=ONE_SNAPSHOT)
                   if self.engine.dialect.name == "postgresql" else self.engine)
        self._readers = sessionmaker(readers, expire_on_commit=False, info=info)
        self._writers = sessionmaker(self.engine.execution_options(writer=True), expire_on_commit=False, info=info)

    def reader(self) -> Session:
        return self._readers()

    def writer(self) -> Session:
        return self._writers()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A writer session that commits on success and rolls back on any exception."""
        with self.writer() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def shared_cache(session: Session, name: str) -> dict | None:
    """The process-wide cache `name` of the session's Database (None for a session made elsewhere).
    Only facts that cannot change once committed may go in, and only after their commit."""
    database = session.info.get("database")
    return None if database is None else database.shared.setdefault(name, {})


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action()` when the session's current transaction commits; drop it if it does not."""
    session.info.setdefault(_AFTER_COMMIT, []).append(action)


_AFTER_COMMIT = "after_commit_actions"


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint released: its transaction may still roll back
        return
    for action in session.info.pop(_AFTER_COMMIT, []):
        action()


def transaction_info(session: Session) -> dict:
    """A dict for what holds in the session's current transaction only: emptied when it rolls back
    and when the next one begins."""
    return session.info.setdefault(_TRANSACTION_INFO, {})


_TRANSACTION_INFO = "transaction_info"


@event.listens_for(Session, "after_begin")
@event.listens_for(Session, "after_soft_rollback")
def _end_transaction_scope(session: Session, transaction, *_args) -> None:
    # A savepoint's begin or rollback leaves the transaction it is in as it was (both events
    # come for savepoints too: what the transaction had asked for was dropped at a savepoint).
    if not transaction.nested:
        session.info.pop(_AFTER_COMMIT, None)
        session.info.pop(_TRANSACTION_INFO, None)


def one_snapshot(session: Session) -> None:
    """Make every statement of the session's next transaction read one snapshot of the database, as
    a check comparing what several statements read needs. SQLite: a read transaction in WAL mode
    already does. PostgreSQL: REPEATABLE READ, which can only be chosen before the transaction's
    first statement: on a session already in a transaction, the caller's choice stands (the API's
    and the jobs' sessions are fresh)."""
    if is_postgres(session) and not session.in_transaction():
        session.connection(execution_options={"isolation_level": ONE_SNAPSHOT})


def reads_one_snapshot(session: Session) -> bool:
    """Whether every statement of the session's transaction reads one snapshot, so that what
    several statements read adds up: SQLite's transactions always; PostgreSQL's at REPEATABLE READ
    or above (readers, `one_snapshot`), not at READ COMMITTED (writers), where a posting committed
    between two statements is seen by the second only."""
    connection = session.connection()
    return connection.dialect.name != "postgresql" or connection.get_execution_options().get(
        "isolation_level") in (ONE_SNAPSHOT, "SERIALIZABLE")


def lock_journal(session: Session) -> None:
    """Serialize journal writers. SQLite writers already hold the write lock (`BEGIN IMMEDIATE`);
    PostgreSQL writers take a transaction-scoped advisory lock, released at commit or rollback.
    A transaction that also changes the partner program takes the program revision's row lock
    first (migration 0010): a journal writer never waits for that row while holding this lock."""
    if is_postgres(session):
        wait_by_deadline(session)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": JOURNAL_LOCK_KEY})


def lock_program(session: Session) -> None:
    """Serialize the writers of program facts (plans and versions, partners, their statuses and plan
    changes, customers and attributions). Each reads the latest fact of its kind and decides from it
    (an id already taken, a status after a termination, a start no later than the latest); at READ
    COMMITTED two such writers would each read the facts before the other's and both insert: the
    second then fails on a unique key (a 500) or records a fact its check, and the database's guard,
    would have refused had the first committed. SQLite writers already hold the write lock.
    PostgreSQL: a transaction-scoped advisory lock, taken before the writer reads; the lock order is
    this lock, the program revision's row, then the journal lock (none of its holders posts but
    `revshare demo`, which enrols before it posts). A status change, a plan version and a plan change
    take the journal lock before the revision's row (`partners.set_status`, `plans.add_version`,
    `partners.change_plan`), and so do their withdrawals and an attribution's (`partners.withdraw_change`,
    `plans.withdraw_version`, `customers.withdraw_attribution`): every holder of both takes this lock
    first, so the two orders never meet. The program's chain has a lock of its own, which every
    writer of a fact or of a revenue event takes last, as it appends (`ledger.program_chain.chain`)."""
    if is_postgres(session):
        wait_by_deadline(session)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PROGRAM_LOCK_KEY})


def locked(session: Session, statements: list[tuple[str, Sequence[Any]]], *,
           key: int = JOURNAL_LOCK_KEY) -> list[list[tuple]]:
    """`driver_results` of the statements run under the journal lock (or the lock `key`); on
    PostgreSQL the lock is taken in the same round trip, by a statement before them (each statement
    has its own snapshot, so they see every journal writer that finished before ours)."""
    if not is_postgres(session):
        return driver_results(session, statements)
    near = _near_deadline(session)
    return driver_results(session, [*near, ("SELECT pg_advisory_xact_lock(?)", (key,)),
                                    *statements])[1 + len(near):]


def insert_many(session: Session, table, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """INSERT many rows given as tuples in `columns` order, straight through the driver: the hot
    paths skip SQLAlchemy's per-row parameter processing, which costs more than the insert itself at
    tens of thousands of rows per second.

    SQLite: `executemany` (its guards are row triggers: one statement per row costs them nothing).
    PostgreSQL: one statement per call, a `COPY` (or for a few rows a multi-row INSERT). psycopg's
    `executemany` sends one INSERT per row, and the journal's guards are statement-level triggers
    over transition tables, so per-row statements would run them once per row (about 4x slower in
    `bench/`); one statement runs them once. A database error is raised as SQLAlchemy's wrapper
    (IntegrityError, ...), as from any other statement."""
    if rows:
        _insert_many(session.connection(), table, columns, rows)


def _insert_many(connection, table, columns: tuple[str, ...], rows: list[tuple]) -> None:
    if connection.dialect.name == "postgresql":
        if len(rows) > COPY_ROWS_MIN:
            _copy(connection, table.name, columns, rows)
            return
        _driver_execute(connection, *_multi_row_insert(table, columns, rows))
        return
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join(['?'] * len(columns))})"
    _driver_execute(connection, sql, rows, many=True)


def table_exists(session: Session, name: str) -> bool:
    """Whether the books hold table `name`: those below the revision that made it, as the tests of
    earlier migrations write them with today's code, do not."""
    if is_postgres(session):
        return bool(driver_rows(session, "SELECT 1 WHERE to_regclass(?) IS NOT NULL", (name,)))
    return bool(driver_rows(session, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))


def trigger_exists(session: Session, name: str) -> bool:
    """Whether the books hold trigger `name` (as `table_exists`, of the revision that made it)."""
    if is_postgres(session):
        return bool(driver_rows(session, "SELECT 1 FROM pg_trigger WHERE tgname = ? AND NOT tgisinternal", (name,)))
    return bool(driver_rows(session, "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?", (name,)))


def driver_rows(session: Session, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """The rows of one SELECT sent straight through the driver, as plain tuples.

    For the statements every posting runs (the chain head, an event's stored state, its
    attribution): SQLAlchemy's statement building, cache lookup and result wrapping cost a
    single-event request about as much as SQLite answering the query. `sql` is written with `?`
    placeholders (psycopg gets `%s`), so it must hold no literal `?` or `%`; a database error is
    raised as SQLAlchemy's wrapper, as from any other statement."""
    return _driver_execute(session.connection(), sql, params, fetch=True)


def driver_stream(session: Session, sql: str, params: Sequence[Any], *, rows_per_fetch: int):
    """The rows of one SELECT too large to hold at once, fetched `rows_per_fetch` at a time (a
    server-side cursor on PostgreSQL, which plans it for all its rows, not its first ones); the
    caller closes the result. `?` placeholders as in `driver_rows`."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1")
    return connection.exec_driver_sql(_placeholders(connection, sql), tuple(params),
                                      execution_options={"yield_per": rows_per_fetch})


def _placeholders(connection, sql: str) -> str:
    """`sql` written with `?` placeholders, as the connection's driver takes them."""
    return sql.replace("?", "%s") if connection.dialect.name == "postgresql" else sql


def driver_results(session: Session, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[tuple]]:
    """The rows of each statement (empty for one that returns none), run in order in one round trip.

    PostgreSQL: the statements go as one query string with the parameters bound on the client
    (psycopg's ClientCursor: the server parses it as a simple query), so a posting pays one network
    round trip for all it reads, and one for all it writes, instead of one per statement. Each
    statement still takes its own snapshot (READ COMMITTED), so one that follows the journal lock in
    the same string sees everything committed before the lock was granted. SQLite: one after the
    other on the same connection (there is no round trip to save). `?` placeholders as in
    `driver_rows`; an error stops the statements after it and is raised as SQLAlchemy's wrapper."""
    if not statements:
        return []
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        return [_driver_execute(connection, sql, params, fetch=True) for sql, params in statements]
    dbapi = connection.dialect.loaded_dbapi
    results: list[list[tuple]] = []
    sql = ""
    try:
        with dbapi.ClientCursor(connection.connection.driver_connection) as cursor:
            # Each statement is bound on its own: psycopg keeps the parsed form of a statement of at
            # most 50 parameters, and a posting's writes together bind more than that.
            sql = ";\n".join(cursor.mogrify(statement.replace("?", "%s"), params)
                              for statement, params in statements)
            _announce(connection, cursor, sql, None, False)
            cursor.execute(sql)
            while True:
                # (not `cursor.description`, which builds a Column object for every column)
                returned_rows = cursor.pgresult.status == dbapi.pq.ExecStatus.TUPLES_OK
                results.append(cursor.fetchall() if returned_rows else [])
                if not cursor.nextset():
                    break
    except dbapi.Error as error:
        sql = sql or ";\n".join(statement for statement, _ in statements)  # when binding failed
        raise _database_error(connection, sql, error) from error
    assert len(results) == len(statements), (len(results), len(statements))
    return results


def insert_all(session: Session, writes: Sequence[tuple[Any, tuple[str, ...], list[tuple]]]) -> None:
    """`insert_many` for each (table, columns, rows), in order. On PostgreSQL, when no table gets
    enough rows for a COPY, every INSERT goes in one round trip (`driver_results`)."""
    writes = [write for write in writes if write[2]]
    connection = session.connection()
    if connection.dialect.name != "postgresql" or any(len(rows) > COPY_ROWS_MIN for _, _, rows in writes):
        for table, columns, rows in writes:
            _insert_many(connection, table, columns, rows)
        return
    if writes:
        driver_results(session, [_multi_row_insert(table, columns, rows) for table, columns, rows in writes])


def _multi_row_insert(table, columns: tuple[str, ...], rows: list[tuple]) -> tuple[str, tuple]:
    values = ", ".join([f"({', '.join(['?'] * len(columns))})"] * len(rows))
    return (f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES {values}",
            tuple(value for row in rows for value in row))


def in_lists(session: Session, column: str, values: Iterable[Any]) -> list[tuple[str, tuple]]:
    """Conditions that together select the rows whose `column` is one of `values`, each with its
    parameters, for `driver_rows` or `driver_results`; none for no values.

    PostgreSQL: one `column = ANY(?)` with the values as one array parameter. psycopg converts a
    query string with more than 50 parameters anew on every call (its cache stops there), at about
    10 µs a parameter: more than the server spends finding the rows. Arrays of at most
    IN_ARRAY_MAX values. SQLite: `column IN (?, ...)` lists of at most IN_LIST_MAX values."""
    values = list(values)
    if not values:
        return []
    if is_postgres(session):
        return [(f"{column} = ANY(?)", (chunk,)) for chunk in chunked(values, IN_ARRAY_MAX)]
    return [(f"{column} IN ({marks(len(chunk))})", tuple(chunk)) for chunk in chunked(values, IN_LIST_MAX)]


def marks(count: int) -> str:
    """`?, ?, ?`: the placeholders of an `IN (...)` list of `count` values for `driver_rows`."""
    assert count >= 1, count
    return ", ".join(["?"] * count)


def _announce(connection, cursor, sql: str, params, many: bool) -> None:
    """Tell SQLAlchemy's `before_cursor_execute` listeners of a statement sent past it, as it does
    for its own, so that what watches the statements (logging, tests counting them or explaining
    their plans) sees these too. Without such listeners (the engine's `connect` and `begin` listeners
    do not count) this costs one truth test."""
    listeners = connection.dispatch.before_cursor_execute
    if listeners:
        listeners(connection, cursor, sql, params, None, many)


def _driver_execute(connection, sql: str, params, *, many: bool = False, fetch: bool = False) -> list[tuple] | None:
    dbapi = connection.dialect.loaded_dbapi
    sql = _placeholders(connection, sql)
    cursor = connection.connection.driver_connection.cursor()
    _announce(connection, cursor, sql, params, many)
    try:
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
        return cursor.fetchall() if fetch else None
    except dbapi.Error as error:
        raise _database_error(connection, sql, error) from error
    except OverflowError as error:  # sqlite3 binding an integer past 64 bits (psycopg: SQLSTATE 22003)
        raise _out_of_range("is past the range of a 64-bit integer") from error
    finally:
        cursor.close()


def _copy(connection, table_name: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    sql = f"COPY {table_name} ({', '.join(columns)}) FROM STDIN"
    driver = connection.connection.driver_connection
    dbapi = connection.dialect.loaded_dbapi
    try:
        with driver.cursor() as cursor, cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)
    except dbapi.Error as error:
        raise _database_error(connection, sql, error) from error


# What the database answers when a posting would take an account's running total past a BIGINT:
# SQLite, migration 0011's guard; PostgreSQL, SQLSTATE 22003 (numeric_value_out_of_range).
TOTAL_OUT_OF_RANGE = "account_totals: a running total would exceed the range of a 64-bit integer"
_OUT_OF_RANGE_SQLSTATE = "22003"


def _database_error(connection, sql: str, error: Exception) -> Exception:
    """SQLAlchemy's wrapper of a driver error, as a statement through SQLAlchemy would raise it; a
    running total out of range is bad input instead, a 422 naming `amount` (nothing is written:
    the caller's transaction fails as a whole)."""
    if TOTAL_OUT_OF_RANGE in str(error) or getattr(error, "sqlstate", None) == _OUT_OF_RANGE_SQLSTATE:
        return _out_of_range(f"would take an account's running total past {BIGINT_MAX:,} minor units")
    lost = connection.dialect.is_disconnect(error, connection.connection.dbapi_connection, None)
    if lost:  # as SQLAlchemy does for its own statements: the pool will not hand the dead connection out again
        connection.invalidate(error)
    return DBAPIError.instance(sql, None, error, connection.dialect.loaded_dbapi.Error, dialect=connection.dialect,
                               connection_invalidated=lost)


# Driver errors a retry may well get past: SQLite's busy and locked, and its disk full or failing to
# write (SQLITE_FULL, SQLITE_IOERR: a file size limit reads as the latter), as PostgreSQL's class 53
# (extended codes keep the primary code in their low byte); PostgreSQL's SQLSTATE classes 08
# (connection), 40 (serialization failure, deadlock), 53 (insufficient resources: disk full, out of
# memory), 57 (operator intervention: shutdown, statement timeout) and 55P03 (lock not available),
# and the client's own connection failures, which carry no SQLSTATE.
_SQLITE_RETRYABLE = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
_SQLSTATE_RETRYABLE = ("08", "40", "53", "57", "55P03")


def retryable(error: DBAPIError) -> bool:
    """Whether `error` is the database out of reach, busy or out of room, rather than a statement it
    refused."""
    if error.connection_invalidated:
        return True
    if isinstance(error.orig, sqlite3.Error):
        return getattr(error.orig, "sqlite_errorcode", 0) & 0xFF in _SQLITE_RETRYABLE
    sqlstate = getattr(error.orig, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith(_SQLSTATE_RETRYABLE)


def database_words(error: BaseException) -> str:
    """The first line of what the database (or its driver) said, without SQLAlchemy's wrapping: the
    SQL and the "Background on this error" link follow it."""
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]


def _out_of_range(message: str) -> OutOfRange:
    return OutOfRange(f"amount: {message}", {"amount": [message]})


def chunked(items: list, size: int):
    """Consecutive slices of at most `size` items: keeps `IN (...)` lists under the drivers' limits."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
