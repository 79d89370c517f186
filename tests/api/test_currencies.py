"""One partner earning in three currencies of 0, 3 and 4 minor digits at once (JPY, BHD, CLF), and
its parent's override on each, driven over HTTP on both engines: revenue shares that fall in
fractions of the minor unit, a step-down rate, a CPA per currency, an invoice refunded and charged
back to nothing, a partial refund, a payout run whose minimum is met in two currencies and not in
the third, and the statement, trial balance and liabilities that follow: one section or row per
currency, never a sum across currencies, each amount with its currency's own digits."""

import csv
import io
import re
from collections import defaultdict
from decimal import Decimal

import pytest

from tests.api.books import instant, money, plan_body

DIGITS = {"JPY": 0, "BHD": 3, "CLF": 4}


@pytest.fixture
def program(fresh):
    call = fresh
    call.created("/v1/plans", plan_body(
        "intl", rates=[{"from_month": 1, "rate": "0.333"}, {"from_month": 2, "rate": "0.125"}], duration_months=2,
        hold_days=10, cpa=[money("1000", "JPY"), money("1.500", "BHD"), money("0.0123", "CLF")],
        min_payout=[money("5000", "JPY"), money("10.000", "BHD"), money("1.0000", "CLF")]))
    call.created("/v1/plans", plan_body("over", rates=[{"from_month": 1, "rate": "0"}], hold_days=0, min_payout=[],
                                        override={"rate": "0.07", "basis": "commission"}))
    call.partner("dist", "over")
    call.partner("res", "intl", parent_id="dist")
    for currency in DIGITS:  # a customer per currency: each earns its CPA in its first invoice's currency
        call.attribute(f"acme-{currency}", "res", "2026-01-01")
    return call


def post(call, event_id: str, invoice_id: str, amount: str, day: str, currency: str, kind: str = "invoice_paid"):
    body = call.event(event_id, f"acme-{currency}", invoice_id, amount, day, kind=kind, currency=currency)
    return [(c["partner_id"], c["kind"], c["amount"]["amount"], c["amount"]["currency"]) for c in body["commissions"]]


def book_the_quarter(call) -> dict[str, list]:
    """January's invoices in each currency, one refunded and charged back to nothing, one refunded by
    half, and February's invoice at the stepped-down rate; the commissions each event answered."""
    return {
        # 12345 x 0.333 = 4110.885 yen; the override is 7% of that share: 287.77.
        "j1": post(call, "e-j1", "j1", "12345", "2026-01-05", "JPY"),
        # 123.457 x 0.333 = 41.111181 dinars; 7% of 41.111 is 2.87777.
        "b1": post(call, "e-b1", "b1", "123.457", "2026-01-06", "BHD"),
        # 1.2345 x 0.333 = 0.41108850 UF; 7% of 0.4111 is 0.028777.
        "c1": post(call, "e-c1", "c1", "1.2345", "2026-01-07", "CLF"),
        # A yen of 12345 takes 0.333 yen of the share: rounds to nothing.
        "j1 refund 1": post(call, "e-j1-r1", "j1", "1", "2026-01-08", "JPY", "refund"),
        # 4111 x 4444 / 12345 = 1479.89; 288 x 4444 / 12345 = 103.68.
        "j1 chargeback": post(call, "e-j1-cb", "j1", "4444", "2026-01-09", "JPY", "chargeback"),
        # The refund that completes the invoice claws the remainders and the CPA.
        "j1 refund rest": post(call, "e-j1-r2", "j1", "7900", "2026-01-10", "JPY", "refund"),
        # 41.111 x 61.728 / 123.457 = 20.55533; 2.878 x 61.728 / 123.457 = 1.43898.
        "b1 refund": post(call, "e-b1-r", "b1", "61.728", "2026-01-11", "BHD", "refund"),
        # February is month 2: 99999 x 0.125 = 12499.875 yen; 7% of 12500 is 875.
        "j2": post(call, "e-j2", "j2", "99999", "2026-02-05", "JPY"),
    }


def test_each_share_rounds_half_even_once_in_its_currencys_own_minor_unit(program):
    answered = book_the_quarter(program)
    assert answered["j1"] == [("res", "accrual", "4111", "JPY"), ("res", "cpa", "1000", "JPY"),
                              ("dist", "override", "288", "JPY")]
    assert answered["b1"] == [("res", "accrual", "41.111", "BHD"), ("res", "cpa", "1.500", "BHD"),
                              ("dist", "override", "2.878", "BHD")]
    assert answered["c1"] == [("res", "accrual", "0.4111", "CLF"), ("res", "cpa", "0.0123", "CLF"),
                              ("dist", "override", "0.0288", "CLF")]
    assert answered["j1 refund 1"] == []
    assert answered["j1 chargeback"] == [("res", "clawback", "-1480", "JPY"), ("dist", "clawback", "-104", "JPY")]
    assert answered["j1 refund rest"] == [("res", "clawback", "-2631", "JPY"), ("res", "clawback", "-1000", "JPY"),
                                          ("dist", "clawback", "-184", "JPY")]
    assert answered["b1 refund"] == [("res", "clawback", "-20.555", "BHD"), ("dist", "clawback", "-1.439", "BHD")]
    assert answered["j2"] == [("res", "accrual", "12500", "JPY"), ("dist", "override", "875", "JPY")]


