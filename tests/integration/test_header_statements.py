"""The journal's header rules hold for every shape of statement a writer can send, on both engines.

PostgreSQL checks a statement's new headers once, after the statement (migration 0032's one
statement trigger over them); SQLite row by row. A rule checked only for the first header of a
statement, or only for a statement of one header, would pass a batch: so each rule is broken here
by the last header of a multi-row INSERT that mixes kinds (an accrual, a reversal, the header that
breaks it), by the last of ten thousand headers written as one COPY, and by a header whose lines
would only come in a later statement."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from ledger import accounts as chart
from ledger import journal
from tests import program
from tests.integration.test_database_guards import account_ids, head_hash, insert_line

HEADER_COLUMNS = ("id", "kind", "effective_at_us", "recorded_at_us", "idempotency_key", "request_hash", "prev_hash",
                  "hash", "reverses_id", "partner_id", "accrual_id", "plan_version_id", "customer_id", "invoice_id",
                  "event_id")


def insert_headers(connection, headers: list[dict]) -> None:
    """The headers in one multi-row INSERT, each sealing the lines written before it."""
    values = ", ".join("(" + ", ".join(f":{column}_{index}" for column in HEADER_COLUMNS) + ")"
                       for index, _ in enumerate(headers))
    params = {f"{column}_{index}": header.get(column) for index, header in enumerate(headers)
              for column in HEADER_COLUMNS}
    connection.execute(sa.text(f"INSERT INTO journal_transactions ({', '.join(HEADER_COLUMNS)}) VALUES {values}"),
                       params)


def header(transaction_id: int, prev_hash: str, **fields) -> dict:
    """By default an accrual of northwind, as `booked`'s (an accrual names its partner: migration 0047);
    a commission or clawback of an event of its own (migration 0064) unless `fields` name others."""
    key = f"raw-{transaction_id}"
    links = (program.of_an_event(key, fields.get("partner_id", "northwind"))
             if fields.get("kind", "accrual") in journal.OF_AN_EVENT else {})
    return {"id": transaction_id, "kind": "accrual", "effective_at_us": 5, "recorded_at_us": 1,
            "idempotency_key": key, "request_hash": "f" * 64, "prev_hash": prev_hash,
            "hash": "f" * 64, "partner_id": "northwind", **links, **fields}


def lines_of_the_last(connection, breaks: str) -> dict:
    """Writes the lines of header 4 as `breaks` has them, and returns that header's own fields."""
    expense, pending = account_ids(connection)
    if breaks == "too_few":
        insert_line(connection, 4, expense, "D", 100)
        return {}
    if breaks == "at_most_100":
        for _ in range(100):
            insert_line(connection, 4, expense, "D", 1)
        insert_line(connection, 4, pending, "C", 100)
        return {}
    # An accrual of ghost moves money to ghost's pending account (migration 0047), and so to no other
    # partner's; the header naming another partner's account is a reversal of header 2 naming globex:
    # an accrual on another partner's account breaks 0047's rule as well, which SQLite checks first.
    ghost = connection.execute(sa.text("SELECT id FROM accounts WHERE name = :name"),
                               {"name": chart.pending("ghost")}).scalar_one()
    debit, credit = {"not_enrolled": (expense, ghost), "others": (pending, expense)}.get(breaks, (expense, pending))
    insert_line(connection, 4, debit, "D", 100, at=6 if breaks == "moved" else 5)
    insert_line(connection, 4, credit, "C", 99 if breaks == "unbalanced" else 100)
    return {"version": {"plan_version_id": 999_999}, "not_enrolled": {"partner_id": "ghost"},
            "others": {"kind": "reversal", "reverses_id": 2, "partner_id": "globex"}, "chain": {"prev_hash": "a" * 64},
            "piece": {"kind": "clawback", "partner_id": "northwind"}}.get(breaks, {})


BROKEN_BY_THE_LAST = {
    "nothing": None,
    "too_few": "a transaction needs two or more lines",
    "at_most_100": "a transaction has at most 100 lines",
    "unbalanced": "debits do not equal credits per currency",
    "moved": "every line carries its transaction's effective instant",
    "version": "a transaction names a plan version that exists",
    "not_enrolled": "a transaction names a partner of the program",
    "others": "a transaction posts to the accounts of the partner it names",
    "chain": "the sequence continues the hash chain without a gap",
    "piece": "a clawback or release names a live accrual",
}


