"""Revenue events: the source documents that billing posts, turned into commission postings.

`ingest(session, events)` is the one path, for a single event and for bulk batches alike. For a
batch it loads everything the events need in a few queries (existing events, attributions,
partners with their ancestors, statuses, plans and versions, the invoices and their accrued
pieces), decides each event in order against that in-memory state, and writes the journal, the
events and the holds with a few multi-row statements. Each event succeeds or is refused on its own:
a refused event changes nothing.

An event is dated at most `CLOCK_SKEW_US` after it is recorded (a payment in the future is refused).

Exactly once: an event's `id` is its key. The same id with the same content returns the original
outcome (`replayed`); with other content it is refused with a conflict naming the fields. The
event row and its postings commit together, so a crash followed by a retry applies each event once.
`received(session, id)` reads an event back, with the answer a replay of it gives.

In input order. Nothing of a refused event is stored, so an input (a batch, an import's file: `Input`)
sent again decides its refusals anew, against books that may hold its later events by then: a refund
before its payment in a file was refused by a clean run and posted by a rerun after a kill had
stored the payment. So a refund, chargeback or won dispute is decided without what would let it in
of the events of its invoice that its input carries after it and the books hold with that content:
its payment, and won disputes (for a refund or chargeback) or chargebacks (for a won dispute); what
could only refuse it counts, as the books hold it (`_Writer._undone`). A clean run and a rerun then
decide it alike: the events a killed run stored after it can only refuse it, and it was refused if
it is decided again. And an id given again in one input takes the decision of its first place:
refused there, it is refused again, so that each event of an input is stored at its first place.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, NamedTuple, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger import accounts as chart
from ledger import collector, holds, journal, program_chain, reversals
from ledger.commission import EARNING_KINDS, Clawback, Piece, dispute_reinstatements, invoice_earnings, refund_clawbacks
from ledger.customers import AttributionIndex, named, validate_external_id
from ledger.db import driver_results, driver_rows, in_lists, insert_all, past_lock_deadline
from ledger.errors import (Conflict, DomainError, IdempotencyConflict, InvalidInput, NotFound, OutOfRange, Unfinished,
                           invalid)
from ledger.instants import format_instant, parse_instant
from ledger.money import currency_exponent, format_minor, parse_amount_minor
from ledger.partners import PROGRAM_REVISION, Program, program_for
from ledger.schema import EVENT_TYPES, cpa_claims_taken, open_holds, revenue_events

BATCH_EVENTS_MAX = 10_000
# How far an event may be dated after the instant it is recorded: the clocks of billing and of the
# service may disagree a little; an event dated later than that is refused (422 naming
# `occurred_at`; the database holds it too, migration 0017). A payment dated in the future would
# accrue, and its hold mature, from an instant nobody has seen yet.
CLOCK_SKEW_US = journal.CLOCK_SKEW_US
EVENT_FIELDS = ("id", "type", "customer_id", "invoice_id", "amount", "occurred_at")
REFUND_TYPES = ("refund", "chargeback")
# RevenueEvent's fields, then what the service adds, in table column order.
EVENT_COLUMNS = ("id", "type", "customer_id", "invoice_id", "currency", "amount_minor", "occurred_at_us",
                 "recorded_at_us", "request_hash", "status", "first_eligible_customer_id")
STATUS_AT = EVENT_COLUMNS.index("status")


class RevenueEvent(NamedTuple):
    id: str
    type: str
    customer_id: str
    invoice_id: str
    currency: str
    amount_minor: int
    occurred_at_us: int


class CommissionLine(NamedTuple):
    partner_id: str
    kind: str  # accrual | cpa | override | clawback
    amount_minor: int  # signed: clawbacks are negative
    currency: str


class Outcome(NamedTuple):
    event_id: str
    status: str  # posted | unattributed | no_commission
    commissions: tuple[CommissionLine, ...]
    transaction_ids: tuple[int, ...]
    replayed: bool = False
    http_status: int = 201


class Refusal(NamedTuple):
    event_id: str | None
    error: DomainError


def parse_event(data: Any) -> RevenueEvent:
    """A revenue event from request data (JSON object), or InvalidInput naming every bad field."""
    if not isinstance(data, dict):
        raise InvalidInput("an event is a JSON object", {"_schema": ["an event is a JSON object"]})
    fields: dict[str, list[str]] = {name: ["unknown field"] for name in sorted(set(data) - set(EVENT_FIELDS))}
    fields.update({name: ["missing required field"] for name in EVENT_FIELDS if name not in data})

    def attempt(parse, *args, **kwargs):
        try:
            return parse(*args, **kwargs)
        except InvalidInput as error:
            for name, messages in error.fields.items():
                fields.setdefault(name, []).extend(messages)
            return None

    ids = {name: attempt(validate_external_id, data.get(name), field=name)
           for name in ("id", "customer_id", "invoice_id") if name in data}
    if "type" in data and data["type"] not in EVENT_TYPES:
        fields.setdefault("type", []).append(f"must be one of {', '.join(EVENT_TYPES)}")
    amount = data.get("amount")
    currency, minor = None, None
    if "amount" in data:
        if not isinstance(amount, dict) or set(amount) != {"amount", "currency"}:
            fields.setdefault("amount", []).append("a money object {\"amount\": \"123.45\", \"currency\": \"USD\"}")
        else:
            currency = amount["currency"]
            try:
                currency_exponent(currency)
            except InvalidInput as error:
                fields.setdefault("amount.currency", []).extend(error.fields["currency"])
            else:
                minor = attempt(parse_amount_minor, amount["amount"], currency, field="amount.amount")
            if minor is not None and minor <= 0:
                fields.setdefault("amount.amount", []).append("must be greater than zero")
    occurred = attempt(parse_instant, data["occurred_at"], field="occurred_at") if "occurred_at" in data else None
    if fields:
        first = next(iter(fields))
        raise InvalidInput(f"{first}: {fields[first][0]}", fields)
    return RevenueEvent(ids["id"], data["type"], ids["customer_id"], ids["invoice_id"], currency, minor, occurred)


def request_hash(event: RevenueEvent) -> str:
    return hashlib.sha256(json.dumps(list(event), separators=(",", ":")).encode()).hexdigest()


def event_key(event_id: str, *parts: object) -> str:
    """The idempotency key of a posting an event makes: `#`, the event's id as `in_key` writes it,
    then what of the event the posting is (`accrual:northwind`, `clawback:12`).

    An event id may hold `:`, and may be shaped like another key: the payment `release:1:after:x`
    took the key a re-release of piece 1 after the refund `x:accrual:northwind` takes, and both
    events could never be posted. No other key starts with `#`, and the id ends at the first `:`,
    so an event's keys are its own. Books written before keep their keys, none of which starts
    with `#`: no new event key equals one (README, "Idempotency")."""
    return ":".join((f"#{in_key(event_id)}", *map(str, parts)))


def in_key(event_id: str) -> str:
    """An event id in a key: its `:`s written `|`, which no id holds (`customers.EXTERNAL_ID_PATTERN`)."""
    return event_id.replace(":", "|")


_UNDOING_TYPES = frozenset({"refund", "chargeback", "chargeback_reversed"})
# What could let an undoing event in, where it was refused without it: its invoice's payment, and what
# lowers what is refunded and charged back (for a refund or chargeback) or raises what is charged back
# and not yet reversed (for a won dispute), at every instant from its own date on.
_LETTING_IN = {"refund": frozenset({"invoice_paid", "chargeback_reversed"}),
               "chargeback": frozenset({"invoice_paid", "chargeback_reversed"}),
               "chargeback_reversed": frozenset({"invoice_paid", "chargeback"})}
# How `_in_order` names them.
_LATER_NAMES = {"invoice_paid": "payment", "chargeback": "chargeback", "chargeback_reversed": "won dispute"}
_DISPUTE_TYPES = frozenset({"chargeback", "chargeback_reversed"})


@dataclass
class _Invoice:
    invoice_id: str
    customer_id: str
    currency: str
    paid_minor: int
    paid_at_us: int
    paid_status: str
    pieces: list[Piece] = field(default_factory=list)
    refunded_minor: int = 0  # refunds + chargebacks - reversed chargebacks
    charged_back_minor: int = 0  # chargebacks - reversed chargebacks
    latest_us: int | None = None  # the latest occurred_at of those
    dated: list[tuple[int, str, int]] = field(default_factory=list)  # each one's (occurred_at, type, amount)
    stored: list["StoredEvent"] = field(default_factory=list)  # its events the books held before the batch

    def add(self, event: RevenueEvent | StoredEvent) -> None:
        """Count a refund, chargeback or won dispute."""
        self.add_dated(event.occurred_at_us, event.type, event.amount_minor)

    def add_dated(self, occurred_at_us: int, type_: str, amount_minor: int) -> None:
        self.dated.append((occurred_at_us, type_, amount_minor))
        signed = -amount_minor if type_ == "chargeback_reversed" else amount_minor
        self.refunded_minor += signed
        if type_ != "refund":
            self.charged_back_minor += signed
        self.latest_us = max(occurred_at_us, self.latest_us or occurred_at_us)

    def without(self, later: list["StoredEvent"]) -> "_Invoice | None":
        """The invoice without `later`, stored events of it (None: its payment is one); no pieces."""
        if any(row.type == "invoice_paid" for row in later):
            return None
        before = _Invoice(self.invoice_id, self.customer_id, self.currency, self.paid_minor, self.paid_at_us,
                          self.paid_status)
        gone = Counter((row.occurred_at_us, row.type, row.amount_minor) for row in later)
        for dated in self.dated:
            if gone[dated]:
                gone[dated] -= 1
            else:
                before.add_dated(*dated)
        return before

    def dated_with(self, event: RevenueEvent) -> list[tuple[int, str, int]]:
        """The invoice's events as `commission.dated_clawed_minor` replays them, `event` with them."""
        return [*self.dated, (event.occurred_at_us, event.type, event.amount_minor)]

    def refunded_most_from(self, instant_us: int) -> tuple[int, int]:
        """(instant, amount): the most that is refunded and charged back, less reversed chargebacks,
        at any instant from `instant_us` on (counting the events dated up to each), and the first
        instant it is reached."""
        return max(self._running(_UNDOING_TYPES, self.refunded_minor, instant_us),
                   key=lambda found: (found[1], -found[0]))

    def charged_back_least_from(self, instant_us: int) -> tuple[int, int]:
        """(instant, amount): the least that is charged back and not yet reversed at any instant from
        `instant_us` on, and the first instant it is reached."""
        return min(self._running(_DISPUTE_TYPES, self.charged_back_minor, instant_us),
                   key=lambda found: (found[1], found[0]))

    def _running(self, types: frozenset[str], total: int, instant_us: int) -> list[tuple[int, int]]:
        """(instant, sum of the signed amounts of the events of `types` dated up to it) at
        `instant_us` and at each later instant such an event is dated: every value the sum takes from
        `instant_us` on. Events delivered in time order have none later: the total, without looking."""
        if self.latest_us is None or self.latest_us <= instant_us:
            return [(instant_us, total)]
        later: dict[int, int] = defaultdict(int)
        for at_us, type_, amount_minor in self.dated:
            if at_us > instant_us and type_ in types:
                later[at_us] += -amount_minor if type_ == "chargeback_reversed" else amount_minor
        value = total - sum(later.values())
        found = [(instant_us, value)]
        for at_us in sorted(later):
            value += later[at_us]
            found.append((at_us, value))
        return found


