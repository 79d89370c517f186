"""PostgreSQL checks a statement's new journal headers with one trigger, one query and one plan.

Four statement triggers followed an insert into `journal_transactions` (the closed period of
migration 0004, the seal of 0006, the rules of 0029 and 0031, the piece rules of 0022 and 0030),
and a single posting's header ran eleven queries over the statement's transition table, each
planned anew on every call, and read its lines three times (their accounts, their count, the
seal's sums).

Now one trigger, `trg_journal_transactions_seal`, holds the same rules and raises them in the order
the four triggers raised them (closed period, then 0029's and 0031's rules, the seal's, the piece
rules; PostgreSQL fires a table's triggers in the order of their names). Its first query reads
the transition table, for the new headers' ids (the piece rules read it again, only for a statement
holding a clawback, release or reversal); one query then checks every rule over those headers,
read from `journal_transactions` by key, with one scan of each header's lines. That query binds
the ids as an array, so plpgsql keeps its plan for the connection (`plan_cache_mode` forces the
generic plan, which looks each header up by its key, and each line by `transaction_id`, for one
header as for ten thousand). The piece rules are 0030's as they were, run only for a statement that
holds a clawback, release or reversal, as before.

Measured on a seeded program (200 partners, 300 postings), 1,000 postings in a server-side loop
(two lines, then the header), this revision's function and 0031's triggers in turn, six rounds:
the header guards' own time a posting, median 358 us (218-448) against 451 us (294-580); with the
lines read once, 250 us (221-303) against 280 us (245-361) for the same function reading them five
times (`pg_stat_xact_user_functions`, on a shared 2-core machine under other load).

SQLite: nothing changes (its guards are row triggers, and a statement prepared by `sqlite3` keeps
its plan). Rows already written are left as they are.

Revision ID: 0032
Revises: 0031
Create Date: 2026-12-03
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0032"
down_revision = "0031"
branch_labels = None
depends_on = None


_0029 = _revision("0029_postings_in_their_place.py")  # the statement rules over new headers
_0030 = _revision("0030_what_follows_held.py")  # the piece rules, as 0030 left them
_0031 = _revision("0031_program_rules_held.py")  # 0029's rules with the enrolment rule

SEARCH_PATH = "SET search_path = public, pg_temp"
BY_INDEX = "SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off"
GENESIS_HASH = "0" * 64

# What the rules read of a new header's lines, from one scan of them by the header's key: their
# count, whether a currency is out of balance, whether a line is dated apart from its header, and
# whether a line is on another partner's account.
LINE_FACTS = ("LEFT JOIN LATERAL (SELECT sum(c.lines) AS lines, bool_or(c.net <> 0) AS unbalanced,"
              " bool_or(c.moved) AS moved, bool_or(c.others) AS others"
              " FROM (SELECT count(*) AS lines,"
              " sum(CASE l.side WHEN 'D' THEN l.amount_minor ELSE -l.amount_minor END) AS net,"
              " bool_or(l.effective_at_us <> n.effective_at_us) AS moved,"
              " bool_or(a.partner_id <> n.partner_id) AS others"
              " FROM journal_lines l LEFT JOIN accounts a ON a.id = l.account_id"
              " WHERE l.transaction_id = n.id GROUP BY l.currency) c) f ON true")
RELEASED_EARLY, PARTNERS_OWN, VERSION_KNOWN, AT_MOST_100 = _0029.STATEMENT_RULES

# (refused when, message) over a new header `n` and its lines' facts `f`, in the order migration
# 0031's triggers raised them: trg_journal_transactions_closed_period, _in_their_place, _seal
# (alphabetical, as PostgreSQL fires them). Each is the rule of 0004, 0029, 0031 or 0006 it replaces.
SEAL_RULES = (
    ("n.effective_at_us < (SELECT max(c.ends_at_us) FROM period_closes c)",
     "journal_transactions: effective instant lies in a closed period"),
    (f"{RELEASED_EARLY[0]} AND {RELEASED_EARLY[1]}", RELEASED_EARLY[2]),
    (f"{PARTNERS_OWN[0]} AND f.others", PARTNERS_OWN[2]),
    (f"{VERSION_KNOWN[0]} AND {VERSION_KNOWN[1]}", VERSION_KNOWN[2]),
    ("f.lines > 100", AT_MOST_100[2]),
    (f"{_0031.NAMES_A_PARTNER} AND {_0031.NOT_ENROLLED}", _0031.NOT_ENROLLED_MESSAGE),
    ("coalesce(f.lines, 0) < 2", "journal_transactions: a transaction needs two or more lines"),
    ("f.unbalanced", "journal_transactions: debits do not equal credits per currency"),
    # As migration 0006 worded it (its apostrophe doubled for SQL).
    ("f.moved", "journal_transactions: every line carries its transaction''s effective instant"),
    (f"CASE WHEN n.id = 1 THEN n.prev_hash <> '{GENESIS_HASH}'"
     " WHEN n.id > 1 THEN coalesce((SELECT p.hash <> n.prev_hash FROM journal_transactions p"
     " WHERE p.id = n.id - 1), true)"
     " ELSE false END",
     "journal_transactions: the sequence continues the hash chain without a gap"),
)
# Whether the statement holds a posting against a piece, or a reversal: the piece rules' own tests.
PIECE_KINDS = "n.kind IN ('clawback', 'release')"
REVERSAL = "n.kind = 'reversal'"
PIECE_TESTS = {f"IF EXISTS (SELECT 1 FROM added n WHERE {PIECE_KINDS}) THEN": "IF broken[{pieces}] THEN",
               f"IF EXISTS (SELECT 1 FROM added n WHERE {REVERSAL}) THEN": "IF broken[{reversals}] THEN"}


def piece_rules() -> str:
    """The body of migration 0030's piece function, its tests of the statement's kinds read from `broken`."""
    function = _0030.within_its_piece(extended=True)
    _, _, body = function.partition("AS $$\nBEGIN\n")
    body, _, _ = body.partition("  RETURN NULL;\nEND $$")
    pieces, reversals = len(SEAL_RULES) + 1, len(SEAL_RULES) + 2
    for (test, flag), times in zip(PIECE_TESTS.items(), (1, 2)):
        assert body.count(test) == times, test
        body = body.replace(test, flag.format(pieces=pieces, reversals=reversals))
    return body


def seal_function() -> str:
    conditions = [refused_when for refused_when, _ in SEAL_RULES] + [PIECE_KINDS, REVERSAL]
    found = ",\n    ".join(f"coalesce(bool_or({condition}), false)" for condition in conditions)
    raises = "".join(f"""  IF broken[{number}] THEN
    RAISE EXCEPTION '{message}' USING ERRCODE = 'check_violation';
  END IF;
