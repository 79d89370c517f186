from decimal import Decimal

import moneyed
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import InvalidInput
from ledger.money import (
    NOT_MONEY,
    ROUND_HALF_EVEN,
    Money,
    _formatter,
    currency_exponent,
    format_minor,
    from_money,
    minor_formatter,
    multiply_minor,
    parse_amount_minor,
    parse_rate,
    prorate_minor,
    round_minor,
    to_money,
)


@pytest.mark.parametrize("code, exponent", [("USD", 2), ("EUR", 2), ("JPY", 0), ("BHD", 3), ("KWD", 3), ("XOF", 0),
                                            ("XCD", 2)])
def test_the_minor_unit_comes_from_the_currency(code, exponent):
    assert currency_exponent(code) == exponent


# ISO 4217 list one: the current currencies and funds whose minor unit is not two digits.
ISO_MINOR_DIGITS_NOT_TWO = {
    **dict.fromkeys(["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV",
                     "XAF", "XOF", "XPF"], 0),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
    **dict.fromkeys(["CLF", "UYW"], 4),
}


def test_every_current_currency_has_the_minor_unit_iso_4217_gives_it():
    # Amounts are stored as integers of the minor unit that py-moneyed gives: an upgrade that moved
    # one (ISK to two digits, say) would read every stored amount of that currency a hundred times
    # smaller. py-moneyed lists the countries of the currencies it holds in use (a few of ISO's
    # current ones, SVC for one, it does not, all of two digits).
    current = {code for code, currency in moneyed.CURRENCIES.items() if currency.countries and code not in NOT_MONEY}
    assert set(ISO_MINOR_DIGITS_NOT_TWO) <= current
    assert {code: currency_exponent(code) for code in current if currency_exponent(code) != 2} == \
        ISO_MINOR_DIGITS_NOT_TWO


@pytest.mark.parametrize("text, currency, minor", [
    ("123.45", "USD", 12345), ("0.5", "USD", 50), ("7", "USD", 700), ("-40.00", "USD", -4000),
    ("1500", "JPY", 1500), ("1.234", "BHD", 1234), ("0.001", "BHD", 1),
    ("999999999999999.99", "USD", 99999999999999999),
    ("922337203685477.5807", "CLF", 2**63 - 1), ("-922337203685477.5807", "CLF", -(2**63 - 1)),
])
def test_decimal_strings_parse_to_exact_minor_units(text, currency, minor):
    assert parse_amount_minor(text, currency) == minor


@pytest.mark.parametrize("value, currency, reason", [
    ("1.234", "USD", "at most 2 decimal places"),
    ("1.5", "JPY", "at most 0 decimal places"),
    ("1.2345", "BHD", "at most 3 decimal places"),
    ("NaN", "USD", "not a decimal string"),
    ("Infinity", "USD", "not a decimal string"),
    ("-inf", "USD", "not a decimal string"),
    ("1e3", "USD", "not a decimal string"),
    (" 1.00", "USD", "not a decimal string"),
    ("1,00", "USD", "not a decimal string"),
    ("", "USD", "not a decimal string"),
    ("1234567890123456", "USD", "more than 15 integer digits"),
    ("922337203685477.5808", "CLF", "at most 922337203685477.5807 CLF"),  # 2^63 minor units: past a BIGINT
    ("-999999999999999.9999", "UYW", "at most 922337203685477.5807 UYW"),
    (12.5, "USD", "not a JSON number"),
    (12, "USD", "not a JSON number"),
    ("\uff11\uff10", "USD", "not a decimal string"),  # fullwidth digits, which `\d` would match
    ("\u0661\u0662.00", "USD", "not a decimal string"),  # Arabic-Indic digits
])
def test_bad_amounts_are_refused_naming_the_field(value, currency, reason):
    with pytest.raises(InvalidInput) as refused:
        parse_amount_minor(value, currency, field="amount")
    assert "amount" in refused.value.fields
    assert reason in refused.value.fields["amount"][0]


@pytest.mark.parametrize("value", [None, True, [], {}, ["1.00"]], ids=repr)
def test_an_amount_that_is_no_number_is_not_refused_as_a_json_number(value):
    # null (or a missing amount), a boolean, an array or an object: the client sent no number, and
    # being told not to send one would send it looking for a number somewhere.
    with pytest.raises(InvalidInput) as refused:
        parse_amount_minor(value, "USD", field="amount")
    assert refused.value.fields["amount"] == ['must be a decimal string such as "123.45"']


