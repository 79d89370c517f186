"""The database holds the partner program's invariants even when Python is bypassed with raw SQL:
a customer's CPA is claimed once, an invoice is paid once, the hierarchy is at most five deep with
consistent depths, and the program's facts are append-only."""

import pytest
import sqlalchemy as sa

from tests.scenarios.books import Books

EVENT = ("INSERT INTO revenue_events (id, type, customer_id, invoice_id, currency, amount_minor, occurred_at_us, "
         "recorded_at_us, request_hash, status, first_eligible_customer_id) "
         "VALUES (:id, :type, 'acme', :invoice, 'USD', 100, 1, 1, :hash, 'posted', :claim)")
PARTNER = ("INSERT INTO partners (id, name, type, parent_id, parent_depth, depth, created_at_us) "
           "VALUES (:id, :id, 'affiliate', :parent, :parent_depth, :depth, 1)")


@pytest.fixture
def books(database) -> Books:
    books = Books(database)
    books.plan("msp", "0.20")
    books.partner("level1", "msp")
    for level in range(2, 6):
        books.partner(f"level{level}", "msp", parent=f"level{level - 1}")
    books.attribute("acme", "level5", "2026-01-01")
    books.paid("acme", "inv-1", "100.00", "2026-01-10")
    return books


def refused(books: Books, statement: str, match: str, **params) -> None:
    with pytest.raises(sa.exc.DBAPIError, match=match), books.database.engine.begin() as connection:
        connection.execute(sa.text(statement), params)


def accepted(books: Books, statement: str, **params) -> None:
    with books.database.engine.begin() as connection:
        connection.execute(sa.text(statement), params)


def test_the_customers_cpa_claim_is_made_by_the_first_eligible_invoice(books):
    assert books.sql("SELECT first_eligible_customer_id FROM revenue_events")[0][0] == "acme"


def test_a_second_row_claiming_the_same_customers_cpa_is_refused(books):
    refused(books, EVENT, "first_eligible_customer_id|UNIQUE|unique",
            id="raw-1", type="invoice_paid", invoice="inv-2", hash="h" * 64, claim="acme")
    accepted(books, EVENT, id="raw-2", type="invoice_paid", invoice="inv-2", hash="h" * 64, claim=None)


def test_a_second_invoice_paid_row_for_the_same_invoice_is_refused(books):
    refused(books, EVENT, "uq_revenue_events_paid_invoice|UNIQUE|unique",
            id="raw-1", type="invoice_paid", invoice="inv-1", hash="h" * 64, claim=None)
    accepted(books, EVENT, id="raw-2", type="refund", invoice="inv-1", hash="h" * 64, claim=None)


def test_a_partner_at_depth_six_is_refused(books):
    refused(books, PARTNER, "depth", id="level6", parent="level5", parent_depth=5, depth=6)


def test_a_partner_whose_parent_depth_is_not_one_less_is_refused(books):
    refused(books, PARTNER, "parent_depth|foreign key|FOREIGN KEY",
            id="liar", parent="level2", parent_depth=2, depth=4)
    refused(books, PARTNER, "fk_partners_parent_partners|FOREIGN KEY",
            id="liar", parent="level2", parent_depth=3, depth=4)  # level2 is at depth 2, not 3
    accepted(books, PARTNER, id="honest", parent="level2", parent_depth=2, depth=3)


APPEND_ONLY_VIOLATIONS = [
    "UPDATE revenue_events SET amount_minor = 1",
    "DELETE FROM revenue_events",
    "UPDATE attributions SET partner_id = 'level1'",
    "DELETE FROM attributions",
    "UPDATE plan_versions SET terms = '{}'",
    "DELETE FROM plan_versions",
    "UPDATE partners SET depth = depth",
    "DELETE FROM partners WHERE id = 'level5'",
    "UPDATE partner_statuses SET status = 'terminated'",
    "UPDATE partner_plans SET plan_id = plan_id",
]


def test_the_program_tables_refuse_update_and_delete(books):
    for statement in APPEND_ONLY_VIOLATIONS:
        refused(books, statement, "append-only")
    assert books.sql("SELECT count(*), min(amount_minor) FROM revenue_events")[0] == (1, 10_000)
