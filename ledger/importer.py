"""Streaming import of revenue events from NDJSON or CSV, in batches through the bulk path.

Memory grows with the events that come after a refund, chargeback or won dispute of their invoice
(and the refused ids given twice), not with the file's size: the file is read line by line (a line
longer than `LINE_CHARS_MAX` characters is read past in pieces, and refused), once through
(`_first_places`: where the events of each undone invoice first come, with 12 MiB of marks), then
handed to `revenue.ingest` in batches of `batch_size` events, each in its own committed transaction.
Safe to run again on the same file, even after being killed halfway: committed batches replay
(events are keyed by id) and the rest is applied, each event decided as the file's lines before it
leave the books (`revenue.Input`), so the books equal those of one clean run: a refund refused for
coming before its payment in the file stays refused, though a killed run committed the payment.

CSV columns: id, type, customer_id, invoice_id, amount, currency, occurred_at (in any order; other
columns are ignored; a header that lacks one, or names a column twice, is refused). A file is
UTF-8, a leading byte-order mark allowed; a blank line (empty, or of white space only) holds no event,
in either format, before a CSV header too, and is counted in the line numbers a refusal names; an
input with no line but blank ones holds no events. A CSV row is one line: no field of an event holds
a line break, so a quoted field closes on the line it opens on. A line that is too long, is not
UTF-8, is not JSON (NDJSON; an object that gives a key twice is not taken either), is not CSV (a
quote left open, or not ending its field) or has more or fewer fields than the header (CSV) is
refused with its line number, like an event the domain refuses; the import goes on.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import io
import itertools
import json
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Callable, ContextManager, Iterator

from ledger import json_input, revenue
from ledger.db import Database
from ledger.errors import DomainError, InvalidInput, printable
from ledger.settings import NOT_UTF8

CSV_COLUMNS = ("id", "type", "customer_id", "invoice_id", "amount", "currency", "occurred_at")
# The fields a refusal names that are the event's (or the line's, `_line`; not an object, `_schema`).
_REASON_FIELDS = frozenset({*revenue.EVENT_FIELDS, "amount.amount", "amount.currency"})
# What a refusal of a whole line, or of a whole event, names in the summary: the errors' own keys
# for them (`_line`, marshmallow's `_schema`) are names of the code, not of the file.
_REASON_WHOLE = {"_line": "the line", "_schema": "the event"}
BATCH_SIZE_DEFAULT = 5000
REFUSAL_EXAMPLES_MAX = 20
# The longest line an import reads, in characters, its line break aside; a longer one is refused as
# an event. An event's line is under a kilobyte; the CSV reader also bounds each field, to 131,072
# characters (`csv.field_size_limit`, Python's default), which this bound leaves room for.
LINE_CHARS_MAX = 1024 * 1024


@dataclass
class Summary:
    read: int = 0
    statuses: Counter = field(default_factory=Counter)  # posted | unattributed | no_commission
    replayed: int = 0
    refused: int = 0
    refusal_reasons: Counter = field(default_factory=Counter)
    examples: list[tuple[int, str]] = field(default_factory=list)  # (line, text), the first lines refused

    def refuse(self, line_number: int, event_id: str | None, error: DomainError) -> None:
        self.refused += 1
        # A field the event does not have is counted as "unknown field", not under its own name: a
        # file whose lines each carry another unknown name would otherwise keep (and print) a reason
        # per line. The examples still name it.
        named = {name if name in _REASON_FIELDS else _REASON_WHOLE.get(name, "unknown field") for name in error.fields}
        fields = ", ".join(sorted(named)) or "-"
        self.refusal_reasons[f"{error.title} ({fields})"] += 1
        # Lines refused while reading come before those of their batch refused by the domain: keep
        # the lowest line numbers, whatever the order they were refused in.
        example = f"line {line_number} event {event_id or '?'}: {_every_field(error)}"
        self.examples.append((line_number, printable(example)))
        if len(self.examples) > 2 * REFUSAL_EXAMPLES_MAX:
            self.examples = sorted(self.examples)[:REFUSAL_EXAMPLES_MAX]

    @property
    def refusal_examples(self) -> list[str]:
        return [text for _, text in sorted(self.examples)[:REFUSAL_EXAMPLES_MAX]]


def _every_field(error: DomainError) -> str:
    """A refusal's detail, which names the first of its fields (`revenue.parse_event`), with what it
    says of the others: so that a line mended by its example is not refused for the next field."""
    messages = [f"{name}: {message}" for name, said in error.fields.items() for message in said]
    if len(messages) < 2 or error.detail != messages[0]:
        return error.detail
    more = len(messages) - EXAMPLE_FIELDS_MAX
    return "; ".join(messages[:EXAMPLE_FIELDS_MAX]) + (f"; and {more} more" if more > 0 else "")


COPY_CHUNK_BYTES = 1 << 20  # what `_spooled` reads of a pipe at a time
# What `head` gives: enough for a CSV header or a `{`, past the blank bytes at the input's start (a
# byte-order mark, white space, blank lines), read through to the first that is not, up to this many.
HEAD_BYTES = 256
HEAD_BLANK_MAX = 16 * COPY_CHUNK_BYTES
_BLANK = b" \t\r\n\x0b\x0c"
# The byte-order marks of UTF-32 and UTF-16, as the UTF-8 reader keeps their bytes (`open_events`);
# UTF-32's little-endian mark begins as UTF-16's does.
_WIDE_MARKS = (("\udcff\udcfe\x00\x00", "UTF-32"), ("\x00\x00\udcfe\udcff", "UTF-32"),
               ("\udcff\udcfe", "UTF-16"), ("\udcfe\udcff", "UTF-16"))
# The fields a refused line's example names, at most (`_every_field`): a line of thousands of unknown
# keys printed every one of them.
EXAMPLE_FIELDS_MAX = 8


class Unreadable(Exception):
    """The input failed to read (an I/O error of a failing disk or a network file system, standard
    input closed): not an event refused, but the import stopped. The batches before `line_number`
    have committed, unless it failed in the read through before any is applied (`checking`); run
    again once the input reads, they replay."""

    def __init__(self, line_number: int, error: OSError, *, checking: bool = False) -> None:
        super().__init__(f"{error.strerror or error}" + (f", at line {line_number}" if line_number else ""))
        self.line_number, self.error, self.checking = line_number, error, checking

    @property
    def committed(self) -> bool:
        """Whether batches may have committed before it."""
        return self.line_number > 1 and not self.checking


def open_events(path: str) -> IO[str]:
    """An import file as text, for `records`: UTF-8, with bytes that are not UTF-8 kept as lone
    surrogates (`NOT_UTF8`), so that their line alone is refused; lines end at \\n, \\r\\n or \\r,
    left in place for the CSV reader (`newline=""`). `-` is standard input. A stream that cannot
    seek (a pipe) has what `head` reads read ahead (`_head_bytes`), however many writes its producer
    makes of it, and given again from the start: `head` sees it as it sees a file's."""
    if path == "-" and sys.stdin is None:  # started with its standard input closed
        raise Unreadable(0, OSError(errno.EBADF, "standard input is closed"))
    raw = open(sys.stdin.fileno() if path == "-" else path, "rb", buffering=0, closefd=path != "-")
    binary = io.BufferedReader(raw if raw.seekable() else _ReadAhead(raw))
    return io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape", newline="")


