"""The database holds what a reinstatement restores and where a payout's money goes, for a writer
that goes around Python:

- a commission (an accrual, CPA or override) that names another in `accrual_id` is a reinstatement:
  `ledger.revenue` writes one only for a won dispute (`chargeback_reversed`), restoring what the
  invoice's chargebacks took back from a commission of that invoice (`commission.
  dispute_reinstatements`). It names its partner, its won dispute as its event and its invoice, and
  the commission it restores is a root one (naming none itself) of the same partner, kind and
  invoice. Nothing held that: one CPA bounty a customer (migration 0020) counts the bounties naming
  none, the account rule (0047) reads the accounts alone, and `verify` re-derives a payment's
  commissions among those naming none. A second bounty of 15,000.00 USD written as a
  "reinstatement" of the customer's first, naming the payment as its event, was accepted, `revshare
  verify` said ok, and the next payout run paid it;
- an event that is not a won dispute is named by no reinstatement: Python writes a posting's
  header before the event it names, in the same transaction, so the rule above reads the event when
  it is there and this one when it comes. An event never stored is not refused: no posting's event
  is a foreign key (it is written after the posting), and `verify` names a posting whose event is
  missing (`event_missing`, and here `reinstatement_unlike_dispute` too);
- a payout (`ledger.payouts.run_payouts`) moves its amount from the available account of its
  partner to payouts in transit, in its currency: migration 0018 held its partner and its amount
  alone, and a payout of 1,000,000.00 USD taken from a partner's pending account (held money) to
  cash was accepted (migration 0029 holds a settlement's and a failure's accounts).

`revshare verify` checks the same rules on rows written before this revision
(`reinstatement_unlike_dispute`, `payout_misposted`). Rows already written are left as they are.

SQLite: row triggers after insert (migration 0018's maker), each with a `WHEN` that picks its rows:
a commission naming another (a won dispute's, rare), an event that is not a won dispute (one probe
of an index of the reinstatements by their event, made here, as good as empty), a payout. PostgreSQL: the commission's and the
payout's rules row triggers called only for those rows; the event's rule joins migration 0034's
statement function (as 0049 left it), one probe a new event by the same index, in the statement's
one call.

Cost on the bulk ingest path (`revenue.ingest` of 10,000 paid invoices a transaction on the
benchmark's seeded program, this revision's guards and the same database with them taken away, in
turn six times each, medians): with the event's rule reading the journal's index of every posting
by its event, SQLite took 1.967 s against 1.916, and 1.995 against 1.957 (2-3%, each round slower
with them: it read the rows of each event's postings); reading the index of reinstatements, 2.438
s against 2.613, and PostgreSQL 1.787 s against 1.944: within the machine's drift.

Revision ID: 0058
Revises: 0057
Create Date: 2026-12-07
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0058"
down_revision = "0057"
branch_labels = None
depends_on = None

_0018 = _revision("0018_rules_held.py")  # sqlite_rule, postgres_rule
_0034 = _revision("0034_statuses_and_close_times_held.py")  # the event guard's name
_0049 = _revision("0049_guards_planned_for_a_growing_journal.py")  # the event guard as it stands, replaced()

SETTINGS = "SET search_path = public, pg_temp SET jit = off"
EARNINGS = "('accrual', 'cpa', 'override')"

REINSTATEMENT = f"n.kind IN {EARNINGS} AND n.accrual_id IS NOT NULL"
REINSTATEMENT_UNLIKE = (
    "n.partner_id IS NULL OR n.invoice_id IS NULL OR n.event_id IS NULL"
    " OR NOT EXISTS (SELECT 1 FROM journal_transactions o WHERE o.id = n.accrual_id AND o.accrual_id IS NULL"
    " AND o.kind = n.kind AND o.partner_id = n.partner_id AND o.invoice_id = n.invoice_id)"
    " OR EXISTS (SELECT 1 FROM revenue_events e WHERE e.id = n.event_id"
    " AND (e.type <> 'chargeback_reversed' OR e.invoice_id <> n.invoice_id))")
REINSTATEMENT_MESSAGE = ("journal_transactions: a commission naming another restores, for a won dispute of"
                         " its invoice, a commission of its partner, kind and invoice")

NOT_A_DISPUTE = "n.type <> 'chargeback_reversed'"
# The journal's index on event_id finds the postings naming the event.
NAMED_BY_REINSTATEMENT = ("EXISTS (SELECT 1 FROM journal_transactions t WHERE t.event_id = n.id"
                          f" AND t.kind IN {EARNINGS} AND t.accrual_id IS NOT NULL)")
NAMED_MESSAGE = "revenue_events: an event a reinstatement of a commission names is a won dispute"

# ':name' in a migration would be a bind parameter, hence the concatenation. A payout that is not its
# partner's payout transaction of its amount is migration 0018's to refuse, by its own words.
PAYOUT_MISPOSTED = (
    f"NOT ({_0018.PAYOUT_UNPOSTED}) AND EXISTS (SELECT 1 FROM journal_lines l JOIN accounts a ON a.id = l.account_id"
    " WHERE l.transaction_id = n.transaction_id AND (l.currency <> n.currency OR NOT ("
    "l.side = 'D' AND a.name = 'liability:partner:' || n.partner_id || ':' || 'available'"
    " OR l.side = 'C' AND a.name = 'liability:payouts:in_transit')))")
PAYOUT_MESSAGE = ("payouts: a payout moves its amount from the available account of its partner to payouts"
                  " in transit, in its currency")

ROW_RULES = (  # (table, name, refused when, message, only when); the second on SQLite alone
    ("journal_transactions", "reinstates_for_a_dispute", REINSTATEMENT_UNLIKE, REINSTATEMENT_MESSAGE,
     REINSTATEMENT),
    ("revenue_events", "reinstated_only_by_a_dispute", NAMED_BY_REINSTATEMENT, NAMED_MESSAGE, NOT_A_DISPUTE),
    ("payouts", "on_its_accounts", PAYOUT_MISPOSTED, PAYOUT_MESSAGE, None),
)
EVENT_RULE = ROW_RULES[1]


def refusing_first(function: str, refused_when: str, message: str) -> str:
    """The statement function `function` over the new rows `added`, refusing first, with `message`,
    when a row `n` of them is one `refused_when` holds of."""
    begin = "BEGIN\n"
    assert function.count(begin) == 1, function
    return function.replace(begin, f"""{begin}  IF EXISTS (SELECT 1 FROM added n WHERE {refused_when}) THEN
    RAISE EXCEPTION '{message}' USING ERRCODE = 'check_violation';
  END IF;
