"""A program fact dated ahead can be withdrawn before it starts.

A partner's status change (a termination at the end of a contract, a suspension), a partner's plan
change, a plan's version and a customer's attribution can be dated up to 366 days ahead (migration
0017), and each must start after the latest of its kind (migration 0018). None could be withdrawn:
a termination scheduled for a contract's end stayed when the contract was renewed (termination is
final, so the partner could never be made active again), a customer's move to another partner
stayed when the deal fell through, and a fact typed a year wrong blocked every later one of its
kind until then.

`program_withdrawals` records each withdrawal: which fact (its table and id), whose (the partner,
the plan of a version, the customer of an attribution), when it was to start, what it said (the
status, the plan, the version's number, the attribution's partner; `detail`: the version's terms,
the attribution's source), when it was recorded, and when it was withdrawn. Inserting the row
removes the fact from its table, in the same statement: the tables the program is read from keep
only the facts in force, and every reader (the posting path, `verify`'s re-derivation of the
program as recorded) reads them as before.

A fact withdrawn must have decided nothing. A revenue event or a posting is dated at most five
minutes after its own recording (migrations 0017 and 0029), by the clock of the server that wrote
it, which is within five minutes of the database's: at most ten minutes after the database's
clock; a payout run at most five (migration 0018). So a fact is withdrawn only while it starts more
than ten minutes after the database's clock, and while no journal transaction is dated at or after
its start (one index probe; a posting made by a server whose clock is further ahead than the skew
allowed would otherwise have read it), nor pins it, for a version (a scan of the headers: a
version is rarely withdrawn).

What the database holds, on both engines: `program_withdrawals` is append-only (on SQLite a REPLACE
is refused too); a withdrawal is recorded within five minutes of the database's clock and names a
fact as it stands in its table (every column of it), that has decided nothing (above); not a
plan's first version (a plan change was checked against the plan's first version, migration
0025), nor a customer's first attribution (whether a customer had any when a payment was recorded
decides whether the payment is `unattributed`, migration 0034, even one that had not started: its
stored payments would then contradict it; with the first kept, every payment recorded since still
finds one recorded before it). The four
tables refuse a DELETE of a fact no withdrawal names, as they refused every DELETE before. The
program's revision moves with each status, plan or version withdrawn (migration 0010; attributions
are read by each batch, not kept), so processes read the program anew. A fact's id and a version's
number name one fact for good: a new fact's id is above every id withdrawn from its table (on
SQLite, which would give the largest id again once its row is gone, the service gives the ids), and
a plan's versions are numbered after the versions withdrawn.

SQLite: one trigger after the insert checks the row and deletes the fact; the delete guards are
`trg_{table}_no_delete`, now with a `WHEN`. PostgreSQL: the same as a row trigger whose function
runs as the owner (the application role has no DELETE on the program's tables); the delete guards
are row triggers before the delete, and the updates are refused as before.

Revision ID: 0040
Revises: 0039
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

from migrations.earlier import revision as _revision

revision = "0040"
down_revision = "0039"
branch_labels = None
depends_on = None

_0010 = _revision("0010_program_revision.py")
_0018 = _revision("0018_rules_held.py")
_0038 = _revision("0038_cpa_claims_taken.py")

APP_ROLE = "revshare_app"
TABLE = "program_withdrawals"
# Each withdrawable fact: its table, its subject column, its start column, what it said (of its row
# `f`), its detail (or None), and when it was recorded.
FACTS = (
    ("partner_statuses", "partner_id", "effective_at_us", "f.status", None, "recorded_at_us"),
    ("partner_plans", "partner_id", "effective_from_us", "f.plan_id", None, "recorded_at_us"),
    ("plan_versions", "plan_id", "effective_from_us", "CAST(f.version AS TEXT)", "terms", "created_at_us"),
    ("attributions", "customer_id", "effective_from_us", "f.partner_id", "source", "recorded_at_us"),
)
PROGRAM_TABLES = ("partner_statuses", "partner_plans", "plan_versions")  # those migration 0010's revision follows
CLOCK_SKEW_US = 5 * 60 * 1_000_000  # ledger.journal's, as of this revision


AS_IT_STANDS = " OR ".join(
    f"NEW.fact_table = '{table}' AND EXISTS (SELECT 1 FROM {table} f WHERE f.id = NEW.fact_id"
    f" AND f.{subject} = NEW.subject_id AND f.{start} = NEW.starts_us AND {said} = NEW.value"
    f" AND f.{recorded} = NEW.fact_recorded_at_us"
    + (f" AND f.{detail} = NEW.detail)" if detail else " AND NEW.detail IS NULL)")
    for table, subject, start, said, detail, recorded in FACTS)


def rules(now_us: str) -> tuple[tuple[str, str], ...]:
    """(when a new withdrawal NEW is refused, the message), with the database's clock `now_us`."""
    return (
        (f"NEW.recorded_at_us NOT BETWEEN {now_us} - {CLOCK_SKEW_US} AND {now_us} + {CLOCK_SKEW_US}",
         f"{TABLE}: a withdrawal is recorded within five minutes of the database clock"),
        (f"NOT ({AS_IT_STANDS})", f"{TABLE}: a withdrawal names a fact as it stands"),
        (f"NEW.starts_us <= {now_us} + {2 * CLOCK_SKEW_US}"
         # The latest instant, by the index's last entry: a plan kept for `>= NEW.starts_us` scanned
         # the headers once PostgreSQL made it generic (about a third of them taken to match).
         " OR (SELECT max(t.effective_at_us) FROM journal_transactions t) >= NEW.starts_us"
         " OR NEW.fact_table = 'plan_versions'"
         " AND EXISTS (SELECT 1 FROM journal_transactions t WHERE t.plan_version_id = NEW.fact_id)",
         f"{TABLE}: a fact is withdrawn only while it starts more than ten minutes ahead and no posting"
         " could have read it"),
        ("NEW.fact_table = 'plan_versions' AND NEW.value = '1'", f"{TABLE}: a plan keeps its first version"),
        # Ids follow the order rows are written in: the customer's first attribution has the least.
        ("NEW.fact_table = 'attributions' AND NOT EXISTS (SELECT 1 FROM attributions a"
         " WHERE a.customer_id = NEW.subject_id AND a.id < NEW.fact_id)", FIRST_ATTRIBUTION_KEPT),
    )


