"""The database holds that a journal transaction naming a revenue event names one stored by the
commit, for a writer that goes around Python.

Migration 0064 asked a commission or clawback to name its event, invoice and customer, but not that
the event be stored: an accrual of 50,000.00 USD written around the service naming a made-up event
id (or an empty string), with its hold, was accepted, and the next payout run paid it; `revshare
verify` named it (`event_missing`), after the money had gone. `ledger.revenue` writes a posting's
header before its event, in the same transaction (the event's own rules read its postings), so the
check must wait for the commit. SQLite has no deferred trigger, and adding a foreign key to the
journal would make the table anew, so, on both engines alike, as migrations 0026 and 0053 do: a
trigger after each insert into `journal_transactions` lists a header naming an event not yet stored
in `revenue_events_due`, whose foreign key to `revenue_events.id` is deferred to the commit; the
event, inserted, takes its postings off the list, and nothing else may (a delete is refused while
the event is not stored), and a row is only one such header's (a row of a stored event, at the
id the journal gives next, had refused every payment billing sent). A transaction that names an
event it does not store fails to commit
(SQLite: "FOREIGN KEY constraint failed"; PostgreSQL names `fk_revenue_events_due_event_id_revenue_events`).
The list is empty between transactions: the service's postings leave it in the transaction that
lists them.

Every kind is held, not only the commissions and clawbacks: the service names only stored events
(a release, reversal or reinstatement names its piece's or its dispute's), and a key holds one rule
for every row that names one. Rows already written are left as they are; `verify` names them
(`event_missing`).

Revision ID: 0065
Revises: 0064
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from migrations.earlier import revision as _revision

revision = "0065"
down_revision = "0064"
branch_labels = None
depends_on = None

_0018 = _revision("0018_rules_held.py")  # never_updated
_0026 = _revision("0026_payout_postings_recorded.py")  # APP_ROLE
_0036 = _revision("0036_replace_refused.py")  # guard: a REPLACE refused before it deletes (SQLite)
_0062 = _revision("0062_postings_of_their_events.py")  # SETTINGS, BY_INDEX

DUE = "revenue_events_due"
STORED = "EXISTS (SELECT 1 FROM revenue_events e WHERE e.id = OLD.event_id)"
DUE_MESSAGE = f"{DUE}: a posting leaves the list once the event it names is stored"
NOT_OF_A_POSTING = ("NOT EXISTS (SELECT 1 FROM journal_transactions t WHERE t.id = n.transaction_id"
                    " AND t.event_id = n.event_id) OR EXISTS (SELECT 1 FROM revenue_events e WHERE e.id = n.event_id)")
LISTED_MESSAGE = f"{DUE}: a row is of the posting of its id, naming an event not stored yet"
FUNCTIONS = (f"{DUE}_added", f"{DUE}_met", f"{DUE}_cleared", f"{DUE}_no_update", f"{DUE}_of_a_posting")


def _sqlite() -> list[str]:
    return [f"CREATE TRIGGER trg_journal_transactions_event_due AFTER INSERT ON journal_transactions\n"
            "WHEN NEW.event_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM revenue_events e WHERE e.id = NEW.event_id)\n"
            f"BEGIN INSERT INTO {DUE} (transaction_id, event_id) VALUES (NEW.id, NEW.event_id); END",
            f"CREATE TRIGGER trg_revenue_events_clears_due AFTER INSERT ON revenue_events\n"
            f"BEGIN DELETE FROM {DUE} WHERE event_id = NEW.id; END",
            f"CREATE TRIGGER trg_{DUE}_met BEFORE DELETE ON {DUE}\n"
            f"WHEN NOT {STORED}\nBEGIN SELECT RAISE(ABORT, '{DUE_MESSAGE}'); END",
            _0018.sqlite_rule(DUE, "of_a_posting", NOT_OF_A_POSTING, LISTED_MESSAGE, None),
            _0018.never_updated(DUE, False),
            _0036.guard(DUE, (("transaction_id",),))]


def _postgres() -> list[str]:
    settings = f"{_0062.SETTINGS} {_0062.BY_INDEX}"
    return [f"""CREATE FUNCTION {DUE}_added() RETURNS trigger LANGUAGE plpgsql {settings} AS $$
BEGIN
  INSERT INTO {DUE} (transaction_id, event_id)
  SELECT n.id, n.event_id FROM added n
  WHERE n.event_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM revenue_events e WHERE e.id = n.event_id);
  RETURN NULL;
END $$""",
            "CREATE TRIGGER trg_journal_transactions_event_due AFTER INSERT ON journal_transactions\n"
            f"REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION {DUE}_added()",
            f"""CREATE FUNCTION {DUE}_cleared() RETURNS trigger LANGUAGE plpgsql {settings} AS $$
BEGIN
  DELETE FROM {DUE} d USING added n WHERE d.event_id = n.id;
  RETURN NULL;
END $$""",
            "CREATE TRIGGER trg_revenue_events_clears_due AFTER INSERT ON revenue_events\n"
            f"REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION {DUE}_cleared()",
            f"""CREATE FUNCTION {DUE}_met() RETURNS trigger LANGUAGE plpgsql {settings} AS $$
BEGIN
  IF NOT {STORED} THEN
    RAISE EXCEPTION '{DUE_MESSAGE}' USING ERRCODE = 'check_violation';
  END IF;
  RETURN OLD;
END $$""",
            f"CREATE TRIGGER trg_{DUE}_met BEFORE DELETE ON {DUE}\nFOR EACH ROW EXECUTE FUNCTION {DUE}_met()",
            f"""CREATE FUNCTION {DUE}_of_a_posting() RETURNS trigger LANGUAGE plpgsql {settings} AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM listed n WHERE {NOT_OF_A_POSTING}) THEN
    RAISE EXCEPTION '{LISTED_MESSAGE}' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$""",
            f"CREATE TRIGGER trg_{DUE}_of_a_posting AFTER INSERT ON {DUE}\n"
            f"REFERENCING NEW TABLE AS listed FOR EACH STATEMENT EXECUTE FUNCTION {DUE}_of_a_posting()",
            *_0018.never_updated(DUE, True).split(";\n\n"),
            f"ALTER FUNCTION {DUE}_no_update() {_0062.SETTINGS}",
            f"CREATE TRIGGER trg_{DUE}_no_truncate BEFORE TRUNCATE ON {DUE}\n"
            "FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change()",
            f"GRANT SELECT, INSERT, DELETE ON {DUE} TO {_0026.APP_ROLE}"]


def upgrade() -> None:
    for message in (DUE_MESSAGE, LISTED_MESSAGE):
        assert "'" not in message, message  # quoted in SQL as it stands
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        DUE,
        sa.Column("transaction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False,
                  nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("transaction_id", name=op.f(f"pk_{DUE}")),
        sa.ForeignKeyConstraint(["event_id"], ["revenue_events.id"], name=op.f(f"fk_{DUE}_event_id_revenue_events"),
                                deferrable=True, initially="DEFERRED"),
    )
    op.create_index(op.f(f"ix_{DUE}_event_id"), DUE, ["event_id"])
    for statement in _postgres() if postgres else _sqlite():
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, name in (("journal_transactions", "event_due"), ("revenue_events", "clears_due")):
        op.execute(f"DROP TRIGGER trg_{table}_{name}" + (f" ON {table}" if postgres else ""))
    op.drop_table(DUE)  # with its own triggers
    if postgres:
        for function in FUNCTIONS:
            op.execute(f"DROP FUNCTION {function}()")
