"""A partner's status or plan change, a plan's version (not its first) or a customer's attribution,
dated ahead, can be withdrawn before it starts (`ledger.withdrawals`, migrations 0040 and 0041): in
Python, and in the database whoever writes the row.
The fact leaves its table, the withdrawal keeps it, and every reader (the posting path, `verify`)
reads the program as if it had never been recorded, but `verify`'s judging of a payment's
`unattributed`, which reads a withdrawn attribution as standing until it was withdrawn."""

import pytest
import sqlalchemy as sa

from ledger import accounts as chart
from ledger import customers, journal, partners, plans
from ledger.errors import Conflict, NotFound
from ledger.instants import format_instant
from ledger.journal import now_us
from ledger.customers import AttributionIndex
from ledger.db import driver_results
from ledger.partners import program_for
from ledger.recorded_program import RECORDED_SKEW_US
from ledger.verify import verify
from tests.integration.conftest import second_writer_behind_first
from tests.integration.test_tamper_evidence import behind_the_triggers
from tests.scenarios.books import Books, ahead, at, terms
from tests.integration.conftest import chain_due

MINUTE_US = 60 * 1_000_000


@pytest.fixture
def books(database) -> Books:
    books = Books(database)
    books.plan("standard", "0.20", hold_days=0)
    books.plan("premium", "0.30", hold_days=0)
    books.partner("northwind", "standard")
    books.partner("contoso", "standard")
    books.attribute("acme", "northwind", "2026-01-01")
    books.paid("acme", "inv-1", "100.00", "2026-02-01")
    return books


def revision(books: Books) -> int:
    [(found,)] = books.sql("SELECT revision FROM program_revision")
    return found


def test_a_termination_scheduled_for_a_contract_end_is_withdrawn_and_the_partner_goes_on(books):
    ends = ahead(60)  # one reading of the date: a test run across midnight reads it once
    books.status("northwind", "terminated", ends)
    with pytest.raises(Conflict, match="termination is final.*can be withdrawn"):
        books.status("northwind", "suspended", ahead(90))
    [change] = books.scheduled("northwind")
    assert (change.status, change.starts_us) == ("terminated", at(ends))
    with books.database.reader() as session:
        assert program_for(session, ["northwind"]).status_at("northwind", at(ends) + 1) == "terminated"
    before = revision(books)
    partner = books.withdraw_change("northwind", change.id)
    assert partner.scheduled == () and partner.status == "active"
    assert revision(books) > before  # every process reads the program anew
    assert books.sql("SELECT count(*) FROM partner_statuses WHERE status = 'terminated'") == [(0,)]
    assert books.sql("SELECT fact_table, subject_id, value, starts_us FROM program_withdrawals") == [
        ("partner_statuses", "northwind", "terminated", at(ends))]
    with books.database.reader() as session:  # what a posting dated after it would be decided by
        assert program_for(session, ["northwind"]).status_at("northwind", at(ends) + 1) == "active"
    # What the termination refused is accepted: a later status, an attribution after its date.
    books.status("northwind", "suspended", ahead(90))
    books.attribute("globex", "northwind", ahead(61))  # migration 0025 refused it
    # The same withdrawal asked again changes nothing.
    assert books.withdraw_change("northwind", change.id).scheduled == books.scheduled("northwind")
    assert books.sql("SELECT count(*) FROM program_withdrawals") == [(1,)]
    assert books.verified()


def test_a_plan_change_is_withdrawn_and_an_earlier_one_recorded_in_its_place(books):
    books.change_plan("northwind", "premium", ahead(200))
    with pytest.raises(Conflict, match="must start after the latest one.*can be withdrawn"):
        books.change_plan("northwind", "premium", ahead(30))
    [change] = books.scheduled("northwind")
    assert change.plan_id == "premium" and change.id.startswith("plan-")
    books.withdraw_change("northwind", change.id)
    books.change_plan("northwind", "premium", ahead(30))
    [now_scheduled] = books.scheduled("northwind")
    assert now_scheduled.starts_us == at(ahead(30)) and now_scheduled.id != change.id
    assert books.verified()


