"""Each job with an explicit instant, idempotent on rerun; races on PostgreSQL post once; a failing
job does not stop the scheduler."""

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
import tzlocal
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from jobs import bodies
from jobs.scheduler import CatchUp, build_scheduler, start_up, triggers
from ledger import holds, journal, program_chain, revenue
from ledger.balances import partner_balances
from ledger.db import JOURNAL_LOCK_KEY, Database
from ledger.errors import InvalidInput
from ledger.instants import from_us
from ledger.periods import close_period, list_periods
from ledger.payouts import run_payouts
from ledger.schema import journal_transactions, payout_runs, payouts, period_closes
from ledger.settings import Settings
from ledger.verify import parse_head, verify
from tests.program import at, monthly_events, seed, tampered_books


@pytest.fixture
def books(database):
    with database.transaction() as session:
        seed(session)
        results = revenue.ingest(session, monthly_events())
    assert not [r for r in results if isinstance(r, revenue.Refusal)]
    return database


def count(database, kind: str) -> int:
    with database.reader() as session:
        return session.execute(select(func.count()).select_from(journal_transactions)
                               .where(journal_transactions.c.kind == kind)).scalar_one()


def test_the_release_job_releases_what_matured_by_its_instant_once(books):
    first = bodies.run_job(books, "release_holds", bodies.release_holds, at("2026-02-15"))
    again = bodies.run_job(books, "release_holds", bodies.release_holds, at("2026-02-15"))
    later = bodies.run_job(books, "release_holds", bodies.release_holds, at("2026-03-15"))
    # January's three invoices and their overrides matured on 2026-02-09; the refund of inv-acme-1
    # (posted 2026-02-20) already released that invoice's two pieces before clawing back, so 4 remain.
    # February's six pieces matured on 2026-03-12.
    assert first.figures == {"released": 4} and again.figures == {"released": 0}
    assert later.figures["released"] == 6
    with books.reader() as session:
        pending, available = partner_balances(session, "northwind", before_us=at("2026-02-15"))["USD"]
        after_refund = partner_balances(session, "northwind", before_us=at("2026-02-21"))["USD"]
    assert (pending, available) == (12_000, 12_000)  # February accrued, January released
    assert after_refund == (12_000, 12_000 - 500)  # the 2,500 refund of a 10,000 invoice claws 500 back
    t = journal_transactions.c
    with books.reader() as session:
        named = session.execute(select(t.invoice_id, t.event_id).where(t.kind == "release")).all()
    # Each names the payment that accrued its piece: the two the refund released too, not the refund.
    assert len(named) == 12 and all(event_id == f"e-{invoice_id}" for invoice_id, event_id in named)


def test_the_close_job_catches_up_on_every_overdue_month_oldest_first(books):
    settings = Settings.build(database_url=books.url, close_grace_days=3)
    close = bodies.job_table(settings)["close_periods"]
    early = bodies.run_job(books, "close_periods", close, at("2026-05-03T23:59:59Z"))
    caught_up = bodies.run_job(books, "close_periods", close, at("2026-05-10"))
    again = bodies.run_job(books, "close_periods", close, at("2026-05-10"))
    # Each writer job first releases what matured by its instant, in transactions of its own: by
    # May 3, January's 4 pieces left, February's 6 and March's 6; April's 6 by May 10.
    assert early.figures == {"closed": ["2026-01", "2026-02", "2026-03"], "released": 16}
    assert caught_up.figures == {"closed": ["2026-04"], "released": 6}
    assert again.figures == {"closed": [], "released": 0}
    with books.reader() as session:
        assert [close.period for close in list_periods(session)] == ["2026-01", "2026-02", "2026-03", "2026-04"]


def test_a_writer_job_releases_matured_holds_a_few_to_a_transaction_before_its_own(books, monkeypatch):
    monkeypatch.setattr(holds, "HOLDS_PER_TRANSACTION", 5)
    opened, posted = books.transaction, []

    @contextlib.contextmanager
    def counting():
        with opened() as session:
            before = count_in(session, "release")
            yield session
            posted.append((count_in(session, "release") - before, count_in(session, "close")))

    monkeypatch.setattr(books, "transaction", counting)
    settings = Settings.build(database_url=books.url, close_grace_days=3)
    result = bodies.run_job(books, "close_periods", bodies.job_table(settings)["close_periods"], at("2026-05-03"))
    assert result.figures == {"closed": ["2026-01", "2026-02", "2026-03"], "released": 16}
    # (releases posted, closes made) by each transaction: 16 holds, 5 to a transaction, then the closes alone
    assert posted == [(5, 0), (5, 0), (5, 0), (1, 0), (0, 3)]


def count_in(session, kind: str) -> int:
    if kind == "close":
        return session.execute(select(func.count()).select_from(period_closes)).scalar_one()
    return session.execute(select(func.count()).select_from(journal_transactions)
                           .where(journal_transactions.c.kind == kind)).scalar_one()


def test_the_payout_job_runs_once_per_day(books):
    first = bodies.run_job(books, "payout_run", bodies.payout_run, at("2026-04-01T01:00:00Z"))
    rerun = bodies.run_job(books, "payout_run", bodies.payout_run, at("2026-04-01T13:00:00Z"))
    # northwind: 24,000 released minus the 500 clawback; globex's overrides (2,350) are under its 5,000 minimum
    assert first.figures["payouts"] == 1 and first.figures["replayed"] is False
    assert first.figures["released"] == 10  # January's 4 pieces left and February's 6 (March's mature April 9)
    assert rerun.figures == {**first.figures, "replayed": True, "released": 0}
    assert count(books, "payout") == 1


def payout_job(day_of_month: int):
    return lambda session, at_us: bodies.payout_run(session, at_us, day_of_month=day_of_month)


def run_instants(database) -> list[int]:
    with database.reader() as session:
        return session.execute(select(payout_runs.c.at_us).order_by(payout_runs.c.at_us)).scalars().all()


