"""A closed period's statement lines as the API writes them (ledger/statement_bodies.py, migration
0035): written by the close, served byte for byte as the statement read and written line by line
would be, held by the database (append-only, of the latest close, as many lines as its document),
and checked against the journal by verify."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from ledger import accounts as chart
from ledger import journal, periods, statement_bodies
from ledger.instants import parse_instant
from ledger.statements import statement, statement_json, to_json
from ledger.verify import verify
from migrations.earlier import revision
from tests import program
from tests.integration.test_database_guards import refused_without_recursive_triggers
from tests.integration.test_tamper_evidence import behind_the_triggers

PARTNERS = ("northwind", "contoso")
CLOSED = ("2026-01", "2026-02", "2026-03")
# A customer id with every character an id may hold besides letters and digits
# (`customers.validate_external_id`), "/" among them, which some JSON writers escape.
CUSTOMER = "cust_7.eu:billing@acme.example/b-2"


def at(day: str) -> int:
    return parse_instant(f"{day}T00:00:00Z", field="at")


def accrual(partner_id: str, currency: str, amount: int, day: str, key: str, **source) -> journal.Draft:
    """An accrual of a made-up event of its own (`program.of_an_event`); a customer or invoice given
    replaces the made-up one."""
    return journal.transfer("accrual", chart.EXPENSE_COMMISSION, chart.pending(partner_id), currency, amount,
                            effective_at_us=at(day), idempotency_key=key, partner_id=partner_id,
                            **{**program.of_an_event(key, partner_id), **source})


def book(database) -> None:
    """Two partners, USD and EUR, January to March: accruals of sources given and of made-up ones, a
    release, an accrual with an amount that is not a whole unit; northwind's EUR has lines in
    January only, so February and March open and close on it with no lines; contoso has nothing in
    February. Northwind's March accrual names a customer whose id holds each character an id may hold
    besides letters and digits (`CUSTOMER`)."""
    with database.transaction() as session:
        for partner_id in PARTNERS:
            program.enrol(session, partner_id)
        journal.post(session, [
            accrual("northwind", "USD", 10_000, "2026-01-10", "a1", customer_id="acme", invoice_id="inv-1"),
            accrual("northwind", "EUR", 7_001, "2026-01-11", "a2"),
            accrual("contoso", "USD", 333, "2026-01-12", "a3", customer_id="globex-corp"),
            accrual("northwind", "USD", 20_000, "2026-02-10", "a4"),
            accrual("northwind", "USD", 5, "2026-03-10", "a5", customer_id=CUSTOMER, invoice_id="inv-5"),
            accrual("contoso", "EUR", 12_345, "2026-03-11", "a6")])
        journal.post(session, [journal.transfer("release", chart.pending("northwind"), chart.available("northwind"),
                                                "USD", 10_000, effective_at_us=at("2026-02-09"),
                                                idempotency_key="r1", partner_id="northwind", accrual_id=1,
                                                customer_id="acme", invoice_id="inv-1")])
        for period in CLOSED:
            periods.close_period(session, period, now_us=at("2026-04-02"))


@pytest.fixture
def closed(database):
    book(database)
    return database


def bodies(database) -> list[tuple]:
    with database.reader() as session:
        return session.execute(sa.text(
            "SELECT period, partner_id, currency, CAST(lines AS TEXT), CAST(totals AS TEXT), pending_minor,"
            " available_minor FROM statement_bodies ORDER BY period, partner_id, currency")).all()


def test_a_close_writes_each_partners_lines_of_its_period_as_the_api_writes_them(closed):
    found = bodies(closed)
    assert [row[:3] for row in found] == [
        ("2026-01", "contoso", "USD"), ("2026-01", "northwind", "EUR"), ("2026-01", "northwind", "USD"),
        ("2026-02", "northwind", "USD"),
        ("2026-03", "contoso", "EUR"), ("2026-03", "northwind", "USD")]
    february = found[3]
    assert json.loads(february[3]) == [
        {"transaction_id": 7, "effective_at": "2026-02-09T00:00:00Z", "original_effective_at": None,
         "kind": "release", "customer_id": "acme", "invoice_id": "inv-1", "event_id": None, "pending": "-100.00",
         "available": "100.00"},
        {"transaction_id": 4, "effective_at": "2026-02-10T00:00:00Z", "original_effective_at": None,
         "kind": "accrual", "customer_id": "northwind-customer", "invoice_id": "a4-invoice", "event_id": "a4-event",
         "pending": "200.00", "available": "0.00"}]
    assert json.loads(february[4]) == {"accrual": "200.00", "release": "0.00"}
    assert february[5:] == (10_000, 10_000)
    assert json.loads(found[5][3])[0]["customer_id"] == CUSTOMER
    assert f'"customer_id":"{CUSTOMER}"' in found[5][3]  # written as it is, "/" too


def test_a_close_writes_its_bodies_a_few_at_a_time_while_it_reads_the_documents(database, monkeypatch):
    # Two to an insert, one document a fetch: the inserts come between the fetches of one cursor.
    monkeypatch.setattr(statement_bodies, "_BODIES_PER_INSERT", 2)
    monkeypatch.setattr(statement_bodies, "_DOCUMENTS_PER_FETCH", 1)
    book(database)
    assert [row[:3] for row in bodies(database) if row[0] == "2026-01"] == [
        ("2026-01", "contoso", "USD"), ("2026-01", "northwind", "EUR"), ("2026-01", "northwind", "USD")]
    assert named(database) == []


def test_a_closed_months_statement_is_served_from_its_bodies_as_written_line_by_line(closed):
    with closed.reader() as session:
        for partner_id in PARTNERS:
            for period in CLOSED:
                assert statement_bodies.stored(session, partner_id, period) is not None
                served = statement_json(session, partner_id, period)
                assert served == to_json(statement(session, partner_id, period)), (partner_id, period)
        shown = json.loads(statement_json(session, "northwind", "2026-03"))
    # EUR: January's balance carried through March, which has no EUR line.
    assert [(s["currency"], s["opening"], len(s["lines"]), s["totals"], s["closing"]) for s in shown["currencies"]] == [
        ("EUR", {"pending": "70.01", "available": "0.00"}, 0, {}, {"pending": "70.01", "available": "0.00"}),
        ("USD", {"pending": "200.00", "available": "100.00"}, 1, {"accrual": "0.05"},
         {"pending": "200.05", "available": "100.00"})]
    assert shown["period_status"] == "closed" and len(shown["close_hash"]) == 64


def test_a_partner_with_no_lines_in_a_closed_month_gets_its_balances_and_no_lines(closed):
    with closed.reader() as session:
        assert statement_bodies.stored(session, "contoso", "2026-02") == {}
        shown = json.loads(statement_json(session, "contoso", "2026-02"))
        assert shown == json.loads(to_json(statement(session, "contoso", "2026-02")))
    assert [(s["currency"], s["lines"], s["closing"]) for s in shown["currencies"]] == [
        ("USD", [], {"pending": "3.33", "available": "0.00"})]


def test_a_month_before_the_first_close_is_served_closed_with_no_close_of_its_own(closed):
    with closed.reader() as session:
        served = statement_json(session, "northwind", "2025-12")
        assert served == to_json(statement(session, "northwind", "2025-12"))
    assert json.loads(served) == {"partner_id": "northwind", "period": "2025-12", "period_status": "closed",
                                  "close_hash": None, "currencies": []}


@pytest.mark.usefixtures("closed_before_bodies")
def test_a_month_closed_without_bodies_is_written_from_its_documents(database):
    book(database)
    assert bodies(database) == []
    with database.reader() as session:
        assert statement_bodies.stored(session, "northwind", "2026-02") is None
        served = statement_json(session, "northwind", "2026-02")
        assert served == to_json(statement(session, "northwind", "2026-02"))
        assert program.verified(session) == []
    assert [line["transaction_id"] for line in json.loads(served)["currencies"][1]["lines"]] == [7, 4]


def test_an_open_months_statement_is_read_from_the_journal(closed):
    with closed.transaction() as session:
        journal.post(session, [accrual("northwind", "USD", 1, "2026-04-03", "a7")])
    with closed.reader() as session:
        served = json.loads(statement_json(session, "northwind", "2026-04"))
    assert served["period_status"] == "open"
    assert [line["pending"] for section in served["currencies"] for line in section["lines"]] == ["0.01"]


# The database's rules, raw SQL going around Python.

BODY = ("INSERT INTO statement_bodies (period, partner_id, currency, lines, totals, pending_minor, available_minor)"
        " VALUES (:period, :partner, :currency, :lines, :totals, 0, 0)")
ONE_LINE = '[{"transaction_id": 6}]'


def refused(database, sql: str, match: str, **params) -> None:
    with pytest.raises(sa.exc.DBAPIError, match=match):
        with database.engine.begin() as connection:
            connection.execute(sa.text(sql), params)


def test_bodies_refuse_update_and_delete(closed):
    for sql in ("UPDATE statement_bodies SET lines = '[]'", "UPDATE statement_bodies SET pending_minor = 1",
                "DELETE FROM statement_bodies WHERE period = '2026-03'"):
        refused(closed, sql, "statement_bodies is append-only")
    assert len(bodies(closed)) == 6


@pytest.mark.parametrize("period", ["2026-02", "2026-04"], ids=["an-earlier-closed-period", "the-open-period"])
def test_the_database_refuses_a_body_not_of_the_latest_closed_period(closed, period):
    refused(closed, BODY, "must be of the latest closed period", period=period, partner="northwind", currency="USD",
            lines='[{"transaction_id": 7}, {"transaction_id": 4}]', totals="{}")


@pytest.mark.parametrize(("partner", "currency", "lines"), [
    ("contoso", "USD", ONE_LINE),  # contoso has no USD line in March: no document
    ("northwind", "EUR", ONE_LINE),
    ("contoso", "EUR", "[]"),  # its document holds one line
    ("contoso", "EUR", '[{"a": 1}, {"b": 2}]'),
    ("contoso", "EUR", '{"transaction_id": 6}'),
    ("contoso", "EUR", "[1"),
], ids=["no-document", "no-document-in-that-currency", "no-lines", "more-lines", "an-object", "not-json"])
def test_the_database_refuses_a_body_unlike_its_document(closed, partner, currency, lines):
    with behind_the_triggers(closed) as execute:  # March's body of contoso's EUR taken out first
        execute("DELETE FROM statement_bodies WHERE period = '2026-03' AND partner_id = 'contoso'")
    refused(closed, BODY, "as many lines as the document|invalid input syntax for type json", period="2026-03",
            partner=partner, currency=currency, lines=lines, totals="{}")
    with closed.engine.begin() as connection:  # while one like it is taken
        connection.execute(sa.text(BODY), {"period": "2026-03", "partner": "contoso", "currency": "EUR",
                                           "lines": ONE_LINE, "totals": "{}"})


@pytest.mark.parametrize("totals", ["[]", "5", "{"], ids=["an-array", "a-number", "not-json"])
def test_the_database_refuses_totals_that_are_not_a_json_object(closed, totals):
    with behind_the_triggers(closed) as execute:
        execute("DELETE FROM statement_bodies WHERE period = '2026-03' AND partner_id = 'contoso'")
    refused(closed, BODY, "CHECK constraint failed|violates check constraint|invalid input syntax for type json",
            period="2026-03", partner="contoso", currency="EUR", lines=ONE_LINE, totals=totals)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_refuses_sums_that_are_not_integers_and_a_replaced_body(closed):
    with behind_the_triggers(closed) as execute:
        execute("DELETE FROM statement_bodies WHERE period = '2026-03' AND partner_id = 'contoso'")
    refused(closed, BODY.replace("0, 0)", "0.5, 0)"), "CHECK constraint failed", period="2026-03", partner="contoso",
            currency="EUR", lines=ONE_LINE, totals="{}")
    refused_without_recursive_triggers(closed, BODY.replace("INSERT", "INSERT OR REPLACE").replace(
        ":period", "'2026-03'").replace(":partner", "'northwind'").replace(":currency", "'USD'").replace(
        ":lines", f"'{ONE_LINE}'").replace(":totals", "'{}'"), "statement_bodies is append-only: REPLACE refused")


# What verify names, rows altered behind the triggers' back.

def named(database) -> list[tuple[int | None, str]]:
    """What verify names, less what it says of the accruals' made-up events."""
    with database.reader() as session:
        report = verify(session)
    assert report.ok is (not report.problems)
    return [(p.transaction_id, p.message) for p in program.besides_made_up_events(report.problems)]


