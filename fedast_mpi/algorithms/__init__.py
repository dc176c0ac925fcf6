"""Server algorithms as policies (`base.Policy`): the FedAST family and the synchronous baselines.

Which policy runs which `algorithm.name` is `fedast_mpi.registry`'s business.
"""
