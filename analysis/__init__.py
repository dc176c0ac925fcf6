"""Offline analysis of fedast-mpi run files (SPEC §10): h5py, numpy and matplotlib only.

No MPI and no torch: from the product this package imports only modules that need h5py and numpy
(`fedast_mpi.schema`, `.runlog`'s reader, `.h5open`), so it runs on a laptop with a checkout
(`PYTHONPATH=CHECKOUT python -m analysis.report RUN_DIR --out DIR`).
"""

from .runs import AnalysisError, Run, TaskRun, find_run_files, load_run, load_runs

__all__ = ["AnalysisError", "Run", "TaskRun", "find_run_files", "load_run", "load_runs"]
