"""Evaluations off rank 0's critical path in the virtual clock: speculate, roll back when wrong.

A task completes at the time of the evaluation that reaches its target, and everything after
that time depends on whether it did (its requests are cancelled, its budget handed over). An
evaluation on the workers takes a while; waiting for each one would put rank 0 to sleep once
every few updates. Instead rank 0 assumes that an evaluation whose result has not come yet
does *not* reach the target, and goes on. What it does under that assumption is held back until
the assumption is confirmed: cancellations and run-file rows stay on rank 0 (held effects, in
order). Requests go out at once (`eager`), because rank 0 soon needs their updates (a request
with a short delay is due a few dozen updates after it was made): each is retractable until
confirmed. When the result comes:
- not reached (nearly always): the held effects up to the next unconfirmed evaluation go out,
  and the requests sent ahead up to there are confirmed;
- reached: rank 0 rolls back to its last snapshot (a state with nothing unconfirmed), retracts
  the requests it sent ahead (their updates, landed or to come, are dropped: a replay may make
  other requests under the same ids), replays the updates it had consumed since (kept in a
  log, less the retracted ones) with that result known, and goes on from there. Effects
  already released are regenerated identically and skipped.
So every run decides exactly what it would decide waiting for each evaluation; only wall time
changes. Speculation stops (rank 0 waits) when too many evaluations are unconfirmed, before a
checkpoint, and (with `eager` off: requests held back too) when the update it needs next
belongs to a request still held back.

Snapshots are the server's own checkpoint state (`Server.state_dict`), taken at batch
boundaries every `SNAPSHOT_UPDATES` consumed updates; the log holds copies of the deltas
consumed since (so the landing slots go back to the transport as usual). Rank 0 seldom stands
at a confirmed state while it sends ahead (an evaluation is launched every few dozen updates),
so a snapshot is taken as a candidate (`Candidate`) and becomes the snapshot once every
evaluation launched before it is confirmed.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from fedast_mpi.errors import ProtocolError
from fedast_mpi.executor import Layer
from fedast_mpi.records import Update, Work

if TYPE_CHECKING:
    from fedast_mpi.evaluation import WorkerEvaluation
    from fedast_mpi.server import Server

MAX_PENDING = 8
"""Unconfirmed evaluations rank 0 may run ahead of; one more waits for the oldest."""
SNAPSHOT_UPDATES = 500
"""A new snapshot (at a confirmed batch boundary, past the effects of a rollback's replay that
went out already) once this many updates were consumed since."""
LOG_BYTES = 256 << 20
"""Log size at which rank 0 stops speculating until everything is confirmed, and snapshots."""
NAN = math.nan


class Rollback(Exception):
    """An evaluation reached its target after rank 0 had assumed it did not."""


@dataclass
class Launch:
    """One evaluation launched since the snapshot, in launch order."""

    seq: int
    """Position among the effects: those generated before it do not depend on it."""
    eval_id: int
    task: int
    target: float
    result: tuple[float, float] | None = None
    row: list | None = field(default=None, repr=False)
    """The held effect of its /tasks/*/eval row (filled in when the result comes)."""


@dataclass
class Candidate:
    """A batch boundary's state, taken while evaluations launched before it were unconfirmed:
    the snapshot once they all are (and none reached its target)."""

    state: dict = field(repr=False)
    seq: int  # effects generated before it
    launches: int  # evaluations launched before it
    consumed: int  # updates consumed since the snapshot, before it
    live: frozenset  # requests outstanding at it (their logged updates may be replayed)
    next_id: int  # requests made after it have ids from here


class Speculation:
    """The journal between rank 0's parts and the world: held effects, the update log,
    the evaluations in flight, the snapshot."""

    def __init__(self, server: "Server", evaluation: "WorkerEvaluation",
                 eager: bool = True) -> None:
        self.server = server
        self.evaluation = evaluation
        self.eager = eager
        self.executor: Any = None  # the Journal's inner executor (retracts sends ahead)
        self.ahead: dict[int, Any] = {}  # request id -> Request sent ahead, not yet confirmed
        self.sent_ahead = 0  # requests sent before their confirmation
        self.retracted = 0  # of them, taken back at a rollback
        self.active = False
        self.snapshot: dict | None = None
        self.log: dict[int, Update] = {}
        self.log_bytes = 0
        self.consumed = 0  # updates consumed since the snapshot
        self.held: deque[list] = deque()  # [seq, fn, args, request ids]
        self.held_requests: set[int] = set()
        self.placed: dict[int, tuple[int, int]] = {}  # request -> (worker, group) since snapshot
        self.seq = 0  # effects generated since the snapshot (in this timeline)
        self.released = 0  # effects since the snapshot already out (skipped when replayed)
        self.launches: list[Launch] = []
        self.next_launch = 0
        self.awaiting_row: Launch | None = None
        self.latest: dict[int, Launch] = {}  # task -> its latest launch
        self.rollbacks = 0
        self.branch: Launch | None = None  # the launch that reached after all (a rollback's)
        self.candidate: Candidate | None = None
        self.snapshots = 0
        self.waits = 0  # times rank 0 stopped speculating and waited for a result

    # -- effects ---------------------------------------------------------------------------
    def effect(self, fn: Callable, *args: Any, requests: Sequence[int] = (),
               replayed: Callable | None = None) -> list | None:
        """Do fn(*args) now, or hold it until every evaluation launched before is confirmed.

        Replayed after a rollback, an effect that went out already is skipped (`replayed(*args)`
        is called instead, when given)."""
        seq = self.seq
        self.seq += 1
        if seq < self.released:
            if replayed is not None:
                replayed(*args)
            return None
        if not self.active or (not self.held and self._frontier() > seq):
            self.released = seq + 1
            fn(*args)
            return None
        entry = [seq, fn, args, tuple(requests)]
        self.held.append(entry)
        self.held_requests.update(requests)
        return entry

    def _frontier(self) -> int:
        """Effects before this position depend on no unconfirmed evaluation."""
        for launch in self.launches:
            if launch.result is None:
                return launch.seq
        return self.seq

    def release(self) -> None:
        frontier = self._frontier()
        while self.held and self.held[0][0] < frontier:
            seq, fn, args, requests = self.held.popleft()
            self.held_requests.difference_update(requests)
            self.released = seq + 1
            fn(*args)

    # -- evaluations -----------------------------------------------------------------------
    def evaluate(self, task: int, model: np.ndarray) -> tuple[float, float]:
        """The evaluation of `task`'s current model: known, or assumed not to reach the target
        (NaN) while the workers compute it."""
        if not self.active:
            return self.evaluation(task, model)
        index = self.next_launch
        self.next_launch += 1
        if index < len(self.launches):  # replaying: the same evaluation, already launched
            launch = self.launches[index]
            if launch.task != task:
                raise ProtocolError(f"replay diverged: evaluation {index} of task {launch.task} "
                                    f"replayed as task {task}")
        else:
            while sum(la.result is None for la in self.launches) >= MAX_PENDING:
                self.confirm(block=True, count=1)
            target = self.server.tasks[task].cfg.target_accuracy
            target = math.inf if target is None else target  # no target: never reached
            launch = Launch(self.seq, self.evaluation.launch(task, model), task, target)
            self.launches.append(launch)
        self.latest[task] = launch
        self.awaiting_row = launch
        return launch.result if launch.result is not None else (NAN, NAN)

    def eval_row(self, sink_eval: Callable, task: int, row: tuple) -> None:
        """The /tasks/*/eval row of the evaluation just made: held until its result is in."""
        launch, self.awaiting_row = self.awaiting_row, None
        entry = self.effect(self._write_row, sink_eval, task, list(row))
        if launch is not None and launch.result is None and entry is not None:
            launch.row = entry

    @staticmethod
    def _write_row(sink_eval: Callable, task: int, row: list) -> None:
        sink_eval(task, tuple(row))

    def confirm(self, block: bool = False, count: int | None = None) -> None:
        """Take the results that came (or wait for them), oldest first; release what they
        confirm. Raises Rollback at the first one that reached its target."""
        done = 0
        for launch in self.launches:
            if launch.result is not None:
                continue
            if count is not None and done >= count:
                break
            result = (self.evaluation.wait(launch.eval_id) if block
                      else self.evaluation.poll(launch.eval_id))
            if result is None:
                break
            launch.result = result
            done += 1
            acc, loss = result
            if acc >= launch.target:
                self.rollbacks += 1
                self.branch = launch
                raise Rollback(f"evaluation {launch.eval_id} of task {launch.task}")
            if launch.row is not None:
                launch.row[2][2][4:6] = [acc, loss]
            if self.latest.get(launch.task) is launch:
                self.server.tasks[launch.task].accuracy = acc
        self.release()

    def settle(self) -> None:
        """Wait until nothing is unconfirmed (Rollback if something reached its target)."""
        if self.pending():
            self.waits += 1
        self.confirm(block=True)

    def pending(self) -> bool:
        return any(la.result is None for la in self.launches)

    # -- the executor's side -----------------------------------------------------------------
    def submit(self, submit: Callable, group: Sequence[Work]) -> None:
        """Send a group: at once, retractable until confirmed (`eager`), or held until then.
        A group confirmed before a rollback is not sent again; its requests get back the
        worker and group they were sent to."""
        ahead: list[bool] = []

        def send(items: Sequence[Work]) -> None:
            if ahead:  # out already: now confirmed
                for w in items:
                    del self.ahead[w.req.id]
            else:
                submit(items)
            self.placed.update((w.req.id, (w.req.worker, w.req.group)) for w in items)

        def placed(items: Sequence[Work]) -> None:
            for w in items:
                w.req.worker, w.req.group = self.placed[w.req.id]

        ids = [w.req.id for w in group]
        entry = self.effect(send, group, requests=() if self.eager else ids, replayed=placed)
        if entry is not None and self.eager:
            submit(group)
            ahead.append(True)
            self.ahead.update((w.req.id, w.req) for w in group)
            self.sent_ahead += len(group)

    def wait_for(self, inner: Callable[[int], Update], rid: int) -> Update:
        """The update of `rid`: from the log when replaying, else from the executor (a copy
        kept for replays). A request still held back is sent first (speculation stops)."""
        logged = self.log.get(rid)
        if logged is not None:
            return logged
        if rid in self.held_requests:
            self.settle()
        upd = inner(rid)
        if self.active:
            self.consumed += 1
            self.log[rid] = Update(upd.request, upd.task, upd.worker, upd.train_loss,
                                   upd.n_samples, np.array(upd.delta, np.float32), None,
                                   upd.norm)
            self.log_bytes += upd.delta.nbytes
        return upd

    def discard(self, inner: Callable[[int], None], rid: int) -> None:
        # an update consumed in an abandoned timeline was received already: nothing to drop
        self.effect(lambda r: None if r in self.log else inner(r), rid)

    # -- snapshots and rollbacks -------------------------------------------------------------
    def start(self) -> None:
        """After the policy's start (or a resume): the first snapshot; speculation begins."""
        self.take_snapshot()
        self.active = True

    def take_snapshot(self) -> None:
        """The server's state now becomes the point a rollback returns to. Logged updates of
        requests still live are kept: taken in a timeline a rollback abandoned, they are
        consumed again later in this one (from the log: the transport handed them out once)."""
        if self.held or self.pending() or self.ahead:
            raise RuntimeError("snapshot taken with effects held back")
        if self.seq < self.released:
            raise RuntimeError("snapshot taken while replaying effects that went out")
        self.snapshot = self.server.state_dict()
        self.snapshots += 1
        live = self.server.book.live
        self.log = {rid: upd for rid, upd in self.log.items() if rid in live}
        self.log_bytes = sum(upd.delta.nbytes for upd in self.log.values())
        self.consumed = 0
        self.placed.clear()
        self.seq = self.released = self.next_launch = 0
        self.launches = []
        self.latest = {}
        self.candidate = None

    def take_candidate(self) -> None:
        """The state now, to become the snapshot once what came before it is confirmed."""
        book = self.server.book
        self.candidate = Candidate(self.server.state_dict(), self.seq, len(self.launches),
                                   self.consumed, frozenset(book.live), book.next_id)

    def promote(self) -> None:
        """The candidate becomes the snapshot: positions are counted from it, the launches
        before it are dropped (confirmed, none reached), and so are the logged updates and
        placements no replay from it can ask for."""
        cand = self.candidate
        assert cand is not None
        self.candidate = None
        for launch in self.launches[:cand.launches]:  # in launch order: each task's last wins
            assert launch.result is not None
            cand.state["tasks"][launch.task]["accuracy"] = launch.result[0]  # NaN if it was out
        self.snapshot = cand.state
        self.snapshots += 1
        del self.launches[:cand.launches]
        self.next_launch -= cand.launches
        for launch in self.launches:
            launch.seq -= cand.seq
        for entry in self.held:
            entry[0] -= cand.seq
        self.seq -= cand.seq
        self.released -= cand.seq
        self.consumed -= cand.consumed

        def keep(rid: int) -> bool:
            return rid in cand.live or rid >= cand.next_id

        self.log = {rid: upd for rid, upd in self.log.items() if keep(rid)}
        self.log_bytes = sum(upd.delta.nbytes for upd in self.log.values())
        self.placed = {rid: p for rid, p in self.placed.items() if rid >= cand.next_id}

    def after_batch(self) -> None:
        """A batch boundary: confirm what came; snapshot when everything is confirmed and the
        log is long; stop speculating (wait) when the log grows too large."""
        if not self.active:
            return
        self.confirm()
        if self.log_bytes > LOG_BYTES:
            self.settle()
        cand = self.candidate
        if cand is not None and all(la.result is not None
                                    for la in self.launches[:cand.launches]):
            self.promote()
        if (self.candidate is None and self.seq >= self.released
                and self.next_launch == len(self.launches)
                and (self.consumed >= SNAPSHOT_UPDATES or self.log_bytes > LOG_BYTES // 2)):
            if self.pending() or self.held:
                self.take_candidate()
            else:
                self.take_snapshot()

    def rollback(self) -> None:
        """Back to the snapshot: held effects dropped, the server's decisions restored,
        launches after the one that reached forgotten (its result is kept for the replay)."""
        if self.branch is None:
            raise RuntimeError("rollback without an evaluation that reached its target")
        branch = self.launches.index(self.branch)
        for launch in self.launches[branch + 1:]:
            self.evaluation.forget(launch.eval_id)
        self.launches = self.launches[:branch + 1]
        for launch in self.launches:
            launch.row = None
        self.held.clear()
        self.held_requests.clear()
        self.candidate = None
        if self.ahead:  # their ids may name other requests in the replay
            for rid in self.ahead:
                upd = self.log.pop(rid, None)
                if upd is not None:
                    self.log_bytes -= upd.delta.nbytes
            self.executor.retract(list(self.ahead.values()))
            self.retracted += len(self.ahead)
            self.ahead.clear()
        self.seq = self.next_launch = 0
        self.latest = {}
        self.awaiting_row = None
        if self.snapshot is None:
            raise RuntimeError("rollback before the first snapshot")
        self.server.restore_decisions(self.snapshot)


class HeldSink:
    """The run-file sink as the recorder sees it while speculating: rows are effects."""

    def __init__(self, sink, spec: Speculation) -> None:
        self.sink = sink
        self.spec = spec

    def event(self, row: tuple) -> None:
        self.spec.effect(self.sink.event, row)

    def aggregation(self, row: tuple) -> None:
        self.spec.effect(self.sink.aggregation, row)

    def allocation(self, row: tuple) -> None:
        self.spec.effect(self.sink.allocation, row)

    def task_reached(self, task: int, time: float) -> None:
        self.spec.effect(self.sink.task_reached, task, time)

    def eval(self, task: int, row: tuple) -> None:
        self.spec.eval_row(self.sink.eval, task, row)

    def __getattr__(self, name: str):  # header, final models, attributes, flushes: as they are
        return getattr(self.sink, name)


class Journal(Layer):
    """The executor as the server sees it while speculating (an `Executor` over the Grouper):
    sends and cancellations are effects, consumed updates are logged for replays."""

    def __init__(self, inner, spec: Speculation) -> None:
        self.inner = inner
        self.spec = spec
        spec.executor = inner

    def submit(self, group: Sequence[Work]) -> None:
        self.spec.submit(self.inner.submit, group)

    def wait_for(self, rid: int) -> Update:
        return self.spec.wait_for(self.inner.wait_for, rid)

    def discard(self, rid: int) -> None:
        self.spec.discard(self.inner.discard, rid)

    def cancel_task(self, task: int) -> None:
        self.spec.effect(self.inner.cancel_task, task)

    def free(self, upd: Update) -> None:
        self.inner.free(upd)  # replays read the log's copies: a slot can go back at once

    def __getattr__(self, name: str):  # poll, shutdown, and the Grouper's checkpoint calls
        return getattr(self.inner, name)
