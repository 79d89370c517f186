"""Periods, payouts, adjustments and liabilities as finance lives them, on SQLite and PostgreSQL:
DESIGN.md's worked example month by month with its statements, the two negative-balance policies,
late events after a close, the rules of closing, payout thresholds and resolutions, adjustments.
"""

import pytest

from ledger import accounts as chart
from ledger import journal, payouts, periods, reports, statements
from ledger.errors import Conflict, InvalidInput, NotFound
from ledger.instants import format_instant
from ledger.revenue import Outcome
from ledger.verify import verify
from tests.scenarios.books import Books, at
from tests.scenarios.closing import (
    adjust,
    close,
    fail,
    frozen,
    lines_of,
    run,
    section,
    settle,
    statement,
    summary,
    transaction_count,
    transactions,
    worked_example_program,
)


# Rules decided in Python over the same queries as their neighbours run on SQLite alone, to keep the
# suite fast; everything that reads or writes the books in a new way runs on both engines.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def verified(books: Books) -> None:
    with books.database.reader() as session:
        report = verify(session)
    assert report.problems == [] and report.ok
    assert books.trial_balance_is_zero()


# ---- the worked example, month by month ----

@pytest.mark.parametrize("policy", ["carry_forward", "reset"])
def test_the_worked_example_closes_each_month_with_the_statements_design_gives(database, policy):
    # Under `reset` everything is the same: available is never negative when a period closes
    # (it is -40.00 only between the 2026-03-05 clawback and the 2026-03-22 release).
    books = worked_example_program(database, policy)
    books.paid("acme", "inv-1", "500.00", "2026-01-20", event_id="evt-inv-1")
    january = close(database, "2026-01", now="2026-02-01")
    assert (january.period, january.transaction_count) == ("2026-01", 1)
    assert summary(database, "northwind", "2026-01") == (
        ("0.00", "0.00"), [("accrual", "100.00", "0.00")], ("100.00", "0.00"))

    books.paid("acme", "inv-2", "500.00", "2026-02-20", event_id="evt-inv-2")
    february = close(database, "2026-02", now="2026-03-01")  # the close releases inv-1 (matured 2026-02-19)
    assert february.transaction_count == 2 and february.prev_close_hash == january.close_hash
    assert summary(database, "northwind", "2026-02") == (
        ("100.00", "0.00"), [("release", "-100.00", "100.00"), ("accrual", "100.00", "0.00")],
        ("100.00", "100.00"))
    assert [line["event_id"] for line in section(statement(database, "northwind", "2026-02"))["lines"]] == [
        "evt-inv-1", "evt-inv-2"]  # the release names the payment that accrued it

    march_run = run(database, "2026-03-01")
    assert [(p.partner_id, p.amount_minor, p.status) for p in march_run.payouts] == [("northwind", 10_000, "pending")]
    settle(database, march_run.payouts[0].id, "2026-03-02")
    books.refund("acme", "inv-1", "200.00", "2026-03-05")
    close(database, "2026-03", now="2026-04-01")  # the close releases inv-2 (matured 2026-03-22)
    march = section(statement(database, "northwind", "2026-03"))
    assert summary(database, "northwind", "2026-03") == (
        ("100.00", "100.00"),
        [("payout", "0.00", "-100.00"), ("clawback", "0.00", "-40.00"), ("release", "-100.00", "100.00")],
        ("0.00", "60.00"))
    assert march["totals"] == {"clawback": "-40.00", "payout": "-100.00", "release": "0.00"}
    clawback = march["lines"][1]
    assert (clawback["customer_id"], clawback["invoice_id"], clawback["effective_at"]) == (
        "acme", "inv-1", "2026-03-05T00:00:00Z")
    release = march["lines"][2]
    assert (release["customer_id"], release["invoice_id"], release["event_id"]) == ("acme", "inv-2", "evt-inv-2")

    april_run = run(database, "2026-04-01")
    assert [(p.amount_minor, p.status) for p in april_run.payouts] == [(6_000, "pending")]
    assert summary(database, "northwind", "2026-04") == (
        ("0.00", "60.00"), [("payout", "0.00", "-60.00")], ("0.00", "0.00"))
    assert transactions(database, "kind = 'writeoff'") == []
    verified(books)


