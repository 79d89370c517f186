"""POST /v1/api-keys: keys of each role, and partner keys only for partners that exist."""

import pytest

from tests.api.books import errors_of, expect


@pytest.mark.parametrize("role, partner_id", [("finance", None), ("billing", None), ("admin", None),
                                              ("partner", "p1")])
def test_an_admin_creates_a_key_that_works_at_once(call, role, partner_id):
    body = call.created("/v1/api-keys", {"role": role, "partner_id": partner_id}, as_="admin")
    assert (body["role"], body["partner_id"]) == (role, partner_id) and body["key"].startswith("rsk_")
    response = call.client.get("/v1/transactions?limit=1", headers={"Authorization": f"Bearer {body['key']}"})
    assert response.status_code == (403 if role == "billing" else 200)


def test_a_partner_key_for_a_partner_that_does_not_exist_is_a_422_naming_it(shared):
    response = shared.client.post("/v1/api-keys", json={"role": "partner", "partner_id": "nobody"},
                                  headers={"Authorization": f"Bearer {shared.keys.admin}"})
    assert errors_of(response) == {"partner_id"}
    assert expect(response, 422)["errors"]["partner_id"] == ["partner 'nobody' does not exist"]


@pytest.mark.parametrize("body", [{"role": "partner"}, {"role": "finance", "partner_id": "p1"}],
                         ids=["partner-without-id", "id-without-partner-role"])
def test_a_partner_binding_that_does_not_fit_the_role_is_a_422_naming_it(shared, body):
    response = shared.client.post("/v1/api-keys", json=body, headers={"Authorization": f"Bearer {shared.keys.admin}"})
    assert errors_of(response) == {"partner_id"}
