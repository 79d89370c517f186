"""Behind the triggers' back (as the database owner), tampering is still found by verify()."""

import contextlib
import gc
import sqlite3
from datetime import date

import pytest
import sqlalchemy as sa

from ledger import accounts as chart
from ledger import customers, holds, journal, partners, payouts, periods, plans, revenue, reversals
from ledger import verify as verifying
from ledger.revenue import RevenueEvent, request_hash
from ledger.schema import journal_transactions, revenue_events
from ledger.verify import verify
from tests import program
from tests.integration.conftest import chain_due, second_writer_behind_first

PENDING = chart.pending("northwind")
TERMS = {"rates": [{"from_month": 1, "rate": "0.20"}], "duration_months": None, "hold_days": 30,
         "min_payout": [{"amount": "50.00", "currency": "USD"}], "negative_balance": "carry_forward"}


@pytest.fixture
def booked(database):
    with database.transaction() as session:
        program.enrol(session, "northwind")
        journal.post(session, [
            journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 100 * (i + 1),
                             effective_at_us=i, idempotency_key=f"a{i}", partner_id="northwind",
                             **program.of_an_event(f"a{i}", "northwind"))
            for i in range(5)])
    return database


@contextlib.contextmanager
def behind_the_triggers(database):
    """A connection on which the append-only guards do not fire: on PostgreSQL the owner switches
    triggers off for its session; on SQLite a bare connection (no foreign keys) drops and restores them."""
    if database.engine.dialect.name == "postgresql":
        with database.engine.begin() as connection:
            connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
            yield connection.exec_driver_sql
        return
    connection = sqlite3.connect(database.engine.url.database, isolation_level=None)
    try:
        triggers = connection.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
        connection.execute("BEGIN")
        for name, _ in triggers:
            connection.execute(f"DROP TRIGGER {name}")
        yield connection.execute
        for _, sql in triggers:
            connection.execute(sql)
        connection.execute("COMMIT")
    finally:
        connection.close()


@contextlib.contextmanager
def without_trigger(database, table: str, trigger: str):
    """A writer transaction in which `trigger` of `table` does not fire: dropped, and created again
    before the commit."""
    with database.transaction() as session:
        connection = session.connection()
        if database.engine.dialect.name == "postgresql":
            sql = connection.exec_driver_sql(
                f"SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = '{trigger}'").scalar_one()
            connection.exec_driver_sql(f"DROP TRIGGER {trigger} ON {table}")
        else:
            sql = connection.exec_driver_sql(f"SELECT sql FROM sqlite_master WHERE name = '{trigger}'").scalar_one()
            connection.exec_driver_sql(f"DROP TRIGGER {trigger}")
        yield session
        connection.exec_driver_sql(sql)


def unlisted_resolutions(database):
    """A transaction in which a resolution posting is not asked for its record, as before migration
    0030."""
    return without_trigger(database, "journal_transactions", "trg_journal_transactions_resolution_due")


def unlisted_events(database):
    """A transaction in which a posting naming an event not stored is not listed to wait for it, as
    before migration 0065."""
    return without_trigger(database, "journal_transactions", "trg_journal_transactions_event_due")


def problems(database) -> set[tuple[int, str]]:
    with database.reader() as session:
        report = verify(session)
    assert report.ok is (not report.problems)
    return {(p.transaction_id, p.code) for p in program.besides_made_up_events(report.problems)}


def test_an_untouched_journal_verifies_clean(booked):
    assert problems(booked) == set()


@pytest.mark.parametrize("fails", [False, True], ids=["returned", "raised"])
def test_verify_runs_with_the_collector_paused_and_leaves_it_on(booked, monkeypatch, fails):
    collecting, check_closes = [], verifying.verify_closes

    def recording_check(session):
        collecting.append(gc.isenabled())
        if fails:
            raise RuntimeError("checking failed")
        return check_closes(session)

    monkeypatch.setattr(verifying, "verify_closes", recording_check)
    assert gc.isenabled()
    if fails:
        with pytest.raises(RuntimeError, match="checking failed"):
            problems(booked)
    else:
        assert problems(booked) == set()
    assert collecting == [False] and gc.isenabled()


def test_an_altered_line_amount_is_named(booked):
    with behind_the_triggers(booked) as execute:
        execute(
            "UPDATE journal_lines SET amount_minor = 999 WHERE transaction_id = 3 AND side = 'C'")
    assert problems(booked) == {(3, "content_altered"), (3, "unbalanced"), (None, "totals_mismatch")}


def test_a_consistently_altered_transaction_is_still_named(booked):
    with behind_the_triggers(booked) as execute:
        execute("UPDATE journal_lines SET amount_minor = 1 WHERE transaction_id = 2")
    assert problems(booked) == {(2, "content_altered"), (None, "totals_mismatch")}


def test_a_line_moved_to_another_account_is_named(booked):
    with booked.transaction() as session:
        program.enrol(session, "northwind")
        cash_id = chart.account_ids(session, [chart.CASH])[chart.CASH]
        journal.post(session, [journal.transfer("adjustment", PENDING, chart.EXPENSE_ADJUSTMENT, "USD", 1,
                                                effective_at_us=9, idempotency_key="p", partner_id="northwind",
                                                memo="goodwill")])
    with behind_the_triggers(booked) as execute:
        execute(
            f"UPDATE journal_lines SET account_id = {cash_id} WHERE transaction_id = 4 AND side = 'C'")
    assert problems(booked) == {(4, "content_altered"), (None, "totals_mismatch"), (4, "earning_misposted")}


def test_an_altered_header_and_hash_are_named(booked):
    with behind_the_triggers(booked) as execute:
        execute("UPDATE journal_transactions SET invoice_id = 'inv-x' WHERE id = 2")
        execute("UPDATE journal_transactions SET hash = repeat('a', 64) WHERE id = 4"
                                   if booked.engine.dialect.name == "postgresql" else
                                   "UPDATE journal_transactions SET hash = printf('%.64c', 'a') WHERE id = 4")
    assert problems(booked) == {(2, "content_altered"), (4, "hash_mismatch"), (5, "chain_broken")}


def test_a_deleted_transaction_is_named(booked):
    with behind_the_triggers(booked) as execute:
        execute("DELETE FROM journal_transactions WHERE id = 3")
    found = problems(booked)
    assert found == {(4, "sequence_gap"), (4, "chain_broken"), (3, "orphan_lines")}


@pytest.mark.parametrize("tamper", [
    "UPDATE account_totals SET credit_minor = credit_minor + 1",
    "UPDATE account_totals SET last_line_id = last_line_id - 1",
    "UPDATE account_totals SET latest_effective_at_us = latest_effective_at_us + 1",
    "DELETE FROM account_totals WHERE debit_minor > 0",
], ids=["amount", "last-line", "latest-instant", "deleted"])
def test_altered_running_totals_are_named(booked, tamper):
    with behind_the_triggers(booked) as execute:
        execute(tamper)
    with booked.reader() as session:
        found = program.verified(session)
    assert {(p.transaction_id, p.code) for p in found} == {(None, "totals_mismatch")}
    assert all(chart.EXPENSE_COMMISSION in p.message or PENDING in p.message for p in found), found


