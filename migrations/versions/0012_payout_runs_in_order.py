"""Payout runs are made in time order: the database refuses a run at an instant before the latest.

A run at t pays each available balance as of t. A run at t before an existing run at t' > t would
not see the later run's payouts (effective at t'), and would pay those balances a second time.
`ledger.payouts.run_payouts` refuses it first, with a 409 naming `at`.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

REFUSED = "payout_runs: a payout run must not be earlier than the latest one"

SQLITE_GUARD = f"""
CREATE TRIGGER trg_payout_runs_in_order BEFORE INSERT ON payout_runs
WHEN NEW.at_us < (SELECT max(at_us) FROM payout_runs)
BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END
"""

POSTGRES_GUARD = f"""
CREATE FUNCTION payout_runs_in_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.at_us < (SELECT max(at_us) FROM payout_runs) THEN
    RAISE EXCEPTION '{REFUSED}' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;

CREATE TRIGGER trg_payout_runs_in_order BEFORE INSERT ON payout_runs
FOR EACH ROW EXECUTE FUNCTION payout_runs_in_order()
"""


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in (POSTGRES_GUARD if postgres else SQLITE_GUARD).split(";\n\n"):
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the guards are only ever replaced by a new migration")
