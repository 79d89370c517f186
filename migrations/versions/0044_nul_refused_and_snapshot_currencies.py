"""SQLite refuses a NUL character in the texts whose shape the database holds, and PostgreSQL a
snapshot row's currency that is not three capital letters, as each other engine did.

SQLite reads a text up to its first NUL in `length()` and `GLOB`: an id of `'gold' || char(0) || ...`
passed migration 0031's rules as the four characters before the NUL, whatever came after (spaces,
`<`, past 64 characters), and a name or reason past its length likewise. Python refuses them
(`ledger.accounts.PARTNER_ID_PATTERN`, `ledger.customers.EXTERNAL_ID_PATTERN`, the names' and
reasons' checks), and PostgreSQL refuses a NUL in any text. Now each text 0031 shapes, and an
adjustment's reason (its memo, 1 to 500 characters by 0031), is refused on SQLite when its bytes
hold a NUL (`instr` over the text read as a blob, which counts every byte).

PostgreSQL: migration 0018 held a currency to three capital letters on both engines for journal
lines and revenue events, and on SQLite for snapshot rows too (its rule over their values), not on
PostgreSQL, where a row written in a close's transaction (or a close racing it, before migration
0043 made it wait) could carry `'us$'` into every balance read from that snapshot. Now a row trigger
refuses it there too; its `WHEN` spares every other row the call.

Revision ID: 0044
Revises: 0043
Create Date: 2026-12-05
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0044"
down_revision = "0043"
branch_labels = None
depends_on = None

_0017 = _revision("0017_in_time.py")

# (table, column) of each text whose shape the database holds (migration 0031), and the adjustment's memo.
TEXTS = (("plans", "id"), ("plans", "name"), ("partners", "id"), ("partners", "name"), ("customers", "id"),
         ("api_key_revocations", "reason"), ("payout_resolutions", "reason"), ("journal_transactions", "memo"))
SNAPSHOT_CURRENCY = "NEW.currency !~ '^[A-Z]{3}$'"
SNAPSHOT_CURRENCY_MESSAGE = "period_snapshots: a currency is three capital letters"


def sqlite_guard(table: str, column: str) -> str:
    return f"""CREATE TRIGGER trg_{table}_{column}_without_nul AFTER INSERT ON {table}
WHEN instr(CAST(NEW.{column} AS BLOB), X'00') > 0
BEGIN SELECT RAISE(ABORT, '{table}: its {column} holds no NUL character'); END"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for table, column in TEXTS:
            op.execute(sqlite_guard(table, column))
        return
    for statement in _0017.postgres_guard("period_snapshots", "currency", SNAPSHOT_CURRENCY, SNAPSHOT_CURRENCY_MESSAGE,
                                          only_when=SNAPSHOT_CURRENCY).split(";\n\n"):
        op.execute(statement)
    op.execute("ALTER FUNCTION period_snapshots_currency() SET search_path = public, pg_temp SET jit = off")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for table, column in TEXTS:
            op.execute(f"DROP TRIGGER trg_{table}_{column}_without_nul")
        return
    op.execute("DROP TRIGGER trg_period_snapshots_currency ON period_snapshots")
    op.execute("DROP FUNCTION period_snapshots_currency()")
