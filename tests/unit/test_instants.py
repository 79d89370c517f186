from datetime import datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ledger.errors import InvalidInput
from ledger.instants import (
    UTC,
    add_days_us,
    add_months_us,
    format_instant,
    from_us,
    month_index,
    parse_as_of,
    parse_at,
    parse_date,
    parse_instant,
    parse_period,
    period_bounds_us,
    period_of,
    to_us,
)
from ledger.terms import DURATION_MONTHS_MAX, HOLD_DAYS_MAX


def at(text: str) -> int:
    return parse_instant(text, field="t")


def test_instants_need_an_offset_and_are_normalized_to_utc():
    assert format_instant(at("2026-01-20T02:00:00+02:00")) == "2026-01-20T00:00:00Z"
    assert format_instant(at("2026-01-20T00:00:00-23:59")) == "2026-01-20T23:59:00Z"
    for bad in ["2026-01-20T00:00:00", "2026-01-20", "yesterday", "2026-13-01T00:00:00Z", 5,
                # RFC 3339's offsets: minutes 00-59, hours 00-23 (datetime read "+00:99" as 1 h 39 min)
                "2026-01-20T00:00:00+00:60", "2026-01-20T00:00:00+00:99", "2026-01-20T00:00:00-05:75",
                "2026-01-20T00:00:00+24:00"]:
        with pytest.raises(InvalidInput) as refused:
            parse_instant(bad, field="occurred_at")
        assert "occurred_at" in refused.value.fields


_FIRST_US = to_us(datetime(1, 1, 1, tzinfo=UTC))
_LAST_US = to_us(datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))


@given(st.integers(_FIRST_US, _LAST_US) | st.integers(_FIRST_US // 1_000_000 + 1, _LAST_US // 1_000_000).map(
    lambda second: second * 1_000_000))
@example(0)
@example(-1)
@example(_FIRST_US)
@example(_LAST_US)
@example(951_782_400_000_000)  # 2000-02-29
def test_an_instant_is_written_as_its_datetime_writes_it_with_z_for_utc(instant_us):
    assert format_instant(instant_us) == from_us(instant_us).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("instant_us", [_FIRST_US - 1, _LAST_US + 1])
def test_an_instant_no_datetime_holds_cannot_be_written(instant_us):
    with pytest.raises(OverflowError):
        format_instant(instant_us)


def test_a_date_as_of_means_the_end_of_that_day():
    assert parse_as_of("2026-02-28") == at("2026-03-01T00:00:00Z")
    assert parse_as_of("2026-02-28T12:00:00Z") == at("2026-02-28T12:00:00Z")


def test_a_date_an_action_is_done_at_means_the_start_of_that_day():
    assert parse_at("2026-02-28", field="at") == at("2026-02-28T00:00:00Z")
    assert parse_at("2026-02-28T12:00:00+01:00", field="at") == at("2026-02-28T11:00:00Z")
    for bad in ["2026-02-30", "yesterday", "2026-02-28T12:00:00", 5]:
        with pytest.raises(InvalidInput) as refused:
            parse_at(bad, field="at")
        assert set(refused.value.fields) == {"at"}


@pytest.mark.parametrize("text, instant, bound", [
    ("2026-01-20T00:00:00.1234567Z", "2026-01-20T00:00:00.123456Z", "2026-01-20T00:00:00.123457Z"),  # .NET
    ("2026-01-20T09:00:00.123456789+09:00", "2026-01-20T00:00:00.123456Z", "2026-01-20T00:00:00.123457Z"),  # Go
    ("2026-01-20T00:00:00.9999999Z", "2026-01-20T00:00:00.999999Z", "2026-01-20T00:00:01Z"),
    ("2026-01-20T00:00:00.1234560000Z", "2026-01-20T00:00:00.123456Z", "2026-01-20T00:00:00.123456Z"),
])
def test_digits_beyond_the_microsecond_floor_an_instant_and_raise_an_as_of_bound(text, instant, bound):
    assert parse_instant(text, field="t") == parse_at(text, field="at") == at(instant)
    assert parse_as_of(text) == at(bound)


@pytest.mark.parametrize("start, months, end", [
    ("2026-01-15T00:00:00Z", 1, "2026-02-15T00:00:00Z"),
    ("2026-01-31T00:00:00Z", 1, "2026-02-28T00:00:00Z"),
    ("2028-01-31T00:00:00Z", 1, "2028-02-29T00:00:00Z"),
    ("2026-01-31T00:00:00Z", 2, "2026-03-31T00:00:00Z"),
    ("2026-11-15T00:00:00Z", 14, "2028-01-15T00:00:00Z"),
])
def test_adding_calendar_months_clamps_to_the_end_of_short_months(start, months, end):
    assert add_months_us(at(start), months) == at(end)


@pytest.mark.parametrize("instant, index", [
    ("2026-01-15T00:00:00Z", 1),
    ("2026-02-14T23:59:59.999999Z", 1),
    ("2026-02-15T00:00:00Z", 2),
    ("2026-04-14T23:59:59Z", 3),
    ("2026-04-15T00:00:00Z", 4),
    ("2027-01-15T00:00:00Z", 13),
])
def test_month_index_counts_calendar_months_from_the_start(instant, index):
    assert month_index(at("2026-01-15T00:00:00Z"), at(instant)) == index


def test_periods_are_utc_calendar_months():
    assert period_of(at("2026-02-28T23:59:59Z")) == "2026-02"
    assert period_bounds_us("2026-12") == (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))


@pytest.mark.parametrize("parse, text", [
    (parse_instant, "\uff12\uff10\uff12\uff16-01-20T00:00:00Z"), (parse_date, "2026-\uff10\uff11-20"),
    (parse_period, "\uff12\uff10\uff12\uff16-\uff10\uff11"), (parse_period, "2026-\u0661\u0662"),
])
def test_only_ascii_digits_are_digits(parse, text):
    with pytest.raises(InvalidInput) as refused:
        parse(text, field="when")
    assert "when" in refused.value.fields


@pytest.mark.parametrize("parse, last, too_late", [
    (parse_instant, "9800-12-31T23:59:59.999999Z", "9801-01-01T00:00:00Z"),
    (parse_date, "9800-12-31", "9801-01-01"),
    (parse_period, "9800-12", "9801-01"),
])
def test_the_accepted_years_end_where_the_longest_window_and_hold_still_fit(parse, last, too_late):
    parse(last, field="when")
    with pytest.raises(InvalidInput, match="between 1970 and 9800"):
        parse(too_late, field="when")
    for out_of_datetime in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00"):  # UTC leaves datetime's years
        with pytest.raises(InvalidInput, match="between 1970 and 9800"):
            parse_instant(out_of_datetime, field="when")
    latest = at("9800-12-31T23:59:59.999999Z")
    assert format_instant(add_days_us(add_months_us(latest, DURATION_MONTHS_MAX), HOLD_DAYS_MAX)).startswith("99")
