"""API fixtures: an app over the per-test database (SQLite and PostgreSQL), its test client, one key
per role (partners `p1` and `p2`), and a small journal with transactions of both partners.
The shared worlds also enrol `p1` and `p2` on the plan `standard`, with one customer each
(`p1-customer`, `p2-customer`, attributed from 2026-01-01); enrolment posts nothing to the journal.

Creating a database costs more than most API tests, so two worlds are built once per test session
and engine: `shared`, for tests that only read or are refused (they must not write), and `scratch`,
for tests that write only rows of their own (see `new_transaction`). A test that needs the
database to itself uses the per-test `database` (with `app`, `client`, `keys`, `booked`).
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import date
from typing import Iterator, NamedTuple

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from ledger import accounts as chart
from ledger import customers, journal, partners, plans, revenue
from ledger.db import Database
from ledger.keys import create_key
from ledger.settings import Settings
from tests import program
from tests.conftest import drop_pg_database, new_pg_url, new_sqlite_url

BODY_LIMIT_BYTES = 4096
STANDARD_TERMS = {"rates": [{"from_month": 1, "rate": "0.20"}], "duration_months": 12, "hold_days": 30,
                  "min_payout": [{"amount": "50.00", "currency": "USD"}], "negative_balance": "carry_forward"}
DAY_US = 86_400 * 1_000_000
JAN_20_2026_US = 1_768_867_200 * 1_000_000  # 2026-01-20T00:00:00Z


class Keys(NamedTuple):
    admin: str
    finance: str
    billing: str
    p1: str
    p2: str


class Booked(NamedTuple):
    """Transaction ids: two accruals of p1 and one of p2."""

    p1: tuple[int, int]
    p2: int


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def accrual(partner_id: str, key: str, amount_minor: int, at_us: int, currency: str = "USD") -> journal.Draft:
    return journal.transfer("accrual", chart.EXPENSE_COMMISSION, chart.pending(partner_id), currency, amount_minor,
                            effective_at_us=at_us, idempotency_key=key, partner_id=partner_id,
                            **program.of_an_event(key, partner_id))


class Shared(NamedTuple):
    database: Database
    client: FlaskClient
    roomy: FlaskClient  # a client of an app whose body limit is 1 MiB, for inputs bigger than 4 KiB
    keys: Keys
    booked: Booked


def make_app(database: Database, max_body_bytes: int = BODY_LIMIT_BYTES) -> Flask:
    return create_app(Settings.build(database_url=database.url, max_body_bytes=max_body_bytes), database)


@pytest.fixture
def app(database):
    return make_app(database)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def keys(database) -> Keys:
    """A key of each role, `p1` and `p2` enrolled first: a partner key names a partner that exists."""
    enroll(database)
    return make_keys(database)


@pytest.fixture
def booked(database) -> Booked:
    return book(database)


@pytest.fixture
def fresh(database):
    """A `Caller` (tests/api/books.py) over books of this test alone, with `p1` and `p2` enrolled: for
    what acts on the whole journal (hold releases, payout runs, closes)."""
    from tests.api.books import Caller

    enroll(database)
    return Caller(make_app(database).test_client(), make_keys(database))


@pytest.fixture
def call(scratch):
    """A `Caller` over the `scratch` world: a test adds rows of its own (new ids) and asserts only on them."""
    from tests.api.books import Caller

    return Caller(scratch.client, scratch.keys)


ENGINES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@contextlib.contextmanager
def world_database(request, tmp_path_factory) -> Iterator[Database]:
    """A fresh migrated database of `request.param`'s engine, for a session-scoped fixture."""
    if request.param == "sqlite":
        url = new_sqlite_url(request.getfixturevalue("sqlite_template"), tmp_path_factory.mktemp("world"))
    else:
        url = new_pg_url(request.getfixturevalue("pg_cluster"))
    database = Database(url)
    try:
        yield database
    finally:
        database.dispose()
        if request.param == "postgres":
            drop_pg_database(request.getfixturevalue("pg_cluster"), url)


@pytest.fixture(scope="session", params=ENGINES)
def shared(request, tmp_path_factory):
    with world_database(request, tmp_path_factory) as database:
        enroll(database)
        yield Shared(database, make_app(database).test_client(), make_app(database, 2**20).test_client(),
                     make_keys(database), book(database))


@pytest.fixture(scope="session", params=ENGINES)
def scratch(request, tmp_path_factory):
    """A database per engine that tests add to: each test books what it needs under its
    own ids (`new_transaction`) and asserts only on what it booked. Its `booked` ids are not used."""
    with world_database(request, tmp_path_factory) as database:
        enroll(database)
        yield Shared(database, make_app(database).test_client(), make_app(database, 2**20).test_client(),
                     make_keys(database), book(database))


def enroll(database: Database) -> None:
    """The plan `standard` and partners `p1` and `p2` on it, each with one customer."""
    with database.transaction() as session:
        plans.create_plan(session, "standard", "Standard", STANDARD_TERMS)
        for partner_id in ("p1", "p2"):
            partners.create_partner(session, partner_id, f"Partner {partner_id}", "msp", "standard")
            customers.attribute(session, f"{partner_id}-customer", partner_id, date(2026, 1, 1), "manual")


def new_transaction(database: Database, partner_id: str = "p1", amount_minor: int = 100) -> int:
    """A new accrual of `partner_id` (`p1` or `p2`), for a test that needs a transaction no other
    test touches: of a payment of its customer on an invoice of its own."""
    [transaction_id] = earned(database, [(f"fresh-{uuid.uuid4().hex}", partner_id, amount_minor, JAN_20_2026_US)])
    return transaction_id


def earned(database: Database, accruals: list[tuple[str, str, int, int] | tuple[str, str, int, int, str]]
           ) -> list[int]:
    """The accruals `(key, partner_id, amount_minor, at_us[, currency])` of `p1` and `p2` as billing
    makes them: each of a payment five times its amount (`standard` pays 20%), event `{key}-event`
    of invoice `{key}-invoice` of the partner's customer (`tests.program.of_an_event`). The ids of
    their transactions, in order."""
    events = []
    for key, partner_id, amount_minor, at_us, *currency in accruals:
        links = program.of_an_event(key, partner_id)
        events.append(revenue.RevenueEvent(links["event_id"], "invoice_paid", links["customer_id"], links["invoice_id"],
                                           currency[0] if currency else "USD", 5 * amount_minor, at_us))
    with database.transaction() as session:
        outcomes = revenue.ingest(session, events)
    assert [outcome.commissions[0].amount_minor for outcome in outcomes] == [a[2] for a in accruals], outcomes
    return [transaction_id for outcome in outcomes for transaction_id in outcome.transaction_ids]


def make_keys(database: Database) -> Keys:
    with database.transaction() as session:
        made = [create_key(session, role, partner)[1] for role, partner in
                (("admin", None), ("finance", None), ("billing", None), ("partner", "p1"), ("partner", "p2"))]
    return Keys(*made)


def book(database: Database) -> Booked:
    ids = earned(database, [("p1-a", "p1", 10_000, JAN_20_2026_US), ("p2-a", "p2", 2_500, JAN_20_2026_US + DAY_US),
                            ("p1-b", "p1", 1_234, JAN_20_2026_US + 2 * DAY_US, "JPY")])
    return Booked((ids[0], ids[2]), ids[1])
