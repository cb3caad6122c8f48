# Everything runs from a project-local virtualenv created from the system python3.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CODE   := src tests examples $(wildcard benchmarks)

.PHONY: help install lint types postgres chromium test demo bench clean

help:
	@echo "make test   create $(VENV), install (PostgreSQL and Chromium too, for their tests), run lint (ruff), types (mypy --strict) and tests (pytest)"
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

# The tests start their own PostgreSQL server (tests/support/postgres.py): install it when it
# is missing and we may (root with apt-get), else stop and name the package.
PG_INSTALL := apt-get install -y -qq --no-install-recommends postgresql
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 \
		|| [ "$$APITOKENS_TEST_NO_POSTGRES" = 1 ] \
		|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		     && { $(PG_INSTALL) >/dev/null 2>&1 \
		          || { apt-get update -qq >/dev/null 2>&1 && $(PG_INSTALL) >/dev/null 2>&1; }; }; } \
		|| { echo "The tests need PostgreSQL: apt-get install -y --no-install-recommends postgresql" \
		          "(or APITOKENS_TEST_NO_POSTGRES=1 to skip its tests)"; exit 1; }

# The browser tests drive Debian's Chromium through Playwright (tests/support/browser.py;
# `playwright install` cannot download browsers everywhere, apt-get can): install it likewise.
CHROMIUM_INSTALL := apt-get install -y -qq --no-install-recommends chromium
chromium:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/lib/chromium/chromium ] \
		|| [ "$$APITOKENS_TEST_NO_BROWSER" = 1 ] \
		|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		     && { $(CHROMIUM_INSTALL) >/dev/null 2>&1 \
		          || { apt-get update -qq >/dev/null 2>&1 && $(CHROMIUM_INSTALL) >/dev/null 2>&1; }; }; } \
		|| { echo "The browser tests need Chromium: apt-get install -y --no-install-recommends chromium" \
		          "(or APITOKENS_TEST_NO_BROWSER=1 to skip them)"; exit 1; }

test: lint types postgres chromium
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# The benchmarks run in a virtualenv of their own (uvicorn, Django and drf-api-key for
# the peer, ...), never in $(VENV): `make test` and CI stay fast and lean. wrk, the load
# generator, comes from Debian when we may install it; without it the end-to-end
# benchmark drives uvicorn with its own async client.
BENCH_VENV  ?= benchmarks/.venv
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): pyproject.toml benchmarks/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[postgres]' -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) postgres
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& { apt-get install -y -qq wrk >/dev/null 2>&1 \
		     || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1; }; }; } \
		|| echo "wrk is not installed: the end-to-end benchmark uses its own async client"
	$(BENCH_VENV)/bin/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(BENCH_VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
