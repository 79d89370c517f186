"""Partners: enrolment and dated changes (finance), and the partner's own books (finance, or a
partner key for itself): POST /v1/partners, GET /v1/partners, GET /v1/partners/{id},
PATCH /v1/partners/{id}, DELETE /v1/partners/{id}/scheduled/{change},
GET /v1/partners/{id}/balance, GET /v1/partners/{id}/statement.

A partner key sees its own record, balance and statement; any other partner id, existing or not,
is the same 404. A PATCH is exactly one of two changes: a status (`{"status", "effective_at"?}`)
or a plan (`{"plan_id", "effective_from"}`); both or neither is a 422. A partner's changes that have
not started are listed in its `scheduled`, each with an id (`status-12`, `plan-7`) that finance
withdraws it by until fifteen minutes before it starts (`partners.withdraw_change`); those withdrawn
are listed in its `withdrawn_changes`.

Balances and statements read what the books hold: a matured accrual that nothing has released yet
is still pending (see README, "Decisions"). A statement is JSON, or CSV with `?format=csv` or
`Accept: text/csv`.
"""

from __future__ import annotations

import marshmallow as ma
from flask import current_app, request
from werkzeug.datastructures import MIMEAccept

from api.auth import allow, partner_scope, require_visible
from api.body import Blueprint
from api.fields import AsOf, Instant, PartnerId, Period, Start, Str
from api.idempotency import idempotent
from api.openapi import refuses
from api.pagination import Listing, page_query, page, page_schema
from api.schemas import Schema
from api.session import current_session
from ledger import partners, statements
from ledger.accounts import validate_partner_id
from ledger.balances import partner_balances
from ledger.instants import now_us
from ledger.money import format_minor
from ledger.partners import Partner, Scheduled, Withdrawn
from ledger.schema import PARTNER_STATUSES, PARTNER_TYPES

blp = Blueprint("partners", __name__, description="Partners, their balances and statements")

NAME_LENGTH_MAX = 200
STATUS_FIELDS = ("status", "effective_at")
PLAN_FIELDS = ("plan_id", "effective_from")
CSV_MIMETYPE = "text/csv"
LISTING = Listing("partners", validate_partner_id)


class PartnerRequestSchema(Schema):
    id = PartnerId(required=True)
    name = Str(NAME_LENGTH_MAX, required=True, metadata={"example": "Northwind IT Services"})
    type = Str(16, required=True, validate=ma.validate.OneOf(PARTNER_TYPES))
    plan_id = PartnerId(required=True, metadata={"example": "msp-standard"})
    parent_id = PartnerId(load_default=None, allow_none=True, metadata={
        "description": "the partner this one sells under (fixed at enrolment)"})


class PartnerChangeSchema(Schema):
    """Exactly one of: a status change, or a plan change."""

    status = Str(16, validate=ma.validate.OneOf(PARTNER_STATUSES))
    effective_at = Instant(metadata={"description": "with `status`: when it starts; default now"})
    plan_id = PartnerId()
    effective_from = Start(metadata={"description": "with `plan_id`: when the new plan starts"})

    @ma.validates_schema
    def _one_change(self, data: dict, **kwargs) -> None:
        status = [name for name in STATUS_FIELDS if name in data]
        plan = [name for name in PLAN_FIELDS if name in data]
        if status and plan:
            raise ma.ValidationError({name: ["cannot be combined with a status change"] for name in plan})
        if not status and not plan:
            raise ma.ValidationError("send either {\"status\"} or {\"plan_id\", \"effective_from\"}")
        required = ("status",) if status else PLAN_FIELDS
        missing = [name for name in required if name not in data]
        if missing:
            raise ma.ValidationError({name: ["missing required field"] for name in missing})


class ScheduledChangeSchema(Schema):
    id = ma.fields.String(required=True, metadata={"example": "status-12", "description": "withdraws it: DELETE "
                                                   "/v1/partners/{id}/scheduled/{this id}"})
    status = ma.fields.String(metadata={"enum": list(PARTNER_STATUSES), "description": "a status change"})
    effective_at = Instant(metadata={"description": "with `status`: when it starts"})
    plan_id = ma.fields.String(metadata={"description": "a plan change"})
    effective_from = Instant(metadata={"description": "with `plan_id`: when the plan starts"})


class WithdrawnChangeSchema(ScheduledChangeSchema):
    id = ma.fields.String(required=True, metadata={"example": "status-12"})
    withdrawn_at = Instant(required=True)


