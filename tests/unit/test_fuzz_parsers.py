"""Hypothesis fuzzing of the parsers that face the outside world: whatever arrives, the Money
parser and the revenue-event parser either return an exact value or refuse with InvalidInput
naming a field; no other exception escapes, and what they accept round-trips exactly."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import InvalidInput
from ledger.money import currency_exponent, format_minor, parse_amount_minor
from ledger.revenue import EVENT_FIELDS, RevenueEvent, parse_event

CURRENCIES = st.sampled_from(["USD", "JPY", "BHD", "EUR", "usd", "ZZZ", "", "US"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
AMOUNT_TEXTS = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"-?\d{0,18}(\.\d{0,5})?", fullmatch=True),
    st.sampled_from(["NaN", "Infinity", "-0", "1e3", "0x10", " 1", "1 ", "١٢٣", "1_000", "+1"]),
)


@given(text=AMOUNT_TEXTS | JSON_VALUES, currency=CURRENCIES)
def test_the_money_parser_returns_exact_minor_units_or_names_the_field(text, currency):
    try:
        minor = parse_amount_minor(text, currency, field="amount")
    except InvalidInput as refused:
        assert set(refused.fields) <= {"amount", "currency"} and refused.fields
        return
    assert isinstance(minor, int) and abs(minor) < 10 ** (15 + currency_exponent(currency))
    assert parse_amount_minor(format_minor(minor, currency), currency) == minor


event_bodies = st.fixed_dictionaries(
    {},
    optional={
        "id": JSON_VALUES | st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}", fullmatch=True),
        "type": JSON_VALUES | st.sampled_from(["invoice_paid", "refund", "chargeback", "chargeback_reversed"]),
        "customer_id": JSON_VALUES | st.just("acme"),
        "invoice_id": JSON_VALUES | st.just("inv-1"),
        "amount": JSON_VALUES | st.fixed_dictionaries({"amount": AMOUNT_TEXTS, "currency": CURRENCIES}),
        "occurred_at": JSON_VALUES | st.sampled_from(["2026-01-20T00:00:00Z", "2026-01-20", "2026-02-30T00:00:00Z"]),
        "extra": JSON_VALUES,
    })


@given(body=event_bodies | JSON_VALUES)
def test_any_event_body_parses_exactly_or_is_refused_naming_fields(body):
    try:
        event = parse_event(body)
    except InvalidInput as refused:
        assert refused.fields
        sent = set(body) if isinstance(body, dict) else set()
        for name in refused.fields:  # a field of the contract (maybe nested), or an unknown key as sent
            assert name in sent or name == "_schema" or name.split(".")[0] in EVENT_FIELDS, name
        return
    assert isinstance(event, RevenueEvent) and event.amount_minor > 0
    assert json.dumps(list(event))  # plain JSON values only: nothing inexact survived parsing