def test_verify_passes_the_bodies_as_the_close_wrote_them(closed):
    assert named(closed) == []


SET_FIRST_PENDING = {
    False: "UPDATE statement_bodies SET lines = json_set(lines, '$[1].pending', '200.01') "
           "WHERE period = '2026-02'",
    True: "UPDATE statement_bodies SET lines = jsonb_set(lines::jsonb, '{1,pending}', '\"200.01\"')::json "
          "WHERE period = '2026-02'",
}


def test_verify_names_the_first_line_a_body_does_not_write_as_the_journal_gives_it(closed):
    with behind_the_triggers(closed) as execute:
        execute(SET_FIRST_PENDING[closed.engine.dialect.name == "postgresql"])
    assert named(closed) == [(4, "period 2026-02: partner northwind's USD statement line for transaction 4 is not "
                                 "written as the journal gives it")]


@pytest.mark.parametrize("change", [
    "SET totals = '{\"accrual\": \"200.01\", \"release\": \"0.00\"}'", "SET available_minor = 10001",
    "SET pending_minor = 0"], ids=["totals", "available", "pending"])
def test_verify_names_totals_or_sums_a_body_does_not_hold_as_its_lines_give_them(closed, change):
    with behind_the_triggers(closed) as execute:
        execute(f"UPDATE statement_bodies {change} WHERE period = '2026-02'")
    assert named(closed) == [(None, "period 2026-02: partner northwind's USD statement totals or sums are not "
                                    "written as the journal's lines give them")]


