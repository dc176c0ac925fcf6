"""MPI edge: pre-posted landing receives, buffer sends, and waiting without spinning.

Only buffer (uppercase) calls on contiguous numpy arrays: no pickling on the
hot path. Waiting ranks poll with Test*/Iprobe and sleep with a bounded
backoff (MPICH's blocking waits busy-poll a core: MPI-NOTES.md).
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from collections import Counter
from typing import Callable, Sequence

import numpy as np
from mpi4py import MPI

from fedast_mpi import protocol as P
from fedast_mpi.errors import FedastError, ProtocolError
from fedast_mpi.executor import WaitClock
from fedast_mpi.records import Update, Work
from fedast_mpi.watchdog import Awaited, Watchdog


class WorkerFailed(FedastError):
    """A worker reported an error; the message already names its rank and host."""


class Undrained(Exception):
    """Workers did not report their last messages at shutdown (frozen or gone): the job must
    end without MPI's orderly finalisation. The message names them."""


def error_message(line: str) -> np.ndarray:
    """A worker's error line as the fixed-size TAG_ERROR message (cut to fit)."""
    buf = np.zeros(P.ERROR_BYTES, np.uint8)
    raw = line.encode("utf-8")[: P.ERROR_BYTES - 1]
    buf[: len(raw)] = np.frombuffer(raw, np.uint8)
    return buf


def report_failure(comm: MPI.Comm, line: str, grace: float = 10.0) -> None:
    """Worker side, before it has a transport: send our error line to rank 0 and give it
    `grace` s to end the job."""
    buf = error_message(line)
    req = comm.Isend([buf, MPI.BYTE], 0, P.TAG_ERROR)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        req.Test()
        time.sleep(0.01)


class Backoff:
    """Sleep between polls: 50 µs doubling up to 2 ms, reset on progress."""

    def __init__(self, first: float = 50e-6, cap: float = 2e-3):
        self.first, self.cap, self.delay = first, cap, first

    def reset(self) -> None:
        self.delay = self.first

    def sleep(self, limit: float | None = None) -> None:
        delay = self.delay if limit is None else max(0.0, min(self.delay, limit))
        time.sleep(delay)
        self.delay = min(self.cap, self.delay * 2)


def quiet_barrier(comm: MPI.Comm, cap: float = 0.01) -> None:
    """A barrier whose early ranks sleep instead of spinning.

    MPICH's blocking collectives busy-poll: at start-up 64 workers waiting in an allgather
    while rank 0 loads its data took 97 % of the 2 cores and slowed rank 0 thirtyfold. Arriving
    in a nonblocking barrier polled with sleeps first makes the collective after it immediate.
    """
    req, backoff = comm.Ibarrier(), Backoff(cap=cap)
    while not req.Test():
        backoff.sleep()


