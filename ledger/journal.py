"""The journal: immutable, hash-chained, double-entry transactions.

A `Draft` is a transaction not yet posted: a kind, an effective instant, two or more `Line`s and
links to its source. `post()` checks each draft (two or more lines, positive integer amounts,
debits equal credits per currency), applies idempotency, numbers the new transactions without
gaps, chains their hashes and writes them with a few multi-row statements. Nothing here is ever
updated or deleted; a correction is a new transaction (`reverse()`).

Hashes. `request_hash` is SHA-256 over the canonical JSON of what was asked for (the draft); it is
what idempotency compares. The chain hash of transaction n is SHA-256 over transaction n-1's hash,
n, the recorded and effective instants, the request hash and the transaction's `salt`, so it
covers every stored field. `verify.py` recomputes both from the stored rows.

The salt (16 random bytes, hex; migration 0028) is stored and never shown over the API. A partner
reads the hashes of its own transactions, and its neighbours in the chain are often another
partner's postings whose content it can nearly name (a parent's override on the same invoice, a
sub-partner's accrual): without the salt, it could try candidate amounts and plan versions against
the two hashes around such a posting until one matched, and so learn another partner's commission.
With it, no guess can be checked. Transactions written before migration 0028 have none (NULL); the
chain hash of those is as it was.

The revenue event. An accrual, CPA, override or clawback posted from a revenue event has that
event's request hash (`revenue.request_hash`: its id, type, customer, invoice, amount and instant)
as the last element of its canonical JSON (`Draft.event_hash`; not a stored column). So the chain
covers the event too: an event rewritten behind the triggers, with its own request hash recomputed
to match (that hash has no secret), no longer matches the transactions posted from it, which a
recorded chain head pins. Other transactions naming an event (a hold's release, a reversal) and
those written before this rule leave it out; `verify.py` recomputes a transaction's request hash
with its stored event's hash and, failing that, without.

Closed periods. A draft whose effective instant lies in a closed period is posted at the start of
the first open period, keeping the requested instant as `original_effective_at_us`; idempotency
compares the requested content, so a retry after a close still replays.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import secrets
from collections import defaultdict
from json.encoder import encode_basestring as _encode_string
from typing import Iterable, NamedTuple, Sequence

from sqlalchemy import select
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import Session

from ledger import accounts as chart
from ledger.db import (after_commit, driver_rows, in_lists, insert_all, is_postgres, lock_journal, locked,
                       transaction_info)
from ledger.errors import Conflict, IdempotencyConflict, InvalidInput, NotFound, invalid
from ledger.instants import format_instant, now_us
from ledger.money import currency_exponent
from ledger.schema import (
    GENESIS_HASH,
    TRANSACTION_KINDS,
    accounts,
    journal_lines,
    journal_transactions,
)

DEBIT, CREDIT = "D", "C"
LINES_PER_TRANSACTION_MAX = 100
POST_BATCH_MAX = 100_000
ACCOUNT_SPECS_CACHED_MAX = 65_536
SALT_BYTES = 16  # per transaction, in its chain hash (see the module's docstring)
# How far a transaction may be dated after the instant it is recorded, whatever its kind: the
# clocks of billing, of the app servers and of the database may disagree a little (an event is
# dated by billing, `ledger.revenue`). The database holds the bound (migrations 0017, 0021, 0029).
CLOCK_SKEW_US = 5 * 60 * 1_000_000


class Line(NamedTuple):
    account: str
    currency: str
    side: str  # DEBIT or CREDIT
    amount_minor: int


class Draft(NamedTuple):
    kind: str
    effective_at_us: int
    lines: tuple[Line, ...]
    idempotency_key: str
    partner_id: str | None = None
    customer_id: str | None = None
    invoice_id: str | None = None
    event_id: str | None = None
    plan_version_id: int | None = None
    accrual_id: int | None = None
    reverses_id: int | None = None
    matures_at_us: int | None = None
    memo: str | None = None
    event_hash: str | None = None  # in the request hash when set; never stored (see the module's docstring)


# The stored draft fields a replay must repeat exactly, in canonical order (`event_hash` follows them).
_LINK_FIELDS = Draft._fields[4:-1]


class Posted(NamedTuple):
    id: int
    replayed: bool


def transfer(kind: str, debit_account: str, credit_account: str, currency: str, amount_minor: int,
             *, effective_at_us: int, idempotency_key: str, **links) -> Draft:
    """The common two-line draft: debit one account, credit another, same amount and currency."""
    lines = (Line(debit_account, currency, DEBIT, amount_minor), Line(credit_account, currency, CREDIT, amount_minor))
    return Draft(kind, effective_at_us, lines, idempotency_key, **links)


def check_draft(draft: Draft) -> None:
    """Raise InvalidInput unless the draft is a well-formed balanced transaction."""
    if draft.kind not in TRANSACTION_KINDS:
        raise InvalidInput(f"kind: unknown transaction kind {draft.kind!r}", {"kind": ["unknown kind"]})
    if not 2 <= len(draft.lines) <= LINES_PER_TRANSACTION_MAX:
        raise InvalidInput("lines: a transaction has 2 to 100 lines", {"lines": ["a transaction has 2 to 100 lines"]})
    if not draft.idempotency_key or len(draft.idempotency_key) > 200:
        raise InvalidInput("idempotency_key: 1 to 200 characters", {"idempotency_key": ["1 to 200 characters"]})
    net: dict[str, int] = defaultdict(int)
    for account, currency, side, amount in draft.lines:
        if type(amount) is not int or amount <= 0:
            raise InvalidInput("lines: every amount is a positive integer of minor units",
                               {"lines": ["every amount is a positive integer of minor units"]})
        assert side in (DEBIT, CREDIT), side
        _account_spec(account)
        currency_exponent(currency)
        net[currency] += amount if side == DEBIT else -amount
    if any(net.values()):  # sorted only to name them in the error: every posting checks its draft
        unbalanced = sorted(currency for currency, total in net.items() if total != 0)
        message = f"debits do not equal credits in {', '.join(unbalanced)}"
        raise InvalidInput(f"lines: {message}", {"lines": [message]})
    if draft.kind in OF_AN_EVENT and None in (draft.event_id, draft.invoice_id, draft.customer_id):
        missing = next(field for field in ("event_id", "invoice_id", "customer_id") if getattr(draft, field) is None)
        message = "a commission or clawback names its revenue event, invoice and customer"
        raise InvalidInput(f"{missing}: {message}", {missing: [message]})
    placed = _PLACED.get(draft.kind)
    if placed is not None:
        expense, partner_account, message = placed
        credited = None if draft.partner_id is None else partner_account(draft.partner_id)
        misplaced = credited is None or any((line.account, line.side) not in ((expense, DEBIT), (credited, CREDIT))
                                            for line in draft.lines)
        if draft.kind == "writeoff":  # in one currency
            misplaced = misplaced or len(net) > 1
        else:  # one credit (balanced, it has one), the piece its release and clawbacks are posted against
            misplaced = misplaced or sum(line.side == CREDIT for line in draft.lines) > 1
        if misplaced:
            raise InvalidInput(f"lines: {message}", {"lines": [message]})


# The kinds posted only from a revenue event, naming it, its invoice and its customer (a commission
# or clawback with none could not be reached by a refund, nor compared with anything, and was paid;
# migration 0064 holds the same).
OF_AN_EVENT = ("accrual", "cpa", "override", "clawback")


# The accounts of a commission and of a write-off: the expense each line debits, or the account of
# the partner the transaction names that each other line credits (migrations 0047 and 0048 hold the same).
_PLACED = {**{kind: (chart.EXPENSE_COMMISSION, chart.pending, "an accrual, CPA or override moves money from "
                     "expense:commission to the pending account of the partner it names, in one credit")
              for kind in ("accrual", "cpa", "override")},
           "writeoff": (chart.EXPENSE_WRITEOFF, chart.available, "a write-off moves money from "
                        "expense:commission:writeoff to the available account of the partner it names, in one "
                        "currency")}


# Account names are checked against the chart on every line of every draft; the answer for a name
# never changes, so it is remembered (a name outside the chart raises, and raising is not cached).
_account_spec = functools.lru_cache(maxsize=ACCOUNT_SPECS_CACHED_MAX)(chart.spec)


def _canonical(draft: Draft) -> list:
    event_hash = [] if draft.event_hash is None else [draft.event_hash]
    return [draft.kind, draft.effective_at_us, *(getattr(draft, f) for f in _LINK_FIELDS),
            [list(line) for line in draft.lines], draft.idempotency_key, *event_hash]


def canonical_json(draft: Draft) -> str:
    """`json.dumps(_canonical(draft), separators=(",", ":"), ensure_ascii=False)`, byte for byte.

    The hot path writes the JSON itself with json's own string encoder, in half the time of
    `json.dumps`; a value that is not exactly None, int or str sends the draft to `json.dumps`.
    `tests/unit/test_canonical_json.py` checks that the two agree on arbitrary drafts."""
    parts = []
    for value in (draft.kind, draft.effective_at_us, *draft[4:-1]):
        value_type = type(value)
        if value_type is str:
            parts.append(_encode_string(value))
        elif value_type is int:
            parts.append(repr(value))
        elif value is None:
            parts.append("null")
        else:
            return _canonical_json_slow(draft)
    lines = []
    for account, currency, side, amount in draft.lines:
        if type(account) is not str or type(currency) is not str or type(side) is not str or type(amount) is not int:
            return _canonical_json_slow(draft)
        lines.append(f"[{_encode_string(account)},{_encode_string(currency)},{_encode_string(side)},{amount!r}]")
    if type(draft.idempotency_key) is not str:
        return _canonical_json_slow(draft)
    if draft.event_hash is None:
        return f"[{','.join(parts)},[{','.join(lines)}],{_encode_string(draft.idempotency_key)}]"
    if type(draft.event_hash) is not str:
        return _canonical_json_slow(draft)
    return (f"[{','.join(parts)},[{','.join(lines)}],{_encode_string(draft.idempotency_key)},"
            f"{_encode_string(draft.event_hash)}]")


def _canonical_json_slow(draft: Draft) -> str:
    return json.dumps(_canonical(draft), separators=(",", ":"), ensure_ascii=False)


def request_hash(draft: Draft) -> str:
    return hashlib.sha256(canonical_json(draft).encode()).hexdigest()


def chain_hash(prev_hash: str, transaction_id: int, recorded_at_us: int, effective_at_us: int,
               original_effective_at_us: int | None, request_hash_hex: str, salt: str | None) -> str:
    original = "" if original_effective_at_us is None else original_effective_at_us
    content = f"{prev_hash}:{transaction_id}:{recorded_at_us}:{effective_at_us}:{original}:{request_hash_hex}"
    if salt is not None:  # none before migration 0028
        content += f":{salt}"
    return hashlib.sha256(content.encode()).hexdigest()


def new_salt() -> str:
    return secrets.token_hex(SALT_BYTES)


def chain_head(session: Session) -> tuple[int, str]:
    """(id, hash) of the last transaction, or (0, genesis) for an empty journal."""
    row = session.execute(select(journal_transactions.c.id, journal_transactions.c.hash)
                          .order_by(journal_transactions.c.id.desc()).limit(1)).first()
    return (row.id, row.hash) if row else (0, GENESIS_HASH)


# The chain head and the closed boundary, read in one round trip by two statements: every posting
# starts with them. One statement of three subqueries cost PostgreSQL twice the server time of these
# two, most of it planning (192 against 94 us a call; docs/performance.md).
_BATCH_START = (("SELECT id, hash FROM journal_transactions ORDER BY id DESC LIMIT 1", ()),
                ("SELECT max(ends_at_us) FROM period_closes", ()))


def _batch_start(head_rows: list[tuple], boundary_rows: list[tuple]) -> tuple:
    """(head id, head hash, closed boundary) from the rows of `_BATCH_START`, Nones for none."""
    [(boundary_us,)] = boundary_rows
    return (*(head_rows[0] if head_rows else (None, None)), boundary_us)


def open_batch(session: Session, reads: Sequence[tuple[str, Sequence]] = (), *, recorded_at_us: int | None = None
               ) -> tuple["Batch", list[list[tuple]]]:
    """A Batch, and the rows of `reads` (statements for `db.driver_results`), read under the journal
    lock together with the chain head: on PostgreSQL, in one round trip with taking the lock."""
    head, boundary, *results = locked(session, [*_BATCH_START, *reads])
    return Batch(session, recorded_at_us=recorded_at_us, start=_batch_start(head, boundary)), results


class DatedAhead(Conflict):
    """A new posting dated more than `CLOCK_SKEW_US` after its batch's recording, which the database
    refuses (migration 0029). A caller's own instant is refused before it is drafted (422 naming the
    field); only an instant taken from the books can get here: a reversal's (its original's), a
    resolution's (its payout's), a refund's completion (the invoice's latest event), set by a server
    whose clock was ahead of this one's, or by this one before its clock stepped back. The next
    minutes cure it. Raised by `Batch.add` before anything of the draft is kept, it fails the whole
    unit of work: what was drafted before it in the batch is never written."""

    def __init__(self, draft: Draft, recorded_at_us: int) -> None:
        super().__init__(f"a {draft.kind} dated {format_instant(draft.effective_at_us)} would be more than five "
                         f"minutes ahead of this server's clock, {format_instant(recorded_at_us)}, which the journal "
                         "refuses: the instant it follows was set by a clock ahead of this one; retry from "
                         f"{format_instant(draft.effective_at_us - CLOCK_SKEW_US)}")


class Batch:
    """A run of postings under the journal lock, written with a few multi-row statements at `flush()`.

    `add()` numbers each new transaction at once, so a later draft in the same batch can link to an
    earlier one (a clawback to an accrual posted a moment before). Idempotency is checked against
    keys the caller `preload()`s plus keys added to this batch; a key that is neither but already
    stored is refused by the database's unique constraint at `flush()`, failing the whole batch.
    Callers whose keys derive from an id proven new (a revenue event not seen before) skip preload.
    """

    def __init__(self, session: Session, *, recorded_at_us: int | None = None, start: tuple | None = None) -> None:
        """`start` is (head id, head hash, closed boundary) as `_batch_start` makes it from rows read
        under the journal lock (`open_batch`); without it the lock is taken and the rows read here."""
        if start is None:
            start = _batch_start(*locked(session, list(_BATCH_START)))
        head_id, head_hash, self.boundary_us = start
        self.head_id, self.head_hash = (0, GENESIS_HASH) if head_id is None else (head_id, head_hash)
        self.session = session
        self.recorded_at_us = now_us() if recorded_at_us is None else recorded_at_us
        self._known: dict[str, tuple[int, str]] = {}
        self._drafts: list[Draft] = []
        self._headers: list[tuple] = []

    def preload(self, keys: Iterable[str]) -> None:
        missing = [key for key in keys if key not in self._known]
        self._known.update(_existing_by_key(self.session, missing))

    def add(self, draft: Draft) -> Posted:
        check_draft(draft)
        hash_hex = request_hash(draft)
        existing = self._known.get(draft.idempotency_key)
        if existing is not None:
            if existing[1] != hash_hex:
                raise _conflict(self.session, draft, existing[0], self._drafts, self._headers)
            return Posted(existing[0], True)
        if draft.effective_at_us > self.recorded_at_us + CLOCK_SKEW_US:
            raise DatedAhead(draft, self.recorded_at_us)
        self.head_id += 1
        posted_at = self.posting_instant(draft.effective_at_us)
        original = None if posted_at == draft.effective_at_us else draft.effective_at_us
        salt = new_salt()
        prev_hash, self.head_hash = self.head_hash, chain_hash(
            self.head_hash, self.head_id, self.recorded_at_us, posted_at, original, hash_hex, salt)
        self._known[draft.idempotency_key] = (self.head_id, hash_hex)
        self._headers.append(_header_row(draft, self.head_id, self.recorded_at_us, posted_at, original, hash_hex,
                                         prev_hash, self.head_hash, salt))
        self._drafts.append(draft)
        return Posted(self.head_id, False)

    def ahead(self, at_us: int, *, own_instant: bool) -> bool:
        """Whether `at_us` is in the future of this batch's recording. An instant the service read from
        its own clock (a job's, or now when none was asked for) is ahead only past `CLOCK_SKEW_US`, the
        database's bound: the clock may have been stepped back since it was read (an NTP step), and
        this batch's later read is then the earlier instant. An instant asked for may not be ahead."""
        return at_us > self.recorded_at_us + (CLOCK_SKEW_US if own_instant else 0)

    def posting_instant(self, effective_at_us: int) -> int:
        """The instant a draft effective at `effective_at_us` is posted at: its own, or the start of
        the first open period when it lies in a closed one."""
        if self.boundary_us is not None and effective_at_us < self.boundary_us:
            return self.boundary_us
        return effective_at_us

    def flush(self) -> None:
        insert_all(self.session, self.take_writes())
        follow_statistics(self.session, self.head_id)

    def take_writes(self) -> list[tuple]:
        """The rows added since the last flush, as `db.insert_all` writes them: lines first, then
        the headers that seal them (the database checks balance at the seal). The caller writes them."""
        drafts, headers = self._drafts, self._headers
        self._drafts, self._headers = [], []
        if not headers:
            return []
        ids = chart.account_ids(self.session, {line.account for draft in drafts for line in draft.lines})
        lines = [(header[0], ids[line.account], line.currency, line.side, line.amount_minor, header[2])
                 for draft, header in zip(drafts, headers) for line in draft.lines]
        return [(journal_lines, _LINE_COLUMNS, lines), (journal_transactions, _HEADER_COLUMNS, headers)]


# PostgreSQL plans a statement, and each of its own foreign-key checks, for the table sizes its
# statistics say, and a connection keeps the plan while they stand. A batch grows the journal in its
# own transaction, which no statistics see: on a journal they say is empty or small, a batch of
# thousands of events was planned for a few rows and read the whole growing journal at each check
# (27 s against 7 s for 10,000 events). After a flush that leaves the journal at least twice the
# size the statistics were last heard to count, and this many transactions more, the database is
# asked to take them anew (migration 0050), which makes the connection's plans anew. What was
# heard is kept for the transaction, and for the connection once it commits: a batch rolled back
# was counted too (PostgreSQL keeps a table's count through a rollback, until a vacuum corrects
# it), and a connection that kept that count would not ask again while the journal grew up to it.
STATISTICS_GROWTH_MIN = 1000
_COUNTED = "journal_transactions_counted"  # what the statistics were heard to count
_log = logging.getLogger(__name__)


def follow_statistics(session: Session, journal_size: int) -> None:
    """Have the statistics of the tables a batch grows taken anew when the journal, `journal_size`
    transactions with this batch's, has outgrown them; a round trip only then (PostgreSQL)."""
    if not is_postgres(session):
        return
    kept, heard = session.connection().info, transaction_info(session)
    if journal_size < 2 * heard.get(_COUNTED, kept.get(_COUNTED, 0)) + STATISTICS_GROWTH_MIN:
        return
    try:
        with session.begin_nested():
            counted = heard[_COUNTED] = driver_rows(session, "SELECT journal_statistics_follow()")[0][0]
    except ProgrammingError as error:  # a database behind revision 0050, or its grant revoked: the batch
        # goes on, planned as before, and this connection asks no more (until the service restarts)
        kept[_COUNTED] = math.inf
        _log.warning("the journal's statistics are not followed on this connection: %s", error.orig)
        return
    after_commit(session, lambda: kept.__setitem__(_COUNTED, counted))


def post(session: Session, drafts: Sequence[Draft], *, recorded_at_us: int | None = None) -> list[Posted]:
    """Post drafts atomically with the caller's transaction; return one `Posted` per draft.

    A draft whose idempotency key is already in the journal (or earlier in `drafts`) with the same
    content is a replay and returns the existing id; with other content it is an
    IdempotencyConflict naming the differing fields.
    """
    assert len(drafts) <= POST_BATCH_MAX, len(drafts)
    batch = Batch(session, recorded_at_us=recorded_at_us)
    batch.preload(draft.idempotency_key for draft in drafts)
    results = [batch.add(draft) for draft in drafts]
    batch.flush()
    return results


_HEADER_COLUMNS = ("id", "kind", "effective_at_us", "original_effective_at_us", "recorded_at_us", "idempotency_key",
                   "request_hash", *_LINK_FIELDS, "prev_hash", "hash", "salt")
_LINE_COLUMNS = ("transaction_id", "account_id", "currency", "side", "amount_minor", "effective_at_us")


def _header_row(draft: Draft, transaction_id: int, recorded_at_us: int, posted_at_us: int, original_us: int | None,
                hash_hex: str, prev_hash: str, chained: str, salt: str) -> tuple:
    return (transaction_id, draft.kind, posted_at_us, original_us, recorded_at_us, draft.idempotency_key, hash_hex,
            *draft[4:-1], prev_hash, chained, salt)


def _existing_by_key(session: Session, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
    found: dict[str, tuple[int, str]] = {}
    for condition, params in in_lists(session, "idempotency_key", sorted(set(keys))):
        rows = driver_rows(session, "SELECT idempotency_key, id, request_hash FROM journal_transactions"
                                    f" WHERE {condition}", params)
        found.update((key, (transaction_id, hash_hex)) for key, transaction_id, hash_hex in rows)
    return found


def _conflict(session: Session, draft: Draft, existing_id: int, pending_drafts: list[Draft],
              pending_headers: list[tuple]) -> IdempotencyConflict:
    earlier = next((d for d, h in zip(pending_drafts, pending_headers) if h[0] == existing_id), None)
    stored = earlier if earlier is not None else load_draft(session, existing_id)
    fields = differing_fields(draft, stored)
    message = f"idempotency key {draft.idempotency_key!r} was used for transaction {existing_id} with other content"
    return IdempotencyConflict(message, {name: ["differs from the original request"] for name in fields})


def differing_fields(draft: Draft, stored: Draft) -> list[str]:
    return [name for name in Draft._fields[:-1] if getattr(draft, name) != getattr(stored, name)]  # not event_hash


def load_draft(session: Session, transaction_id: int) -> Draft:
    """The draft a stored transaction was posted from (its requested instant, not a moved one),
    without `event_hash`, which is not stored: its request hash may differ from the stored one."""
    return load_stored(session, transaction_id)[0]


def load_stored(session: Session, transaction_id: int) -> tuple[Draft, int]:
    """`load_draft`, and the instant the transaction was posted at (moved out of a closed period)."""
    header = session.execute(select(journal_transactions).where(journal_transactions.c.id == transaction_id)).first()
    if header is None:
        raise NotFound(f"transaction {transaction_id} does not exist")
    return draft_of(header, load_lines(session, [transaction_id])[transaction_id]), header.effective_at_us


def draft_of(header, lines: tuple[Line, ...]) -> Draft:
    requested = header.original_effective_at_us
    effective = header.effective_at_us if requested is None else requested
    return Draft(header.kind, effective, lines, header.idempotency_key,
                 *(getattr(header, field) for field in _LINK_FIELDS))


def load_lines(session: Session, transaction_ids: Sequence[int]) -> dict[int, tuple[Line, ...]]:
    lines: dict[int, list[Line]] = defaultdict(list)
    j = journal_lines.c
    for start in range(0, len(transaction_ids), 500):
        rows = session.execute(
            select(j.transaction_id, accounts.c.name, j.currency, j.side, j.amount_minor)
            .join(accounts, accounts.c.id == j.account_id)
            .where(j.transaction_id.in_(transaction_ids[start:start + 500]))
            .order_by(j.transaction_id, j.id))
        for row in rows:
            lines[row.transaction_id].append(Line(row.name, row.currency, row.side, row.amount_minor))
    return {key: tuple(value) for key, value in lines.items()}


def reversed_by(session: Session, transaction_id: int) -> int | None:
    t = journal_transactions.c
    return session.execute(select(t.id).where(t.reverses_id == transaction_id)).scalar()


def reversal_draft(session: Session, transaction_id: int, *, reason: str, effective_at_us: int | None = None,
                   idempotency_key: str | None = None, stored: tuple[Draft, int] | None = None) -> Draft:
    """The mirror of a transaction, linked to it. Refuses a second reversal and the reversal of a
    reversal (post the original again instead, so that every transaction is reversed at most once
    and a reversal chain never has to be unwound). `stored`: the transaction's `load_stored`, when
    the caller read it already."""
    original, posted_at = load_stored(session, transaction_id) if stored is None else stored
    if original.kind == "reversal":
        raise Conflict(f"transaction {transaction_id} is itself a reversal and cannot be reversed")
    key = idempotency_key or f"reversal:{transaction_id}"
    existing = reversed_by(session, transaction_id)
    if existing is not None:
        stored_key = session.execute(select(journal_transactions.c.idempotency_key)
                                     .where(journal_transactions.c.id == existing)).scalar_one()
        if stored_key != key:
            raise Conflict(f"transaction {transaction_id} was already reversed by transaction {existing}")
    if effective_at_us is not None:
        _check_reversal_instant(transaction_id, posted_at, effective_at_us)
    return _mirror(original, transaction_id, posted_at if effective_at_us is None else effective_at_us, reason, key)


def reversal_sources(session: Session, transaction_ids: Sequence[int]) -> dict[int, tuple[Draft, int]]:
    """{id: (the draft it was posted from, its posted instant)} of stored transactions, in two
    statements for every 500: what `standing_reversal_draft` mirrors."""
    headers = {header.id: header for start in range(0, len(transaction_ids), 500)
               for header in session.execute(select(journal_transactions).where(
                   journal_transactions.c.id.in_(transaction_ids[start:start + 500])))}
    lines = load_lines(session, list(transaction_ids))
    return {transaction_id: (draft_of(header, lines[transaction_id]), header.effective_at_us)
            for transaction_id, header in headers.items()}


def standing_reversal_draft(source: tuple[Draft, int], transaction_id: int, *, reason: str, key: str) -> Draft:
    """`reversal_draft` of a transaction the caller knows stands (a replay of its invoice shows no
    reversal of it, and it is no reversal), at its original's instant, from its `reversal_sources`."""
    original, posted_at = source
    assert original.kind != "reversal", transaction_id
    return _mirror(original, transaction_id, posted_at, reason, key)


def _mirror(original: Draft, transaction_id: int, effective_at_us: int, reason: str, key: str) -> Draft:
    mirrored = tuple(line._replace(side=CREDIT if line.side == DEBIT else DEBIT) for line in original.lines)
    return original._replace(kind="reversal", lines=mirrored, idempotency_key=key, reverses_id=transaction_id,
                             effective_at_us=effective_at_us, matures_at_us=None, memo=reason)


def _check_reversal_instant(transaction_id: int, posted_at_us: int, effective_at_us: int) -> None:
    """A reversal counts from its original's instant on, never before it (its mirror would stand
    alone in between: a balance below zero, a liability never owed; the database holds this too,
    migration 0017), and a requested instant has passed (a reversal dated in the future would leave
    the original standing in every report until then)."""
    if effective_at_us < posted_at_us:
        raise invalid("effective_at", f"{format_instant(effective_at_us)} is before transaction {transaction_id}, "
                                      f"which it reverses, effective at {format_instant(posted_at_us)}")
    if effective_at_us > now_us():
        raise invalid("effective_at", f"{format_instant(effective_at_us)} is in the future")


def reverse(session: Session, transaction_id: int, *, reason: str, effective_at_us: int | None = None,
            idempotency_key: str | None = None, recorded_at_us: int | None = None) -> Posted:
    """Post the mirror of one transaction. The service reverses through `ledger.reversals.reverse`,
    which also undoes what depends on the transaction (a piece's release, a pending payout)."""
    lock_journal(session)
    draft = reversal_draft(session, transaction_id, reason=reason, effective_at_us=effective_at_us,
                           idempotency_key=idempotency_key)
    return post(session, [draft], recorded_at_us=recorded_at_us)[0]
