"""What a reinstatement restores, where a payout's money goes and when a posting was recorded, held
for a writer that goes around Python (migration 0058) and named by `revshare verify` in rows
written past the database's rules: a commission naming another is a won dispute's, restoring a
commission of its partner, kind and invoice; a payout moves its amount from its partner's
available account to payouts in transit; and no posting is recorded past the database's clock.
Each refusal has a control beside it that the same rule accepts."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from ledger import accounts as chart
from ledger.db import database_now_us
from tests.integration.test_database_guards import head_hash, insert_header, insert_line, refused
from tests.integration.test_database_rules import PAYOUT, RUN, accepted, raw, won_dispute
from tests.integration.test_periods_payouts_database import at
from tests.integration.test_tamper_evidence import problems, unlisted_events, without_trigger

REINSTATEMENT = "a commission naming another restores, for a won dispute of its invoice"
NAMED = "an event a reinstatement of a commission names is a won dispute"
PAYOUT_ACCOUNTS = "a payout moves its amount from the available account of its partner to payouts in transit"


def root(database, partner_id: str, invoice_id: str) -> int:
    with database.engine.connect() as connection:
        return connection.exec_driver_sql(
            "SELECT id FROM journal_transactions WHERE kind IN ('accrual', 'override') AND accrual_id IS NULL"
            f" AND partner_id = '{partner_id}' AND invoice_id = '{invoice_id}'").scalar_one()


def restoring(kind: str, accrual_id: int | None, event_id: str, *, partner_id: str = "northwind",
              invoice_id: str = "inv-1", customer_id: str = "acme"):
    """A commission of 15,000.00 USD of `partner_id` naming `accrual_id`, as a won dispute's
    reinstatement names the commission it restores (None: a root commission), written by raw SQL."""
    def post(connection):
        ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
        transaction_id = connection.exec_driver_sql("SELECT max(id) FROM journal_transactions").scalar() + 1
        instant = at("2026-01-26")
        insert_line(connection, transaction_id, ids[chart.EXPENSE_COMMISSION], "D", 1_500_000, at=instant)
        insert_line(connection, transaction_id, ids[chart.pending(partner_id)], "C", 1_500_000, at=instant)
        insert_header(connection, transaction_id, head_hash(connection), key=f"raw-{transaction_id}", at=instant,
                      recorded=instant, kind=kind, partner_id=partner_id, invoice_id=invoice_id,
                      customer_id=customer_id, accrual_id=accrual_id, event_id=event_id)
        return transaction_id
    return post


def test_the_books_of_a_won_dispute_verify_clean(disputed):
    with disputed.engine.connect() as connection:
        restored = connection.exec_driver_sql(
            "SELECT kind, partner_id, event_id FROM journal_transactions WHERE accrual_id IS NOT NULL"
            " AND kind IN ('accrual', 'override') ORDER BY id").all()
    assert restored == [("accrual", "northwind", "e3"), ("override", "globex", "e3")]
    assert problems(disputed) == set()


@pytest.mark.parametrize("case", ["for_a_payment", "another_partners", "another_invoices", "of_another_kind"])
def test_a_reinstatement_is_a_won_disputes_restoring_its_partners_commission_of_its_invoice(disputed, case):
    """The first is a second commission of a paid invoice (for a CPA, a second bounty of its
    customer) that nothing re-derived: verify said ok, and the next payout run paid it."""
    northwinds = root(disputed, "northwind", "inv-1")
    post = {"for_a_payment": restoring("accrual", northwinds, "e1"),
            "another_partners": restoring("override", root(disputed, "globex", "inv-1"), "e3"),
            "another_invoices": restoring("accrual", root(disputed, "northwind", "inv-2"), "e3"),
            "of_another_kind": restoring("override", northwinds, "e3")}[case]
    refused(disputed, post, REINSTATEMENT)
    accepted(disputed, restoring("accrual", northwinds, "e3"))  # what the dispute restores, verify re-derives


def test_an_event_named_by_a_reinstatement_before_it_is_stored_is_a_won_dispute(disputed):
    """Python writes a posting's header before the event it names: the event's rule reads the
    reinstatements naming it as it comes."""
    reinstatement = restoring("accrual", root(disputed, "northwind", "inv-1"), "e5")
    refund = ("INSERT INTO revenue_events (id, type, customer_id, invoice_id, currency, amount_minor, occurred_at_us,"
              " recorded_at_us, request_hash, status) VALUES ('e5', :type, 'acme', 'inv-1', 'USD', 1000, :at, :at,"
              " '" + "a" * 64 + "', 'posted')")

    def then(event):  # the reinstatement, then its event, in one transaction (migration 0065)
        def post(connection):
            reinstatement(connection)
            event(connection)
        return post
    refused(disputed, then(raw(refund, type="refund", at=at("2026-01-26"))), NAMED)
    accepted(disputed, then(lambda connection: won_dispute(connection, "e5", "acme", "inv-1", at("2026-01-26"))))


def test_a_reinstatement_whose_dispute_never_comes_is_named_by_verify(disputed):
    """The database refuses by the commit a posting naming an event never stored (migration 0065):
    written past that rule, the reinstatement stands alone, and verify names it twice."""
    northwinds = root(disputed, "northwind", "inv-1")
    with unlisted_events(disputed) as session:
        forged = restoring("accrual", northwinds, "never-sent")(session.connection())
    found = problems(disputed)
    assert {(forged, "event_missing"), (forged, "reinstatement_unlike_dispute")} <= found


def test_verify_names_a_reinstatement_written_for_a_payment_and_re_derives_one_for_a_dispute(disputed):
    northwinds = root(disputed, "northwind", "inv-1")
    with without_trigger(disputed, "journal_transactions", "trg_journal_transactions_reinstates_for_a_dispute") as session:
        forged = restoring("accrual", northwinds, "e1")(session.connection())
    found = problems(disputed)
    assert (forged, "reinstatement_unlike_dispute") in found
    assert "clawback_unlike_rules" not in {code for _, code in found}
    with disputed.engine.begin() as connection:  # the database's rules take it: what the dispute restores is verify's
        restoring("accrual", northwinds, "e3")(connection)
        disputes_first = connection.exec_driver_sql(
            "SELECT min(id) FROM journal_transactions WHERE event_id = 'e3'").scalar_one()
    found = problems(disputed)
    assert (disputes_first, "clawback_unlike_rules") in found  # an event is named by its first posting
    assert {(transaction_id, code) for transaction_id, code in found
            if code == "reinstatement_unlike_dispute"} == {(forged, "reinstatement_unlike_dispute")}


def raw_payout(debit: str, credit: str, run_id: str = "raw-run"):
    """A payout of northwind's of 25.00 USD from `debit` to `credit`, written by raw SQL with its record."""
    def post(connection):
        ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
        transaction_id = connection.exec_driver_sql("SELECT max(id) FROM journal_transactions").scalar() + 1
        insert_line(connection, transaction_id, ids[debit], "D", 2_500, at=at("2026-03-05"))
        insert_line(connection, transaction_id, ids[credit], "C", 2_500, at=at("2026-03-05"))
        insert_header(connection, transaction_id, head_hash(connection), key=f"raw-payout-{transaction_id}",
                      at=at("2026-03-05"), kind="payout", partner_id="northwind", recorded=at("2026-03-05"))
        raw(PAYOUT.replace("'raw-run'", ":run"), run=run_id, amount=2_500, t=transaction_id)(connection)
        return transaction_id
    return post


