"""A close's snapshot is the journal's, for a writer that goes around Python (migration 0063): the
previous close's snapshot plus the lines dated since, account by account. A close written with a
snapshot of 100,000.00 USD more on a partner's available account was accepted, the liabilities
report showed it and the next payout run paid it. Each refusal has the service's close beside it."""

from __future__ import annotations

import pytest

from ledger import periods, revenue
from tests import program
from tests.integration.test_database_guards import refused
from tests.integration.test_migrations import code_changed_by
from tests.integration.test_tamper_evidence import problems

UNLIKE = "a snapshot is the previous snapshot and the lines dated since"
NOW_US = program.at("2026-06-01")


@pytest.fixture
def paid(database):
    """northwind's customers pay in January, February and March (globex overrides each)."""
    with database.transaction() as session:
        program.seed(session)
        revenue.ingest(session, [program.paid(f"e{month}", "acme", f"inv-{month}", 50_000, f"2026-0{month}-10")
                                 for month in (1, 2, 3)])
    return database


def altered(change):
    """`ledger.periods.sums` with `change` made to what it gives the close of March: the service
    closing as a writer around it would."""
    sums = periods.sums

    def changed(session, *args, before_us=None, **kwargs):
        found = sums(session, *args, before_us=before_us, **kwargs)
        return change(dict(found)) if before_us == program.at("2026-04-01") else found
    return changed


def more_on_one(rows):
    key = max(rows)
    debit, credit = rows[key]
    return {**rows, key: (debit, credit + 10_000_000)}


def one_missing(rows):
    return {key: value for key, value in rows.items() if key != max(rows)}


def one_more(rows):
    account_id, _currency = max(rows)
    return {**rows, (account_id, "EUR"): (0, 0)}


@pytest.mark.parametrize("change", [more_on_one, one_missing, one_more])
def test_a_close_whose_snapshot_is_not_the_journals_is_refused(paid, monkeypatch, change):
    for month in ("2026-01", "2026-02"):  # as the service closes them
        with paid.transaction() as session:
            periods.close_period(session, month, now_us=NOW_US)
    with monkeypatch.context() as patch:
        patch.setattr(periods, "sums", altered(change))

        def close(connection):
            from sqlalchemy.orm import Session
            periods.close_period(Session(bind=connection), "2026-03", now_us=NOW_US)
        refused(paid, close, UNLIKE)
    with paid.reader() as session:
        assert periods.latest_close(session).period == "2026-02"
    with paid.transaction() as session:  # the control: March as the service closes it
        assert periods.close_period(session, "2026-03", now_us=NOW_US).period == "2026-03"
    assert problems(paid) == set()


def test_months_closed_at_once_each_hold_their_snapshot(database):
    """A catch-up close (March and April, with no postings, and May): each month's snapshot is read
    against the one closed before it in the same transaction."""
    with database.transaction() as session:
        program.seed(session)
        revenue.ingest(session, [program.paid("e1", "acme", "inv-1", 50_000, "2026-01-10")])
    for month in ("2026-01", "2026-02"):  # the payment, then its release
        with database.transaction() as session:
            periods.close_period(session, month, now_us=NOW_US)
    with database.transaction() as session:
        assert periods.close_period(session, "2026-05", now_us=NOW_US).period == "2026-05"
    with database.reader() as session:
        assert [close.period for close in periods.list_periods(session)] == [
            "2026-01", "2026-02", "2026-03", "2026-04", "2026-05"]
        assert periods.snapshot(session, "2026-05") == periods.snapshot(session, "2026-02") != {}
    assert problems(database) == set()


def test_0063_goes_down_to_0062s_guards_as_they_were(empty_url):
    changed, postgres = code_changed_by(empty_url, "0062", "0063")
    assert changed == ({"function period_closes_snapshot_as_the_journal()",
                        "trigger trg_period_closes_snapshot_as_the_journal"} if postgres
                       else {"trigger trg_period_closes_snapshot_as_the_journal"}), changed
