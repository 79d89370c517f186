"""Who is calling, and may they: API keys and roles, checked before anything else about a request.

Every view declares its access with `@public` or `@allow(*roles)`; `create_app` refuses to start
if one does not. `authenticate_request` runs before body checks and validation, so a request with
no or a bad key is a 401 even when its body is invalid.

Roles: `admin` passes everything; the others pass the views that list them. A role that is not
listed gets 403, except a partner key, which gets the same 404 as an unknown URL: to a partner,
anything but its own books does not exist. A partner key naming another partner, in the path
(`/v1/partners/{id}/...`) or in a list's `partner_id` filter, gets that partner's 404 here too,
before body and query are checked: a bad `?as_of=` about a partner it may not see is still about a
partner it may not see, not a 422. Inside views, `partner_scope()` is the partner id a partner key
is bound to (None for other roles), `require_visible()` turns another partner's record into that
404, and `partner_filter()` is the partner a list is filtered by.
"""

from __future__ import annotations

import time
from copy import deepcopy
from typing import Callable, NamedTuple

from flask import Flask, current_app, g, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Forbidden, NotFound, Unauthorized

from api.session import EXTENSION, current_database, current_session
from ledger import customers, keys, partners
from ledger.accounts import PARTNER_ID_PATTERN
from ledger.db import Database, after_commit
from ledger.errors import NotFound as DomainNotFound
from ledger.keys import Principal
from ledger.schema import API_ROLES

ACCESS_ATTRIBUTE = "revshare_access"
# The name a route's path and a list's filter give a partner id (`api.routes.partners`, the lists'
# query schemas): a partner key naming another partner by it is a 404 before anything else.
PARTNER_ARGUMENT = "partner_id"
SECURITY_SCHEME = "bearerAuth"
# flask-smorest's own views (the OpenAPI document and the docs page) are public.
DOCS_ENDPOINT_PREFIX = "api-docs."
# A key found valid is trusted for this long without asking the database again (per process), so
# that authentication costs no query and no transaction on the hot path. A revoked key
# (`ledger.keys.revoke_key`) stops working within this time in other processes, at once in the
# process that revoked it (`forget`).
PRINCIPAL_TTL_S = 10.0
PRINCIPALS_CACHED_MAX = 10_000
ADMIN_ONLY = frozenset({"admin"})  # the roles of key management's routes (`allow` adds admin to every route's)


class Access(NamedTuple):
    public: bool
    roles: frozenset[str]


def _declare(view: Callable, access: Access, security: list) -> Callable:
    setattr(view, ACCESS_ATTRIBUTE, access)
    view._apidoc = deepcopy(getattr(view, "_apidoc", {}))
    view._apidoc.setdefault("manual_doc", {})["security"] = security
    return view


def public(view: Callable) -> Callable:
    """Anyone may call this view, without a key."""
    return _declare(view, Access(True, frozenset()), [])


def allow(*roles: str) -> Callable[[Callable], Callable]:
    """Keys of these roles (and admin keys) may call this view."""
    assert roles and set(roles) <= set(API_ROLES), roles

    def declare(view: Callable) -> Callable:
        return _declare(view, Access(False, frozenset(roles) | {"admin"}), [{SECURITY_SCHEME: []}])

    return declare


def check_declared(app: Flask) -> None:
    """Every view states its access; a missing declaration is a programmer error."""
    for endpoint, view in app.view_functions.items():
        assert endpoint.startswith(DOCS_ENDPOINT_PREFIX) or hasattr(view, ACCESS_ATTRIBUTE), \
            f"view {endpoint} declares neither @public nor @allow(...)"


def authenticate_request() -> None:
    # The request and the app bound once: each lookup through Flask's context proxies costs about
    # twenty times a plain attribute read (2.5 us on a loaded machine), and hooks run on every request.
    req = request._get_current_object()
    endpoint = req.endpoint
    if endpoint is None or endpoint.startswith(DOCS_ENDPOINT_PREFIX):
        return  # routing failed (404/405 follows) or flask-smorest's docs
    app = current_app._get_current_object()
    access: Access = getattr(app.view_functions[endpoint], ACCESS_ATTRIBUTE)
    if req.method == "OPTIONS":
        access = _any_method_s_access(app, req)
    if access.public:
        return
    # Key management asks the database every time: a revoked admin key, trusted from the cache
    # for up to PRINCIPAL_TTL_S in another process, made keys of its own there that outlived it.
    principal = _presented_principal(req.headers.get("Authorization", ""), app.extensions[EXTENSION]["database"],
                                     fresh=access.roles == ADMIN_ONLY)
    g.principal = principal
    if principal.role not in access.roles:
        if principal.role == "partner":
            raise NotFound()
        raise Forbidden(f"The {principal.role} role may not use this resource.")
    if principal.role == "partner":
        _require_own_partner(req, app.view_functions[endpoint], principal.partner_id)


