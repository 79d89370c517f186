"""CPA (a flat bounty per acquired customer) beside revenue share: paid once per customer, on its
first eligible paid invoice, in that invoice's currency if the plan lists one; never paid again,
not even after re-attribution; clawed back in full only when its own invoice is fully refunded or
charged back.

SQLite only: these rules run in Python, identically on both engines; the engine-sensitive
scenarios (worked example, refunds and holds, exactly-once, database holds) and the property
test run on PostgreSQL as well.
"""

import pytest
import sqlalchemy as sa

from ledger.db import Database
from tests.conftest import new_sqlite_url
from tests.scenarios.books import Books, commissions


@pytest.fixture
def books(sqlite_database) -> Books:
    books = Books(sqlite_database)
    books.plan("hybrid", "0.10", cpa={"USD": "150.00", "EUR": "140.00"}, duration_months=None)
    books.plan("hybrid-too", "0.10", cpa={"USD": "150.00"}, duration_months=None)
    books.partner("northwind", "hybrid")
    books.partner("contoso", "hybrid-too")
    books.attribute("acme", "northwind", "2026-01-01")
    return books


def test_hybrid_pays_cpa_plus_revenue_share_in_month_one_and_revenue_share_after(books):
    january = books.paid("acme", "inv-1", "500.00", "2026-01-05")
    february = books.paid("acme", "inv-2", "500.00", "2026-02-05")
    assert commissions(january) == [("northwind", "accrual", 5_000), ("northwind", "cpa", 15_000)]
    assert commissions(february) == [("northwind", "accrual", 5_000)]
    assert books.balance("northwind") == (25_000, 0)  # $200 in month one, then $50


def test_the_cpa_is_paid_in_the_currency_of_the_first_eligible_invoice(books):
    books.attribute("globex", "northwind", "2026-01-01")
    first = books.paid("globex", "inv-eur", "500.00", "2026-01-05", currency="EUR")
    assert commissions(first) == [("northwind", "accrual", 5_000), ("northwind", "cpa", 14_000)]
    assert commissions(books.paid("globex", "inv-usd", "500.00", "2026-01-06")) == [("northwind", "accrual", 5_000)]
    assert books.balance("northwind", currency="EUR") == (19_000, 0)


def test_a_first_eligible_invoice_in_a_currency_the_plan_does_not_list_uses_up_the_cpa(books):
    # Choice (DESIGN: "paid once per customer, on its first eligible paid invoice, in that invoice's
    # currency if the plan lists one"): the bounty belongs to the first eligible invoice; if its
    # currency has no CPA amount, no CPA is paid, and a later invoice in a listed currency does not
    # pay it either.
    books.attribute("globex", "northwind", "2026-01-01")
    assert commissions(books.paid("globex", "inv-jpy", "50000", "2026-01-05", currency="JPY")) == \
        [("northwind", "accrual", 5_000)]
    assert commissions(books.paid("globex", "inv-usd", "500.00", "2026-01-06")) == [("northwind", "accrual", 5_000)]


def test_revenue_that_earns_nothing_does_not_use_up_the_cpa(books):
    books.attribute("globex", "northwind", "2026-02-01")
    assert books.paid("globex", "inv-early", "500.00", "2026-01-20").status == "no_commission"
    assert commissions(books.paid("globex", "inv-1", "500.00", "2026-02-01")) == \
        [("northwind", "accrual", 5_000), ("northwind", "cpa", 15_000)]


def test_the_cpa_is_never_paid_again_after_re_attribution(books):
    books.paid("acme", "inv-1", "500.00", "2026-01-05")
    books.attribute("acme", "contoso", "2026-02-01", replace=True)
    assert commissions(books.paid("acme", "inv-2", "500.00", "2026-02-05")) == [("contoso", "accrual", 5_000)]
    assert books.balance("contoso") == (5_000, 0)


def test_a_partial_refund_of_the_cpa_invoice_leaves_the_cpa_and_the_full_refund_claws_it_back(books):
    books.paid("acme", "inv-1", "500.00", "2026-01-05")
    partial = books.refund("acme", "inv-1", "499.99", "2026-01-10")
    assert commissions(partial) == [("northwind", "clawback", -5_000)]  # 5,000 x 49,999/50,000 = 4,999.9 -> 5,000
    final = books.refund("acme", "inv-1", "0.01", "2026-01-11")
    assert commissions(final) == [("northwind", "clawback", -15_000)]
    assert books.balance("northwind") == (0, 0)


