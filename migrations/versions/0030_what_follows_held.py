"""The database holds what must follow in the same transaction, and three more rules Python keeps:

- A release is reversed only with its piece, or with what settles the piece again: by the commit,
  a piece whose release was reversed is reversed itself (`ledger.reversals` reverses an accrual's
  release before it), or holds nothing pending, its amount taken again by a release and the
  clawbacks from its pending account (`ledger.holds.unrelease`: a late refund's clawback from
  pending, then the rest released again at the maturity; `ledger.holds.released_again`). A release
  reversed alone left the amount pending after its maturity with no hold queued to release it:
  the partner was never paid it (`verify` named it only as `holds_missing`).
- A chargeback's clawback of an accrual that a won dispute reinstated is not reversed while the
  reinstatement stands (`ledger.holds.released_again`, 409): the dispute restored it already, and
  the mirror would pay the partner twice. Reversing the accrual reverses its reinstatements first,
  so this holds row by row.
- A `payout_settled` or `payout_failed` posting, and the reversal of a `payout` posting (a pending
  payout's failure, `ledger.reversals`), has its resolution record by the commit
  (`ledger.payouts.settle` and `fail` write both). Without it the payout stayed pending: settled or
  failed again, it was paid twice, or its money returned twice.
- The first close starts no later than the books' first posting (`ledger.periods.close_period`
  refuses a period while an earlier one with postings is open, and closes the empty ones before it
  with it): a first close of March over January's postings left January open before a closed
  chain, where nothing can close it.

Each "must follow" rule is a list of what is due, as in migration 0026, whose foreign key waits for
the commit (SQLite has no deferred trigger; PostgreSQL checks the same key): a trigger adds the
posting to `payout_resolutions_due`, whose key to `payout_resolutions.transaction_id` asks for the
record; and adds the piece of a reversed release to `unreleased_pieces_due`, whose key to
`journal_transactions.reverses_id` asks for the piece's reversal, and from which the row leaves
when the piece is reversed or holds nothing pending (a delete is refused otherwise). That list is
empty between transactions; the resolutions' only grows, one row a settle or fail, and is never
changed.

Cost: on SQLite each rule is a row trigger whose `WHEN` picks its rows (reversals, resolutions,
closes; clawbacks and releases probe the empty list by its key). On PostgreSQL the piece list is
kept by the statement trigger of migration 0022, which every posting calls already and which reads
it only when the statement holds a reversal, clawback or release; the other rules are row triggers
called only for reversals, resolutions and closes. Ingesting paid invoices and posting payout runs
write none of the rows these rules read. Measured on a seeded program (200 partners, 20,000
paid invoices in batches of 10,000, 400 single postings, a release run of 30,656 holds, 5,000 late
refunds in one batch and 400 one at a time, each undoing a release), each tree once after the other
on a shared 2-core machine: on SQLite paid invoices 2,410 against 2,687 events/s, single postings
1.33 against 1.34 ms, releases 3,818 against 4,582 a second, late refunds 213 against 249 events/s
in a batch and 5.8 against 5.4 ms alone; on PostgreSQL 2,143 against 1,325 events/s, 5.6 against
8.6 ms, 3,215 against 1,744 releases a second, 39 against 46 events/s and 27.0 against 27.5 ms.
The machine's drift between two runs of one tree is as large as these differences, except for the
late refunds (the path that writes and empties the list). Rows already written are left as they
are, as in 0018.

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from migrations.earlier import revision as _revision

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None


_0018 = _revision("0018_rules_held.py")  # sqlite_rule, postgres_rule
_0022 = _revision("0022_pieces_held.py")  # the statement guard this revision extends on PostgreSQL
_0026 = _revision("0026_payout_postings_recorded.py")  # append_only

SEARCH_PATH = "SET search_path = public, pg_temp"
PIECES_DUE = "unreleased_pieces_due"
RESOLUTIONS_DUE = "payout_resolutions_due"

# ---- a release reversed with its piece, or the piece settled again ----

REVERSED = "EXISTS (SELECT 1 FROM journal_transactions r WHERE r.reverses_id = {piece})"
# The piece's one credit, into its partner's pending account (migration 0022 holds that a released
# piece has one), against the debits to that account of the clawbacks and the release that stand,
# read by the index on accrual_id. The account is compared in the sum, not in the WHERE: there,
# SQLite read every line of the partner's pending account by the balance index (a late refund's
# posting took ten times as long).
CREDIT = "(SELECT m.{column} FROM journal_lines m WHERE m.transaction_id = {piece} AND m.side = 'C')"
HOLDS_NOTHING = (
    f"coalesce({CREDIT.format(column='amount_minor', piece='{piece}')}, 0)"
    f" <= (SELECT coalesce(sum(CASE WHEN l.account_id = {CREDIT.format(column='account_id', piece='{piece}')}"
    " THEN l.amount_minor ELSE 0 END), 0) FROM journal_transactions c"
    " JOIN journal_lines l ON l.transaction_id = c.id AND l.side = 'D'"
    " WHERE c.accrual_id = {piece} AND c.accrual_id IS NOT NULL AND c.kind IN ('clawback', 'release')"
    " AND NOT EXISTS (SELECT 1 FROM journal_transactions u WHERE u.reverses_id = c.id))")
SETTLED = f"({REVERSED} OR {HOLDS_NOTHING})"
SETTLED_MESSAGE = (f"{PIECES_DUE}: a piece whose release was reversed is reversed, or holds nothing pending,"
                   " before it leaves the list")

SQLITE_PIECES = f"""
CREATE TRIGGER trg_journal_transactions_release_undone AFTER INSERT ON journal_transactions
WHEN NEW.kind = 'reversal'
BEGIN
  INSERT INTO {PIECES_DUE} (accrual_id) SELECT o.accrual_id FROM journal_transactions o
  WHERE o.id = NEW.reverses_id AND o.kind = 'release'
  AND NOT EXISTS (SELECT 1 FROM {PIECES_DUE} d WHERE d.accrual_id = o.accrual_id);
  DELETE FROM {PIECES_DUE} WHERE accrual_id = NEW.reverses_id;
