"""The database holds a payout's resolution final, for a writer that goes around Python:

- a `payout_settled` or `payout_failed` transaction is never reversed;
- a `payout` transaction whose payout has a resolution (settled, or failed) is never reversed.

`ledger.reversals` refuses both (409: the money has left, or come back, through the payment system;
a correction is an adjustment). Without the guard, the mirror of a settlement posted by raw SQL put
the money back in the partner's available balance while the payout stayed settled: paid twice.
A pending payout's posting may still be reversed: that reversal is the payout's failure, written
before the resolution that names it (`ledger.reversals.reverse`), so the rule does not see one yet.

Both engines: an after-insert row trigger on `journal_transactions` for the rows that reverse
something (migration 0018's rule makers); the PostgreSQL function runs with
`search_path = public, pg_temp`, as every function since migration 0023.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-02
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

# Migration 0018's rule makers, `sqlite_rule` and `postgres_rule` (its file name is no module name).
_0018 = _revision("0018_rules_held.py")

NAME = "payout_final"
REVERSES_A_FINAL_PAYOUT_POSTING = (
    "(SELECT o.kind FROM journal_transactions o WHERE o.id = n.reverses_id) IN ('payout_settled', 'payout_failed')"
    " OR EXISTS (SELECT 1 FROM payouts p JOIN payout_resolutions r ON r.payout_id = p.id"
    " WHERE p.transaction_id = n.reverses_id)")
MESSAGE = "journal_transactions: a settled or failed payout is final, its postings are not reversed"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    make = _0018.postgres_rule if postgres else _0018.sqlite_rule
    for statement in make("journal_transactions", NAME, REVERSES_A_FINAL_PAYOUT_POSTING, MESSAGE,
                          "n.reverses_id IS NOT NULL").split(";\n\n"):
        op.execute(statement)
    if postgres:
        op.execute(f"ALTER FUNCTION journal_transactions_{NAME}() SET search_path = public, pg_temp")


def downgrade() -> None:
    raise NotImplementedError("the guards are only ever replaced by a new migration")
