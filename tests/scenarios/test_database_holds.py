"""The database holds the partner program's invariants even when Python is bypassed with raw SQL:
a customer's CPA is claimed first once, and taken from its claimant only by a payment dated before
it, once the claimant's bounty is reversed; an invoice is paid once, refunds, chargebacks and won disputes
stay within their invoice at every instant, the hierarchy is at most five deep with consistent
depths, and the program's facts are append-only."""

import contextlib
import itertools
import threading
from typing import Iterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import reversals
from ledger.revenue import ingest
from tests.integration.test_tamper_evidence import behind_the_triggers
from tests.program import at
from tests.scenarios.books import Books
from tests.conftest import examples
from tests.integration.conftest import chain_due, with_status_and_plan

EVENT = ("INSERT INTO revenue_events (id, type, customer_id, invoice_id, currency, amount_minor, occurred_at_us, "
         "recorded_at_us, request_hash, status, first_eligible_customer_id) "
         "VALUES (:id, :type, 'acme', :invoice, 'USD', 100, 1, 1, :hash, 'no_commission', :claim)")
PARTNER = ("INSERT INTO partners (id, name, type, parent_id, parent_depth, depth, created_at_us) "
           "VALUES (:id, :id, 'affiliate', :parent, :parent_depth, :depth, 1)")


@pytest.fixture
def books(database) -> Books:
    books = Books(database)
    books.plan("msp", "0.20")
    books.partner("level1", "msp")
    for level in range(2, 6):
        books.partner(f"level{level}", "msp", parent=f"level{level - 1}")
    books.attribute("acme", "level5", "2026-01-01")
    books.paid("acme", "inv-1", "100.00", "2026-01-10")
    return books


def refused(books: Books, statement: str, match: str, **params) -> None:
    with pytest.raises(sa.exc.DBAPIError, match=match), books.database.engine.begin() as connection:
        written(connection, statement, params)


def accepted(books: Books, statement: str, **params) -> None:
    with books.database.engine.begin() as connection:
        written(connection, statement, params)
        chain_due(connection)  # a fact written past Python, chained as the service chains its own


def written(connection, statement: str, params: dict) -> None:
    """The row, and a partner's first status and plan with it (so that the rule a test names is the
    only one it can meet)."""
    connection.execute(sa.text(statement), params)
    if statement == PARTNER:
        with_status_and_plan(connection, params["id"], "msp")


def test_the_customers_cpa_claim_is_made_by_the_first_eligible_invoice(books):
    assert books.sql("SELECT first_eligible_customer_id FROM revenue_events")[0][0] == "acme"


def test_a_second_row_claiming_the_same_customers_cpa_is_refused(books):
    refused(books, EVENT, "first_eligible_customer_id|UNIQUE|unique",
            id="raw-1", type="invoice_paid", invoice="inv-2", hash="h" * 64, claim="acme")
    accepted(books, EVENT, id="raw-2", type="invoice_paid", invoice="inv-2", hash="h" * 64, claim=None)


PAYMENT = ("INSERT INTO revenue_events (id, type, customer_id, invoice_id, currency, amount_minor, occurred_at_us, "
           "recorded_at_us, request_hash, status, first_eligible_customer_id) VALUES (:id, 'invoice_paid', :customer, "
           ":id, 'USD', 100, :occurred, :recorded, :hash, :status, NULL)")
CLAIM_TAKEN = ("INSERT INTO cpa_claims_taken (event_id, customer_id, from_event_id)"
               " VALUES (:taker, :customer, :claimant)")


