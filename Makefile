# mliy-spawner: the two commands that matter are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
NODE_PREFIX ?= .node
BIN := $(VENV)/bin
CHP := $(NODE_PREFIX)/node_modules/.bin/configurable-http-proxy
export PATH := $(CURDIR)/$(BIN):$(CURDIR)/$(NODE_PREFIX)/node_modules/.bin:$(PATH)

# Debian packages, one word each. scripts/system-deps installs the missing ones with
# apt-get when run as root, else stops naming the command to run. (Lint needs none:
# ruff, cfn-lint and shellcheck come from pip.)
NODE_DEPS := nodejs npm
TEST_DEPS := $(NODE_DEPS) chromium postgresql apache2
ifneq ($(findstring not browser,$(PYTEST_ARGS)),)
TEST_DEPS := $(filter-out chromium,$(TEST_DEPS))
endif

# The lowest JupyterHub supported (pyproject.toml's floor): `make test` also runs the
# suite outside tests/e2e on it, in a venv of its own. The e2e and browser tests run on
# the latest only. `make test-min JUPYTERHUB_MIN=5.5.4` tries another.
JUPYTERHUB_MIN ?= 5.5.0
MIN_VENV := .venv-jupyterhub-$(JUPYTERHUB_MIN)

.PHONY: demo test test-latest test-min test-deps lint bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py
	$(BIN)/pip install --quiet -e ".[test,demo]"
	touch $@

$(CHP):
	scripts/system-deps $(NODE_DEPS)
	npm install --silent --prefix $(NODE_PREFIX) configurable-http-proxy@5

install: $(VENV)/.installed $(CHP)

$(MIN_VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/pip install --quiet -e ".[test,demo]" "jupyterhub==$(JUPYTERHUB_MIN)"
	touch $@

demo: install
	$(BIN)/python -m mliy_spawner.demo

test: test-latest test-min

test-latest: test-deps install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-min: test-deps install $(MIN_VENV)/.installed
	PATH="$(CURDIR)/$(MIN_VENV)/bin:$$PATH" $(MIN_VENV)/bin/python -m pytest \
		--ignore=tests/e2e $(PYTEST_ARGS)

test-deps:
	scripts/system-deps $(TEST_DEPS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/cfn-lint cloudformation/*.yaml
	$(BIN)/shellcheck userdata/*.sh scripts/system-deps .ci/run

bench: install
	$(BIN)/python benchmarks/pricing.py
	$(BIN)/python benchmarks/reflector.py
	$(BIN)/python benchmarks/storm.py
	$(BIN)/python benchmarks/hubstorm.py
	$(BIN)/python benchmarks/groups.py
	$(BIN)/python benchmarks/ledger.py
	$(BIN)/python benchmarks/costpages.py
	$(BIN)/python benchmarks/readiness.py
	$(BIN)/python benchmarks/hubread.py

clean:
	rm -rf $(VENV) .venv-jupyterhub-* $(NODE_PREFIX) build dist *.egg-info
