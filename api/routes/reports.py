"""Finance reports: GET /v1/reports/trial-balance, GET /v1/reports/liabilities and GET /v1/integrity.

Amounts are decimal strings in the row's currency. Without `as_of` a report is as of the moment of
the request, so postings dated in the future do not count yet. In the liabilities' totals,
`available` adds up positive available balances only (what the vendor owes) and
`owed_by_partners` the negative ones (what partners owe back), as a positive amount.
"""

from __future__ import annotations


import marshmallow as ma

from api.auth import allow
from api.body import Blueprint
from api.fields import AsOf, Head, ProgramHead, RecordedClose
from api.schemas import Schema
from api.session import WORK_BUDGET_S, current_session, work_deadline
from ledger.db import statements_cut_at
from ledger.errors import Unfinished
from ledger.instants import format_instant, now_us
from ledger.money import format_minor
from ledger.reports import liabilities
from ledger.trial_balance import trial_balance
from ledger.verify import verify

blp = Blueprint("reports", __name__, description="Trial balance, liabilities and integrity (finance)")


class AsOfQuery(Schema):
    as_of = AsOf(load_default=None, metadata={"description": "default: now"})


class TrialBalanceRowSchema(Schema):
    account = ma.fields.String(required=True)
    currency = ma.fields.String(required=True)
    debit = ma.fields.String(required=True, metadata={"description": "sum of debits, decimal string"})
    credit = ma.fields.String(required=True, metadata={"description": "sum of credits, decimal string"})
    balance = ma.fields.String(required=True, metadata={
        "description": "debit - credit, signed: positive is a debit balance, negative a credit balance"})


class TrialBalanceTotalSchema(Schema):
    currency = ma.fields.String(required=True)
    debit = ma.fields.String(required=True)
    credit = ma.fields.String(required=True)


class TrialBalanceSchema(Schema):
    as_of = ma.fields.String(required=True, metadata={"format": "date-time",
                                                      "description": "postings effective before this count"})
    rows = ma.fields.List(ma.fields.Nested(TrialBalanceRowSchema), required=True)
    totals = ma.fields.List(ma.fields.Nested(TrialBalanceTotalSchema), required=True)


class PartnerLiabilitySchema(Schema):
    partner_id = ma.fields.String(required=True)
    currency = ma.fields.String(required=True)
    pending = ma.fields.String(required=True)
    available = ma.fields.String(required=True, metadata={"description": "negative when the partner owes"})


class LiabilityTotalSchema(Schema):
    currency = ma.fields.String(required=True)
    pending = ma.fields.String(required=True)
    available = ma.fields.String(required=True, metadata={"description": "sum of positive available balances"})
    owed_by_partners = ma.fields.String(required=True, metadata={
        "description": "sum of negative available balances, as a positive amount"})


class LiabilitiesSchema(Schema):
    as_of = ma.fields.String(required=True, metadata={"format": "date-time",
                                                      "description": "postings effective before this count"})
    partners = ma.fields.List(ma.fields.Nested(PartnerLiabilitySchema), required=True)
    totals = ma.fields.List(ma.fields.Nested(LiabilityTotalSchema), required=True)


class ProblemFoundSchema(Schema):
    transaction_id = ma.fields.Integer(required=True, allow_none=True)
    code = ma.fields.String(required=True, metadata={"example": "hash_mismatch"})
    message = ma.fields.String(required=True)


class IntegritySchema(Schema):
    ok = ma.fields.Boolean(required=True)
    transactions_checked = ma.fields.Integer(required=True)
    chain_head = ma.fields.String(required=True, metadata={"description": "hash of the last transaction"})
    head_id = ma.fields.Integer(required=True, metadata={
        "description": "id of the last transaction (0: none); keep `head_id:chain_head` outside the database and "
                       "pass it as `head` later"})
    latest_close = ma.fields.String(required=True, allow_none=True, metadata={
        "description": "PERIOD:HASH of the newest close (null: none); keep it outside the database and pass it as "
                       "`close` later"})
    program_head = ma.fields.String(required=True, allow_none=True, metadata={
        "description": "ID:HASH, the head of the program's chain (null: no facts); keep it outside the database "
                       "and pass it as `program_head` later"})
    problems = ma.fields.List(ma.fields.Nested(ProblemFoundSchema), required=True)


