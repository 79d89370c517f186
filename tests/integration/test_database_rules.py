"""The rules Python enforces hold in the database too, for a writer that goes around Python with raw
SQL (migrations 0018 to 0031): reversals, values, program facts, period closes, payouts, keys, the
queue of holds, a customer's CPA bounty, an adjustment's instant and accounts, what is posted against
a piece, a resolved payout's postings, what must follow in the same transaction, a transaction's
partner enrolled, a payout run outside closed periods, the shapes of names, ids and reasons. Each
refusal has a control
beside it that the same guard accepts, so that no guard passes by refusing everything."""

from __future__ import annotations

import contextlib
import time
from datetime import date

import pytest
import sqlalchemy as sa

from ledger import accounts as chart
from ledger import balances
from ledger import holds as holds_module
from ledger import customers, journal, partners, payouts, periods, plans, revenue, reversals
from ledger.db import JOURNAL_LOCK_KEY, database_now_us
from ledger.errors import Conflict, InvalidInput
from ledger.instants import now_us, period_bounds_us
from ledger.keys import create_key
from ledger.schema import GENESIS_HASH, period_snapshots
from ledger.verify import verify
from tests.api.conftest import STANDARD_TERMS, enroll
from tests.integration.conftest import chain_due, earning_rule_off, second_writer_behind_first, with_status_and_plan
from tests.integration.test_database_guards import PENDING, account_ids, head_hash, insert_header, insert_line, refused
from tests import program
from tests.scenarios.books import Books
from tests.integration.test_periods_payouts_database import at, new_payout


def accepted(database, statements) -> None:
    with database.engine.begin() as connection:
        statements(connection)
        chain_due(connection)  # facts written past Python are chained as the service chains its own


@contextlib.contextmanager
def posting_before_0047(monkeypatch):
    """Python posting as it did before migration 0047, holding no commission or write-off to its
    accounts (an accrual naming no partner is posted): for books written at an older revision."""
    with monkeypatch.context() as patch:
        patch.setattr(journal, "_PLACED", {})
        yield


@contextlib.contextmanager
def written_before_0047(database):
    """A connection on which a commission is written as before migration 0047, on any accounts and
    lines: the rows that revision and 0048 leave as they are, which the rules of earlier revisions
    still read. The rule is off, then made again, in the connection's transaction."""
    with database.engine.begin() as connection:
        made = earning_rule_off(connection)
        yield connection
        connection.exec_driver_sql(made)


# ---- reversals ----

def raw_transfer(connection, transaction_id: int, debit: int, credit: int, amount: int = 100, **header) -> None:
    insert_line(connection, transaction_id, debit, "D", amount)
    insert_line(connection, transaction_id, credit, "C", amount)
    insert_header(connection, transaction_id, head_hash(connection), key=f"raw-{transaction_id}", **header)


def won_dispute(connection, event_id: str, customer_id: str, invoice_id: str, at_us: int = 5, *,
                paid: str | None = None) -> None:
    """Store a won dispute `event_id` of `customer_id`'s `invoice_id`, after the chargeback it wins
    (`{event_id}-chargeback`, which no clawback names), each of 10.25 USD at `at_us`: the event a
    reinstatement names, stored by its commit (migration 0065). The invoice is paid at or before
    `at_us`; with `paid`, by that payment, stored first (a commission names it)."""
    events = [revenue.RevenueEvent(f"{event_id}-chargeback", "chargeback", customer_id, invoice_id, "USD", 1025, at_us),
              revenue.RevenueEvent(event_id, "chargeback_reversed", customer_id, invoice_id, "USD", 1025, at_us)]
    if paid is not None:
        events.insert(0, revenue.RevenueEvent(paid, "invoice_paid", customer_id, invoice_id, "USD", 1025, at_us))
    for event in events:
        program.insert_event(connection, event, "no_commission" if event.type == "chargeback" else "posted")


def test_a_reversal_names_what_it_reverses(booked):
    def unlinked(connection):
        expense, pending = account_ids(connection)
        raw_transfer(connection, 2, pending, expense, kind="reversal")
    refused(booked, unlinked, "a reversal names the transaction it reverses")

    def linked(connection):
        expense, pending = account_ids(connection)
        raw_transfer(connection, 2, pending, expense, kind="reversal", reverses_id=1)
    accepted(booked, linked)


def test_a_reversal_undoes_its_original_exactly(booked):
    def same_direction(connection):
        expense, pending = account_ids(connection)
        raw_transfer(connection, 2, expense, pending, kind="reversal", reverses_id=1)
    refused(booked, same_direction, "a reversal undoes its original exactly")

    def other_amount(connection):
        expense, pending = account_ids(connection)
        raw_transfer(connection, 2, pending, expense, amount=99, kind="reversal", reverses_id=1)
    refused(booked, other_amount, "a reversal undoes its original exactly")


def test_a_reversal_undoes_its_original_in_its_currency(booked):
    def undone_in(currency: str):  # each account's amounts undone
        def post(connection):
            expense, pending = account_ids(connection)
            insert_line(connection, 2, pending, "D", 100, currency=currency)
            insert_line(connection, 2, expense, "C", 100, currency=currency)
            insert_header(connection, 2, head_hash(connection), key="raw-2", kind="reversal", reverses_id=1)
        return post
    refused(booked, undone_in("EUR"), "a reversal undoes its original exactly")
    accepted(booked, undone_in("USD"))


def test_a_moved_reversal_is_asked_for_no_earlier_than_its_original(booked):
    """A reversal moved forward out of a closed period is held to the instant it was asked for."""
    def reversal(original: int):
        def post(connection):
            expense, pending = account_ids(connection)
            insert_line(connection, 2, pending, "D", 100, at=10)
            insert_line(connection, 2, expense, "C", 100, at=10)
            insert_header(connection, 2, head_hash(connection), key="raw-2", at=10, kind="reversal", reverses_id=1,
                          original=original)
        return post
    refused(booked, reversal(4), "a reversal is not effective before the transaction it reverses")
    accepted(booked, reversal(5))


def test_only_a_reversal_names_what_it_reverses(booked):
    def mirror(kind: str):
        def post(connection):
            expense, pending = account_ids(connection)
            raw_transfer(connection, 2, pending, expense, kind=kind, reverses_id=1)
        return post
    refused(booked, mirror("adjustment"), "(?i)check")
    accepted(booked, mirror("reversal"))


def test_a_reversal_is_not_reversed(booked):
    with booked.transaction() as session:
        reversal_id = journal.reverse(session, 1, reason="once").id

    def reversal_of_the_reversal(connection):
        expense, pending = account_ids(connection)
        raw_transfer(connection, reversal_id + 1, expense, pending, kind="reversal", reverses_id=reversal_id)
    refused(booked, reversal_of_the_reversal, "a reversal cannot itself be reversed")


@pytest.mark.parametrize("original", [6, 5])
def test_a_moved_posting_was_asked_for_before_where_it_stands(booked, original):
    """Python sets `original_effective_at_us` only when it moves a posting forward out of a closed
    period; a later one would pass for a reversal "asked for" after its original."""
    def moved_back(connection):
        expense, pending = account_ids(connection)
        raw_transfer(connection, 2, expense, pending, at=5, original=original)
    refused(booked, moved_back, "a moved posting was asked for before the instant it is posted at")

    def moved_forward(connection):
        expense, pending = account_ids(connection)
        raw_transfer(connection, 2, expense, pending, at=5, original=4)
    accepted(booked, moved_forward)


# ---- values ----

@pytest.mark.parametrize("currency", ["usd", "US1", "U D"])
def test_a_currency_is_three_capital_letters(booked, currency):
    def odd_currency(connection):
        expense, pending = account_ids(connection)
        insert_line(connection, 2, expense, "D", 100, currency=currency)
        insert_line(connection, 2, pending, "C", 100, currency=currency)
        insert_header(connection, 2, head_hash(connection))
    refused(booked, odd_currency, "currenc")


KEPT = "a currency is one the books keep"


@pytest.mark.parametrize("currency", ["ZZZ", "XAU", "XTS"])
def test_a_lines_currency_is_one_the_books_keep(booked, currency):
    """Migration 0059: an ISO 4217 code with a minor unit, not three capital letters alone. A line
    of `ZZZ` stopped every payout run, and the trial balance could not be read."""
    def in_currency(code: str):
        def post(connection):
            expense, pending = account_ids(connection)
            insert_line(connection, 2, expense, "D", 100, currency=code)
            insert_line(connection, 2, pending, "C", 100, currency=code)
            insert_header(connection, 2, head_hash(connection))
        return post
    refused(booked, in_currency(currency), KEPT)
    accepted(booked, in_currency("JPY"))  # a currency new to both accounts


@pytest.mark.parametrize("currency", ["ZZZ", "XAU", "XTS"])
def test_a_revenue_events_currency_is_one_the_books_keep(database, currency):
    refused(database, raw(EVENT, currency=currency, occurred=5, recorded=5, h="a" * 64), KEPT)
    accepted(database, raw(EVENT, currency="CLF", occurred=5, recorded=5, h="a" * 64))


@pytest.mark.parametrize("statement", ["INSERT INTO currencies (code) VALUES ('ZZZ')",
                                       "UPDATE currencies SET code = 'ZZZ' WHERE code = 'USD'",
                                       "DELETE FROM currencies WHERE code = 'XTS' OR code = 'USD'"])
def test_the_currencies_the_books_keep_change_by_a_migration_only(database, statement):
    refused(database, lambda connection: connection.exec_driver_sql(statement), "change by a migration only")
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM currencies WHERE code IN ('USD', 'ZZZ')").scalar() == 1


@pytest.mark.parametrize("column, value", [("amount_minor", 0.5), ("amount_minor", "abc"),
                                           ("effective_at_us", 5.5), ("effective_at_us", "x")])
def test_sqlite_keeps_amounts_and_instants_integers(sqlite_database, column, value):
    """SQLite columns take any value whatever their type; PostgreSQL's bigint refuses these itself."""
    database = sqlite_database
    with database.transaction() as session:
        program.enrol(session, "northwind")  # its accruals name a partner of the program
        journal.post(session, [journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 100,
                                                effective_at_us=5, idempotency_key="a1", partner_id="northwind",
                                                **program.of_an_event("a1", "northwind"))])

    def not_an_integer(connection):
        expense, pending = account_ids(connection)
        values = {"amount_minor": 100, "effective_at_us": 5, column: value}
        for account, side in ((expense, "D"), (pending, "C")):
            connection.execute(sa.text(
                "INSERT INTO journal_lines (transaction_id, account_id, currency, side, amount_minor, effective_at_us)"
                " VALUES (2, :a, 'USD', :s, :m, :e)"), dict(a=account, s=side, m=values["amount_minor"],
                                                           e=values["effective_at_us"]))
        insert_header(connection, 2, head_hash(connection))
    refused(database, not_an_integer, "amounts and instants are integers")


def test_sqlite_keeps_revenue_event_amounts_integers(sqlite_database):
    statement = ("INSERT INTO revenue_events (id, type, customer_id, invoice_id, currency, amount_minor,"
                 " occurred_at_us, recorded_at_us, request_hash, status) VALUES"
                 " ('e1', 'invoice_paid', 'c1', 'i1', 'USD', :amount, 5, 5, :h, 'unattributed')")
    refused(sqlite_database, lambda c: c.execute(sa.text(statement), dict(amount=10.25, h="a" * 64)),
            "revenue_events: amounts and instants are integers")
    accepted(sqlite_database, lambda c: c.execute(sa.text(statement), dict(amount=1025, h="a" * 64)))


HEADER = ("INSERT INTO journal_transactions (id, kind, effective_at_us, original_effective_at_us, recorded_at_us,"
          " matures_at_us, idempotency_key, request_hash, prev_hash, hash, partner_id, customer_id, invoice_id,"
          " event_id) VALUES (2, 'accrual', 5, :original, :recorded, :matures, 'raw-2', :h, :prev, :h, 'northwind',"
          " 'northwind-customer', 'raw-2-invoice', 'raw-2-event')")


@pytest.mark.parametrize("column, value", [("recorded", "x"), ("recorded", 1.5), ("original", 4.5),
                                           ("matures", "soon"), ("matures", 7.5)])
def test_sqlite_keeps_a_headers_instants_integers(sqlite_database, column, value):
    database = sqlite_database
    with database.transaction() as session:
        program.enrol(session, "northwind")  # its accruals name a partner of the program
        journal.post(session, [journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 100,
                                                effective_at_us=5, idempotency_key="a1", partner_id="northwind",
                                                **program.of_an_event("a1", "northwind"))])
    program.made_up("raw-2-event")  # the event HEADER names, stored by the commit that takes it

    def header(**values):
        def post(connection):
            expense, pending = account_ids(connection)
            insert_line(connection, 2, expense, "D", 100)
            insert_line(connection, 2, pending, "C", 100)
            connection.execute(sa.text(HEADER), dict(dict(original=4, recorded=5, matures=7), **values,
                                                     h="f" * 64, prev=head_hash(connection)))
        return post
    refused(database, header(**{column: value}), "journal_transactions: instants and links are integers")
    accepted(database, header())


EVENT = ("INSERT INTO revenue_events (id, type, customer_id, invoice_id, currency, amount_minor, occurred_at_us,"
         " recorded_at_us, request_hash, status) VALUES ('e1', 'invoice_paid', 'c1', 'i1', :currency, 1025, :occurred,"
         " :recorded, :h, 'unattributed')")


@pytest.mark.parametrize("currency", ["usd", "US1", "U D"])
def test_a_revenue_events_currency_is_three_capital_letters(database, currency):
    refused(database, raw(EVENT, currency=currency, occurred=5, recorded=5, h="a" * 64), "currenc")
    accepted(database, raw(EVENT, currency="USD", occurred=5, recorded=5, h="a" * 64))


@pytest.mark.parametrize("column", ["occurred", "recorded"])
def test_sqlite_keeps_revenue_event_instants_integers(sqlite_database, column):
    values = dict(currency="USD", occurred=5, recorded=5, h="a" * 64)
    refused(sqlite_database, raw(EVENT, **{**values, column: 5.5}), "revenue_events: amounts and instants are integers")
    accepted(sqlite_database, raw(EVENT, **values))


def accrued_in_january(database) -> None:
    """An accrual of 1.00 USD to northwind on January 20th, through the journal alone."""
    with database.transaction() as session:
        program.enrol(session, "northwind")
        journal.post(session, [journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 100,
                                                effective_at_us=at("2026-01-20"), idempotency_key="a1",
                                                partner_id="northwind", **program.of_an_event("a1", "northwind"))])


