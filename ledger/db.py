"""Engines, sessions and the journal lock, for SQLite and PostgreSQL alike.

SQLite connections get `PRAGMA foreign_keys=ON` (the deferred line->header key is an invariant),
`recursive_triggers=ON` (so `INSERT OR REPLACE` fires the delete guard and is refused),
`journal_mode=WAL` (readers never block the writer) and a `busy_timeout`. The pysqlite driver's
own transaction handling is switched off so that we emit `BEGIN` ourselves: writers use
`BEGIN IMMEDIATE`, which takes the write lock up front, so two writers queue on the busy timeout
instead of failing on a stale snapshot.

On PostgreSQL every journal writer takes one transaction-scoped advisory lock before reading the
chain head; that serializes sequence numbers and hashes across processes and hosts.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
# PostgreSQL: a write of more rows than this is a COPY; fewer go in one multi-row INSERT, which
# costs one round trip where COPY costs two (single events write one to three rows per table).
COPY_ROWS_MIN = 50
JOURNAL_LOCK_KEY = 0x7265_7673_6861_7265 & 0x7FFF_FFFF_FFFF_FFFF  # "revshare"


def normalize_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def make_engine(url: str, **kwargs) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, **kwargs)
        _install_sqlite_hooks(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        for pragma in ("foreign_keys=ON", "recursive_triggers=ON", "journal_mode=WAL",
                       f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}", "synchronous=NORMAL"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        mode = "IMMEDIATE" if connection.get_execution_options().get("writer") else "DEFERRED"
        connection.exec_driver_sql(f"BEGIN {mode}")


def is_postgres(session_or_engine) -> bool:
    bind = session_or_engine.get_bind() if isinstance(session_or_engine, Session) else session_or_engine
    return bind.dialect.name == "postgresql"


class Database:
    """One engine and its two session factories: readers, and writers that lock up front."""

    def __init__(self, url: str, **engine_kwargs) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url, **engine_kwargs)
        self._readers = sessionmaker(self.engine, expire_on_commit=False)
        self._writers = sessionmaker(self.engine.execution_options(writer=True), expire_on_commit=False)

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


def lock_journal(session: Session) -> None:
    """Serialize journal writers. SQLite writers already hold the write lock (`BEGIN IMMEDIATE`);
    PostgreSQL writers take a transaction-scoped advisory lock, released at commit or rollback."""
    if is_postgres(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": JOURNAL_LOCK_KEY})


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
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        if len(rows) > COPY_ROWS_MIN:
            _copy(connection, table.name, columns, rows)
            return
        values = ", ".join([f"({', '.join(['%s'] * len(columns))})"] * len(rows))
        connection.exec_driver_sql(f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES {values}",
                                   tuple(value for row in rows for value in row))
        return
    marker = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([marker] * len(columns))})"
    connection.exec_driver_sql(sql, rows)


def _copy(connection, table_name: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    sql = f"COPY {table_name} ({', '.join(columns)}) FROM STDIN"
    driver = connection.connection.driver_connection
    dbapi = connection.dialect.loaded_dbapi
    try:
        with driver.cursor() as cursor, cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)
    except dbapi.Error as error:
        raise DBAPIError.instance(sql, None, error, dbapi.Error, dialect=connection.dialect) from error


def chunked(items: list, size: int):
    """Consecutive slices of at most `size` items: keeps `IN (...)` lists under the drivers' limits."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
