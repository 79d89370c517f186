"""API keys: random, stored only as a SHA-256 hash, bound to a role (and a partner for partner keys)."""

import hashlib
import sqlite3

import pytest
import sqlalchemy as sa

from ledger import idempotency
from ledger.errors import InvalidInput, NotFound
from ledger.keys import Principal, authenticate, create_key, revoke_key
from ledger.schema import api_keys
from tests.api.conftest import enroll
from tests.integration.conftest import chain_due, second_writer_behind_first


def test_a_created_key_authenticates_as_its_role(database):
    with database.transaction() as session:
        key_id, key = create_key(session, "finance")
    with database.reader() as session:
        assert authenticate(session, key) == Principal(key_id, "finance", None)


def test_a_partner_key_is_bound_to_its_partner(database):
    enroll(database)
    with database.transaction() as session:
        key_id, key = create_key(session, "partner", "p1")
    with database.reader() as session:
        assert authenticate(session, key) == Principal(key_id, "partner", "p1")


def test_a_partner_key_for_a_partner_that_does_not_exist_is_refused_naming_it(database):
    with pytest.raises(InvalidInput) as refused, database.transaction() as session:
        create_key(session, "partner", "nobody")
    assert refused.value.fields == {"partner_id": ["partner 'nobody' does not exist"]}


def test_only_the_hash_of_a_key_is_stored(database):
    with database.transaction() as session:
        key_id, key = create_key(session, "admin")
    with database.reader() as session:
        row = session.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one()
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in [str(value) for value in row]


def test_keys_are_long_random_and_distinct(database):
    with database.transaction() as session:
        made = {create_key(session, "billing")[1] for _ in range(20)}
    assert len(made) == 20
    assert all(key.startswith("rsk_") and len(key) >= 4 + 43 for key in made)  # 32 bytes of entropy


def test_anything_but_a_stored_key_authenticates_as_nobody(database):
    with database.transaction() as session:
        _, key = create_key(session, "admin")
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    with database.reader() as session:
        for presented in ["", "rsk_", "rsk_unknown", "not-a-key", "rsk_" + "x" * 500, None, 42, tampered, key[4:]]:
            assert authenticate(session, presented) is None, presented


def test_a_key_with_a_bad_role_or_binding_is_refused_naming_the_field(database):
    for role, partner_id, field in [("root", None, "role"), ("partner", None, "partner_id"),
                                    ("finance", "northwind", "partner_id"), ("partner", "has:colon", "partner_id"),
                                    ("partner", "", "partner_id")]:
        with pytest.raises(InvalidInput) as refused, database.transaction() as session:
            create_key(session, role, partner_id)
        assert set(refused.value.fields) == {field}, (role, partner_id)
    with database.reader() as session:
        assert session.execute(sa.select(sa.func.count()).select_from(api_keys)).scalar_one() == 0


def test_the_database_refuses_a_partner_key_without_a_partner(database):
    with pytest.raises(sa.exc.IntegrityError), database.transaction() as session:
        session.execute(sa.insert(api_keys).values(id="k", key_hash="0" * 64, role="partner", partner_id=None,
                                                   created_at_us=0))


def test_the_database_refuses_a_key_that_expires_before_it_was_made(database):
    with database.transaction() as session:
        key_id, _ = create_key(session, "admin")
    for expires_at_us in (6, 5):  # at its creation, and before it
        with pytest.raises(sa.exc.IntegrityError), database.transaction() as session:
            session.execute(sa.insert(api_keys).values(id="k", key_hash="0" * 64, role="admin", partner_id=None,
                                                       created_at_us=6, expires_at_us=expires_at_us))
            chain_due(session.connection())
    with database.reader() as session:
        assert session.execute(sa.select(api_keys.c.id)).scalars().all() == [key_id]


def test_a_revoked_key_no_longer_authenticates_and_its_revocation_is_kept_as_first_made(database):
    with database.transaction() as session:
        key_id, key = create_key(session, "finance")
        other_id, other = create_key(session, "finance")
    with database.transaction() as session:
        first, created = revoke_key(session, key_id, "leaked")
    assert created and (first.key_id, first.reason) == (key_id, "leaked")
    with database.transaction() as session:
        assert revoke_key(session, key_id, "again") == (first, False)
    with database.reader() as session:
        assert authenticate(session, key) is None
        assert authenticate(session, other) == Principal(other_id, "finance", None)
    with pytest.raises(NotFound), database.transaction() as session:
        revoke_key(session, "key_nobody")


