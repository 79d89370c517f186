"""Revenue events parsed from request data (the import path): every bad field is named."""

import pytest

from ledger.errors import InvalidInput
from ledger.revenue import RevenueEvent, parse_event

GOOD = {"id": "evt-1", "type": "invoice_paid", "customer_id": "acme", "invoice_id": "inv-1",
        "amount": {"amount": "500.00", "currency": "USD"}, "occurred_at": "2026-01-20T00:00:00Z"}


def test_a_good_event_parses_to_exact_minor_units():
    assert parse_event(GOOD) == RevenueEvent("evt-1", "invoice_paid", "acme", "inv-1", "USD", 50_000, 1_768_867_200_000_000)


@pytest.mark.parametrize("change, field", [
    ({"amount": {"amount": "1.00", "currency": "ZZZ"}}, "amount.currency"),
    ({"amount": {"amount": "1.00", "currency": 840}}, "amount.currency"),
    ({"amount": {"amount": "1.001", "currency": "USD"}}, "amount.amount"),
    ({"amount": {"amount": 12.5, "currency": "USD"}}, "amount.amount"),
    ({"amount": {"amount": "0.00", "currency": "USD"}}, "amount.amount"),
    ({"amount": "500.00"}, "amount"),
    ({"type": "gift"}, "type"),
    ({"occurred_at": "2026-01-20"}, "occurred_at"),
    # past the API's 40 characters: a file's event the API then refused, so billing's retry was a 422, not a replay
    ({"occurred_at": "2026-01-20T00:00:00." + "0" * 20 + "Z"}, "occurred_at"),
    ({"id": ""}, "id"),
    ({"customer_id": "a b"}, "customer_id"),
    ({"surprise": True}, "surprise"),
])
def test_each_bad_field_is_named(change, field):
    with pytest.raises(InvalidInput) as refused:
        parse_event({**GOOD, **change})
    assert field in refused.value.fields


def test_an_instant_of_forty_characters_is_taken():
    occurred_at = "2026-01-20T00:00:00." + "9" * 19 + "Z"
    assert len(occurred_at) == 40 and parse_event({**GOOD, "occurred_at": occurred_at}) == parse_event(GOOD)._replace(
        occurred_at_us=1_768_867_200_999_999)


def test_missing_fields_are_each_named():
    with pytest.raises(InvalidInput) as refused:
        parse_event({"id": "evt-1"})
    assert set(refused.value.fields) == {"type", "customer_id", "invoice_id", "amount", "occurred_at"}