def test_a_full_chargeback_of_the_cpa_invoice_claws_back_the_cpa(books):
    books.paid("acme", "inv-1", "500.00", "2026-01-05")
    books.release("2026-03-01")
    chargeback = books.chargeback("acme", "inv-1", "500.00", "2026-03-02")
    assert commissions(chargeback) == [("northwind", "clawback", -5_000), ("northwind", "clawback", -15_000)]
    assert books.balance("northwind") == (0, 0)


def test_fully_refunding_a_later_invoice_never_touches_the_cpa(books):
    books.paid("acme", "inv-1", "500.00", "2026-01-05")
    books.paid("acme", "inv-2", "500.00", "2026-02-05")
    assert commissions(books.refund("acme", "inv-2", "500.00", "2026-02-06")) == [("northwind", "clawback", -5_000)]
    assert books.balance("northwind") == (20_000, 0)


def test_the_database_records_which_invoice_claimed_the_customers_cpa(books):
    books.paid("acme", "inv-1", "500.00", "2026-01-05")
    books.paid("acme", "inv-2", "500.00", "2026-02-05")
    rows = books.sql("SELECT invoice_id FROM revenue_events WHERE first_eligible_customer_id = 'acme'")
    assert [row.invoice_id for row in rows] == ["inv-1"]


def test_a_first_eligible_invoice_that_earns_nothing_at_all_still_uses_up_the_cpa(books):
    # Eligibility is the window's: 4 yen earns a revenue share of 0 and no CPA (none in JPY), but it
    # is the customer's first eligible paid invoice, so the bounty is spent on it.
    books.attribute("globex", "northwind", "2026-01-01")
    assert books.paid("globex", "inv-jpy", "4", "2026-01-05", currency="JPY").status == "no_commission"
    assert commissions(books.paid("globex", "inv-usd", "500.00", "2026-01-06")) == [("northwind", "accrual", 5_000)]


# ---- the first eligible paid invoice by date, in whatever order billing sends them ----


def test_an_earlier_invoice_delivered_late_takes_the_cpa_from_the_later_one(books):
    february = books.paid("acme", "inv-feb", "500.00", "2026-02-05")
    assert commissions(february) == [("northwind", "accrual", 5_000), ("northwind", "cpa", 15_000)]
    january = books.paid("acme", "inv-jan", "500.00", "2026-01-05")
    assert commissions(january) == [("northwind", "accrual", 5_000), ("northwind", "cpa", 15_000)]
    # February's bounty is reversed at its own instant: from any instant on, the books are those of
    # the two invoices delivered in time order.
    assert books.balance_just_after("northwind", "2026-01-05") == (20_000, 0)
    assert books.balance_just_after("northwind", "2026-02-05") == (25_000, 0)
    [(bounty, reversal_reason)] = books.sql(
        "SELECT t.id, r.memo FROM journal_transactions t JOIN journal_transactions r ON r.reverses_id = t.id"
        " WHERE t.kind = 'cpa' AND t.invoice_id = 'inv-feb'")
    assert "inv-jan" in reversal_reason
    assert books.sql("SELECT event_id, customer_id, from_event_id FROM cpa_claims_taken") == [
        (january.event_id, "acme", february.event_id)]
    assert books.verified()


@pytest.mark.parametrize("delivery", ["one-by-one", "one-batch"])
def test_a_bounty_taken_by_another_partners_invoice_is_reversed_without_naming_it(books, delivery):
    # The reversal is the contoso key's to read: northwind's invoice stays out of it, as
    # northwind's transactions do. One by one, the claimant is read before the batch; in one batch,
    # the batch's own bounty is written first and reversed from the journal.
    books.attribute("acme", "contoso", "2026-02-01", replace=True)
    february = books.event("invoice_paid", "acme", "inv-feb", "500.00", "2026-02-05")
    january = books.event("invoice_paid", "acme", "inv-jan", "500.00", "2026-01-05")
    if delivery == "one-by-one":
        books.ingest(february)
        books.ingest(january)
    else:
        books.ingest(february, january)
    [(partner_id, memo)] = books.sql(
        "SELECT r.partner_id, r.memo FROM journal_transactions t JOIN journal_transactions r ON r.reverses_id = t.id"
        " WHERE t.kind = 'cpa' AND t.invoice_id = 'inv-feb'")
    assert partner_id == "contoso"
    assert memo == "the customer's CPA goes to an invoice paid before this one"
    assert books.balance("northwind") == (20_000, 0) and books.balance("contoso") == (5_000, 0)
    assert books.verified()


