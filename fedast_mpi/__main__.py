"""`python -m fedast_mpi` is the `fedast-mpi` console script."""

from fedast_mpi.cli import main

raise SystemExit(main())
