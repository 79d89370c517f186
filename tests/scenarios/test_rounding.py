"""Half-even rounding to the minor unit, through the whole ingest path, in a two-decimal (USD), a
zero-decimal (JPY) and a three-decimal (BHD) currency: ties go to the even neighbour, down or up.

SQLite only: these rules run in Python, identically on both engines; the engine-sensitive
scenarios (worked example, refunds and holds, exactly-once, database holds) and the property
test run on PostgreSQL as well.
"""

import pytest

from ledger.money import currency_exponent
from tests.scenarios.books import Books, commissions

# At 10%: 1.25 USD -> 12.5 cents -> 12 (down to even); 1.35 USD -> 13.5 cents -> 14 (up to even).
SHARE_CASES = [("USD", "1.25", "1.35"), ("JPY", "125", "135"), ("BHD", "0.125", "0.135")]

# (currency, paid, each of two refunds, accrual, first clawback, second clawback): half of 25 is
# 12.5 -> 12 and the second half takes the remainder 13; half of 27 is 13.5 -> 14, remainder 13.
CLAWBACK_CASES = [
    ("USD", "2.50", "1.25", 25, 12, 13), ("USD", "2.70", "1.35", 27, 14, 13),
    ("JPY", "250", "125", 25, 12, 13), ("JPY", "270", "135", 27, 14, 13),
    ("BHD", "0.250", "0.125", 25, 12, 13), ("BHD", "0.270", "0.135", 27, 14, 13),
]


@pytest.fixture
def books(sqlite_database) -> Books:
    books = Books(sqlite_database)
    books.plan("tenth", "0.10", hold_days=0)
    books.partner("northwind", "tenth")
    books.attribute("acme", "northwind", "2026-01-01")
    return books


def test_the_currencies_have_the_minor_units_the_cases_assume():
    assert [currency_exponent(code) for code, _, _ in SHARE_CASES] == [2, 0, 3]


def test_a_revenue_share_tie_rounds_to_the_even_minor_unit_in_every_currency(books):
    for currency, down, up in SHARE_CASES:
        rounded_down = books.paid("acme", f"inv-{currency}-down", down, "2026-01-10", currency=currency)
        rounded_up = books.paid("acme", f"inv-{currency}-up", up, "2026-01-11", currency=currency)
        assert commissions(rounded_down) == [("northwind", "accrual", 12)], currency
        assert commissions(rounded_up) == [("northwind", "accrual", 14)], currency
        assert books.balance("northwind", currency=currency) == (26, 0)


def test_a_proportional_clawback_tie_rounds_to_even_and_the_last_refund_takes_the_remainder(books):
    for number, (currency, paid, half, accrued, first_minor, second_minor) in enumerate(CLAWBACK_CASES):
        invoice = f"inv-{number}"
        assert commissions(books.paid("acme", invoice, paid, "2026-01-10", currency=currency)) == \
            [("northwind", "accrual", accrued)]
        first = books.refund("acme", invoice, half, "2026-01-12", currency=currency)
        second = books.refund("acme", invoice, half, "2026-01-13", currency=currency)
        assert commissions(first) == [("northwind", "clawback", -first_minor)], (currency, paid)
        assert commissions(second) == [("northwind", "clawback", -second_minor)], (currency, paid)
    for currency in ("USD", "JPY", "BHD"):
        # hold_days 0: released at once, so the refunds clawed from available and both ends are 0
        assert books.balance("northwind", currency=currency) == (0, 0)
