# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   set up, then run the whole loop on built-in data
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
UV_VERSION := 0.13.9
PYTEST_ARGS ?=

.PHONY: setup test test-all demo lint lock bench clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the pinned dependencies

test: setup  ## fast tests (slow ones are marked and skipped), on both cores
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=15 $(PYTEST_ARGS)

test-all: setup  ## every test, slow ones included
	$(BIN)/pytest -q -n 2 --dist loadfile -m "" $(PYTEST_ARGS)

demo: setup  ## the whole loop on built-in data
	$(BIN)/retain demo

lint: setup
	$(BIN)/ruff check .

lock: setup  ## re-resolve requirements.lock from pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra dev -o requirements.lock --python-version 3.11

bench: setup  ## throughput and memory figures
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf out store mlruns/*.db mlruns/artifacts .pytest_cache
