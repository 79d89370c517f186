"""Revenue events from billing: POST /v1/revenue-events (one) and POST /v1/revenue-events/batch; and,
beyond the contract, GET /v1/revenue-events/{id} (billing and finance): an event as received, with
the answer a replay of it gives, so that billing can reconcile without sending the event again.

An event's `id` is its idempotency key (the `Idempotency-Key` header plays no part here): the same
id with the same content is a replay, answered with the original status and body and
`Idempotent-Replayed: true` (in a batch: the original `http_status` and `"replayed": true`); the
same id with other content is a 409 naming the fields that differ. Commission amounts are Money
objects whose amount is signed: clawbacks are negative.

A batch holds at most 10,000 events (more is a 422 naming `events`). Each event is applied or
refused on its own: one that fails validation is refused in its slot (`http_status` 422, `error` a
problem naming its fields) without a trip to the domain; the others go through one `revenue.ingest`
call, which refuses an event (409, 422) without changing anything for it, deciding each as the
batch's events before it leave the books (`ledger.revenue`, "In input order"). Concurrent duplicates
apply once: the journal lock serializes ingestion and the event id is the table's primary key.
"""

from __future__ import annotations

import json
from typing import Any

import marshmallow as ma
from flask import current_app

from api.auth import allow
from api.body import Blueprint, plain_body
from api.errors import domain_problem_data, validation_problem_data
from api.fields import AMOUNT_TEXT_MAX, INSTANT_TEXT_MAX, Amount, ExternalId, Instant, Money, Str, money_json
from api.idempotency import REPLAYED_HEADER
from api.openapi import refuses, replays
from api.schemas import ProblemSchema, Schema
from api.session import commit_now, current_session, separate_transaction
from ledger import revenue
from ledger.customers import validate_external_id
from ledger.errors import InvalidInput
from ledger.instants import format_instant, parse_instant
from ledger.money import parse_amount_minor
from ledger.revenue import Outcome, RevenueEvent
from ledger.schema import EVENT_STATUSES, EVENT_TYPES

blp = Blueprint("revenue-events", __name__, description="Revenue events from billing (exactly once)")

COMMISSION_KINDS = ("accrual", "cpa", "override", "clawback")
REFUSED = "refused"


class RevenueEventSchema(Schema):
    id = ExternalId(required=True, metadata={"example": "evt-1", "description": "the idempotency key"})
    type = Str(32, required=True, validate=ma.validate.OneOf(EVENT_TYPES))
    customer_id = ExternalId(required=True, metadata={"example": "acme"})
    invoice_id = ExternalId(required=True, metadata={"example": "inv-1"})
    amount = Money(required=True, metadata={"description": "the amount paid, refunded or disputed; positive"})
    occurred_at = Instant(required=True)

    def load(self, data, *, many=None, partial=None, unknown=None):
        """An event every field of which is well formed is parsed by `plain_event`, with the fields'
        own parsers: marshmallow's machinery around them cost a single-event posting about 5% of its
        time (and a batch of 10,000 over a second). Anything else goes through the schema, whose
        messages name what is wrong; both give the same result for what they both take."""
        if many is None and partial is None:
            loaded = plain_event(data)
            if loaded is not None:
                return loaded
        return super().load(data, many=many, partial=partial, unknown=unknown)


_EVENT_FIELDS = frozenset(RevenueEventSchema._declared_fields)


def plain_event(data: Any) -> dict[str, Any] | None:
    """What RevenueEventSchema loads from `data` when it holds exactly its fields, each well formed
    (the same checks as its fields make); None for anything else."""
    if type(data) is not dict or data.keys() != _EVENT_FIELDS or data["type"] not in EVENT_TYPES:
        return None
    money, instant = data["amount"], data["occurred_at"]
    if (type(money) is not dict or money.keys() != _MONEY_KEYS or type(money["currency"]) is not str
            or len(money["currency"]) != 3 or type(money["amount"]) is not str
            or len(money["amount"]) > AMOUNT_TEXT_MAX or type(instant) is not str or len(instant) > INSTANT_TEXT_MAX):
        return None
    ids = [data["id"], data["customer_id"], data["invoice_id"]]
    if not all(type(value) is str and len(value) <= ExternalId.text_length_max for value in ids):
        return None
    try:
        for value, name in zip(ids, ("id", "customer_id", "invoice_id")):
            validate_external_id(value, field=name)
        amount_minor = parse_amount_minor(money["amount"], money["currency"], field="amount")
        occurred_at_us = parse_instant(instant, field="occurred_at")
    except InvalidInput:
        return None
    if amount_minor <= 0:
        return None
    return {"id": ids[0], "type": data["type"], "customer_id": ids[1], "invoice_id": ids[2],
            "amount": Amount(amount_minor, money["currency"]), "occurred_at": occurred_at_us}


