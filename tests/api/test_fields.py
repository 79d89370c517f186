"""The contract's value types as marshmallow fields, and their 422s through a probe route that
names the field (nested fields by dotted path)."""

import base64
from datetime import date
from decimal import Decimal

import marshmallow as ma
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.auth import allow
from api.body import Blueprint
from api.fields import Amount, AsOf, Currency, Date, Instant, Money, PartnerId, Period, Rate, Str
from api.pagination import NOT_A_CURSOR, Listing, page_query, parse_id_key
from api.routes.revenue import COMMISSION_KINDS, OutcomeSchema, RevenueEventSchema, plain_event, render_outcome
from api.schemas import Schema
from ledger.money import MINOR_MAX
from ledger.revenue import CommissionLine, Outcome
from ledger.schema import EVENT_STATUSES
from tests.api.books import crafted_cursor
from tests.api.conftest import bearer, make_app


THINGS = Listing("things", parse_id_key, first_key=0)  # a list ordered by id
PageQuery = page_query(THINGS)


class MoneySchema(Schema):
    amount = Money()
    adjustment = Money(sign="any")
    minimum = Money(sign="non_negative")


def load(schema: type[Schema], data: dict) -> dict:
    return schema().load(data)


def refused(schema: type[Schema], data: dict) -> dict:
    with pytest.raises(ma.ValidationError) as error:
        schema().load(data)
    return error.value.messages


@pytest.mark.parametrize("amount, currency, minor", [
    ("123.45", "USD", 12345), ("0.5", "USD", 50), ("7", "USD", 700), ("1500", "JPY", 1500),
    ("1.234", "BHD", 1234), ("999999999999999.99", "USD", 99999999999999999),
])
def test_money_loads_a_decimal_string_as_exact_minor_units(amount, currency, minor):
    loaded = load(MoneySchema, {"amount": {"amount": amount, "currency": currency}})["amount"]
    assert loaded == Amount(minor, currency)
    assert isinstance(loaded.amount_minor, int)


def test_money_dumps_as_a_decimal_string_in_the_currencys_minor_unit():
    dumped = MoneySchema().dump({"amount": Amount(-4000, "USD"), "adjustment": Amount(5, "BHD"),
                                 "minimum": Amount(70, "JPY")})
    assert dumped == {"amount": {"amount": "-40.00", "currency": "USD"},
                      "adjustment": {"amount": "0.005", "currency": "BHD"},
                      "minimum": {"amount": "70", "currency": "JPY"}}


def test_money_converts_to_py_moneyed_exactly():
    assert Amount(12345, "USD").money.amount == Decimal("123.45")


@pytest.mark.parametrize("value", [
    {"amount": 123.45, "currency": "USD"}, {"amount": 100, "currency": "USD"},
    {"amount": "NaN", "currency": "USD"}, {"amount": "Infinity", "currency": "USD"},
    {"amount": "-inf", "currency": "USD"},
    {"amount": "1e3", "currency": "USD"}, {"amount": "1.234", "currency": "USD"}, {"amount": "1.5", "currency": "JPY"},
    {"amount": "1234567890123456", "currency": "USD"}, {"amount": "1" * 100, "currency": "USD"},
    {"amount": "1.00", "currency": "XXX"}, {"amount": "1.00", "currency": "usd"}, {"amount": "1.00", "currency": "US"},
    {"amount": "1.00", "currency": ["USD"]}, {"amount": "1.00", "currency": {"code": "USD"}},
    {"amount": "1.00"}, {"currency": "USD"}, {"amount": "1.00", "currency": "USD", "rate": "1"},
    {"amount": " 1.00", "currency": "USD"}, {"amount": "+1.00", "currency": "USD"},
    {"amount": "1,00", "currency": "USD"},
    {"amount": True, "currency": "USD"}, {"amount": None, "currency": "USD"},
    "1.00 USD", ["1.00", "USD"], 1, None,
    {"amount": "0", "currency": "USD"}, {"amount": "-1.00", "currency": "USD"},
], ids=repr)
def test_money_refuses_anything_but_an_exact_positive_decimal_string_naming_the_field(value):
    messages = refused(MoneySchema, {"amount": value})
    assert list(messages) == ["amount"]
    assert all(isinstance(message, str) and message for message in messages["amount"])


