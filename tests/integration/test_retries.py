"""Retries and duplicates that arrive while the first attempt still runs: one wins, the other waits
and then answers as a replay, never posting twice and never failing on what the first did."""

from __future__ import annotations

import pytest

from ledger.demo import load_demo
from tests.integration.conftest import second_writer_behind_first


@pytest.mark.postgres
def test_a_demo_load_that_waits_for_another_answers_already_loaded(postgres_database):
    # Two `revshare demo` at once on PostgreSQL: the second read "not loaded" before the first
    # committed, then stopped at the first plan with "plan 'msp-stepdown' already exists" (exit 2).
    loads = []
    outcome = second_writer_behind_first(postgres_database, lambda session: loads.append(load_demo(session)),
                                         load_demo)
    assert loads[0].loaded
    assert outcome == (False, 0, 0), outcome
