"""The partner program's facts, chained as they are recorded (migration 0053).

`verify` re-derives every posting from the program as stored, so a fact is covered once a posting
used it: rewritten, the postings it priced no longer follow from it. A fact no posting has used yet
(a step-down month not reached, a plan version dated ahead, a partner's name) was covered by nothing,
and a rewrite of it, made past the triggers, priced the payments that came after it unseen. So every
fact gets a row of `program_chain` as it is recorded, in the same transaction: the fact's table and
id, and a SHA-256 of the previous row's hash with the fact's content (`fact_hash`), in the order the
facts were recorded. The facts are the rows of `CHAINED_TABLES`: plans and their versions, partners,
their status and plan changes, customers and their attributions, and the withdrawals of facts that
had not started (`ledger.withdrawals`). A withdrawn fact leaves its table but keeps its row of the
chain, and its content is read from its withdrawal, which holds all of it (`WITHDRAWN_AS`).

The revenue events that posted nothing (`unattributed`, `no_commission`) are chained too, as they
are stored (migration 0056): an event that posts is named by its postings, whose hashes cover it in
the journal's chain, but one that posted nothing was named by nothing, and deleted past the
triggers it was decided anew when sent again. So are the API keys and their revocations, as they
are made (migration 0057; `ledger.keys`): deleted past the triggers, a revocation let its key in
again, unseen. A revocation is named by its key's id (`KEY_COLUMNS`). Rows are appended under a lock
of the chain's own (`chain`), which every writer of them takes last.

The database holds that every fact inserted (and every event that posted nothing, key and
revocation) has its row of the chain by the commit (a list of the facts due, whose foreign key to
the chain is deferred to the commit, as migration 0026's), that the chain has no gap and each row
names the previous row's hash, that its rows are never changed, and that a row names a fact that
exists. What it cannot hold is the hash: `verify` recomputes each row (`verify_program_chain`), and
as with the journal, the hashes have no secret, so a rewrite from some fact on can be made whole
again by one who can write past the triggers. The head (`head`) is to be recorded outside the
database, as the journal's is (`revshare verify --program-head`), and every
close made since 0053 holds the head as it closed in its close hash (`ledger.periods`), so a close
recorded outside covers the program up to it too.

Facts recorded before 0053 were chained by the migration table by table, in the order of
`CHAINED_TABLES`, each table's rows by id, then its withdrawn facts by id. The content and the hash
are frozen: the migration holds a copy, which a test compares with this one.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from typing import Any, Iterable, Sequence

from sqlalchemy import Select, String, cast, exists, func, insert, select
from sqlalchemy.orm import Session

from ledger.db import (BIGINT_MAX, PROGRAM_CHAIN_LOCK_KEY, driver_rows, in_lists, insert_many, is_postgres,
                       locked, shared_cache, table_exists, transaction_info, trigger_exists)
from ledger.errors import Conflict
from ledger.schema import GENESIS_HASH, PROGRAM_CHAIN_TABLES, metadata, program_chain, program_withdrawals

CHAINED_TABLES = PROGRAM_CHAIN_TABLES
# What a fact's hash covers: each of its columns' values, in this order (frozen: a column added to a
# fact's table later is not in the hash of any fact, or the facts chained before it would no longer
# verify).
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
    "revenue_events": ("id", "type", "customer_id", "invoice_id", "currency", "amount_minor", "occurred_at_us",
                       "recorded_at_us", "request_hash", "status", "first_eligible_customer_id"),
    "api_keys": ("id", "key_hash", "role", "partner_id", "created_at_us", "expires_at_us"),
    "api_key_revocations": ("api_key_id", "revoked_at_us", "reason"),
}
EVENTS = "revenue_events"  # those that posted nothing, chained as they are stored (migration 0056)
KEYS = ("api_keys", "api_key_revocations")  # chained as they are made (migration 0057)
# A fact's key, where it is not `id`: a revocation is named by its key's id, one revocation a key.
KEY_COLUMNS = {"api_key_revocations": "api_key_id"}
# A withdrawn fact's columns, from its withdrawal's (`ledger.withdrawals.withdraw` writes them so).
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
INTEGER_VALUES = {("plan_versions", "version")}  # a withdrawal's `value` is text; the fact's column is not
# The facts whose ids are text; the others' are integers.
TEXT_IDS = ("plans", "partners", "customers", "revenue_events", *KEYS)
FACTS_NAMED = 5  # of each kind of problem, the first few are named
NOUNS = {"plans": "plan", "partners": "partner", "customers": "customer", "revenue_events": "revenue event",
         "api_keys": "API key", "api_key_revocations": "the revocation of API key"}


def key_column(table: str) -> str:
    """The column naming a fact of `table`: its `fact_id` in the chain."""
    return KEY_COLUMNS.get(table, "id")


def _unlike_json(value: Any) -> str:
    """A value JSON has no form for, as only a column altered past its type holds (an SQLite blob):
    text that no fact recorded hashes to, so the fact is named, not `verify` stopped."""
    return f"<{type(value).__name__}>{value!r}"


# ASCII only: a lone surrogate in a name is escaped.
_DOCUMENT = json.JSONEncoder(separators=(",", ":"), default=_unlike_json)


def fact_hash(prev_hash: str, table: str, content: Sequence[Any]) -> str:
    """The chain's hash of a fact of `table`, whose values in `FACT_COLUMNS` order are `content`,
    after `prev_hash`: of the JSON array [prev_hash, table, [values]]. An array of the values, not
    an object of the columns: a third of the time, at tens of thousands of facts a verify."""
    return hashlib.sha256(_DOCUMENT.encode([prev_hash, table, content]).encode()).hexdigest()


def content(table: str, row) -> tuple[Any, ...]:
    """A fact's content as its hash covers it, from its row (a mapping or a Row): its values in
    `FACT_COLUMNS` order, its id first."""
    mapping = row._mapping if hasattr(row, "_mapping") else row
    return tuple(mapping[column] for column in FACT_COLUMNS[table])


def withdrawn_content(withdrawal) -> tuple[Any, ...]:
    """A withdrawn fact's content, from its row of `program_withdrawals`."""
    table = withdrawal.fact_table
    found = {"id": withdrawal.fact_id}
    for column, source in WITHDRAWN_AS[table].items():
        value = getattr(withdrawal, source)
        number = (table, column) in INTEGER_VALUES and isinstance(value, str) and value.isascii() and value.isdigit()
        found[column] = int(value) if number else value  # else not as recorded: named
    return tuple(found[column] for column in FACT_COLUMNS[table])


