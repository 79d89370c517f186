"""API keys: who may call the service, in which role, for which partner.

A key is 32 random bytes from `secrets`, shown once as `rsk_<43 url-safe characters>`. Only its
SHA-256 (hex) is stored, in `api_keys.key_hash`, so a copy of the database cannot be used to call
the API. Lookup is by hash (a unique index) and the stored hash is compared again with
`hmac.compare_digest`.

Roles: `admin` (everything), `finance` (everything but key management), `billing` (revenue events,
attributions, customer reads) and `partner`, bound to exactly one partner id. The binding is checked
here and by the table's `ck_api_keys_partner_binding` constraint.

A key is revoked by a row in `api_key_revocations` (migration 0027), never by changing or deleting
its own row: a revoked key no longer authenticates. Nor does a key made to expire, from its
`expires_at_us` on (migration 0057; none by default). It is named by its id, or by the key itself
(`key_id_of`): a key that leaked is at hand when its id was not kept. Processes cache a key's principal for
`api.auth.PRINCIPAL_TTL_S`; another process still takes a revoked key for that long at most.

Keys and revocations are chained as they are made (`ledger.program_chain`, migration 0057), so
`verify` names one removed or rewritten past the database's rules. A revocation the chain names
counts even when its row is gone: removing it does not let the key in again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import NamedTuple

from sqlalchemy import exists, false, insert, null, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ledger import program_chain
from ledger.accounts import validate_partner_id
from ledger.db import is_postgres
from ledger.errors import NotFound, invalid
from ledger.instants import now_us
from ledger.partners import partner_exists
from ledger.schema import API_ROLES, api_key_revocations, api_keys

KEY_PREFIX = "rsk_"
KEY_ENTROPY_BYTES = 32
# A presented key longer than this cannot be one of ours; refuse it before hashing.
KEY_LENGTH_MAX = 200
REASON_LENGTH_MAX = 500  # of a revocation's reason
# HTTP's optional whitespace around a header's value, which a key presented is read without:
# `str.strip()` also took a no-break space or a NEL (0xA0, 0x85 as a WSGI server hands the bytes over).
OPTIONAL_WHITESPACE = " \t"


class Revocation(NamedTuple):
    """A key's revocation; its instant and reason None when its row was removed past the database's
    rules and the program's chain still names it (`verify` names the row removed): the key stays
    revoked."""

    key_id: str
    revoked_at_us: int | None
    reason: str | None


class KeyRecord(NamedTuple):
    """A key as `revshare keys list` shows it: never the key itself, which is not stored."""

    id: str
    role: str
    partner_id: str | None
    created_at_us: int
    revocation: Revocation | None
    expires_at_us: int | None = None


class Principal(NamedTuple):
    """The caller behind a valid key (until `expires_at_us`, when it is made to expire)."""

    key_id: str
    role: str
    partner_id: str | None
    expires_at_us: int | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, role: str, partner_id: str | None = None,
               expires_at_us: int | None = None) -> tuple[str, str]:
    """Store a new key for `role` (and `partner_id` for the partner role), that no longer
    authenticates from `expires_at_us` on if given; return (id, key).

    The key itself is returned here once and never stored.
    """
    _check_binding(session, role, partner_id)
    created_at_us = now_us()
    if expires_at_us is not None and expires_at_us <= created_at_us:
        raise invalid("expires_at", "must be after now: a key made to expire is made for some time to come")
    key_id = "key_" + secrets.token_hex(12)
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_ENTROPY_BYTES)
    values = {"id": key_id, "key_hash": hash_key(key), "role": role, "partner_id": partner_id,
              "created_at_us": created_at_us, "expires_at_us": expires_at_us}
    if program_chain.keys_chained(session):  # and so keys expire (revision 0057)
        session.execute(insert(api_keys).values(**values))
        program_chain.chain(session, [("api_keys", values)])
    else:
        assert expires_at_us is None, "books below revision 0057 keep no expiry"
        session.execute(insert(api_keys).values(**{column: values[column] for column in values
                                                   if column != "expires_at_us"}))
    return key_id, key


def _check_binding(session: Session, role: str, partner_id: str | None) -> None:
    """A partner key is bound to a partner that exists (a mistyped id made a key that saw nothing,
    whoever made it: the API and `revshare keys create` alike; the database holds it: migration 0029)."""
    if role not in API_ROLES:
        raise invalid("role", f"must be one of {', '.join(API_ROLES)}")
    if role == "partner":
        if partner_id is None:
            raise invalid("partner_id", "is required for the partner role")
        validate_partner_id(partner_id)
        if not partner_exists(session, partner_id):
            raise invalid("partner_id", f"partner {partner_id!r} does not exist")
    elif partner_id is not None:
        raise invalid("partner_id", "is only allowed for the partner role")


def authenticate(session: Session, key: str) -> Principal | None:
    """The principal of a presented key, or None when it is not a key of this service, or one revoked
    or expired."""
    if not isinstance(key, str) or not key.startswith(KEY_PREFIX) or len(key) > KEY_LENGTH_MAX:
        return None
    presented = hash_key(key)
    k = api_keys.c
    revoked = exists().where(api_key_revocations.c.api_key_id == k.id) | _revocation_chained(session)
    query = select(k.id, k.key_hash, k.role, k.partner_id, _expiry(session)).where(k.key_hash == presented, ~revoked)
    row = session.execute(query).first()
    if row is None or not hmac.compare_digest(row.key_hash, presented):
        return None
    if row.expires_at_us is not None and row.expires_at_us <= now_us():
        return None
    return Principal(row.id, row.role, row.partner_id, row.expires_at_us)


def revoke_key(session: Session, key_id: str, reason: str | None = None) -> tuple[Revocation, bool]:
    """Revoke a key; returns (revocation, created). Revoking a revoked key again changes nothing and
    returns the first revocation."""
    if reason is not None and (not isinstance(reason, str) or not reason.strip() or len(reason) > REASON_LENGTH_MAX):
        raise invalid("reason", f"must be text of 1 to {REASON_LENGTH_MAX} characters, not all blank")
    if session.execute(select(api_keys.c.id).where(api_keys.c.id == key_id)).first() is None:
        raise NotFound(f"API key {key_id!r} does not exist")
    revocation = Revocation(key_id, now_us(), reason)
    # A key revoked already, or by a revocation racing this one (whose insert this one waits for on
    # PostgreSQL), inserts nothing and answers the first revocation.
    dialect_insert = postgresql.insert if is_postgres(session) else sqlite.insert
    inserted = session.execute(dialect_insert(api_key_revocations)
                               .values(api_key_id=key_id, revoked_at_us=revocation.revoked_at_us, reason=reason)
                               .on_conflict_do_nothing(index_elements=["api_key_id"])
                               .returning(api_key_revocations.c.api_key_id)).first()
    if inserted is not None:
        if program_chain.keys_chained(session):
            row = {"api_key_id": key_id, "revoked_at_us": revocation.revoked_at_us, "reason": reason}
            program_chain.chain(session, [("api_key_revocations", row)])
        return revocation, True
    first = session.execute(select(api_key_revocations).where(api_key_revocations.c.api_key_id == key_id)).one()
    return Revocation(first.api_key_id, first.revoked_at_us, first.reason), False


def _revocation_chained(session: Session):
    """Whether the program's chain names a revocation of the key (`api_keys.c.id`), as a condition:
    one removed past the database's rules still counts (revision 0057; none below it)."""
    if not program_chain.keys_chained(session):
        return false()
    c = program_chain.program_chain.c
    return exists().where(c.fact_table == "api_key_revocations", c.fact_id == api_keys.c.id)


