"""Property: any valid events, written as NDJSON or as CSV the ways exporters write them (columns in
any order, extra columns, quoted or not, `\\n`, `\\r\\n` or `\\r` line endings, a byte-order mark,
blank lines among the rows), are read back by `ledger.importer.records` and `revenue.parse_event` as
exactly the events written, each numbered by the line it was written on."""

from __future__ import annotations

import csv
import io
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.customers import EXTERNAL_ID_PATTERN
from ledger.importer import CSV_COLUMNS, records
from ledger.instants import format_instant
from ledger.money import format_minor
from ledger.revenue import EVENT_TYPES, RevenueEvent, parse_event
from tests.conftest import examples

IDS = st.from_regex(EXTERNAL_ID_PATTERN, fullmatch=True)  # every character an id may hold, up to its 64
CURRENCIES = st.sampled_from(["USD", "JPY", "BHD", "CLF", "EUR"])
INSTANTS_US = st.integers(min_value=0, max_value=4_102_444_799_999_999)  # 1970 to the end of 2099

events = st.builds(
    RevenueEvent, id=IDS, type=st.sampled_from(EVENT_TYPES), customer_id=IDS, invoice_id=IDS, currency=CURRENCIES,
    amount_minor=st.integers(min_value=1, max_value=10**15 - 1), occurred_at_us=INSTANTS_US)


def _fields(event: RevenueEvent) -> dict[str, str]:
    return {"id": event.id, "type": event.type, "customer_id": event.customer_id, "invoice_id": event.invoice_id,
            "amount": format_minor(event.amount_minor, event.currency), "currency": event.currency,
            "occurred_at": format_instant(event.occurred_at_us)}


def _written(rows: list[str | None], line_ending: str, byte_order_mark: bool) -> tuple[str, list[int]]:
    """The text of `rows` (None: a blank line) and the line number each row that is not blank stands on."""
    numbers = [number for number, row in enumerate(rows, start=1) if row is not None]
    text = line_ending.join("" if row is None else row for row in rows) + line_ending
    return ("\ufeff" if byte_order_mark else "") + text, numbers


def _read(text: str, file_format: str) -> list[tuple[int, RevenueEvent]]:
    return [(number, parse_event(data)) for number, data in records(io.StringIO(text, newline=""), file_format)]


def _with_blanks(rows: list[str], blanks: list[bool]) -> list[str | None]:
    out: list[str | None] = []
    for row, blank_before in zip(rows, blanks):
        out += [None, row] if blank_before else [row]
    return out


LINE_ENDINGS = st.sampled_from(["\n", "\r\n", "\r"])


@settings(max_examples=examples(200), deadline=None)
@given(written=st.lists(events, min_size=1, max_size=12), data=st.data(), line_ending=LINE_ENDINGS,
       byte_order_mark=st.booleans())
def test_events_written_as_ndjson_are_read_back_exactly_on_their_lines(written, data, line_ending, byte_order_mark):
    objects = []
    for event in written:
        fields = _fields(event)
        body = {name: fields[name] for name in CSV_COLUMNS if name not in ("amount", "currency")}
        body["amount"] = {"amount": fields["amount"], "currency": fields["currency"]}
        keys = data.draw(st.permutations(list(body)))
        indent = data.draw(st.sampled_from([None, 0]))  # 0: a line break after each member, made a space below
        objects.append(json.dumps({key: body[key] for key in keys}, indent=indent).replace("\n", " "))
    blanks = data.draw(st.lists(st.booleans(), min_size=len(written), max_size=len(written)))
    text, numbers = _written(_with_blanks(objects, blanks), line_ending, byte_order_mark)
    assert _read(text, "ndjson") == list(zip(numbers, written))


@settings(max_examples=examples(200), deadline=None)
@given(written=st.lists(events, min_size=1, max_size=12), data=st.data(), line_ending=LINE_ENDINGS,
       byte_order_mark=st.booleans(), quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
def test_events_written_as_csv_are_read_back_exactly_on_their_lines(written, data, line_ending, byte_order_mark,
                                                                    quoting):
    extra = data.draw(st.lists(st.sampled_from(["note", "source", "tax"]), unique=True, max_size=2))
    header = data.draw(st.permutations([*CSV_COLUMNS, *extra]))
    out = io.StringIO()
    writer = csv.writer(out, quoting=quoting, lineterminator="\n")
    writer.writerow(header)
    for event in written:
        fields = {**_fields(event), "note": "paid, in full", "source": '"billing"', "tax": ""}
        writer.writerow([fields[name] for name in header])
    lines = out.getvalue().split("\n")[:-1]
    blanks = data.draw(st.lists(st.booleans(), min_size=len(lines), max_size=len(lines)))
    text, numbers = _written(_with_blanks(lines, blanks), line_ending, byte_order_mark)
    assert _read(text, "csv") == list(zip(numbers[1:], written))