class _Needs:
    """The reads fresh events need, as statements for `db.driver_results` (their invoices' events,
    the payments that claimed their customers' CPA, their customers' attributions, the program's
    revision), and what the rows answer once read."""

    def __init__(self, session: Session, events: Sequence[RevenueEvent]) -> None:
        paid_customers = {e.customer_id for e in events if e.type == "invoice_paid"}
        self._events = _event_reads(session, "invoice_id", {e.invoice_id for e in events})
        self._claims = _event_reads(session, "first_eligible_customer_id", paid_customers)
        self._attributions = AttributionIndex.statements(session, paid_customers)
        self.statements = [*self._events, *self._claims, *self._attributions, (PROGRAM_REVISION, ())]

    def context(self, session: Session, fresh: list[RevenueEvent], results: list[list[tuple]]) -> "_Context":
        """The context of the fresh events, from the rows of `statements` (in order, nothing else)."""
        assert len(results) == len(self.statements), (len(results), len(self.statements))
        events_end = len(self._events)
        claims_end = events_end + len(self._claims)
        rows = {row[0]: StoredEvent(*row) for found in results[:claims_end] for row in found}
        claims = [StoredEvent(*row) for found in results[events_end:claims_end] for row in found]
        attributions = AttributionIndex(results[claims_end:-1])
        [(revision,)] = results[-1]
        return _Context(session, fresh, list(rows.values()), claims, attributions, revision)


