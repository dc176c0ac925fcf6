"""Groups of same-task requests, trained together (fedast_mpi.batched), formed on rank 0.

Which requests share a batch must not depend on the number of ranks: a batched
delta equals the one-at-a-time delta only to float tolerance, and the virtual clock
promises bitwise identical runs for any world size. So groups are formed here, from
the server's own deterministic sequence of calls, and never by a worker's queue:

- virtual clock: a task's new requests wait (unsent) until `size` of them form a
  group, or until the server needs the update of one of them (`wait_for`), which
  sends the group early;
- real clock: every `poll` sends what is pending (requests submitted together form
  a group); nothing there is bitwise anyway.

A group goes to one worker as consecutive REQUEST messages sorted by request id; its
id is its smallest request id. For exact resumes, the members of a group that the
server has partly consumed are pulled in before a checkpoint (`pull_open`) and
stored with it, since retraining them in a smaller group could change their bits.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from fedast_mpi.executor import Executor, Layer
from fedast_mpi.records import Update, Work

AUTO_GPU_SIZE = 16
"""Group size `run.batch_requests: 0` (auto) picks for batchable small models on a GPU."""
AUTO_GPU_MAX_PARAMS = 2_000_000
"""Largest model auto-batched on a GPU: the paper's small models (LeNet-5, CIFAR CNN, MLP)."""


def group_sizes(batch_requests: int, device_type: str, models: list) -> list[int]:
    """Requests per group for each task (1 = one at a time).

    batch_requests >= 1 is used as given for every task. 0 (auto) batches only where
    it pays, as measured by `python -m benchmarks batched`: on a GPU, models that vmap
    handles natively and that are small enough to leave the device idle one at a time;
    on a CPU never (the batched kernels are no faster than a loop there).
    `device_type` is where the requests train: the workers' device (rank 0 itself only
    with -n 1), as the ranks decided together (`fedast_mpi.devices.Decision.train_type`),
    never rank 0's own, which is the CPU when it only aggregates.
    `models` are FlatModels (their module and n_params are read).
    """
    if batch_requests >= 1:
        return [batch_requests] * len(models)
    from fedast_mpi.batched import batchable
    return [AUTO_GPU_SIZE if device_type == "cuda" and fm.n_params <= AUTO_GPU_MAX_PARAMS
            and batchable(fm.module) else 1 for fm in models]


