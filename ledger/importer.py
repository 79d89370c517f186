"""Streaming import of revenue events from NDJSON or CSV, in batches through the bulk path.

Constant memory: the file is read line by line and handed to `revenue.ingest` in batches of
`batch_size` events, each batch in its own committed transaction. Safe to run again on the same
file, even after being killed halfway: committed batches replay (events are keyed by id) and the
rest is applied, so the books equal those of one clean run.

CSV columns: id, type, customer_id, invoice_id, amount, currency, occurred_at.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator, TextIO

from ledger import revenue
from ledger.db import Database
from ledger.errors import DomainError, InvalidInput

CSV_COLUMNS = ("id", "type", "customer_id", "invoice_id", "amount", "currency", "occurred_at")
BATCH_SIZE_DEFAULT = 5000
REFUSAL_EXAMPLES_MAX = 20


@dataclass
class Summary:
    read: int = 0
    statuses: Counter = field(default_factory=Counter)  # posted | unattributed | no_commission
    replayed: int = 0
    refused: int = 0
    refusal_reasons: Counter = field(default_factory=Counter)
    refusal_examples: list[str] = field(default_factory=list)

    def refuse(self, line_number: int, event_id: str | None, error: DomainError) -> None:
        self.refused += 1
        fields = ", ".join(sorted(error.fields)) or "-"
        self.refusal_reasons[f"{error.title} ({fields})"] += 1
        if len(self.refusal_examples) < REFUSAL_EXAMPLES_MAX:
            self.refusal_examples.append(f"line {line_number} event {event_id or '?'}: {error.detail}")


def _ndjson(stream: TextIO) -> Iterator[tuple[int, object]]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            yield number, InvalidInput(f"line {number}: malformed JSON ({error.msg})", {"_line": [error.msg]})


def _csv(stream: TextIO) -> Iterator[tuple[int, object]]:
    reader = csv.DictReader(stream)
    missing = set(CSV_COLUMNS) - set(reader.fieldnames or ())
    if missing:
        raise InvalidInput(f"CSV header lacks {', '.join(sorted(missing))}", {"header": ["missing columns"]})
    for row in reader:
        data = {name: row[name] for name in CSV_COLUMNS if name not in ("amount", "currency")}
        data["amount"] = {"amount": row["amount"], "currency": row["currency"]}
        yield reader.line_num, data


def records(stream: TextIO, file_format: str) -> Iterator[tuple[int, object]]:
    assert file_format in ("ndjson", "csv"), file_format
    return _csv(stream) if file_format == "csv" else _ndjson(stream)


def detect_format(path: str, head: str) -> str:
    if path.endswith(".csv"):
        return "csv"
    if path.endswith((".ndjson", ".jsonl", ".json")):
        return "ndjson"
    return "ndjson" if head.lstrip().startswith("{") else "csv"


def import_stream(database: Database, stream: TextIO, file_format: str, *, batch_size: int = BATCH_SIZE_DEFAULT,
                  progress: Callable[[int], None] = lambda n: None) -> Summary:
    summary = Summary()
    pending: list[tuple[int, revenue.RevenueEvent]] = []
    for number, data in records(stream, file_format):
        summary.read += 1
        try:
            if isinstance(data, DomainError):
                raise data
            pending.append((number, revenue.parse_event(data)))
        except DomainError as error:
            summary.refuse(number, data.get("id") if isinstance(data, dict) else None, error)
        if len(pending) >= batch_size:
            _apply(database, pending, summary)
            progress(len(pending))
            pending = []
    if pending:
        _apply(database, pending, summary)
        progress(len(pending))
    return summary


def _apply(database: Database, pending: list[tuple[int, revenue.RevenueEvent]], summary: Summary) -> None:
    with database.transaction() as session:
        results = revenue.ingest(session, [event for _, event in pending])
    for (number, event), result in zip(pending, results):
        if isinstance(result, revenue.Refusal):
            summary.refuse(number, event.id, result.error)
        elif result.replayed:
            summary.replayed += 1
        else:
            summary.statuses[result.status] += 1


def import_text(database: Database, content: str, file_format: str, **kwargs) -> Summary:
    return import_stream(database, io.StringIO(content), file_format, **kwargs)
