"""The database holds that a `payout` posting has its payout record, for a writer that goes around
Python (`ledger.payouts.run_payouts` writes both; `revshare verify` names a posting without one,
`payout_unrecorded`). A posting without its record is money in transit that no one can settle or
fail: it is paid out for the books, and never by the payment system.

The record is written after its posting, in the same transaction (it names the posting's id), so
the check must wait for the commit. PostgreSQL has deferred constraint triggers; SQLite has none,
but it has deferred foreign keys. So, on both engines alike: a row trigger after each `payout`
header inserts the posting's id into `payout_records_due`, whose foreign key to
`payouts.transaction_id` is deferred to the commit. A transaction that posts a payout without
recording it fails to commit (SQLite: "FOREIGN KEY constraint failed"; PostgreSQL names
`fk_payout_records_due_transaction_id_payouts`). The table only grows, with one row per payout, and
is never updated or deleted from (its guards, and on PostgreSQL the application role's grants:
SELECT and INSERT; a row it inserts itself only asks for a record more).

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

APP_ROLE = "revshare_app"
TABLE = "payout_records_due"

SQLITE = f"""
CREATE TRIGGER trg_journal_transactions_payout_record_due AFTER INSERT ON journal_transactions
WHEN NEW.kind = 'payout'
BEGIN INSERT INTO {TABLE} (transaction_id) VALUES (NEW.id); END"""

POSTGRES = f"""
CREATE FUNCTION journal_transactions_payout_record_due() RETURNS trigger LANGUAGE plpgsql
SET search_path = public, pg_temp AS $$
BEGIN
  INSERT INTO {TABLE} (transaction_id) VALUES (NEW.id);
  RETURN NULL;
END $$;

CREATE TRIGGER trg_journal_transactions_payout_record_due AFTER INSERT ON journal_transactions
FOR EACH ROW WHEN (NEW.kind = 'payout') EXECUTE FUNCTION journal_transactions_payout_record_due()"""


def append_only(table: str, postgres: bool) -> list[str]:
    """A new table's guards: never updated or deleted from (on PostgreSQL never truncated either,
    and the application role may SELECT and INSERT only). Migration 0027 makes its table's too."""
    if not postgres:
        return [f"CREATE TRIGGER trg_{table}_no_{operation.lower()} BEFORE {operation} ON {table}\n"
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {operation} refused'); END"
                for operation in ("UPDATE", "DELETE")]
    return [f"CREATE TRIGGER trg_{table}_no_change BEFORE UPDATE OR DELETE ON {table}\n"
            "FOR EACH ROW EXECUTE FUNCTION journal_refuse_change()",
            f"CREATE TRIGGER trg_{table}_no_truncate BEFORE TRUNCATE ON {table}\n"
            "FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change()",
            f"GRANT SELECT, INSERT ON {table} TO {APP_ROLE}"]


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("transaction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False,
                  nullable=False),
        sa.PrimaryKeyConstraint("transaction_id", name=op.f(f"pk_{TABLE}")),
        sa.ForeignKeyConstraint(["transaction_id"], ["payouts.transaction_id"],
                                name=op.f(f"fk_{TABLE}_transaction_id_payouts"), deferrable=True,
                                initially="DEFERRED"),
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in [*(POSTGRES if postgres else SQLITE).split(";\n\n"), *append_only(TABLE, postgres)]:
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the guards are only ever replaced by a new migration")