END;

CREATE TRIGGER trg_journal_transactions_release_settled AFTER INSERT ON journal_transactions
WHEN NEW.kind IN ('clawback', 'release')
AND EXISTS (SELECT 1 FROM {PIECES_DUE} d WHERE d.accrual_id = NEW.accrual_id)
BEGIN
  DELETE FROM {PIECES_DUE} WHERE accrual_id = NEW.accrual_id AND {HOLDS_NOTHING.format(piece='NEW.accrual_id')};
END;

CREATE TRIGGER trg_{PIECES_DUE}_settled BEFORE DELETE ON {PIECES_DUE}
WHEN NOT {SETTLED.format(piece='OLD.accrual_id')}
BEGIN SELECT RAISE(ABORT, '{SETTLED_MESSAGE}'); END"""

# PostgreSQL: migration 0022's statement function, with the list kept after its checks: pieces of
# the releases the statement reverses go on it, and leave it once reversed or settled again.
KEEP_PIECES_DUE = f"""  IF EXISTS (SELECT 1 FROM added n WHERE n.kind = 'reversal') THEN
    INSERT INTO {PIECES_DUE} (accrual_id) SELECT DISTINCT o.accrual_id FROM added n
    JOIN journal_transactions o ON o.id = n.reverses_id
    WHERE n.kind = 'reversal' AND o.kind = 'release'
    AND NOT EXISTS (SELECT 1 FROM {PIECES_DUE} d WHERE d.accrual_id = o.accrual_id);
  END IF;
  IF EXISTS (SELECT 1 FROM {PIECES_DUE}) THEN
    DELETE FROM {PIECES_DUE} d WHERE d.accrual_id IN (SELECT n.reverses_id FROM added n WHERE n.kind = 'reversal'
    UNION ALL SELECT n.accrual_id FROM added n WHERE {_0022.ONLY_WHEN}) AND {SETTLED.format(piece='d.accrual_id')};
  END IF;
