# llmops: `make demo` runs the whole lifecycle on embedded defaults; `make test` runs the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export LLMOPS_HOME ?= $(CURDIR)/.llmops
export DAGSTER_HOME ?= $(LLMOPS_HOME)/dagster
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo loop-demo test ui down mlflow-ui browser postgres clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -c constraints.txt torch==2.13.0
	$(BIN)/pip install -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -m llm_assets.demo

# After `make demo`: drift -> retrain -> canary verdict, driven by a real dagster-daemon (see llm_assets/loop_demo.py).
loop-demo: install
	$(BIN)/python -m llm_assets.loop_demo

test: install browser postgres
	$(BIN)/python -m pytest

ui: install
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -w workspace.yaml

down: install
	$(BIN)/python -m llm_assets.deployment.processes stop-all

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(LLMOPS_HOME)/mlflow.db --host 127.0.0.1 --port 5000

# Headless Chromium for the web UI tests (Debian's package; playwright drives it, no browser download).
browser:
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null)

# Debian's PostgreSQL for the Dagster-daemon and MLflow-server tests (each starts its own cluster on 127.0.0.1).
postgres:
	@(command -v initdb >/dev/null && command -v pg_ctl >/dev/null) || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql >/dev/null)

clean: down
	rm -rf $(LLMOPS_HOME)
