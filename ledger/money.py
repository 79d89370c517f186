"""Exact money: integer minor units in storage, `Decimal`/`Money` at the edges, never a float.

Amounts are stored as integers in the currency's minor unit (USD cents, JPY yen, BHD fils) with the
ISO 4217 code beside them. The size of the minor unit comes from py-moneyed's
`get_currency(code).sub_unit`, of the codes the books keep (`ledger.currencies`, as the database's
`currencies` table holds them). We never use `Money.get_amount_in_sub_unit()`, which truncates.

Parsing is strict: a decimal string with at most 15 integer digits and no more fractional digits
than the currency has, whose minor units fit the 64-bit integer the databases store (15 digits do
not always: in a currency of four decimals, CLF or UYW, they reach 10^19 minor units). Rounding
happens in exactly one function, `round_minor`, and every caller names the rounding mode at the
call site.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import Any

import moneyed
from moneyed import Money

from ledger.currencies import MINOR_DIGITS
from ledger.errors import InvalidInput, invalid

INTEGER_DIGITS_MAX = 15
MINOR_MAX = 2**63 - 1  # a stored amount: SQLite INTEGER, PostgreSQL BIGINT
# A signed amount: optional minus, 1 to 15 integer digits, optional fraction. No exponent, no
# whitespace, no "NaN"/"Infinity": those are refused before Decimal ever sees the text.
_AMOUNT_PATTERN = re.compile(r"-?([0-9]{1,15})(?:\.([0-9]+))?")
_CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
# 15 integer digits times a rate with up to 28 digits of precision still fits exactly.
_ARITHMETIC = Context(prec=60)

__all__ = [
    "ROUND_HALF_EVEN",
    "Money",
    "currency_exponent",
    "format_minor",
    "from_money",
    "parse_amount_minor",
    "parse_rate",
    "round_minor",
    "to_money",
    "validate_currency",
]


def currency_exponent(code: str) -> int:
    """Number of decimal digits of `code`'s minor unit: USD 2, JPY 0, BHD 3.

    Raises InvalidInput for an unknown code or a currency without a decimal minor unit, and for
    anything that is not a string (a JSON array or object included) before it reaches the cache.
    """
    if type(code) is str:  # a str, so hashable: look it up before the pattern (the hot path)
        exponent = _EXPONENTS.get(code)
        if exponent is not None:
            return exponent
    if not isinstance(code, str) or not _CURRENCY_PATTERN.fullmatch(code):
        raise invalid("currency", f"{code!r} is not an ISO 4217 currency code")
    exponent = _EXPONENTS[code] = _exponent_of(code)  # only codes that passed every check get here
    return exponent


# Codes found valid, with their exponents: three capital letters, so never more than 26**3 entries.
_EXPONENTS: dict[str, int] = {}


# ISO 4217 codes whose minor unit is "N.A.": precious metals, bond-market and IMF units, the testing
# code and "no currency", and the withdrawn units of account of that kind (the ECU, the gold and UIC
# francs, RINET's funds code). py-moneyed gives them a minor unit of 1, as if they were counted in
# whole units like the yen; nobody is paid commission in them.
NOT_MONEY = frozenset({"XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XDR", "XEU", "XFO", "XFU", "XPD", "XPT", "XRE",
                       "XSU", "XTS", "XUA", "XXX"})


def _exponent_of(code: str) -> int:
    if code in NOT_MONEY:
        raise invalid("currency", f"{code!r} is not a currency money is paid in (ISO 4217 gives it no minor unit)")
    try:
        currency = moneyed.get_currency(code)
    except moneyed.CurrencyDoesNotExist:
        raise invalid("currency", f"unknown currency {code!r}") from None
    if code not in MINOR_DIGITS:  # one a py-moneyed release added since: the database's table lacks it
        raise invalid("currency", f"unknown currency {code!r}")
    sub_unit = currency.sub_unit
    if not isinstance(sub_unit, int) or sub_unit < 1:
        raise invalid("currency", f"{code!r} has no minor unit")
    exponent = len(str(sub_unit)) - 1
    if 10**exponent != sub_unit:
        raise invalid("currency", f"{code!r} has a minor unit that is not a power of ten")
    return exponent


def validate_currency(code: str) -> str:
    currency_exponent(code)
    return code


def parse_amount_minor(text: str, currency: str, *, field: str = "amount") -> int:
    """The exact integer minor units of the decimal string `text` in `currency`.

    >>> parse_amount_minor("123.45", "USD")
    12345
    """
    exponent = currency_exponent(currency)
    match = decimal_text(text, field=field)
    fraction = match.group(2) or ""
    if len(fraction) > exponent:
        raise invalid(field, f"{currency} allows at most {exponent} decimal places, got {len(fraction)}")
    integer = int(match.group(1) + fraction.ljust(exponent, "0"))
    if integer > MINOR_MAX:
        raise invalid(field, f"at most {format_minor(MINOR_MAX, currency)} {currency}")
    return -integer if text.startswith("-") else integer


def decimal_text(text: Any, *, field: str = "amount") -> re.Match:
    """`text` read as an amount's decimal string, whatever its currency allows (`parse_amount_minor`):
    a request whose currency is bad has its amount checked this far."""
    if not isinstance(text, str):
        number = isinstance(text, (int, float)) and not isinstance(text, bool)
        raise invalid(field, "must be a decimal string such as \"123.45\"" + (", not a JSON number" if number else ""))
    match = _AMOUNT_PATTERN.fullmatch(text)
    if match is None:
        if re.fullmatch(r"-?[0-9]{16,}(\.[0-9]*)?", text):
            raise invalid(field, f"more than {INTEGER_DIGITS_MAX} integer digits")
        raise invalid(field, f"{text[:40]!r} is not a decimal string such as \"123.45\"")
    return match


def format_minor(amount_minor: int, currency: str) -> str:
    """The decimal string of an integer amount: `format_minor(-4000, "USD") == "-40.00"`."""
    assert isinstance(amount_minor, int) and not isinstance(amount_minor, bool), amount_minor
    return minor_formatter(currency)(amount_minor)


def minor_formatter(currency: str) -> Callable[[int], str]:
    """`format_minor` for one currency, its minor unit looked up once: a busy partner's statement
    writes tens of thousands of amounts."""
    return _formatter(currency_exponent(currency))


@functools.lru_cache(maxsize=None)  # one per minor unit: 0 to 4 decimal digits (CLF) among ISO's
def _formatter(exponent: int) -> Callable[[int], str]:
    """The formatter of amounts with `exponent` decimal digits, the digits of each fraction written
    once (at most 10,000 of them, for the exponents ISO gives), zero written once (a statement line
    leaves one of its two balances alone, save a release's): 0.42 -> 0.13 µs an amount, two in five zero."""
    if exponent == 0:
        return str
    scale = 10**exponent
    fractions = [f"{fraction:0{exponent}d}" for fraction in range(scale)] if exponent <= 4 else _Digits(exponent)
    zero = f"0.{fractions[0]}"

    def format_amount(amount_minor: int) -> str:
        if amount_minor > 0:
            whole, fraction = divmod(amount_minor, scale)
            return f"{whole}.{fractions[fraction]}"
        if amount_minor < 0:
            whole, fraction = divmod(-amount_minor, scale)
            return f"-{whole}.{fractions[fraction]}"
        return zero

    return format_amount


class _Digits:
    """The fractions of a minor unit finer than any ISO currency's, written as asked for."""

    def __init__(self, exponent: int) -> None:
        self.exponent = exponent

    def __getitem__(self, fraction: int) -> str:
        return f"{fraction:0{self.exponent}d}"


def to_money(amount_minor: int, currency: str) -> Money:
    """The py-moneyed `Money` of an integer amount, exactly."""
    exponent = currency_exponent(currency)
    return Money(Decimal(amount_minor).scaleb(-exponent), currency)


def from_money(money: Money) -> int:
    """The exact minor units of a `Money`; refuses a value finer than the minor unit."""
    code = money.currency.code
    return parse_amount_minor(format(money.amount, "f"), code)


def parse_rate(text: str, *, field: str = "rate") -> Decimal:
    """A rate: a decimal string in [0, 1] with at most 10 decimal places."""
    if not isinstance(text, str) or not re.fullmatch(r"[0-9](\.[0-9]{1,10})?", text):
        raise invalid(field, "must be a decimal string in [0, 1] with at most 10 decimals, such as \"0.20\"")
    rate = Decimal(text)
    if rate > 1:
        raise invalid(field, "must be between 0 and 1")
    return rate


def round_minor(value_minor: Decimal, *, rounding: str) -> int:
    """Round a fractional amount of minor units to a whole minor unit with the named mode.

    Every computed amount in the service goes through here exactly once, for example
    `round_minor(Decimal(invoice_minor) * rate, rounding=ROUND_HALF_EVEN)`.
    """
    try:
        whole = value_minor.quantize(Decimal(1), rounding=rounding, context=_ARITHMETIC)
    except InvalidOperation as error:  # only NaN/Infinity reach here, and they are programmer errors
        raise AssertionError(f"cannot round {value_minor!r}") from error
    return int(whole)


def multiply_minor(amount_minor: int, factor: Decimal) -> Decimal:
    """`amount_minor x factor` exactly, before rounding."""
    return _ARITHMETIC.multiply(Decimal(amount_minor), factor)


def prorate_minor(amount_minor: int, numerator_minor: int, denominator_minor: int) -> Decimal:
    """`amount x numerator / denominator` exactly enough for any half-even decision."""
    assert denominator_minor > 0, denominator_minor
    return _ARITHMETIC.divide(_ARITHMETIC.multiply(Decimal(amount_minor), Decimal(numerator_minor)),
                              Decimal(denominator_minor))


def require_positive(amount_minor: int, *, field: str) -> int:
    if amount_minor <= 0:
        raise InvalidInput(f"{field}: must be greater than zero", {field: ["must be greater than zero"]})
    return amount_minor
