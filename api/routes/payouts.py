"""Paying partners (finance; partners read their own payouts): POST /v1/holds/release,
POST /v1/payout-runs, GET /v1/payouts, POST /v1/payouts/{id}/settle, POST /v1/payouts/{id}/fail,
and manual adjustments, POST /v1/adjustments.

Every instant defaults to the moment of the request. A payout run is one per instant: a run at an
instant that already has one answers that run (200 instead of 201) and posts nothing. A payout is
settled or failed once; resolving it again is a 409. An adjustment posts one transaction, credited
to the partner's account for a positive amount and debited for a negative one.
"""

from __future__ import annotations

import marshmallow as ma

from api.auth import allow, partner_filter, partner_scope
from api.body import Blueprint
from api.fields import Amount, Instant, Money, PartnerId, Str
from api.idempotency import idempotent, reclaim_after, request_token
from api.openapi import TOTALS_PAST_RANGE, refuses
from api.pagination import ID_CONVERTER, Listing, page, page_query, page_schema, parse_id_key
from api.routes.transactions import TransactionSchema
from api.routes.transactions import render as render_transaction
from api.schemas import Schema
from api.session import current_session, separate_transaction, work_deadline
from ledger import holds, payouts, transactions
from ledger.errors import totals_not_asked
from ledger.payouts import Payout

blp = Blueprint("payouts", __name__, description="Hold releases, payout runs, payouts and adjustments (finance)")

REASON_LENGTH_MAX = payouts.REASON_LENGTH_MAX
LISTING = Listing("payouts", parse_id_key, first_key=0)
PAYOUT_STATUSES = ("pending", "settled", "failed")
RESOLVED = ("the payout is settled or failed already; or the instant it defaults to (not before the payout was "
            "made) is more than five minutes ahead of this server's clock: retry later")
RESOLVED_AT = "`at` is before the payout was made, or in the future"


class AtRequestSchema(Schema):
    at = Instant(load_default=None, metadata={"description": "default: now"})


class ReleasedSchema(Schema):
    released = ma.fields.Integer(required=True, metadata={"description": "how many releases were posted"})
    at = Instant(required=True)


class PayoutSchema(Schema):
    id = ma.fields.Integer(required=True)
    run_id = ma.fields.String(required=True)
    partner_id = ma.fields.String(required=True)
    amount = Money(required=True)
    status = ma.fields.String(required=True, metadata={"enum": list(PAYOUT_STATUSES)})
    transaction_id = ma.fields.Integer(required=True, metadata={"description": "the payout posting"})
    resolution_transaction_id = ma.fields.Integer(required=True, allow_none=True, metadata={
        "description": "the settlement or failure posting"})
    reason = ma.fields.String(required=True, allow_none=True)


class PayoutRunSchema(Schema):
    id = ma.fields.String(required=True)
    at = Instant(required=True)
    payouts = ma.fields.List(ma.fields.Nested(PayoutSchema), required=True)


class PayoutListQuery(page_query(LISTING)):
    partner_id = PartnerId(metadata={"description": "only this partner's payouts"})
    run_id = Str(64, metadata={"description": "only this run's payouts"})


class ResolutionRequestSchema(Schema):
    reason = Str(REASON_LENGTH_MAX, load_default=None, allow_none=True)
    at = Instant(load_default=None, metadata={"description": "when it settled or failed; default now"})


class AdjustmentRequestSchema(Schema):
    partner_id = PartnerId(required=True)
    account = Str(16, required=True, validate=ma.validate.OneOf(["pending", "available"]))
    amount = Money(sign="any", required=True, metadata={
        "description": "signed, not zero: positive credits the partner (the vendor owes more)"})
    reason = Str(REASON_LENGTH_MAX, required=True)
    effective_at = Instant(load_default=None, metadata={"description": "default: now; not in the future"})


def render(payout: Payout) -> dict:
    return {"id": payout.id, "run_id": payout.run_id, "partner_id": payout.partner_id,
            "amount": Amount(payout.amount_minor, payout.currency),
            "status": payout.status, "transaction_id": payout.transaction_id,
            "resolution_transaction_id": payout.resolution_transaction_id, "reason": payout.reason}


