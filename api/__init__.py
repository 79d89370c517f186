"""The HTTP API (contract: DESIGN.md, "HTTP API contract (v1)"): a Flask app factory over `ledger/`.

Nothing is built at import time: `create_app()` makes the settings (from the environment unless
given), the database, the app and its flask-smorest `Api`. Routes are thin: parse, call the domain,
render. A request passes, in order:

1. routing: unknown URL 404, wrong method 405;
2. authentication and role (`auth.py`): 401, 403, or 404 for a partner key (also for one naming
   another partner in the path or a `partner_id` filter, whatever its query);
3. body checks (`body.py`): 413 too large, 415 not JSON, 422 a body where the method takes none;
4. parsing and validation (webargs + `fields.py`): 400 not JSON, 422 naming the fields (a
   well-formed revenue event is read by its own parser instead: `body.plain_body`);
5. the domain: its errors map to 404, 409, 422 (`errors.py`);
6. the response: the request's session (`session.py`) commits on 2xx and rolls back otherwise.

OpenAPI 3 is served at `/v1/openapi.json` and Swagger UI at `/docs` (its assets come from a CDN);
each operation lists the problem responses it can give (`openapi.py`).
"""

from __future__ import annotations

from types import CodeType, FunctionType
from typing import Any, Callable

from flask import Flask, Response, current_app, request

from api import auth, body, errors, openapi, pagination, session
from api.routes import BLUEPRINTS
from ledger.db import Database
from ledger.errors import DomainError, printable
from ledger.migrate import DatabaseUnreached, refusal_to_serve
from ledger.settings import Settings, without_password

SWAGGER_UI_CDN = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/"
# A request waits this long at most for a lock (another posting, a close or a batch holding the
# journal), then answers a 503 to retry: gunicorn ends a worker whose request runs past its timeout
# (30 s), and the client got gunicorn's own HTML 500, not the problem+json 503 the contract promises
# a busy database. Jobs and the command line wait as long as it takes.
LOCK_WAIT_S = 10.0
# Code objects `App.ensure_sync` remembers: the app's hooks and views, the wrappers around them, and
# the code of functions made per request (`after_this_request`'s), one entry for them all.
SYNC_CODES_CACHED_MAX = 1_000


class NoStoreResponse(Response):
    """Every answer of the app carries `Cache-Control: no-store`: balances, statements and payouts are one
    partner's money, and no browser or proxy in between is to keep them (shared caches keep no
    answer to a request with `Authorization`, but a browser's own cache or a misconfigured proxy
    may, heuristically, without validators). The documents and the health check are cheap to ask again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.headers.setdefault("Cache-Control", "no-store")


class App(Flask):
    """Flask, remembering which functions are plain `def`s. Flask asks `inspect.iscoroutinefunction`
    of every hook and view wrapper on every request (eight times a revenue event POST, nine function
    calls each); for a plain function the answer is in its code's flags (and a mark
    `inspect.markcoroutinefunction` leaves on the function, from Python 3.12), so the code is what is
    remembered: a function made for one request and remembered itself kept that request's objects
    alive (its closure) long after it, and filled the room meant for the app's own."""

    response_class = NoStoreResponse

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._synchronous_codes: set[CodeType] = set()

    def ensure_sync(self, func: Callable) -> Callable:
        plain = type(func) is FunctionType and _COROUTINE_MARK not in func.__dict__
        if plain and func.__code__ in self._synchronous_codes:
            return func
        sync = super().ensure_sync(func)
        # Plain functions only: a bound method may be of an object made for one request (a MethodView's).
        if sync is func and plain and len(self._synchronous_codes) < SYNC_CODES_CACHED_MAX:
            self._synchronous_codes.add(func.__code__)
        return sync

    def make_default_options_response(self) -> Response:
        """An OPTIONS the app answers itself (a route that takes no key, or none): a 204 with `Allow`,
        where Flask's was a 200 with an empty body typed as an HTML page."""
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]  # no body, so no type (RFC 9110, 8.3)
        return response

    def log_exception(self, exc_info) -> None:
        """Flask's line for an unexpected error, with the path's characters that do not print
        escaped: decoded from `%0A` and `%1B`, they forged log lines of their own."""
        self.logger.error("Exception on %s [%s]", printable(request.path), request.method, exc_info=exc_info)


