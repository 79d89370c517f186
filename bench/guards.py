"""`python -m bench.guards [--engine sqlite|postgres] [--events N] [--rounds N]`: what the database's
guards cost of the raw limit.

The raw limit (`bench/raw.py`) writes the very rows the domain path wrote for a batch of paid
invoices through the bare driver, with the real schema's triggers, constraints and indexes. This
writes the same rows again into fresh copies of the database taken before the batch, each copy with
a set of triggers taken away: none, all, or those of one table (SQLite: dropped; PostgreSQL: the
table's user triggers disabled, which leaves the foreign keys' own). The copies are written in
turn, round after round, so that the machine's drift falls on every set alike; medians of the
rounds, of the wall time and of the CPU time (this process's, and on PostgreSQL the cluster's
processes', `bench/cpu.py`), which the machine's other work moves less. What the triggers cost is
what the copy without them saves; the rest is the rows, their indexes and their foreign keys.
"""

from __future__ import annotations

import argparse
import statistics
import time

import sqlalchemy as sa

from ledger.db import Database

from bench import ingestion, program, raw
from bench.cpu import group_s, postmaster_pid, processes
from bench.sites import open_site

TABLES = tuple(table for table, _ in raw.TABLES)


def _triggers(url: str) -> dict[str, list[str]]:
    """The user triggers of each table the raw limit writes, by table."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                rows = connection.exec_driver_sql(
                    "SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger' ORDER BY name")
            else:
                rows = connection.exec_driver_sql(
                    "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY tgname")
            found: dict[str, list[str]] = {table: [] for table in TABLES}
            for table, name in rows:
                if table in found:
                    found[table].append(name)
            return found
    finally:
        engine.dispose()


def _take_away(url: str, triggers: dict[str, list[str]], tables: tuple[str, ...]) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for table in tables:
                if engine.dialect.name == "sqlite":
                    for name in triggers[table]:
                        connection.exec_driver_sql(f"DROP TRIGGER {name}")
                else:
                    connection.exec_driver_sql(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        if engine.dialect.name == "postgresql":  # the copy's own writing done before the clock starts
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("CHECKPOINT")
    finally:
        engine.dispose()


def _cpu_s(database_pid: int | None) -> float | None:
    """This process's CPU seconds, and the PostgreSQL cluster's; None without /proc."""
    if database_pid is None:
        return time.process_time()
    found = processes()
    return None if found is None else time.process_time() + group_s(found, lambda pid, _: pid == database_pid)


def measure(engine_name: str, event_count: int, rounds: int, say=print) -> list[tuple[str, float, float | None]]:
    """(set of triggers taken away, median seconds and CPU seconds to write the batch's rows), the
    full schema first."""
    site = open_site(engine_name)
    try:
        say(f"{engine_name}: seeding")
        url, seeded = ingestion.prepare(site, 200, 20_000)
        base = site.copy(url, "base")
        database = Database(url)
        try:
            events = program.paid_events(seeded, event_count, month_offset=1, prefix="guards")
            since = raw.mark(database.engine)
            with database.transaction() as session:
                ingestion._ingest_all(session, events)
            rows = raw.capture(database.engine, since, [event.id for event in events])
        finally:
            database.dispose()
        triggers = _triggers(base)
        sets = {"nothing (the raw limit)": (), "every table's triggers": TABLES,
                **{f"{table}'s {len(triggers[table])} triggers": (table,) for table in TABLES}}
        database_pid = postmaster_pid(site)
        seconds: dict[str, list[float]] = {name: [] for name in sets}
        cpu_seconds: dict[str, list[float]] = {name: [] for name in sets}
        names = list(sets)
        for number in range(1, rounds + 1):
            say(f"{engine_name}: round {number} of {rounds}")
            for name in names[number % len(names):] + names[:number % len(names)]:  # each in every place
                copy = site.copy(base, "guards")
                _take_away(copy, triggers, sets[name])
                cpu_before = _cpu_s(database_pid)
                seconds[name].append(raw.write(copy, rows))
                cpu_after = _cpu_s(database_pid)
                if cpu_before is not None and cpu_after is not None:
                    cpu_seconds[name].append(cpu_after - cpu_before)
                site.drop(copy)
        say(f"{engine_name}: {len(events):,} paid events, " +
            ", ".join(f"{len(r):,} {t}" for t, r in rows.by_table.items()))
        return [(name, statistics.median(values), statistics.median(cpu_seconds[name]) if cpu_seconds[name] else None)
                for name, values in seconds.items()]
    finally:
        site.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--events", type=int, default=10_000, help="paid invoices in the batch")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    started = time.perf_counter()
    results = measure(args.engine, args.events, args.rounds)
    _, full, full_cpu = results[0]
    print(f"{'taken away':40} {'write':>9} {'events/s':>9} {'of the raw limit':>17} {'CPU':>9} {'of its CPU':>11}")
    for name, seconds, cpu in results:
        cpu_columns = "" if cpu is None else f" {cpu * 1000:6.0f} ms {cpu / full_cpu:11.0%}"
        print(f"{name:40} {seconds * 1000:6.0f} ms {args.events / seconds:9,.0f} {seconds / full:17.0%}{cpu_columns}")
    print(f"({args.rounds} rounds, medians; {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
