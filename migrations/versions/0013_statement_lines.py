"""Statement lines stored by each period's close: a closed month's statement reads one range.

`statement_lines` holds, for every closed period, each partner's statement lines (one per
transaction and currency, the partner's pending and available amounts summed from the journal,
with the transaction's instant and source), keyed and clustered by partner and instant. A closed
period can receive no posting, so its lines are fixed.

The database writes them, not the service: inserting a period's close (`period_closes`, which
`ledger.periods` does after the period's last posting, in the close's transaction) stores its
lines, in one statement, from the journal. No process can close a period without them, not even
one running older code. The table is append-only; on PostgreSQL only that trigger may write it
(the application role may only read it; the function runs as its owner, refuses to run for any
other table or event, and no role may attach it to a trigger of its own; a write not made from
within a trigger is refused), and on SQLite, which has no roles, a row is accepted only inside the
latest closed period. `ledger.verify` compares every row with the journal. There is no foreign key
to `journal_transactions`: checking the key row by row cost PostgreSQL more than the copy itself
(5 s more for a month of a million lines, against 4-5 s for the copy).

Existing closes are filled here, from the journal, before the triggers are in place.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

APP_ROLE = "revshare_app"
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OUTSIDE = "statement_lines: a row must lie inside the latest closed period"
DIRECT = "statement_lines: rows are written by the database when a period closes"

# A period's statement lines (ledger/statement_lines.py, as of this revision), for [{start}, {end}).
OWED = "CASE l.side WHEN 'C' THEN l.amount_minor ELSE -l.amount_minor END"
PENDING = "a.name = 'liability:partner:' || a.partner_id || ':pending'"
FILL = f"""
INSERT INTO statement_lines (partner_id, transaction_id, effective_at_us, original_effective_at_us, kind,
                             customer_id, invoice_id, event_id, pending_minor, available_minor, currency)
SELECT owed.partner_id, owed.transaction_id, owed.effective_at_us, t.original_effective_at_us, t.kind, t.customer_id,
       t.invoice_id, t.event_id, owed.pending, owed.available, owed.currency
  FROM (SELECT a.partner_id, l.effective_at_us, l.transaction_id, l.currency,
               sum(CASE WHEN {PENDING} THEN {OWED} ELSE 0 END) AS pending,
               sum(CASE WHEN {PENDING} THEN 0 ELSE {OWED} END) AS available
          FROM accounts a JOIN journal_lines l ON l.account_id = a.id
         WHERE a.partner_id IS NOT NULL AND ({PENDING} OR a.name = 'liability:partner:' || a.partner_id || ':available')
           AND l.effective_at_us >= {{start}} AND l.effective_at_us < {{end}}
         GROUP BY a.partner_id, l.effective_at_us, l.transaction_id, l.currency) AS owed
  JOIN journal_transactions t ON t.id = owed.transaction_id
 ORDER BY owed.partner_id, owed.effective_at_us, owed.transaction_id, owed.currency
"""

INSIDE_LATEST = ("EXISTS (SELECT 1 FROM period_closes c WHERE c.starts_at_us <= {row}.effective_at_us"
                 " AND {row}.effective_at_us < c.ends_at_us"
                 " AND c.ends_at_us = (SELECT max(ends_at_us) FROM period_closes))")

SQLITE_GUARDS = f"""
CREATE TRIGGER trg_statement_lines_no_update BEFORE UPDATE ON statement_lines
BEGIN SELECT RAISE(ABORT, 'statement_lines is append-only: UPDATE refused'); END;

CREATE TRIGGER trg_statement_lines_no_delete BEFORE DELETE ON statement_lines
BEGIN SELECT RAISE(ABORT, 'statement_lines is append-only: DELETE refused'); END;

CREATE TRIGGER trg_statement_lines_inside_close BEFORE INSERT ON statement_lines
WHEN NOT {INSIDE_LATEST.format(row="NEW")}
BEGIN SELECT RAISE(ABORT, '{OUTSIDE}'); END;

CREATE TRIGGER trg_period_closes_statement_lines AFTER INSERT ON period_closes
BEGIN {FILL.format(start="NEW.starts_at_us", end="NEW.ends_at_us").strip()}; END
"""

POSTGRES_GUARDS = f"""
CREATE TRIGGER trg_statement_lines_no_change BEFORE UPDATE OR DELETE ON statement_lines
FOR EACH ROW EXECUTE FUNCTION journal_refuse_change();

CREATE TRIGGER trg_statement_lines_no_truncate BEFORE TRUNCATE ON statement_lines
FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change();

CREATE FUNCTION statement_lines_refuse_direct() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF pg_trigger_depth() < 2 THEN
    RAISE EXCEPTION '{DIRECT}' USING ERRCODE = 'restrict_violation';
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER trg_statement_lines_direct BEFORE INSERT ON statement_lines
FOR EACH STATEMENT EXECUTE FUNCTION statement_lines_refuse_direct();

CREATE FUNCTION period_closes_store_statement_lines() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
  IF TG_RELID <> 'public.period_closes'::regclass OR TG_OP <> 'INSERT' OR TG_LEVEL <> 'ROW' THEN
    RAISE EXCEPTION '{DIRECT}' USING ERRCODE = 'restrict_violation';
  END IF;
  {FILL.format(start="NEW.starts_at_us", end="NEW.ends_at_us").strip()};
  RETURN NULL;
END $$;

CREATE TRIGGER trg_period_closes_statement_lines AFTER INSERT ON period_closes
FOR EACH ROW EXECUTE FUNCTION period_closes_store_statement_lines();

REVOKE EXECUTE ON FUNCTION period_closes_store_statement_lines() FROM PUBLIC
"""


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "statement_lines",
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("effective_at_us", sa.BigInteger, nullable=False),
        sa.Column("transaction_id", Id, autoincrement=False, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("original_effective_at_us", sa.BigInteger, nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=True),
        sa.Column("invoice_id", sa.String(64), nullable=True),
        sa.Column("event_id", sa.String(64), nullable=True),
        sa.Column("pending_minor", sa.BigInteger, nullable=False),
        sa.Column("available_minor", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("partner_id", "effective_at_us", "transaction_id", "currency",
                                name=op.f("pk_statement_lines")),
        sqlite_with_rowid=False,
    )
    # Straight to the driver: as text(), `':pending'` would read as a bound parameter.
    connection = op.get_bind()
    closes = connection.exec_driver_sql("SELECT starts_at_us, ends_at_us FROM period_closes ORDER BY starts_at_us")
    for start, end in closes.all():
        connection.exec_driver_sql(FILL.format(start=int(start), end=int(end)))
    for statement in (POSTGRES_GUARDS if postgres else SQLITE_GUARDS).split(";\n\n"):
        connection.exec_driver_sql(statement)
    if postgres:
        op.execute(f"GRANT SELECT ON statement_lines TO {APP_ROLE}")


def downgrade() -> None:
    raise NotImplementedError("closed periods' records are never dropped by a migration")
