"""The problem responses of each operation in the OpenAPI document: which error statuses it can
answer, and when, so that a client generated from the document knows them.

Most follow from how a request passes the service (`api/__init__.py`) and are derived here from
the view and its operation, never written per route:
- a key is needed: 401 (with `WWW-Authenticate`), and 503 (with `Retry-After`), since every such
  route reads the database; health, which needs no key, reads none;
- a role among finance and billing is not allowed: 403; the partner role is not allowed: 404,
  since to a partner key the operation does not exist;
- POST and PATCH: 413 and 415; with a request body, 400 (not JSON) and 408 (the body stopped
  arriving);
- every operation: 422 for a query parameter it does not take or one given twice, besides its
  fields;
- an `Idempotency-Key` header: 409 for a key used before with another body, 422 for a malformed
  key, and `Idempotent-Replayed` on its success responses.
What the domain refuses (an unknown id, a conflict with the books) is declared on the view with
`@refuses(status, when)`; `@replays` marks a view whose success may be a replay though it takes no
`Idempotency-Key` (a revenue event's id is its key). `default` stays for what no operation can foresee: a 500, and
what the server refuses before the app sees the request (`cli.server`: 414, 431, a malformed
request line). A 405 is the answer of a method the path has no operation for, so no operation
lists it.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Callable, Iterator

from apispec import BasePlugin
from flask import Flask

from api.auth import ACCESS_ATTRIBUTE, Access
from api.body import BODY_METHODS, NO_BODY_METHODS
from api.errors import PROBLEM_MIMETYPE
from api.idempotency import HEADER, REPLAYED_HEADER
from ledger.idempotency import KEY_LENGTH_MAX

REFUSALS_ATTRIBUTE = "revshare_refusals"
REPLAYS_ATTRIBUTE = "revshare_replays"
PROBLEM_SCHEMA_REF = {"$ref": "#/components/schemas/Problem"}
# Roles refused with a 403; a partner key is refused with a 404, and admin passes everything.
STAFF_ROLES = ("finance", "billing")

_AUTHENTICATION = "no `Authorization: Bearer <key>`, or a key that is not valid (unknown or revoked)"
_PARTNER_REFUSED = "a partner key: this operation does not exist for a partner (the 404 of an unknown URL)"
_QUERY = "a query parameter the operation does not take, or one given more than once"
_BODY_REFUSED = "a request body, which this method does not take"
_FIELDS = "a field is invalid: `errors` names each, with dotted paths for nested fields"
_KEY_FORMAT = f"`{HEADER}` is not 1 to {KEY_LENGTH_MAX} printable ASCII characters without a comma, or was sent twice"
_KEY_REUSED = (f"`{HEADER}` was used before with another body (`errors` names the fields that differ), or on "
               "another method or path")
_NOT_JSON = ("the body is not JSON the service can read (malformed, not UTF-8, a key given twice, too deep), or "
             "its framing cannot be read")
_STALLED = "the body stopped arriving before it was complete"
_TOO_LARGE = "the body is larger than the service's limit (`REVSHARE_MAX_BODY_BYTES`)"
_NOT_JSON_TYPE = ("a body whose `Content-Type` is not `application/json` (or `+json`), or which comes with a "
                  "`Content-Encoding` (gzip, say): send it as it is")
_UNAVAILABLE = ("the database was out of reach, busy or could not write, or (a payout run, a close) the releases "
                "it makes first passed the time one request may take, those made standing: retry after `Retry-After` "
                f"seconds (a retry is safe: revenue events are keyed by their id, other POSTs and a partner's PATCH by "
                f"`{HEADER}`)")

# A posting past a running total's range on a request that sends no amount (`ledger.errors.totals_not_asked`).
TOTALS_PAST_RANGE = "an account's running total would pass 2^63 - 1 minor units"

_HEADERS = {
    401: {"WWW-Authenticate": {"description": "`Bearer realm=revshare`", "required": True,
                               "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait before retrying", "required": True,
                          "schema": {"type": "integer", "minimum": 0}}},
}
_REPLAYED = {REPLAYED_HEADER: {
    "description": "`true` when this is the stored answer of an earlier request with the same key and body",
    "schema": {"type": "string", "enum": ["true"]}}}


def refuses(status: int, when: str) -> Callable[[Callable], Callable]:
    """Document a problem response the view's domain can give: `@refuses(409, "the payout is not
    pending")`. Place it under `@blp.route`, with `@allow`."""
    assert 400 <= status < 500, status

    def declare(view: Callable) -> Callable:
        # Decorators apply bottom up: prepended, the refusals read in the order they are written.
        setattr(view, REFUSALS_ATTRIBUTE, ((status, when), *getattr(view, REFUSALS_ATTRIBUTE, ())))
        return view

    return declare