@pytest.mark.parametrize("statement", ["UPDATE api_key_revocations SET reason = 'forgotten'",
                                       "DELETE FROM api_key_revocations"])
def test_a_revocation_is_never_updated_or_deleted_in_the_database(database, statement):
    with database.transaction() as session:
        key_id, _ = create_key(session, "billing")
        revoke_key(session, key_id)
    with pytest.raises(sa.exc.DBAPIError, match="api_key_revocations is append-only"):
        with database.engine.begin() as connection:
            connection.exec_driver_sql(statement)


@pytest.mark.parametrize("statement", [
    "DELETE FROM api_keys", "DELETE FROM idempotency_records",
    # A key given another role in place: SQLite's REPLACE is refused by the guard before the insert
    # (0042), before it could delete the row it meets; PostgreSQL has no REPLACE, and its upsert meets
    # the update guard (0018): a control, refused before 0042 too.
    "INSERT OR REPLACE INTO api_keys (id, key_hash, role, partner_id, created_at_us) "
    "SELECT id, key_hash, 'admin', NULL, created_at_us FROM api_keys",
])
def test_a_key_and_a_stored_answer_are_never_deleted_or_replaced_in_the_database(database, statement):
    """Migration 0042 (0018 refused their UPDATE). A stored answer deleted would let its key be sent
    again with another body; a key replaced would have its answers and revocation name another key."""
    with database.transaction() as session:
        key_id, _ = create_key(session, "billing")
        assert idempotency.record(session, key_id, "k1", idempotency.StoredRequest(
            "POST", "/v1/adjustments", "0" * 64, "{}", 201, "{}"))
    if database.engine.dialect.name == "postgresql" and statement.startswith("INSERT OR REPLACE"):
        statement = ("INSERT INTO api_keys (id, key_hash, role, partner_id, created_at_us) SELECT id, key_hash, "
                     "'admin', NULL, created_at_us FROM api_keys ON CONFLICT (id) DO UPDATE SET role = 'admin'")
    table = statement.split()[2] if statement.startswith("DELETE") else "api_keys"
    # Refused by the delete guard, by the guard before an insert (SQLite's REPLACE) or by the update
    # guard (PostgreSQL's upsert).
    with pytest.raises(sa.exc.DBAPIError, match=f"{table} is append-only: (DELETE refused|its unique key)|"
                                                f"{table}: rows are never updated"):
        with database.engine.begin() as connection:
            connection.exec_driver_sql(statement)
    with database.reader() as session:
        assert session.execute(sa.select(api_keys.c.role).where(api_keys.c.id == key_id)).scalar_one() == "billing"
        assert idempotency.find(session, key_id, "k1") is not None


def test_a_key_is_not_replaced_from_a_plain_sqlite_connection(sqlite_database):
    """The sqlite3 shell leaves recursive_triggers off, so a REPLACE deletes unguarded: the guard
    before each insert refuses a taken id or key hash (migration 0042, as 0036 for the books)."""
    with sqlite_database.transaction() as session:
        key_id, _ = create_key(session, "billing")
    connection = sqlite3.connect(sqlite_database.engine.url.database)
    try:
        for new_id, taken in ((key_id, "api_keys.id"), ("key_other", "api_keys.key_hash")):
            with pytest.raises(sqlite3.IntegrityError, match=f"^api_keys is append-only: its unique key {taken} is "
                                                             "taken$"):
                connection.execute("INSERT OR REPLACE INTO api_keys (id, key_hash, role, partner_id, created_at_us) "
                                   "SELECT ?, key_hash, 'admin', NULL, created_at_us FROM api_keys WHERE id = ?",
                                   (new_id, key_id))
    finally:
        connection.close()
    with sqlite_database.reader() as session:
        assert session.execute(sa.select(api_keys.c.role)).scalars().all() == ["billing"]


@pytest.mark.postgres
def test_a_key_revoked_twice_at_once_answers_the_first_revocation_on_postgresql(postgres_database):
    # Both found no revocation; the second's insert then failed on the key: a 500 over HTTP.
    with postgres_database.transaction() as session:
        key_id, _ = create_key(session, "billing")
    revoked = {}

    def first(session):
        revoked["first"] = revoke_key(session, key_id, "leaked")[0]

    outcome = second_writer_behind_first(postgres_database, first, lambda session: revoke_key(session, key_id, "again"))
    assert outcome == (revoked["first"], False)
