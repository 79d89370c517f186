"""The API keys and their revocations chained, as the program's facts are (migrations 0053, 0056),
and a key's expiry.

Keys and revocations are never updated or deleted (migrations 0018, 0027 and 0042), but past the
database's rules nothing named them: a revocation deleted let its key in again, and a key's role or
partner rewritten gave it other books to read, and `verify` saw neither. Each key and each
revocation now has a row of `program_chain` as it is made, in the same transaction, after the facts
and events before it: its table and key (a revocation is named by its key's id, one revocation a
key), and a SHA-256 of the previous row's hash with its content (every column of its row,
`FACT_COLUMNS`). So one removed or rewritten is named by `verify` (`program_fact_missing`,
`program_fact_altered`), and one removed with the rows of the chain after it by a program head
recorded before, or by a close made since, whose close hash holds the head. The keys already made,
then the revocations, are chained here after the chain's head, each by its instant, then its key.

The database holds what 0053 holds for a fact: a key or revocation is added to `program_chain_due`
as it is inserted and leaves it when its row of the chain is written, by the commit; the row names
one that exists. A revocation that the chain names already adds nothing to the list: on SQLite a
REPLACE of a revocation is let through from a connection without `recursive_triggers` (migration
0036), and the row it writes is the one the chain names, to be checked by `verify`, not a new one.
The chain's check of `fact_table` takes the two tables: SQLite holds a check in the table's
definition, so the chain is made anew there, as 0056 made it.

A key may be made to expire (`expires_at_us`, after its creation; none by default): from that
instant on it no longer authenticates. The column is added before the keys are chained, so that
every key's hash covers it.

Downgrade takes the keys and revocations off the chain when they are its last rows, in the order
the backfill gives them, and refuses otherwise, and while a close holds a program head among them,
and while a key is made to expire (below 0057 it would not).

Revision ID: 0057
Revises: 0056
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from migrations.earlier import revision as _revision

revision = "0057"
down_revision = "0056"
branch_labels = None
depends_on = None

KEYS, REVOCATIONS = "api_keys", "api_key_revocations"
# What a row's hash covers: every column of it, in this order (frozen, as 0053's facts').
FACT_COLUMNS = {KEYS: ("id", "key_hash", "role", "partner_id", "created_at_us", "expires_at_us"),
                REVOCATIONS: ("api_key_id", "revoked_at_us", "reason")}
KEY_COLUMNS = {KEYS: "id", REVOCATIONS: "api_key_id"}
ORDER = {KEYS: "created_at_us, id", REVOCATIONS: "revoked_at_us, api_key_id"}  # of the backfill
BACKFILL_ROWS = 5_000  # chain rows written at a time
EXPIRY = (f"ALTER TABLE {KEYS} ADD COLUMN expires_at_us BIGINT CONSTRAINT ck_{KEYS}_expires_after_creation"
          " CHECK (expires_at_us IS NULL OR expires_at_us > created_at_us)")

_0053 = _revision("0053_program_facts_chained.py")
_0056 = _revision("0056_events_that_posted_nothing_chained.py")
# The chain's guards over this revision's tables: a module of their own, whose tables take the keys.
_chained = _revision("0053_program_facts_chained.py")
_chained.TABLES = (*_0056.TABLES, *FACT_COLUMNS)
_chained.TEXT_IDS = (*_0056._chained.TEXT_IDS, *FACT_COLUMNS)
TABLES = _chained.TABLES
CHAIN, DUE, SETTINGS = _0053.CHAIN, _0053.DUE, _0053.SETTINGS
_BY_ID = f"WHEN '{REVOCATIONS}' THEN EXISTS (SELECT 1 FROM {REVOCATIONS} f WHERE f.id = n.fact_id)"
_BY_KEY = f"WHEN '{REVOCATIONS}' THEN EXISTS (SELECT 1 FROM {REVOCATIONS} f WHERE f.api_key_id = n.fact_id)"
_0053_fact_exists = _chained.fact_exists


def _fact_exists(postgres: bool) -> str:
    """0053's check that a row of the chain names a fact in its table, a revocation by its key."""
    found = _0053_fact_exists(postgres)
    assert _BY_ID in found
    return found.replace(_BY_ID, _BY_KEY)


_chained.fact_exists = _fact_exists  # as the copy's `_sqlite` and `_postgres` call it
# A revocation the chain names already is not due: a REPLACE let through on SQLite (above).
UNCHAINED = {KEYS: None, REVOCATIONS: f"NOT EXISTS (SELECT 1 FROM {CHAIN} c WHERE c.fact_table = '{REVOCATIONS}'"
                                      " AND c.fact_id = {row}.api_key_id)"}


def _sqlite_due(table: str) -> str:
    when = UNCHAINED[table] and f"WHEN {UNCHAINED[table].format(row='NEW')}\n"
    return (f"CREATE TRIGGER trg_{table}_chain_due AFTER INSERT ON {table}\n{when or ''}"
            f"BEGIN INSERT INTO {DUE} (fact_table, fact_id) VALUES ('{table}', NEW.{KEY_COLUMNS[table]}); END")


def _postgres_due(table: str) -> list[str]:
    where = UNCHAINED[table] and f" WHERE {UNCHAINED[table].format(row='a')}"
    return [f"""CREATE FUNCTION {table}_chain_due() RETURNS trigger LANGUAGE plpgsql {SETTINGS} AS $$
BEGIN
  INSERT INTO {DUE} (fact_table, fact_id) SELECT '{table}', a.{KEY_COLUMNS[table]} FROM added a{where or ''};
  RETURN NULL;
END $$""",
            f"CREATE TRIGGER trg_{table}_chain_due AFTER INSERT ON {table}\n"
            f"REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION {table}_chain_due()"]


