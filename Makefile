# fifoq: developer and CI entry points. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python

.PHONY: help venv bench-deps broker tools chromium test demo cluster-up cluster-down cluster-status certs tls-node-up tls-node-down bench clean

help:
	@echo "make venv          create .venv and install the project with its test extra"
	@echo "make bench-deps    add the bench extra (dramatiq, celery) to .venv"
	@echo "make broker        make sure RabbitMQ with the management API is reachable"
	@echo "make test          run the test suite (PYTEST_ADDOPTS is passed through)"
	@echo "make demo          run the demo (prints the admin console URL)"
	@echo "make cluster-up    start a local 3-node RabbitMQ cluster (ports 5681-5683)"
	@echo "make cluster-down  stop it and delete its state"
	@echo "make certs         generate a development CA and certificates in .certs/ (openssl)"
	@echo "make tls-node-up   start a TLS-only RabbitMQ node (AMQPS 5691, HTTPS 15691) for the TLS tests"
	@echo "make tls-node-down stop it and delete its state"
	@echo "make bench         run the benchmarks (BENCH_ARGS=--quick for a smoke run; see docs/benchmarks.md)"
	@echo "make clean         remove the venv, caches and cluster state"

venv: $(VENV)/.stamp

# Re-install only when pyproject.toml changed.
$(VENV)/.stamp: pyproject.toml
	@if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  scripts/apt_install.sh python3-venv || { echo "venv: install python3-venv" >&2; exit 1; }; \
	fi
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

# The bench extra (dramatiq and celery for `python -m bench compare`, whose quick run
# tests/test_bench.py smoke-tests): installed once, again only when pyproject.toml changes.
bench-deps: $(VENV)/.bench-stamp

$(VENV)/.bench-stamp: $(VENV)/.stamp pyproject.toml
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	@touch $@

broker:
	@scripts/ensure_rabbitmq.sh

tools:
	@scripts/ensure_tools.sh

chromium:
	@scripts/ensure_chromium.sh

test: venv bench-deps broker tools chromium
	$(VPY) -m pytest -q

demo: venv broker
	$(VPY) -m demo

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
bench: venv bench-deps broker
	$(VPY) -m bench $(BENCH_ARGS)

clean:
	-@scripts/cluster.sh stop >/dev/null 2>&1
	-@scripts/tls_node.sh stop >/dev/null 2>&1
	rm -rf $(VENV) .pytest_cache .cluster build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
