"""Refunds, chargebacks and won disputes stay within their invoice, in the database too.

`ledger.revenue` refuses (422) a refund, chargeback or won dispute that names no invoice paid by
its customer in its currency at or before its instant; a refund or chargeback that would take the
invoice's refunds and chargebacks, less won disputes, past the paid amount at some instant from
its own on (counting the events dated up to each instant); and a won dispute that would take its
won disputes past its chargebacks at some such instant. The database now refuses the same rows,
whoever writes them, with the same rule for each type (a won dispute, which only lowers what is
refunded, is not checked against the paid amount, nor a refund against the chargebacks: rows that
broke the rule as of an instant, which the totals-only rule accepted before, then do not block
later events the service accepts). Checked after the insert: over the invoice's events dated at or
after the new one's instant, the sums of its events dated up to each. An invoice holds a handful
of events, found through the invoice index.

SQLite: a row trigger; its WHEN clause lets a payment through at the cost of one comparison, and
SQLite has one writer at a time. PostgreSQL: a statement trigger over the statement's new rows (a
batch's COPY is checked once; a payment-only statement pays one scan of its new rows). Before its
checks it takes the journal's advisory lock (ledger.db.JOURNAL_LOCK_KEY) when the statement holds a refund,
chargeback or won dispute, so that two writers at READ COMMITTED cannot each fit the limit alone
and together pass it: the service's writers hold that lock already.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

import re

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

NOT_PAID = ("revenue_events: a refund, chargeback or won dispute needs its invoice paid by the same customer, "
            "in the same currency, at or before its instant")
EXCEEDED = "revenue_events: refunds and chargebacks, less won disputes, would exceed the paid amount of the invoice"
OVER_REVERSED = "revenue_events: won disputes would exceed the chargebacks of the invoice"

JOURNAL_LOCK_KEY = 0x7265_7673_6861_7265 & 0x7FFF_FFFF_FFFF_FFFF  # ledger.db's, as of this revision
UNDOING = "('refund', 'chargeback')"

# For the new row `n`: its invoice's payment, and the instants at which a limit would be broken.
PAID = ("SELECT 1 FROM revenue_events p WHERE p.invoice_id = n.invoice_id AND p.type = 'invoice_paid'"
        " AND p.customer_id = n.customer_id AND p.currency = n.currency AND p.occurred_at_us <= n.occurred_at_us")


def broken(signed: str, test: str) -> str:
    """Some instant at or after n's, at which the invoice's `signed` amounts dated up to it fail `test`."""
    return (
        "SELECT 1 FROM revenue_events t WHERE t.invoice_id = n.invoice_id AND t.type <> 'invoice_paid'"
        " AND t.occurred_at_us >= n.occurred_at_us"
        f" AND (SELECT sum({signed}) FROM revenue_events e WHERE e.invoice_id = n.invoice_id"
        f" AND e.type <> 'invoice_paid' AND e.occurred_at_us <= t.occurred_at_us) {test}")


REFUNDED = broken("CASE e.type WHEN 'chargeback_reversed' THEN -e.amount_minor ELSE e.amount_minor END",
                  "> (SELECT p.amount_minor FROM revenue_events p"
                  " WHERE p.invoice_id = n.invoice_id AND p.type = 'invoice_paid')")
CHARGED_BACK = broken("CASE e.type WHEN 'chargeback' THEN e.amount_minor"
                      " WHEN 'chargeback_reversed' THEN -e.amount_minor ELSE 0 END", "< 0")


def new_row(condition: str) -> str:
    """The condition on a SQLite row trigger's NEW row instead of `n`."""
    return re.sub(r"\bn\.", "NEW.", condition)


SQLITE_GUARD = f"""
CREATE TRIGGER trg_revenue_events_within_invoice AFTER INSERT ON revenue_events
WHEN NEW.type <> 'invoice_paid'
BEGIN
  SELECT RAISE(ABORT, '{NOT_PAID}') WHERE NOT EXISTS ({new_row(PAID)});
  SELECT RAISE(ABORT, '{EXCEEDED}') WHERE NEW.type IN {UNDOING} AND EXISTS ({new_row(REFUNDED)});
  SELECT RAISE(ABORT, '{OVER_REVERSED}') WHERE NEW.type = 'chargeback_reversed' AND EXISTS ({new_row(CHARGED_BACK)});
END
"""

POSTGRES_GUARD = f"""
CREATE FUNCTION revenue_events_within_invoice() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM added WHERE type <> 'invoice_paid') THEN
    RETURN NULL;
  END IF;
  PERFORM pg_advisory_xact_lock({JOURNAL_LOCK_KEY});
  IF EXISTS (SELECT 1 FROM added n WHERE n.type <> 'invoice_paid' AND NOT EXISTS ({PAID})) THEN
    RAISE EXCEPTION '{NOT_PAID}' USING ERRCODE = 'check_violation';
  END IF;
  IF EXISTS (SELECT 1 FROM added n WHERE n.type IN {UNDOING} AND EXISTS ({REFUNDED})) THEN
    RAISE EXCEPTION '{EXCEEDED}' USING ERRCODE = 'check_violation';
  END IF;
  IF EXISTS (SELECT 1 FROM added n WHERE n.type = 'chargeback_reversed' AND EXISTS ({CHARGED_BACK})) THEN
    RAISE EXCEPTION '{OVER_REVERSED}' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER trg_revenue_events_within_invoice AFTER INSERT ON revenue_events
REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION revenue_events_within_invoice()
"""


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in (POSTGRES_GUARD if postgres else SQLITE_GUARD).split(";\n\n"):
        op.get_bind().exec_driver_sql(statement)


def downgrade() -> None:
    raise NotImplementedError("the guards are only ever replaced by a new migration")
