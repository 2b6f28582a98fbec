PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-faults demo lint typecheck install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

install: $(STAMP)

# Lint, types, then unit, simulation, API, integration and end-to-end tests.
test: lint typecheck
	$(BIN)/pytest -q tests --ignore=tests/faults

# Fault injection with real processes: killed and stalled daemons, database restarts, agent
# faults, API fuzzing. Sizes are environment settings (docs/reliability.md).
test-faults: $(STAMP)
	$(BIN)/pytest -q tests/faults

demo: $(STAMP)
	$(BIN)/fleetwave demo

clean:
	rm -rf $(VENV) .fleetwave .pytest_cache .mypy_cache .ruff_cache
