"""Properties of the commission domain over random histories: invoices paid in USD and JPY, partial
and full refunds, chargebacks and won disputes (some posted late, some refused, some in the same
batch as their invoice), re-attributions and hold releases at random instants, on a program with
overrides of both bases and a CPA.

After every step: each event was accepted or refused exactly as an independent model says, with
the commissions the model computes (accruals exactly; for refunds and disputes their sum); the net
of every accrual in the journal equals the model's; per accrual and per invoice, clawbacks never
exceed what was accrued, net commission never goes below zero nor above the original accrual, and
stays within half a minor unit per refund of its exact proportional value; no accrual is released
twice; partner balances are non-negative and add up to commission expense; the trial balance is
zero per currency and verify() is clean. At the end, replaying every accepted event (in order, then
reversed) returns the original outcomes, all replayed, and leaves the chain head where it was.
Events refused during the history are not replayed: they were never applied, and a refusal that
depended on the state then may be accepted now.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
import sqlalchemy as sa
from hypothesis import event as record_label, example, given
from hypothesis import strategies as st
from sqlalchemy import func, select

from ledger import accounts as chart
from ledger import customers, holds, journal, partners, plans
from ledger.balances import all_balances, partner_balances
from ledger.db import Database
from ledger.instants import add_days_us, from_us
from ledger.revenue import Outcome, Refusal, RevenueEvent, ingest
from ledger.schema import journal_lines, journal_transactions
from ledger.verify import verify
from tests.conftest import built_template, database_property, drop_pg_database, new_sqlite_url
from tests.scenarios.books import at, terms

HOUR_US = 3_600 * 1_000_000
# Histories span up to about 640 days (16 steps of up to 40): long before the clock of any run, where
# an event dated ahead of the clock would be refused.
START_US = at("2023-01-01")
# The program: a distributor (5% of revenue) over an MSP (20%, 10% of its affiliate's commission,
# a USD CPA) over an affiliate (30%); a VAR on its own (15%, CPA in USD and JPY, no hold).
PLANS = {
    "dist": dict(rate="0", override=("0.05", "revenue"), hold_days=20),
    "msp": dict(rate="0.20", override=("0.10", "commission"), hold_days=30, cpa={"USD": "15.00"}),
    "aff": dict(rate="0.30", hold_days=10),
    "var": dict(rate="0.15", hold_days=0, cpa={"USD": "7.77", "JPY": "800"}),
}
PARENTS = {"dist": None, "msp": "dist", "aff": "msp", "var": None}
PARTNERS = list(PLANS)
CUSTOMERS = ["c1", "c2", "c3", "c4"]  # c4 starts unattributed
ATTRIBUTED = (("c1", "aff"), ("c2", "msp"), ("c3", "var"))
EARNING_KINDS = ("accrual", "cpa", "override")
COPIES = itertools.count()


def note(label: str) -> None:
    record_label(label)  # shown by --hypothesis-show-statistics: the histories reach every branch


def half_even(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


@dataclass
class Invoice:
    customer_id: str
    currency: str
    paid_minor: int
    paid_at_us: int
    refunded_minor: int = 0
    charged_back_minor: int = 0
    adjustments: int = 0  # accepted refunds, chargebacks and reversals
    roots: list[Root] = field(default_factory=list)
    dated: list[tuple[int, str, int]] = field(default_factory=list)  # (occurred_at, type, amount) of each accepted

    def net_at(self, instant_us: int, types: tuple[str, ...]) -> int:
        """Of the accepted events of `types` dated up to the instant: their amounts, reversed chargebacks negative."""
        return sum(-amount if type_ == "chargeback_reversed" else amount
                   for occurred_us, type_, amount in self.dated if occurred_us <= instant_us and type_ in types)

    def from_on(self, instant_us: int) -> list[int]:
        """The instant and each later one an accepted event is dated, in time order."""
        return [instant_us, *sorted(occurred_us for occurred_us, _, _ in self.dated if occurred_us > instant_us)]


@dataclass
class Root:
    """One accrual, CPA or override as first earned, and what the model says is left of it."""

    kind: str
    amount_minor: int
    net_minor: int


@dataclass
class Model:
    """What the books should say, computed without the ledger's code."""

    attributions: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    invoices: dict[str, Invoice] = field(default_factory=dict)
    # customer -> (its claimant's instant, the claimant's bounty, once earned): the CPA's claim
    cpa_claims: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    roots: dict[int, Root] = field(default_factory=dict)  # by the journal id the ledger gave it
    withdrawn: set[int] = field(default_factory=set)  # bounties whose claim a payment dated earlier took

    def partner_at(self, customer_id: str, instant_us: int) -> str | None:
        found = None
        for start_us, partner_id in self.attributions.get(customer_id, []):
            if start_us <= instant_us:
                found = partner_id
        return found

    def paid(self, event: RevenueEvent) -> tuple[str, list[tuple[str, str, int]]]:
        partner_id = self.partner_at(event.customer_id, event.occurred_at_us)
        self.invoices[event.invoice_id] = Invoice(event.customer_id, event.currency, event.amount_minor,
                                                  event.occurred_at_us)
        if partner_id is None:
            return ("no_commission" if event.customer_id in self.attributions else "unattributed"), []
        plan = PLANS[partner_id]
        share = half_even(Decimal(event.amount_minor) * Decimal(plan["rate"]))
        lines = [(partner_id, "accrual", share)] if share else []
        claim = self.cpa_claims.get(event.customer_id)
        if claim is None or event.occurred_at_us < claim[0]:  # the first eligible payment by date claims it
            if claim is not None and claim[1] is not None:
                self.withdraw(claim[1])
            self.cpa_claims[event.customer_id] = (event.occurred_at_us, None)
            cpa = plan.get("cpa", {}).get(event.currency)
            if cpa:
                lines.append((partner_id, "cpa", int(Decimal(cpa) * (100 if event.currency == "USD" else 1))))
        ancestor = PARENTS[partner_id]
        while ancestor is not None:
            override = PLANS[ancestor].get("override")
            if override:
                basis = event.amount_minor if override[1] == "revenue" else share
                amount = half_even(Decimal(basis) * Decimal(override[0]))
                if amount:
                    lines.append((ancestor, "override", amount))
            ancestor = PARENTS[ancestor]
        return ("posted" if lines else "no_commission"), lines

    def accepts(self, event: RevenueEvent) -> bool:
        if event.type == "invoice_paid":
            return True
        invoice = self.invoices[event.invoice_id]
        if event.occurred_at_us < invoice.paid_at_us:
            return False
        # As of every instant from the event's own on, not only in total: a won dispute dated later
        # does not make room for a refund before it, nor does a chargeback dated later for a win.
        if event.type == "chargeback_reversed":
            disputes = ("chargeback", "chargeback_reversed")
            fits = [event.amount_minor <= invoice.net_at(instant, disputes)
                    for instant in invoice.from_on(event.occurred_at_us)]
        else:
            everything = ("refund", "chargeback", "chargeback_reversed")
            fits = [invoice.net_at(instant, everything) + event.amount_minor <= invoice.paid_minor
                    for instant in invoice.from_on(event.occurred_at_us)]
        if fits[-1] and not all(fits):
            note(f"{event.type} within the total, refused as of its instant")
        return all(fits)

    def earned(self, invoice_id: str, transaction_ids, lines) -> None:
        invoice = self.invoices[invoice_id]
        for transaction_id, (_, kind, amount) in zip(transaction_ids, lines):
            root = Root(kind, amount, amount)
            invoice.roots.append(root)
            self.roots[transaction_id] = root
            if kind == "cpa":
                self.cpa_claims[invoice.customer_id] = (invoice.paid_at_us, transaction_id)

    def withdraw(self, root_id: int) -> None:
        """A claimant's bounty, reversed with all that stands against it: it no longer counts."""
        root = self.roots.pop(root_id)
        for invoice in self.invoices.values():
            invoice.roots = [other for other in invoice.roots if other is not root]  # Root compares by value
        self.withdrawn.add(root_id)

    def adjust(self, event: RevenueEvent) -> int:
        """Apply a refund, chargeback or won dispute; returns the signed change of commission.

        The contract's rules, written out once more: a refund of r on an invoice paid P claws
        half_even(A x r / P) of each accrual A, capped at what is left; the refund that completes
        the invoice claws all that is left; the CPA goes only then, in full. A won dispute restores
        what is clawed (all of it if nothing stays refunded, else its share, capped)."""
        invoice = self.invoices[event.invoice_id]
        change = 0
        if event.type == "chargeback_reversed":
            refunded_after = invoice.refunded_minor - event.amount_minor
            for root in invoice.roots:
                clawed = root.amount_minor - root.net_minor
                share = half_even(Decimal(root.amount_minor) * event.amount_minor / invoice.paid_minor)
                restored = clawed if root.kind == "cpa" or refunded_after == 0 else min(share, clawed)
                root.net_minor += restored
                change += restored
        else:
            fully = invoice.refunded_minor + event.amount_minor == invoice.paid_minor
            for root in invoice.roots:
                share = half_even(Decimal(root.amount_minor) * event.amount_minor / invoice.paid_minor)
                claw = root.net_minor if fully else 0 if root.kind == "cpa" else min(share, root.net_minor)
                root.net_minor -= claw
                change -= claw
        sign = -1 if event.type == "chargeback_reversed" else 1
        invoice.refunded_minor += sign * event.amount_minor
        if event.type != "refund":
            invoice.charged_back_minor += sign * event.amount_minor
        invoice.adjustments += 1
        invoice.dated.append((event.occurred_at_us, event.type, event.amount_minor))
        return change


