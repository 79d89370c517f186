"""The journal on SQLite and PostgreSQL: posting, idempotency, reversals, balances, verify."""

import pytest

from ledger import accounts as chart
from ledger import journal, program_chain
from ledger.balances import all_balances, debit_minus_credit, normal_balance
from ledger.errors import Conflict, IdempotencyConflict, InvalidInput, NotFound
from ledger.journal import CREDIT, DEBIT, Draft, Line
from ledger.verify import verify
from tests import program

PENDING = chart.pending("northwind")
AVAILABLE = chart.available("northwind")


def accrual(key: str, amount_minor: int, at_us: int = 1_000, currency: str = "USD", **links) -> Draft:
    return journal.transfer("accrual", chart.EXPENSE_COMMISSION, PENDING, currency, amount_minor,
                            effective_at_us=at_us, idempotency_key=key, partner_id="northwind",
                            **(program.of_an_event(key, "northwind") | links))


@pytest.fixture(autouse=True)
def northwind_enrolled(database):
    """The accruals below name northwind, a partner of the program (migration 0031)."""
    with database.transaction() as session:
        program.enrol(session, "northwind")


def test_a_posted_transaction_moves_both_balances(database):
    with database.transaction() as session:
        [posted] = journal.post(session, [accrual("a1", 10_000)])
    assert posted == journal.Posted(1, False)
    with database.reader() as session:
        balances = debit_minus_credit(session, [PENDING, chart.EXPENSE_COMMISSION])
    assert balances == {(PENDING, "USD"): -10_000, (chart.EXPENSE_COMMISSION, "USD"): 10_000}
    assert normal_balance(PENDING, balances[(PENDING, "USD")]) == 10_000


def test_accounts_are_created_on_first_use_with_their_type_and_normal_side(database):
    with database.transaction() as session:
        journal.post(session, [accrual("a1", 100)])
        rows = session.execute(journal.select(chart.accounts).order_by(chart.accounts.c.name)).all()
    assert [(r.name, r.type, r.normal_side, r.partner_id) for r in rows] == [
        ("expense:commission", "expense", "D", None),
        ("liability:partner:northwind:pending", "liability", "C", "northwind"),
    ]


def test_balances_as_of_an_instant_include_only_earlier_postings(database):
    with database.transaction() as session:
        journal.post(session, [accrual("a1", 100, at_us=10), accrual("a2", 200, at_us=20), accrual("a3", 400, at_us=30)])
    with database.reader() as session:
        assert debit_minus_credit(session, [PENDING], before_us=20) == {(PENDING, "USD"): -100}
        assert debit_minus_credit(session, [PENDING], before_us=21) == {(PENDING, "USD"): -300}
        assert debit_minus_credit(session, [PENDING], since_us=20, before_us=31) == {(PENDING, "USD"): -600}
        assert debit_minus_credit(session, ["liability:partner:nobody:pending"]) == {}


def test_currencies_are_kept_apart(database):
    with database.transaction() as session:
        journal.post(session, [accrual("u", 150, currency="USD"), accrual("j", 1500, currency="JPY"),
                               accrual("b", 1234, currency="BHD")])
    with database.reader() as session:
        assert debit_minus_credit(session, [PENDING]) == {
            (PENDING, "USD"): -150, (PENDING, "JPY"): -1500, (PENDING, "BHD"): -1234}
        rows = all_balances(session)
    assert rows[(chart.EXPENSE_COMMISSION, "JPY")] == (1500, 0)
    assert rows[(PENDING, "BHD")] == (0, 1234)


def test_the_same_key_and_content_replays_the_original(database):
    with database.transaction() as session:
        first = journal.post(session, [accrual("a1", 100)])
    with database.transaction() as session:
        again = journal.post(session, [accrual("a1", 100), accrual("a1", 100)])
    assert first == [journal.Posted(1, False)]
    assert again == [journal.Posted(1, True), journal.Posted(1, True)]
    with database.reader() as session:
        assert debit_minus_credit(session, [PENDING]) == {(PENDING, "USD"): -100}


def test_the_same_key_with_other_content_is_a_conflict_naming_the_fields(database):
    with database.transaction() as session:
        journal.post(session, [accrual("a1", 100, invoice_id="inv-1")])
    with pytest.raises(IdempotencyConflict) as conflict, database.transaction() as session:
        journal.post(session, [accrual("a2", 5), accrual("a1", 250, at_us=7, invoice_id="inv-1")])
    assert set(conflict.value.fields) == {"effective_at_us", "lines"}
    with database.reader() as session:
        assert journal.chain_head(session)[0] == 1  # a2 was rolled back with the batch


def test_a_key_repeated_within_one_batch_with_other_content_is_a_conflict(database):
    with pytest.raises(IdempotencyConflict) as conflict, database.transaction() as session:
        journal.post(session, [accrual("a1", 100), accrual("a1", 100, customer_id="acme")])
    assert list(conflict.value.fields) == ["customer_id"]


