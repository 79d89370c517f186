"""PostgreSQL: a customer's first attribution is written in turn with the journal's writers,
whoever writes it.

Whether a customer had an attribution when a payment was recorded decides whether the payment is
`unattributed` (migration 0034). The service takes the journal's lock before it records a
customer's first attribution (`ledger.customers.attribute`), so a posting reads the attributions
either before it or after it; a later attribution, which changes no payment's status, does not wait
for the postings. A session sending its own SQL took only the program's lock (migration 0043): its
first attribution of a customer, inserted and not yet committed while the service posted a payment
of that customer, was not read by the posting nor by the database's rule on the payment's status;
both committed, and the payment stood `unattributed` though an attribution was recorded before it
(by a moment: `verify` allows ten minutes' clock skew either way, and could not name it).

Now a row trigger before each attribution takes the journal's lock when its customer has no
attribution (none, or every one withdrawn, as the service counts them). It runs after the
statement's trigger took the program's lock (migration 0043), so it reads every attribution
written before it, and takes the locks in the service's order. SQLite has one writer at a time and
is unchanged.

Revision ID: 0046
Revises: 0045
Create Date: 2026-12-05
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0046"
down_revision = "0045"
branch_labels = None
depends_on = None

_0043 = _revision("0043_journal_writers_in_turn.py")

FUNCTION = "first_attribution_in_turn"
TABLE = "attributions"
TRIGGER = f"trg_{TABLE}_first_in_turn"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"""CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql
SET search_path = public, pg_temp SET jit = off AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM {TABLE} a WHERE a.customer_id = NEW.customer_id) THEN
    PERFORM pg_advisory_xact_lock({_0043.JOURNAL_LOCK_KEY});
  END IF;
  RETURN NEW;
END $$""")
    op.execute(f"CREATE TRIGGER {TRIGGER} BEFORE INSERT ON {TABLE}\n"
               f"FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP TRIGGER {TRIGGER} ON {TABLE}")
    op.execute(f"DROP FUNCTION {FUNCTION}()")
