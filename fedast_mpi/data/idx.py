"""MNIST and Fashion-MNIST from their IDX files (plain or gzipped) in a task's `data_dir`.

IDX layout (LeCun et al.): a big-endian int32 magic 0x0000TTNN (TT the element type, 0x08 =
unsigned byte; NN the number of dimensions), NN big-endian int32 sizes, then the elements in
row-major order. Images are 0x00000803 (n, 28, 28), labels 0x00000801 (n,).

Files are looked for in `data_dir/MNIST/raw` (`FashionMNIST/raw` for fmnist, the torchvision
layout that `fedast-mpi data download` writes), then in `data_dir` itself; the first folder
holding all four files wins, and each file may be plain or `.gz` (plain preferred).
"""

from __future__ import annotations

import functools
import gzip
import zlib
from pathlib import Path

import numpy as np

from fedast_mpi.errors import DataError

INPUT_SHAPE = (1, 28, 28)
N_CLASSES = 10
MEAN, STD = 0.1307, 0.3081  # PAPER.md §6.1, for both MNIST and Fashion-MNIST
MAGIC_IMAGES = 0x00000803
MAGIC_LABELS = 0x00000801
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SUBFOLDER = {"mnist": Path("MNIST", "raw"), "fmnist": Path("FashionMNIST", "raw")}


def _raw_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when its name ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc


def read_idx(path: Path, magic: int, ndim_sizes: tuple[int | None, ...]) -> np.ndarray:
    """Parse an unsigned-byte IDX file whose magic must be `magic`; sizes None are free.

    Returns a uint8 array of the header's shape; a wrong magic, shape or length is a DataError
    naming the file.
    """
    what = "IDX image" if magic == MAGIC_IMAGES else "IDX label"
    raw = _raw_bytes(path)
    ndim = magic & 0xFF
    head = 4 * (1 + ndim)
    if len(raw) < 4:
        raise DataError(f"{path}: not an {what} file (only {len(raw)} bytes)")
    got = int(np.frombuffer(raw[:4], dtype=">u4")[0])
    if got != magic:
        raise DataError(f"{path}: not an {what} file (magic 0x{got:08x}, expected 0x{magic:08x})")
    if len(raw) < head:
        raise DataError(f"{path}: truncated {what} file (header needs {head} bytes, "
                        f"file has {len(raw)})")
    shape = tuple(int(s) for s in np.frombuffer(raw[4:head], dtype=">u4"))
    for size, want in zip(shape, ndim_sizes):
        if want is not None and size != want:
            raise DataError(f"{path}: {what} file of shape {shape}, expected {_fmt(ndim_sizes)}")
    n_bytes = int(np.prod(shape, dtype=np.int64))
    if len(raw) - head != n_bytes:
        kind = "truncated" if len(raw) - head < n_bytes else "over-long"
        raise DataError(f"{path}: {kind} {what} file (shape {shape} needs {n_bytes} data bytes, "
                        f"file has {len(raw) - head})")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(shape)


def _fmt(sizes) -> str:
    return "(" + ", ".join("n" if s is None else str(s) for s in sizes) + ")"


def find_files(name: str, data_dir: Path) -> tuple[Path, ...]:
    """The four IDX files of `name` ('mnist' or 'fmnist'), in FILES order, or a DataError."""
    folders = [data_dir / SUBFOLDER[name], data_dir]
    best: tuple[Path, list[str]] | None = None
    for folder in folders:
        found, missing = [], []
        for base in FILES:
            for cand in (folder / base, folder / f"{base}.gz"):
                if cand.is_file():
                    found.append(cand)
                    break
            else:
                missing.append(base)
        if not missing:
            return tuple(found)
        if found and best is None:
            best = (folder, missing)
    if best is not None:
        folder, missing = best
        raise DataError(f"{folder}: missing {', '.join(m + '[.gz]' for m in missing)} "
                        f"(the {name} IDX files)")
    raise DataError(f"{data_dir}: no {name} IDX files (expected {FILES[0]}[.gz] and the other "
                    f"three in {folders[0]} or {data_dir}; "
                    f"get them with `fedast-mpi data download {name}`)")


@functools.lru_cache(maxsize=4)
def _load_cached(paths: tuple[Path, ...],
                 _stamp) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tr_img = read_idx(paths[0], MAGIC_IMAGES, (None, 28, 28))
    tr_lab = read_idx(paths[1], MAGIC_LABELS, (None,))
    te_img = read_idx(paths[2], MAGIC_IMAGES, (None, 28, 28))
    te_lab = read_idx(paths[3], MAGIC_LABELS, (None,))
    for img_path, img, lab_path, lab in ((paths[0], tr_img, paths[1], tr_lab),
                                         (paths[2], te_img, paths[3], te_lab)):
        if len(img) != len(lab):
            raise DataError(f"{lab_path}: {len(lab)} labels for the {len(img)} images of "
                            f"{img_path}")
        if len(img) == 0:
            raise DataError(f"{img_path}: no images")
        if lab.size and lab.max() >= N_CLASSES:
            raise DataError(f"{lab_path}: label {int(lab.max())} outside 0..{N_CLASSES - 1}")
    return _normalise(tr_img), tr_lab.astype(np.int64), _normalise(te_img), te_lab.astype(np.int64)


def _normalise(img: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) -> float32 (n, 1, 28, 28), (x/255 - MEAN)/STD as torchvision's
    transforms."""
    x = img.astype(np.float32).reshape(-1, *INPUT_SHAPE)
    x /= np.float32(255.0)
    x -= np.float32(MEAN)
    x /= np.float32(STD)
    return x


def forget() -> None:
    """Drop the parsed arrays kept for the next load (`fedast_mpi.data.forget_parsed`)."""
    _load_cached.cache_clear()


def load(name: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y) of 'mnist' or 'fmnist': x float32 (n, 1, 28, 28), y int64.

    Parsed once per process and file version; the arrays are shared by the tasks that use
    them and must not be modified in place.
    """
    paths = find_files(name, Path(data_dir))
    try:
        stamp = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    except OSError as exc:
        raise DataError(f"{data_dir}: cannot read the {name} files ({exc})") from exc
    return _load_cached(paths, stamp)
