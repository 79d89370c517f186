"""A statement's JSON body (`statements.to_json`, what the route sends) against its data
(`statements.to_data`, what the CSV, the text and the CLI's JSON are made from): the same document,
keys in the contract's order."""

import json

from hypothesis import given
from hypothesis import strategies as st

from ledger import statement_bodies
from ledger.instants import format_instant
from ledger.statement_lines import StatementLine
from ledger.statements import LINE_KINDS, CurrencyStatement, Statement, to_data, to_json

_INSTANTS = st.integers(0, 253_402_300_799_999_999)  # 1970 to the last microsecond of 9999
_IDS = st.none() | st.text(min_size=1, max_size=12)
_AMOUNTS = st.integers(-(10**15), 10**15)

_LINES = st.builds(StatementLine, st.integers(1, 2**62), _INSTANTS, st.none() | _INSTANTS, st.sampled_from(LINE_KINDS),
                   _IDS, _IDS, _IDS, _AMOUNTS, _AMOUNTS)
_SECTIONS = st.builds(CurrencyStatement, st.sampled_from(["USD", "JPY", "BHD", "CLF", "EUR"]),
                      st.tuples(_AMOUNTS, _AMOUNTS), st.lists(_LINES, max_size=5).map(tuple),
                      st.dictionaries(st.sampled_from(LINE_KINDS), _AMOUNTS), st.tuples(_AMOUNTS, _AMOUNTS))
_STATEMENTS = st.builds(Statement, st.just("p1"), st.just("2026-01"), st.sampled_from(["open", "closed"]),
                        st.none() | st.just("ab" * 32), st.lists(_SECTIONS, max_size=3).map(tuple))


@given(_STATEMENTS)
def test_the_json_body_is_the_statement_s_data(statement):
    body = json.loads(to_json(statement))
    assert body == to_data(statement)
    for section in body["currencies"]:
        for line in section["lines"]:
            assert list(line) == ["transaction_id", "effective_at", "original_effective_at", "kind", "customer_id",
                                  "invoice_id", "event_id", "pending", "available"]


def test_a_line_s_data_is_written_from_its_fields():
    line = StatementLine(7, 1_768_867_200_000_001, None, "accrual", "c1", None, "e1", 12_345, 0)
    statement = Statement("p1", "2026-01", "open", None,
                          (CurrencyStatement("USD", (0, 0), (line,), {"accrual": 12_345}, (12_345, 0)),))
    assert to_data(statement)["currencies"][0]["lines"] == [{
        "transaction_id": 7, "effective_at": format_instant(1_768_867_200_000_001), "original_effective_at": None,
        "kind": "accrual", "customer_id": "c1", "invoice_id": None, "event_id": "e1", "pending": "123.45",
        "available": "0.00"}]
    assert format_instant(1_768_867_200_000_001) == "2026-01-20T00:00:00.000001Z"


@given(st.sampled_from(["USD", "JPY", "BHD", "CLF", "EUR"]), st.lists(_LINES, max_size=6))
def test_a_section_as_its_close_writes_it_is_the_bytes_the_json_body_writes(currency, lines):
    # What a closed month's statement serves (statement_bodies.written, set into the frame) against
    # the section to_json writes for the same lines: byte for byte, so clients see no difference.
    body = statement_bodies.written(currency, lines)
    totals, pending, available = statement_bodies.tally(lines)
    section = CurrencyStatement(currency, (0, 0), tuple(lines), totals, (pending, available))
    written = to_json(Statement("p1", "2026-01", "closed", None, (section,)))
    assert (body.pending_minor, body.available_minor) == (sum(line.pending_minor for line in lines),
                                                         sum(line.available_minor for line in lines))
    assert f'"lines":{body.lines},"totals":{body.totals},'.encode() in written
    assert list(json.loads(body.totals)) == sorted({line.kind for line in lines})  # by kind, in order
