"""Fixtures shared by the integration tests: a journal with one accrual, and a partner enrolled for payouts."""

import pytest

from ledger import accounts as chart
from ledger import journal, partners, plans


@pytest.fixture
def booked(database):
    """A journal holding one balanced accrual (so both accounts exist), and its raw engine."""
    with database.transaction() as session:
        journal.post(session, [journal.transfer("accrual", chart.EXPENSE_COMMISSION, chart.pending("northwind"),
                                                "USD", 100, effective_at_us=5, idempotency_key="a1")])
    return database


@pytest.fixture
def enrolled(database):
    """northwind on a plan with a USD 50.00 minimum payout."""
    with database.transaction() as session:
        plans.create_plan(session, "standard", "Standard", {
            "rates": [{"from_month": 1, "rate": "0.20"}], "duration_months": None, "hold_days": 30,
            "min_payout": [{"amount": "50.00", "currency": "USD"}], "negative_balance": "carry_forward"})
        partners.create_partner(session, "northwind", "Northwind", "msp", "standard")
    return database


@pytest.fixture
def written_before_salts(monkeypatch):
    """Post as the code before migration 0028 did, with no `salt` column and a chain hash without
    one: for tests that write books at an older revision of the schema, then migrate them."""
    header_row = journal._header_row
    monkeypatch.setattr(journal, "_HEADER_COLUMNS", tuple(c for c in journal._HEADER_COLUMNS if c != "salt"))
    monkeypatch.setattr(journal, "_header_row", lambda *args: header_row(*args)[:-1])
    monkeypatch.setattr(journal, "new_salt", lambda: None)
