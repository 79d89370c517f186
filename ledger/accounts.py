"""The chart of accounts of the contract. Account names are part of the public contract.

| account                                  | type      | normal |
|------------------------------------------|-----------|--------|
| expense:commission                       | expense   | debit  |
| expense:commission:writeoff              | expense   | debit  |
| expense:commission:adjustment            | expense   | debit  |
| liability:partner:{partner_id}:pending   | liability | credit |
| liability:partner:{partner_id}:available | liability | credit |
| liability:payouts:in_transit             | liability | credit |
| asset:cash                               | asset     | debit  |

Accounts are created on first use with their type and normal side; a name outside the chart is a
programmer error. Account rows never change, so their ids are cached per session.
"""

from __future__ import annotations

import re
from typing import Iterable, NamedTuple

from sqlalchemy import event
from sqlalchemy.orm import Session

from ledger.db import after_commit, driver_rows, in_lists, insert_many, shared_cache
from ledger.errors import invalid
from ledger.schema import accounts

EXPENSE_COMMISSION = "expense:commission"
EXPENSE_WRITEOFF = "expense:commission:writeoff"
EXPENSE_ADJUSTMENT = "expense:commission:adjustment"
PAYOUTS_IN_TRANSIT = "liability:payouts:in_transit"
CASH = "asset:cash"

_FIXED = {
    EXPENSE_COMMISSION: ("expense", "D"),
    EXPENSE_WRITEOFF: ("expense", "D"),
    EXPENSE_ADJUSTMENT: ("expense", "D"),
    PAYOUTS_IN_TRANSIT: ("liability", "C"),
    CASH: ("asset", "D"),
}
# Partner ids appear inside account names, so they may not contain ':'.
PARTNER_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_PARTNER_ACCOUNT = re.compile(r"liability:partner:([A-Za-z0-9][A-Za-z0-9_.\-]{0,63}):(pending|available)")


class AccountSpec(NamedTuple):
    name: str
    type: str
    normal_side: str  # 'D' or 'C'
    partner_id: str | None


def validate_partner_id(partner_id: str, *, field: str = "partner_id") -> str:
    if not isinstance(partner_id, str) or not PARTNER_ID_PATTERN.fullmatch(partner_id):
        raise invalid(field, "must be 1-64 characters of letters, digits, '_', '.' or '-', starting with a letter or digit")
    return partner_id


def pending(partner_id: str) -> str:
    return f"liability:partner:{partner_id}:pending"


def available(partner_id: str) -> str:
    return f"liability:partner:{partner_id}:available"


def spec(name: str) -> AccountSpec:
    """The chart's entry for `name`; asserts that the name is in the chart."""
    found = entry(name)
    assert found is not None, f"account {name!r} is not in the chart of accounts"
    return found


def entry(name: str) -> AccountSpec | None:
    """The chart's entry for `name`, or None when the name is not in the chart."""
    fixed = _FIXED.get(name)
    if fixed is not None:
        return AccountSpec(name, fixed[0], fixed[1], None)
    match = _PARTNER_ACCOUNT.fullmatch(name)
    return None if match is None else AccountSpec(name, "liability", "C", match.group(1))


def account_ids(session: Session, names: Iterable[str]) -> dict[str, int]:
    """Ids of the named accounts, creating the missing ones: one round trip when none is missing
    from the database, three when some are, none when every name is known. An account's id never
    changes once committed (the table is append-only), so ids known to this transaction join the
    process's cache when it commits."""
    committed = shared_cache(session, "account_ids")
    mine: dict[str, int] | None = session.info.get("account_ids")
    if mine is None:
        mine = session.info["account_ids"] = {}
        if committed is not None:
            after_commit(session, lambda: committed.update(mine))
    wanted = set(names)
    missing = {name for name in wanted if name not in mine and (committed is None or name not in committed)}
    if missing:
        mine.update(_ids(session, missing))
        new = [tuple(spec(name)) for name in sorted(missing - mine.keys())]
        if new:
            insert_many(session, accounts, AccountSpec._fields, new)
            mine.update(_ids(session, {row[0] for row in new}))
    if committed is None:
        return mine
    return {name: mine[name] if name in mine else committed[name] for name in wanted}


def _ids(session: Session, names: set[str]) -> list[tuple[str, int]]:
    return [row for condition, params in in_lists(session, "name", sorted(names))
            for row in driver_rows(session, f"SELECT name, id FROM accounts WHERE {condition}", params)]


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_soft_rollback")
def _forget_cached_ids(session: Session, *_args) -> None:
    """The session's own ids are per transaction: a rollback may have undone account creations,
    and after a commit they are in the process's cache."""
    session.info.pop("account_ids", None)