def _rows(bind, table: str) -> list[tuple]:
    return bind.execute(sa.text(f"SELECT {', '.join(FACT_COLUMNS[table])} FROM {table} ORDER BY {ORDER[table]}")).all()


def _backfill(bind) -> None:
    """The keys, then the revocations, after the chain's head, each by its instant, then its key."""
    head = bind.execute(sa.text(f"SELECT id, hash FROM {CHAIN} ORDER BY id DESC LIMIT 1")).first()
    head_id, prev_hash = tuple(head) if head is not None else (0, _0053.GENESIS_HASH)
    insert = sa.text(f"INSERT INTO {CHAIN} (id, fact_table, fact_id, prev_hash, hash)"
                     " VALUES (:id, :fact_table, :fact_id, :prev_hash, :hash)")
    links = []
    for table in FACT_COLUMNS:
        for row in _rows(bind, table):  # read whole: the inserts go on the same connection
            hashed = _0053.fact_hash(prev_hash, table, tuple(row))
            head_id += 1
            links.append({"id": head_id, "fact_table": table, "fact_id": row[0], "prev_hash": prev_hash,
                          "hash": hashed})
            prev_hash = hashed
            if len(links) >= BACKFILL_ROWS:
                bind.execute(insert, links)
                links = []
    if links:
        bind.execute(insert, links)


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    # Keys' writers take neither of the locks the migrations hold (`migrations/env.py`): a key or
    # revocation inserted while the backfill reads would be left off the chain. The column's ALTER,
    # first, waits for them and holds the keys' table to the commit (a revocation's insert holds it
    # too, by its foreign key).
    op.execute(EXPIRY)
    if postgres:
        for statement in _0056._postgres_chain(_chained, TABLES):
            op.execute(statement)
    else:
        _0056._sqlite_chain_made_anew(_chained, TABLES)
    _backfill(bind)
    for table in FACT_COLUMNS:
        for statement in _postgres_due(table) if postgres else [_sqlite_due(table)]:
            op.execute(statement)


def _keys_at_the_tail(bind) -> int | None:
    """The id of the chain's first row naming a key or revocation, when those rows are the chain's
    last and in the order this revision's backfill gives them; None while none is chained. Refuses
    otherwise, and while a close holds a program head among those rows in its close hash."""
    tables = tuple(FACT_COLUMNS)
    rows = bind.execute(sa.text(f"SELECT id, fact_table, fact_id FROM {CHAIN} WHERE fact_table IN :tables ORDER BY id")
                        .bindparams(sa.bindparam("tables", expanding=True)), {"tables": tables}).all()
    if not rows:
        return None
    first = rows[0][0]
    fact_after = bind.execute(sa.text(f"SELECT 1 FROM {CHAIN} WHERE fact_table NOT IN :tables AND id > :first LIMIT 1")
                              .bindparams(sa.bindparam("tables", expanding=True)),
                              {"tables": tables, "first": first}).first()
    backfilled = [(table, row[0]) for table in tables for row in _rows(bind, table)]
    if fact_after is not None or [(table, fact_id) for _, table, fact_id in rows] != backfilled:
        raise RuntimeError("keys made since revision 0057 are chained in the order made, among the facts, which "
                           "going below it and up again would not keep: a program head recorded since would no "
                           "longer be proved")
    if bind.execute(sa.text("SELECT 1 FROM period_closes WHERE program_head_id >= :first LIMIT 1"),
                    {"first": first}).first():
        raise RuntimeError("closes made since revision 0057 hold a program head among the keys chained in their "
                           "close hash, which going below it would lose")
    return first


def downgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    if bind.execute(sa.text(f"SELECT 1 FROM {KEYS} WHERE expires_at_us IS NOT NULL LIMIT 1")).first():
        raise RuntimeError("keys made since revision 0057 are made to expire, which below it they would not")
    first = _keys_at_the_tail(bind)
    for table in FACT_COLUMNS:
        op.execute(f"DROP TRIGGER trg_{table}_chain_due" + (f" ON {table}" if postgres else ""))
        if postgres:
            op.execute(f"DROP FUNCTION {table}_chain_due()")
    if postgres:
        if first is not None:  # the chain's last rows: no gap is left
            due_key = f"fk_{DUE}_fact_table_{CHAIN}"
            op.execute(f"ALTER TABLE {CHAIN} DISABLE TRIGGER trg_{CHAIN}_no_change")
            op.execute(f"SET CONSTRAINTS {due_key} IMMEDIATE")
            op.execute(f"DELETE FROM {CHAIN} WHERE id >= {first}")
            op.execute(f"SET CONSTRAINTS {due_key} DEFERRED")
            op.execute(f"ALTER TABLE {CHAIN} ENABLE TRIGGER trg_{CHAIN}_no_change")
        for statement in _0056._postgres_chain(_0056._chained, _0056.TABLES):
            op.execute(statement)
    else:
        tables = ", ".join(repr(table) for table in FACT_COLUMNS)
        _0056._sqlite_chain_made_anew(_0056._chained, _0056.TABLES, kept=f"fact_table NOT IN ({tables})")
    op.execute(f"ALTER TABLE {KEYS} DROP COLUMN expires_at_us")  # with its check