@pytest.fixture
def claimed(database) -> Books:
    """acme's CPA claimed by a payment on 2026-02-05, which earned a bounty; payments of acme on
    2026-01-01, 2026-01-05 and 2026-03-05 and of globex on 2026-01-05 written by raw SQL, none claiming."""
    books = Books(database)
    books.plan("hybrid", "0.10", cpa={"USD": "150.00"}, duration_months=None)
    books.partner("northwind", "hybrid")
    books.attribute("acme", "northwind", "2026-01-01")
    books.paid("acme", "inv-feb", "500.00", "2026-02-05", event_id="feb")
    for event_id, customer, day in (("jan-1", "acme", "2026-01-01"), ("jan-5", "acme", "2026-01-05"),
                                    ("mar", "acme", "2026-03-05"), ("globex-jan", "globex", "2026-01-05")):
        accepted(books, PAYMENT, id=event_id, customer=customer, occurred=at(day), recorded=at("2026-03-10"),
                 hash="h" * 64, status="no_commission" if customer == "acme" else "unattributed")
    return books


def test_a_claim_is_taken_by_a_payment_of_its_customer_dated_before_the_claimant_once_its_bounty_is_reversed(
        claimed):
    def take(taker: str, claimant: str, customer: str = "acme") -> dict:
        return {"taker": taker, "claimant": claimant, "customer": customer}
    refused(claimed, CLAIM_TAKEN, "a claim is taken by a payment of its customer that is no first claim",
            **take("globex-jan", "feb"))
    refused(claimed, CLAIM_TAKEN, "a claim is taken from the claimant of its customer", **take("jan-5", "mar"))
    refused(claimed, CLAIM_TAKEN, "a claim is taken by a payment dated before its claimant", **take("mar", "feb"))
    refused(claimed, CLAIM_TAKEN, "a claim is taken once the CPA bounty of its claimant is reversed",
            **take("jan-5", "feb"))
    [(bounty,)] = claimed.sql("SELECT id FROM journal_transactions WHERE kind = 'cpa'")
    with claimed.database.transaction() as session:
        reversals.reverse(session, bounty, reason="taken by jan-5")
    accepted(claimed, CLAIM_TAKEN, **take("jan-5", "feb"))
    refused(claimed, CLAIM_TAKEN, "from_event_id", **take("jan-1", "feb"))  # taken once
    refused(claimed, CLAIM_TAKEN, "a claim is taken by a payment dated before its claimant", **take("mar", "jan-5"))
    accepted(claimed, CLAIM_TAKEN, **take("jan-1", "jan-5"))  # jan-5 earned no bounty
    for statement in ("UPDATE cpa_claims_taken SET from_event_id = 'mar'", "DELETE FROM cpa_claims_taken",
                      "UPDATE rules_since SET since_us = 0", "DELETE FROM rules_since"):
        refused(claimed, statement, "append-only")
    assert claimed.sql("SELECT event_id, from_event_id FROM cpa_claims_taken ORDER BY event_id") == [
        ("jan-1", "jan-5"), ("jan-5", "feb")]


def test_a_second_invoice_paid_row_for_the_same_invoice_is_refused(books):
    refused(books, EVENT, "uq_revenue_events_paid_invoice|UNIQUE|unique",
            id="raw-1", type="invoice_paid", invoice="inv-1", hash="h" * 64, claim=None)
    accepted(books, EVENT, id="raw-2", type="invoice_paid", invoice="inv-2", hash="h" * 64, claim=None)


LATER = ("INSERT INTO revenue_events (id, type, customer_id, invoice_id, currency, amount_minor, occurred_at_us, "
         "recorded_at_us, request_hash, status) VALUES (:id, :type, :customer, :invoice, :currency, :amount, :at, :at, "
         "'" + "h" * 64 + "', 'no_commission')")
NOT_PAID = "needs its invoice paid by the same customer, in the same currency, at or before its instant"
EXCEEDED = "refunds and chargebacks, less won disputes, would exceed the paid amount of the invoice"
OVER_REVERSED = "won disputes would exceed the chargebacks of the invoice"


def raw(type: str, amount: int, day: str, *, event_id: str = "raw", customer: str = "acme", invoice: str = "inv-1",
        currency: str = "USD") -> dict:
    return dict(id=event_id, type=type, customer=customer, invoice=invoice, currency=currency, amount=amount,
                at=at(day))


