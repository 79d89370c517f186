"""PostgreSQL: the journal's statement guards look up the rows they check by index, whatever the
planner's statistics say.

Two guards join the statement's new rows (a transition table) to a whole journal table:
`journal_lines_refuse_sealed` (new lines against `journal_transactions`) and
`journal_transactions_seal` (new headers against `journal_lines` and their predecessors in
`journal_transactions`). PL/pgSQL plans each query once per connection and keeps the plan until the
tables' statistics change. A connection whose first posting found a small journal, or statistics
older than the journal's growth (autovacuum analyzes after 10% of a table is new), kept a hash join
over a sequential scan of the whole table: every later posting on that connection read every
header and every line. Measured with single-event postings on a fresh database, 3,000 of them: the
sealed-lines guard cost 0.39 ms a call, growing with the journal, against 0.05 ms by index.

The checked rows are always the statement's own (one posting's, or one batch's of at most
10,000 events), so looking each one up by index is the right plan at every journal size; the two
functions run with sequential scans, hash and merge joins off, which leaves the planner nested
loops over the indexes (`pk_journal_transactions`, `ix_journal_lines_transaction_id`). The
settings apply only while the functions run, and a later `CREATE OR REPLACE FUNCTION` of either
must set them again (it replaces them). SQLite's row triggers already look rows up by key:
nothing to do there.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

GUARDS = ("journal_lines_refuse_sealed()", "journal_transactions_seal()")
BY_INDEX = {"enable_seqscan": "off", "enable_hashjoin": "off", "enable_mergejoin": "off"}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        settings = " ".join(f"SET {name} = {value}" for name, value in BY_INDEX.items())
        for function in GUARDS:
            op.execute(f"ALTER FUNCTION {function} {settings}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for function in GUARDS:
            op.execute(f"ALTER FUNCTION {function} RESET ALL")
