# Two commands do everything on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU wheel of torch; on a GPU machine use e.g. `make TORCH=torch train`.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install train test bench clean-outputs

$(STAMP): pyproject.toml Makefile
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