@dataclass
class Input:
    """Where the events of an `ingest` call stand in the input that carries them: a batch request, an
    import's file (module docstring, "In input order"). The calls of one input share it."""

    # An id's first place in the input, with the request hash of its event there. An import's holds
    # only the events that come after a refund, chargeback or won dispute of their invoice in its
    # file (`ledger.importer._first_places`): the places an undoing event asks after.
    first: dict[str, tuple[int, str]]
    # Whether an id may come more than once in the input: true of every id that does (and of some
    # that do not, in an import's, which asks a fixed-size `ledger.importer._Marks`).
    repeated: Callable[[str], bool]
    # The ids refused where they first came, of those `repeated` holds, with that place, the event
    # there and its refusal: what a later place of each answers.
    refused: dict[str, tuple[int, RevenueEvent, "Refusal"]] = field(default_factory=dict)
    name: str = "batch"  # what the input is, in what a refusal says

    @classmethod
    def of(cls, events: Sequence[RevenueEvent], hashes: Sequence[str]) -> "Input":
        """The input that is the events themselves, in their order (a batch request)."""
        first: dict[str, tuple[int, str]] = {}
        repeated: set[str] = set()
        for place, (event, hash_hex) in enumerate(zip(events, hashes)):
            if first.setdefault(event.id, (place, hash_hex))[0] != place:
                repeated.add(event.id)
        return cls(first, repeated.__contains__)

    def keep(self, place: int, event: RevenueEvent, refusal: "Refusal") -> "Refusal":
        """`refusal` of `event` at `place`, where its id first came as an event (a later place of it
        is answered from here, never decided), kept for those later places when it has any.
        `_Writer.decide` and `ingest_apart` refuse through it."""
        if self.repeated(event.id):
            self.refused[event.id] = (place, event, refusal)
        return refusal


class _Claimant(NamedTuple):
    """The payment that holds its customer's CPA claim: the earliest-dated that claimed it."""

    event_id: str
    invoice_id: str
    occurred_at_us: int


class _Context:
    """What a batch of new events needs, loaded up front."""

    def __init__(self, session: Session, events: list[RevenueEvent], stored: list[StoredEvent],
                 claims: list[StoredEvent], attributions: AttributionIndex, program_revision: int) -> None:
        self.invoices = _invoices(stored, {e.invoice_id for e in events})
        refunded = {e.invoice_id for e in events if e.type != "invoice_paid" and e.invoice_id in self.invoices}
        for invoice_id, pieces in holds.load_pieces(session, refunded).items():
            self.invoices[invoice_id].pieces = pieces
        self.attributions = attributions
        self.program = program_for(session, attributions.partner_ids(), revision=program_revision)
        # Each customer's first claim, then (`read_claims_taken`) each taken by a payment dated before
        # its claimant (migration 0038): the earliest-dated holds the claim.
        self.cpa_claimants: dict[str, _Claimant] = {}
        self._claim(claims)

    def _claim(self, claims: Iterable[StoredEvent]) -> None:
        for row in claims:
            held = self.cpa_claimants.get(row.customer_id)
            if held is None or row.occurred_at_us < held.occurred_at_us:
                self.cpa_claimants[row.customer_id] = _Claimant(row.id, row.invoice_id, row.occurred_at_us)

    def read_claims_taken(self, session: Session, fresh: list[RevenueEvent]) -> None:
        """The claims taken from the customers whose first claim a fresh payment is dated before. A
        claim is only ever taken by a payment dated before its claimant, so a payment dated at or
        after its customer's first claim can take none, whoever holds it now: a batch in time order
        reads nothing for them (one statement less for every single-event POST)."""
        customer_ids = {event.customer_id for event, _ in self.dated_before_claimants(fresh)}
        if customer_ids:
            taken = driver_results(session, _claims_taken_reads(session, customer_ids))
            self._claim(StoredEvent(*row) for rows in taken for row in rows)

    def dated_before_claimants(self, fresh: list[RevenueEvent]) -> list[tuple[RevenueEvent, _Claimant]]:
        """The fresh payments dated before their customers' claimants as read so far, with them: the
        payments that may take a claim."""
        return [(event, claimant) for event in fresh if event.type == "invoice_paid"
                for claimant in [self.cpa_claimants.get(event.customer_id)]
                if claimant is not None and event.occurred_at_us < claimant.occurred_at_us]


def _invoices(stored: list[StoredEvent], invoice_ids: set[str]) -> dict[str, _Invoice]:
    """The named invoices that are paid, with what was refunded and charged back on each."""
    invoices: dict[str, _Invoice] = {}
    named = (row for row in stored if row.invoice_id in invoice_ids)
    for row in sorted(named, key=lambda row: row.type != "invoice_paid"):  # payments before what undoes them
        if row.type == "invoice_paid":
            invoices[row.invoice_id] = _Invoice(row.invoice_id, row.customer_id, row.currency, row.amount_minor,
                                                row.occurred_at_us, row.status)
        else:
            invoices[row.invoice_id].add(row)
        invoices[row.invoice_id].stored.append(row)
    return invoices


def _claims_taken_reads(session: Session, customer_ids: set[str]) -> list[tuple[str, tuple]]:
    """The payments that took these customers' CPA claims from their claimants (migration 0038)."""
    return [(f"{_STORED_EVENTS} WHERE id IN (SELECT event_id FROM cpa_claims_taken WHERE {condition})", params)
            for condition, params in in_lists(session, "customer_id", sorted(customer_ids))]


def _replay_reads(session: Session, ids: set[str]) -> list[tuple[str, tuple]]:
    """The stored events of these ids; then, as rows of the id alone, those the program's chain names
    that are not stored (migration 0056: removed past the triggers), in the same statements."""
    if not program_chain.events_chained(session):
        return _event_reads(session, "id", ids)
    # Each condition, `id IN (...)` or `id = ANY(?)`, on the chain's `fact_id` too.
    return [(f"{_STORED_EVENTS} WHERE {condition}{_REMOVED}c.fact_{condition}{_NOT_STORED}", (*params, *params))
            for condition, params in in_lists(session, "id", sorted(ids))]


_REMOVED = (f" UNION ALL SELECT c.fact_id{', NULL' * (len(EVENT_COLUMNS) - 1)} FROM program_chain c"
            f" WHERE c.fact_table = '{revenue_events.name}' AND ")
_NOT_STORED = " AND NOT EXISTS (SELECT 1 FROM revenue_events e WHERE e.id = c.fact_id)"


def _event_reads(session: Session, column: str, values: set[str]) -> list[tuple[str, tuple]]:
    return [(f"{_STORED_EVENTS} WHERE {condition}", params)
            for condition, params in in_lists(session, column, sorted(values))]


# Batches of up to this many events read what their fresh events need in the round trip that opens
# the batch, before they know which events are fresh, so that a single event costs one round trip
# of reads. Larger batches read their replays first and the needs of their fresh events after, so
# that re-delivering one reads little more than its replays.
SPECULATIVE_READS_EVENTS_MAX = 100


# An event's errors that fail its whole batch: found by the database at the batch's write
# (`OutOfRange`), or part-way through the event's postings (`journal.DatedAhead`), when what it
# drafted before is in the batch. The caller rolls back and ingests the batch `ingest_apart`.
REFUSED_APART = (OutOfRange, journal.DatedAhead)


