# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt -e .
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest
	$(MAKE) lint

lint: install
	$(BIN)/ruff check shardstore tests
	$(BIN)/ruff format --check shardstore tests
	$(BIN)/mypy

demo: install
	$(BIN)/python -m shardstore.demo

clean:
	rm -rf $(VENV) .demo-data .pytest_cache .mypy_cache .ruff_cache