def test_a_head_recorded_earlier_proves_the_newest_transactions_were_not_removed(booked):
    with booked.reader() as session:
        before = verify(session)
    head = (before.head_id, before.chain_head)
    assert before.head_id == 5 and problems_with_head(booked, head) == set()
    with behind_the_triggers(booked) as execute:
        execute("DELETE FROM journal_lines WHERE transaction_id = 5")
        execute("DELETE FROM journal_transactions WHERE id = 5")
    assert (5, "head_missing") in problems_with_head(booked, head)
    assert (5, "head_missing") not in problems(booked)  # without it, a shorter chain is whole
    assert (4, "head_rewritten") in problems_with_head(booked, (4, "0" * 64))


def problems_with_head(database, head: tuple[int, str]) -> set[tuple[int, str]]:
    with database.reader() as session:
        found = verify(session, head=head).problems
    return {(p.transaction_id, p.code) for p in program.besides_made_up_events(found)}


def test_a_revenue_event_altered_after_it_was_received_is_named(booked):
    event = RevenueEvent("evt-1", "invoice_paid", "acme", "inv-9", "USD", 10_000, 1_000)
    with booked.engine.begin() as connection:
        connection.execute(sa.insert(revenue_events).values(
            **event._asdict(), recorded_at_us=1_000, request_hash=request_hash(event), status="unattributed"))
        chain_due(connection)  # as the service chains an event that posted nothing (migration 0056)
    assert problems(booked) == set()
    with behind_the_triggers(booked) as execute:
        execute("UPDATE revenue_events SET amount_minor = 1000")
    with booked.reader() as session:
        found = {problem.code: problem.message for problem in program.verified(session)}
    assert found.keys() == {"event_altered", "program_fact_altered"}
    assert "'evt-1'" in found["event_altered"] and "'evt-1'" in found["program_fact_altered"]


def test_an_event_rewritten_with_its_request_hash_recomputed_is_named_by_what_was_posted_from_it(database):
    """The event's own request hash has no secret; the accruals posted from it cover it (and a
    recorded head pins them), and a refund and a release later naming it do not mask that."""
    with database.transaction() as session:
        program.seed(session)
        revenue.ingest(session, [program.paid("e1", "acme", "inv-1", 50_000, "2026-01-10")])
        holds.release_matured(session, program.at("2026-03-01"))
        revenue.ingest(session, [program.paid("r1", "acme", "inv-1", 10_000, "2026-03-02", "refund")])
    with database.reader() as session:
        kinds = dict(session.execute(sa.select(journal_transactions.c.id, journal_transactions.c.kind)
                                     .where(journal_transactions.c.event_id == "e1")).all())
    assert sorted(kinds.values()) == ["accrual", "override", "release", "release"] and problems(database) == set()
    forged = program.paid("e1", "acme", "inv-1", 25_000, "2026-01-10")
    with behind_the_triggers(database) as execute:
        execute(f"UPDATE revenue_events SET amount_minor = 25000, request_hash = '{request_hash(forged)}'"
                " WHERE id = 'e1'")
    with database.reader() as session:
        found = verify(session).problems
        refund_first = session.execute(sa.text("SELECT min(id) FROM journal_transactions WHERE event_id = 'r1'")
                                       ).scalar_one()
    # On half the amount, the accrual would be half, and the refund would take twice the share.
    assert {(p.transaction_id, p.code) for p in found} == {
        (tid, "content_altered") for tid, kind in kinds.items() if kind != "release"} | {
        (min(kinds), "commission_unlike_program"), (refund_first, "clawback_unlike_rules")}
    assert all("revenue event 'e1'" in p.message for p in found if p.code != "clawback_unlike_rules")


HOUR_US = 3_600_000_000


@pytest.mark.parametrize("alter, expected", [
    ("UPDATE revenue_events SET status = 'no_commission' WHERE id = 'e1'", {("event_status_unlike_postings", "e1")}),
    ("UPDATE revenue_events SET status = 'posted' WHERE id = 'n1'", {("event_status_unlike_postings", "n1")}),
    ("UPDATE revenue_events SET status = 'no_commission' WHERE id = 'u1'",
     {("event_status_unlike_attributions", "u1"), ("event_status_unlike_payment", "u1-refund")}),
    # acme's attribution was recorded moments before n1: within the skew, n1 itself is not named.
    ("UPDATE revenue_events SET status = 'unattributed' WHERE id = 'n1'", {("event_status_unlike_payment", "n1-refund")}),
    ("UPDATE revenue_events SET status = 'no_commission' WHERE id = 'u1-refund'",
     {("event_status_unlike_payment", "u1-refund")}),
    # An attribution of the unattributed customer recorded an hour before its payment was.
    ("INSERT INTO attributions (customer_id, partner_id, effective_from_us, source, recorded_at_us)"
     f" SELECT 'stranger', 'northwind', 0, 'manual', recorded_at_us - {HOUR_US} FROM revenue_events WHERE id = 'u1'",
     {("event_status_unlike_attributions", "u1"), ("reference_broken", "stranger")}),  # a customer never recorded
    # Recorded within the clock skew of it, the attribution may have come after it: not named.
    ("INSERT INTO attributions (customer_id, partner_id, effective_from_us, source, recorded_at_us)"
     " SELECT 'stranger', 'northwind', 0, 'manual', recorded_at_us - 60000000 FROM revenue_events WHERE id = 'u1'",
     {("reference_broken", "stranger")}),
    # The attributed customer's attributions moved to after its payments were recorded: e1 then
    # earned from no attribution.
    (f"UPDATE attributions SET recorded_at_us = recorded_at_us + {HOUR_US} WHERE customer_id = 'acme'",
     {("event_status_unlike_attributions", "e1"), ("event_status_unlike_attributions", "n1"),
      ("commission_unlike_program", "e1")}),
], ids=["posted-to-nothing", "nothing-to-posted", "unattributed-to-decided", "decided-to-unattributed",
        "refund-unlike-payment", "attributed-before", "attributed-within-the-skew", "attributed-after"])
def test_an_event_status_altered_from_what_decided_it_is_named(database, alter, expected):
    """Migration 0034 holds an event's status for new rows; verify checks the rows there."""
    with database.transaction() as session:
        program.seed(session)
        revenue.ingest(session, [program.paid("e1", "acme", "inv-1", 50_000, "2026-01-10"),
                                 program.paid("n1", "acme", "inv-2", 20_000, "2025-06-10"),  # before its attribution
                                 program.paid("n1-refund", "acme", "inv-2", 1_000, "2025-06-11", "refund"),
                                 program.paid("u1", "stranger", "inv-3", 30_000, "2026-01-12"),
                                 program.paid("u1-refund", "stranger", "inv-3", 1_000, "2026-01-13", "refund")])
    with database.reader() as session:
        statuses = dict(session.execute(sa.select(revenue_events.c.id, revenue_events.c.status)).all())
    assert statuses == {"e1": "posted", "n1": "no_commission", "n1-refund": "no_commission",
                        "u1": "unattributed", "u1-refund": "unattributed"}
    assert problems(database) == set()
    with behind_the_triggers(database) as execute:
        execute(alter)
    with database.reader() as session:
        found = {(p.code, p.message.split("'")[1]) for p in verify(session).problems}
    # An attribution inserted or rewritten past the triggers is named by the program's chain too, and
    # so is an event that posted nothing rewritten, or one that posted made to say it did not (0056).
    chained = {"program_fact_unchained"} if alter.startswith("INSERT") or "'e1'" in alter else {"program_fact_altered"}
    assert {code for code, _ in found if code.startswith("program_")} == chained
    assert {(code, name) for code, name in found if not code.startswith("program_")} == expected


