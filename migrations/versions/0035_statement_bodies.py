"""A closed period's statement lines also stored as the API writes them.

A busy partner's closed month is some 14,500 statement lines: reading its document (migration 0016)
and writing each line as the HTTP contract's JSON took 54-80 ms at 10M journal lines, half of it
the writing. `statement_bodies` holds, per period, partner and currency, the lines as the API's JSON
array of lines, the totals by kind as the API writes them, and the sums of the pending and available
amounts (`ledger/statement_bodies.py`): a closed month's statement sets that text into its frame.

The service writes them, in the close's transaction, from the documents the close's insert stored:
their amounts are written with each currency's minor unit, which the database does not know. What
the database holds: the table is append-only (on SQLite a REPLACE is refused too); a body is of the
latest closed period; it is of a document stored for its period, partner and currency and holds as
many lines as that document; its lines are a JSON array and its totals a JSON object; its sums are
integers. That each body is the journal's lines as the API writes them, `ledger.verify` checks with
the documents, line for line. On PostgreSQL the application role may read and insert, and the
lines are compressed with lz4 where the server was built with it.

Periods closed before this revision get no bodies (the latest-close rule would refuse them, and the
rendering is the service's): their statements are written from their documents, as before. Going
down drops the table: the documents hold the same lines.

Revision ID: 0035
Revises: 0034
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0035"
down_revision = "0034"
branch_labels = None
depends_on = None

APP_ROLE = "revshare_app"
OUTSIDE = "statement_bodies: a body must be of the latest closed period"
UNLIKE = ("statement_bodies: a body must be a JSON array of as many lines as the document stored for its period, "
          "partner and currency")
DOCUMENT_LINES = ("SELECT json_array_length(d.lines) FROM statement_documents d"
                  " WHERE d.period = NEW.period AND d.partner_id = NEW.partner_id AND d.currency = NEW.currency")

# Whether this PostgreSQL was built with lz4 (`--with-lz4`), which then compresses a body's lines
# nearly three times as fast as the default pglz, and fetches them as fast (a busy partner's 3.15 MB
# of lines: stored in 19.5 ms against 52, 780 kB against 642; docs/performance.md).
LZ4_BUILT = "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"

# SQLite fires an event's triggers newest first: the period is checked before the lines.
SQLITE_GUARDS = f"""
CREATE TRIGGER trg_statement_bodies_no_update BEFORE UPDATE ON statement_bodies
BEGIN SELECT RAISE(ABORT, 'statement_bodies is append-only: UPDATE refused'); END;

CREATE TRIGGER trg_statement_bodies_no_delete BEFORE DELETE ON statement_bodies
BEGIN SELECT RAISE(ABORT, 'statement_bodies is append-only: DELETE refused'); END;

CREATE TRIGGER trg_statement_bodies_no_replace BEFORE INSERT ON statement_bodies
WHEN EXISTS (SELECT 1 FROM statement_bodies b WHERE b.period = NEW.period AND b.partner_id = NEW.partner_id
             AND b.currency = NEW.currency)
BEGIN SELECT RAISE(ABORT, 'statement_bodies is append-only: REPLACE refused'); END;

CREATE TRIGGER trg_statement_bodies_as_document BEFORE INSERT ON statement_bodies
WHEN (CASE WHEN json_valid(NEW.lines) AND json_type(NEW.lines) = 'array' THEN json_array_length(NEW.lines) END)
     IS NOT ({DOCUMENT_LINES})
BEGIN SELECT RAISE(ABORT, '{UNLIKE}'); END;

CREATE TRIGGER trg_statement_bodies_latest_close BEFORE INSERT ON statement_bodies
WHEN NEW.period IS NOT (SELECT period FROM period_closes ORDER BY ends_at_us DESC LIMIT 1)
BEGIN SELECT RAISE(ABORT, '{OUTSIDE}'); END
"""

POSTGRES_GUARDS = f"""
CREATE TRIGGER trg_statement_bodies_no_change BEFORE UPDATE OR DELETE ON statement_bodies
FOR EACH ROW EXECUTE FUNCTION journal_refuse_change();

CREATE TRIGGER trg_statement_bodies_no_truncate BEFORE TRUNCATE ON statement_bodies
FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change();

CREATE FUNCTION statement_bodies_as_documents() RETURNS trigger LANGUAGE plpgsql
SET search_path = public, pg_temp AS $$
BEGIN
  IF NEW.period IS DISTINCT FROM (SELECT period FROM period_closes ORDER BY ends_at_us DESC LIMIT 1) THEN
    RAISE EXCEPTION '{OUTSIDE}' USING ERRCODE = 'restrict_violation';
  END IF;
  IF (CASE WHEN json_typeof(NEW.lines) = 'array' THEN json_array_length(NEW.lines) END)
     IS DISTINCT FROM ({DOCUMENT_LINES}) THEN
    RAISE EXCEPTION '{UNLIKE}' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;

CREATE TRIGGER trg_statement_bodies_as_documents BEFORE INSERT ON statement_bodies
FOR EACH ROW EXECUTE FUNCTION statement_bodies_as_documents()
"""


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    checks = ([sa.CheckConstraint("json_typeof(totals) = 'object'", name=op.f("ck_statement_bodies_totals"))]
              if postgres else
              [sa.CheckConstraint("CASE WHEN json_valid(totals) THEN json_type(totals) = 'object' ELSE 0 END",
                                  name=op.f("ck_statement_bodies_totals")),
               sa.CheckConstraint("typeof(pending_minor) = 'integer' AND typeof(available_minor) = 'integer'",
                                  name=op.f("ck_statement_bodies_integer_sums"))])
    op.create_table(
        "statement_bodies",
        sa.Column("period", sa.String(7), sa.ForeignKey("period_closes.period", name=op.f(
            "fk_statement_bodies_period_period_closes")), nullable=False),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("lines", sa.Text().with_variant(sa.JSON(), "postgresql"), nullable=False),
        sa.Column("totals", sa.Text().with_variant(sa.JSON(), "postgresql"), nullable=False),
        sa.Column("pending_minor", sa.BigInteger(), nullable=False),
        sa.Column("available_minor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("period", "partner_id", "currency", name=op.f("pk_statement_bodies")),
        *checks,
    )
    connection = op.get_bind()
    for statement in (POSTGRES_GUARDS if postgres else SQLITE_GUARDS).split(";\n\n"):
        connection.exec_driver_sql(statement)
    if postgres:
        op.execute(f"GRANT SELECT, INSERT ON statement_bodies TO {APP_ROLE}")
        if connection.exec_driver_sql(LZ4_BUILT).scalar():
            op.execute("ALTER TABLE statement_bodies ALTER COLUMN lines SET COMPRESSION lz4")


def downgrade() -> None:
    """The bodies are the documents written again, which the periods keep: dropping them loses
    nothing 0034's code reads (its statements are written from the documents)."""
    op.drop_table("statement_bodies")  # and its triggers with it
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION statement_bodies_as_documents()")
