"""`verify()`: recompute the books from the stored rows and name everything that is wrong.

It walks the journal in sequence order, streaming headers and lines side by side, and checks for
each transaction: the sequence has no gap; `prev_hash` is the previous transaction's hash; the
request hash recomputed from the stored content matches (with the request hash of the stored
revenue event it names, else without: `ledger/journal.py`); the chain hash recomputed matches; there
are at least two lines, every amount is positive, every line carries its header's instant, and
debits equal credits per currency. Lines whose header is missing are named too. Then every
period close: its snapshot against the journal, its counts and head, its month, and the chain of
close hashes (`verify_closes`); the statement documents and bodies the closes stored against the journal
(`verify_statement_lines`); the running totals against the sums of the lines (`verify_totals`);
each payout's resolution against the journal's (`verify_payouts`: a payout resolved twice in the
journal was paid twice) and each payout's record against its posting (`verify_payout_postings`:
settling or failing posts what the record holds) and its run (`verify_payout_runs`: a run moved
back in time lets a run before it pay the same balances again), and each run's payouts against the
balances it read and the program as recorded when it was made (`ledger.payouts_rederived`: a
partner's status or plan rewritten changes what later runs pay); each revenue event's content
against its request hash (`verify_events`: an altered amount would change what a later refund
claws back), every event a transaction names still stored (`verify_event_links`), each commission
and clawback naming its event and of it (`verify_postings_of_their_events`, migrations 0062 and 0064), and
what each event's status says against the transactions naming it, its customer's attributions and its
payment (`verify_event_statuses`, migration 0034's rules on rows written before it), and each
payment's earnings and CPA claim against what the program, as recorded when the payment was, gives
(`ledger.recorded_program.verify_commissions`), and each refund's, chargeback's and won dispute's
clawbacks or reinstatements against what the rules take from, or restore to, its invoice's pieces as
they stood (`ledger.clawbacks_rederived.verify_clawbacks`). The rules migration 0018
makes the database hold for new rows are checked on every row: a reversal names what it reverses,
which is not a reversal, and undoes it exactly (`verify_reversals`); a moved posting was asked for
before where it stands; amounts and instants are integers and currencies ISO 4217 codes with a
minor unit (SQLite's columns take any value, and a text amount broke every report); every account
is as the chart of accounts has it (`verify_accounts`); every row names rows that exist, by each of
the schema's foreign keys (`verify_references`). And the queue of holds against the journal
(`verify_holds`): each queued hold is an accrual's, with its maturity, and each partner's pending
balance is what its queued pieces hold, so no hold has left the queue unreleased; a customer's
CPA bounty posted once (`verify_bounties`); each clawback and release against a standing piece of
its partner, invoice and currency, on the accounts of its kind (`verify_piece_links`), within the
piece's amount (`verify_pieces_within`);
and every payout posting with its payout record (`verify_payouts_recorded`); each reinstatement a
won dispute's, restoring a commission of its partner, kind and invoice (`verify_reinstatements`,
migration 0058's rule); no transaction recorded a day past the database's clock (`recorded_ahead`:
the database holds a posting's instant to its recorded instant, which the writer gives). The rules
migration 0031 makes the database hold for new rows, on rows written before it: each adjustment between its
expense and its partner, with a reason (`verify_adjustments`); each partner a transaction names
enrolled (`verify_partners_enrolled`). (Not its payout run outside closed periods: whether a run was
made before or after a close is stored nowhere but in two clocks' readings.) And each program fact
withdrawn gone from its table, withdrawn before it started (`ledger.withdrawals`, migration 0040's
rules, for rows written around its triggers). And the program's chain (`ledger.program_chain`,
migration 0053): every fact of the program, and every revenue event that posted nothing (0056),
against its row, the chain whole, and a program head recorded earlier (`program_head`), as each
close's own, which its close hash covers. And the triggers themselves, each as the migrations made
it and firing, and on PostgreSQL the keys and checks (`ledger.guards`). All of it reads one snapshot. On SQLite it first reads every page of the
file (`PRAGMA quick_check`): a damaged file is named, and nothing more is checked. Problems are
values (`Problem`), never exceptions: verify reports, the caller decides.

What the database holds cannot prove what it no longer holds: the newest transactions, or the
newest close, removed by someone who can write the file (past the triggers) leave a shorter chain
that is whole, and the hashes have no secret, so a rewrite from some transaction on can be made
whole again. Given a head recorded outside the database (`head`: the id and hash a verify printed
earlier), verify proves that the journal still holds that transaction with that hash: nothing at or
before it was removed or rewritten. Closes chain apart from the journal, so the newest close gets a
record of its own (`close`: the period and close hash a verify printed earlier).
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from typing import Iterator, NamedTuple

from sqlalchemy import (ColumnElement, ScalarSelect, Select, String, and_, case, exists, false, func, inspect, literal,
                        select, text)
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session

from ledger import accounts as chart
from ledger import collector, holds, program_chain, statement_bodies, statement_lines, withdrawals
from ledger.balances import line_sums
from ledger.clawbacks_rederived import verify_clawbacks
from ledger.commission import EARNING_KINDS
from ledger.db import database_now_us, one_snapshot
from ledger.errors import InvalidInput, invalid
from ledger.instants import describe_instant as _instant
from ledger.instants import parse_period, period_bounds_us
from ledger.journal import CLOCK_SKEW_US, CREDIT, DEBIT, Line, chain_hash, draft_of, request_hash
from ledger.money import currency_exponent
from ledger.payouts import REASON_LENGTH_MAX
from ledger.payouts_rederived import verify_payouts_rederived
from ledger.program_chain import verify_program_chain
from ledger.recorded_program import RECORDED_SKEW_US, verify_commissions
from ledger.revenue import EVENT_COLUMNS, EVENT_POSTING_KINDS, RevenueEvent
from ledger.revenue import request_hash as event_hash
from ledger.schema import (GENESIS_HASH, account_totals, accounts, api_keys, attributions, journal_lines,
                           journal_transactions, metadata, open_holds, partner_plans, partner_statuses, partners,
                           payout_resolutions, payout_runs, payouts, period_closes, plan_versions, program_withdrawals,
                           revenue_events)
from ledger.terms import terms_from_json
from ledger.guards import verify_guards
from ledger.withdrawals import verify_withdrawals

STREAM_CHUNK_ROWS = 10_000
SNAPSHOT_ROWS_NAMED = 5  # a snapshot altered in more rows names the first few
STATEMENT_LINES_NAMED = 5  # stored statement lines differing from the journal: the first few are named
HOLD_INVOICES_PER_READ = 5_000  # the queued invoices whose pieces are replayed at a time
PIECE_KINDS = ("clawback", "release")  # posted against a piece, named by accrual_id
PENDING_SUFFIX = ":pending"  # of every partner's pending account, chart.pending(partner_id), and no other
AVAILABLE_SUFFIX = ":available"  # the same of chart.available(partner_id)
# How far past the database's clock a posting's recorded instant may lie: a server's clock may run
# ahead of the database's (the service takes its postings; the rules allow five minutes' skew a dated
# instant), but none of the service's runs a day ahead.
RECORDED_AHEAD_US_MAX = 24 * 3_600 * 1_000_000


class Problem(NamedTuple):
    transaction_id: int | None
    code: str
    message: str


class Report(NamedTuple):
    ok: bool
    transactions_checked: int
    chain_head: str
    problems: list[Problem]
    head_id: int = 0  # the last transaction's id (0: none), whose hash is `chain_head`
    latest_close: tuple[str, str] | None = None  # (period, close hash) of the newest close, to record
    program_head: tuple[int, str] = (0, GENESIS_HASH)  # the program's chain head (`ledger.program_chain`), to record


@collector.paused()  # the walk's objects set off full collections: a tenth of its time (ledger/collector.py)
def verify(session: Session, *, problems_max: int = 1000, head: tuple[int, str] | None = None,
           close: tuple[str, str] | None = None, program_head: tuple[int, str] | None = None) -> Report:
    """Check the books as one snapshot shows them (given a fresh session; see `db.one_snapshot`):
    postings that commit meanwhile are neither half seen nor named as problems. `head`, (id, hash),
    is a chain head recorded earlier, outside the database; `close`, (period, close hash), a close
    recorded earlier: the books still hold it, so none up to it was removed (closes chain);
    `program_head`, (id, hash), the head of the program's chain recorded earlier."""
    one_snapshot(session)
    damaged, unconstrained = _quick_check(session)
    if damaged:  # the rows read below may be wrong, or fail to read: nothing else is checked
        return Report(False, 0, GENESIS_HASH, damaged[:problems_max])
    problems: list[Problem] = unconstrained
    expected_id, prev_hash, checked = 1, GENESIS_HASH, 0
    resolutions: dict[int, list[tuple[int, str]]] = defaultdict(list)  # payout id -> (transaction, outcome)
    reversal_of: dict[int, int] = {}  # reversed transaction -> its reversal
    reversal_ids: set[int] = set()
    head_hash: str | None = None
    not_pieces = _NotPieces()
    recorded_by_us = database_now_us(session) + RECORDED_AHEAD_US_MAX
    lines_by_transaction = _lines_grouped(session)
    pending_lines = next(lines_by_transaction, None)
    headers = session.execute(select(journal_transactions, revenue_events.c.request_hash.label("event_hash"))
                              .outerjoin(revenue_events, revenue_events.c.id == journal_transactions.c.event_id)
                              .order_by(journal_transactions.c.id)
                              .execution_options(yield_per=STREAM_CHUNK_ROWS))
    for header in headers:
        while pending_lines is not None and pending_lines[0] < header.id:
            problems.append(Problem(pending_lines[0], "orphan_lines", "lines reference a transaction that does not exist"))
            not_pieces.leave_out(*pending_lines)
            pending_lines = next(lines_by_transaction, None)
        lines: list = []
        if pending_lines is not None and pending_lines[0] == header.id:
            lines = pending_lines[1]
            pending_lines = next(lines_by_transaction, None)
        problems.extend(_check(header, lines, expected_id, prev_hash))
        if header.recorded_at_us > recorded_by_us:
            problems.append(Problem(header.id, "recorded_ahead", "recorded at "
                                    f"{_instant(header.recorded_at_us)}, a day past the database's clock"))
        problems.extend(_check_links(header, reversal_ids))
        not_pieces.add(header, lines)
        expected_id, prev_hash, checked = header.id + 1, header.hash, checked + 1
        payout_id = _payout_of(header) if header.kind in _RESOLUTION_OUTCOMES else None
        if payout_id is not None:
            resolutions[payout_id].append((header.id, _RESOLUTION_OUTCOMES[header.kind]))
        elif header.reverses_id is not None:
            reversal_of[header.reverses_id] = header.id
        if head is not None and header.id == head[0]:
            head_hash = header.hash
        if len(problems) >= problems_max:
            break
    while pending_lines is not None and len(problems) < problems_max:
        problems.append(Problem(pending_lines[0], "orphan_lines", "lines reference a transaction that does not exist"))
        not_pieces.leave_out(*pending_lines)
        pending_lines = next(lines_by_transaction, None)
    if head is not None and (head_hash is not None or len(problems) < problems_max):  # not cut short before it
        problems.extend(_check_head(head, head_hash))
    latest = _latest_close(session)
    problems.extend(_verify_tables(session, close, resolutions, reversal_of, not_pieces))
    problems.extend(Problem(*found) for found in verify_program_chain(session, program_head))
    latest_program = program_chain.head(session) if program_chain.chained(session) else (0, GENESIS_HASH)
    return Report(not problems, checked, prev_hash, problems[:problems_max], expected_id - 1, latest, latest_program)


