"""`python tests/helpers/pool_stats_rank.py PREFIX ARGS`: `fedast-mpi ARGS` on this rank; a
worker rank then writes its message pool's figures (`transport.PoolStats`, plus the spare
buffers it holds at the end) to PREFIX.RANK.json.

FEDAST_TEST_POOL="CAP_BYTES,MAX_SPARE" makes every worker's pool act as a CUDA worker's:
page-locked buffers, simulated with plain numpy memory (so a CPU machine measures what a GPU
worker would hold), capped at CAP_BYTES (0: no cap), at most MAX_SPARE spares per size.
"""

import dataclasses
import json
import os
import sys

import numpy as np

from fedast_mpi import transport
from fedast_mpi.cli import main

pools: list[transport.MessagePool] = []
_init = transport.WorkerTransport.__init__


def _init_and_record(self, comm, pinned=False):
    _init(self, comm, pinned)
    spec = os.environ.get("FEDAST_TEST_POOL")
    if spec:
        cap, spare = (int(v) for v in spec.split(","))
        self.pool = transport.MessagePool(True, max_spare=spare, pinned_cap=cap or 1 << 62,
                                          alloc_pinned=lambda n: np.empty(n, np.uint8))
    pools.append(self.pool)


if __name__ == "__main__":
    transport.WorkerTransport.__init__ = _init_and_record
    prefix, args = sys.argv[1], sys.argv[2:]
    rc = main(args)
    from mpi4py import MPI
    for pool in pools:
        figures = dataclasses.asdict(pool.stats)
        figures.update(spare=pool.spare_count, spare_bytes=pool.spare_bytes,
                       pinned_cap=pool.pinned_cap, max_spare=pool.max_spare)
        with open(f"{prefix}.{MPI.COMM_WORLD.rank}.json", "w") as f:
            json.dump(figures, f)
    sys.exit(rc)
