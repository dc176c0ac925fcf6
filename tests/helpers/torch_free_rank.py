"""`python tests/helpers/torch_free_rank.py ARGS`: `fedast-mpi ARGS` on this rank, failing
(exit 97) if it imported torch. The launch tests start emulated workers with it (MPMD)."""

import sys

from fedast_mpi.cli import main

if __name__ == "__main__":
    rc = main(sys.argv[1:])
    if "torch" in sys.modules:
        print("torch_free_rank: this rank imported torch", file=sys.stderr, flush=True)
        rc = rc or 97
    sys.exit(rc)
