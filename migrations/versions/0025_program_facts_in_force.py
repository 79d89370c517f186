"""The database holds two rules of the partner program's dated facts, for a writer that goes around
Python:

- an attribution does not start at or after its partner's termination (`ledger.customers.attribute`,
  a 409): it could never earn, and every event of the customer would answer `no_commission`;
- a partner's plan change does not start before the new plan's first version
  (`ledger.partners.change_plan`, a 422): in between the partner would have no plan, earn nothing
  and be paid with no minimum known. A partner's first plan (its enrolment, from the beginning of
  time) is exempt: a partner may enrol on a plan that begins later, and earns from its start.

Both engines: an after-insert row trigger each (migration 0018's rule makers); the PostgreSQL
functions run with `search_path = public, pg_temp`, as every function since migration 0023. Both
tables take a row when finance records a fact, never on the posting path.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-02
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

# Migration 0018's rule makers, `sqlite_rule` and `postgres_rule` (its file name is no module name).
_0018 = _revision("0018_rules_held.py")

RULES = (
    ("attributions", "partner_in_force",
     "EXISTS (SELECT 1 FROM partner_statuses s WHERE s.partner_id = n.partner_id AND s.status = 'terminated'"
     " AND s.effective_at_us <= n.effective_from_us)",
     "attributions: an attribution starts before its partner is terminated"),
    ("partner_plans", "plan_begun",
     "EXISTS (SELECT 1 FROM partner_plans p WHERE p.partner_id = n.partner_id AND p.id <> n.id)"
     " AND n.effective_from_us < (SELECT min(v.effective_from_us) FROM plan_versions v WHERE v.plan_id = n.plan_id)",
     "partner_plans: a plan change starts no earlier than the first version of its plan"),
)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    make = _0018.postgres_rule if postgres else _0018.sqlite_rule
    for table, name, refused_when, message in RULES:
        assert "'" not in message, message  # quoted in SQL as it stands
        for statement in make(table, name, refused_when, message, None).split(";\n\n"):
            op.execute(statement)
        if postgres:
            op.execute(f"ALTER FUNCTION {table}_{name}() SET search_path = public, pg_temp")


def downgrade() -> None:
    raise NotImplementedError("the guards are only ever replaced by a new migration")
