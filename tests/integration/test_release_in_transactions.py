"""Releasing holds a few to a transaction (`holds.release_in_transactions`, what the scheduler's jobs
and `revshare release-holds` do) gives the books of one transaction: when each transaction commits
on its own, when a posting comes between two, and when a crash stops it and a rerun goes on. Both
engines, each against a twin database that releases everything in one transaction."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from sqlalchemy import func, select

from ledger import holds, reversals, revenue
from ledger.db import Database
from ledger.errors import InvalidInput
from ledger.schema import journal_transactions, open_holds
from ledger.verify import verify
from tests.cli.test_cli import books
from tests.conftest import new_pg_url, new_sqlite_url
from tests.program import at, monthly_events, paid, seed

CUSTOMERS = [f"cust-{n}" for n in range(5)]
RELEASE_AT = at("2026-05-15")  # every hold of January to April has matured: 20 invoices, 2 pieces each
HOLDS = 40
LATE_REFUND = paid("e-refund-late", "cust-3", "inv-cust-3-2", 2_000, "2026-04-20", kind="refund")


class Crash(Exception):
    pass


def build_twins(request, sqlite_template, tmp_path, build) -> list[Database]:
    """Two databases of the request's engine, each built by `build(session)`."""
    if request.param == "sqlite":
        urls = [new_sqlite_url(sqlite_template, tmp_path) for _ in range(2)]
    else:
        urls = [new_pg_url(request.getfixturevalue("pg_cluster")) for _ in range(2)]
    databases = [Database(url) for url in urls]
    for database in databases:
        with database.transaction() as session:
            build(session)
    return databases


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def twins(request, sqlite_template, tmp_path):
    """Two databases with the same program and events, every hold still queued."""
    def build(session):
        seed(session, customer_ids=CUSTOMERS)
        revenue.ingest(session, monthly_events(customer_ids=CUSTOMERS))
    databases = build_twins(request, sqlite_template, tmp_path, build)
    assert queued(databases[0]) == HOLDS
    yield databases
    for database in databases:
        database.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shuffled_twins(request, sqlite_template, tmp_path):
    """The same books queued out of maturity order (March and April's invoices first, so January's
    pieces have the higher ids), and January's first accrual reversed: its hold ends with no release."""
    events = monthly_events(customer_ids=CUSTOMERS)

    def build(session):
        seed(session, customer_ids=CUSTOMERS)
        revenue.ingest(session, [e for e in events if e.occurred_at_us >= at("2026-03-01")])
        revenue.ingest(session, [e for e in events if e.occurred_at_us < at("2026-03-01")])
        january = session.execute(select(func.min(open_holds.c.matures_at_us))).scalar_one()
        first = session.execute(select(func.min(open_holds.c.accrual_id))
                                .where(open_holds.c.matures_at_us == january)).scalar_one()
        reversals.reverse(session, first, reason="entered twice")
    databases = build_twins(request, sqlite_template, tmp_path, build)
    yield databases
    for database in databases:
        database.dispose()


def queued(database: Database) -> int:
    with database.reader() as session:
        return session.execute(select(func.count()).select_from(open_holds)).scalar_one()


def releases(database: Database) -> list[tuple[int, int]]:
    """(effective instant, accrual) of each release, in the journal's order."""
    t = journal_transactions.c
    with database.reader() as session:
        return session.execute(select(t.effective_at_us, t.accrual_id).where(t.kind == "release")
                               .order_by(t.id)).all()


def in_one_transaction(database: Database) -> int:
    with database.transaction() as session:
        return holds.release_matured(session, RELEASE_AT)


def counted(database: Database, taken: list[int], *, crash_at: int | None = None, between=None):
    """`database.transaction`, recording how many holds each transaction took from the queue; the
    transaction numbered `crash_at` (from 0) raises before its commit, and `between(n)` runs after
    the commit of transaction n."""
    numbers = itertools.count()

    @contextlib.contextmanager
    def transaction():
        number = next(numbers)
        with database.transaction() as session:
            before = session.execute(select(func.count()).select_from(open_holds)).scalar_one()
            yield session
            taken.append(before - session.execute(select(func.count()).select_from(open_holds)).scalar_one())
            if number == crash_at:
                raise Crash(number)
        if between is not None:
            between(number)
    return transaction


def test_a_few_holds_to_a_transaction_give_the_books_of_one_transaction(twins):
    whole, chunked = twins
    taken: list[int] = []
    assert holds.release_in_transactions(counted(chunked, taken), RELEASE_AT, holds_per_transaction=7) == HOLDS
    assert in_one_transaction(whole) == HOLDS
    # 40 holds, 7 to a transaction: five of 7 and one of 5, which shows that none is left
    assert taken == [7, 7, 7, 7, 7, 5] and queued(chunked) == queued(whole) == 0
    assert books(chunked) == books(whole)
    assert releases(chunked) == releases(whole) == sorted(releases(whole))  # oldest maturity first
    for database in twins:
        with database.reader() as session:
            assert verify(session).ok


def released_a_chunk_at_a_time(monkeypatch, whole: Database, chunked: Database) -> None:
    """`chunked` released in one transaction 3 holds at a time, `whole` as all the holds in one chunk:
    the same releases in the same order, every hold taken."""
    expected, taken, queued_of = in_one_transaction(whole), [], holds._queued

    def recording(session, conditions, after, limit):
        rows, pieces = queued_of(session, conditions, after, limit)
        taken.append(len(rows))
        return rows, pieces

    monkeypatch.setattr(holds, "_queued", recording)
    monkeypatch.setattr(holds, "RELEASE_CHUNK_HOLDS", 3)
    assert in_one_transaction(chunked) == expected
    assert taken == [3] * 13 + [1] and queued(chunked) == queued(whole) == 0  # 40 holds
    assert books(chunked) == books(whole)
    assert releases(chunked) == releases(whole) == sorted(releases(whole))


