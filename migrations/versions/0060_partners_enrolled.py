"""The database holds that a partner is enrolled with a status and a plan, for a writer that goes
around Python (`ledger.partners.create_partner` writes the partner, its first status and its first
plan in one transaction). A partner written without them passed every rule: its customers'
payments were recorded as earning nothing, and the API read it back with no status and no plan
(`revshare verify` names it, `partner_unenrolled`).

The first status and plan are written after the partner, so the check waits for the commit, as
migration 0026's does (SQLite has no deferred trigger, but it has deferred foreign keys). A trigger
after each insert into `partners` adds the partner's row to `partner_enrolments`, naming its first
status and its first plan as 0, "not yet"; the partner's first status and first plan, as they are
inserted, write their ids there. Each of the two columns is a foreign key, deferred to the commit,
to the partner's own (partner, id) of its table (a unique index made here), so a transaction that
leaves a partner without either fails to commit (SQLite: "FOREIGN KEY constraint failed";
PostgreSQL names `fk_partner_enrolments_status_partner_statuses` or `..._plan_partner_plans`).

The first status and the first plan start no later than the partner's creation (`create_partner`
starts both at the beginning of time): a partner written with both dated a month ahead had no
status and no plan until then, earned nothing, and could not be mended (a status or plan change
starts after the latest, and withdrawing a first fact is refused by the foreign key).

A row is written once and its two ids set once from 0, by the triggers: an update that changes its
partner or an id already set is refused, and so is a delete (on PostgreSQL a truncate too; the
application role may SELECT, INSERT and UPDATE, the triggers running as it). The foreign keys also
keep the first status and plan from being deleted: withdrawing one (migration 0040) is refused
before that, as a fact that has started.

A partner stored before this revision is given its row when it has a status and a plan (its first
of each, by id); one without either keeps none, and `verify` names it.

Revision ID: 0060
Revises: 0059
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from migrations.earlier import revision as _revision

revision = "0060"
down_revision = "0059"
branch_labels = None
depends_on = None

_0036 = _revision("0036_replace_refused.py")  # guard: a REPLACE refused before it deletes (SQLite)

TABLE = "partner_enrolments"
APP_ROLE = "revshare_app"
SETTINGS = "SET search_path = public, pg_temp SET jit = off"
FIRST = {"status": "partner_statuses", "plan": "partner_plans"}  # a row's column (`<name>_id`), its table
UNSET = 0  # an id not yet written: the facts' ids start at 1
CHANGED = (f"NEW.partner_id <> OLD.partner_id OR (NEW.status_id <> OLD.status_id AND OLD.status_id <> {UNSET})"
           f" OR (NEW.plan_id <> OLD.plan_id AND OLD.plan_id <> {UNSET})")
CHANGED_MESSAGE = f"{TABLE}: the first status and plan of a partner are written once"
DELETED_MESSAGE = f"{TABLE}: rows are never deleted"
BACKFILL = f"""
INSERT INTO {TABLE} (partner_id, status_id, plan_id)
SELECT p.id, (SELECT min(s.id) FROM partner_statuses s WHERE s.partner_id = p.id),
       (SELECT min(l.id) FROM partner_plans l WHERE l.partner_id = p.id)
FROM partners p
WHERE EXISTS (SELECT 1 FROM partner_statuses s WHERE s.partner_id = p.id)
  AND EXISTS (SELECT 1 FROM partner_plans l WHERE l.partner_id = p.id)"""


STARTS = {"status": "effective_at_us", "plan": "effective_from_us"}  # each first fact's start column
LATE_MESSAGE = f"{TABLE}: the first status and plan of a partner start by its enrolment"


def _first_late(name: str) -> str:
    """SQL: true when NEW, about to be the partner's first of its kind, starts after the partner's
    creation (`create_partner` starts both at the beginning of time)."""
    return (f"EXISTS (SELECT 1 FROM {TABLE} e JOIN partners p ON p.id = e.partner_id"
            f" WHERE e.partner_id = NEW.partner_id AND e.{name}_id = {UNSET} AND NEW.{STARTS[name]} > p.created_at_us)")


def _first_written(name: str) -> str:
    return (f"UPDATE {TABLE} SET {name}_id = NEW.id"
            f" WHERE partner_id = NEW.partner_id AND {name}_id = {UNSET}")


def _sqlite() -> list[str]:
    found = [f"CREATE TRIGGER trg_partners_enrolment_due AFTER INSERT ON partners\n"
             f"BEGIN INSERT INTO {TABLE} (partner_id, status_id, plan_id) VALUES (NEW.id, {UNSET}, {UNSET}); END"]
    found += [f"CREATE TRIGGER trg_{table}_enrols AFTER INSERT ON {table}\n"
              f"BEGIN SELECT RAISE(ABORT, '{LATE_MESSAGE}') WHERE {_first_late(name)}; {_first_written(name)}; END"
              for name, table in FIRST.items()]
    return found + [
        f"CREATE TRIGGER trg_{TABLE}_written_once BEFORE UPDATE ON {TABLE}\n"
        f"WHEN {CHANGED}\nBEGIN SELECT RAISE(ABORT, '{CHANGED_MESSAGE}'); END",
        f"CREATE TRIGGER trg_{TABLE}_no_delete BEFORE DELETE ON {TABLE}\n"
        f"BEGIN SELECT RAISE(ABORT, '{DELETED_MESSAGE}'); END",
        _0036.guard(TABLE, (("partner_id",),))]


def _postgres() -> list[str]:
    found = [f"""CREATE FUNCTION {TABLE}_due() RETURNS trigger LANGUAGE plpgsql {SETTINGS} AS $$
