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
from tests.integration.test_earnings_name_their_event import count
from tests.integration.test_migrations import code_changed_by
from tests.integration.test_periods_payouts_database import at
from tests.integration.test_reinstatements_and_payouts_held import restoring
from tests.integration.test_tamper_evidence import problems, unlisted_events

UNSTORED = "FOREIGN KEY constraint failed|fk_revenue_events_due_event_id_revenue_events"
DUE = "revenue_events_due"


def store(connection, event_id: str, invoice_id: str, customer_id: str = "acme") -> None:
    """A payment of `invoice_id`, as billing sends it, posted (a commission names it)."""
    program.insert_event(connection, revenue.RevenueEvent(event_id, "invoice_paid", customer_id, invoice_id, "USD",
                                                          7_500_000, at("2026-01-26")))


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
@pytest.mark.parametrize("event_id", ["e-9", "e1"])
def test_a_replace_takes_no_listed_posting_off_the_list_on_sqlite(disputed, event_id):
    """A REPLACE deletes the row it meets past the delete guard on a connection whose
    `recursive_triggers` is off (the sqlite3 shell's): it meets only the same row, or none."""
    def then(connection):
        connection.exec_driver_sql("PRAGMA recursive_triggers = OFF")
        restoring("accrual", None, "e-9", invoice_id="inv-9")(connection)
        [(listed,)] = connection.exec_driver_sql(f"SELECT transaction_id FROM {DUE}").all()
        connection.exec_driver_sql(f"INSERT OR REPLACE INTO {DUE} (event_id, transaction_id)"
                                   f" VALUES ('{event_id}', {listed})")
        assert ("e-9", listed) in connection.exec_driver_sql(f"SELECT event_id, transaction_id FROM {DUE}").all()
    try:
        refused(disputed, then, UNSTORED)
    finally:
        with disputed.engine.connect() as connection:  # the pool's connection as the service has it
            connection.exec_driver_sql("PRAGMA recursive_triggers = ON")
    assert count(disputed, DUE) == 0


def next_id(connection) -> int:
    return connection.exec_driver_sql("SELECT max(id) FROM journal_transactions").scalar() + 1


def test_a_row_taken_ahead_holds_no_posting_back(disputed):
    """A row a writer adds of a stored event, at the id the journal gives next: keyed by the posting
    alone, it had refused the posting of every payment billing sent, as long as it stood."""
    with disputed.engine.begin() as connection:
        taken = next_id(connection)
        connection.exec_driver_sql(f"INSERT INTO {DUE} (event_id, transaction_id) VALUES ('e1', {taken})")
    with disputed.transaction() as session:
        [result] = revenue.ingest(session, [program.paid("e5", "acme", "inv-5", 30_000, "2026-01-27")])
    assert not isinstance(result, revenue.Refusal)
    with disputed.engine.connect() as connection:
        first = connection.exec_driver_sql("SELECT min(id) FROM journal_transactions WHERE event_id = 'e5'").scalar()
    assert first == taken  # the id the row had taken ahead
    with disputed.engine.begin() as connection:  # it holds nothing back, and goes with a delete
        assert connection.exec_driver_sql(f"SELECT event_id, transaction_id FROM {DUE}").all() == [("e1", taken)]
        connection.exec_driver_sql(f"DELETE FROM {DUE}")
    assert count(disputed, DUE) == 0


def test_verify_names_a_posting_naming_an_event_never_stored_written_past_the_rule(disputed):
    with unlisted_events(disputed) as session:
        forged = restoring("accrual", None, "made-up", invoice_id="inv-9")(session.connection())
    found = problems(disputed)
    assert {transaction_id for transaction_id, code in found if code == "event_missing"} == {forged}


def test_0065_goes_down_to_0064s_guards_as_they_were(empty_url):
    changed, postgres = code_changed_by(empty_url, "0064", "0065")
    triggers = {f"trigger trg_{name}" for name in ("journal_transactions_event_due", "revenue_events_clears_due",
                                                     f"{DUE}_met", f"{DUE}_no_update")}
    if postgres:
        expected = triggers | {f"trigger trg_{DUE}_no_truncate"} | {
            f"function {DUE}_{name}()" for name in ("added", "cleared", "met", "no_update")}
    else:
        expected = triggers
    assert changed == expected, changed