def test_the_payout_job_makes_the_run_due_last_on_its_day_or_the_first_day_it_runs_after(books):
    # The scheduler was down on April 28 and May 1: on May 2 the job makes April 28's run, as of then.
    late = bodies.run_job(books, "payout_run", payout_job(28), at("2026-05-02T01:00:00Z"))
    assert late.figures["payouts"] == 1 and late.figures["replayed"] is False
    assert run_instants(books) == [at("2026-04-28")]
    again = bodies.run_job(books, "payout_run", payout_job(28), at("2026-05-27T01:00:00Z"))
    # May 28 has not come: April's is the one due; April's 6 pieces matured on May 10
    assert again.figures == {**late.figures, "replayed": True, "released": 6}
    assert bodies.run_job(books, "payout_run", payout_job(28), at("2026-05-28T01:00:00Z")).figures["replayed"] is False
    assert run_instants(books) == [at("2026-04-28"), at("2026-05-28")]


def test_a_payout_run_due_in_a_period_closed_since_is_reported_missed(books, caplog):
    with books.transaction() as session:
        for period in ("2026-01", "2026-02", "2026-03"):
            close_period(session, period)
    with caplog.at_level(logging.WARNING, logger="revshare.jobs"):
        missed = bodies.run_job(books, "payout_run", payout_job(28), at("2026-04-02T01:00:00Z"))
    assert missed.figures == {"run_id": None, "missed": "2026-03-28T00:00:00Z", "released": 0}  # by the closes
    assert run_instants(books) == []
    assert "payout run due at 2026-03-28T00:00:00Z was missed" in caplog.text


def test_the_payout_runs_not_made_while_the_scheduler_was_down_are_named_and_the_one_due_last_made(books, caplog):
    assert bodies.run_job(books, "payout_run", payout_job(1), at("2026-02-01T01:00:00Z")).figures["run_id"]
    with caplog.at_level(logging.WARNING, logger="revshare.jobs"):
        bodies.run_job(books, "payout_run", payout_job(1), at("2026-03-01T01:00:00Z"))  # the next, on its day
    assert "were not made" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="revshare.jobs"):  # down from March 2 to May 5
        bodies.run_job(books, "payout_run", payout_job(1), at("2026-05-05T01:00:00Z"))
    assert ("payout runs due at 2026-04-01T00:00:00Z were not made (the scheduler was not running then): the run "
            "due at 2026-05-01T00:00:00Z pays every balance they would have paid") in caplog.text
    assert run_instants(books) == [at("2026-02-01"), at("2026-03-01"), at("2026-05-01")]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="revshare.jobs"):  # the job again that day: a replay, said once
        assert bodies.run_job(books, "payout_run", payout_job(1), at("2026-05-05T02:00:00Z")).figures["replayed"]
    assert "were not made" not in caplog.text


def test_a_missed_payout_run_s_warning_says_from_when_to_make_it_by_hand_and_that_run_is_the_months(books, caplog):
    # Made at the instant it was due, it is refused (a closed period): the warning must name the
    # first instant it can be made at, and when the next scheduled run would pay the balances anyway.
    with books.transaction() as session:
        for period in ("2026-01", "2026-02", "2026-03"):
            close_period(session, period)
    with caplog.at_level(logging.WARNING, logger="revshare.jobs"):
        bodies.run_job(books, "payout_run", payout_job(28), at("2026-04-02T01:00:00Z"))
    assert ("make it by hand at or after 2026-04-01T00:00:00Z, the start of the first open period "
            "(revshare payout-run, or POST /v1/payout-runs), or the run due at 2026-04-28T00:00:00Z pays "
            "these balances") in caplog.text
    with books.transaction() as session:
        by_hand = run_payouts(session, at("2026-04-01"))
    job = bodies.run_job(books, "payout_run", payout_job(28), at("2026-04-03T01:00:00Z"))
    assert job.figures == {"run_id": by_hand.id, "payouts": 1, "replayed": True, "released": 0}


def test_a_scheduler_started_after_the_day_s_job_times_makes_the_run_due_before_the_close_seals_its_month(books):
    # Grace 0 and payout day 28, started on 2026-03-01 at 02:00, after the day's job times (a
    # restart): February's run, due 2026-02-28T00:00Z, is made at once and before February closes.
    settings = Settings.build(database_url=books.url, close_grace_days=0, payout_day_of_month=28)
    start_up(books, bodies.job_table(settings), at("2026-03-01T02:00:00Z"))
    with books.reader() as session:
        runs = session.execute(select(payout_runs.c.at_us)).scalars().all()
        closed = session.execute(select(period_closes.c.period).order_by(period_closes.c.period)).scalars().all()
    assert runs == [at("2026-02-28")] and closed == ["2026-01", "2026-02"]
    assert count(books, "payout") == 1


def test_a_job_failing_at_start_is_logged_and_the_next_still_runs(books, caplog):
    def failing(session, at_us):
        raise RuntimeError("database unreachable")

    with caplog.at_level(logging.ERROR, logger="revshare.scheduler"):
        start_up(books, {"payout_run": failing, "close_periods": bodies.job_table(
            Settings.build(database_url=books.url, close_grace_days=0))["close_periods"]}, at("2026-03-01T02:00:00Z"))
    assert "job payout_run failed at start: RuntimeError('database unreachable')" in caplog.text
    with books.reader() as session:
        assert session.execute(select(func.count()).select_from(period_closes)).scalar_one() == 2