# ---- operations ----
# ("pay", customer, currency, amount, hours later, hours late, same batch as the previous event)
# ("refund", invoice pick, chargeback?, amount pick, hours later, hours late, same batch)
# ("dispute", invoice pick, amount pick, share won (0 = lost, "all" = every open chargeback), hours later,
#  hours until won, same batch)
# ("split", invoice pick, weights, chargebacks?, hours later, same batch): what is left of the invoice
#  refunded in parts by those weights, the last part taking the rest
# ("attribute", customer, partner, hours later)   ("release", hours later)
hours = st.integers(0, 24 * 20)
late = st.sampled_from([0, 0, 0, 0, 24 * 3, 24 * 10, 24 * 40])
# Small shares first (Hypothesis favours earlier choices): several refunds per invoice, whose
# rounding the last one must settle exactly.
amount_pick = st.one_of(st.sampled_from([0.1, "rest", 0.15, 1 / 3, 0.5, 0.999]), st.floats(0.01, 1.2))
pay_op = st.tuples(st.just("pay"), st.sampled_from(CUSTOMERS), st.sampled_from(["USD", "USD", "JPY"]),
                   st.one_of(st.integers(1, 40_000).map(lambda n: n * 5), st.integers(1, 200_000)),  # rounding ties
                   hours, late, st.booleans())