def head(stream: IO[str]) -> str:
    """The first characters of a stream from `open_events` (`_head_bytes`), without reading them: for
    `detect_format`, which goes by the first that is not blank."""
    raw = stream.buffer.raw
    if isinstance(raw, _ReadAhead):
        ahead = raw.ahead
    else:
        position = raw.tell()

        def read(size: int) -> bytes:  # at the stream's place, which it leaves
            nonlocal position
            chunk = os.pread(raw.fileno(), size, position)
            position += len(chunk)
            return chunk

        try:
            ahead = _head_bytes(read)
        except OSError as error:
            raise Unreadable(1, error) from error
    blank = len(ahead) - len(ahead.removeprefix(codecs.BOM_UTF8).lstrip(_BLANK))
    return ahead[:blank + HEAD_BYTES].decode("utf-8", errors="ignore").removeprefix("\ufeff")


def _head_bytes(read: Callable[[int], bytes]) -> bytes:
    """An input's first bytes, by `read(n)` (fewer at its end, none past it), through at least
    `HEAD_BYTES` past its blank ones: a file of NDJSON that opens with blank lines is told by its
    first `{` however many there are (up to `HEAD_BLANK_MAX` bytes of them)."""
    ahead = b""
    while len(ahead) < HEAD_BLANK_MAX:
        body = ahead.removeprefix(codecs.BOM_UTF8).lstrip(_BLANK)
        if len(body) >= HEAD_BYTES or not (chunk := read(max(HEAD_BYTES - len(body), len(ahead)))):
            break
        ahead += chunk
    return ahead