def ingest_apart(events: Sequence[RevenueEvent], transaction: Callable[[], ContextManager[Session]], *,
                 places: Sequence[int] | None = None, source: Input | None = None) -> list[Outcome | Refusal]:
    """`ingest` a batch that failed as a whole with one of `REFUSED_APART` (after its rollback), in
    parts, each in a `transaction()` of its own, in the batch's order, so each event is decided
    after every event before it, as in one batch: a part that fails is halved, an event that fails
    alone is refused, and after each part that succeeds the next is twice as long (up to the batch).

    The parts adapt to where the failing events lie: among k such events in n, few and far apart,
    about n log2(2k) events' work, as halving the batch; many close together (running totals at
    their limit, so that every large event after some point fails), about the gaps between them,
    where halving the whole batch took about n events' work for each halving: half the work in all
    for 10,000 events with every tenth failing, 14.9 s instead of 18.3 s on PostgreSQL (README,
    "Running totals"). One transaction an event cost a batch of 10,000 with five of them 10-30 s,
    its replays one a transaction too.

    A request's lock deadline (`db.set_lock_deadline`) stops it between two parts: `Unfinished`, what
    the parts before committed standing (in a busy database, a batch's request ran past gunicorn's
    worker timeout: a 500). Sent again, the batch gives the books of one clean run: each
    part is decided as the batch's events before it leave the books (`Input`), and those that
    committed replay. `places` and `source` are those of `ingest`, for the whole batch."""
    if source is None:
        places, source = range(len(events)), Input.of(events, [request_hash(event) for event in events])
    assert places is not None and len(places) == len(events), "an input's places, one for each event"
    results: list[Outcome | Refusal] = []
    start, size = 0, (len(events) + 1) // 2  # the whole batch failed already
    while start < len(events):
        if start and past_lock_deadline():
            raise Unfinished(f"the batch's first {start} events of {len(events)} were decided, in transactions "
                             "committed on their own, before the request's time to wait for the books ran out: "
                             "send the batch again to go on (what committed replays)")
        part = events[start:start + size]
        try:
            with transaction() as session:
                results += ingest(session, part, places=places[start:start + size], source=source)
        except REFUSED_APART as error:
            if len(part) > 1:
                size = (len(part) + 1) // 2
                continue
            results.append(source.keep(places[start], part[0], Refusal(part[0].id, error)))
        start += len(part)
        size = min(2 * len(part), len(events))
    return results


@collector.paused()  # a batch's objects set off full collections: 11% of its time (ledger/collector.py)
def ingest(session: Session, events: Sequence[RevenueEvent], *, recorded_at_us: int | None = None,
           places: Sequence[int] | None = None, source: Input | None = None) -> list[Outcome | Refusal]:
    """Apply each event exactly once; one result per event, in order. The caller commits.

    The events are their own input unless `source` says where they stand in a larger one (an
    import's file, `ingest_apart`'s batch), `places` giving each event's place in it."""
    assert len(events) <= BATCH_EVENTS_MAX, len(events)
    replay_reads = _replay_reads(session, {e.id for e in events})
    needs = _Needs(session, events) if len(events) <= SPECULATIVE_READS_EVENTS_MAX else None
    batch, results = journal.open_batch(session, [*replay_reads, *(needs.statements if needs else [])],
                                        recorded_at_us=recorded_at_us)
    rows = [row for rows in results[:len(replay_reads)] for row in rows]
    stored = {row[0]: StoredEvent(*row) for row in rows if row[1] is not None}
    gone = {row[0] for row in rows if row[1] is None}
    fresh = [e for e in events if e.id not in stored]
    context = None
    if fresh and needs is not None:
        context = needs.context(session, fresh, results[len(replay_reads):])
    elif fresh:
        needs = _Needs(session, fresh)
        context = needs.context(session, fresh, driver_results(session, needs.statements))
    hashes = [request_hash(event) for event in events]
    if source is None:
        places, source = range(len(events)), Input.of(events, hashes)
    assert places is not None and len(places) == len(events), "an input's places, one for each event"
    writer = _Writer(session, batch, context, source, gone)
    if context is not None:
        context.read_claims_taken(session, fresh)
        writer.prefetch_bounties(fresh)
    outcomes: list[Outcome | Refusal] = []
    for event, hash_hex, place in zip(events, hashes, places):
        outcomes.append(writer.decide(event, hash_hex, stored, place))
    writer.flush()
    return _fill_replays(session, outcomes)


class StoredEvent(NamedTuple):
    """A revenue_events row, columns in table order."""

    id: str
    type: str
    customer_id: str
    invoice_id: str
    currency: str
    amount_minor: int
    occurred_at_us: int
    recorded_at_us: int
    request_hash: str
    status: str
    first_eligible_customer_id: str | None


_STORED_EVENTS = f"SELECT {', '.join(EVENT_COLUMNS)} FROM revenue_events"


