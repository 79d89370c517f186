"""Instants, dates, calendar months and periods, all in UTC.

The journal stores instants as integer microseconds since the Unix epoch (`*_at_us` columns): the
same representation on SQLite and PostgreSQL, exact, totally ordered, and cheap in covering
indexes. Conversion happens here and only here.

Calendar months follow the contract: month 1 of a window that starts at `start` is
[start, start + 1 calendar month); adding months clamps the day to the end of a shorter month
(January 31 + 1 month = February 28 or 29).
"""

from __future__ import annotations

import calendar
import functools
import re
import time as _time
from datetime import date, datetime, time, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR

from ledger.errors import invalid

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US_PER_SECOND = 1_000_000
_PERIOD_PATTERN = re.compile(r"([0-9]{4})-([0-9]{2})")
_DATE_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# RFC 3339 date-time with a mandatory offset. RFC 3339 allows any number of fractional digits, and
# clients send more than six (.NET's round-trip format always writes seven, Go's RFC3339Nano up to
# nine); the journal keeps microseconds, so the digits beyond are rounded away (`parse_instant`).
# An offset's minutes are 00-59 and its hours 00-23 (RFC 3339's time-numoffset); `datetime` reads
# "+00:99" as 1 h 39 min.
_INSTANT_PATTERN = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.([0-9]{1,6})([0-9]*))?"
    r"([Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
# The longest instant text taken, fractional digits included: the API documents it (maxLength), and
# every other way in (`revshare import`, the command line) takes the same.
INSTANT_TEXT_MAX = 40
# Instants the service accepts: years 1970..9800, so that what is computed from them exists too: the
# end of the longest window (terms.DURATION_MONTHS_MAX, 100 years) or hold (terms.HOLD_DAYS_MAX, 10
# years) still falls before datetime's last year, 9999.
_YEAR_MIN, _YEAR_MAX = 1970, 9800


# A program fact (a plan version, a partner's status or plan, an attribution) may be dated at most
# this far ahead. Each fact must start after the latest of its kind, so one dated in a far year by
# mistake blocks every later fact of its kind until it is withdrawn (`ledger.withdrawals`) or starts.
FACT_HORIZON_DAYS = 366


def within_horizon(at_us: int, *, field: str) -> int:
    """`at_us`, unless it is more than FACT_HORIZON_DAYS after now (a 422 naming `field`)."""
    if at_us > now_us() + FACT_HORIZON_DAYS * 86_400 * _US_PER_SECOND:
        raise invalid(field, f"{format_instant(at_us)} is more than {FACT_HORIZON_DAYS} days ahead: each fact starts "
                             "after the latest of its kind, and one dated that far would block every later one of "
                             "its kind until it was withdrawn or started")
    return at_us


def now_us() -> int:
    """The service's clock: microseconds since the epoch, now."""
    return _time.time_ns() // 1_000