class _ReadAhead(io.RawIOBase):
    """A pipe's first bytes (`_head_bytes`) read up front, given first, then the rest of it."""

    def __init__(self, source: io.RawIOBase) -> None:
        self._source = source
        self._ahead = self.ahead = _head_bytes(source.read)  # `ahead`: all of them, for `head`

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._ahead:
            return self._source.readinto(buffer)
        size = min(len(buffer), len(self._ahead))
        buffer[:size], self._ahead = self._ahead[:size], self._ahead[size:]
        return size

    def close(self) -> None:
        self._source.close()
        super().close()


_TOO_LONG = object()  # what `_lines` gives for a line longer than `LINE_CHARS_MAX`, read past


def _lines(stream: IO[str]) -> Iterator[str | object]:
    """The stream's lines, a byte-order mark before the first dropped; one longer than `LINE_CHARS_MAX`
    (its line break aside) as `_TOO_LONG`, read past a piece at a time and never held: read whole, a
    line of 150 MB (a file concatenated without line breaks, a runaway field) took an import to 440 MB."""
    piece_chars = LINE_CHARS_MAX + 1  # room for a longest line's line break, or its first character
    split = False  # the latest piece ended at the bound in "\r": the "\n" of its "\r\n" comes alone next
    for number in itertools.count(1):
        try:
            piece = stream.readline(piece_chars)
            if split and piece == "\n":
                piece = stream.readline(piece_chars)
            if not piece:
                return
            fits = len(piece) < piece_chars or piece.endswith(("\n", "\r"))
            last = piece
            while len(last) == piece_chars and not last.endswith(("\n", "\r")):
                last = stream.readline(piece_chars)
        except OSError as error:
            raise Unreadable(number, error) from error
        split = len(last) == piece_chars and last.endswith("\r")
        wide = next((name for mark, name in _WIDE_MARKS if piece.startswith(mark)), None) if number == 1 else None
        if wide is not None:
            raise InvalidInput(f"the input is {wide} text, and an import reads UTF-8: convert it first "
                               f"(`iconv -f {wide} -t UTF-8 FILE | revshare import -`)", {"file": ["not UTF-8 text"]})
        yield (piece.removeprefix("\ufeff") if number == 1 else piece) if fits else _TOO_LONG


def _not_utf8(number: int) -> InvalidInput:
    return InvalidInput("not UTF-8 text", {"_line": [f"line {number} is not UTF-8 text"]})


def _too_long(number: int) -> InvalidInput:
    return InvalidInput(f"a line longer than {LINE_CHARS_MAX:,} characters",
                        {"_line": [f"line {number} is longer than {LINE_CHARS_MAX:,} characters"]})


def _ndjson(stream: IO) -> Iterator[tuple[int, object]]:
    for number, line in enumerate(_lines(stream), start=1):
        if line is _TOO_LONG:
            yield number, _too_long(number)
            continue
        if not line.strip():
            continue
        if NOT_UTF8.search(line):
            yield number, _not_utf8(number)
            continue
        try:
            yield number, json_input.loads(line)
        except json.JSONDecodeError as error:
            yield number, InvalidInput(f"malformed JSON ({error.msg})", {"_line": [error.msg]})
        except (ValueError, RecursionError) as error:  # NaN, Infinity; too many digits; nesting too deep
            yield number, InvalidInput(f"malformed JSON ({json_input.reason(error)})", {"_line": ["malformed JSON"]})


