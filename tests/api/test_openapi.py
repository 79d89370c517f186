"""The OpenAPI document as a client's contract: it is valid OpenAPI 3.0 with valid examples, and
each operation lists exactly the error statuses it gives. Every status the access tests expect
is listed; requests known to give each error status are sent to every operation and their status
must be listed; and every status an operation lists is one of those requests' (the document
promises nothing the service does not do). A replayed answer's `Idempotent-Replayed` header is
documented on the status it comes with."""

from __future__ import annotations

import io
import re
import sqlite3
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import jsonschema_rs
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_30_VALIDATOR
from sqlalchemy.exc import OperationalError
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from api import create_app
from ledger.db import Database
from ledger.settings import Settings
from tests.api.books import Caller, event_body, money, plan_body, unique
from tests.api.conftest import BODY_LIMIT_BYTES, STANDARD_TERMS, bearer, make_app, new_transaction
from tests.api.test_access import ROLES, ROUTES, Route, expected_status

_PLACEHOLDER = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


@pytest.fixture(scope="module")
def served():
    """An app built without touching a database, and the document it serves."""
    app = create_app(Settings.build(database_url="sqlite:///:memory:"))
    return app, app.test_client().get("/v1/openapi.json").get_json()


@pytest.fixture(scope="module")
def document(served) -> dict:
    return served[1]


def operation_of(app, method: str, path: str) -> tuple[str, str]:
    """The document's (path template, method) of the operation serving `method path`."""
    rule, _ = app.url_map.bind("localhost").match(path.split("?")[0], method=method, return_rule=True)
    return _PLACEHOLDER.sub(r"{\1}", rule.rule), method.lower()


def listed(document: dict, operation: tuple[str, str]) -> set[int]:
    """The error statuses an operation lists (not `default`)."""
    template, method = operation
    return {int(status) for status in document["paths"][template][method]["responses"]
            if status.isdigit() and int(status) >= 400}


def documented_response(client, method: str, path: str, status: int) -> dict:
    """The response the document of `client`'s app gives for `status` of the operation serving `method path`."""
    template, operation = operation_of(client.application, method, path)
    return client.get("/v1/openapi.json").get_json()["paths"][template][operation]["responses"][str(status)]


def test_the_document_is_valid_openapi_3_0(document):
    assert document["openapi"] == "3.0.3"
    assert [error.message for error in OPENAPI_30_VALIDATOR.iter_errors(document)] == []


def test_the_validator_refuses_a_document_that_is_not_openapi(document):
    # A response object needs a description.
    broken = {**document, "paths": {"/v1/health": {"get": {"responses": {"200": {}}}}}}
    assert list(OPENAPI_30_VALIDATOR.iter_errors(broken))