@pytest.mark.parametrize("breaks", BROKEN_BY_THE_LAST)
def test_a_rule_broken_by_the_last_header_of_a_statement_mixing_kinds_refuses_the_statement(booked, breaks):
    with booked.transaction() as session:
        program.enrol(session, "globex")
        chart.account_ids(session, [chart.pending("ghost")])  # for an accrual of ghost, never enrolled

    def three_headers(connection) -> None:
        expense, pending = account_ids(connection)
        insert_line(connection, 2, expense, "D", 100)
        insert_line(connection, 2, pending, "C", 100)
        insert_line(connection, 3, pending, "D", 100)
        insert_line(connection, 3, expense, "C", 100)
        last = lines_of_the_last(connection, breaks)
        chain = "f" * 64
        insert_headers(connection, [header(2, head_hash(connection), partner_id="northwind"),
                                    header(3, chain, kind="reversal", reverses_id=1),
                                    {**header(4, chain), **last}])

    message = BROKEN_BY_THE_LAST[breaks]
    if message is None:
        with booked.engine.begin() as connection:
            three_headers(connection)
        with booked.engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM journal_transactions").scalar_one() == 4
        return
    with pytest.raises(sa.exc.DBAPIError, match=message.replace("'", ".")):
        with booked.engine.begin() as connection:
            three_headers(connection)
    with booked.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM journal_transactions").scalar_one() == 1


def test_a_header_whose_lines_would_come_in_a_later_statement_is_refused_by_its_own_statement(booked):
    """The rules are checked at the end of the header's statement, not deferred to the commit: the
    lines a later statement would add are never waited for (and could not be added to it, sealed)."""
    with booked.engine.connect() as connection, connection.begin():
        with pytest.raises(sa.exc.DBAPIError, match="a transaction needs two or more lines"):
            insert_headers(connection, [header(2, head_hash(connection))])
    with booked.engine.connect() as connection, connection.begin():
        connection.exec_driver_sql("SAVEPOINT lines_later")
        with pytest.raises(sa.exc.DBAPIError, match="sealed"):
            insert_line(connection, 1, account_ids(connection)[0], "D", 100)
    if booked.engine.dialect.name == "postgresql":
        with booked.engine.connect() as connection:
            deferrable = connection.exec_driver_sql(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'journal_transactions'::regclass"
                " AND NOT tgisinternal AND (tgdeferrable OR tgconstraint <> 0)").scalar_one()
        assert deferrable == 0


def ten_thousand_accruals(last_partner_id: str) -> list[journal.Draft]:
    return [journal.transfer("accrual", chart.EXPENSE_COMMISSION, chart.pending(partner_id), "USD", 100,
                             effective_at_us=5, idempotency_key=f"batch-{index}", partner_id=partner_id,
                             **program.of_an_event(f"batch-{index}", partner_id))
            for index, partner_id in enumerate(["northwind"] * 9_999 + [last_partner_id])]


def test_the_last_of_ten_thousand_headers_written_in_one_copy_is_held_to_the_rules(booked):
    """A batch of 10,000 postings is one COPY of headers on PostgreSQL (`ledger.db.COPY_ROWS_MIN`),
    checked by one call of the statement trigger: its last header, for a partner never enrolled, is
    refused with the batch, and the same batch for northwind alone is written."""
    with pytest.raises(sa.exc.DBAPIError, match="a transaction names a partner of the program"):
        with booked.transaction() as session:
            journal.post(session, ten_thousand_accruals("ghost"))
    with booked.transaction() as session:
        posted = journal.post(session, ten_thousand_accruals("northwind"))
    assert len(posted) == 10_000
    with booked.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM journal_transactions").scalar_one() == 10_001
        assert connection.execute(sa.text("SELECT count(*) FROM accounts WHERE name = :name"),
                                  {"name": chart.pending("ghost")}).scalar_one() == 0