class PartnerSchema(Schema):
    id = ma.fields.String(required=True)
    name = ma.fields.String(required=True)
    type = ma.fields.String(required=True, metadata={"enum": list(PARTNER_TYPES)})
    parent_id = ma.fields.String(required=True, allow_none=True)
    depth = ma.fields.Integer(required=True, metadata={"description": "1 for a top-level partner, at most 5"})
    status = ma.fields.String(required=True, metadata={"enum": list(PARTNER_STATUSES), "description": "now"})
    plan_id = ma.fields.String(required=True, metadata={"description": "the plan in effect now"})
    created_at = Instant(required=True)
    scheduled = ma.fields.List(ma.fields.Nested(ScheduledChangeSchema), required=True, metadata={
        "description": "status and plan changes that have not started, by start"})
    withdrawn_changes = ma.fields.List(ma.fields.Nested(WithdrawnChangeSchema), required=True, metadata={
        "description": "status and plan changes withdrawn before they started, in the order withdrawn"})


class BalanceQuery(Schema):
    as_of = AsOf(load_default=None, metadata={"description": "default: now"})


class CurrencyBalanceSchema(Schema):
    currency = ma.fields.String(required=True)
    pending = ma.fields.String(required=True, metadata={"description": "decimal string, still in its hold"})
    available = ma.fields.String(required=True, metadata={
        "description": "decimal string, payable; negative when the partner owes"})
    total = ma.fields.String(required=True, metadata={"description": "pending + available"})


class BalanceSchema(Schema):
    partner_id = ma.fields.String(required=True)
    as_of = Instant(required=True, metadata={"description": "postings effective before this count"})
    balances = ma.fields.List(ma.fields.Nested(CurrencyBalanceSchema), required=True)


class StatementQuery(Schema):
    period = Period(required=True)
    output = Str(4, load_default=None, data_key="format", validate=ma.validate.OneOf(["json", "csv"]), metadata={
        "description": "default: json, or csv when `Accept` prefers text/csv"})


class _PendingAvailable(Schema):
    pending = ma.fields.String(required=True)
    available = ma.fields.String(required=True)


class StatementLineSchema(Schema):
    transaction_id = ma.fields.Integer(required=True)
    effective_at = ma.fields.String(required=True, metadata={"format": "date-time"})
    original_effective_at = ma.fields.String(required=True, allow_none=True, metadata={"format": "date-time"})
    kind = ma.fields.String(required=True, metadata={"enum": list(statements.LINE_KINDS)})
    customer_id = ma.fields.String(required=True, allow_none=True)
    invoice_id = ma.fields.String(required=True, allow_none=True)
    event_id = ma.fields.String(required=True, allow_none=True)
    pending = ma.fields.String(required=True, metadata={"description": "signed effect on pending"})
    available = ma.fields.String(required=True, metadata={"description": "signed effect on available"})


class CurrencyStatementSchema(Schema):
    currency = ma.fields.String(required=True)
    opening = ma.fields.Nested(_PendingAvailable, required=True)
    lines = ma.fields.List(ma.fields.Nested(StatementLineSchema), required=True)
    totals = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String(), required=True, metadata={
        "description": "kind -> signed effect on pending + available"})
    closing = ma.fields.Nested(_PendingAvailable, required=True)


class StatementSchema(Schema):
    partner_id = ma.fields.String(required=True)
    period = ma.fields.String(required=True)
    period_status = ma.fields.String(required=True, metadata={"enum": ["open", "closed"]})
    close_hash = ma.fields.String(required=True, allow_none=True)
    currencies = ma.fields.List(ma.fields.Nested(CurrencyStatementSchema), required=True)


def _change(change: Scheduled | Withdrawn) -> dict:
    if change.status:
        return {"id": change.id, "status": change.status, "effective_at": change.starts_us}
    return {"id": change.id, "plan_id": change.plan_id, "effective_from": change.starts_us}


def render(partner: Partner) -> dict:
    return {"id": partner.id, "name": partner.name, "type": partner.type, "parent_id": partner.parent_id,
            "depth": partner.depth, "status": partner.status, "plan_id": partner.plan_id,
            "created_at": partner.created_at_us, "scheduled": [_change(change) for change in partner.scheduled],
            "withdrawn_changes": [_change(change) | {"withdrawn_at": change.withdrawn_at_us}
                                  for change in partner.withdrawn]}


def visible_partner(partner_id: str) -> Partner:
    """The partner, or the same 404 for one that does not exist and one a partner key may not see."""
    require_visible(partner_id, f"partner {partner_id!r}")
    return partners.get_partner(current_session(), partner_id)


@blp.route("/partners", methods=["POST"])
@allow("finance")
@refuses(409, "a partner with this id exists already")
@refuses(422, "the plan or the parent does not exist, or the hierarchy would be more than 5 levels deep")
@idempotent
@blp.arguments(PartnerRequestSchema)
@blp.response(201, PartnerSchema)
def create_partner(args):
    """Enrol a partner on a plan"""
    return render(partners.create_partner(current_session(), args["id"], args["name"], args["type"], args["plan_id"],
                                          args["parent_id"]))


