"""The program's facts chained as recorded (ledger/program_chain.py, migration 0053), the revenue
events that posted nothing (0056), and the API keys and their revocations (0057): every path that
records a fact, stores such an event or makes a key or revocation chains it, `verify` names one
rewritten, added or removed past the triggers, a recorded program head or close names a rewrite made
whole again, and the database holds the chain's shape without Python."""

import json
from datetime import date, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DatabaseError

from ledger import balances, customers, keys, partners, periods, plans, program_chain, revenue
from ledger.errors import Conflict
from ledger.schema import GENESIS_HASH, PROGRAM_CHAIN_TABLES, metadata
from ledger.verify import verify
from migrations.earlier import revision
from tests import program
from tests.integration.test_tamper_evidence import behind_the_triggers

AHEAD = date.today() + timedelta(days=40)
STEP_DOWN = {**program.PLAN, "rates": [{"from_month": 1, "rate": "0.20"}, {"from_month": 13, "rate": "0.10"}],
             "duration_months": None}


@pytest.fixture
def chained(database):
    """Facts of every kind, by the service's own paths, withdrawals of each withdrawable kind included."""
    with database.transaction() as session:
        program.seed(session)
        plans.create_plan(session, "step", "Step-down", STEP_DOWN)
        ahead_us = program.at(AHEAD.isoformat())
        plans.add_version(session, "step", {**STEP_DOWN, "hold_days": 10}, ahead_us)
        plans.add_version(session, "step", {**STEP_DOWN, "hold_days": 20}, ahead_us + 86_400_000_000)
        plans.withdraw_version(session, "step", 3)
        partners.create_partner(session, "contoso", "Contoso", "var", "step")
        partners.set_status(session, "contoso", "suspended", ahead_us)
        partners.change_plan(session, "contoso", "standard", ahead_us)
        found = partners.get_partner(session, "contoso")
        for change in found.scheduled:
            partners.withdraw_change(session, "contoso", change.id)
        customers.attribute(session, "fabrikam", "contoso", date(2026, 1, 1), "referral_link")
        attribution, _ = customers.attribute(session, "fabrikam", "northwind", AHEAD, "manual", replace=True)
        customers.withdraw_attribution(session, "fabrikam", attribution.id)
        revenue.ingest(session, STRAYS)
        keys.create_key(session, "admin", expires_at_us=program.at(AHEAD.isoformat()))
        revoked, _ = keys.create_key(session, "partner", "contoso")
        keys.revoke_key(session, revoked, "leaked")
    return database


# Events that post nothing: a customer never attributed, paid then refunded; a payment dated before
# its customer's attribution starts.
STRAYS = [program.paid("stray-1", "stranger", "inv-s1", 5_000, "2026-01-05"),
          program.paid("stray-2", "stranger", "inv-s1", 1_000, "2026-01-06", "refund"),
          program.paid("early-1", "acme", "inv-early", 2_000, "2025-12-15")]


def facts_count(session) -> int:
    """Each fact in force, withdrawn, and each withdrawal; each event that posted nothing; each key
    and revocation."""
    def count(sql: str) -> int:
        return session.execute(sa.text(sql)).scalar_one()
    return (sum(count(f"SELECT count(*) FROM {table}") for table in PROGRAM_CHAIN_TABLES
                if table not in ("program_withdrawals", "revenue_events"))
            + 2 * count("SELECT count(*) FROM program_withdrawals")
            + count("SELECT count(*) FROM revenue_events WHERE status <> 'posted'"))


def codes(database, **recorded) -> set[str]:
    with database.reader() as session:
        report = verify(session, **recorded)
    assert report.ok is (not report.problems)
    return {problem.code for problem in report.problems}


def test_every_fact_recorded_by_the_service_is_chained_in_turn_and_verifies(chained):
    with chained.reader() as session:
        chain = session.execute(sa.text("SELECT id, fact_table, prev_hash, hash FROM program_chain ORDER BY id")).all()
        withdrawn = set(session.execute(sa.text("SELECT fact_table FROM program_withdrawals")).scalars())
        report = verify(session)
        assert len(chain) == facts_count(session)  # each fact in force, withdrawn, and each withdrawal
    assert withdrawn == {"plan_versions", "partner_statuses", "partner_plans", "attributions"}
    assert [row.id for row in chain] == list(range(1, len(chain) + 1))
    assert [row.prev_hash for row in chain] == [GENESIS_HASH] + [row.hash for row in chain[:-1]]
    assert {row.fact_table for row in chain} == set(PROGRAM_CHAIN_TABLES)
    assert report.ok, report.problems
    assert report.program_head == (chain[-1].id, chain[-1].hash)
    with chained.reader() as session:
        assert session.execute(sa.text("SELECT count(*) FROM program_chain_due")).scalar_one() == 0


def rewrite_terms(execute, version_id: int, terms: dict) -> None:
    execute(f"UPDATE plan_versions SET terms = '{json.dumps(terms)}' WHERE id = {version_id}")


def step_version_id(database) -> int:
    with database.reader() as session:
        return session.execute(sa.text("SELECT id FROM plan_versions WHERE plan_id = 'step' AND version = 1")
                               ).scalar_one()


def test_a_part_of_the_terms_no_payment_has_used_rewritten_is_named(chained):
    """Month 13's rate of a plan no payment has reached: re-derivation cannot see it, the chain does."""
    version_id = step_version_id(chained)
    rates = [{"from_month": 1, "rate": "0.20"}, {"from_month": 13, "rate": "0.90"}]
    with behind_the_triggers(chained) as execute:
        rewrite_terms(execute, version_id, {**STEP_DOWN, "rates": rates})
    assert codes(chained) == {"program_fact_altered"}
    with chained.reader() as session:
        messages = [p.message for p in verify(session).problems]
    assert messages == [f"plan_versions '{version_id}': not as the program chain recorded it"]


