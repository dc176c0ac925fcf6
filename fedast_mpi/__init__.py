"""fedast-mpi: FedAST (Federated Asynchronous Simultaneous Training) over MPI.

The Python API (`fedast_mpi.api`) is exported here lazily: ``import fedast_mpi`` stays cheap
(no torch, no mpi4py, no YAML) until `run` or `compare` is called.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["RunFailed", "RunInterrupted", "__version__", "build_config", "compare",
           "run"]

if TYPE_CHECKING:
    from fedast_mpi.api import (RunFailed, RunInterrupted, build_config, compare,
                                run)

_API = ("RunFailed", "RunInterrupted", "build_config", "compare", "run")


def __getattr__(name: str) -> Any:
    """The API's names, imported from `fedast_mpi.api` on first use."""
    if name in _API:
        from fedast_mpi import api
        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