def test_money_signs_are_chosen_per_field():
    loaded = load(MoneySchema, {"adjustment": {"amount": "-12.50", "currency": "USD"},
                                "minimum": {"amount": "0", "currency": "USD"}})
    assert loaded == {"adjustment": Amount(-1250, "USD"), "minimum": Amount(0, "USD")}
    assert list(refused(MoneySchema, {"minimum": {"amount": "-0.01", "currency": "USD"}})) == ["minimum"]


class ValuesSchema(Schema):
    at = Instant()
    as_of = AsOf()
    day = Date()
    period = Period()
    rate = Rate()
    currency = Currency()
    partner_id = PartnerId()
    name = Str(5)


def test_each_value_type_loads_to_its_python_value():
    loaded = load(ValuesSchema, {"at": "2026-01-20T01:00:00+01:00", "as_of": "2026-01-20", "day": "2026-01-15",
                                 "period": "2026-02", "rate": "0.20", "currency": "JPY", "partner_id": "north-wind.1",
                                 "name": "abc"})
    assert loaded == {"at": 1_768_867_200_000_000, "as_of": 1_768_953_600_000_000, "day": date(2026, 1, 15),
                      "period": "2026-02", "rate": Decimal("0.20"), "currency": "JPY", "partner_id": "north-wind.1",
                      "name": "abc"}


def test_each_value_type_dumps_to_its_contract_spelling():
    dumped = ValuesSchema().dump({"at": 1_768_867_200_000_000, "day": date(2026, 1, 15), "rate": Decimal("0.2")})
    assert dumped == {"at": "2026-01-20T00:00:00Z", "day": "2026-01-15", "rate": "0.2"}


@pytest.mark.parametrize("field, value", [
    ("at", "2026-01-20T00:00:00"), ("at", "2026-01-20"), ("at", 1768867200), ("at", "x" * 41),
    ("at", "2026-02-30T00:00:00Z"), ("as_of", "2026-13-01"), ("as_of", "soon"), ("day", "2026-1-5"),
    ("day", "2026-02-30"), ("period", "2026-13"), ("period", "2026-1"), ("period", "26-01"), ("rate", "1.5"),
    ("rate", "-0.1"), ("rate", 0.2), ("rate", "NaN"), ("currency", "ABC"), ("currency", "usd"), ("currency", 840),
    ("partner_id", "has:colon"), ("partner_id", ""), ("partner_id", "x" * 65), ("partner_id", "-leading"),
    ("name", ""), ("name", "abcdef"), ("name", 5), ("name", "nul\x00"), ("name", "\ud800"),
])
def test_each_value_type_refuses_bad_input_naming_the_field(field, value):
    assert list(refused(ValuesSchema, {field: value})) == [field]


@pytest.mark.parametrize("field, value, message", [
    ("day", "2026-01-15T00:00:00Z", "must be a date YYYY-MM-DD"),
    ("period", "2026-02-01", "must be a period YYYY-MM"),
    ("rate", "0.12345678901", "with at most 10 decimals"),
    ("currency", "USDX", "is not an ISO 4217 currency code"),
    ("partner_id", "x" * 65, "must be 1-64 characters"),
])
def test_a_value_just_past_its_length_limit_is_told_the_form_its_field_takes(field, value, message):
    [said] = refused(ValuesSchema, {field: value})[field]
    assert message in said


def test_a_value_far_past_its_length_limit_is_refused_by_its_length_alone():
    assert refused(ValuesSchema, {"day": "2026-01-15" * 10}) == {"day": ["must be at most 10 characters"]}


def test_unknown_fields_are_refused_by_name():
    assert list(refused(ValuesSchema, {"colour": "red"})) == ["colour"]


@pytest.mark.parametrize("last_id", [1, 99, 2**63 - 1])
def test_a_cursor_round_trips_and_is_not_a_bare_number(last_id):
    cursor = THINGS.cursor(last_id)
    assert load(PageQuery, {"cursor": cursor})["cursor"] == last_id and not cursor.isdigit()


