"""The partner program's facts chained, and each close holding the chain's head.

`verify` re-derives every posting from the program as stored, so a fact no posting had used yet (a
step-down month not reached, a plan version or an attribution dated ahead, a partner's name) was
covered by no hash: rewritten past the triggers, it priced the payments after it unseen. Each fact
now has a row of `program_chain` (ledger/program_chain.py): its table and id, and a SHA-256 of the
previous row's hash with its content, in the order recorded. The facts already recorded are chained
here, table by table in the order of `TABLES`, each table's rows by id, then the facts withdrawn from
it (whose content their withdrawal holds) by id.

The database holds, for a writer that goes around Python:

- Every fact inserted is chained by the commit. A trigger after each insert into a fact's table
  adds the fact to `program_chain_due`, whose foreign key to the chain's (table, id) is deferred to
  the commit, as migration 0026's list (SQLite has no deferred trigger); the fact's row of the chain
  removes it, and nothing else may (a delete is refused while the fact has no row). The list is
  empty between transactions.
- The chain has no gap, and each row names the previous row's hash (the first, the genesis hash),
  as the journal's (0001); a row names a fact that exists in its table; rows are never updated or
  deleted (on PostgreSQL never truncated, and the application role may SELECT and INSERT only; on
  SQLite a REPLACE meeting a row by either key is refused, as 0036 refuses the others').
- A close made from now on records the chain's head as it closed (`program_head_id` and
  `program_head_hash`: a row of the chain with its hash, or 0 and the genesis hash while the chain
  is empty), and its close hash covers them (`ledger.periods.close_hash`): a close recorded outside
  the books covers the program up to its head. Closes made before keep NULL, and their hash as made.

That the hashes follow from the facts is `verify`'s to check: neither engine's triggers compute one
here (SQLite has no SHA-256). `FACT_COLUMNS` and `fact_hash` are frozen copies of the ledger's, which
a test compares.

Downgrade drops the chain; it refuses while a close holds a program head, which its close hash
covers and which the columns dropped would lose, and while the chain holds its facts in another
order than this revision's backfill gives (facts recorded since): going up again would chain them
otherwise, and a program head recorded meanwhile would no longer be proved.

Revision ID: 0053
Revises: 0052
Create Date: 2026-12-06
"""

import hashlib
import json

import sqlalchemy as sa
from alembic import op

from migrations.earlier import revision as _revision

revision = "0053"
down_revision = "0052"
branch_labels = None
depends_on = None

_0018 = _revision("0018_rules_held.py")  # sqlite_rule, postgres_rule, never_updated
_0026 = _revision("0026_payout_postings_recorded.py")  # append_only, APP_ROLE
_0036 = _revision("0036_replace_refused.py")  # guard: a REPLACE refused before it deletes (SQLite)

CHAIN = "program_chain"
DUE = "program_chain_due"
GENESIS_HASH = "0" * 64
SETTINGS = "SET search_path = public, pg_temp SET jit = off"  # as every function of the schema (0023, 0037)
FACT_COLUMNS = {
    "plans": ("id", "name", "created_at_us"),
    "plan_versions": ("id", "plan_id", "version", "effective_from_us", "terms", "created_at_us"),
    "partners": ("id", "name", "type", "parent_id", "parent_depth", "depth", "created_at_us"),
    "partner_statuses": ("id", "partner_id", "status", "effective_at_us", "recorded_at_us"),
    "partner_plans": ("id", "partner_id", "plan_id", "effective_from_us", "recorded_at_us"),
    "customers": ("id", "created_at_us"),
    "attributions": ("id", "customer_id", "partner_id", "effective_from_us", "source", "recorded_at_us"),
    "program_withdrawals": ("id", "fact_table", "fact_id", "subject_id", "starts_us", "value", "detail",
                            "fact_recorded_at_us", "recorded_at_us"),
}
TABLES = tuple(FACT_COLUMNS)
TEXT_IDS = ("plans", "partners", "customers")
# A withdrawn fact's columns, from its withdrawal's (migration 0040's FACTS).
WITHDRAWN_AS = {
    "partner_statuses": {"partner_id": "subject_id", "status": "value", "effective_at_us": "starts_us",
                         "recorded_at_us": "fact_recorded_at_us"},
    "partner_plans": {"partner_id": "subject_id", "plan_id": "value", "effective_from_us": "starts_us",
                      "recorded_at_us": "fact_recorded_at_us"},
    "plan_versions": {"plan_id": "subject_id", "version": "value", "effective_from_us": "starts_us",
                      "terms": "detail", "created_at_us": "fact_recorded_at_us"},
    "attributions": {"customer_id": "subject_id", "partner_id": "value", "effective_from_us": "starts_us",
                     "source": "detail", "recorded_at_us": "fact_recorded_at_us"},
}
BACKFILL_ROWS = 5_000  # chain rows written at a time


