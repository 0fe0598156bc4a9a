# sensei-airflow: the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean postgres chromium redis

install: $(STAMP)

# Pinned, reproducible install: requirements/lock.txt is `uv pip compile pyproject.toml --extra dev`.
$(STAMP): pyproject.toml requirements/lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install --quiet --compile-bytecode -r requirements/lock.txt
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install --quiet --compile-bytecode --no-deps -e .
	touch $(STAMP)

# PostgreSQL server binaries (initdb, pg_ctl, pg_dump, ...) for the demo and the tests.
postgres:
	@bash scripts/ensure-postgres.sh

# Headless Chromium for the browser test of the trigger form (Playwright drives the system browser).
chromium:
	@bash scripts/ensure-chromium.sh

# redis-server, the Celery broker of the test that runs Airflow on CeleryExecutor with two workers.
redis:
	@bash scripts/ensure-redis.sh

demo: install postgres
	$(BIN)/python -m sensei_airflow.demo

# Tests run on TEST_WORKERS pytest-xdist workers, each with its own PostgreSQL cluster and Airflow home.
TEST_WORKERS ?= 3
test: install postgres chromium redis
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

lint: install
	$(BIN)/ruff check sensei_airflow dags tests
	$(BIN)/ruff format --check sensei_airflow dags tests
	$(BIN)/mypy

bench: install postgres
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
