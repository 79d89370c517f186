"""PostgreSQL runs the database's own functions without JIT compilation, and the statement guards that
read rows by key without bitmap scans or materialized scans, so that a journal whose tables have no
statistics yet is checked by key as fast as one that has them.

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

The guard of the holds queue (`open_holds_of_a_piece`, migration 0019) did worse: on such a book the
planner took `journal_transactions` for a few rows, read the accruals whole through its primary key
into a materialized inner side, and compared every queued hold of the statement with every one of
them. Bulk ingestion grew quadratic: batches of 1,000 payments took 0.35 s at first and 2.7 s by
the twelfth, and 0.21 s each from the moment the function ran with `enable_material = off`. The
four guards that read by key (sequential scans, hash and merge joins off already) run with bitmap
scans and materialized sides off too.

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


# The statement guards that read each new row's facts by key (migrations 0009, 0019, 0032, 0034:
# sequential scans, hash and merge joins off already): nor bitmap scans, nor a materialized inner side.
BY_KEY = ("journal_lines_refuse_sealed", "journal_transactions_seal", "open_holds_of_a_piece",
          "revenue_events_as_posted")
BY_KEY_SETTINGS = ("enable_bitmapscan", "enable_material")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(EACH_FUNCTION.format(action="SET jit = off"))
    for function in BY_KEY:
        op.execute(f"ALTER FUNCTION {function}() " + " ".join(f"SET {name} = off" for name in BY_KEY_SETTINGS))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for function in BY_KEY:
        op.execute(f"ALTER FUNCTION {function}() " + " ".join(f"RESET {name}" for name in BY_KEY_SETTINGS))
    op.execute(EACH_FUNCTION.format(action="RESET jit"))