def chained(session: Session) -> bool:
    """Whether the books chain their facts: those below revision 0053, as the tests of earlier
    migrations write them with today's code, have no chain. Asked once a session while the answer
    is no; a yes is kept for the process (books are not taken below 0053 under a running service:
    the README has it restarted after a restore)."""
    known = shared_cache(session, "program_chain")
    if known is not None and known.get("chained"):
        return True
    if "program_chained" not in session.info:
        session.info["program_chained"] = table_exists(session, "program_chain")
        if known is not None and session.info["program_chained"]:
            known["chained"] = True
    return session.info["program_chained"]


def events_chained(session: Session) -> bool:
    """Whether the books chain the revenue events that posted nothing (revision 0056 and later; those
    below it, as the tests of earlier migrations write them with today's code, refuse an event's row
    of the chain). Kept as `chained` is."""
    return _chained_since(session, "events", f"trg_{EVENTS}_chain_due")


def keys_chained(session: Session) -> bool:
    """Whether the books chain the API keys and their revocations (revision 0057 and later), as
    `events_chained`."""
    return _chained_since(session, "keys", f"trg_{KEYS[0]}_chain_due")


def _chained_since(session: Session, name: str, trigger: str) -> bool:
    known = shared_cache(session, "program_chain")
    if known is not None and known.get(name):
        return True
    asked = f"{name}_chained"
    if asked not in session.info:
        session.info[asked] = chained(session) and trigger_exists(session, trigger)
        if known is not None and session.info[asked]:
            known[name] = True
    return session.info[asked]


def tables_chained(session: Session) -> tuple[str, ...]:
    """The tables whose facts the books chain, at their revision."""
    if not chained(session):
        return ()
    tables = tuple(table for table in CHAINED_TABLES if table != EVENTS and table not in KEYS)
    return tables + ((EVENTS,) if events_chained(session) else ()) + (KEYS if keys_chained(session) else ())


