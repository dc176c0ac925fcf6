"""Small files in the standard dataset formats (random content), for tests and benchmarks.

The real MNIST / Fashion-MNIST IDX files, CIFAR python pickle batches and LEAF Shakespeare
JSON cannot be downloaded everywhere (CI, air-gapped benchmark machines). These writers
produce files in exactly those formats, with random pixels or text, so that the readers of
`fedast_mpi.data` load them as they would the real ones. Sizes are free: a few items for a
reader test, or e.g. 6000 train / 1000 test images for a benchmark whose timing depends only
on the shapes, not on the content.

    write_idx_set(root / "MNIST" / "raw", n_train=6000, n_test=1000)   # mnist (torchvision layout)
    write_cifar10(root, sizes=(1200,) * 5, n_test=1000)                 # cifar10
    write_dataset("cifar10", root, n_train=6000, n_test=1000)           # either, by name
"""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np

from fedast_mpi.data import leaf

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# -- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------------------

def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    """An unsigned-byte IDX file: big-endian magic, big-endian sizes, the elements row-major."""
    arr = np.asarray(arr, dtype=np.uint8)
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx_set(folder, seed=0, n_train=40, n_test=12, gz=False) -> dict[str, np.ndarray]:
    """The four MNIST IDX files in `folder`, random pixels and labels 0..9; returns the raw arrays.

    gz: True (all gzipped), False (all plain) or a collection of base names to gzip.
    Train labels are `arange(n_train) % 10`, test labels `(3 * arange(n_test)) % 10`.
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": (rng.integers(0, 256, (n_train, 28, 28)), 0x803),
              "train-labels-idx1-ubyte": (np.arange(n_train) % 10, 0x801),
              "t10k-images-idx3-ubyte": (rng.integers(0, 256, (n_test, 28, 28)), 0x803),
              "t10k-labels-idx1-ubyte": ((np.arange(n_test) * 3) % 10, 0x801)}
    for base, (arr, magic) in arrays.items():
        data = idx_bytes(arr, magic)
        gz_this = gz if isinstance(gz, bool) else base in gz
        if gz_this:
            (folder / f"{base}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / base).write_bytes(data)
    return {k: np.asarray(v[0]) for k, v in arrays.items()}


# -- CIFAR python pickles ---------------------------------------------------------------------

def cifar_batch(path, n, label_key, n_classes, seed, protocol=2, drop=None):
    """One pickled CIFAR batch dict at `path` (n random images); returns (data, labels).

    label_key is b"labels" (CIFAR-10) or b"fine_labels" (CIFAR-100, coarse labels added);
    `drop` removes that key (to write a malformed batch).
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    labels = [int(v) for v in rng.integers(0, n_classes, n)]
    batch = {b"batch_label": b"generated", b"data": data, label_key: labels,
             b"filenames": [b"x.png"] * n}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [v // 5 for v in labels]
    if drop:
        del batch[drop]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return data, labels


def write_cifar10(root, sizes=(4, 3, 5, 2, 6), n_test=7):
    """`root/cifar-10-batches-py` with data_batch_1..5 of `sizes` images and a test batch.

    Returns (folder, [(data, labels) per train batch], (test data, test labels)).
    """
    folder = Path(root) / "cifar-10-batches-py"
    if len(sizes) != 5:
        raise ValueError(f"CIFAR-10 has 5 train batches, got sizes {sizes}")
    parts = [cifar_batch(folder / f"data_batch_{i + 1}", n, b"labels", 10, i, protocol=2 + i % 4)
             for i, n in enumerate(sizes)]
    test = cifar_batch(folder / "test_batch", n_test, b"labels", 10, 99)
    return folder, parts, test


def write_cifar100(root, n_train=30, n_test=9, seed=5):
    """`root/cifar-100-python` with its train and test batches (fine and coarse labels)."""
    folder = Path(root) / "cifar-100-python"
    train = cifar_batch(folder / "train", n_train, b"fine_labels", 100, seed, protocol=4)
    test = cifar_batch(folder / "test", n_test, b"fine_labels", 100, seed + 1, protocol=2)
    return folder, train, test


# -- LEAF Shakespeare JSON --------------------------------------------------------------------

SHAKES_USERS = {"a_train.json": (["ROMEO", "JULIET", "NURSE"], [5, 3, 4]),
                "b_train.json": (["HAMLET", "OPHELIA"], [2, 6])}


def random_text(rng, n):
    """n characters drawn from LEAF's 80-letter set."""
    return "".join(leaf.ALL_LETTERS[i] for i in rng.integers(0, 80, n))


def leaf_file(path, users, counts, rng):
    """One LEAF JSON file: `counts[i]` samples (80-char x, 1-char y) for user `users[i]`."""
    path = Path(path)
    doc = {"users": users, "num_samples": counts, "user_data": {}, "hierarchies": []}
    for u, n in zip(users, counts):
        doc["user_data"][u] = {"x": [random_text(rng, 80) for _ in range(n)],
                               "y": [random_text(rng, 1) for _ in range(n)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return doc


def write_shakespeare(root, seed=0):
    """Two train files with 5 users, two test files; returns (train docs in read order,
    test docs)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    train = [leaf_file(root / "train" / f, *SHAKES_USERS[f], rng) for f in sorted(SHAKES_USERS)]
    test = [leaf_file(root / "test" / "a_test.json", ["ROMEO", "JULIET", "NURSE"], [2, 1, 1], rng),
            leaf_file(root / "test" / "b_test.json", ["HAMLET", "OPHELIA"], [1, 2], rng)]
    return train, test


# -- by dataset name --------------------------------------------------------------------------

def write_dataset(name: str, root, *, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Files of dataset `name` under `root` in the layout the readers (and `data download`) use.

    mnist / fmnist: `root/MNIST/raw` / `root/FashionMNIST/raw`; cifar10: n_train split over
    the 5 batches; cifar100: one train batch. Returns `root` (a task's data_dir).
    """
    root = Path(root)
    if name in ("mnist", "fmnist"):
        sub = ("MNIST" if name == "mnist" else "FashionMNIST", "raw")
        write_idx_set(root.joinpath(*sub), seed=seed, n_train=n_train, n_test=n_test)
    elif name == "cifar10":
        base, extra = divmod(n_train, 5)
        write_cifar10(root, sizes=tuple(base + (i < extra) for i in range(5)), n_test=n_test)
    elif name == "cifar100":
        write_cifar100(root, n_train=n_train, n_test=n_test, seed=seed)
    else:
        raise ValueError(f"no sample-file writer for dataset {name!r} "
                         f"(mnist, fmnist, cifar10, cifar100; Shakespeare: write_shakespeare)")
    return root
