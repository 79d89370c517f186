"""Partner program: plans and versions, partners with dated statuses and plans, customers with
dated attribution, revenue events (the source documents) and the open-holds work queue.

Database-side guards: every table but `open_holds` is append-only (the same triggers as the
journal); a partner's parent must exist with depth one less (composite foreign key), so there are no
cycles and depth stays <= 5; an invoice is paid at most once (partial unique index); a customer's CPA
is claimed at most once (unique `first_eligible_customer_id`); event amounts are positive.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
APPEND_ONLY = ("plans", "plan_versions", "partners", "partner_statuses", "partner_plans", "customers",
               "attributions", "revenue_events")


def upgrade() -> None:
    _plans_and_partners()
    _customers_and_events()
    op.create_index(op.f("ix_journal_transactions_event_id"), "journal_transactions", ["event_id"])
    _append_only_guards()


def _plans_and_partners() -> None:
    op.create_table(
        "plans",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
    )
    op.create_table(
        "plan_versions",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("plan_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("effective_from_us", sa.BigInteger, nullable=False),
        sa.Column("terms", sa.Text, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_versions")),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name=op.f("fk_plan_versions_plan_id_plans")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_plan_versions_version_positive")),
        sa.UniqueConstraint("plan_id", "version", name=op.f("uq_plan_versions_plan_id_version")),
        sa.UniqueConstraint("plan_id", "effective_from_us", name=op.f("uq_plan_versions_plan_id_effective_from_us")),
    )
    op.create_table(
        "partners",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("parent_id", sa.String(64), nullable=True),
        sa.Column("parent_depth", sa.Integer, nullable=True),
        sa.Column("depth", sa.Integer, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partners")),
        sa.CheckConstraint("type IN ('msp', 'var', 'distributor', 'reseller', 'affiliate', 'referral')",
                           name=op.f("ck_partners_type")),
        sa.CheckConstraint("depth BETWEEN 1 AND 5", name=op.f("ck_partners_depth_range")),
        sa.CheckConstraint("(parent_id IS NULL AND parent_depth IS NULL AND depth = 1) OR "
                           "(parent_id IS NOT NULL AND parent_depth = depth - 1)", name=op.f("ck_partners_parent_depth")),
        sa.UniqueConstraint("id", "depth", name=op.f("uq_partners_id_depth")),
        sa.ForeignKeyConstraint(["parent_id", "parent_depth"], ["partners.id", "partners.depth"],
                                name="fk_partners_parent_partners"),
    )
    op.create_table(
        "partner_statuses",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("effective_at_us", sa.BigInteger, nullable=False),
        sa.Column("recorded_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partner_statuses")),
        sa.ForeignKeyConstraint(["partner_id"], ["partners.id"], name=op.f("fk_partner_statuses_partner_id_partners")),
        sa.CheckConstraint("status IN ('active', 'suspended', 'terminated')", name=op.f("ck_partner_statuses_status")),
    )
    op.create_index(op.f("ix_partner_statuses_partner_id_effective_at_us"), "partner_statuses",
                    ["partner_id", "effective_at_us"])
    op.create_table(
        "partner_plans",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("plan_id", sa.String(64), nullable=False),
        sa.Column("effective_from_us", sa.BigInteger, nullable=False),
        sa.Column("recorded_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partner_plans")),
        sa.ForeignKeyConstraint(["partner_id"], ["partners.id"], name=op.f("fk_partner_plans_partner_id_partners")),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name=op.f("fk_partner_plans_plan_id_plans")),
        sa.UniqueConstraint("partner_id", "effective_from_us", name=op.f("uq_partner_plans_partner_id_effective_from_us")),
    )


def _customers_and_events() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
    )
    op.create_table(
        "attributions",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("effective_from_us", sa.BigInteger, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("recorded_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attributions")),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], name=op.f("fk_attributions_customer_id_customers")),
        sa.ForeignKeyConstraint(["partner_id"], ["partners.id"], name=op.f("fk_attributions_partner_id_partners")),
        sa.CheckConstraint("source IN ('deal_registration', 'referral_link', 'manual', 'import')",
                           name=op.f("ck_attributions_source")),
        sa.UniqueConstraint("customer_id", "effective_from_us", name=op.f("uq_attributions_customer_id_effective_from_us")),
    )
    op.create_table(
        "revenue_events",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(24), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("invoice_id", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("occurred_at_us", sa.BigInteger, nullable=False),
        sa.Column("recorded_at_us", sa.BigInteger, nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("first_eligible_customer_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revenue_events")),
        sa.UniqueConstraint("first_eligible_customer_id", name=op.f("uq_revenue_events_first_eligible_customer_id")),
        sa.CheckConstraint("type IN ('invoice_paid', 'refund', 'chargeback', 'chargeback_reversed')",
                           name=op.f("ck_revenue_events_type")),
        sa.CheckConstraint("status IN ('posted', 'unattributed', 'no_commission')", name=op.f("ck_revenue_events_status")),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_revenue_events_amount_positive")),
    )
    op.create_index(op.f("ix_revenue_events_invoice_id"), "revenue_events", ["invoice_id"])
    op.create_index("uq_revenue_events_paid_invoice", "revenue_events", ["invoice_id"], unique=True,
                    sqlite_where=sa.text("type = 'invoice_paid'"), postgresql_where=sa.text("type = 'invoice_paid'"))
    op.create_table(
        "open_holds",
        sa.Column("accrual_id", Id, autoincrement=False, nullable=False),
        sa.Column("matures_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("accrual_id", name=op.f("pk_open_holds")),
        sa.ForeignKeyConstraint(["accrual_id"], ["journal_transactions.id"],
                                name=op.f("fk_open_holds_accrual_id_journal_transactions")),
    )
    op.create_index(op.f("ix_open_holds_matures_at_us"), "open_holds", ["matures_at_us"])


def _append_only_guards() -> None:
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


def downgrade() -> None:
    raise NotImplementedError("partner program history is never dropped by a migration")
