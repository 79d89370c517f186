"""Every error response is `application/problem+json` (RFC 9457): `{type, title, status, detail}`,
plus `errors: {field: [messages]}` on a 422 (always) and on any error that names fields (an
idempotency conflict names the fields that differ).

Four sources, mapped here once:
- domain errors (`ledger.errors.DomainError`): their own status, title, detail and fields; `type`
  names the error class, so clients can tell an idempotency conflict from another conflict;
- HTTP errors (routing, auth, body checks, webargs validation): the status's standard title and a
  fixed detail; validation messages are flattened to dotted field paths (`events.3.amount`);
- the database unreachable, busy or out of room (a lost connection, a lock or statement timeout, a
  serialization failure, a full disk: `ledger.db.retryable`): a 503 with `Retry-After`, logged, since a retry may well succeed
  and is safe (revenue events are keyed by their id, other POSTs and a partner's PATCH by `Idempotency-Key`);
- anything unexpected: a 500 whose detail says nothing about internals (Flask has logged it).
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

import flask_smorest
from flask import Flask, Response, current_app, request
from flask_smorest.utils import prepare_response
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

from api.schemas import ProblemSchema
from ledger.db import database_words, retryable
from ledger.errors import DomainError, InvalidInput, printable

PROBLEM_MIMETYPE = "application/problem+json"
TYPE_PREFIX = "urn:revshare:problem:"

_DETAILS = {
    400: "The request could not be understood.",
    401: "An API key is required: send `Authorization: Bearer <key>`.",
    403: "This API key's role may not use this resource.",
    404: "The requested resource was not found.",
    405: "This method is not allowed on this resource.",
    409: "The request conflicts with the current state of the books.",
    413: "The request body is too large.",
    415: "The request body must be JSON (Content-Type: application/json).",
    422: "The request is invalid; `errors` names each field.",
    500: "An unexpected error occurred. It has been logged.",
    503: "The database could not be reached, was busy or could not write. Retry the request.",
}
RETRY_AFTER_SECONDS = 1
_KEPT_HEADERS = ("Allow", "WWW-Authenticate")
# A 422 of the schema has the type of the domain's `InvalidInput`: clients switch on `type`.
_TYPE_BY_STATUS = {422: "invalid-input"}


def problem_data(status: int, detail: str, *, title: str | None = None, type_name: str | None = None,
                 errors: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """A problem object: the body of a problem+json response, or the `error` of a refused batch item."""
    title = title or _sentence_case(HTTPStatus(status).phrase)
    type_name = type_name or _TYPE_BY_STATUS.get(status) or _slug(title)
    body: dict[str, Any] = {"type": TYPE_PREFIX + type_name, "title": title, "status": status,
                            "detail": detail}
    if errors is not None:
        body["errors"] = errors
    return body


def problem(status: int, detail: str, *, title: str | None = None, type_name: str | None = None,
            errors: dict[str, list[str]] | None = None, headers: dict[str, str] | None = None) -> Response:
    """A problem+json response."""
    body = problem_data(status, detail, title=title, type_name=type_name, errors=errors)
    return current_app.response_class(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE,
                                      headers=headers or {})


def domain_problem_data(error: DomainError) -> dict[str, Any]:
    errors = error.fields if error.fields or error.status == 422 else None
    # Every kind of bad input (`OutOfRange` too) is the one 422 type: clients switch on `type`.
    name = "InvalidInput" if isinstance(error, InvalidInput) else type(error).__name__
    return problem_data(error.status, error.detail, title=error.title, type_name=_slug(name), errors=errors)


def domain_problem(error: DomainError) -> Response:
    body = domain_problem_data(error)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if error.status == 503 else None  # `Unfinished`
    return current_app.response_class(json.dumps(body), status=error.status, mimetype=PROBLEM_MIMETYPE,
                                      headers=headers)


def validation_problem_data(messages: Any) -> dict[str, Any]:
    """The 422 problem of marshmallow validation messages, with dotted field paths."""
    flat: dict[str, list[str]] = {}
    _flatten(messages, "", flat, "body")
    return problem_data(422, _DETAILS[422], errors=flat)


def http_problem(error: HTTPException) -> Response:
    status = error.code or 500
    if status >= 500:  # the details stay in Flask's log of the exception, never in the response
        return problem(status, _DETAILS.get(status, HTTPStatus(status).description))
    headers = {name: value for name, value in error.get_headers() if name in _KEPT_HEADERS}
    errors = validation_errors(error) if status == 422 else None
    return problem(status, _detail(error, status), errors=errors, headers=headers)


def _detail(error: HTTPException, status: int) -> str:
    """The description a raise site gave, else the fixed text for the status."""
    customized = error.description and error.description != type(error).description
    return error.description if customized else _DETAILS.get(status, HTTPStatus(status).description)


def validation_errors(error: HTTPException) -> dict[str, list[str]]:
    """webargs's `{location: {field: messages}}` as `{dotted.field: [messages]}`."""
    data = getattr(error, "data", None) or {}
    flat: dict[str, list[str]] = {}
    for location, by_location in (data.get("messages") or {}).items():
        _flatten(by_location, "", flat, "body" if location == "json" else location)
    return flat