@pytest.mark.parametrize("event", [
    raw("refund", 100, "2026-01-20", invoice="inv-unknown"),
    raw("refund", 100, "2026-01-20", customer="globex"),
    raw("chargeback", 100, "2026-01-20", currency="EUR"),
    raw("chargeback_reversed", 100, "2026-01-09"),
], ids=["unknown-invoice", "other-customer", "other-currency", "before-the-payment"])
def test_an_event_undoing_no_payment_of_its_invoice_before_it_is_refused(books, event):
    refused(books, LATER, NOT_PAID, **event)


def test_an_event_at_the_payments_own_instant_is_accepted(books):
    accepted(books, LATER, **raw("chargeback", 100, "2026-01-10", event_id="c1"))
    accepted(books, LATER, **raw("chargeback_reversed", 100, "2026-01-10", event_id="w1"))
    refused(books, LATER, NOT_PAID, **dict(raw("refund", 100, "2026-01-10", event_id="r1"), at=at("2026-01-10") - 1))


def test_refunds_and_chargebacks_are_refused_past_the_paid_amount_and_accepted_up_to_it(books):
    accepted(books, LATER, **raw("refund", 6_000, "2026-01-20", event_id="r1"))
    refused(books, LATER, EXCEEDED, **raw("chargeback", 4_001, "2026-01-21", event_id="c1"))
    accepted(books, LATER, **raw("chargeback", 4_000, "2026-01-21", event_id="c1"))
    refused(books, LATER, EXCEEDED, **raw("refund", 1, "2026-02-01", event_id="r2"))


def test_each_invoice_is_held_to_its_own_paid_amount(books):
    books.paid("acme", "inv-2", "50.00", "2026-01-11")  # inv-1 was paid 100.00
    refused(books, LATER, EXCEEDED, **raw("refund", 5_001, "2026-01-20", event_id="r1", invoice="inv-2"))
    accepted(books, LATER, **raw("refund", 5_000, "2026-01-20", event_id="r1", invoice="inv-2"))


def test_won_disputes_are_refused_past_the_chargebacks(books):
    refused(books, LATER, OVER_REVERSED, **raw("chargeback_reversed", 1, "2026-01-20"))
    accepted(books, LATER, **raw("chargeback", 3_000, "2026-01-20", event_id="c1"))
    refused(books, LATER, OVER_REVERSED, **raw("chargeback_reversed", 3_001, "2026-01-25", event_id="w1"))
    accepted(books, LATER, **raw("chargeback_reversed", 3_000, "2026-01-25", event_id="w1"))


def test_the_limits_hold_at_every_instant_not_only_in_total(books):
    # Wholly charged back from the 20th, the dispute won on the 30th: a refund dated between the two
    # fits the totals but not the invoice between them; dated from the 30th, it fits.
    accepted(books, LATER, **raw("chargeback", 10_000, "2026-01-20", event_id="c1"))
    accepted(books, LATER, **raw("chargeback_reversed", 10_000, "2026-01-30", event_id="w1"))
    refused(books, LATER, EXCEEDED, **raw("refund", 500, "2026-01-25", event_id="r1"))
    # A won dispute dated before the chargeback it would reverse fits the totals, not the instant.
    refused(books, LATER, OVER_REVERSED, **raw("chargeback_reversed", 1, "2026-01-15", event_id="w0"))
    accepted(books, LATER, **raw("refund", 500, "2026-01-30", event_id="r1"))
    assert books.sql("SELECT count(*) FROM revenue_events WHERE invoice_id = 'inv-1'")[0][0] == 4