@pytest.mark.parametrize("statement", [
    "UPDATE partners SET name = 'Someone Else' WHERE id = 'contoso'",
    "UPDATE attributions SET effective_from_us = effective_from_us - 86400000000 WHERE customer_id = 'acme'",
    "UPDATE customers SET created_at_us = created_at_us + 1 WHERE id = 'initrode'",
    "UPDATE plans SET name = 'Other' WHERE id = 'step'",
    "UPDATE program_withdrawals SET detail = 'import' WHERE fact_table = 'attributions'",
    # Events that posted nothing (migration 0056).
    "UPDATE revenue_events SET recorded_at_us = recorded_at_us + 1 WHERE id = 'early-1'",
    "UPDATE revenue_events SET amount_minor = 900 WHERE id = 'stray-2'",
    "UPDATE revenue_events SET status = 'no_commission' WHERE id = 'stray-1'",
    # Keys and revocations (migration 0057): a partner key bound to another partner, a revocation moved.
    "UPDATE api_keys SET partner_id = 'northwind' WHERE partner_id = 'contoso'",
    "UPDATE api_keys SET expires_at_us = NULL",
    "UPDATE api_key_revocations SET revoked_at_us = revoked_at_us + 1",
])
def test_a_fact_of_any_kind_rewritten_is_named(chained, statement):
    with behind_the_triggers(chained) as execute:
        execute(statement)
    assert "program_fact_altered" in codes(chained)


def test_a_fact_added_or_removed_past_the_triggers_is_named(chained):
    with behind_the_triggers(chained) as execute:
        execute("INSERT INTO customers (id, created_at_us) VALUES ('smuggled', 1)")
    assert codes(chained) == {"program_fact_unchained"}
    with behind_the_triggers(chained) as execute:
        execute("DELETE FROM customers WHERE id = 'smuggled'")
        execute("DELETE FROM partner_plans WHERE partner_id = 'contoso'")
    with chained.reader() as session:
        problems = verify(session).problems
    assert {p.code for p in problems} >= {"program_fact_missing"}
    assert any("names partner_plans" in p.message for p in problems if p.code == "program_fact_missing")


def chained_events(database) -> list[tuple[str, str]]:
    with database.reader() as session:
        return [tuple(row) for row in session.execute(sa.text(
            "SELECT c.fact_id, e.status FROM program_chain c JOIN revenue_events e ON e.id = c.fact_id "
            "WHERE c.fact_table = 'revenue_events' ORDER BY c.id"))]


def test_the_events_that_posted_nothing_are_chained_as_stored_and_those_that_posted_are_not(chained):
    assert chained_events(chained) == [("stray-1", "unattributed"), ("stray-2", "unattributed"),
                                       ("early-1", "no_commission")]
    with chained.transaction() as session:
        revenue.ingest(session, [program.paid("e-1", "acme", "inv-1", 10_000, "2026-01-10"),
                                 program.paid("stray-3", "stranger", "inv-s3", 700, "2026-01-11"),
                                 program.paid("e-1", "acme", "inv-1", 10_000, "2026-01-10")])  # replayed
        revenue.ingest(session, [program.paid("stray-3", "stranger", "inv-s3", 700, "2026-01-11")])
    assert [event_id for event_id, _ in chained_events(chained)] == ["stray-1", "stray-2", "early-1", "stray-3"]
    assert codes(chained) == set()


def test_an_event_that_posted_nothing_deleted_is_named_and_sent_again_is_refused_though_it_would_now_post(chained):
    """Deleted past the triggers, the payment of a customer attributed since would be decided anew
    and post a commission the books had decided against: its row of the chain names it, and
    refuses it by name when it is sent again."""
    with behind_the_triggers(chained) as execute:
        execute("DELETE FROM revenue_events WHERE id IN ('stray-2', 'stray-1')")
    with chained.reader() as session:
        problems = verify(session).problems
    assert {p.code for p in problems} == {"program_fact_missing"}
    assert sorted(p.message for p in problems) == [
        f"row {row} of the program chain names revenue_events {event_id!r}, which is not in its table"
        for row, event_id in sorted(chain_rows(chained, "stray-1", "stray-2"))]
    with chained.transaction() as session:
        customers.attribute(session, "stranger", "northwind", date(2026, 1, 1), "manual")
        [outcome] = revenue.ingest(session, [STRAYS[0]])
    assert isinstance(outcome, revenue.Refusal) and outcome.error.status == 409
    assert outcome.error.detail.startswith("revenue event 'stray-1' was recorded once and is no longer: the "
                                           "program's chain names it")
    with chained.reader() as session:
        assert {p.code for p in verify(session).problems} == {"program_fact_missing"}
        assert session.execute(sa.text("SELECT count(*) FROM journal_transactions WHERE event_id = 'stray-1'")
                               ).scalar_one() == 0


