"""Task data: the train/test tensors of a task's dataset and its per-client shards."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from fedast_mpi import seeding
from fedast_mpi.catalog import DATASETS
from fedast_mpi.data import cifar, digits, idx, leaf, synthetic
from fedast_mpi.data.partition import (authors_dirichlet_partition, dirichlet_partition,
                                        iid_partition)
from fedast_mpi.errors import ConfigError, DataError
from fedast_mpi.plugins import PLUGIN_PARTITIONS, PluginData, is_plugin, resolve

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


@dataclass(frozen=True, eq=False)
class Source:
    """A task's dataset as read or generated, before partitioning (numpy arrays, read-only).

    Every task with the same `key` gets identical arrays, so a process may hold them once
    for all those tasks (`fedast_mpi.runner` shares its device tensors by this key).
    """

    key: str
    """What defines the arrays: dataset, its args, data_dir and, when generated, the seed."""
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    input_shape: tuple[int, ...]
    n_classes: int
    users: tuple[tuple[str, int, int], ...] | None
    """LEAF users (name, start, stop) of the train rows, for the natural partition."""
    clients: tuple[np.ndarray, ...] | None = None
    """A plugin dataset's natural partition (index arrays into the train rows), if it gave one."""


def _check_task(task) -> tuple[str, dict, Any]:
    """(dataset, merged args, partition) of a task, or a ConfigError for what cannot load."""
    name, part = task.dataset, task.partition
    if is_plugin(name):
        if part.kind not in PLUGIN_PARTITIONS:
            raise ConfigError(f"dataset {name!r} does not support partition {part.kind!r}")
        return name, dict(task.dataset_args), part
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r} (known: {', '.join(sorted(DATASETS))})")
    if part.kind not in DATASETS[name].partitions:
        raise ConfigError(f"dataset {name!r} does not support partition {part.kind!r}")
    if not DATASETS[name].embedded and part.kind == "natural" \
            and part.samples_per_client is not None:
        raise ConfigError(f"dataset {name!r}: partition 'natural' gives each client its "
                          f"LEAF user's samples; samples_per_client must be null, "
                          f"got {part.samples_per_client}")
    return name, {**DATASETS[name].args, **dict(task.dataset_args)}, part


def _generated(name: str) -> bool:
    """Whether the dataset is drawn per run (from the seed and the clients), not read."""
    if is_plugin(name):
        return False
    return DATASETS[name].embedded and name != "digits"


def _spc(task) -> int | None:
    """Samples per client of the partition; a generated dataset's default when unset."""
    spc = task.partition.samples_per_client
    if spc is None and _generated(task.dataset):
        return SYNTHETIC_DEFAULT_SAMPLES
    return spc


def source_key(task, n_clients: int, seed: int) -> str:
    """The fields that decide a task's loaded arrays, as canonical JSON (no name, no partition
    beyond what generation uses)."""
    name, args, _ = _check_task(task)
    fields: dict = {"dataset": name, "args": _canon(args)}
    if is_plugin(name):  # called with the clients and the seed
        fields.update(n_clients=int(n_clients), seed=int(seed))
    elif not DATASETS[name].embedded:
        fields["data_dir"] = str(_data_dir(name, task).resolve())
    elif _generated(name):  # the draw depends on the clients and the seed too (exact ints)
        fields.update(n_clients=int(n_clients), samples_per_client=int(_spc(task) or 0),
                      seed=int(seed))
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def partition_key(task) -> str:
    """The partition settings that, with the source, the clients and the seed, decide a task's
    shards (canonical as the partition stream's key: tasks with equal keys get equal shards)."""
    return json.dumps(_canon(_partition_fields(task.partition)), sort_keys=True,
                      separators=(",", ":"))


def _partition_fields(part) -> dict:
    """The partition's settings that key its stream; `refill` and `data_seed` only when not
    the default, so the shards of configs without them are what they were before they existed."""
    fields = {"kind": part.kind, "alpha": part.alpha,
              "samples_per_client": part.samples_per_client}
    if getattr(part, "refill", "class") != "class":
        fields["refill"] = part.refill
    if getattr(part, "data_seed", None) is not None:
        fields["data_seed"] = part.data_seed
    return fields


def load_source(task, n_clients: int, seed: int) -> Source:
    """Read (or generate) a task's dataset, deterministically; not yet partitioned."""
    name, args, _ = _check_task(task)
    key = source_key(task, n_clients, seed)
    users = None
    if is_plugin(name):
        return _plugin_source(name, args, key, n_clients, seed)
    if not DATASETS[name].embedded:
        tx, ty, vx, vy, input_shape, n_classes, users = _read_files(name, task)
    elif name == "digits":
        tx, ty, vx, vy = digits.load(args["test_fraction"])
        input_shape, n_classes = digits.INPUT_SHAPE, digits.N_CLASSES
    else:
        gen_spc = _spc(task)
        assert gen_spc is not None  # a generated dataset's default
        stream = stream_key(dataset=name, args=args, n_clients=n_clients,
                            samples_per_client=gen_spc)
        tx, ty, vx, vy = synthetic.generate(args, n_clients, gen_spc,
                                            seeding.generator(seed, seeding.DATASET, stream))
        input_shape, n_classes = (int(args["dim"]),), int(args["classes"])
    return Source(key, tx, ty, vx, vy, tuple(input_shape), n_classes, users)


