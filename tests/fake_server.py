"""A server with fake parts, in plain Python: no torch, no MPI, no HDF5.

The real `Server` and policies run over a `FakeExecutor` (an update's delta is drawn from its
request's seed) and a `MemorySink` (rows kept in lists, in one combined order too), with
scripted accuracies. A run of a few hundred updates takes milliseconds, so the rules of FedAST
and Sync can be tested one by one.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np

from fedast_mpi import schema
from fedast_mpi.config import config_from_dict
from fedast_mpi.evaluation import WorkerEvaluation
from fedast_mpi.executor import WaitClock
from fedast_mpi.recorder import MemorySink
from fedast_mpi.records import Request, Update, Work
from fedast_mpi.server import Server, TaskModels

D = 4  # parameters of every fake model


def task(name: str, **over) -> dict:
    """A task config (the dataset and model only pass the config checks: nothing is loaded)."""
    cfg = {"name": name, "dataset": "digits", "model": "logreg", "requests": 4, "buffer_size": 2,
           "target_accuracy": 0.9, "eval_every": 1, "local_lr": 0.1, "global_lr": 1.0,
           "local_steps": 2, "delay": {"shift": 1.0, "exp_mean": 2.0, "local_multi": 1.0}}
    cfg.update(over)
    return cfg


def config(tasks: list[dict], *, algorithm: str = "fedast", clients: int = 30,
           available: int | None = None, max_time: float = 60.0, seed: int = 5, **algo):
    return config_from_dict({
        "run": {"name": "rules", "seed": seed, "max_time": max_time, "device": "cpu",
                "log_every": 0},
        "algorithm": {"name": algorithm, **algo},
        "clients": {"count": clients, "available": available},
        "tasks": copy.deepcopy(tasks)})


def fake_delta(req: Request) -> np.ndarray:
    """The delta the fake executor returns for `req` (drawn from its seed)."""
    return (0.01 * np.random.default_rng(req.seed).standard_normal(D) + 0.01).astype(np.float32)


class FakeExecutor:
    """The executor protocol in plain Python; remembers everything it was given."""

    def __init__(self) -> None:
        self.wait = WaitClock()
        self.compute_seconds = 0.0
        self.submitted: list[Request] = []
        self.pending: dict[int, Work] = {}
        self.discarded: list[int] = []
        self.cancelled: list[int] = []
        self.retracted: list[Request] = []
        self.freed = 0

    def submit(self, group) -> None:
        for work in group:
            work.req.worker = 1
            self.submitted.append(work.req)
            self.pending[work.req.id] = work

    def wait_for(self, rid: int) -> Update:
        req = self.pending.pop(rid).req
        return Update(rid, req.task, 1, float(req.seed % 1000) / 1000, 10, fake_delta(req))

    def poll(self, timeout: float) -> list[Update]:
        return []

    def discard(self, rid: int) -> None:
        self.discarded.append(rid)
        self.pending.pop(rid, None)

    def cancel_task(self, task: int) -> None:
        self.cancelled.append(task)

    def retract(self, reqs) -> None:
        """Requests sent ahead of a confirmation, taken back at a rollback: their updates are
        gone (the same ids may come again as other requests)."""
        for req in reqs:
            self.retracted.append(req)
            self.pending.pop(req.id, None)

    def free(self, upd: Update) -> None:
        self.freed += 1

    def shutdown(self, code: int = 0) -> None:
        pass


class OrderedSink(MemorySink):
    """A MemorySink that also keeps (kind, row) in the order rows were written."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[tuple[str, tuple]] = []

    def event(self, row) -> None:
        super().event(row)
        self.order.append(("event", row))

    def aggregation(self, row) -> None:
        super().aggregation(row)
        self.order.append(("aggregation", row))

    def allocation(self, row) -> None:
        super().allocation(row)
        self.order.append(("allocation", row))


class SlowChunks:
    """The transport's side of evaluations on workers, whose results come `delay` polls late:
    with it the server speculates (fedast_mpi.speculation) and rolls back."""

    def __init__(self, harness: "Harness", delay: int) -> None:
        self.harness = harness
        self.delay = delay
        self.results: dict[int, list] = {}  # eval id -> [polls left, chunk sums]
        self.forgotten: list[int] = []

    def evaluate(self, eval_id, task, model, chunks) -> None:
        acc, loss = self.harness.evaluate(task, model)
        self.results[eval_id] = [self.delay, [(acc, loss)]]  # one chunk, one test sample

    def eval_done(self, eval_id, chunks) -> bool:
        entry = self.results[eval_id]
        entry[0] -= 1
        return entry[0] < 0

    def wait_eval(self, eval_id, chunks):
        return self.results.pop(eval_id)[1]

    def forget_eval(self, eval_id) -> None:
        self.forgotten.append(eval_id)
        self.results.pop(eval_id, None)


class Harness:
    """A built server over fake parts; `accuracy[m](version)` scripts task m's evaluations.

    `eval_delay` (polls) evaluates "on workers" through `SlowChunks`: the server speculates.
    """

    def __init__(self, cfg, accuracy: dict[int, Callable[[int], float]] | None = None,
                 eval_delay: int | None = None) -> None:
        self.cfg = cfg
        self.accuracy = accuracy or {}
        self.sink = OrderedSink()
        self.executor = FakeExecutor()
        m = len(cfg.tasks)
        evaluate: Callable = self.evaluate
        if eval_delay is not None:
            self.chunks = SlowChunks(self, eval_delay)
            evaluate = WorkerEvaluation(self.chunks, [1] * m)
        models = TaskModels(initial=[np.zeros(D, np.float32) for _ in range(m)],
                            evaluate=evaluate,
                            weight_mask=lambda i: np.ones(D, bool),
                            n_samples=np.full((cfg.clients.count, m), 10, np.int32),
                            group_sizes=[1] * m)
        self.server = Server(cfg, models, self.executor, self.sink)
        self.created: list[Request] = []
        new = self.server.book.new

        def record_new(*args, **kw):
            req = new(*args, **kw)
            self.created.append(req)
            return req

        self.server.book.new = record_new  # every request made, sent or not

    def evaluate(self, task: int, model: np.ndarray) -> tuple[float, float]:
        version = next(v for v, m in self.server.tasks[task].versions.items() if m is model)
        return float(self.accuracy.get(task, lambda v: 0.0)(version)), 1.0

    def run(self, after_batch: Callable[[Server], None] | None = None) -> str:
        """Run to the end; `after_batch(server)` is called after every batch."""
        if after_batch is not None:
            policy = self.server.policy
            inner = policy.after_batch

            def hooked():
                inner()
                after_batch(self.server)

            policy.after_batch = hooked
        _, reason = self.server.run()
        self.server.finish()
        return reason

    # -- rows as numpy tables -----------------------------------------------------------------
    @property
    def events(self) -> np.ndarray:
        return np.array(self.sink.events, dtype=schema.EVENT_DTYPE)

    @property
    def aggregations(self) -> np.ndarray:
        return np.array(self.sink.aggregations, dtype=schema.AGGREGATION_DTYPE)

    @property
    def allocation(self) -> np.ndarray:
        return np.array(self.sink.allocations, dtype=schema.ALLOCATION_DTYPE)