@sqlite_only
def test_a_statement_renders_as_csv_and_text_with_opening_lines_and_closing(database):
    from ledger import statements

    books = worked_example_program(database)
    books.paid("acme", "inv-1", "500.00", "2026-01-20")
    close(database, "2026-01", now="2026-02-01")
    with database.reader() as session:
        january = statements.statement(session, "northwind", "2026-01")
    rows = [line.split(",") for line in statements.to_csv(january).splitlines()]
    assert rows[0] == list(statements.CSV_COLUMNS)
    assert [(row[3], row[7], row[11], row[12]) for row in rows[1:]] == [
        ("opening", "", "0.00", "0.00"), ("line", "accrual", "100.00", "0.00"), ("closing", "", "100.00", "0.00")]
    text = statements.to_text(january)
    assert f"(closed, close hash {january.close_hash})" in text
    [line] = [row.split() for row in text.splitlines() if row.split()[2:3] == ["accrual"]]
    assert line[3:5] == ["acme", "inv-1"], line
    assert "no balance" not in text
    # A partner with nothing in any currency: the text says so, rather than stopping at its heading.
    books.partner("quiet", "msp-standard")
    with database.reader() as session:
        quiet = statements.to_text(statements.statement(session, "quiet", "2026-01"))
    assert quiet.splitlines()[1:] == ["", "no balance and no lines in any currency"], quiet


# ---- negative balances: reset against carry_forward ----

def negative_at_the_end_of_february(database, policy: str) -> Books:
    """100.00 released and paid out in February, then a 40.00 clawback: available -40.00 at the
    end of February; then 150.00 earned in March, maturing 2026-04-01."""
    books = worked_example_program(database, policy)
    books.paid("acme", "inv-1", "500.00", "2026-01-20")
    close(database, "2026-01", now="2026-02-01")
    [payout] = run(database, "2026-02-20").payouts
    settle(database, payout.id, "2026-02-21")
    books.refund("acme", "inv-1", "200.00", "2026-02-25")
    close(database, "2026-02", now="2026-03-01")
    books.paid("acme", "inv-2", "750.00", "2026-03-02")
    close(database, "2026-03", now="2026-04-01")
    return books


def test_reset_writes_off_a_negative_available_balance_at_the_periods_last_instant(database):
    books = negative_at_the_end_of_february(database, "reset")
    [writeoff] = transactions(database, "kind = 'writeoff'")
    assert format_instant(writeoff.effective_at_us) == "2026-02-28T23:59:59.999999Z"
    assert lines_of(database, writeoff.id) == [
        (chart.EXPENSE_WRITEOFF, "D", 4_000), (chart.available("northwind"), "C", 4_000)]
    assert summary(database, "northwind", "2026-02") == (
        ("100.00", "0.00"),
        [("release", "-100.00", "100.00"), ("payout", "0.00", "-100.00"), ("clawback", "0.00", "-40.00"),
         ("writeoff", "0.00", "40.00")],
        ("0.00", "0.00"))
    assert summary(database, "northwind", "2026-03")[2] == ("150.00", "0.00")
    [payout] = run(database, "2026-04-01").payouts  # releases inv-2 first, then pays it in full
    assert payout.amount_minor == 15_000
    verified(books)


def test_carry_forward_keeps_a_negative_balance_and_nets_it_against_later_earnings(database):
    books = negative_at_the_end_of_february(database, "carry_forward")
    assert transactions(database, "kind = 'writeoff'") == []
    assert summary(database, "northwind", "2026-02")[2] == ("0.00", "-40.00")
    assert summary(database, "northwind", "2026-03") == (
        ("0.00", "-40.00"), [("accrual", "150.00", "0.00")], ("150.00", "-40.00"))
    [payout] = run(database, "2026-04-01").payouts
    assert payout.amount_minor == 11_000  # -40.00 + 150.00
    verified(books)


def test_reset_writes_off_only_what_is_still_negative_after_the_releases_the_close_posts(database):
    books = Books(database)
    books.plan("quick-reset", "0.20", hold_days=5, negative_balance="reset")
    books.partner("northwind", "quick-reset")
    books.attribute("acme", "northwind", "2026-01-15")
    books.paid("acme", "inv-1", "500.00", "2026-02-01")  # 100.00, matures 2026-02-06
    [payout] = run(database, "2026-02-10").payouts
    settle(database, payout.id, "2026-02-10")
    books.paid("acme", "inv-2", "150.00", "2026-02-20")  # 30.00, matures 2026-02-25; no job releases it
    books.refund("acme", "inv-1", "200.00", "2026-02-21")  # clawback 40.00 from available: -40.00
    close(database, "2026-02", now="2026-03-01")
    assert summary(database, "northwind", "2026-02")[1][-2:] == [
        ("release", "-30.00", "30.00"), ("writeoff", "0.00", "10.00")]
    assert summary(database, "northwind", "2026-02")[2] == ("0.00", "0.00")
    verified(books)



