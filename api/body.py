"""Request bodies: size, media type and JSON parsing, and the Blueprint whose parser uses them.

Checks run after authentication (see `create_app`): a POST, PUT or PATCH that carries a body must
say `application/json` (or `+json`), in UTF-8 if it names a charset, and come without a
`Content-Encoding` (gzip, say), else 415; a declared length over the limit is a 413 before anything
is read, and a chunked body (no declared length) that goes past the limit while being read is a 413
too. The body is parsed once per request (`request_json()`, `json_body()`): a body the server cannot
read (malformed chunks) and anything that is not JSON (bad UTF-8, bad syntax, numbers too long for
Python, nesting too deep for the parser) is a 400, never a 500; so is an object that gives a key
twice. A body that stops arriving (`revshare serve` drops a client idle for
`cli.server.CLIENT_IDLE_S`) is a 408. A GET, HEAD or DELETE of the API that carries a body is a
422 naming the body (`NO_BODY_METHODS`).

`plain_body` lets a view take a body its own parser reads (a well-formed revenue event) straight,
past webargs and flask-smorest, and sends any other through them for their messages.

`Blueprint` is flask-smorest's with that parser, and query strings refuse unknown parameters like
bodies do, so `?asof=` is a 422 rather than a silently ignored filter; `check_query` refuses them
the same way on routes that take no query parameters at all. A schema class given to
`arguments` is instantiated once, when the route is declared: webargs would otherwise build (and
deep-copy the fields of) a new instance on every request. Our schemas keep no state between loads.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import flask_smorest
import marshmallow as ma
from flask import current_app, g, request
from webargs import core
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge, RequestTimeout, UnsupportedMediaType

from api.schemas import Schema
from ledger import json_input
from ledger.errors import header_shown

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# A body sent with one of these is refused, not ignored: a client that puts a filter or a reason
# there (`{"as_of": ...}` on a balance, a note on a withdrawal) would take the answer for one that
# used it, as with an unknown query parameter.
NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE"})
QUERY_LOCATIONS = frozenset({"query", "querystring"})
_NO_PARAMETERS = Schema()


def check_body() -> None:
    """413 for a declared length over the limit; 415 for a body that is not JSON, or is encoded; 422
    for a body where the method takes none."""
    req = request._get_current_object()  # bound once: see `api.auth.authenticate_request`
    if req.routing_exception is not None:
        return  # a request no route serves is its 404 or 405 (Flask raises it after these hooks)
    if req.method not in BODY_METHODS:
        if req.method in NO_BODY_METHODS and _ours(req) and _sends_bytes(req):
            flask_smorest.abort(422, messages={"json": [f"{req.method} takes no request body"]})
        return
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    length = req.content_length
    if length is not None and length > limit:
        raise RequestEntityTooLarge(f"The request body is larger than {limit} bytes.")
    if not _has_body(req):
        return
    if not core.is_json(req.mimetype):
        raise UnsupportedMediaType(f"The request body must be application/json, not {req.mimetype[:80]!r}.")
    # JSON between systems is UTF-8 (RFC 8259, 8.1), and is read as such: a body declared in another
    # charset (ISO-8859-1, say) would be read wrong, or refused as bad UTF-8 with no word of why.
    charset = req.mimetype_params.get("charset", "utf-8").strip().lower()
    if charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(f"The request body must be UTF-8 JSON, not charset {charset[:40]!r}.")
    # A compressed body is an unsupported content coding (RFC 9110, 15.5.16), not JSON that is not UTF-8.
    coding = req.headers.get("Content-Encoding", "identity").strip().lower()
    if coding not in ("identity", ""):
        raise UnsupportedMediaType(f"The request body must be sent as it is, not encoded ({coding[:40]!r}).")


def _has_body(req) -> bool:
    """A declared length above zero, or a chunked body (no declared length)."""
    return (req.content_length or 0) > 0 or _chunked(req)


def _chunked(req) -> bool:
    return "chunked" in req.headers.get("Transfer-Encoding", "").lower()


def _sends_bytes(req) -> bool:
    """A declared length above zero, or a chunked body that holds a byte: it is read (its framing
    unread, or its stalling, is the 400 or 408 a POST's is), since a chunked body of no chunks is no
    body, as `Content-Length: 0` is none."""
    if req.content_length is not None:
        return req.content_length > 0
    return _chunked(req) and _body_bytes(req) != b""


def _ours(req) -> bool:
    """A route of the API's blueprints: the documents (`/v1/openapi.json`, `/docs`) take what they are
    sent, query or body, as documents do."""
    return isinstance(current_app.blueprints.get(req.blueprint), Blueprint)


def json_body() -> Any:
    """The request's JSON body, parsed once; None when the body is empty."""
    parsed = request_json()
    return None if parsed is core.missing else parsed


def request_json() -> Any:
    """The request's JSON body, parsed once; `core.missing` when the body is empty (or white space
    only), which a JSON body never parses to (`null` is None)."""
    context = g._get_current_object()
    parsed = context.get("json_body", _UNREAD)
    if parsed is _UNREAD:
        parsed = context.json_body = _parse(_body_bytes(request._get_current_object()))
    return parsed


_UNREAD = object()


def _body_bytes(req) -> bytes:
    """The body as sent, read once. Framing the server cannot read (a chunk size that is not
    hexadecimal, say: gunicorn raises its own exception for it) is the client's error, a 400, not a
    500. Werkzeug stops a body without a declared length at the limit silently: a byte beyond it is
    a 413, whatever the part read holds (white space alone would otherwise pass for no body). A body
    of exactly the limit is taken, as it is with a declared length."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    try:
        data = req.get_data(cache=True)
        # Werkzeug read up to the limit: one more byte from the server's stream tells whether it ended there.
        beyond = req.content_length is None and len(data) >= limit and req.environ["wsgi.input"].read(1)
    except (HTTPException, TimeoutError) as error:
        # The server's idle limit on a client that stopped sending (`cli.server.CLIENT_IDLE_S`):
        # Werkzeug's reader turns the socket's timeout into a ClientDisconnected (a bare 400).
        if isinstance(error, TimeoutError) or isinstance(error.__context__, TimeoutError):
            raise RequestTimeout("The request body stopped arriving before it was complete.") from None
        raise
    except Exception as error:  # noqa: BLE001 - whatever the server's reader raises for a malformed body
        if isinstance(getattr(error, "hdr", None), str):  # gunicorn's refusal of a trailer's line names it
            error.hdr = header_shown(error.hdr)
        raise BadRequest(f"The request body could not be read: {str(error)[:120]}") from None
    if beyond:
        raise RequestEntityTooLarge(f"The request body is larger than {limit} bytes.")
    return data


def _parse(data: bytes) -> Any:
    if not data.strip():
        return core.missing
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequest(f"The request body is not UTF-8 (byte {error.start + 1}).") from None
    try:
        return json_input.loads(text)
    except json_input.DuplicateKey as error:
        raise BadRequest(f"The request body is ambiguous JSON: {error}.") from None
    except (ValueError, RecursionError) as error:
        raise BadRequest(f"The request body is not valid JSON: {json_input.reason(error)}.") from None


class JsonParser(FlaskParser):
    DEFAULT_UNKNOWN_BY_LOCATION = {**FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "query": None, "querystring": None}

    def _raw_load_json(self, req) -> Any:
        """An empty body is missing (optional bodies may be left out); a body that is the JSON
        literal `null` is a value, which the schema refuses like any other non-object (422)."""
        if not core.is_json(req.mimetype):
            return core.missing
        return request_json()


def plain_body(parse: Callable[[Any], dict | None]) -> Callable[[Callable], Callable]:
    """A view (under `Blueprint.arguments`) that takes a body `parse` reads without a schema: a JSON
    body `parse` turns into the view's arguments is passed to the view as it is written, past webargs
    and flask-smorest's wrappers, which cost a single-event POST about 90 function calls of their
    own (and read its body twice); any other body goes through them, for their messages. `parse`
    must give what the schema loads, and the view must return a complete Response (flask-smorest's
    response wrapper returns one as it is), so that both paths answer alike; the OpenAPI document is
    the wrapped view's."""

    def decorate(view: Callable) -> Callable:
        written = inspect.unwrap(view)

        @functools.wraps(view)
        def plain(*args, **kwargs):
            if core.is_json(request.mimetype):
                loaded = parse(request_json())
                if loaded is not None:
                    return written(*args, loaded, **kwargs)
            return view(*args, **kwargs)

        return plain

    return decorate


class Blueprint(flask_smorest.Blueprint):
    """The Blueprint every route module uses."""

    ARGUMENTS_PARSER = JsonParser()

    def arguments(self, schema, *args, **kwargs):
        if isinstance(schema, type):
            schema = schema()
        if kwargs.get("location", "json") == "json":
            kwargs.setdefault("required", _requires_body(schema))
        decorator = super().arguments(schema, *args, **kwargs)
        if kwargs.get("location") not in QUERY_LOCATIONS:
            return decorator

        parameters = frozenset(field.data_key or name for name, field in schema.fields.items())

        def takes_query(func):
            view = decorator(func)
            # The decorators above copy it (functools.wraps) to the view; `api.auth` reads it too.
            view.query_parameters = parameters
            return view
        return takes_query


def _requires_body(schema: Schema) -> bool:
    """Whether the document marks the body required: an empty body is no body, loaded as `{}`
    (`JsonParser`), so a schema that takes `{}` (every field optional) takes no body too."""
    try:
        schema.load({})
    except ma.ValidationError:
        return True
    return False


def check_query() -> None:
    """On a route of ours, a query parameter given twice (no parameter takes a list) is a 422 naming
    it, and so is any query parameter on a route that takes none."""
    req = request._get_current_object()
    # An empty query string holds no parameter: no need to parse it (`args`) to know. An OPTIONS reads
    # none: routed by its path's first rule (often a POST, which takes none), it was refused for one
    # its path's GET takes.
    if not req.query_string or req.method == "OPTIONS" or not req.args:
        return
    app = current_app._get_current_object()
    if not _ours(req):
        return
    repeated = sorted(name for name, values in req.args.lists() if len(values) > 1)
    if repeated:
        flask_smorest.abort(422, messages={"query": {name: ["given more than once"] for name in repeated}})
    if not getattr(app.view_functions.get(req.endpoint), "query_parameters", ()):
        Blueprint.ARGUMENTS_PARSER.parse(_NO_PARAMETERS, req, location="query")
