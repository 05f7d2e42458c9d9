# Two commands matter: `make up` starts everything, `make test` runs the suite.
# Both create .venv and install what they need on a machine with only Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up test test-cluster bench fuzz lint clean dashboards verify-monitoring

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/agent-factory up

test: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

# Only the 3-node JetStream cluster tests (also part of `make test`).
test-cluster: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider tests/cluster

# Slow: every suite against its targets (tests/load), each printing its JSON.
# `agent-factory bench all` prints the same numbers as one JSON object.
bench: $(STAMP)
	$(BIN)/pytest -q -s -p no:cacheprovider tests/load

# Slow (minutes), not in CI: schemathesis over every operation of the API's OpenAPI
# document, against a gateway on real NATS and PostgreSQL (tests/fuzz). No 5xx, every
# error problem+json, every answer as documented. AF_FUZZ_EXAMPLES=N: cases per operation.
fuzz: $(STAMP)
	$(BIN)/pytest -q -s -p no:cacheprovider tests/fuzz

# deployment/monitoring/dashboards/agent-factory.json from deployment/monitoring/dashboard.py.
dashboards: $(STAMP)
	$(BIN)/python deployment/monitoring/dashboard.py

# Opt-in, about 20 s: promtool's checks and rule tests, then a real Prometheus scraping
# `agent-factory up` under a mixed workload: every panel's and alert's query must be valid
# PromQL with data. Needs Debian's prometheus package (prometheus and promtool).
verify-monitoring: $(STAMP)
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
		{ echo "verify-monitoring needs prometheus and promtool: apt-get install -y prometheus" >&2; exit 1; }
	$(BIN)/pytest -q -s -p no:cacheprovider tests/unit/test_alert_rules.py tests/monitoring

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy deployment/monitoring/dashboard.py  # the dashboard's panels, checked by the builders' types
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) .agent-factory .mypy_cache .ruff_cache
