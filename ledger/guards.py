"""The database's guards (its triggers) against the ones the migrations make, for `verify`.

The journal's promises rest on the triggers: the append-only tables refuse UPDATE and DELETE, and
the rules refuse rows Python would not write. Someone who can change the schema can drop a trigger,
or on PostgreSQL disable it, and the books then take what the guard refused, while every row written
so far still verifies. `verify` names each guard the migrations make at the head revision that the
database lacks (`guard_missing`), holds in another form (`guard_altered`), or, on PostgreSQL, does
not fire (`guard_disabled`: disabled, or set to fire only on a replica). What each trigger should be
is `GUARDS` in `ledger/guards_at_head.py`, a digest of each trigger as a fresh database migrated to
head holds it: on SQLite its table and its SQL as written; on PostgreSQL its table, its timing and
events (`tgtype`), its `WHEN` condition as PostgreSQL writes it back (that part of
`pg_get_triggerdef`, not the rest, whose spelling follows the search path), its `UPDATE OF` columns
and arguments, and its function's name, body and settings; and every function of the journal's
schema (those the rules call too), by body and settings; and on PostgreSQL the keys and checks
the rows rest on: each constraint (primary, unique, foreign, check), each unique index made apart
from a constraint, and each table's columns with their types and NOT NULL (`_POSTGRES_KEYS`), which
a restore that went on past an error, or an owner's `ALTER TABLE`, can leave out or loosen while
every row still verifies. (SQLite holds its keys in each table's definition, which only rebuilding
the table changes, as the SQL SQLAlchemy wrote: not listed, since another version of it writes other
text for the same table.) On PostgreSQL a `session_replication_role`
other than `origin` set for the database or the role (no trigger then fires) is named too. A
trigger or function added by hand, not in the list, is not named. A database at another revision
(an upgrade not yet run) is not checked. The application role's privileges are not checked here:
the service warns at its start when its role may rewrite the journal (`cli.books`).

`make guards` (`python -m tests.guards_list`: an SQLite file and a throwaway PostgreSQL cluster) or
`python -m ledger.guards SQLITE_URL POSTGRES_URL` (two databases migrated to head) writes
`ledger/guards_at_head.py`; `tests/integration/test_guards.py` fails, saying so, until it is
written again after a migration that makes, drops or changes a trigger.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import text
from sqlalchemy.orm import Session

from ledger.guards_at_head import GUARDS, REVISION

_SQLITE = "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
# The schema the journal's tables are in (the migrations make them in `public`), whatever the
# role's search path puts first (a schema of its own, named after it, comes before `public`).
_SCHEMA = "(SELECT relnamespace FROM pg_class WHERE oid = to_regclass('journal_lines'))"
_POSTGRES_TRIGGERS = rf"""
SELECT t.tgname, c.relname, t.tgenabled, p.proname, t.tgtype,
       coalesce(substring(pg_get_triggerdef(t.oid) from ' WHEN \((.*)\) EXECUTE '), ''),
       t.tgattr::text, encode(t.tgargs, 'hex'), p.prosrc, p.prosecdef, array_to_string(p.proconfig, ',')
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_proc p ON p.oid = t.tgfoid
WHERE NOT t.tgisinternal AND c.relnamespace = {_SCHEMA}"""
# Every function of that schema: a trigger's own, and those its rules call (`revshare_is_json_object`).
_POSTGRES_FUNCTIONS = f"""
SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', p.prosrc, p.prosecdef,
       array_to_string(p.proconfig, ','), p.provolatile
FROM pg_proc p
WHERE p.pronamespace = {_SCHEMA} AND p.prokind = 'f'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.deptype = 'e')"""
# The keys and checks of the journal's tables (PostgreSQL): each constraint by its definition as
# PostgreSQL writes it back, each unique index made apart from a constraint by its method, columns
# and condition (`pg_get_indexdef` after USING: before it, the table's name follows the search
# path), and each table's columns, their types and which may not be null (NOT NULL is no entry of
# `pg_constraint` before PostgreSQL 17).
_POSTGRES_KEYS = f"""
SELECT 'constraint ' || c.conname || ' ON ' || r.relname, r.relname, c.contype,
       pg_get_constraintdef(c.oid), c.convalidated
FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
WHERE r.relnamespace = {_SCHEMA} AND c.contype IN ('c', 'f', 'p', 'u', 'x')
UNION ALL
SELECT 'unique index ' || i.relname || ' ON ' || r.relname, r.relname, 'i',
       substring(pg_get_indexdef(i.oid) from ' USING (.*)$'), x.indisvalid
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class r ON r.oid = x.indrelid
WHERE r.relnamespace = {_SCHEMA} AND x.indisunique AND NOT EXISTS (
    SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid AND c.contype IN ('p', 'u', 'x'))
UNION ALL
SELECT 'columns of ' || r.relname, r.relname, 'a',
       string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull
                  THEN ' NOT NULL' ELSE '' END, ', ' ORDER BY a.attnum), true
FROM pg_attribute a JOIN pg_class r ON r.oid = a.attrelid
WHERE r.relnamespace = {_SCHEMA} AND r.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
GROUP BY r.relname"""
KEYS = ("constraint ", "unique index ", "columns of ")  # how an entry of `_POSTGRES_KEYS` is named
FIRING = ("O", "A")  # PostgreSQL's `tgenabled`: fires in a session as the service opens it
FUNCTION = "(function)"  # the table a function is listed under


class Trigger(NamedTuple):
    table: str
    digest: str
    fires: bool


def _digest(*parts) -> str:
    return hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).hexdigest()[:16]


def triggers(session: Session) -> dict[str, Trigger]:
    """The database's triggers by name (on PostgreSQL, by name and table: names are per table, and
    with them every function of the journal's schema, as `function name(arguments)`)."""
    if session.get_bind().dialect.name == "sqlite":
        return {name: Trigger(table, _digest(table, sql), True)
                for name, table, sql in session.execute(text(_SQLITE))}
    found = {f"{name} ON {table}": Trigger(table, _digest(table, *definition), enabled in FIRING)
             for name, table, enabled, *definition in session.execute(text(_POSTGRES_TRIGGERS))}
    found.update({f"function {name}": Trigger(FUNCTION, _digest(*definition), True)
                  for name, *definition in session.execute(text(_POSTGRES_FUNCTIONS))})
    found.update({name: Trigger(table, _digest(*definition), True)
                  for name, table, *definition in session.execute(text(_POSTGRES_KEYS))})
    return found


def verify_guards(session: Session) -> list[tuple[None, str, str]]:
    """What `verify` names of the guards, as (None, code, message), by trigger name."""
    engine = session.get_bind().dialect.name
    if engine not in GUARDS or _revision(session) != REVISION:
        return []
    found = triggers(session)
    problems = []
    if engine == "postgresql":
        role = session.execute(text("SELECT current_setting('session_replication_role')")).scalar()
        if role != "origin":  # set for the database or the role: no trigger fires but ALWAYS ones
            problems.append((None, "guard_disabled", f"the service's sessions run with session_replication_role "
                                                     f"{role}: no guard fires, and the books take what they refuse"))
    for name, (table, *digests) in sorted(GUARDS[engine].items()):
        trigger, what = found.get(name), _what(name, table)
        if trigger is None:
            problems.append((None, "guard_missing", f"the database has no {what}: what it refuses, the books now "
                                                    "take"))
        elif trigger.digest not in digests:
            problems.append((None, "guard_altered", f"{what} is not as the migrations made it"))
        elif not trigger.fires:
            problems.append((None, "guard_disabled", f"{what} is disabled: what it refuses, the books now take"))
    return problems


def _what(name: str, table: str) -> str:
    """A guard as `verify` names it: a function or a key by its entry's name, a trigger with its table."""
    if table == FUNCTION or name.startswith(KEYS):
        return name
    return f"trigger {name if ' ON ' in name else f'{name} on {table}'}"


def _revision(session: Session) -> str | None:
    """The revision the database is at, or None for one alembic never migrated (no table for it)."""
    if session.get_bind().dialect.name == "sqlite":
        kept = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
    else:
        kept = "SELECT 1 WHERE to_regclass('alembic_version') IS NOT NULL"
    if session.execute(text(kept)).first() is None:
        return None
    return session.execute(text("SELECT version_num FROM alembic_version")).scalar()


