"""`python -m bench.in_turn [--rounds N] [--postings N]`: what migration 0043's triggers cost a single
posting on PostgreSQL.

Each statement inserting journal rows takes the journal's advisory lock before its first row (a
trigger before the statement), which a service's posting holds already. On one database seeded as the
HTTP benchmark's program (200 partners), blocks of single paid invoices, each `revenue.ingest` in a
transaction of its own as a POST makes it, alternate between the triggers enabled and disabled
(`ALTER TABLE ... DISABLE TRIGGER`, the owner's), in the order on-off, then off-on, so that the
machine's drift falls on both alike. Printed: medians over the blocks of the CPU a posting in this
process and in the cluster's processes (`bench/cpu.py`), and the wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time

from ledger import revenue
from ledger.db import Database

from bench import program
from bench.cpu import group_s, postmaster_pid, processes
from bench.sites import open_site

TRIGGERS = {table: f"trg_{table}_in_turn" for table in
            ("journal_lines", "journal_transactions", "period_closes", "period_snapshots", "statement_bodies",
             "payout_runs")}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.in_turn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="pairs of blocks, one each way (default 8)")
    parser.add_argument("--postings", type=int, default=300, help="postings a block (default 300)")
    args = parser.parse_args()
    site = open_site("postgres")
    try:
        database = Database(site.new("in_turn"))
        with database.transaction() as session:
            seeded = program.seed(session, 200, 2_000)
        postmaster = postmaster_pid(site)
        events = iter(program.paid_events(seeded, args.rounds * 2 * args.postings + args.postings, month_offset=1,
                                          prefix="in-turn"))

        def block() -> tuple[float, float, float]:
            """(this process's CPU, the cluster's CPU, wall time) a posting, in ms."""
            own, cluster, wall = time.process_time(), _cluster_s(postmaster), time.perf_counter()
            for _ in range(args.postings):
                with database.transaction() as session:
                    revenue.ingest(session, [next(events)])
            return tuple(1_000 * spent / args.postings for spent in (
                time.process_time() - own, _cluster_s(postmaster) - cluster, time.perf_counter() - wall))

        block()  # warm-up: every partner's accounts and the program cached
        found: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
        for round_ in range(args.rounds):
            for enabled in (True, False) if round_ % 2 == 0 else (False, True):
                _set_triggers(database, enabled)
                found[enabled].append(block())
        _set_triggers(database, True)
        database.dispose()
    finally:
        site.close()
    print(f"{args.rounds} blocks each way of {args.postings} single postings; medians, ms a posting")
    print("triggers   client CPU   cluster CPU   wall")
    for enabled in (True, False):
        client, cluster, wall = (statistics.median(values) for values in zip(*found[enabled]))
        print(f"{'on' if enabled else 'off':<10} {client:>10.3f}   {cluster:>11.3f}   {wall:.3f}")


def _cluster_s(postmaster: int) -> float:
    return group_s(processes(), lambda pid, _process: pid == postmaster)


def _set_triggers(database: Database, enabled: bool) -> None:
    with database.engine.begin() as connection:
        for table, trigger in TRIGGERS.items():
            connection.exec_driver_sql(f"ALTER TABLE {table} {'ENABLE' if enabled else 'DISABLE'} TRIGGER {trigger}")


if __name__ == "__main__":
    main()