def test_a_change_id_names_one_change_of_one_partner_for_good(books):
    books.status("northwind", "suspended", ahead(10))
    [change] = books.scheduled("northwind")
    with pytest.raises(NotFound, match="has no change"):
        books.withdraw_change("contoso", change.id)  # another partner's
    for bad in ("status-0", "status-x", "plan", "", change.id.replace("status", "plan")):
        with pytest.raises(NotFound):
            books.withdraw_change("northwind", bad)
    books.withdraw_change("northwind", change.id)
    books.status("northwind", "suspended", ahead(20))  # SQLite would give the largest id again
    [again] = books.scheduled("northwind")
    assert again.id != change.id
    books.withdraw_change("northwind", change.id)  # a retry of the first withdrawal: the new change stays
    assert books.scheduled("northwind") == (again,)


def test_a_change_is_withdrawn_only_while_it_starts_more_than_fifteen_minutes_ahead(books):
    # 14 minutes: the database would take it (more than ten), the service asks for fifteen, so that a
    # server whose clock is five minutes behind the database's is refused by the service alone.
    with books.database.transaction() as session:
        soon = partners.set_status(session, "northwind", "suspended", now_us() + 14 * MINUTE_US).scheduled[0]
    with pytest.raises(Conflict, match="starts at .* more than fifteen minutes ahead"):
        books.withdraw_change("northwind", soon.id)
    [(enrolment,)] = books.sql("SELECT id FROM partner_plans WHERE partner_id = 'northwind'")
    with pytest.raises(Conflict, match="started at .* more than fifteen minutes ahead"):
        books.withdraw_change("northwind", f"plan-{enrolment}")
    assert books.sql("SELECT count(*) FROM program_withdrawals") == [(0,)]


def test_a_plan_version_is_withdrawn_its_number_is_not_given_again_and_the_first_stays(books):
    books.plan_version("standard", ahead(40), "0.25")
    before = revision(books)
    with books.database.transaction() as session:
        plan = plans.withdraw_version(session, "standard", 2)
    assert [v.version for v in plan.versions] == [1]
    assert [(w.version, w.effective_from_us) for w in plan.withdrawn] == [(2, at(ahead(40)))]
    assert revision(books) > before
    books.plan_version("standard", ahead(20), "0.22")  # before the withdrawn one's start
    with books.database.reader() as session:
        plan = plans.get_plan(session, "standard")
    assert [(v.version, v.effective_from_us) for v in plan.versions] == [(1, 0), (3, at(ahead(20)))]
    assert books.withdraw_version("standard", 2) == plan  # asked again: nothing changes
    with pytest.raises(Conflict, match="keeps its first version"):
        books.withdraw_version("standard", 1)
    with pytest.raises(NotFound, match="has no version 4"):
        books.withdraw_version("standard", 4)
    with pytest.raises(NotFound):
        books.withdraw_version("nobody", 2)
    assert books.verified()


def test_a_process_s_shared_program_forgets_a_withdrawn_fact(books):
    books.change_plan("northwind", "premium", ahead(50))
    with books.database.reader() as session:
        shared = program_for(session, ["northwind"])
        assert shared.plans["northwind"].at(at(ahead(51))) == "premium"
    books.withdraw_change("northwind", books.scheduled("northwind")[0].id)
    with books.database.reader() as session:
        assert program_for(session, ["northwind"]).plans["northwind"].at(at(ahead(51))) == "standard"


# ---- the database's own rules, Python bypassed ----

WITHDRAWAL = ("INSERT INTO program_withdrawals (fact_table, fact_id, subject_id, starts_us, value, detail,"
              " fact_recorded_at_us, recorded_at_us) SELECT '{table}', f.id, f.{subject}, f.{start}, {value}, {detail},"
              " f.{recorded}, :rec FROM {table} f WHERE f.id = :id")
STATUS = WITHDRAWAL.format(table="partner_statuses", subject="partner_id", start="effective_at_us", value="f.status",
                           detail="NULL", recorded="recorded_at_us")
