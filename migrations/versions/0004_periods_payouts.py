"""Period closes with snapshots, payout runs, payouts and their one-time resolutions.

All append-only. The journal refuses a transaction dated inside a closed period. A payout is resolved at most once (primary key of payout_resolutions); a run per
instant (unique at_us); one payout per run, partner and currency; every close names the close
before it through `prev_close_hash`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
APPEND_ONLY = ("period_closes", "period_snapshots", "payout_runs", "payouts", "payout_resolutions")


def upgrade() -> None:
    op.create_table(
        "period_closes",
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("starts_at_us", sa.BigInteger, nullable=False),
        sa.Column("ends_at_us", sa.BigInteger, nullable=False),
        sa.Column("closed_at_us", sa.BigInteger, nullable=False),
        sa.Column("transaction_count", sa.BigInteger, nullable=False),
        sa.Column("chain_head_id", sa.BigInteger, nullable=False),
        sa.Column("chain_head_hash", sa.String(64), nullable=False),
        sa.Column("prev_close_hash", sa.String(64), nullable=False),
        sa.Column("close_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("period", name=op.f("pk_period_closes")),
        sa.UniqueConstraint("starts_at_us", name=op.f("uq_period_closes_starts_at_us")),
        sa.UniqueConstraint("ends_at_us", name=op.f("uq_period_closes_ends_at_us")),
        sa.UniqueConstraint("close_hash", name=op.f("uq_period_closes_close_hash")),
        sa.CheckConstraint("ends_at_us > starts_at_us", name=op.f("ck_period_closes_bounds")),
        sa.CheckConstraint("transaction_count >= 0", name=op.f("ck_period_closes_count")),
    )
    op.create_table(
        "period_snapshots",
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("account_id", Id, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("debit_minor", sa.BigInteger, nullable=False),
        sa.Column("credit_minor", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("period", "account_id", "currency", name=op.f("pk_period_snapshots")),
        sa.ForeignKeyConstraint(["period"], ["period_closes.period"], deferrable=True, initially="DEFERRED",
                                name=op.f("fk_period_snapshots_period_period_closes")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_period_snapshots_account_id_accounts")),
        sa.CheckConstraint("debit_minor >= 0 AND credit_minor >= 0", name=op.f("ck_period_snapshots_non_negative")),
    )
    op.create_table(
        "payout_runs",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payout_runs")),
        sa.UniqueConstraint("at_us", name=op.f("uq_payout_runs_at_us")),
    )
    op.create_table(
        "payouts",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("transaction_id", Id, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payouts")),
        sa.ForeignKeyConstraint(["run_id"], ["payout_runs.id"], name=op.f("fk_payouts_run_id_payout_runs")),
        sa.ForeignKeyConstraint(["transaction_id"], ["journal_transactions.id"],
                                name=op.f("fk_payouts_transaction_id_journal_transactions")),
        sa.UniqueConstraint("transaction_id", name=op.f("uq_payouts_transaction_id")),
        sa.UniqueConstraint("run_id", "partner_id", "currency", name=op.f("uq_payouts_run_id_partner_id_currency")),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_payouts_amount_positive")),
    )
    op.create_index(op.f("ix_payouts_partner_id_id"), "payouts", ["partner_id", "id"])
    op.create_table(
        "payout_resolutions",
        sa.Column("payout_id", Id, autoincrement=False, nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("transaction_id", Id, nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("resolved_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("payout_id", name=op.f("pk_payout_resolutions")),
        sa.ForeignKeyConstraint(["payout_id"], ["payouts.id"], name=op.f("fk_payout_resolutions_payout_id_payouts")),
        sa.ForeignKeyConstraint(["transaction_id"], ["journal_transactions.id"],
                                name=op.f("fk_payout_resolutions_transaction_id_journal_transactions")),
        sa.UniqueConstraint("transaction_id", name=op.f("uq_payout_resolutions_transaction_id")),
        sa.CheckConstraint("outcome IN ('settled', 'failed')", name=op.f("ck_payout_resolutions_outcome")),
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in APPEND_ONLY:
        if postgres:
            op.execute(f"CREATE TRIGGER trg_{table}_no_change BEFORE UPDATE OR DELETE ON {table} "
                       f"FOR EACH ROW EXECUTE FUNCTION journal_refuse_change()")
            op.execute(f"CREATE TRIGGER trg_{table}_no_truncate BEFORE TRUNCATE ON {table} "
                       f"FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change()")
            continue
        for operation in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER trg_{table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                       f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {operation} refused'); END")


    _closed_period_guard(postgres)


def _closed_period_guard(postgres: bool) -> None:
    """The database refuses a transaction dated inside a closed period (it belongs at the start of
    the first open period, with its original instant kept beside it)."""
    if postgres:
        op.execute("""
CREATE FUNCTION journal_refuse_closed_period() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM sealed s WHERE s.effective_at_us < (SELECT max(ends_at_us) FROM period_closes)) THEN
    RAISE EXCEPTION 'journal_transactions: effective instant lies in a closed period' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$""")
        op.execute("CREATE TRIGGER trg_journal_transactions_closed_period AFTER INSERT ON journal_transactions "
                   "REFERENCING NEW TABLE AS sealed FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_closed_period()")
        return
    op.execute("""
CREATE TRIGGER trg_journal_transactions_closed_period AFTER INSERT ON journal_transactions
WHEN NEW.effective_at_us < (SELECT max(ends_at_us) FROM period_closes)
BEGIN SELECT RAISE(ABORT, 'journal_transactions: effective instant lies in a closed period'); END""")


def downgrade() -> None:
    raise NotImplementedError("closed periods and payouts are never dropped by a migration")