def _flatten(messages: Any, path: str, into: dict[str, list[str]], whole: str) -> None:
    """`whole` names what a message of no field is about: the body, or the query (a parameter
    sent with an empty name)."""
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = path if key == "_schema" else f"{path}.{key}" if path else str(key)
            _flatten(value, name, into, whole)
        return
    texts = messages if isinstance(messages, list) else [messages]
    into.setdefault(path or whole, []).extend(str(text) for text in texts)


def _sentence_case(phrase: str) -> str:
    """"Not Found" as "Not found", like the domain errors' titles."""
    return phrase[:1] + phrase[1:].lower()


def _slug(name: str) -> str:
    """`IdempotencyConflict` and `Not Found` become `idempotency-conflict` and `not-found`."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return re.sub(r"[^a-z0-9]+", "-", spaced.lower()).strip("-")


class Api(flask_smorest.Api):
    """flask-smorest's Api, rendering its HTTP errors as problem+json and documenting them so."""

    ERROR_SCHEMA = ProblemSchema

    def handle_http_exception(self, error: HTTPException) -> Response:
        return http_problem(error)

    def _register_responses(self) -> None:
        """Document the shared error responses as `application/problem+json`, which is what they
        are (flask-smorest documents them as its default response type, application/json)."""
        for status in HTTPStatus:
            response: dict = {"description": status.phrase}
            if not 100 <= status < 200 and status not in (204, 304):
                response["schema"] = self.ERROR_SCHEMA
            content_type = PROBLEM_MIMETYPE if status >= 400 else self.DEFAULT_RESPONSE_CONTENT_TYPE
            prepare_response(response, self.spec, content_type)
            self.spec.components.response(status.name, response, lazy=True)
        response = {"description": "Default error response", "schema": self.ERROR_SCHEMA}
        prepare_response(response, self.spec, PROBLEM_MIMETYPE)
        self.spec.components.response(self.DEFAULT_ERROR_RESPONSE_NAME, response, lazy=True)


def database_problem(error: DBAPIError) -> Response:
    """A 503 to retry when the database was out of reach or busy (`ledger.db.retryable`); any other
    error the driver raised (a statement the database refused, a table missing) goes on to Flask's
    handling of the unexpected: logged, and a 500."""
    if not retryable(error):
        raise error
    # One line at ERROR, as the scheduler logs it (`jobs.scheduler.log_failure`): the database's own
    # words say why; a traceback per refused request buried them while the database was down.
    current_app.logger.error("%s %s: 503, the database is unavailable: %s", request.method,
                             printable(request.path), database_words(error))  # `%0A` decoded: a forged line
    current_app.logger.debug("the database's error in full", exc_info=error)
    return problem(503, _DETAILS[503], headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def install(app: Flask) -> None:
    app.register_error_handler(DomainError, domain_problem)
    app.register_error_handler(OperationalError, database_problem)
    app.register_error_handler(InterfaceError, database_problem)
