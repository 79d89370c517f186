"""Attribution of customers to partners (billing, finance): POST /v1/attributions,
GET /v1/customers/{id}, and DELETE /v1/customers/{id}/attributions/{attribution id} (finance).

An attribution starts at the beginning of its `effective_from` date (UTC) and lasts until the
customer's next attribution starts. Posting the customer's current attribution again (its partner,
day and source) is a 200 that changes nothing (201 when it creates one); with another source, a 409.
Moving a customer to another partner needs `"replace": true`, which only finance may send: billing
gets a 403 for it, and a 409 without it. An attribution that has not started can be withdrawn by
finance until fifteen minutes before it starts (`customers.withdraw_attribution`); the customer's
record lists it under `withdrawn_attributions`.
"""

from __future__ import annotations

import re

import marshmallow as ma
from werkzeug.exceptions import Forbidden

from api.auth import allow, current_principal
from api.body import Blueprint
from api.fields import Bool, Date, ExternalId, Instant, PartnerId, Str
from api.idempotency import idempotent
from api.openapi import refuses
from api.pagination import ID_MAX
from api.schemas import Schema
from api.session import current_session
from ledger import customers
from ledger.customers import Attribution
from ledger.errors import NotFound
from ledger.instants import from_us
from ledger.schema import ATTRIBUTION_SOURCES

blp = Blueprint("customers", __name__, description="Customers and their attribution to partners")

REPLACING_ROLES = frozenset({"finance", "admin"})
# An attribution's id as the other ids in a path (`IdConverter`): ASCII digits, leading zeros too, 1 to ID_MAX.
ATTRIBUTION_ID = re.compile(r"0*([1-9][0-9]{0,18})")


class AttributionRequestSchema(Schema):
    customer_id = ExternalId(required=True, metadata={"example": "acme"})
    partner_id = PartnerId(required=True)
    effective_from = Date(required=True, metadata={"description": "the attribution starts at 00:00 UTC that day"})
    source = Str(32, required=True, validate=ma.validate.OneOf(ATTRIBUTION_SOURCES))
    replace = Bool(load_default=False, metadata={
        "description": "end the customer's current attribution to another partner (finance only)"})


class AttributionSchema(Schema):
    id = ma.fields.Integer(required=True, metadata={
        "description": "withdraws it before it starts: DELETE /v1/customers/{customer_id}/attributions/{this id}"})
    customer_id = ma.fields.String(required=True)
    partner_id = ma.fields.String(required=True)
    effective_from = ma.fields.String(required=True, metadata={"format": "date"})
    effective_to = ma.fields.String(required=True, allow_none=True, metadata={
        "format": "date", "description": "the day the next attribution starts (exclusive); null while current"})
    source = ma.fields.String(required=True, metadata={"enum": list(ATTRIBUTION_SOURCES)})
    recorded_at = Instant(required=True)


class WithdrawnAttributionSchema(Schema):
    id = ma.fields.Integer(required=True)
    partner_id = ma.fields.String(required=True)
    effective_from = ma.fields.String(required=True, metadata={"format": "date", "description": "when it was to start"})
    source = ma.fields.String(required=True, metadata={"enum": list(ATTRIBUTION_SOURCES)})
    recorded_at = Instant(required=True)
    withdrawn_at = Instant(required=True)


class CustomerSchema(Schema):
    id = ma.fields.String(required=True)
    created_at = Instant(required=True)
    attributions = ma.fields.List(ma.fields.Nested(AttributionSchema), required=True, metadata={
        "description": "the attribution history, oldest first (empty once every attribution was withdrawn)"})
    withdrawn_attributions = ma.fields.List(ma.fields.Nested(WithdrawnAttributionSchema), required=True, metadata={
        "description": "attributions withdrawn before they started, in the order withdrawn"})


def _day(instant_us: int | None) -> str | None:
    return None if instant_us is None else from_us(instant_us).date().isoformat()


def render_attribution(attribution: Attribution) -> dict:
    a = attribution
    return {"id": a.id, "customer_id": a.customer_id, "partner_id": a.partner_id,
            "effective_from": _day(a.effective_from_us), "effective_to": _day(a.effective_to_us), "source": a.source,
            "recorded_at": a.recorded_at_us}


@blp.route("/attributions", methods=["POST"])
@allow("billing", "finance")
@refuses(403, "a billing key sends `\"replace\": true`: only finance may replace an attribution")
@refuses(409, "the customer is attributed already (to another partner, or to this one from another day) and "
              "`replace` is not true; the current attribution sent again with another `source`; a replacement "
              "that does not start after the current attribution; a partner terminated by `effective_from`")
@refuses(422, "the partner does not exist")
@idempotent
@blp.arguments(AttributionRequestSchema)
@blp.response(201, AttributionSchema)
@blp.alt_response(200, schema=AttributionSchema, success=True,
                  description="the customer's current attribution, repeated: nothing changed")
def attribute(args):
    """Attribute a customer to a partner from a date"""
    if args["replace"] and current_principal().role not in REPLACING_ROLES:
        raise Forbidden("Only finance may replace an attribution.")
    attribution, created = customers.attribute(current_session(), args["customer_id"], args["partner_id"],
                                               args["effective_from"], args["source"], replace=args["replace"])
    return render_attribution(attribution), 201 if created else 200


@blp.route("/customers/<path:customer_id>", methods=["GET"])
@allow("billing", "finance")
@refuses(404, "no customer has this id")
@blp.response(200, CustomerSchema)
def get_customer(customer_id: str):
    """A customer with its attribution history"""
    return render_customer(customers.get_customer(current_session(), customer_id))


# Any last segment, not an `int` converter: a customer id may hold slashes, so a path this rule did
# not take (`.../attributions/-1`) would be taken for a customer's by the GET rule, and a 405.
@blp.route("/customers/<path:customer_id>/attributions/<string:attribution_id>", methods=["DELETE"])
@allow("finance")
@refuses(404, "no customer has this id, or the customer has no attribution of this id")
@refuses(409, "the attribution starts within fifteen minutes or has started")
@blp.response(200, CustomerSchema)
def withdraw_attribution(customer_id: str, attribution_id: str):
    """Withdraw an attribution that has not started (asked again: the customer, unchanged)"""
    digits = ATTRIBUTION_ID.fullmatch(attribution_id)
    if digits is None or int(digits[1]) > ID_MAX:
        raise NotFound(f"customer {customers.named(customer_id)} has no attribution {customers.named(attribution_id)}")
    return render_customer(customers.withdraw_attribution(current_session(), customer_id, int(digits[1])))


def render_customer(customer) -> dict:
    return {"id": customer.id, "created_at": customer.created_at_us,
            "attributions": [render_attribution(a) for a in customer.attributions],
            "withdrawn_attributions": [
                {"id": w.id, "partner_id": w.partner_id, "effective_from": _day(w.effective_from_us),
                 "source": w.source, "recorded_at": w.recorded_at_us, "withdrawn_at": w.withdrawn_at_us}
                for w in customer.withdrawn]}