def partition(task, source: Source, n_clients: int, seed: int) -> tuple[np.ndarray, ...]:
    """The task's client shards of `source` (index arrays into its training set).

    The partition stream is keyed by the dataset, its args and the partition settings only,
    so identical tasks of a run, and runs of different algorithms with the same seed, get
    identical shards.
    """
    name, args, part = _check_task(task)
    fields = _partition_fields(part)
    rng = seeding.generator(seed, seeding.PARTITION, stream_key(dataset=name, args=args,
                                                                **fields))
    if part.kind == "natural" and is_plugin(name):
        if source.clients is None:
            raise ConfigError(f"dataset {name!r} gives no natural partition (its `clients`); "
                              f"partition 'natural' needs one")
        shards = list(source.clients)
    elif part.kind == "natural" and source.users is not None:
        shards = leaf.natural_partition(source.users, n_clients, rng)
    elif part.kind == "natural":  # generated: client k's samples are rows k*spc..(k+1)*spc-1
        spc = _spc(task)
        assert spc is not None  # natural without LEAF users: a generated dataset
        shards = [np.arange(k * spc, (k + 1) * spc, dtype=np.int64) for k in range(n_clients)]
    elif part.kind == "iid":
        shards = iid_partition(len(source.train_y), n_clients, _spc(task), rng)
    elif fields.get("data_seed") is not None:
        shards = authors_dirichlet_partition(source.train_y, n_clients, part.alpha, _spc(task),
                                             fields["data_seed"])
    else:
        shards = dirichlet_partition(source.train_y, n_clients, part.alpha, _spc(task), rng,
                                     fields.get("refill", "class"))
    return tuple(shards)


def load_task_data(task, n_clients: int, seed: int) -> TaskData:
    """Load (or generate) a task's dataset and partition it into n_clients shards,
    deterministically (CPU tensors sharing the source's memory)."""
    s = load_source(task, n_clients, seed)
    return TaskData(torch.from_numpy(s.train_x), torch.from_numpy(s.train_y),
                    torch.from_numpy(s.test_x), torch.from_numpy(s.test_y),
                    partition(task, s, n_clients, seed), s.input_shape, s.n_classes)


def forget_parsed() -> None:
    """Drop the file readers' parsed arrays (kept per process for the tasks that share them).

    Once a process has placed what it uses, what it placed lives on in its tensors and the
    rest (training images on rank 0, host copies of data on a GPU) is freed.
    """
    for reader in (idx, cifar, leaf):
        reader.forget()


def shape_of(task) -> tuple[tuple[int, ...], int] | None:
    """(input_shape, n_classes) of a catalog dataset, from its constants and args (no data
    read); None for a plugin dataset (known only once it is called)."""
    name, args, _ = _check_task(task)
    if is_plugin(name):
        return None
    if name == "digits":
        return digits.INPUT_SHAPE, digits.N_CLASSES
    if name == "synthetic":
        return (int(args["dim"]),), int(args["classes"])
    if name in ("mnist", "fmnist"):
        return idx.INPUT_SHAPE, idx.N_CLASSES
    if name in cifar.SPECS:
        return cifar.INPUT_SHAPE, cifar.SPECS[name].n_classes
    if name == "shakespeare":
        return leaf.INPUT_SHAPE, leaf.N_CLASSES
    return None


def _array(v, what: str, name: str) -> np.ndarray:
    """A plugin's array as a read-only-safe numpy array (torch tensors converted)."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    a = np.array(v)  # a copy: the plugin keeps its own arrays
    if a.ndim < 1:
        raise DataError(f"dataset {name!r}: {what} must be an array, got {type(v).__name__}")
    return a


def _plugin_source(name: str, args: dict, key: str, n_clients: int, seed: int) -> Source:
    """Call a dataset plugin (`fedast_mpi.plugins`) and check what it returns."""
    load = resolve(name, "dataset")
    got = load(n_clients=int(n_clients),
               seed=seeding.int_seed(seed, seeding.DATASET, stream_key(dataset=name, args=args)),
               **args)
    if isinstance(got, Mapping):
        try:
            got = PluginData(**got)
        except TypeError as exc:
            raise DataError(f"dataset {name!r}: {exc}") from None
    if not isinstance(got, PluginData):
        raise DataError(f"dataset {name!r} returned a {type(got).__name__}, not a PluginData "
                        f"or a mapping")
    tx, vx = _array(got.x_train, "x_train", name), _array(got.x_test, "x_test", name)
    ty, vy = _array(got.y_train, "y_train", name), _array(got.y_test, "y_test", name)
    if tx.shape[1:] != vx.shape[1:] or len(tx) != len(ty) or len(vx) != len(vy) \
            or ty.ndim != 1 or vy.ndim != 1 or len(tx) == 0 or len(vx) == 0:
        raise DataError(f"dataset {name!r}: x_train {tx.shape}, y_train {ty.shape}, x_test "
                        f"{vx.shape}, y_test {vy.shape}: need non-empty sets, samples of one "
                        f"shape and one label per sample")
    if not np.issubdtype(ty.dtype, np.integer) or not np.issubdtype(vy.dtype, np.integer):
        raise DataError(f"dataset {name!r}: labels must be integers")
    ty, vy = ty.astype(np.int64), vy.astype(np.int64)
    top = int(max(ty.max(), vy.max()))
    n_classes = top + 1 if got.n_classes is None else int(got.n_classes)
    if min(ty.min(), vy.min()) < 0 or top >= n_classes:
        raise DataError(f"dataset {name!r}: labels must lie in 0..{n_classes - 1}")
    clients = None
    if got.clients is not None:
        clients = tuple(np.asarray(c, dtype=np.int64) for c in got.clients)
        if len(clients) != n_clients or any(
                c.ndim != 1 or len(c) == 0 or c.min() < 0 or c.max() >= len(ty)
                for c in clients):
            raise DataError(f"dataset {name!r}: clients must be {n_clients} non-empty index "
                            f"arrays into the {len(ty)} training samples")
    return Source(key, tx, ty, vx, vy, tuple(int(s) for s in tx.shape[1:]), n_classes, None,
                  clients)


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