def examples(node: Any, path: str = "") -> list[tuple[str, dict, Any]]:
    """(where, schema, example) of every schema in the document that carries an example."""
    found = []
    if isinstance(node, dict):
        if "example" in node and isinstance(node.get("type"), str):
            found.append((path, node, node["example"]))
        for key, value in node.items():
            found.extend(examples(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(examples(value, f"{path}/{index}"))
    return found


def json_schema(schema: Any) -> Any:
    """An OpenAPI 3.0 schema object as JSON Schema: `nullable` becomes a null type, examples go."""
    if isinstance(schema, list):
        return [json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: json_schema(value) for key, value in schema.items() if key not in ("example", "nullable")}
    if schema.get("nullable") and "type" in schema:
        converted["type"] = [schema["type"], "null"]
    return converted


def test_every_example_in_the_document_is_valid_for_its_schema(document):
    found = examples(document)
    assert len(found) > 20
    invalid = [(where, example) for where, schema, example in found
               if not jsonschema_rs.validator_for(json_schema(schema)).is_valid(example)]
    assert invalid == []


def test_an_example_that_breaks_its_schema_is_found():
    schema = {"type": "string", "maxLength": 3, "example": "northwind"}
    assert not jsonschema_rs.validator_for(json_schema(schema)).is_valid(schema["example"])


def test_the_documented_rate_is_the_rate_the_plans_take(document):
    # A rate's ten decimal places were said only by the 422 refusing an eleventh.
    from ledger.errors import InvalidInput
    from ledger.money import parse_rate

    rates = [schema for where, schema, _ in examples(document) if where.endswith("/rate")]
    assert len(rates) >= 2 and all("10 decimal places" in schema["description"] for schema in rates), rates

    def taken(text: str) -> bool:
        try:
            return parse_rate(text) is not None
        except InvalidInput:
            return False

    for text in ("0", "1", "0.20", "0.1234567890", "1.0000000000", "0.12345678901", ".5", "1.", "0,2", "00.2",
                 "-0.1", "1e-1", "0.2 ", "2", "9.5", "1.5", "1.0000000001", "1.00000000000"):
        for schema in rates:
            documented = jsonschema_rs.validator_for(json_schema(schema)).is_valid(text)
            assert documented == taken(text), text


# ---- (a) what the access tests expect ----

@pytest.mark.parametrize("name", sorted(ROUTES))
def test_every_status_the_access_tests_expect_is_listed_for_the_operation(served, name):
    (app, document), route = served, ROUTES[name]
    expected = {401} | {status for role in ROLES if (status := expected_status(role, route)) >= 400}
    assert expected <= listed(document, operation_of(app, route.method, route.path)), expected


# ---- (b) requests that give each error status ----

class Case(NamedTuple):
    status: int
    method: str
    path: str
    role: str | None  # None: no key
    body: Any = None
    headers: dict | None = None
    raw: bytes | None = None  # sent as is, with `content_type`
    content_type: str = "application/json"
    operation: tuple[str, str] | None = None  # for a path no rule matches: the operation it was meant for


def with_query(path: str, query: str) -> str:
    return f"{path}{'&' if '?' in path else '?'}{query}"


def generic_cases(route: Route, reused_key: str) -> list[Case]:
    """The statuses every operation gives by the rules of `api/openapi.py`, sent with the refused
    bodies of the access tests (a 4xx of a role or a body changes nothing)."""
    cases = [Case(401, route.method, route.path, None, route.body, route.headers),
             Case(422, route.method, with_query(route.path, "bogus=1"), "admin", route.body, route.headers)]
    cases += [Case(403, route.method, route.path, role, route.body, route.headers)
              for role in ("finance", "billing") if role not in route.roles]
    if route.owner is None:
        cases.append(Case(404, route.method, route.path, "p1", route.body, route.headers))
    if route.method in ("POST", "PATCH"):
        cases += [Case(400, route.method, route.path, "admin", raw=b'{"reason": '),
                  Case(415, route.method, route.path, "admin", raw=b"reason=x", content_type="text/plain"),
                  Case(413, route.method, route.path, "admin", {"reason": "x" * BODY_LIMIT_BYTES})]
    if route.method == "POST" and not route.path.startswith("/v1/revenue-events"):
        cases.append(Case(409, route.method, route.path, "admin", {}, {"Idempotency-Key": reused_key}))
    return cases


def domain_cases(call: Caller, database: Database) -> list[Case]:
    """What the domain refuses, for the operations whose listed statuses the generic cases do not
    all give, and a few more."""
    terminated = call.partner()
    assert call.patch(f"/v1/partners/{terminated}", {"status": "terminated"}).status_code == 200
    soon = call.partner()  # a change that starts within the fifteen minutes a withdrawal needs
    starts = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()
    scheduled = call.patch(f"/v1/partners/{soon}", {"status": "suspended", "effective_at": starts})
    [change] = scheduled.get_json()["scheduled"]
    [only_attribution] = [a["id"] for a in call.read("/v1/customers/p1-customer")["attributions"]]
    event = event_body(unique("evt"), "p1-customer", unique("inv"), "10.00", "2026-01-20")
    call.created("/v1/revenue-events", event, as_="billing")
    reversed_id = new_transaction(database)
    call.created(f"/v1/transactions/{reversed_id}/reversal", {"reason": "first"})
    replace = {"customer_id": "p1-customer", "partner_id": "p2", "effective_from": "2026-02-01", "source": "manual",
               "replace": True}
    return [
        Case(409, "PATCH", f"/v1/partners/{terminated}", "finance", {"status": "active"}),
        Case(404, "PATCH", "/v1/partners/nobody", "finance", {"status": "active"}),
        Case(409, "DELETE", f"/v1/partners/{soon}/scheduled/{change['id']}", "finance"),
        Case(404, "DELETE", f"/v1/partners/{soon}/scheduled/plan-999999999", "finance"),
        Case(409, "DELETE", "/v1/plans/standard/versions/1", "finance"),
        Case(404, "DELETE", "/v1/plans/standard/versions/99", "finance"),
        Case(409, "DELETE", f"/v1/customers/p1-customer/attributions/{only_attribution}", "finance"),
        Case(404, "DELETE", "/v1/customers/nobody/attributions/1", "finance"),
        Case(409, "POST", "/v1/revenue-events", "billing", {**event, "amount": money("11.00")}),
        Case(409, "POST", f"/v1/transactions/{reversed_id}/reversal", "finance", {"reason": "again"}),
        Case(404, "POST", "/v1/transactions/999999999/reversal", "finance", {"reason": "x"}),
        Case(409, "POST", "/v1/plans", "finance", plan_body("standard")),
        Case(404, "GET", "/v1/plans/nobody", "finance"),
        Case(404, "POST", "/v1/plans/nobody/versions", "finance", {**STANDARD_TERMS, "effective_from": "2026-06-01"}),
        Case(409, "POST", "/v1/periods/2999-01/close", "finance"),
        Case(404, "POST", "/v1/periods/2026-1x/close", "finance"),
        Case(404, "GET", "/v1/periods/2026-1x", "finance"),
        Case(403, "POST", "/v1/attributions", "billing", replace),
        Case(404, "GET", "/v1/customers/nobody", "billing"),
        Case(404, "GET", "/v1/revenue-events/nobody", "billing"),
        Case(404, "POST", "/v1/api-keys/key_nobody/revocation", "admin", {"reason": "x"}),
        Case(404, "GET", "/v1/partners/p2", "p1"),
        Case(404, "GET", "/v1/partners/nobody/balance", "finance"),
        Case(404, "GET", "/v1/partners/p2/statement?period=2026-01", "p1"),
        Case(404, "GET", "/v1/transactions?partner_id=nobody", "finance"),
        Case(404, "GET", "/v1/transactions/0", "finance", operation=("/v1/transactions/{transaction_id}", "get")),
        Case(404, "GET", "/v1/payouts?run_id=nobody", "finance"),
        Case(404, "POST", "/v1/payouts/999999999/settle", "finance"),
        Case(404, "POST", "/v1/payouts/999999999/fail", "finance"),
        Case(422, "GET", "/v1/health?bogus=1", None),
    ]


def send(client, keys, case: Case):
    headers = (bearer(getattr(keys, case.role)) if case.role else {}) | (case.headers or {})
    if case.raw is not None:
        return client.open(case.path, method=case.method, headers=headers, data=case.raw,
                           content_type=case.content_type)
    return client.open(case.path, method=case.method, headers=headers, json=case.body)


class _StalledBody(io.RawIOBase):
    """A request stream whose client stopped sending: the server's socket timed out while reading."""

    def readable(self) -> bool:
        return True

    def readinto(self, _buffer) -> int:
        raise TimeoutError("timed out")


def stalled(client, key: str, route: Route):
    environ = EnvironBuilder(route.path, method=route.method, content_type="application/json",
                             headers=bearer(key), data=b'{"reason": "x"}').get_environ()
    environ["wsgi.input"] = io.BufferedReader(_StalledBody())
    return client.open(Request(environ))


def out_of_reach(url: str) -> Database:
    """A database whose every session fails as a busy or unreachable one does."""
    database = Database(url)

    def busy():
        error = sqlite3.OperationalError("database is locked")
        error.sqlite_errorcode = sqlite3.SQLITE_BUSY
        raise OperationalError("BEGIN", {}, error)

    database.reader = database.writer = busy
    return database


def answered_cases(scratch) -> list[tuple[Case, Any]]:
    """Every case of every operation of the access tests' routes, with its response."""
    call, app = Caller(scratch.client, scratch.keys), scratch.client.application
    reused_key = unique("key")
    first = call.post("/v1/plans", plan_body(unique("plan")), as_="admin", headers={"Idempotency-Key": reused_key})
    assert first.status_code == 201, first.data
    routes = list({operation_of(app, route.method, route.path): route for route in ROUTES.values()}.values())
    cases = [case for route in routes for case in generic_cases(route, reused_key)]
    cases += domain_cases(call, scratch.database)
    answered = [(case, send(scratch.client, scratch.keys, case)) for case in cases]
    answered += [(Case(408, route.method, route.path, "admin"), stalled(scratch.client, scratch.keys.admin, route))
                 for route in routes if route.method in ("POST", "PATCH")]
    unavailable = make_app(out_of_reach(scratch.database.url)).test_client()
    busy = [Case(503, route.method, route.path, "admin", route.body, route.headers) for route in routes]
    return answered + [(case, send(unavailable, scratch.keys, case)) for case in busy]


def test_every_error_status_an_operation_gives_is_listed_and_every_listed_one_is_given(scratch, document):
    app, answered = scratch.client.application, answered_cases(scratch)
    wrong = [(case, response.status_code, response.get_data(as_text=True)[:200]) for case, response in answered
             if response.status_code != case.status or response.mimetype != "application/problem+json"]
    assert wrong == []
    given: dict[tuple[str, str], set[int]] = {}
    for case, response in answered:
        given.setdefault(case.operation or operation_of(app, case.method, case.path), set()).add(response.status_code)
    unlisted = {operation: sorted(statuses - listed(document, operation)) for operation, statuses in given.items()}
    assert {operation: statuses for operation, statuses in unlisted.items() if statuses} == {}
    never_given = {operation: sorted(listed(document, operation) - given.get(operation, set()))
                   for operation in _operations(document)}
    assert {operation: statuses for operation, statuses in never_given.items() if statuses} == {}


def _operations(document: dict) -> list[tuple[str, str]]:
    return [(template, method) for template, item in document["paths"].items()
            for method, operation in item.items() if isinstance(operation, dict) and "responses" in operation]


def test_a_status_an_operation_does_not_give_is_not_listed(document):
    # The partner list is open to partner keys and has no path parameter or filter: nothing is a 404 there.
    assert 404 not in listed(document, ("/v1/partners", "get"))
    assert 409 not in listed(document, ("/v1/revenue-events/batch", "post"))  # refused per event, in a 200
    assert listed(document, ("/v1/health", "get")) == {422}  # no key, no database, no body


def test_a_body_where_the_method_takes_none_is_among_the_422s_reasons(document):
    refused = "a request body, which this method does not take"
    for template, method in (("/v1/health", "get"), ("/v1/partners/{partner_id}/balance", "get"),
                             ("/v1/plans/{plan_id}/versions/{version}", "delete")):
        assert refused in document["paths"][template][method]["responses"]["422"]["description"], template
    assert refused not in document["paths"]["/v1/adjustments"]["post"]["responses"]["422"]["description"]


def test_the_problem_responses_carry_their_headers_and_say_when(document):
    responses = document["paths"]["/v1/payouts/{payout_id}/settle"]["post"]["responses"]
    assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert responses["503"]["headers"]["Retry-After"]["required"] is True
    assert "settled or failed already" in responses["409"]["description"]
    assert "Idempotency-Key" in responses["409"]["description"]
    assert responses["403"]["description"].startswith("Forbidden: a billing key")
    assert set(responses["409"]["content"]) == {"application/problem+json"}
    assert "default" in responses  # a 500, and what the server refuses before the app sees the request


def test_a_replayed_revenue_event_s_header_is_documented(call, document):
    event = event_body(unique("evt"), "p1-customer", unique("inv"), "10.00", "2026-01-20")
    call.created("/v1/revenue-events", event, as_="billing")
    again = call.post("/v1/revenue-events", event, as_="billing")
    assert again.headers.get("Idempotent-Replayed") == "true"
    response = document["paths"]["/v1/revenue-events"]["post"]["responses"][str(again.status_code)]
    assert "Idempotent-Replayed" in response["headers"]


# A body left out: an operation documented with an optional body gets past parsing (to its domain's
# answer), one with a required body is a 422 naming the missing fields.
NO_BODY = {("POST", "/v1/holds/release"): 200, ("POST", "/v1/payout-runs"): 201,
           ("POST", "/v1/payouts/999999/settle"): 404, ("POST", "/v1/payouts/999999/fail"): 404,
           ("POST", "/v1/periods/2026-01/close"): 200, ("POST", "/v1/api-keys/key_nobody/revocation"): 404,
           ("POST", "/v1/adjustments"): 422, ("PATCH", "/v1/partners/p1"): 422, ("POST", "/v1/plans"): 422}


def test_a_body_is_documented_as_required_exactly_where_leaving_it_out_is_a_422(client, keys, served):
    app, document = served
    for (method, path), status in NO_BODY.items():
        template, operation = operation_of(app, method, path)
        required = document["paths"][template][operation]["requestBody"]["required"]
        response = client.open(path, method=method, headers=bearer(keys.admin))
        assert (response.status_code, required) == (status, status == 422), (path, response.data)


def test_every_documented_default_of_a_query_parameter_is_taken_when_sent(client, keys, served):
    """A client that sends a parameter's documented default (generated clients do; Swagger UI fills it
    in) gets what leaving it out gives. A list's cursor was documented with its first key, an id
    list's "0", which is no cursor the API handed out: a 422."""
    app, document = served
    sent = []
    for template, operations in document["paths"].items():
        if "{" in template or "get" not in operations:
            continue
        for parameter in operations["get"].get("parameters", []):
            default = parameter.get("schema", {}).get("default")  # a null one is sent by leaving it out
            if parameter["in"] != "query" or default is None:
                continue
            value = str(default).lower() if isinstance(default, bool) else str(default)
            response = client.get(f"{template}?{parameter['name']}={value}", headers=bearer(keys.admin))
            assert response.status_code == 200, (template, parameter["name"], default, response.get_json())
            sent.append((template, parameter["name"]))
    assert ("/v1/partners", "limit") in sent and ("/v1/transactions", "limit") in sent, sent
