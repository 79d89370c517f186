"""The database holds what a revenue event's status says, and when a close is dated, for a writer
that goes around Python:

- an event is `posted` when, and only when, a commission (accrual, CPA, override) or clawback of its
  invoice names it (`ledger.revenue` writes an event's row after its postings, in the same
  transaction; a release names the event that accrued its piece, which is `posted`, and an
  adjustment naming an event, which the service never writes, does not count);
- a payment (`invoice_paid`) is `unattributed` when, and only when, its customer has no attribution
  at all (`AttributionIndex.knows`): a customer attributed from a later date is `no_commission`;
- a refund, chargeback or won dispute is `unattributed` when, and only when, the payment of its
  invoice is.

Without them, a role that may write events (the service's own) could insert, for an event id
billing had not sent yet, a row saying it posted nothing: billing's event was then answered as its
replay, its commission never posted, and nothing told the row from one the service decided. A row
saying `no_commission` for an attributed customer with no transaction still passes: deciding that
needs the plan, the statuses and the windows as they stood. `revshare verify` checks the same three
rules on rows written before this revision (`event_status_unlike_postings`,
`event_status_unlike_attributions`, `event_status_unlike_payment`).

The second rule reads the attributions as they stand when the event is written, as Python does
under the journal lock; on PostgreSQL a writer of attributions now takes the journal lock too
(`ledger.customers.attribute`), so that none is committed between the two.

- a close is dated (`closed_at_us`) no earlier than its period ends and no later than five minutes
  ahead of the database's clock (migration 0018 refused a close before its period ended by that
  clock, and `revshare verify`, `close_time_altered`, named a `closed_at` before its period's end);
  on SQLite it is an integer.

Rows already written are left as they are, as in migration 0018.

SQLite: row triggers after insert (migration 0018's maker): an event row checks the transactions
naming it, its customer's attributions and its invoice's payment, each by index. PostgreSQL: the
three event rules in one statement trigger over the statement's new events (a batch's COPY is
checked once), each rule as two checks, a semi-join and an anti-join by index under migration
0029's settings; the close rule a row trigger. Every
function runs with `search_path = public, pg_temp`.

Revision ID: 0034
Revises: 0033
Create Date: 2026-12-03
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0034"
down_revision = "0033"
branch_labels = None
depends_on = None

_0018 = _revision("0018_rules_held.py")  # sqlite_rule, postgres_rule and the clocks
_0029 = _revision("0029_postings_in_their_place.py")  # BY_INDEX

CLOCK_SKEW_US = 5 * 60 * 1_000_000  # ledger.revenue's, as of this revision

# Each event rule: (name, the rows it concerns, a condition on a new event `n`, a subquery, message):
# the row is refused when the condition and the subquery's EXISTS disagree (a payment is decided,
# `posted` or `no_commission`, when, and only when, its customer has an attribution).
EVENT_POSTING_KINDS = "('accrual', 'cpa', 'override', 'clawback')"  # ledger.revenue's, as of this revision
EVENT_RULES = (
    ("posted_as_named", "true", "n.status = 'posted'",
     "SELECT 1 FROM journal_transactions t WHERE t.event_id = n.id AND t.invoice_id = n.invoice_id"
     f" AND t.kind IN {EVENT_POSTING_KINDS}",
     "revenue_events: an event is posted when a commission or clawback of its invoice names it, and only then"),
    ("attributed_as_known", "n.type = 'invoice_paid'", "n.status <> 'unattributed'",
     "SELECT 1 FROM attributions a WHERE a.customer_id = n.customer_id",
     "revenue_events: a payment is unattributed when its customer has no attribution, and only then"),
    ("attributed_as_paid", "n.type <> 'invoice_paid'", "n.status = 'unattributed'",
     "SELECT 1 FROM revenue_events p WHERE p.invoice_id = n.invoice_id AND p.type = 'invoice_paid'"
     " AND p.status = 'unattributed'",
     "revenue_events: a refund, chargeback or won dispute is unattributed when its payment is, and only then"),
)
# On PostgreSQL each rule is two: the condition with the subquery's EXISTS, and without it. An
# EXISTS compared with a boolean is planned as a subplan that hashes the whole table it reads (every
# attribution, every payment); on its own in a WHERE it is a semi- or anti-join, by index.
POSTGRES_EVENT_CHECKS = tuple(
    (f"{only_when} AND {condition} AND NOT EXISTS ({subquery})", message)
    for _name, only_when, condition, subquery, message in EVENT_RULES) + tuple(
    (f"{only_when} AND NOT ({condition}) AND EXISTS ({subquery})", message)
    for _name, only_when, condition, subquery, message in EVENT_RULES)

CLOSE_MESSAGE = "period_closes: a close is dated after its period ends and not in the future"


def close_misdated(now_us: str) -> str:
    return f"n.closed_at_us < n.ends_at_us OR n.closed_at_us > {now_us} + {CLOCK_SKEW_US}"


# (table, name, refused when, message, only when), as in migration 0029.
SQLITE_RULES = (
    *(("revenue_events", name, f"({condition}) <> EXISTS ({subquery})", message,
       None if only_when == "true" else only_when)
      for name, only_when, condition, subquery, message in EVENT_RULES),
    ("period_closes", "closed_in_time", f"typeof(n.closed_at_us) <> 'integer' OR {close_misdated(_0018.NOW_US_SQLITE)}",
     CLOSE_MESSAGE, None),
)
POSTGRES_CLOSE_RULE = ("period_closes", "closed_in_time", close_misdated(_0018.NOW_US_POSTGRES), CLOSE_MESSAGE, None)

STATEMENT_FUNCTION = "revenue_events_as_posted"
POSTGRES_STATEMENT_GUARD = f"""
CREATE FUNCTION {STATEMENT_FUNCTION}() RETURNS trigger LANGUAGE plpgsql {_0029.BY_INDEX}
SET search_path = public, pg_temp AS $$
BEGIN
{"".join(f'''  IF EXISTS (SELECT 1 FROM added n WHERE {refused_when}) THEN
    RAISE EXCEPTION '{message}' USING ERRCODE = 'check_violation';
  END IF;
''' for refused_when, message in POSTGRES_EVENT_CHECKS)}  RETURN NULL;
END $$;

