# Two commands on a fresh machine with Python 3.11+ and make:
#   make run    start the service with demo data on the embedded SQLite database
#   make test   run the whole test suite (SQLite and a throwaway PostgreSQL cluster)
# and, when there is time:
#   make soak   the reliability and property tests, deeper (10-20 minutes; not part of CI)
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8000
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (README, Quick start, says how long the suite takes);
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
BENCH_ARGS ?= --quick

.PHONY: install test soak run bench guards clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

# The service's bytecode written first, also where PYTHONDONTWRITEBYTECODE is set: the suite starts
# `revshare` and gunicorn in processes of their own, each of which compiled them anew (about 0.15 s of CPU).
test: $(STAMP)
	$(BIN)/python -m compileall -q ledger api cli migrations
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# SOAK=1 (read in tests/conftest.py) draws ten times the Hypothesis examples and doubles processes,
# storm lengths, kills and state-machine steps; `make test` and CI never set it.
SOAK_TESTS := tests/reliability tests/cli tests/api/test_schemathesis.py tests/unit \
	tests/integration/test_journal_properties.py tests/scenarios/test_properties.py \
	tests/scenarios/test_period_continuity.py tests/scenarios/test_out_of_order.py
soak: $(STAMP)
	SOAK=1 $(BIN)/python -m pytest $(SOAK_TESTS) $(PYTEST_ARGS)

# Keys are shown once and stored only as hashes, so each run creates a fresh admin key and a fresh
# partner key for northwind and prints them; keys from earlier runs stay valid. The holds matured
# since the demo's months are released once, as the scheduler (not started here) would have.
run: $(STAMP)
	$(BIN)/revshare db upgrade
	$(BIN)/revshare demo
	$(BIN)/revshare release-holds
	@admin=$$($(BIN)/revshare keys create --role admin | tail -n 1) && \
	partner=$$($(BIN)/revshare keys create --role partner --partner northwind | tail -n 1) && \
	echo && \
	echo "  docs:                     http://$(HOST):$(PORT)/docs" && \
	echo "  admin key:                $$admin" && \
	echo "  partner key (northwind):  $$partner" && \
	echo "  try: curl -H 'Authorization: Bearer $$partner' http://$(HOST):$(PORT)/v1/partners/northwind/balance" && \
	echo
	$(BIN)/revshare serve --host $(HOST) --port $(PORT)

# `make bench` runs the quick benchmarks on both engines (under 3 minutes each); `make bench BENCH_ARGS=` the full ones.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# After a migration that makes, drops or changes a trigger: the list `verify` checks the guards against.
guards: $(STAMP)
	$(BIN)/python -m tests.guards_list

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