@sqlite_only
def test_the_write_off_follows_the_policy_of_the_plan_in_effect_at_the_periods_end_not_at_the_close(database):
    books = Books(database)
    books.plan("resetting", "0.20", negative_balance="reset")
    books.plan("carrying", "0.20", negative_balance="carry_forward")
    books.partner("was-reset", "resetting")
    books.partner("was-carried", "carrying")
    for partner_id in ("was-reset", "was-carried"):
        adjust(database, partner_id, "available", -4_000, effective_at="2026-01-10")
    books.change_plan("was-reset", "carrying", "2026-02-10")  # after January ended, before it is closed
    books.change_plan("was-carried", "resetting", "2026-02-10")
    close(database, "2026-01", now="2026-03-01")
    assert [row.partner_id for row in transactions(database, "kind = 'writeoff'")] == ["was-reset"]
    assert summary(database, "was-reset", "2026-01")[2] == ("0.00", "0.00")
    assert summary(database, "was-carried", "2026-01")[2] == ("0.00", "-40.00")



@sqlite_only
def test_reset_writes_off_a_negative_balance_of_one_minor_unit_and_leaves_zero_alone(database):
    books = Books(database)
    books.plan("resetting", "0.20", negative_balance="reset")
    books.partner("owes-a-cent", "resetting")
    books.partner("owes-nothing", "resetting")
    adjust(database, "owes-a-cent", "available", -1, effective_at="2026-01-10")
    adjust(database, "owes-nothing", "available", -1, effective_at="2026-01-10")
    adjust(database, "owes-nothing", "available", 1, effective_at="2026-01-11")
    close(database, "2026-01", now="2026-02-01")
    [writeoff] = transactions(database, "kind = 'writeoff'")
    assert writeoff.partner_id == "owes-a-cent"
    assert lines_of(database, writeoff.id) == [
        (chart.EXPENSE_WRITEOFF, "D", 1), (chart.available("owes-a-cent"), "C", 1)]


# ---- late events and reversals after a close ----

def test_late_revenue_events_post_at_the_first_open_period_and_never_change_a_closed_one(database):
    books = worked_example_program(database)
    early = books.event("invoice_paid", "acme", "inv-1", "500.00", "2026-01-20", event_id="evt-early")
    [first] = books.ingest(early)
    close(database, "2026-01", now="2026-02-05")
    before = frozen(database, "northwind", "2026-01")

    late_paid = books.event("invoice_paid", "acme", "inv-2", "250.00", "2026-01-25", event_id="evt-late-paid")
    late_refund = books.event("refund", "acme", "inv-1", "100.00", "2026-01-28", event_id="evt-late-refund")
    paid, refunded = books.ingest(late_paid, late_refund)
    assert [(line.kind, line.amount_minor) for line in paid.commissions + refunded.commissions] == [
        ("accrual", 5_000), ("clawback", -2_000)]
    moved = transactions(database, "id IN (:a, :b)", a=paid.transaction_ids[0], b=refunded.transaction_ids[0])
    assert [(row.kind, format_instant(row.effective_at_us), format_instant(row.original_effective_at_us))
            for row in moved] == [("accrual", "2026-02-01T00:00:00Z", "2026-01-25T00:00:00Z"),
                                  ("clawback", "2026-02-01T00:00:00Z", "2026-01-28T00:00:00Z")]
    # The hold runs from when the invoice was paid, not from where the posting landed.
    assert books.sql("SELECT matures_at_us FROM journal_transactions WHERE id = :t",
                     t=paid.transaction_ids[0])[0][0] == at("2026-02-24")
    assert frozen(database, "northwind", "2026-01") == before

    february = section(statement(database, "northwind", "2026-02"))
    assert [(line["kind"], line["effective_at"], line["original_effective_at"], line["event_id"])
            for line in february["lines"]] == [
        ("accrual", "2026-02-01T00:00:00Z", "2026-01-25T00:00:00Z", "evt-late-paid"),
        ("clawback", "2026-02-01T00:00:00Z", "2026-01-28T00:00:00Z", "evt-late-refund")]

    with database.reader() as session:
        text = statements.to_text(statements.statement(session, "northwind", "2026-02")).splitlines()
    table = text[text.index("USD") + 1:-1]  # header, opening, the two lines, closing: one width, nothing cut
    assert len({len(row) for row in table}) == 1 and len(table) == 5
    assert table[2].split() == ["2026-02-01", f"#{paid.transaction_ids[0]}", "accrual", "acme", "inv-2", "evt-late-paid",
                                "2026-01-25", "50.00", "0.00"]

    count = transaction_count(database)
    replays = books.ingest(early, late_paid, late_refund)
    assert all(isinstance(r, Outcome) and r.replayed for r in replays)
    assert [r.transaction_ids for r in replays] == [first.transaction_ids, paid.transaction_ids,
                                                    refunded.transaction_ids]
    assert transaction_count(database) == count
    assert frozen(database, "northwind", "2026-01") == before
    verified(books)


