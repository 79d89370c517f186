"""Payout runs race settle and fail storms, from several processes, on SQLite and PostgreSQL.

Runner processes make the payout run at each of a series of instants, all at the same moment
(released together by a barrier), half through the domain service the API calls
(`payouts.run_payouts`) and half through the scheduler's job (`jobs.bodies.payout_run` under
`run_job`). Resolver processes meanwhile keep listing the pending payouts and settle or fail each
(one prefers settling, one failing, others choose at random; they walk the same payouts in the
same order, so they collide), and also try again on payouts already resolved.

Afterwards: one run per instant, which every runner got; at most one payout per run, partner and
currency; every payout resolved exactly once (one resolver succeeded, every other attempt was the
domain's Conflict, one resolution row and one journal transaction); no partner's available balance
is negative as of any run instant (a double payout would make it so); every balance is the
adjustments, less the payouts, plus the failed payouts; nothing is left in transit; cash paid out
equals the settled payouts; the trial balance is zero per currency; every balance equals the sum of
its lines; verify() is clean.
"""

from __future__ import annotations

import functools
import multiprocessing
import queue
import random
import time
import traceback
from collections import Counter, defaultdict

import pytest
from sqlalchemy import func, select

from jobs import bodies
from ledger import accounts as chart
from ledger import partners, payouts
from ledger.balances import debit_minus_credit, line_sums, partner_balances, sums
from ledger.db import Database
from ledger.errors import Conflict
from ledger.instants import from_us
from ledger.schema import journal_transactions, payout_resolutions, payout_runs
from ledger.trial_balance import trial_balance
from ledger.verify import verify
from tests.conftest import drop_pg_database, new_pg_url, new_sqlite_url, scaled
from tests.program import at, seed

DAY_US, HOUR_US = 86_400_000_000, 3_600_000_000
PARTNERS = ("contoso", "fabrikam", "globex", "northwind")
CURRENCIES = ("USD", "EUR")  # the plan's minimum payout is USD 50.00; EUR has none: paid when positive
RUNNERS = scaled(3)
RESOLVERS = scaled(2)
INSTANTS = [at("2026-03-01") + day * DAY_US for day in range(scaled(8))]
ROUNDS_MAX = 20_000  # of a resolver's list-and-resolve loop: far more than a storm needs
RESULT_WAIT_S = 300  # only a hang guard: a process that never reports fails the test


def adjustments() -> dict[tuple[str, str, int], int]:
    """{(partner, currency, instant): amount}: money made available just before each run, some of it
    under the USD minimum (it waits for a later run)."""
    rng = random.Random(5)
    return {(partner_id, currency, at_us - 1): rng.choice([rng.randrange(100, 4_000), rng.randrange(5_000, 90_000)])
            for at_us in INSTANTS for partner_id in PARTNERS for currency in CURRENCIES}


def build(url: str) -> None:
    database = Database(url)
    try:
        with database.transaction() as session:
            seed(session, customer_ids=())
            for partner_id in PARTNERS[:2]:
                partners.create_partner(session, partner_id, partner_id.title(), "msp", "standard")
            for (partner_id, currency, effective_at_us), amount in adjustments().items():
                payouts.adjust(session, partner_id, "available", amount, currency, "storm balance",
                               effective_at_us=effective_at_us)
    finally:
        database.dispose()


# ---- the processes (module-level functions: the forkserver imports them) ----

def report(results, role: str, index: int, function, *args) -> None:
    try:
        results.put((role, index, True, function(*args)))
    except BaseException:  # noqa: BLE001 - the parent fails the test with the child's traceback
        results.put((role, index, False, traceback.format_exc()))