def snapshot_then_close(debit, currency):
    """January's snapshot, its row of `expense:commission` of `debit` in `currency` and its row of
    northwind's pending account as `accrued_in_january` left it, then January's close over it: with
    100 USD, the journal's own (migration 0063)."""
    def write(connection):
        expense, pending = account_ids(connection)
        for account_id, debit_minor, credit_minor, in_currency in ((expense, debit, 0, currency),
                                                                  (pending, 0, 100, "USD")):
            connection.execute(sa.text("INSERT INTO period_snapshots (period, account_id, currency, debit_minor,"
                                       " credit_minor) VALUES ('2026-01', :a, :c, :d, :k)"),
                               dict(a=account_id, c=in_currency, d=debit_minor, k=credit_minor))
        raw_close("2026-01", snapshot=False)(connection)
    return write


@pytest.mark.parametrize("debit, currency", [(1.5, "USD"), ("lots", "USD"), (100, "usd")])
def test_sqlite_keeps_snapshot_totals_integers_and_currencies_capital(sqlite_database, debit, currency):
    booked = sqlite_database
    accrued_in_january(booked)
    refused(booked, snapshot_then_close(debit, currency), "period_snapshots: totals are integers")
    accepted(booked, snapshot_then_close(100, "USD"))


@pytest.mark.parametrize("currency", ["us$", "usd", "U$D"])
def test_a_snapshot_rows_currency_is_three_capital_letters(database, currency):
    """Held on SQLite by migration 0018's rule over a snapshot row's values, on PostgreSQL since 0044
    (a close's transaction could carry `us$` into every balance read from its snapshot)."""
    accrued_in_january(database)
    refused(database, snapshot_then_close(100, currency), "period_snapshots: (totals are integers and |a )currenc")
    accepted(database, snapshot_then_close(100, "USD"))


# ---- program facts ----

STATUS = ("INSERT INTO partner_statuses (partner_id, status, effective_at_us, recorded_at_us)"
          " VALUES (:p, :s, :at, :at)")
PLAN = ("INSERT INTO partner_plans (partner_id, plan_id, effective_from_us, recorded_at_us)"
        " VALUES (:p, 'standard', :at, :at)")
ATTRIBUTION = ("INSERT INTO attributions (customer_id, partner_id, effective_from_us, source, recorded_at_us)"
               " VALUES ('p1-customer', 'p2', :at, 'manual', :at)")
VERSION = ("INSERT INTO plan_versions (plan_id, version, effective_from_us, terms, created_at_us) VALUES"
           " ('standard', (SELECT max(version) FROM plan_versions WHERE plan_id = 'standard') + :step, :at,"
           " :terms, :at)")
JAN_2026_US = at("2026-01-01")
MAR_2026_US = at("2026-03-01")


def raw(statement: str, **params):
    return lambda connection: connection.execute(sa.text(statement), params)


def current_terms(database) -> str:
    with database.engine.connect() as connection:
        return connection.exec_driver_sql("SELECT terms FROM plan_versions ORDER BY version DESC LIMIT 1").scalar()


def test_termination_is_final_in_the_database(database):
    enroll(database)
    with database.transaction() as session:
        partners.set_status(session, "p1", "terminated", effective_at_us=MAR_2026_US)
    refused(database, raw(STATUS, p="p1", s="active", at=MAR_2026_US + 1), "none follows a termination")
    accepted(database, raw(STATUS, p="p2", s="suspended", at=MAR_2026_US + 1))


def test_a_status_starts_no_earlier_than_the_latest(database):
    enroll(database)
    with database.transaction() as session:
        partners.set_status(session, "p1", "suspended", effective_at_us=MAR_2026_US)
    refused(database, raw(STATUS, p="p1", s="active", at=MAR_2026_US - 1), "a status starts no earlier")
    accepted(database, raw(STATUS, p="p1", s="active", at=MAR_2026_US))


def test_a_plan_and_an_attribution_start_after_the_latest(database):
    enroll(database)
    with database.transaction() as session:
        partners.change_plan(session, "p1", "standard", MAR_2026_US)
    refused(database, raw(PLAN, p="p1", at=MAR_2026_US - 1), "a plan starts after the latest")
    accepted(database, raw(PLAN, p="p1", at=MAR_2026_US + 1))
    refused(database, raw(ATTRIBUTION, at=JAN_2026_US - 1), "an attribution starts after the latest")
    accepted(database, raw(ATTRIBUTION, at=MAR_2026_US))


def test_an_attribution_starts_after_the_latest_of_its_customer_not_of_its_partner(database):
    enroll(database)  # p1-customer to p1 and p2-customer to p2, from 2026-01-01
    with database.transaction() as session:
        customers.attribute(session, "p1-customer", "p2", date(2026, 3, 1), "manual", replace=True)
    feb_2026_us = at("2026-02-01")
    customer_to_p1 = ("INSERT INTO attributions (customer_id, partner_id, effective_from_us, source, recorded_at_us)"
                      " VALUES (:customer, 'p1', :at, 'manual', :at)")
    refused(database, raw(customer_to_p1, customer="p1-customer", at=feb_2026_us),
            "an attribution starts after the latest")
    accepted(database, raw(customer_to_p1, customer="p2-customer", at=feb_2026_us))


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("first, second, match", [
    (raw(STATUS, p="p1", s="terminated", at=MAR_2026_US), raw(STATUS, p="p1", s="active", at=MAR_2026_US + 1),
     "none follows a termination"),
    (raw(PLAN, p="p1", at=MAR_2026_US + 1), raw(PLAN, p="p1", at=MAR_2026_US), "a plan starts after the latest"),
    (raw(ATTRIBUTION, at=MAR_2026_US + 1), raw(ATTRIBUTION, at=MAR_2026_US), "an attribution starts after the latest"),
], ids=["status after a termination", "plan change", "attribution"])
def test_two_raw_writers_of_a_fact_take_their_turns_and_the_second_meets_the_first(database, first, second, match):
    """PostgreSQL: two sessions sending their own SQL, which take no program lock, each insert a fact
    of one partner or customer. Each was checked against the facts committed before either: both
    committed, a partner active again after its termination, plan changes and attributions out of the
    order of their starts. The second now waits for the first (migration 0043) and meets its rule."""
    enroll(database)
    error = second_writer_behind_first(database, lambda session: chained(first, session.connection()),
                                       lambda session: chained(second, session.connection()))
    assert isinstance(error, sa.exc.DBAPIError) and match in str(error), error


def chained(statements, connection) -> None:
    statements(connection)
    chain_due(connection)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_raw_first_attribution_and_a_posting_of_its_customer_take_their_turns(database):
    """PostgreSQL: a session sending its own SQL records a customer's first attribution while the
    service posts a payment of that customer. It took only the program's lock: the posting read no
    attribution and committed `unattributed`, though one was recorded before it (within the clock skew
    `verify` allows). The attribution now takes the journal's lock too (migration 0046): the posting
    waits, then reads it."""
    enroll(database)

    def first_attribution(session) -> None:
        recorded = journal.now_us()
        session.execute(sa.text("INSERT INTO customers (id, created_at_us) VALUES ('newcomer', :at)"), {"at": recorded})
        session.execute(sa.text("INSERT INTO attributions (customer_id, partner_id, effective_from_us, source,"
                                " recorded_at_us) VALUES ('newcomer', 'p1', :starts, 'manual', :at)"),
                        {"starts": JAN_2026_US, "at": recorded})
        chain_due(session.connection())

    payment = revenue.RevenueEvent("newcomer-paid", "invoice_paid", "newcomer", "newcomer-inv", "USD", 10_000,
                                   MAR_2026_US)
    outcome = second_writer_behind_first(database, first_attribution,
                                         lambda session: revenue.ingest(session, [payment]))
    assert [result.status for result in outcome] == ["posted"], outcome
    with database.reader() as session:
        assert verify(session).ok


def test_an_attribution_starts_before_its_partners_termination(database):
    """Migration 0025: an attribution from the termination on could never earn."""
    enroll(database)
    with database.transaction() as session:
        partners.set_status(session, "p2", "terminated", effective_at_us=MAR_2026_US)
    refused(database, raw(ATTRIBUTION, at=MAR_2026_US), "an attribution starts before its partner is terminated")
    refused(database, raw(ATTRIBUTION, at=MAR_2026_US + 1), "an attribution starts before its partner is terminated")
    accepted(database, raw(ATTRIBUTION, at=MAR_2026_US - 1))


def test_a_plan_change_starts_no_earlier_than_its_plans_first_version_though_an_enrolment_may(database):
    """Migration 0025: in between, the partner would have no plan; its first plan row (the
    enrolment, from the beginning of time) is exempt."""
    enroll(database)
    with database.transaction() as session:
        plans.create_plan(session, "spring", "Spring", STANDARD_TERMS, MAR_2026_US)
    change = ("INSERT INTO partner_plans (partner_id, plan_id, effective_from_us, recorded_at_us)"
              " VALUES ('p1', 'spring', :at, :at)")
    refused(database, raw(change, at=MAR_2026_US - 1), "a plan change starts no earlier than the first version")
    accepted(database, raw(change, at=MAR_2026_US))
    with database.transaction() as session:  # enrolled from the beginning of time, long before spring starts
        partners.create_partner(session, "p3", "Partner p3", "msp", "spring")


def test_plan_versions_are_numbered_and_dated_within_their_own_plan(database):
    enroll(database)
    terms = current_terms(database)
    with database.transaction() as session:
        plans.add_version(session, "standard", STANDARD_TERMS, MAR_2026_US)
    other = ("INSERT INTO plan_versions (plan_id, version, effective_from_us, terms, created_at_us)"
             " VALUES ('other', :version, :at, :terms, :at)")
    accepted(database, raw("INSERT INTO plans (id, name, created_at_us) VALUES ('other', 'Other', 1)"))
    refused(database, raw(other, version=2, at=JAN_2026_US, terms=terms), "versions are numbered in turn")
    accepted(database, raw(other, version=1, at=JAN_2026_US, terms=terms))  # before the latest of another plan


@pytest.mark.parametrize("step, effective_from, match", [
    (2, MAR_2026_US + 1, "versions are numbered in turn"),  # a number skipped
    (1, MAR_2026_US - 1, "each starting after the latest"),  # before version 2
])
def test_plan_versions_are_numbered_in_turn_and_start_after_the_latest(database, step, effective_from, match):
    enroll(database)
    terms = current_terms(database)
    with database.transaction() as session:
        plans.add_version(session, "standard", STANDARD_TERMS, MAR_2026_US)
    refused(database, raw(VERSION, step=step, at=effective_from, terms=terms), match)
    accepted(database, raw(VERSION, step=1, at=MAR_2026_US + 1, terms=terms))


@pytest.mark.parametrize("terms", ["not json at all", "[1, 2]", '"text"'])
def test_plan_terms_are_a_json_object(database, terms):
    enroll(database)
    refused(database, raw(VERSION, step=1, at=MAR_2026_US, terms=terms), "terms are a JSON object")


# ---- period closes ----

# The program's chain head as it stands, which a close records (migration 0053).
PROGRAM_HEAD = ("(SELECT coalesce(max(id), 0) FROM program_chain), coalesce((SELECT hash FROM program_chain"
                " ORDER BY id DESC LIMIT 1), '" + GENESIS_HASH + "')")
CLOSE = ("INSERT INTO period_closes (period, starts_at_us, ends_at_us, closed_at_us, transaction_count,"
         " chain_head_id, chain_head_hash, prev_close_hash, close_hash, program_head_id, program_head_hash)"
         " VALUES (:period, :starts, :ends, :ends, 0, 0, :genesis, :prev, :hash, " + PROGRAM_HEAD + ")")


def journal_snapshot(connection, period: str, ends_us: int) -> None:
    """Write the journal's snapshot of `period`, as a close writes it before itself: the latest
    close's snapshot and the lines since, up to the period's end (`ledger.balances.sums`), which
    migration 0063 holds a close to."""
    from sqlalchemy.orm import Session

    rows = balances.sums(Session(bind=connection), before_us=ends_us)
    if rows:
        connection.execute(sa.insert(period_snapshots), [
            {"period": period, "account_id": account_id, "currency": currency, "debit_minor": debit,
             "credit_minor": credit} for (account_id, currency), (debit, credit) in sorted(rows.items())])


def raw_close(period: str, prev: str = GENESIS_HASH, bounds: tuple[int, int] | None = None, *, snapshot: bool = True):
    """A close of `period` written by raw SQL, after the journal's snapshot of it (`snapshot`)."""
    starts, ends = bounds or period_bounds_us(period)
    close = raw(CLOSE, period=period, starts=starts, ends=ends, genesis=GENESIS_HASH, prev=prev,
                hash=f"{period.replace('-', '')}".ljust(64, "c"))

    def write(connection):
        if snapshot:
            journal_snapshot(connection, period, ends)
        close(connection)
    return write


def next_month() -> str:
    today = date.today()
    return f"{today.year + today.month // 12}-{today.month % 12 + 1:02d}"


def test_a_close_is_labelled_by_its_month_in_full(database):
    refused(database, raw_close("2026-1", bounds=period_bounds_us("2026-01")), "covers the calendar month")
    accepted(database, raw_close("2026-01"))


def test_a_period_is_closed_once_it_has_ended_by_the_database_clock(database):
    # Migration 0034's rule on `closed_at` refuses it too, whichever trigger comes first.
    refused(database, raw_close(next_month()), "a period is closed once it has ended|a close is dated after its period")
    accepted(database, raw_close("2026-01"))


def test_a_close_covers_the_month_it_names(database):
    starts, _ = period_bounds_us("2026-02")
    refused(database, raw_close("2026-02", bounds=(starts, starts + 90 * 86_400_000_000)), "covers the calendar month")
    refused(database, raw_close("2026-02", bounds=period_bounds_us("2026-03")), "covers the calendar month")


def test_a_close_chains_the_previous_one(database):
    with database.transaction() as session:
        january = periods.close_period(session, "2026-01")
    refused(database, raw_close("2026-03", prev=january.close_hash), "starts where the previous one ended")
    refused(database, raw_close("2026-02", prev="d" * 64), "starts where the previous one ended")
    accepted(database, raw_close("2026-02", prev=january.close_hash))


