"""PostgreSQL: the function that carries out a withdrawal runs only from the trigger made for it.

`program_withdrawals_held()` (migration 0040) deletes the withdrawn fact from `partner_statuses`,
`partner_plans`, `plan_versions` or `attributions` with its owner's rights (SECURITY DEFINER): the
application role may not delete from the program's tables. Made without the revoke that 0015 and
0016 gave the other functions that write as their owner, every role could execute it, and so
attach it to a trigger on a table of its own (a temporary copy of `program_withdrawals`) and have
it delete as the owner. Each program table's own delete trigger still asked for a real
withdrawal's row, which is why nothing came of it; the revoke makes the function unreachable, as
the others are. PostgreSQL checks EXECUTE when a trigger is created, not when it fires: the
service's own trigger keeps working. SQLite has no roles: nothing to do.

Revision ID: 0052
Revises: 0051
Create Date: 2026-12-06
"""

from alembic import op

revision = "0052"
down_revision = "0051"
branch_labels = None
depends_on = None

FUNCTION = "program_withdrawals_held()"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"REVOKE EXECUTE ON FUNCTION {FUNCTION} FROM PUBLIC")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"GRANT EXECUTE ON FUNCTION {FUNCTION} TO PUBLIC")
