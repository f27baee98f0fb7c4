# product-analytics-proxy: `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
CUBE_DIR := stack/cube
CLIENT_DIR := stack/client

.DEFAULT_GOAL := help
.PHONY: help install postgres clickhouse test-tools bench-tools lock run test test-long test-unit test-pythons fuzz soak lint format bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

$(CUBE_DIR)/node_modules/.installed: $(CUBE_DIR)/package-lock.json
	cd $(CUBE_DIR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

$(CLIENT_DIR)/node_modules/.installed: $(CLIENT_DIR)/package-lock.json
	cd $(CLIENT_DIR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed $(CUBE_DIR)/node_modules/.installed $(CLIENT_DIR)/node_modules/.installed ## Virtualenv, Cube and the Cube client

postgres: ## Make sure PostgreSQL's server is installed (Debian's postgresql; needs root)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "installing PostgreSQL from Debian"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

clickhouse: ## Make sure ClickHouse's server is installed (Debian's clickhouse-server; needs root)
	@command -v clickhouse-server >/dev/null 2>&1 || test -x /usr/sbin/clickhouse-server || { \
		echo "installing ClickHouse from Debian"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server >/dev/null; }

test-tools: ## Make sure Chromium, nginx, Redis, Redis Sentinel and promtool are installed for the tests (Debian's packages; needs root)
	@command -v chromium >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1 && command -v redis-sentinel >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || { \
		echo "installing chromium, nginx, redis-server, redis-sentinel and promtool (prometheus) from Debian"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium nginx-light redis-server redis-sentinel >/dev/null \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

bench-tools: ## Make sure wrk, nginx and valgrind are installed (Debian's packages; needs root)
	@command -v wrk >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 && command -v valgrind >/dev/null 2>&1 || { \
		echo "installing wrk, nginx and valgrind from Debian"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light valgrind >/dev/null; }

#: the store `make run` serves from: postgres (the default) or clickhouse (GitLab's own: a database per project)
STORE ?= postgres

run: install $(if $(filter clickhouse,$(STORE)),clickhouse,postgres) ## Run the proxy on a local stack (PostgreSQL, or STORE=clickhouse, + demo data + Cube); Ctrl-C stops it
	$(PY) -m stack.run --store $(STORE)

#: pytest-xdist's workers in make test's parallel pass (each starts its own Cube per store; 3 suits 2 cores: the tests mostly wait)
WORKERS ?= 3

test: install postgres clickhouse test-tools ## Every test but the long tail (unit and real-stack, PostgreSQL and ClickHouse) on WORKERS workers, then the timing tests alone; coverage of proxy/ over both
	@rm -f .coverage .coverage.*; started=$$(date +%s); \
	$(PY) -m pytest -n $(WORKERS) --dist worksteal -m "not serial and not long" --cov=proxy --cov-report= --cov-fail-under=0 --durations=15 && \
	$(PY) -m pytest -m "serial and not long" --cov=proxy --cov-append --cov-report=term-missing --cov-report=xml --durations=5 && \
	echo "make test: every test but the long tail passed in $$(( $$(date +%s) - started )) s (make test-long runs the rest)"

test-long: install postgres test-tools ## The long tail, tests of 20 s and more: a short soak, Schemathesis' sweep of the API, the pods replaced under traffic, the image's install (CI runs it after make test)
	$(PY) -m pytest -m long --durations=5

test-unit: install ## Only the tests that need no PostgreSQL or Cube
	$(PY) -m pytest -n $(WORKERS) -m "not stack and not serial" && $(PY) -m pytest -m "serial and not stack"

test-pythons: ## The unit tests on Python 3.12 and 3.13 too (pyenv's; a .venv-3.x each; loop-timing tests run on the main one)
	@for minor in 3.12 3.13; do \
		home=$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$$minor.* 2>/dev/null | sort -V | tail -n 1); \
		[ -x "$$home/bin/python" ] || { echo "no Python $$minor under pyenv's versions"; exit 1; }; \
		[ -x .venv-$$minor/bin/python ] || "$$home/bin/python" -m venv .venv-$$minor; \
		.venv-$$minor/bin/python -m pip install -q --upgrade pip && \
		.venv-$$minor/bin/python -m pip install -q -e '.[dev,bench]' && \
		echo "== $$home: the unit tests" && \
		.venv-$$minor/bin/python -m pytest -p no:cacheprovider -q -n $(WORKERS) -m "not stack and not serial" && \
		.venv-$$minor/bin/python -m pytest -p no:cacheprovider -q -m "serial and not stack and not loop_timing" || exit 1; \
	done

fuzz: install postgres ## Long fuzzing: the two front doors differentially (3,000 examples), Schemathesis on the real stack (500)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -p no:cacheprovider tests/test_differential_fuzz.py
	SCHEMATHESIS_EXAMPLES=500 $(PY) -m pytest -p no:cacheprovider tests/stack/test_schemathesis.py

soak: install postgres ## Ten minutes of mixed traffic on the real stack, two workers: RSS, files, tasks and Cube connections must stay flat
	$(PY) -m bench.soak

lint: install ## ruff, mypy --strict, the layering contracts of proxy/ (import-linter, pyproject.toml), hadolint, the OpenAPI document
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/ruff check proxy tests stack bench
	$(VENV)/bin/ruff format --check proxy tests stack bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/openapi-spec-validator docs/openapi.yaml

lock: install ## Write requirements.lock (the image's dependencies, with hashes) from pyproject.toml with uv
	$(VENV)/bin/uv pip compile pyproject.toml --generate-hashes --universal --python-version 3.11 \
		--custom-compile-command "make lock" -q -o requirements.lock

format: install ## Format the code
	$(VENV)/bin/ruff format proxy tests stack bench
	$(VENV)/bin/ruff check --fix proxy tests stack bench

bench: install postgres bench-tools test-tools ## Benchmarks against nginx and Cube; writes bench/results.json and bench/RESULTS.md
	$(PY) -m bench.run

clean: ## Remove the virtualenv and node modules
	rm -rf $(VENV) .venv-3.12 .venv-3.13 $(CUBE_DIR)/node_modules $(CLIENT_DIR)/node_modules .coverage .coverage.* .pytest_cache .mypy_cache .ruff_cache