@pytest.mark.parametrize("apart", [False, True], ids=["one batch", "in parts"])
def test_an_event_that_posted_nothing_deleted_and_sent_again_as_it_was_is_refused_by_name(chained, apart):
    """Decided as before, it would be chained again: the chain names it already. It is refused alone,
    a conflict naming it, not a 500 on the chain's key, and the batch's other events are taken: in
    one transaction, or in parts (`ingest_apart`, as the API applies a batch a running total
    refused), whose earlier parts commit."""
    with behind_the_triggers(chained) as execute:
        execute("DELETE FROM revenue_events WHERE id IN ('stray-2', 'early-1')")
    batch = [program.paid("fresh", "stranger", "inv-f", 300, "2026-01-20"), *STRAYS[1:],
             program.paid("later", "stranger", "inv-l", 300, "2026-01-21")]
    if apart:
        outcomes = revenue.ingest_apart(batch, chained.transaction)
    else:
        with chained.transaction() as session:
            outcomes = revenue.ingest(session, batch)
    assert [getattr(outcome, "status", None) for outcome in outcomes] == ["unattributed", None, None, "unattributed"]
    assert [outcome.error.detail.split(" was ")[0] for outcome in outcomes[1:3]] == [
        "revenue event 'stray-2'", "revenue event 'early-1'"]
    assert {outcome.error.status for outcome in outcomes[1:3]} == {409}
    with chained.reader() as session:
        assert sorted(session.execute(sa.text("SELECT id FROM revenue_events WHERE id IN ('fresh', 'stray-2', "
                                              "'early-1', 'later')")).scalars()) == ["fresh", "later"]


def test_the_chain_refuses_by_name_what_it_names_already(chained):
    """Past the batch's own check: an event inserted and chained again in one transaction."""
    with behind_the_triggers(chained) as execute:
        execute("DELETE FROM revenue_events WHERE id = 'stray-2'")
    with pytest.raises(Conflict, match="^revenue event 'stray-2' was recorded once"), chained.transaction() as session:
        row = dict(zip(revenue.EVENT_COLUMNS, (*STRAYS[1], program.at("2026-01-07"), "h" * 64, "unattributed", None)))
        session.execute(sa.insert(metadata.tables["revenue_events"]).values(**row))
        program_chain.chain(session, [("revenue_events", row)])


def test_a_fact_deleted_past_the_triggers_and_recorded_again_is_refused_by_name(chained):
    with behind_the_triggers(chained) as execute:
        execute("DELETE FROM attributions WHERE customer_id = 'initrode'")
        execute("DELETE FROM customers WHERE id = 'initrode'")
    with pytest.raises(Conflict, match="^customer 'initrode' was recorded once and is no longer"), \
            chained.transaction() as session:
        customers.attribute(session, "initrode", "northwind", date(2026, 1, 1), "manual")


def test_a_revocation_deleted_past_the_triggers_is_named_and_its_key_stays_revoked(chained):
    """Deleted, a revocation let its key in again, unseen by `verify`: the chain names it, so the key
    is still refused, and revoking it again is refused by name, not a 500 on the chain's key."""
    with chained.transaction() as session:
        key_id, key = keys.create_key(session, "finance")
        keys.revoke_key(session, key_id, "leaked")
    with behind_the_triggers(chained) as execute:
        execute(f"DELETE FROM api_key_revocations WHERE api_key_id = '{key_id}'")
    with chained.reader() as session:
        [problem] = verify(session).problems
        assert keys.authenticate(session, key) is None
        assert [record.revocation for record in keys.list_keys(session) if record.id == key_id] == [
            keys.Revocation(key_id, None, None)]  # listed as revoked, its row gone
        row = session.execute(sa.text("SELECT id FROM program_chain WHERE fact_table = 'api_key_revocations' "
                                      "AND fact_id = :key"), {"key": key_id}).scalar_one()
    assert (problem.code, problem.message) == (
        "program_fact_missing", f"row {row} of the program chain names api_key_revocations {key_id!r}, which is not in "
                                "its table")
    with pytest.raises(Conflict, match=f"^the revocation of API key {key_id!r} was recorded once and is no longer"):
        with chained.transaction() as session:
            keys.revoke_key(session, key_id, "again")
    with chained.transaction() as session:  # restored past Python, restated: the chain's row stands for it
        session.execute(sa.text("INSERT INTO api_key_revocations (api_key_id, revoked_at_us, reason) "
                                "VALUES (:key, 1, 'restated')"), {"key": key_id})
    with chained.reader() as session:
        assert session.execute(sa.text("SELECT count(*) FROM program_chain_due")).scalar_one() == 0
    assert codes(chained) == {"program_fact_altered"}


def test_a_key_deleted_past_the_triggers_is_named(chained):
    with chained.reader() as session:
        key_id = session.execute(sa.text("SELECT id FROM api_keys WHERE role = 'admin'")).scalar_one()
    with behind_the_triggers(chained) as execute:
        execute(f"DELETE FROM api_keys WHERE id = '{key_id}'")
    with chained.reader() as session:
        [problem] = verify(session).problems
    assert problem.code == "program_fact_missing" and f"names api_keys {key_id!r}, which is not" in problem.message


def test_a_raw_writer_appending_to_the_chain_takes_its_turn_before_the_service(postgres_database):
    """PostgreSQL: a statement inserting into the chain takes the chain's lock (migration 0056), so
    the service's append waits for a writer sending its own SQL, then reads the head it left."""
    from tests.integration.conftest import second_writer_behind_first

    with postgres_database.transaction() as session:
        program.seed(session)

    def raw_writer(session) -> None:
        head_id, head_hash = program_chain.head(session)
        session.execute(sa.text("INSERT INTO customers (id, created_at_us) VALUES ('by-hand', 1)"))
        session.execute(sa.text("INSERT INTO program_chain (id, fact_table, fact_id, prev_hash, hash) "
                                f"VALUES ({head_id + 1}, 'customers', 'by-hand', '{head_hash}', '{'a' * 64}')"))
    outcome = second_writer_behind_first(postgres_database, raw_writer,
                                         lambda session: revenue.ingest(session, [STRAYS[0]]))
    assert not isinstance(outcome, Exception), outcome
    with postgres_database.reader() as session:
        last = session.execute(sa.text("SELECT fact_table, fact_id FROM program_chain ORDER BY id DESC LIMIT 2")).all()
    assert [tuple(row) for row in last] == [("revenue_events", "stray-1"), ("customers", "by-hand")]


