"""Every writer of the journal takes its turn, in the database too; and on SQLite a journal line cannot
be replaced from a connection without `recursive_triggers`.

PostgreSQL. The journal's guards read what is committed: a line is refused when its transaction's
header is (the seal), a header when its instant lies in a closed period. The service's writers take
the journal's advisory lock (`ledger.db.JOURNAL_LOCK_KEY`) before they read, so each sees every
posting and close before its own. A writer that does not, a session of the application role sending
its own SQL, could slip between them:
- a line inserted for the id the service's next posting takes, before that posting, committed after
  it: its deferred foreign key is then met, and the line joins a transaction sealed without it
  (unbalanced, and in whatever period the line names: a payout run paid the line's credit);
- a posting whose header is inserted while a close of its month reads the journal, committed after
  it: the closed period then holds a transaction its snapshot and statements leave out.
`verify` named both afterwards. Now a statement inserting journal lines, headers or a period's close
takes the journal lock before its first row (a trigger before each such statement), so its guards,
after the statement, read every writer before it: at READ COMMITTED each query of a guard reads what
was committed when it started. A transaction at REPEATABLE READ or SERIALIZABLE reads what was
committed when it began, before the lock, so such a statement is refused there. The service writes
at READ COMMITTED and holds the lock already (a second take costs a lookup in the session's own lock
table); its readers, at REPEATABLE READ, write nothing.

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

JOURNAL_LOCK_KEY = 0x7265_7673_6861_7265 & 0x7FFF_FFFF_FFFF_FFFF  # ledger.db's, as of this revision
TABLES = ("journal_lines", "journal_transactions", "period_closes")

POSTGRES_FUNCTION = f"""CREATE FUNCTION journal_writer_in_turn() RETURNS trigger LANGUAGE plpgsql
SET search_path = public, pg_temp SET jit = off AS $$
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION '%: the journal is written at READ COMMITTED only, not %', TG_TABLE_NAME,
      upper(current_setting('transaction_isolation')) USING ERRCODE = 'check_violation';
  END IF;
  PERFORM pg_advisory_xact_lock({JOURNAL_LOCK_KEY});
  RETURN NULL;
END $$"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.execute(_0036.guard("journal_lines", (("id",),)))
        return
    op.execute(POSTGRES_FUNCTION)
    for table in TABLES:
        op.execute(f"CREATE TRIGGER trg_{table}_in_turn BEFORE INSERT ON {table}\n"
                   "FOR EACH STATEMENT EXECUTE FUNCTION journal_writer_in_turn()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.execute("DROP TRIGGER trg_journal_lines_no_replace")
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER trg_{table}_in_turn ON {table}")
    op.execute("DROP FUNCTION journal_writer_in_turn()")
