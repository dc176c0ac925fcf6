"""Task mechanics: each task's model versions, buffer and counters, and the steps every
algorithm uses on them (accept an update, aggregate, evaluate, finish).

These steps decide nothing: they report what happened (staleness, whether an evaluation
reached the target) and the algorithm's policy decides what follows.
"""

from __future__ import annotations

import json
import math
from typing import Callable, Iterator, Sequence

import numpy as np

from fedast_mpi.aggregation import server_step
from fedast_mpi.clock import Busy
from fedast_mpi.errors import Diverged
from fedast_mpi.recorder import Recorder
from fedast_mpi.records import Request, Update, pack_updates, unpack_updates

NAN = math.nan
Evaluate = Callable[[int, np.ndarray], tuple[float, float]]
"""(task, flat model) -> (accuracy, mean loss) on the task's test set."""


class TaskState:
    """A task's server-side state: model versions in use, buffer, allocation, target, counters."""

    def __init__(self, index: int, cfg, model: np.ndarray) -> None:
        self.index = index
        self.cfg = cfg
        self.name: str = cfg.name
        self.model = model
        self.version = 0
        self.versions: dict[int, np.ndarray] = {0: model}
        self.refs: dict[int, int] = {}
        self.buffer: list[Update] = []
        self.staleness: list[int] = []
        self.requests: int = cfg.requests
        self.buffer_size: int = cfg.buffer_size
        self.updates = 0
        self.finished = False
        self.reached_time = NAN
        self.accuracy = NAN

    def hold(self, version: int) -> None:
        """A request trains from `version`: keep it until the request is processed."""
        self.refs[version] = self.refs.get(version, 0) + 1

    def release(self, version: int) -> None:
        """A request no longer needs `version`: forget it unless it is current."""
        n = self.refs[version] - 1
        if n:
            self.refs[version] = n
        else:
            del self.refs[version]
            if version != self.version:
                self.versions.pop(version, None)

    def advance(self, model: np.ndarray) -> None:
        """A new version (after an aggregation); the old one stays while requests hold it."""
        old = self.version
        self.model = model
        self.version += 1
        self.versions[self.version] = model
        if old not in self.refs:
            self.versions.pop(old, None)

    def state_dict(self) -> dict:
        meta, deltas = pack_updates(self.buffer, self.model.size)
        return {"version": self.version,
                "versions": {str(v): m for v, m in self.versions.items()},
                "refs": json.dumps({str(v): n for v, n in self.refs.items()}),
                "buffer": deltas, "buffer_meta": meta,
                "staleness": np.array(self.staleness, np.int64),
                "requests": self.requests, "buffer_size": self.buffer_size,
                "updates": self.updates, "finished": self.finished,
                "reached_time": float(self.reached_time), "accuracy": float(self.accuracy)}

    def load_state_dict(self, state: dict) -> None:
        self.versions = {int(v): np.asarray(m, np.float32) for v, m in state["versions"].items()}
        self.version = int(state["version"])
        self.model = self.versions[self.version]
        self.refs = {int(v): int(n) for v, n in json.loads(state["refs"]).items()}
        self.buffer = unpack_updates(self.index, state["buffer_meta"], state["buffer"])
        self.staleness = [int(x) for x in state["staleness"]]
        self.requests, self.buffer_size = int(state["requests"]), int(state["buffer_size"])
        self.updates = int(state["updates"])
        self.finished = bool(state["finished"])
        self.reached_time, self.accuracy = float(state["reached_time"]), float(state["accuracy"])


class Tasks:
    """Every task of the run, and the mechanics the policies call on them."""

    def __init__(self, cfgs: Sequence, models: Sequence[np.ndarray], recorder: Recorder,
                 evaluate: Evaluate, free: Callable[[Update], None], busy: Busy) -> None:
        self.states = [TaskState(i, c, m) for i, (c, m) in enumerate(zip(cfgs, models))]
        self.recorder = recorder
        self.busy = busy
        self._evaluate = evaluate
        self._free = free
        self.n_processed = 0
        """Updates accepted into a buffer so far (the run's `updates_processed`)."""

    def __iter__(self) -> Iterator[TaskState]:
        return iter(self.states)

    def __getitem__(self, index: int) -> TaskState:
        return self.states[index]

    def __len__(self) -> int:
        return len(self.states)

    def all_finished(self) -> bool:
        return all(t.finished for t in self.states)

    def unfinished(self) -> list[TaskState]:
        return [t for t in self.states if not t.finished]

    def accept(self, req: Request, upd: Update) -> int:
        """Book the update of a processed request into its task's buffer; returns its staleness.

        A non-finite update ends the run as diverged (`Diverged`, naming the request and
        worker).
        """
        t = self.states[req.task]
        if upd.norm is None:
            with np.errstate(over="ignore", invalid="ignore"):  # non-finite: reported below
                norm = float(np.linalg.norm(upd.delta))
        else:
            norm = upd.norm
        if not math.isfinite(norm):
            raise Diverged(f"task {t.name}: non-finite update (request {req.id}, client "
                              f"{req.client}, worker {upd.worker}); lower local_lr?")
        staleness = t.version - req.base_version
        self.recorder.event(req, upd, t.version, accepted=1, norm=norm)
        t.release(req.base_version)
        t.buffer.append(upd)
        t.staleness.append(staleness)
        t.updates += 1
        self.n_processed += 1
        return staleness

    def aggregate(self, t: TaskState, weights: Sequence[float] | None = None) -> bool:
        """x ← x + η_s · mean(w · buffer), a new version, evaluated when due.

        Returns True when that evaluation reached the target.
        """
        deltas = [u.delta for u in t.buffer]
        if weights is not None:
            deltas = [np.float32(w) * d for w, d in zip(weights, deltas)]
        t.advance(self.busy.timed("aggregate", server_step, t.model, deltas, t.cfg.global_lr))
        self.recorder.aggregation(t.index, t.version, t.staleness)
        for u in t.buffer:
            self._free(u)
        t.buffer, t.staleness = [], []
        return t.version % t.cfg.eval_every == 0 and self.evaluate(t)

    def evaluate(self, t: TaskState) -> bool:
        """Evaluate the current model; True when it reaches the target of an unfinished task."""
        acc, loss = self.busy.timed("evaluate", self._evaluate, t.index, t.model)
        if not math.isnan(acc):  # NaN: computed on the workers, result to come (speculation)
            t.accuracy = acc
        self.recorder.eval(t.index, t.version, t.updates, acc, loss)
        target = t.cfg.target_accuracy  # None: no target, the task trains until max_time
        return target is not None and acc >= target and not t.finished

    def finish(self, t: TaskState, now: float) -> None:
        """Target reached at `now`: no version but the current one is needed again, the buffer
        is dropped (its requests were cancelled by the caller)."""
        t.finished = True
        t.reached_time = now
        self.recorder.reached(t.index)
        t.refs.clear()
        t.versions = {t.version: t.model}
        for u in t.buffer:
            self._free(u)
        t.buffer, t.staleness = [], []

    def log_allocation(self, t: TaskState, sigma2: float = NAN) -> None:
        self.recorder.allocation(t.index, t.requests, t.buffer_size, sigma2)

    def log_allocations(self) -> None:
        for t in self.states:
            self.log_allocation(t)
