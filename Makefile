# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck format bench deploy teardown clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

# The whole app on this machine: embedded backend (127.0.0.1:4566), the stack,
# the stream/queue/schedule handlers and the API (127.0.0.1:8000). Ctrl-C stops it.
# Extra flags: make run RUN_ARGS="--backend-url http://127.0.0.1:4566 --port 8001"
run: $(STAMP)
	$(BIN)/python -m infrastructure.local $(RUN_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

# Installs everything the suite needs, then runs it; the fixtures start the
# embedded backend and the API server themselves.
test: $(STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