def replays(view: Callable) -> Callable:
    """A view whose success answer may be a replay, marked `Idempotent-Replayed: true`."""
    setattr(view, REPLAYS_ATTRIBUTE, True)
    return view


class ProblemsPlugin(BasePlugin):
    """Adds each operation's problem responses, as the module's docstring derives them."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def operation_helper(self, path=None, operations=None, **kwargs) -> None:
        view = self.app.view_functions[kwargs["rule"].endpoint]
        access: Access | None = getattr(view, ACCESS_ATTRIBUTE, None)
        if access is None:
            return  # flask-smorest's own views (the document, the docs page) are not in the document
        for method, operation in operations.items():
            reasons = _reasons(method.upper(), operation, access, getattr(view, REFUSALS_ATTRIBUTE, ()))
            operation["responses"] = _responses(operation["responses"], reasons,
                                                replayed=getattr(view, REPLAYS_ATTRIBUTE, False) or _keyed(operation))


def _reasons(method: str, operation: dict, access: Access, refusals: tuple) -> dict[int, list[str]]:
    reasons: dict[int, list[str]] = {}
    for status, when in [*_derived(method, operation, access), *refusals]:
        reasons.setdefault(status, []).append(when)
    return reasons


def _derived(method: str, operation: dict, access: Access) -> Iterator[tuple[int, str]]:
    """(status, when) of what the request's way through the service gives (the module's docstring)."""
    if not access.public:
        yield 401, _AUTHENTICATION
        refused = [role for role in STAFF_ROLES if role not in access.roles]
        if refused:
            yield 403, f"a {' or '.join(refused)} key: its role may not use this operation"
        if "partner" not in access.roles:
            yield 404, _PARTNER_REFUSED
        yield 503, _UNAVAILABLE
    if method in BODY_METHODS:
        yield 413, _TOO_LARGE
        yield 415, _NOT_JSON_TYPE
    if "requestBody" in operation:
        yield 400, _NOT_JSON
        yield 408, _STALLED
    if "requestBody" in operation or any(p.get("in") == "query" for p in operation.get("parameters", [])):
        yield 422, _FIELDS
    yield 422, _QUERY
    if method in NO_BODY_METHODS:
        yield 422, _BODY_REFUSED
    if _keyed(operation):
        yield 409, _KEY_REUSED
        yield 422, _KEY_FORMAT


def _keyed(operation: dict) -> bool:
    return any(p.get("in") == "header" and p.get("name") == HEADER for p in operation.get("parameters", []))


def _responses(documented: dict, reasons: dict[int, list[str]], *, replayed: bool) -> dict:
    """The success responses as the route documents them (with the replay header where it applies),
    each problem response with its reasons, and `default`, in that order."""
    documented = {str(status): response for status, response in documented.items()}
    successes = {status: response for status, response in documented.items() if _success(status)}
    assert set(documented) - set(successes) <= {"default", "422"}, \
        f"an error response is documented by hand, not with @refuses: {sorted(documented)}"
    if replayed:
        successes = {status: {**response, "headers": {**response.get("headers", {}), **_REPLAYED}}
                     for status, response in successes.items()}
    problems = {str(status): _problem(status, reasons[status]) for status in sorted(reasons)}
    return {**dict(sorted(successes.items())), **problems, "default": documented["default"]}


def _success(status: str) -> bool:
    return status.isdigit() and int(status) < 400


def _problem(status: int, reasons: list[str]) -> dict:
    phrase = HTTPStatus(status).phrase
    phrase = phrase[:1] + phrase[1:].lower()  # "Not found", as the problems' titles
    text = f"{phrase}: {reasons[0]}." if len(reasons) == 1 else \
        f"{phrase}:\n\n" + "\n".join(f"- {reason}" for reason in reasons)
    response = {"description": text, "content": {PROBLEM_MIMETYPE: {"schema": dict(PROBLEM_SCHEMA_REF)}}}
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response
