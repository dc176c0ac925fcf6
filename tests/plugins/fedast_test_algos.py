"""An algorithm registered from outside the package: imported through FEDAST_MPI_PLUGINS."""

from fedast_mpi import registry

registry.register(registry.AlgorithmSpec(
    "test-fedast-b1", "fedast_mpi.algorithms.fedast:FedAST",
    "FedAST with b = 1, registered by a plugin module", unit_buffer=True), replace=True)
