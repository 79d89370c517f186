"""A customer's CPA bounty is posted once, in the journal too.

`ledger.revenue` pays a CPA on a customer's first eligible paid invoice, and the database already
held that an event claims a customer at most once (`revenue_events.first_eligible_customer_id`,
migration 0003). The journal's `cpa` transactions were not held to it: a second bounty for the
same customer, inserted by raw SQL, was accepted. Now a `cpa` transaction that is a bounty of its
own (`accrual_id` is null; a won dispute's reinstatement of a CPA a chargeback clawed back names its
original, and is no second bounty) is refused when the customer has one already, on both engines.

A partial index on `customer_id` over the bounties (one row per customer who earned one) serves
the check. It is not a unique index, so that this migration never stops on a database that already
holds a second bounty (only raw SQL could have written one): rows already written are left as they
are, as in migration 0018, and `revshare verify` names them (`cpa_twice`). SQLite: a row trigger
after insert; PostgreSQL: a row trigger called only for bounties (migration 0018's makers).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from migrations.earlier import revision as _revision

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

_0018 = _revision("0018_rules_held.py")

BOUNTY = "kind = 'cpa' AND accrual_id IS NULL"
A_SECOND_BOUNTY = ("EXISTS (SELECT 1 FROM journal_transactions o WHERE o.customer_id = n.customer_id"
                   f" AND o.{BOUNTY.replace(' AND ', ' AND o.')} AND o.id <> n.id)")
MESSAGE = "journal_transactions: a customer earns one CPA bounty"


def upgrade() -> None:
    op.create_index("ix_journal_transactions_cpa_customer", "journal_transactions", ["customer_id"],
                    sqlite_where=sa.text(BOUNTY), postgresql_where=sa.text(BOUNTY))
    postgres = op.get_bind().dialect.name == "postgresql"
    make = _0018.postgres_rule if postgres else _0018.sqlite_rule
    only_when = " AND ".join(f"n.{condition}" for condition in BOUNTY.split(" AND "))
    for statement in make("journal_transactions", "cpa_once", A_SECOND_BOUNTY, MESSAGE, only_when).split(";\n\n"):
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the guards are only ever replaced by a new migration")
