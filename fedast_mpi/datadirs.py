"""Where a file dataset's standard files are: known system locations for a task without
`data_dir`, and `fedast-mpi validate`'s check that a task's data directory holds its files.

Known locations (MNIST and Fashion-MNIST only): the directories Debian's `dataset-*` packages
install (`dataset-fashion-mnist`: /usr/share/datasets/fashion-mnist, gzipped IDX), then the
torchvision layout under ~/.cache. A task of such a dataset without `data_dir` uses the first one
that holds the four IDX files (the resolved config then names it); none: the config error that
asks for a `data_dir`. Kept free of torch and numpy (config checks stay cheap); the file names
are `fedast_mpi.data.idx.FILES` (a test keeps them in step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_SUBFOLDER = {"mnist": Path("MNIST", "raw"), "fmnist": Path("FashionMNIST", "raw")}

KNOWN_DIRS: Mapping[str, tuple[str, ...]] = {
    "fmnist": ("/usr/share/datasets/fashion-mnist", "/usr/share/datasets/fmnist",
               "~/.cache/fedast-mpi/fmnist"),
    "mnist": ("/usr/share/datasets/mnist", "~/.cache/fedast-mpi/mnist"),
}
"""Searched in order for a task of these datasets without `data_dir`."""

found: dict[str, str] = {}
"""dataset -> the known location used for it in this process (validate reports it)."""


def holds_idx(name: str, folder: Path) -> bool:
    """True when `folder` (or its torchvision sub-folder) holds the four IDX files of `name`,
    each plain or gzipped (file names only; nothing is read)."""
    for where in (folder / IDX_SUBFOLDER[name], folder):
        if all((where / f).is_file() or (where / f"{f}.gz").is_file() for f in IDX_FILES):
            return True
    return False


def find_known(dataset: str, dirs: Mapping[str, tuple[str, ...]] | None = None) -> str | None:
    """The first known location holding `dataset`'s files, or None (also for a dataset without
    known locations)."""
    for text in (KNOWN_DIRS if dirs is None else dirs).get(dataset, ()):
        folder = Path(text).expanduser()
        if folder.is_dir() and holds_idx(dataset, folder):
            found[dataset] = str(folder)
            return str(folder)
    return None


def check_files(task) -> str:
    """`task`'s data directory exists and holds its dataset's standard files (names only, nothing
    loaded); returns the directory. ConfigError when data_dir is unset, DataError otherwise."""
    from fedast_mpi.data import _data_dir, cifar, idx, leaf
    name = task.dataset
    path = _data_dir(name, task)
    if name in ("mnist", "fmnist"):
        idx.find_files(name, path)
    elif name in cifar.SPECS:
        cifar.find_folder(name, path)
    elif name == "shakespeare":
        leaf.find_files(path)
    return str(path)
