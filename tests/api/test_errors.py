"""Every error is application/problem+json; bad input is a 4xx naming what is wrong, never a 500."""

import contextlib
import fcntl
import gzip
import io
import json
import logging
import os
import sqlite3
import threading
import time

import psycopg
import pytest
import sqlalchemy as sa
from gunicorn.http.errors import InvalidChunkSize
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from api import LOCK_WAIT_S, create_app
from api import session as api_session
from ledger import db, idempotency, journal
from ledger.settings import Settings
from ledger.db import Database
from ledger.schema import journal_transactions
from tests.api.books import event_body
from tests.api.conftest import BODY_LIMIT_BYTES, bearer, enroll, make_app, make_keys, new_transaction

PROBLEM_KEYS = {"type", "title", "status", "detail"}


def assert_problem(response, status: int, *, errors: bool = False) -> dict:
    assert response.status_code == status, response.data
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert set(body) == PROBLEM_KEYS | ({"errors"} if errors else set())
    assert body["status"] == status
    assert body["type"].startswith("urn:revshare:problem:")
    assert body["title"] and body["detail"]
    return body


def reversal(client, key, body, transaction_id=1):
    return client.post(f"/v1/transactions/{transaction_id}/reversal", headers=bearer(key), json=body)


def test_malformed_json_is_a_400(shared):
    response = shared.client.post("/v1/transactions/1/reversal", data=b'{"reason": ',
                                  content_type="application/json", headers=bearer(shared.keys.finance))
    assert assert_problem(response, 400)["detail"] == (
        "The request body is not valid JSON: Expecting value at line 1, column 12.")


@pytest.mark.parametrize("raw, detail", [
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON: arrays or objects nested too deeply to read"),
    (b'{"reason": ' + b"9" * 5000 + b"}", "not valid JSON: a number with more digits than can be read"),
    (b'{"reason": NaN}', "not valid JSON: NaN is not JSON"),
    (b'{"reason": "\xff\xfe"}', "not UTF-8 (byte 13)"),
    (b'\xef\xbb\xbf{"reason": "x"}',
     "not valid JSON: it starts with a byte order mark (U+FEFF), which JSON sent over a network may not have"),
], ids=["deep", "huge-int", "nan", "bad-utf8", "byte-order-mark"])
def test_a_body_that_is_not_json_is_a_400_saying_why_in_the_senders_terms(shared, raw, detail):
    response = shared.roomy.post("/v1/transactions/1/reversal", data=raw, content_type="application/json",
                                 headers=bearer(shared.keys.finance))
    assert assert_problem(response, 400)["detail"] == f"The request body is {detail}."


@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,            # deeper than the parser's recursion limit
    b'{"reason": ' + b"9" * 5000 + b"}",         # longer than Python converts to int
    b'{"reason": "\xff\xfe"}',                   # not UTF-8
    b"\xef\xbb\xbf{}",                          # a byte-order mark
    b"NaN", b'{"reason": NaN}', b'{"reason": "x", "effective_at": -Infinity}',  # Python's json reads these
], ids=["deep", "huge-int", "bad-utf8", "bom", "nan", "nan-field", "infinity"])
def test_json_the_parser_cannot_take_is_a_400_not_a_500(shared, raw):
    response = shared.roomy.post("/v1/transactions/1/reversal", data=raw, content_type="application/json",
                                 headers=bearer(shared.keys.finance))
    assert_problem(response, 400)


def test_no_key_is_a_401_with_a_bearer_challenge(shared):
    response = shared.client.get("/v1/transactions")
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].lower().startswith("bearer")


@pytest.mark.parametrize("header", ["Bearer rsk_not-a-real-key", "Bearer ", "Basic YWRtaW46YWRtaW4=", "rsk_x",
                                    "Bearer " + "x" * 5000])
def test_a_bad_key_is_a_401(shared, header):
    assert_problem(shared.client.get("/v1/transactions", headers={"Authorization": header}), 401)


def test_a_revoked_looking_key_differing_in_one_character_is_a_401(shared):
    tampered = shared.keys.finance[:-1] + ("A" if shared.keys.finance[-1] != "A" else "B")
    assert_problem(shared.client.get("/v1/transactions", headers=bearer(tampered)), 401)


def test_authentication_comes_before_validation_and_body_checks(shared):
    assert_problem(shared.client.post("/v1/transactions/1/reversal", json={"bogus": 1}), 401)
    assert_problem(shared.client.post("/v1/transactions/1/reversal", data=b"{", content_type="application/json"), 401)
    assert_problem(shared.client.post("/v1/transactions/1/reversal", data=b"x", content_type="text/plain"), 401)


def test_a_role_that_is_not_allowed_is_a_403(shared):
    body = assert_problem(shared.client.get("/v1/integrity", headers=bearer(shared.keys.billing)), 403)
    assert "billing" in body["detail"]


