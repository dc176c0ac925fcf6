"""The records that travel between the server's parts: a request, its update, and their packing.

A `Request` is created by the request book (`fedast_mpi.book`) with every input of its training
fixed (task, client, base version, seed, finish time). Its other fields have one writer each:
`cancelled` and `rejected` the book, `group` the grouper and `worker` the executor that places
it (`fedast_mpi.grouping`, `fedast_mpi.executor`, `fedast_mpi.transport`).
An `Update` is what came back. Both pack to numpy tables for checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

REQUEST_DTYPE = np.dtype([
    ("id", "<i8"), ("task", "<i4"), ("client", "<i4"), ("base_version", "<i8"),
    ("dispatch_time", "<f8"), ("finish_time", "<f8"), ("seed", "<i8"), ("start_time", "<f8"),
    ("worker", "<i4"), ("cancelled", "?"), ("rejected", "?"), ("group", "<i8"),
])
UPDATE_META_DTYPE = np.dtype([("request", "<i8"), ("worker", "<i4"), ("train_loss", "<f8"),
                              ("n_samples", "<i8")])


@dataclass
class Request:
    """One local-training job; its inputs are fixed when it is scheduled."""

    id: int
    task: int
    client: int
    base_version: int
    dispatch_time: float
    finish_time: float
    seed: int
    start_time: float = 0.0
    worker: int = -1
    """Rank it was sent to (0: trained in-process); -1 while never sent."""
    cancelled: bool = False
    """Its task finished first: its update, if it comes, is recorded and dropped."""
    rejected: bool = False
    """Never trained: beyond first-k in a sync round (its client stays busy)."""
    group: int = -1
    """Id of the group it was sent (and trained) with; -1 while not sent (fedast_mpi.grouping)."""


@dataclass
class Update:
    """One received update; `delta` may be a view into a landing slot."""

    request: int
    task: int
    worker: int
    train_loss: float
    n_samples: int
    delta: np.ndarray
    slot: np.ndarray | None = None
    norm: float | None = None
    """L2 norm of delta as numpy computes it in float32 (by the worker); None: not known yet."""


class Work(NamedTuple):
    """A request handed to an executor: the model version it trains from, and (real clock)
    the wall time before which its update must not be released (0: no hold)."""

    req: Request
    model: np.ndarray
    release_wall: float = 0.0


def pack_requests(reqs: Sequence[Request]) -> np.ndarray:
    """Requests as a REQUEST_DTYPE table, sorted by id."""
    return np.array([(r.id, r.task, r.client, r.base_version, r.dispatch_time, r.finish_time,
                      r.seed, r.start_time, r.worker, r.cancelled, r.rejected, r.group)
                     for r in sorted(reqs, key=lambda q: q.id)], REQUEST_DTYPE)


def unpack_requests(table: np.ndarray) -> list[Request]:
    """The inverse of pack_requests (tables of older checkpoints carry extra columns: ignored)."""
    has_group = "group" in (table.dtype.names or ())
    return [Request(int(r["id"]), int(r["task"]), int(r["client"]), int(r["base_version"]),
                    float(r["dispatch_time"]), float(r["finish_time"]), int(r["seed"]),
                    float(r["start_time"]), int(r["worker"]), bool(r["cancelled"]),
                    bool(r["rejected"]), int(r["group"]) if has_group else -1)
            for r in table]


def pack_updates(ups: Sequence[Update], d: int) -> tuple[np.ndarray, np.ndarray]:
    """Updates as (meta rows, stacked float32 deltas) for a checkpoint; d = model size."""
    meta = np.array([(u.request, u.worker, u.train_loss, u.n_samples) for u in ups],
                    UPDATE_META_DTYPE)
    deltas = (np.stack([np.asarray(u.delta, np.float32) for u in ups]) if ups
              else np.zeros((0, d), np.float32))
    return meta, deltas


def unpack_updates(task: int, meta: np.ndarray, deltas: np.ndarray) -> list[Update]:
    """The inverse of pack_updates (deltas copied: they outlive the checkpoint file)."""
    return [Update(int(m["request"]), task, int(m["worker"]), float(m["train_loss"]),
                   int(m["n_samples"]), np.array(delta, np.float32))
            for m, delta in zip(meta, deltas)]
