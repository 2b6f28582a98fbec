PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-faults test-browser demo lint typecheck install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# setuptools warns at every editable install that a folder named like the package could
	# shadow it; the checkout's folders are the package, so the warning says nothing here.
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install --quiet -e '.[test]'
	mkdir -p $(VENV)/src && ln -sfn "$(CURDIR)" $(VENV)/src/fleetwave
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

install: $(STAMP)

# Lint, types, then unit, simulation, API, integration and end-to-end tests.
test: lint typecheck
	$(BIN)/pytest -q tests --ignore=tests/faults --ignore=tests/browser

# Fault injection with real processes: killed and stalled daemons, database restarts, agent
# faults, API fuzzing. Sizes are environment settings (docs/reliability.md).
test-faults: $(STAMP)
	$(BIN)/pytest -q tests/faults

# The dashboard in Debian's chromium, headless, driven by Playwright (never a browser download):
# installs the chromium package first when it is missing (CI runs as root).
test-browser: $(STAMP)
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	$(BIN)/pytest -q tests/browser

demo: $(STAMP)
	$(BIN)/fleetwave demo

clean:
	rm -rf $(VENV) .fleetwave .pytest_cache .mypy_cache .ruff_cache
