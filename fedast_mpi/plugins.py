"""A task's own model and dataset, and a researcher's own algorithms, by import path.

A task names a plugin by a `module:attr` import path (a name containing ':'), e.g.
`model: my_pkg.nets:WideNet` or `dataset: my_pkg.data:load`. Every rank imports the module
(so it must be importable on every rank: an installed package, or PYTHONPATH, which mpiexec
and srun pass on), and the config check imports it and checks that the attribute is callable,
without calling it (`fedast-mpi validate` reads no data).

Model plugin: `attr(input_shape=(...), num_classes=N, **model_args)` returns a torch
`nn.Module` whose forward maps a batch of `input_shape` samples to (batch, N) logits. It is
called under a torch RNG seeded per task, so its initial weights are the same on every rank.

Dataset plugin: `attr(n_clients=K, seed=S, **dataset_args)` returns a `PluginData` (or a
mapping with the same keys). It must be deterministic in its arguments: every rank calls it and
must get the same arrays. `clients`, when given, is the natural partition (K index arrays
into the training set) that `partition.kind: natural` uses; `iid` and `dirichlet` work on any
plugin dataset.

`model_args` and `dataset_args` of a plugin are passed through as they are: no catalog
defaults, no check of their keys (a wrong keyword fails when the plugin is called).

Algorithms: `registry.register(AlgorithmSpec(...))` in a module listed in the environment
variable `FEDAST_MPI_PLUGINS` (comma-separated module names). The registry imports those
modules the first time it is asked for an algorithm, on every rank, before a config's
`algorithm.name` is checked.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from fedast_mpi.errors import ConfigError

PLUGINS_ENV = "FEDAST_MPI_PLUGINS"
"""Environment variable: comma-separated modules imported before algorithms are looked up."""

PLUGIN_PARTITIONS = ("iid", "dirichlet", "natural")
"""Partition kinds a plugin dataset may use ('natural' needs its `clients`)."""


def is_plugin(name: str) -> bool:
    """Whether a model or dataset name is an import path (`module:attr`)."""
    return ":" in name


@dataclass(frozen=True)
class PluginData:
    """What a dataset plugin returns.

    Arrays may be numpy arrays or torch tensors (converted to numpy). x_* hold the samples
    (first axis: sample; the rest is the model's `input_shape`), y_* integer class labels
    0..n_classes-1.
    """

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    clients: Sequence[Any] | None = None
    """Optional natural partition: one index array into the training set per client."""
    n_classes: int | None = None
    """Number of classes; None: 1 + the largest label of y_train and y_test."""


def resolve(path: str, what: str = "plugin", task: str | None = None) -> Callable[..., Any]:
    """The callable at `module:attr`, imported now; a one-line ConfigError naming the path
    (and the task) otherwise."""
    where = f" for task {task!r}" if task else ""
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ConfigError(f"{what} {path!r}{where}: an import path is 'module:attr'")
    try:
        obj: Any = importlib.import_module(module)
    except Exception as exc:  # ImportError, or any error raised by the module's own code
        raise ConfigError(f"{what} {path!r}{where}: cannot import module {module!r}: "
                          f"{_one_line(exc)}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{what} {path!r}{where}: module {module!r} has no "
                              f"attribute {attr!r}") from None
    if not callable(obj):
        raise ConfigError(f"{what} {path!r}{where}: {attr!r} is not callable "
                          f"(a {type(obj).__name__})")
    return obj


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def import_plugin_modules(env: Mapping[str, str]) -> None:
    """Import every module named in `env[PLUGINS_ENV]` (their import registers algorithms)."""
    for name in (m.strip() for m in env.get(PLUGINS_ENV, "").split(",")):
        if not name:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise ConfigError(f"{PLUGINS_ENV}: cannot import module {name!r}: "
                              f"{_one_line(exc)}") from None