@pytest.mark.parametrize("code", ["usd", "US", "ZZZ", "", None, "USDD", "XXX", "XTS", "XAU"])
def test_unknown_currencies_are_refused(code):
    with pytest.raises(InvalidInput) as refused:
        parse_amount_minor("1.00", code)
    assert "currency" in refused.value.fields


@pytest.mark.parametrize("code", ["XEU", "XFO", "XFU", "XRE"])
def test_withdrawn_units_of_account_that_py_moneyed_counts_in_whole_units_are_refused(code):
    # py-moneyed (with babel's data) knows these X codes and gives each a minor unit of 1, as it does
    # gold (XAU) and the SDR (XDR); ISO gives none of them a minor unit: no money is paid in them.
    with pytest.raises(InvalidInput) as refused:
        parse_amount_minor("1", code)
    assert "no minor unit" in refused.value.fields["currency"][0]


@pytest.mark.parametrize("minor, currency, text", [
    (12345, "USD", "123.45"), (-4000, "USD", "-40.00"), (5, "USD", "0.05"), (-5, "USD", "-0.05"),
    (0, "USD", "0.00"), (1500, "JPY", "1500"), (1, "BHD", "0.001"),
])
def test_minor_units_format_as_decimal_strings(minor, currency, text):
    assert format_minor(minor, currency) == text
    assert minor_formatter(currency)(minor) == text


@given(st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1) | st.integers(-10_001, 10_001),
       st.sampled_from([0, 2, 3, 4, 6]))
def test_an_amount_is_written_as_decimal_writes_it(minor, exponent):
    # 6: finer than any ISO currency's minor unit, whose fractions are written as asked for
    assert _formatter(exponent)(minor) == format(Decimal(minor).scaleb(-exponent), "f")


@given(st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1), st.sampled_from(["USD", "JPY", "BHD", "CLF"]))
def test_a_currency_s_formatter_writes_what_parses_back_to_the_amount(minor, currency):
    assert parse_amount_minor(minor_formatter(currency)(minor), currency) == minor


@given(st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1), st.sampled_from(["USD", "JPY", "BHD"]))
def test_formatting_and_parsing_round_trip(minor, currency):
    assert parse_amount_minor(format_minor(minor, currency), currency) == minor
    assert from_money(to_money(minor, currency)) == minor


def test_money_converts_exactly_and_refuses_fractions_of_the_minor_unit():
    assert to_money(12345, "USD") == Money("123.45", "USD")
    assert from_money(Money("0.015", "BHD")) == 15
    with pytest.raises(InvalidInput):
        from_money(Money("0.015", "USD"))


@pytest.mark.parametrize("value, rounded", [
    (Decimal("0.5"), 0), (Decimal("1.5"), 2), (Decimal("2.5"), 2), (Decimal("-2.5"), -2),
    (Decimal("2.5000001"), 3), (Decimal("2.4999999"), 2),
])
def test_rounding_is_half_even_when_asked(value, rounded):
    assert round_minor(value, rounding=ROUND_HALF_EVEN) == rounded


def test_rounding_must_name_its_mode():
    with pytest.raises(TypeError):
        round_minor(Decimal("1.5"))  # type: ignore[call-arg]


def test_rate_arithmetic_is_exact_before_the_single_rounding():
    # 0.2% of USD 12.50 is 2.5 cents: half even gives 2, where half up would give 3
    assert round_minor(multiply_minor(1250, Decimal("0.002")), rounding=ROUND_HALF_EVEN) == 2
    # 17 significant digits times a 10-digit rate: ...29999999.6666666667 rounds up, with no float drift
    assert round_minor(multiply_minor(99999999999999999, Decimal("0.3333333333")), rounding=ROUND_HALF_EVEN) \
        == 33333333330000000
    assert round_minor(prorate_minor(10000, 20000, 50000), rounding=ROUND_HALF_EVEN) == 4000


@pytest.mark.parametrize("text", ["0", "1", "0.20", "0.0000000001", "1.0"])
def test_rates_between_zero_and_one_parse(text):
    assert Decimal(0) <= parse_rate(text) <= 1


@pytest.mark.parametrize("text", ["1.01", "-0.1", "2", "0.2.0", 0.2, "0.12345678901", "NaN", "",
                                  "\uff10.\uff15", "1E-7"])
def test_rates_outside_zero_to_one_or_malformed_are_refused(text):
    with pytest.raises(InvalidInput) as refused:
        parse_rate(text, field="rates.0.rate")
    assert "rates.0.rate" in refused.value.fields
