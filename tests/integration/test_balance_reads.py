"""The one-statement reads (`partner_balances`, `partner_account_sums`, `all_balances`, statement
lines) against the straightforward sums of the journal's lines, on both engines.

The books: five months of invoices for northwind (under globex, which earns overrides) in USD and
in EUR, a refund, adjustments at the last and the first microsecond around each close's end,
January to March closed (releasing matured holds and posting a negative balance's
write-off if any), then a payout run and a refund of a closed month's invoice, posted after the
closes, at the start of the first open period. Every read is compared, for every partner (and one
without accounts), at every bound that matters: none, before the first posting, at each close's
end, a microsecond either side of it, inside each month, far after the last posting, and at
instants Hypothesis draws. The reference is `balances.line_sums`, which reads every line and never
a snapshot; statement lines are compared with the obvious merge of the lines, one row at a time.
"""

from __future__ import annotations

import gc
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from ledger import accounts as chart
from ledger import balances, journal, payouts, periods, revenue, statement_lines
from ledger.balances import all_balances, line_sums, partner_account_sums, partner_balances
from ledger.instants import period_bounds_us
from ledger.reports import liabilities
from ledger.schema import accounts, journal_lines, journal_transactions
from ledger.statements import StatementLine, statement
from tests import program
from tests.integration.conftest import commissions_as_before_0047
from tests.integration.test_query_plans import recorded
from tests.program import at, paid

PARTNERS = ("northwind", "globex", "nobody")
CLOSED = ("2026-01", "2026-02", "2026-03")
MONTHS = ("2025-12", "2026-01", "2026-02", "2026-03", "2026-04", "2026-05", "2026-06")


def _bounds() -> list[int | None]:
    ends = [period_bounds_us(period)[1] for period in CLOSED]
    middles = [at(f"{month}-15") for month in MONTHS]
    return [None, at("2025-12-01"), *[end + delta for end in ends for delta in (-1, 0, 1)], *middles,
            at("2026-02-10"), at("2026-02-10") + 1, at("2030-01-01")]


BOUNDS = _bounds()


def _euro(event_id: str, customer_id: str, invoice_id: str, amount_minor: int, when: str) -> revenue.RevenueEvent:
    return paid(event_id, customer_id, invoice_id, amount_minor, when)._replace(currency="EUR")


@pytest.fixture
def books(database):
    with database.transaction() as session:
        program.seed(session)
    euros = [_euro(f"e-eur-{month}", "initrode", f"inv-eur-{month}", 7_700 + month, f"2026-{month:02d}-12")
             for month in range(1, 6)]
    with database.transaction() as session:
        revenue.ingest(session, program.monthly_events(months=5) + euros)
        for period in CLOSED:  # lines on both sides of each close's end, a microsecond away
            end_us = period_bounds_us(period)[1]
            payouts.adjust(session, "northwind", "pending", 111, "USD", "last instant", effective_at_us=end_us - 1)
            payouts.adjust(session, "northwind", "available", -37, "USD", "first instant", effective_at_us=end_us)
    for period in CLOSED:
        with database.transaction() as session:
            periods.close_period(session, period, now_us=at("2026-07-01"))
    with database.transaction() as session:
        payouts.run_payouts(session, at("2026-04-20"))
    # One transaction in two currencies, a statement line in each: an accrual with no maturity, as
    # one was written before migration 0048 (no kind of the service posts two currencies at once now:
    # an adjustment posts one, migration 0031; a commission one credit, 0048).
    with commissions_as_before_0047(database), database.transaction() as session:
        journal.post(session, [journal.Draft("accrual", at("2026-05-03"), (
            journal.Line(chart.EXPENSE_COMMISSION, "USD", "D", 500),
            journal.Line(chart.pending("northwind"), "USD", "C", 500),
            journal.Line(chart.EXPENSE_COMMISSION, "EUR", "D", 300),
            journal.Line(chart.pending("northwind"), "EUR", "C", 300),
        ), "two-currencies", partner_id="northwind", **program.of_an_event("two-currencies", "northwind"))])
    with database.transaction() as session:  # dated in closed February: posted at April's start
        revenue.ingest(session, [paid("e-late-refund", "globex-corp", "inv-globex-corp-2", 4_000, "2026-02-25",
                                      kind="refund")])
    return database


def summed_lines(session, partner_id: str, before_us: int | None) -> dict[str, tuple[int, int]]:
    """{currency: (pending, available)} from every line of the partner's two accounts."""
    names = {chart.pending(partner_id): 0, chart.available(partner_id): 1}
    ids = dict(session.execute(select(accounts.c.id, accounts.c.name).where(accounts.c.name.in_(list(names)))).all())
    result: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (account_id, currency), (debits, credits) in line_sums(session, list(ids), None, before_us).items():
        result[currency][names[ids[account_id]]] += credits - debits
    return {currency: (pending, available) for currency, (pending, available) in result.items()}


