"""Every writer of the journal, and of the partner program, takes its turn in the database too; and on
SQLite a journal line cannot be replaced from a connection without `recursive_triggers`.

PostgreSQL. The guards read what is committed: a line is refused when its transaction's header is
(the seal), a header when its instant lies in a closed period, a payout run dated before the latest
run, a partner's status after its termination, an attribution, plan change or plan version starting
no later than the latest of its kind. The service's writers take an advisory lock before they read
(`ledger.db.JOURNAL_LOCK_KEY`, and `PROGRAM_LOCK_KEY` for the program's facts), so each sees every
writer before it. A writer that does not, a session of the application role sending its own SQL,
could slip between them:
- a line inserted for the id the service's next posting takes, before that posting, committed after
  it: its deferred foreign key is then met, and the line joins a transaction sealed without it
  (unbalanced, and in whatever period the line names: a payout run paid the line's credit);
- a posting whose header is inserted while a close of its month reads the journal, committed after
  it: the closed period then holds a transaction its snapshot and statements leave out;
- a payout run's row inserted before the service's later-dated run, its payouts posted after that
  run's: two runs out of time order, the earlier-dated paying again what the later paid (each paid
  the balance as of its own instant, so `verify` named nothing until `payout_runs_out_of_order`);
- a snapshot row inserted for a month before its close, committed after it: its deferred key to
  the close is then met, and every balance read from the snapshot counts a row the close never
  covered (a statement body likewise);
- two statuses, attributions, plan changes or plan versions of one partner, plan or customer, each
  checked against the facts committed before either: a partner active again after its termination,
  attributions out of the order of their starts (nothing waited but the program revision's row,
  whose lock comes after the checks);
- a plan version withdrawn while a posting naming it is made: a transaction naming a version that
  no longer exists.
Now a statement inserting into those tables takes the lock of its kind before its first row (a
trigger before each such statement; a withdrawal, whose rule reads the postings, the program's lock
and then the journal's), so the guards after it read every writer before it: at READ
COMMITTED each query of a guard reads what was committed when it started. A transaction at
REPEATABLE READ or SERIALIZABLE reads what was committed when it began, before the lock, so such a
statement is refused there. The service writes at READ COMMITTED (`ledger.db.WRITERS_ISOLATION`) and
holds the lock already (a second take costs a lookup in the session's own lock table): the program's
writers take the program's lock before the journal's, as the triggers do; its readers, at REPEATABLE
READ, write nothing.

SQLite has one writer at a time. There, a connection that leaves `recursive_triggers` off (the
sqlite3 shell) could `INSERT OR REPLACE` a line of a sealed transaction with a line of a new one:
the REPLACE deletes the old line without firing its delete guard, and the seal reads the new line's
transaction, not the one the line was taken from (left unbalanced, in a closed period; the running
totals still count it). Migration 0036 left the lines out, taking the seal to cover them. They now
get its guard before each insert, which refuses a line whose id is taken.

Revision ID: 0043
Revises: 0042
Create Date: 2026-12-05
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0043"
down_revision = "0042"
branch_labels = None
depends_on = None

_0036 = _revision("0036_replace_refused.py")

# ledger.db's, as of this revision
JOURNAL_LOCK_KEY = 0x7265_7673_6861_7265 & 0x7FFF_FFFF_FFFF_FFFF
PROGRAM_LOCK_KEY = 0x7072_6F67_7261_6D00
# Each function: what its message calls the tables, the locks it takes in turn, and the tables whose
# inserting statements call it. A withdrawal takes the journal's lock after the program's, as the
# service's withdrawals do: its rule reads the postings that name or follow the fact withdrawn.
IN_TURN = {
    "journal_writer_in_turn": ("journal", (JOURNAL_LOCK_KEY,), (
        "journal_lines", "journal_transactions", "period_closes", "period_snapshots", "statement_bodies",
        "payout_runs")),
    "program_writer_in_turn": ("program", (PROGRAM_LOCK_KEY,), (
        "plans", "plan_versions", "partners", "partner_statuses", "partner_plans", "customers", "attributions")),
    "program_withdrawal_in_turn": ("program", (PROGRAM_LOCK_KEY, JOURNAL_LOCK_KEY), ("program_withdrawals",)),
}


def function(name: str, noun: str, keys: tuple[int, ...]) -> str:
    locks = "".join(f"  PERFORM pg_advisory_xact_lock({key});\n" for key in keys)
    return f"""CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql
SET search_path = public, pg_temp SET jit = off AS $$
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION '%: the {noun} is written at READ COMMITTED only, not %', TG_TABLE_NAME,
      upper(current_setting('transaction_isolation')) USING ERRCODE = 'check_violation';
  END IF;
{locks}  RETURN NULL;
END $$"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.execute(_0036.guard("journal_lines", (("id",),)))
        return
    for name, (noun, keys, tables) in IN_TURN.items():
        op.execute(function(name, noun, keys))
        for table in tables:
            op.execute(f"CREATE TRIGGER trg_{table}_in_turn BEFORE INSERT ON {table}\n"
                       f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.execute("DROP TRIGGER trg_journal_lines_no_replace")
        return
    for name, (_, _, tables) in IN_TURN.items():
        for table in tables:
            op.execute(f"DROP TRIGGER trg_{table}_in_turn ON {table}")
        op.execute(f"DROP FUNCTION {name}()")