@blp.route("/partners", methods=["GET"])
@allow("finance", "partner")
@blp.arguments(page_query(LISTING), location="query", as_kwargs=True)
@blp.response(200, page_schema(PartnerSchema))
def list_partners(limit: int, cursor: str | None):
    """Partners in id order (a partner key: only itself)"""
    rows = partners.list_partners(current_session(), after_id=cursor, limit=limit + 1, partner_id=partner_scope())
    return page(rows, limit, render, encode=LISTING.cursor)


@blp.route("/partners/<string(maxlength=64):partner_id>", methods=["GET"])
@allow("finance", "partner")
@refuses(404, "no partner has this id; for a partner key, any partner but its own (the same 404)")
@blp.response(200, PartnerSchema)
def get_partner(partner_id: str):
    """One partner with its current status and plan"""
    return render(visible_partner(partner_id))


@blp.route("/partners/<string(maxlength=64):partner_id>", methods=["PATCH"])
@allow("finance")
@refuses(404, "no partner has this id")
@refuses(409, "the partner is terminated (termination is final), or the change starts before its latest status "
              "or plan change")
@refuses(422, "the plan does not exist, or its first version starts after `effective_from`")
@idempotent
@blp.arguments(PartnerChangeSchema)
@blp.response(200, PartnerSchema)
def change_partner(args, partner_id: str):
    """Change a partner's status, or move it to another plan from a date"""
    session = current_session()
    if "status" in args:
        return render(partners.set_status(session, partner_id, args["status"], args.get("effective_at")))
    return render(partners.change_plan(session, partner_id, args["plan_id"], args["effective_from"]))


@blp.route("/partners/<string(maxlength=64):partner_id>/scheduled/<string(maxlength=32):change_id>",
           methods=["DELETE"])
@allow("finance")
@refuses(404, "no partner has this id, or the partner has no change of this id")
@refuses(409, "the change starts within fifteen minutes, or has started")
@blp.response(200, PartnerSchema)
def withdraw_change(partner_id: str, change_id: str):
    """Withdraw a status or plan change that has not started (asked again: the partner, unchanged)"""
    return render(partners.withdraw_change(current_session(), partner_id, change_id))


@blp.route("/partners/<string(maxlength=64):partner_id>/balance", methods=["GET"])
@allow("finance", "partner")
@refuses(404, "no partner has this id; for a partner key, any partner but its own (the same 404)")
@blp.arguments(BalanceQuery, location="query", as_kwargs=True)
@blp.response(200, BalanceSchema)
def get_balance(partner_id: str, as_of: int | None):
    """Pending, available and total per currency"""
    visible_partner(partner_id)
    as_of_us = now_us() if as_of is None else as_of
    found = partner_balances(current_session(), partner_id, before_us=as_of_us)
    return {"partner_id": partner_id, "as_of": as_of_us, "balances": [
        {"currency": currency, "pending": format_minor(pending, currency),
         "available": format_minor(available, currency), "total": format_minor(pending + available, currency)}
        for currency, (pending, available) in sorted(found.items())]}


@blp.route("/partners/<string(maxlength=64):partner_id>/statement", methods=["GET"])
@allow("finance", "partner")
@refuses(404, "no partner has this id; for a partner key, any partner but its own (the same 404)")
@blp.arguments(StatementQuery, location="query", as_kwargs=True)
@blp.response(200, StatementSchema)
@blp.alt_response(200, schema={"type": "string"}, content_type=CSV_MIMETYPE, success=True,
                  description="`?format=csv` or `Accept: text/csv`: one row per line, framed by opening and "
                              "closing rows per currency")
def get_statement(partner_id: str, period: str, output: str | None):
    """A period's statement: opening, every line traced to its source, totals, closing"""
    visible_partner(partner_id)
    if (output or _negotiated()) == "csv":
        result = statements.statement(current_session(), partner_id, period)
        return current_app.response_class(statements.to_csv(result), mimetype=CSV_MIMETYPE, headers={
            "Content-Disposition": f'attachment; filename="statement-{partner_id}-{period}.csv"', "Vary": "Accept"})
    # `statement_json` writes the statement in StatementSchema's shape already (a test holds the two
    # equal); dumping it through the schema again would copy it field by field, which on a month of
    # 13,000 lines cost more than reading the statement.
    response = current_app.response_class(statements.statement_json(current_session(), partner_id, period),
                                          mimetype="application/json")
    response.vary.add("Accept")  # the same URL answers CSV to `Accept: text/csv`: caches must tell the two apart
    return response


def _negotiated() -> str:
    """JSON or CSV, as `Accept` prefers. A media range is compared by its type alone: werkzeug
    matches `text/csv; charset=utf-8` (or RFC 7111's `header=present`) only to an offer with the
    same parameters, so such a request for CSV was answered JSON."""
    ranges = MIMEAccept([(value.split(";", 1)[0].strip(), quality) for value, quality in request.accept_mimetypes])
    best = ranges.best_match(["application/json", CSV_MIMETYPE], default="application/json")
    return "csv" if best == CSV_MIMETYPE else "json"
