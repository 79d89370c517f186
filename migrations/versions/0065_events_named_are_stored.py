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
the event is not stored). A transaction that names an event it does not store fails to commit
(SQLite: "FOREIGN KEY constraint failed"; PostgreSQL names `fk_revenue_events_due_event_id_revenue_events`).
The service's postings leave the list in the transaction that lists them, so it is empty between
its transactions.

A row is keyed by its event, then its posting: a row a writer adds itself names a stored event (or
its transaction does not commit), and the list only ever adds rows of events not stored yet, so no
row taken ahead, of a stored event at the id the journal gives next, keeps a posting off the list
or refuses it (keyed by the posting alone, such a row had refused every payment billing sent); it
holds nothing back, and anyone may delete it. A REPLACE meets only the same row.

Every kind is held, not only the commissions and clawbacks: the service names only stored events
(a release, reversal or reinstatement names its piece's or its dispute's), and a key holds one rule
for every row that names one. Rows already written are left as they are; `verify` names them
(`event_missing`).

SQLite: row triggers, each one probe by key. PostgreSQL: statement triggers over the new headers,
the new events and the deleted rows, each one join by key.

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
_0062 = _revision("0062_postings_of_their_events.py")  # SETTINGS, BY_INDEX

DUE = "revenue_events_due"
DUE_MESSAGE = f"{DUE}: a posting leaves the list once the event it names is stored"
UNSTORED = "NOT EXISTS (SELECT 1 FROM revenue_events e WHERE e.id = {row}.event_id)"
FUNCTIONS = (f"{DUE}_added", f"{DUE}_cleared", f"{DUE}_met", f"{DUE}_no_update")


def _sqlite() -> list[str]:
    return [f"CREATE TRIGGER trg_journal_transactions_event_due AFTER INSERT ON journal_transactions\n"
            f"WHEN NEW.event_id IS NOT NULL AND {UNSTORED.format(row='NEW')}\n"
            f"BEGIN INSERT INTO {DUE} (event_id, transaction_id) VALUES (NEW.event_id, NEW.id); END",
            f"CREATE TRIGGER trg_revenue_events_clears_due AFTER INSERT ON revenue_events\n"
            f"BEGIN DELETE FROM {DUE} WHERE event_id = NEW.id; END",
            f"CREATE TRIGGER trg_{DUE}_met BEFORE DELETE ON {DUE}\n"
            f"WHEN {UNSTORED.format(row='OLD')}\nBEGIN SELECT RAISE(ABORT, '{DUE_MESSAGE}'); END",
            _0018.never_updated(DUE, False)]


def _postgres() -> list[str]:
    settings = f"{_0062.SETTINGS} {_0062.BY_INDEX}"
    return [f"""CREATE FUNCTION {DUE}_added() RETURNS trigger LANGUAGE plpgsql {settings} AS $$
BEGIN
  INSERT INTO {DUE} (event_id, transaction_id)
  SELECT n.event_id, n.id FROM added n WHERE n.event_id IS NOT NULL AND {UNSTORED.format(row='n')};
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
  IF EXISTS (SELECT 1 FROM gone o WHERE {UNSTORED.format(row='o')}) THEN
    RAISE EXCEPTION '{DUE_MESSAGE}' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$""",
            f"CREATE TRIGGER trg_{DUE}_met AFTER DELETE ON {DUE}\n"
            f"REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION {DUE}_met()",
            *_0018.never_updated(DUE, True).split(";\n\n"),
            f"ALTER FUNCTION {DUE}_no_update() {_0062.SETTINGS}",
            f"CREATE TRIGGER trg_{DUE}_no_truncate BEFORE TRUNCATE ON {DUE}\n"
            "FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change()",
            f"GRANT SELECT, INSERT, DELETE ON {DUE} TO {_0026.APP_ROLE}"]


def upgrade() -> None:
    assert "'" not in DUE_MESSAGE, DUE_MESSAGE  # quoted in SQL as it stands
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        DUE,
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("transaction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False,
                  nullable=False),
        sa.PrimaryKeyConstraint("event_id", "transaction_id", name=op.f(f"pk_{DUE}")),
        sa.ForeignKeyConstraint(["event_id"], ["revenue_events.id"], name=op.f(f"fk_{DUE}_event_id_revenue_events"),
                                deferrable=True, initially="DEFERRED"),
    )
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
