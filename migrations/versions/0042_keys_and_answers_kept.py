"""API keys and stored idempotent answers are never deleted, as they are never updated.

Migration 0018 refused their UPDATE; their DELETE was left open, from the time an operator took a
key away by deleting its row. Since migration 0027 a key is revoked instead, and nothing of the
service deletes either table's rows. An answer deleted no longer refuses its key sent again with
another body (a 409 naming what differs); a key deleted, or replaced in place with another role
(SQLite's `INSERT OR REPLACE` deletes the row it meets, and neither table had a delete guard to
refuse it), leaves answers and revocations naming a key that is not the one that sent them.

Both engines: each table refuses DELETE (PostgreSQL: TRUNCATE too; its application role had no
DELETE grant already, and now the owner meets a trigger as well), in the words of every append-only
table (`<table> is append-only: DELETE refused`). On SQLite a connection with `recursive_triggers`
on (the service's) meets the delete guard on a REPLACE; a plain connection does not, so `api_keys`
also gets migration 0036's guard before each insert, which refuses a row whose id or key hash is
taken. `idempotency_records` cannot: its rows are inserted `ON CONFLICT DO NOTHING`
(`ledger.idempotency.record`), which a guard before the insert would refuse, as for a key's
revocation (migration 0036).

Revision ID: 0042
Revises: 0041
Create Date: 2026-12-05
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0042"
down_revision = "0041"
branch_labels = None
depends_on = None

_0036 = _revision("0036_replace_refused.py")

TABLES = ("api_keys", "idempotency_records")
API_KEYS_KEYS = (("id",), ("key_hash",))


def sqlite_statements() -> list[str]:
    deletes = [f"CREATE TRIGGER trg_{table}_no_delete BEFORE DELETE ON {table}\n"
               f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: DELETE refused'); END" for table in TABLES]
    return [*deletes, _0036.guard("api_keys", API_KEYS_KEYS)]


def postgres_statements() -> list[str]:
    return [statement for table in TABLES for statement in (
        f"CREATE TRIGGER trg_{table}_no_delete BEFORE DELETE ON {table}\n"
        "FOR EACH ROW EXECUTE FUNCTION journal_refuse_change()",
        f"CREATE TRIGGER trg_{table}_no_truncate BEFORE TRUNCATE ON {table}\n"
        "FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change()")]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in postgres_statements() if postgres else sqlite_statements():
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in TABLES:
        for operation in ("delete", "truncate") if postgres else ("delete",):
            op.execute(f"DROP TRIGGER trg_{table}_no_{operation}" + (f" ON {table}" if postgres else ""))
    if not postgres:
        op.execute("DROP TRIGGER trg_api_keys_no_replace")