""" for number, (_, message) in enumerate(SEAL_RULES, start=1))
    return f"""CREATE OR REPLACE FUNCTION journal_transactions_seal() RETURNS trigger LANGUAGE plpgsql {BY_INDEX}
SET plan_cache_mode = force_generic_plan {SEARCH_PATH} AS $$
DECLARE
  ids bigint[];
  broken boolean[];
BEGIN
  SELECT array_agg(a.id) INTO ids FROM added a;
  SELECT ARRAY[{found}]
    INTO broken FROM journal_transactions n {LINE_FACTS} WHERE n.id = ANY(ids);
{raises}{piece_rules()}  RETURN NULL;
END $$"""


# ---- migration 0031's statement triggers, for the downgrade ----

SEAL_AS_OF_0031 = f"""CREATE OR REPLACE FUNCTION journal_transactions_seal() RETURNS trigger LANGUAGE plpgsql {BY_INDEX}
{SEARCH_PATH} AS $$
DECLARE
  too_few boolean;
  unbalanced boolean;
  moved boolean;
BEGIN
  SELECT coalesce(bool_or(t.n < 2), false), coalesce(bool_or(t.unbalanced), false), coalesce(bool_or(t.moved), false)
    INTO too_few, unbalanced, moved
    FROM (SELECT c.id, sum(c.n) AS n, bool_or(c.net <> 0) AS unbalanced, bool_or(c.moved) AS moved
            FROM (SELECT s.id, l.currency, count(l.id) AS n,
                         sum(CASE l.side WHEN 'D' THEN l.amount_minor ELSE -l.amount_minor END) AS net,
                         bool_or(l.effective_at_us <> s.effective_at_us) AS moved
                    FROM sealed s LEFT JOIN journal_lines l ON l.transaction_id = s.id
                   GROUP BY s.id, l.currency) c
           GROUP BY c.id) t;
  IF too_few THEN
    RAISE EXCEPTION 'journal_transactions: a transaction needs two or more lines' USING ERRCODE = 'check_violation';
  END IF;
  IF unbalanced THEN
    RAISE EXCEPTION 'journal_transactions: debits do not equal credits per currency' USING ERRCODE = 'check_violation';
  END IF;
  IF moved THEN
    RAISE EXCEPTION 'journal_transactions: every line carries its transaction''s effective instant'
      USING ERRCODE = 'check_violation';
  END IF;
  IF EXISTS (SELECT 1 FROM sealed s LEFT JOIN journal_transactions p ON p.id = s.id - 1
             WHERE (s.id = 1 AND s.prev_hash <> '{GENESIS_HASH}')
                OR (s.id > 1 AND (p.id IS NULL OR p.hash <> s.prev_hash))) THEN
    RAISE EXCEPTION 'journal_transactions: the sequence continues the hash chain without a gap'
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$"""

CLOSED_PERIOD_AS_OF_0031 = f"""CREATE FUNCTION journal_refuse_closed_period() RETURNS trigger LANGUAGE plpgsql
{SEARCH_PATH} AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM sealed s WHERE s.effective_at_us < (SELECT max(ends_at_us) FROM period_closes)) THEN
    RAISE EXCEPTION 'journal_transactions: effective instant lies in a closed period' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$"""

# (trigger, transition table, function) of migration 0031's statement triggers after an insert of headers.
TRIGGERS_AS_OF_0031 = (
    ("trg_journal_transactions_closed_period", "sealed", "journal_refuse_closed_period"),
    ("trg_journal_transactions_in_their_place", "added", "journal_transactions_in_their_place"),
    ("trg_journal_transactions_seal", "sealed", "journal_transactions_seal"),
    ("trg_journal_transactions_within_its_piece", "added", "journal_transactions_within_its_piece"),
)


def header_trigger(name: str, table_name: str, function: str) -> str:
    return (f"CREATE TRIGGER {name} AFTER INSERT ON journal_transactions REFERENCING NEW TABLE AS {table_name}"
            f" FOR EACH STATEMENT EXECUTE FUNCTION {function}()")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, _, function in TRIGGERS_AS_OF_0031:
        op.execute(f"DROP TRIGGER {name} ON journal_transactions")
        if function != "journal_transactions_seal":
            op.execute(f"DROP FUNCTION {function}()")
    op.execute(seal_function())
    op.execute(header_trigger("trg_journal_transactions_seal", "added", "journal_transactions_seal"))


def downgrade() -> None:
    """Migration 0031's four triggers and their functions."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER trg_journal_transactions_seal ON journal_transactions")
    for function in (SEAL_AS_OF_0031, CLOSED_PERIOD_AS_OF_0031, _0031.in_their_place(extended=True),
                     _0030.within_its_piece(extended=True)):
        op.execute(function)
    for name, table_name, function in TRIGGERS_AS_OF_0031:
        op.execute(header_trigger(name, table_name, function))
