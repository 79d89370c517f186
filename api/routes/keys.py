"""POST /v1/api-keys (admin): create a key; the key is shown in this response only. A partner key
must name a partner that exists (422 naming `partner_id` otherwise). Beyond the contract, a key may
be made to expire (`expires_at`, after now): from then on it no longer authenticates.

POST /v1/api-keys/{id}/revocation (admin): revoke a key (201); it no longer authenticates, in every
worker within `api.auth.PRINCIPAL_TTL_S`. Revoking it again answers the first revocation (200). Not
in the contract, which is silent on revocation: a key that leaks must be stopped without editing
the database (keys are never updated or deleted).

GET /v1/api-keys (admin): every key, in id order, a page at a time, with its revocation if it has
one; never a key itself, which is not stored. Not in the contract either: without it, an admin over
HTTP could revoke only the keys whose ids it had kept."""

from __future__ import annotations

import re

import marshmallow as ma

from api.auth import allow, forget
from api.body import Blueprint
from api.fields import Instant, PartnerId, Str
from api.idempotency import idempotent
from api.openapi import refuses
from api.pagination import Listing, page, page_query, page_schema
from api.schemas import Schema
from api.session import current_session
from ledger import keys
from ledger.instants import format_instant
from ledger.schema import API_ROLES

blp = Blueprint("api-keys", __name__, description="API keys (admin only)")
# A key's id as a cursor of the list holds it: printable ASCII, as `ledger.keys.create_key` makes them
# (a NUL, which PostgreSQL refuses in text, was a 500 there).
_KEY_ID = re.compile(r"[!-~]{1,32}")


def _key_id(text: str) -> str:
    if _KEY_ID.fullmatch(text) is None:
        raise ValueError(text)
    return text


LISTING = Listing("api-keys", _key_id)


class KeyRequestSchema(Schema):
    role = Str(16, required=True, validate=ma.validate.OneOf(API_ROLES))
    partner_id = PartnerId(load_default=None, allow_none=True,
                           metadata={"description": "required for, and only for, the partner role"})
    expires_at = Instant(load_default=None, allow_none=True, metadata={
        "description": "from this instant on the key no longer authenticates (after now); none: it does not expire"})


class KeySchema(Schema):
    id = ma.fields.String(required=True)
    key = ma.fields.String(required=True, allow_none=True,
                           metadata={"description": "the secret, shown once (null in an idempotent replay)"})
    role = ma.fields.String(required=True)
    partner_id = ma.fields.String(required=True, allow_none=True)
    expires_at = ma.fields.String(required=True, allow_none=True, metadata={"description": "RFC 3339 instant"})


@blp.route("/api-keys", methods=["POST"])
@allow("admin")
@refuses(422, "`partner_id` missing for the partner role, given for another role, or naming no partner")
@idempotent(redact=("key",))
@blp.arguments(KeyRequestSchema)
@blp.response(201, KeySchema)
def create_key(args):
    """Create an API key"""
    key_id, key = keys.create_key(current_session(), args["role"], args["partner_id"], args["expires_at"])
    return {"id": key_id, "key": key, "role": args["role"], "partner_id": args["partner_id"],
            "expires_at": _instant(args["expires_at"])}


class RevocationRequestSchema(Schema):
    reason = Str(keys.REASON_LENGTH_MAX, load_default=None, allow_none=True)


class RevocationSchema(Schema):
    id = ma.fields.String(required=True)
    revoked_at = ma.fields.String(required=True, allow_none=True, metadata={
        "description": "RFC 3339 instant; null (in the list) when the revocation's row was removed past the "
                       "database's rules, which `revshare verify` names: the key stays revoked"})
    reason = ma.fields.String(required=True, allow_none=True)


class KeyRecordSchema(Schema):
    id = ma.fields.String(required=True)
    role = ma.fields.String(required=True)
    partner_id = ma.fields.String(required=True, allow_none=True)
    created_at = ma.fields.String(required=True, metadata={"description": "RFC 3339 instant"})
    expires_at = ma.fields.String(required=True, allow_none=True, metadata={"description": "RFC 3339 instant"})
    revocation = ma.fields.Nested(RevocationSchema, required=True, allow_none=True,
                                  metadata={"description": "null while the key is not revoked"})


def _record(record: keys.KeyRecord) -> dict:
    revocation = record.revocation and _revocation(record.revocation)
    return {"id": record.id, "role": record.role, "partner_id": record.partner_id,
            "created_at": format_instant(record.created_at_us), "expires_at": _instant(record.expires_at_us),
            "revocation": revocation}


def _instant(at_us: int | None) -> str | None:
    return None if at_us is None else format_instant(at_us)


def _revocation(revocation: keys.Revocation) -> dict:
    return {"id": revocation.key_id, "revoked_at": _instant(revocation.revoked_at_us), "reason": revocation.reason}


@blp.route("/api-keys", methods=["GET"])
@allow("admin")
@blp.arguments(page_query(LISTING), location="query", as_kwargs=True)
@blp.response(200, page_schema(KeyRecordSchema))
def list_keys(limit: int, cursor: str | None):
    """API keys in id order, with their revocations (never a key itself)"""
    rows = keys.list_keys(current_session(), after_id=cursor, limit=limit + 1)
    return page(rows, limit, _record, encode=LISTING.cursor)


@blp.route("/api-keys/<string(maxlength=32):key_id>/revocation", methods=["POST"])
@allow("admin")
@refuses(404, "no API key has this id")
@refuses(409, "the key's revocation was removed past the database's rules (`revshare verify` names it); the key "
              "stays revoked")
@idempotent
@blp.arguments(RevocationRequestSchema)
@blp.response(201, RevocationSchema)
@blp.alt_response(200, schema=RevocationSchema, description="the key was revoked already: the first revocation")
def revoke_key(args, key_id: str):
    """Revoke an API key"""
    session = current_session()
    revocation, created = keys.revoke_key(session, key_id, args["reason"])
    forget(key_id, session)
    return _revocation(revocation), 201 if created else 200
