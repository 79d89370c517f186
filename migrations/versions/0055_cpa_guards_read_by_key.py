"""The guards of a customer's CPA bounty read a bounty by its key, not every bounty of the customer.

A payment dated before a customer's claimant takes the claim (migration 0038): the claimant's bounty
is reversed and the payment's posted. A customer whose payments come newest first (a backfill, an
import sorted by date descending) moves the claim with each, and holds one bounty a move, all but
the last reversed. Two guards read all of them for each move, so the moves of one customer took time
growing with the square of their number. `python -m bench.claims --moves 4000` (one batch of 1,000,
2,000 and 4,000 such payments): on SQLite 2.6, 3.4 and 4.9 ms a move before this revision, 2.5, 2.8
and 2.3 ms after; on PostgreSQL, where each move's other statements take about 14 ms, the batch of
4,000 took 63 s before and 57 s after (the bounty guard's own time was 0.37 s at 1,000 moves and
1.6 s at 2,000).

- `cpa_once` (migration 0020, remade by 0038): a new bounty is refused while another bounty of its
  customer stands (no reversal names it). It checked every other bounty of the customer; it now
  checks the latest one before the new bounty. That is the same rule on books that kept it: each
  bounty was checked as it was written, and found the one before it reversed, and a reversal is
  never undone, so of the bounties before the new one only the latest may stand. Bounties written
  around the guards are `verify`'s to name (`cpa_twice`), as before. The bounties' partial index
  (0020) now holds the id after the customer, so the latest is read at the end of the customer's
  entries on both engines (PostgreSQL's index kept a customer's entries in no order of id). On
  PostgreSQL, which checks the rows of a statement once it has written them all, one statement
  holding a bounty, its reversal and the bounty after it was refused (the first found the second
  standing) and is now taken: one bounty stands after it, as the rule asks. SQLite fires a table's
  triggers newest first: a row that breaks this rule and another is now refused with this rule's
  message.
- `cpa_claims_taken_held` (0038), SQLite only: a claim is taken once the claimant's bounty is
  reversed. The claimant's bounty is now found by its event (`ix_journal_transactions_event_id`: a
  handful of postings), where SQLite's planner chose the bounties' index by the customer and read
  every bounty of the customer. PostgreSQL keeps reading it by the customer, the index's key, as
  0038 chose (docs/performance.md, "CPA claims taken": by the event, a young book's planner scanned
  the whole of the bounties' index for each claim), at the cost of a filter over the customer's
  bounties, one a move of its claim (0.1-0.2 ms a call at 2,000 moves).

Revision ID: 0055
Revises: 0054
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from migrations.earlier import revision as _revision

revision = "0055"
down_revision = "0054"
branch_labels = None
depends_on = None

_0020 = _revision("0020_cpa_once.py")
_0038 = _revision("0038_cpa_claims_taken.py")

INDEX = "ix_journal_transactions_cpa_customer"
BOUNTY_OF = _0020.BOUNTY.replace(" AND ", " AND {t}.")  # kind = 'cpa' AND accrual_id IS NULL, of table {t}
LATEST_BEFORE_STANDS = (
    "EXISTS (SELECT 1 FROM (SELECT o.id FROM journal_transactions o WHERE o.customer_id = n.customer_id"
    f" AND o.{BOUNTY_OF.format(t='o')} AND o.id < n.id ORDER BY o.id DESC LIMIT 1) latest"
    f" WHERE {_0038.STANDS.format(t='latest')})")

# SQLite: 0038's rule of a claim taken from a claimant whose bounty stands, read by the claimant's
# event. SQLite's unary `+` keeps the customer's column out of its choice of index.
BY_CUSTOMER = "t.customer_id = NEW.customer_id"
[CLAIMANT_RULE] = [refused for refused, _ in _0038.RULES if BY_CUSTOMER in refused]
[CLAIMS_TAKEN_GUARD] = [s for s in _0038.SQLITE_GUARDS.split(";\n\n")
                        if s.startswith(f"CREATE TRIGGER trg_{_0038.TABLE}_held ")]
assert CLAIMS_TAKEN_GUARD.count(CLAIMANT_RULE) == 1 and CLAIMANT_RULE.count(BY_CUSTOMER) == 1
CLAIMS_TAKEN_BY_EVENT = CLAIMS_TAKEN_GUARD.replace(CLAIMANT_RULE, CLAIMANT_RULE.replace(BY_CUSTOMER, f"+{BY_CUSTOMER}"))


def bounties_index(columns: list[str]) -> None:
    op.drop_index(INDEX, "journal_transactions")
    op.create_index(INDEX, "journal_transactions", columns,
                    sqlite_where=sa.text(_0020.BOUNTY), postgresql_where=sa.text(_0020.BOUNTY))


def guards(bounty_rule: str, claims_taken_guard: str) -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in _0038._bounty_rule(bounty_rule, postgres):
        op.execute(statement)
    if not postgres:
        op.execute(f"DROP TRIGGER trg_{_0038.TABLE}_held")
        op.execute(claims_taken_guard)


def upgrade() -> None:
    bounties_index(["customer_id", "id"])
    guards(LATEST_BEFORE_STANDS, CLAIMS_TAKEN_BY_EVENT)


def downgrade() -> None:
    guards(_0038.ANOTHER_STANDING_BOUNTY, CLAIMS_TAKEN_GUARD)
    bounties_index(["customer_id"])