BEGIN
  INSERT INTO {TABLE} (partner_id, status_id, plan_id) VALUES (NEW.id, {UNSET}, {UNSET});
  RETURN NULL;
END $$""",
             "CREATE TRIGGER trg_partners_enrolment_due AFTER INSERT ON partners\n"
             f"FOR EACH ROW EXECUTE FUNCTION {TABLE}_due()"]
    for name, table in FIRST.items():
        found += [f"""CREATE FUNCTION {table}_enrols() RETURNS trigger LANGUAGE plpgsql {SETTINGS} AS $$
BEGIN
  IF {_first_late(name)} THEN
    RAISE EXCEPTION '{LATE_MESSAGE}' USING ERRCODE = 'check_violation';
  END IF;
  {_first_written(name)};
  RETURN NULL;
END $$""",
                  f"CREATE TRIGGER trg_{table}_enrols AFTER INSERT ON {table}\n"
                  f"FOR EACH ROW EXECUTE FUNCTION {table}_enrols()"]
    return found + [
        f"""CREATE FUNCTION {TABLE}_written_once() RETURNS trigger LANGUAGE plpgsql {SETTINGS} AS $$
BEGIN
  IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
    RAISE EXCEPTION '{DELETED_MESSAGE}' USING ERRCODE = 'restrict_violation';
  END IF;
  IF {CHANGED} THEN
    RAISE EXCEPTION '{CHANGED_MESSAGE}' USING ERRCODE = 'restrict_violation';
  END IF;
  RETURN NEW;
END $$""",
        f"CREATE TRIGGER trg_{TABLE}_written_once BEFORE UPDATE OR DELETE ON {TABLE}\n"
        f"FOR EACH ROW EXECUTE FUNCTION {TABLE}_written_once()",
        f"CREATE TRIGGER trg_{TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE}\n"
        f"FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_written_once()",
        f"GRANT SELECT, INSERT, UPDATE ON {TABLE} TO {APP_ROLE}"]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in FIRST.values():
        op.create_index(op.f(f"uq_{table}_partner_id_id"), table, ["partner_id", "id"], unique=True)
    op.create_table(
        TABLE,
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("status_id", sa.BigInteger(), nullable=False),
        sa.Column("plan_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("partner_id", name=op.f(f"pk_{TABLE}")),
        sa.ForeignKeyConstraint(["partner_id"], ["partners.id"], name=op.f(f"fk_{TABLE}_partner_id_partners")),
        *(sa.ForeignKeyConstraint(["partner_id", f"{name}_id"], [f"{table}.partner_id", f"{table}.id"],
                                  name=op.f(f"fk_{TABLE}_{name}_{table}"), deferrable=True, initially="DEFERRED")
          for name, table in FIRST.items()),
    )
    op.execute(BACKFILL)
    for statement in _postgres() if postgres else _sqlite():
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    triggers = [("partners", "enrolment_due"), *((table, "enrols") for table in FIRST.values())]
    for table, name in triggers:
        op.execute(f"DROP TRIGGER trg_{table}_{name}" + (f" ON {table}" if postgres else ""))
    op.drop_table(TABLE)  # with its own triggers
    if postgres:
        for function in (f"{TABLE}_due", *(f"{table}_enrols" for table in FIRST.values()), f"{TABLE}_written_once"):
            op.execute(f"DROP FUNCTION {function}()")
    for table in FIRST.values():
        op.drop_index(op.f(f"uq_{table}_partner_id_id"), table_name=table)
