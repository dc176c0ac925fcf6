"""Rank 0: the parts of a run composed, and the glue between them.

The parts, each in its module:
- `Clock` (simulated and wall time), `Recorder` (run-file rows), `ClientPool` (tiers, delay
  streams, FIFO queues, availability);
- `RequestBook` (every live request, from scheduling to retirement);
- `Tasks` (models, versions, buffers: accept, aggregate, evaluate, finish);
- the executor, always behind a `Grouper` (the in-process executor or the MPI transport);
- the algorithm's policy (`fedast_mpi.algorithms`, chosen through `fedast_mpi.registry`);
- the event pump of the clock (`fedast_mpi.pump`).
The path of one update (virtual clock): the pump takes the next request from the book,
gets its update from the executor and hands both to the policy; the policy has the tasks
accept it (buffer, staleness, event row), aggregate when the buffer is full (and evaluate),
complete the task at its target, and reserve replacements, which it sends after the batch
through `send` (book, version hold, executor).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from fedast_mpi import pump, registry, seeding
from fedast_mpi.clients import ClientPool, DelayModel, assign_tiers
from fedast_mpi.evaluation import WorkerEvaluation
from fedast_mpi.clock import Busy, Clock
from fedast_mpi.book import RequestBook
from fedast_mpi.executor import Executor
from fedast_mpi.grouping import Grouper
from fedast_mpi.progress import Progress
from fedast_mpi.recorder import Recorder, RunSink
from fedast_mpi.records import Request, Work, pack_updates, unpack_updates
from fedast_mpi.speculation import HeldSink, Journal, Speculation
from fedast_mpi.tasks import Evaluate, Tasks, TaskState

if TYPE_CHECKING:
    from fedast_mpi.checkpoint import Checkpointer


@dataclass(frozen=True)
class TaskModels:
    """What the server needs of the tasks' models and data, without torch (the runner gives it)."""

    initial: Sequence[np.ndarray]
    """Version 0 of every task's model, flat float32."""
    evaluate: Evaluate
    """(task, model) -> (accuracy, loss) on the task's test set."""
    weight_mask: Callable[[int], np.ndarray]
    """True for a task's non-bias coordinates (Realloc's code variant)."""
    n_samples: np.ndarray
    """Training samples per client and task (clients × tasks), for the run file."""
    group_sizes: Sequence[int]
    """Requests per training group for each task (`fedast_mpi.grouping.group_sizes`)."""


