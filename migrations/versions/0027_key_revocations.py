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

from migrations.earlier import revision as _revision

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

TABLE = "api_key_revocations"

# Migration 0026's maker of a new table's append-only guards (its file name is no module name).
_0026 = _revision("0026_payout_postings_recorded.py")


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("api_key_id", sa.String(32), nullable=False),
        sa.Column("revoked_at_us", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.PrimaryKeyConstraint("api_key_id", name=op.f(f"pk_{TABLE}")),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name=op.f(f"fk_{TABLE}_api_key_id_api_keys")),
    )
    for statement in _0026.append_only(TABLE, op.get_bind().dialect.name == "postgresql"):
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the guards are only ever replaced by a new migration")
