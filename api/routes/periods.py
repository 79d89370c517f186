"""Periods (finance): GET /v1/periods, GET /v1/periods/{YYYY-MM}, POST /v1/periods/{YYYY-MM}/close.

A period is a calendar month in UTC. The list holds the books' periods, oldest first: the chain of
closes, each with its hash, the previous close's hash, its transaction count and the journal head
it covers, then every open period through the one that contains now, with its close fields null
(ledger.periods.books_periods says where the books start; an empty book lists nothing). One
period, closed or open, answers its status; a closed one also carries its snapshot: every account's
cumulative debits and credits at the period's end, as stored at the close. A list item is the
single period without its snapshot. A path that is not a period `YYYY-MM` is a 404, like any other
unknown resource.
"""

from __future__ import annotations

import marshmallow as ma

from api.auth import allow
from api.body import Blueprint
from api.fields import Instant
from api.idempotency import idempotent, reclaim_after
from api.openapi import TOTALS_PAST_RANGE, refuses
from api.pagination import Listing, page_query, page, page_schema
from api.schemas import Schema
from api.session import current_session, separate_transaction, work_deadline
from ledger import periods
from ledger.balances import all_balances
from ledger.errors import InvalidInput, NotFound, totals_not_asked
from ledger.instants import parse_period, period_bounds_us
from ledger.journal import now_us
from ledger.money import format_minor
from ledger.periods import BooksPeriod, Close

blp = Blueprint("periods", __name__, description="Monthly periods: status, close chain and snapshots (finance)")

NOT_A_PERIOD = "the path is not a period `YYYY-MM`"
LISTING = Listing("periods", parse_period)


class CloseRequestSchema(Schema):
    """No fields: the period is in the path (a body with fields is a 422, not silently ignored)."""


class SnapshotRowSchema(Schema):
    account = ma.fields.String(required=True)
    currency = ma.fields.String(required=True)
    debit = ma.fields.String(required=True, metadata={"description": "cumulative debits at the period's end"})
    credit = ma.fields.String(required=True, metadata={"description": "cumulative credits at the period's end"})
    balance = ma.fields.String(required=True, metadata={"description": "debit - credit, signed"})


class PeriodSchema(Schema):
    period = ma.fields.String(required=True, metadata={"example": "2026-01"})
    status = ma.fields.String(required=True, metadata={"enum": ["open", "closed"]})
    starts_at = Instant(required=True)
    ends_at = Instant(required=True, metadata={"description": "exclusive"})
    closed_at = Instant(required=True, allow_none=True)
    close_hash = ma.fields.String(required=True, allow_none=True, metadata={
        "description": "SHA-256 over the snapshot, the counts, the journal head and the previous close hash"})
    prev_close_hash = ma.fields.String(required=True, allow_none=True)
    transaction_count = ma.fields.Integer(required=True, allow_none=True, metadata={
        "description": "transactions effective in the period, as counted at its close; null while open"})
    chain_head_id = ma.fields.Integer(required=True, allow_none=True, metadata={
        "description": "the last transaction when the period closed"})
    chain_head_hash = ma.fields.String(required=True, allow_none=True)


class PeriodDetailSchema(PeriodSchema):
    snapshot = ma.fields.List(ma.fields.Nested(SnapshotRowSchema), required=True, allow_none=True, metadata={
        "description": "every account's balance at the period's end, as stored at the close; null while open,"
                       " and for a period before the first close (closed without a close of its own)"})


def render(close: Close) -> dict:
    return {"period": close.period, "status": "closed", "starts_at": close.starts_at_us, "ends_at": close.ends_at_us,
            "closed_at": close.closed_at_us, "close_hash": close.close_hash, "prev_close_hash": close.prev_close_hash,
            "transaction_count": close.transaction_count, "chain_head_id": close.chain_head_id,
            "chain_head_hash": close.chain_head_hash}


def render_without_close(period: str, status: str) -> dict:
    """An open period, or one before the first close (closed, with no close record of its own)."""
    starts_us, ends_us = period_bounds_us(period)
    return {"period": period, "status": status, "starts_at": starts_us, "ends_at": ends_us, "closed_at": None,
            "close_hash": None, "prev_close_hash": None, "transaction_count": None, "chain_head_id": None,
            "chain_head_hash": None}


def render_listed(listed: BooksPeriod) -> dict:
    return render_without_close(listed.period, "open") if listed.close is None else render(listed.close)


def snapshot_rows(close: Close) -> list[dict]:
    # The balances as of a closed period's end are that period's stored snapshot (the latest close
    # ending by then) plus the lines after it and before its end: none.
    rows = all_balances(current_session(), before_us=close.ends_at_us)
    return [{"account": account, "currency": currency, "debit": format_minor(debit, currency),
             "credit": format_minor(credit, currency), "balance": format_minor(debit - credit, currency)}
            for (account, currency), (debit, credit) in sorted(rows.items())]


def path_period(text: str) -> str:
    """The period a path names; a path naming none is a 404 (as any path of no resource), saying why."""
    try:
        return parse_period(text)
    except InvalidInput as error:
        raise NotFound(f"period {text[:40]!r} not found: it {error.fields['period'][0]}") from None


@blp.route("/periods", methods=["GET"])
@allow("finance")
@blp.arguments(page_query(LISTING), location="query", as_kwargs=True)
@blp.response(200, page_schema(PeriodSchema))
def list_periods(limit: int, cursor: str | None):
    """Periods with their status, oldest first: the closes, then the open periods through the current one

    The list starts at the first close, or, while nothing is closed, at the period of the first
    posting; an empty book (no postings, no closes) lists nothing. A closed item is its close
    record; an open one has its close fields null, `transaction_count` included. An item is the
    single period's answer without `snapshot`, which only `GET /v1/periods/{period}` carries.
    """
    listed = periods.books_periods(current_session(), after=cursor, count=limit + 1, now_us=now_us())
    return page(listed, limit, render_listed, id_of=lambda entry: entry.period, encode=LISTING.cursor)


@blp.route("/periods/<string(length=7):period>", methods=["GET"])
@allow("finance")
@refuses(404, NOT_A_PERIOD)
@blp.response(200, PeriodDetailSchema)
def get_period(period: str):
    """A period's status; a closed one with its close record and snapshot"""
    status, close = periods.period_status(current_session(), path_period(period))
    if close is None:
        return {**render_without_close(period, status), "snapshot": None}
    return {**render(close), "snapshot": snapshot_rows(close)}


@blp.route("/periods/<string(length=7):period>/close", methods=["POST"])
@allow("finance")
@refuses(404, NOT_A_PERIOD)
@refuses(409, "the period has not ended, is closed already, or lies before the latest closed period; or an "
              "earlier period with postings, or a hold maturing in it, is open (close it first); or this server's "
              "clock is more than five minutes ahead of the database's")
@refuses(409, TOTALS_PAST_RANGE)
@idempotent
@blp.arguments(CloseRequestSchema)
@blp.response(200, PeriodSchema)
@totals_not_asked()
def close_period(_args, period: str):
    """Close an ended period: release matured holds, write off under `reset`, snapshot, hash"""
    deadline = work_deadline()
    period = path_period(period)
    # The releases first, a hundred to a transaction, as the CLI and the jobs make them (see
    # `run_payouts` in api/routes/payouts.py).
    reclaim_after(lambda: periods.release_before_close(separate_transaction, period, deadline=deadline))
    return render(periods.close_period(current_session(), period))
