"""A root commission or a clawback is of the revenue event it names, and a queued hold's piece names
an invoice, for a writer that goes around Python (migration 0062), and `revshare verify` names a
posting written past the first rule. Each refusal has a control beside it that the same rule
accepts."""

from __future__ import annotations

import pytest

from ledger import accounts as chart
from ledger import journal, revenue
from tests import program
from tests.integration.test_database_guards import refused
from tests.integration.test_database_rules import accepted
from tests.integration.test_migrations import code_changed_by
from tests.integration.test_periods_payouts_database import at
from tests.integration.test_reinstatements_and_payouts_held import restoring
from tests.integration.test_tamper_evidence import problems, without_trigger

HEADER = "a commission or clawback names the invoice and customer of its event"
EVENT = "the commissions and clawbacks naming an event name its invoice and customer"
HOLD = "a queued hold names an accrual and matures when it does, an accrual of an invoice"


def commission(event_id: str, *, invoice_id: str = "inv-1", customer_id: str = "acme"):
    """A root override of globex's naming `event_id`, written by raw SQL."""
    return restoring("override", None, event_id, partner_id="globex", invoice_id=invoice_id, customer_id=customer_id)


@pytest.mark.parametrize("unlike", [{"invoice_id": "inv-2"}, {"customer_id": "globex-corp"}, {"event_id": "e2"}],
                         ids=["another invoice", "another customer", "a chargeback's"])
def test_a_commission_naming_a_stored_event_is_of_its_payment(disputed, unlike):
    """e1 is acme's payment of inv-1; e2 its chargeback. An override of e1 naming inv-2 was left
    standing by a refund of the whole of inv-1, and paid."""
    refused(disputed, commission(**{"event_id": "e1", **unlike}), HEADER)
    accepted(disputed, commission("e1"))  # the control: of e1's invoice and customer


def wrong(kind: str, **columns):
    """`journal.transfer` with each `kind` posting's `columns` replaced: Python posting as a writer
    around it would."""
    transfer = journal.transfer

    def replaced(posting_kind, *args, **kwargs):
        return transfer(posting_kind, *args, **(kwargs | columns if posting_kind == kind else kwargs))
    return replaced


@pytest.mark.parametrize("kind, columns, events", [
    ("override", {"invoice_id": "inv-9"}, [program.paid("e9", "acme", "inv-5", 10_000, "2026-01-26")]),
    ("accrual", {"customer_id": "globex-corp"}, [program.paid("e9", "acme", "inv-5", 10_000, "2026-01-26")]),
    ("clawback", {"customer_id": "globex-corp"}, [program.paid("e9", "acme", "inv-1", 10_000, "2026-01-27",
                                                               kind="refund")]),
], ids=["override of another invoice", "accrual of another customer", "clawback of another customer"])
def test_an_event_is_refused_when_a_posting_naming_it_is_not_of_it(disputed, monkeypatch, kind, columns, events):
    """Python writes a posting's header before the event it names: the event's rule reads the
    postings naming it as it comes."""
    with disputed.engine.connect() as connection:
        before = connection.exec_driver_sql("SELECT count(*) FROM journal_transactions").scalar()
    with monkeypatch.context() as patch:
        patch.setattr(journal, "transfer", wrong(kind, **columns))
        refused_ingest = pytest.raises(Exception, match=EVENT)
        with refused_ingest, disputed.transaction() as session:
            revenue.ingest(session, events)
    with disputed.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM journal_transactions").scalar() == before
    with disputed.transaction() as session:  # the control: the same events as Python posts them
        [outcome] = revenue.ingest(session, events)
    assert outcome.status == "posted" and kind in {line.kind for line in outcome.commissions}
    assert problems(disputed) == set()


def test_a_hold_is_queued_for_a_piece_of_an_invoice(disputed, monkeypatch):
    """The queue reads its pieces by invoice: a hold of a piece with none stopped every payout run
    and every release of holds, for every partner. Such a piece is itself refused since migration
    0064 (and by Python): it is written here past both, as before them."""
    matures = at("2026-03-01")
    monkeypatch.setattr(journal, "OF_AN_EVENT", ())

    def piece_and_hold(invoice_id):
        def write(connection):
            from sqlalchemy.orm import Session
            if invoice_id is None:  # in this transaction only: a DROP rolls back with it
                on = " ON journal_transactions" if connection.dialect.name == "postgresql" else ""
                connection.exec_driver_sql(f"DROP TRIGGER {EVENT_RULE[connection.dialect.name]}{on}")
            [posted] = journal.post(Session(bind=connection), [journal.transfer(
                "accrual", chart.EXPENSE_COMMISSION, chart.pending("northwind"), "USD", 100,
                effective_at_us=at("2026-01-26"), idempotency_key=f"piece-{invoice_id}", partner_id="northwind",
                customer_id="acme", invoice_id=invoice_id, event_id="e-7", matures_at_us=matures)])
            connection.exec_driver_sql(f"INSERT INTO open_holds (accrual_id, matures_at_us) VALUES ({posted.id},"
                                       f" {matures})")
        return write
    program.made_up("e-7")  # the piece's payment, stored by the commit that takes it
    refused(disputed, piece_and_hold(None), HOLD)
    accepted(disputed, piece_and_hold("inv-7"))


# The trigger of migration 0064's rule, by engine (on PostgreSQL a clause of 0062's statement function).
EVENT_RULE = {"sqlite": "trg_journal_transactions_name_their_event",
              "postgresql": "trg_journal_transactions_of_their_event"}


def test_verify_names_a_commission_written_past_the_rule(disputed):
    with without_trigger(disputed, "journal_transactions", "trg_journal_transactions_of_their_event") as session:
        forged = commission("e1", invoice_id="inv-2")(session.connection())
    assert (forged, "earning_unlike_event") in problems(disputed)
    assert {transaction_id for transaction_id, code in problems(disputed) if code == "earning_unlike_event"} == {forged}


def test_0062_goes_down_to_0061s_guards_as_they_were(empty_url):
    changed, postgres = code_changed_by(empty_url, "0061", "0062")
    assert changed == ({"function revenue_events_as_posted()", "function open_holds_of_a_piece()",
                        "function journal_transactions_of_their_event()",
                        "trigger trg_journal_transactions_of_their_event"} if postgres
                       else {"trigger trg_journal_transactions_of_their_event",
                             "trigger trg_revenue_events_of_its_postings",
                             "trigger trg_open_holds_of_a_piece"}), changed