VERSION = WITHDRAWAL.format(table="plan_versions", subject="plan_id", start="effective_from_us",
                            value="CAST(f.version AS TEXT)", detail="f.terms", recorded="created_at_us")


def refused(books: Books, statement: str, match: str, **params) -> None:
    with pytest.raises(sa.exc.DBAPIError, match=match):
        accepted(books, statement, **params)


def accepted(books: Books, statement: str, **params) -> None:
    """`statement` run around Python; a withdrawal's `:rec` (when it was recorded) is now unless given."""
    if ":rec" in statement:
        params.setdefault("rec", now_us())
    with books.database.engine.begin() as connection:
        connection.execute(sa.text(statement), params)
        chain_due(connection)  # a fact written past Python, chained as the service chains its own


def status_id(books: Books, partner_id: str, status: str) -> int:
    [(found,)] = books.sql("SELECT id FROM partner_statuses WHERE partner_id = :p AND status = :s",
                           p=partner_id, s=status)
    return found


def test_the_database_removes_a_fact_only_by_a_withdrawal_of_it_as_it_stands_before_it_starts(books):
    books.status("northwind", "suspended", ahead(30))
    scheduled = status_id(books, "northwind", "suspended")
    started = status_id(books, "contoso", "active")
    for table in ("partner_statuses", "partner_plans", "plan_versions"):
        refused(books, f"DELETE FROM {table}", f"{table} is append-only: DELETE refused")
    refused(books, "DELETE FROM partner_statuses WHERE id = :id", "append-only", id=scheduled)
    refused(books, STATUS, "withdrawn only while it starts more than ten minutes ahead", id=started)
    refused(books, STATUS, "recorded within five minutes of the database clock", id=scheduled,
            rec=now_us() - 6 * MINUTE_US)
    refused(books, STATUS.replace("f.status,", "'terminated',"), "a withdrawal names a fact as it stands", id=scheduled)
    refused(books, STATUS.replace("f.effective_at_us,", "f.effective_at_us + 1,"), "as it stands", id=scheduled)
    refused(books, STATUS.replace("f.partner_id,", "'contoso',"), "as it stands", id=scheduled)
    refused(books, STATUS.replace("'partner_statuses', f.id", "'partner_plans', f.id"), "as it stands", id=scheduled)
    refused(books, STATUS.replace("NULL,", "'{}',"), "as it stands", id=scheduled)
    before = revision(books)
    accepted(books, STATUS, id=scheduled)
    assert books.sql("SELECT count(*) FROM partner_statuses WHERE id = :id", id=scheduled) == [(0,)]
    assert revision(books) > before
    for statement in ("UPDATE program_withdrawals SET value = 'active'", "DELETE FROM program_withdrawals"):
        refused(books, statement, "program_withdrawals is append-only")
    # The withdrawn id is not given again.
    refused(books, "INSERT INTO partner_statuses (id, partner_id, status, effective_at_us, recorded_at_us)"
                   " VALUES (:id, 'northwind', 'suspended', :at, :rec)",
            "the id of a fact withdrawn is not given again", id=scheduled, at=at(ahead(31)))


def test_the_database_keeps_a_plan_s_first_version_and_numbers_versions_after_the_withdrawn(books):
    books.plan("later", "0.10")
    with books.database.transaction() as session:  # a plan whose first version starts ahead
        plans.create_plan(session, "future", "Future", terms("0.10"), at(ahead(30)))
    [(first,)] = books.sql("SELECT id FROM plan_versions WHERE plan_id = 'future'")
    refused(books, VERSION, "a plan keeps its first version", id=first)
    second = books.plan_version("later", ahead(30))
    accepted(books, VERSION, id=second)
    numbered = ("INSERT INTO plan_versions (id, plan_id, version, effective_from_us, terms, created_at_us)"
                " SELECT (SELECT max(w.fact_id) + 100 FROM program_withdrawals w), 'later', :version, :at, terms, :rec"
                " FROM plan_versions WHERE plan_id = 'later'")  # an id above the withdrawn (SQLite gives it again)
    refused(books, numbered, "versions are numbered in turn", version=2, at=at(ahead(31)), rec=now_us())
    accepted(books, numbered, version=3, at=at(ahead(31)), rec=now_us())