def _verify_tables(session: Session, close: tuple[str, str] | None, resolutions: dict[int, list[tuple[int, str]]],
                   reversal_of: dict[int, int], not_pieces: "_NotPieces") -> list[Problem]:
    """What the chain walk cannot see row by row: closes, totals, payouts, events and holds, each
    against the rows it summarises, in the same snapshot."""
    problems: list[Problem] = []
    problems.extend(verify_references(session))
    problems.extend(verify_closes(session))
    if close is not None:
        problems.extend(_check_recorded_close(session, close))
    problems.extend(verify_statement_lines(session))
    line_totals = _line_totals(session)
    problems.extend(verify_totals(session, line_totals))
    problems.extend(verify_accounts(session))
    problems.extend(verify_reversals(session))
    problems.extend(verify_payouts(session, resolutions, reversal_of))
    problems.extend(verify_payout_postings(session))
    problems.extend(verify_payout_runs(session))
    problems.extend(verify_payouts_recorded(session))
    problems.extend(Problem(*found) for found in verify_payouts_rederived(session))
    problems.extend(verify_events(session))
    problems.extend(verify_event_links(session))
    problems.extend(verify_postings_of_their_events(session))
    problems.extend(verify_event_statuses(session))
    problems.extend(Problem(*found) for found in verify_commissions(session))
    problems.extend(Problem(*found) for found in verify_clawbacks(session))
    problems.extend(verify_holds(session, line_totals, not_pieces))
    problems.extend(verify_bounties(session))
    problems.extend(verify_piece_links(session))
    problems.extend(verify_pieces_within(session))
    problems.extend(verify_adjustments(session))
    problems.extend(verify_earnings_and_writeoffs(session))
    problems.extend(verify_reinstatements(session))
    problems.extend(verify_partners_enrolled(session))
    problems.extend(Problem(*found) for found in verify_withdrawals(session))
    problems.extend(Problem(*found) for found in verify_guards(session))
    return problems


QUICK_CHECK_ERRORS_MAX = 20  # named of each kind; quick_check is asked for five times as many


def _quick_check(session: Session) -> tuple[list[Problem], list[Problem]]:
    """SQLite: (the file's damaged pages, its rows against their CHECK and NOT NULL constraints), by
    `PRAGMA quick_check` (every page and b-tree read once, in about the time of reading the file).
    The books' rows can read whole from a damaged file (a database file copied over a stale
    write-ahead log, README: SQLite), and a damaged page can give a row that is not the one written.
    A row against its constraints was written by a connection that turned them off (`PRAGMA
    ignore_check_constraints`): a line whose side is neither D nor C passed the seal, which sums
    every side but D as a credit, and no content check below reads the side. PostgreSQL keeps its
    own pages' checksums where the cluster has them on, and has no such pragma."""
    if session.connection().dialect.name != "sqlite":
        return [], []
    try:
        found = session.execute(text(f"PRAGMA quick_check({5 * QUICK_CHECK_ERRORS_MAX})")).scalars().all()
    except DatabaseError as error:  # too damaged to be checked ("database disk image is malformed")
        return [Problem(None, "database_damaged", f"SQLite could not check the file: {error.orig}")], []
    if found == ["ok"]:
        return [], []
    lines = [line for message in found for line in message.splitlines() if not line.startswith("*** in database")]
    constraints = [line for line in lines if line.startswith(("CHECK constraint failed", "NULL value in"))]
    return ([Problem(None, "database_damaged", f"SQLite's quick_check: {line}")
             for line in lines if line not in constraints][:QUICK_CHECK_ERRORS_MAX],
            [Problem(None, "row_against_its_constraints", f"SQLite's quick_check: {line}")
             for line in constraints][:QUICK_CHECK_ERRORS_MAX])


PROGRAM_ROW = "a row id of the program's chain"  # what a program head's ID is, as a refusal names it
_HEAD = re.compile(r"([1-9][0-9]{0,18}):([0-9a-f]{64})")  # ASCII digits only: "²".isdigit() is true


def parse_head(text: str, *, field: str = "head", what: str = "a transaction id") -> tuple[int, str]:
    """`ID:HASH`, as verify reports a head to record, as (id, hash); a 422 naming `field` otherwise."""
    match = _HEAD.fullmatch(text)
    if match is None:
        raise invalid(field, f"must be {what} and its hash, ID:HASH, as verify reports it")
    return int(match.group(1)), match.group(2)


# A payout's resolution in the journal: its kind, keyed `{kind}:{payout id}` (ledger.payouts), or
# the reversal of its posting while it was pending (ledger.reversals), which fails it.
_RESOLUTION_OUTCOMES = {"payout_settled": "settled", "payout_failed": "failed"}


def _payout_of(header) -> int | None:
    """The payout a resolution's key names; None for a posting of that kind made otherwise (by hand,
    through `journal.post`), which resolves no payout."""
    kind, _, payout_id = header.idempotency_key.partition(":")
    return int(payout_id) if kind == header.kind and payout_id.isdigit() else None


_CLOSE = re.compile(r"([0-9]{4}-(?:0[1-9]|1[0-2])):([0-9a-f]{64})")


def parse_close(text: str, *, field: str = "close") -> tuple[str, str]:
    """`PERIOD:HASH`, as verify reports a close to record, as (period, close hash); a 422 naming
    `field` otherwise."""
    match = _CLOSE.fullmatch(text)
    if match is None:
        raise invalid(field, "must be a period and its close hash, YYYY-MM:HASH, as verify reports it")
    return match.group(1), match.group(2)


def _latest_close(session: Session) -> tuple[str, str] | None:
    t = period_closes.c
    row = session.execute(select(t.period, t.close_hash).order_by(t.ends_at_us.desc()).limit(1)).first()
    return None if row is None else (row.period, row.close_hash)


def _check_recorded_close(session: Session, close: tuple[str, str]) -> list[Problem]:
    """The books still hold a close recorded earlier, with its hash: as each close names the
    previous one's hash, and verify_closes checks the chain, none up to it was removed or rewritten."""
    period, recorded_hash = close
    found = session.execute(select(period_closes.c.close_hash).where(period_closes.c.period == period)).scalar()
    if found is None:
        return [Problem(None, "close_missing", f"the books hold no close of {period}, the close recorded: closes "
                                               "were removed")]
    if found != recorded_hash:
        return [Problem(None, "close_rewritten", f"the close of {period} has not the hash recorded for it: the "
                                                 "closes were rewritten up to here")]
    return []