_MONEY_KEYS = frozenset({"amount", "currency"})


class CommissionSchema(Schema):
    partner_id = ma.fields.String(required=True)
    kind = ma.fields.String(required=True, metadata={"enum": list(COMMISSION_KINDS)})
    amount = Money(sign="any", required=True, metadata={"description": "signed: a clawback is negative"})


class OutcomeSchema(Schema):
    id = ma.fields.String(required=True)
    status = ma.fields.String(required=True, metadata={"enum": list(EVENT_STATUSES)})
    commissions = ma.fields.List(ma.fields.Nested(CommissionSchema), required=True)
    transaction_ids = ma.fields.List(ma.fields.Integer(), required=True)


class ReceivedEventSchema(OutcomeSchema):
    type = ma.fields.String(required=True, metadata={"enum": list(EVENT_TYPES)})
    customer_id = ma.fields.String(required=True)
    invoice_id = ma.fields.String(required=True)
    amount = Money(required=True)
    occurred_at = ma.fields.String(required=True, metadata={"format": "date-time"})
    recorded_at = ma.fields.String(required=True, metadata={"format": "date-time", "description": "when it was "
                                                            "first received"})


class EventList(ma.fields.Field):
    """A JSON array of at most 10,000 items, kept raw: each item is checked on its own in the view,
    so that one bad event does not refuse the others."""

    def __init__(self, **kwargs) -> None:
        super().__init__(metadata={"type": "array", "maxItems": revenue.BATCH_EVENTS_MAX, "items": {
            "type": "object", "description": "a revenue event as POST /v1/revenue-events takes it (RevenueEvent)"}},
            **kwargs)

    def _deserialize(self, value, attr, data, **kwargs) -> list:
        if not isinstance(value, list):
            raise ma.ValidationError("must be an array of revenue events")
        if len(value) > revenue.BATCH_EVENTS_MAX:
            raise ma.ValidationError(f"at most {revenue.BATCH_EVENTS_MAX} events per batch, got {len(value)}")
        return value


class BatchRequestSchema(Schema):
    events = EventList(required=True)


class BatchResultSchema(Schema):
    id = ma.fields.String(required=True, allow_none=True, metadata={
        "description": "the event's id; null when the item had no valid id"})
    status = ma.fields.String(required=True, metadata={"enum": [*EVENT_STATUSES, REFUSED]})
    http_status = ma.fields.Integer(required=True, metadata={
        "description": "what POST /v1/revenue-events would have answered: 201, 409 or 422"})
    replayed = ma.fields.Boolean(metadata={"description": "present and true when the event was already applied"})
    error = ma.fields.Nested(ProblemSchema, metadata={"description": "present when the event was refused"})


class BatchSchema(Schema):
    results = ma.fields.List(ma.fields.Nested(BatchResultSchema), required=True, metadata={
        "description": "one per event, in the order sent"})


def to_event(args: dict[str, Any]) -> RevenueEvent:
    amount = args["amount"]
    return RevenueEvent(args["id"], args["type"], args["customer_id"], args["invoice_id"], amount.currency,
                        amount.amount_minor, args["occurred_at"])


def render_outcome(outcome: Outcome) -> dict:
    """The outcome in OutcomeSchema's JSON shape, built directly: dumping it through the schema (which
    documents the answer) cost a single-event posting more than its commission rules."""
    return {"id": outcome.event_id, "status": outcome.status, "transaction_ids": list(outcome.transaction_ids),
            "commissions": [{"partner_id": line.partner_id, "kind": line.kind,
                             "amount": money_json(line.amount_minor, line.currency)}
                            for line in outcome.commissions]}


@blp.route("/revenue-events", methods=["POST"])
@allow("billing")
@replays
@refuses(409, "the id was already used with other content (`errors` names the fields that differ), or the "
              "invoice is already paid")
