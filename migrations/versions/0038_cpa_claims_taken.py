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

Going down drops the table and restores migration 0020's rule (one bounty per customer, reversed
or not), which refuses only rows written after it: books that moved a claim keep both bounties,
and `verify` at that revision names the second.

Revision ID: 0038
Revises: 0037
Create Date: 2026-12-05
"""

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
    *(f"CREATE TRIGGER trg_{TABLE}_no_{operation.lower()} BEFORE {operation} ON {TABLE}\n"
      f"BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only: {operation} refused'); END"
      for operation in ("UPDATE", "DELETE")),
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

POSTGRES_GUARDS = f"""
CREATE TRIGGER trg_{TABLE}_no_change BEFORE UPDATE OR DELETE ON {TABLE}
FOR EACH ROW EXECUTE FUNCTION journal_refuse_change();

CREATE TRIGGER trg_{TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE}
FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change();

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


def _bounty_rule(refused_when: str, postgres: bool) -> list[str]:
    """Migration 0020's rule on a new bounty, refused when `refused_when` holds of it."""
    only_when = " AND ".join(f"n.{condition}" for condition in _0020.BOUNTY.split(" AND "))
    if postgres:
        condition = _0018.new_row(refused_when)
        return [f"""CREATE OR REPLACE FUNCTION journal_transactions_cpa_once() RETURNS trigger LANGUAGE plpgsql
SET search_path = public, pg_temp SET jit = off AS $$
BEGIN
  IF {condition} THEN
    RAISE EXCEPTION '{_0020.MESSAGE}' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$"""]
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
    for statement in (POSTGRES_GUARDS if postgres else SQLITE_GUARDS).split(";\n\n"):
        op.execute(statement)
    for statement in _bounty_rule(ANOTHER_STANDING_BOUNTY, postgres):
        op.execute(statement)
    if postgres:
        op.execute(f"GRANT SELECT, INSERT ON {TABLE} TO {APP_ROLE}")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in _bounty_rule(_0020.A_SECOND_BOUNTY, postgres):
        op.execute(statement)
    op.drop_table(TABLE)  # and its triggers with it
    if postgres:
        op.execute(f"DROP FUNCTION {TABLE}_held()")
