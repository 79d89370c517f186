"""Shared fixtures: a migrated database per test, on SQLite and on a throwaway PostgreSQL cluster.

`database` is parametrized over both engines. The schema is migrated once per engine into a
template (an SQLite file, a PostgreSQL template database); each test gets a copy, because the
journal cannot be emptied: its tables refuse DELETE and TRUNCATE by design.

PostgreSQL tests skip with a loud reason when no server binaries are installed, except under
CI=true, where they fail instead: CI must run them.

The tests' files and their PostgreSQL clusters live in memory (`/dev/shm`) when the machine has one
with room and no `TMPDIR` is set: nothing of theirs needs to outlive the run. On this machine's
disk a `CREATE DATABASE` from the template took 80-370 ms, in memory 13-17 ms, and the whole suite
took 675 s against 475 s (`make test` on 2 cores).

`make soak` sets SOAK=1: a `soak` Hypothesis profile, and two helpers that tests use for their
sizes, `examples(n)` (Hypothesis examples, ten times more) and `scaled(n)` (processes, events,
kills, state-machine steps: twice as many). Without it every size is what `make test` runs. It is an
environment variable so that the processes a storm spawns see it too; not a `REVSHARE_` one,
because the service refuses settings it does not know.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import warnings

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings

import ledger.db
from ledger.db import Database
from ledger.migrate import upgrade
from tests import program
from tests.pg_cluster import Cluster, ClusterUnavailable

IN_CI = os.environ.get("CI", "").lower() == "true"
SOAK = os.environ.get("SOAK", "") == "1"
SOAK_EXAMPLES_FACTOR = 10
SOAK_SIZE_FACTOR = 2
_counter = itertools.count()
MEMORY_DIR = "/dev/shm"
MEMORY_ROOM_BYTES = 4 << 30  # the suite's peak there was 0.8 GB (1.4 GB with the files of passed tests kept)


def _memory_temp_dir() -> str | None:
    """`/dev/shm` when no `TMPDIR` was asked for and it is a directory we may write with room."""
    if "TMPDIR" in os.environ or not os.path.isdir(MEMORY_DIR) or not os.access(MEMORY_DIR, os.W_OK | os.X_OK):
        return None
    stats = os.statvfs(MEMORY_DIR)
    return MEMORY_DIR if stats.f_bavail * stats.f_frsize >= MEMORY_ROOM_BYTES else None


# Before pytest picks its base directory (the first `tmp_path`) and before any cluster is made
# (`tests.pg_cluster` takes `tempfile.mkdtemp`); the processes tests start keep their own default.
tempfile.tempdir = _memory_temp_dir() or tempfile.tempdir

# Under CI every Hypothesis test draws the same examples on every run, so that a commit's result
# does not depend on luck; local runs (and `make soak`) keep exploring new examples. The soak profile
# covers tests that name no `max_examples`; those that do ask `examples(n)`.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.register_profile("soak", max_examples=100 * SOAK_EXAMPLES_FACTOR, deadline=None, print_blob=True)
settings.load_profile("soak" if SOAK else "ci" if IN_CI else "dev")


def examples(n: int, soak: int | None = None) -> int:
    """Hypothesis examples for a test that draws `n` under `make test`: `soak`, or ten times more,
    under `make soak`."""
    return (soak or n * SOAK_EXAMPLES_FACTOR) if SOAK else n


def database_property(n: int, soak: int | None = None) -> settings:
    """Settings of a property test whose examples go through a database: `examples(n, soak)` of them,
    no deadline (a database's timing varies with the machine), and slow data generation allowed."""
    return settings(max_examples=examples(n, soak), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def scaled(n: int, factor: int = SOAK_SIZE_FACTOR) -> int:
    """A count (processes, events, kills, steps) that is `n` under `make test` and `factor` times more
    under `make soak`."""
    return n * factor if SOAK else n


# A commission a test posts through the journal alone names an event `tests.program.of_an_event`
# made up; the commit that posts it stores the event (migration 0065 asks for it), on every engine.
sa.event.listen(sa.Engine, "commit", program.store_made_up_events)


# The tests open thousands of databases, each through an engine of its own, and SQLAlchemy keys a
# compiled statement by the instance of its engine's dialect: each engine compiled every statement it
# ran anew (about a millisecond each; half of a `verify` of a small book). The tests' engines share
# one dialect and one cache of compiled statements per driver, server and options; the service runs
# one engine a process.
_SHARED_DIALECTS: dict[tuple, tuple] = {}
_create_engine = ledger.db.create_engine


def _engine_sharing_compiled_statements(url, **kwargs) -> sa.Engine:
    engine = _create_engine(url, **kwargs)
    options = {name: value for name, value in kwargs.items() if name != "connect_args"}
    key = (engine.url.drivername, engine.url.host, engine.url.port, repr(sorted(options.items())))
    if key in _SHARED_DIALECTS:
        dialect, cache = _SHARED_DIALECTS[key]
        engine.dialect = dialect
        engine.update_execution_options(compiled_cache=cache)
    else:  # shared once its first connection has set it up (`Dialect.initialize`)
        sa.event.listen(engine.pool, "connect", lambda *_: _SHARED_DIALECTS.setdefault(
            key, (engine.dialect, sa.util.LRUCache(5_000))), once=True)
    return engine


ledger.db.create_engine = _engine_sharing_compiled_statements


@pytest.fixture(autouse=True)
def _made_up_events_forgotten():
    yield
    program.MADE_UP.clear()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("template") / "template.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    database = Database(url)
    with database.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    database.dispose()
    return str(path)


@pytest.fixture(scope="session")
def pg_cluster():
    try:
        cluster = Cluster().start()
    except ClusterUnavailable as error:
        if IN_CI:
            pytest.fail(f"CI=true and PostgreSQL cannot start: {error}")
        # Shown in the warnings summary, not raised: under `filterwarnings = error` the warning was an
        # exception, and every PostgreSQL test an error instead of a skip.
        with warnings.catch_warnings():
            warnings.simplefilter("always", pytest.PytestWarning)
            warnings.warn(pytest.PytestWarning(f"PostgreSQL TESTS SKIPPED: {error}"))
        pytest.skip(f"PostgreSQL TESTS SKIPPED: {error}")
    try:
        template = "revshare_template"
        with admin_engine(cluster).connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {template}")
        upgrade(cluster.url(template))
        yield cluster
    finally:
        if (admin := _ADMINS.pop(cluster.url(), None)) is not None:
            admin.dispose()
        cluster.stop()


_ADMINS: dict[str, sa.Engine] = {}


def admin_engine(cluster: Cluster) -> sa.Engine:
    """An engine on `cluster`'s maintenance database kept for the session: a connection of its own
    for each CREATE or DROP DATABASE took about 10 ms, twice a PostgreSQL test (a pooled one, 1 ms)."""
    url = cluster.url()
    if url not in _ADMINS:
        _ADMINS[url] = sa.create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    return _ADMINS[url]


def new_sqlite_url(template: str, directory) -> str:
    path = directory / f"db{next(_counter)}.db"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def new_pg_url(cluster: Cluster, template: str | None = "revshare_template") -> str:
    """A new database: a copy of the migrated template, or empty (no migration run) without one."""
    name = f"test_{os.getpid()}_{next(_counter)}"
    with admin_engine(cluster).connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    return cluster.url(name)


def drop_pg_database(cluster: Cluster, url: str) -> None:
    with admin_engine(cluster).connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")


def built_sqlite_template(template: str, directory, build) -> str:
    """The path of a copy of `template` with `build(database)` written into it, for tests to copy
    again (`new_sqlite_url`): checkpointed, since a copy reads the main file only."""
    url = new_sqlite_url(template, directory)
    database = Database(url)
    build(database)
    with database.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    database.dispose()
    return url.removeprefix("sqlite:///")


@pytest.fixture(scope="session")
def built_templates() -> dict:
    """The books `built_template` wrote, by (build, engine), for the session."""
    return {}


def built_template(request, build, engine: str) -> str:
    """A copy of the migrated template with `build(database)` written into it once a session for
    `engine`, for tests to copy again: on SQLite its path (`new_sqlite_url`), on PostgreSQL its
    database's name (`new_pg_url`'s template), left to the throwaway cluster."""
    templates = request.getfixturevalue("built_templates")
    if (build, engine) not in templates:
        if engine == "sqlite":
            directory = request.getfixturevalue("tmp_path_factory").mktemp("built")
            templates[build, engine] = built_sqlite_template(request.getfixturevalue("sqlite_template"), directory,
                                                             build)
        else:
            url = new_pg_url(request.getfixturevalue("pg_cluster"))
            database = Database(url)
            build(database)
            database.dispose()
            templates[build, engine] = url.rsplit("/", 1)[1]
    return templates[build, engine]


def copied_databases(request, tmp_path, build, count: int):
    """`count` databases of `request.param`'s engine ("sqlite" or "postgres") copied from books
    `build` wrote once a session (`built_template`), disposed of and dropped after the test: for a
    fixture whose every test would otherwise write the same books first."""
    template = built_template(request, build, request.param)
    cluster = None if request.param == "sqlite" else request.getfixturevalue("pg_cluster")
    urls = [new_sqlite_url(template, tmp_path) if cluster is None else new_pg_url(cluster, template=template)
            for _ in range(count)]
    databases = [Database(url) for url in urls]
    yield databases
    for database in databases:
        database.dispose()
    for url in urls if cluster is not None else ():
        drop_pg_database(cluster, url)


def copied_database(request, tmp_path, build):
    """One of `copied_databases`."""
    yield from (databases[0] for databases in copied_databases(request, tmp_path, build, 1))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield new_sqlite_url(request.getfixturevalue("sqlite_template"), tmp_path)
        return
    cluster = request.getfixturevalue("pg_cluster")
    url = new_pg_url(cluster)
    yield url
    drop_pg_database(cluster, url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request, tmp_path):
    """An empty database (no migration run yet)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    cluster = request.getfixturevalue("pg_cluster")
    url = new_pg_url(cluster, template=None)
    yield url
    drop_pg_database(cluster, url)


@pytest.fixture
def database(database_url):
    db = Database(database_url)
    yield db
    db.dispose()


@pytest.fixture
def sqlite_database(sqlite_template, tmp_path):
    db = Database(new_sqlite_url(sqlite_template, tmp_path))
    yield db
    db.dispose()


@pytest.fixture
def postgres_database(pg_cluster):
    url = new_pg_url(pg_cluster)
    db = Database(url)
    yield db
    db.dispose()
    drop_pg_database(pg_cluster, url)


class SkewedClock:
    """The service's clock (`ledger.instants.now_us`) set `offset_us` away from the host's, as on an
    app server whose clock disagrees with another's, or with the database's, or that was stepped."""

    def __init__(self) -> None:
        self.offset_us = 0
        self.step_back_per_read_us = 0  # a clock stepped back just after each read (NTP steps)

    def time_ns(self) -> int:
        import time
        read_ns = time.time_ns() + self.offset_us * 1000
        self.offset_us -= self.step_back_per_read_us
        return read_ns


@pytest.fixture
def skewed_clock(monkeypatch) -> SkewedClock:
    """The service's clock, to set ahead or behind with `skewed_clock.offset_us` (the database's own
    clock, which its rules read, stays the host's)."""
    from ledger import instants

    clock = SkewedClock()
    monkeypatch.setattr(instants, "_time", clock)
    return clock
