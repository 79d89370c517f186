"""The database holds that a commission or clawback is of the revenue event it names, and that a
queued hold's piece names an invoice, for a writer that goes around Python:

- `ledger.revenue` writes a commission (an accrual, CPA or override) or a clawback only from a
  revenue event, naming the event, its invoice and its customer: a root commission (naming no
  other) a payment's (`invoice_paid`), a clawback a refund's or a chargeback's (a reinstatement is a
  won dispute's, migration 0058). Nothing held the invoice and customer to the event's: an override
  of a payment written naming another invoice passed every rule and `revshare verify`, and when
  billing refunded the invoice in full, the refund's clawbacks (which read the invoice's pieces)
  left the override to be paid. Now a root commission or clawback naming a stored event is refused
  unless it names the event's invoice and customer, and the event is of its kind's type; and an
  event is refused when a root commission or clawback naming it is not so (Python writes a
  posting's header before its event, in the same transaction: the first rule reads the event when
  it is there, the second the postings when it comes). A posting naming an event never stored is
  not refused (a posting's event is not a foreign key; `verify` names it, `event_missing`), nor one
  naming no event: the journal takes a commission posted through it alone (`ledger.journal.post`),
  and tests of the journal do that;
- a queued hold's piece names an invoice (migration 0019 held its kind and maturity): a hold of an
  accrual written with no invoice stopped every payout run and every release of holds (the queue
  reads its pieces by invoice), for every partner.

Rows already written are left as they are; `revshare verify` names them (`earning_unlike_event`).

SQLite: row triggers after insert (migration 0018's maker), the header's one probe of the event by
its key, only for a commission or clawback naming an event; the event's one probe of the journal's
index by event. PostgreSQL: a statement trigger over the new headers (one join of those naming an
event to their events, by key), and the event's rule joins migration 0034's statement function (as
0059 left it). The holds' rule is 0019's, with the invoice.

Revision ID: 0062
Revises: 0061
Create Date: 2026-12-07
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0062"
down_revision = "0061"
branch_labels = None
depends_on = None

_0018 = _revision("0018_rules_held.py")  # sqlite_rule
_0019 = _revision("0019_holds_queued.py")  # the holds' rule as it stood
_0034 = _revision("0034_statuses_and_close_times_held.py")  # the event guard's name
_0049 = _revision("0049_guards_planned_for_a_growing_journal.py")  # replaced()
_0058 = _revision("0058_reinstatements_and_payouts_held.py")  # refusing_first()
_0059 = _revision("0059_currencies_kept.py")  # the event guard as it stands

EARNINGS = "('accrual', 'cpa', 'override')"  # ledger.commission's EARNING_KINDS


def held(posting: str) -> str:
    """SQL: true for a root commission or a clawback (a reinstatement's event is 0058's rule)."""
    return f"(({posting}.kind IN {EARNINGS} AND {posting}.accrual_id IS NULL) OR {posting}.kind = 'clawback')"


SETTINGS = "SET search_path = public, pg_temp SET jit = off"
BY_INDEX = ("SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off"  # as 0037's BY_KEY
            " SET enable_bitmapscan = off SET enable_material = off")


def of_its_event(posting: str, event: str) -> str:
    """SQL: true when `posting` (a root commission or a clawback) is of the event `event`."""
    return (f"{posting}.invoice_id = {event}.invoice_id AND {posting}.customer_id = {event}.customer_id"
            f" AND CASE WHEN {posting}.kind = 'clawback' THEN {event}.type IN ('refund', 'chargeback')"
            f" ELSE {event}.type = 'invoice_paid' END")


HEADER_MESSAGE = ("journal_transactions: a commission or clawback names the invoice and customer of its event,"
                  " an event of its kind")
EVENT_MESSAGE = ("revenue_events: the commissions and clawbacks naming an event name its invoice and customer,"
                 " and are of its type")
HOLD_MESSAGE = "open_holds: a queued hold names an accrual and matures when it does, an accrual of an invoice"
SQLITE_HEADER_UNLIKE = (f"EXISTS (SELECT 1 FROM revenue_events e WHERE e.id = n.event_id"
                        f" AND ({of_its_event('n', 'e')}) IS NOT 1)")
HEADER_ONLY_WHEN = f"{held('n')} AND n.event_id IS NOT NULL"
EVENT_UNLIKE = (f"EXISTS (SELECT 1 FROM journal_transactions t WHERE t.event_id = n.id AND {held('t')}"
                " AND ({of}) IS NOT {true})")
NOT_A_PIECE = _0019.NOT_A_PIECE.replace(" AND t.matures_at_us = n.matures_at_us)",
                                        " AND t.matures_at_us = n.matures_at_us AND t.invoice_id IS NOT NULL)")
assert NOT_A_PIECE != _0019.NOT_A_PIECE

POSTGRES_HEADER_GUARD = f"""
CREATE FUNCTION journal_transactions_of_their_event() RETURNS trigger LANGUAGE plpgsql {SETTINGS} {BY_INDEX} AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM added n JOIN revenue_events e ON e.id = n.event_id
             WHERE {held('n')} AND ({of_its_event('n', 'e')}) IS NOT TRUE) THEN
    RAISE EXCEPTION '{HEADER_MESSAGE}' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER trg_journal_transactions_of_their_event AFTER INSERT ON journal_transactions
REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION journal_transactions_of_their_event()"""


def hold_guard(refused_when: str, message: str) -> str:
    """Migration 0019's function of the holds' rule, refusing with `message` when `refused_when`."""
    function = _0019.POSTGRES_GUARD.split(";\n\n")[0].strip()
    assert function.startswith("CREATE FUNCTION"), function
    return ("CREATE OR REPLACE" + function[len("CREATE"):]).replace(_0019.NOT_A_PIECE, refused_when).replace(
        _0019.MESSAGE, message)


def event_guard() -> str:
    """Migration 0059's event guard, refusing first an event that postings naming it are not of."""
    return _0058.refusing_first(_0059.event_guard(), EVENT_UNLIKE.format(of=of_its_event("t", "n"), true="TRUE"),
                                EVENT_MESSAGE)


def upgrade() -> None:
    for message in (HEADER_MESSAGE, EVENT_MESSAGE, HOLD_MESSAGE):
        assert "'" not in message, message  # quoted in SQL as it stands
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER trg_open_holds_of_a_piece")
        rules = (("journal_transactions", "of_their_event", SQLITE_HEADER_UNLIKE, HEADER_MESSAGE, HEADER_ONLY_WHEN),
                 ("revenue_events", "of_its_postings", EVENT_UNLIKE.format(of=of_its_event("t", "n"), true="1"),
                  EVENT_MESSAGE, None),
                 ("open_holds", "of_a_piece", NOT_A_PIECE, HOLD_MESSAGE, None))
        for table, name, refused_when, message, only_when in rules:
            op.execute(_0018.sqlite_rule(table, name, refused_when, message, only_when))
        return
    for statement in POSTGRES_HEADER_GUARD.split(";\n\n"):
        op.execute(statement)
    _0049.replaced(_0034.STATEMENT_FUNCTION, event_guard())
    _0049.replaced("open_holds_of_a_piece", hold_guard(NOT_A_PIECE, HOLD_MESSAGE))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table, name in (("journal_transactions", "of_their_event"), ("revenue_events", "of_its_postings"),
                            ("open_holds", "of_a_piece")):
            op.execute(f"DROP TRIGGER trg_{table}_{name}")
        op.execute(_0018.sqlite_rule("open_holds", "of_a_piece", _0019.NOT_A_PIECE, _0019.MESSAGE, None))
        return
    op.execute("DROP TRIGGER trg_journal_transactions_of_their_event ON journal_transactions")
    op.execute("DROP FUNCTION journal_transactions_of_their_event()")
    _0049.replaced(_0034.STATEMENT_FUNCTION, _0059.event_guard())
    _0049.replaced("open_holds_of_a_piece", hold_guard(_0019.NOT_A_PIECE, _0019.MESSAGE))