@pytest.mark.parametrize("named_by", ["adjustment", "another invoice's accrual"])
def test_an_event_saying_posted_that_no_commission_of_its_invoice_names_is_named(booked, named_by):
    """Only a commission or clawback of the event's invoice makes it `posted` (migration 0034): an
    adjustment naming it, which the service never writes, does not."""
    adjustment = named_by == "adjustment"
    # Posted before the event is stored (past migration 0065, which asks for it by the commit), as a
    # writer of its own SQL could; the event is stored after, behind the triggers, saying posted.
    with unlisted_events(booked) as session:
        program.enrol(session, "northwind")
        customers.attribute(session, "acme", "northwind", date(1970, 1, 1), "manual")
        journal.post(session, [journal.transfer(
            *(("adjustment", chart.EXPENSE_ADJUSTMENT) if adjustment else ("accrual", chart.EXPENSE_COMMISSION)),
            PENDING, "USD", 1, effective_at_us=1_000, idempotency_key="evt-1:named", partner_id="northwind",
            memo="goodwill" if adjustment else None, invoice_id="inv-9" if adjustment else "inv-8",
            event_id="evt-1", customer_id=None if adjustment else "acme")])
    event = RevenueEvent("evt-1", "invoice_paid", "acme", "inv-9", "USD", 10_000, 1_000)
    with behind_the_triggers(booked) as execute:
        execute(f"INSERT INTO revenue_events (id, type, customer_id, invoice_id, currency, amount_minor, occurred_at_us,"
                f" recorded_at_us, request_hash, status) VALUES ('evt-1', 'invoice_paid', 'acme', 'inv-9', 'USD',"
                f" 10000, 1000, {journal.now_us()}, '{request_hash(event)}', 'posted')")
    with booked.reader() as session:
        found = [(p.code, p.message) for p in program.verified(session)]
    named = ("event_status_unlike_postings",
             "revenue event 'evt-1' says posted, but no commission or clawback of its invoice names it")
    if adjustment:
        assert found == [named]
    else:  # and the accrual, which is not of its event, nor what the program gives the event
        assert named in found
        assert sorted(code for code, _ in found if (code, _) != named) == ["commission_unlike_program",
                                                                           "earning_unlike_event"]


@pytest.mark.parametrize("first", ["attributed", "paid"])
def test_statuses_decided_by_servers_whose_clocks_disagree_within_their_bounds_are_not_named(database, skewed_clock,
                                                                                          first):
    """An attribution's and an event's `recorded_at` come from the clocks of the servers that wrote
    them: two servers four minutes either side of the database's disagree by eight."""
    minute_us = 60_000_000
    with database.transaction() as session:
        program.seed(session, customer_ids=())

    def attribute():
        with database.transaction() as session:
            customers.attribute(session, "acme", "northwind", date(2026, 1, 1), "manual")

    def pay():
        with database.transaction() as session:
            revenue.ingest(session, [program.paid("e1", "acme", "inv-1", 50_000, "2026-01-10")])
    for offset_us, step in zip((4 * minute_us, -4 * minute_us), (attribute, pay) if first == "attributed"
                               else (pay, attribute)):
        skewed_clock.offset_us = offset_us
        step()
    skewed_clock.offset_us = 0
    with database.reader() as session:
        status = session.execute(sa.select(revenue_events.c.status)).scalar_one()
    assert status == ("posted" if first == "attributed" else "unattributed")
    assert problems(database) == set()


# ---- the rules migration 0018 holds for new rows, checked on the rows already there ----

def test_a_reversal_altered_to_name_nothing_or_a_reversal_is_named(booked):
    with booked.transaction() as session:
        first = journal.reverse(session, 2, reason="r").id
        second = journal.reverse(session, 3, reason="r").id
    assert problems(booked) == set()
    with behind_the_triggers(booked) as execute:
        execute(f"UPDATE journal_transactions SET reverses_id = NULL WHERE id = {first}")
        execute(f"UPDATE journal_transactions SET reverses_id = {first} WHERE id = {second}")
    found = problems(booked)
    assert {(first, "reversal_unlinked"), (second, "reversal_reversed"), (second, "reversal_not_a_mirror")} <= found
    assert {code for _, code in found} <= {"reversal_unlinked", "reversal_reversed", "reversal_not_a_mirror",
                                           "content_altered"}


def test_a_reversal_whose_lines_no_longer_undo_the_original_is_named(booked):
    with booked.transaction() as session:
        reversal = journal.reverse(session, 2, reason="r").id
    with behind_the_triggers(booked) as execute:
        execute(f"UPDATE journal_lines SET amount_minor = 1 WHERE transaction_id = {reversal}")
    assert (reversal, "reversal_not_a_mirror") in problems(booked)


def test_a_posting_moved_back_in_time_is_named(booked):
    with behind_the_triggers(booked) as execute:
        execute("UPDATE journal_transactions SET original_effective_at_us = 7 WHERE id = 2")
    assert (2, "moved_back") in problems(booked)


def test_a_posting_moved_to_the_very_instant_it_was_asked_for_is_named(booked):
    with behind_the_triggers(booked) as execute:  # transaction 2 is effective at 1
        execute("UPDATE journal_transactions SET original_effective_at_us = 1 WHERE id = 2")
    assert problems(booked) == {(2, "moved_back"), (2, "hash_mismatch")}


def test_a_line_in_an_unknown_currency_is_named(booked):
    with behind_the_triggers(booked) as execute:
        execute("UPDATE journal_lines SET currency = 'ZZZ' WHERE transaction_id = 2")
    found = problems(booked)
    assert (2, "currency_unknown") in found and (3, "currency_unknown") not in found


def test_a_damaged_page_of_an_sqlite_file_is_named_and_nothing_else_is_checked(sqlite_database):
    # A file restored over a stale write-ahead log, or a disk's fault: the rows verify reads can be
    # whole while a page it does not read (here an index's) is not, and verify said ok.
    database = sqlite_database
    with database.transaction() as session:
        program.enrol(session, "northwind")
        journal.post(session, [journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 100 * (i + 1),
                                                effective_at_us=i, idempotency_key=f"a{i}", partner_id="northwind",
                                                **program.of_an_event(f"a{i}", "northwind"))
                               for i in range(200)])
    database.dispose()
    path = database.engine.url.database
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    [root] = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'ix_journal_transactions_invoice_id'"
                                ).fetchone()
    page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    connection.close()
    with open(path, "r+b") as file:
        file.seek((root - 1) * page_size + 100)
        file.write(b"\xff" * 200)
    with database.reader() as session:
        report = verify(session)
    assert not report.ok and report.transactions_checked == 0
    assert {p.code for p in report.problems} == {"database_damaged"}
    assert all(p.message.startswith("SQLite's quick_check: On tree page") for p in report.problems)


def test_a_line_amount_that_is_not_an_integer_is_named_not_a_crash(sqlite_database):
    with sqlite_database.transaction() as session:
        program.enrol(session, "northwind")
        journal.post(session, [journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 100,
                                                effective_at_us=5, idempotency_key="a", partner_id="northwind",
                                                **program.of_an_event("a", "northwind"))])
    with behind_the_triggers(sqlite_database) as execute:
        execute("UPDATE journal_lines SET amount_minor = 'abc' WHERE side = 'D'")
    assert (1, "not_an_integer") in problems(sqlite_database)


