# novalite: `make run` sets up and serves; `make test` sets up and runs the suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test e2e e2e-cloud setup test-setup system test-system venv lint bench clean tempest

run: setup
	$(VENV)/bin/novalite serve

# The suite without real guests (simulated hosts, the real clients, crash drills): under 15 minutes,
# on TEST_WORKERS pytest-xdist workers (tests/conftest.py keeps what shares the machine on one).
TEST_WORKERS ?= 2
test: test-setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not qemu" $(PYTEST_ARGS)

# Real TCG guests under qemu:///system and a lab host (boot, rebuild, rescue, resize, snapshot,
# shelve, volumes, live migration, the dashboard's console); the Debian cloud image is
# `make e2e-cloud` (CI's 30 minutes no longer hold both).
e2e: test-setup
	$(PY) -m pytest -q -m "qemu and not cloudimage" --durations=25 $(PYTEST_ARGS)

# The Debian cloud image (built once with mmdebstrap, cached in /var/tmp) booted with cloud-init.
e2e-cloud: test-setup
	$(PY) -m pytest -q -m cloudimage $(PYTEST_ARGS)

setup: system venv

# The suite's extra system packages (headless Chromium for the dashboard's browser tests).
test-setup: test-system venv

# Tempest's compute API tests against a fresh server (outside `make test`; ~3 minutes).
tempest: setup
	$(PY) scripts/run_tempest.py $(TEMPEST_ARGS)

system:
	bash scripts/setup-system.sh

test-system:
	bash scripts/setup-system.sh --test

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

bench: setup
	$(PY) bench/boot_storm.py $(BENCH_ARGS)

lint: venv
	$(VENV)/bin/ruff check novalite tests bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .novalite clouds.yaml
