"""Every commission and clawback names its revenue event, invoice and customer (migration 0064, and
Python's `journal.check_draft`), and `revshare verify` names one written past the rule. An accrual
of 50,000.00 USD written around the service with none had passed every rule and `verify`, and was
paid. Each refusal has a control beside it that the same rule accepts."""

from __future__ import annotations

import pytest

from ledger import accounts as chart
from ledger import journal
from ledger.errors import InvalidInput
from tests import program
from tests.integration.test_database_guards import head_hash, insert_header, insert_line, refused
from tests.integration.test_database_rules import accepted
from tests.integration.test_migrations import code_changed_by
from tests.integration.test_periods_payouts_database import at
from tests.integration.test_postings_of_their_events import EVENT_RULE
from tests.integration.test_reinstatements_and_payouts_held import restoring
from tests.integration.test_tamper_evidence import problems, without_trigger

MESSAGE = "a commission or clawback names its revenue event, invoice and customer"
# A payment of acme's inv-9, stored by the commit of the control that names it (migration 0065).
LINKS = {"event_id": "e-9", "invoice_id": "inv-9", "customer_id": "acme"}
MISSING = ["event_id", "invoice_id", "customer_id"]


def count(database, table: str) -> int:
    with database.engine.connect() as connection:
        return connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()


@pytest.mark.parametrize("missing", MISSING)
@pytest.mark.parametrize("kind", ["accrual", "cpa", "override"])
def test_python_posts_no_commission_naming_no_event_invoice_or_customer(disputed, kind, missing):
    def commission(**links):
        return journal.transfer(kind, chart.EXPENSE_COMMISSION, chart.pending("northwind"), "USD", 100,
                                effective_at_us=at("2026-01-26"), idempotency_key=f"{kind}-{missing}",
                                partner_id="northwind", **links)
    program.made_up(LINKS["event_id"])
    before = count(disputed, "journal_transactions")
    with pytest.raises(InvalidInput, match=MESSAGE) as error, disputed.transaction() as session:
        journal.post(session, [commission(**(LINKS | {missing: None}))])
    assert set(error.value.fields) == {missing} and count(disputed, "journal_transactions") == before
    with disputed.transaction() as session:  # the control: naming all three
        journal.post(session, [commission(**LINKS)])
    assert count(disputed, "journal_transactions") == before + 1


@pytest.mark.parametrize("missing", MISSING)
def test_python_posts_no_clawback_naming_no_event_invoice_or_customer(disputed, missing):
    with pytest.raises(InvalidInput, match=MESSAGE), disputed.transaction() as session:
        journal.post(session, [journal.transfer(
            "clawback", chart.pending("northwind"), chart.EXPENSE_COMMISSION, "USD", 100,
            effective_at_us=at("2026-01-26"), idempotency_key="clawback", partner_id="northwind", accrual_id=1,
            **(LINKS | {missing: None}))])


@pytest.mark.parametrize("missing", MISSING)
@pytest.mark.parametrize("kind", ["accrual", "cpa", "override"])
def test_the_database_refuses_a_commission_naming_no_event_invoice_or_customer(disputed, kind, missing):
    program.made_up(LINKS["event_id"])
    links = LINKS | {missing: None}
    refused(disputed, restoring(kind, None, links["event_id"], invoice_id=links["invoice_id"],
                                customer_id=links["customer_id"]), MESSAGE)
    accepted(disputed, restoring(kind, None, **LINKS))  # the control: naming all three


def clawback(links: dict):
    """A clawback of 1.00 USD from northwind's accrual of globex-corp's payment e4 (inv-2), naming
    a refund of it, by raw SQL (the refund stored by the commit that posts it, as billing's would be)."""
    def post(connection):
        ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
        piece = connection.exec_driver_sql("SELECT id FROM journal_transactions WHERE event_id = 'e4'"
                                           " AND kind = 'accrual'").scalar_one()
        transaction_id = connection.exec_driver_sql("SELECT max(id) FROM journal_transactions").scalar() + 1
        instant = at("2026-01-26")
        insert_line(connection, transaction_id, ids[chart.pending("northwind")], "D", 100, at=instant)
        insert_line(connection, transaction_id, ids[chart.EXPENSE_COMMISSION], "C", 100, at=instant)
        insert_header(connection, transaction_id, head_hash(connection), key=f"raw-{transaction_id}", at=instant,
                      recorded=instant, kind="clawback", accrual_id=piece, **links)
    return post


@pytest.mark.parametrize("missing", MISSING)
def test_the_database_refuses_a_clawback_naming_no_event_invoice_or_customer(disputed, missing):
    links = {"event_id": "refund-of-e4", "invoice_id": "inv-2", "customer_id": "globex-corp"}
    program.made_up(links["event_id"])
    refused(disputed, clawback(links | {missing: None}), MESSAGE)
    accepted(disputed, clawback(links))  # the control: naming all three, its piece's invoice


def test_verify_names_a_commission_written_past_the_rule(disputed):
    assert problems(disputed) == set()  # the service's books: every posting names its event
    with without_trigger(disputed, "journal_transactions", EVENT_RULE[disputed.engine.dialect.name]) as session:
        forged = restoring("accrual", None, None, invoice_id=None, customer_id=None)(session.connection())
    found = problems(disputed)
    assert (forged, "earning_without_event") in found
    assert {transaction_id for transaction_id, code in found if code == "earning_without_event"} == {forged}


def test_0064_goes_down_to_0063s_guards_as_they_were(empty_url):
    changed, postgres = code_changed_by(empty_url, "0063", "0064")
    assert changed == ({"function journal_transactions_of_their_event()"} if postgres
                       else {"trigger trg_journal_transactions_name_their_event"}), changed
