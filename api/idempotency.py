"""HTTP idempotency for POSTs (all but revenue events, whose `id` is their key) and a partner's PATCH.

A client may send `Idempotency-Key` (1-200 printable ASCII characters, as the header's draft
standard has it, a Structured Field string; no comma: a header sent twice reaches a WSGI app as its
values joined by commas). A WSGI server hands a header's bytes over one character each (latin-1):
past ASCII, whether a key printed would depend on its UTF-8 bytes (`é` would, `–` would not) and
its length would count bytes, so a key is ASCII. Keys belong to the API key that sent them.
Under `@idempotent`:
- the first request with a key runs; a 2xx answer is stored with the request (`ledger.idempotency`)
  in the same database transaction as its effect, so the record exists exactly when the effect does;
- a retry with the same method, path and JSON body (compared canonically: key order and spacing do
  not matter, and no body is `{}`; failing that, as the route reads it: "1.5" and "1.50" are one
  amount, "Z" and "+00:00" one instant) gets the stored status and body back with
  `Idempotent-Replayed: true`;
- the same key with another body is a 409 whose `errors` names the top-level fields that differ
  (or `Idempotency-Key` when it was used on another method or path);
- concurrent duplicates apply once: `claim()` makes them wait for the first to finish, and a lost
  insert race rolls back this request's effect and answers with the winner's record.
Non-2xx answers are not stored (their transaction rolls back), so a failed request can be retried.
A view that commits transactions of its own before its effect (a payout run's or a close's releases
of matured holds, a hundred to a transaction) makes them in `reclaim_after`. The claim and the lock
on the journal last until a transaction ends (PostgreSQL: transaction-scoped advisory locks; SQLite:
the writers' file lock and write lock, taken at the transaction's first statement), so the first of
those commits lets them go, and a duplicate may come in between two of them, post releases of its
own (keyed by accrual: each is posted once) and complete. After them the key is claimed and looked
up again: a request with this key that completed meanwhile is then the answer (a replay, or a 409
for another body), and the view makes nothing. The releases stay committed whatever the request
answers: they are what any later run or close would post first.

`redact` names top-level response fields never to store, for secrets shown once (a new API key):
a replay shows them as null. `request_token()` gives a domain idempotency key for this request's
effect that is stable across retries with the same `Idempotency-Key`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from copy import deepcopy
from functools import wraps
from typing import Callable, TypeVar

from flask import Response, current_app, g, request
from marshmallow import Schema, ValidationError

from api.auth import current_principal
from api.body import json_body
from api.session import current_session
from ledger import idempotency
from ledger.errors import IdempotencyConflict, InvalidInput, invalid
from ledger.idempotency import StoredRequest, canonical_json

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
PATH_LENGTH_MAX = 500
_HEADER_DOC = {
    "in": "header",
    "name": HEADER,
    "required": False,
    # Printable ASCII but the comma.
    "schema": {"type": "string", "minLength": 1, "maxLength": idempotency.KEY_LENGTH_MAX, "pattern": "^[ -+\\--~]*$"},
    "description": "Retry safely: the same key and body replay the original answer "
                   f"(with `{REPLAYED_HEADER}: true`); the same key with another body is a 409.",
}


def idempotent(view: Callable | None = None, *, redact: tuple[str, ...] = ()) -> Callable:
    """Decorate a POST or PATCH view (above `@blp.arguments` and `@blp.response`): `@idempotent` or
    `@idempotent(redact=("key",))`."""

    def decorate(function: Callable) -> Callable:
        body_schema = _body_schema(function)

        @wraps(function)
        def wrapper(*args, **kwargs):
            key = request.headers.get(HEADER)
            if key is None:
                return function(*args, **kwargs)
            return _once(key, redact, body_schema, lambda: function(*args, **kwargs))

        wrapper._apidoc = deepcopy(getattr(wrapper, "_apidoc", {}))
        wrapper._apidoc.setdefault("arguments", {}).setdefault("parameters", []).append(dict(_HEADER_DOC))
        return wrapper

    return decorate if view is None else decorate(view)


def _body_schema(view: Callable) -> Schema | None:
    """The schema `@blp.arguments` reads the view's JSON body with, if any."""
    parameters = getattr(view, "_apidoc", {}).get("arguments", {}).get("parameters", [])
    [schema] = [p["schema"] for p in parameters if p["in"] == "json"] or [None]
    return schema() if isinstance(schema, type) else schema


def _read_alike(schema: Schema | None, stored_body: str, body: str) -> bool:
    """Whether two canonical JSON bodies ask for the same thing as `schema` reads them (Python's
    equality of what it loads, `Decimal("1.5") == Decimal("1.50")`, or of what its `asked(loaded)`
    makes of that, for fields it loads raw); False when either is refused."""
    if schema is None:
        return False
    asked = getattr(schema, "asked", lambda loaded: loaded)
    try:
        return asked(schema.load(json.loads(stored_body))) == asked(schema.load(json.loads(body)))
    except (ValidationError, InvalidInput, ValueError, TypeError):
        return False


def _fields_read_otherwise(schema: Schema | None, stored_body: str, body: str) -> list[str]:
    """The top-level fields a conflict names: of those spelled otherwise, each whose new value, put
    in the original body in place of its own, has `schema` read a request other than the original
    ("1.50" for "1.5" is not named); every field spelled otherwise when none is so alone (fields read
    together) or the route has no schema."""
    fields = idempotency.differing_fields(stored_body, body)
    before, after = json.loads(stored_body), json.loads(body)
    if schema is None or not isinstance(before, dict) or not isinstance(after, dict):
        return fields

    def with_new(name: str) -> str:
        changed = {field: value for field, value in before.items() if field != name}
        return canonical_json(changed | ({name: after[name]} if name in after else {}))
    return [name for name in fields if not _read_alike(schema, stored_body, with_new(name))] or fields


