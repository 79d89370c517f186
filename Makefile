# Two commands on a fresh machine with Python 3.11+ and make:
#   make run    start the service with demo data on the embedded SQLite database
#   make test   run the whole test suite (SQLite and a throwaway PostgreSQL cluster)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install test run bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

run: $(STAMP)
	$(BIN)/revshare db upgrade
	$(BIN)/revshare demo
	$(BIN)/revshare serve

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
