# fifoq: developer and CI entry points. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
LOCK := requirements-dev.lock
PIP := $(VPY) -m pip --disable-pip-version-check

.PHONY: help venv lock lint broker tools chromium test demo compose cluster-up cluster-down cluster-status certs tls-node-up tls-node-down bench clean

help:
	@echo "make venv          create .venv: the exact versions of requirements-dev.lock, then the project"
	@echo "make lock          re-pin requirements.lock and requirements-dev.lock after a change of pyproject.toml"
	@echo "make lint          ruff, mypy and the import-linter layering contracts (pyproject.toml)"
	@echo "make broker        make sure RabbitMQ with the management API is reachable"
	@echo "make test          run the test suite (PYTEST_ADDOPTS is passed through)"
	@echo "make demo          run the demo (prints the admin console URL)"
	@echo "make compose       write the compose deployment's connectors, scrape targets and broker passwords from docker/actors.txt"
	@echo "make cluster-up    start a local 3-node RabbitMQ cluster (ports 5681-5683)"
	@echo "make cluster-down  stop it and delete its state"
	@echo "make certs         generate a development CA and certificates in .certs/ (openssl)"
	@echo "make tls-node-up   start a TLS-only RabbitMQ node (AMQPS 5691, HTTPS 15691) for the TLS tests"
	@echo "make tls-node-down stop it and delete its state"
	@echo "make bench         run the benchmarks (BENCH_ARGS=--quick for a smoke run; see docs/benchmarks.md)"
	@echo "make clean         remove the venv and caches; stop the local cluster and TLS node, delete their state"

venv: $(VENV)/.stamp

# Re-install only when pyproject.toml or the lock file changed. Every dependency comes from the
# lock file, checked against its hashes; the project itself is installed without dependencies.
$(VENV)/.stamp: pyproject.toml $(LOCK)
	@if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  scripts/apt_install.sh python3-venv || { echo "venv: install python3-venv" >&2; exit 1; }; \
	fi
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --require-hashes -r $(LOCK)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	@touch $@

# pip-compile (pip-tools, pinned in the lock) with hashes; pyproject.toml keeps the ranges.
LOCK_FLAGS := --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links --quiet
lock: venv
	$(VPY) -m piptools compile $(LOCK_FLAGS) -o requirements.lock pyproject.toml
	$(VPY) -m piptools compile $(LOCK_FLAGS) --extra test --extra dev --extra bench -o $(LOCK) pyproject.toml

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

broker:
	@scripts/ensure_rabbitmq.sh

tools:
	@scripts/ensure_tools.sh

chromium:
	@scripts/ensure_chromium.sh

# Two workers (pytest-xdist): tests are isolated by prefix, vhost and database. The tests that
# start their own RabbitMQ nodes (the 3-node cluster, the TLS node: fixed node names and ports)
# run afterwards, one at a time.
TEST_WORKERS ?= 2
SERIAL_TESTS := tests/test_availability.py tests/test_security_tls.py
# (exit code 5: PYTEST_ADDOPTS selected nothing in that part)
test: venv broker tools chromium
	$(VPY) -m pytest -q -n $(TEST_WORKERS) --durations=25 $(addprefix --ignore=,$(SERIAL_TESTS)) || [ $$? -eq 5 ]
	$(VPY) -m pytest -q --durations=10 $(SERIAL_TESTS) || [ $$? -eq 5 ]

demo: venv broker
	$(VPY) -m demo

# docker/actors.txt -> docker-compose.actors*.yml, Prometheus targets, missing passwords in .env
compose: venv
	$(VPY) -m admin.deployment

cluster-up:
	@scripts/cluster.sh start

cluster-down:
	@scripts/cluster.sh stop

cluster-status:
	@scripts/cluster.sh status

certs:
	@scripts/gen_certs.sh

tls-node-up: certs
	@scripts/tls_node.sh start

tls-node-down:
	@scripts/tls_node.sh stop

# BENCH_ARGS: e.g. BENCH_ARGS="--quick" or BENCH_ARGS="emit connector --messages 10000"
bench: venv broker
	$(VPY) -m bench $(BENCH_ARGS)

clean:
	-@scripts/cluster.sh stop >/dev/null 2>&1
	-@scripts/tls_node.sh stop >/dev/null 2>&1
	rm -rf $(VENV) .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