def chain_rows(database, *event_ids: str) -> list[tuple[int, str]]:
    with database.reader() as session:
        return [tuple(row) for row in session.execute(sa.text(
            "SELECT id, fact_id FROM program_chain WHERE fact_table = 'revenue_events' AND fact_id IN "
            f"({', '.join(repr(event_id) for event_id in event_ids)})"))]


def test_the_latest_events_removed_with_their_rows_of_the_chain_are_named_by_a_program_head_recorded(chained):
    with chained.transaction() as session:
        revenue.ingest(session, [program.paid("stray-3", "stranger", "inv-s3", 700, "2026-01-11")])
    with chained.reader() as session:
        recorded_head = verify(session).program_head
    with behind_the_triggers(chained) as execute:
        execute("DELETE FROM revenue_events WHERE id = 'stray-3'")
        execute("DELETE FROM program_chain WHERE fact_id = 'stray-3'")
    assert codes(chained) == set()  # the tail: nothing in the books tells
    assert codes(chained, program_head=recorded_head) == {"program_head_missing"}


def test_an_event_writer_and_a_fact_writer_append_to_the_chain_in_turn(postgres_database):
    """PostgreSQL: an event's writer holds the journal lock, not the program's, and a fact's writer
    the program's; each takes the chain's lock to append, so the fact's waits for the event's commit."""
    from tests.integration.conftest import second_writer_behind_first

    with postgres_database.transaction() as session:
        program.seed(session)
    outcome = second_writer_behind_first(
        postgres_database, lambda session: revenue.ingest(session, [STRAYS[0]]),
        lambda session: partners.create_partner(session, "latecomer", "Latecomer", "msp", "standard"))
    assert not isinstance(outcome, Exception), outcome
    with postgres_database.reader() as session:
        report = verify(session)
        chain = [tuple(row) for row in session.execute(sa.text(
            "SELECT fact_table, fact_id FROM program_chain ORDER BY id"))]
    assert report.ok, report.problems
    assert chain.index(("revenue_events", "stray-1")) == chain.index(("partners", "latecomer")) - 1


@pytest.mark.parametrize("statement", [
    "UPDATE program_withdrawals SET value = 'x' WHERE fact_table = 'plan_versions'",
    "UPDATE program_withdrawals SET value = '\u00b3' WHERE fact_table = 'plan_versions'",  # a digit, not ASCII
])
def test_a_fact_altered_past_its_type_is_named_not_a_crash(chained, statement):
    with behind_the_triggers(chained) as execute:
        execute(statement)
    assert "program_fact_altered" in codes(chained)


def test_an_sqlite_blob_in_a_fact_is_named_not_a_crash(sqlite_database):
    with sqlite_database.transaction() as session:
        program.seed(session)
    with behind_the_triggers(sqlite_database) as execute:
        execute("UPDATE partners SET name = CAST('Globex' AS BLOB) WHERE id = 'globex'")
    assert "program_fact_altered" in codes(sqlite_database)


def rechain(execute, database) -> None:
    """Recompute every row of the chain from the facts as they now stand: a rewrite made whole."""
    with database.reader() as session:
        rows = session.execute(sa.text("SELECT id, fact_table, fact_id FROM program_chain ORDER BY id")).all()
        prev_hash, hashes = GENESIS_HASH, []
        for row in rows:
            table = metadata.tables[row.fact_table]
            key = row.fact_id if row.fact_table in program_chain.TEXT_IDS else int(row.fact_id)
            fact = session.execute(sa.select(table).where(table.c[program_chain.key_column(table.name)] == key)).first()
            if fact is None:
                withdrawal = session.execute(sa.text("SELECT * FROM program_withdrawals WHERE fact_table = :t AND "
                                                     "fact_id = :i"), {"t": row.fact_table, "i": key}).one()
                content = program_chain.withdrawn_content(withdrawal)
            else:
                content = program_chain.content(row.fact_table, fact)
            prev_hash = program_chain.fact_hash(prev_hash, row.fact_table, content)
            hashes.append((row.id, prev_hash))
    for position, (row_id, hashed) in enumerate(hashes):
        before = GENESIS_HASH if position == 0 else hashes[position - 1][1]
        execute(f"UPDATE program_chain SET hash = '{hashed}', prev_hash = '{before}' WHERE id = {row_id}")


def test_a_rewrite_made_whole_is_named_by_a_program_head_recorded_before_it(chained):
    with chained.reader() as session:
        recorded_head = verify(session).program_head
    with behind_the_triggers(chained) as execute:
        rewrite_terms(execute, step_version_id(chained), {**STEP_DOWN, "hold_days": 0})
    with behind_the_triggers(chained) as execute:
        rechain(execute, chained)
    assert codes(chained) == set()  # whole again: nothing in the books tells
    assert codes(chained, program_head=recorded_head) == {"program_head_rewritten"}