def test_an_unknown_route_is_a_404(shared):
    assert_problem(shared.client.get("/v1/nothing-here", headers=bearer(shared.keys.finance)), 404)
    assert_problem(shared.client.get("/v1/transactions/0", headers=bearer(shared.keys.finance)), 404)
    assert_problem(shared.client.get(f"/v1/transactions/{2**63}", headers=bearer(shared.keys.finance)), 404)
    for digit_one in ("%EF%BC%91", "%D9%A1"):  # fullwidth and Arabic-Indic 1: transaction 1 exists
        assert_problem(shared.client.get(f"/v1/transactions/{digit_one}", headers=bearer(shared.keys.finance)), 404)


@pytest.mark.parametrize("method, path", [("GET", "/v1//periods"), ("GET", "/v1/periods//2026-01"),
                                          ("POST", "/v1//revenue-events")])
def test_a_path_with_a_doubled_slash_is_a_404_problem_not_a_redirect(shared, method, path):
    assert_problem(shared.client.open(path, method=method, headers=bearer(shared.keys.finance)), 404)


def test_an_unknown_transaction_is_a_404(shared):
    body = assert_problem(shared.client.get("/v1/transactions/99", headers=bearer(shared.keys.finance)), 404)
    assert body["detail"] == "transaction 99 not found"


def test_a_wrong_method_is_a_405_naming_the_allowed_ones(shared):
    response = shared.client.delete("/v1/transactions", headers=bearer(shared.keys.finance))
    assert_problem(response, 405)
    assert "GET" in response.headers["Allow"]


@pytest.mark.parametrize("key", ["finance", "p1", None])
@pytest.mark.parametrize("path, status", [("/v1/nothing-here", 404), ("/v1/periods", 405)])
def test_a_request_no_route_serves_is_its_404_or_405_whatever_its_body(shared, key, path, status):
    # The body's checks (413, 415) answered first: a partner key told an unknown URL (415 to a text
    # body) from a route it may not call (404 whatever the body), and any caller an unknown URL from a
    # method a path does not serve.
    headers = {} if key is None else bearer(getattr(shared.keys, key))
    limit = shared.client.application.config["MAX_CONTENT_LENGTH"]
    for body, content_type in ((b"x", "text/plain"), (b"{}", "application/json"),
                               (b"{" + b" " * limit + b"}", "application/json")):
        assert_problem(shared.client.post(path, data=body, content_type=content_type, headers=headers), status)
    encoded = shared.client.post(path, data=b"{}", content_type="application/json",
                                 headers={**headers, "Content-Encoding": "gzip"})
    assert_problem(encoded, status)


def test_an_object_giving_a_key_twice_is_a_400_naming_it(scratch):
    original_id = new_transaction(scratch.database)
    raw = b'{"reason": "first", "reason": "second"}'
    response = scratch.client.post(f"/v1/transactions/{original_id}/reversal", data=raw,
                                   content_type="application/json", headers=bearer(scratch.keys.finance))
    assert "'reason' more than once" in assert_problem(response, 400)["detail"]
    with scratch.database.reader() as session:
        assert journal.reversed_by(session, original_id) is None


class _BadChunks(io.RawIOBase):
    """A request stream whose framing the server cannot read, as gunicorn's reader of a chunk size
    that is not hexadecimal."""

    def readable(self) -> bool:
        return True

    def readinto(self, _buffer) -> int:
        raise InvalidChunkSize(b"ZZ")


def test_a_body_the_server_cannot_read_is_a_400_not_a_500(shared):
    builder = EnvironBuilder("/v1/transactions/1/reversal", method="POST", content_type="application/json",
                             headers=bearer(shared.keys.finance), data=b"{}")
    environ = builder.get_environ()
    del environ["CONTENT_LENGTH"]
    environ.update({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True,
                    "wsgi.input": io.BufferedReader(_BadChunks())})
    assert "could not be read" in assert_problem(shared.client.open(Request(environ)), 400)["detail"]


class _StalledBody(io.RawIOBase):
    """A request stream whose client stopped sending: the server's socket timed out while reading."""

    def readable(self) -> bool:
        return True

    def readinto(self, _buffer) -> int:
        raise TimeoutError("timed out")


@pytest.mark.parametrize("chunked", [False, True], ids=["declared-length", "chunked"])
def test_a_body_that_stops_arriving_is_a_408_not_a_bare_400(shared, chunked):
    builder = EnvironBuilder("/v1/transactions/1/reversal", method="POST", content_type="application/json",
                             headers=bearer(shared.keys.finance), data=b'{"reason": "x"}')
    environ = builder.get_environ()
    if chunked:
        del environ["CONTENT_LENGTH"]
        environ.update({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True})
    environ["wsgi.input"] = io.BufferedReader(_StalledBody())
    assert "stopped arriving" in assert_problem(shared.client.open(Request(environ)), 408)["detail"]


