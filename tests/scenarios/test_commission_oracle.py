"""The service against an oracle of DESIGN.md's commission mechanics (`commission_oracle.py`), over
random histories delivered mostly in time order: some payments late (into closed periods, behind
payout runs and maturities), some refunds and chargebacks late but not before their invoice's latest
event (what the README decides for events out of order is left to `test_out_of_order.py`).

The program stresses what the other properties do not: step-down schedules with windows of 1, 6 and
9 months and a lifetime one; windows starting on the 29th, 30th and 31st of a month (month ends
clamp); events dated exactly at a window's month boundary, at its end and at a hold's maturity;
a chain of partners as deep as the hierarchy allows, with terminated ancestors skipped;
overrides on revenue and on commission; CPAs in USD, JPY, BHD, KWD and CLF; amounts in currencies of 0,
2, 3 and 4 minor digits (CLF, whose shares and clawbacks fall in ten-thousandths); partial, repeated, completing and excessive refunds and chargebacks, won
disputes; re-attribution; suspension and termination; new plan versions in the middle of windows
and holds; payout runs (minimums per currency, active partners only) with payouts settled or
failed; closes of every ended month, with `reset` write-offs.

After every event: the service accepts or refuses it as the oracle does, with the oracle's status
and commission lines (partner, kind, signed amount, in the currency of the invoice). At the end,
after releasing every hold matured by the last instant: each partner's pending and available
balance as of every instant an event or a maturity is dated (and just after each) is the oracle's,
the trial balance is zero per currency and verify() is clean.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import customers, holds, partners, payouts, periods, plans
from ledger.balances import all_balances, partner_balances
from ledger.db import Database
from ledger.instants import from_us, next_period, period_bounds_us
from ledger.revenue import Outcome, Refusal, RevenueEvent, ingest
from ledger.verify import verify
from tests.conftest import built_template, database_property, drop_pg_database, new_sqlite_url
from tests.scenarios.books import at, terms
from tests.scenarios.commission_oracle import DAY_US, Oracle, OraclePlan, months_after
from tests.scenarios.test_properties import new_pg_copy

HOUR_US = 3_600_000_000
START_US = at("2023-03-30T18:00:00Z")
EXPONENTS = {"USD": 2, "JPY": 0, "BHD": 3, "KWD": 3, "CLF": 4}
CURRENCIES = list(EXPONENTS)
# plan id -> (step-down schedule, duration in months, hold days, CPA by currency, override, minimum
# payout by currency, negative balance policy)
PLANS = {
    "top": ([(1, "0.10")], None, 15, {}, ("0.03", "revenue"), {"USD": "50.00"}, "carry_forward"),
    "mid": ([(1, "0.40"), (4, "0.20"), (7, "0.05")], 9, 30, {"USD": "25.00", "JPY": "3000", "BHD": "7.500"},
            ("0.25", "commission"), {"USD": "50.00", "JPY": "5000"}, "reset"),
    "leaf": ([(1, "0.333"), (3, "0.125")], 6, 7, {"USD": "10.01", "KWD": "1.234", "CLF": "0.0123"}, None,
             {"KWD": "0.500", "CLF": "0.5000"}, "reset"),
    "flat": ([(1, "0.5")], 1, 0, {"JPY": "1"}, ("0.5", "commission"), {}, "carry_forward"),
}
# Terms of later versions, each plan's own: other rates, windows, holds, CPAs, overrides, minimums
# and policies.
LATER_PLANS = {
    "top": ([(1, "0.07")], None, 3, {"JPY": "500", "CLF": "0.0001"}, ("0.5", "commission"), {"BHD": "1.000"}, "reset"),
    "mid": ([(1, "0.30"), (2, "0.15")], 4, 0, {}, None, {"USD": "0.01"}, "carry_forward"),
    "leaf": ([(1, "0"), (2, "0.9")], 12, 45, {"BHD": "0.001"}, ("0.01", "revenue"), {}, "carry_forward"),
    "flat": ([(1, "1")], 2, 1, {"USD": "0.01"}, None, {"JPY": "100000"}, "reset"),
}
# A chain as deep as the hierarchy goes (five levels) and two partners alone.
PARTNERS = {"a0": ("top", None), "a1": ("mid", "a0"), "a2": ("flat", "a1"), "a3": ("top", "a2"),
            "a4": ("leaf", "a3"), "s1": ("leaf", None), "s2": ("flat", None)}
PARTNER_IDS = list(PARTNERS)
CUSTOMERS = ["c1", "c2", "c3", "c4", "c5"]  # and "c0", never attributed
START_DATES = ["2023-03-30", "2023-01-29", "2023-02-28", "2023-03-31", "2022-12-31", "2023-01-30", "2023-04-30"]


def minor_of(text: str, currency: str) -> int:
    return int(Decimal(text).scaleb(EXPONENTS[currency]))


def oracle_plan(spec) -> OraclePlan:
    rates, duration, hold_days, cpa, override, min_payout, policy = spec
    return OraclePlan(tuple((month, Decimal(rate)) for month, rate in rates), duration, hold_days,
                      {code: minor_of(amount, code) for code, amount in cpa.items()},
                      None if override is None else (Decimal(override[0]), override[1]),
                      {code: minor_of(amount, code) for code, amount in min_payout.items()}, policy == "reset")


def service_terms(spec) -> dict:
    rates, duration, hold_days, cpa, override, min_payout, policy = spec
    stated = terms(rates=rates, duration_months=duration, hold_days=hold_days, cpa=cpa, override=override,
                   negative_balance=policy)
    return {**stated, "min_payout": [{"amount": amount, "currency": code} for code, amount in min_payout.items()]}


def build_program(database: Database) -> None:
    with database.transaction() as session:
        for plan_id, spec in PLANS.items():
            plans.create_plan(session, plan_id, plan_id, service_terms(spec))
        for partner_id, (plan_id, parent) in PARTNERS.items():
            partners.create_partner(session, partner_id, partner_id, "msp", plan_id, parent)


amounts = st.one_of(st.integers(1, 12), st.integers(1, 2_000_000))
payments = st.tuples(st.just("pay"), st.sampled_from([*CUSTOMERS, "c0"]), st.sampled_from(CURRENCIES), amounts)
late_payments = st.tuples(st.just("pay"), st.sampled_from(CUSTOMERS), st.sampled_from(CURRENCIES), amounts,
                          st.sampled_from([1, 24 * 3, 24 * 20, 24 * 45]))
steps = st.lists(st.one_of(
    payments, payments, late_payments,
    st.tuples(st.just("pay_on_boundary"), st.sampled_from(CUSTOMERS), st.sampled_from([1, 2, 3, 4, 6, 7, 9, 0]),
              st.booleans(), st.sampled_from(CURRENCIES), amounts),
    st.tuples(st.just("wait"), st.sampled_from([0, 1, 5, 24, 24 * 7, 24 * 20])),
    st.tuples(st.just("jump"), st.integers(0, 50)),
    st.tuples(st.sampled_from(["chargeback", "refund"]), st.integers(0, 30),
              st.one_of(st.integers(1, 6), st.sampled_from(["one", "rest", "over"]))),
    st.tuples(st.sampled_from(["refund", "chargeback"]), st.integers(0, 30), st.sampled_from([1, 3, "rest"]),
              st.sampled_from([1, 24 * 3, 24 * 20, 24 * 45])),
    st.tuples(st.just("won"), st.integers(0, 30), st.one_of(st.integers(1, 3), st.just("all"))),
    st.tuples(st.just("won"), st.integers(0, 30), st.just("all")),
    st.tuples(st.just("reattribute"), st.sampled_from(CUSTOMERS), st.sampled_from(PARTNER_IDS)),
    st.tuples(st.just("status"), st.sampled_from(PARTNER_IDS), st.sampled_from(["suspended", "active", "terminated"])),
    st.tuples(st.just("version"), st.sampled_from(list(PLANS))),
    st.tuples(st.just("payout"), st.integers(0, 15)),
    st.tuples(st.just("close"),),
), min_size=15, max_size=45)
first_attributions = st.lists(st.tuples(st.sampled_from(PARTNER_IDS), st.sampled_from(START_DATES)),
                              min_size=len(CUSTOMERS), max_size=len(CUSTOMERS))


class History:
    def __init__(self, database: Database, attributed: list[tuple[str, str]]) -> None:
        self.database = database
        self.oracle = Oracle({p: plan_id for p, (plan_id, _) in PARTNERS.items()},
                             {p: parent for p, (_, parent) in PARTNERS.items()},
                             {plan_id: [(0, oracle_plan(spec))] for plan_id, spec in PLANS.items()})
        self.now_us = START_US
        self.ids = itertools.count()
        self.paid: list[str] = []
        self.statuses = {partner_id: ("active", 0) for partner_id in PARTNER_IDS}
        self.last_run_us: int | None = None
        self.next_period = "2022-12"  # the earliest an attribution starts: nothing is posted before
        for customer_id, (partner_id, start) in zip(CUSTOMERS, attributed):
            self._attribute(customer_id, partner_id, at(start))

    def _attribute(self, customer_id: str, partner_id: str, start_us: int, replace: bool = False) -> None:
        with self.database.transaction() as session:
            customers.attribute(session, customer_id, partner_id, from_us(start_us).date(), "manual", replace=replace)
        self.oracle.attribute(customer_id, partner_id, start_us)

    def run(self, operations) -> None:
        for operation in operations:
            getattr(self, operation[0])(*operation[1:])
        with self.database.transaction() as session:
            holds.release_matured(session, self.now_us)
        self.oracle.release_matured(self.now_us)
        self.check_balances()
        with self.database.reader() as session:
            net: dict[str, int] = defaultdict(int)
            for (_, currency), (debits, credits) in all_balances(session).items():
                net[currency] += debits - credits
            assert set(net.values()) <= {0}, net
            report = verify(session)
        assert report.ok, report.problems

    # ---- time ----

    def wait(self, hours: int) -> None:
        self.now_us += hours * HOUR_US

    def jump(self, choice: int) -> None:
        """To the next window boundary of a customer, or maturity of a piece: the instants where an
        off-by-one would show."""
        candidates = sorted({instant for instant in self._boundaries() if instant >= self.now_us})
        if candidates:
            self.now_us = candidates[choice % min(len(candidates), 4)]

    def _boundaries(self):
        for attributions in self.oracle.attributions.values():
            for start_us, _ in attributions:
                yield from (months_after(start_us, months) for months in range(0, 13))
        yield from (piece.matures_us for piece in self.oracle.pieces)

    # ---- program changes ----

    def reattribute(self, customer_id: str, partner_id: str) -> None:
        start_us = (self.now_us // DAY_US + 1) * DAY_US
        current_start, current = self.oracle.attributions[customer_id][-1]
        if partner_id == current or start_us <= current_start or partner_id in self.oracle.terminated_us:
            return
        self._attribute(customer_id, partner_id, start_us, replace=True)

    def version(self, plan_id: str) -> None:
        """A new version of the plan from now, the later terms and the first ones in turn."""
        versions = self.oracle.versions[plan_id]
        if versions[-1][0] >= self.now_us:
            return
        spec = (LATER_PLANS if len(versions) % 2 else PLANS)[plan_id]
        with self.database.transaction() as session:
            plans.add_version(session, plan_id, service_terms(spec), self.now_us)
        self.oracle.add_version(plan_id, self.now_us, oracle_plan(spec))

    def status(self, partner_id: str, status: str) -> None:
        current, since_us = self.statuses[partner_id]
        if current == "terminated" or current == status or since_us >= self.now_us:
            return
        if status == "terminated" and any(start_us > self.now_us and partner == partner_id
                                          for history in self.oracle.attributions.values()
                                          for start_us, partner in history):
            return  # an attribution starts later: the database refuses a termination before it
        with self.database.transaction() as session:
            partners.set_status(session, partner_id, status, self.now_us)
        self.statuses[partner_id] = (status, self.now_us)
        if status == "terminated":
            self.oracle.terminate(partner_id, self.now_us)
        else:
            self.oracle.suspend(partner_id, self.now_us, status == "suspended")

    # ---- payouts and closes ----

    def payout(self, failing: int) -> None:
        """A payout run now; each payout settled, or failed where `failing` has its bit."""
        if self.last_run_us == self.now_us:
            return  # a second run at an instant is the first one (replayed)
        self.last_run_us = self.now_us
        with self.database.transaction() as session:
            run = payouts.run_payouts(session, self.now_us)
        expected = self.oracle.payout_run(PARTNER_IDS, CURRENCIES, self.now_us)
        assert {(p.partner_id, p.currency): p.amount_minor for p in run.payouts} == expected, run
        for index, made in enumerate(run.payouts):
            with self.database.transaction() as session:
                if failing >> index & 1:
                    payouts.fail(session, made.id, at_us=self.now_us)
                    self.oracle.payout_failed(made.partner_id, made.currency, made.amount_minor, self.now_us)
                else:
                    payouts.settle(session, made.id, at_us=self.now_us)

    def close(self) -> None:
        """Close every month that has ended by now, in turn."""
        while (end_us := period_bounds_us(self.next_period)[1]) <= self.now_us:
            with self.database.transaction() as session:
                periods.close_period(session, self.next_period)
            self.oracle.close(PARTNER_IDS, CURRENCIES, end_us)
            self.next_period = next_period(self.next_period)

    # ---- revenue events ----

    def pay(self, customer_id: str, currency: str, amount: int, late_hours: int = 0) -> None:
        """A payment now, or one delivered `late_hours` after it occurred (into a closed period, or
        before a payout run, a release or a maturity)."""
        self._pay(customer_id, currency, amount, self.now_us - late_hours * HOUR_US)

    def _pay(self, customer_id: str, currency: str, amount: int, occurred_us: int) -> None:
        invoice_id = f"inv-{next(self.ids)}"
        expected = self.oracle.paid(invoice_id, customer_id, currency, amount, occurred_us)
        self._post("invoice_paid", customer_id, invoice_id, currency, amount, expected, occurred_us)
        self.paid.append(invoice_id)

    def refund(self, choice: int, how, late_hours: int = 0, *, chargeback: bool = False) -> None:
        """A refund now, or delivered `late_hours` after it occurred, but not dated before the
        invoice's latest event (where the README's rules for events out of order take over)."""
        if not self.paid:
            return
        invoice_id = self.paid[choice % len(self.paid)]
        invoice = self.oracle.invoices[invoice_id]
        rest = invoice.paid - invoice.refunded
        named = {"rest": rest, "over": rest + 1, "one": 1}
        amount = named[how] if how in named else max(1, invoice.paid * how // 7)
        if amount <= 0:
            return
        occurred_us = max(self.now_us - late_hours * HOUR_US, invoice.latest_us)
        expected = self.oracle.refund(invoice_id, amount, occurred_us, chargeback)
        self._post("chargeback" if chargeback else "refund", invoice.customer, invoice_id, invoice.currency, amount,
                   expected, occurred_us)

    def chargeback(self, choice: int, how, late_hours: int = 0) -> None:
        self.refund(choice, how, late_hours, chargeback=True)

    def won(self, choice: int, how) -> None:
        disputed = [i for i in self.paid if self.oracle.invoices[i].charged_back > 0]
        if not disputed:
            return
        invoice_id = disputed[choice % len(disputed)]
        invoice = self.oracle.invoices[invoice_id]
        amount = invoice.charged_back if how == "all" else max(1, invoice.charged_back * how // 4)
        expected = self.oracle.dispute_won(invoice_id, amount, self.now_us)
        self._post("chargeback_reversed", invoice.customer, invoice_id, invoice.currency, amount, expected)

    def pay_on_boundary(self, customer_id: str, months: int, before: bool, currency: str, amount: int) -> None:
        """A payment dated at a boundary of the customer's window (a step of its schedule, its end),
        or a microsecond before it: delivered late if that has passed, else when it comes."""
        start_us = self.oracle.attributions[customer_id][-1][0]
        occurred_us = months_after(start_us, months) - (1 if before else 0)
        self.now_us = max(self.now_us, occurred_us)
        self._pay(customer_id, currency, amount, occurred_us)

    def _post(self, type_: str, customer_id: str, invoice_id: str, currency: str, amount: int, expected,
              occurred_us: int | None = None) -> None:
        event = RevenueEvent(f"e-{next(self.ids)}", type_, customer_id, invoice_id, currency, amount,
                             self.now_us if occurred_us is None else occurred_us)
        with self.database.transaction() as session:
            [result] = ingest(session, [event])
        if expected is None:
            assert isinstance(result, Refusal), (event, result)
            return
        assert isinstance(result, Outcome), (event, result)
        got = sorted((line.partner_id, line.kind, line.amount_minor) for line in result.commissions)
        assert {line.currency for line in result.commissions} <= {currency}, result
        assert (result.status, got) == (expected[0], sorted(expected[1])), (event, result)

    # ---- balances ----

    def check_balances(self) -> None:
        instants = {self.now_us + 1, *(posting[0] for posting in self.oracle.postings),
                    *(piece.matures_us for piece in self.oracle.pieces)}
        probes = sorted({probe for instant in instants for probe in (instant, instant + 1)})
        with self.database.reader() as session:
            for partner_id in PARTNER_IDS:
                for probe in probes:
                    found = partner_balances(session, partner_id, before_us=probe)
                    for currency in CURRENCIES:
                        want = self.oracle.balance(partner_id, currency, probe)
                        assert found.get(currency, (0, 0)) == want, (partner_id, currency, from_us(probe))


@pytest.fixture(scope="module")
def oracle_program(request) -> str:
    return built_template(request, build_program, "sqlite")


@pytest.fixture(scope="module")
def oracle_pg_program(request) -> str:
    return built_template(request, build_program, "postgres")


@database_property(50)
@given(attributed=first_attributions, operations=steps)
def test_the_service_posts_what_the_contract_says_on_sqlite(attributed, operations, oracle_program, tmp_path_factory):
    database = Database(new_sqlite_url(oracle_program, tmp_path_factory.mktemp("history")))
    try:
        History(database, attributed).run(operations)
    finally:
        database.dispose()


@pytest.mark.postgres
@database_property(8)
@given(attributed=first_attributions, operations=steps)
def test_the_service_posts_what_the_contract_says_on_postgres(attributed, operations, pg_cluster, oracle_pg_program):
    url = new_pg_copy(pg_cluster, oracle_pg_program)
    database = Database(url)
    try:
        History(database, attributed).run(operations)
    finally:
        database.dispose()
        drop_pg_database(pg_cluster, url)
