"""POST /v1/revenue-events answers alike on its two paths: a plain body read by `plain_event` straight
into the view (`api.body.plain_body`), and anything else through webargs and flask-smorest.

Two apps over two copies of one database (same keys, same books) get the same requests in the same
order; one serves them as the service does, the other always through the schema. Every answer must
match byte for byte: status, every header in order, body."""

import functools
import json
import shutil
import uuid

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from ledger.db import Database
from tests.api.conftest import bearer, enroll, make_app, make_keys
from tests.conftest import database_property, new_sqlite_url

ENDPOINT = "revenue-events.post_event"


def _through_the_schema(view):
    """The view with its plain path skipped: what `plain_body` wraps, under the same declarations."""

    @functools.wraps(view)
    def schema_path(*args, **kwargs):
        return view.__wrapped__(*args, **kwargs)

    return schema_path


@pytest.fixture(scope="module")
def twins(sqlite_template, tmp_path_factory):
    directory = tmp_path_factory.mktemp("twins")
    url = new_sqlite_url(sqlite_template, directory)
    database = Database(url)
    enroll(database)
    keys = make_keys(database)
    with database.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    database.dispose()
    twin_url = f"sqlite:///{directory / 'twin.db'}"
    shutil.copyfile(url[len("sqlite:///"):], twin_url[len("sqlite:///"):])
    databases = [Database(url), Database(twin_url)]
    plain, schema = (make_app(each) for each in databases)
    schema.view_functions[ENDPOINT] = _through_the_schema(schema.view_functions[ENDPOINT])
    yield plain.test_client(), schema.test_client(), bearer(keys.billing)
    for each in databases:
        each.dispose()


# Events each field of which is well formed (a refund may still be refused, or replay, or conflict:
# ids repeat); and the same with one field replaced by a value of the wrong form or type.
_EVENT = st.fixed_dictionaries({
    "id": st.sampled_from(["e-1", "e-2"]),
    "type": st.sampled_from(["invoice_paid", "invoice_paid", "refund", "chargeback", "chargeback_reversed"]),
    "customer_id": st.sampled_from(["p1-customer", "p2-customer", "nobody"]),
    "invoice_id": st.sampled_from(["inv-1", "inv-2"]),
    "amount": st.fixed_dictionaries({"amount": st.sampled_from(["100.00", "0.01", "7"]),
                                     "currency": st.sampled_from(["USD", "JPY"])}),
    "occurred_at": st.sampled_from(["2026-02-01T00:00:00Z", "2026-03-01T09:00:00.5+09:00"])})
_WRONG = st.sampled_from([None, 1, 1.5, "", "bad id", "Refund", "2026-02-01", "2999-01-01T00:00:00Z", [],
                          {"amount": "1.001", "currency": "USD"}, {"amount": "-5.00", "currency": "USD"},
                          {"amount": "0.00", "currency": "USD"}, {"amount": "5", "currency": "usd"},
                          {"amount": 5, "currency": "USD"}, {"amount": "5"}])
_CHANGED = st.builds(lambda data, name, value: {**data, name: value}, _EVENT,
                     st.sampled_from(["id", "type", "customer_id", "amount", "occurred_at", "extra"]), _WRONG)
_WITHOUT = st.builds(lambda data, name: {k: v for k, v in data.items() if k != name}, _EVENT,
                     st.sampled_from(["invoice_id", "amount"]))
_BODIES = st.one_of(_EVENT, _EVENT, _EVENT, _CHANGED, _WITHOUT, st.sampled_from(
    [b"", b"  ", b"null", b"[]", b"{", b'{"id": "e-1", "id": "e-2"}', b"\xff", b"1e999"]))
_CONTENT_TYPES = st.sampled_from(["application/json", "application/json", "application/json",
                                  "application/merge-patch+json", "text/plain", None])


def _encoded(body, example: str) -> bytes:
    """The body as sent, its event and invoice ids made this example's own (a replay or a conflict
    is then one within the example, not one with an earlier example's event)."""
    if isinstance(body, bytes):
        return body
    fresh = {name: f"{example}{value}" if name in ("id", "invoice_id") and isinstance(value, str) else value
             for name, value in body.items()}
    return json.dumps(fresh).encode()


def _answer(client, body: bytes, headers: dict) -> tuple:
    response = client.post("/v1/revenue-events", data=body, headers=headers)
    return response.status_code, response.headers.to_wsgi_list(), response.data


# Each list is sent twice over: the second time every event the first posted is a replay (`Idempotent-Replayed`),
# which one list alone reached in about one example in a hundred.
_REQUESTS = st.lists(st.tuples(_BODIES, _CONTENT_TYPES), min_size=1, max_size=8).map(lambda sent: sent + sent)


@given(_REQUESTS)
@database_property(150)
def test_a_revenue_event_is_answered_alike_on_its_plain_path_and_through_its_schema(twins, requests):
    plain, schema, headers = twins
    example = uuid.uuid4().hex[:8]
    for body, content_type in requests:
        sent = {**headers, **({"Content-Type": content_type} if content_type else {})}
        answer = _answer(plain, _encoded(body, example), sent)
        assert answer == _answer(schema, _encoded(body, example), sent)
        assert answer[0] < 500, answer
        event(f"{answer[0]} {dict(answer[1]).get('Idempotent-Replayed', '')}")