CREATE TRIGGER trg_{STATEMENT_FUNCTION} AFTER INSERT ON revenue_events
REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION {STATEMENT_FUNCTION}()"""


def statements(engine: str) -> list[str]:
    for _table, _name, _refused_when, message, _only_when in SQLITE_RULES:
        assert "'" not in message, message  # quoted in SQL as it stands
    if engine != "postgresql":
        return [statement for table, name, refused_when, message, only_when in SQLITE_RULES
                for statement in _0018.sqlite_rule(table, name, refused_when, message, only_when).split(";\n\n")]
    table, name, refused_when, message, only_when = POSTGRES_CLOSE_RULE
    return [*POSTGRES_STATEMENT_GUARD.split(";\n\n"),
            *_0018.postgres_rule(table, name, refused_when, message, only_when).split(";\n\n"),
            f"ALTER FUNCTION {table}_{name}() SET search_path = public, pg_temp"]


def upgrade() -> None:
    for statement in statements(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    """The guards of this revision only: they hold new rows, and nothing else depends on them."""
    if op.get_bind().dialect.name != "postgresql":
        for table, name, *_ in SQLITE_RULES:
            op.execute(f"DROP TRIGGER trg_{table}_{name}")
        return
    op.execute(f"DROP TRIGGER trg_{STATEMENT_FUNCTION} ON revenue_events")
    op.execute(f"DROP FUNCTION {STATEMENT_FUNCTION}()")
    table, name, *_ = POSTGRES_CLOSE_RULE
    op.execute(f"DROP TRIGGER trg_{table}_{name} ON {table}")
    op.execute(f"DROP FUNCTION {table}_{name}()")
