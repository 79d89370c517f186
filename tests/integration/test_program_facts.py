"""Program facts (plan versions, partner statuses and plans, attributions) are dated at most 366
days after they are recorded: in Python (a 422 naming the field, tests/api) and in the database,
whoever writes the row (migration 0017)."""

import pytest
import sqlalchemy as sa

from ledger import partners, plans
from ledger.errors import InvalidInput
from tests.api.conftest import STANDARD_TERMS, enroll
from tests.integration.conftest import chain_due

HORIZON_US = 366 * 86_400 * 1_000_000
RECORDED_US = 1_780_000_000_000_000  # 2026-05-28, after every fact `enroll` dates

ROWS = {
    "plan_versions": ("INSERT INTO plan_versions (plan_id, version, effective_from_us, terms, created_at_us)"
                      " VALUES ('standard',"
                      " (SELECT max(version) + 1 FROM plan_versions WHERE plan_id = 'standard'), :at,"
                      " (SELECT terms FROM plan_versions WHERE plan_id = 'standard'), :rec)"),
    "partner_statuses": ("INSERT INTO partner_statuses (partner_id, status, effective_at_us, recorded_at_us)"
                         " VALUES ('p1', 'suspended', :at, :rec)"),
    "partner_plans": ("INSERT INTO partner_plans (partner_id, plan_id, effective_from_us, recorded_at_us)"
                      " VALUES ('p1', 'standard', :at, :rec)"),
    "attributions": ("INSERT INTO attributions (customer_id, partner_id, effective_from_us, source, recorded_at_us)"
                     " VALUES ('p1-customer', 'p2', :at, 'manual', :rec)"),
}


@pytest.mark.parametrize("table", sorted(ROWS))
def test_the_database_refuses_a_fact_dated_more_than_366_days_after_it_is_recorded(database, table):
    enroll(database)
    with pytest.raises(sa.exc.DBAPIError, match="dated at most 366 days after it is recorded"):
        with database.engine.begin() as connection:
            connection.execute(sa.text(ROWS[table]), {"at": RECORDED_US + HORIZON_US + 1, "rec": RECORDED_US})
    with database.engine.begin() as connection:  # at the horizon: accepted
        connection.execute(sa.text(ROWS[table]), {"at": RECORDED_US + HORIZON_US, "rec": RECORDED_US})
        chain_due(connection)


@pytest.mark.parametrize("name", ["", " ", "\t \n"])
def test_a_blank_name_is_refused_by_the_domain_too(database, name):
    enroll(database)
    with pytest.raises(InvalidInput) as refused, database.transaction() as session:
        partners.create_partner(session, "blank", name, "msp", "standard")
    assert set(refused.value.fields) == {"name"}
    with pytest.raises(InvalidInput) as refused, database.transaction() as session:
        plans.create_plan(session, "blank", name, STANDARD_TERMS)
    assert set(refused.value.fields) == {"name"}
