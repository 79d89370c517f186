"""The database holds a commission's and a write-off's accounts, and a write-off's amount, for a
writer that goes around Python:

- an accrual, CPA or override (`ledger.revenue`, `ledger.commission`) names its partner and moves
  money from `expense:commission` to that partner's pending account: each line a debit of the
  expense or a credit of the pending account (the service writes two);
- a write-off (`ledger.periods`, at a close under the `reset` policy) names its partner and moves
  money from `expense:commission:writeoff` to that partner's available account, each line a debit
  of the one or a credit of the other, in one currency, at the last microsecond of a month, and
  leaves that account at zero as of then: what it forgives is exactly the negative balance (one
  currency: the balance is read in the currency of its first credit, and a second currency's lines
  forgave what no balance owed).

Migrations 0022, 0026, 0029 and 0031 held the accounts of every other kind (clawbacks, releases,
payouts, adjustments; a reversal mirrors its original). These two were held by nothing: a write-off
of 50,000.00 USD from `asset:cash` to a partner's available account, inserted by the service's own
role with its hashes computed (they need no secret), was accepted, `revshare verify` said ok, and the
next payout run paid it. `revshare verify` checks the same rules on rows written before this
revision (`earning_misposted`, `writeoff_misposted`, `writeoff_unlike_balance`).

The write-off's balance is read as the service reads it: the latest close's snapshot of the account
plus its lines after that close's end, up to the write-off's instant (a write-off is posted by its
period's close, before the close is inserted). A close writes off few partners; the read runs for
them only.

SQLite: row triggers after insert (migration 0018's maker), each with a `WHEN` that picks its kind.
PostgreSQL: the commission's rule joins migration 0032's statement function over the statement's
new headers, from the same scan of each header's lines (a batch's COPY is checked once); the
write-off's is a row trigger, called only for write-offs. Every function runs with `search_path =
public, pg_temp` and `jit = off` (migration 0037). Rows already written are left as they are.

Cost on the bulk ingest path: on SQLite, 12,000 payments (22,000 accruals and overrides) in batches
of 4,000, with the commission's trigger and with it dropped, in turn three times: 2.39, 2.41 and
2.62 s against 2.43, 2.41 and 2.38 s, within the machine's drift. `python -m bench --quick --only
ingestion`, this revision's tree and 0046's in turn: SQLite 5,066 and 4,798 events/s against 5,216
and 5,297 (72% of the raw driver's rate in the same run, each); PostgreSQL 6,316 (65% of raw)
against 4,703 (48%), on a shared 2-core machine.

Revision ID: 0047
Revises: 0046
Create Date: 2026-12-06
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0047"
down_revision = "0046"
branch_labels = None
depends_on = None

_0018 = _revision("0018_rules_held.py")  # sqlite_rule, postgres_rule
_0032 = _revision("0032_postings_planned_once.py")  # the statement function's line facts
_0033 = _revision("0033_what_follows_by_kind.py")  # the statement function as it stands

SETTINGS = "SET search_path = public, pg_temp SET jit = off"
# What migration 0037 set on the statement function besides what it is made with (made again, it loses them).
SEAL_SETTINGS = "SET jit = off SET enable_bitmapscan = off SET enable_material = off"

# ':name' in a migration would be a bind parameter, hence the concatenation.
EARNING_KINDS = "n.kind IN ('accrual', 'cpa', 'override')"
EARNING_LINE = ("(l.side = 'D' AND a.name = 'expense:commission')"
                " OR (l.side = 'C' AND a.name = 'liability:partner:' || n.partner_id || ':' || 'pending')")
EARNING_MESSAGE = ("journal_transactions: an accrual, CPA or override moves money from expense:commission"
                   " to the pending account of the partner it names")

WRITEOFF = "n.kind = 'writeoff'"
WRITEOFF_LINE = ("(l.side = 'D' AND a.name = 'expense:commission:writeoff')"
                 " OR (l.side = 'C' AND a.name = 'liability:partner:' || n.partner_id || ':' || 'available')")
WRITEOFF_MESSAGE = ("journal_transactions: a write-off moves money from expense:commission:writeoff to the"
                    " available account of the partner it names, in one currency, at the end of a month, and"
                    " leaves it at zero")


def misposted(line: str) -> str:
    """The condition refusing a header `n` unless it names a partner and each of its lines is `line`
    (how many, and that they balance, the seal holds)."""
    return ("n.partner_id IS NULL OR EXISTS (SELECT 1 FROM journal_lines l JOIN accounts a ON a.id = l.account_id"
            f" WHERE l.transaction_id = n.id AND NOT ({line}))")


def month_end(engine: str) -> str:
    """The condition refusing `n.effective_at_us` unless it is a month's last microsecond, UTC."""
    seconds = "(n.effective_at_us + 1) / 1000000"
    day_and_time = (f"strftime('%d %H:%M:%S', {seconds}, 'unixepoch')" if engine == "sqlite"
                    else f"to_char(to_timestamp({seconds}) AT TIME ZONE 'UTC', 'DD HH24:MI:SS')")
    return f"(n.effective_at_us + 1) % 1000000 <> 0 OR {day_and_time} <> '01 00:00:00'"