HEAD = "SELECT id, hash FROM program_chain ORDER BY id DESC LIMIT 1"


def head(session: Session) -> tuple[int, str]:
    """The chain's last row, (id, hash); (0, the genesis hash) while it is empty."""
    return _head(driver_rows(session, HEAD))


def _head(rows: list[tuple]) -> tuple[int, str]:
    return (rows[0][0], rows[0][1]) if rows else (0, GENESIS_HASH)


def holds(session: Session, recorded_head: tuple[int, str]) -> bool:
    """Whether the chain holds the head (id, hash): a row with that hash, or the empty chain's."""
    head_id, head_hash = recorded_head
    if head_id == 0:
        return head_hash == GENESIS_HASH
    return chained(session) and session.execute(
        select(program_chain.c.hash).where(program_chain.c.id == head_id)).scalar() == head_hash


LINK_COLUMNS = ("id", "fact_table", "fact_id", "prev_hash", "hash")


def chain(session: Session, facts: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """Append the facts just inserted, each (its table, its columns with its id), to the chain in
    one statement, under the chain's own lock (`ledger.db.PROGRAM_CHAIN_LOCK_KEY`), read with the
    head in one round trip: the writers of facts hold the program's lock (`ledger.db.lock_program`)
    and the writers of revenue events the journal's, and either may append. Taken last, after any
    other lock the transaction takes, and held to its end: a replacement attribution or a new
    partner waits for no posting, only for an event's writer between its append and its commit.

    A fact or event the chain names already was recorded once and is no longer (deleted past the
    database's rules, which `verify` names): sent again (or its id taken again by SQLite's next
    row), it is refused by name, a `Conflict`, not by the chain's unique key (a 500); the books are
    to be restored before it is taken."""
    if not chained(session):
        return
    facts = list(facts)
    # The head this transaction wrote last (none other writes meanwhile: it holds the chain's lock
    # since); not read or kept in a savepoint, whose rollback would leave it ahead of the chain (and
    # what it writes, behind it).
    known, nested = transaction_info(session), session.in_nested_transaction()
    written = None if nested else known.get("program_head")
    ids: dict[str, list[str]] = {}
    for table, row in facts:
        ids.setdefault(table, []).append(str(row[key_column(table)]))
    reads = [] if written else [(HEAD, ())]
    reads += [read for table, table_ids in ids.items() for read in chained_reads(session, table, table_ids)]
    found = locked(session, reads, key=PROGRAM_CHAIN_LOCK_KEY) if reads else []
    head_id, prev_hash = written or _head(found.pop(0))
    gone = [row for rows in found for row in rows]
    if gone:
        table, fact_id = gone[0]
        raise removed(table, fact_id, len(gone) - 1)
    links = []
    for table, row in facts:
        hashed = fact_hash(prev_hash, table, content(table, row))
        head_id += 1
        links.append((head_id, table, str(row[key_column(table)]), prev_hash, hashed))
        prev_hash = hashed
    if links:
        insert_many(session, program_chain, LINK_COLUMNS, links)
        if nested:
            known.pop("program_head", None)
        else:
            known["program_head"] = (head_id, prev_hash)


def chained_reads(session: Session, table: str, ids: Iterable[str]) -> list[tuple[str, tuple]]:
    """Statements reading the (table, id) of each of these facts of `table` the chain names."""
    return [("SELECT fact_table, fact_id FROM program_chain WHERE fact_table = ? AND " + condition, (table, *params))
            for condition, params in in_lists(session, "fact_id", sorted(ids))]


def removed(table: str, fact_id: str, more: int = 0) -> Conflict:
    """The refusal of a fact or event recorded again whose row the chain holds already: it was
    removed past the database's rules."""
    others = f" (and {more} more)" if more else ""
    return Conflict(f"{NOUNS.get(table, table)} {fact_id!r}{others} was recorded once and is no longer: the program's "
                    "chain names it. It was removed past the database's rules (`revshare verify` names it); the books "
                    "are to be restored before it is taken again")


def record(session: Session, *facts: tuple[str, dict[str, Any]]) -> list:
    """Insert each fact, (its table, its columns' values), and chain them, in that order: returns
    their ids. The caller holds the program's lock."""
    ids, inserted = [], []
    for table, values in facts:
        fact_table = metadata.tables[table]
        fact_id = session.execute(insert(fact_table).values(**values).returning(fact_table.c.id)).scalar_one()
        ids.append(fact_id)
        inserted.append((table, {column: values.get(column) for column in FACT_COLUMNS[table]} | {"id": fact_id}))
    chain(session, inserted)
    return ids


def verify_program_chain(session: Session, recorded_head: tuple[int, str] | None = None
                         ) -> list[tuple[None, str, str]]:
    """What `verify` names of the chain, as (None, code, message): a row out of sequence or not
    naming the previous row's hash (`program_chain_broken`); a fact whose content no longer gives its
    row's hash (`program_fact_altered`), or that has no row (`program_fact_unchained`: inserted past
    the triggers); a row whose fact is neither in its table nor withdrawn (`program_fact_missing`:
    deleted past them); and a head recorded earlier that the chain no longer holds with its hash
    (`program_head_missing`, `program_head_rewritten`). Streamed: memory stays flat at any size."""
    if not chained(session):
        return []
    problems = _links_broken(session)
    for table in tables_chained(session):
        problems.extend(_facts_unlike_their_rows(session, table))
    if recorded_head is not None:
        problems.extend(_check_recorded_head(session, recorded_head))
    return problems


def _links_broken(session: Session) -> list[tuple[None, str, str]]:
    c = program_chain.c
    problems: list[tuple[None, str, str]] = []
    expected_id, prev_hash, broken = 1, GENESIS_HASH, 0
    for row_id, row_prev, row_hash in session.execute(
            select(c.id, c.prev_hash, c.hash).order_by(c.id).execution_options(yield_per=10_000)):
        if row_id != expected_id or row_prev != prev_hash:
            broken += 1
            if broken <= FACTS_NAMED:
                what = (f"row {row_id} follows row {expected_id - 1}" if row_id != expected_id
                        else f"row {row_id} does not name the previous row's hash")
                problems.append((None, "program_chain_broken", f"the program chain: {what}"))
        expected_id, prev_hash = row_id + 1, row_hash
    return problems


def _facts_unlike_their_rows(session: Session, table: str) -> list[tuple[None, str, str]]:
    """Each fact of `table` in force, and each withdrawn from it, against its row of the chain; then
    the rows of the chain that name a fact of `table` found in neither. Of the revenue events, those
    that posted nothing, and those the chain names though they say they posted (altered: the chain
    takes only the others)."""
    width = len(FACT_COLUMNS[table])
    queries, withdrawn_query = _fact_queries(table)
    rows = itertools.chain.from_iterable(session.execute(query) for query in queries)
    found = ((tuple(row[:width]), row[width], row[width + 1]) for row in rows)
    if withdrawn_query is not None:
        withdrawn = session.execute(withdrawn_query).all()
        found = itertools.chain(found, ((withdrawn_content(row), row.chain_prev, row.chain_hash) for row in withdrawn))
    facts, unchained, altered = 0, [], []
    for facts_content, chain_prev, chain_hash in found:
        facts += 1
        if chain_hash is None:
            unchained.append(facts_content[0])
        elif fact_hash(chain_prev, table, facts_content) != chain_hash:
            altered.append(facts_content[0])
    problems = []
    for code, ids, what in (("program_fact_unchained", unchained, "not in the program chain"),
                            ("program_fact_altered", altered, "not as the program chain recorded it")):
        if ids:
            more = f" and {len(ids) - FACTS_NAMED} more" if len(ids) > FACTS_NAMED else ""
            named = ", ".join(repr(str(fact_id)) for fact_id in ids[:FACTS_NAMED])  # as the chain names them
            problems.append((None, code, f"{table} {named}{more}: {what}"))
    return problems + _rows_without_facts(session, table, facts - len(unchained))


@functools.cache
def _fact_queries(table: str) -> tuple[tuple[Select, ...], Select | None]:
    """`_facts_unlike_their_rows`' queries of `table`, built once a process: its facts (of the revenue
    events, those that posted nothing, then those the chain names that say they posted) each with its
    row of the chain, and the facts withdrawn from it with theirs (None: none can be)."""
    c = program_chain.c
    fact_table = metadata.tables[table]
    key = fact_table.c[key_column(table)]
    fact_id = key if table in TEXT_IDS else cast(key, String)  # by the key's index
    link = (c.fact_table == table) & (c.fact_id == fact_id)
    facts_and_rows = select(*(fact_table.c[column] for column in FACT_COLUMNS[table]),
                            c.prev_hash.label("chain_prev"), c.hash.label("chain_hash"))
    if table == EVENTS:
        unposted = fact_table.c.status != "posted"
        queries = (facts_and_rows.outerjoin(program_chain, link).where(unposted),
                   facts_and_rows.select_from(program_chain).join(fact_table, link).where(~unposted))
    else:
        queries = (facts_and_rows.outerjoin(program_chain, link),)
    queries = tuple(query.order_by(key).execution_options(yield_per=10_000) for query in queries)
    if table not in WITHDRAWN_AS:
        return queries, None
    w = program_withdrawals.c
    withdrawn_link = (c.fact_table == table) & (c.fact_id == cast(w.fact_id, String))
    # A withdrawal whose fact is still in its table is `withdrawal_not_applied`: its fact is checked above.
    return queries, (select(program_withdrawals, c.prev_hash.label("chain_prev"), c.hash.label("chain_hash"))
                     .outerjoin(program_chain, withdrawn_link).where(w.fact_table == table)
                     .where(~exists().where(fact_table.c.id == w.fact_id)).order_by(w.fact_id))


def _rows_without_facts(session: Session, table: str, facts: int) -> list[tuple[None, str, str]]:
    """The rows of the chain naming a fact of `table` that is neither in force nor withdrawn: counted
    against the facts found (each row names one fact, by the chain's unique key), and looked for one
    by one only when there are more rows than facts."""
    c = program_chain.c
    rows = session.execute(select(func.count()).where(c.fact_table == table)).scalar_one()
    if rows <= facts:
        return []
    # Each row's fact by its key, the text compared too ('03' is not the id 3's row), as an anti-join:
    # PostgreSQL ran a NOT IN over a table past `work_mem` once a row, for hours at 200,000 customers.
    if table in TEXT_IDS:
        key = "c.fact_id"
    elif is_postgres(session):
        key = "CASE WHEN c.fact_id ~ '^[1-9][0-9]{0,17}$' THEN c.fact_id::bigint END"
    else:
        key = "CAST(c.fact_id AS INTEGER)"
    column = key_column(table)
    withdrawn = (f" AND NOT EXISTS (SELECT 1 FROM program_withdrawals w WHERE w.fact_table = c.fact_table"
                 f" AND w.fact_id = {key} AND CAST(w.fact_id AS VARCHAR(20)) = c.fact_id)"
                 if table in WITHDRAWN_AS else "")
    missing = driver_rows(session, f"SELECT c.id, c.fact_id FROM program_chain c WHERE c.fact_table = ?"
                                   f" AND NOT EXISTS (SELECT 1 FROM {table} f WHERE f.{column} = {key}"
                                   f" AND CAST(f.{column} AS VARCHAR(64)) = c.fact_id){withdrawn}"
                                   " ORDER BY c.id LIMIT ?",
                          (table, FACTS_NAMED))
    where = "neither in its table nor withdrawn" if table in WITHDRAWN_AS else "not in its table"
    return [(None, "program_fact_missing", f"row {row_id} of the program chain names {table} {fact_id!r}, which is "
                                           f"{where}") for row_id, fact_id in missing]


def _check_recorded_head(session: Session, recorded_head: tuple[int, str]) -> list[tuple[None, str, str]]:
    head_id, recorded_hash = recorded_head
    found = None if head_id > BIGINT_MAX else session.execute(  # past the chain's ids: missing
        select(program_chain.c.hash).where(program_chain.c.id == head_id)).scalar()
    if found is None:
        return [(None, "program_head_missing", f"the program chain ends before row {head_id}, the head recorded: "
                                               "facts were removed")]
    if found != recorded_hash:
        return [(None, "program_head_rewritten", f"row {head_id} of the program chain has not the hash recorded for "
                                                 "it: the program was rewritten up to there")]
    return []