def test_a_customer_s_move_called_off_is_withdrawn_and_its_first_partner_earns_on(books):
    books.attribute("acme", "contoso", ahead(30), replace=True)
    with books.database.reader() as session:
        moved = customers.get_customer(session, "acme").attributions[-1]
    with books.database.transaction() as session:
        customer = customers.withdraw_attribution(session, "acme", moved.id)
    assert [(a.partner_id, a.effective_to_us) for a in customer.attributions] == [("northwind", None)]
    assert books.sql("SELECT value, detail FROM program_withdrawals WHERE fact_table = 'attributions'") == [
        ("contoso", "deal_registration")]
    with books.database.reader() as session:  # what a payment dated after its start would be decided by
        index = AttributionIndex(driver_results(session, AttributionIndex.statements(session, ["acme"])))
    assert index.at("acme", moved.effective_from_us + 1)[1] == "northwind"
    books.attribute("acme", "contoso", ahead(10), replace=True)  # sooner than the move withdrawn
    assert books.verified()


def test_the_database_takes_a_customer_s_first_and_only_attribution_withdrawn(books):
    books.attribute("globex", "northwind", ahead(30))
    books.attribute("globex", "contoso", ahead(40), replace=True)
    [(first,), (moved,)] = books.sql("SELECT id FROM attributions WHERE customer_id = 'globex' ORDER BY id")
    attribution = WITHDRAWAL.format(table="attributions", subject="customer_id", start="effective_from_us",
                                    value="f.partner_id", detail="f.source", recorded="recorded_at_us")
    refused(books, attribution.replace("f.source,", "'import',"), "as it stands", id=first)
    refused(books, "DELETE FROM attributions WHERE id = :id", "attributions is append-only", id=first)
    before = revision(books)
    accepted(books, attribution, id=first)  # migration 0040 kept it
    assert books.sql("SELECT partner_id FROM attributions WHERE customer_id = 'globex'") == [("contoso",)]
    accepted(books, attribution, id=moved)
    assert books.sql("SELECT count(*) FROM attributions WHERE customer_id = 'globex'") == [(0,)]
    assert books.sql("SELECT count(*) FROM customers WHERE id = 'globex'") == [(1,)]
    assert revision(books) == before  # attributions are read by each batch, not kept by a process
    assert books.verified()


def test_a_fact_a_posting_may_have_read_is_not_withdrawn_whatever_the_clocks(books, skewed_clock):
    """Each server's clock within five minutes of the database's: one ahead posts a payment dated
    after a plan change that starts eight minutes ahead, which one behind must not withdraw. A
    server further ahead than that posts after a change twenty minutes ahead: neither the service
    nor a writer around it may withdraw it then."""
    plan = WITHDRAWAL.format(table="partner_plans", subject="partner_id", start="effective_from_us",
                             value="f.plan_id", detail="NULL", recorded="recorded_at_us")
    for starts, fast, slow, refusal in ((now_us() + 8 * MINUTE_US, 299, -299, "more than fifteen minutes ahead"),
                                        (now_us() + 20 * MINUTE_US, 19 * 60, 0, "a posting is dated at or after it")):
        skewed_clock.offset_us = 0
        with books.database.transaction() as session:
            change = partners.change_plan(session, "northwind", "premium", starts).scheduled[-1]
        skewed_clock.offset_us = fast * 1_000_000
        paid = books.paid("acme", f"inv-{fast}", "100.00", format_instant(starts + MINUTE_US))
        assert paid.commissions[0].amount_minor == 3_000  # at premium's 30%: the change decided it
        skewed_clock.offset_us = slow * 1_000_000
        with pytest.raises(Conflict, match=refusal):
            books.withdraw_change("northwind", change.id)
        refused(books, plan, "no posting could have read it", id=int(change.id.split("-")[1]))
        assert change in books.scheduled("northwind")
        with books.database.transaction() as session:  # the next round's change starts after this one
            partners.change_plan(session, "northwind", "standard", starts + 2 * MINUTE_US)
    skewed_clock.offset_us = 0
    assert books.verified()


