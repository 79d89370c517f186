"""Metrics 3 and 4: reads over a big journal, and closing a month of it.

The journal is grown month by month through the domain path, so it is exactly what the service would
hold (verify() accepts it): each month's paid invoices go through `revenue.ingest` in batches of
10,000; then the holds matured by the previous month's end are released (`holds.release_matured`,
what the hourly release job will have done by then; 30-day holds: about one release per accrual) and
that month is closed with `periods.close_period`, each timed on its own. A closed month therefore
holds about twice its accruals' lines. Customers sit with a few hot partners (20% of them with 5
partners), the rest spread evenly.

At each checkpoint (a line count reached) the reads are timed on a reader session, as the API asks
for them: a partner's balance as of now (`partner_balances`, random partners and the hot ones) and
the trial balance as of now, both answered by the running totals (`account_totals`); a hot partner's
balance as of past days (`as_of=YYYY-MM-DD`, the end of that day), the 8th, 15th, 23rd and the day
before the last of the latest closed month and of the open month, which the running totals cannot
answer (the accounts hold lines after them), so that it sums the partner's lines between the day and
the nearer of the closes around it (or the running totals), about half a month of them at most; the
worst day's median is the row; the statement of the latest closed month (`statements.statement`),
whose opening balances go through the latest snapshot and whose lines are those its close stored;
and, not a target, the hot partners' statements of the month after it, still open, whose lines are
gathered from the journal. A statement is timed as the API serves it, its JSON body
(`statements.statement_json`: a closed month's lines as its close wrote them); the notes give it
read and written line by line from its documents (`statements.to_json`, as a month closed before
migration 0035 is served), and the read alone. The close of the last month is timed as it happens.
"""

from __future__ import annotations

import random
import time
from typing import Callable, NamedTuple

from sqlalchemy import func, select

from ledger import accounts as chart
from ledger import holds, periods, revenue
from ledger.balances import partner_balances
from ledger.db import Database
from ledger.instants import format_instant, next_period, parse_as_of, period_bounds_us, period_of
from ledger.schema import accounts, journal_lines
from ledger.statements import statement, statement_json, to_json
from ledger.trial_balance import trial_balance

from bench import program
from bench.ingestion import BATCH_EVENTS, analyze
from bench.report import Row, median, percentile, scale_note

BALANCE_CALLS = 200
HOT_CALLS = 50
STATEMENT_CALLS = 50
TRIAL_BALANCE_CALLS = 3
BALANCE_MS_TARGET = {1_000_000: 2.0, 10_000_000: 5.0}
STATEMENT_MS_MAX = 50.0
TRIAL_BALANCE_S_MAX = 1.0
CLOSE_S_MAX = 30.0


class Shape(NamedTuple):
    partners: int
    customers: int
    months: int
    events_per_month: int
    checkpoints: tuple[int, ...]  # line counts at which the reads are timed (the first month reaching each)


class Served(NamedTuple):
    """A statement's milliseconds: as the API serves it (`statements.statement_json`: a closed
    month's lines as its close wrote them, an open month's read and written), and read
    (`statements.statement`) and written (`statements.to_json`) from its stored documents or the
    journal, as a month closed before migration 0035 is served, with the read alone."""
    served: float
    read: float
    written: float


class Reads(NamedTuple):
    lines: int
    closed_through: str
    balance_ms: list[float]
    hot_balance_ms: list[float]
    past: list[Past]  # hot partners' balances as of past days of the latest closed month and the open one
    statement_ms: list[Served]
    hot_statement_ms: list[Served]
    statement_lines_hot: int
    open_statement_ms: list[Served]  # the hot partners' statements of the month after, still open
    open_lines_hot: int
    trial_balance_s: list[float]


class Past(NamedTuple):
    """Hot partners' balances as of the end of one past day, as `as_of=YYYY-MM-DD` asks."""
    as_of_us: int
    ms: list[float]
    lines_since: int  # the first hot partner's lines from the latest close before it (or the first line)
    lines_after: int  # and from it to the first close after it (or to the last line)