def test_verify_names_a_body_with_a_line_the_journal_does_not_give_or_one_short(closed):
    with behind_the_triggers(closed) as execute:
        execute({False: "UPDATE statement_bodies SET lines = json_remove(lines, '$[0]') WHERE period = '2026-02'",
                 True: "UPDATE statement_bodies SET lines = (lines::jsonb - 0)::json WHERE period = '2026-02'"
                 }[closed.engine.dialect.name == "postgresql"])
        execute({False: "UPDATE statement_bodies SET lines = json_insert(lines, '$[#]', json(lines -> 0)) "
                        "WHERE period = '2026-01' AND currency = 'EUR'",
                 True: "UPDATE statement_bodies SET lines = (lines::jsonb || jsonb_build_array(lines::jsonb -> 0))"
                       "::json WHERE period = '2026-01' AND currency = 'EUR'"}[closed.engine.dialect.name
                                                                             == "postgresql"])
    assert named(closed) == [
        (2, "period 2026-01: partner northwind's EUR statement line for transaction 2 is not written as the journal "
            "gives it"),
        (7, "period 2026-02: partner northwind's USD statement line for transaction 7 is not written as the journal "
            "gives it")]


def test_verify_names_a_body_the_journal_gives_no_lines_for_and_bodies_of_a_period_not_closed(closed):
    with behind_the_triggers(closed) as execute:
        execute("INSERT INTO statement_bodies VALUES ('2026-02', 'contoso', 'USD', '[]', '{}', 0, 0)")
        execute("INSERT INTO statement_bodies VALUES ('2026-04', 'contoso', 'USD', '[]', '{}', 0, 0)")
    assert named(closed) == [  # (the second names a close that is not there)
        (None, "statement_bodies (period): 1 row names a row of period_closes that does not exist, the least "
               "'2026-04'"),
        (None, "period 2026-02: partner contoso's USD statement lines are written where the journal gives none"),
        (None, "period 2026-04: statement bodies are stored, and the period is not closed")]


