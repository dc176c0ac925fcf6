"""Does this MPI deliver every message to pre-posted MPI_ANY_SOURCE receives across nodes?

fedast-mpi's rank 0 keeps nonblocking receives posted with MPI_ANY_SOURCE (updates, evaluation
results) and re-posts each as it completes. This reproduces that pattern without fedast-mpi:
rank 0 posts 4 such receives per tag for 3 tags (message sizes of the default job's updates);
every other rank sends N messages with Isend. It exits 0 when all arrive, 3 when none arrives
for 20 s (some were lost), and prints which (source, tag) streams stopped.

    $FEDAST_LAUNCH python slurm/check-anysource.py [N] [any|source]

`source` posts the receives per source instead (the comparison). Measured with the MPICH wheel
from PyPI (5.0.2, ch4:ucx) on 2 nodes x 2 ranks: ~2,000 of 9,000 small messages from the other
node never complete with `any`; all arrive with `source`, with UCX_RNDV_THRESH=0, and with
MPIR_CVAR_CH4_NETMOD=ofi (what slurm/env.sh then sets).
"""

import sys
import time

import numpy as np
from mpi4py import MPI

SIZES = {0: 2632, 1: 54856, 2: 9160}  # bytes per tag (small ones go eager)
POSTED = 4
STALL = 20.0


def serve(comm: MPI.Comm, n: int, mode: str) -> int:
    reqs: list[MPI.Request] = []
    meta: list[tuple[int, int, np.ndarray]] = []

    def post(tag: int, src: int, i: int | None = None) -> None:
        buf = np.zeros(SIZES[tag], np.uint8)
        req = comm.Irecv([buf, MPI.BYTE], src, 100 + tag)
        if i is None:
            reqs.append(req)
            meta.append((tag, src, buf))
        else:
            reqs[i], meta[i] = req, (tag, src, buf)

    for tag in SIZES:
        for src in ([MPI.ANY_SOURCE] if mode == "any" else range(1, comm.size)):
            for _ in range(POSTED):
                post(tag, src)
    got = {(w, t): 0 for w in range(1, comm.size) for t in SIZES}
    sent = {(w, t): 0 for w in range(1, comm.size) for t in SIZES}
    for w in range(1, comm.size):  # how many of each tag every sender sends
        for t, count in enumerate(np.bincount(np.random.default_rng(w).integers(3, size=n),
                                              minlength=3)):
            sent[(w, t)] = int(count)
    total, want, last = 0, (comm.size - 1) * n, time.monotonic()
    while total < want:
        done = MPI.Request.Testsome(reqs) or []
        for i in done:
            tag, src, buf = meta[i]
            got[(int(buf[:4].view(np.int32)[0]), tag)] += 1
            post(tag, src, i)
            total += 1
            last = time.monotonic()
        if not done:
            if time.monotonic() - last > STALL:
                lost = {k: sent[k] - got[k] for k in got if got[k] != sent[k]}
                print(f"check-anysource: LOST {want - total} of {want} messages ({mode} "
                      f"receives); (source, tag): missing = {lost}", flush=True)
                return 3
            time.sleep(0.0005)
    print(f"check-anysource: all {total} messages arrived ({mode} receives, "
          f"{comm.size - 1} senders)", flush=True)
    for req in reqs:  # the receives still posted
        req.Cancel()
    MPI.Request.Waitall(reqs)
    return 0


def send(comm: MPI.Comm, n: int) -> None:
    rng = np.random.default_rng(comm.rank)
    tags = rng.integers(3, size=n)
    pause = np.random.default_rng(comm.rank + 1000)
    sends = []
    for k, tag in enumerate(tags):
        buf = np.zeros(SIZES[int(tag)], np.uint8)
        buf[:4].view(np.int32)[0] = comm.rank
        sends.append((comm.Isend([buf, MPI.BYTE], 0, 100 + int(tag)), buf))
        if k % 16 == 0:
            sends = [(r, b) for r, b in sends if not r.Test()]
            time.sleep(float(pause.random()) * 0.002)
    MPI.Request.Waitall([r for r, _ in sends])


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    mode = sys.argv[2] if len(sys.argv) > 2 else "any"
    comm = MPI.COMM_WORLD
    if comm.rank == 0:
        code = serve(comm, n, mode)
        if code:
            comm.Abort(code)  # the lost messages' senders may never finish
    else:
        send(comm, n)
    comm.Barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