def _check_head(head: tuple[int, str], found_hash: str | None) -> list[Problem]:
    head_id, recorded_hash = head
    if found_hash is None:
        return [Problem(head_id, "head_missing", f"the journal ends before transaction {head_id}, the head recorded: "
                                                 "transactions were removed")]
    if found_hash != recorded_hash:
        return [Problem(head_id, "head_rewritten", "the hash is not the one recorded for this head: the journal was "
                                                   "rewritten up to here")]
    return []


def verify_payouts(session: Session, resolutions: dict[int, list[tuple[int, str]]],
                   reversal_of: dict[int, int]) -> list[Problem]:
    """Each payout resolved at most once in the journal (twice is money paid and returned, or paid
    twice), and recorded as the journal resolved it; nothing resolves a payout that does not exist.
    A settlement or failure is of its payout's partner, moves its amount in its currency and comes
    after its posting: the key names the payout by id alone, and payouts' ids swapped past the
    triggers (a failed payout's with a pending one's) showed the pending one failed, and let the
    failed one be settled, paid twice, with each payout still resolved once."""
    p, r = payouts.c, payout_resolutions.c
    problems = []
    known = set()
    posted = _resolution_postings(session)
    for payout_id, posting_id, partner_id, currency, amount_minor, recorded_id, outcome in session.execute(
            select(p.id, p.transaction_id, p.partner_id, p.currency, p.amount_minor, r.transaction_id, r.outcome)
            .outerjoin(payout_resolutions, r.payout_id == p.id).order_by(p.id)):
        known.add(payout_id)
        problems += [Problem(transaction_id, "payout_resolution_mismatch",
                             f"payout {payout_id}: its {resolved} posting is not of its partner, currency and amount, "
                             "or comes before the payout's own")
                     for transaction_id, resolved in resolutions.get(payout_id, ())
                     if posted.get(transaction_id) != (partner_id, {currency: amount_minor})
                     or transaction_id < posting_id]
        journal = list(resolutions.get(payout_id, ()))
        if posting_id in reversal_of:
            journal.append((reversal_of[posting_id], "failed"))
        journal.sort()
        recorded = [] if recorded_id is None else [(recorded_id, outcome)]
        if len(journal) > 1:
            problems.append(Problem(journal[1][0], "payout_resolved_twice",
                                    f"payout {payout_id} is resolved twice: {_resolved(journal)}"))
        elif journal != recorded:
            problems.append(Problem(journal[0][0] if journal else recorded_id, "payout_resolution_mismatch",
                                    f"payout {payout_id}: the journal has it {_resolved(journal)}, its resolution "
                                    f"record {_resolved(recorded)}"))
    problems += [Problem(transactions[0][0], "payout_resolution_mismatch",
                         f"resolves payout {payout_id}, which does not exist")
                 for payout_id, transactions in sorted(resolutions.items()) if payout_id not in known]
    # The reason the API shows is the record's; the chain covers it as the posting's memo.
    t = journal_transactions.c
    problems += [Problem(transaction_id, "payout_resolution_mismatch",
                         f"payout {payout_id}: its resolution record's reason is not its posting's")
                 for payout_id, transaction_id in session.execute(
                     select(r.payout_id, r.transaction_id).join(journal_transactions, t.id == r.transaction_id)
                     .where(r.reason.is_distinct_from(t.memo)).order_by(r.payout_id))]
    return problems


def _resolved(resolutions: list[tuple[int, str]]) -> str:
    return ", ".join(f"{outcome} by transaction {transaction}" for transaction, outcome in resolutions) or "pending"


def _check_links(header, reversal_ids: set[int]) -> list[Problem]:
    """A reversal names what it reverses, which is not itself a reversal; a moved posting was asked
    for before the instant it stands at (the rules migration 0018 holds for new rows)."""
    found = []
    tid = header.id
    if header.kind == "reversal":
        reversal_ids.add(tid)
        if header.reverses_id is None:
            found.append(Problem(tid, "reversal_unlinked", "a reversal that names no transaction it reverses"))
    if header.reverses_id in reversal_ids:
        found.append(Problem(tid, "reversal_reversed", f"reverses transaction {header.reverses_id}, itself a reversal"))
    original = header.original_effective_at_us
    if original is not None and original >= header.effective_at_us:
        found.append(Problem(tid, "moved_back", "its requested instant is not before the instant it is posted at"))
    return found


def verify_accounts(session: Session) -> list[Problem]:
    """Each account as the chart of accounts has it: its type, normal side and partner follow from
    its name, and the reports (liabilities per partner) trust the stored partner."""
    a = accounts.c
    problems = []
    for name, *stored in session.execute(select(a.name, a.type, a.normal_side, a.partner_id).order_by(a.id)):
        expected = chart.entry(name)
        if expected is None:
            problems.append(Problem(None, "account_outside_chart", f"account {name!r} is not in the chart of accounts"))
        elif tuple(stored) != expected[1:]:
            problems.append(Problem(None, "account_altered", f"account {name!r}: its type, normal side or partner "
                                                             "is not the chart's"))
    return problems


def verify_reversals(session: Session) -> list[Problem]:
    """Each reversal's lines undo its original's exactly: per account and currency, the debits less
    credits of the two add up to zero."""
    t, j = journal_transactions.c, journal_lines.c
    signed = case((j.side == DEBIT, j.amount_minor), else_=-j.amount_minor)
    rows = session.execute(
        select(t.id, t.reverses_id).join(journal_lines, j.transaction_id.in_([t.id, t.reverses_id]))
        .where(t.reverses_id.is_not(None)).group_by(t.id, t.reverses_id, j.account_id, j.currency)
        .having(func.sum(signed) != 0).order_by(t.id))
    return [Problem(tid, "reversal_not_a_mirror", f"does not undo transaction {reversed_id} exactly")
            for tid, reversed_id in dict(rows.all()).items()]


def _resolution_postings(session: Session) -> dict[int, tuple[str | None, dict[str, int]]]:
    """Each settlement's and failure's transaction: its partner and its debits by currency."""
    t, j = journal_transactions.c, journal_lines.c
    posted: dict[int, tuple[str | None, dict[str, int]]] = {}
    for transaction_id, partner_id, currency, debits in session.execute(
            select(t.id, t.partner_id, j.currency, func.sum(j.amount_minor))
            .join(journal_lines, j.transaction_id == t.id)
            .where(t.kind.in_(tuple(_RESOLUTION_OUTCOMES)), j.side == DEBIT)
            .group_by(t.id, t.partner_id, j.currency)):
        posted.setdefault(transaction_id, (partner_id, {}))[1][currency] = int(debits)
    return posted


def verify_payout_postings(session: Session) -> list[Problem]:
    """Each payout against the transaction that posted it: a `payout` of the same partner whose
    debits in the payout's currency are its amount, each line a debit of the partner's available
    account or a credit of payouts in transit, in that currency (`payout_misposted`). Settling or
    failing a payout posts the amount and partner its record holds, so an altered record would move
    money nobody paid out."""
    p, t, j = payouts.c, journal_transactions.c, journal_lines.c
    debits = (select(func.coalesce(func.sum(j.amount_minor), 0))
              .where(j.transaction_id == p.transaction_id, j.side == DEBIT, j.currency == p.currency)
              .scalar_subquery())
    rows = session.execute(
        select(p.id, p.transaction_id).outerjoin(journal_transactions, t.id == p.transaction_id)
        .where((t.id.is_(None)) | (t.kind != "payout") | (t.partner_id.is_distinct_from(p.partner_id))
               | (p.amount_minor != debits)).order_by(p.id))
    problems = [Problem(transaction_id, "payout_mismatch", f"payout {payout_id}: its partner, currency or amount is "
                                                           "not what its payout transaction posted")
                for payout_id, transaction_id in rows]
    mismatched = {problem.transaction_id for problem in problems}
    a = accounts.c
    available = literal("liability:partner:", String) + p.partner_id + AVAILABLE_SUFFIX
    placed = ((j.side == DEBIT) & (a.name == available)) | ((j.side == CREDIT) & (a.name == chart.PAYOUTS_IN_TRANSIT))
    astray = (select(j.id).join(accounts, a.id == j.account_id)
              .where(j.transaction_id == p.transaction_id, (j.currency != p.currency) | ~placed).exists())
    problems.extend(  # migration 0058 holds new rows to it
        Problem(transaction_id, "payout_misposted", f"payout {payout_id}: its transaction does not move its amount "
                                                    "from the available account of its partner to payouts in transit")
        for payout_id, transaction_id in session.execute(select(p.id, p.transaction_id).where(astray).order_by(p.id))
        if transaction_id not in mismatched)
    return problems


