# flaskstack: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV     := .venv
BIN      := $(VENV)/bin
PYTHON   ?= python3
PLAYBOOK := $(BIN)/ansible-playbook
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)

DEMO_URL := http://127.0.0.1:8080

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Install the control node's tools into .venv

.PHONY: engine
engine: venv ## Install and start the Docker engine; build the systemd image if absent
	$(PLAYBOOK) playbooks/local_target.yml --tags engine,image

.PHONY: demo
demo: venv ## Provision the embedded local target and print its URL
	$(PLAYBOOK) playbooks/local_target.yml
	$(PLAYBOOK) site.yml -i inventory/local
	@echo
	@echo "flaskstack demo: $(DEMO_URL)"
	@$(BIN)/python -c 'import sys, urllib.request; r = urllib.request.urlopen(sys.argv[1] + "/healthz", timeout=10); print("GET /healthz ->", r.status, r.read().decode())' $(DEMO_URL)

.PHONY: bench
bench: demo ## Benchmark: HTTP load through nginx during fab deploys, failed deploys, rollback, config change
	$(BIN)/python bench/deploy_speed.py
	$(BIN)/python bench/zero_downtime.py

.PHONY: clean
clean: ## Remove the demo target (container, key, secrets)
	-docker rm -f flaskstack-demo flaskstack-demo2
	rm -rf .demo

.PHONY: lint
lint: venv ## ansible-lint (production profile), yamllint, ruff
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

.PHONY: pytest
pytest: venv ## pytest: the sample app, packaging, flaskstack-release, the fabfile, bad input (no Docker)
	$(BIN)/pytest -m "not target"

.PHONY: test-target
test-target: engine ## pytest against the demo target over SSH: make demo twice, fab deploy/rollback
	$(BIN)/pytest -m target

.PHONY: molecule
molecule: engine ## molecule test --all: every scenario, each in a systemd container
	$(BIN)/molecule test --all

.PHONY: test
test: lint pytest molecule test-target ## Everything CI runs

.PHONY: lock
lock: ## Re-pin requirements.txt from requirements.in
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip install --quiet -r requirements.in
	{ head -2 requirements.txt; .lockvenv/bin/pip freeze --exclude-editable; } > requirements.txt.new
	mv requirements.txt.new requirements.txt && rm -rf .lockvenv
