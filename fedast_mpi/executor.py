"""Where requests run: the executor protocol the server drives, wait accounting, and the
in-process executor (`-n 1`).

Three classes implement `Executor`: `InProcessExecutor` (here), `ServerTransport`
(`fedast_mpi.transport`, the MPI workers) and `Grouper` (`fedast_mpi.grouping`, which sits
between the server and one of the other two and forms the training groups).
"""

from __future__ import annotations

import heapq
import time
from typing import Literal, Protocol, Sequence

import numpy as np

from fedast_mpi.records import Request, Update, Work


class WaitClock:
    """Context manager adding up wall and CPU seconds spent waiting (the no-spin figure)."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.wakeups = 0  # sleeps between polls: each costs rank 0 tens of µs of CPU
        self._w = self._c = 0.0

    def __enter__(self) -> "WaitClock":
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> Literal[False]:
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c
        return False


class Executor(Protocol):
    """What the server asks of whatever trains its requests.

    Virtual clock: the server asks for updates by request id (`wait_for`), in its own order;
    real clock: it takes them as they arrive (`poll`). An update's `delta` may live in a
    buffer the executor owns: the server hands it back with `free` once aggregated.
    """

    wait: WaitClock
    """Time the server spent waiting inside the executor."""
    compute_seconds: float
    """Training seconds of the updates delivered so far (measured where they were trained)."""

    def submit(self, group: Sequence[Work]) -> None:
        """Train these requests of one task, as one batch where the executor batches."""

    def wait_for(self, rid: int) -> Update:
        """The update of request `rid` (virtual clock), waiting for it without spinning."""

    def poll(self, timeout: float) -> list[Update]:
        """Updates released so far (real clock), waiting up to `timeout` seconds for one."""

    def discard(self, rid: int) -> None:
        """Request `rid` was cancelled: drop its update if it is (or will be) there."""

    def cancel_task(self, task: int) -> None:
        """The task finished: forget its queued work (its requests were discarded first)."""

    def retract(self, reqs: Sequence[Request]) -> None:
        """Requests sent ahead of a confirmation that a rollback abandoned: drop their updates,
        landed or to come; their ids may be submitted again with other contents."""

    def free(self, upd: Update) -> None:
        """The server is done with an update's delta."""

    def shutdown(self, code: int = 0, timeout: float | None = None) -> None:
        """Stop training; workers exit with `code` (within `timeout` s, where there are
        workers)."""


class Layer:
    """Base of an executor in front of another (`inner`: the Grouper, the speculation's
    Journal): the wait clock and the workers' compute time are the inner one's."""

    inner: Executor

    @property
    def wait(self) -> WaitClock:
        return self.inner.wait

    @property
    def compute_seconds(self) -> float:
        return self.inner.compute_seconds

    @compute_seconds.setter
    def compute_seconds(self, value: float) -> None:
        self.inner.compute_seconds = value


class InProcessExecutor:
    """Runs requests on the server's own rank (world size 1).

    Virtual clock: a request is trained when the server asks for its update.
    Real clock: a request is trained once its release wall time has come.
    """

    def __init__(self, runner) -> None:
        self.runner = runner
        # id -> its group's members
        self.pending: dict[int, list[tuple[Request, np.ndarray]]] = {}
        self.done: dict[int, Update] = {}  # trained with an earlier member of their group
        self.due: list[tuple[float, int]] = []
        self.wait = WaitClock()
        self.compute_seconds = 0.0

    def submit(self, group: Sequence[Work]) -> None:
        members = [(w.req, w.model) for w in group]
        for w in group:
            w.req.worker = 0
            self.pending[w.req.id] = members
            if w.release_wall:  # real clock only: `poll` reads (and empties) `due`
                heapq.heappush(self.due, (w.release_wall, w.req.id))

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

    def retract(self, reqs: Sequence[Request]) -> None:
        for req in reqs:
            self.discard(req.id)

    def cancel_task(self, task: int) -> None:
        for rid in [r for r, members in self.pending.items() if members[0][0].task == task]:
            del self.pending[rid]
        for rid in [r for r, u in self.done.items() if u.task == task]:
            del self.done[rid]

    def shutdown(self, code: int = 0, timeout: float | None = None) -> None:
        self.pending.clear()
        self.done.clear()
