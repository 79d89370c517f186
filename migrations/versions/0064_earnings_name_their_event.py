"""The database holds that every commission and clawback names its revenue event, invoice and
customer, for a writer that goes around Python.

`ledger.revenue` writes a commission (an accrual, CPA or override, a reinstatement too) or a
clawback only from a revenue event, naming the event, its invoice and its customer; migration 0062
held a root commission or clawback naming a stored event to that event, but took one naming no
event at all (the journal took a commission posted through it alone, and its tests did that). An
accrual of 50,000.00 USD written around the service naming an invoice but no event or customer,
and its hold, was accepted, `revshare verify` said ok, and the next payout run paid it: no check
had an event to compare it with. A clawback with no event withheld its amount the same way.

Now a commission or clawback naming no event, no invoice or no customer (NULL) is refused as it is
written. Rows already written are left as they are; `revshare verify` names them
(`earning_without_event`). The rule asks that the three be named, not that the event be stored: a
posting naming an event never stored is still accepted (Python writes a posting before its event,
in the same transaction; a key to the events deferred to the commit would hold it, which SQLite
cannot add to the journal without making the table anew), and `verify` names it (`event_missing`).

SQLite: a row trigger after insert (migration 0018's maker), reading the new row only. PostgreSQL:
0062's statement function over the new headers checks them too, in one pass over the transition
table before its join to the events.

Revision ID: 0064
Revises: 0063
Create Date: 2026-12-07
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0064"
down_revision = "0063"
branch_labels = None
depends_on = None

_0018 = _revision("0018_rules_held.py")  # sqlite_rule
_0062 = _revision("0062_postings_of_their_events.py")  # the header guard as it stands

POSTINGS = "('accrual', 'cpa', 'override', 'clawback')"  # ledger.revenue's EVENT_POSTING_KINDS
MESSAGE = "journal_transactions: a commission or clawback names its revenue event, invoice and customer"
WITHOUT_EVENT = (f"n.kind IN {POSTINGS} AND (n.event_id IS NULL OR n.invoice_id IS NULL"
                 " OR n.customer_id IS NULL)")
THEIR_EVENT_CHECK = "BEGIN\n  IF EXISTS (SELECT 1 FROM added n JOIN revenue_events e"
# 0062's header function, made again over itself (going down, as it was)
AS_0062 = _0062.POSTGRES_HEADER_GUARD.split(";\n\n")[0].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
HEADER_GUARD = AS_0062.replace(
    THEIR_EVENT_CHECK, f"BEGIN\n  IF EXISTS (SELECT 1 FROM added n WHERE {WITHOUT_EVENT}) THEN\n"
    f"    RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'check_violation';\n  END IF;\n"
    f"  IF EXISTS (SELECT 1 FROM added n JOIN revenue_events e", 1)
assert MESSAGE in HEADER_GUARD and _0062.HEADER_MESSAGE in HEADER_GUARD, HEADER_GUARD


def upgrade() -> None:
    assert "'" not in MESSAGE, MESSAGE  # quoted in SQL as it stands
    if op.get_bind().dialect.name == "sqlite":
        op.execute(_0018.sqlite_rule("journal_transactions", "name_their_event", WITHOUT_EVENT, MESSAGE, None))
        return
    op.execute(HEADER_GUARD)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER trg_journal_transactions_name_their_event")
        return
    op.execute(AS_0062)
