"""verify re-derives each payment's commissions and CPA claim from the program as it was recorded
when the payment was (`ledger/recorded_program.py`): backdated program changes recorded after a
payment do not make it wrong, and rows written past the service that the database's rules let
through (a payment saying it earned nothing, an earning posted by hand, a claim moved) are named.

The service's clock is set back (`skewed_clock`) so that the program, the payments and later
changes are recorded hours apart, beyond the ten minutes of clock skew verify allows."""

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from ledger import accounts as chart
from ledger import journal, partners, plans, revenue
from ledger.db import Database
from ledger.revenue import RevenueEvent, request_hash
from ledger.verify import verify
from tests import program
from tests.conftest import database_property, new_sqlite_url
from tests.integration.test_tamper_evidence import behind_the_triggers

HOUR_US = 3_600_000_000
MINUTE_US = 60_000_000
HALF = {**program.PLAN, "rates": [{"from_month": 1, "rate": "0.50"}]}
WITH_CPA = {**program.PLAN, "cpa": [{"amount": "40.00", "currency": "USD"}]}


def found(database) -> set[tuple[str, str]]:
    """(code, the first name quoted in its message, if any) of each problem verify names."""
    with database.reader() as session:
        return {(p.code, (p.message.split("'") + [""])[1]) for p in verify(session).problems}


# What `found` makes of the chain's naming of the version rewritten (`ledger.program_chain`), by its id.
PLAN_VERSION_ALTERED = ("program_fact_altered", "3")  # version 2 of standard, after two plans


def messages(database) -> list[str]:
    with database.reader() as session:
        return [p.message for p in verify(session).problems]


@pytest.fixture
def decided(database, skewed_clock):
    """The program recorded three hours ago; e1 (acme, 500.00 on 2026-01-10) two hours ago, at the
    20% rate with globex's 10% override; then, an hour ago, changes dated back before e1: the plan
    at 50% from 2026-01-05, globex terminated from 2026-01-06. e2 now, on the changed program."""
    skewed_clock.offset_us = -3 * HOUR_US
    with database.transaction() as session:
        program.seed(session)
    skewed_clock.offset_us = -2 * HOUR_US
    with database.transaction() as session:
        revenue.ingest(session, [program.paid("e1", "acme", "inv-1", 50_000, "2026-01-10"),
                                 program.paid("n1", "acme", "inv-0", 5_000, "2025-12-10")])  # before the window
    skewed_clock.offset_us = -HOUR_US
    with database.transaction() as session:
        plans.add_version(session, "standard", HALF, program.at("2026-01-05"))
        partners.set_status(session, "globex", "terminated", program.at("2026-01-06"))
    skewed_clock.offset_us = 0
    with database.transaction() as session:
        revenue.ingest(session, [program.paid("e2", "acme", "inv-2", 50_000, "2026-01-11")])
    return database


def earnings(database, event_id: str) -> dict[str, int]:
    with database.reader() as session:
        return dict(session.execute(sa.text(
            "SELECT t.kind, max(l.amount_minor) FROM journal_transactions t JOIN journal_lines l"
            " ON l.transaction_id = t.id WHERE t.event_id = :e GROUP BY t.id, t.kind"), {"e": event_id}).all())


def test_payments_decided_before_and_after_changes_dated_back_verify_clean(decided):
    assert earnings(decided, "e1") == {"accrual": 10_000, "override": 1_000}  # no re-rating
    assert earnings(decided, "e2") == {"accrual": 25_000}
    assert found(decided) == set()


def test_a_plan_version_recorded_before_a_payment_that_did_not_apply_it_is_named(decided):
    """The 50% version's recording moved to before e1: e1 should then have earned 250.00."""
    with behind_the_triggers(decided) as execute:
        execute(f"UPDATE plan_versions SET created_at_us = created_at_us - {2 * HOUR_US} WHERE version = 2")
    # The version's row of the program's chain names the rewrite too (ledger.program_chain).
    assert found(decided) == {("commission_unlike_program", "e1"), PLAN_VERSION_ALTERED}
    [message] = [text for text in messages(decided) if "not as the program chain recorded it" not in text]
    assert "the journal holds accrual of 100.00 to 'northwind'" in message
    assert "the program as recorded by then gives accrual of 250.00 to 'northwind'" in message


