"""Balances per account and currency as of an instant: the running totals, or a snapshot or the
running totals with the lines between them and the instant.

A balance is the sum of an account's lines with `effective_at_us` before the bound. Once periods
are closed, each close's snapshot holds every account's cumulative debits and credits before its
end (`sums`: the latest one at or before the bound, plus the lines after it), and only the lines
between a snapshot (or the running totals) and the bound are summed, from the covering index
`ix_journal_lines_balance` (account, instant, currency, side, amount). Signs: `debit_minus_credit`
is positive for a debit balance; `normal_balance` reads it the account's natural way (a liability
with more credits than debits has a positive normal balance).

The reads served to partners and finance (`partner_balances`, `partner_account_sums`,
`all_balances`), and the payout run's (`partner_account_sums`), first read `account_totals`, the
running totals the database keeps as lines are inserted: one row per account and currency, however
many lines the account has. When the bound is after the latest instant of every line an account's
rows count (always without a bound; as of now unless lines are dated in the future), they are its
answer. For the other accounts a second statement reads a start, sums of every line before an
instant, and the signed sums of the lines between that instant and the bound: for many accounts,
the start's rows UNION ALL the lines' sums grouped by account and currency (a key may come from
both parts), folded here; for one partner, a row for each of its running totals' rows, the start's
sums and its lines' summed apart by the balance index (`_one_partner_statement`). It goes from
the nearer end (`_nearer_end`, by the closes around the bound, which the running totals' statement
reads beside them when there is a bound): forward from the latest close's snapshot at or before
the bound, adding the lines since; or back from the snapshot of the first close after the bound,
or from the running totals, taking away the lines from the bound on. As of a past month's last
day, read forward, a hot partner's balance summed the whole month's lines; now about half a
month's at most, by time. Either way the lines read lie between the closes around the bound (the
first line and the last without them), as forward alone read them at worst: lines that bunch (a
month's billing on its last day) can make the side chosen by time the heavier one, never more than
that stretch.
The trial balance and the liabilities read it for just those accounts, by name, when they fit one
`IN (...)` list (`db.IN_LIST_MAX`) and the session reads one snapshot (every reader;
`db.reads_one_snapshot`): one line dated in the future then costs its accounts' lines, not every
account's. Otherwise, and for one partner's two accounts, for every account asked for. Each
statement is built once below, one for each way. The accounts are chosen in SQL (by name, or by a
subquery), never by a list of ids bound from Python, so a statement does not grow with the number
of partners. Read forward without a close, the lower bound of the lines is BIGINT's least value:
one statement (and one plan) serves a bound with or without a close before it.
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple

from sqlalchemy import (
    CTE,
    BigInteger,
    ColumnElement,
    Select,
    Table,
    and_,
    bindparam,
    case,
    func,
    literal,
    select,
    true,
    union_all,
)
from sqlalchemy.orm import Session

from ledger import accounts as chart
from ledger.db import IN_LIST_MAX, is_postgres, reads_one_snapshot
from ledger.schema import account_totals, accounts, journal_lines, period_closes, period_snapshots

Sums = dict[tuple[int, str], tuple[int, int]]  # (account id, currency) -> (debits, credits)
NamedSums = dict[tuple[str, str | None, str], tuple[int, int]]  # (account, partner id, currency) -> (debits, credits)
INSTANT_US_MIN = -(2 ** 63)  # BIGINT's least value: as a lower bound it excludes no line


def line_sums(session: Session, account_ids: list[int] | None, since_us: int | None, before_us: int | None) -> Sums:
    """Debits and credits per (account id, currency) of the journal lines in [since, before), ignoring snapshots."""
    j = journal_lines.c
    query = (select(j.account_id, j.currency, func.sum(case((j.side == "D", j.amount_minor), else_=0)),
                    func.sum(case((j.side == "C", j.amount_minor), else_=0)))
             .group_by(j.account_id, j.currency))
    if account_ids is not None:
        query = query.where(j.account_id.in_(account_ids))
    if since_us is not None:
        query = query.where(j.effective_at_us >= since_us)
    if before_us is not None:
        query = query.where(j.effective_at_us < before_us)
    return {(a, c): (int(d), int(k)) for a, c, d, k in session.execute(query)}


def _latest_snapshot(session: Session, account_ids: list[int] | None, before_us: int | None) -> tuple[int | None, Sums]:
    """(end of the latest close at or before the bound, its snapshot rows for the accounts)."""
    query = select(period_closes.c.period, period_closes.c.ends_at_us).order_by(period_closes.c.ends_at_us.desc()).limit(1)
    if before_us is not None:
        query = query.where(period_closes.c.ends_at_us <= before_us)
    close = session.execute(query).first()
    if close is None:
        return None, {}
    s = period_snapshots.c
    rows = select(s.account_id, s.currency, s.debit_minor, s.credit_minor).where(s.period == close.period)
    if account_ids is not None:
        rows = rows.where(s.account_id.in_(account_ids))
    return close.ends_at_us, {(a, c): (d, k) for a, c, d, k in session.execute(rows)}


def sums(session: Session, account_ids: list[int] | None = None, *, before_us: int | None = None,
         since_us: int | None = None) -> Sums:
    """Debits and credits per (account id, currency) of lines in [since, before); from the latest
    snapshot when there is no lower bound."""
    if since_us is not None:
        return line_sums(session, account_ids, since_us, before_us)
    snapshot_end, total = _latest_snapshot(session, account_ids, before_us)
    total = dict(total)
    for key, (debit, credit) in line_sums(session, account_ids, snapshot_end, before_us).items():
        old = total.get(key, (0, 0))
        total[key] = (old[0] + debit, old[1] + credit)
    return total


def debit_minus_credit(session: Session, account_names: Iterable[str], *, before_us: int | None = None,
                       since_us: int | None = None) -> dict[tuple[str, str], int]:
    """{(account, currency): debits - credits} over lines in [since_us, before_us)."""
    names = list(account_names)
    by_id = dict(session.execute(select(accounts.c.id, accounts.c.name).where(accounts.c.name.in_(names))).all())
    if not by_id:
        return {}
    found = sums(session, list(by_id), before_us=before_us, since_us=since_us)
    return {(by_id[a], c): debit - credit for (a, c), (debit, credit) in found.items()}


def normal_balance(account_name: str, debit_minus_credit_minor: int) -> int:
    """The balance as the account's normal side reads it (credit-normal accounts flip the sign)."""
    return debit_minus_credit_minor if chart.spec(account_name).normal_side == "D" else -debit_minus_credit_minor


