"""Schemathesis generates requests from the OpenAPI document for every operation, valid
(positive) and invalid (negative), sent with an admin key: no response is a 5xx, invalid requests
are refused, and every response conforms to the document (status code, content type, headers, body
schema). Runs on SQLite: the engines share every line of the API, and the hostile input is what is
under test.

One check is left out: "schema-valid data is accepted". The domain refuses, with a 4xx naming the
field, requests that the document cannot describe as invalid: an unknown plan or cursor, a refund
of an invoice never paid, a period that has not ended.

Schemathesis's own pytest plugin does not support pytest 9, so its Hypothesis strategies are
driven directly, one test per operation and mode."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from api import create_app
from ledger.db import Database
from ledger.keys import create_key
from ledger.settings import Settings
from tests.conftest import new_sqlite_url
from tests.program import seed

EXAMPLES_PER_OPERATION = 10
# A batch refuses each malformed event in its own slot and answers 200 (DESIGN.md: each event is
# applied or refused on its own), so "a schema-violating request is refused" holds per item there.
PER_ITEM_REFUSALS = {"POST /v1/revenue-events/batch"}


def _cases() -> list:
    """(operation label, mode) pairs, from a document built without touching any database; invalid
    requests only for operations that take some input."""
    app = create_app(Settings.build(database_url="sqlite:///:memory:"))
    schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", app)
    cases = []
    for operation in (result.ok() for result in schema.get_all_operations()):
        cases.append(pytest.param(operation.label, GenerationMode.POSITIVE, id=f"{operation.label} valid"))
        if any(True for _ in operation.iter_parameters()) or len(operation.body):
            cases.append(pytest.param(operation.label, GenerationMode.NEGATIVE, id=f"{operation.label} invalid"))
    return sorted(cases, key=lambda case: case.id)


@pytest.fixture(scope="module")
def fuzzed(sqlite_template, tmp_path_factory):
    database = Database(new_sqlite_url(sqlite_template, tmp_path_factory.mktemp("fuzz")))
    with database.transaction() as session:
        seed(session)
        _, admin = create_key(session, "admin")
    # The production body limit: 413s for oversized bodies are tested in test_errors.py.
    app = create_app(Settings.build(database_url=database.url), database)
    schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", app)
    operations = {result.ok().label: result.ok() for result in schema.get_all_operations()}
    yield operations, {"Authorization": f"Bearer {admin}"}
    database.dispose()


@pytest.mark.parametrize("label, mode", _cases())
def test_no_generated_request_gets_a_server_error_or_breaks_the_document(fuzzed, label, mode):
    operations, headers = fuzzed
    excluded = [positive_data_acceptance] + ([negative_data_rejection] if label in PER_ITEM_REFUSALS else [])

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operations[label].as_strategy(mode))
    def exercise(case):
        case.call_and_validate(headers=headers, excluded_checks=excluded)

    exercise()
