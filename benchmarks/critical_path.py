"""What the virtual clock's order allows: a run's own schedule replayed on W ideal workers.

    python -m benchmarks.critical_path RUN_DIR_OR_FILE [--workers 1,2,4,8,16,32,64]
        [--train-ms 72] [--serial-ms 1.2] [--transit-ms 1] [--chunk-ms 0] [--chunks 10]
        [--placement least|soonest] [--json OUT]

A virtual-clock run hands updates over in finish-time order, and a request exists only from
the aggregation that dispatched it: an update due soon after its dispatch must make its whole
round trip (to a worker, its turn in that worker's queue, training, back) while rank 0 handles
the few updates due in between. That bounds the run's speed whatever the implementation.

The run's /events rows (the same for any number of ranks) give every request's dispatch and
finish time. This model replays them on W workers that cost nothing but `train-ms` per
request: rank 0 takes `serial-ms` per update, in finish-time order, waiting for updates not yet
back; the requests a batch dispatches leave after it, each to the worker with the fewest
requests outstanding, `transit-ms` each way; a worker trains the request with the earliest
finish time among those it has (as `fedast_mpi.worker` does). With `--chunk-ms`, each of the
run's evaluations sends `--chunks` chunks that the workers take before their training (rank 0
does not wait for them: speculation); without, evaluations are left out. Nothing else costs
anything, so the figures bound what an implementation can reach. Printed: modelled updates/s,
and the efficiency against W × one worker's rate (1 / train-ms) and against the modelled W = 1.
"""

from __future__ import annotations

import argparse
import heapq
import sys
from bisect import bisect_right
from pathlib import Path

import numpy as np

from benchmarks import emit


def load_schedule(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dispatch, finish) times of a run's requests, in the order rank 0 handles them, and
    the (sorted) times of its evaluations."""
    import h5py
    run = path / "run.h5" if path.is_dir() else path
    with h5py.File(run, "r", locking=False) as f:
        ev = f["events"][:]
        evals = np.sort(np.concatenate([f["tasks"][t]["eval"]["time"][:] for t in f["tasks"]]))
    order = np.lexsort((ev["request"], ev["finish_time"]))
    return ev["dispatch_time"][order], ev["finish_time"][order], evals


class Worker:
    """A worker's queue: requests received (at wall times), trained earliest finish first."""

    def __init__(self) -> None:
        self.inbox: list[tuple[float, float, int]] = []  # (wall sent + transit, finish, i)
        self.next_in = 0
        self.ready: list[tuple[float, int]] = []  # (finish, i) received, not trained
        self.free_at = 0.0
        self.chunks: list[float] = []  # wall times evaluation chunks land (ahead of training)
        self.next_chunk = 0

    def train_until(self, target: int, train: float, done: dict[int, float],
                    chunk: float = 0.0) -> None:
        """Train in EDF order until request `target` is done, evaluation chunks that have
        landed first; completion times into `done`."""
        while target not in done:
            if self.next_chunk < len(self.chunks) and self.chunks[self.next_chunk] <= self.free_at:
                self.next_chunk += 1
                self.free_at += chunk
                continue
            while self.next_in < len(self.inbox) and self.inbox[self.next_in][0] <= self.free_at:
                _, fin, i = self.inbox[self.next_in]
                heapq.heappush(self.ready, (fin, i))
                self.next_in += 1
            if not self.ready:  # idle until the next request or chunk lands
                self.free_at = min([self.inbox[self.next_in][0]] + self.chunks[self.next_chunk:])
                continue
            _, i = heapq.heappop(self.ready)
            self.free_at += train
            done[i] = self.free_at