@pytest.fixture
def paid_out(enrolled):
    """northwind paid 200.00 by a payout run; southwind enrolled beside it. (database, the payout)"""
    database = enrolled
    with database.transaction() as session:
        partners.create_partner(session, "southwind", "Southwind", "msp", "standard")
        payouts.adjust(session, "northwind", "available", 20_000, "USD", "earned", effective_at_us=1_000)
        [payout] = payouts.run_payouts(session, 2_000).payouts
    assert problems(database) == set()
    return database, payout


@pytest.mark.parametrize("reason", ["wire returned", None])
def test_a_resolutions_reason_altered_from_its_postings_memo_is_named(paid_out, reason):
    database, payout = paid_out
    with database.transaction() as session:
        failed = payouts.fail(session, payout.id, reason=reason, at_us=3_000)
    assert problems(database) == set()
    with behind_the_triggers(database) as execute:  # the reason the API shows, not the one the chain covers
        execute(f"UPDATE payout_resolutions SET reason = 'bank account closed' WHERE payout_id = {failed.id}")
    [(transaction_id, code)] = problems(database)
    assert code == "payout_resolution_mismatch" and transaction_id != payout.transaction_id


def test_payouts_ids_swapped_so_that_a_failed_one_shows_pending_and_is_paid_again_are_named(paid_out):
    """The ids of a failed payout and of a pending one swapped, past the triggers: the pending one
    showed failed (its money stayed in transit), the failed one pending, and settling it paid its
    amount a second time; each payout was still resolved once, and verify named nothing."""
    database, failed = paid_out
    with database.transaction() as session:
        failing = payouts.fail(session, failed.id, reason="bank account closed", at_us=3_000)
        payouts.adjust(session, "northwind", "available", 5_000, "USD", "earned", effective_at_us=3_500)
        [pending] = payouts.run_payouts(session, 4_000).payouts
    assert pending.amount_minor == 25_000 and problems(database) == set()
    with behind_the_triggers(database) as execute:
        execute(f"UPDATE payouts SET id = 1000000 WHERE id = {failed.id}")
        execute(f"UPDATE payouts SET id = {failed.id} WHERE id = {pending.id}")
        execute(f"UPDATE payouts SET id = {pending.id} WHERE id = 1000000")
    with database.reader() as session:
        assert payouts.get_payout(session, failed.id)[4:6] == (25_000, "failed")  # in transit, shown failed
        assert payouts.get_payout(session, pending.id)[4:6] == (20_000, "pending")  # returned, shown pending
    assert problems(database) == {(failing.resolution_transaction_id, "payout_resolution_mismatch")}
    with database.transaction() as session:
        payouts.settle(session, pending.id, at_us=5_000)
    assert problems(database) == {(failing.resolution_transaction_id, "payout_resolution_mismatch")}


def test_a_payout_record_altered_from_its_posting_is_named(paid_out):
    database, payout = paid_out
    with behind_the_triggers(database) as execute:
        execute(f"UPDATE payouts SET partner_id = 'southwind', amount_minor = 100000 WHERE id = {payout.id}")
    assert problems(database) == {(payout.transaction_id, "payout_mismatch")}


def test_a_partner_status_or_plan_minimum_rewritten_under_what_a_run_paid_is_named_at_the_payout(paid_out):
    """What the next runs pay follows the program's rows, which no hash covers: a partner suspended
    from its enrolment, or a minimum raised past what was paid, behind the triggers, is named at the
    payouts the run made before it (`ledger.payouts_rederived`)."""
    database, payout = paid_out
    with behind_the_triggers(database) as execute:
        execute("UPDATE partner_statuses SET status = 'suspended' WHERE partner_id = 'northwind'")
    # The program's chain names the fact rewritten too (`ledger.program_chain`).
    assert problems(database) == {(payout.transaction_id, "payout_unlike_program"), (None, "program_fact_altered")}
    with behind_the_triggers(database) as execute:
        execute("UPDATE partner_statuses SET status = 'active' WHERE partner_id = 'northwind'")
        execute("UPDATE plan_versions SET terms = replace(terms, '\"50.00\"', '\"250.00\"')")
    assert problems(database) == {(payout.transaction_id, "payout_unlike_program"), (None, "program_fact_altered")}


def test_a_run_made_after_a_later_dated_one_is_named_though_each_paid_the_balance_as_of_its_instant(
        paid_out, monkeypatch):
    """Runs are made in time order. Past the database's guard of it (a session sending its own SQL
    could race the service's run before migration 0043), a run dated before the latest and made after
    it paid again what the latest paid: the balance as of its own instant, which the latest's payouts,
    dated after it, do not lower. Each run passes alone; verify names the two out of order."""
    database, payout = paid_out  # northwind's 200.00 paid by the run at 2_000
    monkeypatch.setattr(payouts, "_refuse_out_of_order", lambda *args: None)
    with without_trigger(database, "payout_runs", "trg_payout_runs_in_order") as session:
        [again] = payouts.run_payouts(session, 1_500).payouts
    assert (again.partner_id, again.amount_minor) == ("northwind", 20_000)
    assert problems(database) == {(payout.transaction_id, "payout_runs_out_of_order")}


def test_runs_in_turn_are_re_derived_from_the_lines_each_read_those_dated_between_runs_included(enrolled):
    """The balances are summed from run to run (`payouts_rederived.balances_read`): a line posted
    before a run but dated after its instant is the next run's, and every run of a clean book
    verifies clean, each paid what the service paid it."""
    database = enrolled

    def earn(session, partner_id: str, amount_minor: int, at_us: int) -> None:
        payouts.adjust(session, partner_id, "available", amount_minor, "USD", "earned", effective_at_us=at_us)

    with database.transaction() as session:
        partners.create_partner(session, "southwind", "Southwind", "msp", "standard")
        earn(session, "northwind", 20_000, 1_000)
        earn(session, "southwind", 30_000, 1_000)
        earn(session, "northwind", 7_000, 2_500)  # posted before the first run, dated after it
        first = payouts.run_payouts(session, 2_000)
    with database.transaction() as session:
        earn(session, "southwind", 9_000, 2_800)
        earn(session, "northwind", 6_000, 3_500)  # posted before the second run, dated after it
        second = payouts.run_payouts(session, 3_000)
    with database.transaction() as session:
        third = payouts.run_payouts(session, 4_000)
    assert [sorted((payout.partner_id, payout.amount_minor) for payout in run.payouts)
            for run in (first, second, third)] == [
        [("northwind", 20_000), ("southwind", 30_000)], [("northwind", 7_000), ("southwind", 9_000)],
        [("northwind", 6_000)]]
    assert problems(database) == set()
    with behind_the_triggers(database) as execute:  # the last run's payout grown, lines and record alike
        execute(f"UPDATE journal_lines SET amount_minor = 6500 WHERE transaction_id = {third.payouts[0].transaction_id}")
    assert (third.payouts[0].transaction_id, "payout_unlike_balance") in problems(database)


def test_a_payout_of_other_than_the_balance_the_run_read_is_named_and_later_postings_do_not_count(paid_out):
    database, payout = paid_out
    with database.transaction() as session:  # dated before the run, posted after it: not what it read
        payouts.adjust(session, "northwind", "available", 5_000, "USD", "late", effective_at_us=1_500)
    assert problems(database) == set()
    with behind_the_triggers(database) as execute:  # the payout's lines and record grown alike
        execute(f"UPDATE journal_lines SET amount_minor = 25000 WHERE transaction_id = {payout.transaction_id}")
        execute(f"UPDATE payouts SET amount_minor = 25000 WHERE id = {payout.id}")
    found = problems(database)
    assert (payout.transaction_id, "payout_unlike_balance") in found
    assert (payout.transaction_id, "content_altered") in found  # the chain names it too


