"""An accrual, CPA or override credits its partner's pending account on one line, in the database too.

Migration 0047 holds each of a commission's lines to its accounts (a debit of `expense:commission`,
or a credit of the pending account of the partner it names), and left how many to the seal. A
commission is what the rules of migration 0022 call a piece, "one transfer into the partner's
pending account": what is released or clawed back against it is read from its one credit line. A
commission in two credits (100.00 USD as 60.00 and 40.00, or a credit in USD and one in EUR),
written around the service with its hashes computed, passed every rule, and was no piece: its
money sat in pending, never released to available nor clawed back on a refund, while the partner's
statement showed it accrued. `ledger.revenue` and `ledger.commission` always write one debit and
one credit; `revshare verify` names such rows written before this revision (`earning_misposted`).
Debits are not counted: the commission's amount is its credit, and the seal holds that they balance
(so that a commission has a credit: the rule refuses a second).

SQLite: migration 0047's row trigger, made again with the count. PostgreSQL: the count joins the
commission's rule in the statement function, from the same scan of each header's lines. Rows
already written are left as they are.

Revision ID: 0048
Revises: 0047
Create Date: 2026-12-06
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0048"
down_revision = "0047"
branch_labels = None
depends_on = None

_0018 = _revision("0018_rules_held.py")  # sqlite_rule
_0047 = _revision("0047_earnings_and_writeoffs_in_their_accounts.py")

EARNING_MESSAGE = ("journal_transactions: an accrual, CPA or override moves money from expense:commission"
                   " to the pending account of the partner it names, in one credit")
CREDITS_OF_N = "(SELECT count(*) FROM journal_lines c WHERE c.transaction_id = n.id AND c.side = 'C')"

# The statement function's per-currency facts count the credits too, and the rule reads their sum.
ASTRAY_IN = "false END) AS astray"
ASTRAY_OUT = "bool_or(c.astray) AS astray"
REFUSED_0047 = "(n.partner_id IS NULL OR f.astray)"


def seal_function() -> str:
    """Migration 0047's statement function, its commission rule counting the credits."""
    function = _0047.seal_function(extended=True)
    for old, new in ((ASTRAY_IN, f"{ASTRAY_IN}, count(*) FILTER (WHERE l.side = 'C') AS credits"),
                     (ASTRAY_OUT, f"{ASTRAY_OUT}, sum(c.credits) AS credits"),
                     (REFUSED_0047, "(n.partner_id IS NULL OR f.astray OR f.credits > 1)"),
                     (_0047.EARNING_MESSAGE, EARNING_MESSAGE)):
        assert function.count(old) == 1, old
        function = function.replace(old, new)
    return function


def earning_trigger(refused_when: str, message: str) -> list[str]:
    return _0018.sqlite_rule("journal_transactions", "earning_posted", refused_when, message,
                             _0047.EARNING_KINDS).split(";\n\n")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER trg_journal_transactions_earning_posted")
        statements = earning_trigger(f"{_0047.misposted(_0047.EARNING_LINE)} OR {CREDITS_OF_N} > 1",
                                     EARNING_MESSAGE)
    else:
        statements = [seal_function(), f"ALTER FUNCTION journal_transactions_seal() {_0047.SEAL_SETTINGS}"]
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER trg_journal_transactions_earning_posted")
        statements = earning_trigger(_0047.misposted(_0047.EARNING_LINE), _0047.EARNING_MESSAGE)
    else:
        statements = [_0047.seal_function(extended=True),
                      f"ALTER FUNCTION journal_transactions_seal() {_0047.SEAL_SETTINGS}"]
    for statement in statements:
        op.execute(statement)
