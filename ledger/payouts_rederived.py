"""Each payout run's payouts re-derived from the balances it read and the program as recorded when it
was made.

A run at instant t pays each partner active at t, in each currency whose available balance as of t
is positive and reaches the minimum of the partner's plan version in effect at t, the whole balance
(`ledger.payouts`). What balance the run read, the journal holds exactly: the run posts its payouts
in one batch under the journal lock, after the releases it posts first, so every transaction with
an id below its first payout's was committed when it read the balances, and no other was. A
partner's balance before the run is the sum of its available account's lines of those transactions
effective at or before t (a posting moved out of a closed period counts at the instant its lines
were moved to, as the run read it).

What the program said is read as `ledger.recorded_program` reads it for payments: as recorded when
the run was made (its `created_at`), a status or plan dated back but recorded later not counted,
and one recorded within `RECORDED_SKEW_US` of the run either seen or not. A run passes when one of
those readings gives what it paid.

`verify_payouts_rederived` names two runs out of time order (`payout_runs_out_of_order`: the one
dated before paid again what the other paid), a payout of other than the whole balance
(`payout_unlike_balance`), one to a partner the program did not let the run pay, not active at t,
without a plan version, or under its minimum (`payout_unlike_program`), and a partner and currency
a run paid nothing though every reading of the program lets it be paid (`payout_missing`). So a partner's status or plan
rewritten past the database's guards (a suspension dated from the partner's enrolment, a minimum
raised), which changes what the next runs pay and nothing in the journal, is named at the payouts
made before it. A run that paid no one has no payout to place it among the transactions: what it
left unpaid is not re-derived.

The balances are summed as the runs go (`balances_read`), each line read about once, so the cost
grows with the lines, not with runs times lines.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, NamedTuple

from sqlalchemy.orm import Session

from ledger import accounts as chart
from ledger.db import driver_rows
from ledger.instants import format_instant
from ledger.money import format_minor
from ledger.recorded_program import RECORDED_SKEW_US, RecordedProgram


class Run(NamedTuple):
    at_us: int
    recorded_at_us: int
    first_transaction_id: int  # of its first payout: every transaction below it was there when it read
    paid: dict[tuple[str, str], tuple[int, int]]  # (partner, currency) -> (payout transaction, amount)


def verify_payouts_rederived(session: Session) -> list[tuple[int | None, str, str]]:
    """(transaction id, code, message) of each payout, or each partner and currency left unpaid,
    that the balances a run read and the program as recorded then do not give (module docstring)."""
    # account id -> partner, of every partner's available account (the partner as the account stores
    # it, which `verify_accounts` holds to the chart)
    accounts = {account_id: partner_id for account_id, partner_id, name in driver_rows(
        session, "SELECT id, partner_id, name FROM accounts WHERE partner_id IS NOT NULL")
        if name == chart.available(partner_id)}
    runs = _runs(session, accounts)
    if not runs:
        return []
    program, _ = RecordedProgram.load(session)  # unreadable terms are named by `verify_commissions`
    problems: list[tuple[int | None, str, str]] = []
    for run, balances, ahead in balances_read(session, runs, accounts):
        if ahead is not None:
            problems.append(_out_of_order(run, ahead))
        for key in sorted(set(balances) | set(run.paid)):
            problems += _check(program, run, key, balances.get(key, 0))
    return problems


def _runs(session: Session, accounts: dict[int, str]) -> list[Run]:
    """The runs as the journal holds their payouts: a run's payouts are posted in one batch, effective
    at its instant and recorded together; the partner is the one whose available account each
    debits (the records in `payouts` and `payout_runs` are checked against these postings apart:
    `verify_payout_postings`, `verify_payout_runs`)."""
    runs: dict[int, Run] = {}
    for transaction_id, at_us, recorded_us, account_id, currency, amount in driver_rows(
            session, "SELECT t.id, t.effective_at_us, t.recorded_at_us, l.account_id, l.currency, l.amount_minor"
                     " FROM journal_transactions t JOIN journal_lines l ON l.transaction_id = t.id AND l.side = 'D'"
                     " WHERE t.kind = 'payout' ORDER BY t.effective_at_us, t.id"):
        run = runs.setdefault(at_us, Run(at_us, recorded_us, transaction_id, {}))
        run.paid[(accounts.get(account_id, f"account id {account_id}"), currency)] = (transaction_id, amount)
    return list(runs.values())


def _out_of_order(run: Run, ahead: Run) -> tuple[int | None, str, str]:
    """`payout_runs_out_of_order`: the journal holds `run`'s payouts before those of `ahead`, a run
    dated before it. Runs are made in time order, which the database holds for every writer from
    migration 0043 on: before it, a session writing its own SQL could make a run dated before the
    latest once the latest had paid. Each of the two paid the balance as of its own instant, which
    the other's payouts do not lower, so each passes alone, and the same balance was paid twice."""
    return (run.first_transaction_id, "payout_runs_out_of_order",
            f"the run at {format_instant(run.at_us)} posted its payouts (from transaction {run.first_transaction_id})"
            f" before the run at {format_instant(ahead.at_us)} (from transaction {ahead.first_transaction_id}), which "
            "is dated before it and so paid again the balances it paid")


