"""The `revshare` command line through click's CliRunner, and a real `revshare import` killed
halfway and run again."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cli.main import main
from ledger import revenue
from ledger.balances import all_balances
from ledger.db import Database
from ledger.schema import journal_lines, journal_transactions, revenue_events
from tests.program import event_dict, monthly_events, paid, seed

REVSHARE = str(Path(sys.executable).parent / "revshare")


def invoke(url: str, *args: str):
    return CliRunner().invoke(main, list(args), env={"REVSHARE_DATABASE_URL": url}, catch_exceptions=False)


@pytest.fixture
def seeded(database):
    with database.transaction() as session:
        seed(session, customer_ids=[f"cust-{n:03d}" for n in range(40)] + ["acme", "globex-corp", "initrode"])
    return database


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


def test_a_bad_setting_stops_with_a_message_naming_the_variable(database_url):
    result = CliRunner().invoke(main, ["verify"], env={"REVSHARE_DATABASE_URL": database_url,
                                                       "REVSHARE_CLOSE_GRACE_DAYS": "soon"})
    assert result.exit_code == 2 and "REVSHARE_CLOSE_GRACE_DAYS must be an integer" in result.output


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
    assert "northwind 115.00 USD pending" in run.output and "payouts: 1" in run.output
    assert "(already run)" in again.output and "payouts: 1" in again.output
    assert closed.exit_code == 0 and closed.output.startswith("closed 2026-01: 6 transactions, close hash ")


@pytest.mark.parametrize("args, message", [
    (("close", "2026-13"), "period: must be a period YYYY-MM"),
    (("close", "2999-01"), "has not ended yet"),
    (("statement", "nobody", "--period", "2026-01"), "partner 'nobody' does not exist"),
    (("release-holds", "--at", "yesterday"), "--at: must be an RFC 3339 instant"),
])
def test_bad_input_exits_2_with_a_clear_error(seeded, args, message):
    result = invoke(seeded.url, *args)
    assert result.exit_code == 2 and message in result.output


def test_verify_exits_1_and_names_the_problem(sqlite_database):
    with sqlite_database.transaction() as session:
        seed(session)
        revenue.ingest(session, monthly_events(months=1))
    import sqlite3

    connection = sqlite3.connect(sqlite_database.engine.url.database)
    connection.execute("DROP TRIGGER trg_journal_lines_no_update")
    connection.execute("UPDATE journal_lines SET amount_minor = amount_minor + 1 WHERE id = 1")
    connection.commit()
    connection.close()
    result = invoke(sqlite_database.url, "verify")
    assert result.exit_code == 1
    assert "PROBLEM transaction 1: content_altered" in result.output and "PROBLEM transaction 1: unbalanced" in result.output


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
    from tests.conftest import new_sqlite_url

    from api import create_app
    from ledger.keys import create_key
    from ledger.settings import Settings

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


def test_an_import_killed_halfway_and_run_again_gives_the_books_of_one_clean_run(sqlite_template, tmp_path):
    from tests.conftest import new_sqlite_url

    customers = [f"cust-{n:03d}" for n in range(150)]
    events = monthly_events(months=12, customer_ids=customers)
    path = write_ndjson(tmp_path / "big.ndjson", events)
    killed, clean = (Database(new_sqlite_url(sqlite_template, tmp_path)) for _ in range(2))
    for database in (killed, clean):
        with database.transaction() as session:
            seed(session, customer_ids=customers)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REVSHARE_")},
           "REVSHARE_DATABASE_URL": killed.url}
    process = subprocess.Popen([REVSHARE, "import", str(path), "--batch-size", "20"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = 0
    deadline = time.monotonic() + 60
    while seen < 200 and time.monotonic() < deadline and process.poll() is None:
        with killed.reader() as session:
            seen = session.execute(select(func.count()).select_from(revenue_events)).scalar_one()
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    assert 200 <= seen < len(events), "the import must be interrupted halfway"
    with killed.reader() as session:
        interrupted = session.execute(select(func.count()).select_from(revenue_events)).scalar_one()
    assert interrupted < len(events)
    rerun = invoke(killed.url, "import", str(path))
    assert rerun.exit_code == 0 and f"replayed: {interrupted}" in rerun.output, rerun.output
    assert invoke(clean.url, "import", str(path)).exit_code == 0
    assert books(killed) == books(clean)
    killed.dispose()
    clean.dispose()
