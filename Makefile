# mliy-spawner: the two commands that matter are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
NODE_PREFIX ?= .node
BIN := $(VENV)/bin
CHP := $(NODE_PREFIX)/node_modules/.bin/configurable-http-proxy
export PATH := $(CURDIR)/$(BIN):$(CURDIR)/$(NODE_PREFIX)/node_modules/.bin:$(PATH)

.PHONY: demo test lint bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py
	$(BIN)/pip install --quiet -e ".[test,demo]"
	touch $@

$(CHP):
	npm install --silent --prefix $(NODE_PREFIX) configurable-http-proxy@5

install: $(VENV)/.installed $(CHP)

demo: install
	$(BIN)/python -m mliy_spawner.demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/cfn-lint cloudformation/*.yaml
	$(BIN)/shellcheck userdata/*.sh

bench: install
	$(BIN)/python benchmarks/pricing.py
	$(BIN)/python benchmarks/reflector.py

clean:
	rm -rf $(VENV) $(NODE_PREFIX) build dist *.egg-info
