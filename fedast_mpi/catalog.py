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
    # Standard files in data_dir (PAPER.md §6.1; `fedast-mpi data download`): IDX images ...
    "mnist": DatasetSpec(embedded=False),
    "fmnist": DatasetSpec(embedded=False),
    # ... CIFAR python pickle batches ...
    "cifar10": DatasetSpec(embedded=False),
    "cifar100": DatasetSpec(embedded=False),
    # ... and LEAF Shakespeare JSON; 'natural' is one LEAF user per client.
    "shakespeare": DatasetSpec(partitions=("natural", "iid", "dirichlet"), embedded=False),
})

MODELS: Mapping[str, ModelSpec] = MappingProxyType({
    "logreg": ModelSpec(),
    "mlp": ModelSpec(args={"hidden": [64]}),
    "cnn": ModelSpec(args={"channels": [16, 32], "hidden": 64}),
    # PAPER.md §6.2 models (fixed input shapes, see fedast_mpi.models):
    # the paper's MNIST MLP, 784-200-200-10 (199,210 parameters); `mlp` with its default
    # hidden [64] is a smaller network (50,890 parameters on MNIST).
    "paper_mlp": ModelSpec(args={"hidden": [200, 200]}),
    # LeNet-5 on (1, 28, 28); logits_relu=True reproduces the authors' ReLU on the logits.
    "lenet5": ModelSpec(args={"logits_relu": False}),
    # FedDyn CIFAR-10 CNN on (3, 32, 32).
    "cifar_cnn": ModelSpec(),
    # Shakespeare character LSTM on (seq_len,) int64 indices; zero (h, c) at every batch.
    "lstm": ModelSpec(args={"embed": 8, "hidden": 100}),
    # CIFAR ResNet-18 with GroupNorm(groups) on (3, 32, 32).
    "resnet18_gn": ModelSpec(args={"groups": 2}),
})

PAPER_MODELS: Mapping[str, str] = MappingProxyType({
    "mnist": "paper_mlp", "fmnist": "lenet5", "cifar10": "cifar_cnn",
    "cifar100": "resnet18_gn", "shakespeare": "lstm",
})
"""The network PAPER.md §6.2 trains on each dataset (reachable by name, no model_args)."""