def test_a_job_time_that_passes_while_the_scheduler_starts_up_is_run_when_it_has_started(sqlite_database,
                                                                                          monkeypatch):
    # The start-up runs (a catch-up after downtime can take minutes) come before the scheduler
    # starts: a job time that passed meanwhile, verify's 03:00 behind a start at 02:50, say, must be
    # run once the scheduler has started (within the misfire grace), not put off to the next day.
    from jobs import scheduler as process

    first_time = datetime.now(timezone.utc) + timedelta(milliseconds=300)
    ran, started = [], []

    def tick(session, at_us):
        ran.append(at_us)
        return {}

    def long_catch_up(session, at_us):
        deadline = time.monotonic() + 10
        while datetime.now(timezone.utc) <= first_time + timedelta(milliseconds=200) and time.monotonic() < deadline:
            time.sleep(0.02)
        return {}

    class Recorded(BackgroundScheduler):  # run() starts it and returns, so that the test can stop it
        def start(self, *args, **kwargs):
            started.append(self)
            super().start(*args, **kwargs)

    made: list[Database] = []  # run() disposes of its database as start() returns: the jobs after it connect anew

    def recorded_database(url: str) -> Database:
        made.append(Database(url))
        return made[-1]

    never = DateTrigger(datetime(2100, 1, 1, tzinfo=timezone.utc))
    monkeypatch.setattr(process, "BlockingScheduler", Recorded)
    monkeypatch.setattr(process, "Database", recorded_database)
    monkeypatch.setattr(process, "job_table", lambda settings: {
        "tick": tick, "payout_run": long_catch_up, "close_periods": lambda session, at_us: {}})
    monkeypatch.setattr(process, "triggers", lambda settings: {
        "tick": IntervalTrigger(days=1, start_date=first_time), "payout_run": never, "close_periods": never})
    process.run(Settings.build(database_url=sqlite_database.url))
    [scheduler] = started
    try:
        deadline = time.monotonic() + 10
        while not ran and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        scheduler.shutdown(wait=True)
        for database in made:
            database.dispose()
    assert len(ran) == 1


def test_a_scheduler_started_on_books_with_no_posting_records_no_run_so_history_loaded_later_is_paid_in_order(
        database):
    # The scheduler now runs the payout job as it starts, often before anything is loaded: an empty
    # run recorded at the run due would refuse every run before it (runs are made in time order),
    # as the demo's monthly runs since 2025-11, or finance's after an import of history, need.
    from ledger.demo import load_demo

    start_up(database, bodies.job_table(Settings.build(database_url=database.url)), at("2026-12-02T02:00:00Z"))
    with database.reader() as session:
        assert session.execute(select(func.count()).select_from(payout_runs)).scalar_one() == 0
    with database.transaction() as session:
        loaded = load_demo(session, now=at("2026-12-02T03:00:00Z"))
    assert loaded.closed_periods == 12
    job = bodies.run_job(database, "payout_run", bodies.payout_run, at("2026-12-02T04:00:00Z"))
    assert job.figures["replayed"] is False and job.figures["payouts"] > 0  # December's, after the demo's


def test_a_run_made_by_hand_on_payout_day_is_the_months_run(books):
    with books.transaction() as session:
        by_hand = run_payouts(session, at("2026-04-01T00:20:00Z"))
    job = bodies.run_job(books, "payout_run", bodies.payout_run, at("2026-04-01T01:00:00Z"))
    assert job.figures == {"run_id": by_hand.id, "payouts": len(by_hand.payouts), "replayed": True, "released": 0}
    assert count(books, "payout") == len(by_hand.payouts) == 1


def test_the_close_job_closes_a_period_at_the_instant_its_settings_grace_days_have_passed(books):
    # March ends on April 1: with 5 grace days it is due at 2026-04-06T00:00:00Z, not a moment before.
    close = bodies.job_table(Settings.build(database_url=books.url, close_grace_days=5))["close_periods"]
    early = bodies.run_job(books, "close_periods", close, at("2026-04-05T23:59:59Z"))
    due = bodies.run_job(books, "close_periods", close, at("2026-04-06"))
    assert early.figures["closed"] == ["2026-01", "2026-02"] and due.figures["closed"] == ["2026-03"]


def test_the_payout_job_run_at_the_instant_a_run_falls_due_makes_that_run(books):
    first = bodies.run_job(books, "payout_run", bodies.payout_run, at("2026-04-01"))
    assert first.figures["payouts"] == 1 and first.figures["replayed"] is False
    assert run_instants(books) == [at("2026-04-01")]


def test_a_payout_run_due_at_the_end_of_a_closed_period_lies_in_the_next_and_is_made(books):
    with books.transaction() as session:
        for period in ("2026-01", "2026-02", "2026-03"):
            close_period(session, period)
    made = bodies.run_job(books, "payout_run", bodies.payout_run, at("2026-04-01T01:00:00Z"))
    assert made.figures["payouts"] == 1 and made.figures["replayed"] is False
    assert run_instants(books) == [at("2026-04-01")]  # the first instant of April, which is open


def test_the_payout_job_of_the_production_table_runs_on_the_settings_day(books):
    job = bodies.job_table(Settings.build(database_url=books.url, payout_day_of_month=28))["payout_run"]
    bodies.run_job(books, "payout_run", job, at("2026-05-02T01:00:00Z"))
    assert run_instants(books) == [at("2026-04-28")]


def test_the_verify_job_reports_figures(books):
    result = bodies.run_job(books, "verify", bodies.verify_books, at("2026-05-01"))
    assert result.figures["ok"] is True and result.figures["problems"] == 0
    with books.reader() as session:
        assert verify(session, head=parse_head(result.figures["head"])).ok  # the head to record, in the log
        program_head = parse_head(result.figures["program_head"])
        assert verify(session, program_head=program_head).ok and program_head == program_chain.head(session)
    # accruals and overrides of 12 invoices, the refund's 2 clawbacks and the 2 releases before them
    assert result.figures["transactions_checked"] == 24 + 2 + 2 == sum(
        count(books, kind) for kind in ("accrual", "override", "clawback", "release"))


def test_the_verify_job_gives_no_head_to_record_when_the_books_have_problems(sqlite_database, caplog):
    tampered_books(sqlite_database)
    with sqlite_database.transaction() as session:  # and a problem of no transaction: a guard dropped
        session.connection().exec_driver_sql("DROP TRIGGER trg_journal_lines_no_update")
    with caplog.at_level(logging.ERROR, logger="revshare.jobs"):
        result = bodies.run_job(sqlite_database, "verify", bodies.verify_books, at("2026-05-01"))
    assert result.figures["ok"] is False and result.figures["problems"] == 5 and result.figures["head"] is None
    assert result.figures["program_head"] is None
    logged = [record.getMessage() for record in caplog.records if record.getMessage().startswith("verify: ")]
    assert len(logged) == 5 and "verify: guard_missing: the database has no trigger trg_journal_lines_no_update" in (
        "\n".join(logged))
    assert all(re.fullmatch(r"verify: (transaction [0-9]+: )?[a-z_]+: .+", line) for line in logged), logged


@pytest.mark.postgres
@pytest.mark.parametrize("job", ["release_holds", "close_periods", "payout_run"])
def test_two_schedulers_running_a_job_at_once_post_once(postgres_database, job):
    with postgres_database.transaction() as session:
        seed(session)
        revenue.ingest(session, monthly_events())
    body = bodies.job_table(Settings.build(database_url=postgres_database.url))[job]
    barrier, results, errors = threading.Barrier(2), [], []

    def race():
        barrier.wait()
        try:
            results.append(bodies.run_job(postgres_database, job, body, at("2026-06-01T02:00:00Z")).figures)
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=race) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with postgres_database.reader() as session:
        kinds = dict(session.execute(select(journal_transactions.c.kind, func.count())
                                     .group_by(journal_transactions.c.kind)).all())
        payout_rows = session.execute(select(func.count()).select_from(payouts)).scalar_one()
        closes = [c.period for c in list_periods(session)]
    if job == "close_periods":
        # May ended on 06-01, within the 3 grace days: January to April close
        assert sorted(r["closed"] for r in results) == [[], ["2026-01", "2026-02", "2026-03", "2026-04"]]
        assert closes == ["2026-01", "2026-02", "2026-03", "2026-04"]
    # every job first releases what matured by its instant: every hold of January to April, exactly once
    assert kinds["release"] == 24 and sum(r["released"] for r in results) == 24 - 2  # 2 by the refund
    if job == "payout_run":
        assert sorted(r["replayed"] for r in results) == [False, True] and payout_rows == 1


@pytest.mark.postgres
def test_a_job_reads_under_the_journal_lock(postgres_database):
    # The close and payout bodies choose their work from the latest close and run: read before the
    # lock, a close made by hand meanwhile made the job's own close of that period a conflict.
    probes = []

    def probe(session, at_us):
        with postgres_database.engine.connect() as other:
            probes.append(other.execute(text("SELECT pg_try_advisory_xact_lock(:key)"),
                                        {"key": JOURNAL_LOCK_KEY}).scalar_one())
            other.rollback()
        return {}
    bodies.run_job(postgres_database, "close_periods", probe, at("2026-06-01"))
    assert probes == [False]



def post_maturing_as_posted(session) -> None:
    """Another writer's posting: the accrual (and its override) of a payment dated so that its hold
    (30 days) matures at the instant it is posted."""
    occurred_us = journal.now_us() - 30 * 86_400_000_000
    revenue.ingest(session, [revenue.RevenueEvent("e-waited", "invoice_paid", "acme", "inv-waited", "USD", 10_000,
                                                  occurred_us)])


def test_the_release_job_made_while_another_writer_posted_releases_what_matured_while_it_waited(books, monkeypatch):
    # Read before the job's lock, its instant was before the other writer's posting: the hold that
    # matured while the job waited was left held until the next run, an hour later.
    from tests.interleaving import another_writer_while_waiting

    with another_writer_while_waiting(monkeypatch, books, post_maturing_as_posted):
        result = bodies.run_job(books, "release_holds", bodies.release_holds)
    assert result.figures == {"released": 22 + 2} and count(books, "release") == 24 + 2


def test_the_close_job_made_while_another_writer_posted_is_not_dated_before_that_posting(books, monkeypatch):
    from tests.interleaving import another_writer_while_waiting

    body = bodies.job_table(Settings.build(database_url=books.url, close_grace_days=0))["close_periods"]
    with another_writer_while_waiting(monkeypatch, books, post_maturing_as_posted):
        result = bodies.run_job(books, "close_periods", body)
    with books.reader() as session:
        [closed_at_us] = session.execute(select(func.min(period_closes.c.closed_at_us))).scalars().all()
        recorded_us = session.execute(select(func.max(journal_transactions.c.recorded_at_us))
                                      .where(journal_transactions.c.event_id == "e-waited")).scalar_one()
    assert result.figures["closed"][0] == "2026-01" and closed_at_us >= recorded_us, (closed_at_us, recorded_us)


def test_a_failing_job_is_logged_and_the_scheduler_keeps_running(sqlite_database, caplog):
    ticks, booms = [], []

    def tick(session, at_us):
        ticks.append(at_us)
        return {"ticks": len(ticks)}

    def boom(session, at_us):
        booms.append(at_us)
        raise RuntimeError("the job broke")

    scheduler = build_scheduler(Settings.build(database_url=sqlite_database.url), sqlite_database,
                                scheduler=BackgroundScheduler(timezone="UTC"),
                                jobs={"tick": tick, "boom": boom},
                                schedule={"tick": IntervalTrigger(seconds=0.2), "boom": IntervalTrigger(seconds=0.2)})
    with caplog.at_level(logging.ERROR, logger="revshare.scheduler"):
        scheduler.start()
        deadline = time.monotonic() + 10
        while (len(booms) < 3 or len(ticks) < 3) and time.monotonic() < deadline:
            time.sleep(0.05)
        running = scheduler.running
        scheduler.shutdown(wait=True)
    assert running and len(booms) >= 3 and len(ticks) >= 3
    assert "job boom failed: RuntimeError('the job broke')" in caplog.text


def test_a_job_up_to_an_hour_late_still_runs_and_one_later_is_logged_missed(sqlite_database, caplog):
    ran, now = [], datetime.now(timezone.utc)

    def late(session, at_us):
        ran.append(at_us)
        return {}

    def later(session, at_us):
        raise AssertionError("a run missed by more than the misfire grace must not be made")

    scheduler = build_scheduler(Settings.build(database_url=sqlite_database.url), sqlite_database,
                                scheduler=BackgroundScheduler(timezone="UTC"), jobs={"late": late, "later": later},
                                schedule={"late": DateTrigger(now - timedelta(minutes=50)),
                                          "later": DateTrigger(now - timedelta(minutes=70))})
    with caplog.at_level(logging.WARNING, logger="revshare.scheduler"):
        scheduler.start()
        deadline = time.monotonic() + 10
        while (not ran or "missed its run" not in caplog.text) and time.monotonic() < deadline:
            time.sleep(0.05)
        scheduler.shutdown(wait=True)
    assert len(ran) == 1
    assert "job later missed its run at" in caplog.text and "job late missed" not in caplog.text
    assert "was missed by" not in caplog.text  # APScheduler's own line, a second one for the same miss


def test_the_production_schedule_is_in_utc_whatever_the_host_s_time_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    tzlocal.reload_localzone()
    try:
        schedule = triggers(Settings.build(database_url="sqlite://"))
    finally:
        monkeypatch.undo()
        tzlocal.reload_localzone()
    noon = datetime(2026, 4, 1, 12, tzinfo=timezone.utc)
    fire = {name: schedule[name].get_next_fire_time(None, noon).astimezone(timezone.utc)
            for name in ("close_periods", "payout_run", "verify")}
    assert fire == {"payout_run": datetime(2026, 4, 2, 0, 30, tzinfo=timezone.utc),
                    "close_periods": datetime(2026, 4, 2, 1, tzinfo=timezone.utc),
                    "verify": datetime(2026, 4, 2, 3, tzinfo=timezone.utc)}


def test_the_production_schedule_has_one_entry_per_job_with_no_overlap(sqlite_database):
    scheduler = build_scheduler(Settings.build(database_url=sqlite_database.url, payout_day_of_month=5),
                                sqlite_database, scheduler=BackgroundScheduler(timezone="UTC"))
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert sorted(jobs) == ["close_periods", "payout_run", "release_holds", "verify"]
    assert all(job.max_instances == 1 and job.coalesce for job in jobs.values())
    assert str(jobs["payout_run"].trigger) == "cron[hour='0', minute='30']"  # daily: the body knows the day


def test_the_release_job_s_times_do_not_move_when_the_scheduler_restarts():
    # Counted from each start, the first release came a whole interval after every restart: a
    # scheduler restarted more often than that (deploys, a supervisor) never released a hold.
    settings = Settings.build(database_url="sqlite://", release_interval_minutes=1440)
    now = datetime.now(timezone.utc)
    first = triggers(settings)["release_holds"].get_next_fire_time(None, now)
    time.sleep(0.01)  # a restart
    again = triggers(settings)["release_holds"].get_next_fire_time(None, now)
    assert first == again and now <= first <= now + timedelta(days=1)
    hourly = triggers(Settings.build(database_url="sqlite://"))["release_holds"].get_next_fire_time(None, now)
    assert (hourly.minute, hourly.second, hourly.microsecond) == (0, 0, 0)  # on the hour


def clock_stepped_back_after_each_read(monkeypatch, skewed_clock, step_us: int) -> None:
    """The clock a job reads its instant from is stepped back `step_us` just after (an NTP step)."""
    read = bodies.clock_now_us

    def read_then_step() -> int:
        instant = read()
        skewed_clock.offset_us -= step_us
        return instant
    monkeypatch.setattr(bodies, "clock_now_us", read_then_step)


@pytest.mark.parametrize("job", ["release_holds", "close_periods", "payout_run"])
def test_a_job_whose_clock_steps_back_two_seconds_after_it_reads_its_instant_still_does_its_work(
        books, monkeypatch, skewed_clock, job):
    clock_stepped_back_after_each_read(monkeypatch, skewed_clock, 2_000_000)
    body = bodies.job_table(Settings.build(database_url=books.url))[job]
    result = bodies.run_job(books, job, body)
    # Every hold of January to April matured months ago: all released, but the 2 the refund released.
    assert result.figures["released"] == 24 - 2 and count(books, "release") == 24
    if job == "payout_run":
        assert result.figures["payouts"] == 1 and not result.figures["replayed"]
    if job == "close_periods":
        assert result.figures["closed"][:4] == ["2026-01", "2026-02", "2026-03", "2026-04"]


def test_a_job_whose_clock_steps_back_past_the_skew_bound_after_it_reads_its_instant_is_refused(
        books, monkeypatch, skewed_clock):
    clock_stepped_back_after_each_read(monkeypatch, skewed_clock, journal.CLOCK_SKEW_US + 1_000_000)
    with pytest.raises(InvalidInput, match="in the future"):
        bodies.run_job(books, "release_holds", bodies.release_holds)
    # The releases made before the body, as of the instant their own transaction read, stand.
    assert count(books, "release") == 24


def test_the_payout_job_a_second_after_its_run_falls_due_on_a_clock_stepped_back_two_seconds_makes_that_run(
        books, skewed_clock):
    due_us = at("2026-12-01")
    skewed_clock.offset_us = due_us - 1_000_000 - bodies.clock_now_us()  # now reads 23:59:59 of the day before
    result = bodies.run_job(books, "payout_run", bodies.payout_run, due_us + 1_000_000)
    assert result.figures["payouts"] == 1 and not result.figures["replayed"]
    assert run_instants(books) == [due_us]


def unavailable() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused\nIs the server running?"))


def flaky(failures: int, body):
    """`body`, failing its first `failures` calls as on a database that is down."""
    calls = []

    def run(session, at_us):
        calls.append(at_us)
        if len(calls) <= failures:
            raise unavailable()
        return body(session, at_us)
    return run


def test_a_payout_job_failing_at_start_on_an_unavailable_database_runs_again_with_the_close_after_it(books, caplog):
    settings = Settings.build(database_url=books.url, close_grace_days=0, payout_day_of_month=28)
    table = bodies.job_table(settings)
    catch_up = CatchUp(books, {"payout_run": flaky(1, table["payout_run"]), "close_periods": table["close_periods"]})
    with caplog.at_level(logging.ERROR, logger="revshare.scheduler"):
        catch_up.run(at("2026-03-01T02:00:00Z"))
    assert catch_up.owed and run_instants(books) == [] and closed_periods(books) == []  # the close waits for the run
    assert ("job payout_run failed at start: the database is unavailable: connection refused; it will run again "
            "within 5 minutes") in caplog.text
    catch_up.retry()  # at its own instant, now: the run due last and every period due by now
    [due_us] = run_instants(books)
    assert not catch_up.owed and from_us(due_us).day == 28 and due_us > at("2026-11-01")
    assert closed_periods(books)[:4] == ["2026-01", "2026-02", "2026-03", "2026-04"]
    catch_up.retry()  # nothing owed: nothing run
    assert run_instants(books) == [due_us]


def closed_periods(database) -> list[str]:
    with database.reader() as session:
        return session.execute(select(period_closes.c.period).order_by(period_closes.c.period)).scalars().all()


def test_a_close_job_failing_at_its_time_on_an_unavailable_database_is_run_again_within_minutes_not_the_next_day(
        books, monkeypatch, caplog):
    from jobs import scheduler as process

    monkeypatch.setattr(process, "RETRY_MINUTES", 0.005)  # 0.3 s
    settings = Settings.build(database_url=books.url)
    table = bodies.job_table(settings)
    catch_up = CatchUp(books, table)
    now = datetime.now(timezone.utc)
    scheduler = build_scheduler(settings, books, scheduler=BackgroundScheduler(timezone="UTC"),
                                jobs={"close_periods": flaky(1, table["close_periods"])},
                                schedule={"close_periods": DateTrigger(now + timedelta(milliseconds=100))},
                                catch_up=catch_up)
    catch_up.schedule_retries(scheduler)
    with caplog.at_level(logging.INFO):
        scheduler.start()
        try:
            deadline = time.monotonic() + 20
            while not closed_periods(books) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            scheduler.shutdown(wait=True)
    assert closed_periods(books)[:4] == ["2026-01", "2026-02", "2026-03", "2026-04"]
    assert "job close_periods failed: the database is unavailable: connection refused" in caplog.text
    # One line per failure to reach the database: neither its traceback nor APScheduler's.
    assert "Traceback" not in caplog.text and "raised an exception" not in caplog.text


def test_a_job_failing_for_another_reason_is_logged_once_with_its_traceback_and_not_retried(
        sqlite_database, caplog):
    def broken(session, at_us):
        raise RuntimeError("the job broke")

    catch_up = CatchUp(sqlite_database, {"payout_run": broken, "close_periods": broken})
    scheduler = build_scheduler(Settings.build(database_url=sqlite_database.url), sqlite_database,
                                scheduler=BackgroundScheduler(timezone="UTC"), jobs={"payout_run": broken},
                                schedule={"payout_run": DateTrigger(datetime.now(timezone.utc))}, catch_up=catch_up)
    with caplog.at_level(logging.INFO):
        scheduler.start()
        try:
            deadline = time.monotonic() + 10
            while "job payout_run failed" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            scheduler.shutdown(wait=True)
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in failures] == [
        "job payout_run failed: RuntimeError('the job broke'); it will run again at its next time"]
    assert failures[0].exc_info is not None and not catch_up.owed


def test_the_scheduler_process_stops_on_sigterm_with_exit_status_0_and_says_so_in_its_log(books):
    # SIGTERM is how systemd, Docker and Kubernetes stop it: it ended the process at once (status
    # -15), with no line in the log, and as a container's process 1 it was ignored.
    with running_scheduler(books.url) as process:
        log = read_log_until(process, "job close_periods at")
        assert "job close_periods at" in log, log
        process.send_signal(signal.SIGTERM)
        status = process.wait(30)
        log += process.stderr.read()
    assert status == 0 and "revshare.scheduler: scheduler stopped" in log, log
    # One line per job: APScheduler's own (job added, running, done, started) show at DEBUG only.
    assert "apscheduler" not in log, log


def test_at_log_level_debug_the_scheduler_log_holds_apschedulers_own_lines(books):
    with running_scheduler(books.url, REVSHARE_LOG_LEVEL="DEBUG") as process:
        log = read_log_until(process, "job close_periods at")  # the start-up jobs' line, at every level
        process.send_signal(signal.SIGTERM)
        status = process.wait(30)
        log += process.stderr.read()
    assert status == 0 and "job close_periods at" in log, log
    # A job added before the scheduler starts (as `run` adds them all) says so.
    assert "INFO apscheduler.scheduler: Adding job tentatively" in log, log


def test_sigterm_while_the_start_up_jobs_run_lets_them_end_and_stops_before_the_scheduler_starts(
        books, monkeypatch, caplog):
    # Raised at once, inside the database driver, the stop left the connection mid-statement: its
    # rollback failed, that error read as the database's being unavailable, and the scheduler started.
    from jobs import scheduler as process

    class NotTheScheduler(Exception):
        pass

    def outside(signal_number, frame):  # the handler in force unless the scheduler sets its own
        raise NotTheScheduler()

    table = bodies.job_table(Settings.build(database_url=books.url))

    def payout_with_sigterm(session, at_us):
        os.kill(os.getpid(), signal.SIGTERM)
        return table["payout_run"](session, at_us)

    started = []

    class Recorded(BackgroundScheduler):
        def start(self, *args, **kwargs):
            started.append(self)
            super().start(*args, **kwargs)

    monkeypatch.setattr(process, "BlockingScheduler", Recorded)
    monkeypatch.setattr(process, "job_table", lambda settings: {**table, "payout_run": payout_with_sigterm})
    previous = signal.signal(signal.SIGTERM, outside)
    try:
        with caplog.at_level(logging.INFO, logger="revshare.scheduler"):
            process.run(Settings.build(database_url=books.url))
    finally:
        signal.signal(signal.SIGTERM, previous)
        for scheduler in started:
            scheduler.shutdown(wait=True)
    assert started == [] and "failed" not in caplog.text and "scheduler stopped" in caplog.text
    assert len(run_instants(books)) == 1 and closed_periods(books)[:4] == ["2026-01", "2026-02", "2026-03", "2026-04"]


@contextlib.contextmanager
def running_scheduler(url: str, **settings: str) -> Iterator[subprocess.Popen]:
    """`revshare scheduler` as a process of its own, its log on a pipe; killed at the end, whatever
    the test made of it."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REVSHARE_")}, "REVSHARE_DATABASE_URL": url,
           **settings}
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "scheduler"], env=env, cwd=Path(__file__).parents[2],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        process.kill()
        process.wait()
        process.stderr.close()


def read_log_until(process: subprocess.Popen, words: str, log: str = "", timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while words not in log and time.monotonic() < deadline and process.poll() is None:
        log += process.stderr.readline()
    return log


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.postgres
def test_a_scheduler_started_while_its_postgresql_is_down_waits_for_it_then_runs_its_jobs():
    # A long-running process started with (or before) its database, as a host's boot or a compose
    # file starts both: it exited 2 at once, and stayed down unless a supervisor restarted it.
    import sqlalchemy as sa

    from ledger.migrate import upgrade
    from tests.pg_cluster import Cluster

    cluster = Cluster().start()
    try:
        admin = sa.create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text("CREATE DATABASE books"))
        admin.dispose()
        upgrade(cluster.url("books"))
        cluster.pause()
        with running_scheduler(cluster.url("books")) as process:
            log = read_log_until(process, "trying again in")
            assert "is unreachable: connection failed" in log and process.poll() is None, log
            cluster.resume()
            log = read_log_until(process, "job close_periods at", log)
            assert "job close_periods at" in log, log
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
    finally:
        cluster.stop()


def test_a_scheduler_waiting_for_its_database_stops_on_sigterm_with_exit_status_0():
    with running_scheduler(f"postgresql://nobody@127.0.0.1:{closed_port()}/revshare") as process:
        log = read_log_until(process, "trying again in")
        assert "is unreachable: connection failed" in log and "Connection refused" in log, log
        process.send_signal(signal.SIGTERM)
        status = process.wait(10)
        log += process.stderr.read()
    assert status == 0 and "revshare.scheduler: scheduler stopped" in log and "Traceback" not in log, log


@contextlib.contextmanager
def silent_server() -> Iterator[socket.socket]:
    """A port that takes TCP connections and never answers, as a server stopped with SIGSTOP, a
    host gone behind a firewall that drops packets, or a proxy whose database does not answer."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.settimeout(60)
        yield server


def test_a_scheduler_whose_database_server_never_answers_says_so_within_its_connect_timeout():
    """Not after psycopg's default of 130 s, silent in between: libpq's "timeout expired" is its
    `connect_timeout` ending the try, which without one never ends so. The URL's own bound, libpq's
    least (2 s), stands for the scheduler's (10 s; the next test has it given where the URL has none)."""
    with silent_server() as server:
        url = f"postgresql://nobody@127.0.0.1:{server.getsockname()[1]}/revshare?connect_timeout=2"
        with running_scheduler(url) as process:
            connection, _ = server.accept()
            with connection:
                log = read_log_until(process, "trying again in")
    assert "is unreachable" in log and "timeout expired" in log, log


def test_each_try_of_a_scheduler_waiting_for_its_database_is_bounded_unless_its_url_says_otherwise(monkeypatch):
    from jobs import scheduler

    bounds = []
    engine_of = scheduler.make_engine

    def recorded(url, **kwargs):
        bounds.append(kwargs.get("connect_args"))
        return engine_of(url, **kwargs)

    def stop(_seconds):
        raise SystemExit(0)  # as the signal handler does while it waits

    monkeypatch.setattr(scheduler, "make_engine", recorded)
    monkeypatch.setattr(scheduler.time, "sleep", stop)
    url = f"postgresql://nobody@127.0.0.1:{closed_port()}/revshare"
    assert scheduler.wait_for_database(url) is False
    assert scheduler.wait_for_database(f"{url}?connect_timeout=3") is False
    assert bounds == [{"connect_timeout": scheduler.WAIT_CONNECT_TIMEOUT_S}, {}]


def test_a_scheduler_waiting_for_a_database_server_that_never_answers_stops_at_once_on_sigterm():
    """Nothing is in progress while it waits: the first signal stops it, as a stop's grace period
    (Docker's 10 s) would otherwise run out inside a connection attempt."""
    with silent_server() as server:
        with running_scheduler(f"postgresql://nobody@127.0.0.1:{server.getsockname()[1]}/revshare") as process:
            connection, _ = server.accept()
            with connection:
                process.send_signal(signal.SIGTERM)
                status = process.wait(5)  # the try's own bound is 10 s
                log = process.stderr.read()
    assert status == 0 and "revshare.scheduler: scheduler stopped" in log and "Traceback" not in log, log


def test_a_scheduler_with_a_bad_setting_exits_2_at_once_though_its_database_is_unreachable():
    with running_scheduler(f"postgresql://nobody@127.0.0.1:{closed_port()}/revshare",
                                REVSHARE_PAYOUT_DAY_OF_MONTH="31") as process:
        status = process.wait(30)
        log = process.stderr.read()
    assert status == 2 and "REVSHARE_PAYOUT_DAY_OF_MONTH must be between 1 and 28" in log, log


def test_a_scheduler_whose_url_has_an_option_psycopg_refuses_exits_2_at_once_with_its_words():
    # psycopg refuses the value before it connects, with a ProgrammingError, not an OperationalError:
    # the wait let it through, a traceback and exit 1, where `revshare verify` exits 2 saying it.
    with running_scheduler(f"postgresql://nobody@127.0.0.1:{closed_port()}/revshare?connect_timeout=abc") as process:
        status = process.wait(30)
        log = process.stderr.read()
    assert status == 2 and "error: cannot use the database" in log, log
    assert "bad value for connect_timeout: 'abc'" in log and "Traceback" not in log, log


AT_SERVER = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: '


