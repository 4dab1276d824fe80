# shop: local stack and test entry points (docs/design.md section 5).
#   make run        API on http://127.0.0.1:$(PORT) with SQS pollers, on MariaDB/Redis/AWS endpoint
#   make test       the whole test suite (ARGS="-k foo" passes arguments to pytest)
#   make queues     queue and DLQ depths, DLQ bodies      make redrive   DLQ -> source queue
#   make seed       add missing demo products             make package   deployment package
#   make deploy STAGE=dev|prod   package, deploy the stack (infra/deploy.json), run the migrations
#   make clients    API clients and keys (ARGS="add NAME --plan P" | "rotate NAME" | "revoke NAME [--key N]")
#   make openapi    rewrite docs/openapi.json from chalicelib/entrypoints/openapi/
#   make lock       re-pin requirements*.txt (with hashes) from requirements*.in
#   make bench-orders | bench-search | bench-ingest | bench-endpoint | bench-flash | bench-lambda-sizes | bench-writer-cost | bench-lifecycle | bench-related
#   make chaos      the whole shop under a seeded nemesis, then checked (ARGS=--quick: ~3 minutes)
#   make flash-reconcile  compare and repair the flash-sale gates (Redis) against MySQL

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  = $(VENV)/.requirements-$(RUNTIME_VERSION).stamp
# The Lambda runtime's Python (scripts/package.py, LAMBDA_RUNTIME): chalice packages
# for the interpreter it runs under, so the venv is made with the same version. The
# first python3.12 that runs (a pyenv shim of a version not enabled does not).
RUNTIME_VERSION := 3.12
ifeq ($(origin PYTHON),undefined)
PYTHON := $(firstword $(foreach p,python$(RUNTIME_VERSION) $(wildcard $(HOME)/.pyenv/versions/$(RUNTIME_VERSION).*/bin/python$(RUNTIME_VERSION)),\
            $(shell $(p) -c 'import sys; print(sys.executable)' 2>/dev/null)))
endif
ARGS   ?=
PORT   ?= 8000
# pytest-xdist workers for `make test` (empty or 1: one process). Measured on
# this 2-CPU box: -n 2 took 4:10 vs 4:14 serially and made a rate-limit timing
# test flaky, so the default is serial; `make test TEST_WORKERS=2` to try it.
TEST_WORKERS ?=

export PORT TEST_WORKERS
export AWS_ACCESS_KEY_ID ?= test
export AWS_SECRET_ACCESS_KEY ?= test
export AWS_DEFAULT_REGION ?= us-east-1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv run test chromium setup queues redrive seed package deploy clients openapi lock bench-orders bench-search bench-ingest bench-endpoint bench-flash flash-reconcile bench-lambda-sizes bench-writer-cost bench-lifecycle bench-related chaos clean-venv

help:
	@sed -n '2,12p' Makefile | sed 's/^# \{0,1\}//'

# Re-installs only when a lock file changed (or the venv is new). The lock files
# pin every package with its hashes: pip refuses anything else.
$(STAMP): requirements.txt requirements-dev.txt
	@test -n "$(PYTHON)" || { echo "no python$(RUNTIME_VERSION) found (the Lambda runtime's): install it or set PYTHON="; exit 1; }
	@$(PY) -c 'import sys; sys.exit("%d.%d" % sys.version_info[:2] != "$(RUNTIME_VERSION)")' 2>/dev/null || \
	    { echo "creating $(VENV) with $(PYTHON)"; rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

venv: $(STAMP)

run: $(STAMP)
	$(PY) scripts/stack.py run $(ARGS)

test: $(STAMP) chromium
	$(PY) scripts/stack.py test -- $(ARGS)

# Debian's chromium, for the dashboard test in headless Chromium (installed once).
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

setup: $(STAMP)
	$(PY) scripts/stack.py setup $(ARGS)

queues: $(STAMP)
	@$(PY) scripts/stack.py queues $(ARGS)

redrive: $(STAMP)
	@$(PY) scripts/stack.py redrive $(ARGS)

seed: $(STAMP)
	$(PY) scripts/stack.py seed $(ARGS)

package: $(STAMP)
	$(PY) scripts/package.py $(ARGS)

# Real AWS credentials (profile, SSO or environment): the dummy keys exported
# above for the local stack are dropped here, so they never shadow a profile.
deploy: $(STAMP)
	@test -n "$(STAGE)" || { echo "usage: make deploy STAGE=dev|prod (stages: infra/deploy.json)"; exit 2; }
	env $(if $(filter test,$(AWS_ACCESS_KEY_ID)),-u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY) \
	    $(PY) scripts/deploy.py --stage $(STAGE) $(ARGS)

clients: $(STAMP)
	@$(PY) scripts/clients.py $(ARGS)

openapi: $(STAMP)
	$(PY) -c 'import pathlib; from chalicelib.entrypoints.openapi import render; text = render(); pathlib.Path("docs/openapi.json").write_text(text)'

# pip-tools in a venv of its own; the .in files are the ones to edit.
LOCK_FLAGS := --generate-hashes --allow-unsafe --no-strip-extras --no-emit-index-url --no-emit-find-links -q
lock:
	@test -x .venv-lock/bin/pip-compile || { $(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install -q pip-tools==7.6.2; }
	.venv-lock/bin/pip-compile $(LOCK_FLAGS) --output-file requirements.txt requirements.in
	.venv-lock/bin/pip-compile $(LOCK_FLAGS) --output-file requirements-dev.txt requirements-dev.in

bench-orders: $(STAMP)
	$(PY) bench/orders $(ARGS)

bench-search: $(STAMP)
	$(PY) bench/search $(ARGS)

bench-ingest: $(STAMP)
	$(PY) bench/ingest $(ARGS)

bench-endpoint: $(STAMP)
	$(PY) bench/endpoint $(ARGS)

# The flash-sale gate, hand-off and coalescing consumer against today's hot-row ceiling.
bench-flash: $(STAMP)
	$(PY) bench/flash $(ARGS)

# Redis's flash-sale gates against MySQL: rebuild lost sales, lower over-generous ones.
flash-reconcile: $(STAMP)
	$(PY) scripts/flash_reconcile.py $(ARGS)

# Cold start and warm latency of the packaged functions under a CPU quota per memory size.
bench-lambda-sizes: $(STAMP)
	$(PY) bench/lambda_sizes $(ARGS)

# MySQL CPU per order and per search, the numbers docs/scale-out.md scales to RDS classes.
bench-writer-cost: $(STAMP)
	$(PY) bench/writer_cost $(ARGS)

# The outbox's cost on the order path and the expiry lag (docs/api.md, "Order lifecycle").
bench-lifecycle: $(STAMP)
	$(PY) bench/lifecycle $(ARGS)

# "Bought together": the consumer's events/s and the related route's cached/uncached latency.
bench-related: $(STAMP)
	$(PY) bench/related $(ARGS)

# Everything at once while a seeded nemesis kills, freezes and cuts its dependencies; then checked.
chaos: $(STAMP)
	$(PY) bench/chaos $(ARGS)

clean-venv:
	rm -rf $(VENV)
