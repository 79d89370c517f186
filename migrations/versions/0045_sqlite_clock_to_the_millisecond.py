"""SQLite's guards read the database's clock to the millisecond, as its clock keeps it, not to the
second.

Four rules compare an instant with the database's clock (migrations 0018, 0034, 0040): a period is
closed once it has ended, a close is not dated ahead, a payout run is not dated ahead, and a fact is
withdrawn only while it starts more than ten minutes ahead. PostgreSQL reads `clock_timestamp()` to
the microsecond; SQLite read `strftime('%s', 'now')`, whole seconds, up to a second behind the
clock. The first three then refused a little more than they say (the service reads the same clock,
`ledger.db.database_now_us`, so it answered a 409 for them, never a refusal); the last let a
writer around the service withdraw a fact starting up to a second less than ten minutes ahead, a
second of the margin that keeps a withdrawn fact from having decided a posting by a server whose
clock is five minutes ahead.

SQLite's clock is kept in milliseconds (its Julian day number times 86,400,000); `strftime('%f')`
gives the seconds with them, and `'now'` is one instant throughout a statement, so the instant in
microseconds is the whole seconds' and the milliseconds' sum, a millisecond behind the clock at
most and exact in integers. The four triggers are made again with it; PostgreSQL is unchanged.

Revision ID: 0045
Revises: 0044
Create Date: 2026-12-05
"""

from alembic import op

from migrations.earlier import revision as _revision

revision = "0045"
down_revision = "0044"
branch_labels = None
depends_on = None

_0018 = _revision("0018_rules_held.py")
_0034 = _revision("0034_statuses_and_close_times_held.py")
_0040 = _revision("0040_scheduled_facts_withdrawn.py")

NOW_US_SQLITE = ("(CAST(strftime('%s', 'now') AS INTEGER) * 1000000"
                 " + CAST(substr(strftime('%f', 'now'), 4) AS INTEGER) * 1000)")
# (table, name, refused when, message, only when) of each SQLite rule that reads the clock, as it stood.
CLOCKED = tuple(
    (table, name, refused_when, message, only_when)
    for table, name, refused_when, message, only_when, engines in _0018.RULES
    if "sqlite" in engines and _0018.NOW_US_SQLITE in refused_when
) + tuple(rule for rule in _0034.SQLITE_RULES if _0018.NOW_US_SQLITE in rule[2])
assert [rule[:2] for rule in CLOCKED] == [("period_closes", "ended"), ("payout_runs", "not_ahead"),
                                          ("period_closes", "closed_in_time")], CLOCKED


def _remake(clock: str) -> None:
    for table, name, refused_when, message, only_when in CLOCKED:
        op.execute(f"DROP TRIGGER trg_{table}_{name}")
        op.execute(_0018.sqlite_rule(table, name, refused_when.replace(_0018.NOW_US_SQLITE, clock), message, only_when))
    op.execute(f"DROP TRIGGER trg_{_0040.TABLE}_held")
    # The withdrawal's rules as migration 0041 left them: without the one keeping a first attribution.
    op.execute(_0040.sqlite_held(tuple(rule for rule in _0040.rules(clock)
                                       if rule[1] != _0040.FIRST_ATTRIBUTION_KEPT)))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        _remake(NOW_US_SQLITE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        _remake(_0018.NOW_US_SQLITE)
