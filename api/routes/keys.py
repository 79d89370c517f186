"""POST /v1/api-keys (admin): create a key; the key is shown in this response only."""

from __future__ import annotations

import marshmallow as ma

from api.auth import allow
from api.body import Blueprint
from api.fields import PartnerId, Str
from api.idempotency import idempotent
from api.schemas import Schema
from api.session import current_session
from ledger import keys
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
    key_id, key = keys.create_key(current_session(), args["role"], args["partner_id"])
    return {"id": key_id, "key": key, "role": args["role"], "partner_id": args["partner_id"]}