@pytest.fixture
def paying(disputed):
    with disputed.transaction() as session:
        chart.account_ids(session, [chart.available("northwind"), chart.PAYOUTS_IN_TRANSIT, chart.CASH])
    for run_id in ("raw-run", "raw-run-2"):
        accepted(disputed, raw(RUN, id=run_id, at=at("2026-03-06") + len(run_id)))
    return disputed


@pytest.mark.parametrize(("debit", "credit"), [
    (chart.pending("northwind"), chart.CASH),  # held money, straight to cash
    (chart.pending("northwind"), chart.PAYOUTS_IN_TRANSIT),
    (chart.available("northwind"), chart.CASH),
])
def test_a_payout_moves_its_partners_available_money_to_payouts_in_transit(paying, debit, credit):
    refused(paying, raw_payout(debit, credit), PAYOUT_ACCOUNTS)
    with without_trigger(paying, "payouts", "trg_payouts_on_its_accounts") as session:
        forged = raw_payout(debit, credit)(session.connection())
    accepted(paying, raw_payout(chart.available("northwind"), chart.PAYOUTS_IN_TRANSIT, "raw-run-2"))
    assert [transaction_id for transaction_id, code in sorted(problems(paying)) if code == "payout_misposted"] == [forged]


def test_verify_names_a_posting_recorded_a_day_past_the_database_clock(disputed):
    """The database holds a posting's instant to its recorded instant, which the writer gives: an
    adjustment recorded and dated half a year ahead passed every rule, and verify said ok. One by a
    server whose clock runs hours ahead is the service's, and not named."""
    with disputed.transaction() as session:
        now = database_now_us(session)
    ahead = now + 183 * 86_400 * 1_000_000

    def adjustment(at_us: int):
        def post(connection):
            ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
            if chart.EXPENSE_ADJUSTMENT not in ids:
                connection.execute(sa.text("INSERT INTO accounts (name, type, normal_side) VALUES (:n, 'expense', 'D')"),
                                   dict(n=chart.EXPENSE_ADJUSTMENT))
                ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
            transaction_id = connection.exec_driver_sql("SELECT max(id) FROM journal_transactions").scalar() + 1
            insert_line(connection, transaction_id, ids[chart.EXPENSE_ADJUSTMENT], "D", 100, at=at_us)
            insert_line(connection, transaction_id, ids[chart.available("northwind")], "C", 100, at=at_us)
            insert_header(connection, transaction_id, head_hash(connection), key=f"raw-{transaction_id}", at=at_us,
                          recorded=at_us, kind="adjustment", memo="goodwill")
            return transaction_id
        return post
    with disputed.transaction() as session:
        chart.account_ids(session, [chart.available("northwind")])
    with disputed.engine.begin() as connection:
        within = adjustment(now + 23 * 3_600 * 1_000_000)(connection)
        forged = adjustment(ahead)(connection)
    found = {(transaction_id, code) for transaction_id, code in problems(disputed) if code == "recorded_ahead"}
    assert found == {(forged, "recorded_ahead")} and within != forged

