"""Rank 0: what every server algorithm shares (event pump, tasks, clients, logging, completion).

One event pump for both clocks. Virtual: updates are processed strictly in
(finish time, request id) order, all updates with the same finish time before
the algorithm reacts to the batch (`after_batch`: FedAST dispatches the
replacements, Sync may close its round) — the documented tie-break that makes
"buffer = all outstanding, equal delays" exactly FedAvg. Real: updates are
processed in arrival order, each batch that arrived together before
`after_batch`. Algorithms (fedast_mpi/algorithms) implement `start`,
`process`, `after_batch` and `on_complete`.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from dataclasses import dataclass

import numpy as np

from fedast_mpi import seeding
from fedast_mpi.h5tree import rng_state, set_rng_state
from fedast_mpi.aggregation import server_step, split_budget
from fedast_mpi.clients import ClientPool, DelayModel, assign_tiers
from fedast_mpi.errors import FedastError
from fedast_mpi.executor import Update
from fedast_mpi.grouping import Grouper, group_sizes

NAN = float("nan")

REQUEST_DTYPE = np.dtype([
    ("id", "<i8"), ("task", "<i4"), ("client", "<i4"), ("base_version", "<i8"),
    ("dispatch_time", "<f8"), ("finish_time", "<f8"), ("seed", "<i8"), ("start_time", "<f8"),
    ("worker", "<i4"), ("cancelled", "?"), ("rejected", "?"),
    ("in_heap", "?"), ("in_phantoms", "?"), ("in_outstanding", "?"), ("group", "<i8"),
])
UPDATE_META_DTYPE = np.dtype([("request", "<i8"), ("worker", "<i4"), ("train_loss", "<f8"),
                              ("n_samples", "<i8")])


class Interrupted(Exception):
    """A signal asked the run to checkpoint and stop; the message names the signal."""


@dataclass
class Request:
    """One dispatched local-training job; its inputs are fixed at dispatch."""

    id: int
    task: int
    client: int
    base_version: int
    dispatch_time: float
    finish_time: float
    seed: int
    start_time: float = 0.0
    worker: int = 0
    cancelled: bool = False
    rejected: bool = False
    """Never computed: beyond first-k in a sync round (its client stays busy)."""
    group: int = -1
    """Id of the group it was sent (and trained) with; -1 while not sent (fedast_mpi.grouping)."""


class TaskState:
    """A task's server-side state: model versions in use, buffer, targets, counters."""

    def __init__(self, index: int, cfg, model: np.ndarray):
        self.index = index
        self.cfg = cfg
        self.name = cfg.name
        self.model = model
        self.version = 0
        self.versions: dict[int, np.ndarray] = {0: model}
        self.refs: dict[int, int] = {}
        self.buffer: list = []
        self.staleness: list[int] = []
        self.requests = cfg.requests
        self.buffer_size = cfg.buffer_size
        self.outstanding: dict[int, Request] = {}
        self.reserved = 0
        self.updates = 0
        self.finished = False
        self.reached_time = NAN
        self.accuracy = NAN

    def hold(self, version: int) -> None:
        self.refs[version] = self.refs.get(version, 0) + 1

    def release(self, version: int) -> None:
        """An outstanding request no longer needs `version`: forget it unless current."""
        n = self.refs[version] - 1
        if n:
            self.refs[version] = n
        else:
            del self.refs[version]
            if version != self.version:
                self.versions.pop(version, None)

    def state_dict(self) -> dict:
        """Everything but the Request objects (the server stores those once, by id)."""
        meta, deltas = pack_updates(self.buffer, self.model.size)
        return {"version": self.version,
                "versions": {str(v): m for v, m in self.versions.items()},
                "refs": json.dumps({str(v): n for v, n in self.refs.items()}),
                "buffer": deltas, "buffer_meta": meta, "staleness": np.array(self.staleness, np.int64),
                "requests": self.requests, "buffer_size": self.buffer_size,
                "outstanding": np.array(sorted(self.outstanding), np.int64),
                "reserved": self.reserved, "updates": self.updates, "finished": self.finished,
                "reached_time": float(self.reached_time), "accuracy": float(self.accuracy)}

    def load_state_dict(self, state: dict, requests: dict[int, "Request"]) -> None:
        self.versions = {int(v): np.asarray(m, np.float32) for v, m in state["versions"].items()}
        self.version = int(state["version"])
        self.model = self.versions[self.version]
        self.refs = {int(v): int(n) for v, n in json.loads(state["refs"]).items()}
        self.buffer = unpack_updates(self.index, state["buffer_meta"], state["buffer"])
        self.staleness = [int(x) for x in state["staleness"]]
        self.requests, self.buffer_size = int(state["requests"]), int(state["buffer_size"])
        self.outstanding = {int(r): requests[int(r)] for r in state["outstanding"]}
        self.reserved, self.updates = int(state["reserved"]), int(state["updates"])
        self.finished = bool(state["finished"])
        self.reached_time, self.accuracy = float(state["reached_time"]), float(state["accuracy"])

    def advance(self, model: np.ndarray) -> None:
        old = self.version
        self.model = model
        self.version += 1
        self.versions[self.version] = model
        if old not in self.refs:
            self.versions.pop(old, None)