def test_a_partner_a_run_left_unpaid_though_the_program_as_rewritten_lets_it_be_paid_is_named(
        database, skewed_clock):
    """Only a partner every reading of the program lets the run pay is named: one recorded within
    `RECORDED_SKEW_US` of the run may not have been seen by it, so the program is recorded an hour
    before the run here."""
    skewed_clock.offset_us = -3_600_000_000
    with database.transaction() as session:
        plans.create_plan(session, "standard", "Standard", {
            "rates": [{"from_month": 1, "rate": "0.20"}], "duration_months": None, "hold_days": 30,
            "min_payout": [{"amount": "50.00", "currency": "USD"}], "negative_balance": "carry_forward"})
        for partner_id in ("northwind", "southwind"):
            partners.create_partner(session, partner_id, partner_id.title(), "msp", "standard")
        for partner_id in ("northwind", "southwind"):
            payouts.adjust(session, partner_id, "available", 20_000, "USD", "earned", effective_at_us=1_000)
        partners.set_status(session, "southwind", "suspended", effective_at_us=1_500)
    skewed_clock.offset_us = 0
    with database.transaction() as session:
        run = payouts.run_payouts(session, 2_000)
    assert [payout.partner_id for payout in run.payouts] == ["northwind"] and problems(database) == set()
    with behind_the_triggers(database) as execute:
        execute("UPDATE partner_statuses SET status = 'active' WHERE partner_id = 'southwind'")
    assert problems(database) == {(None, "payout_missing"), (None, "program_fact_altered")}


@pytest.mark.postgres
@pytest.mark.parametrize("change", ["a plan version", "a plan change"])
def test_a_plan_version_or_change_waits_for_a_payout_run_and_is_recorded_after_it_on_postgresql(
        postgres_database, change):
    """`verify` places a program fact among payout runs by the instants each was recorded at: a
    version raising the minimum, recorded before a run but committed after it read the program, was
    taken as seen by the run (`payout_unlike_program`) when the two servers' clocks were minutes
    apart. Program writers record under the journal lock, which a run holds throughout."""
    database = postgres_database
    raised = {**TERMS, "min_payout": [{"amount": "500.00", "currency": "USD"}]}
    with database.transaction() as session:
        plans.create_plan(session, "standard", "Standard", TERMS)
        plans.create_plan(session, "premium", "Premium", raised)
        partners.create_partner(session, "northwind", "Northwind", "msp", "standard")
        payouts.adjust(session, "northwind", "available", 20_000, "USD", "earned", effective_at_us=1_000)
    second = {"a plan version": lambda session: plans.add_version(session, "standard", raised, 1_500),
              "a plan change": lambda session: partners.change_plan(session, "northwind", "premium", 1_500)}[change]
    second_writer_behind_first(database, lambda session: payouts.run_payouts(session, 2_000), second)
    with database.reader() as session:
        run_recorded_us = session.execute(sa.text("SELECT recorded_at_us FROM journal_transactions "
                                                  "WHERE kind = 'payout'")).scalar_one()
        fact_recorded_us = session.execute(sa.text(
            "SELECT max(created_at_us) FROM plan_versions" if change == "a plan version" else
            "SELECT max(recorded_at_us) FROM partner_plans")).scalar_one()
    assert fact_recorded_us > run_recorded_us
    assert problems(database) == set()


def test_a_revenue_event_removed_from_under_its_postings_is_named(booked):
    event = RevenueEvent("evt-1", "invoice_paid", "acme", "inv-9", "USD", 10_000, 1_000)
    with booked.transaction() as session:
        program.enrol(session, "northwind")
        customers.attribute(session, "acme", "northwind", date(1970, 1, 1), "manual")
        [outcome] = revenue.ingest(session, [event])
    assert outcome.status == "posted" and problems(booked) == set()
    with behind_the_triggers(booked) as execute:
        execute("DELETE FROM revenue_events")
    # The postings' request hashes hold the event's (ledger/journal.py): without it, neither matches.
    [posted, *_] = outcome.transaction_ids
    assert problems(booked) == {(posted, "event_missing"), *((tid, "content_altered") for tid in outcome.transaction_ids)}


def test_an_account_altered_from_the_chart_or_outside_it_is_named(booked):
    with behind_the_triggers(booked) as execute:
        execute(f"UPDATE accounts SET partner_id = 'southwind' WHERE name = '{PENDING}'")
        execute("INSERT INTO accounts (name, type, normal_side, partner_id)"
                " VALUES ('liability:partner:ghost:bonus', 'asset', 'D', 'northwind')")
    with booked.reader() as session:
        found = {(p.code, p.message.split("'")[1]) for p in program.verified(session)}
    assert found == {("account_altered", PENDING), ("account_outside_chart", "liability:partner:ghost:bonus")}


@pytest.fixture
def accrued(database):
    """January's and February's invoices for northwind (under globex), January's holds released,
    then a refund that claws back from a piece still held: holds queued, released and clawed."""
    with database.transaction() as session:
        program.seed(session)
        revenue.ingest(session, program.monthly_events(months=2)[:6])
    with database.transaction() as session:
        holds.release_matured(session, program.at("2026-02-15"))
        revenue.ingest(session, [program.paid("e-refund", "acme", "inv-acme-2", 2_500, "2026-02-20", kind="refund")])
    return database


def queued_holds(database) -> list[int]:
    with database.engine.connect() as connection:
        return connection.exec_driver_sql("SELECT accrual_id FROM open_holds ORDER BY accrual_id").scalars().all()


@pytest.fixture(params=[1, 2, verifying.HOLD_INVOICES_PER_READ], ids=lambda n: f"replayed-{n}-at-a-time")
def replayed_at_a_time(request, monkeypatch) -> int:
    """The queued invoices verify replays at a time: one, two, or all of these books' at once."""
    monkeypatch.setattr(verifying, "HOLD_INVOICES_PER_READ", request.param)
    return request.param


def test_a_hold_taken_off_the_queue_behind_the_application_is_named(accrued, replayed_at_a_time):
    assert problems(accrued) == set() and len(queued_holds(accrued)) == 6
    with accrued.engine.begin() as connection:  # allowed to the application: no trigger to pass
        connection.exec_driver_sql(f"DELETE FROM open_holds WHERE accrual_id = {queued_holds(accrued)[0]}")
    with accrued.reader() as session:
        [problem] = verify(session).problems
    assert problem.code == "holds_missing" and problem.message.startswith(f"{PENDING} USD: ")


def test_a_queued_hold_whose_maturity_was_moved_or_that_names_no_accrual_is_named(accrued, replayed_at_a_time):
    first, *_, last = queued_holds(accrued)
    with accrued.engine.connect() as connection:
        release_id = connection.exec_driver_sql("SELECT min(id) FROM journal_transactions WHERE kind = 'release'"
                                                ).scalar_one()
    with behind_the_triggers(accrued) as execute:
        execute(f"UPDATE open_holds SET matures_at_us = 0 WHERE accrual_id = {first}")
        execute(f"UPDATE open_holds SET accrual_id = {release_id} WHERE accrual_id = {last}")
    # the last piece's hold is gone from the queue: what it holds is pending with no hold to release it
    assert problems(accrued) == {(first, "hold_altered"), (release_id, "hold_altered"), (None, "holds_missing")}


