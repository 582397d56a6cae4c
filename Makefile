# Two commands do all the set-up on a fresh machine (Python >= 3.11, make):
#   make run    creates .venv, installs thermospec, runs the default M1 run
#   make test   creates .venv, installs thermospec[dev], runs ruff, mypy --strict and pytest
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint types pytest bench clean

$(STAMP): pyproject.toml setup.py src/thermospec/_kernels.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m scripts.run_m1 run

lint: $(STAMP)
	$(BIN)/ruff check src scripts tests benchmarks

types: $(STAMP)
	$(BIN)/mypy --strict src scripts tests benchmarks

pytest: $(STAMP)
	$(BIN)/pytest

test: lint types pytest

# Speed and scale figures (README: Performance); a few minutes, writes ~2 GB of JSONL to a temporary folder.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