@sqlite_only
def test_a_reversal_of_a_transaction_in_a_closed_period_lands_at_the_first_open_periods_start(database):
    books = worked_example_program(database)
    [accrual_id] = books.paid("acme", "inv-1", "500.00", "2026-01-20").transaction_ids
    close(database, "2026-01", now="2026-02-05")
    before = frozen(database, "northwind", "2026-01")
    with database.transaction() as session:
        reversal = journal.reverse(session, accrual_id, reason="invoice booked to the wrong customer")
    [row] = transactions(database, "id = :t", t=reversal.id)
    assert (row.kind, format_instant(row.effective_at_us), format_instant(row.original_effective_at_us)) == (
        "reversal", "2026-02-01T00:00:00Z", "2026-01-20T00:00:00Z")
    assert frozen(database, "northwind", "2026-01") == before
    close(database, "2026-02", now="2026-03-01")  # a reversed accrual is never released
    assert summary(database, "northwind", "2026-02") == (
        ("100.00", "0.00"), [("reversal", "-100.00", "0.00")], ("0.00", "0.00"))
    verified(books)


# ---- the rules of closing ----

@sqlite_only
def test_a_period_that_has_not_ended_cannot_be_closed(database):
    books = worked_example_program(database)
    books.paid("acme", "inv-1", "500.00", "2026-01-20")
    with pytest.raises(Conflict, match="has not ended"):
        close(database, "2026-01", now="2026-01-31T23:59:59.999999Z")
    assert close(database, "2026-01", now="2026-02-01").period == "2026-01"  # its end is enough


@sqlite_only
def test_a_period_cannot_be_closed_twice(database):
    books = worked_example_program(database)
    books.paid("acme", "inv-1", "500.00", "2026-01-20")
    first = close(database, "2026-01", now="2026-02-01")
    with pytest.raises(Conflict, match="already closed"):
        close(database, "2026-01", now="2026-03-01")
    with database.reader() as session:
        assert periods.list_periods(session) == [first]


@sqlite_only
def test_a_period_cannot_be_closed_while_an_earlier_one_with_postings_is_open(database):
    books = worked_example_program(database)
    books.paid("acme", "inv-1", "500.00", "2026-02-10")
    books.paid("acme", "inv-2", "500.00", "2026-03-10")
    with pytest.raises(Conflict, match="period 2026-02 has postings and is open"):
        close(database, "2026-03", now="2026-04-01")
    with database.reader() as session:
        assert periods.list_periods(session) == []
    close(database, "2026-02", now="2026-04-01")
    assert close(database, "2026-03", now="2026-04-01").period == "2026-03"


@sqlite_only
@pytest.mark.parametrize("how", ["released first", "one transaction", "releases in transactions"])
def test_a_period_a_hold_matures_in_is_closed_first_whether_or_not_its_release_was_posted(database, how):
    books = worked_example_program(database)
    books.paid("acme", "inv-1", "500.00", "2026-01-20")  # matures 2026-02-19, in an otherwise empty February
    close(database, "2026-01", now="2026-03-01")
    if how == "released first":
        assert books.release("2026-02-20") == 1
    posted = books.sql("SELECT count(*) FROM journal_transactions")[0][0]
    with pytest.raises(Conflict, match="period 2026-02 "):
        if how == "releases in transactions":  # the API's and the command line's close
            periods.close_in_transactions(database.transaction, "2026-03")
        else:
            close(database, "2026-03", now="2026-04-01")
    assert books.sql("SELECT count(*) FROM journal_transactions")[0][0] == posted  # a refused close posts nothing
    close(database, "2026-02", now="2026-04-01")
    assert close(database, "2026-03", now="2026-04-01").transaction_count == 0
    verified(books)


