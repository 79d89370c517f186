"""Commission plans (finance): POST /v1/plans, POST /v1/plans/{id}/versions, GET /v1/plans/{id},
DELETE /v1/plans/{id}/versions/{version}.

The terms of a version (`rates`, `duration_months`, `cpa`, `hold_days`, `min_payout`,
`negative_balance`, `override`) are parsed by the domain's own strict parser (`terms.parse_terms`),
so a 422 names the exact place (`rates.1.from_month`, `cpa.0.amount`) together with any other bad
field of the request. A version never changes: a change of terms is a new version that starts at
its `effective_from` (an instant, or a date meaning the start of that day, UTC). A version that has
not started can be withdrawn until fifteen minutes before it starts (`plans.withdraw_version`), but
version 1; its number is not given again, and the plan lists it under `withdrawn_versions`.
"""

from __future__ import annotations

from typing import Any

import marshmallow as ma

from api.auth import allow
from api.body import Blueprint
from api.fields import Instant, PartnerId, Start, Str
from api.idempotency import idempotent
from api.openapi import refuses
from api.pagination import ID_CONVERTER
from api.schemas import Schema
from api.session import current_session
from ledger import plans
from ledger.errors import InvalidInput
from ledger.plans import Plan, PlanVersion
from ledger.terms import (DURATION_MONTHS_MAX, HOLD_DAYS_MAX, NEGATIVE_BALANCE_POLICIES, OVERRIDE_BASES,
                          RATE_STEPS_MAX, TERM_FIELDS, parse_terms, terms_to_data)

blp = Blueprint("plans", __name__, description="Commission plans and their immutable versions (finance)")

NAME_LENGTH_MAX = 200
_MONEY_LIST = {"type": "array", "items": {
    "type": "object", "required": ["amount", "currency"], "additionalProperties": False, "properties": {
        "amount": {"type": "string", "maxLength": 40, "example": "50.00"},
        "currency": {"type": "string", "minLength": 3, "maxLength": 3, "example": "USD"}}}}
# A rate (step or override): `money.parse_rate`.
_RATE = {"type": "string", "maxLength": 12, "pattern": r"^(0(\.[0-9]{1,10})?|1(\.0{1,10})?)$", "example": "0.20",
         "description": "a decimal string in [0, 1] with at most 10 decimal places"}
# Documentation of the terms; the parsing is `terms.parse_terms`, whose limits these state (a test
# holds each against the server's answers). A term is nullable exactly where the parser takes null:
# in a request, also the money lists (null is none); an answer gives them as lists.
_TERM_DOCS: dict[str, dict[str, Any]] = {
    "rates": {"type": "array", "minItems": 1, "maxItems": RATE_STEPS_MAX,
              "description": "step-down schedule; the first step starts at month 1, each later one at a later month",
              "items": {"type": "object", "required": ["from_month", "rate"], "additionalProperties": False,
                        "properties": {"from_month": {"type": "integer", "minimum": 1, "maximum": DURATION_MONTHS_MAX},
                                       "rate": _RATE}},
              "example": [{"from_month": 1, "rate": "0.40"}, {"from_month": 4, "rate": "0.20"}]},
    "duration_months": {"type": "integer", "nullable": True, "minimum": 1, "maximum": DURATION_MONTHS_MAX,
                        "description": "eligibility window in calendar months; null = lifetime"},
    "cpa": {**_MONEY_LIST,
            "description": "one-time bounty per currency, on a customer's first eligible paid invoice by date"},
    "hold_days": {"type": "integer", "minimum": 0, "maximum": HOLD_DAYS_MAX, "example": 30},
    "min_payout": {**_MONEY_LIST, "description": "minimum available balance per currency for a payout"},
    "negative_balance": {"type": "string", "enum": list(NEGATIVE_BALANCE_POLICIES)},
    "override": {"type": "object", "nullable": True, "description": "earned on the business of sub-partners",
                 "required": ["rate", "basis"], "additionalProperties": False,
                 "properties": {"rate": _RATE, "basis": {"type": "string", "enum": list(OVERRIDE_BASES)}}},
}
_REQUIRED_TERMS = ("rates", "duration_months", "hold_days", "min_payout", "negative_balance")  # as parse_terms
_NULL_IS_NONE = ("cpa", "min_payout")


def _term_fields(*, for_request: bool) -> dict[str, ma.fields.Field]:
    """Terms as raw request fields (checked by `parse_terms`) or as response fields."""
    if for_request:
        nullable = {name for name, doc in _TERM_DOCS.items() if doc.get("nullable")} | set(_NULL_IS_NONE)
        return {name: ma.fields.Raw(required=name in _REQUIRED_TERMS, allow_none=name in nullable,
                                    metadata=_TERM_DOCS[name]) for name in TERM_FIELDS}
    return {name: ma.fields.Raw(required=True, metadata=_TERM_DOCS[name]) for name in TERM_FIELDS}