def test_a_close_chains_the_latest_of_several(database):
    with database.transaction() as session:
        periods.close_period(session, "2026-01")
        february = periods.close_period(session, "2026-02")
    accepted(database, raw_close("2026-03", prev=february.close_hash))


def test_nothing_is_added_to_a_closed_period_s_snapshot(booked):
    with booked.transaction() as session:
        periods.close_period(session, "1970-01", now_us=at("2026-01-01"))

    def added(connection):
        expense, _ = account_ids(connection)
        connection.execute(sa.text("INSERT INTO period_snapshots (period, account_id, currency, debit_minor,"
                                   " credit_minor) VALUES ('1970-01', :a, 'GBP', 100000000, 0)"), dict(a=expense))
    refused(booked, added, "the snapshot of a closed period is complete")


CLOSE_AT = CLOSE.replace(":ends, 0,", ":closed, 0,")


@pytest.mark.parametrize("closed", ["before_the_end", "ahead"])
def test_a_close_is_dated_after_its_period_ends_and_not_in_the_future(database, closed):
    """`closed_at` is what `verify` reads as the close's time (migration 0034): not before its
    period's end, and not ahead of the database's clock by more than the five minutes' skew."""
    _, ends = period_bounds_us("2026-01")
    now = journal.now_us()
    closed_at = {"before_the_end": ends - 1, "ahead": now + 3_600_000_000}[closed]

    def close(closed_us):
        return raw(CLOSE_AT, period="2026-01", starts=period_bounds_us("2026-01")[0], ends=ends, closed=closed_us,
                   genesis=GENESIS_HASH, prev=GENESIS_HASH, hash="c" * 64)
    refused(database, close(closed_at), "a close is dated after its period ends and not in the future")
    accepted(database, close(now + 60_000_000))  # within the skew


A_MILLISECOND_US = 1_000


def test_the_database_clock_the_rules_read_is_read_to_the_millisecond(database):
    """SQLite's clock is read to the millisecond it keeps (migration 0045), not the second: read to
    the second it lagged by up to one, and its rules refused what was within their bounds (the
    service reads the same clock, `database_now_us`, to answer their 409s)."""
    before = journal.now_us()
    with database.reader() as session:
        read = database_now_us(session)
    assert before - A_MILLISECOND_US < read <= journal.now_us()
    # A close and a payout run dated a millisecond inside the skew ahead, at any instant of the second.
    now = journal.now_us()
    starts, ends = period_bounds_us("2026-01")
    accepted(database, raw(CLOSE_AT, period="2026-01", starts=starts, ends=ends,
                           closed=now + CLOCK_SKEW_US - A_MILLISECOND_US, genesis=GENESIS_HASH, prev=GENESIS_HASH,
                           hash="c" * 64))
    accepted(database, raw(RUN, id="inside-the-skew", at=journal.now_us() + CLOCK_SKEW_US - A_MILLISECOND_US))


@pytest.mark.parametrize("closed_at", ["soon", 1.5e15])
def test_sqlite_keeps_a_close_time_an_integer(sqlite_database, closed_at):
    starts, ends = period_bounds_us("2026-01")

    def close(closed_us):
        return raw(CLOSE_AT, period="2026-01", starts=starts, ends=ends, closed=closed_us, genesis=GENESIS_HASH,
                   prev=GENESIS_HASH, hash="c" * 64)
    refused(sqlite_database, close(closed_at), "a close is dated after its period ends")
    accepted(sqlite_database, close(ends))


# ---- revenue event statuses (migration 0034) ----

PAYMENT = ("INSERT INTO revenue_events (id, type, customer_id, invoice_id, currency, amount_minor, occurred_at_us,"
           " recorded_at_us, request_hash, status) VALUES (:id, :type, :customer, :invoice, 'USD', 1025, 5, 5,"
           " '" + "a" * 64 + "', :status)")


def event(event_id: str, status: str, *, type: str = "invoice_paid", customer: str = "acme", invoice: str = "i1"):
    return raw(PAYMENT, id=event_id, type=type, customer=customer, invoice=invoice, status=status)


def attributed(database, *customer_ids: str) -> None:
    with database.transaction() as session:
        program.enrol(session, "northwind")
        for customer_id in customer_ids:
            customers.attribute(session, customer_id, "northwind", date(1970, 1, 1), "manual")


def test_an_event_is_posted_when_a_transaction_names_it_and_only_then(booked):
    """The row an event leaves says whether it posted: a row saying it posted nothing, for an event
    billing has not sent yet, made billing's event a replay that posts nothing."""
    attributed(booked, "acme")

    def posted_with(*events) -> None:  # the events after the postings naming them, in one transaction
        with booked.transaction() as session:
            journal.post(session, [
                journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 100, effective_at_us=5,
                                 idempotency_key="e1:accrual", invoice_id="i1", event_id="e1", partner_id="northwind",
                                 customer_id="acme"),
                # It does not name its event as a commission of its invoice would: an adjustment (an
                # accrual of another invoice is refused with any status since migration 0062).
                journal.transfer("adjustment", chart.EXPENSE_ADJUSTMENT, PENDING, "USD", 1, effective_at_us=5,
                                 idempotency_key="e2:goodwill", partner_id="northwind", memo="goodwill",
                                 invoice_id="i2", event_id="e2")])
            for stored in events:
                stored(session.connection())
            chain_due(session.connection())
    message = "an event is posted when a commission or clawback of its invoice names it, and only then"
    for wrong in (event("e1", "no_commission"), event("e2", "posted", invoice="i2")):
        with pytest.raises(sa.exc.DBAPIError, match=message):
            posted_with(wrong)
    refused(booked, event("e4", "posted", invoice="i4"), message)
    posted_with(event("e1", "posted"), event("e2", "no_commission", invoice="i2"))


def test_a_payment_is_unattributed_when_its_customer_has_no_attribution_and_only_then(database):
    attributed(database, "acme")
    message = "a payment is unattributed when its customer has no attribution, and only then"
    refused(database, event("e1", "unattributed"), message)
    refused(database, event("e2", "no_commission", customer="globex", invoice="i2"), message)
    accepted(database, event("e1", "no_commission"))
    accepted(database, event("e2", "unattributed", customer="globex", invoice="i2"))


def test_an_undoing_event_is_unattributed_when_its_payment_is_and_only_then(database):
    attributed(database, "acme")
    accepted(database, event("paid-acme", "no_commission", invoice="i1"))
    accepted(database, event("paid-globex", "unattributed", customer="globex", invoice="i2"))
    message = "a refund, chargeback or won dispute is unattributed when its payment is, and only then"
    refused(database, event("r1", "unattributed", type="refund", invoice="i1"), message)
    # globex attributed since its payment: its refund follows the payment, as the service decides it
    attributed(database, "globex")
    refused(database, event("r2", "no_commission", type="refund", customer="globex", invoice="i2"), message)
    accepted(database, event("r1", "no_commission", type="refund", invoice="i1"))
    accepted(database, event("r2", "unattributed", type="refund", customer="globex", invoice="i2"))


def test_the_rules_hold_each_event_of_one_statement(database):
    """A batch's events arrive in one statement (PostgreSQL's trigger reads them all at once)."""
    attributed(database, "acme")
    rows = [dict(id="ok", type="invoice_paid", customer="globex", invoice="i2", status="unattributed"),
            dict(id="bad", type="invoice_paid", customer="acme", invoice="i1", status="unattributed")]
    refused(database, lambda connection: connection.execute(sa.text(PAYMENT), rows), "a payment is unattributed")
    accepted(database, lambda connection: connection.execute(sa.text(PAYMENT), rows[:1]))


@pytest.mark.postgres
def test_a_first_attribution_waits_for_the_journal_lock_and_a_replacement_does_not(postgres_database):
    """Postings read the attributions under the journal lock, and the database decides a payment's
    `unattributed` by the attributions as they stand when its row is written: a customer's first
    attribution committed in between would make the database refuse the posting."""
    database = postgres_database
    with database.transaction() as session:
        program.enrol(session, "northwind", "southwind")

    def journal_lock_free() -> bool:
        with database.engine.connect() as other:
            free = other.execute(sa.text("SELECT pg_try_advisory_xact_lock(:key)"),
                                 {"key": JOURNAL_LOCK_KEY}).scalar_one()
            other.rollback()
            return free
    with database.transaction() as session:
        customers.attribute(session, "acme", "northwind", date(2026, 1, 1), "manual")
        first = journal_lock_free()
    with database.transaction() as session:
        customers.attribute(session, "acme", "southwind", date(2026, 2, 1), "manual", replace=True)
        replacement = journal_lock_free()
    assert (first, replacement) == (False, True)


# ---- payouts ----

RUN = "INSERT INTO payout_runs (id, at_us, created_at_us) VALUES (:id, :at, :at)"
PAYOUT = ("INSERT INTO payouts (run_id, partner_id, currency, amount_minor, transaction_id)"
          " VALUES ('raw-run', 'northwind', 'USD', :amount, :t)")
RESOLUTION = ("INSERT INTO payout_resolutions (payout_id, outcome, transaction_id, reason, resolved_at_us)"
              " VALUES (:p, :o, :t, NULL, :at)")


def raw_payout(partner_id: str, amount_minor: int, record: str | None = None, **record_params):
    """A USD `payout` transaction of `partner_id` written by raw SQL, then `record` (an insert into
    `payouts` naming it as `:t`), in one transaction: a payout posting is recorded by the commit
    (migration 0026)."""
    def post(connection):
        ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
        transaction_id = (head_id(connection) or 0) + 1
        insert_line(connection, transaction_id, ids[chart.available(partner_id)], "D", amount_minor,
                    at=at("2026-03-05"))
        insert_line(connection, transaction_id, ids[chart.PAYOUTS_IN_TRANSIT], "C", amount_minor, at=at("2026-03-05"))
        insert_header(connection, transaction_id, head_hash(connection) or GENESIS_HASH, key=f"raw-payout-{transaction_id}",
                      at=at("2026-03-05"), kind="payout", partner_id=partner_id, recorded=at("2026-03-05"))
        if record is not None:
            raw(record, t=transaction_id, **record_params)(connection)
    return post


def test_a_payout_is_its_transaction_partner_and_amount(enrolled):
    with enrolled.transaction() as session:
        payout = new_payout(session, "2026-03-01")
        adjustment_id = payouts.adjust(session, "northwind", "available", 100, "USD", "some",
                                       effective_at_us=at("2026-03-02")).id
    accepted(enrolled, raw(RUN, id="raw-run", at=at("2026-03-06")))
    refused(enrolled, raw(PAYOUT, amount=100, t=adjustment_id), "a payout is its payout transaction")
    refused(enrolled, raw_payout("northwind", 2_500, PAYOUT, amount=2_501), "a payout is its payout transaction")
    accepted(enrolled, raw_payout("northwind", 2_500, PAYOUT, amount=2_500))
    assert payout.amount_minor == 7_500


def test_a_payout_is_its_partners_transaction_in_its_currency(enrolled):
    with enrolled.transaction() as session:
        program.enrol(session, "southwind")
        chart.account_ids(session, [chart.available("southwind"), chart.PAYOUTS_IN_TRANSIT])
    accepted(enrolled, raw(RUN, id="raw-run", at=at("2026-03-06")))
    payout = ("INSERT INTO payouts (run_id, partner_id, currency, amount_minor, transaction_id)"
              " VALUES ('raw-run', :partner, :currency, 2500, :t)")
    refused(enrolled, raw_payout("southwind", 2_500, payout, partner="northwind", currency="USD"),
            "a payout is its payout transaction")
    with enrolled.transaction() as session:
        chart.account_ids(session, [chart.available("northwind")])
    refused(enrolled, raw_payout("northwind", 2_500, payout, partner="northwind", currency="EUR"),
            "a payout is its payout transaction")
    accepted(enrolled, raw_payout("northwind", 2_500, payout, partner="northwind", currency="USD"))


def test_a_payout_posting_is_recorded_by_the_commit(enrolled):
    """Migration 0026: a `payout` transaction without its record in `payouts` does not commit (the
    record names the posting, so it is written after it: the check waits for the commit)."""
    with enrolled.transaction() as session:
        chart.account_ids(session, [chart.available("northwind"), chart.PAYOUTS_IN_TRANSIT])
    accepted(enrolled, raw(RUN, id="raw-run", at=at("2026-03-06")))
    unrecorded = "FOREIGN KEY constraint failed|fk_payout_records_due_transaction_id_payouts"
    refused(enrolled, raw_payout("northwind", 2_500), unrecorded)
    with pytest.raises(sa.exc.DBAPIError, match=unrecorded):
        with enrolled.transaction() as session:  # through the journal, around `payouts`
            journal.post(session, [journal.transfer(
                "payout", chart.available("northwind"), chart.PAYOUTS_IN_TRANSIT, "USD", 2_500,
                effective_at_us=at("2026-03-05"), idempotency_key="raw-payout", partner_id="northwind")])
    accepted(enrolled, raw_payout("northwind", 2_500, PAYOUT, amount=2_500))
    with enrolled.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM payouts").scalar() == 1
        assert connection.exec_driver_sql(
            "SELECT count(*) FROM payout_records_due d JOIN payouts p ON p.transaction_id = d.transaction_id"
        ).scalar() == 1


def test_a_resolution_is_of_the_payouts_partner_and_only_a_failure_is_its_reversal(enrolled):
    """Each posting with its resolution in one transaction: a resolution posting is recorded by the
    commit (migration 0030)."""
    with enrolled.transaction() as session:
        program.enrol(session, "southwind")
        payout = new_payout(session, "2026-03-01")

    def southwinds(session) -> int:
        return journal.post(session, [journal.transfer(
            "payout_settled", chart.PAYOUTS_IN_TRANSIT, chart.CASH, "USD", payout.amount_minor,
            effective_at_us=at("2026-03-02"), idempotency_key="raw-settled-southwind", partner_id="southwind")])[0].id

    def reversal(session) -> int:
        return journal.reverse(session, payout.transaction_id, reason="returned", effective_at_us=at("2026-03-03")).id

    def resolved(outcome: str, posting) -> None:
        with enrolled.transaction() as session:
            session.execute(sa.text(RESOLUTION), dict(p=payout.id, o=outcome, t=posting(session), at=at("2026-03-03")))
    for posting in (southwinds, reversal):
        with pytest.raises(sa.exc.DBAPIError, match="a resolution is the transaction of its outcome"):
            resolved("settled", posting)
    resolved("failed", reversal)