def _latest_close() -> CTE:
    """The latest close ending at or before :closes_by_us (no row if there is none)."""
    c = period_closes.c
    return (select(c.period, c.ends_at_us).where(c.ends_at_us <= bindparam("closes_by_us", type_=BigInteger))
            .order_by(c.ends_at_us.desc()).limit(1).cte("latest_close"))


# The three ways to sum an account's lines before a bound B (`_nearer_end` picks one per read):
FORWARD = "forward"  # the latest close's snapshot at or before B, plus the lines from its end to B
FROM_CLOSE = "from_close"  # the snapshot of the first close after B, less the lines from B to its end
FROM_TOTALS = "from_totals"  # the running totals, less the lines from B on


def _start_and_lines(way: str) -> tuple[Table, tuple[ColumnElement[bool], ...], ColumnElement[bool], int]:
    """(the table of sums a read starts from, which of its rows, which lines are added to them, and
    the sign they are added with). A closed period takes no line (one dated in it is posted at the
    first open period's start), so a close's snapshot is the sums of every line before its end, as
    the running totals are of every line."""
    j = journal_lines.c
    if way == FORWARD:
        latest = _latest_close()
        since_us = func.coalesce(select(latest.c.ends_at_us).scalar_subquery(), literal(INSTANT_US_MIN, BigInteger))
        return (period_snapshots, (period_snapshots.c.period == select(latest.c.period).scalar_subquery(),),
                and_(j.effective_at_us >= since_us,
                     j.effective_at_us <= bindparam("lines_through_us", type_=BigInteger)), 1)
    since_us = bindparam("lines_from_us", type_=BigInteger)
    if way == FROM_CLOSE:
        c = period_closes.c
        close_end_us = bindparam("close_end_us", type_=BigInteger)
        period = select(c.period).where(c.ends_at_us == close_end_us).scalar_subquery()
        return (period_snapshots, (period_snapshots.c.period == period,),
                and_(j.effective_at_us >= since_us, j.effective_at_us < close_end_us), -1)
    assert way == FROM_TOTALS, way
    return account_totals, (), j.effective_at_us >= since_us, -1


