"""What is posted against an accrued piece stays within it, in the database too.

`ledger.commission` caps every clawback at what its piece still holds, takes it from pending while
the piece is held and from available once it is released, and `ledger.holds` releases what is left
pending, once. The database did not hold any of it: a clawback of 9,999.99 against an accrual of
20.00, inserted by raw SQL, was accepted (and `verify` said ok), as was a release of a reversed
accrual. Now a `clawback` or `release` transaction is refused unless:

- it names its piece (`accrual_id`): an `accrual`, `cpa` or `override` transaction of the same
  partner, in the same currency, not reversed;
- the piece's standing clawbacks (those not reversed) take no more than its amount;
- what stands against its pending amount, the clawbacks from its partner's pending account and its
  release, is no more than its amount;
- a release is the piece's only standing one.

A piece's amount is its credit (an accrual is one transfer into the partner's pending account).
Lines are written before their header, which seals them, so a header's trigger sees its lines and
those of every transaction before it; on PostgreSQL an AFTER row trigger runs at the end of its
statement, and so sees the totals the whole batch leaves, which are what must hold. Rows already
written are left as they are: `revshare verify` names what breaks the rules (`piece_overdrawn`,
`piece_link_broken`), and a `payout` transaction that no payout record names (`payout_unrecorded`).

A partial index on `accrual_id` (the transactions posted against a piece: clawbacks, releases and
won disputes' reinstatements; an accrual's is null) serves the trigger; the ingestion of paid
invoices, whose accruals name no piece, does not write to it. SQLite: a row trigger after insert;
PostgreSQL: a row trigger called only for clawbacks and releases (migration 0018's makers).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-02
"""

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

_spec = importlib.util.spec_from_file_location("_revision_0018", Path(__file__).with_name("0018_rules_held.py"))
_0018 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_0018)

POSTED_AGAINST_A_PIECE = "accrual_id IS NOT NULL"
ONLY_WHEN = "n.kind IN ('clawback', 'release')"

# The transactions against the new row's piece that stand (none reverses them), of a kind.
STANDING = ("SELECT coalesce(sum(l.amount_minor), 0) FROM journal_transactions c"
            " JOIN journal_lines l ON l.transaction_id = c.id AND l.side = 'D'{join}"
            " WHERE c.accrual_id = n.accrual_id AND c.accrual_id IS NOT NULL AND c.kind = '{kind}'"
            " AND NOT EXISTS (SELECT 1 FROM journal_transactions r WHERE r.reverses_id = c.id)")
# The partner's pending account, as the chart names it (':name' in a migration would be a bind parameter).
PENDING_ACCOUNT = (" JOIN accounts a ON a.id = l.account_id"
                   " AND a.name = 'liability:partner:' || n.partner_id || ':' || 'pending'")
AMOUNT = "(SELECT sum(p.amount_minor) FROM journal_lines p WHERE p.transaction_id = n.accrual_id AND p.side = 'C')"
NOT_ITS_PIECE = ("NOT EXISTS (SELECT 1 FROM journal_transactions p WHERE p.id = n.accrual_id"
                 " AND p.kind IN ('accrual', 'cpa', 'override') AND p.partner_id = n.partner_id)"
                 " OR EXISTS (SELECT 1 FROM journal_transactions r WHERE r.reverses_id = n.accrual_id)"
                 " OR EXISTS (SELECT 1 FROM journal_lines l WHERE l.transaction_id = n.id AND l.currency NOT IN"
                 " (SELECT p.currency FROM journal_lines p WHERE p.transaction_id = n.accrual_id))")
OVERDRAWN = (f"({STANDING.format(join='', kind='clawback')}) > {AMOUNT}"
             f" OR ({STANDING.format(join=PENDING_ACCOUNT, kind='clawback')})"
             f" + ({STANDING.format(join='', kind='release')}) > {AMOUNT}")
RELEASED_TWICE = ("n.kind = 'release' AND (SELECT count(*) FROM journal_transactions c"
                  " WHERE c.accrual_id = n.accrual_id AND c.accrual_id IS NOT NULL AND c.kind = 'release'"
                  " AND NOT EXISTS (SELECT 1 FROM journal_transactions r WHERE r.reverses_id = c.id)) > 1")
REFUSED_WHEN = f"n.accrual_id IS NULL OR n.partner_id IS NULL OR {NOT_ITS_PIECE} OR {OVERDRAWN} OR {RELEASED_TWICE}"
MESSAGE = ("journal_transactions: a clawback or release names a live accrual of its partner and currency,"
           " and what stands against the accrual stays within its amount, released once")


def upgrade() -> None:
    op.create_index("ix_journal_transactions_accrual_id", "journal_transactions", ["accrual_id"],
                    sqlite_where=sa.text(POSTED_AGAINST_A_PIECE), postgresql_where=sa.text(POSTED_AGAINST_A_PIECE))
    postgres = op.get_bind().dialect.name == "postgresql"
    make = _0018.postgres_rule if postgres else _0018.sqlite_rule
    for statement in make("journal_transactions", "within_its_piece", REFUSED_WHEN, MESSAGE, ONLY_WHEN).split(";\n\n"):
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the guards are only ever replaced by a new migration")
