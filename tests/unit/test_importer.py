"""Reading import files (`ledger.importer.records`): which lines hold events, and the numbers a
refusal names, without a database."""

import io

from ledger.errors import InvalidInput
from ledger.importer import records

HEADER = "id,type,customer_id,invoice_id,amount,currency,occurred_at"


def row(event_id: str) -> str:
    return f"{event_id},invoice_paid,acme,inv-{event_id},10.00,USD,2026-01-11T00:00:00Z"


def read(text: str, file_format: str) -> list[tuple[int, object]]:
    return list(records(io.StringIO(text, newline=""), file_format))


def outcomes(text: str, file_format: str) -> list[tuple[int, str]]:
    """Each record's line number and its event's id, or its refusal's detail."""
    return [(number, data.detail if isinstance(data, InvalidInput) else data["id"])
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