refund_op = st.tuples(st.just("refund"), st.integers(0, 50), st.booleans(), amount_pick, hours, late, st.booleans())
dispute_op = st.tuples(st.just("dispute"), st.integers(0, 50), amount_pick, st.sampled_from([1.0, "all", 0.5, 0.0]),
                       hours, hours, st.booleans())
split_op = st.tuples(st.just("split"), st.integers(0, 50), st.lists(st.integers(1, 1_000), min_size=2, max_size=5),
                     st.booleans(), hours, st.booleans())
attribute_op = st.tuples(st.just("attribute"), st.sampled_from(CUSTOMERS), st.sampled_from(PARTNERS), hours)
release_op = st.tuples(st.just("release"), hours)
histories = st.tuples(
    st.lists(pay_op, min_size=1, max_size=4),
    st.lists(st.one_of(dispute_op, split_op, refund_op, pay_op, release_op, attribute_op), min_size=2, max_size=12),
).map(lambda parts: parts[0] + parts[1])


class History:
    def __init__(self, database: Database) -> None:
        self.database, self.model = database, Model()
        self.now_us = START_US
        self.accepted: list[tuple[RevenueEvent, Outcome]] = []
        self.pending_batch: list[RevenueEvent] = []
        self.invoice_ids: list[str] = []
        self.unflushed: dict[str, Invoice] = {}
        self.won_at: dict[str, int] = {}  # invoice -> the instant of its latest won dispute made
        self.model.attributions = {customer_id: [(START_US, partner_id)] for customer_id, partner_id in ATTRIBUTED}

    def run(self, operations) -> None:
        for number, operation in enumerate(operations):
            kind = operation[0]
            if kind in ("pay", "refund", "dispute", "split"):
                if not operation[-1]:
                    self.flush()  # so that the model knows everything before this operation
                for event, same_batch in self.events(number, operation):
                    if not same_batch:
                        self.flush()
                    self.pending_batch.append(event)
                continue
            self.flush()
            self.now_us += operation[-1] * HOUR_US
            if kind == "attribute":
                self.attribute(operation[1], operation[2])
            else:
                with self.database.transaction() as session:
                    holds.release_matured(session, self.now_us)
            self.check()
        self.flush()

    def events(self, number: int, operation) -> list[tuple[RevenueEvent, bool]]:
        """The revenue events of one operation, each with whether it joins the batch being built."""
        if operation[0] == "pay":
            _, customer_id, currency, amount_minor, later, late_hours, same_batch = operation
            self.now_us += later * HOUR_US
            paid = RevenueEvent(f"e{number}", "invoice_paid", customer_id, f"inv{number}", currency, amount_minor,
                                self.now_us - late_hours * HOUR_US)
            self.invoice_ids.append(paid.invoice_id)
            self.unflushed[paid.invoice_id] = Invoice(customer_id, currency, amount_minor, paid.occurred_at_us)
            return [(paid, same_batch)]
        if not self.invoice_ids:
            return []
        invoice_id = self.invoice_ids[operation[1] % len(self.invoice_ids)]
        # an invoice paid earlier in the same batch is not in the model yet: refund it as it was paid
        invoice = self.model.invoices.get(invoice_id) or self.unflushed[invoice_id]
        same = lambda type, minor, occurred, suffix="": RevenueEvent(  # noqa: E731
            f"e{number}{type[-1]}{suffix}", type, invoice.customer_id, invoice_id, invoice.currency, minor, occurred)
        if operation[0] == "split":
            _, _, weights, chargebacks, later, same_batch = operation
            left = invoice.paid_minor - invoice.refunded_minor
            parts = [left * weight // sum(weights) for weight in weights[:-1]]
            parts.append(left - sum(parts))
            start_us = self.now_us + later * HOUR_US
            # A microsecond apart, and what follows no earlier than the last part: an event dated before
            # one delivered ahead of it is the late path's, which the model does not replay.
            self.now_us = start_us + len(parts) - 1
            return [(same("chargeback" if chargebacks and part % 2 else "refund", part, start_us + index, f"-{index}"),
                     same_batch or index > 0) for index, part in enumerate(parts) if part > 0]
        pick = operation[3] if operation[0] == "refund" else operation[2]
        amount_minor = (invoice.paid_minor - invoice.refunded_minor if pick == "rest"
                        else max(1, int(invoice.paid_minor * pick)))
        if amount_minor <= 0:
            return []
        if operation[0] == "refund":
            _, _, chargeback, _, later, late_hours, same_batch = operation
            self.now_us += later * HOUR_US
            # Late, but after the invoice's won disputes: one dated before a won dispute delivered
            # ahead of it is the late path's, as for a split's parts.
            occurred_us = max(self.now_us - late_hours * HOUR_US, self.won_at.get(invoice_id, -1) + 1)
            return [(same("chargeback" if chargeback else "refund", amount_minor, occurred_us), same_batch)]
        _, _, _, won, later, until_won, same_batch = operation
        self.now_us += later * HOUR_US
        events = [(same("chargeback", amount_minor, self.now_us), same_batch)]
        if won:  # a share of this chargeback, or "all" that is charged back on the invoice
            self.now_us += until_won * HOUR_US
            reversed_minor = (invoice.charged_back_minor + amount_minor if won == "all"
                              else max(1, int(amount_minor * won)))
            events.append((same("chargeback_reversed", reversed_minor, self.now_us), same_batch))
            self.won_at[invoice_id] = self.now_us
        return events

    def flush(self) -> None:
        if not self.pending_batch:
            return
        batch, self.pending_batch = self.pending_batch, []
        with self.database.transaction() as session:
            results = ingest(session, batch)
        for event, result in zip(batch, results):
            self.expect(event, result)
        self.check()

    def expect(self, event: RevenueEvent, result: Outcome | Refusal) -> None:
        accepted = self.model.accepts(event)
        assert isinstance(result, Outcome) == accepted, (event, result)
        note(f"{event.type} {'accepted' if accepted else 'refused'}")
        if not accepted:
            return
        assert not result.replayed
        if event.type == "invoice_paid":
            status, lines = self.model.paid(event)
            assert result.status == status, (event, result)
            assert [(c.partner_id, c.kind, c.amount_minor) for c in result.commissions] == lines, (event, result)
            self.model.earned(event.invoice_id, result.transaction_ids, lines)
        else:
            change = self.model.adjust(event)
            assert sum(c.amount_minor for c in result.commissions) == change, (event, result, change)
            if event.type == "chargeback_reversed":
                assert all(c.kind in EARNING_KINDS for c in result.commissions), result
            else:
                assert all(c.kind == "clawback" for c in result.commissions), result
        self.accepted.append((event, result))

    def attribute(self, customer_id: str, partner_id: str) -> None:
        history = self.model.attributions.get(customer_id, [])
        if history and history[-1][1] == partner_id:
            return
        day = from_us(self.now_us).date()
        start_us = at(day.isoformat()) + 86_400_000_000
        if history and start_us <= history[-1][0]:
            start_us = add_days_us(history[-1][0], 1)
        with self.database.transaction() as session:
            customers.attribute(session, customer_id, partner_id, from_us(start_us).date(), "manual",
                                replace=bool(history))
        self.model.attributions.setdefault(customer_id, []).append((start_us, partner_id))

    def check(self, *, read_partners: bool = False) -> None:
        with self.database.reader() as session:
            check_pieces(session, self.model)
            check_balances(session, read_partners=read_partners)
            report = verify(session)
            assert report.ok, report.problems

    def replay(self) -> None:
        with self.database.reader() as session:
            head = journal.chain_head(session)
        events = [event for event, _ in self.accepted]
        for order in (events, events[::-1]):
            with self.database.transaction() as session:
                results = ingest(session, order)
            originals = {event.id: outcome for event, outcome in self.accepted}
            for result in results:
                assert isinstance(result, Outcome) and result.replayed, result
                assert result._replace(replayed=False) == originals[result.event_id]
        with self.database.reader() as session:
            assert journal.chain_head(session) == head


def transactions(session) -> list:
    """Every transaction with its amount (all of them are two-line transfers), read raw."""
    t, j = journal_transactions.c, journal_lines.c
    return session.execute(select(t.id, t.kind, t.partner_id, t.invoice_id, t.accrual_id, t.reverses_id, j.currency,
                                  func.max(j.amount_minor).label("amount"))
                           .join(journal_lines, j.transaction_id == t.id)
                           .group_by(t.id, t.kind, t.partner_id, t.invoice_id, t.accrual_id, t.reverses_id, j.currency)
                           .order_by(t.id)).all()


def check_pieces(session, model: Model) -> None:
    """Per accrual (an accrual, CPA or override with the reinstatements of it) and per invoice, from
    the raw journal: what is clawed, released and left, against the model and the contract's bounds."""
    everything = transactions(session)
    by_id = {row.id: row for row in everything}
    # A refund dated before maturity but delivered after the release reverses that release
    # (holds.unrelease): only releases that stand count.
    # So does a payment that takes a CPA claim: the claimant's bounty and all that stands against it.
    reversed_ids = {row.reverses_id for row in everything if row.kind == "reversal"}

    def root_id(row) -> int:
        piece = row if row.kind in EARNING_KINDS else by_id[row.accrual_id]
        return piece.accrual_id or piece.id

    assert all(by_id[r].kind == "release" or root_id(by_id[r]) in model.withdrawn for r in reversed_ids), \
        "only releases and the bounties of claims taken are ever reversed here"
    assert model.withdrawn <= reversed_ids
    rows = [row for row in everything if row.kind != "reversal" and row.id not in reversed_ids]
    assert all(row.kind in (*EARNING_KINDS, "clawback", "release") for row in rows)
    root_of = {row.id: row.accrual_id or row.id for row in rows if row.kind in EARNING_KINDS}
    accrued, clawed, released = defaultdict(int), defaultdict(int), defaultdict(int)
    piece_clawed = defaultdict(int)
    for row in rows:
        if row.kind in EARNING_KINDS:
            accrued[root_of[row.id]] += row.amount
        elif row.kind == "clawback":
            clawed[root_of[row.accrual_id]] += row.amount
            piece_clawed[row.accrual_id] += row.amount
        else:
            released[row.accrual_id] += 1
            assert row.amount <= by_id[row.accrual_id].amount
    assert all(count == 1 for count in released.values()), "an accrual is released at most once"
    assert all(piece_clawed[piece] <= by_id[piece].amount for piece in piece_clawed)
    per_invoice = defaultdict(lambda: [0, 0])
    for root, amount in accrued.items():
        net = amount - clawed[root]
        row = by_id[root]
        assert 0 <= net <= row.amount, (row, amount, clawed[root])  # never negative, never above the original
        assert net == model.roots[root].net_minor, (row, net, model.roots[root])
        per_invoice[row.invoice_id][0] += amount
        per_invoice[row.invoice_id][1] += clawed[root]
        invoice = model.invoices[row.invoice_id]
        left = invoice.paid_minor - invoice.refunded_minor
        if row.kind == "cpa":
            assert net == (row.amount if left > 0 else 0), (row, invoice)
        else:
            exact = Decimal(row.amount) * left / invoice.paid_minor
            assert abs(net - exact) <= Decimal(invoice.adjustments) / 2, (row, invoice, net)
            if left == 0 or left == invoice.paid_minor:
                assert net == exact, (row, invoice, net)
    assert all(claws <= accruals for accruals, claws in per_invoice.values())
    assert set(accrued) == set(model.roots)


def check_balances(session, *, read_partners: bool = False) -> None:
    """Trial balance zero per currency; partner accounts never negative (there are no payouts) and
    together equal to commission expense. `read_partners` also reads them through partner_balances."""
    rows = all_balances(session)
    net: dict[str, int] = defaultdict(int)
    for (_, currency), (debits, credits) in rows.items():
        net[currency] += debits - credits
    assert all(total == 0 for total in net.values()), net
    commission = {currency: d - c for (name, currency), (d, c) in rows.items() if name == "expense:commission"}
    owed: dict[str, int] = defaultdict(int)
    for (name, currency), (debits, credits) in rows.items():
        if name.startswith("liability:partner:"):
            assert credits - debits >= 0, (name, currency, credits - debits)
            owed[currency] += credits - debits
    assert {c: v for c, v in owed.items() if v} == {c: v for c, v in commission.items() if v}
    if read_partners:  # the public read agrees with the raw rows
        for partner_id in PARTNERS:
            for currency, (pending, available) in partner_balances(session, partner_id).items():
                owed_on = [rows.get((name, currency), (0, 0)) for name in (chart.pending(partner_id),
                                                                           chart.available(partner_id))]
                assert (pending, available) == tuple(credits - debits for debits, credits in owed_on)


def build_program(database: Database) -> None:
    """The program every example starts from, built once per engine into a template database."""
    with database.transaction() as session:
        for plan_id, plan in PLANS.items():
            plans.create_plan(session, plan_id, plan_id, terms(duration_months=None, **plan))
        for partner_id in PARTNERS:
            partners.create_partner(session, partner_id, partner_id, "msp", partner_id, PARENTS[partner_id])
        for customer_id, partner_id in ATTRIBUTED:
            customers.attribute(session, customer_id, partner_id, from_us(START_US).date(), "manual")


@pytest.fixture(scope="module")
def sqlite_program(request) -> str:
    return built_template(request, build_program, "sqlite")


@pytest.fixture(scope="module")
def pg_program(request) -> str:
    return built_template(request, build_program, "postgres")


def new_pg_copy(cluster, template: str) -> str:
    name = f"{template}_{next(COPIES)}"
    admin = sa.create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
    admin.dispose()
    return cluster.url(name)


def run_history(database: Database, operations) -> None:
    history = History(database)
    history.run(operations)
    history.check(read_partners=True)
    history.replay()


# One history always run, for cases random ones reach rarely: a rounding tie (30% of 0.15 = 4.5
# cents -> 4); two chargebacks of 10% (1.5 -> 2 cents each) won back at once (all 4 return, not a
# fresh 3); refunds of 10% whose rounded shares would overshoot the 15-cent accrual without the cap;
# and the rest refunded.
RARE_CASES = [("pay", "c1", "USD", 50, 0, 0, False), ("pay", "c1", "USD", 15, 1, 0, False),
              ("dispute", 0, 0.1, 0.0, 1, 0, False), ("dispute", 0, 0.1, "all", 1, 1, False),
              *[("refund", 0, False, 0.1, 1, 0, False)] * 8, ("refund", 0, False, "rest", 1, 0, False)]

# A split's second part was dated a microsecond after the operation that followed it (a chargeback
# lost, then won back): the won dispute, dated before a refund delivered ahead of it, took the late
# path (what time order leaves clawed), which the model, replaying delivery order, does not know.
WON_AFTER_A_SPLIT = [("pay", "c1", "USD", 15, 0, 0, False), ("pay", "c1", "USD", 5, 0, 0, False),
                     ("pay", "c1", "USD", 5, 0, 0, False), ("dispute", 0, 0.1, 0.0, 0, 0, False),
                     ("dispute", 0, 0.1, 1.0, 0, 0, False), ("dispute", 0, 0.1, 1.0, 0, 0, False),
                     ("dispute", 1, 0.1, 1.0, 0, 0, False), ("split", 0, [1, 1], False, 0, False),
                     ("dispute", 0, 0.1, 1.0, 0, 0, False)]
# A refund 240 hours late, dated between the first of three chargebacks of a 0.03 invoice and its
# won dispute: time order has the invoice wholly refunded at the second chargeback, an instant before
# that dispute, and the late path claws the cent that leaves (as time order does); delivery order none.
REFUND_BEFORE_A_WIN = [("pay", "c1", "USD", 3, 0, 0, False), *[("dispute", 0, 0.1, 1.0, 0, 100, False)] * 3,
                       ("refund", 0, False, 0.1, 0, 240, False)]


@database_property(30)
@given(operations=histories)
@example(operations=RARE_CASES)
@example(operations=WON_AFTER_A_SPLIT)
@example(operations=REFUND_BEFORE_A_WIN)
def test_random_commission_histories_keep_every_invariant_on_sqlite(operations, sqlite_program, tmp_path_factory):
    database = Database(new_sqlite_url(sqlite_program, tmp_path_factory.mktemp("commission")))
    try:
        run_history(database, operations)
    finally:
        database.dispose()


@pytest.mark.postgres
@database_property(10)
@given(operations=histories)
def test_random_commission_histories_keep_every_invariant_on_postgres(operations, pg_cluster, pg_program):
    url = new_pg_copy(pg_cluster, pg_program)
    database = Database(url)
    try:
        run_history(database, operations)
    finally:
        database.dispose()
        drop_pg_database(pg_cluster, url)
