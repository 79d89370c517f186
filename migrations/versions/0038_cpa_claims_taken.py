"""A customer's CPA goes to its first eligible paid invoice by date, whatever order billing sends them in.

Until now the CPA went to the first eligible payment the service processed: a January invoice
delivered after the February one left the bounty on February's (its hold, its currency, the
invoice whose full refund claws it back), where the same events in time order put it on January's.
Now a payment dated before its customer's claimant takes the claim: the claimant's bounty is
reversed (with what stands against it) and the payment earns the CPA as the first one would have
(`ledger.revenue`). `revenue_events.first_eligible_customer_id` still marks the first claim, and
`cpa_claims_taken` records each later one: the payment that took the claim, its customer, and the
claimant it took it from.

What the database holds, on both engines: the table is append-only (on SQLite a REPLACE is refused
too); a claim is taken by a payment of the customer that is no first claim, from the customer's
claimant (the first claim, or a payment that took it), once (`from_event_id` is unique), by a
payment dated before it, and only once the claimant's bounty, if it earned one, is reversed. A
customer's bounties (migration 0020) may now be more than one, so long as one at most stands: a
new bounty is refused while another of the customer's is not reversed.

Payments recorded before this revision keep the claims they made, by the order they were
processed in: `rules_since` records the instant the rule by date took effect (`cpa_first_by_date`),
and `verify` judges a payment recorded before it by the rule of its time. A customer whose
earlier-dated payment was delivered after its claimant under that rule keeps the claimant, and a
later payment takes the claim only if dated before it. `rules_since` is append-only.

Going down restores migration 0020's rule (one bounty per customer, reversed or not) and drops both
tables, and is refused while a claim has been taken: the claims taken would be lost, and the
claimant whose bounty was reversed would be taken for the claimant again.

Revision ID: 0038
Revises: 0037
Create Date: 2026-12-05
"""

import time

import sqlalchemy as sa
from alembic import op

from migrations.earlier import revision as _revision

revision = "0038"
down_revision = "0037"
branch_labels = None
depends_on = None

_0018 = _revision("0018_rules_held.py")
_0020 = _revision("0020_cpa_once.py")

APP_ROLE = "revshare_app"
TABLE = "cpa_claims_taken"
RULES_SINCE = "rules_since"
RULE = "cpa_first_by_date"

# A bounty that no reversal names.
STANDS = "NOT EXISTS (SELECT 1 FROM journal_transactions r WHERE r.reverses_id = {t}.id)"
ANOTHER_STANDING_BOUNTY = ("EXISTS (SELECT 1 FROM journal_transactions o WHERE o.customer_id = n.customer_id"
                           f" AND o.{_0020.BOUNTY.replace(' AND ', ' AND o.')} AND o.id <> n.id"
                           f" AND {STANDS.format(t='o')})")

# Each rule of a claim taken: (when it is refused, of the new row NEW; the message, quoted in SQL as it stands).
RULES = (
    ("NOT EXISTS (SELECT 1 FROM revenue_events e WHERE e.id = NEW.event_id AND e.type = 'invoice_paid'"
     " AND e.customer_id = NEW.customer_id AND e.first_eligible_customer_id IS NULL)",
     f"{TABLE}: a claim is taken by a payment of its customer that is no first claim"),
    ("NOT (EXISTS (SELECT 1 FROM revenue_events f WHERE f.id = NEW.from_event_id"
     " AND f.first_eligible_customer_id = NEW.customer_id)"
     f" OR EXISTS (SELECT 1 FROM {TABLE} m WHERE m.event_id = NEW.from_event_id AND m.customer_id = NEW.customer_id))",
     f"{TABLE}: a claim is taken from the claimant of its customer"),
    ("(SELECT e.occurred_at_us FROM revenue_events e WHERE e.id = NEW.event_id)"
     " >= (SELECT f.occurred_at_us FROM revenue_events f WHERE f.id = NEW.from_event_id)",
     f"{TABLE}: a claim is taken by a payment dated before its claimant"),
    # By the customer: the bounties' partial index (migration 0020) finds the claimant's by its key.
    ("EXISTS (SELECT 1 FROM journal_transactions t WHERE t.customer_id = NEW.customer_id"
     f" AND t.{_0020.BOUNTY.replace(' AND ', ' AND t.')} AND t.event_id = NEW.from_event_id"
     f" AND {STANDS.format(t='t')})",
     f"{TABLE}: a claim is taken once the CPA bounty of its claimant is reversed"),
)

