"""fedast-mpi: FedAST (Federated Asynchronous Simultaneous Training) over MPI."""

__version__ = "0.1.0"
