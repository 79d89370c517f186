"""Python's cyclic garbage collector, paused around work that makes many objects and keeps them.

The collector runs when allocations outnumber deallocations by its threshold (700 container
objects), and a full collection, which traces every object the process holds, when the objects
that survived the younger ones grow by a quarter of those the oldest generation holds. Work that
makes tens of thousands of objects and keeps them to its end sets off full collections over and
over, and their cost follows the whole process, not the work: a busy partner's closed-month
statement (a tuple a line; about half its time, a full collection every few calls) and a batch of
revenue events (Python's objects of 10,000 events and their postings; 11% of a batch's time), and
`verify` (the chain walk's and re-derivations' objects: 57 full collections on a book of 2M lines,
a tenth of its time). Such work holds few cycles, and what it leaves is collected at the next
collection after it.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def paused() -> Iterator[None]:
    """The collector off meanwhile (also as a decorator). Left as it is when something else turned
    it off; another thread's collections wait too, which only delays them."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