def fact_hash(prev_hash: str, table: str, content: tuple) -> str:
    """Of the JSON array [prev_hash, table, [the fact's values in FACT_COLUMNS order]], ASCII only;
    a value JSON has no form for (an SQLite blob) as `<type>repr`."""
    document = json.dumps([prev_hash, table, content], separators=(",", ":"),
                          default=lambda value: f"<{type(value).__name__}>{value!r}")
    return hashlib.sha256(document.encode()).hexdigest()


# ---- the guards ----

LINK_BROKEN = (f"(n.id = 1 AND n.prev_hash <> '{GENESIS_HASH}') OR (n.id <> 1 AND NOT EXISTS"
               f" (SELECT 1 FROM {CHAIN} p WHERE p.id = n.id - 1 AND p.hash = n.prev_hash))")
LINK_MESSAGE = f"{CHAIN}: the chain continues without a gap, each row naming the previous rows hash"


def fact_exists(postgres: bool) -> str:
    """That the fact a new row `n` of the chain names is in its table (an integer id compared as
    one: PostgreSQL casts only the text of a number, which CASE checks first)."""
    cases = []
    for table in TABLES:
        if table in TEXT_IDS:
            found = f"EXISTS (SELECT 1 FROM {table} f WHERE f.id = n.fact_id)"
        elif postgres:
            found = (f"CASE WHEN n.fact_id ~ '^[1-9][0-9]{{0,17}}$' THEN EXISTS (SELECT 1 FROM {table} f"
                     f" WHERE f.id = n.fact_id::bigint) ELSE false END")
        else:  # by its key, and as text: SQLite takes '03' for 3
            found = f"EXISTS (SELECT 1 FROM {table} f WHERE f.id = n.fact_id AND CAST(f.id AS TEXT) = n.fact_id)"
        cases.append(f"WHEN '{table}' THEN {found}")
    return f"CASE n.fact_table {' '.join(cases)} ELSE false END"


FACT_MESSAGE = f"{CHAIN}: a row names a fact in its table"
CHAINED = f"EXISTS (SELECT 1 FROM {CHAIN} c WHERE c.fact_table = OLD.fact_table AND c.fact_id = OLD.fact_id)"
DUE_MESSAGE = f"{DUE}: a fact leaves the list once its row of the chain is written"
CLOSE_HEAD_MISSING = (f"n.program_head_id IS NULL OR n.program_head_hash IS NULL"
                      f" OR (n.program_head_id = 0 AND n.program_head_hash <> '{GENESIS_HASH}')"
                      f" OR (n.program_head_id <> 0 AND NOT EXISTS (SELECT 1 FROM {CHAIN} c"
                      " WHERE c.id = n.program_head_id AND c.hash = n.program_head_hash))")
CLOSE_MESSAGE = f"period_closes: a close records the head of the {CHAIN} as it closed"
ROW_RULES = (
    (CHAIN, "linked", LINK_BROKEN, LINK_MESSAGE),
    ("period_closes", "program_head", CLOSE_HEAD_MISSING, CLOSE_MESSAGE),
)


def _sqlite() -> list[str]:
    found = [f"CREATE TRIGGER trg_{table}_chain_due AFTER INSERT ON {table}\n"
             f"BEGIN INSERT INTO {DUE} (fact_table, fact_id) VALUES ('{table}', CAST(NEW.id AS TEXT)); END"
             for table in TABLES]
    found += [_0018.sqlite_rule(table, name, refused_when, message, None)
              for table, name, refused_when, message in ROW_RULES]
    found += [_0018.sqlite_rule(CHAIN, "fact_exists", f"NOT ({fact_exists(False)})", FACT_MESSAGE, None),
              f"CREATE TRIGGER trg_{CHAIN}_clears_due AFTER INSERT ON {CHAIN}\n"
              f"BEGIN DELETE FROM {DUE} WHERE fact_table = NEW.fact_table AND fact_id = NEW.fact_id; END",
              f"CREATE TRIGGER trg_{DUE}_met BEFORE DELETE ON {DUE}\n"
              f"WHEN NOT {CHAINED}\nBEGIN SELECT RAISE(ABORT, '{DUE_MESSAGE}'); END",
              _0018.never_updated(DUE, False),
              *_0026.append_only(CHAIN, False),
              _0036.guard(CHAIN, (("id",), ("fact_table", "fact_id")))]
    return found


