"""What the server records of a run: rows of the run file's tables, built in one place.

The server writes through a `RunSink`: the HDF5 `RunLog` in a run (`fedast_mpi.runlog`),
or a `MemorySink` that keeps the rows in lists (tests, and anything that wants a run's rows
without a file). Row layouts are `fedast_mpi.schema`'s.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from fedast_mpi.clock import Clock
from fedast_mpi.records import Request, Update

NAN = math.nan


class RunSink(Protocol):
    """Where run rows go (the methods of `RunLog` the server uses)."""

    def add_task(self, index: int, name: str, *, dataset: str, model: str, n_params: int,
                 target_accuracy: float, stream_index: int | None = None) -> None: ...
    def write_clients(self, tier: np.ndarray, multiplier: np.ndarray,
                      n_samples: np.ndarray) -> None: ...
    def event(self, row: tuple) -> None: ...
    def eval(self, task: int, row: tuple) -> None: ...
    def aggregation(self, row: tuple) -> None: ...
    def allocation(self, row: tuple) -> None: ...
    def task_reached(self, task: int, time: float) -> None: ...
    def final_model(self, task: int, vec: np.ndarray) -> None: ...
    def set_attrs(self, **attrs: Any) -> None: ...
    def maybe_flush(self) -> None: ...


class MemorySink:
    """A RunSink keeping every row in memory (lists of tuples, as handed in)."""

    def __init__(self) -> None:
        self.tasks: dict[int, dict] = {}
        self.clients: tuple | None = None
        self.events: list[tuple] = []
        self.evals: dict[int, list[tuple]] = {}
        self.aggregations: list[tuple] = []
        self.allocations: list[tuple] = []
        self.reached: dict[int, float] = {}
        self.final_models: dict[int, np.ndarray] = {}
        self.attrs: dict[str, Any] = {}

    def add_task(self, index, name, **attrs) -> None:
        self.tasks[index] = {"name": name, **attrs}
        self.evals[index] = []

    def write_clients(self, tier, multiplier, n_samples) -> None:
        self.clients = (tier, multiplier, n_samples)

    def event(self, row) -> None:
        self.events.append(row)

    def eval(self, task, row) -> None:
        self.evals.setdefault(task, []).append(row)

    def aggregation(self, row) -> None:
        self.aggregations.append(row)

    def allocation(self, row) -> None:
        self.allocations.append(row)

    def task_reached(self, task, time) -> None:
        self.reached[task] = time

    def final_model(self, task, vec) -> None:
        self.final_models[task] = np.array(vec)

    def set_attrs(self, **attrs) -> None:
        self.attrs.update(attrs)

    def maybe_flush(self) -> None:
        pass


class Recorder:
    """Builds the rows of `/events`, `/aggregations`, `/tasks/*/eval` and `/allocation`."""

    def __init__(self, sink: RunSink, clock: Clock) -> None:
        self.sink = sink
        self.clock = clock

    def event(self, req: Request, upd: Update | None, version: int, accepted: int,
              norm: float = NAN) -> None:
        """A request the server is done with: processed (accepted 1) or not (0), at `now`;
        `version` is its task's version then."""
        self.sink.event((req.id, req.task, req.client, req.worker, req.base_version, version,
                         version - req.base_version, req.dispatch_time, req.finish_time,
                         self.clock.now, self.clock.wall(),
                         NAN if upd is None else upd.train_loss, norm, accepted))

    def aggregation(self, task: int, version: int, staleness: list[int]) -> None:
        self.sink.aggregation((task, version, self.clock.now, self.clock.wall(), len(staleness),
                               max(staleness),
                               sum(staleness) / len(staleness)))  # exact int sum, one rounding

    def eval(self, task: int, version: int, updates: int, accuracy: float, loss: float) -> None:
        self.sink.eval(task, (self.clock.now, self.clock.wall(), version, updates, accuracy, loss))

    def allocation(self, task: int, requests: int, buffer_size: int, sigma2: float = NAN) -> None:
        self.sink.allocation((self.clock.now, task, requests, buffer_size, sigma2))

    def reached(self, task: int) -> None:
        self.sink.task_reached(task, self.clock.now)