def test_a_resolution_is_the_transaction_of_its_outcome(enrolled):
    with enrolled.transaction() as session:
        payout = new_payout(session, "2026-03-01")
        adjustment_id = payouts.adjust(session, "northwind", "available", 100, "USD", "some",
                                       effective_at_us=at("2026-03-02")).id
    refused(enrolled, raw(RESOLUTION, p=payout.id, o="settled", t=adjustment_id, at=at("2026-03-03")),
            "a resolution is the transaction of its outcome")
    with enrolled.transaction() as session:
        settled = payouts.settle(session, payout.id, at_us=at("2026-03-03"))
    assert settled.status == "settled"


def test_a_settled_or_failed_payout_is_final(enrolled):
    """Migration 0024: the mirror of a payout's posting or of its resolution, once the payout is
    settled or failed, is refused (`journal.reverse` writes the bare mirror, as raw SQL would: the
    money would come back to available while the payout stays settled); a pending payout's posting
    may be reversed, which is its failure."""
    with enrolled.transaction() as session:
        settled = payouts.settle(session, new_payout(session, "2026-03-01").id, at_us=at("2026-03-02"))
        failed = payouts.fail(session, new_payout(session, "2026-03-03", amount_minor=6_000).id,
                              at_us=at("2026-03-04"))
        pending = new_payout(session, "2026-03-05", amount_minor=5_000)
    final = [settled.transaction_id, settled.resolution_transaction_id,
             failed.transaction_id, failed.resolution_transaction_id]
    for transaction_id in final:
        with pytest.raises(sa.exc.DBAPIError, match="a settled or failed payout is final"):
            with enrolled.transaction() as session:
                journal.reverse(session, transaction_id, reason="raw", effective_at_us=at("2026-03-06"))
    with enrolled.transaction() as session:  # with its record, as `ledger.reversals` writes it (migration 0030)
        reversal = journal.reverse(session, pending.transaction_id, reason="returned", effective_at_us=at("2026-03-06"))
        session.execute(sa.text(RESOLUTION), dict(p=pending.id, o="failed", t=reversal.id, at=at("2026-03-06")))
    assert not reversal.replayed


def test_a_moved_resolution_is_asked_for_no_earlier_than_its_payout(enrolled):
    """A settlement moved forward out of a closed period is held to the instant it was asked for."""
    with enrolled.transaction() as session:
        payout = new_payout(session, "2026-03-01")
        chart.account_ids(session, [chart.CASH])

    def settled(asked_for: int):
        def post(connection):
            ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
            transaction_id = head_id(connection) + 1
            insert_line(connection, transaction_id, ids[chart.PAYOUTS_IN_TRANSIT], "D", payout.amount_minor,
                        at=at("2026-03-05"))
            insert_line(connection, transaction_id, ids[chart.CASH], "C", payout.amount_minor, at=at("2026-03-05"))
            insert_header(connection, transaction_id, head_hash(connection), key="raw-settled", at=at("2026-03-05"),
                          kind="payout_settled", partner_id="northwind", original=asked_for,
                          recorded=at("2026-03-05"))
            raw(RESOLUTION, p=payout.id, o="settled", t=transaction_id, at=at("2026-03-05"))(connection)
        return post
    refused(enrolled, settled(at("2026-03-01") - 1), "a payout is not settled or failed before it was made")
    accepted(enrolled, settled(at("2026-03-01")))


def head_id(connection) -> int:
    return connection.exec_driver_sql("SELECT max(id) FROM journal_transactions").scalar_one()


def test_a_payout_run_is_not_earlier_than_the_latest_though_later_than_others(enrolled):
    accepted(enrolled, raw(RUN, id="first", at=at("2026-03-01")))
    accepted(enrolled, raw(RUN, id="third", at=at("2026-03-03")))
    refused(enrolled, raw(RUN, id="second", at=at("2026-03-02")), "must not be earlier than the latest")
    accepted(enrolled, raw(RUN, id="fourth", at=at("2026-03-04")))


def test_a_payout_run_within_the_clock_skew_is_accepted(enrolled):
    now_us = time.time_ns() // 1000
    accepted(enrolled, raw(RUN, id="a-minute-ahead", at=now_us + 60_000_000))


def test_a_payout_run_is_not_dated_in_the_future_by_the_database_clock(enrolled):
    now_us = time.time_ns() // 1000
    refused(enrolled, raw(RUN, id="ahead", at=now_us + 86_400_000_000), "a run is not dated in the future")
    accepted(enrolled, raw(RUN, id="now", at=now_us - 1_000_000))


# ---- keys ----

@pytest.mark.parametrize("statement", ["UPDATE api_keys SET role = 'admin', partner_id = NULL",
                                       "UPDATE idempotency_records SET response_body = '{}'"])
def test_keys_and_stored_responses_are_never_updated(database, statement):
    enroll(database)
    with database.transaction() as session:
        key_id, _ = create_key(session, "partner", "p1")
        session.execute(sa.text("INSERT INTO idempotency_records (api_key_id, key, method, path, request_hash,"
                                " request_body, status_code, response_body, created_at_us)"
                                " VALUES (:k, 'k1', 'POST', '/v1/x', :h, '{}', 201, '{\"a\": 1}', 1)"),
                        dict(k=key_id, h="b" * 64))
    refused(database, raw(statement), "rows are never updated")
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT role FROM api_keys").scalar() == "partner"


def test_a_partner_key_names_a_partner_that_exists(database):
    """`api_keys` has no foreign key to `partners`; a key made for a mistyped id saw nothing (migration 0029)."""
    enroll(database)
    key = ("INSERT INTO api_keys (id, key_hash, role, partner_id, created_at_us)"
           " VALUES (:id, :hash, 'partner', :partner, 1)")
    refused(database, raw(key, id="key_nobody", hash="a" * 64, partner="nobody"),
            "a partner key names a partner that exists")
    accepted(database, raw(key, id="key_p1", hash="b" * 64, partner="p1"))
    accepted(database, raw("INSERT INTO api_keys (id, key_hash, role, partner_id, created_at_us)"
                           " VALUES ('key_finance', :hash, 'finance', NULL, 1)", hash="c" * 64))


# ---- accounts ----

ACCOUNT = "INSERT INTO accounts (name, type, normal_side, partner_id) VALUES (:name, :type, :side, :partner)"


@pytest.mark.parametrize("name, type_, side, partner", [
    ("liability:partner:ghost:bonus", "liability", "C", "ghost"),  # not in the chart
    ("liability:partner:ghost:pending", "liability", "C", "northwind"),  # another partner's
    ("liability:partner:ghost:pending", "asset", "D", "ghost"),  # another type and side
    ("liability:partner:a:b:pending", "liability", "C", "a:b"),  # a partner id with ':'
    ("asset:cash", "asset", "D", "ghost"),  # a partner on a fixed account
    ("expense:commission", "liability", "C", None),
    ("expense:commission", "expense", "C", None),  # the fixed accounts' sides and types, one at a time
    ("asset:cash", "liability", "D", None),
    ("liability:payouts:in_transit", "liability", "D", None),
])
def test_an_account_is_as_the_chart_names_it(database, name, type_, side, partner):
    refused(database, raw(ACCOUNT, name=name, type=type_, side=side, partner=partner),
            "an account is as the chart of accounts names it")


def test_accounts_of_the_chart_are_accepted(database):
    accepted(database, raw(ACCOUNT, name="liability:partner:ghost:pending", type="liability", side="C",
                           partner="ghost"))
    accepted(database, raw(ACCOUNT, name="asset:cash", type="asset", side="D", partner=None))


# ---- the queue of holds (migration 0019) ----

@pytest.fixture
def queued(database):
    """January's three invoices for northwind (under globex): six pieces, each with its hold queued."""
    with database.transaction() as session:
        program.seed(session)
        revenue.ingest(session, program.monthly_events(months=1))
    with database.engine.connect() as connection:
        holds = connection.execute(sa.text("SELECT accrual_id, matures_at_us FROM open_holds ORDER BY accrual_id"))
        return database, holds.all()


def test_a_queued_hold_names_an_accrual_and_matures_when_it_does(queued):
    database, [(accrual_id, matures_us), *_] = queued
    with database.engine.begin() as connection:  # allowed: the release job takes holds off the queue
        connection.exec_driver_sql(f"DELETE FROM open_holds WHERE accrual_id = {accrual_id}")

    def queue(accrual: int, matures: int):
        return lambda connection: connection.exec_driver_sql(
            f"INSERT INTO open_holds (accrual_id, matures_at_us) VALUES ({accrual}, {matures})")
    refused(database, queue(accrual_id, matures_us - 1), "a queued hold names an accrual and matures when it does")
    with database.transaction() as session:
        assert holds_module.release_matured(session, at("2026-03-01")) == 5  # the five still queued
    with database.engine.connect() as connection:
        release_id = connection.exec_driver_sql("SELECT max(id) FROM journal_transactions WHERE kind = 'release'"
                                                ).scalar_one()
    refused(database, queue(release_id, matures_us), "a queued hold names an accrual and matures when it does")
    accepted(database, queue(accrual_id, matures_us))  # as it was queued


def test_a_queued_hold_names_an_earning_transaction_whatever_else_matures(booked):
    with booked.transaction() as session:
        chart.account_ids(session, [chart.EXPENSE_ADJUSTMENT])

    def header(transaction_id: int, kind: str):
        def post(connection):
            ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
            debit = chart.EXPENSE_ADJUSTMENT if kind == "adjustment" else chart.EXPENSE_COMMISSION
            # the accrual names its event and customer as a commission does (migration 0064)
            links = dict(customer=None, event=None) if kind == "adjustment" else dict(
                customer="northwind-customer", event=f"raw-{transaction_id}-event")
            insert_line(connection, transaction_id, ids[debit], "D", 100)
            insert_line(connection, transaction_id, ids[PENDING], "C", 100)
            connection.execute(sa.text(
                "INSERT INTO journal_transactions (id, kind, effective_at_us, recorded_at_us, matures_at_us,"
                " idempotency_key, request_hash, prev_hash, hash, partner_id, memo, invoice_id, customer_id,"
                " event_id) VALUES (:id, :kind, 5, 5, 7, :key, :h, :prev, :h, 'northwind', 'goodwill', 'i1',"
                " :customer, :event)"),
                dict(id=transaction_id, kind=kind, key=f"raw-{transaction_id}", h="f" * 64, prev=head_hash(connection),
                     **links))
        return post
    program.made_up("raw-3-event")  # stored by the commit that takes the accrual
    accepted(booked, header(2, "adjustment"))  # an adjustment that names a maturity all the same
    accepted(booked, header(3, "accrual"))

    def queue(accrual: int):
        return lambda connection: connection.exec_driver_sql(
            f"INSERT INTO open_holds (accrual_id, matures_at_us) VALUES ({accrual}, 7)")
    refused(booked, queue(2), "a queued hold names an accrual and matures when it does")
    accepted(booked, queue(3))


def test_a_queued_hold_is_never_updated(queued):
    database, [(accrual_id, _), *_] = queued
    refused(database, lambda connection: connection.exec_driver_sql(
        f"UPDATE open_holds SET matures_at_us = 0 WHERE accrual_id = {accrual_id}"), "open_holds: rows are never updated")
    accepted(database, lambda connection: connection.exec_driver_sql(
        f"DELETE FROM open_holds WHERE accrual_id = {accrual_id}"))


# ---- a customer's CPA bounty, once (migration 0020) ----

def test_a_customer_earns_one_cpa_bounty(booked):
    def bounty(transaction_id: int, customer_id: str, **header):
        def post(connection):
            expense, pending = account_ids(connection)
            raw_transfer(connection, transaction_id, expense, pending, kind="cpa", customer_id=customer_id, **header)
            if "accrual_id" in header:  # a reinstatement: its dispute stored after it
                won_dispute(connection, header["event_id"], customer_id, header["invoice_id"])
        return post
    accepted(booked, bounty(2, "acme", invoice_id="inv-1"))
    refused(booked, bounty(3, "acme"), "a customer earns one CPA bounty")
    # A won dispute's reinstatement names its original, and its dispute (stored after it: migration 0058).
    accepted(booked, bounty(3, "acme", accrual_id=2, invoice_id="inv-1", event_id="won-1"))
    accepted(booked, bounty(4, "globex-corp"))


def test_a_customers_bounty_reversed_stands_no_more_and_another_may_follow_it_once(booked):
    """Migration 0038: a payment dated before the claimant takes the claim once the claimant's bounty
    is reversed, and earns its own. One bounty at most stands."""
    def bounty(transaction_id: int):
        def post(connection):
            expense, pending = account_ids(connection)
            raw_transfer(connection, transaction_id, expense, pending, kind="cpa", customer_id="acme")
        return post

    def reversal(connection):
        expense, pending = account_ids(connection)
        raw_transfer(connection, 3, pending, expense, kind="reversal", reverses_id=2, customer_id="acme")
    accepted(booked, bounty(2))
    refused(booked, bounty(3), "a customer earns one CPA bounty")
    accepted(booked, reversal)
    accepted(booked, bounty(4))
    refused(booked, bounty(5), "a customer earns one CPA bounty")


def test_a_bounty_and_its_reinstatement_in_one_batch_are_one_bounty(database):
    """A won dispute's reinstatement names the bounty it reinstates: no second bounty, even when both are
    inserted by one statement and the guard sees them together."""
    books = Books(database)
    books.plan("hybrid", "0.10", cpa={"USD": "150.00"}, duration_months=None)
    books.partner("northwind", "hybrid")
    books.attribute("acme", "northwind", "2026-01-01")
    results = books.ingest(books.event("invoice_paid", "acme", "inv-1", "500.00", "2026-01-05"),
                           books.event("chargeback", "acme", "inv-1", "500.00", "2026-01-06"),
                           books.event("chargeback_reversed", "acme", "inv-1", "500.00", "2026-01-07"))
    assert all(isinstance(result, revenue.Outcome) for result in results), results
    with database.engine.connect() as connection:
        bounties = connection.exec_driver_sql("SELECT id, accrual_id FROM journal_transactions"
                                              " WHERE kind = 'cpa' AND customer_id = 'acme' ORDER BY id").all()
    [(bounty_id, bountys_piece), (_, reinstated_id)] = bounties
    assert bountys_piece is None and reinstated_id == bounty_id


# ---- an adjustment, not dated in the future (migration 0021) ----

RAW_RECORDED_AT_US = 1  # every raw header's recorded_at_us (insert_header)
CLOCK_SKEW_US = 5 * 60 * 1_000_000  # allowed, as for revenue events (migration 0017)


