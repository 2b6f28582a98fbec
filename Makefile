PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck install clean

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

# The whole suite: lint, types, then unit, simulation, API, integration and end-to-end tests.
test: lint typecheck
	$(BIN)/pytest -q tests

demo: $(STAMP)
	$(BIN)/fleetwave demo

clean:
	rm -rf $(VENV) .fleetwave .pytest_cache .mypy_cache .ruff_cache
