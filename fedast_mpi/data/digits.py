"""The `digits` dataset: 8x8 handwritten digits shipped in data/files/digits.csv.gz.

Provenance: UCI Optical Recognition of Handwritten Digits (Alpaydin & Kaynak, 1998), the
1797-image test part as shipped by scikit-learn (`sklearn.datasets.load_digits`), licence
CC BY 4.0. One row per image: 64 pixel counts 0..16 (row-major), then the label 0..9.
"""

import functools
import gzip
import io
from importlib import resources

import numpy as np

from fedast_mpi.errors import ConfigError, DataError

N_CLASSES = 10
INPUT_SHAPE = (1, 8, 8)
_SPLIT_SEED = 1797_2024  # fixed: the train/test split never depends on the run seed


@functools.lru_cache(maxsize=1)
def _read() -> tuple[np.ndarray, np.ndarray]:
    """Parse and check the packaged CSV once per process: (pixels/16 [n,1,8,8], labels [n])."""
    try:
        raw = (resources.files("fedast_mpi.data") / "files" / "digits.csv.gz").read_bytes()
        table = np.loadtxt(io.StringIO(gzip.decompress(raw).decode("ascii")), delimiter=",",
                           dtype=np.int64)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read packaged digits data: {exc}") from exc
    if table.ndim != 2 or table.shape[1] != 65 or table[:, :64].min() < 0 \
            or table[:, :64].max() > 16 \
            or table[:, 64].min() < 0 or table[:, 64].max() >= N_CLASSES:
        raise DataError("packaged digits data is malformed (expected 65 columns, pixels 0..16, "
                        "labels 0..9)")
    x = (table[:, :64].astype(np.float32) / np.float32(16.0)).reshape(-1, *INPUT_SHAPE)
    x.setflags(write=False)
    y = table[:, 64].copy()
    y.setflags(write=False)
    return x, y


def load(test_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y) as new numpy arrays, split by a constant-seeded
    permutation."""
    x, y = _read()
    n_test = int(round(len(y) * float(test_fraction)))
    if not 0 < n_test < len(y):
        raise ConfigError(f"dataset 'digits': test_fraction {test_fraction!r} leaves an empty "
                          f"train or test set")
    perm = np.random.Generator(np.random.PCG64(_SPLIT_SEED)).permutation(len(y))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return x[train].copy(), y[train].copy(), x[test].copy(), y[test].copy()
