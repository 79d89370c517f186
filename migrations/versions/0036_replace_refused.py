"""On SQLite, `INSERT OR REPLACE` is refused on every append-only table, whatever `recursive_triggers` says.

A REPLACE that meets a row with the same primary key or unique key deletes that row and inserts the
new one. The service's connections set `PRAGMA recursive_triggers=ON`, under which that deletion
fires the table's delete guard and the REPLACE is refused (migration 0001). A connection that does
not set it (the sqlite3 shell, a script's plain `sqlite3.connect`) deletes the row unguarded: a
partner's status, a payout's resolution or a header's memo could be rewritten in place. `verify`
names a rewritten header or revenue event, but the program's and the payouts' rows are facts the
books are derived from, and a rewritten one changed what the next payout run paid.

So each append-only table whose REPLACE was still let through gets a guard before each insert that
refuses a row whose primary key, or any of its unique keys, is already taken, with the message its
update and delete guards begin with, naming the key as SQLite's unique constraints do (`<table> is
append-only: its unique key <table>.<column> is taken`). A plain INSERT of such a row was refused
already, by the unique index; now by the guard, first, in the same words for both. The tables that
already had such a guard keep theirs (`account_totals`, 0008; `program_revision`, 0010;
`statement_documents`, 0016; `statement_bodies`, 0035), and so do the journal's lines, which
nothing may be added to once their transaction is sealed. The queues (`open_holds`, `unreleased_pieces_due`), keys and idempotency
records are not append-only: the service deletes from them. Nor is a key's revocation guarded: it is
inserted `ON CONFLICT DO NOTHING` (a second revocation answers the first), which a guard before the
insert would refuse, and a REPLACE there can only restate when and why a key was revoked, which
stays revoked.

A guard costs an index probe per key per row inserted; on the two tables every posting writes (a
header, a revenue event), three probes each, which bulk ingestion does not show beyond the
machine's drift (docs/performance.md, "Bulk ingestion").

PostgreSQL has no REPLACE: `INSERT ... ON CONFLICT DO UPDATE` fires the update guards, which refuse
it. Nothing changes there.

Revision ID: 0036
Revises: 0035
Create Date: 2026-12-04
"""

from alembic import op

revision = "0036"
down_revision = "0035"
branch_labels = None
depends_on = None

# Each table's primary key and unique keys, by their columns; a NULL key takes none (SQLite's unique
# indexes let NULLs repeat, and `= NULL` matches nothing).
KEYS = {
    "accounts": (("id",), ("name",)),
    "attributions": (("id",), ("customer_id", "effective_from_us")),
    "customers": (("id",),),
    "journal_transactions": (("id",), ("idempotency_key",), ("reverses_id",)),
    "partner_plans": (("id",), ("partner_id", "effective_from_us")),
    "partner_statuses": (("id",),),
    "partners": (("id",),),
    "payout_records_due": (("transaction_id",),),
    "payout_resolutions": (("payout_id",), ("transaction_id",)),
    "payout_resolutions_due": (("transaction_id",),),
    "payout_runs": (("id",), ("at_us",)),
    "payouts": (("id",), ("run_id", "partner_id", "currency"), ("transaction_id",)),
    "period_closes": (("period",), ("starts_at_us",), ("ends_at_us",), ("close_hash",)),
    "period_snapshots": (("period", "account_id", "currency"),),
    "plan_versions": (("id",), ("plan_id", "version"), ("plan_id", "effective_from_us")),
    "plans": (("id",),),
    "revenue_events": (("id",), ("first_eligible_customer_id",), ("invoice_id",)),
}
# The keys of partial unique indexes, and the column and value that put a row in the index
# (migration 0003's `uq_revenue_events_paid_invoice`).
PARTIAL = {("revenue_events", ("invoice_id",)): ("type", "'invoice_paid'")}


def taken(table: str, key: tuple[str, ...]) -> str:
    """`EXISTS (...)`, true when a row of `table` already holds the new row's `key`."""
    matches = [f"t.{column} = NEW.{column}" for column in key]
    if (table, key) in PARTIAL:
        column, value = PARTIAL[table, key]
        matches += [f"t.{column} = {value}", f"NEW.{column} = {value}"]
    return f"EXISTS (SELECT 1 FROM {table} t WHERE {' AND '.join(matches)})"


def refusal(table: str, key: tuple[str, ...]) -> str:
    """What a row taking `key` is refused with: for a plain INSERT as for a REPLACE, naming the key
    as SQLite's own unique constraint does (`table.column`)."""
    return f"{table} is append-only: its unique key {', '.join(f'{table}.{column}' for column in key)} is taken"


def guard(table: str, keys: tuple[tuple[str, ...], ...] | None = None) -> str:
    """The guard before each insert into `table`, of its `keys` (by default, this migration's list of
    them); migration 0042 makes `api_keys`' with it."""
    cases = "".join(f"\n    WHEN {taken(table, key)} THEN RAISE(ABORT, '{refusal(table, key)}')"
                    for key in keys or KEYS[table])
    return f"CREATE TRIGGER trg_{table}_no_replace BEFORE INSERT ON {table}\nBEGIN\n  SELECT CASE{cases}\n  END;\nEND"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        return
    for table in KEYS:
        op.execute(guard(table))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        return
    for table in KEYS:
        op.execute(f"DROP TRIGGER trg_{table}_no_replace")