FIRST_ATTRIBUTION_KEPT = f"{TABLE}: a customer keeps its first attribution"  # until migration 0041


# A plan's next version: one more than any of its versions, withdrawn or not (migration 0018's rule,
# with the withdrawn numbers).
VERSION_OUT_OF_ORDER = (
    "n.version <> 1 + (SELECT coalesce(max(numbers.number), 0) FROM ("
    "SELECT v.version AS number FROM plan_versions v WHERE v.plan_id = n.plan_id AND v.id <> n.id"
    f" UNION ALL SELECT CAST(w.value AS INTEGER) FROM {TABLE} w"
    " WHERE w.fact_table = 'plan_versions' AND w.subject_id = n.plan_id) numbers)"
    " OR EXISTS (SELECT 1 FROM plan_versions v WHERE v.plan_id = n.plan_id AND v.id <> n.id"
    " AND v.effective_from_us >= n.effective_from_us)")
VERSION_MESSAGE = next(message for table, name, _, message, _, _ in _0018.RULES
                       if (table, name) == ("plan_versions", "in_order"))
# A fact's id names it for its withdrawal: one withdrawn is not given again (SQLite gives a new row the
# largest id plus one, which the withdrawal of the largest would free; the service gives the ids there).
ID_TAKEN = "n.id <= (SELECT max(w.fact_id) FROM {withdrawals} w WHERE w.fact_table = '{table}')"
ID_MESSAGE = "{table}: the id of a fact withdrawn is not given again"
WITHDRAWN = f"EXISTS (SELECT 1 FROM {TABLE} w WHERE w.fact_table = '{{table}}' AND w.fact_id = OLD.id)"
DELETE_REFUSED = "{table} is append-only: DELETE refused"


def sqlite_held(held_rules: tuple[tuple[str, str], ...]) -> str:
    """The SQLite trigger that checks a new withdrawal by `held_rules` (as `rules` gives them) and
    removes its fact."""
    checks = "".join(f"\n    WHEN {refused} THEN RAISE(ABORT, '{message}')" for refused, message in held_rules)
    deletes = "".join(f"\n  DELETE FROM {table} WHERE NEW.fact_table = '{table}' AND id = NEW.fact_id;"
                      for table, *_ in FACTS)
    return (f"CREATE TRIGGER trg_{TABLE}_held AFTER INSERT ON {TABLE}\nBEGIN\n  SELECT CASE"
            f"\n    WHEN typeof(NEW.recorded_at_us) <> 'integer' THEN RAISE(ABORT, '{TABLE}: recorded_at_us is an integer')"
            f"{checks}\n  END;{deletes}\nEND")