@pytest.mark.parametrize("stream, status", [(_BadChunks, 400), (_StalledBody, 408)], ids=["bad-chunks", "stalled"])
@pytest.mark.parametrize("method, path", [("GET", "/v1/partners"), ("HEAD", "/v1/partners"),
                                          ("DELETE", "/v1/plans/standard/versions/99")])
def test_a_chunked_body_of_a_method_taking_none_read_to_tell_is_a_400_or_408_never_a_500(shared, stream, status,
                                                                                         method, path):
    # Read to tell a body of no chunks from one, its framing raised from the read: a 500.
    environ = EnvironBuilder(path, method=method, content_type="application/json",
                             headers=bearer(shared.keys.finance)).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True,
                    "wsgi.input": io.BufferedReader(stream())})
    response = shared.client.open(Request(environ))
    assert response.status_code == status and response.mimetype == "application/problem+json"


@pytest.mark.parametrize("method, path, role", [
    ("GET", "/v1/partners/p1%00", "finance"), ("GET", "/v1/partners/p1%00/balance", "finance"),
    ("GET", "/v1/partners/p1%00/statement?period=2026-01", "finance"), ("PATCH", "/v1/partners/p1%00", "finance"),
    ("GET", "/v1/customers/p1-customer%00", "billing"), ("GET", "/v1/customers/a/b%00", "finance"),
    ("GET", "/v1/plans/standard%00", "finance"), ("POST", "/v1/plans/standard%00/versions", "finance"),
    ("GET", "/v1/periods/2026-0%00", "finance"), ("POST", "/v1/periods/2026-0%00/close", "finance"),
    ("POST", "/v1/api-keys/key_%00/revocation", "admin"),
])
def test_a_nul_in_a_path_id_is_a_404_on_both_engines_never_a_500(shared, method, path, role):
    # PostgreSQL refuses a NUL in a text parameter: the lookup of such an id was a 500 there.
    response = shared.client.open(path, method=method, headers=bearer(getattr(shared.keys, role)))
    assert_problem(response, 404)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("as_", ["finance", "p1", "p2"])
def test_a_read_sent_with_a_body_is_a_422_naming_it_not_an_answer_that_ignored_it(shared, method, as_):
    # `{"as_of": ...}` in a balance's body was ignored: the balance as of now, taken for one as of the day.
    # Another partner's key is told what it is told without the body, a 404.
    response = shared.client.open("/v1/partners/p1/balance", method=method, data=b'{"as_of": "2026-01-10"}',
                                  content_type="application/json", headers=bearer(getattr(shared.keys, as_)))
    alone = shared.client.open("/v1/partners/p1/balance", method=method, headers=bearer(getattr(shared.keys, as_)))
    if as_ == "p2":
        assert response.status_code == alone.status_code == 404 and response.data == alone.data
    elif method == "HEAD":
        assert response.status_code == 422 and response.mimetype == "application/problem+json"
        assert alone.status_code == 200
    else:
        assert assert_problem(response, 422, errors=True)["errors"] == {"body": [f"{method} takes no request body"]}
        assert alone.status_code == 200


@pytest.mark.parametrize("body, status", [(b"", 200), (b"{}", 422)])
def test_a_chunked_read_is_refused_only_when_its_chunks_hold_a_byte(shared, body, status):
    # A chunked body of no chunks is no body, as `Content-Length: 0` is none.
    environ = EnvironBuilder("/v1/partners/p1/balance", method="GET", content_type="application/json",
                             headers=bearer(shared.keys.p1), data=body).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True})
    assert shared.client.open(Request(environ)).status_code == status


@pytest.mark.parametrize("path", ["/v1/openapi.json", "/docs"])
def test_the_documents_are_served_whatever_body_a_get_sends(shared, path):
    # They take their query string as documents do, and a body alike; the API's routes refuse both.
    assert shared.client.get(path, data=b'{"x": 1}', content_type="application/json").status_code == 200


def test_a_body_over_the_limit_is_a_413(shared):
    response = reversal(shared.client, shared.keys.finance, {"reason": "x" * BODY_LIMIT_BYTES})
    assert_problem(response, 413)


# White space first: a body that is white space is no body (optional bodies may be left out), but one
# that reaches the limit is a 413 whatever it holds, even if the reader stopped before its JSON.
@pytest.mark.parametrize("body", [b'{"reason": "' + b"x" * BODY_LIMIT_BYTES + b'"}', b" " * (BODY_LIMIT_BYTES + 1),
                                  b" " * BODY_LIMIT_BYTES + b'{"reason": "x"}'], ids=["json", "white", "white-json"])
