# Two commands do everything on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# PyTorch, pinned: pip installs the build its index serves (a CPU-only index: the CPU build, no CUDA
# libraries); another version or build, e.g. on a GPU machine: `make TORCH='torch>=2.4' train`.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# the TORCH last asked for: another one installs again
WANTED := $(VENV)/.torch

.PHONY: install train test bench clean-outputs FORCE

$(WANTED): FORCE
	@mkdir -p $(VENV) && (echo '$(TORCH)' | cmp -s - $@ || echo '$(TORCH)' > $@)

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

bench: $(STAMP)
	$(BIN)/python -m tornado.bench --quick $(ARGS)

clean-outputs:
	rm -rf outputs/*