def test_a_change_recorded_within_the_clock_skew_of_a_payment_may_have_applied_to_it_or_not(database, skewed_clock):
    skewed_clock.offset_us = -3 * HOUR_US
    with database.transaction() as session:
        program.seed(session)
    skewed_clock.offset_us = -2 * HOUR_US
    with database.transaction() as session:
        revenue.ingest(session, [program.paid("e1", "acme", "inv-1", 50_000, "2026-01-10")])
    skewed_clock.offset_us = -2 * HOUR_US - 4 * MINUTE_US  # another server, its clock four minutes behind
    with database.transaction() as session:
        plans.add_version(session, "standard", HALF, program.at("2026-01-05"))
    assert earnings(database, "e1")["accrual"] == 10_000 and found(database) == set()
    # Either version passes (the accrual, transaction 1, on version id 1 or 3, and globex's override
    # on it, 2); a third rate does not.
    for version, accrual, override, named in ((3, 25_000, 2_500, False), (3, 15_000, 1_500, True),
                                              (1, 10_000, 1_000, False)):
        with behind_the_triggers(database) as execute:
            execute(f"UPDATE journal_transactions SET plan_version_id = {version} WHERE id = 1")
            execute(f"UPDATE journal_lines SET amount_minor = {accrual} WHERE transaction_id = 1")
            execute(f"UPDATE journal_lines SET amount_minor = {override} WHERE transaction_id = 2")
        assert (("commission_unlike_program", "e1") in found(database)) is named, (accrual, override)


def forge_event(database, event: RevenueEvent, status: str) -> None:
    """A revenue_events row as a role that may write events could insert it, through the
    database's rules (migration 0034 lets a `no_commission` row of an attributed customer through),
    chained as the service chains an event that posted nothing (migration 0056)."""
    from tests.integration.conftest import chain_due

    with database.engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO revenue_events (id, type, customer_id, invoice_id, currency, amount_minor, occurred_at_us,"
            " recorded_at_us, request_hash, status, first_eligible_customer_id) VALUES (:id, :type, :customer_id,"
            " :invoice_id, :currency, :amount_minor, :occurred_at_us, :recorded, :hash, :status, NULL)"),
            {**event._asdict(), "recorded": journal.now_us(), "hash": request_hash(event), "status": status})
        chain_due(connection)


def test_a_payment_row_saying_it_earned_nothing_for_an_earning_partner_is_named(decided):
    """The forgery migration 0034 cannot refuse: for an id billing has not sent yet, a row saying
    `no_commission`, so that billing's event is answered as its replay and posts nothing."""
    forge_event(decided, program.paid("e3", "acme", "inv-3", 10_000, "2026-01-12"), "no_commission")
    assert found(decided) == {("commission_unlike_program", "e3")}
    [message] = messages(decided)
    assert message == ("revenue event 'e3': the journal holds no earnings, but the program as recorded by then gives "
                       "accrual of 50.00 to 'northwind' (plan version id 3, held until 2026-02-11T00:00:00Z)")
    [outcome] = revenue_ingest(decided, program.paid("e3", "acme", "inv-3", 10_000, "2026-01-12"))
    assert outcome.replayed and outcome.status == "no_commission"  # which is why verify must name it


def revenue_ingest(database, *events):
    with database.transaction() as session:
        return revenue.ingest(session, list(events))


