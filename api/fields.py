"""Marshmallow fields for the contract's value types, each parsed by the domain's own parser.

| field        | JSON                                        | Python                           |
|--------------|---------------------------------------------|----------------------------------|
| `Money`      | `{"amount": "123.45", "currency": "USD"}`   | `Amount(amount_minor, currency)` |
| `Currency`   | `"USD"`                                     | `str`                            |
| `Instant`    | RFC 3339 with an offset                     | `int` microseconds since epoch   |
| `AsOf`       | an instant, or a date (= end of that day)   | `int` microseconds (exclusive)   |
| `Start`      | an instant, or a date (= start of that day) | `int` microseconds               |
| `Date`       | `"YYYY-MM-DD"`                              | `datetime.date`                  |
| `Period`     | `"YYYY-MM"`                                 | `str`                            |
| `Rate`       | decimal string in [0, 1]                    | `Decimal`                        |
| `PartnerId`  | 1-64 of letters, digits, `_ . -`            | `str`                            |
| `ExternalId` | 1-64 of letters, digits, `_ . : @ / -`      | `str`                            |
| `Str(n)`     | a string of 1..n characters, not all blank  | `str`                            |
| `Bool`       | `true` or `false`, nothing else             | `bool`                           |
| `Head`       | `"ID:HASH"`, a head verify reported         | `(int, str)`                     |

Every string has a length limit, checked before any parsing. A domain parser's `InvalidInput`
becomes a marshmallow `ValidationError`, so the 422 names the field as the client spelt it. Money
never passes through a float: a JSON number is refused.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from typing import Any, NamedTuple

import marshmallow as ma
from moneyed import Money as MoneyedMoney

from ledger.accounts import validate_partner_id
from ledger.customers import validate_external_id
from ledger.errors import InvalidInput, invalid
from ledger.instants import (INSTANT_TEXT_MAX, format_instant, parse_as_of, parse_date, parse_instant, parse_period,
                             start_of_day_us)
from ledger.money import format_minor, parse_amount_minor, parse_rate, to_money, validate_currency
from ledger.verify import PROGRAM_ROW, parse_close, parse_head

AMOUNT_TEXT_MAX = 40
# An instant whose offset's "+" an unencoded query string turned into a space.
_PLUS_READ_AS_SPACE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)? "
                                 r"[0-9]{2}:[0-9]{2}")
# How far past its limit a value is still shown to its parser, for a message that names the form
# the field takes; the parsers are regular expressions, linear in the text.
_PARSE_OVERLONG_FACTOR = 4


class Amount(NamedTuple):
    """An exact amount: integer minor units and the ISO 4217 code."""

    amount_minor: int
    currency: str

    @property
    def money(self) -> MoneyedMoney:
        return to_money(self.amount_minor, self.currency)


def _messages(error: InvalidInput) -> list[str]:
    return [message for messages in error.fields.values() for message in messages] or [error.detail]


def storable(text: str) -> None:
    """Refuse what a database cannot hold: NUL characters and unpaired UTF-16 surrogates."""
    if "\x00" in text:
        raise ma.ValidationError("must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ma.ValidationError("must be valid Unicode text") from None


def not_blank(text: str) -> None:
    if not text.strip():
        raise ma.ValidationError("must not be blank")


class Str(ma.fields.String):
    """A string of `min_length`..`max_length` characters that a database can store; when it must
    have characters, they may not all be white space (a name or reason of spaces says nothing)."""

    def __init__(self, max_length: int, *, min_length: int = 1, validate: Any = None, **kwargs) -> None:
        extra = [] if validate is None else list(validate) if isinstance(validate, (list, tuple)) else [validate]
        checks = [ma.validate.Length(min=min_length, max=max_length), storable, *([not_blank] if min_length else [])]
        super().__init__(validate=[*checks, *extra], **kwargs)


class Bool(ma.fields.Boolean):
    """A JSON `true` or `false`, nothing else: marshmallow's Boolean also takes "yes", "on", 1 and
    the like, which every other field of ours would refuse as the wrong type."""

    default_error_messages = {"invalid": "must be true or false"}

    def _deserialize(self, value, attr, data, **kwargs) -> bool:
        if not isinstance(value, bool):  # 1 == True to Python, and so `1 in truthy`
            raise self.make_error("invalid")
        return value


class _Parsed(ma.fields.String):
    """A string the domain parses: bounded length first, then `parse(text, field)`."""

    text_length_max = 64
    openapi: dict[str, Any] = {}

    def __init__(self, **kwargs) -> None:
        metadata = {"maxLength": self.text_length_max, **self.openapi, **kwargs.pop("metadata", {})}
        super().__init__(metadata=metadata, **kwargs)

    def parse(self, text: str, field: str) -> Any:
        raise NotImplementedError

    def format(self, value: Any) -> str:
        return str(value)

    def _deserialize(self, value, attr, data, **kwargs) -> Any:
        if not isinstance(value, str):
            raise ma.ValidationError("must be a string")
        field = self.data_key or self.name or "value"
        if len(value) > self.text_length_max:
            raise ma.ValidationError(self._too_long(value, field))
        try:
            return self.parse(value, field)
        except InvalidInput as error:
            raise ma.ValidationError(_messages(error)) from None

    def _too_long(self, value: str, field: str) -> list[str]:
        """What the parser says of a value a little too long, else the bare limit: an instant sent
        for a date (an attribution's `effective_from`), a date for a period or a rate of eleven
        decimals is a client's slip that a length alone does not name; the form the field takes
        does. A value far past the limit is not parsed at all."""
        length = f"must be at most {self.text_length_max} characters"
        if len(value) > _PARSE_OVERLONG_FACTOR * self.text_length_max:
            return [length]
        try:
            self.parse(value, field)
        except InvalidInput as error:
            return _messages(error)
        return [length]

    def _serialize(self, value, attr, obj, **kwargs) -> str | None:
        return None if value is None else self.format(value)


class Instant(_Parsed):
    """An RFC 3339 instant with an offset, as integer microseconds since the epoch."""

    text_length_max = INSTANT_TEXT_MAX
    openapi = {"format": "date-time", "example": "2026-01-20T00:00:00Z",
               "description": "RFC 3339 instant with an offset"}

    def parse(self, text: str, field: str) -> int:
        return parse_instant(text, field=field)

    def format(self, value: int) -> str:
        return format_instant(value)


class AsOf(Instant):
    """An `as_of` bound: an instant, or a date meaning the end of that day in UTC (exclusive)."""

    openapi = {"example": "2026-03-31", "description": "an RFC 3339 instant, or a date YYYY-MM-DD meaning the "
                                                       "end of that day (UTC); postings effective before it count"}

    def parse(self, text: str, field: str) -> int:
        if _PLUS_READ_AS_SPACE.fullmatch(text):  # `as_of` comes in a query string, where "+" is a space
            raise invalid(field, f"reads as {text!r}: a '+' in a query string is a space; send the offset as "
                                 f"%2B{text[-5:]}")
        return parse_as_of(text, field=field)


class Start(Instant):
    """When a dated fact starts: an instant, or a date meaning the start of that day in UTC."""

    openapi = {"example": "2026-04-01", "description": "an RFC 3339 instant, or a date YYYY-MM-DD meaning the "
                                                       "start of that day (UTC)"}

    def parse(self, text: str, field: str) -> int:
        if len(text) == len("YYYY-MM-DD"):
            return start_of_day_us(parse_date(text, field=field))
        return parse_instant(text, field=field)


class Date(_Parsed):
    text_length_max = 10
    openapi = {"format": "date", "example": "2026-01-15"}

    def parse(self, text: str, field: str) -> date:
        return parse_date(text, field=field)

    def format(self, value: date) -> str:
        return value.isoformat()


class Head(_Parsed):
    """A chain head as verify reports one to record: `ID:HASH`."""

    text_length_max = 90
    openapi = {"example": "1024:" + "0" * 64}

    def parse(self, text: str, field: str) -> tuple[int, str]:
        return parse_head(text, field=field)

    def format(self, value: tuple[int, str]) -> str:
        return f"{value[0]}:{value[1]}"


class ProgramHead(Head):
    """A head of the program's chain as verify reports one to record: `ID:HASH`."""

    def parse(self, text: str, field: str) -> tuple[int, str]:
        return parse_head(text, field=field, what=PROGRAM_ROW)


class RecordedClose(_Parsed):
    """A close as verify reports one to record: `PERIOD:HASH`."""

    text_length_max = 80
    openapi = {"example": "2026-02:" + "0" * 64}

    def parse(self, text: str, field: str) -> tuple[str, str]:
        return parse_close(text, field=field)


class Period(_Parsed):
    text_length_max = 7
    openapi = {"pattern": r"^[0-9]{4}-[0-9]{2}$", "example": "2026-02", "description": "a calendar month in UTC"}

    def parse(self, text: str, field: str) -> str:
        return parse_period(text, field=field)


class Rate(_Parsed):
    text_length_max = 12
    openapi = {"example": "0.20", "description": "a decimal string in [0, 1]"}

    def parse(self, text: str, field: str) -> Decimal:
        return parse_rate(text, field=field)

    def format(self, value: Decimal) -> str:
        return format(value, "f")


class Currency(_Parsed):
    text_length_max = 3
    openapi = {"minLength": 3, "example": "USD", "description": "ISO 4217 currency code"}

    def parse(self, text: str, field: str) -> str:
        return validate_currency(text)


class PartnerId(_Parsed):
    openapi = {"pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", "example": "northwind"}

    def parse(self, text: str, field: str) -> str:
        return validate_partner_id(text, field=field)


class ExternalId(_Parsed):
    """An id that comes from billing: a customer, an invoice, a revenue event."""

    openapi = {"pattern": r"^[A-Za-z0-9][A-Za-z0-9_.:@/\-]{0,63}$", "example": "inv-1"}

    def parse(self, text: str, field: str) -> str:
        return validate_external_id(text, field=field)


# sign -> (accepts(amount_minor), refusal, how the OpenAPI document describes it)
_SIGNS = {
    "positive": (lambda minor: minor > 0, "must be greater than zero", "greater than zero"),
    "non_negative": (lambda minor: minor >= 0, "must not be negative", "zero or more"),
    "any": (lambda minor: True, "", "signed"),
}


class Money(ma.fields.Field):
    """`{"amount": "123.45", "currency": "USD"}` as an exact `Amount`.

    `sign` is `positive` (default), `non_negative` or `any` (a signed adjustment). Refused with the
    field named: a JSON number, NaN/Infinity, an exponent, more decimals than the currency has, more
    than 15 integer digits, an unknown currency, any other key.
    """

    def __init__(self, *, sign: str = "positive", **kwargs) -> None:
        assert sign in _SIGNS, sign
        self.sign = sign
        metadata = {
            "type": "object",
            "required": ["amount", "currency"],
            "additionalProperties": False,
            "properties": {
                "amount": {"type": "string", "maxLength": AMOUNT_TEXT_MAX, "example": "123.45",
                           "description": f"decimal string, {_SIGNS[sign][2]}, with no more decimals than the "
                                          "currency's minor unit"},
                "currency": {"type": "string", "minLength": 3, "maxLength": 3, "example": "USD"},
            },
            **kwargs.pop("metadata", {}),
        }
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs) -> Amount:
        if not isinstance(value, dict):
            raise ma.ValidationError('must be an object such as {"amount": "123.45", "currency": "USD"}')
        unknown = sorted(set(value) - {"amount", "currency"})
        if unknown:
            raise ma.ValidationError(f"unknown field(s): {', '.join(map(str, unknown))[:200]}")
        amount, currency = value.get("amount"), value.get("currency")
        if not isinstance(currency, str) or len(currency) != 3:
            raise ma.ValidationError("currency must be an ISO 4217 code such as \"USD\"")
        if isinstance(amount, str) and len(amount) > AMOUNT_TEXT_MAX:
            raise ma.ValidationError(f"amount must be at most {AMOUNT_TEXT_MAX} characters")
        try:
            amount_minor = parse_amount_minor(amount, currency, field=self.data_key or self.name or "amount")
        except InvalidInput as error:
            raise ma.ValidationError(_messages(error)) from None
        accepts, message, _ = _SIGNS[self.sign]
        if not accepts(amount_minor):
            raise ma.ValidationError(f"amount {message}")
        return Amount(amount_minor, currency)

    def _serialize(self, value, attr, obj, **kwargs) -> dict[str, str] | None:
        if value is None:
            return None
        return money_json(value.amount_minor, value.currency)


def money_json(amount_minor: int, currency: str) -> dict[str, str]:
    """A Money object as the API writes it: the amount a decimal string in the currency's digits."""
    return {"amount": format_minor(amount_minor, currency), "currency": currency}