@sqlite_only
def test_empty_earlier_periods_are_closed_along_with_the_target_in_one_chain(database):
    books = worked_example_program(database)
    books.paid("acme", "inv-1", "500.00", "2026-01-20")  # matures 2026-02-19: February is not empty
    close(database, "2026-01", now="2026-03-01")
    close(database, "2026-02", now="2026-03-01")
    books.paid("acme", "inv-2", "500.00", "2026-05-10")
    may = close(database, "2026-05", now="2026-06-01")
    with database.reader() as session:
        closes = periods.list_periods(session)
    assert [(c.period, c.transaction_count) for c in closes] == [
        ("2026-01", 1), ("2026-02", 1), ("2026-03", 0), ("2026-04", 0), ("2026-05", 1)]
    assert closes[-1] == may
    assert all(later.prev_close_hash == earlier.close_hash for earlier, later in zip(closes, closes[1:]))
    with pytest.raises(Conflict, match="lies before the latest closed period"):
        close(database, "2025-12", now="2026-06-01")
    verified(books)


@sqlite_only
def test_a_close_releases_the_holds_maturing_before_the_periods_end_and_not_at_it(database):
    books = Books(database)
    books.plan("short-hold", "0.20", hold_days=10)
    books.plan("month-hold", "0.20", hold_days=30)
    books.partner("quick", "short-hold")
    books.partner("slow", "month-hold")
    books.attribute("c-quick", "quick", "2026-01-01")
    books.attribute("c-slow", "slow", "2026-01-01")
    books.paid("c-quick", "inv-q", "500.00", "2026-01-20")  # matures 2026-01-30
    books.paid("c-slow", "inv-s", "500.00", "2026-01-02")  # matures 2026-02-01 00:00, February's first instant
    close(database, "2026-01", now="2026-02-01")
    assert summary(database, "quick", "2026-01") == (
        ("0.00", "0.00"), [("accrual", "100.00", "0.00"), ("release", "-100.00", "100.00")], ("0.00", "100.00"))
    assert summary(database, "slow", "2026-01")[2] == ("100.00", "0.00")
    [release] = transactions(database, "kind = 'release'")
    assert (release.partner_id, format_instant(release.effective_at_us)) == ("quick", "2026-01-30T00:00:00Z")
    close(database, "2026-02", now="2026-03-01")
    assert summary(database, "slow", "2026-02") == (
        ("100.00", "0.00"), [("release", "-100.00", "100.00")], ("0.00", "100.00"))
    verified(books)



@sqlite_only
def test_a_close_releases_a_hold_maturing_at_the_periods_last_microsecond_within_the_period(database):
    books = Books(database)
    books.plan("month-hold", "0.20", hold_days=30)
    books.partner("edge", "month-hold")
    books.attribute("c-edge", "edge", "2026-01-01")
    books.paid("c-edge", "inv-e", "500.00", "2026-01-01T23:59:59.999999Z")  # matures 2026-01-31T23:59:59.999999Z
    close(database, "2026-01", now="2026-02-01")
    [release] = transactions(database, "kind = 'release'")
    assert format_instant(release.effective_at_us) == "2026-01-31T23:59:59.999999Z"
    assert summary(database, "edge", "2026-01")[2] == ("0.00", "100.00")


# ---- payout runs ----

@pytest.fixture
def payees(database) -> Books:
    """Partners on one plan with minimums USD 50.00 and EUR 100.00 and none for GBP."""
    books = Books(database)
    books.plan("tiered", "0.20", min_payout={"USD": "50.00", "EUR": "100.00"})
    for partner_id in ("alpha", "beta", "gamma", "delta"):
        books.partner(partner_id, "tiered")
    return books


