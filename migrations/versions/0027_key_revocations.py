"""API keys can be revoked: `api_key_revocations` holds one row per revoked key (when, and why),
and a revoked key no longer authenticates (`ledger.keys.authenticate`). Keys are never updated or
deleted (a key that ever sent an `Idempotency-Key` is named by its stored answers), so revocation is
a fact added beside the key, as everything else in the books. The table only grows and is never
updated or deleted from (its guards; on PostgreSQL the application role may SELECT and INSERT).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

APP_ROLE = "revshare_app"
TABLE = "api_key_revocations"

SQLITE = f"""
CREATE TRIGGER trg_{TABLE}_no_update BEFORE UPDATE ON {TABLE}
BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only: UPDATE refused'); END;

CREATE TRIGGER trg_{TABLE}_no_delete BEFORE DELETE ON {TABLE}
BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only: DELETE refused'); END"""

POSTGRES = f"""
CREATE TRIGGER trg_{TABLE}_no_change BEFORE UPDATE OR DELETE ON {TABLE}
FOR EACH ROW EXECUTE FUNCTION journal_refuse_change();

CREATE TRIGGER trg_{TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE}
FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change();

GRANT SELECT, INSERT ON {TABLE} TO {APP_ROLE}"""


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("api_key_id", sa.String(32), nullable=False),
        sa.Column("revoked_at_us", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.PrimaryKeyConstraint("api_key_id", name=op.f(f"pk_{TABLE}")),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name=op.f(f"fk_{TABLE}_api_key_id_api_keys")),
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in (POSTGRES if postgres else SQLITE).split(";\n\n"):
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the guards are only ever replaced by a new migration")
