"""PostgreSQL: the database's functions read the service's tables, whatever the session's search path.

The guards (and the functions behind checks) name tables and types without a schema, and ran with
the session's search path, which PostgreSQL searches after the session's own temporary schema. The
application role may create temporary tables and types (PUBLIC holds TEMPORARY on a database by
default), and so could stand an empty `period_closes` in for the real one and post into a closed
month, or an empty `journal_transactions` for the seal's reads. Each function now runs with
`search_path = public, pg_temp`, as those that run as their owner always have (0008, 0010, 0013, 0016):
`pg_catalog` first, then the service's schema, temporary objects last. Functions added later are made
that way (a test lists any that is not). SQLite has no roles and resolves a trigger's tables in its
own schema: nothing to do.

The setting costs a call about 2-4 µs (the search path is set and restored around it). The guards
that run for every posting are statement triggers or conditional row triggers, about eight calls a
posting; see the README's performance section.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-02
"""

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

FUNCTIONS = (
    "account_totals_refuse_direct()", "accounts_in_the_chart()", "api_keys_no_update()",
    "attributions_in_order()", "attributions_within_horizon()", "idempotency_records_no_update()",
    "journal_lines_currency()", "journal_lines_refuse_sealed()", "journal_refuse_change()",
    "journal_refuse_closed_period()", "journal_transactions_adjustment_in_time()",
    "journal_transactions_cpa_once()", "journal_transactions_moved_forward()",
    "journal_transactions_reversal_final()", "journal_transactions_reversal_in_time()",
    "journal_transactions_reversal_linked()", "journal_transactions_reversal_mirrors()",
    "journal_transactions_seal()", "journal_transactions_within_its_piece()", "open_holds_no_update()",
    "open_holds_of_a_piece()", "partner_plans_in_order()", "partner_plans_within_horizon()",
    "partner_statuses_in_order()", "partner_statuses_within_horizon()", "payout_resolutions_in_time()",
    "payout_resolutions_posted()", "payout_runs_in_order()", "payout_runs_not_ahead()", "payouts_posted()",
    "period_closes_chained()", "period_closes_ended()", "period_closes_month()", "period_snapshots_sealed()",
    "plan_versions_in_order()", "plan_versions_terms()", "plan_versions_within_horizon()",
    "program_revision_refuse_direct()", "revenue_events_currency()", "revenue_events_in_time()",
    "revenue_events_within_invoice()", "revshare_is_json_object(text)", "statement_documents_refuse_direct()",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for function in FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} SET search_path = public, pg_temp")


def downgrade() -> None:
    raise NotImplementedError("the guards are only ever replaced by a new migration")