def _debits_credits(sign: int) -> tuple[ColumnElement[int], ColumnElement[int]]:
    j = journal_lines.c
    debits = func.sum(case((j.side == "D", j.amount_minor), else_=0))
    credits = func.sum(case((j.side == "C", j.amount_minor), else_=0))
    return (debits, credits) if sign > 0 else (-debits, -credits)


def _one_partner_statement(way: str, postgres: bool) -> Select:
    """(account, currency, debits, credits) of the accounts named :pending_name and :available_name,
    a row for each of their running totals' rows (each account and currency that has a line): the
    sums the read starts from (the running totals themselves, or the row of the snapshot it starts
    from, none when the account had no line before that close), plus or less the sums of that
    row's lines the read adds, summed for each row apart by the balance index's account, instants
    and currency, in a LATERAL subquery on PostgreSQL and two scalar subqueries on SQLite (which has
    no LATERAL). Summed this way, a hot partner's lines took half the time they took grouped by
    account and currency, which hashes (PostgreSQL) or sorts (SQLite) every line
    (docs/performance.md, "Balances")."""
    a, t, j = accounts.c, account_totals.c, journal_lines.c
    start, rows, lines_taken, sign = _start_and_lines(way)
    read = (select(a.name, t.currency).join_from(accounts, account_totals, t.account_id == a.id)
            .where(a.name.in_([bindparam("pending_name"), bindparam("available_name")])))
    if start is account_totals:
        started = (t.debit_minor, t.credit_minor)
    else:
        s = start.c
        read = read.outerjoin(start, and_(s.account_id == t.account_id, s.currency == t.currency, *rows))
        started = (func.coalesce(s.debit_minor, 0), func.coalesce(s.credit_minor, 0))
    row_lines = and_(j.account_id == t.account_id, j.currency == t.currency, lines_taken)
    debits, credits = _debits_credits(1)
    if postgres:
        lines = select(debits.label("debit_minor"), credits.label("credit_minor")).where(row_lines).lateral("lines")
        read = read.join(lines, true())
        added = (lines.c.debit_minor, lines.c.credit_minor)
    else:
        added = tuple(select(total).where(row_lines).scalar_subquery() for total in (debits, credits))
    added = tuple(func.coalesce(more, 0) for more in added)
    return read.add_columns(*(begin + more if sign > 0 else begin - more for begin, more in zip(started, added)))


def _accounts_statement(way: str, account_ids: Select | None) -> Select:
    """(account, partner id, currency, debits, credits) of the accounts whose ids `account_ids`
    selects (None: every account): their rows in the sums the read starts from, UNION ALL the sums
    of their lines it adds. The lines are summed per account id before the names are joined: one
    join per sum, not per line."""
    a, j = accounts.c, journal_lines.c
    start, rows, lines_taken, sign = _start_and_lines(way)
    started = select(start.c.account_id, start.c.currency, start.c.debit_minor, start.c.credit_minor).where(*rows)
    lines = (select(j.account_id, j.currency, *_debits_credits(sign)).where(lines_taken)
             .group_by(j.account_id, j.currency))
    if account_ids is not None:
        started, lines = started.where(start.c.account_id.in_(account_ids)), lines.where(j.account_id.in_(account_ids))
    both = union_all(started, lines).subquery("sums")
    return (select(a.name, a.partner_id, both.c.currency, both.c.debit_minor, both.c.credit_minor)
            .join_from(both, accounts, a.id == both.c.account_id))


class Totals(NamedTuple):
    """One read of the running totals, in two forms: as of now, and as of a bound, where each row
    also carries the closes around the bound (`_CLOSES_AROUND`), which `_nearer_end` needs when the
    totals do not answer: asked in the same statement, they cost no round trip of their own."""
    now: Select
    as_of: Select


def _totals_statement(*conditions: ColumnElement[bool], partner_id: bool = True) -> Totals:
    """(account, [partner id,] currency, debits, credits, latest line instant) from the running
    totals of the accounts that meet `conditions`: the columns of the bounded statements above, and
    the instant that says whether they answer for a bound."""
    a, t = accounts.c, account_totals.c
    columns = (a.name, a.partner_id) if partner_id else (a.name,)
    now = (select(*columns, t.currency, t.debit_minor, t.credit_minor, t.latest_effective_at_us)
           .join_from(accounts, account_totals, t.account_id == a.id).where(*conditions))
    return Totals(now, now.add_columns(*_CLOSES_AROUND))


Reads = dict[str, Select]  # one bounded read, by the way it sums


def _each_way(build: Callable[[str], Select]) -> Reads:
    return {way: build(way) for way in (FORWARD, FROM_CLOSE, FROM_TOTALS)}


def _ways(before_us: int, latest_us: int, since_us: int | None,
          following_us: int | None) -> dict[str, tuple[int, dict[str, int]]]:
    """{way: (the time its lines span, its statement's bounds)} of each way to sum lines before
    `before_us`, the lines of the accounts read being the latest at `latest_us`, and the closes
    around the bound as `_CLOSES_AROUND` gives them: forward from the latest close at or before the
    bound (from the first line without one), back from the first close after it if there is one,
    back from the running totals. Read with the running totals, not in the snapshot of the statement
    that follows: the closes found are there for good, and each way's statement finds its close
    itself or by its end."""
    assert before_us > INSTANT_US_MIN, before_us
    ways = {FORWARD: (before_us - (INSTANT_US_MIN if since_us is None else since_us),
                      {"closes_by_us": before_us, "lines_through_us": before_us - 1}),
            FROM_TOTALS: (latest_us + 1 - before_us, {"lines_from_us": before_us})}
    if following_us is not None:
        ways[FROM_CLOSE] = (following_us - before_us, {"close_end_us": following_us, "lines_from_us": before_us})
    return ways


def _nearer_end(before_us: int, latest_us: int, since_us: int | None,
                following_us: int | None) -> tuple[str, dict[str, int]]:
    """(the way to sum lines before `before_us`, its statement's bounds): the way whose lines span
    the shortest time (forward when two tie). Time stands for the number of lines: a partner's lines
    come at a rate much alike from one week to the next; whichever way is read, the sums are the
    same."""
    ways = _ways(before_us, latest_us, since_us, following_us)
    way = min(ways, key=lambda way: (ways[way][0], way != FORWARD))
    return way, ways[way][1]


def _rows(session: Session, totals: Totals, bounded: Reads, names: dict[str, str], before_us: int | None, *,
          bounded_named: Reads | None = None) -> list:
    """The running totals of the accounts that hold no line at or after `before_us`, and the rows
    of `bounded` (a read in the same columns, summed the nearer way) for the others: through
    `bounded_named` for just those accounts when it is given, they fit one `IN (...)` list and the
    two statements read one snapshot, else through `bounded` for every account."""
    if before_us is None:
        return [row[:-1] for row in session.execute(totals.now, names)]
    rows = session.execute(totals.as_of, {**names, "bound_us": before_us}).all()
    latest = _AS_OF_LATEST  # each row: the answer's columns, its latest line instant, the closes around
    stale = {row[0] for row in rows if row[latest] >= before_us}  # by account: all its currencies
    if not stale:
        return [row[:latest] for row in rows]
    since_us, following_us = rows[0][latest + 1:]
    way, bounds = _nearer_end(before_us, max(row[latest] for row in rows if row[0] in stale), since_us, following_us)
    if (bounded_named is None or len(stale) > IN_LIST_MAX or len(stale) == len({row[0] for row in rows})
            or not reads_one_snapshot(session)):
        return _summed(session.execute(bounded[way], {**bounds, **names}))
    fresh = [row[:latest] for row in rows if row[0] not in stale]
    return fresh + _summed(session.execute(bounded_named[way], {**bounds, "stale_names": sorted(stale)}))


