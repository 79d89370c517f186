"""An adjustment is not dated in the future, in the database too.

`ledger.payouts.adjust` refuses an `effective_at` after the instant the adjustment is recorded at
(422 naming `effective_at`), as reversals, payout runs, releases and settlements refuse theirs.
Dated ahead, an adjustment would change a partner's balance from an instant nobody has seen yet,
unseen by every report until then, and a year typed wrong would leave it there for years. Now a
journal transaction of kind `adjustment` whose asked-for instant (`original_effective_at_us` when
the posting was moved to the first open period, else `effective_at_us`) is more than five minutes
after its `recorded_at_us` is refused, on both engines, as migration 0017 refuses a revenue event
dated past its recording.

The five minutes are the events' clock skew, for the same reason: a writer reads its clock more
than once. `ledger.journal.Batch` stamps `recorded_at_us` once, when it takes the journal's lock,
and a writer going around Python that dates an adjustment "now" from a later reading, or from
another host's clock, would otherwise be refused for an instant no one can tell from now. The rule
is for an adjustment dated ahead by days or years; Python keeps the exact bound.

SQLite: a row trigger after insert whose `WHEN` tests the kind first, so another header pays one
comparison. PostgreSQL: a row trigger after insert called only for an adjustment dated ahead (the
`WHEN` holds the whole condition, which needs no subquery), so a batch's COPY queues no trigger
event for any other header. Rows already written are left as they are.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-02
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

# Migration 0018's trigger makers (its file name is no module name).
_0018 = _revision("0018_rules_held.py")

CLOCK_SKEW_US = 5 * 60 * 1_000_000  # ledger.revenue's, as of this revision
# The instant asked for, of a new header `n`, against when it was recorded; the kind first, for SQLite.
ASKED_FOR = "coalesce(n.original_effective_at_us, n.effective_at_us)"
ADJUSTMENT_AHEAD = f"n.kind = 'adjustment' AND {ASKED_FOR} > n.recorded_at_us + {CLOCK_SKEW_US}"
MESSAGE = "journal_transactions: an adjustment is dated at most five minutes after it is recorded"


def statements(engine: str) -> list[str]:
    assert "'" not in MESSAGE, MESSAGE  # quoted in SQL as it stands
    if engine == "postgresql":
        made = _0018.postgres_rule("journal_transactions", "adjustment_in_time", ADJUSTMENT_AHEAD, MESSAGE,
                                   ADJUSTMENT_AHEAD)
    else:
        made = _0018.sqlite_rule("journal_transactions", "adjustment_in_time", ADJUSTMENT_AHEAD, MESSAGE, None)
    return made.split(";\n\n")


def upgrade() -> None:
    for statement in statements(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the guards are only ever replaced by a new migration")
