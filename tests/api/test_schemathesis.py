"""Schemathesis generates requests from the OpenAPI document for every operation, valid
(positive) and invalid (negative), sent with an admin key (or, for a case invalid by its key, its
own: `sent_headers`): no response is a 5xx, invalid requests
are refused, and every response conforms to the document (status code, content type, headers, body
schema). Schemathesis's status code check passes any status when an operation has a `default`
response, which every operation keeps (for a 500, and what the server refuses before the app sees
a request), so each status is also checked to be one the operation lists explicitly. These
per-operation tests run on SQLite: the engines share every line of the API, and the hostile input
is what is under test.

One check is left out: "schema-valid data is accepted". The domain refuses, with a 4xx naming the
field, requests that the document cannot describe as invalid: an unknown plan or cursor, a refund
of an invoice never paid, a period that has not ended.

Schemathesis's own pytest plugin does not support pytest 9, so its Hypothesis strategies are
driven directly, one test per operation and mode.

Sequences of linked operations: `schema.as_state_machine()` needs no pytest plugin. It is a
Hypothesis RuleBasedStateMachine (`APIStateMachine.run()`), and schemathesis infers the links from
the document alone (about 200: a partner created then read, patched, its balance and statement; a
revenue event then its transactions and their reversal; a payout run then the settle and fail of
its payouts, and a settle then a fail of the same payout). So the document needs no hand-written
OpenAPI links. The machine runs on both engines against books that already hold revenue, holds and
pending payouts, so that linked steps reach real ids. Each step must get no 5xx and conform to the
document. Every error must be problem+json, and a failed request (any status >= 400) must leave the
journal head, the trial balance and the row count of every table as they were. Negative steps drop
the API key on purpose (schemathesis tests the missing-auth path), hence the many 401s. The server's
state carries over between scenarios, which now and then upsets Hypothesis' replay (see
`run_scenarios`)."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis.engine.errors import is_inconsistent_replay
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance
from sqlalchemy import func, select

from api import create_app
from ledger import payouts, revenue
from ledger.db import Database
from ledger.journal import chain_head
from ledger.keys import create_key
from ledger.schema import metadata
from ledger.settings import Settings
from ledger.trial_balance import trial_balance
from tests.conftest import examples, new_sqlite_url, scaled
from tests.program import at, monthly_events, seed

EXAMPLES_PER_OPERATION = examples(10)
# Linked sequences per engine: PostgreSQL adds its own transactions and locks, not new sequences.
SCENARIOS = {"sqlite": examples(20), "postgresql": examples(8)}
STEPS_MAX = scaled(10)  # operations per sequence
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
        # White space sent as a JSON body is no body (README, Pipeline), which a route whose fields are
        # all optional takes: schemathesis draws it as "random bytes", invalid syntax to be refused.
        no_body = mode is GenerationMode.NEGATIVE and isinstance(case.body, (bytes, str)) and not case.body.strip()
        checks_left_out = [*excluded, negative_data_rejection] if no_body else excluded
        response = case.call_and_validate(headers=sent_headers(case, headers), excluded_checks=checks_left_out)
        listed_explicitly(case, response)

    exercise()


def sent_headers(case, headers: dict) -> dict:
    """The admin key, unless the case is invalid by its key (missing or malformed): then the case's
    own, so that the request sent is the invalid one drawn and must be refused (401). The admin key
    sent in its place made the request valid, and a mutation the request did not carry (an extra
    query property that encodes to nothing) was then held to be accepted (`make soak` drew one)."""
    mutations = getattr(case.meta.phase.data, "mutations", ())
    return {} if any(mutation.parameter == "Authorization" for mutation in mutations) else headers


def listed_explicitly(case, response) -> None:
    """The response's status is one the operation lists, not only covered by its `default`."""
    listed = set(case.operation.responses.status_codes) - {"default"}
    assert str(response.status_code) in listed, (case.operation.label, response.status_code, sorted(listed))


# ---- sequences of linked operations ----

