"""Offline analysis of fedast-mpi run files (SPEC §10): h5py, numpy and matplotlib only.

No MPI and no torch: this package imports only `fedast_mpi.schema` from the product, so it runs on
a laptop with a checkout (`PYTHONPATH=CHECKOUT python -m analysis.report RUN_DIR --out DIR`).
"""

from .runs import AnalysisError, Run, TaskRun, find_run_files, load_run, load_runs

__all__ = ["AnalysisError", "Run", "TaskRun", "find_run_files", "load_run", "load_runs"]
