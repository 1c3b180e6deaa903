# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# `make bench` runs the side-by-side benchmark (BENCH_ARGS="--scale 0.1" for a quick try).
# `make bench-peers` measures shardstore against other data loaders (installs them first).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
TEST_PROCESSES ?= 2
STAMP  := $(VENV)/.installed
HDF5   := plugins/shardstore-hdf5

export TF_CPP_MIN_LOG_LEVEL ?= 2
export NO_MKDOCS_2_WARNING ?= 1

.PHONY: install test lint docs demo bench bench-peers clean stress

install: $(STAMP)

$(STAMP): pyproject.toml requirements/dev.txt $(HDF5)/pyproject.toml $(wildcard $(HDF5)/shardstore_hdf5/*.py)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt -e .
	# the third-party plugin, installed like any user would (not editable; shardstore is already here)
	rm -rf $(HDF5)/build $(HDF5)/*.egg-info
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall ./$(HDF5)
	rm -rf $(HDF5)/build $(HDF5)/*.egg-info
	touch $(STAMP)

test: install
	# two test processes (much of the suite waits on child processes and servers); a ceiling
	# for the whole run (about 10 minutes on 2 CPUs): a hang fails fast
	timeout --kill-after=60 2400 $(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist worksteal
	$(MAKE) lint
	$(MAKE) docs

# The documentation site (mkdocs-material + mkdocstrings) into site/; --strict
# turns broken links, unknown references and docstring problems into failures.
docs: install
	$(BIN)/mkdocs build --strict --site-dir site

# The reliability tests with their heavy trial counts (docs/reliability.md): SIGKILL at every
# storage operation of every format with fsync on, hundreds of random kills, corruptions,
# concurrent writers and readers, thousands of hostile inputs. Takes tens of minutes.
stress: install
	SHARDSTORE_STRESS=1 $(BIN)/python -m pytest -q -s tests/test_crash.py tests/test_corruption.py \
		tests/test_concurrency.py tests/test_hostile.py

lint: install
	$(BIN)/ruff check shardstore tests plugins tools benchmarks
	$(BIN)/ruff format --check shardstore tests plugins tools benchmarks
	$(BIN)/mypy
	$(BIN)/mypy --strict --ignore-missing-imports $(HDF5)/shardstore_hdf5

demo: install
	$(BIN)/shardstore demo

bench: install
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# The other data loaders (docs/benchmarks.md, "Against other data loaders"); never part of
# `make install` or `make test`. Those that share the project's venv go into it under a
# constraint that freezes what it has (a peer that would move numpy, protobuf or TensorFlow
# fails to install instead); those that need PyTorch get their own venv.
PEERS_STAMP := $(VENV)/.peers-installed
TORCH_VENV  := .venv-torch

$(PEERS_STAMP): $(STAMP) requirements/peers.txt
	$(BIN)/python -m pip freeze --exclude-editable | grep -v ' @ ' > $(VENV)/peers-constraints.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/peers-constraints.txt -r requirements/peers.txt
	touch $@

$(TORCH_VENV)/.installed: pyproject.toml requirements/peers-torch.txt
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TORCH_VENV)/bin/python -m pip install --quiet -r requirements/peers-torch.txt -e .
	touch $@

bench-peers: $(PEERS_STAMP) $(TORCH_VENV)/.installed
	$(BIN)/python -m benchmarks.peers_bench --torch-python $(TORCH_VENV)/bin/python $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(TORCH_VENV) .demo-data .pytest_cache .mypy_cache .ruff_cache site