def seed_books(session) -> None:
    """The small program, four months of revenue, and payout runs on three first-of-months, so that
    there are transactions to read and reverse and pending payouts to settle or fail."""
    seed(session)
    assert not any(isinstance(r, revenue.Refusal) for r in revenue.ingest(session, monthly_events(months=4)))
    for day in ("2026-03-01", "2026-04-01", "2026-05-01"):
        payouts.adjust(session, "globex", "available", 9_000, "USD", "seed", effective_at_us=at(day) - 1)
        payouts.run_payouts(session, at(day))


def fingerprint(database: Database) -> tuple:
    """What a failed request must leave as it was: the journal head, the trial balance, and how many
    rows every table holds."""
    with database.reader() as session:
        counts = session.execute(select(*[select(func.count()).select_from(table).scalar_subquery().label(table.name)
                                          for table in metadata.sorted_tables])).one()._asdict()
        return chain_head(session), trial_balance(session, before_us=None), counts


def workflow(schema, database: Database, headers: dict) -> type:
    """Schemathesis' state machine over `schema`, sending `headers` and checking every step. It
    counts the scenarios it starts and the (link, status) of every step that followed a link, and
    keeps every failure."""

    class Workflow(schema.as_state_machine()):
        scenarios = 0
        linked: Counter = Counter()
        failures: list = []

        def setup(self):
            type(self).scenarios += 1

        def step(self, step_input):
            self.before = fingerprint(database)
            try:
                output = super().step(step_input)
            except Exception as error:  # noqa: BLE001 - kept, so that no replay can hide it; re-raised
                self.failures.append(error)
                raise
            if step_input.transition is not None and step_input.is_applied:
                self.linked[(step_input.transition.id, output.response.status_code)] += 1
            return output

        def get_call_kwargs(self, case):
            return {"headers": headers}

        def after_call(self, response, case):
            super().after_call(response, case)
            assert response.status_code < 500, (case.operation.label, response.status_code)
            listed_explicitly(case, response)
            if response.status_code >= 400:
                assert response.headers["content-type"] == ["application/problem+json"], response.headers
                assert response.json()["status"] == response.status_code
                assert fingerprint(database) == self.before, f"{case.operation.label} {response.status_code} " \
                    "changed the books"

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            # Every step is sent with the admin key (get_call_kwargs), so a negative case whose
            # violation is a missing Authorization header reaches the server valid, and an
            # "accepted negative data" verdict on it would be the harness's, not the service's
            # (`make soak` drew one). Refusing invalid data is checked per operation above.
            excluded = [positive_data_acceptance, negative_data_rejection]
            case.validate_response(response, excluded_checks=excluded, headers=headers, transport_kwargs=kwargs,
                                   recorder=self.recorder)

    return Workflow


def run_scenarios(machine, scenarios: int) -> None:
    """Run `scenarios` scenarios of `machine`.

    Hypothesis expects the same choices to draw the same way, but the server's state carries over
    from one scenario to the next, so the rules a step can take (those whose source response is in
    hand) sometimes differ on a path Hypothesis has seen before. It then stops with
    FlakyStrategyDefinition, or an assertion inside its data tree. Schemathesis' own runner meets
    this by starting a new run, and so does this function: each run starts at least one scenario.
    A failed step fails the test whatever Hypothesis makes of its replay."""
    while machine.scenarios < scenarios:
        try:
            machine.run(settings=settings(max_examples=scenarios - machine.scenarios, stateful_step_count=STEPS_MAX,
                                          deadline=None, suppress_health_check=list(HealthCheck),
                                          phases=[Phase.generate]))
            break
        except Exception as error:
            if not (isinstance(error, FlakyStrategyDefinition) or is_inconsistent_replay(error)):
                raise
            if machine.failures:
                raise machine.failures[0] from error
    if machine.failures:
        raise machine.failures[0]


def test_linked_sequences_of_operations_get_no_server_error_and_a_failed_one_changes_nothing(database):
    with database.transaction() as session:
        seed_books(session)
        _, admin = create_key(session, "admin")
    app = create_app(Settings.build(database_url=database.url), database)
    machine = workflow(schemathesis.openapi.from_wsgi("/v1/openapi.json", app), database,
                       {"Authorization": f"Bearer {admin}"})
    run_scenarios(machine, SCENARIOS[database.engine.dialect.name])
    succeeded = {link for (link, status), _ in machine.linked.items() if 200 <= status < 300}
    assert succeeded, f"no linked step succeeded: {machine.linked}"
