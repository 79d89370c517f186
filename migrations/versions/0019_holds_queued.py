"""The queue of holds (`open_holds`) holds what `ledger.revenue` queues, in the database too:

- a queued hold names an earning transaction (`accrual`, `cpa` or `override`) and matures when that
  transaction does (`journal_transactions.matures_at_us`, which its request hash covers): a hold
  queued with an earlier maturity would release the amount before its time;
- a queued hold is never updated. Python only inserts holds, when it posts their piece, and
  deletes them, in the transaction that releases or ends them. PostgreSQL's application role had
  no UPDATE grant (migration 0005); the owner and SQLite now meet a trigger too.

And the queue's index is by maturity then accrual, the order in which the release job takes it
(`ledger.holds.release_in_transactions`).

Deleting stays allowed: the queue is a work list, and the release job takes its holds off it.
A hold deleted otherwise leaves its amount pending for ever; `revshare verify` names that
(`holds_missing`: each partner's pending balance against what its queued pieces hold).

SQLite: a row trigger after insert (the check is one primary-key lookup). PostgreSQL: one
statement trigger over the statement's new rows, as for the journal's own guards, run with
sequential scans and hash and merge joins off (migration 0009): a batch queues tens of thousands of
holds at once, each looked up by `pk_journal_transactions`, whatever the planner's statistics say.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-02
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

# Migration 0018's makers of a row rule on SQLite and of a never-updated guard.
_0018 = _revision("0018_rules_held.py")

NOT_A_PIECE = ("NOT EXISTS (SELECT 1 FROM journal_transactions t WHERE t.id = n.accrual_id"
               " AND t.kind IN ('accrual', 'cpa', 'override') AND t.matures_at_us = n.matures_at_us)")
MESSAGE = "open_holds: a queued hold names an accrual and matures when it does"
BY_INDEX = "SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off"

POSTGRES_GUARD = f"""
CREATE FUNCTION open_holds_of_a_piece() RETURNS trigger LANGUAGE plpgsql {BY_INDEX} AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM queued n WHERE {NOT_A_PIECE}) THEN
    RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER trg_open_holds_of_a_piece AFTER INSERT ON open_holds
REFERENCING NEW TABLE AS queued FOR EACH STATEMENT EXECUTE FUNCTION open_holds_of_a_piece()"""


def statements(engine: str) -> list[str]:
    postgres = engine == "postgresql"
    guard = POSTGRES_GUARD if postgres else _0018.sqlite_rule("open_holds", "of_a_piece", NOT_A_PIECE, MESSAGE, None)
    return [*guard.split(";\n\n"), *_0018.never_updated("open_holds", postgres).split(";\n\n")]


def upgrade() -> None:
    for statement in statements(op.get_bind().dialect.name):
        op.execute(statement)
    # The release job takes the queue a hundred holds at a time, by maturity then accrual, each time
    # after the last it took: an index in that order reads each slice by one range scan.
    op.drop_index("ix_open_holds_matures_at_us", table_name="open_holds")
    op.create_index("ix_open_holds_matures_at_us_accrual_id", "open_holds", ["matures_at_us", "accrual_id"])


def downgrade() -> None:
    raise NotImplementedError("the guards are only ever replaced by a new migration")
