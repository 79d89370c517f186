"""The currencies the books keep are one list in three places: `ledger.currencies` (Python's
check), migration 0059's `currencies` table (the database's; 0061 lists the digits that are not
2, for plan terms' amounts), and what the installed py-moneyed
gives a decimal minor unit, less the units no money is paid in. A py-moneyed release that adds a
code, or changes a code's digits, fails here: a migration then adds the code to the table and the list."""

import moneyed
import pytest

from ledger.currencies import MINOR_DIGITS
from ledger.errors import InvalidInput
from ledger.money import NOT_MONEY, currency_exponent
from migrations.earlier import revision


def moneyed_digits() -> dict[str, int]:
    found = {}
    for code in sorted(moneyed.CURRENCIES):
        sub_unit = moneyed.get_currency(code).sub_unit
        digits = len(str(sub_unit)) - 1
        if code not in NOT_MONEY and isinstance(sub_unit, int) and sub_unit >= 1 and 10**digits == sub_unit:
            found[code] = digits
    return found


def test_the_books_keep_what_py_moneyed_gives_a_decimal_minor_unit():
    assert MINOR_DIGITS == moneyed_digits()
    assert (MINOR_DIGITS["USD"], MINOR_DIGITS["JPY"], MINOR_DIGITS["BHD"], MINOR_DIGITS["CLF"]) == (2, 0, 3, 4)


def test_the_database_keeps_the_same_codes():
    assert "".join(revision("0059_currencies_kept.py").CODES).split() == list(MINOR_DIGITS)


def test_the_database_reads_plan_terms_with_the_same_digits():
    """Migration 0061 holds a plan's amounts to their currency's digits: those not 2, listed."""
    listed = {code: digits for digits, codes in revision("0061_plan_terms_held.py").DIGITS_NOT_TWO.items()
              for code in codes.split()}
    assert listed == {code: digits for code, digits in MINOR_DIGITS.items() if digits != 2}


def test_python_refuses_a_code_the_books_do_not_keep_though_py_moneyed_knows_it(monkeypatch):
    monkeypatch.delitem(MINOR_DIGITS, "CLF")
    monkeypatch.setattr("ledger.money._EXPONENTS", {})
    with pytest.raises(InvalidInput, match="unknown currency 'CLF'"):
        currency_exponent("CLF")
