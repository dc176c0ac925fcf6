"""Ranks >= 1: run the server's requests, earliest finish time first, and send the updates."""

from __future__ import annotations

import heapq
import os
import time
from collections import Counter

import numpy as np

from fedast_mpi import protocol as P
from fedast_mpi.errors import ProtocolError
from fedast_mpi.transport import Backoff, WorkerTransport

FAILURE_GRACE = 60.0
"""Seconds a failed worker waits for rank 0's STOP before it ends the job by itself (rank 0
frozen or gone): rank 0 answers an error within one of its waits, or after a step of its own
(an evaluation, a checkpoint)."""


class Worker:
    """Executes the server's requests: models by (task, version), a queue, held updates.

    Its state is a cache of what the server sent, never a source of truth: nothing of it
    goes into a checkpoint, and after a resume the server sends every live request (and
    its model) again, to whatever workers there are then. Keeps the newest version of each
    task it was sent plus any older version a queued request still needs (the server
    mirrors this rule, so it never sends the same (task, version) twice). Real clock: a
    finished update is held until its release wall time.
    """

    def __init__(self, comm, runner, real_clock: bool):
        self.rank = comm.rank
        self.runner = runner
        self.real = real_clock
        self.transport = WorkerTransport(comm, pinned=runner.device.type == "cuda")
        self.models: dict[int, dict[int, np.ndarray]] = {}
        self.newest: dict[int, int] = {}
        self.needed: Counter = Counter()
        self.queue: list[tuple[float, int, list]] = []  # (finish, first id, group's REQUESTs)
        self.collecting: list = []  # REQUESTs of a group still arriving
        self.held: list[tuple[float, int, int, np.ndarray]] = []
        self.stopping = False
        self.failed = False  # after an error: receive what comes, compute nothing, await STOP
        self.exit_code = 0
        self.trained = 0
        self.fail_after = injected_fault(self.rank)
        self.eval_models: dict[int, list] = {}  # evaluation id -> [model, chunks still to do]
        # test hook: FEDAST_EVAL_DELAY=SECONDS answers every evaluation chunk that much later
        self.eval_delay = float(os.environ.get("FEDAST_EVAL_DELAY", "0") or 0)
        runner.on_step = self.serve_evals  # evaluations go ahead, also mid-training

    def run(self) -> int:
        """Serve requests until the server's STOP; returns the exit code it carried."""
        backoff = Backoff(cap=getattr(self.runner, "idle_poll", 2e-3))
        while True:
            got = self.drain()
            if self.stopping:
                break
            got = self.serve_evals() or got
            sent = self.send_due()
            if self.queue:
                self.train_next()
                backoff.reset()
            elif got or sent:
                backoff.reset()
            else:
                limit = self.held[0][0] - time.time() if self.held else None
                backoff.sleep(limit)
        self.transport.finish(self.rank)
        return self.exit_code

    def after_failure(self, line: str) -> int | None:
        """Our error line to rank 0, then its STOP awaited while everything it sends is still
        received (and nothing computed), so that the job ends in order: one line, printed by
        rank 0, and rank 0's exit code on every rank. None when rank 0 does not answer within
        FAILURE_GRACE s or the transport itself fails: the caller then ends the job."""
        self.failed = True
        self.queue, self.held, self.collecting = [], [], []
        try:
            self.transport.report_error(line)
            deadline = time.monotonic() + FAILURE_GRACE
            backoff = Backoff(cap=0.01)
            while not self.stopping:
                if time.monotonic() > deadline:
                    return None
                if not (self.drain() | self.serve_evals()):
                    backoff.sleep()
            self.transport.finish(self.rank)
        except Exception:  # noqa: BLE001 - the caller ends the job with the first error
            return None
        return self.exit_code

    def drain(self) -> bool:
        """Handle every control message that has arrived."""
        got = False
        while (msg := self.transport.poll_ctrl()) is not None:
            got = True
            kind, task = int(msg["kind"]), int(msg["task"])
            if kind == P.REQUEST:
                version = int(msg["version"])
                if version not in self.models.get(task, {}):
                    raise ProtocolError(f"worker {self.rank}: request "
                                        f"{P.request_of(int(msg['request']))} needs "
                                        f"task {task} version {version}, which it was never sent")
                self.needed[(task, version)] += 1
                self.enqueue(msg)
            elif kind == P.MODEL:
                version = int(msg["version"])
                self.models.setdefault(task, {})[version] = self.runner.resident(
                    self.transport.recv_model(int(msg["n_params"])))
                self.newest[task] = version
                self.evict(task)
            elif kind == P.CANCEL_TASK:
                self.queue = [q for q in self.queue if int(q[2][0]["task"]) != task]
                heapq.heapify(self.queue)
                self.held = [h for h in self.held if h[2] != task]
                heapq.heapify(self.held)
                self.models.pop(task, None)
                self.newest.pop(task, None)
                for key in [k for k in self.needed if k[0] == task]:
                    del self.needed[key]
            elif kind == P.STOP:
                self.stopping = True
                self.exit_code = int(msg["exit_code"])
                return got
            else:
                raise ProtocolError(f"worker {self.rank}: unknown control kind {kind}")
        return got

    def serve_evals(self) -> bool:
        """Evaluate every test chunk the server has asked for so far; True if there was one."""
        served = False
        while (msg := self.transport.poll_eval()) is not None:
            served = True
            eval_id, task = int(msg["eval"]), int(msg["task"])
            if msg["model_follows"]:
                model = self.runner.resident(
                    self.transport.recv_model(int(msg["n_params"]), P.TAG_EVAL_MODEL))
                self.eval_models[eval_id] = [model, int(msg["chunks_here"])]
            entry = self.eval_models.get(eval_id)
            if entry is None:
                raise ProtocolError(f"worker {self.rank}: evaluation {eval_id} chunk "
                                    f"{int(msg['chunk'])} without its model")
            if self.failed:  # received, never answered: rank 0 no longer waits for it
                continue
            start = time.perf_counter()
            if self.eval_delay:
                time.sleep(self.eval_delay)
            correct, loss = self.runner.evaluate_chunk(task, entry[0], int(msg["chunk"]))
            self.transport.send_eval_result(P.record(
                P.EVAL_RESULT_DTYPE, eval=eval_id, correct=correct, loss=loss,
                compute=time.perf_counter() - start, task=task, chunk=int(msg["chunk"]),
                worker=self.rank))
            entry[1] -= 1
            if not entry[1]:
                del self.eval_models[eval_id]
        return served

    def enqueue(self, msg) -> None:
        """Queue a request, or collect it into the group it arrives with (trained as one)."""
        size = max(1, int(msg["group_size"]))
        group = self.collecting
        if group and int(group[0]["task"]) != int(msg["task"]):
            raise ProtocolError(f"worker {self.rank}: group of task {int(group[0]['task'])} "
                                f"interrupted by a request of task {int(msg['task'])}")
        group.append(msg)
        if len(group) < size:
            return
        self.collecting = []
        first = min(group, key=lambda m: (float(m["finish_time"]), int(m["request"])))
        heapq.heappush(self.queue, (float(first["finish_time"]), int(first["request"]), group))

    def evict(self, task: int) -> None:
        versions = self.models.get(task, {})
        for v in [v for v in versions if v != self.newest[task] and not self.needed[(task, v)]]:
            del versions[v]

    def train_next(self) -> None:
        """Train the queued group with the earliest finish time; send (or hold) its updates."""
        if self.fail_after is not None and self.trained >= self.fail_after:
            raise RuntimeError(f"injected fault after {self.trained} requests "
                               f"(FEDAST_INJECT_FAULT)")
        _, _, group = heapq.heappop(self.queue)
        task = int(group[0]["task"])
        n_params = self.runner.n_params[task]
        bufs = [self.transport.message(n_params) for _ in group]
        start = time.perf_counter()
        results = self.runner.train_group(
            task, [(int(m["client"]), self.models[task][int(m["version"])], int(m["seed"]))
                   for m in group], outs=[P.update_payload(b) for b in bufs])
        compute = (time.perf_counter() - start) / len(group)
        for msg, buf, (_, loss, n) in zip(group, bufs, results):
            rid, version = int(msg["request"]), int(msg["version"])
            hdr = P.update_header(buf)
            hdr["request"], hdr["task"], hdr["worker"] = rid, task, self.rank
            hdr["train_loss"], hdr["n_samples"] = loss, n
            with np.errstate(over="ignore", invalid="ignore"):  # rank 0 reports a non-finite
                norm = np.linalg.norm(P.update_payload(buf))  # update itself, in one line
            hdr["compute"], hdr["norm"] = compute, norm
            self.trained += 1
            self.needed[(task, version)] -= 1
            if not self.needed[(task, version)]:
                del self.needed[(task, version)]
            release = float(msg["release_wall"])
            if self.real and release > time.time():
                heapq.heappush(self.held, (release, rid, task, buf))
            else:
                self.transport.send_update(buf, task)
        self.evict(task)

    def send_due(self) -> bool:
        """Real clock: send the held updates whose release time has come."""
        sent = False
        now = time.time()
        while self.held and self.held[0][0] <= now:
            _, _, task, buf = heapq.heappop(self.held)
            self.transport.send_update(buf, task)
            sent = True
        return sent


def injected_fault(rank: int) -> int | None:
    """Test hook: FEDAST_INJECT_FAULT="RANK:N" makes worker RANK raise after N requests."""
    spec = os.environ.get("FEDAST_INJECT_FAULT")
    if not spec:
        return None
    target, after = spec.split(":")
    return int(after) if int(target) == rank else None
