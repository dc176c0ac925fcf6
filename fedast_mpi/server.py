"""Rank 0: the FedAST server loop (per-task buffers, aggregation, completion, dispatch).

One loop for both clocks. Virtual: updates are processed strictly in
(finish time, request id) order, all updates with the same finish time before
the replacements they trigger are dispatched (the documented tie-break that
makes "buffer = all outstanding, equal delays" exactly FedAvg). Real: updates
are processed in arrival order, each batch that arrived together before its
replacements are dispatched.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass

import numpy as np

from fedast_mpi import seeding
from fedast_mpi.aggregation import replacement_count, server_step, split_budget
from fedast_mpi.clients import ClientPool, DelayModel, assign_tiers
from fedast_mpi.errors import FedastError

NAN = float("nan")


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
    worker: int = 0
    cancelled: bool = False


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
        self.ratio = cfg.requests / cfg.buffer_size
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

    def advance(self, model: np.ndarray) -> None:
        old = self.version
        self.model = model
        self.version += 1
        self.versions[self.version] = model
        if old not in self.refs:
            self.versions.pop(old, None)


class Server:
    """The FedAST server over an executor (in-process or MPI workers)."""

    def __init__(self, cfg, runner, executor, runlog, progress, wall0: float | None = None):
        self.cfg = cfg
        self.runner = runner
        self.executor = executor
        self.log = runlog
        self.progress = progress
        self.real = cfg.run.clock == "real"
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
        """Train until every task reaches its target or max_time; returns (status, reason)."""
        self.start()
        reason = self.loop_real() if self.real else self.loop_virtual()
        return "completed", reason

    def start(self) -> None:
        """Evaluate version 0, log the allocation, send every task's initial requests."""
        for t in self.tasks:
            self.log_allocation(t)
        for t in self.tasks:
            self.evaluate(t)
        for t in self.tasks:
            if not t.finished:
                for _ in range(t.requests):
                    self.dispatch(t, cap=False)

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
                if req.cancelled:
                    self.record(req, None, accepted=0)
                    continue
                self.process(req, self.executor.wait_for(req.id))
            self.dispatch_pending()
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
            wait = min(0.05, (max_time - self.now) * self.cfg.run.time_scale)
            for upd in self.executor.poll(wait):
                req = outstanding.pop(upd.request)
                self.now = self.sim_now()
                if req.cancelled:
                    self.record(req, upd, accepted=0)
                    self.executor.free(upd)
                else:
                    self.process(req, upd)
            self.dispatch_pending()
            self.tick()

    def tick(self) -> None:
        self.progress.maybe_print(self)
        self.log.maybe_flush()

    # -- one update ----------------------------------------------------------------
    def process(self, req: Request, upd) -> None:
        """Staleness, buffer, aggregation when full, replacements (PAPER.md §1.3)."""
        t = self.tasks[req.task]
        del t.outstanding[req.id]
        self.clients.release(req.client)
        norm = float(np.linalg.norm(upd.delta))
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
        if len(t.buffer) >= t.buffer_size:
            self.aggregate(t)
        if not t.finished:
            unfinished = [u for u in self.tasks if not u.finished]
            k = replacement_count(
                t.requests, len(t.outstanding) + t.reserved,
                sum(u.requests for u in unfinished),
                sum(len(u.outstanding) + u.reserved for u in unfinished))
            t.reserved += k
            self.to_dispatch.extend([t.index] * k)

    def record(self, req: Request, upd, accepted: int, norm: float = NAN) -> None:
        t = self.tasks[req.task]
        self.log.event((req.id, req.task, req.client, req.worker, req.base_version, t.version,
                        t.version - req.base_version, req.dispatch_time, req.finish_time,
                        self.now, self.wall(), NAN if upd is None else upd.train_loss,
                        norm, accepted))

    def aggregate(self, t: TaskState) -> None:
        """x ← x + η_s · mean(buffer), a new version; then evaluate if due."""
        t.advance(server_step(t.model, [u.delta for u in t.buffer], t.cfg.global_lr))
        st = t.staleness
        self.log.aggregation((t.index, t.version, self.now, self.wall(), len(st), max(st),
                              float(np.mean(st))))
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
        self.executor.cancel_task(t.index)
        for u in t.buffer:
            self.executor.free(u)
        t.buffer, t.staleness = [], []
        self.to_dispatch = [m for m in self.to_dispatch if m != t.index]
        t.reserved = 0
        others = [u for u in self.tasks if not u.finished]
        shares = split_budget(t.requests, [u.requests for u in others], self.handover_rng)
        t.requests = 0
        for u, extra in zip(others, shares):
            u.requests += extra
            u.buffer_size = max(1, round(u.requests / u.ratio))
            u.reserved += extra
            self.to_dispatch.extend([u.index] * extra)
        for u in self.tasks:
            self.log_allocation(u)

    def log_allocation(self, t: TaskState) -> None:
        self.log.allocation((self.now, t.index, t.requests, t.buffer_size, NAN))

    # -- dispatch ------------------------------------------------------------------
    def dispatch_pending(self) -> None:
        pending, self.to_dispatch = self.to_dispatch, []
        for m in pending:
            t = self.tasks[m]
            t.reserved -= 1
            if not t.finished:
                self.dispatch(t)

    def dispatch(self, t: TaskState, cap: bool = True) -> None:
        """One request of task t to a uniformly drawn client (dropped if over the cap)."""
        client = int(self.select_rng.integers(self.clients.count))
        if cap and not self.clients.can_accept(client):
            self.n_dropped += 1
            return
        _, finish = self.clients.schedule(client, t.index, self.now)
        rid = self.next_id
        self.next_id += 1
        req = Request(rid, t.index, client, t.version, self.now, finish,
                      seeding.int_seed(self.seed, seeding.REQUEST, rid))
        t.outstanding[rid] = req
        t.hold(t.version)
        if self.real:
            self.outstanding_real[rid] = req
            release = self.wall0 + finish * self.cfg.run.time_scale
            self.executor.submit(req, t.model, release)
        else:
            heapq.heappush(self.heap, (finish, rid, req))
            self.executor.submit(req, t.model)

    # -- the end -------------------------------------------------------------------
    def finish(self) -> None:
        for t in self.tasks:
            self.log.final_model(t.index, t.model)
        wait = self.executor.wait
        self.log.set_attrs(updates_processed=self.n_processed, requests_dispatched=self.next_id,
                           requests_dropped=self.n_dropped, final_time=self.now,
                           wall_seconds=self.wall(), server_wait_seconds=wait.wall,
                           server_wait_cpu_seconds=wait.cpu,
                           server_cpu_seconds=time.process_time() - self.cpu0,
                           compute_seconds=self.executor.compute_seconds)
