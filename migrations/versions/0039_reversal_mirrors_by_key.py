"""PostgreSQL checks that a reversal mirrors its original by the two transactions' lines alone.

Migration 0018's rule asks whether any account and currency of a reversal and its original does not
net to zero: `EXISTS (SELECT 1 FROM journal_lines l WHERE l.transaction_id IN (the two) GROUP BY
l.account_id, l.currency HAVING sum(...) <> 0)`. For the first row of an `EXISTS` the planner read
the lines in the order of their balance index (account, currency, ...), already grouped, filtering
every line of the journal by its transaction: each reversal scanned the whole of `journal_lines`.
On a book of about 12,000 lines that was 2.0-2.7 ms a reversal (`auto_explain`); a batch of 3,000
payments each taking a CPA claim (migration 0038), on about 18,000 lines, whose claimants' bounties
it reverses, spent 14.8 s of its 20 s in this rule (4.9 ms a call, `pg_stat_user_functions`), and
1.2 s in all after this migration (0.014 ms a call). At 10M lines it would be seconds a reversal.

Counting the unbalanced groups needs them all, which the planner finds cheapest through the index
on the lines' transaction: a few index entries a reversal. The rule is the same; SQLite's planner
already took that index, and its trigger is left as it is.

Revision ID: 0039
Revises: 0038
Create Date: 2026-12-05
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0039"
down_revision = "0038"
branch_labels = None
depends_on = None

_0018 = _revision("0018_rules_held.py")
_0038 = _revision("0038_cpa_claims_taken.py")

UNBALANCED = ("SELECT 1 FROM journal_lines l WHERE l.transaction_id IN (NEW.id, NEW.reverses_id)"
              f" GROUP BY l.account_id, l.currency HAVING sum({_0018.SIGNED_AMOUNT}) <> 0")
MESSAGE = next(message for table, name, _, message, _, _ in _0018.RULES
               if (table, name) == ("journal_transactions", "reversal_mirrors"))


def _function(condition: str) -> str:
    return _0038.row_rule_function("journal_transactions_reversal_mirrors", condition, MESSAGE)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_function(f"(SELECT count(*) FROM ({UNBALANCED}) unbalanced) > 0"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_function(_0018.new_row(_0018.NOT_A_MIRROR)))