def test_one_transaction_releases_a_chunk_of_holds_at_a_time_as_all_at_once(twins, monkeypatch):
    released_a_chunk_at_a_time(monkeypatch, *twins)


def test_one_transaction_releases_holds_queued_out_of_order_a_chunk_at_a_time_as_all_at_once(shuffled_twins,
                                                                                            monkeypatch):
    released_a_chunk_at_a_time(monkeypatch, *shuffled_twins)


def test_each_release_a_few_to_a_transaction_names_the_payment_that_accrued_its_piece(twins):
    chunked = twins[1]
    assert holds.release_in_transactions(chunked.transaction, RELEASE_AT, holds_per_transaction=7) == HOLDS
    release, accrual = journal_transactions.alias("release"), journal_transactions.alias("accrual")
    with chunked.reader() as session:
        named = session.execute(select(release.c.event_id, accrual.c.event_id, accrual.c.invoice_id)
                                .join(accrual, accrual.c.id == release.c.accrual_id)
                                .where(release.c.kind == "release")).all()
    assert len(named) == HOLDS
    assert all(event_id == accrued_by == f"e-{invoice_id}" for event_id, accrued_by, invoice_id in named)


def test_holds_queued_out_of_order_are_taken_oldest_maturity_first_and_one_ending_unreleased_does_not_stop(
        shuffled_twins):
    whole, chunked = shuffled_twins
    with chunked.reader() as session:  # a reversed accrual still queued holds nothing pending
        assert verify(session).ok
    taken: list[int] = []
    released = holds.release_in_transactions(counted(chunked, taken), RELEASE_AT, holds_per_transaction=3)
    assert released == in_one_transaction(whole) == HOLDS - 1  # the reversed accrual's hold ends unreleased
    assert sum(taken) == HOLDS and taken[-1] < 3 and queued(chunked) == 0
    assert releases(chunked) == releases(whole) == sorted(releases(chunked))  # by maturity, not by accrual id
    assert books(chunked) == books(whole)


def test_a_hold_left_queued_after_its_release_is_taken_off_and_does_not_hold_up_the_run(twins):
    database = twins[0]
    assert in_one_transaction(database) == HOLDS
    with database.engine.begin() as connection:  # queued again, as the database allows for an accrual
        t = journal_transactions.c
        for accrual_id, matures_us in connection.execute(select(t.id, t.matures_at_us).where(
                t.kind == "accrual").order_by(t.id).limit(3)).all():
            connection.execute(open_holds.insert().values(accrual_id=accrual_id, matures_at_us=matures_us))
    taken: list[int] = []
    assert holds.release_in_transactions(counted(database, taken), RELEASE_AT, holds_per_transaction=2) == 0
    assert taken == [2, 1] and queued(database) == 0
    with database.reader() as session:
        assert verify(session).ok


def test_a_posting_between_two_transactions_finds_its_holds_released_or_releases_them(twins):
    whole, chunked = twins

    def refund_after_the_first(number: int) -> None:
        if number == 0:  # January's pieces are being released; February's of inv-cust-3-2 are still queued
            with chunked.transaction() as session:
                [outcome] = revenue.ingest(session, [LATE_REFUND])
            assert outcome.status == "posted"

    taken: list[int] = []
    released = holds.release_in_transactions(counted(chunked, taken, between=refund_after_the_first), RELEASE_AT,
                                             holds_per_transaction=4)
    in_one_transaction(whole)
    with whole.transaction() as session:
        revenue.ingest(session, [LATE_REFUND])
    # the refund released the invoice's 2 pieces itself before clawing back from available
    assert released == HOLDS - 2 and sum(taken) == HOLDS - 2
    assert books(chunked) == books(whole)
    with chunked.reader() as session:
        assert verify(session).ok


@pytest.mark.parametrize("crash_at", [0, 3])
def test_a_crash_leaves_the_rest_queued_and_a_rerun_gives_the_books_of_one_clean_run(twins, crash_at):
    whole, chunked = twins
    taken: list[int] = []
    with pytest.raises(Crash):
        holds.release_in_transactions(counted(chunked, taken, crash_at=crash_at), RELEASE_AT,
                                      holds_per_transaction=5)
    # the transactions before the crash stand; the crashed one changed nothing
    assert len(releases(chunked)) == 5 * crash_at and queued(chunked) == HOLDS - 5 * crash_at
    assert holds.release_in_transactions(chunked.transaction, RELEASE_AT, holds_per_transaction=5) \
        == HOLDS - 5 * crash_at
    in_one_transaction(whole)
    assert books(chunked) == books(whole) and releases(chunked) == releases(whole)
    with chunked.reader() as session:
        assert verify(session).ok


def test_an_instant_in_the_future_is_refused_before_any_transaction_commits(twins):
    chunked = twins[1]
    with pytest.raises(InvalidInput, match="in the future") as refused:
        holds.release_in_transactions(chunked.transaction, at("2100-01-01"), holds_per_transaction=5)
    assert list(refused.value.fields) == ["at"]
    assert queued(chunked) == HOLDS and releases(chunked) == []