def _postgres() -> list[str]:
    found = [f"""CREATE FUNCTION {DUE}_added() RETURNS trigger LANGUAGE plpgsql {SETTINGS} AS $$
BEGIN
  INSERT INTO {DUE} (fact_table, fact_id) SELECT TG_TABLE_NAME, a.id::text FROM added a;
  RETURN NULL;
END $$"""]
    found += [f"CREATE TRIGGER trg_{table}_chain_due AFTER INSERT ON {table}\n"
              f"REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION {DUE}_added()" for table in TABLES]
    found.append(f"""CREATE FUNCTION {CHAIN}_linked() RETURNS trigger LANGUAGE plpgsql {SETTINGS} AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM linked n WHERE {LINK_BROKEN}) THEN
    RAISE EXCEPTION '{LINK_MESSAGE}' USING ERRCODE = 'check_violation';
  END IF;
  IF EXISTS (SELECT 1 FROM linked n WHERE NOT ({fact_exists(True)})) THEN
    RAISE EXCEPTION '{FACT_MESSAGE}' USING ERRCODE = 'check_violation';
  END IF;
  DELETE FROM {DUE} d USING linked n WHERE d.fact_table = n.fact_table AND d.fact_id = n.fact_id;
  RETURN NULL;
END $$""")
    found += [f"CREATE TRIGGER trg_{CHAIN}_linked AFTER INSERT ON {CHAIN}\n"
              f"REFERENCING NEW TABLE AS linked FOR EACH STATEMENT EXECUTE FUNCTION {CHAIN}_linked()",
              f"""CREATE FUNCTION {DUE}_met() RETURNS trigger LANGUAGE plpgsql {SETTINGS} AS $$
BEGIN
  IF NOT {CHAINED} THEN
    RAISE EXCEPTION '{DUE_MESSAGE}' USING ERRCODE = 'check_violation';
  END IF;
  RETURN OLD;
END $$""",
              f"CREATE TRIGGER trg_{DUE}_met BEFORE DELETE ON {DUE}\nFOR EACH ROW EXECUTE FUNCTION {DUE}_met()",
              *_0018.never_updated(DUE, True).split(";\n\n"),
              f"ALTER FUNCTION {DUE}_no_update() {SETTINGS}",
              f"CREATE TRIGGER trg_{DUE}_no_truncate BEFORE TRUNCATE ON {DUE}\n"
              "FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change()",
              f"GRANT SELECT, INSERT, DELETE ON {DUE} TO {_0026.APP_ROLE}",
              *_0026.append_only(CHAIN, True)]
    for table, name, refused_when, message in ROW_RULES[1:]:
        found += [*_0018.postgres_rule(table, name, refused_when, message, None).split(";\n\n"),
                  f"ALTER FUNCTION {table}_{name}() {SETTINGS}"]
    return found


# ---- the facts already recorded ----

def _backfill(bind) -> None:
    head_id, prev_hash, links = 0, GENESIS_HASH, []
    insert = sa.text(f"INSERT INTO {CHAIN} (id, fact_table, fact_id, prev_hash, hash)"
                     " VALUES (:id, :fact_table, :fact_id, :prev_hash, :hash)")
    for table in TABLES:
        for content in _facts(bind, table):
            hashed = fact_hash(prev_hash, table, content)
            head_id += 1
            links.append({"id": head_id, "fact_table": table, "fact_id": str(content[0]),
                          "prev_hash": prev_hash, "hash": hashed})
            prev_hash = hashed
            if len(links) >= BACKFILL_ROWS:
                bind.execute(insert, links)
                links = []
    if links:
        bind.execute(insert, links)


