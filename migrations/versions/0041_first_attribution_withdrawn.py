"""A customer's first attribution can be withdrawn before it starts, as its later ones can.

Migration 0040 kept a customer's first attribution: whether a customer had any attribution when a
payment was recorded, one that had not started included, decides whether the payment is
`unattributed` (migration 0034), and a payment recorded while the first stood would have
contradicted the attributions left. So a new customer's attribution dated a year wrong, or made to
the wrong partner from a later day, blocked every other attribution of that customer until it
started. `verify` now reads the withdrawn attributions too, each as standing from when it was
recorded until it was withdrawn, and the database's rule on an event's status reads the attributions
as they stand when the event is written, which a withdrawal made before it leaves right: the rule
that kept the first attribution goes. The other rules of a withdrawal stand (migration 0040).

Both engines: the withdrawal's trigger is remade without the rule (SQLite: dropped and created
again; PostgreSQL: its function replaced). Going back below this revision is refused while a
withdrawal names a customer's first attribution (one with no earlier attribution of its customer
left), which migration 0040's `verify` would name.

Revision ID: 0041
Revises: 0040
Create Date: 2026-12-05
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0041"
down_revision = "0040"
branch_labels = None
depends_on = None

_0018 = _revision("0018_rules_held.py")
_0040 = _revision("0040_scheduled_facts_withdrawn.py")

TABLE = _0040.TABLE


def _rules(now_us: str, *, first_kept: bool) -> tuple[tuple[str, str], ...]:
    return tuple(rule for rule in _0040.rules(now_us) if first_kept or rule[1] != _0040.FIRST_ATTRIBUTION_KEPT)


def _remake(*, first_kept: bool) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_0040.postgres_held(_rules(_0018.NOW_US_POSTGRES, first_kept=first_kept), "CREATE OR REPLACE"))
    else:
        op.execute(f"DROP TRIGGER trg_{TABLE}_held")
        op.execute(_0040.sqlite_held(_rules(_0018.NOW_US_SQLITE, first_kept=first_kept)))


def upgrade() -> None:
    _remake(first_kept=False)


def downgrade() -> None:
    firsts = op.get_bind().exec_driver_sql(
        f"SELECT count(*) FROM {TABLE} w WHERE w.fact_table = 'attributions' AND NOT EXISTS"
        " (SELECT 1 FROM attributions a WHERE a.customer_id = w.subject_id AND a.id < w.fact_id)").scalar()
    if firsts:
        raise RuntimeError(f"{TABLE} holds withdrawals of a customer's first attribution, which revision 0040 "
                           "refuses")
    _remake(first_kept=True)
