"""PostgreSQL: autovacuum keeps the journal lines' visibility map current, so balances stay index-only.

A balance sums an account's lines since the latest close from the covering index
`ix_journal_lines_balance`; PostgreSQL answers from the index alone only for heap pages its
visibility map marks all-visible, and only VACUUM sets those marks. Autovacuum vacuums a table for
inserts after `autovacuum_vacuum_insert_threshold` + `autovacuum_vacuum_insert_scale_factor` x its
rows new rows: by default 1,000 + 20%, i.e. every 2M lines at 10M, so a whole month of recent
lines (the very lines a balance reads) could go unvacuumed and each costs a heap fetch (a hot
partner's balance: about 1.5-3x slower, measured by `bench/`). Here: after every 100,000 new lines,
whatever the table's size. Lines are never updated or deleted, so such a vacuum reads only the pages
written since the last one. The trial balance and the close read `ix_journal_lines_period`, also
covering, and gain the same way. SQLite has no such setting: nothing to do.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

STORAGE = {"autovacuum_vacuum_insert_threshold": "100000", "autovacuum_vacuum_insert_scale_factor": "0"}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        settings = ", ".join(f"{name} = {value}" for name, value in STORAGE.items())
        op.execute(f"ALTER TABLE journal_lines SET ({settings})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE journal_lines RESET ({', '.join(STORAGE)})")
