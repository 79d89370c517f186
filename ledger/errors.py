"""The domain's typed errors, mapped once to HTTP statuses in `api/` and to exit codes in `cli/`.

Programmer errors are `assert`s; user errors are these exceptions; per-item outcomes of a batch are
values (see `journal.PostOutcome`). Each error carries a human message and, where one input field
is to blame, a mapping of field name to messages so that the API can render a 422 naming it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator


class DomainError(Exception):
    """Base of every error a user can cause. `status` is the HTTP status the API maps it to."""

    status = 400
    title = "Bad request"

    def __init__(self, detail: str, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields or {}


class InvalidInput(DomainError):
    """Input that is well formed but breaks a rule: a 422 naming the offending fields."""

    status = 422
    title = "Unprocessable entity"


class OutOfRange(InvalidInput):
    """A posting would take an account's running total past what the database keeps (a 64-bit
    integer of minor units). The database refuses it when the batch is written, so it fails the
    whole batch: `revenue.ingest_apart` then applies it in parts, down to that event alone."""


class Unfinished(DomainError):
    """Work that one request may not see through in its time (a catch-up of matured holds before a
    payout run or a close) stopped between two of its transactions: what those committed stays, and
    the same request, retried, goes on from there. The API answers 503 with `Retry-After`; the command
    line and the jobs give their work no such budget."""

    status = 503
    title = "Unfinished"


class NotFound(DomainError):
    status = 404
    title = "Not found"


class Conflict(DomainError):
    """The request clashes with what the books already hold (a replay with other content, a second
    reversal, a closed period, ...)."""

    status = 409
    title = "Conflict"


class BooksCannotTake(Conflict):
    """A posting of work that sent no amount would take an account's running total past its range
    (`totals_not_asked`)."""


class IdempotencyConflict(Conflict):
    """The same idempotency key arrived with different content; `fields` names what differs."""

    title = "Idempotency key reused with different content"


@contextmanager
def totals_not_asked() -> Iterator[None]:
    """Around the work of a request or command that sends no amount (a release of holds, a payout
    run, a payout's settlement or failure, a reversal, a close): a posting that would take an
    account's running total past its range (`OutOfRange`, a 422 naming `amount` where the request
    sent the amount) is a conflict with the books it would post to, a 409, not a 422 naming a field
    the request does not have."""
    try:
        yield
    except OutOfRange as error:
        said = error.fields.get("amount", [error.detail])[0]
        raise BooksCannotTake(f"the books cannot take this posting: its amount {said}") from error


def invalid(field: str, message: str) -> InvalidInput:
    """An `InvalidInput` blaming one field: `raise invalid("amount", "too many decimals")`."""
    return InvalidInput(f"{field}: {message}", {field: [message]})


def printable(text: str) -> str:
    """The text with each character that does not print escaped (`\\r`, `\\x1b`, `\\udc80`): an id
    from an import's file, a revocation's reason in `revshare keys list`, a request's path in the
    log, each shown, never run by the terminal, nor a line break of it taken for a line of its own."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def header_shown(text: str) -> str:
    """What of a header line the server refused its log and its answer may name: a header's name as
    the server names one whose value it refuses (upper case), or the server's own words; anything
    else (a line without a colon, a key sent as a line of its own or split over two) is not shown,
    since it may hold a credential."""
    return text if _SHOWN_HEADER.fullmatch(text) else "(a malformed header line, not shown: it may hold a credential)"


# Upper case: gunicorn names a header whose value it refuses by its name upper-cased, while a random
# key's tail (base64url) is all capitals, digits and hyphens by chance alone of (38/64)^n for n characters.
_SHOWN_HEADER = re.compile(r"[A-Z0-9-]{1,40}|bare LF as line terminator")