def _once(key: str, redact: tuple[str, ...], body_schema: Schema | None, run: Callable) -> Response:
    _check_key(key)
    key_id = current_principal().key_id
    session = current_session()
    parsed = json_body()
    body = canonical_json({} if parsed is None else parsed)  # where a body is optional, none means {}
    path = _route_path()
    asked = idempotency.request_hash(request.method, path, body)
    idempotency.claim(session, key_id, key)
    stored = idempotency.find(session, key_id, key)
    if stored is not None:
        return _answer(stored, key, asked, body, body_schema)
    g.idempotency_claim = (key_id, key)
    try:
        response = current_app.make_response(run())
    except _AnsweredMeanwhile as meanwhile:
        return _answer(meanwhile.stored, key, asked, body, body_schema)
    if not 200 <= response.status_code < 300:
        return response
    record = StoredRequest(request.method, path, asked, body, response.status_code, _stored_body(response, redact))
    if idempotency.record(session, key_id, key, record):
        return response
    session.rollback()  # another request with this key committed first: undo ours, answer with theirs
    winner = idempotency.find(session, key_id, key)
    assert winner is not None, "the record that won the race is gone"
    return _answer(winner, key, asked, body, body_schema)


T = TypeVar("T")


class _AnsweredMeanwhile(Exception):
    def __init__(self, stored: StoredRequest) -> None:
        self.stored = stored


def reclaim_after(work: Callable[[], T]) -> T:
    """`work()`, which commits transactions of its own within the request
    (`api.session.separate_transaction`); then, under `@idempotent` with a key, the key claimed
    again, since a commit let the claim go: a request with the same key that completed meanwhile
    is then this one's answer (a replay, or a 409 for another body), and the view goes no further.
    Without that, a close whose duplicate closed the period meanwhile answered 409 "already
    closed" to a retry that must replay."""
    result = work()
    claimed = g.get("idempotency_claim")
    if claimed is not None:
        session = current_session()
        idempotency.claim(session, *claimed)
        stored = idempotency.find(session, *claimed)
        if stored is not None:
            raise _AnsweredMeanwhile(stored)
    return result


_NO_BODY = frozenset({canonical_json(None), canonical_json({})})


def _check_key(key: str) -> None:
    if not 1 <= len(key) <= idempotency.KEY_LENGTH_MAX or not key.isascii() or not key.isprintable():
        raise invalid(HEADER, f"must be 1 to {idempotency.KEY_LENGTH_MAX} printable ASCII characters")
    if "," in key:  # WSGI servers join a header sent twice with commas: "k1,k2" would run as a key of its own
        raise invalid(HEADER, "must be sent once and hold no comma (a header sent twice reaches the service as its "
                              "values joined by commas)")


def _route_path() -> str:
    """The path as its route reads it: `/v1/payouts/0108/settle` names payout 108 as
    `/v1/payouts/108/settle` does (the id converter reads both as 108), so a retry sent either way is
    the same request, not a 409 naming another path."""
    rule, view_args = request.url_rule, request.view_args
    path = request.path if rule is None or not view_args else rule.build(view_args, append_unknown=False)[1]
    return path[:PATH_LENGTH_MAX]


def _stored_body(response: Response, redact: tuple[str, ...]) -> str:
    if not redact:
        return response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body, dict), "only object responses can be redacted"
    return json.dumps({name: None if name in redact else value for name, value in body.items()})


def _answer(stored: StoredRequest, key: str, asked: str, body: str, body_schema: Schema | None) -> Response:
    sent, route = request.path[:PATH_LENGTH_MAX], _route_path()
    if stored.path == sent != route:  # stored by code that kept the path as sent (`/0108/`)
        asked = idempotency.request_hash(request.method, sent, body)
    same_route = stored.method == request.method and stored.path in (route, sent)
    # Records stored before no body was compared as {} hold the body as null: the same request.
    if stored.request_hash == asked or (same_route and ({stored.request_body, body} <= _NO_BODY
                                                        or _read_alike(body_schema, stored.request_body, body))):
        return current_app.response_class(stored.response_body, status=stored.status_code,
                                          mimetype="application/json", headers={REPLAYED_HEADER: "true"})
    if not same_route:
        raise IdempotencyConflict(f"{HEADER} {key[:40]!r} was already used for {stored.method} {stored.path}",
                                  {HEADER: [f"was already used for {stored.method} {stored.path}"]})
    fields = _fields_read_otherwise(body_schema, stored.request_body, body)
    raise IdempotencyConflict(f"{HEADER} {key[:40]!r} was already used with a different request body",
                              {name: ["differs from the original request"] for name in fields})


def request_token() -> str:
    """A token for this request's effect, for domain idempotency keys (`f"reversal:{id}:{request_token()}"`):
    derived from the API key and `Idempotency-Key` when one is sent, random otherwise."""
    if "request_token" not in g:
        key = request.headers.get(HEADER)
        seed = uuid.uuid4().hex if key is None else f"{current_principal().key_id}\0{key}"
        g.request_token = hashlib.sha256(seed.encode()).hexdigest()[:32]
    return g.request_token
