"""The revenue events that posted nothing chained, as the program's facts are (migration 0053).

A revenue event that posts is named by its postings, whose hashes cover its id and request hash in
the journal's chain: deleted past the triggers, `verify` names it (`event_missing`). An event that
posted nothing (`unattributed`, `no_commission`) was named by nothing. Deleted past the triggers, it
left no trace, and sent again it was decided anew: once its customer was attributed, it posted the
commission the books had decided against. Each such event now has a row of `program_chain`, as it
is stored, in the same transaction, after the facts and events before it: its table and id, and a
SHA-256 of the previous row's hash with its content (every column of the row, `FACT_COLUMNS`). So a
deleted or altered one is named by `verify` (`program_fact_missing`, `program_fact_altered`), and
one removed with the rows of the chain after it by a program head recorded before, or by a close
made since, whose close hash holds the head (0053). The events already stored that posted nothing
are chained here, after the facts, by their recorded instant, then their id.

The database holds, for a writer that goes around Python, what 0053 holds for a fact: an event that
posted nothing is added to `program_chain_due` as it is inserted (one that posts is not: its
postings name it), and leaves it only when its row of the chain is written, by the commit; the row
names an event that exists. The chain's check of `fact_table` now takes `revenue_events`: SQLite
holds a check in the table's definition, so the chain is made anew there (its rows copied, then its
triggers, as 0053 made them, but for the fact it checks each row names, now among the events too).

Rows of the chain are appended under a lock of the chain's own (`ledger.program_chain.chain`): an
event's writer holds the journal's lock, not the program's, and a fact's writer the program's. On
PostgreSQL a statement inserting into the chain takes that lock too (at READ COMMITTED only, as 0043's
writers), so a writer sending its own SQL takes its turn: one that read the head before the service
appended waits, then is refused by the link's check, and the service's append never meets a row
another writer holds uncommitted.

Downgrade takes the events off the chain when they are its last rows, in the order the backfill
gives them, so that going up again makes the same chain; it refuses otherwise (events stored since,
among the facts or in another order: a program head recorded since would no longer be proved), and
while a close holds a program head among them in its close hash.

Revision ID: 0056
Revises: 0055
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from migrations.earlier import revision as _revision

revision = "0056"
down_revision = "0055"
branch_labels = None
depends_on = None

EVENTS = "revenue_events"
# What an event's hash covers: every column of its row, in this order (frozen, as 0053's facts').
FACT_COLUMNS = {EVENTS: ("id", "type", "customer_id", "invoice_id", "currency", "amount_minor", "occurred_at_us",
                         "recorded_at_us", "request_hash", "status", "first_eligible_customer_id")}
UNPOSTED = "status <> 'posted'"
BACKFILL_ROWS = 5_000  # chain rows written at a time

_0043 = _revision("0043_journal_writers_in_turn.py")  # function: a writer's turn, by advisory locks
_0053 = _revision("0053_program_facts_chained.py")  # the chain's guards over 0053's tables
# The same guards over this revision's tables: a module of its own, whose tables take the events.
_chained = _revision("0053_program_facts_chained.py")
_chained.TABLES = (*_0053.TABLES, EVENTS)
_chained.TEXT_IDS = (*_0053.TEXT_IDS, EVENTS)
TABLES = _chained.TABLES
CHAIN, DUE, SETTINGS = _0053.CHAIN, _0053.DUE, _0053.SETTINGS

PROGRAM_CHAIN_LOCK_KEY = 0x6368_6169_6E00_0000  # ledger.db's, as of this revision
IN_TURN = "program_chain_in_turn"
POSTGRES_IN_TURN = [_0043.function(IN_TURN, "program chain", (PROGRAM_CHAIN_LOCK_KEY,)),
                    f"CREATE TRIGGER trg_{CHAIN}_in_turn BEFORE INSERT ON {CHAIN}\n"
                    f"FOR EACH STATEMENT EXECUTE FUNCTION {IN_TURN}()"]
SQLITE_EVENTS_DUE = (f"CREATE TRIGGER trg_{EVENTS}_chain_due AFTER INSERT ON {EVENTS}\n"
                     f"WHEN NEW.{UNPOSTED}\n"
                     f"BEGIN INSERT INTO {DUE} (fact_table, fact_id) VALUES ('{EVENTS}', NEW.id); END")
POSTGRES_EVENTS_DUE = [
    f"""CREATE FUNCTION {EVENTS}_chain_due() RETURNS trigger LANGUAGE plpgsql {SETTINGS} AS $$