def verify_payout_runs(session: Session) -> list[Problem]:
    """Each payout against its run: the run is stored, at the instant the payout's posting was asked
    for. The database keeps runs in time order by the latest run's instant (migration 0012), which no
    hash covers: a run moved back in time, or removed, would let a run before the latest pay again
    the balances the latest already paid; the posting, in the chain, still tells when its run was
    made (a payout on a posting that is no payout is `payout_mismatch`)."""
    p, r, t = payouts.c, payout_runs.c, journal_transactions.c
    posted_at = func.coalesce(t.original_effective_at_us, t.effective_at_us)
    rows = session.execute(
        select(p.id, p.transaction_id, p.run_id, r.at_us, posted_at)
        .join(journal_transactions, (t.id == p.transaction_id) & (t.kind == "payout"))
        .outerjoin(payout_runs, r.id == p.run_id)
        .where(r.id.is_(None) | (posted_at != r.at_us))
        .order_by(p.id))
    return [Problem(transaction_id, "payout_run_mismatch",
                    f"payout {payout_id} was posted by a run at {_instant(posted_at_us)}, but its run {run_id!r} is "
                    + ("not stored" if at_us is None else f"stored at {_instant(at_us)}"))
            for payout_id, transaction_id, run_id, at_us, posted_at_us in rows]


def verify_payouts_recorded(session: Session) -> list[Problem]:
    """Each `payout` transaction has its payout record: without one, the money it moved into transit
    could never be settled or failed, and no payout list would show it. Migration 0026 holds it for
    new rows (on SQLite, on a connection with `foreign_keys` on, as the service's are)."""
    t, p = journal_transactions.c, payouts.c
    rows = session.execute(select(t.id).where(t.kind == "payout", ~select(p.id).where(p.transaction_id == t.id)
                                              .exists()).order_by(t.id))
    return [Problem(transaction_id, "payout_unrecorded", "a payout posting that no payout record names")
            for transaction_id in rows.scalars()]


def _standing(c) -> ColumnElement[bool]:
    """Transaction `c` (an alias of the journal's headers) is not reversed."""
    r = journal_transactions.alias("r")
    return ~select(r.c.id).where(r.c.reverses_id == c.id).exists()


# A clawback or release `n` whose piece is not one it may name (migration 0022 refuses such a row): the
# one credit line `m` of an accrual, CPA or override of n's partner and invoice, on that partner's
# pending account; n's lines in m's currency, on the accounts of its kind (a clawback debits pending
# or available and credits expense:commission, a release debits pending and credits available); and
# the piece not reversed while n stands. An account's name is read by the line's account id, a
# subquery of its own: joined by name, SQLite and PostgreSQL would read the account's lines by the
# balance index.
_PIECE_LINK_BROKEN = """
SELECT n.id, n.kind, n.accrual_id FROM journal_transactions n
WHERE n.kind IN ('clawback', 'release') AND (n.accrual_id IS NULL OR n.partner_id IS NULL OR NOT EXISTS (
  SELECT 1 FROM journal_lines m JOIN journal_transactions p ON p.id = m.transaction_id
  WHERE m.transaction_id = n.accrual_id AND m.side = 'C'
    AND (SELECT pa.name FROM accounts pa WHERE pa.id = m.account_id)
        = 'liability:partner:' || n.partner_id || ':' || 'pending'
    AND NOT EXISTS (SELECT 1 FROM journal_lines m2 WHERE m2.transaction_id = m.transaction_id AND m2.side = 'C'
                    AND m2.id <> m.id)
    AND p.kind IN ('accrual', 'cpa', 'override') AND p.partner_id = n.partner_id
    AND (p.invoice_id = n.invoice_id OR p.invoice_id IS NULL AND n.invoice_id IS NULL)
    AND NOT EXISTS (SELECT 1 FROM journal_lines o WHERE o.transaction_id = n.id AND (o.currency <> m.currency
      OR NOT (o.side = 'D' AND (o.account_id = m.account_id OR n.kind = 'clawback'
                                AND (SELECT a.name FROM accounts a WHERE a.id = o.account_id)
                                    = 'liability:partner:' || n.partner_id || ':' || 'available')
              OR o.side = 'C' AND (SELECT a.name FROM accounts a WHERE a.id = o.account_id)
                                  = CASE n.kind WHEN 'clawback' THEN 'expense:commission'
                                    ELSE 'liability:partner:' || n.partner_id || ':' || 'available' END)))
    AND (NOT EXISTS (SELECT 1 FROM journal_transactions r WHERE r.reverses_id = p.id)
         OR EXISTS (SELECT 1 FROM journal_transactions r WHERE r.reverses_id = n.id))))
ORDER BY n.id"""


def verify_piece_links(session: Session) -> list[Problem]:
    """Each clawback and release names its piece (`accrual_id`): an accrual, CPA or override of the
    same partner and invoice, one transfer into the partner's pending account; its own lines are in
    the piece's currency and on the accounts of its kind; and the piece is not reversed while the
    clawback or release stands (reversing a piece reverses what stands against it first). Migration
    0022 holds it for new rows."""
    return [Problem(transaction_id, "piece_link_broken",
                    f"a {kind} naming {'no accrual' if accrual_id is None else f'transaction {accrual_id}'}, which "
                    "is not a standing accrual, CPA or override of its partner, invoice and currency; or its lines "
                    f"are on accounts a {kind} does not use")
            for transaction_id, kind, accrual_id in session.execute(text(_PIECE_LINK_BROKEN))]


def verify_pieces_within(session: Session) -> list[Problem]:
    """What stands against each piece stays within its amount (its credit line `m`): its clawbacks;
    its clawbacks from the account it credited (its partner's pending account) with its release;
    and one release at most. Migration 0022 holds it for new rows; `ledger.commission` caps each
    clawback at what is left."""
    c, j, m = journal_transactions.alias("c"), journal_lines.alias("l"), journal_lines.alias("m")
    clawback, release = c.c.kind == "clawback", c.c.kind == "release"
    clawed = func.sum(case((clawback, j.c.amount_minor), else_=0))
    against_pending = func.sum(case((release | (j.c.account_id == m.c.account_id), j.c.amount_minor), else_=0))
    releases = func.sum(case((release, 1), else_=0))
    rows = session.execute(
        select(c.c.accrual_id, m.c.amount_minor, clawed, against_pending, releases)
        .join(j, (j.c.transaction_id == c.c.id) & (j.c.side == DEBIT))
        .join(m, (m.c.transaction_id == c.c.accrual_id) & (m.c.side == CREDIT))
        .where(c.c.kind.in_(PIECE_KINDS), c.c.accrual_id.is_not(None), _standing(c.c))
        .group_by(c.c.accrual_id, m.c.id, m.c.amount_minor)
        .having((clawed > m.c.amount_minor) | (against_pending > m.c.amount_minor) | (releases > 1))
        .order_by(c.c.accrual_id))
    return [Problem(accrual_id, "piece_overdrawn",
                    f"more stands against it than its amount {amount}: clawbacks {taken}, from pending with its "
                    f"release {pending}, releases {count}")
            for accrual_id, amount, taken, pending, count in rows]


def verify_adjustments(session: Session) -> list[Problem]:
    """Each adjustment as `payouts.adjust` posts it: two lines, one on `expense:commission:adjustment`
    and one on an account of the partner it names, with a reason of 1 to `REASON_LENGTH_MAX`
    characters. Migration 0031 holds it for new rows; one written before was read by no partner's
    key (no partner named), or moved money the chart gives other postings (cash, payouts in transit,
    a partner's two accounts) unseen as such by the statements."""
    t, j, a = journal_transactions.c, journal_lines.c, accounts.c
    expenses = func.sum(case((a.name == chart.EXPENSE_ADJUSTMENT, 1), else_=0))
    partner_lines = func.sum(case((a.partner_id == t.partner_id, 1), else_=0))
    rows = session.execute(
        select(t.id).outerjoin(journal_lines, j.transaction_id == t.id).outerjoin(accounts, a.id == j.account_id)
        .where(t.kind == "adjustment").group_by(t.id, t.partner_id, t.memo)
        .having(t.partner_id.is_(None) | t.memo.is_(None) | ~func.length(t.memo).between(1, REASON_LENGTH_MAX)
                | (func.count(j.id) != 2) | (expenses != 1) | (partner_lines != 1))
        .order_by(t.id))
    return [Problem(transaction_id, "adjustment_misposted", "an adjustment that does not move money between "
                    "the adjustment expense and one account of the partner it names, with a reason")
            for transaction_id in rows.scalars()]


