"""CIFAR-10 and CIFAR-100 from the "python version" pickle batches in a task's `data_dir`.

CIFAR-10: `cifar-10-batches-py/data_batch_1..5` and `test_batch`, each a pickled dict with
b"data" (uint8 [n, 3072], channel-major 3x32x32) and b"labels" (n ints). CIFAR-100:
`cifar-100-python/train` and `test` with b"data" and b"fine_labels" (the 100 classes).
`data_dir` may be that folder or its parent. Unpickling is restricted to numpy arrays,
lists, dicts and scalars, so a tampered file cannot run code.

Normalisation as PAPER.md §6.1: x/255, then per channel (x - mean)/std. No augmentation: the
authors' CIFAR-100 random crop (pad 4) + horizontal flip of each training batch is not applied.
"""

from __future__ import annotations

import functools
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedast_mpi.errors import DataError

INPUT_SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class CifarSpec:
    """Where a CIFAR variant's batches are and how to read and normalise them."""

    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: bytes
    n_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


SPECS = {
    "cifar10": CifarSpec("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                       ("test_batch",), b"labels", 10, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "cifar100": CifarSpec("cifar-100-python", ("train",), ("test",), b"fine_labels", 100,
                        (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}

_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
            ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}


class _Unpickler(pickle.Unpickler):
    """Resolves only the globals a pickled numpy array needs."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def find_folder(name: str, data_dir: Path) -> Path:
    """The batch folder of `name`: data_dir itself when it holds the batches, else
    data_dir/<folder>."""
    spec = SPECS[name]
    for folder in (data_dir, data_dir / spec.folder):
        if (folder / spec.train[0]).is_file():
            return folder
    raise DataError(f"{data_dir}: no {name} batches (expected {spec.folder}/{spec.train[0]} "
                    f"in it, or {spec.train[0]} directly; "
                    f"get them with `fedast-mpi data download {name}`)")


def read_batch(path: Path, label_key: bytes, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: (uint8 [n, 3, 32, 32], int64 [n]); anything else is a DataError naming
    the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    try:
        batch = _Unpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # any malformed pickle: truncated, foreign globals, bad opcodes
        raise DataError(f"{path}: not a CIFAR python pickle batch "
                        f"({type(exc).__name__}: {exc})") from exc
    if isinstance(batch, dict):  # py3-written batches may use str keys
        batch = {k.encode("latin1") if isinstance(k, str) else k: v for k, v in batch.items()}
    want = f"a dict with b'data' and {label_key!r}"
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path}: expected {want}, got {keys}")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (n, 3072), got "
                        f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: {label_key!r} must be a list of ints ({exc})") from exc
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {labels.size} labels in {label_key!r} for {len(data)} images")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{path}: labels outside 0..{n_classes - 1} in {label_key!r}")
    return data.reshape(-1, *INPUT_SHAPE), labels


def _normalise(img: np.ndarray, mean, std) -> np.ndarray:
    x = img.astype(np.float32)
    x /= np.float32(255.0)
    x -= np.asarray(mean, np.float32).reshape(3, 1, 1)
    x /= np.asarray(std, np.float32).reshape(3, 1, 1)
    return x


@functools.lru_cache(maxsize=2)
def _load_cached(name: str, folder: Path,
                 _stamp) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    spec = SPECS[name]
    out = []
    for files in (spec.train, spec.test):
        parts = [read_batch(folder / f, spec.label_key, spec.n_classes) for f in files]
        out.append(_normalise(np.concatenate([p[0] for p in parts]), spec.mean, spec.std))
        out.append(np.concatenate([p[1] for p in parts]))
    train_x, train_y, test_x, test_y = out
    return train_x, train_y, test_x, test_y


def forget() -> None:
    """Drop the parsed arrays kept for the next load (`fedast_mpi.data.forget_parsed`)."""
    _load_cached.cache_clear()


def load(name: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y) of 'cifar10' or 'cifar100': x float32 (n, 3, 32, 32),
    y int64.

    Parsed once per process and file version; the arrays are shared by the tasks that use
    them and must not be modified in place.
    """
    spec = SPECS[name]
    folder = find_folder(name, Path(data_dir))
    stamp = []
    for f in spec.train + spec.test:
        path = folder / f
        if not path.is_file():
            raise DataError(f"{path}: missing (a {name} batch)")
        st = path.stat()
        stamp.append((str(path.resolve()), st.st_size, st.st_mtime_ns))
    return _load_cached(name, folder, tuple(stamp))


def n_classes(name: str) -> int:
    return SPECS[name].n_classes
