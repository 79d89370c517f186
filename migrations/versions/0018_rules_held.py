"""The database holds the rules Python enforces, for a writer that goes around Python:

- Accounts: each is in the chart of accounts, with the type, normal side and partner its name
  gives (the liabilities report trusts the stored partner).
- Reversals: a transaction of kind `reversal` names what it reverses; a reversal is never itself
  reversed; its lines undo the original's exactly (per account and currency, debits less credits
  of the two add up to zero); and a moved posting's requested instant (`original_effective_at_us`)
  lies before the instant it was posted at, which is the only way `ledger.journal.Batch` sets it
  (a posting dated in a closed period is moved to the start of the first open one). Without that
  last rule, migration 0017's "not before the original" guard could be passed by naming a later
  requested instant.
- Values: on SQLite, whose columns take any value whatever their declared type, amounts and
  instants of the journal, revenue events, payouts and snapshots are integers (a text amount
  passed `amount_minor > 0` and broke every report that summed it). On both engines a currency is
  three capital letters; that it is an ISO 4217 code with a minor unit is Python's check
  (`ledger.money`) and `revshare verify`'s.
- Program facts: a partner's status starts no earlier than its latest and none follows a
  termination (termination is final); a partner's plan, a customer's attribution and a plan's
  version each start after the latest of their kind; plan versions are numbered 1, 2, 3... and
  their terms are a JSON object.
- Periods: a close chains the previous one (it starts where the previous one ended and names its
  hash; the first names the genesis hash), covers the calendar month its label names, and has
  ended by the database's own clock. Its snapshot rows are written before it and sealed by it, as
  journal lines are by their header: none can be added to a closed period.
- Payouts: a payout names a `payout` transaction of the same partner whose debits in its currency
  are its amount; a resolution names a `payout_settled` or `payout_failed` transaction, as its
  outcome says, of the payout's partner, or for a failure the reversal of the payout's own
  posting; a payout run is not dated in the future by the
  database's clock (five minutes' skew allowed, as for revenue events).
- API keys and stored idempotent responses are never updated (PostgreSQL's application role
  already had no UPDATE grant; the owner and SQLite now meet a trigger too).

SQLite: row triggers, each with a `WHEN` clause, so a row the rule does not concern pays one
comparison. PostgreSQL: row triggers after insert; those on the journal, the events and the program
facts are called only for the rows their `WHEN` picks (a batch's COPY queues no trigger event for
the others). Rows already written are left as they are: `revshare verify` reports what breaks the
rules. Each guard has a test that bypasses Python on both engines
(tests/integration/test_database_rules.py).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

# Migration 0017's trigger makers, `new_row` and `postgres_guard` (its file name is no module name).
_0017 = _revision("0017_in_time.py")
new_row = _0017.new_row

GENESIS_HASH = "0" * 64
CLOCK_SKEW_US = 5 * 60 * 1_000_000  # ledger.revenue's, as of this revision

# Each rule: (table, name, the condition that refuses a new row `n`, the message, a condition with no
# subquery that picks the rows the rule concerns or None for every row, the engines it applies to).
BOTH = ("sqlite", "postgresql")
SQLITE = ("sqlite",)

SIGNED_AMOUNT = "CASE l.side WHEN 'D' THEN l.amount_minor ELSE -l.amount_minor END"
NOT_A_MIRROR = (f"EXISTS (SELECT 1 FROM journal_lines l WHERE l.transaction_id IN (n.id, n.reverses_id)"
                f" GROUP BY l.account_id, l.currency HAVING sum({SIGNED_AMOUNT}) <> 0)")
REVERSES_A_REVERSAL = "(SELECT o.kind FROM journal_transactions o WHERE o.id = n.reverses_id) = 'reversal'"


def integers(*columns: str) -> str:
    return " OR ".join(f"typeof(n.{column}) <> 'integer'" for column in columns)


def integers_or_null(*columns: str) -> str:
    return " OR ".join(f"(n.{column} IS NOT NULL AND typeof(n.{column}) <> 'integer')" for column in columns)


CURRENCY_SQLITE = "NOT (n.currency GLOB '[A-Z][A-Z][A-Z]')"
CURRENCY_POSTGRES = "n.currency !~ '^[A-Z]{3}$'"

LATER_STATUS = ("EXISTS (SELECT 1 FROM partner_statuses s WHERE s.partner_id = n.partner_id AND s.id <> n.id"
                " AND (s.effective_at_us > n.effective_at_us OR s.status = 'terminated'))")
LATER_PLAN = ("EXISTS (SELECT 1 FROM partner_plans p WHERE p.partner_id = n.partner_id AND p.id <> n.id"
              " AND p.effective_from_us >= n.effective_from_us)")
LATER_ATTRIBUTION = ("EXISTS (SELECT 1 FROM attributions a WHERE a.customer_id = n.customer_id AND a.id <> n.id"
                     " AND a.effective_from_us >= n.effective_from_us)")
VERSION_OUT_OF_ORDER = ("n.version <> 1 + (SELECT coalesce(max(v.version), 0) FROM plan_versions v"
                        " WHERE v.plan_id = n.plan_id AND v.id <> n.id)"
                        " OR EXISTS (SELECT 1 FROM plan_versions v WHERE v.plan_id = n.plan_id AND v.id <> n.id"
                        " AND v.effective_from_us >= n.effective_from_us)")
TERMS_NOT_AN_OBJECT_SQLITE = "NOT json_valid(n.terms) OR json_type(n.terms) <> 'object'"
TERMS_NOT_AN_OBJECT_POSTGRES = "NOT revshare_is_json_object(n.terms)"

PREVIOUS_CLOSE = ("(SELECT p.{column} FROM period_closes p WHERE p.period <> n.period"
                  " ORDER BY p.ends_at_us DESC LIMIT 1)")
CLOSE_UNCHAINED = (f"n.prev_close_hash <> coalesce({PREVIOUS_CLOSE.format(column='close_hash')}, '{GENESIS_HASH}')"
                   f" OR n.starts_at_us <> coalesce({PREVIOUS_CLOSE.format(column='ends_at_us')}, n.starts_at_us)")
# The first instant of the month `period` names, and of the month after it, in microseconds.
MONTH_SQLITE = ("n.starts_at_us <> CAST(strftime('%s', n.period || '-01') AS INTEGER) * 1000000"
                " OR n.ends_at_us <> CAST(strftime('%s', n.period || '-01', '+1 month') AS INTEGER) * 1000000"
                " OR strftime('%Y-%m', n.period || '-01') IS NOT n.period")
MONTH_POSTGRES = ("n.period !~ '^[0-9]{4}-(0[1-9]|1[0-2])$'"
                  " OR n.starts_at_us <> extract(epoch FROM (n.period || '-01')::timestamp)::bigint * 1000000"
                  " OR n.ends_at_us <> extract(epoch FROM (n.period || '-01')::timestamp"
                  " + interval '1 month')::bigint * 1000000")
NOW_US_SQLITE = "CAST(strftime('%s', 'now') AS INTEGER) * 1000000"
NOW_US_POSTGRES = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
SNAPSHOT_SEALED = "EXISTS (SELECT 1 FROM period_closes c WHERE c.period = n.period)"

PAYOUT_UNPOSTED = ("NOT EXISTS (SELECT 1 FROM journal_transactions t WHERE t.id = n.transaction_id"
                   " AND t.kind = 'payout' AND t.partner_id = n.partner_id)"
                   " OR n.amount_minor <> coalesce((SELECT sum(l.amount_minor) FROM journal_lines l"
                   " WHERE l.transaction_id = n.transaction_id AND l.side = 'D' AND l.currency = n.currency), 0)")
# A pending payout also fails by the reversal of its own posting (ledger/reversals.py).
RESOLUTION_UNPOSTED = ("NOT EXISTS (SELECT 1 FROM journal_transactions t JOIN payouts p ON p.id = n.payout_id"
                       " WHERE t.id = n.transaction_id AND (t.kind = 'payout_' || n.outcome"
                       " AND t.partner_id = p.partner_id"
                       " OR n.outcome = 'failed' AND t.reverses_id = p.transaction_id))")

# The chart of accounts (ledger/accounts.py, as of this revision): an account's type, normal side
# and partner follow from its name. A partner id holds no ':'. Never NULL, so NOT of it refuses.
IN_THE_CHART = ("n.partner_id IS NULL AND (n.name IN ('expense:commission', 'expense:commission:writeoff',"
                " 'expense:commission:adjustment') AND n.type = 'expense' AND n.normal_side = 'D'"
                " OR n.name = 'asset:cash' AND n.type = 'asset' AND n.normal_side = 'D'"
                " OR n.name = 'liability:payouts:in_transit' AND n.type = 'liability' AND n.normal_side = 'C')"
                " OR n.partner_id IS NOT NULL AND replace(n.partner_id, ':', '') = n.partner_id"
                " AND n.type = 'liability' AND n.normal_side = 'C'"
                " AND n.name IN ('liability:partner:' || n.partner_id || ':' || 'pending',"
                " 'liability:partner:' || n.partner_id || ':' || 'available')")  # ':name' would be a bind parameter

RULES = [
    ("accounts", "in_the_chart", f"NOT ({IN_THE_CHART})",
     "accounts: an account is as the chart of accounts names it", None, BOTH),
    ("journal_transactions", "reversal_linked", "n.kind = 'reversal' AND n.reverses_id IS NULL",
     "journal_transactions: a reversal names the transaction it reverses", "n.kind = 'reversal'", BOTH),
    ("journal_transactions", "reversal_final", REVERSES_A_REVERSAL,
     "journal_transactions: a reversal cannot itself be reversed", "n.reverses_id IS NOT NULL", BOTH),
    ("journal_transactions", "reversal_mirrors", NOT_A_MIRROR,
     "journal_transactions: a reversal undoes its original exactly, account by account",
     "n.reverses_id IS NOT NULL", BOTH),
    ("journal_transactions", "moved_forward", "n.original_effective_at_us >= n.effective_at_us",
     "journal_transactions: a moved posting was asked for before the instant it is posted at",
     "n.original_effective_at_us >= n.effective_at_us", BOTH),
    ("journal_transactions", "integers",
     integers("effective_at_us", "recorded_at_us")
     + " OR " + integers_or_null("original_effective_at_us", "matures_at_us", "reverses_id", "accrual_id"),
     "journal_transactions: instants and links are integers", None, SQLITE),
    ("journal_lines", "values", f"{integers('amount_minor', 'effective_at_us')} OR {CURRENCY_SQLITE}",
     "journal_lines: amounts and instants are integers and currencies three capital letters", None, SQLITE),
    ("journal_lines", "currency", CURRENCY_POSTGRES,
     "journal_lines: a currency is three capital letters", CURRENCY_POSTGRES, ("postgresql",)),
    ("revenue_events", "values", f"{integers('amount_minor', 'occurred_at_us', 'recorded_at_us')} OR {CURRENCY_SQLITE}",
     "revenue_events: amounts and instants are integers and currencies three capital letters", None, SQLITE),
    ("revenue_events", "currency", CURRENCY_POSTGRES,
     "revenue_events: a currency is three capital letters", CURRENCY_POSTGRES, ("postgresql",)),
    ("payouts", "values", f"{integers('amount_minor')} OR {CURRENCY_SQLITE}",
     "payouts: amounts are integers and currencies three capital letters", None, SQLITE),
    ("period_snapshots", "values", f"{integers('debit_minor', 'credit_minor')} OR {CURRENCY_SQLITE}",
     "period_snapshots: totals are integers and currencies three capital letters", None, SQLITE),
    ("partner_statuses", "in_order", LATER_STATUS,
     "partner_statuses: a status starts no earlier than the latest, and none follows a termination", None, BOTH),
    ("partner_plans", "in_order", LATER_PLAN, "partner_plans: a plan starts after the latest of the partner", None,
     BOTH),
    ("attributions", "in_order", LATER_ATTRIBUTION,
     "attributions: an attribution starts after the latest of the customer", None, BOTH),
    ("plan_versions", "in_order", VERSION_OUT_OF_ORDER,
     "plan_versions: versions are numbered in turn, each starting after the latest", None, BOTH),
    ("plan_versions", "terms", TERMS_NOT_AN_OBJECT_SQLITE, "plan_versions: terms are a JSON object", None, SQLITE),
    ("plan_versions", "terms", TERMS_NOT_AN_OBJECT_POSTGRES, "plan_versions: terms are a JSON object", None,
     ("postgresql",)),
    ("period_closes", "chained", CLOSE_UNCHAINED,
     "period_closes: a close starts where the previous one ended and names its hash", None, BOTH),
    ("period_closes", "month", MONTH_SQLITE, "period_closes: a close covers the calendar month it names", None,
     SQLITE),
    ("period_closes", "month", MONTH_POSTGRES, "period_closes: a close covers the calendar month it names", None,
     ("postgresql",)),
    ("period_closes", "ended", f"n.ends_at_us > {NOW_US_SQLITE}", "period_closes: a period is closed once it has ended",
     None, SQLITE),
    ("period_closes", "ended", f"n.ends_at_us > {NOW_US_POSTGRES}",
     "period_closes: a period is closed once it has ended", None, ("postgresql",)),
    ("period_snapshots", "sealed", SNAPSHOT_SEALED, "period_snapshots: the snapshot of a closed period is complete",
     None, BOTH),
    ("payouts", "posted", PAYOUT_UNPOSTED, "payouts: a payout is its payout transaction, partner and amount",
     None, BOTH),
    ("payout_resolutions", "posted", RESOLUTION_UNPOSTED,
     "payout_resolutions: a resolution is the transaction of its outcome, for the partner of the payout", None, BOTH),
    ("payout_runs", "not_ahead", f"n.at_us > {NOW_US_SQLITE} + {CLOCK_SKEW_US}",
     "payout_runs: a run is not dated in the future", None, SQLITE),
    ("payout_runs", "not_ahead", f"n.at_us > {NOW_US_POSTGRES} + {CLOCK_SKEW_US}",
     "payout_runs: a run is not dated in the future", None, ("postgresql",)),
]

NEVER_UPDATED = ("api_keys", "idempotency_records")

JSON_OBJECT_FUNCTION = """
CREATE FUNCTION revshare_is_json_object(value text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RETURN jsonb_typeof(value::jsonb) = 'object';
EXCEPTION WHEN invalid_text_representation THEN
  RETURN false;
END $$"""


def sqlite_rule(table: str, name: str, refused_when: str, message: str, only_when: str | None) -> str:
    # AFTER INSERT, as on PostgreSQL: the new row's id is assigned, and other rows are told from it.
    condition = new_row(refused_when if only_when is None else f"({only_when}) AND ({refused_when})")
    return f"""CREATE TRIGGER trg_{table}_{name} AFTER INSERT ON {table}
WHEN {condition}
BEGIN SELECT RAISE(ABORT, '{message}'); END"""


def postgres_rule(table: str, name: str, refused_when: str, message: str, only_when: str | None) -> str:
    return _0017.postgres_guard(table, name, new_row(refused_when), message,
                                only_when=new_row(only_when) if only_when else None)


def never_updated(table: str, postgres: bool) -> str:
    message = f"{table}: rows are never updated"
    if not postgres:
        return (f"CREATE TRIGGER trg_{table}_no_update BEFORE UPDATE ON {table}\n"
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END")
    return f"""CREATE FUNCTION {table}_no_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '{message}' USING ERRCODE = 'check_violation';
END $$;

CREATE TRIGGER trg_{table}_no_update BEFORE UPDATE ON {table}
FOR EACH ROW EXECUTE FUNCTION {table}_no_update()"""


def statements(engine: str) -> list[str]:
    postgres = engine == "postgresql"
    make = postgres_rule if postgres else sqlite_rule
    found = [JSON_OBJECT_FUNCTION] if postgres else []
    for table, name, refused_when, message, only_when, engines in RULES:
        assert "'" not in message, message  # quoted in SQL as it stands
        if engine in engines:
            found.extend(make(table, name, refused_when, message, only_when).split(";\n\n"))
    for table in NEVER_UPDATED:
        found.extend(never_updated(table, postgres).split(";\n\n"))
    return found


def upgrade() -> None:
    for statement in statements(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the guards are only ever replaced by a new migration")