@pytest.mark.parametrize("lines, message", [
    ((Line(PENDING, "USD", CREDIT, 100),), "2 to 100 lines"),
    ((Line(PENDING, "USD", CREDIT, 100), Line(chart.EXPENSE_COMMISSION, "USD", DEBIT, 99)), "debits do not equal credits in USD"),
    ((Line(PENDING, "USD", CREDIT, 100), Line(chart.EXPENSE_COMMISSION, "EUR", DEBIT, 100)), "debits do not equal credits in EUR, USD"),
    ((Line(PENDING, "USD", CREDIT, 0), Line(chart.EXPENSE_COMMISSION, "USD", DEBIT, 0)), "positive integer"),
    ((Line(PENDING, "USD", CREDIT, -5), Line(chart.EXPENSE_COMMISSION, "USD", DEBIT, -5)), "positive integer"),
    ((Line(PENDING, "USD", CREDIT, 1.0), Line(chart.EXPENSE_COMMISSION, "USD", DEBIT, 1.0)), "positive integer"),
    ((Line(PENDING, "USD", CREDIT, True), Line(chart.EXPENSE_COMMISSION, "USD", DEBIT, True)), "positive integer"),
])
def test_python_refuses_malformed_transactions_before_the_database(database, lines, message):
    with pytest.raises(InvalidInput) as refused, database.transaction() as session:
        journal.post(session, [Draft("adjustment", 1, lines, "bad")])
    assert message in refused.value.fields["lines"][0]
    with database.reader() as session:
        assert journal.chain_head(session) == (0, journal.GENESIS_HASH)


def test_a_transaction_holds_up_to_100_lines_under_a_key_of_up_to_200_characters(database):
    # An accrual's debits, and its one credit (migration 0048).
    lines = (Line(chart.EXPENSE_COMMISSION, "USD", DEBIT, 1),) * 99 + (Line(PENDING, "USD", CREDIT, 99),)
    with database.transaction() as session:
        [posted] = journal.post(session, [Draft("accrual", 1, lines, "k" * 200, partner_id="northwind",
                                                **program.of_an_event("k", "northwind"))])
        assert journal.load_draft(session, posted.id).lines == lines
    # 101 lines, balanced and each an accrual's: only their number is wrong.
    more = lines[:-1] + (Line(PENDING, "USD", CREDIT, 100), Line(chart.EXPENSE_COMMISSION, "USD", DEBIT, 1))
    with pytest.raises(InvalidInput, match="2 to 100 lines"), database.transaction() as session:
        journal.post(session, [Draft("accrual", 1, more, "more lines", partner_id="northwind",
                                     **program.of_an_event("more", "northwind"))])
    with pytest.raises(InvalidInput, match="1 to 200 characters"), database.transaction() as session:
        journal.post(session, [Draft("accrual", 1, lines, "k" * 201, partner_id="northwind",
                                     **program.of_an_event("k", "northwind"))])
    with database.reader() as session:
        assert program.verified(session) == [] and journal.chain_head(session)[0] == 1


def test_a_reversal_mirrors_the_original_once(database):
    with database.transaction() as session:
        journal.post(session, [accrual("a1", 100, at_us=50, customer_id="acme", invoice_id="inv-1")])
        reversal = journal.reverse(session, 1, reason="entered twice")
    with database.transaction() as session:
        replay = journal.reverse(session, 1, reason="entered twice")
        stored = journal.load_draft(session, 2)
    assert reversal == journal.Posted(2, False) and replay == journal.Posted(2, True)
    assert stored.kind == "reversal" and stored.reverses_id == 1 and stored.effective_at_us == 50
    assert stored.invoice_id == "inv-1" and stored.memo == "entered twice"
    assert [(line.account, line.side) for line in stored.lines] == [
        (chart.EXPENSE_COMMISSION, CREDIT), (PENDING, DEBIT)]
    with database.reader() as session:
        assert debit_minus_credit(session, [PENDING]) == {(PENDING, "USD"): 0}


def test_a_second_reversal_under_another_key_is_a_conflict(database):
    with database.transaction() as session:
        journal.post(session, [accrual("a1", 100)])
        journal.reverse(session, 1, reason="first")
    with pytest.raises(Conflict, match="already reversed by transaction 2"), database.transaction() as session:
        journal.reverse(session, 1, reason="second", idempotency_key="other")


def test_a_reversal_cannot_be_reversed_and_unknown_transactions_are_not_found(database):
    with database.transaction() as session:
        journal.post(session, [accrual("a1", 100)])
        journal.reverse(session, 1, reason="first", effective_at_us=2_000)
    with pytest.raises(Conflict, match="itself a reversal"), database.transaction() as session:
        journal.reverse(session, 2, reason="undo")
    with pytest.raises(NotFound), database.transaction() as session:
        journal.reverse(session, 77, reason="nothing")


def test_a_large_batch_posts_in_one_call_with_a_gap_free_chain(database):
    drafts = [accrual(f"k{i}", 1 + i % 97, at_us=i) for i in range(3_000)]
    with database.transaction() as session:
        posted = journal.post(session, drafts)
    assert [p.id for p in posted] == list(range(1, 3_001))
    with database.reader() as session:
        report = verify(session)
        assert debit_minus_credit(session, [PENDING]) == {(PENDING, "USD"): -sum(1 + i % 97 for i in range(3_000))}
        assert report.chain_head == journal.chain_head(session)[1]
        assert program.verified(session) == []
    assert report.transactions_checked == 3_000 and program.besides_made_up_events(report.problems) == []


def test_verify_on_an_empty_journal_is_clean(database):
    with database.reader() as session:
        report = verify(session)
        assert report[:6] == (True, 0, journal.GENESIS_HASH, [], 0, None)
        assert report.program_head == program_chain.head(session)