def test_a_version_a_transaction_pins_is_not_withdrawn(books):
    version = books.plan_version("standard", ahead(30), "0.25")
    with books.database.transaction() as session:  # a posting that names it, made around the revenue path
        journal.post(session, [journal.transfer(
            "adjustment", chart.EXPENSE_ADJUSTMENT, chart.available("northwind"), "USD", 100, effective_at_us=now_us(),
            idempotency_key="pins-version-2", partner_id="northwind", memo="pins version 2",
            plan_version_id=version)])
    with pytest.raises(Conflict, match="or pins it"):
        books.withdraw_version("standard", 2)
    refused(books, VERSION, "no posting could have read it", id=version)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_raw_withdrawal_sent_while_a_posting_pins_the_version_waits_for_it_and_is_refused(books):
    """PostgreSQL: a withdrawal sent as SQL of its own while a posting naming the version is made:
    it takes the program's lock and then the journal's (migration 0043), waits for the posting, and
    meets it. It took neither, read no posting naming the version, and both committed: a
    transaction naming a version that no longer exists."""
    version = books.plan_version("standard", ahead(30), "0.25")

    def pin(session) -> None:
        journal.post(session, [journal.transfer(
            "adjustment", chart.EXPENSE_ADJUSTMENT, chart.available("northwind"), "USD", 100, effective_at_us=now_us(),
            idempotency_key="pins-version-2", partner_id="northwind", memo="pins version 2",
            plan_version_id=version)])

    error = second_writer_behind_first(books.database, pin, lambda session: session.execute(
        sa.text(VERSION), {"id": version, "rec": now_us()}))
    assert isinstance(error, sa.exc.DBAPIError) and "no posting could have read it" in str(error), error
    assert books.sql("SELECT count(*) FROM plan_versions WHERE id = :id", id=version) == [(1,)]


def test_a_server_whose_clock_is_off_the_database_s_by_more_than_the_skew_is_refused_with_a_message(
        books, skewed_clock):
    books.status("northwind", "suspended", ahead(30))
    [change] = books.scheduled("northwind")
    for offset_minutes in (6, -6):
        skewed_clock.offset_us = offset_minutes * MINUTE_US
        with pytest.raises(Conflict, match="more than five minutes off the database's"):
            books.withdraw_change("northwind", change.id)
    skewed_clock.offset_us = 4 * MINUTE_US
    assert books.withdraw_change("northwind", change.id).scheduled == ()


def test_a_customer_s_first_attribution_is_withdrawn_and_verify_reads_it_as_it_stood(books, skewed_clock):
    """A payment recorded while the customer's only attribution had not started is `no_commission`,
    not `unattributed` (migration 0034). Withdrawn, that attribution leaves the payment saying its
    customer had one when it was recorded: `verify` reads it among the withdrawn, as standing from
    when it was recorded until it was withdrawn, and so is the payment's status judged."""
    skewed_clock.offset_us = -40 * MINUTE_US  # recorded forty minutes before what follows
    books.attribute("globex", "northwind", ahead(30))
    skewed_clock.offset_us = -20 * MINUTE_US
    assert books.paid("globex", "inv-g", "80.00", format_instant(now_us())).status == "no_commission"
    skewed_clock.offset_us = 0
    books.attribute("globex", "contoso", ahead(60), replace=True)
    with books.database.reader() as session:
        first, moved = customers.get_customer(session, "globex").attributions
    with books.database.transaction() as session:
        assert customers.withdraw_attribution(session, "globex", first.id).attributions == (moved,)
    assert books.verified()  # migration 0040's verify named inv-g: `event_status_unlike_attributions`
    with books.database.transaction() as session:
        customer = customers.withdraw_attribution(session, "globex", moved.id)
    assert customer.attributions == ()  # the customer stays known, with what was withdrawn
    assert [(w.id, w.partner_id, w.effective_from_us, w.source) for w in customer.withdrawn] == [
        (first.id, "northwind", first.effective_from_us, first.source),
        (moved.id, "contoso", moved.effective_from_us, moved.source)]
    skewed_clock.offset_us = 0
    assert books.paid("globex", "inv-h", "80.00", format_instant(now_us())).status == "unattributed"
    books.attribute("globex", "contoso", ahead(90))  # the customer's first attribution, again
    assert books.verified()