def verify_earnings_and_writeoffs(session: Session) -> list[Problem]:
    """Each accrual, CPA and override as `ledger.revenue` posts it, and each write-off as
    `ledger.periods` posts it at a close; migrations 0047 and 0048 hold the same for new rows. An
    earning names its partner and moves money from `expense:commission` to that partner's pending
    account in one credit, the piece its release and clawbacks are posted against
    (`earning_misposted`). A write-off names its partner, moves money from the write-off expense to
    that partner's available account at the last microsecond of a closed month, on a plan version
    whose policy is `reset` (`writeoff_misposted`), and leaves that account at zero as of then: it
    forgives exactly the negative balance (`writeoff_unlike_balance`). Written around the service,
    either took money from accounts the chart gives other postings (a write-off from cash, paid out
    by the next run) unseen by every other check."""
    t, j, a = journal_transactions.c, journal_lines.c, accounts.c
    # By name, as the database's rule reads it: an account whose partner was altered is named apart.
    partners_account = literal("liability:partner:", String) + t.partner_id
    pending_account = (j.side == CREDIT) & (a.name == partners_account + PENDING_SUFFIX)
    available_account = (j.side == CREDIT) & (a.name == partners_account + AVAILABLE_SUFFIX)
    credits = func.sum(case((j.side == CREDIT, 1), else_=0))
    problems = []
    for kinds, expense, credited, also, code, what in (
            (EARNING_KINDS, chart.EXPENSE_COMMISSION, pending_account, credits > 1, "earning_misposted",
             "a commission that does not move money from expense:commission to the pending account of the partner "
             "it names, in one credit"),
            (("writeoff",), chart.EXPENSE_WRITEOFF, available_account, false(), "writeoff_misposted",
             "a write-off that does not move money from the write-off expense to the available account of the "
             "partner it names")):
        placed = func.sum(case(((j.side == DEBIT) & (a.name == expense), 1), (credited, 1), else_=0))
        rows = session.execute(  # how many lines, and that they balance, `_check` reads
            select(t.id).join(journal_lines, j.transaction_id == t.id).outerjoin(accounts, a.id == j.account_id)
            .where(t.kind.in_(kinds)).group_by(t.id, t.partner_id)
            .having(t.partner_id.is_(None) | (placed != func.count(j.id)) | also).order_by(t.id))
        problems.extend(Problem(transaction_id, code, what) for transaction_id in rows.scalars())
    misposted = {problem.transaction_id for problem in problems}
    return problems + _writeoffs_unlike_closes(session, misposted)


def verify_reinstatements(session: Session) -> list[Problem]:
    """Each accrual, CPA or override naming another commission (a reinstatement) as `ledger.revenue`
    posts one, and migration 0058 holds new rows to: for a won dispute of its invoice, its event,
    restoring a root commission (naming none) of its partner, kind and invoice. What the dispute
    restores is re-derived by `verify_clawbacks`; written around the service for another event (the
    customer's payment, say), it was re-derived by nothing, as a second CPA bounty is not counted
    as one."""
    t, e = journal_transactions.c, revenue_events.c
    root = journal_transactions.alias("root")
    o = root.c
    rows = session.execute(
        select(t.id).outerjoin(root, o.id == t.accrual_id).outerjoin(revenue_events, e.id == t.event_id)
        .where(t.kind.in_(EARNING_KINDS), t.accrual_id.is_not(None),
               t.partner_id.is_(None) | t.invoice_id.is_(None) | o.id.is_(None) | o.accrual_id.is_not(None)
               | (o.kind != t.kind) | o.partner_id.is_distinct_from(t.partner_id)
               | o.invoice_id.is_distinct_from(t.invoice_id) | e.id.is_(None) | (e.type != "chargeback_reversed")
               | e.invoice_id.is_distinct_from(t.invoice_id))
        .order_by(t.id))
    return [Problem(transaction_id, "reinstatement_unlike_dispute", "a commission naming another that does not "
                    "restore, for a won dispute of its invoice, a commission of its partner, kind and invoice")
            for transaction_id in rows.scalars()]


def _writeoffs_unlike_closes(session: Session, misposted: set[int]) -> list[Problem]:
    """The write-offs well posted (`verify_earnings_and_writeoffs`), each against its close, its plan
    version and the balance it leaves, read for every write-off in one query: each account and
    currency a write-off credits, summed over that account's lines up to the write-off's instant."""
    t, j, c = journal_transactions.c, journal_lines.c, period_closes.c
    closed_ends = set(session.execute(select(c.ends_at_us)).scalars())
    policies = {version_id: _policy_of(terms) for version_id, terms in
                session.execute(select(plan_versions.c.id, plan_versions.c.terms))}
    credited = (select(j.transaction_id, j.account_id, j.currency).distinct()
                .join(journal_transactions, t.id == j.transaction_id)
                .where(t.kind == "writeoff", j.side == CREDIT).subquery())
    before = journal_lines.alias("before")
    b = before.c
    signed = case((b.side == CREDIT, b.amount_minor), else_=-b.amount_minor)
    writeoffs = session.execute(
        select(t.id, t.effective_at_us, t.plan_version_id, credited.c.currency, func.sum(signed))
        .select_from(credited).join(journal_transactions, t.id == credited.c.transaction_id)
        .join(before, (b.account_id == credited.c.account_id) & (b.currency == credited.c.currency)
              & (b.effective_at_us <= t.effective_at_us))
        .group_by(t.id, t.effective_at_us, t.plan_version_id, credited.c.account_id, credited.c.currency)
        .order_by(t.id, credited.c.currency))
    problems = []
    for transaction_id, at_us, version_id, currency, left in writeoffs:  # a row per currency credited
        if transaction_id in misposted:
            continue
        if at_us + 1 not in closed_ends or policies.get(version_id) != "reset":
            problems.append(Problem(transaction_id, "writeoff_misposted", "a write-off that is not dated at the end "
                                    "of a closed month, or not on a plan version whose policy is reset"))
            misposted.add(transaction_id)
        elif left != 0:
            problems.append(Problem(transaction_id, "writeoff_unlike_balance", f"leaves the available balance at "
                                    f"{int(left)} minor units of {currency} as of its instant, not zero: a write-off "
                                    "forgives exactly the negative balance"))
    return problems


def _policy_of(terms: str) -> str | None:
    try:
        return terms_from_json(terms).negative_balance
    except (InvalidInput, ValueError, TypeError, KeyError):  # named by `verify_commissions`
        return None


def verify_partners_enrolled(session: Session) -> list[Problem]:
    """Every partner a transaction names is enrolled: a posting for a partner never enrolled is read
    by no partner's key and paid by no payout run. Migration 0031 holds it for new rows; each such
    partner is named once, at its first transaction. And every partner has a status and a plan, and
    every partner key names an enrolled partner."""
    t, p = journal_transactions.c, partners.c
    rows = session.execute(
        select(t.partner_id, func.min(t.id)).outerjoin(partners, p.id == t.partner_id)
        .where(t.partner_id.is_not(None), p.id.is_(None)).group_by(t.partner_id).order_by(func.min(t.id)))
    found = [Problem(transaction_id, "partner_not_enrolled", f"names partner {partner_id!r}, which is not enrolled")
             for partner_id, transaction_id in rows]
    return found + _partners_without_status_or_plan(session) + _keys_of_partners_not_enrolled(session)


def _keys_of_partners_not_enrolled(session: Session) -> list[Problem]:
    """A partner key names an enrolled partner (migration 0029 refuses one that does not): one
    written past the rule would read the books of a partner enrolled later under that id. The schema
    declares no foreign key there for `verify_references` to read: the rule is the trigger's."""
    k, p = api_keys.c, partners.c
    rows = session.execute(select(k.id, k.partner_id).where(k.partner_id.is_not(None), ~exists().where(
        p.id == k.partner_id)).order_by(k.id))
    return [Problem(None, "key_partner_not_enrolled", f"API key {key_id!r} names partner {partner_id!r}, which is "
                    "not enrolled") for key_id, partner_id in rows]


def _partners_without_status_or_plan(session: Session) -> list[Problem]:
    """`partners.create_partner` makes a partner with its status and plan; one written around the
    service without either had its customers' payments recorded as earning nothing, and read back
    with no status and no plan (`partner_unenrolled`, once a partner; no transaction to name); so
    was one whose first status or plan starts after its creation, until then. Migration 0060
    refuses to commit either: this names those written before it or past its rule."""
    p, s, pl = partners.c, partner_statuses.c, partner_plans.c
    rows = session.execute(select(p.id).where(
        ~exists().where(s.partner_id == p.id, s.effective_at_us <= p.created_at_us)
        | ~exists().where(pl.partner_id == p.id, pl.effective_from_us <= p.created_at_us)).order_by(p.id))
    return [Problem(None, "partner_unenrolled", f"partner {partner_id!r} has no status or no plan from its creation")
            for partner_id in rows.scalars()]


def verify_event_links(session: Session) -> list[Problem]:
    """Every revenue event a transaction names is stored: without it, a re-sent event would be taken
    as new instead of replayed, and a commission naming a made-up event was paid. Migration 0065
    refuses to commit one; this names those written before it or past its rule."""
    t, e = journal_transactions.c, revenue_events.c
    rows = session.execute(
        select(t.event_id, func.min(t.id)).outerjoin(revenue_events, e.id == t.event_id)
        .where(t.event_id.is_not(None), e.id.is_(None)).group_by(t.event_id).order_by(func.min(t.id)))
    return [Problem(transaction_id, "event_missing", f"names revenue event {event_id!r}, which is not stored")
            for event_id, transaction_id in rows]