class _Writer:
    """Decides events one by one against the batch's state and collects the rows to write."""

    def __init__(self, session: Session, batch: journal.Batch, context: _Context | None, source: Input,
                 gone: set[str]) -> None:
        self.session, self.batch, self.context, self.source = session, batch, context, source
        self.gone = gone  # events the program's chain names that are no longer stored: refused by name
        self.place = 0  # the place in its input of the event being decided
        self.event_rows: list[tuple] = []
        self.hold_rows: list[tuple] = []
        self.ended_holds: list[int] = []
        self.claims_taken: list[tuple] = []  # cpa_claims_taken rows
        # Claimant's invoice: (its standing bounty, `reversals.piece_reversal_order`), or None when none
        # stands; and the transactions to mirror (`prefetch_bounties`).
        self.bounties: dict[str, tuple[Piece, list[int] | None] | None] = {}
        self.sources: dict[int, tuple[journal.Draft, int]] = {}
        # The CPA bounties this batch drafted, as `journal.reversal_sources` would read them once written:
        # what the reversal of one a later payment of the batch takes mirrors (`_reverse_bounty`).
        self.drafted_bounties: dict[int, tuple[journal.Draft, int]] = {}
        self.decided: dict[str, tuple[str, RevenueEvent, Outcome]] = {}  # event id -> its first in the batch
        self.event_hash: str | None = None  # the request hash of the event being applied

    def decide(self, event: RevenueEvent, hash_hex: str, stored: dict[str, Any], place: int) -> Outcome | Refusal:
        earlier = stored.get(event.id)
        if earlier is not None:
            if earlier.request_hash != hash_hex:
                return Refusal(event.id, _event_conflict(event, earlier, "was already received with other content"))
            return Outcome(event.id, earlier.status, (), (), replayed=True)
        if event.id in self.gone:
            return Refusal(event.id, program_chain.removed(revenue_events.name, event.id))
        if event.id in self.decided:
            first_hash, first, outcome = self.decided[event.id]
            if first_hash != hash_hex:
                how = f"appears earlier in the {self.source.name} with other content"
                return Refusal(event.id, _event_conflict(event, first, how))
            return outcome._replace(replayed=True)
        refused = self.source.refused.get(event.id)
        if refused is not None and refused[0] < place:
            # Refused where it first came (not stored, and not decided since): so it stays, in every
            # run (module docstring, "In input order").
            _, first, refusal = refused
            if request_hash(first) != hash_hex:
                how = f"appears earlier in the {self.source.name} with other content, and was refused there"
                return Refusal(event.id, _event_conflict(event, first, how))
            return refusal
        self.place = place
        try:
            outcome = self._apply(event, hash_hex)
        except REFUSED_APART:
            raise  # part-way through the event (what it drafted before is in the batch), or a claim
            # taken wrote what the batch drafted before it (`_take_claim`): the batch's to refuse apart
        except DomainError as error:
            return self.source.keep(place, event, Refusal(event.id, error))
        self.source.refused.pop(event.id, None)  # refused there by a part `ingest_apart` did again
        self.decided[event.id] = (hash_hex, event, outcome)
        return outcome

    def _apply(self, event: RevenueEvent, hash_hex: str) -> Outcome:
        if event.occurred_at_us > self.batch.recorded_at_us + CLOCK_SKEW_US:
            raise invalid("occurred_at", f"{format_instant(event.occurred_at_us)} is in the future: billing posts "
                                         "what has happened")
        handler = self._paid if event.type == "invoice_paid" else (
            self._refund if event.type in REFUND_TYPES else self._dispute_won)
        self.event_hash = hash_hex  # in the request hash of what the event posts (ledger/journal.py)
        status, lines, claim = handler(event)
        self.event_rows.append((*event, self.batch.recorded_at_us, hash_hex, status, claim))
        return Outcome(event.id, status, tuple(line for line, _ in lines), tuple(tid for _, tid in lines))

    def _post(self, draft: journal.Draft, kind: str, signed_minor: int) -> tuple[CommissionLine, int]:
        posted = self.batch.add(draft)
        return CommissionLine(draft.partner_id, kind, signed_minor, draft.lines[0].currency), posted.id

    def _paid(self, event: RevenueEvent):
        context = self.context
        if event.invoice_id in context.invoices:
            raise Conflict(f"invoice {event.invoice_id!r} is already paid", {"invoice_id": ["already paid"]})
        attribution = context.attributions.at(event.customer_id, event.occurred_at_us)
        invoice = _Invoice(event.invoice_id, event.customer_id, event.currency, event.amount_minor,
                           event.occurred_at_us, "unattributed")
        if attribution is None:
            # A customer attributed from a later date is matched but earns nothing yet: no_commission.
            if context.attributions.knows(event.customer_id):
                invoice.paid_status = "no_commission"
            context.invoices[event.invoice_id] = invoice
            return invoice.paid_status, [], None
        window_start_us, partner_id = attribution
        earner = context.program.earner_at(partner_id, event.occurred_at_us)
        eligible, earnings = False, []
        claimant = context.cpa_claimants.get(event.customer_id)
        unclaimed = claimant is None or event.occurred_at_us < claimant.occurred_at_us
        if earner is not None:
            ancestors = [context.program.earner_at(a, event.occurred_at_us) for a in context.program.ancestors(partner_id)]
            eligible, earnings = invoice_earnings(event.amount_minor, event.currency, event.occurred_at_us,
                                                  window_start_us, earner, ancestors, unclaimed)
        claim = None
        if eligible and unclaimed:
            if claimant is None:
                claim = event.customer_id
            else:
                self._take_claim(event, partner_id, claimant)
            context.cpa_claimants[event.customer_id] = _Claimant(event.id, event.invoice_id, event.occurred_at_us)
        lines = [self._accrue(event, earning.partner_id, earning.kind, earning.amount_minor, earning.plan_version_id,
                              earning.hold_days, invoice, root_id=None) for earning in earnings]
        invoice.paid_status = "posted" if lines else "no_commission"
        context.invoices[event.invoice_id] = invoice
        return invoice.paid_status, lines, claim

    def prefetch_bounties(self, fresh: list[RevenueEvent]) -> None:
        """What the batch's payments may take (`_take_claim`), read for the whole batch at once (three
        statements): the standing bounty of each claimant stored before the batch that a payment of
        its customer in the batch is dated before, when no event of the batch names its invoice,
        and the transactions its reversal mirrors. A batch in time order takes nothing, reads nothing."""
        invoice_ids = {claimant.invoice_id for _, claimant in self.context.dated_before_claimants(fresh)
                       if claimant.invoice_id not in self.context.invoices}
        if not invoice_ids:
            return
        replay = holds.replay(self.session, invoice_ids)
        for invoice_id in invoice_ids:
            bounty = _standing_bounty(replay.by_invoice.get(invoice_id, []))
            self.bounties[invoice_id] = None if bounty is None else (bounty, reversals.piece_reversal_order(replay,
                                                                                                            bounty))
        self.sources = journal.reversal_sources(self.session, [
            transaction_id for found in self.bounties.values() if found is not None and found[1] is not None
            for transaction_id in found[1]])

    def _take_claim(self, event: RevenueEvent, partner_id: str, claimant: _Claimant) -> None:
        """The CPA goes to the customer's first eligible paid invoice by date: a payment dated before
        the claimant (delivered after it) takes the claim, and the claimant's bounty, if it earned
        one and it stands, is reversed with what stands against it (its release, clawbacks and
        reinstatements; `ledger.reversals`), effective at its own instants, before the payment
        accrues its own. So the books are, from the claimant's instant on, those of the two in time
        order; a claimant in a closed period is reversed in the first open one, as any reversal.

        The reversal is in the journal, not in the payment's answer (the commissions it posts); its
        reason, which the bounty's partner reads, names the payment when it is attributed to that
        partner (`partner_id`; `_claim_taken_reason`). A bounty finance reversed already leaves
        nothing to reverse: the claim moves all the same. A claimant stored before the batch, whose
        invoice no event of the batch names, is reversed within the batch from what
        `prefetch_bounties` read; a claimant paid earlier in the batch, whose bounty nothing stands
        against yet, from the bounty's draft (`_drafted_bounty`); otherwise (its invoice refunded in
        the batch, say) what the batch drafted so far is written first and `reversals.reverse` reads
        the journal: some fifteen statements a claim, where the others cost none (docs/performance.md,
        "CPA claims taken")."""
        self._reverse_bounty(event, partner_id, claimant)
        self.claims_taken.append((event.id, event.customer_id, claimant.event_id))  # written after the payment

    def _reverse_bounty(self, event: RevenueEvent, partner_id: str, claimant: _Claimant) -> None:
        if claimant.invoice_id in self.bounties:  # stored before the batch, and its invoice untouched by it
            found = self.bounties.pop(claimant.invoice_id)
            if found is None:
                return
            bounty, order = found
            if order is not None:
                reason = _claim_taken_reason(event, partner_id, bounty)
                for draft in reversals.piece_reversal_drafts(self.sources, order, reason=reason,
                                                             key=event_key(event.id, "takes-cpa", bounty.id)):
                    self.batch.add(draft)
                return
        invoice = self.context.invoices.get(claimant.invoice_id)
        drafted = None if invoice is None else _drafted_bounty(invoice, self.drafted_bounties)
        if drafted is not None:
            bounty, source = drafted
            self.batch.add(journal.standing_reversal_draft(source, bounty.id,
                                                           reason=_claim_taken_reason(event, partner_id, bounty),
                                                           key=event_key(event.id, "takes-cpa", bounty.id)))
            bounty.reversed = True
            return
        self.flush()
        replay = holds.replay(self.session, [claimant.invoice_id])
        bounty = _standing_bounty(replay.by_invoice.get(claimant.invoice_id, []))
        if bounty is None:
            return
        recorded_at_us = self.batch.recorded_at_us
        reversals.reverse(self.session, bounty.id, reason=_claim_taken_reason(event, partner_id, bounty),
                          idempotency_key=event_key(event.id, "takes-cpa", bounty.id),
                          recorded_at_us=recorded_at_us)
        self.batch = journal.Batch(self.session, recorded_at_us=recorded_at_us)
        if invoice is not None:  # its pieces as the reversal left them
            invoice.pieces = holds.load_pieces(self.session, [claimant.invoice_id]).get(claimant.invoice_id, [])

    def _accrue(self, event: RevenueEvent, partner_id: str, kind: str, amount_minor: int, plan_version_id: int | None,
                hold_days: int, invoice: _Invoice, *, root_id: int | None, later_at_us: int | None = None
                ) -> tuple[CommissionLine, int]:
        """Accrue a piece at the event's instant, or at `later_at_us` (a reinstatement of a clawback
        dated after its dispute), with its hold from then."""
        effective_at_us = event.occurred_at_us if later_at_us is None else later_at_us
        matures = holds.matures_at_us(effective_at_us, hold_days)
        suffix = partner_id if root_id is None else f"reinstate:{root_id}"
        if later_at_us is not None:
            suffix += f":at:{later_at_us}"
        draft = journal.transfer(
            kind, chart.EXPENSE_COMMISSION, chart.pending(partner_id), event.currency, amount_minor,
            effective_at_us=effective_at_us, idempotency_key=event_key(event.id, kind, suffix),
            partner_id=partner_id, customer_id=event.customer_id, invoice_id=event.invoice_id, event_id=event.id,
            plan_version_id=plan_version_id, accrual_id=root_id, matures_at_us=matures, event_hash=self.event_hash)
        line, transaction_id = self._post(draft, kind, amount_minor)
        if kind == "cpa" and root_id is None:  # its request hash without the event's, as read once written
            self.drafted_bounties[transaction_id] = (draft._replace(event_hash=None),
                                                     self.batch.posting_instant(effective_at_us))
        invoice.pieces.append(Piece(transaction_id, root_id or transaction_id, partner_id, kind, event.currency,
                                    amount_minor, plan_version_id, matures, amount_minor,
                                    customer_id=event.customer_id, invoice_id=event.invoice_id, event_id=event.id,
                                    accrued_at_us=self.batch.posting_instant(effective_at_us),
                                    dated_at_us=effective_at_us))
        self.hold_rows.append((transaction_id, matures))
        return line, transaction_id

    def _undone(self, event: RevenueEvent) -> _Invoice:
        """The invoice a refund, chargeback or won dispute undoes, which must take it as it stands and
        without what would let it in of the events of its input after it that the books hold (module
        docstring, "In input order")."""
        invoice = self.context.invoices.get(event.invoice_id)
        first, letting_in = self.source.first, _LETTING_IN[event.type]
        later = [row for row in (invoice.stored if invoice is not None else ())
                 if row.type in letting_in and (place := first.get(row.id)) is not None
                 and place[0] > self.place and place[1] == row.request_hash]
        if later:
            try:
                _check_undone(invoice.without(later), event)
            except InvalidInput as error:
                try:
                    _check_undone(invoice, event)
                except DomainError:
                    # Refused either way: by what the input's order leaves (a rerun's reason may be
                    # another than the clean run's, which counted fewer events that only refuse it).
                    raise error from None
                raise _in_order(error, later, self.source.name) from None
        return _check_undone(invoice, event)

    def _refund(self, event: RevenueEvent):
        invoice = self._undone(event)
        dated_us = event.occurred_at_us  # instants as dated, not as moved out of closed periods (`commission._take`)
        held = [piece for piece in invoice.pieces  # released by a job, but accrued and still held at this instant
                if piece.released and not piece.reversed and piece.release_id is not None
                and piece.matures_at_us > dated_us and piece.dated_or_accrued_at_us <= dated_us]
        for piece in held:
            holds.unrelease(self.batch, piece, key=event_key(event.id, "unrelease", piece.id),
                            reason=f"refund {event.id} is dated before this accrual matured")
        self.ended_holds += holds.release_pieces(self.batch, invoice.pieces, event.occurred_at_us)
        fully = invoice.refunded_minor + event.amount_minor == invoice.paid_minor
        # A refund that completes the invoice's total but is dated before other refunds, chargebacks
        # or won disputes (delivered after them) takes its share at its instant, and the rest (the
        # rounding remainder, the CPA) when the invoice is wholly refunded: at the latest of them.
        later_us = invoice.latest_us
        completes_at_us = later_us if fully and later_us is not None and later_us > event.occurred_at_us else None
        # One that does not, delivered after a won dispute dated after it, takes what time order leaves.
        won_later = not fully and any(type_ == "chargeback_reversed" and at_us > dated_us
                                      for at_us, type_, _ in invoice.dated)
        lines = [self._claw(event, invoice, plan, dated_us, held) for plan in refund_clawbacks(
            invoice.pieces, event.amount_minor, invoice.paid_minor, fully and completes_at_us is None, dated_us,
            dated=invoice.dated_with(event) if won_later else None)]
        if completes_at_us is not None:
            # What matured by the completion was released by then; what had not is still held at it.
            for piece in [piece for piece in held if piece.matures_at_us <= completes_at_us]:
                self._release_again(event, piece, held)
            self.ended_holds += holds.release_pieces(self.batch, invoice.pieces, completes_at_us)
            lines += [self._claw(event, invoice, plan, completes_at_us, held, effective_at_us=completes_at_us,
                                 key_suffix=":completed")
                      for plan in refund_clawbacks(invoice.pieces, event.amount_minor, invoice.paid_minor, True,
                                                   completes_at_us)]
        for piece in list(held):  # what is left matured when it matured
            self._release_again(event, piece, held)
        invoice.add(event)
        return self._status(invoice, lines), lines, None

    def _release_again(self, event: RevenueEvent, piece: Piece, held: list[Piece]) -> None:
        """Release at its maturity what is left of a piece a refund held again, once."""
        holds.release_pieces(self.batch, [piece], piece.matures_at_us, key_suffix=f":after:{in_key(event.id)}")
        held.remove(piece)

    def _claw(self, event: RevenueEvent, invoice: _Invoice, plan: Clawback, dated_us: int, held: list[Piece],
              *, effective_at_us: int | None = None, key_suffix: str = "") -> tuple[CommissionLine, int]:
        """Post one clawback of a refund, effective at `effective_at_us` (by default the refund's
        instant), which is dated `dated_us`. What it takes from a piece dated after that (a won
        dispute's reinstatement, delivered before a refund dated earlier) is taken from pending
        at the piece's accrual, so that no balance goes below zero in between: the piece is held
        then, whether or not a release job has come by since (its release is undone, the piece is
        added to `held`, and what is left of it is released again at its maturity). The plan's
        `from_pending` was decided before that undoing: the account is decided here."""
        piece = next(p for p in invoice.pieces if p.id == plan.piece_id)
        effective_at_us = event.occurred_at_us if effective_at_us is None else effective_at_us
        if piece.dated_or_accrued_at_us is not None and piece.dated_or_accrued_at_us > dated_us:
            if piece.released and piece.release_id is not None:
                holds.unrelease(self.batch, piece, key=event_key(event.id, "unrelease", f"{piece.id}{key_suffix}"),
                                reason=f"refund {event.id} claws from this accrual while it was held")
                held.append(piece)
            effective_at_us = piece.accrued_at_us
        from_pending = not piece.released
        account = (chart.pending if from_pending else chart.available)(plan.partner_id)
        draft = journal.transfer(
            "clawback", account, chart.EXPENSE_COMMISSION, event.currency, plan.amount_minor,
            effective_at_us=effective_at_us,
            idempotency_key=event_key(event.id, "clawback", f"{plan.piece_id}{key_suffix}"),
            partner_id=plan.partner_id, customer_id=event.customer_id, invoice_id=event.invoice_id,
            event_id=event.id, plan_version_id=plan.plan_version_id, accrual_id=plan.piece_id,
            event_hash=self.event_hash)
        piece.clawed_minor += plan.amount_minor
        if from_pending:
            piece.pending_minor -= plan.amount_minor
        line, transaction_id = self._post(draft, "clawback", -plan.amount_minor)
        piece.clawbacks[transaction_id] = (self.batch.posting_instant(effective_at_us), plan.amount_minor)
        return line, transaction_id

    def _dispute_won(self, event: RevenueEvent):
        invoice = self._undone(event)
        refunded_after = invoice.refunded_minor - event.amount_minor
        late = invoice.latest_us is not None and invoice.latest_us > event.occurred_at_us
        plans = dispute_reinstatements(invoice.pieces, event.amount_minor, invoice.paid_minor, refunded_after,
                                       self.batch.posting_instant(event.occurred_at_us),
                                       dated=invoice.dated_with(event) if late else None)
        lines = [self._accrue(event, plan.partner_id, plan.kind, plan.amount_minor, plan.plan_version_id,
                              _hold_days(self.session, self.context.program, plan.plan_version_id), invoice,
                              root_id=plan.root_id, later_at_us=plan.at_us)
                 for plan in plans]
        invoice.add(event)
        return self._status(invoice, lines), lines, None

    @staticmethod
    def _status(invoice: _Invoice, lines: list) -> str:
        if lines:
            return "posted"
        return "unattributed" if invoice.paid_status == "unattributed" else "no_commission"

    def flush(self) -> None:
        """Write what the batch decided so far (the claims taken after the events that took them)."""
        insert_all(self.session, [*self.batch.take_writes(), (revenue_events, EVENT_COLUMNS, self.event_rows),
                                  (cpa_claims_taken, CLAIM_TAKEN_COLUMNS, self.claims_taken),
                                  (open_holds, holds.HOLD_COLUMNS, self.hold_rows)])
        unposted = [row for row in self.event_rows if row[STATUS_AT] != "posted"]
        if unposted and program_chain.events_chained(self.session):
            program_chain.chain(self.session, [(revenue_events.name, dict(zip(EVENT_COLUMNS, row)))
                                               for row in unposted])
        holds.end_holds(self.session, sorted(set(self.ended_holds)))
        journal.follow_statistics(self.session, self.batch.head_id)
        self.event_rows, self.hold_rows, self.ended_holds, self.claims_taken = [], [], [], []


