"""PostgreSQL: the functions that write as their owner run only from the triggers made for them.

`journal_lines_add_to_totals` (0008) and `program_revision_bump` (0010) run with their owner's
rights (SECURITY DEFINER), so that the application role, which may only read `account_totals` and
`program_revision`, can post and change the program while the database keeps those rows. Every
role could execute them, and so attach them to a trigger on a table of its own (a temporary one)
and write those rows at will. PostgreSQL checks EXECUTE when a trigger is created, not when it
fires: revoking it from PUBLIC leaves the service's own triggers working and lets no other role
make one. (0013's `period_closes_store_statement_lines` is made that way from the start.) SQLite
has no roles: nothing to do.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

DEFINERS = ("journal_lines_add_to_totals()", "program_revision_bump()")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for function in DEFINERS:
        op.execute(f"REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC")


def downgrade() -> None:
    raise NotImplementedError("privileges are only ever narrowed by a new migration")