def write(sqlite_url: str, postgres_url: str) -> None:
    """`ledger/guards_at_head.py` from two databases migrated to head, one of each engine."""
    from ledger.db import Database
    from ledger.migrate import head_revision

    manifests = {}
    for url in (sqlite_url, postgres_url):
        database = Database(url)
        try:
            with database.reader() as session:
                revision = _revision(session)
                assert revision == head_revision(), f"{url} is at {revision}, not at head {head_revision()}"
                made = triggers(session)
            remade = {**_remade(database), **_remade_keys(database)} if (
                database.engine.dialect.name == "postgresql") else {}
            manifests[database.engine.dialect.name] = {
                name: (trigger.table, trigger.digest, *(d for d in remade.get(name, ()) if d != trigger.digest))
                for name, trigger in sorted(made.items())}
        finally:
            database.dispose()
    lines = ['"""Each trigger the migrations make, at the head revision, and on PostgreSQL each function, key,',
             "check and table's columns: its table and digest (and, for a trigger's `WHEN` or a check that",
             "PostgreSQL writes back otherwise once made again from what it wrote, as a restore of a dump makes",
             "it, that one's too) (`ledger.guards`). Written by `make guards`; not edited by hand.\"\"\"", "",
             f"REVISION = {head_revision()!r}", "", "GUARDS = {"]
    for engine, manifest in manifests.items():
        lines.append(f"    {engine!r}: {{")
        for name, guard in manifest.items():
            entry = f"        {name!r}: {guard!r},"
            lines += [entry] if len(entry) <= 120 else [f"        {name!r}:", f"            {guard!r},"]
        lines.append("    },")
    lines.append("}")
    Path(__file__).with_name("guards_at_head.py").write_text("\n".join(lines) + "\n")


def _remade(database) -> dict[str, list[str]]:
    """The digests a PostgreSQL trigger with a `WHEN` takes when made again from its own
    `pg_get_triggerdef`, as `pg_dump` writes it and a restore makes it, until that is a fixed point
    (one condition, `kind IN (...)` over a varchar column, is written back with its casts moved), each
    remade in a transaction rolled back."""
    remade: dict[str, list[str]] = {}
    with database.reader() as session:
        conditioned = session.execute(text(
            f"SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            f" WHERE t.tgqual IS NOT NULL AND NOT t.tgisinternal AND c.relnamespace = {_SCHEMA}")).all()
    for name, table in conditioned:
        def remake(connection, name=name, table=table) -> list[str]:
            definition = connection.execute(text(
                "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                " WHERE t.tgname = :name AND c.relname = :table"), {"name": name, "table": table}).scalar_one()
            return [f"DROP TRIGGER {name} ON {table}", definition]

        remade[f"{name} ON {table}"] = _digests_remade(database, f"{name} ON {table}", remake)
    return remade


def _digests_remade(database, key: str, remake) -> list[str]:
    """The digests guard `key` takes when made again from what PostgreSQL writes of it (`remake`, of
    a connection: the statements that drop it and make it so), until that is a fixed point, in a
    transaction rolled back."""
    seen: list[str] = []
    with database.engine.connect() as connection:
        with connection.begin():
            for _ in range(3):
                for statement in remake(connection):
                    connection.exec_driver_sql(statement)
                digest = triggers(Session(bind=connection))[key].digest
                if digest in seen:
                    break
                seen.append(digest)
            connection.rollback()
    return seen


# Each check, and each unique index with a condition: (its entry's name, the statement that drops
# it, the statement that makes it from what PostgreSQL writes of it, as a restore does).
_REMAKES = f"""
SELECT 'constraint ' || c.conname || ' ON ' || r.relname AS name,
       format('ALTER TABLE %I DROP CONSTRAINT %I', r.relname, c.conname) AS dropping,
       format('ALTER TABLE %I ADD CONSTRAINT %I ', r.relname, c.conname) || pg_get_constraintdef(c.oid) AS making
FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
WHERE r.relnamespace = {_SCHEMA} AND c.contype = 'c'
UNION ALL
SELECT 'unique index ' || i.relname || ' ON ' || r.relname, format('DROP INDEX %I', i.relname),
       pg_get_indexdef(i.oid)
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class r ON r.oid = x.indrelid
WHERE r.relnamespace = {_SCHEMA} AND x.indisunique AND x.indpred IS NOT NULL"""


def _remade_keys(database) -> dict[str, list[str]]:
    """The digests a check or a unique index with a condition takes when made again from what
    PostgreSQL writes of it, as `_remade` does for a trigger's `WHEN`."""
    remade: dict[str, list[str]] = {}
    with database.reader() as session:
        names = [name for name, _, _ in session.execute(text(_REMAKES))]
    for key in names:
        remade[key] = _digests_remade(database, key, lambda connection, key=key: list(connection.execute(
            text(f"SELECT dropping, making FROM ({_REMAKES}) k WHERE k.name = :key"), {"key": key}).one()))
    return remade


if __name__ == "__main__":
    write(*sys.argv[1:3])
