"""One invoice's refunds, chargebacks and won disputes, dated at random and delivered in a random
order, with release jobs coming by in between: whatever the order, no partner balance goes below
zero at any instant (there are no payouts here), no piece is clawed beyond its amount, nothing is
left pending once everything has matured, and the books verify.

Each event is accepted or refused as the rules decide (limits as of every instant from its own on).
The first property is about instants: what a late event posts, and when. The second holds what
each partner is owed from the latest event on to what the same events give in time order.
"""

from hypothesis import example, given
from hypothesis import strategies as st

from ledger import holds
from ledger.db import Database
from ledger.instants import format_instant
from ledger.revenue import Outcome
from tests.conftest import database_property, new_sqlite_url
from tests.scenarios.books import Books, at

DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600 * 1_000_000
PAID_AT_US = at("2026-01-10")
AMOUNTS = ("100.00", "250.00", "333.33", "500.00", "1000.00", "0.01", "0.03")

# (type, amount, days after payment, release job before delivering it?) of each event, and the
# order of delivery.
events = st.lists(st.tuples(st.sampled_from(["refund", "chargeback", "chargeback", "chargeback_reversed"]),
                            st.sampled_from(AMOUNTS), st.integers(1, 70), st.booleans()), min_size=2, max_size=6)
histories = events.flatmap(lambda drawn: st.tuples(st.just(drawn), st.permutations(range(len(drawn)))))


def books_for(database: Database, hold_days: int, paid: str = "1000.00") -> Books:
    books = Books(database)
    books.plan("distributor", "0", override=("0.05", "revenue"), hold_days=hold_days)
    books.plan("msp", "0.20", hold_days=hold_days, cpa={"USD": "50.00"})
    books.partner("dist", "distributor", type="distributor")
    books.partner("northwind", "msp", parent="dist")
    books.attribute("acme", "northwind", "2026-01-01")
    books.paid("acme", "inv-1", paid, format_instant(PAID_AT_US))
    return books


@database_property(75, soak=1_500)
@given(history=histories, hold_days=st.sampled_from([0, 10, 30]))
def test_late_refunds_and_disputes_never_take_a_balance_below_zero_at_any_instant(
        history, hold_days, sqlite_template, tmp_path_factory):
    drawn, order = history
    database = Database(new_sqlite_url(sqlite_template, tmp_path_factory.mktemp("late")))
    try:
        books = books_for(database, hold_days)
        for number in order:
            type_, amount, days, release_first = drawn[number]
            if release_first:
                books.release(format_instant(PAID_AT_US + (days + hold_days) * DAY_US))
            event = books.event(type_, "acme", "inv-1", amount, format_instant(PAID_AT_US + days * DAY_US),
                                event_id=f"e{number}")
            [result] = books.ingest(event)  # accepted or refused, never an exception
            # Re-sent, the event replays: accepted again as a replay, or refused again; nothing posted.
            [(head,)] = books.sql("SELECT count(*) FROM journal_transactions")
            [again] = books.ingest(event)
            assert type(again) is type(result) and (not isinstance(again, Outcome) or again.replayed)
            assert books.sql("SELECT count(*) FROM journal_transactions")[0][0] == head
        books.release("2026-11-01")
        instants = sorted({instant for instant, in books.sql("SELECT DISTINCT effective_at_us FROM journal_lines")})
        for partner_id in ("northwind", "dist"):
            for instant in instants:
                pending, available = books.balance_just_after(partner_id, format_instant(instant))
                assert pending >= 0 and available >= 0, (partner_id, format_instant(instant), pending, available)
            assert books.balance(partner_id)[0] == 0  # everything matured by November 2026 was released
        with database.reader() as session:
            pieces = holds.load_pieces(session, ["inv-1"])["inv-1"]
        assert all(0 <= piece.clawed_minor <= piece.amount_minor for piece in pieces)
        assert books.trial_balance_is_zero() and books.verified()
    finally:
        database.dispose()


# Small invoices too, whose accruals' shares are a few minor units: where rounding caps a clawback.
small_histories = st.lists(
    st.tuples(st.sampled_from(["refund", "chargeback", "chargeback", "chargeback_reversed"]),
              st.sampled_from(["0.01", "0.03", "0.75", "1.00", "100.00", "333.33"]), st.integers(1, 70), st.booleans()),
    min_size=2, max_size=6).flatmap(lambda drawn: st.tuples(st.just(drawn), st.permutations(range(len(drawn)))))


@database_property(50, soak=1_000)
@given(history=st.one_of(histories, small_histories), paid=st.sampled_from(["2.50", "3.33", "1000.00"]),
       hold_days=st.sampled_from([0, 10, 30]))
# A refund delivered after a won dispute dated after it, where time order capped the refund by
# rounding (the accrual's 200.00 clawed 66.67 + 66.67 + 66.66) before the dispute gave back 0.01:
# taking its whole share, the late refund took that 0.01 too.
@example(history=([("refund", "333.33", 1, False), ("chargeback", "333.33", 1, False), ("refund", "333.33", 1, False),
                   ("chargeback_reversed", "0.03", 1, False)], [0, 1, 3, 2]), paid="1000.00", hold_days=0)
def test_late_refunds_and_disputes_end_at_the_totals_of_time_order(history, paid, hold_days, sqlite_template,
                                                                    tmp_path_factory):
    # What each partner is owed (pending and available together) from the latest event's instant on,
    # against the events it accepted delivered again, in time order, to other books. A won dispute
    # delivered after a clawback dated after it, which its absence capped by rounding, left the
    # partner a minor unit more than time order did, for good; so did a refund delivered after a won
    # dispute dated after it, which made the invoice wholly refunded until that dispute.
    drawn, order = history
    instant_of = {number: PAID_AT_US + days * DAY_US + number * HOUR_US for number, (_, _, days, _) in enumerate(drawn)}
    databases = [Database(new_sqlite_url(sqlite_template, tmp_path_factory.mktemp("late"))) for _ in range(2)]
    try:
        late, in_time = (books_for(database, hold_days, paid) for database in databases)
        accepted = []
        for number in order:
            type_, amount, days, release_first = drawn[number]
            if release_first:
                late.release(format_instant(PAID_AT_US + (days + hold_days) * DAY_US))
            event = late.event(type_, "acme", "inv-1", amount, format_instant(instant_of[number]),
                               event_id=f"e{number}")
            if isinstance(late.ingest(event)[0], Outcome):
                accepted.append((number, event))
        for number, event in sorted(accepted, key=lambda item: instant_of[item[0]]):
            assert isinstance(in_time.ingest(event)[0], Outcome), event
        assert late.verified() and in_time.verified()
        latest_us = max((instant_of[number] for number, _ in accepted), default=PAID_AT_US)
        instants = sorted({latest_us} | {instant for books in (late, in_time) for instant, in books.sql(
            "SELECT DISTINCT effective_at_us FROM journal_lines WHERE effective_at_us > :latest", latest=latest_us)})
        for partner_id in ("northwind", "dist"):
            for instant in instants:
                owed = [sum(books.balance_just_after(partner_id, format_instant(instant))) for books in (late, in_time)]
                assert owed[0] == owed[1], (partner_id, format_instant(instant), owed)
    finally:
        for database in databases:
            database.dispose()