SQLITE_GUARDS = ";\n\n".join([
    *(f"CREATE TRIGGER trg_{table}_no_{operation.lower()} BEFORE {operation} ON {table}\n"
      f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {operation} refused'); END"
      for table in (TABLE, RULES_SINCE) for operation in ("UPDATE", "DELETE")),
    f"CREATE TRIGGER trg_{RULES_SINCE}_no_replace BEFORE INSERT ON {RULES_SINCE}\n"
    f"WHEN EXISTS (SELECT 1 FROM {RULES_SINCE} t WHERE t.rule = NEW.rule)\n"
    f"BEGIN SELECT RAISE(ABORT, '{RULES_SINCE} is append-only: its unique key {RULES_SINCE}.rule is taken'); END",
    # As migration 0036's: a REPLACE meeting a stored row by either key is refused before it deletes it.
    f"CREATE TRIGGER trg_{TABLE}_no_replace BEFORE INSERT ON {TABLE}\nBEGIN\n  SELECT CASE"
    + "".join(f"\n    WHEN EXISTS (SELECT 1 FROM {TABLE} t WHERE t.{column} = NEW.{column}) THEN RAISE(ABORT, "
              f"'{TABLE} is append-only: its unique key {TABLE}.{column} is taken')"
              for column in ("event_id", "from_event_id"))
    + "\n  END;\nEND",
    f"CREATE TRIGGER trg_{TABLE}_held AFTER INSERT ON {TABLE}\nBEGIN\n  SELECT CASE"
    + "".join(f"\n    WHEN {refused} THEN RAISE(ABORT, '{message}')" for refused, message in RULES)
    + "\n  END;\nEND",
])

POSTGRES_GUARDS = "".join(f"""
CREATE TRIGGER trg_{table}_no_change BEFORE UPDATE OR DELETE ON {table}
FOR EACH ROW EXECUTE FUNCTION journal_refuse_change();

CREATE TRIGGER trg_{table}_no_truncate BEFORE TRUNCATE ON {table}
FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change();
""" for table in (TABLE, RULES_SINCE)) + f"""
CREATE FUNCTION {TABLE}_held() RETURNS trigger LANGUAGE plpgsql
SET search_path = public, pg_temp SET jit = off AS $$
BEGIN{"".join(f'''
  IF {refused} THEN
    RAISE EXCEPTION '{message}' USING ERRCODE = 'check_violation';
  END IF;''' for refused, message in RULES)}
  RETURN NULL;
END $$;

CREATE TRIGGER trg_{TABLE}_held AFTER INSERT ON {TABLE}
FOR EACH ROW EXECUTE FUNCTION {TABLE}_held()
"""


assert not any("'" in message for _, message in RULES)


def row_rule_function(function: str, refused_when: str, message: str) -> str:
    """PostgreSQL: the function of a row trigger after insert (migration 0017's `postgres_guard`)
    remade with a new condition on the NEW row, with the settings of migrations 0023 and 0037."""
    return f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql
SET search_path = public, pg_temp SET jit = off AS $$
BEGIN
  IF {refused_when} THEN
    RAISE EXCEPTION '{message}' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$"""


def _bounty_rule(refused_when: str, postgres: bool) -> list[str]:
    """Migration 0020's rule on a new bounty, refused when `refused_when` holds of it."""
    only_when = " AND ".join(f"n.{condition}" for condition in _0020.BOUNTY.split(" AND "))
    if postgres:
        return [row_rule_function("journal_transactions_cpa_once", _0018.new_row(refused_when), _0020.MESSAGE)]
    return ["DROP TRIGGER trg_journal_transactions_cpa_once",
            _0018.sqlite_rule("journal_transactions", "cpa_once", refused_when, _0020.MESSAGE, only_when)]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        TABLE,
        sa.Column("event_id", sa.String(64), sa.ForeignKey("revenue_events.id", name=op.f(
            f"fk_{TABLE}_event_id_revenue_events")), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("from_event_id", sa.String(64), sa.ForeignKey("revenue_events.id", name=op.f(
            f"fk_{TABLE}_from_event_id_revenue_events")), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f(f"pk_{TABLE}")),
        sa.UniqueConstraint("from_event_id", name=op.f(f"uq_{TABLE}_from_event_id")),
        sa.CheckConstraint("event_id <> from_event_id", name=op.f(f"ck_{TABLE}_another")),
    )
    op.create_index(op.f(f"ix_{TABLE}_customer_id"), TABLE, ["customer_id"])
    rules = op.create_table(
        RULES_SINCE,
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("since_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("rule", name=op.f(f"pk_{RULES_SINCE}")),
    )
    op.bulk_insert(rules, [{"rule": RULE, "since_us": time.time_ns() // 1_000}])
    for statement in (POSTGRES_GUARDS if postgres else SQLITE_GUARDS).split(";\n\n"):
        op.execute(statement)
    for statement in _bounty_rule(ANOTHER_STANDING_BOUNTY, postgres):
        op.execute(statement)
    if postgres:
        op.execute(f"GRANT SELECT, INSERT ON {TABLE} TO {APP_ROLE}")
        op.execute(f"GRANT SELECT ON {RULES_SINCE} TO {APP_ROLE}")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if op.get_bind().exec_driver_sql(f"SELECT count(*) FROM {TABLE}").scalar():
        raise RuntimeError(f"{TABLE} holds claims taken, which going below revision 0038 would lose")
    for statement in _bounty_rule(_0020.A_SECOND_BOUNTY, postgres):
        op.execute(statement)
    op.drop_table(TABLE)  # and its triggers with it
    op.drop_table(RULES_SINCE)
    if postgres:
        op.execute(f"DROP FUNCTION {TABLE}_held()")