class ServerTransport:
    """Rank 0's side: dispatch to workers, receive updates into per-task landing slots.

    Each task keeps `posted` receives (ANY_SOURCE, TAG_UPDATE + task) into
    slots of its message size; a landed slot is handed out as an Update whose
    `delta` is a view of the slot, and comes back through `free()` once the
    server has aggregated (or discarded) it. A worker is sent a (task, version)
    model at most once: workers keep their newest version of each task and
    every older version their queued requests still need (the server mirrors
    this with `latest`).
    """

    WAIT_CAP = (0.002, 0.05)
    """Bounds of the longest sleep between polls while waiting for a given update or
    evaluation (virtual clock); within them it is 1/8 of the workers' mean training time per
    request (`_wait_cap`). Each wake-up costs rank 0 40-120 µs of CPU on a loaded machine, while
    the workers train from their queues meanwhile, so noticing an arrival a little late costs
    them nothing: with a fixed 2 ms cap, polling was 3/4 of rank 0's CPU on the Fashion-MNIST
    workload with 2 workers. Where the workers do wait for rank 0 (the end of a synchronous
    round) the delay stays within 1/8 of a request's training time."""

    def __init__(self, comm: MPI.Comm, n_params: list[int], arrival_order: bool,
                 posted: int = 4):
        self.comm = comm
        self.arrival_order = arrival_order
        self.n_params = n_params
        self.workers = list(range(1, comm.size))
        if not self.workers:
            raise ProtocolError("ServerTransport needs at least one worker rank")
        self.load = {w: 0 for w in self.workers}
        self.latest: dict[tuple[int, int], int] = {}
        self.free_slots: list[list[np.ndarray]] = [[] for _ in n_params]
        self.reqs: list[MPI.Request] = []
        self.meta: list[tuple[int, np.ndarray]] = []
        for task in range(len(n_params)):
            for _ in range(posted):
                self._post(task)
        self.final_buf = np.zeros(1, P.FINAL_DTYPE)
        self.final_req = comm.Irecv([self.final_buf, MPI.BYTE], MPI.ANY_SOURCE, P.TAG_FINAL)
        self.final_counts: dict[int, tuple[int, int]] = {}  # worker -> (updates, eval chunks) sent
        self.eval_bufs = [np.zeros(1, P.EVAL_RESULT_DTYPE) for _ in range(posted * 2)]
        self.eval_reqs = [comm.Irecv([b, MPI.BYTE], MPI.ANY_SOURCE, P.TAG_EVAL_RESULT)
                          for b in self.eval_bufs]
        self.eval_sums: dict[int, dict[int, tuple[float, float]]] = {}  # eval -> chunk -> sums
        self.eval_forgotten: set[int] = set()  # evaluations whose chunks are dropped
        self.eval_load = {w: 0 for w in self.workers}  # chunks sent and not yet answered
        self.evals_received: Counter[int] = Counter()
        self.eval_compute_seconds = 0.0  # workers' evaluation time of the chunks received
        self.error_buf = np.zeros(P.ERROR_BYTES, np.uint8)
        self.error_req = comm.Irecv([self.error_buf, MPI.BYTE], MPI.ANY_SOURCE, P.TAG_ERROR)
        self.received: Counter[int] = Counter()
        self.compute_seconds = 0.0  # workers' training time of the updates received
        self.landed: dict[int, Update] = {}
        self.arrivals: list[Update] = []
        self.discarded: set[int] = set()
        self.sends: list[tuple[MPI.Request, object]] = []
        self.model_sends = 0  # (task, version) models sent, for tests and benchmarks
        self.wait = WaitClock()
        self.passes = max(1, min(MAX_PASSES, len(self.workers) // 2))
        """Passes in a row that land nothing before a wake-up ends (`pump`)."""
        # For the watchdog (`fedast_mpi.watchdog`): who owes what, when each worker last spoke.
        self.watchdog: Watchdog | None = None
        self.heard: dict[int, float] = {}  # worker -> monotonic time of its last message
        self.holder: dict[int, int] = {}  # request id -> worker it was sent to, until it lands
        # Retraction (fedast_mpi.speculation): requests go out under `P.wire_id(id, gen)`; the
        # wire ids of retracted requests still in flight are stale when they land.
        self.gen = 0
        self.stale_wires: set[int] = set()
        self.stale = 0  # updates of retracted requests that landed (and were dropped)
        self.release: dict[int, tuple[float, int]] = {}  # real clock: id -> (release wall, task)
        self.chunk_owner: dict[int, dict[int, int]] = {}  # evaluation -> chunk -> worker
        self._next_check = 0.0  # real clock: monotonic time of the next stall check

    # -- receiving ---------------------------------------------------------
    def _slot(self, task: int) -> np.ndarray:
        pool = self.free_slots[task]
        return pool.pop() if pool else P.update_message(self.n_params[task])

    def _post(self, task: int, index: int | None = None) -> None:
        buf = self._slot(task)
        req = self.comm.Irecv([buf, MPI.BYTE], MPI.ANY_SOURCE, P.TAG_UPDATE + task)
        if index is None:
            self.reqs.append(req)
            self.meta.append((task, buf))
        else:
            self.reqs[index] = req
            self.meta[index] = (task, buf)

    def progress(self) -> bool:
        """Complete whatever has arrived; True if anything did.

        One `Testsome` over every posted receive: each MPI test call runs MPICH's progress
        engine once, and under load that pass, not the Python around it, is most of a poll."""
        n_upd, n_eval = len(self.reqs), len(self.eval_reqs)
        done = MPI.Request.Testsome(self.reqs + self.eval_reqs
                                    + [self.final_req, self.error_req]) or []
        if len(self.sends) > 64:
            self._prune_sends()
        if not done:
            return False
        got_error = False
        for i in sorted(done):
            if i < n_upd:
                self._take_update(i)
            elif i < n_upd + n_eval:
                self._take_eval(i - n_upd)
            elif i == n_upd + n_eval:
                rec = self.final_buf[0]
                self.final_counts[int(rec["worker"])] = (int(rec["sent"]), int(rec["evals"]))
                self.final_req = self.comm.Irecv([self.final_buf, MPI.BYTE], MPI.ANY_SOURCE,
                                                 P.TAG_FINAL)
            else:
                got_error = True
        if got_error:
            raise WorkerFailed(bytes(self.error_buf).rstrip(b"\0").decode("utf-8", "replace"))
        return True

    def pump(self, done: Callable[[], bool]) -> bool:
        """Progress until `done()`, or until `self.passes` passes in a row land nothing;
        True if anything landed. The wait loops call it at each wake-up.

        MPICH moves a large message a bounded step per progress call (a copy pipelined through
        shared-memory cells), and rank 0 is where every worker's updates converge: with one
        pass per wake-up they queued in transit (300 ms from a worker's send to landing at 32
        and 64 EMULATED workers, 37 ms at 8, while rank 0 waited for them). A pass per two
        workers (at most MAX_PASSES) landed them in 6 ms and doubled the updates/s at 64;
        with 2 workers it is the one pass of before, so rank 0's CPU per update stays."""
        got, idle = False, 0
        while not done():
            if self.progress():
                got, idle = True, 0
                continue
            idle += 1
            if idle >= self.passes:
                break
        return got

    def _take_update(self, i: int) -> None:
        """Hand out the update landed in receive slot `i` and post that receive again."""
        task, buf = self.meta[i]
        self._post(task, i)
        hdr = P.update_header(buf)[0]
        wire, worker = int(hdr["request"]), int(hdr["worker"])
        rid = P.request_of(wire)
        self.heard[worker] = time.monotonic()
        if int(hdr["task"]) != task:
            raise ProtocolError(f"update of task {int(hdr['task'])} arrived on "
                                f"task {task}'s tag")
        self.received[worker] += 1
        self.load[worker] -= 1
        self.compute_seconds += float(hdr["compute"])
        if wire in self.stale_wires:  # retracted (its id maybe sent again since, as another)
            self.stale_wires.discard(wire)
            self.stale += 1
            self.free_slots[task].append(buf)
            return
        self.holder.pop(rid, None)
        self.release.pop(rid, None)
        if rid in self.discarded:
            self.discarded.discard(rid)
            self.free_slots[task].append(buf)
            return
        upd = Update(rid, task, worker, float(hdr["train_loss"]), int(hdr["n_samples"]),
                     P.update_payload(buf), buf, float(hdr["norm"]))
        if self.arrival_order:
            self.arrivals.append(upd)
        else:
            self.landed[rid] = upd

    def _take_eval(self, i: int) -> None:
        """Record the evaluation chunk landed in result slot `i` and post that receive again."""
        rec = self.eval_bufs[i][0].copy()
        self.eval_reqs[i] = self.comm.Irecv([self.eval_bufs[i], MPI.BYTE], MPI.ANY_SOURCE,
                                            P.TAG_EVAL_RESULT)
        worker = int(rec["worker"])
        self.heard[worker] = time.monotonic()
        self.chunk_owner.get(int(rec["eval"]), {}).pop(int(rec["chunk"]), None)
        self.evals_received[worker] += 1
        self.eval_load[worker] -= 1
        self.eval_compute_seconds += float(rec["compute"])
        if int(rec["eval"]) not in self.eval_forgotten:
            self.eval_sums.setdefault(int(rec["eval"]), {})[int(rec["chunk"])] = (
                float(rec["correct"]), float(rec["loss"]))

    def _prune_sends(self) -> None:
        self.sends = [(r, ref) for r, ref in self.sends if not r.Test()]

    def free(self, upd: Update) -> None:
        """Return an update's slot to its task's pool (updates restored from a checkpoint have
        none)."""
        if upd.slot is not None:
            self.free_slots[upd.task].append(upd.slot)

    def _wait_until(self, done, awaited: Callable[[], list[Awaited]]) -> None:
        """Progress until `done()`, sleeping with a backoff in between (no spinning); the
        watchdog, if any, may end the wait (`Halt`) after a signal or when `awaited()`'s
        workers fall silent."""
        if done():
            return
        self.progress()
        if done():
            return
        cap = self._wait_cap()
        backoff = Backoff(first=max(50e-6, cap / 2), cap=cap)
        since = time.monotonic()
        with self.wait:
            while True:
                # Drain before sleeping: a pass lands at most the posted receives, and
                # workers that trained ahead may have hundreds of updates waiting; the one
                # awaited can be behind all of them (landing 8 per sleep stalled rank 0 for
                # ~1 s at 16 emulated workers). Then a few passes more (`pump`).
                self.pump(done)
                if done():
                    break
                # Other arrivals do not reset the backoff: they say nothing of when the one
                # awaited comes, and each reset cost a new ramp of wake-ups (~60 µs of CPU each).
                backoff.sleep()
                self.wait.wakeups += 1
                if self.watchdog is not None:
                    self.watchdog.check(since, awaited(), self.heard)

    def _wait_cap(self) -> float:
        """The sleep cap of a wait: `WAIT_CAP` bounds around 1/8 of the mean training time."""
        n = sum(self.received.values())
        mean = self.compute_seconds / n if n else 0.0
        low, high = self.WAIT_CAP
        return min(high, max(low, mean / 8))

    def wait_for(self, rid: int) -> Update:
        """The update of request `rid` (virtual clock), waiting without spinning. A request no
        worker holds can never come: a ProtocolError at once, not a wait for the watchdog."""
        if rid not in self.landed and rid not in self.holder:
            raise ProtocolError(f"rank 0 waits for the update of request {rid}, which no worker "
                                f"holds (never sent, or handed out already): an internal error")
        self._wait_until(lambda: rid in self.landed, lambda: [
            Awaited(self.holder.get(rid, -1), f"the update of request {rid}")])
        return self.landed.pop(rid)

    # -- evaluation ------------------------------------------------------------
    def evaluate(self, eval_id: int, task: int, model: np.ndarray, chunks: int) -> None:
        """Send the test chunks of one evaluation to the workers with the fewest chunks (then
        the fewest requests) in hand; each of them gets the model once."""
        by_worker: dict[int, list[int]] = {}
        owner = self.chunk_owner[eval_id] = {}
        for chunk in range(chunks):
            w = min(self.workers, key=lambda k: (self.eval_load[k], self.load[k], k))
            self.eval_load[w] += 1
            by_worker.setdefault(w, []).append(chunk)
            owner[chunk] = w
        for w, mine in by_worker.items():
            for j, chunk in enumerate(mine):
                self._isend(P.record(P.EVAL_DTYPE, eval=eval_id, n_params=model.size, task=task,
                                     chunk=chunk, chunks_here=len(mine), model_follows=j == 0),
                            w, P.TAG_EVAL)
                if j == 0:
                    self._isend(model, w, P.TAG_EVAL_MODEL, MPI.FLOAT)

    def _eval_in(self, eval_id: int, chunks: int) -> bool:
        return len(self.eval_sums.get(eval_id, ())) == chunks

    def eval_done(self, eval_id: int, chunks: int) -> bool:
        """Whether every chunk of an evaluation is in (progresses the receives first)."""
        self.progress()
        return self._eval_in(eval_id, chunks)

    def forget_eval(self, eval_id: int) -> None:
        """Drop an evaluation's chunks, those in and those to come."""
        self.eval_sums.pop(eval_id, None)
        self.chunk_owner.pop(eval_id, None)
        self.eval_forgotten.add(eval_id)

    def wait_eval(self, eval_id: int, chunks: int) -> list[tuple[float, float]]:
        """The sums of every chunk of an evaluation, in chunk order, waiting without spinning."""
        self._wait_until(lambda: self._eval_in(eval_id, chunks), lambda: [
            Awaited(w, f"chunk {c} of evaluation {eval_id}")
            for c, w in self.chunk_owner.get(eval_id, {}).items()])
        self.chunk_owner.pop(eval_id, None)
        sums = self.eval_sums.pop(eval_id)
        return [sums[c] for c in range(chunks)]

    def poll(self, timeout: float) -> list[Update]:
        """Updates that arrived (real clock), in arrival order; waits up to `timeout` s."""
        self.progress()
        if not self.arrivals and timeout > 0:
            backoff = Backoff()
            deadline = time.perf_counter() + timeout
            with self.wait:
                while not self.arrivals:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    if self.pump(lambda: bool(self.arrivals)):
                        backoff.reset()
                    else:
                        backoff.sleep(left)
                        self.wait.wakeups += 1
        if self.watchdog is not None and time.monotonic() >= self._next_check:
            self._check_overdue()
        out, self.arrivals = self.arrivals, []
        return out

    def _check_overdue(self) -> None:
        """Real clock, at most once a second: the watchdog on the request released longest
        ago and not yet in (its worker holds nothing back after its release time)."""
        assert self.watchdog is not None
        mono, wall = time.monotonic(), time.time()
        self._next_check = mono + 1.0
        overdue = [(rel, rid) for rid, (rel, _) in self.release.items() if rel < wall]
        if not overdue:
            self.watchdog.check(mono, [], self.heard)
            return
        rel, rid = min(overdue)
        self.watchdog.check(mono - (wall - rel), [
            Awaited(self.holder.get(rid, -1), f"the update of request {rid}, released "
                                              f"{wall - rel:.0f} s ago")], self.heard)

    def _drain_timeout(self) -> float:
        dog = self.watchdog
        if dog is None:
            return 120.0
        if dog.signal() is not None:
            return dog.grace
        return dog.stall_timeout if dog.stall_timeout > 0 else 120.0

    # -- sending -----------------------------------------------------------
    def _isend(self, buf: np.ndarray, dest: int, tag: int, mpi_type=MPI.BYTE) -> None:
        self.sends.append((self.comm.Isend([buf, mpi_type], dest, tag), buf))

    def submit(self, group: Sequence[Work]) -> None:
        """Send requests of one task to one worker, trained there as a batch.

        The least-loaded worker gets the whole group. Members go in request-id order,
        each preceded by its model version if that worker lacks it: base versions never
        decrease along that order, so the worker's "newest + still needed" rule and
        `latest` agree, and no version is sent twice.
        """
        w = min(self.workers, key=lambda k: (self.load[k], k))
        self.load[w] += len(group)
        for req, model, release_wall in group:
            req.worker = w
            self.holder[req.id] = w
            wire = P.wire_id(req.id, self.gen)
            if self.arrival_order:
                self.release[req.id] = (release_wall, req.task)
            held = self.latest.get((w, req.task))
            if held != req.base_version:
                if held is not None and req.base_version < held:  # the worker may have evicted it
                    raise ProtocolError(f"request {req.id} needs task {req.task} version "
                                        f"{req.base_version}, older than worker {w}'s "
                                        f"newest {held}")
                self._isend(P.ctrl(P.MODEL, task=req.task, version=req.base_version,
                                   n_params=model.size), w, P.TAG_CTRL)
                self._isend(model, w, P.TAG_MODEL, MPI.FLOAT)
                self.latest[(w, req.task)] = req.base_version
                self.model_sends += 1
            self._isend(P.ctrl(P.REQUEST, task=req.task, client=req.client, request=wire,
                               version=req.base_version, seed=req.seed,
                               finish_time=req.finish_time, release_wall=release_wall,
                               group_size=len(group)), w, P.TAG_CTRL)

    def discard(self, rid: int) -> None:
        """Drop the update of a cancelled request (virtual clock) when (if) it lands."""
        upd = self.landed.pop(rid, None)
        if upd is None:
            self.discarded.add(rid)
        else:
            self.free(upd)

    def retract(self, reqs: Sequence) -> None:
        """Take back requests sent ahead of a confirmation that a rollback abandoned
        (fedast_mpi.speculation): landed updates are dropped, those still to land will be (as
        stale), and the ids may be sent again, with other contents, in a new generation.
        Requests sent ahead are retracted at the first rollback after they went out, so each
        was sent in the current generation.

        The models sent with them may not be the versions of those numbers in the new
        timeline: each (worker, task) they went to is sent its model again before its next
        request. Versions before the rollback point are the same in both timelines, so a
        worker's queued confirmed requests never see a changed model.
        """
        for req in reqs:
            if self.holder.pop(req.id, None) is not None:  # in flight
                self.stale_wires.add(P.wire_id(req.id, self.gen))
            upd = self.landed.pop(req.id, None)
            if upd is not None:
                self.free(upd)
            self.latest.pop((req.worker, req.task), None)
        self.gen += 1

    def cancel_task(self, task: int) -> None:
        """Tell every worker to drop the queued requests and models of a finished task."""
        for w in self.workers:
            self._isend(P.ctrl(P.CANCEL_TASK, task=task), w, P.TAG_CTRL)
            self.latest.pop((w, task), None)
        for rid in [r for r, (_, t) in self.release.items() if t == task]:
            del self.release[rid]  # the workers drop them: never awaited again

    def shutdown(self, code: int = 0, timeout: float | None = None) -> None:
        """Stop every worker (it exits with `code`), drain its in-flight updates, cancel
        receives. Raises Undrained, naming the workers, when they do not all report within
        `timeout` s (default: the watchdog's stall timeout, its signal grace after a signal,
        else 120 s)."""
        for w in self.workers:
            self._isend(P.ctrl(P.STOP, exit_code=code), w, P.TAG_CTRL)
        backoff = Backoff()
        deadline = time.monotonic() + (self._drain_timeout() if timeout is None else timeout)
        while True:
            late = [w for w in self.workers
                    if self.final_counts.get(w) != (self.received[w], self.evals_received[w])]
            if not late:
                break
            if time.monotonic() > deadline:
                names = ", ".join(f"rank {w}" + (f" on {self.watchdog.host(w)}"
                                                 if self.watchdog else "") for w in late)
                raise Undrained(f"{names} did not answer the stop message (frozen or gone)")
            if self.progress():
                backoff.reset()
            else:
                backoff.sleep()
        posted = [r for r in self.reqs + self.eval_reqs + [self.final_req, self.error_req]
                  if r != MPI.REQUEST_NULL]  # the error receive, once a worker failed
        for r in posted:
            r.Cancel()
        MPI.Request.Waitall(posted)
        MPI.Request.Waitall([r for r, _ in self.sends])
        self.sends = []


MAX_PASSES = 32
"""Most progress passes in a row that land nothing before a wake-up of rank 0 ends
(`ServerTransport.pump`): 8 to 64 gave the same updates/s at 64 EMULATED workers."""
SPARE_PER_SIZE = 32
"""Most finished update messages a worker keeps per message size for reuse: two groups of the
largest automatic group size (`grouping.AUTO_GPU_SIZE`), so a GPU worker recycles a whole group
while the previous one is still being sent."""
PINNED_BYTES_CAP = 512 << 20
"""Most page-locked bytes a worker's messages may hold, as PyTorch reserves them (`pinned_block`):
its caching host allocator rounds every request up to a power of two and never gives a block back,
so the cap is on the blocks ever reserved, not on those in use. Past it messages are plain
(pageable) memory: a device-to-host copy into them is synchronous, nothing else changes."""


def pinned_block(nbytes: int) -> int:
    """Bytes PyTorch's caching host allocator reserves for a pinned request of `nbytes`: the next
    power of two (its `PowerOf2Ceil`), a block it keeps for later requests of that size class."""
    return 1 << max(0, int(nbytes) - 1).bit_length()


@dataclasses.dataclass
class PoolStats:
    """What a `MessagePool` has done and holds, for tests and measurements."""

    pinned_allocs: int = 0  # page-locked buffers allocated
    plain_allocs: int = 0  # pageable buffers allocated (not pinned, or past the cap)
    reused: int = 0  # takes served from the spare buffers
    dropped: int = 0  # buffers given back while their size's spares were full
    live: int = 0  # buffers alive now (handed out, held, in flight or spare)
    live_bytes: int = 0
    peak_live: int = 0
    peak_live_bytes: int = 0
    peak_spare: int = 0  # most spare buffers at once (all sizes)
    peak_spare_bytes: int = 0
    pinned_reserved_bytes: int = 0  # page-locked bytes PyTorch keeps for our messages (<= cap)


class MessagePool:
    """A worker's message buffers: recycled by size, page-locked within bounds.

    `take(nbytes)` hands out a spare buffer of that size (page-locked ones first) or a new one;
    `give(buf)` takes back a buffer whose send has completed, kept as a spare unless its size
    already has `max_spare` (a page-locked one then replaces a pageable spare). With `pinned`
    (a CUDA worker), new buffers are page-locked while PyTorch's reserved blocks stay within
    `pinned_cap` bytes (`pinned_block` per size class: a block freed back to its cache is reused
    for the same class, so a class grows only past the most of its buffers ever alive at once);
    otherwise, and past the cap, they are plain numpy memory. Buffers the caller drops (a
    cancelled task's held updates, received models once copied to the GPU) are noticed when
    they are freed. `alloc_pinned` stands in for `torch.empty(..., pin_memory=True)` in tests.
    """

    def __init__(self, pinned: bool = False, max_spare: int = SPARE_PER_SIZE,
                 pinned_cap: int = PINNED_BYTES_CAP,
                 alloc_pinned: Callable[[int], np.ndarray] | None = None):
        self.pinned = pinned
        self.max_spare = max_spare
        self.pinned_cap = pinned_cap
        self.alloc_pinned = alloc_pinned or _torch_pinned
        self.spare: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}  # (pinned, plain)
        self.spare_count = 0
        self.spare_bytes = 0
        self.pinned_ids: set[int] = set()  # id() of our page-locked buffers alive now
        self.pinned_live: Counter[int] = Counter()  # block size -> page-locked buffers alive
        self.pinned_reserved: Counter[int] = Counter()  # block size -> most ever alive at once
        self.stats = PoolStats()

    def take(self, nbytes: int) -> np.ndarray:
        """A buffer of `nbytes` uint8 (contents undefined)."""
        pinned, plain = self.spare.get(nbytes, ([], []))
        if pinned or plain:
            self.spare_count -= 1
            self.spare_bytes -= nbytes
            self.stats.reused += 1
            return pinned.pop() if pinned else plain.pop()
        block = pinned_block(nbytes)
        if self.pinned and (self.pinned_live[block] < self.pinned_reserved[block]
                            or self.stats.pinned_reserved_bytes + block <= self.pinned_cap):
            buf = self.alloc_pinned(nbytes)
            self.pinned_ids.add(id(buf))
            self.pinned_live[block] += 1
            if self.pinned_live[block] > self.pinned_reserved[block]:
                self.pinned_reserved[block] += 1
                self.stats.pinned_reserved_bytes += block
            self.stats.pinned_allocs += 1
            weakref.finalize(buf, self._freed, id(buf), nbytes, block).atexit = False
        else:
            buf = np.empty(nbytes, np.uint8)
            self.stats.plain_allocs += 1
            weakref.finalize(buf, self._freed, None, nbytes, 0).atexit = False
        s = self.stats
        s.live += 1
        s.live_bytes += nbytes
        s.peak_live, s.peak_live_bytes = max(s.peak_live, s.live), max(s.peak_live_bytes,
                                                                       s.live_bytes)
        return buf

    def give(self, buf: np.ndarray) -> None:
        """Take back a buffer no send reads any more."""
        pinned, plain = self.spare.setdefault(buf.nbytes, ([], []))
        if id(buf) in self.pinned_ids:
            if len(pinned) + len(plain) >= self.max_spare:
                if not plain:
                    self.stats.dropped += 1
                    return
                plain.pop()  # a page-locked spare is worth more than a pageable one
                self.stats.dropped += 1
                self.spare_count -= 1
                self.spare_bytes -= buf.nbytes
            pinned.append(buf)
        elif len(pinned) + len(plain) < self.max_spare:
            plain.append(buf)
        else:
            self.stats.dropped += 1
            return
        self.spare_count += 1
        self.spare_bytes += buf.nbytes
        s = self.stats
        s.peak_spare, s.peak_spare_bytes = max(s.peak_spare, self.spare_count), max(
            s.peak_spare_bytes, self.spare_bytes)

    def _freed(self, key: int | None, nbytes: int, block: int) -> None:
        self.stats.live -= 1
        self.stats.live_bytes -= nbytes
        if key is not None:
            self.pinned_ids.discard(key)
            self.pinned_live[block] -= 1  # the block stays reserved in PyTorch's cache


def _torch_pinned(nbytes: int) -> np.ndarray:
    import torch
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).numpy()


