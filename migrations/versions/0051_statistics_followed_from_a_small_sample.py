"""PostgreSQL: the statistics a growing batch has taken (migration 0050) come from a small sample.

What the batch's plans need is the tables' sizes, which `ANALYZE` counts from the pages it reads
whatever its sample; the histograms and common values it also takes are autovacuum's to take in
full, which it does once the batch commits (the batch's rows count as changes since the analyze).
At the default target (100: a sample of 30,000 rows a table) the analyze cost a batch of 10,000
payments on a new book 5-10% of its time, the ratio to the raw limit 55-60% against 61-66%
without it; at 10 (3,000 rows) 63-65% against 65-66%, two runs each, in turn (`python -m bench
--quick --engine postgres --only ingestion`, the function called or not). The batch on a journal
analyzed empty that 0050 is for still took 6.3 s against 23.8 s unfollowed (`python -m
bench.statistics`). SQLite: nothing.

Revision ID: 0051
Revises: 0050
Create Date: 2026-12-06
"""

from alembic import op

revision = "0051"
down_revision = "0050"
branch_labels = None
depends_on = None

FUNCTION = "journal_statistics_follow()"
SAMPLE_TARGET = 10


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER FUNCTION {FUNCTION} SET default_statistics_target = {SAMPLE_TARGET}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER FUNCTION {FUNCTION} RESET default_statistics_target")