class IntegrityQuery(Schema):
    head = Head(load_default=None, metadata={
        "description": "ID:HASH, a head an earlier check reported: prove the journal still holds it (nothing up to "
                       "it removed or rewritten)"})
    close = RecordedClose(load_default=None, metadata={
        "description": "PERIOD:HASH, a close an earlier check reported: prove the books still hold it (no close up "
                       "to it removed or rewritten)"})
    program_head = ProgramHead(load_default=None, metadata={
        "description": "ID:HASH, a program head an earlier check reported: prove the program's facts up to it are "
                       "as recorded (none removed or rewritten)"})


@blp.route("/reports/trial-balance", methods=["GET"])
@allow("finance")
@blp.arguments(AsOfQuery, location="query", as_kwargs=True)
@blp.response(200, TrialBalanceSchema)
def get_trial_balance(as_of: int | None):
    """Trial balance: debits and credits per account and currency"""
    as_of_us = now_us() if as_of is None else as_of
    report = trial_balance(current_session(), before_us=as_of_us)
    return {
        "as_of": format_instant(as_of_us),
        "rows": [{"account": row.account, "currency": row.currency,
                  "debit": format_minor(row.debit_minor, row.currency),
                  "credit": format_minor(row.credit_minor, row.currency),
                  "balance": format_minor(row.balance_minor, row.currency)} for row in report.rows],
        "totals": [{"currency": total.currency, "debit": format_minor(total.debit_minor, total.currency),
                    "credit": format_minor(total.credit_minor, total.currency)} for total in report.totals],
    }


@blp.route("/reports/liabilities", methods=["GET"])
@allow("finance")
@blp.arguments(AsOfQuery, location="query", as_kwargs=True)
@blp.response(200, LiabilitiesSchema)
def get_liabilities(as_of: int | None):
    """What the vendor owes each partner, pending and available, per currency"""
    as_of_us = now_us() if as_of is None else as_of
    by_partner, totals = liabilities(current_session(), before_us=as_of_us)
    return {
        "as_of": format_instant(as_of_us),
        "partners": [{"partner_id": line.partner_id, "currency": line.currency,
                      "pending": format_minor(line.pending_minor, line.currency),
                      "available": format_minor(line.available_minor, line.currency)} for line in by_partner],
        "totals": [{"currency": total.currency, "pending": format_minor(total.pending_minor, total.currency),
                    "available": format_minor(total.available_minor, total.currency),
                    "owed_by_partners": format_minor(total.owed_by_partners_minor, total.currency)}
                   for total in totals],
    }


def _verify_unfinished() -> Unfinished:
    return Unfinished(f"verify did not finish within the {WORK_BUDGET_S:.0f} seconds a request may take: run "
                      "`revshare verify`, which has no such bound (the scheduler's nightly verify logs it too)")


@blp.route("/integrity", methods=["GET"])
@allow("finance")
@blp.arguments(IntegrityQuery, location="query", as_kwargs=True)
@blp.response(200, IntegritySchema)
def get_integrity(head: tuple[int, str] | None, close: tuple[str, str] | None,
                  program_head: tuple[int, str] | None):
    """Recompute the hash chain and every transaction's balance"""
    session = current_session()
    with statements_cut_at(session, work_deadline(), _verify_unfinished):
        report = verify(session, head=head, close=close, program_head=program_head)
    latest = None if report.latest_close is None else ":".join(report.latest_close)
    return {"ok": report.ok, "transactions_checked": report.transactions_checked, "chain_head": report.chain_head,
            "head_id": report.head_id, "latest_close": latest,
            "program_head": ":".join(map(str, report.program_head)) if report.program_head[0] else None,
            "problems": [problem._asdict() for problem in report.problems]}
