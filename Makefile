# Mapleverse: `make run` starts the platform, `make test` runs the whole suite.
# Both do all of their own set-up on a fresh clone (virtualenv, packages, test services).

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
NODE_STAMP := tests/node/node_modules/.installed-$(shell cat tests/node/package-lock.json | sha1sum | cut -c1-12)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-fast lint format generate bench services clean help

help:
	@echo "make run       start the embedded broker and the default components (mapleverse up)"
	@echo "make test      install everything needed and run lint + the whole test suite"
	@echo "make test-fast the suite without chaos tests"
	@echo "make lint      ruff check, ruff format --check, mypy strict"
	@echo "make generate  rewrite the files generated from topics.yaml"
	@echo "make bench     run the benchmarks (benchmarks/)"

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

run: $(STAMP)
	$(BIN)/mapleverse up

# What the suite needs beyond Python: a mosquitto binary (the tests start their own broker
# from mosquitto/ on a free port), nats-server (the clustered-broker contract tier), Node
# for the official AsyncAPI parser and mqtt.js, and Chromium for the browser agent page. Installed when missing and we are root (or have sudo);
# otherwise the tier is skipped with its reason, or fails when CI=true.
services:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto mosquitto-clients"; \
	command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing="$$missing nats-server"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing >/dev/null) \
	    || echo "could not install$$missing: those test tiers will be skipped (or fail with CI=true)"; \
	fi
	@# PostgreSQL and Redis: the integration tier uses the local servers; start them if they are
	@# installed but down (as root), else that tier says what is missing.
	@if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then \
	  if command -v pg_ctlcluster >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "starting PostgreSQL"; \
	    pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -1) main start || true; \
	  fi; \
	fi
	@if command -v redis-cli >/dev/null && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then \
	  if command -v redis-server >/dev/null; then \
	    echo "starting Redis"; \
	    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true; \
	  fi; \
	fi
	@if command -v npm >/dev/null && [ ! -f $(NODE_STAMP) ]; then \
	  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error && touch $(NODE_STAMP); \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) services lint
	PATH="$$PATH:/usr/sbin" $(BIN)/pytest

test-fast: $(STAMP) services
	PATH="$$PATH:/usr/sbin" $(BIN)/pytest -m "not chaos and not slow"

generate: $(STAMP)
	$(BIN)/mapleverse topics generate

bench: $(STAMP) services
	PATH="$$PATH:/usr/sbin" $(BIN)/python benchmarks/bus_throughput.py
	$(BIN)/python benchmarks/flocking.py
	PATH="$$PATH:/usr/sbin" $(BIN)/python benchmarks/world.py
	$(BIN)/python benchmarks/raft_simulation.py
	PATH="$$PATH:/usr/sbin" $(BIN)/python benchmarks/mesh.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache tests/node/node_modules