def test_a_rewrite_made_whole_is_named_by_the_close_after_it_and_by_a_close_recorded_if_that_is_rewritten(chained):
    with chained.transaction() as session:
        revenue.ingest(session, [program.paid("e-1", "acme", "inv-1", 10_000, "2026-01-10")])
        periods.close_period(session, "2026-01")
    with chained.reader() as session:
        before = verify(session)
    assert before.ok, before.problems
    with behind_the_triggers(chained) as execute:
        rewrite_terms(execute, step_version_id(chained), {**STEP_DOWN, "hold_days": 0})
    with behind_the_triggers(chained) as execute:
        rechain(execute, chained)
    # The close's program head, in its hash, is no longer the chain's row.
    assert codes(chained) == {"close_program_head_mismatch"}
    with chained.reader() as session:
        close = periods.get_close(session, "2026-01")
        head_id, = session.execute(sa.text("SELECT program_head_id FROM period_closes")).one()
        head_hash = session.execute(sa.text(f"SELECT hash FROM program_chain WHERE id = {head_id}")).scalar_one()
        names = dict(session.execute(sa.text("SELECT id, name FROM accounts")).all())
        rehashed = periods.close_hash(close.prev_close_hash, close.period, close.transaction_count,
                                      close.chain_head_id, close.chain_head_hash,
                                      periods.snapshot(session, "2026-01"), names, (head_id, head_hash))
    with behind_the_triggers(chained) as execute:
        execute(f"UPDATE period_closes SET program_head_hash = '{head_hash}', close_hash = '{rehashed}'")
    assert codes(chained) == set()  # closes rewritten too: whole again
    assert codes(chained, close=before.latest_close) == {"close_rewritten"}


def test_a_recorded_program_head_beyond_the_chain_is_named(chained):
    with chained.reader() as session:
        head_id, head_hash = verify(session).program_head
    assert codes(chained, program_head=(head_id, head_hash)) == set()
    assert codes(chained, program_head=(head_id + 1, head_hash)) == {"program_head_missing"}
    # Past the database's integers (`revshare verify --program-head` reads up to 19 digits): named, not a crash.
    assert codes(chained, program_head=(2**63, head_hash)) == {"program_head_missing"}


def test_a_close_holds_the_program_head_in_its_hash(chained):
    with chained.transaction() as session:
        revenue.ingest(session, [program.paid("e-1", "acme", "inv-1", 10_000, "2026-01-10")])
        periods.close_period(session, "2026-01")
        head = program_chain.head(session)
    with chained.reader() as session:
        row = session.execute(sa.text("SELECT program_head_id, program_head_hash FROM period_closes")).one()
    assert tuple(row) == head
    with behind_the_triggers(chained) as execute:
        execute(f"UPDATE period_closes SET program_head_id = {head[0] - 1}, "
                f"program_head_hash = (SELECT hash FROM program_chain WHERE id = {head[0] - 1})")
    assert codes(chained) == {"close_hash_mismatch"}


# ---- the database's guards, without Python ----

def refused(database, *statements: str) -> str:
    with pytest.raises(DatabaseError) as raised:
        with database.transaction() as session:
            for statement in statements:
                session.execute(sa.text(statement))
    return str(raised.value)


def test_the_database_refuses_a_fact_left_unchained_by_the_commit(chained):
    message = refused(chained, "INSERT INTO customers (id, created_at_us) VALUES ('unchained', 1)")
    assert "program_chain" in message or "FOREIGN KEY" in message
    with chained.reader() as session:
        assert session.execute(sa.text("SELECT count(*) FROM customers WHERE id = 'unchained'")).scalar_one() == 0


def test_the_database_refuses_an_event_that_posted_nothing_left_unchained_by_the_commit(chained):
    columns = ("INSERT INTO revenue_events (id, type, customer_id, invoice_id, currency, amount_minor, "
               "occurred_at_us, recorded_at_us, request_hash, status) VALUES ")
    at = program.at("2026-02-01")
    message = refused(chained, columns + f"('raw-1', 'invoice_paid', 'nobody', 'inv-raw', 'USD', 100, {at}, "
                                         f"{at}, '{'a' * 64}', 'unattributed')")
    assert "program_chain" in message or "FOREIGN KEY" in message
    with chained.reader() as session:
        assert session.execute(sa.text("SELECT count(*) FROM revenue_events WHERE id = 'raw-1'")).scalar_one() == 0


@pytest.mark.parametrize("statement", [
    "INSERT INTO api_keys (id, key_hash, role, partner_id, created_at_us) "
    "VALUES ('key_raw', '{fill}', 'admin', NULL, 1)",
    "INSERT INTO api_key_revocations (api_key_id, revoked_at_us, reason) SELECT id, 1, NULL FROM api_keys "
    "WHERE role = 'admin'",
], ids=["key", "revocation"])
def test_the_database_refuses_a_key_or_revocation_left_unchained_by_the_commit(chained, statement):
    message = refused(chained, statement.format(fill="f" * 64))
    assert "program_chain" in message or "FOREIGN KEY" in message
    with chained.reader() as session:
        assert session.execute(sa.text("SELECT (SELECT count(*) FROM api_keys), (SELECT count(*) FROM "
                                       "api_key_revocations)")).one() == (2, 1)


def test_a_revocation_replaced_from_a_plain_sqlite_connection_is_named_and_leaves_nothing_due(sqlite_database):
    """SQLite lets a REPLACE of a revocation through from a connection without `recursive_triggers`
    (migration 0036): the row it writes is the one the chain names, checked by `verify`, not a new
    one left on the list of facts due."""
    import sqlite3

    with sqlite_database.transaction() as session:
        key_id, _ = keys.create_key(session, "billing")
        keys.revoke_key(session, key_id, "leaked")
    connection = sqlite3.connect(sqlite_database.engine.url.database)
    try:
        with connection:
            connection.execute("INSERT OR REPLACE INTO api_key_revocations VALUES (?, 5, 'restated')", (key_id,))
    finally:
        connection.close()
    assert codes(sqlite_database) == {"program_fact_altered"}
    with sqlite_database.reader() as session:
        assert session.execute(sa.text("SELECT reason FROM api_key_revocations")).scalar_one() == "restated"
        assert session.execute(sa.text("SELECT count(*) FROM program_chain_due")).scalar_one() == 0


