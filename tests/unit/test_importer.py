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


def test_blank_lines_among_csv_rows_hold_no_events_as_in_ndjson_and_a_quoted_field_closes_on_its_line():
    # A line of spaces (the end of a hand-edited or exported file) was refused as a row of one field.
    lines = [HEADER, row("e-1"), "  ", "", "\t", row("e-2"), '"  "', row("e-3"), "   "]
    assert outcomes("\r\n".join(lines) + "\r\n", "csv") == [
        (2, "e-1"), (6, "e-2"), (7, "the row has 1 fields, the header 7"), (8, "e-3")]
    # The last line of spaces without a line break holds no event either: nothing of a row was cut.
    assert outcomes("\n".join(lines), "csv") == outcomes("\n".join(lines) + "\n", "csv")
    # A row is one line: a quoted field left open is its line's refusal, and a blank line after it
    # is blank, not the field's.
    quoted = [HEADER, 'e-4,invoice_paid,acme,inv-e-4,10.00,USD,"2026-01-11T00:00:00Z', "", '  "', row("e-5")]
    assert outcomes("\n".join(quoted) + "\n", "csv") == [
        (2, "not CSV the import can read: a quoted field is not closed on its line"),
        (4, "the row has 1 fields, the header 7"), (5, "e-5")]


def test_a_csv_quote_left_open_refuses_its_line_alone_and_every_row_after_it_is_read():
    # Read on to where it closed, the quote took the rest of the file into one field: refused as one
    # row numbered by the last line, or, past the CSV reader's field bound (131,072 characters),
    # the import stopped with batches before it committed.
    rows = [row(f"e-{number}") for number in range(3, 3_003)]
    lines = [HEADER, row("e-1"), 'e-2,invoice_paid,acme,"inv-e-2,10.00,USD,2026-01-11T00:00:00Z', *rows]
    assert sum(map(len, rows)) > 131_072
    read_back = read("\r\n".join(lines) + "\r\n", "csv")
    assert read_back[1][0] == 3
    assert read_back[1][1].fields == {"_line": ["line 3: a quoted field is not closed on its line"]}
    assert [(number, data["id"]) for number, data in read_back[:1] + read_back[2:]] == [
        (2, "e-1"), *((number + 1, f"e-{number}") for number in range(3, 3_003))]
    # A quote that does not end its field is refused as the CSV parser words it, not read around.
    assert outcomes(f"{HEADER}\n" + 'e-9,invoice_paid,"acme"x,inv-e-9,10.00,USD,2026-01-11T00:00:00Z\n', "csv") == [
        (2, "not CSV the import can read: ',' expected after '\"'")]
    # In the header, the import stops before anything is imported, naming the line.
    with pytest.raises(InvalidInput) as refused:
        read('id,"type,customer_id,invoice_id,amount,currency,occurred_at\n' + row("e-1") + "\n", "csv")
    assert refused.value.fields == {"header": ["line 1: a quoted field is not closed on its line"]}


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
    # A quote it opens or closes is its own: each line around it is a row of its own.
    lines = [HEADER, row("e-1"), "y," * 40, row("e-2"), 'e-3,invoice_paid,"' + "z" * 80, '",x', row("e-4"),
             'e-5,invoice_paid,"a', "z" * 80, '",x', row("e-6"), 'e-7,invoice_paid,"a', "z" * 80 + '",x', row("e-8")]
    too_long = f"a line longer than {len(row('e-1'))} characters"
    open_quote = "not CSV the import can read: a quoted field is not closed on its line"
    assert outcomes("\n".join(lines) + "\n", "csv") == [
        (2, "e-1"), (3, too_long), (4, "e-2"), (5, too_long), (6, open_quote), (7, "e-4"), (8, open_quote),
        (9, too_long), (10, open_quote), (11, "e-6"), (12, open_quote), (13, too_long), (14, "e-8")]
    with pytest.raises(InvalidInput) as refused:
        read("h" * 100 + "\n" + row("e-1") + "\n", "csv")
    assert refused.value.fields == {"header": [f"line 1 is longer than {len(row('e-1'))} characters"]}


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


class FailingAfter(io.StringIO):
    """A stream whose reads fail (EIO, as a failing disk's) once `lines` lines were read."""

    def __init__(self, text: str, lines: int) -> None:
        super().__init__(text, newline="")
        self.lines_left = lines

    def readline(self, size: int = -1) -> str:
        if self.lines_left == 0:
            raise OSError(5, "Input/output error")
        self.lines_left -= 1
        return super().readline(size)


@pytest.mark.parametrize("file_format", ["csv", "ndjson"])
def test_an_input_failing_to_read_stops_the_reading_naming_the_line_it_failed_at(file_format):
    text = "\n".join([HEADER, row("e-1"), row("e-2")] if file_format == "csv" else
                     ['{"id": "e-1"}', '{"id": "e-2"}', '{"id": "e-3"}']) + "\n"
    read_back = []
    with pytest.raises(importer.Unreadable) as stopped:
        read_back.extend(records(FailingAfter(text, 2), file_format))
    assert stopped.value.line_number == 3 and str(stopped.value) == "Input/output error, at line 3"
    assert [number for number, _ in read_back] == ([2] if file_format == "csv" else [1, 2])
