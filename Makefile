# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck faults bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("llmo needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/llmo demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory typecheck
	$(BIN)/python -m pytest

# The fault-injection suite alone (also part of `make test`), ending with its
# table: each fault injected, whether it was survived with nothing lost, and
# how many finished tasks ran again.
faults: $(STAMP)
	$(BIN)/python -m pytest tests/faults -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory typecheck

# mypy reads the installed names (llmo.brain, ...) through a tree of links to
# the repository's folders, rebuilt each run so a new folder is never missed.
TYPECHECK := $(VENV)/typecheck
PACKAGES := proto broker brain worker plans tui cli

typecheck: $(STAMP)
	@rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/llmo
	@for p in $(PACKAGES); do ln -s ../../../$$p $(TYPECHECK)/llmo/$$p; done
	MYPYPATH=$(TYPECHECK) $(BIN)/mypy

# Every benchmark prints its figures against a floor measured in the same run.
bench: $(STAMP)
	$(BIN)/python bench/broker.py
	$(BIN)/python bench/plans.py
	$(BIN)/python bench/brain_core.py
	$(BIN)/python bench/recovery.py
	$(BIN)/python bench/llm_overhead.py
	$(BIN)/python bench/llm_parallel.py
	$(BIN)/python bench/e2e.py
	$(BIN)/python bench/tui.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .hypothesis