class Grouper(Layer):
    """An `Executor` in front of another: forms the groups, forwards everything else.

    The server always talks to one (with groups of 1 it only forwards, and keeps back
    requests past the horizon); it also keeps what a checkpoint needs of the groups.
    """

    def __init__(self, inner: Executor, sizes: list[int], horizon: float = float("inf")):
        self.inner = inner
        self.sizes = list(sizes)
        self.horizon = horizon
        self.parked: set[int] = set()  # finish after the horizon: never needed, never sent
        self.pending: list[list[Work]] = [[] for _ in self.sizes]
        self.pending_task: dict[int, int] = {}  # request id -> task, for pending requests
        self.group_of: dict[int, int] = {}  # request id -> group id, sent groups of > 1
        self.left: dict[int, set[int]] = {}  # group id -> members not yet consumed
        self.size_of: dict[int, int] = {}  # group id -> members sent
        self.ready: dict[int, Update] = {}  # updates pulled in or restored, not yet consumed

    # -- what the server sees of its executor ------------------------------------------
    def submit(self, group: Sequence[Work]) -> None:
        """Queue each request into its task's pending group (sent at once when groups are off).

        A request finishing after the horizon (the virtual clock's max_time) is kept back:
        the run ends before its update would be processed, so training it is waste.
        """
        for work in group:
            req = work.req
            if req.finish_time > self.horizon:
                self.parked.add(req.id)
                continue
            if self.sizes[req.task] <= 1:  # the common case, on the server's hot path
                req.group = req.id
                self.inner.submit([work])
                continue
            pending = self.pending[req.task]
            pending.append(work)
            self.pending_task[req.id] = req.task
            if len(pending) >= self.sizes[req.task]:
                self.flush(req.task)

    def flush(self, task: int) -> None:
        """Send the task's pending requests as one group."""
        items, self.pending[task] = self.pending[task], []
        for work in items:
            del self.pending_task[work.req.id]
        if items:
            self.send(items)

    def send(self, items: list[Work]) -> None:
        """Hand one group, sorted by request id, to the executor."""
        items = sorted(items, key=lambda w: w.req.id)
        gid = items[0].req.id
        for work in items:
            work.req.group = gid
        if len(items) > 1:
            self.left[gid] = {w.req.id for w in items}
            self.size_of[gid] = len(items)
            self.group_of.update((w.req.id, gid) for w in items)
        self.inner.submit(items)

    def wait_for(self, rid: int) -> Update:
        if rid in self.ready:
            upd = self.ready.pop(rid)
        else:
            task = self.pending_task.get(rid)
            if task is not None:
                self.flush(task)
            upd = self.inner.wait_for(rid)
        self._consumed(rid)
        return upd

    def poll(self, timeout: float) -> list[Update]:
        for task in range(len(self.pending)):
            self.flush(task)
        return self.inner.poll(timeout)

    def discard(self, rid: int) -> None:
        if rid in self.parked:
            self.parked.discard(rid)
        elif self.ready.pop(rid, None) is None:
            task = self.pending_task.pop(rid, None)
            if task is None:
                self.inner.discard(rid)
            else:
                self.pending[task] = [w for w in self.pending[task] if w.req.id != rid]
        self._consumed(rid)

    def retract(self, reqs: Sequence) -> None:
        """Take back requests sent ahead of a confirmation (speculation's rollback; groups
        of 1 only): parked ones are forgotten, the others go to the executor's `retract`."""
        sent = [req for req in reqs if req.id not in self.parked]
        self.parked.difference_update(req.id for req in reqs)
        self.inner.retract(sent)

    def cancel_task(self, task: int) -> None:  # (its requests were discarded one by one)
        for work in self.pending[task]:
            del self.pending_task[work.req.id]
        self.pending[task] = []
        self.inner.cancel_task(task)

    def free(self, upd: Update) -> None:
        self.inner.free(upd)

    def shutdown(self, code: int = 0, timeout: float | None = None) -> None:
        self.inner.shutdown(code, timeout)

    # -- groups and checkpoints ----------------------------------------------------------
    def _consumed(self, rid: int) -> None:
        gid = self.group_of.pop(rid, None)
        if gid is None:
            return
        left = self.left[gid]
        left.discard(rid)
        if not left:
            del self.left[gid], self.size_of[gid]

    def pull_open(self) -> dict[int, Update]:
        """Fetch the unconsumed members of partly consumed groups; returns every ready update.

        Their deltas come from the batch the group was trained in; a resume must not
        train them again in another (smaller) batch. Copies leave the landing slots free.
        """
        for gid in [g for g, left in self.left.items() if len(left) < self.size_of[g]]:
            for rid in sorted(self.left.pop(gid)):
                upd = self.inner.wait_for(rid)
                self.ready[rid] = dataclasses.replace(upd, delta=np.array(upd.delta, np.float32),
                                                      slot=None)
                self.inner.free(upd)
                del self.group_of[rid]
            del self.size_of[gid]
        return self.ready

    def preload(self, updates: list[Update]) -> None:
        """Updates restored from a checkpoint: served by `wait_for` without training."""
        self.ready.update((u.request, u) for u in updates)

    def resubmit(self, live: list[Work], real: bool) -> None:
        """After a resume: every live request not ready goes out again.

        Virtual clock: sent groups are re-formed exactly (same members, same batch);
        requests that were pending wait in their pending group again.
        """
        groups: dict[int, list[Work]] = {}
        for work in sorted(live, key=lambda w: w.req.id):
            req = work.req
            if req.id in self.ready:
                continue
            if real or req.group < 0:
                self.submit([work])
            else:
                groups.setdefault(req.group, []).append(work)
        for gid in sorted(groups):
            self.send(groups[gid])
