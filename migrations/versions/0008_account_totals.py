"""Running totals per account and currency, kept by the database as each journal line is inserted.

`account_totals` holds, for every (account, currency) that has lines, the sum of its debits, the
sum of its credits, the id of the last line counted and the latest effective instant among its
lines. A balance as of an instant after that latest instant (a balance as of now, the usual case:
a partner's, the trial balance, the liabilities report) then reads one row per account instead of
summing the lines since the latest close, which for a busy partner late in an open month is tens of
thousands of lines. Balances as of an earlier instant still come from the latest snapshot before it
plus the lines after it (ledger/balances.py).

The database, not Python, writes the totals, so they cannot drift from the lines:

- SQLite: a row trigger on `journal_lines` upserts the line into its account's row. Guards refuse
  every other write. An inserted row (or the insert an upsert starts with) must carry exactly one
  line's amount and instant, and that line must be the first of its account and currency or, when
  the row exists, newer than the last one counted: every line is counted as it is inserted, so only
  the line being inserted qualifies (this also holds with `recursive_triggers` off, when `INSERT OR
  REPLACE` would delete the row unguarded). An update must add exactly that line to the row. Rows
  are never deleted. Line ids are assigned by the database in increasing order; a line inserted
  with an id below its account's last counted line is refused.
- PostgreSQL: a statement trigger over the statement's new lines (`added`) upserts one row per
  (account, currency), so a batch's COPY costs one update per account touched, not per line. Its
  function is SECURITY DEFINER: the application role has only SELECT on the table, and statement
  triggers refuse any write not made from within a trigger (`pg_trigger_depth()`), TRUNCATE too
  (statement triggers: an upsert pays two guard calls, not two per row).

`ledger.verify` recomputes every row from the lines. The table is filled from the lines already in
the journal here, under a lock that holds new lines back until the triggers are in place.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

APP_ROLE = "revshare_app"
REFUSED = "account_totals: totals are kept by the database from the journal lines"

FILL = """
INSERT INTO account_totals (account_id, currency, debit_minor, credit_minor, last_line_id, latest_effective_at_us)
SELECT account_id, currency, sum(CASE side WHEN 'D' THEN amount_minor ELSE 0 END),
       sum(CASE side WHEN 'C' THEN amount_minor ELSE 0 END), max(id), max(effective_at_us)
  FROM journal_lines GROUP BY account_id, currency
"""

SQLITE_TRIGGERS = f"""
CREATE TRIGGER trg_journal_lines_totals AFTER INSERT ON journal_lines
BEGIN
  INSERT INTO account_totals (account_id, currency, debit_minor, credit_minor, last_line_id, latest_effective_at_us)
  VALUES (NEW.account_id, NEW.currency, CASE NEW.side WHEN 'D' THEN NEW.amount_minor ELSE 0 END,
          CASE NEW.side WHEN 'C' THEN NEW.amount_minor ELSE 0 END, NEW.id, NEW.effective_at_us)
  ON CONFLICT (account_id, currency) DO UPDATE SET debit_minor = debit_minor + excluded.debit_minor,
    credit_minor = credit_minor + excluded.credit_minor, last_line_id = excluded.last_line_id,
    latest_effective_at_us = max(latest_effective_at_us, excluded.latest_effective_at_us);
END;

CREATE TRIGGER trg_account_totals_insert BEFORE INSERT ON account_totals
WHEN NOT EXISTS (
  SELECT 1 FROM journal_lines l
   WHERE l.id = NEW.last_line_id AND l.account_id = NEW.account_id AND l.currency = NEW.currency
     AND NEW.debit_minor = CASE l.side WHEN 'D' THEN l.amount_minor ELSE 0 END
     AND NEW.credit_minor = CASE l.side WHEN 'C' THEN l.amount_minor ELSE 0 END
     AND NEW.latest_effective_at_us = l.effective_at_us
     -- newer than the row's last counted line; without a row (NULL), the account's first line
     AND coalesce(l.id > (SELECT last_line_id FROM account_totals
                           WHERE account_id = NEW.account_id AND currency = NEW.currency),
                  NOT EXISTS (SELECT 1 FROM journal_lines e
                               WHERE e.account_id = NEW.account_id AND e.currency = NEW.currency AND e.id <> l.id)))
BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END;

CREATE TRIGGER trg_account_totals_update BEFORE UPDATE ON account_totals
WHEN NOT EXISTS (
  SELECT 1 FROM journal_lines l
   WHERE l.id = NEW.last_line_id AND l.id > OLD.last_line_id
     AND NEW.account_id = OLD.account_id AND NEW.currency = OLD.currency
     AND l.account_id = OLD.account_id AND l.currency = OLD.currency
     AND NEW.debit_minor = OLD.debit_minor + CASE l.side WHEN 'D' THEN l.amount_minor ELSE 0 END
     AND NEW.credit_minor = OLD.credit_minor + CASE l.side WHEN 'C' THEN l.amount_minor ELSE 0 END
     AND NEW.latest_effective_at_us = max(OLD.latest_effective_at_us, l.effective_at_us))
BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END;

CREATE TRIGGER trg_account_totals_delete BEFORE DELETE ON account_totals
BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END
"""

POSTGRES_TRIGGERS = f"""
CREATE FUNCTION journal_lines_add_to_totals() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
  INSERT INTO account_totals AS t (account_id, currency, debit_minor, credit_minor, last_line_id,
                                   latest_effective_at_us)
  SELECT account_id, currency, sum(CASE side WHEN 'D' THEN amount_minor ELSE 0 END),
         sum(CASE side WHEN 'C' THEN amount_minor ELSE 0 END), max(id), max(effective_at_us)
    FROM added GROUP BY account_id, currency
  ON CONFLICT (account_id, currency) DO UPDATE SET debit_minor = t.debit_minor + EXCLUDED.debit_minor,
    credit_minor = t.credit_minor + EXCLUDED.credit_minor,
    last_line_id = GREATEST(t.last_line_id, EXCLUDED.last_line_id),
    latest_effective_at_us = GREATEST(t.latest_effective_at_us, EXCLUDED.latest_effective_at_us);
  RETURN NULL;
END $$;

CREATE FUNCTION account_totals_refuse_direct() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF pg_trigger_depth() < 2 THEN
    RAISE EXCEPTION '{REFUSED}: % refused', TG_OP USING ERRCODE = 'restrict_violation';
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER trg_journal_lines_totals AFTER INSERT ON journal_lines
REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION journal_lines_add_to_totals();

CREATE TRIGGER trg_account_totals_direct BEFORE INSERT OR UPDATE OR DELETE ON account_totals
FOR EACH STATEMENT EXECUTE FUNCTION account_totals_refuse_direct();

CREATE TRIGGER trg_account_totals_no_truncate BEFORE TRUNCATE ON account_totals
FOR EACH STATEMENT EXECUTE FUNCTION account_totals_refuse_direct()
"""


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("LOCK TABLE journal_lines IN SHARE ROW EXCLUSIVE MODE")
    op.create_table(
        "account_totals",
        sa.Column("account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("debit_minor", sa.BigInteger(), nullable=False),
        sa.Column("credit_minor", sa.BigInteger(), nullable=False),
        sa.Column("last_line_id", sa.BigInteger(), nullable=False),
        sa.Column("latest_effective_at_us", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("debit_minor >= 0 AND credit_minor >= 0", name=op.f("ck_account_totals_non_negative")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_account_totals_account_id_accounts")),
        sa.PrimaryKeyConstraint("account_id", "currency", name=op.f("pk_account_totals")),
        sqlite_with_rowid=False,
        # Every posting updates its accounts' rows in place: room on each page keeps those updates
        # HOT (no index entry per update) on PostgreSQL.
        postgresql_with={"fillfactor": 50},
    )
    op.execute(FILL)
    if postgres:
        for statement in POSTGRES_TRIGGERS.split(";\n\n"):
            op.execute(statement)
        op.execute(f"GRANT SELECT ON account_totals TO {APP_ROLE}")
    else:
        for statement in SQLITE_TRIGGERS.split(";\n\n"):
            op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the journal's guards are only ever replaced by a new migration")
