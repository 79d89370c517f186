"""Commission plan terms: the immutable content of one plan version, and its strict parser.

A plan version never changes once stored; `Terms` is its value. `parse_terms` turns request data
into `Terms` or raises InvalidInput naming the field (`rates.1.from_month`, `cpa.0.amount`, ...).
`terms_to_json` is canonical (sorted keys, decimal strings), so equal terms store equal text.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, NamedTuple

from ledger.errors import InvalidInput
from ledger.money import currency_exponent, decimal_text, format_minor, parse_amount_minor, parse_rate

NEGATIVE_BALANCE_POLICIES = ("carry_forward", "reset")
OVERRIDE_BASES = ("revenue", "commission")
RATE_STEPS_MAX = 24
DURATION_MONTHS_MAX = 1200
HOLD_DAYS_MAX = 3650
TERM_FIELDS = ("rates", "duration_months", "cpa", "hold_days", "min_payout", "negative_balance", "override")


class RateStep(NamedTuple):
    from_month: int
    rate: Decimal


class Override(NamedTuple):
    rate: Decimal
    basis: str  # "revenue" or "commission"


class Terms(NamedTuple):
    rates: tuple[RateStep, ...]
    duration_months: int | None
    cpa_minor: dict[str, int]
    hold_days: int
    min_payout_minor: dict[str, int]
    negative_balance: str
    override: Override | None


def rate_for_month(terms: Terms, month_index: int) -> Decimal:
    """The schedule entry with the greatest `from_month` <= `month_index`."""
    rate = Decimal(0)
    for step in terms.rates:
        if step.from_month <= month_index:
            rate = step.rate
    return rate


class _Errors:
    def __init__(self) -> None:
        self.fields: dict[str, list[str]] = {}

    def add(self, field: str, message: str) -> None:
        self.fields.setdefault(field, []).append(message)

    def capture(self, parse, *args, **kwargs):
        try:
            return parse(*args, **kwargs)
        except InvalidInput as error:
            for field, messages in error.fields.items():
                self.fields.setdefault(field, []).extend(messages)
            return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_rates(data: Any, errors: _Errors) -> tuple[RateStep, ...]:
    if not isinstance(data, list) or not 1 <= len(data) <= RATE_STEPS_MAX:
        errors.add("rates", f"a list of 1 to {RATE_STEPS_MAX} steps {{\"from_month\", \"rate\"}}")
        return ()
    steps: list[RateStep] = []
    for index, step in enumerate(data):
        if not isinstance(step, dict) or set(step) != {"from_month", "rate"}:
            errors.add(f"rates.{index}", "a step has exactly the fields from_month and rate")
            continue
        month = step["from_month"]
        rate = errors.capture(parse_rate, step["rate"], field=f"rates.{index}.rate")  # named beside a bad month
        if not _is_int(month) or not 1 <= month <= DURATION_MONTHS_MAX:
            errors.add(f"rates.{index}.from_month", f"an integer from 1 to {DURATION_MONTHS_MAX}")
            continue
        if steps and month <= steps[-1].from_month:
            errors.add(f"rates.{index}.from_month", "steps must be in increasing from_month order")
        if rate is not None:
            steps.append(RateStep(month, rate))
    if steps and steps[0].from_month != 1:
        errors.add("rates.0.from_month", "the first step starts at month 1 (use rate \"0\" for a later start)")
    return tuple(steps)


def _parse_money_list(data: Any, name: str, errors: _Errors) -> dict[str, int]:
    if data is None:
        return {}
    if not isinstance(data, list):
        errors.add(name, "a list of money objects {\"amount\", \"currency\"}")
        return {}
    amounts: dict[str, int] = {}
    for index, item in enumerate(data):
        if not isinstance(item, dict) or set(item) != {"amount", "currency"}:
            errors.add(f"{name}.{index}", "a money object has exactly the fields amount and currency")
            continue
        currency = item["currency"]
        try:
            currency_exponent(currency)
        except InvalidInput as error:
            errors.add(f"{name}.{index}.currency", error.fields["currency"][0])
            # The amount as far as no currency decides it: a decimal string, not negative.
            if errors.capture(decimal_text, item["amount"], field=f"{name}.{index}.amount") is not None \
                    and Decimal(item["amount"]) < 0:
                errors.add(f"{name}.{index}.amount", "must not be negative")
            continue
        minor = errors.capture(parse_amount_minor, item["amount"], currency, field=f"{name}.{index}.amount")
        if minor is None:
            continue
        if minor < 0:
            errors.add(f"{name}.{index}.amount", "must not be negative")
        elif currency in amounts:
            errors.add(f"{name}.{index}.currency", f"{currency} is listed twice")
        else:
            amounts[currency] = minor
    return amounts


def _parse_override(data: Any, errors: _Errors) -> Override | None:
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) != {"rate", "basis"}:
        errors.add("override", "an object with exactly the fields rate and basis")
        return None
    rate = errors.capture(parse_rate, data["rate"], field="override.rate")
    if data["basis"] not in OVERRIDE_BASES:
        errors.add("override.basis", "must be revenue or commission")
        return None
    return None if rate is None else Override(rate, data["basis"])


def parse_terms(data: dict[str, Any]) -> Terms:
    """Strictly parse plan terms from request data; raises InvalidInput naming every bad field."""
    errors = _Errors()
    unknown = sorted(set(data) - set(TERM_FIELDS))
    for field in unknown:
        errors.add(field, "unknown field")
    # Every term is stated, null or empty where that is meant: a version restates the plan, and a
    # term left out of a version meant to change the rate would silently end the window (lifetime)
    # or the minimum payout. `cpa` and `override` are optional, as in the contract.
    for required in ("rates", "duration_months", "hold_days", "min_payout", "negative_balance"):
        if required not in data:
            errors.add(required, "missing required field")
    rates = _parse_rates(data.get("rates"), errors) if "rates" in data else ()
    duration = data.get("duration_months")
    if duration is not None and (not _is_int(duration) or not 1 <= duration <= DURATION_MONTHS_MAX):
        errors.add("duration_months", f"null (lifetime) or an integer from 1 to {DURATION_MONTHS_MAX}")
    hold_days = data.get("hold_days", 0)
    if not _is_int(hold_days) or not 0 <= hold_days <= HOLD_DAYS_MAX:
        errors.add("hold_days", f"an integer from 0 to {HOLD_DAYS_MAX}")
    policy = data.get("negative_balance")
    if "negative_balance" in data and policy not in NEGATIVE_BALANCE_POLICIES:
        errors.add("negative_balance", "must be carry_forward or reset")
    cpa = _parse_money_list(data.get("cpa"), "cpa", errors)
    min_payout = _parse_money_list(data.get("min_payout"), "min_payout", errors)
    override = _parse_override(data.get("override"), errors)
    if errors.fields:
        first = next(iter(errors.fields))
        raise InvalidInput(f"{first}: {errors.fields[first][0]}", errors.fields)
    return Terms(rates, duration, cpa, hold_days, min_payout, policy, override)


def terms_to_data(terms: Terms) -> dict[str, Any]:
    """The public (JSON) form of terms, which `parse_terms` reads back to equal terms."""
    money = lambda amounts: [{"amount": format_minor(minor, currency), "currency": currency}  # noqa: E731
                             for currency, minor in sorted(amounts.items())]
    return {
        "rates": [{"from_month": step.from_month, "rate": format(step.rate, "f")} for step in terms.rates],
        "duration_months": terms.duration_months,
        "cpa": money(terms.cpa_minor),
        "hold_days": terms.hold_days,
        "min_payout": money(terms.min_payout_minor),
        "negative_balance": terms.negative_balance,
        "override": None if terms.override is None else {"rate": format(terms.override.rate, "f"),
                                                         "basis": terms.override.basis},
    }


def terms_to_json(terms: Terms) -> str:
    return json.dumps(terms_to_data(terms), sort_keys=True, separators=(",", ":"))


def terms_from_json(text: str) -> Terms:
    return parse_terms(json.loads(text))
