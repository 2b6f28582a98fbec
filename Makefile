PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-faults test-browser demo lint typecheck install install-prometheus clean

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

# Lint, types, then unit, simulation, API, integration and end-to-end tests. The Prometheus
# health check's integration test runs Debian's prometheus: installed first when missing.
test: lint typecheck
	test -x /usr/bin/prometheus || $(MAKE) --no-print-directory install-prometheus
	$(BIN)/pytest -q tests --ignore=tests/faults --ignore=tests/browser

# Debian's prometheus package (never a download), as root or else through sudo. While it
# installs, a policy-rc.d answering 101 keeps its maintainer scripts from starting a
# Prometheus service (the tests run their own; a container has no init system to run one);
# a policy-rc.d already there (Docker images ship one) is left as it is.
AS_ROOT := $(if $(filter 0,$(shell id -u)),,sudo)
POLICY_RC := /usr/sbin/policy-rc.d
install-prometheus:
	@set -e; added=; \
	if [ ! -e $(POLICY_RC) ]; then \
	  printf '#!/bin/sh\nexit 101\n' | $(AS_ROOT) tee $(POLICY_RC) >/dev/null; \
	  $(AS_ROOT) chmod 755 $(POLICY_RC); added=1; \
	fi; \
	trap 'if [ -n "$$added" ]; then $(AS_ROOT) rm -f $(POLICY_RC); fi' EXIT; \
	$(AS_ROOT) apt-get update -qq; \
	$(AS_ROOT) env DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends prometheus
	/usr/bin/prometheus --version

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