def test_the_cpa_taken_follows_its_invoice_the_full_refund_of_the_later_one_leaves_it(books):
    books.paid("acme", "inv-feb", "500.00", "2026-02-05")
    books.paid("acme", "inv-jan", "500.00", "2026-01-05")
    assert commissions(books.refund("acme", "inv-feb", "500.00", "2026-02-10")) == [("northwind", "clawback", -5_000)]
    assert commissions(books.refund("acme", "inv-jan", "500.00", "2026-02-11")) == [
        ("northwind", "clawback", -5_000), ("northwind", "clawback", -15_000)]
    assert books.balance("northwind") == (0, 0)
    assert books.verified()


def test_a_bounty_clawed_back_then_taken_is_reversed_with_its_clawback(books):
    books.paid("acme", "inv-feb", "500.00", "2026-02-05")
    books.refund("acme", "inv-feb", "500.00", "2026-02-10")  # the bounty clawed back in full
    january = books.paid("acme", "inv-jan", "500.00", "2026-01-05")
    assert commissions(january) == [("northwind", "accrual", 5_000), ("northwind", "cpa", 15_000)]
    assert books.balance("northwind") == (20_000, 0)
    assert books.balance_just_after("northwind", "2026-02-05") == (25_000, 0)
    assert books.sql("SELECT count(*) FROM journal_transactions WHERE kind = 'reversal'") == [(2,)]
    assert books.verified()


def test_a_released_bounty_taken_is_reversed_with_its_release(books):
    books.paid("acme", "inv-feb", "500.00", "2026-02-05")
    assert books.release("2026-03-10") == 2  # hold of 30 days: the accrual and the bounty
    assert books.balance("northwind") == (0, 20_000)
    books.paid("acme", "inv-jan", "500.00", "2026-01-05")
    # January's pieces matured on 2026-02-04 and wait for a release; February's bounty left available.
    assert books.balance("northwind") == (20_000, 5_000)
    assert books.release("2026-03-10") == 2
    assert books.balance("northwind") == (0, 25_000)
    assert books.balance_just_after("northwind", "2026-03-07") == books.balance("northwind")
    assert books.verified()


def test_an_earlier_invoice_in_a_currency_without_a_cpa_takes_the_claim_and_no_cpa_is_paid(books):
    books.attribute("globex", "contoso", "2026-01-01")
    assert commissions(books.paid("globex", "inv-usd", "500.00", "2026-02-05")) == [
        ("contoso", "accrual", 5_000), ("contoso", "cpa", 15_000)]
    assert commissions(books.paid("globex", "inv-eur", "500.00", "2026-01-05", currency="EUR")) == [
        ("contoso", "accrual", 5_000)]
    assert books.balance("contoso") == (5_000, 0)
    assert books.balance("contoso", currency="EUR") == (5_000, 0)
    assert books.verified()


def test_invoices_delivered_against_their_order_in_one_batch_leave_the_cpa_on_the_earliest_and_replay(books):
    events = [books.event("invoice_paid", "acme", f"inv-{month}", "500.00", f"2026-{month}-05")
              for month in ("03", "02", "01")]
    results = books.ingest(*events)
    assert [commissions(result) for result in results] == [
        [("northwind", "accrual", 5_000), ("northwind", "cpa", 15_000)]] * 3
    assert books.sql("SELECT event_id, from_event_id FROM cpa_claims_taken ORDER BY event_id") == [
        (events[1].id, events[0].id), (events[2].id, events[1].id)]
    assert books.sql("SELECT t.invoice_id FROM journal_transactions t WHERE t.kind = 'cpa' AND NOT EXISTS"
                     " (SELECT 1 FROM journal_transactions r WHERE r.reverses_id = t.id)") == [("inv-01",)]
    assert books.balance("northwind") == (30_000, 0)
    transactions = books.sql("SELECT count(*) FROM journal_transactions")
    again = books.ingest(*events)
    assert [(result.replayed, commissions(result)) for result in again] == [
        (True, commissions(result)) for result in results]
    assert books.sql("SELECT count(*) FROM journal_transactions") == transactions
    assert books.verified()


