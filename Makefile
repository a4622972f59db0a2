# Two commands do everything on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# PyTorch, pinned: pip installs the build its index serves (a CPU-only index: the CPU build, no CUDA
# libraries); another version or build, e.g. on a GPU machine: `make TORCH='torch>=2.4' train`.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# the TORCH last asked for, as a file named by its checksum: another one installs again (and `make -n` stays quiet)
WANTED := $(VENV)/.torch-$(shell printf '%s' '$(TORCH)' | cksum | cut -d' ' -f1)

.PHONY: install train test test-oldest bench clean-outputs

$(WANTED):
	@mkdir -p $(VENV) && rm -f $(VENV)/.torch-* && touch $@

$(STAMP): pyproject.toml Makefile $(WANTED)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(STAMP)

train: $(STAMP)
	$(BIN)/python -m tornado.train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

# The oldest versions pyproject.toml allows (uv's lowest-direct resolution: torch 2.4, Lightning 2.4, NumPy 1.24.1,
# pandas 2.0, Hydra 1.3.2...) on the oldest Python found (3.10 where pyenv or the system has one), in
# .venv-oldest, against the tests that lean most on those libraries (all of them: make test-oldest ARGS=tests).
# PyPI's torch 2.4 is a CUDA build, about 3 GB with its libraries, that runs on the CPU.
OLDEST        ?= .venv-oldest
OLDEST_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10.*/bin/python) $(shell command -v python3.10) \
                   $(PYTHON))
OLDEST_TESTS  ?= tests/test_docs.py tests/test_report.py tests/test_sweep_slurm.py tests/test_data.py \
                 tests/test_datamodule.py tests/test_augment.py tests/test_fast.py tests/test_metrics.py

test-oldest: $(STAMP)
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv venv -q --allow-existing -p $(OLDEST_PYTHON) $(OLDEST)
	$(BIN)/uv pip install -q -p $(OLDEST)/bin/python --resolution lowest-direct -e ".[test]"
	$(OLDEST)/bin/python -c 'import sys, torch, pytorch_lightning as pl, numpy, pandas, hydra; \
	    print("oldest: Python", sys.version.split()[0], "torch", torch.__version__, "Lightning", pl.__version__, \
	          "NumPy", numpy.__version__, "pandas", pandas.__version__, "Hydra", hydra.__version__)'
	$(OLDEST)/bin/python -m pytest -q $(or $(ARGS),$(OLDEST_TESTS))

bench: $(STAMP)
	$(BIN)/python -m tornado.bench --quick $(ARGS)

clean-outputs:
	rm -rf outputs/*
