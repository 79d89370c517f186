"""Base schema and shared response schemas.

Every request schema derives from `Schema`, which refuses unknown fields (`unknown = RAISE`), so a
misspelt field is a 422 naming it instead of being silently dropped.
"""

from __future__ import annotations

import marshmallow as ma


class Schema(ma.Schema):
    class Meta:
        unknown = ma.RAISE


class ProblemSchema(Schema):
    """An RFC 9457 problem, served as `application/problem+json`."""

    type = ma.fields.String(required=True, metadata={"description": "URN naming the kind of problem"})
    title = ma.fields.String(required=True)
    status = ma.fields.Integer(required=True)
    detail = ma.fields.String(required=True)
    errors = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.List(ma.fields.String()),
                            metadata={"description": "Messages by field (dotted paths for nested fields); "
                                                     "always present on a 422"})