# The accounts of the kinds `dated` names northwind on, as the service posts them: an adjustment's
# (migration 0031), an accrual's and a write-off's (migration 0047).
DATED_ON = {"adjustment": (chart.EXPENSE_ADJUSTMENT, PENDING), "accrual": (chart.EXPENSE_COMMISSION, PENDING),
            "writeoff": (chart.EXPENSE_WRITEOFF, chart.available("northwind"))}


def dated(transaction_id: int, at_us: int, kind: str = "adjustment", original: int | None = None,
          recorded: int = RAW_RECORDED_AT_US):
    """A raw transaction of 100 USD of `kind` at `at_us`; an adjustment as `ledger.payouts.adjust`
    posts one (northwind's, from `expense:commission:adjustment`, with its reason), an accrual or a
    write-off of northwind on its accounts (`DATED_ON`), another kind from `expense:commission` to
    northwind's pending account, naming no partner."""
    def post(connection):
        ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
        debit, credit = DATED_ON.get(kind, (chart.EXPENSE_COMMISSION, PENDING))
        insert_line(connection, transaction_id, ids[debit], "D", 100, at=at_us)
        insert_line(connection, transaction_id, ids[credit], "C", 100, at=at_us)
        insert_header(connection, transaction_id, head_hash(connection), key=f"raw-{transaction_id}", at=at_us,
                      kind=kind, original=original, partner_id="northwind" if kind in DATED_ON else None,
                      memo="goodwill" if kind == "adjustment" else None, recorded=recorded)
    return post


def test_an_adjustment_is_dated_at_most_five_minutes_after_it_was_recorded(booked):
    with booked.transaction() as session:
        chart.account_ids(session, [chart.EXPENSE_ADJUSTMENT])
    limit_us = RAW_RECORDED_AT_US + CLOCK_SKEW_US
    for ahead_us in (limit_us + 1, 4_102_444_800_000_000):  # a microsecond past the skew; 2100-01-01
        refused(booked, dated(2, ahead_us), "an adjustment is dated at most five minutes after it is recorded")
    accepted(booked, dated(2, limit_us))
    # The instant asked for counts, not the one a posting was moved forward to.
    accepted(booked, dated(3, limit_us + 1, original=5))
    refused(booked, dated(4, limit_us + 2, original=limit_us + 1), "an adjustment is dated at most five minutes")


# ---- what is posted against a piece stays within it (migration 0022) ----

AVAILABLE = chart.available("northwind")
WITHIN_ITS_PIECE = "a clawback or release names a live accrual of its partner"
ELSEWHERE = "a transaction posts to the accounts of the partner it names"  # migration 0029


@pytest.fixture
def pieces(database):
    """1: northwind's accrual of 100 USD, of invoice `a1-invoice`; 2: southwind's of 50 USD, of
    `a2-invoice`; 3: an adjustment of 100 USD to northwind's available account (no piece: it opens the
    account)."""
    with database.transaction() as session:
        program.enrol(session, "northwind", "southwind")
        journal.post(session, [
            journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 100, effective_at_us=5,
                             idempotency_key="a1", partner_id="northwind", **program.of_an_event("a1", "northwind")),
            journal.transfer("accrual", chart.EXPENSE_COMMISSION, chart.pending("southwind"), "USD", 50,
                             effective_at_us=5, idempotency_key="a2", partner_id="southwind",
                             **program.of_an_event("a2", "southwind")),
            journal.transfer("adjustment", chart.EXPENSE_ADJUSTMENT, AVAILABLE, "USD", 100, effective_at_us=5,
                             idempotency_key="j3", partner_id="northwind", memo="opening")])
    return database


ITS_PIECES = "its piece's"  # the invoice `against` names by default


def against(transaction_id: int, kind: str, amount: int, *, piece: int | None = 1, partner: str | None = "northwind",
            from_account: str = PENDING, to_account: str | None = None, currency: str = "USD",
            invoice: str | None = ITS_PIECES):
    """A clawback (to the expense account) or a release (to available) of `amount` against `piece`,
    under its piece's invoice by default (the first piece's, `a1-invoice`, when `piece` is none or
    names no invoice: a clawback names an invoice, migration 0064)."""
    def post(connection):
        ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
        named = invoice
        if named is ITS_PIECES:
            named = connection.execute(sa.text("SELECT invoice_id FROM journal_transactions WHERE id = :id"),
                                       dict(id=piece)).scalar() or "a1-invoice"
        credit = to_account or (chart.EXPENSE_COMMISSION if kind == "clawback" else AVAILABLE)
        insert_line(connection, transaction_id, ids[from_account], "D", amount, currency=currency)
        insert_line(connection, transaction_id, ids[credit], "C", amount, currency=currency)
        insert_header(connection, transaction_id, head_hash(connection), key=f"raw-{transaction_id}", kind=kind,
                      accrual_id=piece, partner_id=partner, invoice_id=named)
    return post


def test_the_clawbacks_of_a_piece_take_no_more_than_its_amount(pieces):
    refused(pieces, against(4, "clawback", 101), WITHIN_ITS_PIECE)
    accepted(pieces, against(4, "clawback", 60))
    refused(pieces, against(5, "clawback", 41), WITHIN_ITS_PIECE)
    accepted(pieces, against(5, "clawback", 40))


def test_a_reversed_clawback_no_longer_counts_against_its_piece(pieces):
    accepted(pieces, against(4, "clawback", 100))
    refused(pieces, against(5, "clawback", 1), WITHIN_ITS_PIECE)
    with pieces.transaction() as session:
        journal.reverse(session, 4, reason="refund reversed")
    accepted(pieces, against(6, "clawback", 1))


@pytest.mark.parametrize("kind", ["clawback", "release"])
@pytest.mark.parametrize("wrong", ["no piece", "no partner", "not a piece", "another partner's piece",
                                   "another currency", "another invoice", "another partner's account",
                                   "a credit to the partner"])
def test_a_clawback_or_release_names_a_piece_of_its_partner_and_invoice_on_the_accounts_of_its_kind(
        pieces, kind, wrong):
    named = {"no piece": dict(piece=None), "no partner": dict(partner=None), "not a piece": dict(piece=3),
             "another partner's piece": dict(piece=2), "another currency": dict(currency="EUR"),
             "another invoice": dict(invoice="inv-2"), "another partner's account": dict(
                 from_account=chart.pending("southwind")),
             "a credit to the partner": dict(to_account=PENDING, from_account=chart.EXPENSE_COMMISSION)}[wrong]
    # Another partner's account is refused by migration 0029's rule as well, which comes first on PostgreSQL.
    match = WITHIN_ITS_PIECE if wrong != "another partner's account" else f"{WITHIN_ITS_PIECE}|{ELSEWHERE}"
    refused(pieces, against(4, kind, 10, **named), match)
    accepted(pieces, against(4, kind, 10))


def test_a_piece_is_an_accrual_cpa_or_override_of_its_partner_into_its_pending_account(pieces):
    def raw(transaction_id: int, kind: str, debit: str, credit: str, partner: str, memo: str | None = None):
        def post(connection):
            ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
            raw_transfer(connection, transaction_id, ids[debit], ids[credit], kind=kind, partner_id=partner, memo=memo)
        return post
    # No earning: an adjustment of northwind's.
    accepted(pieces, raw(4, "adjustment", chart.EXPENSE_ADJUSTMENT, PENDING, "northwind", memo="goodwill"))
    # Another partner's: an accrual naming southwind into northwind's account is refused itself
    # (migration 0029, and 0047, whose rule comes first on SQLite).
    refused(pieces, raw(5, "accrual", chart.EXPENSE_COMMISSION, PENDING, "southwind"),
            f"{ELSEWHERE}|{EARNING_MISPOSTED}")
    # Not into pending: an accrual of northwind into its available account, refused since migration
    # 0047, which leaves those written before it as they are.
    into_available = raw(5, "accrual", chart.EXPENSE_COMMISSION, AVAILABLE, "northwind")
    refused(pieces, into_available, EARNING_MISPOSTED)
    with written_before_0047(pieces) as connection:
        into_available(connection)
    for piece in (4, 5):
        refused(pieces, against(6, "clawback", 10, piece=piece, from_account=AVAILABLE), WITHIN_ITS_PIECE)
        refused(pieces, against(6, "clawback", 10, piece=piece), WITHIN_ITS_PIECE)
    accepted(pieces, against(6, "clawback", 10, piece=1, from_account=AVAILABLE))


def test_a_piece_is_one_credit_to_its_partners_pending_account(pieces):
    def split_accrual(connection):  # 100 USD, in two credits of 50 to pending (refused since migration 0048)
        ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
        insert_line(connection, 4, ids[chart.EXPENSE_COMMISSION], "D", 100)
        insert_line(connection, 4, ids[PENDING], "C", 50)
        insert_line(connection, 4, ids[PENDING], "C", 50)
        insert_header(connection, 4, head_hash(connection), key="raw-4", kind="accrual", partner_id="northwind")
    with written_before_0047(pieces) as connection:
        split_accrual(connection)
    refused(pieces, against(5, "clawback", 10, piece=4), WITHIN_ITS_PIECE)
    accepted(pieces, against(5, "clawback", 10, piece=1))


def test_a_piece_is_reversed_after_what_stands_against_it(pieces):
    accepted(pieces, against(4, "clawback", 30))
    accepted(pieces, against(5, "release", 70))

    def reversed_after(*standing: int) -> None:  # one transaction: a release is reversed with its piece (0030)
        with pieces.transaction() as session:
            for transaction_id in (*standing, 1):
                journal.reverse(session, transaction_id, reason="posted in error")
    for standing in ((), (4,), (5,)):
        with pytest.raises(sa.exc.DBAPIError, match="an accrual is reversed after the clawbacks and release"):
            reversed_after(*standing)
    reversed_after(4, 5)


def test_a_piece_of_an_invoice_is_clawed_back_only_under_that_invoice(pieces):
    with pieces.transaction() as session:
        journal.post(session, [journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 100,
                                                effective_at_us=5, idempotency_key="a4", partner_id="northwind",
                                                **(program.of_an_event("a4", "northwind") | {"invoice_id": "inv-1"}))])
    # Under another invoice of the partner's, one with a piece of its own (a clawback names an invoice: 0064).
    refused(pieces, against(5, "clawback", 10, piece=4, invoice="a1-invoice"), WITHIN_ITS_PIECE)
    accepted(pieces, against(5, "clawback", 10, piece=4, invoice="inv-1"))


def test_a_release_debits_the_pending_account_not_the_available_one(pieces):
    refused(pieces, against(4, "release", 10, from_account=AVAILABLE), WITHIN_ITS_PIECE)
    accepted(pieces, against(4, "release", 10))


def test_a_piece_is_reversed_though_a_reinstatement_names_it(pieces):
    """Only clawbacks and releases stand against a piece: a won dispute's reinstatement names its original
    as well, and does not hold the original's reversal back."""
    with pieces.transaction() as session:  # 4: a piece of an invoice, as a won dispute restores one of its own
        journal.post(session, [journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 100,
                                                effective_at_us=5, idempotency_key="a4", partner_id="northwind",
                                                **(program.of_an_event("a4", "northwind") | {"invoice_id": "inv-4"}))])

    def reinstatement(connection):
        expense, pending = account_ids(connection)
        raw_transfer(connection, 5, expense, pending, amount=10, kind="accrual", accrual_id=4, partner_id="northwind",
                     invoice_id="inv-4", event_id="won-4")
        won_dispute(connection, "won-4", "northwind-customer", "inv-4")  # its dispute, stored after it
    accepted(pieces, reinstatement)
    with pieces.transaction() as session:
        journal.reverse(session, 4, reason="posted in error")
    with pieces.engine.connect() as connection:
        reversals = connection.exec_driver_sql("SELECT count(*) FROM journal_transactions WHERE reverses_id = 4")
        assert reversals.scalar() == 1


def test_a_reversed_piece_is_neither_clawed_nor_released(pieces):
    with pieces.transaction() as session:
        journal.reverse(session, 1, reason="posted in error")
    for kind in ("clawback", "release"):
        refused(pieces, against(5, kind, 10), WITHIN_ITS_PIECE)
    accepted(pieces, against(5, "clawback", 10, piece=2, partner="southwind", from_account=chart.pending("southwind")))


def test_what_stands_against_a_pieces_pending_amount_stays_within_it(pieces):
    accepted(pieces, against(4, "clawback", 30))  # from pending, while held
    refused(pieces, against(5, "release", 71), WITHIN_ITS_PIECE)
    accepted(pieces, against(5, "release", 70))
    refused(pieces, against(6, "clawback", 1), WITHIN_ITS_PIECE)  # from pending, after the release took the rest
    accepted(pieces, against(6, "clawback", 70, from_account=AVAILABLE))  # from available, once released
    refused(pieces, against(7, "clawback", 1, from_account=AVAILABLE), WITHIN_ITS_PIECE)


def test_a_piece_is_released_once(pieces):
    accepted(pieces, against(4, "release", 100))
    refused(pieces, against(5, "release", 100), WITHIN_ITS_PIECE)

    def released_again(connection):  # a late refund undid the release: the piece is released again
        ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
        raw_transfer(connection, 5, ids[AVAILABLE], ids[PENDING], kind="reversal", reverses_id=4,
                     partner_id="northwind")
        against(6, "release", 100)(connection)
    accepted(pieces, released_again)


# ---- a release at its maturity, a partner's own accounts, a resolution's amount, no posting dated
# ahead, a plan version that exists (migration 0029) ----

NOW_RECORDED_US = at("2026-06-01")  # recorded_at_us of the raw headers below: after every instant they name


def raw_release(piece: tuple, transaction_id: int, at_us: int, *, original: int | None = None):
    """A release of all of `piece` (accrual id, partner, invoice, currency, amount) effective at `at_us`."""
    accrual_id, partner_id, invoice_id, currency, amount = piece

    def post(connection):
        ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
        insert_line(connection, transaction_id, ids[chart.pending(partner_id)], "D", amount, at=at_us, currency=currency)
        insert_line(connection, transaction_id, ids[chart.available(partner_id)], "C", amount, at=at_us,
                    currency=currency)
        insert_header(connection, transaction_id, head_hash(connection), key=f"raw-release-{transaction_id}",
                      at=at_us, kind="release", accrual_id=accrual_id, partner_id=partner_id, invoice_id=invoice_id,
                      original=original, recorded=NOW_RECORDED_US)
    return post


