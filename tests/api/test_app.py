"""The app factory, the OpenAPI document and docs, health, and the per-request session."""

import gc
import subprocess
import sys
import weakref

import pytest
from flask import after_this_request
from sqlalchemy import func, select

from api import auth
from api.body import json_body
from api.session import current_session
from ledger.keys import create_key
from ledger.schema import api_keys
from tests.api.conftest import bearer, make_app


def test_importing_the_api_builds_nothing_and_reads_no_settings():
    # A bad setting would stop anything that read the settings at import time.
    code = "import os; os.environ['REVSHARE_LOG_LEVEL'] = 'NOT-A-LEVEL'; import api, api.routes; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_health_answers_without_a_key(shared):
    response = shared.client.get("/v1/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/v1/health", "/v1/openapi.json"])
def test_an_options_request_the_app_answers_itself_is_a_204_naming_the_methods_with_no_body(shared, path):
    # Flask's own answer was a 200 with an empty body typed as an HTML page.
    response = shared.client.options(path)
    assert response.status_code == 204 and response.data == b"", response.headers
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    assert "Content-Type" not in response.headers and response.headers["Cache-Control"] == "no-store"


def test_an_options_request_to_a_route_that_takes_a_key_is_refused_as_a_get_would_be(shared):
    # Without a key a 401; with one, the GET's refusal (a partner key: the 404 of another partner's
    # route), else the app's 204: an OPTIONS tells a partner key nothing a GET would not.
    response = shared.client.options("/v1/partners")
    assert response.status_code == 401 and response.mimetype == "application/problem+json"
    statuses = {}
    for role in ("finance", "p1", "p2"):
        for path in ("/v1/partners", "/v1/partners/p1/balance", "/v1/partners/p2/balance"):
            asked = bearer(getattr(shared.keys, role))
            got, options = shared.client.get(path, headers=asked), shared.client.options(path, headers=asked)
            statuses[role, path] = options.status_code
            assert options.status_code == (204 if got.status_code == 200 else got.status_code), (role, path)
            assert options.data == (b"" if got.status_code == 200 else got.data), (role, path)
    assert statuses[("p1", "/v1/partners/p1/balance")] == 204 and statuses[("p1", "/v1/partners/p2/balance")] == 404
    assert statuses[("p2", "/v1/partners/p2/balance")] == 204 and statuses[("p2", "/v1/partners/p1/balance")] == 404
    # Nor its query: routed by its path's first rule, a POST's, `?limit=1` was a 422 (an unknown field).
    for key, path in ((shared.keys.p1, "/v1/partners?limit=1"), (shared.keys.admin, "/v1/api-keys?limit=1&x=1&x=2"),
                      (shared.keys.finance, "/v1/partners?limit=1")):
        assert shared.client.options(path, headers=bearer(key)).status_code == 204, path
    # It reads no record: another partner's transaction and an id no transaction has are answered alike.
    other, missing = (shared.client.options(f"/v1/transactions/{transaction_id}", headers=bearer(shared.keys.p1))
                      for transaction_id in (shared.booked.p2, 999_999_999))
    allow = {"GET", "HEAD", "OPTIONS"}
    assert (other.status_code, set(other.headers["Allow"].split(", ")), other.data) == (204, allow, b"")
    assert (missing.status_code, set(missing.headers["Allow"].split(", ")), missing.data) == (204, allow, b"")


def test_the_openapi_document_lists_every_route_with_bearer_security(shared):
    response = shared.client.get("/v1/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) >= {
        "/v1/health", "/v1/api-keys", "/v1/transactions", "/v1/transactions/{transaction_id}",
        "/v1/transactions/{transaction_id}/reversal", "/v1/integrity", "/v1/reports/trial-balance"}
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    assert spec["paths"]["/v1/health"]["get"]["security"] == []
    assert spec["paths"]["/v1/integrity"]["get"]["security"] == [{"bearerAuth": []}]
    reversal = spec["paths"]["/v1/transactions/{transaction_id}/reversal"]["post"]
    assert [p["name"] for p in reversal["parameters"]] == ["Idempotency-Key"]


def test_every_documented_error_response_is_problem_json_as_served(shared):
    spec = shared.client.get("/v1/openapi.json").get_json()
    shared_responses = spec["components"]["responses"]
    documented = {}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for status, response in operation["responses"].items():
                if status == "default" or int(status) >= 400:
                    if "$ref" in response:
                        response = shared_responses[response["$ref"].rsplit("/", 1)[1]]
                    documented[(method, path, status)] = sorted(response.get("content", {}))
    assert documented[("post", "/v1/revenue-events", "409")] == ["application/problem+json"]
    assert {key: types for key, types in documented.items() if types != ["application/problem+json"]} == {}


def test_every_string_a_client_sends_has_a_length_limit(shared):
    spec = shared.client.get("/v1/openapi.json").get_json()
    schemas = spec["components"]["schemas"]
    sent = {name for path in spec["paths"].values() for operation in path.values() if isinstance(operation, dict)
            for name in _request_schema_names(operation)}
    assert sent, "no request schema found"
    unbounded = [(name, prop) for name in sent for prop, value in schemas[name]["properties"].items()
                 if value.get("type") == "string" and "maxLength" not in value and "enum" not in value]
    assert unbounded == []


def _request_schema_names(operation: dict) -> list[str]:
    names = []
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if "$ref" in body:
        names.append(body["$ref"].rsplit("/", 1)[1])
    return names