@pytest.mark.parametrize("cursor", [
    "", "abc", "12", THINGS.cursor(1)[:-1] + "!", "A" * 129,
    crafted_cursor("things:after:-1"), crafted_cursor("things:after:"), crafted_cursor("things:after:1x"),
    crafted_cursor("things:after:9223372036854775808"),  # one past the largest id
    crafted_cursor("after:1"),  # as made before cursors named their list
    crafted_cursor("others:after:1"), crafted_cursor("thing:after:1"), crafted_cursor("thingsx:after:1"),
])
def test_a_cursor_this_api_did_not_hand_out_is_refused(cursor):
    assert refused(PageQuery, {"cursor": cursor}) == {"cursor": ["is not a cursor returned by this API"]}


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_a_cursor_cut_short_is_refused_not_read_as_an_earlier_key(cut):
    """Without a check, "things:after:103" cut short read as "things:after:10" or ":after:1": the list
    started again rows back, and no error said so."""
    cursor = THINGS.cursor(103)
    assert load(PageQuery, {"cursor": cursor})["cursor"] == 103
    assert refused(PageQuery, {"cursor": cursor[:-cut]}) == {"cursor": [NOT_A_CURSOR]}


def test_a_cursor_without_its_check_or_with_another_is_refused():
    content = base64.urlsafe_b64decode(THINGS.cursor(103) + "==").decode()
    check, _, rest = content.partition(":")
    assert rest == "things:after:103" and len(check) == 12
    other = ("0" if check[0] != "0" else "1") + check[1:]
    for text in (rest, f"{other}:{rest}", f":{rest}", f"{check}{rest}"):
        cursor = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
        assert refused(PageQuery, {"cursor": cursor}) == {"cursor": [NOT_A_CURSOR]}, text


def test_page_limits_default_to_100_and_stop_at_1000():
    assert load(PageQuery, {}) == {"limit": 100, "cursor": 0}
    assert load(PageQuery, {"limit": "1000"})["limit"] == 1000
    assert list(refused(PageQuery, {"limit": "1001"})) == ["limit"]


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "12345678901234567890"])
def test_a_page_limit_out_of_range_is_refused_by_its_range_not_as_no_integer(limit):
    assert refused(PageQuery, {"limit": limit}) == {"limit": ["Must be greater than or equal to 1 and less than or "
                                                              "equal to 1000."]}


@pytest.mark.parametrize("limit", ["1.5", "abc", "", " 5", "\uff15", "+5", "1" * 31])
def test_a_page_limit_that_is_no_integer_in_ascii_digits_is_refused_as_such(limit):
    assert refused(PageQuery, {"limit": limit}) == {"limit": ["Not a valid integer."]}


class Event(Schema):
    amount = Money(required=True)


class Batch(Schema):
    events = ma.fields.List(ma.fields.Nested(Event), required=True)
    price = Money()


@pytest.fixture(scope="module")
def probe(shared):
    """A client of an app with one extra route that loads `Batch`, to see its 422s end to end."""
    blp = Blueprint("probe", __name__)

    @blp.route("/probe", methods=["POST"])
    @allow("finance")
    @blp.arguments(Batch)
    def probe_view(args):
        return {"events": len(args["events"])}, 200

    app = make_app(shared.database)
    app.register_blueprint(blp, url_prefix="/v1")
    return app.test_client(), bearer(shared.keys.finance)


def test_a_422_names_a_money_field_by_its_name(probe):
    client, headers = probe
    response = client.post("/v1/probe", json={"events": [], "price": {"amount": 9.99, "currency": "USD"}},
                           headers=headers)
    assert response.status_code == 422
    assert list(response.get_json()["errors"]) == ["price"]


def test_a_422_names_nested_fields_by_dotted_path(probe):
    client, headers = probe
    events = [{"amount": {"amount": "1.00", "currency": "USD"}}, {"amount": {"amount": "1.001", "currency": "USD"}},
              {"amount": {"amount": "1", "currency": "USD"}, "extra": 1}]
    response = client.post("/v1/probe", json={"events": events}, headers=headers)
    assert response.status_code == 422
    assert set(response.get_json()["errors"]) == {"events.1.amount", "events.2.extra"}
    assert client.post("/v1/probe", json={"events": events[:1]}, headers=headers).get_json() == {"events": 1}


# Well-formed events, each field from a few values every field of the schema takes; and the same
# with one field (or one key of its money) replaced by anything, well formed or not.
_GOOD = {"id": ["evt-1", "a", "inv:2026/01@x", "x" * 64], "type": ["invoice_paid", "refund", "chargeback",
                                                                   "chargeback_reversed"],
         "customer_id": ["acme", "c.1_2"], "invoice_id": ["inv-1", "9"],
         "occurred_at": ["2026-01-20T00:00:00Z", "2026-01-20T09:00:00.1234567+09:00", "1970-01-01T00:00:00-00:30"]}
