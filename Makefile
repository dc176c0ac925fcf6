# Two entry points (README): `make run` and `make test`. Everything lives in .venv.
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
NP      ?= 3
MPI_NP  ?= 3

.PHONY: setup run lint test test-unit test-mpi bench clean

$(BIN)/fedast-mpi: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch pinned to the CPU build available here; on a GPU cluster install your CUDA build first.
	$(BIN)/pip install -q "torch==2.13.0" mpich -e ".[test]"
	touch $@

setup: $(BIN)/fedast-mpi

run: setup
	$(BIN)/mpiexec -n $(NP) $(BIN)/fedast-mpi run --out runs/default-$$(date +%Y%m%d-%H%M%S)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test-unit: setup
	$(BIN)/python -m pytest -q

test-mpi: setup
	$(BIN)/mpiexec -n $(MPI_NP) $(BIN)/python -m pytest -q --with-mpi -m mpi -p no:cacheprovider tests/mpi

test: lint test-unit test-mpi

bench: setup
	$(BIN)/python -m benchmarks --readme

clean:
	rm -rf $(VENV) *.egg-info runs .pytest_cache .mypy_cache .ruff_cache
