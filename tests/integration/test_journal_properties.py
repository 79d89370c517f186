"""Property: after every step of a random history of postings, replays and reversals, the trial
balance is zero per currency, each balance equals the sum of its lines, and verify() is clean (but for the
events its commissions name, which are never stored)."""

from collections import defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import accounts as chart
from ledger import journal
from ledger.balances import all_balances, debit_minus_credit
from ledger.db import Database
from ledger.errors import Conflict
from ledger.journal import CREDIT, DEBIT, Draft, Line
from tests import program
from tests.conftest import database_property, drop_pg_database, new_pg_url, new_sqlite_url

PARTNERS = ("p1", "p2")
ACCOUNTS = [chart.EXPENSE_COMMISSION, chart.EXPENSE_ADJUSTMENT,
            *(chart.pending(p) for p in PARTNERS), *(chart.available(p) for p in PARTNERS)]

leg_strategy = st.tuples(st.sampled_from(["USD", "JPY", "BHD"]), st.integers(1, 10**12))
# Every kind of the service moves money on the accounts of its kind (migrations 0031, 0047 and 0048):
# an accrual of one to three debits of the commission expense, in the first leg's currency, and one
# credit of their sum to its partner's pending account; an adjustment of one leg between the
# adjustment expense and either account of its partner, either way.
accrual_strategy = st.tuples(st.just("accrual"), st.sampled_from(PARTNERS),
                             st.lists(leg_strategy, min_size=1, max_size=3), st.none())
adjustment_strategy = st.tuples(st.just("adjustment"), st.sampled_from(PARTNERS),
                                st.lists(leg_strategy, min_size=1, max_size=1),
                                st.tuples(st.sampled_from(["pending", "available"]), st.booleans()))
post_op = st.tuples(st.just("post"), st.one_of(accrual_strategy, accrual_strategy, adjustment_strategy),
                    st.integers(0, 10**9))
reverse_op = st.tuples(st.just("reverse"), st.integers(0, 50), st.none())
replay_op = st.tuples(st.just("replay"), st.integers(0, 50), st.none())
history = st.lists(st.one_of(post_op, post_op, reverse_op, replay_op), min_size=1, max_size=12)


def draft_of(step: int, posting, at_us: int) -> Draft:
    kind, partner, legs, adjusted = posting
    if kind == "accrual":  # with no maturity: no hold is queued for it
        currency = legs[0][0]
        lines = [Line(chart.EXPENSE_COMMISSION, currency, DEBIT, amount) for _, amount in legs]
        lines.append(Line(chart.pending(partner), currency, CREDIT, sum(amount for _, amount in legs)))
        return Draft("accrual", at_us, tuple(lines), f"step-{step}", partner_id=partner,
                     **program.of_an_event(f"step-{step}", partner))
    account, to_partner = adjusted
    [(currency, amount)] = legs
    partners = chart.pending(partner) if account == "pending" else chart.available(partner)
    debit, credit = (chart.EXPENSE_ADJUSTMENT, partners) if to_partner else (partners, chart.EXPENSE_ADJUSTMENT)
    return Draft("adjustment", at_us, (Line(debit, currency, DEBIT, amount), Line(credit, currency, CREDIT, amount)),
                 f"step-{step}", partner_id=partner, memo="property")


def run_history(database: Database, operations) -> None:
    expected: dict[tuple[str, str], int] = defaultdict(int)
    posted: list[tuple[int, Draft]] = []
    with database.transaction() as session:  # every posting names a partner of the program (migration 0031)
        program.enrol(session, *PARTNERS)
    for step, (op, arg, at_us) in enumerate(operations):
        with database.transaction() as session:
            if op == "post":
                draft = draft_of(step, arg, at_us)
                [result] = journal.post(session, [draft])
                posted.append((result.id, draft))
                applied = draft
            elif op == "replay" and posted:
                transaction_id, draft = posted[arg % len(posted)]
                assert journal.post(session, [draft]) == [journal.Posted(transaction_id, True)]
                applied = None
            elif op == "reverse" and posted:
                transaction_id, draft = posted[arg % len(posted)]
                try:
                    result = journal.reverse(session, transaction_id, reason="property")
                    applied = None if result.replayed else journal.reversal_draft(session, transaction_id, reason="property")
                except Conflict:
                    assert draft.kind == "reversal"
                    applied = None
                if applied is not None:
                    posted.append((result.id, applied))
            else:
                applied = None
        if applied is not None:
            for line in applied.lines:
                expected[(line.account, line.currency)] += line.amount_minor if line.side == DEBIT else -line.amount_minor
        check_books(database, expected)


def check_books(database: Database, expected: dict[tuple[str, str], int]) -> None:
    with database.reader() as session:
        rows = all_balances(session)
        by_currency: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for (_, currency), (debits, credits) in rows.items():
            by_currency[currency][0] += debits
            by_currency[currency][1] += credits
        assert all(debits == credits for debits, credits in by_currency.values()), by_currency
        balances = debit_minus_credit(session, ACCOUNTS)
        assert {key: value for key, value in balances.items()} == \
            {key: value for key, value in expected.items() if key in balances or value != 0}
        assert program.verified(session) == []


@database_property(40)
@given(operations=history)
def test_random_histories_keep_the_books_balanced_on_sqlite(operations, sqlite_template, tmp_path_factory):
    database = Database(new_sqlite_url(sqlite_template, tmp_path_factory.mktemp("prop")))
    try:
        run_history(database, operations)
    finally:
        database.dispose()


@pytest.mark.postgres
@database_property(12)
@given(operations=history)
def test_random_histories_keep_the_books_balanced_on_postgres(operations, pg_cluster):
    url = new_pg_url(pg_cluster)
    database = Database(url)
    try:
        run_history(database, operations)
    finally:
        database.dispose()
        drop_pg_database(pg_cluster, url)