# The available balance the write-off's credit leaves as of its instant: the latest close's snapshot
# of the account, and its lines from that close's end up to the instant (the write-off's included).
LATEST_CLOSE = "(SELECT c.{column} FROM period_closes c ORDER BY c.ends_at_us DESC LIMIT 1)"
BALANCE_LEFT = (
    "(SELECT coalesce((SELECT s.credit_minor - s.debit_minor FROM period_snapshots s"
    f" WHERE s.period = {LATEST_CLOSE.format(column='period')}"
    " AND s.account_id = w.account_id AND s.currency = w.currency), 0)"
    " + (SELECT coalesce(sum(CASE b.side WHEN 'C' THEN b.amount_minor ELSE -b.amount_minor END), 0)"
    " FROM journal_lines b WHERE b.account_id = w.account_id AND b.currency = w.currency"
    f" AND b.effective_at_us >= coalesce({LATEST_CLOSE.format(column='ends_at_us')}, -9223372036854775807)"
    " AND b.effective_at_us <= n.effective_at_us)"
    " FROM journal_lines w WHERE w.transaction_id = n.id AND w.side = 'C' LIMIT 1)")
# (A write-off's lines are one account's credits once `misposted` passes: the first is read.)


ONE_CURRENCY = "(SELECT count(DISTINCT c.currency) FROM journal_lines c WHERE c.transaction_id = n.id) <> 1"


def writeoff_refused(engine: str) -> str:
    return f"{misposted(WRITEOFF_LINE)} OR {ONE_CURRENCY} OR {month_end(engine)} OR {BALANCE_LEFT} <> 0"


# ---- PostgreSQL: the commission's rule in migration 0032's statement function ----

LINE_FACTS = _0032.LINE_FACTS.replace(
    " bool_or(c.others) AS others", " bool_or(c.others) AS others, bool_or(c.astray) AS astray").replace(
    " bool_or(a.partner_id <> n.partner_id) AS others",
    f" bool_or(a.partner_id <> n.partner_id) AS others,"
    f" bool_or(CASE WHEN {EARNING_KINDS} THEN NOT coalesce({EARNING_LINE}, false) ELSE false END) AS astray")
EARNING_REFUSED = f"{EARNING_KINDS} AND (n.partner_id IS NULL OR f.astray)"
LAST_FACT = f"coalesce(bool_or({_0032.REVERSAL}), false)]"
LAST_SEAL_RAISE = f"'{_0032.SEAL_RULES[-1][1]}' USING ERRCODE = 'check_violation';\n  END IF;\n"


def seal_function(extended: bool) -> str:
    """Migration 0033's statement function, with the commission's rule or without."""
    function = _0033.seal_function(_0033.NOT_ENROLLED)
    if not extended:
        return function
    number = len(_0032.SEAL_RULES) + 3  # after the seal's rules and the piece rules' two tests
    for old, new in ((_0032.LINE_FACTS, LINE_FACTS),
                     (LAST_FACT, f"{LAST_FACT[:-1]},\n    coalesce(bool_or({EARNING_REFUSED}), false)]"),
                     (LAST_SEAL_RAISE, f"""{LAST_SEAL_RAISE}  IF broken[{number}] THEN
    RAISE EXCEPTION '{EARNING_MESSAGE}' USING ERRCODE = 'check_violation';
  END IF;
""")):
        assert function.count(old) == 1, old
        function = function.replace(old, new)
    return function


def statements(engine: str) -> list[str]:
    for message in (EARNING_MESSAGE, WRITEOFF_MESSAGE):
        assert "'" not in message, message  # quoted in SQL as it stands
    if engine == "sqlite":
        return [*_0018.sqlite_rule("journal_transactions", "earning_posted", misposted(EARNING_LINE),
                                   EARNING_MESSAGE, EARNING_KINDS).split(";\n\n"),
                *_0018.sqlite_rule("journal_transactions", "writeoff_posted", writeoff_refused(engine),
                                   WRITEOFF_MESSAGE, WRITEOFF).split(";\n\n")]
    return [seal_function(extended=True), f"ALTER FUNCTION journal_transactions_seal() {SEAL_SETTINGS}",
            *_0018.postgres_rule("journal_transactions", "writeoff_posted", writeoff_refused(engine),
                                 WRITEOFF_MESSAGE, WRITEOFF).split(";\n\n"),
            f"ALTER FUNCTION journal_transactions_writeoff_posted() {SETTINGS}"]


def upgrade() -> None:
    for statement in statements(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER trg_journal_transactions_earning_posted")
        op.execute("DROP TRIGGER trg_journal_transactions_writeoff_posted")
        return
    op.execute("DROP TRIGGER trg_journal_transactions_writeoff_posted ON journal_transactions")
    op.execute("DROP FUNCTION journal_transactions_writeoff_posted()")
    op.execute(seal_function(extended=False))
    op.execute(f"ALTER FUNCTION journal_transactions_seal() {SEAL_SETTINGS}")