def _summed(rows: Iterable) -> list[tuple]:
    """The rows of a bounded read, (key..., debits, credits), one per key, without the keys whose
    lines all lie at or after the bound: read back, those sum to nothing, where read forward they
    are not there. (A line's amount is positive: a key with a line before the bound has a sum.)"""
    total: dict[tuple, tuple[int, int]] = {}
    for *key, debits, credits in rows:
        # int(): PostgreSQL sums BIGINT into NUMERIC, which the driver gives as an integral Decimal.
        old_debits, old_credits = total.get(tuple(key), (0, 0))
        total[tuple(key)] = (old_debits + int(debits), old_credits + int(credits))
    return [(*key, debits, credits) for key, (debits, credits) in total.items() if debits or credits]


# Built once: each call only binds its values (and finds its SQL in SQLAlchemy's compiled cache).
_CLOSES_AROUND = (  # the latest close's end at or before :bound_us, else the first line's instant; the next end
    func.coalesce(select(func.max(period_closes.c.ends_at_us))
                  .where(period_closes.c.ends_at_us <= bindparam("bound_us", type_=BigInteger)).scalar_subquery(),
                  select(func.min(journal_lines.c.effective_at_us)).scalar_subquery()).label("since_us"),
    select(func.min(period_closes.c.ends_at_us))
    .where(period_closes.c.ends_at_us > bindparam("bound_us", type_=BigInteger)).scalar_subquery()
    .label("following_us"))
_AS_OF_LATEST = -1 - len(_CLOSES_AROUND)  # where a `Totals.as_of` row holds its latest line instant
_ONE_PARTNER = {postgres: _each_way(lambda way: _one_partner_statement(way, postgres)) for postgres in (False, True)}
_EVERY_ACCOUNT = _each_way(lambda way: _accounts_statement(way, None))
_PARTNER_ACCOUNTS = _each_way(lambda way: _accounts_statement(
    way, select(accounts.c.id).where(accounts.c.partner_id.is_not(None))))
_NAMED_ACCOUNTS = _each_way(lambda way: _accounts_statement(way, select(accounts.c.id).where(
    accounts.c.name.in_(bindparam("stale_names", expanding=True)))))
_ONE_PARTNER_TOTALS = _totals_statement(
    accounts.c.name.in_([bindparam("pending_name"), bindparam("available_name")]), partner_id=False)
_EVERY_ACCOUNT_TOTALS = _totals_statement()
_PARTNER_ACCOUNTS_TOTALS = _totals_statement(accounts.c.partner_id.is_not(None))


def _folded(session: Session, bounded: Reads, totals: Totals, before_us: int | None) -> NamedSums:
    """{(account, partner id, currency): (debits, credits)} before `before_us` (None: every line)."""
    return {(name, partner_id, currency): (debits, credits) for name, partner_id, currency, debits, credits
            in _rows(session, totals, bounded, {}, before_us, bounded_named=_NAMED_ACCOUNTS)}


def all_balances(session: Session, *, before_us: int | None = None) -> dict[tuple[str, str], tuple[int, int]]:
    """{(account, currency): (debits, credits)} for every account: the trial balance's rows."""
    return {(name, currency): value for (name, _, currency), value in
            _folded(session, _EVERY_ACCOUNT, _EVERY_ACCOUNT_TOTALS, before_us).items()}


def partner_account_sums(session: Session, *,
                         before_us: int | None = None) -> dict[tuple[str, str, str], tuple[int, int]]:
    """{(partner id, account, currency): (debits, credits)} of every partner's pending and available
    accounts."""
    return {(partner_id, name, currency): value for (name, partner_id, currency), value in
            _folded(session, _PARTNER_ACCOUNTS, _PARTNER_ACCOUNTS_TOTALS, before_us).items()}


def partner_balances(session: Session, partner_id: str, *, before_us: int | None = None) -> dict[str, tuple[int, int]]:
    """{currency: (pending, available)} of a partner, as credit-normal liabilities (what is owed to it)."""
    pending_name = chart.pending(partner_id)
    names = {"pending_name": pending_name, "available_name": chart.available(partner_id)}
    result: dict[str, tuple[int, int]] = {}
    read = _ONE_PARTNER[is_postgres(session)]
    for name, currency, debits, credits in _rows(session, _ONE_PARTNER_TOTALS, read, names, before_us):
        pending, available = result.get(currency, (0, 0))
        owed = credits - debits
        result[currency] = (pending + owed, available) if name == pending_name else (pending, available + owed)
    return result
