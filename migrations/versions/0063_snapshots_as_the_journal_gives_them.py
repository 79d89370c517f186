"""The database holds a close's snapshot to the journal, for a writer that goes around Python.

`ledger.periods` snapshots, at each close, every account's debits and credits in each currency up
to the period's end: the previous close's snapshot plus the lines dated from its end to this one's.
Balances as of an instant after a close are read from its snapshot forward (`ledger.balances.sums`).
Migration 0018 held a snapshot's values to integers and its rows to be written before their close,
which seals them; nothing held the values themselves. A close written around the service with a
snapshot of 100,000.00 USD more on a partner's available account than its lines gave was
accepted: the liabilities report showed it, and the next payout run paid it (`revshare verify`
named the snapshot, `snapshot_altered`, once the money was gone).

Now a close is refused unless its snapshot holds, for each account and currency, the previous
close's snapshot plus the lines dated in between, row for row: none missing, none more, none
different. The check runs after the close's insert, once a month, and reads the lines since the
previous close by the journal's period index, both bounds one range of it, as the close itself did
(a first version's `IS NULL OR` on the lower bound read every line before the end: 0.8 s a close
at two million lines of history, against 0.005 s).

Rows already written are left as they are: `revshare verify` compares every snapshot.

Revision ID: 0063
Revises: 0062
Create Date: 2026-12-07
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0063"
down_revision = "0062"
branch_labels = None
depends_on = None

_0018 = _revision("0018_rules_held.py")  # sqlite_rule, postgres_rule

SETTINGS = "SET search_path = public, pg_temp SET jit = off"
MESSAGE = "period_closes: a snapshot is the previous snapshot and the lines dated since, account by account"
PREVIOUS_END = "(SELECT max(p.ends_at_us) FROM period_closes p WHERE p.ends_at_us < n.ends_at_us)"
EARLIEST_US = -(2**63)  # before any line: the first close reads every line before its end
EXPECTED = (
    "SELECT e.account_id, e.currency, sum(e.debit_minor), sum(e.credit_minor) FROM ("
    " SELECT s.account_id, s.currency, s.debit_minor, s.credit_minor FROM period_snapshots s"
    " JOIN period_closes p ON p.period = s.period"
    f" WHERE p.ends_at_us = {PREVIOUS_END}"
    " UNION ALL"
    " SELECT l.account_id, l.currency, CASE l.side WHEN 'D' THEN l.amount_minor ELSE 0 END,"
    " CASE l.side WHEN 'C' THEN l.amount_minor ELSE 0 END FROM journal_lines l"
    # Both bounds one range of the journal's period index (`IS NULL OR` read every line before the end)
    f" WHERE l.effective_at_us < n.ends_at_us AND l.effective_at_us >= coalesce({PREVIOUS_END}, {EARLIEST_US})"
    ") e GROUP BY e.account_id, e.currency")
ACTUAL = ("SELECT a.account_id, a.currency, a.debit_minor, a.credit_minor FROM period_snapshots a"
          " WHERE a.period = n.period")
UNLIKE = f"EXISTS ({EXPECTED} EXCEPT {ACTUAL}) OR EXISTS ({ACTUAL} EXCEPT {EXPECTED})"
NAME = "snapshot_as_the_journal"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    make = _0018.postgres_rule if postgres else _0018.sqlite_rule
    for statement in make("period_closes", NAME, UNLIKE, MESSAGE, None).split(";\n\n"):
        op.execute(statement)
    if postgres:
        op.execute(f"ALTER FUNCTION period_closes_{NAME}() {SETTINGS}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER trg_period_closes_{NAME} ON period_closes")
        op.execute(f"DROP FUNCTION period_closes_{NAME}()")
        return
    op.execute(f"DROP TRIGGER trg_period_closes_{NAME}")