def test_a_release_is_asked_for_no_earlier_than_its_accrual_matures(queued):
    """`ledger.holds` releases a piece at its maturity: a release dated before it would make the amount
    available, and payable, while it is still held."""
    database, [(accrual_id, matures_us), *_] = queued
    with database.engine.connect() as connection:
        piece = connection.execute(sa.text(
            "SELECT t.id, t.partner_id, t.invoice_id, l.currency, l.amount_minor FROM journal_transactions t"
            " JOIN journal_lines l ON l.transaction_id = t.id AND l.side = 'C' WHERE t.id = :id"),
            dict(id=accrual_id)).one()
        next_id = head_id(connection) + 1
    with database.transaction() as session:
        chart.account_ids(session, [chart.available(piece.partner_id)])
    early = "a release is not asked for before its accrual matures"
    refused(database, raw_release(tuple(piece), next_id, matures_us - 1), early)
    refused(database, raw_release(tuple(piece), next_id, matures_us + 1, original=matures_us - 1), early)
    accepted(database, raw_release(tuple(piece), next_id, matures_us))


def test_a_transaction_of_a_partner_posts_to_no_other_partners_account(booked):
    """A partner's key reads the transactions that name it (`ledger.transactions.page`): a posting
    naming one partner on another's account would show that other partner's money to it."""
    with booked.transaction() as session:  # 2: contoso's accrual, beside northwind's (1)
        program.enrol(session, "contoso")
        journal.post(session, [journal.transfer("accrual", chart.EXPENSE_COMMISSION, chart.pending("contoso"), "USD",
                                                100, effective_at_us=5, idempotency_key="a2", partner_id="contoso",
                                                **program.of_an_event("a2", "contoso"))])

    # Reversals, which mirror their originals whichever partner they name: an accrual on another
    # partner's account breaks its own rule as well (migration 0047), which SQLite checks first.
    def reversal(transaction_id: int, original: int, partner: str | None):
        def post(connection):
            ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
            pending = chart.pending("northwind" if original == 1 else "contoso")
            raw_transfer(connection, transaction_id, ids[pending], ids[chart.EXPENSE_COMMISSION], kind="reversal",
                         reverses_id=original, partner_id=partner)
        return post
    refused(booked, reversal(3, 1, "contoso"), ELSEWHERE)
    refused(booked, reversal(3, 2, "northwind"), ELSEWHERE)
    accepted(booked, reversal(3, 1, "northwind"))
    accepted(booked, reversal(4, 2, None))  # names no partner: shown to none


def test_a_resolution_posts_its_payouts_amount_on_the_accounts_of_its_outcome(enrolled):
    """Settling or failing posts the payout's amount, in its currency: Dr in transit / Cr cash, or
    Cr the partner's available account on a failure. A failure of 10,000.00 on a payout of 75.00
    would return the partner money it was never paid."""
    with enrolled.transaction() as session:
        payout = new_payout(session, "2026-03-01")
        chart.account_ids(session, [chart.CASH, chart.available("northwind")])

    def resolved(transaction_id: int, kind: str, credit: str, amount: int, currency: str = "USD"):
        def post(connection):
            ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
            insert_line(connection, transaction_id, ids[chart.PAYOUTS_IN_TRANSIT], "D", amount, at=at("2026-03-05"),
                        currency=currency)
            insert_line(connection, transaction_id, ids[credit], "C", amount, at=at("2026-03-05"), currency=currency)
            insert_header(connection, transaction_id, head_hash(connection), key=f"raw-{transaction_id}",
                          at=at("2026-03-05"), kind=kind, partner_id="northwind", recorded=NOW_RECORDED_US)
            raw(RESOLUTION, p=payout.id, o=kind.removeprefix("payout_"), t=transaction_id,
                at=NOW_RECORDED_US)(connection)
        return post
    with enrolled.engine.connect() as connection:
        next_id = head_id(connection) + 1
    amount = "a resolution posts the amount of its payout"
    refused(enrolled, resolved(next_id, "payout_failed", AVAILABLE, 1_000_000), amount)
    refused(enrolled, resolved(next_id, "payout_failed", AVAILABLE, 7_500, currency="EUR"), amount)
    refused(enrolled, resolved(next_id, "payout_settled", AVAILABLE, 7_500), amount)
    refused(enrolled, resolved(next_id, "payout_failed", chart.CASH, 7_500), amount)
    accepted(enrolled, resolved(next_id, "payout_failed", AVAILABLE, 7_500))


def test_no_transaction_is_asked_for_more_than_five_minutes_after_it_was_recorded(booked):
    """Python refuses a reversal, release, payout run, settlement or adjustment dated ahead, and an
    event's postings follow the event's instant: none is dated past the instant it is recorded at.
    A reversal dated 2100 would leave its original standing in every report until then."""
    with booked.transaction() as session:  # 2: what a write-off of 100 USD forgives, as of any instant from 5
        chart.account_ids(session, [chart.EXPENSE_WRITEOFF])
        payouts.adjust(session, "northwind", "available", -100, "USD", "overpaid", effective_at_us=5)
    limit_us = RAW_RECORDED_AT_US + CLOCK_SKEW_US
    ahead = "a transaction is dated at most five minutes after it is recorded"
    for kind in ("accrual", "payout_settled"):
        refused(booked, dated(3, 4_102_444_800_000_000, kind=kind), ahead)
        refused(booked, dated(3, limit_us + 1, kind=kind), ahead)
    # A write-off is dated at a month's last microsecond (migration 0047): 2099-12-31's, and January
    # 1970's, one microsecond past the skew after the instant it is recorded at, then at the skew.
    refused(booked, dated(3, period_bounds_us("2099-12")[1] - 1, kind="writeoff"), ahead)
    january_end_us = period_bounds_us("1970-01")[1] - 1
    refused(booked, dated(3, january_end_us, kind="writeoff", recorded=january_end_us - CLOCK_SKEW_US - 1), ahead)
    accepted(booked, dated(3, january_end_us, kind="writeoff", recorded=january_end_us - CLOCK_SKEW_US))
    accepted(booked, dated(4, limit_us, kind="accrual"))

    def reversal_of_the_first(at_us: int):
        def post(connection):
            expense, pending = account_ids(connection)
            insert_line(connection, 5, pending, "D", 100, at=at_us)
            insert_line(connection, 5, expense, "C", 100, at=at_us)
            insert_header(connection, 5, head_hash(connection), key="raw-5", at=at_us, kind="reversal", reverses_id=1)
        return post
    refused(booked, reversal_of_the_first(4_102_444_800_000_000), ahead)
    accepted(booked, reversal_of_the_first(limit_us))


def test_a_transactions_plan_version_exists(booked):
    """A won dispute reads the hold of its piece's plan version: a version that does not exist
    answered every such dispute with a 500."""
    def with_version(transaction_id: int, version):
        def post(connection):
            expense, pending = account_ids(connection)
            insert_line(connection, transaction_id, expense, "D", 100)
            insert_line(connection, transaction_id, pending, "C", 100)
            connection.execute(sa.text(
                "INSERT INTO journal_transactions (id, kind, effective_at_us, recorded_at_us, idempotency_key,"
                " request_hash, prev_hash, hash, partner_id, customer_id, invoice_id, event_id, plan_version_id)"
                " VALUES (:id, 'accrual', 5, 5, :key, :h, :prev, :h, 'northwind', :customer_id, :invoice_id,"
                " :event_id, "
                + ("(SELECT max(id) FROM plan_versions)" if version == "latest" else ":version") + ")"),
                dict(id=transaction_id, key=f"raw-{transaction_id}", h="f" * 64, prev=head_hash(connection),
                     version=version, **program.of_an_event(f"raw-{transaction_id}", "northwind")))
        return post
    with booked.transaction() as session:
        plans.create_plan(session, "standard", "Standard", STANDARD_TERMS)
    refused(booked, with_version(2, 999_999), "a transaction names a plan version that exists")
    accepted(booked, with_version(2, "latest"))
    accepted(booked, with_version(3, None))


# ---- a transaction's size and its idempotency key (migration 0029) ----


def test_a_transaction_has_at_most_100_lines(booked):
    def with_lines(transaction_id: int, lines: int):  # an accrual's debits, and its one credit (0048)
        def post(connection):
            expense, pending = account_ids(connection)
            for _ in range(lines - 1):
                insert_line(connection, transaction_id, expense, "D", 1)
            insert_line(connection, transaction_id, pending, "C", lines - 1)
            insert_header(connection, transaction_id, head_hash(connection), key=f"raw-{transaction_id}")
        return post
    refused(booked, with_lines(2, 101), "a transaction has at most 100 lines")
    accepted(booked, with_lines(2, 100))


@pytest.mark.parametrize("key, taken", [("", False), ("k" * 201, False), ("k", True), ("é" * 200, True)],
                         ids=["empty", "201-characters", "one-character", "200-characters"])
def test_an_idempotency_key_has_1_to_200_characters(booked, key, taken):
    def keyed(connection):
        expense, pending = account_ids(connection)
        insert_line(connection, 2, expense, "D", 100)
        insert_line(connection, 2, pending, "C", 100)
        # its event and invoice named apart from the key, whose 200 characters they would not hold
        insert_header(connection, 2, head_hash(connection), key=key, **program.of_an_event("raw-2", "northwind"))
    if taken:
        accepted(booked, keyed)
    else:  # PostgreSQL's VARCHAR(200) refuses the longest itself, in its own words
        refused(booked, keyed, "an idempotency key has 1 to 200 characters|value too long")


# ---- what must follow in the same transaction, a reinstated chargeback, the first close (migration 0030) ----

UNSETTLED = "FOREIGN KEY constraint failed|fk_unreleased_pieces_due_accrual_id_journal_transactions"
UNRECORDED_RESOLUTION = "FOREIGN KEY constraint failed|fk_payout_resolutions_due_transaction_id_payout_resolutions"


def in_turn(*steps):
    """The raw writes `steps`, in one transaction."""
    def post(connection):
        for step in steps:
            step(connection)
    return post


def mirror(transaction_id: int, reverses_id: int, debit: str, credit: str, amount: int = 100):
    """The raw reversal of northwind's `reverses_id`, which debited `credit` and credited `debit`."""
    def post(connection):
        ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
        raw_transfer(connection, transaction_id, ids[debit], ids[credit], amount=amount, kind="reversal",
                     reverses_id=reverses_id, partner_id="northwind")
    return post


UNRELEASE = mirror(5, 4, AVAILABLE, PENDING)  # of the release 4 of all of piece 1


def pieces_listed(database) -> int:
    with database.engine.connect() as connection:
        return connection.exec_driver_sql("SELECT count(*) FROM unreleased_pieces_due").scalar_one()


def test_a_release_is_reversed_only_with_its_piece_or_released_again_in_full(pieces):
    """A release reversed alone left its amount pending after the maturity with no hold queued to
    release it: the partner was never paid it, and verify named it only as a pending balance."""
    accepted(pieces, against(4, "release", 100))
    refused(pieces, UNRELEASE, UNSETTLED)
    refused(pieces, in_turn(UNRELEASE, against(6, "release", 60)), UNSETTLED)  # 40 left pending
    accepted(pieces, in_turn(UNRELEASE, against(6, "release", 100)))
    assert pieces_listed(pieces) == 0


def test_a_release_is_reversed_with_its_piece(pieces):
    accepted(pieces, against(4, "release", 100))
    accepted(pieces, in_turn(UNRELEASE, mirror(6, 1, PENDING, chart.EXPENSE_COMMISSION)))
    assert pieces_listed(pieces) == 0


@pytest.mark.parametrize("clawed, released, settled", [(100, None, True), (99, None, False), (30, 70, True),
                                                      (30, 60, False)])
def test_a_release_is_reversed_with_clawbacks_from_pending_and_a_release_that_take_the_whole_piece(
        pieces, clawed, released, settled):
    """A late refund dated before the maturity: the release is undone, the refund claws from pending,
    and what is left is released again at the maturity (`ledger.holds.unrelease`)."""
    accepted(pieces, against(4, "release", 100))
    steps = [UNRELEASE, against(6, "clawback", clawed), *([against(7, "release", released)] if released else [])]
    if settled:
        accepted(pieces, in_turn(*steps))
    else:
        refused(pieces, in_turn(*steps), UNSETTLED)
    assert pieces_listed(pieces) == 0


def test_a_release_reversed_through_the_journal_alone_does_not_commit_and_the_service_refuses_it(pieces):
    accepted(pieces, against(4, "release", 100))
    with pytest.raises(sa.exc.DBAPIError, match=UNSETTLED):
        with pieces.transaction() as session:  # the bare mirror, around `ledger.reversals`
            journal.reverse(session, 4, reason="raw")
    with pytest.raises(Conflict, match="is a release"):
        with pieces.transaction() as session:
            reversals.reverse(session, 4, reason="held again")
    with pieces.transaction() as session:  # before its accrual's reversal, as `ledger.reversals` posts it
        journal.reverse(session, 4, reason="with its accrual")
        journal.reverse(session, 1, reason="posted in error")
    assert pieces_listed(pieces) == 0


def test_a_listed_piece_leaves_the_list_only_once_reversed_or_settled_again(pieces):
    accepted(pieces, against(4, "release", 100))
    listed = raw("INSERT INTO unreleased_pieces_due (accrual_id) VALUES (1)")
    forget = raw("DELETE FROM unreleased_pieces_due")
    refused(pieces, in_turn(UNRELEASE, forget), "a piece whose release was reversed is reversed, or holds nothing")
    refused(pieces, in_turn(UNRELEASE, raw("UPDATE unreleased_pieces_due SET accrual_id = 2")),
            "unreleased_pieces_due: rows are never updated")
    refused(pieces, listed, UNSETTLED)  # a row asks for the piece's reversal
    accepted(pieces, in_turn(UNRELEASE, against(6, "release", 100), listed, forget))


@pytest.fixture
def reinstated(database):
    """northwind's accrual of 100.00 on inv-1, charged back in full (from pending) and won back: the
    accrual, its chargeback's clawback and the reinstatement."""
    books = Books(database)
    books.plan("standard", "0.20")
    books.partner("northwind", "standard")
    books.attribute("acme", "northwind", "2026-01-01")
    books.paid("acme", "inv-1", "500.00", "2026-01-05")
    books.chargeback("acme", "inv-1", "500.00", "2026-01-06")
    books.dispute_won("acme", "inv-1", "500.00", "2026-01-07")
    [(accrual,), (clawback,), (reinstatement,)] = books.sql(
        "SELECT id FROM journal_transactions WHERE kind IN ('accrual', 'clawback') ORDER BY id")
    return database, accrual, clawback, reinstatement