@pytest.mark.parametrize("withdrawn_minutes, invoice, named", [
    (-30, "inv-g", "says no_commission, but its customer had no attribution when it was recorded"),
    (+30, "inv-h", "says unattributed, but its customer was attributed before it was recorded")])
def test_verify_judges_a_payment_s_status_by_the_attributions_withdrawn_as_they_stood(
        books, skewed_clock, withdrawn_minutes, invoice, named):
    """The withdrawal's time moved around the triggers: to before a payment that found the customer's
    attribution, or to after one that found none. `verify` names the payment either way, by the
    withdrawal alone (the customer has no other attribution)."""
    skewed_clock.offset_us = -60 * MINUTE_US
    books.attribute("globex", "northwind", ahead(30))
    skewed_clock.offset_us = -15 * MINUTE_US
    assert books.paid("globex", "inv-g", "80.00", format_instant(now_us())).status == "no_commission"
    skewed_clock.offset_us = 0
    [(only,)] = books.sql("SELECT id FROM attributions WHERE customer_id = 'globex'")
    with books.database.transaction() as session:
        customers.withdraw_attribution(session, "globex", only)
    skewed_clock.offset_us = 15 * MINUTE_US
    assert books.paid("globex", "inv-h", "80.00", format_instant(now_us())).status == "unattributed"
    skewed_clock.offset_us = 0
    assert books.verified()
    with behind_the_triggers(books.database) as execute:
        execute(f"UPDATE program_withdrawals SET recorded_at_us = recorded_at_us + {withdrawn_minutes * MINUTE_US}")
    with books.database.reader() as session:
        found = [(p.code, p.message) for p in verify(session).problems if p.code.startswith("event_status")]
    [(event_id,)] = books.sql("SELECT id FROM revenue_events WHERE invoice_id = :invoice", invoice=invoice)
    assert found == [("event_status_unlike_attributions", f"revenue event {event_id!r} {named}")]


SKEW_US = RECORDED_SKEW_US


@pytest.mark.parametrize("invoice, column, offset_us, passes", [
    # A payment that found the attribution (`no_commission`): it may have stood if recorded up to the
    # skew after the payment, or withdrawn up to the skew before it.
    ("inv-g", "fact_recorded_at_us", SKEW_US, True), ("inv-g", "fact_recorded_at_us", SKEW_US + 1, False),
    ("inv-g", "recorded_at_us", -SKEW_US, True), ("inv-g", "recorded_at_us", -SKEW_US - 1, False),
    # A payment that found none (`unattributed`): the attribution surely stood only if withdrawn more
    # than the skew after it.
    ("inv-h", "recorded_at_us", SKEW_US, True), ("inv-h", "recorded_at_us", SKEW_US + 1, False)])