def test_an_invoice_paid_then_refunded_and_charged_back_in_full_nets_every_partners_commission_to_zero(program):
    answered = book_the_quarter(program)
    net: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for name in ("j1", "j1 refund 1", "j1 chargeback", "j1 refund rest"):
        for partner_id, _, amount, currency in answered[name]:
            net[partner_id, currency] += Decimal(amount)
    assert dict(net) == {("res", "JPY"): 0, ("dist", "JPY"): 0}


def test_a_payout_run_pays_each_currency_that_reaches_its_minimum_and_leaves_the_one_that_does_not(program):
    book_the_quarter(program)
    run = program.created("/v1/payout-runs", {"at": instant("2026-03-01")})
    assert sorted((p["partner_id"], p["amount"]["currency"], p["amount"]["amount"]) for p in run["payouts"]) == [
        ("dist", "BHD", "1.439"), ("dist", "CLF", "0.0288"), ("dist", "JPY", "875"),  # no minimum: paid if positive
        ("res", "BHD", "22.056"), ("res", "JPY", "12500")]  # CLF 0.4234 is under its minimum of 1.0000
    balances = program.read("/v1/partners/res/balance?as_of=2026-03-01")["balances"]
    assert balances == [
        {"currency": "BHD", "pending": "0.000", "available": "0.000", "total": "0.000"},
        {"currency": "CLF", "pending": "0.0000", "available": "0.4234", "total": "0.4234"},
        {"currency": "JPY", "pending": "0", "available": "0", "total": "0"}]


def test_a_statement_has_a_section_per_currency_each_amount_in_that_currencys_digits_in_json_and_csv(program):
    book_the_quarter(program)
    program.ok("/v1/periods/2026-01/close")
    statement = program.read("/v1/partners/res/statement?period=2026-01")
    assert [(s["currency"], s["opening"], s["closing"], s["totals"]) for s in statement["currencies"]] == [
        ("BHD", {"pending": "0.000", "available": "0.000"}, {"pending": "0.000", "available": "22.056"},
         {"accrual": "41.111", "clawback": "-20.555", "cpa": "1.500", "release": "0.000"}),
        ("CLF", {"pending": "0.0000", "available": "0.0000"}, {"pending": "0.0000", "available": "0.4234"},
         {"accrual": "0.4111", "cpa": "0.0123", "release": "0.0000"}),
        ("JPY", {"pending": "0", "available": "0"}, {"pending": "0", "available": "0"},
         {"accrual": "4111", "clawback": "-5111", "cpa": "1000"})]  # clawed whole before it matured: no release
    for section in statement["currencies"]:
        for line in section["lines"]:
            assert has_its_digits(line["pending"], section["currency"]), line
            assert has_its_digits(line["available"], section["currency"]), line
    rows = list(csv.DictReader(io.StringIO(program.get("/v1/partners/res/statement?period=2026-01&format=csv")
                                           .get_data(as_text=True))))
    assert [(r["currency"], r["pending"], r["available"]) for r in rows if r["row"] == "closing"] == [
        ("BHD", "0.000", "22.056"), ("CLF", "0.0000", "0.4234"), ("JPY", "0", "0")]
    assert len(rows) == sum(len(section["lines"]) + 2 for section in statement["currencies"])
    assert all(has_its_digits(r[column], r["currency"]) for r in rows for column in ("pending", "available"))


def test_the_trial_balance_and_liabilities_give_a_row_per_currency_and_never_sum_across_currencies(program):
    book_the_quarter(program)
    program.created("/v1/payout-runs", {"at": instant("2026-03-01")})
    report = program.read("/v1/reports/trial-balance?as_of=2026-03-01")
    # Each total is the sum of its currency's postings alone. BHD: accrual, CPA, override, two
    # clawbacks, three releases (the override's at once, its hold being 0 days), two payouts.
    bhd = ["41.111", "1.500", "2.878", "20.555", "1.439", "20.556", "1.500", "2.878", "1.439", "22.056"]
    clf = ["0.4111", "0.0123", "0.0288", "0.4111", "0.0123", "0.0288", "0.0288"]  # and one payout, to dist
    jpy = ["4111", "1000", "288", "1480", "104", "2631", "1000", "184", "288", "12500", "875"] + ["12500", "875"] * 2
    assert report["totals"] == [{"currency": code, "debit": str(sum(map(Decimal, amounts))),
                                 "credit": str(sum(map(Decimal, amounts)))}
                                for code, amounts in (("BHD", bhd), ("CLF", clf), ("JPY", jpy))]
    for row in report["rows"]:
        assert all(has_its_digits(row[column], row["currency"]) for column in ("debit", "credit", "balance")), row
    liabilities = program.read("/v1/reports/liabilities?as_of=2026-03-01")
    assert liabilities["totals"] == [
        {"currency": "BHD", "pending": "0.000", "available": "0.000", "owed_by_partners": "0.000"},
        {"currency": "CLF", "pending": "0.0000", "available": "0.4234", "owed_by_partners": "0.0000"},
        {"currency": "JPY", "pending": "0", "available": "0", "owed_by_partners": "0"}]


def has_its_digits(amount: str, currency: str) -> bool:
    digits = DIGITS[currency]
    return re.fullmatch(r"-?[0-9]+" + (rf"\.[0-9]{{{digits}}}" if digits else ""), amount) is not None