def test_query_parameters_have_length_limits_too(shared):
    spec = shared.client.get("/v1/openapi.json").get_json()
    strings = [(path, p["name"]) for path, item in spec["paths"].items() for operation in item.values()
               if isinstance(operation, dict) for p in operation.get("parameters", [])
               if p["schema"].get("type") == "string" and "maxLength" not in p["schema"]]
    assert strings == []


def test_the_docs_page_points_at_the_openapi_document(shared):
    response = shared.client.get("/docs")
    assert response.status_code == 200
    assert b"/v1/openapi.json" in response.data
    assert b"swagger-ui" in response.data


def test_every_view_declares_its_access(shared):
    app = shared.client.application
    undeclared = [endpoint for endpoint, view in app.view_functions.items()
                  if not endpoint.startswith(auth.DOCS_ENDPOINT_PREFIX) and not hasattr(view, auth.ACCESS_ATTRIBUTE)]
    assert undeclared == []


def test_an_unexpected_exception_is_a_500_problem_without_internals(shared):
    def explode():
        raise RuntimeError("secret connection string postgresql://user:hunter2@db")

    app = make_app(shared.database)
    app.add_url_rule("/v1/explode", view_func=auth.public(explode))
    response = app.test_client().get("/v1/explode")
    assert response.status_code == 500
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert set(body) == {"type", "title", "status", "detail"} and body["status"] == 500
    assert b"hunter2" not in response.data and b"RuntimeError" not in response.data


def test_a_failed_request_rolls_its_writes_back(scratch):
    def write_then_maybe_fail():
        create_key(current_session(), "billing")
        if json_body()["fail"]:
            raise RuntimeError("after the write")
        return {}, 201

    app = make_app(scratch.database)
    app.add_url_rule("/v1/write", view_func=auth.allow("admin")(write_then_maybe_fail), methods=["POST"])
    client, before = app.test_client(), count_keys(scratch.database)
    assert client.post("/v1/write", json={"fail": True}, headers=bearer(scratch.keys.admin)).status_code == 500
    assert count_keys(scratch.database) == before
    assert client.post("/v1/write", json={"fail": False}, headers=bearer(scratch.keys.admin)).status_code == 201
    assert count_keys(scratch.database) == before + 1


def count_keys(database) -> int:
    with database.reader() as session:
        return session.execute(select(func.count()).select_from(api_keys)).scalar_one()


def test_a_function_made_for_one_request_is_not_kept_after_it(shared):
    """The app remembers which functions are plain `def`s (`api.App.ensure_sync`); a function made
    for one request (`after_this_request`'s, say) holds that request's objects, and remembering it
    kept them, up to a thousand requests' worth."""

    class Held:
        pass

    held = []

    def per_request():
        made = Held()
        held.append(weakref.ref(made))

        @after_this_request
        def keep(response):
            assert made is not None
            return response

        return {"status": "ok"}

    app = make_app(shared.database)
    app.add_url_rule("/v1/per-request", view_func=auth.public(per_request))
    client = app.test_client()
    for _ in range(3):
        assert client.get("/v1/per-request").status_code == 200
    gc.collect()
    assert len(held) == 3 and [ref() for ref in held] == [None, None, None]


def test_a_served_app_started_while_the_database_is_out_of_reach_checks_its_revision_once_it_answers(
        sqlite_database, monkeypatch, caplog):
    # Started before the database took connections, the worker skipped the check and then served a
    # database behind the code for good: a payout run and a close posted on one at 0047.
    from sqlalchemy.exc import OperationalError

    from api import create_served_app
    from ledger import migrate
    from ledger.settings import Settings

    down = OperationalError("SELECT", {}, ConnectionRefusedError("connection failed: Connection refused"))
    answers = [down, "0040", "0040", migrate.REVISION_AT_HEAD]

    def current_revision(url: str) -> str:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer
    monkeypatch.setattr(migrate, "current_revision", current_revision)
    client = create_served_app(Settings.build(database_url=sqlite_database.url)).test_client()  # boots
    refused = [client.get("/v1/health") for _ in range(2)]
    assert [answer.status_code for answer in refused] == [503, 503]
    assert "revision" in refused[0].get_json()["detail"] and sqlite_database.url not in refused[0].get_data(True)
    logged = [record.getMessage() for record in caplog.records if "cannot serve the database" in record.getMessage()]
    assert len(logged) == 1 and "it is at revision 0040, the service's latest is" in logged[0]  # once, naming it
    assert [client.get("/v1/health").status_code for _ in range(2)] == [200, 200]
    answers.append("0040")  # asked no more once found at the head
    assert client.get("/v1/health").status_code == 200


def test_a_served_app_refuses_a_database_behind_the_code_or_refusing_it(sqlite_database, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from api import create_served_app
    from ledger import migrate
    from ledger.settings import Settings

    monkeypatch.setattr(migrate, "current_revision", lambda url: "0040")
    with pytest.raises(RuntimeError, match="it is at revision 0040"):
        create_served_app(Settings.build(database_url=sqlite_database.url))

    class Refused(Exception):
        sqlstate = None  # as psycopg gives a refusal at connection: no SQLSTATE, as a server not running

    for words in ('connection failed: FATAL:  database "nosuchdb" does not exist',
                  'connection failed: FATAL:  password authentication failed for user "revshare"'):
        def refused(url, words=words):
            raise OperationalError("SELECT", {}, Refused(words))
        monkeypatch.setattr(migrate, "current_revision", refused)
        with pytest.raises(OperationalError, match="FATAL"):
            create_served_app(Settings.build(database_url=sqlite_database.url))