class WorkerTransport:
    """A worker's side: pre-posted control and evaluation receives, model receives, update and
    evaluation-result sends.

    Update message and received model buffers come from a `MessagePool`; update messages go
    back to it once their send has completed. With `pinned` (a CUDA worker) they are
    page-locked within the pool's bounds, so a delta is copied from the GPU straight into the
    message the MPI send reads.
    """

    def __init__(self, comm: MPI.Comm, pinned: bool = False):
        self.comm = comm
        self.pinned = pinned
        self.pool = MessagePool(pinned)
        self.ctrl_buf = np.zeros(1, P.CTRL_DTYPE)
        self.ctrl_req = comm.Irecv([self.ctrl_buf, MPI.BYTE], 0, P.TAG_CTRL)
        self.sends: list[tuple[MPI.Request, np.ndarray]] = []
        self.sent = 0
        self.eval_buf = np.zeros(1, P.EVAL_DTYPE)
        self.eval_req = comm.Irecv([self.eval_buf, MPI.BYTE], 0, P.TAG_EVAL)
        self.eval_sends: list[tuple[MPI.Request, np.ndarray]] = []
        self.evals_sent = 0
        self.error_sends: list[tuple[MPI.Request, np.ndarray]] = []

    def report_error(self, line: str) -> None:
        """Send our error line to rank 0 (TAG_ERROR); `finish` completes the send."""
        buf = error_message(line)
        self.error_sends.append((self.comm.Isend([buf, MPI.BYTE], 0, P.TAG_ERROR), buf))

    def message(self, n_params: int) -> np.ndarray:
        """An update message buffer for a model of n_params (recycled, or new)."""
        return self.pool.take(P.HEADER_BYTES + 4 * n_params)

    def poll_ctrl(self):
        """The next control header from the server, or None."""
        if not self.ctrl_req.Test():
            return None
        msg = self.ctrl_buf[0].copy()
        self.ctrl_req = self.comm.Irecv([self.ctrl_buf, MPI.BYTE], 0, P.TAG_CTRL)
        return msg

    def poll_eval(self):
        """The next evaluation header from the server, or None (one MPI test: cheap enough
        to ask between training steps)."""
        if not self.eval_req.Test():
            return None
        msg = self.eval_buf[0].copy()
        self.eval_req = self.comm.Irecv([self.eval_buf, MPI.BYTE], 0, P.TAG_EVAL)
        return msg

    def recv_model(self, n_params: int, tag: int = P.TAG_MODEL) -> np.ndarray:
        """The model vector that follows a MODEL (or EVAL) header, sent right after it."""
        arr = self.pool.take(4 * n_params).view(np.float32)
        req = self.comm.Irecv([arr, MPI.FLOAT], 0, tag)
        backoff = Backoff()
        while not req.Test():
            backoff.sleep()
        return arr

    def send_update(self, buf: np.ndarray, task: int) -> None:
        self.sends.append((self.comm.Isend([buf, MPI.BYTE], 0, P.TAG_UPDATE + task), buf))
        self.sent += 1
        if len(self.sends) > 8:
            busy = []
            for r, b in self.sends:
                if r.Test():
                    self.pool.give(b)
                else:
                    busy.append((r, b))
            self.sends = busy

    def send_eval_result(self, msg: np.ndarray) -> None:
        self.eval_sends = [(r, b) for r, b in self.eval_sends if not r.Test()]
        self.eval_sends.append((self.comm.Isend([msg, MPI.BYTE], 0, P.TAG_EVAL_RESULT), msg))
        self.evals_sent += 1

    def finish(self, worker: int) -> None:
        """Report our counts of sent messages and wait (politely) until the server took them."""
        for req in (self.ctrl_req, self.eval_req):
            req.Cancel()
            req.Wait()
        final = P.record(P.FINAL_DTYPE, worker=worker, sent=self.sent, evals=self.evals_sent)
        reqs = [r for r, _ in self.sends + self.eval_sends + self.error_sends]
        reqs.append(self.comm.Isend([final, MPI.BYTE], 0, P.TAG_FINAL))
        backoff = Backoff()
        while not MPI.Request.Testall(reqs):
            backoff.sleep()
