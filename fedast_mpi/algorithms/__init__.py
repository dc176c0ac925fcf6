"""Server algorithms: FedAST (and its single-task references) and the synchronous baselines."""

from fedast_mpi.config import SYNC_ALGORITHMS


def server_class(name: str):
    """The server class that runs `algorithm.name`."""
    if name in SYNC_ALGORITHMS:
        from fedast_mpi.algorithms.sync import Sync
        return Sync
    from fedast_mpi.algorithms.fedast import FedAST
    return FedAST