def test_a_payment_at_the_claimants_instant_or_outside_the_window_does_not_take_the_claim(books):
    books.attribute("globex", "northwind", "2026-02-01")
    books.paid("globex", "inv-1", "500.00", "2026-02-05")
    assert commissions(books.paid("globex", "inv-same", "500.00", "2026-02-05")) == [("northwind", "accrual", 5_000)]
    assert books.paid("globex", "inv-early", "500.00", "2026-01-20").status == "no_commission"
    assert books.sql("SELECT count(*) FROM cpa_claims_taken") == [(0,)]
    assert books.verified()


def test_a_claimant_whose_invoice_the_same_batch_refunds_is_reversed_before_the_refund_reads_it(books):
    # The claimant's invoice is named by the batch, so its reversal is posted from the journal (not
    # from what the batch read first), and the refund after it finds no CPA left to claw back.
    books.paid("acme", "inv-feb", "500.00", "2026-02-05")
    results = books.ingest(books.event("invoice_paid", "acme", "inv-jan", "500.00", "2026-01-05"),
                           books.event("refund", "acme", "inv-feb", "500.00", "2026-02-10"))
    assert [commissions(result) for result in results] == [
        [("northwind", "accrual", 5_000), ("northwind", "cpa", 15_000)], [("northwind", "clawback", -5_000)]]
    assert books.balance("northwind") == (20_000, 0)
    assert books.verified()


def test_a_payment_dated_between_a_claim_taken_and_the_first_claim_takes_nothing_and_an_earlier_one_does(books):
    books.paid("acme", "inv-feb", "500.00", "2026-02-05", event_id="feb")
    books.paid("acme", "inv-jan-20", "500.00", "2026-01-20", event_id="jan-20")
    assert commissions(books.paid("acme", "inv-jan-25", "500.00", "2026-01-25")) == [("northwind", "accrual", 5_000)]
    assert commissions(books.paid("acme", "inv-jan-10", "500.00", "2026-01-10", event_id="jan-10")) == [
        ("northwind", "accrual", 5_000), ("northwind", "cpa", 15_000)]
    assert books.sql("SELECT event_id, from_event_id FROM cpa_claims_taken ORDER BY event_id") == [
        ("jan-10", "jan-20"), ("jan-20", "feb")]
    assert books.balance("northwind") == (35_000, 0)
    assert books.verified()


@pytest.mark.parametrize("moves", [2, 8])
def test_a_batch_of_payments_newest_first_takes_each_claim_from_what_it_drafted_in_the_same_statements(
        sqlite_template, tmp_path, moves):
    """Each payment takes the claim of the one before it in the batch, whose bounty the batch drafted:
    its reversal is drafted from that, without writing the batch first and reading the journal back
    (`_reverse_bounty`), so the batch sends the statements of one in time order. The first payment of
    each takes the claim of one stored before."""
    sent = {}
    for name, days in (("newest first", range(9 + moves, 9, -1)), ("in time order", range(10, 10 + moves))):
        books = Books(Database(new_sqlite_url(sqlite_template, tmp_path)))
        books.plan("hybrid", "0.10", cpa={"USD": "150.00"}, duration_months=None)
        books.partner("northwind", "hybrid")
        books.attribute("acme", "northwind", "2026-01-01")
        books.paid("acme", "inv-mar", "500.00", "2026-03-01")  # the claimant, and the program cached
        sent[name] = []
        sa.event.listen(books.database.engine, "before_cursor_execute", lambda *args, into=sent[name]: into.append(
            args[2]))
        results = books.ingest(*[books.event("invoice_paid", "acme", f"inv-{day}", "500.00", f"2026-02-{day:02d}")
                                 for day in days])
        bounties = [result for result in results if ("northwind", "cpa", 15_000) in commissions(result)]
        claims = books.sql("SELECT count(*) FROM cpa_claims_taken")[0][0]
        assert (len(bounties), claims) == ((moves, moves) if name == "newest first" else (1, 1))
        assert books.balance("northwind") == (5_000 * (moves + 1) + 15_000, 0) and books.verified()
        books.database.dispose()
    assert len(sent["newest first"]) == len(sent["in time order"]), sent
