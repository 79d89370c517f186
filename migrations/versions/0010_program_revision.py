"""The partner program's revision, kept by the database: one row, moved up by one with every insert
into the tables a `partners.Program` reads (partners, partner_statuses, partner_plans,
plan_versions).

Each process keeps one Program (who earns at an instant, on which plan version) while those
tables stay as they were. Until now every posting asked with the four tables' row counts, which
PostgreSQL and SQLite find by reading every row: with 2,000 partners that one statement was the
largest single cost of a posting on PostgreSQL (0.5 ms of server time a posting, measured with
pg_stat_statements over 3,000 single-event postings), and it grows with the partners. The
revision is one row read by its key. The tables are append-only (their guards refuse UPDATE and
DELETE), so an unchanged revision still means unchanged rows; the revision is written in the
inserting transaction, so a snapshot sees both or neither.

- SQLite: a row trigger per table adds one per row. Guards refuse a second row (also through
  `INSERT OR REPLACE`, whatever `recursive_triggers` says), a deletion, and any update other than
  adding one.
- PostgreSQL: a statement trigger per table adds one per statement (a SECURITY DEFINER function:
  the application role may only read the row). Statement guards refuse writes made outside a
  trigger, TRUNCATE too, as for `account_totals`. Concurrent program writers queue on the row's
  lock. One transaction inserting many program rows updates the row once per statement: seeding
  2,000 partners (6,000 rows) in one transaction took 10.1 s against 7.7 s without the triggers,
  6,000 partners 27.4 s against 22.5 s. The lock order is the revision row, then the journal lock
  (`revshare demo` enrols partners and posts in one transaction); a journal writer only reads the
  row, so nothing takes them the other way round.

Caches outlive a database restored from an older backup: the revision could climb back to a
number a process cached with other rows. Restart the service after a restore.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

APP_ROLE = "revshare_app"
PROGRAM_TABLES = ("partners", "partner_statuses", "partner_plans", "plan_versions")
REFUSED = "program_revision: the revision is kept by the database from the program tables"
BUMP = "UPDATE program_revision SET revision = revision + 1 WHERE id = 1"

SQLITE_GUARDS = f"""
CREATE TRIGGER trg_program_revision_insert BEFORE INSERT ON program_revision
WHEN EXISTS (SELECT 1 FROM program_revision)
BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END;

CREATE TRIGGER trg_program_revision_update BEFORE UPDATE ON program_revision
WHEN NOT (NEW.id = OLD.id AND NEW.revision = OLD.revision + 1)
BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END;

CREATE TRIGGER trg_program_revision_delete BEFORE DELETE ON program_revision
BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END
"""

POSTGRES_FUNCTIONS = f"""
CREATE FUNCTION program_revision_bump() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
  {BUMP};
  RETURN NULL;
END $$;

CREATE FUNCTION program_revision_refuse_direct() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF pg_trigger_depth() < 2 THEN
    RAISE EXCEPTION '{REFUSED}: % refused', TG_OP USING ERRCODE = 'restrict_violation';
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER trg_program_revision_direct BEFORE INSERT OR UPDATE OR DELETE ON program_revision
FOR EACH STATEMENT EXECUTE FUNCTION program_revision_refuse_direct();

CREATE TRIGGER trg_program_revision_no_truncate BEFORE TRUNCATE ON program_revision
FOR EACH STATEMENT EXECUTE FUNCTION program_revision_refuse_direct()
"""


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "program_revision",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_program_revision_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_program_revision")),
    )
    op.execute("INSERT INTO program_revision (id, revision) VALUES (1, 0)")
    if postgres:
        for statement in POSTGRES_FUNCTIONS.split(";\n\n"):
            op.execute(statement)
        for table in PROGRAM_TABLES:
            op.execute(f"CREATE TRIGGER trg_{table}_program_revision AFTER INSERT ON {table} "
                       f"FOR EACH STATEMENT EXECUTE FUNCTION program_revision_bump()")
        op.execute(f"GRANT SELECT ON program_revision TO {APP_ROLE}")
        return
    for statement in SQLITE_GUARDS.split(";\n\n"):
        op.execute(statement)
    for table in PROGRAM_TABLES:
        op.execute(f"CREATE TRIGGER trg_{table}_program_revision AFTER INSERT ON {table} BEGIN {BUMP}; END")


def downgrade() -> None:
    raise NotImplementedError("the program's guards are only ever replaced by a new migration")
