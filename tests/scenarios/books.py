"""A small vocabulary for worked commission scenarios: plans, partners and attributions in one line
each, revenue events posted through `ledger.revenue.ingest` (each call one batch, one database
transaction, exactly as the API and the importer do), and balances read back in minor units.

Days are written "2026-01-20" (00:00 UTC) and instants "2026-01-20T12:00:00Z"; amounts are the
decimal strings billing sends ("500.00"), parsed by the same `parse_event` as the API's events.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from ledger import customers, holds, partners, plans
from ledger.balances import all_balances, partner_balances
from ledger.db import Database
from ledger.instants import parse_date, parse_instant
from ledger.revenue import Outcome, Refusal, RevenueEvent, ingest, parse_event
from ledger.verify import verify

MICROSECOND = 1


def at(text: str) -> int:
    """Microseconds of a day ("2026-01-20", meaning 00:00 UTC) or of a full RFC 3339 instant."""
    return parse_instant(text if "T" in text else f"{text}T00:00:00Z", field="at")


def ahead(days: int) -> str:
    """The day `days` days after today (UTC), as "2027-01-20": for facts that must not have started."""
    return (datetime.now(timezone.utc).date() + timedelta(days=days)).isoformat()


def terms(rate: str | None = "0.20", *, rates: list[tuple[int, str]] | None = None, duration_months: int | None = 12,
          hold_days: int = 30, cpa: dict[str, str] | None = None, override: tuple[str, str] | None = None,
          min_payout: dict[str, str] | None = None, negative_balance: str = "carry_forward") -> dict[str, Any]:
    """Plan terms as the API receives them. `rates` is a step-down [(from_month, rate)]; `override`
    is (rate, basis)."""
    steps = rates if rates is not None else [(1, rate)]
    money = lambda amounts: [{"amount": a, "currency": c} for c, a in (amounts or {}).items()]  # noqa: E731
    return {
        "rates": [{"from_month": month, "rate": value} for month, value in steps],
        "duration_months": duration_months, "hold_days": hold_days, "negative_balance": negative_balance,
        "cpa": money(cpa), "min_payout": money(min_payout or {"USD": "50.00"}),
        "override": None if override is None else {"rate": override[0], "basis": override[1]},
    }


class Books:
    """One scenario's program and books on one database."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._event_ids = itertools.count(1)

    # ---- the program ----

    def plan(self, plan_id: str, rate: str | None = "0.20", **kwargs) -> int:
        """Create a plan; returns the id of its version 1."""
        with self.database.transaction() as session:
            return plans.create_plan(session, plan_id, plan_id, terms(rate, **kwargs)).versions[0].id

    def plan_version(self, plan_id: str, effective_from: str, rate: str | None = "0.20", **kwargs) -> int:
        with self.database.transaction() as session:
            return plans.add_version(session, plan_id, terms(rate, **kwargs), at(effective_from)).id

    def partner(self, partner_id: str, plan_id: str, *, parent: str | None = None, type: str = "msp") -> None:
        with self.database.transaction() as session:
            partners.create_partner(session, partner_id, partner_id, type, plan_id, parent_id=parent)

    def status(self, partner_id: str, status: str, effective_at: str) -> None:
        with self.database.transaction() as session:
            partners.set_status(session, partner_id, status, at(effective_at))

    def change_plan(self, partner_id: str, plan_id: str, effective_from: str) -> None:
        with self.database.transaction() as session:
            partners.change_plan(session, partner_id, plan_id, at(effective_from))

    def scheduled(self, partner_id: str) -> tuple[partners.Scheduled, ...]:
        with self.database.reader() as session:
            return partners.get_partner(session, partner_id).scheduled

    def withdraw_change(self, partner_id: str, change_id: str) -> partners.Partner:
        with self.database.transaction() as session:
            return partners.withdraw_change(session, partner_id, change_id)

    def withdraw_version(self, plan_id: str, version: int) -> plans.Plan:
        with self.database.transaction() as session:
            return plans.withdraw_version(session, plan_id, version)

    def attribute(self, customer_id: str, partner_id: str, effective_from: str, *, replace: bool = False) -> None:
        with self.database.transaction() as session:
            customers.attribute(session, customer_id, partner_id, parse_date(effective_from, field="effective_from"),
                                "deal_registration", replace=replace)

    # ---- revenue events ----

    def event(self, type: str, customer_id: str, invoice_id: str, amount: str, occurred_at: str, *,
              currency: str = "USD", event_id: str | None = None) -> RevenueEvent:
        instant = occurred_at if "T" in occurred_at else f"{occurred_at}T00:00:00Z"
        return parse_event({"id": event_id or f"evt-{next(self._event_ids)}", "type": type, "customer_id": customer_id,
                            "invoice_id": invoice_id, "amount": {"amount": amount, "currency": currency},
                            "occurred_at": instant})

    def ingest(self, *events: RevenueEvent) -> list[Outcome | Refusal]:
        """One batch in one database transaction."""
        with self.database.transaction() as session:
            return ingest(session, list(events))

    def post(self, type: str, customer_id: str, invoice_id: str, amount: str, occurred_at: str, **kwargs) -> Outcome:
        [result] = self.ingest(self.event(type, customer_id, invoice_id, amount, occurred_at, **kwargs))
        assert isinstance(result, Outcome), result
        return result

    def paid(self, *args, **kwargs) -> Outcome:
        return self.post("invoice_paid", *args, **kwargs)

    def refund(self, *args, **kwargs) -> Outcome:
        return self.post("refund", *args, **kwargs)

    def chargeback(self, *args, **kwargs) -> Outcome:
        return self.post("chargeback", *args, **kwargs)

    def dispute_won(self, *args, **kwargs) -> Outcome:
        return self.post("chargeback_reversed", *args, **kwargs)

    def refused(self, type: str, *args, **kwargs) -> Refusal:
        [result] = self.ingest(self.event(type, *args, **kwargs))
        assert isinstance(result, Refusal), result
        return result

    def release(self, instant: str) -> int:
        with self.database.transaction() as session:
            return holds.release_matured(session, at(instant))

    # ---- reading the books ----

    def balance(self, partner_id: str, *, before: str | None = None, currency: str = "USD") -> tuple[int, int]:
        """(pending, available) in minor units, of postings effective before `before` (all if None)."""
        with self.database.reader() as session:
            found = partner_balances(session, partner_id, before_us=None if before is None else at(before))
        return found.get(currency, (0, 0))

    def balance_just_after(self, partner_id: str, instant: str, *, currency: str = "USD") -> tuple[int, int]:
        """(pending, available) including everything effective at `instant` itself."""
        with self.database.reader() as session:
            found = partner_balances(session, partner_id, before_us=at(instant) + MICROSECOND)
        return found.get(currency, (0, 0))

    def trial_balance_is_zero(self) -> bool:
        with self.database.reader() as session:
            net: dict[str, int] = defaultdict(int)
            for (_, currency), (debits, credits) in all_balances(session).items():
                net[currency] += debits - credits
        return all(total == 0 for total in net.values())

    def verified(self) -> bool:
        with self.database.reader() as session:
            report = verify(session)
        assert report.ok, report.problems
        return True

    def release_events(self, invoice_id: str) -> list[tuple[str, str | None]]:
        """(partner, the event it names) of each release of the invoice's pieces, in posting order."""
        return [tuple(row) for row in self.sql(
            "SELECT partner_id, event_id FROM journal_transactions WHERE kind = 'release' AND invoice_id = :i"
            " ORDER BY id", i=invoice_id)]

    def sql(self, statement: str, **params) -> list:
        """Rows of a raw read-only query, for looking at what the journal and the tables hold."""
        with self.database.reader() as session:
            return session.execute(sa.text(statement), params).all()


def commissions(outcome: Outcome) -> list[tuple[str, str, int]]:
    """(partner, kind, signed minor amount) of an outcome's commission lines."""
    return [(line.partner_id, line.kind, line.amount_minor) for line in outcome.commissions]