_COROUTINE_MARK = "_is_coroutine_marker"  # inspect.markcoroutinefunction's attribute (Python 3.12+)


def create_app(settings: Settings | None = None, database: Database | None = None) -> Flask:
    settings = settings or Settings.from_env()
    database = database or Database(settings.database_url, lock_wait_s=LOCK_WAIT_S)
    app = App(__name__, static_folder=None)
    app.config.update(_config(settings))
    app.logger.setLevel(settings.log_level)
    session.install(app, settings, database)
    errors.install(app)
    app.before_request(auth.authenticate_request)
    app.before_request(body.check_body)
    app.before_request(body.check_query)
    app.url_map.converters[pagination.ID_CONVERTER] = pagination.IdConverter
    # A path is matched as sent: `/v1//periods` is a 404 problem, not an HTML redirect to `/v1/periods`.
    app.url_map.merge_slashes = False
    app.url_map.converters.update(pagination.TEXT_CONVERTERS)
    api = errors.Api(app, spec_kwargs={"extra_plugins": [openapi.ProblemsPlugin(app)]})
    api.register_converter(pagination.IdConverter, pagination.IdConverter.openapi)
    api.spec.components.security_scheme(auth.SECURITY_SCHEME, {"type": "http", "scheme": "bearer"})
    for blueprint in BLUEPRINTS:
        api.register_blueprint(blueprint, url_prefix="/v1")
    auth.check_declared(app)
    return app


def create_served_app(settings: Settings | None = None) -> Flask:
    """The app gunicorn serves (`wsgi.py`, read in each worker): `create_app` for a database this
    code may serve (`ledger.migrate.refusal_to_serve`), else RuntimeError, which fails the worker's
    boot and stops gunicorn. `revshare serve` checks the database before gunicorn starts; gunicorn
    started on its own served books behind the code (a close or a payout run written without the
    rules of the migrations not yet run) until the revision was checked here. A database that cannot
    be reached as the worker starts is asked again before each request until it answers: a worker
    gunicorn starts anew (`--max-requests`, a timeout, a HUP) while PostgreSQL restarts would
    otherwise stop gunicorn for good, and one started before the database would serve it unchecked."""
    settings = settings or Settings.from_env()
    try:
        refusal, reached = refusal_to_serve(settings.database_url), True
    except DatabaseUnreached:
        refusal, reached = None, False
    if refusal is not None:
        raise RuntimeError(f"cannot serve the database {without_password(settings.database_url)!r}: {refusal}")
    app = create_app(settings)
    if not reached:
        app.before_request_funcs.setdefault(None, []).insert(0, _revision_checked_once(settings.database_url))
    return app


class NotServed(DomainError):
    """The database, reached at last, is not one this code may serve: a 503 naming why."""

    status = 503
    title = "Service unavailable"


def _revision_checked_once(url: str) -> Callable[[], None]:
    """A hook that answers every request a 503 while the database, reached at last, is not one this
    code may serve (logged once, naming why: the answer, to anyone, names no database), and lets
    requests through while it cannot be reached (they meet its absence themselves: 503s) or once it
    was found fit."""
    checked = logged = False

    def check_revision() -> None:
        nonlocal checked, logged
        if checked:
            return
        try:
            refusal = refusal_to_serve(url)
        except DatabaseUnreached:
            return
        if refusal is not None:
            if not logged:
                current_app.logger.error("cannot serve the database %r: %s", without_password(url), refusal)
                logged = True
            raise NotServed("The database is not at this code's revision: the service's log says which, and "
                            "what to run.")
        checked = True

    return check_revision


def _config(settings: Settings) -> dict:
    return {
        "MAX_CONTENT_LENGTH": settings.max_body_bytes,
        # Unexpected exceptions become a logged 500 problem, in tests too, never a traceback to the client.
        "PROPAGATE_EXCEPTIONS": False,
        "API_TITLE": "revshare-ledger",
        "API_VERSION": "v1",
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "v1/openapi.json",
        "OPENAPI_SWAGGER_UI_PATH": "docs",
        "OPENAPI_SWAGGER_UI_URL": SWAGGER_UI_CDN,
    }
