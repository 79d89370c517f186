"""GET /v1/health: the process is up and serving (no key, no database)."""

from __future__ import annotations

import marshmallow as ma

from api.auth import public
from api.body import Blueprint
from api.schemas import Schema

blp = Blueprint("health", __name__, description="Liveness")


class HealthSchema(Schema):
    status = ma.fields.String(required=True, metadata={"example": "ok"})


@blp.route("/health", methods=["GET"])
@public
@blp.response(200, HealthSchema)
def health():
    """Liveness probe"""
    return {"status": "ok"}