def test_a_payment_recorded_just_before_its_customer_s_only_attribution_is_withdrawn_passes_within_the_skew(
        books, invoice, column, offset_us, passes):
    """The common case: a payment comes in, then the attribution it found is withdrawn at once, and
    a payment after it finds none. `verify` passes both; each instant moved around the triggers to
    the skew's bound passes, and one microsecond beyond is named."""
    books.attribute("globex", "northwind", ahead(30))
    assert books.paid("globex", "inv-g", "80.00", format_instant(now_us())).status == "no_commission"
    [(only,)] = books.sql("SELECT id FROM attributions WHERE customer_id = 'globex'")
    with books.database.transaction() as session:
        customers.withdraw_attribution(session, "globex", only)
    assert books.paid("globex", "inv-h", "80.00", format_instant(now_us())).status == "unattributed"
    assert books.verified()
    [(event_id, recorded_us)] = books.sql("SELECT id, recorded_at_us FROM revenue_events WHERE invoice_id = :invoice",
                                          invoice=invoice)
    with behind_the_triggers(books.database) as execute:
        execute(f"UPDATE program_withdrawals SET {column} = {recorded_us + offset_us}")
        if column == "recorded_at_us":  # recorded before it was withdrawn, whichever way the withdrawal moved
            execute(f"UPDATE program_withdrawals SET fact_recorded_at_us = {recorded_us - 2 * SKEW_US}")
    with books.database.reader() as session:
        found = [(p.code, p.message) for p in verify(session).problems if p.code.startswith("event_status")]
    assert found == ([] if passes else [("event_status_unlike_attributions", found[0][1])])
    assert passes or f"revenue event {event_id!r}" in found[0][1]


def test_verify_names_a_withdrawal_written_around_the_database_s_rules(books):
    books.status("northwind", "suspended", ahead(30))
    scheduled = status_id(books, "northwind", "suspended")
    started = status_id(books, "contoso", "active")
    [(first_version,)] = books.sql("SELECT id FROM plan_versions WHERE plan_id = 'standard'")
    [(first_attribution,)] = books.sql("SELECT id FROM attributions WHERE customer_id = 'acme'")
    assert books.verified()
    with behind_the_triggers(books.database) as execute:
        for table, fact_id, starts_us in (("partner_statuses", scheduled, at(ahead(30))),
                                          ("partner_statuses", started, 0), ("plan_versions", first_version, 0),
                                          ("attributions", first_attribution, at(ahead(30)))):
            execute("INSERT INTO program_withdrawals (fact_table, fact_id, subject_id, starts_us, value,"
                    f" fact_recorded_at_us, recorded_at_us) VALUES ('{table}', {fact_id}, 'acme', {starts_us},"
                    f" '1', 1, {now_us()})")
    with books.database.reader() as session:
        named = [(problem.code, problem.message) for problem in verify(session).problems]
    assert [code for code, _ in named] == [*["withdrawal_not_applied"] * 4, *["withdrawn_too_late"] * 2,
                                           "withdrawal_of_a_first", "program_fact_unchained"], named
    assert f"partner_statuses row {started} was recorded less than five minutes before" in named[4][1]
    assert f"plan_versions row {first_version}: a plan's first version" in named[-2][1]


def test_the_database_takes_a_withdrawal_only_of_a_fact_that_starts_over_ten_minutes_after_its_clock(books):
    """Between the database's ten minutes and the service's fifteen: the database alone decides."""
    with books.database.transaction() as session:
        partners.set_status(session, "contoso", "suspended", now_us() + 8 * MINUTE_US)
        partners.set_status(session, "contoso", "active", now_us() + 12 * MINUTE_US)
    [(soon,), (later,)] = books.sql("SELECT id FROM partner_statuses WHERE partner_id = 'contoso' AND"
                                    " effective_at_us > 0 ORDER BY effective_at_us")
    refused(books, STATUS, "withdrawn only while it starts more than ten minutes ahead", id=soon)
    accepted(books, STATUS, id=later)
    assert [change.status for change in books.scheduled("contoso")] == ["suspended"]


def test_the_database_holds_the_ten_minutes_to_the_millisecond(books):
    """SQLite's clock is read to the millisecond (migration 0045): read to the second, it lagged by
    up to one, and a fact starting a millisecond short of ten minutes ahead was withdrawn."""
    with books.database.transaction() as session:
        partners.set_status(session, "contoso", "suspended", now_us() + 10 * MINUTE_US - 1_000)
    [(short,)] = books.sql("SELECT id FROM partner_statuses WHERE partner_id = 'contoso' AND effective_at_us > 0")
    refused(books, STATUS, "withdrawn only while it starts more than ten minutes ahead", id=short)
