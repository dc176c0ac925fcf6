"""Digests of what a run decides: the tables and models of a run file, minus wall-clock columns.

A run's decisions are its `/events` (without `worker` and `wall`), `/aggregations` (without
`wall`), `/allocation`, every task's evaluations (without `wall`) and final models. Each part is
hashed separately (SHA-256 of its little-endian bytes), so a test that compares digests names the
part that moved.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import h5py
import numpy as np

WALL_COLUMNS = ("worker", "wall")


def _hash(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]


def _without(rows: np.ndarray, drop=WALL_COLUMNS) -> np.ndarray:
    names = [n for n in rows.dtype.names if n not in drop]
    out = np.empty(len(rows), np.dtype([(n, rows.dtype[n]) for n in names]))
    for n in names:
        out[n] = rows[n]
    return out


def run_digest(path) -> dict[str, str]:
    """Per-part digests of a run directory or run file."""
    path = Path(path)
    if path.is_dir():
        path = path / "run.h5"
    out = {}
    with h5py.File(path, "r", locking=False) as f:
        out["events"] = _hash(_without(f["events"][()]))
        out["aggregations"] = _hash(_without(f["aggregations"][()]))
        out["allocation"] = _hash(f["allocation"][()])
        for name in sorted(f["tasks"]):
            g = f["tasks"][name]
            out[f"eval/{name}"] = _hash(_without(g["eval"][()]))
            out[f"final_model/{name}"] = _hash(g["final_model"][()])
        out["n_events"] = str(len(f["events"]))
    return out


if __name__ == "__main__":
    print(json.dumps({p: run_digest(p) for p in sys.argv[1:]}, indent=1))
