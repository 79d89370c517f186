"""A journal transaction naming a revenue event names one stored by its commit (migration 0065).
An accrual of 15,000.00 USD written around the service naming a made-up event (or an empty
string) had been accepted and paid, `verify` naming it only after the money had gone. Each refusal
has a control beside it: the same posting, its event stored in the same transaction after it, as
`ledger.revenue` writes them."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from ledger import revenue
from tests import program
from tests.integration.test_database_guards import refused
from tests.integration.test_migrations import code_changed_by
from tests.integration.test_periods_payouts_database import at
from tests.integration.test_reinstatements_and_payouts_held import restoring
from tests.integration.test_tamper_evidence import problems, without_trigger

UNSTORED = "FOREIGN KEY constraint failed|fk_revenue_events_due_event_id_revenue_events"
DUE = "revenue_events_due"
LISTED = {"sqlite": "trg_journal_transactions_event_due", "postgresql": "trg_journal_transactions_event_due"}


def count(database, table: str) -> int:
    with database.engine.connect() as connection:
        return connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()


def store(connection, event_id: str, invoice_id: str, customer_id: str = "acme") -> None:
    """A payment of `invoice_id`, as billing sends it, posted (a commission names it)."""
    event = revenue.RevenueEvent(event_id, "invoice_paid", customer_id, invoice_id, "USD", 7_500_000,
                                 at("2026-01-26"))
    connection.execute(sa.text(
        "INSERT INTO revenue_events (id, type, customer_id, invoice_id, currency, amount_minor, occurred_at_us,"
        " recorded_at_us, request_hash, status) VALUES (:id, :type, :customer, :invoice, :currency, :amount, :at,"
        " :at, :hash, 'posted')"),
        {"id": event.id, "type": event.type, "customer": customer_id, "invoice": invoice_id, "currency": "USD",
         "amount": event.amount_minor, "at": event.occurred_at_us, "hash": revenue.request_hash(event)})


def with_its_event(post, event_id: str, invoice_id: str):
    """`post`, then its event stored, in one transaction."""
    def both(connection):
        post(connection)
        store(connection, event_id, invoice_id)
    return both


@pytest.mark.parametrize("kind", ["accrual", "cpa", "override"])
@pytest.mark.parametrize("event_id", ["made-up", ""])
def test_the_database_refuses_a_commission_naming_an_event_never_stored(disputed, kind, event_id):
    before = count(disputed, "journal_transactions")
    refused(disputed, restoring(kind, None, event_id, invoice_id="inv-9"), UNSTORED)
    assert count(disputed, "journal_transactions") == before and count(disputed, DUE) == 0
    with disputed.engine.begin() as connection:  # the control: its event stored after it
        with_its_event(restoring(kind, None, event_id, invoice_id="inv-9"), event_id, "inv-9")(connection)
    assert count(disputed, "journal_transactions") == before + 1 and count(disputed, DUE) == 0


def test_a_commission_of_an_event_stored_in_an_earlier_transaction_is_not_listed(disputed):
    with disputed.engine.begin() as connection:
        with_its_event(restoring("accrual", None, "e-9", invoice_id="inv-9"), "e-9", "inv-9")(connection)
    with disputed.engine.begin() as connection:  # an override of the same payment, later
        restoring("override", None, "e-9", partner_id="globex", invoice_id="inv-9")(connection)
        assert connection.exec_driver_sql(f"SELECT count(*) FROM {DUE}").scalar() == 0
    assert count(disputed, DUE) == 0


def test_an_event_stored_in_a_later_transaction_comes_too_late(disputed):
    before = count(disputed, "journal_transactions")
    refused(disputed, restoring("accrual", None, "e-9", invoice_id="inv-9"), UNSTORED)
    with pytest.raises(sa.exc.DBAPIError):  # nothing names it now: a posted event is refused
        with disputed.engine.begin() as connection:
            store(connection, "e-9", "inv-9")
    assert count(disputed, "journal_transactions") == before and count(disputed, "revenue_events") == 4


def test_the_service_leaves_the_list_empty(disputed):
    with disputed.engine.connect() as connection:
        named = connection.exec_driver_sql("SELECT count(DISTINCT event_id) FROM journal_transactions").scalar()
    assert named == 4 and count(disputed, DUE) == 0 and problems(disputed) == set()


@pytest.mark.parametrize("statement", [f"DELETE FROM {DUE}", f"UPDATE {DUE} SET event_id = 'e1'"])
def test_a_listed_posting_leaves_the_list_only_with_its_event(disputed, statement):
    def then(connection):
        restoring("accrual", None, "e-9", invoice_id="inv-9")(connection)
        assert connection.exec_driver_sql(f"SELECT event_id FROM {DUE}").all() == [("e-9",)]
        connection.exec_driver_sql(statement)
    before = count(disputed, "journal_transactions")
    refused(disputed, then, "a posting leaves the list once the event it names is stored|rows are never updated")
    assert count(disputed, "journal_transactions") == before and count(disputed, DUE) == 0


def test_postgresql_refuses_a_truncate_of_the_list(postgres_database):
    refused(postgres_database, lambda connection: connection.exec_driver_sql(f"TRUNCATE {DUE}"), "append-only")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_refuses_a_replace_of_a_listed_posting(disputed):
    """A REPLACE would take a listed posting off the list past the delete guard on a connection
    whose `recursive_triggers` is off (the sqlite3 shell's): refused before it deletes."""
    def then(connection):
        restoring("accrual", None, "e-9", invoice_id="inv-9")(connection)
        [(listed,)] = connection.exec_driver_sql(f"SELECT transaction_id FROM {DUE}").all()
        connection.exec_driver_sql(f"INSERT OR REPLACE INTO {DUE} (transaction_id, event_id) VALUES ({listed}, 'e1')")
    refused(disputed, then, "its unique key revenue_events_due.transaction_id is taken")


def next_id(connection) -> int:
    return connection.exec_driver_sql("SELECT max(id) FROM journal_transactions").scalar() + 1


@pytest.mark.parametrize("row", [
    lambda connection: (next_id(connection), "e1"),  # a stored event, at the id the journal gives next
    lambda connection: (next_id(connection), "made-up"),  # no posting of that id
    lambda connection: (1, "e1"),  # a posting of that id, naming a stored event
    lambda connection: (1, "made-up"),  # a posting of that id, naming another event
], ids=["next-id", "no-posting", "stored", "another-event"])
def test_a_row_of_the_list_is_of_a_posting_naming_an_event_not_stored_yet(disputed, row):
    """A row planted at the id the journal gives next took that id from the posting of the next
    payment, which was refused, and the next, as long as the row stood."""
    refused(disputed, lambda connection: connection.execute(
        sa.text(f"INSERT INTO {DUE} (transaction_id, event_id) VALUES (:id, :event)"),
        dict(zip(("id", "event"), row(connection)))), "a row is of the posting of its id, naming an event not stored")
    with disputed.transaction() as session:  # the control: billing's next payment is posted
        [result] = revenue.ingest(session, [program.paid("e5", "acme", "inv-5", 30_000, "2026-01-27")])
    assert not isinstance(result, revenue.Refusal) and count(disputed, DUE) == 0


def test_verify_names_a_posting_naming_an_event_never_stored_written_past_the_rule(disputed):
    with without_trigger(disputed, "journal_transactions", LISTED[disputed.engine.dialect.name]) as session:
        forged = restoring("accrual", None, "made-up", invoice_id="inv-9")(session.connection())
    found = problems(disputed)
    assert {transaction_id for transaction_id, code in found if code == "event_missing"} == {forged}


def test_0065_goes_down_to_0064s_guards_as_they_were(empty_url):
    changed, postgres = code_changed_by(empty_url, "0064", "0065")
    triggers = {f"trigger trg_{name}" for name in ("journal_transactions_event_due", "revenue_events_clears_due",
                                                     f"{DUE}_met", f"{DUE}_no_update", f"{DUE}_of_a_posting")}
    if postgres:
        expected = triggers | {f"trigger trg_{DUE}_no_truncate"} | {
            f"function {DUE}_{name}()" for name in ("added", "cleared", "met", "no_update", "of_a_posting")}
    else:
        expected = triggers | {f"trigger trg_{DUE}_no_replace", f"index ix_{DUE}_event_id"}
    assert changed == expected, changed