@blp.route("/holds/release", methods=["POST"])
@allow("finance")
@refuses(409, TOTALS_PAST_RANGE)
@refuses(422, "`at` is in the future")
@idempotent
@blp.arguments(AtRequestSchema)
@blp.response(200, ReleasedSchema)
@totals_not_asked()
def release_holds(args):
    """Release every hold matured by `at`"""
    # A hundred to a transaction, as the payout runs and closes release: in one transaction, a backlog
    # outlived gunicorn's worker timeout (a 500, all of it rolled back, so that its retries failed
    # alike). Past the request's budget, a 503 to retry, the releases made standing; the answer counts
    # the releases this request posted. Without `at`, now as the first release transaction reads it
    # under the journal lock: read in a transaction before it, a posting committed between the two
    # was not waited for, and what matured before it stayed held.
    deadline = work_deadline()
    released, at_us = reclaim_after(lambda: holds.release_in_transactions_at(separate_transaction, args["at"],
                                                                             deadline=deadline))
    return {"released": released, "at": at_us}


@blp.route("/payout-runs", methods=["POST"])
@allow("finance")
@refuses(409, "a run was made at a later instant (runs are made in time order), or `at` lies in a closed "
              f"period; or {TOTALS_PAST_RANGE}")
@refuses(422, "`at` is in the future")
@idempotent
@blp.arguments(AtRequestSchema)
@blp.response(201, PayoutRunSchema)
@blp.alt_response(200, schema=PayoutRunSchema, success=True, description="the run already made at this instant")
@totals_not_asked()
def run_payouts(args):
    """Release matured holds, then pay every balance that reaches its plan's minimum"""
    # The releases first, a hundred to a transaction, as the CLI and the jobs make them: in the run's
    # one transaction, a run after days without the release job held the journal's lock through
    # every release, and every posting waited, or failed past its lock wait. A backlog past the
    # request's budget is a 503 to retry, the releases made standing (`api.session.work_deadline`).
    deadline = work_deadline()
    reclaim_after(lambda: payouts.release_before_run(separate_transaction, args["at"], deadline=deadline))
    run = payouts.run_payouts(current_session(), args["at"])
    body = {"id": run.id, "at": run.at_us, "payouts": [render(payout) for payout in run.payouts]}
    return body, 200 if run.replayed else 201


@blp.route("/payouts", methods=["GET"])
@allow("finance", "partner")
@refuses(404, "`partner_id` names no partner (for a partner key, any partner but its own), or `run_id` no run "
              "(for a partner key, none that paid it)")
@blp.arguments(PayoutListQuery, location="query", as_kwargs=True)
@blp.response(200, page_schema(PayoutSchema))
def list_payouts(limit: int, cursor: int, partner_id: str | None = None, run_id: str | None = None):
    """Payouts in id order (a partner key: its own)"""
    rows = payouts.list_payouts(current_session(), after_id=cursor, limit=limit + 1, run_id=run_id,
                                partner_id=partner_filter(partner_id), runs_seen_by_partner=partner_scope() is not None)
    return page(rows, limit, render, encode=LISTING.cursor)


@blp.route(f"/payouts/<{ID_CONVERTER}:payout_id>/settle", methods=["POST"])
@allow("finance")
@refuses(404, "no payout has this id")
@refuses(409, RESOLVED)
@refuses(409, TOTALS_PAST_RANGE)
@refuses(422, RESOLVED_AT)
@idempotent
@blp.arguments(ResolutionRequestSchema)
@blp.response(200, PayoutSchema)
@totals_not_asked()
def settle_payout(args, payout_id: int):
    """Confirm a pending payout as paid"""
    return render(payouts.settle(current_session(), payout_id, reason=args["reason"], at_us=args["at"]))


@blp.route(f"/payouts/<{ID_CONVERTER}:payout_id>/fail", methods=["POST"])
@allow("finance")
@refuses(404, "no payout has this id")
@refuses(409, RESOLVED)
@refuses(409, TOTALS_PAST_RANGE)
@refuses(422, RESOLVED_AT)
@idempotent
@blp.arguments(ResolutionRequestSchema)
@blp.response(200, PayoutSchema)
@totals_not_asked()
def fail_payout(args, payout_id: int):
    """Mark a pending payout as failed, returning its amount to the partner's available balance"""
    return render(payouts.fail(current_session(), payout_id, reason=args["reason"], at_us=args["at"]))


@blp.route("/adjustments", methods=["POST"])
@allow("finance")
@refuses(422, "the partner does not exist, the amount is zero, or `effective_at` is in the future")
@idempotent
@blp.arguments(AdjustmentRequestSchema)
@blp.response(201, TransactionSchema)
def adjust(args):
    """Post a manual adjustment to a partner's pending or available balance"""
    session, amount = current_session(), args["amount"]
    posted = payouts.adjust(session, args["partner_id"], args["account"], amount.amount_minor, amount.currency,
                            args["reason"], effective_at_us=args["effective_at"],
                            idempotency_key=f"adjustment:{request_token()}")
    return render_transaction(transactions.get(session, posted.id))