def test_a_queued_hold_naming_a_transaction_the_journal_does_not_hold_says_so(accrued):
    missing = 10_000
    with behind_the_triggers(accrued) as execute:
        execute(f"UPDATE open_holds SET accrual_id = {missing} WHERE accrual_id = {queued_holds(accrued)[-1]}")
    with accrued.reader() as session:
        named = [p for p in verify(session).problems if p.code == "hold_altered"]
    assert [(p.transaction_id, p.message.split(", ", 1)[1]) for p in named] == [
        (missing, "but the journal holds no such transaction")]


def test_a_second_cpa_bounty_for_a_customer_is_named(booked):
    with booked.transaction() as session:
        first, second = journal.post(session, [
            journal.transfer("cpa", chart.EXPENSE_COMMISSION, PENDING, "USD", 5_000, effective_at_us=10,
                             idempotency_key=f"cpa-{customer_id}", partner_id="northwind",
                             **{**program.of_an_event(f"cpa-{customer_id}", "northwind"), "customer_id": customer_id})
            for customer_id in ("acme", "globex-corp")])
    assert problems(booked) == set()
    with behind_the_triggers(booked) as execute:
        execute(f"UPDATE journal_transactions SET customer_id = 'acme' WHERE id = {second.id}")
    assert problems(booked) == {(second.id, "content_altered"), (second.id, "cpa_twice")}
    assert first.id < second.id


def test_the_newest_close_removed_behind_the_triggers_is_named_given_the_close_recorded(accrued):
    with accrued.transaction() as session:
        periods.close_period(session, "2026-01")
    with accrued.reader() as session:
        report = verify(session)
    assert report.ok and report.latest_close[0] == "2026-01"
    with behind_the_triggers(accrued) as execute:
        for table in ("statement_bodies", "statement_documents", "period_snapshots", "period_closes"):
            execute(f"DELETE FROM {table} WHERE period = '2026-01'")
    with accrued.reader() as session:
        assert verify(session).ok  # a shorter chain of closes (none) is whole: only the record tells
        found = verify(session, close=report.latest_close)
    assert [(p.code, p.message.split(",")[0]) for p in found.problems] == [
        ("close_missing", "the books hold no close of 2026-01")]


def a_clawback(database) -> tuple[int, int, int]:
    """(clawback id, its piece's id, the piece's amount) of the refund `accrued` posted."""
    with database.engine.connect() as connection:
        return connection.exec_driver_sql(
            "SELECT c.id, c.accrual_id, l.amount_minor FROM journal_transactions c"
            " JOIN journal_lines l ON l.transaction_id = c.accrual_id AND l.side = 'C'"
            " WHERE c.kind = 'clawback' ORDER BY c.id LIMIT 1").one()


def test_a_clawback_grown_past_its_piece_is_named(accrued):
    clawback_id, piece_id, amount = a_clawback(accrued)
    with behind_the_triggers(accrued) as execute:
        execute(f"UPDATE journal_lines SET amount_minor = {amount + 1} WHERE transaction_id = {clawback_id}")
    found = problems(accrued)
    assert {(clawback_id, "content_altered"), (piece_id, "piece_overdrawn")} <= found
    assert not any(code == "piece_link_broken" for _, code in found)


def test_a_piece_released_twice_is_named(accrued):
    with accrued.engine.connect() as connection:
        first, second = connection.exec_driver_sql(
            "SELECT id, accrual_id FROM journal_transactions WHERE kind = 'release' ORDER BY id LIMIT 2").all()
    with behind_the_triggers(accrued) as execute:  # the second release now names the first's piece
        execute(f"UPDATE journal_transactions SET accrual_id = {first[1]} WHERE id = {second[0]}")
    assert (first[1], "piece_overdrawn") in problems(accrued)


@pytest.mark.parametrize("names", ["a release", "nothing", "another partner's accrual"])
def test_a_clawback_that_names_no_standing_piece_of_its_partner_is_named(accrued, names):
    clawback_id, piece_id, _ = a_clawback(accrued)
    with accrued.engine.connect() as connection:
        other = {"a release": "(SELECT min(id) FROM journal_transactions WHERE kind = 'release')",
                 "nothing": "NULL",
                 "another partner's accrual": "(SELECT min(id) FROM journal_transactions WHERE kind = 'override')"}
        target = connection.exec_driver_sql(f"SELECT {other[names]}").scalar()
    with behind_the_triggers(accrued) as execute:
        execute(f"UPDATE journal_transactions SET accrual_id = {'NULL' if target is None else target}"
                f" WHERE id = {clawback_id}")
    assert (clawback_id, "piece_link_broken") in problems(accrued)


def test_a_clawback_that_stands_against_a_reversed_piece_is_named(accrued):
    clawback_id, piece_id, _ = a_clawback(accrued)
    with accrued.transaction() as session:  # reversing the piece reverses its clawback first
        reversals.reverse(session, piece_id, reason="posted in error")
    assert problems(accrued) == set()
    with behind_the_triggers(accrued) as execute:
        execute(f"DELETE FROM journal_transactions WHERE reverses_id = {clawback_id}")
    assert (clawback_id, "piece_link_broken") in problems(accrued)


def test_a_payout_posting_with_no_payout_record_is_named(paid_out):
    database, payout = paid_out
    with behind_the_triggers(database) as execute:
        execute(f"DELETE FROM payouts WHERE id = {payout.id}")
    # and the row that asked for the record (`payout_records_due`) names one that is gone
    assert problems(database) == {(payout.transaction_id, "payout_unrecorded"), (None, "reference_broken")}


@pytest.mark.parametrize("altered", ["its invoice", "the partner it debits"])
def test_a_clawback_moved_off_its_piece_is_named(accrued, altered):
    clawback_id, _, _ = a_clawback(accrued)
    with accrued.engine.connect() as connection:
        globex_pending = connection.exec_driver_sql(
            f"SELECT id FROM accounts WHERE name = '{chart.pending('globex')}'").scalar_one()
    with behind_the_triggers(accrued) as execute:
        execute({"its invoice": f"UPDATE journal_transactions SET invoice_id = 'inv-other' WHERE id = {clawback_id}",
                 "the partner it debits": f"UPDATE journal_lines SET account_id = {globex_pending}"
                                          f" WHERE transaction_id = {clawback_id} AND side = 'D'"}[altered])
    assert (clawback_id, "piece_link_broken") in problems(accrued)


def test_a_head_recorded_before_later_postings_still_verifies(booked):
    with booked.reader() as session:
        before = verify(session)
    with booked.transaction() as session:
        journal.post(session, [journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 700,
                                                effective_at_us=9, idempotency_key="later", partner_id="northwind",
                                                **program.of_an_event("later", "northwind"))])
    assert problems_with_head(booked, (before.head_id, before.chain_head)) == set()
    assert problems_with_head(booked, (before.head_id - 1, before.chain_head)) == {(4, "head_rewritten")}


def test_a_transaction_left_with_one_line_is_named(booked):
    with behind_the_triggers(booked) as execute:
        execute("DELETE FROM journal_lines WHERE transaction_id = 3 AND side = 'D'")
    assert problems(booked) == {(3, "too_few_lines"), (3, "content_altered"), (3, "unbalanced"),
                                (None, "totals_mismatch")}


def test_a_line_moved_to_another_instant_than_its_transaction_is_named(booked):
    with behind_the_triggers(booked) as execute:  # still before the account's latest line: totals unchanged
        execute("UPDATE journal_lines SET effective_at_us = 3 WHERE transaction_id = 2 AND side = 'C'")
    assert problems(booked) == {(2, "line_instant_mismatch")}