class Server:
    """The server of one run: build it, `run` it, `finish` it.

    `fresh=False` when it is about to be loaded from a checkpoint (the run file has its header).
    """

    def __init__(self, cfg, models: TaskModels, executor: Executor, sink: RunSink,
                 progress: Progress | None = None, wall0: float | None = None,
                 fresh: bool = True, speculate: str = "eager") -> None:
        self.cfg = cfg
        self.spec = registry.get(cfg.algorithm.name)
        self.models = models
        real = cfg.run.clock == "real"
        self.clock = Clock(real, cfg.run.time_scale, wall0)
        self.sink = sink
        self.recorder = Recorder(sink, self.clock)
        self.progress = progress if progress is not None else Progress(0, enabled=False)
        self.group_sizes = list(models.group_sizes)
        # Virtual clock: a request finishing after max_time is never processed, never sent.
        self.executor = Grouper(executor, self.group_sizes,
                                math.inf if real else cfg.run.max_time)
        seed = cfg.run.seed
        tier, mult = assign_tiers(cfg.clients.count, cfg.clients.tiers, seed)
        delays = [DelayModel(t.delay.shift, t.delay.exp_mean, t.delay.local_multi)
                  for t in cfg.tasks]
        self.clients = ClientPool(tier, mult, delays, seed, cfg.clients.available,
                                  [t.streams(m) for m, t in enumerate(cfg.tasks)])
        self.book = RequestBook(seed, self.clients, len(cfg.tasks), real)
        self.speculation: Speculation | None = None
        evaluate = models.evaluate
        if (speculate != "off" and not real and isinstance(evaluate, WorkerEvaluation)
                and all(g <= 1 for g in self.group_sizes)):
            self.speculation = Speculation(self, evaluate, eager=speculate == "eager")
            self.executor = Journal(self.executor, self.speculation)  # type: ignore[assignment]
            self.recorder = Recorder(HeldSink(sink, self.speculation), self.clock)
            evaluate = self.speculation.evaluate
        self.busy = Busy(self.executor.wait)
        self.loop_seconds = 0.0
        self._loop_start: float | None = None
        self.loop_wait: tuple[float, float, int] | None = None
        self.tasks = Tasks(cfg.tasks, models.initial, self.recorder, evaluate,
                           self.executor.free, self.busy)
        # the random streams policies draw from: the same for every algorithm of a seed
        self.select_rng = seeding.generator(seed, seeding.SELECT)
        self.handover_rng = seeding.generator(seed, seeding.HANDOVER)
        self.policy = self.spec.policy_class()(self)
        # set by the launcher: saves state, and stops on a signal
        self.checkpointer: Checkpointer | None = None
        self.resumed = False
        self.final_evals: dict[int, tuple[float, float, int]] = {}
        """Task index -> (accuracy, loss, version) of its final model (`evaluate_final`)."""
        if fresh:
            sink.write_clients(tier, mult, models.n_samples)
            for t in self.tasks:
                sink.add_task(t.index, t.name, dataset=t.cfg.dataset, model=t.cfg.model,
                              n_params=int(t.model.size), stream_index=t.cfg.streams(t.index),
                              target_accuracy=(math.nan if t.cfg.target_accuracy is None
                                               else t.cfg.target_accuracy))

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> tuple[str, str]:
        """Train until every task reaches its target or max_time; returns (status, reason).

        Raises Interrupted after a checkpoint when a signal asked the run to stop.
        """
        self._loop_start = time.perf_counter()
        try:
            if self.resumed:
                self.resubmit()
            else:
                self.policy.start()
            if self.speculation is not None:
                self.speculation.start()
            reason = pump.run_real(self) if self.clock.real else pump.run_virtual(self)
        finally:
            self.loop_seconds = self.looped()
            self._loop_start = None
            wait = self.executor.wait  # the loop's waits (not the final evaluations')
            self.loop_wait = (wait.wall, wait.cpu, wait.wakeups)
        self.evaluate_final()
        return "completed", reason

    def evaluate_final(self) -> None:
        """Every task's final model evaluated while the workers still serve evaluations, for
        the final table and the run file's `final_accuracy`, `final_loss` and `final_version`
        (root attributes, arrays in task order). Nothing goes to /events or the eval tables and
        no state changes: the run's decisions are those of a run without it."""
        self.final_evals = {}
        for t in self.tasks:
            acc, loss = self.models.evaluate(t.index, t.model)
            self.final_evals[t.index] = (float(acc), float(loss), t.version)

    def looped(self) -> float:
        """Wall seconds in the server loop so far (over resumes too)."""
        start = self._loop_start
        return self.loop_seconds + (0.0 if start is None else time.perf_counter() - start)

    def tick(self) -> None:
        """Between batches (a consistent state): progress, flush, checkpoint or stop."""
        self.progress.maybe_print(self)
        self.busy.timed("flush", self.sink.maybe_flush)
        if self.checkpointer is not None:
            self.busy.timed("checkpoint", self.checkpointer.tick, self)

    # -- steps the policies use ------------------------------------------------------------
    def settle(self) -> None:
        """Wait until no evaluation is unconfirmed (speculation; may raise Rollback)."""
        if self.speculation is not None:
            self.speculation.settle()

    def draw_client(self) -> int:
        """A client drawn uniformly (the SELECT stream)."""
        return int(self.select_rng.integers(self.clients.count))

    def send(self, req: Request) -> None:
        """A scheduled request goes to be trained on its base version."""
        t = self.tasks[req.task]
        self.book.add(req)
        t.hold(req.base_version)
        release = self.clock.release_wall(req.finish_time) if self.clock.real else 0.0
        self.busy.timed("send", self.executor.submit,
                        [Work(req, t.versions[req.base_version], release)])

    def retire_task(self, t: TaskState) -> None:
        """t reached its target now: marked, its requests cancelled, the executor told."""
        self.tasks.finish(t, self.clock.now)
        line = self.progress.reached_line(self, t)
        if self.speculation is not None:
            self.speculation.effect(self.progress.emit, line)
        else:
            self.progress.emit(line)
        for req in self.book.cancel_task(t.index):
            if not self.clock.real:
                self.executor.discard(req.id)
        self.executor.cancel_task(t.index)

    def record_unused(self, req: Request) -> None:
        """A cancelled or rejected request at its finish time: recorded with accepted = 0."""
        self.recorder.event(req, None, self.tasks[req.task].version, accepted=0)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The whole server state between batches; workers hold nothing that matters."""
        policy = self.policy.state_dict()
        ready = {} if self.clock.real else self.executor.pull_open()
        wait = self.executor.wait
        return {"now": self.clock.now, "wall": self.clock.wall(), "cpu": self.clock.cpu(),
                "n_processed": self.tasks.n_processed,
                "compute_seconds": self.executor.compute_seconds,
                "wait_wall": wait.wall, "wait_cpu": wait.cpu, "loop_seconds": self.looped(),
                "busy": json.dumps(self.busy.seconds),
                "select_rng": seeding.rng_state(self.select_rng),
                "handover_rng": seeding.rng_state(self.handover_rng),
                "clients": self.clients.state_dict(), **self.book.state_dict(),
                "tasks": [t.state_dict() for t in self.tasks], "ready": {
                    str(t.index): dict(zip(("meta", "deltas"), pack_updates(
                        [u for u in ready.values() if u.task == t.index], t.model.size)))
                    for t in self.tasks}, **policy}

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint; `run()` then resubmits the outstanding requests."""
        self.restore_decisions(state)
        self.clock.restore(float(state["now"]), float(state["wall"]), float(state["cpu"]))
        self.executor.compute_seconds = float(state["compute_seconds"])
        self.executor.wait.wall, self.executor.wait.cpu = state["wait_wall"], state["wait_cpu"]
        if "busy" in state:  # (measurements: older checkpoints lack them)
            self.loop_seconds = float(state["loop_seconds"])
            self.busy.seconds.update(json.loads(state["busy"]))
        if "ready" in state:
            self.executor.preload([u for task, e in state["ready"].items()
                                   for u in unpack_updates(int(task), e["meta"], e["deltas"])])
        self.resumed = True

    def restore_decisions(self, state: dict) -> None:
        """Back to a snapshot's decisions (a speculation's rollback): simulated time, tasks,
        requests, clients, random streams and the policy; measurements go on."""
        self.clock.now = float(state["now"])
        self.tasks.n_processed = int(state["n_processed"])
        seeding.set_rng_state(self.select_rng, state["select_rng"])
        seeding.set_rng_state(self.handover_rng, state["handover_rng"])
        self.clients.load_state_dict(state["clients"])
        self.book.load_state_dict(state)
        for t, ts in zip(self.tasks, state["tasks"]):
            t.load_state_dict(ts)
        self.policy.load_state_dict(state)

    def resubmit(self) -> None:
        """After a resume: the (maybe different) workers get every outstanding request again."""
        real = self.clock.real
        self.executor.resubmit(
            [Work(req, self.tasks[req.task].versions[req.base_version],
                  self.clock.release_wall(req.finish_time) if real else 0.0)
             for reqs in self.book.outstanding for req in reqs.values()], real)

    # -- the end -------------------------------------------------------------------------------
    def finish(self, final_models: bool = True) -> None:
        """Final models (not for an interrupted run: it is not final) and measured figures."""
        for t in self.tasks if final_models else ():
            self.sink.final_model(t.index, t.model)
        if self.final_evals:  # one entry per task, in task order (a completed run)
            final = [self.final_evals[t.index] for t in self.tasks]
            self.sink.set_attrs(final_accuracy=np.array([f[0] for f in final], np.float64),
                                final_loss=np.array([f[1] for f in final], np.float64),
                                final_version=np.array([f[2] for f in final], np.int64))
        wait = self.executor.wait
        wall, cpu, wakeups = self.loop_wait or (wait.wall, wait.cpu, wait.wakeups)
        busy = {f"server_busy_{k}_seconds": v for k, v in self.busy.seconds.items()}
        busy["server_busy_other_seconds"] = (self.loop_seconds - wall
                                             - sum(self.busy.seconds.values()))
        self.sink.set_attrs(**busy)
        if self.speculation is not None:
            spec = self.speculation
            self.sink.set_attrs(speculation_rollbacks=spec.rollbacks,
                                speculation_sent_ahead=spec.sent_ahead,
                                speculation_retracted=spec.retracted,
                                speculation_snapshots=spec.snapshots,
                                speculation_waits=spec.waits)
        self.sink.set_attrs(updates_processed=self.tasks.n_processed,
                            requests_dispatched=self.book.next_id,
                            requests_dropped=self.book.n_dropped, final_time=self.clock.now,
                            wall_seconds=self.clock.wall(), loop_seconds=self.loop_seconds,
                            server_wait_seconds=wall, server_wait_cpu_seconds=cpu,
                            server_wait_wakeups=wakeups,
                            server_cpu_seconds=self.clock.cpu(),
                            compute_seconds=self.executor.compute_seconds,
                            group_sizes=np.array(self.group_sizes, np.int32))