def test_a_payout_run_pays_each_currency_that_reaches_its_minimum_and_nothing_below(payees):
    database = payees.database
    balances = [("alpha", "USD", 4_999), ("alpha", "EUR", 10_000), ("alpha", "GBP", 1),
                ("beta", "USD", 5_000), ("beta", "EUR", 9_999), ("beta", "GBP", -500)]
    for partner_id, currency, amount in balances:
        adjust(database, partner_id, "available", amount, currency=currency, effective_at="2026-03-01")
    adjust(database, "alpha", "available", 100_000, effective_at="2026-03-01T00:00:00.000001Z")  # after t
    result = run(database, "2026-03-01")
    assert not result.replayed
    assert sorted((p.partner_id, p.currency, p.amount_minor, p.status) for p in result.payouts) == [
        ("alpha", "EUR", 10_000, "pending"), ("alpha", "GBP", 1, "pending"), ("beta", "USD", 5_000, "pending")]
    for payout in result.payouts:
        [row] = transactions(database, "id = :t", t=payout.transaction_id)
        assert (row.kind, row.effective_at_us) == ("payout", at("2026-03-01"))
        assert lines_of(database, payout.transaction_id) == [
            (chart.available(payout.partner_id), "D", payout.amount_minor),
            (chart.PAYOUTS_IN_TRANSIT, "C", payout.amount_minor)]
    assert payees.balance_just_after("beta", "2026-03-01") == (0, 0)
    assert payees.balance_just_after("alpha", "2026-03-01") == (0, 4_999)
    verified(payees)


@sqlite_only
def test_suspended_and_terminated_partners_are_not_paid(payees):
    database = payees.database
    for partner_id in ("alpha", "beta", "gamma"):
        adjust(database, partner_id, "available", 20_000, effective_at="2026-02-01")
    payees.status("beta", "suspended", "2026-02-15")
    payees.status("gamma", "terminated", "2026-02-15")
    assert [p.partner_id for p in run(database, "2026-03-01").payouts] == ["alpha"]
    payees.status("beta", "active", "2026-03-15")  # suspension lifted: paid at the next run
    assert [p.partner_id for p in run(database, "2026-04-01").payouts] == ["beta"]
    assert payees.balance("gamma") == (0, 20_000)  # still owed, on the books


@sqlite_only
def test_a_second_run_at_the_same_instant_returns_the_first_and_posts_nothing(payees):
    database = payees.database
    adjust(database, "alpha", "available", 7_500, effective_at="2026-03-01")
    first = run(database, "2026-03-01")
    adjust(database, "beta", "available", 7_500, effective_at="2026-02-15")  # arrives after the run
    count = transaction_count(database)
    again = run(database, "2026-03-01")
    assert again.replayed and (again.id, again.payouts) == (first.id, first.payouts)
    assert transaction_count(database) == count
    assert [p.partner_id for p in run(database, "2026-03-02").payouts] == ["beta"]


@sqlite_only
def test_a_new_run_dated_inside_a_closed_period_is_refused_and_an_earlier_run_still_replays(payees):
    # DESIGN.md is silent here. Such a run would pay the balance as of t but post at the first open
    # period, where a later clawback may have left less: here 100.00 paid on 60.00 available.
    database = payees.database
    adjust(database, "alpha", "available", 10_000, effective_at="2026-01-16")
    before_close = run(database, "2026-01-10")
    adjust(database, "alpha", "available", -4_000, effective_at="2026-01-25")
    close(database, "2026-01", now="2026-02-01")
    count = transaction_count(database)
    with pytest.raises(Conflict, match="lies in a closed period") as refused:
        run(database, "2026-01-20")
    assert list(refused.value.fields) == ["at"]
    assert run(database, "2026-01-10") == before_close._replace(replayed=True)
    assert transaction_count(database) == count
    [payout] = run(database, "2026-02-01").payouts
    assert payout.amount_minor == 6_000


@sqlite_only
def test_a_run_first_releases_every_hold_matured_by_its_instant(database):
    books = worked_example_program(database)
    books.paid("acme", "inv-1", "500.00", "2026-01-20")  # matures 2026-02-19 00:00
    assert run(database, "2026-02-18T23:59:59.999999Z").payouts == ()
    [payout] = run(database, "2026-02-19").payouts
    assert payout.amount_minor == 10_000
    [release] = transactions(database, "kind = 'release'")
    assert release.effective_at_us == at("2026-02-19")



@sqlite_only
def test_the_minimum_payout_is_the_one_of_the_plan_in_effect_at_the_run(payees):
    payees.plan("high-minimum", "0.20", min_payout={"USD": "200.00"})
    payees.change_plan("alpha", "high-minimum", "2026-02-01")  # from USD 50.00 to USD 200.00
    payees.change_plan("beta", "high-minimum", "2026-02-01")
    payees.change_plan("beta", "tiered", "2026-02-15")  # and back
    for partner_id in ("alpha", "beta"):
        adjust(payees.database, partner_id, "available", 10_000, effective_at="2026-02-20")
    assert [p.partner_id for p in run(payees.database, "2026-03-01").payouts] == ["beta"]