def test_the_database_takes_a_fact_chained_by_hand_and_verify_names_a_wrong_hash(chained):
    with chained.reader() as session:
        head_id, head_hash = program_chain.head(session)
    with chained.transaction() as session:
        session.execute(sa.text("INSERT INTO customers (id, created_at_us) VALUES ('by-hand', 1)"))
        session.execute(sa.text("INSERT INTO program_chain (id, fact_table, fact_id, prev_hash, hash) "
                                f"VALUES ({head_id + 1}, 'customers', 'by-hand', '{head_hash}', '{'a' * 64}')"))
    assert codes(chained) == {"program_fact_altered"}


@pytest.mark.parametrize("case, row", [
    ("gap", "({next} + 1, 'customers', 'late', '{head}', '{fill}')"),
    ("wrong previous hash", "({next}, 'customers', 'late', '{fill}', '{fill}')"),
    ("no such fact", "({next}, 'customers', 'nobody', '{head}', '{fill}')"),
    ("no such integer fact", "({next}, 'attributions', '999999', '{head}', '{fill}')"),
    ("not a number", "({next}, 'attributions', 'x1', '{head}', '{fill}')"),
    ("a number not as the fact's id reads", "({next}, 'partner_statuses', '01', '{head}', '{fill}')"),
])
def test_the_database_refuses_a_chain_row_out_of_its_place(chained, case, row):
    with chained.reader() as session:
        head_id, head_hash = program_chain.head(session)
    values = row.format(next=head_id + 1, head=head_hash, fill="b" * 64)
    message = refused(chained, "INSERT INTO customers (id, created_at_us) VALUES ('late', 1)",
                      f"INSERT INTO program_chain (id, fact_table, fact_id, prev_hash, hash) VALUES {values}")
    expected = "a row names a fact in its table" if "fact" in case or "number" in case else "without a gap"
    assert expected in message


@pytest.mark.parametrize("statement", [
    "UPDATE program_chain SET hash = prev_hash WHERE id = 1",
    "DELETE FROM program_chain WHERE id = (SELECT max(id) FROM program_chain)",
])
def test_the_database_refuses_a_change_to_the_chain(chained, statement):
    assert "program_chain is append-only" in refused(chained, statement)


def test_the_database_refuses_a_fact_taken_off_the_list_before_its_row_is_written(chained):
    message = refused(chained, "INSERT INTO customers (id, created_at_us) VALUES ('listed', 1)",
                      "DELETE FROM program_chain_due WHERE fact_id = 'listed'")
    assert "a fact leaves the list once its row of the chain is written" in message


def test_the_database_refuses_a_close_without_the_program_head(chained):
    with chained.transaction() as session:
        revenue.ingest(session, [program.paid("e-1", "acme", "inv-1", 10_000, "2026-01-10")])
    with chained.reader() as session:
        head_id, head_hash = program_chain.head(session)
    start, end = program.at("2026-01-01"), program.at("2026-02-01")
    columns = ("INSERT INTO period_closes (period, starts_at_us, ends_at_us, closed_at_us, transaction_count, "
               "chain_head_id, chain_head_hash, prev_close_hash, close_hash, program_head_id, program_head_hash) "
               f"VALUES ('2026-01', {start}, {end}, {end + 1}, 1, 1, '{'c' * 64}', '{GENESIS_HASH}', '{'d' * 64}', ")
    with chained.reader() as session:  # the journal's snapshot, written before the close (migration 0063)
        rows = balances.sums(session, before_us=end)
    snapshot = ("INSERT INTO period_snapshots (period, account_id, currency, debit_minor, credit_minor) VALUES "
                + ", ".join(f"('2026-01', {account_id}, '{currency}', {debit}, {credit})"
                            for (account_id, currency), (debit, credit) in sorted(rows.items())))
    for head in ("NULL, NULL", f"{head_id}, '{'e' * 64}'", f"0, '{'e' * 64}'", f"{head_id + 5}, '{head_hash}'"):
        assert "a close records the head of the program_chain" in refused(chained, snapshot, columns + head + ")")


# ---- the migration ----

def test_the_migrations_frozen_copy_hashes_as_the_ledger_does():
    migration = revision("0053_program_facts_chained.py")
    events = revision("0056_events_that_posted_nothing_chained.py")
    keyed = revision("0057_keys_chained.py")
    assert migration.FACT_COLUMNS | events.FACT_COLUMNS | keyed.FACT_COLUMNS == program_chain.FACT_COLUMNS
    assert keyed.TABLES == (*events.TABLES, *keyed.FACT_COLUMNS) == PROGRAM_CHAIN_TABLES
    assert events.TABLES == (*migration.TABLES, *events.FACT_COLUMNS)
    assert {table: program_chain.key_column(table) for table in keyed.FACT_COLUMNS} == keyed.KEY_COLUMNS
    assert keyed.FACT_COLUMNS == {table: tuple(metadata.tables[table].c.keys()) for table in keyed.FACT_COLUMNS}
    assert events.FACT_COLUMNS["revenue_events"] == revenue.EVENT_COLUMNS
    assert migration.WITHDRAWN_AS == program_chain.WITHDRAWN_AS
    for content in ((7, "Ünïcode \ud800 name", -1, None), ("a", b"blob", 1.5)):
        assert migration.fact_hash("1" * 64, "plans", content) == program_chain.fact_hash("1" * 64, "plans", content)