@pytest.mark.parametrize("words, waited", [
    # 57P03 cannot_connect_now, each of PostgreSQL's words for it: states that pass.
    (AT_SERVER + "FATAL:  the database system is starting up", True),
    (AT_SERVER + "FATAL:  the database system is shutting down", True),
    (AT_SERVER + "FATAL:  the database system is in recovery mode", True),
    (AT_SERVER + "FATAL:  the database system is not yet accepting connections\nDETAIL:  Consistent recovery state"
                 " has not been yet reached.", True),
    (AT_SERVER + "FATAL:  the database system is not accepting connections\nDETAIL:  Hot standby mode is disabled.",
     True),
    # 53300 too_many_connections.
    (AT_SERVER + "FATAL:  sorry, too many clients already", True),
    (AT_SERVER + "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute", True),
    (AT_SERVER + 'FATAL:  too many connections for role "revshare"', True),
    # No server reached.
    (AT_SERVER + "Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?", True),
    ('connection failed: connection to server on socket "/run/postgresql/.s.PGSQL.5432" failed: No such file or'
     " directory\n\tIs the server running locally and accepting connections on that socket?", True),
    (AT_SERVER + "timeout expired", True),
    ("failed to resolve host 'db': [Errno -3] Temporary failure in name resolution", True),
    (AT_SERVER + "server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally",
     True),
    # Settings, the server's or the client's own words: waiting cures none.
    (AT_SERVER + 'FATAL:  database "books" does not exist', False),
    (AT_SERVER + 'FATAL:  password authentication failed for user "revshare"', False),
    (AT_SERVER + "server does not support SSL, but SSL was required", False),
    ('connection is bad: invalid sslmode value: "requir"', False),
    ("connection is bad: GSSAPI encryption required but no credential cache", False),
    (AT_SERVER + "channel binding required, but server authenticated client without channel binding", False),
])
def test_a_scheduler_waits_for_a_server_that_does_not_take_connections_yet_and_not_for_a_setting(words, waited):
    """psycopg gives a refused connection no SQLSTATE, only libpq's and the server's words."""
    import psycopg

    from jobs.scheduler import out_of_reach

    assert out_of_reach(OperationalError("connect", None, psycopg.OperationalError(words))) is waited


@pytest.mark.parametrize("sqlstate, words, waited", [
    # A server's words in its lc_messages (German here, as a server said them): the SQLSTATE decides.
    ("57P01", "Verbindung wird abgebrochen aufgrund von Anweisung des Administrators", True),
    ("57P03", "das Datenbanksystem nimmt keine Verbindungen an", True),
    ("53300", "tut mir leid, schon zu viele Verbindungen", True),
    ("08006", "Verbindung verloren", True),
    # A setting, or a server that is not PostgreSQL, though its words hold a waited-for phrase.
    ("08P01", "server closed the connection unexpectedly: invalid frontend message type 71", False),
    ("3D000", 'database "too many clients" does not exist', False),
    ("28P01", 'password authentication failed for user "Is the server running"', False),
])
def test_a_scheduler_goes_by_the_sqlstate_of_an_error_that_has_one_whatever_its_words(sqlstate, words, waited):
    """An error on a connection already made (the check's query, SQLAlchemy's first queries) has a
    SQLSTATE, which a server's `lc_messages` does not translate."""
    import psycopg

    from jobs.scheduler import out_of_reach

    error = psycopg.errors.lookup(sqlstate)(words)
    assert out_of_reach(OperationalError("SELECT 1", None, error)) is waited


@pytest.mark.postgres
def test_a_scheduler_whose_check_connection_is_ended_by_a_server_shutting_down_waits_and_tries_again(
        pg_cluster, monkeypatch, caplog):
    """A fast shutdown (a restart by a deploy) ends the sessions it finds with 57P01 admin_shutdown:
    one made just before it, the check's, exited 2 as for a setting."""
    import psycopg
    from sqlalchemy import event

    from jobs import scheduler

    ended = []
    engine_of = scheduler.make_engine

    def ended_once(url, **kwargs):
        engine = engine_of(url, **kwargs)

        @event.listens_for(engine, "connect")
        def end(dbapi_connection, _record):
            if not ended:
                ended.append(dbapi_connection.info.backend_pid)
                with psycopg.connect(pg_cluster.url().replace("+psycopg", ""), autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", [ended[0]])

        return engine

    waits = []
    monkeypatch.setattr(scheduler, "make_engine", ended_once)
    monkeypatch.setattr(scheduler.time, "sleep", waits.append)
    caplog.set_level(logging.WARNING, "revshare.scheduler")
    assert scheduler.wait_for_database(pg_cluster.url()) is True
    assert len(ended) == 1 and waits == [scheduler.WAIT_FIRST_S], (ended, waits, caplog.text)
    assert "terminating connection due to administrator command" in caplog.text, caplog.text


@pytest.mark.postgres
def test_a_scheduler_whose_url_requires_ssl_of_a_server_without_it_exits_2_at_once(pg_cluster):
    """libpq's own refusal, with no FATAL from the server: it was waited on, a try logged every minute
    for ever."""
    with running_scheduler(f"{pg_cluster.url()}?sslmode=require") as process:
        status = process.wait(30)
        log = process.stderr.read()
    assert status == 2 and "server does not support SSL, but SSL was required" in log, log
    assert "trying again" not in log, log


@pytest.mark.postgres
def test_a_scheduler_whose_server_is_a_standby_not_accepting_connections_waits_for_it():
    """A standby without hot standby answers 57P03 "not accepting connections" until it is
    promoted: it exited 2 at once, as for a setting."""
    from tests.pg_cluster import Cluster

    cluster = Cluster().start()
    try:
        cluster.pause()
        (cluster.data / "standby.signal").touch()
        with open(cluster.data / "postgresql.conf", "a") as conf:
            conf.write("\nhot_standby = off\n")
        cluster.resume()
        with running_scheduler(cluster.url()) as process:
            log = read_log_until(process, "trying again in")
            assert "the database system is not accepting connections" in log and process.poll() is None, log
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
    finally:
        cluster.stop()


@pytest.mark.postgres
def test_a_scheduler_whose_database_server_refuses_its_database_or_role_exits_2_at_once(pg_cluster):
    # The server answered: a name or a credential is wrong, which waiting does not cure.
    from click.testing import CliRunner

    from cli.main import main

    for url in (pg_cluster.url("no_such_books"), pg_cluster.url("postgres", user="no_such_role")):
        result = CliRunner().invoke(main, ["scheduler"], env={"REVSHARE_DATABASE_URL": url})
        assert result.exit_code == 2 and "error: cannot use the database" in result.output, result.output
        assert "does not exist" in result.output and "trying again" not in result.output, result.output
