"""Stored outcomes of idempotent requests, keyed by (API key, idempotency key).

A record holds what was asked (method, path, the canonical JSON body and a SHA-256 over all three)
and what was answered (status and body). It is written in the same database transaction as the
request's effect, so a record exists exactly when the effect committed.

Concurrent duplicates apply once:
- `claim()` serializes requests carrying the same key. On PostgreSQL it takes a transaction-scoped
  advisory lock in a two-integer key space (which never overlaps the journal's one-bigint lock);
  on SQLite the writer's `BEGIN IMMEDIATE` already holds the database write lock.
- `record()` inserts with ON CONFLICT DO NOTHING and reports whether it won. A loser (possible only
  if a caller skipped `claim()`) must roll its effect back and answer with the winner's record.

Records are never updated. Bodies compare by their top-level fields, so a conflict can name them.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, NamedTuple

from sqlalchemy import select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ledger.db import is_postgres, wait_by_deadline
from ledger.schema import idempotency_records

KEY_LENGTH_MAX = 200
# First half of the two-integer advisory lock key: "idem".
_LOCK_CLASS = 0x6964_656D


class StoredRequest(NamedTuple):
    method: str
    path: str
    request_hash: str
    request_body: str
    status_code: int
    response_body: str


def canonical_json(value: Any) -> str:
    """One spelling per JSON value: sorted keys, no spaces, ASCII only (so that any body, even one
    holding an unpaired surrogate, can be stored)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def request_hash(method: str, path: str, canonical_body: str) -> str:
    return hashlib.sha256(f"{method}\n{path}\n{canonical_body}".encode()).hexdigest()


def claim(session: Session, api_key_id: str, key: str) -> None:
    """Hold off other requests with the same key until this transaction ends."""
    if is_postgres(session):
        digest = hashlib.sha256(f"{api_key_id}\0{key}".encode()).digest()
        slot = int.from_bytes(digest[:4], "big", signed=True)
        wait_by_deadline(session)
        session.execute(text("SELECT pg_advisory_xact_lock(:class_id, :slot)"), {"class_id": _LOCK_CLASS, "slot": slot})


def find(session: Session, api_key_id: str, key: str) -> StoredRequest | None:
    r = idempotency_records.c
    row = session.execute(select(r.method, r.path, r.request_hash, r.request_body, r.status_code, r.response_body)
                          .where(r.api_key_id == api_key_id, r.key == key)).first()
    return None if row is None else StoredRequest(*row)


def record(session: Session, api_key_id: str, key: str, stored: StoredRequest) -> bool:
    """Insert the record; False when another transaction already committed one for this key."""
    dialect_insert = postgresql.insert if is_postgres(session) else sqlite.insert
    statement = (dialect_insert(idempotency_records)
                 .values(api_key_id=api_key_id, key=key, created_at_us=time.time_ns() // 1000, **stored._asdict())
                 .on_conflict_do_nothing(index_elements=["api_key_id", "key"])
                 .returning(idempotency_records.c.key))
    return session.execute(statement).first() is not None


def differing_fields(stored_body: str, body: str) -> list[str]:
    """Top-level fields whose values differ between two canonical JSON bodies (`body` when either
    is not a JSON object)."""
    before, after = json.loads(stored_body), json.loads(body)
    if not isinstance(before, dict) or not isinstance(after, dict):
        return [] if stored_body == body else ["body"]
    # Canonical spellings, not Python equality: 1, 1.0 and true are different requests.
    return sorted(name for name in before.keys() | after.keys()
                  if name not in before or name not in after
                  or canonical_json(before[name]) != canonical_json(after[name]))
