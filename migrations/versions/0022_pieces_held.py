"""What is posted against an accrued piece stays within it, in the database too.

`ledger.commission` caps every clawback at what its piece still holds, takes it from pending while
the piece is held and from available once it is released, and `ledger.holds` releases what is left
pending, once. The database did not hold any of it: a clawback of 9,999.99 against an accrual of
20.00, inserted by raw SQL, was accepted (and `verify` said ok), as was a release of a reversed
accrual. Now a `clawback` or `release` transaction is refused unless:

- it names its piece (`accrual_id`): an `accrual`, `cpa` or `override` transaction of the same
  partner and invoice, one credit to that partner's pending account, not reversed;
- its lines are in the piece's currency and on the accounts of its kind: a clawback debits the
  partner's pending or available account and credits `expense:commission`, a release debits
  pending and credits available (another partner's account, or a credit to the partner, is refused);
- the piece's standing clawbacks (those not reversed) take no more than its amount;
- what stands against its pending amount, the clawbacks from the account it credited (its
  partner's pending account) and its release, is no more than its amount;
- a release is the piece's only standing one.

And a piece is reversed only after what stands against it: a reversal of a transaction that a
standing clawback or release names is refused (`ledger.reversals` reverses those first).

A piece's amount is its credit (an accrual is one transfer into the partner's pending account).
Lines are written before their header, which seals them, so a header's trigger sees its lines and
those of every transaction before it; on PostgreSQL the trigger runs at the end of its statement,
and so sees the totals the whole batch leaves, which are what must hold. Rows already written are
left as they are: `revshare verify` names what breaks the rules (`piece_overdrawn`,
`piece_link_broken`), and a `payout` transaction that no payout record names (`payout_unrecorded`).

A partial index on `accrual_id` (the transactions posted against a piece: clawbacks, releases and
won disputes' reinstatements; an accrual's is null) serves the trigger; the ingestion of paid
invoices, whose accruals name no piece, does not write to it. SQLite: row triggers after insert
(migration 0018's maker), for clawbacks and releases, and for reversals. PostgreSQL: a statement
trigger (see `POSTGRES_GUARD`), which sees the whole statement's rows where SQLite's row triggers see
the rows inserted before (Python posts what stands against a piece before the piece's reversal, as
either needs). Measured on 15,196 releases in one transaction (10,000 paid invoices, 200 partners):
the check adds about 5-20 µs to a release's 175-180 µs on PostgreSQL, and is within noise on SQLite;
it adds about 18 µs to a single payment's posting on PostgreSQL, which holds no clawback or release.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from migrations.earlier import revision as _revision

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

_0018 = _revision("0018_rules_held.py")

POSTED_AGAINST_A_PIECE = "accrual_id IS NOT NULL"
ONLY_WHEN = "n.kind IN ('clawback', 'release')"

# The partner's accounts, as the chart names them (':name' in a migration would be a bind parameter).
PARTNER_ACCOUNT = "'liability:partner:' || n.partner_id || ':' || '{suffix}'"
PENDING_OF_N, AVAILABLE_OF_N = (PARTNER_ACCOUNT.format(suffix=suffix) for suffix in ("pending", "available"))

# The piece `m` is the one credit line of the accrual the new row names (an accrual is one transfer
# into its partner's pending account), and stands: its transaction is an accrual, CPA or override of
# the new row's partner and invoice, not reversed. The new row's lines are in the piece's currency,
# and on the accounts of its kind: a clawback debits the partner's pending (`m`'s) or available
# account and credits `expense:commission`; a release debits pending and credits available. What
# stands against the piece, read from its postings by the index on accrual_id: the debits of the
# clawbacks and releases none reverses, in one group, which refuses (HAVING) when the clawbacks take
# more than the piece's amount, when the clawbacks from its pending account and its release do, or
# when it has two releases. An account's name is read by the line's account id, a subquery of its own:
# joined by name, SQLite and PostgreSQL would read the account's lines by the balance index.
OVERDRAWN = ("SELECT 1 FROM journal_transactions c JOIN journal_lines l ON l.transaction_id = c.id AND l.side = 'D'"
             " WHERE c.accrual_id = n.accrual_id AND c.accrual_id IS NOT NULL AND c.kind IN ('clawback', 'release')"
             " AND NOT EXISTS (SELECT 1 FROM journal_transactions r WHERE r.reverses_id = c.id)"
             " GROUP BY c.accrual_id"
             " HAVING sum(CASE WHEN c.kind = 'clawback' THEN l.amount_minor ELSE 0 END) > m.amount_minor"
             " OR sum(CASE WHEN c.kind = 'release' OR l.account_id = m.account_id THEN l.amount_minor ELSE 0 END)"
             " > m.amount_minor"
             " OR sum(CASE WHEN c.kind = 'release' THEN 1 ELSE 0 END) > 1")
NAME_OF = "(SELECT {alias}.name FROM accounts {alias} WHERE {alias}.id = {line}.account_id)"
LINE_OF_ITS_KIND = ("o.side = 'D' AND (o.account_id = m.account_id OR n.kind = 'clawback' AND {name} = {available})"
                    " OR o.side = 'C' AND {name} = CASE n.kind WHEN 'clawback' THEN 'expense:commission'"
                    " ELSE {available} END").format(name=NAME_OF.format(alias="a", line="o"), available=AVAILABLE_OF_N)
A_PIECE = ("SELECT 1 FROM journal_lines m JOIN journal_transactions p ON p.id = m.transaction_id"
           " WHERE m.transaction_id = n.accrual_id AND m.side = 'C'"
           f" AND {NAME_OF.format(alias='pa', line='m')} = {PENDING_OF_N}"
           " AND NOT EXISTS (SELECT 1 FROM journal_lines m2 WHERE m2.transaction_id = m.transaction_id"
           " AND m2.side = 'C' AND m2.id <> m.id)"
           " AND p.kind IN ('accrual', 'cpa', 'override') AND p.partner_id = n.partner_id"
           " AND (p.invoice_id = n.invoice_id OR p.invoice_id IS NULL AND n.invoice_id IS NULL)"
           " AND NOT EXISTS (SELECT 1 FROM journal_lines o WHERE o.transaction_id = n.id AND (o.currency <> m.currency"
           f" OR NOT ({LINE_OF_ITS_KIND})))")
PIECE_STANDS = "NOT EXISTS (SELECT 1 FROM journal_transactions r WHERE r.reverses_id = p.id)"
A_PIECE_WITHIN = f"{A_PIECE} AND {PIECE_STANDS} AND NOT EXISTS ({OVERDRAWN})"
REFUSED_WHEN = f"n.accrual_id IS NULL OR n.partner_id IS NULL OR NOT EXISTS ({A_PIECE_WITHIN})"
MESSAGE = ("journal_transactions: a clawback or release names a live accrual of its partner, invoice and currency,"
           " on the accounts of its kind, and what stands against the accrual stays within its amount, released once")

# A piece is reversed after what stands against it: a reversal of a transaction that a standing
# clawback or release names is refused (`ledger.reversals` reverses those first, in the same posting).
REVERSAL = "n.kind = 'reversal'"
REVERSED_UNDER = ("EXISTS (SELECT 1 FROM journal_transactions c WHERE c.accrual_id = n.reverses_id"
                  " AND c.accrual_id IS NOT NULL AND c.kind IN ('clawback', 'release')"
                  " AND NOT EXISTS (SELECT 1 FROM journal_transactions r WHERE r.reverses_id = c.id))")
REVERSED_MESSAGE = "journal_transactions: an accrual is reversed after the clawbacks and release that stand against it"

# PostgreSQL: one statement trigger over the statement's new headers, by index as in migration 0019.
# A release run inserts a hundred headers or thousands at once, and a row trigger's call cost as much
# as its check (about 120 µs a release, against 160 µs for the release itself). Run on every
# statement, the check cost the function about 90 µs a call, though the query itself ran in 4 µs
# (pg_stat_statements): a statement with no clawback or release, such as a payment's posting, stops
# after a small query (18 µs a call).
BY_INDEX = "SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off"  # 0019's, as of it
POSTGRES_GUARD = f"""
CREATE FUNCTION journal_transactions_within_its_piece() RETURNS trigger LANGUAGE plpgsql {BY_INDEX} AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM added n WHERE {ONLY_WHEN}) THEN
    IF EXISTS (SELECT 1 FROM added n WHERE {ONLY_WHEN} AND ({REFUSED_WHEN})) THEN
      RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'check_violation';
    END IF;
  END IF;
  IF EXISTS (SELECT 1 FROM added n WHERE {REVERSAL}) THEN
    IF EXISTS (SELECT 1 FROM added n WHERE {REVERSAL} AND {REVERSED_UNDER}) THEN
      RAISE EXCEPTION '{REVERSED_MESSAGE}' USING ERRCODE = 'check_violation';
    END IF;
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER trg_journal_transactions_within_its_piece AFTER INSERT ON journal_transactions
REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION journal_transactions_within_its_piece()"""


def upgrade() -> None:
    op.create_index("ix_journal_transactions_accrual_id", "journal_transactions", ["accrual_id"],
                    sqlite_where=sa.text(POSTED_AGAINST_A_PIECE), postgresql_where=sa.text(POSTED_AGAINST_A_PIECE))
    postgres = op.get_bind().dialect.name == "postgresql"
    guard = POSTGRES_GUARD if postgres else ";\n\n".join([
        _0018.sqlite_rule("journal_transactions", "within_its_piece", REFUSED_WHEN, MESSAGE, ONLY_WHEN),
        _0018.sqlite_rule("journal_transactions", "reversed_last", REVERSED_UNDER, REVERSED_MESSAGE, REVERSAL)])
    for statement in guard.split(";\n\n"):
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the guards are only ever replaced by a new migration")
