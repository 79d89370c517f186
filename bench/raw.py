"""The raw limit: the same rows the domain path wrote, written straight through the driver.

`capture()` reads back, from a database the domain path wrote to, every row it added after a
mark: journal lines, journal headers, revenue events and open holds. `write()` writes those rows
into a copy of the database taken at the mark (so the hash chain continues and every foreign key
holds), in one transaction, in the order the domain writes them (lines before the headers that
seal them): SQLite with `sqlite3.executemany` on a connection carrying the service's pragmas,
PostgreSQL with psycopg `COPY`. Triggers, constraints and indexes are those of the real schema:
the baseline measures the database's cost for these rows, so the ratio isolates what Python adds.
"""

from __future__ import annotations

import sqlite3
import time
from typing import NamedTuple

import sqlalchemy as sa

from ledger.db import normalize_url, sqlite_pragmas

LINE_COLUMNS = ("transaction_id", "account_id", "currency", "side", "amount_minor", "effective_at_us")
HEADER_COLUMNS = ("id", "kind", "effective_at_us", "original_effective_at_us", "recorded_at_us", "idempotency_key",
                  "request_hash", "partner_id", "customer_id", "invoice_id", "event_id", "plan_version_id",
                  "accrual_id", "reverses_id", "matures_at_us", "memo", "prev_hash", "hash", "salt")
EVENT_COLUMNS = ("id", "type", "customer_id", "invoice_id", "currency", "amount_minor", "occurred_at_us",
                 "recorded_at_us", "request_hash", "status", "first_eligible_customer_id")
HOLD_COLUMNS = ("accrual_id", "matures_at_us")
# Written in this order: lines, then the headers that seal them, then what refers to the headers.
CAPTURE_CHUNK_IDS = 500
TABLES = (("journal_lines", LINE_COLUMNS), ("journal_transactions", HEADER_COLUMNS),
          ("revenue_events", EVENT_COLUMNS), ("open_holds", HOLD_COLUMNS))


class Mark(NamedTuple):
    """Where the domain path started: the journal head."""

    head_id: int


class Rows(NamedTuple):
    by_table: dict[str, list[tuple]]

    def count(self) -> int:
        return sum(len(rows) for rows in self.by_table.values())


def mark(engine: sa.Engine) -> Mark:
    with engine.connect() as connection:
        return Mark(connection.exec_driver_sql("SELECT coalesce(max(id), 0) FROM journal_transactions").scalar())


def capture(engine: sa.Engine, since: Mark, event_ids: list[str]) -> Rows:
    """Rows added after `since`: journal rows above its head, the named events (in the given order),
    the open holds of the new accruals."""
    queries = {
        "journal_lines": f"SELECT {', '.join(LINE_COLUMNS)} FROM journal_lines WHERE transaction_id > :h ORDER BY id",
        "journal_transactions": f"SELECT {', '.join(HEADER_COLUMNS)} FROM journal_transactions WHERE id > :h ORDER BY id",
        "open_holds": f"SELECT {', '.join(HOLD_COLUMNS)} FROM open_holds WHERE accrual_id > :h ORDER BY accrual_id",
    }
    by_table: dict[str, list[tuple]] = {}
    events: dict[str, tuple] = {}
    with engine.connect() as connection:
        for table, sql in queries.items():
            by_table[table] = [tuple(row) for row in connection.execute(sa.text(sql), {"h": since.head_id})]
        for start in range(0, len(event_ids), CAPTURE_CHUNK_IDS):
            chunk = event_ids[start:start + CAPTURE_CHUNK_IDS]
            select = sa.text(f"SELECT {', '.join(EVENT_COLUMNS)} FROM revenue_events WHERE id IN :ids")
            events.update((row[0], tuple(row)) for row in connection.execute(
                select.bindparams(sa.bindparam("ids", expanding=True)), {"ids": chunk}))
    by_table["revenue_events"] = [events[event_id] for event_id in event_ids if event_id in events]
    return Rows(by_table)


def write(url: str, rows: Rows) -> float:
    """Seconds to write the rows in one transaction, through the bare driver (connecting is not timed)."""
    url = normalize_url(url)
    return _write_sqlite(url, rows) if url.startswith("sqlite") else _write_postgres(url, rows)


def _write_sqlite(url: str, rows: Rows) -> float:
    connection = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", *sqlite_pragmas()):
            connection.execute(f"PRAGMA {pragma}")
        started = time.perf_counter()
        connection.execute("BEGIN IMMEDIATE")
        for table, columns in TABLES:
            marks = ", ".join("?" * len(columns))
            connection.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                                   rows.by_table[table])
        connection.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        connection.close()


def _write_postgres(url: str, rows: Rows) -> float:
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as connection:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            for table, columns in TABLES:
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows.by_table[table]:
                        copy.write_row(row)
        connection.commit()
        return time.perf_counter() - started