class Close(NamedTuple):
    period: str
    lines: int
    seconds: float  # close_period alone
    transactions: int
    release_seconds: float  # the release job run just before, up to the period's end
    released: int


def _served_ms(session, partner_id: str, period: str) -> Served:
    started = time.perf_counter()
    statement_json(session, partner_id, period)
    served = time.perf_counter()
    read = statement(session, partner_id, period)
    done = time.perf_counter()
    to_json(read)
    return Served((served - started) * 1000, (done - served) * 1000, (time.perf_counter() - served) * 1000)


def _timed_ms(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def line_count(database: Database) -> int:
    with database.reader() as session:
        return session.execute(select(func.count()).select_from(journal_lines)).scalar_one()


def _lines_in(database: Database, period: str) -> int:
    start_us, end_us = period_bounds_us(period)
    j = journal_lines.c
    with database.reader() as session:
        return session.execute(select(func.count()).select_from(journal_lines)
                               .where(j.effective_at_us >= start_us, j.effective_at_us < end_us)).scalar_one()


def grow(site, shape: Shape, progress: Callable[[str], None]) -> tuple[list[Reads], list[Close]]:
    url = site.new("books")
    database = Database(url)
    reads: list[Reads] = []
    closes: list[Close] = []
    try:
        with database.transaction() as session:
            seeded = program.seed(session, shape.partners, shape.customers)
        pending = list(shape.checkpoints)
        for month in range(shape.months):
            _ingest_month(database, seeded, month, shape.events_per_month)
            analyze(database)
            if month >= 1:
                closes.append(_close(database, period_of(program.month_start_us(month - 1))))
                analyze(database)
            lines = line_count(database)
            progress(f"month {month + 1}/{shape.months}: {lines:,} lines")
            while pending and (lines >= pending[0] or month == shape.months - 1):
                pending.pop(0)
                reads.append(measure_reads(database, seeded, lines, closes[-1].period if closes else None))
    finally:
        database.dispose()
        site.drop(url)
    return reads, closes


def _ingest_month(database: Database, seeded: program.Program, month: int, count: int) -> None:
    events = program.paid_events(seeded, count, month_offset=month, prefix=f"m{month}")
    for batch in program.batches(events, BATCH_EVENTS):
        with database.transaction() as session:
            results = revenue.ingest(session, batch)
        assert not any(isinstance(r, revenue.Refusal) for r in results)


def _close(database: Database, period: str) -> Close:
    """The releases up to the period's end in one transaction (what the hourly job would have
    released by then), then the close, each in its own transaction and timed apart."""
    end_us = period_bounds_us(period)[1]
    started = time.perf_counter()
    with database.transaction() as session:
        released = holds.release_matured(session, end_us - 1)
    release_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with database.transaction() as session:
        closed = periods.close_period(session, period)
    seconds = time.perf_counter() - started
    return Close(period, _lines_in(database, period), seconds, closed.transaction_count, release_seconds, released)


def measure_reads(database: Database, seeded: program.Program, lines: int, closed_through: str | None) -> Reads:
    assert closed_through is not None, "the reads are timed once a month is closed"
    rng = random.Random(3)
    now_us = time.time_ns() // 1000  # balances and the trial balance as the API asks for them: as of now
    with database.reader() as session:
        partner_balances(session, seeded.hot_ids[0], before_us=now_us)  # warm the connection and the account cache
        balance = [_timed_ms(lambda p=rng.choice(seeded.partner_ids): partner_balances(session, p, before_us=now_us))
                   for _ in range(BALANCE_CALLS)]
        hot = [_timed_ms(lambda p=rng.choice(seeded.hot_ids): partner_balances(session, p, before_us=now_us))
               for _ in range(HOT_CALLS)]
        past = [_past(session, seeded, rng, closed_through, day) for day in _past_days(closed_through)]
        statements = [_served_ms(session, rng.choice(seeded.partner_ids), closed_through)
                      for _ in range(STATEMENT_CALLS)]
        hot_statements = [_served_ms(session, rng.choice(seeded.hot_ids), closed_through)
                          for _ in range(max(5, STATEMENT_CALLS // 5))]
        hot_statement = statement(session, seeded.hot_ids[0], closed_through)
        hot_lines = sum(len(section.lines) for section in hot_statement.currencies)
        open_month = next_period(closed_through)
        open_statements = [_served_ms(session, rng.choice(seeded.hot_ids), open_month)
                           for _ in range(max(5, STATEMENT_CALLS // 5))]
        open_lines = sum(len(section.lines) for section in statement(session, seeded.hot_ids[0], open_month).currencies)
        trial = [_timed_ms(lambda: trial_balance(session, before_us=now_us)) / 1000 for _ in range(TRIAL_BALANCE_CALLS)]
    return Reads(lines, closed_through, balance, hot, past, statements, hot_statements, hot_lines, open_statements,
                 open_lines, trial)


def _past_days(closed_through: str) -> list[str]:
    """The 8th, 15th, 23rd and the day before the last of the latest closed month and of the open
    month after it: days on each side of a month's middle, and near its end, where a balance read
    forward from the month's start alone would sum nearly the whole month."""
    days = []
    for month in (closed_through, next_period(closed_through)):
        last = format_instant(period_bounds_us(month)[1] - 1)[:10]
        days += [f"{month}-08", f"{month}-15", f"{month}-23", f"{month}-{int(last[-2:]) - 1:02d}"]
    return days


def _past(session, seeded: program.Program, rng: random.Random, closed_through: str, day: str) -> Past:
    as_of_us = parse_as_of(day)
    timed = [_timed_ms(lambda p=rng.choice(seeded.hot_ids): partner_balances(session, p, before_us=as_of_us))
             for _ in range(HOT_CALLS)]
    closed_start_us, closed_end_us = period_bounds_us(closed_through)
    since_us, until_us = (closed_start_us, closed_end_us) if as_of_us <= closed_end_us else (closed_end_us, None)
    hot_id = seeded.hot_ids[0]
    return Past(as_of_us, timed, _lines_between(session, hot_id, since_us, as_of_us),
                _lines_between(session, hot_id, as_of_us, until_us))


def _lines_between(session, partner_id: str, since_us: int, before_us: int | None) -> int:
    """The partner's pending and available lines in [since, before) (None: to the last line)."""
    a, j = accounts.c, journal_lines.c
    query = (select(func.count()).select_from(journal_lines.join(accounts, j.account_id == a.id))
             .where(a.name.in_([chart.pending(partner_id), chart.available(partner_id)]),
                    j.effective_at_us >= since_us))
    if before_us is not None:
        query = query.where(j.effective_at_us < before_us)
    return session.execute(query).scalar_one()


def _read_alone(timed: list[Served]) -> str:
    reads, written = [each.read for each in timed], [each.written for each in timed]
    return (f"read and written line by line p50 {median(written):.2f} ms, p99 {percentile(written, 0.99):.2f} ms, "
            f"the read alone p50 {median(reads):.2f} ms")


def _past_row(engine_name: str, read: Reads, where: str, scaled: bool, limit_ms: float) -> Row:
    """The worst day's p50 of a hot partner's balance as of a past day, each day's in the note."""
    p50s = [median(past.ms) for past in read.past]
    worst = read.past[p50s.index(max(p50s))]
    days = ", ".join(f"{format_instant(past.as_of_us - 1)[5:10]} {p50:.2f}" for past, p50 in zip(read.past, p50s))
    return Row(f"balance: hot partner as of a past day, worst p50 ({where})", engine_name, max(p50s), "ms",
               f"< {limit_ms:g} ms", max(p50s) < limit_ms, scaled=scaled,
               note=f"{HOT_CALLS} calls a day on the hot partners, as of the end of the day, {read.closed_through} "
                    f"closed and the month after open: p50 ms by day {days}; at the worst day, p99 "
                    f"{percentile(worst.ms, 0.99):.2f} ms, one hot partner's lines between it and the ends around "
                    f"it (the latest close before it, the first after it or the last line) "
                    f"{worst.lines_since:,} and {worst.lines_after:,}: the balance sums the nearer side's")


def rows_for(engine_name: str, reads: list[Reads], closes: list[Close]) -> list[Row]:
    rows: list[Row] = []
    for read in reads:
        target_lines = 10_000_000 if read.lines >= 5_000_000 else 1_000_000
        where, scaled = scale_note(read.lines, target_lines, "lines")
        limit_ms = BALANCE_MS_TARGET[target_lines]
        p50, p99 = median(read.balance_ms), percentile(read.balance_ms, 0.99)
        rows.append(Row(f"balance: one partner, p50 ({where})", engine_name, p50, "ms", f"< {limit_ms:g} ms",
                        p50 < limit_ms, scaled=scaled,
                        note=f"{BALANCE_CALLS} calls on random partners, closed through {read.closed_through}"))
        rows.append(Row(f"balance: one partner, p99 ({where})", engine_name, p99, "ms", f"< {limit_ms:g} ms",
                        p99 < limit_ms, scaled=scaled, note="same calls"))
        hot = median(read.hot_balance_ms)
        rows.append(Row(f"balance: hot partner, p50 ({where})", engine_name, hot, "ms", f"< {limit_ms:g} ms",
                        hot < limit_ms, scaled=scaled,
                        note=f"{HOT_CALLS} calls on the {program.HOT_PARTNERS} hot partners (20% of customers), as of "
                             f"now: from the running totals"))
        rows.append(_past_row(engine_name, read, where, scaled, limit_ms))
        where10, scaled10 = scale_note(read.lines, 10_000_000, "lines")
        served = [timed.served for timed in read.statement_ms]
        st50, st99 = median(served), percentile(served, 0.99)
        rows.append(Row(f"statement: month {read.closed_through}, p50/p99 ({where10})", engine_name, st50, "ms",
                        f"< {STATEMENT_MS_MAX:g} ms", st99 < STATEMENT_MS_MAX, scaled=scaled10,
                        note=f"p99 {st99:.1f} ms over {STATEMENT_CALLS} random partners, served as the JSON body; "
                             f"{_read_alone(read.statement_ms)}"))
        hot_st = median([timed.served for timed in read.hot_statement_ms])
        rows.append(Row(f"statement: hot partner ({where10})", engine_name, hot_st, "ms", f"< {STATEMENT_MS_MAX:g} ms",
                        hot_st < STATEMENT_MS_MAX, scaled=scaled10,
                        note=f"median, with the JSON body; {read.statement_lines_hot:,} lines in the month, as its "
                             f"close wrote them; {_read_alone(read.hot_statement_ms)}"))
        rows.append(Row(f"statement: hot partner, open month {next_period(read.closed_through)} ({where10})",
                        engine_name, median([timed.served for timed in read.open_statement_ms]), "ms", "-", None,
                        scaled=scaled10,
                        note=f"median, with the JSON body; {read.open_lines_hot:,} lines gathered from the journal "
                             f"(not stored until the month closes); {_read_alone(read.open_statement_ms)}"))
        trial = median(read.trial_balance_s)
        rows.append(Row(f"trial balance ({where10})", engine_name, trial, "s", f"< {TRIAL_BALANCE_S_MAX:g} s",
                        trial < TRIAL_BALANCE_S_MAX, scaled=scaled10,
                        note=f"median of {TRIAL_BALANCE_CALLS}; latest snapshot {read.closed_through}"))
    if closes:
        last = max(closes, key=lambda c: c.lines)
        scaled = last.lines < 800_000
        both = last.seconds + last.release_seconds
        rows.append(Row(f"close a month of {last.lines:,} lines", engine_name, last.seconds, "s",
                        f"< {CLOSE_S_MAX:g} s (1M lines)", last.seconds < CLOSE_S_MAX, scaled=scaled,
                        note=f"{last.period}, {last.transactions:,} transactions; holds released beforehand (next row), "
                             f"as the hourly job does" + ("; scaled down" if scaled else "")))
        rows.append(Row("the month's releases + close, same month", engine_name, both, "s",
                        f"< {CLOSE_S_MAX:g} s (1M lines)", both < CLOSE_S_MAX, scaled=scaled,
                        note=f"a close catching up alone: {last.released:,} releases in one transaction took "
                             f"{last.release_seconds:.1f} s"))
    return rows