@pytest.mark.parametrize("path", ["/v1/transactions/1/reversal", "/v1/holds/release"])
def test_a_chunked_body_over_the_limit_is_a_413(shared, body, path):
    builder = EnvironBuilder(path, method="POST", content_type="application/json",
                             headers=bearer(shared.keys.finance), data=body)
    environ = builder.get_environ()
    del environ["CONTENT_LENGTH"]  # a chunked body declares no length: the limit applies while reading
    environ.update({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True})
    assert_problem(shared.client.open(Request(environ)), 413)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_a_body_that_is_not_json_is_a_415(shared, content_type):
    response = shared.client.post("/v1/transactions/1/reversal", data=b'{"reason": "x"}',
                                  content_type=content_type, headers=bearer(shared.keys.finance))
    assert_problem(response, 415)


@pytest.mark.parametrize("charset", ["iso-8859-1", "latin-1", "utf-16", "windows-1252"])
def test_a_json_body_in_another_charset_is_a_415_naming_it(shared, charset):
    # 'Café' in ISO-8859-1 would be bad UTF-8 (a 400 that does not say why); in UTF-16 a body of
    # other bytes altogether. JSON between systems is UTF-8 (RFC 8259).
    response = shared.client.post("/v1/transactions/1/reversal", data='{"reason": "Café"}'.encode("latin-1"),
                                  content_type=f"application/json; charset={charset}",
                                  headers=bearer(shared.keys.finance))
    assert charset in assert_problem(response, 415)["detail"]


@pytest.mark.parametrize("charset", ["utf-8", "UTF-8", '"utf-8"', "utf8"])
def test_a_json_body_declared_utf_8_is_read(scratch, charset):
    transaction_id = new_transaction(scratch.database)
    response = scratch.client.post(f"/v1/transactions/{transaction_id}/reversal", data='{"reason": "Café"}'.encode(),
                                   content_type=f"application/json; charset={charset}",
                                   headers=bearer(scratch.keys.finance))
    assert response.status_code == 201 and "Café" in response.get_json()["memo"], response.get_json()


def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_a_413(shared):
    body = b'{"reason": ""}'
    for size, status in ((BODY_LIMIT_BYTES, 422), (BODY_LIMIT_BYTES + 1, 413)):
        response = shared.client.post("/v1/transactions/1/reversal", data=body.ljust(size),
                                      content_type="application/json", headers=bearer(shared.keys.finance))
        assert_problem(response, status, errors=status == 422)


def chunked_request(path: str, key: str, body: bytes) -> Request:
    """A request whose body comes without a declared length, as gunicorn hands a chunked one over."""
    environ = EnvironBuilder(path, method="POST", content_type="application/json", headers=bearer(key),
                             data=body).get_environ()
    del environ["CONTENT_LENGTH"]
    environ.update({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True})
    return Request(environ)


def test_a_chunked_body_of_exactly_the_limit_is_read_and_one_byte_more_is_a_413(shared):
    # As with a declared length: the limit is the largest body taken, whatever the framing.
    body = b'{"reason": ""}'
    for size, status in ((BODY_LIMIT_BYTES, 422), (BODY_LIMIT_BYTES + 1, 413)):
        request = chunked_request("/v1/transactions/1/reversal", shared.keys.finance, body.ljust(size))
        assert_problem(shared.client.open(request), status, errors=status == 422)


def test_a_chunked_body_that_is_not_json_is_a_415(shared):
    builder = EnvironBuilder("/v1/transactions/1/reversal", method="POST", content_type="text/plain",
                             headers=bearer(shared.keys.finance), data=b'{"reason": "x"}')
    environ = builder.get_environ()
    del environ["CONTENT_LENGTH"]
    environ.update({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True})
    assert_problem(shared.client.open(Request(environ)), 415)


def test_a_patch_body_that_is_not_json_is_a_415(shared):
    response = shared.client.patch("/v1/partners/p1", data=b'{"status": "suspended"}', content_type="text/plain",
                                   headers=bearer(shared.keys.finance))
    assert_problem(response, 415)


def test_a_json_suffix_media_type_is_json(scratch):
    transaction_id = new_transaction(scratch.database)
    response = scratch.client.post(f"/v1/transactions/{transaction_id}/reversal", data=b'{"reason": "duplicate"}',
                                   content_type="application/merge-patch+json", headers=bearer(scratch.keys.finance))
    assert response.status_code == 201


def test_an_invalid_body_is_a_422_naming_each_field(shared):
    response = reversal(shared.client, shared.keys.finance, {"effective_at": "yesterday", "colour": "red"})
    body = assert_problem(response, 422, errors=True)
    assert set(body["errors"]) == {"reason", "effective_at", "colour"}
    assert all(isinstance(m, list) and m and all(isinstance(t, str) for t in m) for m in body["errors"].values())


def test_a_422_has_one_type_whether_the_schema_or_the_domain_refused_the_input(shared):
    by_schema = assert_problem(reversal(shared.client, shared.keys.finance, {}), 422, errors=True)
    by_domain = assert_problem(shared.client.post("/v1/payout-runs", headers=bearer(shared.keys.finance),
                                                  json={"at": "2999-01-01T00:00:00Z"}), 422, errors=True)
    assert (set(by_schema["errors"]), set(by_domain["errors"])) == ({"reason"}, {"at"})
    assert by_schema["type"] == by_domain["type"] == "urn:revshare:problem:invalid-input"


