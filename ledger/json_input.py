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


class NotJson(ValueError):
    pass


def loads(text: str) -> Any:
    """`json.loads`, strictly; raises ValueError (`json.JSONDecodeError`, `DuplicateKey`, `NotJson`
    for a non-JSON constant, or for an integer of more digits than Python converts) or
    RecursionError (nesting too deep for the parser): `reason(error)` says which."""
    if text.startswith("\ufeff"):  # as json.loads refuses it, with its message (see `reason`)
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _DECODER.decode(text)


def reason(error: ValueError | RecursionError) -> str:
    """What `loads` refused, said to whoever sent the text, in its terms rather than Python's."""
    if isinstance(error, json.JSONDecodeError) and error.msg.startswith("Unexpected UTF-8 BOM"):
        # Python's message advises its own codec ("decode using utf-8-sig"), which the sender cannot use.
        return "it starts with a byte order mark (U+FEFF), which JSON sent over a network may not have"
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno}, column {error.colno}"
    if isinstance(error, RecursionError):
        return "arrays or objects nested too deeply to read"
    if isinstance(error, (DuplicateKey, NotJson)):
        return str(error)
    # Python's limit on the digits of an integer it converts (sys.get_int_max_str_digits()).
    return "a number with more digits than can be read"


def _not_json(literal: str) -> Any:
    raise NotJson(f"{literal} is not JSON")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise DuplicateKey(f"an object gives the key {repeated[:80]!r} more than once")
    return found


# One decoder for every call: `json.loads` with these hooks builds a new one (and its scanner) each
# time, about 10 us, two thirds of what parsing a revenue event's body takes (each POST, each line
# of an import). A decoder keeps no state between calls (its scanner's memo of keys is emptied
# after each), so threads may share it.
_DECODER = json.JSONDecoder(parse_constant=_not_json, object_pairs_hook=_object)