@pytest.mark.parametrize("posted", ["an override to a partner without one", "a second accrual", "another amount"])
def test_an_earning_posted_by_hand_for_a_payment_is_named(decided, posted):
    drafts = {
        "an override to a partner without one": ("override", "northwind", 5_000),
        "a second accrual": ("accrual", "northwind", 10_000),
        "another amount": ("accrual", "northwind", 10_001),
    }
    kind, partner_id, amount = drafts[posted]
    with decided.transaction() as session:
        version = session.execute(sa.text("SELECT plan_version_id FROM journal_transactions WHERE id = 1")).scalar_one()
        [by_hand] = journal.post(session, [journal.transfer(
            kind, chart.EXPENSE_COMMISSION, chart.pending(partner_id), "USD", amount,
            effective_at_us=program.at("2026-01-10"), idempotency_key=f"e1:{kind}:by-hand", partner_id=partner_id,
            customer_id="acme", invoice_id="inv-1", event_id="e1", plan_version_id=version,
            matures_at_us=program.at("2026-02-09"))])
        session.execute(sa.text("INSERT INTO open_holds (accrual_id, matures_at_us) VALUES (:id, :at)"),
                        {"id": by_hand.id, "at": program.at("2026-02-09")})  # queued, as the service queues it
    assert found(decided) == {("commission_unlike_program", "e1")}


def test_an_earning_of_a_payment_removed_behind_the_triggers_is_named(decided):
    with behind_the_triggers(decided) as execute:
        for table in ("open_holds", "journal_lines"):
            column = "accrual_id" if table == "open_holds" else "transaction_id"
            execute(f"DELETE FROM {table} WHERE {column} = 2")
        execute("DELETE FROM journal_transactions WHERE id = 2")
    assert ("commission_unlike_program", "e1") in found(decided)


@pytest.fixture
def claimed(database, skewed_clock):
    """northwind on a plan with a 40.00 CPA; acme attributed to it from 2026-01-01: n1 before the
    window (no commission), e1 in it two hours ago (its CPA), e2 in it now."""
    skewed_clock.offset_us = -3 * HOUR_US
    with database.transaction() as session:
        program.seed(session)
        plans.create_plan(session, "bounty", "Bounty", WITH_CPA)
        partners.change_plan(session, "northwind", "bounty", program.at("2025-12-01"))
    skewed_clock.offset_us = -2 * HOUR_US
    with database.transaction() as session:
        revenue.ingest(session, [program.paid("n1", "acme", "inv-0", 5_000, "2025-12-10"),
                                 program.paid("e1", "acme", "inv-1", 50_000, "2026-01-10")])
    skewed_clock.offset_us = 0
    with database.transaction() as session:
        revenue.ingest(session, [program.paid("e2", "acme", "inv-2", 50_000, "2026-01-11")])
    assert earnings(database, "e1") == {"accrual": 10_000, "cpa": 4_000, "override": 1_000}
    assert found(database) == set()
    return database


def test_a_cpa_claim_moved_to_a_payment_outside_the_window_is_named(claimed):
    with behind_the_triggers(claimed) as execute:
        execute("UPDATE revenue_events SET first_eligible_customer_id = NULL WHERE id = 'e1'")
        execute("UPDATE revenue_events SET first_eligible_customer_id = 'acme' WHERE id = 'n1'")
    # n1 claims outside the window; e1 holds a CPA it did not claim. n1 posted nothing: its row of the
    # program's chain names it too (migration 0056).
    assert found(claimed) == {("cpa_claim_unlike_program", "n1"), ("commission_unlike_program", "e1"),
                              ("program_fact_altered", "n1")}


def test_a_cpa_claim_moved_to_a_later_payment_is_named_at_the_earlier_one(claimed):
    """e2 made the claim and e1 kept its bounty: e1's bounty is then unlike the program, and e2,
    claiming with no CPA posted, is too."""
    with behind_the_triggers(claimed) as execute:
        execute("UPDATE revenue_events SET first_eligible_customer_id = NULL WHERE id = 'e1'")
        execute("UPDATE revenue_events SET first_eligible_customer_id = 'acme' WHERE id = 'e2'")
    assert found(claimed) == {("commission_unlike_program", "e1"), ("commission_unlike_program", "e2")}