def _facts(bind, table: str):
    columns = FACT_COLUMNS[table]
    rows = bind.execute(sa.text(f"SELECT {', '.join(columns)} FROM {table} ORDER BY id")
                        .execution_options(yield_per=BACKFILL_ROWS))
    try:
        for row in rows:
            yield tuple(row)
    finally:  # a caller that stops early leaves no cursor open
        rows.close()
    if table in WITHDRAWN_AS:
        sources = WITHDRAWN_AS[table]
        withdrawn = bind.execute(sa.text(f"SELECT fact_id, {', '.join(sources.values())} FROM program_withdrawals"
                                         " WHERE fact_table = :table ORDER BY fact_id"), {"table": table}).all()
        for fact_id, *values in withdrawn:
            found = {"id": fact_id, **dict(zip(sources, values))}
            version = found.get("version")
            if isinstance(version, str) and version.isascii() and version.isdigit():
                found["version"] = int(version)
            yield tuple(found[column] for column in columns)


def _as_backfilled(bind) -> bool:
    """Whether the chain holds the facts in the order this revision's backfill gives them (so going
    below it and up again makes the same chain, and a head recorded meanwhile still holds)."""
    stored = bind.execute(sa.text(f"SELECT fact_table, fact_id FROM {CHAIN} ORDER BY id")
                          .execution_options(yield_per=BACKFILL_ROWS))
    try:
        for table in TABLES:
            facts = _facts(bind, table)
            try:
                for content in facts:
                    found = next(stored, None)
                    if found is None or tuple(found) != (table, str(content[0])):
                        return False
            finally:
                facts.close()
        return next(stored, None) is None
    finally:
        stored.close()


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    id_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        CHAIN,
        sa.Column("id", id_type, autoincrement=False, nullable=False),
        sa.Column("fact_table", sa.String(32), nullable=False),
        sa.Column("fact_id", sa.String(64), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{CHAIN}")),
        sa.UniqueConstraint("fact_table", "fact_id", name=op.f(f"uq_{CHAIN}_fact_table_fact_id")),
        sa.CheckConstraint("id >= 1", name=op.f(f"ck_{CHAIN}_id_positive")),
        sa.CheckConstraint(f"fact_table IN ({', '.join(repr(table) for table in TABLES)})",
                           name=op.f(f"ck_{CHAIN}_fact_table")),
        sa.CheckConstraint("length(hash) = 64 AND length(prev_hash) = 64", name=op.f(f"ck_{CHAIN}_hash_length")),
    )
    op.create_table(
        DUE,
        sa.Column("fact_table", sa.String(32), nullable=False),
        sa.Column("fact_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("fact_table", "fact_id", name=op.f(f"pk_{DUE}")),
        sa.ForeignKeyConstraint(["fact_table", "fact_id"], [f"{CHAIN}.fact_table", f"{CHAIN}.fact_id"],
                                name=op.f(f"fk_{DUE}_fact_table_{CHAIN}"), deferrable=True, initially="DEFERRED"),
    )
    op.add_column("period_closes", sa.Column("program_head_id", sa.BigInteger(), nullable=True))
    op.add_column("period_closes", sa.Column("program_head_hash", sa.String(64), nullable=True))
    _backfill(bind)
    for statement in _postgres() if postgres else _sqlite():
        op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    if bind.exec_driver_sql("SELECT count(*) FROM period_closes WHERE program_head_id IS NOT NULL").scalar():
        raise RuntimeError("closes made since revision 0053 hold the program's chain head in their close hash, "
                           "which going below it would lose")
    if not _as_backfilled(bind):
        raise RuntimeError("facts recorded since revision 0053 are chained in the order recorded, which going below "
                           "it and up again would not keep: a program head recorded since would no longer be proved")
    triggers = [*((table, "chain_due") for table in TABLES), ("period_closes", "program_head")]
    for table, name in triggers:
        op.execute(f"DROP TRIGGER trg_{table}_{name}" + (f" ON {table}" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION period_closes_program_head()")
    op.drop_table(DUE)  # with its own triggers
    op.drop_table(CHAIN)
    if postgres:
        for function in (f"{DUE}_added", f"{CHAIN}_linked", f"{DUE}_met", f"{DUE}_no_update"):
            op.execute(f"DROP FUNCTION {function}()")
    op.drop_column("period_closes", "program_head_hash")
    op.drop_column("period_closes", "program_head_id")