@sqlite_only
def test_a_payout_resolves_at_the_instant_it_was_made_and_not_one_microsecond_before(payees):
    database = payees.database
    adjust(database, "alpha", "available", 7_500, effective_at="2026-03-01")
    adjust(database, "beta", "available", 7_500, effective_at="2026-03-01")
    alpha, beta = run(database, "2026-03-01").payouts
    for resolve, payout in ((settle, alpha), (fail, beta)):
        with pytest.raises(InvalidInput) as refused:
            resolve(database, payout.id, "2026-02-28T23:59:59.999999Z")
        assert list(refused.value.fields) == ["at"]
    assert settle(database, alpha.id, "2026-03-01").status == "settled"
    assert fail(database, beta.id, "2026-03-01").status == "failed"



@sqlite_only
def test_a_balance_of_zero_is_not_paid_even_in_a_currency_without_a_minimum(payees):
    adjust(payees.database, "gamma", "available", 500, currency="GBP", effective_at="2026-02-10")
    adjust(payees.database, "gamma", "available", -500, currency="GBP", effective_at="2026-02-11")
    assert run(payees.database, "2026-03-01").payouts == ()


@sqlite_only
def test_settling_moves_in_transit_to_cash_once(payees):
    database = payees.database
    adjust(database, "alpha", "available", 7_500, effective_at="2026-03-01")
    [payout] = run(database, "2026-03-01").payouts
    settled = settle(database, payout.id, "2026-03-03")
    assert settled.status == "settled"
    assert lines_of(database, settled.resolution_transaction_id) == [
        (chart.PAYOUTS_IN_TRANSIT, "D", 7_500), (chart.CASH, "C", 7_500)]
    for again in (settle, fail):
        with pytest.raises(Conflict, match="already settled"):
            again(database, payout.id, "2026-03-04")
    with database.reader() as session:
        assert payouts.get_payout(session, payout.id) == settled
        with pytest.raises(NotFound):
            payouts.get_payout(session, payout.id + 1)
    verified(payees)


def test_a_failed_payout_returns_the_money_to_available_once_and_is_paid_again_later(payees):
    database = payees.database
    adjust(database, "alpha", "available", 7_500, effective_at="2026-03-01")
    [payout] = run(database, "2026-03-01").payouts
    failed = fail(database, payout.id, "2026-03-03", reason="bank account closed")
    assert (failed.status, failed.reason) == ("failed", "bank account closed")
    assert lines_of(database, failed.resolution_transaction_id) == [
        (chart.PAYOUTS_IN_TRANSIT, "D", 7_500), (chart.available("alpha"), "C", 7_500)]
    assert payees.balance_just_after("alpha", "2026-03-03") == (0, 7_500)
    for again in (fail, settle):
        with pytest.raises(Conflict, match="already failed"):
            again(database, payout.id, "2026-03-04")
    [retry] = run(database, "2026-04-01").payouts
    assert (retry.partner_id, retry.amount_minor) == ("alpha", 7_500) and retry.id != payout.id
    with database.reader() as session:
        assert [p.status for p in payouts.list_payouts(session, partner_id="alpha")] == ["failed", "pending"]
    verified(payees)


# ---- adjustments ----

@sqlite_only
@pytest.mark.parametrize("account", ["pending", "available"])
def test_adjustments_credit_or_debit_a_partner_account_against_adjustment_expense(payees, account):
    database = payees.database
    target = (chart.pending if account == "pending" else chart.available)("alpha")
    up = adjust(database, "alpha", account, 2_500, effective_at="2026-03-01")
    down = adjust(database, "alpha", account, -4_000, effective_at="2026-03-02")
    assert lines_of(database, up.id) == [(chart.EXPENSE_ADJUSTMENT, "D", 2_500), (target, "C", 2_500)]
    assert lines_of(database, down.id) == [(target, "D", 4_000), (chart.EXPENSE_ADJUSTMENT, "C", 4_000)]
    expected = -1_500
    assert payees.balance("alpha") == ((expected, 0) if account == "pending" else (0, expected))
    again = adjust(database, "alpha", account, 2_500, effective_at="2026-03-01")
    assert again == journal.Posted(up.id, True)
    lines = section(statement(database, "alpha", "2026-03"))["lines"]
    assert [(line["kind"], line[account]) for line in lines] == [("adjustment", "25.00"), ("adjustment", "-40.00")]
    verified(payees)