def test_an_empty_body_is_a_422_naming_the_required_field(shared):
    response = shared.client.post("/v1/transactions/1/reversal", headers=bearer(shared.keys.finance))
    assert set(assert_problem(response, 422, errors=True)["errors"]) == {"reason"}


def test_unknown_query_parameters_are_a_422(shared):
    response = shared.client.get("/v1/reports/trial-balance?asof=2026-01-01", headers=bearer(shared.keys.finance))
    assert set(assert_problem(response, 422, errors=True)["errors"]) == {"asof"}


@pytest.mark.parametrize("path", ["/v1/integrity?asof=2026-01-01", "/v1/transactions/1?asof=2026-01-01",
                                  "/v1/partners/p1?as_of=2026-01-01", "/v1/health?verbose=1"])
def test_query_parameters_on_a_route_that_takes_none_are_a_422(shared, path):
    response = shared.client.get(path, headers=bearer(shared.keys.finance))
    assert set(assert_problem(response, 422, errors=True)["errors"]) == {path.split("?")[1].split("=")[0]}


@pytest.mark.parametrize("path", ["/v1/partners?=x", "/v1/health?=x", "/v1/transactions?limit=5&=x"])
def test_a_query_parameter_without_a_name_is_a_422_naming_the_query_not_the_body(shared, path):
    """A GET has no body: the message of a parameter named "" is the query's."""
    response = shared.client.get(path, headers=bearer(shared.keys.finance))
    assert assert_problem(response, 422, errors=True)["errors"] == {"query": ["Unknown field."]}


def test_a_query_parameter_given_twice_is_a_422_naming_it(shared):
    response = shared.client.get("/v1/transactions?limit=5&limit=10", headers=bearer(shared.keys.finance))
    assert assert_problem(response, 422, errors=True)["errors"] == {"limit": ["given more than once"]}


def test_a_write_with_an_unknown_query_parameter_is_refused_and_changes_nothing(fresh):
    fresh.event("evt-q", "p1-customer", "inv-q", "100.00", "2026-01-10")  # its accrual matures 2026-02-09
    response = fresh.post("/v1/holds/release?at=2026-01-11T00:00:00Z", {})
    assert set(assert_problem(response, 422, errors=True)["errors"]) == {"at"}
    assert [t["kind"] for t in fresh.read("/v1/transactions")["items"]] == ["accrual"]
    assert fresh.ok("/v1/holds/release", {"at": "2026-02-09T00:00:00Z"})["released"] == 1  # it was due


def test_a_conflict_is_a_409(scratch):
    transaction_id = new_transaction(scratch.database)
    assert reversal(scratch.client, scratch.keys.finance, {"reason": "duplicate"}, transaction_id).status_code == 201
    body = assert_problem(reversal(scratch.client, scratch.keys.finance, {"reason": "again"}, transaction_id), 409)
    assert "already reversed" in body["detail"]


@pytest.mark.parametrize("body", [
    [], "reason", 42, None, {"reason": None}, {"reason": 7}, {"reason": ["a"]}, {"reason": {"a": 1}},
    {"reason": ""}, {"reason": "x" * 501}, {"reason": "nul\u0000byte"}, {"reason": "\ud800"},
    {"reason": "ok", "effective_at": 1.5}, {"reason": "ok", "effective_at": "2026-01-20T00:00:00"},
    {"reason": "ok", "effective_at": "2026-02-30T00:00:00Z"}, {"reason": "ok", "effective_at": "0001-01-01T00:00:00Z"},
    {"reason": "ok", "effective_at": "9" * 1000}, {"reason": "ok", "effective_at": {"$gt": ""}},
    {"reason": "ok", "": 1}, {"reason": "ok", "\u0000": 1},
], ids=lambda body: json.dumps(body)[:40])
def test_bad_input_is_refused_with_a_4xx_never_a_500(shared, body):
    response = shared.roomy.post("/v1/transactions/1/reversal", data=json.dumps(body),
                                 content_type="application/json", headers=bearer(shared.keys.finance))
    assert 400 <= response.status_code < 500, response.data
    assert response.mimetype == "application/problem+json"


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=abc", "limit=1e3", "limit=%EF%BC%95", "limit=+5",
                                   "cursor=%00", "cursor=zzzz",
                                   "cursor=" + "A" * 500, "partner_id=has:colon", "limit=" + "9" * 5000])
def test_bad_query_parameters_are_a_422(shared, query):
    response = shared.client.get(f"/v1/transactions?{query}", headers=bearer(shared.keys.finance))
    assert_problem(response, 422, errors=True)


