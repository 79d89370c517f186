"""PostgreSQL's pooled connections (ledger/db.py `_install_idle_ping`): one used moments ago is
handed out as it is, one that sat idle is pinged first, and one the server ended while it sat idle
is replaced before a request uses it."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from ledger import db
from ledger.db import Database

pytestmark = pytest.mark.postgres


@pytest.fixture
def pinged(postgres_database, monkeypatch):
    """A new Database over the test database, and the list of the pings it sends."""
    database = Database(postgres_database.url)
    pings = []
    ping = database.engine.dialect.do_ping
    monkeypatch.setattr(database.engine.dialect, "do_ping", lambda connection: pings.append(1) or ping(connection))
    yield database, pings
    database.dispose()


def backend_pid(database: Database) -> int:
    with database.reader() as session:
        return session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()


def test_a_connection_used_moments_ago_is_handed_out_without_a_ping(pinged):
    # SQLAlchemy's pool_pre_ping sent one on every checkout: a round trip of every request.
    database, pings = pinged
    pids = {backend_pid(database) for _ in range(5)}
    assert len(pids) == 1 and pings == []


def test_a_connection_that_sat_idle_is_pinged_and_one_the_server_ended_meanwhile_is_replaced(pinged, monkeypatch):
    database, pings = pinged
    monkeypatch.setattr(db, "PING_IDLE_S", 0.0)  # every checkout comes after the idle time
    first = backend_pid(database)
    assert backend_pid(database) == first and pings == [1]
    admin = sa.create_engine(database.engine.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        assert connection.exec_driver_sql(f"SELECT pg_terminate_backend({first})").scalar_one()
    admin.dispose()
    assert backend_pid(database) != first and pings == [1, 1]
