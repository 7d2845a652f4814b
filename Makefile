# course-audit: the two commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# Local services live outside the repo, one directory per clone (so clones never share).
STATE_DIR ?= /tmp/course-audit-$(shell id -u)-$(shell pwd | sha1sum | cut -c1-10)
ENV_FILE ?= .services.env
PYTEST_ARGS ?=

.PHONY: setup provision lint format test test-containers test-unit test-properties test-fuzz services services-down run bench clean images

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

setup: $(VENV)/.installed provision

# PostgreSQL server binaries from Debian when missing; Kafka jars and the Compose schema
# (for lint) resolved once into ~/.cache.
provision: $(VENV)/.installed
	@bash deploy/local/provision.sh
	@$(PY) deploy/local/services.py provision
	@$(PY) deploy/validate.py provision

# deploy/validate.py: Kubernetes manifests and the Compose file against their schemas, offline.
lint: $(VENV)/.installed
	$(BIN)/ruff check service tests deploy
	$(BIN)/ruff format --check service tests deploy
	$(BIN)/mypy --strict service
	$(PY) deploy/validate.py

format: $(VENV)/.installed
	$(BIN)/ruff check --fix service tests deploy
	$(BIN)/ruff format service tests deploy

# The viewer's browser tests need chromium and chromium-driver (installed when missing).
test: setup lint
	@bash deploy/local/provision.sh browser
	$(PY) -m pytest $(PYTEST_ARGS)

# The container layer (README.md#the-container-layer): the end-to-end tests with Kafka and
# PostgreSQL from testcontainers and the service as the project's image, plus the image and
# compose tests. Needs a Docker engine; images no registry gives are built offline first.
CONTAINER_TESTS ?= tests/e2e tests/containers
test-containers: setup
	@bash deploy/local/provision.sh images browser
	$(PY) deploy/images/build.py ensure
	compose=$$(bash deploy/local/compose-cli.sh) && \
	  AUDIT_TEST_COMPOSE="$$compose" AUDIT_TEST_SERVICES=containers \
	  $(PY) -m pytest $(CONTAINER_TESTS) -m "not packaging" $(PYTEST_ARGS)

test-unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# The property-based layer alone, longer and randomised: `make test-properties EXAMPLES=200`.
EXAMPLES ?= 100
test-properties: setup
	AUDIT_PROPERTY_EXAMPLES=$(EXAMPLES) AUDIT_PROPERTY_RANDOM=1 \
	  $(PY) -m pytest tests/property -p no:cacheprovider -o timeout=0 $(PYTEST_ARGS)

# The fuzz layer alone, longer and randomised: `make test-fuzz EXAMPLES=500`; the default CODEC=latin-1 also
# draws header bytes that are not UTF-8 (SEED=N repeats a run).
CODEC ?= latin-1
test-fuzz: setup
	AUDIT_FUZZ_EXAMPLES=$(EXAMPLES) AUDIT_FUZZ_RANDOM=1 AUDIT_FUZZ_CODEC=$(CODEC) AUDIT_FUZZ_SEED=$(SEED) \
	  $(PY) -m pytest tests/fuzz -p no:cacheprovider -o timeout=0 $(PYTEST_ARGS)

services: setup
	@$(PY) deploy/local/services.py up --state-dir $(STATE_DIR) --env-file $(ENV_FILE)
	@echo "wrote $(ENV_FILE); data and logs in $(STATE_DIR)"

services-down:
	@if [ -x $(PY) ]; then $(PY) deploy/local/services.py down --state-dir $(STATE_DIR); \
	else python3 deploy/local/services.py down --state-dir $(STATE_DIR); fi

run: services
	@bash deploy/local/run.sh "$(STATE_DIR)" "$(ENV_FILE)"

# The local container images, built offline when missing or stale (deploy/README.md#the-image):
# `make images`, or `make images IMAGE=service` for one of base, service, postgres, kafka.
images: $(VENV)/.installed
	@bash deploy/local/provision.sh images
	$(PY) deploy/images/build.py ensure $(if $(IMAGE),--only $(IMAGE))

bench: setup
	$(PY) tests/bench/run.py $(BENCH_ARGS)

clean: services-down
	rm -rf $(VENV) .services.env .pytest_cache .mypy_cache .ruff_cache bench-results

# Benchmarks (not tests): ratios against baselines measured in the same run.
# `make bench QUICK=1` for a run of a few minutes; ONLY=ingest to pick benchmarks.
BENCH_ARGS ?=
ifdef QUICK
BENCH_ARGS += --quick
endif
ifdef ONLY
BENCH_ARGS += --only $(ONLY)
endif