@refuses(422, "a refund or chargeback of an invoice never paid, of another customer or currency, dated before "
              "its payment, or beyond what was paid; an instant in the future")
@plain_body(plain_event)
@blp.arguments(RevenueEventSchema)
@blp.response(201, OutcomeSchema)
def post_event(args):
    """Post one revenue event (its id is its idempotency key)"""
    [result] = revenue.ingest(current_session(), [to_event(args)])
    if isinstance(result, revenue.Refusal):
        raise result.error
    commit_now()
    response = current_app.json.response(render_outcome(result))
    response.status_code = result.http_status
    if result.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response


# A path converter: an event id may hold slashes.
@blp.route("/revenue-events/<path:event_id>", methods=["GET"])
@allow("billing", "finance")
@refuses(404, "no revenue event has this id")
@blp.response(200, ReceivedEventSchema)
def get_event(event_id: str):
    """A revenue event as it was received, with what its first delivery answered (a replay's body)

    An id holding `/` may be sent as it is or percent-encoded (`%2F`), as a client following this
    document sends it. The event whose id is `batch` is read here too: the batch route takes POST only.
    `occurred_at` and `amount` are normalised (UTC, the currency's digits), not echoed as sent.
    """
    event, outcome = revenue.received(current_session(), event_id)
    # Built in its JSON shape, as render_outcome's answer is (the schema documents it).
    return current_app.json.response({
        **render_outcome(outcome), "type": event.type, "customer_id": event.customer_id,
        "invoice_id": event.invoice_id,
        "amount": money_json(event.amount_minor, event.currency),
        "occurred_at": format_instant(event.occurred_at_us), "recorded_at": format_instant(event.recorded_at_us)})


@blp.route("/revenue-events/batch", methods=["POST"])
@allow("billing")
@refuses(422, "`events` is not an array, or holds more than 10,000 events (each event is refused in its own "
              "result, not here)")
@blp.arguments(BatchRequestSchema)
@blp.response(200, BatchSchema)
def post_batch(args):
    """Post up to 10,000 revenue events, each applied or refused on its own

    Each event is decided by the books as the batch's events before it leave them, so that the
    batch sent again gives the books of sending it once: a refund, chargeback or won dispute is
    decided without its invoice's payment, won disputes (for a refund or chargeback) or chargebacks
    (for a won dispute) that come later in the batch, even when the books hold them already, and its
    refusal says so; an id given twice takes the decision of its first place.
    """
    results: list[dict | None] = []
    valid: list[tuple[int, RevenueEvent]] = []
    schema = RevenueEventSchema()
    for slot, item in enumerate(args["events"]):
        try:
            valid.append((slot, to_event(schema.load(item))))
            results.append(None)
        except ma.ValidationError as error:
            results.append(_refused(_item_id(item), validation_problem_data(error.messages)))
    events = [event for _, event in valid]
    try:
        ingested = revenue.ingest(current_session(), events) if events else []
        commit_now()
    except revenue.REFUSED_APART:  # one event fails the batch: refuse it, not the whole batch
        current_session().rollback()
        ingested = revenue.ingest_apart(events, separate_transaction)
    for (slot, _), result in zip(valid, ingested):
        results[slot] = _batch_result(result)
    # Plain data already in its JSON shape: dumping 10,000 results through BatchSchema (which documents
    # the answer) would cost about as much as ingesting them.
    return current_app.response_class(json.dumps({"results": results}), mimetype="application/json")


def _batch_result(result: Outcome | revenue.Refusal) -> dict:
    if isinstance(result, revenue.Refusal):
        return _refused(result.event_id, domain_problem_data(result.error))
    answer = {"id": result.event_id, "status": result.status, "http_status": result.http_status}
    return {**answer, "replayed": True} if result.replayed else answer


def _refused(event_id: str | None, error: dict) -> dict:
    return {"id": event_id, "status": REFUSED, "http_status": error["status"], "error": error}


def _item_id(item: Any) -> str | None:
    """The id a refused item names, when it is a usable id."""
    event_id = item.get("id") if isinstance(item, dict) else None
    try:
        return ExternalId().deserialize(event_id) if isinstance(event_id, str) else None
    except ma.ValidationError:
        return None