def verify_postings_of_their_events(session: Session) -> list[Problem]:
    """Each commission and clawback names a revenue event, its invoice and customer (migration 0064
    holds it for new rows; `earning_without_event`), and each root commission or clawback naming a
    stored event is of it (migration 0062): names its invoice and customer, and the event is a
    payment for a commission, a refund or chargeback for a clawback (`earning_unlike_event`;
    `verify_reinstatements` reads the others). An override written naming another invoice than its
    payment's was left standing by a refund of the whole invoice, and paid."""
    t, e = journal_transactions.c, revenue_events.c
    of_type = case((t.kind == "clawback", e.type.in_(("refund", "chargeback"))), else_=e.type == "invoice_paid")
    rows = session.execute(
        select(t.id, t.kind, t.event_id).join(revenue_events, e.id == t.event_id)
        .where((t.kind.in_(EARNING_KINDS) & t.accrual_id.is_(None)) | (t.kind == "clawback"),
               ~and_(t.invoice_id.is_not_distinct_from(e.invoice_id), t.customer_id.is_not_distinct_from(e.customer_id),
                     of_type)).order_by(t.id))
    unlike = [Problem(transaction_id, "earning_unlike_event", f"a {kind} naming revenue event {event_id!r} names "
                      "another invoice or customer than the event, or the event is not of its kind")
              for transaction_id, kind, event_id in rows]
    # Migration 0064's rule: one naming no event, invoice or customer (an accrual written so was
    # paid: no refund reaches it, and nothing else had an event to compare it with).
    without = session.execute(
        select(t.id, t.kind).where(t.kind.in_(EVENT_POSTING_KINDS),
                                   t.event_id.is_(None) | t.invoice_id.is_(None) | t.customer_id.is_(None))
        .order_by(t.id))
    return unlike + [Problem(transaction_id, "earning_without_event", f"a {kind} names no revenue event, invoice or "
                             "customer") for transaction_id, kind in without]


def verify_event_statuses(session: Session) -> list[Problem]:
    """What each revenue event's status says against the rows it is decided from (migration 0034
    holds it for new rows): `posted` when, and only when, a commission or clawback of its invoice
    names the event; a payment `unattributed` when, and only when, no attribution of its customer
    stood when it was recorded: recorded before it and not withdrawn by then (ten minutes of clock
    skew allowed either way, `RECORDED_SKEW_US`: an attribution recorded or withdrawn within them of
    the event is not counted against either status); a
    refund, chargeback or won dispute `unattributed` when, and only when, its invoice's payment is.
    A row that says `no_commission` with no transaction, for a customer attributed by then, passes:
    deciding it needs the plans, statuses and windows as they stood."""
    e, t, a = revenue_events.c, journal_transactions.c, attributions.c
    named = select(t.id).where(t.event_id == e.id, t.invoice_id == e.invoice_id,
                               t.kind.in_(EVENT_POSTING_KINDS)).exists()
    posted = e.status == "posted"
    problems = [Problem(None, "event_status_unlike_postings",
                        f"revenue event {event_id!r} says {status}, but " + (
                            "no commission or clawback of its invoice names it" if status == "posted"
                            else "commissions or clawbacks of its invoice name it"))
                for event_id, status in session.execute(
                    select(e.id, e.status).where((posted & ~named) | (~posted & named)).order_by(e.id))]

    w = program_withdrawals.c
    with_withdrawals = withdrawals.recorded(session)

    def attributed(recorded_before: ColumnElement, withdrawn_after: ColumnElement) -> ColumnElement:
        # An attribution recorded before the instant, and one withdrawn since (migration 0040) that
        # stood then: a customer's first may be withdrawn before it starts.
        standing = select(a.id).where(a.customer_id == e.customer_id, a.recorded_at_us < recorded_before).exists()
        if not with_withdrawals:
            return standing
        return standing | select(w.id).where(
            w.fact_table == "attributions", w.subject_id == e.customer_id, w.fact_recorded_at_us < recorded_before,
            w.recorded_at_us > withdrawn_after).exists()
    unattributed = e.status == "unattributed"
    # Attributed for certain: by an attribution recorded, and not withdrawn, within the skew of it.
    surely = attributed(e.recorded_at_us - RECORDED_SKEW_US, e.recorded_at_us + RECORDED_SKEW_US)
    # Perhaps: by one that may have been recorded, and not yet withdrawn, when the payment was.
    perhaps = attributed(e.recorded_at_us + RECORDED_SKEW_US + 1, e.recorded_at_us - RECORDED_SKEW_US - 1)
    payments = session.execute(select(e.id, e.status).where(
        e.type == "invoice_paid", (unattributed & surely) | (~unattributed & ~perhaps)).order_by(e.id))
    problems += [Problem(None, "event_status_unlike_attributions", f"revenue event {event_id!r} says {status}, but "
                         + ("its customer was attributed before it was recorded" if status == "unattributed"
                            else "its customer had no attribution when it was recorded"))
                 for event_id, status in payments]
    paid = revenue_events.alias("paid")
    paid_unattributed = select(paid.c.id).where(paid.c.invoice_id == e.invoice_id, paid.c.type == "invoice_paid",
                                                paid.c.status == "unattributed").exists()
    undoing = session.execute(select(e.id, e.status).where(e.type != "invoice_paid", (
        unattributed & ~paid_unattributed) | (~unattributed & paid_unattributed)).order_by(e.id))
    problems += [Problem(None, "event_status_unlike_payment", f"revenue event {event_id!r} says {status}, but "
                         + ("its invoice's payment is attributed" if status == "unattributed"
                            else "its invoice's payment is unattributed"))
                 for event_id, status in undoing]
    return problems


def verify_events(session: Session) -> list[Problem]:
    """Each revenue event's content (id, type, customer, invoice, amount, instant) against the
    request hash it was received with, which a replay compares."""
    content = EVENT_COLUMNS[:len(RevenueEvent._fields)]
    rows = session.execute(select(*(revenue_events.c[name] for name in content), revenue_events.c.request_hash)
                           .order_by(revenue_events.c.id).execution_options(yield_per=STREAM_CHUNK_ROWS))
    return [Problem(None, "event_altered", f"revenue event {row[0]!r}: its content does not match its request hash")
            for row in rows if event_hash(RevenueEvent(*row[:-1])) != row[-1]]


# Named by the chain walk itself (`orphan_lines`), line by line.
_REFERENCES_WALKED = {("journal_lines", ("transaction_id",))}


def verify_references(session: Session) -> list[Problem]:
    """Every row names rows that exist, by each foreign key of the schema (`ledger.schema`, which the
    migrations make): the database holds them, but not for rows written past them. A restore of the
    data alone, with `--disable-triggers` or into a database that lacked a table's rows (pg_restore
    goes on past the errors), a key dropped, or an SQLite connection with `foreign_keys` off, left
    lines naming accounts that do not exist, which every report reads by name. One query counts,
    for every key, the rows naming what does not exist; one more for each key that has some, which
    also gives the least of them."""
    problems = []
    present = frozenset(inspect(session.connection()).get_table_names())  # below the latest revision, fewer
    checks = _reference_queries(present)
    counts = session.execute(select(*(count for *_, count in checks))).one() if checks else ()
    for (table_name, columns, referred, query, _), broken in zip(checks, counts):
        if broken:
            count, least = session.execute(query).one()
            problems.append(Problem(None, "reference_broken", (
                f"{table_name} ({', '.join(columns)}): {count} row{'s' if count > 1 else ''} name"
                f"{'' if count > 1 else 's'} a row of {referred} that does not exist, the least {least!r}")))
    return problems


# (table, its key's columns, the table it refers to, the query, its count alone)
ReferenceCheck = tuple[str, tuple[str, ...], str, Select, ScalarSelect]


@functools.cache
def _reference_queries(present: frozenset[str]) -> tuple[ReferenceCheck, ...]:
    """The check of each foreign key of the tables `present`, built once a process: the counts are
    read in one statement, the query only for a key with rows naming nothing. Built at each call,
    one statement a key, the queries took about half of `verify`'s time on a small book."""
    checks = []
    for table in metadata.sorted_tables:
        if table.name not in present:
            continue
        for key in table.foreign_key_constraints:
            columns = tuple(element.parent.name for element in key.elements)
            if (table.name, columns) in _REFERENCES_WALKED:
                continue
            child, parent = table.alias("c"), key.referred_table.alias("p")
            pairs = [(child.c[element.parent.name], parent.c[element.column.name]) for element in key.elements]
            naming_nothing = (*(named.is_not(None) for named, _ in pairs),
                              ~exists().where(and_(*(named == referred for named, referred in pairs))))
            query = select(func.count(), func.min(pairs[0][0])).select_from(child).where(*naming_nothing)
            count = select(func.count()).select_from(child).where(*naming_nothing).scalar_subquery()
            checks.append((table.name, columns, key.referred_table.name, query, count))
    return tuple(checks)