def balances_read(session: Session, runs: list[Run], accounts: dict[int, str]
                  ) -> Iterator[tuple[Run, dict[tuple[str, str], int], Run | None]]:
    """Each run (in time order) with {(partner, currency): available balance} as it read them, and
    the run dated before it whose payouts the journal holds after its own, if any.

    Runs are made in time order, later runs after earlier ones, so the lines a run read are the
    previous run's and those that came between: of the transactions between the two runs' first
    payouts, the lines effective by the run's instant; of the transactions before, the lines
    effective after the previous run's instant and by this one's (dated ahead, or an adjustment dated
    between the two). The sums are carried from run to run, each line read about once. A run out of
    that order (`payout_runs_out_of_order`) is summed on its own, and yielded with the run in order
    whose payouts came last."""
    sums: dict[tuple[str, str], int] = defaultdict(int)
    latest: Run | None = None  # the last run in order
    for run in runs:
        below_id = 0 if latest is None else latest.first_transaction_id
        if run.first_transaction_id < below_id:
            yield run, _sums(session, accounts, _EARLIER, (run.first_transaction_id, run.at_us)), latest
            continue
        found = [_sums(session, accounts, _BETWEEN, (below_id, run.first_transaction_id, run.at_us))]
        if latest is not None:
            found.append(_sums(session, accounts, _LATER_DATED, (below_id, latest.at_us, run.at_us)))
        for part in found:
            for key, amount in part.items():
                sums[key] += amount
        latest = run
        yield run, dict(sums), None


# The lines of partners' accounts a run read, in parts (`balances_read`). Each part is read by the
# index its range is on: `+` keeps SQLite from taking the other column's index for a range that
# holds nearly every line.
_EARLIER = "l.transaction_id < ? AND l.effective_at_us <= ?"
_BETWEEN = "l.transaction_id >= ? AND l.transaction_id < ? AND +l.effective_at_us <= ?"
_LATER_DATED = "+l.transaction_id < ? AND l.effective_at_us > ? AND l.effective_at_us <= ?"


def _sums(session: Session, accounts: dict[int, str], condition: str, params: tuple[int, ...]
          ) -> dict[tuple[str, str], int]:
    rows = driver_rows(session, "SELECT l.account_id, l.currency,"
                                " sum(CASE l.side WHEN 'C' THEN l.amount_minor ELSE -l.amount_minor END)"
                                f" FROM journal_lines l WHERE {condition} GROUP BY l.account_id, l.currency", params)
    return {(accounts[account_id], currency): int(balance) for account_id, currency, balance in rows
            if account_id in accounts}


def _check(program: RecordedProgram, run: Run, key: tuple[str, str], balance: int
           ) -> list[tuple[int | None, str, str]]:
    partner_id, currency = key
    minimums = _minimums(program, partner_id, currency, run)
    paid = run.paid.get(key)
    at = f"the run at {format_instant(run.at_us)}"
    if paid is None:
        if balance > 0 and None not in minimums and all(balance >= minimum for minimum in minimums):
            return [(None, "payout_missing", f"{at} paid {partner_id!r} nothing in {currency}, though its available "
                                             f"balance was {format_minor(balance, currency)} and the program, "
                                             "as recorded then, lets it be paid")]
        return []
    transaction_id, amount = paid
    if amount != balance:
        return [(transaction_id, "payout_unlike_balance",
                 f"{at} paid {partner_id!r} {format_minor(amount, currency)} {currency}, but its available balance "
                 f"was {format_minor(balance, currency)}")]
    if not any(minimum is not None and amount >= minimum for minimum in minimums):
        return [(transaction_id, "payout_unlike_program",
                 f"{at} paid {partner_id!r} {format_minor(amount, currency)} {currency}, which the program as "
                 "recorded then does not let it pay: the partner not active, without a plan, or under its minimum")]
    return []


def _minimums(program: RecordedProgram, partner_id: str, currency: str, run: Run) -> set[int | None]:
    """Each minimum payout in `currency` a reading of the program at the run gives the partner, None
    for a reading that does not let it be paid at all (not active, no plan version in effect, terms
    that do not parse)."""
    return {None if status != "active" or version is None or version.value is None
            else version.value.min_payout_minor.get(currency, 0)
            for status, version in program.readings(partner_id, run.at_us, run.recorded_at_us, RECORDED_SKEW_US)}