CLAIM_TAKEN_COLUMNS = ("event_id", "customer_id", "from_event_id")


def _in_order(error: InvalidInput, later: list[StoredEvent], input_name: str) -> InvalidInput:
    """The refusal of an undoing event that the books as they stand take, but not as its input's
    events before it leave them: `error`, saying so."""
    counts = Counter(row.type for row in later)
    kinds = " and ".join(f"the {word}{'s' if counts[type_] > 1 else ''}"
                         for type_, word in _LATER_NAMES.items() if counts[type_])
    why = (f", as the {input_name}'s events before it leave the books ({kinds} of its invoice later in the "
           f"{input_name} count{'' if len(later) > 1 else 's'} from there on)")
    return InvalidInput(error.detail + why, {name: [message + why for message in messages]
                                             for name, messages in error.fields.items()})


def _check_undone(invoice: _Invoice | None, event: RevenueEvent) -> _Invoice:
    """`invoice` if it takes `event`, a refund, chargeback or won dispute of it; else its refusal."""
    if invoice is None:
        raise invalid("invoice_id", f"no paid invoice {event.invoice_id!r}")
    if invoice.customer_id != event.customer_id:
        raise invalid("customer_id", f"invoice {event.invoice_id!r} belongs to another customer")
    if invoice.currency != event.currency:
        raise invalid("amount.currency", f"invoice {event.invoice_id!r} was paid in {invoice.currency}")
    if event.occurred_at_us < invoice.paid_at_us:
        raise invalid("occurred_at", f"is before invoice {event.invoice_id!r} was paid")
    if event.type in REFUND_TYPES:
        if invoice.refunded_minor + event.amount_minor > invoice.paid_minor:
            raise invalid("amount.amount", "cumulative refunds and chargebacks would exceed the paid amount")
        most_at_us, most_minor = invoice.refunded_most_from(event.occurred_at_us)
        if most_minor + event.amount_minor > invoice.paid_minor:  # a won dispute dated later brought it back under
            raise invalid("occurred_at", "refunds and chargebacks dated up to "
                                         f"{format_instant(most_at_us)} would exceed the paid amount")
        return invoice
    if event.amount_minor > invoice.charged_back_minor:
        raise invalid("amount.amount", "exceeds what is charged back on the invoice and not yet reversed")
    least_at_us, least_minor = invoice.charged_back_least_from(event.occurred_at_us)
    if event.amount_minor > least_minor:  # before the chargeback, or one reversed by a later won dispute
        raise invalid("occurred_at", f"only {format_minor(least_minor, event.currency)} is charged back and "
                                     f"not yet reversed at {format_instant(least_at_us)}")
    return invoice


