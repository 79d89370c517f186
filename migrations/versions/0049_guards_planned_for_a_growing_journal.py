"""PostgreSQL: two statement guards read the tables they check by key however small the planner
believes those tables to be.

PL/pgSQL plans a query once per connection and keeps the plan until the tables' statistics change.
Statistics taken of an empty journal (an `ANALYZE` of a new database, or autovacuum after a first
batch rolled back by a crash) say it is empty, and a batch then grows it by thousands of rows in
its own transaction, which no statistics see. Planned for an empty journal, the guard of new lines
(`journal_lines_refuse_sealed`, migration 0001: is a line added to a transaction already sealed?)
joined the statement's lines to `journal_transactions` with the journal as the outer side, reading
every header of the growing journal once for each statement; `revenue_events_as_posted` (migration
0034) likewise joined the new events to the journal, the attributions and the events. A batch of
10,000 events whose CPA claims move between invoices (each move a statement of its own) took more
than gunicorn's 30 s, where the same batch on a database never analyzed took 6 s: billing's retry
of a batch cut short by a crash was a 500, every time, until autovacuum analyzed the journal again.

Now neither is planned by the journal's size. A line is refused when its transaction's id is at most
the journal's greatest (ids start at 1 and have no gaps: migration 0001's check, 0006's chain), read
as the first entry of the primary key in descending order (the order asked for is the key's, so no
other index serves it as cheaply, however small the journal looks); each of the event guard's
`EXISTS` subqueries is kept a subquery (`OFFSET 0`: PostgreSQL does not turn it into a join), run
for each new event by an index on what it compares. Measured with 10,000 events in one transaction,
a tenth of them refunds or chargebacks and many moving a CPA claim (the seeded program of the tests,
200 customers), on a journal analyzed empty: 41.5 and 39.5 s before, 18.7 and 20.4 s after; on a
journal never analyzed, 7.7 s before and 8.0 s after (each in turn, on a shared 2-core machine).
What is left of the difference is PostgreSQL's own foreign-key checks (`open_holds.accrual_id`,
say), planned for the empty journal as well, by a sequential scan, and kept by the connection; this
revision does not change them.

Each function is replaced with the settings it had (migrations 0009, 0023, 0029, 0037), read from
the catalog and set again: `CREATE OR REPLACE FUNCTION` drops them. SQLite: nothing changes (its
row triggers read by key).

Revision ID: 0049
Revises: 0048
Create Date: 2026-12-06
"""

import re

from alembic import op

from migrations.earlier import revision as _revision

revision = "0049"
down_revision = "0048"
branch_labels = None
depends_on = None

_0001 = _revision("0001_journal.py")  # the sealed-lines guard
_0034 = _revision("0034_statuses_and_close_times_held.py")  # the event guard

SEALED = "EXISTS (SELECT 1 FROM added a JOIN journal_transactions t ON t.id = a.transaction_id)"
SEALED_BY_KEY = ("EXISTS (SELECT 1 FROM added a WHERE a.transaction_id >= 1 AND a.transaction_id <="
                 " (SELECT t.id FROM journal_transactions t ORDER BY t.id DESC LIMIT 1))")


def sealed_guard(by_key: bool) -> str:
    [function] = [s for s in _0001.POSTGRES_GUARDS.split(";\n\n") if "journal_lines_refuse_sealed()" in s
                  and s.lstrip().startswith("CREATE FUNCTION")]
    assert function.count(SEALED) == 1
    function = function.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
    return function.replace(SEALED, SEALED_BY_KEY) if by_key else function


def kept_subqueries(text: str) -> str:
    """`text` with `OFFSET 0` closing each `EXISTS (SELECT 1 FROM <table> ...)` over a table."""
    out, at = [], 0
    for found in re.finditer(r"EXISTS \(SELECT 1 FROM (\w+) ", text):
        if found.start() < at or found.group(1) == "added":
            continue
        end, depth = found.start() + len("EXISTS "), 0  # from its "(" to the ")" that closes it
        while True:
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
            end += 1
        out.append(text[at:end] + " OFFSET 0")
        at = end
    return "".join(out) + text[at:]


def event_guard(kept: bool) -> str:
    function = _0034.POSTGRES_STATEMENT_GUARD.split(";\n\n")[0]
    function = function.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
    return kept_subqueries(function) if kept else function


def replaced(name: str, definition: str) -> None:
    """Replace function `name()` by `definition`, keeping the settings it has."""
    settings = op.get_bind().exec_driver_sql(
        f"SELECT coalesce(proconfig, '{{}}') FROM pg_proc WHERE oid = '{name}()'::regprocedure").scalar_one()
    op.execute(definition)
    for setting in settings:
        key, _, value = setting.partition("=")
        op.execute(f"ALTER FUNCTION {name}() SET {key} = {value}")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        replaced("journal_lines_refuse_sealed", sealed_guard(by_key=True))
        replaced(_0034.STATEMENT_FUNCTION, event_guard(kept=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        replaced("journal_lines_refuse_sealed", sealed_guard(by_key=False))
        replaced(_0034.STATEMENT_FUNCTION, event_guard(kept=False))
