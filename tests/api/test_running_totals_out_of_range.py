"""A posting that would take an account's running total past a BIGINT (2^63 - 1 minor units, kept
separately for debits and credits) is refused as a whole. Where the request sent the amount (a
revenue event, an adjustment) that is a 422 naming `amount`; where it sent none (a release of holds,
a payout run, a payout's settlement or failure, a reversal, a close), a 409 about the books, which
names no field: it was a 422 naming `amount`, a field those requests do not have. The commands that
release, run payouts and close say the same."""

import logging

import pytest
from click.testing import CliRunner

from cli.main import main
from jobs.bodies import job_table
from jobs.scheduler import CatchUp, log_failure
from ledger.errors import Conflict, DomainError, InvalidInput, NotFound
from ledger.instants import parse_instant
from ledger.settings import Settings
from tests.api.books import event_body, expect, instant, money

MAX_CLF = "922337203685477.5807"  # 2**63 - 1 minor units of CLF, which has four decimals


def filled(fresh) -> None:
    """p1's available CLF credited with the whole range, as a finance adjustment may."""
    fresh.created("/v1/adjustments", {"partner_id": "p1", "account": "available", "amount": money(MAX_CLF, "CLF"),
                                      "reason": "the whole range", "effective_at": instant("2026-02-01")})


def assert_refused_by_the_books(response) -> None:
    body = expect(response, 409)
    assert response.mimetype == "application/problem+json" and "errors" not in body
    assert body["detail"].startswith("the books cannot take this posting: its amount would take an account's "
                                     "running total past 9,223,372,036,854,775,807 minor units"), body


def test_a_payout_whose_failure_would_pass_a_running_total_is_a_409_and_it_still_settles(fresh):
    filled(fresh)
    [payout] = fresh.created("/v1/payout-runs", {"at": instant("2026-03-01")})["payouts"]
    assert payout["amount"] == money(MAX_CLF, "CLF")
    # Failing returns the amount to available, whose credits already hold the whole range.
    assert_refused_by_the_books(fresh.post(f"/v1/payouts/{payout['id']}/fail", {"reason": "bounced"}))
    run_posting = fresh.read("/v1/transactions?partner_id=p1&limit=1000")["items"][-1]
    assert run_posting["kind"] == "payout"
    assert_refused_by_the_books(fresh.post(f"/v1/transactions/{run_posting['id']}/reversal", {"reason": "undo"}))
    assert [p["status"] for p in fresh.read("/v1/payouts")["items"]] == ["pending"]
    assert fresh.ok(f"/v1/payouts/{payout['id']}/settle", {"reason": "paid"})["status"] == "settled"


@pytest.mark.parametrize("route", ["/v1/holds/release", "/v1/payout-runs", "/v1/periods/2026-03/close"])
def test_a_release_that_would_pass_a_running_total_is_a_409_and_changes_nothing(fresh, route):
    """A paid invoice's accrual is taken into pending; its release, due by the route's instant, would
    add it to available's credits, which hold the whole range."""
    filled(fresh)
    fresh.event("evt-1", "p1-customer", "inv-1", "1000.0000", "2026-02-20", currency="CLF")  # matures 03-22
    fresh.ok("/v1/periods/2026-01/close")
    fresh.ok("/v1/periods/2026-02/close")
    before = fresh.read("/v1/transactions?limit=1000")["items"]
    body = None if route.endswith("/close") else {"at": instant("2026-03-25")}
    assert_refused_by_the_books(fresh.post(route, body))
    assert fresh.read("/v1/transactions?limit=1000")["items"] == before
    assert fresh.read("/v1/periods/2026-03")["status"] == "open"


@pytest.mark.parametrize("command", [("release-holds", "--at", "2026-03-25"), ("payout-run", "--at", "2026-03-25"),
                                     ("close", "2026-03")])
def test_the_command_line_says_the_books_cannot_take_it_and_changes_nothing(fresh, database, command):
    filled(fresh)
    fresh.event("evt-1", "p1-customer", "inv-1", "1000.0000", "2026-02-20", currency="CLF")
    fresh.ok("/v1/periods/2026-01/close")
    fresh.ok("/v1/periods/2026-02/close")
    before = fresh.read("/v1/transactions?limit=1000")["items"]
    result = CliRunner().invoke(main, list(command), env={"REVSHARE_DATABASE_URL": database.url})
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: the books cannot take this posting: its amount would take an "
                                    "account's running total past"), result.stderr
    assert "Traceback" not in result.output and fresh.read("/v1/transactions?limit=1000")["items"] == before


def test_an_amount_the_request_sent_is_still_a_422_naming_it(fresh):
    # Five accruals of a fifth of the range fit pending's credits (and the expense's debits); a sixth does not.
    for n in range(6):
        event = event_body(f"evt-{n}", "p1-customer", f"inv-{n}", MAX_CLF, "2026-02-20", currency="CLF")
        response = fresh.post("/v1/revenue-events", event, as_="billing")
        if n < 5:
            assert expect(response, 201)["commissions"][0]["amount"] == money("184467440737095.5161", "CLF")
    assert expect(response, 422)["errors"] == {"amount": [
        "would take an account's running total past 9,223,372,036,854,775,807 minor units"]}
    filled(fresh)
    response = fresh.post("/v1/adjustments", {"partner_id": "p1", "account": "available",
                                              "amount": money("0.0001", "CLF"), "reason": "one more"})
    assert set(expect(response, 422)["errors"]) == {"amount"}


def test_the_jobs_say_in_one_line_that_the_books_cannot_take_it_and_change_nothing(fresh, database, caplog):
    filled(fresh)
    fresh.event("evt-1", "p1-customer", "inv-1", "1000.0000", "2026-02-20", currency="CLF")
    fresh.ok("/v1/periods/2026-01/close")
    fresh.ok("/v1/periods/2026-02/close")
    before = fresh.read("/v1/transactions?limit=1000")["items"]
    catch_up = CatchUp(database, job_table(Settings.build(database_url=database.url)))
    with caplog.at_level(logging.INFO):
        catch_up.run(parse_instant(instant("2026-04-02"), field="at"))  # the payout run's day, after March's end
    said = ("the books cannot take this posting: its amount would take an account's running total past "
            "9,223,372,036,854,775,807 minor units; it will run again at its next time")
    failures = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [record.getMessage() for record in failures] == [
        f"job {name} failed at start: {said}" for name in ("payout_run", "close_periods")]
    assert all(record.exc_info is None for record in failures) and not catch_up.owed
    assert fresh.read("/v1/transactions?limit=1000")["items"] == before
    assert fresh.read("/v1/periods/2026-03")["status"] == "open"


@pytest.mark.parametrize("error", [NotFound("plan version 7 not found"), Conflict("a conflict"),
                                   InvalidInput("hold_days: bad", {"hold_days": ["bad"]})],
                         ids=lambda error: type(error).__name__)
def test_any_other_error_of_a_job_keeps_its_type_and_traceback(error, caplog):
    try:
        raise error
    except DomainError as raised:
        with caplog.at_level(logging.ERROR, logger="revshare.scheduler"):
            log_failure("payout_run", raised)
    [record] = caplog.records
    assert record.getMessage().startswith(f"job payout_run failed: {type(error).__name__}("), record.getMessage()
    assert record.exc_info is not None
