"""JSON from outside (request bodies, import files), read strictly: what Python's json module reads
and JSON does not have (`NaN`, `Infinity`, `-Infinity`) is refused, and so is an object that gives
a key twice. JSON leaves the meaning of a repeated key open (Python keeps the last value, other
readers the first), and a revenue event's `id` is its idempotency key: a gateway that logged the
first `id` would name another event than the one posted.
"""

from __future__ import annotations

import json
from typing import Any


class DuplicateKey(ValueError):
    pass


def loads(text: str) -> Any:
    """`json.loads`, strictly; raises ValueError (`json.JSONDecodeError`, `DuplicateKey`, or for a
    non-JSON constant) or RecursionError (nesting too deep for the parser)."""
    return json.loads(text, parse_constant=_not_json, object_pairs_hook=_object)


def _not_json(literal: str) -> Any:
    raise ValueError(f"{literal} is not JSON")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise DuplicateKey(f"an object gives the key {repeated[:80]!r} more than once")
    return found
