"""Driving the books over HTTP in tests: request bodies and a caller that checks statuses.

`Caller` wraps a test client and the keys of a world; `call.post(path, body, as_="billing")`
returns the response, and `call.ok(...)` / `call.created(...)` also assert its status and return
its JSON. `unique()` makes ids no other test uses, for the shared `scratch` world.
"""

from __future__ import annotations

import uuid
from typing import Any

from api.pagination import sealed
from tests.api.conftest import STANDARD_TERMS, bearer


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def money(amount: str, currency: str = "USD") -> dict[str, str]:
    return {"amount": amount, "currency": currency}


def instant(day: str) -> str:
    return day if "T" in day else f"{day}T00:00:00Z"


def plan_body(plan_id: str, **terms: Any) -> dict:
    return {"id": plan_id, "name": f"Plan {plan_id}", **STANDARD_TERMS, **terms}


def event_body(event_id: str, customer_id: str, invoice_id: str, amount: str, day: str,
               kind: str = "invoice_paid", currency: str = "USD") -> dict:
    return {"id": event_id, "type": kind, "customer_id": customer_id, "invoice_id": invoice_id,
            "amount": money(amount, currency), "occurred_at": instant(day)}


class Caller:
    def __init__(self, client, keys) -> None:
        self.client, self.keys = client, keys
        self.more_keys: dict[str, str] = {}

    def headers(self, as_: str, extra: dict | None = None) -> dict:
        key = self.more_keys[as_] if as_ in self.more_keys else getattr(self.keys, as_)
        return bearer(key) | (extra or {})

    def partner_key(self, partner_id: str) -> str:
        """Create a key for the partner (an admin call); `as_=partner_id` then uses it."""
        body = self.created("/v1/api-keys", {"role": "partner", "partner_id": partner_id}, as_="admin")
        self.more_keys[partner_id] = body["key"]
        return body["key"]

    def post(self, path: str, body: Any = None, *, as_: str = "finance", headers: dict | None = None):
        return self.client.post(path, json=body, headers=self.headers(as_, headers))

    def patch(self, path: str, body: Any, *, as_: str = "finance"):
        return self.client.patch(path, json=body, headers=self.headers(as_))

    def delete(self, path: str, *, as_: str = "finance"):
        return self.client.delete(path, headers=self.headers(as_))

    def get(self, path: str, *, as_: str = "finance", headers: dict | None = None):
        return self.client.get(path, headers=self.headers(as_, headers))

    def created(self, path: str, body: Any = None, *, as_: str = "finance") -> Any:
        return expect(self.post(path, body, as_=as_), 201)

    def ok(self, path: str, body: Any = None, *, as_: str = "finance") -> Any:
        return expect(self.post(path, body, as_=as_), 200)

    def read(self, path: str, *, as_: str = "finance") -> Any:
        return expect(self.get(path, as_=as_), 200)

    def partner(self, partner_id: str | None = None, plan_id: str = "standard", **fields: Any) -> str:
        """Enrol a partner (a new id unless given) on a plan; returns its id."""
        partner_id = partner_id or unique("pt")
        self.created("/v1/partners", {"id": partner_id, "name": f"Partner {partner_id}", "type": "msp",
                                      "plan_id": plan_id, **fields})
        return partner_id

    def attribute(self, customer_id: str, partner_id: str, day: str = "2026-01-01", **fields: Any) -> Any:
        return self.created("/v1/attributions", {"customer_id": customer_id, "partner_id": partner_id,
                                                 "effective_from": day, "source": "manual", **fields}, as_="billing")

    def event(self, *args: Any, **kwargs: Any) -> Any:
        return self.created("/v1/revenue-events", event_body(*args, **kwargs), as_="billing")


def expect(response, status: int) -> Any:
    assert response.status_code == status, (response.status_code, response.data[:2000])
    return response.get_json()


def errors_of(response, status: int = 422) -> set[str]:
    """The fields a problem names, after checking its status and media type."""
    assert response.status_code == status, (response.status_code, response.data[:2000])
    assert response.mimetype == "application/problem+json"
    return set(response.get_json().get("errors", {}))


def next_cursor(shared, listing: str) -> str:
    """The cursor of a list's second page (finance's view of the shared world)."""
    cursor = expect(shared.client.get(f"{listing}?limit=1", headers=bearer(shared.keys.finance)), 200)["next_cursor"]
    assert cursor is not None, listing
    return cursor


def crafted_cursor(content: str) -> str:
    """A cursor as this API encodes one, around any content, checked as for a request without filters
    (`api.pagination.sealed`): what is refused is its content, not its check."""
    return sealed(content)


def assert_not_a_cursor(shared, listing: str, cursor: str) -> None:
    response = shared.client.get(listing, query_string={"cursor": cursor}, headers=bearer(shared.keys.finance))
    assert errors_of(response) == {"cursor"}, cursor
    assert response.get_json()["errors"]["cursor"] == ["is not a cursor returned by this API"]
