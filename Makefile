# Everything runs from a project-local virtualenv created from the system python3.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CODE   := src tests examples $(wildcard benchmarks)

.PHONY: help install lint types test demo bench clean

help:
	@echo "make test   create $(VENV), install, run lint (ruff), types (mypy --strict) and tests (pytest)"
	@echo "make demo   run a small service protected by apitokens on 127.0.0.1:8000"
	@echo "make bench  run the benchmarks and update docs/performance.md"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

types: $(STAMP)
	$(BIN)/mypy src

test: lint types
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	@echo "The benchmark suite is not written yet (issue: benchmarks and the performance budget)."

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