def _csv(stream: IO) -> Iterator[tuple[int, object]]:
    rows = _rows(_lines(stream))
    header = next(rows, (0, None, True))[1]
    if header is None:
        return  # no line but blank ones: no header, and no events, as in NDJSON
    if isinstance(header, InvalidInput):  # the header's line, named as the header, as its other refusals are
        raise InvalidInput(header.detail, {"header": header.fields["_line"]})
    missing = set(CSV_COLUMNS) - set(header)
    if missing and any(NOT_UTF8.search(name) for name in header):
        # A compressed or other binary file (`events.ndjson.gz`) reads as CSV, its first line as a header
        # that lacks every column: say what it is. Bytes that are not UTF-8 in a column no event reads
        # leave a header that has the columns it needs, taken as before.
        raise InvalidInput("the first line is not UTF-8 text: is the file compressed? (`zcat FILE | revshare "
                           "import -` reads a gzip file)", {"header": ["not UTF-8 text"]})
    if missing:
        raise InvalidInput(f"CSV header lacks {', '.join(sorted(missing))}", {"header": ["missing columns"]})
    # An event's column given twice is not read as the last of them, as Python keeps the last key of
    # JSON (json_input); other columns are not read, and a spreadsheet's export may end in unnamed ones.
    repeated = [name for name in CSV_COLUMNS if header.count(name) > 1]
    if repeated:
        raise InvalidInput(f"CSV header names {', '.join(repeated)} more than once", {"header": ["repeated columns"]})
    width = len(header)
    for number, row, ended in rows:
        if isinstance(row, InvalidInput):
            yield number, row
        elif len(row) != width:
            yield number, InvalidInput(f"the row has {len(row)} fields, the header {width}",
                                       {"_line": [f"{len(row)} fields, the header has {width}"]})
        elif any(NOT_UTF8.search(value) for value in row):
            yield number, _not_utf8(number)
        elif not ended:
            # A file cut short ends in the middle of a line, and a CSV row cut after a field's first
            # characters can still be a whole event: "1500.00" cut to "150" when amount is the last
            # column. Posted, it would stand, and the whole file sent again would be refused for it.
            yield number, InvalidInput(
                "the last line has no line break, so the file may have been cut short: end it with one",
                {"_line": ["no line break at the end of the file"]})
        else:
            fields = dict(zip(header, row))
            data = {name: fields[name] for name in CSV_COLUMNS if name not in ("amount", "currency")}
            data["amount"] = {"amount": fields["amount"], "currency": fields["currency"]}
            yield number, data


def _rows(lines: Iterator[str | object]) -> Iterator[tuple[int, list[str] | InvalidInput, bool]]:
    """Each line that is not blank (empty, or white space only, as in NDJSON) read as one CSV row,
    with its number and whether it ends with a line break (a line without one is the input's last).

    A row is one line: no field of an event holds a line break, so a quoted field must close on the
    line it opens on, and one left open is its line's refusal, the next line read as a row of its
    own. Read as CSV allows, on to the line where its quote closes, a quote left open took every
    line after it into one field: the rest of the file was refused as one row numbered by the
    file's last line, or, past the CSV reader's bound on a field (131,072 characters), stopped the
    import after the batches before it had committed."""
    for number, line in enumerate(lines, start=1):
        if line is _TOO_LONG:
            yield number, _too_long(number), True
            continue
        if not line.strip():
            continue
        try:
            [row] = csv.reader([line], strict=True)
        except csv.Error as error:
            words = _csv_words(error)
            yield number, InvalidInput(f"not CSV the import can read: {words}",
                                       {"_line": [f"line {number}: {words}"]}), True
            continue
        yield number, row, line.endswith(("\n", "\r"))