def _claim_taken_reason(event: RevenueEvent, partner_id: str, bounty: Piece) -> str:
    """The reason of a taken bounty's reversal, which its partner's key reads: it names the payment
    that takes the claim only when the customer was that partner's at the payment (`partner_id`). A
    customer moved from one partner to another keeps the first's invoices out of the second's books,
    as its transactions are."""
    if partner_id == bounty.partner_id:
        return (f"the customer's CPA goes to invoice {event.invoice_id} (revenue event {event.id}), "
                "paid before this one")
    return "the customer's CPA goes to an invoice paid before this one"


def _standing_bounty(pieces: Iterable[Piece]) -> Piece | None:
    """The CPA bounty among a claimant's invoice's pieces (a reinstatement names another piece), unless
    reversed."""
    return next((piece for piece in pieces if piece.kind == "cpa" and piece.root_id == piece.id
                 and not piece.reversed), None)


def _drafted_bounty(invoice: _Invoice, drafted: dict[int, tuple[journal.Draft, int]]
                    ) -> tuple[Piece, tuple[journal.Draft, int]] | None:
    """The standing CPA bounty of a claimant's invoice when this batch drafted it and nothing stands
    against it yet (no clawback, release or reinstatement, and not matured before the instant it was
    posted at, which `reversals.reverse` would release first), with its draft: its reversal is its
    mirror alone, as `reversals.piece_reversal_order` would find it once written."""
    bounty = _standing_bounty(invoice.pieces)
    if bounty is None or bounty.id not in drafted or bounty.clawbacks or bounty.releases or bounty.released:
        return None
    if any(piece.root_id == bounty.id and piece.id != bounty.id for piece in invoice.pieces):
        return None
    if bounty.matures_at_us is not None and bounty.matures_at_us < bounty.accrued_at_us:
        return None
    return bounty, drafted.pop(bounty.id)


