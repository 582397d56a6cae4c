# Two commands do all the set-up on a fresh machine (Python >= 3.11, make):
#   make run    creates .venv, installs thermospec, runs the default M1 run
#   make test   creates .venv, installs thermospec[dev], runs ruff, mypy --strict and pytest
# make test EXTRAS=hf also installs the hf extra, so that the trace recorder is tested on a tiny model:
# PyTorch's CPU build first (torch==2.13.0+cpu from TORCH_INDEX: a bare `torch` from PyPI is a CUDA build
# of several GB), then transformers.  TORCH_INDEX= (empty) takes the wheel from pip's own configuration
# (a local wheel folder or mirror, as on the CI machines: .ci/run).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOURCES := pyproject.toml setup.py src/thermospec/engine/_kernels.c
EXTRAS ?=
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
comma := ,
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev$(if $(EXTRAS),-$(subst $(comma),-,$(EXTRAS)))
HF := $(filter hf,$(subst $(comma), ,$(EXTRAS)))

.PHONY: run test lint types pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# make run needs only the runtime dependencies; make test adds the dev extra (which includes them), and the
# extras named in EXTRAS (one stamp per set, so that adding one installs it).
$(RUN_STAMP): $(SOURCES) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(DEV_STAMP): $(SOURCES) | $(BIN)/python
ifneq ($(HF),)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'torch==2.13.0+cpu' \
		$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
endif
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev$(if $(EXTRAS),$(comma)$(EXTRAS))]'
	touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/python -m scripts.run_m1 run

lint: $(DEV_STAMP)
	$(BIN)/ruff check src scripts tests benchmarks

types: $(DEV_STAMP)
	$(BIN)/mypy --strict src scripts tests benchmarks

# The suite runs on TEST_JOBS worker processes (pytest-xdist), each test file whole on one worker so that its
# module fixtures (tiny models, recorded traces, the matrix's runs) are built once: ~5.5 min on 2 cores, ~11 alone.
TEST_JOBS ?= 2
pytest: $(DEV_STAMP)
	$(BIN)/pytest -n $(TEST_JOBS) --dist loadfile

test: lint types pytest

# Speed and scale figures (README: Performance); a few minutes, writes ~2 GB of JSONL to a temporary folder.
bench: $(DEV_STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# The documentation's figures (docs/*.png), regenerated from fresh seeded runs and sweeps: the same bytes
# every time on a given installation. Each figure's page shows the command that makes it.
.PHONY: figures
figures: $(RUN_STAMP)
	$(BIN)/python -m scripts.figures
