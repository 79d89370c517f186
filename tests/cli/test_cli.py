"""The `revshare` command line through click's CliRunner, and a real `revshare import` SIGKILLed
halfway (several times under `make soak`) and run again, on both engines: the books, statements,
trial balance and chain equal those of one clean run."""

import contextlib
import errno
import fcntl
import io
import json
import re
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text

from cli.main import main
from ledger import customers, holds, importer, revenue, statements
from ledger.balances import all_balances
from ledger.db import Database
from ledger.importer import HEAD_BYTES, LINE_CHARS_MAX, detect_format, head, open_events
from ledger.instants import next_period, period_bounds_us, period_of
from ledger.money import format_minor
from ledger.schema import journal_lines, journal_transactions, partners, period_closes, revenue_events
from ledger.settings import Settings
from ledger.trial_balance import trial_balance
from ledger.verify import verify
from tests.conftest import copied_database, drop_pg_database, new_pg_url, new_sqlite_url, scaled
from tests.program import event_dict, monthly_events, paid, seed, tampered_books
from tests.scenarios.books import Books

REVSHARE = str(Path(sys.executable).parent / "revshare")
IMPORT_CUSTOMERS = scaled(150)  # twelve monthly invoices each
IMPORT_KILLS = scaled(1, 3)


def invoke(url: str, *args: str):
    return CliRunner().invoke(main, list(args), env={"REVSHARE_DATABASE_URL": url}, catch_exceptions=False)


def seed_program(database: Database) -> None:
    with database.transaction() as session:
        seed(session, customer_ids=[f"cust-{n:03d}" for n in range(40)] + ["acme", "globex-corp", "initrode"])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def seeded(request, tmp_path):
    """The `seed` program with 43 customers, copied from books seeded once a session (seeding each
    test's books took a quarter of a second and more)."""
    yield from copied_database(request, tmp_path, seed_program)


def books(database: Database) -> tuple:
    """Everything but the hashes and recorded instants, which differ between two runs."""
    t, j = journal_transactions.c, journal_lines.c
    with database.reader() as session:
        lines = session.execute(select(t.kind, t.partner_id, t.invoice_id, t.event_id, t.effective_at_us, j.side,
                                       j.amount_minor).join(journal_lines, j.transaction_id == t.id)).all()
        events = session.execute(select(revenue_events.c.id, revenue_events.c.status)).all()
        return sorted(all_balances(session).items()), sorted(lines), sorted(events)


def test_db_upgrade_creates_the_default_database_and_is_repeatable(tmp_path):
    url = f"sqlite:///{tmp_path / 'nested' / 'revshare.db'}"
    first, second = invoke(url, "db", "upgrade"), invoke(url, "db", "upgrade")
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert (tmp_path / "nested" / "revshare.db").exists()
    assert invoke(url, "verify").exit_code == 0


def test_db_upgrades_started_at_once_on_a_new_sqlite_file_all_succeed_one_migrating_it(tmp_path):
    # Each migration commits on its own on SQLite: begun together, the upgrades all read the file
    # empty, and the later ones failed with "database is locked" or "table already exists".
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REVSHARE_")},
           "REVSHARE_DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}"}
    processes = [subprocess.Popen([REVSHARE, "db", "upgrade"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [(process.wait(timeout=120), process.stdout.read()) for process in processes]
    for process in processes:
        process.stdout.close()
    assert outputs == [(0, "database is at the latest revision\n")] * 3, outputs
    assert invoke(env["REVSHARE_DATABASE_URL"], "verify").exit_code == 0


def test_db_upgrade_of_a_database_migrated_by_newer_code_stops_with_exit_2_naming_it(tmp_path):
    # Alembic's "Can't locate revision" was a traceback and exit 1; verify and serve said it plainly.
    url = f"sqlite:///{tmp_path / 'revshare.db'}"
    assert invoke(url, "db", "upgrade").exit_code == 0
    with contextlib.closing(sqlite3.connect(tmp_path / "revshare.db")) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    result = invoke(url, "db", "upgrade")
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: cannot migrate the database {url!r}: ")
    assert "'9999'" in result.output and "migrated by newer code: run that code" in result.output


@pytest.mark.parametrize("name, value, message", [
    ("REVSHARE_CLOSE_GRACE_DAYS", "soon", "REVSHARE_CLOSE_GRACE_DAYS must be an integer"),
    ("REVSHARE_MAX_BODY_BYTES", "2_048", "REVSHARE_MAX_BODY_BYTES must be an integer"),
    ("REVSHARE_MAX_BODY_BYTES", " 2048 ", "REVSHARE_MAX_BODY_BYTES must be an integer"),
    ("REVSHARE_PAYOUT_DAY_OF_MONTH", "\u0661", "REVSHARE_PAYOUT_DAY_OF_MONTH must be an integer"),  # Arabic-Indic 1
    ("REVSHARE_PAYOUT_DAY_OF_MONTH", "29", "REVSHARE_PAYOUT_DAY_OF_MONTH must be between 1 and 28"),
    ("REVSHARE_LOG_LEVEL", "critical", "REVSHARE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR"),
    ("REVSHARE_LOG_LEVEL", "", "REVSHARE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got ''"),  # not the default
    ("REVSHARE_Log_Level", "bogus", "unknown setting REVSHARE_Log_Level: the names are upper case, as REVSHARE_LOG_LEVEL"),
])
def test_a_bad_setting_stops_with_a_message_naming_the_variable(database_url, name, value, message):
    result = CliRunner().invoke(main, ["verify"], env={"REVSHARE_DATABASE_URL": database_url, name: value})
    assert result.exit_code == 2 and message in result.output


def test_the_demo_loads_only_into_empty_books(database, tmp_path):
    """An event of the books with a demo event's id and other content stopped it with a traceback
    and exit 1 ("the books have problems"); a later payout run, with a refusal naming `--at`."""
    assert invoke(database.url, "keys", "create", "--role", "admin").exit_code == 0  # keys are no books
    events = tmp_path / "events.ndjson"
    events.write_text(json.dumps({"id": "evt-inv-007-202511", "type": "invoice_paid", "customer_id": "cust-x",
                                  "invoice_id": "inv-x", "amount": {"amount": "1.00", "currency": "USD"},
                                  "occurred_at": "2025-11-03T00:00:00Z"}) + "\n")
    assert invoke(database.url, "import", str(events)).exit_code == 0
    refused = invoke(database.url, "demo")
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "error: the demo is loaded into empty books; these hold revenue_events already" in refused.output
    with database.reader() as session:
        assert session.execute(text("SELECT count(*) FROM plans")).scalar_one() == 0


def test_the_demo_loads_once_and_then_changes_nothing(database):
    first, second = invoke(database.url, "demo"), invoke(database.url, "demo")
    assert first.exit_code == 0 and "demo loaded: 524 revenue events, 12 closed periods" in first.output
    assert second.exit_code == 0 and "already loaded" in second.output
    statement = invoke(database.url, "statement", "northwind", "--period", "2026-03")
    assert statement.exit_code == 0 and "Statement for partner northwind, period 2026-03 (closed" in statement.output
    as_json = json.loads(invoke(database.url, "statement", "northwind", "--period", "2026-03", "--format", "json").output)
    as_csv = invoke(database.url, "statement", "northwind", "--period", "2026-03", "--format", "csv").output
    assert {c["currency"] for c in as_json["currencies"]} == {"USD", "EUR"} and as_json["period_status"] == "closed"
    assert as_csv.splitlines()[0].startswith("partner_id,period,currency,row,transaction_id")
    assert len(as_csv.splitlines()) == 1 + sum(len(c["lines"]) + 2 for c in as_json["currencies"])
    balance = invoke(database.url, "trial-balance", "--as-of", "2026-06-30")
    assert balance.exit_code == 0 and balance.output.rstrip().endswith("balanced")
    assert invoke(database.url, "verify").output.rstrip().endswith("ok")


def test_jobs_run_from_the_command_line_with_an_explicit_instant(seeded):
    with seeded.transaction() as session:
        revenue.ingest(session, monthly_events(months=2))
    released = invoke(seeded.url, "release-holds", "--at", "2026-03-01")
    run = invoke(seeded.url, "payout-run", "--at", "2026-03-01T00:00:00Z")
    again = invoke(seeded.url, "payout-run", "--at", "2026-03-01T00:00:00Z")
    closed = invoke(seeded.url, "close", "2026-01")
    assert released.output == "released: 4\n"  # January's pieces not already released by the refund
    assert run.output.startswith("released: 0\n")  # released above
    assert "northwind 115.00 USD pending" in run.output and "payouts: 1" in run.output
    assert "(already run)" in again.output and "payouts: 1" in again.output
    assert closed.exit_code == 0 and closed.output.startswith("released: 0\nclosed 2026-01: 6 transactions, close hash ")


def test_a_payout_run_and_a_close_print_how_many_releases_they_posted_first(seeded):
    def releases() -> int:
        with seeded.reader() as session:
            return session.execute(select(func.count()).select_from(journal_transactions)
                                   .where(journal_transactions.c.kind == "release")).scalar_one()

    def printed(result) -> int:
        assert result.exit_code == 0, result.output
        return int(result.output.splitlines()[0].removeprefix("released: "))
    with seeded.transaction() as session:
        revenue.ingest(session, monthly_events(months=3))
    counts = []
    for command in (("close", "2026-01"), ("close", "2026-02"), ("payout-run", "--at", "2026-04-01"),
                    ("close", "2026-03")):
        before = releases()
        counts.append((printed(invoke(seeded.url, *command)), releases() - before))
    assert all(shown == posted for shown, posted in counts) and [posted for _, posted in counts][1:3] != [0, 0], counts


def test_a_payout_run_without_at_made_while_another_process_ran_one_is_made_at_a_later_now(seeded, monkeypatch):
    from ledger import payouts
    from ledger.journal import now_us
    from tests.interleaving import another_writer_first

    with seeded.transaction() as session:
        revenue.ingest(session, monthly_events(months=2))
    another_writer_first(monkeypatch, seeded, lambda session: payouts.run_payouts(session, now_us()))
    run = invoke(seeded.url, "payout-run")
    assert run.exit_code == 0 and run.output.endswith("payouts: 0\n"), run.output



def post_maturing_as_posted(session) -> None:
    """Another writer's posting: the accrual (and its override) of a payment dated so that its hold
    (30 days) matures at the instant it is posted."""
    from ledger.journal import now_us

    occurred_us = now_us() - 30 * 86_400_000_000
    revenue.ingest(session, [revenue.RevenueEvent("e-waited", "invoice_paid", "acme", "inv-waited", "USD", 10_000,
                                                  occurred_us)])


def test_a_release_without_at_made_while_another_process_posted_releases_what_matured_while_it_waited(
        seeded, monkeypatch):
    # Read before the lock, now was an instant before the other process's posting: the hold that
    # matured while the release waited for it was left held, as of an instant already past.
    from tests.interleaving import another_writer_while_waiting

    with another_writer_while_waiting(monkeypatch, seeded, post_maturing_as_posted):
        released = invoke(seeded.url, "release-holds")
    assert released.exit_code == 0 and released.output == "released: 2\n", released.output


def test_a_close_made_while_another_process_posted_is_not_dated_before_that_posting(seeded, monkeypatch):
    from ledger.periods import close_period
    from tests.interleaving import another_writer_while_waiting

    with seeded.transaction() as session:
        revenue.ingest(session, monthly_events(months=1))
    with another_writer_while_waiting(monkeypatch, seeded, post_maturing_as_posted):
        with seeded.transaction() as session:  # the close `revshare close` and the API make
            closed = close_period(session, "2026-01")
    with seeded.reader() as session:
        recorded_us = session.execute(select(journal_transactions.c.recorded_at_us)
                                      .where(journal_transactions.c.event_id == "e-waited")).scalars().all()
    assert recorded_us and closed.closed_at_us >= max(recorded_us), (closed.closed_at_us, recorded_us)



def test_closing_a_period_closed_already_prints_its_close_and_exits_0_changing_nothing(seeded):
    # For an operator or a cron job a closed period is a state reached, as a payout run made already
    # is answered as a replay: it exited 2 "already closed", which reads as a failure to look into.
    with seeded.transaction() as session:
        revenue.ingest(session, monthly_events(months=2))
    first = invoke(seeded.url, "close", "2026-01")
    with seeded.reader() as session:
        before = session.execute(select(func.count()).select_from(journal_transactions)).scalar_one()
        [close_hash] = session.execute(select(period_closes.c.close_hash)).scalars().all()
    again = invoke(seeded.url, "close", "2026-01")
    assert first.exit_code == 0 and again.exit_code == 0, again.output
    assert again.output.startswith(
        f"released: 0\nclosed 2026-01: 6 transactions, close hash {close_hash} (already closed at ")
    assert first.output.startswith(f"released: 0\nclosed 2026-01: 6 transactions, close hash {close_hash}\n")
    with seeded.reader() as session:
        assert session.execute(select(func.count()).select_from(journal_transactions)).scalar_one() == before
    before_the_chain = invoke(seeded.url, "close", "2025-12")  # closed, but with no close of its own to show
    assert before_the_chain.exit_code == 2 and "lies before the latest closed period" in before_the_chain.output


def payout_lines(url: str, period: str) -> list[str]:
    document = json.loads(invoke(url, "statement", "northwind", "--period", period, "--format", "json").output)
    return [line["effective_at"] for currency in document["currencies"] for line in currency["lines"]
            if line["kind"] == "payout"]


def test_a_date_given_to_at_is_the_start_of_that_day_so_its_payout_is_in_that_month_s_statement(seeded):
    with seeded.transaction() as session:
        revenue.ingest(session, monthly_events(months=2))  # February's holds mature at 2026-03-12T00:00Z
    # Up to 2026-03-11T00:00Z: January's pieces only (its end would take February's too).
    assert invoke(seeded.url, "release-holds", "--at", "2026-03-11").output == "released: 4\n"
    run = invoke(seeded.url, "payout-run", "--at", "2026-03-31")
    assert run.exit_code == 0 and "at 2026-03-31T00:00:00Z" in run.output and "northwind" in run.output
    assert payout_lines(seeded.url, "2026-03") == ["2026-03-31T00:00:00Z"]
    assert payout_lines(seeded.url, "2026-04") == []
    # An instant is still read as itself; a date given to --as-of is the end of that day.
    later = invoke(seeded.url, "payout-run", "--at", "2026-03-31T12:30:00+02:00")
    assert later.exit_code == 0 and "at 2026-03-31T10:30:00Z" in later.output
    balance = invoke(seeded.url, "trial-balance", "--as-of", "2026-03-31")
    assert balance.exit_code == 0 and "trial balance as of 2026-04-01T00:00:00Z" in balance.output


def test_the_trial_balance_without_as_of_is_as_of_now_like_the_api_s_and_leaves_a_posting_dated_ahead_out(seeded):
    # A revenue event may be dated up to five minutes ahead of the clock: as of now, it has not happened.
    ahead_us = time.time_ns() // 1000 + 240_000_000
    with seeded.transaction() as session:
        [outcome] = revenue.ingest(session, [revenue.RevenueEvent("e-ahead", "invoice_paid", "acme", "inv-ahead",
                                                                  "USD", 10_000, ahead_us)])
    assert outcome.status == "posted", outcome
    report = invoke(seeded.url, "trial-balance")
    assert report.exit_code == 0 and report.output.startswith("trial balance as of 20"), report.output
    assert "expense:commission" not in report.output, report.output


def test_the_trial_balance_prints_each_amount_in_a_column_of_its_own_however_many_digits_it_has(database):
    # VND has no minor digits and BHD three: a book's totals in either reach 17 to 20 characters, and
    # columns 16 wide ran the debit into the credit ("4999999999999999.9954999999999999999.995"); an
    # account of a long partner id ran into its currency.
    books = Books(database)
    books.plan("all", "1", hold_days=0)
    books.partner("whale", "all")
    books.partner("a-partner-whose-id-takes-forty-characters", "all")
    books.attribute("whale-customer", "whale", "2026-01-01")
    books.attribute("long-customer", "a-partner-whose-id-takes-forty-characters", "2026-01-01")
    books.paid("long-customer", "small", "1", "2026-01-20", currency="VND")
    for n, (amount, currency) in enumerate([("999999999999999.999", "BHD")] * 4 + [("999999999999999", "VND")] * 2):
        books.paid("whale-customer", f"big-{n}", amount, "2026-01-20", currency=currency)
    books.release("2026-01-21")
    with database.reader() as session:
        report = trial_balance(session, before_us=None)
    printed = invoke(database.url, "trial-balance", "--as-of", "2026-01-21")
    assert printed.exit_code == 0, printed.output
    rows = [line.split() for line in printed.output.splitlines()[2:-1]]
    expected = [[row.account, row.currency, *(format_minor(minor, row.currency) for minor in
                                             (row.debit_minor, row.credit_minor, row.balance_minor))]
                for row in report.rows]
    expected += [["total", total.currency, format_minor(total.debit_minor, total.currency),
                  format_minor(total.credit_minor, total.currency)] for total in report.totals]
    assert rows == expected
    assert ["total", "BHD", "7999999999999999.992", "7999999999999999.992"] in rows
    assert ["liability:partner:a-partner-whose-id-takes-forty-characters:available", "VND", "0", "1", "-1"] in rows
    header, *lines = printed.output.splitlines()[1:-1]
    for line in lines:  # every amount ends under the end of its column's name
        assert line.rstrip().endswith(line.split()[-1]) and len(line.rstrip()) in (header.index("credit") + 6,
                                                                                    len(header))


def test_at_today_s_date_is_not_refused_as_in_the_future(seeded):
    today = datetime.now(timezone.utc).date().isoformat()
    released = invoke(seeded.url, "release-holds", "--at", today)
    run = invoke(seeded.url, "payout-run", "--at", today)
    assert released.exit_code == 0 and released.output == "released: 0\n", released.output
    assert run.exit_code == 0 and f"at {today}T00:00:00Z" in run.output, run.output


def kinds_per_transaction(monkeypatch) -> list[tuple[int, int, int]]:
    """(releases, payouts, closes) each writer transaction of the books adds, in order, as the
    commands open them."""
    opened, added = Database.transaction, []

    @contextlib.contextmanager
    def counting(self):
        with opened(self) as session:
            before = kind_counts(session)
            yield session
            added.append(tuple(after - then for after, then in zip(kind_counts(session), before)))

    monkeypatch.setattr(Database, "transaction", counting)
    return added


def kind_counts(session) -> tuple[int, int, int]:
    t = journal_transactions.c
    kinds = dict(session.execute(select(t.kind, func.count()).group_by(t.kind)).all())
    closes = session.execute(select(func.count()).select_from(period_closes)).scalar_one()
    return kinds.get("release", 0), kinds.get("payout", 0), closes


@pytest.mark.parametrize("args, last", [(("payout-run", "--at", "2026-04-01"), (0, 1, 0)),
                                        (("close", "2026-03"), (0, 0, 1))])
def test_a_payout_run_or_close_by_hand_releases_the_matured_holds_a_few_to_a_transaction_before_its_own(
        seeded, monkeypatch, args, last):
    # In its one transaction, a run or close after months of holds held the journal's lock through
    # every release (37 s over 73,000), and postings waited or failed past their lock wait.
    with seeded.transaction() as session:
        revenue.ingest(session, monthly_events())
    for period in ("2026-01", "2026-02"):  # January's 4 holds still held are released, February's 6 are not
        assert invoke(seeded.url, "close", period).exit_code == 0
    monkeypatch.setattr(holds, "HOLDS_PER_TRANSACTION", 5)
    added = kinds_per_transaction(monkeypatch)
    result = invoke(seeded.url, *args)
    assert result.exit_code == 0, result.output
    # A check first (nothing posted), February's 6 holds 5 to a transaction, then the run or close alone
    assert added == [(0, 0, 0), (5, 0, 0), (1, 0, 0), last]


@pytest.mark.parametrize("args, message", [
    (("payout-run", "--at", "2026-04-25"), "--at: a payout run was made at 2026-05-01T00:00:00Z"),
    (("payout-run", "--at", "2062-01-01"), "--at: 2062-01-01T00:00:00Z is in the future"),
    (("close", "2026-05"), "period 2026-04 has postings and is open: close it first"),
    (("close", "2026-12"), "period 2026-12 has not ended yet")])
def test_a_payout_run_or_close_by_hand_that_is_refused_posts_no_release_either(seeded, args, message):
    with seeded.transaction() as session:
        revenue.ingest(session, monthly_events())
    for period in ("2026-01", "2026-02", "2026-03"):
        assert invoke(seeded.url, "close", period).exit_code == 0
    assert invoke(seeded.url, "payout-run", "--at", "2026-05-01").exit_code == 0
    with seeded.transaction() as session:  # dated in closed March, posted at April 1; matures 2026-04-19
        revenue.ingest(session, [paid("e-late", "acme", "inv-late", 10_000, "2026-03-20")])
        before = kind_counts(session)
    result = invoke(seeded.url, *args)
    assert result.exit_code == 2 and message in result.output, result.output
    # Said once: the field the reason begins with was said again below it, in other words.
    first, *others = result.output.strip().splitlines()
    assert not any(line.strip().startswith(first.removeprefix("error: ").split(":")[0] + ":") for line in others)
    with seeded.reader() as session:
        assert kind_counts(session) == before


@pytest.mark.parametrize("command", ["release-holds", "payout-run"])
def test_an_at_asked_for_a_minute_ahead_is_refused_though_the_service_s_own_now_may_be_minutes_ahead(
        seeded, command):
    ahead = datetime.fromtimestamp(time.time() + 60, timezone.utc).isoformat()
    result = invoke(seeded.url, command, "--at", ahead)
    assert result.exit_code == 2 and "is in the future" in result.output, result.output


@pytest.mark.parametrize("command", ["release-holds", "payout-run"])
def test_a_release_or_run_without_at_is_made_when_the_clock_steps_back_after_the_command_reads_now(
        seeded, skewed_clock, command):
    with seeded.transaction() as session:
        revenue.ingest(session, monthly_events())
    skewed_clock.step_back_per_read_us = 2_000_000  # the instant "now" read first is ahead of every later read
    result = invoke(seeded.url, command)
    assert result.exit_code == 0, result.output
    assert ("released: 22\n" if command == "release-holds" else "payouts: 1\n") in result.output


@pytest.mark.parametrize("args, message", [
    (("close", "2026-13"), "period: must be a period YYYY-MM"),
    (("close", "2999-01"), "has not ended yet"),
    (("statement", "nobody", "--period", "2026-01"), "partner 'nobody' does not exist"),
    (("statement", "northwind", "--period", "2026-3"), "--period: must be a period YYYY-MM"),
    (("release-holds", "--at", "2062-01-01"), "--at: 2062-01-01T00:00:00Z is in the future"),
    (("payout-run", "--at", "2062-01-01"), "--at: 2062-01-01T00:00:00Z is in the future"),
    (("release-holds", "--at", "yesterday"), "--at: must be a date YYYY-MM-DD or an RFC 3339 instant"),
])
def test_bad_input_exits_2_with_a_clear_error(seeded, args, message):
    result = invoke(seeded.url, *args)
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize("command", [("verify",), ("trial-balance",), ("statement", "p", "--period", "2026-01"),
                                     ("keys", "create", "--role", "finance"), ("demo",)])
def test_a_database_that_cannot_be_used_exits_2_with_a_clear_error_not_a_traceback(tmp_path, command):
    unmigrated = invoke(f"sqlite:///{tmp_path / 'empty.db'}", *command)
    assert unmigrated.exit_code == 2, unmigrated.output
    assert "error: cannot use the database" in unmigrated.output and "run `revshare db upgrade`" in unmigrated.output
    assert not (tmp_path / "empty.db").exists()  # a mistyped path leaves no empty database behind
    unreachable = invoke(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}", *command)
    assert unreachable.exit_code == 2 and "unable to open database file" in unreachable.output
    (tmp_path / "notes.txt").write_text("not a database, " * 100)
    not_a_database = invoke(f"sqlite:///{tmp_path / 'notes.txt'}", *command)
    assert not_a_database.exit_code == 2 and "file is not a database" in not_a_database.output
    assert "Traceback" not in unmigrated.output + unreachable.output + not_a_database.output
    upgrade = invoke(f"sqlite:///{tmp_path / 'notes.txt'}", "db", "upgrade")
    assert upgrade.exit_code == 2 and "file is not a database" in upgrade.output


@pytest.mark.parametrize("command", ["scheduler", "serve"])
def test_the_server_and_the_scheduler_refuse_an_sqlite_file_that_does_not_exist(tmp_path, command):
    result = invoke(f"sqlite:///{tmp_path / 'typo.db'}", command)
    assert result.exit_code == 2 and "does not exist" in result.output and "run `revshare db upgrade`" in result.output
    assert list(tmp_path.iterdir()) == []  # nothing created: no database, no write-ahead log, no lock file


@pytest.mark.parametrize("command", [("demo",), ("verify",), ("keys", "create", "--role", "admin"), ("scheduler",)])
def test_a_command_run_before_db_upgrade_in_a_fresh_directory_names_the_missing_var_directory_and_the_fix(
        tmp_path, monkeypatch, never_started, command):
    # The default database is ./var/revshare.db; before `revshare db upgrade` there is no ./var, and
    # SQLite's own "unable to open database file" named neither the directory nor the command to run.
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, list(command), env={"REVSHARE_DATABASE_URL": None})
    assert result.exit_code == 2, result.output
    assert f"the directory {str(tmp_path / 'var')!r} does not exist" in result.output, result.output
    assert "run `revshare db upgrade` first" in result.output and list(tmp_path.iterdir()) == []


@pytest.fixture
def never_started(monkeypatch):
    """`revshare serve` and `revshare scheduler` with gunicorn and the scheduler replaced by a record
    of their start: a command that does not stop returns instead of running forever."""
    from cli import server
    from jobs import scheduler

    calls = []
    monkeypatch.setattr(server, "run", calls.append)
    monkeypatch.setattr(server, "unbindable", lambda host, port: None)  # (its own test)
    monkeypatch.setattr(scheduler, "run", calls.append)
    return calls


@pytest.mark.parametrize("command", ["scheduler", "serve"])
def test_the_server_and_the_scheduler_refuse_a_database_that_cannot_be_used_instead_of_failing_every_request(
        tmp_path, never_started, command):
    # Started on such a database, gunicorn answered every request that reads the books with a 500,
    # and the scheduler failed every job, hour after hour; the other commands exit 2 with the reason.
    (tmp_path / "empty.db").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a database, " * 100)
    (tmp_path / "a-directory.db").mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    for url, reason in [(f"sqlite:///{tmp_path / 'empty.db'}", "run `revshare db upgrade` first"),
                        (f"sqlite:///{tmp_path / 'notes.txt'}", "file is not a database"),
                        (f"sqlite:///{tmp_path / 'a-directory.db'}", "unable to open database file"),
                        (f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}", "unable to open database file"),
                        (f"postgresql://nobody@127.0.0.1:{closed_port}/revshare", "connection")]:
        if command == "scheduler" and url.startswith("postgresql"):
            continue  # a PostgreSQL server out of reach is waited for (tests/jobs/test_jobs.py)
        result = CliRunner().invoke(main, [command], env={"REVSHARE_DATABASE_URL": url})
        assert result.exit_code == 2 and "error: cannot use the database" in result.output, (url, result.output)
        assert reason in result.output and "Traceback" not in result.output, (url, result.output)
    assert never_started == []


@pytest.mark.parametrize("command", ["scheduler", "serve"])
@pytest.mark.parametrize("place", ["file", "directory", "lock file"])
def test_the_server_and_the_scheduler_refuse_an_sqlite_database_this_user_may_not_write(
        tmp_path, monkeypatch, never_started, command, place):
    # Started on it, gunicorn answered every write with a 500 (reads went on) and the scheduler
    # retried its jobs for ever. What the operating system says (`os.access`: a read-only mount, or
    # another user's file) is stood in for here, since the tests may run as root, whom modes do not stop.
    from cli import books as cli_books
    from ledger.db import writer_lock_path
    from ledger.migrate import upgrade

    path = tmp_path / "books.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    Database(url).dispose()
    lock = Path(writer_lock_path(str(path)))
    lock.touch()
    refused = {"file": path, "directory": tmp_path, "lock file": lock}[place]
    real_access = os.access
    monkeypatch.setattr(cli_books.os, "access", lambda where, mode: (
        not mode & os.W_OK and real_access(where, mode)) if Path(where) == refused else real_access(where, mode))
    result = CliRunner().invoke(main, [command], env={"REVSHARE_DATABASE_URL": url})
    assert result.exit_code == 2, result.output
    assert f"this user may not write {str(refused)!r}" in result.output and "(README, SQLite)" in result.output
    assert never_started == []
    monkeypatch.setattr(cli_books.os, "access", real_access)
    assert CliRunner().invoke(main, [command], env={"REVSHARE_DATABASE_URL": url}).exit_code == 0
    assert len(never_started) == 1


@pytest.mark.parametrize("command", ["scheduler", "serve"])
def test_the_server_and_the_scheduler_refuse_a_database_not_migrated_to_the_latest_revision(
        tmp_path, never_started, command):
    from ledger.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'behind.db'}"
    upgrade(url, "0023")
    result = CliRunner().invoke(main, [command], env={"REVSHARE_DATABASE_URL": url})
    assert result.exit_code == 2 and "is at revision 0023" in result.output, result.output
    assert "run `revshare db upgrade` first" in result.output and never_started == []
    upgrade(url)
    assert CliRunner().invoke(main, [command], env={"REVSHARE_DATABASE_URL": url}).exit_code == 0
    assert len(never_started) == 1
    with contextlib.closing(sqlite3.connect(tmp_path / "behind.db")) as connection, connection:  # as newer code would
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    ahead = CliRunner().invoke(main, [command], env={"REVSHARE_DATABASE_URL": url})
    assert ahead.exit_code == 2 and "is at revision 9999" in ahead.output and "migrated by newer code" in ahead.output
    assert "revshare db upgrade" not in ahead.output and len(never_started) == 1


@pytest.mark.parametrize("command", ["verify", "demo", "keys revoke", "close 2026-01", "payout-run"])
def test_a_command_on_a_database_a_migration_behind_the_code_names_the_fix(empty_url, command):
    # New code deployed, `revshare db upgrade` not yet run: the database lacks a column (0028's
    # salt) or a table (0027's revocations) the code uses. Each command stops with exit 2, and says
    # what to run, as it does for a database with no tables at all (which it no longer calls that).
    # A close and a payout run used none of them, and ran on the older schema without its rules.
    from ledger.keys import create_key
    from ledger.migrate import upgrade

    upgrade(empty_url, "0026")
    database = Database(empty_url)
    try:
        with database.transaction() as session:
            key_id, _ = create_key(session, "billing")
    finally:
        database.dispose()
    arguments = [*command.split(), *([key_id] if command == "keys revoke" else [])]
    result = CliRunner().invoke(main, arguments, env={"REVSHARE_DATABASE_URL": empty_url})
    assert result.exit_code == 2 and "error: cannot use the database" in result.output, result.output
    assert "it is at revision 0026, the service's latest is" in result.output, result.output
    assert "run `revshare db upgrade` first" in result.output, result.output
    database = Database(empty_url)
    try:
        with database.reader() as session:
            assert session.execute(text("SELECT count(*) FROM period_closes")).scalar_one() == 0
            assert session.execute(text("SELECT count(*) FROM payout_runs")).scalar_one() == 0
    finally:
        database.dispose()


def test_the_first_instant_of_the_epoch_is_an_instant_not_now(seeded):
    with seeded.transaction() as session:
        revenue.ingest(session, monthly_events(months=1))  # holds mature in February 2026
    assert invoke(seeded.url, "release-holds", "--at", "1970-01-01T00:00:00Z").output == "released: 0\n"
    assert "at 1970-01-01T00:00:00Z" in invoke(seeded.url, "payout-run", "--at", "1970-01-01T00:00:00Z").output
    assert "trial balance as of 1970-01-01T00:00:00Z" in invoke(seeded.url, "trial-balance", "--as-of",
                                                                "1970-01-01T00:00:00Z").output


def test_cli_errors_name_the_option_not_the_api_field(seeded):
    result = invoke(seeded.url, "keys", "create", "--role", "partner")
    assert result.exit_code == 2 and result.output.startswith("error: --partner:")
    for expires_at in ("2020-01-01T00:00:00Z", "tomorrow"):
        result = invoke(seeded.url, "keys", "create", "--role", "admin", "--expires-at", expires_at)
        assert result.exit_code == 2 and result.output.startswith("error: --expires-at:"), result.output


def test_a_key_whose_revocation_was_removed_past_the_rules_is_listed_as_revoked(sqlite_database):
    from tests.integration.test_tamper_evidence import behind_the_triggers

    made = invoke(sqlite_database.url, "keys", "create", "--role", "billing")
    key_id = made.output.splitlines()[0].removeprefix("id: ")
    assert invoke(sqlite_database.url, "keys", "revoke", key_id).exit_code == 0
    with behind_the_triggers(sqlite_database) as execute:
        execute(f"DELETE FROM api_key_revocations WHERE api_key_id = '{key_id}'")
    [listed] = [line for line in invoke(sqlite_database.url, "keys", "list").output.splitlines()
                if line.startswith(key_id)]
    assert listed.endswith("  revoked (its row removed past the database's rules: `revshare verify` names it)")


def test_a_key_made_to_expire_says_when_and_is_listed_so(seeded):
    made = invoke(seeded.url, "keys", "create", "--role", "billing", "--expires-at", "2999-01-01T00:00:00+01:00")
    assert made.exit_code == 0 and "expires: 2998-12-31T23:00:00Z" in made.output.splitlines()
    key_id = made.output.splitlines()[0].removeprefix("id: ")
    listed = [line for line in invoke(seeded.url, "keys", "list").output.splitlines() if line.startswith(key_id)]
    assert len(listed) == 1 and listed[0].endswith("  expires 2998-12-31T23:00:00Z")


def test_a_bad_migration_url_stops_with_a_message_naming_the_variable(database_url):
    result = CliRunner().invoke(main, ["verify"], env={"REVSHARE_DATABASE_URL": database_url,
                                                       "REVSHARE_MIGRATION_DATABASE_URL": "garbage"})
    assert result.exit_code == 2 and "REVSHARE_MIGRATION_DATABASE_URL must be an sqlite://" in result.output


def test_verify_exits_1_and_names_the_problem(sqlite_database):
    tampered_books(sqlite_database)
    result = invoke(sqlite_database.url, "verify")
    assert result.exit_code == 1
    assert "PROBLEM transaction 1: content_altered" in result.output and "PROBLEM transaction 1: unbalanced" in result.output


def test_verify_prints_the_head_to_record_and_proves_a_recorded_head(sqlite_database):
    with sqlite_database.transaction() as session:
        seed(session)
        revenue.ingest(session, monthly_events(months=1))
    first = invoke(sqlite_database.url, "verify")
    [head] = [line.removeprefix("head to record: ") for line in first.output.splitlines()
              if line.startswith("head to record: ")]
    assert first.exit_code == 0 and invoke(sqlite_database.url, "verify", "--head", head).exit_code == 0
    head_id, head_hash = head.split(":")
    later = invoke(sqlite_database.url, "verify", "--head", f"{int(head_id) + 1}:{head_hash}")
    assert later.exit_code == 1 and f"PROBLEM transaction {int(head_id) + 1}: head_missing" in later.output
    for bad in ("12", "x:" + head_hash, f"{head_id}:{head_hash[:-1]}", f"0:{head_hash}", f"\u00b2:{head_hash}"):
        refused = CliRunner().invoke(main, ["verify", "--head", bad],
                                     env={"REVSHARE_DATABASE_URL": sqlite_database.url})
        assert refused.exit_code == 2 and "--head" in refused.output


def test_verify_prints_the_program_head_to_record_and_proves_a_recorded_one(sqlite_database):
    with sqlite_database.transaction() as session:
        seed(session)
    first = invoke(sqlite_database.url, "verify")
    [head] = [line.removeprefix("program head to record: ") for line in first.output.splitlines()
              if line.startswith("program head to record: ")]
    assert first.exit_code == 0 and invoke(sqlite_database.url, "verify", "--program-head", head).exit_code == 0
    head_id, head_hash = head.split(":")
    with sqlite_database.transaction() as session:  # a fact recorded since: the head recorded still holds
        customers.attribute(session, "newcomer", "northwind", date(2026, 1, 1), "manual")
    assert invoke(sqlite_database.url, "verify", "--program-head", head).exit_code == 0
    rewritten = invoke(sqlite_database.url, "verify", "--program-head", f"{head_id}:{'0' * 64}")
    assert rewritten.exit_code == 1 and "PROBLEM: program_head_rewritten" in rewritten.output
    refused = CliRunner().invoke(main, ["verify", "--program-head", head_id],
                                 env={"REVSHARE_DATABASE_URL": sqlite_database.url})
    assert refused.exit_code == 2 and "--program-head" in refused.output
    assert "a row id of the program's chain" in refused.output


def test_verify_prints_the_close_to_record_and_proves_a_recorded_close(sqlite_database):
    with sqlite_database.transaction() as session:
        seed(session)
        revenue.ingest(session, monthly_events(months=2))
    assert "close to record" not in invoke(sqlite_database.url, "verify").output  # nothing closed yet
    assert invoke(sqlite_database.url, "close", "2026-01").exit_code == 0
    first = invoke(sqlite_database.url, "verify")
    [close] = [line.removeprefix("close to record: ") for line in first.output.splitlines()
               if line.startswith("close to record: ")]
    assert first.exit_code == 0 and close.startswith("2026-01:")
    assert invoke(sqlite_database.url, "verify", "--close", close).exit_code == 0
    missing = invoke(sqlite_database.url, "verify", "--close", close.replace("2026-01", "2026-02"))
    assert missing.exit_code == 1 and "PROBLEM: close_missing" in missing.output
    refused = CliRunner().invoke(main, ["verify", "--close", "2026-01"],
                                 env={"REVSHARE_DATABASE_URL": sqlite_database.url})
    assert refused.exit_code == 2 and "--close" in refused.output


def write_ndjson(path: Path, events) -> Path:
    path.write_text("".join(json.dumps(event_dict(event)) + "\n" for event in events))
    return path


def write_csv(path: Path, events) -> Path:
    rows = ["id,type,customer_id,invoice_id,amount,currency,occurred_at"]
    for e in map(event_dict, events):
        rows.append(f"{e['id']},{e['type']},{e['customer_id']},{e['invoice_id']},{e['amount']['amount']},"
                    f"{e['amount']['currency']},{e['occurred_at']}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_importing_a_file_gives_the_books_of_the_api_batch_route_and_a_rerun_replays_everything(
        sqlite_template, tmp_path, seeded):
    from api import create_app
    from ledger.keys import create_key

    events = monthly_events(months=3)
    reference = Database(new_sqlite_url(sqlite_template, tmp_path))
    with reference.transaction() as session:
        seed(session, customer_ids=[f"cust-{n:03d}" for n in range(40)] + ["acme", "globex-corp", "initrode"])
        _, billing = create_key(session, "billing")
    client = create_app(Settings.build(database_url=reference.url), reference).test_client()
    posted = client.post("/v1/revenue-events/batch", json={"events": [event_dict(e) for e in events]},
                         headers={"Authorization": f"Bearer {billing}"})
    assert posted.status_code == 200
    assert {result["http_status"] for result in posted.get_json()["results"]} == {201}
    ndjson = write_ndjson(tmp_path / "events.ndjson", events)
    first = invoke(seeded.url, "import", str(ndjson), "--batch-size", "4")
    rerun = invoke(seeded.url, "import", str(write_csv(tmp_path / "events.csv", events)))
    assert first.exit_code == 0 and f"read {len(events)} events" in first.output
    assert "posted: 10" in first.output and "replayed: 0" in first.output
    assert rerun.exit_code == 0 and f"replayed: {len(events)}" in rerun.output
    assert books(seeded) == books(reference)
    reference.dispose()


def test_refused_lines_are_summarized_with_reasons_and_exit_1(seeded, tmp_path):
    path = tmp_path / "mixed.ndjson"
    good = event_dict(paid("ok-1", "acme", "inv-ok-1", 10_000, "2026-01-10"))
    lines = [json.dumps(good), "{not json", json.dumps({**good, "id": "bad-1", "amount": 12.5}),
             json.dumps({**good, "id": "bad-2", "invoice_id": "nope", "type": "refund"})]
    path.write_text("\n".join(lines) + "\n")
    result = invoke(seeded.url, "import", str(path))
    assert result.exit_code == 1
    assert "posted: 1" in result.output and "refused: 3" in result.output
    assert "line 2" in result.output and "bad-1" in result.output and "no paid invoice 'nope'" in result.output


def test_lines_that_are_not_utf8_json_or_full_rows_are_refused_alone_and_the_import_goes_on(seeded, tmp_path):
    good = event_dict(paid("ok-1", "acme", "inv-ok-1", 10_000, "2026-01-10"))
    ndjson = tmp_path / "mixed.ndjson"
    ndjson.write_bytes(b"\n".join([
        "\ufeff".encode() + json.dumps(good).encode(),                # a byte-order mark first
        json.dumps({**good, "id": "caf\u00e9"}, ensure_ascii=False).encode("latin-1"),  # not UTF-8 (\xe9)
        b"[" * 100_000 + b"]" * 100_000, b'{"id": NaN}',
        json.dumps({**good, "id": "ok-2", "invoice_id": "inv-ok-2"}).encode()]) + b"\n")
    result = invoke(seeded.url, "import", str(ndjson))
    assert result.exit_code == 1 and "posted: 2" in result.output and "refused: 3" in result.output
    assert "line 2 event ?: not UTF-8 text" in result.output and "line 3 event ?: malformed JSON" in result.output
    assert "line 4 event ?: malformed JSON (NaN is not JSON)" in result.output

    header = "\ufeffid,type,customer_id,invoice_id,amount,currency,occurred_at"
    rows = [header, "ok-3,invoice_paid,acme,inv-ok-3,10.00,USD,2026-01-11T00:00:00Z",
            "x-1,invoice_paid,acme,inv-x-1,10.00,USD,2026-01-11T00:00:00Z,EXTRA",
            "x-2,invoice_paid,acme,inv-x-2,10.00,USD",
            "ok-4,invoice_paid,acme,inv-ok-4,10.00,USD,2026-01-12T00:00:00Z"]
    csv_path = tmp_path / "mixed.csv"
    csv_path.write_bytes("\n".join(rows).encode() + b"\nx-3,invoice_paid,acme,inv-\xe9,1.00,USD,2026-01-12T00:00:00Z\n")
    result = invoke(seeded.url, "import", str(csv_path))
    assert result.exit_code == 1 and "posted: 2" in result.output and "refused: 3" in result.output
    assert "line 3 event ?: the row has 8 fields, the header 7" in result.output
    assert "line 4 event ?: the row has 6 fields, the header 7" in result.output
    assert "line 6 event ?: not UTF-8 text" in result.output
    assert [line.split(" event")[0].strip() for line in result.output.splitlines() if " event ?:" in line] == [
        "line 3", "line 4", "line 6"]


def test_csv_columns_beyond_the_events_are_ignored_but_must_be_utf8_too(seeded, tmp_path):
    rows = [b"id,type,customer_id,invoice_id,amount,currency,occurred_at,note",
            b"n-1,invoice_paid,acme,inv-n-1,10.00,USD,2026-01-11T00:00:00Z,plain",
            b"n-2,invoice_paid,acme,inv-n-2,10.00,USD,2026-01-11T00:00:00Z,caf\xe9"]
    (tmp_path / "noted.csv").write_bytes(b"\n".join(rows) + b"\n")
    result = invoke(seeded.url, "import", str(tmp_path / "noted.csv"))
    assert result.exit_code == 1 and "posted: 1" in result.output and "line 3 event ?: not UTF-8 text" in result.output


def test_a_key_or_a_column_given_twice_is_refused_not_read_as_the_last(seeded, tmp_path):
    good = json.dumps(event_dict(paid("k-1", "acme", "inv-k-1", 10_000, "2026-01-10")))
    (tmp_path / "twice.ndjson").write_text(good.replace('"id": "k-1"', '"id": "k-1", "id": "k-2"') + "\n")
    result = invoke(seeded.url, "import", str(tmp_path / "twice.ndjson"))
    assert result.exit_code == 1 and "line 1 event ?: malformed JSON (an object gives the key 'id' more than once)" \
        in result.output
    rows = ["id,type,customer_id,invoice_id,amount,currency,occurred_at,id",
            "c-1,invoice_paid,acme,inv-c-1,10.00,USD,2026-01-11T00:00:00Z,c-2"]
    (tmp_path / "twice.csv").write_text("\n".join(rows) + "\n")
    result = invoke(seeded.url, "import", str(tmp_path / "twice.csv"))
    assert result.exit_code == 2 and "CSV header names id more than once" in result.output
    assert "posted: 0" in invoke(seeded.url, "import", str(tmp_path / "twice.ndjson")).output


@pytest.mark.parametrize("command", [("trial-balance",), ("verify",)])
def test_output_to_a_closed_pipe_exits_141_not_1(seeded, command):
    """`revshare trial-balance | head -1` exited 1, which a script reads as books that do not balance.
    The pipe's read end is closed before the command starts: its first write fails."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REVSHARE_")},
           "REVSHARE_DATABASE_URL": seeded.url}
    reader, writer = os.pipe()
    os.close(reader)
    try:
        ran = subprocess.run([REVSHARE, *command], env=env, stdout=writer, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(writer)
    assert ran.returncode == 141 and b"Traceback" not in ran.stderr and b"Exception ignored" not in ran.stderr, ran
    assert subprocess.run([REVSHARE, *command], env=env, capture_output=True, timeout=120).returncode == 0


def cli_environment(database) -> dict:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("REVSHARE_")}
    return {**environment, "REVSHARE_DATABASE_URL": database.url}


@pytest.mark.parametrize("command", [("statement", "northwind", "--period", "2026-01", "--format", "json"),
                                     ("trial-balance",), ("verify",), ("close", "2026-01"),
                                     ("keys", "create", "--role", "finance")])
def test_output_to_a_full_disk_exits_2_saying_so(seeded, command):
    # /dev/full refuses every write with ENOSPC: the command ended in a traceback, exit 1 (books with problems).
    # A document (a statement, a trial balance) is written by `echo_document`, a command's lines by click.echo.
    with seeded.transaction() as session:
        revenue.ingest(session, monthly_events(months=2))
    with open("/dev/full", "wb") as full:
        ran = subprocess.run([REVSHARE, *command], env=cli_environment(seeded), stdout=full, stderr=subprocess.PIPE,
                             timeout=120)
    assert ran.returncode == 2 and b"error: cannot write the output: No space left on device" in ran.stderr, ran
    assert b"Traceback" not in ran.stderr and b"Exception ignored" not in ran.stderr


def test_standard_error_on_the_full_disk_too_exits_2_silently(seeded, tmp_path):
    # `>log 2>&1` on a full disk: the message of the refusal was itself refused, and the command
    # exited 1 (books with problems); an import's progress on standard error was refused the same way.
    events = tmp_path / "events.ndjson"
    events.write_text(json.dumps(event_dict(paid("full-1", "acme", "inv-full-1", 10_000, "2026-01-10"))) + "\n")
    with open("/dev/full", "wb") as full:
        for command, stdout in ((["verify"], full), (["import", str(events)], subprocess.DEVNULL)):
            ran = subprocess.run([REVSHARE, *command], env=cli_environment(seeded), stdout=stdout, stderr=full,
                                 timeout=120)
            assert ran.returncode == 2, command
    closed = subprocess.run(["bash", "-c", f"'{REVSHARE}' import '{events}' >&- 2>/dev/full"],
                            env=cli_environment(seeded), timeout=120)  # standard output closed from the start
    assert closed.returncode == 2


@pytest.mark.parametrize("command", ["keys create --role finance", "verify", "trial-balance"])
def test_a_command_started_with_its_standard_output_closed_exits_2_saying_so(seeded, command):
    # `>&-`: click wrote nothing and the command exited 0; a key it made was never shown.
    closed = subprocess.run(["bash", "-c", f"'{REVSHARE}' {command} >&-"], env=cli_environment(seeded),
                            stderr=subprocess.PIPE, timeout=120)
    assert closed.returncode == 2 and b"standard output is closed" in closed.stderr, closed
    with seeded.reader() as session:
        assert session.execute(text("SELECT count(*) FROM api_keys")).scalar_one() == 0  # nothing made


def test_a_statement_whose_reader_goes_away_midway_exits_141_not_0(seeded):
    """Written whole, the statement met the closed pipe in one write that wrote part of it: Python
    dropped the rest without an error, and the command exited 0 with its output cut."""
    with seeded.transaction() as session:
        revenue.ingest(session, [paid(f"big-{n}", "acme", f"inv-big-{n}", 1_000 + n, "2026-01-15") for n in range(600)])
    command = [REVSHARE, "statement", "northwind", "--period", "2026-01", "--format", "json"]
    whole = subprocess.run(command, env=cli_environment(seeded), capture_output=True, timeout=120)
    assert whole.returncode == 0 and len(whole.stdout) > 2 * 65_536  # more than a pipe holds, twice over
    reader, writer = os.pipe()
    try:
        process = subprocess.Popen(command, env=cli_environment(seeded), stdout=writer, stderr=subprocess.PIPE)
    finally:
        os.close(writer)
    try:
        assert os.read(reader, 100)  # the command is writing: it fills the pipe and waits
    finally:
        os.close(reader)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 141 and b"Traceback" not in stderr and b"Exception ignored" not in stderr


def test_a_command_stopped_by_ctrl_c_exits_130_what_committed_standing_and_run_again_finishes(seeded, monkeypatch):
    # click printed "Aborted!" and exited 1, the code of books with problems, for a close or a verify.
    from ledger import periods

    def releases() -> int:
        with seeded.reader() as session:
            return session.execute(select(func.count()).select_from(journal_transactions)
                                   .where(journal_transactions.c.kind == "release")).scalar_one()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    with seeded.transaction() as session:
        revenue.ingest(session, monthly_events(months=3))
    assert invoke(seeded.url, "close", "2026-01").exit_code == 0
    with monkeypatch.context() as patched:
        patched.setattr(periods, "close_period", interrupted)
        patched.setattr("ledger.verify.verify", interrupted)
        stopped = invoke(seeded.url, "close", "2026-02")
        released = releases()
        checked = invoke(seeded.url, "verify")
    for result in (stopped, checked):
        assert result.exit_code == 130 and "stopped by SIGINT" in result.output, result.output
        assert "Aborted!" not in result.output
    with seeded.reader() as session:
        assert session.execute(select(period_closes.c.period)).scalars().all() == ["2026-01"]
    assert released > 0  # posted before the close was stopped, and standing
    again = invoke(seeded.url, "close", "2026-02")
    assert again.exit_code == 0 and again.output.startswith("released: 0\nclosed 2026-02: "), again.output
    assert invoke(seeded.url, "verify").exit_code == 0


def test_other_csv_columns_are_not_read_named_twice_or_unnamed(seeded, tmp_path):
    # A spreadsheet's export ending in two empty columns was refused whole, "CSV header names  more than once".
    rows = ["id,type,customer_id,invoice_id,amount,currency,occurred_at,note,note,,",
            "u-1,invoice_paid,acme,inv-u-1,10.00,USD,2026-01-11T00:00:00Z,a,b,,"]
    (tmp_path / "unnamed.csv").write_text("\n".join(rows) + "\n")
    result = invoke(seeded.url, "import", str(tmp_path / "unnamed.csv"))
    assert result.exit_code == 0 and "posted: 1" in result.output, result.output


def test_a_csv_header_that_lacks_a_column_stops_the_import_naming_it(seeded, tmp_path):
    rows = ["id,type,customer_id,invoice_id,amount,occurred_at",
            "m-1,invoice_paid,acme,inv-m-1,10.00,2026-01-11T00:00:00Z"]
    (tmp_path / "short.csv").write_text("\n".join(rows) + "\n")
    result = invoke(seeded.url, "import", str(tmp_path / "short.csv"))
    assert result.exit_code == 2 and "CSV header lacks currency" in result.output
    assert "Traceback" not in result.output and stored_events(seeded) == 0
    # No progress bar is begun for a file refused whole: its label showed before the refusal.
    assert "importing" not in result.output
    whole = ["id,type,customer_id,invoice_id,amount,currency,occurred_at",
             "m-1,invoice_paid,acme,inv-m-1,10.00,USD,2026-01-11T00:00:00Z"]
    (tmp_path / "whole.csv").write_text("\n".join(whole) + "\n")
    result = invoke(seeded.url, "import", str(tmp_path / "whole.csv"))
    assert result.exit_code == 0 and "importing" in result.output and "posted: 1" in result.output, result.output


def test_a_compressed_file_is_refused_as_not_utf8_not_as_a_csv_header_lacking_columns(seeded, tmp_path):
    """Named neither .csv nor .ndjson, a gzip file reads as CSV: it was refused as a CSV header that
    lacks every column."""
    import gzip

    line = json.dumps({"id": "z-1", "type": "invoice_paid", "customer_id": "acme", "invoice_id": "inv-z-1",
                       "amount": {"amount": "10.00", "currency": "USD"}, "occurred_at": "2026-01-11T00:00:00Z"})
    (tmp_path / "events.ndjson.gz").write_bytes(gzip.compress((line + "\n").encode()))
    result = invoke(seeded.url, "import", str(tmp_path / "events.ndjson.gz"))
    assert result.exit_code == 2 and "the first line is not UTF-8 text: is the file compressed?" in result.output
    assert "lacks" not in result.output and "Traceback" not in result.output and stored_events(seeded) == 0


def test_csv_with_carriage_return_line_endings_imports_and_a_quote_left_open_refuses_its_line_alone(
        seeded, tmp_path):
    rows = ["id,type,customer_id,invoice_id,amount,currency,occurred_at",
            "cr-1,invoice_paid,acme,inv-cr-1,10.00,USD,2026-01-11T00:00:00Z",
            "cr-2,invoice_paid,acme,inv-cr-2,10.00,USD,2026-01-12T00:00:00Z"]
    (tmp_path / "mac.csv").write_bytes("\r".join(rows).encode() + b"\r")
    result = invoke(seeded.url, "import", str(tmp_path / "mac.csv"))
    assert result.exit_code == 0 and "posted: 2" in result.output
    # Read on to where the quote closed, the rest of the file was one field: past the CSV reader's
    # bound (131,072 characters) the import stopped, with exit 2, after its first batch had committed.
    after = [f"q-{n},invoice_paid,acme,inv-q-{n},10.00,USD,2026-01-11T00:00:00Z" for n in range(2, 3_002)]
    stray = [rows[0], 'q-1,invoice_paid,acme,"inv-q-1,10.00,USD,2026-01-11T00:00:00Z', *after]
    (tmp_path / "stray.csv").write_text("\n".join(stray) + "\n")
    result = invoke(seeded.url, "import", "--batch-size", "1000", str(tmp_path / "stray.csv"))
    assert result.exit_code == 1 and "posted: 3000" in result.output and "refused: 1" in result.output, result.output
    assert "line 2 event ?: not CSV the import can read: a quoted field is not closed on its line" in result.output
    assert "Traceback" not in result.output and stored_events(seeded) == 2 + 3_000


def test_an_input_that_fails_to_read_stops_the_import_naming_it_without_a_traceback(seeded, tmp_path):
    # /proc/self/mem fails every read at its start (EIO), as a failing disk or a lost network file
    # system does; it was a traceback, with the exit status of events refused (1).
    for format_args in ((), ("--format", "csv")):
        result = invoke(seeded.url, "import", *format_args, "/proc/self/mem")
        assert result.exit_code == 2, result.output
        assert "error: cannot read '/proc/self/mem': Input/output error, at line 1" in result.output
        assert "Traceback" not in result.output and stored_events(seeded) == 0
    # Standard input closed (`revshare import - <&-`) was an AttributeError's traceback.
    closed = subprocess.run([REVSHARE, "import", "-"], capture_output=True, timeout=120, preexec_fn=lambda: os.close(0),
                            env={**os.environ, "REVSHARE_DATABASE_URL": seeded.url})
    assert closed.returncode == 2 and closed.stderr == b"error: cannot read standard input: standard input is closed\n"


def test_a_csv_cut_short_in_its_last_line_is_refused_there_and_the_whole_file_then_imports(seeded, tmp_path):
    # With amount the last column, "1500.00" cut to "150" is an amount still: the event was posted
    # at 150.00, and the whole file sent again was refused for it ("already received with other content").
    rows = ["id,type,customer_id,invoice_id,currency,occurred_at,amount",
            "t-1,invoice_paid,acme,inv-t-1,USD,2026-01-11T00:00:00Z,10.00",
            "t-2,invoice_paid,acme,inv-t-2,USD,2026-01-12T00:00:00Z,1500.00"]
    whole = "\n".join(rows) + "\n"
    (tmp_path / "cut.csv").write_text(whole[:-5])
    result = invoke(seeded.url, "import", str(tmp_path / "cut.csv"))
    assert result.exit_code == 1 and "posted: 1" in result.output and "refused: 1" in result.output, result.output
    assert "line 3 event ?: the last line has no line break, so the file may have been cut short" in result.output
    (tmp_path / "whole.csv").write_text(whole)
    result = invoke(seeded.url, "import", str(tmp_path / "whole.csv"))
    assert result.exit_code == 0 and "posted: 1" in result.output and "refused: 0" in result.output, result.output
    with seeded.reader() as session:
        amounts = dict(session.execute(select(revenue_events.c.id, revenue_events.c.amount_minor)).all())
    assert amounts == {"t-1": 1_000, "t-2": 150_000}


NO_EVENTS = pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b"\r\n\n"], ids=["empty", "bom", "blank"])


@NO_EVENTS
@pytest.mark.parametrize("name", ["events.ndjson", "events.csv", "events"])
def test_an_input_with_no_events_imports_none_whatever_its_name_says_its_format_is(seeded, tmp_path, name, content):
    # A nightly export with nothing in it: an empty .ndjson file imported nothing and exited 0, while
    # the same bytes named .csv, without an extension, or piped in (both read as CSV) stopped the
    # import with exit 2 and "CSV header lacks amount, currency, ...", though the input has no header.
    (tmp_path / name).write_bytes(content)
    result = invoke(seeded.url, "import", str(tmp_path / name))
    assert result.exit_code == 0 and "read 0 events" in result.output and "refused: 0" in result.output, result.output
    assert stored_events(seeded) == 0


@NO_EVENTS
def test_standard_input_with_no_events_imports_none(seeded, content):
    piped = subprocess.run([sys.executable, "-m", "cli.main", "import", "-"], input=content, capture_output=True,
                           timeout=120, cwd=Path(__file__).parents[2],
                           env={**os.environ, "REVSHARE_DATABASE_URL": seeded.url})
    assert piped.returncode == 0 and b"read 0 events" in piped.stdout, piped.stderr
    assert stored_events(seeded) == 0


def test_a_csv_with_rows_but_no_header_line_is_still_refused_naming_the_columns(seeded, tmp_path):
    (tmp_path / "rows.csv").write_text("h-1,invoice_paid,acme,inv-h-1,10.00,USD,2026-01-11T00:00:00Z\n")
    result = invoke(seeded.url, "import", str(tmp_path / "rows.csv"))
    assert result.exit_code == 2 and "CSV header lacks" in result.output and stored_events(seeded) == 0


def test_blank_lines_of_ndjson_are_skipped_not_refused_and_still_counted_in_line_numbers(seeded, tmp_path):
    good = event_dict(paid("bl-1", "acme", "inv-bl-1", 10_000, "2026-01-10"))
    lines = [json.dumps(good), "", "   \t", "{not json", json.dumps({**good, "id": "bl-2", "invoice_id": "inv-bl-2"})]
    (tmp_path / "blank.ndjson").write_text("\r\n".join(lines) + "\r\n\n")
    result = invoke(seeded.url, "import", str(tmp_path / "blank.ndjson"))
    assert result.exit_code == 1 and "read 3 events" in result.output
    assert "posted: 2" in result.output and "refused: 1" in result.output
    assert "line 4 event ?: malformed JSON" in result.output


def test_blank_lines_of_csv_before_the_header_or_among_the_rows_are_skipped_as_ndjson_s(seeded, tmp_path):
    # A blank line first refused the whole file ("CSV header lacks ...", exit 2), and a line of
    # spaces among the rows was refused as an event of one field (exit 1).
    rows = ["", "id,type,customer_id,invoice_id,amount,currency,occurred_at", "  ",
            "b-1,invoice_paid,acme,inv-b-1,10.00,USD,2026-01-11T00:00:00Z", "\t", "{", "   "]
    (tmp_path / "blank.csv").write_text("\r\n".join(rows) + "\r\n")
    result = invoke(seeded.url, "import", str(tmp_path / "blank.csv"))
    assert result.exit_code == 1 and "read 2 events" in result.output and "posted: 1" in result.output, result.output
    assert "line 6 event ?: the row has 1 fields, the header 7" in result.output


def test_a_line_longer_than_the_import_s_bound_is_refused_naming_it_and_the_import_goes_on(seeded, tmp_path):
    # Read whole, a line's length was the import's memory: 150 MB took it to 440 MB.
    good = event_dict(paid("ll-1", "acme", "inv-ll-1", 10_000, "2026-01-10"))
    long = json.dumps({**good, "id": "ll-0", "note": "x" * (LINE_CHARS_MAX + 1)})
    (tmp_path / "long.ndjson").write_text(long + "\n" + json.dumps(good) + "\n")
    result = invoke(seeded.url, "import", str(tmp_path / "long.ndjson"))
    assert result.exit_code == 1 and "posted: 1" in result.output and "refused: 1" in result.output, result.output
    assert f"line 1 event ?: a line longer than {LINE_CHARS_MAX:,} characters" in result.output


def test_a_file_named_neither_csv_nor_ndjson_is_ndjson_when_it_starts_with_a_brace_after_blank_space():
    assert detect_format("events", '\n  \t{"id": "e-1"}') == "ndjson"
    assert detect_format("events", "\r\nid,type") == "csv"
    assert detect_format("events.csv", '{"id": "e-1"}') == "csv"


def test_refusal_examples_are_the_first_lines_refused_in_line_order_whatever_order_they_were_refused_in(
        seeded, tmp_path):
    # Lines that cannot be read are refused as they are read, those the domain refuses with their
    # batch, after them: the examples still give the lowest line numbers, in order.
    refund = event_dict(paid("r-0", "acme", "nope", 1_000, "2026-01-10", kind="refund"))
    few = [json.dumps({**refund, "id": "r-1"}), "{not json"]
    (tmp_path / "few.ndjson").write_text("\n".join(few) + "\n")
    result = invoke(seeded.url, "import", str(tmp_path / "few.ndjson"))
    assert result.exit_code == 1 and refused_lines(result.output) == [1, 2]
    # 60 lines, odd ones refused by the domain, even ones unreadable: more than the examples kept.
    many = [json.dumps({**refund, "id": f"r-{n}"}) if n % 2 else "{not json" for n in range(1, 61)]
    (tmp_path / "many.ndjson").write_text("\n".join(many) + "\n")
    result = invoke(seeded.url, "import", str(tmp_path / "many.ndjson"))
    assert result.exit_code == 1 and "refused: 60" in result.output
    assert refused_lines(result.output) == list(range(1, 21))
    assert "    ... and 40 more refused (the first 20 lines are shown; the counts above are of all)" in result.output
    assert "more refused" not in invoke(seeded.url, "import", str(tmp_path / "few.ndjson")).output


def test_an_import_reading_a_pipe_stops_at_once_on_a_signal_and_keeps_one_it_was_started_ignoring(seeded):
    """A slow producer: the stop is not put off until its input ends (a pipe is copied through to
    its end before any event applies: `ledger.importer._spooled`). Started ignoring SIGINT (as
    `nohup` or a shell's background job starts it), the import keeps ignoring it."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REVSHARE_")}, "REVSHARE_DATABASE_URL": seeded.url}
    lines = "".join(json.dumps(event_dict(paid(f"p-{n}", "acme", f"inv-p{n}", 1_000, "2026-01-10"))) + "\n"
                    for n in range(10))
    reading = subprocess.Popen([REVSHARE, "import", "-"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    reading.stdin.write(lines)
    reading.stdin.flush()
    read_from(reading.stdin)  # and waiting for more: the input has not ended
    reading.send_signal(signal.SIGTERM)
    try:
        out, err = reading.communicate(timeout=20)  # the pipe is still open: it stops without it closing
    finally:
        reading.kill()
    assert reading.returncode == 143 and "stopped by SIGTERM after reading 0 events" in err, (out, err)
    assert "events read since were not applied" in err and stored_events(seeded) == 0

    ignoring = subprocess.Popen([REVSHARE, "import", "-"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    ignoring.stdin.write(lines)
    ignoring.stdin.flush()
    read_from(ignoring.stdin)  # past where it chose its handlers: the signal finds the one it kept
    ignoring.send_signal(signal.SIGINT)
    out, err = ignoring.communicate(timeout=60)  # closes its input: the import ends as it would have
    assert ignoring.returncode == 0 and "posted: 10" in out, (out, err)


def read_from(pipe, timeout_s: float = 60.0) -> None:
    """Wait until the process at the other end of `pipe` has read all that was written to it (the
    kernel's count of a pipe's unread bytes, asked of either end), and a moment more for it to take
    in what it read. A fixed wait was not enough on a loaded machine: the import had not started
    reading yet."""
    deadline = time.monotonic() + timeout_s
    while struct.unpack("i", fcntl.ioctl(pipe.fileno(), termios.FIONREAD, bytes(4)))[0] > 0:
        assert time.monotonic() < deadline, "the process did not read its input"
        time.sleep(0.05)
    time.sleep(0.5)


def test_an_import_whose_database_fails_midway_says_the_batches_before_it_stand(seeded, tmp_path, monkeypatch):
    """The database lost after some batches committed (a PostgreSQL server stopped): its own words,
    exit 2, and that running the import again is safe."""
    import sqlalchemy.exc

    from ledger import importer

    apply, calls = importer._apply, []

    def fails_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise sqlalchemy.exc.OperationalError("COMMIT", None, Exception("server closed the connection"))
        return apply(*args, **kwargs)
    monkeypatch.setattr(importer, "_apply", fails_second)
    events = [event_dict(paid(f"e-{n}", "acme", f"inv-{n}", 1_000, "2026-01-10")) for n in range(30)]
    (tmp_path / "lost.ndjson").write_text("".join(json.dumps(event) + "\n" for event in events))
    result = CliRunner().invoke(main, ["import", str(tmp_path / "lost.ndjson"), "--batch-size", "10"],
                                env={"REVSHARE_DATABASE_URL": seeded.url})
    assert result.exit_code == 2 and "server closed the connection" in result.output, result.output
    assert "the batches applied before it committed; run the import again, and what committed replays" in (
        result.output)
    assert stored_events(seeded) == 10


def test_a_refused_event_s_id_is_shown_escaped_not_run_by_the_terminal(seeded, tmp_path):
    # An id holding a line break, an escape sequence or a NUL: shown as Python writes it in a string.
    for raw, shown in (("e\r\nFAKE: all good", "e\\r\\nFAKE: all good"), ("e\x1b[2J", "e\\x1b[2J"),
                       ("e\x00", "e\\x00")):
        (tmp_path / "odd.ndjson").write_text(json.dumps({"id": raw, "type": "invoice_paid"}) + "\n")
        result = invoke(seeded.url, "import", str(tmp_path / "odd.ndjson"))
        assert result.exit_code == 1 and f"line 1 event {shown}: " in result.output, result.output
        assert not any(character in result.output for character in "\r\x1b\x00")


def test_lines_each_with_another_unknown_field_are_summed_under_one_reason(seeded, tmp_path):
    # Counted under its own name, each unknown field would be a reason of its own: a summary (and
    # memory) growing with the file, not the few lines of reasons a summary is.
    event = event_dict(paid("e-0", "acme", "inv-0", 1_000, "2026-01-10"))
    lines = [json.dumps({**event, "id": f"e-{n}", "invoice_id": f"inv-{n}", f"note_{n}": "x"}) for n in range(50)]
    (tmp_path / "noted.ndjson").write_text("\n".join(lines) + "\n")
    result = invoke(seeded.url, "import", str(tmp_path / "noted.ndjson"))
    assert result.exit_code == 1 and "refused: 50" in result.output
    reasons = [line.strip() for line in result.output.splitlines() if " x " in line]
    assert reasons == ["50 x Unprocessable entity (unknown field)"]
    assert "line 1 event e-0: note_0: unknown field" in result.output


def refused_lines(output: str) -> list[int]:
    return [int(line.split()[1]) for line in output.splitlines() if line.strip().startswith("line ")]


def test_an_import_commits_a_batch_each_time_batch_size_events_are_read(database):
    from ledger.importer import import_text

    with database.transaction() as session:
        seed(session)
    batches = []
    content = "".join(json.dumps(event_dict(event)) + "\n" for event in monthly_events(months=2))
    summary = import_text(database, content, "ndjson", batch_size=2, progress=batches.append)
    assert summary.read == 7 and batches == [2, 2, 2, 1]
    batches.clear()
    replayed = import_text(database, content, "ndjson", batch_size=4, progress=batches.append)
    assert replayed.replayed == 7 and batches == [4, 3]


def test_an_event_whose_total_is_out_of_range_is_refused_on_its_line_and_the_rest_imported(database, tmp_path):
    books = Books(database)
    books.plan("all", "1")  # each BHD 999,999,999,999,999.999 accrues about 1e18 fils: 9 fit under 2^63 - 1
    books.partner("whale", "all")
    books.attribute("whale-customer", "whale", "2026-01-01")
    events = [paid(f"big-{n}", "whale-customer", f"big-{n}", 999_999_999_999_999_999, "2026-01-20")._replace(
        currency="BHD") for n in range(11)]
    result = invoke(database.url, "import", str(write_ndjson(tmp_path / "big.ndjson", events)))
    assert result.exit_code == 1 and "posted: 9" in result.output and "refused: 2" in result.output
    assert "line 10 event big-9: amount: would take an account's running total past" in result.output
    assert "line 11 event big-10:" in result.output


def test_an_event_posting_at_an_instant_set_by_a_server_over_five_minutes_ahead_is_refused_on_its_line(
        database, skewed_clock):
    # A refund by a server 10 minutes ahead leaves the invoice's remainder (a minor unit of rounding)
    # to be clawed back when it is wholly refunded, at that refund's instant. The refund that completes
    # it, dated before it and imported by a server with the right time, would post there, which the
    # journal refuses: that line is refused, the rest of its batch imported.
    from ledger.importer import import_text

    books = Books(database)
    books.plan("twenty", "0.20")
    books.partner("near", "twenty")
    books.attribute("near-customer", "near", "2026-01-01")
    now_s = time.time()
    day = lambda offset_s: datetime.fromtimestamp(now_s + offset_s, timezone.utc).isoformat()
    books.post("invoice_paid", "near-customer", "inv-0.06", "0.06", day(-10 * 86_400))  # accrues 0.01
    skewed_clock.offset_us = 10 * 60 * 1_000_000
    books.refund("near-customer", "inv-0.06", "0.03", day(9 * 60))  # half of 0.01 rounds to none
    skewed_clock.offset_us = 0
    lines = [books.event("invoice_paid", "near-customer", "inv-other", "1.00", day(-86_400), event_id="other"),
             books.event("refund", "near-customer", "inv-0.06", "0.03", day(-86_400), event_id="completes")]
    content = "".join(json.dumps(event_dict(event)) + "\n" for event in lines)
    summary = import_text(database, content, "ndjson")
    assert (summary.read, summary.statuses["posted"], summary.refused) == (2, 1, 1), summary
    [example] = summary.refusal_examples
    assert example.startswith("line 2 event completes: a clawback dated") and "more than five minutes ahead" in example
    skewed_clock.offset_us = 10 * 60 * 1_000_000
    retried = import_text(database, content, "ndjson")
    assert (retried.replayed, retried.statuses["posted"], retried.refused) == (1, 1, 0), retried


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def killed_and_clean(request, sqlite_template, tmp_path):
    """Two databases on one engine, seeded with the same program: one for the killed import, one
    for the clean run."""
    customer_ids = [f"cust-{n:03d}" for n in range(IMPORT_CUSTOMERS)]
    cluster = None if request.param == "sqlite" else request.getfixturevalue("pg_cluster")
    urls = [new_sqlite_url(sqlite_template, tmp_path) if cluster is None else new_pg_url(cluster) for _ in range(2)]
    databases = [Database(url) for url in urls]
    for database in databases:
        with database.transaction() as session:
            seed(session, customer_ids=customer_ids)
    yield databases, customer_ids
    for database in databases:
        database.dispose()
    for url in urls if cluster is not None else ():
        drop_pg_database(cluster, url)


def stored_events(database: Database) -> int:
    with database.reader() as session:
        return session.execute(select(func.count()).select_from(revenue_events)).scalar_one()


def kill_an_import(database: Database, path: Path, events_min: int) -> int:
    """Start `revshare import`, SIGKILL it as soon as at least `events_min` events are stored, and
    return how many it had stored."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REVSHARE_")},
           "REVSHARE_DATABASE_URL": database.url}
    process = subprocess.Popen([REVSHARE, "import", str(path), "--batch-size", "20"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen, deadline = 0, time.monotonic() + 60
        while seen < events_min and time.monotonic() < deadline and process.poll() is None:
            seen = stored_events(database)
            time.sleep(0.005)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    return stored_events(database)


def audited_books(database: Database) -> tuple:
    """`books()` and what finance and partners read: the trial balance, every partner's statement
    for every month with postings, and the chain: its length and, in order, each transaction's
    content hash (the chain hashes also cover the recorded instants, which differ between runs).
    verify() must be clean."""
    t = journal_transactions.c
    with database.reader() as session:
        balance = trial_balance(session, before_us=None)
        first_us, last_us = session.execute(select(func.min(t.effective_at_us), func.max(t.effective_at_us))).one()
        months = [period_of(first_us)]
        while period_bounds_us(months[-1])[1] <= last_us:
            months.append(next_period(months[-1]))
        statements_ = [statements.to_data(statements.statement(session, partner_id, month))
                       for partner_id in session.execute(select(partners.c.id).order_by(partners.c.id)).scalars()
                       for month in months]
        chain = session.execute(select(t.id, t.kind, t.request_hash).order_by(t.id)).all()
        report = verify(session)
    assert report.ok, report.problems
    assert report.transactions_checked == len(chain) and balance.balanced
    return books(database), balance, statements_, chain


def test_an_import_killed_halfway_and_run_again_gives_the_books_of_one_clean_run(killed_and_clean, tmp_path):
    (killed, clean), customer_ids = killed_and_clean
    events = monthly_events(months=11, customer_ids=customer_ids)
    path = write_ndjson(tmp_path / "big.ndjson", events)
    interrupted = 0
    for _ in range(IMPORT_KILLS):  # each run replays what committed, posts some more and is killed
        stored = kill_an_import(killed, path, interrupted + 200)
        assert interrupted + 200 <= stored < len(events), "the import must be interrupted halfway"
        interrupted = stored
    rerun = invoke(killed.url, "import", str(path))
    assert rerun.exit_code == 0 and f"replayed: {interrupted}" in rerun.output, rerun.output
    assert f"posted: {len(events) - interrupted}" in rerun.output, rerun.output
    assert invoke(clean.url, "import", str(path)).exit_code == 0
    assert audited_books(killed) == audited_books(clean)


def test_an_import_with_refunds_before_their_payments_killed_and_run_again_gives_the_books_of_one_clean_run(
        killed_and_clean, tmp_path):
    """A refund on a line before its payment is refused by a clean run; the rerun of a killed run
    finds the payment committed, and still refuses it (`ledger.revenue`, "In input order")."""
    (killed, clean), customer_ids = killed_and_clean
    events = monthly_events(months=11, customer_ids=customer_ids)
    for index in range(len(events) - 1, 40, -7):  # a refund of every seventh payment, 40 lines before it
        payment = events[index]
        refund = payment._replace(id=f"{payment.id}-refund", type="refund", amount_minor=payment.amount_minor // 4,
                                  occurred_at_us=payment.occurred_at_us + 86_400_000_000)
        events.insert(index - 40, refund)
    refunds = sum(event.type == "refund" for event in events)
    path = write_ndjson(tmp_path / "refunds-first.ndjson", events)
    stored = kill_an_import(killed, path, 200)
    assert 200 <= stored < len(events) - refunds, "the import must be interrupted halfway"
    rerun = invoke(killed.url, "import", str(path))
    once = invoke(clean.url, "import", str(path))
    assert once.exit_code == rerun.exit_code == 1 and f"refused: {refunds}" in once.output, once.output
    assert f"refused: {refunds}" in rerun.output and "payment of its invoice later in the file" in rerun.output
    assert audited_books(killed) == audited_books(clean)


@pytest.mark.parametrize("stop, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_an_import_stopped_by_a_signal_says_what_committed_and_run_again_gives_the_books_of_one_clean_run(
        killed_and_clean, tmp_path, stop, code):
    """Ctrl-C or a supervisor's SIGTERM: not an exit 1 ("events refused") with no summary, but the
    signal's own status (at once while reading, once the batch being applied has committed), what
    the batches did, and how to go on."""
    (stopped, clean), customer_ids = killed_and_clean
    events = monthly_events(months=11, customer_ids=customer_ids)
    path = write_ndjson(tmp_path / "big.ndjson", events)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REVSHARE_")},
           "REVSHARE_DATABASE_URL": stopped.url}
    # Started with the signal's default action, as a terminal's foreground job is: a runner started
    # as a background job of a script (`make soak &`) ignores SIGINT, and the import would keep that.
    process = subprocess.Popen([REVSHARE, "import", str(path), "--batch-size", "20"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(stop, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while stored_events(stopped) < 200 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(stop)
    out, err = process.communicate(timeout=60)
    assert process.returncode == code, (out, err)
    assert f"stopped by {stop.name} after reading" in err and "run the import again" in err, err
    printed = sum(int(re.search(rf"^  {status}: ([0-9]+)$", out, re.MULTILINE).group(1))
                  for status in ("posted", "unattributed", "no_commission", "replayed", "refused"))
    stored = stored_events(stopped)
    assert 200 <= stored < len(events), "the import must be stopped halfway"
    read = int(re.search(r"^read ([0-9]+) events$", out, re.MULTILINE).group(1))
    # The batches applied committed, and are what it prints; stopped while reading, it had read a
    # part of the next batch, or all of it when the signal came before its applying began: not applied.
    assert printed == stored and stored <= read <= stored + 20
    rerun = invoke(stopped.url, "import", str(path))
    assert rerun.exit_code == 0 and f"replayed: {stored}" in rerun.output, rerun.output
    assert invoke(clean.url, "import", str(path)).exit_code == 0
    assert audited_books(stopped) == audited_books(clean)


@pytest.mark.parametrize("path", ["-", "/dev/stdin"])
@pytest.mark.parametrize("writer", [write_ndjson, write_csv], ids=["ndjson", "csv"])
def test_importing_from_a_pipe_reads_what_the_file_holds(seeded, tmp_path, path, writer):
    # `producer | revshare import -`: the format is chosen from the stream's first bytes, read ahead and
    # given again, since a pipe cannot be read twice (a byte-order mark first, as some exporters write).
    events = monthly_events(months=3)
    source = writer(tmp_path / "events", events)
    source.write_bytes(b"\xef\xbb\xbf" + source.read_bytes())
    piped = subprocess.run([REVSHARE, "import", path], input=source.read_bytes(), capture_output=True, timeout=120,
                           env={**os.environ, "REVSHARE_DATABASE_URL": seeded.url})
    assert piped.returncode == 0, piped.stderr
    assert f"read {len(events)} events".encode() in piped.stdout and b"refused: 0" in piped.stdout
    assert b"importing" not in piped.stderr  # a pipe has no size: no progress bar
    # Every event the file holds was posted from the pipe, with the same content (else a 409, refused).
    from_file = invoke(seeded.url, "import", str(source), "--format", writer.__name__.removeprefix("write_"))
    assert from_file.exit_code == 0 and f"replayed: {len(events)}" in from_file.output


def test_a_pipe_whose_copy_fails_stops_the_import_before_anything_applies_saying_it_is_the_copy(seeded, monkeypatch):
    """A pipe is copied to a temporary file before the import reads it through (`_spooled`): a full
    disk there is named as the copy's failure, not the input's, and nothing has committed."""
    class Full(io.BytesIO):
        def write(self, data) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(importer.tempfile, "TemporaryFile", Full)
    reader, writer = os.pipe()
    os.write(writer, json.dumps(event_dict(paid("p-1", "acme", "inv-1", 1_000, "2026-01-10"))).encode() + b"\n")
    os.close(writer)
    try:
        with open_events(f"/dev/fd/{reader}") as stream, pytest.raises(importer.Unreadable) as stopped:
            importer.import_stream(seeded, stream, "ndjson")
    finally:
        os.close(reader)
    said = str(stopped.value)
    assert said.startswith("its copy in a temporary file (in ") and "No space left on device" in said, said
    assert not stopped.value.committed
    assert stored_events(seeded) == 0


def test_a_pipes_first_bytes_are_read_ahead_however_its_producer_writes_them():
    # A producer that writes a byte-order mark, then its events a moment later: a single read of the
    # pipe would see the mark alone, nothing to tell NDJSON from CSV by.
    reader, writer = os.pipe()
    os.write(writer, b"\xef\xbb\xbf")

    def rest() -> None:
        time.sleep(0.2)
        os.write(writer, b'{"id": "e-1"}\n')
        os.close(writer)
    producer = threading.Thread(target=rest)
    producer.start()
    try:
        with open_events(f"/dev/fd/{reader}") as stream:
            assert detect_format("-", head(stream)) == "ndjson"
            assert stream.read() == '\ufeff{"id": "e-1"}\n'  # all of it, from the start
    finally:
        producer.join()
        os.close(reader)


@pytest.mark.parametrize("blanks", [HEAD_BYTES - 1, 70_000])
def test_a_pipe_s_head_is_as_long_as_a_file_s_however_its_producer_writes_it(tmp_path, blanks):
    # The first `{` after blank lines, written a moment after them: a pipe read ahead short of it
    # would be taken for CSV, and so was a file or a pipe with more than 256 bytes of them.
    content = b"\xef\xbb\xbf" + b" \r\n" * (blanks // 3) + b'{"id": "e-1"}\n' + b"x" * 1_000
    (tmp_path / "events").write_bytes(content)
    first = content.index(b"{")
    reader, writer = os.pipe()

    def produce() -> None:  # beside the reader: a pipe holds 64 KiB
        os.write(writer, content[:first])
        time.sleep(0.2)
        os.write(writer, content[first:])
        os.close(writer)
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        with open_events(str(tmp_path / "events")) as file, open_events(f"/dev/fd/{reader}") as pipe:
            assert head(pipe) == head(file) == content[:first + HEAD_BYTES].decode().removeprefix("\ufeff")
            assert detect_format("-", head(pipe)) == detect_format("events", head(file)) == "ndjson"
            assert pipe.read() == file.read() == content.decode()
    finally:
        producer.join()
        os.close(reader)


def test_an_ndjson_file_after_many_blank_lines_imports_as_ndjson(seeded, tmp_path):
    line = json.dumps(event_dict(paid("b-1", "acme", "inv-b-1", 1_000, "2026-01-10")))
    (tmp_path / "events").write_text("\n" * 300 + line + "\n")
    result = invoke(seeded.url, "import", str(tmp_path / "events"))
    assert result.exit_code == 0 and "posted: 1" in result.output, result.output


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-be"])
@pytest.mark.parametrize("file_format", ["auto", "csv", "ndjson"])
def test_a_utf16_or_utf32_file_is_refused_as_such_before_anything_applies(seeded, tmp_path, encoding, file_format):
    """Saved as "Unicode text" by a spreadsheet or PowerShell: it was refused as not UTF-8 with a
    question whether it was compressed (CSV), or line by line with one event too many (NDJSON)."""
    line = json.dumps(event_dict(paid("u-1", "acme", "inv-u-1", 1_000, "2026-01-10")))
    text = "\ufeff" + ("id,type,customer_id,invoice_id,amount,currency,occurred_at\n" if file_format == "csv" else "")
    (tmp_path / "events").write_bytes((text + line + "\n").encode(encoding))
    result = invoke(seeded.url, "import", "--format", file_format, str(tmp_path / "events"))
    wide = encoding[:6].upper()
    assert result.exit_code == 2 and f"error: the input is {wide} text, and an import reads UTF-8: convert it first " \
        f"(`iconv -f {wide} -t UTF-8 FILE | revshare import -`)" in result.output, result.output
    assert "Traceback" not in result.output and stored_events(seeded) == 0


def test_a_refused_lines_example_says_what_is_wrong_with_each_field(seeded, tmp_path):
    (tmp_path / "events.ndjson").write_text('{"id": "d-9", "type": "payment", "amount": "1.00"}\n')
    result = invoke(seeded.url, "import", str(tmp_path / "events.ndjson"))
    assert result.exit_code == 1 and "refused: 1" in result.output
    assert ("line 1 event d-9: customer_id: missing required field; invoice_id: missing required field; "
            "occurred_at: missing required field; type: must be one of invoice_paid, refund, chargeback, "
            "chargeback_reversed; amount: a money object") in result.output, result.output
    (tmp_path / "wide.ndjson").write_text(json.dumps({f"k{n}": 0 for n in range(1_000)}) + "\n")
    result = invoke(seeded.url, "import", str(tmp_path / "wide.ndjson"))
    [example] = [line for line in result.output.splitlines() if line.strip().startswith("line 1 event")]
    assert example.endswith("; and 998 more") and example.count(":") == 9, example  # 1,000 unknown, 6 missing


def test_a_bad_database_url_is_named_without_its_password(tmp_path):
    # The message goes to the terminal and the service's logs: a URL of another database used to
    # print the password with the rest of it.
    for name in ("REVSHARE_DATABASE_URL", "REVSHARE_MIGRATION_DATABASE_URL"):
        env = {"REVSHARE_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
               name: "mysql://ledger:s3cr@t@db.internal:3306/revshare"}
        result = CliRunner().invoke(main, ["verify"], env=env)
        assert result.exit_code == 2 and f"{name} must be an sqlite:// or postgresql:// URL" in result.output
        assert "s3cr" not in result.output and "mysql://ledger:***@db.internal:3306/revshare" in result.output


@pytest.mark.parametrize("url, shown", [
    ("postgresql://app@127.0.0.1:1/revshare?password=s3cret&connect_timeout=1",
     "postgresql://app@127.0.0.1:1/revshare?password=***&connect_timeout=1"),
    ("postgresql://app:s3cr/pw@127.0.0.1:1/revshare?connect_timeout=1",
     "postgresql://app:***@127.0.0.1:1/revshare?connect_timeout=1"),
])
def test_a_database_out_of_reach_is_named_without_its_password(url, shown):
    # The settings' check masked the URL, but a database that failed once connected to was named as
    # SQLAlchemy renders it: a password= option in full, and a `/` of a password cut in two.
    result = CliRunner().invoke(main, ["verify"], env={"REVSHARE_DATABASE_URL": url})
    assert result.exit_code == 2 and f"error: cannot use the database {shown!r}" in result.output
    assert "s3cr" not in result.output


@pytest.mark.parametrize("url", ["postgresql://app:s3cret@db.internal:54x2/revshare", "postgresql://app@[::1/revshare",
                                 "sqlite:////tmp/revshare-test/books.db?timeout=abc"])
@pytest.mark.parametrize("command", [("db", "upgrade"), ("verify",), ("scheduler",), ("serve",), ("demo",)])
def test_a_database_url_the_driver_cannot_read_stops_every_command_with_exit_2_naming_the_variable(url, command):
    # Each command raised the driver's ValueError where it made its engine: a traceback, and exit 1,
    # which is verify's "the books have problems".
    result = CliRunner().invoke(main, list(command), env={"REVSHARE_DATABASE_URL": url}, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "Error: REVSHARE_DATABASE_URL " in result.output and "is not a URL the database driver can read" in \
        result.output and "s3cret" not in result.output


def test_a_command_s_help_is_shown_whatever_the_settings_and_running_it_names_the_bad_one():
    # The settings were read as `revshare` started, before its command's arguments: asking a command
    # for its help answered a bad setting's error.
    env = {"REVSHARE_DATABASE_URL": "sqlite:////tmp/revshare-test/books.db", "REVSHARE_LOG_LEVEL": "loud"}
    for command in (["statement"], ["keys", "create"], ["db", "upgrade"], ["serve"], ["scheduler"], ["verify"]):
        shown = CliRunner().invoke(main, [*command, "--help"], env=env, catch_exceptions=False, prog_name="revshare")
        assert shown.exit_code == 0 and shown.output.startswith(f"Usage: revshare {' '.join(command)} "), shown.output
    refused = CliRunner().invoke(main, ["verify"], env=env, catch_exceptions=False, prog_name="revshare")
    assert refused.exit_code == 2, refused.output
    assert refused.output.startswith("Usage: revshare [OPTIONS] COMMAND [ARGS]...\n"), refused.output
    assert "Error: REVSHARE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got 'loud'" in refused.output


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_db_upgrade_refuses_an_sqlite_database_in_memory_rather_than_migrate_one_that_vanishes(url):
    result = CliRunner().invoke(main, ["db", "upgrade"], env={"REVSHARE_DATABASE_URL": url}, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert f"Error: REVSHARE_DATABASE_URL {url!r} is an SQLite database in memory" in result.output
    assert "database is at the latest revision" not in result.output


def test_libpq_s_postgres_scheme_is_taken_as_postgresql():
    # Hosting providers often hand out postgres://, which SQLAlchemy no longer knows.
    settings = Settings.build(database_url="postgres://ledger:pw@db.internal/revshare",
                              migration_database_url="postgres://owner:pw@db.internal/revshare")
    assert settings.database_url == "postgresql://ledger:pw@db.internal/revshare"
    assert settings.migration_database_url == "postgresql://owner:pw@db.internal/revshare"
    assert Settings.build(database_url="sqlite:///postgres://x").database_url == "sqlite:///postgres://x"


@pytest.mark.parametrize("command", [("db", "upgrade"), ("verify",)])
def test_an_empty_database_url_is_refused_not_taken_for_the_default_sqlite_file(tmp_path, monkeypatch, command):
    # `REVSHARE_DATABASE_URL=${DB_URL}` with DB_URL unset: `revshare db upgrade` created ./var/revshare.db,
    # and the service then ran on SQLite while the operator thought it on PostgreSQL.
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, list(command), env={"REVSHARE_DATABASE_URL": ""})
    assert result.exit_code == 2 and "REVSHARE_DATABASE_URL is set but empty" in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_an_empty_migration_database_url_is_refused_not_taken_for_the_database_url(tmp_path):
    # `REVSHARE_MIGRATION_DATABASE_URL=${OWNER_URL}` with OWNER_URL unset migrated as the service's role,
    # whose refusal on PostgreSQL then said to set the variable the operator had set.
    env = {"REVSHARE_DATABASE_URL": f"sqlite:///{tmp_path / 'books.db'}", "REVSHARE_MIGRATION_DATABASE_URL": ""}
    result = CliRunner().invoke(main, ["db", "upgrade"], env=env)
    assert result.exit_code == 2, result.output
    assert "REVSHARE_MIGRATION_DATABASE_URL is set but empty" in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_a_changed_event_imported_again_is_refused_naming_the_fields_that_differ(seeded, tmp_path):
    # The summary's examples said only "was already received with other content": with several
    # conflicts, which line differed where was not told.
    rows = ["id,type,customer_id,invoice_id,currency,occurred_at,amount",
            "c-1,invoice_paid,acme,inv-c-1,USD,2026-01-11T00:00:00Z,10.00",
            "c-2,invoice_paid,acme,inv-c-2,USD,2026-01-12T00:00:00Z,20.00"]
    (tmp_path / "first.csv").write_text("\n".join(rows) + "\n")
    assert invoke(seeded.url, "import", str(tmp_path / "first.csv")).exit_code == 0
    changed = [rows[0], rows[1].replace("10.00", "11.00"), rows[2].replace("12T", "13T").replace("20.00", "21.00")]
    (tmp_path / "changed.csv").write_text("\n".join(changed) + "\n")
    result = invoke(seeded.url, "import", str(tmp_path / "changed.csv"))
    assert result.exit_code == 1 and "refused: 2" in result.output, result.output
    assert "line 2 event c-1: event 'c-1' was already received with other content: amount differs" in result.output
    assert ("line 3 event c-2: event 'c-2' was already received with other content: amount, occurred_at differ"
            in result.output)


def test_an_id_given_again_with_other_content_in_the_same_batch_of_a_file_is_said_to_be_earlier_in_the_file(
        seeded, tmp_path):
    lines = [json.dumps(event_dict(paid("z-1", "acme", "inv-z-1", amount, "2026-01-10"))) for amount in (1_000, 2_000)]
    (tmp_path / "events.ndjson").write_text("\n".join([lines[0], lines[0], lines[1]]) + "\n")
    result = invoke(seeded.url, "import", str(tmp_path / "events.ndjson"))
    assert result.exit_code == 1 and "posted: 1" in result.output and "refused: 1" in result.output, result.output
    assert "line 3 event z-1: event 'z-1' appears earlier in the file with other content: amount differs" in (
        result.output)