@sqlite_only
def test_adjustments_whose_reasons_differ_only_past_the_keys_length_are_two_adjustments(payees):
    database = payees.database
    first, second = ("x" * 400 + "first"), ("x" * 400 + "second")
    one = adjust(database, "alpha", "available", 2_500, effective_at="2026-03-01", reason=first)
    two = adjust(database, "alpha", "available", 2_500, effective_at="2026-03-01", reason=second)
    assert not one.replayed and not two.replayed and one.id != two.id
    assert adjust(database, "alpha", "available", 2_500, effective_at="2026-03-01", reason=second) == (two.id, True)
    short = adjust(database, "alpha", "available", 100, effective_at="2026-03-01", reason="goodwill")
    key = f"adjustment:alpha:available:USD:100:{at('2026-03-01')}:goodwill"
    [row] = transactions(database, "idempotency_key = :k", k=key)
    assert row.id == short.id
    assert payees.balance("alpha") == (0, 5_100)


@sqlite_only
@pytest.mark.parametrize(("partner_id", "account", "amount_minor", "reason", "field"), [
    ("alpha", "available", 0, "correction", "amount"),
    ("nobody", "available", 100, "correction", "partner_id"),
    ("alpha", "cash", 100, "correction", "account"),
    ("alpha", "available", 100, "", "reason"),
])
def test_an_adjustment_is_refused_naming_the_field_and_posts_nothing(payees, partner_id, account, amount_minor,
                                                                     reason, field):
    with pytest.raises(InvalidInput) as refused:
        with payees.database.transaction() as session:
            payouts.adjust(session, partner_id, account, amount_minor, "USD", reason, effective_at_us=at("2026-03-01"))
    assert list(refused.value.fields) == [field]
    assert transaction_count(payees.database) == 0


@sqlite_only
def test_an_adjustment_dated_in_a_closed_period_posts_at_the_first_open_period(payees):
    database = payees.database
    adjust(database, "alpha", "available", 1_000, effective_at="2026-01-10")
    close(database, "2026-01", now="2026-02-01")
    late = adjust(database, "alpha", "available", 500, effective_at="2026-01-20")
    [row] = transactions(database, "id = :t", t=late.id)
    assert (row.effective_at_us, row.original_effective_at_us) == (at("2026-02-01"), at("2026-01-20"))
    assert summary(database, "alpha", "2026-01")[2] == ("0.00", "10.00")
    assert summary(database, "alpha", "2026-02") == (("0.00", "10.00"), [("adjustment", "0.00", "5.00")],
                                                     ("0.00", "15.00"))


# ---- liabilities ----

@sqlite_only
def test_liabilities_list_each_partner_and_currency_and_total_what_partners_owe_apart(payees):
    database = payees.database
    adjust(database, "alpha", "available", 10_000, effective_at="2026-03-01")
    adjust(database, "alpha", "pending", 5_000, effective_at="2026-03-01")
    adjust(database, "alpha", "available", 20_000, currency="EUR", effective_at="2026-03-01")
    adjust(database, "beta", "available", -4_000, effective_at="2026-03-02")
    adjust(database, "gamma", "available", 2_500, effective_at="2026-03-10")
    with database.reader() as session:
        partners, totals = reports.liabilities(session)
        earlier, _ = reports.liabilities(session, before_us=at("2026-03-02"))
    assert partners == [
        reports.PartnerLiability("alpha", "EUR", 0, 20_000),
        reports.PartnerLiability("alpha", "USD", 5_000, 10_000),
        reports.PartnerLiability("beta", "USD", 0, -4_000),
        reports.PartnerLiability("gamma", "USD", 0, 2_500),
    ]
    assert totals == [reports.LiabilityTotal("EUR", 0, 20_000, 0), reports.LiabilityTotal("USD", 5_000, 12_500, 4_000)]
    assert [(p.partner_id, p.currency) for p in earlier] == [("alpha", "EUR"), ("alpha", "USD")]
    close(database, "2026-03", now="2026-04-01")
    with database.reader() as session:
        assert reports.liabilities(session) == (partners, totals)  # from the snapshot, the same