def test_0053_chains_the_facts_of_books_made_before_it_and_goes_down_until_a_close_holds_a_head(empty_url):

    from ledger.db import Database
    from ledger.migrate import downgrade, upgrade

    upgrade(empty_url, "0052")
    database = Database(empty_url)
    try:
        with database.transaction() as session:
            program.seed(session)
            partners.create_partner(session, "contoso", "Contoso", "var", "standard")
            partners.set_status(session, "contoso", "suspended", program.at(AHEAD.isoformat()))
            scheduled = partners.get_partner(session, "contoso").scheduled[0].id
            withdrawn_id = int(scheduled.split("-")[1])
            partners.withdraw_change(session, "contoso", scheduled)
            revenue.ingest(session, [program.paid("e-1", "acme", "inv-1", 10_000, "2026-01-10")])
            periods.close_period(session, "2026-01")
        upgrade(empty_url)
        with database.reader() as session:
            report = verify(session)
            chain = session.execute(sa.text("SELECT fact_table, fact_id FROM program_chain ORDER BY id")).all()
            assert len(chain) == facts_count(session)
        assert report.ok, report.problems
        assert [table for table, _ in chain] == sorted((table for table, _ in chain), key=PROGRAM_CHAIN_TABLES.index)
        assert ("partner_statuses", str(withdrawn_id)) in chain and "program_withdrawals" in dict(chain)
        downgrade(empty_url, "0052")  # the close of 2026-01 was made before 0053
        upgrade(empty_url)
        with database.transaction() as session:  # recorded after every partner: not as a backfill orders it
            customers.attribute(session, "newcomer", "northwind", date(2026, 1, 1), "manual")
        with pytest.raises(RuntimeError, match="chained in the order recorded"):
            downgrade(empty_url, "0052")
        with database.transaction() as session:
            periods.close_period(session, "2026-02")
        with pytest.raises(RuntimeError, match="hold the program's chain head"):
            downgrade(empty_url, "0052")
        upgrade(empty_url)  # on SQLite, the revisions above the refusing one went down (their DDL commits)
        with database.reader() as session:
            assert verify(session).ok
    finally:
        database.dispose()



def test_0056_chains_the_events_that_posted_nothing_of_books_made_before_it_and_goes_down_while_they_are_its_tail(
        empty_url):

    from ledger.db import Database
    from ledger.migrate import downgrade, upgrade

    def whole_chain() -> list[tuple]:
        with database.reader() as session:
            return [tuple(row) for row in session.execute(sa.text("SELECT * FROM program_chain ORDER BY id"))]

    upgrade(empty_url, "0055")
    database = Database(empty_url)
    try:
        with database.transaction() as session:
            program.seed(session)
            revenue.ingest(session, [program.paid("e-1", "acme", "inv-1", 10_000, "2026-01-10")])
        upgrade(empty_url)
        assert chained_events(database) == []
        downgrade(empty_url, "0055")  # no event chained: down and up again
        with database.transaction() as session:  # below 0056 the service stores them unchained
            revenue.ingest(session, STRAYS[:2])
        with database.transaction() as session:
            revenue.ingest(session, STRAYS[2:])
        upgrade(empty_url)
        with database.reader() as session:
            report = verify(session)
            assert session.execute(sa.text("SELECT count(*) FROM program_chain")).scalar_one() == facts_count(session)
        assert report.ok, report.problems
        assert chained_events(database) == [("stray-1", "unattributed"), ("stray-2", "unattributed"),
                                            ("early-1", "no_commission")]  # as recorded, then by id
        backfilled = whole_chain()
        downgrade(empty_url, "0055")  # the chain's tail, as backfilled: taken off
        assert whole_chain() == backfilled[:-3]
        upgrade(empty_url)
        assert whole_chain() == backfilled
        with database.transaction() as session:
            periods.close_period(session, "2026-01")  # holds the head, the last event's row
        with pytest.raises(RuntimeError, match="hold a program head among the events chained"):
            downgrade(empty_url, "0055")
        with database.transaction() as session:  # one batch, one recorded instant: chained as sent
            revenue.ingest(session, [program.paid("z-stray", "stranger", "inv-z", 700, "2026-02-11"),
                                     program.paid("a-stray", "stranger", "inv-a", 700, "2026-02-11")])
        assert [event_id for event_id, _ in chained_events(database)][-2:] == ["z-stray", "a-stray"]
        with pytest.raises(RuntimeError, match="chained in the order stored"):
            downgrade(empty_url, "0055")
        upgrade(empty_url)  # on SQLite, the revisions above the refusing one went down (their DDL commits)
        with database.reader() as session:
            assert verify(session).ok
    finally:
        database.dispose()


