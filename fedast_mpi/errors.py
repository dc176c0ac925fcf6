"""Error types; each maps to the exit code the CLI returns (SPEC §7)."""


class FedastError(Exception):
    """Base of every error the CLI reports as one line and an exit code."""

    exit_code = 1


class ConfigError(FedastError):
    """A bad config value, key, file or command-line usage (exit 2)."""

    exit_code = 2


class DataError(FedastError):
    """A missing or malformed data file (exit 2)."""

    exit_code = 2


class CheckpointError(FedastError):
    """A checkpoint that cannot be used (exit 3)."""

    exit_code = 3


class ProtocolError(FedastError):
    """A message on the wire that breaks the protocol (exit 1)."""


class WorldSizeError(FedastError):
    """An MPI world the job cannot run on, e.g. evaluation on workers without any (exit 2)."""

    exit_code = 2


class Diverged(FedastError):
    """Training diverged: a non-finite update (exit 1). The run file's status is `diverged`;
    `fedast-mpi compare` records it as a result and goes on with the other runs."""


class Interrupted(Exception):
    """A signal asked the run to checkpoint and stop; the message names the signal.

    Not a FedastError: it is the planned end of an interrupted run (exit 75), not a failure.
    """
