"""PostgreSQL: a batch that grows the journal far past what its statistics say has them taken anew.

PostgreSQL plans each statement for the sizes its statistics give the tables, and a connection
keeps a plan while those statistics stand: the service's prepared statements, and PostgreSQL's own
foreign-key checks (`open_holds.accrual_id` referencing `journal_transactions`, say). A batch grows
the journal in its own transaction, which no statistics see, autovacuum's neither. On a journal
whose statistics say it is empty or small (an `ANALYZE` of a new database, autovacuum after a first
batch rolled back by a crash, a program that posted little so far) a large batch was planned for a
few rows, read the whole growing journal by sequential scan at each check, and kept doing so to its
end: 10,000 events in one transaction took 27 s on a journal analyzed empty where the same batch
took 7 s on one never analyzed (the 0049 revision's note; its guards were the first part of it).

`journal_statistics_follow()` analyzes the tables a batch grows when the journal holds at least
twice the transactions its statistics count, and 1,000 more, and returns the count they say after.
Run inside the batch's transaction, `ANALYZE` counts the batch's own rows, and its new statistics
make every plan of the connection anew. `ledger.journal.follow_statistics` calls it after a flush
that leaves the journal that much larger than the count its connection last had back, so a batch
grown from nothing asks about log2(size / 1,000) times, and one on a journal whose statistics stand
asks once a connection. `SKIP_LOCKED`: a table locked by a `VACUUM` or another `ANALYZE` is left as
it is, and the batch never waits for them. Its lock (SHARE UPDATE EXCLUSIVE, to the batch's commit)
keeps another `ANALYZE` or `VACUUM` of the table waiting that long, autovacuum skips the table; reads
and writes are not held up.

The function runs with its owner's rights (SECURITY DEFINER: the application role owns no table and
may not analyze one) and is executable by the application role only. SQLite: nothing (its planner
reads by index whatever its statistics say).

Revision ID: 0050
Revises: 0049
Create Date: 2026-12-06
"""

from alembic import op

revision = "0050"
down_revision = "0049"
branch_labels = None
depends_on = None

APP_ROLE = "revshare_app"
FUNCTION = "journal_statistics_follow()"
GROWTH_MIN = 1000  # `ledger.journal.STATISTICS_GROWTH_MIN`
GROWN = ("journal_transactions", "journal_lines", "revenue_events", "open_holds", "cpa_claims_taken")

COUNTED = "(SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'journal_transactions'::regclass)"

POSTGRES_FUNCTION = f"""
CREATE FUNCTION {FUNCTION} RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET jit = off AS $$
DECLARE
    held bigint := coalesce((SELECT t.id FROM journal_transactions t ORDER BY t.id DESC LIMIT 1), 0);
    counted bigint := {COUNTED};
BEGIN
    IF held >= 2 * counted + {GROWTH_MIN} THEN
        ANALYZE (SKIP_LOCKED) {", ".join(GROWN)};
        counted := {COUNTED};
    END IF;
    RETURN counted;
END
$$"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(POSTGRES_FUNCTION)
    op.execute(f"REVOKE EXECUTE ON FUNCTION {FUNCTION} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {FUNCTION} TO {APP_ROLE}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION {FUNCTION}")