def _any_method_s_access(app: Flask, req) -> Access:
    """Who may ask OPTIONS of a path: whoever may use one of its methods. Routed as the first of the
    path's rules, an OPTIONS of `/v1/partners` took the access of its POST, finance's: a 404 to a
    partner key, which may GET it."""
    adapter = app.create_url_adapter(req)
    accesses = [getattr(app.view_functions[adapter.match(method=method)[0]], ACCESS_ATTRIBUTE)
                for method in adapter.allowed_methods() if method not in ("HEAD", "OPTIONS")]
    return Access(any(access.public for access in accesses),
                  frozenset().union(*(access.roles for access in accesses)))


def _require_own_partner(req, view: Callable, own: str) -> None:
    """The 404 of a missing partner for a partner key naming another one in the path or in a
    `partner_id` filter the view takes. Every value of the filter counts: one given twice is the
    422 of a repeated parameter only when both name the key's own partner."""
    named = req.view_args.get(PARTNER_ARGUMENT)
    if named is not None and named != own:
        raise missing_partner(named)
    if PARTNER_ARGUMENT in getattr(view, "query_parameters", ()):
        for named in req.args.getlist(PARTNER_ARGUMENT):
            # A value that cannot be a partner's id names no partner: the query's 422, as for finance.
            if named != own and PARTNER_ID_PATTERN.fullmatch(named):
                raise missing_partner(named)


def missing_partner(partner_id: str) -> DomainNotFound:
    """The 404 of a partner that does not exist, or that a partner key may not see: the same.
    A partner id holds 64 characters at most; a longer text named is cut there in the detail."""
    return DomainNotFound(f"partner {customers.named(partner_id)} not found")


def _presented_principal(authorization: str, database: Database, *, fresh: bool) -> Principal:
    scheme, _, token = authorization.partition(" ")
    token = token.strip(keys.OPTIONAL_WHITESPACE)
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("An API key is required: send `Authorization: Bearer <key>`.",
                           www_authenticate=_challenge())
    principal = _principal(token, database, fresh=fresh)
    if principal is None:
        raise Unauthorized("The API key is not valid.", www_authenticate=_challenge())
    return principal


def _principal(token: str, database: Database, *, fresh: bool = False) -> Principal | None:
    """The key's principal, from this process's cache (unless `fresh`) or a short read of its own,
    so that a writer's transaction (and on SQLite its write lock) does not start before the request
    is authenticated and validated. A key the read finds revoked leaves the cache."""
    cache = database.shared.setdefault("principals", {})
    digest = keys.hash_key(token) if len(token) <= keys.KEY_LENGTH_MAX else None
    cached = None if fresh else cache.get(digest)
    now = time.monotonic()
    if cached is not None and cached[1] > now:
        return cached[0]
    with database.reader() as session:
        principal = keys.authenticate(session, token)
    if principal is None:
        cache.pop(digest, None)
    else:
        if len(cache) >= PRINCIPALS_CACHED_MAX:
            cache.clear()
        trusted_s = PRINCIPAL_TTL_S
        if principal.expires_at_us is not None:  # not trusted past its expiry
            trusted_s = min(trusted_s, (principal.expires_at_us - keys.now_us()) / 1e6)
        cache[digest] = (principal, now + trusted_s)
    return principal


def forget(key_id: str, session) -> None:
    """Drop a key from this process's cache of principals (it is being revoked), now and again when
    `session` commits: a request of another thread in between may have cached it anew."""
    cache = current_database().shared.get("principals", {})

    def drop() -> None:
        for digest in [digest for digest, (principal, _) in list(cache.items()) if principal.key_id == key_id]:
            cache.pop(digest, None)

    drop()
    after_commit(session, drop)


def _challenge() -> WWWAuthenticate:
    return WWWAuthenticate("bearer", {"realm": "revshare"})


def current_principal() -> Principal:
    principal = g.get("principal")
    assert principal is not None, "current_principal() outside an authenticated view"
    return principal


def partner_scope() -> str | None:
    """The partner a partner key is bound to; None for every other role (they see all partners)."""
    principal = current_principal()
    return principal.partner_id if principal.role == "partner" else None


def partner_filter(partner_id: str | None) -> str | None:
    """The partner a list is to be filtered by: for a partner key its own, whether named or not
    (another partner named is the 404 of a missing one); for other roles the one named, which must
    exist: a mistyped filter is a 404 naming it, not an empty list that reads as "none"."""
    scope = partner_scope()
    if scope is not None:
        if partner_id not in (None, scope):  # refused already, before the query was parsed
            raise missing_partner(partner_id)
        return scope
    if partner_id is not None and not partners.partner_exists(current_session(), partner_id):
        raise DomainNotFound(f"partner {partner_id!r} does not exist")
    return partner_id


def require_visible(partner_id: str | None, what: str) -> None:
    """404 `<what> not found` when a partner key asks for a record that is not its own."""
    scope = partner_scope()
    if scope is not None and partner_id != scope:
        raise DomainNotFound(f"{what} not found")
