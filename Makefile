# flaskstack: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV     := .venv
BIN      := $(VENV)/bin
PYTHON   ?= python3
PLAYBOOK := $(BIN)/ansible-playbook
# Each pytest part of `make test` ends with its ten slowest tests (where CI's time goes).
PYTEST   := $(BIN)/pytest --durations=10
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)

DEMO_URL := http://127.0.0.1:8080
# More arguments for the demo's site.yml run (the tests: -e flaskstack_skip_unchanged=false,
# to see every task run twice).
DEMO_ARGS ?=
CLUSTER_URL := https://localhost:8493

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
engine: venv ## Install and start the Docker engine; build the systemd images if absent
	$(PLAYBOOK) playbooks/local_target.yml --tags engine,image -e local_target_test_images=true

.PHONY: demo
demo: venv ## Provision the embedded local target and print its URL
	$(PLAYBOOK) playbooks/local_target.yml
	$(PLAYBOOK) site.yml -i inventory/local $(DEMO_ARGS)
	@echo
	@echo "flaskstack demo: $(DEMO_URL)"
	@$(BIN)/python -c 'import sys, urllib.request; r = urllib.request.urlopen(sys.argv[1] + "/healthz", timeout=10); print("GET /healthz ->", r.status, r.read().decode())' $(DEMO_URL)

.PHONY: bench
bench: demo cluster ## Benchmark: HTTP load during deploys, failed deploys, faults (demo and cluster)
	@command -v wrk >/dev/null || apt-get install -y -qq wrk
	@# Every benchmark runs; the exit code is 1 if one of them missed a goal or failed.
	@status=0; for bench in deploy_speed cold zero_downtime workers cluster; do \
	  echo "== bench/$$bench.py"; $(BIN)/python bench/$$bench.py || status=1; done; \
	if [ -n "$(ANSISTRANO)" ]; then $(BIN)/python bench/peer_ansistrano.py --role "$(ANSISTRANO)" || status=1; \
	else echo "peer side by side skipped: make bench ANSISTRANO=<a checkout of ansistrano.deploy> (bench/peer_ansistrano.py)"; fi; \
	exit $$status

.PHONY: cluster
cluster: venv ## Two load balancers, three app hosts and a database host (containers here); print the URL
	$(PLAYBOOK) playbooks/local_target.yml -i inventory/cluster
	$(PLAYBOOK) site.yml -i inventory/cluster
	@echo
	@echo "flaskstack cluster: $(CLUSTER_URL) (a self-signed certificate; http://localhost:8090 redirects there)"
	@$(BIN)/python -c 'import ssl, sys, urllib.request; ctx = ssl._create_unverified_context(); r = urllib.request.urlopen(sys.argv[1] + "/healthz", timeout=10, context=ctx); print("GET /healthz ->", r.status, r.read().decode())' $(CLUSTER_URL)

.PHONY: clean
clean: ## Remove the demo and cluster targets (containers, network, key, secrets)
	-docker rm -f flaskstack-demo flaskstack-demo2 flaskstack-demo3 flaskstack-demo4 flaskstack-peer flaskstack-cold flaskstack-floor flaskstack-apps flaskstack-lb flaskstack-lb2 flaskstack-app1 flaskstack-app2 flaskstack-app3 flaskstack-db
	-docker network rm flaskstack-cluster
	-$(PLAYBOOK) playbooks/local_vm.yml -i inventory/vm -e local_vm_state=absent
	rm -rf .demo

.PHONY: lint
lint: venv ## ansible-lint (production profile), yamllint, ruff
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

.PHONY: pytest
pytest: venv ## pytest: the sample app, packaging, flaskstack-release, the fabfile, bad input (no Docker)
	@echo "== pytest -m 'not target and not vm'"
	time $(PYTEST) -m "not target and not vm"

.PHONY: test-target
test-target: engine ## pytest against the demo target over SSH: make demo twice, fab deploy/rollback
	@echo "== pytest -m 'target and not cluster and not hosts'"
	time $(PYTEST) -m "target and not cluster and not hosts"

.PHONY: test-hosts
test-hosts: engine ## pytest against targets of their own: another layout, a bare host's compatibility
	@echo "== pytest -m hosts"
	time $(PYTEST) -m hosts

.PHONY: test-cluster
test-cluster: engine ## pytest against the cluster (make cluster): balancing, rolling deploys, faults
	@echo "== pytest -m cluster"
	time $(PYTEST) -m cluster

.PHONY: test-vm
test-vm: venv ## A real VM: Debian from the archive under QEMU, provisioned over SSH, rebooted, scanned
	@echo "== pytest -m vm"
	time $(BIN)/pytest -m vm -s

# Every scenario under molecule/, each in its own container (flaskstack-molecule-<name>).
SCENARIOS := $(sort $(patsubst molecule/%/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))
# How many of the slow parts `make test` runs at once. They mostly wait on the
# containers (apt, systemd, SSH), so three share this 2-CPU machine well; each part's
# output is printed whole when it ends (make --output-sync).
JOBS ?= 3

.PHONY: molecule
molecule: engine ## molecule test of every scenario, several at a time (JOBS=3)
	$(MAKE) --no-print-directory --keep-going -j$(JOBS) --output-sync=target $(addprefix molecule-,$(SCENARIOS))

.PHONY: $(addprefix molecule-,$(SCENARIOS))
$(addprefix molecule-,$(SCENARIOS)): molecule-%: engine
	@echo "== molecule test -s $*"
	time $(BIN)/molecule test -s $*

.PHONY: test
# lint first (seconds, and it stops a broken change early); then the target tests
# (the demo's and the cluster's: containers of their own), the scenarios (longest
# first) and the Docker-free tests, $(JOBS) at a time; a
# failed part does not stop the others (--keep-going), so one run shows every failure.
test: lint ## Everything CI runs
	$(MAKE) --no-print-directory --keep-going -j$(JOBS) --output-sync=target \
		test-target test-cluster test-hosts \
		$(addprefix molecule-,default multiapp workers tls $(filter-out default multiapp workers tls,$(SCENARIOS))) pytest

.PHONY: lock
lock: ## Re-pin requirements.txt from requirements.in
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip install --quiet -r requirements.in
	{ head -2 requirements.txt; .lockvenv/bin/pip freeze --exclude-editable; } > requirements.txt.new
	mv requirements.txt.new requirements.txt && rm -rf .lockvenv