def verify_closes(session: Session) -> list[Problem]:
    """Recompute every close from the journal: its snapshot (the previous one plus the period's
    lines), its transaction count, its journal head, and the chain of close hashes; and its bounds
    and its time, which no hash covers: the calendar month it names, from where the previous close
    ended (the rules migration 0018 holds for new rows: a close moved off its month moves where
    postings land and leaves a month that can never be closed), closed once that month had ended
    (0018 refuses a close before the month's end by the database's clock; 0034 a new `closed_at`
    before it, and this checks the closes written before 0034) and not after the database's clock
    allows now (0034 refuses a new `closed_at` more than `CLOCK_SKEW_US` ahead of it: one found
    further ahead was moved there since)."""
    from ledger.periods import close_hash, list_periods, program_heads, snapshot  # periods builds on balances

    problems: list[Problem] = []
    names = dict(session.execute(select(accounts.c.id, accounts.c.name)).all())
    expected_rows: dict = {}
    prev_hash, prev_end = GENESIS_HASH, None
    latest_closed_at_us = database_now_us(session) + CLOCK_SKEW_US
    heads = program_heads(session)
    for close in list_periods(session):
        delta = line_sums(session, None, prev_end, close.ends_at_us)
        for key, (debit, credit) in delta.items():
            old = expected_rows.get(key, (0, 0))
            expected_rows[key] = (old[0] + debit, old[1] + credit)
        where = f"period {close.period}"
        problems.extend(_check_close_bounds(close, prev_end, latest_closed_at_us, where))
        stored = snapshot(session, close.period)
        if stored != expected_rows:
            differing = sorted(set(stored) ^ set(expected_rows) | {key for key in set(stored) & set(expected_rows)
                                                                   if stored[key] != expected_rows[key]}, key=str)
            named = ", ".join(f"{names.get(account_id, account_id)} {currency} "
                              f"(stored {stored.get((account_id, currency))}, "
                              f"journal {expected_rows.get((account_id, currency))})"
                              for account_id, currency in differing[:SNAPSHOT_ROWS_NAMED])
            more = f" and {len(differing) - SNAPSHOT_ROWS_NAMED} more" if len(differing) > SNAPSHOT_ROWS_NAMED else ""
            problems.append(Problem(None, "snapshot_altered", f"{where}: the snapshot differs from the journal's "
                                                               f"balances (debits, credits): {named}{more}"))
        count = session.execute(select(func.count()).select_from(journal_transactions).where(
            journal_transactions.c.effective_at_us >= close.starts_at_us,
            journal_transactions.c.effective_at_us < close.ends_at_us)).scalar_one()
        if count != close.transaction_count:
            problems.append(Problem(None, "close_count_mismatch", f"{where}: {close.transaction_count} transactions "
                                    f"recorded, {count} in the journal"))
        head_hash = session.execute(select(journal_transactions.c.hash).where(
            journal_transactions.c.id == close.chain_head_id)).scalar()
        if close.chain_head_id and head_hash != close.chain_head_hash:
            problems.append(Problem(close.chain_head_id, "close_head_mismatch",
                                    f"{where}: the recorded journal head is not the journal's transaction"))
        if close.prev_close_hash != prev_hash:
            problems.append(Problem(None, "close_chain_broken", f"{where}: prev_close_hash is not the previous close's hash"))
        program_head = heads.get(close.period)
        if program_head is not None and not program_chain.holds(session, program_head):
            problems.append(Problem(None, "close_program_head_mismatch", f"{where}: the recorded head of the program "
                                                                          "chain is not a row of it with its hash"))
        # The hash covers each account's name: an account the snapshot names and the books do not
        # hold is `verify_references`' to name.
        if all(account_id in names for account_id, _ in stored) and close_hash(
                close.prev_close_hash, close.period, close.transaction_count, close.chain_head_id,
                close.chain_head_hash, stored, names, program_head) != close.close_hash:
            problems.append(Problem(None, "close_hash_mismatch", f"{where}: the close hash does not match its content"))
        prev_hash, prev_end = close.close_hash, close.ends_at_us
    return problems


def _check_close_bounds(close, prev_end: int | None, latest_closed_at_us: int, where: str) -> list[Problem]:
    """A close covers the calendar month it names, starts where the previous close ended, and was
    closed after that month ended and at or before `latest_closed_at_us`."""
    try:
        month = period_bounds_us(parse_period(close.period))
    except InvalidInput:
        month = None
    if (close.starts_at_us, close.ends_at_us) != month:
        return [Problem(None, "close_bounds_altered", f"{where}: it covers [{_instant(close.starts_at_us)}, "
                                                      f"{_instant(close.ends_at_us)}), not the calendar month it names")]
    if prev_end is not None and close.starts_at_us != prev_end:
        return [Problem(None, "close_bounds_altered", f"{where}: it starts at {_instant(close.starts_at_us)}, not where "
                                                      f"the previous close ended, {_instant(prev_end)}")]
    if close.closed_at_us < close.ends_at_us:  # no hash covers it; migration 0034 holds it for new closes
        return [Problem(None, "close_time_altered", f"{where}: closed at {_instant(close.closed_at_us)}, before the "
                                                    f"period ended at {_instant(close.ends_at_us)}")]
    if close.closed_at_us > latest_closed_at_us:
        return [Problem(None, "close_time_altered", f"{where}: closed at {_instant(close.closed_at_us)}, later than "
                                                    f"the database's clock allows now ({_instant(latest_closed_at_us)})")]
    return []


def verify_statement_lines(session: Session) -> list[Problem]:
    """The statement documents the closes stored against the lines the journal gives for each closed
    period, line for line: a line the journal gives that its document does not hold, and a stored
    line the journal does not give (an altered line is both); a document that is not a JSON array
    of lines; likewise the lines as the closes wrote them for the API (statement_bodies.py), each
    body against the journal's lines written as the API writes them; then documents and bodies of
    a period that is not closed."""
    from ledger.periods import list_periods  # periods builds on balances, which verify checks

    closes = [(close.period, close.starts_at_us, close.ends_at_us) for close in list_periods(session)]
    problems = [Problem(d.transaction_id, "statement_line_altered",
                        f"period {d.period}: partner {d.partner_id}'s {d.currency} "
                        + _STATEMENT_DIFFERENCE[d.side].format(transaction=d.transaction_id))
                for d in statement_lines.differences(session, closes, limit=STATEMENT_LINES_NAMED,
                                                     also=statement_bodies.ALSO)]
    problems += [Problem(None, "statement_line_altered", f"period {period}: statement {what} are stored, and the "
                                                         "period is not closed")
                 for what, stored in (("documents", statement_lines), ("bodies", statement_bodies))
                 for period in stored.periods_not_closed(session)]
    return problems


_STATEMENT_DIFFERENCE = {
    "journal": "statement line for transaction {transaction} is not stored as the journal gives it",
    "stored": "statement line for transaction {transaction} is stored but not given by the journal",
    "malformed": "statement document is not a non-empty JSON array of statement lines",
    "written": "statement line for transaction {transaction} is not written as the journal gives it",
    "written_totals": "statement totals or sums are not written as the journal's lines give them",
    "written_unlisted": "statement lines are written where the journal gives none",
    "written_malformed": "statement lines as written are not a JSON array of lines",
}


def _line_totals(session: Session) -> dict[tuple[int, str], tuple[int, int, int, int]]:
    """{(account id, currency): (debits, credits, last line id, latest instant)} from every line."""
    j = journal_lines.c
    return {(a, c): (int(d), int(k), last, latest) for a, c, d, k, last, latest in session.execute(
        select(j.account_id, j.currency, func.sum(case((j.side == DEBIT, j.amount_minor), else_=0)),
               func.sum(case((j.side == CREDIT, j.amount_minor), else_=0)), func.max(j.id),
               func.max(j.effective_at_us))
        .group_by(j.account_id, j.currency))}


def verify_totals(session: Session, from_lines: dict[tuple[int, str], tuple[int, int, int, int]]) -> list[Problem]:
    """Every (account, currency)'s running totals against the sums, the last id and the latest
    instant of its lines (`_line_totals`)."""
    t = account_totals.c
    names = dict(session.execute(select(accounts.c.id, accounts.c.name)).all())
    kept = {(a, c): (d, k, last, latest) for a, c, d, k, last, latest in session.execute(
        select(t.account_id, t.currency, t.debit_minor, t.credit_minor, t.last_line_id, t.latest_effective_at_us))}
    return [Problem(None, "totals_mismatch", f"{names.get(account_id, account_id)} {currency}: running totals "
                    f"(debits, credits, last line, latest instant) {kept.get((account_id, currency))}, "
                    f"lines {from_lines.get((account_id, currency))}")
            for account_id, currency in sorted(set(from_lines) | set(kept), key=str)
            if from_lines.get((account_id, currency)) != kept.get((account_id, currency))]


