"""Stored request outcomes: one record per (API key, idempotency key); a second insert loses quietly."""

import pytest

from ledger import idempotency
from ledger.idempotency import StoredRequest
from ledger.keys import create_key


def stored(body: str = '{"a":1}', status: int = 201) -> StoredRequest:
    return StoredRequest("POST", "/v1/x", idempotency.request_hash("POST", "/v1/x", body), body, status, '{"id":1}')


@pytest.fixture
def key_id(database) -> str:
    with database.transaction() as session:
        return create_key(session, "finance")[0]


def test_a_record_is_found_by_api_key_and_idempotency_key(database, key_id):
    with database.transaction() as session:
        idempotency.claim(session, key_id, "k1")
        assert idempotency.find(session, key_id, "k1") is None
        assert idempotency.record(session, key_id, "k1", stored()) is True
    with database.reader() as session:
        assert idempotency.find(session, key_id, "k1") == stored()
        assert idempotency.find(session, key_id, "k2") is None


def test_a_second_record_for_the_same_key_loses_without_an_error(database, key_id):
    with database.transaction() as session:
        assert idempotency.record(session, key_id, "k1", stored()) is True
    with database.transaction() as session:
        assert idempotency.record(session, key_id, "k1", stored('{"a":2}', 200)) is False
    with database.reader() as session:
        assert idempotency.find(session, key_id, "k1") == stored()


def test_the_same_idempotency_key_of_another_api_key_is_another_record(database, key_id):
    with database.transaction() as session:
        other = create_key(session, "admin")[0]
        assert idempotency.record(session, key_id, "k1", stored()) is True
        assert idempotency.record(session, other, "k1", stored()) is True


def test_canonical_json_ignores_key_order_and_spacing_but_not_types():
    assert idempotency.canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert idempotency.canonical_json({"a": 1}) != idempotency.canonical_json({"a": 1.0})
    assert idempotency.canonical_json({"a": "\ud800"}) == '{"a":"\\ud800"}'


@pytest.mark.parametrize("before, after, fields", [
    ({"a": 1, "b": 2}, {"a": 1, "b": 3}, ["b"]),
    ({"a": 1}, {"a": 1, "c": 0}, ["c"]),
    ({"a": 1, "c": 0}, {"a": 1}, ["c"]),
    ({"a": 1}, {"a": True}, ["a"]),
    ({"a": {"x": 1}}, {"a": {"x": 2}}, ["a"]),
    ({"a": 1}, [1], ["body"]),
    (None, {"a": 1}, ["body"]),
    ({"a": 1}, {"a": 1}, []),
])
def test_differing_fields_are_the_top_level_fields_that_changed(before, after, fields):
    canonical = idempotency.canonical_json
    assert idempotency.differing_fields(canonical(before), canonical(after)) == fields