"""


def within_its_piece(extended: bool) -> str:
    """Migration 0022's statement function, as 0023 left it, extended by this revision or not."""
    original = _0022.POSTGRES_GUARD.split(";\n\n")[0]
    assert original.count("  RETURN NULL;\nEND $$") == 1, original
    body = original.replace("  RETURN NULL;\nEND $$", f"{KEEP_PIECES_DUE if extended else ''}  RETURN NULL;\nEND $$")
    return body.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION").replace(" AS $$", f" {SEARCH_PATH} AS $$", 1)


def postgres_pieces() -> list[str]:
    settled = f"""CREATE FUNCTION {PIECES_DUE}_settled() RETURNS trigger LANGUAGE plpgsql {SEARCH_PATH} AS $$
BEGIN
  IF NOT {SETTLED.format(piece='OLD.accrual_id')} THEN
    RAISE EXCEPTION '{SETTLED_MESSAGE}' USING ERRCODE = 'check_violation';
  END IF;
  RETURN OLD;
END $$"""
    return [within_its_piece(extended=True), settled,
            f"CREATE TRIGGER trg_{PIECES_DUE}_settled BEFORE DELETE ON {PIECES_DUE}\n"
            f"FOR EACH ROW EXECUTE FUNCTION {PIECES_DUE}_settled()",
            *_0018.never_updated(PIECES_DUE, True).split(";\n\n"),
            f"ALTER FUNCTION {PIECES_DUE}_no_update() {SEARCH_PATH}",
            f"CREATE TRIGGER trg_{PIECES_DUE}_no_truncate BEFORE TRUNCATE ON {PIECES_DUE}\n"
            "FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change()",
            f"GRANT SELECT, INSERT, DELETE ON {PIECES_DUE} TO {_0026.APP_ROLE}"]


# ---- a resolution posting recorded ----

RESOLVES = "NEW.kind IN ('payout_settled', 'payout_failed')"
FAILS_BY_REVERSAL = ("NEW.kind = 'reversal'"
                     " AND (SELECT o.kind FROM journal_transactions o WHERE o.id = NEW.reverses_id) = 'payout'")

SQLITE_RESOLUTIONS = f"""
CREATE TRIGGER trg_journal_transactions_resolution_due AFTER INSERT ON journal_transactions
WHEN {RESOLVES} OR {FAILS_BY_REVERSAL}
BEGIN INSERT INTO {RESOLUTIONS_DUE} (transaction_id) VALUES (NEW.id); END"""

POSTGRES_RESOLUTIONS = f"""
CREATE FUNCTION journal_transactions_resolution_due() RETURNS trigger LANGUAGE plpgsql {SEARCH_PATH} AS $$
BEGIN
  IF {RESOLVES} OR {FAILS_BY_REVERSAL} THEN
    INSERT INTO {RESOLUTIONS_DUE} (transaction_id) VALUES (NEW.id);
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER trg_journal_transactions_resolution_due AFTER INSERT ON journal_transactions
FOR EACH ROW WHEN (NEW.kind IN ('payout_settled', 'payout_failed', 'reversal'))
EXECUTE FUNCTION journal_transactions_resolution_due()"""

# ---- row rules: (table, name, refused when, message, only when) ----

REINSTATED_CHARGEBACK = (
    "EXISTS (SELECT 1 FROM journal_transactions c JOIN revenue_events e ON e.id = c.event_id"
    " WHERE c.id = n.reverses_id AND c.kind = 'clawback' AND e.type = 'chargeback'"
    " AND EXISTS (SELECT 1 FROM journal_transactions s WHERE s.accrual_id = c.accrual_id"
    " AND s.accrual_id IS NOT NULL AND s.kind IN ('accrual', 'cpa', 'override')"
    " AND NOT EXISTS (SELECT 1 FROM journal_transactions r WHERE r.reverses_id = s.id)))")