class _NotPieces:
    """The transactions on a partner's pending account that are not a piece's, as verify streams the
    journal, and what their lines leave there. A piece is an accrual with a maturity (every piece
    revenue events post), or a clawback, release or reversal posted against one. The others (a
    manual adjustment, say, and its reversal) are not held, and no hold releases them: they are few."""

    def __init__(self) -> None:
        self.ids: set[int] = set()
        self.pending: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, header, lines: list) -> None:
        kind, ids = header.kind, self.ids
        if kind in EARNING_KINDS:
            if header.matures_at_us is not None and header.accrual_id not in ids:
                return
        elif kind in PIECE_KINDS:
            if header.accrual_id is not None and header.accrual_id not in ids:
                return
        elif kind == "reversal" and header.reverses_id is not None and header.reverses_id not in ids:
            return
        self.leave_out(header.id, lines)

    def leave_out(self, transaction_id: int, lines: list) -> None:
        """A transaction that is not a piece's, or lines whose header is gone (named `orphan_lines`)."""
        for line in lines:
            if line.name.endswith(PENDING_SUFFIX) and isinstance(line.amount_minor, int):
                self.ids.add(transaction_id)
                self.pending[(line.name, line.currency)] += line.amount_minor if line.side == CREDIT \
                    else -line.amount_minor


def verify_holds(session: Session, line_totals: dict[tuple[int, str], tuple[int, int, int, int]],
                 not_pieces: _NotPieces) -> list[Problem]:
    """The queue of holds against the journal. Each queued hold is an earning transaction's, with its
    maturity (`hold_altered`: a maturity moved earlier releases the amount before its time). And
    what the pieces leave on each partner's pending account, per currency (the lines' totals, less
    those of `_NotPieces`), is what its queued pieces still hold (`holds_missing`): every piece with
    something pending is queued until it is released. The queue is the one table rows leave, and
    PostgreSQL's application role may delete from it: a hold deleted behind the application would
    leave its amount pending for ever, never released nor paid. The pieces are replayed for the
    queued invoices only: a hold period's worth of the journal, streamed by invoice and replayed
    `HOLD_INVOICES_PER_READ` invoices at a time, so that memory follows those invoices, not the
    queue (all at once, 531,560 queued holds took 220 MB)."""
    t, h = journal_transactions.c, open_holds.c
    rows = session.execute(select(h.accrual_id, h.matures_at_us, t.kind, t.matures_at_us, t.invoice_id)
                           .join(journal_transactions, t.id == h.accrual_id, isouter=True)
                           .order_by(t.invoice_id, h.accrual_id).execution_options(yield_per=STREAM_CHUNK_ROWS))
    found: list[Problem] = []
    held: dict[tuple[str, str], int] = defaultdict(int)
    queued: set[int] = set()  # the accruals of `invoices` whose holds are queued
    invoices: list[str] = []

    def replay() -> None:
        for pieces in (holds.load_pieces(session, invoices) if invoices else {}).values():
            for piece in pieces:
                if piece.id in queued and not piece.reversed:
                    held[(chart.pending(piece.partner_id), piece.currency)] += piece.pending_minor
        queued.clear()
        invoices.clear()

    for accrual_id, queued_us, kind, matures_us, invoice_id in rows:
        if kind not in EARNING_KINDS or matures_us != queued_us:
            found.append(Problem(accrual_id, "hold_altered", f"queued hold of transaction {accrual_id} matures at "
                                 f"{queued_us}, " + ("but the journal holds no such transaction" if kind is None else
                                                     f"but the transaction is {kind!r} maturing at {matures_us}")))
        if kind is None or invoice_id is None:
            continue
        if not invoices or invoices[-1] != invoice_id:
            if len(invoices) == HOLD_INVOICES_PER_READ:
                replay()
            invoices.append(invoice_id)
        queued.add(accrual_id)
    replay()
    found.sort(key=lambda problem: problem.transaction_id)
    names = dict(session.execute(select(accounts.c.id, accounts.c.name)).all())
    pending = {}
    for (account_id, currency), (debits, credits, _, _) in line_totals.items():
        key = (str(names.get(account_id, "")), currency)
        if key[0].endswith(PENDING_SUFFIX):
            pending[key] = credits - debits - not_pieces.pending.get(key, 0)
    found += [Problem(None, "holds_missing", f"{account} {currency}: {pending.get(key, 0)} pending, but the queued "
                      f"holds hold {held.get(key, 0)}: a hold is missing from the queue")
              for key in sorted(set(pending) | set(held)) for account, currency in [key]
              if pending.get(key, 0) != held.get(key, 0)]
    return found


def verify_bounties(session: Session) -> list[Problem]:
    """A customer has one standing CPA bounty at most (`cpa_twice` names each after the first): a
    `cpa` transaction that is no won dispute's reinstatement (`accrual_id` is null) is a bounty, and
    one a reversal names stands no more (a payment dated before the claimant took the claim, or
    finance reversed it; migration 0038)."""
    t = journal_transactions.c
    reversal = journal_transactions.alias("reversal")
    standing = (t.kind == "cpa") & t.accrual_id.is_(None) & ~exists().where(reversal.c.reverses_id == t.id)
    bounties = (select(t.customer_id, t.id).where(standing, t.customer_id.in_(
        select(t.customer_id).where(standing).group_by(t.customer_id).having(func.count() > 1)))
        .order_by(t.customer_id, t.id))
    first: dict[str, int] = {}
    found = []
    for customer_id, transaction_id in session.execute(bounties):
        if customer_id in first:
            found.append(Problem(transaction_id, "cpa_twice", f"a second CPA bounty for customer {customer_id!r}, "
                                                              f"paid first by transaction {first[customer_id]}"))
        else:
            first[customer_id] = transaction_id
    return found


def _lines_grouped(session: Session) -> Iterator[tuple[int, list]]:
    """(transaction_id, [line rows]) in transaction order, streamed."""
    j = journal_lines.c
    rows = session.execute(
        select(j.transaction_id, accounts.c.name, j.currency, j.side, j.amount_minor, j.effective_at_us)
        .join(accounts, accounts.c.id == j.account_id)
        .order_by(j.transaction_id, j.id)
        .execution_options(yield_per=STREAM_CHUNK_ROWS))
    current_id, group = None, []
    for row in rows:
        if row.transaction_id != current_id:
            if current_id is not None:
                yield current_id, group
            current_id, group = row.transaction_id, []
        group.append(row)
    if current_id is not None:
        yield current_id, group


def _check(header, lines: list, expected_id: int, prev_hash: str) -> list[Problem]:
    found: list[Problem] = []
    tid = header.id
    if tid != expected_id:
        found.append(Problem(tid, "sequence_gap", f"expected transaction {expected_id}, found {tid}"))
    if header.prev_hash != prev_hash:
        found.append(Problem(tid, "chain_broken", "prev_hash is not the previous transaction's hash"))
    content = tuple(Line(row.name, row.currency, row.side, row.amount_minor) for row in lines)
    draft = draft_of(header, content)
    # Posted from its stored event (with the event's hash), or not (a release, a reversal, a posting
    # older than the rule, a transaction of no event): see ledger/journal.py. Only the kinds posted
    # from an event try with it first: a release, most of the others naming one, is hashed once.
    matches = (header.event_hash is not None and header.kind in EVENT_POSTING_KINDS
               and request_hash(draft._replace(event_hash=header.event_hash)) == header.request_hash
               or request_hash(draft) == header.request_hash)
    if not matches:
        whose = (f", or revenue event {header.event_id!r} it was posted from,"
                 if header.event_hash is not None and header.kind in EVENT_POSTING_KINDS else "")
        found.append(Problem(tid, "content_altered", f"the stored content{whose} does not match its request hash"))
    recomputed = chain_hash(header.prev_hash, tid, header.recorded_at_us, header.effective_at_us,
                            header.original_effective_at_us, header.request_hash, header.salt)
    if recomputed != header.hash:
        found.append(Problem(tid, "hash_mismatch", "the stored hash does not match the recomputed hash"))
    found.extend(_check_lines(header, lines))
    return found


def _check_lines(header, lines: list) -> list[Problem]:
    found: list[Problem] = []
    tid = header.id
    if len(lines) < 2:
        found.append(Problem(tid, "too_few_lines", f"has {len(lines)} line(s); a transaction needs two or more"))
    net: dict[str, int] = defaultdict(int)
    for row in lines:
        if type(row.amount_minor) is not int or type(row.effective_at_us) is not int:
            found.append(Problem(tid, "not_an_integer", f"a line on {row.name} has amount {row.amount_minor!r} "
                                                        f"at {row.effective_at_us!r}"))
            continue
        if row.amount_minor <= 0:
            found.append(Problem(tid, "amount_not_positive", f"a line on {row.name} has amount {row.amount_minor}"))
        if row.effective_at_us != header.effective_at_us:
            found.append(Problem(tid, "line_instant_mismatch", f"a line on {row.name} has another effective instant"))
        net[row.currency] += row.amount_minor if row.side == DEBIT else -row.amount_minor
    for currency, total in sorted(net.items()):
        if not _known_currency(currency):
            found.append(Problem(tid, "currency_unknown", f"has lines in {currency!r}, not an ISO 4217 currency "
                                                          "with a minor unit"))
        if total != 0:
            found.append(Problem(tid, "unbalanced", f"debits minus credits in {currency} is {total}, not 0"))
    return found


def _known_currency(code) -> bool:
    try:
        currency_exponent(code)  # cached per code by ledger.money
    except InvalidInput:
        return False
    return True