def _expiry(session: Session):
    """A key's expiry, as a column to select: none on books below revision 0057, which keep none."""
    if program_chain.keys_chained(session):
        return api_keys.c.expires_at_us
    return null().label("expires_at_us")


def list_keys(session: Session, *, after_id: str | None = None, limit: int | None = None) -> list[KeyRecord]:
    """Every key with its revocation if it has one, oldest first (`revshare keys list`); or, given a
    `limit`, a page of them in id order after `after_id` (the API's list, whose pages are by key)."""
    k, r = api_keys.c, api_key_revocations.c
    query = (select(k.id, k.role, k.partner_id, k.created_at_us, r.revoked_at_us, r.reason, _expiry(session),
                    _revocation_chained(session).label("revocation_chained"))
             .outerjoin(api_key_revocations, r.api_key_id == k.id))
    if limit is None:
        query = query.order_by(k.created_at_us, k.id)
    else:
        query = query.order_by(k.id).limit(limit).where(k.id > after_id if after_id is not None else True)
    return [KeyRecord(row.id, row.role, row.partner_id, row.created_at_us, _revocation(row), row.expires_at_us)
            for row in session.execute(query)]


def _revocation(row) -> Revocation | None:
    if row.revoked_at_us is not None:
        return Revocation(row.id, row.revoked_at_us, row.reason)
    return Revocation(row.id, None, None) if row.revocation_chained else None


def pasted(text: str) -> str:
    """A key (or key id) as an operator pastes it, read as a request's `Authorization` header's value
    is: spaces and tabs around it taken for none, and a `Bearer ` before it read past."""
    named = text.strip(OPTIONAL_WHITESPACE)
    scheme, _, rest = named.partition(" ")
    rest = rest.strip(OPTIONAL_WHITESPACE)
    return rest if scheme.lower() == "bearer" and rest else named


def key_id_of(session: Session, key: str) -> str:
    """The id of a key given the key itself, revoked or not."""
    key_id = None
    if isinstance(key, str) and key.startswith(KEY_PREFIX) and len(key) <= KEY_LENGTH_MAX:
        key_id = session.execute(select(api_keys.c.id).where(api_keys.c.key_hash == hash_key(key))).scalar()
    if key_id is None:
        raise NotFound("no API key of this service is that key")
    return key_id