def postgres_held(held_rules: tuple[tuple[str, str], ...], create: str = "CREATE") -> str:
    """The PostgreSQL function (`create`: `CREATE` or `CREATE OR REPLACE`) that checks a new
    withdrawal by `held_rules` and removes its fact, as the owner: the application role may not
    delete from the program's tables."""
    checks = "".join(f"""
  IF {refused} THEN
    RAISE EXCEPTION '{message}' USING ERRCODE = 'check_violation';
  END IF;""" for refused, message in held_rules)
    deletes = "\n  ELS".join(f"IF NEW.fact_table = '{table}' THEN\n    DELETE FROM {table} WHERE id = NEW.fact_id;"
                             for table, *_ in FACTS)
    return f"""{create} FUNCTION {TABLE}_held() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp SET jit = off AS $$
BEGIN{checks}
  {deletes}
  END IF;
  RETURN NULL;
END $$"""


def _sqlite() -> list[str]:
    statements = [
        *(f"CREATE TRIGGER trg_{TABLE}_no_{operation.lower()} BEFORE {operation} ON {TABLE}\n"
          f"BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only: {operation} refused'); END"
          for operation in ("UPDATE", "DELETE")),
        # As migration 0036's: a REPLACE meeting a stored row by either key is refused before it deletes it.
        f"CREATE TRIGGER trg_{TABLE}_no_replace BEFORE INSERT ON {TABLE}\nBEGIN\n  SELECT CASE"
        f"\n    WHEN EXISTS (SELECT 1 FROM {TABLE} t WHERE t.id = NEW.id) THEN RAISE(ABORT, "
        f"'{TABLE} is append-only: its unique key {TABLE}.id is taken')"
        f"\n    WHEN EXISTS (SELECT 1 FROM {TABLE} t WHERE t.fact_table = NEW.fact_table AND t.fact_id = NEW.fact_id)"
        f" THEN RAISE(ABORT, '{TABLE} is append-only: its unique key {TABLE}.fact_table, {TABLE}.fact_id is taken')"
        "\n  END;\nEND",
        sqlite_held(rules(_0018.NOW_US_SQLITE)),
        "DROP TRIGGER trg_plan_versions_in_order",
        _0018.sqlite_rule("plan_versions", "in_order", VERSION_OUT_OF_ORDER, VERSION_MESSAGE, None),
    ]
    for table, *_ in FACTS:
        statements += [
            f"DROP TRIGGER trg_{table}_no_delete",
            f"CREATE TRIGGER trg_{table}_no_delete BEFORE DELETE ON {table}\n"
            f"WHEN NOT {WITHDRAWN.format(table=table)}\n"
            f"BEGIN SELECT RAISE(ABORT, '{DELETE_REFUSED.format(table=table)}'); END",
            *([f"CREATE TRIGGER trg_{table}_program_revision_withdrawn AFTER DELETE ON {table} BEGIN {_0010.BUMP}; END"]
              if table in PROGRAM_TABLES else []),
            _0018.sqlite_rule(table, "id_fresh", ID_TAKEN.format(withdrawals=TABLE, table=table),
                              ID_MESSAGE.format(table=table), None),
        ]
    return statements


