# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck format bench deploy teardown clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'pip==26.2.1'  # chalice 1.34 needs pip<26.3
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
	bash scripts/install-browser.sh
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis

# Load tests and benchmarks (docs/performance.md): starts its own local stack on free
# 127.0.0.1 ports, runs every k6 scenario against ours and the two alternatives, and
# writes artifacts/bench/report.md and counts.png. Under 10 minutes on 2 cores.
# Options: make bench BENCH_ARGS="--scenarios hot_account --duration 30"
bench: $(STAMP)
	$(BIN)/python load-tests/bench.py $(BENCH_ARGS)

# Deploy or remove one stage on AWS (docs/deploy.md): make deploy STAGE=dev
# Credentials and region come from the environment, as for the AWS CLI.
deploy: $(STAMP)
	@test -n "$(STAGE)" || { echo "usage: make deploy STAGE=dev|prod" >&2; exit 2; }
	infrastructure/deploy.sh $(STAGE)

teardown: $(STAMP)
	@test -n "$(STAGE)" || { echo "usage: make teardown STAGE=dev|prod" >&2; exit 2; }
	infrastructure/teardown.sh $(STAGE)

# Operator shortcuts against the running local stack (`make run`); the full command
# is `python -m infrastructure.counterctl --help` (docs/eventual-counter.md).
.PHONY: dlq heal
LOCAL_AWS_ENV := AWS_ENDPOINT_URL=http://127.0.0.1:4566 AWS_ACCESS_KEY_ID=local \
	AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION=us-east-1

dlq: $(STAMP)
	$(LOCAL_AWS_ENV) $(BIN)/python -m infrastructure.counterctl dlq list

heal: $(STAMP)
	$(LOCAL_AWS_ENV) $(BIN)/python -m infrastructure.counterctl heal

# The long run of the fault tests (docs/invariants.md): the model-based test for
# SOAK_SECONDS and the hot-account stress test for STRESS_SECONDS; the counts of steps
# and of fault injections by kind are printed and kept in artifacts/soak/.
.PHONY: soak
SOAK_SECONDS ?= 600
STRESS_SECONDS ?= 120
soak: $(STAMP)
	COUNTER_SOAK=1 COUNTER_SOAK_SECONDS=$(SOAK_SECONDS) COUNTER_STRESS_SECONDS=$(STRESS_SECONDS) \
		$(BIN)/pytest -p no:cacheprovider -q tests/model/test_counter_model.py tests/stress; \
	status=$$?; cat artifacts/soak/model.json artifacts/soak/stress.json 2>/dev/null; exit $$status
