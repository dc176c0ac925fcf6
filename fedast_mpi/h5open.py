"""Opening HDF5 files a live run may be writing: no file locking, and reads retried.

Imports only os, time and h5py, so the torch- and MPI-free `analysis` package can use it.
"""

import os
import time

import h5py

ATTEMPTS = 3  # tries of a read that may overlap the writer's flush
DELAY = 0.1  # seconds between them
RETRY_ON = (OSError, KeyError, RuntimeError, ValueError)  # what such a read can raise


def open_h5(path, mode: str = "r") -> h5py.File:
    """`h5py.File(path, mode)` with HDF5 file locking off.

    The run file's writer and its live readers must not block each other (see the
    `fedast_mpi.runlog.RunLog` docstring): the writer takes no lock and sets no "open for
    writing" flag, and a reader takes no lock either. An h5py or HDF5 build without the
    `locking` option opens the file plainly (set `HDF5_USE_FILE_LOCKING=FALSE` there).
    """
    path = os.fspath(path)
    try:
        return h5py.File(path, mode, locking=False)
    except (TypeError, ValueError) as e:  # h5py/HDF5 without the locking option
        if "locking" not in str(e):
            raise
        return h5py.File(path, mode)


def with_retry(read, attempts: int = ATTEMPTS, delay: float = DELAY, retry_on=RETRY_ON):
    """`read()`, called again up to `attempts` times in all (`delay` seconds apart) while it
    raises one of `retry_on` (a read overlapping the writer's flush can fail or see a partial
    state); the last such exception is re-raised, any other propagates at once."""
    attempts = max(1, int(attempts))
    for attempt in range(attempts):
        if attempt:
            time.sleep(delay)
        try:
            return read()
        except retry_on:
            if attempt == attempts - 1:
                raise