def run_at_each_instant(url: str, through_job: bool, barrier) -> list[tuple]:
    """(instant, run id, replayed, payouts or None) for each instant, each run started together with
    the other runners'."""
    database = Database(url)
    outcomes = []
    try:
        for at_us in INSTANTS:
            barrier.wait(RESULT_WAIT_S)
            if through_job:
                # The job as scheduled on a payout day of this instant's day (instants are at midnight).
                body = functools.partial(bodies.payout_run, day_of_month=from_us(at_us).day)
                figures = bodies.run_job(database, "payout_run", body, at_us).figures
                outcomes.append((at_us, figures["run_id"], figures["replayed"], None))
                continue
            with database.transaction() as session:
                run = payouts.run_payouts(session, at_us)
            outcomes.append((at_us, run.id, run.replayed,
                             tuple((p.id, p.partner_id, p.currency, p.amount_minor) for p in run.payouts)))
    finally:
        database.dispose()
    return outcomes


def resolve_until_none_pending(url: str, preference: str, seed_value: int, runners_done) -> tuple[list, int]:
    """Settle or fail every pending payout, again and again, until the runners are done and nothing
    is pending; also retry payouts already resolved. Returns (payout id, outcome) for each resolution
    this process made, and how many attempts were refused as a Conflict."""
    rng, database = random.Random(seed_value), Database(url)
    at_of_run = {payouts.run_id_for(at_us): at_us for at_us in INSTANTS}
    resolved, conflicts = [], 0
    try:
        for _ in range(ROUNDS_MAX):
            finished = runners_done.is_set()  # read first: a pass after the last run sees all its payouts
            with database.reader() as session:
                listed = payouts.list_payouts(session)
            pending = [payout for payout in listed if payout.status == "pending"]
            if finished and not pending:
                return resolved, conflicts
            if not pending:  # idle: leave the write lock to the runners
                time.sleep(0.01)
                continue
            done = [payout for payout in listed if payout.status != "pending"]
            for payout in pending + rng.sample(done, min(2, len(done))):
                outcome = preference if preference != "either" else rng.choice(["settled", "failed"])
                resolve = payouts.settle if outcome == "settled" else payouts.fail
                try:
                    with database.transaction() as session:
                        resolve(session, payout.id, reason=f"storm {seed_value}",
                                at_us=at_of_run[payout.run_id] + HOUR_US)
                    resolved.append((payout.id, outcome))
                except Conflict:
                    conflicts += 1
    finally:
        database.dispose()
    raise AssertionError(f"payouts still pending after {ROUNDS_MAX} rounds")


