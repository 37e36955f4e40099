# `make demo` and `make test` do all set-up on a fresh machine: a venv, CPU-friendly torch first, then the project.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" on a CPU
# machine whose default index would hand out a CUDA build.
TORCH_PIP_ARGS ?=
EXTRAS ?= dev,wandb,peers,ray,submitit
STAMP := $(VENV)/.coldstart-installed
PYTEST_ARGS ?= --durations=12   # the slowest tests, printed at the end
# Test files run in parallel processes (pytest-xdist; tests/conftest.py gives each its own cache, results folder and
# DRAM tier, and keeps the Ray tests in one). PYTEST_WORKERS=0 runs everything in this process, in file order.
PYTEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --dist loadgroup
# `make test-random`: the suite in a shuffled order (pytest-random-order, all tests in one bucket); the seed is
# printed in pytest's header and `make test-random SEED=<it>` replays that order
SEED ?= $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
DRAM_DIR ?= /dev/shm/coldstart-dram
DRAM_SIZE ?= 16G

.PHONY: setup demo test test-random lint typecheck clean dram-tier

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

setup: $(STAMP)

# The run prints its rounded summary table and the path of its figure itself.
demo: setup
	$(VENV)/bin/coldstart experiment=loading device=cpu

test: setup
	bash .ci/install-nginx.sh
	$(VENV)/bin/pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test-random: setup
	bash .ci/install-nginx.sh
	@echo "[coldstart] shuffled test order, seed $(SEED): replay with make test-random SEED=$(SEED)"
	$(VENV)/bin/pytest $(PYTEST_PARALLEL) --random-order-bucket=global --random-order-seed=$(SEED) $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy

# The native loader's DRAM tier on a tmpfs with 2 MiB pages, so hot loads map 2 MiB at a time (needs root; undo with
# `$(PY) -m loaders.native.hugetmpfs unmount`). Without it the tier lives on /dev/shm's 4 KiB pages.
dram-tier: setup
	$(PY) -m loaders.native.hugetmpfs mount --path $(DRAM_DIR) --size $(DRAM_SIZE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