def model(dispatch: np.ndarray, finish: np.ndarray, workers: int, train: float,
          serial: float, transit: float, placement: str = "least",
          evals: np.ndarray | None = None, chunks: int = 0, chunk: float = 0.0) -> float:
    """Modelled updates per second of the schedule on `workers` ideal workers; `placement`:
    `least` (fewest outstanding, as `fedast_mpi.transport`) or `soonest` (fewest outstanding
    requests due before this one: the worker that would start it first). `evals`: the
    times of the run's evaluations, each `chunks` chunks of `chunk` s sent (after the batch at
    that time) to the workers with the fewest chunks, then fewest requests, outstanding; rank 0
    does not wait for them (speculation)."""
    n = len(finish)
    order_by_dispatch = np.argsort(dispatch, kind="stable")
    sorted_dispatch = dispatch[order_by_dispatch]
    ws = [Worker() for _ in range(workers)]
    owner = np.full(n, -1)
    outstanding = [0] * workers
    done: dict[int, float] = {}
    returned: list[tuple[float, int, float]] = []  # (wall back, worker, finish) not counted
    due: list[set[float]] = [set() for _ in range(workers)]  # finish times outstanding
    sent = 0

    def send_dispatched_by(f: float, now: float) -> None:
        nonlocal sent
        upto = bisect_right(sorted_dispatch, f)
        while returned and returned[0][0] <= now:
            _, k, f_back = heapq.heappop(returned)
            outstanding[k] -= 1
            due[k].discard(f_back)
        for j in order_by_dispatch[sent:upto]:
            if placement == "soonest":
                w = min(range(workers), key=lambda k: (
                    sum(1 for f2 in due[k] if f2 < finish[j]), outstanding[k], k))
            else:
                w = min(range(workers), key=lambda k: (outstanding[k], k))
            due[w].add(float(finish[j]))
            outstanding[w] += 1
            owner[j] = w
            ws[w].inbox.append((now + transit, float(finish[j]), int(j)))
        sent = upto

    eval_times = np.zeros(0) if evals is None or not chunks else evals
    next_eval = 0
    chunk_load = [0] * workers

    def send_evaluations_at(f: float, now: float) -> None:
        nonlocal next_eval
        while next_eval < len(eval_times) and eval_times[next_eval] <= f:
            for _ in range(chunks):
                w = min(range(workers), key=lambda k: (chunk_load[k], outstanding[k], k))
                chunk_load[w] += 1
                ws[w].chunks.append(now + transit)
            next_eval += 1

    now = 0.0
    send_evaluations_at(0.0, 0.0)
    send_dispatched_by(0.0, 0.0)
    for i in range(n):
        w = int(owner[i])
        ws[w].train_until(i, train, done, chunk)
        back = done[i] + transit
        heapq.heappush(returned, (back, w, float(finish[i])))
        now = max(now, back) + serial
        if i + 1 == n or finish[i + 1] != finish[i]:  # the batch ends: its dispatches leave
            send_evaluations_at(float(finish[i]), now)
            send_dispatched_by(float(finish[i]), now)
    return n / now


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.critical_path", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a virtual-clock run directory or run file")
    ap.add_argument("--workers", default="1,2,4,8,16,32,64")
    ap.add_argument("--train-ms", type=float, default=72.0)
    ap.add_argument("--serial-ms", type=float, default=1.2)
    ap.add_argument("--transit-ms", type=float, default=1.0)
    ap.add_argument("--placement", default="least", choices=("least", "soonest"))
    ap.add_argument("--chunk-ms", type=float, default=0.0,
                    help="an evaluation chunk's time (0: evaluations left out)")
    ap.add_argument("--chunks", type=int, default=10, help="chunks per evaluation")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dispatch, finish, evals = load_schedule(Path(args.run))
    if np.any(finish < dispatch):
        raise SystemExit(f"{args.run}: a request finishes before its dispatch")
    train, serial, transit = args.train_ms / 1e3, args.serial_ms / 1e3, args.transit_ms / 1e3
    rows = []
    for w in [int(x) for x in args.workers.split(",")]:
        ups = model(dispatch, finish, w, train, serial, transit, args.placement, evals,
                    args.chunks, args.chunk_ms / 1e3)
        rows.append({"workers": w, "updates_per_second": ups,
                     "efficiency_vs_ideal": ups * train / w})
    one = next((r["updates_per_second"] for r in rows if r["workers"] == 1), None)
    evaluations = (f"{len(evals)} evaluations of {args.chunks} chunks of {args.chunk_ms:g} ms"
                   if args.chunk_ms > 0 else "evaluations left out")
    print(f"{args.run}: {len(finish)} updates; MODEL, not a measurement: {args.train_ms:g} ms "
          f"per request, {args.serial_ms:g} ms of rank 0 per update, {args.transit_ms:g} ms "
          f"each way, {evaluations}, placement {args.placement}", file=sys.stderr)
    for r in rows:
        if one is not None:
            r["efficiency_vs_w1"] = r["updates_per_second"] / (r["workers"] * one)
        print(f"  W={r['workers']:<3} {r['updates_per_second']:7.1f} upd/s  efficiency "
              f"{r['efficiency_vs_ideal']:.2f} of W / train"
              + (f", {r['efficiency_vs_w1']:.2f} of W x modelled W = 1" if one else ""),
              file=sys.stderr)
    emit({"model": True, "run": args.run, "updates": len(finish), "train_ms": args.train_ms,
          "serial_ms": args.serial_ms, "transit_ms": args.transit_ms, "chunk_ms": args.chunk_ms,
          "chunks": args.chunks, "evaluations": len(evals), "placement": args.placement,
          "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