@pytest.fixture
def claimed_without_cpa(database, skewed_clock):
    """The program three hours ago, on a plan without a CPA (a claim posts nothing: only the claim
    itself tells); acme's e1 on 2026-01-10 two hours ago, which claimed; the clock back to now."""
    skewed_clock.offset_us = -3 * HOUR_US
    with database.transaction() as session:
        program.seed(session)
    skewed_clock.offset_us = -2 * HOUR_US
    revenue_ingest(database, program.paid("e1", "acme", "inv-1", 50_000, "2026-01-10"))
    skewed_clock.offset_us = 0
    return database


def test_an_eligible_payment_that_claimed_nothing_while_a_later_one_did_is_named(claimed_without_cpa):
    database = claimed_without_cpa
    revenue_ingest(database, program.paid("e2", "acme", "inv-2", 50_000, "2026-01-11"))
    assert found(database) == set()
    with behind_the_triggers(database) as execute:
        execute("UPDATE revenue_events SET first_eligible_customer_id = NULL WHERE id = 'e1'")
    assert found(database) == {("cpa_claim_unlike_program", "e1"), ("cpa_claim_unlike_program", "e2")}
    assert all("no payment claims the customer's CPA" in message for message in messages(database))
    with behind_the_triggers(database) as execute:
        execute("UPDATE revenue_events SET first_eligible_customer_id = 'acme' WHERE id = 'e2'")
    assert found(database) == {("cpa_claim_unlike_program", "e1")}
    assert "no payment dated at or before it claimed the customer's CPA before it was recorded" in messages(database)[0]


def test_a_claim_taken_by_a_payment_dated_before_the_claimant_passes_and_its_bounty_without_it_is_named(claimed):
    """e0, dated before e1 and delivered after it, takes the claim and its CPA, e1's bounty reversed
    (migration 0038): the program as recorded gives that. Behind the triggers, without the claim
    taken, e0's CPA is unlike the program."""
    revenue_ingest(claimed, program.paid("e0", "acme", "inv-00", 50_000, "2026-01-05"))
    assert earnings(claimed, "e0") == {"accrual": 10_000, "cpa": 4_000, "override": 1_000}
    assert found(claimed) == set()
    with behind_the_triggers(claimed) as execute:
        execute("DELETE FROM cpa_claims_taken WHERE event_id = 'e0'")
    assert found(claimed) == {("commission_unlike_program", "e0")}


def test_an_eligible_payment_dated_before_the_claimant_that_did_not_take_the_claim_is_named(claimed_without_cpa):
    database = claimed_without_cpa
    revenue_ingest(database, program.paid("e0", "acme", "inv-0", 50_000, "2026-01-05"))
    assert [tuple(row) for row in database_rows(database, "SELECT event_id, from_event_id FROM cpa_claims_taken")] == [
        ("e0", "e1")]
    assert found(database) == set()
    with behind_the_triggers(database) as execute:
        execute("DELETE FROM cpa_claims_taken")
    assert found(database) == {("cpa_claim_unlike_program", "e0")}
    # Recorded before the rule by date took effect (migration 0038), e0 followed the rule of its time:
    # e1, recorded before it, had claimed.
    with behind_the_triggers(database) as execute:
        execute(f"UPDATE rules_since SET since_us = {program.at('2030-01-01')} WHERE rule = 'cpa_first_by_date'")
    assert found(database) == set()


def database_rows(database, statement: str) -> list:
    with database.reader() as session:
        return session.execute(sa.text(statement)).all()


def test_a_plan_version_whose_terms_do_not_parse_is_named_once(decided):
    with behind_the_triggers(decided) as execute:
        execute("UPDATE plan_versions SET terms = '{\"rates\": []}' WHERE version = 2")
    assert found(decided) == {("plan_terms_unreadable", "standard"), PLAN_VERSION_ALTERED}


