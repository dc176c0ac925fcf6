"""Where requests run: the Update record, wait accounting, and the in-process executor (-n 1)."""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Update:
    """One received update; `delta` may be a view into a landing slot."""

    request: int
    task: int
    worker: int
    train_loss: float
    n_samples: int
    delta: np.ndarray
    slot: object = None
    norm: float | None = None
    """L2 norm of delta as numpy computes it in float32 (by the worker); None: not known yet."""


class WaitClock:
    """Context manager adding up wall and CPU seconds spent waiting (the no-spin figure)."""

    def __init__(self):
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c
        return False


class InProcessExecutor:
    """Runs requests on the server's own rank (world size 1), same interface as ServerTransport.

    Virtual clock: a request is trained when the server asks for its update.
    Real clock: a request is trained once its release wall time has come.
    """

    def __init__(self, runner):
        self.runner = runner
        self.pending: dict[int, list[tuple]] = {}  # request id -> its group's (req, model)
        self.done: dict[int, Update] = {}  # trained with an earlier member of their group
        self.due: list[tuple[float, int]] = []
        self.wait = WaitClock()
        self.compute_seconds = 0.0

    def submit(self, req, model: np.ndarray, release_wall: float = 0.0) -> None:
        self.submit_group([(req, model, release_wall)])

    def submit_group(self, items: list[tuple]) -> None:
        """(req, model, release_wall) items trained together when the first is needed."""
        members = [(req, model) for req, model, _ in items]
        for req, _, release_wall in items:
            req.worker = 0
            self.pending[req.id] = members
            if release_wall:  # real clock only: `poll` reads (and empties) `due`, `wait_for` never
                heapq.heappush(self.due, (release_wall, req.id))

    def _run(self, rid: int) -> Update:
        if rid in self.done:
            return self.done.pop(rid)
        members = self.pending[rid]
        task = members[0][0].task
        start = time.perf_counter()
        results = self.runner.train_group(task, [(req.client, model, req.seed)
                                                 for req, model in members])
        self.compute_seconds += time.perf_counter() - start
        for (req, _), (delta, loss, n) in zip(members, results):
            if self.pending.pop(req.id, None) is not None:
                self.done[req.id] = Update(req.id, task, 0, loss, n, delta)
        return self.done.pop(rid)

    def wait_for(self, rid: int) -> Update:
        return self._run(rid)

    def poll(self, timeout: float) -> list[Update]:
        while self.due and self.due[0][1] not in self.pending and self.due[0][1] not in self.done:
            heapq.heappop(self.due)
        if not self.due:
            return []
        left = self.due[0][0] - time.time()
        if left > 0:
            with self.wait:
                time.sleep(min(left, timeout))
        out = []
        while self.due and self.due[0][0] <= time.time():
            _, rid = heapq.heappop(self.due)
            if rid in self.pending or rid in self.done:
                out.append(self._run(rid))
        return out

    def discard(self, rid: int) -> None:
        self.pending.pop(rid, None)
        self.done.pop(rid, None)

    def free(self, upd: Update) -> None:
        pass

    def cancel_task(self, task: int) -> None:
        for rid in [r for r, members in self.pending.items() if members[0][0].task == task]:
            del self.pending[rid]
        for rid in [r for r, u in self.done.items() if u.task == task]:
            del self.done[rid]

    def shutdown(self, code: int = 0) -> None:
        self.pending.clear()
        self.done.clear()
