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

.PHONY: install train test bench clean-outputs

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

bench: $(STAMP)
	$(BIN)/python -m tornado.bench --quick $(ARGS)

clean-outputs:
	rm -rf outputs/*
