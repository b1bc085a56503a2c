# luki-gateway: the whole set-up is `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: run test lint typecheck pytest bench bench-quick bench-tools clean

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python >= 3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamp files re-run the install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@touch $@ $(VENV)/.installed-dev $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/luki-gateway dev

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy --strict src/

pytest: $(VENV)/.installed-dev
	@command -v redis-server >/dev/null || { echo "error: redis-server not found on PATH; the tests start a private one. Install it: apt-get install redis-server (Debian/Ubuntu) or brew install redis (macOS)" >&2; exit 1; }
	@# Serial on purpose: measured, -n 2 (xdist) saves ~40 s of ~2 min here but makes the
	@# timing tests flaky on two shared cores.
	@# pytest exits 5 when it collected nothing: say so, and fail (make turns it into 2).
	@$(BIN)/pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$status

test: lint typecheck pytest

# wrk, nginx and redis-server come from the distribution's packages when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
bench-tools:
	@command -v wrk >/dev/null && command -v redis-server >/dev/null && \
	  { command -v nginx >/dev/null || test -x /usr/sbin/nginx; } || \
	  { command -v apt-get >/dev/null || { echo "error: install wrk, nginx and redis-server" >&2; exit 1; }; \
	    $(SUDO) apt-get update -qq && \
	    { $(SUDO) apt-get install -y -qq nginx-light wrk redis-server || \
	      $(SUDO) apt-get install -y -qq nginx wrk redis-server; }; }

bench: $(VENV)/.installed-bench bench-tools
	$(PY) -m bench.run --full

bench-quick: $(VENV)/.installed-bench bench-tools
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist src/*.egg-info
