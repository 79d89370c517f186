"""A cheaper journal to write and faster to read at scale: the seal rewritten, indexes reshaped.

Seal (equally strict, same messages, cheaper).

The seal (0001) checks, when a transaction's header is inserted, that it has two or more lines,
that debits equal credits per currency, that every line carries the header's instant, and that the
header continues the hash chain. It did so with three separate scans of the new lines (SQLite: per
header; PostgreSQL: three joins of the statement's transition table with `journal_lines`). Now:

- SQLite: one aggregate pass over the header's lines gives the line count, the net of all lines,
  the first and last currency and whether any line moved; a transaction in one currency is
  balanced exactly when that net is zero (only a multi-currency transaction needs the per-currency
  GROUP BY, and gets it). The checks raise in the same order with the same messages.
- PostgreSQL: one join of the transition table with `journal_lines`, aggregated per (transaction,
  currency) and then per transaction, answers the first three checks; the chain check is as before.

Indexes (the gains are measured by `bench/`):

- `ix_journal_lines_balance` becomes (account, instant, currency, side, amount): a balance or
  statement asks for one account's lines after an instant in any currency, which the old order
  (account, currency, instant, ...) could only answer by reading every line the account ever had
  (at 10M lines a hot partner's account holds hundreds of thousands). Still covering.
- `ix_journal_lines_period` (instant, account, currency, side, amount), covering: sums over a time
  range for all accounts (trial balance after the latest snapshot, a close's snapshot, verify's
  close checks, "does this period have postings") read only that range instead of every line.
- `ix_journal_transactions_effective_at_us`: a close counts its period's transactions by instant.
- `ix_journal_transactions_matures_at_us` and `ix_journal_transactions_accrual_id` are dropped: no
  query reads them (holds are queued in `open_holds`; pieces are found by invoice), yet every
  header paid for both; the foreign key of `accrual_id` needs no index, since its parent rows can
  never be deleted or updated.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

GENESIS = "0" * 64

SQLITE_SEAL = f"""
CREATE TRIGGER trg_journal_transactions_seal AFTER INSERT ON journal_transactions
BEGIN
  SELECT CASE
    WHEN lines.n < 2 THEN RAISE(ABORT, 'journal_transactions: a transaction needs two or more lines')
    WHEN lines.net <> 0 OR (lines.first_currency <> lines.last_currency AND EXISTS (
           SELECT 1 FROM journal_lines WHERE transaction_id = NEW.id GROUP BY currency
           HAVING sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END) <> 0))
      THEN RAISE(ABORT, 'journal_transactions: debits do not equal credits per currency')
    WHEN lines.moved THEN RAISE(ABORT, 'journal_transactions: every line carries its transaction''s effective instant')
    WHEN (NEW.id = 1 AND NEW.prev_hash <> '{GENESIS}')
      OR (NEW.id > 1 AND NOT EXISTS (SELECT 1 FROM journal_transactions WHERE id = NEW.id - 1 AND hash = NEW.prev_hash))
      THEN RAISE(ABORT, 'journal_transactions: the sequence continues the hash chain without a gap')
  END
  FROM (SELECT count(*) AS n, min(currency) AS first_currency, max(currency) AS last_currency,
               sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END) AS net,
               max(effective_at_us <> NEW.effective_at_us) AS moved
          FROM journal_lines WHERE transaction_id = NEW.id) AS lines;
END
"""

POSTGRES_SEAL = f"""
CREATE OR REPLACE FUNCTION journal_transactions_seal() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  too_few boolean;
  unbalanced boolean;
  moved boolean;
BEGIN
  SELECT coalesce(bool_or(t.n < 2), false), coalesce(bool_or(t.unbalanced), false), coalesce(bool_or(t.moved), false)
    INTO too_few, unbalanced, moved
    FROM (SELECT c.id, sum(c.n) AS n, bool_or(c.net <> 0) AS unbalanced, bool_or(c.moved) AS moved
            FROM (SELECT s.id, l.currency, count(l.id) AS n,
                         sum(CASE l.side WHEN 'D' THEN l.amount_minor ELSE -l.amount_minor END) AS net,
                         bool_or(l.effective_at_us <> s.effective_at_us) AS moved
                    FROM sealed s LEFT JOIN journal_lines l ON l.transaction_id = s.id
                   GROUP BY s.id, l.currency) c
           GROUP BY c.id) t;
  IF too_few THEN
    RAISE EXCEPTION 'journal_transactions: a transaction needs two or more lines' USING ERRCODE = 'check_violation';
  END IF;
  IF unbalanced THEN
    RAISE EXCEPTION 'journal_transactions: debits do not equal credits per currency' USING ERRCODE = 'check_violation';
  END IF;
  IF moved THEN
    RAISE EXCEPTION 'journal_transactions: every line carries its transaction''s effective instant'
      USING ERRCODE = 'check_violation';
  END IF;
  IF EXISTS (SELECT 1 FROM sealed s LEFT JOIN journal_transactions p ON p.id = s.id - 1
             WHERE (s.id = 1 AND s.prev_hash <> '{GENESIS}')
                OR (s.id > 1 AND (p.id IS NULL OR p.hash <> s.prev_hash))) THEN
    RAISE EXCEPTION 'journal_transactions: the sequence continues the hash chain without a gap'
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRES_SEAL)  # the trigger calls the function by name: replacing it is enough
    else:
        op.execute("DROP TRIGGER trg_journal_transactions_seal")
        op.execute(SQLITE_SEAL)
    op.drop_index("ix_journal_lines_balance", table_name="journal_lines")
    op.create_index("ix_journal_lines_balance", "journal_lines",
                    ["account_id", "effective_at_us", "currency", "side", "amount_minor"])
    op.create_index("ix_journal_lines_period", "journal_lines",
                    ["effective_at_us", "account_id", "currency", "side", "amount_minor"])
    op.create_index(op.f("ix_journal_transactions_effective_at_us"), "journal_transactions", ["effective_at_us"])
    op.drop_index(op.f("ix_journal_transactions_matures_at_us"), table_name="journal_transactions")
    op.drop_index(op.f("ix_journal_transactions_accrual_id"), table_name="journal_transactions")


def downgrade() -> None:
    raise NotImplementedError("the journal's guards are only ever replaced by a new migration")
