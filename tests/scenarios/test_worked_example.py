"""The public worked example of DESIGN.md ("Commission mechanics"), on SQLite and PostgreSQL:
accruals, releases at maturity, payout runs (ledger.payouts), and the refund clawed back from
available after the payout, row by row as the contract's table gives them; and its statements,
every line traced to its customer, invoice and event."""

import pytest

from ledger import holds, payouts
from ledger.balances import all_balances
from tests.scenarios.books import Books, at, commissions
from tests.scenarios.closing import close, section, statement


def payout_run(books: Books, instant: str, *, settle: bool = True) -> list[tuple[str, str, int]]:
    with books.database.transaction() as session:
        run = payouts.run_payouts(session, at(instant))
        for payout in run.payouts:
            if settle:
                payouts.settle(session, payout.id)
    return [(p.partner_id, p.currency, p.amount_minor) for p in run.payouts]


@pytest.fixture
def northwind(database) -> Books:
    books = Books(database)
    books.plan("msp-standard", "0.20", duration_months=12, hold_days=30, min_payout={"USD": "50.00"},
               negative_balance="carry_forward")
    books.partner("northwind", "msp-standard", type="msp")
    books.attribute("acme", "northwind", "2026-01-15")
    return books


def test_the_worked_example_runs_row_by_row_as_the_contract_table_says(northwind):
    books = northwind
    first = books.paid("acme", "inv-1", "500.00", "2026-01-20")
    assert (first.status, commissions(first)) == ("posted", [("northwind", "accrual", 10_000)])
    assert books.balance_just_after("northwind", "2026-01-20") == (10_000, 0)

    assert books.release("2026-02-19") == 1
    assert books.balance("northwind", before="2026-02-19") == (10_000, 0)
    assert books.balance_just_after("northwind", "2026-02-19") == (0, 10_000)

    second = books.paid("acme", "inv-2", "500.00", "2026-02-20")
    assert commissions(second) == [("northwind", "accrual", 10_000)]
    assert books.balance_just_after("northwind", "2026-02-20") == (10_000, 10_000)

    assert payout_run(books, "2026-03-01") == [("northwind", "USD", 10_000)]
    assert books.balance_just_after("northwind", "2026-03-01") == (10_000, 0)

    refund = books.refund("acme", "inv-1", "200.00", "2026-03-05")
    assert (refund.status, commissions(refund)) == ("posted", [("northwind", "clawback", -4_000)])
    assert books.balance_just_after("northwind", "2026-03-05") == (10_000, -4_000)

    assert books.release("2026-03-22") == 1
    assert books.balance("northwind", before="2026-03-22") == (10_000, -4_000)
    assert books.balance_just_after("northwind", "2026-03-22") == (0, 6_000)

    assert payout_run(books, "2026-04-01") == [("northwind", "USD", 6_000)]
    assert books.balance_just_after("northwind", "2026-04-01") == (0, 0)
    assert books.trial_balance_is_zero() and books.verified()


def test_the_clawback_after_release_debits_available_and_credits_commission_expense(northwind):
    books = northwind
    books.paid("acme", "inv-1", "500.00", "2026-01-20")
    books.release("2026-02-19")
    [clawback_id] = books.refund("acme", "inv-1", "200.00", "2026-03-05").transaction_ids
    lines = books.sql("SELECT a.name, l.side, l.amount_minor, l.effective_at_us FROM journal_lines l "
                      "JOIN accounts a ON a.id = l.account_id WHERE l.transaction_id = :t ORDER BY l.side DESC",
                      t=clawback_id)
    assert [tuple(row) for row in lines] == [
        ("liability:partner:northwind:available", "D", 4_000, at("2026-03-05")),
        ("expense:commission", "C", 4_000, at("2026-03-05")),
    ]


def test_a_release_job_that_runs_late_still_releases_at_the_maturity_instant(northwind):
    books = northwind
    books.paid("acme", "inv-1", "500.00", "2026-01-20")
    assert books.release("2026-02-18T23:59:59.999999Z") == 0
    assert books.release("2026-03-01") == 1
    assert books.release("2026-03-01") == 0  # a rerun posts nothing twice
    assert books.balance("northwind", before="2026-02-19") == (10_000, 0)
    assert books.balance_just_after("northwind", "2026-02-19") == (0, 10_000)


def test_at_every_instant_of_the_example_the_trial_balance_is_zero_per_currency(northwind):
    books = northwind
    books.paid("acme", "inv-1", "500.00", "2026-01-20")
    books.release("2026-02-19")
    books.paid("acme", "inv-2", "500.00", "2026-02-20")
    payout_run(books, "2026-03-01")
    books.refund("acme", "inv-1", "200.00", "2026-03-05")
    books.release("2026-03-22")
    payout_run(books, "2026-04-01", settle=False)
    with books.database.reader() as session:
        for day in ("2026-01-20", "2026-02-19", "2026-02-20", "2026-03-01", "2026-03-05", "2026-03-22", "2026-04-01"):
            rows = all_balances(session, before_us=at(day) + 1)
            assert sum(d for d, _ in rows.values()) == sum(c for _, c in rows.values()), day
        rows = all_balances(session)
    assert rows[("expense:commission", "USD")] == (20_000, 4_000)
    assert rows[("asset:cash", "USD")] == (0, 10_000)
    assert rows[("liability:payouts:in_transit", "USD")] == (10_000, 16_000)  # 60.00 sent, not yet settled


def traced(books: Books, period: str) -> list[tuple]:
    """(kind, customer, invoice, event) of each line of northwind's statement for `period`."""
    lines = section(statement(books.database, "northwind", period))["lines"]
    return [(line["kind"], line["customer_id"], line["invoice_id"], line["event_id"]) for line in lines]


def test_the_example_statements_trace_every_line_to_its_customer_invoice_and_event(northwind):
    # No release job runs at 2026-02-19: the payout run of 2026-03-01 releases inv-1 before it pays,
    # and the hourly job's run releases inv-2. Each release names the payment that accrued it.
    books = northwind
    books.paid("acme", "inv-1", "500.00", "2026-01-20", event_id="evt-inv-1")
    books.paid("acme", "inv-2", "500.00", "2026-02-20", event_id="evt-inv-2")
    assert payout_run(books, "2026-03-01") == [("northwind", "USD", 10_000)]
    books.refund("acme", "inv-1", "200.00", "2026-03-05", event_id="evt-refund-1")
    assert holds.release_in_transactions(books.database.transaction, at("2026-03-22")) == 1
    expected = {
        "2026-01": [("accrual", "acme", "inv-1", "evt-inv-1")],
        "2026-02": [("release", "acme", "inv-1", "evt-inv-1"), ("accrual", "acme", "inv-2", "evt-inv-2")],
        "2026-03": [("payout", None, None, None), ("clawback", "acme", "inv-1", "evt-refund-1"),
                    ("release", "acme", "inv-2", "evt-inv-2")],
    }
    assert {period: traced(books, period) for period in expected} == expected
    for period, now in (("2026-01", "2026-02-01"), ("2026-02", "2026-03-01"), ("2026-03", "2026-04-01")):
        close(books.database, period, now=now)
    assert {period: traced(books, period) for period in expected} == expected  # as the closes stored them
    assert books.verified()
