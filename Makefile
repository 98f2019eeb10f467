# Task Network. `make run` sets everything up and runs the system; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test lint bench sim chromium clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,scale]'
	touch $(STAMP)

setup: $(STAMP)

# Debian's Chromium drives the browser tests (never a downloaded browser).
chromium:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

run: setup
	$(BIN)/python -m coordinator.devrun

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m schema.gen --check

test: setup chromium lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	$(BIN)/python -m tests.bench.run

sim: setup
	TN_SIM_SEEDS=$(or $(SEEDS),1000) $(BIN)/python -m pytest -q tests/sim

# Re-record the golden journals of tests/replay from real runs. Run it whenever the core's
# behaviour (or its classes) changes on purpose, and commit the new goldens with the change.
.PHONY: golden
golden: setup
	$(BIN)/python -m tests.replay.record_golden

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis
