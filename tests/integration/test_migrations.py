"""The migrated schema is exactly the metadata in ledger/schema.py, on both engines."""

from datetime import date, timedelta

import pytest
from sqlalchemy import select, text

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ledger.db import SQLITE_CACHE_KIB
from ledger.schema import metadata


def test_migrations_produce_the_declared_schema(database):
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
    assert differences == []


def test_every_journal_guard_trigger_exists(database):
    with database.engine.connect() as connection:
        if database.engine.dialect.name == "postgresql":
            names = {row[0] for row in connection.exec_driver_sql(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
        else:
            names = {row[0] for row in connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert {"trg_journal_lines_sealed", "trg_journal_transactions_seal", "trg_journal_lines_totals"} <= names
    assert any(name.startswith("trg_account_totals_") for name in names)
    assert {f"trg_{table}_program_revision" for table in
            ("partners", "partner_statuses", "partner_plans", "plan_versions")} <= names
    assert any(name.startswith("trg_program_revision_") for name in names)
    assert {"trg_revenue_events_within_invoice", "trg_period_closes_statement_documents",
            "trg_journal_transactions_adjustment_in_time"} <= names
    for table in ("accounts", "journal_transactions", "journal_lines"):
        assert any(name.startswith(f"trg_{table}_no_") for name in names), table


def test_sqlite_connections_carry_the_required_pragmas(sqlite_database):
    with sqlite_database.engine.connect() as connection:
        pragmas = {name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                   for name in ("foreign_keys", "recursive_triggers", "journal_mode", "busy_timeout", "cache_size")}
    assert pragmas == {"foreign_keys": 1, "recursive_triggers": 1, "journal_mode": "wal", "busy_timeout": 30000,
                       "cache_size": -SQLITE_CACHE_KIB}
    assert SQLITE_CACHE_KIB > 2_000  # SQLite's default


@pytest.mark.postgres
def test_autovacuum_keeps_up_with_the_journal_lines_on_postgresql(postgres_database):
    """Balances are index-only scans only over pages vacuumed since they were written (0007)."""
    with postgres_database.engine.connect() as connection:
        [options] = connection.exec_driver_sql(
            "SELECT reloptions FROM pg_class WHERE relname = 'journal_lines'").one()
    assert sorted(options) == ["autovacuum_vacuum_insert_scale_factor=0", "autovacuum_vacuum_insert_threshold=100000"]


@pytest.mark.postgres
def test_postgresql_readers_read_one_snapshot_and_writers_each_statements_own(postgres_database):
    # Readers: a report's statements add up (ledger/balances.py relies on it). Writers: each
    # statement after the journal lock sees everything committed before it was granted.
    with postgres_database.reader() as session:
        assert session.execute(text("SHOW transaction_isolation")).scalar() == "repeatable read"
    with postgres_database.transaction() as session:
        assert session.execute(text("SHOW transaction_isolation")).scalar() == "read committed"
    with postgres_database.reader() as session:  # the pool hands the connection back at its default
        assert session.execute(text("SHOW transaction_isolation")).scalar() == "repeatable read"
    with postgres_database.transaction() as session:
        assert session.execute(text("SHOW transaction_isolation")).scalar() == "read committed"


@pytest.mark.usefixtures("closed_before_bodies", "posting_before_claims_taken")  # at an earlier revision
def test_the_guards_of_0029_upgrade_books_of_every_kind_and_let_the_service_post_on(empty_url):
    """Books at revision 0028 holding every kind of posting (the demo's year: accruals, CPA, overrides,
    clawbacks, releases, a won dispute, payouts settled and failed, write-offs, closes; plus an
    adjustment and a reversal) upgrade to 0029 and on; the service posts on them under the new
    guards, verify finds nothing wrong, and the revision goes down to 0028 and up again."""

    from ledger import demo, journal, payouts, revenue
    from ledger.db import Database
    from ledger.instants import now_us
    from ledger.migrate import downgrade, upgrade
    from ledger.verify import verify

    upgrade(empty_url, "0028")
    database = Database(empty_url)
    try:
        with database.transaction() as session:
            loaded = demo.load_demo(session)
            adjustment = payouts.adjust(session, "northwind", "available", 1_000, "USD", "goodwill")
            journal.reverse(session, adjustment.id, reason="posted twice")
        assert loaded.loaded and loaded.closed_periods >= 12
        upgrade(empty_url)
        with database.transaction() as session:
            [outcome] = revenue.ingest(session, [revenue.RevenueEvent(
                "after-0029", "invoice_paid", "cust-001", "inv-after-0029", "USD", 10_000, now_us())])
            assert isinstance(outcome, revenue.Outcome), outcome
            run = payouts.run_payouts(session, now_us())
            for index, payout in enumerate(run.payouts):
                (payouts.settle if index % 2 else payouts.fail)(session, payout.id)
        with database.reader() as session:
            report = verify(session)
        assert report.ok, report.problems
        downgrade(empty_url, "0028")
        upgrade(empty_url)
    finally:
        database.dispose()


@pytest.mark.usefixtures("closed_before_bodies", "posting_before_claims_taken")  # at an earlier revision
def test_the_guards_of_0030_upgrade_books_of_every_kind_and_let_the_service_post_on(empty_url):
    """Books at revision 0029 holding every kind of posting (the demo's year, an adjustment and its
    reversal, a payout failed by the reversal of its posting) upgrade to 0030; the service then posts
    what the new rules read: an accrual reversed with its release, a won dispute's chargeback, and
    payouts settled, failed and failed by reversal. Verify finds nothing wrong, no piece is left
    listed, and the revision goes down to 0029 and up again."""

    from ledger import demo, journal, payouts, reversals, revenue
    from ledger.db import Database
    from ledger.instants import now_us
    from ledger.migrate import downgrade, upgrade
    from ledger.verify import verify

    upgrade(empty_url, "0029")
    database = Database(empty_url)
    try:
        with database.transaction() as session:
            demo.load_demo(session)
            adjustment = payouts.adjust(session, "northwind", "available", 1_000, "USD", "goodwill")
            journal.reverse(session, adjustment.id, reason="posted twice")
        upgrade(empty_url)
        with database.transaction() as session:
            released = session.execute(text(
                "SELECT min(t.accrual_id) FROM journal_transactions t WHERE t.kind = 'release' AND NOT EXISTS"
                " (SELECT 1 FROM journal_transactions r WHERE r.reverses_id IN (t.id, t.accrual_id))")).scalar_one()
            reversals.reverse(session, released, reason="posted in error")
            instant = now_us()
            outcomes = revenue.ingest(session, [revenue.RevenueEvent(
                f"after-0030-{kind}", kind, "cust-001", "inv-after-0030", "USD", 10_000, instant)
                for kind in ("invoice_paid", "chargeback", "chargeback_reversed")])
            assert all(isinstance(outcome, revenue.Outcome) for outcome in outcomes), outcomes
            run = payouts.run_payouts(session, instant)
            assert len(run.payouts) >= 3, run
            payouts.settle(session, run.payouts[0].id)
            payouts.fail(session, run.payouts[1].id)
            reversals.reverse(session, run.payouts[2].transaction_id, reason="returned")
        with database.reader() as session:
            report = verify(session)
            listed = session.execute(text("SELECT count(*) FROM unreleased_pieces_due")).scalar_one()
        assert report.ok, report.problems
        assert listed == 0
        downgrade(empty_url, "0029")
        upgrade(empty_url)
    finally:
        database.dispose()


def guards_of(database) -> tuple[set[str], str | None]:
    """The names of the schema's triggers, and on PostgreSQL the source of migration 0029's statement
    function (which migration 0031 extends)."""
    with database.engine.connect() as connection:
        if database.engine.dialect.name != "postgresql":
            return {row[0] for row in connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'")}, None
        names = {row[0] for row in connection.exec_driver_sql("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
        source = connection.exec_driver_sql(
            "SELECT prosrc FROM pg_proc WHERE proname = 'journal_transactions_in_their_place'").scalar_one()
        return names, source


@pytest.mark.usefixtures("closed_before_bodies", "posting_before_claims_taken")  # at an earlier revision
def test_the_guards_of_0031_upgrade_books_of_every_kind_and_go_down_to_0030_as_they_were(empty_url):
    """Books at revision 0030 holding every kind of posting (the demo's year, an adjustment and its
    reversal) and a posting for a partner never enrolled, which 0031 would refuse, upgrade to 0031:
    rows already written are left as they are. The service then posts adjustments to both accounts,
    events, a payout run and a reversal of an adjustment; verify names the posting for the partner
    never enrolled, and nothing else; and the revision goes down to 0030, leaving exactly 0030's
    guards, and up again."""
    import sqlalchemy as sa

    from ledger import accounts as chart
    from ledger import demo, journal, payouts, revenue
    from ledger.db import Database
    from ledger.instants import now_us
    from ledger.migrate import downgrade, upgrade
    from tests import program

    upgrade(empty_url, "0030")
    database = Database(empty_url)
    try:
        at_0030 = guards_of(database)
        with database.transaction() as session:
            demo.load_demo(session)
            adjustment = payouts.adjust(session, "northwind", "available", 1_000, "USD", "goodwill")
            journal.reverse(session, adjustment.id, reason="posted twice")
            [ghost] = journal.post(session, [journal.transfer(
                "accrual", chart.EXPENSE_COMMISSION, chart.pending("ghost"), "USD", 100, effective_at_us=now_us(),
                idempotency_key="ghost", partner_id="ghost", **program.of_an_event("ghost", "ghost"))])
        upgrade(empty_url)
        with database.transaction() as session:
            instant = now_us()
            for account, amount in (("pending", 2_500), ("available", -700)):
                payouts.adjust(session, "northwind", account, amount, "USD", f"{account} corrected")
            [outcome] = revenue.ingest(session, [revenue.RevenueEvent(
                "after-0031", "invoice_paid", "cust-001", "inv-after-0031", "USD", 10_000, instant)])
            assert isinstance(outcome, revenue.Outcome), outcome
            run = payouts.run_payouts(session, instant)
            assert run.payouts, run
            adjusted = payouts.adjust(session, "northwind", "available", 300, "USD", "to reverse")
            journal.reverse(session, adjusted.id, reason="posted in error")
        with database.reader() as session:
            found = program.verified(session)
        # Only the posting for a partner never enrolled, left as it was written.
        assert [(problem.transaction_id, problem.code) for problem in found] == [(ghost.id, "partner_not_enrolled")]
        with pytest.raises(sa.exc.DBAPIError, match="a transaction names a partner of the program"):
            with database.transaction() as session:
                journal.post(session, [journal.transfer(
                    "accrual", chart.EXPENSE_COMMISSION, chart.pending("ghost"), "USD", 100, effective_at_us=now_us(),
                    idempotency_key="ghost-again", partner_id="ghost", **program.of_an_event("ghost-again", "ghost"))])
        downgrade(empty_url, "0030")
        assert guards_of(database) == at_0030
        upgrade(empty_url)
    finally:
        database.dispose()


def test_postings_that_follow_from_a_posting_for_a_partner_never_enrolled_written_before_0031_are_made(empty_url):
    """A reversal names the partner its original names (`journal.reversal_draft`), a release or a
    clawback its piece's: refused as postings for a partner never enrolled, the one correction of
    such a row was a 500 through the API, and its queued hold failed every release after it (the
    release job's, a payout run's, a close's). A new posting for that partner is still refused."""
    import sqlalchemy as sa

    from api import create_app
    from ledger import accounts as chart
    from ledger import holds, journal
    from ledger.db import Database
    from ledger.instants import now_us
    from ledger.keys import create_key
    from ledger.migrate import upgrade
    from ledger.settings import Settings
    from tests import program
    from tests.program import at

    upgrade(empty_url, "0030")
    database = Database(empty_url)
    try:
        with database.transaction() as session:
            ghosts = journal.post(session, [journal.transfer(
                "accrual", chart.EXPENSE_COMMISSION, chart.pending("ghost"), "USD", 100,
                effective_at_us=at("2026-01-05"), idempotency_key=f"ghost-{invoice}", partner_id="ghost",
                matures_at_us=at("2026-02-04"), invoice_id=invoice, customer_id="cust-g", event_id=f"{invoice}-event")
                for invoice in ("g1", "g2")])
            session.execute(sa.text("INSERT INTO open_holds (accrual_id, matures_at_us) VALUES (:id, :at)"),
                            {"id": ghosts[1].id, "at": at("2026-02-04")})
            # The payments they accrue on, stored with them: what follows from them names their events,
            # which the database asks to be stored (migration 0065).
            for invoice in ("g1", "g2"):
                program.insert_event(session, program.paid(f"{invoice}-event", "cust-g", invoice, 500, "2026-01-05"))
        upgrade(empty_url)
        with database.transaction() as session:
            _, key = create_key(session, "finance")
        client = create_app(Settings.build(database_url=empty_url), database).test_client()
        response = client.post(f"/v1/transactions/{ghosts[0].id}/reversal", json={"reason": "never enrolled"},
                               headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 201, response.get_json()
        assert (response.get_json()["partner_id"], response.get_json()["reverses_id"]) == ("ghost", ghosts[0].id)
        assert holds.release_in_transactions(database.transaction, at("2026-03-01")) == 1
        with pytest.raises(sa.exc.DBAPIError, match="a transaction names a partner of the program"):
            with database.transaction() as session:
                journal.post(session, [journal.transfer(
                    "accrual", chart.EXPENSE_COMMISSION, chart.pending("ghost"), "USD", 100, effective_at_us=now_us(),
                    idempotency_key="ghost-again", partner_id="ghost", **program.of_an_event("ghost-again", "ghost"))])
    finally:
        database.dispose()


def header_guards_of(database) -> dict[str, str]:
    """On PostgreSQL, each statement trigger after an insert into `journal_transactions` with the
    source of its function; on SQLite, every trigger's definition."""
    with database.engine.connect() as connection:
        if database.engine.dialect.name != "postgresql":
            return dict(connection.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").all())
        return dict(connection.exec_driver_sql(
            "SELECT t.tgname, pg_get_triggerdef(t.oid) || p.prosrc || array_to_string(p.proconfig, ',')"
            " FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
            " WHERE t.tgrelid = 'journal_transactions'::regclass AND NOT t.tgisinternal").all())


def refusal_of_a_header_breaking_three_rules(database) -> str:
    """The message the database refuses a header with: one line, so too few and out of balance, and
    naming a plan version that does not exist (0029's rule, raised before the seal's). It is an
    accrual of a partner of the program whose line debits the commission expense, and so breaks no
    rule of migration 0047 (whose trigger SQLite runs first)."""
    import sqlalchemy as sa

    from ledger.instants import now_us

    with pytest.raises(sa.exc.DBAPIError) as refused:
        with database.transaction() as session:
            [(head_id, head_hash)] = session.execute(text(
                "SELECT id, hash FROM journal_transactions ORDER BY id DESC LIMIT 1")).all()
            instant = now_us()
            session.execute(text("INSERT INTO journal_lines (transaction_id, account_id, currency, side, amount_minor,"
                                 " effective_at_us) SELECT :id, id, 'USD', 'D', 100, :at FROM accounts"
                                 " WHERE name = 'expense:commission'"),
                            {"id": head_id + 1, "at": instant})
            session.execute(text(
                "INSERT INTO journal_transactions (id, kind, effective_at_us, recorded_at_us, idempotency_key,"
                " request_hash, plan_version_id, prev_hash, hash, partner_id, customer_id, invoice_id, event_id)"
                " VALUES (:id, 'accrual', :at, :at, 'three-rules', :request, 999999, :prev, :hash,"
                " (SELECT min(id) FROM partners), 'cust-3', 'inv-3', 'e-3')"),  # of an event (migration 0064)
                {"id": head_id + 1, "at": instant, "request": "a" * 64, "prev": head_hash, "hash": "b" * 64})
    diagnostic = getattr(refused.value.orig, "diag", None)  # psycopg's, without the function named in its context
    return diagnostic.message_primary if diagnostic else str(refused.value.orig)


@pytest.mark.usefixtures("closed_before_bodies", "posting_before_claims_taken")  # at an earlier revision
def test_the_seal_of_0032_upgrades_books_of_every_kind_refuses_as_0031_did_and_goes_down_as_they_were(empty_url):
    """Books at revision 0031 holding every kind of posting upgrade to 0032, whose one statement
    trigger holds the rules of 0031's four: the service posts on (events, a late refund, a payout run
    settled and failed, a reversal of an accrual with its release), verify finds nothing wrong, a
    header breaking three rules is refused with the message 0031 gave it, and the revision goes down
    to 0031, leaving exactly 0031's triggers and functions, and up again."""

    from ledger import demo, payouts, reversals, revenue
    from ledger.db import Database
    from ledger.instants import now_us
    from ledger.migrate import downgrade, upgrade
    from ledger.verify import verify

    upgrade(empty_url, "0031")
    database = Database(empty_url)
    try:
        with database.transaction() as session:
            demo.load_demo(session)
        at_0031 = header_guards_of(database)
        refused_at_0031 = refusal_of_a_header_breaking_three_rules(database)
        upgrade(empty_url)
        assert refusal_of_a_header_breaking_three_rules(database) == refused_at_0031
        assert "names a plan version that exists" in refused_at_0031, refused_at_0031
        with database.transaction() as session:
            released = session.execute(text(
                "SELECT min(t.accrual_id) FROM journal_transactions t WHERE t.kind = 'release' AND NOT EXISTS"
                " (SELECT 1 FROM journal_transactions r WHERE r.reverses_id IN (t.id, t.accrual_id))")).scalar_one()
            reversals.reverse(session, released, reason="posted in error")
            instant = now_us()
            outcomes = revenue.ingest(session, [revenue.RevenueEvent(
                f"after-0032-{kind}", kind, "cust-001", "inv-after-0032", "USD", amount, instant)
                for kind, amount in (("invoice_paid", 10_000), ("refund", 2_500))])
            assert all(isinstance(outcome, revenue.Outcome) for outcome in outcomes), outcomes
            run = payouts.run_payouts(session, instant)
            assert len(run.payouts) >= 2, run
            payouts.settle(session, run.payouts[0].id)
            payouts.fail(session, run.payouts[1].id)
        with database.reader() as session:
            report = verify(session)
        assert report.ok, report.problems
        downgrade(empty_url, "0031")
        assert header_guards_of(database) == at_0031
        upgrade(empty_url)
    finally:
        database.dispose()


def test_0033_holds_the_enrolment_exception_to_what_follows_by_kind_and_goes_down_as_0032_had_it(empty_url):
    """At 0032 a raw accrual for a partner never enrolled passes by naming, in `accrual_id`, that
    partner's piece written before 0031; at 0033 it is refused, while the reversal of that piece
    still passes; and the revision goes down to 0032's guards exactly, the gap with them."""
    import sqlalchemy as sa

    from ledger import accounts as chart
    from ledger import journal
    from ledger.db import Database
    from ledger.migrate import downgrade, upgrade
    from tests.integration.test_database_rules import NOT_ENROLLED, raw_transfer

    upgrade(empty_url, "0030")
    database = Database(empty_url)
    try:
        with database.transaction() as session:  # as the service wrote it before 0031
            [piece] = journal.post(session, [journal.transfer(
                "accrual", chart.EXPENSE_COMMISSION, chart.pending("ghost"), "USD", 100, effective_at_us=5,
                idempotency_key="ghost-piece", partner_id="ghost", invoice_id="inv-ghost", customer_id="cust-ghost",
                event_id="e-ghost")])

        def written(kind: str, **header) -> None:
            """The raw posting for ghost, written and rolled back; raises what the database refuses."""
            with database.engine.connect() as connection, connection.begin() as transaction:
                ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
                legs = [ids[chart.EXPENSE_COMMISSION], ids[chart.pending("ghost")]]
                raw_transfer(connection, piece.id + 1, *(legs[::-1] if kind == "reversal" else legs), kind=kind,
                             partner_id="ghost", **header)
                transaction.rollback()

        upgrade(empty_url, "0032")
        at_0032 = header_guards_of(database)
        written("accrual", accrual_id=piece.id)
        upgrade(empty_url)
        with pytest.raises(sa.exc.DBAPIError, match=NOT_ENROLLED):  # restoring for a won dispute, as 0058 holds
            written("accrual", accrual_id=piece.id, invoice_id="inv-ghost", event_id="won-ghost")
        written("reversal", reverses_id=piece.id)
        downgrade(empty_url, "0032")
        assert header_guards_of(database) == at_0032
        written("accrual", accrual_id=piece.id)
        upgrade(empty_url)
    finally:
        database.dispose()


def books_with_a_piece_for_a_partner_never_enrolled(empty_url, revision: str = "head") -> int:
    """Books at revision 0030 where invoice `inv-g` paid northwind's accrual (and globex's override)
    and, written as the code before 0031 let it be, an accrual of the same invoice for `ghost`, a
    partner never enrolled; migrated to `revision`. Returns the ghost's piece."""
    from ledger import accounts as chart
    from ledger import journal, revenue
    from ledger.db import Database
    from ledger.migrate import upgrade
    from tests import program

    upgrade(empty_url, "0030")
    database = Database(empty_url)
    try:
        with database.transaction() as session:
            program.seed(session)
            [outcome] = revenue.ingest(session, [program.paid("e-g", "acme", "inv-g", 10_000, "2026-01-10")])
            assert isinstance(outcome, revenue.Outcome), outcome
            version = session.execute(text("SELECT min(plan_version_id) FROM journal_transactions")).scalar_one()
            [ghost] = journal.post(session, [journal.transfer(
                "accrual", chart.EXPENSE_COMMISSION, chart.pending("ghost"), "USD", 500,
                effective_at_us=program.at("2026-01-10"), idempotency_key="e-g:accrual:ghost", partner_id="ghost",
                customer_id="acme", invoice_id="inv-g", event_id="e-g", plan_version_id=version,
                matures_at_us=program.at("2026-02-09"))])
            session.execute(text("INSERT INTO open_holds (accrual_id, matures_at_us) VALUES (:id, :at)"),
                            {"id": ghost.id, "at": program.at("2026-02-09")})
    finally:
        database.dispose()
    upgrade(empty_url, revision)
    return ghost.id


@pytest.mark.usefixtures("posting_before_claims_taken")  # posting at an earlier revision
def test_a_won_dispute_reinstates_what_its_chargeback_clawed_back_from_a_piece_written_before_0031(empty_url):
    won_dispute_on_a_piece_written_before_0031(empty_url, "head")


@pytest.mark.usefixtures("posting_before_claims_taken")  # posting at an earlier revision
def test_a_won_dispute_on_a_piece_written_before_0031_was_applied_under_0032(empty_url):
    """The control of the test above: the same books and events, under 0032's enrolment rule."""
    won_dispute_on_a_piece_written_before_0031(empty_url, "0032")


def won_dispute_on_a_piece_written_before_0031(empty_url, revision: str) -> None:
    """The chargeback of an invoice claws back every piece it produced, the ghost's too (a clawback
    follows from its piece); the dispute won reinstates each of them as a new piece of the same kind
    naming its root in `accrual_id` (`ledger.revenue`), the ghost's as well. Refused, the whole
    event is refused: northwind, enrolled, never gets its commission back."""
    from ledger import revenue
    from ledger.db import Database
    from tests import program

    ghost_piece = books_with_a_piece_for_a_partner_never_enrolled(empty_url, revision)
    database = Database(empty_url)
    try:
        with database.transaction() as session:
            outcomes = revenue.ingest(session, [
                program.paid("e-g-cb", "acme", "inv-g", 10_000, "2026-01-20", kind="chargeback"),
                program.paid("e-g-won", "acme", "inv-g", 10_000, "2026-01-25", kind="chargeback_reversed")])
            assert all(isinstance(outcome, revenue.Outcome) for outcome in outcomes), outcomes
        with database.reader() as session:
            reinstated = dict(session.execute(text(
                "SELECT partner_id, kind FROM journal_transactions WHERE event_id = 'e-g-won'")).all())
            ghost_root = session.execute(text(
                "SELECT accrual_id FROM journal_transactions WHERE event_id = 'e-g-won' AND partner_id = 'ghost'"
            )).scalar_one()
        assert reinstated == {"northwind": "accrual", "globex": "override", "ghost": "accrual"}
        assert ghost_root == ghost_piece
    finally:
        database.dispose()


# Statements each breaking several header rules at once, by the header that breaks them: which
# rule the database names first is part of what migration 0032 keeps of 0031's four triggers. Each
# header is an accrual of northwind (`test_header_statements.header`), its lines debits of
# `expense:commission` and a credit to northwind's pending account, unless named otherwise. None
# breaks migration 0047's rule (an accrual moves money from the commission expense to the pending
# account of the partner it names), which SQLite checks first at the head: so the accrual of ghost
# credits ghost's pending account, and the posting on another partner's account is a reversal of
# northwind's accrual (the books' first) naming globex.
SEVERAL_RULES_BROKEN = {
    "closed period, out of balance, unknown version": [({"at": "2026-01-20", "credit": 99},
                                                       {"plan_version_id": 999_999})],
    "101 lines out of balance": [({"lines": 101}, {})],
    "one out of balance, the next of an unknown version": [({"credit": 99}, {}), ({}, {"plan_version_id": 999_999})],
    "a clawback naming no piece, of one line": [({"lines": 1}, {"kind": "clawback", "partner_id": "northwind"})],
    "a clawback naming no piece": [({}, {"kind": "clawback", "partner_id": "northwind"})],
    "for a partner never enrolled, a line moved": [
        ({"moved": True, "credit_account": "liability:partner:ghost:pending"}, {"partner_id": "ghost"})],
    "on another partner's account, of an unknown version": [
        ({"debit_account": "liability:partner:northwind:pending", "credit_account": "expense:commission"},
         {"kind": "reversal", "reverses_id": 1, "partner_id": "globex", "plan_version_id": 999_999})],
    "out of the chain, out of balance": [({"credit": 99}, {"prev_hash": "a" * 64})],
}


def refusals_of_several_rules_broken(database) -> dict[str, str]:
    """For each statement of SEVERAL_RULES_BROKEN, the message the database refuses it with."""
    import sqlalchemy as sa

    from ledger.instants import now_us
    from tests.integration.test_database_guards import head_hash, insert_line
    from tests.integration.test_header_statements import header, insert_headers
    from tests.program import at

    refusals = {}
    for name, headers in SEVERAL_RULES_BROKEN.items():
        with pytest.raises(sa.exc.DBAPIError) as refused:
            with database.engine.begin() as connection:
                ids = dict(connection.exec_driver_sql("SELECT name, id FROM accounts").all())
                first_id = connection.exec_driver_sql("SELECT max(id) FROM journal_transactions").scalar_one() + 1
                rows, previous = [], head_hash(connection)
                for offset, (lines, fields) in enumerate(headers):
                    instant = at(lines.get("at", "2026-02-10"))
                    debit = ids[lines.get("debit_account", "expense:commission")]
                    credit = ids[lines.get("credit_account", "liability:partner:northwind:pending")]
                    for _ in range(lines.get("lines", 2) - 1):
                        insert_line(connection, first_id + offset, debit, "D", 100, at=instant)
                    insert_line(connection, first_id + offset, credit, "C", lines.get("credit", 100),
                                at=instant + (1 if lines.get("moved") else 0))
                    rows.append({**header(first_id + offset, previous, effective_at_us=instant,
                                          recorded_at_us=now_us()), **fields})
                    previous = rows[-1]["hash"]
                insert_headers(connection, rows)
        diagnostic = getattr(refused.value.orig, "diag", None)
        refusals[name] = diagnostic.message_primary if diagnostic else str(refused.value.orig)
    return refusals


@pytest.mark.usefixtures("closed_before_bodies", "posting_before_claims_taken")  # at an earlier revision
def test_a_header_breaking_several_rules_is_refused_with_the_message_0031_gave_it(empty_url):
    """Books at 0031 (northwind's accrual, January closed) refuse each statement of several rules
    broken with one message; at the head, with migration 0032's one trigger, with the same. On
    PostgreSQL that is the first rule broken in the order of 0031's triggers: the closed period,
    0029's and 0031's rules, the seal's, the piece rules."""
    from ledger import accounts as chart
    from ledger import journal, periods
    from ledger.db import Database
    from ledger.migrate import upgrade
    from tests import program

    upgrade(empty_url, "0031")
    database = Database(empty_url)
    try:
        with database.transaction() as session:
            program.seed(session)
            journal.post(session, [journal.transfer(
                "accrual", chart.EXPENSE_COMMISSION, chart.pending("northwind"), "USD", 100,
                effective_at_us=program.at("2026-01-10"), idempotency_key="first", partner_id="northwind",
                **program.of_an_event("first", "northwind"))])
            periods.close_period(session, "2026-01", now_us=program.at("2026-02-02"))
            chart.account_ids(session, [chart.pending("ghost")])  # for the accrual of a partner never enrolled
        at_0031 = refusals_of_several_rules_broken(database)
        upgrade(empty_url)
        assert refusals_of_several_rules_broken(database) == at_0031
        if database.engine.dialect.name != "postgresql":
            return  # SQLite's row triggers refuse the first header breaking a rule, by their own order
        assert at_0031 == {
            "closed period, out of balance, unknown version": "journal_transactions: effective instant lies in a"
                                                              " closed period",
            "101 lines out of balance": "journal_transactions: a transaction has at most 100 lines",
            "one out of balance, the next of an unknown version": "journal_transactions: a transaction names a"
                                                                  " plan version that exists",
            "a clawback naming no piece, of one line": "journal_transactions: a transaction needs two or more lines",
            "a clawback naming no piece": _0022_MESSAGE,
            "for a partner never enrolled, a line moved": "journal_transactions: a transaction names a partner of"
                                                          " the program",
            "on another partner's account, of an unknown version": "journal_transactions: a transaction posts to"
                                                                   " the accounts of the partner it names, and to"
                                                                   " no other partner",
            "out of the chain, out of balance": "journal_transactions: debits do not equal credits per currency",
        }
    finally:
        database.dispose()


_0022_MESSAGE = ("journal_transactions: a clawback or release names a live accrual of its partner, invoice and"
                 " currency, on the accounts of its kind, and what stands against the accrual stays within its"
                 " amount, released once")


@pytest.mark.usefixtures("posting_before_claims_taken")  # posting at an earlier revision
def test_what_the_service_posts_after_a_piece_written_before_0031_for_a_partner_never_enrolled_is_made(empty_url):
    """At the head, on books holding the ghost's piece: its release by the release job, the
    chargeback's clawback of it from available, the reversal of that clawback, then the reversal of
    the piece with its release (`ledger.reversals`): each follows from the ghost's posting by its
    kind (0033), and each is made, with verify naming the piece alone."""
    from ledger import holds, reversals, revenue
    from ledger.db import Database
    from ledger.verify import verify
    from tests import program

    ghost_piece = books_with_a_piece_for_a_partner_never_enrolled(empty_url)
    database = Database(empty_url)
    try:
        assert holds.release_in_transactions(database.transaction, program.at("2026-02-15")) >= 1
        with database.transaction() as session:
            [outcome] = revenue.ingest(session, [
                program.paid("e-g-cb", "acme", "inv-g", 10_000, "2026-02-20", kind="chargeback")])
            assert isinstance(outcome, revenue.Outcome), outcome
            clawback = session.execute(text("SELECT id FROM journal_transactions WHERE event_id = 'e-g-cb'"
                                            " AND partner_id = 'ghost'")).scalar_one()
            reversals.reverse(session, clawback, reason="chargeback entered in error")
            reversals.reverse(session, ghost_piece, reason="never enrolled")
        with database.reader() as session:
            kinds = session.execute(text("SELECT kind FROM journal_transactions WHERE partner_id = 'ghost'"
                                         " ORDER BY id")).scalars().all()
            report = verify(session)
            paid_first = session.execute(text("SELECT min(id) FROM journal_transactions WHERE event_id = 'e-g'")
                                         ).scalar_one()
        assert kinds == ["accrual", "release", "clawback", "reversal", "reversal", "reversal"]
        # The ghost's piece names payment e-g, which the program gives northwind's and globex's alone.
        assert {(problem.transaction_id, problem.code) for problem in report.problems} == {
            (ghost_piece, "partner_not_enrolled"), (paid_first, "commission_unlike_program")}
    finally:
        database.dispose()


def schema_code_of(database) -> dict[str, str]:
    """Every trigger and (PostgreSQL) every function of the schema, with what a CREATE sets of it:
    its source, settings, security, volatility, owner and grants."""
    with database.engine.connect() as connection:
        if database.engine.dialect.name != "postgresql":
            return dict(connection.exec_driver_sql(
                "SELECT type || ' ' || name, sql FROM sqlite_master WHERE type IN ('trigger', 'index')").all())
        triggers = connection.exec_driver_sql(
            "SELECT 'trigger ' || tgname, pg_get_triggerdef(oid) || ' ' || tgenabled::text FROM pg_trigger"
            " WHERE NOT tgisinternal").all()
        functions = connection.exec_driver_sql(
            "SELECT 'function ' || p.oid::regprocedure::text, concat_ws(' | ', p.prosrc,"
            " array_to_string(p.proconfig, ','), p.prosecdef, p.provolatile, pg_get_userbyid(p.proowner),"
            " array_to_string(p.proacl, ',')) FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace").all()
        return dict(triggers + functions)


def code_changed_by(empty_url, below: str, revision: str) -> tuple[set[str], bool]:
    """The triggers, functions and (SQLite) indexes `revision` changes over `below` on an empty
    database, and whether it is PostgreSQL's; going down to `below` again leaves them as they were
    (asserted)."""

    from ledger.db import Database
    from ledger.migrate import downgrade, upgrade

    upgrade(empty_url, below)
    database = Database(empty_url)
    try:
        before = schema_code_of(database)
        upgrade(empty_url, revision)
        changed = {name for name, code in schema_code_of(database).items() if before.get(name) != code}
        downgrade(empty_url, below)
        assert schema_code_of(database) == before
        return changed, database.engine.dialect.name == "postgresql"
    finally:
        database.dispose()


@pytest.mark.usefixtures("closed_before_bodies", "posting_before_claims_taken")  # at an earlier revision
def test_0034_upgrades_books_of_every_kind_lets_the_service_post_on_and_goes_down_as_0033_had_them(empty_url):
    """Books at 0033 holding every kind of posting and event status (the demo's year, an unattributed
    payment and its refund) upgrade to 0034; the service posts on them, each status as 0034 holds
    it, verify finds nothing wrong, and the revision goes down to 0033's triggers and up again."""

    from ledger import customers, demo, payouts, periods, revenue
    from ledger.db import Database
    from ledger.instants import next_period, now_us, period_of
    from ledger.migrate import downgrade, upgrade
    from ledger.schema import revenue_events
    from ledger.verify import verify

    def paid(event_id: str, customer_id: str, invoice_id: str, kind: str = "invoice_paid"):
        return revenue.RevenueEvent(event_id, kind, customer_id, invoice_id, "USD", 10_000 if kind == "invoice_paid"
                                    else 1_000, now_us() - 60_000_000)

    upgrade(empty_url, "0033")
    database = Database(empty_url)
    try:
        with database.transaction() as session:
            assert demo.load_demo(session).loaded
            revenue.ingest(session, [paid("before", "stranger", "inv-before")])
        at_0033 = schema_code_of(database)
        upgrade(empty_url, "0052")  # a close made at 0053 or later holds the program's head, which 0053 keeps
        with database.transaction() as session:
            revenue.ingest(session, [paid("before-refund", "stranger", "inv-before", "refund"),
                                     paid("after", "cust-001", "inv-after"),
                                     paid("after-refund", "cust-001", "inv-after", "refund")])
            # attributed from tomorrow: known, so its next payment is decided, and earns nothing yet
            customers.attribute(session, "stranger", "northwind", date.today() + timedelta(days=1), "manual")
            revenue.ingest(session, [paid("later-refund", "stranger", "inv-before", "refund"),
                                     paid("later", "stranger", "inv-later")])
            last = periods.latest_close(session).period
            month = next_period(last)
            if month < period_of(now_us()):
                periods.close_period(session, month)
            payouts.run_payouts(session, now_us())
        with database.reader() as session:
            statuses = dict(session.execute(select(revenue_events.c.id, revenue_events.c.status).where(
                revenue_events.c.id.in_(["before", "before-refund", "after", "after-refund", "later-refund",
                                         "later"]))).all())
            report = verify(session)
        assert statuses.pop("after") == statuses.pop("after-refund")  # a refund claws what its payment posted
        assert statuses == {"before": "unattributed", "before-refund": "unattributed", "later-refund": "unattributed",
                            "later": "no_commission"}
        assert report.ok, report.problems
        downgrade(empty_url, "0033")
        assert schema_code_of(database) == at_0033
        upgrade(empty_url)
    finally:
        database.dispose()


def test_the_head_goes_down_to_0031_leaving_every_trigger_and_function_as_0031_had_them(empty_url):
    """Migrations 0033 and 0032 go down to 0031's triggers and functions, each as 0031 made it (its
    source, settings, security, owner and grants), with nothing of theirs left."""

    from ledger.db import Database
    from ledger.migrate import downgrade, upgrade

    upgrade(empty_url, "0031")
    database = Database(empty_url)
    try:
        at_0031 = schema_code_of(database)
        upgrade(empty_url)
        assert schema_code_of(database) != at_0031 or database.engine.dialect.name != "postgresql"
        downgrade(empty_url, "0031")
        assert schema_code_of(database) == at_0031
    finally:
        database.dispose()


@pytest.mark.parametrize("empty_url", ["postgres"], indirect=True)
@pytest.mark.usefixtures("posting_before_claims_taken")  # posting at 0028, then at the head
def test_an_upgrade_made_while_the_service_posts_waits_for_its_postings_and_they_for_it(empty_url):
    """PostgreSQL: `revshare db upgrade` from 0028 while three writers post events. Holding the
    program's and the journal's locks before its first change, the migration makes postings wait,
    where their locks on the tables and its own met as a deadlock that ended the upgrade."""
    import threading

    from ledger import revenue
    from ledger.db import Database
    from ledger.instants import now_us
    from ledger.migrate import upgrade
    from ledger.verify import verify
    from tests.scenarios.books import Books

    upgrade(empty_url, "0028")
    database = Database(empty_url)
    books = Books(database)
    books.plan("standard", "0.20", hold_days=0)
    books.partner("northwind", "standard")
    for writer in range(3):  # a customer each: no payment is delivered after a later-dated one of its customer,
        books.attribute(f"acme-{writer}", "northwind", "2026-01-01")  # which would take a claim before 0038
    stop, failures, posted = threading.Event(), [], []

    def post(writer: int) -> None:
        number = 0
        while not stop.is_set():
            number += 1
            event = revenue.RevenueEvent(f"w{writer}-{number}", "invoice_paid", f"acme-{writer}",
                                         f"inv-{writer}-{number}", "USD", 1_000, now_us())
            try:
                with database.transaction() as session:
                    revenue.ingest(session, [event])
                posted.append(event.id)
            except Exception as error:  # noqa: BLE001 -- every failure is the test's finding
                failures.append(repr(error))

    writers = [threading.Thread(target=post, args=(writer,)) for writer in range(3)]
    for writer in writers:
        writer.start()
    try:
        while len(posted) < 30 and not failures:
            threading.Event().wait(0.05)
        upgrade(empty_url)  # the head: raises on a deadlock
        count = len(posted)
        while len(posted) < count + 30 and not failures:  # and postings go on after it
            threading.Event().wait(0.05)
    finally:
        stop.set()
        for writer in writers:
            writer.join()
    try:
        assert failures == []
        with database.reader() as session:
            report = verify(session)
        assert report.ok, report.problems
    finally:
        database.dispose()


def test_0038_records_when_the_cpa_went_by_date_and_refuses_to_go_down_once_a_claim_was_taken(empty_url):
    """Going below 0038 would lose the claims taken, and the claimant whose bounty was reversed would
    be taken for the claimant again: refused while a claim has been taken; without one, it goes down
    and up again."""

    from ledger.db import Database
    from ledger.instants import now_us
    from ledger.migrate import current_revision, downgrade, head_revision, upgrade
    from tests.scenarios.books import Books

    before_us = now_us()
    upgrade(empty_url)
    database = Database(empty_url)
    try:
        books = Books(database)
        [(since_us,)] = books.sql("SELECT since_us FROM rules_since WHERE rule = 'cpa_first_by_date'")
        assert before_us <= since_us <= now_us()
        downgrade(empty_url, "0037")
        assert current_revision(empty_url) == "0037"
        upgrade(empty_url)
        books.plan("hybrid", "0.10", cpa={"USD": "150.00"}, duration_months=None)
        books.partner("northwind", "hybrid")
        books.attribute("acme", "northwind", "2026-01-01")
        books.paid("acme", "inv-feb", "500.00", "2026-02-05")
        books.paid("acme", "inv-jan", "500.00", "2026-01-05")
        database.dispose()
        with pytest.raises(RuntimeError, match="cpa_claims_taken holds claims taken"):
            downgrade(empty_url, "0037")
        # PostgreSQL rolls the whole step down back; SQLite keeps the steps above 0038 (empty books).
        assert current_revision(empty_url) == (
            head_revision() if database.engine.dialect.name == "postgresql" else "0038")
        assert books.sql("SELECT count(*) FROM cpa_claims_taken") == [(1,)]
        upgrade(empty_url)
    finally:
        database.dispose()


def test_0041_lets_a_customer_s_first_attribution_be_withdrawn_and_goes_down_only_while_none_was(empty_url):
    """Below 0041 the database keeps a customer's first attribution (0040's rule): going down is
    refused once one was withdrawn; with only a later one withdrawn, it goes down, 0040's rule holds
    again, and it goes up again."""

    from ledger import customers
    from ledger.db import Database
    from ledger.migrate import current_revision, downgrade, head_revision, upgrade
    from tests.scenarios.books import Books, ahead

    upgrade(empty_url, "0052")  # below 0053, whose chain of facts recorded since goes down no more
    database = Database(empty_url)
    try:
        books = Books(database)
        books.plan("standard", "0.20")
        books.partner("northwind", "standard")
        books.partner("contoso", "standard")
        books.attribute("acme", "northwind", ahead(30))
        books.attribute("acme", "contoso", ahead(40), replace=True)
        with database.reader() as session:
            first, moved = (a.id for a in customers.get_customer(session, "acme").attributions)
        with database.transaction() as session:
            customers.withdraw_attribution(session, "acme", moved)
        database.dispose()
        downgrade(empty_url, "0040")
        assert current_revision(empty_url) == "0040"
        with pytest.raises(Exception, match="a customer keeps its first attribution"), \
                database.transaction() as session:
            customers.withdraw_attribution(session, "acme", first)
        upgrade(empty_url, "0052")
        with database.transaction() as session:
            assert customers.withdraw_attribution(session, "acme", first).attributions == ()
        database.dispose()
        with pytest.raises(RuntimeError, match="withdrawals of a customer's first attribution"):
            downgrade(empty_url, "0040")
        # PostgreSQL rolls the step down back; SQLite keeps the steps down above 0041's.
        postgres = database.engine.dialect.name == "postgresql"
        assert current_revision(empty_url) == ("0052" if postgres else "0041")
        upgrade(empty_url)
        assert current_revision(empty_url) == head_revision()
        assert books.verified()
    finally:
        database.dispose()


def test_0054_sums_an_invoices_events_in_one_pass_and_goes_down_to_0053s_guard_as_it_was(empty_url):
    """The guard of an invoice's limits, made again (its rule: tests/scenarios/test_database_holds.py),
    goes down to the trigger and function 0014 made, with the settings 0023 gave the function."""
    changed, postgres = code_changed_by(empty_url, "0053", "0054")
    assert changed == {"function revenue_events_within_invoice()" if postgres
                       else "trigger trg_revenue_events_within_invoice"}, changed


def test_0055_reads_a_customers_bounties_by_key_and_goes_down_to_0054s_guards_and_index_as_they_were(empty_url):
    """The guards of a customer's bounty, made again (their rules: test_database_holds.py and
    test_database_rules.py), and the bounties' index, go down as 0038 and 0020 made them."""
    changed, postgres = code_changed_by(empty_url, "0054", "0055")
    assert changed == ({"function journal_transactions_cpa_once()"} if postgres
                       else {"trigger trg_journal_transactions_cpa_once", "trigger trg_cpa_claims_taken_held",
                             "index ix_journal_transactions_cpa_customer"}), changed
