"""Model-based test: a Hypothesis state machine drives invoices, partial and full refunds,
chargebacks and won disputes, re-attributions, hold releases, payout runs, settlements, failures
and month closes against the service, and the same steps against the small independent reference
model in `reference_model.py`; after every step every partner's pending and available balances
must agree, and at the end verify() must be clean and every release must name the event that
accrued what it released."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test
from sqlalchemy import select

from ledger import customers, holds, partners, payouts, periods, plans, revenue
from ledger.balances import partner_balances
from ledger.db import Database
from ledger.instants import UTC, add_months, from_us, period_of, to_us
from ledger.migrate import upgrade
from ledger.schema import journal_transactions
from ledger.verify import verify
from tests.conftest import drop_pg_database, examples, new_pg_url, new_sqlite_url, scaled
from tests.reliability.reference_model import DAY_US, Model, Plan

MINUTE_US = 60_000_000
START = datetime(2026, 1, 1, tzinfo=UTC)
CUSTOMERS = ("c1", "c2", "c3", "c4")
PARTNERS = ("dist", "msp", "aff")
PLANS = {
    "dist": (Plan(Decimal("0.15"), 2_000, 10, 1_000, False, Decimal("0.10")),
             {"rates": [{"from_month": 1, "rate": "0.15"}], "duration_months": None, "hold_days": 10, "negative_balance": "carry_forward",
              "cpa": [{"amount": "20.00", "currency": "USD"}], "min_payout": [{"amount": "10.00", "currency": "USD"}],
              "override": {"rate": "0.10", "basis": "commission"}}),
    "msp": (Plan(Decimal("0.20"), 5_000, 30, 2_500, False),
            {"rates": [{"from_month": 1, "rate": "0.20"}], "duration_months": None, "hold_days": 30, "negative_balance": "carry_forward",
             "cpa": [{"amount": "50.00", "currency": "USD"}], "min_payout": [{"amount": "25.00", "currency": "USD"}]}),
    "aff": (Plan(Decimal("0.125"), 3_000, 5, 500, True),
            {"rates": [{"from_month": 1, "rate": "0.125"}], "duration_months": None, "hold_days": 5, "negative_balance": "reset",
             "cpa": [{"amount": "30.00", "currency": "USD"}], "min_payout": [{"amount": "5.00", "currency": "USD"}]}),
}
PARENTS = {"dist": None, "msp": "dist", "aff": None}
_template: list[str] = []


def template() -> str:
    if not _template:
        directory = tempfile.mkdtemp(prefix="revshare-model-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        path = Path(directory) / "template.db"
        upgrade(f"sqlite:///{path}")
        _template.append(str(path))
    return _template[0]


class LedgerMachine(RuleBasedStateMachine):
    invoices = Bundle("invoices")

    @initialize()
    def enrol(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="revshare-model-"))  # removed in teardown
        self.database = self.new_database()
        self.model = Model({p: PLANS[p][0] for p in PARTNERS}, PARENTS)
        self.now = to_us(START)
        self.counter = 0
        self.attributed_day: dict[str, int] = {}
        self.pending_payouts: list[tuple[int, str, int]] = []
        with self.database.transaction() as session:
            for partner_id in PARTNERS:
                plans.create_plan(session, f"plan-{partner_id}", partner_id, PLANS[partner_id][1])
            for partner_id in PARTNERS:
                partners.create_partner(session, partner_id, partner_id, "msp", f"plan-{partner_id}", PARENTS[partner_id])
            for index, customer_id in enumerate(CUSTOMERS[:3]):
                partner_id = ("msp", "aff", "dist")[index]
                customers.attribute(session, customer_id, partner_id, START.date(), "manual")
                self.model.attribution[customer_id] = partner_id
                self.attributed_day[customer_id] = self.now

    def new_database(self) -> Database:
        return Database(new_sqlite_url(template(), self.directory))

    def drop_database(self) -> None:
        pass

    def teardown(self) -> None:
        if hasattr(self, "database"):
            release, piece = journal_transactions.alias("release"), journal_transactions.alias("piece")
            with self.database.reader() as session:
                report = verify(session)
                untraced = session.execute(  # a release names the event that accrued its piece, whatever posted it
                    select(release.c.id).join(piece, piece.c.id == release.c.accrual_id)
                    .where(release.c.kind == "release", release.c.event_id.is_distinct_from(piece.c.event_id))).all()
            self.database.dispose()
            self.drop_database()
            shutil.rmtree(self.directory, ignore_errors=True)
            assert report.ok, report.problems
            assert untraced == []

    # --- time ------------------------------------------------------------------------------------
    def _month_end(self) -> int:
        return to_us(add_months(from_us(self.now).replace(day=1, hour=0, minute=0, second=0, microsecond=0), 1))

    def _tick(self) -> int:
        """A new instant for the next posting: strictly later, and still inside the month."""
        self.now = max(self.now + 1, min(self.now + MINUTE_US, self._month_end() - MINUTE_US))
        return self.now

    @rule(days=st.integers(1, 20))
    def advance(self, days: int) -> None:
        """Time moves on within the month (months end only through close_the_month)."""
        self.now = max(self.now, min(self.now + days * DAY_US, self._month_end() - 2 * MINUTE_US))

    @precondition(lambda self: from_us(self.now) < add_months(START, 10))
    @rule()
    def close_the_month(self) -> None:
        end = self._month_end()
        with self.database.transaction() as session:
            periods.close_period(session, period_of(end - 1), now_us=end + DAY_US)
        self.model.close(end)
        self.now = end

    # --- revenue ---------------------------------------------------------------------------------
    def _ingest(self, kind: str, customer_id: str, invoice_id: str, amount: int) -> revenue.Outcome:
        self.counter += 1
        event = revenue.RevenueEvent(f"e{self.counter}", kind, customer_id, invoice_id, "USD", amount, self._tick())
        with self.database.transaction() as session:
            [result] = revenue.ingest(session, [event])
        assert isinstance(result, revenue.Outcome), result
        return result

    @rule(target=invoices, customer_id=st.sampled_from(CUSTOMERS), amount=st.integers(1, 200_000))
    def pay(self, customer_id: str, amount: int) -> str:
        invoice_id = f"inv{self.counter + 1}"
        self._ingest("invoice_paid", customer_id, invoice_id, amount)
        self.model.pay(invoice_id, customer_id, amount, self.now)
        return invoice_id

    @rule(invoice_id=invoices, share=st.fractions(0, 1), chargeback=st.booleans())
    def refund(self, invoice_id: str, share, chargeback: bool) -> None:
        invoice = self.model.invoices[invoice_id]
        remaining = invoice.paid - invoice.refunded
        if remaining == 0 or invoice.charged_back != invoice.refunded and chargeback:
            return
        amount = max(1, int(remaining * share))
        self._ingest("chargeback" if chargeback else "refund", invoice.customer, invoice_id, amount)
        self.model.refund(invoice_id, amount, self.now, chargeback)

    @rule(invoice_id=invoices)
    def win_the_dispute(self, invoice_id: str) -> None:
        invoice = self.model.invoices[invoice_id]
        if invoice.charged_back == 0 or invoice.charged_back != invoice.refunded:
            return
        self._ingest("chargeback_reversed", invoice.customer, invoice_id, invoice.charged_back)
        self.model.dispute_won(invoice_id, invoice.charged_back, self.now)

    @rule(customer_id=st.sampled_from(CUSTOMERS), partner_id=st.sampled_from(PARTNERS))
    def reattribute(self, customer_id: str, partner_id: str) -> None:
        day = from_us(self.now).replace(hour=0, minute=0, second=0, microsecond=0)
        current = self.model.attribution.get(customer_id)
        if current == partner_id or to_us(day) <= self.attributed_day.get(customer_id, -1):
            return
        with self.database.transaction() as session:
            customers.attribute(session, customer_id, partner_id, day.date(), "manual", replace=True)
        self.model.attribution[customer_id] = partner_id
        self.attributed_day[customer_id] = to_us(day)

    # --- holds and payouts -----------------------------------------------------------------------
    @rule()
    def release(self) -> None:
        with self.database.transaction() as session:
            holds.release_matured(session, self._tick())
        self.model.release_all(self.now)

    @rule()
    def payout_run(self) -> None:
        with self.database.transaction() as session:
            run = payouts.run_payouts(session, self._tick())
        expected = self.model.payout_run(self.now, set(PARTNERS))
        assert {p.partner_id: p.amount_minor for p in run.payouts} == expected
        self.pending_payouts += [(p.id, p.partner_id, p.amount_minor) for p in run.payouts]

    @precondition(lambda self: self.pending_payouts)
    @rule(failed=st.booleans())
    def resolve_a_payout(self, failed: bool) -> None:
        payout_id, partner_id, amount = self.pending_payouts.pop(0)
        with self.database.transaction() as session:
            (payouts.fail if failed else payouts.settle)(session, payout_id, at_us=self._tick())
        self.model.resolve(partner_id, amount, failed)

    # --- the comparison --------------------------------------------------------------------------
    @invariant()
    def every_partner_balance_agrees_with_the_model(self) -> None:
        if not hasattr(self, "database"):
            return
        with self.database.reader() as session:
            for partner_id in PARTNERS:
                actual = partner_balances(session, partner_id, before_us=self.now + 1).get("USD", (0, 0))
                expected = (self.model.pending[partner_id], self.model.available[partner_id])
                assert actual == expected, (partner_id, actual, expected)


# `make soak`: ten times the runs, each four times as long (more events, refunds and payouts per month).
LedgerMachine.TestCase.settings = settings(max_examples=examples(25), stateful_step_count=scaled(30, 4),
                                           deadline=None, suppress_health_check=[HealthCheck.too_slow])
test_the_service_agrees_with_the_reference_model = LedgerMachine.TestCase


class PostgresLedgerMachine(LedgerMachine):
    """The same machine, each example on its own copy of the migrated PostgreSQL template."""

    cluster = None

    def new_database(self) -> Database:
        self.url = new_pg_url(self.cluster)
        return Database(self.url)

    def drop_database(self) -> None:
        drop_pg_database(self.cluster, self.url)


@pytest.mark.postgres
def test_the_service_agrees_with_the_reference_model_on_postgresql(pg_cluster) -> None:
    # Few examples: each costs about a second on PostgreSQL; `make soak` runs ten times more.
    machine = type("Machine", (PostgresLedgerMachine,), {"cluster": pg_cluster})
    run_state_machine_as_test(machine, settings=settings(max_examples=examples(8), stateful_step_count=scaled(30, 4),
                                                         deadline=None, suppress_health_check=[HealthCheck.too_slow]))