def every_account_from_lines(session, before_us: int | None) -> dict[tuple[str, str], tuple[int, int]]:
    names = dict(session.execute(select(accounts.c.id, accounts.c.name)).all())
    return {(names[a], c): sums for (a, c), sums in line_sums(session, None, None, before_us).items()}


def check_bound(session, before_us: int | None) -> None:
    for partner_id in PARTNERS:
        assert partner_balances(session, partner_id, before_us=before_us) == summed_lines(
            session, partner_id, before_us), (partner_id, before_us)
    everything = every_account_from_lines(session, before_us)
    assert all_balances(session, before_us=before_us) == everything, before_us
    partner_ids = dict(session.execute(select(accounts.c.name, accounts.c.partner_id)).all())
    assert partner_account_sums(session, before_us=before_us) == {
        (partner_ids[name], name, currency): sums for (name, currency), sums in everything.items()
        if partner_ids[name] is not None}, before_us
    rows, _ = liabilities(session, before_us=before_us)
    assert {(row.partner_id, row.currency): (row.pending_minor, row.available_minor) for row in rows} == {
        (partner_id, currency): amounts for partner_id in PARTNERS
        for currency, amounts in summed_lines(session, partner_id, before_us).items()}, before_us


def test_the_books_hold_what_the_comparisons_need(books):
    with books.reader() as session:
        found = partner_balances(session, "northwind")
        late = session.execute(select(journal_transactions.c.effective_at_us)
                               .where(journal_transactions.c.original_effective_at_us.is_not(None))).scalars().all()
        kinds = set(session.execute(select(journal_transactions.c.kind)).scalars())
    assert set(found) == {"EUR", "USD"}
    assert late and all(instant >= period_bounds_us("2026-04")[0] for instant in late)
    assert {"accrual", "override", "clawback", "release", "payout", "adjustment"} <= kinds


def test_balances_equal_the_sums_of_the_lines_at_every_boundary(books):
    with books.reader() as session:
        for before_us in BOUNDS:
            check_bound(session, before_us)


@pytest.mark.parametrize("way", [balances.FORWARD, balances.FROM_CLOSE, balances.FROM_TOTALS])
def test_each_way_of_reading_a_bound_gives_the_sums_of_the_lines(books, monkeypatch, way):
    # The nearer end is a matter of speed: each way is read here wherever it can be (from a close
    # only when one ends after the bound), at every bound, and must give the lines' sums.
    taken = []

    def forced(before_us, latest_us, since_us, following_us):
        ways = balances._ways(before_us, latest_us, since_us, following_us)
        chosen = way if way in ways else balances.FORWARD
        taken.append(chosen)
        return chosen, ways[chosen][1]

    monkeypatch.setattr(balances, "_nearer_end", forced)
    with books.reader() as session:
        for before_us in BOUNDS:
            check_bound(session, before_us)
    assert taken.count(way) >= 10, taken


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(before_us=st.one_of(st.none(), st.sampled_from([b for b in BOUNDS if b is not None]),
                           st.integers(min_value=at("2025-12-25"), max_value=at("2026-07-05"))))
def test_balances_equal_the_sums_of_the_lines_at_any_instant(books, before_us):
    with books.reader() as session:  # the books are only read: one database serves every example
        check_bound(session, before_us)


def merged_lines(session, partner_id: str, period: str) -> dict[str, list[StatementLine]]:
    """The period's lines of the partner's accounts, merged per transaction one row at a time."""
    start_us, end_us = period_bounds_us(period)
    t, j, a = journal_transactions.c, journal_lines.c, accounts.c
    rows = session.execute(
        select(t.id, t.effective_at_us, t.original_effective_at_us, t.kind, t.customer_id, t.invoice_id, t.event_id,
               a.name, j.currency, j.side, j.amount_minor)
        .join_from(journal_lines, journal_transactions, t.id == j.transaction_id)
        .join(accounts, a.id == j.account_id)
        .where(a.name.in_([chart.pending(partner_id), chart.available(partner_id)]),
               j.effective_at_us >= start_us, j.effective_at_us < end_us)
        .order_by(j.effective_at_us, t.id, j.id))
    merged: dict[tuple[int, str], StatementLine] = {}  # one line per transaction and currency
    for row in rows:
        signed = row.amount_minor if row.side == "C" else -row.amount_minor
        line = merged.get((row.id, row.currency)) or StatementLine(*row[:7], 0, 0)
        if row.name == chart.pending(partner_id):
            line = line._replace(pending_minor=line.pending_minor + signed)
        else:
            line = line._replace(available_minor=line.available_minor + signed)
        merged[(row.id, row.currency)] = line
    by_currency: dict[str, list[StatementLine]] = defaultdict(list)
    for (_, currency), line in merged.items():
        by_currency[currency].append(line)
    return by_currency