class ServerBase:
    """The state and mechanics every server algorithm shares, over an executor."""

    def __init__(self, cfg, runner, executor, runlog, progress, wall0: float | None = None,
                 fresh: bool = True):
        self.cfg = cfg
        self.runner = runner
        self.log = runlog
        self.progress = progress
        self.real = cfg.run.clock == "real"
        self.group_sizes = group_sizes(cfg.run.batch_requests, runner.device.type, runner.models)
        # Virtual clock: a request finishing after max_time is never processed, never sent.
        self.executor = Grouper(executor, self.group_sizes,
                                math.inf if self.real else cfg.run.max_time)
        self.seed = cfg.run.seed
        tier, mult = assign_tiers(cfg.clients.count, cfg.clients.tiers, self.seed)
        delays = [DelayModel(t.delay.shift, t.delay.exp_mean, t.delay.local_multi) for t in cfg.tasks]
        self.clients = ClientPool(tier, mult, delays, self.seed, cfg.clients.available)
        self.tasks = [TaskState(i, t, runner.initial_model(i)) for i, t in enumerate(cfg.tasks)]
        self.select_rng = seeding.generator(self.seed, seeding.SELECT)
        self.handover_rng = seeding.generator(self.seed, seeding.HANDOVER)
        self.heap: list[tuple[float, int, Request]] = []
        self.to_dispatch: list[int] = []
        self.next_id = 0
        self.now = 0.0
        self.n_processed = 0
        self.n_dropped = 0
        self.wall0 = time.time() if wall0 is None else wall0
        self.cpu0 = time.process_time()
        self.outstanding_real: dict[int, Request] = {}
        self.phantoms: list[tuple[float, int, Request]] = []  # real clock: rejected requests
        self.checkpointer = None  # set by the launcher: saves state, and stops on a signal
        self.resumed = False
        if fresh:
            runlog.write_clients(tier, mult, runner.n_samples())
            for t in self.tasks:
                runlog.add_task(t.index, t.name, dataset=t.cfg.dataset, model=t.cfg.model,
                                n_params=int(t.model.size), target_accuracy=t.cfg.target_accuracy)

    # -- time ------------------------------------------------------------------
    def wall(self) -> float:
        return time.time() - self.wall0

    def sim_now(self) -> float:
        """Simulated time of the real clock: wall seconds / time_scale."""
        return self.wall() / self.cfg.run.time_scale

    # -- the loop ----------------------------------------------------------------
    def run(self) -> tuple[str, str]:
        """Train until every task reaches its target or max_time; returns (status, reason).

        Raises Interrupted after a checkpoint when a signal asked the run to stop.
        """
        if self.resumed:
            self.resubmit()
        else:
            self.start()
        reason = self.loop_real() if self.real else self.loop_virtual()
        return "completed", reason

    def loop_virtual(self) -> str:
        max_time = self.cfg.run.max_time
        while True:
            if all(t.finished for t in self.tasks):
                return "all tasks reached their targets"
            if not self.heap:
                return "no outstanding requests"
            finish = self.heap[0][0]
            if finish > max_time:
                self.now = max_time
                return "max_time"
            self.now = finish
            while self.heap and self.heap[0][0] == finish:
                _, _, req = heapq.heappop(self.heap)
                if req.cancelled or req.rejected:
                    self.record_unused(req)
                    continue
                self.process(req, self.executor.wait_for(req.id))
            self.after_batch()
            self.tick()

    def loop_real(self) -> str:
        max_time = self.cfg.run.max_time
        outstanding = self.outstanding_real
        while True:
            if all(t.finished for t in self.tasks):
                return "all tasks reached their targets"
            if not any(t.outstanding for t in self.tasks):
                return "no outstanding requests"
            self.now = self.sim_now()
            if self.now >= max_time:
                self.now = max_time
                return "max_time"
            while self.phantoms and self.phantoms[0][0] <= self.now:
                self.record_unused(heapq.heappop(self.phantoms)[2])
            wait = min(0.05, (max_time - self.now) * self.cfg.run.time_scale)
            for upd in self.executor.poll(wait):
                req = outstanding.pop(upd.request)
                self.now = self.sim_now()
                if req.cancelled:
                    self.record(req, upd, accepted=0)
                    self.executor.free(upd)
                else:
                    self.process(req, upd)
            self.after_batch()
            self.tick()

    def tick(self) -> None:
        """Between batches (a consistent state): progress, flush, checkpoint or stop."""
        self.progress.maybe_print(self)
        self.log.maybe_flush()
        if self.checkpointer is not None:
            self.checkpointer.tick(self)

    # -- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict:
        """The whole server state between batches; workers hold nothing that matters."""
        reqs: dict[int, Request] = {}
        flags: dict[int, set] = {}
        for where, items in (("in_heap", self.heap), ("in_phantoms", self.phantoms),
                             ("in_outstanding", [(0, r, q) for r, q in self.outstanding_real.items()])):
            for _, _, req in items:
                reqs[req.id] = req
                flags.setdefault(req.id, set()).add(where)
        for t in self.tasks:
            for req in t.outstanding.values():
                reqs.setdefault(req.id, req)
                flags.setdefault(req.id, set())
        table = np.array([(r.id, r.task, r.client, r.base_version, r.dispatch_time, r.finish_time,
                           r.seed, r.start_time, r.worker, r.cancelled, r.rejected,
                           "in_heap" in flags[r.id], "in_phantoms" in flags[r.id],
                           "in_outstanding" in flags[r.id], r.group)
                          for r in sorted(reqs.values(), key=lambda q: q.id)], REQUEST_DTYPE)
        if self.to_dispatch:
            raise RuntimeError("checkpoint taken with replacements still to dispatch")
        ready = {} if self.real else self.executor.pull_open()
        wait = self.executor.wait
        return {"now": self.now, "next_id": self.next_id, "n_processed": self.n_processed,
                "n_dropped": self.n_dropped, "wall": self.wall(),
                "cpu": time.process_time() - self.cpu0,
                "compute_seconds": self.executor.compute_seconds,
                "wait_wall": wait.wall, "wait_cpu": wait.cpu,
                "select_rng": rng_state(self.select_rng),
                "handover_rng": rng_state(self.handover_rng),
                "clients": self.clients.state_dict(), "requests": table,
                "tasks": [t.state_dict() for t in self.tasks], "ready": {
                    str(t.index): dict(zip(("meta", "deltas"), pack_updates(
                        [u for u in ready.values() if u.task == t.index], t.model.size)))
                    for t in self.tasks}}

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint; `run()` then resubmits the outstanding requests."""
        self.now, self.next_id = float(state["now"]), int(state["next_id"])
        self.n_processed, self.n_dropped = int(state["n_processed"]), int(state["n_dropped"])
        self.wall0 = time.time() - float(state["wall"])
        if self.real:  # the simulated clock continues where it stopped
            self.wall0 = time.time() - self.now * self.cfg.run.time_scale
        self.cpu0 = time.process_time() - float(state["cpu"])
        self.executor.compute_seconds = float(state["compute_seconds"])
        self.executor.wait.wall, self.executor.wait.cpu = state["wait_wall"], state["wait_cpu"]
        set_rng_state(self.select_rng, state["select_rng"])
        set_rng_state(self.handover_rng, state["handover_rng"])
        self.clients.load_state_dict(state["clients"])
        reqs = {}
        self.heap, self.phantoms, self.outstanding_real = [], [], {}
        for row in state["requests"]:
            req = Request(int(row["id"]), int(row["task"]), int(row["client"]),
                          int(row["base_version"]), float(row["dispatch_time"]),
                          float(row["finish_time"]), int(row["seed"]), float(row["start_time"]),
                          int(row["worker"]), bool(row["cancelled"]), bool(row["rejected"]),
                          int(row["group"]) if "group" in row.dtype.names else -1)
            reqs[req.id] = req
            if row["in_heap"]:
                self.heap.append((req.finish_time, req.id, req))
            if row["in_phantoms"]:
                self.phantoms.append((req.finish_time, req.id, req))
            if row["in_outstanding"]:
                self.outstanding_real[req.id] = req
        heapq.heapify(self.heap)
        heapq.heapify(self.phantoms)
        for t, ts in zip(self.tasks, state["tasks"]):
            t.load_state_dict(ts, reqs)
        if "ready" in state:
            self.executor.preload([u for task, e in state["ready"].items()
                                   for u in unpack_updates(int(task), e["meta"], e["deltas"])])
        self.resumed = True

    def resubmit(self) -> None:
        """After a resume: the (stateless, maybe different) workers get every live request again."""
        scale = self.cfg.run.time_scale
        self.executor.resubmit(
            [(req, self.tasks[req.task].versions[req.base_version],
              self.wall0 + req.finish_time * scale if self.real else 0.0)
             for t in self.tasks for req in t.outstanding.values()], self.real)

    # -- algorithm hooks ------------------------------------------------------------
    def start(self) -> None:
        """Log the allocation, evaluate version 0 (`begin`), send the first requests."""
        raise NotImplementedError

    def begin(self) -> None:
        """The first step of every algorithm: the initial allocation rows."""
        for t in self.tasks:
            self.log_allocation(t)

    def evaluate_initial(self) -> None:
        """Version 0 of every task (a task already at its target completes at time 0)."""
        for t in self.tasks:
            self.evaluate(t)

    def process(self, req: Request, upd) -> None:
        """One received update of a live request."""
        raise NotImplementedError

    def after_batch(self) -> None:
        """Every update with the same time (virtual) or arrival batch (real) was processed."""

    def on_complete(self, t: "TaskState") -> None:
        """Task t reached its target and its requests were cancelled: hand its resources over."""

    # -- shared steps ----------------------------------------------------------------
    def accept(self, req: Request, upd) -> int:
        """Book an update into its task's buffer (logged); returns its staleness."""
        t = self.tasks[req.task]
        del t.outstanding[req.id]
        self.clients.release(req.client)
        norm = float(np.linalg.norm(upd.delta)) if upd.norm is None else upd.norm
        if not math.isfinite(norm):
            raise FedastError(f"task {t.name}: non-finite update (request {req.id}, client "
                              f"{req.client}, worker {upd.worker}); lower local_lr?")
        staleness = t.version - req.base_version
        self.record(req, upd, accepted=1, norm=norm)
        t.release(req.base_version)
        t.buffer.append(upd)
        t.staleness.append(staleness)
        t.updates += 1
        self.n_processed += 1
        return staleness

    def record_unused(self, req: Request) -> None:
        """A cancelled or rejected request at its finish time: logged with accepted = 0."""
        if req.rejected:
            self.clients.release(req.client)
        self.record(req, None, accepted=0)

    def record(self, req: Request, upd, accepted: int, norm: float = NAN) -> None:
        t = self.tasks[req.task]
        self.log.event((req.id, req.task, req.client, req.worker, req.base_version, t.version,
                        t.version - req.base_version, req.dispatch_time, req.finish_time,
                        self.now, self.wall(), NAN if upd is None else upd.train_loss,
                        norm, accepted))

    def aggregate(self, t: TaskState, weights: list[float] | None = None) -> None:
        """x ← x + η_s · mean(w · buffer), a new version; then evaluate if due."""
        deltas = [u.delta for u in t.buffer]
        if weights is not None:
            deltas = [np.float32(w) * d for w, d in zip(weights, deltas)]
        t.advance(server_step(t.model, deltas, t.cfg.global_lr))
        st = t.staleness
        self.log.aggregation((t.index, t.version, self.now, self.wall(), len(st), max(st),
                              sum(st) / len(st)))  # exact int sum, one rounding: = np.mean
        for u in t.buffer:
            self.executor.free(u)
        t.buffer, t.staleness = [], []
        if t.version % t.cfg.eval_every == 0:
            self.evaluate(t)

    def evaluate(self, t: TaskState) -> None:
        acc, loss = self.runner.evaluate(t.index, t.model)
        t.accuracy = acc
        self.log.eval(t.index, (self.now, self.wall(), t.version, t.updates, acc, loss))
        if acc >= t.cfg.target_accuracy and not t.finished:
            self.complete(t)

    def complete(self, t: TaskState) -> None:
        """Target reached: cancel the task's requests, hand its budget to the others (§1.5)."""
        t.finished = True
        t.reached_time = self.now
        self.log.task_reached(t.index, self.now)
        self.progress.reached(self, t)
        for req in t.outstanding.values():
            req.cancelled = True
            self.clients.release(req.client)
            if not self.real:
                self.executor.discard(req.id)
        t.outstanding.clear()
        t.refs.clear()
        t.versions = {t.version: t.model}  # nothing will train on an older version again
        self.executor.cancel_task(t.index)
        for u in t.buffer:
            self.executor.free(u)
        t.buffer, t.staleness = [], []
        self.to_dispatch = [m for m in self.to_dispatch if m != t.index]
        t.reserved = 0
        self.on_complete(t)
        t.requests = 0
        for u in self.tasks:
            self.log_allocation(u)

    def log_allocation(self, t: TaskState, sigma2: float = NAN) -> None:
        self.log.allocation((self.now, t.index, t.requests, t.buffer_size, sigma2))

    def handover_shares(self, t: TaskState) -> list[tuple["TaskState", int]]:
        """t's request budget split over the unfinished tasks ∝ their R (PAPER.md §1.5)."""
        others = [u for u in self.tasks if not u.finished]
        shares = split_budget(t.requests, [u.requests for u in others], self.handover_rng)
        return list(zip(others, shares))

    # -- requests -------------------------------------------------------------------
    def draw_client(self) -> int:
        return int(self.select_rng.integers(self.clients.count))

    def schedule(self, t: TaskState, client: int) -> Request:
        """A request of task t on `client` at `now`: queued on the client, not yet sent."""
        start, finish = self.clients.schedule(client, t.index, self.now)
        rid = self.next_id
        self.next_id += 1
        return Request(rid, t.index, client, t.version, self.now, finish,
                       seeding.int_seed(self.seed, seeding.REQUEST, rid), start_time=start)

    def submit(self, req: Request) -> None:
        """Send a scheduled request to be trained on the task's current model."""
        t = self.tasks[req.task]
        t.outstanding[req.id] = req
        t.hold(req.base_version)
        if self.real:
            self.outstanding_real[req.id] = req
            release = self.wall0 + req.finish_time * self.cfg.run.time_scale
            self.executor.submit(req, t.versions[req.base_version], release)
        else:
            heapq.heappush(self.heap, (req.finish_time, req.id, req))
            self.executor.submit(req, t.versions[req.base_version])

    def reject(self, req: Request) -> None:
        """A scheduled request that is never trained (beyond first-k): logged at its finish time."""
        req.rejected = True
        req.worker = -1  # never trained anywhere (its /events row says worker -1)
        heapq.heappush(self.phantoms if self.real else self.heap, (req.finish_time, req.id, req))

    # -- the end -------------------------------------------------------------------
    def finish(self, final_models: bool = True) -> None:
        """Final models (not for an interrupted run: it is not final) and measured figures."""
        for t in self.tasks if final_models else ():
            self.log.final_model(t.index, t.model)
        wait = self.executor.wait
        self.log.set_attrs(updates_processed=self.n_processed, requests_dispatched=self.next_id,
                           requests_dropped=self.n_dropped, final_time=self.now,
                           wall_seconds=self.wall(), server_wait_seconds=wait.wall,
                           server_wait_cpu_seconds=wait.cpu,
                           server_cpu_seconds=time.process_time() - self.cpu0,
                           compute_seconds=self.executor.compute_seconds,
                           group_sizes=np.array(self.group_sizes, np.int32))


def pack_updates(ups: list[Update], d: int) -> tuple[np.ndarray, np.ndarray]:
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