def _csv_words(error: csv.Error) -> str:
    """What the CSV parser says of a line, in words of the file: a quoted field it could not close."""
    said = str(error)
    return "a quoted field is not closed on its line" if said == "unexpected end of data" else said


def records(stream: IO, file_format: str) -> Iterator[tuple[int, object]]:
    assert file_format in ("ndjson", "csv"), file_format
    return _csv(stream) if file_format == "csv" else _ndjson(stream)


def detect_format(path: str, head: str) -> str:
    if path.endswith(".csv"):
        return "csv"
    if path.endswith((".ndjson", ".jsonl", ".json")):
        return "ndjson"
    return "ndjson" if head.lstrip().startswith("{") else "csv"


def import_stream(database: Database, stream: IO, file_format: str, *, batch_size: int = BATCH_SIZE_DEFAULT,
                  progress: Callable[[int], None] = lambda n: None, summary: Summary | None = None,
                  applying: Callable[[], ContextManager] = contextlib.nullcontext,
                  started: Callable[[], None] = lambda: None) -> Summary:
    """The events of the stream applied a batch a transaction, into `summary` (a new one unless given:
    a caller stopped midway still holds what the batches that committed did). `applying` is entered
    around each batch, from its first statement until it has committed (or failed); `started` is
    called once the file was read through and found readable (a CSV header that lacks a column is
    refused before it), as the first batch is applied."""
    summary = Summary() if summary is None else summary
    with contextlib.ExitStack() as stack:
        if not stream.seekable():  # a pipe: read twice, from a copy (`_first_places`)
            stream = stack.enter_context(_spooled(stream))
        start = stream.tell()
        first, repeated = _first_places(stream, file_format, start)
        source = revenue.Input(first, repeated.holds, name="file")
        stream.seek(start)
        started()
        _import_records(database, records(stream, file_format), source, batch_size, progress, summary, applying)
    return summary


def _import_records(database: Database, lines: Iterator[tuple[int, object]], source: revenue.Input, batch_size: int,
                    progress: Callable[[int], None], summary: Summary, applying: Callable[[], ContextManager]) -> None:
    pending: list[tuple[int, revenue.RevenueEvent]] = []
    for number, data in lines:
        summary.read += 1
        try:
            if isinstance(data, DomainError):
                raise data
            event = revenue.parse_event(data)
        except DomainError as error:
            summary.refuse(number, data.get("id") if isinstance(data, dict) else None, error)
        else:
            pending.append((number, event))
        if len(pending) >= batch_size:
            with applying():
                _apply(database, pending, summary, source)
            progress(len(pending))
            pending = []
    if pending:
        with applying():
            _apply(database, pending, summary, source)
        progress(len(pending))


def _first_places(stream: IO, file_format: str, start: int) -> tuple[dict[str, tuple[int, str]], "_Marks"]:
    """`revenue.Input.first` and `repeated` of a file, read through once before it is applied (from
    `start`, the stream's position of its first line).

    `first`: each event that comes after a refund, chargeback or won dispute of its invoice, by id at
    its first line that is an event, with its event's request hash there: what an undoing event
    leaves out when the books hold it (`revenue._Writer._undone`). Its memory grows with those
    events alone. `repeated`: the ids that come on more than one line (and a few others). The
    invoices undone and the ids are marked in fixed `_Marks`. An id of `first` that comes on an
    earlier line too (another invoice's, or before its invoice was undone) is moved to that line by
    a second reading, up to the last line so moved, which a file without such ids is spared."""
    undone, seen, repeated = _Marks(), _Marks(), _Marks()
    first: dict[str, tuple[int, str]] = {}
    try:
        for number, data in records(stream, file_format):
            # An event's fields are taken as they are where it is valid: a line that is not one may
            # mark its invoice or id (what costs an entry at most), and is never an entry.
            if not isinstance(data, dict):
                continue
            event_id = data.get("id")
            if isinstance(event_id, str):
                (repeated if seen.holds(event_id) else seen).add(event_id)
            invoice_id = data.get("invoice_id")
            if not isinstance(invoice_id, str):
                continue
            if not undone.holds(invoice_id):
                if data.get("type") != "invoice_paid":
                    undone.add(invoice_id)
                continue
            try:
                event = revenue.parse_event(data)
            except DomainError:
                continue
            if event.id not in first:
                first[event.id] = (number, revenue.request_hash(event))
        again = {event_id for event_id in first if repeated.holds(event_id)}
        if again:
            stream.seek(start)
            last = max(first[event_id][0] for event_id in again)
            for number, data in records(stream, file_format):
                if number >= last or not again:
                    break
                if isinstance(data, dict) and isinstance(data.get("id"), str) and data["id"] in again:
                    try:
                        event = revenue.parse_event(data)
                    except DomainError:
                        continue
                    again.discard(event.id)
                    if number < first[event.id][0]:
                        first[event.id] = (number, revenue.request_hash(event))
    except Unreadable as error:  # read before any batch is applied: nothing has committed
        raise Unreadable(error.line_number, error.error, checking=True) from error
    return first, repeated