BEGIN
  INSERT INTO {DUE} (fact_table, fact_id) SELECT '{EVENTS}', a.id FROM added a WHERE a.{UNPOSTED};
  RETURN NULL;
END $$""",
    f"CREATE TRIGGER trg_{EVENTS}_chain_due AFTER INSERT ON {EVENTS}\n"
    f"REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION {EVENTS}_chain_due()"]


def _check(tables: tuple[str, ...]) -> sa.CheckConstraint:
    return sa.CheckConstraint(f"fact_table IN ({', '.join(repr(table) for table in tables)})",
                              name=op.f(f"ck_{CHAIN}_fact_table"))


def _postgres_chain(module, tables: tuple[str, ...]) -> list[str]:
    """The chain's check of `fact_table`, and its function checking each row's fact, as `module`
    (0053's, or this revision's copy of it) makes them."""
    [linked] = [statement for statement in module._postgres()
                if statement.startswith(f"CREATE FUNCTION {CHAIN}_linked")]
    check = f"ck_{CHAIN}_fact_table"
    return [f"ALTER TABLE {CHAIN} DROP CONSTRAINT {check}",
            f"ALTER TABLE {CHAIN} ADD CONSTRAINT {check} CHECK (fact_table IN ({', '.join(repr(t) for t in tables)}))",
            linked.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)]


def _sqlite_chain_made_anew(module, tables: tuple[str, ...], kept: str = "1 = 1") -> None:
    """The chain made anew with the check of `fact_table` over `tables` (SQLite holds a check in the
    table's definition): its rows copied (those `kept`), then its own triggers as `module` makes
    them. Without a rename, which would have SQLite check the triggers of other tables naming the
    chain while it is gone; the list of facts due, whose key names the chain, is empty between
    transactions."""
    op.execute(f"CREATE TEMP TABLE {CHAIN}_rows AS SELECT id, fact_table, fact_id, prev_hash, hash FROM {CHAIN}"
               f" WHERE {kept}")
    op.drop_table(CHAIN)  # with its triggers; no trigger runs for its rows
    op.create_table(
        CHAIN,
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("fact_table", sa.String(32), nullable=False),
        sa.Column("fact_id", sa.String(64), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{CHAIN}")),
        sa.UniqueConstraint("fact_table", "fact_id", name=op.f(f"uq_{CHAIN}_fact_table_fact_id")),
        sa.CheckConstraint("id >= 1", name=op.f(f"ck_{CHAIN}_id_positive")),
        _check(tables),
        sa.CheckConstraint("length(hash) = 64 AND length(prev_hash) = 64", name=op.f(f"ck_{CHAIN}_hash_length")),
    )
    op.execute(f"INSERT INTO {CHAIN} (id, fact_table, fact_id, prev_hash, hash)"
               f" SELECT id, fact_table, fact_id, prev_hash, hash FROM {CHAIN}_rows ORDER BY id")
    op.execute(f"DROP TABLE {CHAIN}_rows")
    for statement in module._sqlite():
        if f" ON {CHAIN}\n" in statement:
            op.execute(statement)


def _backfill(bind) -> None:
    """The events stored that posted nothing, after the chain's head, by recorded instant, then id."""
    head = bind.execute(sa.text(f"SELECT id, hash FROM {CHAIN} ORDER BY id DESC LIMIT 1")).first()
    head_id, prev_hash = tuple(head) if head is not None else (0, _0053.GENESIS_HASH)
    columns = FACT_COLUMNS[EVENTS]
    rows = bind.execute(sa.text(f"SELECT {', '.join(columns)} FROM {EVENTS} WHERE {UNPOSTED}"
                                " ORDER BY recorded_at_us, id"))
    insert = sa.text(f"INSERT INTO {CHAIN} (id, fact_table, fact_id, prev_hash, hash)"
                     " VALUES (:id, :fact_table, :fact_id, :prev_hash, :hash)")
    links = []
    for row in rows.all():  # read whole: the inserts go on the same connection
        hashed = _0053.fact_hash(prev_hash, EVENTS, tuple(row))
        head_id += 1
        links.append({"id": head_id, "fact_table": EVENTS, "fact_id": row[0], "prev_hash": prev_hash,
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
    if postgres:
        for statement in _postgres_chain(_chained, TABLES):
            op.execute(statement)
    else:
        _sqlite_chain_made_anew(_chained, TABLES)
    _backfill(bind)
    for statement in [*POSTGRES_EVENTS_DUE, *POSTGRES_IN_TURN] if postgres else [SQLITE_EVENTS_DUE]:
        op.execute(statement)


def _events_at_the_tail(bind) -> int | None:
    """The id of the chain's first row naming an event, when the rows naming events are the chain's
    last and in the order this revision's backfill gives them (so going below it and up again makes
    the same chain); None while no event is chained. Refuses otherwise, and while a close holds a
    program head among those rows in its close hash."""
    rows = bind.execute(sa.text(f"SELECT id, fact_id FROM {CHAIN} WHERE fact_table = :table ORDER BY id"),
                        {"table": EVENTS}).all()
    if not rows:
        return None
    first = rows[0][0]
    fact_after = bind.execute(sa.text(f"SELECT 1 FROM {CHAIN} WHERE fact_table <> :table AND id > :first LIMIT 1"),
                              {"table": EVENTS, "first": first}).first()
    backfilled = bind.execute(sa.text(f"SELECT id FROM {EVENTS} WHERE {UNPOSTED} ORDER BY recorded_at_us, id"))
    if fact_after is not None or [fact_id for _, fact_id in rows] != list(backfilled.scalars()):
        raise RuntimeError("events stored since revision 0056 are chained in the order stored, among the facts, "
                           "which going below it and up again would not keep: a program head recorded since would "
                           "no longer be proved")
    if bind.execute(sa.text("SELECT 1 FROM period_closes WHERE program_head_id >= :first LIMIT 1"),
                    {"first": first}).first():
        raise RuntimeError("closes made since revision 0056 hold a program head among the events chained in their "
                           "close hash, which going below it would lose")
    return first


def downgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    first = _events_at_the_tail(bind)
    op.execute(f"DROP TRIGGER trg_{EVENTS}_chain_due" + (f" ON {EVENTS}" if postgres else ""))
    if postgres:
        op.execute(f"DROP FUNCTION {EVENTS}_chain_due()")
        op.execute(f"DROP TRIGGER trg_{CHAIN}_in_turn ON {CHAIN}")
        op.execute(f"DROP FUNCTION {IN_TURN}()")
        if first is not None:  # the chain's last rows: no gap is left
            # The list's deferred key checked at once: no trigger event of the table pends at its ALTER.
            due_key = f"fk_{DUE}_fact_table_{CHAIN}"
            op.execute(f"ALTER TABLE {CHAIN} DISABLE TRIGGER trg_{CHAIN}_no_change")
            op.execute(f"SET CONSTRAINTS {due_key} IMMEDIATE")
            op.execute(f"DELETE FROM {CHAIN} WHERE id >= {first}")
            op.execute(f"SET CONSTRAINTS {due_key} DEFERRED")
            op.execute(f"ALTER TABLE {CHAIN} ENABLE TRIGGER trg_{CHAIN}_no_change")
        for statement in _postgres_chain(_0053, _0053.TABLES):
            op.execute(statement)
    else:
        _sqlite_chain_made_anew(_0053, _0053.TABLES, kept=f"fact_table <> '{EVENTS}'")