def test_a_chargebacks_clawback_is_not_reversed_while_the_reinstatement_of_its_accrual_stands(reinstated):
    """The won dispute restored what the chargeback took: the clawback's mirror as well would pay the
    partner twice (`ledger.holds.released_again` refuses it, 409: reverse the accrual instead)."""
    database, accrual, clawback, reinstatement = reinstated
    with pytest.raises(Conflict, match="a won dispute reinstated accrual"):
        with database.transaction() as session:
            reversals.reverse(session, clawback, reason="by the service")
    with pytest.raises(sa.exc.DBAPIError, match="a chargebacks clawback of an accrual is not reversed while"):
        with database.transaction() as session:  # the bare mirror, around `ledger.reversals`
            journal.reverse(session, clawback, reason="raw")
    with database.transaction() as session:
        journal.reverse(session, reinstatement, reason="the dispute was lost after all")
    with database.transaction() as session:
        journal.reverse(session, clawback, reason="the chargeback is undone too")


def test_an_accrual_is_reversed_with_its_reinstatement_and_its_chargebacks_clawback(reinstated):
    database, accrual, clawback, reinstatement = reinstated
    with database.transaction() as session:
        reversals.reverse(session, accrual, reason="posted in error")
    with database.engine.connect() as connection:
        undone = connection.exec_driver_sql("SELECT reverses_id FROM journal_transactions WHERE kind = 'reversal'"
                                            " ORDER BY id").scalars().all()
    assert undone == [reinstatement, clawback, accrual]


def resolution_posting(transaction_id: int, kind: str, payout: payouts.Payout, record: bool):
    """Northwind's settlement (`payout_settled`) or failure (`payout_failed`, or the reversal of the
    payout's posting) of `payout`, by raw SQL, with its resolution record or without."""
    def post(connection):
        ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
        credit = ids[chart.CASH if kind == "payout_settled" else AVAILABLE]
        insert_line(connection, transaction_id, ids[chart.PAYOUTS_IN_TRANSIT], "D", payout.amount_minor,
                    at=at("2026-03-05"))
        insert_line(connection, transaction_id, credit, "C", payout.amount_minor, at=at("2026-03-05"))
        reversal = kind == "reversal"
        insert_header(connection, transaction_id, head_hash(connection), key=f"raw-{transaction_id}",
                      at=at("2026-03-05"), kind=kind, partner_id="northwind", recorded=NOW_RECORDED_US,
                      reverses_id=payout.transaction_id if reversal else None)
        if record:
            outcome = "settled" if kind == "payout_settled" else "failed"
            raw(RESOLUTION, p=payout.id, o=outcome, t=transaction_id, at=NOW_RECORDED_US)(connection)
    return post


@pytest.mark.parametrize("kind", ["payout_settled", "payout_failed", "reversal"])
def test_a_resolution_posting_is_recorded_by_the_commit(enrolled, kind):
    """Without its record the payout stayed pending: settled or failed again, it was paid twice, or
    its money returned twice."""
    with enrolled.transaction() as session:
        payout = new_payout(session, "2026-03-01")
        chart.account_ids(session, [chart.CASH, AVAILABLE])
    with enrolled.engine.connect() as connection:
        next_id = head_id(connection) + 1
    refused(enrolled, resolution_posting(next_id, kind, payout, record=False), UNRECORDED_RESOLUTION)
    accepted(enrolled, resolution_posting(next_id, kind, payout, record=True))
    with enrolled.transaction() as session:
        assert payouts.get_payout(session, payout.id).status == ("settled" if kind == "payout_settled" else "failed")


def test_a_payout_settled_through_the_journal_alone_does_not_commit(enrolled):
    with enrolled.transaction() as session:
        payout = new_payout(session, "2026-03-01")
    with pytest.raises(sa.exc.DBAPIError, match=UNRECORDED_RESOLUTION):
        with enrolled.transaction() as session:
            journal.post(session, [journal.transfer(
                "payout_settled", chart.PAYOUTS_IN_TRANSIT, chart.CASH, "USD", payout.amount_minor,
                effective_at_us=at("2026-03-02"), idempotency_key="raw-settled", partner_id="northwind")])
    with pytest.raises(sa.exc.DBAPIError, match=UNRECORDED_RESOLUTION):
        with enrolled.transaction() as session:
            journal.reverse(session, payout.transaction_id, reason="raw", effective_at_us=at("2026-03-02"))
    with enrolled.transaction() as session:
        assert payouts.settle(session, payout.id, at_us=at("2026-03-02")).status == "settled"


def test_the_first_close_starts_no_later_than_the_first_posting(database):
    """`ledger.periods.close_period` closes the empty periods before a period with it, and refuses it
    while an earlier one has postings: a first close of March over January's postings left January
    open before a closed chain, where nothing could close it."""
    with database.transaction() as session:
        program.enrol(session, "northwind")  # its accrual names a partner of the program
        journal.post(session, [journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 100,
                                                effective_at_us=at("2026-01-20"), idempotency_key="a1",
                                                partner_id="northwind", **program.of_an_event("a1", "northwind"))])
    late = "the first close starts no later than the first posting"
    refused(database, raw_close("2026-03"), late)
    refused(database, raw_close("2026-02"), late)
    accepted(database, raw_close("2026-01"))
    with database.transaction() as session:  # then each month in turn, as the chain has it
        assert periods.close_period(session, "2026-03").period == "2026-03"


# ---- adjustments, enrolment, payout runs and the shapes of texts (migration 0031) ----

ADJUSTMENT_MISPOSTED = "an adjustment moves money between the adjustment expense and one account of the partner"
NOT_ENROLLED = "a transaction names a partner of the program"


def raw_adjustment(transaction_id: int, *legs: tuple[str, str], partner: str | None = "northwind",
                   memo: str | None = "goodwill"):
    """A raw adjustment of 100 USD a leg, each leg (debit account, credit account)."""
    def post(connection):
        ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
        for debit, credit in legs:
            insert_line(connection, transaction_id, ids[debit], "D", 100)
            insert_line(connection, transaction_id, ids[credit], "C", 100)
        insert_header(connection, transaction_id, head_hash(connection), key=f"raw-{transaction_id}",
                      kind="adjustment", partner_id=partner, memo=memo)
    return post


def test_an_adjustment_moves_money_between_its_expense_and_one_account_of_its_partner(booked):
    """`ledger.payouts.adjust` posts the adjustment expense against the pending or available account
    of the partner it names, with a reason: one naming no partner was read by no partner's key."""
    available = chart.available("northwind")
    with booked.transaction() as session:
        program.enrol(session, "contoso")
        chart.account_ids(session, [chart.EXPENSE_ADJUSTMENT, chart.CASH, available, chart.pending("contoso")])
    expense = chart.EXPENSE_ADJUSTMENT
    for wrong in (raw_adjustment(2, (expense, PENDING), partner=None),
                  raw_adjustment(2, (expense, PENDING), memo=None),
                  raw_adjustment(2, (expense, PENDING), memo=""),
                  raw_adjustment(2, (expense, PENDING), memo="x" * 501),
                  raw_adjustment(2, (chart.EXPENSE_COMMISSION, PENDING)),  # the commission expense
                  raw_adjustment(2, (chart.CASH, PENDING)),
                  raw_adjustment(2, (PENDING, available)),  # between the partner's own accounts
                  raw_adjustment(2, (expense, chart.pending("contoso")), partner="contoso", memo=None),
                  raw_adjustment(2, (expense, PENDING), (expense, available))):  # two legs
        refused(booked, wrong, ADJUSTMENT_MISPOSTED)
    accepted(booked, raw_adjustment(2, (expense, PENDING), memo="x" * 500))
    accepted(booked, raw_adjustment(3, (available, expense), memo="clawed back"))
    accepted(booked, raw_adjustment(4, (expense, chart.pending("contoso")), partner="contoso"))
    with booked.transaction() as session:  # and Python's, as it posts them
        payouts.adjust(session, "northwind", "pending", -40, "USD", "overpaid")
    with booked.reader() as session:
        assert [kind for (kind,) in session.execute(sa.text(
            "SELECT kind FROM journal_transactions WHERE id > 1 ORDER BY id"))] == ["adjustment"] * 4


def test_a_transaction_names_a_partner_of_the_program(booked):
    """A posting for a partner never enrolled was read by no key and paid by no run."""
    with booked.transaction() as session:
        chart.account_ids(session, [chart.pending("ghost")])

    def accrual(transaction_id: int, partner: str | None):
        def post(connection):
            ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
            raw_transfer(connection, transaction_id, ids[chart.EXPENSE_COMMISSION], ids[chart.pending("ghost")],
                         partner_id=partner)
        return post
    refused(booked, accrual(2, "ghost"), NOT_ENROLLED)
    with pytest.raises(sa.exc.DBAPIError, match=NOT_ENROLLED):  # one of a batch, through the journal
        with booked.transaction() as session:
            journal.post(session, [journal.transfer("accrual", chart.EXPENSE_COMMISSION, chart.pending(partner), "USD",
                                                    100, effective_at_us=5, idempotency_key=f"k{partner}",
                                                    partner_id=partner, **program.of_an_event(f"k{partner}", partner))
                                   for partner in ("northwind", "ghost")])

    def unnamed_reversal(connection):  # names no partner: shown to none (an accrual names its partner: 0047)
        expense, pending = account_ids(connection)
        raw_transfer(connection, 2, pending, expense, kind="reversal", reverses_id=1, partner_id=None)
    accepted(booked, unnamed_reversal)
    with booked.transaction() as session:
        program.enrol(session, "ghost")
    accepted(booked, accrual(3, "ghost"))


def test_a_reversal_names_a_partner_never_enrolled_only_if_its_original_names_that_partner(empty_url, monkeypatch):
    """The one way past the rule for a reversal is its original's partner (a posting written for a
    partner never enrolled before migration 0031 can be reversed): a reversal naming a partner never
    enrolled, of an original on that partner's accounts that names no partner, is a new posting for
    that partner, and refused."""
    from ledger.db import Database
    from ledger.migrate import upgrade

    upgrade(empty_url, "0030")
    database = Database(empty_url)
    try:
        # As the service wrote them before 0031 (and 0047: the first names no partner).
        with posting_before_0047(monkeypatch), database.transaction() as session:
            unnamed, named = journal.post(session, [journal.transfer(
                "accrual", chart.EXPENSE_COMMISSION, chart.pending("ghost"), "USD", 100, effective_at_us=5,
                idempotency_key=f"ghost-{partner}", partner_id=partner,
                **(program.of_an_event(f"ghost-{partner}", "ghost") | {"invoice_id": "inv-ghost"}))
                for partner in (None, "ghost")])
        upgrade(empty_url)

        def reversal(transaction_id: int, original: int, partner: str | None):
            def post(connection):
                ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
                raw_transfer(connection, transaction_id, ids[chart.pending("ghost")], ids[chart.EXPENSE_COMMISSION],
                             kind="reversal", reverses_id=original, partner_id=partner)
            return post
        refused(database, reversal(named.id + 1, unnamed.id, "ghost"), NOT_ENROLLED)
        accepted(database, reversal(named.id + 1, unnamed.id, None))
        accepted(database, reversal(named.id + 2, named.id, "ghost"))
    finally:
        database.dispose()


@pytest.mark.parametrize("kind", ["reversal", "accrual"])
def test_a_posting_for_a_partner_never_enrolled_is_refused_though_it_names_a_piece_of_that_partner(empty_url, kind,
                                                                                                  monkeypatch):
    """A reversal of an original naming no partner, or a new accrual, naming a partner never enrolled
    and, in `accrual_id`, that partner's piece written before migration 0031: a new posting for that
    partner, which neither reverses its original nor releases or claws back its piece."""
    from ledger.db import Database
    from ledger.migrate import upgrade

    upgrade(empty_url, "0030")
    database = Database(empty_url)
    try:
        # As the service wrote them before 0031 (and 0047: the first names no partner).
        with posting_before_0047(monkeypatch), database.transaction() as session:
            unnamed, piece = journal.post(session, [journal.transfer(
                "accrual", chart.EXPENSE_COMMISSION, chart.pending("ghost"), "USD", 100, effective_at_us=5,
                idempotency_key=f"ghost-{partner}", partner_id=partner,
                **(program.of_an_event(f"ghost-{partner}", "ghost") | {"invoice_id": "inv-ghost"}))
                for partner in (None, "ghost")])
        upgrade(empty_url)
        legs = (chart.pending("ghost"), chart.EXPENSE_COMMISSION)

        def posting(partner: str | None):
            def post(connection):
                ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
                debit, credit = legs if kind == "reversal" else legs[::-1]
                # An accrual naming the piece restores it for a won dispute of its invoice (migration 0058).
                restores = {} if kind == "reversal" else dict(invoice_id="inv-ghost", event_id="won-ghost")
                raw_transfer(connection, piece.id + 1, ids[debit], ids[credit], kind=kind, accrual_id=piece.id,
                             reverses_id=unnamed.id if kind == "reversal" else None, partner_id=partner, **restores)
                if restores:  # its dispute stored after it, and the payment the piece names (written before 0065)
                    won_dispute(connection, "won-ghost", "ghost-customer", "inv-ghost", paid="ghost-ghost-event")
            return post
        refused(database, posting("ghost"), NOT_ENROLLED)
        if kind == "accrual":  # the same accrual once ghost is enrolled (one naming no partner is refused: 0047)
            with database.transaction() as session:
                program.enrol(session, "ghost")  # and its customer attributed, whose payment the piece names
                customers.attribute(session, "ghost-customer", "ghost", date(1970, 1, 1), "manual")
        accepted(database, posting(None if kind == "reversal" else "ghost"))
    finally:
        database.dispose()


def test_a_payout_run_is_not_dated_in_a_closed_period(enrolled):
    """Its payouts' postings would be refused there; a run paying nobody stood for a run made inside
    a closed month (`ledger.payouts` answers 409)."""
    with enrolled.transaction() as session:
        periods.close_period(session, "2026-01", now_us=at("2026-02-02"))
    end_us = period_bounds_us("2026-01")[1]
    refused(enrolled, raw(RUN, id="in-january", at=end_us - 1), "a run is not dated in a closed period")
    refused(enrolled, raw(RUN, id="in-january", at=at("2026-01-10")), "a run is not dated in a closed period")
    with pytest.raises(Conflict, match="lies in a closed period"), enrolled.transaction() as session:
        payouts.run_payouts(session, end_us - 1)
    accepted(enrolled, raw(RUN, id="at-february", at=end_us))


