"""Where benchmarks run: fresh migrated databases on SQLite (files in a temporary directory) or on
a throwaway PostgreSQL cluster (`tests/pg_cluster.Cluster`), and copies of a database taken at a
moment (so that a raw baseline can write the very rows the domain wrote, onto the same state).

A `Site` owns everything it creates: `close()` disposes engines, stops the cluster and removes
the files, and runs in a `finally` in `bench/__main__.py`.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import sqlalchemy as sa

from ledger.db import Database
from ledger.migrate import upgrade

if TYPE_CHECKING:
    from tests.scenarios.books import Books


class Site:
    """One engine's supply of databases: `new()` migrates (or copies a migrated template)."""

    engine_name = ""

    def new(self, name: str) -> str:
        raise NotImplementedError

    def copy(self, url: str, name: str) -> str:
        raise NotImplementedError

    def drop(self, url: str) -> None:
        """Remove a database once a benchmark is done with it (its engines disposed)."""
        raise NotImplementedError

    def server_version(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SqliteSite(Site):
    engine_name = "sqlite"

    def __init__(self, directory: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="revshare-bench-", dir=directory))
        self._counter = itertools.count()
        self._template = self.root / "template.db"
        upgrade(f"sqlite:///{self._template}")
        _checkpoint(f"sqlite:///{self._template}")

    def path(self, url: str) -> Path:
        return Path(url[len("sqlite:///"):])

    def new(self, name: str) -> str:
        target = self.root / f"{name}-{next(self._counter)}.db"
        shutil.copyfile(self._template, target)
        return f"sqlite:///{target}"

    def copy(self, url: str, name: str) -> str:
        """A copy of a database whose engines are all disposed (its WAL is checkpointed first)."""
        _checkpoint(url)
        target = self.root / f"{name}-{next(self._counter)}.db"
        shutil.copyfile(self.path(url), target)
        return f"sqlite:///{target}"

    def drop(self, url: str) -> None:
        """The file, and those SQLite and the writers' queue keep beside it."""
        for suffix in ("", "-wal", "-shm", "-writer.lock"):
            Path(f"{self.path(url)}{suffix}").unlink(missing_ok=True)

    def server_version(self) -> str:
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}"

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _checkpoint(url: str) -> None:
    database = Database(url)
    with database.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    database.dispose()


class PostgresSite(Site):
    """A throwaway cluster (fsync off, as in the tests); databases are copies of a migrated template."""

    engine_name = "postgres"
    TEMPLATE = "bench_template"

    def __init__(self) -> None:
        from tests.pg_cluster import Cluster

        self.cluster = Cluster()
        self._counter = itertools.count()
        try:
            self.cluster.start()
            self._admin(f"CREATE DATABASE {self.TEMPLATE}")
            upgrade(self.cluster.url(self.TEMPLATE))
        except BaseException:
            self.cluster.stop()
            raise

    def _admin(self, sql: str) -> None:
        engine = sa.create_engine(self.cluster.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(sql)
        finally:
            engine.dispose()

    def new(self, name: str) -> str:
        return self.copy(self.cluster.url(self.TEMPLATE), name)

    def copy(self, url: str, name: str) -> str:
        """A copy of a database that nobody is connected to."""
        target = f"{name}_{next(self._counter)}"
        source = url.rsplit("/", 1)[1]
        self._admin(f"CREATE DATABASE {target} TEMPLATE {source} STRATEGY FILE_COPY")
        return self.cluster.url(target)

    def drop(self, url: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")

    def server_version(self) -> str:
        engine = sa.create_engine(self.cluster.url())
        try:
            with engine.connect() as connection:
                return "PostgreSQL " + connection.exec_driver_sql("SHOW server_version").scalar()
        finally:
            engine.dispose()

    def close(self) -> None:
        self.cluster.stop()


def open_site(engine_name: str) -> Site:
    assert engine_name in ("sqlite", "postgres"), engine_name
    return SqliteSite() if engine_name == "sqlite" else PostgresSite()


@contextlib.contextmanager
def new_books(engine_name: str, name: str) -> Iterator[Books]:
    """The scenario vocabulary (`tests/scenarios/books.py`) over a new database of its own site,
    disposed of, with the site, when the block ends."""
    from tests.scenarios.books import Books  # noqa: F811 - imported when used, not by every benchmark

    site = open_site(engine_name)
    try:
        database = Database(site.new(name))
        try:
            yield Books(database)
        finally:
            database.dispose()
    finally:
        site.close()


def timed_ingest(books: Books, events: list) -> float:
    """Seconds of one `revenue.ingest` batch of `events`, every one of which must post."""
    from ledger.revenue import Outcome

    started = time.perf_counter()
    results = books.ingest(*events)
    seconds = time.perf_counter() - started
    assert all(isinstance(result, Outcome) for result in results), results[:3]
    return seconds
