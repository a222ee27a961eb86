# Touchpoint: `make up` runs everything on the embedded default; `make test` runs the suite
# against a real Kafka broker and the real ClickHouse engine (chDB). Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up test lint kafka-fetch kafka-up kafka-down clean bench soak browser bench-queries

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Touchpoint needs Python 3.11 or newer: set PYTHON=python3.11")'
	@test -x $(BIN)/python || { echo "==> creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "==> installing Touchpoint and its dependencies into $(VENV)"
	@$(BIN)/pip install --quiet --upgrade pip
	@$(BIN)/pip install --quiet --progress-bar off -e '.[dev]'
	@touch $@

install: $(STAMP)

up: install
	@$(BIN)/touchpoint up

# Checks JDK 17+ and Maven, then resolves Apache Kafka from Maven Central into ~/.cache/touchpoint (once).
kafka-fetch: install
	@$(BIN)/python -m services.testing.kafka_broker fetch >/dev/null

kafka-up: kafka-fetch
	@$(BIN)/python -m services.testing.kafka_broker up

kafka-down: install
	@$(BIN)/python -m services.testing.kafka_broker down

lint: install
	@echo "==> ruff"; $(BIN)/ruff check services tests loadtests
	@echo "==> mypy --strict"; $(BIN)/mypy

# The web tracker's test runs in a real headless Chromium (Debian's package); root installs it.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ echo "==> installing chromium for the web tracker's browser test"; \
		  apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; } || \
		echo "chromium is not installed: the browser test will be skipped (apt-get install chromium)"

test: lint kafka-fetch browser
	@echo "==> pytest (starts a real Kafka broker; uses chDB)"
	@$(BIN)/pytest -ra

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

# Not part of `make test`: starts Kafka and chDB, drives load with wrk, prints a table and a JSON line.
bench: kafka-fetch
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ echo "==> installing wrk"; apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }; } || \
		{ echo "make bench needs wrk: apt-get install wrk"; exit 2; }
	@$(BIN)/python -m loadtests.bench

# Not part of CI: 10 minutes of steady load; RSS and latency are sampled every 30 s.
soak: install
	@$(BIN)/python -m loadtests.soak

# Not part of CI: the query API's analyses on ten million events in chDB, beside a bare windowFunnel.
bench-queries: install
	@$(BIN)/python -m loadtests.query_bench