def _hold_days(session: Session, program: Program, plan_version_id: int | None) -> int:
    """Hold days of a plan version (the earner's pinned version), loading it if the batch has not."""
    from ledger.schema import plan_versions
    from ledger.terms import terms_from_json

    if plan_version_id is None:
        return 0
    if plan_version_id in program.versions_by_id:
        return program.hold_days(plan_version_id)
    text = session.execute(select(plan_versions.c.terms).where(plan_versions.c.id == plan_version_id)).scalar_one()
    return terms_from_json(text).hold_days


def _event_conflict(event: RevenueEvent, stored, how: str) -> IdempotencyConflict:
    """A 409 naming the fields in which `event` differs from the event with its id, `stored`."""
    differing = [name for name, same in (
        ("type", event.type == stored.type), ("customer_id", event.customer_id == stored.customer_id),
        ("invoice_id", event.invoice_id == stored.invoice_id),
        ("amount", (event.amount_minor, event.currency) == (stored.amount_minor, stored.currency)),
        ("occurred_at", event.occurred_at_us == stored.occurred_at_us)) if not same]
    named = f": {', '.join(differing)} differ{'s' if len(differing) == 1 else ''}" if differing else ""
    return IdempotencyConflict(f"event {event.id!r} {how}{named}",
                               {name: ["differs from the original event"] for name in differing})


def _fill_replays(session: Session, results: list[Outcome | Refusal]) -> list[Outcome | Refusal]:
    """Replays carry the original commissions and transactions, read back from the journal."""
    wanted = sorted({r.event_id for r in results if isinstance(r, Outcome) and r.replayed and not r.transaction_ids})
    if not wanted:
        return results
    posted = outcomes_of(session, wanted)
    return [r._replace(commissions=posted.get(r.event_id, ((), ()))[0],
                       transaction_ids=posted.get(r.event_id, ((), ()))[1])
            if isinstance(r, Outcome) and r.replayed and not r.transaction_ids else r for r in results]


def received(session: Session, event_id: str) -> tuple[StoredEvent, Outcome]:
    """A stored event as it was received, and what its first delivery answered (as a replay does:
    `outcomes_of`); NotFound when no event has this id."""
    row = session.execute(select(*(revenue_events.c[name] for name in EVENT_COLUMNS))
                          .where(revenue_events.c.id == event_id)).first()
    if row is None:
        raise NotFound(f"revenue event {named(event_id)} not found")
    event = StoredEvent(*row)
    commissions, transaction_ids = outcomes_of(session, [event_id]).get(event_id, ((), ()))
    return event, Outcome(event_id, event.status, commissions, transaction_ids)


# The kinds an event posts itself: its answer lists them, and their request hashes hold the event's
# (ledger/journal.py). The releases of the pieces it accrued name it too (ledger.holds.release_draft),
# and so do the reversals of those; neither was in its answer, nor holds its hash.
EVENT_POSTING_KINDS = (*EARNING_KINDS, "clawback")
_ANSWERED_KINDS = ", ".join(f"'{kind}'" for kind in EVENT_POSTING_KINDS)


def outcomes_of(session: Session, event_ids: list[str]) -> dict[str, tuple[tuple[CommissionLine, ...], tuple[int, ...]]]:
    """{event id: (commission lines, transaction ids)} of stored events, from the journal: what the
    first delivery answered, whatever has been posted against its pieces since."""
    found: dict[str, tuple[list, list]] = {}
    for condition, params in in_lists(session, "journal_transactions.event_id", event_ids):
        rows = driver_rows(
            session, "SELECT journal_transactions.event_id, journal_transactions.id, journal_transactions.kind,"
            " journal_transactions.partner_id, journal_lines.currency, max(journal_lines.amount_minor)"
            " FROM journal_transactions JOIN journal_lines ON journal_lines.transaction_id = journal_transactions.id"
            f" WHERE {condition} AND journal_transactions.kind IN ({_ANSWERED_KINDS})"
            " GROUP BY journal_transactions.event_id, journal_transactions.id, journal_transactions.kind,"
            " journal_transactions.partner_id, journal_lines.currency ORDER BY journal_transactions.id", params)
        for event_id, transaction_id, kind, partner_id, currency, amount in rows:
            lines, ids = found.setdefault(event_id, ([], []))
            lines.append(CommissionLine(partner_id, kind, -amount if kind == "clawback" else amount, currency))
            ids.append(transaction_id)
    return {key: (tuple(lines), tuple(ids)) for key, (lines, ids) in found.items()}