# Random histories whose every step is recorded eleven minutes after the one before (beyond the
# skew: each payment saw exactly the facts recorded before it), with program changes dated back
# before payments already made, and refunds, chargebacks and won disputes (two of an invoice in one
# batch at times): verify, re-deriving every payment from the program as recorded by then and every
# undoing from its invoice's pieces as they stood, finds nothing. Were it to read the program as it
# stands now, it would name each payment a change dated back before it was made after it.
STEP_US = 11 * MINUTE_US
PARTNERS = ("globex", "northwind", "initech")
CUSTOMERS = ("acme", "globex-corp", "initrode")
days = st.integers(0, 180)
history_steps = st.lists(st.one_of(
    st.tuples(st.just("pay"), st.sampled_from(CUSTOMERS), st.integers(1_000, 100_000), days),
    st.tuples(st.just("version"), st.sampled_from(("standard", "bounty")), st.sampled_from(("0.05", "0.35")), days),
    st.tuples(st.just("status"), st.sampled_from(PARTNERS), st.sampled_from(("suspended", "active", "terminated")),
              days),
    st.tuples(st.just("plan"), st.sampled_from(PARTNERS[1:]), st.sampled_from(("standard", "bounty")), days),
    st.tuples(st.just("attribute"), st.sampled_from(CUSTOMERS), st.sampled_from(PARTNERS), days),
    # Refunds, chargebacks and won disputes of the n-th payment so far: one, or two in one batch.
    st.tuples(st.just("undo"), st.integers(0, 23), st.lists(st.tuples(
        st.sampled_from(("refund", "chargeback", "chargeback_reversed")), st.integers(1, 100), st.integers(0, 40)),
        min_size=1, max_size=2), st.just(0)),
), min_size=1, max_size=24)


