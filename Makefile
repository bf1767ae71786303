# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_DIR := proto
PROTO_OUT := proto
PROTOS := $(wildcard $(PROTO_DIR)/carbon_gateway/v1/*.proto)
PYTEST_ARGS ?=

.PHONY: run test lint proto bench simulate soak clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/carbon-gateway demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Regenerates the protobuf and gRPC code beside the .proto files. tests/test_generated_code.py fails when
# the committed code differs from what this target produces.
proto: $(STAMP)
	$(PY) -m gateway.protogen $(PROTO_OUT)

bench: $(STAMP)
	$(PY) -m tests.bench

# The seeded simulation over more seeds than `make test` runs; a failing seed prints its replay command.
SEEDS ?= 100
STEPS ?= 300
simulate: $(STAMP)
	$(PY) -m tests.simulation --seeds $(SEEDS) --steps $(STEPS)

# The soak test alone: 1,000 transfers over a faulty proxy with random SIGKILLs (`make test` runs it too).
SOAK_TRANSFERS ?= 1000
soak: $(STAMP)
	CARBON_GATEWAY_SOAK_TRANSFERS=$(SOAK_TRANSFERS) $(PY) -m pytest tests/integration/test_soak.py -q -s $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache bench-results.json