def test_a_line_amount_of_zero_is_named(sqlite_database):
    with sqlite_database.transaction() as session:
        program.enrol(session, "northwind")
        journal.post(session, [journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 100,
                                                effective_at_us=5, idempotency_key="a", partner_id="northwind",
                                                **program.of_an_event("a", "northwind"))])
    with behind_the_triggers(sqlite_database) as execute:  # and past the CHECK constraint, as the file's owner can
        execute("PRAGMA ignore_check_constraints = ON")
        execute("UPDATE journal_lines SET amount_minor = 0 WHERE transaction_id = 1")
    assert problems(sqlite_database) == {(1, "amount_not_positive"), (1, "content_altered"),
                                         (None, "totals_mismatch"), (None, "row_against_its_constraints")}


@pytest.mark.parametrize("altered", ["partner_id = 'southwind'", "amount_minor = 100000", "currency = 'EUR'"],
                         ids=["partner", "amount", "currency"])
def test_a_payout_record_altered_in_any_one_field_from_its_posting_is_named(paid_out, altered):
    database, payout = paid_out
    with behind_the_triggers(database) as execute:
        execute(f"UPDATE payouts SET {altered} WHERE id = {payout.id}")
    assert problems(database) == {(payout.transaction_id, "payout_mismatch")}


def test_a_payout_record_moved_onto_a_transaction_that_is_no_payout_is_named(paid_out):
    database, payout = paid_out  # the adjustment that made the balance: its partner, debits and currency
    with database.engine.connect() as connection:
        adjustment_id = connection.exec_driver_sql(
            "SELECT id FROM journal_transactions WHERE kind = 'adjustment'").scalar_one()
    with behind_the_triggers(database) as execute:
        execute(f"UPDATE payouts SET transaction_id = {adjustment_id} WHERE id = {payout.id}")
    assert problems(database) == {(adjustment_id, "payout_mismatch"), (payout.transaction_id, "payout_unrecorded"),
                                  (None, "reference_broken")}  # `payout_records_due` names the posting's record


@pytest.mark.parametrize("tampered", ["UPDATE payout_runs SET at_us = 1500", "DELETE FROM payout_runs"],
                         ids=["moved_back", "removed"])
def test_a_payout_run_moved_back_or_removed_so_that_an_earlier_run_would_pay_the_same_balance_again_is_named(
        paid_out, tampered):
    # The database keeps runs in time order by the latest run's instant (migration 0012), which no
    # hash covers: moved back to 1500, the run at 2000 lets a run at 1800 pay northwind's 200.00 again.
    database, payout = paid_out
    with behind_the_triggers(database) as execute:
        execute(tampered)
    removed = {(None, "reference_broken")} if tampered.startswith("DELETE") else set()  # its payouts name it
    assert problems(database) == {(payout.transaction_id, "payout_run_mismatch"), *removed}
    if tampered.startswith("UPDATE"):
        with database.transaction() as session:
            [again] = payouts.run_payouts(session, 1_800).payouts
        assert again.amount_minor == payout.amount_minor == 20_000
        assert (payout.transaction_id, "payout_run_mismatch") in problems(database)


def test_a_resolution_of_a_payout_whose_record_was_removed_is_named(paid_out):
    database, payout = paid_out
    with database.transaction() as session:
        settled = payouts.settle(session, payout.id)
    with behind_the_triggers(database) as execute:
        execute(f"DELETE FROM payout_resolutions WHERE payout_id = {payout.id}")
        execute(f"DELETE FROM payouts WHERE id = {payout.id}")
    with database.reader() as session:
        found = verify(session).problems
    assert {(p.transaction_id, p.code) for p in found} == {
        (settled.resolution_transaction_id, "payout_resolution_mismatch"), (payout.transaction_id, "payout_unrecorded"),
        (None, "reference_broken")}  # what asked for the two records names them still
    assert f"resolves payout {payout.id}, which does not exist" in {p.message for p in found}


def test_a_posting_of_a_resolutions_kind_made_by_hand_resolves_no_payout(paid_out):
    """Written before migration 0030, which refuses a resolution posting without its record."""
    database, payout = paid_out
    with unlisted_resolutions(database) as session:  # keyed otherwise than `{kind}:{payout id}`: no payout's
        journal.post(session, [journal.transfer(
            "payout_settled", chart.PAYOUTS_IN_TRANSIT, chart.CASH, "USD", 1, effective_at_us=3_000,
            idempotency_key=f"correction:{payout.id}", partner_id="northwind")])
    assert problems(database) == set()


def test_a_payout_failed_by_reversing_its_posting_then_settled_names_the_later_resolution(paid_out):
    database, payout = paid_out
    with database.transaction() as session:
        failed_by = reversals.reverse(session, payout.transaction_id, reason="bank rejected it").id
    assert problems(database) == set()  # the reversal of its posting failed it, as its record has it
    with behind_the_triggers(database) as execute:  # its record gone, the payout looks pending again
        execute(f"DELETE FROM payout_resolutions WHERE payout_id = {payout.id}")
    with database.transaction() as session:
        settled = payouts.settle(session, payout.id)
    with database.reader() as session:
        found = verify(session).problems
    # and the row that asked for the record removed (`payout_resolutions_due`) names it no more
    assert sorted((problem.code, problem.transaction_id) for problem in found) == [
        ("payout_resolved_twice", settled.resolution_transaction_id), ("reference_broken", None)], found
    assert failed_by < settled.resolution_transaction_id


CHAIN_HASH_FIELDS = [
    pytest.param(["UPDATE journal_transactions SET recorded_at_us = recorded_at_us + 1 WHERE id = 2"],
                 {(2, "hash_mismatch")}, id="recorded instant"),
    pytest.param(["UPDATE journal_transactions SET effective_at_us = 2 WHERE id = 2"],
                 {(2, "hash_mismatch"), (2, "content_altered"), (2, "line_instant_mismatch")}, id="effective instant"),
    pytest.param(["UPDATE journal_transactions SET original_effective_at_us = 0 WHERE id = 2"],
                 {(2, "hash_mismatch"), (2, "content_altered")}, id="requested instant"),
    pytest.param(["UPDATE journal_transactions SET prev_hash = (SELECT hash FROM journal_transactions WHERE id = 1)"
                  " WHERE id = 3"],
                 {(3, "hash_mismatch"), (3, "chain_broken")}, id="previous hash"),
    pytest.param(["UPDATE journal_lines SET transaction_id = 6 WHERE transaction_id = 5",
                  "UPDATE journal_transactions SET id = 6 WHERE id = 5"],
                 {(6, "hash_mismatch"), (6, "sequence_gap")}, id="id"),
    pytest.param(["UPDATE journal_transactions SET salt = '00000000000000000000000000000000' WHERE id = 2"],
                 {(2, "hash_mismatch")}, id="salt"),
    pytest.param(["UPDATE journal_transactions SET salt = NULL WHERE id = 2"], {(2, "hash_mismatch")}, id="salt removed"),
]


@pytest.mark.parametrize(("statements", "expected"), CHAIN_HASH_FIELDS)
def test_each_field_the_chain_hash_covers_altered_alone_is_a_hash_mismatch(booked, statements, expected):
    with behind_the_triggers(booked) as execute:
        for statement in statements:
            execute(statement)
    assert problems(booked) == expected


AVAILABLE = chart.available("northwind")