def history_step(session, step, index: int, paid: list[RevenueEvent]) -> None:
    """Apply one step; `paid` collects the payments made, for later steps to undo."""
    from ledger import customers
    from ledger.errors import DomainError
    from ledger.instants import from_us

    kind, subject, value, day = step
    instant_us = program.at("2026-01-01") + day * 86_400_000_000
    try:
        if kind == "pay":
            payment = revenue.RevenueEvent(f"e{index}", "invoice_paid", subject, f"inv-{index}", "USD", value, instant_us)
            paid += [payment] if isinstance(revenue.ingest(session, [payment])[0], revenue.Outcome) else []
        elif kind == "undo":
            if paid:
                payment = paid[subject % len(paid)]
                revenue.ingest(session, [revenue.RevenueEvent(
                    f"u{index}-{n}", type_, payment.customer_id, payment.invoice_id, "USD",
                    max(1, payment.amount_minor * percent // 100), payment.occurred_at_us + days_after * 86_400_000_000)
                    for n, (type_, percent, days_after) in enumerate(value)])  # each refused or applied on its own
        elif kind == "version":
            plans.add_version(session, subject, {**(WITH_CPA if subject == "bounty" else program.PLAN),
                                                 "rates": [{"from_month": 1, "rate": value}]}, instant_us)
        elif kind == "status":
            partners.set_status(session, subject, value, instant_us)
        elif kind == "plan":
            partners.change_plan(session, subject, value, instant_us)
        else:
            customers.attribute(session, subject, value, from_us(instant_us).date(), "manual", replace=True)
    except DomainError:  # refused as the service refuses it (a start before the latest, ...): nothing changed
        session.rollback()


@database_property(25)
@given(steps=history_steps)
def test_events_of_a_history_recorded_step_by_step_verify_clean_whatever_was_dated_back(
        steps, sqlite_template, tmp_path_factory):
    from ledger import instants
    from tests.conftest import SkewedClock

    database = Database(new_sqlite_url(sqlite_template, tmp_path_factory.mktemp("recorded")))
    clock = SkewedClock()
    clock.offset_us = -(len(steps) + 1) * STEP_US
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(instants, "_time", clock)
            with database.transaction() as session:
                program.seed(session)
                plans.create_plan(session, "bounty", "Bounty", WITH_CPA)
                partners.create_partner(session, "initech", "Initech", "referral", "bounty", "globex")
            paid: list[RevenueEvent] = []
            for index, step in enumerate(steps):
                clock.offset_us += STEP_US
                with database.transaction() as session:
                    history_step(session, step, index, paid)
        with database.reader() as session:
            report = verify(session)
        assert report.problems == []
    finally:
        database.dispose()


def test_a_refund_row_saying_it_took_nothing_from_an_invoice_that_earned_is_named(decided, skewed_clock):
    """The same forgery for a refund: for an id billing has not sent yet, a row saying
    `no_commission`, so that billing's refund is answered as its replay and the partners keep what
    it should take back (`ledger/clawbacks_rederived.py`)."""
    refund = program.paid("r1", "acme", "inv-1", 10_000, "2026-01-20", "refund")
    forge_event(decided, refund, "no_commission")
    assert found(decided) == {("clawback_unlike_rules", "r1")}
    [message] = messages(decided)
    assert message == ("revenue event 'r1' (refund): its postings take nothing of its invoice's commissions, but "
                       "the rules take 2000 minor units of piece 1, 200 minor units of piece 2 of them as they stood")
    [outcome] = revenue_ingest(decided, refund)
    assert outcome.replayed and outcome.status == "no_commission"


def test_refunds_chargebacks_and_won_disputes_posted_by_the_service_verify_clean_and_an_altered_one_is_named(
        decided, skewed_clock):
    skewed_clock.offset_us = -90 * MINUTE_US  # between e1 and the changes dated back
    revenue_ingest(decided, program.paid("r1", "acme", "inv-1", 10_000, "2026-01-20", "refund"))
    skewed_clock.offset_us = 0
    revenue_ingest(decided, program.paid("c1", "acme", "inv-1", 40_000, "2026-01-21", "chargeback"),
                   program.paid("w1", "acme", "inv-1", 40_000, "2026-01-25", "chargeback_reversed"),
                   program.paid("r2", "acme", "inv-2", 50_000, "2026-01-26", "refund"))
    with decided.reader() as session:
        clawed = session.execute(sa.text("SELECT t.accrual_id, l.amount_minor FROM journal_transactions t JOIN"
                                         " journal_lines l ON l.transaction_id = t.id AND l.side = 'C'"
                                         " WHERE t.event_id = 'r1' ORDER BY t.accrual_id")).all()
    assert [tuple(row) for row in clawed] == [(1, 2_000), (2, 200)]  # a fifth of e1's accrual and override
    assert found(decided) == set()
    with decided.reader() as session:
        restored = session.execute(sa.text("SELECT min(id) FROM journal_transactions WHERE event_id = 'w1'"
                                           " AND kind = 'accrual'")).scalar_one()
    with behind_the_triggers(decided) as execute:
        execute(f"UPDATE journal_lines SET amount_minor = amount_minor - 1 WHERE transaction_id = {restored}")
    assert ("clawback_unlike_rules", "w1") in found(decided)


def test_a_won_dispute_row_saying_it_restored_nothing_is_named(decided, skewed_clock):
    skewed_clock.offset_us = -90 * MINUTE_US
    revenue_ingest(decided, program.paid("c1", "acme", "inv-1", 50_000, "2026-01-21", "chargeback"))
    skewed_clock.offset_us = 0
    forge_event(decided, program.paid("w1", "acme", "inv-1", 50_000, "2026-01-25", "chargeback_reversed"),
                  "no_commission")
    assert found(decided) == {("clawback_unlike_rules", "w1")}
    assert "the rules restore 10000 minor units of piece 1, 1000 minor units of piece 2" in messages(decided)[0]
