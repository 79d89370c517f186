"""Reading import files (`ledger.importer.records`): which lines hold events, and the numbers a
refusal names, without a database."""

import io
import tracemalloc

import pytest

from ledger import importer
from ledger.errors import InvalidInput
from ledger.importer import records

HEADER = "id,type,customer_id,invoice_id,amount,currency,occurred_at"


def row(event_id: str) -> str:
    return f"{event_id},invoice_paid,acme,inv-{event_id},10.00,USD,2026-01-11T00:00:00Z"


def read(text: str, file_format: str) -> list[tuple[int, object]]:
    return list(records(io.StringIO(text, newline=""), file_format))


def outcomes(text: str, file_format: str) -> list[tuple[int, str]]:
    """Each record's line number and its event's id, or its refusal's detail."""
    return [(number, data.detail if isinstance(data, InvalidInput) else data.get("id", data))
            for number, data in read(text, file_format)]


def test_blank_lines_before_a_csv_header_are_skipped_and_the_rows_numbered_by_their_lines():
    # A blank line first was read as the header, and the whole file refused: "CSV header lacks amount, ...".
    for blank in ("\n", "\r\n", "   \r\n", "\t\n \n"):
        text = blank + "\n".join([HEADER, row("e-1"), row("e-2")]) + "\n"
        first = blank.count("\n") + 2
        assert outcomes(text, "csv") == [(first, "e-1"), (first + 1, "e-2")]


def test_blank_lines_among_csv_rows_hold_no_events_as_in_ndjson_and_a_quoted_blank_field_is_a_row():
    # A line of spaces (the end of a hand-edited or exported file) was refused as a row of one field.
    lines = [HEADER, row("e-1"), "  ", "", "\t", row("e-2"), '"  "', row("e-3"), "   "]
    assert outcomes("\r\n".join(lines) + "\r\n", "csv") == [
        (2, "e-1"), (6, "e-2"), (7, "the row has 1 fields, the header 7"), (8, "e-3")]
    # The last line of spaces without a line break holds no event either: nothing of a row was cut.
    assert outcomes("\n".join(lines), "csv") == outcomes("\n".join(lines) + "\n", "csv")
    # A field's blank line inside quotes is the field's, and its row's lines are numbered on.
    quoted = [HEADER, 'e-4,invoice_paid,acme,inv-e-4,10.00,USD,"2026-01-11T00:00:00Z', "", '  "', row("e-5")]
    assert [number for number, _ in read("\n".join(quoted) + "\n", "csv")] == [4, 5]


def test_a_csv_input_of_blank_lines_only_holds_no_events():
    assert read(" \n\t\r\n\n", "csv") == [] and read(" \n\t\r\n\n", "ndjson") == []


@pytest.fixture
def line_chars_max_8(monkeypatch):
    monkeypatch.setattr(importer, "LINE_CHARS_MAX", 8)


def test_an_ndjson_line_longer_than_the_bound_is_refused_naming_it_and_the_next_lines_are_read(line_chars_max_8):
    lines = ['{"a":1}', "x" * 30, '{"b":22}', '{"c":333}', "", "y" * 9, '{"d":4}']
    assert outcomes("\r\n".join(lines) + "\r\n", "ndjson") == [
        (1, {"a": 1}), (2, "a line longer than 8 characters"), (3, {"b": 22}), (4, "a line longer than 8 characters"),
        (6, "a line longer than 8 characters"), (7, {"d": 4})]
    refused = read("x" * 30 + "\n", "ndjson")[0][1]
    assert refused.fields == {"_line": ["line 1 is longer than 8 characters"]}
    # A line of the bound's length whose "\r\n" the bound splits is one line, not two.
    assert outcomes('{"b":22}\r\n{"c":3}\r\n' + "z" * 16 + '\r\n{"d":4}', "ndjson") == [
        (1, {"b": 22}), (2, {"c": 3}), (3, "a line longer than 8 characters"), (4, {"d": 4})]


def test_a_csv_line_longer_than_the_bound_is_refused_as_its_row_and_a_header_that_long_stops_the_import(
        monkeypatch):
    monkeypatch.setattr(importer, "LINE_CHARS_MAX", len(row("e-1")))
    # Its quotes are kept count of: a quoted field it opens, or one it goes on or closes, is its row's.
    lines = [HEADER, row("e-1"), "y," * 40, row("e-2"), 'e-3,invoice_paid,"' + "z" * 80, '",x', row("e-4"),
             'e-5,invoice_paid,"a', "z" * 80, '",x', row("e-6"), 'e-7,invoice_paid,"a', "z" * 80 + '",x', row("e-8")]
    too_long = f"a line longer than {len(row('e-1'))} characters"
    assert outcomes("\n".join(lines) + "\n", "csv") == [
        (2, "e-1"), (3, too_long), (4, "e-2"), (5, too_long), (7, "e-4"), (9, too_long), (11, "e-6"), (13, too_long),
        (14, "e-8")]
    with pytest.raises(InvalidInput) as refused:
        read("h" * 100 + "\n" + row("e-1") + "\n", "csv")
    assert refused.value.fields == {"_line": [f"line 1 is longer than {len(row('e-1'))} characters"]}


def test_a_line_far_longer_than_the_bound_is_read_past_without_being_held(tmp_path):
    # Read whole, a line of 150 MB took an import to 440 MB; the bound is a megabyte of characters.
    line_chars = 32 * importer.LINE_CHARS_MAX
    (tmp_path / "long.ndjson").write_text('{"id": "' + "a" * line_chars + '"}\n{"id": "e-2"}\n')
    tracemalloc.start()
    try:
        with importer.open_events(str(tmp_path / "long.ndjson")) as stream:
            read_back = [(number, data if isinstance(data, dict) else data.detail)
                         for number, data in records(stream, "ndjson")]
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak_bytes < 8 * importer.LINE_CHARS_MAX < line_chars
    assert read_back == [(1, "a line longer than 1,048,576 characters"), (2, {"id": "e-2"})]


def test_a_summary_names_a_refused_line_or_event_in_words_of_the_file_and_an_unknown_field_as_one():
    summary = importer.Summary()
    summary.refuse(4, None, InvalidInput("malformed JSON", {"_line": ["malformed JSON"]}))
    summary.refuse(5, "e-5", InvalidInput("invalid event", {"_schema": ["not an object"]}))
    summary.refuse(6, "e-6", InvalidInput("unknown", {"colour": ["Unknown field."]}))
    summary.refuse(7, "e-7", InvalidInput("bad amount", {"amount.amount": ["not a decimal"]}))
    assert sorted(summary.refusal_reasons) == [
        "Unprocessable entity (amount.amount)", "Unprocessable entity (the event)",
        "Unprocessable entity (the line)", "Unprocessable entity (unknown field)"]
