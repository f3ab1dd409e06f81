# Every target installs the project into .venv first (once, and again whenever
# pyproject.toml changes), so a fresh clone needs nothing but `make <target>`.

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# `examples` is not an installed package: let every command import it from here.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test bench lint examples soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The notify fan-out on an embedded supervisor; the store is .runner/ in this directory.
run: $(STAMP)
	$(BIN)/runner invoke notify_all --id demo-$$(date +%s%N) --arg '{"order_id": "o-1"}'

test: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m tests.bench

lint: $(STAMP)
	$(BIN)/ruff check runner store tests examples
	$(BIN)/mypy runner

examples: $(STAMP)
	$(BIN)/python -m examples

soak: $(STAMP)
	$(BIN)/runner chaos --rounds 200 --random

# Does not depend on the stamp: installing only to delete would be wasted work.
clean:
	rm -rf $(VENV) .runner build .pytest_cache .mypy_cache .ruff_cache .hypothesis outbox.jsonl
	rm -rf *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
