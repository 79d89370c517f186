"""The database holds four more rules Python keeps, for a writer that goes around Python:

- An adjustment moves money only between `expense:commission:adjustment` and the pending or
  available account of the partner it names, with its reason (`ledger.payouts.adjust`: two lines,
  a reason of 1 to 500 characters in `memo`). An adjustment that named no partner was read by no
  partner's key, and one between other accounts (cash, the payouts in transit, a partner's two
  accounts) moved money the chart of accounts gives other postings, unseen as an adjustment by the
  statements' totals.
- A transaction's partner is enrolled: a partner row of that id exists (every posting of the
  service names a partner of the program, or none), or it follows from a posting of that partner
  (a reversal from its original, a release or clawback from its piece), so that a posting written
  before this revision for a partner never enrolled can be reversed, and its hold released. A posting for a partner never enrolled was
  read by no key (a partner key names a partner that exists, migration 0029) and paid by no payout
  run, which pays the partners of the program.
- A payout run is not dated in a closed period (`ledger.payouts`, 409): its payouts' postings
  would be refused there (migration 0004), but a run that paid nobody was stored, and the run's
  instant then stood for a run made inside a closed month.
- The shapes of texts: a plan's or partner's name has 1 to 200 characters, not all blank (blank as
  Python's `str.isspace` has it); a revocation's reason the same to 500, and a resolution's reason
  at most 500; a partner's or plan's id is 1 to 64 letters, digits, `_`, `.` or `-` starting with
  a letter or digit (`ledger.accounts.PARTNER_ID_PATTERN`: the accounts of a partner whose id held
  a `:` could not be named), and a customer's id the same with `:`, `@` and `/` too
  (`ledger.customers.EXTERNAL_ID_PATTERN`). PostgreSQL's VARCHAR held the longest of each, and
  SQLite nothing; now both hold the lower bounds, the blanks and the characters, and SQLite the
  lengths and that each is text.

Not held here: the ids a revenue event and a journal header carry (event, customer, invoice), on
the bulk ingest path, where a pattern per row costs each event; Python checks them
(`ledger.customers.validate_external_id`).

SQLite: row triggers (migration 0018's maker) after insert, each with a `WHEN` that picks its rows:
an adjustment, a header naming a partner (one lookup by the partners' key), a payout run, a row of
the program's tables. PostgreSQL: the enrolment rule joins migration 0029's statement trigger over
the statement's new headers (a batch's COPY is checked once, by one join); the others are row
triggers, the adjustment's called only for adjustments. Every function runs with `search_path =
public, pg_temp`. Rows already written are left as they are, as in migration 0018.

Cost on the bulk ingest path, measured with `python -m bench --quick --engine both` on a shared
2-core machine, this revision's tree and 0030's in turn (0031, 0030, 0031, 0030), 30,000 paid
invoices in batches of 10,000: on SQLite 1,798, 2,615, 2,636 and 3,091 events/s, which is 56%, 49%,
57% and 51% of the raw driver's rate for the same rows in the same seconds (the bench's paired
ratio); on PostgreSQL 2,848, 2,445, 2,164 and 3,179 events/s, 70%, 55%, 57% and 64% of raw. The
machine's drift between runs of one tree is larger than any difference. `revshare import` of 9,950
events on SQLite, the two trees in turn twice: 5.9 and 4.5 s against 6.7 and 6.0 s.

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-03
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None


_0018 = _revision("0018_rules_held.py")  # sqlite_rule, postgres_rule
_0029 = _revision("0029_postings_in_their_place.py")  # the statement guard this revision extends on PostgreSQL

SEARCH_PATH = "SET search_path = public, pg_temp"
BOTH = ("sqlite", "postgresql")
SQLITE = ("sqlite",)
POSTGRES = ("postgresql",)

# ---- an adjustment: the adjustment expense against one account of its partner, with its reason ----

REASON_LENGTH_MAX = 500  # ledger.payouts.REASON_LENGTH_MAX, as of this revision
ADJUSTMENT = "n.kind = 'adjustment'"
# ':name' in a migration would be a bind parameter, hence the concatenation.
PARTNER_ACCOUNTS = ("'liability:partner:' || n.partner_id || ':' || 'pending'",
                    "'liability:partner:' || n.partner_id || ':' || 'available'")
ADJUSTMENT_MISPOSTED = (
    f"n.partner_id IS NULL OR n.memo IS NULL OR length(n.memo) NOT BETWEEN 1 AND {REASON_LENGTH_MAX}"
    " OR NOT EXISTS (SELECT 1 FROM (SELECT count(*) AS lines,"
    " sum(CASE WHEN a.name = 'expense:commission:adjustment' THEN 1 ELSE 0 END) AS expenses,"
    f" sum(CASE WHEN a.name IN ({', '.join(PARTNER_ACCOUNTS)}) THEN 1 ELSE 0 END) AS partners"
    " FROM journal_lines l JOIN accounts a ON a.id = l.account_id WHERE l.transaction_id = n.id) s"
    " WHERE s.lines = 2 AND s.expenses = 1 AND s.partners = 1)")
ADJUSTMENT_MESSAGE = ("journal_transactions: an adjustment moves money between the adjustment expense and one"
                      " account of the partner it names, with a reason of 1 to 500 characters")

# ---- a transaction's partner is enrolled ----

NAMES_A_PARTNER = "n.partner_id IS NOT NULL"
# A reversal names its original's partner (`journal.reversal_draft`), a release or clawback its
# piece's: refused, a posting written for a partner never enrolled before this revision could not be
# reversed (a 500 through the API), and its queued hold failed every release after it.
NOT_ENROLLED = ("NOT EXISTS (SELECT 1 FROM partners p WHERE p.id = n.partner_id)"
                " AND NOT EXISTS (SELECT 1 FROM journal_transactions o"
                " WHERE o.id IN (n.reverses_id, n.accrual_id) AND o.partner_id = n.partner_id)")
NOT_ENROLLED_MESSAGE = "journal_transactions: a transaction names a partner of the program"

# ---- a payout run, not in a closed period ----

RUN_IN_A_CLOSED_PERIOD = "n.at_us < (SELECT max(c.ends_at_us) FROM period_closes c)"
RUN_MESSAGE = "payout_runs: a run is not dated in a closed period"

# ---- the shapes of texts ----

# What Python's `str.strip()` takes away: every character whose `isspace()` is true.
WHITESPACE_CODE_POINTS = (*range(0x09, 0x0E), *range(0x1C, 0x21), 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                          0x2028, 0x2029, 0x202F, 0x205F, 0x3000)
WHITESPACE_SQLITE = f"char({', '.join(map(str, WHITESPACE_CODE_POINTS))})"
WHITESPACE_POSTGRES = " || ".join(f"chr({code})" for code in WHITESPACE_CODE_POINTS)


def text_of(column: str, low: int, high: int, *, not_blank: bool, engine: str) -> str:
    """The condition refusing `n.column` unless it is text of `low` to `high` characters (and not all
    blank): on PostgreSQL the VARCHAR holds the longest and the type."""
    blank = (f"trim(n.{column}, {WHITESPACE_SQLITE}) = ''" if engine == "sqlite"
             else f"btrim(n.{column}, {WHITESPACE_POSTGRES}) = ''")
    refused = [f"length(n.{column}) < {low}", *([blank] if not_blank else [])]
    if engine == "sqlite":
        refused = [f"typeof(n.{column}) <> 'text'", f"length(n.{column}) > {high}", *refused]
    return " OR ".join(refused)


# `ledger.accounts.PARTNER_ID_PATTERN` and `ledger.customers.EXTERNAL_ID_PATTERN`, as of this revision.
PARTNER_ID_CHARACTERS = "A-Za-z0-9_.-"
EXTERNAL_ID_CHARACTERS = "A-Za-z0-9_.:@/-"


def id_of(column: str, characters: str, engine: str) -> str:
    """The condition refusing `n.column` unless it is 1 to 64 of `characters`, the first a letter or digit."""
    if engine == "postgresql":
        return f"n.{column} !~ '^[A-Za-z0-9][{characters}]{{0,63}}$'"
    return (f"typeof(n.{column}) <> 'text' OR length(n.{column}) NOT BETWEEN 1 AND 64"
            f" OR n.{column} NOT GLOB '[A-Za-z0-9]*' OR n.{column} GLOB '*[^{characters}]*'")


def text_rules(engine: str) -> list[tuple]:
    """(table, name, refused when, message) of the shapes of texts on `engine`."""
    def name_rule(table: str) -> tuple:
        return (table, "name_shape", text_of("name", 1, 200, not_blank=True, engine=engine),
                f"{table}: a name has 1 to 200 characters, not all blank")
    return [
        name_rule("plans"), name_rule("partners"),
        ("plans", "id_shape", id_of("id", PARTNER_ID_CHARACTERS, engine),
         "plans: an id is 1 to 64 letters, digits, _ . or -, from a letter or digit"),
        ("partners", "id_shape", id_of("id", PARTNER_ID_CHARACTERS, engine),
         "partners: an id is 1 to 64 letters, digits, _ . or -, from a letter or digit"),
        ("customers", "id_shape", id_of("id", EXTERNAL_ID_CHARACTERS, engine),
         "customers: an id is 1 to 64 letters, digits, _ . : @ / or -, from a letter or digit"),
        ("api_key_revocations", "reason_shape",
         f"n.reason IS NOT NULL AND ({text_of('reason', 1, REASON_LENGTH_MAX, not_blank=True, engine=engine)})",
         "api_key_revocations: a reason has 1 to 500 characters, not all blank"),
        *([("payout_resolutions", "reason_shape",
            f"n.reason IS NOT NULL AND ({text_of('reason', 0, REASON_LENGTH_MAX, not_blank=False, engine=engine)})",
            "payout_resolutions: a reason has at most 500 characters")] if engine == "sqlite" else []),
    ]


def row_rules(engine: str) -> list[tuple]:
    """(table, name, refused when, message, only when) of this revision's row triggers on `engine`."""
    rules = [("journal_transactions", "adjustment_posted", ADJUSTMENT_MISPOSTED, ADJUSTMENT_MESSAGE, ADJUSTMENT),
             ("payout_runs", "in_an_open_period", RUN_IN_A_CLOSED_PERIOD, RUN_MESSAGE, None),
             *((*rule, None) for rule in text_rules(engine))]
    if engine == "sqlite":
        rules.append(("journal_transactions", "partner_enrolled", NOT_ENROLLED, NOT_ENROLLED_MESSAGE, NAMES_A_PARTNER))
    return rules


def in_their_place(extended: bool) -> str:
    """Migration 0029's statement function over new headers, with the enrolment rule or without."""
    rules = (*_0029.STATEMENT_RULES, *([(NAMES_A_PARTNER, NOT_ENROLLED, NOT_ENROLLED_MESSAGE)] if extended else []))
    checks = "".join(f"""  IF EXISTS (SELECT 1 FROM added n WHERE {only_when} AND {refused_when}) THEN
    RAISE EXCEPTION '{message}' USING ERRCODE = 'check_violation';
  END IF;
""" for only_when, refused_when, message in rules)
    original = _0029.POSTGRES_STATEMENT_GUARD.split(";\n\n")[0]
    head, _, _ = original.partition("BEGIN\n")
    assert SEARCH_PATH in head, head
    return f"{head.replace('CREATE FUNCTION', 'CREATE OR REPLACE FUNCTION')}BEGIN\n{checks}  RETURN NULL;\nEND $$"


def statements(engine: str) -> list[str]:
    rules = row_rules(engine)
    for *_, message, _only_when in rules:
        assert "'" not in message, message  # quoted in SQL as it stands
    if engine != "postgresql":
        return [statement for table, name, refused_when, message, only_when in rules
                for statement in _0018.sqlite_rule(table, name, refused_when, message, only_when).split(";\n\n")]
    found = [in_their_place(extended=True)]
    for table, name, refused_when, message, only_when in rules:
        found.extend(_0018.postgres_rule(table, name, refused_when, message, only_when).split(";\n\n"))
        found.append(f"ALTER FUNCTION {table}_{name}() {SEARCH_PATH}")
    return found


def upgrade() -> None:
    for statement in statements(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    """The guards of this revision only: they hold new rows, and nothing else depends on them."""
    engine = op.get_bind().dialect.name
    postgres = engine == "postgresql"
    if postgres:
        op.execute(in_their_place(extended=False))
    for table, name, *_ in row_rules(engine):
        op.execute(f"DROP TRIGGER trg_{table}_{name}" + (f" ON {table}" if postgres else ""))
        if postgres:
            op.execute(f"DROP FUNCTION {table}_{name}()")