class _TermsRequest(Schema):
    """Checks the terms with the domain's parser, merging its messages with the other fields'."""

    @ma.validates_schema(skip_on_field_errors=False)
    def _check_terms(self, data: dict, **kwargs) -> None:
        try:
            parse_terms(terms_data(data))
        except InvalidInput as error:
            # A required term left out is named by its field already: not a second time.
            fields = {name: messages for name, messages in error.fields.items()
                      if name in data or name not in _REQUIRED_TERMS}
            if fields:
                raise ma.ValidationError(fields) from None

    def asked(self, data: dict) -> dict[str, Any]:
        """What a loaded request asks for, its terms parsed: a retry whose body spells a rate "0.2" for
        "0.20" asks for the same plan (`api.idempotency`)."""
        return {**{name: value for name, value in data.items() if name not in TERM_FIELDS},
                "terms": parse_terms(terms_data(data))}


def terms_data(args: dict) -> dict[str, Any]:
    """The term fields a request carried (an absent optional term keeps the parser's default)."""
    return {name: args[name] for name in TERM_FIELDS if name in args}


PlanRequestSchema = _TermsRequest.from_dict({
    "id": PartnerId(required=True, metadata={"example": "msp-standard"}),
    "name": Str(NAME_LENGTH_MAX, required=True, metadata={"example": "MSP standard"}),
    "effective_from": Start(load_default=None, metadata={
        "description": "when version 1 starts; default: the beginning of time"}),
    **_term_fields(for_request=True),
}, name="PlanRequest")

VersionRequestSchema = _TermsRequest.from_dict({
    "effective_from": Start(required=True),
    **_term_fields(for_request=True),
}, name="PlanVersionRequest")

VersionSchema = Schema.from_dict({
    "plan_version_id": ma.fields.Integer(required=True, metadata={
        "description": "the id accruals pin (`plan_version_id` of a transaction)"}),
    "plan_id": ma.fields.String(required=True),
    "version": ma.fields.Integer(required=True),
    "effective_from": Instant(required=True),
    **_term_fields(for_request=False),
}, name="PlanVersion")


class WithdrawnVersionSchema(Schema):
    version = ma.fields.Integer(required=True)
    effective_from = Instant(required=True, metadata={"description": "when it was to start"})
    withdrawn_at = Instant(required=True)


class PlanSchema(Schema):
    id = ma.fields.String(required=True)
    name = ma.fields.String(required=True)
    version = ma.fields.Integer(required=True, metadata={"description": "the latest version's number"})
    versions = ma.fields.List(ma.fields.Nested(VersionSchema), required=True, metadata={
        "description": "every version, oldest first"})
    withdrawn_versions = ma.fields.List(ma.fields.Nested(WithdrawnVersionSchema), required=True, metadata={
        "description": "versions withdrawn before they started, in the order withdrawn"})


def render_version(version: PlanVersion) -> dict:
    return {"plan_version_id": version.id, "plan_id": version.plan_id, "version": version.version,
            "effective_from": version.effective_from_us, **terms_to_data(version.terms)}


def render(plan: Plan) -> dict:
    return {"id": plan.id, "name": plan.name, "version": plan.versions[-1].version,
            "versions": [render_version(version) for version in plan.versions],
            "withdrawn_versions": [{"version": withdrawn.version, "effective_from": withdrawn.effective_from_us,
                                    "withdrawn_at": withdrawn.withdrawn_at_us} for withdrawn in plan.withdrawn]}


@blp.route("/plans", methods=["POST"])
@allow("finance")
@refuses(409, "a plan with this id exists already")
@idempotent
@blp.arguments(PlanRequestSchema)
@blp.response(201, PlanSchema)
def create_plan(args):
    """Create a plan with its version 1"""
    return render(plans.create_plan(current_session(), args["id"], args["name"], terms_data(args),
                                    args["effective_from"]))


@blp.route("/plans/<string(maxlength=64):plan_id>/versions", methods=["POST"])
@allow("finance")
@refuses(404, "no plan has this id")
@refuses(409, "`effective_from` is not after the latest version's start, or the plan changed meanwhile (retry)")
@idempotent
@blp.arguments(VersionRequestSchema)
@blp.response(201, VersionSchema)
def add_version(args, plan_id: str):
    """Add a version that applies from its effective_from"""
    return render_version(plans.add_version(current_session(), plan_id, terms_data(args), args["effective_from"]))


@blp.route("/plans/<string(maxlength=64):plan_id>", methods=["GET"])
@allow("finance")
@refuses(404, "no plan has this id")
@blp.response(200, PlanSchema)
def get_plan(plan_id: str):
    """A plan with all its versions"""
    return render(plans.get_plan(current_session(), plan_id))


@blp.route(f"/plans/<string(maxlength=64):plan_id>/versions/<{ID_CONVERTER}:version>", methods=["DELETE"])
@allow("finance")
@refuses(404, "no plan has this id, or the plan has no version of this number")
@refuses(409, "the version is the plan's first, or it starts within fifteen minutes or has started")
@blp.response(200, PlanSchema)
def withdraw_version(plan_id: str, version: int):
    """Withdraw a version that has not started (asked again: the plan, unchanged)"""
    return render(plans.withdraw_version(current_session(), plan_id, version))