REINSTATED_MESSAGE = ("journal_transactions: a chargebacks clawback of an accrual is not reversed while a won"
                      " dispute reinstatement of the accrual stands")
FIRST_CLOSE_LATE = ("NOT EXISTS (SELECT 1 FROM period_closes p WHERE p.period <> n.period)"
                    " AND EXISTS (SELECT 1 FROM journal_lines l WHERE l.effective_at_us < n.starts_at_us)")
FIRST_CLOSE_MESSAGE = "period_closes: the first close starts no later than the first posting"
ROW_RULES = (
    ("journal_transactions", "reinstated_chargeback", REINSTATED_CHARGEBACK, REINSTATED_MESSAGE, "n.kind = 'reversal'"),
    ("period_closes", "from_the_first_posting", FIRST_CLOSE_LATE, FIRST_CLOSE_MESSAGE, None),
)


def statements(engine: str) -> list[str]:
    postgres = engine == "postgresql"
    for *_, message, _only_when in ROW_RULES:
        assert "'" not in message, message  # quoted in SQL as it stands
    assert "'" not in SETTLED_MESSAGE, SETTLED_MESSAGE
    found = [*(POSTGRES_RESOLUTIONS if postgres else SQLITE_RESOLUTIONS).split(";\n\n"),
             *_0026.append_only(RESOLUTIONS_DUE, postgres),
             *(postgres_pieces() if postgres
               else [*SQLITE_PIECES.split(";\n\n"), _0018.never_updated(PIECES_DUE, False)])]
    for table, name, refused_when, message, only_when in ROW_RULES:
        if postgres:
            found.extend(_0018.postgres_rule(table, name, refused_when, message, only_when).split(";\n\n"))
            found.append(f"ALTER FUNCTION {table}_{name}() {SEARCH_PATH}")
        else:
            found.extend(_0018.sqlite_rule(table, name, refused_when, message, only_when).split(";\n\n"))
    return found


def upgrade() -> None:
    id_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        RESOLUTIONS_DUE,
        sa.Column("transaction_id", id_type, autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("transaction_id", name=op.f(f"pk_{RESOLUTIONS_DUE}")),
        sa.ForeignKeyConstraint(["transaction_id"], ["payout_resolutions.transaction_id"],
                                name=op.f(f"fk_{RESOLUTIONS_DUE}_transaction_id_payout_resolutions"),
                                deferrable=True, initially="DEFERRED"),
    )
    op.create_table(
        PIECES_DUE,
        sa.Column("accrual_id", id_type, autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("accrual_id", name=op.f(f"pk_{PIECES_DUE}")),
        sa.ForeignKeyConstraint(["accrual_id"], ["journal_transactions.reverses_id"],
                                name=op.f(f"fk_{PIECES_DUE}_accrual_id_journal_transactions"),
                                deferrable=True, initially="DEFERRED"),
    )
    for statement in statements(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    """This revision's guards and lists: they hold new rows, and nothing else depends on them."""
    postgres = op.get_bind().dialect.name == "postgresql"
    triggers = [("journal_transactions", "resolution_due"), *((table, name) for table, name, *_ in ROW_RULES)]
    if postgres:
        op.execute(within_its_piece(extended=False))
    else:
        triggers += [("journal_transactions", "release_undone"), ("journal_transactions", "release_settled")]
    for table, name in triggers:
        op.execute(f"DROP TRIGGER trg_{table}_{name}" + (f" ON {table}" if postgres else ""))
        if postgres:
            op.execute(f"DROP FUNCTION {table}_{name}()")
    op.drop_table(PIECES_DUE)  # with its own triggers
    op.drop_table(RESOLUTIONS_DUE)
    if postgres:
        op.execute(f"DROP FUNCTION {PIECES_DUE}_settled()")
        op.execute(f"DROP FUNCTION {PIECES_DUE}_no_update()")