_GOOD_MONEY = st.fixed_dictionaries({"amount": st.sampled_from(["123.45", "0.01", "7", "999999999999999"]),
                                     "currency": st.sampled_from(["USD", "JPY", "BHD"])})
_WELL_FORMED = st.fixed_dictionaries({"amount": _GOOD_MONEY, **{k: st.sampled_from(v) for k, v in _GOOD.items()}})
_ANY_VALUE = st.one_of(st.sampled_from(["", " ", "a b", "é", "x" * 65, "-lead", "0.00", "-1.00", "1.234", "1e3",
                                        "NaN", "1" * 16, "1" * 41, "usd", "XXX", "2026-01-20", "2026-13-01T00:00:00Z",
                                        "2026-01-20T00:00:00", "Refund", "refund", "١٢٣"]),
                       st.text(max_size=70), st.integers(), st.floats(), st.none(), st.booleans(),
                       st.lists(st.integers(), max_size=2), st.fixed_dictionaries({"amount": st.just("1.00")}))
_FIELD_NAMES = st.sampled_from([*_GOOD, "amount", "amount.amount", "amount.currency", "extra"])


def _changed(event: dict, name: str, value) -> dict:
    if name.startswith("amount."):
        return {**event, "amount": {**event["amount"], name.split(".")[1]: value}}
    return {**event, name: value}


_EVENTS = st.one_of(_WELL_FORMED, st.builds(_changed, _WELL_FORMED, _FIELD_NAMES, _ANY_VALUE),
                    _WELL_FORMED.map(lambda event: {k: v for k, v in event.items() if k != "type"}),
                    st.lists(_WELL_FORMED, max_size=1), _ANY_VALUE)


def _schema_load(data):
    try:
        return ma.Schema.load(RevenueEventSchema(), data)  # the schema alone, without the plain path
    except ma.ValidationError as error:
        return ("refused", error.messages)


@given(_EVENTS)
@settings(max_examples=500, deadline=None, database=None)
def test_a_revenue_event_parsed_on_the_plain_path_is_what_the_schema_loads(data):
    loaded = _schema_load(data)
    plain = plain_event(data)
    assert plain is None or plain == loaded
    try:
        through_the_route_s_schema = RevenueEventSchema().load(data)
    except ma.ValidationError as error:
        through_the_route_s_schema = ("refused", error.messages)
    assert through_the_route_s_schema == loaded


def test_a_well_formed_revenue_event_takes_the_plain_path():
    event = {"id": "evt-1", "type": "refund", "customer_id": "acme", "invoice_id": "inv-1",
             "amount": {"amount": "12.30", "currency": "BHD"}, "occurred_at": "2026-01-20T09:00:00+09:00"}
    assert plain_event(event) == {"id": "evt-1", "type": "refund", "customer_id": "acme", "invoice_id": "inv-1",
                                  "amount": Amount(12_300, "BHD"), "occurred_at": _schema_load(event)["occurred_at"]}
    assert plain_event({**event, "amount": {"amount": "0.00", "currency": "BHD"}}) is None



_COMMISSION_LINES = st.builds(CommissionLine, st.sampled_from(["p1", "northwind.eu"]),
                              st.sampled_from(COMMISSION_KINDS), st.integers(-MINOR_MAX, MINOR_MAX),
                              st.sampled_from(["USD", "JPY", "BHD", "CLF"]))
_OUTCOMES = st.builds(Outcome, st.sampled_from(["evt-1", "a:b@c/d"]), st.sampled_from(EVENT_STATUSES),
                      st.lists(_COMMISSION_LINES, max_size=4).map(tuple),
                      st.lists(st.integers(1, 2**63 - 1), max_size=4).map(tuple), st.booleans(),
                      st.sampled_from([200, 201]))


@given(_OUTCOMES)
@settings(max_examples=300, deadline=None, database=None)
def test_an_outcome_answered_by_hand_is_what_its_documented_schema_dumps(outcome):
    # render_outcome skips OutcomeSchema for speed; the OpenAPI document still promises its shape.
    commissions = [{"partner_id": line.partner_id, "kind": line.kind,
                    "amount": Amount(line.amount_minor, line.currency)} for line in outcome.commissions]
    documented = OutcomeSchema().dump({"id": outcome.event_id, "status": outcome.status,
                                       "transaction_ids": list(outcome.transaction_ids), "commissions": commissions})
    assert render_outcome(outcome) == documented