def _postgres() -> list[str]:
    statements = [
        *(f"CREATE TRIGGER trg_{TABLE}_no_change BEFORE UPDATE OR DELETE ON {TABLE} "
          "FOR EACH ROW EXECUTE FUNCTION journal_refuse_change()",
          f"CREATE TRIGGER trg_{TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE} "
          "FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change()"),
        postgres_held(rules(_0018.NOW_US_POSTGRES)),
        f"CREATE TRIGGER trg_{TABLE}_held AFTER INSERT ON {TABLE} FOR EACH ROW EXECUTE FUNCTION {TABLE}_held()",
        f"""CREATE FUNCTION program_facts_withdrawn_only() RETURNS trigger LANGUAGE plpgsql
SET search_path = public, pg_temp SET jit = off AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM {TABLE} w WHERE w.fact_table = TG_TABLE_NAME AND w.fact_id = OLD.id) THEN
    RAISE EXCEPTION '% is append-only: DELETE refused', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
  END IF;
  RETURN OLD;
END $$""",
        _0038.row_rule_function("plan_versions_in_order", _0018.new_row(VERSION_OUT_OF_ORDER), VERSION_MESSAGE),
    ]
    for table, *_ in FACTS:
        statements += [
            f"DROP TRIGGER trg_{table}_no_change ON {table}",
            f"CREATE TRIGGER trg_{table}_no_change BEFORE UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION journal_refuse_change()",
            f"CREATE TRIGGER trg_{table}_no_delete BEFORE DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION program_facts_withdrawn_only()",
            *([f"CREATE TRIGGER trg_{table}_program_revision_withdrawn AFTER DELETE ON {table} "
               "FOR EACH STATEMENT EXECUTE FUNCTION program_revision_bump()"] if table in PROGRAM_TABLES else []),
            *_0018.postgres_rule(table, "id_fresh", ID_TAKEN.format(withdrawals=TABLE, table=table),
                                 ID_MESSAGE.format(table=table), None).split(";\n\n"),
            f"ALTER FUNCTION {table}_id_fresh() SET search_path = public, pg_temp",
            f"ALTER FUNCTION {table}_id_fresh() SET jit = off",
        ]
    return statements + [f"GRANT SELECT, INSERT ON {TABLE} TO {APP_ROLE}",
                         f"GRANT USAGE, SELECT ON SEQUENCE {TABLE}_id_seq TO {APP_ROLE}"]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        TABLE,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("fact_table", sa.String(32), nullable=False),
        sa.Column("fact_id", sa.BigInteger(), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("starts_us", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("fact_recorded_at_us", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{TABLE}")),
        sa.UniqueConstraint("fact_table", "fact_id", name=op.f(f"uq_{TABLE}_fact_table_fact_id")),
        sa.CheckConstraint(f"fact_table IN ({', '.join(repr(table) for table, *_ in FACTS)})",
                           name=op.f(f"ck_{TABLE}_fact_table")),
    )
    op.create_index(op.f(f"ix_{TABLE}_subject_id"), TABLE, ["subject_id"])
    for statement in _postgres() if postgres else _sqlite():
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if op.get_bind().exec_driver_sql(f"SELECT count(*) FROM {TABLE}").scalar():
        raise RuntimeError(f"{TABLE} holds facts withdrawn, which going below revision 0040 would lose")
    if postgres:
        statements = [_0038.row_rule_function("plan_versions_in_order", _0018.new_row(_0018.VERSION_OUT_OF_ORDER),
                                              VERSION_MESSAGE)]
        for table, *_ in FACTS:
            statements += [*(f"DROP TRIGGER trg_{table}_{name} ON {table}" for name in (
                                 "no_change", "no_delete", "id_fresh",
                                 *(["program_revision_withdrawn"] if table in PROGRAM_TABLES else []))),
                           f"DROP FUNCTION {table}_id_fresh()",
                           f"CREATE TRIGGER trg_{table}_no_change BEFORE UPDATE OR DELETE ON {table} "
                           "FOR EACH ROW EXECUTE FUNCTION journal_refuse_change()"]
        statements += [f"DROP TABLE {TABLE}", f"DROP FUNCTION {TABLE}_held()",
                       "DROP FUNCTION program_facts_withdrawn_only()"]
    else:
        statements = ["DROP TRIGGER trg_plan_versions_in_order",
                      _0018.sqlite_rule("plan_versions", "in_order", _0018.VERSION_OUT_OF_ORDER, VERSION_MESSAGE, None)]
        for table, *_ in FACTS:
            statements += [f"DROP TRIGGER trg_{table}_no_delete", f"DROP TRIGGER trg_{table}_id_fresh",
                           *([f"DROP TRIGGER trg_{table}_program_revision_withdrawn"] if table in PROGRAM_TABLES
                             else []),
                           f"CREATE TRIGGER trg_{table}_no_delete BEFORE DELETE ON {table} "
                           f"BEGIN SELECT RAISE(ABORT, '{DELETE_REFUSED.format(table=table)}'); END"]
        statements.append(f"DROP TABLE {TABLE}")
    for statement in statements:
        op.execute(statement)
