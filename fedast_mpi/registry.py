"""The algorithms `algorithm.name` can select: one registry that config, compare and the
launcher read.

An entry names the policy class that runs the algorithm (`fedast_mpi.algorithms`, loaded only
when a run starts, so that checking a config imports no numerics) and the traits the rest of the
program needs to know without running it. `register` adds one (a researcher's own policy);
a module listed in the environment variable `FEDAST_MPI_PLUGINS` is imported (on every rank)
before the first look-up, so its `register` calls need no edit of this package.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

from fedast_mpi.errors import ConfigError


@dataclass(frozen=True)
class AlgorithmSpec:
    """One algorithm: its policy and its traits."""

    name: str
    """The value of `algorithm.name`."""
    policy: str
    """`module:Class` of its policy (`fedast_mpi.algorithms.base.Policy`)."""
    summary: str
    """One line for help texts."""
    synchronous: bool = False
    """Rounds over all tasks (the Sync family); else buffered asynchronous (the FedAST family)."""
    single_task: bool = False
    """A single-task reference: a config must have exactly one task."""
    dynamic: bool = False
    """May run `allocation: dynamic` (Realloc); `compare` runs the others static."""
    unit_buffer: bool = False
    """Every update is aggregated on its own: b_m = 1 always, whatever the config or Realloc say."""
    staleness_weighted: bool = False
    """Each update is weighted by (1 + staleness)^-`algorithm.staleness_exponent` (FedAsync)."""
    selector: Literal["random", "bayes", "ucb"] = "random"
    """Sync family: how a round's clients are assigned to tasks (`fedast_mpi.selection`)."""

    def buffer(self, b: int) -> int:
        """The buffer size this algorithm runs with when its rules give `b`."""
        return 1 if self.unit_buffer else b

    def compare_overrides(self) -> dict[str, str]:
        """What `compare` sets for this algorithm before the config's `compare:` section."""
        return {} if self.dynamic else {"algorithm.allocation": "static"}

    def policy_class(self) -> type:
        """The policy class, imported now."""
        module, _, name = self.policy.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"algorithm.name: {self.name!r}: cannot load its policy "
                              f"{self.policy!r}: {exc}") from None


_FEDAST = "fedast_mpi.algorithms.fedast:FedAST"
_SYNC = "fedast_mpi.algorithms.sync:Sync"
_REGISTRY: dict[str, AlgorithmSpec] = {}


def register(spec: AlgorithmSpec, replace: bool = False) -> AlgorithmSpec:
    """Add an algorithm; an existing name needs `replace=True`."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"algorithm {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


_plugins_loaded = False


def load_plugins() -> None:
    """Import the modules of `FEDAST_MPI_PLUGINS` once (`fedast_mpi.plugins`): their
    `register` calls add algorithms before a name is looked up, on every rank."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import os

    from fedast_mpi.plugins import import_plugin_modules
    try:
        import_plugin_modules(os.environ)
    except ConfigError:
        _plugins_loaded = False
        raise


def get(name: str) -> AlgorithmSpec:
    """The algorithm named `name`; ConfigError naming the known ones otherwise."""
    load_plugins()
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ConfigError(f"algorithm.name: unknown algorithm {name!r} "
                          f"(known: {', '.join(names())})")
    return spec


def names() -> tuple[str, ...]:
    """Registered names, in registration order."""
    load_plugins()
    return tuple(_REGISTRY)


for _spec in (
    AlgorithmSpec("fedast", _FEDAST, "FedAST: per-task buffers, static or dynamic allocation",
                  dynamic=True),
    AlgorithmSpec("fedast-nobuffer", _FEDAST, "FedAST with b = 1: every update aggregated",
                  dynamic=True, unit_buffer=True),
    AlgorithmSpec("sync", _SYNC, "Sync-ST: synchronous rounds, random client split, first-k",
                  synchronous=True),
    AlgorithmSpec("sync-bayes", _SYNC, "Sync-Bayes-ST: client split by a Gaussian process",
                  synchronous=True, selector="bayes"),
    AlgorithmSpec("sync-ucb", _SYNC, "Sync-UCB-ST: client split by discounted UCB scores",
                  synchronous=True, selector="ucb"),
    AlgorithmSpec("fedbuff", _FEDAST, "FedBuff: single-task buffered asynchronous FL",
                  single_task=True),
    AlgorithmSpec("fedasync", _FEDAST, "FedAsync: single task, b = 1, staleness-weighted",
                  single_task=True, unit_buffer=True, staleness_weighted=True),
):
    register(_spec)
