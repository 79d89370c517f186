"""Property: over random histories of revenue events (some dated in the past, some inside closed
periods), releases, payout runs, settles and fails, adjustments and closes of ended months in order,
the books stay continuous and closed periods stay fixed.

After the history: every period's statement closes where the next one opens, for each partner and
currency; the statement of a closed period is the one it had when it was closed; balances read from
snapshots equal the plain sums of the journal's lines at every period end; the trial balance is zero
per currency; verify() is clean. At each close, a partner on a `reset` plan has exactly its negative
available balance written off (and one on `carry_forward` nothing); after each payout run, every
partner it paid has nothing left available in that currency.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ledger import holds, payouts, periods, statements
from ledger.balances import all_balances, line_sums, partner_balances, sums
from ledger.db import Database
from ledger.errors import Conflict
from ledger.instants import add_days_us, format_instant, next_period, period_bounds_us, period_of
from ledger.revenue import Outcome, parse_event
from ledger.revenue import ingest as ingest_events
from ledger.verify import verify
from tests.conftest import built_sqlite_template, database_property, drop_pg_database, new_pg_url, new_sqlite_url
from tests.scenarios.books import Books, at

START = "2023-01-01"  # histories close up to about 33 months on, all before the clock of any run
PARTNERS = ("p-carry", "p-reset")
CUSTOMERS = {"c-carry": "p-carry", "c-reset": "p-reset"}
HOUR_US = 3_600 * 1_000_000

paid = st.tuples(st.just("paid"), st.sampled_from(sorted(CUSTOMERS)), st.sampled_from(["USD", "EUR"]),
                 st.one_of(st.sampled_from([50_000, 120_000, 33_333]), st.integers(100, 200_000)), st.integers(0, 45))
refund = st.tuples(st.just("refund"), st.integers(0, 20), st.sampled_from(["refund", "chargeback"]),
                   st.integers(1, 4))
release = st.tuples(st.just("release"))
payout_run = st.tuples(st.just("payout"))
resolve = st.tuples(st.sampled_from(["settle", "fail"]), st.integers(0, 20))
adjustment = st.tuples(st.just("adjust"), st.sampled_from(PARTNERS), st.sampled_from(["pending", "available"]),
                       st.integers(-20_000, 20_000).filter(bool), st.integers(0, 45))
close_next = st.tuples(st.just("close"), st.integers(0, 72))
# A step lets 0 to 4 days pass (in hours), then acts. A month is a few steps, then time passes to
# the next month's start (plus some hours), where the scheduler may close every ended period and
# may run payouts.
action = st.one_of(paid, paid, paid, refund, refund, release, payout_run, resolve, resolve, adjustment, adjustment,
                   close_next)
month = st.tuples(st.lists(st.tuples(st.integers(0, 96), action), min_size=1, max_size=8),
                  st.booleans(), st.booleans(), st.integers(0, 72))
history = st.lists(month, min_size=2, max_size=4)
# A reset partner below zero with a hold that matured in the month and that no job released: the
# close releases it, then writes off only what is still negative (50.00, not 200.00).
NEGATIVE_WITH_A_MATURED_HOLD = [([(0, ("paid", "c-reset", "USD", 50_000, 0)),
                                  (0, ("adjust", "p-reset", "available", -20_000, 0))], True, False, 0),
                                ([(24, ("release",))], True, True, 0)]


@dataclass
class Model:
    """What the history has done so far, to aim later steps at real invoices and payouts."""
    clock_us: int = at(START) + HOUR_US
    invoices: list[list] = field(default_factory=list)  # [invoice id, customer, currency, paid, refunded, paid at]
    payout_ids: list[int] = field(default_factory=list)
    resolved: set[int] = field(default_factory=set)
    runs: dict[int, tuple] = field(default_factory=dict)  # instant -> payouts of the first run there
    closed: dict[str, dict[str, dict]] = field(default_factory=dict)  # period -> partner -> statement at close


def program(database: Database) -> None:
    books = Books(database)
    books.plan("carry", "0.20", hold_days=10, min_payout={"USD": "10.00", "EUR": "25.00"})
    books.plan("reset", "0.30", hold_days=3, min_payout={"USD": "5.00"}, negative_balance="reset")
    books.partner("p-carry", "carry")
    books.partner("p-reset", "reset")
    for customer_id, partner_id in CUSTOMERS.items():
        books.attribute(customer_id, partner_id, START)


def step(database: Database, model: Model, number: int, operation: tuple) -> None:
    kind, *args = operation
    with database.transaction() as session:
        if kind == "paid":
            _paid(session, model, number, *args)
        elif kind == "refund":
            _refund(session, model, number, *args)
        elif kind == "release":
            holds.release_matured(session, model.clock_us)
        elif kind == "payout":
            _run(session, model)
        elif kind in ("settle", "fail"):
            _resolve(session, model, kind, args[0])
        elif kind == "adjust":
            partner_id, account, amount_minor, back_days = args
            payouts.adjust(session, partner_id, account, amount_minor, "USD", "property",
                           effective_at_us=max(at(START), add_days_us(model.clock_us, -back_days)))
        elif kind == "close":
            _close(session, model, args[0])


def _event(number: int, type_: str, customer_id: str, invoice_id: str, currency: str, amount_minor: int,
           occurred_at_us: int):
    amount = f"{amount_minor // 100}.{amount_minor % 100:02d}"
    return parse_event({"id": f"e{number}", "type": type_, "customer_id": customer_id, "invoice_id": invoice_id,
                        "amount": {"amount": amount, "currency": currency},
                        "occurred_at": format_instant(occurred_at_us)})


def _paid(session, model: Model, number: int, customer_id: str, currency: str, amount_minor: int, back_days: int):
    occurred = max(at(START), add_days_us(model.clock_us, -back_days))
    invoice_id = f"inv-{number}"
    [outcome] = ingest_events(session, [_event(number, "invoice_paid", customer_id, invoice_id, currency,
                                               amount_minor, occurred)])
    assert isinstance(outcome, Outcome) and outcome.status == "posted", outcome
    model.invoices.append([invoice_id, customer_id, currency, amount_minor, 0, occurred])


def _refund(session, model: Model, number: int, index: int, type_: str, quarters: int):
    open_invoices = [invoice for invoice in model.invoices if invoice[4] < invoice[3]]
    if not open_invoices:
        return
    invoice = open_invoices[index % len(open_invoices)]
    invoice_id, customer_id, currency, paid_minor, refunded_minor, _ = invoice
    amount_minor = max(1, (paid_minor - refunded_minor) * quarters // 4)
    [outcome] = ingest_events(session, [_event(number, type_, customer_id, invoice_id, currency, amount_minor,
                                               model.clock_us)])
    assert isinstance(outcome, Outcome), outcome
    invoice[4] += amount_minor


def _run(session, model: Model):
    result = payouts.run_payouts(session, model.clock_us)
    if model.clock_us in model.runs:
        assert result.replayed and result.payouts == model.runs[model.clock_us]
        return
    assert not result.replayed
    model.runs[model.clock_us] = result.payouts
    for payout in result.payouts:
        model.payout_ids.append(payout.id)
        left = partner_balances(session, payout.partner_id, before_us=model.clock_us + 1)[payout.currency]
        assert left[1] == 0, (payout, left)


def _resolve(session, model: Model, outcome: str, index: int):
    if not model.payout_ids:
        return
    payout_id = model.payout_ids[index % len(model.payout_ids)]
    resolve_ = payouts.settle if outcome == "settle" else payouts.fail
    if payout_id in model.resolved:
        with pytest.raises(Conflict):
            with session.begin_nested():
                resolve_(session, payout_id, at_us=model.clock_us)
        return
    assert resolve_(session, payout_id, at_us=model.clock_us).status == ("settled" if outcome == "settle" else "failed")
    model.resolved.add(payout_id)


def _close(session, model: Model, late_hours: int):
    """Close the next period, after waiting for its end if it has not ended yet."""
    latest = periods.latest_close(session)
    target = next_period(latest.period) if latest else period_of(at(START))
    model.clock_us = max(model.clock_us, period_bounds_us(target)[1] + late_hours * HOUR_US)
    periods.close_period(session, target, now_us=model.clock_us)
    model.closed[target] = {}
    for partner_id in PARTNERS:
        data = statements.to_data(statements.statement(session, partner_id, target))
        model.closed[target][partner_id] = data
        for section in data["currencies"]:
            written_off = sum(Decimal(line["available"]) for line in section["lines"] if line["kind"] == "writeoff")
            before = Decimal(section["opening"]["available"]) + sum(
                Decimal(line["available"]) for line in section["lines"] if line["kind"] != "writeoff")
            # reset forgives exactly what is negative at the period's end; carry_forward forgives nothing
            assert written_off == (max(-before, 0) if partner_id == "p-reset" else 0), data
            assert Decimal(section["closing"]["available"]) == before + written_off


def check_books(database: Database, model: Model) -> None:
    with database.reader() as session:
        months, month = [], period_of(at(START))
        while month <= period_of(model.clock_us):
            months.append(month)
            month = next_period(month)
        for partner_id in PARTNERS:
            by_month = [statements.to_data(statements.statement(session, partner_id, m)) for m in months]
            for data in by_month:
                if data["period"] in model.closed:
                    assert data == model.closed[data["period"]][partner_id]
            for earlier, later in zip(by_month, by_month[1:]):
                closing = {s["currency"]: s["closing"] for s in earlier["currencies"]}
                opening = {s["currency"]: s["opening"] for s in later["currencies"]}
                zero = {"pending": "0.00", "available": "0.00"}
                for currency in set(closing) | set(opening):
                    assert closing.get(currency, zero) == opening.get(currency, zero), (partner_id, later["period"])
        for month in months + [None]:
            end_us = None if month is None else period_bounds_us(month)[1]
            assert sums(session, before_us=end_us) == line_sums(session, None, None, end_us), month
        net: dict[str, int] = defaultdict(int)
        for (_, currency), (debits, credits) in all_balances(session).items():
            net[currency] += debits - credits
        assert all(total == 0 for total in net.values()), net
        report = verify(session)
        assert report.ok, report.problems


def run_history(database: Database, months) -> None:
    model, number = Model(), 0
    for steps, closes, pays, late_hours in months:
        for hours, operation in steps:
            model.clock_us += hours * HOUR_US
            step(database, model, number := number + 1, operation)
        model.clock_us = period_bounds_us(period_of(model.clock_us))[1] + late_hours * HOUR_US
        while closes and not _all_ended_closed(database, model):
            step(database, model, number, ("close", 0))
        if pays:
            step(database, model, number, ("payout",))
    check_books(database, model)


def _all_ended_closed(database: Database, model: Model) -> bool:
    with database.reader() as session:
        latest = periods.latest_close(session)
    return latest is not None and period_bounds_us(next_period(latest.period))[1] > model.clock_us


@pytest.fixture(scope="module")
def program_template(sqlite_template, tmp_path_factory) -> str:
    """A migrated SQLite file holding the program, copied for each example."""
    return built_sqlite_template(sqlite_template, tmp_path_factory.mktemp("program"), program)


@database_property(30)
@given(months=history)
@example(months=NEGATIVE_WITH_A_MATURED_HOLD)
def test_random_histories_with_closes_keep_statements_continuous_on_sqlite(months, program_template,
                                                                         tmp_path_factory):
    database = Database(new_sqlite_url(program_template, tmp_path_factory.mktemp("periods")))
    try:
        run_history(database, months)
    finally:
        database.dispose()


@pytest.mark.postgres
@database_property(8)
@given(months=history)
@example(months=NEGATIVE_WITH_A_MATURED_HOLD)
def test_random_histories_with_closes_keep_statements_continuous_on_postgres(months, pg_cluster):
    url = new_pg_url(pg_cluster)
    database = Database(url)
    try:
        program(database)
        run_history(database, months)
    finally:
        database.dispose()
        drop_pg_database(pg_cluster, url)