def test_0057_chains_the_keys_and_revocations_of_books_made_before_it_and_goes_down_while_they_are_its_tail(
        empty_url):

    from ledger.db import Database
    from ledger.migrate import downgrade, upgrade

    def whole_chain() -> list[tuple]:
        with database.reader() as session:
            return [tuple(row) for row in session.execute(sa.text("SELECT * FROM program_chain ORDER BY id"))]

    upgrade(empty_url, "0056")
    database = Database(empty_url)
    try:
        with database.transaction() as session:  # below 0057 the service makes them unchained
            program.seed(session)
            made = [keys.create_key(session, role)[0] for role in ("billing", "admin")]
            keys.revoke_key(session, made[0], "leaked")
            revenue.ingest(session, [program.paid("e-1", "acme", "inv-1", 10_000, "2026-01-10"), STRAYS[0]])
        before = whole_chain()
        upgrade(empty_url)
        with database.reader() as session:
            report = verify(session)
            assert session.execute(sa.text("SELECT count(*) FROM program_chain")).scalar_one() == facts_count(session)
            in_order = session.execute(sa.text("SELECT id FROM api_keys ORDER BY created_at_us, id")).scalars().all()
        assert report.ok, report.problems
        backfilled = whole_chain()
        assert backfilled[:len(before)] == before
        assert [row[1:3] for row in backfilled[len(before):]] == [
            *(("api_keys", key_id) for key_id in in_order), ("api_key_revocations", made[0])]
        downgrade(empty_url, "0056")  # the chain's tail, as backfilled: taken off
        assert whole_chain() == before
        upgrade(empty_url)
        assert whole_chain() == backfilled
        with database.transaction() as session:
            periods.close_period(session, "2026-01")  # holds the head, the revocation's row
        with pytest.raises(RuntimeError, match="hold a program head among the keys chained"):
            downgrade(empty_url, "0056")
        with database.transaction() as session:  # made after the revocation: chained after it
            keys.create_key(session, "finance")
        with pytest.raises(RuntimeError, match="chained in the order made"):
            downgrade(empty_url, "0056")
        with database.transaction() as session:
            keys.create_key(session, "billing", expires_at_us=program.at(AHEAD.isoformat()))
        with pytest.raises(RuntimeError, match="made to expire, which below it they would not"):
            downgrade(empty_url, "0056")
        with database.reader() as session:
            assert verify(session).ok
    finally:
        database.dispose()


@pytest.mark.parametrize("table", ["api_keys", "api_key_revocations"])
def test_0057_waits_for_a_key_or_revocation_being_written_and_chains_it(pg_cluster, table):
    """PostgreSQL: keys' writers take none of the locks the migrations hold; a key or revocation
    inserted while 0057's backfill read would be left off the chain. The migration waits for it."""
    from ledger.db import Database
    from ledger.migrate import upgrade
    from tests.conftest import drop_pg_database, new_pg_url
    from tests.integration.conftest import second_writer_behind_first

    url = new_pg_url(pg_cluster, template=None)
    upgrade(url, "0056")
    database = Database(url)
    try:
        with database.transaction() as session:
            program.seed(session)
            key_id, _ = keys.create_key(session, "billing")
        statement = (f"INSERT INTO api_keys (id, key_hash, role, partner_id, created_at_us) VALUES ('key_racing', "
                     f"'{'e' * 64}', 'admin', NULL, 1)" if table == "api_keys" else
                     f"INSERT INTO api_key_revocations (api_key_id, revoked_at_us) VALUES ('{key_id}', 2)")
        outcome = second_writer_behind_first(database, lambda session: session.execute(sa.text(statement)),
                                             lambda session: upgrade(url))
        assert not isinstance(outcome, Exception), outcome
        database.dispose()
        database = Database(url)
        with database.reader() as session:
            report = verify(session)
            assert session.execute(sa.text("SELECT count(*) FROM program_chain WHERE fact_table = :table"),
                                   {"table": table}).scalar_one() == (2 if table == "api_keys" else 1)
        assert report.ok, report.problems
    finally:
        database.dispose()
        drop_pg_database(pg_cluster, url)


def test_the_migrations_chain_a_book_s_events_each_checked_by_key_not_the_chain_read_again_for_each(pg_cluster):
    """PostgreSQL: 0056 chains the events that posted nothing one row at a time (as 0053 the facts),
    and the chain's guard checks that each row follows the one before it. Planned once for the
    migration, while the chain was short, the guard read the whole chain again for each row it
    checked: 20,000 events took 82 s to upgrade from 0055 (32 million rows read for 8,000), 125,000
    eighteen minutes. The migrations are run with plans that read by key (`migrations/env.py`)."""
    import time

    from ledger.db import Database
    from ledger.migrate import upgrade
    from tests.conftest import drop_pg_database, new_pg_url

    events = 1_000
    url = new_pg_url(pg_cluster, template=None)
    upgrade(url, "0055")
    database = Database(url)

    def read(table: str) -> tuple[int, int]:  # the rows of a table read by scans of it whole, and by index
        with database.reader() as session:
            session.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
            return tuple(session.execute(sa.text("SELECT coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0) "
                                                 "FROM pg_stat_user_tables WHERE relname = :t"), {"t": table}).one())

    try:
        with database.transaction() as session:
            program.seed(session)
        with database.transaction() as session:
            revenue.ingest(session, [program.paid(f"u-{n}", f"nobody-{n}", f"inv-u-{n}", 1_000, "2026-01-10")
                                     for n in range(events)])
        database.dispose()
        before = sum(read("revenue_events"))
        upgrade(url)
        for _ in range(100):  # the migration's backend reports its reads as it ends
            if sum(read("revenue_events")) - before >= events:
                break
            time.sleep(0.1)
        assert sum(read("revenue_events")) - before >= events, "the backfill's reads were not reported"
        chain_scanned, _ = read("program_chain")
        assert chain_scanned < 5 * events, chain_scanned  # about once, not once a row (half a million)
        with database.reader() as session:
            assert verify(session).ok
            assert session.execute(sa.text("SELECT count(*) FROM program_chain WHERE fact_table = 'revenue_events'")
                                   ).scalar_one() == events
    finally:
        database.dispose()
        drop_pg_database(pg_cluster, url)
