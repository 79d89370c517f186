"""Things happen in time order: the database refuses a reversal effective before the transaction
it reverses, a payout's settlement or failure before the payout was made, a revenue event dated
more than five minutes after it was recorded, and a program fact (plan version, partner status or
plan, attribution) dated more than 366 days after it was recorded.

A reversal effective before its original would stand alone in between: the mirror of an accrual
there is a pending balance below zero, the mirror of a payout money returned that never left. A
payout failed before it was made returns its amount to an available balance that, as of then,
still holds it: paid twice in every report of that span (and in transit below zero). A payment
dated in the future would accrue, and its hold mature, from an instant nobody has seen yet. Each
program fact must start after the latest of its kind, and none can be withdrawn: one dated in a far
year by mistake would block every later one. `ledger.journal`, `ledger.payouts`, `ledger.revenue`
and `ledger.instants.within_horizon` refuse each first (422 naming `effective_at`, `at`,
`occurred_at` or `effective_from`); the instant compared is the one asked for
(`original_effective_at` when the posting was moved to the first open period) against the
original's effective instant. Rows already written are left as they are.

SQLite: row triggers, the journal's only for reversals (its WHEN clause costs any other header one
comparison). PostgreSQL: row triggers after the insert, the journal's also only for reversals
the events and facts only for a late or far one (`WHEN`, so a batch's COPY queues no trigger event
for the others and keeps inserting in batches).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01
"""

import re

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

REVERSAL_EARLY = "journal_transactions: a reversal is not effective before the transaction it reverses"
RESOLUTION_EARLY = "payout_resolutions: a payout is not settled or failed before it was made"
CLOCK_SKEW_US = 5 * 60 * 1_000_000  # ledger.revenue's, as of this revision
EVENT_LATE = "revenue_events: an event is dated at most five minutes after it is recorded"
EVENT_IN_TIME = f"n.occurred_at_us <= n.recorded_at_us + {CLOCK_SKEW_US}"
FACT_HORIZON_US = 366 * 86_400 * 1_000_000  # ledger.instants.FACT_HORIZON_DAYS, as of this revision
FACT_TOO_FAR = "{table}: a program fact is dated at most 366 days after it is recorded"
# Program facts: (table, the column of their instant, the column of when they were recorded).
FACTS = (("plan_versions", "effective_from_us", "created_at_us"),
         ("partner_statuses", "effective_at_us", "recorded_at_us"),
         ("partner_plans", "effective_from_us", "recorded_at_us"),
         ("attributions", "effective_from_us", "recorded_at_us"))

# The instant asked for, of the new row's transaction `n`, against what it corrects.
REVERSAL_BEFORE = ("coalesce(n.original_effective_at_us, n.effective_at_us)"
                   " < (SELECT o.effective_at_us FROM journal_transactions o WHERE o.id = n.reverses_id)")
RESOLUTION_BEFORE = ("(SELECT coalesce(r.original_effective_at_us, r.effective_at_us) FROM journal_transactions r"
                     " WHERE r.id = n.transaction_id)"
                     " < (SELECT m.effective_at_us FROM payouts p"
                     " JOIN journal_transactions m ON m.id = p.transaction_id WHERE p.id = n.payout_id)")


def new_row(condition: str) -> str:
    """The condition on a row trigger's NEW row instead of `n`."""
    return re.sub(r"\bn\.", "NEW.", condition)


EVENT_LATE_ROW = f"NOT ({new_row(EVENT_IN_TIME)})"


def too_far(effective: str, recorded: str) -> str:
    return f"NEW.{effective} > NEW.{recorded} + {FACT_HORIZON_US}"


SQLITE_GUARDS = ";\n\n".join([
    f"""CREATE TRIGGER trg_journal_transactions_reversal_in_time AFTER INSERT ON journal_transactions
WHEN NEW.reverses_id IS NOT NULL AND {new_row(REVERSAL_BEFORE)}
BEGIN SELECT RAISE(ABORT, '{REVERSAL_EARLY}'); END""",
    f"""CREATE TRIGGER trg_payout_resolutions_in_time AFTER INSERT ON payout_resolutions
WHEN {new_row(RESOLUTION_BEFORE)}
BEGIN SELECT RAISE(ABORT, '{RESOLUTION_EARLY}'); END""",
    f"""CREATE TRIGGER trg_revenue_events_in_time BEFORE INSERT ON revenue_events
WHEN {EVENT_LATE_ROW}
BEGIN SELECT RAISE(ABORT, '{EVENT_LATE}'); END""",
    *(f"""CREATE TRIGGER trg_{table}_within_horizon BEFORE INSERT ON {table}
WHEN {too_far(effective, recorded)}
BEGIN SELECT RAISE(ABORT, '{FACT_TOO_FAR.format(table=table)}'); END""" for table, effective, recorded in FACTS),
])


def postgres_guard(table: str, name: str, refused_when: str, message: str, *, only_when: str | None = None) -> str:
    """A row trigger after insert on `table` whose function raises `message` when `refused_when`
    holds of the new row; `only_when` (no subqueries) spares the rows it excludes the call."""
    when = f"WHEN ({only_when}) " if only_when else ""
    return f"""
CREATE FUNCTION {table}_{name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF {refused_when} THEN
    RAISE EXCEPTION '{message}' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER trg_{table}_{name} AFTER INSERT ON {table}
FOR EACH ROW {when}EXECUTE FUNCTION {table}_{name}()"""


POSTGRES_GUARDS = ";\n\n".join([
    postgres_guard("journal_transactions", "reversal_in_time", new_row(REVERSAL_BEFORE), REVERSAL_EARLY,
                   only_when="NEW.reverses_id IS NOT NULL"),
    postgres_guard("payout_resolutions", "in_time", new_row(RESOLUTION_BEFORE), RESOLUTION_EARLY),
    postgres_guard("revenue_events", "in_time", EVENT_LATE_ROW, EVENT_LATE, only_when=EVENT_LATE_ROW),
    *(postgres_guard(table, "within_horizon", too_far(effective, recorded), FACT_TOO_FAR.format(table=table),
                     only_when=too_far(effective, recorded)) for table, effective, recorded in FACTS),
])


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in (POSTGRES_GUARDS if postgres else SQLITE_GUARDS).split(";\n\n"):
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the guards are only ever replaced by a new migration")
