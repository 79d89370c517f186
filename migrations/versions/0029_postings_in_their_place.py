"""The database holds eight more rules Python keeps, for a writer that goes around Python:

- a release is asked for no earlier than its piece matures (`ledger.holds` releases a piece at its
  maturity, once the release's instant has come): dated before, it made the amount available, and
  payable, while the piece was still held;
- a transaction that names a partner posts to no other partner's accounts (every posting of the
  service moves the money of the partner it names; a reversal names its original's): a partner's
  key reads the transactions that name it (`ledger.transactions.page`), and a posting naming one
  partner on another's account showed that other partner's money to it;
- a payout's resolution posts the payout's amount, in its currency, on the accounts of its
  outcome (`ledger.payouts`: Dr in transit / Cr cash, or Cr the partner's available account on a
  failure); migration 0018 held only the kind and the partner, and a failure of 10,000.00 on a
  payout of 75.00 returned the partner money it was never paid (a failure by the reversal of the
  payout's posting is its mirror, which migration 0018 holds);
- no transaction is asked for (`original_effective_at_us` when it was moved to the first open
  period, else `effective_at_us`) more than five minutes after it is recorded, whatever its kind:
  migration 0021 held it for adjustments; Python refuses a reversal, a release, a payout run or a
  settlement dated ahead, and an event's postings are dated by the event, itself at most five
  minutes ahead (migration 0017). A reversal dated 2100 left its original standing in every report
  until then;
- a transaction's plan version exists: a won dispute reads the hold of its piece's plan version,
  and a version that did not exist answered every such dispute with a 500;
- a transaction has at most 100 lines, and an idempotency key of 1 to 200 characters
  (`ledger.journal.check_draft`; PostgreSQL's VARCHAR(200) held the longest key, SQLite nothing);
- a partner key names a partner that exists (`ledger.keys.create_key`; `api_keys` has no foreign
  key to `partners`, and a key made for a mistyped id saw nothing).

Rows already written are left as they are, as in migration 0018.

SQLite: row triggers after insert (migration 0018's maker); the release's and the plan version's
have a `WHEN` that spares other rows their subquery. PostgreSQL: the release, partner and plan
version rules in one statement trigger over the statement's new headers, looked up by index as in
migrations 0019 and 0022 (a batch's COPY is checked once); the instant rule a row trigger called
only for a header dated ahead (its `WHEN` holds the whole condition, as in migration 0021); the
resolution rule a row trigger (a resolution is written once per settle or fail). Every function
runs with `search_path = public, pg_temp`, as every function since migration 0023.

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-02
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None

# Migration 0018's rule makers, `sqlite_rule` and `postgres_rule` (its file name is no module name).
_0018 = _revision("0018_rules_held.py")

CLOCK_SKEW_US = 5 * 60 * 1_000_000  # ledger.revenue's, as of this revision
ASKED_FOR = "coalesce(n.original_effective_at_us, n.effective_at_us)"

RELEASE = "n.kind = 'release'"
RELEASED_EARLY = (f"{ASKED_FOR} < (SELECT p.matures_at_us FROM journal_transactions p WHERE p.id = n.accrual_id)")
RELEASED_EARLY_MESSAGE = "journal_transactions: a release is not asked for before its accrual matures"

NAMES_A_PARTNER = "n.partner_id IS NOT NULL"
ANOTHER_PARTNERS = ("EXISTS (SELECT 1 FROM journal_lines l JOIN accounts a ON a.id = l.account_id"
                    " WHERE l.transaction_id = n.id AND a.partner_id <> n.partner_id)")
ANOTHER_PARTNERS_MESSAGE = ("journal_transactions: a transaction posts to the accounts of the partner it names,"
                            " and to no other partner")

NAMES_A_VERSION = "n.plan_version_id IS NOT NULL"
NO_SUCH_VERSION = "NOT EXISTS (SELECT 1 FROM plan_versions v WHERE v.id = n.plan_version_id)"
NO_SUCH_VERSION_MESSAGE = "journal_transactions: a transaction names a plan version that exists"

# `ledger.journal.check_draft`'s limits: PostgreSQL's VARCHAR(200) holds the key's longest, SQLite nothing.
KEY_LENGTH = "length(n.idempotency_key) NOT BETWEEN 1 AND 200"
KEY_LENGTH_MESSAGE = "journal_transactions: an idempotency key has 1 to 200 characters"
EVERY_HEADER = "n.id IS NOT NULL"
TOO_MANY_LINES = "(SELECT count(*) FROM journal_lines l WHERE l.transaction_id = n.id) > 100"
TOO_MANY_LINES_MESSAGE = "journal_transactions: a transaction has at most 100 lines"

# `ledger.keys.create_key`: a partner key is bound to a partner that exists (api_keys has no foreign
# key to partners; a mistyped id made a key that saw nothing).
PARTNER_KEY = "n.partner_id IS NOT NULL"
NO_SUCH_PARTNER = "NOT EXISTS (SELECT 1 FROM partners p WHERE p.id = n.partner_id)"
NO_SUCH_PARTNER_MESSAGE = "api_keys: a partner key names a partner that exists"

# Migration 0021 holds the adjustments' (its message names them), with the same bound.
AHEAD = f"n.kind <> 'adjustment' AND {ASKED_FOR} > n.recorded_at_us + {CLOCK_SKEW_US}"
AHEAD_MESSAGE = "journal_transactions: a transaction is dated at most five minutes after it is recorded"

# The resolution `n`'s transaction, of kind payout_settled or payout_failed, against its payout `p`:
# its debits in the payout's currency are the payout's amount, and every line is in that currency, a
# debit of the payouts in transit or a credit to cash (settled) or the partner's available account
# (failed). ':name' in a migration would be a bind parameter, hence the concatenation.
ACCOUNT_NAME = "(SELECT a.name FROM accounts a WHERE a.id = l.account_id)"
RESOLUTION_MISPOSTED = (
    "EXISTS (SELECT 1 FROM journal_transactions t JOIN payouts p ON p.id = n.payout_id"
    " WHERE t.id = n.transaction_id AND t.kind IN ('payout_settled', 'payout_failed') AND ("
    "p.amount_minor <> (SELECT coalesce(sum(l.amount_minor), 0) FROM journal_lines l"
    " WHERE l.transaction_id = t.id AND l.side = 'D' AND l.currency = p.currency)"
    " OR EXISTS (SELECT 1 FROM journal_lines l WHERE l.transaction_id = t.id AND (l.currency <> p.currency OR NOT ("
    f"l.side = 'D' AND {ACCOUNT_NAME} = 'liability:payouts:in_transit'"
    f" OR l.side = 'C' AND {ACCOUNT_NAME} = CASE t.kind WHEN 'payout_settled' THEN 'asset:cash'"
    " ELSE 'liability:partner:' || p.partner_id || ':' || 'available' END)))))")
RESOLUTION_MESSAGE = ("payout_resolutions: a resolution posts the amount of its payout, in its currency,"
                      " on the accounts of its outcome")

# PostgreSQL: the three rules with subqueries in one statement trigger over the new headers, each
# query by index as in migration 0019 (0022's settings, as of it).
BY_INDEX = "SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off"
STATEMENT_RULES = ((RELEASE, RELEASED_EARLY, RELEASED_EARLY_MESSAGE),
                   (NAMES_A_PARTNER, ANOTHER_PARTNERS, ANOTHER_PARTNERS_MESSAGE),
                   (NAMES_A_VERSION, NO_SUCH_VERSION, NO_SUCH_VERSION_MESSAGE),
                   (EVERY_HEADER, TOO_MANY_LINES, TOO_MANY_LINES_MESSAGE))
STATEMENT_FUNCTION = "journal_transactions_in_their_place"
POSTGRES_STATEMENT_GUARD = f"""
CREATE FUNCTION {STATEMENT_FUNCTION}() RETURNS trigger LANGUAGE plpgsql {BY_INDEX}
SET search_path = public, pg_temp AS $$
BEGIN
{"".join(f'''  IF EXISTS (SELECT 1 FROM added n WHERE {only_when} AND {refused_when}) THEN
    RAISE EXCEPTION '{message}' USING ERRCODE = 'check_violation';
  END IF;
''' for only_when, refused_when, message in STATEMENT_RULES)}  RETURN NULL;
END $$;

