"""Task data: the train/test tensors of a task's dataset and its per-client shards."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedast_mpi import seeding
from fedast_mpi.catalog import DATASETS
from fedast_mpi.data import cifar, digits, idx, leaf, synthetic
from fedast_mpi.data.partition import dirichlet_partition, iid_partition
from fedast_mpi.errors import ConfigError, DataError

SYNTHETIC_DEFAULT_SAMPLES = 50


@dataclass(frozen=True, eq=False)
class TaskData:
    """Everything a process needs to train and test one task (CPU tensors; move as needed)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    shards: tuple[np.ndarray, ...]
    input_shape: tuple[int, ...]
    n_classes: int


def _canon(v):
    """Normalise a config value so that e.g. 1 and 1.0 give the same key."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    if isinstance(v, dict) or hasattr(v, "items"):
        return {str(k): _canon(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_canon(x) for x in v]
    return str(v)


def stream_key(**fields) -> int:
    """A stream key from a canonical JSON rendering of the given fields (no task name, no index)."""
    return seeding.name_key(json.dumps(_canon(fields), sort_keys=True, separators=(",", ":")))


def load_task_data(task, n_clients: int, seed: int) -> TaskData:
    """Load (or generate) a task's dataset and partition it into n_clients shards,
    deterministically.

    The partition stream is keyed by the dataset, its args and the partition settings only,
    so identical tasks of a run, and runs of different algorithms with the same seed, get
    identical shards.
    """
    name, args, part = task.dataset, dict(task.dataset_args), task.partition
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r} (known: {', '.join(sorted(DATASETS))})")
    if part.kind not in DATASETS[name].partitions:
        raise ConfigError(f"dataset {name!r} does not support partition {part.kind!r}")
    args = {**DATASETS[name].args, **args}
    spc = part.samples_per_client
    users = None
    if not DATASETS[name].embedded:
        tx, ty, vx, vy, input_shape, n_classes, users = _read_files(name, task)
        if part.kind == "natural" and spc is not None:
            raise ConfigError(f"dataset {name!r}: partition 'natural' gives each client its "
                              f"LEAF user's samples; samples_per_client must be null, got {spc}")
    elif name == "digits":
        tx, ty, vx, vy = digits.load(args["test_fraction"])
        input_shape, n_classes = digits.INPUT_SHAPE, digits.N_CLASSES
    else:
        gen_spc = spc if spc is not None else SYNTHETIC_DEFAULT_SAMPLES
        key = stream_key(dataset=name, args=args, n_clients=n_clients, samples_per_client=gen_spc)
        tx, ty, vx, vy = synthetic.generate(args, n_clients, gen_spc,
                                            seeding.generator(seed, seeding.DATASET, key))
        input_shape, n_classes = (int(args["dim"]),), int(args["classes"])
        spc = gen_spc
    rng = seeding.generator(seed, seeding.PARTITION, stream_key(
        dataset=name, args=args, kind=part.kind, alpha=part.alpha,
        samples_per_client=part.samples_per_client))
    if part.kind == "natural" and users is not None:
        shards = leaf.natural_partition(users, n_clients, rng)
    elif part.kind == "natural":
        shards = [np.arange(k * spc, (k + 1) * spc, dtype=np.int64) for k in range(n_clients)]
    elif part.kind == "iid":
        shards = iid_partition(len(ty), n_clients, spc, rng)
    else:
        shards = dirichlet_partition(ty, n_clients, part.alpha, spc, rng)
    return TaskData(torch.from_numpy(tx), torch.from_numpy(ty), torch.from_numpy(vx),
                    torch.from_numpy(vy), tuple(shards), tuple(input_shape), n_classes)


def _data_dir(name: str, task) -> Path:
    """The task's data_dir as an existing directory (ConfigError when unset, DataError when
    absent)."""
    data_dir = getattr(task, "data_dir", None)
    if data_dir is None or str(data_dir) == "":
        raise ConfigError(f"dataset {name!r} reads its standard files from data_dir, "
                          f"which is not set (get them with "
                          f"`fedast-mpi data download {name} --to DIR`)")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        what = "not a directory" if path.exists() else "no such directory"
        raise DataError(f"{path}: {what} (data_dir of dataset {name!r})")
    return path


def _read_files(name: str, task):
    """(train_x, train_y, test_x, test_y, input_shape, n_classes, leaf users or None) of a file
    dataset."""
    path = _data_dir(name, task)
    if name in ("mnist", "fmnist"):
        return (*idx.load(name, path), idx.INPUT_SHAPE, idx.N_CLASSES, None)
    if name in cifar.SPECS:
        return (*cifar.load(name, path), cifar.INPUT_SHAPE, cifar.SPECS[name].n_classes, None)
    if name == "shakespeare":
        d = leaf.load(path)
        return d.train_x, d.train_y, d.test_x, d.test_y, leaf.INPUT_SHAPE, leaf.N_CLASSES, d.users
    raise DataError(f"dataset {name!r} has no reader")
