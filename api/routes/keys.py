"""POST /v1/api-keys (admin): create a key; the key is shown in this response only. A partner key
must name a partner that exists (422 naming `partner_id` otherwise)."""

from __future__ import annotations

import marshmallow as ma

from api.auth import allow
from api.body import Blueprint
from api.fields import PartnerId, Str
from api.idempotency import idempotent
from api.schemas import Schema
from api.session import current_session
from ledger import keys, partners
from ledger.errors import NotFound, invalid
from ledger.schema import API_ROLES

blp = Blueprint("api-keys", __name__, description="API keys (admin only)")


class KeyRequestSchema(Schema):
    role = Str(16, required=True, validate=ma.validate.OneOf(API_ROLES))
    partner_id = PartnerId(load_default=None, allow_none=True,
                           metadata={"description": "required for, and only for, the partner role"})


class KeySchema(Schema):
    id = ma.fields.String(required=True)
    key = ma.fields.String(required=True, allow_none=True,
                           metadata={"description": "the secret, shown once (null in an idempotent replay)"})
    role = ma.fields.String(required=True)
    partner_id = ma.fields.String(required=True, allow_none=True)


@blp.route("/api-keys", methods=["POST"])
@allow("admin")
@idempotent(redact=("key",))
@blp.arguments(KeyRequestSchema)
@blp.response(201, KeySchema)
def create_key(args):
    """Create an API key"""
    session = current_session()
    if args["role"] == "partner" and args["partner_id"] is not None:
        _require_partner(args["partner_id"])
    key_id, key = keys.create_key(session, args["role"], args["partner_id"])
    return {"id": key_id, "key": key, "role": args["role"], "partner_id": args["partner_id"]}


def _require_partner(partner_id: str) -> None:
    try:
        partners.get_partner(current_session(), partner_id)
    except NotFound:
        raise invalid("partner_id", f"partner {partner_id!r} does not exist") from None