def test_each_type_is_held_to_its_own_limit_as_in_the_service(books):
    # Rows that broke the rule as of an instant (the service once checked the totals only): a won
    # dispute dated before its chargeback. A refund is held to the paid amount, not to the
    # chargebacks, so the bad window does not block it; a won dispute is held to the chargebacks.
    accepted(books, LATER, **raw("chargeback", 10_000, "2026-01-20", event_id="c1"))
    with behind_the_triggers(books.database) as execute:
        execute("INSERT INTO revenue_events (id, type, customer_id, invoice_id, currency, amount_minor, "
                "occurred_at_us, recorded_at_us, request_hash, status) VALUES ('w-old', 'chargeback_reversed', "
                f"'acme', 'inv-1', 'USD', 10000, {at('2026-01-15')}, {at('2026-01-15')}, '{'h' * 64}', 'posted')")
    accepted(books, LATER, **raw("refund", 1_000, "2026-01-12", event_id="r1"))
    refused(books, LATER, OVER_REVERSED, **raw("chargeback_reversed", 1, "2026-01-25", event_id="w1"))


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_two_raw_writers_each_within_the_limit_cannot_together_exceed_it(books):
    # Each refund fits alone. The second writer's check waits for the first to commit, then sees it.
    first = books.database.engine.connect()
    try:
        first.begin()
        first.execute(sa.text(LATER), raw("refund", 6_000, "2026-01-20", event_id="r1"))
        outcome: list[BaseException | None] = []

        def second() -> None:
            try:
                accepted(books, LATER, **raw("refund", 6_000, "2026-01-21", event_id="r2"))
                outcome.append(None)
            except BaseException as error:  # noqa: BLE001 - reported below
                outcome.append(error)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=1)
        assert thread.is_alive(), "the second writer did not wait for the first"
        chain_due(first)
        first.commit()
        thread.join(timeout=30)
    finally:
        first.close()
    [error] = outcome
    assert isinstance(error, sa.exc.DBAPIError) and EXCEEDED in str(error), error
    assert books.sql("SELECT sum(amount_minor) FROM revenue_events WHERE type = 'refund'")[0][0] == 6_000


def test_the_domains_own_refunds_disputes_and_a_full_refund_pass_the_guard(books):
    books.chargeback("acme", "inv-1", "100.00", "2026-01-20")
    books.dispute_won("acme", "inv-1", "100.00", "2026-01-30")
    books.refund("acme", "inv-1", "40.00", "2026-01-31")
    books.refund("acme", "inv-1", "60.00", "2026-02-01")
    refusal = books.refused("refund", "acme", "inv-1", "0.01", "2026-02-02")
    assert "amount.amount" in refusal.error.fields
    assert books.verified()


DAY_US = 86_400_000_000
SIGNED = {  # what each type adds to the refunded amount, and to what is charged back and not reversed
    "refund": (1, 0), "chargeback": (1, 1), "chargeback_reversed": (-1, -1)}


def broken_rule(held: list[tuple[str, int, int]], event: tuple[str, int, int], paid_minor: int,
                paid_at_us: int) -> str | None:
    """The rule of migration 0014, written out: the message an `event` (type, amount, instant) added
    to the invoice's `held` events is refused with, or None."""
    type_, _, at_us = event
    if at_us < paid_at_us:
        return NOT_PAID
    after = [*held, event]
    sums = [[sum(SIGNED[t][k] * amount for t, amount, at in after if at <= instant) for k in (0, 1)]
            for instant in {at for _, _, at in after if at >= at_us}]
    if type_ != "chargeback_reversed" and any(refunded > paid_minor for refunded, _ in sums):
        return EXCEEDED
    if type_ == "chargeback_reversed" and any(charged < 0 for _, charged in sums):
        return OVER_REVERSED
    return None


_invoices = itertools.count(1)