def to_us(instant: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    assert instant.tzinfo is not None, "naive datetimes are programmer errors"
    delta = instant - EPOCH
    return (delta.days * 86_400 + delta.seconds) * _US_PER_SECOND + delta.microseconds


def from_us(instant_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=instant_us)


def format_instant(instant_us: int | None) -> str | None:
    """RFC 3339 in UTC with a `Z`, microseconds only when present: as `from_us(instant_us).isoformat()`
    writes it, with `Z` for `+00:00` (a test holds the two equal), from integer arithmetic, each
    hour's date and hour written once and the rest read from tables. A busy partner's statement
    writes tens of thousands of instants: making a datetime of each took twice as long, writing
    each one's time of day anew 1.10 µs an instant against 0.35 now, a cache of the seconds written
    so far 1.5 µs for each second not yet in it (most of a month's, in a process's first
    statements), and formatting the microseconds (`:06d`) 0.2 µs more than two table reads."""
    if instant_us is None:
        return None
    second, micro = divmod(instant_us, _US_PER_SECOND)
    hours, of_hour = divmod(second, 3_600)
    if micro:
        milli, micro = divmod(micro, 1_000)
        return f"{_date_and_hour(hours)}{_MINUTES_SECONDS[of_hour]}.{_THREE_DIGITS[milli]}{_THREE_DIGITS[micro]}Z"
    return f"{_date_and_hour(hours)}{_MINUTES_SECONDS[of_hour]}Z"


_TWO_DIGITS = tuple(f"{n:02d}" for n in range(60))
_THREE_DIGITS = tuple(f"{n:03d}" for n in range(1_000))
_MINUTES_SECONDS = tuple(f"{minute}:{second}" for minute in _TWO_DIGITS for second in _TWO_DIGITS)  # 3,600


@functools.lru_cache(maxsize=8_192)  # a month has at most 744 hours
def _date_and_hour(hours: int) -> str:
    """`YYYY-MM-DDTHH:` of the hour `hours` hours after the epoch (OverflowError outside years 1-9999)."""
    day, hour = divmod(hours, 24)
    return f"{(EPOCH.date() + timedelta(days=day)).isoformat()}T{_TWO_DIGITS[hour]}:"


def describe_instant(instant_us) -> str:
    """An instant as RFC 3339, or as stored when it is no instant the service can write (a row
    altered past the database's rules, as verify names it)."""
    try:
        return format_instant(instant_us)
    except (TypeError, ValueError, OverflowError):
        return repr(instant_us)


def parse_instant(text: str, *, field: str, rounding: str = ROUND_FLOOR) -> int:
    """An RFC 3339 instant with an offset, as microseconds since the epoch. Fractional digits beyond
    the microsecond are rounded with `rounding`: ROUND_FLOOR (an instant that has happened, as clocks
    truncate) or ROUND_CEILING (an exclusive bound, `parse_as_of`: what lies before the instant
    written lies before the microsecond after it)."""
    assert rounding in (ROUND_FLOOR, ROUND_CEILING), rounding
    if isinstance(text, str) and len(text) > INSTANT_TEXT_MAX:
        raise invalid(field, f"must be at most {INSTANT_TEXT_MAX} characters")
    match = _INSTANT_PATTERN.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise invalid(field, "must be an RFC 3339 instant with an offset, such as 2026-01-20T00:00:00Z")
    beyond_us = match.group(2) or ""  # the fractional digits after the sixth
    to_the_us = text[:match.start(2)] + text[match.end(2):] if beyond_us else text
    try:
        instant = datetime.fromisoformat(to_the_us.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise invalid(field, f"{text!r} is not a valid instant") from None
    try:
        in_range = _YEAR_MIN <= instant.astimezone(UTC).year <= _YEAR_MAX
    except OverflowError:  # 9999-12-31T23:59:59-23:59 is in year 10000 in UTC, which datetime cannot hold
        in_range = False
    if not in_range:
        raise invalid(field, f"must lie between {_YEAR_MIN} and {_YEAR_MAX}")
    rounded_up = rounding == ROUND_CEILING and beyond_us.strip("0") != ""
    return to_us(instant) + (1 if rounded_up else 0)


def parse_date(text: str, *, field: str) -> date:
    if not isinstance(text, str) or not _DATE_PATTERN.fullmatch(text):
        raise invalid(field, "must be a date YYYY-MM-DD")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise invalid(field, f"{text!r} is not a valid date") from None
    if not _YEAR_MIN <= day.year <= _YEAR_MAX:
        raise invalid(field, f"must lie between {_YEAR_MIN} and {_YEAR_MAX}")
    return day


def start_of_day_us(day: date) -> int:
    return to_us(datetime.combine(day, time(), tzinfo=UTC))


def parse_as_of(text: str, *, field: str = "as_of") -> int:
    """An `as_of` bound: an instant, or a date meaning the end of that day in UTC (exclusive), so
    that a report as of a day counts every posting of that day."""
    if isinstance(text, str) and _DATE_PATTERN.fullmatch(text):
        return start_of_day_us(parse_date(text, field=field) + timedelta(days=1))
    return parse_at(text, field=field, rounding=ROUND_CEILING)


def parse_at(text: str, *, field: str, rounding: str = ROUND_FLOOR) -> int:
    """The `at` of an action (a payout run, a release of holds): an instant, or a date meaning the
    start of that day in UTC, as the contract dates its worked example's actions. Read as the end
    of the day, a date would be the next day's first instant: a run on March 31 would pay in
    April's books, and a run dated today would be refused as in the future."""
    if isinstance(text, str) and _DATE_PATTERN.fullmatch(text):
        return start_of_day_us(parse_date(text, field=field))
    if not isinstance(text, str) or not _INSTANT_PATTERN.fullmatch(text):
        raise invalid(field, "must be a date YYYY-MM-DD or an RFC 3339 instant with an offset, such as "
                             "2026-01-20T00:00:00Z")
    return parse_instant(text, field=field, rounding=rounding)


def add_months(instant: datetime, months: int) -> datetime:
    """`instant` plus `months` calendar months, the day clamped to the target month's length."""
    month_zero = instant.month - 1 + months
    year, month = instant.year + month_zero // 12, month_zero % 12 + 1
    day = min(instant.day, calendar.monthrange(year, month)[1])
    return instant.replace(year=year, month=month, day=day)


# Every paid invoice asks for its window's end and month index: pure functions of a few values that
# repeat (the windows' starts are attribution dates), so their answers are remembered, boundedly.
_MONTHS_CACHED_MAX = 65_536


@functools.lru_cache(maxsize=_MONTHS_CACHED_MAX)
def add_months_us(instant_us: int, months: int) -> int:
    return to_us(add_months(from_us(instant_us), months))


@functools.lru_cache(maxsize=_MONTHS_CACHED_MAX)
def _year_month(instant_us: int) -> tuple[int, int]:
    instant = from_us(instant_us)
    return instant.year, instant.month


def month_index(start_us: int, instant_us: int) -> int:
    """1-based index of the calendar month of a window starting at `start_us` holding `instant_us`."""
    assert instant_us >= start_us, (start_us, instant_us)
    start_year, start_month = _year_month(start_us)
    instant = from_us(instant_us)
    index = (instant.year - start_year) * 12 + (instant.month - start_month)
    # `index` months after start is either still before or already at/after the instant.
    if add_months_us(start_us, index) > instant_us:
        index -= 1
    return index + 1


def add_days_us(instant_us: int, days: int) -> int:
    return instant_us + days * 86_400 * _US_PER_SECOND


# ---- periods: calendar months in UTC, named YYYY-MM ----

def parse_period(text: str, *, field: str = "period") -> str:
    match = _PERIOD_PATTERN.fullmatch(text) if isinstance(text, str) else None
    if match is None or not 1 <= int(match.group(2)) <= 12:
        raise invalid(field, "must be a period YYYY-MM")
    if not _YEAR_MIN <= int(match.group(1)) <= _YEAR_MAX:
        raise invalid(field, f"must lie between {_YEAR_MIN} and {_YEAR_MAX}")
    return text


def period_of(instant_us: int) -> str:
    instant = from_us(instant_us)
    return f"{instant.year:04d}-{instant.month:02d}"


def period_bounds_us(period: str) -> tuple[int, int]:
    """[start, end) of a period in microseconds."""
    year, month = int(period[:4]), int(period[5:7])
    start = datetime(year, month, 1, tzinfo=UTC)
    return to_us(start), to_us(add_months(start, 1))


def next_period(period: str) -> str:
    return period_of(period_bounds_us(period)[1])
