"""HDF5 schema 1 (SPEC §8): names, paths and little-endian row dtypes; numpy only, `/clients` is
a group of datasets `tier` (i1, clients), `multiplier` (f4, clients) and `n_samples` (i4,
clients × tasks)."""

import numpy as np

RUN_SCHEMA = "fedast-mpi/run/1"
CHECKPOINT_SCHEMA = "fedast-mpi/checkpoint/1"
RUN_FILE = "run.h5"
STATUSES = ("running", "completed", "interrupted", "failed", "diverged")

# Paths and names in the run file.
EVENTS = "/events"
AGGREGATIONS = "/aggregations"
ALLOCATION = "/allocation"
CLIENTS = "/clients"
TASKS = "/tasks"
EVAL = "eval"  # dataset inside /tasks/<name>
FINAL_MODEL = "final_model"  # dataset inside /tasks/<name>
CLIENT_TIER = "tier"  # datasets inside /clients
CLIENT_MULTIPLIER = "multiplier"
CLIENT_N_SAMPLES = "n_samples"

EVENT_DTYPE = np.dtype([
    ("request", "<i8"),
    ("task", "<i4"),
    ("client", "<i4"),
    ("worker", "<i4"),
    ("base_version", "<i8"),
    ("version", "<i8"),
    ("staleness", "<i4"),
    ("dispatch_time", "<f8"),
    ("finish_time", "<f8"),
    ("time", "<f8"),
    ("wall", "<f8"),
    ("train_loss", "<f4"),
    ("update_norm", "<f4"),
    ("accepted", "<i1"),
])

EVAL_DTYPE = np.dtype([
    ("time", "<f8"),
    ("wall", "<f8"),
    ("version", "<i8"),
    ("updates", "<i8"),
    ("accuracy", "<f8"),
    ("loss", "<f8"),
])

AGGREGATION_DTYPE = np.dtype([
    ("task", "<i4"),
    ("version", "<i8"),
    ("time", "<f8"),
    ("wall", "<f8"),
    ("n_updates", "<i4"),
    ("max_staleness", "<i4"),
    ("mean_staleness", "<f4"),
])

ALLOCATION_DTYPE = np.dtype([
    ("time", "<f8"),
    ("task", "<i4"),
    ("requests", "<i4"),
    ("buffer_size", "<i4"),
    ("sigma2", "<f8"),
])

# Per-client fields of /clients (stored as separate datasets, see module docstring).
CLIENT_DTYPE = np.dtype([
    ("tier", "<i1"),
    ("multiplier", "<f4"),
])
N_SAMPLES_DTYPE = np.dtype("<i4")
FINAL_MODEL_DTYPE = np.dtype("<f4")
