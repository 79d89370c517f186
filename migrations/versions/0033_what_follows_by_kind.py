"""A posting for a partner never enrolled passes only as what follows from that partner's posting,
by its kind: a reversal from its original (`reverses_id`), a release or clawback from its piece
(`accrual_id`), and a won dispute's reinstatement from the piece its chargeback clawed back (of the
piece's kind and invoice, naming it in `accrual_id`: `ledger.revenue`).

Migration 0031 refused a transaction naming a partner that is not enrolled, but let one pass when
either transaction it names by `reverses_id` or `accrual_id` names that partner, whatever its own
kind: on books holding a posting written before 0031 for a partner never enrolled, a raw accrual,
CPA, override or adjustment for that partner, or a reversal of an original naming no partner,
passed by naming that posting in `accrual_id`. The service writes none of them (a reversal names its
original's partner, a release or clawback its piece's, a reinstatement the partner of the piece it
reinstates: `journal.reversal_draft`, `ledger.holds`, `ledger.revenue`), so only a writer going
around Python met the gap; now the database refuses them too. The reinstatement is told by what
the service writes of it, all on the header: a piece's kind, its piece's invoice, and a clawback
of its piece standing before it (the revenue event that carries the dispute is written after its
postings, where a header's trigger cannot see it).

SQLite: 0031's row trigger `trg_journal_transactions_partner_enrolled`, made again with the rule by
kind. PostgreSQL: the rule sits in migration 0032's one statement function over new headers, made
again with the rule by kind. Rows already written are left as they are.

Revision ID: 0033
Revises: 0032
Create Date: 2026-12-03
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0033"
down_revision = "0032"
branch_labels = None
depends_on = None


_0018 = _revision("0018_rules_held.py")  # sqlite_rule
_0031 = _revision("0031_program_rules_held.py")  # the enrolment rule as 0031 wrote it
_0032 = _revision("0032_postings_planned_once.py")  # the statement function that holds it on PostgreSQL

# The one transaction a posting may follow from, by the posting's kind; none for any other kind.
FOLLOWS_FROM = ("CASE WHEN n.kind = 'reversal' THEN n.reverses_id"
                " WHEN n.kind IN ('release', 'clawback', 'accrual', 'cpa', 'override') THEN n.accrual_id END")
# A piece of a piece's kind follows from the piece it names only as its reinstatement: of the same
# invoice, after a clawback of it (a chargeback's, which a won dispute undoes).
REINSTATES = ("n.kind IN ('reversal', 'release', 'clawback') OR (o.kind = n.kind AND o.invoice_id = n.invoice_id"
              " AND EXISTS (SELECT 1 FROM journal_transactions c WHERE c.accrual_id = o.id AND c.kind = 'clawback'))")
NOT_ENROLLED = ("NOT EXISTS (SELECT 1 FROM partners p WHERE p.id = n.partner_id)"
                " AND NOT EXISTS (SELECT 1 FROM journal_transactions o"
                f" WHERE o.id = {FOLLOWS_FROM} AND o.partner_id = n.partner_id AND ({REINSTATES}))")
TRIGGER = "trg_journal_transactions_partner_enrolled"


def seal_function(not_enrolled: str) -> str:
    """Migration 0032's statement function with the enrolment rule `not_enrolled`."""
    function = _0032.seal_function()
    assert function.count(_0031.NOT_ENROLLED) == 1, "0032's function holds 0031's enrolment rule once"
    return function.replace(_0031.NOT_ENROLLED, not_enrolled)


def sqlite_trigger(not_enrolled: str) -> str:
    return _0018.sqlite_rule("journal_transactions", "partner_enrolled", not_enrolled, _0031.NOT_ENROLLED_MESSAGE,
                             _0031.NAMES_A_PARTNER)


def _make(not_enrolled: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(seal_function(not_enrolled))
        return
    op.execute(f"DROP TRIGGER {TRIGGER}")
    op.execute(sqlite_trigger(not_enrolled))


def upgrade() -> None:
    _make(NOT_ENROLLED)


def downgrade() -> None:
    _make(_0031.NOT_ENROLLED)
