"""Baseline of the server_cpu benchmark: how much CPU a plain blocking MPI wait burns.

    mpiexec -n 2 python -m benchmarks.mpi_wait_baseline [--seconds S] [--round R]
        [--mode compute|sleep] [--json OUT]

Rank 0 posts an Irecv and blocks in MPI.Request.Waitany on it, round after round, while
rank 1 computes (a single-threaded torch matmul loop, like a worker training a request) or
sleeps for R seconds and then sends a small message: S seconds in all. Rank 0 reports the
process CPU seconds it spent inside Waitany over the wall seconds it waited (MPICH's
blocking waits busy-poll: about 100 % of a core). Rank 1 reports its compute rate, to show
what the polling costs the rank that works when both share the cores.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from mpi4py import MPI

from benchmarks import emit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="total duration")
    ap.add_argument("--round", type=float, default=0.025, help="seconds per round")
    ap.add_argument("--mode", choices=("compute", "sleep"), default="compute")
    ap.add_argument("--json", help="write rank 0's result here (else stdout)")
    args = ap.parse_args(argv)

    comm = MPI.COMM_WORLD
    if comm.size != 2:
        print("mpi_wait_baseline needs exactly 2 ranks", file=sys.stderr)
        return 2
    rounds = max(1, round(args.seconds / args.round))
    buf = np.zeros(16, np.float64)
    comm.Barrier()
    if comm.rank == 0:
        wall = cpu = 0.0
        for _ in range(rounds):
            req = comm.Irecv([buf, MPI.DOUBLE], 1, 7)
            w0, c0 = time.perf_counter(), time.process_time()
            MPI.Request.Waitany([req])
            wall += time.perf_counter() - w0
            cpu += time.process_time() - c0
        work = comm.recv(source=1, tag=8)
        out = {"wait_seconds": wall, "wait_cpu_seconds": cpu, "cpu_fraction": cpu / wall,
               "rounds": rounds, "mode": args.mode, "round_seconds": args.round,
               "mpi_library": MPI.Get_library_version().strip().splitlines()[0],
               "worker_iterations_per_second": work}
        emit(out, args.json)
    else:
        iters, busy = 0, 0.0
        if args.mode == "compute":
            import torch
            torch.set_num_threads(1)
            a = torch.randn(96, 96)
        for _ in range(rounds):
            t0 = time.perf_counter()
            if args.mode == "compute":
                while time.perf_counter() - t0 < args.round:
                    a = torch.tanh(a @ a)
                    iters += 1
            else:
                time.sleep(args.round)
            busy += time.perf_counter() - t0
            comm.Send([buf, MPI.DOUBLE], 0, 7)
        comm.send(iters / busy if args.mode == "compute" else None, dest=0, tag=8)
    return 0


if __name__ == "__main__":
    sys.exit(main())
