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

.PHONY: demo test test-deps lint bench install clean

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

demo: install
	$(BIN)/python -m mliy_spawner.demo

test: test-deps install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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
	$(BIN)/python benchmarks/groups.py
	$(BIN)/python benchmarks/ledger.py
	$(BIN)/python benchmarks/costpages.py

clean:
	rm -rf $(VENV) $(NODE_PREFIX) build dist *.egg-info