def test_a_body_written_otherwise_with_its_lines_alike_is_named_and_verify_goes_on(closed):
    """A space added to the lines' JSON made them alike one by one and unlike as written: verify
    stopped there with an IndexError, and named nothing else (a running total moved, below)."""
    with behind_the_triggers(closed) as execute:
        execute({False: "UPDATE statement_bodies SET lines = replace(lines, '\"kind\":', '\"kind\": ') "
                        "WHERE period = '2026-02'",
                 True: "UPDATE statement_bodies SET lines = replace(lines::text, '\"kind\":', '\"kind\": ')::json "
                       "WHERE period = '2026-02'"}[closed.engine.dialect.name == "postgresql"])
        execute("UPDATE account_totals SET credit_minor = credit_minor + 1 WHERE account_id = (SELECT id FROM "
                "accounts WHERE name = 'liability:partner:contoso:pending') AND currency = 'USD'")
    with closed.reader() as session:
        problems = program.verified(session)
    assert [(p.transaction_id, p.code) for p in problems] == [(None, "statement_line_altered"),
                                                              (None, "totals_mismatch")], problems
    assert "period 2026-02: partner northwind's USD statement" in problems[0].message


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # PostgreSQL's json column takes JSON only
def test_a_body_that_is_not_json_is_named_as_such(closed):
    with behind_the_triggers(closed) as execute:
        execute("UPDATE statement_bodies SET lines = '[{' WHERE period = '2026-03' AND partner_id = 'contoso'")
    assert named(closed) == [(None, "period 2026-03: partner contoso's EUR statement lines as written are not a "
                                    "JSON array of lines")]


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_on_postgresql_the_lines_are_compressed_with_lz4_where_the_server_has_it(closed):
    with behind_the_triggers(closed) as execute:  # lines long enough to be compressed
        execute("INSERT INTO statement_bodies VALUES ('2026-02', 'contoso', 'USD',"
                " CAST('[' || repeat('{\"transaction_id\": 1}, ', 20000) || '1]' AS json), '{}', 0, 0)")
    with closed.reader() as session:
        built = session.execute(sa.text(revision("0035_statement_bodies.py").LZ4_BUILT)).scalar()
        method = session.execute(sa.text("SELECT pg_column_compression(lines) FROM statement_bodies"
                                         " WHERE period = '2026-02' AND partner_id = 'contoso'")).scalar()
    assert method == ("lz4" if built else "pglz")
