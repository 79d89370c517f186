"""Running totals stay integers: a posting that would take an account's total past a 64-bit integer
is refused, by the database, with a message the service turns into a 422 naming `amount`.

An amount may have 15 integer digits (DESIGN.md), so a few of the largest (BHD: about 10^18 fils
each) add up past 2^63 - 1 minor units in one account. PostgreSQL refuses that sum in the totals
trigger of migration 0008 (`bigint out of range`, SQLSTATE 22003). SQLite does not: an integer sum
that overflows becomes a REAL, and the account's balance would then be read back rounded through a
float. A guard on `account_totals` now refuses any update whose totals are not integers.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# ledger.db.TOTAL_OUT_OF_RANGE names this message.
SQLITE_GUARD = """
CREATE TRIGGER trg_account_totals_in_range BEFORE UPDATE ON account_totals
WHEN typeof(NEW.debit_minor) <> 'integer' OR typeof(NEW.credit_minor) <> 'integer'
BEGIN SELECT RAISE(ABORT, 'account_totals: a running total would exceed the range of a 64-bit integer'); END
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(SQLITE_GUARD)


def downgrade() -> None:
    raise NotImplementedError("the journal's guards are only ever replaced by a new migration")
