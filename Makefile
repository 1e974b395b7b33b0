# Two commands for a new user: `make install && .venv/bin/recsys quickstart`, then `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch is pinned by constraints-cpu.txt (GPU users: see README "GPU").
CONSTRAINTS ?= constraints-cpu.txt
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: install test lint bench quickstart clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[dev,spark]"

test:
	$(BIN)/ruff check .
	$(BIN)/pytest -q

quickstart:
	$(BIN)/recsys quickstart

bench:
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[bench]"
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
