"""Retries after a crash, and retries that arrive while the first attempt still runs: the books are
those of one clean run, and a duplicate waits for the first, then answers as a replay, never posting
twice and never failing on what the first did.

The crash is real: `revshare payout-run` and `revshare close` are SIGKILLed in the middle of their
catch-up of matured holds (100 to a transaction before their own), once a probe of the journal
sees some of those transactions committed and not all; the same command is then run again."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time

import pytest
from sqlalchemy import func, select

from ledger import revenue
from ledger.db import JOURNAL_LOCK_KEY, Database, open_writer_lock, writer_lock_path
from ledger.demo import load_demo
from ledger.holds import HOLDS_PER_TRANSACTION
from ledger.schema import accounts, journal_transactions, payout_runs, period_closes, period_snapshots
from tests.cli.test_cli import REVSHARE, audited_books, invoke
from tests.conftest import copied_databases
from tests.integration.conftest import second_writer_behind_first
from tests.program import paid, seed

CUSTOMERS = [f"cust-{n:03d}" for n in range(600)]
HOLDS = 2 * len(CUSTOMERS)  # a month's invoices: each customer's partner's accrual and its parent's override
KILL_AFTER = 2 * HOLDS_PER_TRANSACTION  # releases committed when the command is killed, at least


def month_of_invoices(month: int) -> list[revenue.RevenueEvent]:
    return [paid(f"e-{customer}-{month}", customer, f"inv-{customer}-{month}", 10_000, f"2026-{month:02d}-10")
            for customer in CUSTOMERS]


def january_and_march(database: Database) -> None:
    with database.transaction() as session:
        seed(session, customer_ids=CUSTOMERS)
        revenue.ingest(session, month_of_invoices(1) + month_of_invoices(3))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def killed_and_clean(request, tmp_path):
    """Two databases of one engine with the same program and the invoices of January and March,
    every hold still queued: one for the commands that are killed, one for their clean run."""
    yield from copied_databases(request, tmp_path, january_and_march, 2)


def releases(database: Database) -> int:
    t = journal_transactions.c
    with database.reader() as session:
        return session.execute(select(func.count()).where(t.kind == "release")).scalar_one()


def kill_midway(database: Database, *args: str) -> int:
    """Start `revshare ARGS`, SIGKILL it once at least KILL_AFTER more releases have committed, and
    return how many it had committed. Each look is taken holding the journal's writers back
    (`writers_held`), so that none commits between the count and the kill: on a loaded machine the
    command had finished its catch-up while the probe waited for a core."""
    before = releases(database)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REVSHARE_")},
           "REVSHARE_DATABASE_URL": database.url}
    process = subprocess.Popen([REVSHARE, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            with writers_held(database):
                if releases(database) - before >= KILL_AFTER:
                    process.send_signal(signal.SIGKILL)
                    process.wait(30)
                    break
            time.sleep(0.002)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    return releases(database) - before


@contextlib.contextmanager
def writers_held(database: Database):
    """No writer of the journal commits meanwhile: the SQLite writers' queue, or on PostgreSQL the
    journal's advisory lock (for the session), taken once the writer holding it has finished."""
    if database.engine.dialect.name == "postgresql":
        with database.engine.connect() as connection:
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({JOURNAL_LOCK_KEY})")
            try:
                yield
            finally:
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({JOURNAL_LOCK_KEY})")
        return
    fd = open_writer_lock(writer_lock_path(database.engine.url.database))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def test_a_payout_run_and_a_close_killed_in_their_catch_up_and_run_again_give_the_books_of_one_clean_run(
        killed_and_clean):
    killed, clean = killed_and_clean
    commands = [("close", "2026-01"), ("close", "2026-02"), ("payout-run", "--at", "2026-05-01")]
    with killed.reader() as session:
        assert session.execute(select(func.count()).select_from(period_closes)).scalar_one() == 0
    assert invoke(killed.url, *commands[0]).exit_code == 0  # nothing matured in January: nothing to release
    for args in commands[1:]:  # each releases a month's holds (January's, then March's) before its own work
        committed = kill_midway(killed, *args)
        assert KILL_AFTER <= committed < HOLDS, f"{args} must be killed in its catch-up: {committed} released"
        rerun = invoke(killed.url, *args)
        assert rerun.exit_code == 0, rerun.output
    for args in commands:
        assert invoke(clean.url, *args).exit_code == 0
    assert releases(killed) == releases(clean) == 2 * HOLDS
    assert audited(killed) == audited(clean)


def started(database: Database, log_path) -> str:
    """Run `revshare scheduler` until its start-up jobs (the payout job, then the close job) have
    run, stop it with SIGTERM, and return its log."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REVSHARE_")},
           "REVSHARE_DATABASE_URL": database.url}
    with open(log_path, "w") as log:
        process = subprocess.Popen([REVSHARE, "scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "job close_periods" not in log_path.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    return log_path.read_text()


def test_a_scheduler_killed_in_its_start_up_catch_up_and_started_again_gives_the_books_of_one_clean_run(
        killed_and_clean, tmp_path):
    # The payout job at start releases every matured hold (both months') 100 to a transaction, then
    # makes this month's run; the close job then closes every month ended three days ago or more.
    killed, clean = killed_and_clean
    committed = kill_midway(killed, "scheduler")
    assert KILL_AFTER <= committed < 2 * HOLDS, f"the scheduler must be killed in its catch-up: {committed} released"
    log = started(killed, tmp_path / "restarted.log")
    assert "job payout_run at" in log and "failed" not in log and "Traceback" not in log, log
    started(clean, tmp_path / "clean.log")
    assert releases(killed) == releases(clean) == 2 * HOLDS
    with killed.reader() as session:  # this month's run made, and January to March closed at least
        assert session.execute(select(func.count()).select_from(payout_runs)).scalar_one() == 1
        assert session.execute(select(func.count()).select_from(period_closes)).scalar_one() >= 3
    assert audited(killed) == audited(clean)

def audited(database: Database) -> tuple:
    """`audited_books` (verify clean), and each close's figures and snapshot. A close hash chains the
    journal's head hash, which covers the recorded instants and salts: it differs between two runs,
    so the statements are compared without it."""
    books_, balance, statements_, chain = audited_books(database)
    statements_ = [{name: value for name, value in statement.items() if name != "close_hash"}
                   for statement in statements_]
    c, s = period_closes.c, period_snapshots.c
    with database.reader() as session:  # accounts by name: a rolled-back one leaves a gap in PostgreSQL's ids
        closes = session.execute(select(c.period, c.transaction_count, c.chain_head_id).order_by(c.period)).all()
        snapshots = session.execute(select(s.period, accounts.c.name, s.currency, s.debit_minor, s.credit_minor)
                                    .join(accounts, accounts.c.id == s.account_id)
                                    .order_by(s.period, accounts.c.name, s.currency)).all()
    return books_, balance, statements_, chain, closes, snapshots


@pytest.mark.postgres
def test_a_demo_load_that_waits_for_another_answers_already_loaded(postgres_database):
    # Two `revshare demo` at once on PostgreSQL: the second read "not loaded" before the first
    # committed, then stopped at the first plan with "plan 'msp-stepdown' already exists" (exit 2).
    loads = []
    outcome = second_writer_behind_first(postgres_database, lambda session: loads.append(load_demo(session)),
                                         load_demo)
    assert loads[0].loaded
    assert outcome == (False, 0, 0), outcome
