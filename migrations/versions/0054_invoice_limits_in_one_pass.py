"""The guard of an invoice's limits reads the invoice's events once per check, in order of instant.

Migration 0014 checks a refund, chargeback or won dispute against its invoice at each instant from
its own on: for every event of the invoice dated at or after the new one, the sum of the invoice's
events dated up to that event's instant, each a query of its own. A check read the invoice's events
once for each of them, and a statement adding many events to one invoice (on PostgreSQL, a statement
trigger checks each new row) read them once more for each new row. Inserting refunds of one invoice
one by one took time growing with the cube of their number: 400 took 2 s on SQLite and 8 s on
PostgreSQL in one batch, 1,000 about 51 s on SQLite; after this revision, 0.3 s, 0.3 s and 1.1 s
(what is left grows with the square: each refund is checked against the invoice's other events, in
Python and by the guards of the journal's clawbacks, too). An invoice with thousands of refunds is
rare, but a batch holding one ran past any request's time, every time it was retried.

The rule is the same; each check now sums the invoice's events in order of instant with a window
(`sum(...) OVER (ORDER BY occurred_at_us)`: the default frame takes the events at an instant
together, so each running total holds every event dated up to its instant, as 0014's sums did) and
looks for a total past the limit at or after the new event's instant. A check reads the invoice's
events once, through the invoice index, and sorts them. SQLite: the row trigger, made again; SQLite
fires a table's triggers newest first, so a row written past Python that breaks this rule and
another is now refused with this rule's message (a downgrade leaves that order too); and its
`sum()` of integers stops at 2^63 - 1 in whichever order it adds, so only rows written around the
guards, with amounts near that, could be decided otherwise than by 0014.
PostgreSQL: the statement trigger's function checks each invoice the statement undoes once, from
the earliest instant among its new rows (an instant at or after some new row's is one at or after
the earliest), and keeps its settings (0023's search path), read from the catalog and set again.

Revision ID: 0054
Revises: 0053
Create Date: 2026-12-07
"""

import re

from alembic import op

from migrations.earlier import revision as _revision

revision = "0054"
down_revision = "0053"
branch_labels = None
depends_on = None

_0014 = _revision("0014_invoice_limits.py")
_0049 = _revision("0049_guards_planned_for_a_growing_journal.py")  # replaced(): keeps a function's settings

UNDOING, WON = _0014.UNDOING, "= 'chargeback_reversed'"


def broken(signed: str, test: str) -> str:
    """Some instant at or after n's, at which the invoice's `signed` amounts dated up to it fail `test`."""
    return (
        "SELECT 1 FROM (SELECT e.occurred_at_us AS at,"
        f" sum({signed}) OVER (ORDER BY e.occurred_at_us) AS total"
        " FROM revenue_events e WHERE e.invoice_id = n.invoice_id AND e.type <> 'invoice_paid') r"
        f" WHERE r.at >= n.occurred_at_us AND r.total {test}")


REFUNDED = broken("CASE e.type WHEN 'chargeback_reversed' THEN -e.amount_minor ELSE e.amount_minor END",
                  "> (SELECT p.amount_minor FROM revenue_events p"
                  " WHERE p.invoice_id = n.invoice_id AND p.type = 'invoice_paid')")
CHARGED_BACK = broken("CASE e.type WHEN 'chargeback' THEN e.amount_minor"
                      " WHEN 'chargeback_reversed' THEN -e.amount_minor ELSE 0 END", "< 0")


def new_row(condition: str) -> str:
    """The condition on a SQLite row trigger's NEW row instead of `n`."""
    return re.sub(r"\bn\.", "NEW.", condition)


def earliest(types: str) -> str:
    """Each invoice the statement adds events of `types` to, at the earliest instant among them."""
    return (f"(SELECT invoice_id, min(occurred_at_us) AS occurred_at_us FROM added WHERE type {types}"
            " GROUP BY invoice_id) n")


def remade(statement: str, *replacements: tuple[str, str]) -> str:
    """0014's `statement` with each (made, remade) part replaced."""
    for made, remaking in replacements:
        assert statement.count(made) == 1, made
        statement = statement.replace(made, remaking)
    return statement


SQLITE_GUARD = remade(_0014.SQLITE_GUARD, (new_row(_0014.REFUNDED), new_row(REFUNDED)),
                      (new_row(_0014.CHARGED_BACK), new_row(CHARGED_BACK)))
[_FUNCTION_0014] = [s for s in _0014.POSTGRES_GUARD.split(";\n\n") if s.lstrip().startswith("CREATE FUNCTION")]
POSTGRES_FUNCTION = remade(
    _FUNCTION_0014, ("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"),
    (f"SELECT 1 FROM added n WHERE n.type IN {UNDOING} AND EXISTS ({_0014.REFUNDED})",
     f"SELECT 1 FROM {earliest(f'IN {UNDOING}')} WHERE EXISTS ({REFUNDED})"),
    (f"SELECT 1 FROM added n WHERE n.type = 'chargeback_reversed' AND EXISTS ({_0014.CHARGED_BACK})",
     f"SELECT 1 FROM {earliest(WON)} WHERE EXISTS ({CHARGED_BACK})"))

FUNCTION = "revenue_events_within_invoice"


def sqlite_guard(statement: str) -> None:
    op.get_bind().exec_driver_sql("DROP TRIGGER trg_revenue_events_within_invoice")
    op.get_bind().exec_driver_sql(statement)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _0049.replaced(FUNCTION, POSTGRES_FUNCTION)
    else:
        sqlite_guard(SQLITE_GUARD)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _0049.replaced(FUNCTION, _FUNCTION_0014.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    else:
        sqlite_guard(_0014.SQLITE_GUARD)
