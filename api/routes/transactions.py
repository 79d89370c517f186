"""Transactions: GET /v1/transactions, GET /v1/transactions/{id} (finance, or a partner for its own),
POST /v1/transactions/{id}/reversal (finance).

A partner key sees only transactions whose `partner_id` is its own; another partner's transaction
is a 404, exactly like one that does not exist. Amounts are decimal strings in the line's currency.
"""

from __future__ import annotations

import marshmallow as ma

from api.auth import allow, partner_filter, partner_scope
from api.body import Blueprint
from api.fields import ExternalId, Instant, PartnerId, Str
from api.idempotency import idempotent, request_token
from api.openapi import TOTALS_PAST_RANGE, refuses
from api.pagination import ID_CONVERTER, Listing, page, page_query, page_schema, parse_id_key
from api.schemas import Schema
from api.session import current_session
from ledger import journal, reversals, transactions
from ledger.errors import totals_not_asked
from ledger.instants import format_instant
from ledger.money import format_minor
from ledger.transactions import Transaction

blp = Blueprint("transactions", __name__, description="The journal: transactions with their lines")

REASON_LENGTH_MAX = 500
LISTING = Listing("transactions", parse_id_key, first_key=0)


class LineSchema(Schema):
    account = ma.fields.String(required=True, metadata={"example": "liability:partner:northwind:pending"})
    currency = ma.fields.String(required=True)
    side = ma.fields.String(required=True, metadata={"enum": ["debit", "credit"]})
    amount = ma.fields.String(required=True, metadata={"description": "positive decimal string", "example": "100.00"})


class TransactionSchema(Schema):
    id = ma.fields.Integer(required=True)
    sequence = ma.fields.Integer(required=True, metadata={"description": "gap-free sequence number (= id)"})
    kind = ma.fields.String(required=True)
    effective_at = ma.fields.String(required=True, metadata={"format": "date-time"})
    original_effective_at = ma.fields.String(required=True, allow_none=True, metadata={
        "format": "date-time", "description": "the requested instant when it lay in a closed period"})
    recorded_at = ma.fields.String(required=True, metadata={"format": "date-time"})
    matures_at = ma.fields.String(required=True, allow_none=True, metadata={"format": "date-time"})
    partner_id = ma.fields.String(required=True, allow_none=True)
    customer_id = ma.fields.String(required=True, allow_none=True)
    invoice_id = ma.fields.String(required=True, allow_none=True)
    event_id = ma.fields.String(required=True, allow_none=True)
    plan_version_id = ma.fields.Integer(required=True, allow_none=True)
    accrual_id = ma.fields.Integer(required=True, allow_none=True)
    reverses_id = ma.fields.Integer(required=True, allow_none=True)
    reversed_by_id = ma.fields.Integer(required=True, allow_none=True)
    memo = ma.fields.String(required=True, allow_none=True)
    hash = ma.fields.String(required=True, metadata={"description": "SHA-256 chain hash (hex)"})
    prev_hash = ma.fields.String(required=True)
    lines = ma.fields.List(ma.fields.Nested(LineSchema), required=True)


class TransactionListQuery(page_query(LISTING)):
    partner_id = PartnerId(metadata={"description": "only this partner's transactions"})
    invoice_id = ExternalId(metadata={"description": "only this invoice's transactions: its accruals, CPA, "
                                                     "overrides, clawbacks, releases and their reversals"})
    event_id = ExternalId(metadata={"description": "only the transactions that name this revenue event: what it "
                                                   "posted, and the releases and reversals of that"})


class ReversalRequestSchema(Schema):
    reason = Str(REASON_LENGTH_MAX, required=True)
    effective_at = Instant(load_default=None, metadata={
        "description": "default: the original's instant (or the start of the first open period)"})


def render(transaction: Transaction) -> dict:
    t = transaction
    return {
        "id": t.id, "sequence": t.id, "kind": t.kind,
        "effective_at": format_instant(t.effective_at_us),
        "original_effective_at": format_instant(t.original_effective_at_us),
        "recorded_at": format_instant(t.recorded_at_us), "matures_at": format_instant(t.matures_at_us),
        "partner_id": t.partner_id, "customer_id": t.customer_id, "invoice_id": t.invoice_id,
        "event_id": t.event_id, "plan_version_id": t.plan_version_id, "accrual_id": t.accrual_id,
        "reverses_id": t.reverses_id, "reversed_by_id": t.reversed_by_id, "memo": t.memo,
        "hash": t.hash, "prev_hash": t.prev_hash,
        "lines": [{"account": line.account, "currency": line.currency,
                   "side": "debit" if line.side == journal.DEBIT else "credit",
                   "amount": format_minor(line.amount_minor, line.currency)} for line in t.lines],
    }


@blp.route("/transactions", methods=["GET"])
@allow("finance", "partner")
@refuses(404, "`partner_id` names no partner; for a partner key, any partner but its own")
@blp.arguments(TransactionListQuery, location="query", as_kwargs=True)
@blp.response(200, page_schema(TransactionSchema))
def list_transactions(limit: int, cursor: int, partner_id: str | None = None, invoice_id: str | None = None,
                      event_id: str | None = None):
    """Transactions in sequence order; filters combine (an invoice or event no transaction names lists nothing)"""
    rows = transactions.page(current_session(), after_id=cursor, limit=limit + 1, partner_id=partner_filter(partner_id),
                             invoice_id=invoice_id, event_id=event_id)
    return page(rows, limit, render, encode=LISTING.cursor)


@blp.route(f"/transactions/<{ID_CONVERTER}:transaction_id>", methods=["GET"])
@allow("finance", "partner")
@refuses(404, "no transaction has this id; for a partner key, one that is not its own (the same 404)")
@blp.response(200, TransactionSchema)
def get_transaction(transaction_id: int):
    """One transaction with its lines"""
    return render(transactions.get(current_session(), transaction_id, partner_id=partner_scope()))


@blp.route(f"/transactions/<{ID_CONVERTER}:transaction_id>/reversal", methods=["POST"])
@allow("finance")
@refuses(404, "no transaction has this id")
@refuses(409, "the transaction is reversed already, or is not one that is reversed: a reversal, a release, a "
              "payout's settlement or failure, the posting of a payout settled or failed, a clawback of an "
              "accrual a won dispute reinstated")
@refuses(409, "the instant it defaults to (its original's) is more than five minutes ahead of this server's "
              "clock: retry later")
@refuses(409, TOTALS_PAST_RANGE)
@refuses(422, "`effective_at` is before the original, or in the future")
@idempotent
@blp.arguments(ReversalRequestSchema)
@blp.response(201, TransactionSchema)
@totals_not_asked()
def reverse_transaction(args, transaction_id: int):
    """Reverse a transaction (at most once)

    The answer is the transaction's own reversal. Posted with it, in the same posting: for an
    accrual, CPA or override, the release of what matured before the reversal's instant and was
    not released yet, then the reversals of its reinstatements, clawbacks and release; for a
    clawback that took from pending, once the accrual's hold has ended, the reversal of its release
    (if one was posted) and a new release of what is then pending. Reversing a pending payout's
    posting fails the payout. A
    reversal, a release, and the postings of a settled or failed payout are not reversed (409).
    """
    session = current_session()
    posted = reversals.reverse(session, transaction_id, reason=args["reason"],
                               effective_at_us=args["effective_at"],
                               idempotency_key=f"reversal:{transaction_id}:{request_token()}")
    return render(transactions.get(session, posted.id))
