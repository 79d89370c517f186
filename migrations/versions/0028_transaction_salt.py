"""Each new transaction carries a `salt`, 16 random bytes (hex), in its chain hash, never shown over
the API: without it, a partner that reads the hashes of its own transactions could check guesses of
a neighbouring posting of another partner (a parent's override on the same invoice, a
sub-partner's accrual), whose content it can nearly name, against them, and so learn that
partner's commission (`ledger/journal.py` says how). Transactions written before have none (NULL),
and their chain hash is as it was; `revshare verify` recomputes both kinds.

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("journal_transactions", sa.Column("salt", sa.String(32), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("the journal's columns are only ever added")