CREATE TRIGGER trg_{STATEMENT_FUNCTION} AFTER INSERT ON journal_transactions
REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION {STATEMENT_FUNCTION}()"""

# (table, name, refused when, message, only when) of the row rules: SQLite all, PostgreSQL the last three.
ROW_RULES = (
    ("journal_transactions", "released_at_maturity", RELEASED_EARLY, RELEASED_EARLY_MESSAGE, RELEASE),
    ("journal_transactions", "partners_own", ANOTHER_PARTNERS, ANOTHER_PARTNERS_MESSAGE, NAMES_A_PARTNER),
    ("journal_transactions", "plan_version_known", NO_SUCH_VERSION, NO_SUCH_VERSION_MESSAGE, NAMES_A_VERSION),
    ("journal_transactions", "lines_at_most_100", TOO_MANY_LINES, TOO_MANY_LINES_MESSAGE, None),
    ("journal_transactions", "not_ahead", AHEAD, AHEAD_MESSAGE, AHEAD),
    ("journal_transactions", "key_length", KEY_LENGTH, KEY_LENGTH_MESSAGE, KEY_LENGTH),
    ("payout_resolutions", "amount_posted", RESOLUTION_MISPOSTED, RESOLUTION_MESSAGE, None),
    ("api_keys", "partner_known", NO_SUCH_PARTNER, NO_SUCH_PARTNER_MESSAGE, PARTNER_KEY),
)
POSTGRES_ROW_RULES = ROW_RULES[4:]


def statements(engine: str) -> list[str]:
    found = []
    for *_, message, _only_when in ROW_RULES:
        assert "'" not in message, message  # quoted in SQL as it stands
    if engine != "postgresql":
        for table, name, refused_when, message, only_when in ROW_RULES:
            # SQLite's WHEN holds both: the kind or the link first, so another row pays one comparison.
            found.extend(_0018.sqlite_rule(table, name, refused_when, message,
                                           None if only_when == refused_when else only_when).split(";\n\n"))
        return found
    found.extend(POSTGRES_STATEMENT_GUARD.split(";\n\n"))
    for table, name, refused_when, message, only_when in POSTGRES_ROW_RULES:
        found.extend(_0018.postgres_rule(table, name, refused_when, message, only_when).split(";\n\n"))
        found.append(f"ALTER FUNCTION {table}_{name}() SET search_path = public, pg_temp")
    return found


def upgrade() -> None:
    for statement in statements(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    """The guards of this revision only: they hold new rows, and nothing else depends on them."""
    if op.get_bind().dialect.name != "postgresql":
        for table, name, *_ in ROW_RULES:
            op.execute(f"DROP TRIGGER trg_{table}_{name}")
        return
    op.execute(f"DROP TRIGGER trg_{STATEMENT_FUNCTION} ON journal_transactions")
    op.execute(f"DROP FUNCTION {STATEMENT_FUNCTION}()")
    for table, name, *_ in POSTGRES_ROW_RULES:
        op.execute(f"DROP TRIGGER trg_{table}_{name} ON {table}")
        op.execute(f"DROP FUNCTION {table}_{name}()")