@pytest.mark.parametrize("body", ["null", "[]", "5", "\"text\""])
def test_a_body_that_is_not_a_json_object_is_refused_even_where_the_body_is_optional(client, keys, body):
    response = client.post("/v1/holds/release", data=body, content_type="application/json",
                           headers={"Authorization": f"Bearer {keys.finance}"})
    assert response.status_code == 422 and response.mimetype == "application/problem+json"


@contextlib.contextmanager
def unavailable(database: Database):
    """The database out of reach while the block runs: on PostgreSQL it takes no connections (and
    those open are ended); on SQLite another writer holds the write lock past the busy timeout."""
    if database.engine.dialect.name == "postgresql":
        name = database.engine.url.database
        admin = sa.create_engine(database.engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            connection.exec_driver_sql(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            try:
                yield
            finally:
                connection.exec_driver_sql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        admin.dispose()
    else:
        writer = sqlite3.connect(database.engine.url.database, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            writer.rollback()
            writer.close()


def test_a_database_out_of_reach_is_a_503_to_retry_and_the_retry_posts_once(database_url, monkeypatch, caplog):
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 100)  # the writer's wait for the lock, before the error
    caplog.set_level(logging.INFO)
    refused_then_posted_once(Database(database_url), unavailable)
    [logged] = [record for record in caplog.records if record.levelno >= logging.WARNING]
    line = logged.getMessage()
    # One line naming the request and the database's words, without a traceback.
    assert line.startswith("POST /v1/revenue-events: 503, the database is unavailable: ") and "\n" not in line
    assert logged.levelno == logging.ERROR and logged.exc_info is None


def refused_then_posted_once(database: Database, outage) -> None:
    """A revenue event posted during `outage(database)` is a 503 to retry, and the retry posts it once."""
    enroll(database)
    keys = make_keys(database)
    client = make_app(database).test_client()
    event = event_body("outage-1", "p1-customer", "inv-outage-1", "100.00", "2026-01-20")
    assert client.get("/v1/partners/p1/balance", headers=bearer(keys.finance)).status_code == 200
    with outage(database):
        refused = client.post("/v1/revenue-events", json=event, headers=bearer(keys.billing))
    body = assert_problem(refused, 503)
    assert refused.headers["Retry-After"] == "1" and "Retry" in body["detail"]
    retried = client.post("/v1/revenue-events", json=event, headers=bearer(keys.billing))
    assert retried.status_code == 201 and retried.get_json()["status"] == "posted"
    with database.reader() as session:
        assert [t.kind for t in session.execute(sa.select(journal_transactions.c.kind)).all()] == ["accrual"]
    database.dispose()


@contextlib.contextmanager
def journal_held(database: Database, *, at_most_s: float = 20.0):
    """Another writer of the service holding the journal while the block runs, `at_most_s` at most
    (a request that waits for ever is then let through, and fails its test, instead of hanging it):
    on PostgreSQL its advisory lock, on SQLite the writers' file lock."""
    if database.engine.dialect.name == "postgresql":
        with database.engine.connect() as connection:
            connection.begin()
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": db.JOURNAL_LOCK_KEY})
            pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            admin = sa.create_engine(database.engine.url, isolation_level="AUTOCOMMIT")
            watchdog = threading.Timer(at_most_s, lambda: admin.connect().exec_driver_sql(
                f"SELECT pg_terminate_backend({pid})"))
            watchdog.start()
            try:
                yield
            finally:
                watchdog.cancel()
                watchdog.join()
                admin.dispose()
                connection.invalidate()
        return
    fd = os.open(database.engine.url.database + "-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    watchdog = threading.Timer(at_most_s, fcntl.flock, (fd, fcntl.LOCK_UN))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        watchdog.start()
        yield
    finally:
        watchdog.cancel()
        watchdog.join()
        os.close(fd)


def test_a_request_waits_for_the_journal_a_bounded_time_then_is_a_503_to_retry(database_url):
    # The wait was unbounded: past gunicorn's worker timeout (30 s) the worker was ended and the
    # client got gunicorn's HTML 500. The service's bound is api.LOCK_WAIT_S; here a fraction of it.
    refused_then_posted_once(Database(database_url, lock_wait_s=0.3), journal_held)


def test_a_request_s_lock_waits_end_by_its_deadline_whatever_the_engine_s_bound(database_url, monkeypatch):
    # Each wait had the engine's bound alone: a request waiting again and again (a payout run's
    # releases and then the run, a batch in parts) ran past gunicorn's worker timeout, a 500. Here the
    # engine would wait a minute, and the lock is let go after 20 s: a request waiting that long posts.
    monkeypatch.setattr(api_session, "REQUEST_LOCKS_S", 0.3)
    refused_then_posted_once(Database(database_url, lock_wait_s=60.0), journal_held)
    assert db._lock_deadline.get() is None  # the request's bound ends with it


@pytest.mark.postgres
def test_on_postgresql_each_lock_wait_of_a_transaction_ends_by_the_deadline(postgres_database):
    # PostgreSQL counts `lock_timeout` from the start of each wait: set once at the transaction's
    # begin to what was left then, a transaction waiting for an Idempotency-Key's claim and then for
    # the journal waited that long twice. Here the claim is let go just before the deadline and the
    # journal a second after it: the second wait must end at the deadline, not when the journal is free.
    database = Database(postgres_database.url, lock_wait_s=60.0)
    claimed = database.writer()
    idempotency.claim(claimed, "key-1", "K-1")
    journal_held = database.engine.connect()
    journal_held.begin()
    journal_held.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": db.JOURNAL_LOCK_KEY})
    timers = [threading.Timer(1.8, claimed.rollback),
              threading.Timer(3.0, journal_held.connection.driver_connection.rollback)]
    try:
        with db.locks_waited_until(time.monotonic() + 2.0):
            for timer in timers:
                timer.start()
            with pytest.raises(sa.exc.OperationalError) as waited:
                with database.writer() as session:
                    idempotency.claim(session, "key-1", "K-1")
                    db.lock_journal(session)
        assert isinstance(waited.value.orig, psycopg.errors.LockNotAvailable) and db.retryable(waited.value)
    finally:
        for timer in timers:
            timer.join()
        claimed.close()
        journal_held.invalidate()
        database.dispose()


def test_the_service_s_own_database_waits_for_a_lock_the_bound_and_no_longer(sqlite_database):
    app = create_app(Settings.build(database_url=sqlite_database.url))
    database = app.extensions[api_session.EXTENSION]["database"]
    with database.reader() as session:
        busy_timeout_ms = session.connection().exec_driver_sql("PRAGMA busy_timeout").scalar_one()
    assert busy_timeout_ms == LOCK_WAIT_S * 1000 < 30_000  # gunicorn's worker timeout
    database.dispose()


@pytest.mark.postgres
def test_the_service_s_postgresql_lock_timeout_keeps_the_options_the_url_gives(postgres_database):
    # The lock timeout went as libpq's `options` connection parameter, which replaces the URL's own
    # `options` (a search_path, a statement timeout, a hosting provider's endpoint) and PGOPTIONS:
    # the service then ran without them, while the command line and the jobs had them.
    url = postgres_database.url + "?options=-c%20statement_timeout%3D12345"
    app = create_app(Settings.build(database_url=url))
    database = app.extensions[api_session.EXTENSION]["database"]
    for session in (database.reader(), database.writer()):
        with session:
            connection = session.connection()
            assert connection.exec_driver_sql("SHOW statement_timeout").scalar_one() == "12345ms"
            assert connection.exec_driver_sql("SHOW lock_timeout").scalar_one() == f"{LOCK_WAIT_S:g}s"
    database.dispose()


def test_a_full_disk_is_a_503_to_retry_and_the_retry_posts_once(sqlite_database):
    # SQLite says "database or disk is full" (SQLITE_FULL) when the file cannot grow: here no
    # connection may grow it by a page while `full` holds. A retry once there is room posts once.
    database, full = sqlite_database, [True]
    enroll(database)
    keys = make_keys(database)
    database.engine.dispose()
    sa.event.listen(database.engine, "connect", lambda connection, record: full and connection.execute(
        "PRAGMA max_page_count = 1"))  # never below the file's own size: no page more
    client = make_app(database).test_client()
    events = {"events": [event_body(f"full-{n}", "p1-customer", f"inv-full-{n}", "100.00", "2026-01-20")
                         for n in range(15)]}  # within the test app's body limit
    refused = client.post("/v1/revenue-events/batch", json=events, headers=bearer(keys.billing))
    body = assert_problem(refused, 503)
    assert refused.headers["Retry-After"] == "1" and "Retry" in body["detail"]
    full.clear()
    database.engine.dispose()
    retried = client.post("/v1/revenue-events/batch", json=events, headers=bearer(keys.billing))
    assert retried.status_code == 200, retried.data
    with database.reader() as session:
        assert session.execute(sa.select(sa.func.count()).select_from(journal_transactions)).scalar_one() == 15


@pytest.mark.postgres
@pytest.mark.parametrize("lost_at", ["read", "commit"])
def test_a_connection_lost_within_a_request_is_a_503_to_retry(postgres_database, monkeypatch, lost_at):
    # The request's own connection ends in the middle: at the posting's reads, which go straight
    # through the driver, or at the commit the end of the request makes (a route that does not commit
    # before its answer). Whether a lost commit took effect is unknown; the retry finds out.
    enroll(postgres_database)
    keys = make_keys(postgres_database)
    client = make_app(postgres_database).test_client()
    admin = sa.create_engine(postgres_database.engine.url, isolation_level="AUTOCOMMIT")
    ended = []

    def end(dbapi_connection) -> None:
        if not ended:
            ended.append(dbapi_connection.info.backend_pid)
            with admin.connect() as connection:
                connection.exec_driver_sql(f"SELECT pg_terminate_backend({ended[0]})")
    if lost_at == "read":
        driver_results = db.driver_results

        def ending(session, statements):
            end(session.connection().connection.driver_connection)
            return driver_results(session, statements)
        monkeypatch.setattr(db, "driver_results", ending)
        request = dict(path="/v1/revenue-events", headers=bearer(keys.billing),
                       json=event_body("lost-1", "p1-customer", "inv-lost-1", "100.00", "2026-01-20"))
    else:
        sa.event.listen(postgres_database.engine, "commit", lambda connection: end(
            connection.connection.driver_connection))
        request = dict(path="/v1/holds/release", headers={**bearer(keys.finance), "Idempotency-Key": "lost"})
    lost = client.post(**request)
    assert ended and lost.status_code == 503 and lost.headers["Retry-After"] == "1"
    assert client.post(**request).status_code in (200, 201)
    admin.dispose()


def test_a_statement_the_database_refuses_is_a_500_not_a_503(scratch, monkeypatch):
    # SQLite says OperationalError for a missing table too, PostgreSQL for a function that ended
    # without RETURN (2F005): no retry gets past those.
    refusal = (sqlite3.OperationalError("no such table: nowhere") if scratch.database.engine.dialect.name == "sqlite"
               else psycopg.errors.FunctionExecutedNoReturnStatement("control reached end of function"))

    def broken(session, statements):
        raise sa.exc.OperationalError("SELECT", {}, refusal)
    monkeypatch.setattr(db, "driver_results", broken)
    response = scratch.client.post("/v1/revenue-events", headers=bearer(scratch.keys.billing),
                                   json=event_body("broken-1", "p1-customer", "inv-broken-1", "1.00", "2026-01-20"))
    assert_problem(response, 500)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", " GZIP "])
def test_an_encoded_body_is_a_415_naming_its_coding_and_changes_nothing(scratch, coding):
    # Read as it came, a compressed body was a 400 saying it is not UTF-8, which hid what the client did.
    transaction_id = new_transaction(scratch.database)
    before = scratch.client.get("/v1/integrity", headers=bearer(scratch.keys.finance)).get_json()
    response = scratch.client.post(f"/v1/transactions/{transaction_id}/reversal",
                                   data=gzip.compress(b'{"reason": "duplicate"}'), content_type="application/json",
                                   headers={**bearer(scratch.keys.finance), "Content-Encoding": coding})
    body = assert_problem(response, 415)
    assert coding.strip().lower() in body["detail"]
    assert scratch.client.get("/v1/integrity", headers=bearer(scratch.keys.finance)).get_json() == before


@pytest.mark.parametrize("coding", ["identity", "Identity"])
def test_a_body_said_to_be_identity_coded_is_read_as_sent(scratch, coding):
    transaction_id = new_transaction(scratch.database)
    response = scratch.client.post(f"/v1/transactions/{transaction_id}/reversal", data=b'{"reason": "duplicate"}',
                                   content_type="application/json",
                                   headers={**bearer(scratch.keys.finance), "Content-Encoding": coding})
    assert response.status_code == 201, response.data


def test_a_failed_key_lookup_logs_neither_the_keys_hash_nor_a_line_the_path_forged(database_url, caplog):
    # A statement's parameters were in its error's text, which the traceback took to the log: the
    # hash of each key that asked while the lookup failed. And the path, decoded, wrote lines of its own.
    from ledger.keys import hash_key

    database = Database(database_url)
    client = make_app(database).test_client()
    with database.transaction() as session:
        session.connection().exec_driver_sql("ALTER TABLE api_keys RENAME TO api_keys_away")
    token = "rsk_" + "a" * 40  # any token: it is looked up by its hash
    caplog.set_level(logging.INFO)
    answer = client.get("/v1/customers/acme%0A2026-12-06 06:10:19,729 INFO api: forged%1b[31m", headers=bearer(token))
    assert answer.status_code == 500 and "api_keys" not in answer.get_data(as_text=True)
    [logged] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert logged.getMessage() == ("Exception on /v1/customers/acme\\n2026-12-06 06:10:19,729 INFO api: "
                                   "forged\\x1b[31m [GET]"), logged.getMessage()
    assert "api_keys" in caplog.text and hash_key(token) not in caplog.text  # the traceback, without it
    database.dispose()


@pytest.mark.postgres
def test_a_503s_line_shows_the_path_with_what_does_not_print_escaped(postgres_database, caplog):
    client = make_app(postgres_database).test_client()
    caplog.set_level(logging.INFO)
    with unavailable(postgres_database):
        answer = client.get("/v1/customers/acme%0Aforged%1b[31m", headers=bearer("rsk_" + "b" * 40))
    assert answer.status_code == 503
    [logged] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert logged.getMessage().startswith("GET /v1/customers/acme\\nforged\\x1b[31m: 503, the database is "
                                          "unavailable: "), logged.getMessage()