def test_statements_list_the_merged_lines_and_open_with_the_sums_of_all_earlier_lines(books):
    with books.reader() as session:
        for partner_id in PARTNERS:
            for period in MONTHS:
                found = statement(session, partner_id, period)
                expected_lines = merged_lines(session, partner_id, period)
                opening = summed_lines(session, partner_id, period_bounds_us(period)[0])
                assert [section.currency for section in found.currencies] == sorted(set(opening) | set(expected_lines))
                for section in found.currencies:
                    assert list(section.lines) == expected_lines.get(section.currency, []), (partner_id, period)
                    assert all(type(line) is StatementLine and type(line.pending_minor) is int
                               and type(line.available_minor) is int for line in section.lines)
                    assert section.opening == opening.get(section.currency, (0, 0)), (partner_id, period)
                    closing = summed_lines(session, partner_id, period_bounds_us(period)[1])
                    assert section.closing == closing.get(section.currency, (0, 0)), (partner_id, period)


def test_a_closed_months_lines_are_stored_by_its_close_as_the_journal_gives_them(books):
    # April holds the late refund (posted at its start, dated in February) and the payout run, May a
    # transaction in two currencies: closed here, their documents carry both instants and both currencies.
    for period in ("2026-04", "2026-05"):
        with books.transaction() as session:
            periods.close_period(session, period, now_us=at("2026-07-01"))
    compared = set()
    with books.reader() as session:
        for partner_id in PARTNERS:
            for period in MONTHS:
                start_us, end_us = period_bounds_us(period)
                kept = statement_lines.stored(session, partner_id, period)
                if period <= "2026-05":
                    assert kept == statement_lines.from_journal(session, partner_id, start_us, end_us) == dict(
                        merged_lines(session, partner_id, period)), (partner_id, period)
                else:
                    assert kept == {}, period
                compared |= {(line.kind, currency, line.original_effective_at_us is not None)
                             for currency, lines in kept.items() for line in lines}
        two_currencies = session.execute(select(journal_transactions.c.id).where(
            journal_transactions.c.idempotency_key == "two-currencies")).scalar_one()
        # The books are whole but for the accrual written as before migration 0048, which verify names.
        found = program.verified(session)
        assert {(problem.transaction_id, problem.code) for problem in found} == {(two_currencies, "earning_misposted")}
    assert {("accrual", "USD", False), ("accrual", "EUR", False), ("release", "USD", False), ("payout", "USD", False),
            ("clawback", "USD", True), ("adjustment", "USD", False)} <= compared, compared


class _Decoder:
    """Stands in for a stored document's decoder: records whether the collector ran meanwhile."""

    def __init__(self, fails: bool) -> None:
        self.fails, self.collecting = fails, []

    def decode(self, text):
        self.collecting.append(gc.isenabled())
        if self.fails:
            raise ValueError("the decoder failed")
        return _DECODER.decode(text)


_DECODER = statement_lines._DOCUMENT_LINES


@pytest.mark.parametrize("fails", [False, True], ids=["decoded", "decoder failed"])
@pytest.mark.parametrize("enabled", [True, False], ids=["collector on", "collector off"])
def test_a_stored_document_is_decoded_with_the_collector_paused_and_left_as_it_was(books, monkeypatch, enabled, fails):
    with books.transaction() as session:
        periods.close_period(session, "2026-04", now_us=at("2026-07-01"))
    decoder = _Decoder(fails)
    monkeypatch.setattr(statement_lines, "_DOCUMENT_LINES", decoder)
    (gc.enable if enabled else gc.disable)()
    try:
        with books.reader() as session:
            if fails:
                with pytest.raises(ValueError, match="the decoder failed"):
                    statement_lines.stored(session, "northwind", "2026-04")
            else:
                assert statement_lines.stored(session, "northwind", "2026-04")["USD"]
        assert set(decoder.collecting) == {False} and gc.isenabled() is enabled
    finally:
        gc.enable()


def test_a_transaction_in_two_currencies_is_a_statement_line_in_each(books):
    with books.reader() as session:
        found = statement(session, "northwind", "2026-05")
    two = {section.currency: [(line.pending_minor, line.available_minor) for line in section.lines
                              if line.kind == "accrual" and line.effective_at_us == at("2026-05-03")]
           for section in found.currencies}
    assert two == {"USD": [(500, 0)], "EUR": [(300, 0)]}


def test_a_payout_run_reads_the_available_balances_from_the_running_totals(books):
    """After every line: no sum over the lines, and each payout leaves its available balance at zero."""
    when = journal.now_us()  # after every line of these books, and not in the future (which a run refuses)
    with recorded(books.engine) as statements, books.transaction() as session:
        run = payouts.run_payouts(session, when)
    assert run.payouts and not run.replayed
    summing_lines = [sql for sql, _ in statements if "journal_lines" in sql and "sum(" in sql.lower()]
    assert any("account_totals" in sql for sql, _ in statements) and not summing_lines, summing_lines
    with books.reader() as session:
        for payout in run.payouts:
            assert summed_lines(session, payout.partner_id, when + 1)[payout.currency][1] == 0, payout