def storm(url: str) -> tuple[list, list]:
    """Run the runners and resolvers; return each one's result, or fail with a child's traceback.

    The processes fork from a server that imported this module once (spawn would import SQLAlchemy
    and the domain again in each of them); it opens no connection, so there is none to share."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    results, barrier, runners_done = context.Queue(), context.Barrier(RUNNERS), context.Event()
    preferences = ["settled", "failed"] + ["either"] * (RESOLVERS - 2)
    processes = [context.Process(target=report, args=(results, "runner", n, run_at_each_instant, url, n % 2 == 1,
                                                      barrier)) for n in range(RUNNERS)]
    processes += [context.Process(target=report, args=(results, "resolver", n, resolve_until_none_pending, url,
                                                       preferences[n], n, runners_done)) for n in range(RESOLVERS)]
    for process in processes:
        process.start()
    outcomes: dict[str, dict[int, object]] = {"runner": {}, "resolver": {}}
    try:
        while len(outcomes["runner"]) + len(outcomes["resolver"]) < len(processes):
            role, index, ok, value = results.get(timeout=RESULT_WAIT_S)
            assert ok, f"{role} {index} failed:\n{value}"
            outcomes[role][index] = value
            if len(outcomes["runner"]) == RUNNERS:
                runners_done.set()
    except queue.Empty:
        pytest.fail(f"a storm process did not report within {RESULT_WAIT_S} s: {outcomes}")
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
    return [outcomes["runner"][n] for n in range(RUNNERS)], [outcomes["resolver"][n] for n in range(RESOLVERS)]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storm_url(request, sqlite_template, tmp_path):
    if request.param == "sqlite":
        url = new_sqlite_url(sqlite_template, tmp_path)
        build(url)
        yield url
        return
    cluster = request.getfixturevalue("pg_cluster")
    url = new_pg_url(cluster)
    build(url)
    yield url
    drop_pg_database(cluster, url)


def test_payout_runs_racing_settle_and_fail_storms_pay_once_and_resolve_once(storm_url):
    runners, resolvers = storm(storm_url)
    database = Database(storm_url)
    try:
        with database.reader() as session:
            every_payout = payouts.list_payouts(session)
            runs = session.execute(select(payout_runs.c.at_us, payout_runs.c.id)).all()
            kinds = dict(session.execute(select(journal_transactions.c.kind, func.count())
                                         .group_by(journal_transactions.c.kind)).all())
            resolution_rows = session.execute(select(func.count()).select_from(payout_resolutions)).scalar_one()
            available_at_runs = {(partner_id, at_us): partner_balances(session, partner_id, before_us=at_us + 1)
                                 for partner_id in PARTNERS for at_us in INSTANTS}
            final = {partner_id: partner_balances(session, partner_id) for partner_id in PARTNERS}
            in_transit = debit_minus_credit(session, [chart.PAYOUTS_IN_TRANSIT])
            cash = debit_minus_credit(session, [chart.CASH])
            balance = trial_balance(session, before_us=None)
            assert sums(session) == line_sums(session, None, None, None)
            report_ = verify(session)
    finally:
        database.dispose()

    # One run per instant, the one every runner got; at most one payout per run, partner and currency.
    assert sorted(runs) == sorted((at_us, payouts.run_id_for(at_us)) for at_us in INSTANTS)
    for index, at_us in enumerate(INSTANTS):
        outcomes = [runner[index] for runner in runners]
        assert {outcome[:2] for outcome in outcomes} == {(at_us, payouts.run_id_for(at_us))}
        assert sorted(outcome[2] for outcome in outcomes) == [False] + [True] * (RUNNERS - 1)
        assert len({outcome[3] for outcome in outcomes if outcome[3] is not None}) == 1
    assert every_payout and len({(p.run_id, p.partner_id, p.currency) for p in every_payout}) == len(every_payout)
    assert kinds["payout"] == len(every_payout)
    assert all(p.amount_minor >= (5_000 if p.currency == "USD" else 1) for p in every_payout)

    # Every payout resolved exactly once, by one resolver; every other attempt was a Conflict.
    made = [resolution for resolved, _ in resolvers for resolution in resolved]
    assert sorted(made) == sorted((p.id, p.status) for p in every_payout)
    assert resolution_rows == len(every_payout)
    assert kinds.get("payout_settled", 0) + kinds.get("payout_failed", 0) == len(every_payout)
    assert sum(conflicts for _, conflicts in resolvers) > 0  # the resolvers did collide

    # The money: never paid twice, every balance accounted for, nothing lost per currency.
    for (partner_id, at_us), by_currency in available_at_runs.items():
        assert all(available >= 0 for _, available in by_currency.values()), (partner_id, at_us, by_currency)
    expected = defaultdict(int)
    for (partner_id, currency, _), amount in adjustments().items():
        expected[(partner_id, currency)] += amount
    for p in every_payout:
        expected[(p.partner_id, p.currency)] -= 0 if p.status == "failed" else p.amount_minor
    assert {(partner_id, currency): available for partner_id, by_currency in final.items()
            for currency, (pending, available) in by_currency.items()} == dict(expected)
    assert all(pending == 0 for by_currency in final.values() for pending, _ in by_currency.values())
    assert all(amount == 0 for amount in in_transit.values()), in_transit
    settled = Counter()
    for p in every_payout:
        settled[p.currency] += p.amount_minor if p.status == "settled" else 0
    assert {currency: -amount for (_, currency), amount in cash.items() if amount} == \
        {currency: amount for currency, amount in settled.items() if amount}
    assert balance.balanced and {total.currency for total in balance.totals} == set(CURRENCIES)
    assert report_.ok, report_.problems