@settings(max_examples=examples(40), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(events=st.lists(st.tuples(st.sampled_from(list(SIGNED)), st.integers(1, 6_000), st.integers(-1, 6)),
                       max_size=12))
def test_the_database_refuses_exactly_the_events_that_break_an_invoices_limits_at_some_instant(books, events):
    """Random refunds, chargebacks and won disputes of an invoice paid 100.00, many at one instant,
    written past Python: each is refused with the message of the limit it would break, at some
    instant from its own on, or accepted. One invoice an example, on the fixture's books."""
    invoice, paid_at_us = f"inv-p{next(_invoices)}", at("2026-01-10")
    accepted(books, LATER, **dict(raw("invoice_paid", 10_000, "2026-01-10", event_id=f"{invoice}-paid",
                                      invoice=invoice)))
    held: list[tuple[str, int, int]] = []
    for n, (type_, amount, day) in enumerate(events):
        event = (type_, amount, paid_at_us + day * DAY_US)
        row = dict(raw(type_, amount, "2026-01-10", event_id=f"{invoice}-{n}", invoice=invoice), at=event[2])
        message = broken_rule(held, event, 10_000, paid_at_us)
        if message is None:
            accepted(books, LATER, **row)
            held.append(event)
        else:
            refused(books, LATER, message, **row)
    assert books.sql(f"SELECT count(*) FROM revenue_events WHERE invoice_id = '{invoice}'")[0][0] == len(held) + 1


@contextlib.contextmanager
def guards_work(connection, table: str, statements: tuple[str, ...]) -> Iterator[list[int]]:
    """The work of the database in the statements that hold one of `statements` (their triggers run
    within them; on PostgreSQL a batch's inserts go as one) while the block runs on `connection`,
    counted once it ends (the list yielded holds it), by a measure that does not depend on the
    machine's speed: on SQLite the virtual machine's instructions (per hundred), on PostgreSQL the
    rows of `table` read. Each statement's share is what the measure moved from its start to the
    next statement's (or the block's end)."""
    counted, steps, mark, guarded = [0], [0], [0], [False]
    postgres = connection.dialect.name == "postgresql"
    driver = connection.connection.driver_connection
    read = ("SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
            f" WHERE relname = '{table}'")

    def measure() -> int:
        return driver.execute(read).fetchone()[0] if postgres else steps[0]

    def step() -> int:
        steps[0] += 1
        return 0

    def close_share() -> None:
        now = measure()
        counted[0] += (now - mark[0]) if guarded[0] else 0
        mark[0] = now

    def statement(conn, cursor, text, parameters, context, executemany) -> None:
        close_share()
        guarded[0] = any(name in text for name in statements)

    if not postgres:
        driver.set_progress_handler(step, 100)
    mark[0] = measure()
    sa.event.listen(connection, "before_cursor_execute", statement)
    try:
        yield counted
        close_share()
    finally:
        sa.event.remove(connection, "before_cursor_execute", statement)
        if not postgres:
            driver.set_progress_handler(None, 100)


def work_of_a_refund(books: Books, invoice: str, held: int) -> int:
    """The work of the database's guards inserting one refund of `invoice`, paid 100.00, which holds
    `held` refunds of one cent at the refund's own instant (written past the guards)."""
    accepted(books, LATER, **raw("invoice_paid", 10_000, "2026-01-10", event_id=f"{invoice}-paid", invoice=invoice))
    with behind_the_triggers(books.database) as execute:
        for n in range(held):
            execute(f"INSERT INTO revenue_events (id, type, customer_id, invoice_id, currency, amount_minor, "
                    f"occurred_at_us, recorded_at_us, request_hash, status) VALUES ('{invoice}-{n}', 'refund', "
                    f"'acme', '{invoice}', 'USD', 1, {at('2026-01-20')}, {at('2026-01-20')}, '{'h' * 64}', "
                    "'no_commission')")
    refund = raw("refund", 1, "2026-01-20", event_id=f"{invoice}-new", invoice=invoice)
    with books.database.engine.begin() as connection:
        with guards_work(connection, "revenue_events", ("INSERT INTO revenue_events",)) as work:
            connection.execute(sa.text(LATER), refund)
        chain_due(connection)
    return work[0]


def test_the_guard_of_an_invoices_limits_reads_its_events_once_per_check_not_once_per_instant(books):
    # Migration 0014 summed the invoice's events once for each event dated at or after the new one:
    # four times the events at the instant took fifteen times the work. One ordered pass takes at
    # most about four times (the sort adds a little).
    small, large = work_of_a_refund(books, "inv-small", 100), work_of_a_refund(books, "inv-large", 400)
    assert small > 0
    assert large < 6 * small, (small, large)


def work_of_a_claim_move(books: Books, customer: str, moves: int) -> int:
    """The work of the guards of journal postings and claims taken as one more payment of `customer`
    takes its CPA claim, after `moves` payments of it came newest first, each taking the claim from
    the one before: one bounty a move, all but the last reversed."""
    books.attribute(customer, "northwind", "2026-01-01")
    payment = lambda n: books.event("invoice_paid", customer, f"{customer}-{n}", "100.00",  # noqa: E731
                                    f"2026-03-{28 - n // 1440:02d}T{23 - n // 60 % 24:02d}:{59 - n % 60:02d}:00Z")
    books.ingest(*[payment(n) for n in range(moves + 1)])
    with books.database.transaction() as session:
        with guards_work(session.connection(), "journal_transactions",
                         ("INSERT INTO journal_transactions", "INSERT INTO cpa_claims_taken")) as work:
            [outcome] = ingest(session, [payment(moves + 1)])
    assert [line.kind for line in outcome.commissions] == ["accrual", "cpa"], outcome
    assert books.sql("SELECT count(*) FROM journal_transactions WHERE kind = 'cpa' AND customer_id = "
                     f"'{customer}'")[0][0] == moves + 2
    return work[0]


# SQLite alone: PostgreSQL's planner reads a table of a few hundred rows whole, as it should, whatever
# its indexes (`python -m bench.claims --moves M` measures the moves there).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_guards_of_a_customers_bounty_read_the_latest_bounty_not_every_one(database):
    # Migrations 0020 and 0038 read every bounty of the customer for each move of its claim: eight
    # times the moves took three times the work for one more. Read by key, it stays about the same.
    books = Books(database)
    books.plan("hybrid", "0.10", cpa={"USD": "150.00"}, duration_months=None)
    books.partner("northwind", "hybrid")
    few, many = work_of_a_claim_move(books, "few", 50), work_of_a_claim_move(books, "many", 400)
    assert few > 0
    assert many < 1.5 * few, (few, many)


def test_a_partner_at_depth_six_is_refused(books):
    refused(books, PARTNER, "depth", id="level6", parent="level5", parent_depth=5, depth=6)


def test_a_partner_whose_parent_depth_is_not_one_less_is_refused(books):
    refused(books, PARTNER, "parent_depth|foreign key|FOREIGN KEY",
            id="liar", parent="level2", parent_depth=2, depth=4)
    refused(books, PARTNER, "fk_partners_parent_partners|FOREIGN KEY",
            id="liar", parent="level2", parent_depth=3, depth=4)  # level2 is at depth 2, not 3
    accepted(books, PARTNER, id="honest", parent="level2", parent_depth=2, depth=3)


APPEND_ONLY_VIOLATIONS = [
    "UPDATE revenue_events SET amount_minor = 1",
    "DELETE FROM revenue_events",
    "UPDATE attributions SET partner_id = 'level1'",
    "DELETE FROM attributions",
    "UPDATE plan_versions SET terms = '{}'",
    "DELETE FROM plan_versions",
    "UPDATE partners SET depth = depth",
    "DELETE FROM partners WHERE id = 'level5'",
    "UPDATE partner_statuses SET status = 'terminated'",
    "UPDATE partner_plans SET plan_id = plan_id",
]


def test_the_program_tables_refuse_update_and_delete(books):
    for statement in APPEND_ONLY_VIOLATIONS:
        refused(books, statement, "append-only")
    assert books.sql("SELECT count(*), min(amount_minor) FROM revenue_events")[0] == (1, 10_000)