""")


def event_guard() -> str:
    """Migration 0049's event guard, refusing first an event that is not a won dispute named by a
    reinstatement."""
    _, _, refused_when, message, only_when = EVENT_RULE
    return refusing_first(_0049.event_guard(kept=True), f"{only_when} AND {refused_when}", message)


# The event's rule reads the reinstatements naming an event here, not among every posting naming it.
REINSTATEMENT_INDEX = "ix_journal_transactions_reinstatement_event_id"


def upgrade() -> None:
    for *_, message, _only_when in ROW_RULES:
        assert "'" not in message, message  # quoted in SQL as it stands
    op.execute(f"CREATE INDEX {REINSTATEMENT_INDEX} ON journal_transactions (event_id)"
               f" WHERE kind IN {EARNINGS} AND accrual_id IS NOT NULL")
    if op.get_bind().dialect.name == "sqlite":
        for table, name, refused_when, message, only_when in ROW_RULES:
            for statement in _0018.sqlite_rule(table, name, refused_when, message, only_when).split(";\n\n"):
                op.execute(statement)
        return
    for table, name, refused_when, message, only_when in ROW_RULES:
        if (table, name) == EVENT_RULE[:2]:
            continue
        for statement in _0018.postgres_rule(table, name, refused_when, message, only_when).split(";\n\n"):
            op.execute(statement)
        op.execute(f"ALTER FUNCTION {table}_{name}() {SETTINGS}")
    _0049.replaced(_0034.STATEMENT_FUNCTION, event_guard())


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, name, *_ in ROW_RULES:
        if postgres and (table, name) == EVENT_RULE[:2]:
            continue
        op.execute(f"DROP TRIGGER trg_{table}_{name}" + (f" ON {table}" if postgres else ""))
        if postgres:
            op.execute(f"DROP FUNCTION {table}_{name}()")
    if postgres:
        _0049.replaced(_0034.STATEMENT_FUNCTION, _0049.event_guard(kept=True))
    op.execute(f"DROP INDEX {REINSTATEMENT_INDEX}")
