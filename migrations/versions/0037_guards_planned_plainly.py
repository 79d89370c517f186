"""PostgreSQL runs the database's own functions without JIT compilation, and the seal's rules without
bitmap scans, so that a journal whose tables have no statistics yet is checked by key as fast as one
that has them.

Before autovacuum first analyzes a table (a minute or more after a bulk load, or on a young book
under steady posting), the planner prices a query over a statement's transition table far above
what it costs. Over a book of 20,000 payments loaded in batches (53,484 held pieces, 106,968
lines, three partners) and not yet analyzed, the seal's piece rules (migration 0032) cost 0.75 s a
statement of 100 releases: about 400 ms of it compiling the query by JIT, since its estimated cost
passed `jit_above_cost`, and the rest in a bitmap scan of the lines' period index by `side`, ANDed
with the index on `transaction_id` by the generic plan, 54,000 index entries for each release. A
payout run that first released the backlog over HTTP got through 2,300 releases in its 20 s.

The functions run a few key lookups on the rows of one statement: compiling them never pays, and
the seal reads each row it needs by its key. With `jit = off` on every function of the schema, and
`enable_bitmapscan = off` on the seal besides its other planner settings, the same statement costs
0.02-0.04 s (0.38 s with JIT alone off), and 0.013-0.017 s once the tables are analyzed, either way.

SQLite: nothing changes.

Revision ID: 0037
Revises: 0036
Create Date: 2026-12-05
"""

from alembic import op

revision = "0037"
down_revision = "0036"
branch_labels = None
depends_on = None

# Every function of the schema (all the migrations' own): a statement's or a row's guards, the
# running totals, the program revision, the closes' documents.
EACH_FUNCTION = """DO $$
DECLARE
  f regprocedure;
BEGIN
  FOR f IN SELECT p.oid::regprocedure FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
           AND p.prokind = 'f' LOOP
    EXECUTE format('ALTER FUNCTION %s {action}', f);
  END LOOP;
END $$"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(EACH_FUNCTION.format(action="SET jit = off"))
    op.execute("ALTER FUNCTION journal_transactions_seal() SET enable_bitmapscan = off")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER FUNCTION journal_transactions_seal() RESET enable_bitmapscan")
    op.execute(EACH_FUNCTION.format(action="RESET jit"))
