"""A plan version's terms held to what Python reads, for a writer that goes around Python
(migration 0061): before it the database held only a JSON object, and terms of `{"rates": "lots"}`
written around the service made every posting, every `verify` and every read of the plan fail.

Each refusal below has the service's own terms beside it as the control; the property test holds
the database to `ledger.terms.parse_terms` both ways, on both engines: it takes every text Python
reads as it is written (all seven terms stated), and nothing Python refuses."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from hypothesis import event, given
from hypothesis import strategies as st

from ledger.db import Database
from ledger.errors import InvalidInput
from ledger.money import format_minor
from ledger.terms import TERM_FIELDS, parse_terms, terms_from_json, terms_to_json
from tests.conftest import database_property, drop_pg_database, new_pg_url, new_sqlite_url

REFUSED = "terms state the seven terms of a plan"
NOT_AN_OBJECT = "terms are a JSON object"
GOOD = {"rates": [{"from_month": 1, "rate": "0.20"}, {"from_month": 13, "rate": "0.1"}], "duration_months": 36,
        "cpa": [{"amount": "100.00", "currency": "USD"}, {"amount": "5", "currency": "JPY"}], "hold_days": 30,
        "min_payout": [{"amount": "50.000", "currency": "BHD"}], "negative_balance": "reset",
        "override": {"rate": "0.05", "basis": "revenue"}}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def terms_database(request, sqlite_template, tmp_path_factory):
    """A migrated database, kept for the module: each probe rolls back."""
    postgres = request.param == "postgres"
    cluster = request.getfixturevalue("pg_cluster") if postgres else None
    url = new_pg_url(cluster) if postgres else new_sqlite_url(sqlite_template, tmp_path_factory.mktemp("terms"))
    database = Database(url)
    yield database
    database.dispose()
    if postgres:
        drop_pg_database(cluster, url)


def accepts(database, text: str) -> bool:
    """Whether the database takes `text` as a new plan's first version's terms (rolled back)."""
    with database.engine.connect() as connection:
        transaction = connection.begin()
        try:
            connection.exec_driver_sql("INSERT INTO plans (id, name, created_at_us) VALUES ('probe', 'Probe', 1)")
            connection.execute(sa.text("INSERT INTO plan_versions (plan_id, version, effective_from_us, terms,"
                                       " created_at_us) VALUES ('probe', 1, 1, :terms, 1)"), {"terms": text})
            return True
        except sa.exc.DBAPIError as error:  # the terms' rule, 0018's, or PostgreSQL's JSON reader
            assert REFUSED in str(error) or NOT_AN_OBJECT in str(error) or "Unicode escape" in str(error), error
            return False
        finally:
            transaction.rollback()


def test_the_services_terms_are_accepted(terms_database):
    assert accepts(terms_database, terms_to_json(parse_terms(GOOD)))
    assert accepts(terms_database, json.dumps({**GOOD, "override": None, "duration_months": None, "cpa": []}))


@pytest.mark.parametrize("term, value", [
    ("rates", "lots"), ("rates", []), ("rates", [{"from_month": 2, "rate": "0.2"}]),
    ("rates", ['{"from_month": 1, "rate": "0.2"}']),  # a string that reads as a step
    ("rates", [{"from_month": 1, "rate": "1.5"}]), ("rates", [{"from_month": 1, "rate": 0.2}]),
    ("rates", [{"from_month": 1.0, "rate": "0.2"}]), ("rates", [{"from_month": 1, "rate": "0.2", "to": 3}]),
    ("rates", [{"from_month": 1, "rate": "0.2"}, {"from_month": 1, "rate": "0.3"}]),
    ("rates", [{"from_month": 1, "rate": "0.2\u0000"}]), ("rates", [{"from_month": 1, "rate": "0.12345678901"}]),
    ("rates", [{"from_month": month, "rate": "0.1"} for month in range(1, 26)]),
    ("duration_months", 0), ("duration_months", 1201), ("duration_months", "12"),
    ("hold_days", -1), ("hold_days", 3651), ("hold_days", "30"), ("hold_days", None),
    ("cpa", [{"amount": "10.001", "currency": "USD"}]), ("cpa", [{"amount": "1.5", "currency": "JPY"}]),
    ("cpa", [{"amount": "10", "currency": "ZZZ"}]), ("cpa", [{"amount": "-1.00", "currency": "USD"}]),
    ("cpa", [{"amount": 10, "currency": "USD"}]), ("cpa", [{"amount": "1", "currency": "USD"}] * 2),
    ("cpa", [{"amount": "922337203685477.5808", "currency": "CLF"}]),  # one minor unit past the largest
    ("min_payout", [{"amount": "1", "currency": "USD", "note": "x"}]), ("min_payout", [["1", "USD"]]),
    ("negative_balance", "never"), ("negative_balance", None),
    ("override", {"rate": "0.2"}), ("override", "x"), ("override", {"rate": "0.2", "basis": "profit"}),
    ("override", {"rate": "2", "basis": "revenue"}),
])
def test_terms_python_cannot_read_are_refused(terms_database, term, value):
    text = json.dumps({**GOOD, term: value})
    with pytest.raises(InvalidInput):
        terms_from_json(text)
    assert not accepts(terms_database, text)


@pytest.mark.parametrize("text", [
    json.dumps({key: value for key, value in GOOD.items() if key != "override"}),  # a term left out
    json.dumps(GOOD)[:-1] + ', "hold_days": 7}',  # a term written twice
    json.dumps({**GOOD, "cpa": None}),  # Python reads it as no bounty, and writes []
    json.dumps(GOOD).replace('"hold_days": 30', '"hold_days": 1e2'),  # a float, to Python
    json.dumps({**GOOD, "extra": 1}),
], ids=["left out", "twice", "null list", "1e2", "extra"])
def test_terms_not_as_python_writes_them_are_refused(terms_database, text):
    assert not accepts(terms_database, text)


def test_the_largest_amount_is_accepted(terms_database):
    largest = [{"amount": "922337203685477.5807", "currency": "CLF"}]
    assert parse_terms({**GOOD, "cpa": largest}).cpa_minor == {"CLF": 2**63 - 1}
    assert accepts(terms_database, json.dumps({**GOOD, "cpa": largest}))


# ---- the database against Python, both ways ----

_RATE = st.one_of(st.from_regex(r"0(\.[0-9]{1,10})?", fullmatch=True), st.sampled_from(["1", "1.0", "1.000"]))
_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False), st.text(max_size=4),
                  st.sampled_from(["1.5", "0.", ".5", "-0.1", " 0.2", "0.2\n", "0.12345678901", "1.01", "01"]))
_MONTH = st.one_of(st.integers(1, 1200), st.integers(1, 1200), st.integers(-1, 1202), st.just(2**70),
                   st.sampled_from([1.0, True, "1"]))
_STEP = st.one_of(st.fixed_dictionaries({"from_month": _MONTH, "rate": st.one_of(_RATE, _RATE, _JUNK)}),
                  st.fixed_dictionaries({"rate": _RATE}), _JUNK)


@st.composite
def _rates(draw):
    if draw(st.booleans()):  # in order from month 1: mostly valid
        months = sorted(draw(st.lists(st.integers(2, 1200), max_size=RATE_STEPS_DRAWN, unique=True)))
        return [{"from_month": month, "rate": draw(_RATE)} for month in [1, *months]]
    return draw(st.one_of(st.lists(_STEP, max_size=4), _JUNK))


RATE_STEPS_DRAWN = 25  # one past the most allowed
_CURRENCY = st.sampled_from(["USD", "USD", "JPY", "BHD", "CLF", "EUR", "ZZZ", "XAU", "usd", "US", ""])
_AMOUNT = st.one_of(st.from_regex(r"[0-9]{1,16}(\.[0-9]{1,5})?", fullmatch=True),
                    st.sampled_from(["0", "0.00", "-0", "-1", "1e2", "", "1.", "922337203685477.5807",
                                     "922337203685477.5808", "9223372036854775807", "99999999999999.9999"]),
                    st.integers(0, 5))
_MONEY = st.one_of(st.fixed_dictionaries({"amount": _AMOUNT, "currency": _CURRENCY}),
                   st.fixed_dictionaries({"amount": _AMOUNT}), _JUNK)
_MONEY_LIST = st.one_of(st.lists(_MONEY, max_size=3), st.none(), _JUNK)
_OVERRIDE = st.one_of(st.none(), st.fixed_dictionaries({
    "rate": st.one_of(_RATE, _JUNK), "basis": st.sampled_from(["revenue", "commission", "profit", None])}), _JUNK)
_ANY = {  # each term drawn as anything near it, right or wrong
    "rates": _rates(),
    "duration_months": st.one_of(st.none(), st.integers(1, 1200), st.integers(-1, 1202), _JUNK),
    "cpa": _MONEY_LIST,
    "hold_days": st.one_of(st.integers(0, 3650), st.integers(-1, 3652), _JUNK),
    "min_payout": _MONEY_LIST,
    "negative_balance": st.sampled_from(["carry_forward", "reset", "never", None, 1]),
    "override": _OVERRIDE,
}


@st.composite
def _money_written(draw):
    """A money list as the service writes one: each currency once, amounts with its digits."""
    currencies = draw(st.lists(st.sampled_from(["USD", "JPY", "BHD", "CLF", "EUR"]), unique=True, max_size=3))
    return [{"amount": format_minor(draw(st.integers(0, 2**63 - 1)), currency), "currency": currency}
            for currency in currencies]


_WRITTEN = st.fixed_dictionaries({  # terms as the service writes them
    "rates": st.lists(st.integers(2, 1200), max_size=23, unique=True).flatmap(
        lambda months: st.tuples(*[_RATE] * (len(months) + 1)).map(
            lambda rates: [{"from_month": month, "rate": rate} for month, rate in zip([1, *sorted(months)], rates)])),
    "duration_months": st.one_of(st.none(), st.integers(1, 1200)),
    "cpa": _money_written(),
    "hold_days": st.integers(0, 3650),
    "min_payout": _money_written(),
    "negative_balance": st.sampled_from(["carry_forward", "reset"]),
    "override": st.one_of(st.none(), st.fixed_dictionaries({"rate": _RATE,
                                                            "basis": st.sampled_from(["revenue", "commission"])})),
})


@st.composite
def _terms(draw):
    """Terms as written, one of them (or none) drawn anew as anything near it, one left out or not."""
    data = draw(_WRITTEN)
    changed = draw(st.one_of(st.none(), st.sampled_from(TERM_FIELDS)))
    if changed is not None:
        data[changed] = draw(_ANY[changed])
    left_out = draw(st.one_of(st.none(), st.none(), st.sampled_from(TERM_FIELDS)))
    return {key: value for key, value in data.items() if key != left_out}


def python_reads_as_written(data: dict) -> bool:
    """Whether Python reads `data` and it is as Python writes terms: every term stated, and the
    money lists lists of amounts without a sign (`parse_terms` also takes a null list, and a
    negative zero)."""
    try:
        parse_terms(data)
    except InvalidInput:
        return False
    money = [item for name in ("cpa", "min_payout") for item in (data.get(name) or [])]
    return set(data) == set(TERM_FIELDS) and all(isinstance(data.get(name), list) for name in ("cpa", "min_payout")) \
        and not any(item["amount"].startswith("-") for item in money)


@given(data=_terms(), ascii_only=st.booleans())
@database_property(400)
def test_the_database_takes_terms_as_python_reads_them_and_nothing_it_refuses(terms_database, data, ascii_only):
    text = json.dumps(data, ensure_ascii=ascii_only)
    read = python_reads_as_written(data)
    assert accepts(terms_database, text) == read, text
    if read:
        assert accepts(terms_database, terms_to_json(parse_terms(data)))
    event("accepted" if read else "refused")
