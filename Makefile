# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml tests/plugin_package/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	if [ -d tests/plugin_package ]; then $(BIN)/python -m pip install -q -e tests/plugin_package; fi
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/polysdk run toy-models --batch LR1 --quick --out runs/demo

# tests and the package's doctests (testpaths and --doctest-modules in pyproject.toml)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests polysdk

clean:
	rm -rf $(VENV) runs