def of_the_pieces_invoice(key: str = "pieces") -> dict[str, str]:
    """The event, invoice and customer of a posting of `two_pieces`' invoice: its payment, which both
    pieces name (`pieces-event`), or, given a key, a refund of it (`{key}-event`)."""
    return {**program.of_an_event(key, "northwind"), "invoice_id": "pieces-invoice"}


def against(kind: str, piece: int, amount: int, key: str, *, from_account: str = PENDING) -> journal.Draft:
    """A clawback (to the expense account, of a refund of the pieces' invoice) or a release (to
    available) of northwind's `piece`."""
    to_account = chart.EXPENSE_COMMISSION if kind == "clawback" else AVAILABLE
    links = of_the_pieces_invoice(key)
    if kind != "clawback":  # a release names its piece's invoice, and no event
        links = {"invoice_id": links["invoice_id"]}
    return journal.transfer(kind, from_account, to_account, "USD", amount, effective_at_us=10, idempotency_key=key,
                            partner_id="northwind", accrual_id=piece, **links)


@pytest.fixture
def two_pieces(database):
    """1 and 2: northwind's accruals of 100 USD each, of one invoice, with nothing against them yet."""
    with database.transaction() as session:
        program.enrol(session, "northwind")
        journal.post(session, [journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 100,
                                                effective_at_us=5, idempotency_key=f"a{i}", partner_id="northwind",
                                                **of_the_pieces_invoice())
                               for i in (1, 2)])
    return database


def test_a_piece_clawed_back_whole_again_after_its_clawback_was_reversed_is_within_its_amount(two_pieces):
    with two_pieces.transaction() as session:
        [clawback] = journal.post(session, [against("clawback", 1, 100, "c1")])
    assert problems(two_pieces) == set()  # the whole piece clawed back: within it
    with two_pieces.transaction() as session:
        journal.reverse(session, clawback.id, reason="refund reversed")
        journal.post(session, [against("clawback", 1, 100, "c2")])
    assert problems(two_pieces) == set()  # the reversed clawback no longer counts


def test_a_release_grown_past_what_a_clawback_from_pending_left_is_named(two_pieces):
    with two_pieces.transaction() as session:
        _, release = journal.post(session, [against("clawback", 1, 30, "c1"), against("release", 1, 70, "r1")])
    assert problems(two_pieces) == set()
    with behind_the_triggers(two_pieces) as execute:
        execute(f"UPDATE journal_lines SET amount_minor = 71 WHERE transaction_id = {release.id}")
    assert (1, "piece_overdrawn") in problems(two_pieces)


def test_a_second_release_of_a_piece_is_named_though_both_stay_within_its_amount(two_pieces):
    with two_pieces.transaction() as session:
        _, second = journal.post(session, [against("release", 1, 40, "r1"), against("release", 2, 40, "r2")])
    assert problems(two_pieces) == set()
    with behind_the_triggers(two_pieces) as execute:
        execute(f"UPDATE journal_transactions SET accrual_id = 1 WHERE id = {second.id}")
    assert problems(two_pieces) == {(second.id, "content_altered"), (1, "piece_overdrawn")}


def test_a_neighbours_content_cannot_be_checked_against_the_hashes_a_partner_reads(booked):
    """A partner reads the hashes of its own transactions, and can nearly name a neighbouring
    posting of another partner; the chain hash also covers a salt that is never shown, so no guess
    of the neighbour's content, even the right one, reproduces its hash."""
    with booked.reader() as session:
        rows = session.execute(sa.text("SELECT id, prev_hash, hash, recorded_at_us, effective_at_us,"
                                       " original_effective_at_us, request_hash, salt FROM journal_transactions"
                                       " ORDER BY id")).all()
    assert len(rows) >= 3 and len({row.salt for row in rows}) == len(rows)
    for row in rows:
        assert row.salt is not None and len(row.salt) == 32
        known = (row.prev_hash, row.id, row.recorded_at_us, row.effective_at_us, row.original_effective_at_us,
                 row.request_hash)  # the right guess of everything but the salt
        assert journal.chain_hash(*known, row.salt) == row.hash
        assert journal.chain_hash(*known, None) != row.hash


@pytest.mark.usefixtures("closed_before_bodies")  # closes made at an earlier revision
def test_rows_written_before_migration_0031_that_break_its_posting_rules_are_named_and_the_service_s_are_not(empty_url):
    """Migration 0031 leaves rows already written as they are: verify names an adjustment naming no
    partner, one between cash and a partner, one without a reason, and a posting for a partner never
    enrolled; not the adjustment, accrual and run the service made beside them."""
    from ledger.db import Database
    from ledger.migrate import upgrade

    upgrade(empty_url, "0030")
    database = Database(empty_url)
    try:
        january_us = program.at("2026-01-05")
        with database.transaction() as session:
            program.enrol(session, "northwind")
            posted = journal.post(session, [
                journal.transfer("adjustment", chart.EXPENSE_ADJUSTMENT, PENDING, "USD", 100, memo="goodwill",
                                 effective_at_us=january_us, idempotency_key="no-partner"),
                journal.transfer("adjustment", chart.CASH, PENDING, "USD", 100, memo="goodwill",
                                 effective_at_us=january_us, idempotency_key="from-cash", partner_id="northwind"),
                journal.transfer("adjustment", chart.EXPENSE_ADJUSTMENT, PENDING, "USD", 100,
                                 effective_at_us=january_us, idempotency_key="no-reason", partner_id="northwind"),
                journal.transfer("accrual", chart.EXPENSE_COMMISSION, chart.pending("ghost"), "USD", 100,
                                 effective_at_us=january_us, idempotency_key="ghost", partner_id="ghost",
                                 **program.of_an_event("ghost", "ghost")),
                journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, "USD", 100,
                                 effective_at_us=january_us, idempotency_key="enrolled", partner_id="northwind",
                                 **program.of_an_event("enrolled", "northwind"))])
            kept = payouts.adjust(session, "northwind", "available", -40, "USD", "overpaid", effective_at_us=january_us)
            payouts.run_payouts(session, program.at("2026-01-06"))
        with database.transaction() as session:
            periods.close_period(session, "2026-01")
        upgrade(empty_url)
        assert problems(database) == {(posted[0].id, "adjustment_misposted"), (posted[1].id, "adjustment_misposted"),
                                      (posted[2].id, "adjustment_misposted"), (posted[3].id, "partner_not_enrolled")}
        assert kept.id not in {transaction_id for transaction_id, _ in problems(database)}
    finally:
        database.dispose()


def test_rows_naming_an_account_the_books_no_longer_hold_are_named_and_every_check_runs(booked):
    # A restore of the data that left the chart of accounts out (pg_restore goes on past the errors)
    # or a key dropped: verify read a close's snapshot by account name and stopped on a KeyError.
    with booked.transaction() as session:
        periods.close_period(session, "1970-01", now_us=program.at("1970-02-01"))
    with behind_the_triggers(booked) as execute:
        execute(f"DELETE FROM accounts WHERE name = '{PENDING}'")
    with booked.reader() as session:
        report = verify(session)
    broken = sorted(problem.message for problem in report.problems if problem.code == "reference_broken")
    assert broken == [
        "account_totals (account_id): 1 row names a row of accounts that does not exist, the least 2",
        "journal_lines (account_id): 5 rows name a row of accounts that does not exist, the least 2",
        "period_snapshots (account_id): 1 row names a row of accounts that does not exist, the least 2"], broken
    assert not report.ok and "guard_missing" not in {problem.code for problem in report.problems}
