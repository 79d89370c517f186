"""PostgreSQL's pooled connections (ledger/db.py `_install_idle_ping`): one used moments ago is
handed out as it is, one that sat idle is pinged first, and one the server ended while it sat idle
is replaced before a request uses it; one the server ended within the idle time (a restart under
load) fails its request with a 503 to retry, whose retry is served on a new connection. On the
database's own host the service may connect over PostgreSQL's Unix socket instead of TCP."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from api import create_app
from api.idempotency import REPLAYED_HEADER
from ledger import db
from ledger.db import Database
from ledger.migrate import upgrade
from ledger.schema import revenue_events
from ledger.settings import Settings
from tests.api.books import event_body
from tests.api.conftest import bearer, enroll, make_app, make_keys
from tests.pg_cluster import Cluster

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


def test_after_a_restart_a_request_on_a_connection_used_moments_before_is_a_503_and_its_retry_posts_once(monkeypatch):
    # The connection is not pinged (used within PING_IDLE_S): the request that finds it ended must be
    # a 503 to retry, never a 500, and the next one must be served on a new connection.
    monkeypatch.setattr(db, "PING_IDLE_S", 60.0)
    cluster = Cluster().start()
    database = None
    try:
        admin = sa.create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql("CREATE DATABASE books")
        admin.dispose()
        upgrade(cluster.url("books"))
        database = Database(cluster.url("books"))
        enroll(database)
        keys = make_keys(database)
        client = make_app(database).test_client()

        def post(event_id: str):
            return client.post("/v1/revenue-events", headers=bearer(keys.billing),
                               json=event_body(event_id, "p1-customer", f"inv-{event_id}", "250.00", "2026-01-01"))

        assert post("evt-before").status_code == 201
        cluster.pause()
        cluster.resume()
        refused = post("evt-after")
        assert (refused.status_code, refused.headers.get("Retry-After")) == (503, "1"), refused.get_json()
        retried = post("evt-after")
        assert retried.status_code == 201 and REPLAYED_HEADER not in retried.headers, retried.get_json()
        with database.reader() as session:
            stored = session.execute(sa.select(sa.func.count()).select_from(revenue_events)).scalar_one()
        assert stored == 2
    finally:
        if database is not None:
            database.dispose()
        cluster.stop()


def test_the_service_reaches_postgresql_on_its_host_over_the_unix_socket(postgres_database, pg_cluster):
    # README, PostgreSQL, step by step: a URL naming the socket's directory as `host`. The settings
    # take it, the app makes its own engine from it, and a posting is made over it.
    tcp = sa.make_url(postgres_database.url)
    url = f"postgresql://{tcp.username}@/{tcp.database}?host={pg_cluster.root}&port={tcp.port}"
    enroll(postgres_database)
    keys = make_keys(postgres_database)
    app = create_app(Settings.build(database_url=url))
    database = app.extensions["revshare"]["database"]
    try:
        posted = app.test_client().post("/v1/revenue-events", headers=bearer(keys.billing),
                                        json=event_body("evt-1", "p1-customer", "inv-1", "250.00", "2026-01-01"))
        assert posted.status_code == 201, posted.get_json()
        with database.reader() as session:
            assert session.execute(sa.text("SELECT inet_client_addr()")).scalar_one() is None  # no TCP peer
        with postgres_database.reader() as session:
            assert session.execute(sa.select(revenue_events.c.id)).scalars().all() == ["evt-1"]
    finally:
        database.dispose()