class _Marks:
    """A set of strings in fixed memory (a Bloom filter of 2^25 bits, 4 MiB, two bits a string): a
    string added is always held; one not added is held by mistake about three times in a thousand
    at a million strings added. A mistake costs an entry that changes nothing: `_first_places`
    lists an event no undoing event leaves out, `revenue.Input.refused` keeps a refusal no later
    line asks after."""

    BITS = 1 << 25

    def __init__(self) -> None:
        self._bits = bytearray(self.BITS // 8)

    def _places(self, text: str) -> tuple[int, int]:
        digest = hash(text)  # the same for a string throughout a process: all a file's reading needs
        return digest % self.BITS, (digest >> 32) % self.BITS

    def add(self, text: str) -> None:
        for place in self._places(text):
            self._bits[place >> 3] |= 1 << (place & 7)

    def holds(self, text: str) -> bool:
        return all(self._bits[place >> 3] >> (place & 7) & 1 for place in self._places(text))


@contextlib.contextmanager
def _spooled(stream: IO[str]) -> Iterator[IO[str]]:
    """A stream from `open_events` that cannot seek, copied to a temporary file (removed after), as it reads."""
    where = f"a temporary file (in {tempfile.gettempdir()}, TMPDIR)"
    try:
        made = tempfile.TemporaryFile()
    except OSError as error:
        raise Unreadable(0, OSError(error.errno, f"{where} to copy it to: {error.strerror}"), checking=True) from error
    with made as copy:
        while True:
            try:
                chunk = stream.buffer.read(COPY_CHUNK_BYTES)
            except OSError as error:
                raise Unreadable(0, error, checking=True) from error
            if not chunk:
                break
            try:
                copy.write(chunk)
            except OSError as error:  # a full disk: not the input's failure, and said so
                raise Unreadable(0, OSError(error.errno, f"its copy in {where}: {error.strerror}"),
                                 checking=True) from error
        copy.seek(0)
        with io.TextIOWrapper(copy, encoding="utf-8", errors="surrogateescape", newline="") as text:
            yield text


def _apply(database: Database, pending: list[tuple[int, revenue.RevenueEvent]], summary: Summary,
           source: revenue.Input) -> None:
    events = [event for _, event in pending]
    places = [number for number, _ in pending]
    try:
        with database.transaction() as session:
            results = revenue.ingest(session, events, places=places, source=source)
    except revenue.REFUSED_APART:  # one event fails the batch: refuse it, not its whole batch
        results = revenue.ingest_apart(events, database.transaction, places=places, source=source)
    for (number, event), result in zip(pending, results):
        if isinstance(result, revenue.Refusal):
            summary.refuse(number, event.id, result.error)
        elif result.replayed:
            summary.replayed += 1
        else:
            summary.statuses[result.status] += 1


def import_text(database: Database, content: str, file_format: str, **kwargs) -> Summary:
    return import_stream(database, io.StringIO(content), file_format, **kwargs)
