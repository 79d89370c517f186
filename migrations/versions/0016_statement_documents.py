"""A closed period's statement lines stored as one document per partner and currency.

0013 stored a closed period's statement lines one row each. A busy partner's month is some 14,000
of them, and reading them was mostly the driver making each row's ten values into Python objects
(about 1.8 µs a row in `sqlite3`). `statement_documents` holds the same lines as one JSON array per
period, partner and currency, each line an array of `StatementLine`'s fields in order
(`ledger/statement_lines.py`), written in posting order: one row to read and one `json.loads`.

As before, the database writes them, not the service: inserting a period's close stores every
partner's documents of that period, from the journal, in the close's transaction, so no process can
close a period without them. The table is append-only (on SQLite a REPLACE is refused too, whatever
`recursive_triggers` says) and each document must be a JSON array of at least one line (a check).
On PostgreSQL only that trigger may write it (its function runs as its owner, refuses to run for
any other table, and no role may attach it to a trigger of its own; a write not made from within a
trigger is refused; the application role may only read it), and on SQLite, which has no roles, a
document is accepted only for the latest closed period. `ledger.verify` compares every line of
every document with the journal.

The documents of the periods closed before this revision are made here from the rows 0013 stored,
as they are (verify then compares them with the journal, as it compared the rows: an altered row
stays named), and `statement_lines`, its trigger and functions are dropped. A row outside every
closed period (which only a write behind the triggers' back can leave, and which verify names)
stops the upgrade: it has no period to be stored in.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

APP_ROLE = "revshare_app"
NEW = {"period": "NEW.period", "start": "NEW.starts_at_us", "end": "NEW.ends_at_us"}
OUTSIDE = "statement_documents: a document must be of the latest closed period"
DIRECT = "statement_documents: documents are written by the database when a period closes"

# A period's statement lines (ledger/statement_lines.py, as of this revision), one per partner,
# transaction and currency, summed from the journal over [{start}, {end}): the period {period}.
OWED = "CASE l.side WHEN 'C' THEN l.amount_minor ELSE -l.amount_minor END"
PENDING = "a.name = 'liability:partner:' || a.partner_id || ':pending'"
LINES = f"""
SELECT owed.partner_id, owed.currency, owed.transaction_id, owed.effective_at_us, t.original_effective_at_us, t.kind,
       t.customer_id, t.invoice_id, t.event_id, owed.pending, owed.available
  FROM (SELECT a.partner_id, l.effective_at_us, l.transaction_id, l.currency,
               sum(CASE WHEN {PENDING} THEN {OWED} ELSE 0 END) AS pending,
               sum(CASE WHEN {PENDING} THEN 0 ELSE {OWED} END) AS available
          FROM accounts a JOIN journal_lines l ON l.account_id = a.id
         WHERE a.partner_id IS NOT NULL AND ({PENDING} OR a.name = 'liability:partner:' || a.partner_id || ':available')
           AND l.effective_at_us >= {{start}} AND l.effective_at_us < {{end}}
         GROUP BY a.partner_id, l.effective_at_us, l.transaction_id, l.currency) AS owed
  JOIN journal_transactions t ON t.id = owed.transaction_id"""
FIELDS = ("line.transaction_id, line.effective_at_us, line.original_effective_at_us, line.kind, line.customer_id,"
          " line.invoice_id, line.event_id, line.pending, line.available")
# SQLite (3.40) has no ORDER BY inside an aggregate: the lines come to it in posting order from an
# ordered subquery, which it aggregates as they come; the reader sorts them again all the same.
SQLITE_FILL = f"""
INSERT INTO statement_documents (period, partner_id, currency, lines)
SELECT {{period}}, line.partner_id, line.currency, json_group_array(json_array({FIELDS}))
  FROM ({LINES}
        ORDER BY owed.partner_id, owed.currency, owed.effective_at_us, owed.transaction_id) AS line
 GROUP BY line.partner_id, line.currency"""
POSTGRES_FILL = f"""
INSERT INTO statement_documents (period, partner_id, currency, lines)
SELECT {{period}}, line.partner_id, line.currency,
       json_agg(json_build_array({FIELDS}) ORDER BY line.effective_at_us, line.transaction_id)
  FROM ({LINES}) AS line
 GROUP BY line.partner_id, line.currency"""

# 0013's rows, as they are, into the documents of the closes they lie in.
CONVERT_FIELDS = ("line.transaction_id, line.effective_at_us, line.original_effective_at_us, line.kind,"
                  " line.customer_id, line.invoice_id, line.event_id, line.pending_minor, line.available_minor")
ROWS_IN_CLOSES = ("SELECT c.period, s.* FROM statement_lines s JOIN period_closes c"
                  " ON s.effective_at_us >= c.starts_at_us AND s.effective_at_us < c.ends_at_us")
SQLITE_CONVERT = f"""
INSERT INTO statement_documents (period, partner_id, currency, lines)
SELECT line.period, line.partner_id, line.currency, json_group_array(json_array({CONVERT_FIELDS}))
  FROM ({ROWS_IN_CLOSES} ORDER BY c.period, s.partner_id, s.currency, s.effective_at_us, s.transaction_id) AS line
 GROUP BY line.period, line.partner_id, line.currency"""
POSTGRES_CONVERT = f"""
INSERT INTO statement_documents (period, partner_id, currency, lines)
SELECT line.period, line.partner_id, line.currency,
       json_agg(json_build_array({CONVERT_FIELDS}) ORDER BY line.effective_at_us, line.transaction_id)
  FROM ({ROWS_IN_CLOSES}) AS line
 GROUP BY line.period, line.partner_id, line.currency"""
OUTSIDE_EVERY_CLOSE = ("SELECT count(*) FROM statement_lines s WHERE NOT EXISTS (SELECT 1 FROM period_closes c"
                       " WHERE s.effective_at_us >= c.starts_at_us AND s.effective_at_us < c.ends_at_us)")

SQLITE_GUARDS = f"""
DROP TRIGGER trg_period_closes_statement_lines;