def test_a_payout_run_before_any_close_is_accepted(enrolled):
    accepted(enrolled, raw(RUN, id="early", at=at("2026-01-10")))


def _migration_0031():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "migrations" / "versions" / "0031_program_rules_held.py"
    spec = importlib.util.spec_from_file_location("_revision_0031", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_blanks_the_database_trims_are_those_python_strips():
    code_points = _migration_0031().WHITESPACE_CODE_POINTS
    assert sorted(code_points) == [code for code in range(0x110000) if chr(code).isspace()]


TEXT_REFUSED = "name has 1 to 200 characters|id is 1 to 64|reason has|value too long"
PLAN_ROW = "INSERT INTO plans (id, name, created_at_us) VALUES (:id, :name, 1)"
PARTNER_ROW = ("INSERT INTO partners (id, name, type, parent_id, parent_depth, depth, created_at_us)"
               " VALUES (:id, :name, 'msp', NULL, NULL, 1, 1)")
CUSTOMER_ROW = "INSERT INTO customers (id, created_at_us) VALUES (:id, 1)"


def row_of(statement: str, **params):
    """The row, and a partner's first status and plan with it, on a plan of its own (migration 0060
    asks for both by the commit; a test of the partner's own rules meets only those)."""
    def write(connection):
        connection.execute(sa.text(statement), params)
        if statement == PARTNER_ROW:
            connection.execute(sa.text("INSERT INTO plans (id, name, created_at_us) SELECT 'own-plan', 'Own', 1"
                                       " WHERE NOT EXISTS (SELECT 1 FROM plans WHERE id = 'own-plan')"))
            with_status_and_plan(connection, params["id"], "own-plan")
    return write


@pytest.mark.parametrize("name", ["", " ", "\t\n", "\u3000\u00a0", "\u2003 \u2028", "x" * 201])
@pytest.mark.parametrize("row", [PLAN_ROW, PARTNER_ROW])
def test_a_name_has_1_to_200_characters_not_all_blank(database, row, name):
    refused(database, row_of(row, id="named", name=name), TEXT_REFUSED)


@pytest.mark.parametrize("row", [PLAN_ROW, PARTNER_ROW])
def test_a_name_of_200_characters_or_blanks_around_a_letter_is_accepted(database, row):
    accepted(database, row_of(row, id="long", name="x" * 200))
    accepted(database, row_of(row, id="spaced", name="\u3000 a \t"))


def test_sqlite_keeps_names_text(sqlite_database):
    """A number is stored as text by the column's affinity; a blob is stored as it is."""
    refused(sqlite_database, raw(PLAN_ROW, id="odd", name=b"Bare"), "a name has 1 to 200 characters")


@pytest.mark.parametrize("row", [PLAN_ROW, PARTNER_ROW])
@pytest.mark.parametrize("id_", ["", "a:b", "-ab", "_ab", "a b", "a/b", "a@b", "é", "a\n", "x" * 65])
def test_a_partners_or_plans_id_is_of_the_partner_alphabet(database, row, id_):
    refused(database, row_of(row, id=id_, name="Named"), TEXT_REFUSED)


@pytest.mark.parametrize("id_", ["", "a b", ":ab", "/ab", "a,b", "a'b", "é", "x" * 65])
def test_a_customers_id_is_of_the_external_alphabet(database, id_):
    refused(database, raw(CUSTOMER_ROW, id=id_), TEXT_REFUSED)


def test_ids_of_their_alphabets_are_accepted(database):
    for index, id_ in enumerate(("a", "A-1.b_c", "9" + "x" * 63)):
        accepted(database, raw(PLAN_ROW, id=id_, name="Named"))
        accepted(database, row_of(PARTNER_ROW, id=id_, name=f"Named {index}"))
    for id_ in ("cust-1", "acme:eu@billing/42_x.y", "Z" * 64):
        accepted(database, raw(CUSTOMER_ROW, id=id_))


@pytest.mark.parametrize("row, cut, values", [
    (PLAN_ROW, {"id": "gold", "name": "Gold"}, {"id": "gold\x00 has spaces:and:colons", "name": "Gold"}),
    (PLAN_ROW, {"id": "gold", "name": "Gold"}, {"id": "gold", "name": "Gold\x00" + "!" * 400}),
    (PARTNER_ROW, {"id": "acme", "name": "Acme"}, {"id": "acme\x00 <script>", "name": "Acme"}),
    (PARTNER_ROW, {"id": "acme", "name": "Acme"}, {"id": "acme", "name": "Acme\x00" + "!" * 400}),
    (CUSTOMER_ROW, {"id": "acme"}, {"id": "acme\x00 /../" + "z" * 100}),
], ids=["plan id", "plan name", "partner id", "partner name", "customer id"])
def test_a_nul_character_does_not_cut_an_id_or_a_name_short(database, row, cut, values):
    """SQLite's `length()` and `GLOB` read a text up to its first NUL: an id or name went past its
    rules as what came before it (migration 0044). PostgreSQL takes no NUL in any text. What comes
    before the NUL, alone, is accepted."""
    refused(database, row_of(row, **values), "holds no NUL character|NUL")
    accepted(database, row_of(row, **cut))


def test_an_adjustments_reason_holds_no_nul_character(booked):
    """The reason (memo) of an adjustment, 1 to 500 characters (migration 0031), went past its length
    on SQLite as the characters before a NUL (migration 0044)."""
    with booked.transaction() as session:
        chart.account_ids(session, [chart.EXPENSE_ADJUSTMENT, chart.available("northwind")])

    def adjustment(memo: str):
        def write(connection):
            ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
            insert_line(connection, 2, ids[chart.EXPENSE_ADJUSTMENT], "D", 100)
            insert_line(connection, 2, ids[chart.available("northwind")], "C", 100)
            insert_header(connection, 2, head_hash(connection), kind="adjustment", partner_id="northwind", memo=memo)
        return write
    refused(booked, adjustment("goodwill\x00" + "!" * 600), "holds no NUL character|NUL")
    accepted(booked, adjustment("goodwill"))


REVOCATION = "INSERT INTO api_key_revocations (api_key_id, revoked_at_us, reason) VALUES (:key, 1, :reason)"


@pytest.mark.parametrize("reason", ["", " \u00a0", "x" * 501])
def test_a_revocations_reason_has_1_to_500_characters_not_all_blank(database, reason):
    with database.transaction() as session:
        key_id, _ = create_key(session, "finance")
    refused(database, raw(REVOCATION, key=key_id, reason=reason), TEXT_REFUSED)
    accepted(database, raw(REVOCATION, key=key_id, reason=" " + "x" * 499))


def test_a_revocation_without_a_reason_is_accepted(database):
    with database.transaction() as session:
        key_id, _ = create_key(session, "finance")
    accepted(database, raw(REVOCATION, key=key_id, reason=None))


def test_a_resolutions_reason_has_at_most_500_characters(enrolled):
    with enrolled.transaction() as session:
        payout = new_payout(session, "2026-03-01")

    def settled_with(reason: str) -> None:  # the posting and its record in one transaction (migration 0030)
        with enrolled.transaction() as session:
            settled = journal.post(session, [journal.transfer(
                "payout_settled", chart.PAYOUTS_IN_TRANSIT, chart.CASH, "USD", payout.amount_minor,
                effective_at_us=at("2026-03-02"), idempotency_key=f"settled-{len(reason)}",
                partner_id="northwind")])[0].id
            session.execute(sa.text(
                "INSERT INTO payout_resolutions (payout_id, outcome, transaction_id, reason, resolved_at_us)"
                " VALUES (:p, 'settled', :t, :reason, :at)"), dict(p=payout.id, t=settled, reason=reason,
                                                                  at=at("2026-03-03")))
    with pytest.raises(sa.exc.DBAPIError, match=TEXT_REFUSED):
        settled_with("x" * 501)
    settled_with("")


# ---- commissions and write-offs on their accounts (migration 0047) ----

EARNING_MISPOSTED = "an accrual, CPA or override moves money from expense:commission to the pending account"
WRITEOFF_MISPOSTED = "a write-off moves money from expense:commission:writeoff to the available account"
AVAILABLE = chart.available("northwind")


def raw_posting(transaction_id: int, kind: str, *legs: tuple, partner: str | None = "northwind", at_us: int = 5):
    """A raw transaction of `kind` at `at_us`, each leg (debit account, credit account, amount[, currency])."""
    def post(connection):
        ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
        for debit, credit, amount, *currency in legs:
            code = currency[0] if currency else "USD"
            insert_line(connection, transaction_id, ids[debit], "D", amount, at=at_us, currency=code)
            insert_line(connection, transaction_id, ids[credit], "C", amount, at=at_us, currency=code)
        insert_header(connection, transaction_id, head_hash(connection), key=f"raw-{transaction_id}", at=at_us,
                      kind=kind, partner_id=partner, recorded=now_us())
    return post


@pytest.mark.parametrize("kind", ["accrual", "cpa", "override"])
def test_a_commission_moves_money_from_the_commission_expense_to_its_partners_pending_account(booked, kind):
    """A write-off from cash to a partner's available account was paid by the next payout run; a
    commission on the wrong accounts likewise (`revshare verify` said ok of both)."""
    with booked.transaction() as session:
        chart.account_ids(session, [chart.CASH, AVAILABLE, chart.EXPENSE_WRITEOFF])
    expense = chart.EXPENSE_COMMISSION
    for wrong in (raw_posting(2, kind, (expense, PENDING, 100), partner=None),
                  raw_posting(2, kind, (expense, AVAILABLE, 100)),  # past the hold
                  raw_posting(2, kind, (chart.CASH, PENDING, 100)),
                  raw_posting(2, kind, (chart.EXPENSE_WRITEOFF, PENDING, 100)),
                  raw_posting(2, kind, (PENDING, expense, 100)),  # a clawback's sides
                  raw_posting(2, kind, (expense, PENDING, 100), (expense, AVAILABLE, 50)),  # a leg astray
                  # Two credits (migration 0048): no piece, so never released nor clawed back.
                  raw_posting(2, kind, (expense, PENDING, 100), (expense, PENDING, 50)),
                  raw_posting(2, kind, (expense, PENDING, 100), (expense, PENDING, 50, "EUR"))):
        refused(booked, wrong, EARNING_MISPOSTED)
    accepted(booked, raw_posting(2, kind, (expense, PENDING, 150)))
    with pytest.raises(InvalidInput, match=EARNING_MISPOSTED):
        journal.check_draft(journal.transfer(kind, chart.CASH, PENDING, "USD", 1, effective_at_us=5,
                                             idempotency_key="python", partner_id="northwind",
                                             **program.of_an_event("python", "northwind")))
    split = journal.transfer(kind, expense, PENDING, "USD", 100, effective_at_us=5, idempotency_key="python",
                             partner_id="northwind", **program.of_an_event("python", "northwind"))
    with pytest.raises(InvalidInput, match=EARNING_MISPOSTED):
        journal.check_draft(split._replace(lines=(*split.lines, *split.lines)))
    debits = (split.lines[0]._replace(amount_minor=60), split.lines[0]._replace(amount_minor=40))
    journal.check_draft(split._replace(lines=(*debits, split.lines[1])))  # debits are not counted

    def two_debits(connection):
        ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
        for side, amount in (("D", 60), ("D", 40), ("C", 100)):
            insert_line(connection, 3, ids[expense if side == "D" else PENDING], side, amount)
        # another customer's: a customer earns one CPA bounty (migration 0020), and 2 names one already
        insert_header(connection, 3, head_hash(connection), key="raw-3", kind=kind, partner_id="northwind",
                      recorded=now_us(), customer_id="another-customer")
    accepted(booked, two_debits)


def test_a_writeoff_forgives_exactly_a_negative_available_balance_at_a_months_end(booked):
    """Read from the lines before any close, then from the latest close's snapshot plus the lines after it."""
    january_end, february_end = period_bounds_us("1970-01")[1], period_bounds_us("1970-02")[1]
    with booked.transaction() as session:
        chart.account_ids(session, [chart.CASH, chart.EXPENSE_WRITEOFF, AVAILABLE])
        payouts.adjust(session, "northwind", "available", -300, "USD", "overpaid", effective_at_us=at("1970-01-10"))
    writeoff = chart.EXPENSE_WRITEOFF
    for wrong in (raw_posting(3, "writeoff", (writeoff, AVAILABLE, 200), at_us=january_end - 1),  # -100 left
                  raw_posting(3, "writeoff", (writeoff, AVAILABLE, 400), at_us=january_end - 1),  # 100 left
                  raw_posting(3, "writeoff", (writeoff, AVAILABLE, 300), at_us=january_end - 2),
                  raw_posting(3, "writeoff", (chart.CASH, AVAILABLE, 300), at_us=january_end - 1),
                  raw_posting(3, "writeoff", (writeoff, PENDING, 300), at_us=january_end - 1),
                  raw_posting(3, "writeoff", (writeoff, AVAILABLE, 300), partner=None, at_us=january_end - 1),
                  # its USD leaves USD at zero; what would its EUR forgive? (the next run paid it)
                  raw_posting(3, "writeoff", (writeoff, AVAILABLE, 300), (writeoff, AVAILABLE, 500, "EUR"),
                              at_us=january_end - 1)):
        refused(booked, wrong, WRITEOFF_MISPOSTED)
    with pytest.raises(InvalidInput, match="in one currency"):
        journal.check_draft(journal.Draft("writeoff", january_end - 1, (
            journal.Line(writeoff, "USD", "D", 300), journal.Line(AVAILABLE, "USD", "C", 300),
            journal.Line(writeoff, "EUR", "D", 500), journal.Line(AVAILABLE, "EUR", "C", 500)), "python",
            partner_id="northwind"))
    accepted(booked, raw_posting(3, "writeoff", (writeoff, AVAILABLE, 300), at_us=january_end - 1))
    with booked.transaction() as session:
        periods.close_period(session, "1970-01", now_us=at("2026-01-01"))
        payouts.adjust(session, "northwind", "available", -50, "USD", "overpaid", effective_at_us=at("1970-02-10"))
    refused(booked, raw_posting(5, "writeoff", (writeoff, AVAILABLE, 350), at_us=february_end - 1), WRITEOFF_MISPOSTED)
    accepted(booked, raw_posting(5, "writeoff", (writeoff, AVAILABLE, 50), at_us=february_end - 1))
