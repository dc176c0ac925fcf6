"""Names and arguments of the datasets and models a task may use.

Kept free of torch so that `fedast-mpi validate` and the config checks are cheap;
`fedast_mpi.data` and `fedast_mpi.models` implement exactly these entries
(a test keeps the two in step).
"""

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping


@dataclass(frozen=True)
class DatasetSpec:
    """What the config checker needs to know about a dataset."""

    args: Mapping[str, Any] = field(default_factory=dict)
    """Accepted `dataset_args` keys and their defaults."""
    partitions: tuple[str, ...] = ("iid", "dirichlet")
    """Partition kinds the dataset supports."""
    embedded: bool = True
    """True when the data ships with the package or is generated (no data_dir)."""


@dataclass(frozen=True)
class ModelSpec:
    """What the config checker needs to know about a model."""

    args: Mapping[str, Any] = field(default_factory=dict)
    """Accepted `model_args` keys and their defaults."""


DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({
    # UCI optical handwritten digits (8x8, 1797 images), shipped in data/files.
    "digits": DatasetSpec(args={"test_fraction": 0.2}),
    # LEAF Synthetic(alpha, beta): one generated local distribution per client.
    "synthetic": DatasetSpec(
        args={"alpha": 1.0, "beta": 1.0, "dim": 60, "classes": 10, "test_per_client": 20},
        partitions=("natural", "iid", "dirichlet"),
    ),
})

MODELS: Mapping[str, ModelSpec] = MappingProxyType({
    "logreg": ModelSpec(),
    "mlp": ModelSpec(args={"hidden": [64]}),
    "cnn": ModelSpec(args={"channels": [16, 32], "hidden": 64}),
})