DROP TABLE statement_lines;

CREATE TRIGGER trg_statement_documents_no_update BEFORE UPDATE ON statement_documents
BEGIN SELECT RAISE(ABORT, 'statement_documents is append-only: UPDATE refused'); END;

CREATE TRIGGER trg_statement_documents_no_delete BEFORE DELETE ON statement_documents
BEGIN SELECT RAISE(ABORT, 'statement_documents is append-only: DELETE refused'); END;

CREATE TRIGGER trg_statement_documents_no_replace BEFORE INSERT ON statement_documents
WHEN EXISTS (SELECT 1 FROM statement_documents d WHERE d.period = NEW.period AND d.partner_id = NEW.partner_id
             AND d.currency = NEW.currency)
BEGIN SELECT RAISE(ABORT, 'statement_documents is append-only: REPLACE refused'); END;

CREATE TRIGGER trg_statement_documents_latest_close BEFORE INSERT ON statement_documents
WHEN NEW.period IS NOT (SELECT period FROM period_closes ORDER BY ends_at_us DESC LIMIT 1)
BEGIN SELECT RAISE(ABORT, '{OUTSIDE}'); END;

CREATE TRIGGER trg_period_closes_statement_documents AFTER INSERT ON period_closes
BEGIN {SQLITE_FILL.format(**NEW).strip()}; END
"""

POSTGRES_GUARDS = f"""
DROP TRIGGER trg_period_closes_statement_lines ON period_closes;

DROP TABLE statement_lines;

DROP FUNCTION period_closes_store_statement_lines();

DROP FUNCTION statement_lines_refuse_direct();

CREATE TRIGGER trg_statement_documents_no_change BEFORE UPDATE OR DELETE ON statement_documents
FOR EACH ROW EXECUTE FUNCTION journal_refuse_change();

CREATE TRIGGER trg_statement_documents_no_truncate BEFORE TRUNCATE ON statement_documents
FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change();

CREATE FUNCTION statement_documents_refuse_direct() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF pg_trigger_depth() < 2 THEN
    RAISE EXCEPTION '{DIRECT}' USING ERRCODE = 'restrict_violation';
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER trg_statement_documents_direct BEFORE INSERT ON statement_documents
FOR EACH STATEMENT EXECUTE FUNCTION statement_documents_refuse_direct();

CREATE FUNCTION period_closes_store_statement_documents() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
  IF TG_RELID <> 'public.period_closes'::regclass OR TG_OP <> 'INSERT' OR TG_LEVEL <> 'ROW' THEN
    RAISE EXCEPTION '{DIRECT}' USING ERRCODE = 'restrict_violation';
  END IF;
  {POSTGRES_FILL.format(**NEW).strip()};
  RETURN NULL;
END $$;

CREATE TRIGGER trg_period_closes_statement_documents AFTER INSERT ON period_closes
FOR EACH ROW EXECUTE FUNCTION period_closes_store_statement_documents();

REVOKE EXECUTE ON FUNCTION period_closes_store_statement_documents() FROM PUBLIC
"""


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    # At least one line; on PostgreSQL json_array_length refuses a non-array, hence the CASE.
    lines_check = ("CASE WHEN json_typeof(lines) = 'array' THEN json_array_length(lines) > 0 ELSE false END"
                   if postgres else "json_type(lines) = 'array' AND json_array_length(lines) > 0")
    op.create_table(
        "statement_documents",
        sa.Column("period", sa.String(7), sa.ForeignKey("period_closes.period", name=op.f(
            "fk_statement_documents_period_period_closes")), nullable=False),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("lines", sa.Text().with_variant(sa.JSON(), "postgresql"), nullable=False),
        sa.PrimaryKeyConstraint("period", "partner_id", "currency", name=op.f("pk_statement_documents")),
        sa.CheckConstraint(lines_check, name=op.f("ck_statement_documents_lines")),
    )
    # Straight to the driver: as text(), `':pending'` would read as a bound parameter.
    connection = op.get_bind()
    outside = connection.exec_driver_sql(OUTSIDE_EVERY_CLOSE).scalar()
    if outside:
        raise RuntimeError(f"statement_lines: {outside} row(s) lie outside every closed period, where no close "
                           "stored them (run `revshare verify`); they have no period to be stored in")
    connection.exec_driver_sql(POSTGRES_CONVERT if postgres else SQLITE_CONVERT)
    for statement in (POSTGRES_GUARDS if postgres else SQLITE_GUARDS).split(";\n\n"):
        connection.exec_driver_sql(statement)
    if postgres:
        op.execute(f"GRANT SELECT ON statement_documents TO {APP_ROLE}")


def downgrade() -> None:
    raise NotImplementedError("closed periods' records are never dropped by a migration")
